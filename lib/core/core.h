/* Internal foundation shared by every part of the library: status messages, allocation,
 * random numbers and name matching. Nothing here knows about layers or models. */
#ifndef TL_CORE_H
#define TL_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "tlearn/tlearn.h"

#if defined(__GNUC__)
#define TL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TL_PRINTF(a, b)
#endif

/* Record a failure for tlearn_errmsg() and return @p status, so that call sites read
 * `return tl_fail(TLEARN_EINVAL, "%s: n is 0", fn);`. */
int tl_fail(int status, const char *fmt, ...) TL_PRINTF(2, 3);
/* Prefix the current message ("section 'params': " + message) and return status. */
int tl_fail_prefix(int status, const char *fmt, ...) TL_PRINTF(2, 3);
void tl_clear_error(void);

/* 64-byte aligned allocation. Sizes are checked for overflow; tl_alloc_zero clears. */
void *tl_alloc(size_t bytes);
void *tl_alloc_zero(size_t bytes);
void *tl_alloc_array(size_t count, size_t size); /* zeroed, overflow-checked */
void tl_free(void *p);
char *tl_strdup(const char *s);
/* How many allocations the library has made in this process (tests prove that steady
 * state steps make none). */
uint64_t tl_alloc_calls(void);
/* Tests: blocks allocated and not yet freed, and a failure injected into the n-th
 * allocation from now (one allocation fails; 0 cancels). */
int64_t tl_alloc_live(void);
void tl_alloc_fail_nth(uint64_t n);

/* Overflow-checked size arithmetic: return 0 on overflow. */
int tl_mul_size(size_t a, size_t b, size_t *out);

/* xoshiro256** seeded through splitmix64: reproducible across platforms. */
typedef struct tl_rng {
    uint64_t s[4];
} tl_rng;
void tl_rng_seed(tl_rng *r, uint64_t seed);
uint64_t tl_rng_next(tl_rng *r);
float tl_rng_uniform(tl_rng *r);                  /* [0, 1) with 24 random bits */
float tl_rng_uniform_range(tl_rng *r, float lo, float hi);
uint64_t tl_rng_below(tl_rng *r, uint64_t bound); /* unbiased in [0, bound) */

/* Shell-style pattern match: '*', '?', '[abc]', '[a-z]', '[!x]'. */
int tl_glob_match(const char *pattern, const char *name);

/* Layer names: 1..63 bytes of printable ASCII, no glob characters. Returns status. */
int tl_check_name(const char *fn, const char *name);

#define TL_NAME_MAX 64

/* CPUs this process may run on (sched_getaffinity), at least 1. */
int tl_cpu_limit(void);

/* Values a tensor may hold: finite, and >= 0 for @p nonneg (a variance). Fails with
 * @p status naming "fn: what" and the first bad element. */
int tl_check_values(int status, const char *fn, const char *what, const float *v, size_t n,
                    int nonneg);
/* Parameters that hold a variance and so must be >= 0 (batchnorm's running_var). */
int tl_param_nonneg(const char *param);

#endif
