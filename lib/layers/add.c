/* Residual sum of two inputs of the same shape: out = a + b, or relu(a + b) when the
 * ReLU after a residual block is folded in (layer.h epilogues; its backward reads only its
 * output). Backward hands the output gradient to both inputs; when both inputs are the same
 * tensor (x + x) the second contribution is added to the first. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

static int add_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)ia; (void)fa;
    if (ni != 0 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "add '%s': takes no arguments", L->name);
    if (L->ninputs != 2)
        return tl_fail(TLEARN_EINVAL, "add '%s': needs 2 inputs, has %d", L->name, L->ninputs);
    return TLEARN_OK;
}

static void add_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)L; (void)ia; (void)fa;
    *ni = *nf = 0;
}

static int add_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    tl_shape a = L->in[0], b = L->in[1];
    if (memcmp(a.d, b.d, sizeof a.d) != 0) {
        char sa[TL_SHAPE_STR], sb[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "add '%s': input shapes %s and %s differ", L->name,
                       tl_shape_str(a, sa), tl_shape_str(b, sb));
    }
    L->out = a;
    return TLEARN_OK;
}

static void add_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                        size_t n, float *saved)
{
    (void)saved;
    size_t total = n * tl_shape_size(L->out);
    const float *a = in[0], *b = in[1];
    if (ex->epilogue & TL_EPILOGUE_RELU)
        for (size_t i = 0; i < total; i++)
            out[i] = tl_relu(a[i] + b[i]);
    else
        for (size_t i = 0; i < total; i++)
            out[i] = a[i] + b[i];
}

static void pass(float *dx, const float *dout, size_t total, int accum)
{
    if (accum)
        for (size_t i = 0; i < total; i++)
            dx[i] += dout[i];
    else
        memcpy(dx, dout, sizeof(float) * total);
}

static void add_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                         const float *out, const float *dout, float *const *din, int accum,
                         size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    size_t total = n * tl_shape_size(L->out);
    if (din[0])
        pass(din[0], dout, total, accum);
    if (din[1])
        pass(din[1], dout, total, accum || din[1] == din[0]);
}

const tl_layer_ops tl_add_ops = {
    .kind = TLEARN_LAYER_ADD,
    .kind_name = "add",
    .epilogues = TL_EPILOGUE_RELU,
    .bwd_ignores_inputs = 1,
    .bwd_ignores_output = 1,
    .configure = add_configure,
    .arguments = add_arguments,
    .setup = add_setup,
    .forward = add_forward,
    .backward = add_backward,
};
