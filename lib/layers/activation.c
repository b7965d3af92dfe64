/* Elementwise activations. Backward uses the saved output where the derivative can be
 * written in terms of it (relu, tanh, sigmoid) and the input otherwise (gelu, leaky). */
#include <math.h>
#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "layer.h"

typedef struct activation_cfg {
    int act;
    float param;
} activation_cfg;

static int activation_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    if (ni != 1 || nf != 1)
        return tl_fail(TLEARN_EINVAL, "activation '%s': expected 2 arguments", L->name);
    if (ia[0] < TLEARN_ACT_RELU || ia[0] > TLEARN_ACT_LEAKY_RELU)
        return tl_fail(TLEARN_EINVAL, "activation '%s': unknown activation %d", L->name, ia[0]);
    if (!isfinite(fa[0]))
        return tl_fail(TLEARN_EINVAL, "activation '%s': parameter is not finite", L->name);
    activation_cfg cfg = {ia[0], fa[0]};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void activation_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    const activation_cfg *cfg = L->cfg;
    ia[0] = cfg->act;
    fa[0] = cfg->param;
    *ni = *nf = 1;
}

static int activation_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    L->out = L->in[0];
    return TLEARN_OK;
}

static float gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

static float gelu_grad(float x)
{
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

/* The loops work on [lo, hi) so that large tensors can be split across the model's
 * threads; each is a simple loop over restrict pointers that the compiler vectorises. */
static void forward_range(const activation_cfg *cfg, const float *restrict x,
                          float *restrict out, size_t lo, size_t hi)
{
    float slope = cfg->param;
    switch (cfg->act) {
    case TLEARN_ACT_RELU:
        for (size_t i = lo; i < hi; i++)
            out[i] = tl_relu(x[i]);
        break;
    case TLEARN_ACT_TANH:
        for (size_t i = lo; i < hi; i++)
            out[i] = tanhf(x[i]);
        break;
    case TLEARN_ACT_SIGMOID:
        for (size_t i = lo; i < hi; i++)
            out[i] = 1.0f / (1.0f + expf(-x[i]));
        break;
    case TLEARN_ACT_GELU:
        for (size_t i = lo; i < hi; i++)
            out[i] = gelu(x[i]);
        break;
    case TLEARN_ACT_RELU6:
        for (size_t i = lo; i < hi; i++)
            out[i] = x[i] < 0.0f ? 0.0f : (x[i] > 6.0f ? 6.0f : x[i]);
        break;
    case TLEARN_ACT_LEAKY_RELU:
        for (size_t i = lo; i < hi; i++)
            out[i] = x[i] > 0.0f ? x[i] : x[i] * slope;
        break;
    }
}

static void backward_range(const activation_cfg *cfg, const float *restrict x,
                           const float *restrict y, const float *restrict dout,
                           float *restrict dx, int accum, size_t lo, size_t hi)
{
    float slope = cfg->param;
    /* dx = g, or dx += g: with accum == 0 the old (possibly uninitialised) value must not
     * leak in. Two loops, so that neither has a branch inside;
     * d, xi, yi are loaded unconditionally so that the selects vectorise. */
#define EMIT(XI, YI, expr)                                                                   \
    if (accum)                                                                               \
        for (size_t i = lo; i < hi; i++) {                                                   \
            const float d = dout[i], xi = (XI), yi = (YI);                                   \
            (void)xi, (void)yi;                                                              \
            dx[i] += (expr);                                                                 \
        }                                                                                    \
    else                                                                                     \
        for (size_t i = lo; i < hi; i++) {                                                   \
            const float d = dout[i], xi = (XI), yi = (YI);                                   \
            (void)xi, (void)yi;                                                              \
            dx[i] = (expr);                                                                  \
        }
    switch (cfg->act) {
    case TLEARN_ACT_RELU: EMIT(0.0f, y[i], yi > 0.0f ? d : 0.0f) break;
    case TLEARN_ACT_TANH: EMIT(0.0f, y[i], d * (1.0f - yi * yi)) break;
    case TLEARN_ACT_SIGMOID: EMIT(0.0f, y[i], d * yi * (1.0f - yi)) break;
    case TLEARN_ACT_GELU: EMIT(x[i], 0.0f, d * gelu_grad(xi)) break;
    /* PyTorch's hardtanh backward passes the gradient only strictly inside (0, 6). */
    case TLEARN_ACT_RELU6: EMIT(x[i], 0.0f, (xi > 0.0f && xi < 6.0f) ? d : 0.0f) break;
    case TLEARN_ACT_LEAKY_RELU: EMIT(x[i], 0.0f, xi > 0.0f ? d : d * slope) break;
    }
#undef EMIT
}

static void activation_forward(tl_layer *L, const tl_exec *ex, const float *const *in,
                               float *out, size_t n, float *saved)
{
    (void)saved;
    const activation_cfg *cfg = L->cfg;
    size_t total = n * tl_shape_size(L->out);
    int nt = tl_par_threads(tl_blas_threads(ex->blas), total);
    if (nt == 1) {
        forward_range(cfg, in[0], out, 0, total);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        size_t lo = 0, hi = total;
#ifdef _OPENMP
        tl_par_range(total, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
#endif
        forward_range(cfg, in[0], out, lo, hi);
    }
}

static void activation_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                                const float *out, const float *dout, float *const *din,
                                int accum, size_t n, const float *saved, float *const *pgrad)
{
    (void)saved; (void)pgrad;
    const activation_cfg *cfg = L->cfg;
    float *dx = din[0];
    if (!dx)
        return;
    size_t total = n * tl_shape_size(L->out);
    int nt = tl_par_threads(tl_blas_threads(ex->blas), total);
    if (nt == 1) {
        backward_range(cfg, in[0], out, dout, dx, accum, 0, total);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        size_t lo = 0, hi = total;
#ifdef _OPENMP
        tl_par_range(total, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
#endif
        backward_range(cfg, in[0], out, dout, dx, accum, lo, hi);
    }
}

const tl_layer_ops tl_activation_ops = {
    .kind = TLEARN_LAYER_ACTIVATION,
    .kind_name = "activation",
    .configure = activation_configure,
    .arguments = activation_arguments,
    .setup = activation_setup,
    .forward = activation_forward,
    .backward = activation_backward,
};
