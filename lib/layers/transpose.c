/* A permutation of the example's axes, as torch.permute / ONNX Transpose with the batch
 * kept first: output axis i is input axis perm[i]. ConvNeXt's (C, H, W) -> (H, W, C) and
 * ShuffleNet's channel shuffle (reshape (g, C/g, H, W), perm (1, 0, 2, 3), reshape back).
 *
 * Each call first merges axes that stay neighbours (and drops size-1 axes), with the batch
 * as axis 0, so that (C, H, W) -> (H, W, C) becomes n transposes of a C x HW matrix and the
 * shuffle n*C copies of H*W floats. Then, if the innermost output axis is innermost in
 * the input too, rows are copied; else the two axes that are innermost in input and output
 * are transposed in 32 x 32 tiles, which keep both reads and writes within cache lines.
 * Backward is the same with the inverse permutation, from dout to din. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct transpose_cfg {
    int rank;
    int perm[TL_MAX_RANK], inv[TL_MAX_RANK];
} transpose_cfg;

static int transpose_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni < 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "transpose '%s': takes integer arguments rank, p0 .. "
                       "p{rank-1}, got %d integer and %d float", L->name, ni, nf);
    int rank = ia[0];
    if (rank < 1 || rank > TL_MAX_RANK || ni != 1 + rank)
        return tl_fail(TLEARN_EINVAL, "transpose '%s': rank %d with %d integer arguments; "
                       "rank is 1..%d, followed by that many axes", L->name, rank, ni,
                       TL_MAX_RANK);
    if (L->ninputs != 1)
        return tl_fail(TLEARN_EINVAL, "transpose '%s': needs 1 input, has %d", L->name,
                       L->ninputs);
    transpose_cfg c = {rank, {0}, {-1, -1, -1, -1}};
    for (int i = 0; i < rank; i++) {
        int p = ia[1 + i];
        if (p < 0 || p >= rank || c.inv[p] >= 0)
            return tl_fail(TLEARN_EINVAL, "transpose '%s': perm[%d] = %d; perm must hold each "
                           "axis 0..%d once", L->name, i, p, rank - 1);
        c.perm[i] = p;
        c.inv[p] = i;
    }
    return tl_layer_config(L, &c, sizeof c);
}

static void transpose_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const transpose_cfg *c = L->cfg;
    ia[0] = c->rank;
    for (int i = 0; i < c->rank; i++)
        ia[1 + i] = c->perm[i];
    *ni = 1 + c->rank;
    *nf = 0;
}

static int transpose_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const transpose_cfg *c = L->cfg;
    tl_shape in = L->in[0];
    if (in.rank != c->rank) {
        char buf[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "transpose '%s': a permutation of %d axes for an input "
                       "of rank %d (shape %s)", L->name, c->rank, in.rank,
                       tl_shape_str(in, buf));
    }
    int dims[TL_MAX_RANK];
    for (int i = 0; i < c->rank; i++)
        dims[i] = in.d[c->perm[i]];
    L->out = tl_shape_of(c->rank, dims);
    return TLEARN_OK;
}

#define AXES (TL_MAX_RANK + 1) /* the batch and the example's axes */
#define TILE 32

/* The permutation reduced to r axes in output order: size, input stride and output stride
 * of each. */
typedef struct tp_plan {
    int r;
    size_t dim[AXES], ist[AXES], ost[AXES];
} tp_plan;

static void tp_build(tp_plan *p, size_t n, tl_shape in, const int *perm)
{
    size_t d[AXES], s[AXES];
    int R = in.rank + 1;
    d[0] = n;
    for (int i = 0; i < in.rank; i++)
        d[i + 1] = (size_t)in.d[i];
    s[R - 1] = 1;
    for (int i = R - 2; i >= 0; i--)
        s[i] = s[i + 1] * d[i + 1];
    p->r = 0;
    for (int i = 0; i < R; i++) {
        int a = i == 0 ? 0 : perm[i - 1] + 1;
        if (d[a] == 1)
            continue; /* a size-1 axis moves nothing */
        int k = p->r - 1;
        if (k >= 0 && p->ist[k] == s[a] * d[a]) { /* follows the previous axis in the input */
            p->dim[k] *= d[a];
            p->ist[k] = s[a];
        } else {
            p->dim[p->r] = d[a];
            p->ist[p->r++] = s[a];
        }
    }
    if (p->r == 0) {
        p->r = 1;
        p->dim[0] = p->ist[0] = 1;
    }
    p->ost[p->r - 1] = 1;
    for (int i = p->r - 2; i >= 0; i--)
        p->ost[i] = p->ost[i + 1] * p->dim[i + 1];
}

/* One tile: d[a*dq + b] = s[a + b*sl] (or +=) for a < na, b < nb. */
static void tile(float *restrict d, size_t dq, const float *restrict s, size_t sl, size_t na,
                 size_t nb, int accum)
{
    if (accum)
        for (size_t a = 0; a < na; a++)
            for (size_t b = 0; b < nb; b++)
                d[a * dq + b] += s[a + b * sl];
    else
        for (size_t a = 0; a < na; a++)
            for (size_t b = 0; b < nb; b++)
                d[a * dq + b] = s[a + b * sl];
}

/* dst (output order, contiguous) = src permuted by the plan, or += with @p accum. */
static void tp_run(const tp_plan *p, const float *src, float *dst, int accum)
{
    int r = p->r, last = r - 1, q = last;
    for (int i = 0; i < r; i++)
        if (p->ist[i] == 1)
            q = i; /* the axis innermost in the input (one always has stride 1) */
    /* Loop over the axes other than `last` and `q` (odometer), each a row or a tile plane. */
    int other[AXES], no = 0;
    size_t idx[AXES] = {0}, planes = 1, so = 0, dofs = 0;
    for (int i = 0; i < last; i++)
        if (i != q) {
            other[no++] = i;
            planes *= p->dim[i];
        }
    size_t len = p->dim[last], sl = p->ist[last];
    for (size_t t = 0; t < planes; t++) {
        const float *s = src + so;
        float *d = dst + dofs;
        if (q == last) { /* rows contiguous in both */
            tl_copy_blocks(d, 0, 0, s, 0, 0, 1, 1, len, accum);
        } else { /* tiles of the (q, last) plane: reads along q, writes along last */
            size_t nq = p->dim[q], dq = p->ost[q];
            for (size_t a0 = 0; a0 < nq; a0 += TILE)
                for (size_t b0 = 0; b0 < len; b0 += TILE)
                    tile(d + a0 * dq + b0, dq, s + a0 + b0 * sl, sl,
                         nq - a0 < TILE ? nq - a0 : TILE, len - b0 < TILE ? len - b0 : TILE,
                         accum);
        }
        for (int k = no - 1; k >= 0; k--) {
            int a = other[k];
            so += p->ist[a];
            dofs += p->ost[a];
            if (++idx[k] < p->dim[a])
                break;
            so -= p->ist[a] * p->dim[a];
            dofs -= p->ost[a] * p->dim[a];
            idx[k] = 0;
        }
    }
}

static void transpose_forward(tl_layer *L, const tl_exec *ex, const float *const *in,
                              float *out, size_t n, float *saved)
{
    (void)ex; (void)saved;
    tp_plan p;
    tp_build(&p, n, L->in[0], ((const transpose_cfg *)L->cfg)->perm);
    tp_run(&p, in[0], out, 0);
}

static void transpose_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                               const float *out, const float *dout, float *const *din,
                               int accum, size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    if (!din[0])
        return;
    tp_plan p;
    tp_build(&p, n, L->out, ((const transpose_cfg *)L->cfg)->inv);
    tp_run(&p, dout, din[0], accum);
}

const tl_layer_ops tl_transpose_ops = {
    .kind = TLEARN_LAYER_TRANSPOSE,
    .kind_name = "transpose",
    .bwd_ignores_output = 1,
    .configure = transpose_configure,
    .arguments = transpose_arguments,
    .setup = transpose_setup,
    .forward = transpose_forward,
    .backward = transpose_backward,
};
