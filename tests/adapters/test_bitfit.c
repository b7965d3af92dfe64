/* Per-tensor freezing (BitFit): the policy's replay tensor by tensor, frozen tensors owning
 * no gradient and no optimizer state and staying bit-identical over steps, bias gradients
 * equal to those of the fully trainable model, checkpoints with exact resume, and refusals
 * that change nothing. */
#include <unistd.h>

#include "common.h"
#include "model/model.h"

#define NB 4
#define CLS 3

/* (2, 5, 5) -> conv 3x3 pad 1 (3) -> bn -> relu -> flatten -> fc dense(CLS) */
static tlearn_model *net(uint64_t seed)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 5, 5));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_conv2d(m, "conv", 3, 3, 1, 1, 1));
    OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "act", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc", CLS));
    return m;
}

static tlearn_freeze *bitfit(void)
{
    tlearn_freeze *f;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_match(f, "*", 1));
    OK(tlearn_freeze_tensors(f, "*bias", 0));
    return f;
}

static int frozen(const tlearn_model *m, const char *t)
{
    int v;
    OK(tlearn_model_tensor_frozen(m, t, &v));
    return v;
}

static void data(float *x, int32_t *y)
{
    test_rng r = {9};
    test_fill(&r, x, NB * 50, -1, 1);
    for (int i = 0; i < NB; i++)
        y[i] = i % CLS;
}

static void steps(tlearn_model *m, tlearn_optim *o, const float *x, const int32_t *y, int k)
{
    for (int s = 0; s < k; s++) {
        float loss;
        OK(tlearn_model_train_step(m, o, x, y, NB, &loss));
    }
}

static const char *const WEIGHTS[] = {"conv.weight", "bn.weight", "fc.weight"};
static const char *const BIASES[] = {"conv.bias", "bn.bias", "fc.bias"};

static void test_bitfit_policy(void **state)
{
    (void)state;
    tlearn_model *m = net(1);
    tlearn_freeze *f = bitfit();
    OK(tlearn_model_apply_freeze(m, f));
    for (int k = 0; k < 3; k++) {
        assert_int_equal(frozen(m, WEIGHTS[k]), 1);
        assert_int_equal(frozen(m, BIASES[k]), 0);
    }
    assert_int_equal(frozen(m, "bn.running_mean"), 1); /* buffers never train */
    int lf;
    OK(tlearn_model_layer_frozen(m, "conv", &lf));
    assert_int_equal(lf, 0); /* the layer still trains (its bias) */
    size_t total, trainable;
    OK(tlearn_model_param_count(m, &total, &trainable));
    assert_int_equal(trainable, 3 + 3 + CLS);
    /* later rules win, tensor by tensor: freezing the layer again freezes its bias */
    OK(tlearn_freeze_match(f, "fc", 1));
    OK(tlearn_model_apply_freeze(m, f));
    assert_int_equal(frozen(m, "fc.bias"), 1);
    OK(tlearn_model_layer_frozen(m, "fc", &lf));
    assert_int_equal(lf, 1); /* every tensor frozen: a frozen layer */
    /* every tensor of a layer frozen one by one is a frozen layer too */
    tlearn_freeze *g;
    OK(tlearn_freeze_create(&g));
    OK(tlearn_freeze_tensors(g, "conv.*", 1));
    OK(tlearn_model_apply_freeze(m, g));
    OK(tlearn_model_layer_frozen(m, "conv", &lf));
    assert_int_equal(lf, 1);
    assert_int_equal(frozen(m, "fc.bias"), 0);
    /* refusals: nothing changes */
    tlearn_freeze *bad;
    OK(tlearn_freeze_create(&bad));
    OK(tlearn_freeze_match(bad, "*", 1));
    OK(tlearn_freeze_tensors(bad, "nothing.*", 0));
    assert_int_equal(tlearn_model_apply_freeze(m, bad), TLEARN_ENOTFOUND);
    assert_non_null(strstr(tlearn_errmsg(), "nothing.*"));
    assert_int_equal(frozen(m, "fc.weight"), 0);
    assert_int_equal(frozen(m, "conv.weight"), 1);
    assert_int_equal(tlearn_freeze_tensors(bad, NULL, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_freeze_tensors(bad, "", 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_freeze_tensors(bad, "*", 2), TLEARN_EINVAL);
    assert_int_equal(tlearn_freeze_tensors(NULL, "*", 1), TLEARN_EINVAL);
    int v;
    assert_int_equal(tlearn_model_tensor_frozen(m, "fc.nothing", &v), TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_model_tensor_frozen(m, NULL, &v), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_tensor_frozen(m, "fc.bias", NULL), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_tensor_frozen(NULL, "fc.bias", &v), TLEARN_EINVAL);
    tlearn_freeze_destroy(&bad);
    tlearn_freeze_destroy(&g);
    tlearn_freeze_destroy(&f);
    tlearn_model_destroy(&m);
}

static void test_bitfit_steps(void **state)
{
    (void)state;
    float x[NB * 50];
    int32_t y[NB];
    data(x, y);
    tlearn_model *m = net(2), *full = net(2);
    tlearn_freeze *f = bitfit();
    OK(tlearn_model_apply_freeze(m, f));
    /* the bias gradients are those of the fully trainable model */
    float loss, lfull;
    OK(tlearn_model_compute_gradients(m, x, y, NB, &loss, NULL, 0));
    OK(tlearn_model_compute_gradients(full, x, y, NB, &lfull, NULL, 0));
    assert_memory_equal(&loss, &lfull, sizeof loss);
    for (int k = 0; k < 3; k++) {
        float a[CLS], b[CLS];
        OK(tlearn_model_get_grad(m, BIASES[k], a, 3));
        OK(tlearn_model_get_grad(full, BIASES[k], b, 3));
        assert_memory_equal(a, b, sizeof a);
    }
    float w[3 * 75];
    assert_int_equal(tlearn_model_get_grad(m, "fc.weight", w, CLS * 75), TLEARN_ESTATE);
    assert_non_null(strstr(tlearn_errmsg(), "frozen"));
    float w0[3][CLS * 75], b0[3][CLS];
    size_t wn[3] = {3 * 2 * 9, 3, CLS * 75};
    for (int k = 0; k < 3; k++) {
        OK(tlearn_model_get_tensor(m, WEIGHTS[k], w0[k], wn[k]));
        OK(tlearn_model_get_tensor(m, BIASES[k], b0[k], 3));
    }
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAMW));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.05));
    steps(m, o, x, y, 4);
    /* no gradient and no optimizer state for frozen tensors; bit-identical after steps */
    int li[3] = {tl_model_find(m, "conv"), tl_model_find(m, "bn"), tl_model_find(m, "fc")};
    for (int k = 0; k < 3; k++) {
        const tl_slot *sw = &m->lstate[li[k]].slot[0], *sb = &m->lstate[li[k]].slot[1];
        assert_null(sw->grad);
        assert_null(sw->m1);
        assert_null(sw->m2);
        assert_non_null(sb->grad);
        assert_non_null(sb->m2);
        float w1[CLS * 75], b1[CLS];
        OK(tlearn_model_get_tensor(m, WEIGHTS[k], w1, wn[k]));
        OK(tlearn_model_get_tensor(m, BIASES[k], b1, 3));
        assert_memory_equal(w0[k], w1, wn[k] * sizeof(float));
        assert_memory_not_equal(b0[k], b1, sizeof b1);
    }
    tlearn_optim_destroy(&o);
    tlearn_freeze_destroy(&f);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&full);
}

static void test_bitfit_checkpoint(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "/tmp/tlearn-bitfit-%d.tlm", (int)getpid());
    float x[NB * 50];
    int32_t y[NB];
    data(x, y);
    tlearn_model *m = net(3);
    tlearn_freeze *f = bitfit();
    OK(tlearn_model_apply_freeze(m, f));
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAMW));
    steps(m, o, x, y, 2);
    OK(tlearn_model_save(m, o, path, TLEARN_SAVE_FULL));
    steps(m, o, x, y, 3);
    tlearn_model *l;
    tlearn_optim *lo;
    OK(tlearn_model_load(&l, &lo, path));
    for (int k = 0; k < 3; k++) {
        assert_int_equal(frozen(l, WEIGHTS[k]), 1);
        assert_int_equal(frozen(l, BIASES[k]), 0);
    }
    steps(l, lo, x, y, 3);
    int nt;
    OK(tlearn_model_tensor_count(m, &nt));
    for (int t = 0; t < nt; t++) {
        const char *nm;
        size_t n;
        OK(tlearn_model_tensor_info(m, t, &nm, &n, NULL, NULL));
        float a[256], b[256];
        OK(tlearn_model_get_tensor(m, nm, a, n));
        OK(tlearn_model_get_tensor(l, nm, b, n));
        assert_memory_equal(a, b, n * sizeof(float));
    }
    unlink(path);
    tlearn_optim_destroy(&o);
    tlearn_optim_destroy(&lo);
    tlearn_freeze_destroy(&f);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bitfit_policy),
        cmocka_unit_test(test_bitfit_steps),
        cmocka_unit_test(test_bitfit_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
