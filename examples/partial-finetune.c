/* Partial fine-tuning with discriminative learning rates and gradual unfreezing.
 *
 *   1. Load a pretrained CNN (argv[1], a libtlearn checkpoint) or, without an argument,
 *      pretrain one for a few seconds on Fashion-MNIST classes 0..4.
 *   2. Replace its head with a 10-way one.
 *   3. Stage 1: only the new head trains (everything up to "relu3" frozen), so the random
 *      head does not send large gradients into the pretrained layers.
 *   4. Stage 2: unfreeze conv2 and fc1 as well (conv1 stays frozen: its edge detectors are
 *      generic) with ULMFiT's discriminative learning rates: each trainable layer from the
 *      head back gets 1/2.6 of the rate of the layer after it. The same tlearn_freeze
 *      policy is applied between epochs; new optimizer state starts fresh.
 *   5. Report the test accuracy after each stage.
 *
 * Build: cc partial-finetune.c common/fmnist.c common/pretrain.c $(pkg-config --cflags --libs tlearn) -lz
 * Usage: partial-finetune [PRETRAINED.tlc]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tlearn/tlearn.h>

#include "common/pretrain.h"

enum { FEATURES = 64, PER_CLASS = 20, TEST = 2000, CLASSES = 10, BATCH = 16 };

/* Progress callback of tlearn_model_fit(): one line at the end of each epoch. */
static int on_progress(int epoch, int epochs, size_t step, size_t steps, float loss, void *user)
{
    if (step + 1 == steps)
        printf("  %s epoch %d/%d loss %.4f\n", (const char *)user, epoch + 1, epochs,
               (double)loss);
    return 0; /* non-zero would stop training (TLEARN_ECANCELED) */
}

static void report(tlearn_model *m, const fmnist *test, const char *stage)
{
    float loss, acc;
    CHECK(tlearn_model_evaluate(m, test->images, test->labels, test->n, &loss, &acc));
    printf("%s accuracy=%.4f\n", stage, (double)acc);
}

int main(int argc, char **argv)
{
    print_blas_info();
    char err[256];
    fmnist train, test;
    if (fmnist_load(&train, NULL, "train", 0, err, sizeof err) != 0 ||
        fmnist_load(&test, NULL, "t10k", TEST, err, sizeof err) != 0) {
        fprintf(stderr, "partial-finetune: %s\n", err);
        return 1;
    }
    tlearn_model *m;
    if (argc > 1)
        CHECK(tlearn_model_load(&m, NULL, argv[1]));
    else
        m = example_pretrain(&train, FEATURES);

    /* PER_CLASS labelled images of each class; tlearn_model_fit shuffles them. */
    size_t n = 0;
    int count[CLASSES] = {0};
    float *x = malloc(CLASSES * PER_CLASS * FMNIST_PIXELS * sizeof *x);
    int32_t *y = malloc(CLASSES * PER_CLASS * sizeof *y);
    if (!x || !y)
        return 1;
    for (size_t i = 0; i < train.n && n < CLASSES * PER_CLASS; i++)
        if (count[train.labels[i]]++ < PER_CLASS) {
            memcpy(x + n * FMNIST_PIXELS, train.images + i * FMNIST_PIXELS,
                   FMNIST_PIXELS * sizeof *x);
            y[n++] = train.labels[i];
        }

    CHECK(tlearn_model_replace_head(m, "relu3", CLASSES));
    tlearn_optim *o;
    CHECK(tlearn_optim_create(&o, TLEARN_ADAM));
    CHECK(tlearn_optim_set(o, TLEARN_OPT_LR, 3e-3));

    /* Stage 1: the head alone. */
    tlearn_freeze *head_only, *partial;
    CHECK(tlearn_freeze_create(&head_only));
    CHECK(tlearn_freeze_until(head_only, "relu3"));
    CHECK(tlearn_model_apply_freeze(m, head_only));
    CHECK(tlearn_model_fit(m, o, x, y, n, BATCH, 10, 1, on_progress, "head"));
    report(m, &test, "stage 1 (head only)");

    /* Stage 2: conv1 frozen; conv2, fc1 and the head train at decreasing rates. */
    CHECK(tlearn_freeze_create(&partial));
    CHECK(tlearn_freeze_until(partial, "pool1"));
    CHECK(tlearn_freeze_ulmfit(partial, 2.6f));
    CHECK(tlearn_model_apply_freeze(m, partial));
    int layers;
    CHECK(tlearn_model_layer_count(m, &layers));
    for (int i = 0; i < layers; i++) {
        const char *name;
        size_t params;
        int frozen;
        float scale;
        CHECK(tlearn_model_layer_name(m, i, &name));
        CHECK(tlearn_model_layer_param_count(m, i, &params));
        CHECK(tlearn_model_layer_frozen(m, name, &frozen));
        CHECK(tlearn_model_layer_lr_scale(m, name, &scale));
        if (params > 0)
            printf("  %-6s %7zu parameters  %s  lr x %.3f\n", name, params,
                   frozen ? "frozen   " : "trainable", (double)scale);
    }
    CHECK(tlearn_model_fit(m, o, x, y, n, BATCH, 10, 1, on_progress, "partial"));
    report(m, &test, "stage 2 (partial, discriminative LRs)");

    tlearn_freeze_destroy(&head_only);
    tlearn_freeze_destroy(&partial);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    free(x);
    free(y);
    fmnist_free(&train);
    fmnist_free(&test);
    return 0;
}
