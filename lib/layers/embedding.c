/* Token embedding, as torch.nn.Embedding: int32 ids (T) -> rows of weight (vocab, dim), an
 * output (T, dim). The ids are an int32 model input (checked by validate() before any
 * forward); the row of padding_idx gets no gradient, as in PyTorch, and starts at zero. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct embedding_cfg {
    int vocab, dim;
    int padding_idx; /* -1: none */
} embedding_cfg;

static int embedding_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* vocab dim padding_idx */
    if (ni != 3 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "embedding '%s': expected 3 arguments", L->name);
    if (ia[0] < 1 || ia[1] < 1)
        return tl_fail(TLEARN_EINVAL, "embedding '%s': vocab %d and dim %d must be >= 1",
                       L->name, ia[0], ia[1]);
    if (ia[2] < -1 || ia[2] >= ia[0])
        return tl_fail(TLEARN_EINVAL, "embedding '%s': padding_idx %d is not -1 (none) or in "
                       "0..%d", L->name, ia[2], ia[0] - 1);
    embedding_cfg cfg = {ia[0], ia[1], ia[2]};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void embedding_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const embedding_cfg *cfg = L->cfg;
    ia[0] = cfg->vocab;
    ia[1] = cfg->dim;
    ia[2] = cfg->padding_idx;
    *ni = 3;
    *nf = 0;
}

static int embedding_setup(tl_layer *L, tl_rng *rng)
{
    const embedding_cfg *cfg = L->cfg;
    tl_shape in = L->in[0];
    if (L->ninputs != 1 || in.rank != 1 || L->input[0] >= 0)
        return tl_fail(TLEARN_ESHAPE, "embedding '%s': reads one int32 model input of token "
                       "ids (T)", L->name);
    if ((size_t)cfg->vocab * (size_t)cfg->dim > (size_t)INT32_MAX ||
        (size_t)in.d[0] * (size_t)cfg->dim > (size_t)INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "embedding '%s': too many elements", L->name);
    int dims[2] = {in.d[0], cfg->dim};
    L->out = tl_shape_of(2, dims);
    int wd[2] = {cfg->vocab, cfg->dim};
    int rc = tl_layer_add_param(L, "weight", 2, wd, 0);
    if (rc)
        return rc;
    tl_init_normal(&L->param[0].t, rng, 1.0f); /* torch: N(0, 1), padding row zero */
    if (cfg->padding_idx >= 0)
        memset(L->param[0].t.data + (size_t)cfg->padding_idx * cfg->dim, 0,
               sizeof(float) * (size_t)cfg->dim);
    return TLEARN_OK;
}

static int embedding_validate(const tl_layer *L, int k, const void *x, size_t n)
{
    (void)k;
    const embedding_cfg *cfg = L->cfg;
    const int32_t *ids = x;
    size_t t = (size_t)L->in[0].d[0];
    for (size_t i = 0; i < n * t; i++)
        if (ids[i] < 0 || ids[i] >= cfg->vocab)
            return tl_fail(TLEARN_EINVAL, "token id %d (example %zu, position %zu) is not in "
                           "0..%d", ids[i], i / t, i % t, cfg->vocab - 1);
    return TLEARN_OK;
}

static void embedding_forward(tl_layer *L, const tl_exec *ex, const float *const *in,
                              float *out, size_t n, float *saved)
{
    (void)ex;
    (void)saved;
    const embedding_cfg *cfg = L->cfg;
    const int32_t *ids = (const int32_t *)(const void *)in[0];
    size_t rows = n * (size_t)L->in[0].d[0], d = (size_t)cfg->dim;
    for (size_t i = 0; i < rows; i++)
        memcpy(out + i * d, L->param[0].t.data + (size_t)ids[i] * d, sizeof(float) * d);
}

static void embedding_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                               const float *out, const float *dout, float *const *din,
                               int accum, size_t n, const float *saved, float *const *pgrad)
{
    (void)ex;
    (void)out;
    (void)din; /* token ids have no gradient */
    (void)accum;
    (void)saved;
    if (!pgrad)
        return;
    const embedding_cfg *cfg = L->cfg;
    const int32_t *ids = (const int32_t *)(const void *)in[0];
    size_t rows = n * (size_t)L->in[0].d[0], d = (size_t)cfg->dim;
    float *dw = pgrad[0];
    memset(dw, 0, sizeof(float) * L->param[0].t.numel);
    for (size_t i = 0; i < rows; i++) {
        if (ids[i] == cfg->padding_idx)
            continue;
        float *g = dw + (size_t)ids[i] * d;
        const float *s = dout + i * d;
        for (size_t j = 0; j < d; j++)
            g[j] += s[j];
    }
}

const tl_layer_ops tl_embedding_ops = {
    .kind = TLEARN_LAYER_EMBEDDING,
    .kind_name = "embedding",
    .bwd_ignores_output = 1,
    .int_inputs = 1,
    .validate = embedding_validate,
    .configure = embedding_configure,
    .arguments = embedding_arguments,
    .setup = embedding_setup,
    .forward = embedding_forward,
    .backward = embedding_backward,
};
