/* A dense network on Fashion-MNIST: build, train one epoch with Adam, evaluate.
 * Usage: mlp-fmnist [epochs] */
#include <stdio.h>
#include <stdlib.h>

#include <tlearn/tlearn.h>

#include "common/check.h"
#include "common/fmnist.h"
#include "progress.h"

int main(int argc, char **argv)
{
    print_blas_info();
    int epochs = argc > 1 ? atoi(argv[1]) : 1;
    char err[256];
    fmnist train, test;
    if (fmnist_load(&train, NULL, "train", 0, err, sizeof err) ||
        fmnist_load(&test, NULL, "t10k", 0, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    tlearn_model *m;
    CHECK(tlearn_model_create(&m, 1, 28, 28));
    CHECK(tlearn_model_set_seed(m, 42));
    CHECK(tlearn_model_add_dense(m, "fc1", 256));
    CHECK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_dense(m, "fc2", 128));
    CHECK(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_dense(m, "fc3", 10));
    tlearn_optim *o;
    CHECK(tlearn_optim_create(&o, TLEARN_ADAM));
    CHECK(tlearn_optim_set(o, TLEARN_OPT_LR, 1e-3));
    progress_state ps = {"mlp", 64, {0, 0}, 0};
    CHECK(tlearn_model_fit(m, o, train.images, train.labels, train.n, 64, epochs, 1,
                           progress_print, &ps));
    float loss, acc;
    CHECK(tlearn_model_evaluate(m, test.images, test.labels, test.n, &loss, &acc));
    printf("test loss %.4f, accuracy %.4f\n", (double)loss, (double)acc);
    printf("result protocol=mlp epochs=%d accuracy=%.4f\n", epochs, (double)acc);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    fmnist_free(&train);
    fmnist_free(&test);
    return 0;
}
