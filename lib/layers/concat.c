/* Concatenation of 2..TL_MAX_INPUTS inputs along one axis of the example, as torch.cat and
 * ONNX Concat; the other dims must match. Each example is outer x D x inner in memory
 * (tl_shape_outer/inner), so input k is a run of d_k*inner floats in each of n*outer rows:
 * along channels of (C, H, W) (DenseNet) that is one memcpy per input and example.
 * Backward hands each input its run of dout; an input that appears twice (cat([x, x]))
 * accumulates its second share. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct concat_cfg {
    int axis; /* as given: arguments() returns it */
    int ax;   /* 0..rank-1, set by setup */
} concat_cfg;

static int concat_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni != 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "concat '%s': takes 1 integer argument (axis), got %d "
                       "integer and %d float", L->name, ni, nf);
    if (L->ninputs < 2 || L->ninputs > TL_MAX_INPUTS)
        return tl_fail(TLEARN_EINVAL, "concat '%s': needs 2..%d inputs, has %d", L->name,
                       TL_MAX_INPUTS, L->ninputs);
    concat_cfg c = {ia[0], 0};
    return tl_layer_config(L, &c, sizeof c);
}

static void concat_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    ia[0] = ((const concat_cfg *)L->cfg)->axis;
    *ni = 1;
    *nf = 0;
}

static int concat_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    concat_cfg *c = L->cfg;
    tl_shape s = L->in[0];
    char sa[TL_SHAPE_STR], sb[TL_SHAPE_STR];
    int ax = tl_shape_axis(c->axis, s.rank);
    if (ax < 0)
        return tl_fail(TLEARN_ESHAPE, "concat '%s': axis %d is out of range for inputs of "
                       "rank %d (shape %s)", L->name, c->axis, s.rank, tl_shape_str(s, sa));
    long long extent = 0;
    for (int k = 0; k < L->ninputs; k++) {
        tl_shape t = L->in[k];
        int same = t.rank == s.rank;
        for (int i = 0; same && i < s.rank; i++)
            same = i == ax || t.d[i] == s.d[i];
        if (!same)
            return tl_fail(TLEARN_ESHAPE, "concat '%s': input %d has shape %s, input 0 %s; "
                           "all dims but axis %d must match", L->name, k, tl_shape_str(t, sa),
                           tl_shape_str(s, sb), c->axis);
        extent += t.d[ax];
    }
    s.d[ax] = extent > INT_MAX ? INT_MAX : (int)extent;
    if (extent > INT_MAX || tl_shape_size(s) > (size_t)INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "concat '%s': the output has %lld x %zu elements per "
                       "example, more than 2^31", L->name, extent,
                       tl_shape_outer(s, ax) * tl_shape_inner(s, ax));
    c->ax = ax;
    L->out = s;
    return TLEARN_OK;
}

static void concat_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                           size_t n, float *saved)
{
    (void)ex; (void)saved;
    int ax = ((const concat_cfg *)L->cfg)->ax;
    size_t rows = n * tl_shape_outer(L->out, ax), inner = tl_shape_inner(L->out, ax);
    size_t run = (size_t)L->out.d[ax] * inner, off = 0;
    for (int k = 0; k < L->ninputs; k++) {
        size_t len = (size_t)L->in[k].d[ax] * inner;
        tl_copy_blocks(out + off, run, 0, in[k], len, 0, rows, 1, len, 0);
        off += len;
    }
}

static void concat_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                            const float *out, const float *dout, float *const *din, int accum,
                            size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    int ax = ((const concat_cfg *)L->cfg)->ax;
    size_t rows = n * tl_shape_outer(L->out, ax), inner = tl_shape_inner(L->out, ax);
    size_t run = (size_t)L->out.d[ax] * inner, off = 0;
    for (int k = 0; k < L->ninputs; k++) {
        size_t len = (size_t)L->in[k].d[ax] * inner;
        if (din[k]) {
            int acc = accum;
            for (int j = 0; j < k && !acc; j++)
                acc = din[j] == din[k]; /* the same producer again: add its second share */
            tl_copy_blocks(din[k], len, 0, dout + off, run, 0, rows, 1, len, acc);
        }
        off += len;
    }
}

const tl_layer_ops tl_concat_ops = {
    .kind = TLEARN_LAYER_CONCAT,
    .kind_name = "concat",
    .bwd_ignores_output = 1,
    .configure = concat_configure,
    .arguments = concat_arguments,
    .setup = concat_setup,
    .forward = concat_forward,
    .backward = concat_backward,
};
