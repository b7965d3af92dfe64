/* A new per-example shape of rank 1..4 with the same element count, as ONNX Reshape (with
 * allowzero = 0) without the batch axis: a 0 copies the input's dim at the same index, one
 * -1 takes what the others leave. The data are already in that order, so forward is a copy:
 * the planner gives every layer its own output buffer, and aliasing the input would need
 * the planner to share one buffer between two layers' liveness (and backward's accum
 * rules); a memcpy costs one pass over memory, little beside the convolutions around it. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct reshape_cfg {
    int rank;
    int dims[TL_MAX_RANK]; /* as given: 0 and -1 kept for arguments() */
} reshape_cfg;

static int reshape_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni < 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "reshape '%s': takes integer arguments rank, d0 .. "
                       "d{rank-1}, got %d integer and %d float", L->name, ni, nf);
    int rank = ia[0];
    if (rank < 1 || rank > TL_MAX_RANK)
        return tl_fail(TLEARN_EINVAL, "reshape '%s': rank %d is not in 1..%d", L->name, rank,
                       TL_MAX_RANK);
    if (ni != 1 + rank)
        return tl_fail(TLEARN_EINVAL, "reshape '%s': rank %d needs %d integer arguments, got "
                       "%d", L->name, rank, 1 + rank, ni);
    if (L->ninputs != 1)
        return tl_fail(TLEARN_EINVAL, "reshape '%s': needs 1 input, has %d", L->name,
                       L->ninputs);
    reshape_cfg c = {rank, {0}};
    int infer = 0;
    for (int i = 0; i < rank; i++) {
        int d = ia[1 + i];
        if (d < -1 || (d == -1 && infer++))
            return tl_fail(TLEARN_EINVAL, "reshape '%s': dim %d is %d; dims are >= 1, 0 (the "
                           "input's) or one -1 (inferred)", L->name, i, d);
        c.dims[i] = d;
    }
    return tl_layer_config(L, &c, sizeof c);
}

static void reshape_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const reshape_cfg *c = L->cfg;
    ia[0] = c->rank;
    for (int i = 0; i < c->rank; i++)
        ia[1 + i] = c->dims[i];
    *ni = 1 + c->rank;
    *nf = 0;
}

static int reshape_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const reshape_cfg *c = L->cfg;
    tl_shape in = L->in[0];
    char sa[TL_SHAPE_STR];
    int dims[TL_MAX_RANK], infer = -1;
    size_t total = tl_shape_size(in), known = 1;
    for (int i = 0; i < c->rank; i++) {
        dims[i] = c->dims[i];
        if (dims[i] == 0) {
            if (i >= in.rank)
                return tl_fail(TLEARN_ESHAPE, "reshape '%s': dim %d is 0 (copy the input's) "
                               "but the input %s has rank %d", L->name, i,
                               tl_shape_str(in, sa), in.rank);
            dims[i] = in.d[i];
        }
        if (dims[i] == -1)
            infer = i;
        else if (known <= total) /* stop multiplying once too large: no overflow */
            known *= (size_t)dims[i];
    }
    int fits = infer >= 0 ? known <= total && total % known == 0 : known == total;
    if (!fits) {
        char sb[TL_SHAPE_STR];
        int given[TL_MAX_RANK];
        memcpy(given, c->dims, sizeof given);
        return tl_fail(TLEARN_ESHAPE, "reshape '%s': input %s has %zu elements per example; "
                       "they do not fit %s", L->name, tl_shape_str(in, sa), total,
                       tl_shape_str(tl_shape_of(c->rank, given), sb));
    }
    if (infer >= 0)
        dims[infer] = (int)(total / known);
    L->out = tl_shape_of(c->rank, dims);
    return TLEARN_OK;
}

static void reshape_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                            size_t n, float *saved)
{
    (void)ex; (void)saved;
    memcpy(out, in[0], sizeof(float) * n * tl_shape_size(L->out));
}

static void reshape_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                             const float *out, const float *dout, float *const *din, int accum,
                             size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    if (din[0])
        tl_copy_blocks(din[0], 0, 0, dout, 0, 0, 1, 1, n * tl_shape_size(L->out), accum);
}

const tl_layer_ops tl_reshape_ops = {
    .kind = TLEARN_LAYER_RESHAPE,
    .kind_name = "reshape",
    .bwd_ignores_output = 1,
    .configure = reshape_configure,
    .arguments = reshape_arguments,
    .setup = reshape_setup,
    .forward = reshape_forward,
    .backward = reshape_backward,
};
