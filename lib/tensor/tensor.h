/* fp32 tensors and the GEMM wrapper. blas.c is the only file that includes blis.h. */
#ifndef TL_TENSOR_H
#define TL_TENSOR_H

#include <stddef.h>

#include "../core/core.h"

/* A named-shape view of fp32 data. Parameters own their data; workspace views do not. */
typedef struct tl_tensor {
    float *data;
    size_t numel;
    int ndim;
    int dims[4];
} tl_tensor;

/* Allocate a zeroed, 64-byte aligned tensor of the given shape. Returns status. */
int tl_tensor_alloc(tl_tensor *t, int ndim, const int *dims);
void tl_tensor_free(tl_tensor *t);

/* Per-model GEMM context: its own thread count, never BLIS's global setting. */
typedef struct tl_blas tl_blas;
tl_blas *tl_blas_create(int threads);
void tl_blas_destroy(tl_blas *b);
void tl_blas_set_threads(tl_blas *b, int threads);

/* Row-major C = alpha * op(A) * op(B) + beta * C, op = transpose when ta/tb is set.
 * A is M x K (K x M when ta), B is K x N (N x K when tb); lda/ldb/ldc are row strides.
 * Callers guarantee valid sizes: BLIS aborts on bad arguments. */
void tl_sgemm(const tl_blas *b, int ta, int tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
