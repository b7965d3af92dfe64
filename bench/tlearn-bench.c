/* libtlearn throughput, latency and memory on the reference workloads (bench/README.md).
 *
 *   tlearn-bench WORKLOAD [--threads T] [--rounds R] [--round-seconds S] [--ceiling GFLOPS]
 *   tlearn-bench all      [same options]  (every workload, each at 1 and 2 threads)
 *   tlearn-bench ewc_overhead [same options]  (workload 4 over 2, from paired rounds)
 *
 * One line per measurement:
 *   tlearn workload=cnn_full_b64 threads=1 value=... unit=steps/s gflops=... ceiling_gflops=...
 *          ceiling_frac=... peak_rss_kib=... rounds=... spread=...
 * value is the median over rounds (each round runs for at least S seconds). For the
 * batch-1 workload the value is microseconds per step and peak_rss_kib is the process's
 * peak RSS: run it in its own process (WORKLOAD mode) for that figure to mean anything.
 * cpu_value is the same figure over the process's CPU time instead of wall time: at 1 thread
 * it is what an idle machine would show (the build machine is shared).
 * Without --ceiling the BLIS sgemm ceiling is measured first in a forked child, so its
 * matrices do not count towards this process's RSS. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* Runs per second in the workload's unit. */
static double as_unit(const bench_ctx *c, double runs)
{
    if (c->w == BW_CNN_FEATURES_B256 || c->w == BW_TRANSFORMER_FEATURES_B32)
        return runs * (double)c->batch; /* images/s, sequences/s */
    return c->w == BW_CNN_PARTIAL_B1 ? 1e6 / runs : runs; /* us/step or steps/s */
}

static int run_ctx(void *c)
{
    return bench_run_once(c);
}

static int timed_round(bench_ctx *c, double round_s, double *rate, double *cpu_rate)
{
    return bench_round(run_ctx, c, round_s, rate, cpu_rate);
}

static int setup_or_report(bench_ctx *c, int w, int threads)
{
    int rc = bench_setup(c, w, threads);
    if (rc) {
        fprintf(stderr, "tlearn-bench: %s setup failed: %s (%s)\n",
                bench_workload_spec(w)->name, tlearn_strerror(rc), tlearn_errmsg());
        bench_teardown(c);
    }
    return rc;
}

/* EWC overhead over workload 2 from paired rounds in one process (full, EWC, full, ...):
 * the median of the per-pair time ratios, so that drifts of the machine between two runs
 * (turbo, other jobs) cancel. A few percent is what is measured: separate runs of
 * each workload scatter by more than that. */
static int ewc_overhead(int threads, int rounds, double round_s)
{
    bench_ctx a, b;
    if (setup_or_report(&a, BW_CNN_FULL_B64, threads))
        return 1;
    if (setup_or_report(&b, BW_CNN_EWC_B64, threads)) {
        bench_teardown(&a);
        return 1;
    }
    double ratio[64], cpu_ratio[64], ra, rb, ca, cb;
    int rc = timed_round(&a, 0.2, &ra, &ca); /* warm-up */
    if (!rc)
        rc = timed_round(&b, 0.2, &rb, &cb);
    if (rounds > 64)
        rounds = 64;
    for (int r = 0; r < rounds && !rc; r++) {
        rc = timed_round(&a, round_s, &ra, &ca);
        if (!rc)
            rc = timed_round(&b, round_s, &rb, &cb);
        ratio[r] = ra / rb;
        cpu_ratio[r] = ca / cb;
    }
    if (!rc)
        printf("tlearn workload=ewc_overhead threads=%d value=%.3f unit=%% rounds=%d "
               "cpu_value=%.3f\n", threads, 100.0 * (bench_median(ratio, rounds) - 1.0), rounds,
               100.0 * (bench_median(cpu_ratio, rounds) - 1.0));
    else
        fprintf(stderr, "tlearn-bench: ewc_overhead failed: %s (%s)\n", tlearn_strerror(rc),
                tlearn_errmsg());
    bench_teardown(&a);
    bench_teardown(&b);
    return rc != TLEARN_OK;
}

static int run_workload(int w, int threads, int rounds, double round_s, double ceiling)
{
    const bench_spec *sp = bench_workload_spec(w);
    bench_ctx c;
    int rc = setup_or_report(&c, w, threads);
    if (rc)
        return 1;
    bench_result r;
    rc = bench_measure(run_ctx, &c, rounds, round_s, &r);
    if (rc) {
        fprintf(stderr, "tlearn-bench: %s failed: %s (%s)\n", sp->name, tlearn_strerror(rc),
                tlearn_errmsg());
        bench_teardown(&c);
        return 1;
    }
    double runs = r.rate, cpu_runs = r.cpu_rate, spread = r.spread;
    double value = as_unit(&c, runs), cpu_value = as_unit(&c, cpu_runs);
    int per_item = w == BW_CNN_FEATURES_B256 || w == BW_TRANSFORMER_FEATURES_B32;
    double gflops = runs * c.flops * 1e-9 * (per_item ? (double)c.batch : 1.0);
    bench_print_result(sp->name, threads, value, sp->unit, gflops, ceiling, rounds, spread,
                       cpu_value);
    bench_teardown(&c);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: tlearn-bench WORKLOAD|all|ewc_overhead [--threads T] [--rounds R] "
                    "[--round-seconds S] [--ceiling GFLOPS]\nworkloads:");
    for (int w = 0; w < BW_COUNT; w++)
        fprintf(stderr, " %s", bench_workload_spec(w)->name);
    fprintf(stderr, "\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    int threads = 1, rounds = 5;
    double round_s = 0.3, ceiling = 0.0;
    for (int i = 2; i < argc; i++) {
        if (bench_common_option(argc, argv, &i, &threads, &rounds, &round_s, &ceiling) != 1) {
            usage();
            return 2;
        }
    }
    if (threads < 1 || rounds < 1 || round_s <= 0) {
        usage();
        return 2;
    }
    bench_print_blas(); /* the BLIS sub-configuration the figures below ran on */
    if (strcmp(argv[1], "all") == 0) {
        int status = 0;
        double ceil_t[3] = {0, 0, 0};
        for (int t = 1; t <= 2; t++) {
            ceil_t[t] = ceiling > 0 ? ceiling : bench_blis_ceiling_forked(t, 2000, 3);
            printf("ceiling threads=%d gflops=%.4g\n", t, ceil_t[t]);
        }
        for (int w = 0; w < BW_COUNT; w++)
            for (int t = 1; t <= 2; t++)
                status |= run_workload(w, t, rounds, round_s, ceil_t[t]);
        return status;
    }
    if (strcmp(argv[1], "ewc_overhead") == 0)
        return ewc_overhead(threads, rounds, round_s);
    int w = bench_workload_by_name(argv[1]);
    if (w < 0) {
        usage();
        return 2;
    }
    if (ceiling <= 0)
        ceiling = bench_blis_ceiling_forked(threads, 2000, 3);
    return run_workload(w, threads, rounds, round_s, ceiling);
}
