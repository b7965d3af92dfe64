/* The model: a graph of layers in the order they were added, its training state and the
 * planned workspace. Used by model/, train/ and io/; never by layers. */
#ifndef TL_MODEL_H
#define TL_MODEL_H

#include <limits.h>

#include "../layers/layer.h"

/* Training state of one trainable tensor (a parameter, not a buffer). */
typedef struct tl_slot {
    float *grad;      /* gradient of the last backward; NULL while the layer is frozen */
    float *m1, *m2;   /* optimizer state (momentum / Adam moments); NULL until needed */
    int64_t step;     /* optimizer steps taken with this state */
    int opt_kind;     /* optimizer that made m1/m2; another one starts fresh */
    float *reg_a;     /* regulariser (EWC, L2-SP): its gradient is reg_a*theta - reg_b; */
    float *reg_b;     /* both NULL when the tensor is not regularised */
    /* Bounds that let the optimizer prove an update finite without its dry run
     * (optim.c, provably_finite): */
    float rbound[2];  /* max |reg_a|, max |reg_b|, set with them */
    float gbound;     /* max |grad| from the step's finiteness scan ... */
    int have_gbound;  /* ... valid for this step only (the update clears it) */
    float sbound[2];  /* upper bounds of |m1| and m2 as they are ... */
    int bounded;      /* ... known (set by every update; 0 after m1/m2 are replaced) */
    float pbound[2];  /* the bounds after the update being checked, until it is made */
} tl_slot;

/* What the model knows about each layer beyond the layer itself. */
typedef struct tl_layer_state {
    int frozen;          /* parameters get no gradient and no update */
    unsigned frozen_params; /* bit p: tensor p is frozen while the others train (BitFit);
                             * 0 whenever `frozen` is set */
    float lr_scale;      /* multiplies the optimizer's learning rate */
    int from_pretrained; /* existed when L2-SP was enabled; new layers get beta instead */
    tl_slot slot[TL_MAX_PARAMS];
} tl_layer_state;

/* Both freeze flags in one word (checkpoints' FREEZE, TENT's snapshot): bit 0 the layer,
 * bits 8.. its tensors. */
#define TL_FROZEN_PARAMS_SHIFT 8
static inline unsigned tl_frozen_pack(const tl_layer_state *st)
{
    return (unsigned)(st->frozen != 0) | st->frozen_params << TL_FROZEN_PARAMS_SHIFT;
}

static inline void tl_frozen_unpack(tl_layer_state *st, unsigned v)
{
    st->frozen = (int)(v & 1u);
    st->frozen_params = st->frozen ? 0u : v >> TL_FROZEN_PARAMS_SHIFT;
}

/* Buffers for one batch capacity, carved from one aligned block. */
typedef struct tl_plan {
    size_t cap;        /* batch capacity; 0 = not planned */
    int first_bwd;     /* first layer backward runs through; nlayers for inference */
    int want_dx;       /* gradient w.r.t. the model input is wanted */
    int for_da;        /* planned with domain adaptation set up: every output and gradient
                        * of backward's layers kept apart (its terms seed any layer) */
    float **out;       /* per layer: output activations */
    float **dout;      /* per layer: gradient of the loss w.r.t. the output, or NULL */
    float **saved;     /* per layer: what forward keeps for backward/commit, or NULL */
    int *dout_written; /* during backward, per producer (index 0: the network input,
                        * then layer i at i+1): its gradient already holds a contribution */
    int fwd_training;  /* mode of the last forward: backward sees `saved` only if it was 1 */
    float *scratch;
    void *block;       /* owns everything above */
    size_t bytes;      /* activation + scratch bytes (reported by workspace_bytes) */
} tl_plan;

/* One thread's share of chunked inference: its own workspace and a one-thread BLIS handle,
 * so that the threads never wait for each other inside a chunk. */
typedef struct tl_worker {
    tl_plan plan;
    tl_blas *blas;
} tl_worker;

struct tl_ewc; /* train/ewc.c */
struct tl_da;  /* train/adapt.c: per-output losses, discrepancy terms, TENT's snapshot */

/* How model/ handles state that train/ hangs on a model (EWC and L2-SP) without knowing
 * it: the dependency runs one way, train/ -> model/. */
typedef struct tl_attachment_ops {
    void (*destroy)(struct tl_ewc *state);
    void (*drop_layers)(tlearn_model *m, int keep); /* layers keep.. are being removed */
} tl_attachment_ops;

/* The host's gradient reducer (tlearn_model_set_reducer, train/reduce.c): what it was
 * given, and one round's staging buffer, where gradients wait in buckets while the
 * reducer sums them across workers. Plain data, so model.c frees it without train/. */
typedef struct tl_reducer {
    tlearn_reduce_fn reduce;
    tlearn_reduce_wait_fn wait;
    void *user;
    int workers, flags;
    size_t bucket_floats;
    float *buf;        /* staging: trainable gradients in the order backward produced them */
    size_t cap, used;  /* floats of buf allocated / filled this round */
    size_t start;      /* first float of the bucket being filled */
    int *order;        /* layers copied in, in that order; nlayers entries */
    int norder, order_cap;
    int bucket;        /* next bucket id of the round */
    int rc;            /* first failure of the round (a reduce call's status) */
    float extra[4];    /* small sums after the buckets (loss, counts) */
} tl_reducer;

/* A graph input of the model: producers -1, -2, ... are inputs 0, 1, ... */
#define TL_MAX_MODEL_INPUTS 8
#define TL_MAX_MODEL_OUTPUTS 8
typedef struct tl_model_input {
    char name[TL_NAME_MAX];
    int dtype;      /* TLEARN_DTYPE_*: int32 arrives in the same 4 bytes per element */
    tl_shape shape; /* one example */
} tl_model_input;

static inline int tl_input_producer(int k)
{
    return -1 - k;
}

/* The arrays of one call: per model input, n examples of size[k] 4-byte elements. From a
 * cut (predict_from, cached features) x[0] holds the activations of the layer before. */
typedef struct tl_feed {
    int count;
    const float *x[TL_MAX_MODEL_INPUTS];
    size_t size[TL_MAX_MODEL_INPUTS];
} tl_feed;

static inline tl_feed tl_feed_one(const float *x, size_t size)
{
    tl_feed f = {1, {x}, {size}};
    return f;
}

/* The feed moved on by @p start examples. */
static inline tl_feed tl_feed_at(const tl_feed *f, size_t start)
{
    tl_feed g = *f;
    for (int k = 0; k < f->count; k++)
        g.x[k] = f->x[k] + start * f->size[k];
    return g;
}

#define TL_TENSOR_NAME_MAX (TL_NAME_MAX + 24) /* layer name '.' tl_param name */

struct tlearn_model {
    int ninputs;
    tl_model_input inputs[TL_MAX_MODEL_INPUTS];
    int noutputs;         /* graph outputs (layer indexes); 0: the last layer alone */
    int outputs[TL_MAX_MODEL_OUTPUTS];
    int nlayers, cap_layers;
    tl_layer **layers;
    int *name_index;      /* open addressing: 1 + layer index by name hash, 0 empty */
    size_t name_cap;      /* slots, a power of two, at least twice nlayers */
    tl_layer_state *lstate;
    int next_input;       /* TL_NEXT_DEFAULT: the previous layer; else a producer */
    int threads;
    uint64_t seed;
    tl_rng rng;
    tl_blas *blas;
    int training;
    int loss_kind;
    float label_smoothing; /* cross-entropy options (train/loss.c) */
    float *class_weight;   /* owned; NULL: every class weighs 1 */
    size_t nclass_weight;
    float contrastive_tau; /* temperature of the contrastive losses */
    float *pair_work;      /* their scratch (train/loss.c), grown once; owned */
    size_t pair_cap;       /* floats in pair_work */
    int bn_stats_frozen;  /* from the freeze policy */
    tl_plan plan_train, plan_infer;
    tl_worker *workers; /* inference chunks side by side (run.c); NULL until used */
    int nworkers;
    struct tl_ewc *ewc;   /* EWC tasks and L2-SP anchor; NULL when none */
    const tl_attachment_ops *ewc_ops; /* set by train/ewc.c with ewc */
    struct tl_da *da;     /* domain adaptation settings; NULL until one is made */
    void (*da_destroy)(struct tl_da *da); /* set by train/adapt.c with da */
    int nmeta;
    char **meta_keys, **meta_values;
    int has_grads;        /* a backward has filled the gradients */
    tl_reducer *reducer;  /* NULL: one process */
    /* Set by train/reduce.c while a training step's backward runs: tl_model_backward calls
     * it after each trainable layer's backward so the gradients travel while backward
     * goes on. NULL otherwise (EWC's per-example backward, inference). */
    void (*grads_ready)(tlearn_model *m, int layer);
    /* Set by train/reduce.c for a training step's forward and backward with synchronised
     * BatchNorm: tl_exec.sum, with the model as its context. NULL otherwise. */
    int (*batch_sum)(void *m, float *data, size_t count);
    char *tensor_names;   /* "layer.param" names for tensor_info, TL_TENSOR_NAME_MAX bytes
                           * each; built on demand, dropped when the layers change */
};

#define TL_NEXT_DEFAULT INT_MIN

#define TL_CHECK_MODEL(fn, m)                                                                 \
    do {                                                                                      \
        if (!(m))                                                                             \
            return tl_fail(TLEARN_EINVAL, "%s: model is NULL", fn);                           \
    } while (0)

/* Tensor p of layer i trains: the layer and the tensor are not frozen and it is not a
 * buffer. Frozen tensors own no gradient and no optimizer state (tl_model_sync_slots). */
static inline int tl_param_trains(const tlearn_model *m, int i, int p)
{
    const tl_layer_state *st = &m->lstate[i];
    return !st->frozen && !(st->frozen_params >> p & 1u) && !m->layers[i]->param[p].is_buffer;
}

/* Some tensor of layer i trains. */
static inline int tl_layer_trains(const tlearn_model *m, int i)
{
    for (int p = 0; p < m->layers[i]->nparam; p++)
        if (tl_param_trains(m, i, p))
            return 1;
    return 0;
}

/* Build: the one door through which public calls, checkpoints and ONNX add layers.
 * @p inputs NULL takes the model's next input (previous layer, or set_next_input). */
int tl_model_add(tlearn_model *m, const char *fn, const tl_layer_ops *ops, const char *name,
                 const int *inputs, int ninputs, const int *ia, int ni, const float *fa, int nf);
int tl_model_find(const tlearn_model *m, const char *name); /* index or -1 */
/* Replace layers keep.. by one new layer of @p ops reading @p producer (< keep), named
 * @p name (no kept layer or input may have it); the layer is built before anything is
 * dropped, so a failure changes nothing. *out (may be NULL) receives the new layer. */
int tl_model_replace_tail(tlearn_model *m, const char *fn, int keep, int producer,
                          const tl_layer_ops *ops, const char *name, const int *ia, int ni,
                          const float *fa, int nf, tl_layer **out);
/* A layer (its index) or a model input (tl_input_producer(k)) by name; 0 when none. */
int tl_model_find_producer(const tlearn_model *m, const char *name, int *producer);
/* The shape a producer (layer index, or a model input) gives one example. */
tl_shape tl_model_producer_shape(const tlearn_model *m, int producer);
/* Calls that take one array x: ESTATE for a model of several inputs or an int32 input. */
int tl_model_check_single_input(const char *fn, const tlearn_model *m);
/* The arrays of a call with one array per model input (public multi-input calls): checks
 * them (count, NULL, size, each layer's validate()) and fills @p feed. */
int tl_model_check_feed(const char *fn, const tlearn_model *m, const void *const *inputs,
                        int ninputs, size_t n, tl_feed *feed);
/* Every layer's validate() on the model inputs it reads directly (see tl_layer_ops). */
int tl_model_validate_feed(const char *fn, const tlearn_model *m, const tl_feed *x, size_t n);
/* The model's inputs as one feed of @p x (a model with one input). */
tl_feed tl_model_feed(const tlearn_model *m, const float *x);
/* As tl_model_find, failing with a message (EINVAL for NULL, ENOTFOUND). */
int tl_model_find_checked(const char *fn, const tlearn_model *m, const char *layer, int *index);
/* Layers after @p i read only from i or later, so i's activations stand for the prefix. */
int tl_model_check_cut(const char *fn, const tlearn_model *m, int i);
/* The first layer after @p i that reads from before i, or -1. */
int tl_model_reader_across(const tlearn_model *m, int i);
/* Find "layer.param" in the model; returns 0 and sets *layer, *param on success. */
int tl_model_find_tensor(const tlearn_model *m, const char *name, int *layer, int *param);
void tl_model_structure_changed(tlearn_model *m); /* drops plans */
/* Graph output k (0 .. tl_model_output_count-1) as a layer index; output 0 is what the
 * single-output calls (predict, train_step, evaluate, EWC) read and train. */
int tl_model_output_count(const tlearn_model *m);
int tl_model_output(const tlearn_model *m, int k);
int tl_model_is_output(const tlearn_model *m, int layer);
/* The highest layer index of any output: forward need not run further. */
int tl_model_last_output(const tlearn_model *m);
size_t tl_model_output_size(const tlearn_model *m); /* of output 0 */
/* Images per chunk for inference through layers [from, to] (cache-sized; run.c). */
size_t tl_model_infer_chunk(const tlearn_model *m, int from, int to);
/* Chunked inference runs on at most this many threads (more rarely pays for the
 * workspace each one needs). */
#define TL_MAX_WORKERS 64
/* Receives, for inputs [start, start+k) from worker @p worker (0 .. TL_MAX_WORKERS-1),
 * the outputs of the chunk's layers (outs[i]: layer i; written are layer `to` and the graph
 * outputs up to it); different chunks may arrive at the same time on different threads. */
typedef void (*tl_chunk_fn)(void *ctx, int worker, size_t start, size_t k,
                            float *const *outs);
/* Layers [from, to] without backward over n inputs of @p in_size floats, in chunks of
 * tl_model_infer_chunk; with several threads and enough chunks, each thread runs whole
 * chunks with its own workspace and one-thread BLIS. */
int tl_model_infer(tlearn_model *m, const tl_feed *x, size_t n, int from, int to, int training,
                   tl_chunk_fn fn, void *ctx);
void tl_model_free_workers(tlearn_model *m);
/* A tl_chunk_fn that copies each chunk of layer `layer` to out + start * size. */
typedef struct tl_chunk_dest {
    float *out;
    size_t size; /* floats per input */
    int layer;
} tl_chunk_dest;
void tl_chunk_copy(void *ctx, int worker, size_t start, size_t k, float *const *outs);

/* The epilogues (TL_EPILOGUE_*) layer i folds in when running up to layer `to`, and in
 * *folded the number of layers after i they stand for. A folded ReLU's output is still
 * written (its backward reads it); a folded pool leaves the ReLU's output unwritten, so
 * it is only folded where no backward runs (below first_bwd). */
int tl_model_epilogue(const tlearn_model *m, int first_bwd, int i, int to, int *folded);
/* Planning and running. first_bwd = tl_model_first_trainable() for training. */
int tl_model_first_trainable(const tlearn_model *m); /* nlayers when everything is frozen */
int tl_model_plan(tlearn_model *m, tl_plan *p, size_t n, int first_bwd, int want_dx);
void tl_plan_free(tl_plan *p);
/* Run layers [from, to] forward. From 0 the layers read the model inputs in @p x; from a
 * later layer, a layer reading before `from` reads x->x[0] (the activations of from-1). */
void tl_model_forward(tlearn_model *m, tl_plan *p, const tl_feed *x, size_t n, int training,
                      int from, int to);
/* Backward down to p->first_bwd, after the caller set dout of the @p nseeded layers in
 * @p seeded (graph outputs with a loss); other branches contribute nothing. @p dx
 * receives the input gradient when p->want_dx. */
void tl_model_backward(tlearn_model *m, tl_plan *p, const tl_feed *x, size_t n, int from,
                       const int *seeded, int nseeded, float *dx);
/* Fold saved batch statistics into running buffers after an accepted step. */
void tl_model_commit(tlearn_model *m, tl_plan *p, size_t n, int from);
/* Free the gradients and optimizer state of frozen layers; with @p alloc_grads, also
 * allocate the gradient buffers of trainable ones. Gradients are allocated on first
 * training use (a step, an input gradient, EWC consolidation), never at load or freeze:
 * a model only used for inference holds its parameters alone. */
int tl_model_sync_slots(tlearn_model *m, int alloc_grads);
/* Before writing tensor @p param of layer @p layer: its own copy if its data is shared with
 * other handles (share.c). ENOMEM with a message; nothing changes then. */
int tl_model_own_param(tlearn_model *m, int layer, int param);

/* ---- editing the graph (adapters/) ----
 * One layer to insert: producers >= 0 count in the numbering AFTER the insertion, so they
 * name layers up to the insertion point or the specs before this one. */
typedef struct tl_insert_spec {
    const tl_layer_ops *ops;
    const char *name;
    int ninputs;
    int inputs[4];
    const int *ia;
    int ni;
    const float *fa;
    int nf;
} tl_insert_spec;
/* Insert @p count layers right after layer @p after (shifting the later ones: producer
 * indexes, graph outputs, the next input, per-layer state, the name index), then make every
 * later layer and graph output that read layer @p reroute read the new layer @p to instead
 * (@p reroute < 0: no rewiring; @p to counts in the new numbering). New layers are
 * trainable, with fresh state. Atomic: a failure (bad name, shape, ENOMEM) changes
 * nothing. Refused (ESTATE) while EWC or L2-SP is enabled: their per-layer tables would
 * need the same shift. On success, @p made (if not NULL) receives the new layers. */
#define TL_NO_REROUTE INT_MIN
int tl_model_insert(tlearn_model *m, const char *fn, int after, const tl_insert_spec *specs,
                    int count, int reroute, int to, tl_layer **made);
/* The inverse: remove the @p count layers from @p first on, making every remaining reader
 * of layer @p reroute (inside the range) read @p to (< first) instead. The caller makes
 * sure nothing else outside the range reads a removed layer. Cannot fail. */
void tl_model_remove(tlearn_model *m, int first, int count, int reroute, int to);
/* Give layer @p i the name @p name, which no other layer has (the caller checked it and
 * its length). Cannot fail. */
void tl_model_rename(tlearn_model *m, int i, const char *name);


#endif
