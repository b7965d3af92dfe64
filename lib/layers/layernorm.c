/* Layer normalisation in two modes.
 * - Trailing axes (torch.nn.LayerNorm(normalized_shape)): each example is cut into rows of
 *   the last `naxes` dimensions; every row is normalised by its own mean and (biased)
 *   variance, then scaled and shifted elementwise by weight/bias of that shape.
 * - Channel axis (naxes 0; ConvNeXt's LayerNorm2d, "channels_first"): for a (C, ...) input
 *   every position is normalised over the C channels, with weight/bias of shape (C).
 * y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps). Forward keeps mean and
 * rstd per normalised group for backward when it runs in training mode; backward after an
 * evaluation-mode forward recomputes them. No scratch: the channel mode works on tiles of
 * positions with its statistics on the stack. Loops carry `omp simd` because the default
 * -O2 cost model does not vectorise loops of unknown length. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct layernorm_cfg {
    int naxes;  /* 1..rank: trailing axes; 0: the channel axis */
    int affine; /* weight and bias */
    float eps;
} layernorm_cfg;

/* Positions per tile in the channel mode (statistics of one tile live on the stack). */
#define LN_TILE 64

static int layernorm_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    /* ia: naxes affine; fa: eps */
    if (ni != 2 || nf != 1)
        return tl_fail(TLEARN_EINVAL, "layernorm '%s': expected 2 integer arguments (naxes, "
                       "affine) and 1 float (eps)", L->name);
    layernorm_cfg c = {ia[0], ia[1], fa[0]};
    if (c.naxes < 0 || c.naxes > TL_MAX_RANK)
        return tl_fail(TLEARN_EINVAL, "layernorm '%s': naxes is %d, must be 0 (channel axis) "
                       "to %d", L->name, c.naxes, TL_MAX_RANK);
    if (c.affine != 0 && c.affine != 1)
        return tl_fail(TLEARN_EINVAL, "layernorm '%s': affine is %d, must be 0 or 1", L->name,
                       c.affine);
    if (!(c.eps > 0.0f) || isinf(c.eps))
        return tl_fail(TLEARN_EINVAL, "layernorm '%s': eps is %g, must be finite and > 0",
                       L->name, (double)c.eps);
    return tl_layer_config(L, &c, sizeof c);
}

static void layernorm_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    const layernorm_cfg *c = L->cfg;
    ia[0] = c->naxes;
    ia[1] = c->affine;
    fa[0] = c->eps;
    *ni = 2;
    *nf = 1;
}

/* Groups normalised per example and the length of each: (rows, row length) in the
 * trailing mode, (positions, channels) in the channel mode. */
static size_t ln_groups(const tl_layer *L, int *len)
{
    const layernorm_cfg *c = L->cfg;
    tl_shape s = L->in[0];
    size_t d = 1;
    if (c->naxes == 0)
        d = (size_t)s.d[0];
    else
        for (int i = s.rank - c->naxes; i < s.rank; i++)
            d *= (size_t)s.d[i];
    *len = (int)d;
    return tl_shape_size(s) / d;
}

static int layernorm_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const layernorm_cfg *c = L->cfg;
    tl_shape s = L->in[0];
    if (L->ninputs != 1)
        return tl_fail(TLEARN_EINVAL, "layernorm '%s': needs 1 input, has %d", L->name,
                       L->ninputs);
    if (c->naxes > s.rank) {
        char b[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "layernorm '%s': normalises over the last %d axes, but "
                       "its input %s has %d", L->name, c->naxes, tl_shape_str(s, b), s.rank);
    }
    L->out = s;
    if (!c->affine)
        return TLEARN_OK;
    /* weight/bias: the normalised shape (trailing), or (C) */
    int nd = c->naxes ? c->naxes : 1;
    const int *dims = c->naxes ? s.d + (s.rank - c->naxes) : s.d;
    int rc = tl_layer_add_param(L, "weight", nd, dims, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "bias", nd, dims, 0);
    if (rc)
        return rc;
    /* torch's initialisation: weight 1, bias 0 */
    for (size_t i = 0; i < L->param[0].t.numel; i++)
        L->param[0].t.data[i] = 1.0f;
    memset(L->param[1].t.data, 0, sizeof(float) * L->param[1].t.numel);
    return TLEARN_OK;
}

static size_t layernorm_saved_floats(const tl_layer *L, size_t n, int backward)
{
    int len;
    return backward ? 2 * n * ln_groups(L, &len) : 0; /* mean, rstd per group */
}

/* The mean and 1/sqrt(var + eps) of x[0..n), summed in double; OpenMP simd reductions
 * let the sums vectorise (the library is built without -ffast-math). */
static void row_moments(const float *restrict x, int n, float *mean, float *rstd, float eps)
{
    double s = 0.0, q = 0.0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += x[i];
    float m = (float)(s / n);
#pragma omp simd reduction(+ : q)
    for (int i = 0; i < n; i++) {
        float d = x[i] - m;
        q += (double)d * d;
    }
    *mean = m;
    *rstd = (float)(1.0 / sqrt(q / n + (double)eps));
}

/* Trailing mode: rows [r0, r1) of length d. */
static void rows_forward(const layernorm_cfg *c, const float *w, const float *b, const float *x,
                         float *y, int d, size_t r0, size_t r1, float *mean, float *rstd)
{
    for (size_t r = r0; r < r1; r++) {
        const float *xr = x + r * d;
        float *restrict yr = y + r * d;
        float m, s;
        row_moments(xr, d, &m, &s, c->eps);
        if (mean) {
            mean[r] = m;
            rstd[r] = s;
        }
        if (w) {
#pragma omp simd
            for (int i = 0; i < d; i++)
                yr[i] = (xr[i] - m) * s * w[i] + b[i];
        } else {
#pragma omp simd
            for (int i = 0; i < d; i++)
                yr[i] = (xr[i] - m) * s;
        }
    }
}

/* Channel mode, one example x (C, P), positions [p0, p0 + t), t <= LN_TILE: mean and rstd
 * over the channels into m[], s[] (loops across positions vectorise). */
static void tile_moments(const float *x, int C, size_t P, size_t p0, int t, float eps, float *m,
                         float *s)
{
    float acc[LN_TILE];
#pragma omp simd
    for (int j = 0; j < t; j++)
        acc[j] = 0.0f;
    for (int ch = 0; ch < C; ch++) {
        const float *xc = x + (size_t)ch * P + p0;
#pragma omp simd
        for (int j = 0; j < t; j++)
            acc[j] += xc[j];
    }
#pragma omp simd
    for (int j = 0; j < t; j++) {
        m[j] = acc[j] / (float)C;
        acc[j] = 0.0f;
    }
    for (int ch = 0; ch < C; ch++) {
        const float *xc = x + (size_t)ch * P + p0;
#pragma omp simd
        for (int j = 0; j < t; j++) {
            float d = xc[j] - m[j];
            acc[j] += d * d;
        }
    }
#pragma omp simd
    for (int j = 0; j < t; j++)
        s[j] = 1.0f / sqrtf(acc[j] / (float)C + eps);
}

static void tile_forward(const layernorm_cfg *c, const float *w, const float *b, const float *x,
                         float *y, int C, size_t P, size_t p0, int t, float *mean, float *rstd)
{
    float m[LN_TILE], s[LN_TILE];
    tile_moments(x, C, P, p0, t, c->eps, m, s);
    if (mean) {
        memcpy(mean + p0, m, sizeof(float) * (size_t)t);
        memcpy(rstd + p0, s, sizeof(float) * (size_t)t);
    }
    for (int ch = 0; ch < C; ch++) {
        const float *xc = x + (size_t)ch * P + p0;
        float *restrict yc = y + (size_t)ch * P + p0;
        float wc = w ? w[ch] : 1.0f, bc = w ? b[ch] : 0.0f;
#pragma omp simd
        for (int j = 0; j < t; j++)
            yc[j] = (xc[j] - m[j]) * s[j] * wc + bc;
    }
}

static void layernorm_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                              size_t n, float *saved)
{
    const layernorm_cfg *c = L->cfg;
    int d;
    size_t groups = ln_groups(L, &d), total = n * groups;
    const float *w = c->affine ? L->param[0].t.data : NULL;
    const float *b = c->affine ? L->param[1].t.data : NULL;
    float *mean = ex->backward && saved ? saved : NULL, *rstd = mean ? saved + total : NULL;
    const float *x = in[0];
    int nt = tl_par_threads(tl_blas_threads(ex->blas), total * (size_t)d);
    if (c->naxes) {
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
        for (size_t r = 0; r < total; r++)
            rows_forward(c, w, b, x, out, d, r, r + 1, mean, rstd);
        return;
    }
    /* channel mode: the tiles of every example are independent */
    size_t P = groups, tiles = (P + LN_TILE - 1) / LN_TILE, ex_size = (size_t)d * P;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (size_t k = 0; k < n * tiles; k++) {
        size_t e = k / tiles, p0 = (k % tiles) * LN_TILE;
        int t = P - p0 < LN_TILE ? (int)(P - p0) : LN_TILE;
        tile_forward(c, w, b, x + e * ex_size, out + e * ex_size, d, P, p0, t,
                     mean ? mean + e * P : NULL, rstd ? rstd + e * P : NULL);
    }
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight, xhat the normalised
 * input; dweight += dy * xhat, dbias += dy. */
static void rows_backward(const layernorm_cfg *c, const float *w, const float *x,
                          const float *dy, float *dx, int accum, int d, size_t rows,
                          const float *mean, const float *rstd, float *dw, float *db)
{
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * d, *gr = dy + r * d;
        float m, s;
        if (mean) {
            m = mean[r];
            s = rstd[r];
        } else {
            row_moments(xr, d, &m, &s, c->eps);
        }
        if (dw) {
#pragma omp simd
            for (int i = 0; i < d; i++)
                dw[i] += gr[i] * ((xr[i] - m) * s);
        }
        if (db) {
#pragma omp simd
            for (int i = 0; i < d; i++)
                db[i] += gr[i];
        }
        if (!dx)
            continue;
        double sa = 0.0, sq = 0.0;
#pragma omp simd reduction(+ : sa, sq)
        for (int i = 0; i < d; i++) {
            float g = w ? gr[i] * w[i] : gr[i];
            sa += g;
            sq += (double)g * ((xr[i] - m) * s);
        }
        float ga = (float)(sa / d), gq = (float)(sq / d);
        float *restrict dr = dx + r * d;
#pragma omp simd
        for (int i = 0; i < d; i++) {
            float g = w ? gr[i] * w[i] : gr[i];
            float v = s * (g - ga - (xr[i] - m) * s * gq);
            dr[i] = accum ? dr[i] + v : v;
        }
    }
}

static void tile_backward(const layernorm_cfg *c, const float *w, const float *x,
                          const float *dy, float *dx, int accum, int C, size_t P, size_t p0,
                          int t, const float *mean, const float *rstd, float *dw, float *db)
{
    float m[LN_TILE], s[LN_TILE], ga[LN_TILE], gq[LN_TILE];
    if (mean) {
        memcpy(m, mean + p0, sizeof(float) * (size_t)t);
        memcpy(s, rstd + p0, sizeof(float) * (size_t)t);
    } else {
        tile_moments(x, C, P, p0, t, c->eps, m, s);
    }
#pragma omp simd
    for (int j = 0; j < t; j++)
        ga[j] = gq[j] = 0.0f;
    for (int ch = 0; ch < C; ch++) {
        const float *xc = x + (size_t)ch * P + p0, *gc = dy + (size_t)ch * P + p0;
        float wc = w ? w[ch] : 1.0f;
        float sw = 0.0f, sb = 0.0f;
#pragma omp simd reduction(+ : sw, sb)
        for (int j = 0; j < t; j++) {
            float xh = (xc[j] - m[j]) * s[j], g = gc[j] * wc;
            ga[j] += g;
            gq[j] += g * xh;
            sw += gc[j] * xh;
            sb += gc[j];
        }
        if (dw)
            dw[ch] += sw;
        if (db)
            db[ch] += sb;
    }
    if (!dx)
        return;
#pragma omp simd
    for (int j = 0; j < t; j++) {
        ga[j] /= (float)C;
        gq[j] /= (float)C;
    }
    for (int ch = 0; ch < C; ch++) {
        const float *xc = x + (size_t)ch * P + p0, *gc = dy + (size_t)ch * P + p0;
        float *restrict dc = dx + (size_t)ch * P + p0;
        float wc = w ? w[ch] : 1.0f;
#pragma omp simd
        for (int j = 0; j < t; j++) {
            float v = s[j] * (gc[j] * wc - ga[j] - (xc[j] - m[j]) * s[j] * gq[j]);
            dc[j] = accum ? dc[j] + v : v;
        }
    }
}

static void layernorm_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                               const float *out, const float *dout, float *const *din, int accum,
                               size_t n, const float *saved, float *const *pgrad)
{
    (void)out; (void)ex;
    const layernorm_cfg *c = L->cfg;
    int d;
    size_t groups = ln_groups(L, &d), total = n * groups;
    const float *w = c->affine ? L->param[0].t.data : NULL;
    float *dw = c->affine && pgrad ? pgrad[0] : NULL, *db = c->affine && pgrad ? pgrad[1] : NULL;
    if (!dw && !db && !din[0])
        return;
    if (dw)
        memset(dw, 0, sizeof(float) * L->param[0].t.numel);
    if (db)
        memset(db, 0, sizeof(float) * L->param[1].t.numel);
    const float *mean = saved, *rstd = saved ? saved + total : NULL;
    if (c->naxes) {
        rows_backward(c, w, in[0], dout, din[0], accum, d, total, mean, rstd, dw, db);
        return;
    }
    size_t P = groups, ex_size = (size_t)d * P;
    for (size_t e = 0; e < n; e++)
        for (size_t p0 = 0; p0 < P; p0 += LN_TILE) {
            int t = P - p0 < LN_TILE ? (int)(P - p0) : LN_TILE;
            tile_backward(c, w, in[0] + e * ex_size, dout + e * ex_size,
                          din[0] ? din[0] + e * ex_size : NULL, accum, d, P, p0, t,
                          mean ? mean + e * P : NULL, rstd ? rstd + e * P : NULL, dw, db);
        }
}

const tl_layer_ops tl_layernorm_ops = {
    .kind = TLEARN_LAYER_LAYERNORM,
    .kind_name = "layernorm",
    .bwd_ignores_output = 1,
    .configure = layernorm_configure,
    .arguments = layernorm_arguments,
    .setup = layernorm_setup,
    .saved_floats = layernorm_saved_floats,
    .forward = layernorm_forward,
    .backward = layernorm_backward,
};
