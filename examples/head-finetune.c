/* Head-only fine-tuning: keep a pretrained network, train a new classifier head.
 *
 *   1. Load a pretrained CNN (argv[1], a libtlearn checkpoint) or, without an argument,
 *      pretrain one for a few seconds on Fashion-MNIST classes 0..4.
 *   2. tlearn_model_replace_head(): drop fc2 and append a fresh 10-way dense "head".
 *   3. Freeze everything up to "relu3". The frozen backbone never changes, so its output
 *      is computed once (tlearn_model_features) and the head trains from that cache with
 *      tlearn_model_train_step_from(): each epoch costs a small GEMM, not a CNN pass.
 *   4. Evaluate the whole model on 2,000 test images and save it (with the optimizer).
 *
 * Build: cc head-finetune.c common/fmnist.c common/pretrain.c $(pkg-config --cflags --libs tlearn) -lz
 * Usage: head-finetune [PRETRAINED.tlc [OUT.tlc]]   (OUT defaults to head-finetuned.tlc)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tlearn/tlearn.h>

#include "common/pretrain.h"

enum { FEATURES = 64, PER_CLASS = 20, TEST = 2000, CLASSES = 10, BATCH = 16 };

int main(int argc, char **argv)
{
    print_blas_info();
    char err[256];
    fmnist train, test;
    if (fmnist_load(&train, NULL, "train", 0, err, sizeof err) != 0 ||
        fmnist_load(&test, NULL, "t10k", TEST, err, sizeof err) != 0) {
        fprintf(stderr, "head-finetune: %s\n", err);
        return 1;
    }
    tlearn_model *m;
    if (argc > 1)
        CHECK(tlearn_model_load(&m, NULL, argv[1]));
    else
        m = example_pretrain(&train, FEATURES);
    const char *out = argc > 2 ? argv[2] : "head-finetuned.tlc";

    /* A labelled set for the new task: PER_CLASS images of each of the 10 classes. */
    size_t n = 0;
    int count[CLASSES] = {0};
    float *x = malloc(CLASSES * PER_CLASS * FMNIST_PIXELS * sizeof *x);
    int32_t *y = malloc(CLASSES * PER_CLASS * sizeof *y);
    float *feats = malloc(CLASSES * PER_CLASS * FEATURES * sizeof *feats);
    if (!x || !y || !feats)
        return 1;
    for (size_t i = 0; i < train.n && n < CLASSES * PER_CLASS; i++)
        if (count[train.labels[i]]++ < PER_CLASS) {
            memcpy(x + n * FMNIST_PIXELS, train.images + i * FMNIST_PIXELS,
                   FMNIST_PIXELS * sizeof *x);
            y[n++] = train.labels[i];
        }

    /* New head, frozen backbone. */
    tlearn_freeze *f;
    CHECK(tlearn_model_replace_head(m, "relu3", CLASSES));
    CHECK(tlearn_freeze_create(&f));
    CHECK(tlearn_freeze_until(f, "relu3"));
    CHECK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f); /* the model keeps the outcome */
    size_t total, trainable;
    CHECK(tlearn_model_param_count(m, &total, &trainable));
    printf("training %zu of %zu parameters (the head)\n", trainable, total);

    /* The backbone runs once; the head trains from the cached features. The examples
     * are in class order, so visit the batches in a shuffled order each epoch. */
    CHECK(tlearn_model_features(m, "relu3", x, n, feats, n * FEATURES));
    tlearn_optim *o;
    CHECK(tlearn_optim_create(&o, TLEARN_ADAM));
    CHECK(tlearn_optim_set(o, TLEARN_OPT_LR, 1e-2));
    size_t batches = (n + BATCH - 1) / BATCH, order[CLASSES * PER_CLASS / BATCH + 1];
    srand(1);
    for (int epoch = 0; epoch < 40; epoch++) {
        for (size_t b = 0; b < batches; b++)
            order[b] = b;
        for (size_t b = batches - 1; b > 0; b--) { /* Fisher-Yates */
            size_t j = (size_t)rand() % (b + 1), t = order[b];
            order[b] = order[j];
            order[j] = t;
        }
        /* Interleave classes inside a batch too: take every batches-th example. */
        float loss = 0;
        for (size_t b = 0; b < batches; b++) {
            float bx[BATCH * FEATURES];
            int32_t by[BATCH];
            size_t k = 0;
            for (size_t i = order[b]; i < n && k < BATCH; i += batches, k++) {
                memcpy(bx + k * FEATURES, feats + i * FEATURES, sizeof(float) * FEATURES);
                by[k] = y[i];
            }
            CHECK(tlearn_model_train_step_from(m, o, "relu3", bx, by, k, &loss));
        }
        if ((epoch + 1) % 10 == 0)
            printf("epoch %d loss %.4f\n", epoch + 1, (double)loss);
    }

    float loss, acc;
    CHECK(tlearn_model_evaluate(m, test.images, test.labels, test.n, &loss, &acc));
    printf("head-only fine-tuning accuracy=%.4f on %zu test images\n", (double)acc, test.n);
    CHECK(tlearn_model_save(m, o, out, TLEARN_SAVE_FULL));
    printf("saved %s\n", out);

    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    free(x);
    free(y);
    free(feats);
    fmnist_free(&train);
    fmnist_free(&test);
    return 0;
}
