/* lib/core and lib/tensor: allocation, overflow checks, the random generator, glob
 * patterns, error messages, tensors, and the GEMM wrapper against a naive product. */
#include "common.h"

#include "core/core.h"
#include "tensor/tensor.h"

static void test_alloc(void **state)
{
    (void)state;
    size_t sizes[] = {1, 3, 63, 64, 65, 1000, 123457};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = tl_alloc_zero(sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 64, 0);
        for (size_t k = 0; k < sizes[i]; k++)
            assert_int_equal(p[k], 0);
        tl_free(p);
    }
    uint64_t before = tl_alloc_calls();
    void *q = tl_alloc(0); /* a valid pointer, counted */
    assert_non_null(q);
    tl_free(q);
    assert_int_equal(tl_alloc_calls(), before + 1);
    assert_null(tl_alloc_array(SIZE_MAX / 2, 4));
    assert_null(tl_alloc(SIZE_MAX - 10));
    size_t out = 7;
    assert_int_equal(tl_mul_size(SIZE_MAX / 2 + 1, 2, &out), 0);
    assert_int_equal(tl_mul_size(123, 0, &out), 1);
    assert_int_equal(out, 0);
    assert_int_equal(tl_mul_size(1u << 20, 1u << 20, &out), 1);
    assert_int_equal(out, (size_t)1 << 40);
    char *d = tl_strdup("layer.weight");
    assert_string_equal(d, "layer.weight");
    tl_free(d);
    tl_free(NULL);
}

static void test_rng_core(void **state)
{
    (void)state;
    tl_rng a, b, c;
    tl_rng_seed(&a, 42);
    tl_rng_seed(&b, 42);
    tl_rng_seed(&c, 43);
    int differs = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = tl_rng_next(&a);
        assert_true(x == tl_rng_next(&b));
        differs |= x != tl_rng_next(&c);
    }
    assert_true(differs);
    /* Uniform floats lie in [lo, hi); below(b) in [0, b). */
    double mean = 0;
    for (int i = 0; i < 100000; i++) {
        float u = tl_rng_uniform(&a);
        assert_true(u >= 0.0f && u < 1.0f);
        float v = tl_rng_uniform_range(&a, -2.0f, 3.0f);
        assert_true(v >= -2.0f && v < 3.0f);
        mean += u;
    }
    mean /= 100000;
    assert_true(fabs(mean - 0.5) < 0.005); /* sd of the mean: 0.29/sqrt(1e5) = 0.0009 */
    assert_int_equal(tl_rng_below(&a, 0), 0);
    assert_int_equal(tl_rng_below(&a, 1), 0);
    /* Chi-square over 10 bins of 100000 draws: 9 degrees of freedom, the 99.9th
     * percentile is 27.9 (a fixed seed makes this deterministic). */
    int bins[10] = {0};
    for (int i = 0; i < 100000; i++) {
        uint64_t k = tl_rng_below(&a, 10);
        assert_true(k < 10);
        bins[k]++;
    }
    double chi = 0;
    for (int k = 0; k < 10; k++)
        chi += (bins[k] - 10000.0) * (bins[k] - 10000.0) / 10000.0;
    assert_true(chi < 27.9);
    uint64_t big = (UINT64_MAX / 3) * 2; /* a bound where a plain modulo is biased */
    for (int i = 0; i < 1000; i++)
        assert_true(tl_rng_below(&a, big) < big);
}

static void test_glob(void **state)
{
    (void)state;
    static const struct {
        const char *pat, *name;
        int match;
    } cases[] = {
        {"*", "anything", 1},          {"*", "", 1},
        {"fc?", "fc1", 1},             {"fc?", "fc12", 0},
        {"fc*", "fc", 1},              {"fc*", "conv1", 0},
        {"block2.*", "block2.conv1", 1}, {"block2.*", "block3.conv1", 0},
        {"*.bias", "fc1.bias", 1},     {"*.bias", "fc1.weight", 0},
        {"a*b*c", "axxbyyc", 1},       {"a*b*c", "axxbyy", 0},
        {"a*b", "ab", 1},              {"a*b", "abab", 1},
        {"a*b", "aba", 0},             {"[abc]x", "bx", 1},
        {"[abc]x", "dx", 0},           {"[!a]x", "bx", 1},
        {"[!a]x", "ax", 0},            {"[a-c]1", "c1", 1},
        {"[a-c]1", "d1", 0},           {"conv[0-9]", "conv7", 1},
        {"conv[0-9]", "conva", 0},     {"[ab", "[ab", 1}, /* unterminated: literal */
        {"exact", "exact", 1},         {"exact", "exac", 0},
        {"", "", 1},                   {"", "x", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (tl_glob_match(cases[i].pat, cases[i].name) != cases[i].match)
            fail_msg("glob '%s' on '%s': expected %d", cases[i].pat, cases[i].name,
                     cases[i].match);
}

static void test_messages(void **state)
{
    (void)state;
    assert_int_equal(tl_fail(TLEARN_ESHAPE, "%s: n is %d", "fn", 3), TLEARN_ESHAPE);
    assert_string_equal(tlearn_errmsg(), "fn: n is 3");
    assert_int_equal(tl_fail_prefix(TLEARN_EIO, "section '%s': ", "params"), TLEARN_EIO);
    assert_string_equal(tlearn_errmsg(), "section 'params': fn: n is 3");
    tl_clear_error();
    assert_string_equal(tlearn_errmsg(), "");
    /* Long messages are truncated, never overflow. */
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    tl_fail(TLEARN_EINVAL, "%s", big);
    size_t n = strlen(tlearn_errmsg());
    assert_true(n > 500 && n < sizeof big);
    tl_fail_prefix(TLEARN_EINVAL, "%s", big);
    assert_true(strlen(tlearn_errmsg()) == n);
    tl_fail(TLEARN_EINVAL, "short");
    tl_fail_prefix(TLEARN_EINVAL, "%s", big); /* the prefix alone fills the buffer */
    assert_true(strlen(tlearn_errmsg()) == n);
}

static void test_tensor(void **state)
{
    (void)state;
    tl_tensor t;
    int dims[4] = {2, 3, 4, 5};
    OK(tl_tensor_alloc(&t, 4, dims));
    assert_int_equal(t.numel, 120);
    assert_int_equal(t.ndim, 4);
    assert_int_equal((uintptr_t)t.data % 64, 0);
    for (size_t i = 0; i < t.numel; i++)
        assert_true(t.data[i] == 0.0f);
    tl_tensor_free(&t);
    assert_null(t.data);
    assert_int_equal(tl_tensor_alloc(&t, 0, dims), TLEARN_EINVAL);
    assert_int_equal(tl_tensor_alloc(&t, 5, dims), TLEARN_EINVAL);
    int zero[2] = {3, 0};
    assert_int_equal(tl_tensor_alloc(&t, 2, zero), TLEARN_EINVAL);
    assert_null(t.data);
}

/* C = alpha op(A) op(B) + beta C on strided row-major storage, all four transpose cases. */
static void test_sgemm(void **state)
{
    (void)state;
    enum { M = 7, N = 5, K = 9, PAD = 3 };
    tl_blas *b = tl_blas_create(1);
    assert_non_null(b);
    test_rng r = {77};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int arows = ta ? K : M, acols = ta ? M : K;
            int brows = tb ? N : K, bcols = tb ? K : N;
            int lda = acols + PAD, ldb = bcols + PAD, ldc = N + PAD;
            float A[K * (M + PAD) + M * (K + PAD)], B[K * (N + PAD) + N * (K + PAD)];
            float C[M * (N + PAD)], C0[M * (N + PAD)];
            test_fill(&r, A, (size_t)arows * lda, -1, 1);
            test_fill(&r, B, (size_t)brows * ldb, -1, 1);
            test_fill(&r, C0, (size_t)M * ldc, -1, 1);
            memcpy(C, C0, sizeof C);
            const float alpha = 0.75f, beta = -0.5f;
            tl_sgemm(b, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            for (int i = 0; i < M; i++) {
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++) {
                        double a = ta ? A[k * lda + i] : A[i * lda + k];
                        double bb = tb ? B[j * ldb + k] : B[k * ldb + j];
                        s += a * bb;
                    }
                    double want = alpha * s + beta * (double)C0[i * ldc + j];
                    if (!test_close(C[i * ldc + j], want, 1e-5, 1e-6))
                        fail_msg("ta=%d tb=%d C[%d][%d] = %.7g, expected %.7g", ta, tb, i, j,
                                 (double)C[i * ldc + j], want);
                }
                for (int j = N; j < ldc; j++) /* padding between rows is untouched */
                    assert_true(C[i * ldc + j] == C0[i * ldc + j]);
            }
        }
    /* beta = 0 ignores what C held (even NaN), as dense backward relies on. */
    float A[2 * 2] = {1, 2, 3, 4}, B[2 * 2] = {1, 0, 0, 1}, C[2 * 2] = {NAN, NAN, NAN, NAN};
    tl_sgemm(b, 0, 0, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2);
    for (int i = 0; i < 4; i++)
        assert_true(C[i] == A[i]);
    tl_blas_destroy(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc),    cmocka_unit_test(test_rng_core),
        cmocka_unit_test(test_glob),     cmocka_unit_test(test_messages),
        cmocka_unit_test(test_tensor),   cmocka_unit_test(test_sgemm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
