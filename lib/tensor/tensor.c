#include <math.h>
#include <stdatomic.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tensor.h"

int tl_tensor_alloc(tl_tensor *t, int ndim, const int *dims)
{
    size_t numel = 1;
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > 4)
        return tl_fail(TLEARN_EINVAL, "tensor rank %d is not in 1..4", ndim);
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 1 || !tl_mul_size(numel, (size_t)dims[i], &numel))
            return tl_fail(TLEARN_EINVAL, "tensor dimension %d is %d", i, dims[i]);
        t->dims[i] = dims[i];
    }
    size_t bytes;
    if (!tl_mul_size(numel, sizeof(float), &bytes))
        return tl_fail(TLEARN_ENOMEM, "tensor of %zu floats is too large", numel);
    t->data = tl_alloc_zero(bytes);
    if (!t->data)
        return tl_fail(TLEARN_ENOMEM, "out of memory for a tensor of %zu floats", numel);
    t->numel = numel;
    t->ndim = ndim;
    return TLEARN_OK;
}

struct tl_share {
    atomic_int refs;
    float *data;
};

static void share_release(tl_share *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        tl_free(s->data);
        tl_free(s);
    }
}

void tl_tensor_free(tl_tensor *t)
{
    if (t->share)
        share_release(t->share);
    else
        tl_free(t->data);
    memset(t, 0, sizeof *t);
}

int tl_tensor_share_view(tl_tensor *dst, tl_tensor *src, size_t offset, int ndim,
                         const int *dims)
{
    int rc = tl_tensor_share(dst, src);
    if (rc)
        return rc;
    dst->data = src->data + offset;
    dst->ndim = ndim;
    dst->numel = 1;
    for (int i = 0; i < 4; i++) {
        dst->dims[i] = i < ndim ? dims[i] : 0;
        dst->numel *= i < ndim ? (size_t)dims[i] : 1;
    }
    return TLEARN_OK;
}

int tl_tensor_share(tl_tensor *dst, tl_tensor *src)
{
    if (!src->share) {
        tl_share *s = tl_alloc(sizeof *s);
        if (!s)
            return tl_fail(TLEARN_ENOMEM, "out of memory");
        atomic_init(&s->refs, 1);
        s->data = src->data;
        src->share = s;
    }
    atomic_fetch_add_explicit(&src->share->refs, 1, memory_order_relaxed);
    *dst = *src;
    return TLEARN_OK;
}

int tl_tensor_is_shared(const tl_tensor *t)
{
    return t->share && atomic_load_explicit(&t->share->refs, memory_order_acquire) > 1;
}

int tl_tensor_own(tl_tensor *t)
{
    tl_share *s = t->share;
    if (!s)
        return TLEARN_OK;
    /* One holder left: no other handle can take a new reference (that needs a handle that
     * holds one), so the data is ours, unless this is a view into part of it. */
    if (atomic_load_explicit(&s->refs, memory_order_acquire) == 1 && t->data == s->data) {
        tl_free(s);
        t->share = NULL;
        return TLEARN_OK;
    }
    float *copy = tl_alloc(sizeof(float) * t->numel);
    if (!copy)
        return tl_fail(TLEARN_ENOMEM, "out of memory for a private copy of %zu floats",
                       t->numel);
    memcpy(copy, t->data, sizeof(float) * t->numel);
    t->data = copy;
    t->share = NULL;
    share_release(s);
    return TLEARN_OK;
}

/* Vectorised with an OpenMP simd reduction (reassociation is what makes it vectorise; the
 * sum is only used for a finiteness check and gradient clipping). */
static double sumsq_range(const float *restrict x, size_t lo, size_t hi)
{
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t i = lo; i < hi; i++)
        s += (double)x[i] * (double)x[i];
    return s;
}

/* Sum (or with @p max, the largest) of range(x, lo, hi) over the slices of up to 16
 * threads. */
static double parallel_reduce(const float *x, size_t n, int threads,
                              double (*range)(const float *, size_t, size_t), int max)
{
    int nt = tl_par_threads(threads, n);
    if (nt > 16)
        nt = 16;
    if (nt == 1)
        return range(x, 0, n);
    double part[16] = {0};
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num();
        size_t lo, hi;
        tl_par_range(n, t, omp_get_num_threads(), &lo, &hi);
        part[t] = range(x, lo, hi);
#endif
    }
#ifndef _OPENMP
    part[0] = range(x, 0, n);
#endif
    double s = 0.0;
    for (int t = 0; t < nt; t++)
        s = max ? (part[t] > s ? part[t] : s) : s + part[t];
    return s;
}

double tl_sumsq(const float *x, size_t n, int threads)
{
    return parallel_reduce(x, n, threads, sumsq_range, 0);
}

/* The largest |x|, and whether some x is Inf or NaN (all exponent bits set): two
 * independent reductions that vectorise (max on floats, OR on the bits). Returns +Inf for
 * a non-finite range. */
static double maxabs_range(const float *restrict x, size_t lo, size_t hi)
{
    float mx = 0.0f;
    uint32_t bad = 0;
#pragma omp simd reduction(max : mx) reduction(| : bad)
    for (size_t i = lo; i < hi; i++) {
        float a = fabsf(x[i]);
        mx = a > mx ? a : mx;
        bad |= tl_not_finite(x[i]);
    }
    return bad ? (double)INFINITY : (double)mx;
}

float tl_max_abs(const float *x, size_t n, int threads)
{
    return (float)parallel_reduce(x, n, threads, maxabs_range, 1);
}
