/* ONNX TensorProto -> constants: float (FLOAT, FLOAT16, BFLOAT16, DOUBLE) or int64 (INT64,
 * INT32), from raw_data (little-endian) or the typed repeated fields. Every count in the
 * file is checked against the bytes actually present before anything is allocated. */
#include <math.h>
#include <string.h>

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
    c->consts[c->nconsts++] = k;
    return TLEARN_OK;
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

static const char *type_name(int32_t t)
{
    static const char *const names[] = {"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16",
                                        "INT16", "INT32", "INT64", "STRING", "BOOL",
                                        "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64",
                                        "COMPLEX128", "BFLOAT16"};
    return t >= 0 && t <= 16 ? names[t] : "unknown";
}

int ox_tensor_convert(ox_ctx *c, const Tlonnx__TensorProto *t, ox_const **out)
{
    *out = NULL;
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
                       "DOUBLE, INT32 and INT64 are supported", name, type_name(dt), (int)dt);
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
                           type_name(dt));
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
    ox_const *k;
    rc = ox_const_new(c, is_int, (int)t->n_dims, t->dims, &k);
    if (rc)
        return rc;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (t->has_raw_data && dt == OX_FLOAT) {
        /* The common case (every PyTorch weight): the bytes are already our floats. */
        if (n)
            memcpy(k->f, t->raw_data.data, n * sizeof(float));
    } else
#endif
    if (t->has_raw_data) {
        const uint8_t *p = t->raw_data.data;
        for (size_t j = 0; j < n; j++, p += elsize) {
            uint64_t v = rd_le(p, elsize);
            switch (dt) {
            case OX_FLOAT: {
                uint32_t b = (uint32_t)v;
                memcpy(&k->f[j], &b, sizeof b);
                break;
            }
            case OX_FLOAT16: k->f[j] = ox_half_to_float((uint16_t)v); break;
            case OX_BFLOAT16: k->f[j] = bf16_to_float((uint16_t)v); break;
            case OX_DOUBLE: {
                double d;
                memcpy(&d, &v, sizeof d);
                k->f[j] = (float)d;
                break;
            }
            case OX_INT32: k->i[j] = (int32_t)(uint32_t)v; break;
            default: k->i[j] = (int64_t)v; break;
            }
        }
    } else {
        for (size_t j = 0; j < n; j++) {
            switch (dt) {
            case OX_FLOAT: k->f[j] = t->float_data[j]; break;
            case OX_DOUBLE: k->f[j] = (float)t->double_data[j]; break;
            case OX_FLOAT16: k->f[j] = ox_half_to_float((uint16_t)t->int32_data[j]); break;
            case OX_BFLOAT16: k->f[j] = bf16_to_float((uint16_t)t->int32_data[j]); break;
            case OX_INT32: k->i[j] = t->int32_data[j]; break;
            default: k->i[j] = t->int64_data[j]; break;
            }
        }
    }
    *out = k;
    return TLEARN_OK;
}
