/* Elementwise activations. Backward uses the saved output where the derivative can be
 * written in terms of it (relu, tanh, sigmoid) and the input otherwise (gelu, leaky, the
 * hard and clipped ones, silu). Values and gradients follow PyTorch 1.13, kinks included.
 *
 * Arguments: ia {activation}; fa {param} as in round 1 (leaky's slope, ignored by the
 * others), or fa {alpha, beta} for hard-sigmoid and fa {lo, hi} for clip. */
#include <math.h>
#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "layer.h"

typedef struct activation_cfg {
    int act;
    int nparam;   /* floats arguments() writes back: 1, or 2 (hard-sigmoid, clip) */
    float p0, p1; /* leaky: slope; hard-sigmoid: alpha, beta; clip: lo, hi */
} activation_cfg;

static int activation_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    if (ni != 1 || nf < 0 || nf > 2)
        return tl_fail(TLEARN_EINVAL, "activation '%s': expected an activation and 0 to 2 "
                       "parameters", L->name);
    int act = ia[0];
    if (act < TLEARN_ACT_RELU || act > TLEARN_ACT_GELU_TANH)
        return tl_fail(TLEARN_EINVAL, "activation '%s': unknown activation %d", L->name, act);
    activation_cfg cfg = {act, 1, nf > 0 ? fa[0] : 0.0f, 0.0f};
    if (act == TLEARN_ACT_HARDSIGMOID) {
        /* torch's defaults; ONNX's HardSigmoid passes alpha 0.2 */
        cfg.nparam = 2;
        cfg.p0 = nf > 0 ? fa[0] : 1.0f / 6.0f;
        cfg.p1 = nf > 1 ? fa[1] : 0.5f;
    } else if (act == TLEARN_ACT_CLIP) {
        if (nf != 2)
            return tl_fail(TLEARN_EINVAL, "activation '%s': clip takes 2 parameters (min, "
                           "max), got %d", L->name, nf);
        cfg.nparam = 2;
        cfg.p1 = fa[1];
        if (isnan(cfg.p0) || isnan(cfg.p1) || cfg.p0 > cfg.p1)
            return tl_fail(TLEARN_EINVAL, "activation '%s': clip bounds [%g, %g] are not "
                           "ordered numbers", L->name, (double)cfg.p0, (double)cfg.p1);
        return tl_layer_config(L, &cfg, sizeof cfg);
    } else if (nf > 1) {
        return tl_fail(TLEARN_EINVAL, "activation '%s': activation %d takes at most 1 "
                       "parameter, got %d", L->name, act, nf);
    } else if (act == TLEARN_ACT_LEAKY_RELU && nf == 0) {
        cfg.p0 = 0.01f; /* torch's default slope */
    }
    if (!isfinite(cfg.p0) || !isfinite(cfg.p1))
        return tl_fail(TLEARN_EINVAL, "activation '%s': parameter is not finite", L->name);
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void activation_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    const activation_cfg *cfg = L->cfg;
    ia[0] = cfg->act;
    fa[0] = cfg->p0;
    fa[1] = cfg->p1;
    *ni = 1;
    *nf = cfg->nparam;
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

/* GELU's tanh approximation, term by term as torch's kernel (approximate='tanh'). */
#define GELU_BETA 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_KAPPA 0.044715f

static float gelu_tanh(float x)
{
    float inner = GELU_BETA * (x + GELU_KAPPA * (x * x * x));
    return 0.5f * x * (1.0f + tanhf(inner));
}

static float gelu_tanh_grad(float x)
{
    float x2 = x * x, t = tanhf(GELU_BETA * (x + GELU_KAPPA * (x2 * x)));
    float left = 0.5f * x, right = 1.0f + t;
    float dleft = 0.5f * right, dright = left * (1.0f - t * t);
    float dinner = GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x2);
    return dleft + dright * dinner;
}

/* max(0, min(1, t)) that lets NaN through, as torch's clamps. */
static inline float unit_clamp(float t)
{
    t = t < 0.0f ? 0.0f : t;
    return t > 1.0f ? 1.0f : t;
}

/* The loops work on [lo, hi) so that large tensors can be split across the model's
 * threads; each is a simple loop over restrict pointers that the compiler vectorises. */
static void forward_range(const activation_cfg *cfg, const float *restrict x,
                          float *restrict out, size_t lo, size_t hi)
{
    const float p0 = cfg->p0, p1 = cfg->p1;
    switch (cfg->act) {
    case TLEARN_ACT_RELU: /* simd: a select, not a branch half the elements mispredict */
#pragma omp simd
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
    /* omp simd: selects instead of branches (NaN still passes through), which random
     * signs would otherwise mispredict (ReLU6 ran scalar at a third of MobileNetV2's time). */
    case TLEARN_ACT_RELU6:
#pragma omp simd
        for (size_t i = lo; i < hi; i++) {
            float v = x[i];
            v = v < 0.0f ? 0.0f : v;
            out[i] = v > 6.0f ? 6.0f : v;
        }
        break;
    case TLEARN_ACT_LEAKY_RELU:
#pragma omp simd
        for (size_t i = lo; i < hi; i++) {
            float v = x[i];
            out[i] = v > 0.0f ? v : v * p0;
        }
        break;
    case TLEARN_ACT_HARDSIGMOID:
        if (p0 == 1.0f / 6.0f && p1 == 0.5f) /* torch's own form, rounding as torch */
#pragma omp simd
            for (size_t i = lo; i < hi; i++) {
                float t = x[i] + 3.0f;
                t = t < 0.0f ? 0.0f : t;
                out[i] = (t > 6.0f ? 6.0f : t) / 6.0f;
            }
        else
#pragma omp simd
            for (size_t i = lo; i < hi; i++)
                out[i] = unit_clamp(p0 * x[i] + p1);
        break;
    case TLEARN_ACT_HARDSWISH: /* torch: x * min(max(x + 3, 0), 6) / 6 */
#pragma omp simd
        for (size_t i = lo; i < hi; i++) {
            float t = x[i] + 3.0f;
            t = t < 0.0f ? 0.0f : t;
            t = t > 6.0f ? 6.0f : t;
            out[i] = x[i] * t / 6.0f;
        }
        break;
    case TLEARN_ACT_SILU: /* torch: x / (1 + exp(-x)) */
        for (size_t i = lo; i < hi; i++)
            out[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    case TLEARN_ACT_CLIP:
#pragma omp simd
        for (size_t i = lo; i < hi; i++) {
            float t = x[i] < p0 ? p0 : x[i];
            out[i] = t > p1 ? p1 : t;
        }
        break;
    case TLEARN_ACT_GELU_TANH:
        for (size_t i = lo; i < hi; i++)
            out[i] = gelu_tanh(x[i]);
        break;
    }
}

static void backward_range(const activation_cfg *cfg, const float *restrict x,
                           const float *restrict y, const float *restrict dout,
                           float *restrict dx, int accum, size_t lo, size_t hi)
{
    const float p0 = cfg->p0, p1 = cfg->p1;
    /* dx = g, or dx += g: with accum == 0 the old (possibly uninitialised) value must not
     * leak in. Two loops, so that neither has a branch inside;
     * d, xi, yi are loaded unconditionally so that the selects vectorise. */
#define EMIT(XI, YI, expr)                                                                   \
    if (accum)                                                                               \
        _Pragma("omp simd") for (size_t i = lo; i < hi; i++) {                               \
            const float d = dout[i], xi = (XI), yi = (YI);                                   \
            (void)xi, (void)yi;                                                              \
            dx[i] += (expr);                                                                 \
        }                                                                                    \
    else                                                                                     \
        _Pragma("omp simd") for (size_t i = lo; i < hi; i++) {                               \
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
    case TLEARN_ACT_LEAKY_RELU: EMIT(x[i], 0.0f, xi > 0.0f ? d : d * p0) break;
    /* torch: the slope strictly inside the ramp, 0 on the flat parts and at their ends */
    case TLEARN_ACT_HARDSIGMOID:
        if (p0 == 1.0f / 6.0f && p1 == 0.5f) { /* torch's own test */
            EMIT(x[i], 0.0f, (xi > -3.0f && xi < 3.0f) ? d * p0 : 0.0f)
        } else {
            EMIT(x[i], p0 * xi + p1, (yi > 0.0f && yi < 1.0f) ? d * p0 : 0.0f)
        }
        break;
    /* torch's vectorised kernel: 0 below -3, d * (x/3 + 1/2) on [-3, 3), d from 3 on (its
     * scalar tail loop gives 1.5 d at exactly 3; the vector loop covers nearly everything) */
    case TLEARN_ACT_HARDSWISH:
        EMIT(x[i], 0.0f, xi < -3.0f ? 0.0f : (xi < 3.0f ? d * (xi / 3.0f + 0.5f) : d)) break;
    /* torch: d * s * (1 + x * (1 - s)) with s = sigmoid(x) */
    case TLEARN_ACT_SILU:
        EMIT(x[i], 1.0f / (1.0f + expf(-xi)), d * yi * (1.0f + xi * (1.0f - yi))) break;
    /* torch.clamp passes the gradient on [lo, hi], bounds included */
    case TLEARN_ACT_CLIP: EMIT(x[i], 0.0f, (xi >= p0 && xi <= p1) ? d : 0.0f) break;
    case TLEARN_ACT_GELU_TANH: EMIT(x[i], 0.0f, d * gelu_tanh_grad(xi)) break;
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
