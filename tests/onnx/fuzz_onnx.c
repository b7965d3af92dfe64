/* libFuzzer target for the ONNX buffer loader: any bytes must give TLEARN_OK with a model
 * or an error status with *out NULL, never a crash, leak or sanitizer report. Models that
 * import are also run once on a zero input when they are small, so that the shapes and
 * weights the importer accepted are exercised by the layers too. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tlearn/tlearn.h"

/* Keep runs cheap: skip inference when activations would exceed this many floats. */
#define FUZZ_MAX_FLOATS ((size_t)1 << 20)

static int small_enough(const tlearn_model *m)
{
    int n;
    size_t total = 0;
    if (tlearn_model_layer_count(m, &n))
        return 0;
    for (int i = -1; i < n; i++) {
        int c, h, w;
        if (tlearn_model_layer_shape(m, i, &c, &h, &w))
            return 0;
        total += (size_t)c * (size_t)h * (size_t)w;
        if (total > FUZZ_MAX_FLOATS)
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tlearn_model *m = (tlearn_model *)(uintptr_t)1;
    int rc = tlearn_model_import_onnx_buffer(&m, data, size);
    if (rc != TLEARN_OK) {
        if (m)
            abort(); /* a failed import must leave *out NULL */
        return 0;
    }
    if (!m)
        abort();
    if (small_enough(m)) {
        int n, c, h, w;
        tlearn_model_layer_count(m, &n);
        tlearn_model_layer_shape(m, -1, &c, &h, &w);
        size_t in = (size_t)c * h * w;
        tlearn_model_layer_shape(m, n - 1, &c, &h, &w);
        size_t out = (size_t)c * h * w;
        float *x = calloc(in, sizeof *x), *y = calloc(out, sizeof *y);
        if (x && y && tlearn_model_predict(m, x, 1, y, out) != TLEARN_OK)
            abort(); /* an imported model must run */
        free(x);
        free(y);
    }
    tlearn_model_destroy(&m);
    return 0;
}
