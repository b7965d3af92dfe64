/* ViT's patch embedding, laid out as torchvision's VisionTransformer: an image (C, H, W) cut
 * into P x P patches (H and W multiples of P), each projected by conv_proj (a convolution
 * with kernel = stride = P: weight (D, C, P, P), bias (D)) into a token, tokens in row-major
 * patch order, the learned class_token (1, 1, D) prepended, and optionally the learned
 * pos_embedding (1, T, D) added (torchvision's encoder.pos_embedding). Output (T, D) with
 * T = (H/P)(W/P) + 1 (no +1 without a class token).
 * The convolution is a GEMM over each example's patches, gathered into scratch (patches do
 * not overlap: gathering is a permutation, and its adjoint scatters the input gradient). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct patch_cfg {
    int dim, patch;
    int class_token, positions;
} patch_cfg;

enum { P_W, P_B }; /* then class_token and pos_embedding when configured */

static int patch_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* dim patch class_token positions */
    if (ni != 4 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "patch_embed '%s': expected 4 arguments", L->name);
    if (ia[0] < 1 || ia[1] < 1)
        return tl_fail(TLEARN_EINVAL, "patch_embed '%s': dim %d and patch %d must be >= 1",
                       L->name, ia[0], ia[1]);
    if ((ia[2] != 0 && ia[2] != 1) || (ia[3] != 0 && ia[3] != 1))
        return tl_fail(TLEARN_EINVAL, "patch_embed '%s': class_token and positions must be 0 "
                       "or 1", L->name);
    patch_cfg cfg = {ia[0], ia[1], ia[2], ia[3]};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void patch_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const patch_cfg *cfg = L->cfg;
    ia[0] = cfg->dim;
    ia[1] = cfg->patch;
    ia[2] = cfg->class_token;
    ia[3] = cfg->positions;
    *ni = 4;
    *nf = 0;
}

static int patch_setup(tl_layer *L, tl_rng *rng)
{
    const patch_cfg *cfg = L->cfg;
    tl_shape in = L->in[0];
    char s[TL_SHAPE_STR];
    int p = cfg->patch, d = cfg->dim;
    if (in.rank != 3)
        return tl_fail(TLEARN_ESHAPE, "patch_embed '%s': input is %s, expected an image "
                       "(C, H, W)", L->name, tl_shape_str(in, s));
    if (in.h % p || in.w % p)
        return tl_fail(TLEARN_ESHAPE, "patch_embed '%s': the image %s is not cut into whole "
                       "%dx%d patches", L->name, tl_shape_str(in, s), p, p);
    size_t k = (size_t)in.c * p * p, t = (size_t)(in.h / p) * (in.w / p) + cfg->class_token;
    if (k * d > INT32_MAX || t * d > INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "patch_embed '%s': too many elements", L->name);
    int od[2] = {(int)t, d};
    L->out = tl_shape_of(2, od);
    int wd[4] = {d, in.c, p, p}, bd[1] = {d}, cd[3] = {1, 1, d}, pd[3] = {1, (int)t, d};
    int rc = tl_layer_add_param(L, "conv_proj.weight", 4, wd, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "conv_proj.bias", 1, bd, 0);
    if (!rc && cfg->class_token)
        rc = tl_layer_add_param(L, "class_token", 3, cd, 0);
    if (!rc && cfg->positions)
        rc = tl_layer_add_param(L, "pos_embedding", 3, pd, 0);
    if (rc)
        return rc;
    /* torchvision: conv_proj normal(0, 1/fan_in), zero bias and class token, positions
     * normal(0, 0.02) */
    tl_init_normal(&L->param[P_W].t, rng, sqrtf(1.0f / (float)k));
    if (cfg->positions)
        tl_init_normal(&L->param[L->nparam - 1].t, rng, 0.02f);
    return TLEARN_OK;
}

/* The patches of one image as rows (T', C*P*P), columns in the weight's (c, i, j) order;
 * with @p scatter the other way round (rows back into the image, added when @p accum). */
static void patches(const tl_layer *L, float *img, float *rows, int scatter, int accum)
{
    tl_shape in = L->in[0];
    int p = ((const patch_cfg *)L->cfg)->patch, pw = in.w / p;
    size_t k = (size_t)in.c * p * p;
    for (int py = 0; py < in.h / p; py++)
        for (int px = 0; px < pw; px++) {
            float *r = rows + ((size_t)py * pw + px) * k;
            for (int c = 0; c < in.c; c++)
                for (int i = 0; i < p; i++) {
                    float *src = img + ((size_t)c * in.h + (size_t)py * p + i) * in.w + px * p;
                    float *dst = r + ((size_t)c * p + i) * p;
                    if (!scatter)
                        memcpy(dst, src, sizeof(float) * (size_t)p);
                    else if (accum)
                        for (int j = 0; j < p; j++)
                            src[j] += dst[j];
                    else
                        memcpy(src, dst, sizeof(float) * (size_t)p);
                }
        }
}

static size_t patch_scratch(const tl_layer *L, size_t n)
{
    (void)n;
    return tl_shape_size(L->in[0]); /* one image's patches */
}

static void patch_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                          size_t n, float *saved)
{
    (void)saved;
    const patch_cfg *cfg = L->cfg;
    int d = cfg->dim, k = L->in[0].c * cfg->patch * cfg->patch;
    int t = L->out.d[0], np = t - cfg->class_token;
    size_t isz = tl_shape_size(L->in[0]), osz = (size_t)t * d;
    for (size_t e = 0; e < n; e++) {
        float *y = out + e * osz, *rows = y + (size_t)cfg->class_token * d;
        patches(L, (float *)in[0] + e * isz, ex->scratch, 0, 0);
        for (int r = 0; r < np; r++)
            memcpy(rows + (size_t)r * d, L->param[P_B].t.data, sizeof(float) * (size_t)d);
        tl_sgemm(ex->blas, 0, 1, np, d, k, 1.0f, ex->scratch, k, L->param[P_W].t.data, k, 1.0f,
                 rows, d);
        if (cfg->class_token)
            memcpy(y, L->param[2].t.data, sizeof(float) * (size_t)d);
        if (cfg->positions) {
            const float *pos = L->param[L->nparam - 1].t.data;
            for (size_t i = 0; i < osz; i++)
                y[i] += pos[i];
        }
    }
}

static void patch_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                           const float *out, const float *dout, float *const *din, int accum,
                           size_t n, const float *saved, float *const *pgrad)
{
    (void)out;
    (void)saved;
    const patch_cfg *cfg = L->cfg;
    int d = cfg->dim, k = L->in[0].c * cfg->patch * cfg->patch;
    int t = L->out.d[0], np = t - cfg->class_token;
    size_t isz = tl_shape_size(L->in[0]), osz = (size_t)t * d;
    if (pgrad) {
        for (int q = P_B; q < L->nparam; q++)
            if (pgrad[q])
                memset(pgrad[q], 0, sizeof(float) * L->param[q].t.numel);
        for (size_t e = 0; e < n; e++) {
            const float *g = dout + e * osz, *rows = g + (size_t)cfg->class_token * d;
            patches(L, (float *)in[0] + e * isz, ex->scratch, 0, 0);
            if (pgrad[P_W]) /* NULL: frozen (BitFit) */
                tl_sgemm(ex->blas, 1, 0, d, k, np, 1.0f, rows, d, ex->scratch, k,
                         e ? 1.0f : 0.0f, pgrad[P_W], k);
            for (int r = 0; pgrad[P_B] && r < np; r++)
                for (int j = 0; j < d; j++)
                    pgrad[P_B][j] += rows[(size_t)r * d + j];
            if (cfg->class_token && pgrad[2])
                for (int j = 0; j < d; j++)
                    pgrad[2][j] += g[j];
            if (cfg->positions && pgrad[L->nparam - 1])
                for (size_t i = 0; i < osz; i++)
                    pgrad[L->nparam - 1][i] += g[i];
        }
    }
    if (!din[0])
        return;
    for (size_t e = 0; e < n; e++) {
        const float *rows = dout + e * osz + (size_t)cfg->class_token * d;
        tl_sgemm(ex->blas, 0, 0, np, k, d, 1.0f, rows, d, L->param[P_W].t.data, k, 0.0f,
                 ex->scratch, k);
        patches(L, din[0] + e * isz, ex->scratch, 1, accum);
    }
}

const tl_layer_ops tl_patch_embed_ops = {
    .kind = TLEARN_LAYER_PATCH_EMBED,
    .kind_name = "patch_embed",
    .bwd_ignores_output = 1,
    .configure = patch_configure,
    .arguments = patch_arguments,
    .setup = patch_setup,
    .scratch_floats = patch_scratch,
    .forward = patch_forward,
    .backward = patch_backward,
};
