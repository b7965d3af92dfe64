/* Pooling a sequence (T, D) into one vector (D): the first token (BERT's [CLS], ViT's class
 * token) or the mean over the positions a mask keeps (sentence embedders; all positions
 * without a mask). The optional second input is a key-padding mask (T), as attention's:
 * 1 keep, 0 pad, int32 or float. An example whose mask keeps nothing pools to zeros. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

enum { POOL_FIRST = 0, POOL_MEAN = 1 };

static int token_pool_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* mode */
    if (ni != 1 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "token_pool '%s': expected 1 argument", L->name);
    if (ia[0] != POOL_FIRST && ia[0] != POOL_MEAN)
        return tl_fail(TLEARN_EINVAL, "token_pool '%s': mode is %d, must be 0 (first) or 1 "
                       "(mean)", L->name, ia[0]);
    if (L->ninputs != 1 && L->ninputs != 2)
        return tl_fail(TLEARN_EINVAL, "token_pool '%s': takes a sequence and optionally a "
                       "mask, not %d inputs", L->name, L->ninputs);
    return tl_layer_config(L, &ia[0], sizeof ia[0]);
}

static void token_pool_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    ia[0] = *(const int *)L->cfg;
    *ni = 1;
    *nf = 0;
}

static int token_pool_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    char s[TL_SHAPE_STR];
    tl_shape in = L->in[0];
    if (in.rank != 2)
        return tl_fail(TLEARN_ESHAPE, "token_pool '%s': input is %s, expected a sequence "
                       "(T, D)", L->name, tl_shape_str(in, s));
    if (L->ninputs == 2 && (L->in[1].rank != 1 || L->in[1].d[0] != in.d[0]))
        return tl_fail(TLEARN_ESHAPE, "token_pool '%s': the mask is %s, expected (%d)", L->name,
                       tl_shape_str(L->in[1], s), in.d[0]);
    L->out = tl_shape1(in.d[1]);
    return TLEARN_OK;
}

static int token_pool_validate(const tl_layer *L, int k, const void *x, size_t n)
{
    return k == 1 ? tl_validate_mask(L, x, n, (size_t)L->in[0].d[0]) : TLEARN_OK;
}

/* 1 / (positions the example's mask keeps), 0 when none. */
static float mean_scale(const float *mask, size_t t)
{
    if (!mask)
        return 1.0f / (float)t;
    size_t c = 0;
    for (size_t i = 0; i < t; i++)
        c += (size_t)tl_mask_keep(mask, i);
    return c ? 1.0f / (float)c : 0.0f;
}

static void token_pool_forward(tl_layer *L, const tl_exec *ex, const float *const *in,
                               float *out, size_t n, float *saved)
{
    (void)ex;
    (void)saved;
    int mode = *(const int *)L->cfg;
    size_t t = (size_t)L->in[0].d[0], d = (size_t)L->in[0].d[1];
    for (size_t e = 0; e < n; e++) {
        const float *x = in[0] + e * t * d;
        float *y = out + e * d;
        if (mode == POOL_FIRST) {
            memcpy(y, x, sizeof(float) * d);
            continue;
        }
        const float *mask = L->ninputs > 1 ? in[1] + e * t : NULL;
        float s = mean_scale(mask, t);
        memset(y, 0, sizeof(float) * d);
        for (size_t i = 0; i < t; i++)
            if (!mask || tl_mask_keep(mask, i))
                for (size_t j = 0; j < d; j++)
                    y[j] += x[i * d + j];
        for (size_t j = 0; j < d; j++)
            y[j] *= s;
    }
}

static void token_pool_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                                const float *out, const float *dout, float *const *din,
                                int accum, size_t n, const float *saved, float *const *pgrad)
{
    (void)ex;
    (void)out;
    (void)saved;
    (void)pgrad;
    int mode = *(const int *)L->cfg;
    size_t t = (size_t)L->in[0].d[0], d = (size_t)L->in[0].d[1];
    if (L->ninputs > 1 && din[1] && !accum) /* the mask has no gradient */
        memset(din[1], 0, sizeof(float) * n * t);
    float *dx = din[0];
    if (!dx)
        return;
    if (!accum)
        memset(dx, 0, sizeof(float) * n * t * d);
    for (size_t e = 0; e < n; e++) {
        const float *g = dout + e * d;
        float *dxe = dx + e * t * d;
        if (mode == POOL_FIRST) {
            for (size_t j = 0; j < d; j++)
                dxe[j] += g[j];
            continue;
        }
        const float *mask = L->ninputs > 1 ? in[1] + e * t : NULL;
        float s = mean_scale(mask, t);
        for (size_t i = 0; i < t; i++)
            if (!mask || tl_mask_keep(mask, i))
                for (size_t j = 0; j < d; j++)
                    dxe[i * d + j] += g[j] * s;
    }
}

const tl_layer_ops tl_token_pool_ops = {
    .kind = TLEARN_LAYER_TOKEN_POOL,
    .kind_name = "token_pool",
    .bwd_ignores_output = 1,
    .int_inputs = 2, /* the mask */
    .validate = token_pool_validate,
    .configure = token_pool_configure,
    .arguments = token_pool_arguments,
    .setup = token_pool_setup,
    .forward = token_pool_forward,
    .backward = token_pool_backward,
};
