/* Data parallelism through a host-registered reducer (tlearn_model_set_reducer): each
 * worker's step hands its trainable gradients, in buckets as backward produces them, then
 * the loss, to the reducer; after its wait the sums are divided by the worker count. With
 * synchronised BatchNorm the layers' batch sums go through it too, during forward and
 * backward. The reducer knows nothing of the model and libtlearn nothing of MPI. */
#include <string.h>

#include "train.h"

#define TL_BUCKET_DEFAULT ((size_t)1 << 20) /* floats: 4 MB, amortises a collective's latency */

static void reducer_free(tl_reducer *r)
{
    if (r) {
        tl_free(r->buf);
        tl_free(r->order);
        tl_free(r);
    }
}

int tlearn_model_set_reducer(tlearn_model *m, tlearn_reduce_fn reduce, tlearn_reduce_wait_fn wait,
                             void *user, int workers, size_t bucket_floats, int flags)
{
    static const char fn[] = "tlearn_model_set_reducer";
    TL_CHECK_MODEL(fn, m);
    if (!reduce) {
        reducer_free(m->reducer);
        m->reducer = NULL;
        return TLEARN_OK;
    }
    if (!wait)
        return tl_fail(TLEARN_EINVAL, "%s: wait is NULL", fn);
    if (workers < 1 || workers > 65536)
        return tl_fail(TLEARN_EINVAL, "%s: workers is %d, must be in 1..65536", fn, workers);
    if (flags & ~(TLEARN_REDUCE_EVALUATE | TLEARN_REDUCE_FISHER | TLEARN_REDUCE_BATCHNORM))
        return tl_fail(TLEARN_EINVAL, "%s: unknown flags 0x%x", fn, (unsigned)flags);
    if (!m->reducer && !(m->reducer = tl_alloc_zero(sizeof *m->reducer)))
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    tl_reducer *r = m->reducer;
    r->reduce = reduce;
    r->wait = wait;
    r->user = user;
    r->workers = workers;
    r->flags = flags;
    r->bucket_floats = bucket_floats ? bucket_floats : TL_BUCKET_DEFAULT;
    return TLEARN_OK;
}

int tl_reduce_wants(const tlearn_model *m, int flag)
{
    return m->reducer && (m->reducer->flags & flag);
}

static int trainable(const tlearn_model *m, int i, int p)
{
    return tl_param_trains(m, i, p);
}

static void send(tl_reducer *r, float *data, size_t count)
{
    if (!r->rc && count) {
        int rc = r->reduce(r->user, r->bucket++, data, count);
        r->rc = rc > 0 ? TLEARN_EIO : rc;
    }
}

/* After layer i's backward: its gradients join the open bucket, which leaves once full. */
static void grads_ready(tlearn_model *m, int i)
{
    tl_reducer *r = m->reducer;
    const tl_layer *L = m->layers[i];
    for (int p = 0; p < L->nparam; p++) {
        size_t numel = L->param[p].t.numel;
        if (!trainable(m, i, p))
            continue;
        if (r->used + numel > r->cap || r->norder >= r->order_cap) { /* cannot happen */
            r->rc = TLEARN_ESTATE;
            return;
        }
        memcpy(r->buf + r->used, m->lstate[i].slot[p].grad, sizeof(float) * numel);
        r->used += numel;
    }
    r->order[r->norder++] = i;
    if (r->used - r->start >= r->bucket_floats) {
        send(r, r->buf + r->start, r->used - r->start);
        r->start = r->used;
    }
}

/* Synchronised BatchNorm: a layer's sum, finished before the layer goes on (so it also
 * waits for the gradient buckets started before it). After a failure it sends nothing
 * more; tl_reduce_end reports the failure. */
static int batch_sum(void *ctx, float *data, size_t count)
{
    tl_reducer *r = ((tlearn_model *)ctx)->reducer;
    send(r, data, count);
    if (!r->rc) {
        int rc = r->wait(r->user);
        r->rc = rc > 0 ? TLEARN_EIO : rc;
    }
    return r->rc;
}

int tl_reduce_begin(const char *fn, tlearn_model *m)
{
    tl_reducer *r = m->reducer;
    if (!r)
        return TLEARN_OK;
    size_t need = 0;
    for (int i = 0; i < m->nlayers; i++)
        for (int p = 0; p < m->layers[i]->nparam; p++)
            if (trainable(m, i, p))
                need += m->layers[i]->param[p].t.numel;
    if (need > r->cap) {
        float *buf = tl_alloc_array(need, sizeof(float));
        if (!buf)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory for the reducer's buckets", fn);
        tl_free(r->buf);
        r->buf = buf;
        r->cap = need;
    }
    if (m->nlayers > r->order_cap) {
        int *order = tl_alloc_array((size_t)m->nlayers, sizeof(int));
        if (!order)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory for the reducer's buckets", fn);
        tl_free(r->order);
        r->order = order;
        r->order_cap = m->nlayers;
    }
    r->used = r->start = 0;
    r->norder = r->bucket = r->rc = 0;
    m->grads_ready = grads_ready;
    m->batch_sum = r->flags & TLEARN_REDUCE_BATCHNORM ? batch_sum : NULL;
    return TLEARN_OK;
}

static int finish(const char *fn, tl_reducer *r, const char *what)
{
    int rc = r->rc, wrc = r->wait(r->user);
    if (!rc)
        rc = wrc > 0 ? TLEARN_EIO : wrc;
    if (rc)
        return tl_fail(rc, "%s: the reducer failed while summing %s across workers: %s; "
                       "weights unchanged", fn, what, tlearn_strerror(rc));
    return TLEARN_OK;
}

int tl_reduce_end(const char *fn, tlearn_model *m, double *loss)
{
    tl_reducer *r = m->reducer;
    if (!r)
        return TLEARN_OK;
    m->grads_ready = NULL;
    m->batch_sum = NULL;
    send(r, r->buf + r->start, r->used - r->start);
    r->extra[0] = (float)*loss;
    send(r, r->extra, 1);
    int rc = finish(fn, r, "the gradients");
    if (rc)
        return rc;
    /* Averages: the sums over workers of per-worker batch means, over the worker count. */
    const float w = (float)r->workers;
    const float *src = r->buf;
    for (int k = 0; k < r->norder; k++) {
        int i = r->order[k];
        for (int p = 0; p < m->layers[i]->nparam; p++) {
            if (!trainable(m, i, p))
                continue;
            float *g = m->lstate[i].slot[p].grad;
            size_t numel = m->layers[i]->param[p].t.numel;
            for (size_t e = 0; e < numel; e++)
                g[e] = src[e] / w;
            src += numel;
        }
    }
    *loss = (double)r->extra[0] / r->workers;
    return TLEARN_OK;
}

void tl_reduce_abandon(tlearn_model *m)
{
    m->grads_ready = NULL;
    m->batch_sum = NULL;
}

int tl_reduce_floats(const char *fn, tlearn_model *m, float *data, size_t count,
                     const char *what)
{
    tl_reducer *r = m->reducer;
    r->bucket = r->rc = 0;
    send(r, data, count);
    return finish(fn, r, what);
}
