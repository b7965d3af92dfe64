/* ONNX TensorProto -> constants: float (FLOAT, FLOAT16, BFLOAT16, DOUBLE) or int64 (INT64,
 * INT32), from raw_data (little-endian) or the typed repeated fields. Every count in the
 * file is checked against the bytes actually present before anything is allocated. */
#define _DEFAULT_SOURCE /* madvise */
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "onnx_internal.h"

/* TensorProto.DataType values used here. */
enum {
    OX_FLOAT = 1,
    OX_INT32 = 6,
    OX_INT64 = 7,
    OX_FLOAT16 = 10,
    OX_DOUBLE = 11,
    OX_BFLOAT16 = 16
};

/* Constants are tensors of weights and small shapes; 2^31 elements is far beyond any
 * tensor a layer can hold and keeps every size computation well inside size_t. */
#define OX_MAX_NUMEL ((size_t)INT32_MAX)

void ox_const_free(ox_const *k)
{
    if (!k)
        return;
    tl_free(k->f);
    tl_free(k->i);
    tl_free(k);
}

static int keep(ox_ctx *c, ox_const *k)
{
    if (c->nconsts == c->capconsts) {
        size_t cap = c->capconsts ? 2 * c->capconsts : 32;
        ox_const **a = tl_alloc_array(cap, sizeof *a);
        if (!a)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
        if (c->nconsts)
            memcpy(a, c->consts, c->nconsts * sizeof *a);
        tl_free(c->consts);
        c->consts = a;
        c->capconsts = cap;
    }
    k->slot = c->nconsts;
    c->consts[c->nconsts++] = k;
    return TLEARN_OK;
}

void ox_const_release(ox_ctx *c, ox_const *k)
{
    if (k && k->slot < c->nconsts && c->consts[k->slot] == k) {
        c->consts[k->slot] = NULL;
        ox_const_free(k);
    }
}

/* Element count of a shape from the file, checked. */
static int count(ox_ctx *c, int ndim, const int64_t *dims, size_t *numel_out)
{
    if (ndim < 0 || ndim > OX_MAX_RANK)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "tensors of rank %d are not supported (at most %d)",
                       ndim, OX_MAX_RANK);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (dims[d] < 0 || (uint64_t)dims[d] > OX_MAX_NUMEL)
            return ox_fail(c, TLEARN_EFORMAT, "tensor dimension %lld is out of range",
                           (long long)dims[d]);
        if (!tl_mul_size(numel, (size_t)dims[d], &numel) || numel > OX_MAX_NUMEL)
            return ox_fail(c, TLEARN_EFORMAT, "tensor has more than 2^31 elements");
    }
    *numel_out = numel;
    return TLEARN_OK;
}

int ox_const_new(ox_ctx *c, int is_int, int ndim, const int64_t *dims, ox_const **out)
{
    *out = NULL;
    size_t numel;
    int rc = count(c, ndim, dims, &numel);
    if (rc)
        return rc;
    ox_const *k = tl_alloc_zero(sizeof *k);
    if (!k)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", c->fn);
    k->is_int = is_int;
    k->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        k->dims[d] = dims[d];
    k->numel = numel;
    /* Allocate at least one element so that data pointers are never NULL. */
    if (is_int)
        k->i = tl_alloc_array(numel ? numel : 1, sizeof(int64_t));
    else
        k->f = tl_alloc_array(numel ? numel : 1, sizeof(float));
    if ((is_int && !k->i) || (!is_int && !k->f)) {
        ox_const_free(k);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for a tensor of %zu elements", c->fn,
                       numel);
    }
    rc = keep(c, k);
    if (rc) {
        ox_const_free(k);
        return rc;
    }
    *out = k;
    return TLEARN_OK;
}

/* IEEE 754 binary16 -> binary32, exact for every input (subnormals, Inf, NaN). */
float ox_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* Subnormal: value = man * 2^-24, exactly representable in binary32. */
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint64_t rd_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int b = bytes - 1; b >= 0; b--)
        v = (v << 8) | p[b];
    return v;
}

const char *ox_type_name(int32_t t)
{
    static const char *const names[] = {"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16",
                                        "INT16", "INT32", "INT64", "STRING", "BOOL",
                                        "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64",
                                        "COMPLEX128", "BFLOAT16"};
    return t >= 0 && t <= 16 ? names[t] : "unknown";
}

/* The checks every tensor passes before its data is read: storage, type, dimensions and
 * the data present against them. */
static int header(ox_ctx *c, const Tlonnx__TensorProto *t, int32_t *dt_out, int *elsize_out,
                  int *is_int_out, size_t *n_out)
{
    const char *name = t->name ? t->name : "";
    if ((t->has_data_location && t->data_location == 1) || t->n_external_data)
        return ox_fail(c, TLEARN_EUNSUPPORTED,
                       "tensor '%.100s' keeps its data in an external file; save the model "
                       "with every tensor inside (onnx.save_model(..., "
                       "save_as_external_data=False))", name);
    if (t->has_segment)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "tensor '%.100s' is segmented", name);
    int32_t dt = t->has_data_type ? t->data_type : 0;
    int elsize, is_int;
    switch (dt) {
    case OX_FLOAT: elsize = 4; is_int = 0; break;
    case OX_FLOAT16: elsize = 2; is_int = 0; break;
    case OX_BFLOAT16: elsize = 2; is_int = 0; break;
    case OX_DOUBLE: elsize = 8; is_int = 0; break;
    case OX_INT32: elsize = 4; is_int = 1; break;
    case OX_INT64: elsize = 8; is_int = 1; break;
    default:
        return ox_fail(c, TLEARN_EUNSUPPORTED,
                       "tensor '%.100s' has data type %s (%d); FLOAT, FLOAT16, BFLOAT16, "
                       "DOUBLE, INT32 and INT64 are supported", name, ox_type_name(dt), (int)dt);
    }
    if (t->n_dims > OX_MAX_RANK)
        return ox_fail(c, TLEARN_EUNSUPPORTED, "tensor '%.100s' has rank %zu (at most %d)", name,
                       t->n_dims, OX_MAX_RANK);
    size_t n;
    int rc = count(c, (int)t->n_dims, t->dims, &n);
    if (rc)
        return tl_fail_prefix(rc, "tensor '%.100s': ", name);
    /* Check the data present against the dimensions before allocating anything. */
    size_t have;
    if (t->has_raw_data) {
        /* numel <= 2^31 and elsize <= 8: the product cannot overflow. */
        if (t->raw_data.len != n * (size_t)elsize)
            return ox_fail(c, TLEARN_EFORMAT,
                           "tensor '%.100s' has %zu bytes of raw data, expected %zu "
                           "(%zu elements of %s)", name, t->raw_data.len, n * (size_t)elsize, n,
                           ox_type_name(dt));
    } else {
        /* The typed field ONNX uses for each data type: FLOAT16/BFLOAT16 bits travel in
         * int32_data. */
        switch (dt) {
        case OX_FLOAT: have = t->n_float_data; break;
        case OX_DOUBLE: have = t->n_double_data; break;
        case OX_INT64: have = t->n_int64_data; break;
        default: have = t->n_int32_data; break;
        }
        if (have != n)
            return ox_fail(c, TLEARN_EFORMAT,
                           "tensor '%.100s' holds %zu values, its dimensions need %zu", name,
                           have, n);
    }
    *dt_out = dt;
    *elsize_out = elsize;
    *is_int_out = is_int;
    *n_out = n;
    return TLEARN_OK;
}

int ox_tensor_header(ox_ctx *c, const Tlonnx__TensorProto *t, int *is_int, int *ndim,
                     int64_t *dims, size_t *numel)
{
    int32_t dt;
    int elsize;
    int rc = header(c, t, &dt, &elsize, is_int, numel);
    if (rc)
        return rc;
    *ndim = (int)t->n_dims;
    for (size_t d = 0; d < t->n_dims; d++)
        dims[d] = t->dims[d];
    return TLEARN_OK;
}

/* Elements [j0, j1) of tensor @p t (checked by header()) into f[j] or i[j]. */
static void fill(const Tlonnx__TensorProto *t, int32_t dt, int elsize, float *f, int64_t *ii,
                 size_t j0, size_t j1)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (t->has_raw_data && dt == OX_FLOAT) {
        /* The common case (every PyTorch weight): the bytes are already our floats. */
        if (j1 > j0)
            memcpy(f + j0, t->raw_data.data + j0 * sizeof(float), (j1 - j0) * sizeof(float));
        return;
    }
#endif
    if (t->has_raw_data) {
        const uint8_t *p = t->raw_data.data + j0 * (size_t)elsize;
        for (size_t j = j0; j < j1; j++, p += elsize) {
            uint64_t v = rd_le(p, elsize);
            switch (dt) {
            case OX_FLOAT: {
                uint32_t b = (uint32_t)v;
                memcpy(&f[j], &b, sizeof b);
                break;
            }
            case OX_FLOAT16: f[j] = ox_half_to_float((uint16_t)v); break;
            case OX_BFLOAT16: f[j] = bf16_to_float((uint16_t)v); break;
            case OX_DOUBLE: {
                double d;
                memcpy(&d, &v, sizeof d);
                f[j] = (float)d;
                break;
            }
            case OX_INT32: ii[j] = (int32_t)(uint32_t)v; break;
            default: ii[j] = (int64_t)v; break;
            }
        }
        return;
    }
    for (size_t j = j0; j < j1; j++) {
        switch (dt) {
        case OX_FLOAT: f[j] = t->float_data[j]; break;
        case OX_DOUBLE: f[j] = (float)t->double_data[j]; break;
        case OX_FLOAT16: f[j] = ox_half_to_float((uint16_t)t->int32_data[j]); break;
        case OX_BFLOAT16: f[j] = bf16_to_float((uint16_t)t->int32_data[j]); break;
        case OX_INT32: ii[j] = t->int32_data[j]; break;
        default: ii[j] = t->int64_data[j]; break;
        }
    }
}

int ox_tensor_convert(ox_ctx *c, const Tlonnx__TensorProto *t, ox_const **out)
{
    *out = NULL;
    int32_t dt;
    int elsize, is_int;
    size_t n;
    int rc = header(c, t, &dt, &elsize, &is_int, &n);
    if (rc)
        return rc;
    ox_const *k;
    rc = ox_const_new(c, is_int, (int)t->n_dims, t->dims, &k);
    if (rc)
        return rc;
    fill(t, dt, elsize, k->f, k->i, 0, n);
    *out = k;
    return TLEARN_OK;
}

/* Give back the whole pages of [p, p + len) that lie in the file mapping: they were read
 * once and will not be read again, so they need not count in the process's memory. */
static void drop_pages(const ox_ctx *c, const uint8_t *p, size_t len)
{
    if (!c->map || p < c->map || p + len > c->map + c->map_len)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + len) & ~(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

int ox_tensor_read_floats(ox_ctx *c, const Tlonnx__TensorProto *t, float *dst, size_t n)
{
    int32_t dt;
    int elsize, is_int;
    size_t have;
    int rc = header(c, t, &dt, &elsize, &is_int, &have);
    if (rc)
        return rc;
    if (is_int || have != n)
        return ox_fail(c, TLEARN_EFORMAT, "tensor '%.100s' does not hold %zu floats",
                       t->name ? t->name : "", n);
    /* In chunks of 4 MiB, so that at most one chunk of the file is resident beyond what
     * the layers hold. */
    const size_t chunk = ((size_t)4 << 20) / (size_t)elsize;
    for (size_t j = 0; j < n; j += chunk) {
        size_t e = n - j < chunk ? n : j + chunk;
        fill(t, dt, elsize, dst, NULL, j, e);
        if (t->has_raw_data)
            drop_pages(c, t->raw_data.data + j * (size_t)elsize, (e - j) * (size_t)elsize);
    }
    return TLEARN_OK;
}
