/* (C, H, W) -> (C*H*W, 1, 1). The data layout is already flat, so this is a copy. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

static int flatten_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)ia; (void)fa;
    if (ni != 0 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "flatten '%s': takes no arguments", L->name);
    return TLEARN_OK;
}

static void flatten_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)L; (void)ia; (void)fa;
    *ni = *nf = 0;
}

static int flatten_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    L->out = tl_shape1((int)tl_shape_size(L->in[0]));
    return TLEARN_OK;
}

static void flatten_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                            size_t n, float *saved)
{
    (void)ex;
    (void)saved;
    memcpy(out, in[0], sizeof(float) * n * tl_shape_size(L->out));
}

static void flatten_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                             const float *out, const float *dout, float *const *din, int accum,
                             size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    size_t total = n * tl_shape_size(L->out);
    if (!din[0])
        return;
    if (accum)
        for (size_t i = 0; i < total; i++)
            din[0][i] += dout[i];
    else
        memcpy(din[0], dout, sizeof(float) * total);
}

const tl_layer_ops tl_flatten_ops = {
    .kind = TLEARN_LAYER_FLATTEN,
    .kind_name = "flatten",
    .bwd_ignores_output = 1,
    .configure = flatten_configure,
    .arguments = flatten_arguments,
    .setup = flatten_setup,
    .forward = flatten_forward,
    .backward = flatten_backward,
};
