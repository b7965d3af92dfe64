/* Writing checkpoints (doc/checkpoint-format.md): tlearn_model_save and
 * tlearn_model_save_buffer, one writer behind both (a sink: the temporary file or a buffer). */
#include <string.h>
#include <zlib.h>

#include "checkpoint.h"

/* ------------------------------------------------------------------------------------ */
/* Writing. The small sections are built in memory, each array only as a fixed-size
 * reference to be filled in; the arrays are then written from the model's own memory, a
 * chunk at a time, straight into DATA (the temporary file of a save, or a buffer), so that
 * a save never holds a second copy of the model. */

typedef struct pending {
    const float *x;  /* the array, owned by the model */
    size_t n;
    tl_wbuf *dir;    /* the section holding its reference ... */
    size_t at;       /* ... at this offset */
} pending;

typedef struct writer {
    tl_wbuf sec[S_KINDS];
    pending *blobs;
    size_t nblobs, cap;
    int oom;
    int level;           /* zlib level, 0: raw */
    uint64_t ewc_arrays; /* counted by ewc_array() */
} writer;

enum { BLOB_REF = 32 }; /* encoding u32, crc u32, offset u64, stored_size u64, numel u64 */

static void put_blob(writer *w, tl_wbuf *dir, const float *x, size_t n)
{
    if (w->nblobs == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        pending *p = tl_alloc_array(cap, sizeof *p);
        if (!p) {
            w->oom = 1;
            return;
        }
        if (w->nblobs)
            memcpy(p, w->blobs, w->nblobs * sizeof *p);
        tl_free(w->blobs);
        w->blobs = p;
        w->cap = cap;
    }
    w->blobs[w->nblobs++] = (pending){x, n, dir, dir->len};
    tl_wb_zeros(dir, BLOB_REF);
}

static int ewc_array(const char *name, const float *data, size_t numel, void *user)
{
    writer *w = user;
    tl_wbuf *b = &w->sec[S_EWC];
    tl_wb_str(b, name);
    put_blob(w, b, data, numel);
    w->ewc_arrays++;
    return 0;
}

static int write_ewc(writer *w, const tlearn_model *m)
{
    size_t len = 0, cap = 4096;
    char *text = NULL;
    int rc;
    for (;;) {
        text = tl_alloc(cap);
        if (!text)
            return tl_fail(TLEARN_ENOMEM, "tlearn_model_save: out of memory");
        rc = tl_ewc_describe(m, text, cap, &len);
        if (rc == TLEARN_OK && len < cap)
            break;
        tl_free(text);
        if (len < cap || cap > ((size_t)1 << 30))
            return rc ? tl_fail_prefix(rc, "tlearn_model_save: EWC state: ")
                      : tl_fail(TLEARN_ENOMEM, "tlearn_model_save: EWC text too long");
        cap = len + 1;
    }
    tl_wbuf *b = &w->sec[S_EWC];
    tl_wb_u64(b, len);
    tl_wb_bytes(b, text, len);
    tl_free(text);
    size_t count_at = b->len;
    tl_wb_u64(b, 0); /* patched once the arrays are counted */
    rc = tl_ewc_visit(m, ewc_array, w);
    if (rc)
        return tl_fail_prefix(rc, "tlearn_model_save: EWC state: ");
    if (!b->oom)
        tl_put_u64(b->p + count_at, w->ewc_arrays);
    return TLEARN_OK;
}

static int build(writer *w, const tlearn_model *m, const tlearn_optim *o, unsigned flags)
{
    int inference = flags & TLEARN_SAVE_INFERENCE;
    /* MODEL */
    tl_wbuf *b = &w->sec[S_MODEL];
    /* Round 1's graph (one float32 image input named "input", the last layer as output)
     * stays in MODEL alone; anything else goes to GRAPH, and MODEL's shape is then 0,
     * which a 1.0 reader refuses instead of misreading. */
    const tl_model_input *in = m->inputs;
    int round1 = m->ninputs == 1 && in->dtype == TLEARN_DTYPE_FLOAT32 && in->shape.rank == 3 &&
                 strcmp(in->name, "input") == 0 && m->noutputs == 0;
    for (int i = 0; i < 3; i++)
        tl_wb_u32(b, round1 ? (uint32_t)in->shape.d[i] : 0);
    if (!round1) {
        tl_wbuf *g = &w->sec[S_GRAPH];
        tl_wb_u32(g, (uint32_t)m->ninputs);
        for (int k = 0; k < m->ninputs; k++) {
            tl_wb_str(g, in[k].name);
            tl_wb_u32(g, (uint32_t)in[k].dtype);
            tl_wb_u32(g, (uint32_t)in[k].shape.rank);
            for (int i = 0; i < in[k].shape.rank; i++)
                tl_wb_u32(g, (uint32_t)in[k].shape.d[i]);
        }
        tl_wb_u32(g, (uint32_t)m->noutputs);
        for (int k = 0; k < m->noutputs; k++)
            tl_wb_u32(g, (uint32_t)m->outputs[k]);
    }
    tl_wb_u32(b, (uint32_t)m->threads);
    tl_wb_u64(b, m->seed);
    for (int i = 0; i < 4; i++)
        tl_wb_u64(b, m->rng.s[i]);
    tl_wb_u32(b, (uint32_t)m->training);
    tl_wb_u32(b, (uint32_t)m->loss_kind);
    tl_wb_u32(b, (uint32_t)tl_ck_next_input_to_file(m->next_input));
    /* LAYERS and TENSORS */
    b = &w->sec[S_LAYERS];
    tl_wbuf *t = &w->sec[S_TENSORS];
    tl_wb_u64(b, (uint64_t)m->nlayers);
    uint64_t ntensors = 0;
    tl_wb_u64(t, 0); /* patched below */
    for (int i = 0; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        int ia[TL_MAX_IARGS], ni = 0, nf = 0;
        float fa[TL_MAX_FARGS];
        if (L->ops->arguments)
            L->ops->arguments(L, ia, &ni, fa, &nf);
        tl_wb_str(b, L->ops->kind_name);
        tl_wb_str(b, L->name);
        tl_wb_u64(b, (uint64_t)L->ninputs);
        for (int k = 0; k < L->ninputs; k++)
            tl_wb_u32(b, (uint32_t)(int32_t)L->input[k]);
        tl_wb_u64(b, (uint64_t)ni);
        for (int k = 0; k < ni; k++)
            tl_wb_u32(b, (uint32_t)(int32_t)ia[k]);
        tl_wb_u64(b, (uint64_t)nf);
        for (int k = 0; k < nf; k++)
            tl_wb_f32(b, fa[k]);
        for (int p = 0; p < L->nparam; p++) {
            char name[2 * TL_NAME_MAX];
            tl_ck_tensor_name(name, sizeof name, L, p);
            const tl_tensor *x = &L->param[p].t;
            tl_wb_str(t, name);
            tl_wb_u32(t, (uint32_t)L->param[p].is_buffer);
            tl_wb_u64(t, (uint64_t)x->ndim);
            for (int d = 0; d < x->ndim; d++)
                tl_wb_u64(t, (uint64_t)x->dims[d]);
            put_blob(w, t, x->data, x->numel);
            ntensors++;
        }
    }
    if (!t->oom)
        tl_put_u64(t->p, ntensors);
    /* METADATA */
    b = &w->sec[S_METADATA];
    tl_wb_u64(b, (uint64_t)m->nmeta);
    for (int i = 0; i < m->nmeta; i++) {
        tl_wb_str(b, m->meta_keys[i]);
        tl_wb_str(b, m->meta_values[i]);
    }
    if (inference)
        return TLEARN_OK;
    if (o) {
        b = &w->sec[S_OPTIMIZER];
        tl_wb_u32(b, (uint32_t)o->kind);
        tl_wb_u32(b, (uint32_t)o->nesterov);
        const double v[] = {o->lr, o->momentum, o->dampening, o->weight_decay, o->beta1,
                            o->beta2, o->eps, o->clip_norm};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
            tl_wb_f64(b, v[i]);
        if (o->sched) { /* SCHEDULE (1.1): the attached schedule and its position */
            const tlearn_sched *s = &o->sched->cfg;
            b = &w->sec[S_SCHEDULE];
            tl_wb_u32(b, (uint32_t)s->kind);
            tl_wb_u32(b, TL_SCHED_NPARAM);
            for (int p = 1; p <= TL_SCHED_NPARAM; p++)
                tl_wb_f64(b, s->p[p]);
            tl_wb_u64(b, (uint64_t)s->nmile);
            for (int i = 0; i < s->nmile; i++)
                tl_wb_u64(b, (uint64_t)s->mile[i]);
            tl_wb_u64(b, (uint64_t)o->sched->t);
        }
    }
    /* OPTSTATE: every trainable parameter that has optimizer state */
    b = &w->sec[S_OPTSTATE];
    uint64_t nopt = 0;
    tl_wb_u64(b, 0);
    for (int i = 0; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        for (int p = 0; p < L->nparam; p++) {
            const tl_slot *s = &m->lstate[i].slot[p];
            if (!tl_param_trains(m, i, p) || s->opt_kind == 0)
                continue;
            char name[2 * TL_NAME_MAX];
            tl_ck_tensor_name(name, sizeof name, L, p);
            tl_wb_str(b, name);
            tl_wb_u32(b, (uint32_t)s->opt_kind);
            tl_wb_u32(b, (s->m1 ? 1u : 0u) | (s->m2 ? 2u : 0u));
            tl_wb_u64(b, (uint64_t)s->step);
            if (s->m1)
                put_blob(w, b, s->m1, L->param[p].t.numel);
            if (s->m2)
                put_blob(w, b, s->m2, L->param[p].t.numel);
            nopt++;
        }
    }
    if (!b->oom)
        tl_put_u64(b->p, nopt);
    /* FREEZE */
    b = &w->sec[S_FREEZE];
    tl_wb_u32(b, (uint32_t)m->bn_stats_frozen);
    tl_wb_u64(b, (uint64_t)m->nlayers);
    for (int i = 0; i < m->nlayers; i++) {
        tl_wb_u32(b, (uint32_t)tl_frozen_pack(&m->lstate[i]));
        tl_wb_f32(b, m->lstate[i].lr_scale);
        tl_wb_u32(b, (uint32_t)m->lstate[i].from_pretrained);
        tl_wb_u32(b, (uint32_t)m->layers[i]->use_running_stats);
    }
    /* DOMAIN (1.1): per-output losses, discrepancy terms, MMD bandwidths, TENT's snapshot */
    tl_da_state d;
    if (tl_da_export(m, &d)) {
        b = &w->sec[S_DOMAIN];
        tl_wb_u32(b, (uint32_t)d.noutputs);
        for (int k = 0; k < d.noutputs; k++) {
            tl_wb_u32(b, (uint32_t)d.loss[k]);
            tl_wb_f32(b, d.weight[k]);
        }
        tl_wb_u32(b, (uint32_t)d.nterms);
        for (int t = 0; t < d.nterms; t++) {
            tl_wb_str(b, d.term_layer[t]);
            tl_wb_u32(b, (uint32_t)d.term_kind[t]);
            tl_wb_f32(b, d.term_weight[t]);
        }
        tl_wb_u32(b, (uint32_t)d.nmult);
        for (int i = 0; i < d.nmult; i++)
            tl_wb_f32(b, d.mult[i]);
        tl_wb_u32(b, (uint32_t)d.tent);
        if (d.tent) {
            tl_wb_u64(b, (uint64_t)d.tent_layers);
            for (int i = 0; i < d.tent_layers; i++)
                tl_wb_u32(b, (uint32_t)d.tent_frozen[i]);
            put_blob(w, b, d.tent_saved, d.tent_floats);
        }
    }
    if (m->ewc && tl_ewc_active(m))
        return write_ewc(w, m);
    return TLEARN_OK;
}

int tl_io_check_model_values(const char *fn, const tlearn_model *m)
{
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            const tl_param *P = &m->layers[i]->param[p];
            char what[2 * TL_NAME_MAX + 16];
            snprintf(what, sizeof what, "tensor '%s.%s'", m->layers[i]->name, P->name);
            int rc = tl_check_values(TLEARN_ENONFINITE, fn, what, P->t.data, P->t.numel, 0);
            if (rc)
                return rc;
        }
    return TLEARN_OK;
}

static const int WRITE_ORDER[] = {S_MODEL, S_GRAPH, S_LAYERS, S_TENSORS, S_OPTIMIZER,
                                  S_SCHEDULE, S_OPTSTATE, S_FREEZE, S_EWC, S_DOMAIN, S_METADATA,
                                  S_DATA};

/* Where the bytes go: a growing buffer, or the temporary file of a save. */
typedef struct sink {
    const char *fn;
    tl_wbuf *buf;
    tl_afile *file;
    int rc;
} sink;

static void sink_write(sink *s, uint64_t off, const void *p, size_t n)
{
    if (s->rc || n == 0)
        return;
    if (s->file) {
        s->rc = tl_afile_pwrite(s->fn, s->file, p, n, off);
        return;
    }
    tl_wbuf *b = s->buf;
    if (off + n > b->len)
        tl_wb_zeros(b, (size_t)(off + n - b->len));
    if (b->oom) {
        s->rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", s->fn);
        return;
    }
    memcpy(b->p + off, p, n);
}

enum { IN_CHUNK = 1 << 20, OUT_CHUNK = 1 << 18 };

typedef struct emit {
    sink *s;
    uint64_t base;      /* DATA's offset in the file */
    uint64_t len;       /* DATA written so far */
    uint32_t crc;       /* of DATA so far */
    unsigned char *in;  /* IN_CHUNK: little-endian bytes of the array */
    unsigned char *out; /* OUT_CHUNK: zlib output */
} emit;

static void emit_bytes(emit *e, const unsigned char *p, size_t n, uint32_t *blob_crc)
{
    sink_write(e->s, e->base + e->len, p, n);
    e->crc = (uint32_t)crc32_z(e->crc, p, n);
    *blob_crc = (uint32_t)crc32_z(*blob_crc, p, n);
    e->len += n;
}

/* Deflate x at the end of DATA. Returns 1 when stored compressed (*size, *crc set), 0 when
 * it would not be smaller than raw: DATA is then left as it was (the fewer than raw bytes
 * written past its end are all overwritten by the raw copy). -1 with the sink's rc set. */
static int emit_zlib(emit *e, int level, const float *x, size_t n, uint64_t *size,
                     uint32_t *crc)
{
    size_t raw = n * 4;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit(&zs, level) != Z_OK) {
        e->s->rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", e->s->fn);
        return -1;
    }
    emit saved = *e;
    uint32_t bcrc = 0;
    int z = Z_OK, smaller = 1;
    for (size_t done = 0; (z == Z_OK || z == Z_BUF_ERROR) && smaller && !e->s->rc;) {
        size_t k = raw - done < IN_CHUNK ? raw - done : IN_CHUNK;
        tl_floats_to_le(e->in, x + done / 4, k / 4);
        done += k;
        zs.next_in = e->in;
        zs.avail_in = (uInt)k;
        int flush = done == raw ? Z_FINISH : Z_NO_FLUSH;
        do {
            zs.next_out = e->out;
            zs.avail_out = OUT_CHUNK;
            z = deflate(&zs, flush);
            size_t got = OUT_CHUNK - zs.avail_out;
            if (e->len - saved.len + got >= raw) {
                smaller = 0;
                break;
            }
            emit_bytes(e, e->out, got, &bcrc);
        } while (z == Z_OK && (zs.avail_out == 0 || zs.avail_in > 0 || flush == Z_FINISH) &&
                 z != Z_STREAM_END && !e->s->rc);
    }
    deflateEnd(&zs);
    if (e->s->rc)
        return -1;
    if (!smaller || z != Z_STREAM_END) {
        *e = saved;
        return 0;
    }
    *size = e->len - saved.len;
    *crc = bcrc;
    return 1;
}

/* Every pending array into DATA, its reference filled in. */
static int emit_arrays(writer *w, emit *e)
{
    static const unsigned char zeros[64];
    for (size_t i = 0; i < w->nblobs && !e->s->rc; i++) {
        const pending *b = &w->blobs[i];
        size_t raw = b->n * 4;
        uint32_t enc = 0, crc = 0;
        uint64_t off = e->len, size = raw;
        int z = w->level > 0 && raw > 0 ? emit_zlib(e, w->level, b->x, b->n, &size, &crc) : 0;
        if (z < 0)
            break;
        if (z == 1) {
            enc = 1;
        } else {
            uint32_t ignored = 0;
            emit_bytes(e, zeros, (size_t)((64 - e->len % 64) % 64), &ignored);
            off = e->len;
            for (size_t done = 0; done < raw && !e->s->rc;) {
                size_t k = raw - done < IN_CHUNK ? raw - done : IN_CHUNK;
                tl_floats_to_le(e->in, b->x + done / 4, k / 4);
                emit_bytes(e, e->in, k, &crc);
                done += k;
            }
        }
        unsigned char *ref = b->dir->p + b->at;
        tl_put_u32(ref, enc);
        tl_put_u32(ref + 4, crc);
        tl_put_u64(ref + 8, off);
        tl_put_u64(ref + 16, size);
        tl_put_u64(ref + 24, b->n);
    }
    return e->s->rc;
}

/* Header, table, sections and DATA into the sink; *total is the file's size. */
static int assemble(writer *w, unsigned flags, sink *s, uint64_t *total)
{
    int present[S_KINDS] = {0};
    uint64_t nsec = 0, off[S_KINDS] = {0};
    for (size_t i = 0; i < sizeof WRITE_ORDER / sizeof WRITE_ORDER[0]; i++) {
        int k = WRITE_ORDER[i];
        /* required sections always; optional ones when they have content */
        int required = k == S_MODEL || k == S_LAYERS || k == S_TENSORS || k == S_DATA ||
                       k == S_METADATA ||
                       (!(flags & TLEARN_SAVE_INFERENCE) && (k == S_OPTSTATE || k == S_FREEZE));
        present[k] = required || w->sec[k].len > 0;
        nsec += (uint64_t)present[k];
    }
    /* The layout is known before any array is written: references have a fixed size. */
    uint64_t pos = CK_HEADER + nsec * CK_ENTRY;
    for (size_t i = 0; i < sizeof WRITE_ORDER / sizeof WRITE_ORDER[0]; i++) {
        int k = WRITE_ORDER[i];
        if (!present[k])
            continue;
        size_t align = k == S_DATA ? 64 : 8;
        pos = (pos + align - 1) / align * align;
        off[k] = pos;
        pos += w->sec[k].len; /* DATA (last) is empty here */
    }
    emit e = {s, off[S_DATA], 0, 0, tl_alloc(IN_CHUNK), tl_alloc(OUT_CHUNK)};
    if (!e.in || !e.out)
        s->rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", s->fn);
    else
        emit_arrays(w, &e);
    tl_free(e.in);
    tl_free(e.out);
    if (s->rc)
        return s->rc;
    unsigned char head[CK_HEADER + CK_MAX_SECTIONS * CK_ENTRY];
    memset(head, 0, sizeof head);
    uint64_t i_ent = 0;
    for (size_t i = 0; i < sizeof WRITE_ORDER / sizeof WRITE_ORDER[0]; i++) {
        int k = WRITE_ORDER[i];
        if (!present[k])
            continue;
        uint64_t len = k == S_DATA ? e.len : w->sec[k].len;
        uint32_t crc = k == S_DATA ? e.crc : (uint32_t)crc32_z(0L, w->sec[k].p, (size_t)len);
        if (k != S_DATA)
            sink_write(s, off[k], w->sec[k].p, (size_t)len);
        unsigned char *ent = head + CK_HEADER + i_ent++ * CK_ENTRY;
        tl_put_u32(ent, (uint32_t)k);
        tl_put_u64(ent + 8, off[k]);
        tl_put_u64(ent + 16, len);
        tl_put_u32(ent + 24, crc);
    }
    *total = off[S_DATA] + e.len;
    memcpy(head, TL_CK_MAGIC, 8);
    head[8] = CK_MAJOR;
    head[10] = CK_MINOR;
    tl_put_u32(head + 12, (flags & TLEARN_SAVE_INFERENCE) ? CK_FLAG_INFERENCE : 0);
    tl_put_u64(head + 16, *total);
    tl_put_u64(head + 24, nsec);
    tl_put_u64(head + 32, CK_HEADER);
    tl_put_u32(head + 40, (uint32_t)crc32(0L, head + CK_HEADER, (uInt)(nsec * CK_ENTRY)));
    tl_put_u32(head + 60, (uint32_t)crc32(0L, head, 60));
    sink_write(s, 0, head, (size_t)(CK_HEADER + nsec * CK_ENTRY));
    return s->rc;
}

/* Checks, then the small sections; the arrays stay pending. */
static int prepare(const char *fn, writer *w, const tlearn_model *m, const tlearn_optim *o,
                   unsigned flags)
{
    memset(w, 0, sizeof *w);
    unsigned level = (flags >> 8) & 15u;
    if ((flags & ~(TLEARN_SAVE_INFERENCE | (15u << 8))) || level > 9)
        return tl_fail(TLEARN_EINVAL, "%s: flags 0x%x: expected TLEARN_SAVE_* bits and a "
                       "compression level 0..9", fn, flags);
    int rc = tl_io_check_model_values(fn, m);
    if (rc)
        return rc;
    w->level = (int)level;
    rc = build(w, m, o, flags);
    for (int k = 0; !rc && k < S_KINDS; k++)
        if (w->sec[k].oom || w->oom)
            rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    return rc;
}

static void writer_free(writer *w)
{
    for (int k = 0; k < S_KINDS; k++)
        tl_wb_free(&w->sec[k]);
    tl_free(w->blobs);
}

int tl_checkpoint_save_buffer(const char *fn, const tlearn_model *m, const tlearn_optim *o,
                              unsigned flags, tl_wbuf *out)
{
    memset(out, 0, sizeof *out);
    writer w;
    int rc = prepare(fn, &w, m, o, flags);
    uint64_t total = 0;
    sink s = {fn, out, NULL, 0};
    if (!rc) {
        /* The size when every array is stored raw bounds the result (an array is kept
         * compressed only when smaller): reserved once, so appends never move the bytes
         * and the caller gets no doubling's slack. */
        uint64_t bound = CK_HEADER + (uint64_t)S_KINDS * (CK_ENTRY + 64);
        for (int k = 0; k < S_KINDS; k++)
            bound += w.sec[k].len;
        for (size_t i = 0; i < w.nblobs && bound < SIZE_MAX; i++)
            bound += 64 + 4 * (uint64_t)w.blobs[i].n;
        if (bound < SIZE_MAX)
            tl_wb_reserve(out, (size_t)bound);
        rc = assemble(&w, flags, &s, &total);
    }
    writer_free(&w);
    if (rc) {
        tl_wb_free(out);
        return rc;
    }
    /* A compressed result leaves the reservation's tail unwritten: those pages are never
     * made resident, so it is not copied into a tighter buffer (which would double the
     * peak). */
    out->len = (size_t)total;
    return TLEARN_OK;
}

int tlearn_model_save_buffer(const tlearn_model *m, const tlearn_optim *o, unsigned flags,
                             void **data, size_t *size)
{
    static const char fn[] = "tlearn_model_save_buffer";
    int rc = tl_io_out_args(fn, m, data, size);
    tl_wbuf b;
    if (!rc)
        rc = tl_checkpoint_save_buffer(fn, m, o, flags, &b);
    if (!rc) {
        *data = b.p;
        *size = b.len;
    }
    return rc;
}

int tlearn_model_save(const tlearn_model *m, const tlearn_optim *o, const char *path,
                      unsigned flags)
{
    static const char fn[] = "tlearn_model_save";
    TL_CHECK_MODEL(fn, m);
    if (!path || !*path)
        return tl_fail(TLEARN_EINVAL, "%s: path is %s", fn, !path ? "NULL" : "empty");
    writer w;
    int rc = prepare(fn, &w, m, o, flags);
    tl_afile f;
    uint64_t total = 0;
    if (!rc && !(rc = tl_afile_begin(fn, path, &f))) {
        sink s = {fn, NULL, &f, 0};
        rc = assemble(&w, flags, &s, &total);
        rc = rc ? (tl_afile_abort(&f), rc) : tl_afile_commit(fn, &f, total);
    }
    writer_free(&w);
    return rc;
}
