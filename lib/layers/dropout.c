/* Dropout (torch.nn.Dropout): in training mode each element is kept with probability 1-p
 * and scaled by 1/(1-p) (inverted dropout), so evaluation mode is the identity. The mask
 * comes from the model's RNG (ex->rng); when a backward pass will run, the per-element
 * multiplier (0 or 1/(1-p)) is saved for it. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct dropout_cfg {
    float p;
} dropout_cfg;

static int dropout_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)ia;
    if (ni != 0 || nf != 1)
        return tl_fail(TLEARN_EINVAL, "dropout '%s': expected 1 argument (p)", L->name);
    if (!(fa[0] >= 0.0f && fa[0] < 1.0f))
        return tl_fail(TLEARN_EINVAL, "dropout '%s': p is %g, must be in [0, 1)", L->name,
                       (double)fa[0]);
    dropout_cfg c = {fa[0]};
    return tl_layer_config(L, &c, sizeof c);
}

static void dropout_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)ia;
    const dropout_cfg *c = L->cfg;
    fa[0] = c->p;
    *ni = 0;
    *nf = 1;
}

static int dropout_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    L->out = L->in[0];
    return TLEARN_OK;
}

static size_t dropout_saved_floats(const tl_layer *L, size_t n, int backward)
{
    const dropout_cfg *c = L->cfg;
    /* p == 0 is the identity: nothing to remember */
    return backward && c->p > 0.0f ? n * tl_shape_size(L->out) : 0;
}

static void dropout_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                            size_t n, float *saved)
{
    const dropout_cfg *c = L->cfg;
    size_t total = n * tl_shape_size(L->out);
    const float *x = in[0];
    if (!ex->training || c->p == 0.0f) {
        if (out != x)
            memcpy(out, x, sizeof(float) * total);
        return;
    }
    const float scale = 1.0f / (1.0f - c->p);
    float *mask = ex->backward ? saved : NULL;
    for (size_t i = 0; i < total; i++) {
        /* keep with probability 1 - p: uniform in [0, 1) at or above p */
        float k = tl_rng_uniform(ex->rng) >= c->p ? scale : 0.0f;
        if (mask)
            mask[i] = k;
        out[i] = x[i] * k;
    }
}

static void dropout_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                             const float *out, const float *dout, float *const *din, int accum,
                             size_t n, const float *saved, float *const *pgrad)
{
    (void)in; (void)out; (void)pgrad;
    float *dx = din[0];
    if (!dx)
        return;
    size_t total = n * tl_shape_size(L->out);
    /* no mask: the forward was the identity (evaluation mode, or p == 0) */
    const float *mask = ex->training ? saved : NULL;
    for (size_t i = 0; i < total; i++) {
        float g = mask ? dout[i] * mask[i] : dout[i];
        dx[i] = accum ? dx[i] + g : g;
    }
}

const tl_layer_ops tl_dropout_ops = {
    .kind = TLEARN_LAYER_DROPOUT,
    .kind_name = "dropout",
    .configure = dropout_configure,
    .arguments = dropout_arguments,
    .setup = dropout_setup,
    .saved_floats = dropout_saved_floats,
    .forward = dropout_forward,
    .backward = dropout_backward,
};
