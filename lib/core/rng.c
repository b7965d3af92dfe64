/* xoshiro256** (Blackman and Vigna), seeded through splitmix64. */
#include "core.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tl_rng_seed(tl_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t tl_rng_next(tl_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float tl_rng_uniform(tl_rng *r)
{
    return (float)(tl_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

float tl_rng_uniform_range(tl_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * tl_rng_uniform(r);
}

uint64_t tl_rng_below(tl_rng *r, uint64_t bound)
{
    if (bound <= 1)
        return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound; /* reject the biased tail */
    uint64_t x;
    do
        x = tl_rng_next(r);
    while (x >= limit);
    return x % bound;
}
