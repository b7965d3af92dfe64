/* ONNX operators that change or name shapes: Flatten, Reshape, Transpose, Concat, Split
 * and Slice on activations (the data-movement layers), the constant folding of the shape
 * arithmetic PyTorch emits around them (Shape, Gather, Unsqueeze, Squeeze, Concat, Slice,
 * Cast, Constant, and Add/Sub/Mul/Div of constants), and the pass-through operators
 * (Identity, Dropout; a final Softmax is dropped in onnx_ops_norm.c). Shape arithmetic
 * runs on constants with the batch size kept symbolic (OX_BATCH). ONNX axes count the
 * batch; the layers' axes do not. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "onnx_internal.h"

/* ---- shape changes ---- */

/* Input @p k as an activation whose producer outputs exactly the shape ONNX sees: a view
 * (the (C) of a pooled (C, 1, 1)) gets a reshape layer first, since axis-wise layers read
 * their producer's shape. */
static int exact_act(ox_ctx *c, size_t k, ox_value **out)
{
    int producer, rc = ox_in_act(c, k, 0, out);
    return rc ? rc : ox_act_materialize(c, *out, &producer);
}

/* ONNX axis @p axis of activation @p x as the layers' axis (0 is the first dim after the
 * batch); -1 with a message when it is out of range or the batch. */
static int layer_axis(ox_ctx *c, const ox_value *x, int64_t axis, int *out)
{
    int64_t r = 1 + x->shape.rank;
    if (axis < -r || axis >= r)
        return ox_fail(c, TLEARN_EFORMAT, "axis %lld is out of range for rank %lld",
                       (long long)axis, (long long)r);
    if (axis < 0)
        axis += r;
    if (axis == 0)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "operating along axis 0 (the batch) is not "
                       "supported");
    *out = (int)axis - 1;
    return TLEARN_OK;
}

static int flatten_to_2d(ox_ctx *c, ox_value *x)
{
    if (x->shape.rank == 1) {
        ox_def_alias(c, x);
        return TLEARN_OK;
    }
    int layer;
    int rc = ox_add_layer(c, &tl_flatten_ops, NULL, &x->layer, 1, NULL, 0, NULL, 0, &layer);
    if (rc)
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

static int op_flatten(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    ox_value *x;
    int64_t axis;
    if (rc || (rc = ox_in_act(c, 0, 0, &x)) || (rc = ox_attr_int(c, "axis", 1, &axis)))
        return rc;
    if (axis < 0)
        axis += 1 + x->shape.rank;
    if (axis != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "axis %lld is not supported (only 1: keep the "
                       "batch)", (long long)axis);
    return flatten_to_2d(c, x);
}

/* Reshape with a constant (possibly folded) shape: supported when it flattens
 * (N, C, H, W) to (N, C*H*W) or leaves the shape as it is. */
static int op_reshape(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 2, 2);
    ox_value *x;
    ox_const *s;
    int64_t allowzero;
    if (rc || (rc = ox_in_act(c, 0, 0, &x)) || (rc = ox_in_const(c, 1, &s, NULL)) ||
        (rc = ox_attr_int(c, "allowzero", 0, &allowzero)))
        return rc;
    if (!s->is_int || s->ndim != 1 || s->numel < 1 || s->numel > 1 + TL_MAX_RANK)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "shape must be 1 to %d integers", 1 + TL_MAX_RANK);
    int64_t in[1 + TL_MAX_RANK] = {OX_BATCH};
    for (int i = 0; i < x->shape.rank; i++)
        in[1 + i] = x->shape.d[i];
    int64_t feat = (int64_t)tl_shape_size(x->shape);
    int64_t t[1 + TL_MAX_RANK];
    size_t n = s->numel;
    int infer = -1;
    for (size_t i = 0; i < n; i++) {
        int64_t v = s->i[i];
        if (v == 0 && !allowzero) {
            if ((int)i > x->shape.rank)
                return ox_fail(c, TLEARN_EFORMAT, "shape copies dimension %zu of a rank-%d "
                               "input", i, 1 + x->shape.rank);
            v = in[i];
        }
        if (v == -1) {
            if (infer >= 0)
                return ox_fail(c, TLEARN_EFORMAT, "shape has two -1 entries");
            infer = (int)i;
        } else if (v != OX_BATCH && (v < 1 || v > INT32_MAX)) {
            return ox_fail(c, TLEARN_EUNSUPPORTED, "shape entry %lld is not supported",
                           (long long)v);
        }
        t[i] = v;
    }
    /* The first entry is the batch: symbolic, inferred, or the fixed batch of the graph. */
    if (infer == 0) {
        t[0] = OX_BATCH;
        infer = -1;
    } else if (t[0] != OX_BATCH && !(c->fixed_batch && t[0] == c->fixed_batch)) {
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the first shape entry %lld is not the batch "
                       "size; reshapes across the batch are not supported", (long long)t[0]);
    }
    int64_t prod = 1;
    for (size_t i = 1; i < n; i++) {
        if ((int)i == infer)
            continue;
        if (t[i] == OX_BATCH)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "the batch size in shape entry %zu", i);
        prod *= t[i];
        if (prod > feat)
            return ox_fail(c, TLEARN_EFORMAT, "shape holds more elements than the input");
    }
    if (infer > 0) {
        if (feat % prod)
            return ox_fail(c, TLEARN_EFORMAT, "shape cannot be inferred");
        t[infer] = feat / prod;
        prod = feat;
    }
    if (prod != feat)
        return ox_fail(c, TLEARN_EFORMAT, "shape holds %lld elements per example, the input "
                       "%lld", (long long)prod, (long long)feat);
    if (n == 2)
        return flatten_to_2d(c, x);
    int same = (int)n == 1 + x->shape.rank;
    for (size_t i = 1; same && i < n; i++)
        same = t[i] == in[i];
    if (same) {
        ox_def_alias(c, x);
        return TLEARN_OK;
    }
    if (n - 1 > TL_MAX_RANK)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the result has rank %zu; at most %d is "
                       "supported", n, 1 + TL_MAX_RANK);
    int ia[1 + TL_MAX_RANK] = {(int)n - 1}, layer;
    for (size_t i = 1; i < n; i++)
        ia[i] = (int)t[i];
    if ((rc = ox_add_layer(c, &tl_reshape_ops, NULL, &x->layer, 1, ia, (int)n, NULL, 0, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* Transpose keeping the batch first: a transpose layer (perm without the batch). */
/* Transpose of a constant (a weight transposed in the graph, as libtlearn's exporter writes
 * torch.nn.Linear over the last axis): folded into a new constant. */
static int transpose_const(ox_ctx *c)
{
    ox_const *t, *k;
    int rc = ox_in_const(c, 0, &t, NULL);
    if (rc)
        return rc;
    int r = t->ndim;
    int64_t rev[OX_MAX_RANK], perm[OX_MAX_RANK], dims[OX_MAX_RANK], stride[OX_MAX_RANK];
    for (int i = 0; i < r; i++)
        rev[i] = r - 1 - i;
    if (r && (rc = ox_attr_ints(c, "perm", (size_t)r, rev, 0, r - 1, perm)))
        return rc;
    int seen[OX_MAX_RANK] = {0};
    for (int i = 0; i < r; i++)
        if (seen[perm[i]]++)
            return ox_fail(c, TLEARN_EFORMAT, "perm repeats axis %lld", (long long)perm[i]);
    int64_t s = 1;
    for (int i = r - 1; i >= 0; i--) {
        stride[i] = s;
        s *= t->dims[i];
    }
    for (int i = 0; i < r; i++)
        dims[i] = t->dims[perm[i]];
    if ((rc = ox_const_new(c, t->is_int, r, dims, &k)))
        return rc;
    /* walk the output in order, the input by the permuted strides */
    int64_t idx[OX_MAX_RANK] = {0};
    for (size_t o = 0; o < k->numel; o++) {
        size_t src = 0;
        for (int i = 0; i < r; i++)
            src += (size_t)(idx[i] * stride[perm[i]]);
        if (t->is_int)
            k->i[o] = t->i[src];
        else
            k->f[o] = t->f[src];
        for (int i = r - 1; i >= 0 && ++idx[i] == dims[i]; i--)
            idx[i] = 0;
    }
    ox_def_const(c, k);
    return TLEARN_OK;
}

static int op_transpose(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    ox_value *x;
    if (!rc && ox_in_is_const(c, 0))
        return transpose_const(c);
    if (rc || (rc = exact_act(c, 0, &x)))
        return rc;
    int r = 1 + x->shape.rank, ident = 1;
    int64_t perm[1 + TL_MAX_RANK], rev[1 + TL_MAX_RANK];
    for (int i = 0; i < r; i++)
        rev[i] = r - 1 - i;
    if ((rc = ox_attr_ints(c, "perm", (size_t)r, rev, 0, r - 1, perm)))
        return rc;
    int seen[1 + TL_MAX_RANK] = {0}, ia[1 + TL_MAX_RANK] = {r - 1}, layer;
    for (int i = 0; i < r; i++) {
        if (seen[perm[i]]++)
            return ox_fail(c, TLEARN_EFORMAT, "perm repeats axis %lld", (long long)perm[i]);
        ident = ident && perm[i] == i;
    }
    if (perm[0] != 0)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "perm moves the batch axis; only permutations "
                       "that keep axis 0 first are supported");
    if (ident) {
        ox_def_alias(c, x);
        return TLEARN_OK;
    }
    for (int i = 1; i < r; i++)
        ia[i] = (int)perm[i] - 1;
    if ((rc = ox_add_layer(c, &tl_transpose_ops, NULL, &x->layer, 1, ia, r, NULL, 0, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* [b, e) of a slice of a dimension of @p d elements as ONNX clamps it (positive step). */
static void clamp_range(int64_t d, int64_t *b, int64_t *e)
{
    *b = *b < 0 ? (*b < -d ? 0 : *b + d) : (*b > d ? d : *b);
    *e = *e < 0 ? (*e < -d ? 0 : *e + d) : (*e > d ? d : *e);
}

/* A slice layer of [b, e) with @p step along layer axis @p axis of the layer @p *layer
 * reading shape @p *s; *layer and *s become the slice's. */
static int add_slice(ox_ctx *c, int *layer, tl_shape *s, int axis, int64_t b, int64_t e,
                     int64_t step)
{
    int ia[4] = {axis, (int)b, (int)e, (int)step}, rc;
    if (e <= b)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the slice along axis %d is empty", axis + 1);
    if ((rc = ox_add_layer(c, &tl_slice_ops, NULL, layer, 1, ia, 4, NULL, 0, layer)))
        return rc;
    *s = c->m->layers[*layer]->out;
    return TLEARN_OK;
}

/* Split into slices along one axis: sizes from the input (opset >= 13) or the attribute,
 * else equal parts. Outputs nobody reads get no layer. */
static int op_split(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 2), axis;
    ox_value *x;
    int64_t ax, sizes[TL_MAX_INPUTS];
    size_t n = c->node->n_output;
    if (rc || (rc = exact_act(c, 0, &x)) || (rc = ox_attr_int(c, "axis", 0, &ax)) ||
        (rc = layer_axis(c, x, ax, &axis)))
        return rc;
    if (n < 1 || n > TL_MAX_INPUTS)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "%zu outputs; 1 to %d are supported", n,
                       TL_MAX_INPUTS);
    int64_t d = x->shape.d[axis], total = 0;
    const int64_t *given = NULL;
    size_t ngiven = 0;
    if (c->opset >= 13 && ox_in_name(c, 1)) {
        ox_const *t;
        if ((rc = ox_int_const(c, 1, &t)))
            return rc;
        given = t->i;
        ngiven = t->numel;
    } else if (c->opset < 13) {
        const Tlonnx__AttributeProto *a = ox_attr(c, "split");
        if (a && (rc = ox_ref_check(c, a)))
            return rc;
        if (a && a->n_ints) {
            given = a->ints;
            ngiven = a->n_ints;
        }
    }
    if (given && ngiven != n)
        return ox_fail(c, TLEARN_EFORMAT, "split has %zu sizes for %zu outputs", ngiven, n);
    if (!given && d % (int64_t)n)
        return ox_fail(c, TLEARN_EFORMAT, "axis of %lld elements does not split into %zu "
                       "equal parts", (long long)d, n);
    for (size_t k = 0; k < n; k++) {
        sizes[k] = given ? given[k] : d / (int64_t)n;
        if (sizes[k] < 0 || sizes[k] > d)
            return ox_fail(c, TLEARN_EFORMAT, "split size %lld is out of range",
                           (long long)sizes[k]);
        total += sizes[k];
    }
    if (total != d)
        return ox_fail(c, TLEARN_EFORMAT, "split sizes add up to %lld, the axis has %lld",
                       (long long)total, (long long)d);
    int64_t at = 0;
    for (size_t k = 0; k < n; at += sizes[k++]) {
        const char *on = c->node->output[k];
        ox_value *o = on && *on ? ox_find(c, on) : NULL;
        if (!o || !o->uses)
            continue;
        int layer = x->layer;
        tl_shape s = x->shape;
        if ((rc = add_slice(c, &layer, &s, axis, at, at + sizes[k], 1)))
            return rc;
        ox_def_act_at(c, k, layer);
    }
    return TLEARN_OK;
}


/* ---- constants and shape arithmetic ---- */

static int op_constant(ox_ctx *c, int arg)
{
    (void)arg;
    if (c->node->n_output < 1 || !c->node->output[0] || !*c->node->output[0])
        return ox_fail(c, TLEARN_EFORMAT, "has no output");
    if (c->node->n_attribute != 1)
        return ox_fail(c, TLEARN_EFORMAT, "needs exactly one attribute");
    const Tlonnx__AttributeProto *a = c->node->attribute[0];
    const char *an = a->name ? a->name : "";
    int rc = ox_ref_check(c, a);
    ox_const *k;
    if (rc)
        return rc;
    if (strcmp(an, "value") == 0 && a->t) {
        rc = ox_tensor_convert(c, a->t, &k);
    } else if (strcmp(an, "value_float") == 0 && a->has_f) {
        if (!(rc = ox_const_new(c, 0, 0, NULL, &k)))
            k->f[0] = a->f;
    } else if (strcmp(an, "value_int") == 0 && a->has_i) {
        if (!(rc = ox_const_new(c, 1, 0, NULL, &k)))
            k->i[0] = a->i;
    } else if (strcmp(an, "value_floats") == 0) {
        int64_t d = (int64_t)a->n_floats;
        if (!(rc = ox_const_new(c, 0, 1, &d, &k)) && a->n_floats)
            memcpy(k->f, a->floats, a->n_floats * sizeof(float));
    } else if (strcmp(an, "value_ints") == 0) {
        int64_t d = (int64_t)a->n_ints;
        if (!(rc = ox_const_new(c, 1, 1, &d, &k)) && a->n_ints)
            memcpy(k->i, a->ints, a->n_ints * sizeof(int64_t));
    } else {
        return ox_fail(c, TLEARN_EUNSUPPORTED, "attribute '%.60s' is not supported", an);
    }
    if (rc)
        return rc;
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* Shape of an activation: [batch (symbolic), C, H, W] or [batch, F]; of a constant: its
 * dims. Opset 15's start/end slice the result. */
static int op_shape(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    if (rc)
        return rc;
    int64_t d[OX_MAX_RANK];
    int r;
    if (ox_in_is_const(c, 0)) {
        ox_const *t;
        if ((rc = ox_in_const(c, 0, &t, NULL)))
            return rc;
        r = t->ndim;
        for (int i = 0; i < r; i++)
            d[i] = t->dims[i];
    } else {
        ox_value *x;
        if ((rc = ox_in_act(c, 0, 0, &x)))
            return rc;
        r = 1 + x->shape.rank;
        d[0] = c->fixed_batch ? c->fixed_batch : OX_BATCH;
        for (int i = 0; i < x->shape.rank; i++)
            d[1 + i] = x->shape.d[i];
    }
    int64_t start, end;
    if ((rc = ox_attr_int(c, "start", 0, &start)) || (rc = ox_attr_int(c, "end", r, &end)))
        return rc;
    if (start < 0)
        start += r;
    if (end < 0)
        end += r;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < start ? start : end > r ? r : end;
    int64_t len = end - start;
    ox_const *k;
    if ((rc = ox_const_new(c, 1, 1, &len, &k)))
        return rc;
    for (int64_t i = 0; i < len; i++)
        k->i[i] = d[start + i];
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* Gather along axis 0 of a 1-D integer constant (a shape). */
/* Gather of one position of an activation (ViT's x[:, 0]): a slice layer, seen without
 * the axis when the index is a scalar. */
static int gather_act(ox_ctx *c, const ox_const *idx, int64_t axis)
{
    ox_value *x;
    int a, rc = exact_act(c, 0, &x);
    if (rc || (rc = layer_axis(c, x, axis, &a)))
        return rc;
    if (idx->numel != 1 || idx->ndim > 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "gathering %zu positions of an activation (one "
                       "is supported)", idx->numel);
    tl_shape s = x->shape;
    int64_t i = idx->i[0] < 0 ? idx->i[0] + s.d[a] : idx->i[0];
    if (i < 0 || i >= s.d[a])
        return ox_fail(c, TLEARN_EFORMAT, "index %lld is out of range for an axis of %d",
                       (long long)idx->i[0], s.d[a]);
    int layer = x->layer;
    if (s.d[a] > 1 && (rc = add_slice(c, &layer, &s, a, i, i + 1, 1)))
        return rc;
    if (idx->ndim == 1) {
        ox_def_view(c, layer, s);
        return TLEARN_OK;
    }
    if (s.rank == 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "gathering one value per example (the output "
                       "would have no dimension after the batch)");
    for (int k = a; k + 1 < TL_MAX_RANK; k++)
        s.d[k] = s.d[k + 1];
    s.d[TL_MAX_RANK - 1] = 1;
    s.rank--;
    ox_def_view(c, layer, s);
    return TLEARN_OK;
}

/* Gather of rows of a constant (V, D) table by int32 token ids (N, T): nn.Embedding, an
 * embedding layer holding the table (the ids are checked against V before every run). */
static int gather_embedding(ox_ctx *c, int64_t axis)
{
    const char *ids = ox_in_name(c, 1);
    ox_value *x = ox_find(c, ids), *wv;
    ox_const *w;
    int rc, layer;
    if (!x || x->kind != OX_ACT || x->dtype != TLEARN_DTYPE_INT32 || x->layer >= 0 ||
        x->shape.rank != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "gathering rows of a table by '%.100s': the "
                       "indices must be a graph input of token ids (N, T)", ids);
    if ((rc = ox_float_const(c, 0, &w, &wv)))
        return rc;
    if (axis != 0 || w->ndim != 2 || w->dims[0] > INT32_MAX || w->dims[1] > INT32_MAX)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only rows of a 2-D table (an embedding) can be "
                       "gathered by token ids");
    int ia[3] = {(int)w->dims[0], (int)w->dims[1], -1};
    if ((rc = ox_add_layer(c, &tl_embedding_ops, wv->name, &x->layer, 1, ia, 3, NULL, 0,
                           &layer)) ||
        (rc = ox_set_param(c, layer, "weight", w->f, w->numel)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

static int op_gather(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 2, 2);
    ox_const *data, *idx, *k;
    int64_t axis;
    if (rc || (rc = ox_attr_int(c, "axis", 0, &axis)))
        return rc;
    if (ox_in_is_const(c, 0) && !ox_in_is_const(c, 1))
        return gather_embedding(c, axis);
    if ((rc = ox_int_const(c, 1, &idx)))
        return rc;
    if (!ox_in_is_const(c, 0))
        return gather_act(c, idx, axis);
    if ((rc = ox_int_const(c, 0, &data)))
        return rc;
    if (data->ndim != 1 || (axis != 0 && axis != -1) || idx->ndim > 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only gathering from a 1-D shape is supported");
    if ((rc = ox_const_new(c, 1, idx->ndim, idx->dims, &k)))
        return rc;
    int64_t n = data->dims[0];
    for (size_t i = 0; i < idx->numel; i++) {
        int64_t j = idx->i[i];
        if (j < -n || j >= n)
            return ox_fail(c, TLEARN_EFORMAT, "index %lld is out of range", (long long)j);
        k->i[i] = data->i[j < 0 ? j + n : j];
    }
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* Axes of Unsqueeze/Squeeze: an attribute before opset 13, an input from 13. */
static int read_axes(ox_ctx *c, int64_t *axes, size_t *n, int *given)
{
    *n = 0;
    *given = 0;
    if (c->opset >= 13) {
        if (!ox_in_name(c, 1))
            return TLEARN_OK;
        ox_const *t;
        int rc = ox_int_const(c, 1, &t);
        if (rc)
            return rc;
        if (t->numel > OX_MAX_RANK)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "too many axes");
        memcpy(axes, t->i, t->numel * sizeof *axes);
        *n = t->numel;
        *given = 1;
        return TLEARN_OK;
    }
    const Tlonnx__AttributeProto *a = ox_attr(c, "axes");
    if (!a)
        return TLEARN_OK;
    if (a->n_ints > OX_MAX_RANK)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "too many axes");
    memcpy(axes, a->ints, a->n_ints * sizeof *axes);
    *n = a->n_ints;
    *given = 1;
    return TLEARN_OK;
}

static int op_unsqueeze(ox_ctx *c, int squeeze)
{
    int rc = ox_need_inputs(c, 1, 2);
    ox_const *t, *k;
    int64_t axes[OX_MAX_RANK];
    size_t na;
    int given;
    if (rc || (rc = ox_int_const(c, 0, &t)) || (rc = read_axes(c, axes, &na, &given)))
        return rc;
    int64_t dims[OX_MAX_RANK];
    int mark[OX_MAX_RANK] = {0};
    int r = squeeze ? t->ndim : t->ndim + (int)na, nd = 0;
    if (r > OX_MAX_RANK || (!squeeze && !given))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the result rank is not supported");
    for (size_t i = 0; i < na; i++) {
        int64_t a = axes[i] < 0 ? axes[i] + r : axes[i];
        if (a < 0 || a >= r || mark[a])
            return ox_fail(c, TLEARN_EFORMAT, "axis %lld is out of range or repeated",
                           (long long)axes[i]);
        mark[a] = 1;
    }
    if (squeeze) {
        for (int d = 0; d < t->ndim; d++) {
            int drop = given ? mark[d] : t->dims[d] == 1;
            if (drop && t->dims[d] != 1)
                return ox_fail(c, TLEARN_EFORMAT, "squeezed axis %d has size %lld", d,
                               (long long)t->dims[d]);
            if (!drop)
                dims[nd++] = t->dims[d];
        }
    } else {
        for (int d = 0, s = 0; d < r; d++)
            dims[nd++] = mark[d] ? 1 : t->dims[s++];
    }
    if ((rc = ox_const_new(c, 1, nd, dims, &k)))
        return rc;
    memcpy(k->i, t->i, t->numel * sizeof(int64_t));
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* Concat of activations along one axis (a concat layer), e.g. channels in DenseNet. */
static int concat_acts(ox_ctx *c, size_t n, int64_t ax)
{
    int inputs[TL_MAX_INPUTS], axis = 0, rc, layer;
    ox_value *x0 = NULL;
    if (n > TL_MAX_INPUTS)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "%zu inputs; at most %d are supported", n,
                       TL_MAX_INPUTS);
    for (size_t i = 0; i < n; i++) {
        ox_value *x;
        if ((rc = exact_act(c, i, &x)))
            return rc;
        if (!i && (rc = layer_axis(c, x, ax, &axis)))
            return rc;
        if (i && x->shape.rank != x0->shape.rank)
            return ox_fail(c, TLEARN_EFORMAT, "inputs have ranks %d and %d",
                           1 + x0->shape.rank, 1 + x->shape.rank);
        x0 = i ? x0 : x;
        inputs[i] = x->layer;
    }
    if (n == 1) {
        ox_def_alias(c, x0);
        return TLEARN_OK;
    }
    if ((rc = ox_add_layer(c, &tl_concat_ops, NULL, inputs, (int)n, &axis, 1, NULL, 0, &layer)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* Concat of activations (a layer) or of 1-D integer constants (shape pieces, folded). */
static int op_concat(ox_ctx *c, int arg)
{
    (void)arg;
    size_t n = c->node->n_input;
    int rc = ox_need_inputs(c, 1, n ? n : 1);
    int64_t axis;
    if (rc || (rc = ox_attr_int(c, "axis", 0, &axis)))
        return rc;
    for (size_t i = 0; i < n; i++)
        if (!ox_in_is_const(c, i))
            return concat_acts(c, n, axis);
    if (axis != 0 && axis != -1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only axis 0 of 1-D shapes is supported");
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        ox_const *t;
        if ((rc = ox_int_const(c, i, &t)))
            return rc;
        if (t->ndim != 1)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "only 1-D inputs are supported");
        total += t->dims[0];
        if (total > OX_MAX_ATTR)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "the result is too long");
    }
    ox_const *k;
    if ((rc = ox_const_new(c, 1, 1, &total, &k)))
        return rc;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        ox_const *t = ox_find(c, c->node->input[i])->c;
        memcpy(k->i + at, t->i, t->numel * sizeof(int64_t));
        at += t->numel;
    }
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* Slice of an activation: one slice layer per axis that changes, positive steps. */
static int slice_act(ox_ctx *c, const ox_const *st, const ox_const *en, const ox_const *ax,
                     const ox_const *sp)
{
    ox_value *x;
    int rc = exact_act(c, 0, &x);
    if (rc)
        return rc;
    size_t n = st->numel;
    if (en->numel != n || (ax && ax->numel != n) || (sp && sp->numel != n) ||
        st->ndim != 1 || en->ndim != 1)
        return ox_fail(c, TLEARN_EFORMAT, "starts, ends, axes and steps differ in length");
    int layer = x->layer, seen[TL_MAX_RANK] = {0};
    tl_shape s = x->shape;
    for (size_t i = 0; i < n; i++) {
        int axis;
        int64_t b = st->i[i], e = en->i[i], step = sp ? sp->i[i] : 1;
        if ((rc = layer_axis(c, x, ax ? ax->i[i] : (int64_t)i, &axis)))
            return rc;
        if (seen[axis]++)
            return ox_fail(c, TLEARN_EFORMAT, "axis %d is sliced twice", axis + 1);
        if (step < 1)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "step %lld is not supported (only "
                           "positive steps)", (long long)step);
        if (b == OX_BATCH || e == OX_BATCH)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "the slice bounds hold the batch size");
        clamp_range(s.d[axis], &b, &e);
        if (b == 0 && e == s.d[axis] && step == 1)
            continue; /* the whole axis */
        if (step > INT32_MAX)
            step = INT32_MAX;
        if ((rc = add_slice(c, &layer, &s, axis, b, e, step)))
            return rc;
    }
    if (layer == x->layer)
        ox_def_alias(c, x);
    else
        ox_def_act(c, layer);
    return TLEARN_OK;
}

/* Slice of an activation (slice layers) or of a 1-D integer constant (x.shape[1:] and
 * the like, folded), positive steps. */
static int op_slice(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 3, 5);
    ox_const *data, *st, *en, *ax = NULL, *sp = NULL;
    if (rc || (rc = ox_int_const(c, 1, &st)) || (rc = ox_int_const(c, 2, &en)))
        return rc;
    if (ox_in_name(c, 3) && (rc = ox_int_const(c, 3, &ax)))
        return rc;
    if (ox_in_name(c, 4) && (rc = ox_int_const(c, 4, &sp)))
        return rc;
    if (!ox_in_is_const(c, 0))
        return slice_act(c, st, en, ax, sp);
    if ((rc = ox_int_const(c, 0, &data)))
        return rc;
    if (data->ndim != 1 || st->numel != 1 || en->numel != 1 || (ax && ax->numel != 1) ||
        (sp && sp->numel != 1) || (ax && ax->i[0] != 0 && ax->i[0] != -1))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only slicing a 1-D shape along axis 0 is "
                       "supported");
    int64_t n = data->dims[0], step = sp ? sp->i[0] : 1;
    if (step < 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only positive steps are supported");
    int64_t b = st->i[0], e = en->i[0];
    clamp_range(n, &b, &e);
    int64_t len = e > b ? (e - b + step - 1) / step : 0;
    ox_const *k;
    if ((rc = ox_const_new(c, 1, 1, &len, &k)))
        return rc;
    for (int64_t i = 0; i < len; i++)
        k->i[i] = data->i[b + i * step];
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* ---- element-wise arithmetic on constants (x.size(1) // 2 and the like) ---- */

static const char *const fold_ops[] = {"Add", "Sub", "Mul", "Div"};

int ox_is_fold_op(const char *op_type)
{
    for (size_t i = 0; i < sizeof fold_ops / sizeof *fold_ops; i++)
        if (strcmp(op_type, fold_ops[i]) == 0)
            return 1;
    return 0;
}

static int64_t fold_int(int op, int64_t a, int64_t b)
{
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    default: return a / b; /* ONNX integer Div truncates, as C */
    }
}

static float fold_float(int op, float a, float b)
{
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    default: return a / b;
    }
}

/* Add, Sub, Mul, Div of two constants of one element type with NumPy broadcasting. */
int ox_fold(ox_ctx *c)
{
    int rc = ox_need_inputs(c, 2, 2), op = 0;
    ox_const *a, *b, *k;
    if (rc || (rc = ox_in_const(c, 0, &a, NULL)) || (rc = ox_in_const(c, 1, &b, NULL)))
        return rc;
    while (strcmp(c->node->op_type, fold_ops[op]) != 0)
        op++;
    if (a->is_int != b->is_int)
        return ox_fail(c, TLEARN_EFORMAT, "the inputs have different element types");
    int r = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t dims[OX_MAX_RANK], da[OX_MAX_RANK], db[OX_MAX_RANK];
    for (int i = 0; i < r; i++) {
        int ia = i - (r - a->ndim), ib = i - (r - b->ndim);
        da[i] = ia < 0 ? 1 : a->dims[ia];
        db[i] = ib < 0 ? 1 : b->dims[ib];
        if (da[i] != db[i] && da[i] != 1 && db[i] != 1)
            return ox_fail(c, TLEARN_EFORMAT, "shapes do not broadcast");
        dims[i] = da[i] == 1 ? db[i] : da[i];
    }
    if ((rc = ox_const_new(c, a->is_int, r, dims, &k)))
        return rc;
    for (size_t j = 0; j < k->numel; j++) {
        /* the index of element j in a and b: dims of size 1 repeat */
        size_t rem = j, ja = 0, jb = 0, sa = 1, sb = 1;
        for (int i = r - 1; i >= 0; i--) {
            size_t idx = rem % (size_t)dims[i];
            rem /= (size_t)dims[i];
            ja += (da[i] == 1 ? 0 : idx) * sa;
            jb += (db[i] == 1 ? 0 : idx) * sb;
            sa *= (size_t)da[i];
            sb *= (size_t)db[i];
        }
        if (!a->is_int) {
            k->f[j] = fold_float(op, a->f[ja], b->f[jb]);
            continue;
        }
        int64_t x = a->i[ja], y = b->i[jb];
        if (x == OX_BATCH || y == OX_BATCH)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "arithmetic on the batch size, which is "
                           "not a constant");
        if (op == 3 && y == 0)
            return ox_fail(c, TLEARN_EFORMAT, "integer division by zero");
        if ((x > INT32_MAX || x < -INT32_MAX || y > INT32_MAX || y < -INT32_MAX) && op != 3)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "shape arithmetic beyond 32-bit values");
        k->i[j] = fold_int(op, x, y);
    }
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* Cast: a no-op on activations cast to FLOAT; on constants between int64 and float. */
static int op_cast(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    int64_t to;
    if (rc || (rc = ox_attr_int(c, "to", 0, &to)))
        return rc;
    if (to != 1 && to != 6 && to != 7)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "casting to type %lld is not supported",
                       (long long)to);
    if (!ox_in_is_const(c, 0)) {
        ox_value *x;
        if ((rc = ox_in_act(c, 0, 0, &x)))
            return rc;
        if (to != 1)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "activations are FLOAT; casting them to "
                           "integers is not supported");
        ox_def_alias(c, x);
        return TLEARN_OK;
    }
    ox_const *t, *k;
    if ((rc = ox_in_const(c, 0, &t, NULL)) || (rc = ox_const_new(c, to != 1, t->ndim, t->dims, &k)))
        return rc;
    for (size_t i = 0; i < t->numel; i++) {
        if (to == 1) {
            if (t->is_int && t->i[i] == OX_BATCH)
                return ox_fail(c, TLEARN_EUNSUPPORTED, "the batch size is not a constant");
            k->f[i] = t->is_int ? (float)t->i[i] : t->f[i];
        } else if (t->is_int) {
            k->i[i] = t->i[i];
        } else {
            if (!(fabsf(t->f[i]) < 9.2e18f))
                return ox_fail(c, TLEARN_EFORMAT, "value out of the integer range");
            k->i[i] = (int64_t)t->f[i];
        }
    }
    ox_def_const(c, k);
    return TLEARN_OK;
}

/* ---- pass-through operators ---- */

static int op_identity(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 1);
    if (rc)
        return rc;
    ox_value *v = ox_find(c, c->node->input[0]);
    if (v->kind == OX_CONST && !v->c && (rc = ox_in_const(c, 0, &v->c, NULL)))
        return rc;
    ox_def_alias(c, v);
    return TLEARN_OK;
}

/* Dropout at inference is the identity (PyTorch drops it from eval exports anyway). */
static int op_dropout(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 1, 3);
    ox_value *x;
    if (rc || (rc = ox_in_act(c, 0, 0, &x)))
        return rc;
    if (ox_in_name(c, 2)) {
        ox_const *t;
        if ((rc = ox_in_const(c, 2, &t, NULL)))
            return rc;
        if (t->numel != 1 || (t->is_int ? t->i[0] != 0 : t->f[0] != 0.0f))
            return ox_fail(c, TLEARN_EUNSUPPORTED, "training_mode must be false");
    }
    ox_def_alias(c, x);
    return TLEARN_OK;
}

/* ---- pre-pass checks ---- */

static const char *check_cast(ox_ctx *c)
{
    int64_t to = ox_peek_int(c, "to", 0);
    return to == 1 || to == 6 || to == 7 ? NULL : "cast to a type other than FLOAT, INT32, INT64";
}

static const char *check_dropout(ox_ctx *c)
{
    return c->node->n_output > 1 && c->node->output[1] && *c->node->output[1]
               ? "training-mode graph (the mask output)" : NULL;
}

const ox_op ox_ops_shape[] = {
    {"Flatten", op_flatten, 0, 0, 0, NULL, "axis 1 (keeps the batch)"},
    {"Reshape", op_reshape, 0, 0, 0, NULL,
     "constant (or folded) shape that keeps the batch first, at most 4 dims after it"},
    {"Transpose", op_transpose, 0, 0, 0, NULL,
     "perm keeps the batch first; rank 2 to 5; or folded: a constant"},
    {"Split", op_split, 0, 0, 0, NULL,
     "activations, not along the batch; sizes constant (input from opset 13, attribute "
     "before) or equal parts"},
    {"Identity", op_identity, 0, 0, 0, NULL, "any input"},
    {"Dropout", op_dropout, 0, 0, 0, check_dropout, "inference: the identity"},
    {"Constant", op_constant, 0, 0, 0, NULL, "value, value_float(s), value_int(s)"},
    {"Shape", op_shape, 0, 0, 0, NULL, "folded (the batch stays symbolic)"},
    {"Gather", op_gather, 0, 0, 0, NULL,
     "an activation, one constant index along any axis but the batch (a slice layer); a "
     "constant (V, D) table by token ids, a graph input (an embedding layer); or folded: "
     "from a 1-D integer constant (a shape)"},
    {"Unsqueeze", op_unsqueeze, 0, 0, 0, NULL, "folded: integer constants"},
    {"Squeeze", op_unsqueeze, 1, 0, 0, NULL, "folded: integer constants"},
    {"Concat", op_concat, 0, 0, 0, NULL,
     "2 to 256 activations along any axis but the batch; or folded: 1-D integer constants "
     "along axis 0"},
    {"Slice", op_slice, 0, 0, 0, NULL,
     "an activation, constant bounds, any axes but the batch, step >= 1, not empty; or "
     "folded: a 1-D integer constant, one axis, step >= 1"},
    {"Cast", op_cast, 0, 0, 0, check_cast,
     "to FLOAT on activations (no-op); FLOAT/INT32/INT64 on constants"},
    {NULL, NULL, 0, 0, 0, NULL, NULL},
};
