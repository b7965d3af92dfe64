/* EWC (Kirkpatrick et al. 2017) and L2-SP (Li et al. 2018): quadratic penalties that keep
 * parameters near anchors. The penalty is
 *     sum_t (lambda_t/2) sum_i F_t,i (theta_i - theta*_t,i)^2          (EWC tasks)
 *   + (alpha/2) ||theta_pre - theta0||^2 + (beta/2) ||theta_new||^2   (L2-SP)
 * Avalanche's ewc_lambda multiplies the sum without the 1/2: its lambda is twice ours.
 *
 * Storage is per (layer index, parameter index): layer indexes are stable while a layer
 * exists, and tl_ewc_drop_layers() cuts every table when layers are removed. A layer added
 * later has no entry in earlier tasks (it is simply not anchored by them) and, with L2-SP
 * on, gets the beta term.
 *
 * The optimizer never sees tasks: it adds reg_a*theta - reg_b to each gradient, with
 *     reg_a = sum_t lambda_t F_t (+ alpha or beta),  reg_b = sum_t lambda_t F_t theta*_t (+ alpha theta0),
 * kept in the model's slots and rebuilt whenever tasks or layers change (layer appends are
 * noticed lazily, when the penalty is next computed: every train step does that). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

/* One float array (or NULL) per layer and parameter, for layers [0, nlayers). */
typedef struct tensor_set {
    int nlayers;
    float *(*v)[TL_MAX_PARAMS];
} tensor_set;

typedef struct ewc_task {
    float lambda;
    tensor_set fisher, anchor; /* an anchor exists exactly where a Fisher does */
} ewc_task;

struct tl_ewc {
    int mode;    /* enum tlearn_ewc_mode */
    float gamma; /* ONLINE decay */
    int ntasks;
    ewc_task *tasks;
    int l2sp;
    float alpha, beta;
    tensor_set l2sp_anchor; /* layers [0, nlayers) were there when L2-SP was enabled */
    int built_nlayers;      /* fused reg arrays describe this many layers... */
    int dirty;              /* ...unless something changed since */
    /* checkpoint restore in progress */
    int restoring;
    int nexpect;
    char **expect;
    unsigned char *got;
};

/* ---- tensor sets ---- */

static void set_free(tensor_set *s)
{
    for (int i = 0; i < s->nlayers; i++)
        for (int p = 0; p < TL_MAX_PARAMS; p++)
            tl_free(s->v[i][p]);
    tl_free(s->v);
    s->v = NULL;
    s->nlayers = 0;
}

static int set_init(tensor_set *s, int nlayers)
{
    s->nlayers = 0;
    s->v = tl_alloc_array(nlayers > 0 ? (size_t)nlayers : 1, sizeof *s->v);
    if (!s->v)
        return TLEARN_ENOMEM;
    s->nlayers = nlayers;
    return TLEARN_OK;
}

static void set_truncate(tensor_set *s, int keep)
{
    for (int i = keep; i < s->nlayers; i++)
        for (int p = 0; p < TL_MAX_PARAMS; p++) {
            tl_free(s->v[i][p]);
            s->v[i][p] = NULL;
        }
    if (s->nlayers > keep)
        s->nlayers = keep;
}

static const float *set_get(const tensor_set *s, int i, int p)
{
    return i < s->nlayers ? s->v[i][p] : NULL;
}

static float *copy_floats(const float *src, size_t n)
{
    float *d = tl_alloc_array(n, sizeof(float));
    if (d)
        memcpy(d, src, sizeof(float) * n);
    return d;
}

static void task_free(ewc_task *t)
{
    set_free(&t->fisher);
    set_free(&t->anchor);
}

static void free_expect(struct tl_ewc *e)
{
    for (int i = 0; i < e->nexpect; i++)
        tl_free(e->expect[i]);
    tl_free(e->expect);
    tl_free(e->got);
    e->expect = NULL;
    e->got = NULL;
    e->nexpect = 0;
}

static void drop_everything(struct tl_ewc *e)
{
    for (int t = 0; t < e->ntasks; t++)
        task_free(&e->tasks[t]);
    tl_free(e->tasks);
    e->tasks = NULL;
    e->ntasks = 0;
    set_free(&e->l2sp_anchor);
    e->l2sp = 0;
    e->alpha = e->beta = 0.0f;
    free_expect(e);
    e->restoring = 0;
    e->dirty = 1;
}

void tl_ewc_free(struct tl_ewc *e)
{
    if (!e)
        return;
    drop_everything(e);
    tl_free(e);
}

static int is_param(const tl_layer *L, int p)
{
    return p < L->nparam && !L->param[p].is_buffer;
}

/* Free every fused array and forget L2-SP marks (after clear or a failed restore). */
static void free_reg(tlearn_model *m)
{
    for (int i = 0; i < m->nlayers; i++) {
        m->lstate[i].from_pretrained = 0;
        for (int p = 0; p < TL_MAX_PARAMS; p++) {
            tl_slot *s = &m->lstate[i].slot[p];
            tl_free(s->reg_a);
            tl_free(s->reg_b);
            s->reg_a = s->reg_b = NULL;
        }
    }
}

/* Recompute reg_a / reg_b of every slot from the tasks and the L2-SP anchor. Takes a const
 * model because it runs lazily from the penalty: it writes only through m->lstate and
 * m->ewc, which the model owns but does not hold by value. */
static int rebuild(const tlearn_model *m)
{
    struct tl_ewc *e = m->ewc;
    for (int i = 0; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        tl_layer_state *st = &m->lstate[i];
        int pre = e->l2sp && i < e->l2sp_anchor.nlayers;
        st->from_pretrained = pre;
        for (int p = 0; p < TL_MAX_PARAMS; p++) {
            tl_slot *s = &st->slot[p];
            int need = 0;
            if (is_param(L, p)) {
                for (int t = 0; t < e->ntasks && !need; t++)
                    need = set_get(&e->tasks[t].fisher, i, p) != NULL;
                if (e->l2sp)
                    need |= pre ? set_get(&e->l2sp_anchor, i, p) != NULL : e->beta > 0;
            }
            if (!need) {
                tl_free(s->reg_a);
                tl_free(s->reg_b);
                s->reg_a = s->reg_b = NULL;
                continue;
            }
            size_t n = L->param[p].t.numel;
            if (!s->reg_a)
                s->reg_a = tl_alloc_array(n, sizeof(float));
            if (!s->reg_b)
                s->reg_b = tl_alloc_array(n, sizeof(float));
            if (!s->reg_a || !s->reg_b)
                return tl_fail(TLEARN_ENOMEM, "EWC: out of memory for the regulariser of '%s.%s'",
                               L->name, L->param[p].name);
            float *a = s->reg_a, *b = s->reg_b;
            memset(a, 0, sizeof(float) * n);
            memset(b, 0, sizeof(float) * n);
            for (int t = 0; t < e->ntasks; t++) {
                const float *F = set_get(&e->tasks[t].fisher, i, p);
                const float *th = set_get(&e->tasks[t].anchor, i, p);
                const float lam = e->tasks[t].lambda;
                if (!F)
                    continue;
                for (size_t k = 0; k < n; k++) {
                    float lf = lam * F[k];
                    a[k] += lf;
                    b[k] += lf * th[k];
                }
            }
            if (e->l2sp && pre) {
                const float *th0 = set_get(&e->l2sp_anchor, i, p);
                for (size_t k = 0; th0 && k < n; k++) {
                    a[k] += e->alpha;
                    b[k] += e->alpha * th0[k];
                }
            } else if (e->l2sp) {
                for (size_t k = 0; k < n; k++)
                    a[k] += e->beta;
            }
            s->rbound[0] = tl_max_abs(a, n, 1);
            s->rbound[1] = tl_max_abs(b, n, 1);
        }
    }
    e->built_nlayers = m->nlayers;
    e->dirty = 0;
    return TLEARN_OK;
}

/* Bring the fused arrays up to date if tasks or layers changed. */
static int sync(const tlearn_model *m)
{
    struct tl_ewc *e = m->ewc;
    if (!e || e->restoring)
        return TLEARN_OK;
    if (e->dirty || e->built_nlayers != m->nlayers)
        return rebuild(m);
    return TLEARN_OK;
}

int tl_ewc_drop_layers(tlearn_model *m, int keep)
{
    struct tl_ewc *e = m->ewc;
    if (!e)
        return TLEARN_OK;
    for (int t = 0; t < e->ntasks; t++) {
        set_truncate(&e->tasks[t].fisher, keep);
        set_truncate(&e->tasks[t].anchor, keep);
    }
    set_truncate(&e->l2sp_anchor, keep);
    e->dirty = 1; /* a layer added at a dropped index is new */
    return TLEARN_OK;
}

int tl_ewc_active(const tlearn_model *m)
{
    const struct tl_ewc *e = m->ewc;
    return e && !e->restoring && (e->ntasks > 0 || e->l2sp);
}

/* sum_k w_k (theta_k - anchor_k)^2 in double (w NULL: 1, anchor NULL: 0). Eight independent
 * partial sums: a single accumulator would make the loop wait on the add latency, and this
 * runs every train step over every regularised parameter. */
#define LANES 8
#define SUM_SQ(expr)                                                                          \
    do {                                                                                      \
        size_t k = 0;                                                                         \
        for (; k + LANES <= n; k += LANES)                                                    \
            for (int j = 0; j < LANES; j++) {                                                 \
                size_t i = k + (size_t)j;                                                     \
                part[j] += (expr);                                                            \
            }                                                                                 \
        for (size_t i = k; i < n; i++)                                                        \
            part[0] += (expr);                                                                \
    } while (0)

static double sum_sq_diff(const float *w, const float *theta, const float *anchor, size_t n)
{
    double part[LANES] = {0};
    if (w)
        SUM_SQ((double)w[i] * ((double)theta[i] - anchor[i]) * ((double)theta[i] - anchor[i]));
    else if (anchor)
        SUM_SQ(((double)theta[i] - anchor[i]) * ((double)theta[i] - anchor[i]));
    else
        SUM_SQ((double)theta[i] * theta[i]);
    double s = 0.0;
    for (int j = 0; j < LANES; j++)
        s += part[j];
    return s;
}

double tl_ewc_penalty(const tlearn_model *m)
{
    const struct tl_ewc *e = m->ewc;
    if (!tl_ewc_active(m))
        return 0.0;
    if (sync(m)) /* out of memory: the caller reports a non-finite penalty */
        return NAN;
    double total = 0.0;
    for (int t = 0; t < e->ntasks; t++) {
        const ewc_task *T = &e->tasks[t];
        double s = 0.0;
        for (int i = 0; i < T->fisher.nlayers && i < m->nlayers; i++)
            for (int p = 0; p < TL_MAX_PARAMS; p++)
                if (T->fisher.v[i][p])
                    s += sum_sq_diff(T->fisher.v[i][p], m->layers[i]->param[p].t.data,
                                     T->anchor.v[i][p], m->layers[i]->param[p].t.numel);
        total += 0.5 * (double)T->lambda * s;
    }
    if (e->l2sp) {
        double sa = 0.0, sb = 0.0;
        for (int i = 0; i < m->nlayers; i++) {
            const tl_layer *L = m->layers[i];
            for (int p = 0; p < L->nparam; p++) {
                if (!is_param(L, p))
                    continue;
                if (i < e->l2sp_anchor.nlayers) {
                    if (e->l2sp_anchor.v[i][p])
                        sa += sum_sq_diff(NULL, L->param[p].t.data, e->l2sp_anchor.v[i][p],
                                          L->param[p].t.numel);
                } else {
                    sb += sum_sq_diff(NULL, L->param[p].t.data, NULL, L->param[p].t.numel);
                }
            }
        }
        total += 0.5 * (double)e->alpha * sa + 0.5 * (double)e->beta * sb;
    }
    return total;
}

static void drop_layers_hook(tlearn_model *m, int keep)
{
    tl_ewc_drop_layers(m, keep);
}

static const tl_attachment_ops ewc_ops = {tl_ewc_free, drop_layers_hook};

static int ensure_state(const char *fn, tlearn_model *m)
{
    if (m->ewc)
        return TLEARN_OK;
    m->ewc = tl_alloc_zero(sizeof *m->ewc);
    if (!m->ewc)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    m->ewc_ops = &ewc_ops;
    m->ewc->mode = TLEARN_EWC_SEPARATE;
    m->ewc->gamma = 1.0f;
    m->ewc->dirty = 1;
    return TLEARN_OK;
}

/* ---- public calls ---- */

int tlearn_ewc_set_mode(tlearn_model *m, int mode, float gamma)
{
    static const char fn[] = "tlearn_ewc_set_mode";
    TL_CHECK_MODEL(fn, m);
    if (mode != TLEARN_EWC_SEPARATE && mode != TLEARN_EWC_ONLINE)
        return tl_fail(TLEARN_EINVAL, "%s: unknown mode %d", fn, mode);
    if (mode == TLEARN_EWC_ONLINE && !(gamma > 0 && gamma <= 1))
        return tl_fail(TLEARN_EINVAL, "%s: gamma %g must be in (0, 1] for the online mode", fn,
                       (double)gamma);
    if (m->ewc && m->ewc->ntasks > 0)
        return tl_fail(TLEARN_ESTATE, "%s: %d task(s) already consolidated; call "
                       "tlearn_ewc_clear() first", fn, m->ewc->ntasks);
    int rc = ensure_state(fn, m);
    if (rc)
        return rc;
    m->ewc->mode = mode;
    m->ewc->gamma = mode == TLEARN_EWC_ONLINE ? gamma : 1.0f;
    return TLEARN_OK;
}

/* Softmax of one row in double. */
static void softmax(const float *z, int classes, double *prob)
{
    double mx = z[0], sum = 0.0;
    for (int c = 1; c < classes; c++)
        if (z[c] > mx)
            mx = z[c];
    for (int c = 0; c < classes; c++)
        sum += prob[c] = exp((double)z[c] - mx);
    for (int c = 0; c < classes; c++)
        prob[c] /= sum;
}

/* Diagonal Fisher of every trainable parameter, into per-slot double accumulators acc[i][p]
 * (NULL where the parameter does not train), averaged over the n examples. Per-example
 * gradients: one forward at batch 1 in evaluation mode, then one backward per label
 * considered (backward only reads the forward's activations, so they can be repeated). */
static int estimate_fisher(const char *fn, tlearn_model *m, const float *x,
                           const int32_t *labels, size_t n, int estimator, int first,
                           double *(*acc)[TL_MAX_PARAMS])
{
    int last = tl_model_output(m, 0);
    int classes = (int)tl_model_output_size(m);
    size_t in = tl_shape_size(m->inputs[0].shape);
    tl_plan plan;
    memset(&plan, 0, sizeof plan);
    int rc = tl_model_plan(m, &plan, 1, first, 0);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    double *prob = tl_alloc_array((size_t)classes, sizeof(double));
    if (!prob) {
        tl_plan_free(&plan);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    for (size_t e = 0; e < n; e++) {
        const float *xe = x + e * in;
        tl_feed fe = tl_model_feed(m, xe);
        tl_model_forward(m, &plan, &fe, 1, 0, 0, last);
        softmax(plan.out[last], classes, prob);
        int c0 = 0, c1 = classes; /* EXACT: every class, weighted by its probability */
        if (estimator == TLEARN_FISHER_EMPIRICAL) {
            c0 = labels[e];
            c1 = c0 + 1;
        } else if (estimator == TLEARN_FISHER_SAMPLED) {
            double u = tl_rng_uniform(&m->rng), cum = 0.0;
            c0 = classes - 1; /* rounding: the last class takes what is left */
            for (int c = 0; c < classes; c++) {
                cum += prob[c];
                if (u < cum) {
                    c0 = c;
                    break;
                }
            }
            c1 = c0 + 1;
        }
        for (int c = c0; c < c1; c++) {
            double w = estimator == TLEARN_FISHER_EXACT ? prob[c] : 1.0;
            if (w == 0.0)
                continue;
            int32_t y = c;
            /* Gradient of -log p(y|x) w.r.t. the logits: softmax - onehot(y). */
            tl_loss_softmax_ce(plan.out[last], &y, 1, classes, plan.dout[last], NULL);
            tl_model_backward(m, &plan, &fe, 1, 0, &last, 1, NULL);
            for (int i = first; i < m->nlayers; i++)
                for (int p = 0; p < TL_MAX_PARAMS; p++) {
                    double *a = acc[i][p];
                    const float *g = m->lstate[i].slot[p].grad;
                    if (!a)
                        continue;
                    for (size_t k = 0; k < m->layers[i]->param[p].t.numel; k++)
                        a[k] += w * (double)g[k] * (double)g[k];
                }
        }
    }
    tl_free(prob);
    tl_plan_free(&plan);
    m->has_grads = 0; /* the slots hold per-example gradients, not the caller's */
    return TLEARN_OK;
}

/* Data parallelism (TLEARN_REDUCE_FISHER): the per-worker sums of acc and the example
 * count *n_all summed over the workers, through one float buffer. */
static int reduce_fisher(const char *fn, tlearn_model *m, double *(*acc)[TL_MAX_PARAMS],
                         double *n_all)
{
    size_t total = 0;
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < TL_MAX_PARAMS; p++)
            total += acc[i][p] ? m->layers[i]->param[p].t.numel : 0;
    float *buf = tl_alloc_array(total + 1, sizeof(float));
    if (!buf)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for the Fisher", fn);
    for (int pass = 0, rc = 0; pass < 2; pass++) { /* 0: pack, 1: unpack the sums */
        float *b = buf;
        for (int i = 0; i < m->nlayers; i++)
            for (int p = 0; p < TL_MAX_PARAMS; p++)
                for (size_t k = 0; acc[i][p] && k < m->layers[i]->param[p].t.numel; k++, b++) {
                    if (pass)
                        acc[i][p][k] = *b;
                    else
                        *b = (float)acc[i][p][k];
                }
        if (!pass) {
            *b = (float)*n_all;
            if ((rc = tl_reduce_floats(fn, m, buf, total + 1, "the Fisher"))) {
                tl_free(buf);
                return rc;
            }
        }
    }
    *n_all = buf[total];
    tl_free(buf);
    return TLEARN_OK;
}

int tlearn_ewc_consolidate(tlearn_model *m, const float *x, const int32_t *labels, size_t n,
                           int estimator, float lambda)
{
    static const char fn[] = "tlearn_ewc_consolidate";
    TL_CHECK_MODEL(fn, m);
    if (!x || !labels)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !x ? "x" : "labels");
    if (n == 0)
        return tl_fail(TLEARN_EINVAL, "%s: n is 0; the Fisher needs at least one example", fn);
    if (estimator != TLEARN_FISHER_EMPIRICAL && estimator != TLEARN_FISHER_EXACT &&
        estimator != TLEARN_FISHER_SAMPLED)
        return tl_fail(TLEARN_EINVAL, "%s: unknown estimator %d", fn, estimator);
    if (!(lambda >= 0) || !isfinite(lambda))
        return tl_fail(TLEARN_EINVAL, "%s: lambda %g must be >= 0 and finite", fn,
                       (double)lambda);
    if (m->nlayers == 0)
        return tl_fail(TLEARN_ESHAPE, "%s: the model has no layers", fn);
    if (tl_model_check_single_input(fn, m))
        return TLEARN_ESTATE;
    if (m->loss_kind != TLEARN_LOSS_SOFTMAX_CE)
        return tl_fail(TLEARN_ESTATE, "%s: the Fisher needs the softmax cross-entropy loss", fn);
    size_t classes = tl_model_output_size(m);
    if (classes < 2)
        return tl_fail(TLEARN_ESHAPE, "%s: the model has %zu output; a softmax needs >= 2", fn,
                       classes);
    if (n > (size_t)INT32_MAX / tl_shape_size(m->inputs[0].shape))
        return tl_fail(TLEARN_EINVAL, "%s: n is %zu, too large", fn, n);
    int rc = tl_check_labels(fn, labels, n, (int)classes);
    if (rc)
        return rc;
    if (m->ewc && m->ewc->restoring)
        return tl_fail(TLEARN_ESTATE, "%s: a checkpoint restore is in progress", fn);
    int first = tl_model_first_trainable(m);
    if (first >= m->nlayers)
        return tl_fail(TLEARN_ESTATE, "%s: every layer is frozen; nothing to consolidate", fn);
    rc = tl_model_sync_slots(m, 1);
    if (!rc)
        rc = ensure_state(fn, m);
    if (rc)
        return rc;
    struct tl_ewc *e = m->ewc;
    int nl = m->nlayers;
    int online = e->mode == TLEARN_EWC_ONLINE && e->ntasks > 0;

    ewc_task T;
    memset(&T, 0, sizeof T);
    T.lambda = lambda;
    double *(*acc)[TL_MAX_PARAMS] = tl_alloc_array((size_t)nl, sizeof *acc);
    rc = !acc || set_init(&T.fisher, nl) || set_init(&T.anchor, nl) ? TLEARN_ENOMEM : TLEARN_OK;
    for (int i = first; i < nl && !rc; i++)
        for (int p = 0; p < TL_MAX_PARAMS && !rc; p++)
            if (p < m->layers[i]->nparam && tl_param_trains(m, i, p) &&
                !(acc[i][p] = tl_alloc_array(m->layers[i]->param[p].t.numel, sizeof(double))))
                rc = TLEARN_ENOMEM;
    if (rc)
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory for the Fisher", fn);
    else
        rc = estimate_fisher(fn, m, x, labels, n, estimator, first, acc);
    double n_all = (double)n;
    if (!rc && tl_reduce_wants(m, TLEARN_REDUCE_FISHER))
        rc = reduce_fisher(fn, m, acc, &n_all);

    /* Average, check, and (ONLINE) fold in the decayed running Fisher. Anchors are the
     * current weights wherever a Fisher exists. */
    const ewc_task *old = online ? &e->tasks[0] : NULL;
    for (int i = 0; i < nl && !rc; i++)
        for (int p = 0; p < TL_MAX_PARAMS && !rc; p++) {
            const float *Fo = old ? set_get(&old->fisher, i, p) : NULL;
            if (!acc[i][p] && !Fo)
                continue;
            const tl_tensor *th = &m->layers[i]->param[p].t;
            float *F = tl_alloc_array(th->numel, sizeof(float));
            float *A = copy_floats(th->data, th->numel);
            T.fisher.v[i][p] = F;
            T.anchor.v[i][p] = A;
            if (!F || !A) {
                rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory for the Fisher", fn);
                break;
            }
            for (size_t k = 0; k < th->numel; k++) {
                double f = acc[i][p] ? acc[i][p][k] / n_all : 0.0;
                if (Fo)
                    f += (double)e->gamma * Fo[k];
                F[k] = (float)f;
                if (!isfinite(F[k]))
                    rc = tl_fail(TLEARN_ENONFINITE, "%s: the Fisher of '%s.%s' is not finite; "
                                 "nothing was consolidated", fn, m->layers[i]->name,
                                 m->layers[i]->param[p].name);
            }
        }
    for (int i = 0; acc && i < nl; i++)
        for (int p = 0; p < TL_MAX_PARAMS; p++)
            tl_free(acc[i][p]);
    tl_free(acc);
    if (!rc && !online) {
        ewc_task *tasks = tl_alloc_array((size_t)e->ntasks + 1, sizeof *tasks);
        if (!tasks) {
            rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        } else {
            if (e->ntasks)
                memcpy(tasks, e->tasks, sizeof *tasks * (size_t)e->ntasks);
            tl_free(e->tasks);
            e->tasks = tasks;
        }
    }
    if (rc) {
        task_free(&T);
        return rc;
    }
    if (online) {
        task_free(&e->tasks[0]);
        e->tasks[0] = T;
    } else {
        e->tasks[e->ntasks++] = T;
    }
    e->dirty = 1;
    rc = sync(m);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

int tlearn_l2sp_enable(tlearn_model *m, float alpha, float beta)
{
    static const char fn[] = "tlearn_l2sp_enable";
    TL_CHECK_MODEL(fn, m);
    if (!(alpha >= 0) || !isfinite(alpha) || !(beta >= 0) || !isfinite(beta))
        return tl_fail(TLEARN_EINVAL, "%s: alpha %g and beta %g must be >= 0 and finite", fn,
                       (double)alpha, (double)beta);
    if (m->ewc && m->ewc->restoring)
        return tl_fail(TLEARN_ESTATE, "%s: a checkpoint restore is in progress", fn);
    tensor_set s;
    if (set_init(&s, m->nlayers))
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++)
            if (is_param(m->layers[i], p)) {
                const tl_tensor *t = &m->layers[i]->param[p].t;
                if (!(s.v[i][p] = copy_floats(t->data, t->numel))) {
                    set_free(&s);
                    return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
                }
            }
    int rc = ensure_state(fn, m);
    if (rc) {
        set_free(&s);
        return rc;
    }
    struct tl_ewc *e = m->ewc;
    set_free(&e->l2sp_anchor);
    e->l2sp_anchor = s;
    e->l2sp = 1;
    e->alpha = alpha;
    e->beta = beta;
    e->dirty = 1;
    rc = sync(m);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

int tlearn_ewc_clear(tlearn_model *m)
{
    TL_CHECK_MODEL("tlearn_ewc_clear", m);
    if (m->ewc)
        drop_everything(m->ewc); /* the mode and gamma stay */
    free_reg(m);
    return TLEARN_OK;
}

int tlearn_model_penalty(const tlearn_model *m, float *penalty)
{
    static const char fn[] = "tlearn_model_penalty";
    TL_CHECK_MODEL(fn, m);
    if (!penalty)
        return tl_fail(TLEARN_EINVAL, "%s: penalty is NULL", fn);
    *penalty = 0.0f;
    if (!tl_ewc_active(m))
        return TLEARN_OK;
    int rc = sync(m);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    *penalty = (float)tl_ewc_penalty(m);
    return TLEARN_OK;
}

int tlearn_ewc_get_fisher(const tlearn_model *m, int task, const char *name, float *out,
                          size_t out_len)
{
    static const char fn[] = "tlearn_ewc_get_fisher";
    TL_CHECK_MODEL(fn, m);
    if (!name || !out)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !name ? "name" : "out");
    int ntasks = m->ewc && !m->ewc->restoring ? m->ewc->ntasks : 0;
    if (task < 0 || task >= ntasks)
        return tl_fail(TLEARN_EINVAL, "%s: task %d is not in 0..%d (%d consolidated)", fn, task,
                       ntasks - 1, ntasks);
    int i, p;
    if (tl_model_find_tensor(m, name, &i, &p))
        return tl_fail(TLEARN_ENOTFOUND, "%s: no tensor named '%s'", fn, name);
    const float *F = set_get(&m->ewc->tasks[task].fisher, i, p);
    if (!F)
        return tl_fail(TLEARN_ENOTFOUND, "%s: task %d has no Fisher for '%s' (a buffer, frozen "
                       "at consolidation, or added later)", fn, task, name);
    size_t numel = m->layers[i]->param[p].t.numel;
    if (out_len != numel)
        return tl_fail(TLEARN_ESHAPE, "%s: '%s' has %zu elements, out_len is %zu", fn, name,
                       numel, out_len);
    memcpy(out, F, sizeof(float) * numel);
    return TLEARN_OK;
}

/* ---- checkpoints ----
 * Text (one "key=value" per line):
 *   format=1  mode=separate|online  gamma=G  tasks=N
 *   taskT.lambda=L  taskT.layers=K       (for each task)
 *   l2sp=0|1  [l2sp.alpha=A  l2sp.beta=B  l2sp.layers=K]
 *   arrays=M  then M lines array=NAME, NAME one of
 *   taskT/fisher/LAYER.PARAM  taskT/anchor/LAYER.PARAM  l2sp/anchor/LAYER.PARAM
 * tl_ewc_visit() gives the arrays in that order. tl_ewc_describe() with buf NULL and cap 0
 * only reports the length; a buffer too small fails with TLEARN_EINVAL and *len set. */

typedef struct textbuf {
    char *buf;
    size_t cap, len;
} textbuf;

static void put(textbuf *t, const char *fmt, ...) TL_PRINTF(2, 3);
static void put(textbuf *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *dst = t->buf && t->len < t->cap ? t->buf + t->len : NULL;
    int k = vsnprintf(dst, dst ? t->cap - t->len : 0, fmt, ap);
    va_end(ap);
    if (k > 0)
        t->len += (size_t)k;
}

/* Every array of the state, in order: fn(name, data, numel). */
typedef int (*each_fn)(const char *name, const float *data, size_t numel, void *user);

static int each_array(const tlearn_model *m, each_fn fn, void *user)
{
    const struct tl_ewc *e = m->ewc;
    char name[3 * TL_NAME_MAX];
    for (int t = 0; t < e->ntasks; t++) {
        const ewc_task *T = &e->tasks[t];
        for (int i = 0; i < T->fisher.nlayers && i < m->nlayers; i++)
            for (int p = 0; p < TL_MAX_PARAMS; p++) {
                if (!T->fisher.v[i][p])
                    continue;
                const tl_layer *L = m->layers[i];
                for (int k = 0; k < 2; k++) {
                    snprintf(name, sizeof name, "task%d/%s/%s.%s", t, k ? "anchor" : "fisher",
                             L->name, L->param[p].name);
                    int rc = fn(name, k ? T->anchor.v[i][p] : T->fisher.v[i][p],
                                L->param[p].t.numel, user);
                    if (rc)
                        return rc;
                }
            }
    }
    if (e->l2sp)
        for (int i = 0; i < e->l2sp_anchor.nlayers && i < m->nlayers; i++)
            for (int p = 0; p < TL_MAX_PARAMS; p++) {
                if (!e->l2sp_anchor.v[i][p])
                    continue;
                const tl_layer *L = m->layers[i];
                snprintf(name, sizeof name, "l2sp/anchor/%s.%s", L->name, L->param[p].name);
                int rc = fn(name, e->l2sp_anchor.v[i][p], L->param[p].t.numel, user);
                if (rc)
                    return rc;
            }
    return 0;
}

static int count_array(const char *name, const float *data, size_t numel, void *user)
{
    (void)name, (void)data, (void)numel;
    ++*(size_t *)user;
    return 0;
}

static int list_array(const char *name, const float *data, size_t numel, void *user)
{
    (void)data, (void)numel;
    put(user, "array=%s\n", name);
    return 0;
}

int tl_ewc_describe(const tlearn_model *m, char *buf, size_t cap, size_t *len)
{
    static const char fn[] = "tl_ewc_describe";
    TL_CHECK_MODEL(fn, m);
    if (!len || (!buf && cap))
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !len ? "len" : "buf");
    textbuf t = {buf, cap, 0};
    const struct tl_ewc *e = m->ewc;
    if (!e || e->restoring) {
        put(&t, "format=1\nmode=separate\ngamma=1\ntasks=0\nl2sp=0\narrays=0\n");
    } else {
        put(&t, "format=1\nmode=%s\ngamma=%.9g\ntasks=%d\n",
            e->mode == TLEARN_EWC_ONLINE ? "online" : "separate", (double)e->gamma, e->ntasks);
        for (int k = 0; k < e->ntasks; k++)
            put(&t, "task%d.lambda=%.9g\ntask%d.layers=%d\n", k, (double)e->tasks[k].lambda, k,
                e->tasks[k].fisher.nlayers < m->nlayers ? e->tasks[k].fisher.nlayers
                                                        : m->nlayers);
        put(&t, "l2sp=%d\n", e->l2sp);
        if (e->l2sp)
            put(&t, "l2sp.alpha=%.9g\nl2sp.beta=%.9g\nl2sp.layers=%d\n", (double)e->alpha,
                (double)e->beta,
                e->l2sp_anchor.nlayers < m->nlayers ? e->l2sp_anchor.nlayers : m->nlayers);
        size_t count = 0;
        each_array(m, count_array, &count);
        put(&t, "arrays=%zu\n", count);
        each_array(m, list_array, &t);
    }
    *len = t.len;
    if (!buf)
        return TLEARN_OK;
    if (t.len + 1 > cap)
        return tl_fail(TLEARN_EINVAL, "%s: buffer of %zu bytes is too small; %zu needed", fn,
                       cap, t.len + 1);
    return TLEARN_OK;
}

int tl_ewc_visit(const tlearn_model *m, tl_ewc_array_fn fn, void *user)
{
    TL_CHECK_MODEL("tl_ewc_visit", m);
    if (!fn)
        return tl_fail(TLEARN_EINVAL, "tl_ewc_visit: callback is NULL");
    if (!m->ewc || m->ewc->restoring)
        return TLEARN_OK;
    return each_array(m, fn, user);
}

/* Any restore failure: drop the half-built state. A bad file is EFORMAT; running out of
 * memory is ENOMEM (restore_oom), not a corrupt file. */
static void restore_drop(tlearn_model *m)
{
    tl_ewc_free(m->ewc);
    m->ewc = NULL;
    free_reg(m);
}

static int restore_fail(tlearn_model *m, const char *fmt, ...) TL_PRINTF(2, 3);
static int restore_fail(tlearn_model *m, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    restore_drop(m);
    return tl_fail(TLEARN_EFORMAT, "EWC state: %s", msg);
}

static int restore_oom(tlearn_model *m)
{
    restore_drop(m);
    return tl_fail(TLEARN_ENOMEM, "EWC state: out of memory");
}

/* Parse "key=value" lines into a small table; returns the number of lines or -1. */
typedef struct kv {
    const char *key, *val;
    size_t klen, vlen;
} kv;

static int key_is(const kv *p, const char *key)
{
    return p->klen == strlen(key) && memcmp(p->key, key, p->klen) == 0;
}

static int parse_long(const kv *p, long lo, long hi, long *out)
{
    char tmp[32];
    if (p->vlen == 0 || p->vlen >= sizeof tmp)
        return -1;
    memcpy(tmp, p->val, p->vlen);
    tmp[p->vlen] = 0;
    char *end;
    long v = strtol(tmp, &end, 10);
    if (*end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_float(const kv *p, float *out)
{
    char tmp[64];
    if (p->vlen == 0 || p->vlen >= sizeof tmp)
        return -1;
    memcpy(tmp, p->val, p->vlen);
    tmp[p->vlen] = 0;
    char *end;
    double v = strtod(tmp, &end);
    if (*end || !isfinite(v) || v < 0 || v > 3.0e38)
        return -1;
    *out = (float)v;
    return 0;
}

/* Expect line @p k with key @p key. */
static const kv *line(const kv *lines, int nlines, int *k, const char *key)
{
    if (*k >= nlines || !key_is(&lines[*k], key))
        return NULL;
    return &lines[(*k)++];
}

int tl_ewc_restore_begin(tlearn_model *m, const char *text, size_t len)
{
    TL_CHECK_MODEL("tl_ewc_restore_begin", m);
    tl_ewc_free(m->ewc);
    m->ewc = NULL;
    free_reg(m);
    if (!text)
        return tl_fail(TLEARN_EINVAL, "tl_ewc_restore_begin: text is NULL");
    /* Split into lines. */
    int nlines = 0;
    for (size_t i = 0; i < len; i++)
        nlines += text[i] == '\n';
    kv *lines = tl_alloc_array((size_t)nlines + 1, sizeof *lines);
    if (!lines)
        return tl_fail(TLEARN_ENOMEM, "tl_ewc_restore_begin: out of memory");
    int nl = 0;
    for (size_t s = 0; s < len;) {
        size_t e = s;
        while (e < len && text[e] != '\n')
            e++;
        if (e == len && len && text[len - 1] == '\0')
            e = len - 1; /* a trailing NUL terminator is allowed */
        if (e > s) {
            const char *eq = memchr(text + s, '=', e - s);
            if (!eq) {
                tl_free(lines);
                return restore_fail(m, "line %d has no '='", nl + 1);
            }
            lines[nl] = (kv){text + s, eq + 1, (size_t)(eq - (text + s)),
                             e - (size_t)(eq + 1 - text)};
            nl++;
        }
        s = e + 1;
    }
    int rc = ensure_state("tl_ewc_restore_begin", m);
    if (rc) {
        tl_free(lines);
        return rc;
    }
    struct tl_ewc *e = m->ewc;
    e->restoring = 1;
    int k = 0;
    long v;
    const kv *p;
#define BAD(what)                                                                             \
    do {                                                                                      \
        tl_free(lines);                                                                       \
        return restore_fail(m, "bad or missing '%s' (line %d)", what, k + 1);               \
    } while (0)
    if (!(p = line(lines, nl, &k, "format")) || parse_long(p, 1, 1, &v))
        BAD("format");
    if (!(p = line(lines, nl, &k, "mode")))
        BAD("mode");
    if (p->vlen == 6 && !memcmp(p->val, "online", 6))
        e->mode = TLEARN_EWC_ONLINE;
    else if (p->vlen == 8 && !memcmp(p->val, "separate", 8))
        e->mode = TLEARN_EWC_SEPARATE;
    else
        BAD("mode");
    if (!(p = line(lines, nl, &k, "gamma")) || parse_float(p, &e->gamma) || !(e->gamma > 0) ||
        e->gamma > 1)
        BAD("gamma");
    if (!(p = line(lines, nl, &k, "tasks")) || parse_long(p, 0, 1 << 20, &v))
        BAD("tasks");
    if (e->mode == TLEARN_EWC_ONLINE && v > 1)
        BAD("tasks");
    if (v > 0 && !(e->tasks = tl_alloc_array((size_t)v, sizeof *e->tasks))) {
        tl_free(lines);
        return restore_oom(m);
    }
    e->ntasks = (int)v;
    for (int t = 0; t < e->ntasks; t++) {
        char key[48];
        snprintf(key, sizeof key, "task%d.lambda", t);
        if (!(p = line(lines, nl, &k, key)) || parse_float(p, &e->tasks[t].lambda))
            BAD(key);
        snprintf(key, sizeof key, "task%d.layers", t);
        if (!(p = line(lines, nl, &k, key)) || parse_long(p, 0, m->nlayers, &v))
            BAD(key);
        if (set_init(&e->tasks[t].fisher, (int)v) || set_init(&e->tasks[t].anchor, (int)v)) {
            tl_free(lines);
            return restore_oom(m);
        }
    }
    if (!(p = line(lines, nl, &k, "l2sp")) || parse_long(p, 0, 1, &v))
        BAD("l2sp");
    e->l2sp = (int)v;
    if (e->l2sp) {
        if (!(p = line(lines, nl, &k, "l2sp.alpha")) || parse_float(p, &e->alpha))
            BAD("l2sp.alpha");
        if (!(p = line(lines, nl, &k, "l2sp.beta")) || parse_float(p, &e->beta))
            BAD("l2sp.beta");
        if (!(p = line(lines, nl, &k, "l2sp.layers")) || parse_long(p, 0, m->nlayers, &v))
            BAD("l2sp.layers");
        if (set_init(&e->l2sp_anchor, (int)v)) {
            tl_free(lines);
            return restore_oom(m);
        }
    }
    if (!(p = line(lines, nl, &k, "arrays")) || parse_long(p, 0, INT32_MAX / 2, &v))
        BAD("arrays");
    if (v != nl - k)
        BAD("arrays");
    e->nexpect = 0;
    e->expect = tl_alloc_array((size_t)v + 1, sizeof *e->expect);
    e->got = tl_alloc_array((size_t)v + 1, 1);
    if (!e->expect || !e->got) {
        tl_free(lines);
        return restore_oom(m);
    }
    for (long a = 0; a < v; a++) {
        if (!(p = line(lines, nl, &k, "array")) || p->vlen == 0 || p->vlen > 4 * TL_NAME_MAX)
            BAD("array");
        char *name = tl_alloc(p->vlen + 1);
        if (!name) {
            tl_free(lines);
            return restore_oom(m);
        }
        memcpy(name, p->val, p->vlen);
        name[p->vlen] = 0;
        e->expect[e->nexpect++] = name;
    }
#undef BAD
    tl_free(lines);
    return TLEARN_OK;
}

int tl_ewc_restore_array(tlearn_model *m, const char *name, const float *data, size_t numel)
{
    TL_CHECK_MODEL("tl_ewc_restore_array", m);
    struct tl_ewc *e = m->ewc;
    if (!e || !e->restoring)
        return tl_fail(TLEARN_ESTATE, "tl_ewc_restore_array: no restore in progress");
    if (!name || !data)
        return restore_fail(m, "array name or data is NULL");
    int idx = -1;
    for (int a = 0; a < e->nexpect; a++)
        if (strcmp(e->expect[a], name) == 0)
            idx = a;
    if (idx < 0)
        return restore_fail(m, "array '%s' is not listed", name);
    if (e->got[idx])
        return restore_fail(m, "array '%s' given twice", name);
    /* "taskT/fisher/L.P", "taskT/anchor/L.P" or "l2sp/anchor/L.P" */
    tensor_set *set = NULL;
    const char *rest;
    if (strncmp(name, "l2sp/anchor/", 12) == 0) {
        set = e->l2sp ? &e->l2sp_anchor : NULL;
        rest = name + 12;
    } else {
        char *end;
        long t = strncmp(name, "task", 4) == 0 ? strtol(name + 4, &end, 10) : -1;
        if (t < 0 || t >= e->ntasks || *end != '/')
            return restore_fail(m, "array '%s': bad task", name);
        if (strncmp(end, "/fisher/", 8) == 0)
            set = &e->tasks[t].fisher;
        else if (strncmp(end, "/anchor/", 8) == 0)
            set = &e->tasks[t].anchor;
        rest = end + 8;
    }
    int i, p;
    if (!set || tl_model_find_tensor(m, rest, &i, &p) || !is_param(m->layers[i], p))
        return restore_fail(m, "array '%s' names no parameter of the model", name);
    if (i >= set->nlayers)
        return restore_fail(m, "array '%s': layer beyond those the entry covers", name);
    if (numel != m->layers[i]->param[p].t.numel)
        return restore_fail(m, "array '%s' has %zu elements, the parameter %zu", name, numel,
                            m->layers[i]->param[p].t.numel);
    for (size_t k = 0; k < numel; k++)
        if (!isfinite(data[k]))
            return restore_fail(m, "array '%s': value %zu is not finite", name, k);
    if (!(set->v[i][p] = copy_floats(data, numel)))
        return restore_oom(m);
    e->got[idx] = 1;
    return TLEARN_OK;
}

int tl_ewc_restore_end(tlearn_model *m)
{
    TL_CHECK_MODEL("tl_ewc_restore_end", m);
    struct tl_ewc *e = m->ewc;
    if (!e || !e->restoring)
        return tl_fail(TLEARN_ESTATE, "tl_ewc_restore_end: no restore in progress");
    for (int a = 0; a < e->nexpect; a++)
        if (!e->got[a])
            return restore_fail(m, "array '%s' is missing", e->expect[a]);
    for (int t = 0; t < e->ntasks; t++)
        for (int i = 0; i < e->tasks[t].fisher.nlayers; i++)
            for (int p = 0; p < TL_MAX_PARAMS; p++)
                if (!e->tasks[t].fisher.v[i][p] != !e->tasks[t].anchor.v[i][p])
                    return restore_fail(m, "task %d: Fisher and anchor of '%s' do not pair", t,
                                        m->layers[i]->name);
    free_expect(e);
    e->restoring = 0;
    e->dirty = 1;
    int rc = sync(m);
    if (rc)
        restore_drop(m);
    return rc;
}
