/* Optimizers with PyTorch 1.13's single-tensor formulas (torch/optim/sgd.py, adam.py,
 * adamw.py). Scalars such as bias corrections are computed in double as Python does, then
 * applied in float. The per-parameter state lives in the model's slots. */
#include <float.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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
    tl_free((*o)->sched);
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

/* Messages name a hyperparameter as the header does, never by its number. */
static const char *const PARAM_NAME[] = {
    NULL, "TLEARN_OPT_LR", "TLEARN_OPT_MOMENTUM", "TLEARN_OPT_DAMPENING", "TLEARN_OPT_NESTEROV",
    "TLEARN_OPT_WEIGHT_DECAY", "TLEARN_OPT_BETA1", "TLEARN_OPT_BETA2", "TLEARN_OPT_EPS",
    "TLEARN_OPT_CLIP_NORM"};
static const char *const KIND_NAME[] = {NULL, "SGD", "Adam", "AdamW"};

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
    if (param < TLEARN_OPT_LR || param > TLEARN_OPT_CLIP_NORM)
        return tl_fail(TLEARN_EINVAL, "%s: unknown parameter %d (expected a "
                       "TLEARN_OPT_* value, 1..%d)", fn, param, TLEARN_OPT_CLIP_NORM);
    const char *name = PARAM_NAME[param];
    if (!isfinite(v))
        return tl_fail(TLEARN_EINVAL, "%s: %s is %g, must be finite", fn, name, v);
    int sgd = o->kind == TLEARN_SGD;
    switch (param) {
    case TLEARN_OPT_LR:
        if (!(v > 0) || v > FLT_MAX) /* the update is computed in float */
            return tl_fail(TLEARN_EINVAL, "%s: learning rate %g must be > 0 and at most %g",
                           fn, v, (double)FLT_MAX);
        break;
    case TLEARN_OPT_MOMENTUM:
    case TLEARN_OPT_DAMPENING:
    case TLEARN_OPT_NESTEROV:
        if (!sgd)
            return tl_fail(TLEARN_EINVAL, "%s: %s applies to SGD only, this optimizer is %s",
                           fn, name, KIND_NAME[o->kind]);
        if (param == TLEARN_OPT_NESTEROV) {
            if (v != 0 && v != 1)
                return tl_fail(TLEARN_EINVAL, "%s: nesterov must be 0 or 1, not %g", fn, v);
            /* As torch.optim.SGD: Nesterov needs momentum and zero dampening. */
            if (v == 1 && (o->momentum <= 0 || o->dampening != 0))
                return tl_fail(TLEARN_EINVAL, "%s: nesterov needs momentum > 0 and dampening "
                               "0 (momentum is %g, dampening %g)", fn, o->momentum,
                               o->dampening);
            o->nesterov = (int)v;
            return TLEARN_OK;
        }
        if (o->nesterov && (param == TLEARN_OPT_MOMENTUM ? v == 0 : v != 0))
            return tl_fail(TLEARN_EINVAL, "%s: %s %g is not allowed with nesterov (needs "
                           "momentum > 0 and dampening 0); set nesterov to 0 first", fn,
                           param == TLEARN_OPT_MOMENTUM ? "momentum" : "dampening", v);
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
            return tl_fail(TLEARN_EINVAL, "%s: %s applies to Adam/AdamW only, this optimizer "
                           "is SGD", fn, name);
        if (param == TLEARN_OPT_EPS ? !(v > 0) : (v < 0 || v >= 1))
            return tl_fail(TLEARN_EINVAL, "%s: %s %g is out of range (%s)", fn,
                           param == TLEARN_OPT_EPS ? "eps" : "beta", v,
                           param == TLEARN_OPT_EPS ? "> 0" : "[0, 1)");
        break;
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
        return tl_fail(TLEARN_EINVAL, "%s: unknown parameter %d (expected a "
                       "TLEARN_OPT_* value, 1..%d)", fn, param, TLEARN_OPT_CLIP_NORM);
    *value = *f;
    return TLEARN_OK;
}

/* Which state buffers the next update of @p s creates (bit 0: m1, bit 1: m2): the
 * optimizer's moments that the slot lacks, or all of them when another rule made its state
 * (it starts fresh). */
static unsigned state_needed(const tlearn_optim *o, const tl_slot *s)
{
    double lr, momentum, beta1;
    tl_optim_current(o, &lr, &momentum, &beta1);
    int moments = o->kind == TLEARN_SGD ? (float)momentum != 0.0f : 2;
    int fresh = s->opt_kind != o->kind;
    unsigned need = 0;
    if (moments >= 1 && (fresh || !s->m1))
        need |= 1u;
    if (moments >= 2 && (fresh || !s->m2))
        need |= 2u;
    return need;
}

/* Allocate the buffers of @p need (zeroed) into fresh[0..1]; all or nothing. */
static int state_alloc(unsigned need, size_t numel, float *fresh[2])
{
    for (int k = 0; k < 2; k++) {
        fresh[k] = NULL;
        if ((need >> k & 1u) && !(fresh[k] = tl_alloc_array(numel, sizeof(float)))) {
            tl_free(fresh[0]);
            fresh[0] = NULL;
            return tl_fail(TLEARN_ENOMEM, "optimizer state: out of memory");
        }
    }
    return TLEARN_OK;
}

/* The update loops. Every element gets exactly the arithmetic of PyTorch's single-tensor
 * formula, in the same order; the options are hoisted out of the loops (the macros are
 * instantiated with constant flags for the common cases) so that each loop is simple enough
 * to vectorise, and large tensors are split across the model's threads. A dry run (DRY)
 * computes the same values without storing them and reports whether any would be NaN or
 * infinite, so that a step whose result overflows is refused before anything changes. */
typedef struct upd_args {
    float *theta, *m1, *m2;
    const float *grad, *ra, *rb;
    float gs, lr, wd, mom, damp;              /* SGD */
    float b1, b2, c1, c2, step_size, bc2_sqrt, eps, decay; /* Adam, AdamW */
    int first, nesterov, adamw, dry;
} upd_args;

#define NONFINITE(v) (!(fabsf(v) <= FLT_MAX))
/* Elementwise IEEE arithmetic, so SIMD lanes give the scalar results bit for bit. */
#define UPD_SIMD _Pragma("omp simd reduction(| : bad) reduction(max : mx1, mx2)")
/* A dry run also measures the new state's largest magnitudes (provably_finite's bounds). */
#define TRACK_MAX(MX, V)                                                                     \
    do {                                                                                     \
        float v_ = (V);                                                                      \
        MX = v_ > MX ? v_ : MX;                                                              \
    } while (0)

#define SGD_LOOP(REG, WD, BUF, FIRST, NEST, DRY)                                             \
    UPD_SIMD                                                                                 \
    for (size_t i = lo; i < hi; i++) {                                                       \
        float g = grad[i] * a->gs;                                                           \
        if (REG)                                                                             \
            g += ra[i] * theta[i] - rb[i];                                                   \
        if (WD)                                                                              \
            g += a->wd * theta[i];                                                           \
        if (BUF) {                                                                           \
            float b = (FIRST) ? g : a->mom * buf[i] + a->damp * g;                           \
            if (DRY) {                                                                       \
                bad |= NONFINITE(b);                                                         \
                TRACK_MAX(mx1, fabsf(b));                                                    \
            } else {                                                                         \
                buf[i] = b;                                                                  \
            }                                                                                \
            g = (NEST) ? g + a->mom * b : b;                                                 \
        }                                                                                    \
        float t = theta[i] - a->lr * g;                                                      \
        if (DRY)                                                                             \
            bad |= NONFINITE(t);                                                             \
        else                                                                                 \
            theta[i] = t;                                                                    \
    }

#define SGD_VARIANTS(DRY)                                                                    \
    if (buf && !a->first && !a->nesterov && !wd) { /* momentum, with or without EWC */       \
        if (reg)                                                                             \
            SGD_LOOP(1, 0, 1, 0, 0, DRY)                                                     \
        else                                                                                 \
            SGD_LOOP(0, 0, 1, 0, 0, DRY)                                                     \
    } else if (!buf && !wd && !reg) {                                                        \
        SGD_LOOP(0, 0, 0, 0, 0, DRY)                                                         \
    } else {                                                                                 \
        SGD_LOOP(reg, wd, buf != NULL, a->first, a->nesterov, DRY)                           \
    }

static int sgd_range(const upd_args *args, size_t lo, size_t hi, float mx[2])
{
    const upd_args copy = *args, *a = &copy; /* loop invariants, not reloaded */
    float *restrict theta = a->theta, *restrict buf = a->m1;
    const float *restrict grad = a->grad, *restrict ra = a->ra, *restrict rb = a->rb;
    int reg = ra != NULL, wd = a->wd != 0.0f, bad = 0;
    float mx1 = 0.0f, mx2 = 0.0f;
    if (a->dry)
        SGD_VARIANTS(1)
    else
        SGD_VARIANTS(0)
    mx[0] = mx1, mx[1] = mx2;
    return bad;
}

#define ADAM_LOOP(REG, ADAMW, WD, DRY)                                                       \
    UPD_SIMD                                                                                 \
    for (size_t i = lo; i < hi; i++) {                                                       \
        float g = grad[i] * a->gs, t = theta[i];                                             \
        if (REG)                                                                             \
            g += ra[i] * t - rb[i];                                                          \
        if (ADAMW)                                                                           \
            t *= a->decay;                                                                   \
        else if (WD)                                                                         \
            g += a->wd * t;                                                                  \
        float v1 = m1[i] * a->b1 + a->c1 * g;                                                \
        float v2 = m2[i] * a->b2 + a->c2 * g * g;                                            \
        float denom = sqrtf(v2) / a->bc2_sqrt + a->eps;                                      \
        t -= a->step_size * (v1 / denom);                                                    \
        if (DRY) {                                                                           \
            bad |= NONFINITE(v1) | NONFINITE(v2) | NONFINITE(t);                             \
            TRACK_MAX(mx1, fabsf(v1));                                                       \
            TRACK_MAX(mx2, v2);                                                              \
        } else {                                                                             \
            m1[i] = v1;                                                                      \
            m2[i] = v2;                                                                      \
            theta[i] = t;                                                                    \
        }                                                                                    \
    }

#define ADAM_VARIANTS(DRY)                                                                   \
    if (!reg && !a->adamw && !wd)                                                            \
        ADAM_LOOP(0, 0, 0, DRY)                                                              \
    else if (!reg && a->adamw)                                                               \
        ADAM_LOOP(0, 1, 0, DRY)                                                              \
    else                                                                                     \
        ADAM_LOOP(reg, a->adamw, wd, DRY)

static int adam_range(const upd_args *args, size_t lo, size_t hi, float mx[2])
{
    const upd_args copy = *args, *a = &copy; /* loop invariants, not reloaded */
    float *restrict theta = a->theta, *restrict m1 = a->m1, *restrict m2 = a->m2;
    const float *restrict grad = a->grad, *restrict ra = a->ra, *restrict rb = a->rb;
    int reg = ra != NULL, wd = a->wd != 0.0f, bad = 0;
    float mx1 = 0.0f, mx2 = 0.0f;
    if (a->dry)
        ADAM_VARIANTS(1)
    else
        ADAM_VARIANTS(0)
    mx[0] = mx1, mx[1] = mx2;
    return bad;
}

/* Momentum and moment buffers of parameters whose gradient stays 0 (dead ReLU units, a
 * frozen input feature) decay geometrically into the subnormal range, where each operation
 * costs a hundred times more (a batch-1 SGD step ran 6x slower after ~1000 steps). The
 * update loops therefore flush subnormals to zero (MXCSR FTZ and DAZ, on the thread doing
 * the loop) and restore the caller's mode afterwards. Only values below 1.2e-38 change. */
#if defined(__x86_64__) || defined(__SSE2__)
#include <xmmintrin.h>
static unsigned ftz_begin(void)
{
    unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static void ftz_end(unsigned old)
{
    _mm_setcsr(old);
}
#else
static unsigned ftz_begin(void)
{
    return 0;
}
static void ftz_end(unsigned old)
{
    (void)old;
}
#endif

static int update_range(const upd_args *a, size_t lo, size_t hi, int sgd, float mx[2])
{
    unsigned mode = ftz_begin();
    int bad = sgd ? sgd_range(a, lo, hi, mx) : adam_range(a, lo, hi, mx);
    ftz_end(mode);
    return bad;
}

/* Returns non-zero when a dry run found a value that would not be finite; a dry run also
 * leaves the new state's max |m1| and max m2 in mx[]. */
static int run_update(const upd_args *a, size_t numel, int threads, int sgd, float mx[2])
{
    int nt = tl_par_threads(threads, numel);
    if (nt == 1)
        return update_range(a, 0, numel, sgd, mx);
    int bad = 0;
    float mx1 = 0.0f, mx2 = 0.0f;
#pragma omp parallel num_threads(nt) reduction(| : bad) reduction(max : mx1, mx2)
    {
#ifdef _OPENMP
        size_t lo, hi;
        tl_par_range(numel, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
#else
        size_t lo = 0, hi = numel;
#endif
        float part[2];
        bad |= update_range(a, lo, hi, sgd, part);
        mx1 = part[0] > mx1 ? part[0] : mx1;
        mx2 = part[1] > mx2 ? part[1] : mx2;
    }
    mx[0] = mx1, mx[1] = mx2;
    return bad;
}

/* Bounds below this keep an update far from float's range (3.4e38) and below 2^102: a
 * finite float changed by less than 2^103 cannot overflow (round to nearest overflows only
 * from 2^128 - 2^103), so a weight's own magnitude never needs checking. */
#define SAFE_BOUND 1e30

/* Whether the update @p a of @p s is finite for certain, from the largest gradient the
 * step's finiteness scan measured and bounds on the state the previous update left (on
 * the weights too where the gradient depends on them: weight decay, EWC). The common
 * case then skips the dry run, which costs a pass over every tensor. On success the state
 * bounds after the update are in pb[] (rounding margins included). */
static int provably_finite(const upd_args *a, const tl_slot *s, int restart,
                           const float *theta, size_t numel, int sgd, float *const fresh[2],
                           int threads, float pb[2])
{
    double old[2];
    for (int k = 0; k < 2; k++) {
        if (fresh[k])
            old[k] = 0.0; /* zeroed new buffer */
        else if (!s->bounded || restart)
            return 0;
        else
            old[k] = s->sbound[k];
    }
    if (!s->have_gbound)
        return 0;
    double g = (double)s->gbound * fabs((double)a->gs);
    int l2 = a->wd != 0.0f && (sgd || !a->adamw);
    if (a->ra || l2) {
        double t = tl_max_abs(theta, numel, threads);
        if (a->ra)
            g += (double)s->rbound[0] * t + (double)s->rbound[1];
        if (l2)
            g += fabs((double)a->wd) * t;
    }
    double b1 = 0.0, b2 = 0.0, step;
    if (sgd) {
        if (a->m1) {
            b1 = a->first ? g : fabs((double)a->mom) * old[0] + fabs((double)a->damp) * g;
            step = a->nesterov ? g + fabs((double)a->mom) * b1 : b1;
        } else {
            step = g;
        }
        step *= fabs((double)a->lr);
    } else {
        /* denom = sqrt(v2)/bc2_sqrt + eps >= eps > 0 when v2 >= 0 */
        if (!(a->eps > 0.0f && a->b2 >= 0.0f && a->c2 >= 0.0f &&
              (!a->adamw || fabsf(a->decay) <= 1.0f)))
            return 0;
        b1 = fabs((double)a->b1) * old[0] + fabs((double)a->c1) * g;
        b2 = (double)a->b2 * old[1] + (double)a->c2 * g * g;
        step = fabs((double)a->step_size) * b1 / (double)a->eps;
    }
    b1 *= 1.0 + 1e-5; /* covers float rounding in the loop and in these bounds */
    b2 *= 1.0 + 1e-5;
    if (!(g < SAFE_BOUND && b1 < SAFE_BOUND && b2 < SAFE_BOUND && step < SAFE_BOUND))
        return 0;
    pb[0] = (float)b1;
    pb[1] = (float)b2;
    return 1;
}

/* One tensor's update with the state buffers @p fresh from state_alloc(state_needed()):
 * a dry run (returns 1 when a new value would not be finite; nothing is written), or the
 * update itself, which installs the fresh buffers (returns 0). */
static int update_slot(const tlearn_optim *o, tl_slot *s, float *theta, size_t numel,
                       float lr_scale, float grad_scale, int threads, float *fresh[2], int dry)
{
    int restart = s->opt_kind != o->kind;
    float *m1 = fresh[0] ? fresh[0] : restart ? NULL : s->m1;
    float *m2 = fresh[1] ? fresh[1] : restart ? NULL : s->m2;
    int64_t step = (restart ? 0 : s->step) + 1;
    upd_args a;
    memset(&a, 0, sizeof a);
    a.theta = theta;
    a.grad = s->grad;
    a.ra = s->reg_a;
    a.rb = s->reg_b;
    a.gs = grad_scale;
    a.dry = dry;
    a.m1 = m1;
    a.m2 = m2;
    int sgd = o->kind == TLEARN_SGD;
    double lr, momentum, beta1; /* as the schedule sets them; else as set */
    tl_optim_current(o, &lr, &momentum, &beta1);
    if (sgd) {
        a.lr = (float)(lr * lr_scale);
        a.wd = (float)o->weight_decay;
        a.mom = (float)momentum;
        a.damp = (float)(1.0 - o->dampening);
        a.nesterov = o->nesterov;
        /* PyTorch clones d into a new momentum buffer the first time it needs one: also
         * when momentum is switched on after plain steps or after another rule. */
        a.first = fresh[0] != NULL;
    } else {
        /* (1 - beta) is formed in double and rounded once, as PyTorch's scalar alpha is. */
        a.b1 = (float)beta1;
        a.b2 = (float)o->beta2;
        a.eps = (float)o->eps;
        a.c1 = (float)(1.0 - beta1);
        a.c2 = (float)(1.0 - o->beta2);
        const double bc1 = 1.0 - pow(beta1, (double)step);
        const double bc2 = 1.0 - pow(o->beta2, (double)step);
        a.step_size = (float)(lr * lr_scale / bc1);
        a.bc2_sqrt = (float)sqrt(bc2);
        a.wd = (float)o->weight_decay;
        a.adamw = o->kind == TLEARN_ADAMW;
        a.decay = (float)(1.0 - lr * lr_scale * o->weight_decay);
    }
    if (dry) {
        if (provably_finite(&a, s, restart, theta, numel, sgd, fresh, threads, s->pbound))
            return 0;
        return run_update(&a, numel, threads, sgd, s->pbound);
    }
    if (restart || fresh[0] || fresh[1]) {
        if (restart || fresh[0])
            tl_free(s->m1);
        if (restart || fresh[1])
            tl_free(s->m2);
        s->m1 = m1;
        s->m2 = m2;
        s->opt_kind = o->kind;
    }
    float unused[2];
    run_update(&a, numel, threads, sgd, unused);
    s->step = step;
    s->sbound[0] = s->pbound[0], s->sbound[1] = s->pbound[1], s->bounded = 1;
    s->have_gbound = 0;
    return 0;
}

int tl_optim_update(const tlearn_optim *o, tl_slot *s, float *theta, size_t numel,
                    float lr_scale, float grad_scale)
{
    return tl_optim_update_mt(o, s, theta, numel, lr_scale, grad_scale, 1);
}

int tl_optim_update_mt(const tlearn_optim *o, tl_slot *s, float *theta, size_t numel,
                       float lr_scale, float grad_scale, int threads)
{
    float *fresh[2];
    int rc = state_alloc(state_needed(o, s), numel, fresh);
    if (rc)
        return rc;
    if (update_slot(o, s, theta, numel, lr_scale, grad_scale, threads, fresh, 1)) {
        tl_free(fresh[0]);
        tl_free(fresh[1]);
        return tl_fail(TLEARN_ENONFINITE, "the update would make a value non-finite");
    }
    update_slot(o, s, theta, numel, lr_scale, grad_scale, threads, fresh, 0);
    return TLEARN_OK;
}

/* The model's trainable tensors in order: advances *it (start at 0) and returns the next
 * slot, with its layer and parameter index, or NULL at the end. */
static tl_slot *next_trainable(tlearn_model *m, int *it, int *layer, int *param)
{
    for (; *it < m->nlayers * TL_MAX_PARAMS; (*it)++) {
        int i = *it / TL_MAX_PARAMS, p = *it % TL_MAX_PARAMS;
        tl_slot *s = &m->lstate[i].slot[p];
        if (p < m->layers[i]->nparam && tl_param_trains(m, i, p) && s->grad) {
            (*it)++;
            *layer = i;
            *param = p;
            return s;
        }
    }
    return NULL;
}

int tl_optim_step(const char *fn, const tlearn_optim *o, tlearn_model *m, float grad_scale)
{
    /* 1. State buffers for every tensor that lacks them, before anything changes; a step
     * that needs none (the steady state) allocates nothing. */
    int n = 0, nfresh = 0, it = 0, i, p, rc = TLEARN_OK;
    tl_slot *s;
    if (o->sched && !tl_sched_ready(&o->sched->cfg))
        return tl_fail(TLEARN_ESTATE, "%s: the schedule's length is 0 (auto), which only "
                       "tlearn_model_fit_run fills in; set it", fn);
    while ((s = next_trainable(m, &it, &i, &p))) {
        n++;
        nfresh += state_needed(o, s) != 0;
    }
    float **fresh = NULL, *none[2] = {NULL, NULL};
    if (nfresh && !(fresh = tl_alloc_array(2 * (size_t)n, sizeof *fresh)))
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for optimizer state", fn);
    for (int k = 0, it2 = 0; fresh && (s = next_trainable(m, &it2, &i, &p)); k++)
        if ((rc = state_alloc(state_needed(o, s), m->layers[i]->param[p].t.numel,
                              fresh + 2 * k)))
            break;
    /* 2. A dry run of every update: a value that would become NaN or infinite (a huge
     * learning rate, a penalty gradient or moment that overflows float) refuses the step. */
    for (int k = 0, it2 = 0; !rc && (s = next_trainable(m, &it2, &i, &p)); k++) {
        tl_param *P = &m->layers[i]->param[p];
        if (update_slot(o, s, P->t.data, P->t.numel, m->lstate[i].lr_scale, grad_scale,
                        m->threads, fresh ? fresh + 2 * k : none, 1))
            rc = tl_fail(TLEARN_ENONFINITE, "%s: the update of '%s.%s' would make it or its "
                         "optimizer state non-finite (learning rate %g x scale %g); weights "
                         "unchanged", fn, m->layers[i]->name, P->name, o->lr,
                         (double)m->lstate[i].lr_scale);
    }
    if (rc) {
        for (int it2 = 0; (s = next_trainable(m, &it2, &i, &p));)
            s->have_gbound = 0; /* the next step measures its own gradients */
        for (int k = 0; fresh && k < 2 * n; k++)
            tl_free(fresh[k]);
        tl_free(fresh);
        return rc == TLEARN_ENOMEM ? tl_fail_prefix(rc, "%s: ", fn) : rc;
    }
    /* 3. The updates. */
    for (int k = 0, it2 = 0; (s = next_trainable(m, &it2, &i, &p)); k++) {
        tl_param *P = &m->layers[i]->param[p];
        update_slot(o, s, P->t.data, P->t.numel, m->lstate[i].lr_scale, grad_scale,
                    m->threads, fresh ? fresh + 2 * k : none, 0);
    }
    tl_free(fresh);
    tl_sched_advance(o, TLEARN_SCHED_PER_BATCH);
    return TLEARN_OK;
}
