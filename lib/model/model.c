/* Model lifecycle, building, introspection and named tensors. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

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
    m->ninputs = 1;
    strcpy(m->inputs[0].name, "input");
    m->inputs[0].dtype = TLEARN_DTYPE_FLOAT32;
    m->inputs[0].shape = tl_shape3(channels, height, width);
    m->next_input = TL_NEXT_DEFAULT;
    m->threads = 1;
    m->training = 1;
    m->loss_kind = TLEARN_LOSS_SOFTMAX_CE;
    m->contrastive_tau = 0.05f;
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
    tl_free(m->name_index);
    tl_plan_free(&m->plan_train);
    tl_plan_free(&m->plan_infer);
    tl_model_free_workers(m);
    if (m->ewc)
        m->ewc_ops->destroy(m->ewc);
    if (m->da)
        m->da_destroy(m->da);
    if (m->reducer) {
        tl_free(m->reducer->buf);
        tl_free(m->reducer->order);
        tl_free(m->reducer);
    }
    tl_free(m->tensor_names);
    tl_free(m->class_weight);
    tl_free(m->pair_work);
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
    if (loss < TLEARN_LOSS_SOFTMAX_CE || loss > TLEARN_LOSS_CONTRASTIVE_SYMMETRIC)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_set_loss: unknown loss %d", loss);
    m->loss_kind = loss;
    return TLEARN_OK;
}

int tl_model_find_producer(const tlearn_model *m, const char *name, int *producer)
{
    for (int k = 0; k < m->ninputs; k++)
        if (strcmp(m->inputs[k].name, name) == 0) {
            *producer = tl_input_producer(k);
            return 1;
        }
    int i = tl_model_find(m, name);
    if (i >= 0)
        *producer = i;
    return i >= 0;
}

tl_shape tl_model_producer_shape(const tlearn_model *m, int producer)
{
    return producer < 0 ? m->inputs[-1 - producer].shape : m->layers[producer]->out;
}

int tl_model_check_single_input(const char *fn, const tlearn_model *m)
{
    if (m->ninputs != 1 || m->inputs[0].dtype != TLEARN_DTYPE_FLOAT32)
        return tl_fail(TLEARN_ESTATE, "%s: takes one float32 array, but the model has %d "
                       "inputs (first: %s '%s'); use the calls that take several inputs", fn,
                       m->ninputs, m->inputs[0].dtype == TLEARN_DTYPE_INT32 ? "int32" : "float32",
                       m->inputs[0].name);
    return TLEARN_OK;
}

int tl_model_validate_feed(const char *fn, const tlearn_model *m, const tl_feed *x, size_t n)
{
    for (int i = 0; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        for (int k = 0; L->ops->validate && k < L->ninputs; k++) {
            int rc = L->input[k] < 0 ? L->ops->validate(L, k, x->x[-1 - L->input[k]], n) : 0;
            if (rc)
                return tl_fail_prefix(rc, "%s: layer '%s', model input '%s': ", fn, L->name,
                                      m->inputs[-1 - L->input[k]].name);
        }
    }
    return TLEARN_OK;
}

tl_feed tl_model_feed(const tlearn_model *m, const float *x)
{
    return tl_feed_one(x, tl_shape_size(m->inputs[0].shape));
}

int tlearn_model_set_next_input(tlearn_model *m, const char *layer)
{
    static const char fn[] = "tlearn_model_set_next_input";
    TL_CHECK_MODEL(fn, m);
    if (!layer || !*layer) {
        m->next_input = -1;
        return TLEARN_OK;
    }
    int i;
    if (!tl_model_find_producer(m, layer, &i))
        return tl_fail(TLEARN_ENOTFOUND, "%s: no layer or model input named '%s'", fn, layer);
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


/* A valid name that no layer or model input has yet. */
static int check_new_name(const char *fn, const tlearn_model *m, const char *name)
{
    int rc = tl_check_name(fn, name), dup;
    if (!rc && tl_model_find_producer(m, name, &dup))
        rc = tl_fail(TLEARN_EINVAL, "%s: a %s named '%s' already exists", fn,
                     dup < 0 ? "model input" : "layer", name);
    return rc;
}

/* ---- the name index: layer names -> indexes in an open-addressing table, so that
 * building or loading n layers costs O(n), not O(n^2) ---- */

static size_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return (size_t)h;
}

static void index_insert(tlearn_model *m, int i)
{
    size_t mask = m->name_cap - 1, k = name_hash(m->layers[i]->name) & mask;
    while (m->name_index[k])
        k = (k + 1) & mask;
    m->name_index[k] = i + 1;
}

static void index_rebuild(tlearn_model *m)
{
    memset(m->name_index, 0, sizeof *m->name_index * m->name_cap);
    for (int i = 0; i < m->nlayers; i++)
        index_insert(m, i);
}

int tl_model_find(const tlearn_model *m, const char *name)
{
    if (!m->name_cap)
        return -1;
    size_t mask = m->name_cap - 1;
    for (size_t k = name_hash(name) & mask; m->name_index[k]; k = (k + 1) & mask) {
        int i = m->name_index[k] - 1;
        if (strcmp(m->layers[i]->name, name) == 0)
            return i;
    }
    return -1;
}

/* Room for @p count more layers, in the arrays and in the name index (at most half full). */
static int reserve_layers(tlearn_model *m, const char *fn, int count)
{
    if (m->nlayers + count > m->cap_layers) {
        int cap = m->cap_layers ? 2 * m->cap_layers : 16;
        while (cap < m->nlayers + count)
            cap *= 2;
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
    if (2 * ((size_t)m->nlayers + (size_t)count) > m->name_cap) {
        size_t cap = m->name_cap ? 2 * m->name_cap : 64;
        while (cap < 2 * ((size_t)m->nlayers + (size_t)count))
            cap *= 2;
        int *index = tl_alloc_array(cap, sizeof *index);
        if (!index)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
        tl_free(m->name_index);
        m->name_index = index;
        m->name_cap = cap;
        index_rebuild(m);
    }
    return TLEARN_OK;
}

static int reserve_layer(tlearn_model *m, const char *fn)
{
    return reserve_layers(m, fn, 1);
}

/* Layers being inserted after layer `after` (tl_model_insert): producers after+1 .. are
 * the pending ones, numbered as they will be. */
typedef struct pending {
    int after, count;
    tl_layer *const *layers;
} pending;

static tl_shape pending_shape(const tlearn_model *m, const pending *pd, int producer)
{
    if (pd && producer > pd->after)
        return pd->layers[producer - pd->after - 1]->out;
    return tl_model_producer_shape(m, producer);
}

/* A configured and set-up layer of @p ops over the producers @p inputs (NULL: the model's
 * next input), not yet part of the model; nothing in the model changes. */
static int build_layer_at(tlearn_model *m, const char *fn, const tl_layer_ops *ops,
                          const char *name, const int *inputs, int ninputs, const int *ia,
                          int ni, const float *fa, int nf, const pending *pd, tl_layer **out)
{
    int limit = pd ? pd->after + 1 + pd->count : m->nlayers;
    int default_input = m->next_input == TL_NEXT_DEFAULT ? m->nlayers - 1 : m->next_input;
    if (!inputs) {
        inputs = &default_input;
        ninputs = 1;
    }
    if (ninputs < 1 || ninputs > TL_MAX_INPUTS)
        return tl_fail(TLEARN_EINVAL, "%s: layer '%s' has %d inputs, must be 1..%d", fn, name,
                       ninputs, TL_MAX_INPUTS);
    for (int i = 0; i < ninputs; i++)
        if (inputs[i] < -m->ninputs || inputs[i] >= limit)
            return tl_fail(TLEARN_EINVAL, "%s: layer '%s', input %d: producer %d is not a "
                           "model input or an earlier layer", fn, name, i, inputs[i]);
    tl_layer *L = tl_layer_new(ops, name, ninputs);
    if (!L)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    for (int i = 0; i < ninputs; i++) {
        L->input[i] = inputs[i];
        L->in[i] = pending_shape(m, pd, inputs[i]);
        if (inputs[i] < 0 && m->inputs[-1 - inputs[i]].dtype != TLEARN_DTYPE_FLOAT32 &&
            !(i < 31 && (ops->int_inputs >> i & 1))) {
            tl_free(L);
            return tl_fail(TLEARN_EINVAL, "%s: input %d of a %s layer reads float32, but model "
                           "input '%s' holds int32", fn, i, ops->kind_name,
                           m->inputs[-1 - inputs[i]].name);
        }
    }
    int rc = ops->configure(L, ia, ni, fa, nf);
    if (!rc)
        rc = ops->setup(L, &m->rng);
    if (rc) {
        tl_layer_state scratch;
        memset(&scratch, 0, sizeof scratch);
        destroy_layer(L, &scratch);
        return tl_fail_prefix(rc, "%s: ", fn);
    }
    *out = L;
    return TLEARN_OK;
}

static int build_layer(tlearn_model *m, const char *fn, const tl_layer_ops *ops,
                       const char *name, const int *inputs, int ninputs, const int *ia, int ni,
                       const float *fa, int nf, tl_layer **out)
{
    return build_layer_at(m, fn, ops, name, inputs, ninputs, ia, ni, fa, nf, NULL, out);
}

/* Append @p L after reserve_layer(); cannot fail. */
static void attach_layer(tlearn_model *m, tl_layer *L)
{
    tl_layer_state *st = &m->lstate[m->nlayers];
    memset(st, 0, sizeof *st);
    st->lr_scale = 1.0f;
    m->layers[m->nlayers++] = L;
    index_insert(m, m->nlayers - 1);
    m->next_input = TL_NEXT_DEFAULT;
    tl_model_structure_changed(m);
}

int tl_model_add(tlearn_model *m, const char *fn, const tl_layer_ops *ops, const char *name,
                 const int *inputs, int ninputs, const int *ia, int ni, const float *fa, int nf)
{
    TL_CHECK_MODEL(fn, m);
    tl_layer *L;
    int rc = check_new_name(fn, m, name);
    if (!rc)
        rc = reserve_layer(m, fn);
    if (!rc)
        rc = build_layer(m, fn, ops, name, inputs, ninputs, ia, ni, fa, nf, &L);
    if (rc)
        return rc;
    attach_layer(m, L);
    return TLEARN_OK;
}

/* ---- editing the graph: insertion after a layer, and its inverse (adapters/) ---- */

/* Graph outputs as an explicit list (the default "last layer" made explicit), so that
 * remapping indexes cannot silently change which layer is the output. */
static void outputs_explicit(tlearn_model *m)
{
    if (!m->noutputs && m->nlayers) {
        m->outputs[0] = m->nlayers - 1;
        m->noutputs = 1;
    }
}

/* Back to the default form when the one output is the last layer (checkpoints keep
 * round 1's form). */
static void outputs_compact(tlearn_model *m)
{
    if (m->noutputs == 1 && m->outputs[0] == m->nlayers - 1)
        m->noutputs = 0;
}

/* Producer @p p after layers were inserted (count > 0) after `after` or removed (count < 0)
 * from after+1 on, with readers of @p reroute moved to @p to. */
static int remap(int p, int after, int count, int reroute, int to)
{
    if (p == reroute)
        return to;
    return p > after ? p + count : p;
}

static void remap_graph(tlearn_model *m, int from, int after, int count, int reroute, int to)
{
    for (int i = from; i < m->nlayers; i++) {
        tl_layer *L = m->layers[i];
        for (int k = 0; k < L->ninputs; k++)
            L->input[k] = remap(L->input[k], after, count, reroute, to);
    }
    for (int k = 0; k < m->noutputs; k++)
        m->outputs[k] = remap(m->outputs[k], after, count, reroute, to);
    m->next_input = TL_NEXT_DEFAULT;
    index_rebuild(m);
    outputs_compact(m);
    tl_model_structure_changed(m);
}

int tl_model_insert(tlearn_model *m, const char *fn, int after, const tl_insert_spec *specs,
                    int count, int reroute, int to, tl_layer **made)
{
    TL_CHECK_MODEL(fn, m);
    if (after < -1 || after >= m->nlayers || count < 1 || count > 64)
        return tl_fail(TLEARN_EINVAL, "%s: cannot insert %d layers after layer %d of %d", fn,
                       count, after, m->nlayers);
    if (reroute != TL_NO_REROUTE &&
        (reroute < -m->ninputs || reroute > after || to <= after || to > after + count))
        return tl_fail(TLEARN_EINVAL, "%s: readers of %d cannot move to %d", fn, reroute, to);
    if (m->ewc)
        return tl_fail(TLEARN_ESTATE, "%s: EWC or L2-SP is enabled; its per-layer tables do "
                       "not follow inserted layers: edit the graph before enabling it", fn);
    for (int k = 0; k < count; k++) {
        int rc = check_new_name(fn, m, specs[k].name);
        for (int j = 0; !rc && j < k; j++)
            if (strcmp(specs[j].name, specs[k].name) == 0)
                rc = tl_fail(TLEARN_EINVAL, "%s: the name '%s' is given twice", fn,
                             specs[k].name);
        if (rc)
            return rc;
    }
    int rc = reserve_layers(m, fn, count);
    tl_layer **L = rc ? NULL : tl_alloc_array((size_t)count, sizeof *L);
    if (!rc && !L)
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    tl_rng rng = m->rng; /* initialisers draw from it: restored on failure */
    int built = 0;
    for (; !rc && built < count; built++) {
        const tl_insert_spec *sp = &specs[built];
        pending pd = {after, built, L};
        rc = build_layer_at(m, fn, sp->ops, sp->name, sp->inputs, sp->ninputs, sp->ia, sp->ni,
                            sp->fa, sp->nf, &pd, &L[built]);
        if (rc)
            break;
    }
    if (rc) {
        tl_layer_state scratch;
        for (int k = 0; k < built; k++) {
            memset(&scratch, 0, sizeof scratch);
            destroy_layer(L[k], &scratch);
        }
        tl_free(L);
        m->rng = rng;
        return rc;
    }
    /* Nothing fails from here on. */
    outputs_explicit(m);
    int tail = m->nlayers - after - 1;
    memmove(m->layers + after + 1 + count, m->layers + after + 1, sizeof *m->layers * (size_t)tail);
    memmove(m->lstate + after + 1 + count, m->lstate + after + 1, sizeof *m->lstate * (size_t)tail);
    for (int k = 0; k < count; k++) {
        tl_layer_state *st = &m->lstate[after + 1 + k];
        memset(st, 0, sizeof *st);
        st->lr_scale = 1.0f;
        m->layers[after + 1 + k] = L[k];
        if (made)
            made[k] = L[k];
    }
    m->nlayers += count;
    remap_graph(m, after + 1 + count, after, count, reroute, to);
    tl_free(L);
    return TLEARN_OK;
}

void tl_model_remove(tlearn_model *m, int first, int count, int reroute, int to)
{
    outputs_explicit(m);
    for (int k = first; k < first + count; k++)
        destroy_layer(m->layers[k], &m->lstate[k]);
    int tail = m->nlayers - first - count;
    memmove(m->layers + first, m->layers + first + count, sizeof *m->layers * (size_t)tail);
    memmove(m->lstate + first, m->lstate + first + count, sizeof *m->lstate * (size_t)tail);
    m->nlayers -= count;
    /* producers first+count.. move down by count; `reroute` (inside the range) becomes to */
    remap_graph(m, first, first + count - 1, -count, reroute, to);
}

void tl_model_rename(tlearn_model *m, int i, const char *name)
{
    snprintf(m->layers[i]->name, sizeof m->layers[i]->name, "%s", name);
    index_rebuild(m);
    tl_free(m->tensor_names); /* "layer.param" names are built from layer names */
    m->tensor_names = NULL;
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

static int check_producer(const char *fn, const tlearn_model *m, int index)
{
    TL_CHECK_MODEL(fn, m);
    if (index < -m->ninputs || index >= m->nlayers)
        return tl_fail(TLEARN_EINVAL, "%s: index %d is not in %d..%d (layers from 0, model "
                       "inputs from -1 down)", fn, index, -m->ninputs, m->nlayers - 1);
    return TLEARN_OK;
}

int tlearn_model_layer_shape(const tlearn_model *m, int index, int *c, int *h, int *w)
{
    static const char fn[] = "tlearn_model_layer_shape";
    int rc = check_producer(fn, m, index);
    if (rc)
        return rc;
    tl_shape s = tl_model_producer_shape(m, index);
    if (s.rank > 3)
        return tl_fail(TLEARN_ESHAPE, "%s: the shape has %d dimensions; use "
                       "tlearn_model_layer_shape_nd", fn, s.rank);
    if (c)
        *c = s.c;
    if (h)
        *h = s.h;
    if (w)
        *w = s.w;
    return TLEARN_OK;
}

int tlearn_model_input_count(const tlearn_model *m, int *count)
{
    TL_CHECK_MODEL("tlearn_model_input_count", m);
    if (!count)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_input_count: count is NULL");
    *count = m->ninputs;
    return TLEARN_OK;
}

int tlearn_model_input_info(const tlearn_model *m, int k, const char **name, int *dtype)
{
    static const char fn[] = "tlearn_model_input_info";
    TL_CHECK_MODEL(fn, m);
    if (k < 0 || k >= m->ninputs)
        return tl_fail(TLEARN_EINVAL, "%s: input %d is not in 0..%d", fn, k, m->ninputs - 1);
    if (name)
        *name = m->inputs[k].name;
    if (dtype)
        *dtype = m->inputs[k].dtype;
    return TLEARN_OK;
}

int tlearn_model_layer_shape_nd(const tlearn_model *m, int index, int *rank, int *dims, int cap)
{
    static const char fn[] = "tlearn_model_layer_shape_nd";
    int rc = check_producer(fn, m, index);
    if (rc)
        return rc;
    if (!rank || (!dims && cap > 0) || cap < 0)
        return tl_fail(TLEARN_EINVAL, "%s: %s", fn,
                       !rank ? "rank is NULL" : cap < 0 ? "cap is negative" : "dims is NULL");
    tl_shape s = tl_model_producer_shape(m, index);
    *rank = s.rank;
    for (int i = 0; i < s.rank && i < cap; i++)
        dims[i] = s.d[i];
    return TLEARN_OK;
}

/* Validate one model input's description; fills @p in. */
static int make_input(const char *fn, tl_model_input *in, const char *name, int dtype, int rank,
                      const int *dims)
{
    int rc = tl_check_name(fn, name);
    if (rc)
        return rc;
    if (dtype != TLEARN_DTYPE_FLOAT32 && dtype != TLEARN_DTYPE_INT32)
        return tl_fail(TLEARN_EINVAL, "%s: dtype is %d, must be TLEARN_DTYPE_FLOAT32 or "
                       "TLEARN_DTYPE_INT32", fn, dtype);
    if (rank < 1 || rank > TL_MAX_RANK)
        return tl_fail(TLEARN_EINVAL, "%s: rank is %d, must be 1..%d", fn, rank, TL_MAX_RANK);
    if (!dims)
        return tl_fail(TLEARN_EINVAL, "%s: dims is NULL", fn);
    double total = 1.0;
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 1)
            return tl_fail(TLEARN_EINVAL, "%s: dims[%d] is %d, must be >= 1", fn, i, dims[i]);
        total *= dims[i];
    }
    if (total > (double)INT32_MAX)
        return tl_fail(TLEARN_EINVAL, "%s: an example of input '%s' has over 2^31 elements", fn,
                       name);
    memset(in, 0, sizeof *in);
    strcpy(in->name, name);
    in->dtype = dtype;
    in->shape = tl_shape_of(rank, dims);
    return TLEARN_OK;
}

int tlearn_model_create_input(tlearn_model **out, const char *name, int dtype, int rank,
                              const int *dims)
{
    static const char fn[] = "tlearn_model_create_input";
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    tl_model_input in;
    int rc = make_input(fn, &in, name, dtype, rank, dims);
    if (!rc)
        rc = tlearn_model_create(out, 1, 1, 1);
    if (rc)
        return rc == TLEARN_ENOMEM ? tl_fail(rc, "%s: out of memory", fn) : rc;
    (*out)->inputs[0] = in;
    return TLEARN_OK;
}

int tlearn_model_add_input(tlearn_model *m, const char *name, int dtype, int rank,
                           const int *dims)
{
    static const char fn[] = "tlearn_model_add_input";
    TL_CHECK_MODEL(fn, m);
    tl_model_input in;
    int rc = make_input(fn, &in, name, dtype, rank, dims);
    if (!rc)
        rc = check_new_name(fn, m, name);
    if (rc)
        return rc;
    if (m->ninputs == TL_MAX_MODEL_INPUTS)
        return tl_fail(TLEARN_ESTATE, "%s: the model has %d inputs already", fn, m->ninputs);
    m->inputs[m->ninputs++] = in;
    tl_model_structure_changed(m);
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
        all += layer_params(m->layers[i]);
        for (int p = 0; p < m->layers[i]->nparam; p++)
            if (tl_param_trains(m, i, p))
                train += m->layers[i]->param[p].t.numel;
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
    /* Layer and parameter names may both hold dots ("enc.self_attn" + "out_proj.weight"):
     * try each split, the layer found by name. */
    char buf[TL_NAME_MAX];
    for (const char *dot = strchr(name, '.'); dot; dot = strchr(dot + 1, '.')) {
        size_t len = (size_t)(dot - name);
        if (len == 0 || len >= sizeof buf)
            continue;
        memcpy(buf, name, len);
        buf[len] = '\0';
        int i = tl_model_find(m, buf);
        if (i < 0)
            continue;
        const tl_layer *L = m->layers[i];
        for (int p = 0; p < L->nparam; p++)
            if (strcmp(L->param[p].name, dot + 1) == 0) {
                *layer = i;
                *param = p;
                return 0;
            }
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
    if (!rc)
        rc = tl_model_own_param(m, l, p); /* copy on write of a shared tensor */
    if (rc)
        return tl_fail_prefix(rc, "%s: ", fn);
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
                       : !tl_param_trains(m, l, p)     ? "frozen"
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

int tl_model_output_count(const tlearn_model *m)
{
    return m->noutputs ? m->noutputs : m->nlayers > 0;
}

int tl_model_output(const tlearn_model *m, int k)
{
    return m->noutputs ? m->outputs[k] : m->nlayers - 1;
}

int tl_model_is_output(const tlearn_model *m, int layer)
{
    for (int k = 0; k < tl_model_output_count(m); k++)
        if (tl_model_output(m, k) == layer)
            return 1;
    return 0;
}

int tl_model_last_output(const tlearn_model *m)
{
    int last = -1;
    for (int k = 0; k < tl_model_output_count(m); k++)
        if (tl_model_output(m, k) > last)
            last = tl_model_output(m, k);
    return last;
}

size_t tl_model_output_size(const tlearn_model *m)
{
    return m->nlayers ? tl_shape_size(m->layers[tl_model_output(m, 0)]->out) : 0;
}

int tlearn_model_set_outputs(tlearn_model *m, const char *const *layers, int count)
{
    static const char fn[] = "tlearn_model_set_outputs";
    TL_CHECK_MODEL(fn, m);
    if (count < 0 || count > TL_MAX_MODEL_OUTPUTS || (count > 0 && !layers))
        return tl_fail(TLEARN_EINVAL, "%s: count is %d%s, must be 0..%d", fn, count,
                       count > 0 && !layers ? " with layers NULL" : "", TL_MAX_MODEL_OUTPUTS);
    int idx[TL_MAX_MODEL_OUTPUTS];
    for (int k = 0; k < count; k++) {
        int rc = tl_model_find_checked(fn, m, layers[k], &idx[k]);
        if (rc)
            return rc;
        for (int j = 0; j < k; j++)
            if (idx[j] == idx[k])
                return tl_fail(TLEARN_EINVAL, "%s: '%s' is named twice", fn, layers[k]);
    }
    memcpy(m->outputs, idx, sizeof(int) * (size_t)count);
    m->noutputs = count;
    tl_model_structure_changed(m);
    return TLEARN_OK;
}

int tlearn_model_output_count(const tlearn_model *m, int *count)
{
    TL_CHECK_MODEL("tlearn_model_output_count", m);
    if (!count)
        return tl_fail(TLEARN_EINVAL, "tlearn_model_output_count: count is NULL");
    *count = tl_model_output_count(m);
    return TLEARN_OK;
}

int tlearn_model_output_layer(const tlearn_model *m, int k, int *index)
{
    static const char fn[] = "tlearn_model_output_layer";
    TL_CHECK_MODEL(fn, m);
    if (!index)
        return tl_fail(TLEARN_EINVAL, "%s: index is NULL", fn);
    if (k < 0 || k >= tl_model_output_count(m))
        return tl_fail(TLEARN_EINVAL, "%s: output %d is not in 0..%d", fn, k,
                       tl_model_output_count(m) - 1);
    *index = tl_model_output(m, k);
    return TLEARN_OK;
}

/* ---- removing layers ---- */


/* Drop layers keep.. (their EWC state, outputs among them). */
static void drop_from(tlearn_model *m, int keep)
{
    if (m->ewc)
        m->ewc_ops->drop_layers(m, keep);
    for (int i = keep; i < m->nlayers; i++)
        destroy_layer(m->layers[i], &m->lstate[i]);
    m->nlayers = keep;
    if (m->name_cap)
        index_rebuild(m);
    int kept = 0; /* outputs among the removed layers go; none left means the last layer */
    for (int k = 0; k < m->noutputs; k++)
        if (m->outputs[k] < keep)
            m->outputs[kept++] = m->outputs[k];
    m->noutputs = kept;
    m->next_input = TL_NEXT_DEFAULT;
    tl_model_structure_changed(m);
}

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
    drop_from(m, keep);
    return TLEARN_OK;
}

int tl_model_replace_tail(tlearn_model *m, const char *fn, int keep, int producer,
                          const tl_layer_ops *ops, const char *name, const int *ia, int ni,
                          const float *fa, int nf, tl_layer **out)
{
    /* Refuse before dropping anything: a kept layer (or an input) of that name would make
     * the add fail after the old layers are already gone. */
    int kept;
    int rc = tl_check_name(fn, name);
    if (rc)
        return rc;
    if (tl_model_find_producer(m, name, &kept) && kept < keep)
        return tl_fail(TLEARN_EINVAL, "%s: %s is already named '%s' and would stay", fn,
                       kept < 0 ? "a model input" : "an earlier layer", name);
    /* Build the layer first and drop the tail only once it exists: a layer that cannot be
     * built (ESHAPE, ENOMEM) leaves the model as it was. */
    tl_layer *L;
    rc = reserve_layer(m, fn);
    if (!rc)
        rc = build_layer(m, fn, ops, name, &producer, 1, ia, ni, fa, nf, &L);
    if (rc)
        return rc;
    drop_from(m, keep);
    attach_layer(m, L);
    if (out)
        *out = L;
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
    return tl_model_replace_tail(m, fn, i + 1, i, &tl_dense_ops, "head", &classes, 1, NULL, 0,
                                 NULL);
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
