/* fp32 tensors and the GEMM wrapper. blas.c is the only file that includes blis.h. */
#ifndef TL_TENSOR_H
#define TL_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../core/core.h"

/* Data held by several models (tlearn_model_create_shared): reference-counted, never
 * written while shared. */
typedef struct tl_share tl_share;

/* A named-shape view of fp32 data. Parameters own their data (or, with `share` set, one
 * reference to shared data); workspace views do not. */
typedef struct tl_tensor {
    float *data;
    size_t numel;
    int ndim;
    int dims[4];
    tl_share *share; /* NULL: data is this tensor's own */
} tl_tensor;

/* Allocate a zeroed, 64-byte aligned tensor of the given shape. Returns status. */
int tl_tensor_alloc(tl_tensor *t, int ndim, const int *dims);
/* Frees the data, or drops this tensor's reference to shared data (the last frees it). */
void tl_tensor_free(tl_tensor *t);
/* Make @p dst (empty) a read-only view of @p src's data, counted: @p src's data becomes
 * shared if it was not. Thread-safe against other holders of the same data. ENOMEM. */
int tl_tensor_share(tl_tensor *dst, tl_tensor *src);
/* As tl_tensor_share, a view of @p src's elements from @p offset on, of shape @p dims
 * (which must fit: the caller checks). */
int tl_tensor_share_view(tl_tensor *dst, tl_tensor *src, size_t offset, int ndim,
                         const int *dims);
/* Before writing @p t: give it its own copy if its data is shared (copy on write); the
 * last holder just takes the data back. ENOMEM leaves @p t as it was. */
int tl_tensor_own(tl_tensor *t);
/* 1 when another tensor (of another model) holds @p t's data too. */
int tl_tensor_is_shared(const tl_tensor *t);

/* ---- memory-bound loops ---- */
/* Threads worth waking for a memory-bound loop over @p n floats: below about 32K floats
 * waking the other threads costs more than they save. */
#define TL_PAR_MIN_FLOATS ((size_t)1 << 15)
static inline int tl_par_threads(int threads, size_t n)
{
    return threads > 1 && n >= TL_PAR_MIN_FLOATS ? threads : 1;
}
/* Part @p t of @p nt of [0, n): contiguous, starting on a 64-byte boundary of the range. */
static inline void tl_par_range(size_t n, int t, int nt, size_t *lo, size_t *hi)
{
    size_t per = (n + (size_t)nt - 1) / (size_t)nt;
    per = (per + 15) & ~(size_t)15;
    *lo = per * (size_t)t < n ? per * (size_t)t : n;
    *hi = *lo + per < n ? *lo + per : n;
}
/* 1 when v is an infinity or NaN (all exponent bits set), else 0: integer operations on
 * the bits, so loops that OR it together vectorise. */
static inline uint32_t tl_not_finite(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (int32_t)(u & 0x7fffffffu) > 0x7f7fffff;
}

/* Sum of squares of x[0..n) in double, with up to @p threads threads. The partial sums are
 * combined in a fixed order, so the result does not depend on scheduling. */
double tl_sumsq(const float *x, size_t n, int threads);
/* max |x[i]| over x[0..n) (0 when n is 0); +Inf or NaN when some element is not finite.
 * A quarter of tl_sumsq's work. */
float tl_max_abs(const float *x, size_t n, int threads);

/* Per-model GEMM context: its own thread count, never BLIS's global setting. */
typedef struct tl_blas tl_blas;
/* The one-time choice of BLIS's sub-configuration (blas.c; tlearn_blas_info()). Runs
 * before BLIS is first used: tl_blas_create calls it. Thread-safe. */
void tl_blas_init(void);
tl_blas *tl_blas_create(int threads);
void tl_blas_destroy(tl_blas *b);
void tl_blas_set_threads(tl_blas *b, int threads);
/* The thread count: layers use it for their parallel loops (OpenMP num_threads()). */
int tl_blas_threads(const tl_blas *b);

/* Row-major C = alpha * op(A) * op(B) + beta * C, op = transpose when ta/tb is set.
 * A is M x K (K x M when ta), B is K x N (N x K when tb); lda/ldb/ldc are row strides.
 * Callers guarantee valid sizes: BLIS aborts on bad arguments. */
void tl_sgemm(const tl_blas *b, int ta, int tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* @p count independent GEMMs C = op(A) op(B) + beta C of one shape (dense, as tl_sgemm
 * with lda, ldb, ldc the row lengths), matrix i at A + i*sa, B + i*sb, C + i*sc: on several
 * threads each GEMM runs whole on one of them (no barriers inside a GEMM). */
void tl_sgemm_batch(const tl_blas *b, int count, int ta, int tb, int M, int N, int K,
                    const float *A, size_t sa, const float *B, size_t sb, float beta, float *C,
                    size_t sc);
/* GEMM FLOPs (2*M*N*K per tl_sgemm call) done by the whole process so far; for tests. */
uint64_t tl_sgemm_flops(void);

#endif
