/* The reducer seam of the core (tlearn_model_set_reducer) in one process, with a fake
 * reducer that records what it is handed and stands in for the other workers: bucket
 * order and sizes (reverse layer order, frozen layers absent, the loss last), averaging
 * over the workers, failures that leave the weights alone, evaluate counts. Expected
 * sizes are counted by hand from the layer shapes. */
#include "../unit/common.h"

#define MAXCALLS 32

typedef struct fake {
    int ncalls, nwaits;
    int bucket[MAXCALLS];
    size_t count[MAXCALLS];
    float add;      /* what the other worker contributes to every element */
    int twin;       /* the other worker holds this one's values (a duplicated batch) */
    size_t only[3]; /* when set: add only to calls of these counts */
    int wait_rc;    /* what wait returns */
} fake;

static int fake_reduce(void *user, int bucket, float *data, size_t count)
{
    fake *f = user;
    if (f->ncalls < MAXCALLS) {
        f->bucket[f->ncalls] = bucket;
        f->count[f->ncalls] = count;
    }
    f->ncalls++;
    if (f->only[0] && count != f->only[0] && count != f->only[1] && count != f->only[2])
        return TLEARN_OK;
    for (size_t i = 0; i < count; i++)
        data[i] += f->twin ? data[i] : f->add; /* this worker's value plus the other's */
    return TLEARN_OK;
}

static int fake_wait(void *user)
{
    fake *f = user;
    f->nwaits++;
    return f->wait_rc;
}

/* (2, 5, 5) -> conv c1 (3 filters 3x3: 54 + 3) -> relu -> flatten (27) -> fc (4: 108 + 4) */
static tlearn_model *make_model(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 5, 5));
    OK(tlearn_model_set_seed(m, 5));
    OK(tlearn_model_add_conv2d(m, "c1", 3, 3, 1, 0, 1));
    OK(tlearn_model_add_activation(m, "r1", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc", 4));
    return m;
}

#define N 6
static float X[N * 50];
static int32_t Y[N];

static void make_data(void)
{
    test_rng r = {42};
    for (size_t i = 0; i < sizeof X / sizeof X[0]; i++)
        X[i] = (float)test_uniform(&r, -1.0, 1.0);
    for (int i = 0; i < N; i++)
        Y[i] = i % 4;
}

static const char *const names[4] = {"c1.weight", "c1.bias", "fc.weight", "fc.bias"};
static const size_t sizes[4] = {54, 3, 108, 4};

static void get_all(tlearn_model *m, float *w)
{
    for (int t = 0; t < 4; t++, w += sizes[t - 1])
        OK(tlearn_model_get_tensor(m, names[t], w, sizes[t]));
}

static tlearn_optim *sgd(double lr)
{
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, lr));
    return o;
}

/* One bucket per layer: fc (112) first, then c1 (57), then the loss (1 float). The other
 * worker holding the same gradients, the step equals one process's. */
static void test_buckets_reverse_order(void **state)
{
    (void)state;
    tlearn_model *a = make_model(), *b = make_model();
    fake f = {0};
    f.add = 0.0f;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 1, 1, 0));
    tlearn_optim *o = sgd(0.1);
    float la, lb;
    OK(tlearn_model_train_step(a, o, X, Y, N, &la));
    OK(tlearn_model_train_step(b, o, X, Y, N, &lb));
    assert_int_equal(f.ncalls, 3);
    assert_int_equal(f.nwaits, 1);
    assert_int_equal(f.bucket[0], 0);
    assert_int_equal(f.count[0], 108 + 4);
    assert_int_equal(f.bucket[1], 1);
    assert_int_equal(f.count[1], 54 + 3);
    assert_int_equal(f.bucket[2], 2);
    assert_int_equal(f.count[2], 1);
    float wa[169], wb[169];
    get_all(a, wa);
    get_all(b, wb);
    assert_memory_equal(wa, wb, sizeof wa);
    assert_true(la == lb);
    /* The default bucket holds everything: one bucket of 169, then the loss. */
    f.ncalls = 0;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 1, 0, 0));
    OK(tlearn_model_train_step(a, o, X, Y, N, &la));
    assert_int_equal(f.ncalls, 2);
    assert_int_equal(f.count[0], 169);
    assert_int_equal(f.count[1], 1);
    /* Removed: no calls. */
    f.ncalls = 0;
    OK(tlearn_model_set_reducer(a, NULL, NULL, NULL, 0, 0, 0));
    OK(tlearn_model_train_step(a, o, X, Y, N, &la));
    assert_int_equal(f.ncalls, 0);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

static void test_frozen_not_sent(void **state)
{
    (void)state;
    tlearn_model *a = make_model();
    tlearn_freeze *fr;
    OK(tlearn_freeze_create(&fr));
    OK(tlearn_freeze_until(fr, "flat"));
    OK(tlearn_model_apply_freeze(a, fr));
    tlearn_freeze_destroy(&fr);
    fake f = {0};
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 1, 0));
    tlearn_optim *o = sgd(0.1);
    OK(tlearn_model_train_step(a, o, X, Y, N, NULL));
    assert_int_equal(f.ncalls, 2); /* fc, the loss; never c1 */
    assert_int_equal(f.count[0], 112);
    assert_int_equal(f.count[1], 1);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
}

/* Two workers, the other one's gradient c everywhere: the step uses (g + c) / 2 and the
 * loss reported is (l + c) / 2. g and l from compute_gradients on a twin without reducer;
 * plain SGD: w' = w - lr * (g + c) / 2, computed here in double. */
static void test_average_over_workers(void **state)
{
    (void)state;
    const float c = 0.25f;
    const double lr = 0.5;
    tlearn_model *a = make_model(), *b = make_model();
    float l1;
    OK(tlearn_model_compute_gradients(b, X, Y, N, &l1, NULL, 0));
    float w0[169], g[169], w1[169];
    get_all(b, w0);
    float *gp = g;
    for (int t = 0; t < 4; t++, gp += sizes[t - 1])
        OK(tlearn_model_get_grad(b, names[t], gp, sizes[t]));
    fake f = {0};
    f.add = c;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 50, 0));
    tlearn_optim *o = sgd(lr);
    float la;
    OK(tlearn_model_train_step(a, o, X, Y, N, &la));
    assert_true(fabs(la - ((double)l1 + c) / 2) < 1e-6);
    get_all(a, w1);
    for (int i = 0; i < 169; i++) {
        double want = (double)w0[i] - lr * ((double)g[i] + c) / 2;
        assert_true(fabs(w1[i] - want) < 1e-6 * (1 + fabs(want)));
    }
    /* compute_gradients reduces too: its gradients are the averages. */
    OK(tlearn_model_compute_gradients(a, X, Y, N, NULL, NULL, 0));
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

/* A failing wait (a worker gone) fails the step with its status; nothing changes. A NaN
 * from the other worker makes the step refuse as non-finite. */
static void test_failure_changes_nothing(void **state)
{
    (void)state;
    tlearn_model *a = make_model();
    fake f = {0};
    f.wait_rc = TLEARN_EIO;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 0, 0));
    tlearn_optim *o = sgd(0.1);
    float w0[169], w1[169];
    get_all(a, w0);
    assert_int_equal(tlearn_model_train_step(a, o, X, Y, N, NULL), TLEARN_EIO);
    assert_non_null(strstr(tlearn_errmsg(), "reducer"));
    get_all(a, w1);
    assert_memory_equal(w0, w1, sizeof w0);
    f.wait_rc = TLEARN_OK;
    f.add = NAN;
    assert_int_equal(tlearn_model_train_step(a, o, X, Y, N, NULL), TLEARN_ENONFINITE);
    get_all(a, w1);
    assert_memory_equal(w0, w1, sizeof w0);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
}

/* With TLEARN_REDUCE_EVALUATE the loss sum, hits, count and the loss normaliser (the
 * summed label weights: n without class weights) go through one bucket of 4:
 * the other worker's "c" per entry gives loss (L*n + c) / (n + c), accuracy
 * (hits + c) / (n + c). Without the flag evaluate makes no calls. */
static void test_evaluate_counts(void **state)
{
    (void)state;
    tlearn_model *a = make_model();
    float l0, acc0, l1, acc1;
    OK(tlearn_model_evaluate(a, X, Y, N, &l0, &acc0));
    fake f = {0};
    f.add = 2.0f;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 0, 0));
    OK(tlearn_model_evaluate(a, X, Y, N, &l1, &acc1));
    assert_int_equal(f.ncalls, 0);
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 0, TLEARN_REDUCE_EVALUATE));
    OK(tlearn_model_evaluate(a, X, Y, N, &l1, &acc1));
    assert_int_equal(f.ncalls, 1);
    assert_int_equal(f.count[0], 4);
    double hits = (double)acc0 * N;
    assert_true(fabs(l1 - ((double)l0 * N + 2.0) / (N + 2.0)) < 1e-5);
    assert_true(fabs(acc1 - (hits + 2.0) / (N + 2.0)) < 1e-6);
    tlearn_model_destroy(&a);
}

/* evaluate_classes and evaluate_regression with TLEARN_REDUCE_EVALUATE: the sums (loss,
 * normaliser, absolute error, hits, top-k hits, count: 6 floats) and the confusion matrix
 * go through the reducer; the other worker's "c" per entry shows in every ratio. */
static void test_metrics_counts(void **state)
{
    (void)state;
    tlearn_model *a = make_model();
    float T[N * 4], top0, top1, mse0, mae0, mse1, mae1;
    int64_t cm0[16], cm1[16];
    test_rng r = {7};
    for (int i = 0; i < N * 4; i++)
        T[i] = (float)test_uniform(&r, -1.0, 1.0);
    OK(tlearn_model_evaluate_classes(a, X, Y, N, 2, &top0, cm0, NULL, NULL, NULL, 4));
    OK(tlearn_model_evaluate_regression(a, X, T, N, &mse0, &mae0));
    fake f = {0};
    f.add = 2.0f;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 0, TLEARN_REDUCE_EVALUATE));
    OK(tlearn_model_evaluate_classes(a, X, Y, N, 2, &top1, cm1, NULL, NULL, NULL, 4));
    assert_int_equal(f.ncalls, 2);
    assert_int_equal(f.count[0], 6);
    assert_int_equal(f.count[1], 16);
    assert_true(fabs(top1 - ((double)top0 * N + 2.0) / (N + 2.0)) < 1e-6);
    for (int i = 0; i < 16; i++)
        assert_int_equal(cm1[i], cm0[i] + 2);
    f.ncalls = 0;
    OK(tlearn_model_evaluate_regression(a, X, T, N, &mse1, &mae1));
    assert_int_equal(f.ncalls, 1);
    assert_int_equal(f.count[0], 6);
    const double den = N * 4;
    assert_true(fabs(mse1 - ((double)mse0 * den + 2.0) / (den + 2.0)) < 1e-5);
    assert_true(fabs(mae1 - ((double)mae0 * den + 2.0) / (den + 2.0)) < 1e-5);
    tlearn_model_destroy(&a);
}

static int on_epoch(const tlearn_epoch *e, void *user)
{
    double *out = user;
    OK(tlearn_epoch_get(e, TLEARN_METRIC_VAL_ACCURACY, &out[0]));
    OK(tlearn_epoch_get(e, TLEARN_METRIC_VAL_MACRO_F1, &out[1]));
    OK(tlearn_epoch_get(e, TLEARN_METRIC_ACCURACY, &out[2]));
    return 0;
}

/* fit_run's metrics with TLEARN_REDUCE_EVALUATE: the other worker adds 2 to validation's
 * sums and counts (6 floats), to every confusion cell (16) and to the training hits and
 * count (2), nothing to the gradients. Accuracies are (hits + 2) / (n + 2) and the macro
 * F1 that of the confusion matrix + 2, computed here in double from a twin's figures (same
 * weights: one worker). */
static void test_fit_run_validation(void **state)
{
    (void)state;
    tlearn_model *a = make_model(), *b = make_model();
    fake f = {0};
    f.add = 2.0f;
    f.only[0] = 6;
    f.only[1] = 16;
    f.only[2] = 2;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 1, 0, TLEARN_REDUCE_EVALUATE));
    tlearn_fit *fit;
    OK(tlearn_fit_create(&fit));
    OK(tlearn_fit_set(fit, TLEARN_FIT_BATCH, N));
    OK(tlearn_fit_set(fit, TLEARN_FIT_SHUFFLE, 0));
    OK(tlearn_fit_set_validation(fit, X, N * 50, Y, N, N));
    double ra[3], rb[3];
    tlearn_optim *oa = sgd(0.1), *ob = sgd(0.1);
    OK(tlearn_fit_set_callbacks(fit, NULL, on_epoch, ra));
    OK(tlearn_model_fit_run(a, oa, fit, X, Y, N));
    OK(tlearn_fit_set_callbacks(fit, NULL, on_epoch, rb));
    OK(tlearn_model_fit_run(b, ob, fit, X, Y, N));
    int64_t cm[16];
    float acc;
    OK(tlearn_model_evaluate(b, X, Y, N, NULL, &acc));
    OK(tlearn_model_evaluate_classes(b, X, Y, N, 1, NULL, cm, NULL, NULL, NULL, 4));
    assert_true(fabs(rb[0] - acc) < 1e-6);
    assert_true(fabs(ra[0] - ((double)acc * N + 2.0) / (N + 2.0)) < 1e-6);
    double f1 = 0;
    for (int c = 0; c < 4; c++) {
        double tp = (double)cm[c * 4 + c] + 2, pred = 0, actual = 0;
        for (int j = 0; j < 4; j++) {
            pred += (double)cm[j * 4 + c] + 2;
            actual += (double)cm[c * 4 + j] + 2;
        }
        double p = tp / pred, r = tp / actual;
        f1 += 2 * p * r / (p + r) / 4;
    }
    assert_true(fabs(ra[1] - f1) < 1e-6);
    assert_true(fabs(ra[2] - (rb[2] * N + 2.0) / (N + 2.0)) < 1e-9);
    assert_true(fabs(rb[2] * N - round(rb[2] * N)) < 1e-9); /* hits of the twin's step */
    tlearn_fit_destroy(&fit);
    tlearn_optim_destroy(&oa);
    tlearn_optim_destroy(&ob);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

/* (2, 5, 5) -> conv c1 (3) -> bn1 -> relu -> flatten (27) -> fc1 (5) -> bn2 -> fc2 (4) */
static tlearn_model *make_bn_model(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 5, 5));
    OK(tlearn_model_set_seed(m, 9));
    OK(tlearn_model_add_conv2d(m, "c1", 3, 3, 1, 0, 1));
    OK(tlearn_model_add_batchnorm(m, "bn1", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "r1", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc1", 5));
    OK(tlearn_model_add_batchnorm(m, "bn2", 1e-5f, 0.1f));
    OK(tlearn_model_add_dense(m, "fc2", 4));
    return m;
}

/* Every tensor (weights and running statistics) of a within fp32 tolerance of b's; returns
 * the largest relative difference. */
static double max_rel_diff(tlearn_model *a, tlearn_model *b)
{
    int nt;
    OK(tlearn_model_tensor_count(a, &nt));
    double worst = 0;
    for (int t = 0; t < nt; t++) {
        const char *name;
        size_t n;
        float wa[256], wb[256];
        OK(tlearn_model_tensor_info(a, t, &name, &n, NULL, NULL));
        assert_true(n <= 256);
        OK(tlearn_model_get_tensor(a, name, wa, n));
        OK(tlearn_model_get_tensor(b, name, wb, n));
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)wa[i] - wb[i]) / (1e-3 + fabs(wb[i]));
            worst = d > worst ? d : worst;
        }
    }
    return worst;
}

/* Synchronised BatchNorm with a twin worker (the other worker's values equal this one's):
 * the step is one process's over the batch twice over, running statistics included (their
 * unbiasing counts both copies). The exchanges, in order: per BatchNorm in forward the
 * channel sums and count (C + 1) then the squared deviations (C); backward's buckets
 * (bucket_floats 1: one per layer) with, before each BatchNorm's own gradients, its
 * sum dy and sum dy * xhat (2C) - except at nothing; then the loss. */
static void test_sync_batchnorm(void **state)
{
    (void)state;
    float X2[2 * N * 50];
    int32_t Y2[2 * N];
    memcpy(X2, X, sizeof X);
    memcpy(X2 + N * 50, X, sizeof X);
    memcpy(Y2, Y, sizeof Y);
    memcpy(Y2 + N, Y, sizeof Y);
    tlearn_model *a = make_bn_model(), *plain = make_bn_model(), *ref = make_bn_model();
    fake f = {0}, g = {0};
    f.twin = g.twin = 1;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 1, TLEARN_REDUCE_BATCHNORM));
    OK(tlearn_model_set_reducer(plain, fake_reduce, fake_wait, &g, 2, 1, 0));
    tlearn_optim *oa = sgd(0.1), *op = sgd(0.1), *orf = sgd(0.1);
    float la, lr;
    OK(tlearn_model_train_step(a, oa, X, Y, N, &la));
    static const size_t want[] = {3 + 1, 3, 5 + 1, 5,      /* forward: bn1, bn2 */
                                  5 * 4 + 4, 10, 10,       /* fc2; bn2's sums, gradients */
                                  27 * 5 + 5, 6, 6, 54 + 3, /* fc1; bn1's; c1 */
                                  1};                      /* the loss */
    assert_int_equal(f.ncalls, 12);
    for (int k = 0; k < 12; k++) {
        assert_int_equal(f.bucket[k], k);
        assert_int_equal(f.count[k], want[k]);
    }
    assert_int_equal(f.nwaits, 2 + 2 + 1 + 1 + 1); /* each sum of a BatchNorm, then the end */
    OK(tlearn_model_train_step(ref, orf, X2, Y2, 2 * N, &lr));
    OK(tlearn_model_train_step(plain, op, X, Y, N, NULL));
    assert_true(fabs(la - lr) < 1e-6 * (1 + fabs(lr)));
    for (int s = 0; s < 3; s++) {
        OK(tlearn_model_train_step(a, oa, X, Y, N, &la));
        OK(tlearn_model_train_step(plain, op, X, Y, N, NULL));
        OK(tlearn_model_train_step(ref, orf, X2, Y2, 2 * N, &lr));
    }
    double d_sync = max_rel_diff(a, ref), d_plain = max_rel_diff(plain, ref);
    print_message("sync BN: largest relative difference %.3g; without sync %.3g\n", d_sync,
                  d_plain);
    assert_true(d_sync < 2e-5);
    /* Without the flag the running variances are unbiased over one copy's count: the
     * comparison would catch it. */
    assert_true(d_plain > 1e-3);
    /* Without a reducer nothing is exchanged and the model trains as before. */
    OK(tlearn_model_set_reducer(a, NULL, NULL, NULL, 1, 0, 0));
    f.ncalls = 0;
    OK(tlearn_model_train_step(a, oa, X, Y, N, NULL));
    assert_int_equal(f.ncalls, 0);
    tlearn_optim_destroy(&oa);
    tlearn_optim_destroy(&op);
    tlearn_optim_destroy(&orf);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&plain);
    tlearn_model_destroy(&ref);
}

/* A BatchNorm sum that fails (a worker gone) fails the step with its status and no
 * further exchange is started; weights and running statistics are unchanged. */
static void test_sync_batchnorm_failure(void **state)
{
    (void)state;
    tlearn_model *a = make_bn_model(), *ref = make_bn_model();
    fake f = {0};
    f.twin = 1;
    f.wait_rc = TLEARN_EIO;
    OK(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 0, TLEARN_REDUCE_BATCHNORM));
    tlearn_optim *o = sgd(0.1);
    assert_int_equal(tlearn_model_train_step(a, o, X, Y, N, NULL), TLEARN_EIO);
    assert_int_equal(f.ncalls, 1); /* bn1's first sum, then nothing */
    assert_true(max_rel_diff(a, ref) == 0.0);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&ref);
}

static void test_arguments(void **state)
{
    (void)state;
    tlearn_model *a = make_model();
    fake f = {0};
    assert_int_equal(tlearn_model_set_reducer(NULL, fake_reduce, fake_wait, &f, 2, 0, 0),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_set_reducer(a, fake_reduce, NULL, &f, 2, 0, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 0, 0, 0),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 65537, 0, 0),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_set_reducer(a, fake_reduce, fake_wait, &f, 2, 0, 8),
                     TLEARN_EINVAL);
    /* a refused call left no reducer behind */
    tlearn_optim *o = sgd(0.1);
    OK(tlearn_model_train_step(a, o, X, Y, N, NULL));
    assert_int_equal(f.ncalls, 0);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
}

int main(void)
{
    make_data();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_reverse_order),
        cmocka_unit_test(test_frozen_not_sent),
        cmocka_unit_test(test_average_over_workers),
        cmocka_unit_test(test_failure_changes_nothing),
        cmocka_unit_test(test_evaluate_counts),
        cmocka_unit_test(test_metrics_counts),
        cmocka_unit_test(test_fit_run_validation),
        cmocka_unit_test(test_sync_batchnorm),
        cmocka_unit_test(test_sync_batchnorm_failure),
        cmocka_unit_test(test_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
