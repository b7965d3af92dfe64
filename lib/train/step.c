/* The training step: forward, loss (+ penalty), backward down to the first trainable layer,
 * one fused optimizer pass, then commit of batch statistics. Also evaluate and fit. */
#include <math.h>
#include <string.h>

#include "train.h"

int tl_model_sync_slots(tlearn_model *m, int alloc_grads)
{
    for (int i = 0; i < m->nlayers; i++) {
        tl_layer *L = m->layers[i];
        tl_layer_state *st = &m->lstate[i];
        for (int p = 0; p < L->nparam; p++) {
            tl_slot *s = &st->slot[p];
            if (L->param[p].is_buffer)
                continue;
            if (!tl_param_trains(m, i, p)) { /* frozen costs nothing: no gradient, no state */
                tl_free(s->grad);
                tl_free(s->m1);
                tl_free(s->m2);
                s->grad = s->m1 = s->m2 = NULL;
                s->step = 0;
                s->opt_kind = 0;
            } else if (alloc_grads) {
                /* training writes it: a tensor shared with other handles is copied first
                 * (a frozen one stays shared) */
                int rc = tl_model_own_param(m, i, p);
                if (rc)
                    return rc;
                if (!s->grad && !(s->grad = tl_alloc_array(L->param[p].t.numel, sizeof(float))))
                    return tl_fail(TLEARN_ENOMEM, "out of memory for gradients of '%s.%s'",
                                   L->name, L->param[p].name);
            }
        }
    }
    return TLEARN_OK;
}

static int check_batch(const char *fn, tlearn_model *m, const void *x, const void *targets,
                       size_t n)
{
    TL_CHECK_MODEL(fn, m);
    if (m->nlayers == 0)
        return tl_fail(TLEARN_ESHAPE, "%s: the model has no layers", fn);
    int rc = tl_model_check_single_input(fn, m);
    if (rc)
        return rc;
    if (!x)
        return tl_fail(TLEARN_EINVAL, "%s: x is NULL", fn);
    if (!targets)
        return tl_fail(TLEARN_EINVAL, "%s: labels/targets is NULL", fn);
    if (n == 0)
        return tl_fail(TLEARN_EINVAL, "%s: n is 0", fn);
    if (n > (size_t)INT32_MAX / tl_shape_size(m->inputs[0].shape))
        return tl_fail(TLEARN_EINVAL, "%s: n is %zu, too large", fn, n);
    return TLEARN_OK;
}

/* Layer kinds whose forward is the same per example whatever the batch (no batch
 * statistics, no random numbers, nothing saved when no backward runs through them). */
static int batch_independent(const tl_layer *L)
{
    switch (L->ops->kind) {
    case TLEARN_LAYER_CONV2D:
    case TLEARN_LAYER_DENSE:
    case TLEARN_LAYER_ACTIVATION:
    case TLEARN_LAYER_MAXPOOL2D:
    case TLEARN_LAYER_AVGPOOL2D:
    case TLEARN_LAYER_GLOBAL_AVGPOOL:
    case TLEARN_LAYER_FLATTEN:
    case TLEARN_LAYER_ADD:
    case TLEARN_LAYER_EMBEDDING:
    case TLEARN_LAYER_POSITION_EMBEDDING:
    case TLEARN_LAYER_ATTENTION:
    case TLEARN_LAYER_TOKEN_POOL:
    case TLEARN_LAYER_PATCH_EMBED:
        return 1;
    default:
        return 0;
    }
}

/* A frozen prefix [from, first) that backward never enters runs like inference
 * (tl_model_infer: cache-sized chunks, side by side on the model's threads), each chunk's
 * output copied into the training plan's buffer for layer first-1, which layer `first`
 * reads. Same results as one forward over the batch, for a fraction of the memory traffic.
 * Returns the layer the ordinary forward starts from (`from` when the prefix does not
 * qualify), or -1 when the inference workspace cannot be allocated (the message is set). */
static int frozen_prefix_chunked(tlearn_model *m, const tl_feed *x, size_t n, int from,
                                 int first, int want_dx)
{
    if (want_dx || first <= from || first >= m->nlayers)
        return from;
    for (int i = from; i < first; i++)
        if (!batch_independent(m->layers[i]))
            return from;
    if (tl_model_reader_across(m, first - 1) >= 0) /* the cut must stand for the prefix */
        return from;
    if (tl_model_infer_chunk(m, from, first - 1) >= n)
        return from;
    tl_chunk_dest c = {m->plan_train.out[first - 1], tl_shape_size(m->layers[first - 1]->out),
                       first - 1};
    if (tl_model_infer(m, x, n, from, first - 1, m->training, tl_chunk_copy, &c))
        return -1;
    return first;
}

/* What a step's loss compares output 0 with. */
typedef struct tl_target {
    const int32_t *labels; /* a class per example, or per position (tokens) */
    const float *values;   /* MSE targets */
    int tokens;            /* cross-entropy at every position over output 0's last axis */
    int32_t ignore;        /* tokens: positions of this label count for nothing */
    int pairs;             /* contrastive: rows i and n/2 + i are a pair, no labels */
} tl_target;

/* Rows (positions) and classes of output 0 for per-position cross-entropy. */
static size_t token_rows(const tlearn_model *m, int *classes)
{
    tl_shape s = m->layers[tl_model_output(m, 0)]->out;
    *classes = s.d[s.rank - 1];
    return tl_shape_size(s) / (size_t)*classes;
}

/* Forward + loss + backward from layer `from` (0, or i+1 for cached features of layer i;
 * @p in then holds those features). Leaves gradients in the slots and the data loss in
 * *loss. */
static int forward_backward(const char *fn, tlearn_model *m, const tl_feed *in,
                            const tl_target *t, size_t n, int from, float *dx, double *loss)
{
    int last = tl_model_output(m, 0);
    int rc = tl_model_sync_slots(m, 1);
    int first = tl_model_first_trainable(m);
    if (first < from)
        first = from;
    if (!rc)
        rc = tl_model_plan(m, &m->plan_train, n, dx ? 0 : first, dx != NULL);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    tl_plan *p = &m->plan_train;
    int start = frozen_prefix_chunked(m, in, n, from, first, dx != NULL);
    if (start < 0)
        return tl_fail_prefix(TLEARN_ENOMEM, "%s: ", fn);
    tl_feed mid = start > from ? tl_feed_one(p->out[start - 1], 0) : *in;
    /* With a reducer (reduce.c) forward may sum batch statistics across workers and
     * backward hands each layer's gradients on as it goes; a worker whose loss is not
     * finite still takes part, so that all refuse together. */
    if ((rc = tl_reduce_begin(fn, m)))
        return rc;
    tl_model_forward(m, p, &mid, n, m->training, start, last);
    float *logits = p->out[last];
    float *dlogits = p->dout[last];
    size_t osz = tl_shape_size(m->layers[last]->out);
    double l;
    int classes;
    size_t rows = token_rows(m, &classes);
    if (t->tokens) {
        l = tl_loss_token_ce(logits, t->labels, n * rows, classes, t->ignore, dlogits);
    } else if (t->pairs) {
        l = tl_loss_contrastive(m->blas, logits, n / 2, osz, m->contrastive_tau,
                                m->loss_kind == TLEARN_LOSS_CONTRASTIVE_SYMMETRIC, m->pair_work,
                                dlogits);
    } else if (m->loss_kind == TLEARN_LOSS_SOFTMAX_CE) {
        double den; /* class weights, label smoothing */
        l = tl_loss_ce_sum(m, logits, t->labels, n, (int)osz, dlogits, &den) / den;
    } else {
        l = tl_loss_mse(logits, t->values, n, osz, dlogits);
    }
    if (isfinite((float)l) || m->reducer) {
        if (dlogits)
            tl_model_backward(m, p, in, n, from, &last, 1, dx);
        if ((rc = tl_reduce_end(fn, m, &l)))
            return rc;
    }
    if (!isfinite((float)l)) /* also a loss that overflows the float it is reported in */
        return tl_fail(TLEARN_ENONFINITE, "%s: the loss is %g; weights left unchanged", fn, l);
    *loss = l;
    return TLEARN_OK;
}

static const char *loss_name(int kind)
{
    return kind == TLEARN_LOSS_MSE ? "MSE" : kind == TLEARN_LOSS_SOFTMAX_CE ? "cross-entropy"
                                                                           : "contrastive";
}

/* Per-position labels: each a class of output 0's last axis or the ignore index, and not
 * all ignored (the mean would be over nothing). */
static int validate_tokens(const char *fn, tlearn_model *m, const tl_target *t, size_t n)
{
    if (m->loss_kind != TLEARN_LOSS_SOFTMAX_CE)
        return tl_fail(TLEARN_ESTATE, "%s: the model's loss is %s, not cross-entropy", fn,
                       loss_name(m->loss_kind));
    int classes;
    size_t rows = n * token_rows(m, &classes), counted = 0;
    if (classes < 2)
        return tl_fail(TLEARN_ESHAPE, "%s: cross-entropy needs >= 2 classes on the last axis "
                       "of '%s', which has %d", fn, m->layers[tl_model_output(m, 0)]->name,
                       classes);
    for (size_t i = 0; i < rows; i++) {
        if (t->labels[i] == t->ignore)
            continue;
        if (t->labels[i] < 0 || t->labels[i] >= classes)
            return tl_fail(TLEARN_EINVAL, "%s: labels[%zu] (example %zu, position %zu) is %d, "
                           "must be in 0..%d or ignore_index %d", fn, i, i / (rows / n),
                           i % (rows / n), (int)t->labels[i], classes - 1, (int)t->ignore);
        counted++;
    }
    if (!counted)
        return tl_fail(TLEARN_EINVAL, "%s: every label is ignore_index %d", fn, (int)t->ignore);
    return TLEARN_OK;
}

/* (anchor, positive) rows: a contrastive loss, an even batch with a negative per anchor,
 * and the loss's scratch grown here, before anything changes. */
static int validate_pairs(const char *fn, tlearn_model *m, size_t n)
{
    if (m->loss_kind != TLEARN_LOSS_CONTRASTIVE &&
        m->loss_kind != TLEARN_LOSS_CONTRASTIVE_SYMMETRIC)
        return tl_fail(TLEARN_ESTATE, "%s: the model's loss is %d, not TLEARN_LOSS_CONTRASTIVE "
                       "(3) or TLEARN_LOSS_CONTRASTIVE_SYMMETRIC (4): tlearn_model_set_loss", fn,
                       m->loss_kind);
    if (n % 2 || n < 4)
        return tl_fail(TLEARN_EINVAL, "%s: n is %zu; it must be even (anchors, then their "
                       "positives) and >= 4 (a negative per anchor)", fn, n);
    size_t need = tl_loss_contrastive_work(n / 2, tl_model_output_size(m));
    if (need > m->pair_cap) {
        float *w = tl_alloc_array(need, sizeof *w);
        if (!w)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory for the loss's %zu floats", fn,
                           need);
        tl_free(m->pair_work);
        m->pair_work = w;
        m->pair_cap = need;
    }
    return TLEARN_OK;
}

static int validate_targets(const char *fn, tlearn_model *m, const tl_target *t, size_t n)
{
    if (t->tokens)
        return validate_tokens(fn, m, t, n);
    if (t->pairs)
        return validate_pairs(fn, m, n);
    const int32_t *labels = t->labels;
    const float *targets = t->values;
    size_t osz = tl_model_output_size(m);
    if (labels) {
        if (m->loss_kind != TLEARN_LOSS_SOFTMAX_CE)
            return tl_fail(TLEARN_ESTATE, "%s: the model's loss is %s; %s", fn,
                           loss_name(m->loss_kind), m->loss_kind == TLEARN_LOSS_MSE ?
                           "use the _mse call" : "train it with tlearn_model_train_step_pairs");
        if (osz < 2)
            return tl_fail(TLEARN_ESHAPE, "%s: cross-entropy needs >= 2 outputs, model has %zu",
                           fn, osz);
        int rc = tl_loss_check(fn, m, osz);
        return rc ? rc : tl_check_labels(fn, labels, n, (int)osz);
    }
    if (m->loss_kind != TLEARN_LOSS_MSE)
        return tl_fail(TLEARN_ESTATE, "%s: the model's loss is %s, not MSE", fn,
                       loss_name(m->loss_kind));
    for (size_t i = 0; i < n * osz; i++)
        if (!isfinite(targets[i]))
            return tl_fail(TLEARN_EINVAL, "%s: targets[%zu] is not finite", fn, i);
    return TLEARN_OK;
}

static int apply_update(const char *fn, tlearn_model *m, tlearn_optim *o)
{
    /* A finite loss can still have an overflowing gradient, which must be refused before
     * any weight changes. With clipping the global norm does it (the sum of squares of
     * floats in double is finite exactly when every element is); without, a cheaper
     * finiteness pass over the gradients. */
    double sq = 0.0;
    int finite = 1;
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            tl_slot *s = &m->lstate[i].slot[p];
            if (!s->grad || !tl_param_trains(m, i, p))
                continue;
            size_t numel = m->layers[i]->param[p].t.numel;
            /* The largest |gradient| also lets the optimizer prove its update finite. */
            s->have_gbound = 0;
            if (o->clip_norm > 0) {
                double t = tl_sumsq(s->grad, numel, m->threads);
                sq += t;
                s->gbound = (float)(sqrt(t) * (1.0 + 1e-6)); /* max |g| <= ||g|| */
            } else if (finite) {
                s->gbound = tl_max_abs(s->grad, numel, m->threads);
                finite = isfinite(s->gbound);
            } else {
                continue;
            }
            s->have_gbound = isfinite(s->gbound);
        }
    double norm = sqrt(sq);
    if (!isfinite(norm) || !finite)
        return tl_fail(TLEARN_ENONFINITE, "%s: the gradient norm is %g; weights unchanged",
                       fn, finite ? norm : (double)INFINITY);
    float scale = 1.0f;
    if (o->clip_norm > 0) {
        /* torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), if < 1. */
        double coef = o->clip_norm / (norm + 1e-6);
        if (coef < 1.0)
            scale = (float)coef;
    }
    return tl_optim_step(fn, o, m, scale);
}

/* Running statistics the step would commit (batchnorm) must stay finite: inputs near the
 * float limit give a finite loss but an infinite batch variance. Checked before the update,
 * so that a refused step changes nothing. */
static int check_commit(const char *fn, const tlearn_model *m, size_t n, int from)
{
    for (int i = from; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        const float *saved = m->plan_train.saved[i];
        if (L->ops->commit_finite && saved && !L->ops->commit_finite(L, saved, n))
            return tl_fail(TLEARN_ENONFINITE, "%s: the running statistics of '%s' would become "
                           "non-finite; weights and statistics unchanged", fn, L->name);
    }
    return TLEARN_OK;
}

static int train_step(const char *fn, tlearn_model *m, tlearn_optim *o, const tl_feed *x,
                      const tl_target *t, size_t n, int from, float *loss)
{
    if (!o)
        return tl_fail(TLEARN_EINVAL, "%s: optimizer is NULL", fn);
    int rc = validate_targets(fn, m, t, n);
    if (rc)
        return rc;
    double l;
    rc = forward_backward(fn, m, x, t, n, from, NULL, &l);
    if (rc)
        return rc;
    double penalty = tl_ewc_active(m) ? tl_ewc_penalty(m) : 0.0;
    if (!isfinite((float)penalty) || !isfinite((float)(l + penalty))) /* as reported */
        return tl_fail(TLEARN_ENONFINITE, "%s: the EWC/L2-SP penalty is %g (loss %g); weights "
                       "unchanged", fn, penalty, l + penalty);
    if (m->training && (rc = check_commit(fn, m, n, from)))
        return rc;
    rc = apply_update(fn, m, o);
    if (rc)
        return rc;
    if (m->training)
        tl_model_commit(m, &m->plan_train, n, from);
    if (loss)
        *loss = (float)(l + penalty);
    return TLEARN_OK;
}

/* For other steps in train/ (adapt.c): the checks and update of the ordinary step. */
int tl_step_check_commit(const char *fn, const tlearn_model *m, size_t n, int from)
{
    return check_commit(fn, m, n, from);
}

int tl_step_apply_update(const char *fn, tlearn_model *m, tlearn_optim *o)
{
    return apply_update(fn, m, o);
}

int tlearn_model_train_step(tlearn_model *m, tlearn_optim *o, const float *x,
                            const int32_t *labels, size_t n, float *loss)
{
    static const char fn[] = "tlearn_model_train_step";
    int rc = check_batch(fn, m, x, labels, n);
    tl_feed f = rc ? (tl_feed){0} : tl_model_feed(m, x);
    tl_target t = {labels, NULL, 0, 0, 0};
    return rc ? rc : train_step(fn, m, o, &f, &t, n, 0, loss);
}

int tlearn_model_train_step_mse(tlearn_model *m, tlearn_optim *o, const float *x,
                                const float *targets, size_t n, float *loss)
{
    static const char fn[] = "tlearn_model_train_step_mse";
    int rc = check_batch(fn, m, x, targets, n);
    tl_feed f = rc ? (tl_feed){0} : tl_model_feed(m, x);
    tl_target t = {NULL, targets, 0, 0, 0};
    return rc ? rc : train_step(fn, m, o, &f, &t, n, 0, loss);
}

int tlearn_model_train_step_from(tlearn_model *m, tlearn_optim *o, const char *layer,
                                 const float *features, const int32_t *labels, size_t n,
                                 float *loss)
{
    static const char fn[] = "tlearn_model_train_step_from";
    int rc = check_batch(fn, m, features, labels, n);
    int i = 0;
    if (!rc)
        rc = tl_model_find_checked(fn, m, layer, &i);
    if (!rc)
        rc = tl_model_check_cut(fn, m, i);
    if (rc)
        return rc;
    for (int j = 0; j <= i; j++)
        if (!m->lstate[j].frozen && m->layers[j]->nparam > 0)
            return tl_fail(TLEARN_ESTATE, "%s: layer '%s' is not frozen; cached features of "
                           "'%s' need everything up to it frozen", fn, m->layers[j]->name, layer);
    tl_feed f = tl_feed_one(features, tl_shape_size(m->layers[i]->out));
    tl_target t = {labels, NULL, 0, 0, 0};
    return train_step(fn, m, o, &f, &t, n, i + 1, loss);
}

/* The shared part of the compute_gradients calls, after their checks of x and dx. */
static int compute_gradients(const char *fn, tlearn_model *m, const tl_feed *x,
                             const tl_target *t, size_t n, float *loss, float *dx)
{
    int rc = validate_targets(fn, m, t, n);
    if (rc)
        return rc;
    double l;
    rc = forward_backward(fn, m, x, t, n, 0, dx, &l);
    if (rc)
        return rc;
    if (loss)
        *loss = (float)(l + (tl_ewc_active(m) ? tl_ewc_penalty(m) : 0.0));
    return TLEARN_OK;
}

int tlearn_model_compute_gradients(tlearn_model *m, const float *x, const int32_t *labels,
                                   size_t n, float *loss, float *dx, size_t dx_len)
{
    static const char fn[] = "tlearn_model_compute_gradients";
    int rc = check_batch(fn, m, x, labels, n);
    if (rc)
        return rc;
    if (dx && dx_len != n * tl_shape_size(m->inputs[0].shape))
        return tl_fail(TLEARN_EINVAL, "%s: dx_len is %zu, expected %zu", fn, dx_len,
                       n * tl_shape_size(m->inputs[0].shape));
    tl_feed f = tl_model_feed(m, x);
    tl_target t = {labels, NULL, 0, 0, 0};
    return compute_gradients(fn, m, &f, &t, n, loss, dx);
}

typedef struct eval_sums {
    double loss, den; /* summed over inputs; the loss is loss / den */
    size_t hits;
} eval_sums;

typedef struct eval_ctx {
    const int32_t *labels;
    size_t classes;
    eval_sums *sums; /* per worker */
    int output;      /* layer */
    const tlearn_model *m;
} eval_ctx;

static void eval_chunk(void *ctx, int worker, size_t start, size_t k, float *const *outs)
{
    const eval_ctx *c = ctx;
    const float *logits = outs[c->output];
    size_t hits;
    double den;
    tl_loss_softmax_ce(logits, c->labels + start, k, (int)c->classes, NULL, &hits);
    c->sums[worker].loss += tl_loss_ce_sum(c->m, logits, c->labels + start, k,
                                           (int)c->classes, NULL, &den);
    c->sums[worker].den += den;
    c->sums[worker].hits += hits;
}

int tlearn_model_evaluate(tlearn_model *m, const float *x, const int32_t *labels, size_t n,
                          float *loss, float *accuracy)
{
    static const char fn[] = "tlearn_model_evaluate";
    int rc = check_batch(fn, m, x, labels, n);
    if (!rc)
        rc = validate_targets(fn, m, &(tl_target){labels, NULL, 0, 0, 0}, n);
    if (rc)
        return rc;
    /* Per worker sums, added in worker order: the result does not depend on timing. */
    eval_sums sums[TL_MAX_WORKERS] = {{0.0, 0.0, 0}};
    eval_ctx c = {labels, tl_model_output_size(m), sums, tl_model_output(m, 0), m};
    tl_feed f = tl_model_feed(m, x);
    rc = tl_model_infer(m, &f, n, 0, tl_model_output(m, 0), 0, eval_chunk, &c);
    double total = 0.0, den = 0.0, hits = 0.0, count = (double)n;
    for (int w = 0; w < TL_MAX_WORKERS; w++) {
        total += sums[w].loss;
        den += sums[w].den;
        hits += (double)sums[w].hits;
    }
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    if (tl_reduce_wants(m, TLEARN_REDUCE_EVALUATE)) { /* over every worker's examples */
        float v[4] = {(float)total, (float)hits, (float)n, (float)den};
        if ((rc = tl_reduce_floats(fn, m, v, 4, "the evaluation counts")))
            return rc;
        total = v[0], hits = v[1], count = v[2], den = v[3];
    }
    if (!isfinite(total))
        return tl_fail(TLEARN_ENONFINITE, "%s: the loss is not finite", fn);
    if (loss)
        *loss = (float)(total / den);
    if (accuracy)
        *accuracy = (float)(hits / count);
    return TLEARN_OK;
}

int tlearn_model_fit(tlearn_model *m, tlearn_optim *o, const float *x, const int32_t *labels,
                     size_t n, size_t batch, int epochs, int shuffle, tlearn_progress_fn progress,
                     void *user)
{
    static const char fn[] = "tlearn_model_fit";
    int rc = check_batch(fn, m, x, labels, n);
    if (rc)
        return rc;
    if (!o)
        return tl_fail(TLEARN_EINVAL, "%s: optimizer is NULL", fn);
    if (batch == 0)
        return tl_fail(TLEARN_EINVAL, "%s: batch is 0, must be >= 1", fn);
    if (epochs < 1)
        return tl_fail(TLEARN_EINVAL, "%s: epochs is %d, must be >= 1", fn, epochs);
    if (shuffle != 0 && shuffle != 1)
        return tl_fail(TLEARN_EINVAL, "%s: shuffle is %d, must be 0 or 1", fn, shuffle);
    rc = validate_targets(fn, m, &(tl_target){labels, NULL, 0, 0, 0}, n);
    if (rc)
        return rc;
    if (batch > n)
        batch = n;
    size_t in = tl_shape_size(m->inputs[0].shape);
    size_t *order = tl_alloc_array(n, sizeof *order);
    float *bx = tl_alloc_array(batch * in, sizeof *bx);
    int32_t *by = tl_alloc_array(batch, sizeof *by);
    if (!order || !bx || !by) {
        tl_free(order);
        tl_free(bx);
        tl_free(by);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for a batch", fn);
    }
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    size_t steps = (n + batch - 1) / batch;
    for (int e = 0; e < epochs && !rc; e++) {
        if (shuffle)
            for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
                size_t j = (size_t)tl_rng_below(&m->rng, i + 1), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        for (size_t s = 0; s < steps && !rc; s++) {
            size_t k = s + 1 < steps ? batch : n - s * batch;
            for (size_t i = 0; i < k; i++) {
                size_t src = order[s * batch + i];
                memcpy(bx + i * in, x + src * in, sizeof(float) * in);
                by[i] = labels[src];
            }
            float loss;
            tl_feed f = tl_model_feed(m, bx);
            tl_target t = {by, NULL, 0, 0, 0};
            rc = train_step(fn, m, o, &f, &t, k, 0, &loss);
            if (!rc && progress && progress(e, epochs, s, steps, loss, user))
                rc = tl_fail(TLEARN_ECANCELED, "%s: stopped by the progress callback at epoch "
                             "%d, step %zu", fn, e, s);
        }
    }
    tl_free(order);
    tl_free(bx);
    tl_free(by);
    return rc;
}

/* ---- several model inputs ---- */

/* tl_model_check_feed and the labels. */
static int check_inputs(const char *fn, tlearn_model *m, const void *const *inputs, int ninputs,
                        const int32_t *labels, size_t n, tl_feed *feed)
{
    int rc = tl_model_check_feed(fn, m, inputs, ninputs, n, feed);
    if (!rc && !labels)
        rc = tl_fail(TLEARN_EINVAL, "%s: labels is NULL", fn);
    return rc;
}

int tlearn_model_train_step_inputs(tlearn_model *m, tlearn_optim *o, const void *const *inputs,
                                   int ninputs, const int32_t *labels, size_t n, float *loss)
{
    static const char fn[] = "tlearn_model_train_step_inputs";
    tl_feed f;
    int rc = check_inputs(fn, m, inputs, ninputs, labels, n, &f);
    tl_target t = {labels, NULL, 0, 0, 0};
    return rc ? rc : train_step(fn, m, o, &f, &t, n, 0, loss);
}

/* dx of the multi-input gradient calls: the first input's gradient, so a float input. */
static int check_dx(const char *fn, const tlearn_model *m, const tl_feed *f, size_t n,
                    const float *dx, size_t dx_len)
{
    if (dx && m->inputs[0].dtype != TLEARN_DTYPE_FLOAT32)
        return tl_fail(TLEARN_EINVAL, "%s: dx is the gradient of the first model input, but "
                       "'%s' holds int32 (token ids have no gradient): pass NULL", fn,
                       m->inputs[0].name);
    if (dx && dx_len != n * f->size[0])
        return tl_fail(TLEARN_EINVAL, "%s: dx_len is %zu, expected %zu", fn, dx_len,
                       n * f->size[0]);
    return TLEARN_OK;
}

int tlearn_model_compute_gradients_inputs(tlearn_model *m, const void *const *inputs,
                                          int ninputs, const int32_t *labels, size_t n,
                                          float *loss, float *dx, size_t dx_len)
{
    static const char fn[] = "tlearn_model_compute_gradients_inputs";
    tl_feed f;
    int rc = check_inputs(fn, m, inputs, ninputs, labels, n, &f);
    if (rc)
        return rc;
    if ((rc = check_dx(fn, m, &f, n, dx, dx_len)))
        return rc;
    tl_target t = {labels, NULL, 0, 0, 0};
    return compute_gradients(fn, m, &f, &t, n, loss, dx);
}

int tlearn_model_train_step_tokens(tlearn_model *m, tlearn_optim *o, const void *const *inputs,
                                   int ninputs, const int32_t *labels, int32_t ignore_index,
                                   size_t n, float *loss)
{
    static const char fn[] = "tlearn_model_train_step_tokens";
    tl_feed f;
    int rc = check_inputs(fn, m, inputs, ninputs, labels, n, &f);
    tl_target t = {labels, NULL, 1, ignore_index, 0};
    return rc ? rc : train_step(fn, m, o, &f, &t, n, 0, loss);
}

int tlearn_model_compute_gradients_tokens(tlearn_model *m, const void *const *inputs,
                                          int ninputs, const int32_t *labels,
                                          int32_t ignore_index, size_t n, float *loss)
{
    static const char fn[] = "tlearn_model_compute_gradients_tokens";
    tl_feed f;
    int rc = check_inputs(fn, m, inputs, ninputs, labels, n, &f);
    tl_target t = {labels, NULL, 1, ignore_index, 0};
    return rc ? rc : compute_gradients(fn, m, &f, &t, n, loss, NULL);
}

int tlearn_model_train_step_pairs(tlearn_model *m, tlearn_optim *o, const void *const *inputs,
                                  int ninputs, size_t n, float *loss)
{
    static const char fn[] = "tlearn_model_train_step_pairs";
    tl_feed f;
    int rc = tl_model_check_feed(fn, m, inputs, ninputs, n, &f);
    tl_target t = {NULL, NULL, 0, 0, 1};
    return rc ? rc : train_step(fn, m, o, &f, &t, n, 0, loss);
}

int tlearn_model_compute_gradients_pairs(tlearn_model *m, const void *const *inputs,
                                         int ninputs, size_t n, float *loss, float *dx,
                                         size_t dx_len)
{
    static const char fn[] = "tlearn_model_compute_gradients_pairs";
    tl_feed f;
    int rc = tl_model_check_feed(fn, m, inputs, ninputs, n, &f);
    if (!rc)
        rc = check_dx(fn, m, &f, n, dx, dx_len);
    tl_target t = {NULL, NULL, 0, 0, 1};
    return rc ? rc : compute_gradients(fn, m, &f, &t, n, loss, dx);
}

/* ------------------------------------------------------------------------------------ */
/* Pieces of tlearn_model_fit_run (train/fit.c). */

int tl_train_check_batch(const char *fn, tlearn_model *m, const void *x, const void *y,
                         size_t n)
{
    return check_batch(fn, m, x, y, n);
}

int tl_train_step(const char *fn, tlearn_model *m, tlearn_optim *o, const float *x,
                  const int32_t *labels, const float *targets, size_t n, float *loss)
{
    tl_feed f = tl_model_feed(m, x);
    tl_target t = {labels, targets, 0, 0, 0};
    return train_step(fn, m, o, &f, &t, n, 0, loss);
}

int tl_train_backward(const char *fn, tlearn_model *m, const float *x, const int32_t *labels,
                      const float *targets, size_t n, double *loss)
{
    tl_feed f = tl_model_feed(m, x);
    tl_target t = {labels, targets, 0, 0, 0};
    int rc = validate_targets(fn, m, &t, n);
    if (!rc)
        rc = forward_backward(fn, m, &f, &t, n, 0, NULL, loss);
    if (!rc && m->training && !(rc = check_commit(fn, m, n, 0)))
        tl_model_commit(m, &m->plan_train, n, 0);
    return rc;
}

int tl_train_apply(const char *fn, tlearn_model *m, tlearn_optim *o)
{
    return apply_update(fn, m, o);
}
