/* The one place that talks to BLIS. Each model owns a rntm_t so that its thread count is
 * its own; BLIS's global threading state is never touched. */
#include <blis.h>
#include <stdatomic.h>

#include "tensor.h"

/* GEMM FLOPs (2*M*N*K per call) done by this process: tests prove that frozen layers cost
 * nothing in backward. Relaxed atomic: models may run on several threads at once. */
static _Atomic uint64_t gemm_flops;

uint64_t tl_sgemm_flops(void)
{
    return atomic_load_explicit(&gemm_flops, memory_order_relaxed);
}

struct tl_blas {
    rntm_t rntm;
    int threads; /* also the num_threads() of the model's OpenMP loops */
};

int tl_blas_threads(const tl_blas *b)
{
    return b->threads;
}

tl_blas *tl_blas_create(int threads)
{
    tl_blas *b = tl_alloc_zero(sizeof *b);
    if (!b)
        return NULL;
    bli_rntm_init(&b->rntm);
    tl_blas_set_threads(b, threads);
    return b;
}

void tl_blas_destroy(tl_blas *b)
{
    tl_free(b);
}

void tl_blas_set_threads(tl_blas *b, int threads)
{
    b->threads = threads;
    bli_rntm_set_num_threads(threads, &b->rntm);
}

static void gemm(rntm_t rntm, int threads, int ta, int tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    /* BLIS takes general strides: row-major means row stride = ld, column stride = 1. BLIS
     * writes into the rntm it is given, hence the copy. */
    atomic_fetch_add_explicit(&gemm_flops, 2u * (uint64_t)M * (uint64_t)N * (uint64_t)K,
                              memory_order_relaxed);
    bli_rntm_set_num_threads(threads, &rntm);
    bli_sgemm_ex(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 M, N, K, &alpha, (float *)A, lda, 1, (float *)B, ldb, 1, &beta, C, ldc, 1, NULL,
                 &rntm);
}

void tl_sgemm(const tl_blas *b, int ta, int tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    /* Below about 4 MFLOP a GEMM takes tens of microseconds: waking threads and their
     * (spinning) barriers cost more than they save, badly so on a busy machine. */
    int threads = b->threads > 1 && 2.0 * M * N * K < 4e6 ? 1 : b->threads;
    gemm(b->rntm, threads, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tl_sgemm_batch(const tl_blas *b, int count, int ta, int tb, int M, int N, int K,
                    const float *A, size_t sa, const float *B, size_t sb, float beta, float *C,
                    size_t sc)
{
    int nt = b->threads < count ? b->threads : count;
    int lda = ta ? M : K, ldb = tb ? K : N;
    if (nt <= 1) {
        for (int i = 0; i < count; i++)
            tl_sgemm(b, ta, tb, M, N, K, 1.0f, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc,
                     N);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < count; i++)
        gemm(b->rntm, 1, ta, tb, M, N, K, 1.0f, A + i * sa, lda, B + i * sb, ldb, beta,
             C + i * sc, N);
}
