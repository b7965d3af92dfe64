/* BLIS's sub-configuration (tlearn_blas_info, lib/tensor/blas.c): steered away from
 * `generic` only when BLIS would fall back to it on a CPU that a configured sub-configuration
 * supports, to the one the CPU's features call for; a host's BLIS_ARCH_TYPE and the opt-out
 * TLEARN_BLIS_ARCH=keep are left alone; a BLIS initialised before libtlearn is reported.
 *
 * Each case runs this program again as a child process with a controlled environment (the
 * choice is made once per process). The expectation comes from this file's own reading of
 * cpuid and XCR0, and BLIS's own choice from a child that never calls libtlearn. */
#include <blis.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

extern char **environ;

static const char *self;

/* ---- the child -------------------------------------------------------------------------- */

static int child(const char *mode)
{
    if (strcmp(mode, "blis-only") == 0) { /* BLIS left to itself, libtlearn never called */
        bli_init();
        printf("blis_now=%s\n", bli_arch_string(bli_arch_query_id()));
        return 0;
    }
    if (strcmp(mode, "init-blis-first") == 0) /* a host that used BLIS before libtlearn */
        bli_init();
    if (strcmp(mode, "model") == 0) { /* the first BLIS use is a model's product */
        tlearn_model *m;
        float x[4] = {1, 2, 3, 4}, y[3];
        if (tlearn_model_create(&m, 4, 1, 1) != TLEARN_OK ||
            tlearn_model_add_dense(m, "fc", 3) != TLEARN_OK ||
            tlearn_model_predict(m, x, 1, y, 3) != TLEARN_OK)
            return 1;
        tlearn_model_destroy(&m);
    }
    char line[TLEARN_BLAS_INFO_MAX];
    int reason = 0;
    if (tlearn_blas_info(line, sizeof line, &reason) != TLEARN_OK)
        return 1;
    const char *env = getenv("BLIS_ARCH_TYPE");
    printf("%s reason_code=%d blis_now=%s env=%s\n", line, reason,
           bli_arch_string(bli_arch_query_id()), env ? env : "(unset)");
    return 0;
}

/* ---- running one ------------------------------------------------------------------------- */

/* Run this program with `--child MODE` in the current environment minus the variables
 * under test, plus @p extra (NULL-terminated "NAME=value" strings); its stdout into @p out. */
static void run_child(const char *mode, const char *const *extra, char *out, size_t cap)
{
    const char *envp[512];
    size_t n = 0;
    for (char **e = environ; *e && n < 500; e++)
        if (strncmp(*e, "BLIS_ARCH_TYPE=", 15) != 0 && strncmp(*e, "TLEARN_BLIS_ARCH=", 17) != 0 &&
            strncmp(*e, "BLIS_ARCH_DEBUG=", 16) != 0)
            envp[n++] = *e;
    for (; extra && *extra; extra++)
        envp[n++] = *extra;
    envp[n] = NULL;
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    char *argv[] = {(char *)self, "--child", (char *)mode, NULL};
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, self, &fa, NULL, argv, (char **)envp), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < cap && (r = read(fd[0], out + len, cap - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    close(fd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("child %s failed (status %d): %s", mode, status, out);
}

/* Value of `key=` in @p line (up to the next space), or "" when absent. */
static const char *field(const char *line, const char *key, char *buf, size_t cap)
{
    size_t k = strlen(key);
    buf[0] = '\0';
    for (const char *p = line; (p = strstr(p, key)) != NULL; p += k) {
        if ((p == line || p[-1] == ' ') && p[k] == '=') {
            size_t n = strcspn(p + k + 1, " \n");
            if (n >= cap)
                n = cap - 1;
            memcpy(buf, p + k + 1, n);
            buf[n] = '\0';
            break;
        }
    }
    return buf;
}

/* ---- what the CPU calls for, read here independently ------------------------------------- */

typedef struct cpu {
    char vendor[13];
    unsigned family, model;
    int avx2_fma, avx512; /* with the OS saving the registers (XCR0) */
} cpu;

static void cpu_read(cpu *c)
{
    memset(c, 0, sizeof *c);
#if !defined(__x86_64__) && !defined(__i386__)
    strcpy(c->vendor, "unknown");
#else
    unsigned r[4];
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(0), "c"(0));
    unsigned maxleaf = r[0];
    memcpy(c->vendor, &r[1], 4);
    memcpy(c->vendor + 4, &r[3], 4);
    memcpy(c->vendor + 8, &r[2], 4);
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(1), "c"(0));
    unsigned base_fam = (r[0] >> 8) & 15, base_mod = (r[0] >> 4) & 15;
    c->family = base_fam + (base_fam == 15 ? (r[0] >> 20) & 255 : 0);
    c->model = base_mod + (base_fam == 6 || base_fam == 15 ? ((r[0] >> 16) & 15) << 4 : 0);
    int fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
    unsigned xcr0 = 0;
    if (osxsave) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = lo;
    }
    if (maxleaf < 7)
        return;
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(7), "c"(0));
    int ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6;
    c->avx2_fma = avx && fma && ((r[1] >> 5) & 1) && ymm;
    c->avx512 = c->avx2_fma && zmm && ((r[1] >> 16) & 1) && ((r[1] >> 17) & 1) &&
                ((r[1] >> 30) & 1) && ((r[1] >> 31) & 1);
#endif
}

/* The sub-configuration this CPU should run when BLIS would fall back to generic, among
 * those this BLIS was configured with; NULL when none fits. */
static const char *cpu_expected(const cpu *c)
{
    int amd = strcmp(c->vendor, "AuthenticAMD") == 0;
    (void)amd;
#ifdef BLIS_CONFIG_SKX
    if (c->avx512)
        return "skx";
#endif
#ifdef BLIS_CONFIG_ZEN3
    if (c->avx2_fma && amd)
        return "zen3";
#endif
#ifdef BLIS_CONFIG_ZEN2
    if (c->avx2_fma && amd)
        return "zen2";
#endif
#ifdef BLIS_CONFIG_ZEN
    if (c->avx2_fma && amd)
        return "zen";
#endif
#ifdef BLIS_CONFIG_HASWELL
    if (c->avx2_fma)
        return "haswell";
#endif
    return NULL;
}

static void blis_own_choice(char *arch, size_t cap)
{
    char out[4096];
    run_child("blis-only", NULL, out, sizeof out);
    field(out, "blis_now", arch, cap);
    assert_true(arch[0] != '\0');
}

/* Read the CPU into @p c and BLIS's own choice into @p own; returns cpu_expected(). */
static const char *expectation(cpu *c, char *own, size_t cap)
{
    cpu_read(c);
    blis_own_choice(own, cap);
    return cpu_expected(c);
}

/* ---- the tests --------------------------------------------------------------------------- */

/* Left alone, libtlearn steers exactly when BLIS would fall back to generic, to what the
 * CPU's features call for, at the first model's product, and leaves no variable behind. */
static void test_steers_by_cpu_features(void **state)
{
    (void)state;
    cpu c;
    char own[64], out[4096], f[64];
    const char *want = expectation(&c, own, sizeof own);
    for (int mode = 0; mode < 2; mode++) {
        run_child(mode ? "model" : "info", NULL, out, sizeof out);
        print_message("cpu %s family %u model %u avx2_fma %d avx512 %d; BLIS alone: %s\n%s",
                      c.vendor, c.family, c.model, c.avx2_fma, c.avx512, own, out);
        assert_string_equal(field(out, "cpu", f, sizeof f), c.vendor);
        assert_int_equal(atoi(field(out, "family", f, sizeof f)), (int)c.family);
        assert_int_equal(atoi(field(out, "model", f, sizeof f)), (int)c.model);
        assert_string_equal(field(out, "isa", f, sizeof f),
                            c.avx512 ? "avx512" : c.avx2_fma ? "avx2-fma" : "none");
        assert_string_equal(field(out, "env", f, sizeof f), "(unset)");
        assert_string_equal(field(out, "blis_choice", f, sizeof f), want ? own : "-");
        if (want && strcmp(own, "generic") == 0) {
            assert_string_equal(field(out, "reason", f, sizeof f), "steered");
            assert_int_equal(atoi(field(out, "reason_code", f, sizeof f)), TLEARN_BLAS_STEERED);
            assert_string_equal(field(out, "arch", f, sizeof f), want);
        } else {
            assert_string_equal(field(out, "reason", f, sizeof f), "blis");
            assert_string_equal(field(out, "arch", f, sizeof f), own);
        }
        /* what BLIS itself runs, asked directly */
        char g[64];
        assert_string_equal(field(out, "blis_now", f, sizeof f), field(out, "arch", g, sizeof g));
    }
}

/* A host's BLIS_ARCH_TYPE is never overridden, even when it names generic. */
static void test_host_setting_left_alone(void **state)
{
    (void)state;
    char set[32], out[4096], f[64];
    snprintf(set, sizeof set, "BLIS_ARCH_TYPE=%d", (int)BLIS_ARCH_GENERIC);
    const char *extra[] = {set, NULL};
    for (int mode = 0; mode < 2; mode++) {
        run_child(mode ? "model" : "info", extra, out, sizeof out);
        print_message("%s", out);
        assert_string_equal(field(out, "reason", f, sizeof f), "host");
        assert_int_equal(atoi(field(out, "reason_code", f, sizeof f)), TLEARN_BLAS_HOST);
        assert_string_equal(field(out, "arch", f, sizeof f), "generic");
        assert_string_equal(field(out, "blis_now", f, sizeof f), "generic");
        assert_int_equal(atoi(field(out, "env", f, sizeof f)), (int)BLIS_ARCH_GENERIC);
    }
}

/* TLEARN_BLIS_ARCH=keep (or any value but auto) leaves BLIS to its own choice. */
static void test_opt_out(void **state)
{
    (void)state;
    char own[64], out[4096], f[64];
    blis_own_choice(own, sizeof own);
    const char *keep[] = {"TLEARN_BLIS_ARCH=keep", NULL};
    const char *other[] = {"TLEARN_BLIS_ARCH=no", NULL};
    const char *const *envs[] = {keep, other};
    for (int i = 0; i < 2; i++) {
        run_child("model", envs[i], out, sizeof out);
        print_message("%s", out);
        assert_string_equal(field(out, "reason", f, sizeof f), "opt-out");
        assert_int_equal(atoi(field(out, "reason_code", f, sizeof f)), TLEARN_BLAS_OPT_OUT);
        assert_string_equal(field(out, "arch", f, sizeof f), own);
        assert_string_equal(field(out, "blis_now", f, sizeof f), own);
        assert_string_equal(field(out, "env", f, sizeof f), "(unset)");
    }
    /* "auto" is the default, not an opt-out */
    const char *autov[] = {"TLEARN_BLIS_ARCH=auto", NULL};
    run_child("info", autov, out, sizeof out);
    assert_string_not_equal(field(out, "reason", f, sizeof f), "opt-out");
}

/* A BLIS the host initialised first cannot be steered any more, and the line says so. */
static void test_already_initialised(void **state)
{
    (void)state;
    cpu c;
    char own[64], out[4096], f[64];
    const char *want = expectation(&c, own, sizeof own);
    run_child("init-blis-first", NULL, out, sizeof out);
    print_message("%s", out);
    assert_string_equal(field(out, "arch", f, sizeof f), own);
    assert_string_equal(field(out, "blis_now", f, sizeof f), own);
    assert_string_equal(field(out, "env", f, sizeof f), "(unset)");
    if (want && strcmp(own, "generic") == 0) {
        assert_string_equal(field(out, "reason", f, sizeof f), "already-initialised");
        assert_int_equal(atoi(field(out, "reason_code", f, sizeof f)),
                         TLEARN_BLAS_ALREADY_INIT);
    } else {
        assert_string_equal(field(out, "reason", f, sizeof f), "blis");
    }
}

static void test_info_arguments(void **state)
{
    (void)state;
    char buf[TLEARN_BLAS_INFO_MAX];
    int reason = 0;
    assert_int_equal(tlearn_blas_info(NULL, 10, &reason), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "tlearn_blas_info"));
    assert_int_equal(tlearn_blas_info(NULL, 0, &reason), TLEARN_OK);
    assert_true(reason >= TLEARN_BLAS_BLIS_CHOICE && reason <= TLEARN_BLAS_ALREADY_INIT);
    memset(buf, 'x', sizeof buf);
    assert_int_equal(tlearn_blas_info(buf, 8, NULL), TLEARN_ESHAPE);
    assert_int_equal(strlen(buf), 7);
    assert_memory_equal(buf, "blis=", 5);
    assert_int_equal(tlearn_blas_info(buf, sizeof buf, NULL), TLEARN_OK);
    assert_non_null(strstr(buf, " arch="));
    assert_string_equal(field(buf, "blis", buf + 200, 40), bli_info_get_version_str());
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--child") == 0)
        return child(argv[2]);
    self = argv[0];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steers_by_cpu_features),
        cmocka_unit_test(test_host_setting_left_alone),
        cmocka_unit_test(test_opt_out),
        cmocka_unit_test(test_already_initialised),
        cmocka_unit_test(test_info_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
