/* LoRA and bottleneck adapters: the lora_sum kind against hand values and finite
 * differences, the graph edit (names, rewiring, freezing, unchanged predictions), forward
 * against a double-precision reference of W x + b + s B A x, merge/unmerge bounds, enable /
 * disable / combine, adapter files round trip and refusals, checkpoints with exact resume,
 * conv2d targets, bottleneck adapters and atomic failures. */
#include <unistd.h>

#include "harness.h"
#include "common.h"
#include "model/model.h"

#define IN 6
#define HID 5
#define OUT 3
#define NB 4

/* in(6) -> fc1 dense(5) -> relu -> fc2 dense(3) */
static tlearn_model *mlp(uint64_t seed, int hid)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, IN, 1, 1));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_dense(m, "fc1", hid));
    OK(tlearn_model_add_activation(m, "act", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", OUT));
    return m;
}

static void get(tlearn_model *m, const char *name, float *v, size_t n)
{
    OK(tlearn_model_get_tensor(m, name, v, n));
}

static void fill(tlearn_model *m, const char *name, size_t n, uint64_t seed)
{
    test_rng r = {seed};
    float v[256];
    test_fill(&r, v, n, -0.5, 0.5);
    OK(tlearn_model_set_tensor(m, name, v, n));
}

static void predict(tlearn_model *m, const float *x, float *out)
{
    OK(tlearn_model_predict(m, x, NB, out, NB * OUT));
}

static int count(tlearn_model *m)
{
    int c;
    OK(tlearn_model_layer_count(m, &c));
    return c;
}

/* ---- the kind ---- */

static void test_lora_sum_kind(void **state)
{
    (void)state;
    lh h;
    tl_shape in = tl_shape1(7);
    int ia[3] = {4, 0, 0};
    float fa[2] = {3.0f, 0.5f}; /* e = 3/4 * 0.5 = 0.375 */
    assert_int_equal(lh_make(&h, &tl_lora_sum_ops, 2, in, ia, 3, fa, 2, 3, 1), TLEARN_OK);
    (void)lh_loss(&h);
    for (size_t i = 0; i < h.out_len; i++)
        assert_true(test_close(h.out[i], h.x[0][i] + 0.375 * h.x[1][i], 1e-6, 1e-7));
    lh_gradcheck(&h, 1e-2f, 1e-4, 1e-3);
    lh_free(&h);
    int rs[3] = {4, 1, 0}; /* rsLoRA: 3/sqrt(4) * 0.5 = 0.75 */
    assert_int_equal(lh_make(&h, &tl_lora_sum_ops, 2, in, rs, 3, fa, 2, 3, 1), TLEARN_OK);
    (void)lh_loss(&h);
    for (size_t i = 0; i < h.out_len; i++)
        assert_true(test_close(h.out[i], h.x[0][i] + 0.75 * h.x[1][i], 1e-6, 1e-7));
    lh_free(&h);
    int mg[3] = {4, 0, 1}; /* merged: the branch adds nothing */
    assert_int_equal(lh_make(&h, &tl_lora_sum_ops, 2, in, mg, 3, fa, 2, 3, 1), TLEARN_OK);
    h.x[1][0] = NAN;
    (void)lh_loss(&h);
    for (size_t i = 0; i < h.out_len; i++)
        assert_true(h.out[i] == h.x[0][i]);
    lh_free(&h);
    int bad[3] = {0, 0, 0};
    assert_int_equal(lh_make(&h, &tl_lora_sum_ops, 2, in, bad, 3, fa, 2, 3, 1), TLEARN_EINVAL);
    lh_free(&h);
}

/* ---- the graph edit and the forward ---- */

/* Reference in double: relu(W1 x + b1 + s1 B1 A1 x) then W2 h + b2 + s2 B2 A2 h. */
static void reference(tlearn_model *m, const float *x, double s, double *out)
{
    float W1[HID * IN], b1[HID], A1[2 * IN], B1[HID * 2], W2[OUT * HID], b2[OUT], A2[2 * HID],
        B2[OUT * 2];
    get(m, "fc1.weight", W1, HID * IN);
    get(m, "fc1.bias", b1, HID);
    get(m, "fc1.lora_A.ad.weight", A1, 2 * IN);
    get(m, "fc1.lora_B.ad.weight", B1, HID * 2);
    get(m, "fc2.weight", W2, OUT * HID);
    get(m, "fc2.bias", b2, OUT);
    get(m, "fc2.lora_A.ad.weight", A2, 2 * HID);
    get(m, "fc2.lora_B.ad.weight", B2, OUT * 2);
    for (int n = 0; n < NB; n++) {
        const float *xn = x + n * IN;
        double h[HID], a[2];
        for (int k = 0; k < 2; k++) {
            a[k] = 0;
            for (int j = 0; j < IN; j++)
                a[k] += (double)A1[k * IN + j] * xn[j];
        }
        for (int i = 0; i < HID; i++) {
            double v = b1[i], d = 0;
            for (int j = 0; j < IN; j++)
                v += (double)W1[i * IN + j] * xn[j];
            for (int k = 0; k < 2; k++)
                d += (double)B1[i * 2 + k] * a[k];
            v += s * d;
            h[i] = v > 0 ? v : 0;
        }
        for (int k = 0; k < 2; k++) {
            a[k] = 0;
            for (int j = 0; j < HID; j++)
                a[k] += (double)A2[k * HID + j] * h[j];
        }
        for (int i = 0; i < OUT; i++) {
            double v = b2[i], d = 0;
            for (int j = 0; j < HID; j++)
                v += (double)W2[i * HID + j] * h[j];
            for (int k = 0; k < 2; k++)
                d += (double)B2[i * 2 + k] * a[k];
            out[n * OUT + i] = v + s * d;
        }
    }
}

static void test_lora_graph(void **state)
{
    (void)state;
    tlearn_model *m = mlp(7, HID);
    float x[NB * IN], y0[NB * OUT], y[NB * OUT];
    test_rng r = {3};
    test_fill(&r, x, NB * IN, -1, 1);
    predict(m, x, y0);
    OK(tlearn_lora_add(m, "ad", "fc*", 2, 3.0f, 0.0f, 0));
    assert_int_equal(count(m), 3 + 2 * 3);
    const char *want[] = {"fc1", "fc1.lora_A.ad", "fc1.lora_B.ad", "fc1.lora.ad", "act", "fc2",
                          "fc2.lora_A.ad", "fc2.lora_B.ad", "fc2.lora.ad"};
    for (int i = 0; i < 9; i++) {
        const char *nm;
        OK(tlearn_model_layer_name(m, i, &nm));
        assert_string_equal(nm, want[i]);
    }
    int kind, fr;
    OK(tlearn_model_layer_kind(m, 3, &kind));
    assert_int_equal(kind, TLEARN_LAYER_LORA_SUM);
    /* readers rewired: act reads the sum, the output is the last sum */
    assert_int_equal(m->layers[4]->input[0], 3);
    assert_int_equal(tl_model_output(m, 0), 8);
    OK(tlearn_model_layer_frozen(m, "fc1", &fr));
    assert_int_equal(fr, 1);
    OK(tlearn_model_layer_frozen(m, "fc1.lora_A.ad", &fr));
    assert_int_equal(fr, 0);
    size_t total, trainable;
    OK(tlearn_model_param_count(m, &total, &trainable));
    assert_int_equal(trainable, 2 * IN + HID * 2 + 2 * HID + OUT * 2);
    /* B is zero: the model is unchanged, bit for bit */
    predict(m, x, y);
    assert_memory_equal(y, y0, sizeof y);
    /* with B filled: the double reference of W x + b + (alpha/r) B A x */
    fill(m, "fc1.lora_B.ad.weight", HID * 2, 11);
    fill(m, "fc2.lora_B.ad.weight", OUT * 2, 12);
    double ref[NB * OUT];
    reference(m, x, 1.5, ref);
    predict(m, x, y);
    for (int i = 0; i < NB * OUT; i++)
        assert_true(test_close(y[i], ref[i], 1e-5, 1e-6));
    /* weight 0.5 halves the scale; set_active(NULL) gives the base back bit for bit */
    OK(tlearn_lora_set_weight(m, "ad", 0.5f));
    reference(m, x, 0.75, ref);
    predict(m, x, y);
    for (int i = 0; i < NB * OUT; i++)
        assert_true(test_close(y[i], ref[i], 1e-5, 1e-6));
    OK(tlearn_lora_set_active(m, NULL));
    predict(m, x, y);
    assert_memory_equal(y, y0, sizeof y);
    OK(tlearn_lora_set_active(m, "ad"));
    reference(m, x, 1.5, ref);
    predict(m, x, y);
    for (int i = 0; i < NB * OUT; i++)
        assert_true(test_close(y[i], ref[i], 1e-5, 1e-6));
    /* removal restores the graph and the base predictions */
    OK(tlearn_lora_remove(m, "ad"));
    assert_int_equal(count(m), 3);
    assert_int_equal(m->layers[1]->input[0], 0);
    predict(m, x, y);
    assert_memory_equal(y, y0, sizeof y);
    tlearn_model_destroy(&m);
}

static void test_lora_rslora_dropout(void **state)
{
    (void)state;
    tlearn_model *m = mlp(7, HID);
    OK(tlearn_lora_add(m, "ad", "fc*", 2, 3.0f, 0.25f, TLEARN_LORA_RSLORA));
    assert_int_equal(count(m), 3 + 2 * 4);
    int i;
    OK(tlearn_model_layer_index(m, "fc1.lora_dropout.ad", &i));
    assert_int_equal(i, 1);
    fill(m, "fc1.lora_B.ad.weight", HID * 2, 11);
    fill(m, "fc2.lora_B.ad.weight", OUT * 2, 12);
    float x[NB * IN], y[NB * OUT];
    test_rng r = {3};
    test_fill(&r, x, NB * IN, -1, 1);
    double ref[NB * OUT];
    reference(m, x, 3.0 / sqrt(2.0), ref); /* predict: dropout is the identity */
    predict(m, x, y);
    for (int k = 0; k < NB * OUT; k++)
        assert_true(test_close(y[k], ref[k], 1e-5, 1e-6));
    tlearn_model_destroy(&m);
}

/* ---- merge ---- */

static void merge_check(tlearn_model *m, const char *wname, size_t wn, const float *x,
                        size_t nx, size_t ny)
{
    float *W0 = malloc(wn * 4), *W1 = malloc(wn * 4), *y0 = malloc(ny * 4),
          *y1 = malloc(ny * 4);
    get(m, wname, W0, wn);
    OK(tlearn_model_predict(m, x, nx, y0, ny));
    OK(tlearn_lora_merge(m, "ad"));
    assert_int_equal(tlearn_lora_merge(m, "ad"), TLEARN_ESTATE);
    assert_int_equal(tlearn_lora_set_weight(m, "ad", 2.0f), TLEARN_ESTATE);
    OK(tlearn_model_predict(m, x, nx, y1, ny));
    for (size_t i = 0; i < ny; i++)
        assert_true(test_close(y1[i], y0[i], 1e-5, 1e-5));
    get(m, wname, W1, wn);
    float D[4096];
    for (size_t i = 0; i < wn; i++)
        D[i] = W1[i] - W0[i];
    OK(tlearn_lora_unmerge(m, "ad"));
    get(m, wname, W1, wn);
    /* documented bound: |W' - W| <= 2^-23 (|W| + |D|) */
    for (size_t i = 0; i < wn; i++)
        assert_true(fabs((double)W1[i] - W0[i]) <=
                    ldexp(1.0, -23) * (fabs(W0[i]) + 2.0 * fabs(D[i])));
    OK(tlearn_model_predict(m, x, nx, y1, ny));
    for (size_t i = 0; i < ny; i++)
        assert_true(test_close(y1[i], y0[i], 1e-5, 1e-6));
    assert_int_equal(tlearn_lora_unmerge(m, "ad"), TLEARN_ESTATE);
    free(W0);
    free(W1);
    free(y0);
    free(y1);
}

static void test_lora_merge_dense(void **state)
{
    (void)state;
    tlearn_model *m = mlp(9, HID);
    OK(tlearn_lora_add(m, "ad", "fc*", 2, 4.0f, 0.0f, 0));
    fill(m, "fc1.lora_B.ad.weight", HID * 2, 21);
    fill(m, "fc2.lora_B.ad.weight", OUT * 2, 22);
    float x[NB * IN];
    test_rng r = {5};
    test_fill(&r, x, NB * IN, -1, 1);
    float W[HID * IN], A[2 * IN], B[HID * 2];
    get(m, "fc1.weight", W, HID * IN);
    get(m, "fc1.lora_A.ad.weight", A, 2 * IN);
    get(m, "fc1.lora_B.ad.weight", B, HID * 2);
    OK(tlearn_lora_merge(m, "ad"));
    float Wm[HID * IN];
    get(m, "fc1.weight", Wm, HID * IN);
    for (int i = 0; i < HID; i++) /* W + 2 B A, by hand in double */
        for (int j = 0; j < IN; j++) {
            double d = 0;
            for (int k = 0; k < 2; k++)
                d += (double)B[i * 2 + k] * A[k * IN + j];
            assert_true(test_close(Wm[i * IN + j], W[i * IN + j] + 2.0 * d, 1e-6, 1e-7));
        }
    OK(tlearn_lora_unmerge(m, "ad"));
    merge_check(m, "fc1.weight", HID * IN, x, NB, NB * OUT);
    tlearn_model_destroy(&m);
}

static void test_lora_conv(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 6, 6));
    OK(tlearn_model_add_conv2d_ex(m, "conv", 4, 3, 2, 2, 1, 1, 0, 1, 2, 1, 1));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc", OUT));
    OK(tlearn_lora_add(m, "ad", "conv", 2, 2.0f, 0.0f, 0));
    int nd, dims[4];
    size_t n;
    int ia = -1;
    OK(tlearn_model_layer_index(m, "conv.lora_A.ad", &ia));
    OK(tlearn_model_tensor_info(m, 2, NULL, &n, &nd, dims)); /* conv.lora_A.ad.weight */
    assert_int_equal(nd, 4);
    assert_int_equal(dims[0], 2);
    assert_int_equal(dims[1], 3);
    assert_int_equal(dims[2], 3);
    assert_int_equal(dims[3], 2);
    fill(m, "conv.lora_B.ad.weight", 4 * 2, 31);
    float x[NB * 3 * 36];
    test_rng r = {8};
    test_fill(&r, x, NB * 3 * 36, -1, 1);
    /* the branch's output equals a conv with the merged weights (merge_check) */
    merge_check(m, "conv.weight", 4 * 3 * 3 * 2, x, NB, NB * OUT);
    tlearn_model_destroy(&m);
    /* groups > 1 is refused, and nothing changes */
    OK(tlearn_model_create(&m, 4, 5, 5));
    OK(tlearn_model_add_conv2d(m, "dw", 4, 3, 1, 1, 2));
    assert_int_equal(tlearn_lora_add(m, "ad", "dw", 2, 2.0f, 0.0f, 0), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "groups"));
    assert_int_equal(count(m), 1);
    tlearn_model_destroy(&m);
}

/* ---- refusals leave the model as it was ---- */

static void test_lora_refusals(void **state)
{
    (void)state;
    tlearn_model *m = mlp(7, HID);
    assert_int_equal(tlearn_lora_add(m, "ad", "nothing*", 2, 1.0f, 0.0f, 0), TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_lora_add(m, "ad", "act", 2, 1.0f, 0.0f, 0), TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_lora_add(m, "a.b", "fc*", 2, 1.0f, 0.0f, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_lora_add(m, "ad", "fc*", 0, 1.0f, 0.0f, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_lora_add(m, "ad", "fc*", 2, NAN, 0.0f, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_lora_add(m, "ad", "fc*", 2, 1.0f, 1.0f, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_lora_add(m, "ad", "fc*", 2, 1.0f, 0.0f, 8), TLEARN_EINVAL);
    assert_int_equal(tlearn_lora_add(NULL, "ad", "fc*", 2, 1.0f, 0.0f, 0), TLEARN_EINVAL);
    /* the second target's names collide with an existing layer: the first target's
     * branch, already inserted, is taken out again and the random stream restored */
    OK(tlearn_model_add_dense(m, "fc2.lora_A.x", 2));
    tl_rng before = m->rng;
    assert_int_equal(tlearn_lora_add(m, "x", "fc?", 2, 1.0f, 0.0f, 0), TLEARN_EINVAL);
    assert_int_equal(count(m), 4);
    assert_memory_equal(&m->rng, &before, sizeof before);
    int fr;
    OK(tlearn_model_layer_frozen(m, "fc1", &fr));
    assert_int_equal(fr, 0);
    assert_int_equal(tlearn_lora_merge(m, "none"), TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_lora_set_active(m, NULL), TLEARN_ENOTFOUND);
    OK(tlearn_lora_add(m, "ad", "fc?", 2, 1.0f, 0.0f, 0));
    assert_int_equal(tlearn_lora_add(m, "ad", "fc1", 2, 1.0f, 0.0f, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_lora_set_weight(m, "ad", INFINITY), TLEARN_EINVAL);
    assert_int_equal(tlearn_lora_set_active(m, "other"), TLEARN_ENOTFOUND);
    tlearn_model_destroy(&m);
}

/* ---- two adapters on one base ---- */

static void test_lora_two_adapters(void **state)
{
    (void)state;
    tlearn_model *m = mlp(7, HID);
    float x[NB * IN], y0[NB * OUT], ya[NB * OUT], yb[NB * OUT], y[NB * OUT];
    test_rng r = {3};
    test_fill(&r, x, NB * IN, -1, 1);
    predict(m, x, y0);
    OK(tlearn_lora_add(m, "a", "fc2", 2, 2.0f, 0.0f, 0));
    OK(tlearn_lora_add(m, "b", "fc2", 2, 2.0f, 0.0f, 0));
    fill(m, "fc2.lora_B.a.weight", OUT * 2, 41);
    fill(m, "fc2.lora_B.b.weight", OUT * 2, 42);
    /* fc2's branches chain: fc2 -> fc2.lora.a -> fc2.lora.b, both read fc2's input */
    int ia, ib;
    OK(tlearn_model_layer_index(m, "fc2.lora.a", &ia));
    OK(tlearn_model_layer_index(m, "fc2.lora.b", &ib));
    assert_int_equal(m->layers[ib]->input[0], ia);
    OK(tlearn_lora_set_active(m, "a"));
    predict(m, x, ya);
    OK(tlearn_lora_set_active(m, "b"));
    predict(m, x, yb);
    /* fc2 is linear in its branches: weights 1 and 1 give ya + yb - y0 */
    OK(tlearn_lora_set_weight(m, "a", 1.0f));
    predict(m, x, y);
    for (int i = 0; i < NB * OUT; i++)
        assert_true(test_close(y[i], (double)ya[i] + yb[i] - y0[i], 1e-5, 1e-6));
    OK(tlearn_lora_remove(m, "a"));
    predict(m, x, y);
    assert_memory_equal(y, yb, sizeof y);
    tlearn_model_destroy(&m);
}

/* ---- files ---- */

static void tmpdir(char *buf, const char *tag)
{
    snprintf(buf, 256, "/tmp/tlearn-lora-%d-%s", (int)getpid(), tag);
}

static void test_lora_files(void **state)
{
    (void)state;
    char dir[256], path[300];
    tmpdir(dir, "files");
    tlearn_model *m = mlp(7, HID), *b = mlp(7, HID), *bad = mlp(7, HID + 1);
    OK(tlearn_lora_add(m, "ad", "fc*", 2, 3.0f, 0.1f, TLEARN_LORA_RSLORA));
    fill(m, "fc1.lora_B.ad.weight", HID * 2, 11);
    fill(m, "fc2.lora_B.ad.weight", OUT * 2, 12);
    OK(tlearn_lora_save(m, "ad", dir));
    OK(tlearn_lora_load(b, "mine", dir));
    float x[NB * IN], y[NB * OUT], yb[NB * OUT];
    test_rng r = {3};
    test_fill(&r, x, NB * IN, -1, 1);
    predict(m, x, y);
    predict(b, x, yb);
    assert_memory_equal(y, yb, sizeof y);
    int i;
    OK(tlearn_model_layer_index(b, "fc1.lora_dropout.mine", &i));
    /* a base whose fc1 is wider: ESHAPE naming the tensor, and nothing changes */
    assert_int_equal(tlearn_lora_load(bad, "ad", dir), TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "fc1.lora_B.ad.weight"));
    assert_int_equal(count(bad), 3);
    /* a base without fc2: the file's fc2 tensors fit no target */
    tlearn_model *short_m;
    OK(tlearn_model_create(&short_m, IN, 1, 1));
    OK(tlearn_model_add_dense(short_m, "fc1", HID));
    assert_int_equal(tlearn_lora_load(short_m, "ad", dir), TLEARN_ENOTFOUND);
    assert_int_equal(count(short_m), 1);
    /* a config that PEFT might write but we cannot run */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"r\": 2, \"lora_alpha\": 3, \"bias\": \"all\", \"target_modules\": [\"fc1\"]}", f);
    fclose(f);
    assert_int_equal(tlearn_lora_load(bad, "ad", dir), TLEARN_EFORMAT);
    assert_int_equal(count(bad), 3);
    assert_int_equal(tlearn_lora_load(bad, "ad", "/nonexistent-dir"), TLEARN_EIO);
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    unlink(path);
    rmdir(dir);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&b);
    tlearn_model_destroy(&bad);
    tlearn_model_destroy(&short_m);
}

/* ---- checkpoints and exact resume of LoRA training ---- */

static void train(tlearn_model *m, tlearn_optim *o, const float *x, const int32_t *y, int steps)
{
    for (int s = 0; s < steps; s++) {
        float loss;
        OK(tlearn_model_train_step(m, o, x, y, NB, &loss));
    }
}

static void test_lora_resume(void **state)
{
    (void)state;
    char path[256];
    tmpdir(path, "ckpt");
    tlearn_model *m = mlp(7, HID);
    OK(tlearn_lora_add(m, "ad", "fc*", 2, 3.0f, 0.2f, 0));
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAMW));
    float x[NB * IN];
    int32_t lab[NB] = {0, 1, 2, 1};
    test_rng r = {3};
    test_fill(&r, x, NB * IN, -1, 1);
    float w0[HID * IN];
    get(m, "fc1.weight", w0, HID * IN);
    train(m, o, x, lab, 3);
    OK(tlearn_model_save(m, o, path, TLEARN_SAVE_FULL));
    train(m, o, x, lab, 3);
    tlearn_model *l;
    tlearn_optim *lo;
    OK(tlearn_model_load(&l, &lo, path));
    assert_int_equal(count(l), count(m));
    int fr;
    OK(tlearn_model_layer_frozen(l, "fc1", &fr));
    assert_int_equal(fr, 1);
    train(l, lo, x, lab, 3);
    int nt;
    OK(tlearn_model_tensor_count(m, &nt));
    for (int t = 0; t < nt; t++) {
        const char *nm;
        size_t n;
        OK(tlearn_model_tensor_info(m, t, &nm, &n, NULL, NULL));
        float a[64], b[64];
        get(m, nm, a, n);
        get(l, nm, b, n);
        assert_memory_equal(a, b, n * sizeof(float));
    }
    /* the base never moved; B did */
    float w1[HID * IN], bw[HID * 2];
    get(m, "fc1.weight", w1, HID * IN);
    assert_memory_equal(w0, w1, sizeof w0);
    get(m, "fc1.lora_B.ad.weight", bw, HID * 2);
    int nonzero = 0;
    for (int i = 0; i < HID * 2; i++)
        nonzero |= bw[i] != 0.0f;
    assert_true(nonzero);
    /* disabled and merged state survive a checkpoint */
    OK(tlearn_lora_merge(l, "ad"));
    OK(tlearn_model_save(l, NULL, path, TLEARN_SAVE_INFERENCE));
    tlearn_model *l2;
    OK(tlearn_model_load(&l2, NULL, path));
    assert_int_equal(tlearn_lora_merge(l2, "ad"), TLEARN_ESTATE);
    OK(tlearn_lora_unmerge(l2, "ad"));
    unlink(path);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&l);
    tlearn_model_destroy(&l2);
    tlearn_optim_destroy(&o);
    tlearn_optim_destroy(&lo);
}

/* ---- bottleneck adapters ---- */

static void test_bottleneck(void **state)
{
    (void)state;
    tlearn_model *m = mlp(7, HID);
    float x[NB * IN], y0[NB * OUT], y[NB * OUT];
    test_rng r = {3};
    test_fill(&r, x, NB * IN, -1, 1);
    predict(m, x, y0);
    OK(tlearn_lora_add(m, "ad", "fc1", 2, 3.0f, 0.0f, 0));
    OK(tlearn_adapter_add_bottleneck(m, "bn", "fc1", 3, TLEARN_ACT_RELU));
    /* after fc1's LoRA sum: fc1, A, B, sum, down, act, up, add, act, fc2 */
    const char *want[] = {"fc1", "fc1.lora_A.ad", "fc1.lora_B.ad", "fc1.lora.ad",
                          "fc1.bottleneck_down.bn", "fc1.bottleneck_act.bn",
                          "fc1.bottleneck_up.bn", "fc1.bottleneck.bn", "act", "fc2"};
    assert_int_equal(count(m), 10);
    for (int i = 0; i < 10; i++) {
        const char *nm;
        OK(tlearn_model_layer_name(m, i, &nm));
        assert_string_equal(nm, want[i]);
    }
    assert_int_equal(m->layers[8]->input[0], 7);
    assert_int_equal(m->layers[7]->input[0], 3);
    predict(m, x, y);
    assert_memory_equal(y, y0, sizeof y);
    /* up(relu(down(h))) added by hand */
    fill(m, "fc1.bottleneck_up.bn.weight", HID * 3, 51);
    float h[NB * HID], Wd[3 * HID], bd[3], Wu[HID * 3], bu[HID];
    get(m, "fc1.bottleneck_down.bn.weight", Wd, 3 * HID);
    get(m, "fc1.bottleneck_down.bn.bias", bd, 3);
    get(m, "fc1.bottleneck_up.bn.weight", Wu, HID * 3);
    get(m, "fc1.bottleneck_up.bn.bias", bu, HID);
    OK(tlearn_model_features(m, "fc1.bottleneck.bn", x, NB, h, NB * HID));
    float base[NB * HID];
    OK(tlearn_model_features(m, "fc1.lora.ad", x, NB, base, NB * HID));
    for (int n = 0; n < NB; n++) {
        double z[3];
        for (int k = 0; k < 3; k++) {
            z[k] = bd[k];
            for (int j = 0; j < HID; j++)
                z[k] += (double)Wd[k * HID + j] * base[n * HID + j];
            z[k] = z[k] > 0 ? z[k] : 0;
        }
        for (int i = 0; i < HID; i++) {
            double v = base[n * HID + i] + bu[i];
            for (int k = 0; k < 3; k++)
                v += (double)Wu[i * 3 + k] * z[k];
            assert_true(test_close(h[n * HID + i], v, 1e-5, 1e-6));
        }
    }
    assert_int_equal(tlearn_adapter_add_bottleneck(m, "bn", "fc2", 3, TLEARN_ACT_RELU),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_adapter_add_bottleneck(m, "z", "none*", 3, TLEARN_ACT_RELU),
                     TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_adapter_add_bottleneck(m, "z", "fc2", 0, TLEARN_ACT_RELU),
                     TLEARN_EINVAL);
    assert_int_equal(count(m), 10);
    tlearn_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_sum_kind),
        cmocka_unit_test(test_lora_graph),
        cmocka_unit_test(test_lora_rslora_dropout),
        cmocka_unit_test(test_lora_merge_dense),
        cmocka_unit_test(test_lora_conv),
        cmocka_unit_test(test_lora_refusals),
        cmocka_unit_test(test_lora_two_adapters),
        cmocka_unit_test(test_lora_files),
        cmocka_unit_test(test_lora_resume),
        cmocka_unit_test(test_bottleneck),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
