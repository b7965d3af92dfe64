/* Aligned allocation. Every buffer is 64-byte aligned so that vector loops and BLIS
 * packing start on a cache line. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

static atomic_uint_fast64_t alloc_calls;
static atomic_uint_fast64_t fail_call; /* the call number that fails; 0: none */
static atomic_int_fast64_t live;

uint64_t tl_alloc_calls(void)
{
    return atomic_load(&alloc_calls);
}

int64_t tl_alloc_live(void)
{
    return atomic_load(&live);
}

void tl_alloc_fail_nth(uint64_t n)
{
    atomic_store(&fail_call, n ? atomic_load(&alloc_calls) + n : 0);
}

int tl_mul_size(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > SIZE_MAX / b)
        return 0;
    *out = a * b;
    return 1;
}

void *tl_alloc(size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    if (bytes > SIZE_MAX - 64)
        return NULL;
    uint64_t call = atomic_fetch_add(&alloc_calls, 1) + 1;
    if (call == atomic_load(&fail_call))
        return NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (p)
        atomic_fetch_add(&live, 1);
    return p;
}

void *tl_alloc_zero(size_t bytes)
{
    void *p = tl_alloc(bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void *tl_alloc_array(size_t count, size_t size)
{
    size_t bytes;
    if (!tl_mul_size(count, size, &bytes))
        return NULL;
    return tl_alloc_zero(bytes);
}

void tl_free(void *p)
{
    if (p)
        atomic_fetch_sub(&live, 1);
    free(p);
}

/* Buffers handed to the caller (tlearn_model_save_buffer, ...) come from tl_alloc. */
void tlearn_free(void *p)
{
    tl_free(p);
}

char *tl_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = tl_alloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}
