/* ONNX import: the operator table, the pre-pass that checks every node against it, and
 * the helpers the handlers share (attributes, inputs and outputs, layer names, adding
 * layers and loading their parameters). The handlers live in the file of their concern:
 * onnx_ops_nn.c, onnx_ops_elementwise.c, onnx_ops_shape.c. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "onnx_internal.h"
#include "onnx_optable.h"

/* Far above any CNN export (a ResNet-152 maps to about 500 layers); bounds the work a
 * hostile graph can cause. */
#define OX_MAX_LAYERS 8192

/* ---- attributes ---- */

const Tlonnx__AttributeProto *ox_attr(ox_ctx *c, const char *name)
{
    for (size_t i = 0; i < c->node->n_attribute; i++) {
        const Tlonnx__AttributeProto *a = c->node->attribute[i];
        if (a->name && strcmp(a->name, name) == 0)
            return a;
    }
    return NULL;
}

int ox_ref_check(ox_ctx *c, const Tlonnx__AttributeProto *a)
{
    if (a->ref_attr_name && *a->ref_attr_name)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "attribute '%.60s' refers to a function "
                       "attribute", a->name);
    return TLEARN_OK;
}

int ox_attr_int(ox_ctx *c, const char *name, int64_t def, int64_t *out)
{
    const Tlonnx__AttributeProto *a = ox_attr(c, name);
    *out = def;
    if (!a)
        return TLEARN_OK;
    int rc = ox_ref_check(c, a);
    if (rc)
        return rc;
    if (!a->has_i)
        return ox_fail(c, TLEARN_EFORMAT, "attribute '%s' is not an integer", name);
    *out = a->i;
    return TLEARN_OK;
}

int ox_attr_float(ox_ctx *c, const char *name, float def, float *out)
{
    const Tlonnx__AttributeProto *a = ox_attr(c, name);
    *out = def;
    if (!a)
        return TLEARN_OK;
    int rc = ox_ref_check(c, a);
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
int ox_attr_string_is(ox_ctx *c, const char *name, const char *want, int *is, int *present)
{
    const Tlonnx__AttributeProto *a = ox_attr(c, name);
    *present = 0;
    *is = 0;
    if (!a)
        return TLEARN_OK;
    int rc = ox_ref_check(c, a);
    if (rc)
        return rc;
    if (!a->has_s)
        return ox_fail(c, TLEARN_EFORMAT, "attribute '%s' is not a string", name);
    *present = a->s.len > 0;
    *is = a->s.len == strlen(want) && memcmp(a->s.data, want, a->s.len) == 0;
    return TLEARN_OK;
}

/* A list of exactly @p n integers in [lo, hi], or @p def (n values) when absent. */
int ox_attr_ints(ox_ctx *c, const char *name, size_t n, const int64_t *def, int64_t lo,
                     int64_t hi, int64_t *out)
{
    const Tlonnx__AttributeProto *a = ox_attr(c, name);
    if (!a) {
        for (size_t i = 0; i < n; i++)
            out[i] = def[i];
        return TLEARN_OK;
    }
    int rc = ox_ref_check(c, a);
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

const char *ox_in_name(ox_ctx *c, size_t k)
{
    if (k >= c->node->n_input || !c->node->input[k] || !*c->node->input[k])
        return NULL;
    return c->node->input[k];
}

int ox_need_inputs(ox_ctx *c, size_t lo, size_t hi)
{
    size_t n = c->node->n_input;
    if (n < lo || n > hi)
        return ox_fail(c, TLEARN_EFORMAT, "has %zu inputs, expected %zu to %zu", n, lo, hi);
    for (size_t k = 0; k < lo; k++)
        if (!ox_in_name(c, k))
            return ox_fail(c, TLEARN_EFORMAT, "required input %zu is empty", k);
    if (c->node->n_output < 1 || !c->node->output[0] || !*c->node->output[0])
        return ox_fail(c, TLEARN_EFORMAT, "has no output");
    return TLEARN_OK;
}

int ox_add_zero_pad(ox_ctx *c, int *layer, const int64_t pads[4])
{
    const tl_layer_ops *ops;
    int rc = ox_need_ops(c, TLEARN_LAYER_PAD, "pad", &ops);
    int ia[5] = {(int)pads[0], (int)pads[1], (int)pads[2], (int)pads[3], TLEARN_PAD_CONSTANT};
    float zero = 0.0f;
    return rc ? rc : ox_add_layer(c, ops, NULL, layer, 1, ia, 5, &zero, 1, layer);
}

int ox_in_act(ox_ctx *c, size_t k, int pad_ok, ox_value **out)
{
    const char *n = ox_in_name(c, k);
    ox_value *v = n ? ox_find(c, n) : NULL;
    if (!v || v->kind != OX_ACT)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu ('%.100s') must be computed from the "
                       "graph input, not a constant", k, n ? n : "");
    if (v->dtype != TLEARN_DTYPE_FLOAT32)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu ('%.100s') holds integers (token "
                       "ids); this operator reads floats", k, n);
    if (!pad_ok && (v->pad[0] || v->pad[1] || v->pad[2] || v->pad[3])) {
        /* the pad layer replaces the pending padding for every later reader */
        int64_t p[4] = {v->pad[0], v->pad[1], v->pad[2], v->pad[3]};
        int rc = ox_add_zero_pad(c, &v->layer, p);
        if (rc)
            return rc;
        v->shape = c->m->layers[v->layer]->out;
        memset(v->pad, 0, sizeof v->pad);
        v->bias_layer = -1;
    }
    *out = v;
    return TLEARN_OK;
}

/* Input @p k as a constant, converted on first use. */
int ox_in_const(ox_ctx *c, size_t k, ox_const **out, ox_value **val)
{
    const char *n = ox_in_name(c, k);
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

int ox_in_is_const(ox_ctx *c, size_t k)
{
    const char *n = ox_in_name(c, k);
    ox_value *v = n ? ox_find(c, n) : NULL;
    return v && v->kind == OX_CONST;
}

ox_value *ox_out(ox_ctx *c)
{
    return ox_find(c, c->node->output[0]);
}

static void def_view(ox_value *o, int layer, tl_shape view)
{
    o->kind = OX_ACT;
    o->layer = layer;
    o->dtype = TLEARN_DTYPE_FLOAT32;
    o->shape = view;
    o->bias_layer = -1;
}

void ox_def_view(ox_ctx *c, int layer, tl_shape view)
{
    def_view(ox_out(c), layer, view);
}

void ox_def_act_at(ox_ctx *c, size_t k, int layer)
{
    def_view(ox_find(c, c->node->output[k]), layer, c->m->layers[layer]->out);
}

void ox_def_act(ox_ctx *c, int layer)
{
    ox_def_view(c, layer, c->m->layers[layer]->out);
}

/* The output is the input under another name. A bias stays foldable only when the alias
 * is the input's sole reader. */
void ox_def_alias(ox_ctx *c, ox_value *src)
{
    ox_value *o = ox_out(c);
    o->kind = src->kind;
    o->tp = src->tp;
    o->c = src->c;
    if (src->kind == OX_CONST)
        src->shared = o->shared = 1;
    o->layer = src->layer;
    o->dtype = src->dtype;
    o->shape = src->shape;
    memcpy(o->pad, src->pad, sizeof o->pad);
    o->bias_layer = src->uses == 1 && !src->is_output ? src->bias_layer : -1;
}

void ox_def_const(ox_ctx *c, ox_const *k)
{
    ox_value *o = ox_out(c);
    o->kind = OX_CONST;
    o->c = k;
}

/* A float constant with a single value (Clip bounds, Pad value). */
int ox_scalar_float(ox_ctx *c, size_t k, float *out)
{
    ox_const *t;
    int rc = ox_in_const(c, k, &t, NULL);
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
    int producer;
    for (int k = 2; tl_model_find_producer(c->m, out, &producer); k++) {
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

int ox_need_ops(ox_ctx *c, int kind, const char *what, const tl_layer_ops **ops)
{
    *ops = tl_layer_ops_by_kind(kind);
    if (!*ops)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "needs the %s layer, which this build of "
                       "libtlearn does not have", what);
    return TLEARN_OK;
}

/* Add a layer named after @p weight (or the node) reading @p inputs; its index in *index.
 * A layer refusing numbers taken from the file means the file is inconsistent. */
int ox_add_layer(ox_ctx *c, const tl_layer_ops *ops, const char *weight, const int *inputs,
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
int ox_set_param(ox_ctx *c, int layer, const char *pname, const float *src, size_t n)
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

float *ox_param_data(ox_ctx *c, int layer, const char *pname)
{
    tl_layer *L = c->m->layers[layer];
    for (int p = 0; p < L->nparam; p++)
        if (strcmp(L->param[p].name, pname) == 0)
            return L->param[p].t.data;
    return NULL;
}

int ox_float_const(ox_ctx *c, size_t k, ox_const **t, ox_value **v)
{
    int rc = ox_in_const(c, k, t, v);
    if (rc)
        return rc;
    if ((*t)->is_int)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu must be a floating-point tensor", k);
    return TLEARN_OK;
}

/* A per-channel vector of @p n values: shape [n], [1, n], [n, 1, 1], [1, n, 1, 1]... i.e.
 * every dimension but one is 1 (or n == 1). */
int ox_is_vector_of(const ox_const *t, size_t n)
{
    if (t->numel != n)
        return 0;
    int big = 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->dims[d] != 1)
            big++;
    return big <= 1;
}

int ox_int_const(ox_ctx *c, size_t k, ox_const **t)
{
    int rc = ox_in_const(c, k, t, NULL);
    if (rc)
        return rc;
    if (!(*t)->is_int)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "folding needs integer input %zu", k);
    return TLEARN_OK;
}

int ox_float_const_lazy(ox_ctx *c, size_t k, ox_const *t, ox_value **v)
{
    const char *n = ox_in_name(c, k);
    ox_value *val = n ? ox_find(c, n) : NULL;
    if (!val || val->kind != OX_CONST || val->c || !val->tp) {
        ox_const *p;
        int rc = ox_float_const(c, k, &p, v);
        if (!rc)
            *t = *p;
        return rc;
    }
    memset(t, 0, sizeof *t);
    int rc = ox_tensor_header(c, val->tp, &t->is_int, &t->ndim, t->dims, &t->numel);
    if (rc)
        return rc;
    if (t->is_int)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "input %zu must be a floating-point tensor", k);
    *v = val;
    return TLEARN_OK;
}

int ox_load_param(ox_ctx *c, int layer, const char *pname, const ox_value *v, const ox_const *t)
{
    if (t->f)
        return ox_set_param(c, layer, pname, t->f, t->numel);
    float *dst = ox_param_data(c, layer, pname);
    if (!dst)
        return ox_fail(c, TLEARN_EFORMAT, "layer '%s' has no parameter '%s'",
                       c->m->layers[layer]->name, pname);
    int rc = ox_tensor_read_floats(c, v->tp, dst, t->numel);
    /* The layer checks the values as ox_set_param does (finite), in place. */
    return rc ? rc : ox_set_param(c, layer, pname, dst, t->numel);
}

int64_t ox_peek_int(ox_ctx *c, const char *name, int64_t def)
{
    const Tlonnx__AttributeProto *a = ox_attr(c, name);
    return a && a->has_i ? a->i : def;
}

int ox_peek_string_is(ox_ctx *c, const char *name, const char *s, int absent)
{
    const Tlonnx__AttributeProto *a = ox_attr(c, name);
    if (!a || !a->has_s || !a->s.len)
        return absent;
    return a->s.len == strlen(s) && memcmp(a->s.data, s, a->s.len) == 0;
}

int ox_act_materialize(ox_ctx *c, ox_value *x, int *producer)
{
    tl_shape real = x->layer >= 0 ? c->m->layers[x->layer]->out
                                  : c->m->inputs[-1 - x->layer].shape;
    *producer = x->layer;
    if (tl_shape_equal(real, x->shape))
        return TLEARN_OK;
    const tl_layer_ops *ops;
    int ia[1 + TL_MAX_RANK] = {x->shape.rank}, rc;
    for (int i = 0; i < x->shape.rank; i++)
        ia[1 + i] = x->shape.d[i];
    if ((rc = ox_need_ops(c, TLEARN_LAYER_RESHAPE, "reshape", &ops)) ||
        (rc = ox_add_layer(c, ops, NULL, &x->layer, 1, ia, 1 + x->shape.rank, NULL, 0,
                           producer)))
        return rc;
    x->layer = *producer; /* later readers share it */
    return TLEARN_OK;
}

/* ---- dispatch: op type -> table line ---- */

static const ox_op *const tables[] = {ox_ops_nn, ox_ops_elementwise, ox_ops_norm, ox_ops_shape};

const ox_op *ox_op_find(const char *op_type, int64_t opset, int *other_opsets)
{
    *other_opsets = 0;
    for (size_t t = 0; t < sizeof tables / sizeof *tables; t++)
        for (const ox_op *o = tables[t]; o->op_type; o++) {
            if (strcmp(o->op_type, op_type) != 0)
                continue;
            if ((o->min_opset && opset < o->min_opset) || (o->max_opset && opset > o->max_opset))
                *other_opsets = 1;
            else
                return o;
        }
    return NULL;
}

int ox_op_info(size_t i, const char **op_type, int *min_opset, int *max_opset,
               const char **limits)
{
    for (size_t t = 0; t < sizeof tables / sizeof *tables; t++)
        for (const ox_op *o = tables[t]; o->op_type; o++)
            if (i-- == 0) {
                *op_type = o->op_type;
                *min_opset = o->min_opset ? o->min_opset : OX_OPSET_MIN;
                *max_opset = o->max_opset ? o->max_opset : OX_OPSET_MAX;
                *limits = o->limits;
                return 1;
            }
    return 0;
}

/* Every input of the node is a constant (a node without inputs is not). */
static int all_const(ox_ctx *c, const Tlonnx__NodeProto *nd)
{
    size_t k, n = 0;
    for (k = 0; k < nd->n_input; k++)
        if (ox_in_name(c, k)) {
            if (!ox_in_is_const(c, k))
                return 0;
            n++;
        }
    return n > 0;
}

int ox_node(ox_ctx *c, const Tlonnx__NodeProto *nd)
{
    int other;
    /* Shape arithmetic on constants folds, whatever the operator does on activations. */
    if (ox_is_fold_op(nd->op_type) && all_const(c, nd))
        return ox_fold(c);
    const ox_op *o = ox_op_find(nd->op_type, c->opset, &other);
    if (!o)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "operator %.40s is not supported%s (doc/onnx.md "
                       "lists the supported operators)", nd->op_type,
                       other ? " at this opset" : "");
    return o->import(c, o->arg);
}

/* ---- the pre-pass: every node that cannot map, in one message ---- */

/* Why node @p nd cannot map, from its op type and attributes alone; NULL when it may.
 * @p konst: its inputs are all constants (initializers, Constant and Shape outputs and
 * what is computed from them alone); @p folds: and its operator folds (ox_is_fold_op). */
static const char *node_problem(ox_ctx *c, const Tlonnx__NodeProto *nd, int konst, int folds,
                                char *buf, size_t n)
{
    if (!nd->op_type || !*nd->op_type)
        return "no operator type";
    if (nd->domain && *nd->domain && strcmp(nd->domain, "ai.onnx") != 0) {
        snprintf(buf, n, "operators of domain '%.60s' are not supported", nd->domain);
        return buf;
    }
    if (folds)
        return NULL;
    int other;
    const ox_op *o = ox_op_find(nd->op_type, c->opset, &other);
    if (!o)
        return other ? "not supported at this opset" : "operator not supported";
    /* operators that only fold: on an activation they have no layer */
    if (!konst && (strcmp(nd->op_type, "Unsqueeze") == 0 || strcmp(nd->op_type, "Squeeze") == 0))
        return "on an activation: only folded on constants";
    return o->check ? o->check(c) : NULL;
}

/* Append printf output to @p msg (of @p cap bytes, *len used); 0 when it did not fit. */
static int append(char *msg, size_t cap, size_t *len, const char *fmt, ...) TL_PRINTF(4, 5);
static int append(char *msg, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(msg + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= cap - *len) {
        msg[*len] = '\0';
        return 0;
    }
    *len += (size_t)k;
    return 1;
}

/* Nodes are grouped by operator and reason: "Mul (operator not supported): 49 nodes
 * '/a/Mul', '/b/Mul', ... and 40 more". Every group is named even when names are cut. */
int ox_check_graph(ox_ctx *c)
{
    const Tlonnx__GraphProto *g = c->g;
    size_t bad = 0;
    const char **why = tl_alloc_array(g->n_node ? g->n_node : 1, sizeof *why);
    char (*bufs)[128] = tl_alloc_array(g->n_node ? g->n_node : 1, sizeof *bufs);
    if (!why || !bufs) {
        tl_free(why);
        tl_free(bufs);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    }
    /* Which values will be constants, for the folded operators: initializers, then the
     * outputs of Constant, Shape, and nodes of constant inputs alone. */
    unsigned char *is_const = tl_alloc_array(c->nvals ? c->nvals : 1, 1);
    if (!is_const) {
        tl_free(why);
        tl_free(bufs);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    }
    for (size_t v = 0; v < c->nvals; v++)
        is_const[v] = c->vals[v].kind == OX_CONST;
    for (size_t i = 0; i < g->n_node; i++) {
        const Tlonnx__NodeProto *nd = g->node[i];
        size_t k, nin = 0;
        int konst = 1;
        c->node = nd;
        c->node_index = i;
        for (k = 0; k < nd->n_input; k++)
            if (ox_in_name(c, k)) {
                konst = konst && is_const[ox_find(c, nd->input[k]) - c->vals];
                nin++;
            }
        konst = konst && nin > 0;
        /* a node of a fused pattern was checked by its matcher */
        why[i] = c->fuse_of && c->fuse_of[i]
                     ? NULL
                     : node_problem(c, nd, konst,
                                    konst && nd->op_type && ox_is_fold_op(nd->op_type), bufs[i],
                                    sizeof bufs[i]);
        bad += why[i] != NULL;
        if (konst || (nd->op_type && (strcmp(nd->op_type, "Constant") == 0 ||
                                      strcmp(nd->op_type, "Shape") == 0)))
            for (k = 0; k < nd->n_output; k++)
                if (nd->output[k] && *nd->output[k])
                    is_const[ox_find(c, nd->output[k]) - c->vals] = 1;
    }
    tl_free(is_const);
    c->node = NULL;
    if (!bad) {
        tl_free(why);
        tl_free(bufs);
        return TLEARN_OK;
    }
    char msg[4096];
    size_t len = 0;
    append(msg, sizeof msg, &len, "%s: %zu of %zu nodes cannot be imported:", c->fn, bad,
           g->n_node);
    /* The groups take a short line each first, then names fill what room is left. */
    const size_t names_room = 160;
    int groups = 0;
    for (size_t i = 0; i < g->n_node; i++) {
        if (!why[i])
            continue;
        const char *op = g->node[i]->op_type ? g->node[i]->op_type : "";
        size_t count = 0;
        for (size_t j = i; j < g->n_node; j++)
            count += why[j] && strcmp(why[j], why[i]) == 0 &&
                     strcmp(g->node[j]->op_type ? g->node[j]->op_type : "", op) == 0;
        append(msg, sizeof msg, &len, "%s %.40s (%s): %zu node%s", groups++ ? ";" : "", op,
               why[i], count, count == 1 ? "" : "s");
        size_t shown = 0, start = len;
        const char *reason = why[i];
        for (size_t j = i; j < g->n_node; j++) {
            if (!why[j] || strcmp(why[j], reason) != 0 ||
                strcmp(g->node[j]->op_type ? g->node[j]->op_type : "", op) != 0)
                continue;
            why[j] = NULL; /* reported */
            const char *nn = g->node[j]->name;
            if (len - start > names_room || len + 300 > sizeof msg)
                continue;
            if (nn && *nn)
                append(msg, sizeof msg, &len, "%s'%.100s'", shown ? ", " : " ", nn);
            else
                append(msg, sizeof msg, &len, "%s#%zu", shown ? ", " : " ", j);
            shown++;
        }
        if (shown < count)
            append(msg, sizeof msg, &len, " and %zu more", count - shown);
    }
    tl_free(why);
    tl_free(bufs);
    return tl_fail(TLEARN_EUNSUPPORTED, "%s", msg);
}
