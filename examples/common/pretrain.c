#include "pretrain.h"

#include <string.h>

tlearn_model *example_pretrain(const fmnist *train, int features)
{
    tlearn_model *m;
    tlearn_optim *o;
    CHECK(tlearn_model_create(&m, 1, 28, 28));
    CHECK(tlearn_model_set_seed(m, 7));
    CHECK(tlearn_model_add_conv2d(m, "conv1", 16, 3, 1, 1, 1));
    CHECK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_maxpool2d(m, "pool1", 2, 0, 0));
    CHECK(tlearn_model_add_conv2d(m, "conv2", 32, 3, 1, 1, 1));
    CHECK(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_maxpool2d(m, "pool2", 2, 0, 0));
    CHECK(tlearn_model_add_dense(m, "fc1", features));
    CHECK(tlearn_model_add_activation(m, "relu3", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_dense(m, "fc2", 5));

    size_t n = 0, limit = train->n < 6000 ? train->n : 6000;
    float *x = malloc(limit * FMNIST_PIXELS * sizeof *x);
    int32_t *y = malloc(limit * sizeof *y);
    if (!x || !y)
        exit(1);
    for (size_t i = 0; i < limit; i++)
        if (train->labels[i] < 5) {
            memcpy(x + n * FMNIST_PIXELS, train->images + i * FMNIST_PIXELS,
                   FMNIST_PIXELS * sizeof *x);
            y[n++] = train->labels[i];
        }
    CHECK(tlearn_optim_create(&o, TLEARN_ADAM));
    CHECK(tlearn_optim_set(o, TLEARN_OPT_LR, 2e-3));
    CHECK(tlearn_model_fit(m, o, x, y, n, 64, 1, 1, NULL, NULL));
    tlearn_optim_destroy(&o);
    free(x);
    free(y);
    return m;
}
