/* 2-D max pooling with PyTorch's semantics (torch.nn.MaxPool2d, floor mode, no dilation):
 * implicit padding never wins (it acts as -inf), ties go to the first maximum in row-major
 * window order, NaN propagates. In training with a backward pass the flat index of each
 * maximum within its input plane is saved (as int32 in the saved floats) and backward routes
 * the gradient there. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "layer.h"

typedef struct maxpool_cfg {
    int kh, kw, sh, sw, ph, pw;
} maxpool_cfg;

static int maxpool_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni != 6 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "maxpool2d '%s': expected 6 arguments", L->name);
    maxpool_cfg c = {ia[0], ia[1], ia[2], ia[3], ia[4], ia[5]};
    if (c.kh < 1 || c.kw < 1 || c.sh < 1 || c.sw < 1 || c.ph < 0 || c.pw < 0 ||
        c.kh > 65536 || c.kw > 65536 || c.ph > 65536 || c.pw > 65536)
        return tl_fail(TLEARN_EINVAL,
                       "maxpool2d '%s': kernel %dx%d and stride %dx%d must be >= 1, padding "
                       "%dx%d >= 0", L->name, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw);
    return tl_layer_config(L, &c, sizeof c);
}

static void maxpool_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const maxpool_cfg *c = L->cfg;
    int v[6] = {c->kh, c->kw, c->sh, c->sw, c->ph, c->pw};
    memcpy(ia, v, sizeof v);
    *ni = 6;
    *nf = 0;
}

static int maxpool_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const maxpool_cfg *c = L->cfg;
    tl_shape in = L->in[0];
    if (c->ph > c->kh / 2 || c->pw > c->kw / 2)
        return tl_fail(TLEARN_ESHAPE, "maxpool2d '%s': padding %dx%d exceeds half the kernel %dx%d",
                       L->name, c->ph, c->pw, c->kh, c->kw);
    long h = (long)in.h + 2L * c->ph - c->kh, w = (long)in.w + 2L * c->pw - c->kw;
    if (h < 0 || w < 0)
        return tl_fail(TLEARN_ESHAPE,
                       "maxpool2d '%s': kernel %dx%d is larger than the padded input %ldx%ld "
                       "(empty output)", L->name, c->kh, c->kw, (long)in.h + 2L * c->ph,
                       (long)in.w + 2L * c->pw);
    L->out = tl_shape3(in.c, (int)(h / c->sh + 1), (int)(w / c->sw + 1));
    return TLEARN_OK;
}

static size_t maxpool_saved_floats(const tl_layer *L, size_t n, int backward)
{
    return backward ? n * tl_shape_size(L->out) : 0;
}

/* Maximum of the window of output (oh, ow) in plane x; its flat index into *at. */
static float window_max(const maxpool_cfg *c, tl_shape is, const float *x, int oh, int ow,
                        int *at)
{
    int h0 = oh * c->sh - c->ph, h1 = h0 + c->kh;
    int w0 = ow * c->sw - c->pw, w1 = w0 + c->kw;
    h0 = h0 < 0 ? 0 : h0;
    w0 = w0 < 0 ? 0 : w0;
    h1 = h1 > is.h ? is.h : h1;
    w1 = w1 > is.w ? is.w : w1;
    /* as PyTorch: start at the window's first element with -inf; NaN wins and stops */
    float best = -INFINITY;
    int bi = h0 * is.w + w0;
    for (int ih = h0; ih < h1; ih++)
        for (int iw = w0; iw < w1; iw++) {
            float v = x[ih * is.w + iw];
            if (v > best || isnan(v)) {
                best = v;
                bi = ih * is.w + iw;
                if (isnan(v)) {
                    *at = bi;
                    return v;
                }
            }
        }
    *at = bi;
    return best;
}

/* The common 2x2, stride 2, unpadded pool, without the general loop: a tournament of
 * pick(earlier, later), which takes the later element when it is larger or is the first
 * NaN, gives exactly window_max()'s answer (first NaN in row-major order, else the first
 * maximum); pick is tl_pool_pick (layer.h). */
static inline uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void pool2x2_planes(tl_shape is, tl_shape os, const float *in, float *out, int32_t *arg,
                           size_t q0, size_t q1)
{
    size_t ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    for (size_t q = q0; q < q1; q++)
        for (int oh = 0; oh < os.h; oh++) {
            const float *restrict r0 = in + q * ip + (size_t)(2 * oh) * is.w;
            const float *restrict r1 = r0 + is.w;
            float *restrict y = out + q * op + (size_t)oh * os.w;
            if (!arg) {
                for (int ow = 0; ow < os.w; ow++) {
                    float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
                    y[ow] = tl_pool4(a, b, c, d);
                }
                continue;
            }
            int32_t *restrict at = arg + q * op + (size_t)oh * os.w;
            int32_t base = 2 * oh * is.w;
            for (int ow = 0; ow < os.w; ow++) {
                float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
                float v = tl_pool4(a, b, c, d);
                /* the winner is the first element with its bits: an earlier one with the
                 * same bits would have won the tournament */
                uint32_t u = bits(v);
                int32_t i = base + 2 * ow;
                y[ow] = v;
                at[ow] = bits(a) == u ? i : bits(b) == u ? i + 1 : bits(c) == u ? i + is.w
                                                                                 : i + is.w + 1;
            }
        }
}

static void general_planes(const maxpool_cfg *c, tl_shape is, tl_shape os, const float *in,
                           float *out, int32_t *arg, size_t q0, size_t q1)
{
    size_t ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    for (size_t q = q0; q < q1; q++) {
        const float *x = in + q * ip;
        float *y = out + q * op;
        for (int oh = 0; oh < os.h; oh++)
            for (int ow = 0; ow < os.w; ow++) {
                int at;
                y[oh * os.w + ow] = window_max(c, is, x, oh, ow, &at);
                if (arg)
                    arg[q * op + (size_t)oh * os.w + ow] = at;
            }
    }
}

static void maxpool_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                            size_t n, float *saved)
{
    const maxpool_cfg *c = L->cfg;
    tl_shape is = L->in[0], os = L->out;
    int32_t *arg = ex->backward && saved ? (int32_t *)saved : NULL;
    size_t planes = n * (size_t)is.c;
    int fast = c->kh == 2 && c->kw == 2 && c->sh == 2 && c->sw == 2 && c->ph == 0 && c->pw == 0;
    /* planes are independent: split them across the model's threads */
    int nt = tl_par_threads(tl_blas_threads(ex->blas), planes * (size_t)is.h * is.w);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        size_t q0 = 0, q1 = planes;
#ifdef _OPENMP
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        q0 = planes * (size_t)t / (size_t)T;
        q1 = planes * (size_t)(t + 1) / (size_t)T;
#endif
        if (fast)
            pool2x2_planes(is, os, in[0], out, arg, q0, q1);
        else
            general_planes(c, is, os, in[0], out, arg, q0, q1);
    }
}

/* Without saved indexes (a forward in evaluation mode) the maxima are found again. */
static void maxpool_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                             const float *out, const float *dout, float *const *din, int accum,
                             size_t n, const float *saved, float *const *pgrad)
{
    (void)out; (void)pgrad;
    const maxpool_cfg *c = L->cfg;
    float *dx = din[0];
    if (!dx)
        return;
    tl_shape is = L->in[0], os = L->out;
    const int32_t *arg = ex->training ? (const int32_t *)saved : NULL;
    size_t planes = n * (size_t)is.c, ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    if (arg && c->kh == 2 && c->kw == 2 && c->sh == 2 && c->sw == 2 && c->ph == 0 &&
        c->pw == 0) {
        /* 2x2 windows tile the input (up to a last odd row/column that no window reads):
         * every covered element is written once, no clearing pass. */
        int nt = tl_par_threads(tl_blas_threads(ex->blas), planes * ip);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
        for (size_t q = 0; q < planes; q++) {
            float *d = dx + q * ip;
            const float *g = dout + q * op;
            const int32_t *a = arg + q * op;
            if (!accum && (is.h % 2 || is.w % 2))
                memset(d, 0, sizeof(float) * ip);
            for (int oh = 0; oh < os.h; oh++) {
                /* the two input rows of this output row, written left to right */
                float *restrict r0 = d + (size_t)(2 * oh) * is.w, *restrict r1 = r0 + is.w;
                const float *restrict gr = g + (size_t)oh * os.w;
                const int32_t *restrict ar = a + (size_t)oh * os.w;
                int32_t base = 2 * oh * is.w;
                if (!accum)
                    for (int ow = 0; ow < os.w; ow++) {
                        int32_t at = ar[ow] - base - 2 * ow; /* 0, 1, W or W+1 */
                        float v = gr[ow];
                        r0[2 * ow] = at == 0 ? v : 0.0f;
                        r0[2 * ow + 1] = at == 1 ? v : 0.0f;
                        r1[2 * ow] = at == is.w ? v : 0.0f;
                        r1[2 * ow + 1] = at == is.w + 1 ? v : 0.0f;
                    }
                else
                    for (int ow = 0; ow < os.w; ow++) {
                        int32_t at = ar[ow] - base - 2 * ow;
                        float v = gr[ow];
                        r0[2 * ow] += at == 0 ? v : 0.0f;
                        r0[2 * ow + 1] += at == 1 ? v : 0.0f;
                        r1[2 * ow] += at == is.w ? v : 0.0f;
                        r1[2 * ow + 1] += at == is.w + 1 ? v : 0.0f;
                    }
            }
        }
        return;
    }
    if (!accum)
        memset(dx, 0, sizeof(float) * planes * ip);
    for (size_t q = 0; q < planes; q++) {
        float *d = dx + q * ip;
        const float *g = dout + q * op;
        if (arg) {
            const int32_t *a = arg + q * op;
            for (size_t o = 0; o < op; o++)
                d[a[o]] += g[o];
            continue;
        }
        for (int oh = 0; oh < os.h; oh++)
            for (int ow = 0; ow < os.w; ow++) {
                int at;
                window_max(c, is, in[0] + q * ip, oh, ow, &at);
                d[at] += g[oh * os.w + ow];
            }
    }
}

const tl_layer_ops tl_maxpool2d_ops = {
    .kind = TLEARN_LAYER_MAXPOOL2D,
    .kind_name = "maxpool2d",
    .configure = maxpool_configure,
    .arguments = maxpool_arguments,
    .setup = maxpool_setup,
    .saved_floats = maxpool_saved_floats,
    .forward = maxpool_forward,
    .backward = maxpool_backward,
};
