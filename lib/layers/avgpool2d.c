/* 2-D average pooling with PyTorch's semantics (torch.nn.AvgPool2d, no divisor override),
 * with ONNX AveragePool's asymmetric padding and ceil_mode (tl_pool_geom, layer.h). The
 * window of output (oh, ow) starts at oh*s - pad_top; with count_include_pad the divisor
 * counts the padded positions inside the padded input (but not beyond it, where a ceil-mode
 * window may reach), without it only the real input positions. Nothing is saved: backward
 * spreads each output gradient evenly over its window. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct avgpool_cfg {
    tl_pool_geom g; /* dilation 1 */
    int count_include_pad;
} avgpool_cfg;

static int avgpool_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* kh kw sh sw pt pl count_include_pad [pb pr ceil_mode]: round 1's 7 pad symmetrically */
    if ((ni != 7 && ni != 10) || nf != 0)
        return tl_fail(TLEARN_EINVAL, "avgpool2d '%s': expected 7 or 10 arguments", L->name);
    avgpool_cfg c = {{ia[0], ia[1], ia[2], ia[3], ia[4], ia[5], ia[4], ia[5], 1, 1, 0}, ia[6]};
    if (ni == 10) {
        c.g.pb = ia[7];
        c.g.pr = ia[8];
        c.g.ceil_mode = ia[9];
    }
    int rc = tl_pool_check(L, "avgpool2d", &c.g);
    if (rc)
        return rc;
    if (c.count_include_pad != 0 && c.count_include_pad != 1)
        return tl_fail(TLEARN_EINVAL, "avgpool2d '%s': count_include_pad is %d, must be 0 or 1",
                       L->name, c.count_include_pad);
    return tl_layer_config(L, &c, sizeof c);
}

static void avgpool_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const avgpool_cfg *c = L->cfg;
    const tl_pool_geom *g = &c->g;
    int v[10] = {g->kh, g->kw, g->sh, g->sw, g->pt, g->pl, c->count_include_pad, g->pb, g->pr,
                 g->ceil_mode};
    memcpy(ia, v, sizeof v);
    *ni = tl_pool_plain(g) ? 7 : 10; /* round 1's form when it says everything */
    *nf = 0;
}

static int avgpool_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const avgpool_cfg *c = L->cfg;
    return tl_pool_setup(L, "avgpool2d", &c->g);
}

/* The real-input window [*h0,*h1) x [*w0,*w1) of output (oh, ow) and its divisor. */
static float window(const avgpool_cfg *c, tl_shape is, int oh, int ow, int *h0, int *h1, int *w0,
                    int *w1)
{
    const tl_pool_geom *g = &c->g;
    int a0 = oh * g->sh - g->pt, a1 = a0 + g->kh, b0 = ow * g->sw - g->pl, b1 = b0 + g->kw;
    /* PyTorch clips the padded window to the padded input first: that size is the divisor
     * with count_include_pad */
    if (a1 > is.h + g->pb)
        a1 = is.h + g->pb;
    if (b1 > is.w + g->pr)
        b1 = is.w + g->pr;
    int padded = (a1 - a0) * (b1 - b0);
    *h0 = a0 < 0 ? 0 : a0;
    *w0 = b0 < 0 ? 0 : b0;
    *h1 = a1 > is.h ? is.h : a1;
    *w1 = b1 > is.w ? is.w : b1;
    int real = (*h1 - *h0) * (*w1 - *w0);
    return (float)(c->count_include_pad ? padded : real);
}

static void avgpool_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                            size_t n, float *saved)
{
    (void)ex; (void)saved;
    const avgpool_cfg *c = L->cfg;
    tl_shape is = L->in[0], os = L->out;
    size_t planes = n * (size_t)is.c, ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    for (size_t q = 0; q < planes; q++) {
        const float *x = in[0] + q * ip;
        float *y = out + q * op;
        for (int oh = 0; oh < os.h; oh++)
            for (int ow = 0; ow < os.w; ow++) {
                int h0, h1, w0, w1;
                float div = window(c, is, oh, ow, &h0, &h1, &w0, &w1);
                float s = 0.0f;
                for (int ih = h0; ih < h1; ih++)
                    for (int iw = w0; iw < w1; iw++)
                        s += x[ih * is.w + iw];
                /* a window entirely in the padding has divisor 0 without count_include_pad;
                 * the geometry check (pad <= kernel/2) rules that out */
                y[oh * os.w + ow] = div > 0.0f ? s / div : 0.0f;
            }
    }
}

static void avgpool_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                             const float *out, const float *dout, float *const *din, int accum,
                             size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    const avgpool_cfg *c = L->cfg;
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
        for (int oh = 0; oh < os.h; oh++)
            for (int ow = 0; ow < os.w; ow++) {
                int h0, h1, w0, w1;
                float div = window(c, is, oh, ow, &h0, &h1, &w0, &w1);
                if (!(div > 0.0f))
                    continue;
                float v = g[oh * os.w + ow] / div;
                for (int ih = h0; ih < h1; ih++)
                    for (int iw = w0; iw < w1; iw++)
                        d[ih * is.w + iw] += v;
            }
    }
}

const tl_layer_ops tl_avgpool2d_ops = {
    .kind = TLEARN_LAYER_AVGPOOL2D,
    .kind_name = "avgpool2d",
    .bwd_ignores_output = 1,
    .configure = avgpool_configure,
    .arguments = avgpool_arguments,
    .setup = avgpool_setup,
    .forward = avgpool_forward,
    .backward = avgpool_backward,
};
