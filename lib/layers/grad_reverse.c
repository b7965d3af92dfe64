/* Gradient reversal (Ganin & Lempitsky, DANN): the identity forward, the gradient times
 * -lambda backward, so that the layers before it learn to confuse the domain head behind
 * it. fa: lambda (finite, >= 0); tlearn_model_set_grad_reverse_lambda() changes it between
 * steps (the DANN schedule, tlearn_dann_lambda()). No parameters, nothing saved. */
#include <math.h>
#include <string.h>

#include "layer.h"

typedef struct grl_cfg {
    float lambda;
} grl_cfg;

int tl_grl_check_lambda(const char *what, const char *name, float lambda)
{
    if (!(lambda >= 0.0f) || !isfinite(lambda))
        return tl_fail(TLEARN_EINVAL, "%s '%s': lambda is %g, must be >= 0 and finite", what,
                       name, (double)lambda);
    return TLEARN_OK;
}

static int grl_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)ia;
    if (ni != 0 || nf != 1)
        return tl_fail(TLEARN_EINVAL, "grad_reverse '%s': expected 1 argument (lambda)", L->name);
    int rc = tl_grl_check_lambda("grad_reverse", L->name, fa[0]);
    if (rc)
        return rc;
    grl_cfg c = {fa[0]};
    return tl_layer_config(L, &c, sizeof c);
}

static void grl_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)ia;
    fa[0] = ((const grl_cfg *)L->cfg)->lambda;
    *ni = 0;
    *nf = 1;
}

void tl_grl_set_lambda(tl_layer *L, float lambda)
{
    ((grl_cfg *)L->cfg)->lambda = lambda;
}

static int grl_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    L->out = L->in[0];
    return TLEARN_OK;
}

static void grl_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                        size_t n, float *saved)
{
    (void)ex; (void)saved;
    if (out != in[0])
        memcpy(out, in[0], sizeof(float) * n * tl_shape_size(L->out));
}

static void grl_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                         const float *out, const float *dout, float *const *din, int accum,
                         size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    float *dx = din[0];
    if (!dx)
        return;
    const float k = -((const grl_cfg *)L->cfg)->lambda;
    size_t total = n * tl_shape_size(L->out);
    if (accum)
        for (size_t i = 0; i < total; i++)
            dx[i] += k * dout[i];
    else
        for (size_t i = 0; i < total; i++)
            dx[i] = k * dout[i];
}

const tl_layer_ops tl_grad_reverse_ops = {
    .kind = TLEARN_LAYER_GRAD_REVERSE,
    .kind_name = "grad_reverse",
    .bwd_ignores_output = 1,
    .configure = grl_configure,
    .arguments = grl_arguments,
    .setup = grl_setup,
    .forward = grl_forward,
    .backward = grl_backward,
};
