/* ONNX operators of neural-network layers: Gemm and MatMul (dense), Conv, pooling, Pad
 * (zero padding folded into the next Conv or AveragePool, else a pad layer),
 * BatchNormalization. Large weights are read
 * from the file straight into the layers' parameters (ox_load_param). */
#include <math.h>
#include <string.h>

#include "onnx_internal.h"

/* ---- dense ---- */

/* A dense layer of @p units over the flat activation @p x, with W[n][k] = w(n, k). */
static int dense(ox_ctx *c, ox_value *x, const char *wname, int units, int *layer)
{
    return ox_add_layer(c, &tl_dense_ops, wname, &x->layer, 1, &units, 1, NULL, 0, layer);
}

static int flat_input(ox_ctx *c, ox_value **x)
{
    int rc = ox_in_act(c, 0, 0, x);
    if (rc)
        return rc;
    if ((*x)->shape.rank != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input must be 2-D (N, F); flatten the "
                       "activation first");
    return TLEARN_OK;
}

/* Gemm: Y = alpha * A op(B) + beta * C. alpha, beta and transB fold into the weights. */
static int op_gemm(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 2, 3);
    int64_t ta, tb;
    float alpha, beta;
    if (!rc)
        rc = ox_attr_int(c, "transA", 0, &ta);
    if (!rc)
        rc = ox_attr_int(c, "transB", 0, &tb);
    if (!rc)
        rc = ox_attr_float(c, "alpha", 1.0f, &alpha);
    if (!rc)
        rc = ox_attr_float(c, "beta", 1.0f, &beta);
    if (rc)
        return rc;
    if (ta != 0)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "transA=%lld is not supported: the input must be "
                       "(N, F)", (long long)ta);
    ox_value *x, *wv;
    ox_const Bh, *B = &Bh, *C = NULL;
    /* PyTorch's Linear (transB=1, alpha=1) has the dense layer's layout: the weight is read
     * from the file straight into the layer. */
    if ((rc = flat_input(c, &x)) ||
        (rc = tb && alpha == 1.0f ? ox_float_const_lazy(c, 1, &Bh, &wv)
                                  : ox_float_const(c, 1, &B, &wv)))
        return rc;
    if (ox_in_name(c, 2) && (rc = ox_float_const(c, 2, &C, NULL)))
        return rc;
    if (B->ndim != 2)
        return ox_fail(c, TLEARN_EFORMAT, "B has rank %d, expected 2", B->ndim);
    int64_t units = tb ? B->dims[0] : B->dims[1], k = tb ? B->dims[1] : B->dims[0];
    size_t in = tl_shape_size(x->shape);
    if ((size_t)k != in)
        return ox_fail(c, TLEARN_EFORMAT, "B has %lld input features, the input has %zu",
                       (long long)k, in);
    if (units < 1 || units > INT32_MAX)
        return ox_fail(c, TLEARN_EFORMAT, "B has %lld outputs", (long long)units);
    if (C && !ox_is_vector_of(C, (size_t)units) && C->numel != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "C must broadcast as a per-output bias of %lld "
                       "values", (long long)units);
    int layer;
    if ((rc = dense(c, x, wv->name, (int)units, &layer)))
        return rc;
    float *w = ox_param_data(c, layer, "weight"), *b = ox_param_data(c, layer, "bias");
    for (int64_t n = 0; n < units; n++) {
        for (int64_t j = 0; B->f && j < k; j++)
            w[n * k + j] = alpha * (tb ? B->f[n * k + j] : B->f[j * units + n]);
        b[n] = C ? beta * C->f[C->numel == 1 ? 0 : n] : 0.0f;
    }
    if ((rc = B->f ? ox_set_param(c, layer, "weight", w, (size_t)(units * k))
                   : ox_load_param(c, layer, "weight", wv, B)) ||
        (rc = ox_set_param(c, layer, "bias", b, (size_t)units)))
        return rc;
    ox_def_act(c, layer);
    ox_out(c)->bias_layer = layer;
    return TLEARN_OK;
}

/* MatMul(A, B) with a constant B [K, N]: a dense layer with a zero bias, which an Add of a
 * constant right after fills in; over the last axis (linear) when A has more than one
 * dimension per example. Between two activations: the matmul layer. */
static int op_matmul(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 2, 2);
    ox_value *x, *wv;
    ox_const *B;
    if (rc || (rc = ox_in_act(c, 0, 0, &x)))
        return rc;
    if (!ox_in_is_const(c, 1)) {
        ox_value *y;
        const tl_layer_ops *ops;
        int inputs[2], layer, tb = 0;
        if ((rc = ox_in_act(c, 1, 0, &y)))
            return rc;
        if (x->shape.rank < 2 || y->shape.rank != x->shape.rank)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "a product of two activations needs both "
                           "of the same rank, at least 3 with the batch");
        if ((rc = ox_need_ops(c, TLEARN_LAYER_MATMUL, "matmul", &ops)) ||
            (rc = ox_act_materialize(c, x, &inputs[0])) ||
            (rc = ox_act_materialize(c, y, &inputs[1])) ||
            (rc = ox_add_layer(c, ops, NULL, inputs, 2, &tb, 1, NULL, 0, &layer)))
            return rc;
        ox_def_act(c, layer);
        return TLEARN_OK;
    }
    if ((rc = ox_float_const(c, 1, &B, &wv)))
        return rc;
    if (B->ndim != 2)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "B has rank %d; a 2-D weight is supported",
                       B->ndim);
    int last = x->shape.rank > 1; /* linear over the last axis */
    int64_t k = B->dims[0], units = B->dims[1];
    size_t in = last ? (size_t)x->shape.d[x->shape.rank - 1] : tl_shape_size(x->shape);
    if ((size_t)k != in || units < 1 || units > INT32_MAX)
        return ox_fail(c, TLEARN_EFORMAT, "B is %lld x %lld, the input has %zu features",
                       (long long)k, (long long)units, in);
    int layer, producer = x->layer, ia[3] = {(int)units, 1, 1};
    /* a flat dense layer reads any layout; the linear one the view's last axis */
    if ((last && (rc = ox_act_materialize(c, x, &producer))) ||
        (rc = ox_add_layer(c, &tl_dense_ops, wv->name, &producer, 1, ia, last ? 3 : 1, NULL, 0,
                           &layer)))
        return rc;
    float *w = ox_param_data(c, layer, "weight"), *b = ox_param_data(c, layer, "bias");
    for (int64_t n = 0; n < units; n++) {
        for (int64_t j = 0; j < k; j++)
            w[n * k + j] = B->f[j * units + n];
        b[n] = 0.0f;
    }
    if ((rc = ox_set_param(c, layer, "weight", w, (size_t)(units * k))))
        return rc;
    ox_def_act(c, layer);
    ox_out(c)->bias_layer = layer;
    return TLEARN_OK;
}

/* ---- convolution and pooling ---- */

/* auto_pad must be NOTSET (or VALID, which means no padding). */
static int check_auto_pad(ox_ctx *c, int *valid)
{
    int is_notset, present, rc = ox_attr_string_is(c, "auto_pad", "NOTSET", &is_notset, &present);
    if (rc)
        return rc;
    *valid = 0;
    if (!present || is_notset)
        return TLEARN_OK;
    if ((rc = ox_attr_string_is(c, "auto_pad", "VALID", valid, &present)))
        return rc;
    if (*valid)
        return TLEARN_OK;
    return ox_fail(c, TLEARN_EUNSUPPORTED, "auto_pad SAME_UPPER/SAME_LOWER is not supported; "
                   "export with explicit padding (auto_pad NOTSET)");
}

/* pads [top, left, bottom, right] (all 0 when absent). */
static int read_pads(ox_ctx *c, int valid, int64_t p[4])
{
    static const int64_t zero[4] = {0, 0, 0, 0};
    int rc = ox_attr_ints(c, "pads", 4, zero, 0, OX_MAX_ATTR, p);
    if (rc)
        return rc;
    if (valid && (p[0] || p[1] || p[2] || p[3]))
        return ox_fail(c, TLEARN_EFORMAT, "auto_pad VALID with non-zero pads");
    return TLEARN_OK;
}

static int spatial_input(ox_ctx *c, int pad_ok, ox_value **x)
{
    int rc = ox_in_act(c, 0, pad_ok, x);
    if (rc)
        return rc;
    if ((*x)->shape.rank != 3)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input must be 4-D (N, C, H, W)");
    return TLEARN_OK;
}

static int op_conv(ox_ctx *c, int arg)
{
    (void)arg;
    static const int64_t ones[2] = {1, 1};
    int rc = ox_need_inputs(c, 2, 3);
    ox_value *x, *wv;
    ox_const Wh, *W = &Wh, *B = NULL;
    const tl_layer_ops *ops;
    int valid;
    if (rc || (rc = spatial_input(c, 1, &x)) || (rc = ox_float_const_lazy(c, 1, &Wh, &wv)) ||
        (rc = ox_need_ops(c, TLEARN_LAYER_CONV2D, "conv2d", &ops)) || (rc = check_auto_pad(c, &valid)))
        return rc;
    if (ox_in_name(c, 2) && (rc = ox_float_const(c, 2, &B, NULL)))
        return rc;
    if (W->ndim != 4)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "weight has rank %d; 2-D convolution (rank 4) is "
                       "supported", W->ndim);
    int64_t st[2], dl[2], ks[2], group, p[4];
    if ((rc = ox_attr_ints(c, "strides", 2, ones, 1, OX_MAX_ATTR, st)) ||
        (rc = ox_attr_ints(c, "dilations", 2, ones, 1, OX_MAX_ATTR, dl)) ||
        (rc = ox_attr_ints(c, "kernel_shape", 2, W->dims + 2, 1, OX_MAX_ATTR, ks)) ||
        (rc = ox_attr_int(c, "group", 1, &group)) || (rc = read_pads(c, valid, p)))
        return rc;
    int64_t M = W->dims[0], cg = W->dims[1];
    if (ks[0] != W->dims[2] || ks[1] != W->dims[3])
        return ox_fail(c, TLEARN_EFORMAT, "kernel_shape differs from the weight's shape");
    if (group < 1 || group > x->shape.c || M < 1 || M > OX_MAX_ATTR || cg * group != x->shape.c ||
        M % group != 0)
        return ox_fail(c, TLEARN_EFORMAT, "weight [%lld, %lld, ...] with group %lld does not fit "
                       "%d input channels", (long long)M, (long long)cg, (long long)group,
                       x->shape.c);
    if (B && !ox_is_vector_of(B, (size_t)M))
        return ox_fail(c, TLEARN_EFORMAT, "bias has %zu values for %lld filters", B->numel,
                       (long long)M);
    /* A zero Pad node before the convolution is the convolution's own padding; padding
     * that is not the same on both sides becomes a pad layer before it. */
    int layer = x->layer;
    for (int i = 0; i < 4; i++)
        p[i] += x->pad[i];
    if (p[0] != p[2] || p[1] != p[3]) {
        if ((rc = ox_add_zero_pad(c, &layer, p)))
            return rc;
        memset(p, 0, sizeof p);
    }
    int ia[11] = {(int)M, (int)ks[0], (int)ks[1], (int)st[0], (int)st[1], (int)p[0], (int)p[1],
                  (int)dl[0], (int)dl[1], (int)group, B != NULL};
    if ((rc = ox_add_layer(c, ops, wv->name, &layer, 1, ia, 11, NULL, 0, &layer)) ||
        (rc = ox_load_param(c, layer, "weight", wv, W)) ||
        (B && (rc = ox_set_param(c, layer, "bias", B->f, B->numel))))
        return rc;
    ox_def_act(c, layer);
    if (B)
        ox_out(c)->bias_layer = layer;
    return TLEARN_OK;
}

/* Common attributes of MaxPool and AveragePool: the layers take PyTorch's (and ONNX's)
 * geometry whole: asymmetric pads, ceil_mode (a last window that would start in the
 * padding is dropped, as PyTorch), dilation for max pooling. */
static int pool_attrs(ox_ctx *c, int64_t ks[2], int64_t st[2], int64_t dl[2], int64_t p[4],
                      int64_t *ceil_mode)
{
    static const int64_t ones[2] = {1, 1};
    int valid, rc = check_auto_pad(c, &valid);
    const Tlonnx__AttributeProto *k = ox_attr(c, "kernel_shape");
    if (!rc && !k)
        return ox_fail(c, TLEARN_EFORMAT, "kernel_shape is missing");
    if (rc || (rc = ox_attr_ints(c, "kernel_shape", 2, ones, 1, OX_MAX_ATTR, ks)) ||
        (rc = ox_attr_ints(c, "strides", 2, ones, 1, OX_MAX_ATTR, st)) ||
        (rc = ox_attr_ints(c, "dilations", 2, ones, 1, OX_MAX_ATTR, dl)) ||
        (rc = ox_attr_int(c, "ceil_mode", 0, ceil_mode)) || (rc = read_pads(c, valid, p)))
        return rc;
    if (*ceil_mode != 0 && *ceil_mode != 1)
        return ox_fail(c, TLEARN_EFORMAT, "ceil_mode is %lld", (long long)*ceil_mode);
    return TLEARN_OK;
}

/* MaxPool; a zero Pad before it becomes a pad layer (zeros take part in the maximum, the
 * pool's own padding does not). */
static int op_maxpool(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int64_t ks[2], st[2], dl[2], p[4], ceil_mode, order;
    if (rc || (rc = spatial_input(c, 0, &x)) ||
        (rc = ox_need_ops(c, TLEARN_LAYER_MAXPOOL2D, "maxpool2d", &ops)) ||
        (rc = pool_attrs(c, ks, st, dl, p, &ceil_mode)) ||
        (rc = ox_attr_int(c, "storage_order", 0, &order)))
        return rc;
    int ia[11] = {(int)ks[0], (int)ks[1], (int)st[0], (int)st[1], (int)p[0], (int)p[1],
                  (int)p[2], (int)p[3], (int)dl[0], (int)dl[1], (int)ceil_mode}, layer;
    if ((rc = ox_add_layer(c, ops, NULL, &x->layer, 1, ia, 11, NULL, 0, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* AveragePool; a zero Pad before it becomes its padding, counted in the average
 * (count_include_pad), which is what the padded tensor means. Where that cannot be one
 * pooling layer (the pool pads again without counting, or the sum exceeds half the
 * kernel), the Pad becomes a pad layer. */
static int op_avgpool(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int64_t ks[2], st[2], dl[2], p[4], ceil_mode, cip;
    if (rc || (rc = spatial_input(c, 1, &x)) ||
        (rc = ox_need_ops(c, TLEARN_LAYER_AVGPOOL2D, "avgpool2d", &ops)) ||
        (rc = pool_attrs(c, ks, st, dl, p, &ceil_mode)) ||
        (rc = ox_attr_int(c, "count_include_pad", 0, &cip)))
        return rc;
    if (dl[0] != 1 || dl[1] != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "dilated average pooling is not supported");
    if (x->pad[0] || x->pad[1] || x->pad[2] || x->pad[3]) {
        int64_t q[4], fold = cip || !(p[0] || p[1] || p[2] || p[3]);
        for (int i = 0; i < 4; i++) {
            q[i] = p[i] + x->pad[i];
            fold = fold && 2 * q[i] <= ks[i % 2];
        }
        if (fold) {
            memcpy(p, q, sizeof q);
            cip = 1;
        } else if ((rc = spatial_input(c, 0, &x))) { /* a pad layer */
            return rc;
        }
    }
    int ia[10] = {(int)ks[0], (int)ks[1], (int)st[0], (int)st[1], (int)p[0], (int)p[1],
                  cip != 0, (int)p[2], (int)p[3], (int)ceil_mode};
    int layer;
    if ((rc = ox_add_layer(c, ops, NULL, &x->layer, 1, ia, 10, NULL, 0, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

static int op_global_avgpool(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int layer;
    if (rc || (rc = spatial_input(c, 0, &x)) ||
        (rc = ox_need_ops(c, TLEARN_LAYER_GLOBAL_AVGPOOL, "global_avgpool", &ops)) ||
        (rc = ox_add_layer(c, ops, NULL, &x->layer, 1, NULL, 0, NULL, 0, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* ReduceMean over H and W (x.mean([2, 3]) in PyTorch) is a global average pool; without
 * keepdims its (N, C) result has the same memory layout as the pool's (N, C, 1, 1). */
static int op_reduce_mean(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int64_t keep, axes[2];
    const Tlonnx__AttributeProto *a = ox_attr(c, "axes");
    if (rc || (rc = spatial_input(c, 0, &x)) || (rc = ox_attr_int(c, "keepdims", 1, &keep)))
        return rc;
    if (!a || a->n_ints != 2)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only a mean over axes [2, 3] (H and W) is "
                       "supported");
    for (int i = 0; i < 2; i++)
        axes[i] = a->ints[i] < 0 ? a->ints[i] + 4 : a->ints[i];
    if (!((axes[0] == 2 && axes[1] == 3) || (axes[0] == 3 && axes[1] == 2)))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only a mean over axes [2, 3] (H and W) is "
                       "supported");
    int layer;
    if ((rc = ox_need_ops(c, TLEARN_LAYER_GLOBAL_AVGPOOL, "global_avgpool", &ops)) ||
        (rc = ox_add_layer(c, ops, NULL, &x->layer, 1, NULL, 0, NULL, 0, &layer)))
        return rc;
    if (keep)
        ox_def_act(c, layer);
    else
        ox_def_view(c, layer, tl_shape1(x->shape.c));
    return TLEARN_OK;
}

/* Pad of H and W. Zeros stay pending for the reader (a Conv or AveragePool folds them
 * in, any other reader gets a pad layer); another value, reflect and edge are a pad
 * layer at once. */
static int op_pad(ox_ctx *c, int arg)
{
    (void)arg;
    static const char *const modes[] = {"constant", "reflect", "edge"};
    int rc = ox_need_inputs(c, 2, 3), mode = 0, is, present;
    ox_value *x;
    ox_const *p;
    float v = 0.0f;
    if (rc || (rc = spatial_input(c, 1, &x)) || (rc = ox_in_const(c, 1, &p, NULL)))
        return rc;
    for (mode = 0; mode < 3; mode++) {
        if ((rc = ox_attr_string_is(c, "mode", modes[mode], &is, &present)))
            return rc;
        if (is || !present)
            break;
    }
    if (mode == 3)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only modes constant, reflect and edge are "
                       "supported");
    if (ox_in_name(c, 2) && (rc = ox_scalar_float(c, 2, &v)))
        return rc;
    if (!p->is_int || p->numel != 8)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "pads must be 8 integers for a 4-D input");
    const int64_t *q = p->i;
    if (q[0] || q[1] || q[4] || q[5])
        return ox_fail(c, TLEARN_EUNSUPPORTED, "padding the batch or channel dimension is not "
                       "supported");
    int64_t pads[4] = {q[2], q[3], q[6], q[7]};
    for (int i = 0; i < 4; i++)
        if (pads[i] < 0 || pads[i] + x->pad[i] > OX_MAX_ATTR)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "padding %lld is not supported (negative "
                           "or too large)", (long long)pads[i]);
    if (mode == 0 && v == 0.0f) {
        ox_def_alias(c, x);
        ox_value *o = ox_out(c);
        for (int i = 0; i < 4; i++)
            o->pad[i] += (int)pads[i];
        o->bias_layer = -1;
        return TLEARN_OK;
    }
    const tl_layer_ops *ops;
    int ia[5] = {(int)pads[0], (int)pads[1], (int)pads[2], (int)pads[3], 1 + mode}, layer;
    if ((rc = spatial_input(c, 0, &x)) || (rc = ox_need_ops(c, TLEARN_LAYER_PAD, "pad", &ops)) ||
        (rc = ox_add_layer(c, ops, NULL, &x->layer, 1, ia, 5, &v, 1, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* ---- normalisation ---- */

static int op_batchnorm(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 5, 5);
    ox_value *x, *sv;
    ox_const *s, *b, *mean, *var;
    const tl_layer_ops *ops;
    float eps, mom;
    int64_t training;
    if (rc || (rc = ox_in_act(c, 0, 0, &x)) || (rc = ox_float_const(c, 1, &s, &sv)) ||
        (rc = ox_float_const(c, 2, &b, NULL)) || (rc = ox_float_const(c, 3, &mean, NULL)) ||
        (rc = ox_float_const(c, 4, &var, NULL)) ||
        (rc = ox_need_ops(c, TLEARN_LAYER_BATCHNORM, "batchnorm", &ops)) ||
        (rc = ox_attr_float(c, "epsilon", 1e-5f, &eps)) ||
        (rc = ox_attr_float(c, "momentum", 0.9f, &mom)) ||
        (rc = ox_attr_int(c, "training_mode", 0, &training)))
        return rc;
    if (training)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "training_mode=1 is not supported; export the "
                       "model in eval() mode");
    size_t ch = (size_t)x->shape.c;
    if (x->shape.rank > 3)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input of rank %d; (N, C), (N, C, L) and "
                       "(N, C, H, W) are supported", 1 + x->shape.rank);
    if (!ox_is_vector_of(s, ch) || !ox_is_vector_of(b, ch) || !ox_is_vector_of(mean, ch) ||
        !ox_is_vector_of(var, ch))
        return ox_fail(c, TLEARN_EFORMAT, "scale, B, mean and var must have %zu values", ch);
    for (size_t i = 0; i < ch; i++)
        if (!(var->f[i] >= 0.0f))
            return ox_fail(c, TLEARN_EFORMAT, "var[%zu] is negative or NaN", i);
    if (!(eps > 0.0f) || !(mom >= 0.0f && mom <= 1.0f))
        return ox_fail(c, TLEARN_EFORMAT, "epsilon %g or momentum %g is out of range",
                       (double)eps, (double)mom);
    /* ONNX: running = running * momentum + batch * (1 - momentum); PyTorch's momentum is
     * the weight of the batch statistic. */
    float fa[2] = {eps, 1.0f - mom};
    int layer;
    if ((rc = ox_add_layer(c, ops, sv->name, &x->layer, 1, NULL, 0, fa, 2, &layer)) ||
        (rc = ox_set_param(c, layer, "weight", s->f, ch)) ||
        (rc = ox_set_param(c, layer, "bias", b->f, ch)) ||
        (rc = ox_set_param(c, layer, "running_mean", mean->f, ch)) ||
        (rc = ox_set_param(c, layer, "running_var", var->f, ch)))
        return rc;
    ox_def_view(c, layer, x->shape);
    return TLEARN_OK;
}

/* ---- pre-pass checks: attributes alone ---- */

static const char *check_auto_pad_only(ox_ctx *c)
{
    if (ox_peek_string_is(c, "auto_pad", "SAME_UPPER", 0) ||
        ox_peek_string_is(c, "auto_pad", "SAME_LOWER", 0))
        return "auto_pad SAME_UPPER/SAME_LOWER";
    return NULL;
}

/* Spatial attributes of 2 values (2-D kernels); a longer list is 3-D. */
static const char *check_2d(ox_ctx *c)
{
    const Tlonnx__AttributeProto *k = ox_attr(c, "kernel_shape");
    if (k && k->n_ints != 2)
        return k->n_ints == 3 ? "3-D kernel" : "not a 2-D kernel";
    return check_auto_pad_only(c);
}

static const char *check_pool(ox_ctx *c)
{
    if (c->node->n_output > 1 && c->node->output[1] && *c->node->output[1])
        return "the indices output";
    return check_2d(c);
}

static const char *check_avgpool(ox_ctx *c)
{
    const Tlonnx__AttributeProto *d = ox_attr(c, "dilations");
    for (size_t i = 0; d && i < d->n_ints; i++)
        if (d->ints[i] != 1)
            return "dilated average pooling";
    return check_pool(c);
}

static const char *check_gemm(ox_ctx *c)
{
    return ox_peek_int(c, "transA", 0) ? "transA=1" : NULL;
}

static const char *check_batchnorm(ox_ctx *c)
{
    if (ox_peek_int(c, "training_mode", 0) || c->node->n_output > 1)
        return "training-mode graph";
    return NULL;
}

static const char *check_pad(ox_ctx *c)
{
    return ox_peek_string_is(c, "mode", "constant", 1) || ox_peek_string_is(c, "mode", "reflect", 0) ||
                   ox_peek_string_is(c, "mode", "edge", 0)
               ? NULL : "mode other than constant, reflect, edge";
}

const ox_op ox_ops_nn[] = {
    {"Conv", op_conv, 0, 0, 0, check_2d,
     "2-D; constant weight and bias; auto_pad NOTSET or VALID; asymmetric pads through a "
     "pad layer"},
    {"Gemm", op_gemm, 0, 0, 0, check_gemm,
     "A an activation (N, K); B, C constant; transA=0; C per output or scalar"},
    {"MatMul", op_matmul, 0, 0, 0, NULL,
     "A an activation; B a constant (K, M) (a dense layer, over the last axis when A has "
     "rank > 2), or an activation of A's rank (the matmul layer, batch dims equal)"},
    {"MaxPool", op_maxpool, 0, 0, 0, check_pool,
     "2-D; pads (asymmetric too) of at most half the dilated kernel; ceil_mode; dilation; "
     "no indices output"},
    {"AveragePool", op_avgpool, 0, 0, 0, check_avgpool,
     "2-D; pads (asymmetric too) of at most half the kernel (a zero Pad before it folds "
     "in); ceil_mode; count_include_pad"},
    {"GlobalAveragePool", op_global_avgpool, 0, 0, 0, NULL, "(N, C, H, W)"},
    {"ReduceMean", op_reduce_mean, 0, 0, 17, NULL, "axes [2, 3] of (N, C, H, W)"},
    {"Pad", op_pad, 0, 0, 0, check_pad,
     "(N, C, H, W), H and W only, non-negative; constant (any value), reflect, edge; zeros "
     "fold into a following Conv or AveragePool"},
    {"BatchNormalization", op_batchnorm, 0, 0, 0, check_batchnorm,
     "inference (training_mode=0, one output); constant statistics; (N, C), (N, C, L) or "
     "(N, C, H, W)"},
    {NULL, NULL, 0, 0, 0, NULL, NULL},
};
