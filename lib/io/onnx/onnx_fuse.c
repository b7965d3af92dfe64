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
#include <string.h>

#include "onnx_internal.h"

#define FUSE_MAX_NODES 12
#define FUSE_WINDOW 64

enum { FP_SILU = 1, FP_HARDSWISH, FP_GELU, FP_GELU_TANH, FP_LAYERNORM, FP_LAYERNORM2D };

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
static long reader(ox_ctx *c, size_t from, const char *name, const char *op)
{
    size_t end = c->g->n_node - from > FUSE_WINDOW ? from + FUSE_WINDOW : c->g->n_node;
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
};

/* ---- scanning and importing ---- */

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
    }
    return TLEARN_OK;
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

int ox_fuse_emit(ox_ctx *c, size_t i)
{
    static const char *const names[] = {"", "SiLU", "HardSwish", "GELU", "GELU", "LayerNorm",
                                        "LayerNorm2d"};
    const ox_match *m = &c->fuse[c->fuse_of[i] - 1];
    /* x as an input of the pattern's first node (a pending Pad becomes a pad layer) */
    const Tlonnx__NodeProto *last = c->node;
    ox_value *x = NULL;
    int rc = TLEARN_OK;
    c->node = node_at(c, m->node[0]);
    for (size_t k = 0; k < c->node->n_input && !x; k++)
        if (same(in_at(c->node, k), m->x) && (rc = ox_in_act(c, k, 0, &x)))
            break;
    c->node = last;
    if (rc)
        return rc;
    if (!x)
        return ox_fail(c, TLEARN_EFORMAT, "the input '%.100s' of this %s (decomposed by the "
                       "exporter) is not defined", m->x, names[m->pattern]);
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
