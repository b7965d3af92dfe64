/* Losses, optimizers and the training step. */
#ifndef TL_TRAIN_H
#define TL_TRAIN_H

#include "../model/model.h"
#include "schedule.h"

struct tlearn_optim {
    int kind;
    double lr, momentum, dampening, weight_decay, beta1, beta2, eps, clip_norm;
    int nesterov;
    tl_sched_run *sched; /* attached schedule (owned copy), or NULL */
};

/* Learning rate, SGD momentum and Adam beta1 the next update uses (a schedule's values). */
void tl_optim_current(const tlearn_optim *o, double *lr, double *momentum, double *beta1);
/* One step of an attached schedule that advances per @p unit (enum tlearn_sched_unit). */
void tl_sched_advance(const tlearn_optim *o, int unit);

/* Softmax cross-entropy, batch mean. Writes d(loss)/d(logits) into @p dlogits (may be NULL)
 * and returns the loss in double precision. @p correct counts argmax hits (may be NULL). */
double tl_loss_softmax_ce(const float *logits, const int32_t *labels, size_t n, int classes,
                          float *dlogits, size_t *correct);
/* Cross-entropy at each of @p rows positions (rows of @p classes logits) against its label,
 * mean over the positions whose label is not @p ignore (at least one: the caller checks),
 * as torch's cross_entropy(ignore_index=...); ignored rows get a zero gradient. */
double tl_loss_token_ce(const float *logits, const int32_t *labels, size_t rows, int classes,
                        int32_t ignore, float *dlogits);
/* Cross-entropy with the model's class weights and label smoothing (as torch): the sum of
 * the per-example terms, and their normaliser (sum of the label weights) in *den. Writes
 * the gradient of sum/den into @p dlogits (may be NULL). */
double tl_loss_ce_sum(const tlearn_model *m, const float *logits, const int32_t *labels,
                      size_t n, int classes, float *dlogits, double *den);
/* The class weights fit the output size? */
int tl_loss_check(const char *fn, const tlearn_model *m, size_t classes);
/* In-batch contrastive loss (InfoNCE) of 2 x @p pairs rows of @p dim floats (anchors, then
 * their positives) over cosine similarity / @p tau, one direction or @p symmetric, as
 * sentence-transformers' MultipleNegatives(Symmetric)RankingLoss; the gradient of the mean
 * into @p dz (may be NULL). @p work holds tl_loss_contrastive_work() floats (8-byte
 * aligned). */
size_t tl_loss_contrastive_work(size_t pairs, size_t dim);
double tl_loss_contrastive(const tl_blas *b, const float *z, size_t pairs, size_t dim,
                           float tau, int symmetric, float *work, float *dz);
/* Mean squared error over all n*size elements; gradient into @p dout (may be NULL). */
double tl_loss_mse(const float *out, const float *targets, size_t n, size_t size, float *dout);
/* Labels in [0, classes)? Returns status naming the first bad one. */
int tl_check_labels(const char *fn, const int32_t *labels, size_t n, int classes);

/* One update of one tensor with the fused rule: weight decay, regulariser gradient
 * (reg_a*theta - reg_b), learning-rate scale, and the optimizer. */
int tl_optim_update(const tlearn_optim *o, tl_slot *s, float *theta, size_t numel,
                    float lr_scale, float grad_scale);
/* The same with up to @p threads threads (the model's count); identical results. Both
 * return TLEARN_ENOMEM or TLEARN_ENONFINITE (a new value would be NaN/Inf) with nothing
 * changed. */
int tl_optim_update_mt(const tlearn_optim *o, tl_slot *s, float *theta, size_t numel,
                       float lr_scale, float grad_scale, int threads);
/* The update of every trainable tensor of @p m, all or nothing: state buffers are allocated
 * and a dry run proves every new value finite before the first weight changes
 * (TLEARN_ENOMEM, TLEARN_ENONFINITE otherwise). */
int tl_optim_step(const char *fn, const tlearn_optim *o, tlearn_model *m, float grad_scale);

/* step.c's shared parts for other steps (adapt.c): running statistics that a commit would
 * make non-finite (ENONFINITE), and the update of every trainable tensor once the
 * gradients are known finite (clipping, all or nothing). */
int tl_step_check_commit(const char *fn, const tlearn_model *m, size_t n, int from);
int tl_step_apply_update(const char *fn, tlearn_model *m, tlearn_optim *o);
/* tlearn_model_fit_run's pieces (step.c): a train step of a whole batch from layer 0; the
 * forward and backward of one batch of an accumulated step (gradients into the slots,
 * batch statistics committed); the update of whatever gradients the slots hold. */
int tl_train_check_batch(const char *fn, tlearn_model *m, const void *x, const void *y,
                         size_t n); /* model, single input, x, labels/targets, n */
int tl_train_step(const char *fn, tlearn_model *m, tlearn_optim *o, const float *x,
                  const int32_t *labels, const float *targets, size_t n, float *loss);
int tl_train_backward(const char *fn, tlearn_model *m, const float *x, const int32_t *labels,
                      const float *targets, size_t n, double *loss);
int tl_train_apply(const char *fn, tlearn_model *m, tlearn_optim *o);
/* Data parallelism (reduce.c). A step calls tl_reduce_begin before forward (arming the
 * per-layer hook, and synchronised BatchNorm's sums) and tl_reduce_end after backward, which sums the gradients and *loss across
 * workers and leaves their averages; both do nothing without a reducer. After a failure
 * between the two, tl_reduce_abandon disarms the hook. */
int tl_reduce_begin(const char *fn, tlearn_model *m);
int tl_reduce_end(const char *fn, tlearn_model *m, double *loss);
void tl_reduce_abandon(tlearn_model *m);
/* A reducer with TLEARN_REDUCE_* @p flag is set. */
int tl_reduce_wants(const tlearn_model *m, int flag);
/* Sum @p count floats across workers in one round (evaluate counts, Fisher sums); the
 * failure message names @p what. Needs a reducer. */
int tl_reduce_floats(const char *fn, tlearn_model *m, float *data, size_t count,
                     const char *what);

/* Domain adaptation's settings as checkpoints keep them (adapt.c owns them; io/ writes and
 * reads the DOMAIN section through the calls below only). */
#define TL_DA_MAX_TERMS 4
#define TL_DA_MAX_KERNELS 8
typedef struct tl_da_state {
    int noutputs; /* loss settings for output positions 0..noutputs-1 */
    int loss[TL_MAX_MODEL_OUTPUTS];
    float weight[TL_MAX_MODEL_OUTPUTS];
    int nterms;
    char term_layer[TL_DA_MAX_TERMS][TL_NAME_MAX];
    int term_kind[TL_DA_MAX_TERMS];
    float term_weight[TL_DA_MAX_TERMS];
    int nmult; /* 0: the default multipliers */
    float mult[TL_DA_MAX_KERNELS];
    int tent;             /* TENT adapting: its snapshot follows */
    int tent_layers;      /* == the model's layer count */
    int *tent_frozen;     /* [tent_layers] (borrowed) */
    float *tent_saved;    /* every BatchNorm tensor, layer then parameter order (borrowed) */
    size_t tent_floats;   /* tl_da_bn_floats() */
} tl_da_state;
/* 1 and @p s filled when @p m has settings to keep, else 0. */
int tl_da_export(const tlearn_model *m, tl_da_state *s);
/* Apply @p s to a freshly loaded model through the setters' checks (TLEARN_EFORMAT with
 * their message); TENT's snapshot is copied. On failure the loader destroys the model. */
int tl_da_import(const char *fn, tlearn_model *m, const tl_da_state *s);
/* Floats in every BatchNorm tensor of @p m (the size of TENT's snapshot). */
size_t tl_da_bn_floats(const tlearn_model *m);

#include "ewc.h"

#endif
