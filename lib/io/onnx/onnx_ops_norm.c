/* ONNX normalisation operators: LayerNormalization (opset 17; the decomposed form of
 * older opsets is fused in onnx_fuse.c onto the same layer), Softmax on any axis but the
 * batch, and a final Softmax/LogSoftmax over the classes, which is dropped (the model
 * outputs logits). */
#include <string.h>

#include "onnx_internal.h"

/* The affine constant named @p name as parameter @p pname of @p layer, of the shape
 * @p dims (@p nd of them): the constant's dims right-aligned with them. */
static int affine(ox_ctx *c, int layer, const char *pname, const char *name, const int *dims,
                  int nd)
{
    ox_value *v = ox_find(c, name);
    if (!v || v->kind != OX_CONST)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the %s '%.100s' of a layer norm must be a "
                       "constant", pname, name);
    if (!v->c) {
        int rc = ox_tensor_convert(c, v->tp, &v->c);
        if (rc)
            return rc;
    }
    size_t n = 1;
    for (int e = 0; e < nd; e++)
        n *= (size_t)dims[e];
    int ok = !v->c->is_int && v->c->numel == n;
    for (int j = v->c->ndim - 1, e = nd - 1; ok && j >= 0; j--, e--)
        ok = v->c->dims[j] == (e >= 0 ? dims[e] : 1);
    if (!ok)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the %s of a layer norm (%zu values) does not "
                       "have the shape of the normalised axes (%zu values)", pname,
                       v->c->numel, n);
    return ox_set_param(c, layer, pname, v->c->f, n);
}

int ox_layernorm(ox_ctx *c, ox_value *x, int naxes, float eps, const char *w, const char *b)
{
    const tl_layer_ops *ops;
    int rc, producer, layer;
    if (!(eps > 0.0f))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "epsilon %g must be positive", (double)eps);
    if (naxes < 0 || naxes > x->shape.rank)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "normalising over %d axes of an example of "
                       "rank %d (the batch cannot be normalised over)", naxes, x->shape.rank);
    int nd = naxes ? naxes : 1;
    const int *dims = naxes ? x->shape.d + (x->shape.rank - naxes) : x->shape.d;
    int ia[2] = {naxes, 1};
    if ((rc = ox_need_ops(c, TLEARN_LAYER_LAYERNORM, "layernorm", &ops)) ||
        (rc = ox_act_materialize(c, x, &producer)) ||
        (rc = ox_add_layer(c, ops, w, &producer, 1, ia, 2, &eps, 1, &layer)))
        return rc;
    /* the layer starts at weight 1, bias 0: what a missing constant means */
    if ((w && (rc = affine(c, layer, "weight", w, dims, nd))) ||
        (b && (rc = affine(c, layer, "bias", b, dims, nd))))
        return rc;
    ox_def_view(c, layer, x->shape);
    return TLEARN_OK;
}

/* LayerNormalization(X, Scale, B): over the axes from `axis` to the last. Only output 0
 * (Mean and InvStdDev must not be read; the walk checks). */
static int op_layer_norm(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 2, 3);
    ox_value *x;
    int64_t axis;
    float eps;
    if (rc || (rc = ox_in_act(c, 0, 0, &x)) || (rc = ox_attr_int(c, "axis", -1, &axis)) ||
        (rc = ox_attr_float(c, "epsilon", 1e-5f, &eps)))
        return rc;
    int R = 1 + x->shape.rank;
    if (axis < 0)
        axis += R;
    if (axis < 1 || axis >= R)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "axis %lld of a rank-%d input: normalising over "
                       "the batch is not supported", (long long)axis, R);
    if (!ox_in_is_const(c, 1) || (ox_in_name(c, 2) && !ox_in_is_const(c, 2)))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "Scale and B must be constants");
    return ox_layernorm(c, x, (int)(R - axis), eps, ox_in_name(c, 1), ox_in_name(c, 2));
}

/* Softmax: a final one over the classes of (N, K) is dropped (the model outputs logits and
 * the loss applies the softmax); elsewhere a softmax layer over one axis. Before opset 13
 * the axis flattens the dimensions after it: one axis when they are all 1 or it is the
 * last. LogSoftmax only in the final position. */
static int op_softmax(ox_ctx *c, int log)
{
    int rc = ox_need_inputs(c, 1, 1);
    ox_value *x;
    int64_t axis;
    if (rc || (rc = ox_in_act(c, 0, 0, &x)) ||
        (rc = ox_attr_int(c, "axis", c->opset >= 13 ? -1 : 1, &axis)))
        return rc;
    int R = 1 + x->shape.rank;
    if (axis < 0)
        axis += R;
    if (axis < 0 || axis >= R)
        return ox_fail(c, TLEARN_EFORMAT, "axis %lld is out of range for rank %d",
                       (long long)axis, R);
    ox_value *o = ox_out(c);
    if (o->is_output && o->uses == 1 && x->shape.rank == 1 && axis == 1) {
        ox_def_alias(c, x);
        return TLEARN_OK;
    }
    if (log)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only a LogSoftmax that gives the graph output "
                       "over the classes of (N, K) is supported (it is dropped: the model "
                       "outputs logits)");
    if (axis == 0)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "a softmax over the batch is not supported");
    for (int i = (int)axis; c->opset < 13 && i < x->shape.rank; i++)
        if (x->shape.d[i] != 1)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "before opset 13, Softmax over axis %lld "
                           "flattens the axes after it; only the last axis is supported",
                           (long long)axis);
    const tl_layer_ops *ops;
    int ia = (int)axis - 1, producer, layer;
    if ((rc = ox_need_ops(c, TLEARN_LAYER_SOFTMAX, "softmax", &ops)) ||
        (rc = ox_act_materialize(c, x, &producer)) ||
        (rc = ox_add_layer(c, ops, NULL, &producer, 1, &ia, 1, NULL, 0, &layer)))
        return rc;
    ox_def_view(c, layer, x->shape);
    return TLEARN_OK;
}

const ox_op ox_ops_norm[] = {
    {"LayerNormalization", op_layer_norm, 0, 17, 0, NULL,
     "axis >= 1 (the axes from it to the last); constant Scale and B; output 0 only"},
    {"Softmax", op_softmax, 0, 0, 0, NULL,
     "any axis but the batch (before opset 13: the last non-1 axis); as the graph output "
     "over the classes of (N, K): dropped, the model outputs logits"},
    {"LogSoftmax", op_softmax, 1, 0, 0, NULL,
     "only as the graph output over the classes of (N, K): dropped, the model outputs logits"},
    {NULL, NULL, 0, 0, 0, NULL, NULL},
};
