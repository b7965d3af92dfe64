/* Load weights trained in PyTorch from a safetensors file, and use them.
 *
 * examples/python/torch_to_safetensors.py trains this network in PyTorch and saves its
 * state_dict as safetensors:
 *
 *     features = Sequential(Conv2d(1, 8, 3, padding=1), BatchNorm2d(8), ReLU(), MaxPool2d(2))
 *     classifier = Linear(8 * 14 * 14, 10)
 *
 * This program builds the same architecture with libtlearn (layouts are PyTorch's: OIHW
 * conv weights, [out, in] dense weights, flattening in C, H, W order), maps PyTorch's
 * tensor names onto its layer names with a tlearn_name_map_fn, imports the weights
 * strictly (every model tensor must come from the file) and measures the accuracy on
 * 2,000 Fashion-MNIST test images: the same number PyTorch printed, up to rounding.
 *
 * Build: cc load-pytorch.c common/fmnist.c $(pkg-config --cflags --libs tlearn) -lz
 * Usage: /usr/bin/python3 python/torch_to_safetensors.py net.safetensors
 *        load-pytorch net.safetensors
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tlearn/tlearn.h>

#include "common/check.h"
#include "common/fmnist.h"

/* PyTorch name prefix -> libtlearn layer name. */
static const char *const name_map[][2] = {
    {"features.0.", "conv1"},
    {"features.1.", "bn1"},
    {"classifier.", "fc"},
};

/* Called once per tensor in the file: write the model's name for it into out and
 * return 1, or return 0 to skip the tensor. "features.1.running_var" -> "bn1.running_var". */
static int map_name(const char *file_name, char *out, size_t out_len, void *user)
{
    (void)user;
    for (size_t i = 0; i < sizeof name_map / sizeof name_map[0]; i++) {
        size_t len = strlen(name_map[i][0]);
        if (strncmp(file_name, name_map[i][0], len) == 0) {
            int w = snprintf(out, out_len, "%s.%s", name_map[i][1], file_name + len);
            return w > 0 && (size_t)w < out_len;
        }
    }
    return 0; /* not ours: skip */
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: load-pytorch FILE.safetensors\n");
        return 2;
    }
    print_blas_info();
    tlearn_model *m;
    CHECK(tlearn_model_create(&m, 1, 28, 28));
    CHECK(tlearn_model_add_conv2d(m, "conv1", 8, 3, 1, 1, 1));
    CHECK(tlearn_model_add_batchnorm(m, "bn1", 1e-5f, 0.1f));
    CHECK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_maxpool2d(m, "pool1", 2, 0, 0));
    CHECK(tlearn_model_add_flatten(m, "flat"));
    CHECK(tlearn_model_add_dense(m, "fc", 10));

    size_t matched = 0;
    CHECK(tlearn_model_import_safetensors(m, argv[1], map_name, NULL, TLEARN_LOAD_STRICT,
                                          &matched));
    printf("imported %zu tensors from %s\n", matched, argv[1]);

    char err[256];
    fmnist test;
    if (fmnist_load(&test, NULL, "t10k", 2000, err, sizeof err) != 0) {
        fprintf(stderr, "load-pytorch: %s\n", err);
        return 1;
    }
    float loss, acc;
    CHECK(tlearn_model_evaluate(m, test.images, test.labels, test.n, &loss, &acc));
    printf("tlearn accuracy=%.4f (loss %.4f on %zu test images)\n", (double)acc, (double)loss,
           test.n);
    fmnist_free(&test);
    tlearn_model_destroy(&m);
    return 0;
}
