/* The layer seam. A layer kind is one file that fills one tl_layer_ops table and keeps its
 * own configuration behind L->cfg; the model and the trainer only call through the table.
 * A layer knows nothing of optimizers, files or freeze policies. */
#ifndef TL_LAYER_H
#define TL_LAYER_H

#include "../tensor/tensor.h"

/* The shape of one example: up to TL_MAX_RANK dimensions after the batch. The layout is
 * declared by the rank and the op that reads it: images are (C, H, W), sequences (T, D),
 * vectors (D). Unused trailing entries of d[] are 1, so image ops read s.c, s.h, s.w and a
 * vector (D) reads as (D, 1, 1), as in round 1. */
#define TL_MAX_RANK 4

typedef struct tl_shape {
    int rank; /* 1 .. TL_MAX_RANK */
    union {
        int d[TL_MAX_RANK];
        struct {
            int c, h, w;
        };
    };
} tl_shape;

static inline tl_shape tl_shape3(int c, int h, int w)
{
    tl_shape s = {3, {{c, h, w, 1}}};
    return s;
}

static inline tl_shape tl_shape1(int d)
{
    tl_shape s = {1, {{d, 1, 1, 1}}};
    return s;
}

/* A shape of @p rank dims from @p dims (1 <= rank <= TL_MAX_RANK, checked by the caller). */
static inline tl_shape tl_shape_of(int rank, const int *dims)
{
    tl_shape s = {rank, {{1, 1, 1, 1}}};
    for (int i = 0; i < rank; i++)
        s.d[i] = dims[i];
    return s;
}

static inline size_t tl_shape_size(tl_shape s)
{
    size_t n = 1;
    for (int i = 0; i < TL_MAX_RANK; i++)
        n *= (size_t)s.d[i];
    return n;
}

static inline int tl_shape_equal(tl_shape a, tl_shape b)
{
    if (a.rank != b.rank)
        return 0;
    for (int i = 0; i < TL_MAX_RANK; i++)
        if (a.d[i] != b.d[i])
            return 0;
    return 1;
}

/* Axis @p axis of a rank-@p rank shape, negative counting from the end (ONNX, NumPy): the
 * index 0..rank-1, or -1 when out of range. */
static inline int tl_shape_axis(int axis, int rank)
{
    int a = axis < 0 ? axis + rank : axis;
    return a >= 0 && a < rank ? a : -1;
}

/* Elements of one example before axis @p a (outer) and after it (inner): the example is
 * outer x d[a] x inner in memory. */
static inline size_t tl_shape_outer(tl_shape s, int a)
{
    size_t n = 1;
    for (int i = 0; i < a; i++)
        n *= (size_t)s.d[i];
    return n;
}

static inline size_t tl_shape_inner(tl_shape s, int a)
{
    size_t n = 1;
    for (int i = a + 1; i < TL_MAX_RANK; i++)
        n *= (size_t)s.d[i];
    return n;
}

/* "(2, 3, 4)" for messages; @p buf holds at least TL_SHAPE_STR bytes. */
#define TL_SHAPE_STR 64
const char *tl_shape_str(tl_shape s, char *buf);

#define TL_MAX_PARAMS 4
/* Inputs of one layer (concat over DenseNet's blocks takes dozens): the layer keeps them in
 * arrays sized to its count; the runtime uses stack arrays of this size. */
#define TL_MAX_INPUTS 256

typedef struct tl_param {
    char name[24];  /* "weight", "bias", "running_mean", ... */
    tl_tensor t;    /* owned by the layer */
    int is_buffer;  /* saved and loaded, never trained (BN statistics) */
} tl_param;

/* Layers that a layer can fold into its forward pass (tl_layer_ops.epilogues): a ReLU that
 * alone reads its output, then a 2x2, stride-2, unpadded max-pool that alone reads that
 * ReLU. The model chooses (model/run.c) and passes the choice in tl_exec.epilogue; `out`
 * is then the output of the last folded layer, computed bit for bit as the layers would. */
enum { TL_EPILOGUE_RELU = 1, TL_EPILOGUE_POOL2 = 2 };

/* ReLU as torch.relu: negatives become 0; NaN and -0 pass through. */
static inline float tl_relu(float v)
{
    return v < 0.0f ? 0.0f : v;
}

/* Hot per-plane loops are compiled for AVX-512 and AVX2 too and the CPU's best runs (GCC
 * function clones; the library is otherwise built for the baseline ISA, SSE2). Clones may
 * contract a*b+c into FMAs: results can differ in the last bit between CPUs, never between
 * runs on one. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TL_CLONES
#endif

/* Max-pooling's choice between an earlier and a later window element, as PyTorch: the
 * later one when it is larger or is the first NaN (x != x; the library is never built
 * with -ffinite-math-only). Three selects of one comparison each: loops over it vectorise. */
static inline float tl_pool_pick(float earlier, float later)
{
    float t = later > earlier ? later : earlier;
    t = later != later ? later : t;
    return earlier != earlier ? earlier : t;
}

/* A 2x2 pooling window in row-major order: exact (tl_pool_pick), and the plain maximum that
 * equals it when no element is NaN. Fused loops take the plain one and redo a row with the
 * exact one when a window's sum is not finite (after a ReLU that covers every NaN; an
 * infinity only costs the redo). */
static inline float tl_pool4(float a, float b, float c, float d)
{
    return tl_pool_pick(tl_pool_pick(a, b), tl_pool_pick(c, d));
}

static inline float tl_pool4_no_nan(float a, float b, float c, float d)
{
    float ab = b > a ? b : a, cd = d > c ? d : c;
    return cd > ab ? cd : ab;
}

/* What a layer may use while it computes. */
typedef struct tl_exec {
    const tl_blas *blas;
    tl_rng *rng;      /* dropout masks */
    int training;     /* dropout active, batchnorm on batch statistics */
    int backward;     /* set per layer: a backward pass will run through this layer */
    float *scratch;   /* temporary floats, at least scratch_floats() of every layer */
    int epilogue;     /* TL_EPILOGUE_* folded into this forward */
    int prepared;     /* prepare() ran for this run of forwards: L->prepared is current */
    /* Synchronised batch statistics (TLEARN_REDUCE_BATCHNORM): sums @p count floats in
     * place across the workers and returns when done, or a status (the step then fails
     * as a whole, so a layer may go on with the values it has). NULL: one process. */
    int (*sum)(void *ctx, float *data, size_t count);
    void *sum_ctx;
} tl_exec;

typedef struct tl_layer tl_layer;

typedef struct tl_layer_ops {
    int kind;              /* enum tlearn_layer_kind */
    const char *kind_name; /* "dense", "conv2d", ... as stored in checkpoints */
    int epilogues;         /* TL_EPILOGUE_* that forward can fold in */
    int int_inputs;        /* bit k set: input k may be an int32 model input (token ids,
                            * masks), read through its float pointer */
    /* backward never reads in[] / out (inputs: add, dropout; the output: every kind but
     * activation, binary and softmax), so the training plan need not keep them for it: a
     * convolution's output read only by a residual add is freed after the add. 0 (the
     * default) is always safe. */
    int bwd_ignores_inputs, bwd_ignores_output;
    /* Check the n examples of model input @p x that input @p k reads directly (token ids in
     * range), before any forward: entry points call it and return its status (EINVAL
     * with a message). NULL: every value is acceptable. */
    int (*validate)(const tl_layer *L, int k, const void *x, size_t n);
    /* Validate the numeric arguments of the kind (see each layer file) and keep them in
     * L->cfg (allocated here, freed by destroy_cfg). The public tlearn_model_add_* calls,
     * checkpoints and the ONNX importer all build layers through this one door. */
    int (*configure)(tl_layer *L, const int *ia, int ni, const float *fa, int nf);
    /* The arguments that configure() would need to rebuild this layer. */
    void (*arguments)(const tl_layer *L, int *ia, int *ni, float *fa, int *nf);
    /* Check L->in[] against the configuration, set L->out, create and initialise the
     * parameters from @p rng. Returns a status with a message naming the layer. */
    int (*setup)(tl_layer *L, tl_rng *rng);
    /* Floats kept from forward to backward (and to commit) for a batch of n in training
     * mode: masks, argmax, batch statistics. @p backward is 0 when no backward will run
     * through the layer (a frozen prefix), so only what commit needs is asked for.
     * NULL means none. */
    size_t (*saved_floats)(const tl_layer *L, size_t n, int backward);
    /* Temporary floats needed during forward or backward (im2col tiles); NULL: none. */
    size_t (*scratch_floats)(const tl_layer *L, size_t n);
    /* Before a run of forwards over the same parameters (chunked inference), derive what
     * each of them would otherwise recompute (Winograd's transformed filters) into
     * L->prepared; those forwards see ex->prepared set. NULL: nothing to derive. */
    int (*prepare)(tl_layer *L, const tl_exec *ex);
    /* out = f(in). @p saved holds saved_floats() floats when the step will train (backward
     * or commit may follow, even in evaluation mode: fine-tuning with frozen BN), NULL
     * for pure inference. ex->training says which behaviour (dropout, batch statistics). */
    void (*forward)(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                    size_t n, float *saved);
    /* From dout: parameter gradients into pgrad[i] (pgrad NULL: parameters frozen, skip)
     * and input gradients into din[i] (din[i] NULL: not wanted). With @p accum the input
     * gradient is added to din[i] instead of overwriting it. */
    void (*backward)(tl_layer *L, const tl_exec *ex, const float *const *in, const float *out,
                     const float *dout, float *const *din, int accum, size_t n,
                     const float *saved, float *const *pgrad);
    /* After a train step is accepted: fold batch statistics kept in @p saved into the
     * running buffers. NULL: nothing to commit. */
    void (*commit)(tl_layer *L, const float *saved, size_t n);
    /* 1 when commit() would leave every running buffer finite (checked before a step
     * changes anything). NULL: commit always does. */
    int (*commit_finite)(const tl_layer *L, const float *saved, size_t n);
    void (*destroy_cfg)(void *cfg); /* NULL: tl_free */
} tl_layer_ops;

struct tl_layer {
    const tl_layer_ops *ops;
    char name[TL_NAME_MAX];
    int ninputs;
    int *input;  /* [ninputs] producing layers; -1 is the model input (allocated with L) */
    tl_shape *in; /* [ninputs] their shapes */
    tl_shape out;
    int nparam;
    tl_param param[TL_MAX_PARAMS];
    int use_running_stats; /* batchnorm: normalise with running statistics even in training */
    void *cfg;             /* kind-specific configuration, owned through ops->destroy_cfg */
    float *prepared;       /* what ops->prepare derived from the parameters; owned */
};

/* A zeroed layer of @p ops with room for @p ninputs inputs (L->input, L->in), freed with
 * tl_free(L) after its parameters and cfg; NULL when out of memory or ninputs is out of
 * 0..TL_MAX_INPUTS. */
tl_layer *tl_layer_new(const tl_layer_ops *ops, const char *name, int ninputs);

/* Helpers for layer files. */
int tl_layer_add_param(tl_layer *L, const char *name, int ndim, const int *dims, int is_buffer);
/* io/ rebuilding layers from a file sets a per-thread budget of floats (what the file's
 * tensor directory declares, so bounded by the file's size): tl_layer_add_param then fails
 * with TLEARN_EFORMAT instead of allocating more, and subtracts what it allocates. NULL
 * removes the budget. */
void tl_layer_set_param_budget(size_t *floats);
/* PyTorch's default init for weights of fan-in @p fan_in: U(-1/sqrt(fan_in), +...). */
void tl_init_uniform(tl_tensor *t, tl_rng *rng, float bound);
/* N(0, std^2) by Box-Muller (torch.nn.Embedding, ViT's class token and positions). */
void tl_init_normal(tl_tensor *t, tl_rng *rng, float std);

/* Key-padding masks (attention, token_pool): one value per position, 1 keep, 0 pad, as an
 * int32 model input (a tokenizer's attention_mask) or as floats 1.0/0.0. Both read the same
 * through the float pointers: a position is kept when its 32 bits, sign aside, are not all
 * zero (int32 1 and float 1.0 alike). */
static inline int tl_mask_keep(const float *mask, size_t i)
{
    uint32_t b;
    memcpy(&b, mask + i, sizeof b);
    return (b & 0x7fffffffu) != 0;
}
/* validate() for a mask: every value of the n x @p len is int32 0/1 or float 0.0/1.0. */
int tl_validate_mask(const tl_layer *L, const void *x, size_t n, size_t len);

/* Data movement of concat, slice and reshape: @p rows x @p count blocks of @p len floats,
 * dst[r*dr + j*dj + i] = src[r*sr + j*sj + i], or += with @p accum. */
void tl_copy_blocks(float *dst, size_t dr, size_t dj, const float *src, size_t sr, size_t sj,
                    size_t rows, size_t count, size_t len, int accum);
/* Pooling geometry shared by max and average pooling: kernel kh x kw, stride, padding top,
 * left, bottom, right, dilation (1 for average pooling) and ceil_mode, as ONNX's MaxPool /
 * AveragePool and PyTorch (which pads symmetrically). */
typedef struct tl_pool_geom {
    int kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, ceil_mode;
} tl_pool_geom;

/* For configure(): every field in range (EINVAL with a message naming @p kind and L). */
int tl_pool_check(const tl_layer *L, const char *kind, const tl_pool_geom *g);
/* For setup(): L->out = (C, oh, ow) from L->in[0] with PyTorch's rule
 * out = (in + p0 + p1 - extent [+ stride - 1 in ceil mode]) / stride + 1, where in ceil
 * mode a last window that would start in the bottom/right padding is dropped. Each padding
 * is at most half the dilated kernel, so every window meets the input (ESHAPE otherwise,
 * and for an empty output). */
int tl_pool_setup(tl_layer *L, const char *kind, const tl_pool_geom *g);
/* Round 1's geometry: symmetric padding, no dilation, floor mode (its 6-argument form). */
static inline int tl_pool_plain(const tl_pool_geom *g)
{
    return g->pb == g->pt && g->pr == g->pl && g->dh == 1 && g->dw == 1 && !g->ceil_mode;
}

#define TL_MAX_IARGS 12
#define TL_MAX_FARGS 4
/* For configure(): check the argument count and copy @p size bytes of config. */
int tl_layer_config(tl_layer *L, const void *cfg, size_t size);

/* The registry: every layer kind, found by kind name (checkpoints) or kind number. */
const tl_layer_ops *tl_layer_ops_by_name(const char *kind_name);
const tl_layer_ops *tl_layer_ops_by_kind(int kind);

extern const tl_layer_ops tl_dense_ops;      /* ia: units */
extern const tl_layer_ops tl_flatten_ops;    /* no arguments */
/* ia: activation; fa: parameter (round 1), or alpha beta (hard-sigmoid), or min max (clip) */
extern const tl_layer_ops tl_activation_ops;
extern const tl_layer_ops tl_conv2d_ops;     /* ia: filters kh kw sh sw ph pw dh dw groups bias */
/* maxpool2d ia: kh kw sh sw pt pl [pb pr dh dw ceil_mode]; round 1's 6 pad symmetrically
 * (pb = pt, pr = pl), and arguments() writes that form when the rest are at defaults. */
extern const tl_layer_ops tl_maxpool2d_ops;
/* avgpool2d ia: kh kw sh sw pt pl count_include_pad [pb pr ceil_mode]; 7 as round 1. */
extern const tl_layer_ops tl_avgpool2d_ops;
extern const tl_layer_ops tl_global_avgpool_ops; /* no arguments */
extern const tl_layer_ops tl_batchnorm_ops;  /* fa: eps momentum */
extern const tl_layer_ops tl_dropout_ops;    /* fa: p */
extern const tl_layer_ops tl_add_ops;        /* no arguments; two inputs */
/* Data movement (1.1). Axes count over the example's dims (the batch is not an axis; an
 * ONNX importer subtracts 1 from ONNX axes and refuses axis 0); negative axes count from
 * the end. */
extern const tl_layer_ops tl_concat_ops;     /* ia: axis; 2..TL_MAX_INPUTS inputs */
extern const tl_layer_ops tl_slice_ops;      /* ia: axis start end step (ONNX Slice on one
                                              * axis: negative start/end add the size, then
                                              * clamp to 0..size; step >= 1; not empty) */
extern const tl_layer_ops tl_reshape_ops;    /* ia: rank d0 .. d{rank-1} (rank 1..4; 0 copies
                                              * the input's dim, one -1 is inferred) */
extern const tl_layer_ops tl_transpose_ops;  /* ia: rank p0 .. p{rank-1}: output axis i is
                                              * input axis p[i] (ONNX perm without the batch) */
/* ia: op (enum tlearn_binary_op: 1 add, 2 sub, 3 mul, 4 div); two inputs, NumPy broadcast */
extern const tl_layer_ops tl_binary_ops;
/* ia: rank d0 .. d(rank-1) bias: y = x * weight (+ bias), weight/bias of shape (d...)
 * broadcast to the input (NumPy, right-aligned), weight starts at 1, bias at 0 */
extern const tl_layer_ops tl_scale_ops;
extern const tl_layer_ops tl_softmax_ops;    /* ia: axis over the example, -1 = last */
/* layernorm ia: naxes affine; fa: eps. naxes 1..rank normalises over the last naxes axes
 * (torch.nn.LayerNorm, weight/bias of their shape); 0 over the channel axis d[0] at every
 * position (ConvNeXt's LayerNorm2d, weight/bias (C)). */
extern const tl_layer_ops tl_layernorm_ops;
extern const tl_layer_ops tl_adaptive_avgpool_ops; /* ia: oh ow */
/* pad ia: top left bottom right mode (enum tlearn_pad_mode: 1 constant, 2 reflect, 3 edge);
 * fa: value. Pads the last two axes. */
extern const tl_layer_ops tl_pad_ops;
/* matmul ia: transpose_b; two inputs a (.., M, K), b (.., K, N) or (.., N, K) transposed */
extern const tl_layer_ops tl_matmul_ops;
extern const tl_layer_ops tl_drop_path_ops;  /* fa: p */
extern const tl_layer_ops tl_embedding_ops;  /* ia: vocab dim padding_idx (-1 none) */
extern const tl_layer_ops tl_position_embedding_ops; /* ia: max_len sinusoidal */
extern const tl_layer_ops tl_attention_ops;  /* ia: heads causal [pad_true]; x (T, D) [, mask] */
extern const tl_layer_ops tl_token_pool_ops; /* ia: mode (0 first, 1 mean); x [, mask] */
extern const tl_layer_ops tl_patch_embed_ops; /* ia: dim patch class_token positions */
extern const tl_layer_ops tl_prototype_ops;  /* ia: classes learn_temperature; fa: temperature */

/* The prototype head's class table (layers/prototype.c), changed by lib/fewshot/ between
 * runs. Norms below TL_PROTO_EPS count as TL_PROTO_EPS (torch's F.normalize). */
#define TL_PROTO_EPS 1e-12f
int tl_prototype_classes(const tl_layer *L);
/* max(||row||, TL_PROTO_EPS) of @p rows rows of length d, summed in float in order. */
void tl_row_norms(const float *x, size_t rows, size_t d, float *norm);
/* Append @p add empty classes, or (remove >= 0) drop class @p remove, later ones moving up
 * by one. All or nothing: ESHAPE (no class would be left), ENOMEM. The caller drops plans. */
int tl_prototype_resize(tl_layer *L, int add, int remove);
/* Fold per-class sums of normalised features (classes x D) and example counts into the
 * running means. */
void tl_prototype_accumulate(tl_layer *L, const double *sums, const double *counts);
/* Adapters (1.1), built by lib/adapters/ through the graph-editing seam of model/. */
extern const tl_layer_ops tl_lora_sum_ops;   /* ia: r rslora merged; fa: alpha weight;
                                              * out = in0 + alpha/r (rsLoRA: /sqrt(r))
                                              * * weight * in1, in1 ignored while merged */
/* Domain adaptation (1.1). grad_reverse fa: lambda (identity forward, -lambda * dout back) */
extern const tl_layer_ops tl_grad_reverse_ops;
/* For train/adapt.c: a grad_reverse layer's lambda, checked by tl_grl_check_lambda. */
void tl_grl_set_lambda(tl_layer *L, float lambda);
int tl_grl_check_lambda(const char *what, const char *name, float lambda);

#endif
