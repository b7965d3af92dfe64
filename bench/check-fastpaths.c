/* The performance paths added for the benchmarks compute what the plain paths compute:
 *  - max pooling's fast paths (2x2 / stride 2; vectorised interior windows of any
 *    geometry), forward and gradient routing, against a reference written here from
 *    PyTorch's rules (first NaN wins, else the first maximum; padding never wins);
 *  - a model at 2 threads (OpenMP loops, threaded GEMMs) against the same model at 1;
 *  - the cache-sized chunks of a frozen prefix in a train step against the feature-cache
 *    path (features + train_step_from), which never chunks;
 *  - chunked inference (features of 256 images) against one image at a time.
 * Built with the benchmarks (-Dbench=true), suite 'bench'. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define OK(call) assert_int_equal((call), TLEARN_OK)

static void fill(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)(s >> 40) / 16777216.0f - 0.5f;
    }
}

static void assert_close(const float *a, const float *b, size_t n, float rtol, float atol)
{
    for (size_t i = 0; i < n; i++) {
        float tol = rtol * (fabsf(a[i]) + fabsf(b[i])) + atol;
        if (!(fabsf(a[i] - b[i]) <= tol))
            fail_msg("element %zu: %.9g vs %.9g", i, (double)a[i], (double)b[i]);
    }
}

/* Pool geometries: the 2x2 fast path and the general one (interior windows vectorised,
 * the border by the plain loop): ResNet's 3x3/2 stem pool, dilation, asymmetric padding
 * with ceil mode, a rectangular kernel. */
typedef struct pool_geo {
    int kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, ceil;
} pool_geo;
static const pool_geo POOLS[] = {
    {2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 0}, {3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0},
    {3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 0}, {2, 3, 1, 2, 0, 1, 1, 0, 1, 1, 1},
};
#define NPOOLS (sizeof POOLS / sizeof POOLS[0])

static int pool_out(int len, int k, int s, int p0, int p1, int d, int ceil)
{
    int span = (k - 1) * d + 1, num = len + p0 + p1 - span;
    int o = (ceil ? (num + s - 1) / s : num / s) + 1;
    if (ceil && (o - 1) * s >= len + p0) /* a last window starting in the padding */
        o--;
    return o;
}

/* PyTorch's max-pool window rule, in row-major window order: the first NaN, else the
 * first maximum; padding never wins. */
static int ref_argmax(const pool_geo *g, const float *plane, int h, int w, int oh, int ow)
{
    int best = -1;
    for (int dy = 0; dy < g->kh; dy++)
        for (int dx = 0; dx < g->kw; dx++) {
            int r = oh * g->sh - g->pt + dy * g->dh, c = ow * g->sw - g->pl + dx * g->dw;
            if (r < 0 || r >= h || c < 0 || c >= w)
                continue;
            int i = r * w + c;
            if (isnan(plane[i]))
                return i;
            if (best < 0 || plane[i] > plane[best])
                best = i;
        }
    return best;
}

static void add_pool(tlearn_model *m, const pool_geo *g)
{
    OK(tlearn_model_add_maxpool2d_ex(m, "pool", g->kh, g->kw, g->sh, g->sw, g->pt, g->pl,
                                     g->pb, g->pr, g->dh, g->dw, g->ceil));
}

/* Odd height and width (a last row and column no window reads), ties, infinities, NaN. */
#define PC 3
#define PH 7
#define PW 9
static void make_pool_input(float *x, size_t n, int with_nan)
{
    fill(x, n * PC * PH * PW, 3);
    for (size_t i = 0; i < n * PC * PH * PW; i++) {
        if (i % 5 == 0)
            x[i] = 0.25f; /* many ties */
        if (i % 17 == 3)
            x[i] = -INFINITY;
        if (i % 23 == 4)
            x[i] = INFINITY;
        if (with_nan && i % 29 == 6)
            x[i] = NAN;
    }
    for (size_t i = 1; i < n * PC * PH * PW; i++)
        if (i % 7 == 1 || i % 11 == 2)
            x[i] = x[i - 1]; /* ties with the left neighbour */
    for (size_t i = PW; i < n * PC * PH * PW; i++)
        if (i % 13 == 5)
            x[i] = x[i - PW]; /* ties with the element above */
}

static void test_maxpool_forward_matches_reference(void **state)
{
    (void)state;
    const size_t n = 4;
    float x[4 * PC * PH * PW], y[4 * PC * PH * PW];
    make_pool_input(x, n, 1);
    for (size_t k = 0; k < NPOOLS; k++) {
        const pool_geo *g = &POOLS[k];
        int oh = pool_out(PH, g->kh, g->sh, g->pt, g->pb, g->dh, g->ceil);
        int ow = pool_out(PW, g->kw, g->sw, g->pl, g->pr, g->dw, g->ceil);
        tlearn_model *m = NULL;
        OK(tlearn_model_create(&m, PC, PH, PW));
        add_pool(m, g);
        int c, h, w;
        OK(tlearn_model_layer_shape(m, 0, &c, &h, &w));
        assert_int_equal(h, oh);
        assert_int_equal(w, ow);
        OK(tlearn_model_predict(m, x, n, y, n * PC * (size_t)oh * ow));
        for (size_t q = 0; q < n * PC; q++)
            for (int i = 0; i < oh; i++)
                for (int j = 0; j < ow; j++) {
                    const float *plane = x + q * PH * PW;
                    float want = plane[ref_argmax(g, plane, PH, PW, i, j)];
                    float got = y[q * oh * ow + (size_t)i * ow + j];
                    if (isnan(want) ? !isnan(got) : got != want)
                        fail_msg("pool %zu, plane %zu (%d,%d): %.9g, reference %.9g", k, q, i,
                                 j, (double)got, (double)want);
                }
        tlearn_model_destroy(&m);
    }
}

/* Gradient routing: the input gradient is the sum of dY over the windows whose reference
 * argmax an element is, and 0 elsewhere (pool -> dense head; dY is computed here from the
 * head's weights). */
static void test_maxpool_gradient_routes_to_reference_argmax(void **state)
{
    (void)state;
    const size_t n = 2;
    enum { U = 3 };
    float x[2 * PC * PH * PW], dx[2 * PC * PH * PW], logits[2 * U], w[U * PC * PH * PW];
    int32_t labels[2] = {1, 2};
    make_pool_input(x, n, 0);
    for (size_t i = 0; i < n * PC * PH * PW; i++)
        if (isinf(x[i]))
            x[i] = x[i] > 0 ? 3.0f : -3.0f; /* finite loss */
    for (size_t k = 0; k < NPOOLS; k++) {
        const pool_geo *g = &POOLS[k];
        int OH = pool_out(PH, g->kh, g->sh, g->pt, g->pb, g->dh, g->ceil);
        int OW = pool_out(PW, g->kw, g->sw, g->pl, g->pr, g->dw, g->ceil), F = PC * OH * OW;
        tlearn_model *m = NULL;
        OK(tlearn_model_create(&m, PC, PH, PW));
        add_pool(m, g);
        OK(tlearn_model_add_dense(m, "fc", U));
        OK(tlearn_model_set_training(m, 1));
        float loss;
        OK(tlearn_model_compute_gradients(m, x, labels, n, &loss, dx, sizeof dx / sizeof dx[0]));
        OK(tlearn_model_predict(m, x, n, logits, sizeof logits / sizeof logits[0]));
        OK(tlearn_model_get_tensor(m, "fc.weight", w, (size_t)U * F));
        for (size_t b = 0; b < n; b++) {
            /* dlogits = (softmax - onehot) / n;  dY = dlogits W */
            double mx = logits[b * U], sum = 0, gl[U];
            for (int u = 1; u < U; u++)
                mx = logits[b * U + u] > mx ? logits[b * U + u] : mx;
            for (int u = 0; u < U; u++)
                sum += exp(logits[b * U + u] - mx);
            for (int u = 0; u < U; u++)
                gl[u] = (exp(logits[b * U + u] - mx) / sum - (u == labels[b])) / (double)n;
            for (int c = 0; c < PC; c++) {
                const float *plane = x + (b * PC + c) * PH * PW;
                const float *dplane = dx + (b * PC + c) * PH * PW;
                double want[PH * PW] = {0};
                for (int i = 0; i < OH; i++)
                    for (int j = 0; j < OW; j++) {
                        int f = (c * OH + i) * OW + j;
                        for (int u = 0; u < U; u++)
                            want[ref_argmax(g, plane, PH, PW, i, j)] += gl[u] * w[u * F + f];
                    }
                for (int i = 0; i < PH * PW; i++)
                    if (!(fabs(dplane[i] - want[i]) <= 1e-5 * fabs(want[i]) + 1e-7))
                        fail_msg("pool %zu, image %zu channel %d element %d: %.9g, reference "
                                 "%.9g", k, b, c, i, (double)dplane[i], want[i]);
            }
        }
        tlearn_model_destroy(&m);
    }
}

/* A few steps of workload w at @p threads; the weights of @p layer afterwards. */
static void run_steps(int w, int threads, int steps, const char *tensor, float *out, size_t len)
{
    bench_ctx c;
    OK(bench_setup(&c, w, threads));
    for (int s = 0; s < steps; s++)
        OK(bench_run_once(&c));
    OK(tlearn_model_get_tensor(c.m, tensor, out, len));
    bench_teardown(&c);
}

static void test_two_threads_match_one(void **state)
{
    (void)state;
    static float a[128 * 3136], b[128 * 3136];
    const int ws[] = {BW_CNN_FULL_B64, BW_CNN_PARTIAL_B64, BW_MLP_ADAM_B64};
    const char *tensors[] = {"conv2.weight", "fc1.weight", "fc2.weight"};
    const size_t lens[] = {64 * 32 * 9, 128 * 3136, 512 * 512};
    for (int i = 0; i < 3; i++) {
        run_steps(ws[i], 1, 3, tensors[i], a, lens[i]);
        run_steps(ws[i], 2, 3, tensors[i], b, lens[i]);
        assert_close(a, b, lens[i], 1e-6f, 1e-7f);
    }
}

/* The chunked frozen prefix (train_step) against the feature cache (train_step_from). */
static void test_chunked_frozen_prefix_matches_feature_cache(void **state)
{
    (void)state;
    bench_ctx c1, c2;
    OK(bench_setup(&c1, BW_CNN_PARTIAL_B64, 1));
    OK(bench_setup(&c2, BW_CNN_PARTIAL_B64, 1));
    static float feat[64 * 64 * 7 * 7], w1[128 * 3136], w2[128 * 3136];
    for (int s = 0; s < 3; s++) {
        const float *x = c1.x + (size_t)s * 64 * 784;
        const int32_t *y = c1.y + (size_t)s * 64;
        float l1, l2;
        OK(tlearn_model_train_step(c1.m, c1.o, x, y, 64, &l1));
        OK(tlearn_model_features(c2.m, "pool2", x, 64, feat, sizeof feat / sizeof feat[0]));
        OK(tlearn_model_train_step_from(c2.m, c2.o, "pool2", feat, y, 64, &l2));
        assert_close(&l1, &l2, 1, 1e-6f, 1e-7f);
    }
    OK(tlearn_model_get_tensor(c1.m, "fc1.weight", w1, 128 * 3136));
    OK(tlearn_model_get_tensor(c2.m, "fc1.weight", w2, 128 * 3136));
    assert_close(w1, w2, 128 * 3136, 1e-6f, 1e-7f);
    bench_teardown(&c1);
    bench_teardown(&c2);
}

/* Chunked features, on one thread and on two workers side by side, against one image at a
 * time (which also compares conv2's Winograd and im2col paths). */
static void test_chunked_features_match_one_at_a_time(void **state)
{
    (void)state;
    for (int threads = 1; threads <= 2; threads++) {
        bench_ctx c;
        OK(bench_setup(&c, BW_CNN_FEATURES_B256, threads));
        size_t fs = c.feat_size;
        float *one = malloc(fs * sizeof *one);
        assert_non_null(one);
        OK(bench_run_once(&c)); /* batch 0: 256 images into c.feat */
        for (size_t i = 0; i < c.batch; i += 37) {
            OK(tlearn_model_features(c.m, "pool2", c.x + i * c.in_size, 1, one, fs));
            /* one image runs conv2 by im2col, a chunk by Winograd: parity tolerances */
            assert_close(one, c.feat + i * fs, fs, 1e-5f, 1e-6f);
        }
        free(one);
        bench_teardown(&c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_maxpool_forward_matches_reference),
        cmocka_unit_test(test_maxpool_gradient_routes_to_reference_argmax),
        cmocka_unit_test(test_two_threads_match_one),
        cmocka_unit_test(test_chunked_frozen_prefix_matches_feature_cache),
        cmocka_unit_test(test_chunked_features_match_one_at_a_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
