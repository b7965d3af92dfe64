/* Helper for test_safetensors_torch.py (public API only):
 *   st_tool predict ARCH WEIGHTS.safetensors X.f32 N OUT.f32
 *       build ARCH, import WEIGHTS strictly, write predictions for N inputs
 *   st_tool export ARCH SEED OUT.safetensors X.f32 N PRED.f32
 *       build ARCH with SEED (BN buffers filled deterministically), export, write predictions
 * ARCH "mlp": torch.nn.Sequential(Linear(20,32), ReLU(), Linear(32,16), ReLU(), Linear(16,10))
 * ARCH "cnn": Sequential(Conv2d(3,8,3,padding=1), BatchNorm2d(8), ReLU(), MaxPool2d(2),
 *             Flatten(), Linear(128,10)), input 3x8x8. Layer names are Sequential indexes. */
#include "common.h"

static tlearn_model *build(const char *arch, uint64_t seed, size_t *in_size)
{
    tlearn_model *m;
    if (strcmp(arch, "mlp") == 0) {
        CHECK_OK(tlearn_model_create(&m, 20, 1, 1));
        CHECK_OK(tlearn_model_set_seed(m, seed));
        CHECK_OK(tlearn_model_add_dense(m, "0", 32));
        CHECK_OK(tlearn_model_add_activation(m, "1", TLEARN_ACT_RELU, 0.0f));
        CHECK_OK(tlearn_model_add_dense(m, "2", 16));
        CHECK_OK(tlearn_model_add_activation(m, "3", TLEARN_ACT_RELU, 0.0f));
        CHECK_OK(tlearn_model_add_dense(m, "4", 10));
        *in_size = 20;
    } else if (strcmp(arch, "cnn") == 0) {
        CHECK_OK(tlearn_model_create(&m, 3, 8, 8));
        CHECK_OK(tlearn_model_set_seed(m, seed));
        CHECK_OK(tlearn_model_add_conv2d(m, "0", 8, 3, 1, 1, 1));
        CHECK_OK(tlearn_model_add_batchnorm(m, "1", 1e-5f, 0.1f));
        CHECK_OK(tlearn_model_add_activation(m, "2", TLEARN_ACT_RELU, 0.0f));
        CHECK_OK(tlearn_model_add_maxpool2d(m, "3", 2, 0, 0));
        CHECK_OK(tlearn_model_add_flatten(m, "4"));
        CHECK_OK(tlearn_model_add_dense(m, "5", 10));
        *in_size = 3 * 8 * 8;
        /* non-trivial BN statistics and affine parameters */
        float v[8];
        const char *names[] = {"1.running_mean", "1.running_var", "1.weight", "1.bias"};
        for (int t = 0; t < 4; t++) {
            for (int i = 0; i < 8; i++)
                v[i] = t == 1 ? 0.5f + 0.125f * (float)((i * 5 + (int)seed) % 7)
                              : 0.1f * (float)((i * 3 + t + (int)seed) % 5) - 0.2f;
            CHECK_OK(tlearn_model_set_tensor(m, names[t], v, 8));
        }
    } else {
        fprintf(stderr, "st_tool: unknown arch '%s'\n", arch);
        exit(2);
    }
    return m;
}

static float *read_floats(const char *path, size_t n)
{
    float *x = malloc(n * sizeof *x);
    FILE *f = fopen(path, "rb");
    if (!f || fread(x, sizeof *x, n, f) != n) {
        fprintf(stderr, "st_tool: cannot read %zu floats from %s\n", n, path);
        exit(1);
    }
    fclose(f);
    return x;
}

static void predict_to(tlearn_model *m, const char *xpath, size_t n, size_t in_size,
                       const char *out)
{
    float *x = read_floats(xpath, n * in_size);
    float *y = malloc(n * 10 * sizeof *y);
    CHECK_OK(tlearn_model_predict(m, x, n, y, n * 10));
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(y, sizeof *y, n * 10, f) != n * 10 || fclose(f) != 0) {
        fprintf(stderr, "st_tool: cannot write %s\n", out);
        exit(1);
    }
    free(x);
    free(y);
}

int main(int argc, char **argv)
{
    size_t in_size;
    if (argc == 7 && strcmp(argv[1], "predict") == 0) {
        tlearn_model *m = build(argv[2], 0, &in_size);
        size_t matched;
        CHECK_OK(tlearn_model_import_safetensors(m, argv[3], NULL, NULL, TLEARN_LOAD_STRICT,
                                                 &matched));
        int count;
        CHECK_OK(tlearn_model_tensor_count(m, &count));
        if (matched != (size_t)count) {
            fprintf(stderr, "st_tool: matched %zu of %d tensors\n", matched, count);
            return 1;
        }
        predict_to(m, argv[4], (size_t)atol(argv[5]), in_size, argv[6]);
        tlearn_model_destroy(&m);
        return 0;
    }
    if (argc == 8 && strcmp(argv[1], "export") == 0) {
        tlearn_model *m = build(argv[2], (uint64_t)atol(argv[3]), &in_size);
        CHECK_OK(tlearn_model_export_safetensors(m, argv[4]));
        predict_to(m, argv[5], (size_t)atol(argv[6]), in_size, argv[7]);
        tlearn_model_destroy(&m);
        return 0;
    }
    fprintf(stderr, "usage: st_tool predict ARCH W.safetensors X N OUT | "
                    "export ARCH SEED OUT.safetensors X N PRED\n");
    return 2;
}
