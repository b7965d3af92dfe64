/* ONNX import from hand-built protobuf: semantics the PyTorch exports do not pin down
 * (Gemm's alpha/beta/transB folding, FLOAT16 and float_data initializers, Clip as ReLU6),
 * and refusal of malformed or unsupported input: truncation at every byte, bad varints,
 * lengths past the end, wrong wire types, huge dims, unknown operators and opsets,
 * external data. Every failure must leave *out NULL. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "pb.h"
#include "tlearn/tlearn.h"

#define NL ((const char *const[]){NULL})
#define L1(a) ((const char *const[]){a, NULL})
#define L2(a, b) ((const char *const[]){a, b, NULL})
#define L3(a, b, c) ((const char *const[]){a, b, c, NULL})
#define ATTRS(...) ((pb[]){__VA_ARGS__, {0}})

/* Import @p m, expecting status @p want; on failure *out must be NULL and, when @p needle
 * is given, the message must contain it. Frees @p m. Returns the model on success. */
static tlearn_model *import_expect(pb *m, int want, const char *needle)
{
    tlearn_model *out = (tlearn_model *)(uintptr_t)1; /* must be overwritten */
    int rc = tlearn_model_import_onnx_buffer(&out, m->p, m->n);
    if (rc != want)
        fail_msg("import returned %d, expected %d: %s", rc, want, tlearn_errmsg());
    if (rc) {
        assert_null(out);
        if (needle && !strstr(tlearn_errmsg(), needle))
            fail_msg("message '%s' lacks '%s'", tlearn_errmsg(), needle);
    } else {
        assert_non_null(out);
    }
    pb_free(m);
    return out;
}

/* ---- a two-layer MLP: Gemm(alpha, beta, transB=1) - Relu - Gemm(transB=0) ---- */

static const float W1[3 * 4] = {0.5f, -1.0f, 0.25f, 2.0f,  /* fc1.weight [3, 4] */
                                -0.5f, 0.75f, 1.5f, -2.0f,
                                1.0f, 1.0f, -1.0f, 0.125f};
static const float C1[3] = {0.1f, -0.2f, 0.3f};
static const float B2[3 * 2] = {1.0f, -1.0f, /* head.weight as [K=3, N=2] (transB = 0) */
                                0.5f, 2.0f,
                                -0.25f, 0.75f};
static const float C2[2] = {0.05f, -0.05f};
#define ALPHA 0.5f
#define BETA 2.0f

/* The graph, with hooks to alter one piece: the op of the second node and the opset. */
typedef struct mlp_opts {
    int64_t opset;
    const char *op2;     /* "Gemm" normally */
    int64_t trans_a;     /* on the first Gemm */
    int fp16_weight;     /* fc1.weight as FLOAT16 raw data */
    int float_data;      /* fc1.weight in float_data instead of raw_data */
    int external;        /* fc1.weight marked as external data */
    int short_raw;       /* fc1.weight raw_data one byte short */
    int nan_weight;      /* a NaN in fc1.weight */
    int dup_init;        /* fc1.bias defined twice */
    int undefined_input; /* the Relu reads a name nobody defines */
    int huge_dims;       /* fc1.weight declares 2^40 x 2^40 elements */
    int neg_dims;        /* fc1.weight declares a negative dimension */
} mlp_opts;

static pb fc1_weight(const mlp_opts *o)
{
    static const int64_t d[2] = {3, 4};
    float w[12];
    memcpy(w, W1, sizeof w);
    if (o->nan_weight)
        w[5] = NAN;
    if (o->huge_dims) {
        static const int64_t big[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
        return onnx_tensor_f32("fc1.weight", 2, big, w, 12);
    }
    if (o->neg_dims) {
        static const int64_t neg[2] = {-3, -4};
        return onnx_tensor_f32("fc1.weight", 2, neg, w, 12);
    }
    pb t = {0};
    pb_int(&t, 1, d[0]);
    pb_int(&t, 1, d[1]);
    if (o->fp16_weight) {
        /* binary16 bits of W1 (every value of W1 is exact in half precision). */
        static const uint16_t h[12] = {0x3800, 0xBC00, 0x3400, 0x4000, 0xB800, 0x3A00,
                                       0x3E00, 0xC000, 0x3C00, 0x3C00, 0xBC00, 0x3000};
        pb_int(&t, 2, ONNX_FLOAT16);
        pb_str(&t, 8, "fc1.weight");
        uint8_t raw[24];
        for (int i = 0; i < 12; i++) {
            raw[2 * i] = (uint8_t)h[i];
            raw[2 * i + 1] = (uint8_t)(h[i] >> 8);
        }
        pb_bytes(&t, 9, raw, sizeof raw);
        return t;
    }
    if (o->float_data) {
        pb_int(&t, 2, ONNX_FLOAT);
        pb_str(&t, 8, "fc1.weight");
        pb packed = {0};
        for (int i = 0; i < 12; i++) {
            uint32_t u;
            memcpy(&u, &w[i], 4);
            uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16),
                             (uint8_t)(u >> 24)};
            pb_raw(&packed, le, 4);
        }
        pb_msg(&t, 4, &packed);
        return t;
    }
    pb_free(&t);
    t = onnx_tensor_f32("fc1.weight", 2, d, w, o->short_raw ? 11 : 12);
    if (o->external)
        pb_int(&t, 14, 1);
    return t;
}

static pb mlp_model(const mlp_opts *o)
{
    static const int64_t in_dims[2] = {0, 4}, out_dims[2] = {0, 2};
    static const int64_t c1d[1] = {3}, b2d[2] = {3, 2}, c2d[1] = {2};
    pb g = {0};
    pb n1 = onnx_node("Gemm", "/fc1/Gemm", L3("x", "fc1.weight", "fc1.bias"), L1("h"),
                      ATTRS(onnx_attr_float("alpha", ALPHA), onnx_attr_float("beta", BETA),
                            onnx_attr_int("transB", 1), onnx_attr_int("transA", o->trans_a)));
    pb_msg(&g, 1, &n1);
    pb n2 = onnx_node(o->op2, "/relu/Relu", L1(o->undefined_input ? "nowhere" : "h"), L1("r"),
                      NULL);
    pb_msg(&g, 1, &n2);
    pb n3 = onnx_node("Gemm", "/head/Gemm", L3("r", "head.weight", "head.bias"), L1("y"), NULL);
    pb_msg(&g, 1, &n3);
    pb_str(&g, 2, "mlp");
    pb t = fc1_weight(o);
    pb_msg(&g, 5, &t);
    t = onnx_tensor_f32("fc1.bias", 1, c1d, C1, 3);
    pb_msg(&g, 5, &t);
    if (o->dup_init) {
        t = onnx_tensor_f32("fc1.bias", 1, c1d, C1, 3);
        pb_msg(&g, 5, &t);
    }
    t = onnx_tensor_f32("head.weight", 2, b2d, B2, 6);
    pb_msg(&g, 5, &t);
    t = onnx_tensor_f32("head.bias", 1, c2d, C2, 2);
    pb_msg(&g, 5, &t);
    pb vi = onnx_value_info("x", 2, in_dims);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info("y", 2, out_dims);
    pb_msg(&g, 12, &vi);
    return onnx_model(o->opset, &g);
}

static mlp_opts mlp_default(void)
{
    mlp_opts o;
    memset(&o, 0, sizeof o);
    o.opset = 13;
    o.op2 = "Relu";
    return o;
}

/* y = (relu(alpha * x W1^T + beta * C1)) B2 + C2, computed here from the definitions. */
static void mlp_reference(const float *x, float *y)
{
    float h[3];
    for (int j = 0; j < 3; j++) {
        float s = 0.0f;
        for (int k = 0; k < 4; k++)
            s += x[k] * W1[j * 4 + k];
        s = ALPHA * s + BETA * C1[j];
        h[j] = s > 0.0f ? s : 0.0f;
    }
    for (int n = 0; n < 2; n++) {
        float s = C2[n];
        for (int j = 0; j < 3; j++)
            s += h[j] * B2[j * 2 + n];
        y[n] = s;
    }
}

static void check_mlp_predictions(tlearn_model *m)
{
    const float x[3 * 4] = {1.0f, 2.0f, -1.0f, 0.5f, -0.3f, 0.7f, 2.0f, -1.5f,
                            0.0f, 0.0f, 0.0f, 0.0f};
    float got[6], want[6];
    assert_int_equal(tlearn_model_predict(m, x, 3, got, 6), TLEARN_OK);
    for (int i = 0; i < 3; i++)
        mlp_reference(x + 4 * i, want + 2 * i);
    for (int i = 0; i < 6; i++)
        assert_float_equal(got[i], want[i], 1e-5);
}

static void test_gemm_folding(void **state)
{
    (void)state;
    mlp_opts o = mlp_default();
    pb m = mlp_model(&o);
    tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
    check_mlp_predictions(model);
    /* Layers named after the weights; alpha folded into fc1.weight. */
    int idx;
    assert_int_equal(tlearn_model_layer_index(model, "fc1", &idx), TLEARN_OK);
    assert_int_equal(idx, 0);
    assert_int_equal(tlearn_model_layer_index(model, "head", &idx), TLEARN_OK);
    assert_int_equal(idx, 2);
    float w[12];
    assert_int_equal(tlearn_model_get_tensor(model, "fc1.weight", w, 12), TLEARN_OK);
    for (int i = 0; i < 12; i++)
        assert_float_equal(w[i], ALPHA * W1[i], 0.0);
    /* transB = 0: head.weight is B2 transposed to [out, in]. */
    float hw[6];
    assert_int_equal(tlearn_model_get_tensor(model, "head.weight", hw, 6), TLEARN_OK);
    for (int n = 0; n < 2; n++)
        for (int k = 0; k < 3; k++)
            assert_float_equal(hw[n * 3 + k], B2[k * 2 + n], 0.0);
    tlearn_model_destroy(&model);
}

static void test_fp16_and_float_data(void **state)
{
    (void)state;
    for (int variant = 0; variant < 2; variant++) {
        mlp_opts o = mlp_default();
        o.fp16_weight = variant == 0;
        o.float_data = variant == 1;
        o.opset = variant == 0 ? 11 : 17;
        pb m = mlp_model(&o);
        tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
        float w[12];
        assert_int_equal(tlearn_model_get_tensor(model, "fc1.weight", w, 12), TLEARN_OK);
        for (int i = 0; i < 12; i++)
            assert_float_equal(w[i], ALPHA * W1[i], 0.0);
        check_mlp_predictions(model);
        tlearn_model_destroy(&model);
    }
}

/* A 1x1 convolution whose single weight is the binary16 value @p bits. */
static pb fp16_conv_model(uint16_t bits)
{
    static const int64_t dims[4] = {0, 1, 2, 2}, wd[4] = {1, 1, 1, 1};
    pb g = {0};
    pb n1 = onnx_node("Conv", "conv", L2("x", "c.weight"), L1("y"), NULL);
    pb_msg(&g, 1, &n1);
    pb t = {0};
    for (int d = 0; d < 4; d++)
        pb_int(&t, 1, wd[d]);
    pb_int(&t, 2, ONNX_FLOAT16);
    pb_str(&t, 8, "c.weight");
    uint8_t raw[2] = {(uint8_t)bits, (uint8_t)(bits >> 8)};
    pb_bytes(&t, 9, raw, 2);
    pb_msg(&g, 5, &t);
    pb vi = onnx_value_info("x", 4, dims);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info("y", 4, dims);
    pb_msg(&g, 12, &vi);
    return onnx_model(13, &g);
}

/* FLOAT16 conversion is exact: subnormals, the largest normal, signs, a mantissa. */
static void test_fp16_values(void **state)
{
    (void)state;
    static const struct {
        uint16_t bits;
        float want;
    } cases[] = {
        {0x0001, 5.9604644775390625e-8f},   /* 2^-24, smallest subnormal */
        {0x03ff, 6.0975551605224609e-5f},   /* 1023 * 2^-24, largest subnormal */
        {0x0400, 6.103515625e-5f},          /* 2^-14, smallest normal */
        {0x7bff, 65504.0f},                 /* largest normal */
        {0xc000, -2.0f},
        {0x3555, 0.333251953125f},
        {0x8000, -0.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pb m = fp16_conv_model(cases[i].bits);
        tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
        float w;
        assert_int_equal(tlearn_model_get_tensor(model, "c.weight", &w, 1), TLEARN_OK);
        if (memcmp(&w, &cases[i].want, sizeof w) != 0)
            fail_msg("half 0x%04x gave %.9g, expected %.9g", cases[i].bits, (double)w,
                     (double)cases[i].want);
        tlearn_model_destroy(&model);
    }
    /* Infinity and NaN are not weights. */
    pb m = fp16_conv_model(0x7c00);
    import_expect(&m, TLEARN_EFORMAT, "NaN or infinite");
    m = fp16_conv_model(0x7e00);
    import_expect(&m, TLEARN_EFORMAT, "NaN or infinite");
}

/* A tiny 1-channel network for the convolution and activation cases. */
static pb conv_model(const char *auto_pad, int64_t kernel, const char *act_op, float clip_hi)
{
    static const int64_t in_dims[4] = {0, 1, 4, 4};
    /* Without padding the output shrinks by kernel - 1. */
    int64_t out_dims[4] = {0, 1, 5 - kernel, 5 - kernel};
    int64_t wd[4] = {1, 1, kernel, kernel};
    float w[25];
    for (int i = 0; i < 25; i++)
        w[i] = 1.0f;
    pb g = {0};
    pb n1 = auto_pad ? onnx_node("Conv", "conv", L2("x", "c.weight"), L1("h"),
                                 ATTRS(onnx_attr_str("auto_pad", auto_pad)))
                     : onnx_node("Conv", "conv", L2("x", "c.weight"), L1("h"), NULL);
    pb_msg(&g, 1, &n1);
    if (act_op && strcmp(act_op, "Clip") == 0) {
        pb n2 = onnx_node("Clip", "clip", L3("h", "lo", "hi"), L1("y"), NULL);
        pb_msg(&g, 1, &n2);
        float lo = 0.0f;
        pb t = onnx_tensor_f32("lo", 0, NULL, &lo, 1);
        pb_msg(&g, 5, &t);
        t = onnx_tensor_f32("hi", 0, NULL, &clip_hi, 1);
        pb_msg(&g, 5, &t);
    } else if (act_op) {
        pb n2 = onnx_node(act_op, "act", L1("h"), L1("y"), NULL);
        pb_msg(&g, 1, &n2);
    }
    pb t = onnx_tensor_f32("c.weight", 4, wd, w, (size_t)(kernel * kernel));
    pb_msg(&g, 5, &t);
    pb vi = onnx_value_info("x", 4, in_dims);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info(act_op ? "y" : "h", 4, kernel <= 4 ? out_dims : in_dims);
    pb_msg(&g, 12, &vi);
    return onnx_model(13, &g);
}

static void test_clip_is_relu6(void **state)
{
    (void)state;
    pb m = conv_model(NULL, 1, "Clip", 6.0f);
    tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
    int kind;
    assert_int_equal(tlearn_model_layer_kind(model, 1, &kind), TLEARN_OK);
    assert_int_equal(kind, TLEARN_LAYER_ACTIVATION);
    float x[16], y[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)i - 4.0f; /* -4 .. 11 */
    assert_int_equal(tlearn_model_predict(model, x, 1, y, 16), TLEARN_OK);
    for (int i = 0; i < 16; i++)
        assert_float_equal(y[i], fminf(fmaxf(x[i], 0.0f), 6.0f), 0.0);
    tlearn_model_destroy(&model);

    m = conv_model(NULL, 1, "Clip", 2.0f);
    import_expect(&m, TLEARN_EUNSUPPORTED, "Clip(min=0, max=2)");
}

/* Pad (zeros, 1 on each side of H and W) then a pool with kernel 3, stride 1. */
static pb pad_pool_model(const char *pool_op)
{
    static const int64_t in_dims[4] = {0, 1, 4, 4}, pd[1] = {8};
    static const int64_t pads[8] = {0, 0, 1, 1, 0, 0, 1, 1}, k[2] = {3, 3};
    pb g = {0};
    pb n1 = onnx_node("Pad", "pad", L2("x", "pads"), L1("p"),
                      ATTRS(onnx_attr_str("mode", "constant")));
    pb_msg(&g, 1, &n1);
    pb n2 = onnx_node(pool_op, "pool", L1("p"), L1("y"), ATTRS(onnx_attr_ints("kernel_shape", 2, k)));
    pb_msg(&g, 1, &n2);
    pb t = onnx_tensor_i64("pads", 1, pd, pads, 8);
    pb_msg(&g, 5, &t);
    pb vi = onnx_value_info("x", 4, in_dims);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info("y", 4, in_dims);
    pb_msg(&g, 12, &vi);
    return onnx_model(11, &g);
}

static void test_pad_folds_into_avgpool(void **state)
{
    (void)state;
    pb m = pad_pool_model("AveragePool");
    tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
    int count;
    assert_int_equal(tlearn_model_layer_count(model, &count), TLEARN_OK);
    assert_int_equal(count, 1); /* the Pad is the pool's padding, not a layer */
    float x[16], y[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)(i * i % 7) - 2.5f;
    assert_int_equal(tlearn_model_predict(model, x, 1, y, 16), TLEARN_OK);
    /* Zero padding counted in the average: every window divides by 9. */
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            float s = 0.0f;
            for (int dr = -1; dr <= 1; dr++)
                for (int dc = -1; dc <= 1; dc++)
                    if (r + dr >= 0 && r + dr < 4 && c + dc >= 0 && c + dc < 4)
                        s += x[(r + dr) * 4 + c + dc];
            assert_float_equal(y[r * 4 + c], s / 9.0f, 1e-6);
        }
    tlearn_model_destroy(&model);

    /* Max pooling pads with -inf, not zeros: a zero Pad before it becomes a pad layer,
     * and its zeros win over negative border values. */
    m = pad_pool_model("MaxPool");
    model = import_expect(&m, TLEARN_OK, NULL);
    int kind;
    assert_int_equal(tlearn_model_layer_count(model, &count), TLEARN_OK);
    assert_int_equal(count, 2);
    assert_int_equal(tlearn_model_layer_kind(model, 0, &kind), TLEARN_OK);
    assert_int_equal(kind, TLEARN_LAYER_PAD);
    for (int i = 0; i < 16; i++)
        x[i] = -1.0f - (float)i; /* all negative: every window touching the border is 0 */
    assert_int_equal(tlearn_model_predict(model, x, 1, y, 16), TLEARN_OK);
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            int border = r == 0 || r == 3 || c == 0 || c == 3;
            float best = border ? 0.0f : -INFINITY;
            for (int dr = -1; dr <= 1; dr++)
                for (int dc = -1; dc <= 1; dc++)
                    if (r + dr >= 0 && r + dr < 4 && c + dc >= 0 && c + dc < 4)
                        best = fmaxf(best, x[(r + dr) * 4 + c + dc]);
            assert_float_equal(y[r * 4 + c], best, 0.0);
        }
    tlearn_model_destroy(&model);
}

/* Reshape(x, Concat(Unsqueeze(Squeeze(Slice(Shape(x), 0, 1))), [-1])): the shape
 * arithmetic of other exporters, folded at import into one flatten layer. */
static void test_shape_arithmetic(void **state)
{
    (void)state;
    static const int64_t dims[4] = {0, 2, 3, 3}, out_dims[2] = {0, 18}, one[1] = {1};
    static const int64_t zero_v[1] = {0}, one_v[1] = {1}, minus1[1] = {-1};
    pb g = {0};
    pb n = onnx_node("Shape", "shape", L1("x"), L1("s"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("Slice", "slice", L3("s", "zero", "one"), L1("s0"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("Squeeze", "squeeze", L2("s0", "zero"), L1("b"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("Unsqueeze", "unsqueeze", L2("b", "zero"), L1("b1"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("Concat", "concat", L2("b1", "minus1"), L1("target"),
                  ATTRS(onnx_attr_int("axis", 0)));
    pb_msg(&g, 1, &n);
    n = onnx_node("Reshape", "flat", L2("x", "target"), L1("y"), NULL);
    pb_msg(&g, 1, &n);
    pb t = onnx_tensor_i64("zero", 1, one, zero_v, 1);
    pb_msg(&g, 5, &t);
    t = onnx_tensor_i64("one", 1, one, one_v, 1);
    pb_msg(&g, 5, &t);
    t = onnx_tensor_i64("minus1", 1, one, minus1, 1);
    pb_msg(&g, 5, &t);
    pb vi = onnx_value_info("x", 4, dims);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info("y", 2, out_dims);
    pb_msg(&g, 12, &vi);
    pb m = onnx_model(13, &g);
    tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
    int count, kind, c;
    assert_int_equal(tlearn_model_layer_count(model, &count), TLEARN_OK);
    assert_int_equal(count, 1);
    assert_int_equal(tlearn_model_layer_kind(model, 0, &kind), TLEARN_OK);
    assert_int_equal(kind, TLEARN_LAYER_FLATTEN);
    assert_int_equal(tlearn_model_layer_shape(model, 0, &c, NULL, NULL), TLEARN_OK);
    assert_int_equal(c, 18);
    float x[36], y[36];
    for (int i = 0; i < 36; i++)
        x[i] = (float)i * 0.5f - 3.0f;
    assert_int_equal(tlearn_model_predict(model, x, 2, y, 36), TLEARN_OK);
    assert_memory_equal(x, y, sizeof x);
    tlearn_model_destroy(&model);
}

static void test_unsupported(void **state)
{
    (void)state;
    mlp_opts o = mlp_default();
    o.op2 = "Gelu";
    pb m = mlp_model(&o);
    import_expect(&m, TLEARN_EUNSUPPORTED, "Gelu (operator not supported): 1 node '/relu/Relu'");

    o = mlp_default();
    o.opset = 9;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EUNSUPPORTED, "opset 9");
    o.opset = 18;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EUNSUPPORTED, "opset 18");

    o = mlp_default();
    o.trans_a = 1;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EUNSUPPORTED, "transA");

    o = mlp_default();
    o.external = 1;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EUNSUPPORTED, "external");

    m = conv_model("SAME_UPPER", 3, NULL, 0.0f);
    import_expect(&m, TLEARN_EUNSUPPORTED, "auto_pad");
    /* VALID means no padding: a 3x3 kernel on 4x4 gives 2x2. */
    m = conv_model("VALID", 3, "Relu", 0.0f);
    tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
    int c, h, w;
    assert_int_equal(tlearn_model_layer_shape(model, 0, &c, &h, &w), TLEARN_OK);
    assert_int_equal(h, 2);
    assert_int_equal(w, 2);
    tlearn_model_destroy(&model);
}

/* A graph on x (N, 4) -> y (N, 4) with @p nn nodes and the scalar initializers "two" (2)
 * and "eps" (0.5). */
static pb scalar_graph(const pb *nodes, int nn)
{
    static const int64_t dims[2] = {0, 4}, one[1] = {1};
    static const float two = 2.0f, eps = 0.5f;
    pb g = {0};
    for (int i = 0; i < nn; i++) {
        pb n = nodes[i];
        pb_msg(&g, 1, &n);
    }
    pb t = onnx_tensor_f32("two", 1, one, &two, 1);
    pb_msg(&g, 5, &t);
    t = onnx_tensor_f32("eps", 1, one, &eps, 1);
    pb_msg(&g, 5, &t);
    pb vi = onnx_value_info("x", 2, dims);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info("y", 2, dims);
    pb_msg(&g, 12, &vi);
    return onnx_model(13, &g);
}

/* Decomposed forms are fused only when the pattern alone reads its intermediate values:
 * x * sigmoid(x) is one SiLU layer; when the sigmoid is also read elsewhere it stays a
 * sigmoid and a product. The outputs against values computed here in double. */
static void test_fusion_needs_private_values(void **state)
{
    (void)state;
    float x[8], y[8];
    for (int i = 0; i < 8; i++)
        x[i] = (float)i * 0.7f - 2.5f;
    for (int alone = 1; alone >= 0; alone--) {
        pb nodes[3] = {onnx_node("Sigmoid", "/act/Sigmoid", L1("x"), L1("s"), NULL),
                       onnx_node("Mul", "/act/Mul", L2("s", "x"), L1(alone ? "y" : "p"), NULL),
                       onnx_node("Add", "/act/Add", L2("p", "s"), L1("y"), NULL)};
        pb m = scalar_graph(nodes, alone ? 2 : 3);
        if (alone)
            pb_free(&nodes[2]);
        tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
        int count, kind;
        assert_int_equal(tlearn_model_layer_count(model, &count), TLEARN_OK);
        assert_int_equal(count, alone ? 1 : 3);
        assert_int_equal(tlearn_model_layer_kind(model, 0, &kind), TLEARN_OK);
        assert_int_equal(kind, TLEARN_LAYER_ACTIVATION);
        if (!alone) {
            assert_int_equal(tlearn_model_layer_kind(model, 1, &kind), TLEARN_OK);
            assert_int_equal(kind, TLEARN_LAYER_BINARY);
        }
        assert_int_equal(tlearn_model_predict(model, x, 2, y, 8), TLEARN_OK);
        for (int i = 0; i < 8; i++) {
            double sg = 1.0 / (1.0 + exp(-(double)x[i]));
            assert_float_equal(y[i], x[i] * sg + (alone ? 0.0 : sg), 1e-6);
        }
        tlearn_model_destroy(&model);
    }
    /* A LayerNorm spelled out is one layernorm layer; when its centred value x - mean is
     * also read outside the pattern it is not fused, and its Pow and Sqrt (which have no
     * handlers) are named. */
    static const int64_t last[1] = {-1};
    for (int alone = 1; alone >= 0; alone--) {
        pb ln[8] = {
            onnx_node("ReduceMean", "/ln/ReduceMean", L1("x"), L1("mu"),
                      ATTRS(onnx_attr_ints("axes", 1, last))),
            onnx_node("Sub", "/ln/Sub", L2("x", "mu"), L1("d"), NULL),
            onnx_node("Pow", "/ln/Pow", L2("d", "two"), L1("d2"), NULL),
            onnx_node("ReduceMean", "/ln/ReduceMean_1", L1("d2"), L1("var"),
                      ATTRS(onnx_attr_ints("axes", 1, last))),
            onnx_node("Add", "/ln/Add", L2("var", "eps"), L1("ve"), NULL),
            onnx_node("Sqrt", "/ln/Sqrt", L1("ve"), L1("sd"), NULL),
            onnx_node("Div", "/ln/Div", L2("d", "sd"), L1(alone ? "y" : "n"), NULL),
            onnx_node("Add", "/ln/Add_1", L2("n", "d"), L1("y"), NULL)};
        pb m = scalar_graph(ln, alone ? 7 : 8);
        if (alone)
            pb_free(&ln[7]);
        if (!alone) {
            import_expect(&m, TLEARN_EUNSUPPORTED, "Pow (operator not supported)");
            assert_non_null(strstr(tlearn_errmsg(), "Sqrt (operator not supported)"));
            continue;
        }
        tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
        int count, kind;
        assert_int_equal(tlearn_model_layer_count(model, &count), TLEARN_OK);
        assert_int_equal(count, 1);
        assert_int_equal(tlearn_model_layer_kind(model, 0, &kind), TLEARN_OK);
        assert_int_equal(kind, TLEARN_LAYER_LAYERNORM);
        assert_int_equal(tlearn_model_predict(model, x, 2, y, 8), TLEARN_OK);
        for (int r = 0; r < 2; r++) {
            double mean = 0.0, var = 0.0;
            for (int i = 0; i < 4; i++)
                mean += x[4 * r + i] / 4.0;
            for (int i = 0; i < 4; i++)
                var += (x[4 * r + i] - mean) * (x[4 * r + i] - mean) / 4.0;
            for (int i = 0; i < 4; i++)
                assert_float_equal(y[4 * r + i], (x[4 * r + i] - mean) / sqrt(var + 0.5), 1e-5);
        }
        tlearn_model_destroy(&model);
    }
}

/* The pre-pass names every node it cannot map, grouped by operator and reason, in one
 * message: unknown operators, and attributes it refuses on sight. */
static void test_lists_every_unsupported_node(void **state)
{
    (void)state;
    static const int64_t in_dims[4] = {0, 1, 4, 4}, wd[4] = {1, 1, 3, 3}, k3[3] = {2, 2, 2};
    float w[9];
    for (int i = 0; i < 9; i++)
        w[i] = 1.0f;
    pb g = {0};
    pb n = onnx_node("Conv", "/c1/Conv", L2("x", "c.weight"), L1("h1"),
                     ATTRS(onnx_attr_str("auto_pad", "SAME_UPPER")));
    pb_msg(&g, 1, &n);
    n = onnx_node("Gelu", "/a/Gelu", L1("h1"), L1("h2"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("Erf", "/b/Erf", L1("h2"), L1("h3"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("Erf", "/c/Erf", L1("h3"), L1("h4"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("MaxPool", "/p/MaxPool", L1("h4"), L1("h5"),
                  ATTRS(onnx_attr_ints("kernel_shape", 3, k3)));
    pb_msg(&g, 1, &n);
    n = onnx_node("Relu", "/r/Relu", L1("h5"), L1("y"), NULL);
    pb_msg(&g, 1, &n);
    pb_str(&g, 2, "many");
    pb t = onnx_tensor_f32("c.weight", 4, wd, w, 9);
    pb_msg(&g, 5, &t);
    pb vi = onnx_value_info("x", 4, in_dims);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info("y", 4, in_dims);
    pb_msg(&g, 12, &vi);
    pb m = onnx_model(13, &g);
    tlearn_model *out = (tlearn_model *)(uintptr_t)1;
    assert_int_equal(tlearn_model_import_onnx_buffer(&out, m.p, m.n), TLEARN_EUNSUPPORTED);
    assert_null(out);
    pb_free(&m);
    const char *msg = tlearn_errmsg();
    static const char *const want[] = {
        "5 of 6 nodes cannot be imported",
        "Conv (auto_pad SAME_UPPER/SAME_LOWER): 1 node '/c1/Conv'",
        "Gelu (operator not supported): 1 node '/a/Gelu'",
        "Erf (operator not supported): 2 nodes '/b/Erf', '/c/Erf'",
        "MaxPool (3-D kernel): 1 node '/p/MaxPool'"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        if (!strstr(msg, want[i]))
            fail_msg("message '%s' lacks '%s'", msg, want[i]);
    assert_null(strstr(msg, "Relu"));
}

/* Graph inputs: element types are named, int64 token ids become an int32 model input
 * (refused by a float operator, not at the input), and a (N, T, D) input keeps its rank. */
static void test_input_types_and_ranks(void **state)
{
    (void)state;
    static const int64_t d3[3] = {0, 3, 4}, d2[2] = {0, 12};
    for (int type = 0; type < 2; type++) {
        pb g = {0};
        pb n = onnx_node("Relu", "/r/Relu", L1("x"), L1("y"), NULL);
        pb_msg(&g, 1, &n);
        pb_str(&g, 2, "typed");
        pb vi = onnx_value_info_typed("x", type ? ONNX_INT64 : ONNX_FLOAT16, 3, d3);
        pb_msg(&g, 11, &vi);
        vi = onnx_value_info("y", 3, d3);
        pb_msg(&g, 12, &vi);
        pb m = onnx_model(13, &g);
        import_expect(&m, TLEARN_EUNSUPPORTED, type ? "holds integers (token ids)" : "FLOAT16");
    }
    /* (N, 3, 4) -> Relu -> Flatten: y = max(x, 0) flattened, computed here by hand. */
    pb g = {0};
    pb n = onnx_node("Relu", "/r/Relu", L1("x"), L1("h"), NULL);
    pb_msg(&g, 1, &n);
    n = onnx_node("Flatten", "/f/Flatten", L1("h"), L1("y"), NULL);
    pb_msg(&g, 1, &n);
    pb_str(&g, 2, "seq");
    pb vi = onnx_value_info("x", 3, d3);
    pb_msg(&g, 11, &vi);
    vi = onnx_value_info("y", 2, d2);
    pb_msg(&g, 12, &vi);
    pb m = onnx_model(13, &g);
    tlearn_model *model = import_expect(&m, TLEARN_OK, NULL);
    int rank, dims[4];
    assert_int_equal(tlearn_model_layer_shape_nd(model, -1, &rank, dims, 4), TLEARN_OK);
    assert_int_equal(rank, 2);
    assert_int_equal(dims[0], 3);
    assert_int_equal(dims[1], 4);
    assert_int_equal(tlearn_model_layer_shape_nd(model, 0, &rank, dims, 4), TLEARN_OK);
    assert_int_equal(rank, 2); /* the ReLU keeps (T, D) */
    float x[24], y[24];
    for (int i = 0; i < 24; i++)
        x[i] = (float)(i % 7) - 3.0f;
    assert_int_equal(tlearn_model_predict(model, x, 2, y, 24), TLEARN_OK);
    for (int i = 0; i < 24; i++)
        assert_true(y[i] == (x[i] > 0.0f ? x[i] : 0.0f));
    tlearn_model_destroy(&model);
}

static void test_inconsistent_files(void **state)
{
    (void)state;
    mlp_opts o = mlp_default();
    o.short_raw = 1;
    pb m = mlp_model(&o);
    import_expect(&m, TLEARN_EFORMAT, "raw data");

    o = mlp_default();
    o.nan_weight = 1;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EFORMAT, "NaN");

    o = mlp_default();
    o.dup_init = 1;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EFORMAT, "defined twice");

    o = mlp_default();
    o.undefined_input = 1;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EFORMAT, "not defined");

    o = mlp_default();
    o.huge_dims = 1;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EFORMAT, "fc1.weight");

    o = mlp_default();
    o.neg_dims = 1;
    m = mlp_model(&o);
    import_expect(&m, TLEARN_EFORMAT, "fc1.weight");

    /* A 5x5 kernel does not fit a 4x4 input without padding. */
    m = conv_model(NULL, 5, NULL, 0.0f);
    import_expect(&m, TLEARN_EFORMAT, "conv");
}

/* Every strict prefix of a valid model is refused: the graph is the last field, so each
 * cut either drops it or leaves a length running past the end. */
static void test_every_truncation(void **state)
{
    (void)state;
    mlp_opts o = mlp_default();
    pb m = mlp_model(&o);
    for (size_t len = 1; len < m.n; len++) {
        tlearn_model *out = (tlearn_model *)(uintptr_t)1;
        int rc = tlearn_model_import_onnx_buffer(&out, m.p, len);
        if (rc != TLEARN_EFORMAT)
            fail_msg("prefix of %zu/%zu bytes gave %d: %s", len, m.n, rc, tlearn_errmsg());
        assert_null(out);
    }
    tlearn_model *out = NULL;
    assert_int_equal(tlearn_model_import_onnx_buffer(&out, m.p, m.n), TLEARN_OK);
    tlearn_model_destroy(&out);
    pb_free(&m);
}

static void test_malformed_wire(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        uint8_t bytes[12];
        size_t n;
    } cases[] = {
        {"truncated varint", {0x08, 0xff, 0xff}, 3},
        {"varint over 10 bytes", {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0x01}, 12},
        {"length past the end", {0x3a, 0x7f, 0x00}, 3},
        {"huge length", {0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00}, 7},
        {"graph as a varint (wrong wire type)", {0x38, 0x01}, 2},
        {"opset_import as fixed32 (wrong wire type)", {0x45, 1, 2, 3, 4}, 5},
        {"field number 0", {0x00, 0x01}, 2},
        {"end-group without start", {0x0c}, 1},
        {"garbage", {0xde, 0xad, 0xbe, 0xef}, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tlearn_model *out = (tlearn_model *)(uintptr_t)1;
        int rc = tlearn_model_import_onnx_buffer(&out, cases[i].bytes, cases[i].n);
        if (rc != TLEARN_EFORMAT)
            fail_msg("%s: got %d (%s)", cases[i].what, rc, tlearn_errmsg());
        assert_null(out);
    }
    /* A valid protobuf that is not a model: no opset, no graph. */
    pb m = {0};
    pb_int(&m, 1, 8);
    import_expect(&m, TLEARN_EFORMAT, "opset");
    /* A valid model wrapper around a graph whose node is a varint where a message goes. */
    pb g = {0};
    pb_int(&g, 1, 5);
    m = onnx_model(13, &g);
    import_expect(&m, TLEARN_EFORMAT, NULL);
}

static void test_arguments_and_files(void **state)
{
    (void)state;
    uint8_t byte = 0x08;
    tlearn_model *out = (tlearn_model *)(uintptr_t)1;
    assert_int_equal(tlearn_model_import_onnx_buffer(NULL, &byte, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_import_onnx_buffer(&out, NULL, 1), TLEARN_EINVAL);
    assert_null(out);
    out = (tlearn_model *)(uintptr_t)1;
    assert_int_equal(tlearn_model_import_onnx_buffer(&out, &byte, 0), TLEARN_EINVAL);
    assert_null(out);
    assert_int_equal(tlearn_model_import_onnx(NULL, "x.onnx"), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_import_onnx(&out, NULL), TLEARN_EINVAL);
    out = (tlearn_model *)(uintptr_t)1;
    assert_int_equal(tlearn_model_import_onnx(&out, "/nonexistent/dir/model.onnx"), TLEARN_EIO);
    assert_null(out);
    assert_non_null(strstr(tlearn_errmsg(), "/nonexistent/dir/model.onnx"));

    /* The file entry point reads what the buffer entry point parses. */
    char path[] = "/tmp/tlearn-onnx-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    mlp_opts o = mlp_default();
    pb m = mlp_model(&o);
    FILE *f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(m.p, 1, m.n, f), m.n);
    fclose(f);
    pb_free(&m);
    out = NULL;
    int rc = tlearn_model_import_onnx(&out, path);
    remove(path);
    assert_int_equal(rc, TLEARN_OK);
    check_mlp_predictions(out);
    tlearn_model_destroy(&out);
}

/* Every seed of the fuzzer's corpus (tiny PyTorch exports of every supported operator
 * path, from make_corpus.py) imports and runs. ONNX_CORPUS names the directory. */
static void test_corpus_imports(void **state)
{
    (void)state;
    static const char *const seeds[] = {"mlp-13.onnx", "cnn-11.onnx", "res-bn-13.onnx",
                                        "res-folded-15.onnx", "dw-17.onnx"};
    const char *dir = getenv("ONNX_CORPUS");
    if (!dir)
        fail_msg("ONNX_CORPUS is not set");
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, seeds[i]);
        tlearn_model *m = NULL;
        if (tlearn_model_import_onnx(&m, path) != TLEARN_OK)
            fail_msg("%s: %s", seeds[i], tlearn_errmsg());
        int n, c, h, w;
        assert_int_equal(tlearn_model_layer_count(m, &n), TLEARN_OK);
        assert_int_equal(tlearn_model_layer_shape(m, -1, &c, &h, &w), TLEARN_OK);
        size_t in = (size_t)c * h * w;
        assert_int_equal(tlearn_model_layer_shape(m, n - 1, &c, &h, &w), TLEARN_OK);
        size_t out = (size_t)c * h * w;
        float *x = calloc(2 * in, sizeof *x), *y = calloc(2 * out, sizeof *y);
        assert_non_null(x);
        assert_non_null(y);
        assert_int_equal(tlearn_model_predict(m, x, 2, y, 2 * out), TLEARN_OK);
        for (size_t k = 0; k < 2 * out; k++)
            assert_true(isfinite(y[k]));
        free(x);
        free(y);
        tlearn_model_destroy(&m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_folding),
        cmocka_unit_test(test_fp16_and_float_data),
        cmocka_unit_test(test_fp16_values),
        cmocka_unit_test(test_clip_is_relu6),
        cmocka_unit_test(test_pad_folds_into_avgpool),
        cmocka_unit_test(test_shape_arithmetic),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_lists_every_unsupported_node),
        cmocka_unit_test(test_input_types_and_ranks),
        cmocka_unit_test(test_inconsistent_files),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_malformed_wire),
        cmocka_unit_test(test_arguments_and_files),
        cmocka_unit_test(test_corpus_imports),
        cmocka_unit_test(test_fusion_needs_private_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
