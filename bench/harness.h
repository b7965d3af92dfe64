/* Shared pieces of the benchmark programs: clocks, the BLIS ceiling, peak RSS, and the
 * reference workloads built through the public API. Bench code only: nothing here is part
 * of the library. */
#ifndef TLEARN_BENCH_HARNESS_H
#define TLEARN_BENCH_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include <tlearn/tlearn.h>

/* Return the status of a call that fails. */
#define TRY(call)                                                                            \
    do {                                                                                     \
        int rc_ = (call);                                                                    \
        if (rc_ != TLEARN_OK)                                                                \
            return rc_;                                                                      \
    } while (0)

/* Seconds on the monotonic clock. */
double bench_now(void);

/* CPU seconds used by all threads of this process. At 1 thread, rates over CPU time are
 * what wall-clock rates would be on an idle machine (minus cache interference): the bench
 * reports both, because the build machine is shared. */
double bench_cpu_now(void);

/* Peak resident set size of this process in KiB: VmHWM from /proc/self/status, else
 * getrusage's ru_maxrss (which on Linux includes the peak from before execve()). */
long bench_peak_rss_kib(void);

/* BLIS's own sgemm rate in GFLOP/s on a square problem of side @p size at @p threads
 * (per-call rntm_t, as the library uses it): the best of @p reps timed calls after one
 * warm-up call, with the sub-configuration libtlearn runs (tlearn_blas_info() first). */
double bench_blis_ceiling(int threads, int size, int reps);

/* As bench_blis_ceiling(), measured in a forked child so that its matrices never count
 * towards this process's peak RSS. Call before anything has started OpenMP threads.
 * Returns <= 0 on failure. */
double bench_blis_ceiling_forked(int threads, int size, int reps);

/* Print `blas <tlearn_blas_info line>` on stdout: what BLIS runs in this process. */
void bench_print_blas(void);

/* The workloads. */
enum bench_workload {
    BW_MLP_ADAM_B64 = 0, /* 1) MLP 784-512-512-10, full fine-tune, Adam, batch 64 */
    BW_CNN_FULL_B64,     /* 2) CNN full fine-tune, SGD momentum 0.9, batch 64 */
    BW_CNN_PARTIAL_B64,  /* 3) CNN with both convolutions frozen, batch 64 */
    BW_CNN_EWC_B64,      /* 4) workload 2 plus an EWC penalty on all parameters */
    BW_CNN_FEATURES_B256,/* 5) features at the second pool, batch 256 */
    BW_CNN_PARTIAL_B1,   /* 6) workload 3 at batch 1: latency and peak RSS */
    BW_CNN_LORA_B64,     /* 7) the CNN with LoRA r=8 on every conv and dense layer, the
                          *    rest frozen, SGD momentum 0.9, batch 64 */
    BW_TFM_LORA_B32,     /* 8) transformer encoder (4 layers, D 256, 4 heads, FF 1024) over
                          *    (128, 256) inputs, mean pool, 10-way head; LoRA r=8 on
                          *    q_proj and v_proj, only adapters and head train, AdamW, batch 32 */
    BW_TFM_FULL_B32,     /* 9) workload 8's network fully fine-tuned, AdamW: the comparison */
    BW_TRANSFORMER_B32,  /* 10) text encoder (4 layers, dim 256, 4 heads, sequence 128): AdamW
                          *    training step at batch 32, and its peak RSS */
    BW_TRANSFORMER_FEATURES_B32, /* 11) its mean-pooled features, batch 32 */
    BW_COUNT
};

typedef struct bench_spec {
    const char *name;  /* as printed: "mlp_adam_b64", ... */
    const char *unit;  /* "steps/s", "images/s" or "us/step" */
    size_t batch;
} bench_spec;

const bench_spec *bench_workload_spec(int w);
int bench_workload_by_name(const char *name); /* -1 when unknown */

/* A built workload: the model, its optimizer, and a few batches of synthetic data. */
typedef struct bench_ctx {
    int w;
    tlearn_model *m;
    tlearn_optim *o;
    float *x;         /* nbatches * batch inputs (int32 token ids for the transformer) */
    int32_t *y;       /* nbatches * batch labels */
    float *feat;      /* features output (workload 5) */
    size_t nbatches, batch, in_size, feat_size;
    size_t next;      /* batch to use next */
    double flops;     /* useful FLOPs per unit of work (step or image) */
} bench_ctx;

/* Build workload @p w at @p threads. Returns a TLEARN status; on failure prints nothing
 * (the caller prints tlearn_errmsg()). */
int bench_setup(bench_ctx *c, int w, int threads);
/* One unit of work: a train step, or one features call over a batch (256 images, 32
 * sequences). */
int bench_run_once(bench_ctx *c);
void bench_teardown(bench_ctx *c);

/* GEMM-equivalent FLOPs of one training step of batch @p n (forward of every layer with
 * weights, weight gradients of trainable layers, input gradients of trainable layers
 * after the first trainable one), or of inference up to layer @p last (training 0). */
double bench_model_flops(const tlearn_model *m, size_t n, int training, int last);

/* Parse the common options --threads, --rounds, --round-seconds and --ceiling at argv[*i]
 * (advancing *i past the value). Returns 1 when argv[*i] was one of them, 0 when it is not,
 * -1 when its value is missing. */
int bench_common_option(int argc, char **argv, int *i, int *threads, int *rounds,
                        double *round_s, double *ceiling);

/* The result line both bench programs print (compare-torch.py reads it). */
void bench_print_result(const char *workload, int threads, double value, const char *unit,
                        double gflops, double ceiling, int rounds, double spread,
                        double cpu_value);

/* Deterministic synthetic data: inputs in [0, 1) like normalised pixels, labels 0..9. */
void bench_fill_data(float *x, int32_t *y, size_t n, size_t in_size, uint64_t seed);

/* Medians over rounds of calls per second of wall time and of process CPU time. */
typedef struct bench_result {
    double rate, cpu_rate, spread; /* spread: (max - min) / median of the wall rates */
} bench_result;

/* One round: run(ctx) for at least @p round_s seconds (and twice); calls per second of
 * wall and CPU time. Returns the first failing call's status. */
int bench_round(int (*run)(void *), void *ctx, double round_s, double *rate, double *cpu_rate);
/* Median of v[0..n) (sorts v). */
double bench_median(double *v, int n);
/* Warm up, then @p rounds rounds of run(ctx) calls, each at least @p round_s seconds (and
 * two calls). Returns the first failing call's status. */
int bench_measure(int (*run)(void *), void *ctx, int rounds, double round_s, bench_result *r);

#endif
