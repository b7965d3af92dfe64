/* The exact-resume scenario shared by test_resume.c (which runs it uninterrupted and up
 * to the checkpoint) and resume_helper.c (which continues it in a fresh process). */
#ifndef TL_IO_RESUME_COMMON_H
#define TL_IO_RESUME_COMMON_H

#include "common.h"

#define RS_IN 10
#define RS_CLASSES 4
#define RS_N 48
#define RS_BATCH 16

static inline tlearn_model *rs_model(void)
{
    tlearn_model *m;
    CHECK_OK(tlearn_model_create(&m, RS_IN, 1, 1));
    CHECK_OK(tlearn_model_set_seed(m, 77));
    CHECK_OK(tlearn_model_add_dense(m, "fc1", 24));
    CHECK_OK(tlearn_model_add_batchnorm(m, "bn1", 1e-5f, 0.1f));
    CHECK_OK(tlearn_model_add_activation(m, "act1", TLEARN_ACT_RELU, 0.0f));
    CHECK_OK(tlearn_model_add_dropout(m, "drop1", 0.3f)); /* draws from the model's RNG */
    CHECK_OK(tlearn_model_add_dense(m, "fc2", 16));
    CHECK_OK(tlearn_model_add_activation(m, "act2", TLEARN_ACT_TANH, 0.0f));
    CHECK_OK(tlearn_model_add_dense(m, "head", RS_CLASSES));
    return m;
}

static inline tlearn_optim *rs_optim(int kind)
{
    tlearn_optim *o;
    CHECK_OK(tlearn_optim_create(&o, kind));
    if (kind == TLEARN_SGD) {
        CHECK_OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.05));
        CHECK_OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
        CHECK_OK(tlearn_optim_set(o, TLEARN_OPT_WEIGHT_DECAY, 1e-3));
    } else {
        CHECK_OK(tlearn_optim_set(o, TLEARN_OPT_LR, 3e-3));
        CHECK_OK(tlearn_optim_set(o, TLEARN_OPT_WEIGHT_DECAY, kind == TLEARN_ADAMW ? 0.02 : 1e-4));
    }
    return o;
}

static inline void rs_data(float *x, int32_t *y)
{
    io_make_data(x, y, RS_N, RS_IN, RS_CLASSES, 31);
}

/* Part one (before the checkpoint): train, consolidate EWC, freeze fc1 and bn stats,
 * scale the head's LR, train on. */
static inline void rs_part1(tlearn_model *m, tlearn_optim *o)
{
    float x[RS_N * RS_IN];
    int32_t y[RS_N];
    rs_data(x, y);
    CHECK_OK(tlearn_model_fit(m, o, x, y, RS_N, RS_BATCH, 2, 1, NULL, NULL));
    CHECK_OK(tlearn_ewc_consolidate(m, x, y, RS_N, TLEARN_FISHER_EMPIRICAL, 5.0f));
    tlearn_freeze *f;
    CHECK_OK(tlearn_freeze_create(&f));
    CHECK_OK(tlearn_freeze_match(f, "fc1", 1));
    CHECK_OK(tlearn_freeze_bn_stats(f, 1));
    CHECK_OK(tlearn_freeze_lr_scale(f, "head", 0.5f));
    CHECK_OK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f);
    CHECK_OK(tlearn_model_fit(m, o, x, y, RS_N, RS_BATCH, 1, 1, NULL, NULL));
}

/* Part two (after the checkpoint). */
static inline void rs_part2(tlearn_model *m, tlearn_optim *o)
{
    float x[RS_N * RS_IN];
    int32_t y[RS_N];
    rs_data(x, y);
    CHECK_OK(tlearn_model_fit(m, o, x, y, RS_N, RS_BATCH, 2, 1, NULL, NULL));
}

#endif
