/* Features of any producer and normalised embeddings (tlearn_model_embed). */
#include <math.h>
#include <string.h>

#include "fewshot.h"

int tl_fs_check_labels(const char *fn, const void *x, const int32_t *labels, size_t n,
                       int classes)
{
    if (!x || !labels)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !x ? "x" : "labels");
    if (n == 0)
        return tl_fail(TLEARN_EINVAL, "%s: n is 0", fn);
    for (size_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return tl_fail(TLEARN_EINVAL, "%s: labels[%zu] is %d, not in 0..%d", fn, i,
                           (int)labels[i], classes - 1);
    return TLEARN_OK;
}

int tl_fs_features(const char *fn, tlearn_model *m, int producer, const float *x, size_t n,
                   float *out)
{
    size_t size = tl_shape_size(tl_model_producer_shape(m, producer));
    if (producer < 0) { /* a model input: the examples are the features */
        memcpy(out, x, sizeof(float) * n * size);
        return TLEARN_OK;
    }
    tl_feed f = tl_model_feed(m, x);
    tl_chunk_dest c = {out, size, producer};
    int rc = tl_model_infer(m, &f, n, 0, producer, 0, tl_chunk_copy, &c);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

int tlearn_model_embed(tlearn_model *m, const char *layer, const float *x, size_t n, float *out,
                       size_t out_len)
{
    static const char fn[] = "tlearn_model_embed";
    TL_CHECK_MODEL(fn, m);
    int i;
    int rc = tl_model_find_checked(fn, m, layer, &i);
    if (!rc)
        rc = tl_model_check_single_input(fn, m);
    if (rc)
        return rc;
    size_t d = tl_shape_size(m->layers[i]->out);
    if (!x || !out || n == 0)
        return tl_fail(TLEARN_EINVAL, "%s: %s", fn, n == 0 ? "n is 0" : "x or out is NULL");
    if (n > (size_t)INT32_MAX / d || out_len != n * d)
        return tl_fail(TLEARN_EINVAL, "%s: out_len is %zu, expected %zu (n=%zu x %zu)", fn,
                       out_len, n * d, n, d);
    rc = tl_fs_features(fn, m, i, x, n, out);
    if (rc)
        return rc;
    for (size_t e = 0; e < n; e++) {
        float *r = out + e * d, s;
        tl_row_norms(r, 1, d, &s);
        for (size_t j = 0; j < d; j++)
            r[j] /= s;
    }
    return TLEARN_OK;
}
