/* Freeze policy: a list of rules replayed in order over a model's layers when the policy is
 * applied, so one policy fits any model and later rules override earlier ones. Applying
 * writes the outcome into the model (frozen flags, LR scales, batchnorm statistics mode)
 * and syncs the training slots: frozen parameters lose gradient and optimizer state, newly
 * trainable ones get a zeroed gradient and start their optimizer state fresh. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "train.h"

enum rule_kind { RULE_UNTIL, RULE_MATCH, RULE_RANGE, RULE_LR, RULE_ULMFIT, RULE_BN, RULE_TENSOR };

typedef struct rule {
    int kind;
    char *pattern; /* layer name (UNTIL) or glob (MATCH, LR; TENSOR: over "layer.param") */
    int first, last;
    int flag;      /* frozen (MATCH, RANGE), bn statistics frozen (BN) */
    float value;   /* scale (LR), factor (ULMFIT) */
} rule;

struct tlearn_freeze {
    int n, cap;
    rule *rules;
};

#define PATTERN_MAX 1024

int tlearn_freeze_create(tlearn_freeze **out)
{
    if (!out)
        return tl_fail(TLEARN_EINVAL, "tlearn_freeze_create: out is NULL");
    *out = tl_alloc_zero(sizeof **out);
    if (!*out)
        return tl_fail(TLEARN_ENOMEM, "tlearn_freeze_create: out of memory");
    return TLEARN_OK;
}

void tlearn_freeze_destroy(tlearn_freeze **f)
{
    if (!f || !*f)
        return;
    for (int i = 0; i < (*f)->n; i++)
        tl_free((*f)->rules[i].pattern);
    tl_free((*f)->rules);
    tl_free(*f);
    *f = NULL;
}

/* Append a rule; @p pattern (may be NULL) is copied. */
static int add_rule(const char *fn, tlearn_freeze *f, rule r, const char *pattern)
{
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 8;
        rule *rules = tl_alloc_array((size_t)cap, sizeof *rules);
        if (!rules)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        if (f->n)
            memcpy(rules, f->rules, sizeof *rules * (size_t)f->n);
        tl_free(f->rules);
        f->rules = rules;
        f->cap = cap;
    }
    r.pattern = NULL;
    if (pattern && !(r.pattern = tl_strdup(pattern)))
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    f->rules[f->n++] = r;
    return TLEARN_OK;
}

static int check_pattern(const char *fn, const tlearn_freeze *f, const char *what,
                         const char *pattern)
{
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: policy is NULL", fn);
    if (!pattern || !*pattern)
        return tl_fail(TLEARN_EINVAL, "%s: %s is %s", fn, what, !pattern ? "NULL" : "empty");
    if (strlen(pattern) > PATTERN_MAX)
        return tl_fail(TLEARN_EINVAL, "%s: %s is longer than %d bytes", fn, what, PATTERN_MAX);
    return TLEARN_OK;
}

int tlearn_freeze_until(tlearn_freeze *f, const char *layer)
{
    static const char fn[] = "tlearn_freeze_until";
    int rc = check_pattern(fn, f, "layer", layer);
    if (!rc)
        rc = tl_check_name(fn, layer);
    return rc ? rc : add_rule(fn, f, (rule){.kind = RULE_UNTIL}, layer);
}

int tlearn_freeze_match(tlearn_freeze *f, const char *glob, int frozen)
{
    static const char fn[] = "tlearn_freeze_match";
    int rc = check_pattern(fn, f, "glob", glob);
    if (rc)
        return rc;
    if (frozen != 0 && frozen != 1)
        return tl_fail(TLEARN_EINVAL, "%s: frozen is %d, must be 0 or 1", fn, frozen);
    return add_rule(fn, f, (rule){.kind = RULE_MATCH, .flag = frozen}, glob);
}

int tlearn_freeze_tensors(tlearn_freeze *f, const char *glob, int frozen)
{
    static const char fn[] = "tlearn_freeze_tensors";
    int rc = check_pattern(fn, f, "glob", glob);
    if (rc)
        return rc;
    if (frozen != 0 && frozen != 1)
        return tl_fail(TLEARN_EINVAL, "%s: frozen is %d, must be 0 or 1", fn, frozen);
    return add_rule(fn, f, (rule){.kind = RULE_TENSOR, .flag = frozen}, glob);
}

int tlearn_freeze_range(tlearn_freeze *f, int first, int last, int frozen)
{
    static const char fn[] = "tlearn_freeze_range";
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: policy is NULL", fn);
    if (first < 0 || last < first)
        return tl_fail(TLEARN_EINVAL, "%s: range [%d, %d] is invalid (need 0 <= first <= last)",
                       fn, first, last);
    if (frozen != 0 && frozen != 1)
        return tl_fail(TLEARN_EINVAL, "%s: frozen is %d, must be 0 or 1", fn, frozen);
    return add_rule(fn, f, (rule){.kind = RULE_RANGE, .first = first, .last = last,
                                  .flag = frozen}, NULL);
}

int tlearn_freeze_lr_scale(tlearn_freeze *f, const char *glob, float scale)
{
    static const char fn[] = "tlearn_freeze_lr_scale";
    int rc = check_pattern(fn, f, "glob", glob);
    if (rc)
        return rc;
    if (!(scale > 0) || !isfinite(scale))
        return tl_fail(TLEARN_EINVAL, "%s: scale %g must be > 0 and finite", fn, (double)scale);
    return add_rule(fn, f, (rule){.kind = RULE_LR, .value = scale}, glob);
}

int tlearn_freeze_ulmfit(tlearn_freeze *f, float factor)
{
    static const char fn[] = "tlearn_freeze_ulmfit";
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: policy is NULL", fn);
    if (!(factor >= 0) || !isfinite(factor))
        return tl_fail(TLEARN_EINVAL, "%s: factor %g must be >= 0 and finite", fn,
                       (double)factor);
    if (factor == 0)
        factor = 2.6f; /* Howard & Ruder 2018 */
    return add_rule(fn, f, (rule){.kind = RULE_ULMFIT, .value = factor}, NULL);
}

int tlearn_freeze_bn_stats(tlearn_freeze *f, int frozen)
{
    static const char fn[] = "tlearn_freeze_bn_stats";
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: policy is NULL", fn);
    if (frozen != 0 && frozen != 1)
        return tl_fail(TLEARN_EINVAL, "%s: frozen is %d, must be 0 or 1", fn, frozen);
    return add_rule(fn, f, (rule){.kind = RULE_BN, .flag = frozen}, NULL);
}

static int has_params(const tl_layer *L)
{
    for (int p = 0; p < L->nparam; p++)
        if (!L->param[p].is_buffer)
            return 1;
    return 0;
}

#define ALL_TENSORS ((1u << TL_MAX_PARAMS) - 1u)

/* "layer.param" matches @p glob. */
static int tensor_match(const char *glob, const tl_layer *L, int p)
{
    char name[TL_TENSOR_NAME_MAX];
    snprintf(name, sizeof name, "%s.%s", L->name, L->param[p].name);
    return tl_glob_match(glob, name);
}

/* Replay the rules into frozen[] (per layer, bit p: tensor p frozen; a layer rule sets or
 * clears them all, a tensor rule its tensors, so later rules override earlier ones tensor
 * by tensor) / scale[] / *bn without touching the model. */
static int replay(const char *fn, const tlearn_model *m, const tlearn_freeze *f,
                  unsigned *frozen, float *scale, int *bn)
{
    int nl = m->nlayers;
    for (int i = 0; i < nl; i++) {
        frozen[i] = 0;
        scale[i] = 1.0f;
    }
    *bn = 0;
    for (int r = 0; f && r < f->n; r++) {
        const rule *R = &f->rules[r];
        int hits = 0;
        switch (R->kind) {
        case RULE_UNTIL: {
            int last = tl_model_find(m, R->pattern);
            if (last < 0)
                return tl_fail(TLEARN_ENOTFOUND, "%s: rule %d (until '%s'): no layer named '%s'",
                               fn, r, R->pattern, R->pattern);
            for (int i = 0; i <= last; i++)
                frozen[i] = ALL_TENSORS;
            hits = 1;
            break;
        }
        case RULE_MATCH:
        case RULE_LR:
            for (int i = 0; i < nl; i++)
                if (tl_glob_match(R->pattern, m->layers[i]->name)) {
                    if (R->kind == RULE_MATCH)
                        frozen[i] = R->flag ? ALL_TENSORS : 0u;
                    else
                        scale[i] = R->value;
                    hits++;
                }
            if (!hits)
                return tl_fail(TLEARN_ENOTFOUND, "%s: rule %d (%s): pattern '%s' matches no "
                               "layer", fn, r, R->kind == RULE_MATCH ? "match" : "lr_scale",
                               R->pattern);
            break;
        case RULE_RANGE:
            if (R->last >= nl)
                return tl_fail(TLEARN_ENOTFOUND, "%s: rule %d (range [%d, %d]): the model has "
                               "only %d layers", fn, r, R->first, R->last, nl);
            for (int i = R->first; i <= R->last; i++)
                frozen[i] = R->flag ? ALL_TENSORS : 0u;
            break;
        case RULE_TENSOR:
            for (int i = 0; i < nl; i++)
                for (int p = 0; p < m->layers[i]->nparam; p++)
                    if (!m->layers[i]->param[p].is_buffer &&
                        tensor_match(R->pattern, m->layers[i], p)) {
                        frozen[i] = R->flag ? frozen[i] | 1u << p : frozen[i] & ~(1u << p);
                        hits++;
                    }
            if (!hits)
                return tl_fail(TLEARN_ENOTFOUND, "%s: rule %d (tensors): pattern '%s' matches "
                               "no trainable tensor", fn, r, R->pattern);
            break;
        case RULE_ULMFIT: {
            /* From the head back: 1, 1/factor, 1/factor^2, ... over layers with parameters,
             * held within the normal floats: a deep model must not get scale 0 (or, with
             * a factor below 1, Inf). */
            double s = 1.0;
            for (int i = nl - 1; i >= 0; i--)
                if (has_params(m->layers[i])) {
                    scale[i] = (float)fmin(fmax(s, FLT_MIN), FLT_MAX);
                    s /= R->value;
                }
            break;
        }
        case RULE_BN:
            *bn = R->flag;
            break;
        }
    }
    return TLEARN_OK;
}

int tlearn_model_apply_freeze(tlearn_model *m, const tlearn_freeze *f)
{
    static const char fn[] = "tlearn_model_apply_freeze";
    TL_CHECK_MODEL(fn, m);
    int nl = m->nlayers;
    unsigned *frozen = tl_alloc_array((size_t)nl + 1, sizeof(unsigned));
    float *scale = tl_alloc_array((size_t)nl + 1, sizeof(float));
    if (!frozen || !scale) {
        tl_free(frozen);
        tl_free(scale);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    int bn = 0;
    int rc = replay(fn, m, f, frozen, scale, &bn);
    if (rc) { /* every rule is validated before anything changes */
        tl_free(frozen);
        tl_free(scale);
        return rc;
    }
    int changed = bn != m->bn_stats_frozen;
    for (int i = 0; i < nl; i++) {
        /* a layer whose every tensor is frozen is a frozen layer (a layer without
         * tensors keeps what its layer rules said) */
        const tl_layer *L = m->layers[i];
        unsigned own = 0;
        for (int p = 0; p < L->nparam; p++)
            own |= L->param[p].is_buffer ? 0u : 1u << p;
        unsigned packed = own ? ((frozen[i] & own) == own ? 1u
                                 : (frozen[i] & own) << TL_FROZEN_PARAMS_SHIFT)
                              : (frozen[i] != 0);
        changed |= tl_frozen_pack(&m->lstate[i]) != packed;
        tl_frozen_unpack(&m->lstate[i], packed);
        m->lstate[i].lr_scale = scale[i];
        if (m->layers[i]->ops->kind == TLEARN_LAYER_BATCHNORM)
            m->layers[i]->use_running_stats = bn;
    }
    m->bn_stats_frozen = bn;
    tl_free(frozen);
    tl_free(scale);
    if (changed) {
        /* Plans depend on where backward stops; gradients of the old set are stale. */
        tl_plan_free(&m->plan_train);
        m->has_grads = 0;
    }
    rc = tl_model_sync_slots(m, 0);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

static int find_layer(const char *fn, const tlearn_model *m, const char *layer, const void *out,
                      int *index)
{
    TL_CHECK_MODEL(fn, m);
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: output pointer is NULL", fn);
    return tl_model_find_checked(fn, m, layer, index);
}

int tlearn_model_layer_frozen(const tlearn_model *m, const char *layer, int *frozen)
{
    int i = 0;
    int rc = find_layer("tlearn_model_layer_frozen", m, layer, frozen, &i);
    if (!rc)
        *frozen = m->lstate[i].frozen;
    return rc;
}

int tlearn_model_tensor_frozen(const tlearn_model *m, const char *tensor, int *frozen)
{
    static const char fn[] = "tlearn_model_tensor_frozen";
    TL_CHECK_MODEL(fn, m);
    if (!tensor || !frozen)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !tensor ? "tensor" : "frozen");
    int l, p;
    if (tl_model_find_tensor(m, tensor, &l, &p))
        return tl_fail(TLEARN_ENOTFOUND, "%s: no tensor named '%s'", fn, tensor);
    *frozen = !tl_param_trains(m, l, p);
    return TLEARN_OK;
}

int tlearn_model_layer_lr_scale(const tlearn_model *m, const char *layer, float *scale)
{
    int i = 0;
    int rc = find_layer("tlearn_model_layer_lr_scale", m, layer, scale, &i);
    if (!rc)
        *scale = m->lstate[i].lr_scale;
    return rc;
}
