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
