/* Test harness for single layers: builds a layer outside any model, runs forward and
 * backward through its ops table, and checks gradients against central finite differences
 * of the scalar loss  sum_i out[i] * r[i]  (r fixed random weights, sums in double). */
#ifndef VISION_HARNESS_H
#define VISION_HARNESS_H

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "layers/layer.h"

#define LH_MAX_INPUTS 8

typedef struct lh {
    tl_layer *L;
    tl_blas *blas;
    tl_rng rng;     /* dropout masks: restored before every forward so masks repeat */
    tl_rng rng0;
    size_t n;
    int training;
    float *x[LH_MAX_INPUTS];
    size_t in_len[LH_MAX_INPUTS];
    float *out, *r, *saved, *scratch;
    size_t out_len, saved_len, scratch_len;
} lh;

static float *lh_alloc(size_t count)
{
    float *p = calloc(count ? count : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

/* Deterministic values in [-1, 1) from a small LCG, so tests do not depend on tl_rng. */
static float lh_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*s >> 40) / 8388608.0 - 1.0);
}

/* Create a layer of @p ops over @p ninputs inputs of shapes @p ins (at most LH_MAX_INPUTS).
 * Returns the status of configure/setup; on success the harness is ready. */
static int lh_make_shapes(lh *h, const tl_layer_ops *ops, int ninputs, const tl_shape *ins,
                          const int *ia, int ni, const float *fa, int nf, size_t n, int training)
{
    memset(h, 0, sizeof *h);
    assert_true(ninputs >= 1 && ninputs <= LH_MAX_INPUTS);
    tl_layer *L = tl_layer_new(ops, "t", ninputs);
    assert_non_null(L);
    for (int k = 0; k < ninputs; k++) {
        L->input[k] = -1;
        L->in[k] = ins[k];
    }
    h->L = L;
    int rc = ops->configure(L, ia, ni, fa, nf);
    tl_rng_seed(&h->rng, 42);
    if (!rc)
        rc = ops->setup(L, &h->rng);
    if (rc)
        return rc;
    h->blas = tl_blas_create(1);
    assert_non_null(h->blas);
    h->n = n;
    h->training = training;
    uint64_t s = 12345;
    for (int k = 0; k < ninputs; k++) {
        h->in_len[k] = n * tl_shape_size(ins[k]);
        h->x[k] = lh_alloc(h->in_len[k]);
        /* distinct values (a shuffled grid) keep max-pool windows free of near ties */
        size_t len = h->in_len[k];
        for (size_t i = 0; i < len; i++)
            h->x[k][i] = -1.0f + 2.0f * (float)i / (float)len + 0.3f / (float)len;
        for (size_t i = len - 1; i > 0; i--) {
            size_t j = (size_t)((lh_rand(&s) + 1.0f) * 0.5f * (float)(i + 1));
            if (j > i)
                j = i;
            float t = h->x[k][i];
            h->x[k][i] = h->x[k][j];
            h->x[k][j] = t;
        }
    }
    h->out_len = n * tl_shape_size(L->out);
    h->out = lh_alloc(h->out_len);
    h->r = lh_alloc(h->out_len);
    for (size_t i = 0; i < h->out_len; i++)
        h->r[i] = lh_rand(&s);
    /* non-trivial parameters: perturb everything that is not a buffer a little */
    h->saved_len = ops->saved_floats ? ops->saved_floats(L, n, 1) : 0;
    h->scratch_len = ops->scratch_floats ? ops->scratch_floats(L, n) : 0;
    h->saved = lh_alloc(h->saved_len);
    h->scratch = lh_alloc(h->scratch_len);
    h->rng0 = h->rng;
    return TLEARN_OK;
}

/* lh_make_shapes with every input of shape @p in. */
static int lh_make(lh *h, const tl_layer_ops *ops, int ninputs, tl_shape in, const int *ia,
                   int ni, const float *fa, int nf, size_t n, int training)
{
    tl_shape ins[LH_MAX_INPUTS];
    for (int k = 0; k < ninputs && k < LH_MAX_INPUTS; k++)
        ins[k] = in;
    return lh_make_shapes(h, ops, ninputs, ins, ia, ni, fa, nf, n, training);
}

static void lh_free(lh *h)
{
    tl_layer *L = h->L;
    for (int i = 0; i < L->nparam; i++)
        tl_tensor_free(&L->param[i].t);
    if (L->ops->destroy_cfg)
        L->ops->destroy_cfg(L->cfg);
    else
        tl_free(L->cfg);
    tl_free(L);
    for (int k = 0; k < LH_MAX_INPUTS; k++)
        free(h->x[k]);
    free(h->out);
    free(h->r);
    free(h->saved);
    free(h->scratch);
    tl_blas_destroy(h->blas);
}

static tl_exec lh_exec(lh *h, int backward)
{
    tl_exec ex = {h->blas, &h->rng, h->training, backward, h->scratch, 0, 0, NULL, NULL};
    return ex;
}

/* Forward (same dropout mask every time) and the loss sum(out * r) in double. */
static double lh_loss(lh *h)
{
    h->rng = h->rng0;
    tl_exec ex = lh_exec(h, 1);
    const float *in[LH_MAX_INPUTS];
    for (int k = 0; k < LH_MAX_INPUTS; k++)
        in[k] = h->x[k];
    h->L->ops->forward(h->L, &ex, in, h->out, h->n, h->training ? h->saved : NULL);
    double l = 0.0;
    for (size_t i = 0; i < h->out_len; i++)
        l += (double)h->out[i] * h->r[i];
    return l;
}

/* Analytic gradients: forward then backward with dout = r. din/pgrad as the layer takes
 * them (entries may be NULL). */
static void lh_backward(lh *h, float *const *din, int accum, float *const *pgrad)
{
    lh_loss(h);
    tl_exec ex = lh_exec(h, 1);
    const float *in[LH_MAX_INPUTS];
    for (int k = 0; k < LH_MAX_INPUTS; k++)
        in[k] = h->x[k];
    h->L->ops->backward(h->L, &ex, in, h->out, h->r, din, accum, h->n,
                        h->training ? h->saved : NULL, pgrad);
}

/* Compare @p grad with central differences of the loss over the floats in @p v (at most
 * @p max_checks of them, spread evenly). Fails the test on the first mismatch. */
static void lh_check(lh *h, float *v, size_t len, const float *grad, float step, double atol,
                     double rtol, const char *what)
{
    size_t stride = len > 300 ? len / 300 : 1;
    for (size_t i = 0; i < len; i += stride) {
        float keep = v[i];
        v[i] = keep + step;
        double lp = lh_loss(h);
        v[i] = keep - step;
        double lm = lh_loss(h);
        v[i] = keep;
        double num = (lp - lm) / ((double)(keep + step) - (double)(keep - step));
        double err = fabs(num - (double)grad[i]);
        if (err > atol + rtol * fabs(num)) {
            print_error("%s[%zu]: analytic %.7g, numeric %.7g (err %.3g)\n", what, i,
                        (double)grad[i], num, err);
            fail();
        }
    }
}

/* The full check: input gradients for every input and gradients of every parameter that
 * is not a buffer, against finite differences. */
static void lh_gradcheck(lh *h, float step, double atol, double rtol)
{
    tl_layer *L = h->L;
    float *din[LH_MAX_INPUTS] = {NULL};
    float *pg[TL_MAX_PARAMS] = {NULL};
    for (int k = 0; k < L->ninputs; k++)
        din[k] = lh_alloc(h->in_len[k]);
    for (int p = 0; p < L->nparam; p++)
        pg[p] = lh_alloc(L->param[p].t.numel);
    lh_backward(h, din, 0, pg);
    for (int k = 0; k < L->ninputs; k++)
        {
        char what[16];
        snprintf(what, sizeof what, "dx%d", k);
        lh_check(h, h->x[k], h->in_len[k], din[k], step, atol, rtol, what);
    }
    for (int p = 0; p < L->nparam; p++)
        if (!L->param[p].is_buffer)
            lh_check(h, L->param[p].t.data, L->param[p].t.numel, pg[p], step, atol, rtol,
                     L->param[p].name);
    for (int k = 0; k < L->ninputs; k++)
        free(din[k]);
    for (int p = 0; p < L->nparam; p++)
        free(pg[p]);
}

#endif
