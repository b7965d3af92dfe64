/* Adapting without training and judging before training (issue 21): prototype heads,
 * embeddings and similarity search, transferability scores. Builds on model/ (chunked
 * inference, the one door for layers); model/ never calls into it. */
#ifndef TL_FEWSHOT_H
#define TL_FEWSHOT_H

#include "../model/model.h"

/* Examples per block when features are computed for a whole set: bounds the memory of
 * updates over large sets to this many rows of features. */
#define TL_FS_BLOCK 1024

/* Activations of producer @p producer (a layer index, or a model input: then x itself)
 * for n examples of the model's single input, into out (n x its size). */
int tl_fs_features(const char *fn, tlearn_model *m, int producer, const float *x, size_t n,
                   float *out);
/* Common checks of a labelled set: x, labels non-NULL, n >= 1, labels in [0, classes). */
int tl_fs_check_labels(const char *fn, const void *x, const int32_t *labels, size_t n,
                       int classes);

/* Left singular vectors and squared singular values of the n x d matrix f (double,
 * row-major): the *r above the rank cutoff, largest first; *u is n x r row-major and *lam
 * has r entries, both owned by the caller (tl_free). Through the eigenvectors of the
 * smaller Gram matrix (min(n, d) squared) by cyclic Jacobi. */
int tl_fs_svd(const char *fn, const double *f, size_t n, size_t d, double **u, double **lam,
              size_t *r);

#endif
