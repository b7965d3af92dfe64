/* Reading checkpoints (doc/checkpoint-format.md): load, load_weights and metadata.
 * Loading parses and checks the whole file into a description first (every count, offset
 * and size bounded by the file), then builds the model; any failure frees everything. */
#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "checkpoint.h"

/* Fuzzing only (tl_checkpoint_fuzz_skip_crc): mutated files would almost never get past
 * the CRCs, so the fuzz target also runs with the comparisons off to reach the parsers. */
static _Thread_local int skip_crc;

void tl_checkpoint_fuzz_skip_crc(int skip)
{
    skip_crc = skip;
}

static const char *const SEC_NAME[S_KINDS] = {"?", "MODEL", "LAYERS", "TENSORS", "DATA",
                                             "OPTIMIZER", "OPTSTATE", "FREEZE", "EWC",
                                             "METADATA", "GRAPH", "SCHEDULE", "DOMAIN"};

/* ------------------------------------------------------------------------------------ */
/* Reading: a cursor over one section that fails with the section and field named. */

typedef struct ck_str {
    const char *s;
    uint32_t n;
} ck_str;

typedef struct rd {
    const char *fn;
    const char *sec;
    const unsigned char *p;
    size_t len, pos;
    int lenient_tail; /* a newer minor version may append fields */
} rd;

static int rd_fail(const rd *r, const char *field, const char *fmt, ...) TL_PRINTF(3, 4);
static int rd_fail(const rd *r, const char *field, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return tl_fail(TLEARN_EFORMAT, "%s: section %s, %s: %s", r->fn, r->sec, field, detail);
}

static int rd_need(const rd *r, size_t n, const char *field)
{
    if (r->len - r->pos < n)
        return rd_fail(r, field, "expected %zu more bytes at offset %zu, found %zu", n, r->pos,
                       r->len - r->pos);
    return TLEARN_OK;
}

static int rd_u32(rd *r, const char *field, uint32_t *v)
{
    int rc = rd_need(r, 4, field);
    if (rc)
        return rc;
    *v = tl_get_u32(r->p + r->pos);
    r->pos += 4;
    return TLEARN_OK;
}

static int rd_u64(rd *r, const char *field, uint64_t *v)
{
    int rc = rd_need(r, 8, field);
    if (rc)
        return rc;
    *v = tl_get_u64(r->p + r->pos);
    r->pos += 8;
    return TLEARN_OK;
}

static int rd_f32(rd *r, const char *field, float *v)
{
    uint32_t u;
    int rc = rd_u32(r, field, &u);
    if (!rc)
        memcpy(v, &u, 4);
    return rc;
}

static int rd_f64(rd *r, const char *field, double *v)
{
    uint64_t u;
    int rc = rd_u64(r, field, &u);
    if (!rc)
        memcpy(v, &u, 8);
    return rc;
}

/* A u32 that must be in [lo, hi]. */
static int rd_range(rd *r, const char *field, uint32_t lo, uint32_t hi, uint32_t *v)
{
    int rc = rd_u32(r, field, v);
    if (!rc && (*v < lo || *v > hi))
        rc = rd_fail(r, field, "expected %u..%u, found %u", lo, hi, *v);
    return rc;
}

/* A u64 count or length that must be in [lo, hi]. */
static int rd_small(rd *r, const char *field, uint32_t lo, uint32_t hi, uint32_t *v)
{
    uint64_t x;
    int rc = rd_u64(r, field, &x);
    if (!rc && (x < lo || x > hi))
        rc = rd_fail(r, field, "expected %u..%u, found %llu", lo, hi, (unsigned long long)x);
    if (!rc)
        *v = (uint32_t)x;
    return rc;
}

static int rd_str(rd *r, const char *field, uint32_t minlen, uint32_t maxlen, ck_str *s)
{
    uint64_t n;
    int rc = rd_u64(r, field, &n);
    if (rc)
        return rc;
    if (n < minlen || n > maxlen)
        return rd_fail(r, field, "length expected %u..%u, found %llu", minlen, maxlen,
                       (unsigned long long)n);
    if ((rc = rd_need(r, (size_t)n, field)))
        return rc;
    s->s = (const char *)r->p + r->pos;
    s->n = (uint32_t)n;
    if (memchr(s->s, '\0', n))
        return rd_fail(r, field, "contains a NUL byte");
    r->pos += n;
    return TLEARN_OK;
}

/* A count of entries of at least @p min_entry bytes each, bounded by what is left. */
static int rd_count(rd *r, const char *field, size_t min_entry, uint64_t *count)
{
    int rc = rd_u64(r, field, count);
    if (!rc && *count > (r->len - r->pos) / min_entry)
        rc = rd_fail(r, field, "%llu entries of at least %zu bytes cannot fit in the %zu bytes "
                     "left", (unsigned long long)*count, min_entry, r->len - r->pos);
    return rc;
}

static int rd_end(const rd *r)
{
    if (r->pos != r->len && !r->lenient_tail)
        return rd_fail(r, "end", "expected the section to end at byte %zu, found %zu more "
                       "bytes", r->pos, r->len - r->pos);
    return TLEARN_OK;
}

static void str_copy(char *dst, size_t cap, ck_str s)
{
    size_t n = s.n < cap - 1 ? s.n : cap - 1;
    memcpy(dst, s.s, n);
    dst[n] = '\0';
}

/* ---- array references ---- */

typedef struct ck_blob {
    uint32_t enc, crc;
    uint64_t off, size, numel;
} ck_blob;

static int rd_blob(rd *r, const char *what, uint64_t data_size, ck_blob *b)
{
    char field[CK_MAX_NAME + 64];
    int rc;
    snprintf(field, sizeof field, "%s, field 'encoding'", what);
    if ((rc = rd_range(r, field, 0, 1, &b->enc)))
        return rc;
    snprintf(field, sizeof field, "%s, field 'crc'", what);
    if ((rc = rd_u32(r, field, &b->crc)))
        return rc;
    snprintf(field, sizeof field, "%s, field 'offset'", what);
    if ((rc = rd_u64(r, field, &b->off)))
        return rc;
    if (b->off > data_size)
        return rd_fail(r, field, "expected <= %llu (DATA size), found %llu",
                       (unsigned long long)data_size, (unsigned long long)b->off);
    snprintf(field, sizeof field, "%s, field 'stored_size'", what);
    if ((rc = rd_u64(r, field, &b->size)))
        return rc;
    if (b->size > data_size - b->off)
        return rd_fail(r, field, "expected <= %llu (to the end of DATA), found %llu",
                       (unsigned long long)(data_size - b->off), (unsigned long long)b->size);
    snprintf(field, sizeof field, "%s, field 'numel'", what);
    if ((rc = rd_u64(r, field, &b->numel)))
        return rc;
    if (b->numel > SIZE_MAX / 4 || b->numel > UINT64_MAX / 4)
        return rd_fail(r, field, "%llu elements is too many", (unsigned long long)b->numel);
    uint64_t raw = b->numel * 4;
    if (b->enc == 0) {
        if (raw != b->size)
            return rd_fail(r, field, "raw array: expected stored_size 4 x %llu = %llu, found "
                           "%llu", (unsigned long long)b->numel, (unsigned long long)raw,
                           (unsigned long long)b->size);
        if (b->off % 64)
            return rd_fail(r, field, "raw array: offset %llu is not a multiple of 64",
                           (unsigned long long)b->off);
    } else if (b->size > (UINT64_MAX - 64) / 1032 ? 0 : raw > 1032 * b->size + 64) {
        return rd_fail(r, field, "zlib array: %llu bytes cannot inflate from %llu stored bytes",
                       (unsigned long long)raw, (unsigned long long)b->size);
    }
    return TLEARN_OK;
}

/* ------------------------------------------------------------------------------------ */
/* The parsed file. Strings and arrays point into the file's bytes. */

typedef struct ck_layer {
    ck_str kind, name;
    uint32_t ninputs, ni, nf;
    const unsigned char *input; /* ninputs little-endian int32, checked by parse_layers */
    int ia[TL_MAX_IARGS];
    float fa[TL_MAX_FARGS];
} ck_layer;

typedef struct ck_tensor {
    ck_str name;
    uint32_t is_buffer, ndim;
    int dims[4];
    ck_blob data;
    int used;
} ck_tensor;

typedef struct ck_opt {
    ck_str tensor;
    uint32_t opt_kind, flags;
    int64_t step;
    ck_blob m1, m2;
} ck_opt;

typedef struct ck_freeze {
    uint32_t frozen, from_pretrained, use_running_stats;
    float lr_scale;
} ck_freeze;

typedef struct ck_array {
    ck_str name;
    ck_blob data;
} ck_array;

typedef struct ck_file {
    const char *fn;
    /* Reading from a file, DATA is read from the descriptor where needed, straight into
     * its destination, and its bytes in base are never touched (ck_read_file); fd is -1
     * when base holds every byte. */
    int fd;
    const char *path;
    const unsigned char *base;
    size_t len;
    uint32_t flags;
    unsigned minor;
    struct {
        int present;
        uint64_t off, size;
    } sec[S_KINDS];
    const unsigned char *data; /* the DATA section */
    uint64_t data_size;
    uint32_t data_crc;
    /* MODEL; GRAPH (absent: one float32 input "input" of shape (c, h, w)) */
    uint32_t c, h, w, threads, training, loss;
    int32_t next_input;
    int ninputs, noutputs;
    tl_model_input inputs[TL_MAX_MODEL_INPUTS];
    int outputs[TL_MAX_MODEL_OUTPUTS];
    uint64_t seed, rng[4];
    /* LAYERS, TENSORS */
    uint64_t nlayers, ntensors;
    ck_layer *layers;
    ck_tensor *tensors;
    ck_tensor **sorted; /* tensors by name */
    uint64_t declared_floats;
    /* OPTIMIZER, OPTSTATE, FREEZE, EWC, METADATA */
    tlearn_optim optim;
    tlearn_sched sched; /* SCHEDULE */
    int64_t sched_pos;
    uint64_t nopt;
    ck_opt *opts;
    uint32_t bn_stats_frozen;
    uint64_t nfreeze;
    ck_freeze *freeze;
    ck_str ewc_text;
    uint64_t newc;
    ck_array *ewc;
    uint64_t nmeta;
    ck_str *meta; /* key, value pairs */
    tl_da_state da;  /* DOMAIN; TENT's arrays: */
    int *da_frozen;  /* [da.tent_layers] */
    ck_blob da_saved;
} ck_file;

static void ck_free(ck_file *f)
{
    tl_free(f->layers);
    tl_free(f->tensors);
    tl_free(f->sorted);
    tl_free(f->opts);
    tl_free(f->freeze);
    tl_free(f->ewc);
    tl_free(f->meta);
    tl_free(f->da_frozen);
}

static rd section(const ck_file *f, int kind)
{
    rd r = {f->fn, SEC_NAME[kind], f->base + f->sec[kind].off, (size_t)f->sec[kind].size, 0,
            f->minor > CK_MINOR};
    return r;
}

typedef struct span {
    uint64_t off, size;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Header, table, section bounds, CRCs and zero padding. */
static int ck_open(ck_file *f, const char *fn, const unsigned char *p, size_t len, int fd,
                   const char *path)
{
    memset(f, 0, sizeof *f);
    f->fn = fn;
    f->fd = fd;
    f->path = path;
    f->base = p;
    f->len = len;
    if (len < 12 || memcmp(p, TL_CK_MAGIC, 8) != 0)
        return tl_fail(TLEARN_EFORMAT, "%s: header, field 'magic': not a libtlearn checkpoint "
                       "(%zu bytes, expected the bytes 89 54 4C 43 4B 50 0D 0A first)", fn, len);
    unsigned major = p[8] | p[9] << 8, minor = p[10] | p[11] << 8;
    if (major != CK_MAJOR)
        return tl_fail(TLEARN_EVERSION, "%s: header, field 'major': format version %u.%u, this "
                       "library reads major version %d only", fn, major, minor, CK_MAJOR);
    f->minor = minor;
    if (len < CK_HEADER)
        return tl_fail(TLEARN_EFORMAT, "%s: header: expected at least %d bytes, found %zu", fn,
                       CK_HEADER, len);
    uint32_t hcrc = (uint32_t)crc32(0L, p, 60), want = tl_get_u32(p + 60);
    if (hcrc != want && !skip_crc)
        return tl_fail(TLEARN_EFORMAT, "%s: header, field 'header_crc': expected %08x, found "
                       "%08x", fn, want, hcrc);
    f->flags = tl_get_u32(p + 12);
    uint64_t fsize = tl_get_u64(p + 16), nsec = tl_get_u64(p + 24), toff = tl_get_u64(p + 32);
    if (fsize != len)
        return tl_fail(TLEARN_EFORMAT, "%s: header, field 'file_size': expected %zu (the size "
                       "of the file), found %llu", fn, len, (unsigned long long)fsize);
    if (nsec < 1 || nsec > CK_MAX_SECTIONS)
        return tl_fail(TLEARN_EFORMAT, "%s: header, field 'section_count': expected 1..%d, "
                       "found %llu", fn, CK_MAX_SECTIONS, (unsigned long long)nsec);
    if (toff != CK_HEADER)
        return tl_fail(TLEARN_EFORMAT, "%s: header, field 'table_offset': expected %d, found "
                       "%llu", fn, CK_HEADER, (unsigned long long)toff);
    for (int i = 44; i < 60; i++)
        if (p[i])
            return tl_fail(TLEARN_EFORMAT, "%s: header, byte %d (reserved): expected 0, found "
                           "%u", fn, i, p[i]);
    uint64_t tsize = nsec * CK_ENTRY;
    if (tsize > len - CK_HEADER)
        return tl_fail(TLEARN_EFORMAT, "%s: section table: %llu entries need %llu bytes, the "
                       "file has %zu after the header", fn, (unsigned long long)nsec,
                       (unsigned long long)tsize, len - CK_HEADER);
    const unsigned char *t = p + CK_HEADER;
    uint32_t tcrc = (uint32_t)crc32(0L, t, (uInt)tsize);
    if (tcrc != tl_get_u32(p + 40) && !skip_crc)
        return tl_fail(TLEARN_EFORMAT, "%s: header, field 'table_crc': expected %08x, found "
                       "%08x", fn, tl_get_u32(p + 40), tcrc);

    span spans[CK_MAX_SECTIONS + 1];
    spans[0] = (span){0, CK_HEADER + tsize};
    for (uint64_t i = 0; i < nsec; i++) {
        const unsigned char *e = t + i * CK_ENTRY;
        uint32_t kind = tl_get_u32(e);
        uint64_t off = tl_get_u64(e + 8), size = tl_get_u64(e + 16);
        const char *name = kind > 0 && kind < S_KINDS ? SEC_NAME[kind] : "(unknown)";
        if (tl_get_u32(e + 4) || tl_get_u32(e + 28))
            return tl_fail(TLEARN_EFORMAT, "%s: section table, entry %llu (kind %u), reserved "
                           "field: expected 0", fn, (unsigned long long)i, kind);
        if (off < CK_HEADER + tsize || off > len || size > len - off)
            return tl_fail(TLEARN_EFORMAT, "%s: section %s (table entry %llu), field "
                           "'offset'/'size': %llu + %llu is outside bytes %llu..%zu", fn, name,
                           (unsigned long long)i, (unsigned long long)off,
                           (unsigned long long)size, (unsigned long long)(CK_HEADER + tsize),
                           len);
        if (off % (kind == S_DATA ? 64 : 8))
            return tl_fail(TLEARN_EFORMAT, "%s: section %s, field 'offset': %llu is not a "
                           "multiple of %d", fn, name, (unsigned long long)off,
                           kind == S_DATA ? 64 : 8);
        /* DATA's CRC is checked after the arrays, so that a damaged array is reported by
         * its own name and CRC first (data_crc_check). */
        uint32_t crc = kind == S_DATA ? tl_get_u32(e + 24)
                                      : (uint32_t)crc32_z(0L, p + off, (size_t)size);
        if (kind == S_DATA)
            f->data_crc = crc;
        if (crc != tl_get_u32(e + 24) && !skip_crc)
            return tl_fail(TLEARN_EFORMAT, "%s: section %s, field 'crc': expected %08x, found "
                           "%08x", fn, name, tl_get_u32(e + 24), crc);
        spans[i + 1] = (span){off, size};
        if (kind > 0 && kind < S_KINDS) {
            if (f->sec[kind].present)
                return tl_fail(TLEARN_EFORMAT, "%s: section %s: appears twice in the table", fn,
                               name);
            f->sec[kind].present = 1;
            f->sec[kind].off = off;
            f->sec[kind].size = size;
        }
    }
    /* No overlap, nothing after the last section, zero padding in between. */
    qsort(spans, (size_t)nsec + 1, sizeof spans[0], cmp_span);
    uint64_t end = 0;
    for (uint64_t i = 0; i <= nsec; i++) {
        if (spans[i].off < end)
            return tl_fail(TLEARN_EFORMAT, "%s: section table: the section at offset %llu "
                           "overlaps the one ending at %llu", fn,
                           (unsigned long long)spans[i].off, (unsigned long long)end);
        for (uint64_t k = end; k < spans[i].off; k++)
            if (p[k])
                return tl_fail(TLEARN_EFORMAT, "%s: padding byte at offset %llu: expected 0, "
                               "found %u", fn, (unsigned long long)k, p[k]);
        end = spans[i].off + spans[i].size;
    }
    if (end != len)
        return tl_fail(TLEARN_EFORMAT, "%s: header, field 'file_size': the last section ends "
                       "at %llu, expected the file to end there, found %zu bytes", fn,
                       (unsigned long long)end, len);
    return TLEARN_OK;
}

/* Bytes [off, off + n) of DATA: a pointer into the buffer, or read from the file into
 * @p tmp (n bytes). */
static int ck_data(const ck_file *f, uint64_t off, size_t n, unsigned char *tmp,
                   const unsigned char **out)
{
    if (f->fd < 0) {
        *out = f->data + off;
        return TLEARN_OK;
    }
    *out = tmp;
    return tl_file_pread(f->fn, f->path, f->fd, tmp, n, f->sec[S_DATA].off + off);
}

#define CK_CHUNK ((size_t)1 << 20) /* DATA is read and checked this much at a time */

/* Check and decode a blob into @p dst (numel floats), in chunks: a raw array is read
 * straight into dst, a zlib one inflated into it; no copy of the file is held. A damaged
 * array is reported by its CRC first, its decoding second. */
static int blob_decode(const ck_file *f, const char *sec, const char *what, const ck_blob *b,
                       float *dst)
{
    const char *fn = f->fn;
    size_t raw = (size_t)b->numel * 4;
    unsigned char *out = (unsigned char *)dst, *tmp = NULL;
    if (b->enc == 1 && f->fd >= 0 && b->size > 0) {
        tmp = tl_alloc(b->size < CK_CHUNK ? (size_t)b->size : CK_CHUNK);
        if (!tmp)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (b->enc == 1 && inflateInit(&zs) != Z_OK) {
        tl_free(tmp);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    uint32_t crc = 0;
    size_t produced = 0;
    int z = Z_OK, rc = TLEARN_OK;
    for (uint64_t done = 0; done < b->size && !rc;) {
        size_t n = b->size - done < CK_CHUNK ? (size_t)(b->size - done) : CK_CHUNK;
        const unsigned char *src;
        rc = ck_data(f, b->off + done, n, b->enc == 0 ? out + done : tmp, &src);
        if (rc)
            break;
        crc = (uint32_t)crc32_z(crc, src, n);
        if (b->enc == 0) {
            if (src != out + done)
                memcpy(out + done, src, n);
        } else {
            zs.next_in = (Bytef *)src;
            zs.avail_in = (uInt)n;
            while (z == Z_OK && zs.avail_in > 0) { /* after an error: the CRC goes on */
                size_t room = raw - produced;
                zs.next_out = out + produced;
                zs.avail_out = room > UINT32_MAX ? UINT32_MAX : (uInt)room;
                uInt before = zs.avail_out;
                z = inflate(&zs, Z_NO_FLUSH);
                produced += before - zs.avail_out;
                if (z == Z_STREAM_END && zs.avail_in > 0)
                    z = Z_DATA_ERROR; /* bytes after the end of the stream */
            }
        }
        done += n;
    }
    if (b->enc == 1)
        inflateEnd(&zs);
    tl_free(tmp);
    if (rc)
        return rc;
    if (crc != b->crc && !skip_crc)
        return tl_fail(TLEARN_EFORMAT, "%s: section %s, %s: CRC-32 expected %08x, found %08x",
                       fn, sec, what, b->crc, crc);
    if (b->enc == 1 && (z != Z_STREAM_END || produced != raw))
        return tl_fail(TLEARN_EFORMAT, "%s: section %s, %s: zlib data inflates to %s (expected "
                       "exactly %zu bytes from %llu stored bytes)", fn, sec, what,
                       z == Z_STREAM_END || z == Z_OK || z == Z_BUF_ERROR ? "a different size"
                                                                          : zError(z),
                       raw, (unsigned long long)b->size);
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    tl_floats_from_le(dst, (const unsigned char *)dst, (size_t)b->numel);
#endif
    return TLEARN_OK;
}

/* The whole DATA section, padding included, against its table CRC. */
static int data_crc_check(const ck_file *f)
{
    unsigned char *tmp = NULL;
    if (f->fd >= 0 && f->data_size > 0) {
        tmp = tl_alloc(f->data_size < CK_CHUNK ? (size_t)f->data_size : CK_CHUNK);
        if (!tmp)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    }
    uint32_t crc = 0;
    int rc = TLEARN_OK;
    for (uint64_t done = 0; done < f->data_size && !rc;) {
        size_t n = f->data_size - done < CK_CHUNK ? (size_t)(f->data_size - done) : CK_CHUNK;
        const unsigned char *src;
        if (!(rc = ck_data(f, done, n, tmp, &src)))
            crc = (uint32_t)crc32_z(crc, src, n);
        done += n;
    }
    tl_free(tmp);
    if (rc)
        return rc;
    if (crc != f->data_crc && !skip_crc)
        return tl_fail(TLEARN_EFORMAT, "%s: section DATA, field 'crc': expected %08x, found "
                       "%08x", f->fn, f->data_crc, crc);
    return TLEARN_OK;
}

static int require(const ck_file *f, int kind)
{
    if (!f->sec[kind].present)
        return tl_fail(TLEARN_EFORMAT, "%s: section %s: missing (required)", f->fn,
                       SEC_NAME[kind]);
    return TLEARN_OK;
}

static int parse_model(ck_file *f)
{
    rd r = section(f, S_MODEL);
    int rc;
    uint32_t nin;
    /* 0 when GRAPH describes the inputs: a 1.0 reader then refuses the file */
    uint32_t lo = f->sec[S_GRAPH].present ? 0 : 1;
    if ((rc = rd_range(&r, "field 'channels'", lo, INT32_MAX, &f->c)) ||
        (rc = rd_range(&r, "field 'height'", lo, INT32_MAX, &f->h)) ||
        (rc = rd_range(&r, "field 'width'", lo, INT32_MAX, &f->w)) ||
        (rc = rd_range(&r, "field 'threads'", 1, 1024, &f->threads)) ||
        (rc = rd_u64(&r, "field 'seed'", &f->seed)))
        return rc;
    for (int i = 0; i < 4; i++)
        if ((rc = rd_u64(&r, "field 'rng'", &f->rng[i])))
            return rc;
    if ((rc = rd_range(&r, "field 'training'", 0, 1, &f->training)) ||
        (rc = rd_range(&r, "field 'loss'", TLEARN_LOSS_SOFTMAX_CE,
                       TLEARN_LOSS_CONTRASTIVE_SYMMETRIC, &f->loss)) ||
        (rc = rd_u32(&r, "field 'next_input'", &nin)))
        return rc;
    f->next_input = (int32_t)nin;
    return rd_end(&r);
}

static int parse_inputs(ck_file *f)
{
    f->ninputs = 1;
    if (!f->sec[S_GRAPH].present)
        return TLEARN_OK;
    rd r = section(f, S_GRAPH);
    uint32_t count;
    int rc = rd_range(&r, "field 'count'", 1, TL_MAX_MODEL_INPUTS, &count);
    for (uint32_t k = 0; !rc && k < count; k++) {
        tl_model_input *in = &f->inputs[k];
        ck_str name;
        uint32_t dtype, rank, d;
        char field[64];
        snprintf(field, sizeof field, "input %u, field 'name'", k);
        if ((rc = rd_str(&r, field, 1, TL_NAME_MAX - 1, &name)))
            break;
        str_copy(in->name, sizeof in->name, name);
        snprintf(field, sizeof field, "input %u '%s', field 'dtype'", k, in->name);
        if ((rc = rd_range(&r, field, TLEARN_DTYPE_FLOAT32, TLEARN_DTYPE_INT32, &dtype)))
            break;
        snprintf(field, sizeof field, "input %u '%s', field 'rank'", k, in->name);
        if ((rc = rd_range(&r, field, 1, TL_MAX_RANK, &rank)))
            break;
        in->dtype = (int)dtype;
        in->shape = tl_shape1(1);
        in->shape.rank = (int)rank;
        snprintf(field, sizeof field, "input %u '%s', field 'dims'", k, in->name);
        for (uint32_t i = 0; !rc && i < rank; i++)
            if (!(rc = rd_range(&r, field, 1, INT32_MAX, &d)))
                in->shape.d[i] = (int)d;
    }
    if (rc)
        return rc;
    f->ninputs = (int)count;
    if ((rc = rd_range(&r, "field 'noutputs'", 0, TL_MAX_MODEL_OUTPUTS, &count)))
        return rc;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t v;
        if ((rc = rd_range(&r, "field 'outputs'", 0, INT32_MAX, &v)))
            return rc;
        f->outputs[k] = (int)v; /* checked against the layers when they are built */
    }
    f->noutputs = (int)count;
    return rd_end(&r);
}

static int parse_layers(ck_file *f)
{
    rd r = section(f, S_LAYERS);
    int rc = rd_count(&r, "field 'count'", 2 * 9 + 3 * 8 + 4, &f->nlayers);
    if (rc)
        return rc;
    if (f->nlayers > INT32_MAX / 2)
        return rd_fail(&r, "field 'count'", "%llu layers is too many",
                       (unsigned long long)f->nlayers);
    f->layers = tl_alloc_array((size_t)f->nlayers ? (size_t)f->nlayers : 1, sizeof *f->layers);
    if (!f->layers)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    for (uint64_t i = 0; i < f->nlayers; i++) {
        ck_layer *L = &f->layers[i];
        char field[96];
        snprintf(field, sizeof field, "layer %llu, field 'kind'", (unsigned long long)i);
        if ((rc = rd_str(&r, field, 1, CK_MAX_NAME, &L->kind)))
            return rc;
        snprintf(field, sizeof field, "layer %llu, field 'name'", (unsigned long long)i);
        if ((rc = rd_str(&r, field, 1, TL_NAME_MAX - 1, &L->name)))
            return rc;
        snprintf(field, sizeof field, "layer %llu '%.*s', field 'ninputs'",
                 (unsigned long long)i, (int)L->name.n, L->name.s);
        if ((rc = rd_small(&r, field, 1, TL_MAX_INPUTS, &L->ninputs)))
            return rc;
        L->input = r.p + r.pos;
        for (uint32_t k = 0; k < L->ninputs; k++) {
            uint32_t v;
            snprintf(field, sizeof field, "layer %llu '%.*s', field 'input'",
                     (unsigned long long)i, (int)L->name.n, L->name.s);
            if ((rc = rd_u32(&r, field, &v)))
                return rc;
            if ((int32_t)v < -f->ninputs || (int64_t)(int32_t)v >= (int64_t)i)
                return rd_fail(&r, field, "expected %d..%lld (a model input or an earlier "
                               "layer), found %d", -f->ninputs, (long long)i - 1, (int32_t)v);
        }
        snprintf(field, sizeof field, "layer %llu '%.*s', field 'ni'", (unsigned long long)i,
                 (int)L->name.n, L->name.s);
        if ((rc = rd_small(&r, field, 0, TL_MAX_IARGS, &L->ni)))
            return rc;
        for (uint32_t k = 0; k < L->ni; k++) {
            uint32_t v;
            if ((rc = rd_u32(&r, field, &v)))
                return rc;
            L->ia[k] = (int)(int32_t)v;
        }
        snprintf(field, sizeof field, "layer %llu '%.*s', field 'nf'", (unsigned long long)i,
                 (int)L->name.n, L->name.s);
        if ((rc = rd_small(&r, field, 0, TL_MAX_FARGS, &L->nf)))
            return rc;
        for (uint32_t k = 0; k < L->nf; k++)
            if ((rc = rd_f32(&r, field, &L->fa[k])))
                return rc;
    }
    return rd_end(&r);
}

static int cmp_name(const char *a, size_t na, const char *b, size_t nb)
{
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

static int cmp_tensor(const void *a, const void *b)
{
    const ck_tensor *x = *(ck_tensor *const *)a, *y = *(ck_tensor *const *)b;
    return cmp_name(x->name.s, x->name.n, y->name.s, y->name.n);
}

static ck_tensor *find_tensor(const ck_file *f, const char *name)
{
    size_t lo = 0, hi = (size_t)f->ntensors, n = strlen(name);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_name(name, n, f->sorted[mid]->name.s, f->sorted[mid]->name.n);
        if (c == 0)
            return f->sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static int parse_tensors(ck_file *f)
{
    rd r = section(f, S_TENSORS);
    int rc = rd_count(&r, "field 'count'", 9 + 4 + 8 + 8 + 32, &f->ntensors);
    if (rc)
        return rc;
    size_t n = (size_t)f->ntensors ? (size_t)f->ntensors : 1;
    f->tensors = tl_alloc_array(n, sizeof *f->tensors);
    f->sorted = tl_alloc_array(n, sizeof *f->sorted);
    if (!f->tensors || !f->sorted)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    for (uint64_t i = 0; i < f->ntensors; i++) {
        ck_tensor *t = &f->tensors[i];
        char field[CK_MAX_NAME + 96];
        snprintf(field, sizeof field, "tensor %llu, field 'name'", (unsigned long long)i);
        if ((rc = rd_str(&r, field, 1, CK_MAX_NAME, &t->name)))
            return rc;
        char what[CK_MAX_NAME + 32];
        snprintf(what, sizeof what, "tensor '%.*s'", (int)t->name.n, t->name.s);
        snprintf(field, sizeof field, "%s, field 'is_buffer'", what);
        if ((rc = rd_range(&r, field, 0, 1, &t->is_buffer)))
            return rc;
        snprintf(field, sizeof field, "%s, field 'ndim'", what);
        if ((rc = rd_small(&r, field, 1, 4, &t->ndim)))
            return rc;
        uint64_t numel = 1;
        snprintf(field, sizeof field, "%s, field 'dims'", what);
        for (uint32_t d = 0; d < t->ndim; d++) {
            uint64_t v;
            if ((rc = rd_u64(&r, field, &v)))
                return rc;
            if (v < 1 || v > INT32_MAX)
                return rd_fail(&r, field, "dimension %u: expected 1..%d, found %llu", d,
                               INT32_MAX, (unsigned long long)v);
            t->dims[d] = (int)v;
            if (numel > UINT64_MAX / v)
                return rd_fail(&r, field, "the element count overflows");
            numel *= v;
        }
        if ((rc = rd_blob(&r, what, f->data_size, &t->data)))
            return rc;
        if (t->data.numel != numel)
            return rd_fail(&r, what, "field 'numel': expected %llu (product of dims), found "
                           "%llu", (unsigned long long)numel,
                           (unsigned long long)t->data.numel);
        f->declared_floats += numel; /* bounded: each is backed by bytes of the file */
        f->sorted[i] = t;
    }
    if ((rc = rd_end(&r)))
        return rc;
    qsort(f->sorted, (size_t)f->ntensors, sizeof *f->sorted, cmp_tensor);
    for (uint64_t i = 1; i < f->ntensors; i++)
        if (cmp_tensor(&f->sorted[i - 1], &f->sorted[i]) == 0)
            return rd_fail(&r, "field 'name'", "tensor '%.*s' appears twice",
                           (int)f->sorted[i]->name.n, f->sorted[i]->name.s);
    return TLEARN_OK;
}

static int parse_optimizer(ck_file *f)
{
    rd r = section(f, S_OPTIMIZER);
    tlearn_optim *o = &f->optim;
    uint32_t kind, nest;
    int rc;
    if ((rc = rd_range(&r, "field 'kind'", TLEARN_SGD, TLEARN_ADAMW, &kind)) ||
        (rc = rd_range(&r, "field 'nesterov'", 0, 1, &nest)) ||
        (rc = rd_f64(&r, "field 'lr'", &o->lr)) ||
        (rc = rd_f64(&r, "field 'momentum'", &o->momentum)) ||
        (rc = rd_f64(&r, "field 'dampening'", &o->dampening)) ||
        (rc = rd_f64(&r, "field 'weight_decay'", &o->weight_decay)) ||
        (rc = rd_f64(&r, "field 'beta1'", &o->beta1)) ||
        (rc = rd_f64(&r, "field 'beta2'", &o->beta2)) ||
        (rc = rd_f64(&r, "field 'eps'", &o->eps)) ||
        (rc = rd_f64(&r, "field 'clip_norm'", &o->clip_norm)))
        return rc;
    o->kind = (int)kind;
    o->nesterov = (int)nest;
    return rd_end(&r);
}

/* SCHEDULE: the values are range-checked when the optimizer is made (make_optim). */
static int parse_schedule(ck_file *f)
{
    rd r = section(f, S_SCHEDULE);
    tlearn_sched *s = &f->sched;
    uint32_t kind, np;
    uint64_t nmile, pos;
    int rc;
    if ((rc = rd_range(&r, "field 'kind'", TLEARN_SCHED_CONSTANT,
                       TLEARN_SCHED_SLANTED_TRIANGULAR, &kind)) ||
        (rc = rd_range(&r, "field 'nparams'", TL_SCHED_NPARAM, TL_SCHED_NPARAM, &np)))
        return rc;
    s->kind = (int)kind;
    for (uint32_t p = 1; p <= np; p++)
        if ((rc = rd_f64(&r, "field 'params'", &s->p[p])))
            return rc;
    if ((rc = rd_u64(&r, "field 'nmilestones'", &nmile)))
        return rc;
    if (nmile > TL_SCHED_MAX_MILESTONES)
        return rd_fail(&r, "field 'nmilestones'", "%llu, expected at most %d",
                       (unsigned long long)nmile, TL_SCHED_MAX_MILESTONES);
    s->nmile = (int)nmile;
    for (uint64_t i = 0; i < nmile; i++) {
        uint64_t v;
        if ((rc = rd_u64(&r, "field 'milestones'", &v)))
            return rc;
        s->mile[i] = (int64_t)v;
    }
    if ((rc = rd_u64(&r, "field 'position'", &pos)))
        return rc;
    if (pos > (uint64_t)INT64_MAX / 2)
        return rd_fail(&r, "field 'position'", "%llu is out of range", (unsigned long long)pos);
    f->sched_pos = (int64_t)pos;
    return rd_end(&r);
}

static int parse_optstate(ck_file *f)
{
    rd r = section(f, S_OPTSTATE);
    int rc = rd_count(&r, "field 'count'", 9 + 4 + 4 + 8, &f->nopt);
    if (rc)
        return rc;
    f->opts = tl_alloc_array((size_t)f->nopt ? (size_t)f->nopt : 1, sizeof *f->opts);
    if (!f->opts)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    for (uint64_t i = 0; i < f->nopt; i++) {
        ck_opt *e = &f->opts[i];
        char field[CK_MAX_NAME + 96], what[CK_MAX_NAME + 40];
        snprintf(field, sizeof field, "entry %llu, field 'tensor'", (unsigned long long)i);
        if ((rc = rd_str(&r, field, 1, CK_MAX_NAME, &e->tensor)))
            return rc;
        snprintf(what, sizeof what, "tensor '%.*s'", (int)e->tensor.n, e->tensor.s);
        uint64_t step;
        snprintf(field, sizeof field, "%s, field 'opt_kind'", what);
        if ((rc = rd_range(&r, field, TLEARN_SGD, TLEARN_ADAMW, &e->opt_kind)))
            return rc;
        snprintf(field, sizeof field, "%s, field 'flags'", what);
        if ((rc = rd_range(&r, field, 0, 3, &e->flags)))
            return rc;
        snprintf(field, sizeof field, "%s, field 'step'", what);
        if ((rc = rd_u64(&r, field, &step)))
            return rc;
        if (step > INT64_MAX)
            return rd_fail(&r, field, "expected >= 0, found %lld", (long long)step);
        e->step = (int64_t)step;
        char bw[CK_MAX_NAME + 48];
        snprintf(bw, sizeof bw, "%s, m1", what);
        if ((e->flags & 1) && (rc = rd_blob(&r, bw, f->data_size, &e->m1)))
            return rc;
        snprintf(bw, sizeof bw, "%s, m2", what);
        if ((e->flags & 2) && (rc = rd_blob(&r, bw, f->data_size, &e->m2)))
            return rc;
    }
    return rd_end(&r);
}

static int parse_freeze(ck_file *f)
{
    rd r = section(f, S_FREEZE);
    int rc;
    if ((rc = rd_range(&r, "field 'bn_stats_frozen'", 0, 1, &f->bn_stats_frozen)) ||
        (rc = rd_count(&r, "field 'count'", 16, &f->nfreeze)))
        return rc;
    if (f->nfreeze != f->nlayers)
        return rd_fail(&r, "field 'count'", "expected %llu (the number of layers), found %llu",
                       (unsigned long long)f->nlayers, (unsigned long long)f->nfreeze);
    f->freeze = tl_alloc_array((size_t)f->nfreeze ? (size_t)f->nfreeze : 1, sizeof *f->freeze);
    if (!f->freeze)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    for (uint64_t i = 0; i < f->nfreeze; i++) {
        ck_freeze *z = &f->freeze[i];
        char field[96];
        snprintf(field, sizeof field, "layer %llu, field 'frozen'", (unsigned long long)i);
        /* bit 0 the layer; 1.1: bits 8.. tensors frozen while the layer trains */
        uint32_t tensors = ((1u << TL_MAX_PARAMS) - 1u) << TL_FROZEN_PARAMS_SHIFT;
        if ((rc = rd_range(&r, field, 0, 1u | tensors, &z->frozen)))
            return rc;
        if ((z->frozen & ~(1u | tensors)) || ((z->frozen & 1u) && (z->frozen & tensors)))
            return rd_fail(&r, field, "expected 0, 1 or tensor bits 8..%d alone, found 0x%x",
                           TL_FROZEN_PARAMS_SHIFT + TL_MAX_PARAMS - 1, z->frozen);
        snprintf(field, sizeof field, "layer %llu, field 'lr_scale'", (unsigned long long)i);
        if ((rc = rd_f32(&r, field, &z->lr_scale)))
            return rc;
        if (!(z->lr_scale > 0.0f && z->lr_scale <= FLT_MAX))
            return rd_fail(&r, field, "expected > 0 and finite, found %g", (double)z->lr_scale);
        snprintf(field, sizeof field, "layer %llu, field 'from_pretrained'",
                 (unsigned long long)i);
        if ((rc = rd_range(&r, field, 0, 1, &z->from_pretrained)))
            return rc;
        snprintf(field, sizeof field, "layer %llu, field 'use_running_stats'",
                 (unsigned long long)i);
        if ((rc = rd_range(&r, field, 0, 1, &z->use_running_stats)))
            return rc;
    }
    return rd_end(&r);
}

static int parse_ewc(ck_file *f)
{
    rd r = section(f, S_EWC);
    int rc;
    if ((rc = rd_str(&r, "field 'text'", 0, UINT32_MAX, &f->ewc_text)) ||
        (rc = rd_count(&r, "field 'count'", 9 + 32, &f->newc)))
        return rc;
    f->ewc = tl_alloc_array((size_t)f->newc ? (size_t)f->newc : 1, sizeof *f->ewc);
    if (!f->ewc)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    for (uint64_t i = 0; i < f->newc; i++) {
        char field[64], what[CK_MAX_NAME + 32];
        snprintf(field, sizeof field, "array %llu, field 'name'", (unsigned long long)i);
        if ((rc = rd_str(&r, field, 1, CK_MAX_NAME, &f->ewc[i].name)))
            return rc;
        snprintf(what, sizeof what, "array '%.*s'", (int)f->ewc[i].name.n, f->ewc[i].name.s);
        if ((rc = rd_blob(&r, what, f->data_size, &f->ewc[i].data)))
            return rc;
    }
    return rd_end(&r);
}

/* DOMAIN: layers, losses and values are checked by the setters when the model is made
 * (load_domain). */
static int parse_domain(ck_file *f)
{
    rd r = section(f, S_DOMAIN);
    tl_da_state *d = &f->da;
    uint32_t v;
    char field[96];
    int rc = rd_range(&r, "field 'noutputs'", 0, TL_MAX_MODEL_OUTPUTS, &v);
    d->noutputs = (int)v;
    for (int k = 0; !rc && k < d->noutputs; k++) {
        snprintf(field, sizeof field, "output %d, field 'loss'", k);
        rc = rd_range(&r, field, 0, TLEARN_LOSS_MSE, &v);
        d->loss[k] = (int)v;
        snprintf(field, sizeof field, "output %d, field 'weight'", k);
        if (!rc)
            rc = rd_f32(&r, field, &d->weight[k]);
    }
    if (!rc)
        rc = rd_range(&r, "field 'nterms'", 0, TL_DA_MAX_TERMS, &v);
    d->nterms = (int)v;
    for (int t = 0; !rc && t < d->nterms; t++) {
        ck_str name;
        snprintf(field, sizeof field, "term %d, field 'layer'", t);
        if ((rc = rd_str(&r, field, 1, TL_NAME_MAX - 1, &name)))
            break;
        str_copy(d->term_layer[t], TL_NAME_MAX, name);
        snprintf(field, sizeof field, "term %d, field 'kind'", t);
        rc = rd_range(&r, field, TLEARN_DISCREPANCY_CORAL, TLEARN_DISCREPANCY_MMD, &v);
        d->term_kind[t] = (int)v;
        snprintf(field, sizeof field, "term %d, field 'weight'", t);
        if (!rc)
            rc = rd_f32(&r, field, &d->term_weight[t]);
    }
    if (!rc)
        rc = rd_range(&r, "field 'nmult'", 0, TL_DA_MAX_KERNELS, &v);
    d->nmult = (int)v;
    for (int i = 0; !rc && i < d->nmult; i++)
        rc = rd_f32(&r, "field 'mult'", &d->mult[i]);
    if (!rc)
        rc = rd_range(&r, "field 'tent'", 0, 1, &v);
    d->tent = (int)v;
    if (rc || !d->tent)
        return rc ? rc : rd_end(&r);
    uint64_t n;
    if ((rc = rd_count(&r, "field 'count'", 4, &n)))
        return rc;
    if (n != f->nlayers)
        return rd_fail(&r, "field 'count'", "expected %llu (the number of layers), found %llu",
                       (unsigned long long)f->nlayers, (unsigned long long)n);
    f->da_frozen = tl_alloc_array(n ? (size_t)n : 1, sizeof *f->da_frozen);
    if (!f->da_frozen)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    for (uint64_t i = 0; i < n; i++) {
        snprintf(field, sizeof field, "layer %llu, field 'frozen'", (unsigned long long)i);
        if ((rc = rd_range(&r, field, 0, 1, &v)))
            return rc;
        f->da_frozen[i] = (int)v;
    }
    d->tent_layers = (int)n;
    if ((rc = rd_blob(&r, "TENT snapshot", f->data_size, &f->da_saved)))
        return rc;
    return rd_end(&r);
}

static int parse_meta(ck_file *f)
{
    rd r = section(f, S_METADATA);
    int rc = rd_count(&r, "field 'count'", 2 * 9, &f->nmeta);
    if (rc)
        return rc;
    f->meta = tl_alloc_array(2 * ((size_t)f->nmeta ? (size_t)f->nmeta : 1), sizeof *f->meta);
    if (!f->meta)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
    for (uint64_t i = 0; i < f->nmeta; i++) {
        char field[64];
        snprintf(field, sizeof field, "entry %llu, field 'key'", (unsigned long long)i);
        if ((rc = rd_str(&r, field, 1, CK_MAX_META, &f->meta[2 * i])))
            return rc;
        snprintf(field, sizeof field, "entry %llu, field 'value'", (unsigned long long)i);
        if ((rc = rd_str(&r, field, 1, CK_MAX_META, &f->meta[2 * i + 1])))
            return rc;
        for (uint64_t k = 0; k < i; k++)
            if (cmp_name(f->meta[2 * k].s, f->meta[2 * k].n, f->meta[2 * i].s,
                         f->meta[2 * i].n) == 0)
                return rd_fail(&r, field, "key '%.*s' appears twice", (int)f->meta[2 * i].n,
                               f->meta[2 * i].s);
    }
    return rd_end(&r);
}

/* Header, table, DATA and TENSORS: what every weight reader needs. */
static int ck_open_tensors(ck_file *f, const char *fn, const void *data, size_t len, int fd,
                           const char *path)
{
    int rc = ck_open(f, fn, data, len, fd, path);
    if (!rc)
        rc = require(f, S_DATA);
    if (!rc)
        rc = require(f, S_TENSORS);
    if (rc)
        return rc;
    f->data = f->base + f->sec[S_DATA].off;
    f->data_size = f->sec[S_DATA].size;
    return parse_tensors(f);
}

static int ck_parse_all(ck_file *f, const char *fn, const void *data, size_t len, int fd,
                        const char *path)
{
    int rc = ck_open_tensors(f, fn, data, len, fd, path);
    if (rc)
        return rc;
    static const int required[] = {S_MODEL, S_LAYERS, S_METADATA};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if ((rc = require(f, required[i])))
            return rc;
    /* A full checkpoint always has its optimizer state and freeze state (maybe empty):
     * without them (a table entry of an unknown kind) exact resume would silently not
     * happen. */
    static const int resume[] = {S_OPTSTATE, S_FREEZE};
    for (size_t i = 0; !(f->flags & CK_FLAG_INFERENCE) && i < 2; i++)
        if (!f->sec[resume[i]].present)
            return tl_fail(TLEARN_EFORMAT, "%s: section %s: missing (required in a full "
                           "checkpoint: header flag bit 0 is clear)", fn, SEC_NAME[resume[i]]);
    if (f->flags & CK_FLAG_INFERENCE) {
        static const int training[] = {S_OPTIMIZER, S_OPTSTATE, S_FREEZE, S_EWC, S_SCHEDULE,
                                       S_DOMAIN};
        for (size_t i = 0; i < sizeof training / sizeof training[0]; i++)
            if (f->sec[training[i]].present)
                return tl_fail(TLEARN_EFORMAT, "%s: section %s: present in an inference-only "
                               "file (header flag bit 0)", fn, SEC_NAME[training[i]]);
    }
    if ((rc = parse_model(f)) || (rc = parse_inputs(f)) || (rc = parse_layers(f)) ||
        (rc = parse_meta(f)))
        return rc;
    if (f->sec[S_OPTIMIZER].present && (rc = parse_optimizer(f)))
        return rc;
    if (f->sec[S_SCHEDULE].present && !f->sec[S_OPTIMIZER].present)
        return tl_fail(TLEARN_EFORMAT, "%s: section SCHEDULE: present without OPTIMIZER", fn);
    if (f->sec[S_SCHEDULE].present && (rc = parse_schedule(f)))
        return rc;
    if (f->sec[S_OPTSTATE].present && (rc = parse_optstate(f)))
        return rc;
    if (f->sec[S_FREEZE].present && (rc = parse_freeze(f)))
        return rc;
    if (f->sec[S_EWC].present && (rc = parse_ewc(f)))
        return rc;
    if (f->sec[S_DOMAIN].present && (rc = parse_domain(f)))
        return rc;
    return TLEARN_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Building the model from a parsed file. */

static int build_layers(ck_file *f, tlearn_model *m)
{
    size_t budget = f->declared_floats > SIZE_MAX ? SIZE_MAX : (size_t)f->declared_floats;
    for (uint64_t i = 0; i < f->nlayers; i++) {
        const ck_layer *L = &f->layers[i];
        char kind[CK_MAX_NAME + 1], name[TL_NAME_MAX];
        str_copy(kind, sizeof kind, L->kind);
        str_copy(name, sizeof name, L->name);
        const tl_layer_ops *ops = tl_layer_ops_by_name(kind);
        if (!ops)
            return tl_fail(TLEARN_EFORMAT, "%s: section LAYERS, layer %llu '%s', field 'kind': "
                           "unknown layer kind '%s'", f->fn, (unsigned long long)i, name, kind);
        int inputs[TL_MAX_INPUTS];
        for (uint32_t k = 0; k < L->ninputs; k++)
            inputs[k] = (int32_t)tl_get_u32(L->input + 4 * k);
        tl_layer_set_param_budget(&budget);
        int rc = tl_model_add(m, f->fn, ops, name, inputs, (int)L->ninputs, L->ia, (int)L->ni,
                              L->fa, (int)L->nf);
        tl_layer_set_param_budget(NULL);
        if (rc)
            return tl_fail_prefix(rc == TLEARN_ENOMEM ? rc : TLEARN_EFORMAT,
                                  "%s: section LAYERS, layer %llu '%s': ", f->fn,
                                  (unsigned long long)i, name);
    }
    return TLEARN_OK;
}

static int shape_text(char *buf, size_t cap, int ndim, const int *dims)
{
    int k = snprintf(buf, cap, "[");
    for (int d = 0; d < ndim; d++)
        k += snprintf(buf + k, cap - (size_t)k, d ? ", %d" : "%d", dims[d]);
    return snprintf(buf + k, cap - (size_t)k, "]");
}

static int same_shape(const ck_tensor *t, const tl_tensor *x)
{
    if ((int)t->ndim != x->ndim)
        return 0;
    for (int d = 0; d < x->ndim; d++)
        if (t->dims[d] != x->dims[d])
            return 0;
    return 1;
}

/* Decoded values of a tensor: finite, and a variance not negative. */
static int check_decoded(const char *fn, const char *what, const float *v, size_t n,
                         const char *param)
{
    char where[2 * TL_NAME_MAX + 64];
    snprintf(where, sizeof where, "section TENSORS, %s", what);
    return tl_check_values(TLEARN_EFORMAT, fn, where, v, n, tl_param_nonneg(param));
}

static int load_tensors(ck_file *f, tlearn_model *m)
{
    for (int i = 0; i < m->nlayers; i++) {
        tl_layer *L = m->layers[i];
        for (int p = 0; p < L->nparam; p++) {
            char name[2 * TL_NAME_MAX], a[64], b[64];
            tl_ck_tensor_name(name, sizeof name, L, p);
            ck_tensor *t = find_tensor(f, name);
            if (!t)
                return tl_fail(TLEARN_EFORMAT, "%s: section TENSORS: model tensor '%s' is "
                               "missing", f->fn, name);
            tl_tensor *x = &L->param[p].t;
            if (!same_shape(t, x)) {
                shape_text(a, sizeof a, x->ndim, x->dims);
                shape_text(b, sizeof b, (int)t->ndim, t->dims);
                return tl_fail(TLEARN_EFORMAT, "%s: section TENSORS, tensor '%s', field 'dims': "
                               "expected %s, found %s", f->fn, name, a, b);
            }
            if ((int)t->is_buffer != L->param[p].is_buffer)
                return tl_fail(TLEARN_EFORMAT, "%s: section TENSORS, tensor '%s', field "
                               "'is_buffer': expected %d, found %u", f->fn, name,
                               L->param[p].is_buffer, t->is_buffer);
            char what[2 * TL_NAME_MAX + 16];
            snprintf(what, sizeof what, "tensor '%s'", name);
            int rc = blob_decode(f, "TENSORS", what, &t->data, x->data);
            if (!rc)
                rc = check_decoded(f->fn, what, x->data, x->numel, L->param[p].name);
            if (rc)
                return rc;
            t->used = 1;
        }
    }
    for (uint64_t i = 0; i < f->ntensors; i++)
        if (!f->tensors[i].used)
            return tl_fail(TLEARN_EFORMAT, "%s: section TENSORS, tensor '%.*s': no such tensor "
                           "in the model", f->fn, (int)f->tensors[i].name.n,
                           f->tensors[i].name.s);
    return TLEARN_OK;
}

static int load_settings(ck_file *f, tlearn_model *m)
{
    /* f->threads (the saving host's count) is not applied: how many threads to use is the
     * loading host's choice (tlearn_model_set_threads), never a file's. */
    m->seed = f->seed;
    m->training = (int)f->training;
    m->loss_kind = (int)f->loss;
    if (f->next_input < -1 - f->ninputs || (int64_t)f->next_input >= (int64_t)f->nlayers)
        return tl_fail(TLEARN_EFORMAT, "%s: section MODEL, field 'next_input': expected "
                       "%d..%lld, found %d", f->fn, -1 - f->ninputs, (long long)f->nlayers - 1,
                       f->next_input);
    m->next_input = f->next_input == -2 ? TL_NEXT_DEFAULT
                    : f->next_input >= -1 ? f->next_input : f->next_input + 1;
    if (!f->sec[S_FREEZE].present)
        return TLEARN_OK;
    m->bn_stats_frozen = (int)f->bn_stats_frozen;
    for (int i = 0; i < m->nlayers; i++) {
        tl_frozen_unpack(&m->lstate[i], f->freeze[i].frozen);
        m->lstate[i].lr_scale = f->freeze[i].lr_scale;
        m->lstate[i].from_pretrained = (int)f->freeze[i].from_pretrained;
        m->layers[i]->use_running_stats = (int)f->freeze[i].use_running_stats;
    }
    return TLEARN_OK;
}

static int load_optstate(ck_file *f, tlearn_model *m)
{
    for (uint64_t i = 0; i < f->nopt; i++) {
        const ck_opt *e = &f->opts[i];
        char name[CK_MAX_NAME + 1], what[CK_MAX_NAME + 32];
        str_copy(name, sizeof name, e->tensor);
        int l, p;
        if (tl_model_find_tensor(m, name, &l, &p))
            return tl_fail(TLEARN_EFORMAT, "%s: section OPTSTATE, tensor '%s': no such tensor "
                           "in the model", f->fn, name);
        tl_layer *L = m->layers[l];
        tl_slot *s = &m->lstate[l].slot[p];
        if (!tl_param_trains(m, l, p))
            return tl_fail(TLEARN_EFORMAT, "%s: section OPTSTATE, tensor '%s': expected a "
                           "trainable parameter, found a %s", f->fn, name,
                           L->param[p].is_buffer ? "buffer" : "frozen parameter");
        if (s->opt_kind != 0)
            return tl_fail(TLEARN_EFORMAT, "%s: section OPTSTATE, tensor '%s': appears twice",
                           f->fn, name);
        size_t numel = L->param[p].t.numel;
        const ck_blob *blobs[2] = {&e->m1, &e->m2};
        float **dst[2] = {&s->m1, &s->m2};
        for (int k = 0; k < 2; k++) {
            if (!(e->flags & (1u << k)))
                continue;
            snprintf(what, sizeof what, "tensor '%s', m%d", name, k + 1);
            if (blobs[k]->numel != numel)
                return tl_fail(TLEARN_EFORMAT, "%s: section OPTSTATE, %s, field 'numel': "
                               "expected %zu, found %llu", f->fn, what, numel,
                               (unsigned long long)blobs[k]->numel);
            *dst[k] = tl_alloc_array(numel, sizeof(float));
            if (!*dst[k])
                return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
            int rc = blob_decode(f, "OPTSTATE", what, blobs[k], *dst[k]);
            if (rc)
                return rc;
        }
        s->opt_kind = (int)e->opt_kind;
        s->step = e->step;
    }
    return TLEARN_OK;
}

static int load_ewc(ck_file *f, tlearn_model *m)
{
    int rc = tl_ewc_restore_begin(m, f->ewc_text.s ? f->ewc_text.s : "", f->ewc_text.n);
    for (uint64_t i = 0; !rc && i < f->newc; i++) {
        const ck_array *a = &f->ewc[i];
        char name[CK_MAX_NAME + 1], what[CK_MAX_NAME + 32];
        str_copy(name, sizeof name, a->name);
        snprintf(what, sizeof what, "array '%s'", name);
        float *buf = tl_alloc_array((size_t)a->data.numel ? (size_t)a->data.numel : 1,
                                    sizeof(float));
        if (!buf)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
        rc = blob_decode(f, "EWC", what, &a->data, buf);
        if (!rc) {
            rc = tl_ewc_restore_array(m, name, buf, (size_t)a->data.numel);
            if (rc)
                rc = tl_fail_prefix(rc, "%s: section EWC, %s: ", f->fn, what);
        }
        tl_free(buf);
    }
    if (!rc && (rc = tl_ewc_restore_end(m)))
        rc = tl_fail_prefix(rc, "%s: section EWC: ", f->fn);
    return rc;
}

/* DOMAIN through the setters (tl_da_import), once layers, outputs and freeze state exist. */
static int load_domain(ck_file *f, tlearn_model *m)
{
    tl_da_state *d = &f->da;
    float *saved = NULL;
    int rc = TLEARN_OK;
    if (d->tent) {
        size_t want = tl_da_bn_floats(m);
        if (f->da_saved.numel != want)
            return tl_fail(TLEARN_EFORMAT, "%s: section DOMAIN, TENT snapshot, field 'numel': "
                           "expected %zu (the model's BatchNorm tensors), found %llu", f->fn,
                           want, (unsigned long long)f->da_saved.numel);
        saved = tl_alloc_array(want ? want : 1, sizeof(float));
        if (!saved)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", f->fn);
        rc = blob_decode(f, "DOMAIN", "TENT snapshot", &f->da_saved, saved);
        d->tent_saved = saved;
        d->tent_frozen = f->da_frozen;
        d->tent_floats = want;
    }
    char fn[64];
    snprintf(fn, sizeof fn, "%s: section DOMAIN", f->fn);
    if (!rc)
        rc = tl_da_import(fn, m, d);
    tl_free(saved);
    return rc;
}

static int load_meta(ck_file *f, tlearn_model *m)
{
    for (uint64_t i = 0; i < f->nmeta; i++) {
        char *k = tl_alloc(f->meta[2 * i].n + 1), *v = tl_alloc(f->meta[2 * i + 1].n + 1);
        int rc = TLEARN_ENOMEM;
        if (k && v) {
            str_copy(k, f->meta[2 * i].n + 1, f->meta[2 * i]);
            str_copy(v, f->meta[2 * i + 1].n + 1, f->meta[2 * i + 1]);
            rc = tlearn_model_set_metadata(m, k, v);
        }
        tl_free(k);
        tl_free(v);
        if (rc)
            return tl_fail_prefix(rc, "%s: section METADATA, entry %llu: ", f->fn,
                                  (unsigned long long)i);
    }
    return TLEARN_OK;
}

/* The schedule through the public setters, so that every value is range-checked. */
static int make_schedule(const ck_file *f, tlearn_optim *o)
{
    static const char fn[] = "tlearn_model_load";
    const tlearn_sched *src = &f->sched;
    tlearn_sched *s;
    int rc = tlearn_sched_create(&s, src->kind);
    for (int p = 1; !rc && p <= TL_SCHED_NPARAM; p++) {
        double v;
        tlearn_sched_get(s, p, &v);
        if (v != src->p[p] || p == TLEARN_SCHED_UNIT) /* parameters of other kinds: defaults */
            rc = tl_sched_set(fn, s, p, src->p[p]);
    }
    if (!rc && src->nmile)
        rc = tlearn_sched_set_milestones(s, src->mile, (size_t)src->nmile);
    if (!rc)
        rc = tlearn_optim_set_schedule(o, s);
    if (!rc)
        o->sched->t = f->sched_pos;
    tlearn_sched_destroy(&s);
    return rc ? tl_fail_prefix(rc == TLEARN_ENOMEM ? rc : TLEARN_EFORMAT, "%s: section "
                               "SCHEDULE: ", f->fn) : TLEARN_OK;
}

static int make_optim(ck_file *f, tlearn_optim **optim)
{
    const tlearn_optim *src = &f->optim;
    tlearn_optim *o;
    int rc = tlearn_optim_create(&o, src->kind);
    if (rc)
        return rc;
    /* Set through the public setter, so every value is range-checked; fields another kind
     * does not use are not read. */
    struct {
        int param;
        double v;
        int sgd, adam;
    } v[] = {
        {TLEARN_OPT_LR, src->lr, 1, 1},
        {TLEARN_OPT_MOMENTUM, src->momentum, 1, 0},
        {TLEARN_OPT_DAMPENING, src->dampening, 1, 0},
        {TLEARN_OPT_NESTEROV, src->nesterov, 1, 0},
        {TLEARN_OPT_WEIGHT_DECAY, src->weight_decay, 1, 1},
        {TLEARN_OPT_BETA1, src->beta1, 0, 1},
        {TLEARN_OPT_BETA2, src->beta2, 0, 1},
        {TLEARN_OPT_EPS, src->eps, 0, 1},
        {TLEARN_OPT_CLIP_NORM, src->clip_norm, 1, 1},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (!(src->kind == TLEARN_SGD ? v[i].sgd : v[i].adam))
            continue;
        if ((rc = tlearn_optim_set(o, v[i].param, v[i].v))) {
            tlearn_optim_destroy(&o);
            return tl_fail_prefix(TLEARN_EFORMAT, "%s: section OPTIMIZER: ", f->fn);
        }
    }
    if (f->sec[S_SCHEDULE].present && (rc = make_schedule(f, o))) {
        tlearn_optim_destroy(&o);
        return rc;
    }
    *optim = o;
    return TLEARN_OK;
}

/* The model with the file's inputs and no layers. */
static int create_model(const ck_file *f, tlearn_model **m)
{
    if (!f->sec[S_GRAPH].present)
        return tlearn_model_create(m, (int)f->c, (int)f->h, (int)f->w);
    const tl_model_input *in = f->inputs;
    int rc = tlearn_model_create_input(m, in[0].name, in[0].dtype, in[0].shape.rank,
                                       in[0].shape.d);
    for (int k = 1; !rc && k < f->ninputs; k++)
        rc = tlearn_model_add_input(*m, in[k].name, in[k].dtype, in[k].shape.rank,
                                    in[k].shape.d);
    return rc;
}

/* The declared graph outputs, once the layers exist. */
static int set_outputs(const ck_file *f, tlearn_model *m)
{
    const char *names[TL_MAX_MODEL_OUTPUTS];
    for (int k = 0; k < f->noutputs; k++) {
        if (f->outputs[k] >= m->nlayers)
            return tl_fail(TLEARN_EFORMAT, "%s: section GRAPH, field 'outputs': layer %d of "
                           "%d", f->fn, f->outputs[k], m->nlayers);
        names[k] = m->layers[f->outputs[k]]->name;
    }
    int rc = f->noutputs ? tlearn_model_set_outputs(m, names, f->noutputs) : TLEARN_OK;
    return rc ? tl_fail_prefix(TLEARN_EFORMAT, "%s: section GRAPH: ", f->fn) : TLEARN_OK;
}

static int load_from(const char *fn, const void *data, size_t len, int fd, const char *path,
                     tlearn_model **out, tlearn_optim **optim)
{
    *out = NULL;
    if (optim)
        *optim = NULL;
    ck_file f;
    tlearn_model *m = NULL;
    tlearn_optim *o = NULL;
    int rc = ck_parse_all(&f, fn, data, len, fd, path);
    if (!rc && (rc = create_model(&f, &m)))
        rc = tl_fail_prefix(rc == TLEARN_ENOMEM ? rc : TLEARN_EFORMAT, "%s: section %s: ", fn,
                            f.sec[S_GRAPH].present ? "GRAPH" : "MODEL");
    if (!rc)
        rc = build_layers(&f, m);
    if (!rc)
        rc = set_outputs(&f, m);
    if (!rc)
        rc = load_tensors(&f, m);
    if (!rc)
        rc = load_settings(&f, m);
    if (!rc)
        rc = load_optstate(&f, m);
    if (!rc && f.sec[S_EWC].present)
        rc = load_ewc(&f, m);
    if (!rc && f.sec[S_DOMAIN].present)
        rc = load_domain(&f, m);
    if (!rc)
        rc = load_meta(&f, m);
    if (!rc && optim && f.sec[S_OPTIMIZER].present)
        rc = make_optim(&f, &o);
    if (!rc)
        rc = data_crc_check(&f);
    if (!rc) {
        memcpy(m->rng.s, f.rng, sizeof f.rng);
        m->has_grads = 0;
        *out = m;
        if (optim)
            *optim = o;
    } else {
        tlearn_model_destroy(&m);
        tlearn_optim_destroy(&o);
    }
    ck_free(&f);
    return rc;
}

int tl_checkpoint_load_buffer(const char *fn, const void *data, size_t len, tlearn_model **out,
                              tlearn_optim **optim)
{
    return load_from(fn, data, len, -1, NULL, out, optim);
}

/* The file's bytes except DATA's in a buffer of the file's size, *fd left open to read
 * DATA from (blob_decode, data_crc_check): loading then holds the model's arrays and
 * little else, not a second copy of the file. DATA's part of the buffer is never written
 * nor read, so its pages are never made resident. When the table does not give DATA one
 * span apart from every other section (a damaged file), everything is read and *fd is
 * -1: the checks then run on the bytes as they would on any buffer. */
static int ck_read_file(const char *fn, const char *path, unsigned char **data, size_t *len,
                        int *fd_out)
{
    *data = NULL;
    *len = 0;
    *fd_out = -1;
    int fd;
    uint64_t size;
    int rc = tl_file_open(fn, path, &fd, &size);
    if (rc)
        return rc;
    if (size > (uint64_t)SIZE_MAX - 64) {
        close(fd);
        return tl_fail(TLEARN_ENOMEM, "%s: '%s' is too large to read", fn, path);
    }
    unsigned char *p = tl_alloc(size ? (size_t)size : 1);
    if (!p) {
        close(fd);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory reading '%s' (%llu bytes)", fn, path,
                       (unsigned long long)size);
    }
    uint64_t head = size < CK_HEADER + CK_MAX_SECTIONS * CK_ENTRY
                        ? size : CK_HEADER + CK_MAX_SECTIONS * CK_ENTRY;
    rc = tl_file_pread(fn, path, fd, p, (size_t)head, 0);
    uint64_t doff = 0, dsize = 0;
    int ndata = 0, overlap = 0;
    uint64_t nsec = head >= CK_HEADER ? tl_get_u64(p + 24) : 0;
    uint64_t tend = CK_HEADER + nsec * CK_ENTRY;
    if (!rc && nsec >= 1 && nsec <= CK_MAX_SECTIONS && tend <= head) {
        for (uint64_t i = 0; i < nsec; i++) {
            const unsigned char *e = p + CK_HEADER + i * CK_ENTRY;
            if (tl_get_u32(e) == S_DATA) {
                ndata++;
                doff = tl_get_u64(e + 8);
                dsize = tl_get_u64(e + 16);
            }
        }
        int ok = ndata == 1 && doff >= tend && doff <= size && dsize <= size - doff;
        for (uint64_t i = 0; ok && i < nsec; i++) {
            const unsigned char *e = p + CK_HEADER + i * CK_ENTRY;
            uint64_t o = tl_get_u64(e + 8), n = tl_get_u64(e + 16);
            if (tl_get_u32(e) != S_DATA && o <= size && n <= size - o && o < doff + dsize &&
                doff < o + n)
                overlap = 1;
        }
        if (!ok || overlap)
            ndata = 0;
    }
    if (!rc && ndata == 1) {
        rc = tl_file_pread(fn, path, fd, p, (size_t)doff, 0);
        if (!rc)
            rc = tl_file_pread(fn, path, fd, p + doff + dsize, (size_t)(size - doff - dsize),
                               doff + dsize);
    } else if (!rc) {
        rc = tl_file_pread(fn, path, fd, p, (size_t)size, 0);
    }
    if (rc || ndata != 1) {
        close(fd);
        fd = -1;
    }
    if (rc) {
        tl_free(p);
        return rc;
    }
    *data = p;
    *len = (size_t)size;
    *fd_out = fd;
    return TLEARN_OK;
}

/* The arguments every load checks, and the results of a failed one cleared. */
static int load_args(const char *fn, tlearn_model **out, tlearn_optim **optim)
{
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (optim)
        *optim = NULL;
    return TLEARN_OK;
}

int tlearn_model_load_buffer(tlearn_model **out, tlearn_optim **optim, const void *data,
                             size_t len)
{
    static const char fn[] = "tlearn_model_load_buffer";
    int rc = load_args(fn, out, optim);
    if (!rc)
        rc = tl_io_data_arg(fn, &data, len);
    return rc ? rc : load_from(fn, data, len, -1, NULL, out, optim);
}

int tlearn_model_load(tlearn_model **out, tlearn_optim **optim, const char *path)
{
    static const char fn[] = "tlearn_model_load";
    int rc = load_args(fn, out, optim);
    if (rc)
        return rc;
    if (!path)
        return tl_fail(TLEARN_EINVAL, "%s: path is NULL", fn);
    unsigned char *buf;
    size_t len;
    int fd;
    rc = ck_read_file(fn, path, &buf, &len, &fd);
    if (rc)
        return rc;
    rc = load_from(fn, buf, len, fd, path, out, optim);
    if (fd >= 0)
        close(fd);
    tl_free(buf);
    return rc;
}

static int load_weights_from(const char *fn, tlearn_model *m, const void *data, size_t len,
                             int fd, const char *path, unsigned flags, size_t *matched,
                             size_t *skipped)
{
    ck_file f;
    int rc = ck_open_tensors(&f, fn, data, len, fd, path);
    int strict = flags == TLEARN_LOAD_STRICT;
    /* Decode everything first: the model changes only when all of it is good. */
    int count = 0;
    for (int i = 0; i < m->nlayers; i++)
        count += m->layers[i]->nparam;
    float **staged = rc ? NULL : tl_alloc_array((size_t)count + 1, sizeof *staged);
    if (!rc && !staged)
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    size_t nmatched = 0;
    for (int i = 0, k = 0; !rc && i < m->nlayers; i++) {
        tl_layer *L = m->layers[i];
        for (int p = 0; !rc && p < L->nparam; p++, k++) {
            char name[2 * TL_NAME_MAX], a[64], b[64];
            tl_ck_tensor_name(name, sizeof name, L, p);
            ck_tensor *t = find_tensor(&f, name);
            tl_tensor *x = &L->param[p].t;
            if (!t) {
                if (strict)
                    rc = tl_fail(TLEARN_ENOTFOUND, "%s: model tensor '%s' is not in the file",
                                 fn, name);
                continue;
            }
            t->used = 1;
            if (!same_shape(t, x)) {
                if (strict) {
                    shape_text(a, sizeof a, x->ndim, x->dims);
                    shape_text(b, sizeof b, (int)t->ndim, t->dims);
                    rc = tl_fail(TLEARN_ESHAPE, "%s: tensor '%s': the model has shape %s, the "
                                 "file %s", fn, name, a, b);
                }
                continue;
            }
            staged[k] = tl_alloc_array(x->numel, sizeof(float));
            if (!staged[k]) {
                rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
                break;
            }
            char what[2 * TL_NAME_MAX + 16];
            snprintf(what, sizeof what, "tensor '%s'", name);
            rc = blob_decode(&f, "TENSORS", what, &t->data, staged[k]);
            if (!rc)
                rc = check_decoded(fn, what, staged[k], x->numel, L->param[p].name);
            nmatched++;
        }
    }
    for (uint64_t i = 0; !rc && strict && i < f.ntensors; i++)
        if (!f.tensors[i].used)
            rc = tl_fail(TLEARN_ENOTFOUND, "%s: file tensor '%.*s' is not in the model", fn,
                         (int)f.tensors[i].name.n, f.tensors[i].name.s);
    if (!rc)
        rc = data_crc_check(&f);
    for (int i = 0, k = 0; !rc && staged && i < m->nlayers; i++) /* copy on write */
        for (int p = 0; !rc && p < m->layers[i]->nparam; p++, k++)
            if (staged[k])
                rc = tl_model_own_param(m, i, p);
    for (int i = 0, k = 0; staged && i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++, k++) {
            if (!rc && staged[k])
                memcpy(m->layers[i]->param[p].t.data, staged[k],
                       sizeof(float) * m->layers[i]->param[p].t.numel);
            tl_free(staged[k]);
        }
    tl_free(staged);
    ck_free(&f);
    if (!rc) {
        if (matched)
            *matched = nmatched;
        if (skipped)
            *skipped = (size_t)count - nmatched;
    }
    return rc;
}

int tl_checkpoint_load_weights_buffer(const char *fn, tlearn_model *m, const void *data,
                                      size_t len, unsigned flags, size_t *matched,
                                      size_t *skipped)
{
    return load_weights_from(fn, m, data, len, -1, NULL, flags, matched, skipped);
}

int tlearn_model_load_weights_buffer(tlearn_model *m, const void *data, size_t len,
                                     unsigned flags, size_t *matched, size_t *skipped)
{
    static const char fn[] = "tlearn_model_load_weights_buffer";
    int rc = tl_io_weights_args(fn, m, flags);
    if (!rc)
        rc = tl_io_data_arg(fn, &data, len);
    return rc ? rc : load_weights_from(fn, m, data, len, -1, NULL, flags, matched, skipped);
}

int tlearn_model_load_weights(tlearn_model *m, const char *path, unsigned flags,
                              size_t *matched, size_t *skipped)
{
    static const char fn[] = "tlearn_model_load_weights";
    TL_CHECK_MODEL(fn, m);
    if (!path)
        return tl_fail(TLEARN_EINVAL, "%s: path is NULL", fn);
    int rc = tl_io_weights_args(fn, m, flags);
    if (rc)
        return rc;
    unsigned char *buf;
    size_t len;
    int fd;
    rc = ck_read_file(fn, path, &buf, &len, &fd);
    if (rc)
        return rc;
    rc = load_weights_from(fn, m, buf, len, fd, path, flags, matched, skipped);
    if (fd >= 0)
        close(fd);
    tl_free(buf);
    return rc;
}

int tlearn_checkpoint_read_metadata(const char *path, tlearn_metadata_fn cb, void *user)
{
    static const char fn[] = "tlearn_checkpoint_read_metadata";
    if (!path || !cb)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !path ? "path" : "fn");
    unsigned char *buf;
    size_t len;
    int fd;
    int rc = ck_read_file(fn, path, &buf, &len, &fd);
    if (rc)
        return rc;
    ck_file f;
    rc = ck_open(&f, fn, buf, len, fd, path);
    if (!rc)
        rc = require(&f, S_METADATA);
    if (!rc)
        rc = parse_meta(&f);
    for (uint64_t i = 0; !rc && i < f.nmeta; i++) {
        char *k = tl_alloc(f.meta[2 * i].n + 1), *v = tl_alloc(f.meta[2 * i + 1].n + 1);
        if (!k || !v) {
            rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        } else {
            str_copy(k, f.meta[2 * i].n + 1, f.meta[2 * i]);
            str_copy(v, f.meta[2 * i + 1].n + 1, f.meta[2 * i + 1]);
            if (cb(k, v, user))
                i = f.nmeta; /* the callback asked to stop */
        }
        tl_free(k);
        tl_free(v);
    }
    ck_free(&f);
    if (fd >= 0)
        close(fd);
    tl_free(buf);
    return rc;
}

