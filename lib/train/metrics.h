/* Evaluation-mode metrics shared by the evaluate variants and fit (metrics.c). */
#ifndef TL_METRICS_H
#define TL_METRICS_H

#include "train.h"

typedef struct tl_eval {
    double loss, den; /* sums; tl_eval_run leaves the mean loss in loss */
    double abs;       /* regression: the mean absolute error */
    double hits, topk, count; /* examples right, in the top k, and evaluated */
} tl_eval;

/* Loss and counts over n examples: with @p labels (cross-entropy: accuracy and top-@p k
 * hits, argmax into @p pred when not NULL) or @p targets (MSE and MAE). With a reducer
 * asked for TLEARN_REDUCE_EVALUATE the sums and counts are over every worker's examples
 * (@p pred stays this worker's). Arguments are checked by the caller. */
int tl_eval_run(const char *fn, tlearn_model *m, const float *x, const int32_t *labels,
                const float *targets, size_t n, int k, int32_t *pred, tl_eval *out);
/* The confusion matrix (rows: true labels) of n predictions into @p cm, summed over every
 * worker's with TLEARN_REDUCE_EVALUATE (exchanged as floats: exact up to 2^24 per cell). */
int tl_eval_confusion(const char *fn, tlearn_model *m, const int32_t *labels,
                      const int32_t *pred, size_t n, size_t classes, int64_t *cm);
/* Precision, recall and F1 of class @p c from a confusion matrix (rows: true labels),
 * 0 where undefined. */
void tl_class_scores(const int64_t *cm, int classes, int c, double *p, double *r, double *f1);

#endif
