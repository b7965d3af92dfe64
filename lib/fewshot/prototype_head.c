/* Prototype heads at run time: built from a labelled set in one call, classes added,
 * updated (running mean) and removed, and turned into an ordinary dense head. The layer
 * kind itself is layers/prototype.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fewshot.h"

/* Per-class sums of L2-normalised features (classes x d, double) and counts over n
 * examples: from features directly, or from model inputs through @p producer in blocks. */
typedef struct class_sums {
    double *sum, *count;
} class_sums;

static void add_rows(class_sums *s, const float *f, const int32_t *labels, size_t n, size_t d)
{
    for (size_t i = 0; i < n; i++) {
        const float *r = f + i * d;
        float q;
        tl_row_norms(r, 1, d, &q);
        double inv = 1.0 / q;
        double *acc = s->sum + (size_t)labels[i] * d;
        for (size_t j = 0; j < d; j++)
            acc[j] += r[j] * inv;
        s->count[labels[i]] += 1.0;
    }
}

static void free_sums(class_sums *s)
{
    tl_free(s->sum);
    tl_free(s->count);
}

static int class_sums_of(const char *fn, tlearn_model *m, int producer, int features,
                         const float *x, const int32_t *labels, size_t n, int classes,
                         class_sums *s)
{
    size_t d = tl_shape_size(tl_model_producer_shape(m, producer));
    memset(s, 0, sizeof *s);
    int rc = tl_fs_check_labels(fn, x, labels, n, classes);
    if (!rc && !features && producer >= 0)
        rc = tl_model_check_single_input(fn, m);
    if (rc)
        return rc;
    if (n > (size_t)INT32_MAX / d)
        return tl_fail(TLEARN_EINVAL, "%s: n is %zu, too large", fn, n);
    s->sum = tl_alloc_array((size_t)classes * d, sizeof(double));
    s->count = tl_alloc_array((size_t)classes, sizeof(double));
    if (!s->sum || !s->count) {
        free_sums(s);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for %d x %zu class sums", fn, classes,
                       d);
    }
    if (features || producer < 0) {
        add_rows(s, x, labels, n, d);
        return TLEARN_OK;
    }
    size_t in_size = tl_shape_size(m->inputs[0].shape), block = n < TL_FS_BLOCK ? n : TL_FS_BLOCK;
    float *f = tl_alloc_array(block, sizeof(float) * d);
    if (!f) {
        free_sums(s);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for features", fn);
    }
    for (size_t s0 = 0; s0 < n && !rc; s0 += block) {
        size_t k = n - s0 < block ? n - s0 : block;
        rc = tl_fs_features(fn, m, producer, x + s0 * in_size, k, f);
        if (!rc)
            add_rows(s, f, labels + s0, k, d);
    }
    tl_free(f);
    if (rc)
        free_sums(s);
    return rc;
}

/* The prototype layer called @p layer, with nothing reading it when @p alone is set
 * (changing its class count changes its output shape). */
static int find_head(const char *fn, tlearn_model *m, const char *layer, int alone, int *index)
{
    TL_CHECK_MODEL(fn, m);
    int rc = tl_model_find_checked(fn, m, layer, index);
    if (rc)
        return rc;
    if (m->layers[*index]->ops != &tl_prototype_ops)
        return tl_fail(TLEARN_EINVAL, "%s: layer '%s' is a %s layer, not a prototype head", fn,
                       layer, m->layers[*index]->ops->kind_name);
    if (alone)
        for (int j = *index + 1; j < m->nlayers; j++)
            for (int k = 0; k < m->layers[j]->ninputs; k++)
                if (m->layers[j]->input[k] == *index)
                    return tl_fail(TLEARN_ESTATE, "%s: layer '%s' reads prototype head '%s', "
                                   "whose class count would change", fn, m->layers[j]->name,
                                   layer);
    return TLEARN_OK;
}

static int check_flags(const char *fn, unsigned flags, unsigned allowed)
{
    if (flags & ~allowed)
        return tl_fail(TLEARN_EINVAL, "%s: unknown flags 0x%x", fn, flags & ~allowed);
    return TLEARN_OK;
}

int tlearn_prototype_head(tlearn_model *m, const char *from_layer, const char *name,
                          const float *x, const int32_t *labels, size_t n, int classes,
                          float temperature, unsigned flags)
{
    static const char fn[] = "tlearn_prototype_head";
    TL_CHECK_MODEL(fn, m);
    int rc = check_flags(fn, flags, TLEARN_PROTO_FEATURES | TLEARN_PROTO_LEARN_TEMPERATURE);
    if (rc)
        return rc;
    if (!name)
        return tl_fail(TLEARN_EINVAL, "%s: name is NULL", fn);
    int producer = tl_input_producer(0);
    if (from_layer && *from_layer) {
        rc = tl_model_find_checked(fn, m, from_layer, &producer);
        if (rc)
            return rc;
    } else if (m->ninputs != 1) {
        return tl_fail(TLEARN_ESTATE, "%s: the model has %d inputs; name the layer to read",
                       fn, m->ninputs);
    }
    if (classes < 1)
        return tl_fail(TLEARN_EINVAL, "%s: classes is %d, must be >= 1", fn, classes);
    class_sums s;
    rc = class_sums_of(fn, m, producer, flags & TLEARN_PROTO_FEATURES, x, labels, n, classes,
                       &s);
    if (rc)
        return rc;
    int ia[2] = {classes, (flags & TLEARN_PROTO_LEARN_TEMPERATURE) ? 1 : 0};
    tl_layer *L;
    rc = tl_model_replace_tail(m, fn, producer + 1, producer, &tl_prototype_ops, name, ia, 2,
                               &temperature, 1, &L);
    if (!rc)
        tl_prototype_accumulate(L, s.sum, s.count);
    free_sums(&s);
    return rc;
}

int tlearn_prototype_update(tlearn_model *m, const char *layer, const float *x,
                            const int32_t *labels, size_t n, unsigned flags)
{
    static const char fn[] = "tlearn_prototype_update";
    int i;
    int rc = find_head(fn, m, layer, 0, &i);
    if (!rc)
        rc = check_flags(fn, flags, TLEARN_PROTO_FEATURES);
    if (rc)
        return rc;
    tl_layer *L = m->layers[i];
    class_sums s;
    rc = class_sums_of(fn, m, L->input[0], flags & TLEARN_PROTO_FEATURES, x, labels, n,
                       tl_prototype_classes(L), &s);
    if (rc)
        return rc;
    tl_prototype_accumulate(L, s.sum, s.count);
    free_sums(&s);
    return TLEARN_OK;
}

int tlearn_prototype_add_classes(tlearn_model *m, const char *layer, int count)
{
    static const char fn[] = "tlearn_prototype_add_classes";
    int i;
    int rc = find_head(fn, m, layer, 1, &i);
    if (rc)
        return rc;
    if (count < 1)
        return tl_fail(TLEARN_EINVAL, "%s: count is %d, must be >= 1", fn, count);
    rc = tl_prototype_resize(m->layers[i], count, -1);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    tl_model_structure_changed(m);
    return TLEARN_OK;
}

int tlearn_prototype_remove_class(tlearn_model *m, const char *layer, int cls)
{
    static const char fn[] = "tlearn_prototype_remove_class";
    int i;
    int rc = find_head(fn, m, layer, 1, &i);
    if (rc)
        return rc;
    int c = tl_prototype_classes(m->layers[i]);
    if (cls < 0 || cls >= c)
        return tl_fail(TLEARN_EINVAL, "%s: class %d is not in 0..%d", fn, cls, c - 1);
    rc = tl_prototype_resize(m->layers[i], 0, cls);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    tl_model_structure_changed(m);
    return TLEARN_OK;
}

int tlearn_prototype_to_dense(tlearn_model *m, const char *layer)
{
    static const char fn[] = "tlearn_prototype_to_dense";
    int i;
    int rc = find_head(fn, m, layer, 0, &i);
    if (rc)
        return rc;
    if (i != m->nlayers - 1)
        return tl_fail(TLEARN_ESTATE, "%s: prototype head '%s' is not the last layer", fn,
                       layer);
    const tl_layer *P = m->layers[i];
    int c = tl_prototype_classes(P);
    size_t d = tl_shape_size(P->in[0]);
    /* weight = temperature * normalised prototypes, bias 0: the dense head's logits are
     * |x| times the prototype head's, so it predicts the same classes. */
    float *w = tl_alloc_array((size_t)c * d, sizeof(float));
    if (!w)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    const float *p = P->param[0].t.data, t = P->param[2].t.data[0];
    for (int k = 0; k < c; k++) {
        const float *r = p + (size_t)k * d;
        float q;
        tl_row_norms(r, 1, d, &q);
        float s = t / q;
        for (size_t j = 0; j < d; j++)
            w[(size_t)k * d + j] = r[j] * s;
    }
    char name[TL_NAME_MAX];
    snprintf(name, sizeof name, "%s", P->name);
    tl_layer *D;
    rc = tl_model_replace_tail(m, fn, i, P->input[0], &tl_dense_ops, name, &c, 1, NULL, 0, &D);
    if (!rc) {
        memcpy(D->param[0].t.data, w, sizeof(float) * (size_t)c * d);
        memset(D->param[1].t.data, 0, sizeof(float) * (size_t)c);
    }
    tl_free(w);
    return rc;
}
