/* 2-D convolution, weights OIHW like torch.nn.Conv2d, with stride, zero padding, dilation,
 * groups and an optional bias.
 *
 * Compute: im2col + GEMM on BLIS, a few images at a time. For a tile of T images and one
 * group the column matrix is Kg x (T*P) (Kg = Cin/groups*kh*kw rows, P = Hout*Wout output
 * pixels per image, images side by side), small enough to stay in L2 while BLIS packs it;
 * an im2col over the whole batch is about 2x slower (doc/design.md, performance notes).
 * The GEMM writes a F x (T*P) tile that is then scattered to NCHW with the bias added (and
 * a folded ReLU / max-pool, layer.h). 3x3 stride-1 convolutions over enough channels and
 * images run by Winograd instead (winograd.c, see winograd() below): forward, the input
 * gradient and the weight gradient. Depthwise convolutions (groups = channels = filters)
 * run by direct loops (depthwise.c) in both directions.
 * Backward rebuilds the columns from the input (nothing is saved in forward), then
 *   dW_g += dY_g (Fg x TP) * col^T          (one GEMM per tile and group)
 *   dcol  = W_g^T * dY_g, col2im into dX    (only when the input gradient is wanted).
 * Scratch: the column matrix plus the F x (T*P) output/gradient tile, or Winograd's
 * (tl_wino_scratch_floats) when that is larger. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"
#include "depthwise.h"
#include "winograd.h"

typedef struct conv_cfg {
    int filters, kh, kw, sh, sw, ph, pw, dh, dw, groups, bias;
    /* derived in setup */
    int cin, hin, win, hout, wout;
} conv_cfg;

/* Column tiles aim at about 1 MB of floats and at most 16 images (see the header). */
#define CONV_TILE_FLOATS (256u * 1024u)
#define CONV_TILE_MAX 16

static int conv_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni != 11 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': expected 11 arguments", L->name);
    conv_cfg c;
    memset(&c, 0, sizeof c);
    c.filters = ia[0];
    c.kh = ia[1];
    c.kw = ia[2];
    c.sh = ia[3];
    c.sw = ia[4];
    c.ph = ia[5];
    c.pw = ia[6];
    c.dh = ia[7];
    c.dw = ia[8];
    c.groups = ia[9];
    c.bias = ia[10];
    if (c.filters < 1)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': filters is %d, must be >= 1", L->name,
                       c.filters);
    if (c.kh < 1 || c.kw < 1)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': kernel %dx%d must be >= 1", L->name, c.kh,
                       c.kw);
    if (c.sh < 1 || c.sw < 1)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': stride %dx%d must be >= 1", L->name, c.sh,
                       c.sw);
    if (c.ph < 0 || c.pw < 0)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': padding %dx%d must be >= 0", L->name, c.ph,
                       c.pw);
    if (c.dh < 1 || c.dw < 1)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': dilation %dx%d must be >= 1", L->name, c.dh,
                       c.dw);
    if (c.groups < 1)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': groups is %d, must be >= 1", L->name,
                       c.groups);
    if (c.bias != 0 && c.bias != 1)
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': bias is %d, must be 0 or 1", L->name, c.bias);
    /* Guard the geometry arithmetic in setup against int overflow. */
    if (c.kh > 65536 || c.kw > 65536 || c.dh > 65536 || c.dw > 65536 || c.ph > (1 << 28) ||
        c.pw > (1 << 28))
        return tl_fail(TLEARN_EINVAL, "conv2d '%s': kernel, dilation or padding is too large",
                       L->name);
    return tl_layer_config(L, &c, sizeof c);
}

static void conv_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const conv_cfg *c = L->cfg;
    int v[11] = {c->filters, c->kh, c->kw, c->sh, c->sw, c->ph, c->pw, c->dh, c->dw, c->groups,
                 c->bias};
    memcpy(ia, v, sizeof v);
    *ni = 11;
    *nf = 0;
}

static int conv_setup(tl_layer *L, tl_rng *rng)
{
    conv_cfg *c = L->cfg;
    tl_shape in = L->in[0];
    if (in.c < 1 || in.h < 1 || in.w < 1)
        return tl_fail(TLEARN_ESHAPE, "conv2d '%s': input shape (%d, %d, %d) has no elements",
                       L->name, in.c, in.h, in.w);
    if (in.c % c->groups || c->filters % c->groups)
        return tl_fail(TLEARN_ESHAPE,
                       "conv2d '%s': groups (%d) must divide input channels (%d) and filters "
                       "(%d)", L->name, c->groups, in.c, c->filters);
    /* Effective (dilated) kernel extent against the padded input. */
    long ekh = (long)c->dh * (c->kh - 1) + 1, ekw = (long)c->dw * (c->kw - 1) + 1;
    long ih = (long)in.h + 2L * c->ph, iw = (long)in.w + 2L * c->pw;
    if (ekh > ih || ekw > iw)
        return tl_fail(TLEARN_ESHAPE,
                       "conv2d '%s': dilated kernel %ldx%ld is larger than the padded input "
                       "%ldx%ld", L->name, ekh, ekw, ih, iw);
    c->cin = in.c;
    c->hin = in.h;
    c->win = in.w;
    c->hout = (int)((ih - ekh) / c->sh + 1);
    c->wout = (int)((iw - ekw) / c->sw + 1);
    int cg = in.c / c->groups;
    double kg = (double)cg * c->kh * c->kw;
    double p = (double)c->hout * c->wout;
    if (kg * c->filters > INT32_MAX || p * c->filters > INT32_MAX ||
        kg * p * CONV_TILE_MAX > (double)INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "conv2d '%s': %d filters of %dx%dx%d on %dx%d is too large",
                       L->name, c->filters, cg, c->kh, c->kw, in.h, in.w);
    int wd[4] = {c->filters, cg, c->kh, c->kw};
    int rc = tl_layer_add_param(L, "weight", 4, wd, 0);
    if (!rc && c->bias)
        rc = tl_layer_add_param(L, "bias", 1, &c->filters, 0);
    if (rc)
        return rc;
    /* PyTorch: kaiming_uniform_(a=sqrt(5)) is U(+-1/sqrt(fan_in)), bias the same bound. */
    float bound = 1.0f / sqrtf((float)kg);
    tl_init_uniform(&L->param[0].t, rng, bound);
    if (c->bias)
        tl_init_uniform(&L->param[1].t, rng, bound);
    L->out = tl_shape3(c->filters, c->hout, c->wout);
    return TLEARN_OK;
}

/* Images per tile for this layer and batch. */
static size_t conv_tile(const conv_cfg *c, size_t n)
{
    size_t kg = (size_t)(c->cin / c->groups) * c->kh * c->kw;
    size_t p = (size_t)c->hout * c->wout;
    size_t t = CONV_TILE_FLOATS / (kg * p);
    if (t < 1)
        t = 1;
    if (t > CONV_TILE_MAX)
        t = CONV_TILE_MAX;
    if (t > n)
        t = n;
    return t;
}

/* Forward takes Winograd F(2x2, 3x3) for 3x3 convolutions with stride 1, no dilation, one
 * group, enough input channels (K = Cin of its GEMMs) and enough images for its GEMMs to
 * run near BLIS's peak (N = output tiles >= 256); otherwise im2col. The two round
 * differently (by about 1e-6 relative), so an image's activations can differ in the last
 * bits with the batch it is in, as with PyTorch's backends. */
/* 3x3, stride 1, no dilation, one group: the convolutions F(2x2, 3x3) computes. */
static int winograd_kernel(const conv_cfg *c)
{
    return c->kh == 3 && c->kw == 3 && c->sh == 1 && c->sw == 1 && c->dh == 1 && c->dw == 1 &&
           c->groups == 1;
}

static int winograd_shape(const conv_cfg *c, tl_wino *w)
{
    if (!winograd_kernel(c) || c->cin < 16)
        return 0;
    *w = (tl_wino){c->cin, c->filters, c->hin, c->win, c->ph, c->pw, c->hout, c->wout, 0, 0};
    return 1;
}

static int enough_tiles(int h, int w, size_t n)
{
    return (double)((h + 1) / 2) * (double)((w + 1) / 2) * (double)n >= 256;
}

static int winograd(const conv_cfg *c, size_t n, tl_wino *w)
{
    return enough_tiles(c->hout, c->wout, n) && winograd_shape(c, w);
}

/* The input gradient by Winograd: a 3x3 stride-1 convolution of dY over the filters
 * (K = filters) with padding 2 - pad (winograd.h, flip). */
static int winograd_dx(const conv_cfg *c, size_t n, int accum, tl_wino *w)
{
    if (!winograd_kernel(c) || c->filters < 16 || c->ph > 2 || c->pw > 2 ||
        !enough_tiles(c->hin, c->win, n))
        return 0;
    *w = (tl_wino){c->filters, c->cin, c->hout, c->wout, 2 - c->ph, 2 - c->pw, c->hin, c->win,
                   1, accum};
    return 1;
}

/* Depthwise (one input channel per filter and group): direct loops (depthwise.h). */
static int depthwise(const conv_cfg *c, tl_dw *d)
{
    if (c->groups != c->cin || c->filters != c->cin || c->groups == 1 ||
        c->kh * c->kw > TL_DW_MAX_TAPS)
        return 0;
    *d = (tl_dw){c->cin, c->hin, c->win, c->hout, c->wout, c->kh, c->kw,
                 c->sh, c->sw, c->ph, c->pw, c->dh, c->dw};
    return 1;
}

/* A 1x1 convolution with stride 1, no padding and one group is a GEMM per image over the
 * NCHW planes as they lie: Y_i (F x P) = W (F x C) * X_i (C x P), dX_i = W^T dY_i, with no
 * column copy or col2im scatter. Planes narrower than this take the tiles instead, so that
 * a GEMM has enough columns (squeeze-excitation convolutions have P = 1). */
#define CONV_POINTWISE_MIN_P 64

static int pointwise(const conv_cfg *c)
{
    return c->kh == 1 && c->kw == 1 && c->sh == 1 && c->sw == 1 && c->ph == 0 && c->pw == 0 &&
           c->groups == 1 && c->hout * c->wout >= CONV_POINTWISE_MIN_P;
}

/* Chunked inference transforms the Winograd filters once for all its chunks. */
static int conv_prepare(tl_layer *L, const tl_exec *ex)
{
    tl_wino w;
    if (!winograd_shape(L->cfg, &w))
        return TLEARN_OK;
    if (!L->prepared && !(L->prepared = tl_alloc_array(tl_wino_filter_floats(&w), sizeof(float))))
        return tl_fail(TLEARN_ENOMEM, "conv2d '%s': out of memory for Winograd filters",
                       L->name);
    tl_wino_transform_filters(&w, L->param[0].t.data, L->prepared, tl_blas_threads(ex->blas));
    return TLEARN_OK;
}

static size_t conv_scratch_floats(const tl_layer *L, size_t n)
{
    const conv_cfg *c = L->cfg;
    size_t t = conv_tile(c, n);
    size_t kg = (size_t)(c->cin / c->groups) * c->kh * c->kw;
    size_t p = (size_t)c->hout * c->wout;
    /* column matrix + output tile, each rounded to 64 bytes */
    size_t floats = (kg * t * p + 15) / 16 * 16 + (size_t)c->filters * t * p;
    tl_wino w;
    if (winograd(c, n, &w) && tl_wino_scratch_floats(&w, n) > floats)
        floats = tl_wino_scratch_floats(&w, n);
    if (winograd_dx(c, n, 0, &w) && tl_wino_scratch_floats(&w, n) > floats)
        floats = tl_wino_scratch_floats(&w, n);
    return floats;
}

/* col[r][t*P + p] for the channels of group g of images x[0..nt): rows are (c, ki, kj).
 * Rows are independent, so they are split across @p threads. */
static void im2col(const conv_cfg *c, const float *x, int nt, int g, float *col, int threads)
{
    int cg = c->cin / c->groups, P = c->hout * c->wout, ld = nt * P;
    size_t img = (size_t)c->cin * c->hin * c->win;
    int rows = cg * c->kh * c->kw;
    int par = tl_par_threads(threads, (size_t)rows * (size_t)ld);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
    for (int ri = 0; ri < rows; ri++) {
        int ci = ri / (c->kh * c->kw), ki = ri / c->kw % c->kh, kj = ri % c->kw;
        float *row = col + (size_t)((ci * c->kh + ki) * c->kw + kj) * ld;
        int oh0, oh1, ow0, ow1;
        tl_conv_valid_range(c->hout, c->sh, c->ph, ki * c->dh, c->hin, &oh0, &oh1);
        tl_conv_valid_range(c->wout, c->sw, c->pw, kj * c->dw, c->win, &ow0, &ow1);
        /* Stride 1, no dilation, output as wide as the input ("same" padding): input and
         * output rows have the same stride, so the valid part of the row is one contiguous
         * copy; only the few padding columns at both ends of each output row are then
         * cleared (they received neighbouring rows' elements). */
        int contiguous = c->sh == 1 && c->sw == 1 && c->dh == 1 && c->dw == 1 &&
                         c->win == c->wout;
        for (int t = 0; t < nt; t++) {
            const float *xc = x + t * img + (size_t)(g * cg + ci) * c->hin * c->win;
            float *r = row + (size_t)t * P;
            if (contiguous) {
                int wo = c->wout;
                if (oh1 <= oh0 || ow1 <= ow0) {
                    memset(r, 0, sizeof(float) * (size_t)P);
                    continue;
                }
                memset(r, 0, sizeof(float) * (size_t)oh0 * wo);
                memset(r + (size_t)oh1 * wo, 0, sizeof(float) * (size_t)(c->hout - oh1) * wo);
                ptrdiff_t src0 = (ptrdiff_t)(oh0 - c->ph + ki) * c->win + (kj - c->pw) + ow0;
                size_t first = (size_t)oh0 * wo + ow0, end = (size_t)(oh1 - 1) * wo + ow1;
                memcpy(r + first, xc + src0, sizeof(float) * (end - first));
                for (int oh = oh0; oh < oh1; oh++) {
                    float *ro = r + (size_t)oh * wo;
                    for (int ow = 0; ow < ow0; ow++)
                        ro[ow] = 0.0f;
                    for (int ow = ow1; ow < wo; ow++)
                        ro[ow] = 0.0f;
                }
                continue;
            }
            for (int oh = 0; oh < c->hout; oh++) {
                float *ro = r + (size_t)oh * c->wout;
                if (oh < oh0 || oh >= oh1) {
                    memset(ro, 0, sizeof(float) * (size_t)c->wout);
                    continue;
                }
                /* index of output column 0 in this input row (may be negative) */
                ptrdiff_t base = (ptrdiff_t)(oh * c->sh - c->ph + ki * c->dh) * c->win +
                                 (kj * c->dw - c->pw);
                for (int ow = 0; ow < ow0; ow++)
                    ro[ow] = 0.0f;
                if (c->sw == 1) /* rows are short: a loop beats a memcpy call */
                    for (int ow = ow0; ow < ow1; ow++)
                        ro[ow] = xc[base + ow];
                else
                    for (int ow = ow0; ow < ow1; ow++)
                        ro[ow] = xc[base + (ptrdiff_t)ow * c->sw];
                for (int ow = ow1; ow < c->wout; ow++)
                    ro[ow] = 0.0f;
            }
        }
    }
}

/* The adjoint of im2col: add col back into dx (group g of images dx[0..nt)). Input
 * channels are independent, so they are split across @p threads. */
static void col2im(const conv_cfg *c, const float *col, int nt, int g, float *dx, int threads)
{
    int cg = c->cin / c->groups, P = c->hout * c->wout, ld = nt * P;
    size_t img = (size_t)c->cin * c->hin * c->win;
    int par = tl_par_threads(threads, (size_t)cg * c->kh * c->kw * (size_t)ld);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
    for (int ci = 0; ci < cg; ci++)
        for (int ki = 0; ki < c->kh; ki++)
            for (int kj = 0; kj < c->kw; kj++) {
                const float *row = col + (size_t)((ci * c->kh + ki) * c->kw + kj) * ld;
                int oh0, oh1, ow0, ow1;
                tl_conv_valid_range(c->hout, c->sh, c->ph, ki * c->dh, c->hin, &oh0, &oh1);
                tl_conv_valid_range(c->wout, c->sw, c->pw, kj * c->dw, c->win, &ow0, &ow1);
                for (int t = 0; t < nt; t++) {
                    float *xc = dx + t * img + (size_t)(g * cg + ci) * c->hin * c->win;
                    const float *r = row + (size_t)t * P;
                    for (int oh = oh0; oh < oh1; oh++) {
                        const float *ro = r + (size_t)oh * c->wout;
                        ptrdiff_t base = (ptrdiff_t)(oh * c->sh - c->ph + ki * c->dh) * c->win +
                                         (kj * c->dw - c->pw);
                        for (int ow = ow0; ow < ow1; ow++)
                            xc[base + (ptrdiff_t)ow * c->sw] += ro[ow];
                    }
                }
            }
}

/* dst = src + bias, then ReLU when asked. */
static void bias_relu(const float *restrict src, float bias, int relu, float *restrict dst,
                      int P)
{
    if (relu)
        for (int p = 0; p < P; p++)
            dst[p] = tl_relu(src[p] + bias);
    else
        for (int p = 0; p < P; p++)
            dst[p] = src[p] + bias;
}

/* In place: y += bias, then ReLU when asked. */
static void bias_relu_inplace(float *y, float bias, int relu, int P)
{
    if (relu)
        for (int p = 0; p < P; p++)
            y[p] = tl_relu(y[p] + bias);
    else
        for (int p = 0; p < P; p++)
            y[p] += bias;
}

/* One filter plane of bias, ReLU and the 2x2/stride-2 max-pool, into hout/2 x wout/2:
 * the same operations in the same order as the three layers (NaN rows: see tl_pool4). */
static void bias_relu_pool(const conv_cfg *c, const float *src, float bias, float *restrict dst)
{
    int wi = c->wout, ho = c->hout / 2, wo = c->wout / 2;
    for (int oh = 0; oh < ho; oh++) {
        const float *restrict r0 = src + (size_t)(2 * oh) * wi, *restrict r1 = r0 + wi;
        float *restrict y = dst + (size_t)oh * wo;
        uint32_t redo = 0;
        for (int ow = 0; ow < wo; ow++) {
            float a = tl_relu(r0[2 * ow] + bias), b = tl_relu(r0[2 * ow + 1] + bias);
            float d = tl_relu(r1[2 * ow] + bias), e = tl_relu(r1[2 * ow + 1] + bias);
            y[ow] = tl_pool4_no_nan(a, b, d, e);
            redo |= tl_not_finite(a + b + d + e);
        }
        if (redo)
            for (int ow = 0; ow < wo; ow++)
                y[ow] = tl_pool4(tl_relu(r0[2 * ow] + bias), tl_relu(r0[2 * ow + 1] + bias),
                                 tl_relu(r1[2 * ow] + bias), tl_relu(r1[2 * ow + 1] + bias));
    }
}

static void conv_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                         size_t n, float *saved)
{
    (void)saved;
    const conv_cfg *c = L->cfg;
    int cg = c->cin / c->groups, fg = c->filters / c->groups;
    int kg = cg * c->kh * c->kw, P = c->hout * c->wout;
    size_t T = conv_tile(c, n);
    size_t in_img = (size_t)c->cin * c->hin * c->win, out_img = (size_t)c->filters * P;
    float *col = ex->scratch;
    float *tile = col + ((size_t)kg * T * P + 15) / 16 * 16;
    const float *w = L->param[0].t.data;
    const float *b = c->bias ? L->param[1].t.data : NULL;
    tl_wino wino;
    if (winograd(c, n, &wino)) {
        tl_wino_forward(&wino, ex, in[0], w, ex->prepared ? L->prepared : NULL, b, out, n);
        return;
    }
    int threads = tl_blas_threads(ex->blas);
    tl_dw dw;
    if (depthwise(c, &dw) && !(ex->epilogue & TL_EPILOGUE_POOL2)) {
        tl_dw_forward(&dw, in[0], w, b, ex->epilogue & TL_EPILOGUE_RELU, out, n, threads);
        return;
    }
    if (pointwise(c) && !(ex->epilogue & TL_EPILOGUE_POOL2)) {
        tl_sgemm_batch(ex->blas, (int)n, 0, 0, c->filters, P, c->cin, w, 0, in[0], in_img, 0.0f,
                       out, out_img);
        if (b || (ex->epilogue & TL_EPILOGUE_RELU)) {
            size_t planes = n * (size_t)c->filters;
            int par = tl_par_threads(threads, planes * (size_t)P);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
            for (size_t j = 0; j < planes; j++)
                bias_relu_inplace(out + j * P, b ? b[j % c->filters] : 0.0f,
                                  ex->epilogue & TL_EPILOGUE_RELU, P);
        }
        return;
    }
    size_t pooled = (size_t)(c->hout / 2) * (size_t)(c->wout / 2);
    for (size_t i0 = 0; i0 < n; i0 += T) {
        int nt = (int)(n - i0 < T ? n - i0 : T);
        int ld = nt * P;
        for (int g = 0; g < c->groups; g++) {
            im2col(c, in[0] + i0 * in_img, nt, g, col, threads);
            /* tile[g*fg .. +fg][0 .. nt*P) = W_g (fg x kg) * col (kg x nt*P) */
            tl_sgemm(ex->blas, 0, 0, fg, ld, kg, 1.0f, w + (size_t)g * fg * kg, kg, col, ld, 0.0f,
                     tile + (size_t)g * fg * ld, ld);
        }
        /* Scatter F x (nt*P) to nt images of F x P (F x pooled), adding the bias, then the
         * epilogues. */
        int tf = nt * c->filters;
        int par = tl_par_threads(threads, (size_t)tf * (size_t)P);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
        for (int j = 0; j < tf; j++) {
            int t = j / c->filters, f = j % c->filters;
            const float *src = tile + (size_t)f * ld + (size_t)t * P;
            float bf = b ? b[f] : 0.0f;
            if (ex->epilogue & TL_EPILOGUE_POOL2)
                bias_relu_pool(c, src, bf, out + ((i0 + t) * c->filters + f) * pooled);
            else
                bias_relu(src, bf, ex->epilogue & TL_EPILOGUE_RELU,
                          out + (i0 + t) * out_img + (size_t)f * P, P);
        }
    }
}

static void conv_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                          const float *out, const float *dout, float *const *din, int accum,
                          size_t n, const float *saved, float *const *pgrad)
{
    (void)out;
    (void)saved;
    const conv_cfg *c = L->cfg;
    if (!pgrad && !din[0])
        return;
    int cg = c->cin / c->groups, fg = c->filters / c->groups;
    int kg = cg * c->kh * c->kw, P = c->hout * c->wout;
    size_t T = conv_tile(c, n);
    size_t in_img = (size_t)c->cin * c->hin * c->win, out_img = (size_t)c->filters * P;
    float *col = ex->scratch;
    float *tile = col + ((size_t)kg * T * P + 15) / 16 * 16;
    const float *w = L->param[0].t.data;
    int threads = tl_blas_threads(ex->blas);
    if (pgrad && c->bias && pgrad[1]) {
        /* db[f] = sum of dY over images and pixels, in double; filters are independent
         * (split across threads), the pixel sums vectorise (simd reduction). */
        float *db = pgrad[1];
        int par = tl_par_threads(threads, n * out_img);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
        for (int f = 0; f < c->filters; f++) {
            double s = 0.0;
            for (size_t i = 0; i < n; i++) {
                const float *d = dout + i * out_img + (size_t)f * P;
                double si = 0.0;
#pragma omp simd reduction(+ : si)
                for (int p = 0; p < P; p++)
                    si += (double)d[p];
                s += si;
            }
            db[f] = (float)s;
        }
    }
    /* Depthwise and Winograd where they apply; the tiles below do what is left by im2col. */
    float *dx_all = din[0], *dw_all = pgrad ? pgrad[0] : NULL;
    tl_dw dw;
    if (depthwise(c, &dw)) {
        tl_dw_backward(&dw, in[0], w, dout, dx_all, accum, dw_all, n, threads);
        return;
    }
    tl_wino wd;
    if (dx_all && winograd_dx(c, n, accum, &wd)) {
        tl_wino_forward(&wd, ex, dout, w, NULL, NULL, dx_all, n);
        dx_all = NULL;
    }
    if (dx_all && pointwise(c)) {
        tl_sgemm_batch(ex->blas, (int)n, 1, 0, c->cin, P, c->filters, w, 0, dout, out_img,
                       accum ? 1.0f : 0.0f, dx_all, in_img);
        dx_all = NULL;
    }
    if (dw_all && winograd(c, n, &wd)) {
        tl_wino_weight_grad(&wd, ex, in[0], dout, dw_all, n);
        dw_all = NULL;
    }
    if (!dx_all && !dw_all)
        return;
    for (size_t i0 = 0; i0 < n; i0 += T) {
        int nt = (int)(n - i0 < T ? n - i0 : T);
        int ld = nt * P;
        /* Gather dY of the tile into F x (nt*P), the layout of the forward GEMM's output. */
        int tf = nt * c->filters;
        int par = tl_par_threads(threads, (size_t)tf * (size_t)P);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
        for (int j = 0; j < tf; j++) {
            int t = j / c->filters, f = j % c->filters;
            memcpy(tile + (size_t)f * ld + (size_t)t * P, dout + (i0 + t) * out_img +
                   (size_t)f * P, sizeof(float) * (size_t)P);
        }
        float *dx = dx_all ? dx_all + i0 * in_img : NULL;
        if (dx && !accum)
            memset(dx, 0, sizeof(float) * (size_t)nt * in_img);
        for (int g = 0; g < c->groups; g++) {
            const float *dyg = tile + (size_t)g * fg * ld;
            if (dw_all) {
                im2col(c, in[0] + i0 * in_img, nt, g, col, threads);
                /* dW_g (fg x kg) (+)= dY_g (fg x ld) * col^T (ld x kg) */
                tl_sgemm(ex->blas, 0, 1, fg, kg, ld, 1.0f, dyg, ld, col, ld,
                         i0 == 0 ? 0.0f : 1.0f, dw_all + (size_t)g * fg * kg, kg);
            }
            if (dx) {
                /* dcol (kg x ld) = W_g^T (kg x fg) * dY_g (fg x ld); the columns are free now */
                tl_sgemm(ex->blas, 1, 0, kg, ld, fg, 1.0f, w + (size_t)g * fg * kg, kg, dyg, ld,
                         0.0f, col, ld);
                col2im(c, col, nt, g, dx, threads);
            }
        }
    }
}

const tl_layer_ops tl_conv2d_ops = {
    .kind = TLEARN_LAYER_CONV2D,
    .kind_name = "conv2d",
    .bwd_ignores_output = 1,
    .epilogues = TL_EPILOGUE_RELU | TL_EPILOGUE_POOL2,
    .configure = conv_configure,
    .arguments = conv_arguments,
    .setup = conv_setup,
    .scratch_floats = conv_scratch_floats,
    .prepare = conv_prepare,
    .forward = conv_forward,
    .backward = conv_backward,
};
