/* safetensors import and export (https://github.com/huggingface/safetensors):
 *   u64 N (little-endian) | N bytes of JSON header | data
 * with the validation rules of the reference implementation: header at most 100 MB,
 * exact JSON, known dtypes, data_offsets sorted, contiguous from 0 and ending exactly at
 * the end of the file, byte sizes == product(shape) * dtype size without overflow.
 * Import validates and converts everything before it writes into the model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

#define ST_MAX_HEADER 100000000u
#define ST_NAME_MAX 256

static const struct {
    const char *name;
    unsigned size;
} DTYPES[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
    {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8},
};

float tl_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31u, man = h & 1023u, bits;
    if (exp == 31) {
        bits = sign | 0x7F800000u | man << 13; /* inf / nan */
    } else if (exp != 0) {
        bits = sign | (exp + 112) << 23 | man << 13;
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: man * 2^-24, exact in fp32 */
        float f = (float)man * 5.9604644775390625e-08f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float tl_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

typedef struct st_entry {
    const char *name;    /* key in the header (owned by the JSON tree) */
    int dtype;           /* index into DTYPES */
    int ndim;
    uint64_t dims[8];
    uint64_t begin, end; /* data_offsets */
} st_entry;

#define ST_MAX_DIMS 8

static int cmp_entry(const void *a, const void *b)
{
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int parse_entry(const char *fn, const char *name, const tl_json *v, st_entry *e)
{
    if (v->type != TL_JSON_OBJECT)
        return tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s': expected an object", fn, name);
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], "dtype") && strcmp(v->keys[i], "shape") &&
            strcmp(v->keys[i], "data_offsets"))
            return tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s': unknown field '%s'", fn,
                           name, v->keys[i]);
    const tl_json *dt = tl_json_get(v, "dtype"), *sh = tl_json_get(v, "shape"),
                  *of = tl_json_get(v, "data_offsets");
    if (!dt || !sh || !of)
        return tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s': field '%s' is missing", fn,
                       name, !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    e->name = name;
    e->dtype = -1;
    if (dt->type == TL_JSON_STRING)
        for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
            if (strcmp(dt->str, DTYPES[i].name) == 0)
                e->dtype = (int)i;
    if (e->dtype < 0)
        return tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s', field 'dtype': unknown dtype "
                       "'%.40s'", fn, name,
                       dt->type == TL_JSON_STRING ? dt->str : "(not a string)");
    if (sh->type != TL_JSON_ARRAY || sh->n > ST_MAX_DIMS)
        return tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s', field 'shape': expected an "
                       "array of at most %d integers", fn, name, ST_MAX_DIMS);
    e->ndim = (int)sh->n;
    for (size_t d = 0; d < sh->n; d++)
        if (!tl_json_u64(&sh->items[d], &e->dims[d]))
            return tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s', field 'shape': element %zu "
                           "is not a non-negative integer", fn, name, d);
    if (of->type != TL_JSON_ARRAY || of->n != 2 || !tl_json_u64(&of->items[0], &e->begin) ||
        !tl_json_u64(&of->items[1], &e->end))
        return tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s', field 'data_offsets': expected "
                       "[begin, end] as non-negative integers", fn, name);
    return TLEARN_OK;
}

/* Parse and validate the whole file; entries point into *root. */
static int st_parse(const char *fn, const unsigned char *p, size_t len, tl_json **root,
                    st_entry **entries, size_t *count, const unsigned char **data)
{
    *root = NULL;
    *entries = NULL;
    *count = 0;
    if (len < 8)
        return tl_fail(TLEARN_EFORMAT, "%s: header size: expected 8 bytes, the file has %zu",
                       fn, len);
    uint64_t n = tl_get_u64(p);
    if (n > ST_MAX_HEADER)
        return tl_fail(TLEARN_EFORMAT, "%s: header size %llu exceeds the limit of %u bytes", fn,
                       (unsigned long long)n, ST_MAX_HEADER);
    if (n > len - 8)
        return tl_fail(TLEARN_EFORMAT, "%s: header size %llu is larger than the %zu bytes after "
                       "it", fn, (unsigned long long)n, len - 8);
    if (n == 0 || p[8] != '{')
        return tl_fail(TLEARN_EFORMAT, "%s: header: expected a JSON object starting with '{'",
                       fn);
    int rc = tl_json_parse(fn, (const char *)p + 8, (size_t)n, root);
    if (rc)
        return rc;
    const tl_json *obj = *root;
    size_t data_len = len - 8 - (size_t)n;
    st_entry *e = tl_alloc_array(obj->n ? obj->n : 1, sizeof *e);
    st_entry **order = tl_alloc_array(obj->n ? obj->n : 1, sizeof *order);
    if (!e || !order) {
        tl_free(e);
        tl_free(order);
        tl_json_free(*root);
        *root = NULL;
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    size_t k = 0;
    for (size_t i = 0; !rc && i < obj->n; i++) {
        const tl_json *v = &obj->items[i];
        if (strcmp(obj->keys[i], "__metadata__") == 0) {
            if (v->type != TL_JSON_OBJECT)
                rc = tl_fail(TLEARN_EFORMAT, "%s: header, '__metadata__': expected an object "
                             "of strings", fn);
            for (size_t m = 0; !rc && m < v->n; m++)
                if (v->items[m].type != TL_JSON_STRING)
                    rc = tl_fail(TLEARN_EFORMAT, "%s: header, '__metadata__', key '%.80s': "
                                 "expected a string value", fn, v->keys[m]);
            continue;
        }
        rc = parse_entry(fn, obj->keys[i], v, &e[k]);
        order[k] = &e[k];
        k++;
    }
    /* Offsets: sorted, contiguous from 0, sizes exact, ending at the end of the file. */
    if (!rc)
        qsort(order, k, sizeof *order, cmp_entry);
    uint64_t pos = 0;
    for (size_t i = 0; !rc && i < k; i++) {
        const st_entry *t = order[i];
        if (t->begin != pos || t->end < t->begin) {
            rc = tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s', field 'data_offsets': "
                         "[%llu, %llu] expected to start at %llu (contiguous, not overlapping)",
                         fn, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                         (unsigned long long)pos);
            break;
        }
        uint64_t nbytes = DTYPES[t->dtype].size;
        for (int d = 0; d < t->ndim; d++) {
            if (t->dims[d] != 0 && nbytes > UINT64_MAX / t->dims[d]) {
                rc = tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s', field 'shape': the byte "
                             "size overflows", fn, t->name);
                break;
            }
            nbytes *= t->dims[d];
        }
        if (!rc && t->end - t->begin != nbytes)
            rc = tl_fail(TLEARN_EFORMAT, "%s: header, tensor '%s', field 'data_offsets': %llu "
                         "bytes, expected %llu (shape x %s size %u)", fn, t->name,
                         (unsigned long long)(t->end - t->begin), (unsigned long long)nbytes,
                         DTYPES[t->dtype].name, DTYPES[t->dtype].size);
        pos = t->end;
    }
    if (!rc && pos != data_len)
        rc = tl_fail(TLEARN_EFORMAT, "%s: data: the tensors end at byte %llu of the data, the "
                     "file has %zu data bytes", fn, (unsigned long long)pos, data_len);
    tl_free(order);
    if (rc) {
        tl_free(e);
        tl_json_free(*root);
        *root = NULL;
        return rc;
    }
    *entries = e;
    *count = k;
    *data = p + 8 + n;
    return TLEARN_OK;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void shape_text(char *buf, size_t cap, int ndim, const uint64_t *d64, const int *d32)
{
    int k = snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && (size_t)k < cap; d++)
        k += snprintf(buf + k, cap - (size_t)k, d ? ", %llu" : "%llu",
                      d64 ? (unsigned long long)d64[d] : (unsigned long long)d32[d]);
    if ((size_t)k < cap)
        snprintf(buf + k, cap - (size_t)k, "]");
}

int tl_safetensors_import_buffer(const char *fn, tlearn_model *m, const void *buf, size_t len,
                                 tlearn_name_map_fn map, void *user, unsigned flags,
                                 size_t *matched)
{
    tl_json *root;
    st_entry *e;
    size_t count;
    const unsigned char *data = NULL;
    int strict = (flags & ~TL_ST_FILE_STRICT) == TLEARN_LOAD_STRICT;
    int all_model = flags == TLEARN_LOAD_STRICT; /* every model tensor must be in the file */
    int rc = st_parse(fn, buf, len, &root, &e, &count, &data);
    if (rc)
        return rc;
    /* one staging buffer per model tensor; NULL when not loaded */
    int ntensors = 0;
    for (int i = 0; i < m->nlayers; i++)
        ntensors += m->layers[i]->nparam;
    float **staged = tl_alloc_array((size_t)ntensors + 1, sizeof *staged);
    if (!staged)
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    size_t nmatched = 0;
    for (size_t i = 0; !rc && i < count; i++) {
        const st_entry *t = &e[i];
        if (ends_with(t->name, ".num_batches_tracked") ||
            strcmp(t->name, "num_batches_tracked") == 0)
            continue; /* PyTorch's BN step counter: nothing in the model corresponds */
        char target[ST_NAME_MAX];
        const char *name = t->name;
        if (map) {
            memset(target, 0, sizeof target);
            if (!map(t->name, target, sizeof target, user))
                continue;
            if (!memchr(target, '\0', sizeof target)) {
                rc = tl_fail(TLEARN_EINVAL, "%s: the name map wrote no NUL-terminated name for "
                             "'%s'", fn, t->name);
                break;
            }
            name = target;
        }
        int l, p;
        if (tl_model_find_tensor(m, name, &l, &p)) {
            if (strict)
                rc = tl_fail(TLEARN_ENOTFOUND, "%s: file tensor '%s'%s%s%s is not in the model",
                             fn, t->name, map ? " (mapped to '" : "", map ? name : "",
                             map ? "')" : "");
            continue;
        }
        int k = 0;
        for (int a = 0; a < l; a++)
            k += m->layers[a]->nparam;
        k += p;
        if (staged[k]) {
            rc = tl_fail(TLEARN_EFORMAT, "%s: file tensor '%s' maps to '%s', which an earlier "
                         "file tensor already filled", fn, t->name, name);
            break;
        }
        const tl_tensor *x = &m->layers[l]->param[p].t;
        int same = t->ndim == x->ndim;
        for (int d = 0; same && d < x->ndim; d++)
            same = t->dims[d] == (uint64_t)x->dims[d];
        if (!same) {
            if (strict) {
                char a[96], b[96];
                shape_text(a, sizeof a, x->ndim, NULL, x->dims);
                shape_text(b, sizeof b, t->ndim, t->dims, NULL);
                rc = tl_fail(TLEARN_ESHAPE, "%s: tensor '%s': the model has shape %s, the file "
                             "%s", fn, name, a, b);
            }
            continue;
        }
        const char *dt = DTYPES[t->dtype].name;
        int f32 = !strcmp(dt, "F32"), f16 = !strcmp(dt, "F16"), bf16 = !strcmp(dt, "BF16");
        if (!f32 && !f16 && !bf16) {
            if (strict)
                rc = tl_fail(TLEARN_EFORMAT, "%s: tensor '%s': dtype %s cannot be loaded "
                             "(expected F32, F16 or BF16)", fn, t->name, dt);
            continue;
        }
        float *dst = tl_alloc_array(x->numel, sizeof(float));
        if (!dst) {
            rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
            break;
        }
        staged[k] = dst;
        const unsigned char *src = data + t->begin;
        for (size_t j = 0; j < x->numel; j++) {
            if (f32) {
                uint32_t u = tl_get_u32(src + 4 * j);
                memcpy(&dst[j], &u, 4);
            } else {
                uint16_t h = (uint16_t)(src[2 * j] | src[2 * j + 1] << 8);
                dst[j] = f16 ? tl_half_to_float(h) : tl_bf16_to_float(h);
            }
            if (!isfinite(dst[j])) {
                rc = tl_fail(TLEARN_EFORMAT, "%s: tensor '%s': element %zu is not finite", fn,
                             t->name, j);
                break;
            }
        }
        nmatched++;
    }
    for (int i = 0, k = 0; !rc && all_model && i < m->nlayers; i++)
        for (int p = 0; !rc && p < m->layers[i]->nparam; p++, k++)
            if (!staged[k])
                rc = tl_fail(TLEARN_ENOTFOUND, "%s: model tensor '%s.%s' is not in the file",
                             fn, m->layers[i]->name, m->layers[i]->param[p].name);
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
    tl_free(e);
    tl_json_free(root);
    if (!rc && matched)
        *matched = nmatched;
    return rc;
}

int tlearn_model_import_safetensors_buffer(tlearn_model *m, const void *data, size_t len,
                                           tlearn_name_map_fn map, void *user, unsigned flags,
                                           size_t *matched)
{
    static const char fn[] = "tlearn_model_import_safetensors_buffer";
    int rc = tl_io_weights_args(fn, m, flags);
    if (!rc)
        rc = tl_io_data_arg(fn, &data, len);
    return rc ? rc : tl_safetensors_import_buffer(fn, m, data, len, map, user, flags, matched);
}

int tlearn_model_import_safetensors(tlearn_model *m, const char *path, tlearn_name_map_fn map,
                                    void *user, unsigned flags, size_t *matched)
{
    static const char fn[] = "tlearn_model_import_safetensors";
    TL_CHECK_MODEL(fn, m);
    if (!path)
        return tl_fail(TLEARN_EINVAL, "%s: path is NULL", fn);
    int rc = tl_io_weights_args(fn, m, flags);
    if (rc)
        return rc;
    unsigned char *buf;
    size_t len;
    rc = tl_file_read(fn, path, &buf, &len);
    if (rc)
        return rc;
    rc = tl_safetensors_import_buffer(fn, m, buf, len, map, user, flags, matched);
    tl_free(buf);
    return rc;
}

void tl_wb_json_str(tl_wbuf *b, const char *s)
{
    tl_wb_bytes(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            tl_wb_bytes(b, "\\", 1);
        tl_wb_bytes(b, s, 1);
    }
    tl_wb_bytes(b, "\"", 1);
}

int tl_safetensors_build(const char *fn, const tl_st_tensor *ts, size_t count, tl_wbuf *out)
{
    tl_wbuf h = {0};
    char tmp[160];
    memset(out, 0, sizeof *out);
    tl_wb_zeros(&h, 8); /* the header length, patched below */
    tl_wb_bytes(&h, "{\"__metadata__\":{\"format\":\"pt\"}", 31);
    uint64_t off = 0;
    for (size_t i = 0; i < count; i++) {
        const tl_tensor *x = ts[i].t;
        tl_wb_bytes(&h, ",", 1);
        tl_wb_json_str(&h, ts[i].name);
        tl_wb_bytes(&h, ":{\"dtype\":\"F32\",\"shape\":[", 25);
        for (int d = 0; d < x->ndim; d++) {
            int k = snprintf(tmp, sizeof tmp, d ? ",%d" : "%d", x->dims[d]);
            tl_wb_bytes(&h, tmp, (size_t)k);
        }
        int k = snprintf(tmp, sizeof tmp, "],\"data_offsets\":[%llu,%llu]}",
                         (unsigned long long)off,
                         (unsigned long long)(off + 4 * (uint64_t)x->numel));
        tl_wb_bytes(&h, tmp, (size_t)k);
        off += 4 * (uint64_t)x->numel;
    }
    tl_wb_bytes(&h, "}", 1);
    /* Pad the header with spaces so the data starts 8-byte aligned, as the reference
     * writer does. */
    while (h.len % 8)
        tl_wb_bytes(&h, " ", 1);
    if (!h.oom)
        tl_put_u64(h.p, h.len - 8);
    if (!h.oom && off < SIZE_MAX - h.len)
        tl_wb_reserve(out, h.len + (size_t)off); /* exact: the caller may keep the buffer */
    tl_wb_bytes(out, h.p, h.len);
    for (size_t i = 0; i < count; i++) {
        const tl_tensor *x = ts[i].t;
        size_t at = out->len;
        tl_wb_zeros(out, 4 * x->numel);
        if (!out->oom)
            tl_floats_to_le(out->p + at, x->data, x->numel);
    }
    int oom = h.oom || out->oom;
    tl_wb_free(&h);
    if (oom) {
        tl_wb_free(out);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    return TLEARN_OK;
}

int tl_safetensors_write(const char *fn, const char *path, const tl_st_tensor *ts,
                         size_t count)
{
    tl_wbuf out;
    int rc = tl_safetensors_build(fn, ts, count, &out);
    if (!rc)
        rc = tl_file_write_atomic(fn, path, out.p, out.len);
    tl_wb_free(&out);
    return rc;
}

/* Every parameter and buffer of @p m, named "layer.param", as safetensors bytes. */
static int export_model(const char *fn, const tlearn_model *m, tl_wbuf *out)
{
    memset(out, 0, sizeof *out);
    int rc = tl_io_check_model_values(fn, m);
    if (rc)
        return rc;
    size_t count = 0;
    for (int i = 0; i < m->nlayers; i++)
        count += (size_t)m->layers[i]->nparam;
    tl_st_tensor *ts = tl_alloc_array(count + 1, sizeof *ts);
    char *names = tl_alloc_array(count + 1, TL_TENSOR_NAME_MAX);
    if (!ts || !names)
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    for (int i = 0, k = 0; !rc && i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++, k++) {
            char *nm = names + (size_t)k * TL_TENSOR_NAME_MAX;
            snprintf(nm, TL_TENSOR_NAME_MAX, "%s.%s", m->layers[i]->name,
                     m->layers[i]->param[p].name);
            ts[k].name = nm;
            ts[k].t = &m->layers[i]->param[p].t;
        }
    if (!rc)
        rc = tl_safetensors_build(fn, ts, count, out);
    tl_free(ts);
    tl_free(names);
    return rc;
}

int tlearn_model_export_safetensors_buffer(const tlearn_model *m, void **data, size_t *size)
{
    static const char fn[] = "tlearn_model_export_safetensors_buffer";
    int rc = tl_io_out_args(fn, m, data, size);
    tl_wbuf out;
    if (!rc)
        rc = export_model(fn, m, &out);
    if (!rc) {
        *data = out.p;
        *size = out.len;
    }
    return rc;
}

int tlearn_model_export_safetensors(const tlearn_model *m, const char *path)
{
    static const char fn[] = "tlearn_model_export_safetensors";
    TL_CHECK_MODEL(fn, m);
    if (!path || !*path)
        return tl_fail(TLEARN_EINVAL, "%s: path is %s", fn, !path ? "NULL" : "empty");
    tl_wbuf out;
    int rc = export_model(fn, m, &out);
    if (!rc)
        rc = tl_file_write_atomic(fn, path, out.p, out.len);
    tl_wb_free(&out);
    return rc;
}
