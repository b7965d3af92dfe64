/* Prototype heads, embeddings and similarity search (suite 'fewshot'). Expected values are
 * computed here in double from the definitions (mean of normalised features, cosine,
 * brute-force ranking), never read back from the code under test. */
#include "common.h"
#include "harness.h"

#include "model/model.h"

#define D 6

static int32_t argmax(const float *v, int n)
{
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

/* A model over vectors of D features; "fc" a fixed dense layer, when @p fc is set. */
static tlearn_model *vec_model(int fc)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, D, 1, 1));
    if (fc) {
        OK(tlearn_model_add_dense(m, "fc", D));
        OK(tlearn_model_add_activation(m, "relu", TLEARN_ACT_TANH, 0));
    }
    return m;
}

/* The mean of the normalised rows of f labelled c, in double (the definition). */
static void mean_normalised(const float *f, const int32_t *y, size_t n, int c, double *out,
                            double *count)
{
    memset(out, 0, sizeof(double) * D);
    *count = 0;
    for (size_t i = 0; i < n; i++) {
        if (y[i] != c)
            continue;
        double s = 0;
        for (int j = 0; j < D; j++)
            s += (double)f[i * D + j] * f[i * D + j];
        s = sqrt(s);
        for (int j = 0; j < D; j++)
            out[j] += f[i * D + j] / s;
        *count += 1;
    }
    for (int j = 0; j < D && *count > 0; j++)
        out[j] /= *count;
}

static void make_data(float *x, int32_t *y, size_t n, int classes, uint64_t seed)
{
    test_rng r = {seed};
    test_fill(&r, x, n * D, -1, 1);
    for (size_t i = 0; i < n; i++) {
        y[i] = (int32_t)(i % (size_t)classes);
        x[i * D + (size_t)y[i]] += 2.0f; /* classes separable along their own axis */
    }
}

/* Prototype c of head @p layer against the definition over the features of "relu". */
static void check_prototypes(tlearn_model *m, const char *layer, const float *feat,
                             const int32_t *y, size_t n, int classes)
{
    char name[64];
    float *p = malloc(sizeof(float) * classes * D), *cnt = malloc(sizeof(float) * classes);
    snprintf(name, sizeof name, "%s.prototypes", layer);
    OK(tlearn_model_get_tensor(m, name, p, (size_t)classes * D));
    snprintf(name, sizeof name, "%s.counts", layer);
    OK(tlearn_model_get_tensor(m, name, cnt, (size_t)classes));
    for (int c = 0; c < classes; c++) {
        double want[D], count;
        mean_normalised(feat, y, n, c, want, &count);
        assert_true(cnt[c] == (float)count);
        for (int j = 0; j < D; j++)
            if (!test_close(p[c * D + j], want[j], 1e-5, 1e-6))
                fail_msg("prototype %d[%d] = %g, expected %g", c, j, p[c * D + j], want[j]);
    }
    free(p);
    free(cnt);
}

/* Logits = t * cos(x, p_c), computed in double from the stored prototypes. */
static void check_logits(tlearn_model *m, const char *layer, const float *x, const float *feat,
                         size_t n, int classes, float t)
{
    char name[64];
    float *p = malloc(sizeof(float) * classes * D), *out = malloc(sizeof(float) * n * classes);
    snprintf(name, sizeof name, "%s.prototypes", layer);
    OK(tlearn_model_get_tensor(m, name, p, (size_t)classes * D));
    OK(tlearn_model_predict(m, x, n, out, n * classes));
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < classes; c++) {
            double dot = 0, nx = 0, np = 0;
            for (int j = 0; j < D; j++) {
                dot += (double)feat[i * D + j] * p[c * D + j];
                nx += (double)feat[i * D + j] * feat[i * D + j];
                np += (double)p[c * D + j] * p[c * D + j];
            }
            nx = fmax(sqrt(nx), 1e-12);
            np = fmax(sqrt(np), 1e-12);
            double want = t * dot / (nx * np);
            if (!test_close(out[i * classes + c], want, 1e-5, 1e-5))
                fail_msg("logit[%zu][%d] = %g, expected %g", i, c, out[i * classes + c], want);
        }
    free(p);
    free(out);
}

static void test_head_from_inputs_and_features(void **state)
{
    (void)state;
    enum { N = 40, C = 4 };
    float x[N * D], feat[N * D];
    int32_t y[N];
    make_data(x, y, N, C, 1);
    tlearn_model *m = vec_model(1);
    OK(tlearn_model_add_dense(m, "old_head", 3));
    OK(tlearn_model_features(m, "relu", x, N, feat, N * D));
    OK(tlearn_prototype_head(m, "relu", "proto", x, y, N, C, 10.0f, 0));
    int count, kind;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 3); /* old_head dropped */
    OK(tlearn_model_layer_kind(m, 2, &kind));
    assert_int_equal(kind, TLEARN_LAYER_PROTOTYPE);
    check_prototypes(m, "proto", feat, y, N, C);
    check_logits(m, "proto", x, feat, N, C, 10.0f);
    /* the same head from the cached features */
    tlearn_model *m2 = vec_model(1);
    float w[D * D], b[D];
    OK(tlearn_model_get_tensor(m, "fc.weight", w, D * D));
    OK(tlearn_model_get_tensor(m, "fc.bias", b, D));
    OK(tlearn_model_set_tensor(m2, "fc.weight", w, D * D));
    OK(tlearn_model_set_tensor(m2, "fc.bias", b, D));
    OK(tlearn_prototype_head(m2, "relu", "proto", feat, y, N, C, 10.0f, TLEARN_PROTO_FEATURES));
    check_prototypes(m2, "proto", feat, y, N, C);
    /* separable classes: every training example is classified right */
    float out[N * C];
    OK(tlearn_model_predict(m2, x, N, out, N * C));
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&m2);
    /* straight on the input, with an empty class (C + 1 classes, no example of the last) */
    m = vec_model(0);
    OK(tlearn_prototype_head(m, "", "proto", x, y, N, C + 1, 5.0f, 0));
    check_prototypes(m, "proto", x, y, N, C + 1);
    float o2[N * (C + 1)];
    OK(tlearn_model_predict(m, x, N, o2, N * (C + 1)));
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(argmax(o2 + i * (C + 1), C + 1), y[i]);
        assert_true(o2[i * (C + 1) + C] == 0.0f); /* an empty class scores 0 */
    }
    tlearn_model_destroy(&m);
}

static void test_incremental(void **state)
{
    (void)state;
    enum { N = 60, C = 3 };
    float x[N * D];
    int32_t y[N];
    make_data(x, y, N, C, 2);
    tlearn_model *a = vec_model(0), *b = vec_model(0);
    OK(tlearn_prototype_head(a, NULL, "p", x, y, N, C, 10.0f, 0));
    OK(tlearn_prototype_head(b, NULL, "p", x, y, 25, C, 10.0f, 0));
    /* an update touching only class 1 leaves the other rows bit for bit */
    float before[C * D], after[C * D], cb[C], ca[C];
    OK(tlearn_model_get_tensor(b, "p.prototypes", before, C * D));
    OK(tlearn_model_get_tensor(b, "p.counts", cb, C));
    float x1[D * 2];
    int32_t y1[2] = {1, 1};
    memcpy(x1, x + 25 * D, sizeof(float) * D); /* example 25 is class 1 */
    memcpy(x1 + D, x + 28 * D, sizeof(float) * D);
    OK(tlearn_prototype_update(b, "p", x1, y1, 2, 0));
    OK(tlearn_model_get_tensor(b, "p.prototypes", after, C * D));
    OK(tlearn_model_get_tensor(b, "p.counts", ca, C));
    for (int c = 0; c < C; c++)
        for (int j = 0; j < D; j++)
            if (c != 1)
                assert_true(before[c * D + j] == after[c * D + j]);
    assert_true(ca[0] == cb[0] && ca[2] == cb[2] && ca[1] == cb[1] + 2);
    /* then the rest (minus the two already used): equals building from everything */
    float xr[N * D];
    int32_t yr[N];
    size_t nr = 0;
    for (size_t i = 25; i < N; i++) {
        if (i == 25 || i == 28)
            continue;
        memcpy(xr + nr * D, x + i * D, sizeof(float) * D);
        yr[nr++] = y[i];
    }
    OK(tlearn_prototype_update(b, "p", xr, yr, nr, TLEARN_PROTO_FEATURES));
    check_prototypes(b, "p", x, y, N, C);
    float pa[C * D], pb[C * D];
    OK(tlearn_model_get_tensor(a, "p.prototypes", pa, C * D));
    OK(tlearn_model_get_tensor(b, "p.prototypes", pb, C * D));
    for (int i = 0; i < C * D; i++)
        assert_true(test_close(pa[i], pb[i], 1e-5, 1e-6));
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

static void test_add_remove_classes(void **state)
{
    (void)state;
    enum { N = 30, C = 3 };
    float x[N * D];
    int32_t y[N];
    make_data(x, y, N, C + 1, 3); /* labels 0..3; the head starts with 3 classes */
    float x3[N * D];
    int32_t y3[N], yk[N];
    size_t n3 = 0, nk = 0;
    float xk[N * D];
    for (size_t i = 0; i < N; i++) {
        if (y[i] == 3) {
            memcpy(x3 + n3 * D, x + i * D, sizeof(float) * D);
            y3[n3++] = 3;
        } else {
            memcpy(xk + nk * D, x + i * D, sizeof(float) * D);
            yk[nk++] = y[i];
        }
    }
    tlearn_model *m = vec_model(0);
    OK(tlearn_prototype_head(m, "", "p", xk, yk, nk, C, 10.0f, 0));
    float before[C * D];
    OK(tlearn_model_get_tensor(m, "p.prototypes", before, C * D));
    OK(tlearn_prototype_add_classes(m, "p", 1));
    int c, h, w;
    OK(tlearn_model_layer_shape(m, 0, &c, &h, &w));
    assert_int_equal(c, C + 1);
    OK(tlearn_prototype_update(m, "p", x3, y3, n3, 0));
    float all[(C + 1) * D];
    OK(tlearn_model_get_tensor(m, "p.prototypes", all, (C + 1) * D));
    assert_memory_equal(all, before, sizeof before); /* old classes untouched */
    check_prototypes(m, "p", x, y, N, C + 1);
    float out[N * (C + 1)];
    OK(tlearn_model_predict(m, x, N, out, N * (C + 1)));
    for (size_t i = 0; i < N; i++)
        assert_int_equal(argmax(out + i * (C + 1), C + 1), y[i]);
    /* remove class 1: classes 2, 3 move to 1, 2 with their prototypes unchanged */
    OK(tlearn_prototype_remove_class(m, "p", 1));
    float rem[C * D];
    OK(tlearn_model_get_tensor(m, "p.prototypes", rem, C * D));
    assert_memory_equal(rem, all, sizeof(float) * D);
    assert_memory_equal(rem + D, all + 2 * D, sizeof(float) * 2 * D);
    OK(tlearn_model_predict(m, x, N, out, N * C));
    for (size_t i = 0; i < N; i++)
        if (y[i] != 1)
            assert_int_equal(argmax(out + i * C, C), y[i] - (y[i] > 1));
    /* failures change nothing */
    assert_int_equal(tlearn_prototype_remove_class(m, "p", 3), TLEARN_EINVAL);
    assert_int_equal(tlearn_prototype_add_classes(m, "p", 0), TLEARN_EINVAL);
    OK(tlearn_prototype_remove_class(m, "p", 0));
    OK(tlearn_prototype_remove_class(m, "p", 0));
    assert_int_equal(tlearn_prototype_remove_class(m, "p", 0), TLEARN_ESHAPE);
    float last[D];
    OK(tlearn_model_get_tensor(m, "p.prototypes", last, D));
    assert_memory_equal(last, all + 3 * D, sizeof last);
    tlearn_model_destroy(&m);
}

static void test_to_dense(void **state)
{
    (void)state;
    enum { N = 30, C = 3 };
    float x[N * D], feat[N * D];
    int32_t y[N];
    make_data(x, y, N, C, 4);
    tlearn_model *m = vec_model(1);
    OK(tlearn_prototype_head(m, "relu", "head", x, y, N, C, 7.0f, 0));
    float po[N * C], p[C * D];
    OK(tlearn_model_predict(m, x, N, po, N * C));
    OK(tlearn_model_get_tensor(m, "head.prototypes", p, C * D));
    OK(tlearn_model_features(m, "relu", x, N, feat, N * D));
    OK(tlearn_prototype_to_dense(m, "head"));
    int kind;
    OK(tlearn_model_layer_kind(m, 2, &kind));
    assert_int_equal(kind, TLEARN_LAYER_DENSE);
    float wt[C * D], bias[C];
    OK(tlearn_model_get_tensor(m, "head.weight", wt, C * D));
    OK(tlearn_model_get_tensor(m, "head.bias", bias, C));
    for (int c = 0; c < C; c++) {
        double nrm = 0;
        for (int j = 0; j < D; j++)
            nrm += (double)p[c * D + j] * p[c * D + j];
        for (int j = 0; j < D; j++)
            assert_true(test_close(wt[c * D + j], 7.0 * p[c * D + j] / sqrt(nrm), 1e-6, 1e-7));
        assert_true(bias[c] == 0.0f);
    }
    /* logits are the prototype head's times |features|: same predictions */
    float dout[N * C];
    OK(tlearn_model_predict(m, x, N, dout, N * C));
    for (size_t i = 0; i < N; i++) {
        double nx = 0;
        for (int j = 0; j < D; j++)
            nx += (double)feat[i * D + j] * feat[i * D + j];
        for (int c = 0; c < C; c++)
            assert_true(test_close(dout[i * C + c], po[i * C + c] * sqrt(nx), 1e-5, 1e-5));
        assert_int_equal(argmax(dout + i * C, C), argmax(po + i * C, C));
    }
    /* not a prototype head any more */
    assert_int_equal(tlearn_prototype_to_dense(m, "head"), TLEARN_EINVAL);
    tlearn_model_destroy(&m);
}

static void test_checkpoint_and_training(void **state)
{
    (void)state;
    enum { N = 24, C = 3 };
    float x[N * D];
    int32_t y[N];
    make_data(x, y, N, C, 5);
    tlearn_model *m = vec_model(1);
    OK(tlearn_prototype_head(m, "relu", "p", x, y, N, C, 4.0f, TLEARN_PROTO_LEARN_TEMPERATURE));
    OK(tlearn_prototype_add_classes(m, "p", 2)); /* the class count changed after creation */
    const char *path = "fewshot-proto.tlm";
    for (int full = 0; full < 2; full++) {
        OK(tlearn_model_save(m, NULL, path, full ? TLEARN_SAVE_FULL : TLEARN_SAVE_INFERENCE));
        tlearn_model *l;
        OK(tlearn_model_load(&l, NULL, path));
        float a[N * (C + 2)], b[N * (C + 2)];
        OK(tlearn_model_predict(m, x, N, a, N * (C + 2)));
        OK(tlearn_model_predict(l, x, N, b, N * (C + 2)));
        assert_memory_equal(a, b, sizeof a);
        float ca[C + 2], cb[C + 2];
        OK(tlearn_model_get_tensor(m, "p.counts", ca, C + 2));
        OK(tlearn_model_get_tensor(l, "p.counts", cb, C + 2));
        assert_memory_equal(ca, cb, sizeof ca);
        /* the loaded head keeps updating like the original */
        OK(tlearn_prototype_update(l, "p", x, y, 3, 0));
        tlearn_model_destroy(&l);
    }
    remove(path);
    /* the learned temperature trains; prototypes (buffers) stay */
    size_t total, trainable;
    OK(tlearn_model_param_count(m, &total, &trainable));
    tlearn_freeze *f;
    OK(tlearn_freeze_create(&f));
    OK(tlearn_freeze_until(f, "relu"));
    OK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f);
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 0.1));
    float p0[(C + 2) * D], p1[(C + 2) * D], t0, t1;
    OK(tlearn_model_get_tensor(m, "p.prototypes", p0, (C + 2) * D));
    OK(tlearn_model_get_tensor(m, "p.temperature", &t0, 1));
    OK(tlearn_model_train_step(m, o, x, y, N, NULL));
    OK(tlearn_model_get_tensor(m, "p.prototypes", p1, (C + 2) * D));
    OK(tlearn_model_get_tensor(m, "p.temperature", &t1, 1));
    assert_memory_equal(p0, p1, sizeof p0);
    assert_true(t1 != t0);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
}

static void test_gradcheck(void **state)
{
    (void)state;
    static const tl_shape shapes[] = {{1, {{7, 1, 1, 1}}}, {3, {{2, 3, 2, 1}}}};
    for (int s = 0; s < 2; s++)
        for (int learn = 0; learn < 2; learn++) {
            lh h;
            int ia[2] = {4, learn};
            float fa[1] = {3.0f};
            int rc = s == 0 ? lh_make(&h, &tl_prototype_ops, 1, shapes[0], ia, 2, fa, 1, 5, 1)
                            : lh_make_shapes(&h, &tl_prototype_ops, 1, &shapes[s], ia, 2, fa, 1,
                                             5, 1);
            assert_int_equal(rc, TLEARN_OK);
            uint64_t r = 99;
            tl_tensor *p = &h.L->param[0].t;
            for (size_t i = 0; i < p->numel; i++)
                p->data[i] = lh_rand(&r);
            memset(p->data, 0, sizeof(float) * (size_t)p->dims[1]); /* an empty class too */
            lh_gradcheck(&h, 1e-3f, 2e-3, 2e-3);
            /* accum adds onto the input gradient */
            size_t len = h.in_len[0];
            float *d0 = lh_alloc(len), *d1 = lh_alloc(len);
            float *din0[1] = {d0}, *din1[1] = {d1};
            lh_backward(&h, din0, 0, NULL);
            for (size_t i = 0; i < len; i++)
                d1[i] = 1.0f;
            lh_backward(&h, din1, 1, NULL);
            for (size_t i = 0; i < len; i++)
                assert_true(test_close(d1[i], d0[i] + 1.0, 1e-6, 1e-6));
            free(d0);
            free(d1);
            lh_free(&h);
        }
}

static void test_bad_arguments(void **state)
{
    (void)state;
    enum { N = 8, C = 2 };
    float x[N * D];
    int32_t y[N];
    make_data(x, y, N, C, 6);
    tlearn_model *m = vec_model(1);
    assert_int_equal(tlearn_model_add_prototype(m, "p0", 0, 1.0f, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_prototype(m, "p0", 2, 0.0f, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_prototype(m, "p0", 2, 1.0f, 2), TLEARN_EINVAL);
    assert_int_equal(tlearn_prototype_head(m, "relu", "p", x, y, N, 1, 1.0f, 0),
                     TLEARN_EINVAL); /* label 1 out of range */
    assert_int_equal(tlearn_prototype_head(m, "nope", "p", x, y, N, C, 1.0f, 0),
                     TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_prototype_head(m, "relu", "fc", x, y, N, C, 1.0f, 0),
                     TLEARN_EINVAL); /* a kept layer's name */
    assert_int_equal(tlearn_prototype_head(m, "relu", "p", x, y, N, C, 1.0f, 8u), TLEARN_EINVAL);
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 2);
    assert_int_equal(tlearn_prototype_update(m, "fc", x, y, N, 0), TLEARN_EINVAL);
    /* a layer reading the head: its class count cannot change */
    OK(tlearn_prototype_head(m, "relu", "p", x, y, N, C, 1.0f, 0));
    OK(tlearn_model_add_activation(m, "after", TLEARN_ACT_TANH, 0));
    assert_int_equal(tlearn_prototype_add_classes(m, "p", 1), TLEARN_ESTATE);
    assert_int_equal(tlearn_prototype_remove_class(m, "p", 0), TLEARN_ESTATE);
    assert_int_equal(tlearn_prototype_to_dense(m, "p"), TLEARN_ESTATE);
    int32_t bad[N];
    memcpy(bad, y, sizeof bad);
    bad[3] = 5;
    float p0[C * D], p1[C * D];
    OK(tlearn_model_get_tensor(m, "p.prototypes", p0, C * D));
    assert_int_equal(tlearn_prototype_update(m, "p", x, bad, N, 0), TLEARN_EINVAL);
    OK(tlearn_model_get_tensor(m, "p.prototypes", p1, C * D));
    assert_memory_equal(p0, p1, sizeof p0);
    tlearn_model_destroy(&m);
}

/* ---- embeddings and similarity ---- */

static void test_embed(void **state)
{
    (void)state;
    enum { N = 10 };
    float x[N * D], f[N * D], e[N * D];
    int32_t y[N];
    make_data(x, y, N, 2, 7);
    tlearn_model *m = vec_model(1);
    OK(tlearn_model_features(m, "fc", x, N, f, N * D));
    OK(tlearn_model_embed(m, "fc", x, N, e, N * D));
    for (size_t i = 0; i < N; i++) {
        double s = 0;
        for (int j = 0; j < D; j++)
            s += (double)f[i * D + j] * f[i * D + j];
        for (int j = 0; j < D; j++)
            assert_true(test_close(e[i * D + j], f[i * D + j] / sqrt(s), 1e-6, 1e-7));
    }
    assert_int_equal(tlearn_model_embed(m, "fc", x, N, e, N * D - 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_embed(m, "zz", x, N, e, N * D), TLEARN_ENOTFOUND);
    tlearn_model_destroy(&m);
}

/* Brute force in double: the cosine of query q and key j. */
static double cos_d(const float *q, const float *k, int dim)
{
    double d = 0, a = 0, b = 0;
    for (int j = 0; j < dim; j++) {
        d += (double)q[j] * k[j];
        a += (double)q[j] * q[j];
        b += (double)k[j] * k[j];
    }
    return d / (fmax(sqrt(a), 1e-12) * fmax(sqrt(b), 1e-12));
}

static void test_similarity_brute_force(void **state)
{
    (void)state;
    /* more keys than one block (4096) and more queries than one (256) */
    const size_t nq = 300, nk = 5000;
    const int dim = 24, k = 7;
    float *q = malloc(sizeof(float) * nq * dim), *keys = malloc(sizeof(float) * nk * dim);
    float *sc = malloc(sizeof(float) * nq * k), *all = malloc(sizeof(float) * nq * nk);
    int32_t *idx = malloc(sizeof(int32_t) * nq * k);
    double *want = malloc(sizeof(double) * nk);
    test_rng r = {8};
    test_fill(&r, q, nq * dim, -1, 1);
    test_fill(&r, keys, nk * dim, -1, 1);
    memset(keys + 17 * dim, 0, sizeof(float) * dim); /* a zero key scores 0 */
    for (int threads = 1; threads <= 2; threads++) {
        OK(tlearn_similarity_topk(q, nq, keys, nk, dim, k, threads, idx, sc));
        OK(tlearn_similarity_scores(q, nq, keys, nk, dim, threads, all, nq * nk));
        for (size_t i = 0; i < nq; i++) {
            for (size_t j = 0; j < nk; j++) {
                want[j] = cos_d(q + i * dim, keys + j * dim, dim);
                assert_true(test_close(all[i * nk + j], want[j], 1e-5, 1e-6));
            }
            /* the k best by selection over the double scores */
            for (int t = 0; t < k; t++) {
                size_t best = 0;
                for (size_t j = 1; j < nk; j++)
                    if (want[j] > want[best])
                        best = j;
                if ((size_t)idx[i * k + t] != best &&
                    fabs(want[idx[i * k + t]] - want[best]) > 1e-6) /* near ties may swap */
                    fail_msg("query %zu rank %d: key %d, expected %zu", i, t, idx[i * k + t],
                             best);
                assert_true(test_close(sc[i * k + t], want[best], 1e-5, 1e-6));
                want[idx[i * k + t]] = -INFINITY;
                want[best] = -INFINITY;
            }
        }
    }
    /* exact ties: equal keys rank by index; k = nkeys sorts everything */
    float tq[2] = {1, 0}, tk[8] = {0, 1, 1, 0, 2, 0, -1, 0};
    int32_t ti[4];
    float ts[4];
    OK(tlearn_similarity_topk(tq, 1, tk, 4, 2, 4, 1, ti, ts));
    assert_int_equal(ti[0], 1);
    assert_int_equal(ti[1], 2);
    assert_int_equal(ti[2], 0);
    assert_int_equal(ti[3], 3);
    assert_true(ts[0] == 1.0f && ts[3] == -1.0f);
    assert_int_equal(tlearn_similarity_topk(tq, 1, tk, 4, 2, 5, 1, ti, ts), TLEARN_EINVAL);
    assert_int_equal(tlearn_similarity_topk(tq, 1, tk, 4, 2, 1, 0, ti, ts), TLEARN_EINVAL);
    tq[1] = NAN;
    assert_int_equal(tlearn_similarity_scores(tq, 1, tk, 4, 2, 1, ts, 4), TLEARN_EINVAL);
    free(q);
    free(keys);
    free(sc);
    free(all);
    free(idx);
    free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_from_inputs_and_features),
        cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_add_remove_classes),
        cmocka_unit_test(test_to_dense),
        cmocka_unit_test(test_checkpoint_and_training),
        cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_similarity_brute_force),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
