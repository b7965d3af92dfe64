/* Finite-difference gradient checks: every layer's backward against central differences of
 * its forward, both losses against differences of the loss, and a composed MLP through the
 * public API (input gradient from tlearn_model_compute_gradients, parameter gradients from
 * tlearn_model_get_grad).
 *
 * Layers compute in float; the objective and the difference quotient are formed in double.
 * For a layer the objective is J = sum_i r_i y_i with fixed random r in [-1, 1], so dJ/dy = r
 * is what backward receives as dout.
 *
 * Tolerance for layers and the MLP (atol 5e-4 + rtol 2e-3), from the error budget of a
 * central difference with step h = 2^-7 on float outputs:
 *   truncation  h^2/6 * |f'''| * |r|  <= 2.7e-6 * 2 (|f'''| <= 2 for tanh, < 1 otherwise);
 *   rounding    the perturbed outputs carry ~ulp(|y|)/2 each: <= k * 6e-8 * |y| / (2h)
 *               ~ 4e-5 for k = 3 outputs of magnitude 2;
 *   analytic    float backward: ~1e-6.
 * So errors stay below ~1e-4; a wrong derivative (missing term, wrong sign, wrong slope)
 * shows errors of 1e-2 and more. Inputs are kept 5h away from kinks (relu, relu6, leaky).
 * The losses are evaluated in double from float logits, so their differences are accurate
 * to ~1e-9 and get a tight tolerance (1e-6). */
#include "common.h"

#include "model/model.h"
#include "train/train.h"

static const double H = 1.0 / 128.0;
static const double ATOL = 5e-4, RTOL = 2e-3;

/* J = sum r_i y_i after one forward of layer L. */
static double objective(tl_layer *L, const tl_exec *ex, const float *x, float *y,
                        const float *r, size_t n)
{
    const float *in[1] = {x};
    L->ops->forward(L, ex, in, y, n, NULL);
    double J = 0.0;
    size_t total = n * tl_shape_size(L->out);
    for (size_t i = 0; i < total; i++)
        J += (double)r[i] * (double)y[i];
    return J;
}

/* Central difference of J with respect to *v, restoring *v afterwards. */
static double central(tl_layer *L, const tl_exec *ex, const float *x, float *y, const float *r,
                      size_t n, float *v)
{
    float saved = *v;
    float vp = (float)(saved + H), vm = (float)(saved - H);
    *v = vp;
    double jp = objective(L, ex, x, y, r, n);
    *v = vm;
    double jm = objective(L, ex, x, y, r, n);
    *v = saved;
    return (jp - jm) / ((double)vp - (double)vm); /* the step actually taken */
}

static int near_kink(double x, const double *kinks, int nk)
{
    for (int k = 0; k < nk; k++)
        if (fabs(x - kinks[k]) < 5 * H)
            return 1;
    return 0;
}

/* Check backward of the model's only layer (input gradient, parameter gradients, the
 * accumulate flag, and the NULL din / NULL pgrad variants) against central differences. */
static void check_layer(tlearn_model *m, size_t n, double lo, double hi, const double *kinks,
                        int nk, uint64_t seed)
{
    tl_layer *L = m->layers[0];
    assert_true(L->ops->saved_floats == NULL); /* these kinds keep nothing */
    size_t in_size = tl_shape_size(L->in[0]), out_size = tl_shape_size(L->out);
    size_t nin = n * in_size, nout = n * out_size;
    float *x = malloc(sizeof(float) * nin), *y = malloc(sizeof(float) * nout);
    float *r = malloc(sizeof(float) * nout), *din = malloc(sizeof(float) * nin);
    float *din2 = malloc(sizeof(float) * nin);
    float *pg[TL_MAX_PARAMS] = {NULL}, *pg2[TL_MAX_PARAMS] = {NULL};
    test_rng rng = {seed};
    for (size_t i = 0; i < nin; i++) {
        double v;
        do
            v = test_uniform(&rng, lo, hi);
        while (near_kink(v, kinks, nk));
        x[i] = (float)v;
    }
    test_fill(&rng, r, nout, -1, 1);
    for (int p = 0; p < L->nparam; p++) {
        pg[p] = calloc(L->param[p].t.numel, sizeof(float));
        pg2[p] = calloc(L->param[p].t.numel, sizeof(float));
    }
    tl_exec ex = {m->blas, &m->rng, 1, 1, NULL, 0, 0, NULL, NULL};
    const float *in[1] = {x};
    float *dins[1] = {din};

    objective(L, &ex, x, y, r, n);
    for (size_t i = 0; i < nin; i++)
        din[i] = NAN; /* overwritten, not accumulated, when accum is 0 */
    L->ops->backward(L, &ex, in, y, r, dins, 0, n, NULL, L->nparam ? pg : NULL);

    double worst = 0.0;
    for (size_t j = 0; j < nin; j++) {
        double fd = central(L, &ex, x, y, r, n, &x[j]);
        double err = fabs(din[j] - fd);
        if (err > worst)
            worst = err;
        if (!test_close(din[j], fd, RTOL, ATOL))
            fail_msg("layer '%s': dx[%zu] = %.7g, finite difference %.7g", L->name, j,
                     (double)din[j], fd);
    }
    for (int p = 0; p < L->nparam; p++)
        for (size_t j = 0; j < L->param[p].t.numel; j++) {
            double fd = central(L, &ex, x, y, r, n, &L->param[p].t.data[j]);
            if (!test_close(pg[p][j], fd, RTOL, ATOL))
                fail_msg("layer '%s': d%s[%zu] = %.7g, finite difference %.7g", L->name,
                         L->param[p].name, j, (double)pg[p][j], fd);
        }
    print_message("layer '%s': worst |dx - fd| = %.2e\n", L->name, worst);

    /* accum = 1 adds to what din holds. */
    objective(L, &ex, x, y, r, n);
    for (size_t i = 0; i < nin; i++)
        din2[i] = 0.25f * (float)(i % 7);
    float *dins2[1] = {din2};
    L->ops->backward(L, &ex, in, y, r, dins2, 1, n, NULL, NULL);
    for (size_t i = 0; i < nin; i++)
        assert_true(test_close(din2[i], 0.25 * (double)(i % 7) + din[i], 1e-6, 1e-6));

    /* din NULL: parameter gradients alone, same values; pgrad NULL: parameters untouched. */
    if (L->nparam) {
        float *none[1] = {NULL};
        L->ops->backward(L, &ex, in, y, r, none, 0, n, NULL, pg2);
        for (int p = 0; p < L->nparam; p++)
            assert_memory_equal(pg[p], pg2[p], sizeof(float) * L->param[p].t.numel);
    }

    for (int p = 0; p < L->nparam; p++) {
        free(pg[p]);
        free(pg2[p]);
    }
    free(x);
    free(y);
    free(r);
    free(din);
    free(din2);
}

static void test_dense(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 1, 3)); /* implicitly flattened: 6 inputs */
    OK(tlearn_model_add_dense(m, "fc", 4));
    tl_layer *L = m->layers[0];
    assert_int_equal(L->param[0].t.dims[0], 4);
    assert_int_equal(L->param[0].t.dims[1], 6);

    /* Forward against y = x W^T + b in double. */
    test_rng rng = {11};
    float x[3 * 6], y[3 * 4];
    test_fill(&rng, x, 18, -2, 2);
    tl_exec ex = {m->blas, &m->rng, 0, 0, NULL, 0, 0, NULL, NULL};
    const float *in[1] = {x};
    L->ops->forward(L, &ex, in, y, 3, NULL);
    const float *W = L->param[0].t.data, *b = L->param[1].t.data;
    for (int i = 0; i < 3; i++)
        for (int u = 0; u < 4; u++) {
            double s = b[u];
            for (int k = 0; k < 6; k++)
                s += (double)x[i * 6 + k] * W[u * 6 + k];
            assert_true(test_close(y[i * 4 + u], s, 1e-6, 1e-6));
        }
    check_layer(m, 3, -2, 2, NULL, 0, 12);
    tlearn_model_destroy(&m);
}

static void test_flatten(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 3, 2));
    OK(tlearn_model_add_flatten(m, "flat"));
    int c, h, w;
    OK(tlearn_model_layer_shape(m, 0, &c, &h, &w));
    assert_int_equal(c, 12);
    assert_int_equal(h, 1);
    assert_int_equal(w, 1);
    check_layer(m, 2, -3, 3, NULL, 0, 13);
    tlearn_model_destroy(&m);
}

/* Forward of one activation against its definition, then the gradient check. */
static void check_activation(int act, float param, double lo, double hi, const double *kinks,
                             int nk, double (*ref)(double, double))
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 2, 2));
    OK(tlearn_model_add_activation(m, "act", act, param));
    tl_layer *L = m->layers[0];
    test_rng rng = {(uint64_t)act * 77};
    float x[2 * 12], y[2 * 12];
    test_fill(&rng, x, 24, lo, hi);
    tl_exec ex = {m->blas, &m->rng, 0, 0, NULL, 0, 0, NULL, NULL};
    const float *in[1] = {x};
    L->ops->forward(L, &ex, in, y, 2, NULL);
    for (int i = 0; i < 24; i++)
        if (!test_close(y[i], ref(x[i], param), 1e-6, 1e-6))
            fail_msg("activation %d: f(%g) = %.8g, expected %.8g", act, (double)x[i],
                     (double)y[i], ref(x[i], param));
    check_layer(m, 2, lo, hi, kinks, nk, (uint64_t)act);
    tlearn_model_destroy(&m);
}

static double ref_relu(double x, double p) { (void)p; return x > 0 ? x : 0; }
static double ref_tanh(double x, double p) { (void)p; return tanh(x); }
static double ref_sigmoid(double x, double p) { (void)p; return 1 / (1 + exp(-x)); }
static double ref_gelu(double x, double p) { (void)p; return 0.5 * x * (1 + erf(x / sqrt(2))); }
static double ref_relu6(double x, double p) { (void)p; return x < 0 ? 0 : x > 6 ? 6 : x; }
static double ref_leaky(double x, double p) { return x > 0 ? x : p * x; }

static const double kink0[] = {0.0};
static const double kink06[] = {0.0, 6.0};

static void test_relu(void **s) { (void)s; check_activation(TLEARN_ACT_RELU, 0, -3, 3, kink0, 1, ref_relu); }
static void test_tanh(void **s) { (void)s; check_activation(TLEARN_ACT_TANH, 0, -3, 3, NULL, 0, ref_tanh); }
static void test_sigmoid(void **s) { (void)s; check_activation(TLEARN_ACT_SIGMOID, 0, -5, 5, NULL, 0, ref_sigmoid); }
static void test_gelu(void **s) { (void)s; check_activation(TLEARN_ACT_GELU, 0, -4, 4, NULL, 0, ref_gelu); }
static void test_relu6(void **s) { (void)s; check_activation(TLEARN_ACT_RELU6, 0, -2, 8, kink06, 2, ref_relu6); }
static void test_leaky(void **s) { (void)s; check_activation(TLEARN_ACT_LEAKY_RELU, 0.1f, -3, 3, kink0, 1, ref_leaky); }

/* torch.relu passes NaN and -0 through (it is clamp_min(x, 0)); so does ours, so that a
 * NaN input shows in the output instead of becoming a plausible 0. */
static void test_relu_special_values(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 7, 1, 1));
    OK(tlearn_model_add_activation(m, "act", TLEARN_ACT_RELU, 0));
    tl_layer *L = m->layers[0];
    const float x[7] = {NAN, -0.0f, 0.0f, -1.0f, 2.0f, INFINITY, -INFINITY};
    const float want[7] = {NAN, -0.0f, 0.0f, 0.0f, 2.0f, INFINITY, 0.0f};
    float y[7];
    tl_exec ex = {m->blas, &m->rng, 0, 0, NULL, 0, 0, NULL, NULL};
    const float *in[1] = {x};
    L->ops->forward(L, &ex, in, y, 1, NULL);
    assert_true(isnan(y[0]));
    assert_memory_equal(y + 1, want + 1, sizeof(float) * 6); /* bit for bit: -0 stays -0 */
    tlearn_model_destroy(&m);
}

/* ---- losses ---- */

static double ce_ref(const float *z, const int32_t *labels, size_t n, int classes)
{
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < classes; j++)
            s += exp((double)z[i * classes + j]);
        total += log(s) - z[i * classes + labels[i]];
    }
    return total / (double)n;
}

static void test_softmax_ce(void **state)
{
    (void)state;
    enum { N = 4, C = 5 };
    test_rng rng = {21};
    float z[N * C], dz[N * C];
    int32_t labels[N] = {0, 3, 4, 3};
    test_fill(&rng, z, N * C, -3, 3);
    size_t correct = 99;
    double loss = tl_loss_softmax_ce(z, labels, N, C, dz, &correct);
    assert_true(test_close(loss, ce_ref(z, labels, N, C), 1e-10, 1e-12));
    size_t hits = 0;
    for (int i = 0; i < N; i++) {
        int arg = 0;
        for (int j = 1; j < C; j++)
            if (z[i * C + j] > z[i * C + arg])
                arg = j;
        hits += arg == labels[i];
    }
    assert_int_equal(correct, hits);
    const double h = 1e-3;
    for (int k = 0; k < N * C; k++) {
        float v = z[k], vp = (float)(v + h), vm = (float)(v - h);
        z[k] = vp;
        double lp = tl_loss_softmax_ce(z, labels, N, C, NULL, NULL);
        z[k] = vm;
        double lm = tl_loss_softmax_ce(z, labels, N, C, NULL, NULL);
        z[k] = v;
        double fd = (lp - lm) / ((double)vp - (double)vm);
        if (!test_close(dz[k], fd, 1e-5, 1e-6))
            fail_msg("softmax CE: dz[%d] = %.8g, finite difference %.8g", k, (double)dz[k], fd);
    }
    /* Large logits must not overflow: log-sum-exp is shifted by the maximum. */
    float big[2] = {1000.0f, 1001.0f};
    int32_t l0[1] = {0};
    double lb = tl_loss_softmax_ce(big, l0, 1, 2, dz, NULL);
    assert_true(test_close(lb, log1p(exp(1.0)), 1e-9, 1e-9));
    assert_true(test_close(dz[0], 1 / (1 + exp(1.0)) - 1, 1e-6, 1e-7));
}

static void test_mse(void **state)
{
    (void)state;
    enum { N = 3, S = 4 };
    test_rng rng = {22};
    float o[N * S], t[N * S], d[N * S];
    test_fill(&rng, o, N * S, -2, 2);
    test_fill(&rng, t, N * S, -2, 2);
    double loss = tl_loss_mse(o, t, N, S, d);
    double ref = 0;
    for (int i = 0; i < N * S; i++)
        ref += ((double)o[i] - t[i]) * ((double)o[i] - t[i]);
    assert_true(test_close(loss, ref / (N * S), 1e-10, 1e-12));
    const double h = 1e-3;
    for (int k = 0; k < N * S; k++) {
        float v = o[k], vp = (float)(v + h), vm = (float)(v - h);
        o[k] = vp;
        double lp = tl_loss_mse(o, t, N, S, NULL);
        o[k] = vm;
        double lm = tl_loss_mse(o, t, N, S, NULL);
        o[k] = v;
        double fd = (lp - lm) / ((double)vp - (double)vm);
        if (!test_close(d[k], fd, 1e-5, 1e-6))
            fail_msg("MSE: d[%d] = %.8g, finite difference %.8g", k, (double)d[k], fd);
    }
}

/* ---- a composed MLP through the public API ---- */

enum { MN = 4, MIN = 8, MOUT = 3 };

static tlearn_model *make_mlp(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 2, 2));
    OK(tlearn_model_set_seed(m, 5));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc1", 6));
    OK(tlearn_model_add_activation(m, "gelu", TLEARN_ACT_GELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", 5));
    OK(tlearn_model_add_activation(m, "sig", TLEARN_ACT_SIGMOID, 0));
    OK(tlearn_model_add_dense(m, "fc3", MOUT));
    return m;
}

/* Loss from tlearn_model_predict's logits, in double: independent of the train path. */
static double predict_ce(tlearn_model *m, const float *x, const int32_t *labels)
{
    float z[MN * MOUT];
    OK(tlearn_model_predict(m, x, MN, z, MN * MOUT));
    return ce_ref(z, labels, MN, MOUT);
}

static double predict_mse(tlearn_model *m, const float *x, const float *t)
{
    float z[MN * MOUT];
    OK(tlearn_model_predict(m, x, MN, z, MN * MOUT));
    double s = 0;
    for (int i = 0; i < MN * MOUT; i++)
        s += ((double)z[i] - t[i]) * ((double)z[i] - t[i]);
    return s / (MN * MOUT);
}

typedef double (*model_loss_fn)(tlearn_model *m, const float *x, const void *target);

static double ce_fn(tlearn_model *m, const float *x, const void *t) { return predict_ce(m, x, t); }

/* Compare tlearn_model_get_grad of every parameter with central differences, perturbing
 * each element through tlearn_model_set_tensor. */
static void check_param_grads(tlearn_model *m, const float *x, const void *target,
                              model_loss_fn lossf)
{
    int count;
    OK(tlearn_model_tensor_count(m, &count));
    assert_int_equal(count, 6);
    for (int t = 0; t < count; t++) {
        const char *cname;
        size_t numel;
        OK(tlearn_model_tensor_info(m, t, &cname, &numel, NULL, NULL));
        char name[128];
        snprintf(name, sizeof name, "%s", cname);
        float *w = malloc(sizeof(float) * numel), *g = malloc(sizeof(float) * numel);
        OK(tlearn_model_get_tensor(m, name, w, numel));
        OK(tlearn_model_get_grad(m, name, g, numel));
        for (size_t j = 0; j < numel; j++) {
            float v = w[j], vp = (float)(v + H), vm = (float)(v - H);
            w[j] = vp;
            OK(tlearn_model_set_tensor(m, name, w, numel));
            double lp = lossf(m, x, target);
            w[j] = vm;
            OK(tlearn_model_set_tensor(m, name, w, numel));
            double lm = lossf(m, x, target);
            w[j] = v;
            OK(tlearn_model_set_tensor(m, name, w, numel));
            double fd = (lp - lm) / ((double)vp - (double)vm);
            if (!test_close(g[j], fd, RTOL, ATOL))
                fail_msg("%s[%zu]: gradient %.7g, finite difference %.7g", name, j,
                         (double)g[j], fd);
        }
        free(w);
        free(g);
    }
}

static void test_mlp_ce(void **state)
{
    (void)state;
    tlearn_model *m = make_mlp();
    test_rng rng = {31};
    float x[MN * MIN], dx[MN * MIN];
    int32_t labels[MN] = {2, 0, 1, 2};
    test_fill(&rng, x, MN * MIN, -2, 2);
    float loss;
    OK(tlearn_model_compute_gradients(m, x, labels, MN, &loss, dx, MN * MIN));
    double ref = predict_ce(m, x, labels);
    assert_true(test_close(loss, ref, 1e-6, 1e-6));
    for (int j = 0; j < MN * MIN; j++) {
        float v = x[j], vp = (float)(v + H), vm = (float)(v - H);
        x[j] = vp;
        double lp = predict_ce(m, x, labels);
        x[j] = vm;
        double lm = predict_ce(m, x, labels);
        x[j] = v;
        double fd = (lp - lm) / ((double)vp - (double)vm);
        if (!test_close(dx[j], fd, RTOL, ATOL))
            fail_msg("dx[%d] = %.7g, finite difference %.7g", j, (double)dx[j], fd);
    }
    check_param_grads(m, x, labels, ce_fn);

    /* Without dx the parameter gradients are the same (the input gradient is optional). */
    float g1[6 * 8], g2[6 * 8];
    OK(tlearn_model_get_grad(m, "fc1.weight", g1, 48));
    OK(tlearn_model_compute_gradients(m, x, labels, MN, NULL, NULL, 0));
    OK(tlearn_model_get_grad(m, "fc1.weight", g2, 48));
    for (int i = 0; i < 48; i++)
        assert_true(test_close(g2[i], g1[i], 1e-6, 1e-7));
    tlearn_model_destroy(&m);
}

static void test_mlp_mse(void **state)
{
    (void)state;
    tlearn_model *m = make_mlp();
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_MSE));
    test_rng rng = {32};
    float x[MN * MIN], t[MN * MOUT];
    test_fill(&rng, x, MN * MIN, -2, 2);
    test_fill(&rng, t, MN * MOUT, -1, 1);
    /* get_grad after a train step reports the gradient the step used, taken at the weights
     * before the update. A second model built with the same seed still has those weights:
     * the finite differences are taken on it. */
    tlearn_model *ref = make_mlp();
    OK(tlearn_model_set_loss(ref, TLEARN_LOSS_MSE));
    float w0[6 * 8], w1[6 * 8];
    OK(tlearn_model_get_tensor(m, "fc1.weight", w0, 48));
    OK(tlearn_model_get_tensor(ref, "fc1.weight", w1, 48));
    assert_memory_equal(w0, w1, sizeof w0); /* same seed, same weights */
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 1e-3));
    float loss;
    OK(tlearn_model_train_step_mse(m, o, x, t, MN, &loss));
    assert_true(test_close(loss, predict_mse(ref, x, t), 1e-6, 1e-6));
    int count;
    OK(tlearn_model_tensor_count(m, &count));
    for (int k = 0; k < count; k++) {
        const char *cname;
        size_t numel;
        OK(tlearn_model_tensor_info(m, k, &cname, &numel, NULL, NULL));
        char name[128];
        snprintf(name, sizeof name, "%s", cname);
        float *w = malloc(sizeof(float) * numel), *g = malloc(sizeof(float) * numel);
        OK(tlearn_model_get_grad(m, name, g, numel));
        OK(tlearn_model_get_tensor(ref, name, w, numel));
        for (size_t j = 0; j < numel; j++) {
            float v = w[j], vp = (float)(v + H), vm = (float)(v - H);
            w[j] = vp;
            OK(tlearn_model_set_tensor(ref, name, w, numel));
            double lp = predict_mse(ref, x, t);
            w[j] = vm;
            OK(tlearn_model_set_tensor(ref, name, w, numel));
            double lm = predict_mse(ref, x, t);
            w[j] = v;
            OK(tlearn_model_set_tensor(ref, name, w, numel));
            double fd = (lp - lm) / ((double)vp - (double)vm);
            if (!test_close(g[j], fd, RTOL, ATOL))
                fail_msg("MSE %s[%zu]: gradient %.7g, finite difference %.7g", name, j,
                         (double)g[j], fd);
        }
        free(w);
        free(g);
    }
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&ref);
    tlearn_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense),      cmocka_unit_test(test_flatten),
        cmocka_unit_test(test_relu),       cmocka_unit_test(test_relu_special_values),
        cmocka_unit_test(test_tanh),
        cmocka_unit_test(test_sigmoid),    cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_relu6),      cmocka_unit_test(test_leaky),
        cmocka_unit_test(test_softmax_ce), cmocka_unit_test(test_mse),
        cmocka_unit_test(test_mlp_ce),     cmocka_unit_test(test_mlp_mse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
