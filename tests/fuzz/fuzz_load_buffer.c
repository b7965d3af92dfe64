/* libFuzzer target: the public in-memory entry points (tlearn_model_load_buffer,
 * tlearn_model_load_weights_buffer, tlearn_model_import_safetensors_buffer) on arbitrary
 * bytes. A failed call hands nothing back and leaves the target model bit for bit as it
 * was; bytes that load save (tlearn_model_save_buffer) to bytes that load again and save
 * to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tlearn_model *fixed;

/* Every tensor of the fixed model, to check that failed calls leave it alone. */
static float *snapshot(size_t *total)
{
    size_t n = 0;
    for (int i = 0; i < fixed->nlayers; i++)
        for (int p = 0; p < fixed->layers[i]->nparam; p++)
            n += fixed->layers[i]->param[p].t.numel;
    float *s = malloc(n * sizeof *s + 1), *at = s;
    if (!s)
        abort();
    for (int i = 0; i < fixed->nlayers; i++)
        for (int p = 0; p < fixed->layers[i]->nparam; p++) {
            const tl_tensor *t = &fixed->layers[i]->param[p].t;
            memcpy(at, t->data, t->numel * sizeof *at);
            at += t->numel;
        }
    *total = n;
    return s;
}

static void unchanged_unless_ok(int rc, const float *before, size_t n)
{
    size_t now_n;
    float *now = snapshot(&now_n);
    if (rc != TLEARN_OK && (now_n != n || memcmp(now, before, n * sizeof *now) != 0))
        abort(); /* a failed load changed the model */
    free(now);
}

/* save(load(bytes)) must load, and save again to the same bytes. */
static void fixpoint(const tlearn_model *m, const tlearn_optim *o)
{
    void *a, *b;
    size_t alen, blen;
    int rc = tlearn_model_save_buffer(m, o, TLEARN_SAVE_COMPRESS(1), &a, &alen);
    if (rc == TLEARN_ENOMEM)
        return;
    if (rc || !a)
        abort();
    tlearn_model *back;
    tlearn_optim *bo = NULL;
    if (tlearn_model_load_buffer(&back, o ? &bo : NULL, a, alen))
        abort(); /* what we write, we read */
    rc = tlearn_model_save_buffer(back, bo, TLEARN_SAVE_COMPRESS(1), &b, &blen);
    if (rc != TLEARN_OK && rc != TLEARN_ENOMEM)
        abort();
    if (rc == TLEARN_OK && (blen != alen || memcmp(a, b, alen) != 0))
        abort(); /* a load loses or changes something the checkpoint holds */
    tlearn_free(a);
    tlearn_free(b);
    tlearn_model_destroy(&back);
    tlearn_optim_destroy(&bo);
}

static void one(const uint8_t *data, size_t size)
{
    tlearn_model *m = (tlearn_model *)1;
    tlearn_optim *o = (tlearn_optim *)1;
    int rc = tlearn_model_load_buffer(&m, &o, data, size);
    if (rc == TLEARN_OK) {
        if (!m)
            abort();
        /* fixpoint() loads with CRCs checked: what this process writes is consistent */
        tl_checkpoint_fuzz_skip_crc(0);
        fixpoint(m, o);
        tlearn_model_destroy(&m);
        tlearn_optim_destroy(&o);
    } else if (m || o) {
        abort(); /* a failed load hands nothing back */
    }
    size_t n, matched = 7, skipped = 7;
    for (unsigned flags = TLEARN_LOAD_STRICT; flags <= TLEARN_LOAD_PARTIAL; flags++) {
        float *before = snapshot(&n);
        rc = tlearn_model_load_weights_buffer(fixed, data, size, flags, &matched, &skipped);
        unchanged_unless_ok(rc, before, n);
        free(before);
        before = snapshot(&n);
        rc = tlearn_model_import_safetensors_buffer(fixed, data, size, NULL, NULL, flags,
                                                    &matched);
        unchanged_unless_ok(rc, before, n);
        free(before);
    }
}

/* Each input twice: as production loads it, and with CRC checks off so that mutations
 * reach the section parsers and the model builder behind the CRCs. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fixed) { /* the model make_seeds.c writes: input 3, fc1 4, act1, fc2 2 */
        if (tlearn_model_create(&fixed, 3, 1, 1) || tlearn_model_add_dense(fixed, "fc1", 4) ||
            tlearn_model_add_activation(fixed, "act1", TLEARN_ACT_RELU, 0.0f) ||
            tlearn_model_add_dense(fixed, "fc2", 2))
            abort();
    }
    for (int crc_off = 0; crc_off <= 1; crc_off++) {
        tl_checkpoint_fuzz_skip_crc(crc_off);
        one(data, size);
    }
    tl_checkpoint_fuzz_skip_crc(0);
    return 0;
}
