/* Global average pooling: (C, H, W) -> (C, 1, 1), the mean of each plane
 * (torch.nn.AdaptiveAvgPool2d(1)). Sums are taken in double. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

static int gap_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)ia; (void)fa;
    if (ni != 0 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "global_avgpool '%s': takes no arguments", L->name);
    return TLEARN_OK;
}

static void gap_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)L; (void)ia; (void)fa;
    *ni = *nf = 0;
}

static int gap_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    L->out = tl_shape3(L->in[0].c, 1, 1);
    return TLEARN_OK;
}

static void gap_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                        size_t n, float *saved)
{
    (void)ex; (void)saved;
    size_t planes = n * (size_t)L->in[0].c, ip = (size_t)L->in[0].h * L->in[0].w;
    for (size_t q = 0; q < planes; q++) {
        const float *x = in[0] + q * ip;
        double s = 0.0;
        for (size_t i = 0; i < ip; i++)
            s += x[i];
        out[q] = (float)(s / (double)ip);
    }
}

static void gap_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                         const float *out, const float *dout, float *const *din, int accum,
                         size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    float *dx = din[0];
    if (!dx)
        return;
    size_t planes = n * (size_t)L->in[0].c, ip = (size_t)L->in[0].h * L->in[0].w;
    float inv = 1.0f / (float)ip;
    for (size_t q = 0; q < planes; q++) {
        float g = dout[q] * inv;
        float *d = dx + q * ip;
        if (accum)
            for (size_t i = 0; i < ip; i++)
                d[i] += g;
        else
            for (size_t i = 0; i < ip; i++)
                d[i] = g;
    }
}

const tl_layer_ops tl_global_avgpool_ops = {
    .kind = TLEARN_LAYER_GLOBAL_AVGPOOL,
    .kind_name = "global_avgpool",
    .bwd_ignores_output = 1,
    .configure = gap_configure,
    .arguments = gap_arguments,
    .setup = gap_setup,
    .forward = gap_forward,
    .backward = gap_backward,
};
