/* Position embedding added to a sequence: out[t] = x[t] + weight[t] for x (T, D) and a table
 * weight (max_len, D), T <= max_len (checked when the layer is added). Learned (a trained
 * parameter, N(0, 0.02^2) as BERT and ViT initialise theirs) or sinusoidal (Vaswani et al.:
 * sin/cos of pos / 10000^(2i/D) in columns 2i/2i+1; a buffer, never trained). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct posemb_cfg {
    int max_len;
    int sinusoidal;
} posemb_cfg;

static int posemb_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* max_len sinusoidal */
    if (ni != 2 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "position_embedding '%s': expected 2 arguments", L->name);
    if (ia[0] < 1)
        return tl_fail(TLEARN_EINVAL, "position_embedding '%s': max_len is %d, must be >= 1",
                       L->name, ia[0]);
    if (ia[1] != 0 && ia[1] != 1)
        return tl_fail(TLEARN_EINVAL, "position_embedding '%s': sinusoidal is %d, must be 0 "
                       "or 1", L->name, ia[1]);
    posemb_cfg cfg = {ia[0], ia[1]};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void posemb_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const posemb_cfg *cfg = L->cfg;
    ia[0] = cfg->max_len;
    ia[1] = cfg->sinusoidal;
    *ni = 2;
    *nf = 0;
}

static int posemb_setup(tl_layer *L, tl_rng *rng)
{
    const posemb_cfg *cfg = L->cfg;
    tl_shape in = L->in[0];
    char s[TL_SHAPE_STR];
    if (in.rank != 2)
        return tl_fail(TLEARN_ESHAPE, "position_embedding '%s': input is %s, expected a "
                       "sequence (T, D)", L->name, tl_shape_str(in, s));
    if (in.d[0] > cfg->max_len)
        return tl_fail(TLEARN_ESHAPE, "position_embedding '%s': the sequence has %d positions, "
                       "more than max_len %d", L->name, in.d[0], cfg->max_len);
    int d = in.d[1];
    if ((size_t)cfg->max_len * (size_t)d > (size_t)INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "position_embedding '%s': table too large", L->name);
    L->out = in;
    int wd[2] = {cfg->max_len, d};
    int rc = tl_layer_add_param(L, "weight", 2, wd, cfg->sinusoidal);
    if (rc)
        return rc;
    float *w = L->param[0].t.data;
    if (!cfg->sinusoidal) {
        tl_init_normal(&L->param[0].t, rng, 0.02f);
        return TLEARN_OK;
    }
    for (int p = 0; p < cfg->max_len; p++)
        for (int i = 0; i < d; i++) {
            double a = p / pow(10000.0, (double)(i & ~1) / d);
            w[(size_t)p * d + i] = (float)(i & 1 ? cos(a) : sin(a));
        }
    return TLEARN_OK;
}

static void posemb_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                           size_t n, float *saved)
{
    (void)ex;
    (void)saved;
    size_t size = tl_shape_size(L->out);
    const float *w = L->param[0].t.data; /* the first T rows, contiguous */
    for (size_t e = 0; e < n; e++) {
        const float *x = in[0] + e * size;
        float *y = out + e * size;
        for (size_t i = 0; i < size; i++)
            y[i] = x[i] + w[i];
    }
}

static void posemb_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                            const float *out, const float *dout, float *const *din, int accum,
                            size_t n, const float *saved, float *const *pgrad)
{
    (void)ex;
    (void)in;
    (void)out;
    (void)saved;
    const posemb_cfg *cfg = L->cfg;
    size_t size = tl_shape_size(L->out);
    if (pgrad && !cfg->sinusoidal) {
        float *g = pgrad[0];
        memset(g, 0, sizeof(float) * L->param[0].t.numel); /* rows past T get none */
        for (size_t e = 0; e < n; e++)
            for (size_t i = 0; i < size; i++)
                g[i] += dout[e * size + i];
    }
    if (din[0]) {
        if (accum)
            for (size_t i = 0; i < n * size; i++)
                din[0][i] += dout[i];
        else
            memcpy(din[0], dout, sizeof(float) * n * size);
    }
}

const tl_layer_ops tl_position_embedding_ops = {
    .kind = TLEARN_LAYER_POSITION_EMBEDDING,
    .kind_name = "position_embedding",
    .bwd_ignores_output = 1,
    .configure = posemb_configure,
    .arguments = posemb_arguments,
    .setup = posemb_setup,
    .forward = posemb_forward,
    .backward = posemb_backward,
};
