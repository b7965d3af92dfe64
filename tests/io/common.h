/* Shared helpers of the io tests: small deterministic models and data, and comparisons. */
#ifndef TL_IO_TEST_COMMON_H
#define TL_IO_TEST_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlearn/tlearn.h"

#define CHECK_OK(call)                                                                        \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        if (rc_ != TLEARN_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s -> %d (%s)\n", __FILE__, __LINE__, #call, rc_,        \
                    tlearn_errmsg());                                                         \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

/* Input (in, 1, 1) -> dense fc1 (hidden) -> relu -> dense fc2 (out). */
static inline tlearn_model *io_make_mlp(int in, int hidden, int out, uint64_t seed)
{
    tlearn_model *m;
    CHECK_OK(tlearn_model_create(&m, in, 1, 1));
    CHECK_OK(tlearn_model_set_seed(m, seed));
    CHECK_OK(tlearn_model_add_dense(m, "fc1", hidden));
    CHECK_OK(tlearn_model_add_activation(m, "act1", TLEARN_ACT_RELU, 0.0f));
    CHECK_OK(tlearn_model_add_dense(m, "fc2", out));
    return m;
}

/* Deterministic inputs in [-1, 1) and labels from a small LCG. */
static inline void io_make_data(float *x, int32_t *y, size_t n, int in, int classes,
                                uint32_t salt)
{
    uint32_t s = 2463534242u ^ salt;
    for (size_t i = 0; i < n * (size_t)in; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        y[i] = (int32_t)((s >> 16) % (uint32_t)classes);
    }
}

/* Same layers, names, kinds and every tensor equal bit for bit. Returns 1 when equal. */
static inline int io_models_equal(const tlearn_model *a, const tlearn_model *b)
{
    int na, nb, ta, tb;
    CHECK_OK(tlearn_model_layer_count(a, &na));
    CHECK_OK(tlearn_model_layer_count(b, &nb));
    CHECK_OK(tlearn_model_tensor_count(a, &ta));
    CHECK_OK(tlearn_model_tensor_count(b, &tb));
    if (na != nb || ta != tb)
        return 0;
    for (int i = 0; i < na; i++) {
        const char *x, *y;
        int ka, kb;
        CHECK_OK(tlearn_model_layer_name(a, i, &x));
        CHECK_OK(tlearn_model_layer_name(b, i, &y));
        CHECK_OK(tlearn_model_layer_kind(a, i, &ka));
        CHECK_OK(tlearn_model_layer_kind(b, i, &kb));
        if (strcmp(x, y) != 0 || ka != kb)
            return 0;
    }
    for (int i = 0; i < ta; i++) {
        const char *name;
        size_t n;
        CHECK_OK(tlearn_model_tensor_info(a, i, &name, &n, NULL, NULL));
        char copy[160];
        snprintf(copy, sizeof copy, "%s", name);
        float *va = malloc(n * sizeof *va), *vb = malloc(n * sizeof *vb);
        CHECK_OK(tlearn_model_get_tensor(a, copy, va, n));
        int rc = tlearn_model_get_tensor(b, copy, vb, n);
        int same = rc == TLEARN_OK && memcmp(va, vb, n * sizeof *va) == 0;
        free(va);
        free(vb);
        if (!same)
            return 0;
    }
    return 1;
}

/* A whole file into malloc'ed memory (free()), and bytes to a file; abort on failure. */
static inline unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    long n = -1;
    if (f && fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    unsigned char *p = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!p || fseek(f, 0, SEEK_SET) != 0 || fread(p, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read '%s'\n", path);
        abort();
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static inline void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write '%s'\n", path);
        abort();
    }
}

#endif
