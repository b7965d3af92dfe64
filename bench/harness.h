/* Shared pieces of the benchmark programs: clocks, the BLIS ceiling, peak RSS, and the
 * reference workloads built through the public API. Bench code only: nothing here is part
 * of the library. */
#ifndef TLEARN_BENCH_HARNESS_H
#define TLEARN_BENCH_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include <tlearn/tlearn.h>

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
    BW_TRANSFORMER_B32,  /* 7) text encoder (4 layers, dim 256, 4 heads, sequence 128): AdamW
                          *    training step at batch 32, and its peak RSS */
    BW_TRANSFORMER_FEATURES_B32, /* 8) its mean-pooled features, batch 32 */
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

#endif
