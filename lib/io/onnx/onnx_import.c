/* ONNX import: the public entry points, parsing, the value table and the graph walk.
 * Operators are mapped in onnx_ops.c, tensors converted in onnx_tensor.c. Whatever fails,
 * the half-built model is destroyed and *out stays NULL. */
#define _DEFAULT_SOURCE /* mmap, O_CLOEXEC */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "onnx_internal.h"
#include "../io.h"

/* Protobuf messages cannot exceed 2 GiB. */
#define OX_MAX_FILE ((size_t)INT32_MAX)

int ox_fail(ox_ctx *c, int status, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!c->node)
        return tl_fail(status, "%s: %s", c->fn, msg);
    const char *name = c->node->name && *c->node->name ? c->node->name : "";
    const char *op = c->node->op_type ? c->node->op_type : "";
    if (*name)
        return tl_fail(status, "%s: node '%.120s' (%.40s): %s", c->fn, name, op, msg);
    return tl_fail(status, "%s: node #%zu (%.40s): %s", c->fn, c->node_index, op, msg);
}

/* ---- value table: FNV-1a hash, open addressing, sized once for every name ---- */

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static uint32_t *slot_of(ox_ctx *c, const char *name)
{
    size_t mask = c->tcap - 1;
    for (size_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        uint32_t e = c->table[i];
        if (!e || strcmp(c->vals[e - 1].name, name) == 0)
            return &c->table[i];
    }
}

ox_value *ox_find(ox_ctx *c, const char *name)
{
    uint32_t e = *slot_of(c, name);
    return e ? &c->vals[e - 1] : NULL;
}

/* The value called @p name, created (OX_UNSEEN) when new. The table is sized for every
 * name in the graph up front, so it never fills. */
static ox_value *intern(ox_ctx *c, const char *name)
{
    uint32_t *s = slot_of(c, name);
    if (*s)
        return &c->vals[*s - 1];
    ox_value *v = &c->vals[c->nvals];
    memset(v, 0, sizeof *v);
    v->name = name;
    v->layer = -1;
    v->bias_layer = -1;
    *s = (uint32_t)++c->nvals;
    return v;
}

static int alloc_table(ox_ctx *c, size_t names)
{
    if (names > (size_t)1 << 28)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: the graph has %zu value names, too many", c->fn,
                       names);
    c->capvals = names + 1;
    c->tcap = 16;
    while (c->tcap < 2 * c->capvals)
        c->tcap *= 2;
    c->vals = tl_alloc_array(c->capvals, sizeof *c->vals);
    c->table = tl_alloc_array(c->tcap, sizeof *c->table);
    if (!c->vals || !c->table)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for %zu value names", c->fn, names);
    return TLEARN_OK;
}

/* ---- the graph ---- */

static int is_default_domain(const char *d)
{
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

static int read_opset(ox_ctx *c, const Tlonnx__ModelProto *mp)
{
    int found = 0;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Tlonnx__OperatorSetIdProto *o = mp->opset_import[i];
        if (is_default_domain(o->domain) && o->has_version) {
            c->opset = o->version;
            found = 1;
        }
    }
    if (!found)
        return tl_fail(TLEARN_EFORMAT, "%s: the model imports no opset of the default ONNX "
                       "domain", c->fn);
    if (c->opset < OX_OPSET_MIN || c->opset > OX_OPSET_MAX)
        return tl_fail(TLEARN_EUNSUPPORTED,
                       "%s: opset %lld is not supported (opsets %d to %d are; re-export with "
                       "torch.onnx.export(..., opset_version=13))", c->fn, (long long)c->opset,
                       OX_OPSET_MIN, OX_OPSET_MAX);
    return TLEARN_OK;
}

/* The model input's name: the graph input's, made a valid layer name (printable, no glob
 * characters, short enough). */
static void input_name(const char *src, char *out)
{
    size_t n = strlen(src);
    if (n >= TL_NAME_MAX)
        n = TL_NAME_MAX - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        out[i] = ch <= ' ' || ch >= 127 || ch == '*' || ch == '?' || ch == '[' || ch == ']'
                     ? '_' : (char)ch;
    }
    out[n] = '\0';
    if (!n)
        strcpy(out, "input");
}

/* Every graph input that is not an initializer is a model input (at most 8, in the graph's
 * order): ONNX rank 2 to 1 + TL_MAX_RANK of FLOAT ((N, F), (N, T, D), (N, C, H, W), ...), or
 * INT64/INT32 token ids and BOOL masks (int32 model inputs). Dim 0 is the batch and may be
 * symbolic; the others must be fixed. */
static int read_input_at(ox_ctx *c, const Tlonnx__ValueInfoProto *in, int k)
{
    const Tlonnx__TypeProto__Tensor *tt = in->type ? in->type->tensor_type : NULL;
    if (!tt || !tt->shape)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: graph input '%.100s' is not a tensor of known "
                       "rank", c->fn, in->name);
    int32_t et = tt->has_elem_type ? tt->elem_type : 1;
    int dtype = et == 1 ? TLEARN_DTYPE_FLOAT32
                : et == 6 || et == 7 || et == 9 ? TLEARN_DTYPE_INT32 : 0;
    if (!dtype)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: graph input '%.100s' has element type %s; "
                       "FLOAT, INT64 or INT32 token ids and BOOL masks are supported", c->fn,
                       in->name, ox_type_name(et));
    size_t rank = tt->shape->n_dim;
    if (rank < 2 || rank > 1 + TL_MAX_RANK)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: graph input '%.100s' has rank %zu; ranks 2 "
                       "to %d (the batch, then 1 to %d dimensions) are supported", c->fn,
                       in->name, rank, 1 + TL_MAX_RANK, TL_MAX_RANK);
    int d[TL_MAX_RANK];
    for (size_t i = 0; i < rank; i++) {
        const Tlonnx__TensorShapeProto__Dimension *dim = tt->shape->dim[i];
        int fixed = dim->has_dim_value && dim->dim_value > 0;
        if (i == 0) {
            if (!k)
                c->fixed_batch = fixed ? dim->dim_value : 0;
            continue;
        }
        if (!fixed || dim->dim_value > INT32_MAX)
            return tl_fail(TLEARN_EUNSUPPORTED,
                           "%s: dimension %zu of graph input '%.100s' is not a fixed positive "
                           "size; export with a fixed input size (only the batch may be "
                           "dynamic)", c->fn, i, in->name);
        d[i - 1] = (int)dim->dim_value;
    }
    char name[TL_NAME_MAX];
    input_name(in->name, name);
    int rc = k ? tlearn_model_add_input(c->m, name, dtype, (int)rank - 1, d)
               : tlearn_model_create_input(&c->m, name, dtype, (int)rank - 1, d);
    if (rc)
        return tl_fail(rc == TLEARN_EINVAL || rc == TLEARN_ESTATE ? TLEARN_EUNSUPPORTED : rc,
                       "%s: graph input '%.100s': %s", c->fn, in->name, tlearn_errmsg());
    ox_value *v = intern(c, in->name);
    v->kind = OX_ACT;
    v->layer = tl_input_producer(k);
    v->dtype = dtype;
    v->shape = c->m->inputs[k].shape;
    return TLEARN_OK;
}

static int read_inputs(ox_ctx *c)
{
    const Tlonnx__GraphProto *g = c->g;
    int k = 0;
    for (size_t i = 0; i < g->n_input; i++) {
        const char *name = g->input[i]->name;
        if (!name || !*name)
            return tl_fail(TLEARN_EFORMAT, "%s: graph input %zu has no name", c->fn, i);
        ox_value *v = ox_find(c, name);
        if (v && v->kind == OX_CONST)
            continue; /* an initializer listed as an input (older exporters) */
        if (v && v->kind == OX_ACT)
            return tl_fail(TLEARN_EFORMAT, "%s: graph input '%.100s' is listed twice", c->fn,
                           name);
        int rc = read_input_at(c, g->input[i], k++);
        if (rc)
            return rc;
    }
    if (!k)
        return tl_fail(TLEARN_EFORMAT, "%s: the graph has no input", c->fn);
    return TLEARN_OK;
}

/* Where the graph output declares fixed sizes beyond the batch, they must be what the
 * layers compute: a mismatch means the file is inconsistent or was misread. */
static int check_output_shape(ox_ctx *c, const Tlonnx__ValueInfoProto *vi, const ox_value *v)
{
    const Tlonnx__TypeProto__Tensor *tt = vi->type ? vi->type->tensor_type : NULL;
    if (!tt || !tt->shape)
        return TLEARN_OK;
    size_t rank = tt->shape->n_dim;
    if (rank != (size_t)(1 + v->shape.rank))
        return tl_fail(TLEARN_EFORMAT, "%s: the graph output '%.100s' has rank %zu, the layers "
                       "compute rank %d", c->fn, vi->name, rank, 1 + v->shape.rank);
    for (size_t i = 1; i < rank; i++) {
        const Tlonnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d->has_dim_value && d->dim_value != v->shape.d[i - 1])
            return tl_fail(TLEARN_EFORMAT, "%s: dimension %zu of the graph output '%.100s' is "
                           "%lld, the layers compute %d", c->fn, i, vi->name,
                           (long long)d->dim_value, v->shape.d[i - 1]);
    }
    return TLEARN_OK;
}

/* An initializer converted for its last reader is freed at once: the layers hold their
 * own copy, and the peak then holds one weight at a time beyond the layers. */
static void release_consumed(ox_ctx *c, const Tlonnx__NodeProto *nd)
{
    for (size_t k = 0; k < nd->n_input; k++) {
        if (!nd->input[k] || !*nd->input[k])
            continue;
        ox_value *v = ox_find(c, nd->input[k]);
        if (--v->pending == 0 && v->kind == OX_CONST && v->tp && v->c && !v->shared) {
            ox_const_release(c, v->c);
            v->c = NULL;
        }
    }
}

static int walk(ox_ctx *c, const Tlonnx__ModelProto *mp)
{
    int rc = read_opset(c, mp);
    if (rc)
        return rc;
    const Tlonnx__GraphProto *g = mp->graph;
    if (!g)
        return tl_fail(TLEARN_EFORMAT, "%s: the model has no graph", c->fn);
    c->g = g;
    if (g->n_sparse_initializer)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: sparse initializers are not supported", c->fn);

    /* Every name the graph can mention, to size the table once. */
    size_t names = g->n_initializer + g->n_input + g->n_output;
    for (size_t i = 0; i < g->n_node; i++)
        names += g->node[i]->n_input + g->node[i]->n_output;
    rc = alloc_table(c, names);
    if (rc)
        return rc;

    for (size_t i = 0; i < g->n_initializer; i++) {
        const Tlonnx__TensorProto *t = g->initializer[i];
        if (!t->name || !*t->name)
            return tl_fail(TLEARN_EFORMAT, "%s: initializer %zu has no name", c->fn, i);
        ox_value *v = intern(c, t->name);
        if (v->kind != OX_UNSEEN)
            return tl_fail(TLEARN_EFORMAT, "%s: initializer '%.100s' is defined twice", c->fn,
                           t->name);
        v->kind = OX_CONST;
        v->tp = t;
    }
    rc = read_inputs(c);
    if (rc)
        return rc;
    if (g->n_output != 1)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: the graph has %zu outputs; one is supported",
                       c->fn, g->n_output);
    if (!g->output[0]->name || !*g->output[0]->name)
        return tl_fail(TLEARN_EFORMAT, "%s: the graph output has no name", c->fn);
    ox_value *outv = intern(c, g->output[0]->name);
    outv->is_output = 1;
    outv->uses++;

    /* Count the readers of every value: folding a bias, a Pad or a Softmax away is only
     * right when nothing else reads the value. */
    for (size_t i = 0; i < g->n_node; i++) {
        const Tlonnx__NodeProto *nd = g->node[i];
        for (size_t k = 0; k < nd->n_input; k++)
            if (nd->input[k] && *nd->input[k])
                intern(c, nd->input[k])->uses++;
        for (size_t k = 0; k < nd->n_output; k++)
            if (nd->output[k] && *nd->output[k]) {
                ox_value *v = intern(c, nd->output[k]);
                if (!v->def_node && v->kind == OX_UNSEEN)
                    v->def_node = (uint32_t)i + 1;
            }
    }

    for (size_t i = 0; i < c->nvals; i++)
        c->vals[i].pending = c->vals[i].uses;
    /* Decomposed forms become one layer; then every node the importer cannot map, in one
     * message, before building anything. */
    if ((rc = ox_fuse_scan(c)) || (rc = ox_check_graph(c)))
        return rc;

    for (size_t i = 0; i < g->n_node; i++) {
        const Tlonnx__NodeProto *nd = g->node[i];
        c->node = nd;
        c->node_index = i;
        if (!nd->op_type || !*nd->op_type)
            return ox_fail(c, TLEARN_EFORMAT, "the node has no operator type");
        if (!is_default_domain(nd->domain))
            return ox_fail(c, TLEARN_EUNSUPPORTED, "operators of domain '%.60s' are not "
                           "supported", nd->domain);
        if (c->fuse_of && c->fuse_of[i] == OX_DROPPED)
            continue;
        if (c->fuse_of && c->fuse_of[i]) {
            /* A fused pattern is imported at its last node, all its inputs defined. */
            const size_t *members;
            int nm;
            ox_fuse_nodes(c, i, &members, &nm);
            if (members[nm - 1] != i)
                continue;
            if ((rc = ox_fuse_emit(c, i)))
                return rc;
            for (int k = 0; k < nm; k++)
                release_consumed(c, g->node[members[k]]);
            continue;
        }
        for (size_t k = 0; k < nd->n_input; k++)
            if (nd->input[k] && *nd->input[k] && ox_find(c, nd->input[k])->kind == OX_UNSEEN)
                return ox_fail(c, TLEARN_EFORMAT, "input '%.100s' is not defined before the "
                               "node", nd->input[k]);
        for (size_t k = 0; k < nd->n_output; k++)
            if (nd->output[k] && *nd->output[k] &&
                ox_find(c, nd->output[k])->kind != OX_UNSEEN)
                return ox_fail(c, TLEARN_EFORMAT, "output '%.100s' is already defined",
                               nd->output[k]);
        rc = ox_node(c, nd);
        if (rc)
            return rc;
        release_consumed(c, nd);
        /* Outputs the mapping did not produce (a MaxPool's indices, a Dropout's mask) must
         * have no readers. */
        for (size_t k = 0; k < nd->n_output; k++) {
            if (!nd->output[k] || !*nd->output[k])
                continue;
            ox_value *v = ox_find(c, nd->output[k]);
            if (v->kind == OX_UNSEEN && v->uses)
                return ox_fail(c, TLEARN_EUNSUPPORTED, "output %zu ('%.100s') is read, but "
                               "only the main output of this operator is supported", k,
                               nd->output[k]);
        }
    }
    c->node = NULL;

    if (outv->kind != OX_ACT || outv->layer < 0 || outv->layer != c->m->nlayers - 1 ||
        outv->pad[0] || outv->pad[1] || outv->pad[2] || outv->pad[3])
        return tl_fail(TLEARN_EUNSUPPORTED,
                       "%s: the graph output '%.100s' is not the output of the last layer "
                       "the graph computes", c->fn, outv->name);
    return check_output_shape(c, g->output[0], outv);
}

static void ctx_free(ox_ctx *c)
{
    ox_fuse_free(c);
    for (size_t i = 0; i < c->nconsts; i++)
        ox_const_free(c->consts[i]);
    tl_free(c->consts);
    tl_free(c->vals);
    tl_free(c->table);
}

/* Messages quote names from the file: keep them printable ASCII (and so valid UTF-8 for
 * bindings that decode them), whatever bytes the file holds. */
static void printable_message(int rc)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tlearn_errmsg());
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    tl_fail(rc, "%s", msg);
}

/* ---- unpacking without copying the weights ----
 *
 * protobuf-c copies every bytes field it unpacks: the raw data of the initializers (all of
 * a model's weights) would be held twice. The wire format is walked first: a copy of the
 * message without the initializers' raw_data fields is unpacked (a few kilobytes), and each
 * initializer's raw_data is pointed back at its bytes where they lie (the caller's buffer
 * or the file mapping) until the message is freed. */

typedef struct ox_buf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} ox_buf;

static void buf_put(ox_buf *b, const void *data, size_t len)
{
    if (b->oom || !len)
        return;
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len)
            cap *= 2;
        uint8_t *p = tl_alloc(cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        if (b->n)
            memcpy(p, b->p, b->n);
        tl_free(b->p);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
}

static void buf_varint(ox_buf *b, uint64_t v)
{
    uint8_t t[10];
    size_t k = 0;
    do {
        t[k++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    buf_put(b, t, k);
}

static int rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return 0;
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 1;
    }
    return 0;
}

typedef struct ox_strip {
    ox_raw *raw; /* per initializer, in order: its raw_data (data NULL: none) */
    size_t nraw, capraw;
    int oom;
} ox_strip;

/* Copy the fields of a message of @p level (0 ModelProto, 1 GraphProto, 2 TensorProto of
 * an initializer) from [p, end) to @p out, leaving out raw_data at level 2. 0: malformed. */
static int strip(ox_buf *out, const uint8_t *p, const uint8_t *end, int level, ox_strip *s)
{
    while (p < end) {
        const uint8_t *field = p;
        uint64_t tag, len = 0;
        if (!rd_varint(&p, end, &tag))
            return 0;
        unsigned wire = (unsigned)(tag & 7);
        uint64_t num = tag >> 3;
        switch (wire) {
        case 0:
            if (!rd_varint(&p, end, &len))
                return 0;
            break;
        case 1:
            if (end - p < 8)
                return 0;
            p += 8;
            break;
        case 5:
            if (end - p < 4)
                return 0;
            p += 4;
            break;
        case 2:
            if (!rd_varint(&p, end, &len) || len > (uint64_t)(end - p))
                return 0;
            break;
        default:
            return 0; /* groups: not in ONNX */
        }
        if (wire != 2) {
            buf_put(out, field, (size_t)(p - field));
            continue;
        }
        const uint8_t *body = p, *body_end = p + len;
        p = body_end;
        int nested = (level == 0 && num == 7) || (level == 1 && num == 5);
        if (level == 2 && num == 9) {
            s->raw[s->nraw - 1].data = body;
            s->raw[s->nraw - 1].len = (size_t)len;
            continue;
        }
        if (!nested) {
            buf_put(out, field, (size_t)(p - field));
            continue;
        }
        if (level == 1) { /* a new initializer */
            if (s->nraw == s->capraw) {
                size_t cap = s->capraw ? 2 * s->capraw : 64;
                ox_raw *r = tl_alloc_array(cap, sizeof *r);
                if (!r) {
                    s->oom = 1;
                    return 1;
                }
                if (s->nraw)
                    memcpy(r, s->raw, s->nraw * sizeof *r);
                tl_free(s->raw);
                s->raw = r;
                s->capraw = cap;
            }
            s->raw[s->nraw].data = NULL;
            s->raw[s->nraw++].len = 0;
        }
        ox_buf sub = {0};
        int ok = strip(&sub, body, body_end, level + 1, s);
        if (ok) {
            buf_varint(out, tag);
            buf_varint(out, sub.n);
            buf_put(out, sub.p, sub.n);
        }
        out->oom |= sub.oom;
        tl_free(sub.p);
        if (!ok)
            return 0;
    }
    return 1;
}

/* Point the initializers back at their raw bytes (@p undo 0), or forget them again before
 * protobuf-c frees the message (@p undo 1). */
static void attach_raw(Tlonnx__ModelProto *mp, const ox_strip *s, int undo)
{
    Tlonnx__GraphProto *g = mp->graph;
    for (size_t i = 0; g && i < g->n_initializer && i < s->nraw; i++) {
        if (!s->raw[i].data)
            continue;
        Tlonnx__TensorProto *t = g->initializer[i];
        t->has_raw_data = !undo;
        t->raw_data.data = undo ? NULL : (uint8_t *)(uintptr_t)s->raw[i].data;
        t->raw_data.len = undo ? 0 : s->raw[i].len;
    }
}

static int unpack(const char *fn, const void *data, size_t len, Tlonnx__ModelProto **mp,
                  ox_strip *s)
{
    memset(s, 0, sizeof *s);
    *mp = NULL;
    if (len > OX_MAX_FILE)
        return tl_fail(TLEARN_EFORMAT, "%s: %zu bytes is over the 2 GiB protobuf limit", fn, len);
    ox_buf b = {0};
    int ok = strip(&b, data, (const uint8_t *)data + len, 0, s);
    if (b.oom || s->oom) {
        tl_free(b.p);
        tl_free(s->raw);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    if (ok) {
        *mp = tlonnx__model_proto__unpack(NULL, b.n, b.p ? b.p : (const uint8_t *)"");
        if (*mp && (!(*mp)->graph ? s->nraw != 0 : (*mp)->graph->n_initializer != s->nraw)) {
            tlonnx__model_proto__free_unpacked(*mp, NULL);
            *mp = NULL;
        }
    }
    tl_free(b.p);
    if (!*mp) {
        tl_free(s->raw);
        s->raw = NULL;
        return tl_fail(TLEARN_EFORMAT, "%s: not a valid ONNX protobuf (truncated, corrupt or "
                       "not ONNX)", fn);
    }
    attach_raw(*mp, s, 0);
    return TLEARN_OK;
}

/* Build the model from an unpacked message, which is freed with @p s. The raw bytes stay
 * where they are until then; pages of @p map may be dropped once read. */
static int import(const char *fn, tlearn_model **out, Tlonnx__ModelProto *mp, ox_strip *s,
                  const uint8_t *map, size_t map_len)
{
    ox_ctx c;
    memset(&c, 0, sizeof c);
    c.fn = fn;
    c.map = map;
    c.map_len = map_len;
    int rc = walk(&c, mp);
    if (rc) {
        tlearn_model_destroy(&c.m);
        printable_message(rc);
    } else {
        *out = c.m;
        tl_clear_error();
    }
    ctx_free(&c);
    attach_raw(mp, s, 1);
    tl_free(s->raw);
    tlonnx__model_proto__free_unpacked(mp, NULL);
    return rc;
}

int tlearn_model_import_onnx_buffer(tlearn_model **out, const void *data, size_t len)
{
    static const char fn[] = "tlearn_model_import_onnx_buffer";
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (!data)
        return tl_fail(TLEARN_EINVAL, "%s: data is NULL", fn);
    if (len == 0)
        return tl_fail(TLEARN_EINVAL, "%s: len is 0", fn);
    Tlonnx__ModelProto *mp;
    ox_strip s;
    int rc = unpack(fn, data, len, &mp, &s);
    return rc ? rc : import(fn, out, mp, &s, NULL, 0);
}

/* The file is mapped, not read: its pages come in as the weights are converted and go
 * again right after (ox_tensor_read_floats), so the peak is about the layers' size. */
int tlearn_model_import_onnx(tlearn_model **out, const char *path)
{
    static const char fn[] = "tlearn_model_import_onnx";
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (!path)
        return tl_fail(TLEARN_EINVAL, "%s: path is NULL", fn);
    /* The checkpoint readers' open: a FIFO or device is refused instead of blocking. */
    int fd;
    uint64_t size;
    int rc = tl_file_open(fn, path, &fd, &size);
    if (rc)
        return rc;
    if (size == 0 || size > OX_MAX_FILE) {
        close(fd);
        return tl_fail(TLEARN_EFORMAT, "%s: '%s' has %lld bytes; an ONNX model has 1 byte to "
                       "2 GiB", fn, path, (long long)size);
    }
    size_t len = (size_t)size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return tl_fail(TLEARN_EIO, "%s: cannot map '%s': %s", fn, path, strerror(e));
    Tlonnx__ModelProto *mp;
    ox_strip s;
    rc = unpack(fn, map, len, &mp, &s);
    if (!rc)
        rc = import(fn, out, mp, &s, map, len);
    munmap(map, len);
    return rc;
}
