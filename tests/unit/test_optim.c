/* Optimizer updates against PyTorch 1.13's single-tensor formulas, written out here in
 * double from torch/optim/sgd.py, adam.py and adamw.py:
 *
 *   SGD:   d = g + wd*theta
 *          buf = d                               (first step with momentum: a clone)
 *          buf = momentum*buf + (1-dampening)*d  (later steps)
 *          d = nesterov ? d + momentum*buf : buf
 *          theta -= lr*d
 *   Adam:  d = g + wd*theta;  m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2
 *          theta -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 *   AdamW: theta *= 1 - lr*wd, then Adam's update with d = g
 *
 * tl_optim_update is driven directly on a tl_slot whose gradient the test sets, for several
 * steps with different gradients; the float result must match the double reference with
 * rtol 1e-5 / atol 1e-6 (PyTorch itself matches its formulas to about 1 ulp, not bit for bit).
 * Learning rates are large enough (0.05..0.1) that an error of 1% in one update exceeds the
 * tolerance. Gradient-norm clipping is checked through the public API against
 * torch.nn.utils.clip_grad_norm_ (coef = max_norm / (norm + 1e-6), applied when < 1). */
#include "common.h"

#include "model/model.h"
#include "train/train.h"

enum { NUMEL = 5, STEPS = 6 };

typedef struct cfg {
    int kind;
    double lr, momentum, dampening, wd, b1, b2, eps;
    int nesterov;
    double lr_scale, grad_scale;
} cfg;

typedef struct ref_state {
    double theta[NUMEL], buf[NUMEL], m[NUMEL], v[NUMEL];
    int have_buf;
    int t;
} ref_state;

static void ref_step(const cfg *c, ref_state *s, const float *grad)
{
    double lr = c->lr * c->lr_scale;
    s->t++;
    for (int i = 0; i < NUMEL; i++) {
        double g = (double)grad[i] * c->grad_scale;
        double *th = &s->theta[i];
        if (c->kind == TLEARN_SGD) {
            double d = g + c->wd * *th;
            if (c->momentum != 0) {
                s->buf[i] = s->have_buf ? c->momentum * s->buf[i] + (1 - c->dampening) * d : d;
                d = c->nesterov ? d + c->momentum * s->buf[i] : s->buf[i];
            }
            *th -= lr * d;
            continue;
        }
        double d = g;
        if (c->kind == TLEARN_ADAMW)
            *th *= 1 - lr * c->wd;
        else
            d += c->wd * *th;
        s->m[i] = c->b1 * s->m[i] + (1 - c->b1) * d;
        s->v[i] = c->b2 * s->v[i] + (1 - c->b2) * d * d;
        double bc1 = 1 - pow(c->b1, s->t), bc2 = 1 - pow(c->b2, s->t);
        *th -= lr / bc1 * s->m[i] / (sqrt(s->v[i]) / sqrt(bc2) + c->eps);
    }
    if (c->kind == TLEARN_SGD && c->momentum != 0)
        s->have_buf = 1;
}

static tlearn_optim *make_optim(const cfg *c)
{
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, c->kind));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, c->lr));
    OK(tlearn_optim_set(o, TLEARN_OPT_WEIGHT_DECAY, c->wd));
    if (c->kind == TLEARN_SGD) {
        OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, c->momentum));
        OK(tlearn_optim_set(o, TLEARN_OPT_DAMPENING, c->dampening));
        OK(tlearn_optim_set(o, TLEARN_OPT_NESTEROV, c->nesterov));
    } else {
        OK(tlearn_optim_set(o, TLEARN_OPT_BETA1, c->b1));
        OK(tlearn_optim_set(o, TLEARN_OPT_BETA2, c->b2));
        OK(tlearn_optim_set(o, TLEARN_OPT_EPS, c->eps));
    }
    return o;
}

/* Gradient of step t: deterministic, of both signs, never near 0 (Adam divides by it). */
static void grad_at(int t, float *g, uint64_t seed)
{
    test_rng r = {seed * 1000 + (uint64_t)t};
    for (int i = 0; i < NUMEL; i++) {
        double v = test_uniform(&r, 0.1, 1.5);
        g[i] = (float)(test_next(&r) & 1 ? v : -v);
    }
}

static void free_slot(tl_slot *s)
{
    tl_free(s->m1);
    tl_free(s->m2);
    s->m1 = s->m2 = NULL;
}

/* Run STEPS updates of @p c from @p theta (float, updated) against the reference. */
static void run_steps(const cfg *c, tl_slot *s, float *theta, ref_state *ref, uint64_t seed,
                      int steps)
{
    tlearn_optim *o = make_optim(c);
    float g[NUMEL];
    s->grad = g;
    for (int t = 0; t < steps; t++) {
        grad_at(t, g, seed);
        OK(tl_optim_update(o, s, theta, NUMEL, (float)c->lr_scale, (float)c->grad_scale));
        ref_step(c, ref, g);
        for (int i = 0; i < NUMEL; i++)
            if (!test_close(theta[i], ref->theta[i], 1e-5, 1e-6))
                fail_msg("kind %d step %d: theta[%d] = %.9g, reference %.9g", c->kind, t + 1,
                         i, (double)theta[i], ref->theta[i]);
    }
    s->grad = NULL;
    tlearn_optim_destroy(&o);
}

static void check_config(const cfg *c, uint64_t seed)
{
    tl_slot s;
    memset(&s, 0, sizeof s);
    float theta[NUMEL];
    ref_state ref;
    memset(&ref, 0, sizeof ref);
    test_rng r = {seed};
    for (int i = 0; i < NUMEL; i++) {
        theta[i] = (float)test_uniform(&r, -1.5, 1.5);
        ref.theta[i] = theta[i];
    }
    run_steps(c, &s, theta, &ref, seed, STEPS);
    assert_int_equal(s.step, STEPS);
    free_slot(&s);
}


static void test_sgd_plain(void **st)
{
    (void)st;
    cfg c = {TLEARN_SGD, 0.1, 0, 0, 0, 0, 0, 0, 0, 1, 1};
    check_config(&c, 1);
}

static void test_sgd_momentum(void **st)
{
    (void)st;
    cfg c = {TLEARN_SGD, 0.1, 0.9, 0, 0, 0, 0, 0, 0, 1, 1};
    check_config(&c, 2);
}

static void test_sgd_dampening(void **st)
{
    (void)st;
    /* The first step clones the gradient without dampening; later steps dampen. */
    cfg c = {TLEARN_SGD, 0.1, 0.8, 0.3, 0, 0, 0, 0, 0, 1, 1};
    check_config(&c, 3);
}

static void test_sgd_nesterov_wd(void **st)
{
    (void)st;
    cfg c = {TLEARN_SGD, 0.05, 0.9, 0, 0.05, 0, 0, 0, 1, 1, 1};
    check_config(&c, 4);
}

static void test_sgd_wd_momentum(void **st)
{
    (void)st;
    cfg c = {TLEARN_SGD, 0.1, 0.5, 0, 0.2, 0, 0, 0, 0, 1, 1};
    check_config(&c, 5);
}

static void test_sgd_scales(void **st)
{
    (void)st;
    /* lr_scale multiplies the learning rate, grad_scale only the data gradient. */
    cfg c = {TLEARN_SGD, 0.1, 0.9, 0, 0.1, 0, 0, 0, 0, 0.5, 0.7};
    check_config(&c, 6);
}

static void test_adam(void **st)
{
    (void)st;
    cfg c = {TLEARN_ADAM, 0.05, 0, 0, 0, 0.9, 0.999, 1e-8, 0, 1, 1};
    check_config(&c, 7);
}

static void test_adam_l2(void **st)
{
    (void)st;
    cfg c = {TLEARN_ADAM, 0.05, 0, 0, 0.1, 0.8, 0.99, 1e-6, 0, 1, 1};
    check_config(&c, 8);
}

static void test_adam_scales(void **st)
{
    (void)st;
    cfg c = {TLEARN_ADAM, 0.05, 0, 0, 0.1, 0.9, 0.999, 1e-8, 0, 0.3, 0.5};
    check_config(&c, 9);
}

static void test_adamw(void **st)
{
    (void)st;
    cfg c = {TLEARN_ADAMW, 0.05, 0, 0, 0.1, 0.9, 0.999, 1e-8, 0, 1, 1};
    check_config(&c, 10);
}

static void test_adamw_scales(void **st)
{
    (void)st;
    /* Decoupled decay uses the scaled learning rate, as a param group's lr would. */
    cfg c = {TLEARN_ADAMW, 0.05, 0, 0, 0.3, 0.85, 0.995, 1e-7, 0, 0.5, 2};
    check_config(&c, 11);
}

static void test_optim_defaults(void **st)
{
    (void)st;
    /* torch.optim defaults (SGD has no default lr in PyTorch; ours is 0.01). */
    static const struct {
        int kind, param;
        double value;
    } want[] = {
        {TLEARN_SGD, TLEARN_OPT_LR, 0.01},         {TLEARN_SGD, TLEARN_OPT_MOMENTUM, 0},
        {TLEARN_SGD, TLEARN_OPT_DAMPENING, 0},     {TLEARN_SGD, TLEARN_OPT_NESTEROV, 0},
        {TLEARN_SGD, TLEARN_OPT_WEIGHT_DECAY, 0},  {TLEARN_SGD, TLEARN_OPT_CLIP_NORM, 0},
        {TLEARN_ADAM, TLEARN_OPT_LR, 1e-3},        {TLEARN_ADAM, TLEARN_OPT_BETA1, 0.9},
        {TLEARN_ADAM, TLEARN_OPT_BETA2, 0.999},    {TLEARN_ADAM, TLEARN_OPT_EPS, 1e-8},
        {TLEARN_ADAM, TLEARN_OPT_WEIGHT_DECAY, 0}, {TLEARN_ADAMW, TLEARN_OPT_LR, 1e-3},
        {TLEARN_ADAMW, TLEARN_OPT_WEIGHT_DECAY, 1e-2},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        tlearn_optim *o;
        OK(tlearn_optim_create(&o, want[i].kind));
        int kind;
        OK(tlearn_optim_kind(o, &kind));
        assert_int_equal(kind, want[i].kind);
        double v = -1;
        OK(tlearn_optim_get(o, want[i].param, &v));
        if (v != want[i].value)
            fail_msg("kind %d parameter %d: default %g, expected %g", want[i].kind,
                     want[i].param, v, want[i].value);
        tlearn_optim_destroy(&o);
        assert_null(o);
    }
}

/* After a run with one rule, another rule (or momentum switched on) starts fresh state,
 * as a new torch optimizer would. */
static void test_fresh_state(void **st)
{
    (void)st;
    tl_slot s;
    memset(&s, 0, sizeof s);
    float theta[NUMEL];
    ref_state ref;
    memset(&ref, 0, sizeof ref);
    for (int i = 0; i < NUMEL; i++)
        ref.theta[i] = theta[i] = 0.1f * (float)(i + 1);
    cfg adam = {TLEARN_ADAM, 0.05, 0, 0, 0, 0.9, 0.999, 1e-8, 0, 1, 1};
    run_steps(&adam, &s, theta, &ref, 20, 3);

    /* Now SGD with momentum on the same slot: the reference restarts its state too. */
    cfg sgd = {TLEARN_SGD, 0.1, 0.9, 0.5, 0, 0, 0, 0, 0, 1, 1};
    memset(ref.buf, 0, sizeof ref.buf);
    ref.have_buf = 0;
    ref.t = 0;
    run_steps(&sgd, &s, theta, &ref, 21, 3);

    /* Plain SGD for two steps, then momentum switched on: the first momentum step clones
     * the gradient (PyTorch's momentum_buffer is None), it is not 0.9*0 + 0.5*d. */
    tl_slot s2;
    memset(&s2, 0, sizeof s2);
    memset(&ref, 0, sizeof ref);
    for (int i = 0; i < NUMEL; i++)
        ref.theta[i] = theta[i] = 0.2f * (float)(i + 1);
    cfg plain = {TLEARN_SGD, 0.1, 0, 0, 0, 0, 0, 0, 0, 1, 1};
    run_steps(&plain, &s2, theta, &ref, 22, 2);
    run_steps(&sgd, &s2, theta, &ref, 23, 3);
    free_slot(&s);
    free_slot(&s2);
}

/* The regulariser term of the fused update: gradient += reg_a*theta - reg_b. */
static void test_regulariser_term(void **st)
{
    (void)st;
    tl_slot s;
    memset(&s, 0, sizeof s);
    float theta[NUMEL] = {0.5f, -0.25f, 1.0f, 2.0f, -1.0f}, g[NUMEL] = {0.1f, 0.2f, -0.3f, 0, 1};
    float ra[NUMEL] = {1, 2, 0, 0.5f, 3}, rb[NUMEL] = {0.5f, 0, 1, -1, 2};
    double expect[NUMEL];
    for (int i = 0; i < NUMEL; i++)
        expect[i] = theta[i] - 0.1 * ((double)g[i] + (double)ra[i] * theta[i] - rb[i]);
    s.grad = g;
    s.reg_a = ra;
    s.reg_b = rb;
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.1));
    OK(tl_optim_update(o, &s, theta, NUMEL, 1.0f, 1.0f));
    for (int i = 0; i < NUMEL; i++)
        assert_true(test_close(theta[i], expect[i], 1e-6, 1e-7));
    tlearn_optim_destroy(&o);
}

/* The update split across threads gives identical results to one thread, as train.h
 * promises for tl_optim_update_mt (the rule is elementwise: no reduction to reorder). */
static void test_update_threads(void **st)
{
    (void)st;
    enum { BIG = 100003 };
    int kinds[3] = {TLEARN_SGD, TLEARN_ADAM, TLEARN_ADAMW};
    for (int k = 0; k < 3; k++) {
        float *t1 = malloc(sizeof(float) * BIG), *t2 = malloc(sizeof(float) * BIG);
        float *g = malloc(sizeof(float) * BIG);
        test_rng r = {50 + (uint64_t)k};
        test_fill(&r, t1, BIG, -1, 1);
        memcpy(t2, t1, sizeof(float) * BIG);
        tl_slot a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        a.grad = b.grad = g;
        tlearn_optim *o;
        OK(tlearn_optim_create(&o, kinds[k]));
        OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.05));
        OK(tlearn_optim_set(o, TLEARN_OPT_WEIGHT_DECAY, 0.1));
        if (kinds[k] == TLEARN_SGD)
            OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
        for (int step = 0; step < 3; step++) {
            test_fill(&r, g, BIG, -1, 1);
            OK(tl_optim_update_mt(o, &a, t1, BIG, 0.5f, 0.8f, 1));
            OK(tl_optim_update_mt(o, &b, t2, BIG, 0.5f, 0.8f, 2));
        }
        for (int i = 0; i < BIG; i++)
            if (t2[i] != t1[i])
                fail_msg("kind %d: theta[%d] with 2 threads %.9g, with 1 %.9g", kinds[k], i,
                         (double)t2[i], (double)t1[i]);
        free_slot(&a);
        free_slot(&b);
        tlearn_optim_destroy(&o);
        free(t1), free(t2), free(g);
    }
}

/* ---- gradient-norm clipping through the public API ---- */

static tlearn_model *clip_model(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 6, 1, 1));
    OK(tlearn_model_set_seed(m, 3));
    OK(tlearn_model_add_dense(m, "fc1", 5));
    OK(tlearn_model_add_activation(m, "t", TLEARN_ACT_TANH, 0));
    OK(tlearn_model_add_dense(m, "fc2", 4));
    return m;
}

static const char *const clip_names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
static const size_t clip_sizes[] = {30, 5, 20, 4};

static void check_clip(double max_norm, int expect_clipped)
{
    tlearn_model *m = clip_model();
    test_rng r = {40};
    float x[8 * 6];
    int32_t y[8];
    test_fill(&r, x, 48, -3, 3);
    for (int i = 0; i < 8; i++)
        y[i] = (int32_t)(test_next(&r) % 4);
    OK(tlearn_model_compute_gradients(m, x, y, 8, NULL, NULL, 0));
    float w[4][30], g[4][30];
    double sq = 0;
    for (int k = 0; k < 4; k++) {
        OK(tlearn_model_get_tensor(m, clip_names[k], w[k], clip_sizes[k]));
        OK(tlearn_model_get_grad(m, clip_names[k], g[k], clip_sizes[k]));
        for (size_t i = 0; i < clip_sizes[k]; i++)
            sq += (double)g[k][i] * g[k][i];
    }
    double norm = sqrt(sq), coef = max_norm / (norm + 1e-6);
    if (coef > 1)
        coef = 1;
    assert_int_equal(coef < 1, expect_clipped);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.5));
    OK(tlearn_optim_set(o, TLEARN_OPT_CLIP_NORM, max_norm));
    OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
    for (int k = 0; k < 4; k++) {
        float after[30];
        OK(tlearn_model_get_tensor(m, clip_names[k], after, clip_sizes[k]));
        for (size_t i = 0; i < clip_sizes[k]; i++) {
            double expect = w[k][i] - 0.5 * coef * g[k][i];
            if (!test_close(after[i], expect, 1e-5, 1e-6))
                fail_msg("clip %g: %s[%zu] = %.8g, expected %.8g (norm %g)", max_norm,
                         clip_names[k], i, (double)after[i], expect, norm);
        }
    }
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

static void test_clip_active(void **st) { (void)st; check_clip(0.05, 1); }
static void test_clip_inactive(void **st) { (void)st; check_clip(1e3, 0); }

/* ---- hyperparameter ranges ---- */

static void expect_set(int kind, int param, double value, int ok)
{
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, kind));
    double before, after;
    int has = tlearn_optim_get(o, param, &before) == TLEARN_OK;
    int rc = tlearn_optim_set(o, param, value);
    if (ok) {
        if (rc != TLEARN_OK)
            fail_msg("kind %d: set(%d, %g) failed: %s", kind, param, value, tlearn_errmsg());
        OK(tlearn_optim_get(o, param, &after));
        assert_true(after == value);
    } else {
        if (rc != TLEARN_EINVAL)
            fail_msg("kind %d: set(%d, %g) returned %d, expected TLEARN_EINVAL", kind, param,
                     value, rc);
        assert_true(strstr(tlearn_errmsg(), "tlearn_optim_set") != NULL);
        if (has) { /* a refused value leaves the old one */
            OK(tlearn_optim_get(o, param, &after));
            assert_true(after == before);
        }
    }
    tlearn_optim_destroy(&o);
}

static void test_ranges(void **st)
{
    (void)st;
    const double inf = INFINITY, nan = NAN;
    int all[] = {TLEARN_SGD, TLEARN_ADAM, TLEARN_ADAMW};
    for (int k = 0; k < 3; k++) {
        int kind = all[k];
        expect_set(kind, TLEARN_OPT_LR, 0.5, 1);
        expect_set(kind, TLEARN_OPT_LR, 0, 0);
        expect_set(kind, TLEARN_OPT_LR, -0.1, 0);
        expect_set(kind, TLEARN_OPT_LR, nan, 0);
        expect_set(kind, TLEARN_OPT_LR, inf, 0);
        expect_set(kind, TLEARN_OPT_WEIGHT_DECAY, 0, 1);
        expect_set(kind, TLEARN_OPT_WEIGHT_DECAY, 0.3, 1);
        expect_set(kind, TLEARN_OPT_WEIGHT_DECAY, -1e-9, 0);
        expect_set(kind, TLEARN_OPT_WEIGHT_DECAY, inf, 0);
        expect_set(kind, TLEARN_OPT_CLIP_NORM, 0, 1);
        expect_set(kind, TLEARN_OPT_CLIP_NORM, 5, 1);
        expect_set(kind, TLEARN_OPT_CLIP_NORM, -1, 0);
        expect_set(kind, TLEARN_OPT_CLIP_NORM, nan, 0);
        expect_set(kind, 0, 1, 0);
        expect_set(kind, 10, 1, 0);
        expect_set(kind, -1, 1, 0);
        int sgd = kind == TLEARN_SGD;
        /* SGD-only parameters on Adam, Adam-only ones on SGD, are refused. */
        expect_set(kind, TLEARN_OPT_MOMENTUM, 0.5, sgd);
        expect_set(kind, TLEARN_OPT_DAMPENING, 0.5, sgd);
        expect_set(kind, TLEARN_OPT_BETA1, 0.5, !sgd);
        expect_set(kind, TLEARN_OPT_BETA2, 0.5, !sgd);
        expect_set(kind, TLEARN_OPT_EPS, 1e-6, !sgd);
    }
    expect_set(TLEARN_SGD, TLEARN_OPT_MOMENTUM, 0, 1);
    expect_set(TLEARN_SGD, TLEARN_OPT_MOMENTUM, 0.999, 1);
    expect_set(TLEARN_SGD, TLEARN_OPT_MOMENTUM, 1, 0);
    expect_set(TLEARN_SGD, TLEARN_OPT_MOMENTUM, -0.1, 0);
    expect_set(TLEARN_SGD, TLEARN_OPT_DAMPENING, 1, 1);
    expect_set(TLEARN_SGD, TLEARN_OPT_DAMPENING, 1.01, 0);
    expect_set(TLEARN_SGD, TLEARN_OPT_DAMPENING, -0.01, 0);
    expect_set(TLEARN_SGD, TLEARN_OPT_NESTEROV, 0, 1);
    expect_set(TLEARN_SGD, TLEARN_OPT_NESTEROV, 2, 0);
    expect_set(TLEARN_SGD, TLEARN_OPT_NESTEROV, 0.5, 0);
    /* Nesterov needs momentum > 0 and dampening 0 (torch.optim.SGD raises otherwise). */
    expect_set(TLEARN_SGD, TLEARN_OPT_NESTEROV, 1, 0);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
    OK(tlearn_optim_set(o, TLEARN_OPT_NESTEROV, 1));
    assert_int_equal(tlearn_optim_set(o, TLEARN_OPT_DAMPENING, 0.1), TLEARN_EINVAL);
    assert_int_equal(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0), TLEARN_EINVAL);
    OK(tlearn_optim_set(o, TLEARN_OPT_NESTEROV, 0));
    OK(tlearn_optim_set(o, TLEARN_OPT_DAMPENING, 0.1));
    assert_int_equal(tlearn_optim_set(o, TLEARN_OPT_NESTEROV, 1), TLEARN_EINVAL);
    tlearn_optim_destroy(&o);
    for (int k = 1; k < 3; k++) {
        int kind = all[k];
        expect_set(kind, TLEARN_OPT_BETA1, 0, 1);
        expect_set(kind, TLEARN_OPT_BETA1, 1, 0);
        expect_set(kind, TLEARN_OPT_BETA2, 0.9999, 1);
        expect_set(kind, TLEARN_OPT_BETA2, 1, 0);
        expect_set(kind, TLEARN_OPT_BETA2, -0.5, 0);
        expect_set(kind, TLEARN_OPT_EPS, 0, 0);
        expect_set(kind, TLEARN_OPT_EPS, -1e-8, 0);
        expect_set(kind, TLEARN_OPT_NESTEROV, 0, 0);
    }
}

/* Messages name the hyperparameter as the header spells it (issue 18: "parameter 2"). */
static void expect_message(int kind, int param, double v, const char *want)
{
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, kind));
    assert_int_equal(tlearn_optim_set(o, param, v), TLEARN_EINVAL);
    const char *msg = tlearn_errmsg();
    if (!strstr(msg, want) || strstr(msg, "parameter 2") || strstr(msg, "parameter 6"))
        fail_msg("message '%s' does not name '%s'", msg, want);
    tlearn_optim_destroy(&o);
}

static void test_messages_name_parameters(void **state)
{
    (void)state;
    expect_message(TLEARN_ADAM, TLEARN_OPT_MOMENTUM, 0.9,
                   "TLEARN_OPT_MOMENTUM applies to SGD only, this optimizer is Adam");
    expect_message(TLEARN_ADAMW, TLEARN_OPT_DAMPENING, 0.1, "TLEARN_OPT_DAMPENING applies");
    expect_message(TLEARN_SGD, TLEARN_OPT_BETA1, 0.5,
                   "TLEARN_OPT_BETA1 applies to Adam/AdamW only, this optimizer is SGD");
    expect_message(TLEARN_SGD, TLEARN_OPT_LR, NAN, "TLEARN_OPT_LR is nan, must be finite");
    expect_message(TLEARN_SGD, 42, 1.0, "unknown parameter 42");
    expect_message(TLEARN_SGD, 0, NAN, "unknown parameter 0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgd_plain),       cmocka_unit_test(test_sgd_momentum),
        cmocka_unit_test(test_sgd_dampening),   cmocka_unit_test(test_sgd_nesterov_wd),
        cmocka_unit_test(test_sgd_wd_momentum), cmocka_unit_test(test_sgd_scales),
        cmocka_unit_test(test_adam),            cmocka_unit_test(test_adam_l2),
        cmocka_unit_test(test_adam_scales),     cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_adamw_scales),    cmocka_unit_test(test_optim_defaults),
        cmocka_unit_test(test_fresh_state),     cmocka_unit_test(test_regulariser_term),
        cmocka_unit_test(test_clip_active),     cmocka_unit_test(test_clip_inactive),
        cmocka_unit_test(test_ranges),          cmocka_unit_test(test_update_threads),
        cmocka_unit_test(test_messages_name_parameters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
