/* One base, many handles: a model made from another shares its parameter tensors (not its
 * buffers) read-only and reference-counted (tensor.c tl_share), so N adapted copies cost
 * one base plus what each one trains. Writing a shared tensor copies it first
 * (tl_model_own_param): training (tl_model_sync_slots with gradients), set_tensor, LoRA
 * merge, file imports. The data lives while any holder does, so handles may be destroyed
 * in any order, and since shared data is never written, handles sharing it may run on
 * different threads at once. */
#include <string.h>

#include "model.h"

int tl_model_own_param(tlearn_model *m, int layer, int param)
{
    tl_tensor *t = &m->layers[layer]->param[param].t;
    int rc = tl_tensor_own(t);
    if (rc)
        return tl_fail(rc, "out of memory for a private copy of shared tensor '%s.%s'",
                       m->layers[layer]->name, m->layers[layer]->param[param].name);
    return TLEARN_OK;
}

/* Layer i of @p base rebuilt in @p m through the one door, its tensors then shared
 * (parameters) or copied (buffers, which training-mode forwards update). */
static int clone_layer(const char *fn, tlearn_model *m, const tlearn_model *base, int i)
{
    tl_layer *B = base->layers[i];
    int ia[TL_MAX_IARGS], ni = 0, nf = 0;
    float fa[TL_MAX_FARGS];
    B->ops->arguments(B, ia, &ni, fa, &nf);
    int rc = tl_model_add(m, fn, B->ops, B->name, B->input, B->ninputs, ia, ni, fa, nf);
    if (rc)
        return rc;
    tl_layer *L = m->layers[m->nlayers - 1];
    if (L->nparam != B->nparam)
        return tl_fail(TLEARN_ESTATE, "%s: layer '%s' does not rebuild from its arguments", fn,
                       B->name);
    for (int p = 0; p < B->nparam; p++) {
        tl_tensor *dst = &L->param[p].t, *src = &B->param[p].t;
        if (dst->numel != src->numel || dst->ndim != src->ndim ||
            memcmp(dst->dims, src->dims, sizeof dst->dims) != 0)
            return tl_fail(TLEARN_ESTATE, "%s: tensor '%s.%s' does not rebuild from its "
                           "layer's arguments", fn, B->name, B->param[p].name);
        if (B->param[p].is_buffer) {
            memcpy(dst->data, src->data, sizeof(float) * src->numel);
            continue;
        }
        tl_tensor mine = *dst;
        if ((rc = tl_tensor_share(dst, src))) {
            *dst = mine;
            return tl_fail_prefix(rc, "%s: ", fn);
        }
        tl_tensor_free(&mine);
    }
    L->use_running_stats = B->use_running_stats;
    tl_layer_state *st = &m->lstate[m->nlayers - 1];
    const tl_layer_state *bs = &base->lstate[i];
    st->frozen = bs->frozen;
    st->frozen_params = bs->frozen_params;
    st->lr_scale = bs->lr_scale;
    return TLEARN_OK;
}

int tlearn_model_create_shared(tlearn_model **out, const tlearn_model *base)
{
    static const char fn[] = "tlearn_model_create_shared";
    if (!out)
        return tl_fail(TLEARN_EINVAL, "%s: out is NULL", fn);
    *out = NULL;
    if (!base)
        return tl_fail(TLEARN_EINVAL, "%s: base is NULL", fn);
    tlearn_model *m;
    int rc = tlearn_model_create(&m, 1, 1, 1);
    if (rc)
        return rc == TLEARN_ENOMEM ? tl_fail(rc, "%s: out of memory", fn) : rc;
    m->ninputs = base->ninputs;
    memcpy(m->inputs, base->inputs, sizeof m->inputs);
    if (base->nclass_weight &&
        !(m->class_weight = tl_alloc_array(base->nclass_weight, sizeof(float))))
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    if (!rc && base->nclass_weight) {
        memcpy(m->class_weight, base->class_weight, sizeof(float) * base->nclass_weight);
        m->nclass_weight = base->nclass_weight;
    }
    /* Sharing takes a reference on base's tensors: logically const, the data unchanged. */
    for (int i = 0; !rc && i < base->nlayers; i++)
        rc = clone_layer(fn, m, base, i);
    if (rc) {
        tlearn_model_destroy(&m);
        return rc;
    }
    m->noutputs = base->noutputs;
    memcpy(m->outputs, base->outputs, sizeof m->outputs);
    m->next_input = base->next_input;
    m->threads = base->threads;
    tl_blas_set_threads(m->blas, base->threads);
    m->seed = base->seed;
    m->rng = base->rng;
    m->training = base->training;
    m->loss_kind = base->loss_kind;
    m->label_smoothing = base->label_smoothing;
    m->bn_stats_frozen = base->bn_stats_frozen;
    *out = m;
    return TLEARN_OK;
}

int tlearn_model_tensor_shared(const tlearn_model *m, const char *tensor, int *shared)
{
    static const char fn[] = "tlearn_model_tensor_shared";
    TL_CHECK_MODEL(fn, m);
    if (!tensor || !shared)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !tensor ? "tensor" : "shared");
    int l, p;
    if (tl_model_find_tensor(m, tensor, &l, &p))
        return tl_fail(TLEARN_ENOTFOUND, "%s: no tensor named '%s'", fn, tensor);
    *shared = tl_tensor_is_shared(&m->layers[l]->param[p].t);
    return TLEARN_OK;
}
