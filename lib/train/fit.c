/* tlearn_model_fit_run: epochs of (accumulated) updates with validation metrics, early
 * stopping on a monitored metric, best weights kept and saved, gradual unfreezing, and a
 * per-epoch record for the host. Everything is checked before the first step. */
#include <math.h>
#include <string.h>

#include "metrics.h"

#define FIT_NPARAM 10
#define NMETRIC 10

struct tlearn_fit {
    double p[FIT_NPARAM + 1];
    const float *vx;
    const void *vy;
    size_t vx_len, vy_len, vn;
    char *path;
    tlearn_progress_fn progress;
    tlearn_epoch_fn on_epoch;
    void *user;
};

struct tlearn_epoch {
    int epoch, epochs;
    double v[NMETRIC + 1];
    int have[NMETRIC + 1];
};

static const struct {
    const char *name;
    double lo, hi, def;
} FPARAM[FIT_NPARAM + 1] = {
    [TLEARN_FIT_BATCH] = {"batch", 1, 1e12, 32},
    [TLEARN_FIT_EPOCHS] = {"epochs", 1, 1e9, 1},
    [TLEARN_FIT_SHUFFLE] = {"shuffle", 0, 1, 1},
    [TLEARN_FIT_ACCUMULATE] = {"accumulate", 1, 1e9, 1},
    [TLEARN_FIT_MONITOR] = {"monitor", 0, NMETRIC, 0},
    [TLEARN_FIT_PATIENCE] = {"patience", 0, 1e9, 0},
    [TLEARN_FIT_MIN_DELTA] = {"min_delta", 0, 1e300, 0},
    [TLEARN_FIT_RESTORE_BEST] = {"restore_best", 0, 1, 0},
    [TLEARN_FIT_GRADUAL_UNFREEZE] = {"gradual_unfreeze", 0, 1, 0},
    [TLEARN_FIT_TOP_K] = {"top_k", 1, 1e9, 5},
};

int tlearn_fit_create(tlearn_fit **out)
{
    if (!out)
        return tl_fail(TLEARN_EINVAL, "tlearn_fit_create: out is NULL");
    tlearn_fit *f = tl_alloc_zero(sizeof *f);
    if (!(*out = f))
        return tl_fail(TLEARN_ENOMEM, "tlearn_fit_create: out of memory");
    for (int p = 1; p <= FIT_NPARAM; p++)
        f->p[p] = FPARAM[p].def;
    return TLEARN_OK;
}

void tlearn_fit_destroy(tlearn_fit **f)
{
    if (!f || !*f)
        return;
    tl_free((*f)->path);
    tl_free(*f);
    *f = NULL;
}

int tlearn_fit_set(tlearn_fit *f, int param, double v)
{
    static const char fn[] = "tlearn_fit_set";
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: options are NULL", fn);
    if (param < 1 || param > FIT_NPARAM)
        return tl_fail(TLEARN_EINVAL, "%s: unknown option %d", fn, param);
    const char *name = FPARAM[param].name;
    if (!(v >= FPARAM[param].lo && v <= FPARAM[param].hi))
        return tl_fail(TLEARN_EINVAL, "%s: %s is %g, must be in [%g, %g]", fn, name, v,
                       FPARAM[param].lo, FPARAM[param].hi);
    if (param != TLEARN_FIT_MIN_DELTA && v != floor(v))
        return tl_fail(TLEARN_EINVAL, "%s: %s is %g, must be a whole number", fn, name, v);
    f->p[param] = v;
    return TLEARN_OK;
}

int tlearn_fit_get(const tlearn_fit *f, int param, double *value)
{
    if (!f || !value || param < 1 || param > FIT_NPARAM)
        return tl_fail(TLEARN_EINVAL, "tlearn_fit_get: %s", !f ? "options are NULL" :
                       !value ? "value is NULL" : "unknown option");
    *value = f->p[param];
    return TLEARN_OK;
}

int tlearn_fit_set_validation(tlearn_fit *f, const float *x, size_t x_len, const void *y,
                              size_t y_len, size_t n)
{
    static const char fn[] = "tlearn_fit_set_validation";
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: options are NULL", fn);
    if ((!x || !y || n == 0) && (x || y || n))
        return tl_fail(TLEARN_EINVAL, "%s: x, y and n must all be set, or NULL, NULL, 0 to "
                       "remove the validation set", fn);
    f->vx = x;
    f->vy = y;
    f->vx_len = x_len;
    f->vy_len = y_len;
    f->vn = n;
    return TLEARN_OK;
}

int tlearn_fit_set_checkpoint(tlearn_fit *f, const char *path)
{
    static const char fn[] = "tlearn_fit_set_checkpoint";
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: options are NULL", fn);
    if (path && !*path)
        return tl_fail(TLEARN_EINVAL, "%s: path is empty", fn);
    char *copy = NULL;
    if (path && !(copy = tl_strdup(path)))
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    tl_free(f->path);
    f->path = copy;
    return TLEARN_OK;
}

int tlearn_fit_set_callbacks(tlearn_fit *f, tlearn_progress_fn progress,
                             tlearn_epoch_fn epoch_end, void *user)
{
    if (!f)
        return tl_fail(TLEARN_EINVAL, "tlearn_fit_set_callbacks: options are NULL");
    f->progress = progress;
    f->on_epoch = epoch_end;
    f->user = user;
    return TLEARN_OK;
}

int tlearn_epoch_get(const tlearn_epoch *e, int metric, double *value)
{
    static const char fn[] = "tlearn_epoch_get";
    if (!e || !value)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !e ? "epoch" : "value");
    if (metric < 1 || metric > NMETRIC)
        return tl_fail(TLEARN_EINVAL, "%s: unknown metric %d", fn, metric);
    if (!e->have[metric])
        return tl_fail(TLEARN_ENOTFOUND, "%s: metric %d is not computed in this run", fn,
                       metric);
    *value = e->v[metric];
    return TLEARN_OK;
}

int tlearn_epoch_index(const tlearn_epoch *e, int *epoch, int *epochs)
{
    if (!e)
        return tl_fail(TLEARN_EINVAL, "tlearn_epoch_index: epoch is NULL");
    if (epoch)
        *epoch = e->epoch;
    if (epochs)
        *epochs = e->epochs;
    return TLEARN_OK;
}

/* ------------------------------------------------------------------------------------ */

static void put(tlearn_epoch *e, int metric, double v)
{
    e->v[metric] = v;
    e->have[metric] = 1;
}

/* Labels (cross-entropy) or targets (MSE) of @p n examples, checked against the model. */
static int check_y(const char *fn, const char *what, tlearn_model *m, const void *y, size_t n)
{
    size_t osz = tl_model_output_size(m);
    if (m->loss_kind != TLEARN_LOSS_SOFTMAX_CE && m->loss_kind != TLEARN_LOSS_MSE)
        return tl_fail(TLEARN_ESTATE, "%s: the model's loss is contrastive, which has no "
                       "labels: train it with tlearn_model_train_step_pairs", fn);
    if (m->loss_kind == TLEARN_LOSS_SOFTMAX_CE) {
        if (osz < 2)
            return tl_fail(TLEARN_ESHAPE, "%s: cross-entropy needs >= 2 outputs, model has %zu",
                           fn, osz);
        int rc = tl_check_labels(fn, y, n, (int)osz);
        return rc ? tl_fail_prefix(rc, "%s: ", what) : tl_loss_check(fn, m, osz);
    }
    const float *t = y;
    for (size_t i = 0; i < n * osz; i++)
        if (!isfinite(t[i]))
            return tl_fail(TLEARN_EINVAL, "%s: %s targets[%zu] is not finite", fn, what, i);
    return TLEARN_OK;
}

/* Is @p metric computed in this run, and can it be monitored? */
static int check_monitor(const char *fn, const tlearn_fit *f, int ce)
{
    int mon = (int)f->p[TLEARN_FIT_MONITOR];
    if (!mon) {
        if (f->p[TLEARN_FIT_RESTORE_BEST] || f->path)
            return tl_fail(TLEARN_EINVAL, "%s: restoring or saving the best weights needs a "
                           "monitored metric (TLEARN_FIT_MONITOR)", fn);
        if (f->p[TLEARN_FIT_PATIENCE])
            return tl_fail(TLEARN_EINVAL, "%s: early stopping (patience %g) needs a monitored "
                           "metric (TLEARN_FIT_MONITOR)", fn, f->p[TLEARN_FIT_PATIENCE]);
        return TLEARN_OK;
    }
    if (mon >= TLEARN_METRIC_LR)
        return tl_fail(TLEARN_EINVAL, "%s: metric %d cannot be monitored", fn, mon);
    int val = mon >= TLEARN_METRIC_VAL_LOSS;
    if (val && !f->vn)
        return tl_fail(TLEARN_EINVAL, "%s: monitor %d is a validation metric but there is no "
                       "validation set (tlearn_fit_set_validation)", fn, mon);
    int ce_only = mon == TLEARN_METRIC_ACCURACY || mon == TLEARN_METRIC_VAL_ACCURACY ||
                  mon == TLEARN_METRIC_VAL_TOP_K || mon == TLEARN_METRIC_VAL_MACRO_F1;
    if (ce_only && !ce)
        return tl_fail(TLEARN_EINVAL, "%s: monitor %d is a classification metric, not computed "
                       "for an MSE model", fn, mon);
    if (mon == TLEARN_METRIC_VAL_MAE && ce)
        return tl_fail(TLEARN_EINVAL, "%s: monitor %d (MAE) is computed for MSE models only",
                       fn, mon);
    return TLEARN_OK;
}

static int has_params(const tl_layer *L)
{
    for (int p = 0; p < L->nparam; p++)
        if (!L->param[p].is_buffer)
            return 1;
    return 0;
}

/* Parameters and buffers, copied to or from @p buf (NULL: just count). */
static size_t snapshot(tlearn_model *m, float *buf, int restore)
{
    size_t off = 0;
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            tl_tensor *t = &m->layers[i]->param[p].t;
            if (buf && restore)
                memcpy(t->data, buf + off, t->numel * sizeof(float));
            else if (buf)
                memcpy(buf + off, t->data, t->numel * sizeof(float));
            off += t->numel;
        }
    return off;
}

static void unfreeze(tlearn_model *m, int layer)
{
    m->lstate[layer].frozen = 0;
    m->lstate[layer].frozen_params = 0;
    tl_plan_free(&m->plan_train); /* backward now reaches further */
    m->has_grads = 0;
}

typedef struct run {
    const char *fn;
    tlearn_model *m;
    tlearn_optim *o;
    const tlearn_fit *f;
    const float *x;
    const void *y;
    size_t n, in, osz, batch, steps, updates, accum;
    int ce;
    size_t *order;
    float *bx, *by, *acc;
} run;

/* Train accuracy from the outputs the last forward left in the training plan. */
static size_t hits_of(const run *r, const int32_t *labels, size_t k)
{
    const float *z = r->m->plan_train.out[tl_model_output(r->m, 0)];
    size_t hits = 0;
    for (size_t i = 0; i < k; i++, z += r->osz) {
        size_t arg = 0;
        for (size_t j = 1; j < r->osz; j++)
            arg = z[j] > z[arg] ? j : arg;
        hits += (int32_t)arg == labels[i];
    }
    return hits;
}

/* Gather batch @p s of the epoch's order into bx/by; returns its size. */
static size_t gather(const run *r, size_t s)
{
    size_t k = s + 1 < r->steps ? r->batch : r->n - s * r->batch;
    size_t ysz = r->ce ? 1 : r->osz;
    for (size_t i = 0; i < k; i++) {
        size_t src = r->order[s * r->batch + i];
        memcpy(r->bx + i * r->in, r->x + src * r->in, sizeof(float) * r->in);
        memcpy(r->by + i * ysz, (const float *)r->y + src * ysz, sizeof(float) * ysz);
    }
    return k;
}

/* One update from batches [s0, s1): a plain step, or gradients accumulated with weights
 * k_i / (their total) so that the update sees the mean over all their examples. */
static int update(run *r, size_t s0, size_t s1, double *loss, size_t *count, size_t *hits)
{
    const int32_t *lab = r->ce ? (const int32_t *)r->by : NULL;
    const float *tgt = r->ce ? NULL : r->by;
    if (s1 - s0 == 1) {
        size_t k = gather(r, s0);
        float l;
        int rc = tl_train_step(r->fn, r->m, r->o, r->bx, lab, tgt, k, &l);
        if (rc)
            return rc;
        *loss = l;
        *count = k;
        *hits = r->ce ? hits_of(r, lab, k) : 0;
        return TLEARN_OK;
    }
    tlearn_model *m = r->m;
    size_t total = 0;
    for (size_t s = s0; s < s1; s++)
        total += s + 1 < r->steps ? r->batch : r->n - s * r->batch;
    double sum = 0;
    *hits = 0;
    for (size_t s = s0; s < s1; s++) {
        size_t k = gather(r, s);
        double l;
        int rc = tl_train_backward(r->fn, m, r->bx, lab, tgt, k, &l);
        if (rc)
            return rc;
        sum += l * (double)k;
        if (r->ce)
            *hits += hits_of(r, lab, k);
        float w = (float)((double)k / (double)total);
        size_t off = 0;
        for (int i = 0; i < m->nlayers; i++)
            for (int p = 0; p < m->layers[i]->nparam; p++) {
                const float *g = m->lstate[i].slot[p].grad;
                size_t numel = m->layers[i]->param[p].t.numel;
                if (!g || !tl_param_trains(m, i, p))
                    continue;
                float *a = r->acc + off;
                if (s == s0)
                    for (size_t j = 0; j < numel; j++)
                        a[j] = w * g[j];
                else
                    for (size_t j = 0; j < numel; j++)
                        a[j] += w * g[j];
                off += numel;
            }
    }
    size_t off = 0; /* the mean gradient goes back into the slots for the update */
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            float *g = m->lstate[i].slot[p].grad;
            size_t numel = m->layers[i]->param[p].t.numel;
            if (!g || !tl_param_trains(m, i, p))
                continue;
            memcpy(g, r->acc + off, numel * sizeof *g);
            off += numel;
        }
    int rc = tl_train_apply(r->fn, m, r->o);
    if (rc)
        return rc;
    *loss = sum / (double)total + (tl_ewc_active(m) ? tl_ewc_penalty(m) : 0.0);
    *count = total;
    return TLEARN_OK;
}

static int check_run(run *r, const tlearn_fit *f)
{
    const char *fn = r->fn;
    tlearn_model *m = r->m;
    TL_CHECK_MODEL(fn, m);
    if (!r->o || !f || !r->x || !r->y)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !r->o ? "optimizer" : !f ?
                       "options" : !r->x ? "x" : "y");
    if (m->nlayers == 0)
        return tl_fail(TLEARN_ESHAPE, "%s: the model has no layers", fn);
    int rc = tl_model_check_single_input(fn, m);
    if (rc)
        return rc;
    r->in = tl_shape_size(m->inputs[0].shape);
    r->osz = tl_model_output_size(m);
    r->ce = m->loss_kind == TLEARN_LOSS_SOFTMAX_CE;
    if (r->n == 0 || r->n > (size_t)INT32_MAX / r->in)
        return tl_fail(TLEARN_EINVAL, "%s: n is %zu", fn, r->n);
    if ((rc = check_y(fn, "training", m, r->y, r->n)) || (rc = check_monitor(fn, f, r->ce)))
        return rc;
    if (f->vn) {
        size_t want_y = f->vn * (r->ce ? 1 : r->osz);
        if (f->vx_len != f->vn * r->in || f->vy_len != want_y)
            return tl_fail(TLEARN_ESHAPE, "%s: the validation set has %zu x values and %zu "
                           "y values for %zu examples; the model needs %zu and %zu", fn,
                           f->vx_len, f->vy_len, f->vn, f->vn * r->in, want_y);
        if ((rc = check_y(fn, "validation", m, f->vy, f->vn)))
            return rc;
    }
    r->batch = (size_t)f->p[TLEARN_FIT_BATCH] < r->n ? (size_t)f->p[TLEARN_FIT_BATCH] : r->n;
    r->steps = (r->n + r->batch - 1) / r->batch;
    r->accum = (size_t)f->p[TLEARN_FIT_ACCUMULATE] < r->steps ? (size_t)f->p[TLEARN_FIT_ACCUMULATE]
                                                              : r->steps;
    r->updates = (r->steps + r->accum - 1) / r->accum;
    return TLEARN_OK;
}

/* Validation metrics of the epoch into @p e. */
static int validate(run *r, tlearn_epoch *e, int32_t *pred, int64_t *cm)
{
    const tlearn_fit *f = r->f;
    tl_eval v;
    int k = (int)(f->p[TLEARN_FIT_TOP_K] < (double)r->osz ? f->p[TLEARN_FIT_TOP_K] : (double)r->osz);
    int rc = tl_eval_run(r->fn, r->m, f->vx, r->ce ? f->vy : NULL, r->ce ? NULL : f->vy, f->vn,
                         k, pred, &v);
    if (rc)
        return rc;
    put(e, TLEARN_METRIC_VAL_LOSS, v.loss);
    if (!r->ce) {
        put(e, TLEARN_METRIC_VAL_MAE, v.abs);
        return TLEARN_OK;
    }
    put(e, TLEARN_METRIC_VAL_ACCURACY, v.hits / v.count);
    put(e, TLEARN_METRIC_VAL_TOP_K, v.topk / v.count);
    if ((rc = tl_eval_confusion(r->fn, r->m, f->vy, pred, f->vn, r->osz, cm)))
        return rc;
    double f1sum = 0;
    for (size_t c = 0; c < r->osz; c++) {
        double p, rec, f1;
        tl_class_scores(cm, (int)r->osz, (int)c, &p, &rec, &f1);
        f1sum += f1;
    }
    put(e, TLEARN_METRIC_VAL_MACRO_F1, f1sum / (double)r->osz);
    return TLEARN_OK;
}

int tlearn_model_fit_run(tlearn_model *m, tlearn_optim *o, const tlearn_fit *f, const float *x,
                         const void *y, size_t n)
{
    run r = {"tlearn_model_fit_run", m, o, f, x, y, n, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL,
             NULL};
    const char *fn = r.fn;
    int rc = check_run(&r, f);
    if (rc)
        return rc;
    int epochs = (int)f->p[TLEARN_FIT_EPOCHS], mon = (int)f->p[TLEARN_FIT_MONITOR];
    int per_epoch = o->sched && o->sched->cfg.p[TLEARN_SCHED_UNIT] == TLEARN_SCHED_PER_EPOCH;
    tlearn_sched resolved;
    if (o->sched) { /* auto lengths from this run; the optimizer keeps them */
        resolved = o->sched->cfg;
        int64_t total = per_epoch ? epochs : (int64_t)epochs * (int64_t)r.updates;
        if ((rc = tl_sched_resolve(fn, &resolved, total)))
            return rc;
    }
    /* Gradual unfreezing: the layers with parameters frozen now, from the head back. */
    int ngroups = 0, *groups = NULL;
    if (f->p[TLEARN_FIT_GRADUAL_UNFREEZE] &&
        !(groups = tl_alloc_array((size_t)m->nlayers, sizeof *groups)))
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    for (int i = m->nlayers - 1; groups && i >= 0; i--)
        if (m->lstate[i].frozen && has_params(m->layers[i]))
            groups[ngroups++] = i;
    size_t ysz = r.ce ? 1 : r.osz, nparams = snapshot(m, NULL, 0);
    int keep_best = f->p[TLEARN_FIT_RESTORE_BEST] != 0;
    r.order = tl_alloc_array(n, sizeof *r.order);
    r.bx = tl_alloc_array(r.batch * r.in, sizeof(float));
    r.by = tl_alloc_array(r.batch * ysz, sizeof(float));
    r.acc = r.accum > 1 ? tl_alloc_array(nparams, sizeof(float)) : NULL;
    float *best = keep_best ? tl_alloc_array(nparams, sizeof(float)) : NULL;
    int32_t *pred = f->vn && r.ce ? tl_alloc_array(f->vn, sizeof *pred) : NULL;
    int64_t *cm = f->vn && r.ce ? tl_alloc_array(r.osz * r.osz, sizeof *cm) : NULL;
    if (!r.order || !r.bx || !r.by || (r.accum > 1 && !r.acc) || (keep_best && !best) ||
        (f->vn && r.ce && (!pred || !cm)))
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    if (!rc && o->sched)
        o->sched->cfg = resolved;
    for (size_t i = 0; r.order && i < n; i++)
        r.order[i] = i;
    double best_v = 0;
    int best_epoch = -1, wait = 0;
    for (int e = 0; e < epochs && !rc; e++) {
        tlearn_epoch rec;
        memset(&rec, 0, sizeof rec);
        rec.epoch = e;
        rec.epochs = epochs;
        if (e > 0 && e <= ngroups)
            unfreeze(m, groups[e - 1]);
        int trainable = 0;
        for (int i = 0; i < m->nlayers; i++)
            trainable += !m->lstate[i].frozen && has_params(m->layers[i]);
        put(&rec, TLEARN_METRIC_TRAINABLE_LAYERS, trainable);
        if (f->p[TLEARN_FIT_SHUFFLE])
            for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
                size_t j = (size_t)tl_rng_below(&m->rng, i + 1), t = r.order[i];
                r.order[i] = r.order[j];
                r.order[j] = t;
            }
        double loss_sum = 0;
        size_t hits = 0;
        for (size_t u = 0; u < r.updates && !rc; u++) {
            size_t s0 = u * r.accum, s1 = s0 + r.accum < r.steps ? s0 + r.accum : r.steps;
            double l;
            size_t count, h;
            if ((rc = update(&r, s0, s1, &l, &count, &h)))
                break;
            loss_sum += l * (double)count;
            hits += h;
            if (f->progress && f->progress(e, epochs, u, r.updates, (float)l, f->user))
                rc = tl_fail(TLEARN_ECANCELED, "%s: stopped by the progress callback at epoch "
                             "%d, update %zu", fn, e, u);
        }
        if (rc)
            break;
        tl_sched_advance(o, TLEARN_SCHED_PER_EPOCH);
        put(&rec, TLEARN_METRIC_LOSS, loss_sum / (double)n);
        if (r.ce) { /* over every worker's examples when asked, as validation is */
            float v[2] = {(float)hits, (float)n};
            if (tl_reduce_wants(m, TLEARN_REDUCE_EVALUATE) &&
                (rc = tl_reduce_floats(fn, m, v, 2, "the training accuracy")))
                break;
            put(&rec, TLEARN_METRIC_ACCURACY, (double)v[0] / (double)v[1]);
        }
        double lr, mom, b1;
        tl_optim_current(o, &lr, &mom, &b1);
        put(&rec, TLEARN_METRIC_LR, lr);
        if (f->vn && (rc = validate(&r, &rec, pred, cm)))
            break;
        if (mon) {
            double v = rec.v[mon];
            int maximise = mon == TLEARN_METRIC_ACCURACY || mon == TLEARN_METRIC_VAL_ACCURACY ||
                           mon == TLEARN_METRIC_VAL_TOP_K || mon == TLEARN_METRIC_VAL_MACRO_F1;
            double d = f->p[TLEARN_FIT_MIN_DELTA];
            int better = best_epoch < 0 || (maximise ? v - d > best_v : v + d < best_v);
            put(&rec, TLEARN_METRIC_IMPROVED, better);
            if (better) {
                best_v = v;
                best_epoch = e;
                wait = 0;
                if (best)
                    snapshot(m, best, 0);
                if (f->path && (rc = tlearn_model_save(m, o, f->path, TLEARN_SAVE_FULL))) {
                    rc = tl_fail_prefix(rc, "%s: saving the best checkpoint: ", fn);
                    break;
                }
            } else {
                wait++;
            }
        }
        if (f->on_epoch && f->on_epoch(&rec, f->user)) {
            rc = tl_fail(TLEARN_ECANCELED, "%s: stopped by the epoch callback after epoch %d",
                         fn, e);
            break;
        }
        if (f->p[TLEARN_FIT_PATIENCE] && wait >= (int)f->p[TLEARN_FIT_PATIENCE])
            break; /* early stopping */
    }
    if ((rc == TLEARN_OK || rc == TLEARN_ECANCELED) && best && best_epoch >= 0)
        snapshot(m, best, 1);
    tl_free(groups);
    tl_free(r.order);
    tl_free(r.bx);
    tl_free(r.by);
    tl_free(r.acc);
    tl_free(best);
    tl_free(pred);
    tl_free(cm);
    return rc;
}
