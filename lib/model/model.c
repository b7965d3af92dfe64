/* Model lifecycle, building, introspection and named tensors. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "../train/ewc.h"

int tlearn_model_create(tlearn_model **out, int channels, int height, int width)
{
    static const char fn[] = "tlearn_model_create";
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (channels < 1 || height < 1 || width < 1)
        return tl_fail(TLEARN_EINVAL, "%s: input shape (%d, %d, %d) must be positive", fn,
                       channels, height, width);
    if ((double)channels * height * width > (double)INT32_MAX)
        return tl_fail(TLEARN_EINVAL, "%s: input shape (%d, %d, %d) has over 2^31 elements", fn,
                       channels, height, width);
    tlearn_model *m = tl_alloc_zero(sizeof *m);
    if (!m)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    m->input = (tl_shape){channels, height, width};
    m->next_input = -2;
    m->threads = 1;
    m->training = 1;
    m->loss_kind = TLEARN_LOSS_SOFTMAX_CE;
    tl_rng_seed(&m->rng, 0);
    m->blas = tl_blas_create(1);
    if (!m->blas) {
        tl_free(m);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    *out = m;
    return TLEARN_OK;
}

static void free_slot(tl_slot *s)
{
    tl_free(s->grad);
    tl_free(s->m1);
    tl_free(s->m2);
    tl_free(s->reg_a);
    tl_free(s->reg_b);
    memset(s, 0, sizeof *s);
}

static void destroy_layer(tl_layer *L, tl_layer_state *st)
{
    for (int i = 0; i < L->nparam; i++) {
        tl_tensor_free(&L->param[i].t);
        free_slot(&st->slot[i]);
    }
    if (L->ops->destroy_cfg)
        L->ops->destroy_cfg(L->cfg);
    else
        tl_free(L->cfg);
    tl_free(L->prepared);
    tl_free(L);
}


void tlearn_model_destroy(tlearn_model **mp)
{
    if (!mp || !*mp)
        return;
    tlearn_model *m = *mp;
    for (int i = 0; i < m->nlayers; i++)
        destroy_layer(m->layers[i], &m->lstate[i]);
    tl_free(m->layers);
    tl_free(m->lstate);
    tl_plan_free(&m->plan_train);
    tl_plan_free(&m->plan_infer);
    tl_model_free_workers(m);
    tl_ewc_free(m->ewc);
    tl_free(m->tensor_names);
    for (int i = 0; i < m->nmeta; i++) {
        tl_free(m->meta_keys[i]);
        tl_free(m->meta_values[i]);
    }
    tl_free(m->meta_keys);
    tl_free(m->meta_values);
    tl_blas_destroy(m->blas);
    tl_free(m);
    *mp = NULL;
}

int tlearn_model_set_threads(tlearn_model *m, int threads)
{
    TL_CHECK_MODEL("tlearn_model_set_threads", m);
    if (threads < 1 || threads > 1024)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_set_threads: threads is %d, must be 1..1024",
                       threads);
    if (threads > tl_cpu_limit()) /* never more than the process may run on */
        threads = tl_cpu_limit();
    if (threads < m->nworkers)
        tl_model_free_workers(m);
    m->threads = threads;
    tl_blas_set_threads(m->blas, threads);
    return TLEARN_OK;
}

int tlearn_model_set_seed(tlearn_model *m, uint64_t seed)
{
    TL_CHECK_MODEL("tlearn_model_set_seed", m);
    m->seed = seed;
    tl_rng_seed(&m->rng, seed);
    return TLEARN_OK;
}

int tlearn_model_set_training(tlearn_model *m, int training)
{
    TL_CHECK_MODEL("tlearn_model_set_training", m);
    if (training != 0 && training != 1)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_set_training: training is %d, must be 0 or 1",
                       training);
    m->training = training;
    return TLEARN_OK;
}

int tlearn_model_set_loss(tlearn_model *m, int loss)
{
    TL_CHECK_MODEL("tlearn_model_set_loss", m);
    if (loss != TLEARN_LOSS_SOFTMAX_CE && loss != TLEARN_LOSS_MSE)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_set_loss: unknown loss %d", loss);
    m->loss_kind = loss;
    return TLEARN_OK;
}

int tl_model_find(const tlearn_model *m, const char *name)
{
    for (int i = 0; i < m->nlayers; i++)
        if (strcmp(m->layers[i]->name, name) == 0)
            return i;
    return -1;
}

int tlearn_model_set_next_input(tlearn_model *m, const char *layer)
{
    static const char fn[] = "tlearn_model_set_next_input";
    TL_CHECK_MODEL(fn, m);
    if (!layer || !*layer) {
        m->next_input = -1;
        return TLEARN_OK;
    }
    int i = tl_model_find(m, layer);
    if (i < 0)
        return tl_fail(TLEARN_ENOTFOUND, "%s: no layer named '%s'", fn, layer);
    m->next_input = i;
    return TLEARN_OK;
}

void tl_model_structure_changed(tlearn_model *m)
{
    tl_plan_free(&m->plan_train);
    tl_plan_free(&m->plan_infer);
    tl_model_free_workers(m);
    m->has_grads = 0;
    tl_free(m->tensor_names);
    m->tensor_names = NULL;
}

static tl_shape shape_of(const tlearn_model *m, int index)
{
    return index < 0 ? m->input : m->layers[index]->out;
}

int tl_model_add(tlearn_model *m, const char *fn, const tl_layer_ops *ops, const char *name,
                 const int *inputs, int ninputs, const int *ia, int ni, const float *fa, int nf)
{
    TL_CHECK_MODEL(fn, m);
    int rc = tl_check_name(fn, name);
    if (rc)
        return rc;
    if (tl_model_find(m, name) >= 0)
        return tl_fail(TLEARN_EINVAL, "%s: a layer named '%s' already exists", fn, name);
    if (m->nlayers == m->cap_layers) {
        int cap = m->cap_layers ? 2 * m->cap_layers : 16;
        tl_layer **layers = tl_alloc_array((size_t)cap, sizeof *layers);
        tl_layer_state *ls = tl_alloc_array((size_t)cap, sizeof *ls);
        if (!layers || !ls) {
            tl_free(layers);
            tl_free(ls);
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        }
        if (m->nlayers) {
            memcpy(layers, m->layers, sizeof *layers * (size_t)m->nlayers);
            memcpy(ls, m->lstate, sizeof *ls * (size_t)m->nlayers);
        }
        tl_free(m->layers);
        tl_free(m->lstate);
        m->layers = layers;
        m->lstate = ls;
        m->cap_layers = cap;
    }
    tl_layer *L = tl_alloc_zero(sizeof *L);
    if (!L)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    L->ops = ops;
    strcpy(L->name, name);
    int default_input = m->next_input == -2 ? m->nlayers - 1 : m->next_input;
    if (!inputs) {
        inputs = &default_input;
        ninputs = 1;
    }
    L->ninputs = ninputs;
    for (int i = 0; i < ninputs; i++) {
        L->input[i] = inputs[i];
        L->in[i] = shape_of(m, inputs[i]);
    }
    rc = ops->configure(L, ia, ni, fa, nf);
    if (!rc)
        rc = ops->setup(L, &m->rng);
    if (rc) {
        tl_layer_state scratch;
        memset(&scratch, 0, sizeof scratch);
        destroy_layer(L, &scratch);
        return tl_fail_prefix(rc, "%s: ", fn);
    }
    tl_layer_state *st = &m->lstate[m->nlayers];
    memset(st, 0, sizeof *st);
    st->lr_scale = 1.0f;
    m->layers[m->nlayers++] = L;
    m->next_input = -2;
    tl_model_structure_changed(m);
    return TLEARN_OK;
}

/* The public tlearn_model_add_* wrappers live in build.c. */

/* ---- introspection ---- */

#define TL_CHECK_INDEX(fn, m, index)                                                          \
    do {                                                                                      \
        TL_CHECK_MODEL(fn, m);                                                                \
        if ((index) < 0 || (index) >= (m)->nlayers)                                           \
            return tl_fail(TLEARN_EINVAL, "%s: layer index %d is not in 0..%d", fn, (index),  \
                           (m)->nlayers - 1);                                                 \
    } while (0)

int tlearn_model_layer_count(const tlearn_model *m, int *count)
{
    TL_CHECK_MODEL("tlearn_model_layer_count", m);
    if (!count)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_layer_count: count is NULL");
    *count = m->nlayers;
    return TLEARN_OK;
}

int tlearn_model_layer_index(const tlearn_model *m, const char *name, int *index)
{
    static const char fn[] = "tlearn_model_layer_index";
    TL_CHECK_MODEL(fn, m);
    if (!name || !index)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !name ? "name" : "index");
    int i = tl_model_find(m, name);
    if (i < 0)
        return tl_fail(TLEARN_ENOTFOUND, "%s: no layer named '%s'", fn, name);
    *index = i;
    return TLEARN_OK;
}

int tlearn_model_layer_name(const tlearn_model *m, int index, const char **name)
{
    TL_CHECK_INDEX("tlearn_model_layer_name", m, index);
    if (!name)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_layer_name: name is NULL");
    *name = m->layers[index]->name;
    return TLEARN_OK;
}

int tlearn_model_layer_kind(const tlearn_model *m, int index, int *kind)
{
    TL_CHECK_INDEX("tlearn_model_layer_kind", m, index);
    if (!kind)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_layer_kind: kind is NULL");
    *kind = m->layers[index]->ops->kind;
    return TLEARN_OK;
}

int tlearn_model_layer_shape(const tlearn_model *m, int index, int *c, int *h, int *w)
{
    static const char fn[] = "tlearn_model_layer_shape";
    TL_CHECK_MODEL(fn, m);
    if (index < -1 || index >= m->nlayers)
        return tl_fail(TLEARN_EINVAL, "%s: layer index %d is not in -1..%d", fn, index,
                       m->nlayers - 1);
    tl_shape s = shape_of(m, index);
    if (c)
        *c = s.c;
    if (h)
        *h = s.h;
    if (w)
        *w = s.w;
    return TLEARN_OK;
}

static size_t layer_params(const tl_layer *L)
{
    size_t total = 0;
    for (int i = 0; i < L->nparam; i++)
        if (!L->param[i].is_buffer)
            total += L->param[i].t.numel;
    return total;
}

int tlearn_model_layer_param_count(const tlearn_model *m, int index, size_t *count)
{
    TL_CHECK_INDEX("tlearn_model_layer_param_count", m, index);
    if (!count)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_layer_param_count: count is NULL");
    *count = layer_params(m->layers[index]);
    return TLEARN_OK;
}

int tlearn_model_param_count(const tlearn_model *m, size_t *total, size_t *trainable)
{
    TL_CHECK_MODEL("tlearn_model_param_count", m);
    size_t all = 0, train = 0;
    for (int i = 0; i < m->nlayers; i++) {
        size_t k = layer_params(m->layers[i]);
        all += k;
        if (!m->lstate[i].frozen)
            train += k;
    }
    if (total)
        *total = all;
    if (trainable)
        *trainable = train;
    return TLEARN_OK;
}

/* ---- named tensors: "layer.param" ---- */

int tl_model_find_tensor(const tlearn_model *m, const char *name, int *layer, int *param)
{
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name)
        return -1;
    size_t len = (size_t)(dot - name);
    for (int i = 0; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        if (strlen(L->name) != len || memcmp(L->name, name, len) != 0)
            continue;
        for (int p = 0; p < L->nparam; p++)
            if (strcmp(L->param[p].name, dot + 1) == 0) {
                *layer = i;
                *param = p;
                return 0;
            }
        return -1;
    }
    return -1;
}

int tlearn_model_tensor_count(const tlearn_model *m, int *count)
{
    TL_CHECK_MODEL("tlearn_model_tensor_count", m);
    if (!count)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_tensor_count: count is NULL");
    int k = 0;
    for (int i = 0; i < m->nlayers; i++)
        k += m->layers[i]->nparam;
    *count = k;
    return TLEARN_OK;
}

/* Full names are built on first request into a table the model owns, so that *name stays
 * valid until the layers change (as the header promises), not just until the next call. */
static const char *tensor_name(const tlearn_model *m, int index)
{
    if (!m->tensor_names) {
        int count = 0;
        for (int i = 0; i < m->nlayers; i++)
            count += m->layers[i]->nparam;
        /* The handle is not const-defined; the cache is invisible to the caller. */
        tlearn_model *mm = (tlearn_model *)m;
        mm->tensor_names = tl_alloc_array((size_t)count, TL_TENSOR_NAME_MAX);
        if (!mm->tensor_names)
            return NULL;
        char *dst = mm->tensor_names;
        for (int i = 0; i < m->nlayers; i++)
            for (int k = 0; k < m->layers[i]->nparam; k++, dst += TL_TENSOR_NAME_MAX)
                snprintf(dst, TL_TENSOR_NAME_MAX, "%s.%s", m->layers[i]->name,
                         m->layers[i]->param[k].name);
    }
    return m->tensor_names + (size_t)index * TL_TENSOR_NAME_MAX;
}

int tlearn_model_tensor_info(const tlearn_model *m, int index, const char **name, size_t *numel,
                             int *ndim, int dims[4])
{
    static const char fn[] = "tlearn_model_tensor_info";
    TL_CHECK_MODEL(fn, m);
    int k = index;
    if (k >= 0) {
        for (int i = 0; i < m->nlayers; i++) {
            const tl_layer *L = m->layers[i];
            if (k < L->nparam) {
                const tl_param *p = &L->param[k];
                if (name) {
                    *name = tensor_name(m, index);
                    if (!*name)
                        return tl_fail(TLEARN_ENOMEM, "%s: out of memory for tensor names", fn);
                }
                if (numel)
                    *numel = p->t.numel;
                if (ndim)
                    *ndim = p->t.ndim;
                if (dims)
                    for (int d = 0; d < 4; d++)
                        dims[d] = d < p->t.ndim ? p->t.dims[d] : 0;
                return TLEARN_OK;
            }
            k -= L->nparam;
        }
    }
    return tl_fail(TLEARN_EINVAL, "%s: tensor index %d is out of range", fn, index);
}

static int lookup(const tlearn_model *m, const char *fn, const char *name, size_t len,
                  const void *buf, int *layer, int *param)
{
    TL_CHECK_MODEL(fn, m);
    if (!name || !buf)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !name ? "name" : "buffer");
    if (tl_model_find_tensor(m, name, layer, param))
        return tl_fail(TLEARN_ENOTFOUND, "%s: no tensor named '%s'", fn, name);
    size_t want = m->layers[*layer]->param[*param].t.numel;
    if (len != want)
        return tl_fail(TLEARN_ESHAPE, "%s: tensor '%s' has %zu elements, buffer length is %zu",
                       fn, name, want, len);
    return TLEARN_OK;
}

int tlearn_model_get_tensor(const tlearn_model *m, const char *name, float *out, size_t out_len)
{
    int l, p;
    int rc = lookup(m, "tlearn_model_get_tensor", name, out_len, out, &l, &p);
    if (rc)
        return rc;
    memcpy(out, m->layers[l]->param[p].t.data, sizeof(float) * out_len);
    return TLEARN_OK;
}

int tlearn_model_set_tensor(tlearn_model *m, const char *name, const float *data, size_t len)
{
    static const char fn[] = "tlearn_model_set_tensor";
    int l, p;
    int rc = lookup(m, fn, name, len, data, &l, &p);
    if (rc)
        return rc;
    rc = tl_check_values(TLEARN_EINVAL, fn, name, data, len,
                         tl_param_nonneg(m->layers[l]->param[p].name));
    if (rc)
        return rc;
    memcpy(m->layers[l]->param[p].t.data, data, sizeof(float) * len);
    return TLEARN_OK;
}

int tlearn_model_get_grad(const tlearn_model *m, const char *name, float *out, size_t out_len)
{
    static const char fn[] = "tlearn_model_get_grad";
    int l, p;
    int rc = lookup(m, fn, name, out_len, out, &l, &p);
    if (rc)
        return rc;
    const float *g = m->lstate[l].slot[p].grad;
    if (m->layers[l]->param[p].is_buffer || !g || !m->has_grads)
        return tl_fail(TLEARN_ESTATE, "%s: '%s' has no gradient (%s)", fn, name,
                       m->layers[l]->param[p].is_buffer ? "a buffer"
                       : m->lstate[l].frozen           ? "frozen"
                                                       : "nothing computed yet");
    memcpy(out, g, sizeof(float) * out_len);
    return TLEARN_OK;
}

int tlearn_model_workspace_bytes(const tlearn_model *m, size_t *bytes)
{
    TL_CHECK_MODEL("tlearn_model_workspace_bytes", m);
    if (!bytes)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_workspace_bytes: bytes is NULL");
    *bytes = m->plan_train.bytes + m->plan_infer.bytes;
    for (int w = 0; w < m->nworkers; w++)
        *bytes += m->workers[w].plan.bytes;
    return TLEARN_OK;
}

size_t tl_model_output_size(const tlearn_model *m)
{
    return m->nlayers ? tl_shape_size(m->layers[m->nlayers - 1]->out) : 0;
}

/* ---- removing layers ---- */


int tlearn_model_truncate(tlearn_model *m, const char *layer)
{
    static const char fn[] = "tlearn_model_truncate";
    TL_CHECK_MODEL(fn, m);
    int keep = 0;
    if (layer && *layer) {
        int i = tl_model_find(m, layer);
        if (i < 0)
            return tl_fail(TLEARN_ENOTFOUND, "%s: no layer named '%s'", fn, layer);
        keep = i + 1;
    }
    tl_ewc_drop_layers(m, keep);
    for (int i = keep; i < m->nlayers; i++)
        destroy_layer(m->layers[i], &m->lstate[i]);
    m->nlayers = keep;
    m->next_input = -2;
    tl_model_structure_changed(m);
    return TLEARN_OK;
}

int tlearn_model_replace_head(tlearn_model *m, const char *from_layer, int classes)
{
    static const char fn[] = "tlearn_model_replace_head";
    TL_CHECK_MODEL(fn, m);
    if (!from_layer)
        return tl_fail(TLEARN_EINVAL, "%s: from_layer is NULL", fn);
    if (classes < 1)
        return tl_fail(TLEARN_EINVAL, "%s: classes is %d, must be >= 1", fn, classes);
    int i = tl_model_find(m, from_layer);
    if (i < 0)
        return tl_fail(TLEARN_ENOTFOUND, "%s: no layer named '%s'", fn, from_layer);
    /* Refuse before truncating: a kept layer called "head" would make the add fail after
     * the old head is already gone. */
    int kept_head = tl_model_find(m, "head");
    if (kept_head >= 0 && kept_head <= i)
        return tl_fail(TLEARN_EINVAL, "%s: layer %d is already named 'head' and would stay; "
                       "the new head needs that name", fn, kept_head);
    int rc = tlearn_model_truncate(m, from_layer);
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
    return tl_model_add(m, fn, &tl_dense_ops, "head", NULL, 0, &classes, 1, NULL, 0);
}

/* ---- metadata ---- */

int tlearn_model_set_metadata(tlearn_model *m, const char *key, const char *value)
{
    static const char fn[] = "tlearn_model_set_metadata";
    TL_CHECK_MODEL(fn, m);
    if (!key || !value)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !key ? "key" : "value");
    if (!*key || strlen(key) > 4096 || strlen(value) > 4096)
        return tl_fail(TLEARN_EINVAL, "%s: key must be 1..4096 bytes and value 0..4096", fn);
    for (int i = 0; i < m->nmeta; i++) {
        if (strcmp(m->meta_keys[i], key) != 0)
            continue;
        if (!*value) {
            tl_free(m->meta_keys[i]);
            tl_free(m->meta_values[i]);
            m->nmeta--;
            m->meta_keys[i] = m->meta_keys[m->nmeta];
            m->meta_values[i] = m->meta_values[m->nmeta];
            return TLEARN_OK;
        }
        char *v = tl_strdup(value);
        if (!v)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        tl_free(m->meta_values[i]);
        m->meta_values[i] = v;
        return TLEARN_OK;
    }
    if (!*value)
        return TLEARN_OK;
    char **keys = tl_alloc_array((size_t)m->nmeta + 1, sizeof *keys);
    char **vals = tl_alloc_array((size_t)m->nmeta + 1, sizeof *vals);
    char *k = tl_strdup(key), *v = tl_strdup(value);
    if (!keys || !vals || !k || !v) {
        tl_free(keys);
        tl_free(vals);
        tl_free(k);
        tl_free(v);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    if (m->nmeta) {
        memcpy(keys, m->meta_keys, sizeof *keys * (size_t)m->nmeta);
        memcpy(vals, m->meta_values, sizeof *vals * (size_t)m->nmeta);
    }
    tl_free(m->meta_keys);
    tl_free(m->meta_values);
    keys[m->nmeta] = k;
    vals[m->nmeta] = v;
    m->meta_keys = keys;
    m->meta_values = vals;
    m->nmeta++;
    return TLEARN_OK;
}

int tlearn_model_get_metadata(const tlearn_model *m, const char *key, const char **value)
{
    static const char fn[] = "tlearn_model_get_metadata";
    TL_CHECK_MODEL(fn, m);
    if (!key || !value)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !key ? "key" : "value");
    for (int i = 0; i < m->nmeta; i++)
        if (strcmp(m->meta_keys[i], key) == 0) {
            *value = m->meta_values[i];
            return TLEARN_OK;
        }
    return tl_fail(TLEARN_ENOTFOUND, "%s: no metadata key '%s'", fn, key);
}
