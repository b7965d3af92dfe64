/* Batch normalisation over channels: per channel c over (N, H, W) after a convolution, per
 * feature over N after a dense layer (its output is (units, 1, 1)), as torch.nn.BatchNorm2d
 * and BatchNorm1d. Parameters weight (gamma, init 1) and bias (beta, init 0); buffers
 * running_mean (0) and running_var (1).
 *
 * Training mode: normalise with the batch mean and biased variance. The running statistics
 * are NOT touched in forward: forward keeps the batch mean and biased variance in `saved`
 * and commit() folds them in once the model accepts the step, as PyTorch does
 *   running = (1 - momentum) * running + momentum * batch,  batch variance unbiased.
 * Evaluation mode, or L->use_running_stats (frozen statistics): normalise with the running
 * statistics; backward is then a per-channel affine map.
 * Statistics and reductions are accumulated in double (PyTorch's CPU accumulation type for
 * float). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

typedef struct bn_cfg {
    float eps, momentum;
} bn_cfg;

static int bn_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)ia;
    if (ni != 0 || nf != 2)
        return tl_fail(TLEARN_EINVAL, "batchnorm '%s': expected 2 arguments (eps, momentum)",
                       L->name);
    if (!(fa[0] > 0.0f) || !isfinite(fa[0]))
        return tl_fail(TLEARN_EINVAL, "batchnorm '%s': eps is %g, must be > 0 and finite", L->name,
                       (double)fa[0]);
    if (!(fa[1] >= 0.0f && fa[1] <= 1.0f))
        return tl_fail(TLEARN_EINVAL, "batchnorm '%s': momentum is %g, must be in [0, 1]",
                       L->name, (double)fa[1]);
    bn_cfg c = {fa[0], fa[1]};
    return tl_layer_config(L, &c, sizeof c);
}

static void bn_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)ia;
    const bn_cfg *c = L->cfg;
    fa[0] = c->eps;
    fa[1] = c->momentum;
    *ni = 0;
    *nf = 2;
}

static int bn_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    int C = L->in[0].c;
    int rc = tl_layer_add_param(L, "weight", 1, &C, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "bias", 1, &C, 0);
    if (!rc)
        rc = tl_layer_add_param(L, "running_mean", 1, &C, 1);
    if (!rc)
        rc = tl_layer_add_param(L, "running_var", 1, &C, 1);
    if (rc)
        return rc;
    for (int c = 0; c < C; c++) {
        L->param[0].t.data[c] = 1.0f;
        L->param[3].t.data[c] = 1.0f;
    }
    L->out = L->in[0];
    return TLEARN_OK;
}

/* saved: batch mean [C], biased batch variance [C] and the count M they are over (n*H*W,
 * or the sum over workers with synchronised statistics); commit needs them even when no
 * backward runs through the layer. */
static size_t bn_saved_floats(const tl_layer *L, size_t n, int backward)
{
    (void)n; (void)backward;
    return 2 * (size_t)L->in[0].c + 1;
}

/* Without saved floats (training forward with nothing to keep) the batch statistics go to
 * scratch; synchronised statistics stage their sums after them. */
static size_t bn_scratch_floats(const tl_layer *L, size_t n)
{
    (void)n;
    return 4 * (size_t)L->in[0].c + 2;
}

static int batch_stats(const tl_layer *L, const tl_exec *ex)
{
    return ex->training && !L->use_running_stats;
}

/* Sums over channel c's n*S values of x, and of (x - mean)^2, in double. */
static double chan_sum(const float *x, size_t n, size_t img, size_t S, int c)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float *p = x + i * img + (size_t)c * S;
        for (size_t k = 0; k < S; k++)
            s += p[k];
    }
    return s;
}

static double chan_sq(const float *x, size_t n, size_t img, size_t S, int c, double mean)
{
    double q = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float *p = x + i * img + (size_t)c * S;
        for (size_t k = 0; k < S; k++) {
            double d = p[k] - mean;
            q += d * d;
        }
    }
    return q;
}

/* Batch statistics summed across workers: the sums, then (about the common mean, so no
 * cancellation) the squared deviations; two exchanges, the same two passes as one process
 * over the global batch. */
static void synced_stats(const tl_exec *ex, const float *x, size_t n, size_t img, size_t S,
                         int C, float *stats, float *buf)
{
    for (int c = 0; c < C; c++)
        buf[c] = (float)chan_sum(x, n, img, S, c);
    buf[C] = (float)(n * S);
    ex->sum(ex->sum_ctx, buf, (size_t)C + 1);
    double M = buf[C];
    for (int c = 0; c < C; c++) {
        stats[c] = (float)(buf[c] / M);
        buf[c] = (float)chan_sq(x, n, img, S, c, stats[c]);
    }
    ex->sum(ex->sum_ctx, buf, (size_t)C);
    for (int c = 0; c < C; c++)
        stats[C + c] = (float)(buf[c] / M);
    stats[2 * C] = (float)M;
}

static void bn_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                       size_t n, float *saved)
{
    const bn_cfg *cfg = L->cfg;
    int C = L->in[0].c;
    size_t S = (size_t)L->in[0].h * L->in[0].w, img = (size_t)C * S;
    const float *x = in[0], *gamma = L->param[0].t.data, *beta = L->param[1].t.data;
    const float *rmean = L->param[2].t.data, *rvar = L->param[3].t.data;
    float *stats = saved ? saved : ex->scratch; /* mean [C], biased var [C], M */
    int use_batch = batch_stats(L, ex), synced = use_batch && ex->sum;
    if (synced)
        synced_stats(ex, x, n, img, S, C, stats, ex->scratch + 2 * C + 1);
    else if (use_batch)
        stats[2 * C] = (float)(n * S);
    for (int c = 0; c < C; c++) {
        double mean, var;
        if (synced) {
            mean = stats[c];
            var = stats[C + c];
        } else if (use_batch) { /* one channel at a time while its values are in cache */
            mean = chan_sum(x, n, img, S, c) / (double)(n * S);
            var = chan_sq(x, n, img, S, c, mean) / (double)(n * S);
            stats[c] = (float)mean;
            stats[C + c] = (float)var;
        } else {
            mean = rmean[c];
            var = rvar[c];
        }
        /* y = x * scale + shift with scale = gamma / sqrt(var + eps) */
        double invstd = 1.0 / sqrt(var + (double)cfg->eps);
        float scale = (float)(gamma[c] * invstd);
        float shift = (float)(beta[c] - mean * gamma[c] * invstd);
        for (size_t i = 0; i < n; i++) {
            const float *p = x + i * img + (size_t)c * S;
            float *y = out + i * img + (size_t)c * S;
            for (size_t k = 0; k < S; k++)
                y[k] = p[k] * scale + shift;
        }
    }
}

static void bn_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                        const float *out, const float *dout, float *const *din, int accum,
                        size_t n, const float *saved, float *const *pgrad)
{
    (void)out;
    const bn_cfg *cfg = L->cfg;
    int C = L->in[0].c;
    size_t S = (size_t)L->in[0].h * L->in[0].w, img = (size_t)C * S;
    const float *x = in[0], *gamma = L->param[0].t.data;
    /* batch statistics only when forward ran in training mode and saved them */
    int use_batch = saved && batch_stats(L, ex);
    float *dx = din[0];
    /* Synchronised: the input gradient needs sum dy and sum dy * xhat over every worker's
     * values, so all channels' sums are taken first and exchanged at once. */
    int synced = use_batch && ex->sum && dx;
    double M = use_batch ? (double)saved[2 * C] : (double)(n * S);
    float *sums = ex->scratch; /* synced: sum dy [C], sum dy * xhat [C] */
    for (int pass = synced ? 0 : 1; pass < 2; pass++) {
        for (int c = 0; c < C; c++) {
            double mean = use_batch ? saved[c] : L->param[2].t.data[c];
            double var = use_batch ? saved[C + c] : L->param[3].t.data[c];
            double invstd = 1.0 / sqrt(var + (double)cfg->eps);
            double sdy = 0.0, sdyx = 0.0; /* sum dy, sum dy * xhat */
            if (pass == 0 || !synced) {
                for (size_t i = 0; i < n; i++) {
                    const float *p = x + i * img + (size_t)c * S;
                    const float *g = dout + i * img + (size_t)c * S;
                    for (size_t k = 0; k < S; k++) {
                        sdy += g[k];
                        sdyx += g[k] * ((p[k] - mean) * invstd);
                    }
                }
                /* this worker's share (the reducer averages it); a tensor frozen on its
                 * own (BitFit) has no gradient */
                if (pgrad && pgrad[0])
                    pgrad[0][c] = (float)sdyx;
                if (pgrad && pgrad[1])
                    pgrad[1][c] = (float)sdy;
                if (pass == 0) {
                    sums[c] = (float)sdy;
                    sums[C + c] = (float)sdyx;
                    continue;
                }
            } else {
                sdy = sums[c];
                sdyx = sums[C + c];
            }
            if (!dx)
                continue;
            /* batch: dx = gamma*invstd * (dy - mean(dy) - xhat * mean(dy*xhat));
             * fixed statistics: dx = gamma*invstd * dy */
            double k1 = gamma[c] * invstd;
            double mdy = use_batch ? sdy / M : 0.0, mdyx = use_batch ? sdyx / M : 0.0;
            for (size_t i = 0; i < n; i++) {
                const float *p = x + i * img + (size_t)c * S;
                const float *g = dout + i * img + (size_t)c * S;
                float *d = dx + i * img + (size_t)c * S;
                for (size_t k = 0; k < S; k++) {
                    double xhat = (p[k] - mean) * invstd;
                    float v = (float)(k1 * (g[k] - mdy - xhat * mdyx));
                    d[k] = accum ? d[k] + v : v;
                }
            }
        }
        if (pass == 0)
            ex->sum(ex->sum_ctx, sums, 2 * (size_t)C);
    }
}

/* Fold the batch statistics of an accepted training step into the running buffers. The
 * variance is made unbiased with M/(M-1), M the values per channel the forward saw (n*H*W,
 * over every worker when synchronised); with M == 1 (which PyTorch refuses in training)
 * the biased value 0 is used. */
static int bn_fold(const tl_layer *L, const float *saved, size_t n, int write)
{
    (void)n;
    const bn_cfg *cfg = L->cfg;
    int C = L->in[0].c, finite = 1;
    double M = saved[2 * C];
    double unbias = M > 1.0 ? M / (M - 1.0) : 1.0;
    double mom = cfg->momentum;
    float *rmean = L->param[2].t.data, *rvar = L->param[3].t.data;
    for (int c = 0; c < C; c++) {
        float mean = (float)(mom * saved[c] + (1.0 - mom) * rmean[c]);
        float var = (float)(mom * (saved[C + c] * unbias) + (1.0 - mom) * rvar[c]);
        finite &= isfinite(mean) && isfinite(var);
        if (write) {
            rmean[c] = mean;
            rvar[c] = var;
        }
    }
    return finite;
}

static void bn_commit(tl_layer *L, const float *saved, size_t n)
{
    if (!L->use_running_stats)
        bn_fold(L, saved, n, 1);
}

static int bn_commit_finite(const tl_layer *L, const float *saved, size_t n)
{
    return L->use_running_stats || bn_fold(L, saved, n, 0);
}

const tl_layer_ops tl_batchnorm_ops = {
    .kind = TLEARN_LAYER_BATCHNORM,
    .kind_name = "batchnorm",
    .bwd_ignores_output = 1,
    .configure = bn_configure,
    .arguments = bn_arguments,
    .setup = bn_setup,
    .saved_floats = bn_saved_floats,
    .scratch_floats = bn_scratch_floats,
    .forward = bn_forward,
    .backward = bn_backward,
    .commit = bn_commit,
    .commit_finite = bn_commit_finite,
};
