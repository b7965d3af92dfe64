/* Optimizers with PyTorch 1.13's single-tensor formulas (torch/optim/sgd.py, adam.py,
 * adamw.py). Scalars such as bias corrections are computed in double as Python does, then
 * applied in float. The per-parameter state lives in the model's slots. */
#include <math.h>
#include <string.h>

#include "train.h"

int tlearn_optim_create(tlearn_optim **out, int kind)
{
    static const char fn[] = "tlearn_optim_create";
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (kind != TLEARN_SGD && kind != TLEARN_ADAM && kind != TLEARN_ADAMW)
        return tl_fail(TLEARN_EINVAL, "%s: unknown optimizer kind %d", fn, kind);
    tlearn_optim *o = tl_alloc_zero(sizeof *o);
    if (!o)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    o->kind = kind;
    o->lr = kind == TLEARN_SGD ? 0.01 : 0.001;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->weight_decay = kind == TLEARN_ADAMW ? 0.01 : 0.0;
    *out = o;
    return TLEARN_OK;
}

void tlearn_optim_destroy(tlearn_optim **o)
{
    if (!o || !*o)
        return;
    tl_free(*o);
    *o = NULL;
}

int tlearn_optim_kind(const tlearn_optim *o, int *kind)
{
    if (!o || !kind)
        return tl_fail(TLEARN_EINVAL, "tlearn_optim_kind: %s is NULL", !o ? "optimizer" : "kind");
    *kind = o->kind;
    return TLEARN_OK;
}

static double *field(tlearn_optim *o, int param)
{
    switch (param) {
    case TLEARN_OPT_LR: return &o->lr;
    case TLEARN_OPT_MOMENTUM: return &o->momentum;
    case TLEARN_OPT_DAMPENING: return &o->dampening;
    case TLEARN_OPT_WEIGHT_DECAY: return &o->weight_decay;
    case TLEARN_OPT_BETA1: return &o->beta1;
    case TLEARN_OPT_BETA2: return &o->beta2;
    case TLEARN_OPT_EPS: return &o->eps;
    case TLEARN_OPT_CLIP_NORM: return &o->clip_norm;
    default: return NULL;
    }
}

int tlearn_optim_set(tlearn_optim *o, int param, double v)
{
    static const char fn[] = "tlearn_optim_set";
    if (!o)
        return tl_fail(TLEARN_EINVAL, "%s: optimizer is NULL", fn);
    if (!isfinite(v))
        return tl_fail(TLEARN_EINVAL, "%s: value for parameter %d is not finite", fn, param);
    int sgd = o->kind == TLEARN_SGD;
    switch (param) {
    case TLEARN_OPT_LR:
        if (!(v > 0))
            return tl_fail(TLEARN_EINVAL, "%s: learning rate %g must be > 0", fn, v);
        break;
    case TLEARN_OPT_MOMENTUM:
    case TLEARN_OPT_DAMPENING:
    case TLEARN_OPT_NESTEROV:
        if (!sgd)
            return tl_fail(TLEARN_EINVAL, "%s: parameter %d applies to SGD only", fn, param);
        if (param == TLEARN_OPT_NESTEROV) {
            if (v != 0 && v != 1)
                return tl_fail(TLEARN_EINVAL, "%s: nesterov must be 0 or 1, not %g", fn, v);
            o->nesterov = (int)v;
            return TLEARN_OK;
        }
        if (v < 0 || (param == TLEARN_OPT_MOMENTUM ? v >= 1 : v > 1))
            return tl_fail(TLEARN_EINVAL, "%s: %s %g must be in [0, 1%c", fn,
                           param == TLEARN_OPT_MOMENTUM ? "momentum" : "dampening", v,
                           param == TLEARN_OPT_MOMENTUM ? ')' : ']');
        break;
    case TLEARN_OPT_WEIGHT_DECAY:
    case TLEARN_OPT_CLIP_NORM:
        if (v < 0)
            return tl_fail(TLEARN_EINVAL, "%s: %s %g must be >= 0", fn,
                           param == TLEARN_OPT_CLIP_NORM ? "clip norm" : "weight decay", v);
        break;
    case TLEARN_OPT_BETA1:
    case TLEARN_OPT_BETA2:
    case TLEARN_OPT_EPS:
        if (sgd)
            return tl_fail(TLEARN_EINVAL, "%s: parameter %d applies to Adam/AdamW only", fn,
                           param);
        if (param == TLEARN_OPT_EPS ? !(v > 0) : (v < 0 || v >= 1))
            return tl_fail(TLEARN_EINVAL, "%s: %s %g is out of range (%s)", fn,
                           param == TLEARN_OPT_EPS ? "eps" : "beta", v,
                           param == TLEARN_OPT_EPS ? "> 0" : "[0, 1)");
        break;
    default:
        return tl_fail(TLEARN_EINVAL, "%s: unknown parameter %d", fn, param);
    }
    *field(o, param) = v;
    return TLEARN_OK;
}

int tlearn_optim_get(const tlearn_optim *o, int param, double *value)
{
    static const char fn[] = "tlearn_optim_get";
    if (!o || !value)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !o ? "optimizer" : "value");
    if (param == TLEARN_OPT_NESTEROV) {
        *value = o->nesterov;
        return TLEARN_OK;
    }
    double *f = field((tlearn_optim *)o, param);
    if (!f)
        return tl_fail(TLEARN_EINVAL, "%s: unknown parameter %d", fn, param);
    *value = *f;
    return TLEARN_OK;
}

/* Ensure momentum/moment buffers exist for this optimizer; another kind starts fresh. */
static int ensure_state(const tlearn_optim *o, tl_slot *s, size_t numel, int moments)
{
    if (s->opt_kind != o->kind) {
        tl_free(s->m1);
        tl_free(s->m2);
        s->m1 = s->m2 = NULL;
        s->step = 0;
        s->opt_kind = o->kind;
    }
    if (moments >= 1 && !s->m1 && !(s->m1 = tl_alloc_array(numel, sizeof(float))))
        return tl_fail(TLEARN_ENOMEM, "optimizer state: out of memory");
    if (moments >= 2 && !s->m2 && !(s->m2 = tl_alloc_array(numel, sizeof(float))))
        return tl_fail(TLEARN_ENOMEM, "optimizer state: out of memory");
    return TLEARN_OK;
}

int tl_optim_update(const tlearn_optim *o, tl_slot *s, float *theta, size_t numel,
                    float lr_scale, float grad_scale)
{
    const float *grad = s->grad, *ra = s->reg_a, *rb = s->reg_b;
    const float gs = grad_scale;
    if (o->kind == TLEARN_SGD) {
        const float lr = (float)(o->lr * lr_scale);
        const float wd = (float)o->weight_decay, mom = (float)o->momentum;
        const float damp = (float)(1.0 - o->dampening);
        int rc = ensure_state(o, s, numel, mom != 0.0f);
        if (rc)
            return rc;
        float *buf = s->m1;
        int first = s->step == 0;
        for (size_t i = 0; i < numel; i++) {
            float g = grad[i] * gs;
            if (ra)
                g += ra[i] * theta[i] - rb[i];
            if (wd != 0.0f)
                g += wd * theta[i];
            if (buf) {
                buf[i] = first ? g : mom * buf[i] + damp * g;
                g = o->nesterov ? g + mom * buf[i] : buf[i];
            }
            theta[i] -= lr * g;
        }
        s->step++;
        return TLEARN_OK;
    }
    int rc = ensure_state(o, s, numel, 2);
    if (rc)
        return rc;
    s->step++;
    /* (1 - beta) is formed in double and rounded once, as PyTorch's scalar alpha is. */
    const float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
    const float c1 = (float)(1.0 - o->beta1), c2 = (float)(1.0 - o->beta2);
    const double bc1 = 1.0 - pow(o->beta1, (double)s->step);
    const double bc2 = 1.0 - pow(o->beta2, (double)s->step);
    const float step_size = (float)(o->lr * lr_scale / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float wd = (float)o->weight_decay;
    const int adamw = o->kind == TLEARN_ADAMW;
    const float decay = (float)(1.0 - o->lr * lr_scale * o->weight_decay);
    float *m1 = s->m1, *m2 = s->m2;
    for (size_t i = 0; i < numel; i++) {
        float g = grad[i] * gs;
        if (ra)
            g += ra[i] * theta[i] - rb[i];
        if (adamw)
            theta[i] *= decay;
        else if (wd != 0.0f)
            g += wd * theta[i];
        m1[i] = m1[i] * b1 + c1 * g;
        m2[i] = m2[i] * b2 + c2 * g * g;
        float denom = sqrtf(m2[i]) / bc2_sqrt + eps;
        theta[i] -= step_size * (m1[i] / denom);
    }
    return TLEARN_OK;
}
