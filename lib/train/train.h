/* Losses, optimizers and the training step. */
#ifndef TL_TRAIN_H
#define TL_TRAIN_H

#include "../model/model.h"

struct tlearn_optim {
    int kind;
    double lr, momentum, dampening, weight_decay, beta1, beta2, eps, clip_norm;
    int nesterov;
};

/* Softmax cross-entropy, batch mean. Writes d(loss)/d(logits) into @p dlogits (may be NULL)
 * and returns the loss in double precision. @p correct counts argmax hits (may be NULL). */
double tl_loss_softmax_ce(const float *logits, const int32_t *labels, size_t n, int classes,
                          float *dlogits, size_t *correct);
/* Cross-entropy at each of @p rows positions (rows of @p classes logits) against its label,
 * mean over the positions whose label is not @p ignore (at least one: the caller checks),
 * as torch's cross_entropy(ignore_index=...); ignored rows get a zero gradient. */
double tl_loss_token_ce(const float *logits, const int32_t *labels, size_t rows, int classes,
                        int32_t ignore, float *dlogits);
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

#include "ewc.h"

#endif
