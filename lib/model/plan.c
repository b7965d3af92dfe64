/* Workspace planning: every buffer a computation needs for a batch capacity is carved from
 * one block, so steady-state steps allocate nothing. Outputs that no backward needs (a
 * frozen prefix, inference) share regions by liveness; the rest are kept. */
#include <string.h>

#include "model.h"

void tl_plan_free(tl_plan *p)
{
    tl_free(p->block);
    memset(p, 0, sizeof *p);
}

#define TL_ALIGN_FLOATS 16 /* 64 bytes */

static size_t round_up(size_t floats)
{
    return (floats + TL_ALIGN_FLOATS - 1) / TL_ALIGN_FLOATS * TL_ALIGN_FLOATS;
}

int tl_model_first_trainable(const tlearn_model *m)
{
    for (int i = 0; i < m->nlayers; i++)
        if (tl_layer_trains(m, i))
            return i;
    return m->nlayers;
}

int tl_model_plan(tlearn_model *m, tl_plan *p, size_t n, int first_bwd, int want_dx)
{
    int L = m->nlayers;
    /* The training plan keeps what backward and commit need (batchnorm statistics update
     * even when everything is frozen); the inference plan keeps nothing. */
    int training = p == &m->plan_train;
    if (want_dx)
        first_bwd = 0;
    if (p->block && p->cap >= n && p->first_bwd == first_bwd && p->want_dx == want_dx &&
        p->for_da == (m->da != NULL))
        return TLEARN_OK;
    tl_plan_free(p);

    /* last_use[i]: index of the last layer reading layer i's output. An output is kept for
     * the whole step if the backward of one of its readers or its own reads it, or it is
     * a graph output. */
    int *last_use = tl_alloc_array((size_t)L, sizeof(int) * 3);
    if (!last_use)
        return tl_fail(TLEARN_ENOMEM, "planning the workspace: out of memory");
    int *keep = last_use + L, *region = last_use + 2 * L;
    for (int i = 0; i < L; i++)
        last_use[i] = i;
    for (int i = 0; i < L; i++)
        for (int k = 0; k < m->layers[i]->ninputs; k++) {
            int src = m->layers[i]->input[k];
            if (src >= 0) {
                last_use[src] = i;
                if (i >= first_bwd && (!m->layers[i]->ops->bwd_ignores_inputs || m->da))
                    keep[src] = 1;
            }
        }
    for (int k = 0; k < tl_model_output_count(m); k++)
        keep[tl_model_output(m, k)] = 1;
    /* Domain adaptation reads the outputs of any layer between forward and backward. */
    for (int i = first_bwd; i < L; i++)
        if (!m->layers[i]->ops->bwd_ignores_output || m->da)
            keep[i] = 1;
    /* A layer that folds the next ones in (epilogues) writes their output while it reads
     * its inputs: the inputs live until the last folded layer. */
    for (int i = 0; i < L; i++) {
        int folded;
        tl_model_epilogue(m, first_bwd, i, L - 1, &folded);
        for (int k = 0; folded && k < m->layers[i]->ninputs; k++) {
            int src = m->layers[i]->input[k];
            if (src >= 0 && last_use[src] < i + folded)
                last_use[src] = i + folded;
        }
    }

    /* Greedy assignment of outputs to regions; a region grows to its largest tenant. */
    size_t *rsize = tl_alloc_array((size_t)L, sizeof(size_t));
    int *rfree = tl_alloc_array((size_t)L, sizeof(int));
    if (!rsize || !rfree) {
        tl_free(last_use);
        tl_free(rsize);
        tl_free(rfree);
        return tl_fail(TLEARN_ENOMEM, "planning the workspace: out of memory");
    }
    int nregions = 0;
    for (int i = 0; i < L; i++) {
        size_t need = n * tl_shape_size(m->layers[i]->out);
        /* The smallest free region that fits, else the largest free one (it grows). */
        int best = -1;
        for (int r = 0; r < nregions; r++) {
            if (!rfree[r])
                continue;
            if (best < 0) {
                best = r;
                continue;
            }
            int fits = rsize[r] >= need, best_fits = rsize[best] >= need;
            if (fits != best_fits ? fits : fits ? rsize[r] < rsize[best] : rsize[r] > rsize[best])
                best = r;
        }
        if (best < 0)
            best = nregions++;
        rfree[best] = 0;
        if (rsize[best] < need)
            rsize[best] = need;
        region[i] = best;
        /* Outputs last used by this layer become free for later layers. */
        for (int src = 0; src < i; src++)
            if (!keep[src] && last_use[src] == i)
                rfree[region[src]] = 1;
        if (!keep[i] && last_use[i] == i && i != L - 1)
            rfree[region[i]] = 1; /* read by nobody */
    }

    /* Gradients share regions by liveness too. Backward runs from the last layer down:
     * layer i's gradient is first written by the backward of its last reader (seeded
     * gradients, graph outputs' and those domain adaptation writes into any layer, before
     * backward starts) and last read by its own. */
    size_t *gsize = tl_alloc_array((size_t)L + 1, sizeof(size_t));
    int *gregion = tl_alloc_array((size_t)L + 1, sizeof(int) * 2);
    if (!gsize || !gregion) {
        tl_free(last_use);
        tl_free(rsize);
        tl_free(rfree);
        tl_free(gsize);
        tl_free(gregion);
        return tl_fail(TLEARN_ENOMEM, "planning the workspace: out of memory");
    }
    int *gfree = gregion + L + 1, ngregions = 0;
    for (int i = first_bwd; i < L; i++) {
        keep[i] = last_use[i]; /* reused: the backward that first writes i's gradient */
        if (last_use[i] == i || m->da)
            keep[i] = L;
    }
    for (int k = 0; k < tl_model_output_count(m); k++)
        if (tl_model_output(m, k) >= first_bwd)
            keep[tl_model_output(m, k)] = L;
    for (int t = L; t >= first_bwd; t--) {
        for (int i = first_bwd; i < L && i <= t; i++) {
            if (keep[i] != t)
                continue;
            size_t need = n * tl_shape_size(m->layers[i]->out);
            int best = -1;
            for (int r = 0; r < ngregions; r++) {
                if (!gfree[r])
                    continue;
                int fits = gsize[r] >= need, best_fits = best >= 0 && gsize[best] >= need;
                if (best < 0 || (fits != best_fits ? fits
                                 : fits ? gsize[r] < gsize[best] : gsize[r] > gsize[best]))
                    best = r;
            }
            if (best < 0)
                best = ngregions++;
            gfree[best] = 0;
            if (gsize[best] < need)
                gsize[best] = need;
            gregion[i] = best;
        }
        if (t < L)
            gfree[gregion[t]] = 1; /* layer t's backward was its last reader */
    }

    /* Sizes of everything else. */
    size_t total = 0, scratch = 0, grads = 0, saved = 0;
    for (int r = 0; r < nregions; r++)
        total += round_up(rsize[r]);
    for (int r = 0; r < ngregions; r++)
        grads += round_up(gsize[r]);
    for (int i = 0; i < L; i++) {
        const tl_layer *Ly = m->layers[i];
        if (training && Ly->ops->saved_floats)
            saved += round_up(Ly->ops->saved_floats(Ly, n, i >= first_bwd));
        if (Ly->ops->scratch_floats) {
            size_t s = Ly->ops->scratch_floats(Ly, n);
            if (s > scratch)
                scratch = s;
        }
    }
    size_t floats = total + grads + saved + round_up(scratch);
    size_t ptrs = 3 * (size_t)L * sizeof(float *) + (size_t)(L + 1) * sizeof(int);
    size_t head = (ptrs + 63) & ~(size_t)63;
    size_t bytes;
    if (!tl_mul_size(floats, sizeof(float), &bytes) || bytes > SIZE_MAX - head) {
        tl_free(last_use);
        tl_free(rsize);
        tl_free(rfree);
        tl_free(gsize);
        tl_free(gregion);
        return tl_fail(TLEARN_ENOMEM, "workspace for batch %zu is too large", n);
    }
    char *block = tl_alloc(head + bytes);
    if (!block) {
        tl_free(last_use);
        tl_free(rsize);
        tl_free(rfree);
        tl_free(gsize);
        tl_free(gregion);
        return tl_fail(TLEARN_ENOMEM, "out of memory for a %zu-byte workspace (batch %zu)",
                       head + bytes, n);
    }
    memset(block, 0, head);
    p->block = block;
    p->out = (float **)block;
    p->dout = p->out + L;
    p->saved = p->dout + L;
    p->dout_written = (int *)(p->saved + L);
    float *f = (float *)(block + head);
    size_t *roff = rsize; /* reuse as offsets */
    size_t off = 0;
    for (int r = 0; r < nregions; r++) {
        size_t sz = round_up(rsize[r]);
        roff[r] = off;
        off += sz;
    }
    for (int i = 0; i < L; i++)
        p->out[i] = f + roff[region[i]];
    f += off;
    size_t goff = 0;
    for (int r = 0; r < ngregions; r++) { /* gsize becomes the offsets */
        size_t sz = round_up(gsize[r]);
        gsize[r] = goff;
        goff += sz;
    }
    for (int i = first_bwd; i < L; i++)
        p->dout[i] = f + gsize[gregion[i]];
    f += grads;
    for (int i = 0; i < L; i++) {
        const tl_layer *Ly = m->layers[i];
        if (training && Ly->ops->saved_floats) {
            size_t s = Ly->ops->saved_floats(Ly, n, i >= first_bwd);
            if (s) {
                p->saved[i] = f;
                f += round_up(s);
            }
        }
    }
    p->scratch = f;
    p->cap = n;
    p->first_bwd = first_bwd;
    p->want_dx = want_dx;
    p->for_da = m->da != NULL;
    p->bytes = head + bytes;
    tl_free(last_use);
    tl_free(rsize);
    tl_free(rfree);
    tl_free(gsize);
    tl_free(gregion);
    return TLEARN_OK;
}
