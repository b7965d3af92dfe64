/* Training recipes: schedules driving real updates (with per-layer scales), bad input,
 * exact resume of a schedule from a checkpoint, fit with validation, early stopping and
 * best-weight restore, best checkpoint, gradient accumulation, gradual unfreezing, and
 * metrics against hand computations. Expected values never come from the code under test. */
#include <unistd.h>

#include "common.h"

#define IN 6
#define CLASSES 3

static void data(size_t n, float *x, int32_t *y, uint64_t seed)
{
    test_rng r = {seed};
    for (size_t i = 0; i < n; i++) {
        y[i] = (int32_t)(test_next(&r) % CLASSES);
        for (int j = 0; j < IN; j++)
            x[i * IN + j] = (float)((double)(test_next(&r) >> 11) / 9007199254740992.0 - 0.5) +
                            (j == y[i] ? 1.0f : 0.0f); /* separable: feature y is high */
    }
}

static tlearn_model *mlp(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, IN, 1, 1));
    OK(tlearn_model_set_seed(m, 7));
    OK(tlearn_model_add_dense(m, "fc1", 8));
    OK(tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", CLASSES));
    return m;
}

static void get(tlearn_model *m, const char *name, float *out, size_t n)
{
    OK(tlearn_model_get_tensor(m, name, out, n));
}

/* ---- schedules ---- */

static void test_sched_bad_input(void **state)
{
    (void)state;
    tlearn_sched *s;
    double v;
    OK(tlearn_sched_create(&s, TLEARN_SCHED_COSINE));
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_ETA_MIN, -1e-3), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "eta_min"));
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_ETA_MIN, NAN), TLEARN_EINVAL);
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_PERIOD, INFINITY), TLEARN_EINVAL);
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_PERIOD, 2.5), TLEARN_EINVAL);
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_WARMUP_STEPS, -3), TLEARN_EINVAL);
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_WARMUP_START_FACTOR, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_GAMMA, 0.5), TLEARN_EINVAL); /* not cosine's */
    assert_int_equal(tlearn_sched_set(s, 99, 1), TLEARN_EINVAL);
    OK(tlearn_sched_get(s, TLEARN_SCHED_ETA_MIN, &v));
    assert_true(v == 0.0); /* failed calls changed nothing */
    int64_t mile[2] = {5, 3};
    assert_int_equal(tlearn_sched_set_milestones(s, mile, 2), TLEARN_EINVAL); /* not multistep */
    tlearn_sched_destroy(&s);
    assert_null(s);
    assert_int_equal(tlearn_sched_create(&s, 9), TLEARN_EINVAL);

    OK(tlearn_sched_create(&s, TLEARN_SCHED_MULTISTEP));
    assert_int_equal(tlearn_sched_set_milestones(s, mile, 2), TLEARN_EINVAL); /* decreasing */
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_GAMMA, -0.1), TLEARN_EINVAL);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    assert_int_equal(tlearn_optim_set_schedule(o, s), TLEARN_EINVAL); /* no milestones */
    assert_non_null(strstr(tlearn_errmsg(), "milestones"));
    int64_t pos;
    assert_int_equal(tlearn_optim_schedule_position(o, &pos), TLEARN_ESTATE);
    tlearn_sched_destroy(&s);

    OK(tlearn_sched_create(&s, TLEARN_SCHED_STEP));
    assert_int_equal(tlearn_optim_set_schedule(o, s), TLEARN_EINVAL); /* step_size unset */
    tlearn_sched_destroy(&s);
    OK(tlearn_sched_create(&s, TLEARN_SCHED_ONE_CYCLE));
    assert_int_equal(tlearn_sched_set(s, TLEARN_SCHED_WARMUP_STEPS, 5), TLEARN_EINVAL);
    OK(tlearn_sched_set(s, TLEARN_SCHED_TOTAL_STEPS, 3)); /* 0.3 * 3 - 1 < 0: no phase 1 */
    assert_int_equal(tlearn_optim_set_schedule(o, s), TLEARN_EINVAL);
    assert_int_equal(tlearn_optim_schedule_step(o), TLEARN_ESTATE);
    tlearn_sched_destroy(&s);
    tlearn_optim_destroy(&o);
}

/* Plain SGD: each update moves a weight by -lr_t * scale * grad with lr_t the schedule's
 * value, computed here by hand (StepLR: 0.1, 0.1, 0.05, 0.05, 0.025), and the layer's
 * freeze-policy scale multiplying it. */
static void test_sched_drives_updates(void **state)
{
    (void)state;
    tlearn_model *m = mlp();
    tlearn_freeze *fz;
    OK(tlearn_freeze_create(&fz));
    OK(tlearn_freeze_lr_scale(fz, "fc1", 0.5f));
    OK(tlearn_model_apply_freeze(m, fz));
    tlearn_freeze_destroy(&fz);
    tlearn_optim *o;
    tlearn_sched *s;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.1));
    OK(tlearn_sched_create(&s, TLEARN_SCHED_STEP));
    OK(tlearn_sched_set(s, TLEARN_SCHED_STEP_SIZE, 2));
    OK(tlearn_sched_set(s, TLEARN_SCHED_GAMMA, 0.5));
    OK(tlearn_optim_set_schedule(o, s));
    tlearn_sched_destroy(&s);
    float x[8 * IN];
    int32_t y[8];
    data(8, x, y, 1);
    const double want[] = {0.1, 0.1, 0.05, 0.05, 0.025};
    for (int t = 0; t < 5; t++) {
        float w0[8 * IN], g[8 * IN], w1[8 * IN], b0[CLASSES], gb[CLASSES], b1[CLASSES];
        get(m, "fc1.weight", w0, 8 * IN);
        get(m, "fc2.bias", b0, CLASSES);
        OK(tlearn_model_compute_gradients(m, x, y, 8, NULL, NULL, 0));
        OK(tlearn_model_get_grad(m, "fc1.weight", g, 8 * IN));
        OK(tlearn_model_get_grad(m, "fc2.bias", gb, CLASSES));
        OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
        get(m, "fc1.weight", w1, 8 * IN);
        get(m, "fc2.bias", b1, CLASSES);
        for (int i = 0; i < 8 * IN; i++)
            assert_float_equal(w1[i], w0[i] - (float)(want[t] * 0.5) * g[i], 1e-7);
        for (int i = 0; i < CLASSES; i++)
            assert_float_equal(b1[i], b0[i] - (float)want[t] * gb[i], 1e-7);
        int64_t pos;
        OK(tlearn_optim_schedule_position(o, &pos));
        assert_int_equal(pos, t + 1);
    }
    /* A refused step does not advance the schedule. */
    float bad[8 * IN];
    memcpy(bad, x, sizeof bad);
    bad[0] = INFINITY;
    assert_int_equal(tlearn_model_train_step(m, o, bad, y, 8, NULL), TLEARN_ENONFINITE);
    int64_t pos;
    OK(tlearn_optim_schedule_position(o, &pos));
    assert_int_equal(pos, 5);
    /* Per-epoch schedules do not move with train steps. */
    OK(tlearn_sched_create(&s, TLEARN_SCHED_EXPONENTIAL));
    OK(tlearn_sched_set(s, TLEARN_SCHED_UNIT, TLEARN_SCHED_PER_EPOCH));
    OK(tlearn_optim_set_schedule(o, s));
    tlearn_sched_destroy(&s);
    OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
    OK(tlearn_optim_schedule_position(o, &pos));
    assert_int_equal(pos, 0);
    OK(tlearn_optim_schedule_step(o));
    double lr;
    OK(tlearn_optim_get_current(o, TLEARN_OPT_LR, &lr));
    assert_true(fabs(lr - 0.01) < 1e-15); /* 0.1 * 0.1^1 */
    OK(tlearn_optim_get(o, TLEARN_OPT_LR, &lr));
    assert_true(lr == 0.1); /* the base stays */
    /* An "auto" length only fit can fill in: a train step refuses it, weights unchanged. */
    OK(tlearn_sched_create(&s, TLEARN_SCHED_COSINE));
    OK(tlearn_optim_set_schedule(o, s));
    tlearn_sched_destroy(&s);
    float before[8 * IN], after[8 * IN];
    get(m, "fc1.weight", before, 8 * IN);
    assert_int_equal(tlearn_model_train_step(m, o, x, y, 8, NULL), TLEARN_ESTATE);
    get(m, "fc1.weight", after, 8 * IN);
    assert_memory_equal(before, after, sizeof before);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* Save mid-schedule (one-cycle with Adam, beta1 cycling), load, continue: the loaded pair
 * trains bit for bit as the original. */
static void test_sched_resume(void **state)
{
    (void)state;
    char path[] = "/tmp/tlearn-recipes-resume-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tlearn_model *m = mlp();
    tlearn_optim *o;
    tlearn_sched *s;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.01));
    OK(tlearn_sched_create(&s, TLEARN_SCHED_ONE_CYCLE));
    OK(tlearn_sched_set(s, TLEARN_SCHED_TOTAL_STEPS, 20));
    OK(tlearn_optim_set_schedule(o, s));
    tlearn_sched_destroy(&s);
    float x[8 * IN];
    int32_t y[8];
    data(8, x, y, 2);
    for (int t = 0; t < 7; t++)
        OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
    OK(tlearn_model_save(m, o, path, TLEARN_SAVE_FULL));
    tlearn_model *m2;
    tlearn_optim *o2;
    OK(tlearn_model_load(&m2, &o2, path));
    assert_non_null(o2);
    int64_t pos;
    OK(tlearn_optim_schedule_position(o2, &pos));
    assert_int_equal(pos, 7);
    double a, b;
    OK(tlearn_optim_get_current(o, TLEARN_OPT_BETA1, &a));
    OK(tlearn_optim_get_current(o2, TLEARN_OPT_BETA1, &b));
    assert_true(a == b && a != 0.9); /* cycled */
    for (int t = 0; t < 8; t++) {
        OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
        OK(tlearn_model_train_step(m2, o2, x, y, 8, NULL));
    }
    float w1[CLASSES * 8], w2[CLASSES * 8];
    get(m, "fc2.weight", w1, CLASSES * 8);
    get(m2, "fc2.weight", w2, CLASSES * 8);
    assert_memory_equal(w1, w2, sizeof w1);
    /* Without the schedule on the loaded optimizer the runs differ (the test can fail). */
    OK(tlearn_optim_set_schedule(o2, NULL));
    OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
    OK(tlearn_model_train_step(m2, o2, x, y, 8, NULL));
    get(m, "fc2.weight", w1, CLASSES * 8);
    get(m2, "fc2.weight", w2, CLASSES * 8);
    assert_memory_not_equal(w1, w2, sizeof w1);
    tlearn_optim_destroy(&o);
    tlearn_optim_destroy(&o2);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&m2);
    unlink(path);
}

/* ---- fit ---- */

typedef struct history {
    int n;
    double val_loss[64], val_acc[64], lr[64], improved[64], trainable[64], loss[64];
} history;

static int on_epoch(const tlearn_epoch *e, void *user)
{
    history *h = user;
    int i;
    OK(tlearn_epoch_index(e, &i, NULL));
    assert_int_equal(i, h->n);
    OK(tlearn_epoch_get(e, TLEARN_METRIC_LOSS, &h->loss[i]));
    OK(tlearn_epoch_get(e, TLEARN_METRIC_LR, &h->lr[i]));
    OK(tlearn_epoch_get(e, TLEARN_METRIC_TRAINABLE_LAYERS, &h->trainable[i]));
    if (tlearn_epoch_get(e, TLEARN_METRIC_VAL_LOSS, &h->val_loss[i]) == TLEARN_OK) {
        OK(tlearn_epoch_get(e, TLEARN_METRIC_VAL_ACCURACY, &h->val_acc[i]));
    } else {
        assert_int_equal(tlearn_epoch_get(e, TLEARN_METRIC_VAL_LOSS, &h->val_loss[i]),
                         TLEARN_ENOTFOUND);
    }
    if (tlearn_epoch_get(e, TLEARN_METRIC_IMPROVED, &h->improved[i]) != TLEARN_OK)
        h->improved[i] = -1;
    h->n++;
    return 0;
}

/* Validation labels that contradict training: validation loss rises after the first
 * epochs, so early stopping must stop at best + patience, and restore the weights the
 * best epoch had (checked against the checkpoint saved at that epoch, and by evaluating). */
static void test_fit_early_stopping(void **state)
{
    (void)state;
    char path[] = "/tmp/tlearn-recipes-best-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    enum { N = 96, V = 48 };
    float x[N * IN], vx[V * IN];
    int32_t y[N], vy[V];
    data(N, x, y, 3);
    data(V, vx, vy, 4);
    for (int i = 0; i < V; i++)
        vy[i] = (vy[i] + 1) % CLASSES; /* learning the task makes validation worse */
    tlearn_model *m = mlp();
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.2));
    tlearn_fit *f;
    OK(tlearn_fit_create(&f));
    OK(tlearn_fit_set(f, TLEARN_FIT_BATCH, 16));
    OK(tlearn_fit_set(f, TLEARN_FIT_EPOCHS, 40));
    OK(tlearn_fit_set(f, TLEARN_FIT_MONITOR, TLEARN_METRIC_VAL_LOSS));
    OK(tlearn_fit_set(f, TLEARN_FIT_PATIENCE, 3));
    OK(tlearn_fit_set(f, TLEARN_FIT_RESTORE_BEST, 1));
    OK(tlearn_fit_set_validation(f, vx, V * IN, vy, V, V));
    OK(tlearn_fit_set_checkpoint(f, path));
    history h = {0};
    OK(tlearn_fit_set_callbacks(f, NULL, on_epoch, &h));
    OK(tlearn_model_fit_run(m, o, f, x, y, N));
    /* the best epoch is the minimum of the reported validation losses */
    int best = 0;
    for (int e = 1; e < h.n; e++)
        if (h.val_loss[e] < h.val_loss[best])
            best = e;
    assert_true(h.n < 40);                 /* stopped early */
    assert_int_equal(h.n, best + 1 + 3);   /* patience 3 after the best */
    assert_true(h.improved[best] == 1.0);
    for (int e = best + 1; e < h.n; e++)
        assert_true(h.improved[e] == 0.0);
    float loss;
    OK(tlearn_model_evaluate(m, vx, vy, V, &loss, NULL));
    assert_float_equal(loss, (float)h.val_loss[best], 1e-6); /* weights of the best epoch */
    tlearn_model *saved;
    OK(tlearn_model_load(&saved, NULL, path));
    float a[8 * IN], b[8 * IN];
    get(m, "fc1.weight", a, 8 * IN);
    get(saved, "fc1.weight", b, 8 * IN);
    assert_memory_equal(a, b, sizeof a);
    tlearn_model_destroy(&saved);
    tlearn_fit_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    unlink(path);
}

/* Bad input is refused before any training: the weights stay as they were. */
static void test_fit_bad_input(void **state)
{
    (void)state;
    enum { N = 32 };
    float x[N * IN];
    int32_t y[N];
    data(N, x, y, 5);
    tlearn_model *m = mlp();
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    tlearn_fit *f;
    OK(tlearn_fit_create(&f));
    float before[8 * IN], after[8 * IN];
    get(m, "fc1.weight", before, 8 * IN);
    assert_int_equal(tlearn_fit_set(f, TLEARN_FIT_BATCH, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_fit_set(f, TLEARN_FIT_MIN_DELTA, -1), TLEARN_EINVAL);
    assert_int_equal(tlearn_fit_set(f, TLEARN_FIT_PATIENCE, NAN), TLEARN_EINVAL);
    /* early stopping on a validation metric without a validation set */
    OK(tlearn_fit_set(f, TLEARN_FIT_MONITOR, TLEARN_METRIC_VAL_ACCURACY));
    assert_int_equal(tlearn_model_fit_run(m, o, f, x, y, N), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "validation"));
    /* a validation set whose shape does not fit */
    OK(tlearn_fit_set_validation(f, x, (N - 1) * IN, y, N - 1, N));
    assert_int_equal(tlearn_model_fit_run(m, o, f, x, y, N), TLEARN_ESHAPE);
    int32_t bad[N];
    memcpy(bad, y, sizeof bad);
    bad[3] = CLASSES;
    OK(tlearn_fit_set_validation(f, x, N * IN, bad, N, N));
    assert_int_equal(tlearn_model_fit_run(m, o, f, x, y, N), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "validation"));
    OK(tlearn_fit_set_validation(f, x, N * IN, y, N, N));
    /* MAE is not computed for a cross-entropy model; patience without a monitor */
    OK(tlearn_fit_set(f, TLEARN_FIT_MONITOR, TLEARN_METRIC_VAL_MAE));
    assert_int_equal(tlearn_model_fit_run(m, o, f, x, y, N), TLEARN_EINVAL);
    OK(tlearn_fit_set(f, TLEARN_FIT_MONITOR, 0));
    OK(tlearn_fit_set(f, TLEARN_FIT_PATIENCE, 2));
    assert_int_equal(tlearn_model_fit_run(m, o, f, x, y, N), TLEARN_EINVAL);
    OK(tlearn_fit_set(f, TLEARN_FIT_PATIENCE, 0));
    /* a schedule whose auto length the run cannot fill (warm-up longer than the run) */
    tlearn_sched *s;
    OK(tlearn_sched_create(&s, TLEARN_SCHED_COSINE));
    OK(tlearn_sched_set(s, TLEARN_SCHED_WARMUP_STEPS, 1000));
    OK(tlearn_optim_set_schedule(o, s));
    tlearn_sched_destroy(&s);
    assert_int_equal(tlearn_model_fit_run(m, o, f, x, y, N), TLEARN_EINVAL);
    get(m, "fc1.weight", after, 8 * IN);
    assert_memory_equal(before, after, sizeof before);
    tlearn_fit_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* Accumulating 3 batches of 8 (then 8 and 5) equals one batch of their 24 (and 13)
 * examples: same weights as train steps over the concatenated batches. Also the schedule
 * gets the auto length: updates x epochs. */
static void test_fit_accumulate(void **state)
{
    (void)state;
    enum { N = 37 };
    float x[N * IN];
    int32_t y[N];
    data(N, x, y, 6);
    tlearn_model *a = mlp(), *b = mlp();
    tlearn_optim *oa, *ob;
    OK(tlearn_optim_create(&oa, TLEARN_SGD));
    OK(tlearn_optim_create(&ob, TLEARN_SGD));
    OK(tlearn_optim_set(oa, TLEARN_OPT_MOMENTUM, 0.9));
    OK(tlearn_optim_set(ob, TLEARN_OPT_MOMENTUM, 0.9));
    tlearn_sched *s;
    OK(tlearn_sched_create(&s, TLEARN_SCHED_COSINE));
    OK(tlearn_optim_set_schedule(oa, s));
    OK(tlearn_sched_set(s, TLEARN_SCHED_PERIOD, 6)); /* 2 updates x 3 epochs, by hand */
    OK(tlearn_optim_set_schedule(ob, s));
    tlearn_sched_destroy(&s);
    tlearn_fit *f;
    OK(tlearn_fit_create(&f));
    OK(tlearn_fit_set(f, TLEARN_FIT_BATCH, 8));
    OK(tlearn_fit_set(f, TLEARN_FIT_ACCUMULATE, 3));
    OK(tlearn_fit_set(f, TLEARN_FIT_EPOCHS, 3));
    OK(tlearn_fit_set(f, TLEARN_FIT_SHUFFLE, 0));
    OK(tlearn_model_fit_run(a, oa, f, x, y, N));
    for (int e = 0; e < 3; e++) {
        OK(tlearn_model_train_step(b, ob, x, y, 24, NULL));
        OK(tlearn_model_train_step(b, ob, x + 24 * IN, y + 24, N - 24, NULL));
    }
    double pa, pb;
    int64_t posa, posb;
    OK(tlearn_optim_schedule_position(oa, &posa));
    OK(tlearn_optim_schedule_position(ob, &posb));
    assert_int_equal(posa, 6);
    assert_int_equal(posb, 6);
    OK(tlearn_optim_get_current(oa, TLEARN_OPT_LR, &pa));
    OK(tlearn_optim_get_current(ob, TLEARN_OPT_LR, &pb));
    assert_true(fabs(pa - pb) < 1e-15);
    const char *names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
    const size_t sizes[] = {8 * IN, 8, CLASSES * 8, CLASSES};
    for (int t = 0; t < 4; t++) {
        float wa[8 * IN], wb[8 * IN];
        get(a, names[t], wa, sizes[t]);
        get(b, names[t], wb, sizes[t]);
        for (size_t i = 0; i < sizes[t]; i++)
            assert_float_equal(wa[i], wb[i], 2e-6);
    }
    tlearn_fit_destroy(&f);
    tlearn_optim_destroy(&oa);
    tlearn_optim_destroy(&ob);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

/* ULMFiT's gradual unfreezing: frozen fc1 trains from epoch 1 on; the per-epoch schedule
 * steps once per epoch (LR in the record: 0.1 * 0.5^(e+1)). */
static void test_fit_gradual_unfreeze(void **state)
{
    (void)state;
    enum { N = 24 };
    float x[N * IN];
    int32_t y[N];
    data(N, x, y, 7);
    tlearn_model *m = mlp();
    tlearn_freeze *fz;
    OK(tlearn_freeze_create(&fz));
    OK(tlearn_freeze_until(fz, "relu"));
    OK(tlearn_model_apply_freeze(m, fz));
    tlearn_freeze_destroy(&fz);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.1));
    tlearn_sched *s;
    OK(tlearn_sched_create(&s, TLEARN_SCHED_EXPONENTIAL));
    OK(tlearn_sched_set(s, TLEARN_SCHED_GAMMA, 0.5));
    OK(tlearn_sched_set(s, TLEARN_SCHED_UNIT, TLEARN_SCHED_PER_EPOCH));
    OK(tlearn_optim_set_schedule(o, s));
    tlearn_sched_destroy(&s);
    tlearn_fit *f;
    OK(tlearn_fit_create(&f));
    OK(tlearn_fit_set(f, TLEARN_FIT_BATCH, 8));
    OK(tlearn_fit_set(f, TLEARN_FIT_EPOCHS, 3));
    OK(tlearn_fit_set(f, TLEARN_FIT_GRADUAL_UNFREEZE, 1));
    history h = {0};
    float w0[8 * IN], w1[8 * IN];
    get(m, "fc1.weight", w0, 8 * IN);
    OK(tlearn_fit_set_callbacks(f, NULL, on_epoch, &h));
    OK(tlearn_model_fit_run(m, o, f, x, y, N));
    assert_int_equal(h.n, 3);
    assert_true(h.trainable[0] == 1 && h.trainable[1] == 2 && h.trainable[2] == 2);
    for (int e = 0; e < 3; e++)
        assert_true(fabs(h.lr[e] - 0.1 * pow(0.5, e + 1)) < 1e-15);
    get(m, "fc1.weight", w1, 8 * IN);
    assert_memory_not_equal(w0, w1, sizeof w0);
    int frozen;
    OK(tlearn_model_layer_frozen(m, "fc1", &frozen));
    assert_int_equal(frozen, 0);
    tlearn_fit_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* ---- metrics ---- */

/* A model whose outputs are its inputs (a dense layer with identity weights): the
 * confusion matrix, precision/recall/F1 and top-k follow from the chosen logits by hand. */
static tlearn_model *identity_model(int c)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, c, 1, 1));
    OK(tlearn_model_add_dense(m, "fc", c));
    float w[16], b[4] = {0};
    memset(w, 0, sizeof w);
    for (int i = 0; i < c; i++)
        w[i * c + i] = 1;
    OK(tlearn_model_set_tensor(m, "fc.weight", w, (size_t)(c * c)));
    OK(tlearn_model_set_tensor(m, "fc.bias", b, (size_t)c));
    return m;
}

static void test_metrics_by_hand(void **state)
{
    (void)state;
    tlearn_model *m = identity_model(3);
    /* logits (argmax; rank of the label) */
    const float x[] = {
        3, 1, 0,  /* label 0, pred 0 */
        0, 2, 1,  /* label 1, pred 1 */
        1, 3, 2,  /* label 2, pred 1; label 2nd */
        5, 0, 1,  /* label 1, pred 0; label 3rd */
        0, 1, 4,  /* label 2, pred 2 */
        2, 1, 0,  /* label 0, pred 0 */
    };
    const int32_t y[] = {0, 1, 2, 1, 2, 0};
    int64_t cm[9];
    float p[3], r[3], f1[3], top1, top2;
    OK(tlearn_model_evaluate_classes(m, x, y, 6, 2, &top2, cm, p, r, f1, 3));
    OK(tlearn_model_evaluate_classes(m, x, y, 6, 1, &top1, NULL, NULL, NULL, NULL, 3));
    const int64_t want_cm[9] = {2, 0, 0, 1, 1, 0, 0, 1, 1};
    assert_memory_equal(cm, want_cm, sizeof cm);
    /* precision: col sums 3, 2, 1; recall: row sums 2, 2, 2 */
    assert_float_equal(p[0], 2.0 / 3, 1e-7);
    assert_float_equal(p[1], 0.5, 1e-7);
    assert_float_equal(p[2], 1.0, 1e-7);
    assert_float_equal(r[0], 1.0, 1e-7);
    assert_float_equal(r[1], 0.5, 1e-7);
    assert_float_equal(r[2], 0.5, 1e-7);
    assert_float_equal(f1[0], 0.8, 1e-7);
    assert_float_equal(f1[1], 0.5, 1e-7);
    assert_float_equal(f1[2], 2.0 / 3, 1e-7);
    assert_float_equal(top1, 4.0 / 6, 1e-7);
    assert_float_equal(top2, 5.0 / 6, 1e-7);
    assert_int_equal(tlearn_model_evaluate_classes(m, x, y, 6, 4, &top1, NULL, NULL, NULL,
                                                   NULL, 3), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_evaluate_classes(m, x, y, 6, 1, &top1, NULL, NULL, NULL,
                                                   NULL, 4), TLEARN_ESHAPE);
    /* a class never predicted nor present: 0, not NaN */
    const int32_t y0[] = {0, 1, 1, 1, 1, 0};
    OK(tlearn_model_evaluate_classes(m, x, y0, 6, 1, NULL, cm, p, r, f1, 3));
    assert_true(r[2] == 0 && f1[2] == 0 && p[2] == 0);
    /* Regression: errors by hand */
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_MSE));
    const float t[] = {3, 1, 1, 0, 0, 1}; /* vs outputs (3,1,0), (0,2,1): diffs 0,0,-1,0,2,0 */
    float mse, mae;
    OK(tlearn_model_evaluate_regression(m, x, t, 2, &mse, &mae));
    assert_float_equal(mse, 5.0 / 6, 1e-7);
    assert_float_equal(mae, 3.0 / 6, 1e-7);
    tlearn_model_destroy(&m);
}

/* Class weights and label smoothing by hand for one example, 2 classes, logits (0, 0):
 * p = (0.5, 0.5); loss = (1-e) ln 2 + e ln 2 = ln 2 whatever e; with weights w = (1, 3)
 * and label 1: numerator (1-e) 3 ln2 + e/2 (1 + 3) ln2, denominator 3. */
static void test_loss_options(void **state)
{
    (void)state;
    tlearn_model *m = identity_model(2);
    const float x[] = {0, 0};
    const int32_t y[] = {1};
    float loss, acc;
    OK(tlearn_model_set_label_smoothing(m, 0.2f));
    const float w[] = {1, 3};
    OK(tlearn_model_set_class_weights(m, w, 2));
    OK(tlearn_model_evaluate(m, x, y, 1, &loss, &acc));
    double want = (0.8 * 3 * log(2) + 0.1 * 4 * log(2)) / 3;
    assert_float_equal(loss, want, 1e-6);
    assert_int_equal(tlearn_model_set_label_smoothing(m, 1.5f), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_set_label_smoothing(m, NAN), TLEARN_EINVAL);
    const float wbad[] = {1, -1};
    assert_int_equal(tlearn_model_set_class_weights(m, wbad, 2), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_set_class_weights(m, w, 3), TLEARN_ESHAPE);
    OK(tlearn_model_set_class_weights(m, NULL, 0));
    OK(tlearn_model_evaluate(m, x, y, 1, &loss, &acc));
    assert_float_equal(loss, log(2), 1e-6);
    tlearn_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sched_bad_input),
        cmocka_unit_test(test_sched_drives_updates),
        cmocka_unit_test(test_sched_resume),
        cmocka_unit_test(test_fit_early_stopping),
        cmocka_unit_test(test_fit_bad_input),
        cmocka_unit_test(test_fit_accumulate),
        cmocka_unit_test(test_fit_gradual_unfreeze),
        cmocka_unit_test(test_metrics_by_hand),
        cmocka_unit_test(test_loss_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
