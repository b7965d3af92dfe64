/* Gradient checks of every vision layer against central finite differences, through the
 * layer ops table (tests/vision/harness.h), plus the behaviours a gradient check cannot
 * see: accumulation, skipped input gradients, train vs eval of dropout and batchnorm, and
 * refusal of impossible geometry. */
#include "harness.h"

/* conv2d ia: filters kh kw sh sw ph pw dh dw groups bias */
static void conv_case(tl_shape in, size_t n, int f, int kh, int kw, int sh, int sw, int ph,
                      int pw, int dh, int dw, int g, int bias, int oh, int ow)
{
    lh h;
    int ia[11] = {f, kh, kw, sh, sw, ph, pw, dh, dw, g, bias};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, in, ia, 11, NULL, 0, n, 1), TLEARN_OK);
    /* output geometry as torch.nn.Conv2d computes it (expected values given by the caller) */
    assert_int_equal(h.L->out.c, f);
    assert_int_equal(h.L->out.h, oh);
    assert_int_equal(h.L->out.w, ow);
    assert_int_equal(h.L->nparam, bias ? 2 : 1);
    /* conv is linear in input and weights: central differences are exact up to rounding */
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
}

static void test_conv_basic(void **state)
{
    (void)state;
    conv_case(tl_shape3(3, 6, 6), 2, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 6, 6);
}

static void test_conv_stride_pad_nonsquare(void **state)
{
    (void)state;
    /* 5x7 input, 3x3 kernel, stride 2, pad 1: (5+2-3)/2+1 = 3, (7+2-3)/2+1 = 4 */
    conv_case(tl_shape3(2, 5, 7), 3, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 3, 4);
    /* asymmetric 2x3 kernel, stride (2,1), pad (1,0): (6+2-2)/2+1 = 4, (5-3)+1 = 3 */
    conv_case(tl_shape3(2, 6, 5), 1, 3, 2, 3, 2, 1, 1, 0, 1, 1, 1, 0, 4, 3);
    /* stride (1,2): the strided gather along rows; (6+2-3)+1 = 6, (9+2-3)/2+1 = 5 */
    conv_case(tl_shape3(2, 6, 9), 2, 3, 3, 3, 1, 2, 1, 1, 1, 1, 1, 1, 6, 5);
}

static void test_conv_dilation(void **state)
{
    (void)state;
    /* dilation 2 makes a 3x3 kernel span 5: (7+2-5)/1+1 = 5, (6+0-5)+1 = 2 */
    conv_case(tl_shape3(2, 7, 6), 2, 3, 3, 3, 1, 1, 1, 0, 2, 2, 1, 1, 5, 2);
    /* dilation (1,3) with stride 2 */
    conv_case(tl_shape3(1, 6, 9), 2, 2, 2, 2, 2, 2, 0, 1, 1, 3, 1, 1, 3, 4);
}

static void test_conv_groups(void **state)
{
    (void)state;
    /* 4 channels in 2 groups, 6 filters, no bias */
    conv_case(tl_shape3(4, 5, 5), 2, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2, 0, 5, 5);
    /* depthwise with multiplier 2: groups = channels = 3, 6 filters, stride 2 */
    conv_case(tl_shape3(3, 7, 7), 2, 6, 3, 3, 2, 2, 1, 1, 1, 1, 3, 1, 4, 4);
}

/* Depthwise (groups = channels = filters) runs by direct loops (depthwise.c): forward
 * against a convolution in double, plain and with the folded ReLU, and backward by central
 * differences; strides 1 and 2, kernels 3 and 5, asymmetric padding, dilation. */
static void dw_case(tl_shape in, size_t n, int k, int sh, int sw, int ph, int pw, int dil,
                    int bias)
{
    lh h;
    int C = in.c, ia[11] = {C, k, k, sh, sw, ph, pw, dil, dil, C, bias};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, in, ia, 11, NULL, 0, n, 1), TLEARN_OK);
    int ho = h.L->out.h, wo = h.L->out.w;
    assert_int_equal(ho, (in.h + 2 * ph - dil * (k - 1) - 1) / sh + 1);
    assert_int_equal(wo, (in.w + 2 * pw - dil * (k - 1) - 1) / sw + 1);
    const float *w = h.L->param[0].t.data, *b = bias ? h.L->param[1].t.data : NULL;
    for (int relu = 0; relu <= 1; relu++) {
        tl_exec ex = lh_exec(&h, 0);
        ex.epilogue = relu ? TL_EPILOGUE_RELU : 0;
        const float *x[1] = {h.x[0]};
        h.L->ops->forward(h.L, &ex, x, h.out, n, NULL);
        for (size_t i = 0; i < n; i++)
            for (int c = 0; c < C; c++)
                for (int y = 0; y < ho; y++)
                    for (int xo = 0; xo < wo; xo++) {
                        double want = b ? b[c] : 0.0;
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = y * sh - ph + ky * dil, ix = xo * sw - pw + kx * dil;
                                if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w)
                                    want += (double)w[(c * k + ky) * k + kx] *
                                            h.x[0][((i * C + c) * in.h + iy) * in.w + ix];
                            }
                        if (relu)
                            want = want > 0.0 ? want : 0.0;
                        double got = h.out[((i * C + c) * ho + y) * wo + xo];
                        if (fabs(got - want) > 1e-5 + 1e-5 * fabs(want))
                            fail_msg("relu %d, image %zu channel %d (%d,%d): %.9g, direct %.9g",
                                     relu, i, c, y, xo, got, want);
                    }
    }
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
}

static void test_conv_depthwise(void **state)
{
    (void)state;
    dw_case(tl_shape3(4, 7, 9), 3, 3, 1, 1, 1, 1, 1, 1); /* MobileNet's 3x3, same padding */
    dw_case(tl_shape3(3, 8, 7), 2, 3, 2, 2, 1, 1, 1, 0); /* stride 2, no bias */
    dw_case(tl_shape3(2, 9, 9), 2, 5, 2, 1, 2, 1, 1, 1); /* 5x5, stride (2,1), pads (2,1) */
    dw_case(tl_shape3(3, 9, 8), 2, 3, 1, 2, 0, 2, 2, 1); /* dilation 2 */
    /* "same" padding at stride 1 takes contiguous spans with the row ends recomputed */
    dw_case(tl_shape3(2, 7, 11), 2, 5, 1, 1, 2, 2, 1, 1); /* two border columns each side */
    dw_case(tl_shape3(2, 8, 9), 2, 3, 1, 1, 2, 2, 2, 0);  /* dilated, same width */
    dw_case(tl_shape3(2, 6, 2), 3, 3, 1, 1, 1, 1, 1, 1);  /* every column is a border */
    dw_case(tl_shape3(2, 5, 1), 2, 3, 1, 1, 1, 1, 1, 1);  /* one column */
}

static void test_conv_tiles(void **state)
{
    (void)state;
    /* 20 images of a small conv: more than one 16-image tile, last tile partial */
    conv_case(tl_shape3(2, 4, 4), 20, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4);
    /* a 1x1 strided projection, as on a ResNet skip path */
    conv_case(tl_shape3(4, 6, 6), 3, 8, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0, 3, 3);
}

/* Forward of a k x k (3 or 1), stride-1 conv against a direct convolution in double. 3x3
 * over 16 input channels: by Winograd F(2x2, 3x3) when the batch has >= 256 output tiles,
 * by im2col for one image; odd output sizes (half tiles), paddings 0 to 2. 1x1 with at
 * least 64 pixels: by one GEMM per image on the planes as they lie (no column copy), the
 * folded pool by the tiles. With and without bias, and the folded ReLU and ReLU + 2x2
 * pool. Backward is checked by central differences (conv_case). */
static void direct_case(tl_shape in, size_t n, int k, int pad, int bias)
{
    lh h;
    int f = 5, ia[11] = {f, k, k, 1, 1, pad, pad, 1, 1, 1, bias};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, in, ia, 11, NULL, 0, n, 0), TLEARN_OK);
    int ho = in.h + 2 * pad - (k - 1), wo = in.w + 2 * pad - (k - 1);
    if (k == 3)
        assert_true((size_t)((ho + 1) / 2) * (size_t)((wo + 1) / 2) * n >= 256);
    size_t plane = (size_t)ho * wo, len = n * f * plane;
    const float *w = h.L->param[0].t.data, *b = bias ? h.L->param[1].t.data : NULL;
    double *ref = malloc(len * sizeof *ref);
    assert_non_null(ref);
    for (size_t i = 0; i < n; i++)
        for (int o = 0; o < f; o++)
            for (int y = 0; y < ho; y++)
                for (int x = 0; x < wo; x++) {
                    double acc = b ? b[o] : 0.0;
                    for (int c = 0; c < in.c; c++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = y - pad + ky, ix = x - pad + kx;
                                if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w)
                                    acc += (double)w[((o * in.c + c) * k + ky) * k + kx] *
                                           h.x[0][((i * in.c + c) * in.h + iy) * in.w + ix];
                            }
                    ref[((i * f + o) * ho + y) * wo + x] = acc;
                }
    const float *x[1] = {h.x[0]};
    for (int epilogue = 0; epilogue <= 3; epilogue += 1 + (epilogue == 0)) {
        /* 0: plain, 1: ReLU, 3: ReLU and pool; then one image (im2col) */
        tl_exec ex = lh_exec(&h, 0);
        ex.epilogue = epilogue;
        h.L->ops->forward(h.L, &ex, x, h.out, n, NULL);
        int pool = epilogue & TL_EPILOGUE_POOL2, hp = ho / 2, wp = wo / 2;
        size_t count = pool ? n * f * (size_t)hp * wp : len;
        for (size_t k = 0; k < count; k++) {
            double want;
            if (pool) {
                size_t q = k / ((size_t)hp * wp), r = k % ((size_t)hp * wp);
                const double *pr = ref + q * plane + (r / wp) * 2 * wo + (r % wp) * 2;
                want = fmax(fmax(pr[0], pr[1]), fmax(pr[wo], pr[wo + 1]));
            } else {
                want = ref[k];
            }
            if (epilogue)
                want = want > 0.0 ? want : 0.0;
            if (fabs(h.out[k] - want) > 1e-5 + 1e-5 * fabs(want))
                fail_msg("epilogue %d, element %zu: %.9g, direct %.9g", epilogue, k,
                         (double)h.out[k], want);
        }
    }
    tl_exec one = lh_exec(&h, 0);
    h.L->ops->forward(h.L, &one, x, h.out, 1, NULL);
    for (size_t k = 0; k < (size_t)f * plane; k++)
        assert_true(fabs(h.out[k] - ref[k]) <= 1e-5 + 1e-5 * fabs(ref[k]));
    free(ref);
    lh_free(&h);
}

static void test_conv_winograd(void **state)
{
    (void)state;
    direct_case(tl_shape3(16, 9, 11), 10, 3, 1, 1); /* 9x11 out: half tiles at the edges */
    direct_case(tl_shape3(16, 9, 11), 13, 3, 0, 0); /* 7x9 */
    direct_case(tl_shape3(16, 8, 8), 11, 3, 2, 1);  /* 10x10 */
    /* backward against central differences of the Winograd forward; with 16 filters the
     * input gradient is by Winograd too (flipped filters, padding 2 - pad) */
    conv_case(tl_shape3(16, 6, 7), 22, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 6, 7);
    conv_case(tl_shape3(16, 6, 7), 22, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 6, 7);
    conv_case(tl_shape3(16, 7, 6), 26, 16, 3, 3, 1, 1, 0, 0, 1, 1, 1, 0, 5, 4);
    conv_case(tl_shape3(16, 5, 5), 30, 16, 3, 3, 1, 1, 2, 2, 1, 1, 1, 1, 7, 7);
}

/* Input gradient accumulates with accum = 1; din NULL leaves parameter gradients intact. */
static void accum_case(tl_shape in, size_t n, const int ia[11])
{
    lh h;
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, in, ia, 11, NULL, 0, n, 1), TLEARN_OK);
    size_t nx = h.in_len[0], nw = h.L->param[0].t.numel, nb = h.L->param[1].t.numel;
    float *dx = lh_alloc(nx), *dx2 = lh_alloc(nx), *gw = lh_alloc(nw), *gb = lh_alloc(nb);
    float *gw2 = lh_alloc(nw), *gb2 = lh_alloc(nb);
    float *din[2] = {dx, NULL}, *pg[2] = {gw, gb};
    lh_backward(&h, din, 0, pg);
    for (size_t i = 0; i < nx; i++)
        dx2[i] = 0.5f * (float)i;
    float *din2[2] = {dx2, NULL};
    lh_backward(&h, din2, 1, NULL); /* frozen: pgrad NULL */
    for (size_t i = 0; i < nx; i++)
        assert_float_equal(dx2[i], 0.5f * (float)i + dx[i], 1e-5f * (1.0f + fabsf(dx2[i])));
    float *none[2] = {NULL, NULL}, *pg2[2] = {gw2, gb2};
    lh_backward(&h, none, 0, pg2);
    for (size_t i = 0; i < nw; i++)
        assert_float_equal(gw2[i], gw[i], 1e-6f);
    for (size_t i = 0; i < nb; i++)
        assert_float_equal(gb2[i], gb[i], 1e-6f);
    free(dx); free(dx2); free(gw); free(gb); free(gw2); free(gb2);
    lh_free(&h);
}

static void test_conv_accum_and_no_dx(void **state)
{
    (void)state;
    accum_case(tl_shape3(2, 5, 5), 3, (const int[11]){3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1});
    /* the input gradient by Winograd (16 filters, 3x3, stride 1, >= 256 tiles) */
    accum_case(tl_shape3(3, 8, 8), 20, (const int[11]){16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1});
}

/* 1x1, stride 1, no padding, >= 64 pixels: one GEMM per image (conv2d.c, pointwise). */
static void test_conv_pointwise(void **state)
{
    (void)state;
    direct_case(tl_shape3(3, 8, 8), 4, 1, 0, 1);  /* 64 pixels, the smallest taken */
    direct_case(tl_shape3(7, 9, 13), 3, 1, 0, 0); /* odd sizes, no bias */
    direct_case(tl_shape3(3, 7, 9), 2, 1, 0, 1);  /* 63 pixels: by the tiles */
    conv_case(tl_shape3(3, 8, 9), 3, 4, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 8, 9);
    conv_case(tl_shape3(5, 10, 7), 2, 6, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 10, 7);
    accum_case(tl_shape3(3, 8, 8), 3, (const int[11]){4, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1});
}

/* PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = Cin/groups*kh*kw. */
static void test_conv_init(void **state)
{
    (void)state;
    lh h;
    int ia[11] = {64, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1}; /* fan_in = 8/2*9 = 36: bound 1/6 */
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, tl_shape3(8, 5, 5), ia, 11, NULL, 0, 1, 1),
                     TLEARN_OK);
    const tl_tensor *w = &h.L->param[0].t, *b = &h.L->param[1].t;
    assert_int_equal(w->ndim, 4);
    assert_int_equal(w->dims[0], 64);
    assert_int_equal(w->dims[1], 4);
    assert_int_equal(w->dims[2], 3);
    assert_int_equal(w->dims[3], 3);
    float lo = 1, hi = -1;
    for (size_t i = 0; i < w->numel; i++) {
        assert_true(fabsf(w->data[i]) <= 1.0f / 6.0f);
        lo = fminf(lo, w->data[i]);
        hi = fmaxf(hi, w->data[i]);
    }
    /* 2304 uniform draws fill the interval: extremes beyond 90% of the bound */
    assert_true(lo < -0.15f && hi > 0.15f);
    for (size_t i = 0; i < b->numel; i++)
        assert_true(fabsf(b->data[i]) <= 1.0f / 6.0f);
    lh_free(&h);
}

static void test_conv_bad_geometry(void **state)
{
    (void)state;
    lh h;
    /* kernel 5 on a 3x3 input with padding 0 */
    int big[11] = {2, 5, 5, 1, 1, 0, 0, 1, 1, 1, 1};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, tl_shape3(1, 3, 3), big, 11, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "larger than the padded input"));
    lh_free(&h);
    /* dilation makes a 3x3 kernel span 7 > 4 + 2 */
    int dil[11] = {2, 3, 3, 1, 1, 1, 1, 3, 3, 1, 1};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, tl_shape3(1, 4, 4), dil, 11, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    /* groups 2 with 3 input channels, and with 3 filters */
    int g1[11] = {4, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, tl_shape3(3, 4, 4), g1, 11, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "groups"));
    lh_free(&h);
    int g2[11] = {3, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, tl_shape3(4, 4, 4), g2, 11, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    /* zero channels */
    int ok[11] = {2, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
    assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, tl_shape3(0, 4, 4), ok, 11, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    /* numbers that are simply invalid: EINVAL */
    int bad[][11] = {{0, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1}, {2, 3, 3, 0, 1, 1, 1, 1, 1, 1, 1},
                     {2, 3, 3, 1, 1, -1, 1, 1, 1, 1, 1}, {2, 3, 3, 1, 1, 1, 1, 0, 1, 1, 1},
                     {2, 3, 3, 1, 1, 1, 1, 1, 1, 0, 1}, {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 2}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(lh_make(&h, &tl_conv2d_ops, 1, tl_shape3(2, 4, 4), bad[i], 11, NULL, 0,
                                 1, 1), TLEARN_EINVAL);
        lh_free(&h);
    }
}

static void maxpool_case(tl_shape in, size_t n, int k, int s, int p, int oh, int ow)
{
    lh h;
    int ia[6] = {k, k, s, s, p, p};
    assert_int_equal(lh_make(&h, &tl_maxpool2d_ops, 1, in, ia, 6, NULL, 0, n, 1), TLEARN_OK);
    assert_int_equal(h.L->out.h, oh);
    assert_int_equal(h.L->out.w, ow);
    /* inputs are at least 2/len apart, so a 1e-4 step never changes a window's argmax */
    lh_gradcheck(&h, 1e-4f, 2e-3, 2e-3);
    lh_free(&h);
}

static void test_maxpool(void **state)
{
    (void)state;
    maxpool_case(tl_shape3(2, 6, 6), 2, 2, 2, 0, 3, 3);
    maxpool_case(tl_shape3(3, 7, 6), 2, 3, 2, 1, 4, 3); /* (7+2-3)/2+1, (6+2-3)/2+1 */
    maxpool_case(tl_shape3(1, 5, 4), 3, 3, 1, 1, 5, 4); /* overlapping windows */
    maxpool_case(tl_shape3(2, 7, 7), 1, 2, 2, 0, 3, 3); /* floor mode drops the last row */
}

/* Values: the maximum of each window, padding never wins even when all inputs are < 0. */
static void test_maxpool_values(void **state)
{
    (void)state;
    lh h;
    int ia[6] = {3, 3, 2, 2, 1, 1};
    assert_int_equal(lh_make(&h, &tl_maxpool2d_ops, 1, tl_shape3(1, 4, 4), ia, 6, NULL, 0, 1, 0),
                     TLEARN_OK);
    for (int i = 0; i < 16; i++)
        h.x[0][i] = -100.0f + (float)((i * 7) % 16);
    lh_loss(&h);
    /* windows rows/cols [-1,1] and [1,3] */
    for (int oh = 0; oh < 2; oh++)
        for (int ow = 0; ow < 2; ow++) {
            float best = -INFINITY;
            for (int ih = 2 * oh - 1; ih <= 2 * oh + 1; ih++)
                for (int iw = 2 * ow - 1; iw <= 2 * ow + 1; iw++)
                    if (ih >= 0 && ih < 4 && iw >= 0 && iw < 4)
                        best = fmaxf(best, h.x[0][ih * 4 + iw]);
            assert_float_equal(h.out[oh * 2 + ow], best, 0.0f);
            assert_true(h.out[oh * 2 + ow] < -80.0f);
        }
    lh_free(&h);
}

static void test_pool_bad_geometry(void **state)
{
    (void)state;
    lh h;
    int pad[6] = {3, 3, 1, 1, 2, 2}; /* pad 2 > 3/2 */
    assert_int_equal(lh_make(&h, &tl_maxpool2d_ops, 1, tl_shape3(1, 6, 6), pad, 6, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    int big[6] = {5, 5, 1, 1, 0, 0}; /* kernel 5 on 4x4 */
    assert_int_equal(lh_make(&h, &tl_maxpool2d_ops, 1, tl_shape3(1, 4, 4), big, 6, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    int apad[7] = {2, 2, 2, 2, 2, 2, 1};
    assert_int_equal(lh_make(&h, &tl_avgpool2d_ops, 1, tl_shape3(1, 6, 6), apad, 7, NULL, 0, 1,
                             1), TLEARN_ESHAPE);
    lh_free(&h);
    int zero[6] = {0, 0, 1, 1, 0, 0};
    assert_int_equal(lh_make(&h, &tl_maxpool2d_ops, 1, tl_shape3(1, 4, 4), zero, 6, NULL, 0, 1,
                             1), TLEARN_EINVAL);
    lh_free(&h);
}

static void avgpool_case(tl_shape in, size_t n, int k, int s, int p, int cip, int oh, int ow)
{
    lh h;
    int ia[7] = {k, k, s, s, p, p, cip};
    assert_int_equal(lh_make(&h, &tl_avgpool2d_ops, 1, in, ia, 7, NULL, 0, n, 1), TLEARN_OK);
    assert_int_equal(h.L->out.h, oh);
    assert_int_equal(h.L->out.w, ow);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
}

static void test_avgpool(void **state)
{
    (void)state;
    avgpool_case(tl_shape3(2, 6, 6), 2, 2, 2, 0, 1, 3, 3);
    avgpool_case(tl_shape3(2, 7, 5), 2, 3, 2, 1, 1, 4, 3);
    avgpool_case(tl_shape3(2, 7, 5), 2, 3, 2, 1, 0, 4, 3);
}

/* count_include_pad: a corner window of a 3x3/pad-1 pool holds 4 real values; the
 * divisor is 9 with count_include_pad and 4 without (torch.nn.AvgPool2d). */
static void test_avgpool_divisor(void **state)
{
    (void)state;
    for (int cip = 0; cip <= 1; cip++) {
        lh h;
        int ia[7] = {3, 3, 2, 2, 1, 1, cip};
        assert_int_equal(lh_make(&h, &tl_avgpool2d_ops, 1, tl_shape3(1, 4, 4), ia, 7, NULL, 0,
                                 1, 0), TLEARN_OK);
        for (int i = 0; i < 16; i++)
            h.x[0][i] = 1.0f;
        lh_loss(&h);
        assert_float_equal(h.out[0], cip ? 4.0f / 9.0f : 1.0f, 1e-6f);
        /* the window of output (1,1) covers rows/cols 1..3: all real */
        assert_float_equal(h.out[3], 1.0f, 1e-6f);
        lh_free(&h);
    }
}

static void test_global_avgpool(void **state)
{
    (void)state;
    lh h;
    assert_int_equal(lh_make(&h, &tl_global_avgpool_ops, 1, tl_shape3(3, 4, 5), NULL, 0, NULL, 0,
                             2, 1), TLEARN_OK);
    assert_int_equal(h.L->out.c, 3);
    assert_int_equal(h.L->out.h, 1);
    assert_int_equal(h.L->out.w, 1);
    lh_loss(&h);
    double s = 0;
    for (int i = 0; i < 20; i++)
        s += h.x[0][20 + i]; /* image 0, channel 1 */
    assert_float_equal(h.out[1], (float)(s / 20), 1e-6f);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
}

/* Batchnorm in training mode: the gradient flows through the batch statistics. */
static void bn_gradcheck(tl_shape in, size_t n, int training, int use_running)
{
    lh h;
    float fa[2] = {1e-5f, 0.1f};
    assert_int_equal(lh_make(&h, &tl_batchnorm_ops, 1, in, NULL, 0, fa, 2, n, training),
                     TLEARN_OK);
    h.L->use_running_stats = use_running;
    uint64_t s = 99;
    for (int c = 0; c < in.c; c++) { /* affine and running statistics away from 1/0 */
        h.L->param[0].t.data[c] = 1.0f + 0.5f * lh_rand(&s);
        h.L->param[1].t.data[c] = 0.3f * lh_rand(&s);
        h.L->param[2].t.data[c] = 0.2f * lh_rand(&s);
        h.L->param[3].t.data[c] = 0.5f + 0.25f * (lh_rand(&s) + 1.0f);
    }
    /* smooth but nonlinear: central differences with step 1e-2 are accurate to ~1e-4 */
    lh_gradcheck(&h, 1e-2f, 3e-3, 3e-3);
    lh_free(&h);
}

static void test_batchnorm_grad(void **state)
{
    (void)state;
    bn_gradcheck(tl_shape3(3, 4, 5), 4, 1, 0); /* after a conv, training */
    bn_gradcheck(tl_shape3(5, 1, 1), 7, 1, 0); /* after a dense, training */
    bn_gradcheck(tl_shape3(3, 4, 5), 2, 0, 0); /* evaluation: running statistics */
    bn_gradcheck(tl_shape3(3, 2, 3), 3, 1, 1); /* training with frozen statistics */
}

/* Training mode normalises with batch statistics and leaves the running buffers alone
 * until commit, which folds in momentum * (mean, unbiased var). Evaluation mode uses the
 * running statistics. Reference values computed here in double. */
static void test_batchnorm_train_eval(void **state)
{
    (void)state;
    lh h;
    const int C = 2;
    const size_t n = 3, S = 6;
    float fa[2] = {1e-5f, 0.25f};
    assert_int_equal(lh_make(&h, &tl_batchnorm_ops, 1, tl_shape3(C, 2, 3), NULL, 0, fa, 2, n, 1),
                     TLEARN_OK);
    assert_int_equal(h.L->nparam, 4);
    assert_string_equal(h.L->param[2].name, "running_mean");
    assert_int_equal(h.L->param[2].is_buffer, 1);
    assert_int_equal(h.L->param[3].is_buffer, 1);
    float *rm = h.L->param[2].t.data, *rv = h.L->param[3].t.data;
    assert_float_equal(rv[0], 1.0f, 0.0f); /* PyTorch initial buffers */
    assert_float_equal(rm[0], 0.0f, 0.0f);
    for (size_t i = 0; i < h.in_len[0]; i++)
        h.x[0][i] = 3.0f + 2.0f * h.x[0][i] * (float)(1 + (i / S) % C);
    h.L->param[0].t.data[1] = 2.0f;
    h.L->param[1].t.data[1] = -1.0f;
    lh_loss(&h);
    assert_float_equal(rm[0], 0.0f, 0.0f); /* forward does not touch running statistics */
    assert_float_equal(rv[0], 1.0f, 0.0f);
    double mean[2], var[2];
    for (int c = 0; c < C; c++) {
        double s = 0, q = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < S; k++)
                s += h.x[0][i * C * S + c * S + k];
        mean[c] = s / (n * S);
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < S; k++) {
                double d = h.x[0][i * C * S + c * S + k] - mean[c];
                q += d * d;
            }
        var[c] = q / (n * S);
        double g = c ? 2.0 : 1.0, b = c ? -1.0 : 0.0;
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < S; k++) {
                size_t j = i * C * S + c * S + k;
                double y = (h.x[0][j] - mean[c]) / sqrt(var[c] + 1e-5) * g + b;
                assert_float_equal(h.out[j], (float)y, 1e-5f);
            }
    }
    h.L->ops->commit(h.L, h.saved, n);
    for (int c = 0; c < C; c++) {
        double unbiased = var[c] * (n * S) / (n * S - 1.0);
        assert_float_equal(rm[c], (float)(0.25 * mean[c]), 1e-5f);
        assert_float_equal(rv[c], (float)(0.75 + 0.25 * unbiased), 1e-5f);
    }
    /* evaluation mode: running statistics */
    h.training = 0;
    lh_loss(&h);
    for (int c = 0; c < C; c++) {
        double g = c ? 2.0 : 1.0, b = c ? -1.0 : 0.0;
        for (size_t k = 0; k < S; k++) {
            size_t j = c * S + k;
            double y = (h.x[0][j] - rm[c]) / sqrt(rv[c] + 1e-5) * g + b;
            assert_float_equal(h.out[j], (float)y, 1e-5f);
        }
    }
    /* frozen statistics in training mode: same as evaluation, and commit changes nothing */
    float before = rm[1];
    h.training = 1;
    h.L->use_running_stats = 1;
    lh_loss(&h);
    double y0 = (h.x[0][0] - rm[0]) / sqrt(rv[0] + 1e-5);
    assert_float_equal(h.out[0], (float)y0, 1e-5f);
    h.L->ops->commit(h.L, h.saved, n);
    assert_float_equal(rm[1], before, 0.0f);
    lh_free(&h);
}

static void test_batchnorm_bad_args(void **state)
{
    (void)state;
    lh h;
    float bad[][2] = {{0.0f, 0.1f}, {-1e-5f, 0.1f}, {1e-5f, -0.1f}, {1e-5f, 1.5f}, {NAN, 0.1f}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(lh_make(&h, &tl_batchnorm_ops, 1, tl_shape3(2, 2, 2), NULL, 0, bad[i],
                                 2, 1, 1), TLEARN_EINVAL);
        lh_free(&h);
    }
}

/* Dropout: the gradient uses the same mask as forward. */
static void test_dropout_grad(void **state)
{
    (void)state;
    lh h;
    float p = 0.3f;
    assert_int_equal(lh_make(&h, &tl_dropout_ops, 1, tl_shape3(4, 3, 3), NULL, 0, &p, 1, 3, 1),
                     TLEARN_OK);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
}

static void test_dropout_train_eval(void **state)
{
    (void)state;
    lh h;
    float p = 0.25f;
    const size_t n = 10;
    assert_int_equal(lh_make(&h, &tl_dropout_ops, 1, tl_shape3(1000, 1, 1), NULL, 0, &p, 1, n,
                             1), TLEARN_OK);
    for (size_t i = 0; i < h.in_len[0]; i++)
        h.x[0][i] = 1.0f + (float)(i % 7);
    lh_loss(&h);
    size_t zeros = 0;
    for (size_t i = 0; i < h.out_len; i++) {
        if (h.out[i] == 0.0f)
            zeros++;
        else /* kept values are scaled by 1/(1-p) */
            assert_float_equal(h.out[i], h.x[0][i] / 0.75f, 1e-5f);
    }
    /* 10000 Bernoulli(0.25) draws: mean 2500, sd 43; 5 sd either side */
    assert_in_range(zeros, 2280, 2720);
    /* a different draw next time (the RNG moves on) */
    float first[20];
    memcpy(first, h.out, sizeof first);
    h.rng0 = h.rng;
    lh_loss(&h);
    assert_memory_not_equal(first, h.out, sizeof first);
    /* evaluation: identity */
    h.training = 0;
    lh_loss(&h);
    assert_memory_equal(h.out, h.x[0], sizeof(float) * h.out_len);
    /* evaluation backward: identity gradient */
    float *dx = lh_alloc(h.in_len[0]), *din[2] = {dx, NULL};
    lh_backward(&h, din, 0, NULL);
    assert_memory_equal(dx, h.r, sizeof(float) * h.out_len);
    free(dx);
    lh_free(&h);
    float bad[] = {-0.1f, 1.0f, 1.5f, NAN};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(lh_make(&h, &tl_dropout_ops, 1, tl_shape3(2, 1, 1), NULL, 0, &bad[i], 1,
                                 1, 1), TLEARN_EINVAL);
        lh_free(&h);
    }
}

static void test_add(void **state)
{
    (void)state;
    lh h;
    assert_int_equal(lh_make(&h, &tl_add_ops, 2, tl_shape3(2, 3, 4), NULL, 0, NULL, 0, 2, 1),
                     TLEARN_OK);
    lh_loss(&h);
    for (size_t i = 0; i < h.out_len; i++)
        assert_float_equal(h.out[i], h.x[0][i] + h.x[1][i], 0.0f);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    /* both inputs the same buffer (x + x): the gradient is 2 dout, even without accum */
    float *d = lh_alloc(h.in_len[0]), *din[2] = {d, d};
    lh_backward(&h, din, 0, NULL);
    for (size_t i = 0; i < h.out_len; i++)
        assert_float_equal(d[i], 2.0f * h.r[i], 0.0f);
    free(d);
    lh_free(&h);
    /* different shapes: refused */
    tl_shape ins[2] = {tl_shape3(2, 3, 4), tl_shape3(2, 4, 3)};
    assert_int_equal(lh_make_shapes(&h, &tl_add_ops, 2, ins, NULL, 0, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    tl_layer *L = h.L;
    tl_free(L->cfg);
    tl_free(L);
}

/* Every kind is registered under its name and number, and its arguments rebuild it. */
static void test_registry(void **state)
{
    (void)state;
    const tl_layer_ops *kinds[] = {&tl_conv2d_ops, &tl_maxpool2d_ops, &tl_avgpool2d_ops,
                                   &tl_global_avgpool_ops, &tl_batchnorm_ops, &tl_dropout_ops,
                                   &tl_add_ops};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        assert_ptr_equal(tl_layer_ops_by_name(kinds[i]->kind_name), kinds[i]);
        assert_ptr_equal(tl_layer_ops_by_kind(kinds[i]->kind), kinds[i]);
    }
    /* arguments() gives back exactly what configure() took (checkpoints rebuild from it) */
    struct {
        const tl_layer_ops *ops;
        int ninputs, ni, nf;
        int ia[11];
        float fa[2];
    } cases[] = {
        {&tl_conv2d_ops, 1, 11, 0, {6, 3, 2, 2, 1, 1, 0, 2, 1, 3, 0}, {0}},
        {&tl_maxpool2d_ops, 1, 6, 0, {3, 2, 2, 1, 1, 0}, {0}},
        {&tl_avgpool2d_ops, 1, 7, 0, {3, 3, 1, 2, 1, 0, 0}, {0}},
        {&tl_global_avgpool_ops, 1, 0, 0, {0}, {0}},
        {&tl_batchnorm_ops, 1, 0, 2, {0}, {1e-3f, 0.3f}},
        {&tl_dropout_ops, 1, 0, 1, {0}, {0.2f}},
        {&tl_add_ops, 2, 0, 0, {0}, {0}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lh h;
        assert_int_equal(lh_make(&h, cases[i].ops, cases[i].ninputs, tl_shape3(3, 8, 8),
                                 cases[i].ia, cases[i].ni, cases[i].fa, cases[i].nf, 1, 1),
                         TLEARN_OK);
        int ia2[TL_MAX_IARGS], ni = -1, nf = -1;
        float fa2[TL_MAX_FARGS];
        h.L->ops->arguments(h.L, ia2, &ni, fa2, &nf);
        assert_int_equal(ni, cases[i].ni);
        assert_int_equal(nf, cases[i].nf);
        if (ni)
            assert_memory_equal(cases[i].ia, ia2, sizeof(int) * (size_t)ni);
        if (nf)
            assert_memory_equal(cases[i].fa, fa2, sizeof(float) * (size_t)nf);
        lh_free(&h);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_basic),
        cmocka_unit_test(test_conv_stride_pad_nonsquare),
        cmocka_unit_test(test_conv_dilation),
        cmocka_unit_test(test_conv_groups),
        cmocka_unit_test(test_conv_depthwise),
        cmocka_unit_test(test_conv_tiles),
        cmocka_unit_test(test_conv_winograd),
        cmocka_unit_test(test_conv_accum_and_no_dx),
        cmocka_unit_test(test_conv_pointwise),
        cmocka_unit_test(test_conv_init),
        cmocka_unit_test(test_conv_bad_geometry),
        cmocka_unit_test(test_maxpool),
        cmocka_unit_test(test_maxpool_values),
        cmocka_unit_test(test_pool_bad_geometry),
        cmocka_unit_test(test_avgpool),
        cmocka_unit_test(test_avgpool_divisor),
        cmocka_unit_test(test_global_avgpool),
        cmocka_unit_test(test_batchnorm_grad),
        cmocka_unit_test(test_batchnorm_train_eval),
        cmocka_unit_test(test_batchnorm_bad_args),
        cmocka_unit_test(test_dropout_grad),
        cmocka_unit_test(test_dropout_train_eval),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
