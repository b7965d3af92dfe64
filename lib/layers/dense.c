/* Fully connected layer: y = x W^T + b, W is [units, in] like torch.nn.Linear. Two ways to
 * read the input: `dense` flattens each example (it can follow a convolution directly, as in
 * round 1); `linear` acts on the last axis of any rank, as torch.nn.Linear does on a
 * sequence (T, D) or a channels-last image (H, W, C). The bias is optional. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct dense_cfg {
    int units;
    int last_axis; /* 1: linear over the last axis; 0: flatten first */
    int bias;
} dense_cfg;

/* Rows of the GEMM for a batch of n and the length k of each row. */
static size_t dense_rows(const tl_layer *L, size_t n, int *k)
{
    const dense_cfg *cfg = L->cfg;
    tl_shape in = L->in[0];
    size_t size = tl_shape_size(in);
    *k = cfg->last_axis ? in.d[in.rank - 1] : (int)size;
    return n * (size / (size_t)*k);
}

static int dense_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* units [, last_axis [, bias]] */
    if (ni < 1 || ni > 3 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "dense '%s': expected 1 to 3 arguments", L->name);
    if (ia[0] < 1)
        return tl_fail(TLEARN_EINVAL, "dense '%s': units is %d, must be >= 1", L->name, ia[0]);
    dense_cfg cfg = {ia[0], ni > 1 ? ia[1] : 0, ni > 2 ? ia[2] : 1};
    if ((cfg.last_axis != 0 && cfg.last_axis != 1) || (cfg.bias != 0 && cfg.bias != 1))
        return tl_fail(TLEARN_EINVAL, "dense '%s': last_axis and bias must be 0 or 1", L->name);
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void dense_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const dense_cfg *cfg = L->cfg;
    ia[0] = cfg->units;
    ia[1] = cfg->last_axis;
    ia[2] = cfg->bias;
    *ni = cfg->last_axis || !cfg->bias ? 3 : 1; /* round 1's form stays one argument */
    *nf = 0;
}

static int dense_setup(tl_layer *L, tl_rng *rng)
{
    const dense_cfg *cfg = L->cfg;
    int k;
    dense_rows(L, 1, &k);
    if ((size_t)k > (size_t)INT32_MAX / (size_t)cfg->units)
        return tl_fail(TLEARN_ESHAPE, "dense '%s': %d x %d weights are too many", L->name, k,
                       cfg->units);
    if (cfg->last_axis) {
        L->out = L->in[0];
        L->out.d[L->out.rank - 1] = cfg->units;
        if ((double)tl_shape_size(L->in[0]) / k * cfg->units > (double)INT32_MAX)
            return tl_fail(TLEARN_ESHAPE, "dense '%s': output has over 2^31 elements", L->name);
    } else {
        L->out = tl_shape1(cfg->units);
    }
    int wd[2] = {cfg->units, k};
    int bd[1] = {cfg->units};
    int rc = tl_layer_add_param(L, "weight", 2, wd, 0);
    if (!rc && cfg->bias)
        rc = tl_layer_add_param(L, "bias", 1, bd, 0);
    if (rc)
        return rc;
    /* kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
    float bound = 1.0f / sqrtf((float)k);
    for (int p = 0; p < L->nparam; p++)
        tl_init_uniform(&L->param[p].t, rng, bound);
    return TLEARN_OK;
}

static void dense_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                          size_t n, float *saved)
{
    (void)saved;
    const dense_cfg *cfg = L->cfg;
    int units = cfg->units, k;
    size_t rows = dense_rows(L, n, &k);
    /* Bias first, then accumulate the product on top (beta = 1): one pass fewer. */
    if (cfg->bias)
        for (size_t i = 0; i < rows; i++)
            memcpy(out + i * units, L->param[1].t.data, sizeof(float) * (size_t)units);
    tl_sgemm(ex->blas, 0, 1, (int)rows, units, k, 1.0f, in[0], k, L->param[0].t.data, k,
             cfg->bias ? 1.0f : 0.0f, out, units);
}

static void dense_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                           const float *out, const float *dout, float *const *din, int accum,
                           size_t n, const float *saved, float *const *pgrad)
{
    (void)out;
    (void)saved;
    const dense_cfg *cfg = L->cfg;
    int units = cfg->units, k;
    size_t rows = dense_rows(L, n, &k);
    /* each tensor's gradient only when it trains (pgrad[i] NULL: frozen, as in BitFit) */
    if (pgrad && pgrad[0]) /* dW = dout^T x */
        tl_sgemm(ex->blas, 1, 0, units, k, (int)rows, 1.0f, dout, units, in[0], k, 0.0f,
                 pgrad[0], k);
    if (pgrad && cfg->bias && pgrad[1]) { /* db = column sums of dout */
        float *db = pgrad[1];
        memset(db, 0, sizeof(float) * (size_t)units);
        for (size_t i = 0; i < rows; i++) {
            const float *d = dout + i * units;
            for (int j = 0; j < units; j++)
                db[j] += d[j];
        }
    }
    if (din[0])
        tl_sgemm(ex->blas, 0, 0, (int)rows, k, units, 1.0f, dout, units, L->param[0].t.data, k,
                 accum ? 1.0f : 0.0f, din[0], k);
}

const tl_layer_ops tl_dense_ops = {
    .kind = TLEARN_LAYER_DENSE,
    .kind_name = "dense",
    .bwd_ignores_output = 1,
    .configure = dense_configure,
    .arguments = dense_arguments,
    .setup = dense_setup,
    .forward = dense_forward,
    .backward = dense_backward,
};
