/* libtlearn-mpi on 2 ranks (run by run-mpi.sh under mpirun):
 *   equiv     2 ranks with batch b each end with the weights of one process with batch 2b
 *             (computed on every rank beside the distributed run) after SGD-with-momentum
 *             and Adam steps; evaluate over both shares equals evaluate over the whole;
 *             rank 0's checkpoint resumes on both ranks; dropout masks differ per rank.
 *   syncbn    a CNN with BatchNorm: with TLEARN_REDUCE_BATCHNORM 2 ranks with batch b end
 *             with the weights and running statistics of one process with batch 2b; without
 *             it they do not (the comparison can fail). Metrics (evaluate_classes,
 *             evaluate_regression) and the EWC Fisher over the shares equal the whole's.
 *   mismatch  ranks holding different weights, or different shapes, are refused at attach
 *   fault     rank 1 leaves after two steps: rank 0's next step returns TLEARN_EIO within
 *             the timeout, its weights unchanged, its last checkpoint loadable.
 * Each rank prints "rank R: MODE ok" on success. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tlearn/tlearn_mpi.h>

static int rank = -1;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", rank, __FILE__, __LINE__,   \
                    #cond);                                                                   \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                     \
        }                                                                                     \
    } while (0)
#define OK(call)                                                                              \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        CHECK(rc_ == TLEARN_OK, "%s: %s / %s", tlearn_strerror(rc_), tlearn_errmsg(),         \
              tlearn_mpi_errmsg());                                                           \
    } while (0)

#define B 4          /* examples per rank */
#define IN (2 * 6 * 6)
#define CLASSES 3

/* (2, 6, 6) -> conv c1 (4, 3x3, pad 1) -> relu -> flatten -> fc1 (16) -> relu -> fc2 (3) */
static tlearn_model *make_model(uint64_t seed, int fc1_units)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 6, 6));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_conv2d(m, "c1", 4, 3, 1, 1, 1));
    OK(tlearn_model_add_activation(m, "r1", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc1", fc1_units));
    OK(tlearn_model_add_activation(m, "r2", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_dense(m, "fc2", CLASSES));
    return m;
}

/* The global batch of step s: 2B examples, the same on every rank (splitmix64). */
static void batch(int s, float *x, int32_t *y)
{
    uint64_t st = 1000 + (uint64_t)s;
    for (int i = 0; i < 2 * B * IN; i++) {
        uint64_t z = (st += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        x[i] = (float)((double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
    }
    for (int i = 0; i < 2 * B; i++)
        y[i] = (s + 2 * i) % CLASSES;
}

static tlearn_optim *optim(int kind)
{
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, kind));
    if (kind == TLEARN_SGD) {
        OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.05));
        OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
    } else {
        OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.01));
    }
    return o;
}

/* Steps [s0, s1): the distributed model on its share, the reference on the whole batch. */
static void steps(tlearn_model *d, tlearn_optim *od, tlearn_model *r, tlearn_optim *orf,
                  int s0, int s1)
{
    float x[2 * B * IN];
    int32_t y[2 * B];
    for (int s = s0; s < s1; s++) {
        batch(s, x, y);
        float ld, lr;
        OK(tlearn_model_train_step(d, od, x + rank * B * IN, y + rank * B, B, &ld));
        OK(tlearn_model_train_step(r, orf, x, y, 2 * B, &lr));
        /* the reported loss is the mean over the global batch */
        CHECK(fabsf(ld - lr) <= 1e-5f * (1 + fabsf(lr)), "step %d: loss %.9g vs %.9g", s, ld, lr);
    }
}

/* Every tensor of a equals b's to fp32 reduction-order tolerance. */
static void same_weights(tlearn_model *a, tlearn_model *b, const char *when)
{
    int nt;
    OK(tlearn_model_tensor_count(a, &nt));
    double worst = 0;
    for (int t = 0; t < nt; t++) {
        const char *name;
        size_t n;
        OK(tlearn_model_tensor_info(a, t, &name, &n, NULL, NULL));
        float *wa = malloc(n * sizeof *wa), *wb = malloc(n * sizeof *wb);
        OK(tlearn_model_get_tensor(a, name, wa, n));
        OK(tlearn_model_get_tensor(b, name, wb, n));
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)wa[i] - wb[i]);
            CHECK(d <= 2e-6 + 2e-5 * fabs(wb[i]), "%s: %s[%zu] is %.9g, one process %.9g",
                  when, name, i, wa[i], wb[i]);
            worst = d > worst ? d : worst;
        }
        free(wa);
        free(wb);
    }
    if (rank == 0)
        printf("rank 0: %s: largest difference from one process %.3g\n", when, worst);
}

static void run_equiv(const char *dir)
{
    tlearn_model *d = make_model(11, 16), *r = make_model(11, 16);
    tlearn_mpi *a;
    /* 64-float buckets: fc2 (51), fc1 (16*144+16), c1 (76) travel separately */
    OK(tlearn_mpi_attach(d, MPI_COMM_WORLD, 30.0, 64, TLEARN_REDUCE_EVALUATE, 77, &a));
    tlearn_optim *sd = optim(TLEARN_SGD), *sr = optim(TLEARN_SGD);
    steps(d, sd, r, sr, 0, 4);
    same_weights(d, r, "after 4 SGD+momentum steps");
    tlearn_optim *ad = optim(TLEARN_ADAM), *ar = optim(TLEARN_ADAM);
    steps(d, ad, r, ar, 4, 8);
    same_weights(d, r, "after 4 more Adam steps");
    OK(tlearn_mpi_check(a)); /* and the ranks agree bit for bit */

    /* evaluate over both shares = evaluate over the whole set */
    float x[2 * B * IN];
    int32_t y[2 * B];
    batch(99, x, y);
    float ld, accd, lr, accr;
    OK(tlearn_model_evaluate(d, x + rank * B * IN, y + rank * B, B, &ld, &accd));
    OK(tlearn_model_evaluate(r, x, y, 2 * B, &lr, &accr));
    CHECK(fabsf(ld - lr) <= 1e-5f * (1 + lr) && accd == accr, "evaluate %g %g vs %g %g", ld,
          accd, lr, accr);

    /* rank 0 writes the checkpoint; both resume from it and go on like the reference */
    char path[4096];
    snprintf(path, sizeof path, "%s/mpi-equiv.tlm", dir);
    if (rank == 0)
        OK(tlearn_model_save(d, ad, path, TLEARN_SAVE_FULL));
    MPI_Barrier(MPI_COMM_WORLD);
    tlearn_mpi_detach(&a);
    tlearn_model *d2;
    tlearn_optim *ad2;
    OK(tlearn_model_load(&d2, &ad2, path));
    CHECK(ad2 != NULL, "no optimizer in the checkpoint");
    OK(tlearn_mpi_attach(d2, MPI_COMM_WORLD, 30.0, 64, 0, 77, &a));
    steps(d2, ad2, r, ar, 8, 11);
    same_weights(d2, r, "resumed from rank 0's checkpoint, 3 more Adam steps");
    tlearn_mpi_detach(&a);

    /* dropout: attach seeds seed + rank, so the masks (and so the local losses) differ */
    tlearn_model *dr;
    OK(tlearn_model_create(&dr, 2, 6, 6));
    OK(tlearn_model_add_flatten(dr, "flat"));
    OK(tlearn_model_add_dropout(dr, "drop", 0.5f));
    OK(tlearn_model_add_dense(dr, "fc", CLASSES));
    OK(tlearn_mpi_attach(dr, MPI_COMM_WORLD, 30.0, 0, 0, 5, &a));
    tlearn_mpi_detach(&a); /* the local loss alone */
    float l, ls[2];
    OK(tlearn_model_compute_gradients(dr, x, y, 2 * B, &l, NULL, 0));
    MPI_Allgather(&l, 1, MPI_FLOAT, ls, 1, MPI_FLOAT, MPI_COMM_WORLD);
    CHECK(ls[0] != ls[1], "dropout gave the same loss %g on both ranks", ls[0]);

    tlearn_model_destroy(&dr);
    tlearn_optim_destroy(&sd);
    tlearn_optim_destroy(&sr);
    tlearn_optim_destroy(&ad);
    tlearn_optim_destroy(&ar);
    tlearn_optim_destroy(&ad2);
    tlearn_model_destroy(&d);
    tlearn_model_destroy(&d2);
    tlearn_model_destroy(&r);
    if (rank == 0)
        unlink(path);
}

/* (2, 6, 6) -> conv c1 (4, 3x3, pad 1) -> bn1 -> relu -> flatten -> fc1 (16) -> bn2 -> relu
 * -> fc2 (3) */
static tlearn_model *make_bn_model(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 6, 6));
    OK(tlearn_model_set_seed(m, 21));
    OK(tlearn_model_add_conv2d(m, "c1", 4, 3, 1, 1, 1));
    OK(tlearn_model_add_batchnorm(m, "bn1", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "r1", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_flatten(m, "flat"));
    OK(tlearn_model_add_dense(m, "fc1", 16));
    OK(tlearn_model_add_batchnorm(m, "bn2", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "r2", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_dense(m, "fc2", CLASSES));
    return m;
}

/* The largest difference of any tensor of a from b's, in units of the tolerance
 * 2e-6 + 2e-5 |b| (same_weights' bound): <= 1 means equal to fp32 tolerance. */
static double tolerance_units(tlearn_model *a, tlearn_model *b)
{
    int nt;
    OK(tlearn_model_tensor_count(a, &nt));
    double worst = 0;
    for (int t = 0; t < nt; t++) {
        const char *name;
        size_t n;
        OK(tlearn_model_tensor_info(a, t, &name, &n, NULL, NULL));
        float *wa = malloc(n * sizeof *wa), *wb = malloc(n * sizeof *wb);
        OK(tlearn_model_get_tensor(a, name, wa, n));
        OK(tlearn_model_get_tensor(b, name, wb, n));
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)wa[i] - wb[i]) / (2e-6 + 2e-5 * fabs(wb[i]));
            worst = d > worst ? d : worst;
        }
        free(wa);
        free(wb);
    }
    return worst;
}

static void run_syncbn(void)
{
    tlearn_model *d = make_bn_model(), *p = make_bn_model(), *r = make_bn_model();
    tlearn_mpi *a, *ap;
    OK(tlearn_mpi_attach(d, MPI_COMM_WORLD, 30.0, 64, TLEARN_REDUCE_BATCHNORM |
                         TLEARN_REDUCE_EVALUATE | TLEARN_REDUCE_FISHER, 7, &a));
    OK(tlearn_mpi_attach(p, MPI_COMM_WORLD, 30.0, 64, 0, 7, &ap));
    tlearn_optim *od = optim(TLEARN_SGD), *op = optim(TLEARN_SGD), *orf = optim(TLEARN_SGD);
    float x[2 * B * IN];
    int32_t y[2 * B];
    for (int s = 0; s < 6; s++) {
        batch(s, x, y);
        float ld, lr;
        OK(tlearn_model_train_step(d, od, x + rank * B * IN, y + rank * B, B, &ld));
        OK(tlearn_model_train_step(p, op, x + rank * B * IN, y + rank * B, B, NULL));
        OK(tlearn_model_train_step(r, orf, x, y, 2 * B, &lr));
        CHECK(fabsf(ld - lr) <= 1e-5f * (1 + fabsf(lr)), "step %d: loss %.9g vs %.9g", s, ld, lr);
    }
    double ud = tolerance_units(d, r), up = tolerance_units(p, r);
    if (rank == 0)
        printf("rank 0: syncbn: largest difference from one process, in tolerance units: "
               "%.3g with synchronised BatchNorm, %.3g without\n", ud, up);
    CHECK(ud <= 1.0, "synchronised BatchNorm differs from one process: %.3g tolerances", ud);
    CHECK(up > 100.0, "without synchronised BatchNorm the difference is only %.3g tolerances",
          up);
    OK(tlearn_mpi_check(a)); /* the ranks agree bit for bit, running statistics included */

    /* Metrics and the EWC Fisher over both shares equal those over the whole set. */
    batch(50, x, y);
    float topd, topr, msed, maed, mser, maer;
    int64_t cmd[CLASSES * CLASSES], cmr[CLASSES * CLASSES];
    OK(tlearn_model_evaluate_classes(d, x + rank * B * IN, y + rank * B, B, 2, &topd, cmd,
                                     NULL, NULL, NULL, CLASSES));
    OK(tlearn_model_evaluate_classes(r, x, y, 2 * B, 2, &topr, cmr, NULL, NULL, NULL, CLASSES));
    CHECK(topd == topr && !memcmp(cmd, cmr, sizeof cmd), "top-2 %g vs %g, or the confusion "
          "matrices differ", topd, topr);
    float t[2 * B * CLASSES];
    for (int i = 0; i < 2 * B * CLASSES; i++)
        t[i] = x[i];
    OK(tlearn_model_evaluate_regression(d, x + rank * B * IN, t + rank * B * CLASSES, B, &msed,
                                        &maed));
    OK(tlearn_model_evaluate_regression(r, x, t, 2 * B, &mser, &maer));
    CHECK(fabsf(msed - mser) <= 1e-5f * mser && fabsf(maed - maer) <= 1e-5f * maer,
          "regression %g %g vs %g %g", msed, maed, mser, maer);
    OK(tlearn_ewc_consolidate(d, x + rank * B * IN, y + rank * B, B, TLEARN_FISHER_EMPIRICAL,
                              1.0f));
    OK(tlearn_ewc_consolidate(r, x, y, 2 * B, TLEARN_FISHER_EMPIRICAL, 1.0f));
    static const struct {
        const char *name;
        size_t n;
    } fisher_of[] = {{"c1.weight", 4 * 2 * 9}, {"bn1.weight", 4}, {"fc1.weight", 16 * 144},
                     {"fc2.bias", CLASSES}};
    for (int k = 0; k < 4; k++) {
        static float fd[16 * 144], fr[16 * 144];
        size_t n = fisher_of[k].n;
        OK(tlearn_ewc_get_fisher(d, 0, fisher_of[k].name, fd, n));
        OK(tlearn_ewc_get_fisher(r, 0, fisher_of[k].name, fr, n));
        for (size_t i = 0; i < n; i++)
            CHECK(fabsf(fd[i] - fr[i]) <= 1e-9f + 1e-4f * fr[i], "Fisher of %s[%zu]: %g vs %g",
                  fisher_of[k].name, i, fd[i], fr[i]);
    }
    tlearn_mpi_detach(&a);
    tlearn_mpi_detach(&ap);
    tlearn_optim_destroy(&od);
    tlearn_optim_destroy(&op);
    tlearn_optim_destroy(&orf);
    tlearn_model_destroy(&d);
    tlearn_model_destroy(&p);
    tlearn_model_destroy(&r);
}

static void run_mismatch(void)
{
    tlearn_mpi *a = NULL;
    tlearn_model *m = make_model(rank == 0 ? 11 : 12, 16); /* other weights on rank 1 */
    int rc = tlearn_mpi_attach(m, MPI_COMM_WORLD, 30.0, 0, 0, 1, &a);
    CHECK(rc == TLEARN_ESTATE && !a && strstr(tlearn_mpi_errmsg(), "weights"),
          "attach returned %d: %s", rc, tlearn_mpi_errmsg());
    tlearn_model_destroy(&m);
    m = make_model(11, rank == 0 ? 16 : 8); /* other shapes */
    rc = tlearn_mpi_attach(m, MPI_COMM_WORLD, 30.0, 0, 0, 1, &a);
    CHECK(rc == TLEARN_ESTATE && strstr(tlearn_mpi_errmsg(), "shapes"), "attach returned %d: %s",
          rc, tlearn_mpi_errmsg());
    /* no reducer was left behind: a local step works */
    tlearn_optim *o = optim(TLEARN_SGD);
    float x[2 * B * IN];
    int32_t y[2 * B];
    batch(0, x, y);
    OK(tlearn_model_train_step(m, o, x, y, B, NULL));
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void run_fault(const char *dir)
{
    const double timeout = 2.0;
    tlearn_model *d = make_model(11, 16);
    tlearn_mpi *a;
    OK(tlearn_mpi_attach(d, MPI_COMM_WORLD, timeout, 0, 0, 3, &a));
    tlearn_optim *o = optim(TLEARN_ADAM);
    float x[2 * B * IN];
    int32_t y[2 * B];
    for (int s = 0; s < 2; s++) {
        batch(s, x, y);
        OK(tlearn_model_train_step(d, o, x + rank * B * IN, y + rank * B, B, NULL));
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/mpi-fault.tlm", dir);
    if (rank == 0)
        OK(tlearn_model_save(d, o, path, TLEARN_SAVE_FULL));
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) { /* leaves: no more steps */
        printf("rank 1: fault ok (leaving)\n");
        fflush(stdout);
        MPI_Finalize();
        exit(0);
    }
    float before[51], after[51];
    OK(tlearn_model_get_tensor(d, "fc2.weight", before, 48));
    batch(2, x, y);
    double t0 = now();
    int rc = tlearn_model_train_step(d, o, x, y, B, NULL);
    double t = now() - t0;
    printf("rank 0: step without rank 1 returned %d after %.2f s: %s / %s\n", rc, t,
           tlearn_errmsg(), tlearn_mpi_errmsg());
    CHECK(rc == TLEARN_EIO, "returned %d", rc);
    CHECK(t >= timeout * 0.9 && t < timeout + 5.0, "took %.2f s with a %.1f s timeout", t,
          timeout);
    OK(tlearn_model_get_tensor(d, "fc2.weight", after, 48));
    CHECK(memcmp(before, after, sizeof(float) * 48) == 0, "weights changed");
    t0 = now();
    rc = tlearn_model_train_step(d, o, x, y, B, NULL); /* broken: fails at once */
    CHECK(rc == TLEARN_EIO && now() - t0 < 1.0, "second step returned %d", rc);
    tlearn_model *back;
    OK(tlearn_model_load(&back, NULL, path)); /* the last checkpoint stays loadable */
    tlearn_model_destroy(&back);
    unlink(path);
    tlearn_mpi_detach(&a);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&d);
    printf("rank 0: fault ok\n");
    fflush(stdout);
    _exit(0); /* MPI_Finalize could wait for the abandoned exchange */
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s equiv|syncbn|mismatch|fault TMPDIR\n", argv[0]);
        return 2;
    }
    MPI_Init(&argc, &argv);
    int size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    CHECK(size == 2, "run on 2 ranks, not %d", size);
    if (!strcmp(argv[1], "equiv"))
        run_equiv(argv[2]);
    else if (!strcmp(argv[1], "syncbn"))
        run_syncbn();
    else if (!strcmp(argv[1], "mismatch"))
        run_mismatch();
    else if (!strcmp(argv[1], "fault"))
        run_fault(argv[2]);
    else
        CHECK(0, "unknown mode %s", argv[1]);
    printf("rank %d: %s ok\n", rank, argv[1]);
    MPI_Finalize();
    return 0;
}
