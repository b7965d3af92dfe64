/* Winograd F(2x2, 3x3) convolution (winograd.h): forward (also the input gradient, a
 * convolution with flipped filters) and, at the end, the weight gradient. With g a 3x3
 * filter and d a 4x4 input tile, the 2x2 output tile is A^T [(G g G^T) .* (B^T d B)] A, where
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 *   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 *   A^T = [1 1 1 0; 0 1 -1 -1].
 * Summed over input channels, the 16 elementwise products become 16 GEMMs:
 *   M[xi] (F x T) = U[xi] (F x Cin) * V[xi] (Cin x T),   xi = 4*row + column of the tile,
 * with U the transformed filters and V the transformed input tiles (T tiles of a pass of a
 * few images). The input is first copied into zero-padded planes that hold whole tiles, so
 * that every tile reads its 16 values without bounds checks. */
#include <string.h>

#include "winograd.h"

/* Images per pass: V, M and the padded planes within about 4 MB. Larger passes give the 16
 * GEMMs wider matrices (N = tiles); on the reference CNN 4 MB ran 9 % faster than 1 MB and
 * 5 % faster than 8 MB. */
#define WINO_PASS_FLOATS (1024u * 1024u)

typedef struct geom {
    int th, tw;      /* tiles per image: rows, columns */
    int prow, pcol;  /* padded plane: 2*th + 2 rows of 2*tw + 2 */
    size_t tiles;    /* th * tw */
    size_t plane;    /* prow * pcol */
    size_t per_image; /* floats of V, M and planes per image */
} geom;

static geom geometry(const tl_wino *w)
{
    geom g;
    g.th = (w->hout + 1) / 2;
    g.tw = (w->wout + 1) / 2;
    g.prow = 2 * g.th + 2;
    g.pcol = 2 * g.tw + 2;
    g.tiles = (size_t)g.th * g.tw;
    g.plane = (size_t)g.prow * g.pcol;
    g.per_image = 16 * g.tiles * (size_t)(w->cin + w->filters) + (size_t)w->cin * g.plane;
    return g;
}

static size_t pass_images(const geom *g, size_t n)
{
    size_t t = WINO_PASS_FLOATS / g->per_image;
    return t < 1 ? 1 : t > n ? n : t;
}

static size_t round16(size_t floats)
{
    return (floats + 15) / 16 * 16;
}

size_t tl_wino_scratch_floats(const tl_wino *w, size_t n)
{
    geom g = geometry(w);
    return round16(tl_wino_filter_floats(w)) + pass_images(&g, n) * g.per_image;
}

size_t tl_wino_filter_floats(const tl_wino *w)
{
    return (size_t)16 * w->filters * w->cin;
}

/* U[xi][f][c] = (G g G^T)[xi] for the filter g of output f, input channel c. */
void tl_wino_transform_filters(const tl_wino *w, const float *weight, float *U, int threads)
{
    int pairs = w->filters * w->cin;
    int par = tl_par_threads(threads, (size_t)pairs * 16);
#pragma omp parallel for simd num_threads(par) if (par > 1) schedule(static)
    for (int p = 0; p < pairs; p++) {
        float g[9];
        if (w->flip) { /* filter (f, c) is the forward layer's (c, f), rotated */
            const float *src = weight + ((size_t)(p % w->cin) * w->filters + p / w->cin) * 9;
            for (int k = 0; k < 9; k++)
                g[k] = src[8 - k];
        } else {
            memcpy(g, weight + (size_t)p * 9, sizeof g);
        }
        float *u = U + p;
        size_t s = (size_t)pairs; /* from one xi to the next */
        /* G g: rows a (= g row 0), b, c, d (= g row 2) */
        float a0 = g[0], a1 = g[1], a2 = g[2], d0 = g[6], d1 = g[7], d2 = g[8];
        float b0 = 0.5f * (g[0] + g[3] + g[6]), b1 = 0.5f * (g[1] + g[4] + g[7]);
        float b2 = 0.5f * (g[2] + g[5] + g[8]);
        float c0 = 0.5f * (g[0] - g[3] + g[6]), c1 = 0.5f * (g[1] - g[4] + g[7]);
        float c2 = 0.5f * (g[2] - g[5] + g[8]);
        /* times G^T */
        u[0 * s] = a0, u[1 * s] = 0.5f * (a0 + a1 + a2), u[2 * s] = 0.5f * (a0 - a1 + a2);
        u[3 * s] = a2;
        u[4 * s] = b0, u[5 * s] = 0.5f * (b0 + b1 + b2), u[6 * s] = 0.5f * (b0 - b1 + b2);
        u[7 * s] = b2;
        u[8 * s] = c0, u[9 * s] = 0.5f * (c0 + c1 + c2), u[10 * s] = 0.5f * (c0 - c1 + c2);
        u[11 * s] = c2;
        u[12 * s] = d0, u[13 * s] = 0.5f * (d0 + d1 + d2), u[14 * s] = 0.5f * (d0 - d1 + d2);
        u[15 * s] = d2;
    }
}

/* Job j = (channel c, image i) of transform_inputs. The transforms only add and subtract:
 * every instruction set gives the same bits (TL_CLONES, layer.h). */
TL_CLONES
static void input_job(const tl_wino *w, const geom *g, const float *x, int nt, float *P,
                      float *V, int j)
{
    size_t T = (size_t)nt * g->tiles, img = (size_t)w->cin * w->hin * w->win;
    int c = j / nt, i = j % nt;
    float *pl = P + (size_t)j * g->plane;
    const float *src = x + (size_t)i * img + (size_t)c * w->hin * w->win;
    memset(pl, 0, sizeof(float) * g->plane);
    for (int r = 0; r < w->hin; r++)
        memcpy(pl + (size_t)(r + w->ph) * g->pcol + w->pw, src + (size_t)r * w->win,
               sizeof(float) * (size_t)w->win);
    float *v = V + (size_t)c * T + (size_t)i * g->tiles;
    size_t xs = (size_t)w->cin * T; /* from one xi to the next */
    for (int ty = 0; ty < g->th; ty++) {
        const float *r0 = pl + (size_t)(2 * ty) * g->pcol, *r1 = r0 + g->pcol;
        const float *r2 = r1 + g->pcol, *r3 = r2 + g->pcol;
        float *vt = v + (size_t)ty * g->tw;
#pragma omp simd
        for (int tx = 0; tx < g->tw; tx++) {
            const int o = 2 * tx;
            /* the rows of B^T d ... */
            float a0 = r0[o] - r2[o], a1 = r0[o + 1] - r2[o + 1];
            float a2 = r0[o + 2] - r2[o + 2], a3 = r0[o + 3] - r2[o + 3];
            float b0 = r1[o] + r2[o], b1 = r1[o + 1] + r2[o + 1];
            float b2 = r1[o + 2] + r2[o + 2], b3 = r1[o + 3] + r2[o + 3];
            float c0 = r2[o] - r1[o], c1 = r2[o + 1] - r1[o + 1];
            float c2 = r2[o + 2] - r1[o + 2], c3 = r2[o + 3] - r1[o + 3];
            float d0 = r1[o] - r3[o], d1 = r1[o + 1] - r3[o + 1];
            float d2 = r1[o + 2] - r3[o + 2], d3 = r1[o + 3] - r3[o + 3];
            /* ... times B */
            vt[0 * xs + tx] = a0 - a2, vt[1 * xs + tx] = a1 + a2;
            vt[2 * xs + tx] = a2 - a1, vt[3 * xs + tx] = a1 - a3;
            vt[4 * xs + tx] = b0 - b2, vt[5 * xs + tx] = b1 + b2;
            vt[6 * xs + tx] = b2 - b1, vt[7 * xs + tx] = b1 - b3;
            vt[8 * xs + tx] = c0 - c2, vt[9 * xs + tx] = c1 + c2;
            vt[10 * xs + tx] = c2 - c1, vt[11 * xs + tx] = c1 - c3;
            vt[12 * xs + tx] = d0 - d2, vt[13 * xs + tx] = d1 + d2;
            vt[14 * xs + tx] = d2 - d1, vt[15 * xs + tx] = d1 - d3;
        }
    }
}

/* Images x[0..nt) into zero-padded planes P[c][i], then V[xi][c][tile] = (B^T d B)[xi]. */
static void transform_inputs(const tl_wino *w, const geom *g, const float *x, int nt, float *P,
                             float *V, int threads)
{
    int jobs = w->cin * nt;
    int par = tl_par_threads(threads, (size_t)jobs * g->plane * 4);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
    for (int j = 0; j < jobs; j++)
        input_job(w, g, x, nt, P, V, j);
}

/* y = A^T m A + bias for tile tx of a row of tiles (m: xi-th value at m[xi*xs + tx]). A
 * macro of scalars: the loops around it vectorise. */
#define TILE_OUTPUT(m, xs, tx, b, y00, y01, y10, y11)                                      \
    do {                                                                                    \
        const float *m_ = (m) + (tx);                                                       \
        float s0 = m_[0] + m_[4 * (xs)] + m_[8 * (xs)];                                     \
        float s1 = m_[1 * (xs)] + m_[5 * (xs)] + m_[9 * (xs)];                              \
        float s2 = m_[2 * (xs)] + m_[6 * (xs)] + m_[10 * (xs)];                             \
        float s3 = m_[3 * (xs)] + m_[7 * (xs)] + m_[11 * (xs)];                             \
        float t0 = m_[4 * (xs)] - m_[8 * (xs)] - m_[12 * (xs)];                             \
        float t1 = m_[5 * (xs)] - m_[9 * (xs)] - m_[13 * (xs)];                             \
        float t2 = m_[6 * (xs)] - m_[10 * (xs)] - m_[14 * (xs)];                            \
        float t3 = m_[7 * (xs)] - m_[11 * (xs)] - m_[15 * (xs)];                            \
        y00 = s0 + s1 + s2 + (b);                                                           \
        y01 = s1 - s2 - s3 + (b);                                                           \
        y10 = t0 + t1 + t2 + (b);                                                           \
        y11 = t1 - t2 - t3 + (b);                                                           \
    } while (0)

/* Job j = (image i, filter f) of transform_outputs (additions only, as input_job). */
TL_CLONES
static void output_job(const tl_wino *w, const geom *g, const float *M, int nt,
                       const float *bias, int epilogue, float *out, int j)
{
    size_t T = (size_t)nt * g->tiles, xs = (size_t)w->filters * T;
    size_t hw = (size_t)w->hout * w->wout, pooled = (size_t)(w->hout / 2) * (w->wout / 2);
    int fold_relu = epilogue & TL_EPILOGUE_RELU, add = w->accumulate;
#define PUT(dst, v) ((dst) = add ? (dst) + (v) : (v))
    int i = j / w->filters, f = j % w->filters;
    const float *m = M + (size_t)f * T + (size_t)i * g->tiles;
    float b = bias ? bias[f] : 0.0f;
    int full = w->wout / 2; /* tiles whose two columns are both inside */
    for (int ty = 0; ty < g->th; ty++) {
        const float *mt = m + (size_t)ty * g->tw;
        if (epilogue & TL_EPILOGUE_POOL2) {
            if (ty >= w->hout / 2)
                break;
            float *op = out + (size_t)j * pooled + (size_t)ty * full;
            uint32_t redo = 0;
#pragma omp simd reduction(| : redo)
            for (int tx = 0; tx < full; tx++) {
                float y00, y01, y10, y11;
                TILE_OUTPUT(mt, xs, tx, b, y00, y01, y10, y11);
                float a = tl_relu(y00), c = tl_relu(y01);
                float d = tl_relu(y10), e = tl_relu(y11);
                op[tx] = tl_pool4_no_nan(a, c, d, e);
                redo |= tl_not_finite(a + c + d + e);
            }
            for (int tx = 0; redo && tx < full; tx++) { /* see tl_pool4 */
                float y00, y01, y10, y11;
                TILE_OUTPUT(mt, xs, tx, b, y00, y01, y10, y11);
                op[tx] = tl_pool4(tl_relu(y00), tl_relu(y01), tl_relu(y10), tl_relu(y11));
            }
            continue;
        }
        float *o0 = out + (size_t)j * hw + (size_t)(2 * ty) * w->wout, *o1 = o0 + w->wout;
        int two_rows = 2 * ty + 1 < w->hout; /* else the image's last, odd row */
        if (two_rows) {
#pragma omp simd
            for (int tx = 0; tx < full; tx++) {
                float y00, y01, y10, y11;
                TILE_OUTPUT(mt, xs, tx, b, y00, y01, y10, y11);
                if (fold_relu) {
                    y00 = tl_relu(y00), y01 = tl_relu(y01);
                    y10 = tl_relu(y10), y11 = tl_relu(y11);
                }
                PUT(o0[2 * tx], y00);
                PUT(o0[2 * tx + 1], y01);
                PUT(o1[2 * tx], y10);
                PUT(o1[2 * tx + 1], y11);
            }
        } else {
            for (int tx = 0; tx < full; tx++) {
                float y00, y01, y10, y11;
                TILE_OUTPUT(mt, xs, tx, b, y00, y01, y10, y11);
                (void)y10, (void)y11;
                PUT(o0[2 * tx], fold_relu ? tl_relu(y00) : y00);
                PUT(o0[2 * tx + 1], fold_relu ? tl_relu(y01) : y01);
            }
        }
        if (full < g->tw) { /* odd width: the last tile's first column only */
            float y00, y01, y10, y11;
            TILE_OUTPUT(mt, xs, full, b, y00, y01, y10, y11);
            (void)y01, (void)y11;
            PUT(o0[2 * full], fold_relu ? tl_relu(y00) : y00);
            if (two_rows)
                PUT(o1[2 * full], fold_relu ? tl_relu(y10) : y10);
        }
    }
}
#undef PUT

/* y = A^T m A for the tiles of M, plus the bias, then the epilogues, into out (images
 * i0 .. i0+nt of the batch). Same arithmetic order as conv2d's output pass. */
static void transform_outputs(const tl_wino *w, const geom *g, const float *M, int nt,
                              const float *bias, int epilogue, float *out, int threads)
{
    int jobs = nt * w->filters;
    int par = tl_par_threads(threads, (size_t)jobs * g->tiles * 16);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
    for (int j = 0; j < jobs; j++)
        output_job(w, g, M, nt, bias, epilogue, out, j);
}

void tl_wino_forward(const tl_wino *w, const tl_exec *ex, const float *x, const float *weight,
                     const float *U, const float *bias, float *out, size_t n)
{
    geom g = geometry(w);
    int threads = tl_blas_threads(ex->blas);
    size_t t_max = pass_images(&g, n);
    float *V = ex->scratch + round16(tl_wino_filter_floats(w));
    float *M = V + t_max * 16 * g.tiles * (size_t)w->cin;
    float *P = M + t_max * 16 * g.tiles * (size_t)w->filters;
    size_t in_img = (size_t)w->cin * w->hin * w->win;
    size_t out_img = (size_t)w->filters * ((ex->epilogue & TL_EPILOGUE_POOL2)
                                               ? (size_t)(w->hout / 2) * (w->wout / 2)
                                               : (size_t)w->hout * w->wout);
    if (!U) {
        tl_wino_transform_filters(w, weight, ex->scratch, threads);
        U = ex->scratch;
    }
    for (size_t i0 = 0; i0 < n; i0 += t_max) {
        int nt = (int)(n - i0 < t_max ? n - i0 : t_max);
        int T = nt * (int)g.tiles;
        transform_inputs(w, &g, x + i0 * in_img, nt, P, V, threads);
        tl_sgemm_batch(ex->blas, 16, 0, 0, w->filters, T, w->cin, U,
                       tl_wino_filter_floats(w) / 16, V, (size_t)w->cin * T, 0.0f, M,
                       (size_t)w->filters * T);
        transform_outputs(w, &g, M, nt, bias, ex->epilogue, out + i0 * out_img, threads);
    }
}

/* m[xi*xs + tx] = (A dy A^T)[xi] for the 2x2 output gradient dy = (p q; u v) of a tile:
 * the rows of A dy are (p, q), (p+u, q+v), (p-u, q-v), (-u, -v), each times A^T. */
static inline void output_grad_tile(float *m, size_t xs, int tx, float p, float q, float u,
                                    float v)
{
    float a0 = p, b0 = q, a1 = p + u, b1 = q + v, a2 = p - u, b2 = q - v, a3 = -u, b3 = -v;
    m += tx;
    m[0 * xs] = a0, m[1 * xs] = a0 + b0, m[2 * xs] = a0 - b0, m[3 * xs] = -b0;
    m[4 * xs] = a1, m[5 * xs] = a1 + b1, m[6 * xs] = a1 - b1, m[7 * xs] = -b1;
    m[8 * xs] = a2, m[9 * xs] = a2 + b2, m[10 * xs] = a2 - b2, m[11 * xs] = -b2;
    m[12 * xs] = a3, m[13 * xs] = a3 + b3, m[14 * xs] = a3 - b3, m[15 * xs] = -b3;
}

/* dM[xi][f][tile] = (A dy A^T)[xi] for the 2x2 output gradient of each tile (zero where a
 * tile reaches past the output). */
static void transform_output_grads(const tl_wino *w, const geom *g, const float *dy, int nt,
                                   float *dM, int threads)
{
    size_t T = (size_t)nt * g->tiles, xs = (size_t)w->filters * T;
    size_t hw = (size_t)w->hout * w->wout;
    int jobs = nt * w->filters;
    int par = tl_par_threads(threads, (size_t)jobs * g->tiles * 16);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
    for (int j = 0; j < jobs; j++) {
        int i = j / w->filters, f = j % w->filters;
        float *m = dM + (size_t)f * T + (size_t)i * g->tiles;
        const float *plane = dy + (size_t)j * hw;
        for (int ty = 0; ty < g->th; ty++) {
            const float *r0 = plane + (size_t)(2 * ty) * w->wout;
            float *mt = m + (size_t)ty * g->tw;
            int low = 2 * ty + 1 < w->hout, full = low ? w->wout / 2 : 0;
#pragma omp simd
            for (int tx = 0; tx < full; tx++) /* whole 2x2 tiles */
                output_grad_tile(mt, xs, tx, r0[2 * tx], r0[2 * tx + 1], r0[w->wout + 2 * tx],
                                 r0[w->wout + 2 * tx + 1]);
            for (int tx = full; tx < g->tw; tx++) { /* tiles cut by the last row or column */
                int x = 2 * tx, right = x + 1 < w->wout;
                output_grad_tile(mt, xs, tx, r0[x], right ? r0[x + 1] : 0.0f,
                                 low ? r0[w->wout + x] : 0.0f,
                                 low && right ? r0[w->wout + x + 1] : 0.0f);
            }
        }
    }
}

/* dw (f, c) = G^T dU[.][f][c] G, the adjoint of tl_wino_transform_filters. */
static void filter_grads(const tl_wino *w, const float *dU, float *dw)
{
    size_t pairs = (size_t)w->filters * w->cin;
    for (size_t p = 0; p < pairs; p++) {
        float d[16], t[3][4];
        for (int k = 0; k < 16; k++)
            d[k] = dU[(size_t)k * pairs + p];
        for (int c = 0; c < 4; c++) { /* G^T dU: 3 x 4 */
            t[0][c] = d[c] + 0.5f * (d[4 + c] + d[8 + c]);
            t[1][c] = 0.5f * (d[4 + c] - d[8 + c]);
            t[2][c] = 0.5f * (d[4 + c] + d[8 + c]) + d[12 + c];
        }
        float *o = dw + p * 9;
        for (int r = 0; r < 3; r++) { /* times G: 3 x 3 */
            o[3 * r + 0] = t[r][0] + 0.5f * (t[r][1] + t[r][2]);
            o[3 * r + 1] = 0.5f * (t[r][1] - t[r][2]);
            o[3 * r + 2] = 0.5f * (t[r][1] + t[r][2]) + t[r][3];
        }
    }
}

void tl_wino_weight_grad(const tl_wino *w, const tl_exec *ex, const float *x, const float *dy,
                         float *dw, size_t n)
{
    geom g = geometry(w);
    int threads = tl_blas_threads(ex->blas);
    size_t t_max = pass_images(&g, n);
    float *dU = ex->scratch;
    float *V = dU + round16(tl_wino_filter_floats(w));
    float *dM = V + t_max * 16 * g.tiles * (size_t)w->cin;
    float *P = dM + t_max * 16 * g.tiles * (size_t)w->filters;
    size_t in_img = (size_t)w->cin * w->hin * w->win;
    size_t out_img = (size_t)w->filters * w->hout * w->wout;
    for (size_t i0 = 0; i0 < n; i0 += t_max) {
        int nt = (int)(n - i0 < t_max ? n - i0 : t_max);
        int T = nt * (int)g.tiles;
        transform_inputs(w, &g, x + i0 * in_img, nt, P, V, threads);
        transform_output_grads(w, &g, dy + i0 * out_img, nt, dM, threads);
        /* dU[xi] (F x Cin) (+)= dM[xi] (F x T) * V[xi]^T (T x Cin) */
        tl_sgemm_batch(ex->blas, 16, 0, 1, w->filters, w->cin, T, dM, (size_t)w->filters * T, V,
                       (size_t)w->cin * T, i0 == 0 ? 0.0f : 1.0f, dU,
                       tl_wino_filter_floats(w) / 16);
    }
    filter_grads(w, dU, dw);
}
