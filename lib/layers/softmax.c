/* Softmax over one axis of each example, as torch.softmax: the maximum along the axis is
 * subtracted before exp, the sum is taken in double and the exponentials are scaled by its
 * reciprocal. Backward: dx = y * (dy - sum(dy * y)) along the axis.
 *
 * Arguments: ia {axis}: over the example's dimensions, negative from the end (-1: last). */
#include <math.h>
#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "layer.h"

typedef struct softmax_cfg {
    int axis;            /* as given */
    size_t outer, inner; /* per example: before and after the axis */
    int len;             /* along it */
} softmax_cfg;

static int softmax_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni != 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "softmax '%s': expected 1 argument (axis)", L->name);
    if (ia[0] < -TL_MAX_RANK || ia[0] >= TL_MAX_RANK)
        return tl_fail(TLEARN_EINVAL, "softmax '%s': axis %d is not in %d..%d", L->name, ia[0],
                       -TL_MAX_RANK, TL_MAX_RANK - 1);
    softmax_cfg cfg = {ia[0], 1, 1, 1};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void softmax_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    ia[0] = ((const softmax_cfg *)L->cfg)->axis;
    *ni = 1;
    *nf = 0;
}

static int softmax_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    softmax_cfg *cfg = L->cfg;
    tl_shape s = L->in[0];
    int axis = cfg->axis < 0 ? cfg->axis + s.rank : cfg->axis;
    if (axis < 0 || axis >= s.rank) {
        char buf[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "softmax '%s': axis %d is outside the %d dimensions of "
                       "its input %s", L->name, cfg->axis, s.rank, tl_shape_str(s, buf));
    }
    cfg->outer = cfg->inner = 1;
    for (int j = 0; j < axis; j++)
        cfg->outer *= (size_t)s.d[j];
    for (int j = axis + 1; j < s.rank; j++)
        cfg->inner *= (size_t)s.d[j];
    cfg->len = s.d[axis];
    L->out = s;
    return TLEARN_OK;
}

/* Positions along the inner extent handled together when the axis is not the last one:
 * their running maxima and sums live on the stack. */
#define SM_CHUNK 256

/* Slices [lo, hi) of len x inner floats each (one per outer index of the batch). */
static void forward_range(const softmax_cfg *c, const float *x, float *y, size_t lo,
                          size_t hi)
{
    size_t len = (size_t)c->len, inner = c->inner;
    for (size_t q = lo; q < hi; q++) {
        const float *xs = x + q * len * inner;
        float *ys = y + q * len * inner;
        if (inner == 1) {
            float m = xs[0];
#pragma omp simd reduction(max : m)
            for (size_t k = 1; k < len; k++)
                m = xs[k] > m ? xs[k] : m;
            double s = 0.0;
            for (size_t k = 0; k < len; k++) {
                ys[k] = expf(xs[k] - m);
                s += ys[k];
            }
            const float r = (float)(1.0 / s);
#pragma omp simd
            for (size_t k = 0; k < len; k++)
                ys[k] *= r;
            continue;
        }
        for (size_t j0 = 0; j0 < inner; j0 += SM_CHUNK) {
            size_t w = inner - j0 < SM_CHUNK ? inner - j0 : SM_CHUNK;
            float m[SM_CHUNK];
            double s[SM_CHUNK];
            for (size_t j = 0; j < w; j++) {
                m[j] = xs[j0 + j];
                s[j] = 0.0;
            }
            for (size_t k = 1; k < len; k++) {
                const float *xk = xs + k * inner + j0;
#pragma omp simd
                for (size_t j = 0; j < w; j++)
                    m[j] = xk[j] > m[j] ? xk[j] : m[j];
            }
            for (size_t k = 0; k < len; k++) {
                const float *xk = xs + k * inner + j0;
                float *yk = ys + k * inner + j0;
                for (size_t j = 0; j < w; j++) {
                    yk[j] = expf(xk[j] - m[j]);
                    s[j] += yk[j];
                }
            }
            for (size_t j = 0; j < w; j++)
                m[j] = (float)(1.0 / s[j]); /* now the reciprocal */
            for (size_t k = 0; k < len; k++) {
                float *yk = ys + k * inner + j0;
#pragma omp simd
                for (size_t j = 0; j < w; j++)
                    yk[j] *= m[j];
            }
        }
    }
}

static void backward_range(const softmax_cfg *c, const float *y, const float *dy, float *dx,
                           int accum, size_t lo, size_t hi)
{
    size_t len = (size_t)c->len, inner = c->inner;
    for (size_t q = lo; q < hi; q++) {
        size_t base = q * len * inner;
        if (inner == 1) { /* the last axis: one dot product, then one pass */
            const float *ys = y + base, *gs = dy + base;
            float *ds = dx + base;
            double d = 0.0;
#pragma omp simd reduction(+ : d)
            for (size_t k = 0; k < len; k++)
                d += (double)gs[k] * ys[k];
            const float t = (float)d;
            if (accum) {
#pragma omp simd
                for (size_t k = 0; k < len; k++)
                    ds[k] += (gs[k] - t) * ys[k];
            } else {
#pragma omp simd
                for (size_t k = 0; k < len; k++)
                    ds[k] = (gs[k] - t) * ys[k];
            }
            continue;
        }
        for (size_t j0 = 0; j0 < inner; j0 += SM_CHUNK) {
            size_t w = inner - j0 < SM_CHUNK ? inner - j0 : SM_CHUNK;
            double dot[SM_CHUNK];
            float t[SM_CHUNK];
            for (size_t j = 0; j < w; j++)
                dot[j] = 0.0;
            for (size_t k = 0; k < len; k++) {
                size_t o = base + k * inner + j0;
                for (size_t j = 0; j < w; j++)
                    dot[j] += (double)dy[o + j] * y[o + j];
            }
            for (size_t j = 0; j < w; j++)
                t[j] = (float)dot[j];
            for (size_t k = 0; k < len; k++) {
                size_t o = base + k * inner + j0;
                const float *yk = y + o, *gk = dy + o;
                float *dk = dx + o;
                if (accum) {
#pragma omp simd
                    for (size_t j = 0; j < w; j++)
                        dk[j] += (gk[j] - t[j]) * yk[j];
                } else {
#pragma omp simd
                    for (size_t j = 0; j < w; j++)
                        dk[j] = (gk[j] - t[j]) * yk[j];
                }
            }
        }
    }
}

/* Slices of the batch split across the model's threads when the tensor is large. */
static void softmax_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                            size_t n, float *saved)
{
    (void)saved;
    const softmax_cfg *c = L->cfg;
    size_t slices = n * c->outer;
    int nt = tl_par_threads(tl_blas_threads(ex->blas), n * tl_shape_size(L->out));
    if (nt == 1) {
        forward_range(c, in[0], out, 0, slices);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t q = 0; q < slices; q++)
        forward_range(c, in[0], out, q, q + 1);
}

static void softmax_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                             const float *out, const float *dout, float *const *din, int accum,
                             size_t n, const float *saved, float *const *pgrad)
{
    (void)in; (void)saved; (void)pgrad;
    const softmax_cfg *c = L->cfg;
    if (!din[0])
        return;
    size_t slices = n * c->outer;
    int nt = tl_par_threads(tl_blas_threads(ex->blas), n * tl_shape_size(L->out));
    if (nt == 1) {
        backward_range(c, out, dout, din[0], accum, 0, slices);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t q = 0; q < slices; q++)
        backward_range(c, out, dout, din[0], accum, q, q + 1);
}

const tl_layer_ops tl_softmax_ops = {
    .kind = TLEARN_LAYER_SOFTMAX,
    .kind_name = "softmax",
    .configure = softmax_configure,
    .arguments = softmax_arguments,
    .setup = softmax_setup,
    .forward = softmax_forward,
    .backward = softmax_backward,
};
