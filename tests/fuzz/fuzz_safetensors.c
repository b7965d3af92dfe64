/* libFuzzer target: the safetensors importer on arbitrary bytes, from memory, into a fixed
 * model, strict and partial, with and without a name map. A failed import must leave the
 * model unchanged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tlearn_model *m;
static float before[64], after[64];

/* "0.*" -> "fc1.*", "2.*" -> "fc2.*", anything else skipped */
static int torch_names(const char *file_name, char *out, size_t out_len, void *user)
{
    (void)user;
    if ((file_name[0] != '0' && file_name[0] != '2') || file_name[1] != '.')
        return 0;
    snprintf(out, out_len, "%s%s", file_name[0] == '0' ? "fc1" : "fc2", file_name + 1);
    return 1;
}

static size_t snapshot(float *dst)
{
    size_t k = 0;
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            const tl_tensor *t = &m->layers[i]->param[p].t;
            memcpy(dst + k, t->data, t->numel * sizeof(float));
            k += t->numel;
        }
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!m) { /* the model make_seeds.c writes: input 3, fc1 4, act1, fc2 2 (22 floats) */
        if (tlearn_model_create(&m, 3, 1, 1) || tlearn_model_add_dense(m, "fc1", 4) ||
            tlearn_model_add_activation(m, "act1", TLEARN_ACT_RELU, 0.0f) ||
            tlearn_model_add_dense(m, "fc2", 2))
            abort();
    }
    for (int v = 0; v < 4; v++) {
        size_t n = snapshot(before), matched = 0;
        int rc = tl_safetensors_import_buffer("fuzz", m, data, size, v & 2 ? torch_names : NULL,
                                              NULL, v & 1 ? TLEARN_LOAD_PARTIAL
                                                          : TLEARN_LOAD_STRICT, &matched);
        snapshot(after);
        if (rc != TLEARN_OK && memcmp(before, after, n * sizeof(float)) != 0)
            abort(); /* changed on failure */
    }
    return 0;
}
