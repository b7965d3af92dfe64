/* Transformer layers: forward against values computed here in double, finite-difference
 * gradient checks through the ops tables (tests/vision/harness.h), masks, bad input refused
 * with nothing changed, the multi-input training calls and checkpoint round trips. */
#include <unistd.h>

#include "harness.h"
#include "common.h"
#include "model/model.h"

/* Write int32 token ids into the bytes of a harness input (int32 inputs travel through the
 * float pointers). */
static void put_ids(float *x, const int32_t *ids, size_t count)
{
    memcpy(x, ids, sizeof(int32_t) * count);
}

/* Gradient checks of inputs 0..nin-1 (the rest, masks or ids, are not differentiable) and
 * of every trained parameter. */
static void gradcheck_some(lh *h, int nin, float step, double atol, double rtol)
{
    tl_layer *L = h->L;
    float *din[LH_MAX_INPUTS] = {NULL}, *pg[TL_MAX_PARAMS] = {NULL};
    for (int k = 0; k < nin; k++)
        din[k] = lh_alloc(h->in_len[k]);
    for (int p = 0; p < L->nparam; p++)
        pg[p] = lh_alloc(L->param[p].t.numel);
    lh_backward(h, din, 0, pg);
    for (int k = 0; k < nin; k++)
        lh_check(h, h->x[k], h->in_len[k], din[k], step, atol, rtol, "dx");
    for (int p = 0; p < L->nparam; p++)
        if (!L->param[p].is_buffer)
            lh_check(h, L->param[p].t.data, L->param[p].t.numel, pg[p], step, atol, rtol,
                     L->param[p].name);
    for (int k = 0; k < nin; k++)
        free(din[k]);
    for (int p = 0; p < L->nparam; p++)
        free(pg[p]);
}

static void test_embedding(void **state)
{
    (void)state;
    lh h;
    tl_shape in = tl_shape1(4);
    int ia[3] = {5, 3, 2}; /* vocab 5, dim 3, padding_idx 2 */
    assert_int_equal(lh_make_shapes(&h, &tl_embedding_ops, 1, &in, ia, 3, NULL, 0, 2, 1), 0);
    float *w = h.L->param[0].t.data;
    for (int j = 0; j < 3; j++)
        assert_true(w[2 * 3 + j] == 0.0f); /* the padding row starts at zero */
    for (int i = 0; i < 15; i++)
        w[i] = (float)(i + 1) * 0.1f;
    const int32_t ids[8] = {0, 4, 2, 4, 1, 1, 3, 2};
    put_ids(h.x[0], ids, 8);
    lh_loss(&h);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 3; j++)
            assert_true(h.out[i * 3 + j] == w[ids[i] * 3 + j]);
    /* gradient: rows summed over their uses, none for the padding row */
    float *din[1] = {NULL}, g[15];
    float *pg[1] = {g};
    lh_backward(&h, din, 0, pg);
    for (int v = 0; v < 5; v++)
        for (int j = 0; j < 3; j++) {
            double want = 0.0;
            for (int i = 0; i < 8; i++)
                if (ids[i] == v && v != 2)
                    want += h.r[i * 3 + j];
            assert_true(fabs(g[v * 3 + j] - want) < 1e-6);
        }
    /* validate: ids out of range are named */
    int32_t bad[8] = {0, 1, 2, 3, 4, 5, 0, 0};
    assert_int_equal(tl_embedding_ops.validate(h.L, 0, bad, 2), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "token id 5"));
    bad[5] = -1;
    assert_int_equal(tl_embedding_ops.validate(h.L, 0, bad, 2), TLEARN_EINVAL);
    assert_int_equal(tl_embedding_ops.validate(h.L, 0, ids, 2), TLEARN_OK);
    lh_free(&h);
    /* finite differences (without a padding row, whose true derivative is not 0) */
    ia[2] = -1;
    (void)lh_make;
    assert_int_equal(lh_make_shapes(&h, &tl_embedding_ops, 1, &in, ia, 3, NULL, 0, 2, 1), 0);
    put_ids(h.x[0], ids, 8);
    gradcheck_some(&h, 0, 1e-2f, 1e-4, 1e-3);
    lh_free(&h);
}

static void test_position_embedding(void **state)
{
    (void)state;
    lh h;
    tl_shape in = tl_shape_of(2, (const int[]){3, 4});
    int ia[2] = {5, 0};
    assert_int_equal(lh_make_shapes(&h, &tl_position_embedding_ops, 1, &in, ia, 2, NULL, 0, 2,
                                    1), 0);
    lh_loss(&h);
    const float *w = h.L->param[0].t.data;
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < 12; i++)
            assert_true(h.out[e * 12 + i] == h.x[0][e * 12 + i] + w[i]);
    lh_gradcheck(&h, 1e-2f, 1e-4, 1e-3);
    lh_free(&h);
    /* sinusoidal: a buffer with Vaswani's values */
    ia[1] = 1;
    assert_int_equal(lh_make_shapes(&h, &tl_position_embedding_ops, 1, &in, ia, 2, NULL, 0, 1,
                                    1), 0);
    assert_true(h.L->param[0].is_buffer);
    w = h.L->param[0].t.data;
    for (int p = 0; p < 5; p++)
        for (int i = 0; i < 4; i++) {
            double a = p / pow(10000.0, (i / 2) * 2 / 4.0);
            double want = i % 2 ? cos(a) : sin(a);
            assert_true(fabs(w[p * 4 + i] - want) < 1e-6);
        }
    lh_gradcheck(&h, 1e-2f, 1e-4, 1e-3);
    lh_free(&h);
    /* a sequence longer than the table */
    ia[0] = 2;
    assert_int_equal(lh_make_shapes(&h, &tl_position_embedding_ops, 1, &in, ia, 2, NULL, 0, 1,
                                    1), TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "max_len 2"));
    lh_free(&h);
}

/* Attention computed here in double, straight from the definition. */
static void attention_ref(const tl_layer *L, const float *x, const float *mask, int causal,
                          int n, double *out)
{
    int t = L->in[0].d[0], d = L->in[0].d[1], heads = 0, ni, nf;
    int ia[TL_MAX_IARGS];
    float fa[TL_MAX_FARGS];
    L->ops->arguments(L, ia, &ni, fa, &nf);
    heads = ia[0];
    int hd = d / heads;
    const float *wi = L->param[0].t.data, *bi = L->param[1].t.data;
    const float *wo = L->param[2].t.data, *bo = L->param[3].t.data;
    double *qkv = calloc((size_t)t * 3 * d, sizeof(double));
    double *ctx = calloc((size_t)t * d, sizeof(double));
    double *s = calloc((size_t)t, sizeof(double));
    for (int e = 0; e < n; e++) {
        const float *xe = x + (size_t)e * t * d;
        for (int i = 0; i < t; i++)
            for (int o = 0; o < 3 * d; o++) {
                double a = bi[o];
                for (int k = 0; k < d; k++)
                    a += (double)xe[i * d + k] * wi[o * d + k];
                qkv[i * 3 * d + o] = a;
            }
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < t; i++) {
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < t; j++) {
                    int keep = (!causal || j <= i) && (!mask || mask[e * t + j] != 0.0f);
                    double a = 0.0;
                    for (int k = 0; k < hd; k++)
                        a += qkv[i * 3 * d + h * hd + k] * qkv[j * 3 * d + d + h * hd + k];
                    s[j] = keep ? a / sqrt((double)hd) : -INFINITY;
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j < t; j++) {
                    s[j] = mx == -INFINITY ? 0.0 : exp(s[j] - mx);
                    sum += s[j];
                }
                for (int k = 0; k < hd; k++) {
                    double a = 0.0;
                    for (int j = 0; j < t; j++)
                        a += (sum > 0 ? s[j] / sum : 0.0) * qkv[j * 3 * d + 2 * d + h * hd + k];
                    ctx[i * d + h * hd + k] = a;
                }
            }
        for (int i = 0; i < t; i++)
            for (int o = 0; o < d; o++) {
                double a = bo[o];
                for (int k = 0; k < d; k++)
                    a += ctx[i * d + k] * wo[o * d + k];
                out[((size_t)e * t + i) * d + o] = a;
            }
    }
    free(qkv);
    free(ctx);
    free(s);
}

/* pad_true: the layer reads the mask as torch's key_padding_mask (1 pad), given here as the
 * complement of the keep mask the reference reads. */
static void check_attention(int t, int d, int heads, int causal, int masked, int training,
                            int pad_true)
{
    lh h;
    tl_shape ins[2] = {tl_shape_of(2, (const int[]){t, d}), tl_shape1(t)};
    int ia[3] = {heads, causal, pad_true};
    size_t n = 3;
    assert_int_equal(lh_make_shapes(&h, &tl_attention_ops, 1 + masked, ins, ia, 2 + pad_true,
                                    NULL, 0, n, training), 0);
    int ra[TL_MAX_IARGS], rn, rf;
    float rfa[TL_MAX_FARGS];
    h.L->ops->arguments(h.L, ra, &rn, rfa, &rf); /* round 1.1's two without pad_true */
    assert_int_equal(rn, 2 + pad_true);
    assert_int_equal(ra[rn - 1], pad_true ? 1 : causal);
    /* non-zero biases, and masks: example 0 keeps all, 1 pads the last two, 2 keeps only
     * position 1 */
    uint64_t s = 7;
    for (int p = 0; p < 4; p++)
        for (size_t i = 0; i < h.L->param[p].t.numel; i++)
            h.L->param[p].t.data[i] = 0.6f * lh_rand(&s);
    if (masked) {
        for (int i = 0; i < t; i++) {
            h.x[1][i] = 1.0f;
            h.x[1][t + i] = i < t - 2 ? 1.0f : 0.0f;
            h.x[1][2 * t + i] = i == 1 ? 1.0f : 0.0f;
        }
        /* an int32 mask reads the same */
        int32_t one = 1;
        memcpy(&h.x[1][0], &one, 4);
        assert_int_equal(tl_attention_ops.validate(h.L, 1, h.x[1], n), TLEARN_OK);
    }
    lh_loss(&h);
    double *ref = calloc(h.out_len, sizeof(double));
    float fmask[64];
    for (int i = 0; masked && i < 3 * t; i++) {
        fmask[i] = tl_mask_keep(h.x[1], (size_t)i) ? 1.0f : 0.0f;
        if (pad_true)
            h.x[1][i] = 1.0f - fmask[i];
    }
    if (masked && pad_true)
        lh_loss(&h);
    attention_ref(h.L, h.x[0], masked ? fmask : NULL, causal, (int)n, ref);
    for (size_t i = 0; i < h.out_len; i++)
        if (fabs(h.out[i] - ref[i]) > 1e-5 + 1e-5 * fabs(ref[i]))
            fail_msg("attention out[%zu] = %g, reference %g", i, (double)h.out[i], ref[i]);
    free(ref);
    gradcheck_some(&h, 1, 1e-2f, 2e-4, 2e-3);
    lh_free(&h);
}

static void test_attention(void **state)
{
    (void)state;
    check_attention(3, 4, 2, 0, 0, 1, 0);
    check_attention(5, 6, 3, 1, 0, 1, 0);
    check_attention(4, 4, 1, 0, 1, 1, 0);
    check_attention(6, 8, 2, 1, 1, 1, 0);
    check_attention(4, 6, 2, 0, 1, 0, 0); /* evaluation-mode forward: backward recomputes */
    check_attention(6, 8, 2, 0, 1, 1, 1); /* torch's key_padding_mask (ONNX import) */
    check_attention(4, 6, 2, 1, 1, 0, 1);
}

static void test_attention_masks_and_memory(void **state)
{
    (void)state;
    lh h;
    int t = 4, d = 4;
    tl_shape ins[2] = {tl_shape_of(2, (const int[]){t, d}), tl_shape1(t)};
    int ia[2] = {2, 0};
    assert_int_equal(lh_make_shapes(&h, &tl_attention_ops, 2, ins, ia, 2, NULL, 0, 1, 1), 0);
    for (int i = 0; i < d; i++)
        h.L->param[3].t.data[i] = 0.25f * (float)(i + 1);
    memset(h.x[1], 0, sizeof(float) * (size_t)t); /* nothing to attend to */
    lh_loss(&h);
    for (int i = 0; i < t; i++)
        for (int j = 0; j < d; j++)
            assert_true(h.out[i * d + j] == 0.25f * (float)(j + 1)); /* ctx 0: the bias */
    /* a mask value that is neither 0 nor 1 */
    h.x[1][2] = 0.5f;
    assert_int_equal(tl_attention_ops.validate(h.L, 1, h.x[1], 1), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "position 2"));
    lh_free(&h);
    /* at most one head's T x T block at a time: saved + scratch stay below the scores of all
     * heads and examples */
    t = 64;
    d = 16;
    ins[0] = tl_shape_of(2, (const int[]){t, d});
    ia[0] = 4;
    assert_int_equal(lh_make_shapes(&h, &tl_attention_ops, 1, ins, ia, 2, NULL, 0, 2, 1), 0);
    size_t n = 8, all = n * 4 * (size_t)t * t;
    size_t used = tl_attention_ops.saved_floats(h.L, n, 1) + tl_attention_ops.scratch_floats(h.L, n);
    assert_true(used < all);
    /* saved: Q, K, V; scratch: their gradients, ctx and its gradient, one head's blocks */
    assert_int_equal(tl_attention_ops.saved_floats(h.L, n, 1), n * (size_t)t * 3 * d);
    assert_true(tl_attention_ops.scratch_floats(h.L, n) - n * (size_t)t * 5 * d <=
                2 * (size_t)t * t + 3 * (size_t)t * (d / 4));
    lh_free(&h);
    /* shapes refused */
    ia[0] = 3;
    assert_int_equal(lh_make_shapes(&h, &tl_attention_ops, 1, ins, ia, 2, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    ia[0] = 2;
    ins[1] = tl_shape1(t - 1);
    assert_int_equal(lh_make_shapes(&h, &tl_attention_ops, 2, ins, ia, 2, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
}

static void test_token_pool(void **state)
{
    (void)state;
    lh h;
    int t = 4, d = 3;
    tl_shape ins[2] = {tl_shape_of(2, (const int[]){t, d}), tl_shape1(t)};
    for (int mode = 0; mode < 2; mode++) {
        assert_int_equal(lh_make_shapes(&h, &tl_token_pool_ops, 1, ins, &mode, 1, NULL, 0, 2, 1),
                         0);
        lh_loss(&h);
        for (int e = 0; e < 2; e++)
            for (int j = 0; j < d; j++) {
                double want = 0.0;
                for (int i = 0; i < (mode ? t : 1); i++)
                    want += h.x[0][(e * t + i) * d + j];
                want /= mode ? t : 1;
                assert_true(fabs(h.out[e * d + j] - want) < 1e-6);
            }
        lh_gradcheck(&h, 1e-2f, 1e-4, 1e-3);
        lh_free(&h);
    }
    int mean = 1;
    assert_int_equal(lh_make_shapes(&h, &tl_token_pool_ops, 2, ins, &mean, 1, NULL, 0, 2, 1), 0);
    const int32_t keep[8] = {1, 0, 1, 1, 0, 0, 0, 0}; /* example 1 keeps nothing */
    put_ids(h.x[1], keep, 8);
    lh_loss(&h);
    for (int j = 0; j < d; j++) {
        double want = (h.x[0][0 * d + j] + h.x[0][2 * d + j] + h.x[0][3 * d + j]) / 3.0;
        assert_true(fabs(h.out[j] - want) < 1e-6);
        assert_true(h.out[d + j] == 0.0f);
    }
    gradcheck_some(&h, 1, 1e-2f, 1e-4, 1e-3);
    lh_free(&h);
}

static void test_patch_embed(void **state)
{
    (void)state;
    lh h;
    int c = 2, hh = 4, w = 6, p = 2, d = 3;
    tl_shape in = tl_shape3(c, hh, w);
    int ia[4] = {d, p, 1, 1};
    assert_int_equal(lh_make_shapes(&h, &tl_patch_embed_ops, 1, &in, ia, 4, NULL, 0, 2, 1), 0);
    assert_int_equal(h.L->out.d[0], 7);
    uint64_t s = 3;
    for (int q = 0; q < h.L->nparam; q++)
        for (size_t i = 0; i < h.L->param[q].t.numel; i++)
            h.L->param[q].t.data[i] = lh_rand(&s);
    lh_loss(&h);
    /* token 1 + py*3 + px is the convolution at (py, px), plus its position */
    const float *wt = h.L->param[0].t.data, *b = h.L->param[1].t.data;
    const float *cls = h.L->param[2].t.data, *pos = h.L->param[3].t.data;
    for (int e = 0; e < 2; e++)
        for (int tok = 0; tok < 7; tok++)
            for (int o = 0; o < d; o++) {
                double want = pos[tok * d + o];
                if (tok == 0) {
                    want += cls[o];
                } else {
                    int py = (tok - 1) / 3, px = (tok - 1) % 3;
                    want += b[o];
                    for (int cc = 0; cc < c; cc++)
                        for (int i = 0; i < p; i++)
                            for (int j = 0; j < p; j++)
                                want += (double)wt[((o * c + cc) * p + i) * p + j] *
                                        h.x[0][((e * c + cc) * hh + py * p + i) * w + px * p + j];
                }
                assert_true(fabs(h.out[(e * 7 + tok) * d + o] - want) < 1e-5);
            }
    lh_gradcheck(&h, 1e-2f, 1e-4, 1e-3);
    lh_free(&h);
    ia[2] = 0;
    ia[3] = 0;
    assert_int_equal(lh_make_shapes(&h, &tl_patch_embed_ops, 1, &in, ia, 4, NULL, 0, 2, 1), 0);
    assert_int_equal(h.L->out.d[0], 6);
    assert_int_equal(h.L->nparam, 2);
    lh_gradcheck(&h, 1e-2f, 1e-4, 1e-3);
    lh_free(&h);
    in = tl_shape3(c, 5, w); /* 5 rows do not cut into 2x2 patches */
    assert_int_equal(lh_make_shapes(&h, &tl_patch_embed_ops, 1, &in, ia, 4, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
}

/* A BERT-like toy: ids and mask -> embedding + positions -> attention(mask) -> mean over the
 * mask -> linear (classes). */
enum { T = 6, V = 11, D = 8, C = 3 };

static tlearn_model *toy(void)
{
    tlearn_model *m;
    OK(tlearn_model_create_input(&m, "ids", TLEARN_DTYPE_INT32, 1, (const int[]){T}));
    OK(tlearn_model_add_input(m, "mask", TLEARN_DTYPE_INT32, 1, (const int[]){T}));
    OK(tlearn_model_set_seed(m, 5));
    OK(tlearn_model_set_next_input(m, "ids"));
    OK(tlearn_model_add_embedding(m, "tok", V, D, 0));
    OK(tlearn_model_add_position_embedding(m, "pos", T, 0));
    OK(tlearn_model_add_attention(m, "attn", 2, 0, "mask"));
    OK(tlearn_model_add_token_pool(m, "pool", 1, "mask"));
    OK(tlearn_model_add_linear(m, "head", C, 1));
    return m;
}

static void toy_data(int32_t *ids, int32_t *mask, int32_t *labels, size_t n)
{
    for (size_t e = 0; e < n; e++) {
        int len = 2 + (int)(e % 5);
        for (int i = 0; i < T; i++) {
            ids[e * T + i] = i < len ? 1 + (int32_t)((e * 7 + (size_t)i * 3) % (V - 1)) : 0;
            mask[e * T + i] = i < len;
        }
        labels[e] = (int32_t)(e % C);
    }
}

static void test_model_calls(void **state)
{
    (void)state;
    tlearn_model *m = toy();
    int count;
    enum { N = 10 };
    int32_t ids[N * T], mask[N * T], labels[N];
    toy_data(ids, mask, labels, N);
    const void *inputs[2] = {ids, mask};
    float out[N * C], loss0, loss;
    float *outs[1] = {out};
    size_t lens[1] = {N * C};
    OK(tlearn_model_run(m, inputs, 2, N, outs, lens, 1));
    /* bad input is refused, naming the layer and the input, and changes nothing */
    float w0[V * D], w1[V * D];
    OK(tlearn_model_get_tensor(m, "tok.weight", w0, V * D));
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.01));
    ids[7] = V;
    assert_int_equal(tlearn_model_train_step_inputs(m, o, inputs, 2, labels, N, &loss),
                     TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "'tok'"));
    assert_non_null(strstr(tlearn_errmsg(), "'ids'"));
    assert_non_null(strstr(tlearn_errmsg(), "token id 11"));
    assert_int_equal(tlearn_model_run(m, inputs, 2, N, outs, lens, 1), TLEARN_EINVAL);
    ids[7] = 1;
    mask[3] = 2;
    assert_int_equal(tlearn_model_train_step_inputs(m, o, inputs, 2, labels, N, &loss),
                     TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "'mask'"));
    mask[3] = 1;
    assert_int_equal(tlearn_model_train_step_inputs(m, o, inputs, 1, labels, N, &loss),
                     TLEARN_EINVAL);
    float dx[N * T];
    assert_int_equal(tlearn_model_compute_gradients_inputs(m, inputs, 2, labels, N, &loss, dx,
                                                           N * T), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_train_step(m, o, (const float *)ids, labels, N, &loss),
                     TLEARN_ESTATE);
    OK(tlearn_model_get_tensor(m, "tok.weight", w1, V * D));
    assert_memory_equal(w0, w1, sizeof w0);
    /* training lowers the loss; the padding row never moves */
    OK(tlearn_model_compute_gradients_inputs(m, inputs, 2, labels, N, &loss0, NULL, 0));
    for (int s = 0; s < 60; s++)
        OK(tlearn_model_train_step_inputs(m, o, inputs, 2, labels, N, &loss));
    OK(tlearn_model_compute_gradients_inputs(m, inputs, 2, labels, N, &loss, NULL, 0));
    assert_true(loss < 0.5f * loss0);
    OK(tlearn_model_get_tensor(m, "tok.weight", w1, V * D));
    assert_memory_equal(w0, w1, sizeof(float) * D); /* row 0 */
    /* add calls refuse what does not fit, and nothing changes */
    OK(tlearn_model_layer_count(m, &count));
    OK(tlearn_model_set_next_input(m, "mask"));
    assert_int_equal(tlearn_model_add_embedding(m, "e2", V, D, -1), TLEARN_OK);
    assert_int_equal(tlearn_model_add_position_embedding(m, "p2", T - 1, 1), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_attention(m, "a2", 3, 0, NULL), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_attention(m, "a2", 2, 0, "nope"), TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_model_add_attention(m, "a2", 2, 0, "pool"), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_token_pool(m, "tp", 0, "mask"), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_embedding(m, "e3", V, D, -1), TLEARN_EINVAL); /* a layer */
    OK(tlearn_model_set_next_input(m, "e2"));
    assert_int_equal(tlearn_model_add_embedding(m, "e4", V, D, V), TLEARN_EINVAL);
    int after;
    OK(tlearn_model_layer_count(m, &after));
    assert_int_equal(after, count + 1);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    /* a float model input can not feed an embedding; an int32 one can not feed a linear */
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 1, (const int[]){T}));
    assert_int_equal(tlearn_model_add_embedding(m, "e", V, D, -1), TLEARN_EINVAL);
    tlearn_model_destroy(&m);
    OK(tlearn_model_create_input(&m, "ids", TLEARN_DTYPE_INT32, 2, (const int[]){T, D}));
    assert_int_equal(tlearn_model_add_attention(m, "a", 2, 0, NULL), TLEARN_EINVAL);
    tlearn_model_destroy(&m);
}

static void round_trip(tlearn_model *m, const void *const *inputs, int ninputs, size_t n,
                       size_t out_size)
{
    char path[] = "/tmp/tlearn-tfm-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    OK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_FULL));
    tlearn_model *l;
    OK(tlearn_model_load(&l, NULL, path));
    unlink(path);
    float *a = calloc(n * out_size, sizeof(float)), *b = calloc(n * out_size, sizeof(float));
    size_t len = n * out_size;
    OK(tlearn_model_run(m, inputs, ninputs, n, &a, &len, 1));
    OK(tlearn_model_run(l, inputs, ninputs, n, &b, &len, 1));
    assert_memory_equal(a, b, sizeof(float) * len);
    int kinds[2][16], c0, c1;
    OK(tlearn_model_layer_count(m, &c0));
    OK(tlearn_model_layer_count(l, &c1));
    assert_int_equal(c0, c1);
    for (int i = 0; i < c0 && i < 16; i++) {
        OK(tlearn_model_layer_kind(m, i, &kinds[0][i]));
        OK(tlearn_model_layer_kind(l, i, &kinds[1][i]));
        assert_int_equal(kinds[0][i], kinds[1][i]);
    }
    free(a);
    free(b);
    tlearn_model_destroy(&l);
}

static void test_checkpoints(void **state)
{
    (void)state;
    tlearn_model *m = toy();
    enum { N = 4 };
    int32_t ids[N * T], mask[N * T], labels[N];
    toy_data(ids, mask, labels, N);
    const void *inputs[2] = {ids, mask};
    round_trip(m, inputs, 2, N, C);
    tlearn_model_destroy(&m);
    /* sinusoidal positions, causal attention, first-token pooling */
    OK(tlearn_model_create_input(&m, "ids", TLEARN_DTYPE_INT32, 1, (const int[]){T}));
    OK(tlearn_model_add_embedding(m, "tok", V, D, -1));
    OK(tlearn_model_add_position_embedding(m, "pos", 2 * T, 1));
    OK(tlearn_model_add_attention(m, "attn", 4, 1, NULL));
    OK(tlearn_model_add_token_pool(m, "pool", 0, NULL));
    OK(tlearn_model_add_linear(m, "head", C, 1));
    const void *one[1] = {ids};
    round_trip(m, one, 1, N, C);
    tlearn_model_destroy(&m);
    /* a small ViT */
    OK(tlearn_model_create(&m, 3, 8, 8));
    OK(tlearn_model_add_patch_embed(m, "patch", D, 4, 1, 1));
    OK(tlearn_model_add_attention(m, "attn", 2, 0, NULL));
    OK(tlearn_model_add_token_pool(m, "pool", 0, NULL));
    OK(tlearn_model_add_linear(m, "head", C, 1));
    float img[N * 3 * 8 * 8];
    test_rng r = {9};
    test_fill(&r, img, N * 3 * 8 * 8, -1, 1);
    const void *im[1] = {img};
    round_trip(m, im, 1, N, C);
    tlearn_model_destroy(&m);
}

/* Per-position cross-entropy with an ignore index, computed here in double. */
static void test_token_loss(void **state)
{
    (void)state;
    enum { TT = 4, VV = 5, NN = 2 };
    tlearn_model *m;
    OK(tlearn_model_create_input(&m, "ids", TLEARN_DTYPE_INT32, 1, (const int[]){TT}));
    OK(tlearn_model_add_embedding(m, "logits", VV, VV, -1)); /* rows are logits */
    float w[VV * VV];
    for (int i = 0; i < VV * VV; i++)
        w[i] = 0.3f * (float)((i * 7) % 11) - 1.2f;
    OK(tlearn_model_set_tensor(m, "logits.weight", w, VV * VV));
    const int32_t ids[NN * TT] = {0, 1, 2, 3, 4, 4, 1, 0};
    int32_t labels[NN * TT] = {2, -100, 0, 4, -100, 1, -100, 3};
    const void *in[1] = {ids};
    double want = 0.0, grad[VV * VV] = {0};
    int counted = 0;
    for (int i = 0; i < NN * TT; i++)
        counted += labels[i] != -100;
    for (int i = 0; i < NN * TT; i++) {
        if (labels[i] == -100)
            continue;
        const float *z = w + ids[i] * VV;
        double sum = 0.0;
        for (int j = 0; j < VV; j++)
            sum += exp((double)z[j]);
        want += (log(sum) - z[labels[i]]) / counted;
        for (int j = 0; j < VV; j++)
            grad[ids[i] * VV + j] += (exp((double)z[j]) / sum - (j == labels[i])) / counted;
    }
    float loss, g[VV * VV];
    OK(tlearn_model_compute_gradients_tokens(m, in, 1, labels, -100, NN, &loss));
    assert_true(fabs(loss - want) < 1e-5);
    OK(tlearn_model_get_grad(m, "logits.weight", g, VV * VV));
    for (int i = 0; i < VV * VV; i++)
        assert_true(fabs(g[i] - grad[i]) < 1e-6);
    /* refused: a label out of range, every label ignored, an MSE model; nothing changes */
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    labels[3] = VV;
    assert_int_equal(tlearn_model_train_step_tokens(m, o, in, 1, labels, -100, NN, &loss),
                     TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "position 3"));
    int32_t none[NN * TT];
    for (int i = 0; i < NN * TT; i++)
        none[i] = -1;
    assert_int_equal(tlearn_model_train_step_tokens(m, o, in, 1, none, -1, NN, &loss),
                     TLEARN_EINVAL);
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_MSE));
    labels[3] = 4;
    assert_int_equal(tlearn_model_train_step_tokens(m, o, in, 1, labels, -100, NN, &loss),
                     TLEARN_ESTATE);
    float w2[VV * VV];
    OK(tlearn_model_get_tensor(m, "logits.weight", w2, VV * VV));
    assert_memory_equal(w, w2, sizeof w);
    /* an SGD step moves the weights by -lr * gradient */
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_SOFTMAX_CE));
    OK(tlearn_model_train_step_tokens(m, o, in, 1, labels, -100, NN, &loss));
    OK(tlearn_model_get_tensor(m, "logits.weight", w2, VV * VV));
    for (int i = 0; i < VV * VV; i++)
        assert_true(fabs(w2[i] - (w[i] - 0.01 * grad[i])) < 1e-6);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

/* The contrastive loss of 2P rows x (dim DD) through a linear layer W (EE x DD) + b, in
 * double and written here from its definition: cos(a_i, p_j) / tau, cross-entropy with
 * target i over rows (and, symmetric, over columns). */
enum { CP = 3, CD = 5, CE = 4 };
static double contrastive_ref(const float *w, const float *b, const double *x, double tau,
                              int symmetric)
{
    double z[2 * CP][CE], s[CP][CP];
    for (int r = 0; r < 2 * CP; r++)
        for (int e = 0; e < CE; e++) {
            z[r][e] = b[e];
            for (int k = 0; k < CD; k++)
                z[r][e] += (double)w[e * CD + k] * x[r * CD + k];
        }
    for (int i = 0; i < CP; i++)
        for (int j = 0; j < CP; j++) {
            double ab = 0, aa = 0, bb = 0;
            for (int e = 0; e < CE; e++) {
                ab += z[i][e] * z[CP + j][e];
                aa += z[i][e] * z[i][e];
                bb += z[CP + j][e] * z[CP + j][e];
            }
            s[i][j] = ab / sqrt(aa * bb) / tau;
        }
    double rows = 0, cols = 0;
    for (int i = 0; i < CP; i++) {
        double sr = 0, sc = 0;
        for (int j = 0; j < CP; j++) {
            sr += exp(s[i][j]);
            sc += exp(s[j][i]);
        }
        rows += (log(sr) - s[i][i]) / CP;
        cols += (log(sc) - s[i][i]) / CP;
    }
    return symmetric ? (rows + cols) / 2 : rows;
}

static void test_contrastive_loss(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 1, (const int[]){CD}));
    OK(tlearn_model_add_linear(m, "proj", CE, 1));
    float w[CE * CD], b[CE], x[2 * CP * CD];
    OK(tlearn_model_get_tensor(m, "proj.weight", w, CE * CD));
    OK(tlearn_model_get_tensor(m, "proj.bias", b, CE));
    uint64_t seed = 7;
    for (int i = 0; i < 2 * CP * CD; i++)
        x[i] = lh_rand(&seed);
    const void *in[1] = {x};
    float loss, dx[2 * CP * CD];
    /* refused before the loss is chosen; bad temperatures */
    assert_int_equal(tlearn_model_compute_gradients_pairs(m, in, 1, 2 * CP, &loss, NULL, 0),
                     TLEARN_ESTATE);
    assert_non_null(strstr(tlearn_errmsg(), "TLEARN_LOSS_CONTRASTIVE"));
    assert_int_equal(tlearn_model_set_loss(m, 5), TLEARN_EINVAL);
    for (int i = 0; i < 4; i++) {
        const float bad[4] = {0.0f, -0.1f, NAN, INFINITY};
        assert_int_equal(tlearn_model_set_contrastive_temperature(m, bad[i]), TLEARN_EINVAL);
        assert_non_null(strstr(tlearn_errmsg(), "temperature"));
    }
    for (int symmetric = 0; symmetric <= 1; symmetric++) {
        double tau = symmetric ? 0.2 : 0.05;
        OK(tlearn_model_set_loss(m, symmetric ? TLEARN_LOSS_CONTRASTIVE_SYMMETRIC
                                              : TLEARN_LOSS_CONTRASTIVE));
        OK(tlearn_model_set_contrastive_temperature(m, (float)tau));
        OK(tlearn_model_compute_gradients_pairs(m, in, 1, 2 * CP, &loss, dx, 2 * CP * CD));
        double xd[2 * CP * CD];
        for (int i = 0; i < 2 * CP * CD; i++)
            xd[i] = x[i];
        double want = contrastive_ref(w, b, xd, tau, symmetric);
        assert_true(fabs(loss - want) < 1e-5 * (1 + fabs(want)));
        /* dx against central differences of the reference */
        for (int i = 0; i < 2 * CP * CD; i++) {
            double h = 1e-5, keep = xd[i];
            xd[i] = keep + h;
            double up = contrastive_ref(w, b, xd, tau, symmetric);
            xd[i] = keep - h;
            double down = contrastive_ref(w, b, xd, tau, symmetric);
            xd[i] = keep;
            double fd = (up - down) / (2 * h);
            if (fabs(dx[i] - fd) > 1e-4 + 1e-3 * fabs(fd))
                fail_msg("symmetric=%d dx[%d] = %g, finite differences %g", symmetric, i,
                         (double)dx[i], fd);
        }
    }
    /* bad batches and arguments: refused, nothing changes */
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.5));
    assert_int_equal(tlearn_model_train_step_pairs(m, o, in, 1, 2 * CP - 1, &loss), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "even"));
    assert_int_equal(tlearn_model_train_step_pairs(m, o, in, 1, 2, &loss), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_train_step_pairs(m, NULL, in, 1, 2 * CP, &loss), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_train_step_pairs(m, o, NULL, 1, 2 * CP, &loss), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_compute_gradients_pairs(m, in, 1, 2 * CP, &loss, dx, 3),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_train_step_inputs(m, o, in, 1, (const int32_t[2 * CP]){0},
                                                    2 * CP, &loss), TLEARN_ESTATE);
    assert_non_null(strstr(tlearn_errmsg(), "contrastive"));
    float xbad[2 * CP * CD];
    memcpy(xbad, x, sizeof x);
    xbad[7] = NAN;
    const void *inbad[1] = {xbad};
    assert_int_equal(tlearn_model_train_step_pairs(m, o, inbad, 1, 2 * CP, &loss),
                     TLEARN_ENONFINITE);
    float w2[CE * CD];
    OK(tlearn_model_get_tensor(m, "proj.weight", w2, CE * CD));
    assert_memory_equal(w, w2, sizeof w);
    /* an SGD step moves the weights by -lr * the gradient compute_gradients gave */
    float g[CE * CD];
    OK(tlearn_model_compute_gradients_pairs(m, in, 1, 2 * CP, &loss, NULL, 0));
    OK(tlearn_model_get_grad(m, "proj.weight", g, CE * CD));
    float before = loss;
    OK(tlearn_model_train_step_pairs(m, o, in, 1, 2 * CP, &loss));
    assert_true(loss == before);
    OK(tlearn_model_get_tensor(m, "proj.weight", w2, CE * CD));
    for (int i = 0; i < CE * CD; i++)
        assert_true(fabs(w2[i] - (w[i] - 0.5f * g[i])) < 1e-6);
    /* and training lowers the loss: the pairs become each other's nearest */
    for (int s = 0; s < 50; s++)
        OK(tlearn_model_train_step_pairs(m, o, in, 1, 2 * CP, &loss));
    assert_true(loss < 0.5f * before);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

static void expect_layers(tlearn_model *m, int from, const char *const *names, const int *kinds,
                          int count)
{
    int total;
    OK(tlearn_model_layer_count(m, &total));
    assert_int_equal(total, from + count);
    for (int i = 0; i < count; i++) {
        const char *name;
        int kind;
        OK(tlearn_model_layer_name(m, from + i, &name));
        OK(tlearn_model_layer_kind(m, from + i, &kind));
        if (strcmp(name, names[i]) || kind != kinds[i])
            fail_msg("layer %d is '%s' (kind %d), expected '%s' (kind %d)", from + i, name, kind,
                     names[i], kinds[i]);
    }
}

static void test_transformer_block(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 2, (const int[]){T, D}));
    OK(tlearn_model_add_input(m, "mask", TLEARN_DTYPE_INT32, 1, (const int[]){T}));
    OK(tlearn_model_set_next_input(m, "x"));
    OK(tlearn_model_add_transformer_block(m, "enc", 2, 16, TLEARN_ACT_RELU, 0, 0.0f, "mask"));
    static const char *const post[] = {"enc.self_attn", "enc.add1", "enc.norm1", "enc.linear1",
                                       "enc.activation", "enc.linear2", "enc.add2", "enc.norm2"};
    static const int post_k[] = {TLEARN_LAYER_ATTENTION, TLEARN_LAYER_ADD,
                                 TLEARN_LAYER_LAYERNORM, TLEARN_LAYER_DENSE,
                                 TLEARN_LAYER_ACTIVATION, TLEARN_LAYER_DENSE, TLEARN_LAYER_ADD,
                                 TLEARN_LAYER_LAYERNORM};
    expect_layers(m, 0, post, post_k, 8);
    /* the residuals read what TransformerEncoderLayer adds back */
    assert_int_equal(m->layers[1]->input[1], -1);                   /* x */
    assert_int_equal(m->layers[6]->input[1], 2);                    /* norm1 */
    assert_int_equal(m->layers[0]->input[1], -2);                   /* the mask */
    OK(tlearn_model_add_transformer_block(m, "pre", 4, 8, TLEARN_ACT_GELU, 1, 0.1f, NULL));
    static const char *const pre[] = {"pre.norm1", "pre.self_attn", "pre.dropout1", "pre.add1",
                                      "pre.norm2", "pre.linear1", "pre.activation",
                                      "pre.dropout", "pre.linear2", "pre.dropout2", "pre.add2"};
    static const int pre_k[] = {TLEARN_LAYER_LAYERNORM, TLEARN_LAYER_ATTENTION,
                                TLEARN_LAYER_DROPOUT, TLEARN_LAYER_ADD, TLEARN_LAYER_LAYERNORM,
                                TLEARN_LAYER_DENSE, TLEARN_LAYER_ACTIVATION,
                                TLEARN_LAYER_DROPOUT, TLEARN_LAYER_DENSE, TLEARN_LAYER_DROPOUT,
                                TLEARN_LAYER_ADD};
    expect_layers(m, 8, pre, pre_k, 11);
    assert_int_equal(m->layers[8 + 3]->input[1], 7);      /* the block's input, enc.norm2 */
    assert_int_equal(m->layers[8 + 10]->input[1], 8 + 3); /* pre.add1 */
    float w[16 * D];
    OK(tlearn_model_get_tensor(m, "enc.linear1.weight", w, 16 * D));
    OK(tlearn_model_get_tensor(m, "pre.norm2.bias", w, D));
    /* refused, and nothing changes: names taken, bad numbers, shapes, a missing mask */
    int before;
    OK(tlearn_model_layer_count(m, &before));
    assert_int_equal(tlearn_model_add_transformer_block(m, "enc", 2, 16, 1, 0, 0.0f, NULL),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transformer_block(m, "b", 3, 16, 1, 0, 0.0f, NULL),
                     TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_transformer_block(m, "b", 2, 0, 1, 0, 0.0f, NULL),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transformer_block(m, "b", 2, 16, 1, 2, 0.0f, NULL),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transformer_block(m, "b", 2, 16, 1, 0, 1.0f, NULL),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transformer_block(m, "b", 2, 16, 1, 0, 0.0f, "nope"),
                     TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_model_add_transformer_block(m, "b", 2, 16, 99, 0, 0.0f, NULL),
                     TLEARN_EINVAL); /* a bad activation fails half-way: removed again */
    char longname[TL_NAME_MAX];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    longname[TL_NAME_MAX - 8] = '\0';
    assert_int_equal(tlearn_model_add_transformer_block(m, longname, 2, 16, 1, 0, 0.0f, NULL),
                     TLEARN_EINVAL);
    /* out of memory at every allocation of the call: the model stays as it was */
    for (uint64_t k = 1; k < 400; k++) {
        tl_alloc_fail_nth(k);
        int rc = tlearn_model_add_transformer_block(m, "oom", 2, 16, 1, 1, 0.0f, "mask");
        tl_alloc_fail_nth(0);
        int after;
        OK(tlearn_model_layer_count(m, &after));
        if (rc == TLEARN_OK) {
            assert_int_equal(after, before + 8);
            break;
        }
        assert_int_equal(rc, TLEARN_ENOMEM);
        assert_int_equal(after, before);
        assert_int_equal(m->next_input, TL_NEXT_DEFAULT);
    }
    OK(tlearn_model_layer_count(m, &before));
    OK(tlearn_model_truncate(m, "pre.add2"));
    /* a checkpoint round trip with the mask and dropout layers */
    enum { N = 3 };
    float x[N * T * D];
    int32_t mask[N * T];
    test_rng r = {5};
    test_fill(&r, x, N * T * D, -1, 1);
    for (int i = 0; i < N * T; i++)
        mask[i] = i % T < 4 + i / T % 3;
    const void *in[2] = {x, mask};
    round_trip(m, in, 2, N, T * D);
    tlearn_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_position_embedding),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_masks_and_memory),
        cmocka_unit_test(test_token_pool),
        cmocka_unit_test(test_patch_embed),
        cmocka_unit_test(test_model_calls),
        cmocka_unit_test(test_checkpoints),
        cmocka_unit_test(test_token_loss),
        cmocka_unit_test(test_contrastive_loss),
        cmocka_unit_test(test_transformer_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
