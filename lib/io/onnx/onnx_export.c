/* ONNX export: a model's evaluation graph as an ONNX ModelProto (default domain, opsets
 * OX_EXPORT_MIN..OX_OPSET_MAX). Each layer kind maps through one line of ex_kinds[] to a
 * handler that reads the layer only through its ops->arguments() and its named tensors (as
 * checkpoints do) and emits nodes whose output is named as the layer; parameters become
 * initializers named "layer.param", pointing at the tensors' own floats (no copy on a
 * little-endian host). Values the mapping adds (reshapes, constants, intermediate results)
 * are named "layer[what]": brackets are not allowed in layer names, so they never collide
 * with a layer, input or tensor name. Every allocation goes to one arena freed at the end;
 * protobuf-c packs the message into one buffer. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "onnx_internal.h"
#include "onnx_optable.h"
#include "../io.h"

#define OX_EXPORT_MIN 13 /* Softmax on one axis, ReduceSum's axes input */
#define OX_EXPORT_DEFAULT 17
#define EX_IR_VERSION 8 /* ONNX 1.12 and later, opsets up to 17 */

enum { T_FLOAT = 1, T_INT32 = 6, T_INT64 = 7, T_BOOL = 9 };
enum { A_FLOAT = 1, A_INT = 2, A_STRING = 3, A_INTS = 7 };

typedef struct ex_ctx {
    const char *fn;
    const tlearn_model *m;
    int opset;
    void **arena;
    size_t narena, caparena;
    int oom;
    void **nodes; /* Tlonnx__NodeProto * */
    size_t nnodes, capnodes;
    void **inits; /* Tlonnx__TensorProto * */
    size_t ninits, capinits;
    const tl_layer *L; /* layer being exported, for auxiliary names */
    int ia[TL_MAX_IARGS], ni, nf; /* its arguments (ops->arguments) */
    float fa[TL_MAX_FARGS];
} ex_ctx;

/* ---- arena ---- */

static void *ex_alloc(ex_ctx *c, size_t bytes)
{
    if (c->oom)
        return NULL;
    if (c->narena == c->caparena) {
        size_t cap = c->caparena ? 2 * c->caparena : 256;
        void **a = tl_alloc_array(cap, sizeof *a);
        if (!a) {
            c->oom = 1;
            return NULL;
        }
        if (c->narena)
            memcpy(a, c->arena, c->narena * sizeof *a);
        tl_free(c->arena);
        c->arena = a;
        c->caparena = cap;
    }
    void *p = tl_alloc_zero(bytes ? bytes : 1);
    if (!p) {
        c->oom = 1;
        return NULL;
    }
    c->arena[c->narena++] = p;
    return p;
}

/* Append @p p to a growable array of pointers. */
static void ex_push(ex_ctx *c, void ***arr, size_t *n, size_t *cap, void *p)
{
    if (!p || c->oom)
        return;
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 64;
        void **a = ex_alloc(c, nc * sizeof *a);
        if (!a)
            return;
        if (*n)
            memcpy(a, *arr, *n * sizeof *a);
        *arr = a; /* the old array stays in the arena until the end */
        *cap = nc;
    }
    (*arr)[(*n)++] = p;
}

static char *ex_strf(ex_ctx *c, const char *fmt, ...) TL_PRINTF(2, 3);
static char *ex_strf(ex_ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n < 0 ? NULL : ex_alloc(c, (size_t)n + 1);
    if (!s)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* An auxiliary value of the current layer: "layer[what]". */
static char *ex_aux(ex_ctx *c, const char *what)
{
    return ex_strf(c, "%s[%s]", c->L->name, what);
}

/* ---- nodes and attributes ---- */

/* A node of @p op reading @p nin names (NULL or "" for an absent optional input) and
 * writing @p out; NULL when out of memory (c->oom set). */
static Tlonnx__NodeProto *ex_node(ex_ctx *c, const char *op, const char *const *in, int nin,
                                  const char *out)
{
    Tlonnx__NodeProto *n = ex_alloc(c, sizeof *n);
    char **ins = ex_alloc(c, (size_t)(nin ? nin : 1) * sizeof *ins);
    char **outs = ex_alloc(c, sizeof *outs);
    if (!n || !ins || !outs || !out)
        return c->oom = 1, NULL;
    tlonnx__node_proto__init(n);
    for (int k = 0; k < nin; k++)
        ins[k] = (char *)(in[k] ? in[k] : "");
    outs[0] = (char *)out;
    n->n_input = (size_t)nin;
    n->input = ins;
    n->n_output = 1;
    n->output = outs;
    n->op_type = (char *)op;
    n->name = (char *)out;
    ex_push(c, &c->nodes, &c->nnodes, &c->capnodes, n);
    return c->oom ? NULL : n;
}

static Tlonnx__AttributeProto *ex_attr(ex_ctx *c, Tlonnx__NodeProto *n, const char *name,
                                       int type)
{
    if (!n)
        return NULL;
    Tlonnx__AttributeProto *a = ex_alloc(c, sizeof *a);
    Tlonnx__AttributeProto **arr = ex_alloc(c, (n->n_attribute + 1) * sizeof *arr);
    if (!a || !arr)
        return NULL;
    tlonnx__attribute_proto__init(a);
    a->name = (char *)name;
    a->has_type = 1;
    a->type = type;
    if (n->n_attribute)
        memcpy(arr, n->attribute, n->n_attribute * sizeof *arr);
    arr[n->n_attribute++] = a;
    n->attribute = arr;
    return a;
}

static void ex_attr_int(ex_ctx *c, Tlonnx__NodeProto *n, const char *name, int64_t v)
{
    Tlonnx__AttributeProto *a = ex_attr(c, n, name, A_INT);
    if (a) {
        a->has_i = 1;
        a->i = v;
    }
}

static void ex_attr_float(ex_ctx *c, Tlonnx__NodeProto *n, const char *name, float v)
{
    Tlonnx__AttributeProto *a = ex_attr(c, n, name, A_FLOAT);
    if (a) {
        a->has_f = 1;
        a->f = v;
    }
}

static void ex_attr_str(ex_ctx *c, Tlonnx__NodeProto *n, const char *name, const char *s)
{
    Tlonnx__AttributeProto *a = ex_attr(c, n, name, A_STRING);
    if (a) {
        a->has_s = 1;
        a->s.data = (uint8_t *)s;
        a->s.len = strlen(s);
    }
}

static void ex_attr_ints(ex_ctx *c, Tlonnx__NodeProto *n, const char *name, const int64_t *v,
                         int k)
{
    Tlonnx__AttributeProto *a = ex_attr(c, n, name, A_INTS);
    int64_t *d = ex_alloc(c, (size_t)k * sizeof *d);
    if (a && d) {
        memcpy(d, v, (size_t)k * sizeof *d);
        a->n_ints = (size_t)k;
        a->ints = d;
    }
}

/* One-input and two-input nodes. */
static Tlonnx__NodeProto *ex_op1(ex_ctx *c, const char *op, const char *x, const char *out)
{
    return ex_node(c, op, &x, 1, out);
}

static Tlonnx__NodeProto *ex_op2(ex_ctx *c, const char *op, const char *a, const char *b,
                                 const char *out)
{
    const char *in[2] = {a, b};
    return ex_node(c, op, in, 2, out);
}

/* ---- initializers ---- */

static Tlonnx__TensorProto *ex_tensor(ex_ctx *c, const char *name, int type, int ndim,
                                      const int64_t *dims, const void *data, size_t bytes)
{
    Tlonnx__TensorProto *t = ex_alloc(c, sizeof *t);
    int64_t *d = ex_alloc(c, (size_t)(ndim ? ndim : 1) * sizeof *d);
    if (!t || !d || !name)
        return c->oom = 1, NULL;
    tlonnx__tensor_proto__init(t);
    t->name = (char *)name;
    t->has_data_type = 1;
    t->data_type = type;
    if (ndim)
        memcpy(d, dims, (size_t)ndim * sizeof *d);
    t->n_dims = (size_t)ndim;
    t->dims = d;
    t->has_raw_data = 1;
    t->raw_data.len = bytes;
    t->raw_data.data = (uint8_t *)data;
    ex_push(c, &c->inits, &c->ninits, &c->capinits, t);
    return c->oom ? NULL : t;
}

static int ex_little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* @p n floats as little-endian bytes: the floats themselves on a little-endian host. */
static const void *ex_le_floats(ex_ctx *c, const float *src, size_t n)
{
    if (ex_little_endian())
        return src;
    unsigned char *b = ex_alloc(c, n * 4);
    if (b)
        tl_floats_to_le(b, src, n);
    return b;
}

/* Parameter @p p of the current layer as the initializer "layer.param"; its name. */
static const char *ex_param(ex_ctx *c, int p)
{
    const tl_param *P = &c->L->param[p];
    int64_t dims[4];
    for (int i = 0; i < P->t.ndim; i++)
        dims[i] = P->t.dims[i];
    const char *name = ex_strf(c, "%s.%s", c->L->name, P->name);
    ex_tensor(c, name, T_FLOAT, P->t.ndim, dims, ex_le_floats(c, P->t.data, P->t.numel),
              P->t.numel * 4);
    return name;
}

/* A float constant of the current layer (copied into the arena). */
static const char *ex_const_f(ex_ctx *c, const char *what, int ndim, const int64_t *dims,
                              const float *v, size_t n)
{
    const char *name = ex_aux(c, what);
    float *d = ex_alloc(c, n * sizeof *d);
    if (!d)
        return NULL;
    memcpy(d, v, n * sizeof *d);
    ex_tensor(c, name, T_FLOAT, ndim, dims, ex_le_floats(c, d, n), n * 4);
    return name;
}

static const char *ex_scalar(ex_ctx *c, const char *what, float v)
{
    return ex_const_f(c, what, 0, NULL, &v, 1);
}

/* A 1-D int64 constant of the current layer. */
static const char *ex_const_i(ex_ctx *c, const char *what, const int64_t *v, int n)
{
    const char *name = ex_aux(c, what);
    unsigned char *d = ex_alloc(c, (size_t)n * 8);
    if (!d)
        return NULL;
    for (int i = 0; i < n; i++)
        tl_put_u64(d + 8 * i, (uint64_t)v[i]);
    int64_t len = n;
    ex_tensor(c, name, T_INT64, 1, &len, d, (size_t)n * 8);
    return name;
}

/* ---- shapes: a value of a tl_shape is (N, d0, .., d{rank-1}) in ONNX ---- */

/* Reshape @p x to (N, dims..) of @p rank dims; the result's name. */
static const char *ex_reshape(ex_ctx *c, const char *x, const char *what, int rank,
                              const int *dims)
{
    int64_t s[1 + TL_MAX_RANK + 1] = {0};
    for (int i = 0; i < rank; i++)
        s[1 + i] = dims[i];
    const char *out = ex_aux(c, what);
    ex_op2(c, "Reshape", x, ex_const_i(c, ex_strf(c, "%s_shape", what), s, 1 + rank), out);
    return out;
}

/* Input @p k of the current layer seen as an image (N, C, H, W), as image kinds read it. */
static const char *ex_image(ex_ctx *c, const char *x, int k)
{
    tl_shape s = c->L->in[k];
    if (s.rank == 3)
        return x;
    return ex_reshape(c, x, "image", 3, s.d);
}

/* Input @p k flattened to (N, size), as dense and prototype read it. */
static const char *ex_flat(ex_ctx *c, const char *x, int k)
{
    if (c->L->in[k].rank == 1)
        return x;
    const char *out = ex_aux(c, "flat");
    ex_attr_int(c, ex_op1(c, "Flatten", x, out), "axis", 1);
    return out;
}

/* An ONNX axis (batch first) of an axis over the example's @p rank dims. */
static int64_t ex_axis(int axis, int rank)
{
    return tl_shape_axis(axis, rank) + 1;
}

/* ---- the kinds ---- */

typedef int (*ex_fn)(ex_ctx *c, const char *const *in, const char *out);

static int ex_identity(ex_ctx *c, const char *const *in, const char *out)
{
    ex_op1(c, "Identity", in[0], out);
    return TLEARN_OK;
}

static int ex_dense(ex_ctx *c, const char *const *in, const char *out)
{
    int last_axis = c->ni > 1 && c->ia[1], bias = c->ni > 2 ? c->ia[2] : 1;
    const char *w = ex_param(c, 0), *b = bias ? ex_param(c, 1) : NULL;
    if (!last_axis || c->L->in[0].rank == 1) {
        const char *x = ex_flat(c, in[0], 0), *gin[3] = {x, w, b};
        ex_attr_int(c, ex_node(c, "Gemm", gin, bias ? 3 : 2, out), "transB", 1);
        return TLEARN_OK;
    }
    /* torch.nn.Linear over the last axis, as PyTorch exports it: MatMul by W^T, Add b */
    const char *wt = ex_aux(c, "weight_t"), *mm = bias ? ex_aux(c, "matmul") : out;
    int64_t perm[2] = {1, 0};
    ex_attr_ints(c, ex_op1(c, "Transpose", w, wt), "perm", perm, 2);
    ex_op2(c, "MatMul", in[0], wt, mm);
    if (bias)
        ex_op2(c, "Add", mm, b, out);
    return TLEARN_OK;
}

static int ex_flatten(ex_ctx *c, const char *const *in, const char *out)
{
    ex_attr_int(c, ex_op1(c, "Flatten", in[0], out), "axis", 1);
    return TLEARN_OK;
}

/* x * sigmoid-like gate g(x): Mul(x, g). */
static void ex_gated(ex_ctx *c, const char *x, const char *gate_op, const char *out,
                     Tlonnx__NodeProto **gate)
{
    const char *g = ex_aux(c, "gate");
    *gate = ex_op1(c, gate_op, x, g);
    ex_op2(c, "Mul", x, g, out);
}

/* GELU as PyTorch exports nn.GELU(): x * 0.5 * (1 + erf(x / sqrt 2)), in the node order the
 * importer recognises (onnx_fuse.c). */
static void ex_gelu(ex_ctx *c, const char *x, const char *out)
{
    const char *d = ex_aux(c, "div"), *e = ex_aux(c, "erf"), *a = ex_aux(c, "add"),
               *m = ex_aux(c, "mul");
    ex_op2(c, "Div", x, ex_scalar(c, "sqrt2", 1.4142135381698608f), d);
    ex_op1(c, "Erf", d, e);
    ex_op2(c, "Add", e, ex_scalar(c, "one", 1.0f), a);
    ex_op2(c, "Mul", x, a, m);
    ex_op2(c, "Mul", m, ex_scalar(c, "half", 0.5f), out);
}

/* GELU's tanh form as PyTorch exports it:
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static void ex_gelu_tanh(ex_ctx *c, const char *x, const char *out)
{
    const char *x2 = ex_aux(c, "x2"), *x3 = ex_aux(c, "x3"), *k = ex_aux(c, "cubic"),
               *s = ex_aux(c, "inner"), *r = ex_aux(c, "scaled"), *t = ex_aux(c, "tanh"),
               *a = ex_aux(c, "add"), *m = ex_aux(c, "mul");
    ex_op2(c, "Mul", x, x, x2);
    ex_op2(c, "Mul", x, x2, x3);
    ex_op2(c, "Mul", x3, ex_scalar(c, "c", 0.044715f), k);
    ex_op2(c, "Add", x, k, s);
    ex_op2(c, "Mul", s, ex_scalar(c, "beta", 0.7978845608028654f), r);
    ex_op1(c, "Tanh", r, t);
    ex_op2(c, "Add", t, ex_scalar(c, "one", 1.0f), a);
    ex_op2(c, "Mul", x, a, m);
    ex_op2(c, "Mul", m, ex_scalar(c, "half", 0.5f), out);
}

static int ex_activation(ex_ctx *c, const char *const *in, const char *out)
{
    const char *x = in[0];
    Tlonnx__NodeProto *n = NULL;
    switch (c->ia[0]) {
    case TLEARN_ACT_RELU:
        ex_op1(c, "Relu", x, out);
        break;
    case TLEARN_ACT_TANH:
        ex_op1(c, "Tanh", x, out);
        break;
    case TLEARN_ACT_SIGMOID:
        ex_op1(c, "Sigmoid", x, out);
        break;
    case TLEARN_ACT_GELU:
        ex_gelu(c, x, out);
        break;
    case TLEARN_ACT_GELU_TANH:
        ex_gelu_tanh(c, x, out);
        break;
    case TLEARN_ACT_RELU6:
    case TLEARN_ACT_CLIP: {
        float lo = c->ia[0] == TLEARN_ACT_CLIP ? c->fa[0] : 0.0f;
        float hi = c->ia[0] == TLEARN_ACT_CLIP ? c->fa[1] : 6.0f;
        /* an infinite bound is an absent input */
        const char *cin[3] = {x, isinf(lo) ? NULL : ex_scalar(c, "min", lo),
                              isinf(hi) ? NULL : ex_scalar(c, "max", hi)};
        ex_node(c, "Clip", cin, cin[2] ? 3 : cin[1] ? 2 : 1, out);
        break;
    }
    case TLEARN_ACT_LEAKY_RELU:
        ex_attr_float(c, ex_op1(c, "LeakyRelu", x, out), "alpha", c->fa[0]);
        break;
    case TLEARN_ACT_HARDSIGMOID:
        n = ex_op1(c, "HardSigmoid", x, out);
        ex_attr_float(c, n, "alpha", c->fa[0]);
        ex_attr_float(c, n, "beta", c->fa[1]);
        break;
    case TLEARN_ACT_HARDSWISH:
        if (c->opset >= 14) {
            ex_op1(c, "HardSwish", x, out);
        } else { /* x * hardsigmoid(x; 1/6, 1/2), as PyTorch exports it before 14 */
            ex_gated(c, x, "HardSigmoid", out, &n);
            ex_attr_float(c, n, "alpha", 1.0f / 6.0f);
            ex_attr_float(c, n, "beta", 0.5f);
        }
        break;
    case TLEARN_ACT_SILU:
        ex_gated(c, x, "Sigmoid", out, &n);
        break;
    default:
        return TLEARN_EUNSUPPORTED;
    }
    return TLEARN_OK;
}

static int ex_conv2d(ex_ctx *c, const char *const *in, const char *out)
{
    /* filters kh kw sh sw ph pw dh dw groups bias */
    const char *cin[3] = {ex_image(c, in[0], 0), ex_param(c, 0), c->ia[10] ? ex_param(c, 1) : NULL};
    Tlonnx__NodeProto *n = ex_node(c, "Conv", cin, c->ia[10] ? 3 : 2, out);
    int64_t k[2] = {c->ia[1], c->ia[2]}, s[2] = {c->ia[3], c->ia[4]}, d[2] = {c->ia[7], c->ia[8]};
    int64_t p[4] = {c->ia[5], c->ia[6], c->ia[5], c->ia[6]};
    ex_attr_ints(c, n, "kernel_shape", k, 2);
    ex_attr_ints(c, n, "strides", s, 2);
    ex_attr_ints(c, n, "pads", p, 4);
    ex_attr_ints(c, n, "dilations", d, 2);
    ex_attr_int(c, n, "group", c->ia[9]);
    return TLEARN_OK;
}

/* ceil_mode adds a last window on an axis of @p len (the layer's rule: a window that would
 * start in the end padding is dropped, which ONNX's shape formula before opset 19 does
 * not do). Where it adds none the floor form is the same pooling, and any runtime agrees. */
static int ceil_adds(int len, int kernel, int dil, int stride, int p0, int p1)
{
    long span = (long)len + p0 + p1 - ((long)dil * (kernel - 1) + 1);
    long fl = span / stride + 1, ce = (span + stride - 1) / stride + 1;
    if ((ce - 1) * stride >= (long)len + p0)
        ce--;
    return ce != fl;
}

static void ex_pool_attrs(ex_ctx *c, Tlonnx__NodeProto *n, const tl_pool_geom *g)
{
    int64_t k[2] = {g->kh, g->kw}, s[2] = {g->sh, g->sw}, p[4] = {g->pt, g->pl, g->pb, g->pr};
    ex_attr_ints(c, n, "kernel_shape", k, 2);
    ex_attr_ints(c, n, "strides", s, 2);
    ex_attr_ints(c, n, "pads", p, 4);
    tl_shape in = c->L->in[0];
    if (g->ceil_mode && (ceil_adds(in.h, g->kh, g->dh, g->sh, g->pt, g->pb) ||
                         ceil_adds(in.w, g->kw, g->dw, g->sw, g->pl, g->pr)))
        ex_attr_int(c, n, "ceil_mode", 1);
}

static int ex_maxpool(ex_ctx *c, const char *const *in, const char *out)
{
    /* kh kw sh sw pt pl [pb pr dh dw ceil_mode] */
    tl_pool_geom g = {c->ia[0], c->ia[1], c->ia[2], c->ia[3], c->ia[4], c->ia[5], c->ia[4], c->ia[5], 1, 1, 0};
    if (c->ni == 11) {
        g.pb = c->ia[6];
        g.pr = c->ia[7];
        g.dh = c->ia[8];
        g.dw = c->ia[9];
        g.ceil_mode = c->ia[10];
    }
    Tlonnx__NodeProto *n = ex_op1(c, "MaxPool", ex_image(c, in[0], 0), out);
    ex_pool_attrs(c, n, &g);
    if (g.dh != 1 || g.dw != 1) {
        int64_t d[2] = {g.dh, g.dw};
        ex_attr_ints(c, n, "dilations", d, 2);
    }
    return TLEARN_OK;
}

static int ex_avgpool(ex_ctx *c, const char *const *in, const char *out)
{
    /* kh kw sh sw pt pl count_include_pad [pb pr ceil_mode] */
    tl_pool_geom g = {c->ia[0], c->ia[1], c->ia[2], c->ia[3], c->ia[4], c->ia[5], c->ia[4], c->ia[5], 1, 1, 0};
    if (c->ni == 10) {
        g.pb = c->ia[7];
        g.pr = c->ia[8];
        g.ceil_mode = c->ia[9];
    }
    Tlonnx__NodeProto *n = ex_op1(c, "AveragePool", ex_image(c, in[0], 0), out);
    ex_pool_attrs(c, n, &g);
    if (c->ia[6])
        ex_attr_int(c, n, "count_include_pad", 1);
    return TLEARN_OK;
}

static int ex_global_avgpool(ex_ctx *c, const char *const *in, const char *out)
{
    ex_op1(c, "GlobalAveragePool", ex_image(c, in[0], 0), out);
    return TLEARN_OK;
}

static int ex_batchnorm(ex_ctx *c, const char *const *in, const char *out)
{
    const char *bin[5] = {in[0], ex_param(c, 0), ex_param(c, 1), ex_param(c, 2),
                          ex_param(c, 3)};
    Tlonnx__NodeProto *n = ex_node(c, "BatchNormalization", bin, 5, out);
    ex_attr_float(c, n, "epsilon", c->fa[0]);
    ex_attr_float(c, n, "momentum", 1.0f - c->fa[1]); /* ONNX weighs the running value */
    return TLEARN_OK;
}

static int ex_add(ex_ctx *c, const char *const *in, const char *out)
{
    ex_op2(c, "Add", in[0], in[1], out);
    return TLEARN_OK;
}

/* Input @p k with 1s inserted after the batch up to @p rank dims, so that ONNX's
 * broadcasting (right-aligned over the batch too) matches the layers' (per example). */
static const char *ex_to_rank(ex_ctx *c, const char *x, int k, int rank)
{
    tl_shape s = c->L->in[k];
    if (s.rank >= rank)
        return x;
    int dims[TL_MAX_RANK];
    for (int i = 0; i < rank; i++)
        dims[i] = i < rank - s.rank ? 1 : s.d[i - (rank - s.rank)];
    return ex_reshape(c, x, k ? "b_rank" : "a_rank", rank, dims);
}

static int ex_binary(ex_ctx *c, const char *const *in, const char *out)
{
    static const char *const ops[] = {NULL, "Add", "Sub", "Mul", "Div"};
    int r = c->L->out.rank;
    ex_op2(c, ops[c->ia[0]], ex_to_rank(c, in[0], 0, r), ex_to_rank(c, in[1], 1, r), out);
    return TLEARN_OK;
}

static int ex_scale(ex_ctx *c, const char *const *in, const char *out)
{
    /* the weight (dims) broadcasts to the example's trailing dims, as in ONNX */
    int bias = c->L->nparam > 1;
    const char *m = bias ? ex_aux(c, "mul") : out;
    ex_op2(c, "Mul", in[0], ex_param(c, 0), m);
    if (bias)
        ex_op2(c, "Add", m, ex_param(c, 1), out);
    return TLEARN_OK;
}

static int ex_softmax(ex_ctx *c, const char *const *in, const char *out)
{
    ex_attr_int(c, ex_op1(c, "Softmax", in[0], out), "axis", ex_axis(c->ia[0], c->L->in[0].rank));
    return TLEARN_OK;
}

static int ex_concat(ex_ctx *c, const char *const *in, const char *out)
{
    Tlonnx__NodeProto *n = ex_node(c, "Concat", in, c->L->ninputs, out);
    ex_attr_int(c, n, "axis", ex_axis(c->ia[0], c->L->in[0].rank));
    return TLEARN_OK;
}

static int ex_slice(ex_ctx *c, const char *const *in, const char *out)
{
    /* axis start end step: ONNX's clamping rules are the layer's */
    int64_t st = c->ia[1], en = c->ia[2], ax = ex_axis(c->ia[0], c->L->in[0].rank), step = c->ia[3];
    const char *sin[5] = {in[0], ex_const_i(c, "starts", &st, 1), ex_const_i(c, "ends", &en, 1),
                          ex_const_i(c, "axes", &ax, 1), ex_const_i(c, "steps", &step, 1)};
    ex_node(c, "Slice", sin, 5, out);
    return TLEARN_OK;
}

static int ex_reshape_kind(ex_ctx *c, const char *const *in, const char *out)
{
    tl_shape o = c->L->out;
    int64_t s[1 + TL_MAX_RANK] = {0}; /* 0: the batch as it is */
    for (int i = 0; i < o.rank; i++)
        s[1 + i] = o.d[i];
    ex_op2(c, "Reshape", in[0], ex_const_i(c, "shape", s, 1 + o.rank), out);
    return TLEARN_OK;
}

static int ex_transpose(ex_ctx *c, const char *const *in, const char *out)
{
    int64_t perm[1 + TL_MAX_RANK] = {0};
    for (int i = 0; i < c->ia[0]; i++)
        perm[1 + i] = c->ia[1 + i] + 1;
    ex_attr_ints(c, ex_op1(c, "Transpose", in[0], out), "perm", perm, 1 + c->ia[0]);
    return TLEARN_OK;
}

/* LayerNorm over the last @p naxes ONNX axes of @p x into @p out: LayerNormalization from
 * opset 17, before that the primitive form PyTorch exports (and the importer fuses). */
static void ex_ln(ex_ctx *c, const char *x, int onnx_rank, int naxes, float eps,
                  const char *w, const char *b, const char *out)
{
    if (c->opset >= 17) {
        const char *lin[3] = {x, w, b};
        Tlonnx__NodeProto *n = ex_node(c, "LayerNormalization", lin, b ? 3 : 2, out);
        ex_attr_int(c, n, "axis", -naxes);
        ex_attr_float(c, n, "epsilon", eps);
        return;
    }
    int64_t axes[TL_MAX_RANK + 1];
    for (int i = 0; i < naxes; i++)
        axes[i] = onnx_rank - naxes + i;
    const char *mu = ex_aux(c, "mean"), *d = ex_aux(c, "centered"), *sq = ex_aux(c, "square"),
               *var = ex_aux(c, "var"), *ve = ex_aux(c, "var_eps"), *sd = ex_aux(c, "std"),
               *nrm = w || b ? ex_aux(c, "normalized") : out;
    ex_attr_ints(c, ex_op1(c, "ReduceMean", x, mu), "axes", axes, naxes);
    ex_op2(c, "Sub", x, mu, d);
    ex_op2(c, "Pow", d, ex_scalar(c, "two", 2.0f), sq);
    ex_attr_ints(c, ex_op1(c, "ReduceMean", sq, var), "axes", axes, naxes);
    ex_op2(c, "Add", var, ex_scalar(c, "eps", eps), ve);
    ex_op1(c, "Sqrt", ve, sd);
    ex_op2(c, "Div", d, sd, nrm);
    if (w) {
        const char *sc = b ? ex_aux(c, "scaled") : out;
        ex_op2(c, "Mul", nrm, w, sc);
        if (b)
            ex_op2(c, "Add", sc, b, out);
    }
}

static int ex_layernorm(ex_ctx *c, const char *const *in, const char *out)
{
    int naxes = c->ia[0], affine = c->ia[1], r = 1 + c->L->in[0].rank;
    const char *w = NULL, *b = NULL;
    if (affine) {
        w = ex_param(c, 0);
        b = ex_param(c, 1);
    } else if (c->opset >= 17) { /* LayerNormalization requires a scale */
        tl_shape s = c->L->in[0];
        size_t n = naxes ? tl_shape_size(s) / tl_shape_outer(s, s.rank - naxes) : (size_t)s.d[0];
        int64_t dims[TL_MAX_RANK];
        int nd = naxes ? naxes : 1;
        for (int i = 0; i < nd; i++)
            dims[i] = naxes ? s.d[s.rank - naxes + i] : s.d[0];
        float *ones = ex_alloc(c, n * sizeof *ones);
        if (!ones)
            return TLEARN_ENOMEM;
        for (size_t i = 0; i < n; i++)
            ones[i] = 1.0f;
        w = ex_const_f(c, "ones", nd, dims, ones, n);
    }
    if (naxes) {
        ex_ln(c, in[0], r, naxes, c->fa[0], w, b, out);
        return TLEARN_OK;
    }
    /* the channel axis at every position (ConvNeXt's LayerNorm2d): moved last and back */
    int64_t to_last[1 + TL_MAX_RANK], back[1 + TL_MAX_RANK];
    to_last[0] = back[0] = 0;
    for (int i = 1; i < r - 1; i++)
        to_last[i] = i + 1;
    to_last[r - 1] = 1;
    back[1] = r - 1;
    for (int i = 2; i < r; i++)
        back[i] = i - 1;
    const char *t = ex_aux(c, "channels_last"), *l = ex_aux(c, "normalized_last");
    ex_attr_ints(c, ex_op1(c, "Transpose", in[0], t), "perm", to_last, r);
    ex_ln(c, t, r, 1, c->fa[0], w, b, l);
    ex_attr_ints(c, ex_op1(c, "Transpose", l, out), "perm", back, r);
    return TLEARN_OK;
}

/* torch's adaptive bin i of @p out over @p len: [*a, *b). */
static void adaptive_bin(int i, int out, int len, int *a, int *b)
{
    *a = (int)((long long)i * len / out);
    *b = (int)(((long long)(i + 1) * len + out - 1) / out);
}

static int ex_adaptive_avgpool(ex_ctx *c, const char *const *in, const char *out)
{
    tl_shape s = c->L->in[0];
    int oh = c->ia[0], ow = c->ia[1], h = s.h, w = s.w;
    const char *x = ex_image(c, in[0], 0);
    if (oh == 1 && ow == 1) {
        ex_op1(c, "GlobalAveragePool", x, out);
        return TLEARN_OK;
    }
    if (h % oh == 0 && w % ow == 0) { /* equal bins: an ordinary pool */
        tl_pool_geom g = {h / oh, w / ow, h / oh, w / ow, 0, 0, 0, 0, 1, 1, 0};
        ex_pool_attrs(c, ex_op1(c, "AveragePool", x, out), &g);
        return TLEARN_OK;
    }
    /* overlapping bins: (N, C, H*W) times a constant (H*W, oh*ow) of 1/bin-size */
    size_t hw = (size_t)h * w, o = (size_t)oh * ow;
    float *pm = ex_alloc(c, hw * o * sizeof *pm);
    if (!pm)
        return TLEARN_ENOMEM;
    for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++) {
            int a0, a1, b0, b1;
            adaptive_bin(i, oh, h, &a0, &a1);
            adaptive_bin(j, ow, w, &b0, &b1);
            float v = 1.0f / (float)((a1 - a0) * (b1 - b0));
            for (int y = a0; y < a1; y++)
                for (int xx = b0; xx < b1; xx++)
                    pm[((size_t)y * w + xx) * o + (size_t)i * ow + j] = v;
        }
    int flat[2] = {s.c, (int)hw}, res[3] = {s.c, oh, ow};
    int64_t pd[2] = {(int64_t)hw, (int64_t)o};
    const char *r = ex_reshape(c, x, "rows", 2, flat), *mm = ex_aux(c, "pooled");
    ex_op2(c, "MatMul", r, ex_const_f(c, "bins", 2, pd, pm, hw * o), mm);
    int64_t shape[4] = {0, res[0], res[1], res[2]};
    ex_op2(c, "Reshape", mm, ex_const_i(c, "shape", shape, 4), out);
    return TLEARN_OK;
}

static int ex_pad(ex_ctx *c, const char *const *in, const char *out)
{
    static const char *const modes[] = {NULL, "constant", "reflect", "edge"};
    int r = 1 + c->L->in[0].rank;
    int64_t pads[2 * (1 + TL_MAX_RANK)] = {0};
    pads[r - 2] = c->ia[0];
    pads[r - 1] = c->ia[1];
    pads[2 * r - 2] = c->ia[2];
    pads[2 * r - 1] = c->ia[3];
    const char *pin[3] = {in[0], ex_const_i(c, "pads", pads, 2 * r),
                          c->ia[4] == 1 ? ex_scalar(c, "value", c->fa[0]) : NULL};
    ex_attr_str(c, ex_node(c, "Pad", pin, pin[2] ? 3 : 2, out), "mode", modes[c->ia[4]]);
    return TLEARN_OK;
}

/* The last two axes of an ONNX value of rank @p r swapped. */
static const char *ex_swap_last(ex_ctx *c, const char *x, int r, const char *what)
{
    int64_t perm[1 + TL_MAX_RANK];
    for (int i = 0; i < r; i++)
        perm[i] = i;
    perm[r - 2] = r - 1;
    perm[r - 1] = r - 2;
    const char *t = ex_aux(c, what);
    ex_attr_ints(c, ex_op1(c, "Transpose", x, t), "perm", perm, r);
    return t;
}

static int ex_matmul(ex_ctx *c, const char *const *in, const char *out)
{
    const char *b = c->ia[0] ? ex_swap_last(c, in[1], 1 + c->L->in[1].rank, "b_t") : in[1];
    ex_op2(c, "MatMul", in[0], b, out);
    return TLEARN_OK;
}

static int ex_embedding(ex_ctx *c, const char *const *in, const char *out)
{
    ex_attr_int(c, ex_op2(c, "Gather", ex_param(c, 0), in[0], out), "axis", 0);
    return TLEARN_OK;
}

static int ex_position_embedding(ex_ctx *c, const char *const *in, const char *out)
{
    const tl_tensor *t = &c->L->param[0].t;
    const char *w = ex_param(c, 0);
    int64_t len = c->L->in[0].d[0];
    if (len < t->dims[0]) { /* the first T rows of the table */
        int64_t zero = 0;
        const char *sin[4] = {w, ex_const_i(c, "starts", &zero, 1),
                              ex_const_i(c, "ends", &len, 1), ex_const_i(c, "axes", &zero, 1)};
        const char *rows = ex_aux(c, "rows");
        ex_node(c, "Slice", sin, 4, rows);
        w = rows;
    }
    ex_op2(c, "Add", in[0], w, out);
    return TLEARN_OK;
}

/* A key-padding mask (N, T), int32 or float, as booleans: a position is kept when it is not
 * zero (tl_mask_keep: -0.0 is zero, NaN is not; Cast to BOOL agrees). */
static const char *ex_mask_bool(ex_ctx *c, const char *mask)
{
    const char *b = ex_aux(c, "keep");
    ex_attr_int(c, ex_op1(c, "Cast", mask, b), "to", T_BOOL);
    return b;
}

/* The attention mask as "key visible": negated when the layer reads it as torch's
 * key_padding_mask (true where padded; argument pad_true). */
static const char *ex_attention_keep(ex_ctx *c, const char *mask)
{
    const char *b = ex_mask_bool(c, mask);
    if (c->ni < 3 || !c->ia[2])
        return b;
    const char *keep = ex_aux(c, "keep_not_pad");
    ex_op1(c, "Not", b, keep);
    return keep;
}

/* Attention as PyTorch's MultiheadAttention computes it, in ONNX primitives:
 * qkv = x W_in^T + b_in, per head softmax(q k^T / sqrt(hd) + masks) v, then out_proj. A query
 * that sees no key gets zero weights, as the layer gives (softmax alone would give NaN). */
static int ex_attention(ex_ctx *c, const char *const *in, const char *out)
{
    int heads = c->ia[0], causal = c->ia[1], t = c->L->in[0].d[0], d = c->L->in[0].d[1];
    if (c->ni > 3 && c->ia[3])
        return tl_fail(TLEARN_EUNSUPPORTED, "attention '%s' is in its split form (LoRA on a "
                       "projection), which export does not map yet", c->L->name);
    int hd = d / heads;
    int64_t perm2[2] = {1, 0};
    const char *wi = ex_param(c, 0), *bi = ex_param(c, 1), *wo = ex_param(c, 2),
               *bo = ex_param(c, 3);
    const char *wit = ex_aux(c, "in_proj_t"), *qkv0 = ex_aux(c, "qkv_mm"), *qkv = ex_aux(c, "qkv");
    ex_attr_ints(c, ex_op1(c, "Transpose", wi, wit), "perm", perm2, 2);
    ex_op2(c, "MatMul", in[0], wit, qkv0);
    ex_op2(c, "Add", qkv0, bi, qkv);
    /* (N, T, 3D) -> (N, T, 3, H, hd) -> (3, N, H, T, hd) -> q, k, v */
    int64_t split[5] = {0, t, 3, heads, hd}, p5[5] = {2, 0, 3, 1, 4};
    const char *r5 = ex_aux(c, "qkv_heads"), *t5 = ex_aux(c, "qkv_t");
    ex_op2(c, "Reshape", qkv, ex_const_i(c, "qkv_shape", split, 5), r5);
    ex_attr_ints(c, ex_op1(c, "Transpose", r5, t5), "perm", p5, 5);
    const char *qkvn[3] = {ex_aux(c, "q"), ex_aux(c, "k"), ex_aux(c, "v")};
    for (int j = 0; j < 3; j++) {
        const char *what = j == 0 ? "i_q" : j == 1 ? "i_k" : "i_v";
        const char *idx = ex_aux(c, what);
        int64_t v = j;
        unsigned char *b = ex_alloc(c, 8);
        if (!b)
            return TLEARN_ENOMEM;
        tl_put_u64(b, (uint64_t)v);
        ex_tensor(c, idx, T_INT64, 0, NULL, b, 8); /* a scalar index: the axis goes */
        ex_attr_int(c, ex_op2(c, "Gather", t5, idx, qkvn[j]), "axis", 0);
    }
    const char *kt = ex_swap_last(c, qkvn[1], 4, "k_t");
    const char *sc0 = ex_aux(c, "qk"), *sc = ex_aux(c, "scores");
    ex_op2(c, "MatMul", qkvn[0], kt, sc0);
    ex_op2(c, "Mul", sc0, ex_scalar(c, "scale", 1.0f / sqrtf((float)hd)), sc);
    const char *allowed = NULL; /* boolean: key visible to query */
    if (causal) {
        unsigned char *tri = ex_alloc(c, (size_t)t * t);
        if (!tri)
            return TLEARN_ENOMEM;
        for (int i = 0; i < t; i++)
            for (int j = 0; j < t; j++)
                tri[(size_t)i * t + j] = j <= i;
        int64_t dims[2] = {t, t};
        allowed = ex_aux(c, "causal");
        ex_tensor(c, allowed, T_BOOL, 2, dims, tri, (size_t)t * t);
    }
    int masked = c->L->ninputs > 1;
    if (masked) {
        int64_t ks[4] = {0, 1, 1, t};
        const char *keep = ex_attention_keep(c, in[1]), *k4 = ex_aux(c, "keep4");
        ex_op2(c, "Reshape", keep, ex_const_i(c, "keep_shape", ks, 4), k4);
        if (allowed) {
            const char *both = ex_aux(c, "allowed");
            ex_op2(c, "And", k4, allowed, both);
            allowed = both;
        } else {
            allowed = k4;
        }
    }
    const char *probs_in = sc;
    if (allowed) {
        const char *win[3] = {allowed, sc, ex_scalar(c, "neg_inf", -INFINITY)};
        probs_in = ex_aux(c, "scores_masked");
        ex_node(c, "Where", win, 3, probs_in);
    }
    const char *pr = ex_aux(c, "probs");
    ex_attr_int(c, ex_op1(c, "Softmax", probs_in, pr), "axis", -1);
    if (masked) { /* a query with no visible key: weights 0, not NaN */
        const char *af = ex_aux(c, "allowed_f"), *any = ex_aux(c, "any_f"),
                   *anyb = ex_aux(c, "any"), *pz = ex_aux(c, "probs_safe");
        int64_t last = -1;
        ex_attr_int(c, ex_op1(c, "Cast", allowed, af), "to", T_FLOAT);
        Tlonnx__NodeProto *n = ex_op1(c, "ReduceMax", af, any);
        ex_attr_ints(c, n, "axes", &last, 1);
        ex_attr_int(c, ex_op1(c, "Cast", any, anyb), "to", T_BOOL);
        const char *win[3] = {anyb, pr, ex_scalar(c, "zero", 0.0f)};
        ex_node(c, "Where", win, 3, pz);
        pr = pz;
    }
    /* (N, H, T, hd) -> (N, T, H, hd) -> (N, T, D) -> out_proj */
    int64_t p4[4] = {0, 2, 1, 3}, merged[3] = {0, t, d};
    const char *ctx = ex_aux(c, "context"), *ctxt = ex_aux(c, "context_t"),
               *ctxm = ex_aux(c, "context_merged"), *wot = ex_aux(c, "out_proj_t"),
               *o0 = ex_aux(c, "out_mm");
    ex_op2(c, "MatMul", pr, qkvn[2], ctx);
    ex_attr_ints(c, ex_op1(c, "Transpose", ctx, ctxt), "perm", p4, 4);
    ex_op2(c, "Reshape", ctxt, ex_const_i(c, "merged_shape", merged, 3), ctxm);
    ex_attr_ints(c, ex_op1(c, "Transpose", wo, wot), "perm", perm2, 2);
    ex_op2(c, "MatMul", ctxm, wot, o0);
    ex_op2(c, "Add", o0, bo, out);
    return TLEARN_OK;
}

static int ex_token_pool(ex_ctx *c, const char *const *in, const char *out)
{
    int64_t axis1 = 1;
    if (c->ia[0] == 0) { /* the first token */
        const char *idx = ex_aux(c, "first");
        unsigned char *b = ex_alloc(c, 8);
        if (!b)
            return TLEARN_ENOMEM;
        ex_tensor(c, idx, T_INT64, 0, NULL, b, 8);
        ex_attr_int(c, ex_op2(c, "Gather", in[0], idx, out), "axis", 1);
        return TLEARN_OK;
    }
    if (c->L->ninputs == 1) {
        Tlonnx__NodeProto *n = ex_op1(c, "ReduceMean", in[0], out);
        ex_attr_ints(c, n, "axes", &axis1, 1);
        ex_attr_int(c, n, "keepdims", 0);
        return TLEARN_OK;
    }
    /* masked mean: sum of the kept positions times 1 / their count (0 when none) */
    int t = c->L->in[0].d[0];
    int64_t ms[3] = {0, t, 1};
    const char *kb = ex_aux(c, "keep3"), *kf = ex_aux(c, "keep_f"), *xm = ex_aux(c, "kept"),
               *s = ex_aux(c, "sum"), *cnt = ex_aux(c, "count"), *inv = ex_aux(c, "inv"),
               *pos = ex_aux(c, "some"), *sc = ex_aux(c, "scale");
    const char *ax = ex_const_i(c, "axes", &axis1, 1);
    ex_op2(c, "Reshape", ex_mask_bool(c, in[1]), ex_const_i(c, "keep_shape", ms, 3), kb);
    const char *xin[3] = {kb, in[0], ex_scalar(c, "zero_x", 0.0f)};
    ex_node(c, "Where", xin, 3, xm); /* padded positions are skipped, whatever they hold */
    ex_attr_int(c, ex_op2(c, "ReduceSum", xm, ax, s), "keepdims", 0);
    ex_attr_int(c, ex_op1(c, "Cast", kb, kf), "to", T_FLOAT);
    ex_attr_int(c, ex_op2(c, "ReduceSum", kf, ax, cnt), "keepdims", 0); /* (N, 1) */
    ex_op1(c, "Reciprocal", cnt, inv);
    ex_op2(c, "Greater", cnt, ex_scalar(c, "zero", 0.0f), pos);
    const char *win[3] = {pos, inv, ex_scalar(c, "zero_scale", 0.0f)};
    ex_node(c, "Where", win, 3, sc);
    ex_op2(c, "Mul", s, sc, out);
    return TLEARN_OK;
}

static int ex_patch_embed(ex_ctx *c, const char *const *in, const char *out)
{
    int dim = c->ia[0], p = c->ia[1], cls = c->ia[2], pos = c->ia[3];
    const char *cin[3] = {in[0], ex_param(c, 0), ex_param(c, 1)};
    const char *conv = ex_aux(c, "conv"), *rows = ex_aux(c, "rows"), *tok = ex_aux(c, "tokens");
    Tlonnx__NodeProto *n = ex_node(c, "Conv", cin, 3, conv);
    int64_t k[2] = {p, p}, flat[3] = {0, dim, -1}, perm[3] = {0, 2, 1};
    ex_attr_ints(c, n, "kernel_shape", k, 2);
    ex_attr_ints(c, n, "strides", k, 2);
    ex_op2(c, "Reshape", conv, ex_const_i(c, "rows_shape", flat, 3), rows);
    ex_attr_ints(c, ex_op1(c, "Transpose", rows, tok), "perm", perm, 3);
    const char *seq = tok;
    if (cls) { /* the class token expanded to the batch, then the patches */
        const char *shp = ex_aux(c, "input_shape"), *nb = ex_aux(c, "batch"),
                   *es = ex_aux(c, "cls_shape"), *ct = ex_aux(c, "cls"), *cat = ex_aux(c, "seq");
        int64_t zero = 0, one = 1, rest[2] = {1, dim};
        const char *sl[4] = {shp, ex_const_i(c, "b0", &zero, 1), ex_const_i(c, "b1", &one, 1),
                             ex_const_i(c, "b_axes", &zero, 1)};
        ex_op1(c, "Shape", in[0], shp);
        ex_node(c, "Slice", sl, 4, nb);
        const char *cc[2] = {nb, ex_const_i(c, "cls_rest", rest, 2)};
        ex_attr_int(c, ex_node(c, "Concat", cc, 2, es), "axis", 0);
        ex_op2(c, "Expand", ex_param(c, 2), es, ct);
        const char *cat_in[2] = {ct, tok};
        ex_attr_int(c, ex_node(c, "Concat", cat_in, 2, pos ? cat : out), "axis", 1);
        seq = cat;
    }
    if (pos)
        ex_op2(c, "Add", seq, ex_param(c, c->L->nparam - 1), out);
    else if (!cls)
        ex_op1(c, "Identity", tok, out);
    return TLEARN_OK;
}

static int ex_prototype(ex_ctx *c, const char *const *in, const char *out)
{
    /* temperature * cos(x, p_c), norms clamped at TL_PROTO_EPS as the layer does */
    const char *x = ex_flat(c, in[0], 0), *p = ex_param(c, 0);
    ex_param(c, 1); /* counts: kept so that the file holds the head's whole state */
    const char *temp = ex_param(c, 2), *eps = ex_scalar(c, "eps", TL_PROTO_EPS);
    int64_t axis1 = 1;
    const char *nx = ex_aux(c, "x_norm"), *nxc = ex_aux(c, "x_norm_c"), *xn = ex_aux(c, "x_unit"),
               *np = ex_aux(c, "p_norm"), *npc = ex_aux(c, "p_norm_c"),
               *pn = ex_aux(c, "p_unit"), *cs = ex_aux(c, "cos");
    ex_attr_ints(c, ex_op1(c, "ReduceL2", x, nx), "axes", &axis1, 1);
    ex_op2(c, "Max", nx, eps, nxc);
    ex_op2(c, "Div", x, nxc, xn);
    ex_attr_ints(c, ex_op1(c, "ReduceL2", p, np), "axes", &axis1, 1);
    ex_op2(c, "Max", np, eps, npc);
    ex_op2(c, "Div", p, npc, pn);
    const char *gin[2] = {xn, pn};
    ex_attr_int(c, ex_node(c, "Gemm", gin, 2, cs), "transB", 1);
    ex_op2(c, "Mul", cs, temp, out);
    return TLEARN_OK;
}

/* The factor e of a lora_sum layer (0 while merged or disabled). */
static float lora_factor(const tl_layer *L)
{
    int ia[TL_MAX_IARGS], ni, nf;
    float fa[TL_MAX_FARGS];
    L->ops->arguments(L, ia, &ni, fa, &nf);
    if (ia[2]) /* merged */
        return 0.0f;
    double s = ia[1] ? (double)fa[0] / sqrt((double)ia[0]) : (double)fa[0] / ia[0];
    return (float)(s * fa[1]);
}

static int ex_lora_sum(ex_ctx *c, const char *const *in, const char *out)
{
    float e = lora_factor(c->L);
    if (e == 0.0f) /* merged into the target, or disabled: the branch adds nothing */
        return ex_identity(c, in, out);
    const char *d = ex_aux(c, "delta");
    ex_op2(c, "Mul", in[1], ex_scalar(c, "scale", e), d);
    ex_op2(c, "Add", in[0], d, out);
    return TLEARN_OK;
}

/* One line per kind: its handler and what it becomes (doc/onnx.md's export table, which
 * test onnx-optable compares with these lines). */
typedef struct ex_kind {
    int kind;
    ex_fn fn;
    const char *doc;
} ex_kind;

static const ex_kind ex_kinds[] = {
    {TLEARN_LAYER_DENSE, ex_dense,
     "Gemm (transB=1), after Flatten when the input is not (N, K); over the last axis "
     "(linear): MatMul by Transpose(weight), Add bias"},
    {TLEARN_LAYER_FLATTEN, ex_flatten, "Flatten (axis 1)"},
    {TLEARN_LAYER_ACTIVATION, ex_activation,
     "Relu, Tanh, Sigmoid, LeakyRelu, HardSigmoid, Clip (ReLU6 and clip; an infinite bound "
     "is left out); HardSwish (opset 14 on, before: x * HardSigmoid(x)); SiLU: x * "
     "Sigmoid(x); GELU: Div, Erf, Add, Mul, Mul; GELU-tanh: Mul, Mul, Mul, Add, Mul, Tanh, "
     "Add, Mul, Mul (the forms PyTorch writes)"},
    {TLEARN_LAYER_CONV2D, ex_conv2d, "Conv (pads, strides, dilations, group)"},
    {TLEARN_LAYER_MAXPOOL2D, ex_maxpool,
     "MaxPool (asymmetric pads, dilations; ceil_mode only where it adds a window, so that "
     "ONNX's shape formula, which keeps a window starting in the padding, agrees)"},
    {TLEARN_LAYER_AVGPOOL2D, ex_avgpool,
     "AveragePool (asymmetric pads, count_include_pad; ceil_mode as MaxPool)"},
    {TLEARN_LAYER_GLOBAL_AVGPOOL, ex_global_avgpool, "GlobalAveragePool"},
    {TLEARN_LAYER_BATCHNORM, ex_batchnorm,
     "BatchNormalization with the running statistics (inference form)"},
    {TLEARN_LAYER_DROPOUT, ex_identity, "Identity"},
    {TLEARN_LAYER_ADD, ex_add, "Add"},
    {TLEARN_LAYER_BINARY, ex_binary,
     "Add, Sub, Mul, Div; an operand of lower rank is reshaped to (N, 1, .., dims) first"},
    {TLEARN_LAYER_SCALE, ex_scale, "Mul by weight, Add bias"},
    {TLEARN_LAYER_SOFTMAX, ex_softmax, "Softmax (axis + 1)"},
    {TLEARN_LAYER_CONCAT, ex_concat, "Concat (axis + 1)"},
    {TLEARN_LAYER_SLICE, ex_slice, "Slice (constant starts, ends, axes, steps)"},
    {TLEARN_LAYER_RESHAPE, ex_reshape_kind, "Reshape to (0, output dims)"},
    {TLEARN_LAYER_TRANSPOSE, ex_transpose, "Transpose (perm with the batch first)"},
    {TLEARN_LAYER_LAYERNORM, ex_layernorm,
     "LayerNormalization (opset 17; before: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, "
     "Div, Mul, Add); over the channels: Transpose to channels-last and back around it"},
    {TLEARN_LAYER_ADAPTIVE_AVGPOOL, ex_adaptive_avgpool,
     "GlobalAveragePool (1x1), AveragePool (bins of equal size), else Reshape, MatMul by a "
     "constant bin matrix, Reshape"},
    {TLEARN_LAYER_PAD, ex_pad, "Pad (constant, reflect, edge) on the last two axes"},
    {TLEARN_LAYER_MATMUL, ex_matmul, "MatMul (b transposed by Transpose)"},
    {TLEARN_LAYER_DROP_PATH, ex_identity, "Identity"},
    {TLEARN_LAYER_GRAD_REVERSE, ex_identity, "Identity"},
    {TLEARN_LAYER_EMBEDDING, ex_embedding, "Gather (weight, ids)"},
    {TLEARN_LAYER_POSITION_EMBEDDING, ex_position_embedding,
     "Add of the table (its first T rows by Slice)"},
    {TLEARN_LAYER_ATTENTION, ex_attention,
     "MatMul, Add (QKV), Reshape, Transpose, Gather (heads), MatMul, Mul (scores), Where "
     "(causal and padding masks: Cast, Reshape, And), Softmax, MatMul, Transpose, Reshape, "
     "MatMul, Add; with a padding mask a query that sees no key gets zeros (ReduceMax, "
     "Where), as the layer"},
    {TLEARN_LAYER_TOKEN_POOL, ex_token_pool,
     "first: Gather; mean: ReduceMean, or with a mask Where, ReduceSum, Reciprocal, Where, "
     "Mul (zeros when nothing is kept)"},
    {TLEARN_LAYER_PATCH_EMBED, ex_patch_embed,
     "Conv (kernel = stride = patch), Reshape, Transpose; the class token by Shape, Slice, "
     "Concat, Expand, Concat; Add positions"},
    {TLEARN_LAYER_PROTOTYPE, ex_prototype,
     "ReduceL2, Max (eps), Div on the input and the prototypes, Gemm, Mul by temperature"},
    {TLEARN_LAYER_LORA_SUM, ex_lora_sum,
     "Mul by the scale, Add; Identity when merged or disabled (the branch is left out)"},
};

/* Line @p i of the table for doc/onnx.md's test: kind name and what it becomes. */
int ox_export_info(size_t i, const char **kind_name, const char **ops)
{
    if (i >= sizeof ex_kinds / sizeof *ex_kinds)
        return 0;
    const tl_layer_ops *o = tl_layer_ops_by_kind(ex_kinds[i].kind);
    *kind_name = o ? o->kind_name : "?";
    *ops = ex_kinds[i].doc;
    return 1;
}

static ex_fn ex_find(int kind)
{
    for (size_t i = 0; i < sizeof ex_kinds / sizeof *ex_kinds; i++)
        if (ex_kinds[i].kind == kind)
            return ex_kinds[i].fn;
    return NULL;
}

/* ---- the graph ---- */

/* Layers the outputs depend on (a merged LoRA branch and anything after the last output
 * are left out). */
static int *ex_live(ex_ctx *c)
{
    const tlearn_model *m = c->m;
    int *live = ex_alloc(c, (size_t)(m->nlayers ? m->nlayers : 1) * sizeof *live);
    if (!live)
        return NULL;
    for (int k = 0; k < tl_model_output_count(m); k++)
        live[tl_model_output(m, k)] = 1;
    for (int i = m->nlayers - 1; i >= 0; i--) {
        if (!live[i])
            continue;
        const tl_layer *L = m->layers[i];
        int nread = L->ninputs;
        if (L->ops->kind == TLEARN_LAYER_LORA_SUM && lora_factor(L) == 0.0f)
            nread = 1;
        for (int k = 0; k < nread; k++)
            if (L->input[k] >= 0)
                live[L->input[k]] = 1;
    }
    return live;
}

static Tlonnx__ValueInfoProto *ex_value_info(ex_ctx *c, const char *name, int type, tl_shape s)
{
    Tlonnx__ValueInfoProto *v = ex_alloc(c, sizeof *v);
    Tlonnx__TypeProto *tp = ex_alloc(c, sizeof *tp);
    Tlonnx__TypeProto__Tensor *tt = ex_alloc(c, sizeof *tt);
    Tlonnx__TensorShapeProto *sh = ex_alloc(c, sizeof *sh);
    Tlonnx__TensorShapeProto__Dimension *dims = ex_alloc(c, (1 + TL_MAX_RANK) * sizeof *dims);
    Tlonnx__TensorShapeProto__Dimension **dp = ex_alloc(c, (1 + TL_MAX_RANK) * sizeof *dp);
    if (!v || !tp || !tt || !sh || !dims || !dp)
        return NULL;
    tlonnx__value_info_proto__init(v);
    tlonnx__type_proto__init(tp);
    tlonnx__type_proto__tensor__init(tt);
    tlonnx__tensor_shape_proto__init(sh);
    for (int i = 0; i <= s.rank; i++) {
        tlonnx__tensor_shape_proto__dimension__init(&dims[i]);
        if (i == 0) {
            dims[i].dim_param = (char *)"N";
        } else {
            dims[i].has_dim_value = 1;
            dims[i].dim_value = s.d[i - 1];
        }
        dp[i] = &dims[i];
    }
    sh->n_dim = (size_t)s.rank + 1;
    sh->dim = dp;
    tt->has_elem_type = 1;
    tt->elem_type = type;
    tt->shape = sh;
    tp->tensor_type = tt;
    v->name = (char *)name;
    v->type = tp;
    return v;
}

static int ex_build(ex_ctx *c, Tlonnx__ModelProto *mp, Tlonnx__GraphProto *g,
                    Tlonnx__OperatorSetIdProto *os, Tlonnx__OperatorSetIdProto **osp)
{
    const tlearn_model *m = c->m;
    int *live = ex_live(c);
    if (!live)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    /* every layer without a mapping, in one message */
    char msg[512];
    size_t used = 0;
    int missing = 0;
    for (int i = 0; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        if (!live[i] || ex_find(L->ops->kind))
            continue;
        if (missing++ < 8 && used < sizeof msg)
            used += (size_t)snprintf(msg + used, sizeof msg - used, "%s'%s' (%s)",
                                     missing > 1 ? ", " : "", L->name, L->ops->kind_name);
    }
    if (missing)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: %d layer%s of kinds with no ONNX mapping: %s%s",
                       c->fn, missing, missing > 1 ? "s" : "", msg,
                       missing > 8 ? ", ..." : "");
    for (int i = 0; i < m->nlayers; i++) {
        if (!live[i])
            continue;
        const tl_layer *L = m->layers[i];
        const char *in[TL_MAX_INPUTS];
        for (int k = 0; k < L->ninputs; k++) {
            int p = L->input[k];
            in[k] = p >= 0 ? m->layers[p]->name : m->inputs[-1 - p].name;
        }
        c->L = L;
        L->ops->arguments(L, c->ia, &c->ni, c->fa, &c->nf);
        int rc = ex_find(L->ops->kind)(c, in, L->name);
        if (c->oom)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
        if (rc)
            return tl_fail(rc, "%s: layer '%s' (%s) cannot be exported", c->fn, L->name,
                           L->ops->kind_name);
    }
    Tlonnx__ValueInfoProto **gi = ex_alloc(c, (size_t)m->ninputs * sizeof *gi);
    int nout = tl_model_output_count(m);
    Tlonnx__ValueInfoProto **go = ex_alloc(c, (size_t)nout * sizeof *go);
    if (!gi || !go)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    for (int k = 0; k < m->ninputs; k++) {
        const tl_model_input *mi = &m->inputs[k];
        gi[k] = ex_value_info(c, mi->name, mi->dtype == TLEARN_DTYPE_INT32 ? T_INT32 : T_FLOAT,
                              mi->shape);
    }
    for (int k = 0; k < nout; k++) {
        const tl_layer *L = m->layers[tl_model_output(m, k)];
        go[k] = ex_value_info(c, L->name, T_FLOAT, L->out);
    }
    if (c->oom)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    g->name = (char *)"tlearn";
    g->n_node = c->nnodes;
    g->node = (Tlonnx__NodeProto **)c->nodes;
    g->n_initializer = c->ninits;
    g->initializer = (Tlonnx__TensorProto **)c->inits;
    g->n_input = (size_t)m->ninputs;
    g->input = gi;
    g->n_output = (size_t)nout;
    g->output = go;
    os->domain = (char *)"";
    os->has_version = 1;
    os->version = c->opset;
    *osp = os;
    mp->has_ir_version = 1;
    mp->ir_version = EX_IR_VERSION;
    mp->producer_name = (char *)"libtlearn";
    mp->graph = g;
    mp->n_opset_import = 1;
    mp->opset_import = osp;
    return TLEARN_OK;
}

static void ex_free(ex_ctx *c)
{
    for (size_t i = 0; i < c->narena; i++)
        tl_free(c->arena[i]);
    tl_free(c->arena);
}

/* The packed model in a tl_alloc'ed buffer. */
static int ex_export(const char *fn, const tlearn_model *m, int opset, unsigned char **data,
                     size_t *size)
{
    TL_CHECK_MODEL(fn, m);
    if (opset == 0)
        opset = OX_EXPORT_DEFAULT;
    if (opset < OX_EXPORT_MIN || opset > OX_OPSET_MAX)
        return tl_fail(TLEARN_EINVAL, "%s: opset is %d; export writes opsets %d to %d (0: %d)",
                       fn, opset, OX_EXPORT_MIN, OX_OPSET_MAX, OX_EXPORT_DEFAULT);
    if (m->nlayers == 0)
        return tl_fail(TLEARN_ESTATE, "%s: the model has no layers", fn);
    int rc = tl_io_check_model_values(fn, m);
    if (rc)
        return rc;
    ex_ctx c = {.fn = fn, .m = m, .opset = opset};
    Tlonnx__ModelProto mp;
    Tlonnx__GraphProto g;
    Tlonnx__OperatorSetIdProto os, *osp;
    tlonnx__model_proto__init(&mp);
    tlonnx__graph_proto__init(&g);
    tlonnx__operator_set_id_proto__init(&os);
    rc = ex_build(&c, &mp, &g, &os, &osp);
    if (!rc) {
        size_t n = tlonnx__model_proto__get_packed_size(&mp);
        if (n > (size_t)INT32_MAX) {
            rc = tl_fail(TLEARN_EUNSUPPORTED, "%s: the model needs %zu bytes, over protobuf's "
                         "2 GiB limit", fn, n);
        } else if (!(*data = tl_alloc(n ? n : 1))) {
            rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory for %zu bytes", fn, n);
        } else {
            *size = tlonnx__model_proto__pack(&mp, *data);
        }
    }
    ex_free(&c);
    return rc;
}

int tlearn_model_export_onnx(const tlearn_model *m, const char *path, int opset)
{
    static const char fn[] = "tlearn_model_export_onnx";
    if (!path || !*path)
        return tl_fail(TLEARN_EINVAL, "%s: path is %s", fn, !path ? "NULL" : "empty");
    unsigned char *data = NULL;
    size_t size = 0;
    int rc = ex_export(fn, m, opset, &data, &size);
    if (!rc)
        rc = tl_file_write_atomic(fn, path, data, size);
    tl_free(data);
    return rc;
}

int tlearn_model_export_onnx_buffer(const tlearn_model *m, int opset, void **data, size_t *size)
{
    static const char fn[] = "tlearn_model_export_onnx_buffer";
    if (!data || !size)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !data ? "data" : "size");
    *data = NULL;
    *size = 0;
    unsigned char *d = NULL;
    size_t n = 0;
    int rc = ex_export(fn, m, opset, &d, &n);
    if (!rc) {
        *data = d;
        *size = n;
    }
    return rc;
}
