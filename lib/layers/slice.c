/* Slice along one axis of the example, as ONNX Slice with one axis and a positive step
 * (torch's x[:, a:b:s] on that axis): negative start and end count from the end, then both
 * clamp to 0..size; the output takes ceil((end - start) / step) entries and may not be
 * empty. Split (ShuffleNetV2's two channel halves) is two slices of the same input.
 * Backward scatters dout into the sliced entries of din, zeros elsewhere. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct slice_cfg {
    int axis, start, end, step; /* as given */
    int ax, first, count;       /* resolved by setup */
} slice_cfg;

static int slice_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni != 4 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "slice '%s': takes 4 integer arguments (axis, start, "
                       "end, step), got %d integer and %d float", L->name, ni, nf);
    if (L->ninputs != 1)
        return tl_fail(TLEARN_EINVAL, "slice '%s': needs 1 input, has %d", L->name,
                       L->ninputs);
    if (ia[3] < 1)
        return tl_fail(TLEARN_EINVAL, "slice '%s': step is %d, must be >= 1", L->name, ia[3]);
    slice_cfg c = {ia[0], ia[1], ia[2], ia[3], 0, 0, 0};
    return tl_layer_config(L, &c, sizeof c);
}

static void slice_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const slice_cfg *c = L->cfg;
    ia[0] = c->axis;
    ia[1] = c->start;
    ia[2] = c->end;
    ia[3] = c->step;
    *ni = 4;
    *nf = 0;
}

/* ONNX's rule for a start or end index over an axis of @p size (positive step). */
static long long clamp_index(int v, int size)
{
    long long i = v < 0 ? (long long)v + size : v;
    return i < 0 ? 0 : i > size ? size : i;
}

static int slice_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    slice_cfg *c = L->cfg;
    tl_shape s = L->in[0];
    char buf[TL_SHAPE_STR];
    int ax = tl_shape_axis(c->axis, s.rank);
    if (ax < 0)
        return tl_fail(TLEARN_ESHAPE, "slice '%s': axis %d is out of range for an input of "
                       "rank %d (shape %s)", L->name, c->axis, s.rank, tl_shape_str(s, buf));
    long long a = clamp_index(c->start, s.d[ax]), b = clamp_index(c->end, s.d[ax]);
    if (b <= a)
        return tl_fail(TLEARN_ESHAPE, "slice '%s': [%d:%d] of axis %d (size %d) is empty",
                       L->name, c->start, c->end, c->axis, s.d[ax]);
    c->ax = ax;
    c->first = (int)a;
    c->count = (int)((b - a + c->step - 1) / c->step);
    s.d[ax] = c->count;
    L->out = s;
    return TLEARN_OK;
}

/* Rows of the example (n*outer), and the blocks the slice takes from each row: with step 1
 * one run of count*inner floats, else count runs of inner floats, step*inner apart. */
static void slice_blocks(const tl_layer *L, size_t n, size_t *rows, size_t *count, size_t *len,
                         size_t *step, size_t *row, size_t *first)
{
    const slice_cfg *c = L->cfg;
    size_t inner = tl_shape_inner(L->in[0], c->ax);
    *rows = n * tl_shape_outer(L->in[0], c->ax);
    *row = (size_t)L->in[0].d[c->ax] * inner;
    *first = (size_t)c->first * inner;
    *step = (size_t)c->step * inner;
    *count = c->step == 1 ? 1 : (size_t)c->count;
    *len = c->step == 1 ? (size_t)c->count * inner : inner;
}

static void slice_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                          size_t n, float *saved)
{
    (void)ex; (void)saved;
    size_t rows, count, len, step, row, first;
    slice_blocks(L, n, &rows, &count, &len, &step, &row, &first);
    tl_copy_blocks(out, count * len, len, in[0] + first, row, step, rows, count, len, 0);
}

static void slice_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                           const float *out, const float *dout, float *const *din, int accum,
                           size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    if (!din[0])
        return;
    size_t rows, count, len, step, row, first;
    slice_blocks(L, n, &rows, &count, &len, &step, &row, &first);
    if (!accum) /* entries the slice skipped get no gradient */
        memset(din[0], 0, sizeof(float) * rows * row);
    tl_copy_blocks(din[0] + first, row, step, dout, count * len, len, rows, count, len, accum);
}

const tl_layer_ops tl_slice_ops = {
    .kind = TLEARN_LAYER_SLICE,
    .kind_name = "slice",
    .bwd_ignores_output = 1,
    .configure = slice_configure,
    .arguments = slice_arguments,
    .setup = slice_setup,
    .forward = slice_forward,
    .backward = slice_backward,
};
