/* Helpers shared by the unit tests: cmocka, a deterministic generator for test data, and
 * a check macro that prints the library's message when a call fails unexpectedly. */
#ifndef TLEARN_TEST_COMMON_H
#define TLEARN_TEST_COMMON_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <tlearn/tlearn.h>

/* A call that must succeed; on failure the test fails with the status and message. */
#define OK(call)                                                                              \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        if (rc_ != TLEARN_OK)                                                                 \
            fail_msg("%s returned %d (%s): %s", #call, rc_, tlearn_strerror(rc_),             \
                     tlearn_errmsg());                                                        \
    } while (0)

/* splitmix64: test data independent of the library's own generator. */
typedef struct test_rng {
    uint64_t x;
} test_rng;

static inline uint64_t test_next(test_rng *r)
{
    uint64_t z = (r->x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi). */
static inline double test_uniform(test_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * (double)(test_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static inline void test_fill(test_rng *r, float *x, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)test_uniform(r, lo, hi);
}

/* |a - b| <= atol + rtol * |b| */
static inline int test_close(double a, double b, double rtol, double atol)
{
    return fabs(a - b) <= atol + rtol * fabs(b);
}

#endif
