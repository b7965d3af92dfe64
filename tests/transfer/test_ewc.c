/* EWC and L2-SP: Fisher estimators against a brute-force computation in double, the
 * penalty and its gradient (finite differences), SEPARATE vs ONLINE bookkeeping, layers
 * removed and added, checkpoint state round trip, bad inputs, and a small continual-learning
 * run where EWC keeps more of task A than plain fine-tuning. */
#include "common.h"

/* ---- a tiny network computed from first principles in double ----
 * x[D] -> W1[H][D], b1 -> tanh -> W2[C][H], b2 -> softmax. */
#define D 4
#define H 3
#define C 3
#define NP (H * D + H + C * H + C)

static tlearn_model *tiny(uint64_t seed)
{
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, D, 1, 1));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_dense(m, "fc1", H));
    OK(tlearn_model_add_activation(m, "act", TLEARN_ACT_TANH, 0));
    OK(tlearn_model_add_dense(m, "fc2", C));
    return m;
}

typedef struct tiny_w {
    double w1[H][D], b1[H], w2[C][H], b2[C];
} tiny_w;

static void read_tiny(const tlearn_model *m, tiny_w *w)
{
    float f1[H * D], g1[H], f2[C * H], g2[C];
    OK(tlearn_model_get_tensor(m, "fc1.weight", f1, H * D));
    OK(tlearn_model_get_tensor(m, "fc1.bias", g1, H));
    OK(tlearn_model_get_tensor(m, "fc2.weight", f2, C * H));
    OK(tlearn_model_get_tensor(m, "fc2.bias", g2, C));
    for (int i = 0; i < H; i++) {
        for (int j = 0; j < D; j++)
            w->w1[i][j] = f1[i * D + j];
        w->b1[i] = g1[i];
    }
    for (int i = 0; i < C; i++) {
        for (int j = 0; j < H; j++)
            w->w2[i][j] = f2[i * H + j];
        w->b2[i] = g2[i];
    }
}

/* Probabilities, and the gradient of -log p(y|x) w.r.t. all parameters in the order
 * fc1.weight, fc1.bias, fc2.weight, fc2.bias (g may be NULL). */
static void tiny_grad(const tiny_w *w, const float *x, int y, double *prob, double *g)
{
    double h[H], z[C], mx = -1e300, sum = 0;
    for (int i = 0; i < H; i++) {
        double a = w->b1[i];
        for (int j = 0; j < D; j++)
            a += w->w1[i][j] * x[j];
        h[i] = tanh(a);
    }
    for (int c = 0; c < C; c++) {
        z[c] = w->b2[c];
        for (int j = 0; j < H; j++)
            z[c] += w->w2[c][j] * h[j];
        mx = fmax(mx, z[c]);
    }
    for (int c = 0; c < C; c++)
        sum += prob[c] = exp(z[c] - mx);
    for (int c = 0; c < C; c++)
        prob[c] /= sum;
    if (!g)
        return;
    double dz[C], dh[H] = {0};
    for (int c = 0; c < C; c++)
        dz[c] = prob[c] - (c == y);
    double *gw1 = g, *gb1 = g + H * D, *gw2 = gb1 + H, *gb2 = gw2 + C * H;
    for (int c = 0; c < C; c++) {
        for (int j = 0; j < H; j++) {
            gw2[c * H + j] = dz[c] * h[j];
            dh[j] += dz[c] * w->w2[c][j];
        }
        gb2[c] = dz[c];
    }
    for (int i = 0; i < H; i++) {
        double da = dh[i] * (1 - h[i] * h[i]);
        for (int j = 0; j < D; j++)
            gw1[i * D + j] = da * x[j];
        gb1[i] = da;
    }
}

/* Fisher from the library, all four tensors in the same order. */
static void lib_fisher(const tlearn_model *m, int task, float *F)
{
    OK(tlearn_ewc_get_fisher(m, task, "fc1.weight", F, H * D));
    OK(tlearn_ewc_get_fisher(m, task, "fc1.bias", F + H * D, H));
    OK(tlearn_ewc_get_fisher(m, task, "fc2.weight", F + H * D + H, C * H));
    OK(tlearn_ewc_get_fisher(m, task, "fc2.bias", F + H * D + H + C * H, C));
}

static void assert_close(const float *got, const double *want, int n, double rtol, double atol)
{
    for (int k = 0; k < n; k++)
        if (!(fabs(got[k] - want[k]) <= atol + rtol * fabs(want[k])))
            fail_msg("element %d: got %.9g, want %.9g", k, (double)got[k], want[k]);
}

enum { NEX = 50 };

static void test_fisher_estimators(void **state)
{
    (void)state;
    float x[NEX * D];
    int32_t y[NEX];
    fill_data(x, NEX * D, y, NEX, C, 101);
    for (size_t k = 0; k < NEX * D; k++)
        x[k] *= 2.0f;
    for (int est = TLEARN_FISHER_EMPIRICAL; est <= TLEARN_FISHER_SAMPLED; est++) {
        tlearn_model *m = tiny(11);
        tiny_w w;
        read_tiny(m, &w);
        OK(tlearn_model_set_seed(m, 12345)); /* the sampled labels come from the model's RNG */
        OK(tlearn_ewc_consolidate(m, x, y, NEX, est, 1.0f));
        float F[NP];
        lib_fisher(m, 0, F);

        double want[NP] = {0}, g[NP], prob[C];
        tl_rng r;
        tl_rng_seed(&r, 12345);
        for (int e = 0; e < NEX; e++) {
            tiny_grad(&w, x + e * D, 0, prob, NULL);
            for (int c = 0; c < C; c++) {
                double weight;
                if (est == TLEARN_FISHER_EMPIRICAL)
                    weight = c == y[e];
                else if (est == TLEARN_FISHER_EXACT)
                    weight = prob[c];
                else { /* inverse CDF of the softmax at the same uniform draw */
                    static double u;
                    if (c == 0)
                        u = tl_rng_uniform(&r);
                    double lo = 0;
                    for (int k = 0; k < c; k++)
                        lo += prob[k];
                    weight = (u >= lo && u < lo + prob[c]) || (c == C - 1 && u >= lo);
                }
                if (weight == 0)
                    continue;
                tiny_grad(&w, x + e * D, c, prob, g);
                for (int k = 0; k < NP; k++)
                    want[k] += weight * g[k] * g[k] / NEX;
            }
        }
        assert_close(F, want, NP, 1e-4, 1e-9);
        tlearn_model_destroy(&m);
    }
}

/* Over many examples the sampled Fisher approaches the exact one (the empirical one need not:
 * the labels here are random, not the model's). */
static void test_sampled_approaches_exact(void **state)
{
    (void)state;
    enum { N = 6000 };
    float *x = malloc(sizeof(float) * N * D);
    int32_t *y = malloc(sizeof(int32_t) * N);
    fill_data(x, N * D, y, N, C, 202);
    tlearn_model *a = tiny(13), *b = tiny(13);
    OK(tlearn_ewc_consolidate(a, x, y, N, TLEARN_FISHER_EXACT, 1.0f));
    OK(tlearn_ewc_consolidate(b, x, y, N, TLEARN_FISHER_SAMPLED, 1.0f));
    float Fa[NP], Fb[NP];
    lib_fisher(a, 0, Fa);
    lib_fisher(b, 0, Fb);
    double num = 0, den = 0;
    for (int k = 0; k < NP; k++) {
        num += fabs((double)Fa[k] - Fb[k]);
        den += Fa[k];
    }
    assert_true(num / den < 0.1);
    free(x);
    free(y);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

/* Central differences of the (double) penalty against the fused gradient reg_a*theta - reg_b
 * that the optimizer adds. */
static void check_penalty_gradient(tlearn_model *m)
{
    assert_true(tl_ewc_penalty(m) > 0); /* also brings the fused arrays up to date */
    int checked = 0;
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            tl_slot *s = &m->lstate[i].slot[p];
            float *th = m->layers[i]->param[p].t.data;
            for (size_t k = 0; k < m->layers[i]->param[p].t.numel; k++) {
                float keep = th[k], h = 1e-2f;
                th[k] = keep + h;
                double up = tl_ewc_penalty(m);
                th[k] = keep - h;
                double down = tl_ewc_penalty(m);
                th[k] = keep;
                double fd = (up - down) / ((double)(keep + h) - (double)(keep - h));
                double an = s->reg_a ? (double)s->reg_a[k] * keep - s->reg_b[k] : 0.0;
                if (!(fabs(fd - an) <= 1e-4 + 1e-3 * fabs(fd)))
                    fail_msg("%s.%s[%zu]: finite difference %.8g, regulariser gradient %.8g",
                             m->layers[i]->name, m->layers[i]->param[p].name, k, fd, an);
                checked++;
            }
        }
    assert_true(checked > 0);
}

static double penalty_by_hand(const tlearn_model *m, int ntasks, const float *lambda,
                              float alpha, float beta, int l2sp_layers);

static void perturb(tlearn_model *m, uint64_t seed, float scale)
{
    tl_rng r;
    tl_rng_seed(&r, seed);
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++)
            for (size_t k = 0; k < m->layers[i]->param[p].t.numel; k++)
                m->layers[i]->param[p].t.data[k] += scale * tl_rng_uniform_range(&r, -1, 1);
}

static void test_penalty_value_and_gradient(void **state)
{
    (void)state;
    float x[NEX * D];
    int32_t y[NEX];
    fill_data(x, NEX * D, y, NEX, C, 303);
    tlearn_model *m = tiny(21);
    float penalty = -1;
    OK(tlearn_model_penalty(m, &penalty));
    assert_true(penalty == 0.0f);
    OK(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 50.0f));
    OK(tlearn_model_penalty(m, &penalty));
    assert_true(penalty == 0.0f); /* at the anchor */
    perturb(m, 1, 0.3f);
    OK(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EXACT, 20.0f));
    perturb(m, 2, 0.3f);
    float lambdas[2] = {50.0f, 20.0f};
    OK(tlearn_model_penalty(m, &penalty));
    double want = penalty_by_hand(m, 2, lambdas, 0, 0, -1);
    assert_true(want > 0 && fabs(penalty - want) <= 1e-5 * want);
    check_penalty_gradient(m);

    /* The optimizer adds exactly that gradient: SGD moves theta by -lr (g + penalty grad). */
    float wb[C * H], g[C * H];
    OK(tlearn_model_get_tensor(m, "fc2.weight", wb, C * H));
    OK(tlearn_model_compute_gradients(m, x, y, NEX, NULL, NULL, 0));
    OK(tlearn_model_get_grad(m, "fc2.weight", g, C * H));
    const tl_slot *s = &m->lstate[2].slot[0];
    double pg[C * H];
    for (int k = 0; k < C * H; k++)
        pg[k] = (double)s->reg_a[k] * wb[k] - s->reg_b[k];
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.01));
    float loss_step, loss_grad;
    OK(tlearn_model_compute_gradients(m, x, y, NEX, &loss_grad, NULL, 0));
    OK(tlearn_model_train_step(m, o, x, y, NEX, &loss_step));
    assert_true(fabsf(loss_step - loss_grad) <= 1e-6f * fabsf(loss_grad));
    float wa[C * H];
    OK(tlearn_model_get_tensor(m, "fc2.weight", wa, C * H));
    for (int k = 0; k < C * H; k++) {
        double want_k = wb[k] - 0.01 * (g[k] + pg[k]);
        assert_true(fabs(wa[k] - want_k) <= 1e-6 + 1e-5 * fabs(want_k));
    }
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* Collect the checkpoint arrays by name. */
typedef struct arrays {
    int n;
    char name[64][128];
    float *data[64];
    size_t numel[64];
} arrays;

static int collect(const char *name, const float *data, size_t numel, void *user)
{
    arrays *a = user;
    assert_true(a->n < 64);
    snprintf(a->name[a->n], sizeof a->name[0], "%s", name);
    a->data[a->n] = malloc(sizeof(float) * numel);
    memcpy(a->data[a->n], data, sizeof(float) * numel);
    a->numel[a->n++] = numel;
    return 0;
}

static const float *find_array(const arrays *a, const char *name)
{
    for (int k = 0; k < a->n; k++)
        if (!strcmp(a->name[k], name))
            return a->data[k];
    return NULL;
}

static void free_arrays(arrays *a)
{
    for (int k = 0; k < a->n; k++)
        free(a->data[k]);
    a->n = 0;
}

/* The penalty from first principles, with anchors read through the checkpoint visitor. */
static double penalty_by_hand(const tlearn_model *m, int ntasks, const float *lambda,
                              float alpha, float beta, int l2sp_layers)
{
    arrays a = {0};
    OK(tl_ewc_visit(m, collect, &a));
    double total = 0;
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            const tl_layer *L = m->layers[i];
            const float *th = L->param[p].t.data;
            char nm[160];
            for (int t = 0; t < ntasks; t++) {
                snprintf(nm, sizeof nm, "task%d/fisher/%s.%s", t, L->name, L->param[p].name);
                const float *F = find_array(&a, nm);
                snprintf(nm, sizeof nm, "task%d/anchor/%s.%s", t, L->name, L->param[p].name);
                const float *A = find_array(&a, nm);
                assert_true(!F == !A);
                for (size_t k = 0; F && k < L->param[p].t.numel; k++)
                    total += 0.5 * lambda[t] * F[k] * ((double)th[k] - A[k]) *
                             ((double)th[k] - A[k]);
            }
            if (l2sp_layers >= 0) {
                snprintf(nm, sizeof nm, "l2sp/anchor/%s.%s", L->name, L->param[p].name);
                const float *A = find_array(&a, nm);
                assert_true(!A == (i >= l2sp_layers));
                for (size_t k = 0; k < L->param[p].t.numel; k++) {
                    double d = (double)th[k] - (A ? A[k] : 0.0);
                    total += 0.5 * (A ? alpha : beta) * d * d;
                }
            }
        }
    free_arrays(&a);
    return total;
}

static void test_separate_vs_online(void **state)
{
    (void)state;
    float x[NEX * D];
    int32_t y[NEX];
    fill_data(x, NEX * D, y, NEX, C, 404);
    tlearn_model *sep = tiny(31), *onl = tiny(31);
    OK(tlearn_ewc_set_mode(onl, TLEARN_EWC_ONLINE, 0.5f));
    OK(tlearn_ewc_consolidate(sep, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 10.0f));
    OK(tlearn_ewc_consolidate(onl, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 10.0f));
    FAILS(tlearn_ewc_set_mode(onl, TLEARN_EWC_SEPARATE, 1.0f), TLEARN_ESTATE, "consolidated");
    perturb(sep, 5, 0.2f);
    perturb(onl, 5, 0.2f);
    OK(tlearn_ewc_consolidate(sep, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 30.0f));
    OK(tlearn_ewc_consolidate(onl, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 30.0f));
    float F0[NP], F1[NP], Fo[NP], junk[NP];
    lib_fisher(sep, 0, F0);
    lib_fisher(sep, 1, F1);
    lib_fisher(onl, 0, Fo);
    FAILS(tlearn_ewc_get_fisher(onl, 1, "fc1.bias", junk, H), TLEARN_EINVAL, "task 1");
    FAILS(tlearn_ewc_get_fisher(sep, 2, "fc1.bias", junk, H), TLEARN_EINVAL, "task 2");
    double want[NP];
    for (int k = 0; k < NP; k++)
        want[k] = 0.5 * F0[k] + F1[k];
    assert_close(Fo, want, NP, 1e-6, 1e-12);
    /* ONLINE anchors at the latest weights; SEPARATE keeps both anchors. */
    perturb(sep, 6, 0.2f);
    perturb(onl, 6, 0.2f);
    float lam_sep[2] = {10.0f, 30.0f}, lam_onl[1] = {30.0f};
    float ps, po;
    OK(tlearn_model_penalty(sep, &ps));
    OK(tlearn_model_penalty(onl, &po));
    double ws = penalty_by_hand(sep, 2, lam_sep, 0, 0, -1);
    double wo = penalty_by_hand(onl, 1, lam_onl, 0, 0, -1);
    assert_true(fabs(ps - ws) <= 1e-5 * ws);
    assert_true(fabs(po - wo) <= 1e-5 * wo);
    assert_true(ws > 0 && wo > 0);
    /* The online anchor is the weights at the second consolidation. */
    arrays a = {0};
    OK(tl_ewc_visit(onl, collect, &a));
    assert_int_equal(a.n, 8);
    free_arrays(&a);
    check_penalty_gradient(sep);
    check_penalty_gradient(onl);
    /* Clearing drops every task but keeps the mode. */
    OK(tlearn_ewc_clear(onl));
    OK(tlearn_model_penalty(onl, &po));
    assert_true(po == 0.0f);
    assert_null(onl->lstate[0].slot[0].reg_a);
    FAILS(tlearn_ewc_get_fisher(onl, 0, "fc1.bias", junk, H), TLEARN_EINVAL, "task 0");
    tlearn_model_destroy(&sep);
    tlearn_model_destroy(&onl);
}

/* L2-SP with a head appended afterwards: alpha towards the start point, beta towards 0 for
 * the new layer, through the optimizer too (lazily rebuilt arrays). */
static void test_l2sp_and_new_layers(void **state)
{
    (void)state;
    float x[NEX * D];
    int32_t y[NEX];
    fill_data(x, NEX * D, y, NEX, 2, 505);
    tlearn_model *m = tiny(41);
    OK(tlearn_model_truncate(m, "act"));
    OK(tlearn_l2sp_enable(m, 0.5f, 0.25f));
    OK(tlearn_model_add_dense(m, "head", 2));
    perturb(m, 7, 0.3f);
    float pen;
    OK(tlearn_model_penalty(m, &pen));
    double want = penalty_by_hand(m, 0, NULL, 0.5f, 0.25f, 2);
    assert_true(fabs(pen - want) <= 1e-5 * want);
    check_penalty_gradient(m);
    assert_non_null(m->lstate[2].slot[0].reg_a); /* the new head got the beta term */
    assert_true(m->lstate[2].slot[0].reg_a[0] == 0.25f);
    assert_int_equal(m->lstate[0].from_pretrained, 1);
    assert_int_equal(m->lstate[2].from_pretrained, 0);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    float loss;
    OK(tlearn_model_train_step(m, o, x, y, NEX, &loss));
    FAILS(tlearn_l2sp_enable(m, -1.0f, 0), TLEARN_EINVAL, "alpha");
    FAILS(tlearn_l2sp_enable(m, 0, NAN), TLEARN_EINVAL, "beta");
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* Layers removed with replace_head drop their entries; the new head is not anchored. */
static void test_ewc_after_layers_changed(void **state)
{
    (void)state;
    float x[NEX * D];
    int32_t y[NEX];
    fill_data(x, NEX * D, y, NEX, C, 606);
    tlearn_model *m = tiny(51);
    OK(tlearn_ewc_set_mode(m, TLEARN_EWC_ONLINE, 0.9f));
    OK(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 5.0f));
    float F1b[H];
    OK(tlearn_ewc_get_fisher(m, 0, "fc1.bias", F1b, H));
    OK(tlearn_model_replace_head(m, "act", 4));
    float junk[4 * H];
    FAILS(tlearn_ewc_get_fisher(m, 0, "head.weight", junk, 4 * H), TLEARN_ENOTFOUND,
          "head.weight");
    FAILS(tlearn_ewc_get_fisher(m, 0, "fc2.weight", junk, C * H), TLEARN_ENOTFOUND,
          "fc2.weight");
    perturb(m, 8, 0.3f);
    float lam[1] = {5.0f}, pen;
    OK(tlearn_model_penalty(m, &pen));
    double want = penalty_by_hand(m, 1, lam, 0, 0, -1); /* fc1 only */
    assert_true(want > 0 && fabs(pen - want) <= 1e-5 * want);
    assert_null(m->lstate[2].slot[0].reg_a); /* head: not anchored */
    check_penalty_gradient(m);
    /* Consolidating again on the new architecture: the backbone's running Fisher is decayed
     * and added to, the head enters with its new Fisher only. */
    int32_t y4[NEX];
    for (int k = 0; k < NEX; k++)
        y4[k] = y[k] % 4;
    OK(tlearn_ewc_consolidate(m, x, y4, NEX, TLEARN_FISHER_EMPIRICAL, 5.0f));
    float head[4 * H], b2[H];
    OK(tlearn_ewc_get_fisher(m, 0, "head.weight", head, 4 * H));
    OK(tlearn_ewc_get_fisher(m, 0, "fc1.bias", b2, H));
    /* same fc1.bias Fisher would need the old weights; check it contains 0.9 * old */
    for (int k = 0; k < H; k++)
        assert_true(b2[k] >= 0.9f * F1b[k] * (1 - 1e-6f));
    tlearn_model_destroy(&m);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    float x[NEX * D];
    int32_t y[NEX];
    fill_data(x, NEX * D, y, NEX, C, 707);
    tlearn_model *m = tiny(61);
    FAILS(tlearn_ewc_consolidate(m, x, y, 0, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_EINVAL,
          "n is 0");
    FAILS(tlearn_ewc_consolidate(NULL, x, y, 4, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_EINVAL,
          "model");
    FAILS(tlearn_ewc_consolidate(m, NULL, y, 4, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_EINVAL,
          "x is NULL");
    FAILS(tlearn_ewc_consolidate(m, x, NULL, 4, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_EINVAL,
          "labels is NULL");
    FAILS(tlearn_ewc_consolidate(m, x, y, 4, 7, 1.0f), TLEARN_EINVAL, "estimator 7");
    FAILS(tlearn_ewc_consolidate(m, x, y, 4, TLEARN_FISHER_EXACT, -1.0f), TLEARN_EINVAL,
          "lambda");
    FAILS(tlearn_ewc_consolidate(m, x, y, 4, TLEARN_FISHER_EXACT, INFINITY), TLEARN_EINVAL,
          "lambda");
    int32_t bad[4] = {0, 1, 3, 0};
    FAILS(tlearn_ewc_consolidate(m, x, bad, 4, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_EINVAL,
          "labels[2]");
    FAILS(tlearn_ewc_set_mode(m, 5, 1.0f), TLEARN_EINVAL, "mode 5");
    FAILS(tlearn_ewc_set_mode(m, TLEARN_EWC_ONLINE, 0.0f), TLEARN_EINVAL, "gamma");
    FAILS(tlearn_ewc_set_mode(m, TLEARN_EWC_ONLINE, 1.5f), TLEARN_EINVAL, "gamma");
    FAILS(tlearn_model_penalty(m, NULL), TLEARN_EINVAL, "penalty");
    FAILS(tlearn_model_penalty(NULL, NULL), TLEARN_EINVAL, "model");
    float junk[H * D];
    FAILS(tlearn_ewc_get_fisher(m, 0, "fc1.weight", junk, H * D), TLEARN_EINVAL, "task 0");
    OK(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 1.0f));
    FAILS(tlearn_ewc_get_fisher(m, 0, "fc9.weight", junk, H * D), TLEARN_ENOTFOUND, "fc9");
    FAILS(tlearn_ewc_get_fisher(m, 0, "fc1.weight", junk, 3), TLEARN_ESHAPE, "out_len");
    FAILS(tlearn_ewc_get_fisher(m, -1, "fc1.weight", junk, H * D), TLEARN_EINVAL, "task -1");
    FAILS(tlearn_ewc_get_fisher(m, 0, NULL, junk, H * D), TLEARN_EINVAL, "name");
    /* Everything frozen: nothing to estimate. */
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_match(f, "*", 1));
    OK(tlearn_model_apply_freeze(m, f));
    FAILS(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_ESTATE,
          "frozen");
    /* A frozen layer gets no Fisher; the rest does. */
    OK(tlearn_freeze_match(f, "fc2", 0));
    OK(tlearn_model_apply_freeze(m, f));
    OK(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 1.0f));
    FAILS(tlearn_ewc_get_fisher(m, 1, "fc1.weight", junk, H * D), TLEARN_ENOTFOUND, "frozen");
    OK(tlearn_ewc_get_fisher(m, 1, "fc2.weight", junk, C * H));
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_MSE));
    FAILS(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_ESTATE,
          "cross-entropy");
    tlearn_model *empty = NULL;
    OK(tlearn_model_create(&empty, D, 1, 1));
    FAILS(tlearn_ewc_consolidate(empty, x, y, 4, TLEARN_FISHER_EMPIRICAL, 1.0f), TLEARN_ESHAPE,
          "no layers");
    tlearn_model_destroy(&empty);
    tlearn_freeze_destroy(&f);
    tlearn_model_destroy(&m);
}

/* Checkpoint state: describe + visit, restore into a model with the same layers. */
static void test_checkpoint_round_trip(void **state)
{
    (void)state;
    float x[NEX * D];
    int32_t y[NEX];
    fill_data(x, NEX * D, y, NEX, C, 808);
    tlearn_model *m = tiny(71);
    OK(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EXACT, 3.0f));
    perturb(m, 9, 0.1f);
    OK(tlearn_ewc_consolidate(m, x, y, NEX, TLEARN_FISHER_EMPIRICAL, 7.0f));
    OK(tlearn_l2sp_enable(m, 0.5f, 0.1f));
    perturb(m, 10, 0.1f);
    size_t len = 0;
    OK(tl_ewc_describe(m, NULL, 0, &len));
    char small[8];
    assert_int_equal(tl_ewc_describe(m, small, sizeof small, &len), TLEARN_EINVAL);
    char *text = malloc(len + 1);
    OK(tl_ewc_describe(m, text, len + 1, &len));
    assert_non_null(strstr(text, "task1.lambda=7\n"));
    arrays a = {0};
    OK(tl_ewc_visit(m, collect, &a));
    assert_int_equal(a.n, 2 * 4 * 2 + 4);

    tlearn_model *r = tiny(72); /* same layers, other weights */
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++)
            memcpy(r->layers[i]->param[p].t.data, m->layers[i]->param[p].t.data,
                   sizeof(float) * m->layers[i]->param[p].t.numel);
    OK(tl_ewc_restore_begin(r, text, len));
    for (int k = 0; k < a.n; k++)
        OK(tl_ewc_restore_array(r, a.name[k], a.data[k], a.numel[k]));
    OK(tl_ewc_restore_end(r));
    float pm, pr;
    OK(tlearn_model_penalty(m, &pm));
    OK(tlearn_model_penalty(r, &pr));
    assert_true(pm > 0 && pm == pr);
    float Fm[NP], Fr[NP];
    lib_fisher(m, 1, Fm);
    lib_fisher(r, 1, Fr);
    assert_memory_equal(Fm, Fr, sizeof Fm);
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++)
            assert_memory_equal(m->lstate[i].slot[p].reg_b, r->lstate[i].slot[p].reg_b,
                                sizeof(float) * m->layers[i]->param[p].t.numel);

    /* A missing array, an unknown array, malformed text: EFORMAT and no EWC state left. */
    OK(tl_ewc_restore_begin(r, text, len));
    for (int k = 1; k < a.n; k++)
        OK(tl_ewc_restore_array(r, a.name[k], a.data[k], a.numel[k]));
    FAILS(tl_ewc_restore_end(r), TLEARN_EFORMAT, a.name[0]);
    OK(tlearn_model_penalty(r, &pr));
    assert_true(pr == 0.0f);
    OK(tl_ewc_restore_begin(r, text, len));
    FAILS(tl_ewc_restore_array(r, "task0/fisher/fc7.weight", a.data[0], a.numel[0]),
          TLEARN_EFORMAT, "fc7");
    FAILS(tl_ewc_restore_array(r, a.name[0], a.data[0], a.numel[0]), TLEARN_ESTATE, "restore");
    FAILS(tl_ewc_restore_begin(r, "format=1\nmode=sideways\n", 23), TLEARN_EFORMAT, "mode");
    assert_int_equal(tl_ewc_active(r), 0);
    OK(tl_ewc_restore_begin(r, text, len));
    FAILS(tl_ewc_restore_array(r, a.name[0], a.data[0], a.numel[0] - 1), TLEARN_EFORMAT,
          "elements");
    free_arrays(&a);
    free(text);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&r);
}

/* ---- continual learning in miniature ----
 * Two tasks share an MLP: task B is task A with its input features permuted (like permuted
 * MNIST). After learning A then B, EWC on A's Fisher keeps more of A than plain training. */
enum { FEAT = 20, CLS = 4, NTRAIN = 400, NTEST = 400 };

static void make_task(float *x, int32_t *y, size_t n, const int *perm, const float *centers,
                      uint64_t seed)
{
    tl_rng r;
    tl_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        int c = (int)tl_rng_below(&r, CLS);
        y[i] = c;
        float v[FEAT];
        for (int j = 0; j < FEAT; j++)
            v[j] = centers[c * FEAT + j] + 0.9f * tl_rng_uniform_range(&r, -1, 1);
        for (int j = 0; j < FEAT; j++)
            x[i * FEAT + j] = v[perm[j]];
    }
}

static float run_continual(int use_ewc, float *acc_b)
{
    static float xa[NTRAIN * FEAT], xb[NTRAIN * FEAT], ta[NTEST * FEAT], tb[NTEST * FEAT];
    static int32_t ya[NTRAIN], yb[NTRAIN], sa[NTEST], sb[NTEST];
    float centers[CLS * FEAT];
    int id[FEAT], perm[FEAT];
    tl_rng r;
    tl_rng_seed(&r, 2024);
    for (int k = 0; k < CLS * FEAT; k++)
        centers[k] = tl_rng_uniform_range(&r, -1, 1);
    for (int j = 0; j < FEAT; j++)
        id[j] = perm[j] = j;
    for (int j = FEAT - 1; j > 0; j--) {
        int k = (int)tl_rng_below(&r, (uint64_t)j + 1), t = perm[j];
        perm[j] = perm[k];
        perm[k] = t;
    }
    make_task(xa, ya, NTRAIN, id, centers, 1);
    make_task(ta, sa, NTEST, id, centers, 2);
    make_task(xb, yb, NTRAIN, perm, centers, 3);
    make_task(tb, sb, NTEST, perm, centers, 4);
    tlearn_model *m = mlp(FEAT, 64, 64, CLS, 99);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.05));
    OK(tlearn_model_fit(m, o, xa, ya, NTRAIN, 20, 15, 1, NULL, NULL));
    float acc_a0;
    OK(tlearn_model_evaluate(m, ta, sa, NTEST, NULL, &acc_a0));
    assert_true(acc_a0 > 0.9f);
    if (use_ewc)
        OK(tlearn_ewc_consolidate(m, xa, ya, 200, TLEARN_FISHER_EMPIRICAL, 1000.0f));
    OK(tlearn_model_fit(m, o, xb, yb, NTRAIN, 20, 15, 1, NULL, NULL));
    float acc_a;
    OK(tlearn_model_evaluate(m, ta, sa, NTEST, NULL, &acc_a));
    OK(tlearn_model_evaluate(m, tb, sb, NTEST, NULL, acc_b));
    print_message("%s: task A %.3f -> %.3f after B; task B %.3f\n", use_ewc ? "ewc" : "plain",
                  (double)acc_a0, (double)acc_a, (double)*acc_b);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    return acc_a;
}

static void test_ewc_keeps_task_a(void **state)
{
    (void)state;
    float plain_b, ewc_b;
    float plain_a = run_continual(0, &plain_b);
    float ewc_a = run_continual(1, &ewc_b);
    assert_true(ewc_a >= plain_a + 0.05f);
    assert_true(ewc_b > 0.6f); /* and it still learned task B */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fisher_estimators),
        cmocka_unit_test(test_sampled_approaches_exact),
        cmocka_unit_test(test_penalty_value_and_gradient),
        cmocka_unit_test(test_separate_vs_online),
        cmocka_unit_test(test_l2sp_and_new_layers),
        cmocka_unit_test(test_ewc_after_layers_changed),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_ewc_keeps_task_a),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
