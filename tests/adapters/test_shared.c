/* One base, many handles (tlearn_model_create_shared): parameters shared (the same data
 * pointers), buffers copied, predictions equal to the base's bit for bit; copy on write
 * when a handle trains, sets or merges into a shared tensor, the others unchanged;
 * destroying in any order; and the threads test: two sharers training LoRA at once on two
 * host threads while a third predicts (suite 'threads': tests/tsan.sh runs it under
 * ThreadSanitizer), each ending bit for bit where it ends alone. */
#include <pthread.h>
#include <unistd.h>

#include "common.h"
#include "model/model.h"

#define NB 8
#define CLS 3
#define PIX 50

/* (2, 5, 5) -> conv 3x3 pad 1 (4) -> bn -> relu -> flatten -> fc1 dense(6) -> fc2 dense(CLS) */
static tlearn_model *base_model(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 5, 5));
    OK(tlearn_model_set_seed(m, 42));
    OK(tlearn_model_add_conv2d(m, "conv", 4, 3, 1, 1, 1));
    OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "act", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc1", 6));
    OK(tlearn_model_add_dense(m, "fc2", CLS));
    return m;
}

static void data(float *x, int32_t *y, uint64_t seed)
{
    test_rng r = {seed};
    test_fill(&r, x, NB * PIX, -1, 1);
    for (int i = 0; i < NB; i++)
        y[i] = (int32_t)(i % CLS);
}

static const float *tensor_data(const tlearn_model *m, const char *name)
{
    int l, p;
    assert_int_equal(tl_model_find_tensor(m, name, &l, &p), 0);
    return m->layers[l]->param[p].t.data;
}

static int shared(const tlearn_model *m, const char *name)
{
    int s;
    OK(tlearn_model_tensor_shared(m, name, &s));
    return s;
}

/* LoRA on the convolution and fc1, everything else but the adapters frozen: PEFT's way. */
static void adapt(tlearn_model *m, const char *ad)
{
    OK(tlearn_lora_add(m, ad, "[cf][oc][n1]*", 2, 4.0f, 0.0f, 0)); /* conv and fc1 */
    tlearn_freeze *f;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_match(f, "*", 1));
    OK(tlearn_freeze_match(f, "*.lora_*", 0));
    OK(tlearn_freeze_bn_stats(f, 1));
    OK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f);
}

static void train(tlearn_model *m, int steps, uint64_t seed)
{
    float x[NB * PIX];
    int32_t y[NB];
    data(x, y, seed);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAMW));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.01));
    for (int s = 0; s < steps; s++) {
        float loss;
        OK(tlearn_model_train_step(m, o, x, y, NB, &loss));
    }
    /* B starts at zero; give the next steps of other handles something to differ on */
    tlearn_optim_destroy(&o);
}

static const char *const PARAMS[] = {"conv.weight", "conv.bias", "bn.weight", "bn.bias",
                                     "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
#define NPARAMS 8

static void test_shared_basics(void **state)
{
    (void)state;
    int64_t live0 = tl_alloc_live();
    float x[NB * PIX], pb[NB * CLS], ps[NB * CLS];
    int32_t y[NB];
    data(x, y, 1);
    tlearn_model *base = base_model();
    train(base, 2, 9); /* running statistics that differ from their start */
    OK(tlearn_model_predict(base, x, NB, pb, NB * CLS));
    tlearn_model *s[3];
    for (int k = 0; k < 3; k++)
        OK(tlearn_model_create_shared(&s[k], base));
    for (int k = 0; k < 3; k++) {
        for (int p = 0; p < NPARAMS; p++) {
            assert_ptr_equal(tensor_data(s[k], PARAMS[p]), tensor_data(base, PARAMS[p]));
            assert_int_equal(shared(s[k], PARAMS[p]), 1);
        }
        /* buffers are copied: training-mode forwards update them */
        assert_ptr_not_equal(tensor_data(s[k], "bn.running_mean"),
                             tensor_data(base, "bn.running_mean"));
        assert_memory_equal(tensor_data(s[k], "bn.running_var"),
                            tensor_data(base, "bn.running_var"), 4 * sizeof(float));
        assert_int_equal(shared(s[k], "bn.running_mean"), 0);
        OK(tlearn_model_predict(s[k], x, NB, ps, NB * CLS));
        assert_memory_equal(ps, pb, sizeof pb);
    }
    assert_int_equal(shared(base, "fc2.weight"), 1);
    /* s[0]: LoRA trains privately; the base tensors stay shared and unchanged */
    adapt(s[0], "user0");
    train(s[0], 3, 2);
    for (int p = 0; p < NPARAMS; p++)
        assert_ptr_equal(tensor_data(s[0], PARAMS[p]), tensor_data(base, PARAMS[p]));
    OK(tlearn_model_predict(s[0], x, NB, ps, NB * CLS));
    assert_memory_not_equal(ps, pb, sizeof pb);
    /* s[1] trains everything: copy on write, only for itself */
    float w0[CLS * 6];
    memcpy(w0, tensor_data(base, "fc2.weight"), sizeof w0);
    train(s[1], 2, 3);
    for (int p = 0; p < NPARAMS; p++) {
        assert_ptr_not_equal(tensor_data(s[1], PARAMS[p]), tensor_data(base, PARAMS[p]));
        assert_int_equal(shared(s[1], PARAMS[p]), 0);
    }
    assert_memory_equal(tensor_data(base, "fc2.weight"), w0, sizeof w0);
    assert_memory_not_equal(tensor_data(s[1], "fc2.weight"), w0, sizeof w0);
    OK(tlearn_model_predict(base, x, NB, ps, NB * CLS));
    assert_memory_equal(ps, pb, sizeof pb);
    /* s[2]: set_tensor and merge copy the tensor they write */
    float z[CLS] = {1, 2, 3};
    OK(tlearn_model_set_tensor(s[2], "fc2.bias", z, CLS));
    assert_ptr_not_equal(tensor_data(s[2], "fc2.bias"), tensor_data(base, "fc2.bias"));
    assert_ptr_equal(tensor_data(s[2], "fc2.weight"), tensor_data(base, "fc2.weight"));
    OK(tlearn_lora_add(s[2], "m", "fc2", 2, 4.0f, 0.0f, 0));
    float bw[CLS * 2] = {0.5f, -0.5f, 0.25f, 0.1f, 0.2f, -0.3f};
    OK(tlearn_model_set_tensor(s[2], "fc2.lora_B.m.weight", bw, CLS * 2));
    OK(tlearn_lora_merge(s[2], "m"));
    assert_ptr_not_equal(tensor_data(s[2], "fc2.weight"), tensor_data(base, "fc2.weight"));
    assert_memory_equal(tensor_data(base, "fc2.weight"), w0, sizeof w0);
    /* destroy the base first: the sharers keep working, then everything is freed */
    OK(tlearn_model_predict(s[0], x, NB, pb, NB * CLS));
    tlearn_model_destroy(&base);
    OK(tlearn_model_predict(s[0], x, NB, ps, NB * CLS));
    assert_memory_equal(ps, pb, sizeof pb);
    assert_int_equal(shared(s[0], "fc2.weight"), 0); /* s[1], s[2] copied theirs */
    assert_int_equal(shared(s[0], "conv.weight"), 1); /* still held by s[2] */
    tlearn_model_destroy(&s[2]);
    tlearn_model_destroy(&s[0]);
    tlearn_model_destroy(&s[1]);
    assert_int_equal(tl_alloc_live(), live0);
    /* errors */
    tlearn_model *o = NULL;
    assert_int_equal(tlearn_model_create_shared(NULL, s[0]), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_create_shared(&o, NULL), TLEARN_EINVAL);
    assert_null(o);
}

/* A sharer of a sharer shares the same data; the last holder takes it back without a copy. */
static void test_shared_chain(void **state)
{
    (void)state;
    tlearn_model *base = base_model(), *a, *b;
    const float *w = tensor_data(base, "fc1.weight");
    OK(tlearn_model_create_shared(&a, base));
    OK(tlearn_model_create_shared(&b, a));
    assert_ptr_equal(tensor_data(b, "fc1.weight"), w);
    tlearn_model_destroy(&base);
    tlearn_model_destroy(&a);
    assert_int_equal(shared(b, "fc1.weight"), 0); /* b is the last holder */
    float v[6 * 100];
    OK(tlearn_model_get_tensor(b, "fc1.weight", v, 6 * 100));
    float one = 1.0f;
    v[0] = one;
    OK(tlearn_model_set_tensor(b, "fc1.weight", v, 6 * 100));
    assert_ptr_equal(tensor_data(b, "fc1.weight"), w); /* taken back, not copied */
    tlearn_model_destroy(&b);
}

/* LoRA on attention projections in a sharer: the split's projections are views of the
 * base's in_proj / out_proj data, nothing copied. */
static void test_shared_attention(void **state)
{
    (void)state;
    enum { T = 4, D = 8 };
    tlearn_model *base, *s;
    OK(tlearn_model_create_input(&base, "x", TLEARN_DTYPE_FLOAT32, 2, (const int[]){T, D}));
    OK(tlearn_model_add_attention(base, "attn", 2, 0, NULL));
    OK(tlearn_model_add_token_pool(base, "pool", 1, NULL));
    OK(tlearn_model_add_dense(base, "fc", CLS));
    float x[NB * T * D], pb[NB * CLS], ps[NB * CLS];
    test_rng r = {3};
    test_fill(&r, x, NB * T * D, -1, 1);
    OK(tlearn_model_predict(base, x, NB, pb, NB * CLS));
    OK(tlearn_model_create_shared(&s, base));
    OK(tlearn_lora_add(s, "u", "attn.[qv]_proj", 2, 4.0f, 0.0f, 0));
    const float *win = tensor_data(base, "attn.in_proj_weight");
    assert_ptr_equal(tensor_data(s, "attn.q_proj.weight"), win);
    assert_ptr_equal(tensor_data(s, "attn.k_proj.weight"), win + D * D);
    assert_ptr_equal(tensor_data(s, "attn.v_proj.weight"), win + 2 * D * D);
    assert_ptr_equal(tensor_data(s, "attn.v_proj.bias"),
                     tensor_data(base, "attn.in_proj_bias") + 2 * D);
    assert_ptr_equal(tensor_data(s, "attn.out_proj.weight"),
                     tensor_data(base, "attn.out_proj.weight"));
    OK(tlearn_model_predict(s, x, NB, ps, NB * CLS));
    for (int i = 0; i < NB * CLS; i++)
        assert_true(fabsf(ps[i] - pb[i]) <= 1e-5f);
    /* a write to one view copies that view alone */
    float v[D * D] = {0};
    OK(tlearn_model_set_tensor(s, "attn.k_proj.weight", v, D * D));
    assert_ptr_not_equal(tensor_data(s, "attn.k_proj.weight"), win + D * D);
    assert_ptr_equal(tensor_data(s, "attn.q_proj.weight"), win);
    tlearn_model_destroy(&base); /* the views keep the data */
    OK(tlearn_model_predict(s, x, NB, ps, NB * CLS));
    tlearn_model_destroy(&s);
}

/* ---- threads ---- */

typedef struct job {
    tlearn_model *m;
    int steps;
    uint64_t seed;
    int predictor;
    const float *x;
    const float *want; /* predictor: what every prediction must equal */
    int rounds;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    if (!j->predictor) {
        train(j->m, j->steps, j->seed);
        return NULL;
    }
    float out[NB * CLS];
    for (int r = 0; r < j->rounds; r++) {
        if (tlearn_model_predict(j->m, j->x, NB, out, NB * CLS) != TLEARN_OK ||
            memcmp(out, j->want, sizeof out) != 0)
            return (void *)1;
    }
    return NULL;
}

static void test_shared_threads(void **state)
{
    (void)state;
    float x[NB * PIX], want[NB * CLS];
    int32_t y[NB];
    data(x, y, 7);
    tlearn_model *base = base_model(), *s[3], *ref[2];
    for (int k = 0; k < 3; k++)
        OK(tlearn_model_create_shared(&s[k], base));
    for (int k = 0; k < 2; k++) { /* the same training alone, for the expected result */
        OK(tlearn_model_create_shared(&ref[k], base));
        OK(tlearn_model_set_threads(s[k], 2));
        OK(tlearn_model_set_threads(ref[k], 2));
        char ad[8];
        snprintf(ad, sizeof ad, "u%d", k);
        adapt(s[k], ad);
        adapt(ref[k], ad);
        train(ref[k], 6, 100 + (uint64_t)k);
    }
    OK(tlearn_model_predict(s[2], x, NB, want, NB * CLS));
    job jobs[3] = {{s[0], 6, 100, 0, NULL, NULL, 0}, {s[1], 6, 101, 0, NULL, NULL, 0},
                   {s[2], 0, 0, 1, x, want, 40}};
    pthread_t t[3];
    for (int k = 0; k < 3; k++)
        assert_int_equal(pthread_create(&t[k], NULL, run_job, &jobs[k]), 0);
    for (int k = 0; k < 3; k++) {
        void *r;
        assert_int_equal(pthread_join(t[k], &r), 0);
        assert_null(r);
    }
    float a[NB * CLS], b[NB * CLS];
    for (int k = 0; k < 2; k++) {
        OK(tlearn_model_predict(s[k], x, NB, a, NB * CLS));
        OK(tlearn_model_predict(ref[k], x, NB, b, NB * CLS));
        assert_memory_equal(a, b, sizeof a);
        assert_ptr_equal(tensor_data(s[k], "conv.weight"), tensor_data(base, "conv.weight"));
    }
    tlearn_model_destroy(&s[1]); /* any order */
    tlearn_model_destroy(&base);
    tlearn_model_destroy(&ref[0]);
    tlearn_model_destroy(&s[2]);
    tlearn_model_destroy(&s[0]);
    tlearn_model_destroy(&ref[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_basics),
        cmocka_unit_test(test_shared_chain),
        cmocka_unit_test(test_shared_attention),
        cmocka_unit_test(test_shared_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
