/* ONNX element-wise operators: activations (one layer of the activation kind) and the
 * arithmetic Add, Sub, Mul, Div (a residual sum, a broadcast binary layer between two
 * activations, a scale layer by a constant, or a constant folded into the bias before). */
#include <math.h>
#include <string.h>

#include "onnx_internal.h"

/* ---- element-wise activations ---- */

static int activation(ox_ctx *c, int act, const float *fa, int nf)
{
    ox_value *x;
    int rc = ox_in_act(c, 0, 0, &x);
    if (rc)
        return rc;
    int layer, ia = act;
    rc = ox_add_layer(c, &tl_activation_ops, NULL, &x->layer, 1, &ia, 1, fa, nf, &layer);
    if (rc)
        return rc;
    ox_def_view(c, layer, x->shape);
    return TLEARN_OK;
}

static int op_simple_act(ox_ctx *c, int act)
{
    static const float zero = 0.0f;
    int rc = ox_need_inputs(c, 1, 1);
    return rc ? rc : activation(c, act, &zero, 1);
}

static int op_leaky_relu(ox_ctx *c, int arg)
{
    (void)arg;
    float alpha;
    int rc = ox_need_inputs(c, 1, 1);
    if (!rc)
        rc = ox_attr_float(c, "alpha", 0.01f, &alpha);
    return rc ? rc : activation(c, TLEARN_ACT_LEAKY_RELU, &alpha, 1);
}

/* HardSigmoid: max(0, min(1, alpha x + beta)), ONNX's defaults alpha 0.2, beta 0.5. */
static int op_hard_sigmoid(ox_ctx *c, int arg)
{
    (void)arg;
    float ab[2];
    int rc = ox_need_inputs(c, 1, 1);
    if (!rc && !(rc = ox_attr_float(c, "alpha", 0.2f, &ab[0])))
        rc = ox_attr_float(c, "beta", 0.5f, &ab[1]);
    return rc ? rc : activation(c, TLEARN_ACT_HARDSIGMOID, ab, 2);
}

static int op_clip(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 3);
    if (rc)
        return rc;
    float lo = -INFINITY, hi = INFINITY;
    if (ox_in_name(c, 1) && (rc = ox_scalar_float(c, 1, &lo)))
        return rc;
    if (ox_in_name(c, 2) && (rc = ox_scalar_float(c, 2, &hi)))
        return rc;
    static const float zero = 0.0f;
    if (lo == 0.0f && hi == 6.0f)
        return activation(c, TLEARN_ACT_RELU6, &zero, 1);
    if (lo == 0.0f && hi == INFINITY)
        return activation(c, TLEARN_ACT_RELU, &zero, 1);
    return ox_fail(c, TLEARN_EUNSUPPORTED, "Clip(min=%g, max=%g) has no layer; only Clip(0, 6) "
                   "(ReLU6) and Clip(0) (ReLU) are supported", (double)lo, (double)hi);
}

/* ---- Add, Sub, Mul, Div ---- */

/* Two activations: the add layer for a residual sum of equal shapes (it folds into the
 * layers around it), else the binary layer, which broadcasts (SE gating multiplies
 * (N, C, H, W) by (N, C, 1, 1)). */
static int arith_acts(ox_ctx *c, int op)
{
    ox_value *a, *b;
    int rc;
    if ((rc = ox_in_act(c, 0, 0, &a)) || (rc = ox_in_act(c, 1, 0, &b)))
        return rc;
    char sa[TL_SHAPE_STR], sb[TL_SHAPE_STR];
    if (a->shape.rank != b->shape.rank)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "inputs of example shapes %s and %s have "
                       "different ranks; broadcasting needs the batch in both",
                       tl_shape_str(a->shape, sa), tl_shape_str(b->shape, sb));
    for (int i = 0; i < a->shape.rank; i++) {
        int p = a->shape.d[i], q = b->shape.d[i];
        if (p != q && p != 1 && q != 1)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "inputs of example shapes %s and %s do not "
                           "broadcast", tl_shape_str(a->shape, sa), tl_shape_str(b->shape, sb));
    }
    const tl_layer_ops *ops;
    int inputs[2], layer;
    if (op == TLEARN_BINARY_ADD && tl_shape_equal(a->shape, b->shape)) {
        if ((rc = ox_need_ops(c, TLEARN_LAYER_ADD, "add", &ops)))
            return rc;
        inputs[0] = a->layer;
        inputs[1] = b->layer;
        if ((rc = ox_add_layer(c, ops, NULL, inputs, 2, NULL, 0, NULL, 0, &layer)))
            return rc;
        ox_def_view(c, layer, a->shape);
        return TLEARN_OK;
    }
    if ((rc = ox_need_ops(c, TLEARN_LAYER_BINARY, "binary", &ops)) ||
        (rc = ox_act_materialize(c, a, &inputs[0])) ||
        (rc = ox_act_materialize(c, b, &inputs[1])) ||
        (rc = ox_add_layer(c, ops, NULL, inputs, 2, &op, 1, NULL, 0, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* An Add of a constant folds into the bias of the layer right before (a Conv with bias,
 * Gemm, MatMul) when nothing else reads that layer's output and the constant is one value
 * per output channel (a convolution's C of (C, H, W), a dense layer's last axis). 1 when
 * folded, 0 when it does not apply. */
static int fold_bias(ox_ctx *c, ox_value *x, const ox_const *k, int *rc)
{
    *rc = TLEARN_OK;
    if (x->bias_layer < 0 || x->uses != 1 || x->is_output)
        return 0;
    int dense = c->m->layers[x->bias_layer]->ops == &tl_dense_ops;
    int rank = x->shape.rank, axis = dense ? rank - 1 : 0; /* of the example */
    size_t ch = (size_t)x->shape.d[axis];
    /* the constant's dims right-aligned with the ONNX shape (1 + rank dims) */
    int at = k->ndim - (rank - axis);
    int ok = k->numel == 1 || (ox_is_vector_of(k, ch) && at >= 0 && k->dims[at] == (int64_t)ch);
    if (!ok)
        return 0;
    float *bias = ox_param_data(c, x->bias_layer, "bias");
    if (!bias) {
        *rc = ox_fail(c, TLEARN_EFORMAT, "the layer before has no bias");
        return 1;
    }
    for (size_t i = 0; i < ch; i++) {
        bias[i] += k->f[k->numel == 1 ? 0 : i];
        if (!isfinite(bias[i])) {
            *rc = ox_fail(c, TLEARN_EFORMAT, "the bias is not finite");
            return 1;
        }
    }
    ox_def_alias(c, x);
    ox_out(c)->bias_layer = x->bias_layer;
    return 1;
}

/* The shape of a scale layer's weight for constant @p k on @p x: the constant's dims
 * right-aligned with the ONNX shape, without the batch (which must be 1), each equal to
 * the activation's or 1 (the output keeps the activation's shape). */
static int scale_dims(ox_ctx *c, const ox_value *x, const ox_const *k, int *rank, int *dims)
{
    int R = 1 + x->shape.rank, start = 0;
    if (k->ndim > R || (k->ndim == R && k->dims[0] != 1))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the constant (rank %d) does not broadcast over "
                       "the batch of an activation of rank %d", k->ndim, R);
    if (k->ndim == R)
        start = 1;
    while (start < k->ndim - 1 && k->dims[start] == 1) /* leading ones change nothing */
        start++;
    int n = k->ndim - start;
    for (int j = 0; j < n; j++) {
        int64_t d = k->dims[start + j], xd = x->shape.d[x->shape.rank - n + j];
        if (d != xd && d != 1) {
            char sx[TL_SHAPE_STR];
            return ox_fail(c, TLEARN_EUNSUPPORTED, "a constant dimension of %lld does not "
                           "broadcast to the activation's example shape %s without changing "
                           "it", (long long)d, tl_shape_str(x->shape, sx));
        }
        dims[j] = (int)d;
    }
    *rank = n ? n : 1;
    if (!n)
        dims[0] = 1;
    return TLEARN_OK;
}

/* An activation and a constant: a scale layer y = x * w + b with the constant as w (Mul,
 * Div) or b (Add, Sub). Its parameters are learned, as the constants of a PyTorch export
 * mostly are (ConvNeXt's layer scale, a LayerNorm's affine). */
static int arith_const(ox_ctx *c, int op, int const_first)
{
    ox_value *x, *kv;
    ox_const *k;
    int rc;
    if ((rc = ox_in_act(c, const_first ? 1 : 0, 0, &x)) ||
        (rc = ox_float_const(c, const_first ? 0 : 1, &k, &kv)))
        return rc;
    if (op == TLEARN_BINARY_ADD && (fold_bias(c, x, k, &rc) || rc))
        return rc;
    if (op == TLEARN_BINARY_DIV && const_first)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "dividing a constant by an activation is not "
                       "supported");
    int rank = 1, ia[TL_MAX_RANK + 2], producer, layer;
    const tl_layer_ops *ops;
    if ((rc = scale_dims(c, x, k, &rank, ia + 1)) ||
        (rc = ox_need_ops(c, TLEARN_LAYER_SCALE, "scale", &ops)) ||
        (rc = ox_act_materialize(c, x, &producer)))
        return rc;
    int has_bias = op == TLEARN_BINARY_ADD || op == TLEARN_BINARY_SUB;
    ia[0] = rank;
    ia[rank + 1] = has_bias;
    if ((rc = ox_add_layer(c, ops, kv->name, &producer, 1, ia, rank + 2, NULL, 0, &layer)))
        return rc;
    float *w = ox_param_data(c, layer, "weight"), *b = has_bias ? ox_param_data(c, layer, "bias")
                                                                : NULL;
    for (size_t i = 0; i < k->numel; i++) {
        float v = k->f[i];
        switch (op) {
        case TLEARN_BINARY_MUL: w[i] = v; break;
        case TLEARN_BINARY_DIV: w[i] = 1.0f / v; break;
        case TLEARN_BINARY_ADD: w[i] = 1.0f; b[i] = v; break;
        default: w[i] = const_first ? -1.0f : 1.0f; b[i] = const_first ? v : -v; break;
        }
    }
    if ((rc = ox_set_param(c, layer, "weight", w, k->numel)) ||
        (b && (rc = ox_set_param(c, layer, "bias", b, k->numel))))
        return rc;
    ox_def_view(c, layer, x->shape);
    return TLEARN_OK;
}

static int op_arith(ox_ctx *c, int op)
{
    int rc = ox_need_inputs(c, 2, 2);
    if (rc)
        return rc;
    int a_const = ox_in_is_const(c, 0), b_const = ox_in_is_const(c, 1);
    if (a_const && b_const)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "arithmetic on two constants is not supported");
    if (!a_const && !b_const)
        return arith_acts(c, op);
    return arith_const(c, op, a_const);
}

#define ARITH_LIMITS(what) \
    "two activations of the same rank, broadcasting (" what "); or an activation and " \
    "a constant that broadcasts to it without changing its shape: a learned scale layer"

const ox_op ox_ops_elementwise[] = {
    {"Relu", op_simple_act, TLEARN_ACT_RELU, 0, 0, NULL, "any shape"},
    {"Sigmoid", op_simple_act, TLEARN_ACT_SIGMOID, 0, 0, NULL, "any shape"},
    {"Tanh", op_simple_act, TLEARN_ACT_TANH, 0, 0, NULL, "any shape"},
    {"LeakyRelu", op_leaky_relu, 0, 0, 0, NULL, "any shape"},
    {"HardSigmoid", op_hard_sigmoid, 0, 0, 0, NULL, "any shape; alpha, beta"},
    {"HardSwish", op_simple_act, TLEARN_ACT_HARDSWISH, 14, 0, NULL, "any shape"},
    {"Clip", op_clip, 0, 0, 0, NULL,
     "constant bounds (0, 6) (ReLU6) or (0, none) (ReLU) only"},
    {"Add", op_arith, TLEARN_BINARY_ADD, 0, 0, NULL,
     ARITH_LIMITS("the add layer when the shapes are equal") "; a constant right after a "
     "Conv (with bias), Gemm or MatMul that nothing else reads folds into its bias"},
    {"Sub", op_arith, TLEARN_BINARY_SUB, 0, 0, NULL, ARITH_LIMITS("binary layer")},
    {"Mul", op_arith, TLEARN_BINARY_MUL, 0, 0, NULL, ARITH_LIMITS("binary layer")},
    {"Div", op_arith, TLEARN_BINARY_DIV, 0, 0, NULL,
     ARITH_LIMITS("binary layer") "; not a constant divided by an activation"},
    {NULL, NULL, 0, 0, 0, NULL, NULL},
};
