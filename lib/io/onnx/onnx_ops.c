/* ONNX operators -> libtlearn layers, with ONNX's attribute defaults (opsets 11 to 17).
 *
 * Each handler checks its inputs and attributes, refuses what the layers cannot compute
 * exactly (TLEARN_EUNSUPPORTED, naming what would be needed), adds layers through
 * tl_model_add() and copies the weights in PyTorch's layouts. Shape arithmetic that
 * PyTorch emits around Reshape (Shape, Gather, Unsqueeze, Concat, ...) runs here on
 * constants, with the batch size kept symbolic (OX_BATCH). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "onnx_internal.h"

/* Attribute values beyond this are refused before they reach int arithmetic. */
#define OX_MAX_ATTR (1 << 24)
/* Far above any CNN export (a ResNet-152 maps to about 500 layers); bounds the work a
 * hostile graph can cause. */
#define OX_MAX_LAYERS 8192

/* ---- attributes ---- */

static const Tlonnx__AttributeProto *attr(ox_ctx *c, const char *name)
{
    for (size_t i = 0; i < c->node->n_attribute; i++) {
        const Tlonnx__AttributeProto *a = c->node->attribute[i];
        if (a->name && strcmp(a->name, name) == 0)
            return a;
    }
    return NULL;
}

static int ref_check(ox_ctx *c, const Tlonnx__AttributeProto *a)
{
    if (a->ref_attr_name && *a->ref_attr_name)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "attribute '%.60s' refers to a function "
                       "attribute", a->name);
    return TLEARN_OK;
}

static int attr_int(ox_ctx *c, const char *name, int64_t def, int64_t *out)
{
    const Tlonnx__AttributeProto *a = attr(c, name);
    *out = def;
    if (!a)
        return TLEARN_OK;
    int rc = ref_check(c, a);
    if (rc)
        return rc;
    if (!a->has_i)
        return ox_fail(c, TLEARN_EFORMAT, "attribute '%s' is not an integer", name);
    *out = a->i;
    return TLEARN_OK;
}

static int attr_float(ox_ctx *c, const char *name, float def, float *out)
{
    const Tlonnx__AttributeProto *a = attr(c, name);
    *out = def;
    if (!a)
        return TLEARN_OK;
    int rc = ref_check(c, a);
    if (rc)
        return rc;
    if (!a->has_f)
        return ox_fail(c, TLEARN_EFORMAT, "attribute '%s' is not a float", name);
    if (!isfinite(a->f))
        return ox_fail(c, TLEARN_EFORMAT, "attribute '%s' is not finite", name);
    *out = a->f;
    return TLEARN_OK;
}

/* String attribute compared with @p want; absent or empty counts as @p def_ok. */
static int attr_string_is(ox_ctx *c, const char *name, const char *want, int *is, int *present)
{
    const Tlonnx__AttributeProto *a = attr(c, name);
    *present = 0;
    *is = 0;
    if (!a)
        return TLEARN_OK;
    int rc = ref_check(c, a);
    if (rc)
        return rc;
    if (!a->has_s)
        return ox_fail(c, TLEARN_EFORMAT, "attribute '%s' is not a string", name);
    *present = a->s.len > 0;
    *is = a->s.len == strlen(want) && memcmp(a->s.data, want, a->s.len) == 0;
    return TLEARN_OK;
}

/* A list of exactly @p n integers in [lo, hi], or @p def (n values) when absent. */
static int attr_ints(ox_ctx *c, const char *name, size_t n, const int64_t *def, int64_t lo,
                     int64_t hi, int64_t *out)
{
    const Tlonnx__AttributeProto *a = attr(c, name);
    if (!a) {
        for (size_t i = 0; i < n; i++)
            out[i] = def[i];
        return TLEARN_OK;
    }
    int rc = ref_check(c, a);
    if (rc)
        return rc;
    if (a->n_ints != n)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "attribute '%s' has %zu values, expected %zu",
                       name, a->n_ints, n);
    for (size_t i = 0; i < n; i++) {
        if (a->ints[i] < lo || a->ints[i] > hi)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "attribute '%s' value %lld is not in "
                           "%lld..%lld", name, (long long)a->ints[i], (long long)lo,
                           (long long)hi);
        out[i] = a->ints[i];
    }
    return TLEARN_OK;
}

/* ---- inputs and outputs ---- */

static const char *in_name(ox_ctx *c, size_t k)
{
    if (k >= c->node->n_input || !c->node->input[k] || !*c->node->input[k])
        return NULL;
    return c->node->input[k];
}

static int need_inputs(ox_ctx *c, size_t lo, size_t hi)
{
    size_t n = c->node->n_input;
    if (n < lo || n > hi)
        return ox_fail(c, TLEARN_EFORMAT, "has %zu inputs, expected %zu to %zu", n, lo, hi);
    for (size_t k = 0; k < lo; k++)
        if (!in_name(c, k))
            return ox_fail(c, TLEARN_EFORMAT, "required input %zu is empty", k);
    if (c->node->n_output < 1 || !c->node->output[0] || !*c->node->output[0])
        return ox_fail(c, TLEARN_EFORMAT, "has no output");
    return TLEARN_OK;
}

/* Input @p k as an activation. Pending zero padding is only accepted when @p pad_ok. */
static int in_act(ox_ctx *c, size_t k, int pad_ok, ox_value **out)
{
    const char *n = in_name(c, k);
    ox_value *v = n ? ox_find(c, n) : NULL;
    if (!v || v->kind != OX_ACT)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu ('%.100s') must be computed from the "
                       "graph input, not a constant", k, n ? n : "");
    if (!pad_ok && (v->pad_h || v->pad_w))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu comes from a Pad node; zero padding "
                       "is only folded into a following Conv or AveragePool", k);
    *out = v;
    return TLEARN_OK;
}

/* Input @p k as a constant, converted on first use. */
static int in_const(ox_ctx *c, size_t k, ox_const **out, ox_value **val)
{
    const char *n = in_name(c, k);
    ox_value *v = n ? ox_find(c, n) : NULL;
    if (!v || v->kind != OX_CONST)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu ('%.100s') must be a constant "
                       "(an initializer or a foldable shape computation)", k, n ? n : "");
    if (!v->c) {
        int rc = ox_tensor_convert(c, v->tp, &v->c);
        if (rc)
            return rc;
    }
    *out = v->c;
    if (val)
        *val = v;
    return TLEARN_OK;
}

static int in_is_const(ox_ctx *c, size_t k)
{
    const char *n = in_name(c, k);
    ox_value *v = n ? ox_find(c, n) : NULL;
    return v && v->kind == OX_CONST;
}

static ox_value *out_val(ox_ctx *c)
{
    return ox_find(c, c->node->output[0]);
}

static void def_act(ox_ctx *c, int layer, int rank)
{
    ox_value *o = out_val(c);
    o->kind = OX_ACT;
    o->layer = layer;
    o->rank = rank;
    o->shape = c->m->layers[layer]->out;
    o->bias_layer = -1;
}

/* The output is the input under another name. A bias stays foldable only when the alias
 * is the input's sole reader. */
static void def_alias(ox_ctx *c, const ox_value *src)
{
    ox_value *o = out_val(c);
    o->kind = src->kind;
    o->tp = src->tp;
    o->c = src->c;
    o->layer = src->layer;
    o->rank = src->rank;
    o->shape = src->shape;
    o->pad_h = src->pad_h;
    o->pad_w = src->pad_w;
    o->bias_layer = src->uses == 1 && !src->is_output ? src->bias_layer : -1;
}

static void def_const(ox_ctx *c, ox_const *k)
{
    ox_value *o = out_val(c);
    o->kind = OX_CONST;
    o->c = k;
}

/* A float constant with a single value (Clip bounds, Pad value). */
static int scalar_float(ox_ctx *c, size_t k, float *out)
{
    ox_const *t;
    int rc = in_const(c, k, &t, NULL);
    if (rc)
        return rc;
    if (t->numel != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu must hold a single value", k);
    *out = t->is_int ? (float)t->i[0] : t->f[0];
    return TLEARN_OK;
}

/* ---- layer names: PyTorch's module names as the graph shows them ---- */

/* "features.3.weight" -> "features.3"; exporter-made names ("onnx::Conv_12") give none. */
static int name_from_weight(const char *w, char *out)
{
    if (!w || strncmp(w, "onnx::", 6) == 0)
        return 0;
    const char *dot = strrchr(w, '.');
    if (!dot || dot == w || !dot[1])
        return 0;
    size_t n = (size_t)(dot - w);
    if (n >= TL_NAME_MAX)
        n = TL_NAME_MAX - 1;
    memcpy(out, w, n);
    out[n] = '\0';
    return 1;
}

/* torch's scoped node names: "/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1",
 * "/features/features.1/Relu" -> "features.1",
 * "/layer1/layer1.1/downsample/downsample.0/Conv" -> "layer1.1.downsample.0".
 * A scope that extends the one before it ("layer1.0" after "layer1", children of a
 * Sequential) replaces it. */
static int name_from_scope(const char *node, char *out)
{
    if (!node || node[0] != '/')
        return 0;
    const char *last = strrchr(node, '/');
    char q[TL_NAME_MAX] = "";
    size_t qn = 0, comp = 0; /* q[comp..qn) is the last component */
    for (const char *p = node + 1; p < last;) {
        const char *e = memchr(p, '/', (size_t)(last - p));
        if (!e)
            e = last;
        size_t n = (size_t)(e - p), prev = qn - comp;
        if (qn && n > prev && memcmp(p, q + comp, prev) == 0 && p[prev] == '.') {
            qn = comp; /* replaces the component before it */
        } else if (qn && qn + 1 < sizeof q) {
            q[qn++] = '.';
        }
        comp = qn;
        if (qn + n >= sizeof q)
            n = sizeof q - 1 - qn;
        memcpy(q + qn, p, n);
        qn += n;
        q[qn] = '\0';
        p = e + 1;
    }
    if (!qn)
        return 0;
    memcpy(out, q, qn + 1);
    return 1;
}

/* Pick the layer name: the weight's module name, else the node's scope, else the node
 * name, else the operator; made valid (printable, no glob characters) and unique. */
static void layer_name(ox_ctx *c, const char *weight, char *out)
{
    char base[TL_NAME_MAX];
    const char *node = c->node->name;
    if (!name_from_weight(weight, base) && !name_from_scope(node, base)) {
        const char *src = node && *node ? node : c->node->op_type;
        if (src == node && node[0] == '/')
            src = strrchr(node, '/') + 1; /* "/Reshape" -> "Reshape" */
        if (!*src)
            src = c->node->op_type;
        size_t n = strlen(src);
        if (n >= TL_NAME_MAX)
            n = TL_NAME_MAX - 1;
        memcpy(base, src, n);
        base[n] = '\0';
        if (src == c->node->op_type)
            for (char *p = base; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p - 'A' + 'a');
    }
    for (char *p = base; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= ' ' || ch >= 127 || ch == '*' || ch == '?' || ch == '[' || ch == ']')
            *p = '_';
    }
    if (!*base)
        strcpy(base, "layer");
    /* Unique: "name", "name_2" ... "name_9", then "name_n<node>_<k>" (the node index is
     * unique, so a hostile graph of one repeated name cannot make this loop long). */
    snprintf(out, TL_NAME_MAX, "%s", base);
    for (int k = 2; tl_model_find(c->m, out) >= 0; k++) {
        char suffix[40];
        int sn = k < 10 ? snprintf(suffix, sizeof suffix, "_%d", k)
                        : snprintf(suffix, sizeof suffix, "_n%zu_%d", c->node_index, k - 10);
        size_t bn = strlen(base);
        if (bn + (size_t)sn >= TL_NAME_MAX)
            bn = TL_NAME_MAX - 1 - (size_t)sn;
        snprintf(out, TL_NAME_MAX, "%.*s%s", (int)bn, base, suffix);
    }
}

/* ---- adding layers ---- */

static int need_ops(ox_ctx *c, int kind, const char *what, const tl_layer_ops **ops)
{
    *ops = tl_layer_ops_by_kind(kind);
    if (!*ops)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "needs the %s layer, which this build of "
                       "libtlearn does not have", what);
    return TLEARN_OK;
}

/* Add a layer named after @p weight (or the node) reading @p inputs; its index in *index.
 * A layer refusing numbers taken from the file means the file is inconsistent. */
static int add_layer(ox_ctx *c, const tl_layer_ops *ops, const char *weight, const int *inputs,
                     int ninputs, const int *ia, int ni, const float *fa, int nf, int *index)
{
    char name[TL_NAME_MAX];
    if (c->m->nlayers >= OX_MAX_LAYERS)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the graph needs more than %d layers",
                       OX_MAX_LAYERS);
    layer_name(c, weight, name);
    char where[256];
    const char *nn = c->node->name && *c->node->name ? c->node->name : "";
    snprintf(where, sizeof where, "%s: node '%.120s' (%.40s)", c->fn, nn, c->node->op_type);
    int rc = tl_model_add(c->m, where, ops, name, inputs, ninputs, ia, ni, fa, nf);
    if (rc)
        return rc == TLEARN_ENOMEM ? rc : tl_fail_prefix(TLEARN_EFORMAT, "%s", "");
    *index = c->m->nlayers - 1;
    return TLEARN_OK;
}

/* Copy @p n floats into parameter @p pname of layer @p layer; weights must be finite. */
static int set_param(ox_ctx *c, int layer, const char *pname, const float *src, size_t n)
{
    tl_layer *L = c->m->layers[layer];
    for (int p = 0; p < L->nparam; p++) {
        if (strcmp(L->param[p].name, pname) != 0)
            continue;
        if (L->param[p].t.numel != n)
            return ox_fail(c, TLEARN_EFORMAT, "%s of layer '%s' needs %zu values, the file "
                           "has %zu", pname, L->name, L->param[p].t.numel, n);
        for (size_t i = 0; i < n; i++)
            if (!isfinite(src[i]))
                return ox_fail(c, TLEARN_EFORMAT, "%s of layer '%s' holds a NaN or infinite "
                               "value at %zu", pname, L->name, i);
        if (L->param[p].t.data != src) /* Gemm and MatMul fill the tensor in place */
            memcpy(L->param[p].t.data, src, n * sizeof(float));
        return TLEARN_OK;
    }
    return ox_fail(c, TLEARN_EFORMAT, "layer '%s' has no parameter '%s'", L->name, pname);
}

static float *param_data(ox_ctx *c, int layer, const char *pname)
{
    tl_layer *L = c->m->layers[layer];
    for (int p = 0; p < L->nparam; p++)
        if (strcmp(L->param[p].name, pname) == 0)
            return L->param[p].t.data;
    return NULL;
}

static int float_const(ox_ctx *c, size_t k, ox_const **t, ox_value **v)
{
    int rc = in_const(c, k, t, v);
    if (rc)
        return rc;
    if ((*t)->is_int)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu must be a floating-point tensor", k);
    return TLEARN_OK;
}

/* A per-channel vector of @p n values: shape [n], [1, n], [n, 1, 1], [1, n, 1, 1]... i.e.
 * every dimension but one is 1 (or n == 1). */
static int is_vector_of(const ox_const *t, size_t n)
{
    if (t->numel != n)
        return 0;
    int big = 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->dims[d] != 1)
            big++;
    return big <= 1;
}

/* ---- element-wise activations ---- */

static int activation(ox_ctx *c, int act, float param)
{
    ox_value *x;
    int rc = in_act(c, 0, 0, &x);
    if (rc)
        return rc;
    int layer, ia = act;
    rc = add_layer(c, &tl_activation_ops, NULL, &x->layer, 1, &ia, 1, &param, 1, &layer);
    if (rc)
        return rc;
    def_act(c, layer, x->rank);
    return TLEARN_OK;
}

static int op_simple_act(ox_ctx *c, int act)
{
    int rc = need_inputs(c, 1, 1);
    return rc ? rc : activation(c, act, 0.0f);
}

static int op_leaky_relu(ox_ctx *c)
{
    float alpha;
    int rc = need_inputs(c, 1, 1);
    if (!rc)
        rc = attr_float(c, "alpha", 0.01f, &alpha);
    return rc ? rc : activation(c, TLEARN_ACT_LEAKY_RELU, alpha);
}

/* Clip(min, max) with the bounds as optional inputs (opset >= 11): ReLU6 or ReLU. */
static int op_clip(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 3);
    if (rc)
        return rc;
    float lo = -INFINITY, hi = INFINITY;
    if (in_name(c, 1) && (rc = scalar_float(c, 1, &lo)))
        return rc;
    if (in_name(c, 2) && (rc = scalar_float(c, 2, &hi)))
        return rc;
    if (lo == 0.0f && hi == 6.0f)
        return activation(c, TLEARN_ACT_RELU6, 0.0f);
    if (lo == 0.0f && hi == INFINITY)
        return activation(c, TLEARN_ACT_RELU, 0.0f);
    return ox_fail(c, TLEARN_EUNSUPPORTED, "Clip(min=%g, max=%g) has no layer; only Clip(0, 6) "
                   "(ReLU6) and Clip(0) (ReLU) are supported", (double)lo, (double)hi);
}

/* ---- dense ---- */

/* A dense layer of @p units over the flat activation @p x, with W[n][k] = w(n, k). */
static int dense(ox_ctx *c, ox_value *x, const char *wname, int units, int *layer)
{
    return add_layer(c, &tl_dense_ops, wname, &x->layer, 1, &units, 1, NULL, 0, layer);
}

static int flat_input(ox_ctx *c, ox_value **x)
{
    int rc = in_act(c, 0, 0, x);
    if (rc)
        return rc;
    if ((*x)->rank != 2)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input must be 2-D (N, F); flatten the "
                       "activation first");
    return TLEARN_OK;
}

/* Gemm: Y = alpha * A op(B) + beta * C. alpha, beta and transB fold into the weights. */
static int op_gemm(ox_ctx *c)
{
    int rc = need_inputs(c, 2, 3);
    int64_t ta, tb;
    float alpha, beta;
    if (!rc)
        rc = attr_int(c, "transA", 0, &ta);
    if (!rc)
        rc = attr_int(c, "transB", 0, &tb);
    if (!rc)
        rc = attr_float(c, "alpha", 1.0f, &alpha);
    if (!rc)
        rc = attr_float(c, "beta", 1.0f, &beta);
    if (rc)
        return rc;
    if (ta != 0)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "transA=%lld is not supported: the input must be "
                       "(N, F)", (long long)ta);
    ox_value *x, *wv;
    ox_const *B, *C = NULL;
    if ((rc = flat_input(c, &x)) || (rc = float_const(c, 1, &B, &wv)))
        return rc;
    if (in_name(c, 2) && (rc = float_const(c, 2, &C, NULL)))
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
    if (C && !is_vector_of(C, (size_t)units) && C->numel != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "C must broadcast as a per-output bias of %lld "
                       "values", (long long)units);
    int layer;
    if ((rc = dense(c, x, wv->name, (int)units, &layer)))
        return rc;
    float *w = param_data(c, layer, "weight"), *b = param_data(c, layer, "bias");
    for (int64_t n = 0; n < units; n++) {
        for (int64_t j = 0; j < k; j++)
            w[n * k + j] = alpha * (tb ? B->f[n * k + j] : B->f[j * units + n]);
        b[n] = C ? beta * C->f[C->numel == 1 ? 0 : n] : 0.0f;
    }
    if ((rc = set_param(c, layer, "weight", w, (size_t)(units * k))) ||
        (rc = set_param(c, layer, "bias", b, (size_t)units)))
        return rc;
    def_act(c, layer, 2);
    out_val(c)->bias_layer = layer;
    return TLEARN_OK;
}

/* MatMul(A, B) with a constant B [K, N]: a dense layer with a zero bias, which an Add of a
 * constant right after fills in. */
static int op_matmul(ox_ctx *c)
{
    int rc = need_inputs(c, 2, 2);
    ox_value *x, *wv;
    ox_const *B;
    if (rc || (rc = flat_input(c, &x)) || (rc = float_const(c, 1, &B, &wv)))
        return rc;
    if (B->ndim != 2)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "B has rank %d; a 2-D weight is supported",
                       B->ndim);
    int64_t k = B->dims[0], units = B->dims[1];
    if ((size_t)k != tl_shape_size(x->shape) || units < 1 || units > INT32_MAX)
        return ox_fail(c, TLEARN_EFORMAT, "B is %lld x %lld, the input has %zu features",
                       (long long)k, (long long)units, tl_shape_size(x->shape));
    int layer;
    if ((rc = dense(c, x, wv->name, (int)units, &layer)))
        return rc;
    float *w = param_data(c, layer, "weight"), *b = param_data(c, layer, "bias");
    for (int64_t n = 0; n < units; n++) {
        for (int64_t j = 0; j < k; j++)
            w[n * k + j] = B->f[j * units + n];
        b[n] = 0.0f;
    }
    if ((rc = set_param(c, layer, "weight", w, (size_t)(units * k))))
        return rc;
    def_act(c, layer, 2);
    out_val(c)->bias_layer = layer;
    return TLEARN_OK;
}

/* ---- Add: a residual sum, or a bias folded into the layer before ---- */

static int op_add(ox_ctx *c)
{
    int rc = need_inputs(c, 2, 2);
    if (rc)
        return rc;
    int a_const = in_is_const(c, 0), b_const = in_is_const(c, 1);
    if (a_const && b_const)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "adding two constants is not supported");
    if (!a_const && !b_const) {
        ox_value *a, *b;
        if ((rc = in_act(c, 0, 0, &a)) || (rc = in_act(c, 1, 0, &b)))
            return rc;
        if (a->rank != b->rank || a->shape.c != b->shape.c || a->shape.h != b->shape.h ||
            a->shape.w != b->shape.w)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "inputs of shapes (%d, %d, %d) and "
                           "(%d, %d, %d) differ; broadcasting is not supported", a->shape.c,
                           a->shape.h, a->shape.w, b->shape.c, b->shape.h, b->shape.w);
        const tl_layer_ops *ops;
        if ((rc = need_ops(c, TLEARN_LAYER_ADD, "add", &ops)))
            return rc;
        int inputs[2] = {a->layer, b->layer}, layer;
        if ((rc = add_layer(c, ops, NULL, inputs, 2, NULL, 0, NULL, 0, &layer)))
            return rc;
        def_act(c, layer, a->rank);
        return TLEARN_OK;
    }
    ox_value *x;
    ox_const *k;
    if ((rc = in_act(c, a_const ? 1 : 0, 0, &x)) || (rc = float_const(c, a_const ? 0 : 1, &k, NULL)))
        return rc;
    if (x->bias_layer < 0 || x->uses != 1 || x->is_output)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "adding a constant is only supported as the bias "
                       "of the Gemm, MatMul or Conv (with bias) right before it, when nothing "
                       "else reads that layer's output");
    size_t ch = (size_t)x->shape.c;
    int ok = k->numel == 1 || (is_vector_of(k, ch) &&
                               (x->rank == 2 ? k->dims[k->ndim - 1] == (int64_t)ch
                                             : k->ndim >= 3 && k->dims[k->ndim - 3] == (int64_t)ch));
    if (!ok)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the constant does not broadcast as a "
                       "per-channel bias of %zu values", ch);
    float *bias = param_data(c, x->bias_layer, "bias");
    if (!bias)
        return ox_fail(c, TLEARN_EFORMAT, "the layer before has no bias");
    for (size_t i = 0; i < ch; i++) {
        bias[i] += k->f[k->numel == 1 ? 0 : i];
        if (!isfinite(bias[i]))
            return ox_fail(c, TLEARN_EFORMAT, "the bias is not finite");
    }
    def_alias(c, x);
    out_val(c)->bias_layer = x->bias_layer;
    return TLEARN_OK;
}

/* ---- convolution and pooling ---- */

/* auto_pad must be NOTSET (or VALID, which means no padding). */
static int check_auto_pad(ox_ctx *c, int *valid)
{
    int is_notset, present, rc = attr_string_is(c, "auto_pad", "NOTSET", &is_notset, &present);
    if (rc)
        return rc;
    *valid = 0;
    if (!present || is_notset)
        return TLEARN_OK;
    if ((rc = attr_string_is(c, "auto_pad", "VALID", valid, &present)))
        return rc;
    if (*valid)
        return TLEARN_OK;
    return ox_fail(c, TLEARN_EUNSUPPORTED, "auto_pad SAME_UPPER/SAME_LOWER is not supported; "
                   "export with explicit padding (auto_pad NOTSET)");
}

/* Symmetric pads [top, left, bottom, right] -> ph, pw. */
static int sym_pads(ox_ctx *c, int valid, int64_t *ph, int64_t *pw)
{
    static const int64_t zero[4] = {0, 0, 0, 0};
    int64_t p[4];
    int rc = attr_ints(c, "pads", 4, zero, 0, OX_MAX_ATTR, p);
    if (rc)
        return rc;
    if (valid && (p[0] || p[1] || p[2] || p[3]))
        return ox_fail(c, TLEARN_EFORMAT, "auto_pad VALID with non-zero pads");
    if (p[0] != p[2] || p[1] != p[3])
        return ox_fail(c, TLEARN_EUNSUPPORTED, "asymmetric pads [%lld, %lld, %lld, %lld] are not "
                       "supported", (long long)p[0], (long long)p[1], (long long)p[2],
                       (long long)p[3]);
    *ph = p[0];
    *pw = p[1];
    return TLEARN_OK;
}

static int spatial_input(ox_ctx *c, int pad_ok, ox_value **x)
{
    int rc = in_act(c, 0, pad_ok, x);
    if (rc)
        return rc;
    if ((*x)->rank != 4)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input must be 4-D (N, C, H, W)");
    return TLEARN_OK;
}

static int op_conv(ox_ctx *c)
{
    static const int64_t ones[2] = {1, 1};
    int rc = need_inputs(c, 2, 3);
    ox_value *x, *wv;
    ox_const *W, *B = NULL;
    const tl_layer_ops *ops;
    int valid;
    if (rc || (rc = spatial_input(c, 1, &x)) || (rc = float_const(c, 1, &W, &wv)) ||
        (rc = need_ops(c, TLEARN_LAYER_CONV2D, "conv2d", &ops)) || (rc = check_auto_pad(c, &valid)))
        return rc;
    if (in_name(c, 2) && (rc = float_const(c, 2, &B, NULL)))
        return rc;
    if (W->ndim != 4)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "weight has rank %d; 2-D convolution (rank 4) is "
                       "supported", W->ndim);
    int64_t st[2], dl[2], ks[2], group, ph, pw;
    if ((rc = attr_ints(c, "strides", 2, ones, 1, OX_MAX_ATTR, st)) ||
        (rc = attr_ints(c, "dilations", 2, ones, 1, OX_MAX_ATTR, dl)) ||
        (rc = attr_ints(c, "kernel_shape", 2, W->dims + 2, 1, OX_MAX_ATTR, ks)) ||
        (rc = attr_int(c, "group", 1, &group)) || (rc = sym_pads(c, valid, &ph, &pw)))
        return rc;
    int64_t M = W->dims[0], cg = W->dims[1];
    if (ks[0] != W->dims[2] || ks[1] != W->dims[3])
        return ox_fail(c, TLEARN_EFORMAT, "kernel_shape differs from the weight's shape");
    if (group < 1 || group > x->shape.c || M < 1 || M > OX_MAX_ATTR || cg * group != x->shape.c ||
        M % group != 0)
        return ox_fail(c, TLEARN_EFORMAT, "weight [%lld, %lld, ...] with group %lld does not fit "
                       "%d input channels", (long long)M, (long long)cg, (long long)group,
                       x->shape.c);
    if (B && !is_vector_of(B, (size_t)M))
        return ox_fail(c, TLEARN_EFORMAT, "bias has %zu values for %lld filters", B->numel,
                       (long long)M);
    /* A zero Pad node before the convolution is the convolution's own padding. */
    ph += x->pad_h;
    pw += x->pad_w;
    int ia[11] = {(int)M, (int)ks[0], (int)ks[1], (int)st[0], (int)st[1], (int)ph, (int)pw,
                  (int)dl[0], (int)dl[1], (int)group, B != NULL};
    int layer;
    if ((rc = add_layer(c, ops, wv->name, &x->layer, 1, ia, 11, NULL, 0, &layer)) ||
        (rc = set_param(c, layer, "weight", W->f, W->numel)) ||
        (B && (rc = set_param(c, layer, "bias", B->f, B->numel))))
        return rc;
    def_act(c, layer, 4);
    if (B)
        out_val(c)->bias_layer = layer;
    return TLEARN_OK;
}

/* Common attributes of MaxPool and AveragePool. ceil_mode=1 is accepted when it changes
 * nothing: when every window fits, rounding the output size up or down agrees. @p x is
 * the input, with any pending Pad (pad_h/pad_w) that the caller will fold in. */
static int pool_attrs(ox_ctx *c, const ox_value *x, int64_t ks[2], int64_t st[2], int64_t *ph,
                      int64_t *pw)
{
    static const int64_t ones[2] = {1, 1};
    int valid, rc = check_auto_pad(c, &valid);
    int64_t ceil_mode, dl[2];
    const Tlonnx__AttributeProto *k = attr(c, "kernel_shape");
    if (!rc && !k)
        return ox_fail(c, TLEARN_EFORMAT, "kernel_shape is missing");
    if (rc || (rc = attr_ints(c, "kernel_shape", 2, ones, 1, OX_MAX_ATTR, ks)) ||
        (rc = attr_ints(c, "strides", 2, ones, 1, OX_MAX_ATTR, st)) ||
        (rc = attr_ints(c, "dilations", 2, ones, 1, 1, dl)) ||
        (rc = attr_int(c, "ceil_mode", 0, &ceil_mode)) || (rc = sym_pads(c, valid, ph, pw)))
        return rc;
    if (ceil_mode != 0) {
        int64_t span_h = x->shape.h + 2 * (*ph + x->pad_h) - ks[0];
        int64_t span_w = x->shape.w + 2 * (*pw + x->pad_w) - ks[1];
        if (span_h < 0 || span_w < 0 || span_h % st[0] || span_w % st[1])
            return ox_fail(c, TLEARN_EUNSUPPORTED, "ceil_mode=1 is only supported where it "
                           "gives the same output size as ceil_mode=0 (here it adds a partial "
                           "window)");
    }
    return TLEARN_OK;
}

static int op_maxpool(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int64_t ks[2], st[2], ph, pw, order;
    if (rc || (rc = spatial_input(c, 0, &x)) ||
        (rc = need_ops(c, TLEARN_LAYER_MAXPOOL2D, "maxpool2d", &ops)) ||
        (rc = pool_attrs(c, x, ks, st, &ph, &pw)) ||
        (rc = attr_int(c, "storage_order", 0, &order)))
        return rc;
    int ia[6] = {(int)ks[0], (int)ks[1], (int)st[0], (int)st[1], (int)ph, (int)pw}, layer;
    if ((rc = add_layer(c, ops, NULL, &x->layer, 1, ia, 6, NULL, 0, &layer)))
        return rc;
    def_act(c, layer, 4);
    return TLEARN_OK;
}

/* AveragePool; a zero Pad before it becomes its padding, counted in the average
 * (count_include_pad), which is what the padded tensor means. */
static int op_avgpool(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int64_t ks[2], st[2], ph, pw, cip;
    if (rc || (rc = spatial_input(c, 1, &x)) ||
        (rc = need_ops(c, TLEARN_LAYER_AVGPOOL2D, "avgpool2d", &ops)) ||
        (rc = pool_attrs(c, x, ks, st, &ph, &pw)) ||
        (rc = attr_int(c, "count_include_pad", 0, &cip)))
        return rc;
    if (x->pad_h || x->pad_w) {
        if ((ph || pw) && !cip)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "a Pad before an AveragePool that pads "
                           "again without count_include_pad cannot be one pooling layer");
        ph += x->pad_h;
        pw += x->pad_w;
        cip = 1;
    }
    int ia[7] = {(int)ks[0], (int)ks[1], (int)st[0], (int)st[1], (int)ph, (int)pw, cip != 0};
    int layer;
    if ((rc = add_layer(c, ops, NULL, &x->layer, 1, ia, 7, NULL, 0, &layer)))
        return rc;
    def_act(c, layer, 4);
    return TLEARN_OK;
}

static int op_global_avgpool(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int layer;
    if (rc || (rc = spatial_input(c, 0, &x)) ||
        (rc = need_ops(c, TLEARN_LAYER_GLOBAL_AVGPOOL, "global_avgpool", &ops)) ||
        (rc = add_layer(c, ops, NULL, &x->layer, 1, NULL, 0, NULL, 0, &layer)))
        return rc;
    def_act(c, layer, 4);
    return TLEARN_OK;
}

/* ReduceMean over H and W (x.mean([2, 3]) in PyTorch) is a global average pool; without
 * keepdims its (N, C) result has the same memory layout as the pool's (N, C, 1, 1). */
static int op_reduce_mean(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    ox_value *x;
    const tl_layer_ops *ops;
    int64_t keep, axes[2];
    const Tlonnx__AttributeProto *a = attr(c, "axes");
    if (rc || (rc = spatial_input(c, 0, &x)) || (rc = attr_int(c, "keepdims", 1, &keep)))
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
    if ((rc = need_ops(c, TLEARN_LAYER_GLOBAL_AVGPOOL, "global_avgpool", &ops)) ||
        (rc = add_layer(c, ops, NULL, &x->layer, 1, NULL, 0, NULL, 0, &layer)))
        return rc;
    def_act(c, layer, keep ? 4 : 2);
    return TLEARN_OK;
}

/* Pad with zeros on H and W only, the same before and after: kept pending for the consumer. */
static int op_pad(ox_ctx *c)
{
    int rc = need_inputs(c, 2, 3);
    ox_value *x;
    ox_const *p;
    int is_const, present;
    if (rc || (rc = spatial_input(c, 1, &x)) || (rc = in_const(c, 1, &p, NULL)) ||
        (rc = attr_string_is(c, "mode", "constant", &is_const, &present)))
        return rc;
    if (present && !is_const)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only mode 'constant' is supported");
    if (in_name(c, 2)) {
        float v;
        if ((rc = scalar_float(c, 2, &v)))
            return rc;
        if (v != 0.0f)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "padding with %g is not supported (only 0)",
                           (double)v);
    }
    if (!p->is_int || p->numel != 8)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "pads must be 8 integers for a 4-D input");
    const int64_t *q = p->i;
    if (q[0] || q[1] || q[4] || q[5])
        return ox_fail(c, TLEARN_EUNSUPPORTED, "padding the batch or channel dimension is not "
                       "supported");
    if (q[2] != q[6] || q[3] != q[7] || q[2] < 0 || q[3] < 0 || q[2] > OX_MAX_ATTR ||
        q[3] > OX_MAX_ATTR)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only symmetric, non-negative H/W padding is "
                       "supported");
    def_alias(c, x);
    ox_value *o = out_val(c);
    o->pad_h += (int)q[2];
    o->pad_w += (int)q[3];
    if (o->pad_h > OX_MAX_ATTR || o->pad_w > OX_MAX_ATTR)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "padding is too large");
    if (o->pad_h || o->pad_w)
        o->bias_layer = -1;
    return TLEARN_OK;
}

/* ---- normalisation ---- */

static int op_batchnorm(ox_ctx *c)
{
    int rc = need_inputs(c, 5, 5);
    ox_value *x, *sv;
    ox_const *s, *b, *mean, *var;
    const tl_layer_ops *ops;
    float eps, mom;
    int64_t training;
    if (rc || (rc = in_act(c, 0, 0, &x)) || (rc = float_const(c, 1, &s, &sv)) ||
        (rc = float_const(c, 2, &b, NULL)) || (rc = float_const(c, 3, &mean, NULL)) ||
        (rc = float_const(c, 4, &var, NULL)) ||
        (rc = need_ops(c, TLEARN_LAYER_BATCHNORM, "batchnorm", &ops)) ||
        (rc = attr_float(c, "epsilon", 1e-5f, &eps)) ||
        (rc = attr_float(c, "momentum", 0.9f, &mom)) ||
        (rc = attr_int(c, "training_mode", 0, &training)))
        return rc;
    if (training)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "training_mode=1 is not supported; export the "
                       "model in eval() mode");
    size_t ch = (size_t)x->shape.c;
    if (x->rank == 2 && (x->shape.h != 1 || x->shape.w != 1))
        return ox_fail(c, TLEARN_EFORMAT, "input shape is inconsistent");
    if (!is_vector_of(s, ch) || !is_vector_of(b, ch) || !is_vector_of(mean, ch) ||
        !is_vector_of(var, ch))
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
    if ((rc = add_layer(c, ops, sv->name, &x->layer, 1, NULL, 0, fa, 2, &layer)) ||
        (rc = set_param(c, layer, "weight", s->f, ch)) ||
        (rc = set_param(c, layer, "bias", b->f, ch)) ||
        (rc = set_param(c, layer, "running_mean", mean->f, ch)) ||
        (rc = set_param(c, layer, "running_var", var->f, ch)))
        return rc;
    def_act(c, layer, x->rank);
    return TLEARN_OK;
}

/* ---- shape changes ---- */

static int flatten_to_2d(ox_ctx *c, ox_value *x)
{
    if (x->rank == 2) {
        def_alias(c, x);
        return TLEARN_OK;
    }
    int layer;
    int rc = add_layer(c, &tl_flatten_ops, NULL, &x->layer, 1, NULL, 0, NULL, 0, &layer);
    if (rc)
        return rc;
    def_act(c, layer, 2);
    return TLEARN_OK;
}

static int op_flatten(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    ox_value *x;
    int64_t axis;
    if (rc || (rc = in_act(c, 0, 0, &x)) || (rc = attr_int(c, "axis", 1, &axis)))
        return rc;
    if (axis < 0)
        axis += x->rank;
    if (axis != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "axis %lld is not supported (only 1: keep the "
                       "batch)", (long long)axis);
    return flatten_to_2d(c, x);
}

/* Reshape with a constant (possibly folded) shape: supported when it flattens
 * (N, C, H, W) to (N, C*H*W) or leaves the shape as it is. */
static int op_reshape(ox_ctx *c)
{
    int rc = need_inputs(c, 2, 2);
    ox_value *x;
    ox_const *s;
    int64_t allowzero;
    if (rc || (rc = in_act(c, 0, 0, &x)) || (rc = in_const(c, 1, &s, NULL)) ||
        (rc = attr_int(c, "allowzero", 0, &allowzero)))
        return rc;
    if (!s->is_int || s->ndim != 1 || s->numel < 1 || s->numel > 4)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "shape must be 1 to 4 integers");
    int64_t in[4] = {OX_BATCH, x->shape.c, x->shape.h, x->shape.w};
    int64_t feat = (int64_t)tl_shape_size(x->shape);
    int64_t t[4];
    size_t n = s->numel;
    int infer = -1;
    for (size_t i = 0; i < n; i++) {
        int64_t v = s->i[i];
        if (v == 0 && !allowzero) {
            if ((int)i >= x->rank)
                return ox_fail(c, TLEARN_EFORMAT, "shape copies dimension %zu of a rank-%d "
                               "input", i, x->rank);
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
    if (n == 4 && x->rank == 4 && t[1] == in[1] && t[2] == in[2] && t[3] == in[3]) {
        def_alias(c, x);
        return TLEARN_OK;
    }
    return ox_fail(c, TLEARN_EUNSUPPORTED, "only reshapes that flatten (N, C, H, W) to "
                   "(N, C*H*W) are supported");
}

/* ---- constants and shape arithmetic ---- */

static int op_constant(ox_ctx *c)
{
    if (c->node->n_output < 1 || !c->node->output[0] || !*c->node->output[0])
        return ox_fail(c, TLEARN_EFORMAT, "has no output");
    if (c->node->n_attribute != 1)
        return ox_fail(c, TLEARN_EFORMAT, "needs exactly one attribute");
    const Tlonnx__AttributeProto *a = c->node->attribute[0];
    const char *an = a->name ? a->name : "";
    int rc = ref_check(c, a);
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
    def_const(c, k);
    return TLEARN_OK;
}

/* Shape of an activation: [batch (symbolic), C, H, W] or [batch, F]; of a constant: its
 * dims. Opset 15's start/end slice the result. */
static int op_shape(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    if (rc)
        return rc;
    int64_t d[OX_MAX_RANK];
    int r;
    if (in_is_const(c, 0)) {
        ox_const *t;
        if ((rc = in_const(c, 0, &t, NULL)))
            return rc;
        r = t->ndim;
        for (int i = 0; i < r; i++)
            d[i] = t->dims[i];
    } else {
        ox_value *x;
        if ((rc = in_act(c, 0, 0, &x)))
            return rc;
        r = x->rank;
        d[0] = c->fixed_batch ? c->fixed_batch : OX_BATCH;
        d[1] = x->shape.c;
        d[2] = x->shape.h;
        d[3] = x->shape.w;
    }
    int64_t start, end;
    if ((rc = attr_int(c, "start", 0, &start)) || (rc = attr_int(c, "end", r, &end)))
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
    def_const(c, k);
    return TLEARN_OK;
}

static int int_const(ox_ctx *c, size_t k, ox_const **t)
{
    int rc = in_const(c, k, t, NULL);
    if (rc)
        return rc;
    if (!(*t)->is_int)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "folding needs integer input %zu", k);
    return TLEARN_OK;
}

/* Gather along axis 0 of a 1-D integer constant (a shape). */
static int op_gather(ox_ctx *c)
{
    int rc = need_inputs(c, 2, 2);
    ox_const *data, *idx, *k;
    int64_t axis;
    if (rc || (rc = int_const(c, 0, &data)) || (rc = int_const(c, 1, &idx)) ||
        (rc = attr_int(c, "axis", 0, &axis)))
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
    def_const(c, k);
    return TLEARN_OK;
}

/* Axes of Unsqueeze/Squeeze: an attribute before opset 13, an input from 13. */
static int read_axes(ox_ctx *c, int64_t *axes, size_t *n, int *given)
{
    *n = 0;
    *given = 0;
    if (c->opset >= 13) {
        if (!in_name(c, 1))
            return TLEARN_OK;
        ox_const *t;
        int rc = int_const(c, 1, &t);
        if (rc)
            return rc;
        if (t->numel > OX_MAX_RANK)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "too many axes");
        memcpy(axes, t->i, t->numel * sizeof *axes);
        *n = t->numel;
        *given = 1;
        return TLEARN_OK;
    }
    const Tlonnx__AttributeProto *a = attr(c, "axes");
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
    int rc = need_inputs(c, 1, 2);
    ox_const *t, *k;
    int64_t axes[OX_MAX_RANK];
    size_t na;
    int given;
    if (rc || (rc = int_const(c, 0, &t)) || (rc = read_axes(c, axes, &na, &given)))
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
    def_const(c, k);
    return TLEARN_OK;
}

/* Concat of 1-D integer constants (shape pieces). */
static int op_concat(ox_ctx *c)
{
    size_t n = c->node->n_input;
    int rc = need_inputs(c, 1, n ? n : 1);
    int64_t axis;
    if (rc || (rc = attr_int(c, "axis", 0, &axis)))
        return rc;
    if (axis != 0 && axis != -1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only axis 0 of 1-D shapes is supported");
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        ox_const *t;
        if ((rc = int_const(c, i, &t)))
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
    def_const(c, k);
    return TLEARN_OK;
}

/* Slice of a 1-D integer constant (x.shape[1:] and the like), positive steps. */
static int op_slice(ox_ctx *c)
{
    int rc = need_inputs(c, 3, 5);
    ox_const *data, *st, *en, *ax = NULL, *sp = NULL;
    if (rc || (rc = int_const(c, 0, &data)) || (rc = int_const(c, 1, &st)) ||
        (rc = int_const(c, 2, &en)))
        return rc;
    if (in_name(c, 3) && (rc = int_const(c, 3, &ax)))
        return rc;
    if (in_name(c, 4) && (rc = int_const(c, 4, &sp)))
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
    def_const(c, k);
    return TLEARN_OK;
}

/* Cast: a no-op on activations cast to FLOAT; on constants between int64 and float. */
static int op_cast(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    int64_t to;
    if (rc || (rc = attr_int(c, "to", 0, &to)))
        return rc;
    if (to != 1 && to != 6 && to != 7)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "casting to type %lld is not supported",
                       (long long)to);
    if (!in_is_const(c, 0)) {
        ox_value *x;
        if ((rc = in_act(c, 0, 0, &x)))
            return rc;
        if (to != 1)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "activations are FLOAT; casting them to "
                           "integers is not supported");
        def_alias(c, x);
        return TLEARN_OK;
    }
    ox_const *t, *k;
    if ((rc = in_const(c, 0, &t, NULL)) || (rc = ox_const_new(c, to != 1, t->ndim, t->dims, &k)))
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
    def_const(c, k);
    return TLEARN_OK;
}

/* ---- pass-through operators ---- */

static int op_identity(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    if (rc)
        return rc;
    ox_value *v = ox_find(c, c->node->input[0]);
    if (v->kind == OX_CONST && !v->c && (rc = in_const(c, 0, &v->c, NULL)))
        return rc;
    def_alias(c, v);
    return TLEARN_OK;
}

/* Dropout at inference is the identity (PyTorch drops it from eval exports anyway). */
static int op_dropout(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 3);
    ox_value *x;
    if (rc || (rc = in_act(c, 0, 0, &x)))
        return rc;
    if (in_name(c, 2)) {
        ox_const *t;
        if ((rc = in_const(c, 2, &t, NULL)))
            return rc;
        if (t->numel != 1 || (t->is_int ? t->i[0] != 0 : t->f[0] != 0.0f))
            return ox_fail(c, TLEARN_EUNSUPPORTED, "training_mode must be false");
    }
    def_alias(c, x);
    return TLEARN_OK;
}

/* A Softmax (or LogSoftmax) over the classes that only feeds the graph output is dropped:
 * the model outputs logits and the loss applies the softmax. */
static int op_softmax(ox_ctx *c)
{
    int rc = need_inputs(c, 1, 1);
    ox_value *x;
    int64_t axis;
    if (rc || (rc = in_act(c, 0, 0, &x)) ||
        (rc = attr_int(c, "axis", c->opset >= 13 ? -1 : 1, &axis)))
        return rc;
    ox_value *o = out_val(c);
    if (!o->is_output || o->uses != 1)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only a softmax that gives the graph output is "
                       "supported (it is dropped: the model outputs logits)");
    if (x->rank != 2 || (axis != 1 && axis != -1))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "only a softmax over the classes of a (N, K) "
                       "output is supported");
    def_alias(c, x);
    return TLEARN_OK;
}

/* ---- dispatch ---- */

int ox_node(ox_ctx *c, const Tlonnx__NodeProto *nd)
{
    const char *op = nd->op_type;
    if (strcmp(op, "Conv") == 0) return op_conv(c);
    if (strcmp(op, "Gemm") == 0) return op_gemm(c);
    if (strcmp(op, "MatMul") == 0) return op_matmul(c);
    if (strcmp(op, "Add") == 0) return op_add(c);
    if (strcmp(op, "Relu") == 0) return op_simple_act(c, TLEARN_ACT_RELU);
    if (strcmp(op, "Sigmoid") == 0) return op_simple_act(c, TLEARN_ACT_SIGMOID);
    if (strcmp(op, "Tanh") == 0) return op_simple_act(c, TLEARN_ACT_TANH);
    if (strcmp(op, "LeakyRelu") == 0) return op_leaky_relu(c);
    if (strcmp(op, "Clip") == 0) return op_clip(c);
    if (strcmp(op, "MaxPool") == 0) return op_maxpool(c);
    if (strcmp(op, "AveragePool") == 0) return op_avgpool(c);
    if (strcmp(op, "GlobalAveragePool") == 0) return op_global_avgpool(c);
    if (strcmp(op, "ReduceMean") == 0) return op_reduce_mean(c);
    if (strcmp(op, "Pad") == 0) return op_pad(c);
    if (strcmp(op, "BatchNormalization") == 0) return op_batchnorm(c);
    if (strcmp(op, "Flatten") == 0) return op_flatten(c);
    if (strcmp(op, "Reshape") == 0) return op_reshape(c);
    if (strcmp(op, "Constant") == 0) return op_constant(c);
    if (strcmp(op, "Shape") == 0) return op_shape(c);
    if (strcmp(op, "Gather") == 0) return op_gather(c);
    if (strcmp(op, "Unsqueeze") == 0) return op_unsqueeze(c, 0);
    if (strcmp(op, "Squeeze") == 0) return op_unsqueeze(c, 1);
    if (strcmp(op, "Concat") == 0) return op_concat(c);
    if (strcmp(op, "Slice") == 0) return op_slice(c);
    if (strcmp(op, "Cast") == 0) return op_cast(c);
    if (strcmp(op, "Identity") == 0) return op_identity(c);
    if (strcmp(op, "Dropout") == 0) return op_dropout(c);
    if (strcmp(op, "Softmax") == 0 || strcmp(op, "LogSoftmax") == 0) return op_softmax(c);
    return ox_fail(c, TLEARN_EUNSUPPORTED, "operator %.40s is not supported (supported: Conv, "
                   "Gemm, MatMul, Add, Relu, Clip, LeakyRelu, Sigmoid, Tanh, MaxPool, "
                   "AveragePool, GlobalAveragePool, ReduceMean, Pad, BatchNormalization, Flatten, "
                   "Reshape, "
                   "Identity, Dropout, Softmax and constant shape arithmetic)", op);
}
