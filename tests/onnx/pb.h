/* A tiny protobuf writer for the ONNX tests: builds ONNX models byte by byte, so tests can
 * make exactly the valid or broken input they need without Python. Field numbers are
 * ONNX's (onnx/onnx.proto). Header-only; every function aborts the test on allocation
 * failure through cmocka's assert. */
#ifndef TL_TEST_PB_H
#define TL_TEST_PB_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

typedef struct pb {
    uint8_t *p;
    size_t n, cap;
} pb;

static void pb_raw(pb *b, const void *data, size_t len)
{
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + len)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (len)
        memcpy(b->p + b->n, data, len);
    b->n += len;
}

static void pb_free(pb *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void pb_varint(pb *b, uint64_t v)
{
    uint8_t t[10];
    size_t k = 0;
    do {
        t[k] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            t[k] |= 0x80;
        k++;
    } while (v);
    pb_raw(b, t, k);
}

static void pb_tag(pb *b, unsigned field, unsigned wire)
{
    pb_varint(b, ((uint64_t)field << 3) | wire);
}

static void pb_int(pb *b, unsigned field, int64_t v)
{
    pb_tag(b, field, 0);
    pb_varint(b, (uint64_t)v);
}

static void pb_float(pb *b, unsigned field, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    pb_tag(b, field, 5);
    pb_raw(b, le, 4);
}

static void pb_bytes(pb *b, unsigned field, const void *data, size_t len)
{
    pb_tag(b, field, 2);
    pb_varint(b, len);
    pb_raw(b, data, len);
}

static void pb_str(pb *b, unsigned field, const char *s)
{
    pb_bytes(b, field, s, strlen(s));
}

/* Append @p sub as a length-delimited field and free it. */
static void pb_msg(pb *b, unsigned field, pb *sub)
{
    pb_bytes(b, field, sub->p, sub->n);
    pb_free(sub);
}

/* ---- ONNX messages ---- */

enum { ONNX_FLOAT = 1, ONNX_INT64 = 7, ONNX_FLOAT16 = 10 };

/* TensorProto FLOAT with raw_data (little-endian). */
static pb onnx_tensor_f32(const char *name, int ndim, const int64_t *dims, const float *v,
                          size_t n)
{
    pb t = {0};
    for (int d = 0; d < ndim; d++)
        pb_int(&t, 1, dims[d]);
    pb_int(&t, 2, ONNX_FLOAT);
    pb_str(&t, 8, name);
    pb raw = {0};
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
        pb_raw(&raw, le, 4);
    }
    pb_msg(&t, 9, &raw);
    return t;
}

/* TensorProto INT64 with int64_data (packed). */
static pb onnx_tensor_i64(const char *name, int ndim, const int64_t *dims, const int64_t *v,
                          size_t n)
{
    pb t = {0};
    for (int d = 0; d < ndim; d++)
        pb_int(&t, 1, dims[d]);
    pb_int(&t, 2, ONNX_INT64);
    pb_str(&t, 8, name);
    pb packed = {0};
    for (size_t i = 0; i < n; i++)
        pb_varint(&packed, (uint64_t)v[i]);
    pb_msg(&t, 7, &packed);
    return t;
}

/* ValueInfoProto of a FLOAT tensor; a dimension of 0 is symbolic ("N"). */
static pb onnx_value_info_typed(const char *name, int elem_type, int ndim, const int64_t *dims)
{
    pb shape = {0};
    for (int d = 0; d < ndim; d++) {
        pb dim = {0};
        if (dims[d] > 0)
            pb_int(&dim, 1, dims[d]);
        else
            pb_str(&dim, 2, "N");
        pb_msg(&shape, 1, &dim);
    }
    pb tt = {0};
    pb_int(&tt, 1, elem_type);
    pb_msg(&tt, 2, &shape);
    pb type = {0};
    pb_msg(&type, 1, &tt);
    pb vi = {0};
    pb_str(&vi, 1, name);
    pb_msg(&vi, 2, &type);
    return vi;
}

static pb onnx_value_info(const char *name, int ndim, const int64_t *dims)
{
    return onnx_value_info_typed(name, ONNX_FLOAT, ndim, dims);
}

static pb onnx_attr_int(const char *name, int64_t v)
{
    pb a = {0};
    pb_str(&a, 1, name);
    pb_int(&a, 3, v);
    pb_int(&a, 20, 2);
    return a;
}

static pb onnx_attr_float(const char *name, float v)
{
    pb a = {0};
    pb_str(&a, 1, name);
    pb_float(&a, 2, v);
    pb_int(&a, 20, 1);
    return a;
}

static pb onnx_attr_ints(const char *name, int n, const int64_t *v)
{
    pb a = {0};
    pb_str(&a, 1, name);
    for (int i = 0; i < n; i++)
        pb_int(&a, 8, v[i]);
    pb_int(&a, 20, 7);
    return a;
}

static pb onnx_attr_str(const char *name, const char *v)
{
    pb a = {0};
    pb_str(&a, 1, name);
    pb_str(&a, 4, v);
    pb_int(&a, 20, 3);
    return a;
}

/* NodeProto; inputs/outputs are NULL-terminated lists, attributes consumed (NULL-ended). */
static pb onnx_node(const char *op, const char *name, const char *const *in,
                    const char *const *out, pb *attrs)
{
    pb nd = {0};
    for (; *in; in++)
        pb_str(&nd, 1, *in);
    for (; *out; out++)
        pb_str(&nd, 2, *out);
    pb_str(&nd, 3, name);
    pb_str(&nd, 4, op);
    for (; attrs && attrs->p; attrs++)
        pb_msg(&nd, 5, attrs);
    return nd;
}

/* ModelProto: opset then the graph last, so that every strict prefix of the encoding cuts
 * into the graph (or drops it). */
static pb onnx_model(int64_t opset, pb *graph)
{
    pb m = {0};
    pb_int(&m, 1, 8);
    pb op = {0};
    pb_str(&op, 1, "");
    pb_int(&op, 2, opset);
    pb_msg(&m, 8, &op);
    pb_msg(&m, 7, graph);
    return m;
}

#endif
