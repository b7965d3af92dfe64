/* NumPy broadcasting for the elementwise kinds (binary.c: two activations; scale.c: an
 * activation and a learned tensor). Shapes align on the right: (C, 1, 1) against (C, H, W)
 * is per channel, (W) against (C, H, W) is along the last axis, and a dimension of 1
 * stretches to the other operand's size.
 *
 * A plan describes the loop over n examples of the output as at most TL_BC_DIMS nested
 * dimensions (batch first) with one element stride per operand (0 where it is broadcast),
 * after dropping dimensions of size 1 and merging neighbours that both operands step
 * through alike. Equal shapes become one flat loop, per-channel gating (C, 1, 1) x
 * (C, H, W) becomes N*C rows of a scalar times H*W contiguous floats. */
#ifndef TL_BROADCAST_H
#define TL_BROADCAST_H

#include "layer.h"

#define TL_BC_DIMS (TL_MAX_RANK + 1)

typedef struct tl_bcast {
    int nd;                   /* 1 .. TL_BC_DIMS, outermost first */
    size_t size[TL_BC_DIMS];  /* extent of each dimension of the output */
    size_t st[2][TL_BC_DIMS]; /* element stride of operand 0 and 1 along it */
    size_t total;             /* output floats */
    size_t len[2];            /* floats of each operand (all n examples, or the parameter) */
} tl_bcast;

/* The NumPy broadcast of example shapes @p a and @p b into *out (rank: the larger one).
 * Returns 0, or -1 when a dimension differs and neither is 1. */
int tl_bcast_shape(tl_shape a, tl_shape b, tl_shape *out);

/* The loop over @p n examples of shape @p out (which both operands broadcast to). Operand
 * k has example shape in[k]; per_example[k] is 0 for a parameter shared by the batch. */
void tl_bcast_plan(tl_bcast *p, size_t n, tl_shape out, const tl_shape in[2],
                   const int per_example[2]);

/* out = a op b (op: enum tlearn_binary_op) over the whole plan, with up to @p threads
 * threads. */
void tl_bcast_forward(const tl_bcast *p, int op, const float *a, const float *b, float *out,
                      int threads);

/* The gradient of operand @p k of `out = a op b` from @p dout, reduced over the dimensions
 * it is broadcast along, into @p dk (added with @p accum, else overwritten). @p out is read
 * for the divisor's gradient only. */
void tl_bcast_backward(const tl_bcast *p, int op, int k, const float *dout, const float *a,
                       const float *b, const float *out, float *dk, int accum, int threads);

#endif
