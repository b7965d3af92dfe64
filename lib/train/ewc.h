/* EWC and L2-SP state as the rest of the library sees it. io/ saves and restores it only
 * through these calls, so the layout inside train/ewc.c can change freely. */
#ifndef TL_EWC_H
#define TL_EWC_H

#include "../model/model.h"

void tl_ewc_free(struct tl_ewc *e);
/* Layers at index >= keep are being removed: drop their EWC and L2-SP entries. */
int tl_ewc_drop_layers(tlearn_model *m, int keep);
int tl_ewc_active(const tlearn_model *m);
/* The penalty at the current weights, in double. */
double tl_ewc_penalty(const tlearn_model *m);

/* ---- for checkpoints ---- */
/* Called for every array of the state: a name unique within the state (e.g.
 * "task0/fisher/fc1.weight"), its data and element count. Return non-zero to stop. */
typedef int (*tl_ewc_array_fn)(const char *name, const float *data, size_t numel, void *user);
/* The scalar part (mode, gamma, task lambdas, L2-SP alpha/beta, which arrays exist) as one
 * NUL-terminated text of "key=value" lines; *len receives its length. Returns status. */
int tl_ewc_describe(const tlearn_model *m, char *buf, size_t cap, size_t *len);
/* Visit every array. Returns status, or the callback's non-zero value. */
int tl_ewc_visit(const tlearn_model *m, tl_ewc_array_fn fn, void *user);
/* Restore into a model with the same layers: begin with the text from tl_ewc_describe,
 * give every array by name, then finish (which checks that nothing is missing and rebuilds
 * the fused reg_a/reg_b arrays). Any failure leaves the model without EWC state.
 * Malformed text or unknown names/sizes fail with TLEARN_EFORMAT and a message. */
int tl_ewc_restore_begin(tlearn_model *m, const char *text, size_t len);
int tl_ewc_restore_array(tlearn_model *m, const char *name, const float *data, size_t numel);
int tl_ewc_restore_end(tlearn_model *m);

#endif
