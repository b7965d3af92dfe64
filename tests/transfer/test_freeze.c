/* Freeze policies, and the proof that frozen layers cost nothing: exact GEMM FLOP counts of
 * a step, workspace bytes, untouched weights, the feature cache, head replacement. */
#include "common.h"

#define IN 64
#define H1 48
#define H2 32
#define OUT 5

static int frozen_of(const tlearn_model *m, const char *layer)
{
    int f = -1;
    OK(tlearn_model_layer_frozen(m, layer, &f));
    return f;
}

static float scale_of(const tlearn_model *m, const char *layer)
{
    float s = -1;
    OK(tlearn_model_layer_lr_scale(m, layer, &s));
    return s;
}

/* Rules replay in order; a later rule overrides an earlier one. */
static void test_rules_in_order(void **state)
{
    (void)state;
    tlearn_model *m = mlp(IN, H1, H2, OUT, 1);
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "relu2"));      /* fc1 relu1 fc2 relu2 */
    OK(tlearn_freeze_match(f, "fc1", 0));     /* ...but fc1 trains again */
    OK(tlearn_freeze_lr_scale(f, "fc*", 0.5f));
    OK(tlearn_freeze_ulmfit(f, 2.0f));        /* overrides the lr_scale rule before it */
    OK(tlearn_freeze_lr_scale(f, "fc3", 3.0f));
    OK(tlearn_model_apply_freeze(m, f));
    assert_int_equal(frozen_of(m, "fc1"), 0);
    assert_int_equal(frozen_of(m, "relu1"), 1);
    assert_int_equal(frozen_of(m, "fc2"), 1);
    assert_int_equal(frozen_of(m, "relu2"), 1);
    assert_int_equal(frozen_of(m, "fc3"), 0);
    /* ULMFiT over layers with parameters, from the head back: 1, 1/2, 1/4. */
    assert_true(scale_of(m, "fc3") == 3.0f);
    assert_true(scale_of(m, "fc2") == 0.5f);
    assert_true(scale_of(m, "fc1") == 0.25f);
    assert_true(scale_of(m, "relu1") == 1.0f);
    size_t total, trainable;
    OK(tlearn_model_param_count(m, &total, &trainable));
    assert_int_equal(total, (size_t)(IN * H1 + H1 + H1 * H2 + H2 + H2 * OUT + OUT));
    assert_int_equal(trainable, (size_t)(IN * H1 + H1 + H2 * OUT + OUT));
    /* Frozen costs nothing: no gradient buffer, no optimizer state; trainable layers get
     * theirs on first training use, not when frozen or unfrozen. */
    assert_null(m->lstate[2].slot[0].grad);
    assert_null(m->lstate[0].slot[0].grad);

    /* Ranges, and a default ULMFiT factor of 2.6. */
    tlearn_freeze *g = NULL;
    OK(tlearn_freeze_create(&g));
    OK(tlearn_freeze_range(g, 1, 3, 1));
    OK(tlearn_freeze_range(g, 3, 3, 0));
    OK(tlearn_freeze_ulmfit(g, 0));
    OK(tlearn_model_apply_freeze(m, g));
    assert_int_equal(frozen_of(m, "fc1"), 0);
    assert_int_equal(frozen_of(m, "fc2"), 1);
    assert_int_equal(frozen_of(m, "relu2"), 0);
    assert_true(fabsf(scale_of(m, "fc2") - 1.0f / 2.6f) < 1e-7f);
    assert_true(fabsf(scale_of(m, "fc1") - 1.0f / (2.6f * 2.6f)) < 1e-7f);

    /* NULL policy: everything trains at scale 1. */
    OK(tlearn_model_apply_freeze(m, NULL));
    assert_int_equal(frozen_of(m, "fc2"), 0);
    assert_true(scale_of(m, "fc1") == 1.0f);
    tlearn_freeze_destroy(&f);
    tlearn_freeze_destroy(&g);
    assert_null(f);
    tlearn_freeze_destroy(&f); /* NULL-safe */
    tlearn_freeze_destroy(NULL);
    tlearn_model_destroy(&m);
}

/* An LR scale from the policy reaches the optimizer: half the scale, half the SGD step. */
static void test_lr_scale_reaches_optimizer(void **state)
{
    (void)state;
    enum { N = 8 };
    tlearn_model *a = mlp(IN, H1, H2, OUT, 9), *b = mlp(IN, H1, H2, OUT, 9);
    float x[N * IN];
    int32_t y[N];
    fill_data(x, N * IN, y, N, OUT, 99);
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_lr_scale(f, "fc3", 0.5f));
    OK(tlearn_model_apply_freeze(b, f));
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    float *w0 = get_copy(a, "fc3.weight", NULL);
    OK(tlearn_model_train_step(a, o, x, y, N, NULL));
    OK(tlearn_model_train_step(b, o, x, y, N, NULL));
    float *wa = get_copy(a, "fc3.weight", NULL), *wb = get_copy(b, "fc3.weight", NULL);
    int moved = 0;
    for (int k = 0; k < H2 * OUT; k++) {
        double da = (double)wa[k] - w0[k], db = (double)wb[k] - w0[k];
        assert_true(fabs(db - 0.5 * da) <= 1e-6 + 1e-3 * fabs(da));
        moved += da != 0;
    }
    assert_true(moved > 0);
    float *fa = get_copy(a, "fc1.weight", NULL), *fb = get_copy(b, "fc1.weight", NULL);
    assert_memory_equal(fa, fb, sizeof(float) * IN * H1); /* unscaled layers step alike */
    free(w0);
    free(wa);
    free(wb);
    free(fa);
    free(fb);
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

/* A rule naming nothing fails with the pattern in the message; the model is unchanged. */
static void test_rule_matching_nothing(void **state)
{
    (void)state;
    tlearn_model *m = mlp(IN, H1, H2, OUT, 2);
    tlearn_freeze *ok = NULL, *f = NULL;
    OK(tlearn_freeze_create(&ok));
    OK(tlearn_freeze_until(ok, "fc2"));
    OK(tlearn_freeze_lr_scale(ok, "fc3", 0.1f));
    OK(tlearn_model_apply_freeze(m, ok));

    const char *bad_globs[] = {"conv*", "block[12].*", "fc?x"};
    for (int k = 0; k < 3; k++) {
        OK(tlearn_freeze_create(&f));
        OK(tlearn_freeze_match(f, "fc*", 1)); /* valid rules before the bad one... */
        OK(tlearn_freeze_match(f, bad_globs[k], 0));
        FAILS(tlearn_model_apply_freeze(m, f), TLEARN_ENOTFOUND, bad_globs[k]);
        tlearn_freeze_destroy(&f);
    }
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_lr_scale(f, "head*", 2.0f));
    FAILS(tlearn_model_apply_freeze(m, f), TLEARN_ENOTFOUND, "head*");
    tlearn_freeze_destroy(&f);
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "backbone_end"));
    FAILS(tlearn_model_apply_freeze(m, f), TLEARN_ENOTFOUND, "backbone_end");
    tlearn_freeze_destroy(&f);
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_range(f, 2, 9, 1));
    FAILS(tlearn_model_apply_freeze(m, f), TLEARN_ENOTFOUND, "only 5 layers");
    tlearn_freeze_destroy(&f);
    /* ...and nothing of the earlier policy changed. */
    assert_int_equal(frozen_of(m, "fc1"), 1);
    assert_int_equal(frozen_of(m, "fc2"), 1);
    assert_int_equal(frozen_of(m, "fc3"), 0);
    assert_true(scale_of(m, "fc3") == 0.1f);
    assert_null(m->lstate[0].slot[0].grad);

    /* Introspection of names that do not exist. */
    int fr;
    float sc;
    FAILS(tlearn_model_layer_frozen(m, "nope", &fr), TLEARN_ENOTFOUND, "nope");
    FAILS(tlearn_model_layer_lr_scale(m, "nada", &sc), TLEARN_ENOTFOUND, "nada");
    FAILS(tlearn_model_layer_frozen(m, NULL, &fr), TLEARN_EINVAL, "layer");
    FAILS(tlearn_model_layer_frozen(m, "fc1", NULL), TLEARN_EINVAL, "NULL");
    FAILS(tlearn_model_layer_frozen(NULL, "fc1", &fr), TLEARN_EINVAL, "model");
    tlearn_freeze_destroy(&ok);
    tlearn_model_destroy(&m);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    tlearn_freeze *f = NULL;
    FAILS(tlearn_freeze_create(NULL), TLEARN_EINVAL, "out");
    OK(tlearn_freeze_create(&f));
    FAILS(tlearn_freeze_until(NULL, "fc1"), TLEARN_EINVAL, "policy");
    FAILS(tlearn_freeze_until(f, NULL), TLEARN_EINVAL, "layer");
    FAILS(tlearn_freeze_until(f, ""), TLEARN_EINVAL, "empty");
    FAILS(tlearn_freeze_until(f, "fc*"), TLEARN_EINVAL, "fc*");
    FAILS(tlearn_freeze_match(f, NULL, 1), TLEARN_EINVAL, "glob");
    FAILS(tlearn_freeze_match(f, "", 1), TLEARN_EINVAL, "empty");
    FAILS(tlearn_freeze_match(f, "fc*", 2), TLEARN_EINVAL, "frozen");
    FAILS(tlearn_freeze_range(f, -1, 2, 1), TLEARN_EINVAL, "range");
    FAILS(tlearn_freeze_range(f, 3, 2, 1), TLEARN_EINVAL, "range");
    FAILS(tlearn_freeze_range(f, 0, 2, -1), TLEARN_EINVAL, "frozen");
    FAILS(tlearn_freeze_lr_scale(f, "fc*", 0.0f), TLEARN_EINVAL, "scale");
    FAILS(tlearn_freeze_lr_scale(f, "fc*", -1.0f), TLEARN_EINVAL, "scale");
    FAILS(tlearn_freeze_lr_scale(f, "fc*", NAN), TLEARN_EINVAL, "scale");
    FAILS(tlearn_freeze_lr_scale(f, "fc*", INFINITY), TLEARN_EINVAL, "scale");
    FAILS(tlearn_freeze_ulmfit(f, -2.0f), TLEARN_EINVAL, "factor");
    FAILS(tlearn_freeze_ulmfit(f, NAN), TLEARN_EINVAL, "factor");
    FAILS(tlearn_freeze_ulmfit(NULL, 2.0f), TLEARN_EINVAL, "policy");
    FAILS(tlearn_freeze_bn_stats(f, 3), TLEARN_EINVAL, "frozen");
    FAILS(tlearn_freeze_bn_stats(NULL, 1), TLEARN_EINVAL, "policy");
    FAILS(tlearn_model_apply_freeze(NULL, f), TLEARN_EINVAL, "model");
    tlearn_freeze_destroy(&f);
}

/* Gradual unfreezing: a newly trainable layer starts with fresh optimizer state, a newly
 * frozen one loses its state, the others keep theirs. */
static void test_gradual_unfreezing(void **state)
{
    (void)state;
    enum { N = 16 };
    tlearn_model *m = mlp(IN, H1, H2, OUT, 3);
    float x[N * IN];
    int32_t y[N];
    fill_data(x, N * IN, y, N, OUT, 33);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "relu2"));
    OK(tlearn_model_apply_freeze(m, f));
    for (int s = 0; s < 3; s++)
        OK(tlearn_model_train_step(m, o, x, y, N, NULL));
    assert_int_equal(m->lstate[4].slot[0].step, 3);
    assert_null(m->lstate[2].slot[0].m1);

    /* Unfreeze fc2. */
    OK(tlearn_freeze_match(f, "fc2", 0));
    OK(tlearn_model_apply_freeze(m, f));
    assert_int_equal(frozen_of(m, "fc2"), 0);
    assert_int_equal(m->lstate[2].slot[0].step, 0);
    assert_null(m->lstate[2].slot[0].m1);
    assert_null(m->lstate[2].slot[0].grad); /* allocated by the next step */
    float *fc2_before = get_copy(m, "fc2.weight", NULL);
    OK(tlearn_model_train_step(m, o, x, y, N, NULL));
    assert_int_equal(m->lstate[2].slot[0].step, 1);  /* fresh */
    assert_int_equal(m->lstate[4].slot[0].step, 4);  /* kept */
    float *fc2_after = get_copy(m, "fc2.weight", NULL);
    assert_true(memcmp(fc2_before, fc2_after, sizeof(float) * H1 * H2) != 0);
    /* Adam's first step moves every weight with a non-zero gradient by about lr. */
    float g[H1 * H2];
    OK(tlearn_model_get_grad(m, "fc2.weight", g, H1 * H2));
    for (int k = 0; k < H1 * H2; k++)
        if (fabsf(g[k]) > 1e-6f)
            assert_true(fabsf(fabsf(fc2_after[k] - fc2_before[k]) - 1e-3f) < 1e-4f);

    /* Freeze everything again: state released. */
    OK(tlearn_freeze_match(f, "*", 1));
    OK(tlearn_freeze_match(f, "fc3", 0));
    OK(tlearn_model_apply_freeze(m, f));
    assert_null(m->lstate[2].slot[0].m1);
    assert_null(m->lstate[2].slot[0].grad);
    assert_int_equal(m->lstate[4].slot[0].step, 4);
    free(fc2_before);
    free(fc2_after);
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* GEMM FLOPs of one train step, counted by tl_sgemm. */
static uint64_t step_flops(tlearn_model *m, tlearn_optim *o, const float *x, const int32_t *y,
                           size_t n)
{
    OK(tlearn_model_train_step(m, o, x, y, n, NULL)); /* plans the workspace */
    uint64_t before = tl_sgemm_flops();
    OK(tlearn_model_train_step(m, o, x, y, n, NULL));
    return tl_sgemm_flops() - before;
}

/* Exact FLOPs from first principles: a dense layer of K inputs and M outputs costs
 * 2nKM forward, 2nKM for its weight gradient, and 2nKM for its input gradient. Backward
 * stops at the first trainable layer and never forms the gradient of the model input. */
static void test_frozen_backbone_flops(void **state)
{
    (void)state;
    enum { N = 32, BIG_IN = 784, B1 = 256, B2 = 256, C = 10 };
    tlearn_model *m = mlp(BIG_IN, B1, B2, C, 4);
    float *x = malloc(sizeof(float) * N * BIG_IN);
    int32_t y[N];
    fill_data(x, N * BIG_IN, y, N, C, 44);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    const uint64_t n = N;
    uint64_t fwd = 2 * n * (BIG_IN * B1 + B1 * B2 + B2 * C);

    uint64_t full = step_flops(m, o, x, y, N);
    size_t ws_full;
    OK(tlearn_model_workspace_bytes(m, &ws_full));
    assert_int_equal(full, fwd + 2 * n * (BIG_IN * B1) + 4 * n * (B1 * B2) + 4 * n * (B2 * C));

    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "relu2"));
    OK(tlearn_model_apply_freeze(m, f));
    uint64_t frozen = step_flops(m, o, x, y, N);
    size_t ws_frozen;
    OK(tlearn_model_workspace_bytes(m, &ws_frozen));
    assert_int_equal(frozen, fwd + 2 * n * (B2 * C)); /* only the head's weight gradient */
    uint64_t bwd_full = full - fwd, bwd_frozen = frozen - fwd;
    assert_true(bwd_frozen * 100 < bwd_full);
    /* The frozen prefix keeps no activations or gradients for backward. */
    assert_true(ws_frozen * 2 < ws_full);
    print_message("step GEMM FLOPs: full %llu (backward %llu), frozen backbone %llu (backward "
                  "%llu, %.1fx less; step %.2fx less); workspace %zu -> %zu bytes (%.2fx)\n",
                  (unsigned long long)full, (unsigned long long)bwd_full,
                  (unsigned long long)frozen, (unsigned long long)bwd_frozen,
                  (double)bwd_full / (double)bwd_frozen, (double)full / (double)frozen,
                  ws_full, ws_frozen, (double)ws_full / (double)ws_frozen);

    /* The input gradient of the first trainable layer is skipped too: fc2 trains, so fc2's
     * input gradient is not needed. */
    OK(tlearn_freeze_match(f, "fc2", 0));
    OK(tlearn_model_apply_freeze(m, f));
    uint64_t partial = step_flops(m, o, x, y, N);
    assert_int_equal(partial, fwd + 2 * n * (B1 * B2) + 4 * n * (B2 * C));
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    free(x);
}

/* The same on the reference CNN (conv32-pool-conv64-pool-fc128-fc10, batch 64): with the
 * backbone frozen a step costs its forward plus the head's weight gradient, nothing more. */
static void test_frozen_backbone_cnn(void **state)
{
    (void)state;
    enum { N = 64, C = 10 };
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, 1, 28, 28));
    OK(tlearn_model_add_conv2d(m, "conv1", 32, 3, 1, 1, 1));
    OK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_maxpool2d(m, "pool1", 2, 0, 0));
    OK(tlearn_model_add_conv2d(m, "conv2", 64, 3, 1, 1, 1));
    OK(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_maxpool2d(m, "pool2", 2, 0, 0));
    OK(tlearn_model_add_dense(m, "fc1", 128));
    OK(tlearn_model_add_activation(m, "relu3", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "head", C));
    float *x = malloc(sizeof(float) * N * 784), *out = malloc(sizeof(float) * N * C);
    int32_t y[N];
    fill_data(x, N * 784, y, N, C, 45);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    uint64_t f0 = tl_sgemm_flops();
    OK(tlearn_model_predict(m, x, N, out, N * C));
    uint64_t fwd = tl_sgemm_flops() - f0;
    uint64_t full = step_flops(m, o, x, y, N);
    size_t ws_full, ws_infer = m->plan_infer.bytes;
    OK(tlearn_model_workspace_bytes(m, &ws_full));
    ws_full -= ws_infer;
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "relu3"));
    OK(tlearn_model_apply_freeze(m, f));
    uint64_t frozen = step_flops(m, o, x, y, N);
    size_t ws_frozen;
    OK(tlearn_model_workspace_bytes(m, &ws_frozen));
    ws_frozen -= ws_infer;
    print_message("CNN step GEMM FLOPs: full %llu (backward %llu), frozen backbone %llu "
                  "(backward %llu, %.0fx less; step %.2fx less); train workspace %zu -> %zu "
                  "bytes (%.1fx)\n", (unsigned long long)full, (unsigned long long)(full - fwd),
                  (unsigned long long)frozen, (unsigned long long)(frozen - fwd),
                  (double)(full - fwd) / (double)(frozen - fwd), (double)full / (double)frozen,
                  ws_full, ws_frozen, (double)ws_full / (double)ws_frozen);
    assert_int_equal(frozen - fwd, 2ull * N * 128 * C);
    assert_true((frozen - fwd) * 1000 < full - fwd);
    assert_true(ws_frozen * 2 < ws_full); /* measured 3.2x: the forward still needs its buffers */
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    free(x);
    free(out);
}

/* Frozen weights stay bit-identical over many steps while the trained ones change. */
static void test_frozen_weights_bit_identical(void **state)
{
    (void)state;
    enum { N = 24, STEPS = 50 };
    tlearn_model *m = mlp(IN, H1, H2, OUT, 5);
    float x[N * IN];
    int32_t y[N];
    fill_data(x, N * IN, y, N, OUT, 55);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_ADAMW)); /* with decoupled weight decay */
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_match(f, "fc[12]", 1));
    OK(tlearn_model_apply_freeze(m, f));
    const char *names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight",
                           "fc3.bias"};
    float *before[6];
    size_t numel[6];
    for (int k = 0; k < 6; k++)
        before[k] = get_copy(m, names[k], &numel[k]);
    float first_loss = 0, loss = 0;
    for (int s = 0; s < STEPS; s++) {
        OK(tlearn_model_train_step(m, o, x, y, N, &loss));
        if (s == 0)
            first_loss = loss;
    }
    assert_true(loss < first_loss);
    for (int k = 0; k < 6; k++) {
        float *after = get_copy(m, names[k], NULL);
        int same = memcmp(before[k], after, sizeof(float) * numel[k]) == 0;
        if (k < 4 && !same)
            fail_msg("frozen %s changed", names[k]);
        if (k >= 4 && same)
            fail_msg("trainable %s did not change", names[k]);
        free(after);
        free(before[k]);
    }
    float g[IN * H1];
    assert_int_equal(tlearn_model_get_grad(m, "fc1.weight", g, IN * H1), TLEARN_ESTATE);
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* Training the head from cached features equals training with the backbone frozen. */
static void test_feature_cache(void **state)
{
    (void)state;
    enum { N = 120, B = 20, EPOCHS = 4 };
    tlearn_model *a = mlp(IN, H1, H2, OUT, 6), *b = mlp(IN, H1, H2, OUT, 6);
    float *x = malloc(sizeof(float) * N * IN);
    int32_t y[N];
    fill_data(x, N * IN, y, N, OUT, 66);
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "relu2"));
    OK(tlearn_model_apply_freeze(a, f));
    OK(tlearn_model_apply_freeze(b, f));
    float *feat = malloc(sizeof(float) * N * H2);
    OK(tlearn_model_features(b, "relu2", x, N, feat, N * H2));
    /* The features are what the backbone computes. */
    float *ref = malloc(sizeof(float) * N * H2);
    tlearn_model *cut = mlp(IN, H1, H2, OUT, 6);
    OK(tlearn_model_truncate(cut, "relu2"));
    OK(tlearn_model_predict(cut, x, N, ref, N * H2));
    assert_memory_equal(feat, ref, sizeof(float) * N * H2);
    tlearn_optim *oa = NULL, *ob = NULL;
    OK(tlearn_optim_create(&oa, TLEARN_ADAM));
    OK(tlearn_optim_create(&ob, TLEARN_ADAM));
    for (int e = 0; e < EPOCHS; e++)
        for (int s = 0; s < N; s += B) {
            float la, lb;
            OK(tlearn_model_train_step(a, oa, x + s * IN, y + s, B, &la));
            OK(tlearn_model_train_step_from(b, ob, "relu2", feat + s * H2, y + s, B, &lb));
            assert_true(fabsf(la - lb) <= 1e-6f * fabsf(la));
        }
    float *wa = get_copy(a, "fc3.weight", NULL), *wb = get_copy(b, "fc3.weight", NULL);
    double maxdiff = 0;
    for (int k = 0; k < H2 * OUT; k++)
        maxdiff = fmax(maxdiff, fabs((double)wa[k] - wb[k]));
    assert_true(maxdiff <= 1e-6);
    /* predict_from equals predict. */
    float pa[N * OUT], pb[N * OUT];
    OK(tlearn_model_predict(b, x, N, pa, N * OUT));
    OK(tlearn_model_predict_from(b, "relu2", feat, N, pb, N * OUT));
    for (int k = 0; k < N * OUT; k++)
        assert_true(fabsf(pa[k] - pb[k]) <= 1e-5f * (1 + fabsf(pa[k])));

    /* The cache needs the prefix frozen. */
    OK(tlearn_model_apply_freeze(b, NULL));
    FAILS(tlearn_model_train_step_from(b, ob, "relu2", feat, y, B, NULL), TLEARN_ESTATE,
          "not frozen");
    FAILS(tlearn_model_train_step_from(b, ob, "nope", feat, y, B, NULL), TLEARN_ENOTFOUND,
          "nope");
    free(wa);
    free(wb);
    free(x);
    free(feat);
    free(ref);
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&oa);
    tlearn_optim_destroy(&ob);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
    tlearn_model_destroy(&cut);
}

/* Replace the head, append layers after it, train. */
static void test_replace_head(void **state)
{
    (void)state;
    enum { N = 16, NEWC = 7 };
    tlearn_model *m = mlp(IN, H1, H2, OUT, 7);
    float *fc1 = get_copy(m, "fc1.weight", NULL);
    FAILS(tlearn_model_replace_head(m, "nope", 3), TLEARN_ENOTFOUND, "nope");
    FAILS(tlearn_model_replace_head(m, "relu2", 0), TLEARN_EINVAL, "classes");
    OK(tlearn_model_replace_head(m, "relu2", NEWC));
    int count, c;
    const char *name;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 5);
    OK(tlearn_model_layer_name(m, 4, &name));
    assert_string_equal(name, "head");
    OK(tlearn_model_layer_shape(m, 4, &c, NULL, NULL));
    assert_int_equal(c, NEWC);
    float w[OUT];
    assert_int_equal(tlearn_model_get_tensor(m, "fc3.bias", w, OUT), TLEARN_ENOTFOUND);
    float *fc1_after = get_copy(m, "fc1.weight", NULL);
    assert_memory_equal(fc1, fc1_after, sizeof(float) * IN * H1); /* backbone kept */
    /* Append more layers after the new head. */
    OK(tlearn_model_add_activation(m, "head_act", TLEARN_ACT_TANH, 0));
    OK(tlearn_model_add_dense(m, "head2", 3));
    float x[N * IN];
    int32_t y[N];
    fill_data(x, N * IN, y, N, 3, 77);
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "relu2"));
    OK(tlearn_model_apply_freeze(m, f));
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    float l0 = 0, l = 0;
    for (int s = 0; s < 30; s++) {
        OK(tlearn_model_train_step(m, o, x, y, N, &l));
        if (!s)
            l0 = l;
    }
    assert_true(l < l0);
    float out[N * 3];
    OK(tlearn_model_predict(m, x, N, out, N * 3));
    free(fc1_after);
    free(fc1);
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* bn_stats: running statistics stay put in training mode when frozen, move otherwise. */
static void test_bn_stats(void **state)
{
    (void)state;
    enum { N = 16 };
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, IN, 1, 1));
    OK(tlearn_model_add_dense(m, "fc1", H1));
    OK(tlearn_model_add_batchnorm(m, "bn1", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", OUT));
    float x[N * IN];
    int32_t y[N];
    fill_data(x, N * IN, y, N, OUT, 88);
    tlearn_optim *o = NULL;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    tlearn_freeze *f = NULL;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_bn_stats(f, 1));
    OK(tlearn_model_apply_freeze(m, f));
    assert_int_equal(m->bn_stats_frozen, 1);
    assert_int_equal(m->layers[1]->use_running_stats, 1);
    float *mean0 = get_copy(m, "bn1.running_mean", NULL);
    float *w0 = get_copy(m, "bn1.weight", NULL);
    for (int s = 0; s < 3; s++)
        OK(tlearn_model_train_step(m, o, x, y, N, NULL));
    float *mean1 = get_copy(m, "bn1.running_mean", NULL);
    float *w1 = get_copy(m, "bn1.weight", NULL);
    assert_memory_equal(mean0, mean1, sizeof(float) * H1);
    assert_true(memcmp(w0, w1, sizeof(float) * H1) != 0); /* affine parameters still train */
    OK(tlearn_freeze_bn_stats(f, 0)); /* a later rule overrides */
    OK(tlearn_model_apply_freeze(m, f));
    assert_int_equal(m->layers[1]->use_running_stats, 0);
    OK(tlearn_model_train_step(m, o, x, y, N, NULL));
    float *mean2 = get_copy(m, "bn1.running_mean", NULL);
    assert_true(memcmp(mean1, mean2, sizeof(float) * H1) != 0);
    free(mean0);
    free(mean1);
    free(mean2);
    free(w0);
    free(w1);
    tlearn_freeze_destroy(&f);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_in_order),
        cmocka_unit_test(test_lr_scale_reaches_optimizer),
        cmocka_unit_test(test_rule_matching_nothing),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_gradual_unfreezing),
        cmocka_unit_test(test_frozen_backbone_flops),
        cmocka_unit_test(test_frozen_backbone_cnn),
        cmocka_unit_test(test_frozen_weights_bit_identical),
        cmocka_unit_test(test_feature_cache),
        cmocka_unit_test(test_replace_head),
        cmocka_unit_test(test_bn_stats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
