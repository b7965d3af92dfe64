/* Learning-rate schedules with torch.optim.lr_scheduler's formulas (PyTorch 1.13), in their
 * closed forms of the step number so that a checkpoint needs the position only. torch's
 * chainable forms multiply the previous rate instead; the two agree to rounding. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "train.h"

#define PI 3.14159265358979323846 /* math.pi */
#define K(kind) (1u << (kind))
#define ALL_KINDS 0x1feu
#define WARMUP_KINDS 0x7eu /* one-cycle and slanted triangular warm up by themselves */

/* Per parameter: the kinds that use it, its range and whether it is an integer. */
static const struct {
    const char *name;
    unsigned kinds;
    double lo, hi;
    int lo_open, hi_open, integer;
    double def;
} PARAM[TL_SCHED_NPARAM + 1] = {
    [TLEARN_SCHED_UNIT] = {"unit", ALL_KINDS, 0, 1, 0, 0, 1, 0},
    [TLEARN_SCHED_GAMMA] = {"gamma", K(2) | K(3) | K(4), 0, DBL_MAX, 1, 0, 0, 0.1},
    [TLEARN_SCHED_STEP_SIZE] = {"step_size", K(2), 1, 1e15, 0, 0, 1, 0},
    [TLEARN_SCHED_PERIOD] = {"period", K(5) | K(6), 0, 1e15, 0, 0, 1, 0},
    [TLEARN_SCHED_T_MULT] = {"t_mult", K(6), 1, 1e6, 0, 0, 1, 1},
    [TLEARN_SCHED_ETA_MIN] = {"eta_min", K(5) | K(6), 0, DBL_MAX, 0, 0, 0, 0},
    [TLEARN_SCHED_FACTOR] = {"factor", K(1), 0, 1, 0, 0, 0, 1},
    [TLEARN_SCHED_TOTAL_STEPS] = {"total_steps", K(1) | K(7) | K(8), 0, 1e15, 0, 0, 1, 0},
    [TLEARN_SCHED_PCT_START] = {"pct_start", K(7), 0, 1, 0, 0, 0, 0.3},
    [TLEARN_SCHED_DIV_FACTOR] = {"div_factor", K(7), 0, DBL_MAX, 1, 0, 0, 25},
    [TLEARN_SCHED_FINAL_DIV_FACTOR] = {"final_div_factor", K(7), 0, DBL_MAX, 1, 0, 0, 1e4},
    [TLEARN_SCHED_LINEAR_ANNEAL] = {"linear_anneal", K(7), 0, 1, 0, 0, 1, 0},
    [TLEARN_SCHED_THREE_PHASE] = {"three_phase", K(7), 0, 1, 0, 0, 1, 0},
    [TLEARN_SCHED_CYCLE_MOMENTUM] = {"cycle_momentum", K(7), 0, 1, 0, 0, 1, 1},
    [TLEARN_SCHED_BASE_MOMENTUM] = {"base_momentum", K(7), 0, 1, 0, 1, 0, 0.85},
    [TLEARN_SCHED_MAX_MOMENTUM] = {"max_momentum", K(7), 0, 1, 0, 1, 0, 0.95},
    [TLEARN_SCHED_CUT_FRAC] = {"cut_frac", K(8), 0, 1, 1, 1, 0, 0.1},
    [TLEARN_SCHED_RATIO] = {"ratio", K(8), 1, DBL_MAX, 0, 0, 0, 32},
    [TLEARN_SCHED_WARMUP_STEPS] = {"warmup_steps", WARMUP_KINDS, 0, 1e15, 0, 0, 1, 0},
    [TLEARN_SCHED_WARMUP_START_FACTOR] = {"warmup_start_factor", WARMUP_KINDS, 0, 1, 1, 0, 0,
                                          0.1},
};

static const char *const KIND_NAME[] = {"?", "constant", "step", "multistep", "exponential",
                                        "cosine", "cosine_restarts", "one_cycle",
                                        "slanted_triangular"};

int tlearn_sched_create(tlearn_sched **out, int kind)
{
    static const char fn[] = "tlearn_sched_create";
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (kind < TLEARN_SCHED_CONSTANT || kind > TLEARN_SCHED_SLANTED_TRIANGULAR)
        return tl_fail(TLEARN_EINVAL, "%s: unknown schedule kind %d", fn, kind);
    tlearn_sched *s = tl_alloc_zero(sizeof *s);
    if (!s)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    s->kind = kind;
    for (int p = 1; p <= TL_SCHED_NPARAM; p++)
        s->p[p] = PARAM[p].def;
    *out = s;
    return TLEARN_OK;
}

void tlearn_sched_destroy(tlearn_sched **s)
{
    if (!s || !*s)
        return;
    tl_free(*s);
    *s = NULL;
}

int tl_sched_set(const char *fn, tlearn_sched *s, int param, double v)
{
    if (!s)
        return tl_fail(TLEARN_EINVAL, "%s: schedule is NULL", fn);
    if (param < 1 || param > TL_SCHED_NPARAM)
        return tl_fail(TLEARN_EINVAL, "%s: unknown parameter %d", fn, param);
    const char *name = PARAM[param].name;
    if (!(PARAM[param].kinds & K(s->kind)))
        return tl_fail(TLEARN_EINVAL, "%s: parameter %s does not apply to a %s schedule", fn,
                       name, KIND_NAME[s->kind]);
    if (!isfinite(v))
        return tl_fail(TLEARN_EINVAL, "%s: %s is %g, must be finite", fn, name, v);
    double lo = PARAM[param].lo, hi = PARAM[param].hi;
    int bad = PARAM[param].lo_open ? !(v > lo) : !(v >= lo);
    bad |= PARAM[param].hi_open ? !(v < hi) : !(v <= hi);
    if (bad)
        return tl_fail(TLEARN_EINVAL, "%s: %s is %g, must be in %c%g, %g%c", fn, name, v,
                       PARAM[param].lo_open ? '(' : '[', lo, hi, PARAM[param].hi_open ? ')' : ']');
    if (PARAM[param].integer && v != floor(v))
        return tl_fail(TLEARN_EINVAL, "%s: %s is %g, must be a whole number", fn, name, v);
    s->p[param] = v;
    return TLEARN_OK;
}

int tlearn_sched_set(tlearn_sched *s, int param, double value)
{
    return tl_sched_set("tlearn_sched_set", s, param, value);
}

int tlearn_sched_get(const tlearn_sched *s, int param, double *value)
{
    static const char fn[] = "tlearn_sched_get";
    if (!s || !value)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !s ? "schedule" : "value");
    if (param < 1 || param > TL_SCHED_NPARAM)
        return tl_fail(TLEARN_EINVAL, "%s: unknown parameter %d", fn, param);
    *value = s->p[param];
    return TLEARN_OK;
}

int tlearn_sched_set_milestones(tlearn_sched *s, const int64_t *milestones, size_t count)
{
    static const char fn[] = "tlearn_sched_set_milestones";
    if (!s || !milestones)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !s ? "schedule" : "milestones");
    if (s->kind != TLEARN_SCHED_MULTISTEP)
        return tl_fail(TLEARN_EINVAL, "%s: milestones apply to a multistep schedule, not %s",
                       fn, KIND_NAME[s->kind]);
    if (count < 1 || count > TL_SCHED_MAX_MILESTONES)
        return tl_fail(TLEARN_EINVAL, "%s: count is %zu, must be in 1..%d", fn, count,
                       TL_SCHED_MAX_MILESTONES);
    for (size_t i = 0; i < count; i++)
        if (milestones[i] < 1 || (i > 0 && milestones[i] <= milestones[i - 1]))
            return tl_fail(TLEARN_EINVAL, "%s: milestones[%zu] is %lld; milestones must be >= 1 "
                           "and strictly increasing", fn, i, (long long)milestones[i]);
    memcpy(s->mile, milestones, count * sizeof *milestones);
    s->nmile = (int)count;
    return TLEARN_OK;
}

/* The length parameter a kind needs and whether 0 means "auto" (filled by fit). */
static int length_param(int kind, int *autofill)
{
    *autofill = 1;
    switch (kind) {
    case TLEARN_SCHED_STEP: *autofill = 0; return TLEARN_SCHED_STEP_SIZE;
    case TLEARN_SCHED_COSINE: return TLEARN_SCHED_PERIOD;
    case TLEARN_SCHED_COSINE_RESTARTS: *autofill = 0; return TLEARN_SCHED_PERIOD;
    case TLEARN_SCHED_ONE_CYCLE:
    case TLEARN_SCHED_SLANTED_TRIANGULAR: return TLEARN_SCHED_TOTAL_STEPS;
    default: return 0;
    }
}

int tl_sched_ready(const tlearn_sched *s)
{
    int autofill, p = length_param(s->kind, &autofill);
    return !p || s->p[p] >= 1;
}

int tl_sched_check(const char *fn, const tlearn_sched *s)
{
    int autofill, p = length_param(s->kind, &autofill);
    if (p && !autofill && !(s->p[p] >= 1))
        return tl_fail(TLEARN_EINVAL, "%s: a %s schedule needs %s >= 1", fn,
                       KIND_NAME[s->kind], PARAM[p].name);
    if (s->kind == TLEARN_SCHED_MULTISTEP && s->nmile == 0)
        return tl_fail(TLEARN_EINVAL, "%s: a multistep schedule needs milestones "
                       "(tlearn_sched_set_milestones)", fn);
    double total = s->p[TLEARN_SCHED_TOTAL_STEPS];
    if (s->kind == TLEARN_SCHED_ONE_CYCLE && total >= 1) {
        /* torch divides by each phase's length: none may be 0 or negative. */
        double pct = s->p[TLEARN_SCHED_PCT_START], e1 = pct * total - 1;
        double e2 = s->p[TLEARN_SCHED_THREE_PHASE] ? 2 * pct * total - 2 : total - 1;
        if (!(e1 > 0) || !(e2 > e1) || (s->p[TLEARN_SCHED_THREE_PHASE] && !(total - 1 > e2)))
            return tl_fail(TLEARN_EINVAL, "%s: one-cycle phases of %g total steps with "
                           "pct_start %g would have no length", fn, total, pct);
    }
    if (s->kind == TLEARN_SCHED_SLANTED_TRIANGULAR && total >= 1 &&
        floor(total * s->p[TLEARN_SCHED_CUT_FRAC]) < 1)
        return tl_fail(TLEARN_EINVAL, "%s: slanted triangular: total_steps %g x cut_frac %g "
                       "is below 1 step", fn, total, s->p[TLEARN_SCHED_CUT_FRAC]);
    return TLEARN_OK;
}

int tl_sched_resolve(const char *fn, tlearn_sched *s, int64_t total)
{
    int autofill, p = length_param(s->kind, &autofill);
    if (p && autofill && s->p[p] == 0) {
        double left = (double)total - s->p[TLEARN_SCHED_WARMUP_STEPS];
        if (left < 1)
            return tl_fail(TLEARN_EINVAL, "%s: the schedule's %s is 0 (auto) but %lld steps "
                           "leave none after %g warm-up steps", fn, PARAM[p].name,
                           (long long)total, s->p[TLEARN_SCHED_WARMUP_STEPS]);
        s->p[p] = left;
    }
    return tl_sched_check(fn, s);
}

/* OneCycleLR._annealing_cos / _annealing_linear */
static double anneal(int linear, double start, double end, double pct)
{
    if (linear)
        return (end - start) * pct + start;
    return end + (start - end) / 2.0 * (cos(PI * pct) + 1);
}

static void one_cycle(const tlearn_sched *s, double t, double base, double *lr, double *mom)
{
    const double *p = s->p;
    double total = p[TLEARN_SCHED_TOTAL_STEPS], pct_start = p[TLEARN_SCHED_PCT_START];
    double initial = base / p[TLEARN_SCHED_DIV_FACTOR];
    double lrs[4] = {initial, base, initial / p[TLEARN_SCHED_FINAL_DIV_FACTOR], initial};
    double mb = p[TLEARN_SCHED_BASE_MOMENTUM], mm = p[TLEARN_SCHED_MAX_MOMENTUM];
    /* phases: end step, start/end lr (index into lrs), start/end momentum */
    struct {
        double end;
        int l0, l1;
        double m0, m1;
    } ph[3];
    int n;
    if (p[TLEARN_SCHED_THREE_PHASE]) {
        ph[0].end = pct_start * total - 1, ph[0].l0 = 0, ph[0].l1 = 1, ph[0].m0 = mm, ph[0].m1 = mb;
        ph[1].end = 2 * pct_start * total - 2, ph[1].l0 = 1, ph[1].l1 = 3, ph[1].m0 = mb,
        ph[1].m1 = mm;
        ph[2].end = total - 1, ph[2].l0 = 3, ph[2].l1 = 2, ph[2].m0 = mm, ph[2].m1 = mm;
        n = 3;
    } else {
        ph[0].end = pct_start * total - 1, ph[0].l0 = 0, ph[0].l1 = 1, ph[0].m0 = mm, ph[0].m1 = mb;
        ph[1].end = total - 1, ph[1].l0 = 1, ph[1].l1 = 2, ph[1].m0 = mb, ph[1].m1 = mm;
        n = 2;
    }
    if (t > total - 1) /* torch refuses to go on; the last rate is kept */
        t = total - 1;
    int linear = p[TLEARN_SCHED_LINEAR_ANNEAL] != 0;
    double start = 0;
    for (int i = 0; i < n; i++) {
        if (t <= ph[i].end || i == n - 1) {
            double pct = (t - start) / (ph[i].end - start);
            *lr = anneal(linear, lrs[ph[i].l0], lrs[ph[i].l1], pct);
            if (p[TLEARN_SCHED_CYCLE_MOMENTUM])
                *mom = anneal(linear, ph[i].m0, ph[i].m1, pct);
            return;
        }
        start = ph[i].end;
    }
}

void tl_sched_eval(const tlearn_sched *s, int64_t step, double base, double *lr, double *mom)
{
    const double *p = s->p;
    double t = (double)step, w = p[TLEARN_SCHED_WARMUP_STEPS];
    *mom = NAN;
    if (t < w) {
        /* LinearLR(start_factor, end_factor 1, total_iters w) */
        double f = p[TLEARN_SCHED_WARMUP_START_FACTOR];
        *lr = base * (f + (1.0 - f) * t / w);
        return;
    }
    t -= w;
    switch (s->kind) {
    case TLEARN_SCHED_CONSTANT: {
        double total = p[TLEARN_SCHED_TOTAL_STEPS];
        *lr = total == 0 || t < total ? base * p[TLEARN_SCHED_FACTOR] : base;
        return;
    }
    case TLEARN_SCHED_STEP:
        *lr = base * pow(p[TLEARN_SCHED_GAMMA], floor(t / p[TLEARN_SCHED_STEP_SIZE]));
        return;
    case TLEARN_SCHED_MULTISTEP: {
        int passed = 0; /* bisect_right(milestones, t) */
        while (passed < s->nmile && (double)s->mile[passed] <= t)
            passed++;
        *lr = base * pow(p[TLEARN_SCHED_GAMMA], passed);
        return;
    }
    case TLEARN_SCHED_EXPONENTIAL:
        *lr = base * pow(p[TLEARN_SCHED_GAMMA], t);
        return;
    case TLEARN_SCHED_COSINE:
    case TLEARN_SCHED_COSINE_RESTARTS: {
        double eta = p[TLEARN_SCHED_ETA_MIN], ti = p[TLEARN_SCHED_PERIOD], tcur = t;
        if (s->kind == TLEARN_SCHED_COSINE_RESTARTS) {
            double mult = p[TLEARN_SCHED_T_MULT];
            if (mult == 1)
                tcur = fmod(t, ti);
            else
                while (tcur >= ti) { /* the periods grow geometrically: few rounds */
                    tcur -= ti;
                    ti *= mult;
                }
        }
        *lr = eta + (base - eta) * (1 + cos(PI * tcur / ti)) / 2;
        return;
    }
    case TLEARN_SCHED_ONE_CYCLE:
        one_cycle(s, t, base, lr, mom);
        return;
    case TLEARN_SCHED_SLANTED_TRIANGULAR: {
        double total = p[TLEARN_SCHED_TOTAL_STEPS], frac = p[TLEARN_SCHED_CUT_FRAC];
        double ratio = p[TLEARN_SCHED_RATIO], cut = floor(total * frac);
        double q = t < cut ? t / cut : 1 - (t - cut) / (cut * (1 / frac - 1));
        if (q < 0) /* past the end */
            q = 0;
        *lr = base * (1 + q * (ratio - 1)) / ratio;
        return;
    }
    default:
        *lr = base;
    }
}

/* ------------------------------------------------------------------------------------ */
/* The optimizer's side. */

int tlearn_optim_set_schedule(tlearn_optim *o, const tlearn_sched *s)
{
    static const char fn[] = "tlearn_optim_set_schedule";
    if (!o)
        return tl_fail(TLEARN_EINVAL, "%s: optimizer is NULL", fn);
    if (!s) {
        tl_free(o->sched);
        o->sched = NULL;
        return TLEARN_OK;
    }
    int rc = tl_sched_check(fn, s);
    if (rc)
        return rc;
    tl_sched_run *r = o->sched ? o->sched : tl_alloc_zero(sizeof *r);
    if (!r)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    r->cfg = *s;
    r->t = 0;
    o->sched = r;
    return TLEARN_OK;
}

int tlearn_optim_schedule_step(tlearn_optim *o)
{
    static const char fn[] = "tlearn_optim_schedule_step";
    if (!o)
        return tl_fail(TLEARN_EINVAL, "%s: optimizer is NULL", fn);
    if (!o->sched)
        return tl_fail(TLEARN_ESTATE, "%s: no schedule is attached", fn);
    o->sched->t++;
    return TLEARN_OK;
}

int tlearn_optim_schedule_position(const tlearn_optim *o, int64_t *steps)
{
    static const char fn[] = "tlearn_optim_schedule_position";
    if (!o || !steps)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !o ? "optimizer" : "steps");
    if (!o->sched)
        return tl_fail(TLEARN_ESTATE, "%s: no schedule is attached", fn);
    *steps = o->sched->t;
    return TLEARN_OK;
}

void tl_optim_current(const tlearn_optim *o, double *lr, double *momentum, double *beta1)
{
    *lr = o->lr;
    *momentum = o->momentum;
    *beta1 = o->beta1;
    if (!o->sched)
        return;
    double mom;
    tl_sched_eval(&o->sched->cfg, o->sched->t, o->lr, lr, &mom);
    if (!isnan(mom)) {
        if (o->kind == TLEARN_SGD)
            *momentum = mom;
        else
            *beta1 = mom;
    }
}

int tlearn_optim_get_current(const tlearn_optim *o, int param, double *value)
{
    int rc = tlearn_optim_get(o, param, value);
    if (rc)
        return tl_fail_prefix(rc, "tlearn_optim_get_current: ");
    double lr, mom, b1;
    tl_optim_current(o, &lr, &mom, &b1);
    if (param == TLEARN_OPT_LR)
        *value = lr;
    else if (param == TLEARN_OPT_MOMENTUM)
        *value = mom;
    else if (param == TLEARN_OPT_BETA1)
        *value = b1;
    return TLEARN_OK;
}

void tl_sched_advance(const tlearn_optim *o, int unit)
{
    if (o->sched && (int)o->sched->cfg.p[TLEARN_SCHED_UNIT] == unit)
        o->sched->t++;
}
