/* libtlearn's data-parallel scaling over MPI ranks (bench/README.md "Scaling over
 * processes"; bench/mpi-scaling.py runs it beside PyTorch DDP):
 *
 *   mpirun -np P mpi-bench WORKLOAD [--rounds R] [--round-seconds S] [--bucket FLOATS]
 *                          [--no-reduce | --exchange-only]
 *
 * WORKLOAD is a training workload of tlearn-bench (mlp_adam_b64, cnn_full_b64, ...): its
 * global batch (64) is split evenly over the P ranks, each at 1 thread. With P = 1 no
 * reducer is attached: the one-process path, the baseline. --no-reduce trains every rank on
 * its share alone (no exchange: what the scaling would be with free communication);
 * --exchange-only times MPI alone: one MPI_Iallreduce of as many floats as the model
 * trains, finished by MPI_Test polling (value: exchanges per second).
 * Rank 0 prints
 *
 *   mpi workload=cnn_full_b64 ranks=2 value=... unit=steps/s rounds=R spread=... bucket=...
 *
 * value is the median over rounds of global steps per second of wall time. A round is the
 * same number of steps on every rank (fixed after a warm-up on rank 0, as collectives need)
 * between two barriers. cpu_value is the same over the CPU time of the rank that used the
 * most: on a machine shared with other jobs it estimates what an idle one would show (a
 * rank's waits count when it spins, not when it sleeps). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tlearn/tlearn_mpi.h>

#include "harness.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts @p v. */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int rank, size;

static void die(const char *what, int rc)
{
    fprintf(stderr, "mpi-bench: rank %d: %s: %s (%s%s%s)\n", rank, what, tlearn_strerror(rc),
            tlearn_errmsg(), *tlearn_mpi_errmsg() ? " / " : "", tlearn_mpi_errmsg());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* One global step: this rank's share of batch b of the workload's data. */
static int step(bench_ctx *c, size_t share)
{
    size_t b = c->next;
    c->next = (c->next + 1) % c->nbatches;
    size_t first = b * c->batch + (size_t)rank * share;
    return tlearn_model_train_step(c->m, c->o, c->x + first * c->in_size, c->y + first, share,
                                   NULL);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rounds = 5;
    double round_s = 1.0;
    size_t bucket = 0;
    int reduce = 1, exchange_only = 0;
    const char *name = argc > 1 ? argv[1] : "";
    for (int i = 2; i < argc; i += 2) {
        if (!strcmp(argv[i], "--no-reduce") || !strcmp(argv[i], "--exchange-only")) {
            reduce = argv[i][2] != 'n';
            exchange_only = argv[i][2] == 'e';
            i--;
        } else if (i + 1 == argc)
            break;
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--round-seconds"))
            round_s = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--bucket"))
            bucket = (size_t)atol(argv[i + 1]);
    }
    int w = bench_workload_by_name(name);
    if (w < 0 || w == BW_CNN_FEATURES_B256 || w == BW_CNN_PARTIAL_B1 || rounds < 1 ||
        rounds > 100 || !(round_s > 0)) {
        if (rank == 0)
            fprintf(stderr, "usage: mpirun -np P mpi-bench mlp_adam_b64|cnn_full_b64|"
                    "cnn_partial_b64|cnn_ewc_b64 [--rounds R] [--round-seconds S] "
                    "[--bucket FLOATS]\n");
        MPI_Finalize();
        return 2;
    }
    bench_ctx c;
    int rc = bench_setup(&c, w, 1);
    if (rc)
        die("setup", rc);
    if (c.batch % (size_t)size)
        die("the global batch does not split evenly over the ranks", TLEARN_EINVAL);
    size_t share = c.batch / (size_t)size;
    tlearn_mpi *a = NULL;
    if (size > 1 && reduce &&
        (rc = tlearn_mpi_attach(c.m, MPI_COMM_WORLD, 120.0, bucket, 0, 1, &a)))
        die("attach", rc);

    if (exchange_only) {
        int nt = 0;
        size_t floats = 0;
        tlearn_model_tensor_count(c.m, &nt);
        for (int t = 0; t < nt; t++) {
            size_t numel = 0;
            tlearn_model_tensor_info(c.m, t, NULL, &numel, NULL, NULL);
            floats += numel; /* these workloads have no buffers and nothing frozen */
        }
        float *g = calloc(floats, sizeof *g);
        double rate[100], cpu_rate[100];
        for (int r = 0; r < rounds && g; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double start = bench_now(), cpu0 = bench_cpu_now();
            long k = 0;
            for (int go = 1; go; k++) {
                MPI_Request q;
                int done = 0;
                MPI_Iallreduce(MPI_IN_PLACE, g, (int)floats, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                               &q);
                while (!done)
                    MPI_Test(&q, &done, MPI_STATUS_IGNORE);
                go = k < 2 || bench_now() - start < round_s;
                MPI_Bcast(&go, 1, MPI_INT, 0, MPI_COMM_WORLD); /* rank 0 decides */
            }
            rate[r] = (double)k / (bench_now() - start);
            cpu_rate[r] = (double)k / (bench_cpu_now() - cpu0);
        }
        if (rank == 0 && g)
            printf("mpi workload=%s ranks=%d exchange_floats=%zu value=%.4g cpu_value=%.4g "
                   "unit=exchanges/s rounds=%d\n", name, size, floats, median(rate, rounds),
                   median(cpu_rate, rounds), rounds);
        free(g);
        bench_teardown(&c);
        MPI_Finalize();
        return 0;
    }
    /* Warm-up (plans, gradients, the staging buffer), then the steps per round. */
    double t0 = bench_now();
    for (int s = 0; s < 3; s++)
        if ((rc = step(&c, share)))
            die("warm-up step", rc);
    long per_round = (long)(round_s / ((bench_now() - t0) / 3.0));
    per_round = per_round < 3 ? 3 : per_round;
    MPI_Bcast(&per_round, 1, MPI_LONG, 0, MPI_COMM_WORLD);

    double rate[100], cpu_rate[100];
    for (int r = 0; r < rounds; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double start = bench_now(), cpu0 = bench_cpu_now();
        for (long s = 0; s < per_round; s++)
            if ((rc = step(&c, share)))
                die("step", rc);
        double cpu = bench_cpu_now() - cpu0, most;
        MPI_Allreduce(&cpu, &most, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        rate[r] = (double)per_round / (bench_now() - start);
        cpu_rate[r] = (double)per_round / most;
    }
    double med = median(rate, rounds), cpu_med = median(cpu_rate, rounds);
    if (rank == 0)
        printf("mpi workload=%s ranks=%d value=%.4g cpu_value=%.4g unit=steps/s rounds=%d "
               "spread=%.3g bucket=%zu share=%zu reduce=%d\n", name, size, med, cpu_med,
               rounds, (rate[rounds - 1] - rate[0]) / med, bucket, share, reduce);
    tlearn_mpi_detach(&a);
    bench_teardown(&c);
    MPI_Finalize();
    return 0;
}
