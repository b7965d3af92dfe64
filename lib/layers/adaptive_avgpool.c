/* Adaptive average pooling to a fixed (oh, ow), as torch.nn.AdaptiveAvgPool2d: output row i
 * averages input rows [floor(i*H/oh), ceil((i+1)*H/oh)), columns likewise, so bins overlap
 * when the sizes do not divide (and repeat rows when oh > H). Nothing is saved. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct adaptive_cfg {
    int oh, ow;
} adaptive_cfg;

static int adaptive_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* ia: oh ow */
    if (ni != 2 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "adaptive_avgpool '%s': expected 2 arguments (oh, ow)",
                       L->name);
    adaptive_cfg c = {ia[0], ia[1]};
    if (c.oh < 1 || c.ow < 1 || c.oh > 65536 || c.ow > 65536)
        return tl_fail(TLEARN_EINVAL, "adaptive_avgpool '%s': output size %dx%d must be in "
                       "1..65536", L->name, c.oh, c.ow);
    return tl_layer_config(L, &c, sizeof c);
}

static void adaptive_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const adaptive_cfg *c = L->cfg;
    ia[0] = c->oh;
    ia[1] = c->ow;
    *ni = 2;
    *nf = 0;
}

static int adaptive_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const adaptive_cfg *c = L->cfg;
    if (L->ninputs != 1)
        return tl_fail(TLEARN_EINVAL, "adaptive_avgpool '%s': needs 1 input, has %d", L->name,
                       L->ninputs);
    if (L->in[0].rank > 3) {
        char b[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "adaptive_avgpool '%s': pools a (C, H, W) map, not %s",
                       L->name, tl_shape_str(L->in[0], b));
    }
    if ((double)L->in[0].c * c->oh * c->ow > (double)INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "adaptive_avgpool '%s': output has over 2^31 elements",
                       L->name);
    L->out = tl_shape3(L->in[0].c, c->oh, c->ow);
    return TLEARN_OK;
}

/* Bin i of @p out over an axis of @p len: [*a, *b). */
static inline void bin(int i, int out, int len, int *a, int *b)
{
    *a = (int)((long long)i * len / out);
    *b = (int)(((long long)(i + 1) * len + out - 1) / out);
}

static void adaptive_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                             size_t n, float *saved)
{
    (void)ex; (void)saved;
    tl_shape is = L->in[0], os = L->out;
    size_t planes = n * (size_t)is.c, ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    for (size_t q = 0; q < planes; q++) {
        const float *x = in[0] + q * ip;
        float *y = out + q * op;
        for (int i = 0; i < os.h; i++) {
            int h0, h1;
            bin(i, os.h, is.h, &h0, &h1);
            for (int j = 0; j < os.w; j++) {
                int w0, w1;
                bin(j, os.w, is.w, &w0, &w1);
                float s = 0.0f;
                for (int r = h0; r < h1; r++)
                    for (int k = w0; k < w1; k++)
                        s += x[(size_t)r * is.w + k];
                y[i * os.w + j] = s / (float)((h1 - h0) * (w1 - w0));
            }
        }
    }
}

static void adaptive_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                              const float *out, const float *dout, float *const *din, int accum,
                              size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    float *dx = din[0];
    if (!dx)
        return;
    tl_shape is = L->in[0], os = L->out;
    size_t planes = n * (size_t)is.c, ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    if (!accum)
        memset(dx, 0, sizeof(float) * planes * ip);
    for (size_t q = 0; q < planes; q++) {
        float *d = dx + q * ip;
        const float *g = dout + q * op;
        for (int i = 0; i < os.h; i++) {
            int h0, h1;
            bin(i, os.h, is.h, &h0, &h1);
            for (int j = 0; j < os.w; j++) {
                int w0, w1;
                bin(j, os.w, is.w, &w0, &w1);
                float v = g[i * os.w + j] / (float)((h1 - h0) * (w1 - w0));
                for (int r = h0; r < h1; r++)
                    for (int k = w0; k < w1; k++)
                        d[(size_t)r * is.w + k] += v;
            }
        }
    }
}

const tl_layer_ops tl_adaptive_avgpool_ops = {
    .kind = TLEARN_LAYER_ADAPTIVE_AVGPOOL,
    .kind_name = "adaptive_avgpool",
    .bwd_ignores_output = 1,
    .configure = adaptive_configure,
    .arguments = adaptive_arguments,
    .setup = adaptive_setup,
    .forward = adaptive_forward,
    .backward = adaptive_backward,
};
