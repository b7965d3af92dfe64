/* BLIS's own sgemm rate on this machine: the ceiling every benchmark is measured against.
 *
 *   blis-ceiling [--threads T] [--size N] [--reps R]
 *
 * Prints `ceiling threads=T gflops=G size=N`: the best of R timed bli_sgemm_ex calls on an
 * N x N x N problem with a per-call rntm_t at T threads (default: 1 and 2 threads). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

int main(int argc, char **argv)
{
    int threads = 0, size = 2000, reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--size") == 0)
            size = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: blis-ceiling [--threads T] [--size N] [--reps R]\n");
            return 2;
        }
    }
    if (size < 64 || reps < 1 || threads < 0) {
        fprintf(stderr, "blis-ceiling: size must be >= 64, reps >= 1, threads >= 1\n");
        return 2;
    }
    for (int t = threads ? threads : 1; t <= (threads ? threads : 2); t++) {
        double g = bench_blis_ceiling(t, size, reps);
        if (g <= 0) {
            fprintf(stderr, "blis-ceiling: out of memory\n");
            return 1;
        }
        printf("ceiling threads=%d gflops=%.4g size=%d\n", t, g, size);
        fflush(stdout);
    }
    return 0;
}
