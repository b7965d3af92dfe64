/* Elementwise a op b of two values (enum tlearn_binary_op) with NumPy broadcasting of the
 * example shapes (broadcast.h); the output has the broadcast shape. Backward gives each
 * input torch's gradient summed over the dimensions it was broadcast along.
 *
 * Arguments: ia {op}; two inputs. */
#include <stdio.h>

#include "broadcast.h"

typedef struct binary_cfg {
    int op;
} binary_cfg;

static const char *const op_names[] = {"", "add", "sub", "mul", "div"};

static int binary_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni != 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "binary '%s': expected 1 argument (op)", L->name);
    if (ia[0] < TLEARN_BINARY_ADD || ia[0] > TLEARN_BINARY_DIV)
        return tl_fail(TLEARN_EINVAL, "binary '%s': unknown op %d (1 add, 2 sub, 3 mul, 4 div)",
                       L->name, ia[0]);
    if (L->ninputs != 2)
        return tl_fail(TLEARN_EINVAL, "binary '%s': needs 2 inputs, has %d", L->name,
                       L->ninputs);
    binary_cfg cfg = {ia[0]};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void binary_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    ia[0] = ((const binary_cfg *)L->cfg)->op;
    *ni = 1;
    *nf = 0;
}

static int binary_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    if (tl_bcast_shape(L->in[0], L->in[1], &L->out)) {
        char sa[TL_SHAPE_STR], sb[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "binary %s '%s': shapes %s and %s do not broadcast "
                       "(aligned on the right, sizes must be equal or 1)",
                       op_names[((const binary_cfg *)L->cfg)->op], L->name,
                       tl_shape_str(L->in[0], sa), tl_shape_str(L->in[1], sb));
    }
    return TLEARN_OK;
}

static void binary_plan(const tl_layer *L, size_t n, tl_bcast *p)
{
    static const int per_example[2] = {1, 1};
    tl_bcast_plan(p, n, L->out, L->in, per_example);
}

static void binary_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                           size_t n, float *saved)
{
    (void)saved;
    tl_bcast p;
    binary_plan(L, n, &p);
    tl_bcast_forward(&p, ((const binary_cfg *)L->cfg)->op, in[0], in[1], out,
                     tl_blas_threads(ex->blas));
}

static void binary_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                            const float *out, const float *dout, float *const *din, int accum,
                            size_t n, const float *saved, float *const *pgrad)
{
    (void)saved; (void)pgrad;
    tl_bcast p;
    binary_plan(L, n, &p);
    int op = ((const binary_cfg *)L->cfg)->op, threads = tl_blas_threads(ex->blas);
    for (int k = 0; k < 2; k++)
        if (din[k]) /* x op x: the second gradient adds to the first */
            tl_bcast_backward(&p, op, k, dout, in[0], in[1], out, din[k],
                              accum || (k == 1 && din[1] == din[0]), threads);
}

const tl_layer_ops tl_binary_ops = {
    .kind = TLEARN_LAYER_BINARY,
    .kind_name = "binary",
    .configure = binary_configure,
    .arguments = binary_arguments,
    .setup = binary_setup,
    .forward = binary_forward,
    .backward = binary_backward,
};
