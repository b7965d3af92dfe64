/* The sum that closes a LoRA branch: out = base + e * delta, where base is the target
 * layer's output (or the previous adapter's sum), delta = B(A(x)) and
 *   e = alpha / r (rsLoRA: alpha / sqrt(r)) * weight, or 0 while merged.
 * weight is the adapter's combination weight (0: disabled); `merged` means the product is
 * folded into the target's weights (adapters/lora.c), so the branch must add nothing.
 * The scale is computed in double and rounded once, as PyTorch multiplies a float32 tensor
 * by a Python float. Arguments: ia r rslora merged; fa alpha weight. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct lora_sum_cfg {
    int r, rslora, merged;
    float alpha, weight;
    float e; /* the effective factor */
} lora_sum_cfg;

static int lora_sum_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    if (ni != 3 || nf != 2)
        return tl_fail(TLEARN_EINVAL, "lora_sum '%s': expected 3 integer and 2 float arguments",
                       L->name);
    if (L->ninputs != 2)
        return tl_fail(TLEARN_EINVAL, "lora_sum '%s': needs 2 inputs, has %d", L->name,
                       L->ninputs);
    lora_sum_cfg c = {ia[0], ia[1], ia[2], fa[0], fa[1], 0.0f};
    if (c.r < 1 || (c.rslora != 0 && c.rslora != 1) || (c.merged != 0 && c.merged != 1))
        return tl_fail(TLEARN_EINVAL, "lora_sum '%s': r is %d (must be >= 1), rslora %d and "
                       "merged %d (must be 0 or 1)", L->name, c.r, c.rslora, c.merged);
    if (!isfinite(c.alpha) || !isfinite(c.weight))
        return tl_fail(TLEARN_EINVAL, "lora_sum '%s': alpha and weight must be finite", L->name);
    double s = c.rslora ? (double)c.alpha / sqrt((double)c.r) : (double)c.alpha / c.r;
    c.e = c.merged ? 0.0f : (float)(s * c.weight);
    if (!isfinite(c.e))
        return tl_fail(TLEARN_EINVAL, "lora_sum '%s': the scale overflows", L->name);
    return tl_layer_config(L, &c, sizeof c);
}

static void lora_sum_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    const lora_sum_cfg *c = L->cfg;
    ia[0] = c->r;
    ia[1] = c->rslora;
    ia[2] = c->merged;
    fa[0] = c->alpha;
    fa[1] = c->weight;
    *ni = 3;
    *nf = 2;
}

static int lora_sum_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    if (!tl_shape_equal(L->in[0], L->in[1])) {
        char sa[TL_SHAPE_STR], sb[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "lora_sum '%s': input shapes %s and %s differ", L->name,
                       tl_shape_str(L->in[0], sa), tl_shape_str(L->in[1], sb));
    }
    L->out = L->in[0];
    return TLEARN_OK;
}

static void lora_sum_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                             size_t n, float *saved)
{
    (void)ex; (void)saved;
    const float e = ((const lora_sum_cfg *)L->cfg)->e;
    size_t total = n * tl_shape_size(L->out);
    const float *a = in[0], *b = in[1];
    if (e == 0.0f) /* disabled or merged: the branch adds nothing, not even its NaNs */
        memcpy(out, a, sizeof(float) * total);
    else
        for (size_t i = 0; i < total; i++)
            out[i] = a[i] + e * b[i];
}

static void lora_sum_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                              const float *out, const float *dout, float *const *din, int accum,
                              size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    const float e = ((const lora_sum_cfg *)L->cfg)->e;
    size_t total = n * tl_shape_size(L->out);
    float *da = din[0], *db = din[1];
    if (da) {
        if (accum)
            for (size_t i = 0; i < total; i++)
                da[i] += dout[i];
        else
            memcpy(da, dout, sizeof(float) * total);
    }
    if (db) {
        if (accum || db == da)
            for (size_t i = 0; i < total; i++)
                db[i] += e * dout[i];
        else
            for (size_t i = 0; i < total; i++)
                db[i] = e * dout[i];
    }
}

const tl_layer_ops tl_lora_sum_ops = {
    .kind = TLEARN_LAYER_LORA_SUM,
    .kind_name = "lora_sum",
    .bwd_ignores_output = 1,
    .configure = lora_sum_configure,
    .arguments = lora_sum_arguments,
    .setup = lora_sum_setup,
    .forward = lora_sum_forward,
    .backward = lora_sum_backward,
};
