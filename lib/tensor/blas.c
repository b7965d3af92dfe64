/* The one place that talks to BLIS. Each model owns a rntm_t so that its thread count is
 * its own; BLIS's global threading state is never touched. */
#include <blis.h>

#include "tensor.h"

struct tl_blas {
    rntm_t rntm;
};

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
    bli_rntm_set_num_threads(threads, &b->rntm);
}

void tl_sgemm(const tl_blas *b, int ta, int tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    /* BLIS takes general strides: row-major means row stride = ld, column stride = 1. */
    rntm_t rntm = b->rntm; /* BLIS writes into the rntm it is given; keep ours pristine */
    bli_sgemm_ex(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 M, N, K, &alpha, (float *)A, lda, 1, (float *)B, ldb, 1, &beta, C, ldc, 1, NULL,
                 &rntm);
}
