/* Writes the seed corpora of the fuzz targets (small valid files):
 *   make_seeds DIR   ->  DIR/checkpoint/NAME.ckpt and DIR/safetensors/NAME.safetensors
 * The committed copies live in tests/fuzz/corpus/; rerun this when the format changes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlearn/tlearn.h"

#define OK(call)                                                                              \
    do {                                                                                      \
        if ((call) != TLEARN_OK) {                                                            \
            fprintf(stderr, "%s: %s\n", #call, tlearn_errmsg());                              \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static tlearn_model *mlp(uint64_t seed)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 1, 1));
    OK(tlearn_model_set_seed(m, seed));
    OK(tlearn_model_add_dense(m, "fc1", 4));
    OK(tlearn_model_add_activation(m, "act1", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_dense(m, "fc2", 2));
    return m;
}

static void path(char *buf, size_t cap, const char *dir, const char *sub, const char *name)
{
    snprintf(buf, cap, "%s/%s/%s", dir, sub, name);
}

static void write_raw(const char *p, const char *header, const void *data, size_t dlen)
{
    FILE *f = fopen(p, "wb");
    unsigned long long h = strlen(header);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(h >> (8 * i));
    if (!f || fwrite(len, 1, 8, f) != 8 || fwrite(header, 1, h, f) != h ||
        (dlen && fwrite(data, 1, dlen, f) != dlen) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", p);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char p[1024];
    float x[8 * 3];
    int32_t y[8];
    for (int i = 0; i < 24; i++)
        x[i] = (float)((i * 7) % 11) / 5.0f - 1.0f;
    for (int i = 0; i < 8; i++)
        y[i] = i % 2;

    /* checkpoints: inference, full with Adam state, compressed with EWC, SGD + freeze */
    tlearn_model *m = mlp(1);
    OK(tlearn_model_set_metadata(m, "seed", "corpus"));
    path(p, sizeof p, dir, "checkpoint", "inference.ckpt");
    OK(tlearn_model_save(m, NULL, p, TLEARN_SAVE_INFERENCE));
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
    path(p, sizeof p, dir, "checkpoint", "adam.ckpt");
    OK(tlearn_model_save(m, o, p, TLEARN_SAVE_FULL));
    OK(tlearn_ewc_consolidate(m, x, y, 8, TLEARN_FISHER_EMPIRICAL, 2.0f));
    path(p, sizeof p, dir, "checkpoint", "ewc-zlib.ckpt");
    OK(tlearn_model_save(m, o, p, TLEARN_SAVE_COMPRESS(9)));
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    m = mlp(2);
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9));
    tlearn_freeze *f;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_match(f, "fc1", 1));
    OK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f);
    OK(tlearn_model_train_step(m, o, x, y, 8, NULL));
    path(p, sizeof p, dir, "checkpoint", "sgd-frozen.ckpt");
    OK(tlearn_model_save(m, o, p, TLEARN_SAVE_FULL));
    /* every layer kind, small */
    tlearn_model *c;
    OK(tlearn_model_create(&c, 2, 4, 4));
    OK(tlearn_model_add_conv2d(c, "conv", 2, 3, 1, 1, 1));
    OK(tlearn_model_add_batchnorm(c, "bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(c, "act", TLEARN_ACT_GELU, 0.0f));
    OK(tlearn_model_add_add(c, "res", "conv"));
    OK(tlearn_model_add_maxpool2d(c, "max", 2, 0, 0));
    OK(tlearn_model_add_avgpool2d(c, "avg", 2, 1, 1, 1));
    OK(tlearn_model_add_global_avgpool(c, "gap"));
    OK(tlearn_model_add_flatten(c, "flat"));
    OK(tlearn_model_add_dropout(c, "drop", 0.5f));
    OK(tlearn_model_add_dense(c, "head", 2));
    path(p, sizeof p, dir, "checkpoint", "all-kinds.ckpt");
    OK(tlearn_model_save(c, NULL, p, TLEARN_SAVE_INFERENCE | TLEARN_SAVE_COMPRESS(1)));
    /* domain adaptation: a loss, an MMD term, bandwidths, TENT's snapshot (DOMAIN, 1.1) */
    OK(tlearn_model_set_output_loss(c, 0, TLEARN_LOSS_SOFTMAX_CE, 0.5f));
    OK(tlearn_model_set_discrepancy(c, "gap", TLEARN_DISCREPANCY_MMD, 2.0f));
    OK(tlearn_model_set_mmd_bandwidths(c, (const float[]){1.0f, 4.0f}, 2));
    float cx[4 * 32];
    for (int i = 0; i < 4 * 32; i++)
        cx[i] = (float)((i * 5) % 13) / 6.0f - 1.0f;
    tlearn_optim *to;
    OK(tlearn_optim_create(&to, TLEARN_SGD));
    OK(tlearn_model_tent_step(c, to, (const void *[]){cx}, 1, 4, NULL));
    path(p, sizeof p, dir, "checkpoint", "domain-tent.ckpt");
    OK(tlearn_model_save(c, to, p, TLEARN_SAVE_FULL));
    tlearn_optim_destroy(&to);
    tlearn_model_destroy(&c);
    /* safetensors: our export, and hand-written F16/BF16/I64 and torch names */
    path(p, sizeof p, dir, "safetensors", "export.safetensors");
    OK(tlearn_model_export_safetensors(m, p));
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    static const char mixed[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"0.weight\":{\"dtype\":\"F16\",\"shape\":[4,3],\"data_offsets\":[0,24]},"
        "\"0.bias\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
        "\"2.weight\":{\"dtype\":\"F32\",\"shape\":[2,4],\"data_offsets\":[32,64]},"
        "\"2.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[64,72]},"
        "\"1.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[72,80]}}";
    unsigned char data[80];
    for (int i = 0; i < 80; i++)
        data[i] = (unsigned char)(i % 2 ? 0x3C : (i * 13) & 0xFF);
    path(p, sizeof p, dir, "safetensors", "torch-names-mixed.safetensors");
    write_raw(p, mixed, data, sizeof data);
    return 0;
}
