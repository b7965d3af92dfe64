/* libtlearn-mpi: the reducer of tlearn_model_set_reducer() on MPI. One MPI_Iallreduce per
 * bucket, waits bounded in time, and a check that every rank holds the same model. Uses
 * only libtlearn's public API. */
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tlearn/tlearn_mpi.h"

struct tlearn_mpi {
    tlearn_model *m;
    MPI_Comm comm; /* our duplicate, errors returned */
    int rank, size;
    double timeout;
    int broken;    /* an exchange failed: requests may be pending forever */
    MPI_Request *req;
    int nreq, cap;
};

static _Thread_local char errbuf[512];

static int fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return rc;
}

const char *tlearn_mpi_errmsg(void)
{
    return errbuf;
}

static int mpi_fail(tlearn_mpi *a, int err, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, s, &len) != MPI_SUCCESS)
        snprintf(s, sizeof s, "MPI error %d", err);
    a->broken = 1;
    return fail(TLEARN_EIO, "tlearn_mpi: rank %d: %s failed: %s", a->rank, what, s);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Start one in-place sum; the requests are finished by wait_all. */
static int start(tlearn_mpi *a, void *data, int count, MPI_Datatype type, MPI_Op op)
{
    if (a->broken)
        return fail(TLEARN_EIO, "tlearn_mpi: rank %d: an earlier exchange failed; the "
                    "communicator can no longer be trusted", a->rank);
    if (a->nreq == a->cap) {
        int cap = a->cap ? 2 * a->cap : 16;
        MPI_Request *r = realloc(a->req, sizeof *r * (size_t)cap);
        if (!r)
            return fail(TLEARN_ENOMEM, "tlearn_mpi: out of memory for requests");
        a->req = r;
        a->cap = cap;
    }
    int err = MPI_Iallreduce(MPI_IN_PLACE, data, count, type, op, a->comm, &a->req[a->nreq]);
    if (err != MPI_SUCCESS)
        return mpi_fail(a, err, "MPI_Iallreduce");
    a->nreq++;
    return TLEARN_OK;
}

static int reduce(void *user, int bucket, float *data, size_t count)
{
    tlearn_mpi *a = user;
    (void)bucket; /* every rank starts its buckets in the same order: MPI matches them so */
    if (count > INT_MAX)
        return fail(TLEARN_EINVAL, "tlearn_mpi: a bucket of %zu floats is too large", count);
    int rc = start(a, data, (int)count, MPI_FLOAT, MPI_SUM);
    if (rc)
        return rc;
    /* Open MPI moves non-blocking collectives on only inside MPI calls: a test here lets
     * the earlier buckets progress while backward goes on. */
    int flag;
    MPI_Testall(a->nreq, a->req, &flag, MPI_STATUSES_IGNORE);
    return TLEARN_OK;
}

/* Poll until every request is done or the timeout passes: a rank that stopped taking
 * part gives an error, never a hang. For the first 20 ms it polls and yields (sched_yield
 * gives the CPU to any runnable process and returns at once otherwise): Open MPI moves a
 * large sum on in rounds, each only inside an MPI call on both sides, so a rank that
 * sleeps between polls delays every round. Measured on 2 idle cores, cnn_full_b64 at 2
 * ranks: 1.72x one rank with 50 us sleeps, 1.75-1.79x yielding. Past 20 ms (a slow or
 * stopped peer) it sleeps between polls, leaving the CPU to the others. */
static int wait_all(void *user)
{
    tlearn_mpi *a = user;
    if (a->broken)
        return fail(TLEARN_EIO, "tlearn_mpi: rank %d: an earlier exchange failed", a->rank);
    double t0 = now(), deadline = t0 + a->timeout;
    for (;;) {
        int flag = 0, err = MPI_Testall(a->nreq, a->req, &flag, MPI_STATUSES_IGNORE);
        if (err != MPI_SUCCESS)
            return mpi_fail(a, err, "MPI_Testall");
        if (flag) {
            a->nreq = 0;
            return TLEARN_OK;
        }
        if (now() > deadline) {
            a->broken = 1;
            return fail(TLEARN_EIO, "tlearn_mpi: rank %d of %d waited %.3g s for %d sums that "
                        "did not complete: a rank has stopped taking part (exited, hung, or "
                        "failed a call the others made)", a->rank, a->size, a->timeout,
                        a->nreq);
        }
        if (now() - t0 > 0.02)
            nanosleep(&(struct timespec){0, 50000}, NULL);
        else
            sched_yield();
    }
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

int tlearn_mpi_check(tlearn_mpi *a)
{
    static const char fn[] = "tlearn_mpi_check";
    if (!a)
        return fail(TLEARN_EINVAL, "%s: attachment is NULL", fn);
    /* What must agree: layer count, tensor count, names and shapes, values. */
    uint64_t v[4] = {0, 0, 14695981039346656037ull, 14695981039346656037ull};
    int nl = 0, nt = 0, rc = tlearn_model_layer_count(a->m, &nl);
    if (!rc)
        rc = tlearn_model_tensor_count(a->m, &nt);
    v[0] = (uint64_t)nl;
    v[1] = (uint64_t)nt;
    float *buf = NULL;
    size_t cap = 0;
    for (int t = 0; t < nt && !rc; t++) {
        const char *name;
        size_t numel;
        int ndim, dims[4];
        rc = tlearn_model_tensor_info(a->m, t, &name, &numel, &ndim, dims);
        if (rc)
            break;
        v[2] = fnv(v[2], name, strlen(name) + 1);
        v[2] = fnv(v[2], &ndim, sizeof ndim);
        v[2] = fnv(v[2], dims, sizeof(int) * (size_t)ndim);
        if (numel > cap) {
            float *b = realloc(buf, sizeof(float) * numel);
            if (!b) {
                free(buf);
                return fail(TLEARN_ENOMEM, "%s: out of memory", fn);
            }
            buf = b;
            cap = numel;
        }
        if (!(rc = tlearn_model_get_tensor(a->m, name, buf, numel)))
            v[3] = fnv(v[3], buf, sizeof(float) * numel);
    }
    free(buf);
    if (rc)
        return fail(rc, "%s: rank %d: %s", fn, a->rank, tlearn_errmsg());
    /* One max-reduction gives the maximum of v and (through ~v) the minimum. */
    uint64_t mm[8];
    for (int i = 0; i < 4; i++) {
        mm[i] = v[i];
        mm[4 + i] = ~v[i];
    }
    if ((rc = start(a, mm, 8, MPI_UINT64_T, MPI_MAX)) || (rc = wait_all(a)))
        return rc;
    static const char *const what[4] = {"layer count", "tensor count", "tensor names or shapes",
                                        "weights (or buffers)"};
    for (int i = 0; i < 4; i++)
        if (mm[i] != ~mm[4 + i])
            return fail(TLEARN_ESTATE, "%s: the %d ranks hold different models: their %s differ "
                        "(rank %d: %s %llu); build or load the same model on every rank",
                        fn, a->size, what[i], a->rank, i < 2 ? "count" : "hash",
                        (unsigned long long)v[i]);
    return TLEARN_OK;
}

int tlearn_mpi_rank(const tlearn_mpi *a, int *rank, int *size)
{
    if (!a)
        return fail(TLEARN_EINVAL, "tlearn_mpi_rank: attachment is NULL");
    if (rank)
        *rank = a->rank;
    if (size)
        *size = a->size;
    return TLEARN_OK;
}

int tlearn_mpi_attach(tlearn_model *m, MPI_Comm comm, double timeout_seconds,
                      size_t bucket_floats, int flags, uint64_t seed, tlearn_mpi **out)
{
    static const char fn[] = "tlearn_mpi_attach";
    if (!out)
        return fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (!m)
        return fail(TLEARN_EINVAL, "%s: model is NULL", fn);
    if (!(timeout_seconds > 0) || timeout_seconds > 1e9)
        return fail(TLEARN_EINVAL, "%s: timeout_seconds is %g, must be > 0", fn,
                    timeout_seconds);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin)
        return fail(TLEARN_EIO, "%s: MPI is not initialised (MPI_Init first)", fn);
    tlearn_mpi *a = calloc(1, sizeof *a);
    if (!a)
        return fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    a->m = m;
    a->timeout = timeout_seconds;
    int rc, err = MPI_Comm_dup(comm, &a->comm);
    if (err != MPI_SUCCESS) {
        rc = mpi_fail(a, err, "MPI_Comm_dup");
        free(a);
        return rc;
    }
    MPI_Comm_set_errhandler(a->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(a->comm, &a->rank);
    MPI_Comm_size(a->comm, &a->size);
    rc = tlearn_mpi_check(a);
    if (!rc && (rc = tlearn_model_set_reducer(m, reduce, wait_all, a, a->size, bucket_floats,
                                              flags)))
        fail(rc, "%s: %s", fn, tlearn_errmsg());
    if (!rc)
        tlearn_model_set_seed(m, seed + (uint64_t)a->rank);
    if (rc) {
        if (!a->broken)
            MPI_Comm_free(&a->comm);
        free(a->req);
        free(a);
        return rc;
    }
    *out = a;
    return TLEARN_OK;
}

void tlearn_mpi_detach(tlearn_mpi **ap)
{
    if (!ap || !*ap)
        return;
    tlearn_mpi *a = *ap;
    tlearn_model_set_reducer(a->m, NULL, NULL, NULL, 1, 0, 0);
    if (!a->broken) /* a broken communicator may never free: leave it to MPI_Finalize */
        MPI_Comm_free(&a->comm);
    free(a->req);
    free(a);
    *ap = NULL;
}
