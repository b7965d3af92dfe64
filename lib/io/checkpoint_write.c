/* Writing checkpoints (doc/checkpoint-format.md): tlearn_model_save. */
#include <string.h>
#include <zlib.h>

#include "checkpoint.h"

/* ------------------------------------------------------------------------------------ */
/* Writing. Sections are built in memory, then laid out behind the header and table. */

typedef struct writer {
    tl_wbuf sec[S_KINDS];
    tl_wbuf data;
    int level;           /* zlib level, 0: raw */
    uint64_t ewc_arrays; /* counted by ewc_array() */
} writer;

static void put_blob(writer *w, tl_wbuf *dir, const float *x, size_t n)
{
    size_t raw = n * 4;
    unsigned char *z = NULL;
    uLongf zlen = 0;
    if (w->level > 0 && raw > 0) {
        zlen = compressBound((uLong)raw);
        unsigned char *tmp = tl_alloc(raw);
        z = tl_alloc(zlen);
        if (!tmp || !z) {
            tl_free(tmp);
            tl_free(z);
            w->data.oom = 1;
            return;
        }
        tl_floats_to_le(tmp, x, n);
        if (compress2(z, &zlen, tmp, (uLong)raw, w->level) != Z_OK || zlen >= raw) {
            tl_free(z); /* not smaller: stored raw */
            z = NULL;
        }
        tl_free(tmp);
    }
    uint32_t enc = 0;
    size_t off, size;
    if (z) {
        enc = 1;
        off = w->data.len;
        size = zlen;
        tl_wb_bytes(&w->data, z, size);
        tl_free(z);
    } else {
        tl_wb_align(&w->data, 64);
        off = w->data.len;
        size = raw;
        tl_wb_zeros(&w->data, raw);
        if (!w->data.oom)
            tl_floats_to_le(w->data.p + off, x, n);
    }
    uint32_t crc = w->data.oom ? 0 : (uint32_t)crc32_z(0L, w->data.p + off, size);
    tl_wb_u32(dir, enc);
    tl_wb_u32(dir, crc);
    tl_wb_u64(dir, off);
    tl_wb_u64(dir, size);
    tl_wb_u64(dir, n);
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
        if (m->lstate[i].frozen)
            continue;
        for (int p = 0; p < L->nparam; p++) {
            const tl_slot *s = &m->lstate[i].slot[p];
            if (L->param[p].is_buffer || s->opt_kind == 0)
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
        tl_wb_u32(b, (uint32_t)m->lstate[i].frozen);
        tl_wb_f32(b, m->lstate[i].lr_scale);
        tl_wb_u32(b, (uint32_t)m->lstate[i].from_pretrained);
        tl_wb_u32(b, (uint32_t)m->layers[i]->use_running_stats);
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
                                  S_SCHEDULE, S_OPTSTATE, S_FREEZE, S_EWC, S_METADATA, S_DATA};

static int assemble(writer *w, unsigned flags, tl_wbuf *out)
{
    int present[S_KINDS] = {0};
    uint64_t nsec = 0;
    for (size_t i = 0; i < sizeof WRITE_ORDER / sizeof WRITE_ORDER[0]; i++) {
        int k = WRITE_ORDER[i];
        /* required sections always; optional ones when they have content */
        int required = k == S_MODEL || k == S_LAYERS || k == S_TENSORS || k == S_DATA ||
                       k == S_METADATA ||
                       (!(flags & TLEARN_SAVE_INFERENCE) && (k == S_OPTSTATE || k == S_FREEZE));
        present[k] = required || w->sec[k].len > 0;
        nsec += (uint64_t)present[k];
    }
    w->sec[S_DATA] = w->data;
    memset(&w->data, 0, sizeof w->data);
    tl_wb_zeros(out, CK_HEADER + nsec * CK_ENTRY);
    uint64_t e = 0;
    for (size_t i = 0; i < sizeof WRITE_ORDER / sizeof WRITE_ORDER[0]; i++) {
        int k = WRITE_ORDER[i];
        if (!present[k])
            continue;
        tl_wb_align(out, k == S_DATA ? 64 : 8);
        size_t off = out->len;
        tl_wb_bytes(out, w->sec[k].p, w->sec[k].len);
        if (out->oom || w->sec[k].oom)
            return tl_fail(TLEARN_ENOMEM, "tlearn_model_save: out of memory");
        unsigned char *ent = out->p + CK_HEADER + e * CK_ENTRY;
        tl_put_u32(ent, (uint32_t)k);
        tl_put_u64(ent + 8, off);
        tl_put_u64(ent + 16, w->sec[k].len);
        tl_put_u32(ent + 24, (uint32_t)crc32_z(0L, out->p + off, w->sec[k].len));
        e++;
    }
    if (out->oom)
        return tl_fail(TLEARN_ENOMEM, "tlearn_model_save: out of memory");
    unsigned char *h = out->p;
    memcpy(h, TL_CK_MAGIC, 8);
    h[8] = CK_MAJOR;
    h[10] = CK_MINOR;
    tl_put_u32(h + 12, (flags & TLEARN_SAVE_INFERENCE) ? CK_FLAG_INFERENCE : 0);
    tl_put_u64(h + 16, out->len);
    tl_put_u64(h + 24, nsec);
    tl_put_u64(h + 32, CK_HEADER);
    tl_put_u32(h + 40, (uint32_t)crc32(0L, h + CK_HEADER, (uInt)(nsec * CK_ENTRY)));
    tl_put_u32(h + 60, (uint32_t)crc32(0L, h, 60));
    return TLEARN_OK;
}

int tl_checkpoint_save_buffer(const char *fn, const tlearn_model *m, const tlearn_optim *o,
                              unsigned flags, tl_wbuf *out)
{
    memset(out, 0, sizeof *out);
    unsigned level = (flags >> 8) & 15u;
    if ((flags & ~(TLEARN_SAVE_INFERENCE | (15u << 8))) || level > 9)
        return tl_fail(TLEARN_EINVAL, "%s: flags 0x%x: expected TLEARN_SAVE_* bits and a "
                       "compression level 0..9", fn, flags);
    int rc = tl_io_check_model_values(fn, m);
    if (rc)
        return rc;
    writer w;
    memset(&w, 0, sizeof w);
    w.level = (int)level;
    rc = build(&w, m, o, flags);
    for (int k = 0; !rc && k < S_KINDS; k++)
        if (w.sec[k].oom || w.data.oom)
            rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    if (!rc)
        rc = assemble(&w, flags, out);
    for (int k = 0; k < S_KINDS; k++)
        tl_wb_free(&w.sec[k]);
    tl_wb_free(&w.data);
    if (rc)
        tl_wb_free(out);
    return rc;
}

int tlearn_model_save(const tlearn_model *m, const tlearn_optim *o, const char *path,
                      unsigned flags)
{
    static const char fn[] = "tlearn_model_save";
    TL_CHECK_MODEL(fn, m);
    if (!path || !*path)
        return tl_fail(TLEARN_EINVAL, "%s: path is %s", fn, !path ? "NULL" : "empty");
    tl_wbuf out;
    int rc = tl_checkpoint_save_buffer(fn, m, o, flags, &out);
    if (!rc)
        rc = tl_file_write_atomic(fn, path, out.p, out.len);
    tl_wb_free(&out);
    return rc;
}
