/* ONNX import: state shared by the files of lib/io/onnx. The only place outside the
 * generated code that sees protobuf-c types.
 *
 * The importer walks the graph once, in node order (ONNX requires topological order).
 * Every value name of the graph is an ox_value: either a constant (an initializer, a
 * Constant node, or a shape computation folded at import time) or an activation produced
 * by a libtlearn layer. Operators map onto layers through tl_model_add(), the one door
 * every part of the library builds layers through. */
#ifndef TL_ONNX_INTERNAL_H
#define TL_ONNX_INTERNAL_H

#include <stdint.h>

#include "onnx.pb-c.h"
#include "../../model/model.h"

/* The symbolic batch size inside folded shape tensors (Shape of an activation). */
#define OX_BATCH INT64_MIN
#define OX_MAX_RANK 8

/* A constant tensor converted from the file: float or int64 data. */
typedef struct ox_const {
    int is_int;
    int ndim;
    int64_t dims[OX_MAX_RANK];
    size_t numel;
    float *f;     /* numel floats when !is_int */
    int64_t *i;   /* numel integers when is_int */
} ox_const;

enum { OX_UNSEEN = 0, OX_CONST, OX_ACT };

typedef struct ox_value {
    const char *name;  /* borrowed from the unpacked message */
    int kind;
    int uses;          /* node inputs plus the graph output that read it */
    int is_output;     /* the graph output */
    /* OX_CONST: tp is an initializer converted on first use into c. */
    const Tlonnx__TensorProto *tp;
    ox_const *c;
    /* OX_ACT */
    int layer;         /* producing layer; -1 is the model input */
    int rank;          /* 2: (N, F)   4: (N, C, H, W) as the ONNX graph sees it */
    tl_shape shape;
    int pad_h, pad_w;  /* zero padding of a Pad node, to be folded into the consumer */
    int bias_layer;    /* the raw output of this layer (which has a bias): an Add of a
                        * constant can fold into that bias. -1: no such layer. */
} ox_value;

typedef struct ox_ctx {
    const char *fn;            /* public entry point, for messages */
    tlearn_model *m;
    const Tlonnx__GraphProto *g;
    int64_t opset;             /* default-domain opset version */
    int64_t fixed_batch;       /* batch size of the graph input when fixed, else 0 */
    ox_value *vals;
    size_t nvals, capvals;
    uint32_t *table;           /* open-addressing hash: name -> 1 + index into vals */
    size_t tcap;
    ox_const **consts;         /* every converted constant, owned */
    size_t nconsts, capconsts;
    const Tlonnx__NodeProto *node; /* node being imported, for messages */
    size_t node_index;
} ox_ctx;

/* Fail with "fn: node 'name' (Op): message". */
int ox_fail(ox_ctx *c, int status, const char *fmt, ...) TL_PRINTF(3, 4);

/* Look a value up by name; NULL when absent. */
ox_value *ox_find(ox_ctx *c, const char *name);

/* ---- onnx_tensor.c ---- */
/* Convert an initializer or attribute tensor into a new constant owned by @p c. */
int ox_tensor_convert(ox_ctx *c, const Tlonnx__TensorProto *t, ox_const **out);
/* A new constant of the given shape owned by @p c (data zeroed). */
int ox_const_new(ox_ctx *c, int is_int, int ndim, const int64_t *dims, ox_const **out);
void ox_const_free(ox_const *k);
float ox_half_to_float(uint16_t h);

/* ---- onnx_ops.c ---- */
/* Import one node: define its outputs, adding layers where it computes. */
int ox_node(ox_ctx *c, const Tlonnx__NodeProto *node);

#endif
