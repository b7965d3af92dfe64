/* BLIS's own sgemm rate on this machine: the ceiling every benchmark is measured against.
 *
 *   blis-ceiling [--threads T] [--size N] [--reps R]
 *
 * Prints `blas <tlearn_blas_info line>` (the BLIS sub-configuration measured: the one
 * libtlearn runs in this environment), then `ceiling threads=T gflops=G size=N arch=A`: the
 * best of R timed bli_sgemm_ex calls on an N x N x N problem with a per-call rntm_t at T
 * threads (default: 1 and 2 threads). The environment chooses the sub-configuration:
 * TLEARN_BLIS_ARCH=keep measures BLIS's own choice, BLIS_ARCH_TYPE=ID a given one. */
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
    bench_print_blas();
    char line[TLEARN_BLAS_INFO_MAX], arch[64] = "?";
    if (tlearn_blas_info(line, sizeof line, NULL) == TLEARN_OK) {
        const char *p = strstr(line, " arch=");
        if (p)
            sscanf(p + 6, "%63s", arch);
    }
    for (int t = threads ? threads : 1; t <= (threads ? threads : 2); t++) {
        double g = bench_blis_ceiling(t, size, reps);
        if (g <= 0) {
            fprintf(stderr, "blis-ceiling: out of memory\n");
            return 1;
        }
        printf("ceiling threads=%d gflops=%.4g size=%d arch=%s\n", t, g, size, arch);
        fflush(stdout);
    }
    return 0;
}
