/* The norm group of the graph's ops: layernorm (trailing axes and channel axis), max and
 * average pooling with asymmetric padding / dilation / ceil_mode, adaptive average pooling,
 * pad, matmul and drop_path. Forward values against references written here in double
 * (explicitly padded arrays, naive loops), central finite-difference gradients through the
 * layer table (tests/vision/harness.h), argument round trips including round 1's pool forms,
 * the conv epilogue's choice, checkpoint round trips and refusals at the public door. */
#include <unistd.h>

#include "harness.h"

#include "model/model.h"
#include "tlearn/tlearn.h"

#define OK(call)                                                                              \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        if (rc_ != TLEARN_OK)                                                                 \
            fail_msg("%s returned %d: %s", #call, rc_, tlearn_errmsg());                      \
    } while (0)

/* Parameters away from their initial 1 / 0, so that gradients see them. */
static void randomise_params(lh *h, uint64_t seed)
{
    for (int p = 0; p < h->L->nparam; p++)
        for (size_t i = 0; i < h->L->param[p].t.numel; i++)
            h->L->param[p].t.data[i] = (p == 0 ? 1.0f : 0.0f) + 0.5f * lh_rand(&seed);
}

/* ---- layernorm ------------------------------------------------------------------------ */

/* Reference: normalise x[i*stride] for i < len in double. */
static void ln_ref(const float *x, size_t len, size_t stride, double eps, const float *w,
                   size_t wstride, const float *b, double *y)
{
    double m = 0.0, v = 0.0;
    for (size_t i = 0; i < len; i++)
        m += x[i * stride];
    m /= (double)len;
    for (size_t i = 0; i < len; i++)
        v += (x[i * stride] - m) * (x[i * stride] - m);
    v /= (double)len;
    for (size_t i = 0; i < len; i++) {
        double t = (x[i * stride] - m) / sqrt(v + eps);
        y[i] = w ? t * w[i * wstride] + b[i * wstride] : t;
    }
}

static void test_layernorm_values(void **state)
{
    (void)state;
    /* trailing: (2, 3, 4) over the last 2 axes -> rows of 12, weight (3, 4) */
    for (int affine = 0; affine <= 1; affine++) {
        lh h;
        int ia[2] = {2, affine};
        float eps = 1e-3f;
        int dims[3] = {2, 3, 4};
        assert_int_equal(lh_make(&h, &tl_layernorm_ops, 1, tl_shape_of(3, dims), ia, 2, &eps, 1,
                                 3, 0), TLEARN_OK);
        assert_int_equal(h.L->nparam, affine ? 2 : 0);
        if (affine) {
            assert_int_equal(h.L->param[0].t.ndim, 2);
            assert_int_equal(h.L->param[0].t.dims[0], 3);
            assert_int_equal(h.L->param[0].t.dims[1], 4);
            randomise_params(&h, 7);
        }
        lh_loss(&h);
        double y[12];
        for (size_t r = 0; r < 3 * 2; r++) {
            ln_ref(h.x[0] + r * 12, 12, 1, eps, affine ? h.L->param[0].t.data : NULL, 1,
                   affine ? h.L->param[1].t.data : NULL, y);
            for (int i = 0; i < 12; i++)
                assert_float_equal(h.out[r * 12 + i], y[i], 2e-6);
        }
        lh_free(&h);
    }
    /* channel axis: (C=5, 9, 9) has 81 positions (more than one tile of 64) */
    lh h;
    int ia[2] = {0, 1};
    float eps = 1e-5f;
    assert_int_equal(lh_make(&h, &tl_layernorm_ops, 1, tl_shape3(5, 9, 9), ia, 2, &eps, 1, 2, 0),
                     TLEARN_OK);
    assert_int_equal(h.L->param[0].t.ndim, 1);
    assert_int_equal(h.L->param[0].t.dims[0], 5);
    randomise_params(&h, 9);
    lh_loss(&h);
    double y[5];
    for (size_t e = 0; e < 2; e++)
        for (size_t p = 0; p < 81; p++) {
            ln_ref(h.x[0] + e * 405 + p, 5, 81, eps, h.L->param[0].t.data, 1,
                   h.L->param[1].t.data, y);
            for (int c = 0; c < 5; c++)
                assert_float_equal(h.out[e * 405 + (size_t)c * 81 + p], y[c], 2e-6);
        }
    lh_free(&h);
}

static void ln_grad_case(tl_shape in, int naxes, int affine, int training)
{
    lh h;
    int ia[2] = {naxes, affine};
    float eps = 1e-5f;
    assert_int_equal(lh_make(&h, &tl_layernorm_ops, 1, in, ia, 2, &eps, 1, 3, training),
                     TLEARN_OK);
    randomise_params(&h, 11);
    lh_gradcheck(&h, 1e-3f, 3e-3, 3e-3);
    lh_free(&h);
}

static void test_layernorm_grad(void **state)
{
    (void)state;
    int d2[2] = {5, 6}, d4[4] = {2, 3, 2, 4};
    for (int training = 0; training <= 1; training++) { /* saved statistics, recomputed ones */
        ln_grad_case(tl_shape_of(2, d2), 1, 1, training);
        ln_grad_case(tl_shape3(3, 4, 5), 2, 1, training);
        ln_grad_case(tl_shape3(3, 4, 5), 3, 0, training);
        ln_grad_case(tl_shape_of(4, d4), 1, 0, training);
        ln_grad_case(tl_shape1(19), 1, 1, training); /* a row longer than the 8 lanes */
        ln_grad_case(tl_shape3(4, 3, 5), 0, 1, training);
        ln_grad_case(tl_shape3(3, 9, 8), 0, 0, training); /* two tiles of positions */
    }
}

/* accum adds into din; a frozen layer (pgrad NULL) still gives the input gradient. */
static void test_layernorm_accum(void **state)
{
    (void)state;
    for (int naxes = 0; naxes <= 1; naxes++) {
        lh h;
        int ia[2] = {naxes, 1};
        float eps = 1e-5f;
        assert_int_equal(lh_make(&h, &tl_layernorm_ops, 1, tl_shape3(3, 4, 5), ia, 2, &eps, 1, 2,
                                 1), TLEARN_OK);
        randomise_params(&h, 3);
        float *d0 = lh_alloc(h.in_len[0]), *d1 = lh_alloc(h.in_len[0]);
        float *dw = lh_alloc(h.L->param[0].t.numel), *db = lh_alloc(h.L->param[1].t.numel);
        float *pg[2] = {dw, db};
        lh_backward(&h, &d0, 0, pg);
        for (size_t i = 0; i < h.in_len[0]; i++)
            d1[i] = 0.25f;
        lh_backward(&h, &d1, 1, NULL);
        for (size_t i = 0; i < h.in_len[0]; i++)
            assert_float_equal(d1[i], d0[i] + 0.25f, 1e-6);
        free(d0);
        free(d1);
        free(dw);
        free(db);
        lh_free(&h);
    }
}

static void test_layernorm_bad(void **state)
{
    (void)state;
    lh h;
    struct {
        int ia[2];
        float eps;
        int rc;
    } bad[] = {
        {{1, 1}, 0.0f, TLEARN_EINVAL},      {{1, 1}, -1e-5f, TLEARN_EINVAL},
        {{1, 1}, NAN, TLEARN_EINVAL},       {{1, 1}, INFINITY, TLEARN_EINVAL},
        {{5, 1}, 1e-5f, TLEARN_EINVAL},     {{-1, 1}, 1e-5f, TLEARN_EINVAL},
        {{1, 2}, 1e-5f, TLEARN_EINVAL},     {{4, 1}, 1e-5f, TLEARN_ESHAPE}, /* rank 3 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(lh_make(&h, &tl_layernorm_ops, 1, tl_shape3(2, 3, 4), bad[i].ia, 2,
                                 &bad[i].eps, 1, 1, 1), bad[i].rc);
        lh_free(&h);
    }
    int ia[2] = {1, 1};
    assert_int_equal(lh_make(&h, &tl_layernorm_ops, 1, tl_shape3(2, 3, 4), ia, 1, NULL, 0, 1, 1),
                     TLEARN_EINVAL);
    lh_free(&h);
}

/* ---- pooling ---------------------------------------------------------------------------- */

/* Reference pooling of one plane: pad explicitly (with -inf for max, 0 for average and a
 * 0/1 mask of real positions), then visit every window over the padded array, clipped to
 * it (ceil mode can reach past it). */
static void pool_ref(int is_max, const float *x, int H, int W, int kh, int kw, int sh, int sw,
                     int pt, int pl, int pb, int pr, int dh, int dw, int cip, int OH, int OW,
                     double *y)
{
    int PH = H + pt + pb, PW = W + pl + pr;
    double *px = calloc((size_t)PH * PW, sizeof *px), *real = calloc((size_t)PH * PW, 8);
    assert_non_null(px);
    assert_non_null(real);
    for (int i = 0; i < PH; i++)
        for (int j = 0; j < PW; j++) {
            int ii = i - pt, jj = j - pl, in = ii >= 0 && ii < H && jj >= 0 && jj < W;
            px[i * PW + j] = in ? x[ii * W + jj] : (is_max ? -INFINITY : 0.0);
            real[i * PW + j] = in;
        }
    for (int o = 0; o < OH; o++)
        for (int q = 0; q < OW; q++) {
            double best = -INFINITY, sum = 0.0, cnt = 0.0, area = 0.0;
            for (int a = 0; a < kh; a++)
                for (int b = 0; b < kw; b++) {
                    int i = o * sh + a * dh, j = q * sw + b * dw;
                    if (i >= PH || j >= PW)
                        continue;
                    best = fmax(best, px[i * PW + j]);
                    sum += px[i * PW + j];
                    cnt += real[i * PW + j];
                    area += 1.0;
                }
            y[o * OW + q] = is_max ? best : sum / (cip ? area : cnt);
        }
    free(px);
    free(real);
}

typedef struct pool_case {
    int is_max, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, ceil, cip, OH, OW;
} pool_case;

/* Output sizes below are PyTorch's: F.max_pool2d over the explicitly padded input, except
 * that in ceil mode a window starting in the bottom/right padding is dropped, as
 * F.max_pool2d(padding=1) does natively for the second case (ONNX MaxPool alike); over an
 * explicitly padded input torch would keep it (3x3). */
static const pool_case pool_cases[] = {
    /* max: ceil mode adding a partial window (googlenet's 3x3/2 on odd and even sizes) */
    {1, 7, 8, 3, 3, 2, 2, 0, 0, 0, 0, 1, 1, 1, 0, 3, 4},
    {1, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 2, 2}, /* a window starting in the pad: dropped */
    {1, 6, 7, 3, 2, 2, 1, 0, 1, 1, 0, 1, 1, 0, 0, 3, 7},  /* asymmetric pads, floor */
    {1, 6, 7, 3, 3, 2, 2, 1, 0, 0, 1, 1, 1, 1, 0, 3, 4},  /* asymmetric pads, ceil */
    {1, 9, 8, 3, 2, 2, 2, 2, 1, 1, 0, 2, 2, 1, 0, 5, 4},  /* dilation, pads, ceil */
    {1, 7, 6, 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 1, 0, 4, 3},  /* 2x2/2 in ceil mode: not the fast path */
    /* average: the divisor with and without padding in ceil mode */
    {0, 7, 8, 3, 3, 2, 2, 0, 0, 0, 0, 1, 1, 1, 1, 3, 4},
    {0, 6, 7, 3, 3, 2, 2, 1, 0, 0, 1, 1, 1, 1, 1, 3, 4},
    {0, 6, 7, 3, 3, 2, 2, 1, 0, 0, 1, 1, 1, 1, 0, 3, 4},
    {0, 5, 6, 2, 3, 2, 2, 1, 1, 0, 1, 1, 1, 0, 1, 3, 3},
    {0, 7, 8, 3, 3, 2, 2, 1, 0, 0, 1, 1, 1, 1, 1, 4, 4}, /* the last row's window passes the pad */
};

static int pool_make(lh *h, const pool_case *c, size_t n, int training)
{
    int ia[11];
    if (c->is_max) {
        int v[11] = {c->kh, c->kw, c->sh, c->sw, c->pt, c->pl, c->pb, c->pr, c->dh, c->dw,
                     c->ceil};
        memcpy(ia, v, sizeof v);
        return lh_make(h, &tl_maxpool2d_ops, 1, tl_shape3(2, c->H, c->W), ia, 11, NULL, 0, n,
                       training);
    }
    int v[10] = {c->kh, c->kw, c->sh, c->sw, c->pt, c->pl, c->cip, c->pb, c->pr, c->ceil};
    memcpy(ia, v, sizeof v);
    return lh_make(h, &tl_avgpool2d_ops, 1, tl_shape3(2, c->H, c->W), ia, 10, NULL, 0, n,
                   training);
}

static void test_pool_values(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof pool_cases / sizeof pool_cases[0]; k++) {
        const pool_case *c = &pool_cases[k];
        lh h;
        assert_int_equal(pool_make(&h, c, 2, 0), TLEARN_OK);
        if (h.L->out.h != c->OH || h.L->out.w != c->OW)
            fail_msg("pool case %zu: output %dx%d, expected %dx%d", k, h.L->out.h, h.L->out.w,
                     c->OH, c->OW);
        lh_loss(&h);
        double *y = calloc((size_t)c->OH * c->OW, sizeof *y);
        for (size_t q = 0; q < 4; q++) { /* 2 examples x 2 channels */
            pool_ref(c->is_max, h.x[0] + q * c->H * c->W, c->H, c->W, c->kh, c->kw, c->sh,
                     c->sw, c->pt, c->pl, c->pb, c->pr, c->dh, c->dw, c->cip, c->OH, c->OW, y);
            for (int i = 0; i < c->OH * c->OW; i++)
                if (fabs(h.out[q * c->OH * c->OW + i] - y[i]) > 1e-6)
                    fail_msg("pool case %zu, plane %zu, output %d: %g, expected %g", k, q, i,
                             (double)h.out[q * c->OH * c->OW + i], y[i]);
        }
        free(y);
        lh_free(&h);
    }
}

static void test_pool_grad(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof pool_cases / sizeof pool_cases[0]; k++)
        for (int training = 0; training <= 1; training++) { /* saved argmax, or found again */
            lh h;
            assert_int_equal(pool_make(&h, &pool_cases[k], 2, training), TLEARN_OK);
            /* inputs at least 2/len apart: a 1e-4 step never changes a window's argmax */
            lh_gradcheck(&h, 1e-4f, 2e-3, 2e-3);
            lh_free(&h);
        }
}

/* arguments(): round 1's form while the extensions are at their defaults, the long form
 * otherwise; round 1's form still configures (old checkpoints). */
static void test_pool_arguments(void **state)
{
    (void)state;
    struct {
        const tl_layer_ops *ops;
        int ni_in, ni_out;
        int ia[11];
    } cases[] = {
        {&tl_maxpool2d_ops, 6, 6, {3, 2, 2, 1, 1, 0}},
        {&tl_maxpool2d_ops, 11, 6, {3, 2, 2, 1, 1, 0, 1, 0, 1, 1, 0}},
        {&tl_maxpool2d_ops, 11, 11, {3, 2, 2, 1, 1, 0, 0, 1, 1, 1, 0}},
        {&tl_maxpool2d_ops, 11, 11, {3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1}},
        {&tl_maxpool2d_ops, 11, 11, {3, 3, 2, 2, 1, 1, 1, 1, 2, 1, 0}},
        {&tl_avgpool2d_ops, 7, 7, {3, 3, 1, 2, 1, 0, 0}},
        {&tl_avgpool2d_ops, 10, 7, {3, 3, 1, 2, 1, 0, 1, 1, 0, 0}},
        {&tl_avgpool2d_ops, 10, 10, {3, 3, 1, 2, 1, 0, 1, 1, 0, 1}},
        {&tl_avgpool2d_ops, 10, 10, {3, 3, 1, 2, 1, 0, 0, 0, 1, 0}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lh h;
        assert_int_equal(lh_make(&h, cases[i].ops, 1, tl_shape3(3, 8, 8), cases[i].ia,
                                 cases[i].ni_in, NULL, 0, 1, 1), TLEARN_OK);
        int ia2[TL_MAX_IARGS], ni = -1, nf = -1;
        float fa2[TL_MAX_FARGS];
        h.L->ops->arguments(h.L, ia2, &ni, fa2, &nf);
        assert_int_equal(ni, cases[i].ni_out);
        assert_int_equal(nf, 0);
        assert_memory_equal(cases[i].ia, ia2, sizeof(int) * (size_t)ni);
        lh_free(&h);
    }
}

static void test_pool_bad(void **state)
{
    (void)state;
    lh h;
    struct {
        const tl_layer_ops *ops;
        int ni;
        int ia[11];
        int rc;
    } bad[] = {
        {&tl_maxpool2d_ops, 11, {3, 3, 1, 1, 1, 1, 2, 1, 1, 1, 0}, TLEARN_ESHAPE}, /* bottom 2 */
        {&tl_maxpool2d_ops, 11, {3, 3, 1, 1, 1, 1, 1, 2, 1, 1, 0}, TLEARN_ESHAPE}, /* right 2 */
        {&tl_maxpool2d_ops, 11, {3, 3, 1, 1, 0, 0, 0, -1, 1, 1, 0}, TLEARN_EINVAL},
        {&tl_maxpool2d_ops, 11, {3, 3, 1, 1, 0, 0, 0, 0, 0, 1, 0}, TLEARN_EINVAL}, /* dilation 0 */
        {&tl_maxpool2d_ops, 11, {3, 3, 1, 1, 0, 0, 0, 0, 1, 1, 2}, TLEARN_EINVAL}, /* ceil 2 */
        {&tl_maxpool2d_ops, 11, {3, 3, 1, 1, 0, 0, 0, 0, 5, 5, 0}, TLEARN_ESHAPE}, /* extent 11 */
        {&tl_maxpool2d_ops, 9, {3, 3, 1, 1, 0, 0, 0, 0, 1}, TLEARN_EINVAL},        /* count */
        {&tl_avgpool2d_ops, 10, {3, 3, 1, 1, 1, 1, 1, 2, 1, 0}, TLEARN_ESHAPE},
        {&tl_avgpool2d_ops, 10, {3, 3, 1, 1, 1, 1, 1, 1, 1, 3}, TLEARN_EINVAL},
        {&tl_avgpool2d_ops, 8, {3, 3, 1, 1, 1, 1, 1, 1}, TLEARN_EINVAL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = lh_make(&h, bad[i].ops, 1, tl_shape3(1, 8, 8), bad[i].ia, bad[i].ni, NULL, 0, 1,
                         1);
        if (rc != bad[i].rc)
            fail_msg("bad pool %zu: %d, expected %d (%s)", i, rc, bad[i].rc, tlearn_errmsg());
        lh_free(&h);
    }
    /* pools read (C, H, W): a rank-4 input is refused, not misread */
    int d4[4] = {2, 3, 8, 8}, plain[7] = {2, 2, 2, 2, 0, 0, 1}, out[2] = {2, 2};
    assert_int_equal(lh_make(&h, &tl_maxpool2d_ops, 1, tl_shape_of(4, d4), plain, 6, NULL, 0, 1,
                             1), TLEARN_ESHAPE);
    lh_free(&h);
    assert_int_equal(lh_make(&h, &tl_avgpool2d_ops, 1, tl_shape_of(4, d4), plain, 7, NULL, 0, 1,
                             1), TLEARN_ESHAPE);
    lh_free(&h);
    assert_int_equal(lh_make(&h, &tl_adaptive_avgpool_ops, 1, tl_shape_of(4, d4), out, 2, NULL,
                             0, 1, 1), TLEARN_ESHAPE);
    lh_free(&h);
}

/* The conv epilogue folds exactly the plain 2x2/stride-2 pool, not one that only looks like
 * it in its first six arguments (ceil mode, extra bottom/right padding). */
static void test_pool_epilogue(void **state)
{
    (void)state;
    for (int variant = 0; variant < 4; variant++) {
        tlearn_model *m = NULL;
        OK(tlearn_model_create(&m, 2, 9, 9));
        OK(tlearn_model_add_conv2d(m, "conv", 4, 3, 1, 1, 1));
        OK(tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0.0f));
        if (variant == 0)
            OK(tlearn_model_add_maxpool2d(m, "pool", 2, 2, 0));
        else if (variant == 1) /* the same through the _ex call */
            OK(tlearn_model_add_maxpool2d_ex(m, "pool", 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 0));
        else if (variant == 2)
            OK(tlearn_model_add_maxpool2d_ex(m, "pool", 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 1));
        else
            OK(tlearn_model_add_maxpool2d_ex(m, "pool", 2, 2, 2, 2, 0, 0, 1, 1, 1, 1, 0));
        int folded = -1;
        int e = tl_model_epilogue(m, m->nlayers, 0, 2, &folded);
        if (variant <= 1) {
            assert_int_equal(e, TL_EPILOGUE_RELU | TL_EPILOGUE_POOL2);
            assert_int_equal(folded, 2);
        } else {
            assert_int_equal(e, TL_EPILOGUE_RELU);
            assert_int_equal(folded, 1);
            assert_int_equal(m->layers[2]->out.h, 5); /* 9 -> 5, not the plain pool's 4 */
        }
        tlearn_model_destroy(&m);
    }
}

/* ---- adaptive average pooling ---------------------------------------------------------- */

static void test_adaptive_values(void **state)
{
    (void)state;
    int sizes[][4] = {{7, 5, 3, 2}, {5, 7, 4, 3}, {4, 6, 4, 6}, {3, 4, 5, 7}, {6, 6, 1, 1}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int H = sizes[k][0], W = sizes[k][1], oh = sizes[k][2], ow = sizes[k][3];
        lh h;
        int ia[2] = {oh, ow};
        assert_int_equal(lh_make(&h, &tl_adaptive_avgpool_ops, 1, tl_shape3(3, H, W), ia, 2,
                                 NULL, 0, 2, 1), TLEARN_OK);
        assert_int_equal(h.L->out.c, 3);
        assert_int_equal(h.L->out.h, oh);
        assert_int_equal(h.L->out.w, ow);
        lh_loss(&h);
        for (size_t q = 0; q < 6; q++)
            for (int i = 0; i < oh; i++)
                for (int j = 0; j < ow; j++) {
                    /* torch's bins, in floating point: [floor(i*H/oh), ceil((i+1)*H/oh)) */
                    int a0 = (int)floor((double)i * H / oh), a1 = (int)ceil((double)(i + 1) * H / oh);
                    int b0 = (int)floor((double)j * W / ow), b1 = (int)ceil((double)(j + 1) * W / ow);
                    double s = 0.0;
                    for (int r = a0; r < a1; r++)
                        for (int c = b0; c < b1; c++)
                            s += h.x[0][q * H * W + r * W + c];
                    assert_float_equal(h.out[q * oh * ow + i * ow + j],
                                       s / ((a1 - a0) * (b1 - b0)), 1e-6);
                }
        lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
        lh_free(&h);
    }
    lh h;
    int bad[3][2] = {{0, 2}, {2, -1}, {70000, 1}};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lh_make(&h, &tl_adaptive_avgpool_ops, 1, tl_shape3(1, 4, 4), bad[i], 2,
                                 NULL, 0, 1, 1), TLEARN_EINVAL);
        lh_free(&h);
    }
    assert_int_equal(lh_make(&h, &tl_adaptive_avgpool_ops, 1, tl_shape3(1, 4, 4), bad[0], 1,
                             NULL, 0, 1, 1), TLEARN_EINVAL);
    lh_free(&h);
}

/* ---- pad ---------------------------------------------------------------------------------- */

/* Where padded coordinate i (input coordinates) reads from, by walking: reflect bounces off
 * the ends without repeating them, edge stops at them; -1 for the constant. */
static int walk(int i, int len, int mode)
{
    if (mode == TLEARN_PAD_CONSTANT)
        return i >= 0 && i < len ? i : -1;
    if (mode == TLEARN_PAD_EDGE)
        return i < 0 ? 0 : (i >= len ? len - 1 : i);
    int pos = 0, dir = 1;
    int steps = i < 0 ? -i : i;
    dir = i < 0 ? -1 : 1;
    for (int s = 0; s < steps; s++) {
        if (pos + dir < 0 || pos + dir >= len)
            dir = -dir;
        pos += dir;
    }
    return pos;
}

static void test_pad_values(void **state)
{
    (void)state;
    int modes[3] = {TLEARN_PAD_CONSTANT, TLEARN_PAD_REFLECT, TLEARN_PAD_EDGE};
    for (int k = 0; k < 3; k++) {
        int mode = modes[k], H = 4, W = 5, pt = 2, pl = 3, pb = 1, pr = 0;
        lh h;
        int ia[5] = {pt, pl, pb, pr, mode};
        float value = 2.5f;
        assert_int_equal(lh_make(&h, &tl_pad_ops, 1, tl_shape3(2, H, W), ia, 5, &value, 1, 2, 1),
                         TLEARN_OK);
        int OH = H + pt + pb, OW = W + pl + pr;
        assert_int_equal(h.L->out.h, OH);
        assert_int_equal(h.L->out.w, OW);
        lh_loss(&h);
        for (size_t q = 0; q < 4; q++)
            for (int i = 0; i < OH; i++)
                for (int j = 0; j < OW; j++) {
                    int a = walk(i - pt, H, mode), b = walk(j - pl, W, mode);
                    float want = a < 0 || b < 0 ? value : h.x[0][q * H * W + a * W + b];
                    assert_float_equal(h.out[q * OH * OW + i * OW + j], want, 0.0f);
                }
        lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
        lh_free(&h);
    }
    /* rank 2 (T, D) pads its two axes; rank 4 pads the last two */
    int d2[2] = {3, 4}, d4[4] = {2, 2, 3, 3};
    lh h;
    int ia[5] = {1, 0, 0, 2, TLEARN_PAD_REFLECT};
    float zero = 0.0f;
    assert_int_equal(lh_make(&h, &tl_pad_ops, 1, tl_shape_of(2, d2), ia, 5, &zero, 1, 2, 1),
                     TLEARN_OK);
    assert_int_equal(h.L->out.rank, 2);
    assert_int_equal(h.L->out.d[0], 4);
    assert_int_equal(h.L->out.d[1], 6);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
    assert_int_equal(lh_make(&h, &tl_pad_ops, 1, tl_shape_of(4, d4), ia, 5, &zero, 1, 2, 1),
                     TLEARN_OK);
    assert_int_equal(h.L->out.d[1], 2);
    assert_int_equal(h.L->out.d[2], 4);
    assert_int_equal(h.L->out.d[3], 5);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
}

static void test_pad_bad(void **state)
{
    (void)state;
    lh h;
    float v = 0.0f;
    struct {
        int ia[5];
        int rc;
    } bad[] = {
        {{-1, 0, 0, 0, 1}, TLEARN_EINVAL}, {{0, 0, 0, 70000, 1}, TLEARN_EINVAL},
        {{0, 0, 0, 0, 0}, TLEARN_EINVAL},  {{0, 0, 0, 0, 4}, TLEARN_EINVAL},
        {{4, 0, 0, 0, 2}, TLEARN_ESHAPE},  {{0, 0, 0, 5, 2}, TLEARN_ESHAPE}, /* reflect >= axis */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(lh_make(&h, &tl_pad_ops, 1, tl_shape3(1, 4, 5), bad[i].ia, 5, &v, 1, 1,
                                 1), bad[i].rc);
        lh_free(&h);
    }
    int ok[5] = {1, 1, 1, 1, 1};
    assert_int_equal(lh_make(&h, &tl_pad_ops, 1, tl_shape1(6), ok, 5, &v, 1, 1, 1),
                     TLEARN_ESHAPE); /* rank 1 */
    lh_free(&h);
    assert_int_equal(lh_make(&h, &tl_pad_ops, 1, tl_shape3(1, 4, 5), ok, 5, NULL, 0, 1, 1),
                     TLEARN_EINVAL);
    lh_free(&h);
}

/* ---- matmul ------------------------------------------------------------------------------ */

static void matmul_case(int rank, const int *da, const int *db, int tb, const int *want)
{
    lh h;
    tl_shape ins[2] = {tl_shape_of(rank, da), tl_shape_of(rank, db)};
    assert_int_equal(lh_make_shapes(&h, &tl_matmul_ops, 2, ins, &tb, 1, NULL, 0, 2, 1),
                     TLEARN_OK);
    assert_int_equal(h.L->out.rank, rank);
    for (int i = 0; i < rank; i++)
        assert_int_equal(h.L->out.d[i], want[i]);
    lh_loss(&h);
    int M = da[rank - 2], K = da[rank - 1], N = want[rank - 1];
    size_t batches = 2 * tl_shape_size(ins[0]) / ((size_t)M * K);
    for (size_t b = 0; b < batches; b++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double s = 0.0;
                for (int k = 0; k < K; k++) {
                    float bv = tb ? h.x[1][b * N * K + j * K + k] : h.x[1][b * K * N + k * N + j];
                    s += (double)h.x[0][b * M * K + i * K + k] * bv;
                }
                assert_float_equal(h.out[b * M * N + i * N + j], s, 1e-5);
            }
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
}

static void test_matmul(void **state)
{
    (void)state;
    matmul_case(2, (int[]){3, 4}, (int[]){4, 5}, 0, (int[]){3, 5});
    matmul_case(2, (int[]){3, 4}, (int[]){6, 4}, 1, (int[]){3, 6});
    matmul_case(3, (int[]){2, 3, 4}, (int[]){2, 4, 2}, 0, (int[]){2, 3, 2});
    matmul_case(4, (int[]){2, 2, 5, 3}, (int[]){2, 2, 5, 3}, 1, (int[]){2, 2, 5, 5});
    /* the same buffer for both input gradients (x x^T): the second adds to the first */
    lh h;
    int d[2] = {3, 4}, tb = 1;
    assert_int_equal(lh_make(&h, &tl_matmul_ops, 2, tl_shape_of(2, d), &tb, 1, NULL, 0, 1, 1),
                     TLEARN_OK);
    memcpy(h.x[1], h.x[0], sizeof(float) * 12);
    float *g = lh_alloc(12), *din[2] = {g, g};
    lh_backward(&h, din, 0, NULL);
    /* d(sum r_ij x_i . x_j)/dx_pk = sum_j (r_pj + r_jp) x_jk */
    for (int p = 0; p < 3; p++)
        for (int k = 0; k < 4; k++) {
            double s = 0.0;
            for (int j = 0; j < 3; j++)
                s += ((double)h.r[p * 3 + j] + h.r[j * 3 + p]) * h.x[0][j * 4 + k];
            assert_float_equal(g[p * 4 + k], s, 1e-5);
        }
    free(g);
    lh_free(&h);
}

static void test_matmul_bad(void **state)
{
    (void)state;
    lh h;
    int a[3] = {2, 3, 4}, b1[3] = {2, 5, 4}, b2[3] = {3, 4, 5}, b3[2] = {4, 5};
    tl_shape s1[2] = {tl_shape_of(3, a), tl_shape_of(3, b1)}; /* K 4 against 5 */
    tl_shape s2[2] = {tl_shape_of(3, a), tl_shape_of(3, b2)}; /* batch 2 against 3 */
    tl_shape s3[2] = {tl_shape_of(3, a), tl_shape_of(2, b3)}; /* ranks differ */
    tl_shape s4[2] = {tl_shape1(4), tl_shape1(4)};            /* rank 1 */
    const tl_shape *cases[4] = {s1, s2, s3, s4};
    int tb = 0;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(lh_make_shapes(&h, &tl_matmul_ops, 2, cases[i], &tb, 1, NULL, 0, 1, 1),
                         TLEARN_ESHAPE);
        lh_free(&h);
    }
    tb = 2;
    assert_int_equal(lh_make_shapes(&h, &tl_matmul_ops, 2, s1, &tb, 1, NULL, 0, 1, 1),
                     TLEARN_EINVAL);
    lh_free(&h);
    tb = 0;
    assert_int_equal(lh_make_shapes(&h, &tl_matmul_ops, 1, s1, &tb, 1, NULL, 0, 1, 1),
                     TLEARN_EINVAL);
    lh_free(&h);
}

/* ---- drop_path ---------------------------------------------------------------------------- */

static void test_drop_path(void **state)
{
    (void)state;
    const size_t n = 400;
    float p = 0.3f;
    lh h;
    assert_int_equal(lh_make(&h, &tl_drop_path_ops, 1, tl_shape3(2, 3, 2), NULL, 0, &p, 1, n, 1),
                     TLEARN_OK);
    assert_int_equal(tl_drop_path_ops.saved_floats(h.L, n, 1), (n + 3) / 4); /* a byte each */
    lh_loss(&h);
    size_t dropped = 0;
    int *zero = calloc(n, sizeof *zero);
    for (size_t e = 0; e < n; e++) {
        /* every example is either all zero or all x / (1 - p) */
        zero[e] = h.out[e * 12] == 0.0f && h.out[e * 12 + 1] == 0.0f;
        dropped += (size_t)zero[e];
        for (size_t i = 0; i < 12; i++)
            assert_float_equal(h.out[e * 12 + i], zero[e] ? 0.0f : h.x[0][e * 12 + i] / (1.0f - p),
                               1e-6);
    }
    /* 400 draws of p = 0.3: 120 expected, sd 9.2; 5 sd either side */
    assert_true(dropped > 74 && dropped < 166);
    /* backward uses the saved mask: dx = dout * multiplier */
    float *dx = lh_alloc(h.in_len[0]);
    lh_backward(&h, &dx, 0, NULL);
    for (size_t i = 0; i < h.in_len[0]; i++)
        assert_float_equal(dx[i], zero[i / 12] ? 0.0f : h.r[i] / (1.0f - p), 1e-5);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3); /* same draws on every forward (harness) */
    free(dx);
    free(zero);
    lh_free(&h);
    /* evaluation: the identity */
    assert_int_equal(lh_make(&h, &tl_drop_path_ops, 1, tl_shape3(2, 3, 2), NULL, 0, &p, 1, 8, 0),
                     TLEARN_OK);
    lh_loss(&h);
    assert_memory_equal(h.out, h.x[0], sizeof(float) * h.out_len);
    lh_gradcheck(&h, 1e-2f, 2e-3, 2e-3);
    lh_free(&h);
    float bad[3] = {1.0f, -0.1f, NAN};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lh_make(&h, &tl_drop_path_ops, 1, tl_shape1(4), NULL, 0, &bad[i], 1, 1,
                                 1), TLEARN_EINVAL);
        lh_free(&h);
    }
}

/* ---- registry, public door, checkpoints ---------------------------------------------------- */

static void test_registry(void **state)
{
    (void)state;
    const tl_layer_ops *kinds[] = {&tl_layernorm_ops, &tl_adaptive_avgpool_ops, &tl_pad_ops,
                                   &tl_matmul_ops, &tl_drop_path_ops};
    int nums[] = {TLEARN_LAYER_LAYERNORM, TLEARN_LAYER_ADAPTIVE_AVGPOOL, TLEARN_LAYER_PAD,
                  TLEARN_LAYER_MATMUL, TLEARN_LAYER_DROP_PATH};
    assert_int_equal(TLEARN_LAYER_LAYERNORM, 18);
    assert_int_equal(TLEARN_LAYER_ADAPTIVE_AVGPOOL, 19);
    assert_int_equal(TLEARN_LAYER_PAD, 20);
    assert_int_equal(TLEARN_LAYER_MATMUL, 21);
    assert_int_equal(TLEARN_LAYER_DROP_PATH, 22);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        assert_int_equal(kinds[i]->kind, nums[i]);
        assert_ptr_equal(tl_layer_ops_by_name(kinds[i]->kind_name), kinds[i]);
        assert_ptr_equal(tl_layer_ops_by_kind(kinds[i]->kind), kinds[i]);
    }
}

static size_t out_size(tlearn_model *m)
{
    int count, rank, dims[4];
    OK(tlearn_model_layer_count(m, &count));
    OK(tlearn_model_layer_shape_nd(m, count - 1, &rank, dims, 4));
    size_t s = 1;
    for (int i = 0; i < rank; i++)
        s *= (size_t)dims[i];
    return s;
}

/* Save, load, and the loaded model gives the same outputs bit for bit. */
static void round_trip(tlearn_model *m, size_t in_size, const char *path)
{
    const size_t n = 3;
    uint64_t s = 99;
    float *x = lh_alloc(n * in_size);
    for (size_t i = 0; i < n * in_size; i++)
        x[i] = lh_rand(&s);
    size_t os = out_size(m);
    float *y0 = lh_alloc(n * os), *y1 = lh_alloc(n * os);
    OK(tlearn_model_set_training(m, 0));
    OK(tlearn_model_predict(m, x, n, y0, n * os));
    OK(tlearn_model_save(m, NULL, path, 0));
    tlearn_model *l = NULL;
    OK(tlearn_model_load(&l, NULL, path));
    int c0, c1;
    OK(tlearn_model_layer_count(m, &c0));
    OK(tlearn_model_layer_count(l, &c1));
    assert_int_equal(c0, c1);
    for (int i = 0; i < c0; i++) {
        int k0, k1;
        OK(tlearn_model_layer_kind(m, i, &k0));
        OK(tlearn_model_layer_kind(l, i, &k1));
        assert_int_equal(k0, k1);
        int ia0[TL_MAX_IARGS], ia1[TL_MAX_IARGS], ni0, ni1, nf0, nf1;
        float fa0[TL_MAX_FARGS], fa1[TL_MAX_FARGS];
        m->layers[i]->ops->arguments(m->layers[i], ia0, &ni0, fa0, &nf0);
        l->layers[i]->ops->arguments(l->layers[i], ia1, &ni1, fa1, &nf1);
        assert_int_equal(ni0, ni1);
        assert_int_equal(nf0, nf1);
        assert_memory_equal(ia0, ia1, sizeof(int) * (size_t)ni0);
        if (nf0)
            assert_memory_equal(fa0, fa1, sizeof(float) * (size_t)nf0);
    }
    OK(tlearn_model_set_training(l, 0));
    OK(tlearn_model_predict(l, x, n, y1, n * os));
    assert_memory_equal(y0, y1, sizeof(float) * n * os);
    tlearn_model_destroy(&l);
    remove(path);
    free(x);
    free(y0);
    free(y1);
}

static void test_checkpoint_round_trip(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof path, "ops-norm-%ld.tlm", (long)getpid());
    /* images: pad, pools with ceil mode and asymmetric padding, channel layernorm,
     * adaptive pooling, drop path */
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, 3, 9, 10));
    OK(tlearn_model_add_pad(m, "pad", 1, 2, 0, 1, TLEARN_PAD_REFLECT, 0.0f));
    OK(tlearn_model_add_conv2d(m, "conv", 4, 3, 1, 1, 1));
    OK(tlearn_model_add_maxpool2d_ex(m, "max", 3, 3, 2, 2, 1, 0, 0, 1, 1, 1, 1));
    OK(tlearn_model_add_maxpool2d_ex(m, "plain", 2, 2, 1, 1, 0, 0, 0, 0, 1, 1, 0));
    OK(tlearn_model_add_avgpool2d_ex(m, "avg", 2, 2, 2, 2, 0, 1, 1, 0, 1, 0));
    OK(tlearn_model_add_layernorm_channels(m, "ln2d", 1e-6f, 1));
    OK(tlearn_model_add_drop_path(m, "dp", 0.2f));
    OK(tlearn_model_add_adaptive_avgpool(m, "adapt", 3, 2));
    OK(tlearn_model_add_pad(m, "pad2", 0, 1, 2, 0, TLEARN_PAD_CONSTANT, -1.5f));
    OK(tlearn_model_add_layernorm(m, "ln", 2, 1e-5f, 1));
    OK(tlearn_model_add_layernorm(m, "ln_plain", 1, 1e-4f, 0));
    /* non-trivial layernorm parameters */
    float w[4] = {0.5f, 1.5f, -1.0f, 2.0f}, b[4] = {0.1f, -0.2f, 0.3f, 0.0f};
    OK(tlearn_model_set_tensor(m, "ln2d.weight", w, 4));
    OK(tlearn_model_set_tensor(m, "ln2d.bias", b, 4));
    round_trip(m, 3 * 9 * 10, path);
    tlearn_model_destroy(&m);
    /* sequences: attention-like products */
    int dims[2] = {5, 6};
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 2, dims));
    OK(tlearn_model_add_linear(m, "q", 4, 1));
    OK(tlearn_model_set_next_input(m, "x"));
    OK(tlearn_model_add_linear(m, "k", 4, 0));
    OK(tlearn_model_add_matmul(m, "scores", "q", "k", 1));
    OK(tlearn_model_add_matmul(m, "mix", "scores", "x", 0));
    OK(tlearn_model_add_layernorm(m, "ln", 1, 1e-5f, 1));
    round_trip(m, 30, path);
    tlearn_model_destroy(&m);
}

static void test_public_door(void **state)
{
    (void)state;
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, 3, 8, 8));
    assert_int_equal(tlearn_model_add_layernorm(m, "ln", 0, 1e-5f, 1), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "tlearn_model_add_layernorm_channels"));
    assert_int_equal(tlearn_model_add_layernorm(m, "ln", 4, 1e-5f, 1), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_layernorm(NULL, "ln", 1, 1e-5f, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_layernorm_channels(m, "ln", 0.0f, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_maxpool2d_ex(m, "mp", 3, 3, 1, 1, 0, 0, 2, 0, 1, 1, 0),
                     TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "tlearn_model_add_maxpool2d_ex"));
    assert_int_equal(tlearn_model_add_avgpool2d_ex(m, "ap", 3, 3, 1, 1, 0, 0, 0, 0, 0, 2),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_adaptive_avgpool(m, "ad", 0, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_pad(m, "pd", 8, 0, 0, 0, TLEARN_PAD_REFLECT, 0.0f),
                     TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_pad(m, "pd", 0, 0, 0, 0, 7, 0.0f), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_drop_path(m, "dp", 1.0f), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_matmul(m, "mm", "input", "nothere", 0), TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_model_add_matmul(m, "mm", NULL, "input", 0), TLEARN_EINVAL);
    OK(tlearn_model_add_matmul(m, "mm", "input", "input", 0)); /* (8, 8) x (8, 8) per channel */
    assert_int_equal(tlearn_model_add_matmul(m, "mm2", "input", "input", 2), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_matmul(m, "bad name!", "input", "input", 0),
                     TLEARN_EINVAL);
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 1); /* only "mm" was added */
    int kind;
    OK(tlearn_model_layer_kind(m, 0, &kind));
    assert_int_equal(kind, TLEARN_LAYER_MATMUL);
    tlearn_model_destroy(&m);
}

/* x x^T through the model: one producer feeds both inputs, the runtime accumulates. */
static void test_matmul_same_producer(void **state)
{
    (void)state;
    tlearn_model *m = NULL;
    int dims[2] = {3, 4};
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 2, dims));
    OK(tlearn_model_add_linear(m, "lin", 4, 0));
    OK(tlearn_model_add_matmul(m, "gram", "lin", "lin", 1));
    OK(tlearn_model_add_flatten(m, "flat"));
    float W[16];
    uint64_t s = 5;
    for (int i = 0; i < 16; i++)
        W[i] = lh_rand(&s);
    OK(tlearn_model_set_tensor(m, "lin.weight", W, 16));
    float x[12];
    for (int i = 0; i < 12; i++)
        x[i] = lh_rand(&s);
    int32_t y = 4;
    float loss, g[16];
    OK(tlearn_model_compute_gradients(m, x, &y, 1, &loss, NULL, 0));
    OK(tlearn_model_get_grad(m, "lin.weight", g, 16));
    /* central differences of the loss in the weights */
    for (int i = 0; i < 16; i++) {
        float keep = W[i], lp, lm;
        W[i] = keep + 1e-2f;
        OK(tlearn_model_set_tensor(m, "lin.weight", W, 16));
        OK(tlearn_model_compute_gradients(m, x, &y, 1, &lp, NULL, 0));
        W[i] = keep - 1e-2f;
        OK(tlearn_model_set_tensor(m, "lin.weight", W, 16));
        OK(tlearn_model_compute_gradients(m, x, &y, 1, &lm, NULL, 0));
        W[i] = keep;
        OK(tlearn_model_set_tensor(m, "lin.weight", W, 16));
        assert_float_equal(g[i], (lp - lm) / 2e-2f, 2e-3 + 2e-2 * fabs(g[i]));
    }
    tlearn_model_destroy(&m);
}

/* Forwards split across threads (rows, or tiles of positions) give the one-thread result
 * bit for bit: each output depends on its own group only. */
static void test_layernorm_threads(void **state)
{
    (void)state;
    const size_t n = 4, size = 16 * 24 * 24; /* 36864 floats per example: above the threshold */
    uint64_t s = 17;
    float *x = lh_alloc(n * size), *y[2] = {lh_alloc(n * size), lh_alloc(n * size)};
    for (size_t i = 0; i < n * size; i++)
        x[i] = lh_rand(&s);
    for (int channels = 0; channels <= 1; channels++) {
        for (int t = 0; t < 2; t++) {
            tlearn_model *m = NULL;
            OK(tlearn_model_create(&m, 16, 24, 24));
            OK(tlearn_model_set_threads(m, t ? 2 : 1));
            if (channels)
                OK(tlearn_model_add_layernorm_channels(m, "ln", 1e-5f, 1));
            else
                OK(tlearn_model_add_layernorm(m, "ln", 1, 1e-5f, 1));
            OK(tlearn_model_predict(m, x, n, y[t], n * size));
            tlearn_model_destroy(&m);
        }
        assert_memory_equal(y[0], y[1], sizeof(float) * n * size);
    }
    free(x);
    free(y[0]);
    free(y[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm_values),
        cmocka_unit_test(test_layernorm_grad),
        cmocka_unit_test(test_layernorm_accum),
        cmocka_unit_test(test_layernorm_bad),
        cmocka_unit_test(test_layernorm_threads),
        cmocka_unit_test(test_pool_values),
        cmocka_unit_test(test_pool_grad),
        cmocka_unit_test(test_pool_arguments),
        cmocka_unit_test(test_pool_bad),
        cmocka_unit_test(test_pool_epilogue),
        cmocka_unit_test(test_adaptive_values),
        cmocka_unit_test(test_pad_values),
        cmocka_unit_test(test_pad_bad),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_bad),
        cmocka_unit_test(test_drop_path),
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_public_door),
        cmocka_unit_test(test_matmul_same_producer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
