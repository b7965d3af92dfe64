/* Metrics over a labelled set in evaluation mode (chunked, threaded inference): loss,
 * accuracy, top-k accuracy, argmax predictions for a confusion matrix, and regression
 * errors. Per-worker sums are added in worker order, so results do not depend on timing. */
#include <math.h>
#include <string.h>

#include "metrics.h"

typedef struct cls_ctx {
    const int32_t *labels;
    const float *targets;
    int classes, k, output;
    const tlearn_model *m;
    int32_t *pred;     /* argmax per example; may be NULL */
    tl_eval *sums;     /* per worker */
} cls_ctx;

static void cls_chunk(void *ctx, int worker, size_t start, size_t n, float *const *outs)
{
    const cls_ctx *c = ctx;
    const float *z = outs[c->output];
    tl_eval *s = &c->sums[worker];
    double den;
    s->count += (double)n;
    s->loss += tl_loss_ce_sum(c->m, z, c->labels + start, n, c->classes, NULL, &den);
    s->den += den;
    for (size_t i = 0; i < n; i++, z += c->classes) {
        int y = c->labels[start + i], arg = 0, above = 0;
        for (int j = 1; j < c->classes; j++)
            arg = z[j] > z[arg] ? j : arg; /* the first maximum, as torch.argmax */
        for (int j = 0; j < c->classes; j++)
            above += z[j] > z[y];
        s->hits += arg == y;
        s->topk += above < c->k;
        if (c->pred)
            c->pred[start + i] = arg;
    }
}

static void reg_chunk(void *ctx, int worker, size_t start, size_t n, float *const *outs)
{
    const cls_ctx *c = ctx;
    const float *z = outs[c->output];
    const float *t = c->targets + start * (size_t)c->classes;
    tl_eval *s = &c->sums[worker];
    for (size_t i = 0; i < n * (size_t)c->classes; i++) {
        double d = (double)z[i] - t[i];
        s->loss += d * d;
        s->abs += fabs(d);
    }
    s->den += (double)(n * (size_t)c->classes);
    s->count += (double)n;
}

int tl_eval_run(const char *fn, tlearn_model *m, const float *x, const int32_t *labels,
                const float *targets, size_t n, int k, int32_t *pred, tl_eval *out)
{
    tl_eval sums[TL_MAX_WORKERS];
    memset(sums, 0, sizeof sums);
    cls_ctx c = {labels, targets, (int)tl_model_output_size(m), k, tl_model_output(m, 0), m,
                 pred, sums};
    tl_feed f = tl_model_feed(m, x);
    int rc = tl_model_infer(m, &f, n, 0, c.output, 0, labels ? cls_chunk : reg_chunk, &c);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    memset(out, 0, sizeof *out);
    for (int w = 0; w < TL_MAX_WORKERS; w++) {
        out->loss += sums[w].loss;
        out->den += sums[w].den;
        out->abs += sums[w].abs;
        out->hits += sums[w].hits;
        out->topk += sums[w].topk;
        out->count += sums[w].count;
    }
    if (tl_reduce_wants(m, TLEARN_REDUCE_EVALUATE)) { /* over every worker's examples */
        float v[6] = {(float)out->loss, (float)out->den, (float)out->abs, (float)out->hits,
                      (float)out->topk, (float)out->count};
        if ((rc = tl_reduce_floats(fn, m, v, 6, "the evaluation sums")))
            return rc;
        *out = (tl_eval){v[0], v[1], v[2], v[3], v[4], v[5]};
    }
    out->abs /= out->den;
    out->loss /= out->den;
    if (!isfinite(out->loss))
        return tl_fail(TLEARN_ENONFINITE, "%s: the loss is not finite", fn);
    return TLEARN_OK;
}

int tl_eval_confusion(const char *fn, tlearn_model *m, const int32_t *labels,
                      const int32_t *pred, size_t n, size_t classes, int64_t *cm)
{
    memset(cm, 0, classes * classes * sizeof *cm);
    for (size_t i = 0; i < n; i++)
        cm[(size_t)labels[i] * classes + (size_t)pred[i]]++;
    if (!tl_reduce_wants(m, TLEARN_REDUCE_EVALUATE))
        return TLEARN_OK;
    float *v = tl_alloc_array(classes * classes, sizeof *v);
    if (!v)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    for (size_t i = 0; i < classes * classes; i++)
        v[i] = (float)cm[i];
    int rc = tl_reduce_floats(fn, m, v, classes * classes, "the confusion matrix");
    for (size_t i = 0; i < classes * classes && !rc; i++)
        cm[i] = (int64_t)v[i];
    tl_free(v);
    return rc;
}

void tl_class_scores(const int64_t *cm, int classes, int c, double *p, double *r, double *f1)
{
    int64_t tp = cm[(size_t)c * classes + c], predicted = 0, actual = 0;
    for (int j = 0; j < classes; j++) {
        predicted += cm[(size_t)j * classes + c];
        actual += cm[(size_t)c * classes + j];
    }
    *p = predicted ? (double)tp / (double)predicted : 0.0;
    *r = actual ? (double)tp / (double)actual : 0.0;
    *f1 = *p + *r > 0 ? 2 * *p * *r / (*p + *r) : 0.0;
}

int tlearn_model_evaluate_classes(tlearn_model *m, const float *x, const int32_t *labels,
                                  size_t n, int k, float *topk, int64_t *confusion,
                                  float *precision, float *recall, float *f1, size_t classes)
{
    static const char fn[] = "tlearn_model_evaluate_classes";
    int rc = tl_train_check_batch(fn, m, x, labels, n);
    if (rc)
        return rc;
    size_t osz = tl_model_output_size(m);
    if (m->loss_kind != TLEARN_LOSS_SOFTMAX_CE)
        return tl_fail(TLEARN_ESTATE, "%s: the model's loss is not cross-entropy", fn);
    if (classes != osz)
        return tl_fail(TLEARN_ESHAPE, "%s: classes is %zu, the model has %zu outputs", fn,
                       classes, osz);
    if (k < 1 || (size_t)k > osz)
        return tl_fail(TLEARN_EINVAL, "%s: k is %d, must be in 1..%zu", fn, k, osz);
    if ((rc = tl_check_labels(fn, labels, n, (int)osz)) || (rc = tl_loss_check(fn, m, osz)))
        return rc;
    int32_t *pred = tl_alloc_array(n, sizeof *pred);
    int64_t *cm = tl_alloc_array(osz * osz, sizeof *cm);
    tl_eval e;
    if (!pred || !cm)
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    if (!rc)
        rc = tl_eval_run(fn, m, x, labels, NULL, n, k, pred, &e);
    if (!rc)
        rc = tl_eval_confusion(fn, m, labels, pred, n, osz, cm);
    if (!rc) {
        if (topk)
            *topk = (float)(e.topk / e.count);
        if (confusion)
            memcpy(confusion, cm, osz * osz * sizeof *cm);
        for (size_t c = 0; c < osz; c++) {
            double p, r, f;
            tl_class_scores(cm, (int)osz, (int)c, &p, &r, &f);
            if (precision)
                precision[c] = (float)p;
            if (recall)
                recall[c] = (float)r;
            if (f1)
                f1[c] = (float)f;
        }
    }
    tl_free(pred);
    tl_free(cm);
    return rc;
}

int tlearn_model_evaluate_regression(tlearn_model *m, const float *x, const float *targets,
                                     size_t n, float *mse, float *mae)
{
    static const char fn[] = "tlearn_model_evaluate_regression";
    int rc = tl_train_check_batch(fn, m, x, targets, n);
    if (rc)
        return rc;
    size_t total = n * tl_model_output_size(m);
    for (size_t i = 0; i < total; i++)
        if (!isfinite(targets[i]))
            return tl_fail(TLEARN_EINVAL, "%s: targets[%zu] is not finite", fn, i);
    tl_eval e;
    if ((rc = tl_eval_run(fn, m, x, NULL, targets, n, 1, NULL, &e)))
        return rc;
    if (mse)
        *mse = (float)e.loss;
    if (mae)
        *mae = (float)e.abs;
    return TLEARN_OK;
}
