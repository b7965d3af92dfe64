/* Memory of many adapted handles on one base (bench/README.md "One base, many handles"):
 * N handles made with tlearn_model_create_shared() from one base, each with its own LoRA
 * adapter (r 8 on q_proj and v_proj) and a prediction run, against N independent copies of
 * the base with the same adapters. The base is workload 8's transformer (4 encoder layers,
 * D 256, FF 1024). Each mode runs in a forked child so that its peak RSS (VmHWM) is its
 * own; the baseline child builds nothing. Prints one line per mode and the ratio
 *   shared_over_target = (rss(N shared) - rss(empty)) / (rss(1 base) - rss(empty) + adapters)
 * whose target is <= 1.1, for handles that hold their weights and adapters only, and again
 * after each handle ran one prediction (then each also holds its inference workspace,
 * about 1.8 MiB for one example of this network; so does the one base). Memory, not time:
 * valid on a loaded machine.
 *
 *   shared-memory [--handles N] */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define T 128
#define D 256

static int build(tlearn_model **out)
{
    int rc = tlearn_model_create_input(out, "x", TLEARN_DTYPE_FLOAT32, 2, (const int[]){T, D});
    tlearn_model *m = *out;
    if (!rc)
        rc = tlearn_model_set_seed(m, 7);
    for (int l = 0; !rc && l < 4; l++) {
        char name[32];
        snprintf(name, sizeof name, "layers.%d", l);
        rc = tlearn_model_add_transformer_block(m, name, 4, 4 * D, TLEARN_ACT_RELU, 0, 0.0f,
                                                NULL);
    }
    if (!rc)
        rc = tlearn_model_add_token_pool(m, "pool", 1, NULL);
    if (!rc)
        rc = tlearn_model_add_dense(m, "fc", 10);
    return rc;
}

static int run_pred; /* each handle predicts once (plans its workspace) */

/* A handle as a user gets it: its adapter, then (run_pred) one prediction. */
static int adapt(tlearn_model *m, int k, const float *x, float *out)
{
    char ad[16];
    snprintf(ad, sizeof ad, "user%d", k);
    int rc = tlearn_lora_add(m, ad, "*.self_attn.[qv]_proj", 8, 16.0f, 0.0f, 0);
    return rc || !run_pred ? rc : tlearn_model_predict(m, x, 1, out, 10);
}

enum { EMPTY, ONE_BASE, SHARED, COPIES };

static int run_mode(int mode, int n, const float *x)
{
    float out[10];
    tlearn_model **h = calloc((size_t)n + 1, sizeof *h);
    tlearn_model *base = NULL;
    int rc = h ? TLEARN_OK : TLEARN_ENOMEM;
    if (!rc && mode != EMPTY)
        rc = build(&base);
    if (!rc && mode == ONE_BASE && run_pred)
        rc = tlearn_model_predict(base, x, 1, out, 10);
    for (int k = 0; !rc && (mode == SHARED || mode == COPIES) && k < n; k++) {
        rc = mode == SHARED ? tlearn_model_create_shared(&h[k], base) : build(&h[k]);
        if (!rc)
            rc = adapt(h[k], k, x, out);
    }
    if (!rc && mode == COPIES)
        tlearn_model_destroy(&base); /* N copies: the base was only the template */
    if (rc)
        fprintf(stderr, "shared-memory: %s\n", tlearn_errmsg());
    printf("%ld\n", rc ? -1L : bench_peak_rss_kib());
    fflush(stdout); /* the child leaves by _exit */
    for (int k = 0; h && k < n; k++)
        tlearn_model_destroy(&h[k]);
    tlearn_model_destroy(&base);
    free(h);
    return rc != TLEARN_OK;
}

/* Peak RSS (KiB) of a child running @p mode. */
static long child_rss(int mode, int n, const float *x)
{
    int fd[2];
    if (pipe(fd))
        return -1;
    fflush(stdout); /* nothing buffered may reach the child's pipe */
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 1);
        _exit(run_mode(mode, n, x));
    }
    close(fd[1]);
    char buf[64] = {0};
    ssize_t got = read(fd[0], buf, sizeof buf - 1);
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
    return got > 0 ? atol(buf) : -1;
}

int main(int argc, char **argv)
{
    int n = 16;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--handles") == 0)
            n = atoi(argv[++i]);
    if (n < 1 || n > 1024) {
        fprintf(stderr, "usage: shared-memory [--handles N (1..1024)]\n");
        return 2;
    }
    /* glibc raises its mmap threshold each time a large block is freed, after which freed
     * transients (the tensors a layer's setup makes before they are replaced by shared
     * ones) stay in the heap and fragment it; a fixed threshold returns them at once. */
    if (getenv("SHARED_MEMORY_FIXED_MMAP"))
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    float *x = calloc(T * D, sizeof *x);
    if (!x)
        return 1;
    for (int i = 0; i < T * D; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f;
    /* parameter counts: the base, and one adapter (A [8, D] and B [D, 8] on q and v of 4
     * layers) */
    tlearn_model *m;
    size_t base_params = 0;
    if (build(&m) || tlearn_model_param_count(m, &base_params, NULL)) {
        fprintf(stderr, "shared-memory: %s\n", tlearn_errmsg());
        return 1;
    }
    tlearn_model_destroy(&m);
    double adapter_kib = 4.0 * 2 * 2 * 8 * D * 4 / 1024.0;
    printf("memory base_params=%zu base_kib=%.0f adapter_kib=%.1f handles=%d\n", base_params,
           4.0 * (double)base_params / 1024.0, adapter_kib, n);
    double ratio[2] = {0, 0};
    for (run_pred = 0; run_pred < 2; run_pred++) {
        long rss[4];
        for (int mode = EMPTY; mode <= COPIES; mode++)
            if ((rss[mode] = child_rss(mode, n, x)) < 0)
                return 1;
        double one = (double)(rss[ONE_BASE] - rss[EMPTY]);
        double shared = (double)(rss[SHARED] - rss[EMPTY]);
        double copies = (double)(rss[COPIES] - rss[EMPTY]);
        ratio[run_pred] = shared / (one + n * adapter_kib);
        const char *tag = run_pred ? "_predicted" : "";
        printf("memory%s rss_kib empty=%ld one_base=%ld shared=%ld copies=%ld\n", tag,
               rss[EMPTY], rss[ONE_BASE], rss[SHARED], rss[COPIES]);
        printf("bench workload=shared_%d_handles%s value=%.0f unit=KiB copies=%.0f "
               "ratio_copies_over_shared=%.2f shared_over_target=%.3f%s\n", n, tag, shared,
               copies, copies / shared, ratio[run_pred], run_pred ? "" : " target=1.1");
    }
    free(x);
    return ratio[0] <= 1.1 ? 0 : 1;
}
