/* The one place that talks to BLIS. Each model owns a rntm_t so that its thread count is
 * its own; BLIS's global threading state is never touched, with one exception made once per
 * process before BLIS initialises: the choice of its sub-configuration (below). */
#include <blis.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>
#define TL_X86 1
#endif

#include "tensor.h"

/* ---- Which BLIS kernels run ------------------------------------------------------------
 *
 * BLIS picks a sub-configuration (its kernels and blocksizes) once per process, from cpuid,
 * unless BLIS_ARCH_TYPE names one (an arch_t number). A BLIS older than the CPU does not
 * know its family and falls back to `generic`, its reference C kernels, 4-5x slower than its
 * own AVX-512 or AVX2 kernels (BLIS 0.9 on AMD family 26). At the first BLIS use by this
 * library (tl_blas_choose, under pthread_once), when
 *   - the host has not set BLIS_ARCH_TYPE and not set TLEARN_BLIS_ARCH to anything but
 *     "auto" (the opt-out: "keep"),
 *   - the CPU has AVX-512F/DQ/BW/VL (skx) or AVX2 + FMA (zen3/zen2/zen on AMD, haswell),
 *     with the OS saving the registers, and BLIS was built with that sub-configuration (the
 *     BLIS_CONFIG_* macros of the blis.h compiled against, and bli_arch_string() of the
 *     running BLIS naming the same arch_t number the same way),
 *   - and BLIS left alone would choose `generic` (asked of BLIS itself, in a forked child
 *     that only runs bli_arch_query_id(): the choice cannot be undone in this process),
 * BLIS_ARCH_TYPE is set to that sub-configuration's number, bli_init() reads it, and the
 * variable is removed again, so the environment is left as found. bli_arch_query_id()
 * then says whether BLIS took it: if not, BLIS had been initialised before (by the host
 * or another library) and keeps what it chose.
 * The effect is process-wide (one BLIS per process: the host's own BLIS calls run the same
 * kernels), and setenv/unsetenv race with getenv on other threads at that moment;
 * doc/guide.md says how to avoid both. */

enum { ISA_NONE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

static struct {
    int reason;             /* enum tlearn_blas_reason */
    int in_use;             /* arch_t BLIS reports after init */
    int blis_choice;        /* arch_t BLIS chose or would choose by itself; -1: not asked */
    int isa;                /* ISA_* of this CPU, as the OS enables it */
    char vendor[13];
    unsigned family, model;
} choice = {.blis_choice = -1};

static pthread_once_t choice_once = PTHREAD_ONCE_INIT;

static void cpu_identify(void)
{
    strcpy(choice.vendor, "unknown");
#ifdef TL_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return;
    memcpy(choice.vendor, &b, 4);
    memcpy(choice.vendor + 4, &d, 4);
    memcpy(choice.vendor + 8, &c, 4);
    choice.vendor[12] = '\0';
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    unsigned fam = (a >> 8) & 0xf, mod = (a >> 4) & 0xf;
    choice.family = fam == 0xf ? fam + ((a >> 20) & 0xff) : fam;
    choice.model = fam == 0x6 || fam == 0xf ? mod | ((a >> 12) & 0xf0) : mod;
    /* __builtin_cpu_supports also checks that the OS saves the AVX/AVX-512 state. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        choice.isa = ISA_AVX2;
    if (choice.isa && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        choice.isa = ISA_AVX512;
#endif
}

/* arch_t of the running BLIS named @p name, when the blis.h compiled against and the
 * running library number it alike; else -1. */
static int arch_checked(int id, const char *name)
{
    const char *s = bli_arch_string((arch_t)id);
    return s && strcmp(s, name) == 0 ? id : -1;
}

/* The configured sub-configuration this CPU's features support best, or -1. */
static int arch_wanted(void)
{
    int id = -1;
#ifdef BLIS_CONFIG_SKX
    if (id < 0 && choice.isa >= ISA_AVX512)
        id = arch_checked(BLIS_ARCH_SKX, "skx");
#endif
    int amd = strcmp(choice.vendor, "AuthenticAMD") == 0;
    (void)amd;
#ifdef BLIS_CONFIG_ZEN3
    if (id < 0 && amd && choice.isa >= ISA_AVX2)
        id = arch_checked(BLIS_ARCH_ZEN3, "zen3");
#endif
#ifdef BLIS_CONFIG_ZEN2
    if (id < 0 && amd && choice.isa >= ISA_AVX2)
        id = arch_checked(BLIS_ARCH_ZEN2, "zen2");
#endif
#ifdef BLIS_CONFIG_ZEN
    if (id < 0 && amd && choice.isa >= ISA_AVX2)
        id = arch_checked(BLIS_ARCH_ZEN, "zen");
#endif
#ifdef BLIS_CONFIG_HASWELL
    if (id < 0 && choice.isa >= ISA_AVX2)
        id = arch_checked(BLIS_ARCH_HASWELL, "haswell");
#endif
    return id;
}

/* What BLIS chooses when left alone, asked of a forked child (BLIS's choice is made once
 * per process and cannot be taken back). The child runs only bli_arch_query_id(), which
 * without BLIS_ARCH_TYPE reads the environment and cpuid, and _exit()s. -1 on any failure
 * (then nothing is steered); a child that hangs (a lock held by another thread at fork) is
 * killed after two seconds. */
static int arch_probe(void)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        unsetenv("BLIS_ARCH_DEBUG"); /* the parent's own selection logs, if asked */
        int id = (int)bli_arch_query_id();
        ssize_t w = write(fd[1], &id, sizeof id);
        _exit(w == (ssize_t)sizeof id ? 0 : 1);
    }
    close(fd[1]);
    int id = -1;
    if (pid > 0) {
        struct pollfd p = {.fd = fd[0], .events = POLLIN};
        int r;
        while ((r = poll(&p, 1, 2000)) < 0 && errno == EINTR)
            ;
        if (r == 1 && read(fd[0], &id, sizeof id) != (ssize_t)sizeof id)
            id = -1;
        if (r != 1)
            kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    close(fd[0]);
    return id >= 0 && id < BLIS_NUM_ARCHS ? id : -1;
}

static void init_and_query(void)
{
    bli_init();
    choice.in_use = (int)bli_arch_query_id();
}

static void tl_blas_choose(void)
{
    cpu_identify();
    if (getenv("BLIS_ARCH_TYPE")) { /* even empty: BLIS reads it (as 0) */
        choice.reason = TLEARN_BLAS_HOST;
        init_and_query();
        return;
    }
    const char *opt = getenv("TLEARN_BLIS_ARCH");
    if (opt && *opt && strcmp(opt, "auto") != 0) {
        choice.reason = TLEARN_BLAS_OPT_OUT;
        init_and_query();
        choice.blis_choice = choice.in_use;
        return;
    }
    choice.reason = TLEARN_BLAS_BLIS_CHOICE;
    int wanted = arch_wanted();
    if (wanted >= 0)
        choice.blis_choice = arch_probe();
    if (wanted < 0 || choice.blis_choice != BLIS_ARCH_GENERIC) {
        init_and_query();
        return;
    }
    char num[16];
    snprintf(num, sizeof num, "%d", wanted);
    int set = setenv("BLIS_ARCH_TYPE", num, 0) == 0 && strcmp(getenv("BLIS_ARCH_TYPE"), num) == 0;
    init_and_query();
    if (!set) { /* another thread of the host set it in the meantime */
        choice.reason = TLEARN_BLAS_HOST;
        return;
    }
    unsetenv("BLIS_ARCH_TYPE");
    choice.reason = choice.in_use == wanted ? TLEARN_BLAS_STEERED : TLEARN_BLAS_ALREADY_INIT;
}

void tl_blas_init(void)
{
    pthread_once(&choice_once, tl_blas_choose);
}

static const char *reason_name(int r)
{
    switch (r) {
    case TLEARN_BLAS_HOST: return "host";
    case TLEARN_BLAS_STEERED: return "steered";
    case TLEARN_BLAS_OPT_OUT: return "opt-out";
    case TLEARN_BLAS_ALREADY_INIT: return "already-initialised";
    default: return "blis";
    }
}

int tlearn_blas_info(char *buf, size_t cap, int *reason)
{
    if (!buf && cap > 0)
        return tl_fail(TLEARN_EINVAL, "tlearn_blas_info: buf is NULL but cap is %zu", cap);
    tl_blas_init();
    if (reason)
        *reason = choice.reason;
    if (cap == 0)
        return TLEARN_OK;
    static const char *isa[] = {"none", "avx2-fma", "avx512"};
    const char *from = choice.blis_choice >= 0 ? bli_arch_string((arch_t)choice.blis_choice)
                                               : "-";
    int n = snprintf(buf, cap, "blis=%s arch=%s reason=%s blis_choice=%s cpu=%s family=%u "
                     "model=%u isa=%s", bli_info_get_version_str(),
                     bli_arch_string((arch_t)choice.in_use), reason_name(choice.reason), from,
                     choice.vendor, choice.family, choice.model, isa[choice.isa]);
    if (n < 0 || (size_t)n >= cap)
        return tl_fail(TLEARN_ESHAPE, "tlearn_blas_info: the line needs %d bytes, cap is %zu",
                       n + 1, cap);
    return TLEARN_OK;
}

/* GEMM FLOPs (2*M*N*K per call) done by this process: tests prove that frozen layers cost
 * nothing in backward. Relaxed atomic: models may run on several threads at once. */
static _Atomic uint64_t gemm_flops;

uint64_t tl_sgemm_flops(void)
{
    return atomic_load_explicit(&gemm_flops, memory_order_relaxed);
}

struct tl_blas {
    rntm_t rntm;
    int threads; /* also the num_threads() of the model's OpenMP loops */
};

int tl_blas_threads(const tl_blas *b)
{
    return b->threads;
}

tl_blas *tl_blas_create(int threads)
{
    tl_blas_init(); /* before anything can initialise BLIS */
    tl_blas *b = tl_alloc_zero(sizeof *b);
    if (!b)
        return NULL;
    bli_rntm_init(&b->rntm);
    tl_blas_set_threads(b, threads);
    return b;
}

void tl_blas_destroy(tl_blas *b)
{
    tl_free(b);
}

void tl_blas_set_threads(tl_blas *b, int threads)
{
    b->threads = threads;
    bli_rntm_set_num_threads(threads, &b->rntm);
}

static void gemm(rntm_t rntm, int threads, int ta, int tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    /* BLIS takes general strides: row-major means row stride = ld, column stride = 1. BLIS
     * writes into the rntm it is given, hence the copy. */
    atomic_fetch_add_explicit(&gemm_flops, 2u * (uint64_t)M * (uint64_t)N * (uint64_t)K,
                              memory_order_relaxed);
    bli_rntm_set_num_threads(threads, &rntm);
    bli_sgemm_ex(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 M, N, K, &alpha, (float *)A, lda, 1, (float *)B, ldb, 1, &beta, C, ldc, 1, NULL,
                 &rntm);
}

void tl_sgemm(const tl_blas *b, int ta, int tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    /* Below about 4 MFLOP a GEMM takes tens of microseconds: waking threads and their
     * (spinning) barriers cost more than they save, badly so on a busy machine. */
    int threads = b->threads > 1 && 2.0 * M * N * K < 4e6 ? 1 : b->threads;
    gemm(b->rntm, threads, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tl_sgemm_batch(const tl_blas *b, int count, int ta, int tb, int M, int N, int K,
                    const float *A, size_t sa, const float *B, size_t sb, float beta, float *C,
                    size_t sc)
{
    int nt = b->threads < count ? b->threads : count;
    int lda = ta ? M : K, ldb = tb ? K : N;
    if (nt <= 1) {
        for (int i = 0; i < count; i++)
            tl_sgemm(b, ta, tb, M, N, K, 1.0f, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc,
                     N);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < count; i++)
        gemm(b->rntm, 1, ta, tb, M, N, K, 1.0f, A + i * sa, lda, B + i * sb, ldb, beta,
             C + i * sc, N);
}
