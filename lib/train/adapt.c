/* Domain adaptation: a train step with a loss per graph output (labels of -1 mark rows that
 * have none, the unlabelled target rows of a mixed batch) and discrepancy terms (CORAL,
 * multi-kernel MMD) between source and target rows at named layers; gradient reversal's
 * lambda and the DANN schedule; AdaBN (BatchNorm statistics re-estimated on target data);
 * TENT (BatchNorm's affine parameters adapted by entropy minimisation, with a reset).
 * The settings live in m->da, made on first use and freed with the model. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "train.h"

typedef struct tl_da_term {
    char layer[TL_NAME_MAX];
    int kind;     /* enum tlearn_discrepancy */
    float weight; /* > 0 */
} tl_da_term;

struct tl_da {
    int loss[TL_MAX_MODEL_OUTPUTS]; /* enum tlearn_loss per output position; 0: none */
    float weight[TL_MAX_MODEL_OUTPUTS];
    int nterms;
    tl_da_term term[TL_DA_MAX_TERMS];
    int nmult; /* 0: the default multipliers */
    float mult[TL_DA_MAX_KERNELS];
    double *work; /* the discrepancy's scratch, grown on demand (steady steps allocate none) */
    size_t work_len;
    /* TENT: what tent_reset restores; active from the first tent_step */
    int tent;
    int tent_layers;  /* m->nlayers at the snapshot (a changed model cannot be reset) */
    int *tent_frozen; /* [tent_layers] freeze flags before adaptation */
    float *tent_saved; /* every BatchNorm tensor, in layer then parameter order */
};

/* DAN's multi-kernel (Long et al. 2015, as its reference code): five Gaussian kernels whose
 * bandwidths are 1/4, 1/2, 1, 2 and 4 times the mean squared distance between rows. */
static const float default_mult[] = {0.25f, 0.5f, 1.0f, 2.0f, 4.0f};

static void da_destroy(struct tl_da *da)
{
    tl_free(da->work);
    tl_free(da->tent_frozen);
    tl_free(da->tent_saved);
    tl_free(da);
}

static struct tl_da *da_get(const char *fn, tlearn_model *m)
{
    if (!m->da) {
        m->da = tl_alloc_array(1, sizeof *m->da);
        if (!m->da) {
            tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
            return NULL;
        }
        m->da_destroy = da_destroy;
    }
    return m->da;
}

static int work_reserve(const char *fn, struct tl_da *da, size_t len)
{
    if (da->work_len >= len)
        return TLEARN_OK;
    double *w = tl_alloc_array(len, sizeof *w);
    if (!w)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for the discrepancy (%zu doubles)", fn,
                       len);
    tl_free(da->work);
    da->work = w;
    da->work_len = len;
    return TLEARN_OK;
}

/* ---- discrepancies ---- */

static size_t disc_work(int kind, size_t n, size_t d)
{
    return kind == TLEARN_DISCREPANCY_CORAL ? 2 * d * d + 3 * d : n * n + n;
}

/* Source and target counts; EINVAL when a kind lacks rows of either domain. */
static int disc_counts(const char *fn, int kind, const uint8_t *is_target, size_t n, size_t *ns,
                       size_t *nt)
{
    size_t t = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_target[i] > 1)
            return tl_fail(TLEARN_EINVAL, "%s: is_target[%zu] is %d, must be 0 or 1", fn, i,
                           (int)is_target[i]);
        t += is_target[i];
    }
    size_t need = kind == TLEARN_DISCREPANCY_CORAL ? 2 : 1;
    if (t < need || n - t < need)
        return tl_fail(TLEARN_EINVAL, "%s: %s needs at least %zu source and %zu target rows; the "
                       "batch has %zu and %zu", fn,
                       kind == TLEARN_DISCREPANCY_CORAL ? "CORAL" : "MMD", need, need, n - t, t);
    *ns = n - t;
    *nt = t;
    return TLEARN_OK;
}

/* Deep CORAL (Sun & Saenko 2016): ||C_s - C_t||_F^2 / (4 d^2) with C the unbiased
 * covariance of each domain's rows. Gradient (scaled by @p scale) into grad, or added with
 * @p accum: dL/dx_a = +-2/(n-1) (x_a - mean) G, G = (C_s - C_t) / (2 d^2). In double. */
static double coral(const float *x, size_t n, size_t d, const uint8_t *is_target, size_t ns,
                    size_t nt, double *w, float scale, float *grad, int accum)
{
    double *cov[2] = {w, w + d * d}, *mean[2] = {w + 2 * d * d, w + 2 * d * d + d};
    double *c = w + 2 * d * d + 2 * d, cnt[2] = {(double)ns, (double)nt};
    memset(w, 0, sizeof(double) * (2 * d * d + 2 * d));
    for (size_t a = 0; a < n; a++)
        for (size_t i = 0; i < d; i++)
            mean[is_target[a]][i] += x[a * d + i];
    for (int t = 0; t < 2; t++)
        for (size_t i = 0; i < d; i++)
            mean[t][i] /= cnt[t];
    for (size_t a = 0; a < n; a++) {
        int t = is_target[a];
        for (size_t i = 0; i < d; i++)
            c[i] = x[a * d + i] - mean[t][i];
        for (size_t i = 0; i < d; i++) {
            double ci = c[i], *row = cov[t] + i * d;
            for (size_t j = 0; j < d; j++)
                row[j] += ci * c[j];
        }
    }
    double sum = 0.0, k = 1.0 / (2.0 * (double)d * (double)d);
    for (size_t i = 0; i < d * d; i++) {
        double diff = cov[0][i] / (cnt[0] - 1.0) - cov[1][i] / (cnt[1] - 1.0);
        sum += diff * diff;
        cov[0][i] = diff * k; /* G */
    }
    if (grad)
        for (size_t a = 0; a < n; a++) {
            int t = is_target[a];
            double f = (t ? -2.0 : 2.0) / (cnt[t] - 1.0) * scale;
            for (size_t i = 0; i < d; i++)
                c[i] = 0.0;
            for (size_t j = 0; j < d; j++) { /* c = (x_a - mean) G, G symmetric */
                double xj = x[a * d + j] - mean[t][j];
                const double *g = cov[0] + j * d;
                for (size_t i = 0; i < d; i++)
                    c[i] += xj * g[i];
            }
            float *ga = grad + a * d;
            for (size_t i = 0; i < d; i++)
                ga[i] = (float)(f * c[i]) + (accum ? ga[i] : 0.0f);
        }
    return sum / (4.0 * (double)d * (double)d);
}

/* Multi-kernel MMD^2, biased (V-statistic) estimate: sum_ab c_a c_b k(x_a, x_b), c = 1/ns on
 * source rows and -1/nt on target rows, k(a, b) = sum_i exp(-||a - b||^2 / (m_i * D)) with D
 * the mean squared distance over distinct pairs of the batch, held constant for the gradient
 * (detached, as DAN's code): dL/dx_a = 4 sum_b W_ab (x_a - x_b), W_ab = c_a c_b dk/d||.||^2. */
static double mmd(const float *x, size_t n, size_t d, const uint8_t *is_target, size_t ns,
                  size_t nt, const float *mult, int nmult, double *w, float scale, float *grad,
                  int accum)
{
    double *dist = w, *rows = w + n * n, total = 0.0;
    for (size_t a = 0; a < n; a++) {
        dist[a * n + a] = 0.0;
        for (size_t b = a + 1; b < n; b++) {
            double s = 0.0;
            for (size_t i = 0; i < d; i++) {
                double v = (double)x[a * d + i] - x[b * d + i];
                s += v * v;
            }
            dist[a * n + b] = dist[b * n + a] = s;
            total += 2.0 * s;
        }
    }
    double mean = total / ((double)n * (double)n - (double)n);
    if (!(mean > 0.0)) { /* every row the same: nothing to tell the domains apart */
        if (grad && !accum)
            memset(grad, 0, sizeof(float) * n * d);
        return 0.0;
    }
    double sum = 0.0;
    for (size_t a = 0; a < n; a++) {
        double ca = is_target[a] ? -1.0 / (double)nt : 1.0 / (double)ns, r = 0.0;
        for (size_t b = 0; b < n; b++) {
            double cb = is_target[b] ? -1.0 / (double)nt : 1.0 / (double)ns, k = 0.0, dk = 0.0;
            for (int i = 0; i < nmult; i++) {
                double bw = (double)mult[i] * mean, e = exp(-dist[a * n + b] / bw);
                k += e;
                dk -= e / bw;
            }
            sum += ca * cb * k;
            dist[a * n + b] = ca * cb * dk; /* W_ab; (a, b) is not read again */
            r += dist[a * n + b];
        }
        rows[a] = r;
    }
    if (grad)
        for (size_t a = 0; a < n; a++) {
            float *ga = grad + a * d;
            for (size_t i = 0; i < d; i++) {
                double s = rows[a] * x[a * d + i];
                for (size_t b = 0; b < n; b++)
                    s -= dist[a * n + b] * x[b * d + i];
                ga[i] = (float)(4.0 * scale * s) + (accum ? ga[i] : 0.0f);
            }
        }
    return sum;
}

static double discrepancy(int kind, const float *x, size_t n, size_t d, const uint8_t *is_target,
                          size_t ns, size_t nt, const float *mult, int nmult, double *w,
                          float scale, float *grad, int accum)
{
    if (kind == TLEARN_DISCREPANCY_CORAL)
        return coral(x, n, d, is_target, ns, nt, w, scale, grad, accum);
    return mmd(x, n, d, is_target, ns, nt, mult, nmult, w, scale, grad, accum);
}

static int check_kind(const char *fn, int kind)
{
    if (kind != TLEARN_DISCREPANCY_CORAL && kind != TLEARN_DISCREPANCY_MMD)
        return tl_fail(TLEARN_EINVAL, "%s: kind is %d, must be TLEARN_DISCREPANCY_CORAL (1) or "
                       "TLEARN_DISCREPANCY_MMD (2)", fn, kind);
    return TLEARN_OK;
}

static int check_mult(const char *fn, const float *mult, int nmult)
{
    if (nmult < 0 || nmult > TL_DA_MAX_KERNELS || (nmult > 0 && !mult))
        return tl_fail(TLEARN_EINVAL, "%s: %d multipliers%s; 0..%d allowed", fn, nmult,
                       nmult > 0 && !mult ? " at NULL" : "", TL_DA_MAX_KERNELS);
    for (int i = 0; i < nmult; i++)
        if (!(mult[i] > 0.0f) || !isfinite(mult[i]))
            return tl_fail(TLEARN_EINVAL, "%s: multiplier %d is %g, must be > 0 and finite", fn,
                           i, (double)mult[i]);
    return TLEARN_OK;
}

int tlearn_discrepancy(int kind, const float *features, size_t n, size_t dim,
                       const uint8_t *is_target, const float *multipliers, int nmult,
                       float *value, float *grad)
{
    static const char fn[] = "tlearn_discrepancy";
    int rc = check_kind(fn, kind);
    if (!rc)
        rc = check_mult(fn, multipliers, nmult);
    if (rc)
        return rc;
    if (!features || !is_target || !value)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn,
                       !features ? "features" : !is_target ? "is_target" : "value");
    if (dim == 0 || n == 0 || n > (size_t)INT32_MAX / dim)
        return tl_fail(TLEARN_EINVAL, "%s: n %zu x dim %zu is empty or too large", fn, n, dim);
    size_t ns, nt;
    if ((rc = disc_counts(fn, kind, is_target, n, &ns, &nt)))
        return rc;
    for (size_t i = 0; i < n * dim; i++)
        if (!isfinite(features[i]))
            return tl_fail(TLEARN_EINVAL, "%s: features[%zu] is not finite", fn, i);
    if (nmult == 0) {
        multipliers = default_mult;
        nmult = (int)(sizeof default_mult / sizeof default_mult[0]);
    }
    double *w = tl_alloc_array(disc_work(kind, n, dim), sizeof *w);
    if (!w)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    double v = discrepancy(kind, features, n, dim, is_target, ns, nt, multipliers, nmult, w,
                           1.0f, grad, 0);
    tl_free(w);
    *value = (float)v;
    return TLEARN_OK;
}

/* ---- settings ---- */

int tlearn_model_set_output_loss(tlearn_model *m, int output, int loss, float weight)
{
    static const char fn[] = "tlearn_model_set_output_loss";
    TL_CHECK_MODEL(fn, m);
    int count = tl_model_output_count(m);
    if (output < 0 || output >= count)
        return tl_fail(TLEARN_EINVAL, "%s: output is %d, the model has %d outputs", fn, output,
                       count);
    if (loss != 0 && loss != TLEARN_LOSS_SOFTMAX_CE && loss != TLEARN_LOSS_MSE)
        return tl_fail(TLEARN_EINVAL, "%s: loss is %d, must be 0 (none), TLEARN_LOSS_SOFTMAX_CE "
                       "or TLEARN_LOSS_MSE", fn, loss);
    if (loss && (!(weight > 0.0f) || !isfinite(weight)))
        return tl_fail(TLEARN_EINVAL, "%s: weight is %g, must be > 0 and finite", fn,
                       (double)weight);
    if (loss == TLEARN_LOSS_SOFTMAX_CE &&
        tl_shape_size(m->layers[tl_model_output(m, output)]->out) < 2)
        return tl_fail(TLEARN_ESHAPE, "%s: cross-entropy needs >= 2 values at output %d ('%s')",
                       fn, output, m->layers[tl_model_output(m, output)]->name);
    struct tl_da *da = da_get(fn, m);
    if (!da)
        return TLEARN_ENOMEM;
    da->loss[output] = loss;
    da->weight[output] = loss ? weight : 0.0f;
    return TLEARN_OK;
}

int tlearn_model_set_discrepancy(tlearn_model *m, const char *layer, int kind, float weight)
{
    static const char fn[] = "tlearn_model_set_discrepancy";
    TL_CHECK_MODEL(fn, m);
    int i, rc = tl_model_find_checked(fn, m, layer, &i);
    if (!rc)
        rc = check_kind(fn, kind);
    if (rc)
        return rc;
    if (!(weight >= 0.0f) || !isfinite(weight))
        return tl_fail(TLEARN_EINVAL, "%s: weight is %g, must be >= 0 and finite", fn,
                       (double)weight);
    struct tl_da *da = m->da;
    int t = 0;
    while (da && t < da->nterms && (da->term[t].kind != kind || strcmp(da->term[t].layer, layer)))
        t++;
    if (weight == 0.0f) { /* remove the term, if any */
        if (da && t < da->nterms) {
            memmove(da->term + t, da->term + t + 1, sizeof(tl_da_term) * (size_t)(da->nterms - t - 1));
            da->nterms--;
        }
        return TLEARN_OK;
    }
    if ((!da || t == da->nterms) && da && da->nterms == TL_DA_MAX_TERMS)
        return tl_fail(TLEARN_EINVAL, "%s: at most %d discrepancy terms", fn, TL_DA_MAX_TERMS);
    if (!(da = da_get(fn, m)))
        return TLEARN_ENOMEM;
    if (t == da->nterms) {
        da->nterms++;
        snprintf(da->term[t].layer, sizeof da->term[t].layer, "%s", layer);
        da->term[t].kind = kind;
    }
    da->term[t].weight = weight;
    return TLEARN_OK;
}

int tlearn_model_set_mmd_bandwidths(tlearn_model *m, const float *multipliers, int count)
{
    static const char fn[] = "tlearn_model_set_mmd_bandwidths";
    TL_CHECK_MODEL(fn, m);
    int rc = check_mult(fn, multipliers, count);
    if (rc)
        return rc;
    struct tl_da *da = da_get(fn, m);
    if (!da)
        return TLEARN_ENOMEM;
    for (int i = 0; i < count; i++)
        da->mult[i] = multipliers[i];
    da->nmult = count;
    return TLEARN_OK;
}

int tlearn_model_set_grad_reverse_lambda(tlearn_model *m, const char *layer, float lambda)
{
    static const char fn[] = "tlearn_model_set_grad_reverse_lambda";
    TL_CHECK_MODEL(fn, m);
    int rc = tl_grl_check_lambda(fn, layer ? layer : "(all)", lambda);
    if (rc)
        return rc;
    if (layer) {
        int i;
        if ((rc = tl_model_find_checked(fn, m, layer, &i)))
            return rc;
        if (m->layers[i]->ops->kind != TLEARN_LAYER_GRAD_REVERSE)
            return tl_fail(TLEARN_EINVAL, "%s: layer '%s' is a %s, not grad_reverse", fn, layer,
                           m->layers[i]->ops->kind_name);
        tl_grl_set_lambda(m->layers[i], lambda);
        return TLEARN_OK;
    }
    int found = 0;
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i]->ops->kind == TLEARN_LAYER_GRAD_REVERSE) {
            tl_grl_set_lambda(m->layers[i], lambda);
            found = 1;
        }
    return found ? TLEARN_OK
                 : tl_fail(TLEARN_ENOTFOUND, "%s: the model has no grad_reverse layer", fn);
}

float tlearn_dann_lambda(float progress)
{
    double p = progress != progress ? 0.0 : progress < 0.0f ? 0.0 : progress > 1.0f ? 1.0 : progress;
    return (float)(2.0 / (1.0 + exp(-10.0 * p)) - 1.0);
}

/* ---- the multi-output step ---- */

/* Cross-entropy over the rows whose label is not -1, mean over those rows, times @p w;
 * gradient into dz (rows without a label get 0). Returns the unweighted mean (0 when no
 * row has a label). */
static double masked_ce(const float *z, const int32_t *labels, size_t n, int classes, float w,
                        float *dz)
{
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++)
        cnt += labels[i] >= 0;
    double total = 0.0;
    float k = cnt ? w / (float)cnt : 0.0f;
    for (size_t i = 0; i < n; i++) {
        float *d = dz ? dz + i * (size_t)classes : NULL;
        if (labels[i] < 0) {
            if (d)
                memset(d, 0, sizeof(float) * (size_t)classes);
            continue;
        }
        total += tl_loss_softmax_ce(z + i * (size_t)classes, labels + i, 1, classes, d, NULL);
        if (d)
            for (int j = 0; j < classes; j++)
                d[j] *= k;
    }
    return cnt ? total / (double)cnt : 0.0;
}

typedef struct multi_job {
    int nact, act[TL_MAX_MODEL_OUTPUTS]; /* output positions with a loss and targets */
    int term_layer[TL_DA_MAX_TERMS];
    uint8_t *mask;                       /* is_target per row, owned when derived */
    size_t ns[TL_DA_MAX_TERMS], nt[TL_DA_MAX_TERMS];
} multi_job;

static int check_multi(const char *fn, tlearn_model *m, const void *const *targets, int ntargets,
                       size_t n, const uint8_t *is_target, multi_job *job)
{
    struct tl_da *da = m->da;
    int nout = tl_model_output_count(m);
    if (!targets || ntargets != nout)
        return tl_fail(TLEARN_EINVAL, "%s: %s, the model has %d outputs", fn,
                       !targets ? "targets is NULL" : "ntargets differs", nout);
    job->nact = 0;
    for (int k = 0; da && k < nout; k++) {
        if (!da->loss[k] || !targets[k])
            continue;
        size_t osz = tl_shape_size(m->layers[tl_model_output(m, k)]->out);
        if (da->loss[k] == TLEARN_LOSS_SOFTMAX_CE) {
            const int32_t *y = targets[k];
            for (size_t i = 0; i < n; i++)
                if (y[i] < -1 || y[i] >= (int32_t)osz)
                    return tl_fail(TLEARN_EINVAL, "%s: output %d: labels[%zu] is %d, must be in "
                                   "-1..%zu", fn, k, i, (int)y[i], osz - 1);
        } else {
            const float *t = targets[k];
            for (size_t i = 0; i < n * osz; i++)
                if (!isfinite(t[i]))
                    return tl_fail(TLEARN_EINVAL, "%s: output %d: targets[%zu] is not finite",
                                   fn, k, i);
        }
        job->act[job->nact++] = k;
    }
    int nterms = da ? da->nterms : 0;
    if (job->nact == 0 && nterms == 0)
        return tl_fail(TLEARN_ESTATE, "%s: no output has both a loss (tlearn_model_set_output_"
                       "loss) and targets, and no discrepancy is set", fn);
    if (nterms == 0)
        return TLEARN_OK;
    if (!is_target) { /* derived from output 0's labels: -1 marks a target row */
        if (!da->loss[0] || da->loss[0] != TLEARN_LOSS_SOFTMAX_CE || !targets[0])
            return tl_fail(TLEARN_EINVAL, "%s: is_target is NULL and output 0 has no labels to "
                           "mark target rows (-1)", fn);
        job->mask = tl_alloc_array(n, 1);
        if (!job->mask)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        const int32_t *y = targets[0];
        for (size_t i = 0; i < n; i++)
            job->mask[i] = y[i] < 0;
        is_target = job->mask;
    }
    int first = tl_model_first_trainable(m);
    size_t need = 0;
    for (int t = 0; t < nterms; t++) {
        int i = tl_model_find(m, da->term[t].layer), rc;
        if (i < 0)
            return tl_fail(TLEARN_ENOTFOUND, "%s: the discrepancy's layer '%s' is gone", fn,
                           da->term[t].layer);
        if (i < first)
            return tl_fail(TLEARN_ESTATE, "%s: the discrepancy at '%s' cannot train anything: "
                           "it and every layer before it are frozen", fn, da->term[t].layer);
        if ((rc = disc_counts(fn, da->term[t].kind, is_target, n, &job->ns[t], &job->nt[t])))
            return rc;
        job->term_layer[t] = i;
        size_t w = disc_work(da->term[t].kind, n, tl_shape_size(m->layers[i]->out));
        need = w > need ? w : need;
    }
    if (!job->mask) { /* the step reads the caller's mask through job->mask */
        job->mask = tl_alloc_array(n, 1);
        if (!job->mask)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        memcpy(job->mask, is_target, n);
    }
    return work_reserve(fn, da, need);
}

/* Forward, the weighted losses and discrepancies, one backward from every seeded layer. */
static int multi_forward_backward(const char *fn, tlearn_model *m, const tl_feed *feed, size_t n,
                                  const void *const *targets, const multi_job *job, double *loss)
{
    struct tl_da *da = m->da;
    int rc = tl_model_sync_slots(m, 1);
    int first = tl_model_first_trainable(m);
    if (!rc)
        rc = tl_model_plan(m, &m->plan_train, n, first, 0);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    tl_plan *p = &m->plan_train;
    int to = tl_model_last_output(m);
    for (int t = 0; t < da->nterms; t++)
        to = job->term_layer[t] > to ? job->term_layer[t] : to;
    tl_model_forward(m, p, feed, n, m->training, 0, to);
    int seeded[TL_MAX_MODEL_OUTPUTS + TL_DA_MAX_TERMS], nseeded = 0;
    double total = 0.0;
    for (int a = 0; a < job->nact; a++) {
        int k = job->act[a], li = tl_model_output(m, k);
        size_t osz = tl_shape_size(m->layers[li]->out);
        float *dz = p->dout[li], w = da->weight[k];
        double l;
        if (da->loss[k] == TLEARN_LOSS_SOFTMAX_CE) {
            l = masked_ce(p->out[li], targets[k], n, (int)osz, w, dz);
        } else {
            l = tl_loss_mse(p->out[li], targets[k], n, osz, dz);
            if (dz)
                for (size_t i = 0; i < n * osz; i++)
                    dz[i] *= w;
        }
        total += w * l;
        if (dz)
            seeded[nseeded++] = li;
    }
    const float *mult = da->nmult ? da->mult : default_mult;
    int nmult = da->nmult ? da->nmult : (int)(sizeof default_mult / sizeof default_mult[0]);
    for (int t = 0; t < da->nterms; t++) {
        int li = job->term_layer[t], accum = 0;
        for (int s = 0; s < nseeded; s++)
            accum |= seeded[s] == li;
        float *g = p->dout[li]; /* kept: li >= first trainable (check_multi) */
        total += da->term[t].weight *
                 discrepancy(da->term[t].kind, p->out[li], n, tl_shape_size(m->layers[li]->out),
                             job->mask, job->ns[t], job->nt[t], mult, nmult, da->work,
                             da->term[t].weight, g, accum);
        if (!accum)
            seeded[nseeded++] = li;
    }
    if (!isfinite((float)total))
        return tl_fail(TLEARN_ENONFINITE, "%s: the loss is %g; weights left unchanged", fn, total);
    if (nseeded)
        tl_model_backward(m, p, feed, n, 0, seeded, nseeded, NULL);
    *loss = total;
    return TLEARN_OK;
}

/* The tail every step here shares with train_step: penalty, checks, update, commit. */
static int finish_step(const char *fn, tlearn_model *m, tlearn_optim *o, size_t n, double l,
                       int training, float *loss)
{
    double penalty = tl_ewc_active(m) ? tl_ewc_penalty(m) : 0.0;
    if (!isfinite((float)penalty) || !isfinite((float)(l + penalty)))
        return tl_fail(TLEARN_ENONFINITE, "%s: the EWC/L2-SP penalty is %g (loss %g); weights "
                       "unchanged", fn, penalty, l + penalty);
    int rc = training ? tl_step_check_commit(fn, m, n, 0) : TLEARN_OK;
    if (!rc)
        rc = tl_step_apply_update(fn, m, o);
    if (rc)
        return rc;
    if (training)
        tl_model_commit(m, &m->plan_train, n, 0);
    if (loss)
        *loss = (float)(l + penalty);
    return TLEARN_OK;
}

/* The arguments every step here takes: the feed and the optimizer. */
static int check_step(const char *fn, tlearn_model *m, tlearn_optim *o, const void *const *inputs,
                      int ninputs, size_t n, tl_feed *feed)
{
    int rc = tl_model_check_feed(fn, m, inputs, ninputs, n, feed);
    if (!rc && !o)
        rc = tl_fail(TLEARN_EINVAL, "%s: optimizer is NULL", fn);
    return rc;
}

int tlearn_model_train_step_multi(tlearn_model *m, tlearn_optim *o, const void *const *inputs,
                                  int ninputs, size_t n, const void *const *targets,
                                  int ntargets, const uint8_t *is_target, float *loss)
{
    static const char fn[] = "tlearn_model_train_step_multi";
    tl_feed feed;
    int rc = check_step(fn, m, o, inputs, ninputs, n, &feed);
    if (rc)
        return rc;
    multi_job job = {0};
    double l = 0.0;
    rc = check_multi(fn, m, targets, ntargets, n, is_target, &job);
    if (!rc)
        rc = multi_forward_backward(fn, m, &feed, n, targets, &job, &l);
    if (!rc)
        rc = finish_step(fn, m, o, n, l, m->training, loss);
    tl_free(job.mask);
    return rc;
}

/* ---- AdaBN ---- */

static int bn_count(const tlearn_model *m, size_t *floats)
{
    int c = 0;
    *floats = 0;
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i]->ops->kind == TLEARN_LAYER_BATCHNORM) {
            c++;
            *floats += (size_t)m->layers[i]->in[0].c;
        }
    return c;
}

int tlearn_model_adapt_bn(tlearn_model *m, const void *const *inputs, int ninputs, size_t n,
                          size_t batch)
{
    static const char fn[] = "tlearn_model_adapt_bn";
    tl_feed feed;
    int rc = tl_model_check_feed(fn, m, inputs, ninputs, n, &feed);
    if (rc)
        return rc;
    if (batch == 0)
        return tl_fail(TLEARN_EINVAL, "%s: batch is 0, must be >= 1", fn);
    size_t channels;
    if (bn_count(m, &channels) == 0)
        return tl_fail(TLEARN_ESTATE, "%s: the model has no BatchNorm layer", fn);
    if (batch > n)
        batch = n;
    double *acc = tl_alloc_array(2 * channels, sizeof *acc); /* means, then variances */
    if (!acc)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    if ((rc = tl_model_plan(m, &m->plan_train, batch, m->nlayers, 0))) {
        tl_free(acc);
        return tl_fail_prefix(rc, "%s: ", fn);
    }
    /* Batch statistics in every BatchNorm, frozen ones too, for this call only. */
    int *kept = tl_alloc_array((size_t)m->nlayers, sizeof *kept);
    if (!kept) {
        tl_free(acc);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    for (int i = 0; i < m->nlayers; i++) {
        kept[i] = m->layers[i]->use_running_stats;
        m->layers[i]->use_running_stats = 0;
    }
    size_t batches = 0;
    for (size_t s = 0; s < n; s += batch, batches++) {
        size_t k = n - s < batch ? n - s : batch;
        tl_feed f = tl_feed_at(&feed, s);
        tl_model_forward(m, &m->plan_train, &f, k, 1, 0, m->nlayers - 1);
        size_t off = 0;
        for (int i = 0; i < m->nlayers; i++) {
            const tl_layer *L = m->layers[i];
            if (L->ops->kind != TLEARN_LAYER_BATCHNORM)
                continue;
            const float *st = m->plan_train.saved[i]; /* batch mean, biased variance */
            size_t C = (size_t)L->in[0].c;
            double M = (double)k * L->in[0].h * L->in[0].w, unbias = M > 1.0 ? M / (M - 1.0) : 1.0;
            for (size_t c = 0; c < C; c++) {
                acc[off + c] += st[c];
                acc[channels + off + c] += st[C + c] * unbias;
            }
            off += C;
        }
    }
    for (int i = 0; i < m->nlayers; i++)
        m->layers[i]->use_running_stats = kept[i];
    tl_free(kept);
    m->plan_train.fwd_training = 0; /* no backward may read these statistics */
    /* torch's momentum=None: the running value is the plain average over the batches. */
    for (size_t c = 0; c < 2 * channels; c++)
        if (!isfinite((float)(acc[c] / (double)batches))) {
            tl_free(acc);
            return tl_fail(TLEARN_ENONFINITE, "%s: a running statistic would be non-finite; "
                           "nothing changed", fn);
        }
    size_t off = 0;
    for (int i = 0; i < m->nlayers; i++) {
        tl_layer *L = m->layers[i];
        if (L->ops->kind != TLEARN_LAYER_BATCHNORM)
            continue;
        size_t C = (size_t)L->in[0].c;
        for (size_t c = 0; c < C; c++) {
            L->param[2].t.data[c] = (float)(acc[off + c] / (double)batches);
            L->param[3].t.data[c] = (float)(acc[channels + off + c] / (double)batches);
        }
        off += C;
    }
    tl_free(acc);
    return TLEARN_OK;
}

/* ---- TENT ---- */

/* Copy every BatchNorm tensor to (save) or from (!save) @p buf. */
static void bn_tensors(tlearn_model *m, float *buf, int save)
{
    for (int i = 0; i < m->nlayers; i++) {
        tl_layer *L = m->layers[i];
        if (L->ops->kind != TLEARN_LAYER_BATCHNORM)
            continue;
        for (int p = 0; p < L->nparam; p++) {
            size_t k = L->param[p].t.numel;
            if (save)
                memcpy(buf, L->param[p].t.data, sizeof(float) * k);
            else
                memcpy(L->param[p].t.data, buf, sizeof(float) * k);
            buf += k;
        }
    }
}

/* BatchNorm slots start fresh: TENT's optimizer state is not the training's. */
static void bn_fresh_slots(tlearn_model *m)
{
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i]->ops->kind == TLEARN_LAYER_BATCHNORM)
            for (int p = 0; p < m->layers[i]->nparam; p++) {
                tl_slot *s = &m->lstate[i].slot[p];
                tl_free(s->m1);
                tl_free(s->m2);
                s->m1 = s->m2 = NULL;
                s->step = 0;
                s->opt_kind = 0;
            }
}

static void set_frozen(tlearn_model *m, const int *frozen)
{
    for (int i = 0; i < m->nlayers; i++) /* packed: the layer's and its tensors' flags */
        tl_frozen_unpack(&m->lstate[i], frozen ? (unsigned)frozen[i]
                                               : m->layers[i]->ops->kind != TLEARN_LAYER_BATCHNORM);
    tl_plan_free(&m->plan_train);
    m->has_grads = 0;
    bn_fresh_slots(m);
}

size_t tl_da_bn_floats(const tlearn_model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i]->ops->kind == TLEARN_LAYER_BATCHNORM)
            for (int p = 0; p < m->layers[i]->nparam; p++)
                n += m->layers[i]->param[p].t.numel;
    return n;
}

/* Room for TENT's snapshot (both arrays or neither). */
static int tent_alloc(const char *fn, const tlearn_model *m, struct tl_da *da)
{
    da->tent_saved = tl_alloc_array(tl_da_bn_floats(m), sizeof(float));
    da->tent_frozen = tl_alloc_array((size_t)m->nlayers, sizeof(int));
    if (!da->tent_saved || !da->tent_frozen) {
        tl_free(da->tent_saved);
        tl_free(da->tent_frozen);
        da->tent_saved = NULL;
        da->tent_frozen = NULL;
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for TENT's snapshot", fn);
    }
    return TLEARN_OK;
}

static int tent_begin(const char *fn, tlearn_model *m, struct tl_da *da)
{
    int rc = tent_alloc(fn, m, da);
    if (rc)
        return rc;
    bn_tensors(m, da->tent_saved, 1);
    for (int i = 0; i < m->nlayers; i++)
        da->tent_frozen[i] = (int)tl_frozen_pack(&m->lstate[i]);
    da->tent_layers = m->nlayers;
    da->tent = 1;
    set_frozen(m, NULL);
    return TLEARN_OK;
}

static int tent_restore(const char *fn, tlearn_model *m, struct tl_da *da)
{
    if (m->nlayers != da->tent_layers)
        return tl_fail(TLEARN_ESTATE, "%s: the model changed since adaptation began (%d layers, "
                       "was %d); cannot restore", fn, m->nlayers, da->tent_layers);
    for (int i = 0; i < m->nlayers; i++) /* copy on write of shared BatchNorm tensors */
        for (int p = 0; m->layers[i]->ops->kind == TLEARN_LAYER_BATCHNORM &&
                        p < m->layers[i]->nparam; p++) {
            int rc = tl_model_own_param(m, i, p);
            if (rc)
                return tl_fail_prefix(rc, "%s: ", fn);
        }
    bn_tensors(m, da->tent_saved, 0);
    set_frozen(m, da->tent_frozen);
    tl_free(da->tent_saved);
    tl_free(da->tent_frozen);
    da->tent_saved = NULL;
    da->tent_frozen = NULL;
    da->tent = 0;
    int rc = tl_model_sync_slots(m, 0);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

/* Mean entropy of softmax(z) over the rows; gradient dH/dz = -p (log p + H_row) / n. */
static double entropy(const float *z, size_t n, int classes, float *dz)
{
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float *r = z + i * (size_t)classes;
        double mx = r[0], s = 0.0, h = 0.0;
        for (int j = 1; j < classes; j++)
            mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < classes; j++)
            s += exp(r[j] - mx);
        double lse = mx + log(s);
        for (int j = 0; j < classes; j++) {
            double lp = r[j] - lse;
            h -= exp(lp) * lp;
        }
        total += h;
        if (dz)
            for (int j = 0; j < classes; j++) {
                double lp = r[j] - lse;
                dz[i * (size_t)classes + j] = (float)(-exp(lp) * (lp + h) / (double)n);
            }
    }
    return total / (double)n;
}

int tlearn_model_tent_step(tlearn_model *m, tlearn_optim *o, const void *const *inputs,
                           int ninputs, size_t n, float *entropy_out)
{
    static const char fn[] = "tlearn_model_tent_step";
    tl_feed feed;
    int rc = check_step(fn, m, o, inputs, ninputs, n, &feed);
    if (rc)
        return rc;
    size_t channels;
    if (bn_count(m, &channels) == 0)
        return tl_fail(TLEARN_ESTATE, "%s: the model has no BatchNorm layer to adapt", fn);
    int out = tl_model_output(m, 0);
    size_t classes = tl_shape_size(m->layers[out]->out);
    if (classes < 2)
        return tl_fail(TLEARN_ESHAPE, "%s: output 0 ('%s') has %zu values; entropy needs >= 2",
                       fn, m->layers[out]->name, classes);
    struct tl_da *da = da_get(fn, m);
    if (!da)
        return TLEARN_ENOMEM;
    int began = !da->tent;
    if (began && (rc = tent_begin(fn, m, da)))
        return rc;
    rc = tl_model_sync_slots(m, 1);
    int first = tl_model_first_trainable(m);
    if (!rc)
        rc = tl_model_plan(m, &m->plan_train, n, first, 0);
    if (rc) {
        rc = tl_fail_prefix(rc, "%s: ", fn);
    } else {
        tl_plan *p = &m->plan_train;
        tl_model_forward(m, p, &feed, n, 1, 0, out);
        double h = entropy(p->out[out], n, (int)classes, p->dout[out]);
        if (!isfinite((float)h))
            rc = tl_fail(TLEARN_ENONFINITE, "%s: the entropy is %g; weights unchanged", fn, h);
        else {
            if (p->dout[out])
                tl_model_backward(m, p, &feed, n, 0, &out, 1, NULL);
            rc = finish_step(fn, m, o, n, h, 1, entropy_out);
        }
    }
    if (rc && began) { /* a failed first step leaves the model as it was */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tlearn_errmsg());
        tent_restore(fn, m, da);
        tl_fail(rc, "%s", msg);
    }
    return rc;
}

int tlearn_model_tent_reset(tlearn_model *m)
{
    static const char fn[] = "tlearn_model_tent_reset";
    TL_CHECK_MODEL(fn, m);
    if (!m->da || !m->da->tent)
        return TLEARN_OK;
    return tent_restore(fn, m, m->da);
}

/* ---- checkpoints (io/ writes and reads these settings as the DOMAIN section) ---- */

int tl_da_export(const tlearn_model *m, tl_da_state *s)
{
    const struct tl_da *da = m->da;
    memset(s, 0, sizeof *s);
    if (!da)
        return 0;
    /* What the step could not use is not kept (the loader would refuse it): losses of
     * output positions no longer declared, cross-entropy on an output redeclared to one
     * value, terms at layers removed since, a TENT snapshot of a model that has gained or
     * lost layers since (tlearn_model_tent_reset refuses it too). */
    int nout = tl_model_output_count(m);
    for (int k = 0; k < nout; k++) {
        int ce_ok = tl_shape_size(m->layers[tl_model_output(m, k)]->out) >= 2;
        if (da->loss[k] && (da->loss[k] != TLEARN_LOSS_SOFTMAX_CE || ce_ok)) {
            s->loss[k] = da->loss[k];
            s->weight[k] = da->weight[k];
            s->noutputs = k + 1;
        }
    }
    for (int t = 0; t < da->nterms; t++) {
        if (tl_model_find(m, da->term[t].layer) < 0)
            continue;
        memcpy(s->term_layer[s->nterms], da->term[t].layer, TL_NAME_MAX);
        s->term_kind[s->nterms] = da->term[t].kind;
        s->term_weight[s->nterms++] = da->term[t].weight;
    }
    s->nmult = da->nmult;
    memcpy(s->mult, da->mult, sizeof s->mult);
    if (da->tent && da->tent_layers == m->nlayers) {
        s->tent = 1;
        s->tent_layers = da->tent_layers;
        s->tent_frozen = da->tent_frozen;
        s->tent_saved = da->tent_saved;
        s->tent_floats = tl_da_bn_floats(m);
    }
    return s->noutputs || s->nterms || s->nmult || s->tent;
}

int tl_da_import(const char *fn, tlearn_model *m, const tl_da_state *s)
{
    int rc = TLEARN_OK;
    for (int k = 0; !rc && k < s->noutputs; k++)
        if (s->loss[k])
            rc = tlearn_model_set_output_loss(m, k, s->loss[k], s->weight[k]);
    for (int t = 0; !rc && t < s->nterms; t++) {
        if (!(s->term_weight[t] > 0.0f))
            return tl_fail(TLEARN_EFORMAT, "%s: discrepancy %d: weight %g, expected > 0", fn,
                           t, (double)s->term_weight[t]);
        rc = tlearn_model_set_discrepancy(m, s->term_layer[t], s->term_kind[t],
                                          s->term_weight[t]);
        if (!rc && m->da->nterms != t + 1)
            return tl_fail(TLEARN_EFORMAT, "%s: discrepancy %d ('%s', kind %d) appears twice",
                           fn, t, s->term_layer[t], s->term_kind[t]);
    }
    if (!rc && s->nmult)
        rc = tlearn_model_set_mmd_bandwidths(m, s->mult, s->nmult);
    if (rc)
        return tl_fail_prefix(rc == TLEARN_ENOMEM ? rc : TLEARN_EFORMAT, "%s: ", fn);
    if (!s->tent)
        return TLEARN_OK;
    size_t floats = tl_da_bn_floats(m);
    if (s->tent_layers != m->nlayers || s->tent_floats != floats || floats == 0)
        return tl_fail(TLEARN_EFORMAT, "%s: TENT's snapshot holds %d layers and %zu floats, the "
                       "model has %d layers and %zu BatchNorm floats", fn, s->tent_layers,
                       s->tent_floats, m->nlayers, floats);
    int rcv = tl_check_values(TLEARN_EFORMAT, fn, "TENT's snapshot", s->tent_saved, floats, 0);
    if (rcv)
        return rcv;
    struct tl_da *da = da_get(fn, m);
    if (!da)
        return TLEARN_ENOMEM;
    if ((rcv = tent_alloc(fn, m, da)))
        return rcv;
    memcpy(da->tent_saved, s->tent_saved, floats * sizeof(float));
    memcpy(da->tent_frozen, s->tent_frozen, (size_t)m->nlayers * sizeof(int));
    da->tent_layers = m->nlayers;
    da->tent = 1;
    return TLEARN_OK;
}
