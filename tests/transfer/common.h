/* Shared helpers of the transfer-learning tests (cmocka, internal archive). */
#ifndef TESTS_TRANSFER_COMMON_H
#define TESTS_TRANSFER_COMMON_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "train/train.h"

#define OK(call) assert_int_equal((call), TLEARN_OK)
/* A call fails with @p code and its message contains @p text. */
#define FAILS(call, code, text)                                                               \
    do {                                                                                      \
        assert_int_equal((call), (code));                                                     \
        if (!strstr(tlearn_errmsg(), (text)))                                                 \
            fail_msg("message '%s' lacks '%s'", tlearn_errmsg(), (text));                     \
    } while (0)

/* Dense MLP: in -> fc1(h1) relu1 -> fc2(h2) relu2 -> fc3(out). */
static inline tlearn_model *mlp(int in, int h1, int h2, int out, uint64_t seed)
{
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, in, 1, 1));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_dense(m, "fc1", h1));
    OK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", h2));
    OK(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc3", out));
    return m;
}

/* Deterministic pseudo-random data in [-1, 1) and labels in [0, classes). */
static inline void fill_data(float *x, size_t nx, int32_t *y, size_t ny, int classes,
                             uint64_t seed)
{
    tl_rng r;
    tl_rng_seed(&r, seed);
    for (size_t i = 0; i < nx; i++)
        x[i] = tl_rng_uniform_range(&r, -1.0f, 1.0f);
    for (size_t i = 0; y && i < ny; i++)
        y[i] = (int32_t)tl_rng_below(&r, (uint64_t)classes);
}

/* A copy of tensor @p name (caller frees). */
static inline float *get_copy(const tlearn_model *m, const char *name, size_t *numel)
{
    int l, p;
    assert_int_equal(tl_model_find_tensor(m, name, &l, &p), 0);
    size_t n = m->layers[l]->param[p].t.numel;
    float *v = malloc(sizeof(float) * n);
    assert_non_null(v);
    OK(tlearn_model_get_tensor(m, name, v, n));
    if (numel)
        *numel = n;
    return v;
}

#endif
