/* Benchmark harness: clocks, peak RSS, the BLIS ceiling and the reference workloads.
 * Bench code may include blis.h directly (only the library is restricted to tensor/blas.c). */
#include "harness.h"

#include <blis.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double bench_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

long bench_peak_rss_kib(void)
{
    /* VmHWM is the peak of this process image. ru_maxrss is not: Linux carries the peak of
     * the image before execve() over into it, so a benchmark started from a big parent (a
     * Python process with torch loaded) would report the parent's peak. */
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        long kib = -1;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
                break;
        fclose(f);
        if (kib > 0)
            return kib;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return ru.ru_maxrss; /* KiB on Linux */
}

/* ---- the ceiling ---- */

double bench_blis_ceiling(int threads, int size, int reps)
{
    /* BLIS runs what libtlearn runs: its one-time choice of sub-configuration comes before
     * this process's first BLIS call (tlearn_blas_info). */
    tlearn_blas_info(NULL, 0, NULL);
    size_t nn = (size_t)size * (size_t)size;
    float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return -1.0;
    }
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)((i * 7u) % 13u) / 13.0f - 0.5f;
        b[i] = (float)((i * 5u) % 11u) / 11.0f - 0.5f;
        c[i] = 0.0f;
    }
    float one = 1.0f, zero = 0.0f;
    double best = 0.0;
    for (int r = 0; r <= reps; r++) {
        rntm_t rntm;
        bli_rntm_init(&rntm);
        bli_rntm_set_num_threads(threads, &rntm);
        double t0 = bench_now();
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, size, size, size, &one, a, size, 1, b,
                     size, 1, &zero, c, size, 1, NULL, &rntm);
        double dt = bench_now() - t0;
        double gf = 2.0 * (double)size * size * size / dt * 1e-9;
        if (r > 0 && gf > best) /* r == 0 warms up caches, pages and threads */
            best = gf;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

void bench_print_blas(void)
{
    char line[TLEARN_BLAS_INFO_MAX];
    if (tlearn_blas_info(line, sizeof line, NULL) == TLEARN_OK)
        printf("blas %s\n", line);
}

double bench_blis_ceiling_forked(int threads, int size, int reps)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1.0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return -1.0;
    }
    if (pid == 0) {
        close(fd[0]);
        double g = bench_blis_ceiling(threads, size, reps);
        ssize_t wr = write(fd[1], &g, sizeof g);
        _exit(wr == (ssize_t)sizeof g ? 0 : 1);
    }
    close(fd[1]);
    double g = -1.0;
    if (read(fd[0], &g, sizeof g) != (ssize_t)sizeof g)
        g = -1.0;
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
    return g;
}

/* ---- workloads ---- */

static const bench_spec specs[BW_COUNT] = {
    {"mlp_adam_b64", "steps/s", 64},       {"cnn_full_b64", "steps/s", 64},
    {"cnn_partial_b64", "steps/s", 64},    {"cnn_ewc_b64", "steps/s", 64},
    {"cnn_features_b256", "images/s", 256}, {"cnn_partial_b1", "us/step", 1},
    {"cnn_lora_b64", "steps/s", 64},       {"transformer_lora_b32", "steps/s", 32},
    {"transformer_full_b32", "steps/s", 32},
    {"transformer_b32", "steps/s", 32},    {"transformer_features_b32", "sequences/s", 32},
};

/* The text encoder of workloads 7 and 8 (torch.nn.TransformerEncoder's defaults but the
 * feed-forward width: post-norm, ReLU, dropout 0.1). */
enum { TF_T = 128, TF_D = 256, TF_HEADS = 4, TF_FF = 1024, TF_LAYERS = 4, TF_VOCAB = 8000,
       TF_CLASSES = 10 };

const bench_spec *bench_workload_spec(int w)
{
    return w >= 0 && w < BW_COUNT ? &specs[w] : NULL;
}

int bench_workload_by_name(const char *name)
{
    for (int w = 0; w < BW_COUNT; w++)
        if (strcmp(name, specs[w].name) == 0)
            return w;
    return -1;
}

static int build_mlp(tlearn_model **out)
{
    TRY(tlearn_model_create(out, 784, 1, 1));
    tlearn_model *m = *out;
    TRY(tlearn_model_add_dense(m, "fc1", 512));
    TRY(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0.0f));
    TRY(tlearn_model_add_dense(m, "fc2", 512));
    TRY(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0.0f));
    TRY(tlearn_model_add_dense(m, "fc3", 10));
    return TLEARN_OK;
}

/* conv32(3x3,pad1)-relu-maxpool2-conv64(3x3,pad1)-relu-maxpool2-fc128-relu-fc10 on 1x28x28.
 * The dense layer flattens implicitly, as torch's nn.Flatten + nn.Linear. */
static int build_cnn(tlearn_model **out)
{
    TRY(tlearn_model_create(out, 1, 28, 28));
    tlearn_model *m = *out;
    TRY(tlearn_model_add_conv2d(m, "conv1", 32, 3, 1, 1, 1));
    TRY(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0.0f));
    TRY(tlearn_model_add_maxpool2d(m, "pool1", 2, 2, 0));
    TRY(tlearn_model_add_conv2d(m, "conv2", 64, 3, 1, 1, 1));
    TRY(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0.0f));
    TRY(tlearn_model_add_maxpool2d(m, "pool2", 2, 2, 0));
    TRY(tlearn_model_add_dense(m, "fc1", 128));
    TRY(tlearn_model_add_activation(m, "relu3", TLEARN_ACT_RELU, 0.0f));
    TRY(tlearn_model_add_dense(m, "fc2", 10));
    return TLEARN_OK;
}

#define TFM_T 128
#define TFM_D 256

/* x (128, 256) -> 4 post-norm encoder layers (4 heads, FF 1024, ReLU, no dropout) -> mean
 * pool -> fc 10: torch.nn.TransformerEncoder's layers over given embeddings. */
static int build_transformer(tlearn_model **out)
{
    TRY(tlearn_model_create_input(out, "x", TLEARN_DTYPE_FLOAT32, 2,
                                  (const int[]){TFM_T, TFM_D}));
    tlearn_model *m = *out;
    for (int l = 0; l < 4; l++) {
        char name[32];
        snprintf(name, sizeof name, "layers.%d", l);
        TRY(tlearn_model_add_transformer_block(m, name, 4, 4 * TFM_D, TLEARN_ACT_RELU, 0, 0.0f,
                                               NULL));
    }
    TRY(tlearn_model_add_token_pool(m, "pool", 1, NULL));
    TRY(tlearn_model_add_dense(m, "fc", 10));
    return TLEARN_OK;
}

/* LoRA adapter "bench" (r 8, alpha 16) on @p glob; everything but adapters and @p train
 * frozen, as PEFT trains. */
static int lora_only(tlearn_model *m, const char *glob, const char *train)
{
    TRY(tlearn_lora_add(m, "bench", glob, 8, 16.0f, 0.0f, 0));
    tlearn_freeze *f = NULL;
    TRY(tlearn_freeze_create(&f));
    int rc = tlearn_freeze_match(f, "*", 1);
    if (!rc)
        rc = tlearn_freeze_match(f, "*.lora_*", 0);
    if (!rc && train)
        rc = tlearn_freeze_match(f, train, 0);
    if (!rc)
        rc = tlearn_model_apply_freeze(m, f);
    tlearn_freeze_destroy(&f);
    return rc;
}

/* token embedding + learned positions + 4 encoder layers + mean pooling + linear head */
static int build_text_encoder(tlearn_model **out)
{
    TRY(tlearn_model_create_input(out, "ids", TLEARN_DTYPE_INT32, 1, (const int[]){TF_T}));
    tlearn_model *m = *out;
    TRY(tlearn_model_add_embedding(m, "tok", TF_VOCAB, TF_D, -1));
    TRY(tlearn_model_add_position_embedding(m, "pos", TF_T, 0));
    for (int l = 0; l < TF_LAYERS; l++) {
        char name[32];
        snprintf(name, sizeof name, "layers.%d", l);
        TRY(tlearn_model_add_transformer_block(m, name, TF_HEADS, TF_FF, TLEARN_ACT_RELU, 0,
                                               0.1f, NULL));
    }
    TRY(tlearn_model_add_token_pool(m, "pool", 1, NULL));
    TRY(tlearn_model_add_linear(m, "head", TF_CLASSES, 1));
    return TLEARN_OK;
}

/* GEMM FLOPs of the encoder per sequence, forward: per token and layer the QKV and output
 * projections (4 D^2), the feed-forward (2 D FF) and the scores and context (2 T D)
 * multiply-accumulates, and the head. A training step does three times that (forward,
 * weight gradients, input gradients: the embedding is the first trainable layer and has
 * no GEMM, so every GEMM layer has an input gradient; the attention's score and context
 * products have two backward products each, as a weight layer). */
static double transformer_flops(int training)
{
    double per_token = 4.0 * TF_D * TF_D + 2.0 * TF_D * TF_FF + 2.0 * TF_T * TF_D;
    double macs = (double)TF_T * TF_LAYERS * per_token + (training ? (double)TF_D * TF_CLASSES : 0);
    return 2.0 * macs * (training ? 3.0 : 1.0);
}

/* Multiply-accumulates of layer i's forward pass per example: weight elements times output
 * pixels (dense: one pixel; over a sequence (T, D): T rows). 0 for layers without a
 * weight. */
static double layer_macs(const tlearn_model *m, int i)
{
    int kind = 0, c = 0, h = 0, w = 0;
    tlearn_model_layer_kind(m, i, &kind);
    if (kind != TLEARN_LAYER_DENSE && kind != TLEARN_LAYER_CONV2D)
        return 0.0;
    const char *lname = NULL;
    tlearn_model_layer_name(m, i, &lname);
    char tname[96];
    snprintf(tname, sizeof tname, "%s.weight", lname);
    int nt = 0;
    tlearn_model_tensor_count(m, &nt);
    for (int t = 0; t < nt; t++) {
        const char *name = NULL;
        size_t numel = 0;
        int ndim = 0, dims[4] = {0};
        tlearn_model_tensor_info(m, t, &name, &numel, &ndim, dims);
        if (name && strcmp(name, tname) == 0) {
            tlearn_model_layer_shape(m, i, &c, &h, &w);
            if (kind == TLEARN_LAYER_DENSE) /* output elements / units = rows */
                return (double)numel * ((double)c * h * w / (double)dims[0]);
            return (double)numel * (double)h * (double)w;
        }
    }
    return 0.0;
}

double bench_model_flops(const tlearn_model *m, size_t n, int training, int last)
{
    int count = 0;
    tlearn_model_layer_count(m, &count);
    if (last < 0 || last >= count)
        last = count - 1;
    int first = count; /* first trainable layer with a weight */
    if (training)
        for (int i = 0; i < count && first == count; i++) {
            const char *name = NULL;
            int frozen = 1;
            tlearn_model_layer_name(m, i, &name);
            tlearn_model_layer_frozen(m, name, &frozen);
            if (!frozen && layer_macs(m, i) > 0.0)
                first = i;
        }
    double macs = 0.0;
    for (int i = 0; i <= last; i++) {
        double f = layer_macs(m, i);
        macs += f; /* forward */
        if (training && i >= first) {
            const char *name = NULL;
            int frozen = 1;
            tlearn_model_layer_name(m, i, &name);
            tlearn_model_layer_frozen(m, name, &frozen);
            if (!frozen)
                macs += f; /* weight gradient */
            if (i > first)
                macs += f; /* input gradient */
        }
    }
    return 2.0 * macs * (double)n;
}

void bench_fill_data(float *x, int32_t *y, size_t n, size_t in_size, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n * in_size; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)(s >> 40) / 16777216.0f;
    }
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        y[i] = (int32_t)((s >> 33) % 10u);
    }
}

/* c->nbatches batches of synthetic inputs and labels; nonzero when out of memory. */
static int alloc_data(bench_ctx *c)
{
    size_t total = c->nbatches * c->batch;
    c->x = malloc(total * c->in_size * sizeof *c->x);
    c->y = malloc(total * sizeof *c->y);
    if (!c->x || !c->y)
        return 1;
    bench_fill_data(c->x, c->y, total, c->in_size, 42);
    return 0;
}

/* Workloads 10 and 11: random token ids (uniform over the vocabulary), labels 0..9. */
static int setup_transformer(bench_ctx *c, int threads)
{
    TRY(build_text_encoder(&c->m));
    TRY(tlearn_model_set_threads(c->m, threads));
    c->in_size = TF_T;
    size_t total = c->nbatches * c->batch;
    if (alloc_data(c))
        return TLEARN_ENOMEM;
    int32_t *ids = (int32_t *)(void *)c->x; /* int32 ids travel through the float array */
    for (size_t i = 0; i < total * c->in_size; i++)
        ids[i] = (int32_t)(c->x[i] * (float)TF_VOCAB) % TF_VOCAB;
    if (c->w == BW_TRANSFORMER_FEATURES_B32) {
        TRY(tlearn_model_set_outputs(c->m, (const char *[]){"pool"}, 1));
        c->feat_size = TF_D;
        c->feat = malloc(c->batch * c->feat_size * sizeof *c->feat);
        if (!c->feat)
            return TLEARN_ENOMEM;
        c->flops = transformer_flops(0); /* per sequence */
        return TLEARN_OK;
    }
    TRY(tlearn_optim_create(&c->o, TLEARN_ADAMW));
    TRY(tlearn_optim_set(c->o, TLEARN_OPT_LR, 1e-4));
    c->flops = transformer_flops(1) * (double)c->batch; /* per step */
    return TLEARN_OK;
}

int bench_setup(bench_ctx *c, int w, int threads)
{
    memset(c, 0, sizeof *c);
    c->w = w;
    c->batch = specs[w].batch;
    c->nbatches = w == BW_CNN_PARTIAL_B1 ? 64 : 4;
    if (w == BW_TRANSFORMER_B32 || w == BW_TRANSFORMER_FEATURES_B32)
        return setup_transformer(c, threads);
    int tfm = w == BW_TFM_LORA_B32 || w == BW_TFM_FULL_B32;
    int rc = w == BW_MLP_ADAM_B64 ? build_mlp(&c->m) : tfm ? build_transformer(&c->m)
                                                           : build_cnn(&c->m);
    if (rc)
        return rc;
    TRY(tlearn_model_set_threads(c->m, threads));
    c->in_size = w == BW_MLP_ADAM_B64 ? 784 : tfm ? TFM_T * TFM_D : 28 * 28;
    if (alloc_data(c))
        return TLEARN_ENOMEM;

    if (w == BW_MLP_ADAM_B64) {
        TRY(tlearn_optim_create(&c->o, TLEARN_ADAM));
        TRY(tlearn_optim_set(c->o, TLEARN_OPT_LR, 1e-3));
    } else if (tfm) {
        TRY(tlearn_optim_create(&c->o, TLEARN_ADAMW));
        TRY(tlearn_optim_set(c->o, TLEARN_OPT_LR, 1e-4));
    } else if (w != BW_CNN_FEATURES_B256) {
        TRY(tlearn_optim_create(&c->o, TLEARN_SGD));
        TRY(tlearn_optim_set(c->o, TLEARN_OPT_LR, 0.01));
        TRY(tlearn_optim_set(c->o, TLEARN_OPT_MOMENTUM, 0.9));
    }
    if (w == BW_CNN_PARTIAL_B64 || w == BW_CNN_PARTIAL_B1) {
        tlearn_freeze *f = NULL;
        TRY(tlearn_freeze_create(&f));
        rc = tlearn_freeze_match(f, "conv*", 1);
        if (!rc)
            rc = tlearn_model_apply_freeze(c->m, f);
        tlearn_freeze_destroy(&f);
        if (rc)
            return rc;
    }
    if (w == BW_CNN_LORA_B64)
        TRY(lora_only(c->m, "[cf][oc]*", NULL)); /* conv1, conv2, fc1, fc2 */
    if (w == BW_TFM_LORA_B32)
        TRY(lora_only(c->m, "*.self_attn.[qv]_proj", "fc"));
    if (w == BW_CNN_EWC_B64) /* Fisher on one batch; the penalty then covers every parameter */
        TRY(tlearn_ewc_consolidate(c->m, c->x, c->y, c->batch, TLEARN_FISHER_EMPIRICAL, 100.0f));
    if (w == BW_CNN_FEATURES_B256) {
        int idx = 0, ch = 0, h = 0, wd = 0;
        TRY(tlearn_model_layer_index(c->m, "pool2", &idx));
        TRY(tlearn_model_layer_shape(c->m, idx, &ch, &h, &wd));
        c->feat_size = (size_t)ch * h * wd;
        c->feat = malloc(c->batch * c->feat_size * sizeof *c->feat);
        if (!c->feat)
            return TLEARN_ENOMEM;
        c->flops = bench_model_flops(c->m, 1, 0, idx); /* per image */
    } else {
        c->flops = bench_model_flops(c->m, c->batch, 1, -1); /* per step */
    }
    return TLEARN_OK;
}

int bench_run_once(bench_ctx *c)
{
    size_t b = c->next;
    c->next = (c->next + 1) % c->nbatches;
    const float *x = c->x + b * c->batch * c->in_size;
    if (c->w == BW_CNN_FEATURES_B256)
        return tlearn_model_features(c->m, "pool2", x, c->batch, c->feat,
                                     c->batch * c->feat_size);
    if (c->w == BW_TRANSFORMER_FEATURES_B32) {
        const void *in[1] = {x};
        size_t len = c->batch * c->feat_size;
        return tlearn_model_run(c->m, in, 1, c->batch, &c->feat, &len, 1);
    }
    float loss;
    if (c->w == BW_TRANSFORMER_B32) {
        const void *in[1] = {x};
        return tlearn_model_train_step_inputs(c->m, c->o, in, 1, c->y + b * c->batch, c->batch,
                                              &loss);
    }
    return tlearn_model_train_step(c->m, c->o, x, c->y + b * c->batch, c->batch, &loss);
}

void bench_teardown(bench_ctx *c)
{
    tlearn_optim_destroy(&c->o);
    tlearn_model_destroy(&c->m);
    free(c->x);
    free(c->y);
    free(c->feat);
    memset(c, 0, sizeof *c);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_round(int (*run)(void *), void *ctx, double round_s, double *rate, double *cpu_rate)
{
    int rc = TLEARN_OK;
    long iters = 0;
    double start = bench_now(), now = start, cpu0 = bench_cpu_now();
    while (!rc && (iters < 2 || now - start < round_s)) {
        rc = run(ctx);
        iters++;
        now = bench_now();
    }
    *rate = (double)iters / (now - start);
    *cpu_rate = (double)iters / (bench_cpu_now() - cpu0);
    return rc;
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int bench_measure(int (*run)(void *), void *ctx, int rounds, double round_s, bench_result *r)
{
    double rates[64], cpu_rates[64];
    if (rounds < 1)
        rounds = 1;
    if (rounds > 64)
        rounds = 64;
    int rc = TLEARN_OK;
    double t0 = bench_now();
    for (int i = 0; !rc && (i < 3 || bench_now() - t0 < 0.2); i++)
        rc = run(ctx); /* warm-up: plans, optimizer state, page faults */
    for (int k = 0; k < rounds && !rc; k++)
        rc = bench_round(run, ctx, round_s, &rates[k], &cpu_rates[k]);
    if (rc)
        return rc;
    r->rate = bench_median(rates, rounds);
    r->cpu_rate = bench_median(cpu_rates, rounds);
    r->spread = (rates[rounds - 1] - rates[0]) / r->rate; /* rates[] is sorted */
    return TLEARN_OK;
}

int bench_common_option(int argc, char **argv, int *i, int *threads, int *rounds,
                        double *round_s, double *ceiling)
{
    const char *opt = argv[*i];
    int known = !strcmp(opt, "--threads") || !strcmp(opt, "--rounds") ||
                !strcmp(opt, "--round-seconds") || !strcmp(opt, "--ceiling");
    if (!known)
        return 0;
    if (*i + 1 >= argc)
        return -1;
    const char *v = argv[++*i];
    if (!strcmp(opt, "--threads"))
        *threads = atoi(v);
    else if (!strcmp(opt, "--rounds"))
        *rounds = atoi(v);
    else if (!strcmp(opt, "--round-seconds"))
        *round_s = atof(v);
    else
        *ceiling = atof(v);
    return 1;
}

void bench_print_result(const char *workload, int threads, double value, const char *unit,
                        double gflops, double ceiling, int rounds, double spread,
                        double cpu_value)
{
    printf("tlearn workload=%s threads=%d value=%.6g unit=%s gflops=%.4g ceiling_gflops=%.4g "
           "ceiling_frac=%.4f peak_rss_kib=%ld rounds=%d spread=%.3f cpu_value=%.6g\n",
           workload, threads, value, unit, gflops, ceiling, ceiling > 0 ? gflops / ceiling : 0.0,
           bench_peak_rss_kib(), rounds, spread, cpu_value);
    fflush(stdout);
}
