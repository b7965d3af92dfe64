/* 2-D max pooling with PyTorch's semantics (torch.nn.MaxPool2d): implicit padding never
 * wins (it acts as -inf), ties go to the first maximum in row-major window order, NaN
 * propagates. Beyond round 1's kernel, stride and symmetric padding it takes ONNX MaxPool's
 * asymmetric padding, dilation and ceil_mode (tl_pool_geom, layer.h). In training with a
 * backward pass the flat index of each maximum within its input plane is saved (as int32
 * in the saved floats) and backward routes the gradient there. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "layer.h"

typedef tl_pool_geom maxpool_cfg;

static int maxpool_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* kh kw sh sw pt pl [pb pr dh dw ceil_mode]: round 1's six pad symmetrically */
    if ((ni != 6 && ni != 11) || nf != 0)
        return tl_fail(TLEARN_EINVAL, "maxpool2d '%s': expected 6 or 11 arguments", L->name);
    maxpool_cfg c = {ia[0], ia[1], ia[2], ia[3], ia[4], ia[5], ia[4], ia[5], 1, 1, 0};
    if (ni == 11) {
        c.pb = ia[6];
        c.pr = ia[7];
        c.dh = ia[8];
        c.dw = ia[9];
        c.ceil_mode = ia[10];
    }
    int rc = tl_pool_check(L, "maxpool2d", &c);
    return rc ? rc : tl_layer_config(L, &c, sizeof c);
}

static void maxpool_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const maxpool_cfg *c = L->cfg;
    int v[11] = {c->kh, c->kw, c->sh, c->sw, c->pt, c->pl, c->pb, c->pr, c->dh, c->dw,
                 c->ceil_mode};
    memcpy(ia, v, sizeof v);
    *ni = tl_pool_plain(c) ? 6 : 11; /* round 1's form when it says everything */
    *nf = 0;
}

static int maxpool_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    return tl_pool_setup(L, "maxpool2d", L->cfg);
}

static size_t maxpool_saved_floats(const tl_layer *L, size_t n, int backward)
{
    return backward ? n * tl_shape_size(L->out) : 0;
}

/* The first and one-past-last tap k of a window starting at @p p0 with taps p0 + k*d,
 * k < kernel, that fall inside [0, len). */
static inline void taps(int p0, int d, int kernel, int len, int *k0, int *k1)
{
    *k0 = p0 < 0 ? (-p0 + d - 1) / d : 0;
    int inside = len - p0 <= 0 ? 0 : (len - p0 + d - 1) / d;
    *k1 = inside < kernel ? inside : kernel;
}

/* Maximum of the window of output (oh, ow) in plane x; its flat index into *at. */
static float window_max(const maxpool_cfg *c, tl_shape is, const float *x, int oh, int ow,
                        int *at)
{
    int h0 = oh * c->sh - c->pt, w0 = ow * c->sw - c->pl, i0, i1, j0, j1;
    taps(h0, c->dh, c->kh, is.h, &i0, &i1);
    taps(w0, c->dw, c->kw, is.w, &j0, &j1);
    /* as PyTorch: start at the window's first element with -inf; NaN wins and stops */
    float best = -INFINITY;
    int bi = (h0 + i0 * c->dh) * is.w + w0 + j0 * c->dw;
    for (int i = i0; i < i1; i++)
        for (int j = j0; j < j1; j++) {
            int k = (h0 + i * c->dh) * is.w + w0 + j * c->dw;
            float v = x[k];
            if (v > best || isnan(v)) {
                best = v;
                bi = k;
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

/* The plain 2x2, stride 2, unpadded pool (floor mode: an odd last row/column is unread). */
static int is_pool2(const maxpool_cfg *c)
{
    return c->kh == 2 && c->kw == 2 && c->sh == 2 && c->sw == 2 && c->pt == 0 && c->pl == 0 &&
           tl_pool_plain(c);
}

TL_CLONES
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
                /* as selects, last candidate first: branches here mispredicted on random
                 * data and made this loop a sixth of a LoRA CNN step */
                int32_t off = is.w + 1;
                off = bits(c) == u ? is.w : off;
                off = bits(b) == u ? 1 : off;
                off = bits(a) == u ? 0 : off;
                y[ow] = v;
                at[ow] = base + 2 * ow + off;
            }
        }
}

/* Backward of the 2x2 pool over planes [q0, q1): 2x2 windows tile the input (up to a last
 * odd row/column that no window reads), so every covered element is written once and no
 * clearing pass is needed. */
TL_CLONES
static void pool2x2_backward_planes(tl_shape is, tl_shape os, const float *dout,
                                    const int32_t *arg, float *dx, int accum, size_t q0,
                                    size_t q1)
{
    size_t ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    for (size_t q = q0; q < q1; q++) {
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
            /* by input column j (contiguous stores; window ow = j / 2), the winner's
             * offset in its window being 0, 1, W or W+1 */
            if (!accum)
#pragma omp simd
                for (int j = 0; j < 2 * os.w; j++) {
                    int32_t at = ar[j >> 1] - base - (j & ~1), p = j & 1;
                    float v = gr[j >> 1];
                    r0[j] = at == p ? v : 0.0f;
                    r1[j] = at == is.w + p ? v : 0.0f;
                }
            else
#pragma omp simd
                for (int j = 0; j < 2 * os.w; j++) {
                    int32_t at = ar[j >> 1] - base - (j & ~1), p = j & 1;
                    float v = gr[j >> 1];
                    r0[j] += at == p ? v : 0.0f;
                    r1[j] += at == is.w + p ? v : 0.0f;
                }
        }
    }
}

/* The outputs [*o0, *o1) along one axis whose windows lie wholly inside [0, len). */
static void interior(int out, int stride, int pad, int span, int len, int *o0, int *o1)
{
    *o0 = pad <= 0 ? 0 : (pad + stride - 1) / stride;
    int last = len + pad - span; /* the last start that fits: o * stride <= last */
    *o1 = last < 0 ? 0 : last / stride + 1;
    *o1 = *o1 < out ? *o1 : out;
    *o0 = *o0 < *o1 ? *o0 : *o1;
}

/* Outputs [o0, o1) of row oh of one plane by window_max (the border). */
static void plain_run(const maxpool_cfg *c, tl_shape is, const float *x, float *y,
                      int32_t *arg, int oh, int o0, int o1)
{
    for (int ow = o0; ow < o1; ow++) {
        int at;
        y[ow] = window_max(c, is, x, oh, ow, &at);
        if (arg)
            arg[ow] = at;
    }
}

/* Any kernel, stride, padding and dilation. Windows wholly inside the plane (all but a
 * border ring; ResNet's 3x3/2 stem pool) fold tl_pool_pick over the taps in row-major
 * order, which is window_max's answer, vectorised across the row; the index is then the
 * first tap with the winner's bits (an earlier one with them would have won). The border
 * goes through window_max. */
TL_CLONES
static void general_planes(const maxpool_cfg *c, tl_shape is, tl_shape os, const float *in,
                           float *out, int32_t *arg, size_t q0, size_t q1)
{
    size_t ip = (size_t)is.h * is.w, op = (size_t)os.h * os.w;
    int oh0, oh1, ow0, ow1;
    interior(os.h, c->sh, c->pt, (c->kh - 1) * c->dh + 1, is.h, &oh0, &oh1);
    interior(os.w, c->sw, c->pl, (c->kw - 1) * c->dw + 1, is.w, &ow0, &ow1);
    for (size_t q = q0; q < q1; q++) {
        const float *x = in + q * ip;
        for (int oh = 0; oh < os.h; oh++) {
            float *restrict y = out + q * op + (size_t)oh * os.w;
            int32_t *restrict ar = arg ? arg + q * op + (size_t)oh * os.w : NULL;
            if (oh < oh0 || oh >= oh1 || ow1 == ow0) {
                plain_run(c, is, x, y, ar, oh, 0, os.w);
                continue;
            }
            plain_run(c, is, x, y, ar, oh, 0, ow0);
            const float *r = x + (ptrdiff_t)(oh * c->sh - c->pt) * is.w - c->pl;
#pragma omp simd
            for (int o = ow0; o < ow1; o++) {
                const float *w = r + (ptrdiff_t)o * c->sw;
                float best = w[0];
                for (int i = 0; i < c->kh; i++)
                    for (int j = 0; j < c->kw; j++)
                        best = tl_pool_pick(best, w[i * c->dh * is.w + j * c->dw]);
                y[o] = best;
            }
            for (int o = ow0; ar && o < ow1; o++) {
                const float *w = r + (ptrdiff_t)o * c->sw;
                uint32_t u = bits(y[o]);
                int k = -1;
                for (int t = 0; k < 0 && t < c->kh * c->kw; t++) {
                    int off = t / c->kw * c->dh * is.w + t % c->kw * c->dw;
                    k = bits(w[off]) == u ? off : -1;
                }
                ar[o] = (int32_t)(w - x) + k;
            }
            plain_run(c, is, x, y, ar, oh, ow1, os.w);
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
    int fast = is_pool2(c);
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
    if (arg && is_pool2(c)) {
        int nt = tl_par_threads(tl_blas_threads(ex->blas), planes * ip);
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            size_t q0 = 0, q1 = planes;
#ifdef _OPENMP
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            q0 = planes * (size_t)t / (size_t)T;
            q1 = planes * (size_t)(t + 1) / (size_t)T;
#endif
            pool2x2_backward_planes(is, os, dout, arg, dx, accum, q0, q1);
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
    .bwd_ignores_output = 1,
    .configure = maxpool_configure,
    .arguments = maxpool_arguments,
    .setup = maxpool_setup,
    .saved_floats = maxpool_saved_floats,
    .forward = maxpool_forward,
    .backward = maxpool_backward,
};
