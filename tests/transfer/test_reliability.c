/* Steps that must be refused with nothing changed (issue 12): learning-rate scales beyond
 * the float range, a penalty or an update that overflows float, running statistics that
 * would become infinite, and running out of memory in the middle of the optimizer. */
#include <float.h>
#include <unistd.h>

#include "common.h"

/* Everything a refused step must leave alone: every tensor (weights and buffers) and the
 * optimizer state of every slot. */
typedef struct snapshot {
    size_t n;
    float *v;
} snapshot;

static void put(snapshot *s, const float *data, size_t n)
{
    s->v = realloc(s->v, sizeof(float) * (s->n + n + 1));
    assert_non_null(s->v);
    if (n)
        memcpy(s->v + s->n, data, sizeof(float) * n);
    s->n += n;
}

static snapshot take(const tlearn_model *m)
{
    snapshot s = {0, NULL};
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            const tl_slot *sl = &m->lstate[i].slot[p];
            size_t n = m->layers[i]->param[p].t.numel;
            float head[3] = {(float)sl->step, (float)sl->opt_kind,
                             (float)(!!sl->m1 + 2 * !!sl->m2)};
            put(&s, m->layers[i]->param[p].t.data, n);
            put(&s, head, 3);
            if (sl->m1)
                put(&s, sl->m1, n);
            if (sl->m2)
                put(&s, sl->m2, n);
        }
    return s;
}

/* The model is as in @p before (bit for bit); frees it. */
static void assert_unchanged(const tlearn_model *m, snapshot *before)
{
    snapshot now = take(m);
    assert_int_equal(now.n, before->n);
    assert_memory_equal(now.v, before->v, sizeof(float) * now.n);
    free(now.v);
    free(before->v);
    before->v = NULL;
}

static void assert_all_finite(const tlearn_model *m)
{
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++)
            for (size_t k = 0; k < m->layers[i]->param[p].t.numel; k++)
                assert_true(isfinite(m->layers[i]->param[p].t.data[k]));
}

/* A refused step with nothing changed, then a sane one: the model is never left stuck. */
static void refused_then_recovers(tlearn_model *m, tlearn_optim *o, const float *x,
                                  const float *sane_x, const int32_t *y, size_t n,
                                  const char *text)
{
    snapshot before = take(m);
    float loss = 0;
    FAILS(tlearn_model_train_step(m, o, x, y, n, &loss), TLEARN_ENONFINITE, text);
    assert_unchanged(m, &before);
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 1e-3));
    int rc = tlearn_model_train_step(m, o, sane_x, y, n, &loss);
    if (rc)
        fail_msg("%s", tlearn_errmsg());
    assert_true(isfinite(loss));
    assert_all_finite(m);
}

static void test_ulmfit_scales_stay_floats(void **state)
{
    (void)state;
    /* 120 parameterised layers: 2.6^-119 is far below the smallest float. */
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, 2, 1, 1));
    char name[16];
    for (int i = 0; i < 120; i++) {
        snprintf(name, sizeof name, "fc%d", i);
        OK(tlearn_model_add_dense(m, name, 2));
    }
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_ulmfit(f, 2.6f));
    OK(tlearn_model_apply_freeze(m, f));
    for (int i = 0; i < 120; i++) {
        float s;
        snprintf(name, sizeof name, "fc%d", i);
        OK(tlearn_model_layer_lr_scale(m, name, &s));
        assert_true(s > 0 && s <= FLT_MAX);
    }
    char path[] = "/tmp/tlearn-ulmfit-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    OK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_FULL));
    tlearn_model *back = NULL;
    OK(tlearn_model_load(&back, NULL, path));
    tlearn_model_destroy(&back);
    unlink(path);
    tlearn_model_destroy(&m);
    tlearn_freeze_destroy(&f);

    /* Factor 1e-30: scales grow beyond float; clamped, and a step that would overflow is
     * refused instead of filling the weights with Inf. */
    m = mlp(4, 3, 3, 2, 7);
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_ulmfit(f, 1e-30f));
    OK(tlearn_model_apply_freeze(m, f));
    float s;
    OK(tlearn_model_layer_lr_scale(m, "fc1", &s));
    assert_true(s > 0 && s <= FLT_MAX);
    OK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_FULL));
    OK(tlearn_model_load(&back, NULL, path));
    tlearn_model_destroy(&back);
    unlink(path);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    float x[8];
    int32_t y[2];
    fill_data(x, 8, y, 2, 2, 3);
    for (int i = 0; i < 8; i++)
        x[i] *= 1e6f;
    /* The first layer's rate is 0.01 * FLT_MAX: finite weights or a refused step. */
    snapshot before = take(m);
    float loss;
    int rc = tlearn_model_train_step(m, o, x, y, 2, &loss);
    if (rc == TLEARN_OK) {
        assert_all_finite(m);
        free(before.v);
    } else {
        assert_int_equal(rc, TLEARN_ENONFINITE);
        assert_unchanged(m, &before);
    }
    tlearn_optim_destroy(&o);
    tlearn_freeze_destroy(&f);
    tlearn_model_destroy(&m);
}

static void test_penalty_overflowing_float_is_refused(void **state)
{
    (void)state;
    tlearn_model *m = mlp(4, 3, 3, 2, 11);
    OK(tlearn_l2sp_enable(m, 1e38f, 0.0f));
    float w[12];
    for (int i = 0; i < 12; i++)
        w[i] = 1e3f; /* far from the anchor */
    OK(tlearn_model_set_tensor(m, "fc1.weight", w, 12));
    float pen;
    OK(tlearn_model_penalty(m, &pen));
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    float x[8];
    int32_t y[2];
    fill_data(x, 8, y, 2, 2, 5);
    snapshot before = take(m);
    float loss;
    FAILS(tlearn_model_train_step(m, o, x, y, 2, &loss), TLEARN_ENONFINITE, "penalty");
    assert_unchanged(m, &before);
    /* The weights back at the anchor: training goes on. */
    OK(tlearn_ewc_clear(m));
    OK(tlearn_model_train_step(m, o, x, y, 2, &loss));
    assert_all_finite(m);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

static void test_update_overflow_is_refused(void **state)
{
    (void)state;
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    /* Beyond float: refused where it is set. */
    FAILS(tlearn_optim_set(o, TLEARN_OPT_LR, 1e39), TLEARN_EINVAL, "learning rate");
    FAILS(tlearn_optim_set(o, TLEARN_OPT_LR, 1e308), TLEARN_EINVAL, "learning rate");
    double lr;
    OK(tlearn_optim_get(o, TLEARN_OPT_LR, &lr));
    assert_true(lr == 0.01);
    float x[8] = {1e4f, -1e4f, 1e4f, 1e4f, -1e4f, 1e4f, 1e4f, -1e4f}, sane[8];
    int32_t y[2] = {0, 1};
    for (int i = 0; i < 8; i++)
        sane[i] = x[i] * 1e-4f;
    const float bias[2] = {1e38f, 1e38f};
    for (int kind = TLEARN_SGD; kind <= TLEARN_ADAMW; kind++) {
        tlearn_model *m = NULL;
        OK(tlearn_model_create(&m, 4, 1, 1));
        OK(tlearn_model_add_dense(m, "fc", 2));
        tlearn_optim_destroy(&o);
        OK(tlearn_optim_create(&o, kind));
        if (kind == TLEARN_SGD)
            OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
        float loss;
        OK(tlearn_model_train_step(m, o, sane, y, 2, &loss)); /* optimizer state exists */
        /* SGD: lr * gradient overflows; Adam: a bias near the float limit moved by the
         * largest learning rate allowed. */
        OK(tlearn_model_set_tensor(m, "fc.bias", bias, 2));
        OK(tlearn_optim_set(o, TLEARN_OPT_LR, 3e38));
        refused_then_recovers(m, o, kind == TLEARN_SGD ? x : sane, sane, y, 2, "non-finite");
        tlearn_model_destroy(&m);
    }
    tlearn_optim_destroy(&o);
}

/* Every slot's recorded state bounds hold (optim.c skips its dry run on them). */
static void assert_bounds_hold(const tlearn_model *m)
{
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            const tl_slot *sl = &m->lstate[i].slot[p];
            for (size_t k = 0; sl->bounded && k < m->layers[i]->param[p].t.numel; k++) {
                assert_true(!sl->m1 || fabsf(sl->m1[k]) <= sl->sbound[0]);
                assert_true(!sl->m2 || sl->m2[k] <= sl->sbound[1]);
            }
            for (size_t k = 0; k < m->layers[i]->param[p].t.numel; k++) {
                assert_true(!sl->m1 || isfinite(sl->m1[k]));
                assert_true(!sl->m2 || isfinite(sl->m2[k]));
            }
        }
}

/* Steps with learning rates and inputs growing towards the float limit, for every update
 * rule and option that enters the optimizer's finiteness bounds, with a classification loss
 * (gradients that saturate) and MSE towards far targets (gradients that keep their sign,
 * so momentum and moments build up): each step either leaves finite weights and state
 * within their recorded bounds, or is refused with nothing changed. */
static void test_growing_updates_stay_finite_or_refused(void **state)
{
    (void)state;
    enum { PLAIN, MOMENTUM, NESTEROV, DECAY, CLIP, L2SP, NVARIANTS };
    int refused = 0, steps = 0;
    for (int mse = 0; mse < 2; mse++)
        for (int kind = TLEARN_SGD; kind <= TLEARN_ADAMW; kind++)
            for (int v = PLAIN; v < NVARIANTS; v++) {
                if (kind != TLEARN_SGD && (v == MOMENTUM || v == NESTEROV))
                    continue;
                tlearn_model *m = mlp(4, 3, 3, 2, 17 + v);
                if (mse)
                    OK(tlearn_model_set_loss(m, TLEARN_LOSS_MSE));
                tlearn_optim *o = NULL;
                OK(tlearn_optim_create(&o, kind));
                if (v == MOMENTUM || v == NESTEROV)
                    OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
                if (v == NESTEROV)
                    OK(tlearn_optim_set(o, TLEARN_OPT_NESTEROV, 1));
                if (v == DECAY)
                    OK(tlearn_optim_set(o, TLEARN_OPT_WEIGHT_DECAY, 0.5));
                if (v == CLIP)
                    OK(tlearn_optim_set(o, TLEARN_OPT_CLIP_NORM, 1e30));
                if (v == L2SP)
                    OK(tlearn_l2sp_enable(m, 1e3f, 1e3f));
                float x[8], target[4] = {1e3f, -1e3f, 1e3f, -1e3f};
                int32_t y[2];
                fill_data(x, 8, y, 2, 2, 3 + v);
                double lr = 1e-4;
                float scale = 1.0f;
                for (int t = 0; t < 120; t++) {
                    float xs[8], ts[4];
                    for (int i = 0; i < 8; i++)
                        xs[i] = x[i] * scale;
                    for (int i = 0; i < 4; i++)
                        ts[i] = target[i] * scale;
                    OK(tlearn_optim_set(o, TLEARN_OPT_LR, lr));
                    snapshot before = take(m);
                    float loss;
                    int rc = mse ? tlearn_model_train_step_mse(m, o, xs, ts, 2, &loss)
                                 : tlearn_model_train_step(m, o, xs, y, 2, &loss);
                    steps++;
                    if (rc == TLEARN_OK) {
                        free(before.v);
                        assert_all_finite(m);
                        assert_bounds_hold(m);
                    } else {
                        assert_int_equal(rc, TLEARN_ENONFINITE);
                        assert_unchanged(m, &before);
                        refused++;
                    }
                    if (t % 6 == 5)
                        lr = lr * 10 < 3e38 ? lr * 10 : 3e38;
                    if (t % 8 == 7 && scale < 1e30f)
                        scale *= 10.0f;
                }
                tlearn_optim_destroy(&o);
                tlearn_model_destroy(&m);
            }
    /* Both outcomes happened: the test reaches the limit and does not stop short of it. */
    assert_true(refused > 0 && refused < steps);
}

static void test_running_var_overflow_is_refused(void **state)
{
    (void)state;
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, 4, 1, 1));
    OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_dense(m, "fc", 2));
    OK(tlearn_model_set_training(m, 1));
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    float x[8] = {3e38f, -3e38f, 3e38f, -3e38f, -3e38f, 3e38f, -3e38f, 3e38f};
    int32_t y[2] = {0, 1};
    float sane[8] = {1, -1, 2, -2, 0.5f, 0, 1, 3};
    refused_then_recovers(m, o, x, sane, y, 2, "running statistics");
    float var[4];
    OK(tlearn_model_get_tensor(m, "bn.running_var", var, 4));
    for (int i = 0; i < 4; i++)
        assert_true(isfinite(var[i]));
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* Fail each allocation of a first Adam step in turn: every failure is ENOMEM with the
 * weights and optimizer state as they were, and nothing leaks. */
static void test_out_of_memory_in_step_changes_nothing(void **state)
{
    (void)state;
    float x[8];
    int32_t y[2];
    fill_data(x, 8, y, 2, 2, 17);
    for (int kind = TLEARN_SGD; kind <= TLEARN_ADAMW; kind++) {
        tlearn_model *m = mlp(4, 8, 8, 2, 19);
        tlearn_optim *o = NULL;
        OK(tlearn_optim_create(&o, kind));
        if (kind == TLEARN_SGD)
            OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
        int rc = TLEARN_ENOMEM;
        for (uint64_t nth = 1; rc == TLEARN_ENOMEM; nth++) {
            snapshot before = take(m);
            int64_t live = tl_alloc_live();
            tl_alloc_fail_nth(nth);
            float loss;
            rc = tlearn_model_train_step(m, o, x, y, 2, &loss);
            tl_alloc_fail_nth(0);
            if (rc == TLEARN_OK) {
                free(before.v);
                break;
            }
            assert_int_equal(rc, TLEARN_ENOMEM);
            assert_unchanged(m, &before);
            /* gradients and plans may stay allocated for the next step; nothing else */
            assert_true(tl_alloc_live() >= live);
            assert_true(nth < 1000);
        }
        tlearn_model_destroy(&m);
        tlearn_optim_destroy(&o);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ulmfit_scales_stay_floats),
        cmocka_unit_test(test_penalty_overflowing_float_is_refused),
        cmocka_unit_test(test_update_overflow_is_refused),
        cmocka_unit_test(test_growing_updates_stay_finite_or_refused),
        cmocka_unit_test(test_running_var_overflow_is_refused),
        cmocka_unit_test(test_out_of_memory_in_step_changes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
