#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"

/* Set by io/ while it rebuilds layers from a file (see layer.h). */
static _Thread_local size_t *param_budget;

void tl_layer_set_param_budget(size_t *floats)
{
    param_budget = floats;
}

int tl_layer_add_param(tl_layer *L, const char *name, int ndim, const int *dims, int is_buffer)
{
    if (L->nparam >= TL_MAX_PARAMS)
        return tl_fail(TLEARN_EINVAL, "layer '%s' has too many parameters", L->name);
    if (param_budget) {
        size_t numel = 1;
        for (int i = 0; i < ndim; i++)
            if (dims[i] < 1 || !tl_mul_size(numel, (size_t)dims[i], &numel))
                numel = SIZE_MAX;
        if (numel > *param_budget)
            return tl_fail(TLEARN_EFORMAT,
                           "layer '%s', parameter '%s': %zu elements, more than the %zu the file "
                           "declares for the parameters not yet built", L->name, name, numel,
                           *param_budget);
        *param_budget -= numel;
    }
    tl_param *p = &L->param[L->nparam];
    memset(p, 0, sizeof *p);
    strncpy(p->name, name, sizeof p->name - 1);
    p->is_buffer = is_buffer;
    int rc = tl_tensor_alloc(&p->t, ndim, dims);
    if (rc)
        return tl_fail_prefix(rc, "layer '%s', parameter '%s': ", L->name, name);
    L->nparam++;
    return TLEARN_OK;
}

void tl_init_uniform(tl_tensor *t, tl_rng *rng, float bound)
{
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = tl_rng_uniform_range(rng, -bound, bound);
}

void tl_init_normal(tl_tensor *t, tl_rng *rng, float std)
{
    for (size_t i = 0; i < t->numel; i += 2) {
        /* 1 - u is in (0, 1]: the logarithm stays finite */
        double r = sqrt(-2.0 * log(1.0 - (double)tl_rng_uniform(rng)));
        double a = 6.283185307179586 * (double)tl_rng_uniform(rng);
        t->data[i] = (float)(std * r * cos(a));
        if (i + 1 < t->numel)
            t->data[i + 1] = (float)(std * r * sin(a));
    }
}

int tl_validate_mask(const tl_layer *L, const void *x, size_t n, size_t len)
{
    (void)L;
    const unsigned char *p = x;
    for (size_t i = 0; i < n * len; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, sizeof v);
        if (v != 0 && v != 1 && v != 0x3f800000u)
            return tl_fail(TLEARN_EINVAL, "the mask's example %zu, position %zu is neither 0 "
                           "nor 1 (int32 or float)", i / len, i % len);
    }
    return TLEARN_OK;
}

int tl_layer_config(tl_layer *L, const void *cfg, size_t size)
{
    L->cfg = tl_alloc(size);
    if (!L->cfg)
        return tl_fail(TLEARN_ENOMEM, "layer '%s': out of memory", L->name);
    memcpy(L->cfg, cfg, size);
    return TLEARN_OK;
}

tl_layer *tl_layer_new(const tl_layer_ops *ops, const char *name, int ninputs)
{
    if (ninputs < 0 || ninputs > TL_MAX_INPUTS)
        return NULL;
    /* The input arrays follow the struct in the same block (shapes first: alignment). */
    size_t k = ninputs ? (size_t)ninputs : 1;
    tl_layer *L = tl_alloc_zero(sizeof *L + k * (sizeof(tl_shape) + sizeof(int)));
    if (!L)
        return NULL;
    L->ops = ops;
    snprintf(L->name, sizeof L->name, "%s", name);
    L->ninputs = ninputs;
    L->in = (tl_shape *)(L + 1);
    L->input = (int *)(L->in + k);
    return L;
}

const char *tl_shape_str(tl_shape s, char *buf)
{
    int len = snprintf(buf, TL_SHAPE_STR, "(");
    for (int i = 0; i < s.rank && i < TL_MAX_RANK; i++)
        len += snprintf(buf + len, (size_t)(TL_SHAPE_STR - len), i ? ", %d" : "%d", s.d[i]);
    snprintf(buf + len, (size_t)(TL_SHAPE_STR - len), ")");
    return buf;
}

void tl_copy_blocks(float *dst, size_t dr, size_t dj, const float *src, size_t sr, size_t sj,
                    size_t rows, size_t count, size_t len, int accum)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < count; j++) {
            float *restrict d = dst + r * dr + j * dj;
            const float *restrict s = src + r * sr + j * sj;
            if (accum)
                for (size_t i = 0; i < len; i++)
                    d[i] += s[i];
            else if (len == 1) /* strided gathers (slice with a step on the last axis) */
                d[0] = s[0];
            else
                memcpy(d, s, sizeof(float) * len);
        }
}

int tl_pool_check(const tl_layer *L, const char *kind, const tl_pool_geom *g)
{
    const int v[] = {g->kh, g->kw, g->sh, g->sw, g->dh, g->dw};
    const int pad[] = {g->pt, g->pl, g->pb, g->pr};
    for (int i = 0; i < 6; i++)
        if (v[i] < 1 || v[i] > 65536)
            return tl_fail(TLEARN_EINVAL,
                           "%s '%s': kernel %dx%d, stride %dx%d and dilation %dx%d must be in "
                           "1..65536", kind, L->name, g->kh, g->kw, g->sh, g->sw, g->dh, g->dw);
    for (int i = 0; i < 4; i++)
        if (pad[i] < 0 || pad[i] > 65536)
            return tl_fail(TLEARN_EINVAL,
                           "%s '%s': padding (top %d, left %d, bottom %d, right %d) must be in "
                           "0..65536", kind, L->name, g->pt, g->pl, g->pb, g->pr);
    if (g->ceil_mode != 0 && g->ceil_mode != 1)
        return tl_fail(TLEARN_EINVAL, "%s '%s': ceil_mode is %d, must be 0 or 1", kind, L->name,
                       g->ceil_mode);
    return TLEARN_OK;
}

/* Output length along one axis, or -1 when the padded input is shorter than the window. */
static long pool_extent(int in, int k, int s, int p0, int p1, int ceil_mode)
{
    long span = (long)in + p0 + p1 - k;
    if (span < 0)
        return -1;
    long out = (span + (ceil_mode ? s - 1 : 0)) / s + 1;
    /* PyTorch: the last window must start inside the input or its leading padding */
    if (ceil_mode && (out - 1) * s >= (long)in + p0)
        out--;
    return out;
}

int tl_pool_setup(tl_layer *L, const char *kind, const tl_pool_geom *g)
{
    tl_shape in = L->in[0];
    if (in.rank > 3) {
        char b[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "%s '%s': pools a (C, H, W) map, not %s", kind, L->name,
                       tl_shape_str(in, b));
    }
    long kh = (long)g->dh * (g->kh - 1) + 1, kw = (long)g->dw * (g->kw - 1) + 1;
    if (2 * g->pt > kh || 2 * g->pb > kh || 2 * g->pl > kw || 2 * g->pr > kw)
        return tl_fail(TLEARN_ESHAPE,
                       "%s '%s': padding (top %d, left %d, bottom %d, right %d) exceeds half the "
                       "kernel extent %ldx%ld", kind, L->name, g->pt, g->pl, g->pb, g->pr, kh, kw);
    long oh = kh > INT32_MAX ? -1 : pool_extent(in.h, (int)kh, g->sh, g->pt, g->pb, g->ceil_mode);
    long ow = kw > INT32_MAX ? -1 : pool_extent(in.w, (int)kw, g->sw, g->pl, g->pr, g->ceil_mode);
    if (oh < 1 || ow < 1)
        return tl_fail(TLEARN_ESHAPE,
                       "%s '%s': kernel extent %ldx%ld is larger than the padded input %ldx%ld "
                       "(empty output)", kind, L->name, kh, kw, (long)in.h + g->pt + g->pb,
                       (long)in.w + g->pl + g->pr);
    L->out = tl_shape3(in.c, (int)oh, (int)ow);
    return TLEARN_OK;
}
