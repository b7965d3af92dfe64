/* Exact cosine similarity against a stored set: scores by GEMM in blocks of queries and
 * keys, top-k kept per query in a small heap, so memory stays at one block of scores
 * however large the set. */
#include <math.h>
#include <string.h>

#include "fewshot.h"

#define QBLOCK 256
#define KBLOCK 4096

/* 1 / max(||row||, eps) of @p rows rows of length d. */
static void inv_norms(const float *x, size_t rows, int d, float *inv)
{
    tl_row_norms(x, rows, (size_t)d, inv);
    for (size_t i = 0; i < rows; i++)
        inv[i] = 1.0f / inv[i];
}

static int check_sets(const char *fn, const float *q, size_t nq, const float *keys,
                      size_t nkeys, int dim, int threads)
{
    if (!q || !keys)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !q ? "queries" : "keys");
    if (nq == 0 || nkeys == 0 || dim < 1 || nkeys > INT32_MAX ||
        nq > (size_t)INT32_MAX / (size_t)dim || nkeys > (size_t)INT32_MAX / (size_t)dim)
        return tl_fail(TLEARN_EINVAL, "%s: nq %zu, nkeys %zu, dim %d: each must be >= 1 and "
                       "a set at most 2^31 floats", fn, nq, nkeys, dim);
    if (threads < 1 || threads > 1024)
        return tl_fail(TLEARN_EINVAL, "%s: threads is %d, must be 1..1024", fn, threads);
    int rc = tl_check_values(TLEARN_EINVAL, fn, "queries", q, nq * (size_t)dim, 0);
    return rc ? rc : tl_check_values(TLEARN_EINVAL, fn, "keys", keys, nkeys * (size_t)dim, 0);
}

typedef struct sim_ctx {
    tl_blas *blas;
    float *qinv, *kinv, *block;
} sim_ctx;

static void sim_free(sim_ctx *c)
{
    tl_blas_destroy(c->blas);
    tl_free(c->qinv);
    tl_free(c->kinv);
    tl_free(c->block);
}

static int sim_init(const char *fn, sim_ctx *c, const float *q, size_t nq, const float *keys,
                    size_t nkeys, int dim, int threads, size_t block)
{
    memset(c, 0, sizeof *c);
    c->blas = tl_blas_create(threads);
    c->qinv = tl_alloc_array(nq, sizeof(float));
    c->kinv = tl_alloc_array(nkeys, sizeof(float));
    c->block = block ? tl_alloc_array(block, sizeof(float)) : NULL;
    if (!c->blas || !c->qinv || !c->kinv || (block && !c->block)) {
        sim_free(c);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    inv_norms(q, nq, dim, c->qinv);
    inv_norms(keys, nkeys, dim, c->kinv);
    return TLEARN_OK;
}

/* Cosines of queries [q0, q0+qb) and keys [k0, k0+kb) into s (qb x ld). */
static void cosines(const sim_ctx *c, const float *q, const float *keys, int dim, size_t q0,
                    size_t qb, size_t k0, size_t kb, float *s, size_t ld)
{
    tl_sgemm(c->blas, 0, 1, (int)qb, (int)kb, dim, 1.0f, q + q0 * (size_t)dim, dim,
             keys + k0 * (size_t)dim, dim, 0.0f, s, (int)ld);
    for (size_t i = 0; i < qb; i++) {
        float *r = s + i * ld, a = c->qinv[q0 + i];
        const float *b = c->kinv + k0;
        for (size_t j = 0; j < kb; j++)
            r[j] *= a * b[j];
    }
}

int tlearn_similarity_scores(const float *queries, size_t nq, const float *keys, size_t nkeys,
                             int dim, int threads, float *out, size_t out_len)
{
    static const char fn[] = "tlearn_similarity_scores";
    int rc = check_sets(fn, queries, nq, keys, nkeys, dim, threads);
    if (rc)
        return rc;
    if (!out || nq > SIZE_MAX / nkeys || out_len != nq * nkeys)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL or out_len %zu is not nq x nkeys = "
                       "%zu x %zu", fn, out_len, nq, nkeys);
    sim_ctx c;
    rc = sim_init(fn, &c, queries, nq, keys, nkeys, dim, threads, 0);
    if (rc)
        return rc;
    for (size_t q0 = 0; q0 < nq; q0 += QBLOCK)
        for (size_t k0 = 0; k0 < nkeys; k0 += KBLOCK) {
            size_t qb = nq - q0 < QBLOCK ? nq - q0 : QBLOCK;
            size_t kb = nkeys - k0 < KBLOCK ? nkeys - k0 : KBLOCK;
            cosines(&c, queries, keys, dim, q0, qb, k0, kb, out + q0 * nkeys + k0, nkeys);
        }
    sim_free(&c);
    return TLEARN_OK;
}

/* The heap's order: a is worse than b (lower score; on equal scores the higher index). */
static int worse(float sa, int32_t ia, float sb, int32_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}

static void swap_entries(float *s, int32_t *id, int a, int b)
{
    float ts = s[a];
    int32_t ti = id[a];
    s[a] = s[b];
    id[a] = id[b];
    s[b] = ts;
    id[b] = ti;
}

/* Min-heap of the best k seen (worst at the root): restore from position i down. */
static void sift_down(float *s, int32_t *id, int size, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < size && worse(s[l], id[l], s[w], id[w]))
            w = l;
        if (r < size && worse(s[r], id[r], s[w], id[w]))
            w = r;
        if (w == i)
            return;
        swap_entries(s, id, i, w);
        i = w;
    }
}

static void heap_offer(float *s, int32_t *id, int *size, int k, float v, int32_t j)
{
    if (*size < k) { /* sift up */
        int i = (*size)++;
        s[i] = v;
        id[i] = j;
        while (i > 0) {
            int p = (i - 1) / 2;
            if (!worse(s[i], id[i], s[p], id[p]))
                break;
            swap_entries(s, id, i, p);
            i = p;
        }
    } else if (worse(s[0], id[0], v, j)) {
        s[0] = v;
        id[0] = j;
        sift_down(s, id, k, 0);
    }
}

int tlearn_similarity_topk(const float *queries, size_t nq, const float *keys, size_t nkeys,
                           int dim, int k, int threads, int32_t *index, float *scores)
{
    static const char fn[] = "tlearn_similarity_topk";
    int rc = check_sets(fn, queries, nq, keys, nkeys, dim, threads);
    if (rc)
        return rc;
    if (!index)
        return tl_fail(TLEARN_EINVAL, "%s: index is NULL", fn);
    if (k < 1 || (size_t)k > nkeys)
        return tl_fail(TLEARN_EINVAL, "%s: k is %d, must be 1..nkeys (%zu)", fn, k, nkeys);
    size_t kb_max = nkeys < KBLOCK ? nkeys : KBLOCK;
    sim_ctx c;
    rc = sim_init(fn, &c, queries, nq, keys, nkeys, dim, threads, QBLOCK * kb_max);
    float *hs = tl_alloc_array((size_t)QBLOCK * (size_t)k, sizeof(float));
    if (!rc && !hs) {
        sim_free(&c);
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    if (rc) {
        tl_free(hs);
        return rc;
    }
    int size[QBLOCK];
    for (size_t q0 = 0; q0 < nq; q0 += QBLOCK) {
        size_t qb = nq - q0 < QBLOCK ? nq - q0 : QBLOCK;
        memset(size, 0, sizeof size);
        for (size_t k0 = 0; k0 < nkeys; k0 += KBLOCK) {
            size_t kb = nkeys - k0 < KBLOCK ? nkeys - k0 : KBLOCK;
            cosines(&c, queries, keys, dim, q0, qb, k0, kb, c.block, kb);
            int nt = tl_par_threads(threads, qb * kb);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (size_t i = 0; i < qb; i++) {
                const float *r = c.block + i * kb;
                float *s = hs + i * (size_t)k;
                int32_t *id = index + (q0 + i) * (size_t)k;
                for (size_t j = 0; j < kb; j++)
                    heap_offer(s, id, &size[i], k, r[j], (int32_t)(k0 + j));
            }
        }
        /* Heap sort: the worst goes last each time, so each row ends best first. */
        for (size_t i = 0; i < qb; i++) {
            float *s = hs + i * (size_t)k;
            int32_t *id = index + (q0 + i) * (size_t)k;
            for (int end = k - 1; end > 0; end--) {
                swap_entries(s, id, 0, end);
                sift_down(s, id, end, 0);
            }
            if (scores)
                memcpy(scores + (q0 + i) * (size_t)k, s, sizeof(float) * (size_t)k);
        }
    }
    tl_free(hs);
    sim_free(&c);
    return TLEARN_OK;
}
