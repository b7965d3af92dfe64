/* Two kinds that zero parts of their input at random in training mode and scale what is
 * kept by 1/(1-p), so that evaluation mode is the identity:
 * - dropout (torch.nn.Dropout): each element is kept with probability 1-p;
 * - drop_path (torchvision.ops.StochasticDepth(p, mode="row")): each example as a whole.
 * Draws come from the model's RNG (ex->rng), one per element or per example, in order;
 * when a backward pass will run, whether each was kept is saved for it, one byte per draw
 * (a quarter of a float mask: in a transformer the masks are a large share of training
 * memory). */
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
    const char *kind = L->ops->kind_name;
    if (ni != 0 || nf != 1)
        return tl_fail(TLEARN_EINVAL, "%s '%s': expected 1 argument (p)", kind, L->name);
    if (!(fa[0] >= 0.0f && fa[0] < 1.0f))
        return tl_fail(TLEARN_EINVAL, "%s '%s': p is %g, must be in [0, 1)", kind, L->name,
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

/* Floats that share one draw: 1 for dropout, a whole example for drop_path. */
static size_t unit(const tl_layer *L)
{
    return L->ops->kind == TLEARN_LAYER_DROP_PATH ? tl_shape_size(L->out) : 1;
}

static size_t dropout_saved_floats(const tl_layer *L, size_t n, int backward)
{
    const dropout_cfg *c = L->cfg;
    /* p == 0 is the identity: nothing to remember; else a byte per draw, in floats */
    return backward && c->p > 0.0f ? (n * tl_shape_size(L->out) / unit(L) + 3) / 4 : 0;
}

static void dropout_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                            size_t n, float *saved)
{
    const dropout_cfg *c = L->cfg;
    size_t total = n * tl_shape_size(L->out), u = unit(L);
    const float *x = in[0];
    if (!ex->training || c->p == 0.0f) {
        if (out != x)
            memcpy(out, x, sizeof(float) * total);
        return;
    }
    const float scale = 1.0f / (1.0f - c->p);
    uint8_t *mask = ex->backward ? (uint8_t *)saved : NULL;
    for (size_t d = 0; d < total / u; d++) {
        /* keep with probability 1 - p: uniform in [0, 1) at or above p */
        int keep = tl_rng_uniform(ex->rng) >= c->p;
        float k = keep ? scale : 0.0f;
        if (mask)
            mask[d] = (uint8_t)keep;
        for (size_t i = d * u; i < (d + 1) * u; i++)
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
    size_t total = n * tl_shape_size(L->out), u = unit(L);
    /* no mask: the forward was the identity (evaluation mode, or p == 0) */
    const uint8_t *mask = ex->training ? (const uint8_t *)saved : NULL;
    const dropout_cfg *c = L->cfg;
    const float scale = 1.0f / (1.0f - c->p);
    if (mask && u == 1) { /* dropout: one flat loop that vectorises */
        for (size_t i = 0; i < total; i++) {
            float g = dout[i] * (mask[i] ? scale : 0.0f);
            dx[i] = accum ? dx[i] + g : g;
        }
        return;
    }
    for (size_t d = 0; d < total / u; d++) {
        float k = mask ? (mask[d] ? scale : 0.0f) : 1.0f;
        for (size_t i = d * u; i < (d + 1) * u; i++) {
            float g = dout[i] * k;
            dx[i] = accum ? dx[i] + g : g;
        }
    }
}

const tl_layer_ops tl_dropout_ops = {
    .kind = TLEARN_LAYER_DROPOUT,
    .kind_name = "dropout",
    .bwd_ignores_inputs = 1,
    .bwd_ignores_output = 1,
    .configure = dropout_configure,
    .arguments = dropout_arguments,
    .setup = dropout_setup,
    .saved_floats = dropout_saved_floats,
    .forward = dropout_forward,
    .backward = dropout_backward,
};

const tl_layer_ops tl_drop_path_ops = {
    .kind = TLEARN_LAYER_DROP_PATH,
    .kind_name = "drop_path",
    .bwd_ignores_inputs = 1,
    .bwd_ignores_output = 1,
    .configure = dropout_configure,
    .arguments = dropout_arguments,
    .setup = dropout_setup,
    .saved_floats = dropout_saved_floats,
    .forward = dropout_forward,
    .backward = dropout_backward,
};
