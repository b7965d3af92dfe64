/**
 * @file
 * libtlearn: transfer learning on the CPU, behind a stable C ABI.
 *
 * This header is the API reference. Conventions that hold for every function:
 *  - Every function that can fail returns TLEARN_OK (0) or a negative TLEARN_E* code;
 *    tlearn_errmsg() then holds a message for this thread naming the bad argument.
 *  - Handles are opaque. `_create(&out, ...)` makes one, `_destroy(&h)` frees it, accepts
 *    NULL and sets *h to NULL.
 *  - Pointer parameters are borrowed for the duration of the call unless said otherwise;
 *    strings are copied when kept. Output buffers come with their capacity in elements.
 *  - A handle is used by one thread at a time; distinct handles are independent.
 *  - Data is fp32, NCHW, row-major; labels are int32 class indices.
 *
 * SPDX-License-Identifier: BSD-2-Clause
 */
#ifndef TLEARN_TLEARN_H
#define TLEARN_TLEARN_H

#include <stddef.h>
#include <stdint.h>

#include "tlearn/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(TLEARN_BUILDING)
#define TLEARN_API __declspec(dllexport)
#elif defined(__GNUC__) && __GNUC__ >= 4
#define TLEARN_API __attribute__((visibility("default")))
#else
#define TLEARN_API
#endif

/* ------------------------------------------------------------------------------------ */
/** @name Status codes. Values are fixed forever; new codes are only appended. */
/** @{ */
#define TLEARN_OK 0              /**< success */
#define TLEARN_EINVAL (-1)       /**< an argument is invalid (NULL, out of range, wrong length) */
#define TLEARN_ENOMEM (-2)       /**< memory could not be allocated */
#define TLEARN_ESHAPE (-3)       /**< shapes of layers or buffers do not fit together */
#define TLEARN_ENOTFOUND (-4)    /**< a named layer, tensor or pattern matched nothing */
#define TLEARN_EIO (-5)          /**< the operating system refused a file operation */
#define TLEARN_EFORMAT (-6)      /**< a file is corrupt, truncated or not of the expected format */
#define TLEARN_EUNSUPPORTED (-7) /**< valid request this build or version cannot do */
#define TLEARN_ENONFINITE (-8)   /**< the loss or a gradient became NaN/Inf; weights unchanged */
#define TLEARN_ESTATE (-9)       /**< the object is not in a state that allows the call */
#define TLEARN_EVERSION (-10)    /**< a file was written by an incompatible format version */
#define TLEARN_ECANCELED (-11)   /**< a progress callback asked to stop */
/** @} */

/**
 * Short, static description of a status code ("invalid argument", ...).
 * @param status  any value; unknown values give "unknown status".
 * @return a static string; never NULL. Thread-safe.
 * @since 1.0
 */
TLEARN_API const char *tlearn_strerror(int status);

/**
 * Detail of the calling thread's most recent failure, e.g.
 * "tlearn_model_predict: out_len is 90, expected 640 (n=64 x 10)".
 * @return a thread-local string valid until the next libtlearn call on this thread;
 *         "" when nothing failed yet. Never NULL. Thread-safe.
 * @since 1.0
 */
TLEARN_API const char *tlearn_errmsg(void);

/**
 * Version of the library that is running (not the header it was compiled with).
 * @return TLEARN_VERSION_HEX of the library: 0xMMmmpp00. Thread-safe.
 * @since 1.0
 */
TLEARN_API unsigned tlearn_version_hex(void);

/**
 * Version string of the running library, "MAJOR.MINOR.PATCH".
 * @return a static string. Thread-safe.
 * @since 1.0
 */
TLEARN_API const char *tlearn_version_string(void);

/* ------------------------------------------------------------------------------------ */
/** @name Opaque handles */
/** @{ */
typedef struct tlearn_model tlearn_model;   /**< a network, its weights and training state */
typedef struct tlearn_freeze tlearn_freeze; /**< which layers train, at what LR scale */
typedef struct tlearn_optim tlearn_optim;   /**< an update rule and its hyperparameters */
/** @} */

/** Layer kinds, as reported by tlearn_model_layer_kind(). Values are fixed. */
enum tlearn_layer_kind {
    TLEARN_LAYER_DENSE = 1,
    TLEARN_LAYER_FLATTEN = 2,
    TLEARN_LAYER_ACTIVATION = 3,
    TLEARN_LAYER_CONV2D = 4,
    TLEARN_LAYER_MAXPOOL2D = 5,
    TLEARN_LAYER_AVGPOOL2D = 6,
    TLEARN_LAYER_GLOBAL_AVGPOOL = 7,
    TLEARN_LAYER_BATCHNORM = 8,
    TLEARN_LAYER_DROPOUT = 9,
    TLEARN_LAYER_ADD = 10,
    TLEARN_LAYER_BINARY = 11,  /**< add/sub/mul/div of two values, broadcast. @since 1.1 */
    TLEARN_LAYER_SCALE = 12,   /**< x * learned weight (+ bias), broadcast. @since 1.1 */
    TLEARN_LAYER_SOFTMAX = 13, /**< softmax over one axis. @since 1.1 */
    TLEARN_LAYER_CONCAT = 14,    /**< tlearn_model_add_concat() @since 1.1 */
    TLEARN_LAYER_SLICE = 15,     /**< tlearn_model_add_slice() @since 1.1 */
    TLEARN_LAYER_RESHAPE = 16,   /**< tlearn_model_add_reshape() @since 1.1 */
    TLEARN_LAYER_TRANSPOSE = 17, /**< tlearn_model_add_transpose() @since 1.1 */
    TLEARN_LAYER_LAYERNORM = 18,        /**< @since 1.1 */
    TLEARN_LAYER_ADAPTIVE_AVGPOOL = 19, /**< @since 1.1 */
    TLEARN_LAYER_PAD = 20,              /**< @since 1.1 */
    TLEARN_LAYER_MATMUL = 21,           /**< @since 1.1 */
    TLEARN_LAYER_DROP_PATH = 22,        /**< @since 1.1 */
    TLEARN_LAYER_GRAD_REVERSE = 50,     /**< tlearn_model_add_grad_reverse() @since 1.1 */
    /* 1.1: 11-29 general graph ops, 30-39 transformer layers, 40-49 adapters, 50-59
     * domain adaptation, 60- few-shot; each value is added here when its kind lands. */
    TLEARN_LAYER_EMBEDDING = 30,          /**< token ids -> vectors @since 1.1 */
    TLEARN_LAYER_POSITION_EMBEDDING = 31, /**< learned or sinusoidal positions @since 1.1 */
    TLEARN_LAYER_ATTENTION = 32,          /**< fused multi-head self-attention @since 1.1 */
    TLEARN_LAYER_TOKEN_POOL = 33,         /**< first token or masked mean @since 1.1 */
    TLEARN_LAYER_PATCH_EMBED = 34,        /**< ViT patches + class token @since 1.1 */
    TLEARN_LAYER_LORA_SUM = 40,  /**< closes a LoRA branch (tlearn_lora_add()) @since 1.1 */
    TLEARN_LAYER_PROTOTYPE = 60, /**< prototype head (cosine to class means); @since 1.1 */
};

/** Element types of model inputs (tlearn_model_create_input()). Values are fixed. @since 1.1 */
enum tlearn_dtype {
    TLEARN_DTYPE_FLOAT32 = 1,
    TLEARN_DTYPE_INT32 = 2 /**< token ids */
};

/** Activation functions for tlearn_model_add_activation(). Values are fixed. */
enum tlearn_activation {
    TLEARN_ACT_RELU = 1,
    TLEARN_ACT_TANH = 2,
    TLEARN_ACT_SIGMOID = 3,
    TLEARN_ACT_GELU = 4,       /**< exact (erf) form, as torch.nn.GELU() */
    TLEARN_ACT_RELU6 = 5,
    TLEARN_ACT_LEAKY_RELU = 6, /**< param = negative slope (PyTorch default 0.01) */
    TLEARN_ACT_HARDSIGMOID = 7, /**< max(0, min(1, alpha*x + beta)); params alpha, beta
                                     (torch: 1/6, 0.5, the default; ONNX: 0.2, 0.5).
                                     @since 1.1 */
    TLEARN_ACT_HARDSWISH = 8,  /**< x * relu6(x + 3) / 6, as torch.nn.Hardswish. @since 1.1 */
    TLEARN_ACT_SILU = 9,       /**< x * sigmoid(x) (swish), as torch.nn.SiLU. @since 1.1 */
    TLEARN_ACT_CLIP = 10,      /**< min(max(x, lo), hi); params lo, hi (may be infinite), as
                                    torch.clamp. @since 1.1 */
    TLEARN_ACT_GELU_TANH = 11  /**< tanh approximation, torch.nn.GELU(approximate='tanh').
                                    @since 1.1 */
};

/** Loss functions for tlearn_model_set_loss(). Values are fixed. */
enum tlearn_loss {
    TLEARN_LOSS_SOFTMAX_CE = 1, /**< softmax + cross-entropy over int32 labels, batch mean */
    TLEARN_LOSS_MSE = 2,        /**< mean squared error over float targets, mean of all elements */
    /** In-batch contrastive loss (InfoNCE) over the cosine similarity of (anchor, positive)
     *  rows of output 0, for tlearn_model_train_step_pairs(): the mean over anchors of the
     *  cross-entropy of cos(a_i, p_j) / temperature with target j = i, as SimCSE and
     *  sentence-transformers' MultipleNegativesRankingLoss. @since 1.1 */
    TLEARN_LOSS_CONTRASTIVE = 3,
    /** The same averaged with its transpose (positives retrieving anchors), as
     *  MultipleNegativesSymmetricRankingLoss and CLIP: (loss(a->p) + loss(p->a)) / 2.
     *  @since 1.1 */
    TLEARN_LOSS_CONTRASTIVE_SYMMETRIC = 4
};

/* ------------------------------------------------------------------------------------ */
/** @name Building a model */
/** @{ */

/**
 * Create an empty model that takes inputs of shape (channels, height, width).
 * For flat vectors use (features, 1, 1).
 * @param out  receives the new model; owned by the caller, free with tlearn_model_destroy().
 * @return TLEARN_OK, TLEARN_EINVAL (NULL out, a dimension < 1 or a product over 2^31),
 *         TLEARN_ENOMEM.
 * @note The model starts in training mode, with 1 thread, seed 0 and the softmax
 *       cross-entropy loss.
 * @since 1.0
 */
TLEARN_API int tlearn_model_create(tlearn_model **out, int channels, int height, int width);

/**
 * Free a model and everything it owns. NULL and *m == NULL are accepted.
 * @param m  the handle to free; set to NULL.
 * @since 1.0
 */
TLEARN_API void tlearn_model_destroy(tlearn_model **m);

/**
 * Number of threads the model's GEMMs and parallel loops may use (default 1). This is a
 * per-model setting: it never changes BLIS's or OpenMP's global state. More threads than
 * the CPUs the process may run on (sched_getaffinity) are clamped to that number.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, threads < 1 or > 1024).
 * @since 1.0
 */
TLEARN_API int tlearn_model_set_threads(tlearn_model *m, int threads);

/**
 * Seed the model's random generator (initialisation of layers added afterwards, dropout,
 * shuffling in tlearn_model_fit(), sampled Fisher). Same seed, same results.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model).
 * @since 1.0
 */
TLEARN_API int tlearn_model_set_seed(tlearn_model *m, uint64_t seed);

/**
 * Switch between training (1) and evaluation (0) mode: dropout and batchnorm obey it.
 * tlearn_model_train_step() does not change the mode; predict/evaluate/features always
 * compute in evaluation mode without changing the setting.
 * @return TLEARN_OK, TLEARN_EINVAL.
 * @since 1.0
 */
TLEARN_API int tlearn_model_set_training(tlearn_model *m, int training);

/**
 * Choose the loss (a value of enum tlearn_loss). Default TLEARN_LOSS_SOFTMAX_CE.
 * @return TLEARN_OK, TLEARN_EINVAL.
 * @since 1.0
 */
TLEARN_API int tlearn_model_set_loss(tlearn_model *m, int loss);

/**
 * Make the next added layer read its input from the earlier layer @p layer instead of the
 * most recently added one (branches of residual blocks). NULL or "" means the model input.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND (no such layer).
 * @since 1.0
 */
TLEARN_API int tlearn_model_set_next_input(tlearn_model *m, const char *layer);

/**
 * Append a fully connected layer (y = x W^T + b, W is [units, in] as torch.nn.Linear).
 * The input is flattened implicitly. Initialised like PyTorch (Kaiming-uniform, a=sqrt(5);
 * bias uniform in +-1/sqrt(in)).
 * @param name   unique layer name (1..63 bytes, no '*', '?', '[' ); copied.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL/duplicate/too long name, units < 1), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_dense(tlearn_model *m, const char *name, int units);

/**
 * Append a layer that reshapes (C, H, W) to (C*H*W, 1, 1). No parameters.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_flatten(tlearn_model *m, const char *name);

/**
 * Append an elementwise activation (enum tlearn_activation).
 * @param param  negative slope for TLEARN_ACT_LEAKY_RELU; ignored otherwise
 *               (TLEARN_ACT_HARDSIGMOID takes torch's alpha 1/6, beta 0.5).
 * @return TLEARN_OK, TLEARN_EINVAL (unknown activation, bad name, TLEARN_ACT_CLIP: its
 *         bounds need tlearn_model_add_activation_ex()), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_activation(tlearn_model *m, const char *name, int activation,
                                           float param);

/**
 * Append a square 2-D convolution with bias: the common case of tlearn_model_add_conv2d_ex().
 * @return as tlearn_model_add_conv2d_ex().
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_conv2d(tlearn_model *m, const char *name, int filters,
                                       int kernel, int stride, int pad, int groups);

/**
 * Append a 2-D convolution (weights OIHW as torch.nn.Conv2d, PyTorch's default init).
 * @param filters  output channels, a multiple of @p groups.
 * @param kh, kw   kernel size; sh, sw stride (>= 1); ph, pw zero padding (>= 0);
 *                 dh, dw dilation (>= 1).
 * @param groups   divides input and output channels (groups == channels: depthwise).
 * @param bias     1 for a bias term, 0 for none.
 * @return TLEARN_OK, TLEARN_EINVAL (bad numbers or name), TLEARN_ESHAPE (kernel larger than
 *         the padded input, groups not dividing channels), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_conv2d_ex(tlearn_model *m, const char *name, int filters,
                                          int kh, int kw, int sh, int sw, int ph, int pw,
                                          int dh, int dw, int groups, int bias);

/**
 * Append 2-D max pooling (stride 0 means stride = kernel, as PyTorch).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE (pad > kernel/2, empty output), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_maxpool2d(tlearn_model *m, const char *name, int kernel,
                                          int stride, int pad);

/**
 * Append 2-D average pooling (stride 0 means stride = kernel). @p count_include_pad as in
 * torch.nn.AvgPool2d (PyTorch's default is 1).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE, TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_avgpool2d(tlearn_model *m, const char *name, int kernel,
                                          int stride, int pad, int count_include_pad);

/**
 * Append a global average pool: (C, H, W) -> (C, 1, 1).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_global_avgpool(tlearn_model *m, const char *name);

/**
 * Append batch normalisation over channels (after a conv) or features (after a dense).
 * Parameters `weight`, `bias`; buffers `running_mean`, `running_var` (unbiased), as PyTorch.
 * Training mode normalises with batch statistics; the running buffers change only when a
 * train step is accepted. A channel with one value per batch (batch 1 after a dense layer,
 * which PyTorch refuses) normalises to `bias` and adds variance 0 to the running estimate.
 * @param eps       > 0 (PyTorch default 1e-5).  @param momentum  in [0, 1] (default 0.1).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_batchnorm(tlearn_model *m, const char *name, float eps,
                                          float momentum);

/**
 * Append dropout with drop probability @p p in [0, 1); active in training mode only.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_dropout(tlearn_model *m, const char *name, float p);

/**
 * Append a residual sum: output = (previous layer's output) + (output of layer @p other).
 * The first term is the layer set by tlearn_model_set_next_input() when one was set, as
 * for any added layer; @p other may be that same layer (x + x).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE (shapes differ; the
 *         message names both layers and shapes), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_add_add(tlearn_model *m, const char *name, const char *other);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Introspection. Layer indexes run from 0 in the order layers were added. */
/** @{ */

/** Number of layers. @return TLEARN_OK, TLEARN_EINVAL. @since 1.0 */
TLEARN_API int tlearn_model_layer_count(const tlearn_model *m, int *count);

/** Index of the layer called @p name. @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND.
 *  @since 1.0 */
TLEARN_API int tlearn_model_layer_index(const tlearn_model *m, const char *name, int *index);

/**
 * Name of layer @p index; *name is owned by the model, valid until the layer is removed.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, index out of range). @since 1.0
 */
TLEARN_API int tlearn_model_layer_name(const tlearn_model *m, int index, const char **name);

/** Kind (enum tlearn_layer_kind) of layer @p index. @return TLEARN_OK, TLEARN_EINVAL.
 *  @since 1.0 */
TLEARN_API int tlearn_model_layer_kind(const tlearn_model *m, int index, int *kind);

/** Output shape of layer @p index (index -1: the model input; -1-k: input k). Any of c/h/w
 *  may be NULL. Shapes of fewer dimensions read as padded with 1: (D) is (D, 1, 1).
 *  @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE (4 dimensions: use
 *  tlearn_model_layer_shape_nd()). @since 1.0 */
TLEARN_API int tlearn_model_layer_shape(const tlearn_model *m, int index, int *c, int *h,
                                        int *w);

/** Number of trainable parameters (weights and biases, not buffers) of layer @p index.
 *  @return TLEARN_OK, TLEARN_EINVAL. @since 1.0 */
TLEARN_API int tlearn_model_layer_param_count(const tlearn_model *m, int index, size_t *count);

/**
 * Parameter counts of the whole model. Either pointer may be NULL.
 * @param total      all parameters.  @param trainable  those not frozen.
 * @return TLEARN_OK, TLEARN_EINVAL. @since 1.0
 */
TLEARN_API int tlearn_model_param_count(const tlearn_model *m, size_t *total, size_t *trainable);

/**
 * Number of named tensors (parameters and buffers such as BN running statistics).
 * @return TLEARN_OK, TLEARN_EINVAL. @since 1.0
 */
TLEARN_API int tlearn_model_tensor_count(const tlearn_model *m, int *count);

/**
 * Name ("layer.weight", "bn1.running_var"), element count and shape of tensor @p index.
 * Any output pointer may be NULL. *name is owned by the model and stays valid until
 * layers are added or removed. dims receives up to 4 sizes, *ndim their number.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM (first call: the name table). @since 1.0
 */
TLEARN_API int tlearn_model_tensor_info(const tlearn_model *m, int index, const char **name,
                                        size_t *numel, int *ndim, int dims[4]);

/**
 * Copy the tensor called @p name ("fc1.weight") into @p out.
 * @param out_len  capacity of @p out in floats; must equal the tensor's element count.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE (wrong length). @since 1.0
 */
TLEARN_API int tlearn_model_get_tensor(const tlearn_model *m, const char *name, float *out,
                                       size_t out_len);

/**
 * Overwrite the tensor called @p name with @p len floats from @p data (copied).
 * @return TLEARN_OK, TLEARN_EINVAL (NaN/Inf values included, or a negative value in a
 *         batchnorm running_var), TLEARN_ENOTFOUND,
 *         TLEARN_ESHAPE. @since 1.0
 */
TLEARN_API int tlearn_model_set_tensor(tlearn_model *m, const char *name, const float *data,
                                       size_t len);

/**
 * Copy the gradient of parameter @p name computed by the last
 * tlearn_model_compute_gradients() or train step.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE, TLEARN_ESTATE (no
 *         gradient: frozen, a buffer, or nothing computed yet). @since 1.0
 */
TLEARN_API int tlearn_model_get_grad(const tlearn_model *m, const char *name, float *out,
                                     size_t out_len);

/**
 * Bytes of activation and scratch memory planned for the last batch size used (0 before
 * the first computation). Shrinks when a frozen prefix need not be kept for backward.
 * @return TLEARN_OK, TLEARN_EINVAL. @since 1.0
 */
TLEARN_API int tlearn_model_workspace_bytes(const tlearn_model *m, size_t *bytes);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Inference and training */
/** @{ */

/**
 * Run the network in evaluation mode on @p n inputs.
 * @param x        n * C*H*W floats (input shape of the model); borrowed.
 * @param out      receives n * (output size) floats (logits for classification).
 * @param out_len  capacity of @p out in floats; must be exactly n * output size.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE (empty model), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_predict(tlearn_model *m, const float *x, size_t n, float *out,
                                    size_t out_len);

/**
 * Loss and accuracy over a labelled set, in evaluation mode, in batches of up to 256.
 * @param loss      receives the mean loss; may be NULL.
 * @param accuracy  receives the fraction of argmax == label; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (label out of range), TLEARN_ENOMEM, TLEARN_ENONFINITE.
 * @since 1.0
 */
TLEARN_API int tlearn_model_evaluate(tlearn_model *m, const float *x, const int32_t *labels,
                                     size_t n, float *loss, float *accuracy);

/**
 * One optimisation step on a batch: forward (in the model's mode), loss plus any EWC /
 * L2-SP penalty, backward down to the first trainable layer, optimizer update of the
 * trainable parameters. Softmax cross-entropy loss.
 * @param o       update rule; borrowed. Its per-parameter state lives in the model.
 * @param labels  n class indices in [0, classes).
 * @param loss    receives data loss + penalty; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE, TLEARN_ENOMEM, TLEARN_ENONFINITE (the loss,
 *         the penalty (as a float), a gradient, a new weight or optimizer moment, or a
 *         batchnorm running statistic the step would commit is not finite). On
 *         TLEARN_ENONFINITE and TLEARN_ENOMEM no weight, optimizer state or batchnorm
 *         statistic changed.
 * @since 1.0
 */
TLEARN_API int tlearn_model_train_step(tlearn_model *m, tlearn_optim *o, const float *x,
                                       const int32_t *labels, size_t n, float *loss);

/**
 * As tlearn_model_train_step() with the MSE loss against @p targets
 * (n * output size floats). The model's loss must be TLEARN_LOSS_MSE.
 * @since 1.0
 */
TLEARN_API int tlearn_model_train_step_mse(tlearn_model *m, tlearn_optim *o, const float *x,
                                           const float *targets, size_t n, float *loss);

/**
 * Forward and backward without an update, for inspection (tlearn_model_get_grad()) and
 * attribution. Gradients are computed for every parameter that is not frozen.
 * @param dx      receives the gradient of the mean loss w.r.t. the input; may be NULL
 *                (then it is not computed).  @param dx_len  n * input size when dx is set.
 * @return as tlearn_model_train_step().
 * @since 1.0
 */
TLEARN_API int tlearn_model_compute_gradients(tlearn_model *m, const float *x,
                                              const int32_t *labels, size_t n, float *loss,
                                              float *dx, size_t dx_len);

/**
 * Progress callback for tlearn_model_fit(): called after every step.
 * Return 0 to go on, non-zero to stop (fit then returns TLEARN_ECANCELED).
 */
typedef int (*tlearn_progress_fn)(int epoch, int epochs, size_t step, size_t steps_per_epoch,
                                  float loss, void *user);

/**
 * Train for @p epochs over a labelled set in mini-batches, shuffled each epoch by the
 * model's RNG (when @p shuffle is 1); the last partial batch is used.
 * @param progress  may be NULL.  @param user  passed to @p progress.
 * @return as tlearn_model_train_step(), or TLEARN_ECANCELED.
 * @since 1.0
 */
TLEARN_API int tlearn_model_fit(tlearn_model *m, tlearn_optim *o, const float *x,
                                const int32_t *labels, size_t n, size_t batch, int epochs,
                                int shuffle, tlearn_progress_fn progress, void *user);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Optimizers */
/** @{ */

/** Update rules for tlearn_optim_create(). Values are fixed. */
enum tlearn_optim_kind {
    TLEARN_SGD = 1,  /**< torch.optim.SGD */
    TLEARN_ADAM = 2, /**< torch.optim.Adam (L2 weight decay added to the gradient) */
    TLEARN_ADAMW = 3 /**< torch.optim.AdamW (decoupled weight decay) */
};

/** Hyperparameters for tlearn_optim_set(). Values are fixed; new ones are appended. */
enum tlearn_optim_param {
    TLEARN_OPT_LR = 1,           /**< > 0 and <= FLT_MAX; default 0.01 (SGD), 0.001 (Adam) */
    TLEARN_OPT_MOMENTUM = 2,     /**< SGD, in [0, 1); default 0 */
    TLEARN_OPT_DAMPENING = 3,    /**< SGD, in [0, 1]; default 0 */
    TLEARN_OPT_NESTEROV = 4,     /**< SGD, 0 or 1 (needs momentum > 0, dampening 0) */
    TLEARN_OPT_WEIGHT_DECAY = 5, /**< >= 0; default 0 (AdamW: 0.01) */
    TLEARN_OPT_BETA1 = 6,        /**< Adam/AdamW, in [0, 1); default 0.9 */
    TLEARN_OPT_BETA2 = 7,        /**< Adam/AdamW, in [0, 1); default 0.999 */
    TLEARN_OPT_EPS = 8,          /**< Adam/AdamW, > 0; default 1e-8 */
    TLEARN_OPT_CLIP_NORM = 9     /**< clip the global gradient L2 norm to this; 0 = off */
};

/**
 * Create an optimizer with PyTorch's defaults for @p kind.
 * @param out  receives the handle; free with tlearn_optim_destroy().
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, unknown kind), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_optim_create(tlearn_optim **out, int kind);

/** Free an optimizer; NULL-safe, sets *o = NULL. @since 1.0 */
TLEARN_API void tlearn_optim_destroy(tlearn_optim **o);

/**
 * Set a hyperparameter (enum tlearn_optim_param). Takes effect at the next step.
 * @return TLEARN_OK, TLEARN_EINVAL (unknown parameter, parameter not used by this kind,
 *         value out of range; the message gives the range).
 * @since 1.0
 */
TLEARN_API int tlearn_optim_set(tlearn_optim *o, int param, double value);

/** Read a hyperparameter. @return TLEARN_OK, TLEARN_EINVAL. @since 1.0 */
TLEARN_API int tlearn_optim_get(const tlearn_optim *o, int param, double *value);

/** Kind of the optimizer (enum tlearn_optim_kind). @return TLEARN_OK, TLEARN_EINVAL.
 *  @since 1.0 */
TLEARN_API int tlearn_optim_kind(const tlearn_optim *o, int *kind);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Transfer learning: freeze policy, feature extraction, head replacement */
/** @{ */

/**
 * Create an empty freeze policy (nothing frozen, every LR scale 1).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. @since 1.0
 */
TLEARN_API int tlearn_freeze_create(tlearn_freeze **out);

/** Free a policy; NULL-safe, sets *f = NULL. @since 1.0 */
TLEARN_API void tlearn_freeze_destroy(tlearn_freeze **f);

/**
 * Freeze every layer up to and including @p layer (by position in the model it is
 * applied to). Rules apply in the order added; later rules override earlier ones.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, not a valid layer name), TLEARN_ENOMEM. A name
 *         that is not in the model is reported by tlearn_model_apply_freeze(). @since 1.0
 */
TLEARN_API int tlearn_freeze_until(tlearn_freeze *f, const char *layer);

/**
 * Freeze (frozen = 1) or unfreeze (0) every layer whose name matches the shell-style
 * pattern @p glob ('*', '?', '[...]').
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, empty pattern), TLEARN_ENOMEM. A pattern that
 *         matches no layer is reported by tlearn_model_apply_freeze() as TLEARN_ENOTFOUND.
 * @since 1.0
 */
TLEARN_API int tlearn_freeze_match(tlearn_freeze *f, const char *glob, int frozen);

/**
 * Freeze or unfreeze layers with index in [first, last] (inclusive).
 * @return TLEARN_OK, TLEARN_EINVAL (first < 0, last < first), TLEARN_ENOMEM. A range
 *         past the model's last layer is reported by tlearn_model_apply_freeze(). @since 1.0
 */
TLEARN_API int tlearn_freeze_range(tlearn_freeze *f, int first, int last, int frozen);

/**
 * Multiply the learning rate of layers matching @p glob by @p scale (> 0, finite).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. @since 1.0
 */
TLEARN_API int tlearn_freeze_lr_scale(tlearn_freeze *f, const char *glob, float scale);

/**
 * ULMFiT discriminative learning rates: the layers with parameters, from the head back,
 * get scales 1, 1/factor, 1/factor^2, ... (factor 2.6 in the paper; 0 means 2.6), held
 * within the normal floats: a scale below FLT_MIN (1.2e-38; 2.6 over more than about 90
 * layers) becomes FLT_MIN, one above FLT_MAX (a factor below 1) becomes FLT_MAX, so every
 * scale is positive and finite and a saved model always loads.
 * Applied where the policy is applied; later lr_scale rules override it.
 * @return TLEARN_OK, TLEARN_EINVAL (factor < 0 or not finite). @since 1.0
 */
TLEARN_API int tlearn_freeze_ulmfit(tlearn_freeze *f, float factor);

/**
 * Keep batchnorm running statistics frozen (1): BN normalises with and keeps its running
 * statistics even in training mode, whether or not its affine parameters train.
 * @return TLEARN_OK, TLEARN_EINVAL. @since 1.0
 */
TLEARN_API int tlearn_freeze_bn_stats(tlearn_freeze *f, int frozen);

/**
 * Apply a policy to a model. May be called again between steps (gradual unfreezing):
 * optimizer state of newly trainable parameters starts fresh, state of newly frozen ones
 * is released. The model keeps a copy of the outcome; @p f may be destroyed afterwards.
 * @p f NULL unfreezes everything and resets LR scales.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND (a rule names no layer; the message has
 *         the pattern; the model is unchanged), TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_apply_freeze(tlearn_model *m, const tlearn_freeze *f);

/** Whether layer @p layer is frozen. @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND.
 *  @since 1.0 */
TLEARN_API int tlearn_model_layer_frozen(const tlearn_model *m, const char *layer, int *frozen);

/** LR scale of layer @p layer. @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND.
 *  @since 1.0 */
TLEARN_API int tlearn_model_layer_lr_scale(const tlearn_model *m, const char *layer,
                                           float *scale);

/**
 * Activations of layer @p layer for @p n inputs, in evaluation mode, keeping nothing for
 * backward.
 * @param out_len  must be n * (size of the layer's output).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE, TLEARN_ENOMEM. @since 1.0
 */
TLEARN_API int tlearn_model_features(tlearn_model *m, const char *layer, const float *x,
                                     size_t n, float *out, size_t out_len);

/**
 * Feature cache: one training step of the layers after @p layer, from precomputed
 * activations of @p layer (from tlearn_model_features()). Every layer up to and including
 * @p layer must be frozen and no later layer may read from before it.
 * @return as tlearn_model_train_step(), TLEARN_ESTATE (the prefix is not frozen).
 * @since 1.0
 */
TLEARN_API int tlearn_model_train_step_from(tlearn_model *m, tlearn_optim *o, const char *layer,
                                            const float *features, const int32_t *labels,
                                            size_t n, float *loss);

/**
 * Predict from precomputed activations of @p layer (evaluation mode).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE, TLEARN_ENOMEM.
 * @since 1.0
 */
TLEARN_API int tlearn_model_predict_from(tlearn_model *m, const char *layer,
                                         const float *features, size_t n, float *out,
                                         size_t out_len);

/**
 * Drop every layer after @p from_layer and append a fresh dense head named "head" with
 * @p classes outputs (use tlearn_model_add_* afterwards to append more layers). EWC state
 * of removed layers is dropped; the new head is not anchored. Atomic: when the head cannot
 * be built, nothing is removed.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE (the head's weights
 *         would exceed 2^31 elements), TLEARN_ENOMEM. @since 1.0
 */
TLEARN_API int tlearn_model_replace_head(tlearn_model *m, const char *from_layer, int classes);

/**
 * Drop every layer after @p layer (NULL or "" drops all layers).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND. @since 1.0
 */
TLEARN_API int tlearn_model_truncate(tlearn_model *m, const char *layer);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Continual learning: EWC and L2-SP */
/** @{ */

/** Fisher estimators for tlearn_ewc_consolidate(). Values are fixed. */
enum tlearn_fisher {
    TLEARN_FISHER_EMPIRICAL = 1, /**< squared per-example gradients at the true labels */
    TLEARN_FISHER_EXACT = 2,     /**< expectation over classes under the model's softmax */
    TLEARN_FISHER_SAMPLED = 3    /**< one label per example drawn from the model's softmax */
};

/** EWC modes for tlearn_ewc_set_mode(). Values are fixed. */
enum tlearn_ewc_mode {
    TLEARN_EWC_SEPARATE = 1, /**< one anchor and Fisher per consolidated task (default) */
    TLEARN_EWC_ONLINE = 2    /**< one running Fisher F <- gamma F + F_new, latest anchor */
};

/**
 * Choose how successive consolidations combine. Call before the first consolidation.
 * @param gamma  decay in (0, 1] for TLEARN_EWC_ONLINE; ignored for SEPARATE.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESTATE (tasks already consolidated). @since 1.0
 */
TLEARN_API int tlearn_ewc_set_mode(tlearn_model *m, int mode, float gamma);

/**
 * After a task: estimate the diagonal Fisher information of every trainable parameter on
 * @p n labelled examples (evaluation mode) and store it with the current weights as anchor.
 * From then on the training loss includes (lambda/2) * sum_i F_i (theta_i - theta*_i)^2
 * (Kirkpatrick et al. 2017; Avalanche's ewc_lambda is twice this lambda).
 * Parameters frozen at the time get no Fisher and no anchor. In TLEARN_EWC_ONLINE mode the
 * one running task takes the latest @p lambda. Layers removed later (truncate,
 * replace_head) drop out of every task; layers added later are not anchored by earlier
 * consolidations, only by later ones. Per-example gradients are computed at batch 1; the
 * model's RNG is advanced by the sampled estimator only; optimizer state is untouched, and
 * tlearn_model_get_grad() reports no gradient until the next computation.
 * @param estimator  enum tlearn_fisher.  @param lambda  >= 0, finite.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, n == 0, bad estimator, label out of range),
 *         TLEARN_ESHAPE (no layers, fewer than 2 outputs), TLEARN_ESTATE (every layer
 *         frozen, or the loss is not softmax cross-entropy), TLEARN_ENOMEM,
 *         TLEARN_ENONFINITE (nothing is consolidated).
 * @since 1.0
 */
TLEARN_API int tlearn_ewc_consolidate(tlearn_model *m, const float *x, const int32_t *labels,
                                      size_t n, int estimator, float lambda);

/**
 * L2-SP (Li et al. 2018): anchor every current parameter at its present value with
 * penalty (alpha/2) * ||theta - theta0||^2, and (beta/2) * ||theta||^2 on parameters of
 * layers added later (a new head). Replaces any earlier L2-SP anchor.
 * @return TLEARN_OK, TLEARN_EINVAL (negative or non-finite), TLEARN_ENOMEM. @since 1.0
 */
TLEARN_API int tlearn_l2sp_enable(tlearn_model *m, float alpha, float beta);

/** Drop all EWC tasks and the L2-SP anchor (the mode set by tlearn_ewc_set_mode() stays).
 *  @return TLEARN_OK, TLEARN_EINVAL. @since 1.0 */
TLEARN_API int tlearn_ewc_clear(tlearn_model *m);

/**
 * The regularisation penalty at the current weights (EWC plus L2-SP), as added to the
 * loss by the next train step.
 * @return TLEARN_OK, TLEARN_EINVAL. @since 1.0
 */
TLEARN_API int tlearn_model_penalty(const tlearn_model *m, float *penalty);

/**
 * Copy the consolidated Fisher diagonal of parameter @p name for task @p task (0-based;
 * ONLINE mode has one task).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE. @since 1.0
 */
TLEARN_API int tlearn_ewc_get_fisher(const tlearn_model *m, int task, const char *name,
                                     float *out, size_t out_len);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Checkpoints and weight interchange */
/** @{ */

/** Flags for tlearn_model_save(). */
#define TLEARN_SAVE_FULL 0u           /**< weights, buffers, optimizer state, freeze, EWC,
                                           domain-adaptation settings */
#define TLEARN_SAVE_INFERENCE 1u      /**< architecture, weights and buffers only */
/** zlib level 1..9 for each tensor (0: stored raw, 64-byte aligned). */
#define TLEARN_SAVE_COMPRESS(level) (((unsigned)(level) & 15u) << 8)

/** Flags for tlearn_model_load_weights(). */
#define TLEARN_LOAD_STRICT 0u  /**< every model tensor must be in the file and nothing else */
#define TLEARN_LOAD_PARTIAL 1u /**< load what matches by name and shape, report the rest */

/**
 * Save the model to @p path crash-safely: a temporary file in the same directory is
 * written, fsync'ed and renamed over @p path. On failure @p path is untouched and the
 * temporary file removed (a process killed during the save may leave "PATH.tmp-XXXXXX"
 * behind, never a partial @p path). Format: doc/checkpoint-format.md.
 * @p path may be a new name (created with 0666 less the umask), a regular file (replaced,
 * keeping its permission bits) or a symbolic link (followed: its target is replaced, the
 * link stays); a directory, device, FIFO, socket or dangling link is refused (TLEARN_EIO)
 * and left as it is.
 * @param o      optimizer whose hyperparameters are stored with the state; may be NULL.
 *               The per-parameter optimizer state lives in the model and is saved anyway.
 * @param flags  TLEARN_SAVE_* or'ed together (compression level 0..9).
 * @return TLEARN_OK, TLEARN_EINVAL (NULL or empty path, unknown flags), TLEARN_EIO (message
 *         has the OS error, or the target is not a file), TLEARN_ENOMEM, TLEARN_ENONFINITE
 *         (a tensor holds NaN/Inf; nothing is written).
 * @note   Builds the file in memory first: needs about the model's size in extra memory.
 * @since 1.0
 */
TLEARN_API int tlearn_model_save(const tlearn_model *m, const tlearn_optim *o, const char *path,
                                 unsigned flags);

/**
 * Load a checkpoint into a new model (and a new optimizer, when @p optim is not NULL and
 * the file holds one; otherwise *optim is set to NULL). Training resumes exactly where the
 * saved model stopped: optimizer state, freeze state, EWC / L2-SP state and the random
 * generator are restored. The thread count is not (it is the host's: 1 as for a new
 * model). A full file must have its OPTSTATE and FREEZE sections; NaN/Inf tensor values
 * and negative running variances are refused; a file that is not a regular file (a FIFO,
 * a device) is refused without blocking.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_EIO, TLEARN_EFORMAT (corrupt; the message names
 *         the section, tensor and field, expected and found), TLEARN_EVERSION (another
 *         major format version), TLEARN_ENOMEM. On failure *out (and *optim) are NULL.
 * @since 1.0
 */
TLEARN_API int tlearn_model_load(tlearn_model **out, tlearn_optim **optim, const char *path);

/**
 * Load weights and buffers from a checkpoint into an existing model by tensor name.
 * @param flags    TLEARN_LOAD_STRICT or TLEARN_LOAD_PARTIAL.
 * @param matched  receives how many tensors were loaded; may be NULL.
 * @param skipped  receives how many model tensors were left as they were; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_EIO, TLEARN_EFORMAT, TLEARN_EVERSION,
 *         TLEARN_ESHAPE / TLEARN_ENOTFOUND (strict mode: the message names the first
 *         mismatch), TLEARN_ENOMEM. The model is unchanged on failure.
 * @since 1.0
 */
TLEARN_API int tlearn_model_load_weights(tlearn_model *m, const char *path, unsigned flags,
                                         size_t *matched, size_t *skipped);

/**
 * Set a free-form metadata entry saved with the model (both strings copied, up to 4096
 * bytes each). An empty value removes the key.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. @since 1.0
 */
TLEARN_API int tlearn_model_set_metadata(tlearn_model *m, const char *key, const char *value);

/** Read a metadata entry; *value is owned by the model.
 *  @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND. @since 1.0 */
TLEARN_API int tlearn_model_get_metadata(const tlearn_model *m, const char *key,
                                         const char **value);

/** Called once per metadata entry; return non-zero to stop. */
typedef int (*tlearn_metadata_fn)(const char *key, const char *value, void *user);

/**
 * List the metadata of a checkpoint file without loading its weights.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_EIO, TLEARN_EFORMAT, TLEARN_EVERSION. @since 1.0
 */
TLEARN_API int tlearn_checkpoint_read_metadata(const char *path, tlearn_metadata_fn fn,
                                               void *user);

/**
 * Map a tensor name from a file to a model tensor name. Write the model name into
 * @p out (capacity @p out_len) and return 1, or return 0 to skip the tensor.
 */
typedef int (*tlearn_name_map_fn)(const char *file_name, char *out, size_t out_len, void *user);

/**
 * Import weights from a safetensors file (PyTorch state_dict names: "0.weight",
 * "features.3.bias", "bn1.running_var"; layouts as PyTorch; F32, F16, BF16).
 * `*.num_batches_tracked` entries are accepted and ignored. The file is validated as the
 * reference implementation does (header at most 100 MB, strict JSON without duplicate
 * keys, known dtypes, data_offsets contiguous from 0 to the end of the file, sizes equal
 * to shape x dtype size) and every value must be finite.
 * @param map      name mapping; NULL means identity.
 * @param flags    TLEARN_LOAD_STRICT (every model tensor from the file, every file tensor
 *                 into the model, same shapes) or TLEARN_LOAD_PARTIAL (what matches by
 *                 name and shape; other dtypes than F32/F16/BF16 are skipped).
 * @param matched  receives the number of tensors loaded; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_EIO, TLEARN_EFORMAT, TLEARN_ESHAPE,
 *         TLEARN_ENOTFOUND, TLEARN_ENOMEM. The model is unchanged on failure.
 * @since 1.0
 */
TLEARN_API int tlearn_model_import_safetensors(tlearn_model *m, const char *path,
                                               tlearn_name_map_fn map, void *user,
                                               unsigned flags, size_t *matched);

/**
 * Export parameters and buffers to a safetensors file torch can read (F32, names
 * "layer.param", metadata {"format": "pt"}), crash-safely and with the same rules for
 * @p path as tlearn_model_save().
 * BatchNorm's num_batches_tracked is not written (libtlearn keeps no such counter).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_EIO, TLEARN_ENOMEM, TLEARN_ENONFINITE (a tensor
 *         holds NaN/Inf, which import would refuse; nothing is written). @since 1.0
 */
TLEARN_API int tlearn_model_export_safetensors(const tlearn_model *m, const char *path);

/**
 * The bytes tlearn_model_save() would write to a file, in a buffer the library allocates
 * (same format, same checks, same bytes for the same model, optimizer and flags).
 * @param o      optimizer saved with the model; may be NULL.
 * @param flags  TLEARN_SAVE_* or'ed together (compression level 0..9).
 * @param data   receives the buffer, owned by the caller: release it with tlearn_free().
 *               Set to NULL on failure.
 * @param size   receives its length in bytes; 0 on failure.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, data or size; unknown flags),
 *         TLEARN_ENOMEM, TLEARN_ENONFINITE (a tensor holds NaN/Inf; nothing is returned).
 * @note Thread-safe for different models; reads @p m and @p o only (other threads may read
 *       them too, none may change them meanwhile).
 * @since 1.1
 */
TLEARN_API int tlearn_model_save_buffer(const tlearn_model *m, const tlearn_optim *o,
                                        unsigned flags, void **data, size_t *size);

/**
 * Release a buffer the library allocated for the caller (tlearn_model_save_buffer(),
 * tlearn_model_export_safetensors_buffer()). NULL is accepted and does nothing.
 * @note Thread-safe. Never pass memory from another allocator (free() included: the
 *       library's buffers may come from an aligned allocation).
 * @since 1.1
 */
TLEARN_API void tlearn_free(void *p);

/**
 * tlearn_model_load() from @p len bytes at @p data (a checkpoint as tlearn_model_save()
 * or tlearn_model_save_buffer() writes it), with the same validation and the same errors
 * as from a file. The bytes are only read, and not referenced after the call returns.
 * @param out    receives the new model (destroy with tlearn_model_destroy()).
 * @param optim  receives the optimizer the checkpoint holds, or NULL; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL out, or NULL data with len > 0), TLEARN_EFORMAT
 *         (corrupt or truncated: the message names section, field, expected and found),
 *         TLEARN_EVERSION, TLEARN_ENOMEM. On failure *out (and *optim) are NULL.
 * @note Thread-safe (a new model each call).
 * @since 1.1
 */
TLEARN_API int tlearn_model_load_buffer(tlearn_model **out, tlearn_optim **optim,
                                        const void *data, size_t len);

/**
 * tlearn_model_load_weights() from @p len bytes of checkpoint at @p data.
 * @param flags    TLEARN_LOAD_STRICT or TLEARN_LOAD_PARTIAL.
 * @param matched  receives how many tensors were loaded; may be NULL.
 * @param skipped  receives how many model tensors were left as they were; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, NULL data with len > 0, unknown flags),
 *         TLEARN_EFORMAT, TLEARN_EVERSION, TLEARN_ESHAPE / TLEARN_ENOTFOUND (strict mode),
 *         TLEARN_ENOMEM. The model is unchanged on failure.
 * @note Not thread-safe for one model (it writes the weights).
 * @since 1.1
 */
TLEARN_API int tlearn_model_load_weights_buffer(tlearn_model *m, const void *data, size_t len,
                                                unsigned flags, size_t *matched,
                                                size_t *skipped);

/**
 * The bytes tlearn_model_export_safetensors() would write, in a buffer the library
 * allocates (release it with tlearn_free()).
 * @param data  receives the buffer; NULL on failure.
 * @param size  receives its length in bytes; 0 on failure.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, data or size), TLEARN_ENOMEM,
 *         TLEARN_ENONFINITE (a tensor holds NaN/Inf; nothing is returned).
 * @note Reads @p m only; as tlearn_model_save_buffer().
 * @since 1.1
 */
TLEARN_API int tlearn_model_export_safetensors_buffer(const tlearn_model *m, void **data,
                                                      size_t *size);

/**
 * tlearn_model_import_safetensors() from @p len bytes of safetensors at @p data, with the
 * same validation, mapping and flags.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, NULL data with len > 0, unknown flags),
 *         TLEARN_EFORMAT, TLEARN_ESHAPE, TLEARN_ENOTFOUND, TLEARN_ENOMEM. The model is
 *         unchanged on failure.
 * @note Not thread-safe for one model (it writes the weights).
 * @since 1.1
 */
TLEARN_API int tlearn_model_import_safetensors_buffer(tlearn_model *m, const void *data,
                                                      size_t len, tlearn_name_map_fn map,
                                                      void *user, unsigned flags,
                                                      size_t *matched);

/**
 * Build a model from an ONNX file (architecture and weights). Layer names follow the
 * graph ("0.weight" -> layer "0"; weightless nodes take PyTorch's module scope,
 * "/layer1/layer1.0/relu/Relu" -> "layer1.0.relu").
 * Opsets 11 to 17; one graph input of rank 2 to 5 (float, or int64/int32 token ids) with
 * only the batch dynamic (doc/onnx.md lists operators and limits); operators
 * Conv, Gemm, MatMul(+Add), Add (residual), Relu, Clip(0, 6), LeakyRelu, Sigmoid, Tanh,
 * MaxPool, AveragePool (with a zero Pad folded in), GlobalAveragePool,
 * BatchNormalization, Flatten, Reshape (flattening), Identity, Dropout (identity),
 * Constant and the Shape arithmetic before a Reshape. A final Softmax is dropped: the
 * model outputs logits. The model starts in training mode like tlearn_model_create().
 * The file is mapped, not read into memory; the peak is about the model's size.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_EIO, TLEARN_EFORMAT, TLEARN_EUNSUPPORTED (an
 *         operator, attribute or feature not handled, or a build without ONNX support; the
 *         message lists every node that cannot be imported), TLEARN_ENOMEM. *out is NULL
 *         on failure.
 * @since 1.0
 */
TLEARN_API int tlearn_model_import_onnx(tlearn_model **out, const char *path);

/** As tlearn_model_import_onnx(), from @p len bytes at @p data (borrowed). @since 1.0 */
TLEARN_API int tlearn_model_import_onnx_buffer(tlearn_model **out, const void *data, size_t len);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name ONNX export (1.1): a model for other runtimes */
/** @{ */

/**
 * Write the model's evaluation graph as an ONNX file, so that a model built or fine-tuned
 * here runs in other runtimes: dropout, drop path and gradient reversal are identities,
 * BatchNorm uses its running statistics, a LoRA branch is its ops (Mul, Add) or nothing
 * once merged. Weights are initializers named as the model's tensors ("layer.param");
 * graph inputs take the model inputs' names and element types (FLOAT, or INT32 token ids)
 * with a symbolic batch dimension "N"; graph outputs are the model's outputs
 * (tlearn_model_set_outputs()), named as their layers. Layers the outputs do not depend
 * on are left out. doc/onnx.md ("Export") lists the operators each layer kind becomes.
 * The file is written as tlearn_model_save() writes: to a temporary file renamed over
 * @p path. The training state (optimizer, freeze flags) is not written.
 * @param m      the model (not changed).
 * @param path   destination file.
 * @param opset  default-domain opset: 13 to 17, or 0 for 17.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL or empty argument, opset out of range),
 *         TLEARN_ESTATE (no layers), TLEARN_ENONFINITE (a tensor holds NaN/Inf; nothing is
 *         written), TLEARN_EUNSUPPORTED (layers of a kind with no ONNX mapping, all named in
 *         the message; a build without ONNX support; a model over protobuf's 2 GiB),
 *         TLEARN_EIO, TLEARN_ENOMEM.
 * @note Reads the model: do not change it from another thread meanwhile. @since 1.1
 */
TLEARN_API int tlearn_model_export_onnx(const tlearn_model *m, const char *path, int opset);

/**
 * As tlearn_model_export_onnx(), into memory: on success *@p data holds *@p size bytes
 * allocated by the library (free them with tlearn_free()); on failure *@p data is NULL and
 * *@p size 0.
 * @return as tlearn_model_export_onnx(), TLEARN_EINVAL also for NULL @p data or @p size.
 * @since 1.1
 */
TLEARN_API int tlearn_model_export_onnx_buffer(const tlearn_model *m, int opset, void **data,
                                               size_t *size);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name General graphs (1.1): inputs of any rank, layers with several inputs */
/** @{ */

/** The most dimensions an example (and so a layer output) has after the batch. @since 1.1 */
#define TLEARN_MAX_RANK 4

/**
 * Create an empty model whose first input is named @p name and holds, per example, an
 * array of @p rank dimensions @p dims: images (C, H, W), sequences (T, D), token ids (T)
 * with TLEARN_DTYPE_INT32, vectors (D). tlearn_model_create(&m, c, h, w) equals
 * tlearn_model_create_input(&m, "input", TLEARN_DTYPE_FLOAT32, 3, (int[]){c, h, w}).
 * @param out   receives the new model; owned by the caller, free with tlearn_model_destroy().
 * @param name  input name (layer-name rules; shares the namespace with layers); copied.
 * @param dtype enum tlearn_dtype.
 * @param rank  1..TLEARN_MAX_RANK.  @param dims  @p rank sizes >= 1; borrowed.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL argument, bad name, dtype, rank or size, a product
 *         over 2^31), TLEARN_ENOMEM. *out is NULL on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_create_input(tlearn_model **out, const char *name, int dtype,
                                         int rank, const int *dims);

/**
 * Add another graph input (attention masks, a second image). Layers read it by name
 * (tlearn_model_set_next_input(), or the input lists of multi-input add calls).
 * Arguments as tlearn_model_create_input(); at most 8 inputs.
 * @return TLEARN_OK, TLEARN_EINVAL (also a name already used), TLEARN_ESTATE (8 inputs
 *         already). Nothing changes on failure.
 * @note Calls that take a single array x (predict, train_step, ...) work on models with one
 *       input only; they return TLEARN_ESTATE otherwise.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_input(tlearn_model *m, const char *name, int dtype, int rank,
                                      const int *dims);

/** Number of model inputs (1..8). @return TLEARN_OK, TLEARN_EINVAL. @since 1.1 */
TLEARN_API int tlearn_model_input_count(const tlearn_model *m, int *count);

/**
 * Name and element type of model input @p k (its shape: tlearn_model_layer_shape_nd() at
 * index -1-k). Either output pointer may be NULL; *name is owned by the model.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, k out of range). @since 1.1
 */
TLEARN_API int tlearn_model_input_info(const tlearn_model *m, int k, const char **name,
                                       int *dtype);

/**
 * Output shape of layer @p index, or of model input k for index -1-k.
 * @param rank  receives the number of dimensions after the batch (1..TLEARN_MAX_RANK).
 * @param dims  receives min(rank, cap) sizes; may be NULL when @p cap is 0.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model or rank, index out of range).
 * @since 1.1
 */
TLEARN_API int tlearn_model_layer_shape_nd(const tlearn_model *m, int index, int *rank,
                                           int *dims, int cap);

/**
 * Add a linear layer over the last axis, as torch.nn.Linear: (..., K) -> (..., units),
 * weight (units, K), optional bias. Unlike tlearn_model_add_dense(), which flattens each
 * example first, it keeps the other axes (sequences (T, D), channels-last images).
 * @param bias 1 for a bias, 0 for none.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_linear(tlearn_model *m, const char *name, int units, int bias);

/**
 * Declare the graph outputs: the layers named in @p layers, in that order (a class head and
 * a domain head, features and logits). Output 0 is what the single-output calls
 * (tlearn_model_predict(), train_step, evaluate, fit, EWC) read and train; other outputs
 * then contribute nothing to their gradients. @p count 0 restores the default: the last
 * layer alone. Removing layers (truncate, replace_head) drops the outputs among them;
 * layers added later are not outputs unless declared.
 * @param layers  @p count layer names; borrowed.  @param count  0..8.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, a name twice, count out of range),
 *         TLEARN_ENOTFOUND. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_set_outputs(tlearn_model *m, const char *const *layers, int count);

/** Number of graph outputs (1 for a model with layers and no declared outputs, 0 for an
 *  empty one). @return TLEARN_OK, TLEARN_EINVAL. @since 1.1 */
TLEARN_API int tlearn_model_output_count(const tlearn_model *m, int *count);

/** Layer index of graph output @p k. @return TLEARN_OK, TLEARN_EINVAL. @since 1.1 */
TLEARN_API int tlearn_model_output_layer(const tlearn_model *m, int k, int *index);

/**
 * Inference with every model input and every graph output: the general form of
 * tlearn_model_predict(). Evaluation mode (dropout off, BatchNorm on running statistics),
 * chunked and threaded like predict.
 * @param inputs    one array per model input, in the order the inputs were added, each n
 *                  examples of that input's shape: float32, or int32 for
 *                  TLEARN_DTYPE_INT32 inputs; borrowed.
 * @param ninputs   the model's input count.  @param n  examples, >= 1.
 * @param outputs   one buffer per graph output (tlearn_model_output_count()); filled.
 * @param out_lens  their capacities in floats: each exactly n x that output's size.
 * @param noutputs  the model's output count.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, counts or sizes that differ, values an input's
 *         layer refuses such as token ids out of range), TLEARN_ESHAPE (no layers),
 *         TLEARN_ENOMEM. Outputs are unspecified on failure; the model is unchanged.
 * @since 1.1
 */
TLEARN_API int tlearn_model_run(tlearn_model *m, const void *const *inputs, int ninputs,
                                size_t n, float *const *outputs, const size_t *out_lens,
                                int noutputs);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Data movement (1.1): concat, slice, reshape, transpose
 *  Axes count over the dims of one example (the batch is not an axis): 0 is the channel
 *  axis of (C, H, W); negative axes count from the end (-1 is the last). None of these
 *  layers has parameters. */
/** @{ */

/**
 * Add a concatenation of @p ninputs outputs along @p axis, as torch.cat (DenseNet's
 * feature concatenation, Inception's branches, SqueezeNet's fire modules). The inputs
 * have the same rank and equal dims except along @p axis, where the output's size is the
 * sum of theirs. The same layer may appear more than once.
 * The layer does not read the previous layer unless it is named in @p inputs, and
 * tlearn_model_set_next_input() does not apply to it (it is reset, as by any add call).
 * @param inputs   @p ninputs names of earlier layers or model inputs; borrowed.
 * @param ninputs  2..256.  @param axis  -rank..rank-1.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, name, inputs or entry, bad name, ninputs out
 *         of range), TLEARN_ENOTFOUND (an unknown input name), TLEARN_ESHAPE (axis out of
 *         range, ranks or other dims differ: the message names the input and shapes),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @note As every call on a model: one thread at a time per model.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_concat(tlearn_model *m, const char *name,
                                       const char *const *inputs, int ninputs, int axis);

/**
 * Add a slice of the next input along @p axis, as x[..., start:end:step, ...] in NumPy and
 * ONNX Slice on one axis: a negative start or end counts from the end (adds the axis size),
 * then both are clamped to 0..size, so INT_MAX as @p end means "to the end". The output has
 * ceil((end - start) / step) entries along @p axis. A split into parts (ShuffleNetV2) is one
 * slice per part, each after tlearn_model_set_next_input() on the same layer.
 * @param step  >= 1 (negative steps are not supported).
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model or name, bad name, step < 1), TLEARN_ESHAPE
 *         (axis out of range, empty slice), TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_slice(tlearn_model *m, const char *name, int axis, int start,
                                      int end, int step);

/**
 * Add a reshape of the next input to a per-example shape of @p rank dims holding the same
 * number of elements (torch.reshape / ONNX Reshape without the batch dim). A 0 in @p dims
 * copies the input's dim at that index; one -1 is inferred from the others.
 * Data keep their order; the layer copies them (one pass over memory).
 * @param rank  1..TLEARN_MAX_RANK.  @param dims  @p rank entries >= -1; borrowed.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, name or dims, bad name, rank out of range,
 *         an entry < -1, two -1), TLEARN_ESHAPE (the element counts differ, or a 0 beyond
 *         the input's rank), TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_reshape(tlearn_model *m, const char *name, int rank,
                                        const int *dims);

/**
 * Add a permutation of the next input's axes (torch.permute without the batch dim): output
 * axis i is input axis @p perm[i], e.g. {1, 2, 0} turns (C, H, W) into channels-last
 * (H, W, C). ShuffleNet's channel shuffle of g groups is reshape (g, C/g, H, W), transpose
 * {1, 0, 2, 3}, reshape (C, H, W).
 * @param rank  the input's rank (1..TLEARN_MAX_RANK).  @param perm  a permutation of
 *              0..rank-1; borrowed.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, name or perm, bad name, rank out of range,
 *         perm not a permutation), TLEARN_ESHAPE (rank differs from the input's),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_transpose(tlearn_model *m, const char *name, int rank,
                                          const int *perm);
/** Operations of tlearn_model_add_binary(). Values are fixed. @since 1.1 */
enum tlearn_binary_op {
    TLEARN_BINARY_ADD = 1,
    TLEARN_BINARY_SUB = 2, /**< a - b */
    TLEARN_BINARY_MUL = 3,
    TLEARN_BINARY_DIV = 4  /**< a / b, IEEE division (b = 0 gives an infinity or NaN) */
};

/**
 * Add an elementwise a op b of two values (layers or model inputs) with NumPy/ONNX
 * broadcasting of the example shapes; the batch is shared. Shapes align on the right,
 * and along each dimension the sizes are equal or one of them is 1, which stretches:
 * (C, 1, 1) x (C, H, W) gates channels (squeeze-excitation), (1, H, W) + (C, H, W) adds a
 * map to every channel, (C, H, 1) - (1, H, W) gives (C, H, W), and a vector (W) applies along
 * the LAST axis of (C, H, W), as in NumPy; a per-channel vector must be given as (C, 1, 1).
 * The output has the broadcast shape; each input's gradient is summed over the dimensions
 * it was stretched along. Unlike tlearn_model_add_add(), shapes need not be equal.
 * @param op  enum tlearn_binary_op.
 * @param a   the left operand by name, or NULL for the value the next layer would read
 *            (the previous layer, or the one set by tlearn_model_set_next_input()).
 * @param b   the right operand by name; may equal @p a (x * x). Names are borrowed.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model or b, bad name, unknown op),
 *         TLEARN_ENOTFOUND (no layer or input named a or b), TLEARN_ESHAPE (shapes do not
 *         broadcast), TLEARN_ENOMEM. Nothing changes on failure.
 * @note Same thread rules as every call on a model: one thread at a time.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_binary(tlearn_model *m, const char *name, int op,
                                       const char *a, const char *b);

/**
 * Add y = x * weight (+ bias) with a learned weight (initialised to 1) and optional bias
 * (initialised to 0) of shape @p dims, broadcast to the input as in tlearn_model_add_binary()
 * and never larger than it: (C, 1, 1) scales the channels of a (C, H, W) map, (D) the last
 * axis of a sequence (T, D) or channels-last map (H, W, C) (ConvNeXt's layer scale). Tensors
 * "NAME.weight", "NAME.bias" have the shape @p dims.
 * @param rank  1..TLEARN_MAX_RANK, at most the input's rank.
 * @param dims  @p rank sizes >= 1; borrowed.  @param bias  1 for a bias, 0 for none.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model or dims, bad name, rank, size or bias flag),
 *         TLEARN_ESHAPE (the weight does not broadcast to the input's shape), TLEARN_ENOMEM.
 *         Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_scale(tlearn_model *m, const char *name, int rank,
                                      const int *dims, int bias);

/**
 * Add an activation with its parameters (enum tlearn_activation):
 * TLEARN_ACT_LEAKY_RELU {slope} (none: 0.01); TLEARN_ACT_HARDSIGMOID {alpha, beta} (none:
 * torch's 1/6, 0.5; one: alpha with beta 0.5); TLEARN_ACT_CLIP {lo, hi}, both required,
 * lo <= hi, infinities allowed. The others take no parameter (one value is accepted and
 * ignored, as tlearn_model_add_activation() passes it).
 * Gradients at the kinks are torch's: clip passes the gradient for lo <= x <= hi,
 * hard-sigmoid only strictly inside (0, 1), hard-swish is (x/3 + 0.5) on [-3, 3) and 1 from
 * 3 on (torch's vectorised kernel; its scalar loop gives 1.5 at exactly 3).
 * @param params  @p nparams floats (0..2), borrowed; may be NULL when @p nparams is 0.
 * @return TLEARN_OK, TLEARN_EINVAL (unknown activation, a parameter count the activation
 *         does not take, a NaN, an infinity other than clip's bounds, lo > hi, bad name),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_activation_ex(tlearn_model *m, const char *name,
                                              int activation, const float *params,
                                              int nparams);

/**
 * Add a softmax over axis @p axis of each example, as torch.softmax(x, dim) on the example
 * dimensions (the batch is not counted): 0 is the first dimension, -1 the last. Numerically
 * stable (the maximum is subtracted first); the output has the input's shape.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, bad name, axis outside
 *         -TLEARN_MAX_RANK..TLEARN_MAX_RANK-1), TLEARN_ESHAPE (axis beyond the input's rank),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_softmax(tlearn_model *m, const char *name, int axis);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Transformers (1.1): token and patch inputs, attention, pooling */
/** @{ */

/**
 * Append a token embedding, as torch.nn.Embedding(vocab, dim, padding_idx): int32 token ids
 * (T) -> (T, dim), parameter `weight` (vocab, dim), initialised N(0, 1) with the padding row
 * zero. The layer reads the next input, which must be an int32 model input
 * (tlearn_model_create_input() with TLEARN_DTYPE_INT32, rank 1). Calls that run the model
 * refuse ids outside 0..vocab-1 with TLEARN_EINVAL naming the layer and the input, before
 * anything runs.
 * @param vocab        number of rows, >= 1.  @param dim  vector size, >= 1.
 * @param padding_idx  a row that gets no gradient (and starts at zero), or -1 for none.
 * @return TLEARN_OK, TLEARN_EINVAL (bad name or numbers, the next input is not an int32
 *         model input), TLEARN_ESHAPE (input not (T)), TLEARN_ENOMEM. Nothing changes on
 *         failure.
 * @note Kind TLEARN_LAYER_EMBEDDING. One thread per model, as every add call.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_embedding(tlearn_model *m, const char *name, int vocab, int dim,
                                          int padding_idx);

/**
 * Append position embeddings added to a sequence (T, D): out[t] = x[t] + weight[t], weight
 * (max_len, D). Learned (a parameter, initialised N(0, 0.02^2)) or sinusoidal (fixed, a
 * buffer: sin(t / 10000^(2i/D)) in column 2i, cos in column 2i+1).
 * @param max_len     rows of the table, >= T of the input.
 * @param sinusoidal  0 learned, 1 sinusoidal.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE (input not (T, D), or T > max_len),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @note Kind TLEARN_LAYER_POSITION_EMBEDDING.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_position_embedding(tlearn_model *m, const char *name,
                                                   int max_len, int sinusoidal);

/**
 * Append multi-head self-attention over a sequence (T, D) as one layer, with the parameters
 * of torch.nn.MultiheadAttention(D, heads, batch_first=True): `in_proj_weight` (3D, D) and
 * `in_proj_bias` (3D) (Q, K, V stacked), `out_proj.weight` (D, D), `out_proj.bias` (D), so a
 * layer named "enc.self_attn" has tensors named as that module's state_dict. Scaled
 * dot-product attention per head (D / heads each), softmax over the keys.
 * @param heads   divides D.
 * @param causal  1: position t attends to positions <= t only; 0: to all.
 * @param mask    NULL, or the name of a key-padding mask (T) per example: a model input
 *                (int32, as a tokenizer's attention_mask, or float32) or a layer, 1 keep,
 *                0 pad (model inputs with other values are refused when the model runs).
 *                Padded positions receive no attention; a query with no position to attend
 *                to gets zero weights (PyTorch gives NaN). Borrowed.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND (no such mask), TLEARN_ESHAPE (input not
 *         (T, D), D not a multiple of heads, mask not (T)), TLEARN_ENOMEM. Nothing changes on
 *         failure.
 * @note Kind TLEARN_LAYER_ATTENTION. Attention weights are not dropped out. Training keeps
 *       4 x T x D floats per example; no more than one head's T x T scores exist at a time.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_attention(tlearn_model *m, const char *name, int heads,
                                          int causal, const char *mask);

/**
 * Append pooling of a sequence (T, D) into a vector (D): the first token (BERT's [CLS], ViT's
 * class token) or the mean over the positions (those the mask keeps, with a mask).
 * @param mean  0 first token, 1 mean.
 * @param mask  NULL, or a mask (T) as for tlearn_model_add_attention(); mean pooling only.
 *              An example whose mask keeps nothing pools to zeros.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESHAPE, TLEARN_ENOMEM. Nothing
 *         changes on failure.
 * @note Kind TLEARN_LAYER_TOKEN_POOL.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_token_pool(tlearn_model *m, const char *name, int mean,
                                           const char *mask);

/**
 * Append ViT's patch embedding, laid out as torchvision's VisionTransformer: an image
 * (C, H, W) cut into patch x patch squares (row-major order), each projected to @p dim by
 * `conv_proj.weight` (dim, C, patch, patch) and `conv_proj.bias` (dim), then the learned
 * `class_token` (1, 1, dim) prepended and the learned `pos_embedding` (1, T, dim) added
 * (torchvision's encoder.pos_embedding). Output (T, dim), T = (H/patch)(W/patch) + 1 (no +1
 * without a class token).
 * @param class_token  1 to prepend it, 0 not.  @param positions  1 to add them, 0 not.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE (input not (C, H, W), H or W not a multiple
 *         of patch), TLEARN_ENOMEM. Nothing changes on failure.
 * @note Kind TLEARN_LAYER_PATCH_EMBED.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_patch_embed(tlearn_model *m, const char *name, int dim,
                                            int patch, int class_token, int positions);

/**
 * Append the layers of torch.nn.TransformerEncoderLayer(D, heads, ff_dim, dropout,
 * activation, batch_first=True, norm_first) over the next input, a sequence (T, D), named
 * after its state_dict: `name.self_attn` (tlearn_model_add_attention()), `name.linear1`,
 * `name.linear2`, `name.norm1`, `name.norm2` (layer norm over D, eps 1e-5), so tensors are
 * `name.self_attn.in_proj_weight`, `name.linear1.weight`, `name.norm1.bias`, ... as in
 * PyTorch. Post-norm (norm_first 0): x = norm1(x + dropout1(self_attn(x))), then
 * x = norm2(x + dropout2(linear2(dropout(activation(linear1(x)))))); pre-norm (1):
 * x = x + dropout1(self_attn(norm1(x))), then x = x + dropout2(linear2(dropout(activation(
 * linear1(norm2(x)))))). Also added: `name.activation`, the residual sums `name.add1`,
 * `name.add2`, and, when dropout > 0, `name.dropout`, `name.dropout1`, `name.dropout2`. The
 * last layer is the block's output. Attention weights are not dropped out.
 * @param heads       divides D.  @param ff_dim  the feed-forward width, >= 1.
 * @param activation  enum tlearn_activation: TLEARN_ACT_RELU (PyTorch's default),
 *                    TLEARN_ACT_GELU, or another kind.
 * @param norm_first  0 post-norm (PyTorch's default), 1 pre-norm.
 * @param dropout     in [0, 1) (PyTorch's default 0.1); active in training mode only.
 * @param mask        NULL, or a key-padding mask (T) for the attention, as in
 *                    tlearn_model_add_attention(); borrowed.
 * @return TLEARN_OK, TLEARN_EINVAL (bad name, a layer name already used, bad numbers),
 *         TLEARN_ENOTFOUND (no such mask), TLEARN_ESHAPE (input not (T, D), heads do not
 *         divide D), TLEARN_ENOMEM. Nothing changes on failure (layers added before the
 *         failure are removed).
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_transformer_block(tlearn_model *m, const char *name, int heads,
                                                  int ff_dim, int activation, int norm_first,
                                                  float dropout, const char *mask);

/**
 * One training step over a model of several inputs (token ids and a mask, an image and
 * metadata): the general form of tlearn_model_train_step(), with the same loss
 * (TLEARN_LOSS_SOFTMAX_CE on graph output 0), optimizer, checks and all-or-nothing update.
 * @param inputs   one array per model input, in the order the inputs were added, each n
 *                 examples of that input's shape (float32, or int32 for TLEARN_DTYPE_INT32
 *                 inputs); borrowed.
 * @param ninputs  the model's input count.
 * @param labels   n class indexes in 0..classes-1.  @param loss  receives the loss; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, counts that differ, values a layer refuses such as
 *         token ids out of range or a mask that is not 0/1, labels out of range),
 *         TLEARN_ESTATE (the loss is MSE), TLEARN_ESHAPE, TLEARN_ENONFINITE, TLEARN_ENOMEM.
 *         A failed step changes nothing.
 * @since 1.1
 */
TLEARN_API int tlearn_model_train_step_inputs(tlearn_model *m, tlearn_optim *o,
                                              const void *const *inputs, int ninputs,
                                              const int32_t *labels, size_t n, float *loss);

/**
 * Gradients without an update over a model of several inputs: the general form of
 * tlearn_model_compute_gradients(). Parameter gradients are read with
 * tlearn_model_get_grad().
 * @param inputs, ninputs, labels, n  as tlearn_model_train_step_inputs().
 * @param loss    receives the loss; may be NULL.
 * @param dx      receives the gradient w.r.t. the first model input (n x its size floats),
 *                which must then be float32; NULL when not wanted.
 * @param dx_len  capacity of @p dx in floats.
 * @return TLEARN_OK, TLEARN_EINVAL (as train_step_inputs, dx for an int32 first input, a
 *         dx_len that differs), TLEARN_ESTATE, TLEARN_ESHAPE, TLEARN_ENONFINITE, TLEARN_ENOMEM.
 * @since 1.1
 */
TLEARN_API int tlearn_model_compute_gradients_inputs(tlearn_model *m, const void *const *inputs,
                                                     int ninputs, const int32_t *labels,
                                                     size_t n, float *loss, float *dx,
                                                     size_t dx_len);

/**
 * One training step with cross-entropy at every position (masked-token prediction): graph
 * output 0 of shape (..., classes), e.g. (T, vocab) logits, is compared position by position
 * with @p labels, as torch.nn.functional.cross_entropy(logits.reshape(-1, classes),
 * labels.reshape(-1), ignore_index=ignore_index): the mean over the positions whose label is
 * not @p ignore_index. The model's loss must be TLEARN_LOSS_SOFTMAX_CE (the default).
 * @param inputs, ninputs  one array per model input, as tlearn_model_train_step_inputs().
 * @param labels        n x positions labels (positions = output size / classes), each in
 *                      0..classes-1 or equal to @p ignore_index; borrowed.
 * @param ignore_index  the label of positions that count for nothing (-100 as in PyTorch).
 * @param loss          receives the loss; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (as train_step_inputs; a label out of range; every label
 *         ignored), TLEARN_ESTATE (the loss is MSE), TLEARN_ESHAPE (fewer than 2 classes),
 *         TLEARN_ENONFINITE, TLEARN_ENOMEM. A failed step changes nothing.
 * @since 1.1
 */
TLEARN_API int tlearn_model_train_step_tokens(tlearn_model *m, tlearn_optim *o,
                                              const void *const *inputs, int ninputs,
                                              const int32_t *labels, int32_t ignore_index,
                                              size_t n, float *loss);

/**
 * The gradients of tlearn_model_train_step_tokens()'s loss without an update (read them with
 * tlearn_model_get_grad()). Arguments and return codes as that call.
 * @since 1.1
 */
TLEARN_API int tlearn_model_compute_gradients_tokens(tlearn_model *m, const void *const *inputs,
                                                     int ninputs, const int32_t *labels,
                                                     int32_t ignore_index, size_t n,
                                                     float *loss);

/**
 * Temperature of the contrastive losses (TLEARN_LOSS_CONTRASTIVE, _SYMMETRIC): the cosine
 * similarities are divided by it before the softmax. Default 0.05 (SimCSE's, and
 * sentence-transformers' scale 20). Not saved in checkpoints.
 * @param temperature  > 0 and finite.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, temperature <= 0, NaN or infinite).
 * @since 1.1
 */
TLEARN_API int tlearn_model_set_contrastive_temperature(tlearn_model *m, float temperature);

/**
 * One training step of a sentence (or image) encoder on (anchor, positive) pairs with the
 * in-batch contrastive loss chosen by tlearn_model_set_loss() (TLEARN_LOSS_CONTRASTIVE or
 * TLEARN_LOSS_CONTRASTIVE_SYMMETRIC): the batch holds 2P rows, row i (i < P) the anchor and
 * row P + i its positive; every other positive of the batch is a negative of anchor i.
 * Graph output 0, flattened per row, is the embedding; the loss is the cross-entropy of
 * S[i][j] = cos(a_i, p_j) / temperature with target i, averaged over anchors (rows of S;
 * symmetric: also over positives, columns of S, and the two halves averaged). Both halves
 * run through one forward and one backward of the same model, so dropout draws differ per
 * row: feeding the same sentences twice is SimCSE's unsupervised objective.
 * @param inputs, ninputs  one array per model input, each of @p n rows (anchors first, then
 *                         their positives in the same order), as
 *                         tlearn_model_train_step_inputs().
 * @param n       rows: 2 x pairs, even and >= 4 (at least one negative per anchor).
 * @param loss    receives the loss (+ any EWC/L2-SP penalty); may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL argument, n odd or < 4, as train_step_inputs),
 *         TLEARN_ESTATE (the model's loss is not contrastive), TLEARN_ENONFINITE (the loss or
 *         a gradient is NaN/Inf), TLEARN_ENOMEM. A failed step changes nothing.
 * @note Not thread-safe on one model, as every training call.
 * @since 1.1
 */
TLEARN_API int tlearn_model_train_step_pairs(tlearn_model *m, tlearn_optim *o,
                                             const void *const *inputs, int ninputs, size_t n,
                                             float *loss);

/**
 * The gradients of tlearn_model_train_step_pairs()'s loss without an update (read them with
 * tlearn_model_get_grad()), and optionally the gradient w.r.t. the first model input.
 * @param inputs, ninputs, n  as tlearn_model_train_step_pairs().
 * @param loss    receives the loss; may be NULL.
 * @param dx      receives the gradient w.r.t. the first model input (n x its size floats),
 *                which must then be float32; NULL when not wanted.
 * @param dx_len  capacity of @p dx in floats.
 * @return as tlearn_model_train_step_pairs(); TLEARN_EINVAL also for dx with an int32 first
 *         input or a dx_len that differs.
 * @since 1.1
 */
TLEARN_API int tlearn_model_compute_gradients_pairs(tlearn_model *m, const void *const *inputs,
                                                    int ninputs, size_t n, float *loss,
                                                    float *dx, size_t dx_len);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Normalisation, pooling, padding, matmul, stochastic depth (1.1) */
/** @{ */

/**
 * Append layer normalisation over the last @p naxes axes of each example, as
 * torch.nn.LayerNorm(normalized_shape) with normalized_shape those axes: every group of
 * them is normalised by its own mean and biased variance, y = (x - mean) / sqrt(var + eps)
 * * weight + bias. For the channels of a (C, H, W) map see
 * tlearn_model_add_layernorm_channels().
 * @param naxes   1..rank of the input.
 * @param eps     > 0 and finite (PyTorch default 1e-5).
 * @param affine  1: learned `weight` (initialised to 1) and `bias` (0) of the normalised
 *                shape, as elementwise_affine=True; 0: none.
 * @return TLEARN_OK, TLEARN_EINVAL (bad name or numbers, naxes < 1), TLEARN_ESHAPE (naxes
 *         larger than the input's rank), TLEARN_ENOMEM. Nothing changes on failure.
 * @note The layer's kind is TLEARN_LAYER_LAYERNORM; thread-safety as every add call (one
 *       thread per model).
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_layernorm(tlearn_model *m, const char *name, int naxes,
                                          float eps, int affine);

/**
 * Append layer normalisation over the channel axis: for an input (C, ...) each position is
 * normalised over its C values, as ConvNeXt's LayerNorm2d (torch.nn.LayerNorm(C) applied to
 * the channels-last permutation, "channels_first"). `weight` and `bias` have shape (C).
 * Same kind as tlearn_model_add_layernorm() (argument naxes 0 in checkpoints).
 * @param eps > 0 and finite.  @param affine 1: weight and bias; 0: none.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_layernorm_channels(tlearn_model *m, const char *name, float eps,
                                                   int affine);

/**
 * Append 2-D max pooling with ONNX MaxPool's geometry: kernel @p kh x @p kw, stride
 * @p sh x @p sw (0: the kernel size), padding @p pt (top), @p pl (left), @p pb (bottom),
 * @p pr (right), dilation @p dh x @p dw, and @p ceil_mode. Padding never wins (it acts as
 * -inf). In ceil mode the output size rounds up, as torch.nn.MaxPool2d(ceil_mode=True),
 * but a last window that would start in the bottom/right padding is dropped.
 * @param pt, pl, pb, pr  >= 0, each at most half the dilated kernel extent.
 * @param dh, dw          dilation >= 1.  @param ceil_mode 0 or 1.
 * @return TLEARN_OK, TLEARN_EINVAL (bad numbers or name), TLEARN_ESHAPE (padding over half
 *         the kernel, empty output), TLEARN_ENOMEM. Nothing changes on failure.
 * @note With symmetric padding, no dilation and floor mode the layer equals
 *       tlearn_model_add_maxpool2d() and is saved in round 1's form.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_maxpool2d_ex(tlearn_model *m, const char *name, int kh, int kw,
                                             int sh, int sw, int pt, int pl, int pb, int pr,
                                             int dh, int dw, int ceil_mode);

/**
 * Append 2-D average pooling with ONNX AveragePool's geometry (arguments as
 * tlearn_model_add_maxpool2d_ex(), without dilation). With @p count_include_pad the divisor
 * counts the padded positions inside the padded input, never those a ceil-mode window
 * reaches beyond it (as PyTorch); without it only real input positions.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_avgpool2d_ex(tlearn_model *m, const char *name, int kh, int kw,
                                             int sh, int sw, int pt, int pl, int pb, int pr,
                                             int ceil_mode, int count_include_pad);

/**
 * Append adaptive average pooling of a (C, H, W) input to (C, @p oh, @p ow), as
 * torch.nn.AdaptiveAvgPool2d((oh, ow)): output row i averages input rows
 * floor(i*H/oh) .. ceil((i+1)*H/oh)-1, columns likewise (bins overlap when the sizes do not
 * divide; oh > H repeats rows).
 * @param oh, ow  1..65536.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_adaptive_avgpool(tlearn_model *m, const char *name, int oh,
                                                 int ow);

/** Padding modes for tlearn_model_add_pad(). Values are fixed. @since 1.1 */
enum tlearn_pad_mode {
    TLEARN_PAD_CONSTANT = 1, /**< the new positions hold the value */
    TLEARN_PAD_REFLECT = 2,  /**< mirror without repeating the edge (torch "reflect") */
    TLEARN_PAD_EDGE = 3      /**< repeat the edge (torch "replicate", ONNX "edge") */
};

/**
 * Append padding of the last two axes (H and W of a (C, H, W) image) by @p top, @p left,
 * @p bottom, @p right positions, as torch.nn.functional.pad(x, (left, right, top, bottom),
 * mode) and ONNX Pad over the spatial axes.
 * @param mode   enum tlearn_pad_mode.  @param value the constant (TLEARN_PAD_CONSTANT only).
 * @return TLEARN_OK, TLEARN_EINVAL (negative or over 65536 padding, bad mode or name),
 *         TLEARN_ESHAPE (input of rank 1, reflect padding not smaller than the axis, output
 *         over 2^31 elements), TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_pad(tlearn_model *m, const char *name, int top, int left,
                                    int bottom, int right, int mode, float value);

/**
 * Append the product of two activations, as torch.matmul: per example @p a of shape
 * (..., M, K) times @p b of shape (..., K, N) gives (..., M, N), one matrix product per
 * leading index (the leading axes of a and b must be equal; ranks 2 to 4). With
 * @p transpose_b, b is (..., N, K) and the product is a b^T (attention scores q k^T).
 * @param a, b  names of layers or model inputs (the same name twice multiplies x by
 *              itself); copied.
 * @param transpose_b 0 or 1.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND (no such layer or input),
 *         TLEARN_ESHAPE (the shapes do not multiply; the message gives both), TLEARN_ENOMEM.
 *         Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_matmul(tlearn_model *m, const char *name, const char *a,
                                       const char *b, int transpose_b);

/**
 * Append stochastic depth, as torchvision.ops.StochasticDepth(p, mode="row"): in training
 * mode each example's whole input is zeroed with probability @p p and the others are
 * scaled by 1/(1-p) (draws from the model's seed, tlearn_model_set_seed()); evaluation
 * mode is the identity. Put it on a residual branch before the sum.
 * @param p in [0, 1).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_drop_path(tlearn_model *m, const char *name, float p);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Few-shot without training, and transferability (1.1)
 *  Prototype heads, normalised embeddings and similarity search, transferability scores. */
/** @{ */

/** Flags of the prototype calls. @since 1.1 */
#define TLEARN_PROTO_FEATURES 1u          /**< x holds the activations the head reads (the
                                               named layer's), not model inputs */
#define TLEARN_PROTO_LEARN_TEMPERATURE 2u /**< the temperature is a trained parameter */

/**
 * Append a prototype head (layer kind TLEARN_LAYER_PROTOTYPE): @p classes prototypes over
 * the flattened input, logits = temperature * cos(x, prototype_c). Tensors: `prototypes`
 * (classes, D) and `counts` (classes) are buffers (saved, never trained); `temperature` (1)
 * is trained when @p learn_temperature is 1, a buffer otherwise. New prototypes are empty
 * (zero, count 0) and score 0; fill them with tlearn_prototype_update().
 * @param temperature  > 0, finite (10 to 20 suits softmax cross-entropy training).
 * @return TLEARN_OK, TLEARN_EINVAL (bad name, classes < 1, temperature, flag), TLEARN_ESHAPE,
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_add_prototype(tlearn_model *m, const char *name, int classes,
                                          float temperature, int learn_temperature);

/**
 * Few-shot classification in one call: drop every layer after @p from_layer and append a
 * prototype head called @p name whose prototype c is the mean of the L2-normalised
 * activations of @p from_layer over the examples labelled c (counts kept for later
 * updates). No gradient step; the model then predicts by cosine similarity.
 * @param from_layer  the feature layer; NULL or "" reads the model input itself.
 * @param x        n examples: model inputs (a model with one input), or with
 *                 TLEARN_PROTO_FEATURES the activations of @p from_layer; borrowed.
 * @param labels   n class indices in [0, classes). Classes without examples stay empty.
 * @param flags    TLEARN_PROTO_FEATURES, TLEARN_PROTO_LEARN_TEMPERATURE.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, n 0, a label out of range, bad name or
 *         temperature, unknown flags), TLEARN_ENOTFOUND, TLEARN_ESTATE (several model
 *         inputs), TLEARN_ESHAPE, TLEARN_ENOMEM. Atomic: on failure nothing changes.
 * @note Features are computed in blocks of 1024 examples (memory 1024 x feature size).
 * @since 1.1
 */
TLEARN_API int tlearn_prototype_head(tlearn_model *m, const char *from_layer, const char *name,
                                     const float *x, const int32_t *labels, size_t n,
                                     int classes, float temperature, unsigned flags);

/**
 * Update prototypes incrementally with more labelled examples: prototype_c becomes the
 * running mean (count_c * p_c + sum of the new normalised features) / (count_c + new);
 * classes without new examples are untouched. Same result as building from all examples
 * at once (up to rounding).
 * @param layer  a prototype head.  @param x  model inputs, or with TLEARN_PROTO_FEATURES
 *               the activations the head reads.  @param labels  n indices in [0, classes).
 * @return TLEARN_OK, TLEARN_EINVAL (not a prototype head, label out of range, ...),
 *         TLEARN_ENOTFOUND, TLEARN_ESTATE, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_prototype_update(tlearn_model *m, const char *layer, const float *x,
                                       const int32_t *labels, size_t n, unsigned flags);

/**
 * Append @p count empty classes (indices classes .. classes+count-1) to a prototype head;
 * the other prototypes and counts stay as they are. The head's output grows.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESTATE (a layer reads the head),
 *         TLEARN_ESHAPE, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_prototype_add_classes(tlearn_model *m, const char *layer, int count);

/**
 * Remove class @p cls from a prototype head: the classes after it move down by one index
 * (keep your label map in step); their prototypes and counts are unchanged. At least one
 * class stays.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESTATE (a layer reads the head),
 *         TLEARN_ESHAPE (it is the last class), TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_prototype_remove_class(tlearn_model *m, const char *layer, int cls);

/**
 * Replace the prototype head (the last layer) by an ordinary dense head of the same name
 * for fine-tuning: weight = temperature * normalised prototypes, bias 0. Its logits are
 * the prototype head's times |x|, so it predicts the same classes before any training.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESTATE (not the last layer),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_prototype_to_dense(tlearn_model *m, const char *layer);

/**
 * L2-normalised activations of layer @p layer (embeddings for similarity search and
 * zero-shot classification), evaluation mode. A zero activation stays zero.
 * @param out_len  must be n * (size of the layer's output).
 * @return as tlearn_model_features(). @since 1.1
 */
TLEARN_API int tlearn_model_embed(tlearn_model *m, const char *layer, const float *x, size_t n,
                                  float *out, size_t out_len);

/**
 * Cosine similarities of @p nq queries against @p nkeys keys (rows of @p dim floats; norms
 * below 1e-12 count as 1e-12), by GEMM.
 * @param threads  GEMM threads, 1..1024.
 * @param out      receives nq x nkeys scores, row q for query q; out_len must be nq * nkeys.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, a count 0, NaN/Inf values, sizes over 2^31
 *         floats), TLEARN_ENOMEM. Thread-safe (no shared state).
 * @since 1.1
 */
TLEARN_API int tlearn_similarity_scores(const float *queries, size_t nq, const float *keys,
                                        size_t nkeys, int dim, int threads, float *out,
                                        size_t out_len);

/**
 * Exact top-@p k nearest keys by cosine similarity for each query (brute force, GEMM in
 * blocks of 256 queries x 4096 keys; memory independent of nkeys). Rows best first; equal
 * scores in increasing key index.
 * @param index   receives nq x k key indices.  @param scores  receives nq x k cosines; may
 *                be NULL.  @param k  1..nkeys.
 * @return as tlearn_similarity_scores(). Thread-safe. @since 1.1
 */
TLEARN_API int tlearn_similarity_topk(const float *queries, size_t nq, const float *keys,
                                      size_t nkeys, int dim, int k, int threads,
                                      int32_t *index, float *scores);

/** Transferability metrics. Values are fixed. @since 1.1 */
enum tlearn_transfer_metric {
    TLEARN_TRANSFER_LOGME = 1, /**< You et al. 2021: log evidence per example, mean over classes */
    TLEARN_TRANSFER_LEEP = 2,  /**< Nguyen et al. 2020: the features are the source logits */
    TLEARN_TRANSFER_HSCORE = 3 /**< Bao et al. 2019: tr(cov(f)^+ cov(E[f|y])), pseudo-inverse */
};

/**
 * Score how well the activations @p features (n x @p dim) suit the labels, without
 * training: higher is better for each metric (compare layers or models on the same data
 * with the same metric). LEEP reads the features as the source head's logits and takes
 * their softmax. Computed in double; LogME and H-score through an eigen-decomposition of
 * the min(n, dim)-square Gram matrix (Jacobi): measured 0.1 s at min(n, dim) = 128, 1 s at
 * 200, 5 s at 256, 70 s at 512. H-score saturates at classes - 1 when n - 1 <= dim; LogME
 * stops its fixed point after 11 updates (or when alpha and beta move < 1e-3), which
 * matters only when n <= dim, where the evidence has no finite optimum.
 * @param labels   n indices in [0, classes); LogME and H-score need every class present.
 * @param metric   enum tlearn_transfer_metric.  @param score  receives the score.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, n or classes < 2, a label out of range, a class
 *         without examples, NaN/Inf features, unknown metric), TLEARN_ENOMEM.
 *         Thread-safe. @since 1.1
 */
TLEARN_API int tlearn_transferability_features(const float *features, size_t n, int dim,
                                               const int32_t *labels, int classes, int metric,
                                               double *score);

/**
 * tlearn_transferability_features() on the activations of layer @p layer for @p n model
 * inputs @p x (evaluation mode; for LEEP, name the source head's logits layer).
 * @return as tlearn_transferability_features(), TLEARN_ENOTFOUND, TLEARN_ESTATE (several
 *         model inputs). The model is unchanged. @since 1.1
 */
TLEARN_API int tlearn_transferability(tlearn_model *m, const char *layer, const float *x,
                                      const int32_t *labels, size_t n, int classes, int metric,
                                      double *score);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Adapters (1.1): LoRA and bottleneck adapters on a frozen base
 *
 * Adapters are ordinary layers inserted into the graph right after their target, so
 * checkpoints, introspection and training see them like any other layer. LoRA on a target
 * T (dense/linear, or conv2d with groups 1) adds the layers `T.lora_dropout.<adapter>`
 * (when dropout > 0), `T.lora_A.<adapter>` (r units or filters, no bias, PyTorch's default
 * init as PEFT), `T.lora_B.<adapter>` (zero, so the model is unchanged at first) and
 * `T.lora.<adapter>` (kind TLEARN_LAYER_LORA_SUM: T + scale * weight * B(A(x)), with scale
 * alpha/r, or alpha/sqrt(r) for rsLoRA); T's readers read the sum and T is frozen.
 * Editing the graph is refused (TLEARN_ESTATE) while EWC or L2-SP is enabled. Layers
 * whose names contain ".lora_", ".lora.", ".bottleneck_" or ".bottleneck." belong to
 * adapters and are never targets. Thread-safety: as any call on the model handle. */
/** @{ */

/** tlearn_lora_add() flag: scale alpha / sqrt(r) (rsLoRA) instead of alpha / r. @since 1.1 */
#define TLEARN_LORA_RSLORA 1u

/**
 * Add LoRA adapter @p adapter on every dense, linear and conv2d layer whose name matches
 * @p glob (shell pattern over the full layer name; other kinds are skipped). Targets are
 * frozen (only they: use a freeze policy to freeze the rest as PEFT does); a target that
 * already has adapters gets the new one after them. The new adapter has weight 1.
 *
 * Attention projections: a fused attention layer A (tlearn_model_add_attention()) offers
 * `A.q_proj`, `A.k_proj`, `A.v_proj` and `A.out_proj` as targets (HF BART/OPT/LLaMA's
 * module names, so PEFT's target_modules ["q_proj", "v_proj"] work as they are; HF BERT's
 * `query`/`value` and `output.dense` need their file keys renamed). The first call (or
 * tlearn_lora_load()) that names one splits A, once, into linear layers of those names
 * around A's core (still named A, kind TLEARN_LAYER_ATTENTION, no tensors): rows k*D..
 * of in_proj_weight / in_proj_bias become `A.{q,k,v}_proj.weight` / `.bias`,
 * `A.out_proj.weight` / `.bias` keep their names, freeze flags follow the tensors, the
 * outputs stay the same to float rounding, and the split stays (removing the adapter
 * leaves it; checkpoints keep it, which 1.1 libraries without it cannot read). Refusals
 * (names, EWC) come before the split; only a call that runs out of memory after it leaves
 * the split behind (outputs unchanged). PEFT's LoRA on a packed
 * torch.nn.MultiheadAttention (one A/B pair over in_proj_weight) is not this layout and is
 * refused by tlearn_lora_load(): build the torch module with separate projections.
 * @param adapter  name (layer-name rules, no '.'), not used by another LoRA adapter.
 * @param r        rank, 1..65536.  @param alpha  finite.
 * @param dropout  dropout on the LoRA input in [0, 1) (0: no dropout layer).
 * @param flags    0 or TLEARN_LORA_RSLORA.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL or bad argument, adapter exists, conv2d with
 *         groups > 1, names over 63 bytes), TLEARN_ENOTFOUND (no target), TLEARN_ESTATE
 *         (EWC or L2-SP enabled), TLEARN_ENOMEM. Nothing changes on failure (not even the
 *         model's random stream).
 * @since 1.1
 */
TLEARN_API int tlearn_lora_add(tlearn_model *m, const char *adapter, const char *glob, int r,
                               float alpha, float dropout, unsigned flags);

/**
 * Set the combination weight of LoRA adapter @p adapter: its branches add
 * scale * weight * B(A(x)). 0 disables it; several adapters with non-zero weights combine.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model or adapter, weight not finite),
 *         TLEARN_ENOTFOUND, TLEARN_ESTATE (the adapter is merged and the weight would
 *         change), TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_lora_set_weight(tlearn_model *m, const char *adapter, float weight);

/**
 * Make @p adapter the only active LoRA adapter (weight 1, every other one 0), or with
 * @p adapter NULL disable all of them: the model computes its base function.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND (no such adapter, or no adapter at
 *         all), TLEARN_ESTATE (a merged adapter would change), TLEARN_ENOMEM.
 *         Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_lora_set_active(tlearn_model *m, const char *adapter);

/**
 * Fold adapter @p adapter into its targets' weights, W += D with
 * D = (float)(scale * weight * (B A)) (the product over the rank in double; for a conv,
 * B [out, r] times A [r, in*kh*kw]), and make its branches add nothing, so predictions
 * stay the same within float rounding and cost no extra time. tlearn_lora_unmerge()
 * subtracts the same D: the weights come back within one rounding of each operation,
 * |W' - W| <= 2^-23 (|W| + |D|) elementwise, usually bit for bit. Do not train while
 * merged (the branches get zero gradients).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESTATE (merged already /
 *         not merged), TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_lora_merge(tlearn_model *m, const char *adapter);
/** Undo tlearn_lora_merge() (see there for the rounding). @since 1.1 */
TLEARN_API int tlearn_lora_unmerge(tlearn_model *m, const char *adapter);

/**
 * Remove LoRA adapter @p adapter: its layers go and the targets' readers read the targets
 * (or the previous adapter) again. Targets stay frozen.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ESTATE (merged; EWC or L2-SP
 *         enabled).
 * @since 1.1
 */
TLEARN_API int tlearn_lora_remove(tlearn_model *m, const char *adapter);

/**
 * Save LoRA adapter @p adapter in PEFT's layout into directory @p dir (created if missing):
 * `adapter_model.safetensors` with `base_model.model.<target>.lora_A.weight` [r, in] (conv:
 * [r, in, kh, kw]) and `...lora_B.weight` [out, r] (conv: [out, r, 1, 1]) in F32, and
 * `adapter_config.json` (peft_type, r, lora_alpha, lora_dropout, use_rslora, bias "none",
 * target_modules: the full target layer names). Each file is written atomically.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOTFOUND, TLEARN_ENONFINITE, TLEARN_EIO,
 *         TLEARN_ENOMEM.
 * @since 1.1
 */
TLEARN_API int tlearn_lora_save(const tlearn_model *m, const char *adapter, const char *dir);

/**
 * Load a PEFT LoRA adapter from directory @p dir as adapter @p adapter (which must not
 * exist): reads `adapter_config.json` (r, lora_alpha, lora_dropout, use_rslora,
 * target_modules: a list matched as PEFT does, a layer named t or ending in "." t; a
 * string is taken as a glob, not a regex), adds the branches as tlearn_lora_add() and
 * fills them from `adapter_model.safetensors` (F32, F16 or BF16).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_EIO, TLEARN_EFORMAT (bad file or config;
 *         bias other than "none"; fan_in_fan_out), TLEARN_ENOTFOUND (targets match no
 *         layer, a file tensor fits no target, a target lacks its tensors), TLEARN_ESHAPE
 *         (a tensor's shape does not fit its target), TLEARN_ESTATE, TLEARN_ENOMEM.
 *         The message names the tensor or field. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_lora_load(tlearn_model *m, const char *adapter, const char *dir);

/**
 * Insert a bottleneck adapter after every layer whose name matches @p glob (after the LoRA
 * sums on it, if any): `L.bottleneck_down.<adapter>` (linear over the last axis, or a 1x1
 * conv for (C, H, W) outputs, to @p hidden units), `L.bottleneck_act.<adapter>`
 * (@p activation, enum tlearn_activation; leaky ReLU slope 0.01), `L.bottleneck_up.<adapter>`
 * (back to L's width, weight and bias zero) and `L.bottleneck.<adapter>` (add: L + up);
 * L's readers read the sum, so the model is unchanged at first. Nothing is frozen.
 * @return TLEARN_OK, TLEARN_EINVAL (bad argument, adapter exists, names over 63 bytes),
 *         TLEARN_ENOTFOUND, TLEARN_ESHAPE, TLEARN_ESTATE (EWC or L2-SP enabled),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_adapter_add_bottleneck(tlearn_model *m, const char *adapter,
                                             const char *glob, int hidden, int activation);

/**
 * Freeze (frozen = 1) or unfreeze (0) single tensors: every trainable tensor whose full
 * name "layer.param" (as tlearn_model_tensor_info(): "fc.weight", "enc.self_attn.in_proj_bias")
 * matches the shell pattern @p glob. A freeze policy's rules replay in order tensor by tensor:
 * tlearn_freeze_match() / _until() / _range() set every tensor of their layers, this rule
 * the matching ones, later rules win. A layer whose every tensor ends frozen is a frozen
 * layer; in a layer that still trains, a frozen tensor costs nothing: no gradient is
 * computed for it, it has no optimizer state and steps leave it bit-identical. Checkpoints
 * keep the outcome (older libraries refuse a file with a partly frozen layer; older files
 * load unchanged). BitFit (Ben Zaken et al. 2022), biases only:
 * `tlearn_freeze_match(f, "*", 1); tlearn_freeze_tensors(f, "*bias", 0);`
 * (`*bias` also matches attention's in_proj_bias and out_proj.bias).
 * Thread-safety: a policy is used by one thread at a time.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, empty pattern, frozen not 0/1), TLEARN_ENOMEM. A
 *         pattern that matches no trainable tensor is reported by tlearn_model_apply_freeze()
 *         as TLEARN_ENOTFOUND.
 * @since 1.1
 */
TLEARN_API int tlearn_freeze_tensors(tlearn_freeze *f, const char *glob, int frozen);

/**
 * Whether tensor @p tensor ("layer.param") gets no update: 1 when its layer or the tensor
 * itself is frozen, and for buffers (running statistics), which never train.
 * Thread-safety: as any call on the model handle.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL), TLEARN_ENOTFOUND (no such tensor).
 * @since 1.1
 */
TLEARN_API int tlearn_model_tensor_frozen(const tlearn_model *m, const char *tensor,
                                          int *frozen);

/**
 * One base, many handles: create a model with @p base's graph (layers, inputs, outputs,
 * freeze flags and LR scales, loss settings, threads, seed and random stream) whose
 * parameter tensors share @p base's data instead of copying it: reference-counted and
 * read-only, so N adapted handles cost one base plus what each adds (LoRA adapters, a
 * head) or trains. Buffers (BatchNorm running statistics, prototypes) are copied, since
 * training-mode forwards update them. Not carried over: optimizer state, gradients,
 * EWC / L2-SP, domain-adaptation settings, the reducer, metadata.
 *
 * Copy on write: a handle that writes a shared tensor first gets its own copy of that
 * tensor, the others keep theirs unchanged: training it (the first step after it is made
 * trainable), tlearn_model_set_tensor(), tlearn_lora_merge() / _unmerge() into it, weights
 * loaded from a file, TENT's restore. A tensor that stays frozen stays shared. Any handle
 * (the base included) may be destroyed first: shared data lives while any holder does.
 *
 * Thread-safety: the call reads @p base and takes references on its tensors, so @p base is
 * not used by another thread during the call. Afterwards distinct handles that share
 * tensors may be used from different threads at the same time (shared data is never
 * written; the counts are atomic); each handle is still used by one thread at a time.
 * @param out   receives the new model; free with tlearn_model_destroy().
 * @return TLEARN_OK, TLEARN_EINVAL (NULL), TLEARN_ESTATE (a layer that does not rebuild
 *         from its arguments), TLEARN_ENOMEM. On failure *out is NULL and @p base is
 *         unchanged (its tensors' data are never touched).
 * @since 1.1
 */
TLEARN_API int tlearn_model_create_shared(tlearn_model **out, const tlearn_model *base);

/**
 * Whether tensor @p tensor ("layer.param") holds data that another handle holds too
 * (tlearn_model_create_shared()). Thread-safety: as any call on the model handle.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL), TLEARN_ENOTFOUND (no such tensor).
 * @since 1.1
 */
TLEARN_API int tlearn_model_tensor_shared(const tlearn_model *m, const char *tensor,
                                          int *shared);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Domain adaptation (1.1): several losses, gradient reversal, CORAL/MMD, AdaBN, TENT
 *  When the input distribution moves (another camera, synthetic to real) and the target data
 *  is mostly unlabelled. Settings below are kept by the model, and full checkpoints keep
 *  them too (losses, discrepancy terms, bandwidths, TENT's snapshot; gradient reversal's
 *  lambda is a layer argument), so training or adaptation resumes exactly. */
/** @{ */

/** Discrepancies between source and target rows (tlearn_model_set_discrepancy(),
 *  tlearn_discrepancy()). Values are fixed. @since 1.1 */
enum tlearn_discrepancy {
    TLEARN_DISCREPANCY_CORAL = 1, /**< Deep CORAL: ||C_s - C_t||_F^2 / (4 d^2), C the
                                       unbiased covariance of each domain's rows */
    TLEARN_DISCREPANCY_MMD = 2    /**< multi-kernel Gaussian MMD^2 (biased estimate), DAN */
};

/**
 * Give graph output @p output (its position, 0..count-1, in tlearn_model_set_outputs()) a
 * loss for tlearn_model_train_step_multi(). The step's loss is the sum over outputs of
 * weight x loss. Positions, not layers, keep the setting: declare the outputs first.
 * @param loss    TLEARN_LOSS_SOFTMAX_CE (int32 labels, -1 = no loss for that row, mean over
 *                the labelled rows), TLEARN_LOSS_MSE (float targets, mean of all elements),
 *                or 0 to remove the output's loss.
 * @param weight  > 0 and finite (ignored with loss 0).
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE (cross-entropy on an output of one value),
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_set_output_loss(tlearn_model *m, int output, int loss, float weight);

/**
 * Add a discrepancy term between the source and target rows of a batch at layer @p layer
 * (its output flattened per example) to tlearn_model_train_step_multi(): the step's loss
 * gains weight x discrepancy and the layer gets its gradient. At most 4 terms; setting a
 * (layer, kind) pair again changes its weight, weight 0 removes it.
 * CORAL needs 2 rows of each domain per batch, MMD one. MMD's kernel is
 * k(a, b) = sum_i exp(-||a - b||^2 / (m_i D)), D the mean squared distance over the distinct
 * pairs of rows of the batch (both domains), treated as a constant in the gradient; the
 * multipliers m_i default to DAN's 1/4, 1/2, 1, 2, 4 (tlearn_model_set_mmd_bandwidths()).
 * @return TLEARN_OK, TLEARN_EINVAL (NULL layer, kind, weight < 0 or not finite, a fifth
 *         term), TLEARN_ENOTFOUND, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_set_discrepancy(tlearn_model *m, const char *layer, int kind,
                                            float weight);

/**
 * The bandwidth multipliers of the model's MMD terms (see tlearn_model_set_discrepancy()).
 * @param multipliers  @p count values > 0; borrowed.  @param count  0..8; 0 restores the
 *                     default 1/4, 1/2, 1, 2, 4.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. Nothing changes on failure. @since 1.1
 */
TLEARN_API int tlearn_model_set_mmd_bandwidths(tlearn_model *m, const float *multipliers,
                                               int count);

/**
 * A discrepancy and its gradient on given rows, without a model (monitoring a shift,
 * checking the formulas): the value of tlearn_model_set_discrepancy()'s term.
 * @param features  n x dim floats (finite); borrowed.  @param is_target  n values, 0 source,
 *                  1 target; borrowed.
 * @param multipliers, nmult  MMD's bandwidth multipliers (NULL, 0: the default); ignored by
 *                  CORAL.
 * @param value     receives the discrepancy.  @param grad  receives d value / d features
 *                  (n x dim), or NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, bad kind, sizes, values or too few rows of a
 *         domain), TLEARN_ENOMEM. Thread-safe.
 * @since 1.1
 */
TLEARN_API int tlearn_discrepancy(int kind, const float *features, size_t n, size_t dim,
                                  const uint8_t *is_target, const float *multipliers, int nmult,
                                  float *value, float *grad);

/**
 * One optimisation step with every output that has a loss (tlearn_model_set_output_loss())
 * and targets, plus the discrepancy terms: one forward, one backward seeded by all of them,
 * one optimizer update. Source and target examples share a batch: a label of -1 on a
 * cross-entropy output means "no class loss for this row".
 * @param inputs, ninputs  one array per model input, as tlearn_model_run().
 * @param targets   one per graph output (@p ntargets = the output count): int32 labels
 *                  (n) for cross-entropy, float targets (n x output size) for MSE, or NULL
 *                  for no loss on that output this step; borrowed.
 * @param is_target n values, 1 for target-domain rows (discrepancy terms only), or NULL to
 *                  take the rows whose output-0 label is -1.
 * @param loss      receives sum of weight x loss + discrepancies + EWC/L2-SP penalty; may be
 *                  NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (bad arguments, labels outside -1..classes-1, too few
 *         rows of a domain), TLEARN_ESTATE (nothing to train: no loss nor discrepancy; a
 *         discrepancy at a layer with everything up to it frozen), TLEARN_ENOTFOUND (a
 *         discrepancy layer removed), TLEARN_ENONFINITE, TLEARN_ENOMEM. On failure no weight,
 *         optimizer state or running statistic changes. Frozen layers, LR scales, clipping
 *         and BatchNorm as tlearn_model_train_step().
 * @since 1.1
 */
TLEARN_API int tlearn_model_train_step_multi(tlearn_model *m, tlearn_optim *o,
                                             const void *const *inputs, int ninputs, size_t n,
                                             const void *const *targets, int ntargets,
                                             const uint8_t *is_target, float *loss);

/**
 * Add a gradient-reversal layer (DANN): the identity forward, the gradient times -lambda
 * backward. Put it between the features and a domain classifier head.
 * @param lambda  >= 0 and finite; change it per step with
 *                tlearn_model_set_grad_reverse_lambda().
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. Nothing changes on failure. @since 1.1
 */
TLEARN_API int tlearn_model_add_grad_reverse(tlearn_model *m, const char *name, float lambda);

/**
 * Set lambda of the gradient-reversal layer @p layer, or of every one when @p layer is NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (lambda < 0 or not finite, a layer of another kind),
 *         TLEARN_ENOTFOUND (no such layer, or none at all). @since 1.1
 */
TLEARN_API int tlearn_model_set_grad_reverse_lambda(tlearn_model *m, const char *layer,
                                                    float lambda);

/**
 * DANN's schedule: lambda_p = 2 / (1 + exp(-10 p)) - 1 for training progress @p progress
 * (0 at the start, 1 at the end; clamped to [0, 1], NaN as 0). @return lambda_p in [0, 1).
 * Thread-safe. @since 1.1
 */
TLEARN_API float tlearn_dann_lambda(float progress);

/**
 * AdaBN: re-estimate every BatchNorm's running statistics on (target) data, with no labels
 * and no gradient. The data runs forward in training mode in batches of @p batch (the last
 * one smaller); each BatchNorm's running mean and variance become the average over the
 * batches of the batch mean and unbiased batch variance (torch's momentum=None after
 * reset_running_stats()). Weights do not change; BatchNorms with frozen statistics are
 * re-estimated too; dropout layers draw as in training.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESTATE (no BatchNorm), TLEARN_ENONFINITE,
 *         TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_adapt_bn(tlearn_model *m, const void *const *inputs, int ninputs,
                                     size_t n, size_t batch);

/**
 * TENT (test-time entropy minimisation): one step on an unlabelled batch that updates only
 * BatchNorm's weight and bias to lower the mean entropy of softmax(output 0). The batch runs
 * in training mode (BatchNorm on batch statistics, whose running values then follow the
 * target data with the layer's momentum). The first step snapshots every BatchNorm tensor
 * and the freeze state, then freezes every other layer; tlearn_model_tent_reset() restores
 * them. Optimizer state of BatchNorm starts fresh (Adam lr 1e-3 or SGD as the paper).
 * @param entropy  receives the batch's mean entropy before the update; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESTATE (no BatchNorm), TLEARN_ESHAPE (output 0
 *         of one value), TLEARN_ENONFINITE, TLEARN_ENOMEM. Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_model_tent_step(tlearn_model *m, tlearn_optim *o,
                                      const void *const *inputs, int ninputs, size_t n,
                                      float *entropy);

/**
 * Undo TENT: BatchNorm tensors and freeze state as before the first tlearn_model_tent_step()
 * (nothing to do when none ran). @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESTATE (layers
 * added or removed since), TLEARN_ENOMEM. @since 1.1
 */
TLEARN_API int tlearn_model_tent_reset(tlearn_model *m);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Training recipes (1.1): learning-rate schedules */
/** @{ */

/** A learning-rate schedule: its kind and parameters (tlearn_sched_create()). @since 1.1 */
typedef struct tlearn_sched tlearn_sched;

/** Schedule kinds; each names the torch.optim.lr_scheduler class it equals step for step.
 *  Values are fixed. @since 1.1 */
enum tlearn_sched_kind {
    TLEARN_SCHED_CONSTANT = 1,          /**< ConstantLR: FACTOR x lr for TOTAL_STEPS steps
                                             (0: for ever), then lr */
    TLEARN_SCHED_STEP = 2,              /**< StepLR: lr x GAMMA^(t / STEP_SIZE) */
    TLEARN_SCHED_MULTISTEP = 3,         /**< MultiStepLR: lr x GAMMA^(milestones <= t) */
    TLEARN_SCHED_EXPONENTIAL = 4,       /**< ExponentialLR: lr x GAMMA^t */
    TLEARN_SCHED_COSINE = 5,            /**< CosineAnnealingLR(T_max = PERIOD, ETA_MIN) */
    TLEARN_SCHED_COSINE_RESTARTS = 6,   /**< CosineAnnealingWarmRestarts(T_0 = PERIOD,
                                             T_MULT, ETA_MIN) */
    TLEARN_SCHED_ONE_CYCLE = 7,         /**< OneCycleLR(max_lr = the optimizer's lr,
                                             TOTAL_STEPS, ...), momentum or beta1 cycled */
    TLEARN_SCHED_SLANTED_TRIANGULAR = 8 /**< ULMFiT's STLR (Howard & Ruder 2018, eq. 3):
                                             peak = the optimizer's lr, CUT_FRAC, RATIO */
};

/** When a schedule advances (TLEARN_SCHED_UNIT). @since 1.1 */
enum tlearn_sched_unit {
    TLEARN_SCHED_PER_BATCH = 0, /**< after every optimizer update (default) */
    TLEARN_SCHED_PER_EPOCH = 1  /**< at the end of every epoch of tlearn_model_fit_run(), or
                                     by tlearn_optim_schedule_step() */
};

/**
 * Schedule parameters for tlearn_sched_set(), with torch's names and defaults. Lengths are
 * counted in schedule steps (TLEARN_SCHED_UNIT); integer parameters take whole numbers.
 * A length of 0 marked "auto" is filled in by tlearn_model_fit_run() from its epochs and
 * batches (minus the warm-up). Values are fixed. @since 1.1
 */
enum tlearn_sched_param {
    TLEARN_SCHED_UNIT = 1,               /**< enum tlearn_sched_unit; every kind */
    TLEARN_SCHED_GAMMA = 2,              /**< > 0; STEP, MULTISTEP, EXPONENTIAL; default 0.1 */
    TLEARN_SCHED_STEP_SIZE = 3,          /**< integer >= 1, required; STEP */
    TLEARN_SCHED_PERIOD = 4,             /**< integer; COSINE's T_max (0: auto),
                                              COSINE_RESTARTS' T_0 (>= 1, required) */
    TLEARN_SCHED_T_MULT = 5,             /**< integer >= 1; COSINE_RESTARTS; default 1 */
    TLEARN_SCHED_ETA_MIN = 6,            /**< >= 0; COSINE, COSINE_RESTARTS; default 0 */
    TLEARN_SCHED_FACTOR = 7,             /**< in [0, 1]; CONSTANT; default 1 */
    TLEARN_SCHED_TOTAL_STEPS = 8,        /**< integer; CONSTANT (0: for ever), ONE_CYCLE and
                                              SLANTED_TRIANGULAR (0: auto); default 0 */
    TLEARN_SCHED_PCT_START = 9,          /**< in [0, 1]; ONE_CYCLE; default 0.3 */
    TLEARN_SCHED_DIV_FACTOR = 10,        /**< > 0; ONE_CYCLE; default 25 */
    TLEARN_SCHED_FINAL_DIV_FACTOR = 11,  /**< > 0; ONE_CYCLE; default 1e4 */
    TLEARN_SCHED_LINEAR_ANNEAL = 12,     /**< 0 (cos) or 1 (linear); ONE_CYCLE; default 0 */
    TLEARN_SCHED_THREE_PHASE = 13,       /**< 0 or 1; ONE_CYCLE; default 0 */
    TLEARN_SCHED_CYCLE_MOMENTUM = 14,    /**< 0 or 1; ONE_CYCLE; default 1: SGD's momentum or
                                              Adam's beta1 cycles, replacing the set value */
    TLEARN_SCHED_BASE_MOMENTUM = 15,     /**< in [0, 1); ONE_CYCLE; default 0.85 */
    TLEARN_SCHED_MAX_MOMENTUM = 16,      /**< in [0, 1); ONE_CYCLE; default 0.95 */
    TLEARN_SCHED_CUT_FRAC = 17,          /**< in (0, 1); SLANTED_TRIANGULAR; default 0.1 */
    TLEARN_SCHED_RATIO = 18,             /**< >= 1; SLANTED_TRIANGULAR; default 32 */
    TLEARN_SCHED_WARMUP_STEPS = 19,      /**< integer >= 0; kinds 1-6 (one-cycle and slanted
                                              triangular warm up by themselves): linear warm-up in
                                              front (torch: SequentialLR([LinearLR(
                                              start_factor, total_iters=W), S], [W])), after
                                              which the schedule starts at its step 0;
                                              default 0 */
    TLEARN_SCHED_WARMUP_START_FACTOR = 20 /**< in (0, 1]; kinds 1-6; default 0.1 */
};

/**
 * Create a schedule of @p kind with torch's defaults. A schedule is a configuration: attach
 * it to an optimizer with tlearn_optim_set_schedule(), which copies it.
 * @param out  receives the handle; free with tlearn_sched_destroy().
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, unknown kind), TLEARN_ENOMEM.
 * @since 1.1
 */
TLEARN_API int tlearn_sched_create(tlearn_sched **out, int kind);

/** Free a schedule; NULL-safe, sets *s = NULL. @since 1.1 */
TLEARN_API void tlearn_sched_destroy(tlearn_sched **s);

/**
 * Set a parameter (enum tlearn_sched_param).
 * @return TLEARN_OK, TLEARN_EINVAL (unknown parameter, one the kind does not use, a value
 *         that is negative, not finite, not whole for an integer, or out of its range; the
 *         message gives the range). Nothing changes on failure.
 * @since 1.1
 */
TLEARN_API int tlearn_sched_set(tlearn_sched *s, int param, double value);

/** Read a parameter. @return TLEARN_OK, TLEARN_EINVAL. @since 1.1 */
TLEARN_API int tlearn_sched_get(const tlearn_sched *s, int param, double *value);

/**
 * Milestones of a TLEARN_SCHED_MULTISTEP schedule: @p count (1..64) steps, strictly
 * increasing, each >= 1; borrowed.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, another kind, count or order). @since 1.1
 */
TLEARN_API int tlearn_sched_set_milestones(tlearn_sched *s, const int64_t *milestones,
                                           size_t count);

/**
 * Attach a copy of @p s to the optimizer, at step 0 (NULL detaches). From then on the
 * optimizer's TLEARN_OPT_LR is the base the schedule scales (for ONE_CYCLE and
 * SLANTED_TRIANGULAR: the peak); the freeze policy's per-layer LR scales multiply the
 * scheduled rate. A TLEARN_SCHED_PER_BATCH schedule advances after each accepted update
 * (train steps, tlearn_model_fit(), tlearn_model_fit_run()); a refused step does not
 * advance it. Saved with the optimizer in full checkpoints (section SCHEDULE): a loaded
 * optimizer continues at the same step. Past its last step one-cycle and slanted
 * triangular keep their last rate.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL optimizer; a required length unset, one-cycle
 *         phases of no length; the message names the parameter), TLEARN_ENOMEM. Nothing
 *         changes on failure. A schedule with an "auto" length may be attached, but a
 *         train step refuses it (TLEARN_ESTATE) until tlearn_model_fit_run() fills it in.
 * @since 1.1
 */
TLEARN_API int tlearn_optim_set_schedule(tlearn_optim *o, const tlearn_sched *s);

/**
 * Advance the attached schedule by one step (hosts that run their own epoch loop with a
 * TLEARN_SCHED_PER_EPOCH schedule).
 * @return TLEARN_OK, TLEARN_EINVAL (NULL), TLEARN_ESTATE (no schedule attached). @since 1.1
 */
TLEARN_API int tlearn_optim_schedule_step(tlearn_optim *o);

/**
 * Steps the attached schedule has taken. @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESTATE
 * (no schedule). @since 1.1
 */
TLEARN_API int tlearn_optim_schedule_position(const tlearn_optim *o, int64_t *steps);

/**
 * The value the next update uses: for TLEARN_OPT_LR the scheduled rate, for
 * TLEARN_OPT_MOMENTUM / TLEARN_OPT_BETA1 the cycled one under ONE_CYCLE; otherwise the same
 * as tlearn_optim_get(). Before any per-layer LR scale.
 * @return TLEARN_OK, TLEARN_EINVAL. @since 1.1
 */
TLEARN_API int tlearn_optim_get_current(const tlearn_optim *o, int param, double *value);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Training recipes (1.1): losses, metrics, fit with validation */
/** @{ */

/**
 * Class weights of the cross-entropy loss, as torch.nn.functional.cross_entropy(weight=):
 * the batch loss is sum_i w[y_i] l_i / sum_i w[y_i]. Used by train steps, fit and
 * evaluate's loss. NULL with @p count 0 clears them (every class weighs 1). Not saved in
 * checkpoints: set them again after loading.
 * @param weights  @p count = the model's output size values, >= 0, finite, not all 0; copied.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ESHAPE (count is not the output size),
 *         TLEARN_ENOMEM. Nothing changes on failure. A later head of another size makes
 *         train steps fail with TLEARN_ESHAPE until the weights are set again.
 * @since 1.1
 */
TLEARN_API int tlearn_model_set_class_weights(tlearn_model *m, const float *weights,
                                              size_t count);

/**
 * Label smoothing of the cross-entropy loss, as cross_entropy(label_smoothing=): the target
 * is (1 - s) one-hot + s / classes (combined with class weights as torch does). Default 0.
 * Not saved in checkpoints.
 * @return TLEARN_OK, TLEARN_EINVAL (not in [0, 1]). @since 1.1
 */
TLEARN_API int tlearn_model_set_label_smoothing(tlearn_model *m, float smoothing);

/**
 * Classification metrics over a labelled set, in evaluation mode (chunked and threaded as
 * tlearn_model_evaluate()). Every output may be NULL.
 * @param k          top-k accuracy's k, 1..classes.
 * @param topk       receives the fraction of examples whose label's output is exceeded by
 *                   fewer than k outputs (a tie with the k-th highest counts as a hit).
 * @param confusion  receives classes x classes counts, row = true label, column = argmax
 *                   prediction (sklearn's confusion_matrix).
 * @param precision, recall, f1  receive per class values (0 where undefined, as sklearn's
 *                   zero_division=0).
 * @param classes    the model's output size (the length of each per-class array).
 * @return TLEARN_OK, TLEARN_EINVAL (NULL x or labels, n 0, a label out of range, k out of
 *         range), TLEARN_ESHAPE (classes is not the output size), TLEARN_ESTATE (the loss
 *         is not cross-entropy), TLEARN_ENOMEM.
 * @since 1.1
 */
TLEARN_API int tlearn_model_evaluate_classes(tlearn_model *m, const float *x,
                                             const int32_t *labels, size_t n, int k,
                                             float *topk, int64_t *confusion, float *precision,
                                             float *recall, float *f1, size_t classes);

/**
 * Regression metrics over n examples with float targets (n x output size), in evaluation
 * mode: mean squared and mean absolute error over every element. Either output may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, n 0, non-finite targets), TLEARN_ESHAPE,
 *         TLEARN_ENOMEM, TLEARN_ENONFINITE. @since 1.1
 */
TLEARN_API int tlearn_model_evaluate_regression(tlearn_model *m, const float *x,
                                                const float *targets, size_t n, float *mse,
                                                float *mae);

/** Options of tlearn_model_fit_run() (tlearn_fit_create()). @since 1.1 */
typedef struct tlearn_fit tlearn_fit;
/** One epoch's record, passed to a tlearn_epoch_fn; read it with tlearn_epoch_get(). New
 *  fields are new metric keys, so the record grows without breaking hosts. @since 1.1 */
typedef struct tlearn_epoch tlearn_epoch;

/** Per-epoch values (tlearn_epoch_get()) and early-stopping monitors. Losses and errors
 *  are minimised, accuracies and F1 maximised. Values are fixed. @since 1.1 */
enum tlearn_metric {
    TLEARN_METRIC_LOSS = 1,         /**< mean training loss of the epoch's batches (+ penalty) */
    TLEARN_METRIC_ACCURACY = 2,     /**< training accuracy over the epoch (training-mode
                                         outputs as the batches ran; cross-entropy models) */
    TLEARN_METRIC_VAL_LOSS = 3,     /**< validation loss (evaluation mode) */
    TLEARN_METRIC_VAL_ACCURACY = 4, /**< validation accuracy */
    TLEARN_METRIC_VAL_TOP_K = 5,    /**< validation top-k accuracy (TLEARN_FIT_TOP_K) */
    TLEARN_METRIC_VAL_MACRO_F1 = 6, /**< mean over classes of the validation F1 */
    TLEARN_METRIC_VAL_MAE = 7,      /**< validation mean absolute error (MSE models) */
    TLEARN_METRIC_LR = 8,           /**< learning rate the next update uses (before layer
                                         scales) */
    TLEARN_METRIC_IMPROVED = 9,     /**< 1 when the monitored metric improved this epoch
                                         (best so far), else 0; only with a monitor */
    TLEARN_METRIC_TRAINABLE_LAYERS = 10 /**< layers with parameters that trained this epoch */
};

/** Options for tlearn_fit_set(). Values are fixed. @since 1.1 */
enum tlearn_fit_param {
    TLEARN_FIT_BATCH = 1,        /**< examples per batch, >= 1; default 32 */
    TLEARN_FIT_EPOCHS = 2,       /**< >= 1; default 1 */
    TLEARN_FIT_SHUFFLE = 3,      /**< 0 or 1: reshuffle each epoch with the model's RNG; 1 */
    TLEARN_FIT_ACCUMULATE = 4,   /**< batches per update, >= 1 (gradient accumulation: the
                                      update uses the mean gradient over their examples,
                                      as one batch of their total size); default 1 */
    TLEARN_FIT_MONITOR = 5,      /**< enum tlearn_metric to early-stop on, restore and save
                                      the best of; 0: none (default) */
    TLEARN_FIT_PATIENCE = 6,     /**< stop after this many epochs without improvement; 0:
                                      never stop early (default) */
    TLEARN_FIT_MIN_DELTA = 7,    /**< >= 0: an improvement must exceed it (Keras); default 0 */
    TLEARN_FIT_RESTORE_BEST = 8, /**< 0 or 1: at the end, put back the parameters and
                                      buffers of the best epoch (needs a monitor); default 0 */
    TLEARN_FIT_GRADUAL_UNFREEZE = 9, /**< 0 or 1: ULMFiT's gradual unfreezing. The layers with
                                      parameters that are frozen when fit starts are unfrozen
                                      from the head backwards, one more per epoch (epoch e
                                      trains e of them more); default 0 */
    TLEARN_FIT_TOP_K = 10        /**< k of TLEARN_METRIC_VAL_TOP_K, >= 1; default 5 (capped
                                      at the class count) */
};

/**
 * Called after each epoch with its record (valid during the call only). Return 0 to go on,
 * non-zero to stop: tlearn_model_fit_run() then returns TLEARN_ECANCELED (after restoring
 * the best weights when asked).
 */
typedef int (*tlearn_epoch_fn)(const tlearn_epoch *epoch, void *user);

/** Create fit options with the defaults above. @return TLEARN_OK, TLEARN_EINVAL,
 *  TLEARN_ENOMEM. @since 1.1 */
TLEARN_API int tlearn_fit_create(tlearn_fit **out);

/** Free fit options; NULL-safe, sets *f = NULL. @since 1.1 */
TLEARN_API void tlearn_fit_destroy(tlearn_fit **f);

/** Set an option (enum tlearn_fit_param). @return TLEARN_OK, TLEARN_EINVAL (unknown
 *  option, value out of range or not whole). @since 1.1 */
TLEARN_API int tlearn_fit_set(tlearn_fit *f, int param, double value);

/** Read an option. @return TLEARN_OK, TLEARN_EINVAL. @since 1.1 */
TLEARN_API int tlearn_fit_get(const tlearn_fit *f, int param, double *value);

/**
 * Validation set evaluated after every epoch: @p n examples of the model's input shape and
 * their labels (int32, cross-entropy models) or targets (float, n x output size, MSE
 * models). Borrowed: the arrays must stay valid until the last tlearn_model_fit_run() with
 * these options. NULL x and y with n 0 remove it.
 * @param x_len  floats in @p x: fit_run requires n x the model's input size.
 * @param y_len  elements in @p y: fit_run requires n (labels) or n x output size (targets).
 * @return TLEARN_OK, TLEARN_EINVAL. Lengths, labels and targets are checked against the
 *         model by fit_run (TLEARN_ESHAPE, TLEARN_EINVAL) before it trains. @since 1.1
 */
TLEARN_API int tlearn_fit_set_validation(tlearn_fit *f, const float *x, size_t x_len,
                                         const void *y, size_t y_len, size_t n);

/**
 * Save a full checkpoint (model and optimizer, tlearn_model_save()) to @p path at each
 * epoch that improves the monitored metric. NULL removes it. @p path is copied.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM. @since 1.1
 */
TLEARN_API int tlearn_fit_set_checkpoint(tlearn_fit *f, const char *path);

/**
 * Callbacks: @p progress after every update (as tlearn_model_fit(); its loss is the mean
 * over the accumulated batches), @p epoch_end after every epoch. Either may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL. @since 1.1
 */
TLEARN_API int tlearn_fit_set_callbacks(tlearn_fit *f, tlearn_progress_fn progress,
                                        tlearn_epoch_fn epoch_end, void *user);

/**
 * Train with validation, early stopping and the rest of @p f. Each epoch: shuffle, then
 * updates over the batches (TLEARN_FIT_ACCUMULATE batches each), a per-epoch schedule
 * step, validation metrics in evaluation mode, early-stopping bookkeeping, the epoch
 * callback. An attached schedule whose length is 0 ("auto") gets the run's total: epochs
 * for TLEARN_SCHED_PER_EPOCH, updates otherwise (minus its warm-up).
 * Everything is checked before the first step: the options against the model (a monitor
 * that would not be computed - validation metrics without a validation set, accuracy on an
 * MSE model), labels / targets and validation data, the schedule.
 * @param x  n examples of the model's input shape; @p y n int32 labels (cross-entropy) or
 *           n x output size float targets (MSE); borrowed.
 * @return TLEARN_OK (also when stopped early), TLEARN_EINVAL (with the message naming the
 *         option), TLEARN_ESHAPE, TLEARN_ESTATE (model of several inputs), TLEARN_ENOMEM,
 *         TLEARN_ENONFINITE (a step was refused; earlier epochs stay applied),
 *         TLEARN_ECANCELED (a callback stopped it), TLEARN_EIO (the best checkpoint could not
 *         be saved).
 * @note Gradual unfreezing leaves the model with the last epoch's freeze state.
 *       Accumulated updates commit batchnorm statistics per batch, as torch does.
 * @since 1.1
 */
TLEARN_API int tlearn_model_fit_run(tlearn_model *m, tlearn_optim *o, const tlearn_fit *f,
                                    const float *x, const void *y, size_t n);

/**
 * A value of an epoch's record (enum tlearn_metric).
 * @return TLEARN_OK, TLEARN_EINVAL (NULL, unknown key), TLEARN_ENOTFOUND (not computed in
 *         this run, e.g. validation metrics without a validation set). @since 1.1
 */
TLEARN_API int tlearn_epoch_get(const tlearn_epoch *e, int metric, double *value);

/** The epoch's number (from 0) and the run's epoch count; either pointer may be NULL.
 *  @return TLEARN_OK, TLEARN_EINVAL. @since 1.1 */
TLEARN_API int tlearn_epoch_index(const tlearn_epoch *e, int *epoch, int *epochs);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name Data-parallel training (1.1): a host-registered reducer */
/** @{ */

/**
 * Start summing @p count floats at @p data, in place, across every worker (process) of
 * the group: when the matching wait returns, @p data holds the sum over the workers. The
 * call may return before the sum is done (MPI_Iallreduce); @p data stays valid and
 * untouched by libtlearn until then. Within one round (a training step, an evaluate, a
 * consolidate) buckets are numbered 0, 1, 2, ... and every worker makes the same calls in
 * the same order with the same counts.
 * @return TLEARN_OK or a TLEARN_E* status, which the training call returns.
 * @since 1.1
 */
typedef int (*tlearn_reduce_fn)(void *user, int bucket, float *data, size_t count);

/**
 * Finish every sum started since the last wait. Must not wait forever: return an error
 * (TLEARN_EIO for a failed or timed-out exchange) when a worker is gone.
 * @return TLEARN_OK or a TLEARN_E* status, which the training call returns.
 * @since 1.1
 */
typedef int (*tlearn_reduce_wait_fn)(void *user);

/** What tlearn_model_set_reducer() sums besides gradients and the loss. @since 1.1 */
enum tlearn_reduce_flag {
    TLEARN_REDUCE_EVALUATE = 1, /**< tlearn_model_evaluate() and the metrics calls (and
                                     fit_run's validation and train accuracy): loss,
                                     accuracy, counts over the examples of every worker */
    TLEARN_REDUCE_FISHER = 2,   /**< tlearn_ewc_consolidate(): the Fisher over the examples
                                     of every worker */
    TLEARN_REDUCE_BATCHNORM = 4 /**< synchronised BatchNorm: in a training step's forward,
                                     every batchnorm in training mode normalises by the
                                     mean and variance over every worker's share (and its
                                     backward sums its per-channel sums likewise), so the
                                     running statistics agree too. @since 1.1 */
};

/**
 * Train one model on several workers (data parallelism): each worker holds the same model
 * and takes its own share of every batch; this reducer sums what must agree. In every
 * training step (train_step, its _mse, _from, _inputs and _tokens forms, fit,
 * compute_gradients) backward hands the gradients of trainable (non-frozen) layers to
 * @p reduce in buckets of about @p bucket_floats floats, in reverse layer order as soon as
 * each layer's backward is done, so that the exchange overlaps the rest of backward; then
 * the data loss (one float); then it calls @p wait and divides the sums by @p workers.
 * Frozen layers and buffers (batchnorm running statistics) are never sent. The update that
 * follows is the same on every worker, so the weights stay identical.
 *
 * With equal shares of b examples the mean over workers of the per-worker batch means is
 * the mean over the global batch: N workers with batch b give the weights of one process
 * with batch N*b (to float rounding of the sums), and the reported loss is the mean over
 * the global batch (plus the EWC/L2-SP penalty, the same on every worker). Batch
 * statistics are synchronised only with TLEARN_REDUCE_BATCHNORM: without it batchnorm in
 * training mode normalises each worker's share by its own statistics (cheaper: no
 * exchange inside forward, but the result is that of N batches of b, not one of N*b);
 * with it each such layer adds two small sums in forward (the per-channel sums and
 * count, then the squared deviations about the common mean) and one in backward, each
 * finished before the layer goes on, and the running statistics fold the global batch's
 * mean and variance (unbiased over every worker's count). Dropout and
 * tlearn_model_fit()'s shuffling draw from each model's seed: seed each worker
 * differently (tlearn_model_set_seed() after building) for different masks. A worker
 * whose call fails before backward (invalid labels) makes no reduce calls, so the others
 * see their wait time out; a non-finite loss on one worker still takes part and every
 * worker then returns TLEARN_ENONFINITE.
 *
 * @param reduce         NULL removes the reducer (one process again); the others are
 *                       then ignored.
 * @param wait           required with @p reduce.
 * @param user           passed to both; owned by the caller.
 * @param workers        number of workers the sums run over, 1..65536.
 * @param bucket_floats  floats per bucket (a layer's gradients are never split; a bucket
 *                       closes once it holds at least this many); 0: 1048576 (4 MB).
 * @param flags          0 or TLEARN_REDUCE_* values or-ed.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL model, NULL wait with reduce, workers or flags
 *         out of range), TLEARN_ENOMEM. Nothing changes on failure.
 * @note Not thread-safe for one model; the staging buffer (as many floats as trainable
 *       parameters) is allocated at the first step and kept.
 * @since 1.1
 */
TLEARN_API int tlearn_model_set_reducer(tlearn_model *m, tlearn_reduce_fn reduce,
                                        tlearn_reduce_wait_fn wait, void *user, int workers,
                                        size_t bucket_floats, int flags);
/** @} */

/* ------------------------------------------------------------------------------------ */
/** @name The BLAS underneath */
/** @{ */
/** Why BLIS runs the sub-configuration it runs, as reported by tlearn_blas_info().
 *  Values are fixed. @since 1.1 */
enum tlearn_blas_reason {
    TLEARN_BLAS_BLIS_CHOICE = 1, /**< BLIS's own choice from cpuid, left alone */
    TLEARN_BLAS_HOST = 2,        /**< the environment sets BLIS_ARCH_TYPE: never overridden */
    TLEARN_BLAS_STEERED = 3,     /**< BLIS would have fallen back to `generic`; libtlearn
                                      selected the sub-configuration the CPU supports */
    TLEARN_BLAS_OPT_OUT = 4,     /**< TLEARN_BLIS_ARCH=keep: BLIS's own choice, not examined */
    TLEARN_BLAS_ALREADY_INIT = 5 /**< BLIS would have used `generic` and had been initialised
                                      before libtlearn first used it: could not steer */
};

/** Bytes that always hold the line of tlearn_blas_info(). @since 1.1 */
#define TLEARN_BLAS_INFO_MAX 256

/**
 * Which BLIS runs libtlearn's matrix products, and why, as one line of `key=value` fields:
 * "blis=0.9.0 arch=skx reason=steered blis_choice=generic cpu=AuthenticAMD family=26
 * model=2 isa=avx512". `arch` is the sub-configuration in use (BLIS's bli_arch_query_id()),
 * `reason` one of blis, host, steered, opt-out, already-initialised (enum
 * tlearn_blas_reason), `blis_choice` what BLIS chose or would choose by itself ("-" when not
 * asked), `isa` the vector extensions the CPU and OS offer (avx512, avx2-fma, none). Fields
 * may be appended in later versions.
 *
 * At its first BLIS use (the first model created, or this call) libtlearn checks, once per
 * process, whether BLIS would fall back to its slow `generic` kernels on a CPU that one of
 * its configured sub-configurations supports (AVX-512F/DQ/BW/VL: skx; AVX2 and FMA:
 * zen3/zen2/zen on AMD, haswell), and then selects that one by setting BLIS_ARCH_TYPE just
 * while BLIS initialises (the variable is removed again). A BLIS_ARCH_TYPE set by the host
 * is never overridden; TLEARN_BLIS_ARCH=keep (any value but "auto") opts out. The choice
 * is process-wide: BLIS has one sub-configuration per process, used by the host's own BLIS
 * calls too. To avoid the brief setenv() racing with getenv() on other threads, call this
 * function (or create a model) before starting threads, or set either variable.
 * @param buf     receives the NUL-terminated line; may be NULL when @p cap is 0.
 * @param cap     capacity of @p buf in bytes; TLEARN_BLAS_INFO_MAX always suffices.
 * @param reason  receives an enum tlearn_blas_reason value; may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL (NULL buf with cap > 0), TLEARN_ESHAPE (cap too small:
 *         buf holds the start of the line, NUL-terminated; *reason is set).
 * @note Thread-safe; the one-time choice runs under pthread_once().
 * @since 1.1
 */
TLEARN_API int tlearn_blas_info(char *buf, size_t cap, int *reason);
/** @} */

#ifdef __cplusplus
}
#endif

#endif /* TLEARN_TLEARN_H */
