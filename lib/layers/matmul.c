/* Product of two activations, as torch.matmul on equal batch dimensions: per example
 * a (..., M, K) times b (..., K, N) gives (..., M, N), one GEMM per leading index; with
 * transpose_b, b is (..., N, K) and the product is a b^T (attention scores q k^T).
 * Both inputs get gradients: da = dc op(b)^T, db = a^T dc (or dc^T a when transposed).
 * When one producer feeds both inputs (x x^T) the runtime passes accum, so the second
 * gradient adds to the first. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct matmul_cfg {
    int transpose_b;
} matmul_cfg;

static int matmul_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* ia: transpose_b */
    if (ni != 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "matmul '%s': expected 1 argument (transpose_b)", L->name);
    if (ia[0] != 0 && ia[0] != 1)
        return tl_fail(TLEARN_EINVAL, "matmul '%s': transpose_b is %d, must be 0 or 1", L->name,
                       ia[0]);
    if (L->ninputs != 2)
        return tl_fail(TLEARN_EINVAL, "matmul '%s': needs 2 inputs, has %d", L->name,
                       L->ninputs);
    matmul_cfg c = {ia[0]};
    return tl_layer_config(L, &c, sizeof c);
}

static void matmul_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const matmul_cfg *c = L->cfg;
    ia[0] = c->transpose_b;
    *ni = 1;
    *nf = 0;
}

/* GEMMs per example and their sizes. */
static size_t matmul_dims(const tl_layer *L, int *M, int *N, int *K)
{
    const matmul_cfg *c = L->cfg;
    tl_shape a = L->in[0], b = L->in[1];
    int r = a.rank;
    *M = a.d[r - 2];
    *K = a.d[r - 1];
    *N = c->transpose_b ? b.d[r - 2] : b.d[r - 1];
    return tl_shape_size(a) / ((size_t)*M * (size_t)*K);
}

static int matmul_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const matmul_cfg *c = L->cfg;
    tl_shape a = L->in[0], b = L->in[1];
    char sa[TL_SHAPE_STR], sb[TL_SHAPE_STR];
    int r = a.rank, ok = r >= 2 && b.rank == r;
    for (int i = 0; ok && i < r - 2; i++)
        ok = a.d[i] == b.d[i];
    /* the contracted axis: a's last against b's second last (last when transposed) */
    if (ok)
        ok = a.d[r - 1] == (c->transpose_b ? b.d[r - 1] : b.d[r - 2]);
    if (!ok)
        return tl_fail(TLEARN_ESHAPE, "matmul '%s': cannot multiply %s by %s%s (ranks 2 to 4, "
                       "equal leading axes, (.., M, K) x (.., K, N))", L->name,
                       tl_shape_str(a, sa), tl_shape_str(b, sb),
                       c->transpose_b ? " transposed" : "");
    int M, N, K;
    size_t batch = matmul_dims(L, &M, &N, &K);
    if ((double)batch * M * N > (double)INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "matmul '%s': output has over 2^31 elements", L->name);
    L->out = a;
    L->out.d[r - 1] = N;
    return TLEARN_OK;
}

static void matmul_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                           size_t n, float *saved)
{
    (void)saved;
    const matmul_cfg *c = L->cfg;
    int M, N, K;
    size_t count = n * matmul_dims(L, &M, &N, &K);
    tl_sgemm_batch(ex->blas, (int)count, 0, c->transpose_b, M, N, K, in[0], (size_t)M * K, in[1],
                   (size_t)K * N, 0.0f, out, (size_t)M * N);
}

static void matmul_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                            const float *out, const float *dout, float *const *din, int accum,
                            size_t n, const float *saved, float *const *pgrad)
{
    (void)out; (void)saved; (void)pgrad;
    const matmul_cfg *c = L->cfg;
    int M, N, K;
    int count = (int)(n * matmul_dims(L, &M, &N, &K));
    size_t sa = (size_t)M * K, sb = (size_t)K * N, sc = (size_t)M * N;
    if (din[0]) /* da (M, K) = dc (M, N) op(b)^T */
        tl_sgemm_batch(ex->blas, count, 0, !c->transpose_b, M, K, N, dout, sc, in[1], sb,
                       accum ? 1.0f : 0.0f, din[0], sa);
    if (!din[1])
        return;
    float beta = accum || din[1] == din[0] ? 1.0f : 0.0f;
    if (c->transpose_b) /* db (N, K) = dc^T a */
        tl_sgemm_batch(ex->blas, count, 1, 0, N, K, M, dout, sc, in[0], sa, beta, din[1], sb);
    else /* db (K, N) = a^T dc */
        tl_sgemm_batch(ex->blas, count, 1, 0, K, N, M, in[0], sa, dout, sc, beta, din[1], sb);
}

const tl_layer_ops tl_matmul_ops = {
    .kind = TLEARN_LAYER_MATMUL,
    .kind_name = "matmul",
    .bwd_ignores_output = 1,
    .configure = matmul_configure,
    .arguments = matmul_arguments,
    .setup = matmul_setup,
    .forward = matmul_forward,
    .backward = matmul_backward,
};
