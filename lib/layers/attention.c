/* Multi-head self-attention as one layer, as torch.nn.MultiheadAttention(D, heads,
 * batch_first=True) called with query = key = value = x (T, D):
 *
 *   [Q K V] = x in_proj_weight^T + in_proj_bias          (3D, D) and (3D): one GEMM, all rows
 *   per example and head h (columns h*hd .. h*hd+hd-1 of Q, K, V; hd = D / heads):
 *     P = softmax(Q_h K_h^T / sqrt(hd) + masks)         (T, T)
 *     ctx_h = P V_h
 *   out = ctx out_proj.weight^T + out_proj.bias          one GEMM, all rows
 *
 * Masks: an optional second input, a key-padding mask (T) per example (1 keep, 0 pad; int32
 * model input or floats 1/0, see tl_mask_keep; with pad_true, as torch's key_padding_mask, 1
 * pad and 0 keep), and a causal flag (query t sees keys <= t).
 * A query that sees no key at all gets zero attention weights (its ctx is 0; PyTorch gives
 * NaN there). Attention weights are not dropped out (torch's MHA dropout is not modelled).
 *
 * Forward keeps Q, K and V (3 x T x D per example) for backward; backward recomputes each
 * head's P from Q and K, so no more than one head's T x T block exists at a time (plus its
 * gradient), and with it that head's ctx = P V (for out_proj's weight gradient: one GEMM
 * of T x T x hd instead of keeping T x D floats per example and layer). In backward the
 * gradient of Q, K, V replaces them head by head in scratch: a head's Q/K/V columns are
 * read only by that head.
 *
 * Split form (argument split = 1, made by LoRA on a projection, lib/adapters/): the layer
 * is the core alone, inputs Q, K, V (each (T, D), from separate linear layers) [, mask],
 * no parameters, output ctx; the projections are ordinary layers around it. It keeps
 * nothing: its inputs are the producers' outputs, which the planner keeps for backward. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct attention_cfg {
    int heads;
    int causal;
    int pad_true; /* the mask is true where padded (torch's key_padding_mask, ONNX import) */
    int split;    /* inputs Q, K, V [, mask]; no projections */
} attention_cfg;

enum { W_IN, B_IN, W_OUT, B_OUT };

/* The index of the mask input, 0 when there is none. */
static int mask_input(const tl_layer *L)
{
    int first = ((const attention_cfg *)L->cfg)->split ? 3 : 1;
    return L->ninputs > first ? first : 0;
}

static int attention_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)fa;
    /* heads causal [pad_true [split]] */
    if (ni < 2 || ni > 4 || nf != 0)
        return tl_fail(TLEARN_EINVAL, "attention '%s': expected 2 to 4 arguments", L->name);
    int pad_true = ni > 2 ? ia[2] : 0, split = ni > 3 ? ia[3] : 0;
    if (pad_true != 0 && pad_true != 1)
        return tl_fail(TLEARN_EINVAL, "attention '%s': pad_true is %d, must be 0 or 1", L->name,
                       pad_true);
    if (split != 0 && split != 1)
        return tl_fail(TLEARN_EINVAL, "attention '%s': split is %d, must be 0 or 1", L->name,
                       split);
    if (ia[0] < 1)
        return tl_fail(TLEARN_EINVAL, "attention '%s': heads is %d, must be >= 1", L->name,
                       ia[0]);
    if (ia[1] != 0 && ia[1] != 1)
        return tl_fail(TLEARN_EINVAL, "attention '%s': causal is %d, must be 0 or 1", L->name,
                       ia[1]);
    if (L->ninputs != 1 + 2 * split && L->ninputs != 2 + 2 * split)
        return tl_fail(TLEARN_EINVAL, "attention '%s': takes %s and optionally a mask, not %d "
                       "inputs", L->name, split ? "Q, K, V" : "a sequence", L->ninputs);
    attention_cfg cfg = {ia[0], ia[1], pad_true, split};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void attention_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)fa;
    const attention_cfg *cfg = L->cfg;
    ia[0] = cfg->heads;
    ia[1] = cfg->causal;
    ia[2] = cfg->pad_true;
    ia[3] = cfg->split;
    /* the shortest vector that says it: round 1.1's two for the plain fused form */
    *ni = cfg->split ? 4 : cfg->pad_true ? 3 : 2;
    *nf = 0;
}

static int attention_setup(tl_layer *L, tl_rng *rng)
{
    const attention_cfg *cfg = L->cfg;
    tl_shape in = L->in[0];
    char s[TL_SHAPE_STR];
    if (in.rank != 2)
        return tl_fail(TLEARN_ESHAPE, "attention '%s': input is %s, expected a sequence (T, D)",
                       L->name, tl_shape_str(in, s));
    int t = in.d[0], d = in.d[1];
    if (d % cfg->heads)
        return tl_fail(TLEARN_ESHAPE, "attention '%s': dimension %d is not a multiple of %d "
                       "heads", L->name, d, cfg->heads);
    int mk = mask_input(L);
    if (mk && (L->in[mk].rank != 1 || L->in[mk].d[0] != t))
        return tl_fail(TLEARN_ESHAPE, "attention '%s': the mask is %s, expected (%d), one "
                       "value per position", L->name, tl_shape_str(L->in[mk], s), t);
    for (int k = 1; cfg->split && k < 3; k++)
        if (!tl_shape_equal(L->in[k], in))
            return tl_fail(TLEARN_ESHAPE, "attention '%s': %c is %s, Q is %s", L->name,
                           "QKV"[k], tl_shape_str(L->in[k], s), tl_shape_str(in, s + 32));
    if ((size_t)t * (size_t)t > (size_t)INT32_MAX || (size_t)t * 4 * (size_t)d > INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "attention '%s': sequence too long", L->name);
    L->out = in;
    if (cfg->split)
        return TLEARN_OK;
    int wi[2] = {3 * d, d}, bi[1] = {3 * d}, wo[2] = {d, d}, bo[1] = {d};
    int rc = tl_layer_add_param(L, "in_proj_weight", 2, wi, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "in_proj_bias", 1, bi, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "out_proj.weight", 2, wo, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "out_proj.bias", 1, bo, 0);
    if (rc)
        return rc;
    /* As torch: xavier_uniform_ in_proj_weight, Linear's default out_proj.weight, zero
     * biases (tl_tensor_alloc zeroes). */
    tl_init_uniform(&L->param[W_IN].t, rng, sqrtf(6.0f / (float)(4 * d)));
    tl_init_uniform(&L->param[W_OUT].t, rng, 1.0f / sqrtf((float)d));
    return TLEARN_OK;
}

static int attention_validate(const tl_layer *L, int k, const void *x, size_t n)
{
    return k && k == mask_input(L) ? tl_validate_mask(L, x, n, (size_t)L->in[0].d[0])
                                   : TLEARN_OK;
}

static size_t attention_saved(const tl_layer *L, size_t n, int backward)
{
    if (((const attention_cfg *)L->cfg)->split)
        return 0;
    return backward ? n * tl_shape_size(L->in[0]) * 3 : 0; /* Q, K, V */
}

static size_t attention_scratch(const tl_layer *L, size_t n)
{
    size_t t = (size_t)L->in[0].d[0], d = (size_t)L->in[0].d[1];
    size_t hd = d / (size_t)((const attention_cfg *)L->cfg)->heads;
    /* Q, K, V (their gradients in backward), ctx and its gradient, P and dP, one head's
     * dQ, dK, dV */
    size_t fused = ((const attention_cfg *)L->cfg)->split ? 0 : n * t * 5 * d;
    return fused + 2 * t * t + 3 * t * hd;
}

static void rows_bias(float *y, const float *b, size_t rows, size_t cols)
{
    for (size_t i = 0; i < rows; i++)
        memcpy(y + i * cols, b, sizeof(float) * cols);
}

static void col_sums(float *g, const float *y, size_t rows, size_t cols)
{
    memset(g, 0, sizeof(float) * cols);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            g[j] += y[i * cols + j];
}

/* P (T x T) = softmax over keys of Q_h K_h^T * scale with the masks; q and k point at the
 * head's columns of an example's rows (row stride ld: 3D in QKV rows, D when split). */
static void head_probs(const tl_layer *L, const tl_exec *ex, const float *q, const float *k,
                       int ld, const float *mask, float *p)
{
    const attention_cfg *cfg = L->cfg;
    int t = L->in[0].d[0], d = L->in[0].d[1], hd = d / cfg->heads;
    tl_sgemm(ex->blas, 0, 1, t, t, hd, 1.0f / sqrtf((float)hd), q, ld, k, ld, 0.0f, p, t);
    for (int i = 0; i < t; i++) {
        float *r = p + (size_t)i * t;
        int seen = cfg->causal ? i + 1 : t;
        float mx = -INFINITY;
        for (int j = 0; j < t; j++) {
            if (j >= seen || (mask && tl_mask_keep(mask, (size_t)j) == cfg->pad_true))
                r[j] = -INFINITY;
            mx = r[j] > mx ? r[j] : mx;
        }
        if (mx == -INFINITY) { /* no key to attend to */
            memset(r, 0, sizeof(float) * (size_t)t);
            continue;
        }
        float sum = 0.0f;
        for (int j = 0; j < t; j++) {
            r[j] = expf(r[j] - mx);
            sum += r[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < t; j++)
            r[j] *= inv;
    }
}

/* QKV and ctx of n examples from x (the forward up to, not including, out_proj). */
static void attend(const tl_layer *L, const tl_exec *ex, const float *x, const float *mask,
                   size_t n, float *qkv, float *ctx, float *p)
{
    const attention_cfg *cfg = L->cfg;
    int t = L->in[0].d[0], d = L->in[0].d[1], hd = d / cfg->heads;
    size_t rows = n * (size_t)t;
    rows_bias(qkv, L->param[B_IN].t.data, rows, 3 * (size_t)d);
    tl_sgemm(ex->blas, 0, 1, (int)rows, 3 * d, d, 1.0f, x, d, L->param[W_IN].t.data, d, 1.0f,
             qkv, 3 * d);
    for (size_t e = 0; e < n; e++) {
        const float *qe = qkv + e * (size_t)t * 3 * d;
        for (int h = 0; h < cfg->heads; h++) {
            const float *q = qe + h * hd;
            head_probs(L, ex, q, q + d, 3 * d, mask ? mask + e * (size_t)t : NULL, p);
            tl_sgemm(ex->blas, 0, 0, t, hd, t, 1.0f, p, t, q + 2 * d, 3 * d, 0.0f,
                     ctx + e * (size_t)t * d + h * hd, d);
        }
    }
}

/* Softmax backward over the rows of P in place of dP: dS = P (dP - sum_j dP P). */
static void softmax_backward(const float *p, float *dp, int t)
{
    for (int i = 0; i < t; i++) {
        const float *pr = p + (size_t)i * t;
        float *gr = dp + (size_t)i * t, dot = 0.0f;
        for (int j = 0; j < t; j++)
            dot += pr[j] * gr[j];
        for (int j = 0; j < t; j++)
            gr[j] = pr[j] * (gr[j] - dot);
    }
}

/* The split form: ctx of n examples from Q, K, V (rows of D) into out. */
static void split_forward(const tl_layer *L, const tl_exec *ex, const float *const *in,
                          float *out, size_t n)
{
    const attention_cfg *cfg = L->cfg;
    int t = L->in[0].d[0], d = L->in[0].d[1], hd = d / cfg->heads, mk = mask_input(L);
    for (size_t e = 0; e < n; e++) {
        size_t off = e * (size_t)t * d;
        for (int h = 0; h < cfg->heads; h++) {
            head_probs(L, ex, in[0] + off + h * hd, in[1] + off + h * hd, d,
                       mk ? in[mk] + e * (size_t)t : NULL, ex->scratch);
            tl_sgemm(ex->blas, 0, 0, t, hd, t, 1.0f, ex->scratch, t, in[2] + off + h * hd, d,
                     0.0f, out + off + h * hd, d);
        }
    }
}

/* Head h's (t x hd) block @p g into the head's columns of rows of D, added with @p accum. */
static void put_head(float *dst, const float *g, int t, int hd, int d, int accum)
{
    for (int i = 0; i < t; i++) {
        float *r = dst + (size_t)i * d;
        const float *s = g + (size_t)i * hd;
        for (int j = 0; j < hd; j++)
            r[j] = accum ? r[j] + s[j] : s[j];
    }
}

/* Backward of the split form: dout is dctx; Q, K, V are the inputs. */
static void split_backward(const tl_layer *L, const tl_exec *ex, const float *const *in,
                           const float *dout, float *const *din, int accum, size_t n)
{
    const attention_cfg *cfg = L->cfg;
    int t = L->in[0].d[0], d = L->in[0].d[1], hd = d / cfg->heads, mk = mask_input(L);
    size_t tt = (size_t)t * t;
    float *p = ex->scratch, *dp = p + tt, *tq = dp + tt, *tk = tq + (size_t)t * hd;
    float *tv = tk + (size_t)t * hd;
    float scale = 1.0f / sqrtf((float)hd);
    if (!din[0] && !din[1] && !din[2])
        return;
    for (size_t e = 0; e < n; e++) {
        size_t off = e * (size_t)t * d;
        for (int h = 0; h < cfg->heads; h++) {
            const float *q = in[0] + off + h * hd, *k = in[1] + off + h * hd;
            const float *v = in[2] + off + h * hd, *dc = dout + off + h * hd;
            head_probs(L, ex, q, k, d, mk ? in[mk] + e * (size_t)t : NULL, p);
            tl_sgemm(ex->blas, 1, 0, t, hd, t, 1.0f, p, t, dc, d, 0.0f, tv, hd);  /* dV */
            tl_sgemm(ex->blas, 0, 1, t, t, hd, 1.0f, dc, d, v, d, 0.0f, dp, t);   /* dP */
            softmax_backward(p, dp, t);
            tl_sgemm(ex->blas, 0, 0, t, hd, t, scale, dp, t, k, d, 0.0f, tq, hd); /* dQ */
            tl_sgemm(ex->blas, 1, 0, t, hd, t, scale, dp, t, q, d, 0.0f, tk, hd); /* dK */
            const float *g[3] = {tq, tk, tv};
            for (int j = 0; j < 3; j++)
                if (din[j])
                    put_head(din[j] + off + h * hd, g[j], t, hd, d, accum);
        }
    }
}

static void attention_forward(tl_layer *L, const tl_exec *ex, const float *const *in,
                              float *out, size_t n, float *saved)
{
    if (((const attention_cfg *)L->cfg)->split) {
        split_forward(L, ex, in, out, n);
        return;
    }
    size_t rows = n * (size_t)L->in[0].d[0], d = (size_t)L->in[0].d[1];
    float *qkv = saved ? saved : ex->scratch;
    float *ctx = saved ? ex->scratch : qkv + rows * 3 * d, *p = ctx + rows * d;
    attend(L, ex, in[0], L->ninputs > 1 ? in[1] : NULL, n, qkv, ctx, p);
    rows_bias(out, L->param[B_OUT].t.data, rows, d);
    tl_sgemm(ex->blas, 0, 1, (int)rows, (int)d, (int)d, 1.0f, ctx, (int)d,
             L->param[W_OUT].t.data, (int)d, 1.0f, out, (int)d);
}

static void attention_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                               const float *out, const float *dout, float *const *din,
                               int accum, size_t n, const float *saved, float *const *pgrad)
{
    (void)out;
    const attention_cfg *cfg = L->cfg;
    int mk = mask_input(L);
    if (mk && din[mk] && !accum) /* the mask has no gradient */
        memset(din[mk], 0, sizeof(float) * n * tl_shape_size(L->in[mk]));
    if (cfg->split) {
        split_backward(L, ex, in, dout, din, accum, n);
        return;
    }
    if (!pgrad && !din[0])
        return;
    int t = L->in[0].d[0], d = L->in[0].d[1], hd = d / cfg->heads, ld = 3 * d;
    size_t rows = n * (size_t)t, tt = (size_t)t * t;
    const float *mask = L->ninputs > 1 ? in[1] : NULL;
    float *qkv = ex->scratch, *ctx = qkv + rows * 3 * d, *dctx = ctx + rows * d;
    float *p = dctx + rows * d, *dp = p + tt;
    float *tq = dp + tt, *tk = tq + (size_t)t * hd, *tv = tk + (size_t)t * hd;
    if (saved) /* copied: backward turns them into their gradients */
        memcpy(qkv, saved, sizeof(float) * rows * 3 * d);
    else /* the forward ran in evaluation mode, which keeps nothing: recompute */
        attend(L, ex, in[0], mask, n, qkv, ctx, p);
    /* pgrad[i] NULL: that tensor is frozen (BitFit) */
    int wout = pgrad && pgrad[W_OUT];
    tl_sgemm(ex->blas, 0, 0, (int)rows, d, d, 1.0f, dout, d, L->param[W_OUT].t.data, d, 0.0f,
             dctx, d);
    float scale = 1.0f / sqrtf((float)hd);
    for (size_t e = 0; e < n; e++) {
        float *qe = qkv + e * (size_t)t * ld;
        const float *dce = dctx + e * (size_t)t * d;
        for (int h = 0; h < cfg->heads; h++) {
            float *q = qe + h * hd, *k = q + d, *v = q + 2 * d;
            const float *dc = dce + h * hd;
            head_probs(L, ex, q, k, ld, mask ? mask + e * (size_t)t : NULL, p);
            if (wout) /* this head's ctx, while V is still V */
                tl_sgemm(ex->blas, 0, 0, t, hd, t, 1.0f, p, t, v, ld, 0.0f,
                         ctx + e * (size_t)t * d + h * hd, d);
            tl_sgemm(ex->blas, 1, 0, t, hd, t, 1.0f, p, t, dc, d, 0.0f, tv, hd);  /* dV */
            tl_sgemm(ex->blas, 0, 1, t, t, hd, 1.0f, dc, d, v, ld, 0.0f, dp, t);  /* dP */
            softmax_backward(p, dp, t);
            tl_sgemm(ex->blas, 0, 0, t, hd, t, scale, dp, t, k, ld, 0.0f, tq, hd); /* dQ */
            tl_sgemm(ex->blas, 1, 0, t, hd, t, scale, dp, t, q, ld, 0.0f, tk, hd); /* dK */
            for (int i = 0; i < t; i++) { /* this head's Q, K, V become their gradients */
                memcpy(q + (size_t)i * ld, tq + (size_t)i * hd, sizeof(float) * (size_t)hd);
                memcpy(k + (size_t)i * ld, tk + (size_t)i * hd, sizeof(float) * (size_t)hd);
                memcpy(v + (size_t)i * ld, tv + (size_t)i * hd, sizeof(float) * (size_t)hd);
            }
        }
    }
    if (wout)
        tl_sgemm(ex->blas, 1, 0, d, d, (int)rows, 1.0f, dout, d, ctx, d, 0.0f, pgrad[W_OUT], d);
    if (pgrad && pgrad[B_OUT])
        col_sums(pgrad[B_OUT], dout, rows, (size_t)d);
    const float *dqkv = qkv;
    if (pgrad && pgrad[W_IN])
        tl_sgemm(ex->blas, 1, 0, ld, d, (int)rows, 1.0f, dqkv, ld, in[0], d, 0.0f, pgrad[W_IN],
                 d);
    if (pgrad && pgrad[B_IN])
        col_sums(pgrad[B_IN], dqkv, rows, (size_t)ld);
    if (din[0])
        tl_sgemm(ex->blas, 0, 0, (int)rows, d, ld, 1.0f, dqkv, ld, L->param[W_IN].t.data, d,
                 accum ? 1.0f : 0.0f, din[0], d);
}

const tl_layer_ops tl_attention_ops = {
    .kind = TLEARN_LAYER_ATTENTION,
    .kind_name = "attention",
    .bwd_ignores_output = 1, /* backward reads what forward saved, not out */
    .int_inputs = 2 | 8, /* the mask: input 1, or 3 in the split form */
    .validate = attention_validate,
    .configure = attention_configure,
    .arguments = attention_arguments,
    .setup = attention_setup,
    .saved_floats = attention_saved,
    .scratch_floats = attention_scratch,
    .forward = attention_forward,
    .backward = attention_backward,
};
