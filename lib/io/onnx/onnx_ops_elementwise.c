/* ONNX element-wise operators: activations (one layer of the activation kind) and Add (a
 * residual sum of two activations, or a constant folded into the bias before it). */
#include <math.h>
#include <string.h>

#include "onnx_internal.h"

/* ---- element-wise activations ---- */

static int activation(ox_ctx *c, int act, float param)
{
    ox_value *x;
    int rc = ox_in_act(c, 0, 0, &x);
    if (rc)
        return rc;
    int layer, ia = act;
    rc = ox_add_layer(c, &tl_activation_ops, NULL, &x->layer, 1, &ia, 1, &param, 1, &layer);
    if (rc)
        return rc;
    ox_def_view(c, layer, x->shape);
    return TLEARN_OK;
}

static int op_simple_act(ox_ctx *c, int act)
{
    int rc = ox_need_inputs(c, 1, 1);
    return rc ? rc : activation(c, act, 0.0f);
}

static int op_leaky_relu(ox_ctx *c, int arg)
{
    (void)arg;
    float alpha;
    int rc = ox_need_inputs(c, 1, 1);
    if (!rc)
        rc = ox_attr_float(c, "alpha", 0.01f, &alpha);
    return rc ? rc : activation(c, TLEARN_ACT_LEAKY_RELU, alpha);
}

/* Clip(min, max) with the bounds as optional inputs (opset >= 11): ReLU6 or ReLU. */
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
    if (lo == 0.0f && hi == 6.0f)
        return activation(c, TLEARN_ACT_RELU6, 0.0f);
    if (lo == 0.0f && hi == INFINITY)
        return activation(c, TLEARN_ACT_RELU, 0.0f);
    return ox_fail(c, TLEARN_EUNSUPPORTED, "Clip(min=%g, max=%g) has no layer; only Clip(0, 6) "
                   "(ReLU6) and Clip(0) (ReLU) are supported", (double)lo, (double)hi);
}

/* ---- Add: a residual sum, or a bias folded into the layer before ---- */

static int op_add(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 2, 2);
    if (rc)
        return rc;
    int a_const = ox_in_is_const(c, 0), b_const = ox_in_is_const(c, 1);
    if (a_const && b_const)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "adding two constants is not supported");
    if (!a_const && !b_const) {
        ox_value *a, *b;
        if ((rc = ox_in_act(c, 0, 0, &a)) || (rc = ox_in_act(c, 1, 0, &b)))
            return rc;
        if (!tl_shape_equal(a->shape, b->shape)) {
            char sa[TL_SHAPE_STR], sb[TL_SHAPE_STR];
            return ox_fail(c, TLEARN_EUNSUPPORTED, "inputs of example shapes %s and %s differ; "
                           "broadcasting is not supported", tl_shape_str(a->shape, sa),
                           tl_shape_str(b->shape, sb));
        }
        const tl_layer_ops *ops;
        if ((rc = ox_need_ops(c, TLEARN_LAYER_ADD, "add", &ops)))
            return rc;
        int inputs[2] = {a->layer, b->layer}, layer;
        if ((rc = ox_add_layer(c, ops, NULL, inputs, 2, NULL, 0, NULL, 0, &layer)))
            return rc;
        ox_def_view(c, layer, a->shape);
        return TLEARN_OK;
    }
    ox_value *x;
    ox_const *k;
    if ((rc = ox_in_act(c, a_const ? 1 : 0, 0, &x)) || (rc = ox_float_const(c, a_const ? 0 : 1, &k, NULL)))
        return rc;
    if (x->bias_layer < 0 || x->uses != 1 || x->is_output)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "adding a constant is only supported as the bias "
                       "of the Gemm, MatMul or Conv (with bias) right before it, when nothing "
                       "else reads that layer's output");
    size_t ch = (size_t)x->shape.c;
    int ok = k->numel == 1 || (ox_is_vector_of(k, ch) &&
                               (x->shape.rank == 1 ? k->dims[k->ndim - 1] == (int64_t)ch
                                             : k->ndim >= 3 && k->dims[k->ndim - 3] == (int64_t)ch));
    if (!ok)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the constant does not broadcast as a "
                       "per-channel bias of %zu values", ch);
    float *bias = ox_param_data(c, x->bias_layer, "bias");
    if (!bias)
        return ox_fail(c, TLEARN_EFORMAT, "the layer before has no bias");
    for (size_t i = 0; i < ch; i++) {
        bias[i] += k->f[k->numel == 1 ? 0 : i];
        if (!isfinite(bias[i]))
            return ox_fail(c, TLEARN_EFORMAT, "the bias is not finite");
    }
    ox_def_alias(c, x);
    ox_out(c)->bias_layer = x->bias_layer;
    return TLEARN_OK;
}

const ox_op ox_ops_elementwise[] = {
    {"Relu", op_simple_act, TLEARN_ACT_RELU, 0, 0, NULL, "any shape"},
    {"Sigmoid", op_simple_act, TLEARN_ACT_SIGMOID, 0, 0, NULL, "any shape"},
    {"Tanh", op_simple_act, TLEARN_ACT_TANH, 0, 0, NULL, "any shape"},
    {"LeakyRelu", op_leaky_relu, 0, 0, 0, NULL, "any shape"},
    {"Clip", op_clip, 0, 0, 0, NULL,
     "constant bounds (0, 6) (ReLU6) or (0, none) (ReLU) only"},
    {"Add", op_add, 0, 0, 0, NULL,
     "two activations of the same shape (no broadcasting); or an activation plus a "
     "constant that folds into the bias of the Conv (with bias), Gemm or MatMul right "
     "before it, when nothing else reads that layer's output"},
    {NULL, NULL, 0, 0, 0, NULL, NULL},
};
