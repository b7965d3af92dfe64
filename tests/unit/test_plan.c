/* The workspace planner and the graph runner (lib/model/plan.c, run.c), introspection, and
 * tlearn_model_fit's batching and progress callback.
 *
 * Predictions are checked against a forward pass written here in double from the weights
 * read back with tlearn_model_get_tensor (float rounding only: rtol 1e-5, atol 1e-5), at
 * batch 1 and at batch 300 (several chunks: inference runs in chunks of at most 256), on a
 * model with a dead-end branch and a layer read by two later layers, where shared regions
 * would show. */
#include "common.h"

#include "model/model.h"
#include "train/train.h"

enum { IN_C = 3, IN_H = 4, IN_W = 4, IN = IN_C * IN_H * IN_W, H1 = 16, HD = 7, H2 = 12, OUT = 5 };

/* flat -> fc1 -> relu1 -> fc_dead (dead end) ; relu1 -> fc2 -> tanh2 -> fc3 */
static tlearn_model *branchy(uint64_t seed)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, IN_C, IN_H, IN_W));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc1", H1));
    OK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc_dead", HD));
    OK(tlearn_model_set_next_input(m, "relu1"));
    OK(tlearn_model_add_dense(m, "fc2", H2));
    OK(tlearn_model_add_activation(m, "tanh2", TLEARN_ACT_TANH, 0));
    OK(tlearn_model_add_dense(m, "fc3", OUT));
    return m;
}

static float *get(tlearn_model *m, const char *name, size_t n)
{
    float *p = malloc(sizeof(float) * n);
    OK(tlearn_model_get_tensor(m, name, p, n));
    return p;
}

static void dense_ref(const float *W, const float *b, const double *x, int in, int out,
                      double *y)
{
    for (int u = 0; u < out; u++) {
        double s = b[u];
        for (int k = 0; k < in; k++)
            s += (double)W[u * in + k] * x[k];
        y[u] = s;
    }
}

/* The branchy model's output for one input, in double. */
static void branchy_ref(tlearn_model *m, const float *x, double *out)
{
    float *w1 = get(m, "fc1.weight", H1 * IN), *b1 = get(m, "fc1.bias", H1);
    float *w2 = get(m, "fc2.weight", H2 * H1), *b2 = get(m, "fc2.bias", H2);
    float *w3 = get(m, "fc3.weight", OUT * H2), *b3 = get(m, "fc3.bias", OUT);
    double xd[IN], h1[H1], h2[H2];
    for (int i = 0; i < IN; i++)
        xd[i] = x[i];
    dense_ref(w1, b1, xd, IN, H1, h1);
    for (int i = 0; i < H1; i++)
        h1[i] = h1[i] > 0 ? h1[i] : 0;
    dense_ref(w2, b2, h1, H1, H2, h2);
    for (int i = 0; i < H2; i++)
        h2[i] = tanh(h2[i]);
    dense_ref(w3, b3, h2, H2, OUT, out);
    free(w1), free(b1), free(w2), free(b2), free(w3), free(b3);
}

static void test_predict_chunks(void **state)
{
    (void)state;
    enum { N = 300 };
    tlearn_model *m = branchy(1);
    float *x = malloc(sizeof(float) * N * IN), *all = malloc(sizeof(float) * N * OUT);
    test_rng r = {2};
    test_fill(&r, x, N * IN, -1, 1);
    OK(tlearn_model_predict(m, x, N, all, N * OUT));
    for (int i = 0; i < N; i++) {
        float one[OUT];
        double ref[OUT];
        OK(tlearn_model_predict(m, x + i * IN, 1, one, OUT));
        branchy_ref(m, x + i * IN, ref);
        for (int j = 0; j < OUT; j++) {
            if (!test_close(all[i * OUT + j], ref[j], 1e-5, 1e-5))
                fail_msg("batch 300, row %d, output %d: %.7g, reference %.7g", i, j,
                         (double)all[i * OUT + j], ref[j]);
            if (!test_close(one[j], all[i * OUT + j], 1e-6, 1e-6))
                fail_msg("row %d, output %d: batch 1 gives %.8g, batch 300 %.8g", i, j,
                         (double)one[j], (double)all[i * OUT + j]);
        }
    }
    /* features of an inner layer and predict_from it give the same logits. */
    float *feat = malloc(sizeof(float) * N * H1), *from = malloc(sizeof(float) * N * OUT);
    OK(tlearn_model_features(m, "relu1", x, N, feat, N * H1));
    for (int i = 0; i < N * H1; i++)
        assert_true(feat[i] >= 0);
    /* relu1 is read by fc_dead and fc2, both after it: it stands for the prefix. */
    OK(tlearn_model_predict_from(m, "relu1", feat, N, from, N * OUT));
    for (int i = 0; i < N * OUT; i++)
        assert_true(test_close(from[i], all[i], 1e-6, 1e-6));
    /* fc_dead is not read by fc2: its activations do not stand for the prefix. */
    float fd[HD];
    assert_int_equal(tlearn_model_predict_from(m, "fc_dead", fd, 1, from, OUT), TLEARN_ESTATE);
    /* Training mode is not changed by predict, and predict is the same in either mode. */
    OK(tlearn_model_set_training(m, 0));
    float again[OUT];
    OK(tlearn_model_predict(m, x, 1, again, OUT));
    assert_memory_equal(again, all, sizeof again);
    free(x), free(all), free(feat), free(from);
    tlearn_model_destroy(&m);
}

/* The per-model thread count changes how GEMMs are split, not what they compute. */
static void test_threads(void **state)
{
    (void)state;
    enum { N = 600 }; /* more than one inference chunk (256 rows): two workers run them */
    tlearn_model *a = branchy(13), *b = branchy(13);
    OK(tlearn_model_set_threads(b, 2));
    float *x = malloc(sizeof(float) * N * IN);
    float *ya = malloc(sizeof(float) * N * OUT), *yb = malloc(sizeof(float) * N * OUT);
    static int32_t y[N];
    test_rng r = {14};
    test_fill(&r, x, N * IN, -1, 1);
    for (int i = 0; i < N; i++)
        y[i] = (int32_t)(test_next(&r) % OUT);
    OK(tlearn_model_predict(a, x, N, ya, N * OUT));
    OK(tlearn_model_predict(b, x, N, yb, N * OUT));
    for (int i = 0; i < N * OUT; i++)
        assert_true(test_close(yb[i], ya[i], 1e-5, 1e-6));
    float la, lb, acca, accb;
    OK(tlearn_model_evaluate(a, x, y, N, &la, &acca));
    OK(tlearn_model_evaluate(b, x, y, N, &lb, &accb));
    assert_true(test_close(lb, la, 1e-6, 0));
    assert_true(acca == accb);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_model_train_step(a, o, x, y, N, NULL));
    OK(tlearn_model_train_step(b, o, x, y, N, NULL));
    float *wa = get(a, "fc1.weight", IN * H1), *wb = get(b, "fc1.weight", IN * H1);
    for (int i = 0; i < IN * H1; i++)
        assert_true(test_close(wb[i], wa[i], 1e-5, 1e-6));
    free(x), free(ya), free(yb), free(wa), free(wb);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

static void test_workspace_reuse(void **state)
{
    (void)state;
    tlearn_model *m = branchy(3);
    size_t bytes = 1;
    OK(tlearn_model_workspace_bytes(m, &bytes));
    assert_int_equal(bytes, 0); /* nothing computed yet */
    enum { N = 300 };
    float *x = malloc(sizeof(float) * N * IN), *out = malloc(sizeof(float) * N * OUT);
    int32_t *y = malloc(sizeof(int32_t) * N);
    test_rng r = {4};
    test_fill(&r, x, N * IN, -1, 1);
    for (int i = 0; i < N; i++)
        y[i] = (int32_t)(test_next(&r) % OUT);

    OK(tlearn_model_predict(m, x, N, out, N * OUT));
    size_t b300;
    OK(tlearn_model_workspace_bytes(m, &b300));
    assert_true(b300 > 0);
    /* Smaller and larger batches reuse the inference plan (its capacity is the chunk size,
     * at most 256 rows): no allocation. */
    uint64_t calls = tl_alloc_calls();
    OK(tlearn_model_predict(m, x, 5, out, 5 * OUT));
    OK(tlearn_model_predict(m, x, N, out, N * OUT));
    OK(tlearn_model_evaluate(m, x, y, N, NULL, NULL));
    assert_int_equal(tl_alloc_calls(), calls);
    OK(tlearn_model_workspace_bytes(m, &bytes));
    assert_int_equal(bytes, b300);

    /* Training: the first step allocates (gradients, Adam moments, the plan); later steps
     * of the same or a smaller batch allocate nothing. */
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    OK(tlearn_model_train_step(m, o, x, y, 32, NULL));
    size_t b32;
    OK(tlearn_model_workspace_bytes(m, &b32));
    assert_true(b32 > b300);
    calls = tl_alloc_calls();
    OK(tlearn_model_train_step(m, o, x + 32 * IN, y + 32, 32, NULL));
    OK(tlearn_model_train_step(m, o, x, y, 16, NULL));
    OK(tlearn_model_train_step(m, o, x, y, 1, NULL));
    assert_int_equal(tl_alloc_calls(), calls);
    OK(tlearn_model_workspace_bytes(m, &bytes));
    assert_int_equal(bytes, b32);
    /* A larger batch plans a larger workspace. */
    OK(tlearn_model_train_step(m, o, x, y, 64, NULL));
    OK(tlearn_model_workspace_bytes(m, &bytes));
    assert_true(bytes > b32);
    /* Changing the structure drops the plans. */
    OK(tlearn_model_add_activation(m, "extra", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_workspace_bytes(m, &bytes));
    assert_int_equal(bytes, 0);
    tlearn_optim_destroy(&o);
    free(x), free(out), free(y);
    tlearn_model_destroy(&m);
}

/* Inference shares regions between outputs that are no longer read; training keeps every
 * output backward needs, and gradients share regions by their liveness in backward. A
 * chain of 10 equal layers shows the difference. */
static void test_liveness_sharing(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 64, 1, 1));
    char name[16];
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "fc%d", i);
        OK(tlearn_model_add_dense(m, name, 64));
    }
    enum { N = 128 };
    size_t one = (size_t)N * 64 * sizeof(float);
    OK(tl_model_plan(m, &m->plan_infer, N, m->nlayers, 0));
    OK(tl_model_plan(m, &m->plan_train, N, 0, 0));
    /* Inference: two regions suffice for a chain (input of a layer, its output). */
    assert_true(m->plan_infer.bytes < 3 * one);
    /* Distinct outputs never alias within the live range: consecutive layers differ. */
    for (int i = 1; i < 10; i++)
        assert_ptr_not_equal(m->plan_infer.out[i], m->plan_infer.out[i - 1]);
    /* Training: all 10 outputs are kept; a layer's gradient lives from its reader's
     * backward to its own, so a chain needs two gradient regions, not ten. */
    assert_true(m->plan_train.bytes >= 12 * one);
    assert_true(m->plan_train.bytes < 13 * one);
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < i; j++)
            assert_ptr_not_equal(m->plan_train.out[i], m->plan_train.out[j]);
    for (int i = 1; i < 10; i++)
        assert_ptr_not_equal(m->plan_train.dout[i], m->plan_train.dout[i - 1]);
    tlearn_model_destroy(&m);
}

/* ---- a test-only layer with two inputs: out = in0 + in1 ---- */

static int sum2_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)L, (void)ia, (void)fa;
    return ni == 0 && nf == 0 ? TLEARN_OK : TLEARN_EINVAL;
}

static void sum2_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)L, (void)ia, (void)fa;
    *ni = *nf = 0;
}

static int sum2_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    if (tl_shape_size(L->in[0]) != tl_shape_size(L->in[1]))
        return tl_fail(TLEARN_ESHAPE, "sum2: shapes differ");
    L->out = L->in[0];
    return TLEARN_OK;
}

static void sum2_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                         size_t n, float *saved)
{
    (void)ex, (void)saved;
    size_t total = n * tl_shape_size(L->out);
    for (size_t i = 0; i < total; i++)
        out[i] = in[0][i] + in[1][i];
}

static void sum2_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                          const float *out, const float *dout, float *const *din, int accum,
                          size_t n, const float *saved, float *const *pgrad)
{
    (void)ex, (void)in, (void)out, (void)saved, (void)pgrad;
    size_t total = n * tl_shape_size(L->out);
    for (int k = 0; k < 2; k++) {
        if (!din[k])
            continue;
        for (size_t i = 0; i < total; i++)
            din[k][i] = accum ? din[k][i] + dout[i] : dout[i];
    }
}

static const tl_layer_ops sum2_ops = {
    .kind = 100,
    .kind_name = "test_sum2",
    .configure = sum2_configure,
    .arguments = sum2_arguments,
    .setup = sum2_setup,
    .forward = sum2_forward,
    .backward = sum2_backward,
};

static double predict_ce(tlearn_model *m, const float *x, const int32_t *y, size_t n,
                         size_t classes)
{
    float *z = malloc(sizeof(float) * n * classes);
    OK(tlearn_model_predict(m, x, n, z, n * classes));
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (size_t j = 0; j < classes; j++)
            s += exp((double)z[i * classes + j]);
        total += log(s) - z[i * classes + (size_t)y[i]];
    }
    free(z);
    return total / (double)n;
}

/* dx and every parameter gradient against central differences of the predicted loss
 * (step 2^-7; tolerance justified in test_gradcheck.c). */
static void fd_check(tlearn_model *m, float *x, const int32_t *y, size_t n, size_t in,
                     size_t classes)
{
    const double h = 1.0 / 128;
    float *dx = malloc(sizeof(float) * n * in);
    OK(tlearn_model_compute_gradients(m, x, y, n, NULL, dx, n * in));
    for (size_t j = 0; j < n * in; j++) {
        float v = x[j], vp = (float)(v + h), vm = (float)(v - h);
        x[j] = vp;
        double lp = predict_ce(m, x, y, n, classes);
        x[j] = vm;
        double lm = predict_ce(m, x, y, n, classes);
        x[j] = v;
        double fd = (lp - lm) / ((double)vp - (double)vm);
        if (!test_close(dx[j], fd, 2e-3, 5e-4))
            fail_msg("dx[%zu] = %.7g, finite difference %.7g", j, (double)dx[j], fd);
    }
    int count;
    OK(tlearn_model_tensor_count(m, &count));
    for (int t = 0; t < count; t++) {
        const char *cname;
        size_t numel;
        char name[128];
        OK(tlearn_model_tensor_info(m, t, &cname, &numel, NULL, NULL));
        snprintf(name, sizeof name, "%s", cname);
        float *w = get(m, name, numel), *g = malloc(sizeof(float) * numel);
        OK(tlearn_model_get_grad(m, name, g, numel));
        for (size_t j = 0; j < numel; j++) {
            float v = w[j], vp = (float)(v + h), vm = (float)(v - h);
            w[j] = vp;
            OK(tlearn_model_set_tensor(m, name, w, numel));
            double lp = predict_ce(m, x, y, n, classes);
            w[j] = vm;
            OK(tlearn_model_set_tensor(m, name, w, numel));
            double lm = predict_ce(m, x, y, n, classes);
            w[j] = v;
            OK(tlearn_model_set_tensor(m, name, w, numel));
            double fd = (lp - lm) / ((double)vp - (double)vm);
            if (!test_close(g[j], fd, 2e-3, 5e-4))
                fail_msg("%s[%zu]: gradient %.7g, finite difference %.7g", name, j,
                         (double)g[j], fd);
        }
        free(w), free(g);
    }
    free(dx);
}

/* Gradients through a dead branch (zero), a layer read twice, and the model input read by
 * several layers, including one layer reading the same producer on both inputs. */
static void test_branches_backward(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 6, 1, 1));
    OK(tlearn_model_set_seed(m, 9));
    OK(tlearn_model_add_dense(m, "a", 6));                      /* 0: reads the input */
    OK(tlearn_model_add_activation(m, "t", TLEARN_ACT_TANH, 0)); /* 1 */
    OK(tlearn_model_add_dense(m, "dead", 3));                   /* 2: nobody reads it */
    int twice_t[2] = {1, 1};
    OK(tl_model_add(m, "test", &sum2_ops, "tt", twice_t, 2, NULL, 0, NULL, 0)); /* 3 */
    int t_and_x[2] = {3, -1};
    OK(tl_model_add(m, "test", &sum2_ops, "tx", t_and_x, 2, NULL, 0, NULL, 0)); /* 4 */
    int twice_x[2] = {-1, -1};
    OK(tl_model_add(m, "test", &sum2_ops, "xx", twice_x, 2, NULL, 0, NULL, 0)); /* 5 */
    int sum[2] = {4, 5};
    OK(tl_model_add(m, "test", &sum2_ops, "s", sum, 2, NULL, 0, NULL, 0)); /* 6 */
    OK(tlearn_model_add_dense(m, "head", 4));                               /* 7 */

    enum { N = 3 };
    test_rng r = {10};
    float x[N * 6];
    int32_t y[N] = {0, 3, 1};
    test_fill(&r, x, N * 6, -1, 1);
    fd_check(m, x, y, N, 6, 4);
    float g[3 * 6];
    OK(tlearn_model_get_grad(m, "dead.weight", g, 18));
    for (int i = 0; i < 18; i++)
        assert_true(g[i] == 0.0f);
    tlearn_model_destroy(&m);

    /* The dead-branch model of the other tests too. */
    m = branchy(11);
    float xb[2 * IN];
    int32_t yb[2] = {4, 1};
    test_fill(&r, xb, 2 * IN, -1, 1);
    fd_check(m, xb, yb, 2, IN, OUT);
    tlearn_model_destroy(&m);
}

/* ---- introspection ---- */

static void test_introspection(void **state)
{
    (void)state;
    tlearn_model *m = branchy(5);
    static const char *names[] = {"flat", "fc1", "relu1", "fc_dead", "fc2", "tanh2", "fc3"};
    static const int kinds[] = {TLEARN_LAYER_FLATTEN,    TLEARN_LAYER_DENSE, TLEARN_LAYER_ACTIVATION,
                                TLEARN_LAYER_DENSE,      TLEARN_LAYER_DENSE, TLEARN_LAYER_ACTIVATION,
                                TLEARN_LAYER_DENSE};
    static const int widths[] = {IN, H1, H1, HD, H2, H2, OUT};
    static const size_t params[] = {0, IN * H1 + H1, 0, H1 * HD + HD, H1 * H2 + H2, 0,
                                    H2 * OUT + OUT};
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 7);
    size_t sum = 0;
    for (int i = 0; i < count; i++) {
        const char *name;
        int kind, c, h, w, index;
        size_t pc;
        OK(tlearn_model_layer_name(m, i, &name));
        assert_string_equal(name, names[i]);
        OK(tlearn_model_layer_index(m, names[i], &index));
        assert_int_equal(index, i);
        OK(tlearn_model_layer_kind(m, i, &kind));
        assert_int_equal(kind, kinds[i]);
        OK(tlearn_model_layer_shape(m, i, &c, &h, &w));
        assert_int_equal(c, widths[i]);
        assert_int_equal(h, 1);
        assert_int_equal(w, 1);
        OK(tlearn_model_layer_param_count(m, i, &pc));
        assert_int_equal(pc, params[i]);
        sum += pc;
    }
    int c = 0, h = 0, w = 0;
    OK(tlearn_model_layer_shape(m, -1, &c, &h, &w));
    assert_int_equal(c, IN_C);
    assert_int_equal(h, IN_H);
    assert_int_equal(w, IN_W);
    OK(tlearn_model_layer_shape(m, 0, NULL, NULL, NULL));
    size_t total = 0, trainable = 0;
    OK(tlearn_model_param_count(m, &total, &trainable));
    assert_int_equal(total, sum);
    assert_int_equal(trainable, sum);
    OK(tlearn_model_param_count(m, NULL, NULL));

    int tc;
    OK(tlearn_model_tensor_count(m, &tc));
    assert_int_equal(tc, 8);
    static const char *tnames[] = {"fc1.weight", "fc1.bias", "fc_dead.weight", "fc_dead.bias",
                                   "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"};
    static const int rows[] = {H1, HD, H2, OUT}, cols[] = {IN, H1, H1, H2};
    for (int t = 0; t < tc; t++) {
        const char *name;
        size_t numel;
        int ndim, dims[4] = {-1, -1, -1, -1};
        OK(tlearn_model_tensor_info(m, t, &name, &numel, &ndim, dims));
        assert_string_equal(name, tnames[t]);
        int d = t / 2;
        if (t % 2 == 0) {
            assert_int_equal(ndim, 2);
            assert_int_equal(dims[0], rows[d]);
            assert_int_equal(dims[1], cols[d]);
            assert_int_equal(numel, (size_t)rows[d] * cols[d]);
        } else {
            assert_int_equal(ndim, 1);
            assert_int_equal(dims[0], rows[d]);
            assert_int_equal(numel, (size_t)rows[d]);
        }
        assert_int_equal(dims[3], 0);
        OK(tlearn_model_tensor_info(m, t, NULL, NULL, NULL, NULL));
    }
    /* Names are owned by the model: an earlier one survives later calls. */
    const char *first, *second;
    OK(tlearn_model_tensor_info(m, 0, &first, NULL, NULL, NULL));
    OK(tlearn_model_tensor_info(m, 7, &second, NULL, NULL, NULL));
    assert_string_equal(first, "fc1.weight");
    assert_string_equal(second, "fc3.bias");
    assert_int_equal(tlearn_model_tensor_info(m, tc, NULL, NULL, NULL, NULL), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_tensor_info(m, -1, NULL, NULL, NULL, NULL), TLEARN_EINVAL);

    /* PyTorch's Linear init: weights and bias uniform within 1/sqrt(fan_in), and the
     * whole range is used. */
    float *w1 = get(m, "fc1.weight", IN * H1);
    double bound = 1 / sqrt((double)IN), mx = 0;
    for (int i = 0; i < IN * H1; i++)
        mx = fmax(mx, fabs(w1[i]));
    assert_true(mx <= bound && mx > 0.95 * bound);
    free(w1);
    /* Same seed, same weights; another seed, others. */
    tlearn_model *m2 = branchy(5), *m3 = branchy(6);
    float *a = get(m, "fc3.weight", H2 * OUT), *b = get(m2, "fc3.weight", H2 * OUT);
    float *c3 = get(m3, "fc3.weight", H2 * OUT);
    assert_memory_equal(a, b, sizeof(float) * H2 * OUT);
    assert_memory_not_equal(a, c3, sizeof(float) * H2 * OUT);
    free(a), free(b), free(c3);
    tlearn_model_destroy(&m2);
    tlearn_model_destroy(&m3);
    tlearn_model_destroy(&m);
}

/* ---- fit: batching and the progress callback ---- */

typedef struct progress_log {
    int calls, stop_at;
    int epoch[64], epochs[64];
    size_t step[64], steps[64];
    float loss[64];
} progress_log;

static int on_progress(int epoch, int epochs, size_t step, size_t steps, float loss, void *user)
{
    progress_log *p = user;
    if (p->calls < 64) {
        p->epoch[p->calls] = epoch;
        p->epochs[p->calls] = epochs;
        p->step[p->calls] = step;
        p->steps[p->calls] = steps;
        p->loss[p->calls] = loss;
    }
    p->calls++;
    return p->stop_at && p->calls == p->stop_at;
}

static void fit_data(float *x, int32_t *y, size_t n)
{
    test_rng r = {12};
    test_fill(&r, x, n * IN, -1, 1);
    for (size_t i = 0; i < n; i++)
        y[i] = (int32_t)(test_next(&r) % OUT);
}

static void test_fit_progress(void **state)
{
    (void)state;
    enum { N = 100 };
    float x[N * IN];
    int32_t y[N];
    fit_data(x, y, N);
    tlearn_model *m = branchy(7);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    progress_log log;
    memset(&log, 0, sizeof log);
    OK(tlearn_model_fit(m, o, x, y, N, 32, 2, 1, on_progress, &log));
    assert_int_equal(log.calls, 8); /* 4 steps per epoch, the last one of 4 examples */
    for (int i = 0; i < 8; i++) {
        assert_int_equal(log.epoch[i], i / 4);
        assert_int_equal(log.epochs[i], 2);
        assert_int_equal(log.step[i], (size_t)(i % 4));
        assert_int_equal(log.steps[i], 4);
        assert_true(isfinite(log.loss[i]) && log.loss[i] > 0);
    }

    /* A non-zero return stops after that step. */
    memset(&log, 0, sizeof log);
    log.stop_at = 3;
    int rc = tlearn_model_fit(m, o, x, y, N, 32, 2, 1, on_progress, &log);
    assert_int_equal(rc, TLEARN_ECANCELED);
    assert_int_equal(log.calls, 3);
    assert_true(strstr(tlearn_errmsg(), "tlearn_model_fit") != NULL);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* Without shuffling, fit is exactly train_step over consecutive slices, the last partial
 * batch included; with shuffling, the same seed gives the same weights. */
static void test_fit_batches(void **state)
{
    (void)state;
    enum { N = 100 };
    float x[N * IN];
    int32_t y[N];
    fit_data(x, y, N);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    tlearn_model *a = branchy(8), *b = branchy(8);
    OK(tlearn_model_fit(a, o, x, y, N, 32, 1, 0, NULL, NULL));
    for (size_t s = 0; s < N; s += 32)
        OK(tlearn_model_train_step(b, o, x + s * IN, y + s, s + 32 <= N ? 32 : N - s, NULL));
    float *wa = get(a, "fc1.weight", IN * H1), *wb = get(b, "fc1.weight", IN * H1);
    assert_memory_equal(wa, wb, sizeof(float) * IN * H1);
    free(wa), free(wb);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);

    a = branchy(8);
    b = branchy(8);
    tlearn_model *c = branchy(8);
    OK(tlearn_model_set_seed(c, 99)); /* another shuffle */
    OK(tlearn_model_fit(a, o, x, y, N, 16, 1, 1, NULL, NULL));
    OK(tlearn_model_fit(b, o, x, y, N, 16, 1, 1, NULL, NULL));
    OK(tlearn_model_fit(c, o, x, y, N, 16, 1, 1, NULL, NULL));
    wa = get(a, "fc3.weight", H2 * OUT);
    wb = get(b, "fc3.weight", H2 * OUT);
    float *wc = get(c, "fc3.weight", H2 * OUT);
    assert_memory_equal(wa, wb, sizeof(float) * H2 * OUT);
    assert_memory_not_equal(wa, wc, sizeof(float) * H2 * OUT);
    free(wa), free(wb), free(wc);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
    tlearn_model_destroy(&c);
    tlearn_optim_destroy(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_predict_chunks),    cmocka_unit_test(test_workspace_reuse),
        cmocka_unit_test(test_liveness_sharing),  cmocka_unit_test(test_branches_backward),
        cmocka_unit_test(test_introspection),     cmocka_unit_test(test_fit_progress),
        cmocka_unit_test(test_fit_batches),       cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
