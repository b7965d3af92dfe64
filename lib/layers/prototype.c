/* Prototype head: one prototype per class, logits = temperature * cos(x, p_c).
 *
 * Parameters: `prototypes` (classes, D) and `counts` (classes) are buffers (a prototype is
 * the running mean of its examples' L2-normalised features, not trained), `temperature` (1)
 * is trained when learn_temperature is set and a buffer otherwise, so checkpoints keep all
 * three. The input is flattened as `dense` does. Norms are clamped at TL_PROTO_EPS as
 * torch.nn.functional.normalize does, so an empty class (zero prototype) scores 0.
 *
 * Arguments: ia = {classes, learn_temperature}, fa = {temperature}. lib/fewshot/ adds,
 * updates and removes classes between runs (tl_prototype_resize, tl_prototype_accumulate). */
#include <math.h>
#include <string.h>

#include "layer.h"

typedef struct proto_cfg {
    int classes;
    int learn; /* temperature is a trained parameter */
    float temperature; /* initial value; the tensor holds the current one */
} proto_cfg;

enum { P_PROTO, P_COUNT, P_TEMP };

static int proto_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    if (ni != 2 || nf != 1)
        return tl_fail(TLEARN_EINVAL, "prototype '%s': expected 2 integer and 1 float argument",
                       L->name);
    if (ia[0] < 1 || (ia[1] != 0 && ia[1] != 1))
        return tl_fail(TLEARN_EINVAL, "prototype '%s': classes is %d (must be >= 1), "
                       "learn_temperature %d (0 or 1)", L->name, ia[0], ia[1]);
    if (!(fa[0] > 0.0f) || !isfinite(fa[0]))
        return tl_fail(TLEARN_EINVAL, "prototype '%s': temperature must be > 0 and finite",
                       L->name);
    proto_cfg cfg = {ia[0], ia[1], fa[0]};
    return tl_layer_config(L, &cfg, sizeof cfg);
}

static void proto_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    const proto_cfg *cfg = L->cfg;
    ia[0] = cfg->classes;
    ia[1] = cfg->learn;
    fa[0] = cfg->temperature;
    *ni = 2;
    *nf = 1;
}

static int proto_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const proto_cfg *cfg = L->cfg;
    size_t d = tl_shape_size(L->in[0]);
    if (d > (size_t)INT32_MAX / (size_t)cfg->classes)
        return tl_fail(TLEARN_ESHAPE, "prototype '%s': %d x %zu prototypes are too many",
                       L->name, cfg->classes, d);
    L->out = tl_shape1(cfg->classes);
    int pd[2] = {cfg->classes, (int)d}, one = 1;
    int rc = tl_layer_add_param(L, "prototypes", 2, pd, 1);
    if (!rc)
        rc = tl_layer_add_param(L, "counts", 1, pd, 1);
    if (!rc)
        rc = tl_layer_add_param(L, "temperature", 1, &one, !cfg->learn);
    if (rc)
        return rc;
    L->param[P_TEMP].t.data[0] = cfg->temperature;
    return TLEARN_OK;
}

static size_t proto_scratch(const tl_layer *L, size_t n)
{
    const proto_cfg *cfg = L->cfg;
    /* norms of the n inputs and of the prototypes; backward adds two n x classes blocks */
    return n + (size_t)cfg->classes + 2 * n * (size_t)cfg->classes;
}

void tl_row_norms(const float *x, size_t rows, size_t d, float *norm)
{
    for (size_t i = 0; i < rows; i++) {
        const float *r = x + i * d;
        float s = 0.0f;
        for (size_t j = 0; j < d; j++)
            s += r[j] * r[j];
        s = sqrtf(s);
        norm[i] = s > TL_PROTO_EPS ? s : TL_PROTO_EPS;
    }
}

static void proto_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                          size_t n, float *saved)
{
    (void)saved;
    const proto_cfg *cfg = L->cfg;
    int c = cfg->classes, d = (int)tl_shape_size(L->in[0]);
    const float *p = L->param[P_PROTO].t.data;
    float t = L->param[P_TEMP].t.data[0], *nx = ex->scratch, *np = nx + n;
    tl_row_norms(in[0], n, (size_t)d, nx);
    tl_row_norms(p, (size_t)c, (size_t)d, np);
    tl_sgemm(ex->blas, 0, 1, (int)n, c, d, 1.0f, in[0], d, p, d, 0.0f, out, c);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < c; k++)
            out[i * c + k] *= t / (nx[i] * np[k]);
}

static void proto_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                           const float *out, const float *dout, float *const *din, int accum,
                           size_t n, const float *saved, float *const *pgrad)
{
    (void)out;
    (void)saved;
    const proto_cfg *cfg = L->cfg;
    int c = cfg->classes, d = (int)tl_shape_size(L->in[0]);
    const float *p = L->param[P_PROTO].t.data, *x = in[0];
    float t = L->param[P_TEMP].t.data[0];
    float *nx = ex->scratch, *np = nx + n, *g = np + c, *a = g + n * (size_t)c;
    tl_row_norms(x, n, (size_t)d, nx);
    tl_row_norms(p, (size_t)c, (size_t)d, np);
    /* g = x P^T (the cosines before both norms): recomputed, since out / t fails at t = 0 */
    tl_sgemm(ex->blas, 0, 1, (int)n, c, d, 1.0f, x, d, p, d, 0.0f, g, c);
    double dt = 0.0;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < c; k++) {
            size_t ik = i * (size_t)c + (size_t)k;
            float s = 1.0f / (nx[i] * np[k]);
            dt += (double)dout[ik] * g[ik] * s;
            a[ik] = dout[ik] * t * s;
        }
    if (pgrad && cfg->learn)
        pgrad[P_TEMP][0] = (float)dt;
    if (!din[0])
        return;
    /* y_ik = t g_ik / (|x_i| |p_k|): dx_i = sum_k a_ik p_k - x_i (sum_k a_ik g_ik) / |x_i|^2,
     * the second term only where the norm is not clamped (there x / eps is linear). */
    tl_sgemm(ex->blas, 0, 0, (int)n, d, c, 1.0f, a, c, p, d, accum ? 1.0f : 0.0f, din[0], d);
    for (size_t i = 0; i < n; i++) {
        if (!(nx[i] > TL_PROTO_EPS))
            continue;
        float s = 0.0f;
        for (int k = 0; k < c; k++)
            s += a[i * (size_t)c + (size_t)k] * g[i * (size_t)c + (size_t)k];
        s /= nx[i] * nx[i];
        float *dx = din[0] + i * (size_t)d;
        const float *xi = x + i * (size_t)d;
        for (int j = 0; j < d; j++)
            dx[j] -= xi[j] * s;
    }
}

int tl_prototype_classes(const tl_layer *L)
{
    return ((const proto_cfg *)L->cfg)->classes;
}

int tl_prototype_resize(tl_layer *L, int add, int remove)
{
    proto_cfg *cfg = L->cfg;
    int c = cfg->classes, d = L->param[P_PROTO].t.dims[1];
    int nc = remove >= 0 ? c - 1 : c + add;
    if (nc < 1 || (size_t)nc > (size_t)INT32_MAX / (size_t)d)
        return tl_fail(TLEARN_ESHAPE, "prototype '%s': %d classes are %s", L->name, nc,
                       nc < 1 ? "too few (at least 1 stays)" : "too many");
    tl_tensor pt, ct;
    int pd[2] = {nc, d};
    int rc = tl_tensor_alloc(&pt, 2, pd);
    if (rc)
        return tl_fail(rc, "prototype '%s': out of memory for %d classes", L->name, nc);
    rc = tl_tensor_alloc(&ct, 1, pd);
    if (rc) {
        tl_tensor_free(&pt);
        return tl_fail(rc, "prototype '%s': out of memory for %d classes", L->name, nc);
    }
    /* Rows before the removed one stay, rows after it move up by one; new rows are empty. */
    const float *op = L->param[P_PROTO].t.data, *oc = L->param[P_COUNT].t.data;
    for (int k = 0, j = 0; k < c; k++) {
        if (k == remove)
            continue;
        memcpy(pt.data + (size_t)j * d, op + (size_t)k * d, sizeof(float) * (size_t)d);
        ct.data[j++] = oc[k];
    }
    tl_tensor_free(&L->param[P_PROTO].t);
    tl_tensor_free(&L->param[P_COUNT].t);
    L->param[P_PROTO].t = pt;
    L->param[P_COUNT].t = ct;
    cfg->classes = nc;
    L->out = tl_shape1(nc);
    return TLEARN_OK;
}

void tl_prototype_accumulate(tl_layer *L, const double *sums, const double *counts)
{
    int c = tl_prototype_classes(L), d = L->param[P_PROTO].t.dims[1];
    float *p = L->param[P_PROTO].t.data, *cnt = L->param[P_COUNT].t.data;
    for (int k = 0; k < c; k++) {
        if (counts[k] <= 0.0)
            continue;
        /* running mean: p <- (n p + sum) / (n + k), in double */
        double old = cnt[k], total = old + counts[k];
        for (int j = 0; j < d; j++) {
            size_t e = (size_t)k * d + (size_t)j;
            p[e] = (float)((old * p[e] + sums[e]) / total);
        }
        cnt[k] = (float)total;
    }
}

const tl_layer_ops tl_prototype_ops = {
    .kind = TLEARN_LAYER_PROTOTYPE,
    .kind_name = "prototype",
    .bwd_ignores_output = 1,
    .configure = proto_configure,
    .arguments = proto_arguments,
    .setup = proto_setup,
    .scratch_floats = proto_scratch,
    .forward = proto_forward,
    .backward = proto_backward,
};
