/* Fully connected layer: y = x W^T + b, W is [units, in] like torch.nn.Linear. The input
 * is flattened implicitly, so a dense layer can follow a convolution directly. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct dense_cfg {
    int units;
} dense_cfg;

static int dense_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni != 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "dense '%s': expected 1 argument", L->name);
    if (ia[0] < 1)
        return tl_fail(TLEARN_EINVAL, "dense '%s': units is %d, must be >= 1", L->name, ia[0]);
    dense_cfg cfg = {ia[0]};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void dense_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const dense_cfg *cfg = L->cfg;
    ia[0] = cfg->units;
    *ni = 1;
    *nf = 0;
}

static int dense_setup(tl_layer *L, tl_rng *rng)
{
    const dense_cfg *cfg = L->cfg;
    size_t in = tl_shape_size(L->in[0]);
    if (in > (size_t)INT32_MAX / (size_t)cfg->units)
        return tl_fail(TLEARN_ESHAPE, "dense '%s': %zu x %d weights are too many", L->name, in,
                       cfg->units);
    int wd[2] = {cfg->units, (int)in};
    int bd[1] = {cfg->units};
    int rc = tl_layer_add_param(L, "weight", 2, wd, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "bias", 1, bd, 0);
    if (rc)
        return rc;
    /* kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
    float bound = 1.0f / sqrtf((float)in);
    tl_init_uniform(&L->param[0].t, rng, bound);
    tl_init_uniform(&L->param[1].t, rng, bound);
    L->out = (tl_shape){cfg->units, 1, 1};
    return TLEARN_OK;
}

static void dense_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                          size_t n, float *saved)
{
    (void)saved;
    const dense_cfg *cfg = L->cfg;
    int units = cfg->units, k = (int)tl_shape_size(L->in[0]);
    const float *b = L->param[1].t.data;
    /* Bias first, then accumulate the product on top (beta = 1): one pass fewer. */
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * units, b, sizeof(float) * (size_t)units);
    tl_sgemm(ex->blas, 0, 1, (int)n, units, k, 1.0f, in[0], k, L->param[0].t.data, k, 1.0f, out,
             units);
}

static void dense_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                           const float *out, const float *dout, float *const *din, int accum,
                           size_t n, const float *saved, float *const *pgrad)
{
    (void)out;
    (void)saved;
    const dense_cfg *cfg = L->cfg;
    int units = cfg->units, k = (int)tl_shape_size(L->in[0]);
    if (pgrad) {
        /* dW = dout^T x ; db = column sums of dout */
        tl_sgemm(ex->blas, 1, 0, units, k, (int)n, 1.0f, dout, units, in[0], k, 0.0f, pgrad[0], k);
        float *db = pgrad[1];
        memset(db, 0, sizeof(float) * (size_t)units);
        for (size_t i = 0; i < n; i++) {
            const float *d = dout + i * units;
            for (int j = 0; j < units; j++)
                db[j] += d[j];
        }
    }
    if (din[0])
        tl_sgemm(ex->blas, 0, 0, (int)n, k, units, 1.0f, dout, units, L->param[0].t.data, k,
                 accum ? 1.0f : 0.0f, din[0], k);
}

const tl_layer_ops tl_dense_ops = {
    .kind = TLEARN_LAYER_DENSE,
    .kind_name = "dense",
    .configure = dense_configure,
    .arguments = dense_arguments,
    .setup = dense_setup,
    .forward = dense_forward,
    .backward = dense_backward,
};
