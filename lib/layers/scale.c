/* y = x * weight (+ bias): a learned tensor broadcast to the input (broadcast.h), such as
 * ConvNeXt's layer scale (D) over channels-last values, or (C, 1, 1) per channel of a map.
 * Weight starts at 1 and bias at 0, so a new layer passes its input through; the ONNX
 * importer maps a Mul (and Add) by an initializer onto it.
 *
 * Arguments: ia {rank, dims[rank], bias}; the parameters have the shape dims. */
#include <stdio.h>

#include "broadcast.h"

typedef struct scale_cfg {
    int rank, dims[TL_MAX_RANK], bias;
} scale_cfg;

static int scale_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    if (ni < 1 || nf != 0 || ia[0] < 1 || ia[0] > TL_MAX_RANK || ni != ia[0] + 2)
        return tl_fail(TLEARN_EINVAL, "scale '%s': expected rank (1..%d), that many sizes "
                       "and the bias flag", L->name, TL_MAX_RANK);
    scale_cfg cfg = {ia[0], {1, 1, 1, 1}, ia[ia[0] + 1]};
    for (int j = 0; j < cfg.rank; j++) {
        if (ia[1 + j] < 1)
            return tl_fail(TLEARN_EINVAL, "scale '%s': size %d of the weight is %d, must be "
                           ">= 1", L->name, j, ia[1 + j]);
        cfg.dims[j] = ia[1 + j];
    }
    if (cfg.bias != 0 && cfg.bias != 1)
        return tl_fail(TLEARN_EINVAL, "scale '%s': bias must be 0 or 1, got %d", L->name,
                       cfg.bias);
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void scale_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const scale_cfg *cfg = L->cfg;
    ia[0] = cfg->rank;
    for (int j = 0; j < cfg->rank; j++)
        ia[1 + j] = cfg->dims[j];
    ia[cfg->rank + 1] = cfg->bias;
    *ni = cfg->rank + 2;
    *nf = 0;
}

static int scale_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const scale_cfg *cfg = L->cfg;
    tl_shape w = tl_shape_of(cfg->rank, cfg->dims), o;
    if (tl_bcast_shape(L->in[0], w, &o) || !tl_shape_equal(o, L->in[0])) {
        char sx[TL_SHAPE_STR], sw[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "scale '%s': a weight of shape %s does not broadcast "
                       "to the input's shape %s (aligned on the right, each size equal or 1)",
                       L->name, tl_shape_str(w, sw), tl_shape_str(L->in[0], sx));
    }
    L->out = L->in[0];
    int rc = tl_layer_add_param(L, "weight", cfg->rank, cfg->dims, 0);
    if (!rc && cfg->bias)
        rc = tl_layer_add_param(L, "bias", cfg->rank, cfg->dims, 0);
    if (rc)
        return rc;
    tl_tensor *t = &L->param[0].t;
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = 1.0f; /* bias: zeroed by the allocation */
    return TLEARN_OK;
}

static void scale_plan(const tl_layer *L, size_t n, tl_bcast *p)
{
    static const int per_example[2] = {1, 0};
    const scale_cfg *cfg = L->cfg;
    tl_shape in[2] = {L->in[0], tl_shape_of(cfg->rank, cfg->dims)};
    tl_bcast_plan(p, n, L->out, in, per_example);
}

static void scale_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                          size_t n, float *saved)
{
    (void)saved;
    tl_bcast p;
    scale_plan(L, n, &p);
    int threads = tl_blas_threads(ex->blas);
    /* two passes with a bias, rounding as torch's x * w + b */
    tl_bcast_forward(&p, TLEARN_BINARY_MUL, in[0], L->param[0].t.data, out, threads);
    if (L->nparam > 1)
        tl_bcast_forward(&p, TLEARN_BINARY_ADD, out, L->param[1].t.data, out, threads);
}

static void scale_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                           const float *out, const float *dout, float *const *din, int accum,
                           size_t n, const float *saved, float *const *pgrad)
{
    (void)out; (void)saved;
    tl_bcast p;
    scale_plan(L, n, &p);
    int threads = tl_blas_threads(ex->blas);
    const float *w = L->param[0].t.data;
    if (din[0])
        tl_bcast_backward(&p, TLEARN_BINARY_MUL, 0, dout, in[0], w, NULL, din[0], accum,
                          threads);
    if (pgrad) {
        if (pgrad[0])
            tl_bcast_backward(&p, TLEARN_BINARY_MUL, 1, dout, in[0], w, NULL, pgrad[0], 0,
                              threads);
        if (L->nparam > 1 && pgrad[1])
            tl_bcast_backward(&p, TLEARN_BINARY_ADD, 1, dout, in[0], L->param[1].t.data,
                              NULL, pgrad[1], 0, threads);
    }
}

const tl_layer_ops tl_scale_ops = {
    .kind = TLEARN_LAYER_SCALE,
    .kind_name = "scale",
    .bwd_ignores_output = 1,
    .configure = scale_configure,
    .arguments = scale_arguments,
    .setup = scale_setup,
    .forward = scale_forward,
    .backward = scale_backward,
};
