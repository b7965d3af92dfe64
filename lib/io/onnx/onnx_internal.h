/* ONNX import: state shared by the files of lib/io/onnx. The only place outside the
 * generated code that sees protobuf-c types.
 *
 * The importer checks every node against the operator table first (onnx_ops.c: one
 * message lists every node it cannot map), then walks the graph once, in node order (ONNX
 * requires topological order). Every value name of the graph is an ox_value: either a
 * constant (an initializer, a Constant node, or a shape computation folded at import time)
 * or an activation produced by a libtlearn layer or a model input. Operators map onto
 * layers through tl_model_add(), the one door every part of the library builds layers
 * through.
 *
 * Adding an operator: write `static int op_x(ox_ctx *c, int arg)` in the file of its
 * concern (onnx_ops_nn.c, onnx_ops_elementwise.c, onnx_ops_norm.c, onnx_ops_shape.c) and
 * add one line to that file's table (ox_ops_nn[], ...): op type, handler, arg, opset
 * range, and an optional cheap attribute check for the pre-pass.
 *
 * Decomposed forms the exporters emit (LayerNorm at opset < 17, erf-GELU, x*sigmoid(x),
 * x*hardsigmoid(x)) are recognised before the pre-pass (onnx_fuse.c) and imported as one
 * layer at their last node. */
#ifndef TL_ONNX_INTERNAL_H
#define TL_ONNX_INTERNAL_H

#include <stdint.h>

#include "onnx.pb-c.h"
#include "../../model/model.h"

/* The symbolic batch size inside folded shape tensors (Shape of an activation). */
#define OX_BATCH INT64_MIN
#define OX_MAX_RANK 8
/* Opsets whose operator semantics the importer implements. */
#define OX_OPSET_MIN 11
#define OX_OPSET_MAX 17
/* Attribute values beyond this are refused before they reach int arithmetic. */
#define OX_MAX_ATTR (1 << 24)
/* fuse_of[] of a node whose outputs only fused patterns read: not imported. */
#define OX_DROPPED UINT32_MAX

/* A constant tensor converted from the file: float or int64 data. */
typedef struct ox_const {
    int is_int;
    int ndim;
    int64_t dims[OX_MAX_RANK];
    size_t numel;
    float *f;     /* numel floats when !is_int */
    int64_t *i;   /* numel integers when is_int */
    size_t slot;  /* index in ox_ctx.consts */
} ox_const;

enum { OX_UNSEEN = 0, OX_CONST, OX_ACT };

typedef struct ox_value {
    const char *name;  /* borrowed from the unpacked message */
    int kind;
    int uses;          /* node inputs plus the graph output that read it */
    int pending;       /* readers not imported yet: a consumed initializer is freed at 0 */
    int is_output;     /* the graph output */
    /* OX_CONST: tp is an initializer converted on first use into c. */
    const Tlonnx__TensorProto *tp;
    ox_const *c;
    int shared;        /* c is also another value's (an alias): never freed early */
    /* OX_ACT */
    int layer;         /* producing layer, or tl_input_producer(k) for model input k */
    int dtype;         /* TLEARN_DTYPE_FLOAT32, or TLEARN_DTYPE_INT32 for token ids */
    tl_shape shape;    /* one example as the ONNX graph sees it: ONNX rank = 1 + rank
                        * (the batch is dim 0). May be a view of the layer's output (a
                        * (C) view of a pooled (C, 1, 1)), same memory layout. */
    int pad[4];        /* zero padding of a Pad node on H and W (top, left, bottom,
                        * right), pending: a Conv or AveragePool folds it in, any other
                        * reader gets a pad layer (ox_in_act) */
    int bias_layer;    /* the raw output of this layer (which has a bias): an Add of a
                        * constant can fold into that bias. -1: no such layer. */
    uint32_t def_node; /* 1 + index of the node that outputs it; 0: none (an initializer,
                        * the graph input) */
} ox_value;

/* Raw bytes of an initializer kept out of the unpacked message (onnx_import.c): the
 * tensor reads them where they lie, in the file mapping or the caller's buffer. */
typedef struct ox_raw {
    const uint8_t *data;
    size_t len;
} ox_raw;

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
    ox_const **consts;         /* every converted constant, owned (NULL once freed) */
    size_t nconsts, capconsts;
    const Tlonnx__NodeProto *node; /* node being imported, for messages */
    size_t node_index;
    /* Pages of a private file mapping [map, map + map_len) may be dropped once read. */
    const uint8_t *map;
    size_t map_len;
    /* Fused patterns (onnx_fuse.c): fuse_of[i] is 1 + the index in fuse of the match that
     * covers node i, 0 for a node imported alone, OX_DROPPED for a node only fused nodes
     * read (skipped). NULL when nothing matched. */
    uint32_t *fuse_of;
    struct ox_match *fuse;
    size_t nfuse;
} ox_ctx;

/* An operator the importer maps: one line of a table in the file of its concern. */
typedef struct ox_op {
    const char *op_type;
    int (*import)(ox_ctx *c, int arg); /* define the node's outputs, adding layers */
    int arg;                           /* passed to import (an activation kind, ...) */
    int min_opset, max_opset;          /* 0: the importer's whole range */
    /* The pre-pass's cheap check on attributes alone (no shapes): NULL when the node
     * may map, else why not. NULL: nothing to check. */
    const char *(*check)(ox_ctx *c);
    const char *limits;                /* one line for doc/onnx.md */
} ox_op;

/* The tables, each ended by a line with op_type NULL. */
extern const ox_op ox_ops_nn[];
extern const ox_op ox_ops_elementwise[];
extern const ox_op ox_ops_shape[];
extern const ox_op ox_ops_norm[];

/* Fail with "fn: node 'name' (Op): message". */
int ox_fail(ox_ctx *c, int status, const char *fmt, ...) TL_PRINTF(3, 4);

/* Look a value up by name; NULL when absent. */
ox_value *ox_find(ox_ctx *c, const char *name);

/* ---- onnx_tensor.c ---- */
/* Convert an initializer or attribute tensor into a new constant owned by @p c. */
int ox_tensor_convert(ox_ctx *c, const Tlonnx__TensorProto *t, ox_const **out);
/* Check an initializer's type and data size, and give its shape, without converting. */
int ox_tensor_header(ox_ctx *c, const Tlonnx__TensorProto *t, int *is_int, int *ndim,
                     int64_t *dims, size_t *numel);
/* Convert a FLOAT/FLOAT16/BFLOAT16/DOUBLE tensor of @p n elements straight into @p dst
 * (a layer's parameter), dropping the file pages it read. */
int ox_tensor_read_floats(ox_ctx *c, const Tlonnx__TensorProto *t, float *dst, size_t n);
/* A new constant of the given shape owned by @p c (data zeroed). */
int ox_const_new(ox_ctx *c, int is_int, int ndim, const int64_t *dims, ox_const **out);
/* Free a constant owned by @p c before the end of the import. */
void ox_const_release(ox_ctx *c, ox_const *k);
void ox_const_free(ox_const *k);
float ox_half_to_float(uint16_t h);
/* "INT64" for 7, "unknown" beyond the table. */
const char *ox_type_name(int32_t t);

/* ---- onnx_ops.c: helpers for the handlers ---- */
const Tlonnx__AttributeProto *ox_attr(ox_ctx *c, const char *name);
int ox_ref_check(ox_ctx *c, const Tlonnx__AttributeProto *a);
int ox_attr_int(ox_ctx *c, const char *name, int64_t def, int64_t *out);
int ox_attr_float(ox_ctx *c, const char *name, float def, float *out);
/* String attribute compared with @p want; *present: given and not empty. */
int ox_attr_string_is(ox_ctx *c, const char *name, const char *want, int *is, int *present);
/* A list of exactly @p n integers in [lo, hi], or @p def (n values) when absent. */
int ox_attr_ints(ox_ctx *c, const char *name, size_t n, const int64_t *def, int64_t lo,
                 int64_t hi, int64_t *out);
/* Attribute lookups for the pre-pass checks, which must not fail: the integer (or @p def),
 * the string equal to @p s (absent: @p absent). */
int64_t ox_peek_int(ox_ctx *c, const char *name, int64_t def);
int ox_peek_string_is(ox_ctx *c, const char *name, const char *s, int absent);

const char *ox_in_name(ox_ctx *c, size_t k);
int ox_need_inputs(ox_ctx *c, size_t lo, size_t hi);
/* Input @p k as a float activation. Pending zero padding stays pending when @p pad_ok (the
 * caller folds it in); otherwise it becomes a pad layer that later readers share. */
int ox_in_act(ox_ctx *c, size_t k, int pad_ok, ox_value **out);
/* A pad layer of zeros (top, left, bottom, right of H and W) after layer *@p layer, which
 * becomes the pad layer. */
int ox_add_zero_pad(ox_ctx *c, int *layer, const int64_t pads[4]);
/* Input @p k as a constant, converted on first use. */
int ox_in_const(ox_ctx *c, size_t k, ox_const **out, ox_value **val);
int ox_in_is_const(ox_ctx *c, size_t k);
int ox_float_const(ox_ctx *c, size_t k, ox_const **t, ox_value **v);
int ox_int_const(ox_ctx *c, size_t k, ox_const **t);
/* Input @p k as a float initializer whose data is not converted yet (*t has its shape,
 * f NULL) when it can be read straight into a parameter (ox_load_param); else as
 * ox_float_const. */
int ox_float_const_lazy(ox_ctx *c, size_t k, ox_const *t, ox_value **v);
/* A float constant with a single value (Clip bounds, Pad value). */
int ox_scalar_float(ox_ctx *c, size_t k, float *out);
/* A per-channel vector of @p n values: every dimension but one is 1 (or n == 1). */
int ox_is_vector_of(const ox_const *t, size_t n);

ox_value *ox_out(ox_ctx *c);
/* Output 0 is layer @p layer's output, seen as its shape. */
void ox_def_act(ox_ctx *c, int layer);
/* Output 0 is layer @p layer's output seen as @p view (same size, same layout). */
void ox_def_view(ox_ctx *c, int layer, tl_shape view);
/* Output @p k is layer @p layer's output, seen as its shape (Split's outputs). */
void ox_def_act_at(ox_ctx *c, size_t k, int layer);
/* The output is the input under another name. */
void ox_def_alias(ox_ctx *c, ox_value *src);
void ox_def_const(ox_ctx *c, ox_const *k);

int ox_need_ops(ox_ctx *c, int kind, const char *what, const tl_layer_ops **ops);
/* Add a layer named after @p weight (or the node) reading @p inputs; its index in *index. */
int ox_add_layer(ox_ctx *c, const tl_layer_ops *ops, const char *weight, const int *inputs,
                 int ninputs, const int *ia, int ni, const float *fa, int nf, int *index);
/* Copy @p n floats into parameter @p pname of layer @p layer; weights must be finite. */
int ox_set_param(ox_ctx *c, int layer, const char *pname, const float *src, size_t n);
/* As ox_set_param from constant @p t of value @p v, reading a lazy one from the file. */
int ox_load_param(ox_ctx *c, int layer, const char *pname, const ox_value *v, const ox_const *t);
float *ox_param_data(ox_ctx *c, int layer, const char *pname);

/* Make @p x's producer output exactly the shape ONNX sees (ox_value.shape): a reshape
 * layer is added when they differ (ReduceMean without keepdims gives a (C) view of a
 * (C, 1, 1) pool), and later readers share it; for layers that read axes or broadcast. */
int ox_act_materialize(ox_ctx *c, ox_value *x, int *producer);

/* ---- onnx_ops_norm.c ---- */
/* A layernorm layer on @p x: over the last @p naxes axes (1..rank), or 0 over the channel
 * axis; weight and bias from constants @p w and @p b (NULL: 1 and 0). Defines output 0. */
int ox_layernorm(ox_ctx *c, ox_value *x, int naxes, float eps, const char *w, const char *b);

/* ---- onnx_fuse.c ---- */
/* Find the decomposed forms in the graph (after the readers are counted, before the
 * pre-pass): fills fuse_of and fuse. */
int ox_fuse_scan(ox_ctx *c);
/* Node @p i is the last of its match: import the whole pattern as its layer(s). */
int ox_fuse_emit(ox_ctx *c, size_t i);
/* The nodes of the match covering node @p i (for releasing their inputs). */
void ox_fuse_nodes(ox_ctx *c, size_t i, const size_t **nodes, int *n);
void ox_fuse_free(ox_ctx *c);

/* ---- constant folding (onnx_ops_shape.c) ---- */
/* 1 when a node of @p op_type whose inputs are all constants is folded at import time by
 * ox_fold (element-wise arithmetic on shapes: Add, Sub, Mul, Div), whatever the operator
 * table says about the operator on activations. */
int ox_is_fold_op(const char *op_type);
int ox_fold(ox_ctx *c);

/* ---- dispatch (onnx_ops.c) ---- */
/* The table line for @p op_type at @p opset, NULL when none (*other_opsets set when the
 * operator is mapped at other opsets). */
const ox_op *ox_op_find(const char *op_type, int64_t opset, int *other_opsets);
/* Import one node: define its outputs, adding layers where it computes. */
int ox_node(ox_ctx *c, const Tlonnx__NodeProto *node);
/* The pre-pass: every node the table cannot map, listed in one message. */
int ox_check_graph(ox_ctx *c);

#endif
