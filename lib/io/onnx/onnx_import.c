/* ONNX import: the public entry points, parsing, the value table and the graph walk.
 * Operators are mapped in onnx_ops.c, tensors converted in onnx_tensor.c. Whatever fails,
 * the half-built model is destroyed and *out stays NULL. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "onnx_internal.h"
#include "../io.h"

/* Opsets whose operator semantics the importer implements. */
#define OX_OPSET_MIN 11
#define OX_OPSET_MAX 17
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

/* The single graph input that is not an initializer gives the model's input shape:
 * (N, C, H, W) or (N, F); N may be symbolic, the others must be fixed. */
static int read_input(ox_ctx *c)
{
    const Tlonnx__GraphProto *g = c->g;
    const Tlonnx__ValueInfoProto *in = NULL;
    for (size_t i = 0; i < g->n_input; i++) {
        const char *name = g->input[i]->name;
        if (!name || !*name)
            return tl_fail(TLEARN_EFORMAT, "%s: graph input %zu has no name", c->fn, i);
        ox_value *v = ox_find(c, name);
        if (v && v->kind == OX_CONST)
            continue; /* an initializer listed as an input (older exporters) */
        if (in)
            return tl_fail(TLEARN_EUNSUPPORTED,
                           "%s: the graph has several inputs ('%.100s', '%.100s'); one is "
                           "supported", c->fn, in->name, name);
        in = g->input[i];
    }
    if (!in)
        return tl_fail(TLEARN_EFORMAT, "%s: the graph has no input", c->fn);
    const Tlonnx__TypeProto__Tensor *tt = in->type ? in->type->tensor_type : NULL;
    if (!tt || !tt->shape)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: graph input '%.100s' is not a tensor of known "
                       "rank", c->fn, in->name);
    if (tt->has_elem_type && tt->elem_type != 1)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: graph input '%.100s' has element type %d; "
                       "FLOAT (1) is supported", c->fn, in->name, (int)tt->elem_type);
    size_t rank = tt->shape->n_dim;
    if (rank != 2 && rank != 4)
        return tl_fail(TLEARN_EUNSUPPORTED, "%s: graph input '%.100s' has rank %zu; (N, C, H, W) "
                       "or (N, F) are supported", c->fn, in->name, rank);
    int64_t d[4] = {0, 1, 1, 1};
    for (size_t i = 0; i < rank; i++) {
        const Tlonnx__TensorShapeProto__Dimension *dim = tt->shape->dim[i];
        int fixed = dim->has_dim_value && dim->dim_value > 0;
        if (i == 0) {
            c->fixed_batch = fixed ? dim->dim_value : 0;
            continue;
        }
        if (!fixed || dim->dim_value > INT32_MAX)
            return tl_fail(TLEARN_EUNSUPPORTED,
                           "%s: dimension %zu of graph input '%.100s' is not a fixed positive "
                           "size; export with a fixed input size (only the batch may be "
                           "dynamic)", c->fn, i, in->name);
        d[i] = dim->dim_value;
    }
    int rc = tlearn_model_create(&c->m, (int)d[1], (int)d[2], (int)d[3]);
    if (rc)
        return tl_fail(rc == TLEARN_EINVAL ? TLEARN_EUNSUPPORTED : rc,
                       "%s: graph input '%.100s': %s", c->fn, in->name, tlearn_errmsg());
    ox_value *v = intern(c, in->name);
    v->kind = OX_ACT;
    v->layer = -1;
    v->rank = (int)rank;
    v->shape = c->m->inputs[0].shape;
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
    if (rank != (size_t)v->rank)
        return tl_fail(TLEARN_EFORMAT, "%s: the graph output '%.100s' has rank %zu, the layers "
                       "compute rank %d", c->fn, vi->name, rank, v->rank);
    const int have[4] = {0, v->shape.c, v->shape.h, v->shape.w};
    for (size_t i = 1; i < rank; i++) {
        const Tlonnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d->has_dim_value && d->dim_value != have[i])
            return tl_fail(TLEARN_EFORMAT, "%s: dimension %zu of the graph output '%.100s' is "
                           "%lld, the layers compute %d", c->fn, i, vi->name,
                           (long long)d->dim_value, have[i]);
    }
    return TLEARN_OK;
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
    rc = read_input(c);
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
            if (nd->output[k] && *nd->output[k])
                intern(c, nd->output[k]);
    }

    for (size_t i = 0; i < g->n_node; i++) {
        const Tlonnx__NodeProto *nd = g->node[i];
        c->node = nd;
        c->node_index = i;
        if (!nd->op_type || !*nd->op_type)
            return ox_fail(c, TLEARN_EFORMAT, "the node has no operator type");
        if (!is_default_domain(nd->domain))
            return ox_fail(c, TLEARN_EUNSUPPORTED, "operators of domain '%.60s' are not "
                           "supported", nd->domain);
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
        outv->pad_h || outv->pad_w)
        return tl_fail(TLEARN_EUNSUPPORTED,
                       "%s: the graph output '%.100s' is not the output of the last layer "
                       "the graph computes", c->fn, outv->name);
    return check_output_shape(c, g->output[0], outv);
}

static void ctx_free(ox_ctx *c)
{
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

static int unpack(const char *fn, const void *data, size_t len, Tlonnx__ModelProto **mp)
{
    if (len > OX_MAX_FILE)
        return tl_fail(TLEARN_EFORMAT, "%s: %zu bytes is over the 2 GiB protobuf limit", fn, len);
    /* protobuf-c copies what it keeps: @p data may be freed afterwards. */
    *mp = tlonnx__model_proto__unpack(NULL, len, data);
    if (!*mp)
        return tl_fail(TLEARN_EFORMAT, "%s: not a valid ONNX protobuf (truncated, corrupt or "
                       "not ONNX)", fn);
    return TLEARN_OK;
}

/* Build the model from an unpacked message, which is freed. */
static int import(const char *fn, tlearn_model **out, Tlonnx__ModelProto *mp)
{
    ox_ctx c;
    memset(&c, 0, sizeof c);
    c.fn = fn;
    int rc = walk(&c, mp);
    if (rc) {
        tlearn_model_destroy(&c.m);
        printable_message(rc);
    } else {
        *out = c.m;
        tl_clear_error();
    }
    ctx_free(&c);
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
    int rc = unpack(fn, data, len, &mp);
    return rc ? rc : import(fn, out, mp);
}

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
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory opening '%s'", fn, path);
    }
    if (size == 0 || size > OX_MAX_FILE) {
        fclose(f);
        return tl_fail(TLEARN_EFORMAT, "%s: '%s' has %lld bytes; an ONNX model has 1 byte to "
                       "2 GiB", fn, path, (long long)size);
    }
    size_t len = (size_t)size;
    void *buf = tl_alloc(len);
    if (!buf) {
        fclose(f);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory reading %zu bytes", fn, len);
    }
    size_t got = fread(buf, 1, len, f);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (got != len) {
        tl_free(buf);
        return tl_fail(TLEARN_EIO, "%s: reading '%s' stopped at byte %zu of %zu%s%s", fn, path,
                       got, len, err ? ": " : "", err ? strerror(err) : "");
    }
    /* Free the file's bytes before building: the peak holds one copy fewer. */
    Tlonnx__ModelProto *mp;
    rc = unpack(fn, buf, len, &mp);
    tl_free(buf);
    return rc ? rc : import(fn, out, mp);
}
