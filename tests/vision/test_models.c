/* Composed vision networks through the public API: gradient checks of graphs with fan-out
 * and residual sums, refusals at the public door, train vs eval behaviour, the reference
 * CNN and a small ResNet (build, train, evaluate), and no allocation in steady-state steps
 * (tl_alloc_calls from the internal core, hence the static archive). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"
#include "model/model.h"
#include "tlearn/tlearn.h"

#define OK(call) assert_int_equal((call), TLEARN_OK)

static float urand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*s >> 40) / 8388608.0 - 1.0);
}

static float *frand(size_t count, uint64_t seed)
{
    float *p = malloc(count * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < count; i++)
        p[i] = urand(&seed);
    return p;
}

static float loss_at(tlearn_model *m, const float *x, const int32_t *y, size_t n)
{
    float l;
    OK(tlearn_model_compute_gradients(m, x, y, n, &l, NULL, 0));
    return l;
}

/* Central differences of the model loss over some entries of @p v (x or a parameter read
 * with get_tensor / written with set_tensor when @p tensor is not NULL). */
static void fd_check(tlearn_model *m, const char *tensor, float *v, size_t len, const float *g,
                     const float *x, const int32_t *y, size_t n)
{
    const float h = 1e-2f;
    size_t stride = len > 40 ? len / 40 : 1;
    for (size_t i = 0; i < len; i += stride) {
        float keep = v[i];
        v[i] = keep + h;
        if (tensor)
            OK(tlearn_model_set_tensor(m, tensor, v, len));
        double lp = loss_at(m, x, y, n);
        v[i] = keep - h;
        if (tensor)
            OK(tlearn_model_set_tensor(m, tensor, v, len));
        double lm = loss_at(m, x, y, n);
        v[i] = keep;
        if (tensor)
            OK(tlearn_model_set_tensor(m, tensor, v, len));
        double num = (lp - lm) / (2.0 * h);
        /* the loss comes back as float: about 1e-7 * loss / h = 2e-5 of noise */
        if (fabs(num - g[i]) > 5e-4 + 2e-2 * fabs(num)) {
            print_error("%s[%zu]: analytic %.7g numeric %.7g\n", tensor ? tensor : "dx", i,
                        (double)g[i], num);
            fail();
        }
    }
}

/* in -> c1 -> t1(tanh) -> c2 -> s = c2 + t1 -> d = s + s -> avg -> fc. t1 fans out to c2
 * and s, d reads s twice; with dilation, stride, groups and padding on the way. */
static void test_fanout_gradients(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 7, 6));
    OK(tlearn_model_set_seed(m, 3));
    OK(tlearn_model_add_conv2d_ex(m, "c1", 4, 3, 3, 1, 1, 2, 2, 2, 2, 1, 1)); /* 4x7x6 */
    OK(tlearn_model_add_activation(m, "t1", TLEARN_ACT_TANH, 0));
    OK(tlearn_model_add_conv2d_ex(m, "c2", 4, 3, 3, 1, 1, 1, 1, 1, 1, 2, 0));
    OK(tlearn_model_add_add(m, "s", "t1"));
    OK(tlearn_model_add_add(m, "d", "s"));
    OK(tlearn_model_add_avgpool2d(m, "avg", 2, 2, 0, 1));
    OK(tlearn_model_add_dense(m, "fc", 3));
    const size_t n = 3, in = 2 * 7 * 6;
    float *x = frand(n * in, 7);
    int32_t y[3] = {0, 2, 1};
    float *dx = malloc(n * in * sizeof *dx);
    float loss;
    OK(tlearn_model_compute_gradients(m, x, y, n, &loss, dx, n * in));
    assert_true(isfinite(loss));
    const char *names[] = {"c1.weight", "c1.bias", "c2.weight", "fc.weight"};
    size_t lens[] = {4 * 2 * 9, 4, 4 * 2 * 9, 3 * 4 * 3 * 3};
    float *grads[4], *vals[4];
    for (int t = 0; t < 4; t++) {
        grads[t] = malloc(lens[t] * sizeof(float));
        vals[t] = malloc(lens[t] * sizeof(float));
        OK(tlearn_model_get_grad(m, names[t], grads[t], lens[t]));
        OK(tlearn_model_get_tensor(m, names[t], vals[t], lens[t]));
    }
    fd_check(m, NULL, x, n * in, dx, x, y, n);
    for (int t = 0; t < 4; t++) {
        fd_check(m, names[t], vals[t], lens[t], grads[t], x, y, n);
        free(grads[t]);
        free(vals[t]);
    }
    free(x);
    free(dx);
    tlearn_model_destroy(&m);
}

/* Convolutions fold a following ReLU, and a 2x2 max-pool after it, into their output pass
 * (model/run.c, layers/conv2d.c). The folded results must be the layers' own, bit for bit,
 * also for NaN, infinities and signed zeros, odd sizes (the pool drops the last row and
 * column); a training step through folded ReLUs gets the gradients of unfolded ones. */
static float ref_relu(float v)
{
    return isnan(v) || v >= 0.0f ? v : 0.0f; /* torch.relu: NaN and -0 pass through */
}

/* conv1 (im2col) - relu1 - pool1 - conv2 (Winograd: 16 channels, 264 tiles at n = 44) -
 * relu2 - pool2 - fc on 2x9x11; @p leaky: ReLUs as leaky ReLUs of slope 0 (never folded). */
static tlearn_model *folding_net(int leaky)
{
    int act = leaky ? TLEARN_ACT_LEAKY_RELU : TLEARN_ACT_RELU;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 9, 11));
    OK(tlearn_model_set_seed(m, 5));
    OK(tlearn_model_add_conv2d(m, "conv1", 16, 3, 1, 1, 1)); /* 16x9x11 */
    OK(tlearn_model_add_activation(m, "relu1", act, 0));
    OK(tlearn_model_add_maxpool2d(m, "pool1", 2, 2, 0));      /* 16x4x5 */
    OK(tlearn_model_add_conv2d(m, "conv2", 3, 3, 1, 1, 1));  /* 3x4x5 */
    OK(tlearn_model_add_activation(m, "relu2", act, 0));
    OK(tlearn_model_add_maxpool2d(m, "pool2", 2, 2, 0));      /* 3x2x2 */
    OK(tlearn_model_add_dense(m, "fc", 3));
    return m;
}

/* Features of a conv, its ReLU and its pool, each run up to that layer (so folded up to
 * there), against the ReLU and pool rules applied to the unfolded conv output. */
static void check_folds(tlearn_model *m, const float *x, size_t n, const char *names[3], int c,
                        int h, int w)
{
    size_t plane = (size_t)h * w, ph = (size_t)h / 2, pw = (size_t)w / 2;
    size_t len = n * c * plane, plen = n * c * ph * pw, nans = 0, pooled_nans = 0;
    float *conv = malloc(len * sizeof *conv), *relu = malloc(len * sizeof *relu);
    float *pool = malloc(plen * sizeof *pool);
    OK(tlearn_model_features(m, names[0], x, n, conv, len)); /* nothing folded */
    OK(tlearn_model_features(m, names[1], x, n, relu, len)); /* ReLU folded */
    OK(tlearn_model_features(m, names[2], x, n, pool, plen)); /* ReLU and pool folded */
    for (size_t i = 0; i < len; i++) {
        float r = ref_relu(conv[i]);
        assert_memory_equal(&relu[i], &r, sizeof r);
        nans += isnan(conv[i]);
    }
    for (size_t q = 0; q < n * c; q++)
        for (size_t oh = 0; oh < ph; oh++)
            for (size_t ow = 0; ow < pw; ow++) {
                const float *r = relu + q * plane + 2 * oh * w + 2 * ow;
                const float win[4] = {r[0], r[1], r[w], r[w + 1]};
                float best = win[0]; /* first NaN, else first maximum, as the pool layer */
                for (int k = 1; k < 4 && !isnan(best); k++)
                    if (isnan(win[k]) || win[k] > best)
                        best = win[k];
                const float *got = &pool[q * ph * pw + oh * pw + ow];
                assert_memory_equal(got, &best, sizeof best);
                pooled_nans += isnan(*got);
            }
    assert_true(nans > 0 && pooled_nans > 0); /* the NaN inputs reached the pool's output */
    free(conv), free(relu), free(pool);
}

static void test_folded_epilogues(void **state)
{
    (void)state;
    tlearn_model *m = folding_net(0);
    const size_t n = 44, in = 2 * 9 * 11;
    float *x = frand(n * in, 11);
    x[5] = NAN, x[40] = INFINITY, x[41] = -INFINITY, x[100] = -0.0f, x[250] = NAN;
    for (size_t i = 300; i < 330; i++)
        x[i] = 0.0f; /* conv outputs equal to the bias: ties in the pool */
    check_folds(m, x, n, (const char *[3]){"conv1", "relu1", "pool1"}, 16, 9, 11);
    check_folds(m, x, n, (const char *[3]){"conv2", "relu2", "pool2"}, 3, 4, 5);

    /* Training folds the ReLUs (not the pools): the twin whose ReLUs are never folded must
     * get the same gradients. */
    tlearn_model *twin = folding_net(1);
    free(x);
    x = frand(n * in, 12);
    int32_t y[44];
    for (size_t i = 0; i < n; i++)
        y[i] = (int32_t)(i % 3);
    float loss, twin_loss;
    OK(tlearn_model_compute_gradients(m, x, y, n, &loss, NULL, 0));
    OK(tlearn_model_compute_gradients(twin, x, y, n, &twin_loss, NULL, 0));
    assert_true(loss == twin_loss);
    const char *names[] = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"};
    size_t lens[] = {16 * 2 * 9, 16, 3 * 16 * 9, 3};
    for (int t = 0; t < 4; t++) {
        float *g = malloc(lens[t] * sizeof *g), *gt = malloc(lens[t] * sizeof *gt);
        OK(tlearn_model_get_grad(m, names[t], g, lens[t]));
        OK(tlearn_model_get_grad(twin, names[t], gt, lens[t]));
        for (size_t i = 0; i < lens[t]; i++)
            assert_float_equal(g[i], gt[i], 1e-6 * (1.0 + fabs(gt[i])));
        free(g);
        free(gt);
    }
    tlearn_model_destroy(&twin);
    free(x);
    tlearn_model_destroy(&m);
}

/* The ReLU after a residual sum folds into the add: the same bits as the unfolded ReLU
 * (NaN, infinities, -0), and in training the gradients of a twin whose ReLU never folds
 * (leaky, slope 0). x -> conv "s" -> conv "a" -> add(a, s) -> relu -> fc. */
static tlearn_model *residual_net(int leaky)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 6, 7));
    OK(tlearn_model_set_seed(m, 9));
    OK(tlearn_model_add_conv2d(m, "s", 3, 3, 1, 1, 1));
    OK(tlearn_model_add_conv2d(m, "a", 3, 3, 1, 1, 1));
    OK(tlearn_model_add_add(m, "sum", "s"));
    OK(tlearn_model_add_activation(m, "relu", leaky ? TLEARN_ACT_LEAKY_RELU : TLEARN_ACT_RELU,
                                   0));
    OK(tlearn_model_add_dense(m, "fc", 3));
    return m;
}

static void test_folded_residual_relu(void **state)
{
    (void)state;
    enum { N = 6, IN = 3 * 6 * 7 };
    tlearn_model *m = residual_net(0), *twin = residual_net(1);
    float *x = frand((size_t)N * IN, 13), sum[N * IN], relu[N * IN];
    x[3] = NAN, x[50] = INFINITY, x[51] = -INFINITY, x[200] = -0.0f;
    OK(tlearn_model_features(m, "sum", x, N, sum, N * IN));  /* nothing folded */
    OK(tlearn_model_features(m, "relu", x, N, relu, N * IN)); /* ReLU folded into the add */
    size_t nans = 0;
    for (size_t i = 0; i < (size_t)N * IN; i++) {
        float r = ref_relu(sum[i]);
        assert_memory_equal(&relu[i], &r, sizeof r);
        nans += isnan(sum[i]);
    }
    assert_true(nans > 0);
    free(x);
    x = frand((size_t)N * IN, 14);
    int32_t y[N] = {0, 1, 2, 0, 1, 2};
    float loss, twin_loss, g[3 * 3 * 9], gt[3 * 3 * 9];
    OK(tlearn_model_compute_gradients(m, x, y, N, &loss, NULL, 0));
    OK(tlearn_model_compute_gradients(twin, x, y, N, &twin_loss, NULL, 0));
    assert_true(loss == twin_loss);
    OK(tlearn_model_get_grad(m, "a.weight", g, 81));
    OK(tlearn_model_get_grad(twin, "a.weight", gt, 81));
    for (int i = 0; i < 81; i++)
        assert_float_equal(g[i], gt[i], 1e-6 * (1.0 + fabs(gt[i])));
    free(x);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&twin);
}

/* Chunked inference transforms a Winograd convolution's filters once per call
 * (ops->prepare): after the weights change, the next call must see the new ones. */
static void test_prepared_filters_follow_the_weights(void **state)
{
    (void)state;
    enum { N = 40, IN = 16 * 8 * 8, W = 8 * 16 * 9 };
    tlearn_model *m[2];
    for (int k = 0; k < 2; k++) {
        OK(tlearn_model_create(&m[k], 16, 8, 8));
        OK(tlearn_model_set_seed(m[k], 21 + (uint64_t)k));
        OK(tlearn_model_add_conv2d(m[k], "conv", 8, 3, 1, 1, 1)); /* 16 tiles per image */
        OK(tlearn_model_add_flatten(m[k], "flat"));
        OK(tlearn_model_add_dense(m[k], "fc", 3));
    }
    float *x = frand((size_t)N * IN, 22), before[N * 3], after[N * 3], fresh[N * 3];
    OK(tlearn_model_predict(m[0], x, N, before, N * 3));
    /* m[0] takes m[1]'s weights: its predictions must become m[1]'s */
    const char *names[] = {"conv.weight", "conv.bias", "fc.weight", "fc.bias"};
    const size_t lens[] = {W, 8, 3 * 8 * 64, 3};
    float *t = malloc(3 * 8 * 64 * sizeof *t);
    for (int i = 0; i < 4; i++) {
        OK(tlearn_model_get_tensor(m[1], names[i], t, lens[i]));
        OK(tlearn_model_set_tensor(m[0], names[i], t, lens[i]));
    }
    OK(tlearn_model_predict(m[0], x, N, after, N * 3));
    OK(tlearn_model_predict(m[1], x, N, fresh, N * 3));
    assert_memory_equal(after, fresh, sizeof after);
    assert_memory_not_equal(after, before, sizeof after);
    free(t);
    free(x);
    tlearn_model_destroy(&m[0]);
    tlearn_model_destroy(&m[1]);
}

/* A ResNet-style block with batchnorm in training mode: gradients through batch
 * statistics, a strided 1x1 projection on the skip path, and pooling. */
static void test_residual_bn_gradients(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 8, 8));
    OK(tlearn_model_add_conv2d_ex(m, "stem", 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "bn0", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "r0", TLEARN_ACT_TANH, 0));
    /* average, not max, pooling: a weight step moves every activation and would flip
     * max-pool argmaxes inside the finite difference (max pooling is checked per layer
     * and against PyTorch) */
    OK(tlearn_model_add_avgpool2d(m, "mp", 2, 0, 0, 1)); /* 4x4x4 */
    OK(tlearn_model_add_conv2d_ex(m, "a", 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0)); /* 6x2x2 */
    OK(tlearn_model_add_batchnorm(m, "abn", 1e-5f, 0.1f));
    OK(tlearn_model_set_next_input(m, "mp"));
    OK(tlearn_model_add_conv2d_ex(m, "down", 6, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "dbn", 1e-5f, 0.1f));
    OK(tlearn_model_set_next_input(m, "abn"));
    OK(tlearn_model_add_add(m, "sum", "dbn"));
    OK(tlearn_model_add_global_avgpool(m, "gap"));
    OK(tlearn_model_add_dense(m, "fc", 4));
    const size_t n = 5, in = 3 * 64;
    float *x = frand(n * in, 11);
    int32_t y[5] = {0, 1, 2, 3, 1};
    float *dx = malloc(n * in * sizeof *dx);
    OK(tlearn_model_compute_gradients(m, x, y, n, NULL, dx, n * in));
    const char *names[] = {"stem.weight", "bn0.weight", "bn0.bias", "a.weight", "dbn.weight",
                           "down.weight"};
    size_t lens[] = {4 * 27, 4, 4, 6 * 36, 6, 6 * 4};
    /* all analytic gradients first: every loss evaluation below overwrites them */
    float *g[6], *v[6];
    for (int t = 0; t < 6; t++) {
        g[t] = malloc(lens[t] * sizeof(float));
        v[t] = malloc(lens[t] * sizeof(float));
        OK(tlearn_model_get_grad(m, names[t], g[t], lens[t]));
        OK(tlearn_model_get_tensor(m, names[t], v[t], lens[t]));
    }
    fd_check(m, NULL, x, n * in, dx, x, y, n);
    for (int t = 0; t < 6; t++) {
        fd_check(m, names[t], v[t], lens[t], g[t], x, y, n);
        free(g[t]);
        free(v[t]);
    }
    /* compute_gradients never commits: running statistics are still the initial ones */
    float rv[4];
    OK(tlearn_model_get_tensor(m, "bn0.running_var", rv, 4));
    for (int c = 0; c < 4; c++)
        assert_float_equal(rv[c], 1.0f, 0.0f);
    free(x);
    free(dx);
    tlearn_model_destroy(&m);
}

static void test_public_refusals(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 8, 8));
    assert_int_equal(tlearn_model_add_conv2d(m, "big", 4, 11, 1, 1, 1), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_conv2d(m, "g", 4, 3, 1, 1, 2), TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "tlearn_model_add_conv2d"));
    assert_int_equal(tlearn_model_add_conv2d(m, "z", 0, 3, 1, 1, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_conv2d(m, "s", 4, 3, -1, 1, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_conv2d_ex(m, "d", 4, 3, 3, 1, 1, 1, 1, 0, 1, 1, 1),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_conv2d(NULL, "x", 4, 3, 1, 1, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_maxpool2d(m, "mp", 3, 1, 2), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_maxpool2d(m, "mp", 9, 0, 0), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_avgpool2d(m, "ap", 2, 2, 0, 2), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_batchnorm(m, "bn", 0.0f, 0.1f), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_dropout(m, "do", 1.0f), TLEARN_EINVAL);
    int count = -1;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 0); /* nothing was added by the refused calls */

    OK(tlearn_model_add_conv2d(m, "c1", 4, 3, 1, 1, 1));
    OK(tlearn_model_add_conv2d(m, "c2", 4, 3, 2, 1, 1)); /* 4x4x4 */
    assert_int_equal(tlearn_model_add_add(m, "sum", "c1"), TLEARN_ESHAPE);
    const char *msg = tlearn_errmsg();
    assert_non_null(strstr(msg, "'c2'"));
    assert_non_null(strstr(msg, "'c1'"));
    assert_non_null(strstr(msg, "(4, 4, 4)"));
    assert_non_null(strstr(msg, "(4, 8, 8)"));
    assert_int_equal(tlearn_model_add_add(m, "sum", "nope"), TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_model_add_add(m, "sum", NULL), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_add(m, "c1", "c2"), TLEARN_EINVAL); /* duplicate name */
    OK(tlearn_model_add_add(m, "sum", "c2")); /* c2 + c2 */
    int kind;
    OK(tlearn_model_layer_kind(m, 2, &kind));
    assert_int_equal(kind, TLEARN_LAYER_ADD);
    tlearn_model_destroy(&m);
}

/* Model-level: dropout and batchnorm obey the model's mode; predict always evaluates. */
static void test_mode(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 3, 3));
    OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_dropout(m, "do", 0.5f));
    OK(tlearn_model_add_dense(m, "fc", 3));
    const size_t n = 8;
    float *x = frand(n * 18, 5);
    for (size_t i = 0; i < n * 18; i++)
        x[i] = 4.0f + 3.0f * x[i];
    int32_t y[8] = {0, 1, 2, 0, 1, 2, 0, 1};
    float p1[24], p2[24], rm[2], rm2[2];
    OK(tlearn_model_predict(m, x, n, p1, 24));
    OK(tlearn_model_predict(m, x, n, p2, 24));
    assert_memory_equal(p1, p2, sizeof p1); /* evaluation: no dropout, running stats */
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_model_train_step(m, o, x, y, n, NULL));
    OK(tlearn_model_get_tensor(m, "bn.running_mean", rm, 2));
    assert_true(rm[0] > 0.2f && rm[1] > 0.2f); /* 0.1 * batch mean of about 4 */
    /* evaluation mode: a step trains the weights but not the statistics */
    OK(tlearn_model_set_training(m, 0));
    OK(tlearn_model_train_step(m, o, x, y, n, NULL));
    OK(tlearn_model_get_tensor(m, "bn.running_mean", rm2, 2));
    assert_memory_equal(rm, rm2, sizeof rm);
    /* and the loss is deterministic (no dropout) */
    float l1 = loss_at(m, x, y, n), l2 = loss_at(m, x, y, n);
    assert_float_equal(l1, l2, 0.0f);
    OK(tlearn_model_set_training(m, 1));
    l1 = loss_at(m, x, y, n);
    l2 = loss_at(m, x, y, n);
    assert_true(l1 != l2); /* training mode: a new dropout mask each time */
    /* an evaluation-mode backward right after a training one must not reuse the dropout
     * mask (or batch statistics) kept by the training forward: dx has no dropped zeros */
    tlearn_model *m2;
    OK(tlearn_model_create(&m2, 18, 1, 1));
    OK(tlearn_model_add_dropout(m2, "do", 0.5f));
    OK(tlearn_model_add_dense(m2, "fc", 3));
    float dx[8 * 18];
    size_t zeros = 0;
    OK(tlearn_model_compute_gradients(m2, x, y, n, NULL, dx, n * 18));
    for (size_t i = 0; i < n * 18; i++)
        zeros += dx[i] == 0.0f;
    assert_in_range(zeros, 40, 104); /* training: about half of the 144 dropped */
    OK(tlearn_model_set_training(m2, 0));
    OK(tlearn_model_compute_gradients(m2, x, y, n, NULL, dx, n * 18));
    for (size_t i = 0; i < n * 18; i++)
        assert_true(dx[i] != 0.0f);
    tlearn_model_destroy(&m2);
    tlearn_optim_destroy(&o);
    free(x);
    tlearn_model_destroy(&m);
}

/* Synthetic 10-class images: class k has a bright 6x6 square at one of 10 positions,
 * plus noise. */
static void make_images(float *x, int32_t *y, size_t n, int c, int hw, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        int k = (int)(i % 10);
        y[i] = k;
        float *img = x + i * (size_t)c * hw * hw;
        for (int j = 0; j < c * hw * hw; j++)
            img[j] = 0.2f * urand(&seed);
        int r0 = (k / 5) * (hw / 2) + 1, c0 = (k % 5) * (hw / 5);
        for (int ch = 0; ch < c; ch++)
            for (int r = r0; r < r0 + hw / 4 && r < hw; r++)
                for (int q = c0; q < c0 + hw / 5 && q < hw; q++)
                    img[(ch * hw + r) * hw + q] += 1.0f;
    }
}

/* conv32(3x3,pad1)-relu-maxpool2-conv64(3x3,pad1)-relu-maxpool2-fc128-relu-fc10 on
 * 1x28x28. */
static tlearn_model *reference_cnn(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 1, 28, 28));
    OK(tlearn_model_add_conv2d(m, "conv1", 32, 3, 1, 1, 1));
    OK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_maxpool2d(m, "pool1", 2, 2, 0));
    OK(tlearn_model_add_conv2d(m, "conv2", 64, 3, 1, 1, 1));
    OK(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_maxpool2d(m, "pool2", 2, 2, 0));
    OK(tlearn_model_add_dense(m, "fc1", 128));
    OK(tlearn_model_add_activation(m, "relu3", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", 10));
    return m;
}

static void test_cnn(void **state)
{
    (void)state;
    tlearn_model *m = reference_cnn();
    int c, h, w;
    OK(tlearn_model_layer_shape(m, 5, &c, &h, &w));
    assert_int_equal(c, 64);
    assert_int_equal(h, 7);
    assert_int_equal(w, 7);
    size_t total;
    OK(tlearn_model_param_count(m, &total, NULL));
    /* 32*9+32 + 64*32*9+64 + 3136*128+128 + 128*10+10 */
    assert_int_equal(total, 320 + 18496 + 401536 + 1290);
    const size_t n = 200, batch = 20, in = 784;
    float *x = malloc(n * in * sizeof *x);
    int32_t *y = malloc(n * sizeof *y);
    make_images(x, y, n, 1, 28, 1);
    float loss0, acc0, loss1, acc1;
    OK(tlearn_model_evaluate(m, x, y, n, &loss0, &acc0));
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    OK(tlearn_model_fit(m, o, x, y, n, batch, 3, 1, NULL, NULL));
    OK(tlearn_model_evaluate(m, x, y, n, &loss1, &acc1));
    /* a learnable task: 3 epochs take the loss well below its start and chance level */
    assert_true(loss1 < 0.5f * loss0);
    assert_true(acc1 > 0.5f);
    float *out = malloc(n * 10 * sizeof *out);
    OK(tlearn_model_predict(m, x, n, out, n * 10));
    for (size_t i = 0; i < n * 10; i++)
        assert_true(isfinite(out[i]));
    free(out);
    tlearn_optim_destroy(&o);
    free(x);
    free(y);
    tlearn_model_destroy(&m);
}

/* A small ResNet: stem conv-bn-relu, block 1 (identity skip), block 2 (stride 2, 1x1 conv
 * + bn downsample on the skip path), global average pool, fc. */
static tlearn_model *small_resnet(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 16, 16));
    OK(tlearn_model_add_conv2d_ex(m, "stem", 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "stem_bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "stem_relu", TLEARN_ACT_RELU, 0));
    /* block 1 */
    OK(tlearn_model_add_conv2d_ex(m, "b1_conv1", 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "b1_bn1", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "b1_relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_conv2d_ex(m, "b1_conv2", 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "b1_bn2", 1e-5f, 0.1f));
    OK(tlearn_model_add_add(m, "b1_add", "stem_relu"));
    OK(tlearn_model_add_activation(m, "b1_out", TLEARN_ACT_RELU, 0));
    /* block 2, downsampling */
    OK(tlearn_model_add_conv2d_ex(m, "b2_conv1", 32, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "b2_bn1", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "b2_relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_conv2d_ex(m, "b2_conv2", 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "b2_bn2", 1e-5f, 0.1f));
    OK(tlearn_model_set_next_input(m, "b1_out"));
    OK(tlearn_model_add_conv2d_ex(m, "b2_down", 32, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0));
    OK(tlearn_model_add_batchnorm(m, "b2_down_bn", 1e-5f, 0.1f));
    OK(tlearn_model_set_next_input(m, "b2_bn2"));
    OK(tlearn_model_add_add(m, "b2_add", "b2_down_bn"));
    OK(tlearn_model_add_activation(m, "b2_out", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_global_avgpool(m, "gap"));
    OK(tlearn_model_add_dense(m, "fc", 10));
    return m;
}

static void test_resnet(void **state)
{
    (void)state;
    tlearn_model *m = small_resnet();
    int c, h, w, idx;
    OK(tlearn_model_layer_index(m, "b2_add", &idx));
    OK(tlearn_model_layer_shape(m, idx, &c, &h, &w));
    assert_int_equal(c, 32);
    assert_int_equal(h, 8);
    assert_int_equal(w, 8);
    const size_t n = 100, batch = 20, in = 3 * 256;
    float *x = malloc(n * in * sizeof *x);
    int32_t *y = malloc(n * sizeof *y);
    make_images(x, y, n, 3, 16, 2);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.05));
    OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
    float first = 0, last = 0;
    for (int e = 0; e < 6; e++) {
        float sum = 0;
        for (size_t s = 0; s < n; s += batch) {
            float l;
            OK(tlearn_model_train_step(m, o, x + s * in, y + s, batch, &l));
            sum += l;
        }
        if (e == 0)
            first = sum;
        last = sum;
    }
    assert_true(last < 0.5f * first);
    float rv[16];
    OK(tlearn_model_get_tensor(m, "b1_bn1.running_var", rv, 16));
    int moved = 0;
    for (int i = 0; i < 16; i++)
        moved += rv[i] != 1.0f;
    assert_int_equal(moved, 16); /* the running statistics were committed */
    float loss, acc;
    OK(tlearn_model_evaluate(m, x, y, n, &loss, &acc));
    assert_true(isfinite(loss));
    assert_true(acc > 0.3f);
    tlearn_optim_destroy(&o);
    free(x);
    free(y);
    tlearn_model_destroy(&m);
}

/* Two threads compute what one does (GEMM partitions and parallel loops must not change
 * the math beyond summation order). */
static void test_threads(void **state)
{
    (void)state;
    tlearn_model *a = small_resnet(), *b = small_resnet();
    OK(tlearn_model_set_threads(b, 2));
    const size_t n = 9, in = 3 * 256;
    float *x = malloc(n * in * sizeof *x);
    int32_t *y = malloc(n * sizeof *y);
    make_images(x, y, n, 3, 16, 4);
    float la, lb, *dxa = malloc(n * in * sizeof(float)), *dxb = malloc(n * in * sizeof(float));
    OK(tlearn_model_compute_gradients(a, x, y, n, &la, dxa, n * in));
    OK(tlearn_model_compute_gradients(b, x, y, n, &lb, dxb, n * in));
    assert_float_equal(la, lb, 1e-5f * fabsf(la));
    for (size_t i = 0; i < n * in; i++)
        assert_float_equal(dxa[i], dxb[i], 1e-6f + 1e-4f * fabsf(dxa[i]));
    float ga[32 * 16 * 9], gb[32 * 16 * 9];
    OK(tlearn_model_get_grad(a, "b2_conv1.weight", ga, 32 * 16 * 9));
    OK(tlearn_model_get_grad(b, "b2_conv1.weight", gb, 32 * 16 * 9));
    for (size_t i = 0; i < 32 * 16 * 9; i++)
        assert_float_equal(ga[i], gb[i], 1e-6f + 1e-4f * fabsf(ga[i]));
    free(x);
    free(y);
    free(dxa);
    free(dxb);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

/* After one warm-up step at a batch size, further steps at that size allocate nothing. */
static void test_no_allocation(void **state)
{
    (void)state;
    tlearn_model *nets[2] = {small_resnet(), reference_cnn()};
    int chans[2] = {3, 1}, hw[2] = {16, 28};
    for (int k = 0; k < 2; k++) {
        tlearn_model *m = nets[k];
        OK(tlearn_model_add_dropout(m, "drop", 0.1f)); /* a saved mask as well */
        OK(tlearn_model_add_dense(m, "head", 10));
        const size_t n = 8, in = (size_t)chans[k] * hw[k] * hw[k];
        float *x = malloc(n * in * sizeof *x);
        int32_t *y = malloc(n * sizeof *y);
        make_images(x, y, n, chans[k], hw[k], 3);
        tlearn_optim *o;
        OK(tlearn_optim_create(&o, TLEARN_ADAMW));
        OK(tlearn_model_train_step(m, o, x, y, n, NULL));
        uint64_t before = tl_alloc_calls();
        for (int s = 0; s < 4; s++)
            OK(tlearn_model_train_step(m, o, x, y, n, NULL));
        assert_int_equal(tl_alloc_calls(), before);
        tlearn_optim_destroy(&o);
        free(x);
        free(y);
        tlearn_model_destroy(&m);
    }
}

/* Frozen batchnorm layers still commit their batch statistics in training mode: behind a
 * trainable head (no backward through them: saved_floats(backward=0) keeps what commit
 * needs) and with the whole model frozen. Frozen weights never change. */
static void test_frozen_bn_commit(void **state)
{
    (void)state;
    for (int all = 0; all <= 1; all++) {
        tlearn_model *m;
        OK(tlearn_model_create(&m, 2, 5, 5));
        OK(tlearn_model_add_conv2d(m, "c", 3, 3, 1, 1, 1));
        OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.5f));
        OK(tlearn_model_add_dense(m, "fc", 4));
        m->lstate[0].frozen = m->lstate[1].frozen = 1; /* what a freeze policy sets */
        m->lstate[2].frozen = all;
        const size_t n = 6;
        float *x = frand(n * 50, 21);
        for (size_t i = 0; i < n * 50; i++)
            x[i] = 2.0f + x[i];
        int32_t y[6] = {0, 1, 2, 3, 0, 1};
        float w0[3 * 18], w1[3 * 18], rm[3], fc0[4 * 75], fc1[4 * 75];
        OK(tlearn_model_get_tensor(m, "c.weight", w0, 54));
        OK(tlearn_model_get_tensor(m, "fc.weight", fc0, 300));
        tlearn_optim *o;
        OK(tlearn_optim_create(&o, TLEARN_SGD));
        OK(tlearn_model_train_step(m, o, x, y, n, NULL));
        OK(tlearn_model_get_tensor(m, "bn.running_mean", rm, 3));
        for (int c = 0; c < 3; c++)
            assert_true(rm[c] != 0.0f); /* 0.5 * batch mean: committed */
        OK(tlearn_model_get_tensor(m, "c.weight", w1, 54));
        assert_memory_equal(w0, w1, sizeof w0);
        OK(tlearn_model_get_tensor(m, "fc.weight", fc1, 300));
        if (all)
            assert_memory_equal(fc0, fc1, sizeof fc0);
        else
            assert_memory_not_equal(fc0, fc1, sizeof fc0);
        tlearn_optim_destroy(&o);
        free(x);
        tlearn_model_destroy(&m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fanout_gradients),
        cmocka_unit_test(test_folded_epilogues),
        cmocka_unit_test(test_folded_residual_relu),
        cmocka_unit_test(test_prepared_filters_follow_the_weights),
        cmocka_unit_test(test_residual_bn_gradients),
        cmocka_unit_test(test_public_refusals),
        cmocka_unit_test(test_mode),
        cmocka_unit_test(test_cnn),
        cmocka_unit_test(test_resnet),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_no_allocation),
        cmocka_unit_test(test_frozen_bn_commit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
