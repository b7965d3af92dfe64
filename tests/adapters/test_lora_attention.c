/* LoRA on attention projections: the split attention kind against a double-precision
 * reference and finite differences, the split of the fused layer (names, unchanged
 * outputs with and without a mask, freeze flags following the tensors), LoRA on q_proj /
 * v_proj / out_proj against a double reference of the adapted projections, merge / unmerge,
 * adapter files and checkpoints round trip. */
#include <unistd.h>

#include "harness.h"
#include "common.h"
#include "model/model.h"

#define T 5
#define D 8
#define H 2
#define NB 3
#define CLS 3

/* x (T, D) -> enc.self_attn (H heads) -> pool (mean) -> head dense(CLS) */
static tlearn_model *seq_model(uint64_t seed, int with_mask)
{
    tlearn_model *m;
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 2, (const int[]){T, D}));
    if (with_mask)
        OK(tlearn_model_add_input(m, "mask", TLEARN_DTYPE_INT32, 1, (const int[]){T}));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_attention(m, "enc.self_attn", H, 0, with_mask ? "mask" : NULL));
    OK(tlearn_model_add_token_pool(m, "pool", 1, NULL));
    OK(tlearn_model_add_dense(m, "head", CLS));
    return m;
}

static void input(float *x)
{
    test_rng r = {5};
    test_fill(&r, x, NB * T * D, -1, 1);
}

static void predict(tlearn_model *m, const float *x, float *out)
{
    OK(tlearn_model_predict(m, x, NB, out, NB * CLS));
}

static void get(const tlearn_model *m, const char *name, float *v, size_t n)
{
    OK(tlearn_model_get_tensor(m, name, v, n));
}

static void fill(tlearn_model *m, const char *name, size_t n, uint64_t seed)
{
    test_rng r = {seed};
    float v[D * D];
    test_fill(&r, v, n, -0.5, 0.5);
    OK(tlearn_model_set_tensor(m, name, v, n));
}

/* ---- the split kind ---- */

static void test_split_kind(void **state)
{
    (void)state;
    tl_shape s = tl_shape_of(2, (const int[]){T, D});
    tl_shape ins[3] = {s, s, s};
    for (int causal = 0; causal < 2; causal++) {
        lh h;
        int ia[4] = {H, causal, 0, 1}; /* heads causal pad_true split */
        assert_int_equal(lh_make_shapes(&h, &tl_attention_ops, 3, ins, ia, 4, NULL, 0, 2, 1),
                         TLEARN_OK);
        assert_int_equal(h.L->nparam, 0);
        (void)lh_loss(&h);
        /* reference in double: per example and head softmax(q k^T / sqrt(hd)) v */
        int hd = D / H;
        for (size_t e = 0; e < 2; e++)
            for (int hh = 0; hh < H; hh++)
                for (int i = 0; i < T; i++) {
                    double sc[T], mx = -1e300, sum = 0.0;
                    int seen = causal ? i + 1 : T;
                    for (int j = 0; j < seen; j++) {
                        double a = 0.0;
                        for (int c = 0; c < hd; c++)
                            a += (double)h.x[0][(e * T + i) * D + hh * hd + c] *
                                 h.x[1][(e * T + j) * D + hh * hd + c];
                        sc[j] = a / sqrt((double)hd);
                        mx = sc[j] > mx ? sc[j] : mx;
                    }
                    for (int j = 0; j < seen; j++)
                        sum += sc[j] = exp(sc[j] - mx);
                    for (int c = 0; c < hd; c++) {
                        double v = 0.0;
                        for (int j = 0; j < seen; j++)
                            v += sc[j] / sum * h.x[2][(e * T + j) * D + hh * hd + c];
                        assert_true(test_close(h.out[(e * T + i) * D + hh * hd + c], v, 1e-5,
                                               1e-6));
                    }
                }
        lh_gradcheck(&h, 1e-2f, 2e-4, 2e-3);
        lh_free(&h);
    }
    /* Q, K, V of different shapes are refused */
    lh h;
    tl_shape bad[3] = {s, s, tl_shape_of(2, (const int[]){T, D + 2})};
    int ia[4] = {H, 0, 0, 1};
    assert_int_equal(lh_make_shapes(&h, &tl_attention_ops, 3, bad, ia, 4, NULL, 0, 2, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
}

/* ---- the split of the fused layer ---- */

static void test_split_graph(void **state)
{
    (void)state;
    float x[NB * T * D], before[NB * CLS], after[NB * CLS];
    input(x);
    tlearn_model *m = seq_model(3, 0);
    fill(m, "enc.self_attn.in_proj_bias", 3 * D, 21);
    fill(m, "enc.self_attn.out_proj.bias", D, 22);
    predict(m, x, before);
    float win[3 * D * D], bin[3 * D], wout[D * D];
    get(m, "enc.self_attn.in_proj_weight", win, 3 * D * D);
    get(m, "enc.self_attn.in_proj_bias", bin, 3 * D);
    get(m, "enc.self_attn.out_proj.weight", wout, D * D);
    /* refusals come before the split: the model is unchanged */
    int n0, n1;
    OK(tlearn_model_layer_count(m, &n0));
    assert_int_equal(tlearn_lora_add(m, "an_adapter_name_long_enough_to_overflow", "*.v_proj", 2,
                                     4.0f, 0.0f, 0), TLEARN_EINVAL);
    OK(tlearn_model_layer_count(m, &n1));
    assert_int_equal(n1, n0);
    float chk[3 * D * D];
    get(m, "enc.self_attn.in_proj_weight", chk, 3 * D * D);
    /* BitFit-style flags on the fused layer follow the tensors into the split */
    tlearn_freeze *f;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_tensors(f, "enc.self_attn.in_proj_weight", 1));
    OK(tlearn_model_apply_freeze(m, f));
    OK(tlearn_lora_add(m, "ad", "*.self_attn.v_proj", 2, 4.0f, 0.0f, 0));
    static const char *const names[] = {"enc.self_attn.q_proj", "enc.self_attn.k_proj",
                                        "enc.self_attn.v_proj", "enc.self_attn",
                                        "enc.self_attn.out_proj"};
    int at[5];
    for (int k = 0; k < 5; k++)
        OK(tlearn_model_layer_index(m, names[k], &at[k]));
    for (int k = 1; k < 5; k++) /* in this order; the v_proj LoRA sits right after v_proj */
        assert_true(at[k] > at[k - 1]);
    int kind;
    OK(tlearn_model_layer_kind(m, at[3], &kind));
    assert_int_equal(kind, TLEARN_LAYER_ATTENTION);
    float w[D * D], b[D];
    assert_int_equal(tlearn_model_get_tensor(m, "enc.self_attn.in_proj_weight", w, D * D),
                     TLEARN_ENOTFOUND);
    for (int k = 0; k < 3; k++) {
        char nm[64];
        snprintf(nm, sizeof nm, "%s.weight", names[k]);
        get(m, nm, w, D * D);
        assert_memory_equal(w, win + k * D * D, sizeof w);
        snprintf(nm, sizeof nm, "%s.bias", names[k]);
        get(m, nm, b, D);
        assert_memory_equal(b, bin + k * D, sizeof b);
        int fr;
        snprintf(nm, sizeof nm, "%s.weight", names[k]);
        OK(tlearn_model_tensor_frozen(m, nm, &fr));
        assert_int_equal(fr, 1);
        snprintf(nm, sizeof nm, "%s.bias", names[k]);
        OK(tlearn_model_tensor_frozen(m, nm, &fr));
        assert_int_equal(fr, k == 2); /* v_proj: frozen whole by LoRA */
    }
    get(m, "enc.self_attn.out_proj.weight", w, D * D);
    assert_memory_equal(w, wout, sizeof w);
    predict(m, x, after);
    for (int i = 0; i < NB * CLS; i++)
        assert_true(test_close(after[i], before[i], 1e-5, 1e-6));
    /* a second adapter on another projection does not split again */
    OK(tlearn_model_layer_count(m, &n0));
    OK(tlearn_lora_add(m, "ad2", "*.q_proj", 2, 4.0f, 0.0f, 0));
    OK(tlearn_model_layer_count(m, &n1));
    assert_int_equal(n1, n0 + 3);
    tlearn_freeze_destroy(&f);
    tlearn_model_destroy(&m);

    /* with a key-padding mask, through tlearn_model_run */
    m = seq_model(4, 1);
    int32_t mask[NB * T];
    for (int i = 0; i < NB * T; i++)
        mask[i] = (i % T) < T - 1 - i / T; /* 4, 3, 2 positions kept */
    const void *in[2] = {x, mask};
    float *o1[1] = {before}, *o2[1] = {after};
    size_t len[1] = {NB * CLS};
    OK(tlearn_model_run(m, in, 2, NB, o1, len, 1));
    OK(tlearn_lora_add(m, "ad", "*.out_proj", 2, 4.0f, 0.0f, 0));
    OK(tlearn_model_run(m, in, 2, NB, o2, len, 1));
    for (int i = 0; i < NB * CLS; i++)
        assert_true(test_close(after[i], before[i], 1e-5, 1e-6));
    tlearn_model_destroy(&m);
}

/* ---- LoRA on q, v and out: forward against double, merge, files, checkpoints ---- */

/* (rows x in) x W^T + b in double */
static void lin(const double *x, const float *w, const float *b, int rows, int in, int out,
                double *y)
{
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < out; o++) {
            double a = b ? b[o] : 0.0;
            for (int i = 0; i < in; i++)
                a += x[r * in + i] * w[o * in + i];
            y[r * out + o] = a;
        }
}

/* The model's logits in double from its tensors: projections with LoRA (scale e) on the
 * names in @p adapted. */
static void reference(const tlearn_model *m, const float *x, double e, double *logits)
{
    static const char *const P[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    double xs[T * D], proj[4][T * D], ctx[T * D];
    for (int n = 0; n < NB; n++) {
        for (int i = 0; i < T * D; i++)
            xs[i] = x[n * T * D + i];
        for (int k = 0; k < 4; k++) {
            char nm[96];
            float w[D * D], b[D], a[2 * D], bb[D * 2];
            const double *src = k < 3 ? xs : ctx;
            if (k == 3) { /* attention core from proj[0..2] */
                int hd = D / H;
                for (int hh = 0; hh < H; hh++)
                    for (int i = 0; i < T; i++) {
                        double sc[T], mx = -1e300, sum = 0;
                        for (int j = 0; j < T; j++) {
                            double s = 0;
                            for (int c = 0; c < hd; c++)
                                s += proj[0][i * D + hh * hd + c] * proj[1][j * D + hh * hd + c];
                            sc[j] = s / sqrt((double)hd);
                            mx = sc[j] > mx ? sc[j] : mx;
                        }
                        for (int j = 0; j < T; j++)
                            sum += sc[j] = exp(sc[j] - mx);
                        for (int c = 0; c < hd; c++) {
                            double v = 0;
                            for (int j = 0; j < T; j++)
                                v += sc[j] / sum * proj[2][j * D + hh * hd + c];
                            ctx[i * D + hh * hd + c] = v;
                        }
                    }
            }
            snprintf(nm, sizeof nm, "enc.self_attn.%s.weight", P[k]);
            get(m, nm, w, D * D);
            snprintf(nm, sizeof nm, "enc.self_attn.%s.bias", P[k]);
            get(m, nm, b, D);
            lin(src, w, b, T, D, D, proj[k]);
            if (k == 1)
                continue; /* no LoRA on k_proj */
            double ax[T * 2], bax[T * D];
            snprintf(nm, sizeof nm, "enc.self_attn.%s.lora_A.ad.weight", P[k]);
            get(m, nm, a, 2 * D);
            snprintf(nm, sizeof nm, "enc.self_attn.%s.lora_B.ad.weight", P[k]);
            get(m, nm, bb, D * 2);
            lin(src, a, NULL, T, D, 2, ax);
            lin(ax, bb, NULL, T, 2, D, bax);
            for (int i = 0; i < T * D; i++)
                proj[k][i] += e * bax[i];
        }
        double pooled[D] = {0}, hw;
        for (int i = 0; i < T; i++)
            for (int c = 0; c < D; c++)
                pooled[c] += proj[3][i * D + c] / T;
        float w[CLS * D], b[CLS];
        get(m, "head.weight", w, CLS * D);
        get(m, "head.bias", b, CLS);
        for (int o = 0; o < CLS; o++) {
            hw = b[o];
            for (int c = 0; c < D; c++)
                hw += (double)w[o * D + c] * pooled[c];
            logits[n * CLS + o] = hw;
        }
    }
}

static void check_ref(const tlearn_model *m, const float *x, const float *out, double e)
{
    double ref[NB * CLS];
    reference(m, x, e, ref);
    for (int i = 0; i < NB * CLS; i++)
        assert_true(test_close(out[i], ref[i], 1e-4, 1e-5));
}

static void test_lora_qv_out(void **state)
{
    (void)state;
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "/tmp/tlearn-lora-attn-%d", (int)getpid());
    float x[NB * T * D], out[NB * CLS], merged[NB * CLS], back[NB * CLS];
    input(x);
    tlearn_model *m = seq_model(6, 0);
    OK(tlearn_lora_add(m, "ad", "enc.self_attn.[qv]_proj", 2, 3.0f, 0.0f, 0));
    assert_int_equal(tlearn_lora_add(m, "ad", "*.out_proj", 2, 3.0f, 0.0f, 0), TLEARN_EINVAL);
    OK(tlearn_lora_remove(m, "ad"));
    OK(tlearn_lora_add(m, "ad", "*self_attn.[qvo]*_proj", 2, 3.0f, 0.0f, 0));
    static const char *const P[3] = {"q_proj", "v_proj", "out_proj"};
    for (int k = 0; k < 3; k++) {
        char nm[96];
        snprintf(nm, sizeof nm, "enc.self_attn.%s.lora_B.ad.weight", P[k]);
        fill(m, nm, D * 2, 40 + (uint64_t)k);
    }
    predict(m, x, out);
    check_ref(m, x, out, 1.5);
    /* a few AdamW steps train the adapters only, and the reference still holds */
    float w0[D * D], w1[D * D];
    get(m, "enc.self_attn.q_proj.weight", w0, D * D);
    tlearn_freeze *f; /* the head too, so that a file of the adapter alone reproduces m */
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_match(f, "head", 1));
    OK(tlearn_freeze_match(f, "*_proj", 1));
    OK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAMW));
    int32_t y[NB] = {0, 1, 2};
    for (int s = 0; s < 3; s++) {
        float loss;
        OK(tlearn_model_train_step(m, o, x, y, NB, &loss));
    }
    get(m, "enc.self_attn.q_proj.weight", w1, D * D);
    assert_memory_equal(w0, w1, sizeof w0);
    predict(m, x, out);
    check_ref(m, x, out, 1.5);
    /* merge folds into the projections; unmerge restores them within rounding */
    OK(tlearn_lora_merge(m, "ad"));
    predict(m, x, merged);
    for (int i = 0; i < NB * CLS; i++)
        assert_true(test_close(merged[i], out[i], 1e-4, 1e-5));
    OK(tlearn_lora_unmerge(m, "ad"));
    get(m, "enc.self_attn.q_proj.weight", w1, D * D);
    for (int i = 0; i < D * D; i++)
        assert_true(fabsf(w1[i] - w0[i]) <= 1e-6f * (1.0f + fabsf(w0[i])));
    predict(m, x, back);
    for (int i = 0; i < NB * CLS; i++)
        assert_true(test_close(back[i], out[i], 1e-5, 1e-6));
    /* adapter files: a fresh fused model is split by the load and predicts the same */
    OK(tlearn_lora_save(m, "ad", dir));
    tlearn_model *l = seq_model(6, 0);
    OK(tlearn_lora_load(l, "ad", dir));
    predict(l, x, back);
    for (int i = 0; i < NB * CLS; i++)
        assert_true(test_close(back[i], out[i], 1e-5, 1e-6));
    /* checkpoints keep the split form and the adapters */
    snprintf(path, sizeof path, "%s/model.tlm", dir);
    OK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_INFERENCE));
    tlearn_model *c;
    OK(tlearn_model_load(&c, NULL, path));
    predict(c, x, back);
    predict(m, x, merged); /* m after unmerge: equal to out within rounding, not bit for bit */
    assert_memory_equal(back, merged, sizeof back);
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    unlink(path);
    rmdir(dir);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&l);
    tlearn_model_destroy(&c);
}

int main(void)
{
    (void)lh_make;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_kind),
        cmocka_unit_test(test_split_graph),
        cmocka_unit_test(test_lora_qv_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
