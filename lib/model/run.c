/* Forward and backward through the graph, and the inference entry points. */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model.h"

static const float *input_of(const tl_plan *p, const tl_feed *x, int src, int from)
{
    if (from > 0 && src < from)
        return x->x[0]; /* the caller's activations of layer from-1 */
    if (src < 0)
        return x->x[-1 - src]; /* a model input */
    return p->out[src];
}

/* Layer j reads layer i's output, and no other layer does. */
static int sole_reader(const tlearn_model *m, int i, int j)
{
    if (j >= m->nlayers || m->layers[j]->ninputs != 1 || m->layers[j]->input[0] != i)
        return 0;
    for (int k = i + 1; k < m->nlayers; k++)
        for (int q = 0; q < m->layers[k]->ninputs; q++)
            if (k != j && m->layers[k]->input[q] == i)
                return 0;
    return 1;
}

/* Is L the kind (with the arguments) of this epilogue? */
static int is_epilogue(const tl_layer *L, int epilogue)
{
    int ia[TL_MAX_IARGS], ni = 0, nf = 0;
    float fa[TL_MAX_FARGS];
    if (L->ops->kind == TLEARN_LAYER_ACTIVATION && epilogue == TL_EPILOGUE_RELU) {
        L->ops->arguments(L, ia, &ni, fa, &nf);
        return ia[0] == TLEARN_ACT_RELU;
    }
    if (L->ops->kind == TLEARN_LAYER_MAXPOOL2D && epilogue == TL_EPILOGUE_POOL2) {
        L->ops->arguments(L, ia, &ni, fa, &nf);
        static const int pool2[6] = {2, 2, 2, 2, 0, 0}; /* kernel, stride, padding */
        return ni == 6 && memcmp(ia, pool2, sizeof pool2) == 0;
    }
    return 0;
}

int tl_model_epilogue(const tlearn_model *m, int first_bwd, int i, int to, int *folded)
{
    int can = m->layers[i]->ops->epilogues, e = 0;
    *folded = 0;
    /* A folding layer leaves its own output unwritten (and a folded pool its ReLU's), so
     * graph outputs are never folded over. */
    if ((can & TL_EPILOGUE_RELU) && i + 1 <= to && sole_reader(m, i, i + 1) &&
        is_epilogue(m->layers[i + 1], TL_EPILOGUE_RELU) && !tl_model_is_output(m, i)) {
        e = TL_EPILOGUE_RELU;
        *folded = 1;
        if ((can & TL_EPILOGUE_POOL2) && i + 2 <= to && i + 2 < first_bwd &&
            sole_reader(m, i + 1, i + 2) && is_epilogue(m->layers[i + 2], TL_EPILOGUE_POOL2) &&
            !tl_model_is_output(m, i + 1)) {
            e |= TL_EPILOGUE_POOL2;
            *folded = 2;
        }
    }
    return e;
}

static void forward_on(tlearn_model *m, tl_plan *p, const tl_blas *blas, const tl_feed *x,
                       size_t n, int training, int from, int to, int prepared)
{
    tl_exec ex = {blas, &m->rng, training, 0, p->scratch, 0, prepared, m->batch_sum, m};
    p->fwd_training = training;
    for (int i = from; i <= to; i++) {
        tl_layer *L = m->layers[i];
        const float *in[TL_MAX_INPUTS];
        for (int k = 0; k < L->ninputs; k++)
            in[k] = input_of(p, x, L->input[k], from);
        int folded;
        ex.epilogue = tl_model_epilogue(m, p->first_bwd, i, to, &folded);
        ex.backward = i >= p->first_bwd;
        L->ops->forward(L, &ex, in, p->out[i + folded], n, p->saved[i]);
        i += folded;
    }
}

void tl_model_forward(tlearn_model *m, tl_plan *p, const tl_feed *x, size_t n, int training,
                      int from, int to)
{
    forward_on(m, p, m->blas, x, n, training, from, to, 0);
}

/* Where the gradient w.r.t. the output of producer @p src goes during a backward that
 * stops at @p stop; NULL when nobody needs it. src -1 is the first model input (the only
 * one whose gradient can be asked for). */
static float *grad_buffer(const tl_plan *p, int src, int stop, int from, float *dx)
{
    if (src >= stop && src >= from)
        return p->dout[src];
    if (src == -1 && p->want_dx)
        return dx;
    return NULL;
}

void tl_model_backward(tlearn_model *m, tl_plan *p, const tl_feed *x, size_t n, int from,
                       const int *seeded, int nseeded, float *dx)
{
    int last = -1;
    for (int k = 0; k < nseeded; k++)
        last = seeded[k] > last ? seeded[k] : last;
    tl_exec ex = {m->blas, &m->rng, p->fwd_training, 1, p->scratch, 0, 0, m->batch_sum, m};
    int stop = p->first_bwd > from ? p->first_bwd : from;
    /* written[-1]: the first model input's gradient; other inputs get none (grad_buffer) */
    int *written = p->dout_written + 1;
    memset(p->dout_written, 0, sizeof(int) * (size_t)(m->nlayers + 1));
    for (int k = 0; k < nseeded; k++)
        written[seeded[k]] = 1;
    for (int i = last; i >= stop; i--) {
        tl_layer *L = m->layers[i];
        if (!written[i]) /* a dead branch: nothing flows back into it */
            memset(p->dout[i], 0, sizeof(float) * n * tl_shape_size(L->out));
        const float *in[TL_MAX_INPUTS];
        float *din[TL_MAX_INPUTS];
        /* Layers take one accum flag: when any input's gradient already holds a
         * contribution (fan-out), or one producer feeds two inputs (add(x, x)), every
         * input accumulates, into buffers zeroed first where nothing was written yet. */
        int accum = 0;
        for (int k = 0; k < L->ninputs; k++) {
            in[k] = input_of(p, x, L->input[k], from);
            din[k] = grad_buffer(p, L->input[k], stop, from, dx);
            if (din[k] && written[L->input[k]])
                accum = 1;
            for (int j = 0; j < k; j++)
                if (din[k] && din[j] == din[k])
                    accum = 1;
        }
        if (accum)
            for (int k = 0; k < L->ninputs; k++)
                if (din[k] && !written[L->input[k]]) {
                    memset(din[k], 0, sizeof(float) * n * tl_shape_size(L->in[k]));
                    written[L->input[k]] = 1;
                }
        float *pg[TL_MAX_PARAMS];
        /* a frozen tensor of a training layer (BitFit) gets NULL: no gradient computed */
        int trains = tl_layer_trains(m, i);
        for (int k = 0; k < L->nparam; k++)
            pg[k] = tl_param_trains(m, i, k) ? m->lstate[i].slot[k].grad : NULL;
        /* saved holds this step's data only after a training-mode forward */
        L->ops->backward(L, &ex, in, p->out[i], p->dout[i], din, accum, n,
                         p->fwd_training ? p->saved[i] : NULL, trains ? pg : NULL);
        if (trains && m->grads_ready)
            m->grads_ready(m, i);
        for (int k = 0; k < L->ninputs; k++)
            if (din[k])
                written[L->input[k]] = 1;
    }
    m->has_grads = 1;
}

void tl_model_commit(tlearn_model *m, tl_plan *p, size_t n, int from)
{
    for (int i = from; i < m->nlayers; i++) {
        tl_layer *L = m->layers[i];
        if (L->ops->commit && p->saved[i])
            L->ops->commit(L, p->saved[i], n);
    }
}

/* ---- inference ---- */

/* Shared checks for calls that take n inputs of @p in_size and fill n x @p out_size. */
static int check_io(const char *fn, const tlearn_model *m, const void *x, size_t n,
                    const void *out, size_t out_len, size_t out_size)
{
    TL_CHECK_MODEL(fn, m);
    if (m->nlayers == 0)
        return tl_fail(TLEARN_ESHAPE, "%s: the model has no layers", fn);
    int rc = tl_model_check_single_input(fn, m);
    if (rc)
        return rc;
    if (!x || !out)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !x ? "x" : "out");
    if (n == 0)
        return tl_fail(TLEARN_EINVAL, "%s: n is 0", fn);
    if (n > (size_t)INT32_MAX / (out_size ? out_size : 1) || out_len / out_size != n ||
        out_len % out_size != 0)
        return tl_fail(TLEARN_EINVAL, "%s: out_len is %zu, expected %zu (n=%zu x %zu)", fn,
                       out_len, n * out_size, n, out_size);
    return TLEARN_OK;
}

size_t tl_model_infer_chunk(const tlearn_model *m, int from, int to)
{
    /* Inference keeps nothing, so the batch can be cut freely. Cut it small enough that
     * the largest activation stays within about 384 KiB: each layer then reads its input
     * from L2 instead of memory (the memory-bound passes, bias, activation and pooling, run
     * 1.5-2x faster on the reference CNN with chunks of 2-4 images than of 256). A dense
     * layer with large weights wants more rows per pass over its weights: at least 16. So
     * does a network whose weights are past the last-level cache (ResNet-18's 45 MB, each
     * chunk streamed them all again: extraction +15 % with 16 images per chunk; MobileNetV2's
     * 14 MB lost 10 % with them). */
    size_t act = 1, chunk, weights = 0;
    int many_rows = 0;
    for (int i = from; i <= to; i++) {
        int folded;
        if (tl_model_epilogue(m, m->nlayers, i, to, &folded))
            i += folded; /* the folded layers' output is the only one written */
        const tl_layer *L = m->layers[i];
        size_t b = tl_shape_size(L->out) * sizeof(float);
        act = b > act ? b : act;
        if (L->ops->kind == TLEARN_LAYER_DENSE && L->nparam > 0 &&
            L->param[0].t.numel >= ((size_t)64 << 10))
            many_rows = 1;
        for (int p = 0; p < L->nparam; p++)
            weights += L->param[p].t.numel;
    }
    if (weights >= ((size_t)6 << 20)) /* 24 MB of floats */
        many_rows = 1;
    chunk = ((size_t)384 << 10) / act; /* per thread: each core has its own L2 */
    if (many_rows && chunk < 16)
        chunk = 16;
    return chunk < 1 ? 1 : chunk > 256 ? 256 : chunk;
}

void tl_model_free_workers(tlearn_model *m)
{
    for (int w = 0; w < m->nworkers; w++) {
        tl_plan_free(&m->workers[w].plan);
        tl_blas_destroy(m->workers[w].blas);
    }
    tl_free(m->workers);
    m->workers = NULL;
    m->nworkers = 0;
}

/* Workers 0 .. nw-1, each planned for @p cap inputs. */
static int plan_workers(tlearn_model *m, int nw, size_t cap)
{
    if (m->nworkers < nw) {
        tl_model_free_workers(m);
        m->workers = tl_alloc_array((size_t)nw, sizeof(tl_worker));
        if (!m->workers)
            return tl_fail(TLEARN_ENOMEM, "out of memory for %d inference workers", nw);
        for (; m->nworkers < nw; m->nworkers++)
            if (!(m->workers[m->nworkers].blas = tl_blas_create(1)))
                return tl_fail(TLEARN_ENOMEM, "out of memory for %d inference workers", nw);
    }
    for (int w = 0; w < nw; w++) {
        int rc = tl_model_plan(m, &m->workers[w].plan, cap, m->nlayers, 0);
        if (rc)
            return rc;
    }
    return TLEARN_OK;
}

int tl_model_infer(tlearn_model *m, const tl_feed *x, size_t n, int from, int to, int training,
                   tl_chunk_fn fn, void *ctx)
{
    size_t chunk = tl_model_infer_chunk(m, from, to);
    size_t cap = n < chunk ? n : chunk, nchunks = (n + cap - 1) / cap;
    size_t most = m->threads < TL_MAX_WORKERS ? (size_t)m->threads : TL_MAX_WORKERS;
    int nw = (int)(nchunks < most ? nchunks : most);
    tl_exec ex = {m->blas, &m->rng, training, 0, NULL, 0, 0, NULL, NULL};
    for (int i = from; i <= to; i++) {
        tl_layer *L = m->layers[i];
        int rc = L->ops->prepare ? L->ops->prepare(L, &ex) : TLEARN_OK;
        if (rc)
            return rc;
    }
    if (nw <= 1) {
        /* One chunk or one thread: the model's plan, the model's threads inside layers. */
        int rc = tl_model_plan(m, &m->plan_infer, cap, m->nlayers, 0);
        if (rc)
            return rc;
        for (size_t s = 0; s < n; s += cap) {
            size_t k = n - s < cap ? n - s : cap;
            tl_feed xs = tl_feed_at(x, s);
            forward_on(m, &m->plan_infer, m->blas, &xs, k, training, from, to, 1);
            fn(ctx, 0, s, k, m->plan_infer.out);
        }
        return TLEARN_OK;
    }
    int rc = plan_workers(m, nw, cap);
    if (rc)
        return rc;
    /* Worker w takes the contiguous inputs [n*w/nw, n*(w+1)/nw), cut into chunks of equal
     * size: no worker waits for another's last chunk, and what a worker sums (evaluate)
     * does not depend on timing. */
#pragma omp parallel num_threads(nw)
    {
        int t = 0, nt = 1; /* the runtime may give fewer threads than asked (nesting) */
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        for (int w = t; w < nw; w += nt) {
            tl_worker *wk = &m->workers[w];
            size_t lo = n * (size_t)w / (size_t)nw;
            size_t len = n * (size_t)(w + 1) / (size_t)nw - lo, parts = (len + cap - 1) / cap;
            for (size_t q = 0; q < parts; q++) {
                size_t s = lo + len * q / parts, k = lo + len * (q + 1) / parts - s;
                tl_feed xs = tl_feed_at(x, s);
                forward_on(m, &wk->plan, wk->blas, &xs, k, training, from, to, 1);
                fn(ctx, w, s, k, wk->plan.out);
            }
        }
    }
    return TLEARN_OK;
}

void tl_chunk_copy(void *ctx, int worker, size_t start, size_t k, float *const *outs)
{
    (void)worker;
    const tl_chunk_dest *c = ctx;
    memcpy(c->out + start * c->size, outs[c->layer], sizeof(float) * k * c->size);
}

/* Forward in evaluation mode from layer `from` to `to`, copying layer `to`'s output. */
static int infer(tlearn_model *m, const tl_feed *x, size_t n, int from, int to, float *out)
{
    tl_chunk_dest c = {out, tl_shape_size(m->layers[to]->out), to};
    return tl_model_infer(m, x, n, from, to, 0, tl_chunk_copy, &c);
}

int tlearn_model_predict(tlearn_model *m, const float *x, size_t n, float *out, size_t out_len)
{
    static const char fn[] = "tlearn_model_predict";
    int rc = check_io(fn, m, x, n, out, out_len, m ? tl_model_output_size(m) : 1);
    if (rc)
        return rc;
    tl_feed f = tl_model_feed(m, x);
    rc = infer(m, &f, n, 0, tl_model_output(m, 0), out);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

int tl_model_find_checked(const char *fn, const tlearn_model *m, const char *layer, int *index)
{
    if (!layer)
        return tl_fail(TLEARN_EINVAL, "%s: layer is NULL", fn);
    *index = tl_model_find(m, layer);
    if (*index < 0)
        return tl_fail(TLEARN_ENOTFOUND, "%s: no layer named '%s'", fn, layer);
    return TLEARN_OK;
}

int tlearn_model_features(tlearn_model *m, const char *layer, const float *x, size_t n,
                          float *out, size_t out_len)
{
    static const char fn[] = "tlearn_model_features";
    TL_CHECK_MODEL(fn, m);
    int i = 0;
    int rc = tl_model_find_checked(fn, m, layer, &i);
    if (rc)
        return rc;
    rc = check_io(fn, m, x, n, out, out_len, tl_shape_size(m->layers[i]->out));
    if (rc)
        return rc;
    tl_feed f = tl_model_feed(m, x);
    rc = infer(m, &f, n, 0, i, out);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

/* Layers after @p i may only read layer i or later: then activations of i stand in for the
 * whole prefix. */
int tl_model_reader_across(const tlearn_model *m, int i)
{
    for (int j = i + 1; j < m->nlayers; j++)
        for (int k = 0; k < m->layers[j]->ninputs; k++)
            if (m->layers[j]->input[k] < i)
                return j;
    return -1;
}

int tl_model_check_cut(const char *fn, const tlearn_model *m, int i)
{
    int j = tl_model_reader_across(m, i);
    if (j >= 0)
        return tl_fail(TLEARN_ESTATE,
                       "%s: layer '%s' reads from before '%s', so its activations do not "
                       "stand for the prefix", fn, m->layers[j]->name, m->layers[i]->name);
    if (i >= tl_model_output(m, 0))
        return tl_fail(TLEARN_ESTATE, "%s: nothing follows '%s': it is output 0 (by default "
                       "the last layer) or after it", fn, m->layers[i]->name);
    return TLEARN_OK;
}

int tlearn_model_predict_from(tlearn_model *m, const char *layer, const float *features,
                              size_t n, float *out, size_t out_len)
{
    static const char fn[] = "tlearn_model_predict_from";
    TL_CHECK_MODEL(fn, m);
    int i = 0;
    int rc = tl_model_find_checked(fn, m, layer, &i);
    if (rc)
        return rc;
    rc = check_io(fn, m, features, n, out, out_len, tl_model_output_size(m));
    if (!rc)
        rc = tl_model_check_cut(fn, m, i);
    if (rc)
        return rc;
    tl_feed f = tl_feed_one(features, tl_shape_size(m->layers[i]->out));
    rc = infer(m, &f, n, i + 1, tl_model_output(m, 0), out);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

/* ---- several inputs and outputs ---- */

typedef struct run_dest {
    int count;
    int layer[TL_MAX_MODEL_OUTPUTS];
    float *const *out;
    size_t size[TL_MAX_MODEL_OUTPUTS];
} run_dest;

static void run_copy(void *ctx, int worker, size_t start, size_t k, float *const *outs)
{
    (void)worker;
    const run_dest *d = ctx;
    for (int j = 0; j < d->count; j++)
        memcpy(d->out[j] + start * d->size[j], outs[d->layer[j]], sizeof(float) * k * d->size[j]);
}

int tl_model_check_feed(const char *fn, const tlearn_model *m, const void *const *inputs,
                        int ninputs, size_t n, tl_feed *feed)
{
    TL_CHECK_MODEL(fn, m);
    if (m->nlayers == 0)
        return tl_fail(TLEARN_ESHAPE, "%s: the model has no layers", fn);
    if (!inputs || ninputs != m->ninputs)
        return tl_fail(TLEARN_EINVAL, "%s: %s, the model has %d inputs", fn,
                       !inputs ? "inputs is NULL" : "ninputs differs", m->ninputs);
    if (n == 0)
        return tl_fail(TLEARN_EINVAL, "%s: n is 0", fn);
    feed->count = ninputs;
    for (int k = 0; k < ninputs; k++) {
        if (!inputs[k])
            return tl_fail(TLEARN_EINVAL, "%s: inputs[%d] ('%s') is NULL", fn, k,
                           m->inputs[k].name);
        feed->x[k] = inputs[k];
        feed->size[k] = tl_shape_size(m->inputs[k].shape);
        if (n > (size_t)INT32_MAX / feed->size[k])
            return tl_fail(TLEARN_EINVAL, "%s: n is %zu, too large", fn, n);
    }
    return tl_model_validate_feed(fn, m, feed, n);
}

int tlearn_model_run(tlearn_model *m, const void *const *inputs, int ninputs, size_t n,
                     float *const *outputs, const size_t *out_lens, int noutputs)
{
    static const char fn[] = "tlearn_model_run";
    tl_feed feed;
    int rc = tl_model_check_feed(fn, m, inputs, ninputs, n, &feed);
    if (rc)
        return rc;
    if (!outputs || !out_lens || noutputs != tl_model_output_count(m))
        return tl_fail(TLEARN_EINVAL, "%s: %s, the model has %d outputs", fn,
                       !outputs || !out_lens ? "outputs or out_lens is NULL"
                                             : "noutputs differs", tl_model_output_count(m));
    run_dest d = {noutputs, {0}, outputs, {0}};
    for (int j = 0; j < noutputs; j++) {
        d.layer[j] = tl_model_output(m, j);
        d.size[j] = tl_shape_size(m->layers[d.layer[j]]->out);
        if (!outputs[j] || out_lens[j] / d.size[j] != n || out_lens[j] % d.size[j])
            return tl_fail(TLEARN_EINVAL, "%s: output %d ('%s'): %s", fn, j,
                           m->layers[d.layer[j]]->name,
                           !outputs[j] ? "the buffer is NULL" : "out_len is not n x its size");
    }
    rc = tl_model_infer(m, &feed, n, 0, tl_model_last_output(m), 0, run_copy, &d);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}
