/* ONNX operators that change or name shapes: Flatten, Reshape, the constant folding of the
 * shape arithmetic PyTorch emits around a Reshape (Shape, Gather, Unsqueeze, Squeeze,
 * Concat, Slice, Cast, Constant), and the pass-through operators (Identity, Dropout, a
 * final Softmax). Shape arithmetic runs on constants with the batch size kept symbolic
 * (OX_BATCH). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "onnx_internal.h"

/* ---- shape changes ---- */

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
    return ox_fail(c, TLEARN_EUNSUPPORTED, "only reshapes that flatten (N, C, H, W) to "
                   "(N, C*H*W) are supported");
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
static int op_gather(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 2, 2);
    ox_const *data, *idx, *k;
    int64_t axis;
    if (rc || (rc = ox_int_const(c, 0, &data)) || (rc = ox_int_const(c, 1, &idx)) ||
        (rc = ox_attr_int(c, "axis", 0, &axis)))
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

/* Concat of 1-D integer constants (shape pieces). */
static int op_concat(ox_ctx *c, int arg)
{
    (void)arg;
    size_t n = c->node->n_input;
    int rc = ox_need_inputs(c, 1, n ? n : 1);
    int64_t axis;
    if (rc || (rc = ox_attr_int(c, "axis", 0, &axis)))
        return rc;
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

/* Slice of a 1-D integer constant (x.shape[1:] and the like), positive steps. */
static int op_slice(ox_ctx *c, int arg)
{
    (void)arg;
    int rc = ox_need_inputs(c, 3, 5);
    ox_const *data, *st, *en, *ax = NULL, *sp = NULL;
    if (rc || (rc = ox_int_const(c, 0, &data)) || (rc = ox_int_const(c, 1, &st)) ||
        (rc = ox_int_const(c, 2, &en)))
        return rc;
    if (ox_in_name(c, 3) && (rc = ox_int_const(c, 3, &ax)))
        return rc;
    if (ox_in_name(c, 4) && (rc = ox_int_const(c, 4, &sp)))
        return rc;
    if (data->ndim != 1 || st->numel != 1 || en->numel != 1 || (ax && ax->numel != 1) ||
        (sp && sp->numel != 1) || (ax && ax->i[0] != 0 && ax->i[0] != -1))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only slicing a 1-D shape along axis 0 is "
                       "supported");
    int64_t n = data->dims[0], step = sp ? sp->i[0] : 1;
    if (step < 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only positive steps are supported");
    int64_t b = st->i[0], e = en->i[0];
    /* ONNX clamps both ends into [0, n] after adding n to negative ones. */
    b = b < 0 ? (b < -n ? 0 : b + n) : (b > n ? n : b);
    e = e < 0 ? (e < -n ? 0 : e + n) : (e > n ? n : e);
    int64_t len = e > b ? (e - b + step - 1) / step : 0;
    ox_const *k;
    if ((rc = ox_const_new(c, 1, 1, &len, &k)))
        return rc;
    for (int64_t i = 0; i < len; i++)
        k->i[i] = data->i[b + i * step];
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
     "constant shape that flattens each example to (N, F), or keeps the shape"},
    {"Identity", op_identity, 0, 0, 0, NULL, "any input"},
    {"Dropout", op_dropout, 0, 0, 0, check_dropout, "inference: the identity"},
    {"Constant", op_constant, 0, 0, 0, NULL, "value, value_float(s), value_int(s)"},
    {"Shape", op_shape, 0, 0, 0, NULL, "folded (the batch stays symbolic)"},
    {"Gather", op_gather, 0, 0, 0, NULL, "folded: from a 1-D integer constant (a shape)"},
    {"Unsqueeze", op_unsqueeze, 0, 0, 0, NULL, "folded: integer constants"},
    {"Squeeze", op_unsqueeze, 1, 0, 0, NULL, "folded: integer constants"},
    {"Concat", op_concat, 0, 0, 0, NULL, "folded: 1-D integer constants along axis 0"},
    {"Slice", op_slice, 0, 0, 0, NULL, "folded: a 1-D integer constant, one axis, step >= 1"},
    {"Cast", op_cast, 0, 0, 0, check_cast,
     "to FLOAT on activations (no-op); FLOAT/INT32/INT64 on constants"},
    {NULL, NULL, 0, 0, 0, NULL, NULL},
};
