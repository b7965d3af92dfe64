/* The singular value decomposition the transferability scores need, without LAPACK: the
 * eigenvectors of the smaller Gram matrix (F F^T when n <= d, else F^T F) by cyclic Jacobi
 * rotations in double. Cost about 10 min(n, d)^3 flops for the rotations plus n d min(n, d)
 * for the Gram matrix: a fraction of a second up to min(n, d) of a few hundred. */
#include <math.h>
#include <string.h>

#include "fewshot.h"

/* Eigen-decomposition of the symmetric k x k matrix a (destroyed): eigenvalues on the
 * diagonal of a, eigenvectors in the columns of v. */
static void jacobi(double *a, double *v, size_t k)
{
    for (size_t i = 0; i < k; i++)
        for (size_t j = 0; j < k; j++)
            v[i * k + j] = i == j;
    double diag = 0.0;
    for (size_t i = 0; i < k; i++)
        diag += a[i * k + i] * a[i * k + i];
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0;
        for (size_t p = 0; p < k; p++)
            for (size_t q = p + 1; q < k; q++)
                off += a[p * k + q] * a[p * k + q];
        if (off <= 1e-30 * diag || off == 0.0)
            return;
        for (size_t p = 0; p < k; p++)
            for (size_t q = p + 1; q < k; q++) {
                double apq = a[p * k + q];
                if (apq == 0.0)
                    continue;
                /* the rotation that zeroes a_pq: t = tan, the smaller root */
                double theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (size_t r = 0; r < k; r++) { /* columns p, q: A J */
                    double x = a[r * k + p], y = a[r * k + q];
                    a[r * k + p] = c * x - s * y;
                    a[r * k + q] = s * x + c * y;
                }
                for (size_t r = 0; r < k; r++) { /* rows p, q: J^T A */
                    double x = a[p * k + r], y = a[q * k + r];
                    a[p * k + r] = c * x - s * y;
                    a[q * k + r] = s * x + c * y;
                }
                for (size_t r = 0; r < k; r++) {
                    double x = v[r * k + p], y = v[r * k + q];
                    v[r * k + p] = c * x - s * y;
                    v[r * k + q] = s * x + c * y;
                }
            }
    }
}

int tl_fs_svd(const char *fn, const double *f, size_t n, size_t d, double **u, double **lam,
              size_t *r)
{
    size_t k = n <= d ? n : d;
    double *g = tl_alloc_array(k * k, sizeof(double));
    double *v = tl_alloc_array(k * k, sizeof(double));
    size_t *order = tl_alloc_array(k, sizeof(size_t));
    *u = tl_alloc_array(n * k, sizeof(double));
    *lam = tl_alloc_array(k, sizeof(double));
    if (!g || !v || !order || !*u || !*lam) {
        tl_free(g);
        tl_free(v);
        tl_free(order);
        tl_free(*u);
        tl_free(*lam);
        *u = *lam = NULL;
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for a %zu x %zu Gram matrix", fn, k, k);
    }
    if (n <= d) { /* F F^T: rows against rows */
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j <= i; j++) {
                const double *a = f + i * d, *b = f + j * d;
                double s = 0.0;
                for (size_t e = 0; e < d; e++)
                    s += a[e] * b[e];
                g[i * k + j] = g[j * k + i] = s;
            }
    } else { /* F^T F, accumulated row by row */
        for (size_t e = 0; e < n; e++) {
            const double *a = f + e * d;
            for (size_t i = 0; i < d; i++)
                for (size_t j = 0; j <= i; j++)
                    g[i * k + j] += a[i] * a[j];
        }
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < i; j++)
                g[j * k + i] = g[i * k + j];
    }
    jacobi(g, v, k);
    /* Largest first; eigenvalues below 1e-10 of the largest count as 0 (rank cutoff). */
    for (size_t i = 0; i < k; i++)
        order[i] = i;
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && g[order[j] * k + order[j]] > g[order[j - 1] * k + order[j - 1]];
             j--) {
            size_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    double top = g[order[0] * k + order[0]];
    size_t rank = 0;
    while (rank < k && top > 0 && g[order[rank] * k + order[rank]] > 1e-10 * top)
        rank++;
    for (size_t j = 0; j < rank; j++) {
        size_t col = order[j];
        double l = g[col * k + col];
        (*lam)[j] = l;
        if (n <= d) {
            for (size_t i = 0; i < n; i++)
                (*u)[i * rank + j] = v[i * k + col];
        } else { /* u = F v / sqrt(lambda) */
            double inv = 1.0 / sqrt(l);
            for (size_t i = 0; i < n; i++) {
                double s = 0.0;
                for (size_t e = 0; e < d; e++)
                    s += f[i * d + e] * v[e * k + col];
                (*u)[i * rank + j] = s * inv;
            }
        }
    }
    *r = rank;
    tl_free(g);
    tl_free(v);
    tl_free(order);
    return TLEARN_OK;
}
