/* ONNX import: decomposed forms the exporters emit, recognised as one layer so that they
 * run at full speed and train as the module they came from.
 *
 * - SiLU: Sigmoid(x) -> Mul(x, .)                                     -> activation SiLU
 * - HardSwish (before opset 14): HardSigmoid(x; 1/6, 1/2) -> Mul(x, .) -> hard-swish
 * - erf-GELU: Div(x, sqrt 2) (or Mul by 1/sqrt 2) -> Erf -> Add 1 -> Mul(x, .) -> Mul 0.5
 *                                                                      -> activation GELU
 * - tanh-GELU: Mul(x, x) -> Mul(x, .) -> Mul 0.044715 -> Add(x, .) -> Mul sqrt(2/pi) -> Tanh
 *   -> Add 1 -> Mul(x, .) -> Mul 0.5                                   -> GELU (tanh)
 * - LayerNorm before opset 17: ReduceMean(x) -> Sub(x, .) -> Pow 2 -> ReduceMean -> Add eps
 *   -> Sqrt -> Div(sub, .) [-> Mul weight [-> Add bias]]              -> layernorm (trailing)
 * - LayerNorm2d (torchvision's ConvNeXt): Transpose (0, 2, 3, 1) -> a LayerNorm over the
 *   last axis (either form) -> Transpose (0, 3, 1, 2)                 -> layernorm (channels)
 * - nn.MultiheadAttention(batch_first) as torch 1.13 exports it (match_mha), BERT-style
 *   separate q/k/v projections with the output Linear (match_qkv)      -> attention
 * - torchvision ViT's patch convolution, class token and positions     -> patch_embed
 * - Gather(table, 0..T-1) -> Add (learned positions)                   -> position_embedding
 * Transformer blocks also take in the helper nodes only they read (close_match), and nodes
 * that only fused patterns read are dropped (drop_unread).
 *
 * A pattern is matched by one function looking ahead from its first node over the node
 * list: each next node is the first later one (within FUSE_WINDOW nodes) of the expected
 * type reading the value before, and every intermediate value must be read by the pattern
 * alone (its use count), so that nothing else needs it. Constants are read where they are
 * defined (initializers, Constant nodes, through Identity). Matching happens before the
 * pre-pass, on the graph's structure and constants alone; the nodes of a match are not
 * checked against the operator table, and the match is imported at its last node, when
 * every value it reads is defined. A pattern that does not match leaves its nodes to their
 * own handlers (Erf, Pow, Sqrt have none: the pre-pass then names them). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "onnx_internal.h"

#define FUSE_MAX_NODES 128 /* an attention block with its shape arithmetic */
#define FUSE_WINDOW 64
#define BLOCK_WINDOW 160 /* an attention block's nodes, from its first */

enum { FP_SILU = 1, FP_HARDSWISH, FP_GELU, FP_GELU_TANH, FP_LAYERNORM, FP_LAYERNORM2D, FP_MHA,
       FP_PATCH, FP_POSITIONS };

typedef struct ox_match {
    int pattern;
    size_t node[FUSE_MAX_NODES]; /* in node order; the last one imports the match */
    int n;
    const char *x;               /* the input */
    /* layer norms: the axes as the graph gives them, epsilon, weight and bias values */
    int64_t axes[OX_MAX_RANK];
    int naxes;
    float eps;
    const char *w, *b;
    /* attention: the packed input projection as MatMul's (D, 3D) constant and its bias, the
     * output projection as Gemm's B (transposed when tb) and C, the head size, the
     * key-padding mask (a graph input, true where padded) or NULL. patch embedding: w, b
     * the convolution, wo the class token, bo the positions, hd the patch size. */
    const char *wo, *bo, *mask;
    int tb, hd;
    int mask_keep;            /* the mask is 1 where kept (BERT's attention_mask) */
    const char *sw[3], *sb[3]; /* separate q, k, v projections (D, D) and biases, or NULL */
} ox_match;

/* ---- the graph as the matchers see it ---- */

static const Tlonnx__NodeProto *node_at(ox_ctx *c, size_t i)
{
    return c->g->node[i];
}

static int is_op(const Tlonnx__NodeProto *nd, const char *op)
{
    return nd->op_type && strcmp(nd->op_type, op) == 0 &&
           (!nd->domain || !*nd->domain || strcmp(nd->domain, "ai.onnx") == 0);
}

static const char *in_at(const Tlonnx__NodeProto *nd, size_t k)
{
    return k < nd->n_input && nd->input[k] && *nd->input[k] ? nd->input[k] : NULL;
}

static const char *out0(const Tlonnx__NodeProto *nd)
{
    return nd->n_output >= 1 && nd->output[0] && *nd->output[0] ? nd->output[0] : NULL;
}

static int same(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

static const Tlonnx__AttributeProto *attr_of(const Tlonnx__NodeProto *nd, const char *name)
{
    for (size_t i = 0; i < nd->n_attribute; i++)
        if (same(nd->attribute[i]->name, name))
            return nd->attribute[i];
    return NULL;
}

static float attr_float(const Tlonnx__NodeProto *nd, const char *name, float def)
{
    const Tlonnx__AttributeProto *a = attr_of(nd, name);
    return a && a->has_f ? a->f : def;
}

static int64_t attr_int(const Tlonnx__NodeProto *nd, const char *name, int64_t def)
{
    const Tlonnx__AttributeProto *a = attr_of(nd, name);
    return a && a->has_i ? a->i : def;
}

/* The value called @p name; NULL for none or an absent input. */
static ox_value *find(ox_ctx *c, const char *name)
{
    return name ? ox_find(c, name) : NULL;
}

/* Readers of a value: nodes plus the graph output. */
static int uses(ox_ctx *c, const char *name)
{
    ox_value *v = name ? ox_find(c, name) : NULL;
    return v ? v->uses : 0;
}

/* Only read by the pattern: @p k readers, and a node that produces nothing else read. */
static int private(ox_ctx *c, const char *name, int k)
{
    return name && uses(c, name) == k;
}

/* The first node after @p from (within FUSE_WINDOW) of type @p op that reads @p name and
 * is not in a match yet; -1 when none. */
static long reader_in(ox_ctx *c, size_t from, const char *name, const char *op, size_t window)
{
    size_t end = c->g->n_node - from > window ? from + window : c->g->n_node;
    for (size_t j = from + 1; name && j < end; j++) {
        const Tlonnx__NodeProto *nd = node_at(c, j);
        if (!is_op(nd, op) || c->fuse_of[j])
            continue;
        for (size_t k = 0; k < nd->n_input; k++)
            if (same(in_at(nd, k), name))
                return (long)j;
    }
    return -1;
}

static long reader(ox_ctx *c, size_t from, const char *name, const char *op)
{
    return reader_in(c, from, name, op, FUSE_WINDOW);
}

/* The other input of a two-input node that reads @p a; NULL when it does not. */
static const char *other(const Tlonnx__NodeProto *nd, const char *a)
{
    if (nd->n_input != 2)
        return NULL;
    if (same(in_at(nd, 0), a))
        return in_at(nd, 1);
    if (same(in_at(nd, 1), a))
        return in_at(nd, 0);
    return NULL;
}

/* The tensor behind a constant value: an initializer or a Constant node's value, through
 * Identity nodes. NULL when the value is not a constant. */
static const Tlonnx__TensorProto *const_tensor(ox_ctx *c, const char *name)
{
    for (int hops = 0; name && hops < 8; hops++) {
        ox_value *v = ox_find(c, name);
        if (!v)
            return NULL;
        if (v->kind == OX_CONST)
            return v->tp;
        if (!v->def_node)
            return NULL;
        const Tlonnx__NodeProto *nd = node_at(c, v->def_node - 1);
        if (is_op(nd, "Identity")) {
            name = in_at(nd, 0);
        } else if (is_op(nd, "Constant")) {
            const Tlonnx__AttributeProto *a = attr_of(nd, "value");
            return a ? a->t : NULL;
        } else {
            return NULL;
        }
    }
    return NULL;
}

/* A constant holding a single number, in *out; 0 when @p name is not one. */
static int scalar(ox_ctx *c, const char *name, float *out)
{
    const Tlonnx__TensorProto *t = const_tensor(c, name);
    int is_int, ndim;
    int64_t dims[OX_MAX_RANK];
    size_t numel;
    ox_const *k;
    if (!t || ox_tensor_header(c, t, &is_int, &ndim, dims, &numel) || numel != 1 ||
        ox_tensor_convert(c, t, &k))
        return 0;
    *out = k->is_int ? (float)k->i[0] : k->f[0];
    ox_const_release(c, k);
    return 1;
}

static int is_scalar(ox_ctx *c, const char *name, float want, float tol)
{
    float v;
    return scalar(c, name, &v) && fabsf(v - want) <= tol;
}

static void add_node(ox_match *m, size_t j)
{
    if (m->n < FUSE_MAX_NODES)
        m->node[m->n++] = j;
}

/* The next node of a chain: the first later node of type @p op (after the match's last
 * node) reading @p v joins the match, *nd. Its output, or NULL when there is no such node
 * or the output has other readers than the pattern's @p k (0: not checked, the last node
 * of a pattern). */
static const char *step(ox_ctx *c, ox_match *m, const char *v, const char *op, int k,
                        const Tlonnx__NodeProto **nd)
{
    long j = m->n && m->n < FUSE_MAX_NODES ? reader(c, m->node[m->n - 1], v, op) : -1;
    if (j < 0)
        return NULL;
    add_node(m, (size_t)j);
    *nd = node_at(c, (size_t)j);
    const char *o = out0(*nd);
    return o && (!k || private(c, o, k)) ? o : NULL;
}

/* ---- the patterns: one function each, from the first node ---- */

/* SiLU x * Sigmoid(x), HardSwish x * HardSigmoid(x) with torch's 1/6 and 1/2. */
static int match_gated(ox_ctx *c, size_t i, ox_match *m)
{
    const Tlonnx__NodeProto *nd = node_at(c, i), *mul;
    const char *x = in_at(nd, 0), *s = out0(nd);
    int hard = is_op(nd, "HardSigmoid");
    if (!x || nd->n_input != 1 || !private(c, s, 1))
        return 0;
    if (hard && (fabsf(attr_float(nd, "alpha", 0.2f) - 1.0f / 6.0f) > 1e-6f ||
                 attr_float(nd, "beta", 0.5f) != 0.5f))
        return 0;
    add_node(m, i);
    if (!step(c, m, s, "Mul", 0, &mul) || !same(other(mul, s), x))
        return 0;
    m->pattern = hard ? FP_HARDSWISH : FP_SILU;
    m->x = x;
    return 1;
}

/* The end of both GELU forms, after the Add 1 (output @p ao): Mul(x, .), Mul 0.5. */
static int gelu_tail(ox_ctx *c, const char *ao, const char *x, ox_match *m)
{
    const Tlonnx__NodeProto *p, *h;
    const char *po = step(c, m, ao, "Mul", 1, &p);
    if (!po || !same(other(p, ao), x) || !step(c, m, po, "Mul", 0, &h) ||
        !is_scalar(c, other(h, po), 0.5f, 0.0f))
        return 0;
    m->x = x;
    return 1;
}

/* erf-GELU: 0.5 x (1 + erf(x / sqrt 2)), as torch exports nn.GELU(). */
static int match_gelu(ox_ctx *c, size_t i, ox_match *m)
{
    const Tlonnx__NodeProto *nd = node_at(c, i), *e, *a;
    const char *x = in_at(nd, 0), *k = in_at(nd, 1), *d = out0(nd);
    if (nd->n_input != 2 || !x || !k)
        return 0;
    if (is_op(nd, "Mul") && const_tensor(c, x)) { /* Mul(1/sqrt 2, x) */
        const char *t = x;
        x = k;
        k = t;
    }
    if (is_op(nd, "Div") ? !is_scalar(c, k, 1.41421356f, 1e-5f)
                         : !is_scalar(c, k, 0.70710678f, 1e-6f))
        return 0;
    if (const_tensor(c, x) || !private(c, d, 1))
        return 0;
    add_node(m, i);
    const char *eo = step(c, m, d, "Erf", 1, &e), *ao = eo ? step(c, m, eo, "Add", 1, &a) : NULL;
    if (!ao || !is_scalar(c, other(a, eo), 1.0f, 0.0f))
        return 0;
    m->pattern = FP_GELU;
    return gelu_tail(c, ao, x, m);
}

/* tanh-GELU: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), as torch exports
 * nn.GELU(approximate='tanh'): Mul(x, x), Mul(x, .), Mul 0.044715, Add(x, .),
 * Mul sqrt(2 / pi), Tanh, Add 1, then the tail of the erf form. */
static int match_gelu_tanh(ox_ctx *c, size_t i, ox_match *m)
{
    const Tlonnx__NodeProto *nd = node_at(c, i), *n1, *n2, *n3, *n4, *n5, *n6;
    const char *x = in_at(nd, 0), *sq = out0(nd);
    if (nd->n_input != 2 || !x || !same(in_at(nd, 1), x) || !private(c, sq, 1))
        return 0;
    add_node(m, i);
    const char *cu = step(c, m, sq, "Mul", 1, &n1);
    if (!cu || !same(other(n1, sq), x))
        return 0;
    const char *k = step(c, m, cu, "Mul", 1, &n2);
    if (!k || !is_scalar(c, other(n2, cu), 0.044715f, 1e-7f))
        return 0;
    const char *s = step(c, m, k, "Add", 1, &n3);
    if (!s || !same(other(n3, k), x))
        return 0;
    const char *r = step(c, m, s, "Mul", 1, &n4);
    if (!r || !is_scalar(c, other(n4, s), 0.79788456f, 1e-6f))
        return 0;
    const char *t = step(c, m, r, "Tanh", 1, &n5), *a = t ? step(c, m, t, "Add", 1, &n6) : NULL;
    if (!a || !is_scalar(c, other(n6, t), 1.0f, 0.0f))
        return 0;
    m->pattern = FP_GELU_TANH;
    return gelu_tail(c, a, x, m);
}

/* ReduceMean with keepdims over explicit axes (opsets <= 17): 1 and the axes in m. */
static int mean_axes(const Tlonnx__NodeProto *nd, int64_t *axes, int *n)
{
    const Tlonnx__AttributeProto *a = attr_of(nd, "axes");
    if (!is_op(nd, "ReduceMean") || nd->n_input != 1 || attr_int(nd, "keepdims", 1) != 1 ||
        !a || !a->n_ints || a->n_ints > OX_MAX_RANK)
        return 0;
    for (size_t k = 0; k < a->n_ints; k++)
        axes[k] = a->ints[k];
    *n = (int)a->n_ints;
    return 1;
}

/* A LayerNorm of @p x starting at node @p i: a LayerNormalization node, or the decomposed
 * form (x - mean) / sqrt(var + eps) [* w [+ b]]. */
static int match_ln(ox_ctx *c, size_t i, const char *x, ox_match *m)
{
    const Tlonnx__NodeProto *nd = node_at(c, i), *sub, *pw, *rm, *ad, *sq, *dv, *mw, *ab;
    add_node(m, i);
    if (is_op(nd, "LayerNormalization")) {
        if (c->opset < 17)
            return 0;
        const char *w = in_at(nd, 1), *b = in_at(nd, 2);
        if (!same(in_at(nd, 0), x) || !w || !const_tensor(c, w) || (b && !const_tensor(c, b)))
            return 0;
        for (size_t k = 1; k < nd->n_output; k++)
            if (nd->output[k] && *nd->output[k] && uses(c, nd->output[k]))
                return 0;
        m->axes[0] = attr_int(nd, "axis", -1);
        m->naxes = 1; /* from axis to the last */
        m->eps = attr_float(nd, "epsilon", 1e-5f);
        m->w = w;
        m->b = b;
        return 1;
    }
    int64_t axes2[OX_MAX_RANK];
    int n2;
    const char *mo = out0(nd);
    if (!same(in_at(nd, 0), x) || !mean_axes(nd, m->axes, &m->naxes) || !private(c, mo, 1))
        return 0;
    const char *d = step(c, m, mo, "Sub", 2, &sub);
    if (!d || !same(in_at(sub, 0), x) || !same(in_at(sub, 1), mo))
        return 0;
    const char *po = step(c, m, d, "Pow", 1, &pw);
    if (!po || !same(in_at(pw, 0), d) || !is_scalar(c, in_at(pw, 1), 2.0f, 0.0f))
        return 0;
    const char *ro = step(c, m, po, "ReduceMean", 1, &rm);
    if (!ro || !mean_axes(rm, axes2, &n2) || n2 != m->naxes ||
        memcmp(axes2, m->axes, sizeof *axes2 * (size_t)n2) != 0)
        return 0;
    const char *ao = step(c, m, ro, "Add", 1, &ad);
    if (!ao || !scalar(c, other(ad, ro), &m->eps))
        return 0;
    const char *qo = step(c, m, ao, "Sqrt", 1, &sq);
    const char *y = qo ? step(c, m, qo, "Div", 0, &dv) : NULL;
    if (!y || !same(in_at(dv, 0), d) || !same(in_at(dv, 1), qo))
        return 0;
    /* the affine part, when the normalised value has no other reader */
    ox_match more = *m;
    const char *yw = private(c, y, 1) ? step(c, &more, y, "Mul", 0, &mw) : NULL;
    const char *w = yw ? other(mw, y) : NULL;
    if (!w || !const_tensor(c, w))
        return 1;
    more.w = w;
    *m = more;
    const char *yb = private(c, yw, 1) ? step(c, &more, yw, "Add", 0, &ab) : NULL;
    const char *b = yb ? other(ab, yw) : NULL;
    if (b && const_tensor(c, b)) {
        more.b = b;
        *m = more;
    }
    return 1;
}

static int perm_is(const Tlonnx__NodeProto *nd, const int64_t *p)
{
    const Tlonnx__AttributeProto *a = attr_of(nd, "perm");
    if (!a || a->n_ints != 4)
        return 0;
    for (int k = 0; k < 4; k++)
        if (a->ints[k] != p[k])
            return 0;
    return 1;
}

/* A LayerNorm over the last axis (-1 or 3 of a 4-D value). */
static int over_last_of_4d(const ox_match *m)
{
    return m->naxes == 1 && (m->axes[0] == -1 || m->axes[0] == 3);
}

/* torchvision's LayerNorm2d: permute to channels-last, normalise the last axis, permute
 * back: a layernorm over the channel axis of (C, H, W), without the copies. */
static int match_ln2d(ox_ctx *c, size_t i, ox_match *m)
{
    static const int64_t to_last[4] = {0, 2, 3, 1}, to_first[4] = {0, 3, 1, 2};
    const Tlonnx__NodeProto *nd = node_at(c, i), *back;
    const char *t = out0(nd);
    if (!perm_is(nd, to_last) || !in_at(nd, 0))
        return 0;
    long j = reader(c, i, t, "LayerNormalization");
    if (j < 0 || !private(c, t, 1))
        j = private(c, t, 2) ? reader(c, i, t, "ReduceMean") : -1;
    add_node(m, i);
    if (j < 0 || !match_ln(c, (size_t)j, t, m) || !over_last_of_4d(m))
        return 0;
    const char *y = out0(node_at(c, m->node[m->n - 1]));
    if (!private(c, y, 1) || !step(c, m, y, "Transpose", 0, &back) || !perm_is(back, to_first))
        return 0;
    m->pattern = FP_LAYERNORM2D;
    m->x = in_at(nd, 0);
    return 1;
}

static int match_layernorm(ox_ctx *c, size_t i, ox_match *m)
{
    if (!match_ln(c, i, in_at(node_at(c, i), 0), m))
        return 0;
    m->pattern = FP_LAYERNORM;
    m->x = in_at(node_at(c, i), 0);
    return 1;
}

/* ---- transformers: torch's nn.MultiheadAttention and torchvision's patch embedding ---- */

/* A Transpose whose perm is @p p (@p n values). */
static int perm_n(const Tlonnx__NodeProto *nd, const int64_t *p, size_t n)
{
    const Tlonnx__AttributeProto *a = attr_of(nd, "perm");
    if (!is_op(nd, "Transpose") || !a || a->n_ints != n)
        return 0;
    for (size_t k = 0; k < n; k++)
        if (a->ints[k] != p[k])
            return 0;
    return 1;
}

/* The values of an integer constant (at most @p max), their count in *n; 0 when not one. */
static int int_values(ox_ctx *c, const char *name, int64_t *out, int max, int *n)
{
    const Tlonnx__TensorProto *t = const_tensor(c, name);
    int is_int, ndim;
    int64_t dims[OX_MAX_RANK];
    size_t numel;
    ox_const *k;
    if (!t || ox_tensor_header(c, t, &is_int, &ndim, dims, &numel) || !is_int ||
        numel > (size_t)max || ox_tensor_convert(c, t, &k))
        return 0;
    memcpy(out, k->i, numel * sizeof *out);
    *n = (int)numel;
    ox_const_release(c, k);
    return 1;
}

/* The dims of a float constant; 0 when @p name is not one. */
static int float_dims(ox_ctx *c, const char *name, int64_t *dims, int *ndim)
{
    const Tlonnx__TensorProto *t = const_tensor(c, name);
    int is_int;
    size_t numel;
    return t && !ox_tensor_header(c, t, &is_int, ndim, dims, &numel) && !is_int;
}

/* The node after the match's last that reads @p v as type @p op, joined to the match; its
 * output, or NULL. Unlike step() the node may come from anywhere after the match's first
 * node, since the branches of a block interleave. */
static const char *branch(ox_ctx *c, ox_match *m, const char *v, const char *op,
                          const Tlonnx__NodeProto **nd)
{
    long j = m->n && m->n < FUSE_MAX_NODES ? reader_in(c, m->node[0], v, op, BLOCK_WINDOW) : -1;
    for (int k = 0; j >= 0 && k < m->n; k++)
        if (m->node[k] == (size_t)j)
            return NULL;
    if (j < 0)
        return NULL;
    add_node(m, (size_t)j);
    *nd = node_at(c, (size_t)j);
    return out0(*nd);
}

static int in_match(const ox_match *m, size_t j)
{
    for (int k = 0; k < m->n; k++)
        if (m->node[k] == j)
            return 1;
    return 0;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* How many inputs of the match's nodes read @p v. */
static int match_readers(ox_ctx *c, const ox_match *m, const char *v)
{
    int readers = 0;
    for (int k = 0; k < m->n; k++) {
        const Tlonnx__NodeProto *r = node_at(c, m->node[k]);
        for (size_t q = 0; q < r->n_input; q++)
            readers += same(in_at(r, q), v);
    }
    return readers;
}

/* Close a match over its helpers: the nodes between its first and last whose every output
 * is read by the match alone (the shape arithmetic feeding Slice and Reshape, Constants,
 * the Expand shape of a class token) join it; then every value a node of the match
 * produces must be read by the match alone, except the last node's. Sorts the nodes. */
static int close_match(ox_ctx *c, ox_match *m)
{
    qsort(m->node, (size_t)m->n, sizeof *m->node, cmp_size);
    size_t first = m->node[0], last = m->node[m->n - 1];
    for (size_t j = last; j-- > first + 1;) {
        if (c->fuse_of[j] || in_match(m, j))
            continue;
        const Tlonnx__NodeProto *nd = node_at(c, j);
        int all = nd->n_output > 0;
        for (size_t o = 0; all && o < nd->n_output; o++) {
            const char *v = nd->output[o] && *nd->output[o] ? nd->output[o] : NULL;
            all = v && uses(c, v) > 0 && match_readers(c, m, v) == uses(c, v);
        }
        if (all) {
            if (m->n == FUSE_MAX_NODES)
                return 0;
            add_node(m, j);
        }
    }
    qsort(m->node, (size_t)m->n, sizeof *m->node, cmp_size);
    for (int k = 0; k + 1 < m->n; k++) {
        const Tlonnx__NodeProto *nd = node_at(c, m->node[k]);
        for (size_t o = 0; o < nd->n_output; o++) {
            const char *v = nd->output[o] && *nd->output[o] ? nd->output[o] : NULL;
            if (v && match_readers(c, m, v) != uses(c, v))
                return 0;
        }
    }
    return 1;
}

/* A float constant of zeros only. */
static int all_zero(ox_ctx *c, const char *name)
{
    const Tlonnx__TensorProto *t = const_tensor(c, name);
    ox_const *k;
    if (!t || ox_tensor_convert(c, t, &k))
        return 0;
    int zero = !k->is_int;
    for (size_t i = 0; zero && i < k->numel; i++)
        zero = k->f[i] == 0.0f;
    ox_const_release(c, k);
    return zero;
}

/* The key-padding mask term of torch's export, from the Add that adds it to the scores:
 * [Mul(., 1)] <- Where(Cast(Reshape(Expand(Reshape(mask, .), .), .)), -inf, 0). The mask
 * must be a graph input (bool, true where padded). */
static int mask_term(ox_ctx *c, ox_match *m, const char *t)
{
    for (int hop = 0; hop < 8 && t; hop++) {
        ox_value *v = ox_find(c, t);
        if (!v || !v->def_node)
            return 0;
        size_t j = v->def_node - 1;
        const Tlonnx__NodeProto *nd = node_at(c, j);
        if (j <= m->node[0] || c->fuse_of[j] || in_match(m, j))
            return 0;
        float f;
        if (is_op(nd, "Mul") && scalar(c, in_at(nd, 1), &f) && f == 1.0f) {
            t = in_at(nd, 0);
        } else if (is_op(nd, "Where") && nd->n_input == 3 && scalar(c, in_at(nd, 1), &f) &&
                   f == -INFINITY && all_zero(c, in_at(nd, 2))) {
            t = in_at(nd, 0);
        } else if (is_op(nd, "Cast") || is_op(nd, "Reshape") || is_op(nd, "Expand")) {
            t = in_at(nd, 0);
        } else {
            return 0;
        }
        add_node(m, j);
        ox_value *src = t ? ox_find(c, t) : NULL;
        if (src && src->kind == OX_ACT && !src->def_node) { /* a graph input */
            m->mask = t;
            return 1;
        }
    }
    return 0;
}

/* torch 1.13's export of nn.MultiheadAttention(D, H, batch_first=True)(x, x, x) (as in
 * nn.TransformerEncoderLayer and torchvision's EncoderBlock): the batch moved second,
 * one packed projection sliced in three, heads folded into the batch:
 *   Transpose(1,0,2) -> MatMul W (D, 3D) -> Add b -> Slice x3 (q, k, v) -> Reshape
 *   (T, N*H, hd) each -> q: Transpose(1,0,2), Div sqrt(hd); k: Transpose(1,2,0); v:
 *   Transpose(1,0,2) -> MatMul(q, k) [-> Mul 1 -> Add mask term] -> Softmax(-1) ->
 *   MatMul(., v) -> Transpose(1,0,2) -> Reshape (T*N, D) -> Gemm out_proj -> Reshape
 *   (T, N, D) -> Transpose(1,0,2)
 * The exporter bakes the batch size into the Reshapes; the fused layer runs any batch. */
static int match_mha(ox_ctx *c, size_t i, ox_match *m)
{
    static const int64_t swap[3] = {1, 0, 2}, kt_perm[3] = {1, 2, 0};
    const Tlonnx__NodeProto *nd = node_at(c, i), *mm, *ad, *sl[3], *rs[3], *tq, *tk, *tv, *dv,
                            *s1, *sm, *s2, *t4, *r3, *gm, *r4, *t5, *mu = NULL, *am;
    const char *x = in_at(nd, 0), *xt = out0(nd);
    if (!x || !perm_n(nd, swap, 3) || !private(c, xt, 1))
        return 0;
    add_node(m, i);
    const char *mo = step(c, m, xt, "MatMul", 1, &mm);
    if (!mo || !same(in_at(mm, 0), xt))
        return 0;
    int64_t wd[OX_MAX_RANK], bd[OX_MAX_RANK];
    int wn, bn;
    m->w = in_at(mm, 1);
    if (!float_dims(c, m->w, wd, &wn) || wn != 2 || wd[1] != 3 * wd[0])
        return 0;
    const char *qkv = step(c, m, mo, "Add", 0, &ad);
    m->b = qkv ? other(ad, mo) : NULL;
    if (!m->b || !float_dims(c, m->b, bd, &bn) || bn != 1 || bd[0] != wd[1])
        return 0;
    const char *r[3];
    for (int k = 0; k < 3; k++) {
        long j = reader(c, m->node[m->n - 1], qkv, "Slice");
        if (j < 0)
            return 0;
        add_node(m, (size_t)j);
        sl[k] = node_at(c, (size_t)j);
        int64_t ax[1];
        int na;
        if (!same(in_at(sl[k], 0), qkv) || !int_values(c, in_at(sl[k], 3), ax, 1, &na) ||
            (ax[0] != -1 && ax[0] != 2) || !private(c, out0(sl[k]), 1))
            return 0;
    }
    /* the Slices' bounds come from Shape arithmetic, unknown before the import: torch's
     * exporter cuts thirds of the last axis in q, k, v order; the first must start at 0 */
    int64_t st[1], rd[OX_MAX_RANK], hd = 0;
    int ns;
    if (!int_values(c, in_at(sl[0], 1), st, 1, &ns) || st[0] != 0)
        return 0;
    for (int k = 0; k < 3; k++) {
        int nr;
        r[k] = branch(c, m, out0(sl[k]), "Reshape", &rs[k]);
        if (!r[k] || !private(c, r[k], 1) || !int_values(c, in_at(rs[k], 1), rd, 3, &nr) ||
            nr != 3 || rd[2] < 1 || (hd && rd[2] != hd))
            return 0;
        hd = rd[2];
    }
    if (wd[0] % hd)
        return 0;
    const char *q = branch(c, m, r[0], "Transpose", &tq);
    const char *kt = branch(c, m, r[1], "Transpose", &tk);
    const char *v = branch(c, m, r[2], "Transpose", &tv);
    if (!q || !kt || !v || !perm_n(tq, swap, 3) || !perm_n(tk, kt_perm, 3) ||
        !perm_n(tv, swap, 3) || !private(c, q, 1) || !private(c, kt, 1) || !private(c, v, 1))
        return 0;
    int is_div = reader_in(c, m->node[0], q, "Div", BLOCK_WINDOW) >= 0;
    const char *qs = branch(c, m, q, is_div ? "Div" : "Mul", &dv);
    float f, want = is_div ? sqrtf((float)hd) : 1.0f / sqrtf((float)hd);
    if (!qs || !same(in_at(dv, 0), q) || !scalar(c, in_at(dv, 1), &f) ||
        fabsf(f - want) > 1e-5f * want || !private(c, qs, 1))
        return 0;
    const char *sc = branch(c, m, qs, "MatMul", &s1);
    if (!sc || !same(in_at(s1, 0), qs) || !same(in_at(s1, 1), kt) || !private(c, sc, 1))
        return 0;
    if (reader_in(c, m->node[0], sc, "Softmax", BLOCK_WINDOW) < 0) { /* the mask's additive term */
        const char *one = branch(c, m, sc, "Mul", &mu);
        const char *sum = one && private(c, one, 1) && scalar(c, in_at(mu, 1), &f) && f == 1.0f
                              ? branch(c, m, one, "Add", &am) : NULL;
        if (!sum || !private(c, sum, 1) || !mask_term(c, m, other(am, one)))
            return 0;
        sc = sum;
    }
    const char *p = branch(c, m, sc, "Softmax", &sm);
    if (!p || (attr_int(sm, "axis", -1) != -1 && attr_int(sm, "axis", -1) != 2))
        return 0;
    const char *ctx = private(c, p, 1) ? branch(c, m, p, "MatMul", &s2) : NULL;
    if (!ctx || !same(in_at(s2, 0), p) || !same(in_at(s2, 1), v) || !private(c, ctx, 1))
        return 0;
    const char *ct = branch(c, m, ctx, "Transpose", &t4);
    const char *flat = ct && perm_n(t4, swap, 3) && private(c, ct, 1)
                           ? branch(c, m, ct, "Reshape", &r3) : NULL;
    int nr;
    if (!flat || !private(c, flat, 1) || !int_values(c, in_at(r3, 1), rd, 2, &nr) || nr != 2 ||
        rd[1] != wd[0])
        return 0;
    const char *g = branch(c, m, flat, "Gemm", &gm);
    int64_t od[OX_MAX_RANK];
    int on;
    m->wo = g ? in_at(gm, 1) : NULL;
    m->bo = g ? in_at(gm, 2) : NULL;
    m->tb = g ? (int)attr_int(gm, "transB", 0) : 0;
    if (!g || !private(c, g, 1) || !same(in_at(gm, 0), flat) || attr_int(gm, "transA", 0) ||
        attr_float(gm, "alpha", 1.0f) != 1.0f || attr_float(gm, "beta", 1.0f) != 1.0f ||
        !float_dims(c, m->wo, od, &on) || on != 2 || od[0] != wd[0] || od[1] != wd[0] ||
        !m->bo || !float_dims(c, m->bo, od, &on) || on != 1 || od[0] != wd[0])
        return 0;
    const char *un = branch(c, m, g, "Reshape", &r4);
    if (!un || !private(c, un, 1) || !int_values(c, in_at(r4, 1), rd, 3, &nr) || nr != 3 ||
        rd[2] != wd[0] || !branch(c, m, un, "Transpose", &t5) || !perm_n(t5, swap, 3))
        return 0;
    m->hd = (int)hd;
    m->x = x;
    m->pattern = FP_MHA;
    return close_match(c, m);
}

/* torchvision's VisionTransformer._process_input and the class token: Conv (kernel =
 * stride = P, no padding) -> Reshape (N, D, T') -> Transpose(0,2,1) -> Concat(class token
 * [through Expand], ., axis 1) -> Add pos_embedding (1, T, D): one patch_embed layer. */
static int match_patch(ox_ctx *c, size_t i, ox_match *m)
{
    static const int64_t tr[3] = {0, 2, 1};
    const Tlonnx__NodeProto *nd = node_at(c, i), *rs, *t, *cat, *ad;
    const char *co = out0(nd);
    int64_t wd[OX_MAX_RANK], k[OX_MAX_RANK], d[OX_MAX_RANK];
    int wn, n;
    m->w = in_at(nd, 1);
    m->b = in_at(nd, 2);
    if (nd->n_input != 3 || !private(c, co, 1) || !float_dims(c, m->w, wd, &wn) || wn != 4 ||
        wd[2] != wd[3] || !float_dims(c, m->b, d, &n) || n != 1 || d[0] != wd[0] ||
        attr_int(nd, "group", 1) != 1)
        return 0;
    const Tlonnx__AttributeProto *a;
    if ((a = attr_of(nd, "auto_pad")) && a->s.len && !(a->s.len == 6 &&
                                                      !memcmp(a->s.data, "NOTSET", 6)))
        return 0;
    static const char *const want[] = {"kernel_shape", "strides", "pads", "dilations"};
    for (int w = 0; w < 4; w++) {
        a = attr_of(nd, want[w]);
        for (size_t j = 0; a && j < a->n_ints; j++)
            if (a->ints[j] != (w == 2 ? 0 : w == 3 ? 1 : wd[2]))
                return 0;
        if (!a && w < 2)
            return 0;
    }
    add_node(m, i);
    const char *ro = step(c, m, co, "Reshape", 1, &rs);
    if (!ro || !int_values(c, in_at(rs, 1), k, 3, &n) || n != 3 || k[1] != wd[0])
        return 0;
    const char *to = step(c, m, ro, "Transpose", 1, &t);
    if (!to || !perm_n(t, tr, 3))
        return 0;
    const char *cc = step(c, m, to, "Concat", 1, &cat);
    if (!cc || cat->n_input != 2 || !same(in_at(cat, 1), to) || attr_int(cat, "axis", 0) != 1)
        return 0;
    /* the class token (1, 1, D), maybe through an Expand to (N, 1, D) */
    const char *cls = in_at(cat, 0);
    ox_value *cv = cls ? ox_find(c, cls) : NULL;
    if (cv && cv->def_node && is_op(node_at(c, cv->def_node - 1), "Expand") &&
        cv->def_node - 1 > i && private(c, cls, 1)) {
        add_node(m, cv->def_node - 1);
        cls = in_at(node_at(c, cv->def_node - 1), 0);
    }
    if (!float_dims(c, cls, d, &n) || n != 3 || d[0] != 1 || d[1] != 1 || d[2] != wd[0])
        return 0;
    m->wo = cls;
    const char *y = step(c, m, cc, "Add", 0, &ad);
    m->bo = y ? other(ad, cc) : NULL;
    if (!m->bo || !float_dims(c, m->bo, d, &n) || n != 3 || d[0] != 1 || d[2] != wd[0])
        return 0;
    m->hd = (int)wd[2];
    m->x = in_at(nd, 0);
    m->pattern = FP_PATCH;
    return close_match(c, m);
}

/* HF BERT's additive mask, computed once and read by every layer:
 * Mul(Sub(1, Cast(Unsqueeze(Unsqueeze(M, 1), 2))), k) with k <= -1e4, or the same with one
 * Unsqueeze of axes (1, 2); M a graph input (N, T), 1 where a key is kept. Its nodes are not
 * part of the match: once every reader is fused they are dropped (ox_fuse_scan). */
static const char *additive_mask(ox_ctx *c, const char *ext)
{
    ox_value *v = find(c, ext);
    const Tlonnx__NodeProto *nd = v && v->def_node ? node_at(c, v->def_node - 1) : NULL;
    float f;
    if (!nd || !is_op(nd, "Mul") || !scalar(c, in_at(nd, 1), &f) || !(f <= -1e4f))
        return NULL;
    v = find(c, in_at(nd, 0));
    nd = v && v->def_node ? node_at(c, v->def_node - 1) : NULL;
    if (!nd || !is_op(nd, "Sub") || !is_scalar(c, in_at(nd, 0), 1.0f, 0.0f))
        return NULL;
    v = find(c, in_at(nd, 1));
    nd = v && v->def_node ? node_at(c, v->def_node - 1) : NULL;
    if (!nd || !is_op(nd, "Cast") || attr_int(nd, "to", 0) != 1)
        return NULL;
    int64_t want = 0; /* the axes inserted so far, as bits */
    const char *t = in_at(nd, 0);
    for (int hop = 0; hop < 2; hop++) {
        v = find(c, t);
        nd = v && v->def_node ? node_at(c, v->def_node - 1) : NULL;
        if (!nd || !is_op(nd, "Unsqueeze"))
            break;
        int64_t ax[2];
        int na = 0;
        const Tlonnx__AttributeProto *a = attr_of(nd, "axes");
        if (a && a->n_ints <= 2) {
            na = (int)a->n_ints;
            for (int k = 0; k < na; k++)
                ax[k] = a->ints[k];
        } else if (!int_values(c, in_at(nd, 1), ax, 2, &na)) {
            return NULL;
        }
        for (int k = 0; k < na; k++)
            want |= ax[k] == 1 || ax[k] == 2 ? (int64_t)1 << ax[k] : 64;
        t = in_at(nd, 0);
    }
    v = t ? find(c, t) : NULL;
    return want == 6 && v && v->kind == OX_ACT && !v->def_node ? t : NULL;
}

/* One projection of separate query/key/value Linears: MatMul(x, W (D, D)) -> Add b ->
 * Reshape (.., T, H, hd) -> Transpose; the Transpose node in *tr. */
static const char *projection(ox_ctx *c, ox_match *m, size_t j, const char *x, const char **w,
                              const char **b, int64_t *hd, const Tlonnx__NodeProto **tr)
{
    const Tlonnx__NodeProto *mm = node_at(c, j), *ad, *rs;
    int64_t wd[OX_MAX_RANK], rd[OX_MAX_RANK];
    int n;
    *w = in_at(mm, 1);
    if (!same(in_at(mm, 0), x) || !float_dims(c, *w, wd, &n) || n != 2 || wd[0] != wd[1] ||
        !private(c, out0(mm), 1))
        return NULL;
    add_node(m, j);
    const char *y = branch(c, m, out0(mm), "Add", &ad);
    *b = y ? other(ad, out0(mm)) : NULL;
    if (!*b || !float_dims(c, *b, rd, &n) || n != 1 || rd[0] != wd[0] || !private(c, y, 1))
        return NULL;
    const char *r = branch(c, m, y, "Reshape", &rs);
    if (!r || !private(c, r, 1) || !int_values(c, in_at(rs, 1), rd, 4, &n) || n != 4 ||
        rd[3] < 1 || rd[2] * rd[3] != wd[0])
        return NULL;
    *hd = rd[3];
    const char *o = branch(c, m, r, "Transpose", tr);
    return o && private(c, o, 1) ? o : NULL;
}

/* HF BERT's self-attention (separate query, key, value Linears, batch first) with the
 * output Linear after it:
 *   q, k, v: MatMul W -> Add b -> Reshape (N, T, H, hd) -> Transpose (0,2,1,3), k's
 *   (0,2,3,1) -> MatMul(q, k) -> Div sqrt(hd) [-> Add additive mask] -> Softmax(-1) ->
 *   MatMul(., v) -> Transpose (0,2,1,3) -> Reshape (N, T, D) -> MatMul Wo -> Add bo
 * One attention layer; q, k, v packed into in_proj (their order in in_proj_weight). */
static int match_qkv(ox_ctx *c, size_t i, ox_match *m)
{
    static const int64_t heads[4] = {0, 2, 1, 3}, keys[4] = {0, 2, 3, 1};
    const Tlonnx__NodeProto *nd = node_at(c, i), *tr[3], *s1, *dv, *am, *sm, *s2, *t4, *r3,
                            *mo, *ao;
    const char *x = in_at(nd, 0), *w[3], *b[3], *o[3];
    int64_t hd[3];
    if (!x || const_tensor(c, x))
        return 0;
    /* the three MatMuls reading x, from this one on, in node order */
    size_t j = i;
    for (int k = 0; k < 3; k++) {
        if (k && (long)(j = (size_t)reader_in(c, j, x, "MatMul", BLOCK_WINDOW)) < 0)
            return 0;
        if (!(o[k] = projection(c, m, j, x, &w[k], &b[k], &hd[k], &tr[k])) || hd[k] != hd[0])
            return 0;
    }
    /* roles: the scores read q and k, the context v */
    const char *sc = branch(c, m, o[0], "MatMul", &s1);
    if (!sc)
        return 0;
    int q = -1, kk = -1, v = -1;
    for (int k = 0; k < 3; k++) {
        if (same(in_at(s1, 0), o[k]) && perm_n(tr[k], heads, 4))
            q = k;
        else if (same(in_at(s1, 1), o[k]) && perm_n(tr[k], keys, 4))
            kk = k;
        else if (perm_n(tr[k], heads, 4))
            v = k;
    }
    if (q < 0 || kk < 0 || v < 0 || !private(c, sc, 1))
        return 0;
    float f, want = sqrtf((float)hd[0]);
    int is_div = reader_in(c, m->node[0], sc, "Div", BLOCK_WINDOW) >= 0;
    const char *ss = branch(c, m, sc, is_div ? "Div" : "Mul", &dv);
    if (!is_div)
        want = 1.0f / want;
    if (!ss || !same(in_at(dv, 0), sc) || !scalar(c, in_at(dv, 1), &f) ||
        fabsf(f - want) > 1e-5f * want || !private(c, ss, 1))
        return 0;
    if (reader_in(c, m->node[0], ss, "Softmax", BLOCK_WINDOW) < 0) {
        const char *sum = branch(c, m, ss, "Add", &am);
        if (!sum || !private(c, sum, 1) || !(m->mask = additive_mask(c, other(am, ss))))
            return 0;
        ss = sum;
    }
    const char *p = branch(c, m, ss, "Softmax", &sm);
    if (!p || !private(c, p, 1) ||
        (attr_int(sm, "axis", -1) != -1 && attr_int(sm, "axis", -1) != 3))
        return 0;
    const char *ctx = branch(c, m, p, "MatMul", &s2);
    if (!ctx || !same(in_at(s2, 0), p) || !same(in_at(s2, 1), o[v]) || !private(c, ctx, 1))
        return 0;
    const char *ct = branch(c, m, ctx, "Transpose", &t4);
    const char *flat = ct && perm_n(t4, heads, 4) && private(c, ct, 1)
                           ? branch(c, m, ct, "Reshape", &r3) : NULL;
    int64_t rd[OX_MAX_RANK], od[OX_MAX_RANK];
    int nr, on;
    if (!flat || !private(c, flat, 1) || !int_values(c, in_at(r3, 1), rd, 3, &nr) || nr != 3)
        return 0;
    int64_t d = rd[2];
    const char *y = branch(c, m, flat, "MatMul", &mo);
    m->wo = y ? in_at(mo, 1) : NULL;
    if (!y || !private(c, y, 1) || !same(in_at(mo, 0), flat) ||
        !float_dims(c, m->wo, od, &on) || on != 2 || od[0] != d || od[1] != d)
        return 0;
    const char *z = branch(c, m, y, "Add", &ao);
    m->bo = z ? other(ao, y) : NULL;
    if (!m->bo || !float_dims(c, m->bo, od, &on) || on != 1 || od[0] != d)
        return 0;
    m->tb = 0;
    m->hd = (int)hd[0];
    m->x = x;
    m->pattern = FP_MHA;
    m->mask_keep = 1;
    int role[3] = {q, kk, v};
    for (int k = 0; k < 3; k++) {
        m->sw[k] = w[role[k]];
        m->sb[k] = b[role[k]];
    }
    return close_match(c, m);
}

/* Learned positions as BERT adds them: Gather(table (L, D), constant ids 0..T-1) ->
 * Add(x, .): one position_embedding layer holding the whole table. */
static int match_positions(ox_ctx *c, size_t i, ox_match *m)
{
    const Tlonnx__NodeProto *nd = node_at(c, i), *ad;
    const char *p = out0(nd);
    int64_t wd[OX_MAX_RANK], ids[1024];
    int wn, n;
    m->w = in_at(nd, 0);
    if (attr_int(nd, "axis", 0) != 0 || !float_dims(c, m->w, wd, &wn) || wn != 2 ||
        !int_values(c, in_at(nd, 1), ids, 1024, &n) || !n || n > wd[0] || !private(c, p, 1))
        return 0;
    for (int k = 0; k < n; k++)
        if (ids[k] != k)
            return 0;
    add_node(m, i);
    const char *y = step(c, m, p, "Add", 0, &ad);
    m->x = y ? other(ad, p) : NULL;
    if (!m->x || const_tensor(c, m->x))
        return 0;
    m->hd = n;
    m->pattern = FP_POSITIONS;
    return 1;
}

/* The patterns by the type of their first node. LayerNormalization alone has a handler. */
static const struct {
    const char *first;
    int (*match)(ox_ctx *c, size_t i, ox_match *m);
} patterns[] = {
    {"Sigmoid", match_gated},
    {"HardSigmoid", match_gated},
    {"Div", match_gelu},
    {"Mul", match_gelu},
    {"Mul", match_gelu_tanh},
    {"ReduceMean", match_layernorm},
    {"Transpose", match_ln2d},
    {"Transpose", match_mha},
    {"Conv", match_patch},
    {"MatMul", match_qkv},
    {"Gather", match_positions},
};

/* ---- scanning and importing ---- */

/* A value the match reads as such (its input, mask or weights), not an intermediate. */
static int match_input(const ox_match *m, const char *v)
{
    const char *const ins[] = {m->x, m->mask, m->w, m->b, m->wo, m->bo, m->sw[0], m->sw[1],
                               m->sw[2], m->sb[0], m->sb[1], m->sb[2]};
    for (size_t k = 0; k < sizeof ins / sizeof *ins; k++)
        if (same(ins[k], v))
            return 1;
    return 0;
}

/* Nodes whose every output only fused nodes read as an intermediate (BERT's additive mask,
 * computed once for all layers) are dropped (OX_DROPPED). Readers come after their
 * producers, so one pass from the last node sees every reader first. */
static int drop_unread(ox_ctx *c)
{
    int *fused_reads = tl_alloc_array(c->nvals ? c->nvals : 1, sizeof *fused_reads);
    if (!fused_reads)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    memset(fused_reads, 0, (c->nvals ? c->nvals : 1) * sizeof *fused_reads);
    for (size_t j = c->g->n_node; j-- > 0;) {
        const Tlonnx__NodeProto *nd = node_at(c, j);
        if (!c->fuse_of[j]) {
            int dead = nd->n_output > 0;
            for (size_t o = 0; dead && o < nd->n_output; o++) {
                const char *name = nd->output[o] && *nd->output[o] ? nd->output[o] : NULL;
                ox_value *v = name ? ox_find(c, name) : NULL;
                dead = v && v->uses > 0 && fused_reads[v - c->vals] == v->uses;
            }
            if (!dead)
                continue;
            c->fuse_of[j] = OX_DROPPED;
        }
        const ox_match *m = c->fuse_of[j] == OX_DROPPED ? NULL : &c->fuse[c->fuse_of[j] - 1];
        for (size_t k = 0; k < nd->n_input; k++) {
            const char *v = in_at(nd, k);
            if (v && (!m || !match_input(m, v)))
                fused_reads[ox_find(c, v) - c->vals]++;
        }
    }
    tl_free(fused_reads);
    return TLEARN_OK;
}

int ox_fuse_scan(ox_ctx *c)
{
    size_t n = c->g->n_node, cap = 0;
    if (!n)
        return TLEARN_OK;
    c->fuse_of = tl_alloc_array(n, sizeof *c->fuse_of);
    if (!c->fuse_of)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    memset(c->fuse_of, 0, n * sizeof *c->fuse_of);
    for (size_t i = 0; i < n; i++) {
        if (c->fuse_of[i])
            continue;
        for (size_t p = 0; p < sizeof patterns / sizeof *patterns; p++) {
            ox_match m;
            memset(&m, 0, sizeof m);
            if (!is_op(node_at(c, i), patterns[p].first) || !patterns[p].match(c, i, &m))
                continue;
            if (c->nfuse == cap) {
                size_t nc = cap ? 2 * cap : 16;
                ox_match *f = tl_alloc_array(nc, sizeof *f);
                if (!f)
                    return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
                if (c->nfuse)
                    memcpy(f, c->fuse, c->nfuse * sizeof *f);
                tl_free(c->fuse);
                c->fuse = f;
                cap = nc;
            }
            c->fuse[c->nfuse++] = m;
            for (int k = 0; k < m.n; k++)
                c->fuse_of[m.node[k]] = (uint32_t)c->nfuse;
            break;
        }
    }
    if (!c->nfuse) {
        tl_free(c->fuse_of);
        c->fuse_of = NULL;
        return TLEARN_OK;
    }
    return drop_unread(c);
}

void ox_fuse_nodes(ox_ctx *c, size_t i, const size_t **nodes, int *n)
{
    const ox_match *m = &c->fuse[c->fuse_of[i] - 1];
    *nodes = m->node;
    *n = m->n;
}

void ox_fuse_free(ox_ctx *c)
{
    tl_free(c->fuse_of);
    tl_free(c->fuse);
    c->fuse_of = NULL;
    c->fuse = NULL;
    c->nfuse = 0;
}

/* The LayerNorm's axes as trailing axes of a rank-@p R value: how many, or -1. */
static int trailing_axes(const ox_match *m, int R)
{
    int64_t seen = 0;
    for (int k = 0; k < m->naxes; k++) {
        int64_t a = m->axes[k] < 0 ? m->axes[k] + R : m->axes[k];
        if (a < 1 || a >= R || (seen >> a & 1))
            return -1;
        seen |= (int64_t)1 << a;
    }
    /* the axes must be R - naxes .. R - 1 */
    return seen == (((int64_t)1 << R) - ((int64_t)1 << (R - m->naxes))) ? m->naxes : -1;
}

/* The float constant @p name, converted, of @p numel values (0: any). */
static int fconst(ox_ctx *c, const char *name, size_t numel, const char *what,
                  const ox_const **out)
{
    ox_value *v = name ? ox_find(c, name) : NULL;
    int rc;
    if (!v || v->kind != OX_CONST)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the %s '%.100s' must be a constant", what,
                       name ? name : "");
    if (!v->c && (rc = ox_tensor_convert(c, v->tp, &v->c)))
        return rc;
    if (v->c->is_int || (numel && v->c->numel != numel))
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the %s '%.100s' has %zu values, %zu expected",
                       what, name, v->c->numel, numel);
    *out = v->c;
    return TLEARN_OK;
}

/* Parameter @p pname of @p layer from constant @p name (@p rows x @p cols, transposed when
 * @p tr), checked finite by ox_set_param. */
static int param_from(ox_ctx *c, int layer, const char *pname, const char *name, size_t rows,
                      size_t cols, int tr)
{
    const ox_const *k;
    float *dst = ox_param_data(c, layer, pname);
    int rc = fconst(c, name, rows * cols, pname, &k);
    if (rc)
        return rc;
    if (!dst || !tr)
        return ox_set_param(c, layer, pname, k->f, rows * cols);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            dst[j * rows + i] = k->f[i * cols + j];
    return ox_set_param(c, layer, pname, dst, rows * cols);
}

static int ends_with(const char *s, const char *tail)
{
    size_t n = s ? strlen(s) : 0, t = strlen(tail);
    return n > t && strcmp(s + n - t, tail) == 0;
}

/* One attention layer, named after the module (`layers.0.self_attn`), so its tensors carry
 * torch's state_dict names: in_proj_weight is MatMul's (D, 3D) transposed. */
static int emit_mha(ox_ctx *c, const ox_match *m, ox_value *x)
{
    char s[TL_SHAPE_STR];
    if (x->shape.rank != 2)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "attention over %s: a sequence (N, T, D) is "
                       "expected", tl_shape_str(x->shape, s));
    size_t t = (size_t)x->shape.d[0], d = (size_t)x->shape.d[1];
    const tl_layer_ops *ops;
    int in[2], ni = 1, layer, rc;
    if ((rc = ox_need_ops(c, TLEARN_LAYER_ATTENTION, "attention", &ops)) ||
        (rc = ox_act_materialize(c, x, &in[0])))
        return rc;
    if (m->mask) {
        ox_value *mv = ox_find(c, m->mask);
        if (!mv || mv->kind != OX_ACT || mv->shape.rank != 1 || (size_t)mv->shape.d[0] != t)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "the key-padding mask '%.100s' must be a "
                           "graph input (N, %zu)", m->mask, t);
        in[ni++] = mv->layer;
    }
    int ia[3] = {(int)(d / (size_t)m->hd), 0, !m->mask_keep};
    /* named after the module: `a.in_proj_bias` -> `a`; q/k/v `a.query.bias` -> `a` */
    char from[2 * TL_NAME_MAX] = "";
    const char *w = ends_with(m->b, ".in_proj_bias") ? m->b : NULL;
    if (m->sw[0] && m->sb[0] && strlen(m->sb[0]) < sizeof from) {
        strcpy(from, m->sb[0]);
        char *dot = strrchr(from, '.');
        if (dot)
            *dot = '\0';
        w = dot ? from : NULL;
    }
    if ((rc = ox_add_layer(c, ops, w, in, ni, ia, m->mask && !m->mask_keep ? 3 : 2, NULL, 0,
                           &layer)))
        return rc;
    if (m->sw[0]) { /* q, k, v: (D, D) each, stacked as the rows of in_proj */
        float *wi = ox_param_data(c, layer, "in_proj_weight");
        float *bi = ox_param_data(c, layer, "in_proj_bias");
        for (int k = 0; k < 3; k++) {
            const ox_const *w, *b;
            if ((rc = fconst(c, m->sw[k], d * d, "weight", &w)) ||
                (rc = fconst(c, m->sb[k], d, "bias", &b)))
                return rc;
            for (size_t r = 0; r < d; r++)
                for (size_t j = 0; j < d; j++)
                    wi[(k * d + j) * d + r] = w->f[r * d + j];
            memcpy(bi + k * d, b->f, d * sizeof *bi);
        }
        if ((rc = ox_set_param(c, layer, "in_proj_weight", wi, 3 * d * d)) ||
            (rc = ox_set_param(c, layer, "in_proj_bias", bi, 3 * d)))
            return rc;
    } else if ((rc = param_from(c, layer, "in_proj_weight", m->w, d, 3 * d, 1)) ||
               (rc = param_from(c, layer, "in_proj_bias", m->b, 1, 3 * d, 0))) {
        return rc;
    }
    if ((rc = param_from(c, layer, "out_proj.weight", m->wo, d, d, !m->tb)) ||
        (rc = param_from(c, layer, "out_proj.bias", m->bo, 1, d, 0)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

/* torchvision's patch embedding with class token and positions as one patch_embed layer
 * (named after the positions' module, `encoder`). */
static int emit_patch(ox_ctx *c, const ox_match *m, ox_value *x)
{
    char s[TL_SHAPE_STR];
    const ox_const *w;
    const tl_layer_ops *ops;
    int rc, producer, layer;
    if (x->shape.rank != 3)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "patch embedding of %s: an image (N, C, H, W) "
                       "is expected", tl_shape_str(x->shape, s));
    if ((rc = fconst(c, m->w, 0, "weight", &w)))
        return rc;
    if (w->ndim != 4 || w->dims[1] != x->shape.c || w->dims[0] < 1 || w->dims[0] > INT32_MAX)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "the patch embedding's weight does not fit the "
                       "image %s", tl_shape_str(x->shape, s));
    size_t d = (size_t)w->dims[0], k = (size_t)w->numel / d;
    int ia[4] = {(int)d, m->hd, 1, 1};
    if ((rc = ox_need_ops(c, TLEARN_LAYER_PATCH_EMBED, "patch_embed", &ops)) ||
        (rc = ox_act_materialize(c, x, &producer)) ||
        (rc = ox_add_layer(c, ops, m->bo, &producer, 1, ia, 4, NULL, 0, &layer)))
        return rc;
    size_t t = (size_t)c->m->layers[layer]->out.d[0];
    if ((rc = param_from(c, layer, "conv_proj.weight", m->w, d, k, 0)) ||
        (rc = param_from(c, layer, "conv_proj.bias", m->b, 1, d, 0)) ||
        (rc = param_from(c, layer, "class_token", m->wo, 1, d, 0)) ||
        (rc = param_from(c, layer, "pos_embedding", m->bo, t, d, 0)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

static int emit_positions(ox_ctx *c, const ox_match *m, ox_value *x)
{
    char s[TL_SHAPE_STR];
    const ox_const *w;
    int rc, producer, layer;
    if ((rc = fconst(c, m->w, 0, "position table", &w)))
        return rc;
    if (x->shape.rank != 2 || x->shape.d[0] != m->hd || w->dims[1] != x->shape.d[1] ||
        w->dims[0] > INT32_MAX)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "positions (%d of %lld) added to %s: a sequence "
                       "(N, T, D) is expected", m->hd, (long long)w->dims[1],
                       tl_shape_str(x->shape, s));
    int ia[2] = {(int)w->dims[0], 0};
    if ((rc = ox_act_materialize(c, x, &producer)) ||
        (rc = ox_add_layer(c, &tl_position_embedding_ops, m->w, &producer, 1, ia, 2, NULL, 0,
                           &layer)) ||
        (rc = ox_set_param(c, layer, "weight", w->f, w->numel)))
        return rc;
    ox_def_act(c, layer);
    return TLEARN_OK;
}

int ox_fuse_emit(ox_ctx *c, size_t i)
{
    static const char *const names[] = {"", "SiLU", "HardSwish", "GELU", "GELU", "LayerNorm",
                                        "LayerNorm2d"};
    const ox_match *m = &c->fuse[c->fuse_of[i] - 1];
    /* x as an input of the pattern's first node (a pending Pad becomes a pad layer) */
    const Tlonnx__NodeProto *last = c->node;
    ox_value *x = NULL;
    int rc = TLEARN_OK;
    for (int j = 0; j < m->n && !x && !rc; j++) {
        c->node = node_at(c, m->node[j]);
        for (size_t k = 0; k < c->node->n_input && !x; k++)
            if (same(in_at(c->node, k), m->x) && (rc = ox_in_act(c, k, 0, &x)))
                break;
    }
    c->node = last;
    if (rc)
        return rc;
    if (!x)
        return ox_fail(c, TLEARN_EFORMAT, "the input '%.100s' of this %s (decomposed by the "
                       "exporter) is not defined", m->x, names[m->pattern]);
    if (m->pattern == FP_MHA)
        return emit_mha(c, m, x);
    if (m->pattern == FP_PATCH)
        return emit_patch(c, m, x);
    if (m->pattern == FP_POSITIONS)
        return emit_positions(c, m, x);
    int R = 1 + x->shape.rank, naxes;
    if (m->pattern == FP_LAYERNORM2D) {
        if (x->shape.rank != 3)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "LayerNorm2d needs an (N, C, H, W) input");
        return ox_layernorm(c, x, 0, m->eps, m->w, m->b);
    }
    if (m->pattern == FP_LAYERNORM) {
        if ((naxes = trailing_axes(m, R)) < 0)
            return ox_fail(c, TLEARN_EUNSUPPORTED, "a LayerNorm (decomposed by the exporter) "
                           "over axes that are not the trailing axes of a rank-%d value", R);
        return ox_layernorm(c, x, naxes, m->eps, m->w, m->b);
    }
    static const float zero = 0.0f;
    int act = m->pattern == FP_SILU        ? TLEARN_ACT_SILU
              : m->pattern == FP_HARDSWISH ? TLEARN_ACT_HARDSWISH
              : m->pattern == FP_GELU_TANH ? TLEARN_ACT_GELU_TANH
                                           : TLEARN_ACT_GELU;
    int layer;
    rc = ox_add_layer(c, &tl_activation_ops, NULL, &x->layer, 1, &act, 1, &zero, 1, &layer);
    if (rc)
        return rc;
    ox_def_view(c, layer, x->shape);
    return TLEARN_OK;
}
