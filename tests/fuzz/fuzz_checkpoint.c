/* libFuzzer target: the checkpoint loader (tlearn_model_load and
 * tlearn_model_load_weights) on arbitrary bytes, from memory. A file that loads must give a
 * model that predicts, and that saves to a file which loads back to the same tensors. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tlearn_model *fixed;

static int small_enough(const tlearn_model *m)
{
    /* Predicting plans activations; skip models whose activations alone are large, which
     * are valid but would only measure the fuzzer's memory limit. */
    size_t total = tl_shape_size(m->inputs[0].shape);
    for (int i = 0; i < m->nlayers; i++)
        total += tl_shape_size(m->layers[i]->out);
    return total <= (1u << 16);
}

static void one(const uint8_t *data, size_t size);
static int crc_off;

/* Save @p m to memory, load that back (CRCs checked) and compare every tensor. */
static void resave(const tlearn_model *m, const tlearn_optim *o)
{
    tl_wbuf buf;
    int rc = tl_checkpoint_save_buffer("fuzz", m, o, TLEARN_SAVE_COMPRESS(1), &buf);
    if (rc == TLEARN_ENOMEM)
        return;
    if (rc)
        abort();
    tl_checkpoint_fuzz_skip_crc(0);
    tlearn_model *back = NULL;
    tlearn_optim *bo = NULL;
    if (tl_checkpoint_load_buffer("fuzz", buf.p, buf.len, &back, o ? &bo : NULL))
        abort(); /* what we write, we read */
    tl_checkpoint_fuzz_skip_crc(crc_off);
    if (back->nlayers != m->nlayers || (o && !bo))
        abort();
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++)
            if (memcmp(m->layers[i]->param[p].t.data, back->layers[i]->param[p].t.data,
                       m->layers[i]->param[p].t.numel * sizeof(float)) != 0)
                abort();
    tlearn_model_destroy(&back);
    tlearn_optim_destroy(&bo);
    tl_wb_free(&buf);
}

/* Each input twice: as production loads it, and with CRC checks off so that mutations
 * reach the section parsers and the model builder behind the CRCs. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tl_checkpoint_fuzz_skip_crc(crc_off = 0);
    one(data, size);
    tl_checkpoint_fuzz_skip_crc(crc_off = 1);
    one(data, size);
    tl_checkpoint_fuzz_skip_crc(crc_off = 0);
    return 0;
}

static void one(const uint8_t *data, size_t size)
{
    if (!fixed) { /* the model make_seeds.c writes: input 3, fc1 4, act1, fc2 2 */
        if (tlearn_model_create(&fixed, 3, 1, 1) || tlearn_model_add_dense(fixed, "fc1", 4) ||
            tlearn_model_add_activation(fixed, "act1", TLEARN_ACT_RELU, 0.0f) ||
            tlearn_model_add_dense(fixed, "fc2", 2))
            abort();
    }
    tlearn_model *m = NULL;
    tlearn_optim *o = NULL;
    int rc = tl_checkpoint_load_buffer("fuzz", data, size, &m, &o);
    if (rc == TLEARN_OK) {
        if (!m)
            abort();
        resave(m, o);
        if (m->nlayers > 0 && small_enough(m)) {
            size_t in = tl_shape_size(m->inputs[0].shape), out = tl_model_output_size(m);
            float *x = calloc(in, sizeof *x), *y = calloc(out, sizeof *y);
            if (!x || !y)
                abort();
            /* one thread: a file may ask for more, and OpenMP's thread pool (BLIS) keeps
             * allocations until exit that LeakSanitizer would report as leaks */
            if (tlearn_model_set_threads(m, 1))
                abort();
            int prc = tlearn_model_predict(m, x, 1, y, out);
            if (prc != TLEARN_OK && prc != TLEARN_ESHAPE)
                abort();
            free(x);
            free(y);
        }
        tlearn_model_destroy(&m);
        tlearn_optim_destroy(&o);
    } else if (m || o) {
        abort(); /* a failed load hands nothing back */
    }
    size_t matched, skipped;
    tl_checkpoint_load_weights_buffer("fuzz", fixed, data, size, TLEARN_LOAD_STRICT, &matched,
                                      &skipped);
    tl_checkpoint_load_weights_buffer("fuzz", fixed, data, size, TLEARN_LOAD_PARTIAL, &matched,
                                      &skipped);
}
