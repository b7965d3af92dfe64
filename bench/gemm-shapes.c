/* BLIS's rate on the GEMM shapes the reference CNN produces, to tell how much of a gap to
 * the ceiling is GEMM shape and how much is everything else.
 *
 *   gemm-shapes [--threads T]
 *
 * Prints one line per shape: `shape name=... m= n= k= ta= tb= gflops=` (best of 5). */
#include <blis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

typedef struct shape {
    const char *name;
    int m, n, k, ta, tb;
} shape;

static const shape shapes[] = {
    /* conv1 (1 -> 32, 3x3) on tiles of 16 images of 28x28: C = W (32x9) * col (9 x 16*784) */
    {"conv1_fwd_tile16", 32, 16 * 784, 9, 0, 0},
    {"conv1_wgrad_tile16", 32, 9, 16 * 784, 0, 1},
    /* conv2 (32 -> 64, 3x3) on tiles of 4 images of 14x14 */
    {"conv2_fwd_tile4", 64, 4 * 196, 288, 0, 0},
    {"conv2_fwd_tile16", 64, 16 * 196, 288, 0, 0},
    {"conv2_wgrad_tile4", 64, 288, 4 * 196, 0, 1},
    {"conv2_dgrad_tile4", 288, 4 * 196, 64, 1, 0},
    /* dense layers at batch 64 */
    {"fc1_fwd_b64", 64, 128, 3136, 0, 1},
    {"fc1_wgrad_b64", 128, 3136, 64, 1, 0},
    {"mlp_fc1_fwd_b64", 64, 512, 784, 0, 1},
    {"mlp_fc1_wgrad_b64", 512, 784, 64, 1, 0},
    {"mlp_fc2_dgrad_b64", 64, 512, 512, 0, 0},
    /* batch 1: the head's weight gradient is a rank-1 update */
    {"fc1_wgrad_b1", 128, 3136, 1, 1, 0},
    {"fc1_fwd_b1", 1, 128, 3136, 0, 1},
};

static float *randm(size_t n)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; p && i < n; i++)
        p[i] = (float)((i * 2654435761u) % 1000u) / 1000.0f - 0.5f;
    return p;
}

int main(int argc, char **argv)
{
    int threads = 1;
    if (argc == 3 && strcmp(argv[1], "--threads") == 0)
        threads = atoi(argv[2]);
    if (threads < 1) {
        fprintf(stderr, "usage: gemm-shapes [--threads T]\n");
        return 2;
    }
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const shape *sh = &shapes[s];
        float *a = randm((size_t)sh->m * sh->k), *b = randm((size_t)sh->k * sh->n);
        float *c = randm((size_t)sh->m * sh->n);
        if (!a || !b || !c)
            return 1;
        int lda = sh->ta ? sh->m : sh->k, ldb = sh->tb ? sh->k : sh->n;
        float one = 1.0f, zero = 0.0f;
        double flops = 2.0 * sh->m * sh->n * sh->k, best = 0.0;
        for (int r = 0; r < 6; r++) {
            int reps = 0;
            double t0 = bench_now(), t;
            do {
                rntm_t rntm;
                bli_rntm_init(&rntm);
                bli_rntm_set_num_threads(threads, &rntm);
                bli_sgemm_ex(sh->ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                             sh->tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, sh->m, sh->n, sh->k,
                             &one, a, lda, 1, b, ldb, 1, &zero, c, sh->n, 1, NULL, &rntm);
                reps++;
                t = bench_now() - t0;
            } while (t < 0.02);
            double g = flops * reps / t * 1e-9;
            if (r > 0 && g > best)
                best = g;
        }
        printf("shape name=%s m=%d n=%d k=%d ta=%d tb=%d threads=%d gflops=%.4g\n", sh->name,
               sh->m, sh->n, sh->k, sh->ta, sh->tb, threads, best);
        fflush(stdout);
        free(a);
        free(b);
        free(c);
    }
    return 0;
}
