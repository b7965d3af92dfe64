#include <float.h>
#include <math.h>
#include <string.h>

#include "train.h"

int tl_check_labels(const char *fn, const int32_t *labels, size_t n, int classes)
{
    for (size_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return tl_fail(TLEARN_EINVAL, "%s: labels[%zu] is %d, must be in 0..%d", fn, i,
                           (int)labels[i], classes - 1);
    return TLEARN_OK;
}

/* Cross-entropy of one row of logits against @p label in double; with @p d, the gradient
 * softmax - onehot times @p scale. *arg receives the argmax. */
static double row_ce(const float *z, int label, int classes, float *d, float scale, int *arg)
{
    float mx = z[0];
    *arg = 0;
    for (int j = 1; j < classes; j++)
        if (z[j] > mx) {
            mx = z[j];
            *arg = j;
        }
    double sum = 0.0;
    for (int j = 0; j < classes; j++)
        sum += exp((double)z[j] - mx); /* the difference in double, not float */
    double lse = log(sum) + mx;
    if (d) {
        for (int j = 0; j < classes; j++)
            d[j] = (float)exp((double)z[j] - lse) * scale;
        d[label] -= scale;
    }
    return lse - z[label];
}

double tl_loss_softmax_ce(const float *logits, const int32_t *labels, size_t n, int classes,
                          float *dlogits, size_t *correct)
{
    double total = 0.0;
    size_t hits = 0;
    float inv_n = 1.0f / (float)n;
    for (size_t i = 0; i < n; i++) {
        int arg;
        total += row_ce(logits + i * (size_t)classes, labels[i], classes,
                        dlogits ? dlogits + i * (size_t)classes : NULL, inv_n, &arg);
        hits += arg == labels[i];
    }
    if (correct)
        *correct = hits;
    return total / (double)n;
}

double tl_loss_token_ce(const float *logits, const int32_t *labels, size_t rows, int classes,
                        int32_t ignore, float *dlogits)
{
    size_t counted = 0;
    for (size_t i = 0; i < rows; i++)
        counted += labels[i] != ignore;
    double total = 0.0;
    float scale = 1.0f / (float)counted;
    for (size_t i = 0; i < rows; i++) {
        float *d = dlogits ? dlogits + i * (size_t)classes : NULL;
        int arg;
        if (labels[i] != ignore)
            total += row_ce(logits + i * (size_t)classes, labels[i], classes, d, scale, &arg);
        else if (d)
            memset(d, 0, sizeof(float) * (size_t)classes);
    }
    return total / (double)counted;
}

double tl_loss_mse(const float *out, const float *targets, size_t n, size_t size, float *dout)
{
    size_t total = n * size;
    double sum = 0.0;
    double scale = 2.0 / (double)total;
    for (size_t i = 0; i < total; i++) {
        double d = (double)out[i] - targets[i]; /* in double: no float rounding of d */
        sum += d * d;
        if (dout)
            dout[i] = (float)(scale * d);
    }
    return sum / (double)total;
}

/* ------------------------------------------------------------------------------------ */
/* Cross-entropy with class weights and label smoothing, as torch.nn.functional
 * .cross_entropy(weight=w, label_smoothing=e) with mean reduction (ATen's
 * cross_entropy_loss_label_smoothing): per example
 *   num_i = (1-e) w[y] (-log p_y) + (e/C) sum_c w[c] (-log p_c),
 * the loss is sum_i num_i / sum_i w[y_i]. */

int tlearn_model_set_label_smoothing(tlearn_model *m, float smoothing)
{
    static const char fn[] = "tlearn_model_set_label_smoothing";
    TL_CHECK_MODEL(fn, m);
    if (!(smoothing >= 0.0f && smoothing <= 1.0f))
        return tl_fail(TLEARN_EINVAL, "%s: smoothing is %g, must be in [0, 1]", fn,
                       (double)smoothing);
    m->label_smoothing = smoothing;
    return TLEARN_OK;
}

int tlearn_model_set_class_weights(tlearn_model *m, const float *weights, size_t count)
{
    static const char fn[] = "tlearn_model_set_class_weights";
    TL_CHECK_MODEL(fn, m);
    if (!weights || count == 0) {
        if (weights || count)
            return tl_fail(TLEARN_EINVAL, "%s: weights and count must both be set or both "
                           "NULL/0 (to clear)", fn);
        tl_free(m->class_weight);
        m->class_weight = NULL;
        m->nclass_weight = 0;
        return TLEARN_OK;
    }
    if (m->nlayers == 0 || count != tl_model_output_size(m))
        return tl_fail(TLEARN_ESHAPE, "%s: count is %zu, the model has %zu outputs", fn, count,
                       m->nlayers ? tl_model_output_size(m) : (size_t)0);
    double sum = 0;
    for (size_t c = 0; c < count; c++) {
        if (!(weights[c] >= 0.0f && weights[c] <= FLT_MAX))
            return tl_fail(TLEARN_EINVAL, "%s: weights[%zu] is %g, must be >= 0 and finite", fn,
                           c, (double)weights[c]);
        sum += weights[c];
    }
    if (!(sum > 0))
        return tl_fail(TLEARN_EINVAL, "%s: every weight is 0", fn);
    float *w = tl_alloc_array(count, sizeof *w);
    if (!w)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    memcpy(w, weights, count * sizeof *w);
    tl_free(m->class_weight);
    m->class_weight = w;
    m->nclass_weight = count;
    return TLEARN_OK;
}

int tl_loss_check(const char *fn, const tlearn_model *m, size_t classes)
{
    if (m->class_weight && m->nclass_weight != classes)
        return tl_fail(TLEARN_ESHAPE, "%s: %zu class weights for %zu outputs (the head "
                       "changed?); set them again", fn, m->nclass_weight, classes);
    return TLEARN_OK;
}

double tl_loss_ce_sum(const tlearn_model *m, const float *logits, const int32_t *labels,
                      size_t n, int classes, float *dlogits, double *den)
{
    const float *w = m->class_weight;
    double e = m->label_smoothing;
    if (!w && e == 0.0) { /* the plain loss, bit for bit as before */
        *den = (double)n;
        return tl_loss_softmax_ce(logits, labels, n, classes, dlogits, NULL) * (double)n;
    }
    double wall = 0, d = 0, total = 0;
    for (int c = 0; c < classes; c++)
        wall += w ? w[c] : 1.0;
    for (size_t i = 0; i < n; i++)
        d += w ? w[labels[i]] : 1.0;
    for (size_t i = 0; i < n; i++) {
        const float *z = logits + i * (size_t)classes;
        int y = labels[i];
        double mx = z[0], sum = 0, smooth = 0;
        for (int c = 1; c < classes; c++)
            mx = z[c] > mx ? z[c] : mx;
        for (int c = 0; c < classes; c++)
            sum += exp((double)z[c] - mx);
        double lse = log(sum) + mx, wy = w ? w[y] : 1.0;
        for (int c = 0; c < classes; c++)
            smooth += (w ? w[c] : 1.0) * (lse - z[c]);
        total += (1 - e) * wy * (lse - z[y]) + e / classes * smooth;
        if (dlogits) {
            float *g = dlogits + i * (size_t)classes;
            double a = (1 - e) * wy + e / classes * wall;
            for (int c = 0; c < classes; c++)
                g[c] = (float)((exp((double)z[c] - lse) * a - e / classes * (w ? w[c] : 1.0)) / d);
            g[y] -= (float)((1 - e) * wy / d);
        }
    }
    *den = d;
    return total;
}

/* ------------------------------------------------------------------------------------ */
/* In-batch contrastive loss (InfoNCE) over cosine similarity. Rows 0..P-1 of z are the
 * anchors, P..2P-1 their positives. u = z / max(|z|, 1e-12) (F.normalize), S = U_a U_p^T /
 * tau; the loss is the mean over anchors of lse(S[i,:]) - S[i,i] (symmetric: averaged with
 * the same over the columns). Work: 2P*dim + P*P floats and 6P doubles' room, see
 * tl_loss_contrastive_work. */

size_t tl_loss_contrastive_work(size_t pairs, size_t dim)
{
    return 2 * pairs * dim + pairs * pairs + 1 + 2 * (4 * pairs);
}

int tlearn_model_set_contrastive_temperature(tlearn_model *m, float temperature)
{
    static const char fn[] = "tlearn_model_set_contrastive_temperature";
    TL_CHECK_MODEL(fn, m);
    if (!(temperature > 0.0f && temperature <= FLT_MAX))
        return tl_fail(TLEARN_EINVAL, "%s: temperature is %g, must be > 0 and finite", fn,
                       (double)temperature);
    m->contrastive_tau = temperature;
    return TLEARN_OK;
}

double tl_loss_contrastive(const tl_blas *b, const float *z, size_t pairs, size_t dim,
                           float tau, int symmetric, float *work, float *dz)
{
    size_t P = pairs, rows = 2 * P;
    float *u = work, *s = u + rows * dim;
    /* 1/max(|z|, eps) per row; the doubles start at an even float offset */
    double *inv = (double *)(void *)(work + ((rows * dim + P * P + 1) & ~(size_t)1));
    double *lse_r = inv + rows, *lse_c = lse_r + P;
    for (size_t r = 0; r < rows; r++) {
        const float *zr = z + r * dim;
        double sq = 0.0;
        for (size_t k = 0; k < dim; k++)
            sq += (double)zr[k] * zr[k];
        double nrm = sqrt(sq);
        inv[r] = 1.0 / (nrm > 1e-12 ? nrm : 1e-12);
        for (size_t k = 0; k < dim; k++)
            u[r * dim + k] = (float)(zr[k] * inv[r]);
    }
    const float *ua = u, *up = u + P * dim;
    tl_sgemm(b, 0, 1, (int)P, (int)P, (int)dim, 1.0f / tau, ua, (int)dim, up, (int)dim, 0.0f, s,
             (int)P);
    /* log-sum-exp of every row and (symmetric) every column, in double */
    double total = 0.0;
    for (size_t i = 0; i < P; i++) {
        const float *si = s + i * P;
        double mx = si[0], sum = 0.0;
        for (size_t j = 1; j < P; j++)
            mx = si[j] > mx ? si[j] : mx;
        for (size_t j = 0; j < P; j++)
            sum += exp(si[j] - mx);
        lse_r[i] = log(sum) + mx;
        total += lse_r[i] - si[i];
    }
    double wr = symmetric ? 0.5 : 1.0;
    total *= wr;
    if (symmetric) {
        for (size_t j = 0; j < P; j++) {
            double mx = s[j], sum = 0.0;
            for (size_t i = 1; i < P; i++)
                mx = s[i * P + j] > mx ? s[i * P + j] : mx;
            for (size_t i = 0; i < P; i++)
                sum += exp(s[i * P + j] - mx);
            lse_c[j] = log(sum) + mx;
            total += 0.5 * (lse_c[j] - s[j * P + j]);
        }
    }
    double loss = total / (double)P;
    if (!dz || !isfinite(loss))
        return loss;
    /* dL/dS in place: (softmax - onehot) / P per row (and per column), weighted */
    for (size_t i = 0; i < P; i++)
        for (size_t j = 0; j < P; j++) {
            double v = s[i * P + j], g = wr * exp(v - lse_r[i]);
            if (symmetric)
                g += 0.5 * exp(v - lse_c[j]);
            if (i == j)
                g -= 1.0;
            s[i * P + j] = (float)(g / (double)P);
        }
    /* dL/dU_a = G U_p / tau, dL/dU_p = G^T U_a / tau, into dz; then through the norm:
     * dz = (du - u (u . du)) / |z| (F.normalize's gradient; below eps only du / eps). */
    tl_sgemm(b, 0, 0, (int)P, (int)dim, (int)P, 1.0f / tau, s, (int)P, up, (int)dim, 0.0f, dz,
             (int)dim);
    tl_sgemm(b, 1, 0, (int)P, (int)dim, (int)P, 1.0f / tau, s, (int)P, ua, (int)dim, 0.0f,
             dz + P * dim, (int)dim);
    for (size_t r = 0; r < rows; r++) {
        float *g = dz + r * dim;
        const float *ur = u + r * dim;
        double dot = 0.0;
        if (inv[r] < 1e12)
            for (size_t k = 0; k < dim; k++)
                dot += (double)ur[k] * g[k];
        for (size_t k = 0; k < dim; k++)
            g[k] = (float)((g[k] - ur[k] * dot) * inv[r]);
    }
    return loss;
}
