/* Transferability scores from one forward pass over labelled target data:
 *  LogME   (You et al. 2021) the log evidence per example of a Bayesian linear model from
 *          the features to each class's one-hot column, alpha (prior precision) and beta
 *          (noise precision) maximised by the paper's fixed-point iteration; mean over
 *          classes. Through the SVD of the features, so each iteration costs O(rank).
 *  LEEP    (Nguyen et al. 2020) from the source head's softmax theta over source classes
 *          z: the empirical P(y|z) = sum_{i: y_i = y} theta_iz / sum_i theta_iz, then the
 *          mean over examples of log sum_z P(y_i|z) theta_iz.
 *  H-score (Bao et al. 2019) tr(cov(f)^+ cov(E[f|y])): with the centred features'
 *          left singular vectors U, sum over classes of ||U^T 1_c||^2 / n_c. It reaches
 *          classes - 1 whenever the centred features span every example (n - 1 <= d).
 * Everything runs in double. */
#include <math.h>
#include <string.h>

#include "fewshot.h"

/* LogME's fixed point stops when alpha and beta both move by less than TL_LOGME_TOL
 * (relative), after at most TL_LOGME_ITERS updates, as the paper's reference practice does:
 * when the features span every example (n <= d) a class they separate has no finite
 * optimum (beta grows without bound while the residual vanishes), so only a fixed count
 * makes the score defined there. Away from that case it converges in a few steps. */
#define TL_LOGME_ITERS 11
#define TL_LOGME_TOL 1e-3

static int class_counts(const char *fn, const int32_t *labels, size_t n, int classes,
                        double *count)
{
    for (size_t i = 0; i < n; i++)
        count[labels[i]] += 1.0;
    for (int c = 0; c < classes; c++)
        if (count[c] == 0.0)
            return tl_fail(TLEARN_EINVAL, "%s: class %d has no example", fn, c);
    return TLEARN_OK;
}

/* LogME of one target column: z = U^T y (r entries), yy = ||y||^2. */
static double logme_column(const double *lam, const double *z, size_t r, double yy, size_t n,
                           size_t d)
{
    double zz = 0.0;
    for (size_t i = 0; i < r; i++)
        zz += z[i] * z[i];
    /* the part of y outside the features' span: none when they span every example (the
     * difference would be rounding, possibly negative) */
    double outside = r == n || yy - zz < 0.0 ? 0.0 : yy - zz;
    double alpha = 1.0, beta = 1.0, gamma = 0.0, mm = 0.0, res = 0.0;
    for (int it = 0; it < TL_LOGME_ITERS; it++) {
        gamma = mm = 0.0;
        res = outside;
        for (size_t i = 0; i < r; i++) {
            double den = alpha + beta * lam[i];
            gamma += beta * lam[i] / den;
            mm += beta * beta * lam[i] * z[i] * z[i] / (den * den);
            res += alpha * alpha * z[i] * z[i] / (den * den);
        }
        double na = gamma / mm, nb = ((double)n - gamma) / res;
        int done = fabs(na - alpha) <= TL_LOGME_TOL * alpha && fabs(nb - beta) <= TL_LOGME_TOL * beta;
        alpha = na;
        beta = nb;
        if (done)
            break;
    }
    /* the evidence at the final alpha, beta (m and the residual recomputed there) */
    double logdet = (double)(d - r) * log(alpha);
    mm = 0.0;
    res = outside;
    for (size_t i = 0; i < r; i++) {
        double den = alpha + beta * lam[i];
        logdet += log(den);
        mm += beta * beta * lam[i] * z[i] * z[i] / (den * den);
        res += alpha * alpha * z[i] * z[i] / (den * den);
    }
    double ev = 0.5 * (double)n * log(beta) + 0.5 * (double)d * log(alpha) -
                0.5 * (double)n * log(2.0 * 3.14159265358979323846) - 0.5 * beta * res - 0.5 * alpha * mm -
                0.5 * logdet;
    return ev / (double)n;
}

/* The SVD of f and, for each class c, z_c = U^T 1_c (classes x r, row-major). */
typedef struct class_proj {
    double *u, *lam, *z;
    size_t r;
} class_proj;

static void proj_free(class_proj *p)
{
    tl_free(p->u);
    tl_free(p->lam);
    tl_free(p->z);
}

static int class_projections(const char *fn, const double *f, size_t n, size_t d,
                             const int32_t *labels, int classes, class_proj *p)
{
    memset(p, 0, sizeof *p);
    int rc = tl_fs_svd(fn, f, n, d, &p->u, &p->lam, &p->r);
    if (rc)
        return rc;
    p->z = tl_alloc_array((size_t)classes * (p->r ? p->r : 1), sizeof(double));
    if (!p->z) {
        proj_free(p);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < p->r; j++)
            p->z[(size_t)labels[i] * p->r + j] += p->u[i * p->r + j];
    return TLEARN_OK;
}

static int logme(const char *fn, const double *f, size_t n, size_t d, const int32_t *labels,
                 int classes, const double *count, double *score)
{
    class_proj p;
    int rc = class_projections(fn, f, n, d, labels, classes, &p);
    if (rc)
        return rc;
    double total = 0.0;
    for (int c = 0; c < classes; c++)
        total += logme_column(p.lam, p.z + (size_t)c * p.r, p.r, count[c], n, d);
    *score = total / classes;
    proj_free(&p);
    return TLEARN_OK;
}

static int hscore(const char *fn, double *f, size_t n, size_t d, const int32_t *labels,
                  int classes, const double *count, double *score)
{
    for (size_t j = 0; j < d; j++) { /* centre the features */
        double mean = 0.0;
        for (size_t i = 0; i < n; i++)
            mean += f[i * d + j];
        mean /= (double)n;
        for (size_t i = 0; i < n; i++)
            f[i * d + j] -= mean;
    }
    class_proj p;
    int rc = class_projections(fn, f, n, d, labels, classes, &p);
    if (rc)
        return rc;
    double h = 0.0;
    for (int c = 0; c < classes; c++) {
        const double *z = p.z + (size_t)c * p.r;
        double zz = 0.0;
        for (size_t j = 0; j < p.r; j++)
            zz += z[j] * z[j];
        h += zz / count[c];
    }
    *score = h;
    proj_free(&p);
    return TLEARN_OK;
}

static int leep(const char *fn, double *f, size_t n, size_t d, const int32_t *labels,
                int classes, double *score)
{
    double *joint = tl_alloc_array((size_t)classes * d, sizeof(double));
    double *marg = tl_alloc_array(d, sizeof(double));
    if (!joint || !marg) {
        tl_free(joint);
        tl_free(marg);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    for (size_t i = 0; i < n; i++) { /* softmax of the source logits, in place */
        double *t = f + i * d, mx = t[0], s = 0.0;
        for (size_t z = 1; z < d; z++)
            mx = t[z] > mx ? t[z] : mx;
        for (size_t z = 0; z < d; z++)
            s += t[z] = exp(t[z] - mx);
        for (size_t z = 0; z < d; z++) {
            t[z] /= s;
            joint[(size_t)labels[i] * d + z] += t[z];
            marg[z] += t[z];
        }
    }
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *t = f + i * d, *jy = joint + (size_t)labels[i] * d;
        double p = 0.0;
        for (size_t z = 0; z < d; z++)
            if (marg[z] > 0.0)
                p += jy[z] / marg[z] * t[z];
        total += log(p);
    }
    *score = total / (double)n;
    tl_free(joint);
    tl_free(marg);
    return TLEARN_OK;
}

static int check_metric_args(const char *fn, const void *x, const int32_t *labels, size_t n,
                             int classes, int metric, const double *score)
{
    if (!score)
        return tl_fail(TLEARN_EINVAL, "%s: score is NULL", fn);
    if (metric < TLEARN_TRANSFER_LOGME || metric > TLEARN_TRANSFER_HSCORE)
        return tl_fail(TLEARN_EINVAL, "%s: unknown metric %d", fn, metric);
    if (classes < 2 || n < 2)
        return tl_fail(TLEARN_EINVAL, "%s: classes %d and n %zu must both be >= 2", fn,
                       classes, n);
    return tl_fs_check_labels(fn, x, labels, n, classes);
}

static int score_of(const char *fn, const float *features, size_t n, size_t d,
                    const int32_t *labels, int classes, int metric, double *score)
{
    int rc = tl_check_values(TLEARN_EINVAL, fn, "features", features, n * d, 0);
    if (rc)
        return rc;
    double *f = tl_alloc_array(n * d, sizeof(double));
    double *count = tl_alloc_array((size_t)classes, sizeof(double));
    if (!f || !count) {
        tl_free(f);
        tl_free(count);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for %zu x %zu features", fn, n, d);
    }
    for (size_t i = 0; i < n * d; i++)
        f[i] = features[i];
    /* LEEP allows target classes without examples; the others divide by the counts */
    rc = metric == TLEARN_TRANSFER_LEEP ? leep(fn, f, n, d, labels, classes, score)
                                         : class_counts(fn, labels, n, classes, count);
    if (!rc && metric == TLEARN_TRANSFER_LOGME)
        rc = logme(fn, f, n, d, labels, classes, count, score);
    else if (!rc && metric == TLEARN_TRANSFER_HSCORE)
        rc = hscore(fn, f, n, d, labels, classes, count, score);
    tl_free(f);
    tl_free(count);
    return rc;
}

int tlearn_transferability_features(const float *features, size_t n, int dim,
                                    const int32_t *labels, int classes, int metric,
                                    double *score)
{
    static const char fn[] = "tlearn_transferability_features";
    int rc = check_metric_args(fn, features, labels, n, classes, metric, score);
    if (rc)
        return rc;
    if (dim < 1 || n > (size_t)INT32_MAX / (size_t)dim)
        return tl_fail(TLEARN_EINVAL, "%s: dim is %d, must be >= 1 with n x dim < 2^31", fn,
                       dim);
    return score_of(fn, features, n, (size_t)dim, labels, classes, metric, score);
}

int tlearn_transferability(tlearn_model *m, const char *layer, const float *x,
                           const int32_t *labels, size_t n, int classes, int metric,
                           double *score)
{
    static const char fn[] = "tlearn_transferability";
    TL_CHECK_MODEL(fn, m);
    int i;
    int rc = tl_model_find_checked(fn, m, layer, &i);
    if (!rc)
        rc = tl_model_check_single_input(fn, m);
    if (!rc)
        rc = check_metric_args(fn, x, labels, n, classes, metric, score);
    if (rc)
        return rc;
    size_t d = tl_shape_size(m->layers[i]->out);
    if (n > (size_t)INT32_MAX / d)
        return tl_fail(TLEARN_EINVAL, "%s: n is %zu, too large", fn, n);
    float *f = tl_alloc_array(n * d, sizeof(float));
    if (!f)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for %zu x %zu features", fn, n, d);
    rc = tl_fs_features(fn, m, i, x, n, f);
    if (!rc)
        rc = score_of(fn, f, n, d, labels, classes, metric, score);
    tl_free(f);
    return rc;
}
