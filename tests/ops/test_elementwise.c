/* Elementwise ops of the general graph: binary add/sub/mul/div with NumPy broadcasting, the
 * learned scale, the 1.1 activations and softmax on any axis. Forward and backward against
 * references computed here in double (broadcast by explicit index arithmetic), gradients
 * against central differences (tests/vision/harness.h), the threaded paths against the
 * one-thread ones, checkpoint round trips and refused arguments through the public API. */
#include <unistd.h>

#include "common.h"
#include "harness.h"
#include "layers/broadcast.h"
#include "model/model.h"

/* ---- references ---- */

/* Element of an operand of example shape @p s (right-aligned against @p out) that output
 * element @p o of one example reads: NumPy's rule, by multi-index. */
static size_t ref_index(tl_shape s, tl_shape out, size_t o)
{
    size_t idx[TL_MAX_RANK];
    for (int j = out.rank - 1; j >= 0; j--) {
        idx[j] = o % (size_t)out.d[j];
        o /= (size_t)out.d[j];
    }
    size_t k = 0;
    for (int j = 0; j < s.rank; j++) {
        size_t i = s.d[j] == 1 ? 0 : idx[j + out.rank - s.rank];
        k = k * (size_t)s.d[j] + i;
    }
    return k;
}

static double ref_op(int op, double a, double b)
{
    switch (op) {
    case TLEARN_BINARY_ADD: return a + b;
    case TLEARN_BINARY_SUB: return a - b;
    case TLEARN_BINARY_MUL: return a * b;
    default: return a / b;
    }
}

/* d(a op b)/da and d(a op b)/db */
static double ref_dop(int op, int k, double a, double b)
{
    switch (op) {
    case TLEARN_BINARY_ADD: return 1.0;
    case TLEARN_BINARY_SUB: return k ? -1.0 : 1.0;
    case TLEARN_BINARY_MUL: return k ? a : b;
    default: return k ? -a / (b * b) : 1.0 / b;
    }
}

static void expect_close(const float *got, const double *want, size_t len, double rtol,
                         double atol, const char *what)
{
    for (size_t i = 0; i < len; i++)
        if (!test_close(got[i], want[i], rtol, atol))
            fail_msg("%s[%zu]: got %.9g, want %.9g", what, i, (double)got[i], want[i]);
}

static double *dalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    assert_non_null(p);
    return p;
}

/* ---- binary ---- */

/* a op b over n examples: output shape, forward and both input gradients against the
 * references, then central differences. Divisors are kept away from 0. */
static void binary_case(int op, tl_shape sa, tl_shape sb, tl_shape want, size_t n)
{
    lh h;
    tl_shape ins[2] = {sa, sb};
    int ia[1] = {op};
    assert_int_equal(lh_make_shapes(&h, &tl_binary_ops, 2, ins, ia, 1, NULL, 0, n, 1),
                     TLEARN_OK);
    assert_true(tl_shape_equal(h.L->out, want));
    if (op == TLEARN_BINARY_DIV)
        for (size_t i = 0; i < h.in_len[1]; i++)
            h.x[1][i] += h.x[1][i] < 0 ? -0.5f : 0.5f;
    size_t so = tl_shape_size(want), s0 = tl_shape_size(sa), s1 = tl_shape_size(sb);
    double *y = dalloc(h.out_len), *g0 = dalloc(h.in_len[0]), *g1 = dalloc(h.in_len[1]);
    for (size_t e = 0; e < n; e++)
        for (size_t o = 0; o < so; o++) {
            double a = h.x[0][e * s0 + ref_index(sa, want, o)];
            double b = h.x[1][e * s1 + ref_index(sb, want, o)];
            double r = h.r[e * so + o];
            y[e * so + o] = ref_op(op, a, b);
            g0[e * s0 + ref_index(sa, want, o)] += r * ref_dop(op, 0, a, b);
            g1[e * s1 + ref_index(sb, want, o)] += r * ref_dop(op, 1, a, b);
        }
    float *din[2] = {lh_alloc(h.in_len[0]), lh_alloc(h.in_len[1])};
    lh_backward(&h, din, 0, NULL);
    expect_close(h.out, y, h.out_len, 1e-6, 1e-7, "binary out");
    expect_close(din[0], g0, h.in_len[0], 1e-5, 1e-6, "binary da");
    expect_close(din[1], g1, h.in_len[1], 1e-5, 1e-6, "binary db");
    /* accum adds to what the gradients held */
    float *keep[2] = {lh_alloc(h.in_len[0]), lh_alloc(h.in_len[1])};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < h.in_len[k]; i++)
            din[k][i] = keep[k][i] = (float)i * 0.25f - 1.0f;
    }
    lh_backward(&h, din, 1, NULL);
    for (size_t i = 0; i < h.in_len[0]; i++)
        assert_true(test_close(din[0][i], keep[0][i] + g0[i], 1e-5, 1e-5));
    for (size_t i = 0; i < h.in_len[1]; i++)
        assert_true(test_close(din[1][i], keep[1][i] + g1[i], 1e-5, 1e-5));
    /* only one gradient wanted: the other pointer is NULL */
    float *one[2] = {NULL, din[1]};
    lh_backward(&h, one, 0, NULL);
    expect_close(din[1], g1, h.in_len[1], 1e-5, 1e-6, "binary db alone");
    lh_gradcheck(&h, 1e-3f, 1e-3, 1e-3);
    for (int k = 0; k < 2; k++) {
        free(din[k]);
        free(keep[k]);
    }
    free(y);
    free(g0);
    free(g1);
    lh_free(&h);
}

static tl_shape shape2(int a, int b)
{
    return tl_shape_of(2, (const int[]){a, b});
}

static tl_shape shape4(int a, int b, int c, int d)
{
    return tl_shape_of(4, (const int[]){a, b, c, d});
}

static void test_binary_broadcast(void **state)
{
    (void)state;
    for (int op = TLEARN_BINARY_ADD; op <= TLEARN_BINARY_DIV; op++) {
        /* equal shapes */
        binary_case(op, tl_shape3(3, 4, 5), tl_shape3(3, 4, 5), tl_shape3(3, 4, 5), 3);
        binary_case(op, tl_shape1(6), tl_shape1(6), tl_shape1(6), 2);
        /* squeeze-excitation: a per-channel gate on either side */
        binary_case(op, tl_shape3(4, 1, 1), tl_shape3(4, 3, 5), tl_shape3(4, 3, 5), 3);
        binary_case(op, tl_shape3(4, 3, 5), tl_shape3(4, 1, 1), tl_shape3(4, 3, 5), 2);
        /* both stretched: (C, H, 1) against (1, H, W) */
        binary_case(op, tl_shape3(3, 4, 1), tl_shape3(1, 4, 5), tl_shape3(3, 4, 5), 2);
        /* lower ranks align on the right: (W) along the last axis, (H, 1) vs (C, 1, W) */
        binary_case(op, tl_shape1(5), tl_shape3(3, 4, 5), tl_shape3(3, 4, 5), 2);
        binary_case(op, shape2(4, 1), tl_shape3(3, 1, 5), tl_shape3(3, 4, 5), 2);
        /* one value per example, and one value in all (n = 1: every extent is 1) */
        binary_case(op, tl_shape1(1), shape2(2, 3), shape2(2, 3), 3);
        binary_case(op, tl_shape3(1, 1, 1), tl_shape1(1), tl_shape3(1, 1, 1), 1);
        /* rank 4, stretched along alternate axes */
        binary_case(op, shape4(2, 1, 3, 1), shape4(1, 4, 1, 5), shape4(2, 4, 3, 5), 2);
    }
}

/* Shapes that do not broadcast are refused by setup with ESHAPE. */
static void test_binary_refused(void **state)
{
    (void)state;
    lh h;
    tl_shape bad[][2] = {{tl_shape3(3, 4, 5), tl_shape3(2, 4, 5)},
                         {tl_shape1(4), tl_shape3(3, 4, 5)}, /* (C) is not per channel */
                         {shape2(3, 2), tl_shape3(3, 4, 1)}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int op = TLEARN_BINARY_MUL;
        assert_int_equal(lh_make_shapes(&h, &tl_binary_ops, 2, bad[i], &op, 1, NULL, 0, 1, 1),
                         TLEARN_ESHAPE);
        assert_non_null(strstr(tlearn_errmsg(), "do not broadcast"));
        lh_free(&h);
    }
    int op = 5;
    assert_int_equal(lh_make_shapes(&h, &tl_binary_ops, 2, bad[0], &op, 1, NULL, 0, 1, 1),
                     TLEARN_EINVAL);
    lh_free(&h);
    op = TLEARN_BINARY_ADD;
    assert_int_equal(lh_make(&h, &tl_binary_ops, 1, tl_shape1(3), &op, 1, NULL, 0, 1, 1),
                     TLEARN_EINVAL); /* one input */
    lh_free(&h);
}

/* x op x: both gradients land in one buffer; the layer adds the second even when the
 * caller did not ask to accumulate. */
static void test_binary_same_input(void **state)
{
    (void)state;
    lh h;
    int op = TLEARN_BINARY_MUL;
    assert_int_equal(lh_make(&h, &tl_binary_ops, 2, tl_shape1(9), &op, 1, NULL, 0, 2, 1),
                     TLEARN_OK);
    memcpy(h.x[1], h.x[0], sizeof(float) * h.in_len[0]);
    float *g = lh_alloc(h.in_len[0]);
    float *din[2] = {g, g};
    lh_backward(&h, din, 0, NULL);
    for (size_t i = 0; i < h.in_len[0]; i++)
        assert_true(test_close(g[i], 2.0 * h.x[0][i] * h.r[i], 1e-6, 1e-7));
    free(g);
    lh_free(&h);
}

/* Above 32K floats forward and backward split across threads (positions, or whole rows of
 * a per-channel gate); the results must equal the one-thread ones bit for bit and the
 * reference. */
static void threads_case(int op, tl_shape sa, tl_shape sb, size_t n)
{
    lh h;
    tl_shape ins[2] = {sa, sb};
    assert_int_equal(lh_make_shapes(&h, &tl_binary_ops, 2, ins, &op, 1, NULL, 0, n, 1),
                     TLEARN_OK);
    assert_true(h.out_len >= TL_PAR_MIN_FLOATS);
    if (op == TLEARN_BINARY_DIV)
        for (size_t i = 0; i < h.in_len[1]; i++)
            h.x[1][i] += h.x[1][i] < 0 ? -0.5f : 0.5f;
    float *d1[2] = {lh_alloc(h.in_len[0]), lh_alloc(h.in_len[1])};
    float *d2[2] = {lh_alloc(h.in_len[0]), lh_alloc(h.in_len[1])};
    float *y1 = lh_alloc(h.out_len);
    lh_backward(&h, d1, 0, NULL);
    memcpy(y1, h.out, sizeof(float) * h.out_len);
    tl_blas_destroy(h.blas);
    h.blas = tl_blas_create(2);
    assert_non_null(h.blas);
    lh_backward(&h, d2, 0, NULL);
    assert_memory_equal(y1, h.out, sizeof(float) * h.out_len);
    assert_memory_equal(d1[0], d2[0], sizeof(float) * h.in_len[0]);
    assert_memory_equal(d1[1], d2[1], sizeof(float) * h.in_len[1]);
    tl_shape out = h.L->out;
    size_t so = tl_shape_size(out), s0 = tl_shape_size(sa), s1 = tl_shape_size(sb);
    double *g1 = dalloc(h.in_len[1]);
    for (size_t e = 0; e < n; e++)
        for (size_t o = 0; o < so; o++) {
            double a = h.x[0][e * s0 + ref_index(sa, out, o)];
            double b = h.x[1][e * s1 + ref_index(sb, out, o)];
            if (!test_close(h.out[e * so + o], ref_op(op, a, b), 1e-6, 1e-7))
                fail_msg("out[%zu]: %g vs %g", e * so + o, (double)h.out[e * so + o],
                         ref_op(op, a, b));
            g1[e * s1 + ref_index(sb, out, o)] += h.r[e * so + o] * ref_dop(op, 1, a, b);
        }
    expect_close(d2[1], g1, h.in_len[1], 1e-5, 1e-5, "threaded db");
    for (int k = 0; k < 2; k++) {
        free(d1[k]);
        free(d2[k]);
    }
    free(y1);
    free(g1);
    lh_free(&h);
}

static void test_binary_threads(void **state)
{
    (void)state;
    /* 289 floats per row: thread ranges start inside rows */
    threads_case(TLEARN_BINARY_MUL, tl_shape3(32, 17, 17), tl_shape3(32, 1, 1), 4);
    threads_case(TLEARN_BINARY_DIV, tl_shape3(32, 17, 17), tl_shape3(32, 1, 1), 4);
    threads_case(TLEARN_BINARY_SUB, tl_shape3(8, 64, 65), tl_shape3(8, 64, 65), 1);
    /* a map shared by the channels: its gradient sums over rows that threads would split
     * (one example), so it runs on one thread */
    threads_case(TLEARN_BINARY_MUL, tl_shape3(1, 33, 32), tl_shape3(32, 33, 32), 1);
}

/* The loop plan: equal shapes are one flat loop, a per-channel gate is rows of a scalar
 * against contiguous floats. */
static void test_broadcast_plan(void **state)
{
    (void)state;
    tl_bcast p;
    tl_shape eq[2] = {tl_shape3(3, 4, 5), tl_shape3(3, 4, 5)};
    tl_bcast_plan(&p, 7, eq[0], eq, (const int[]){1, 1});
    assert_int_equal(p.nd, 1);
    assert_int_equal(p.size[0], 7 * 60);
    tl_shape se[2] = {tl_shape3(3, 4, 5), tl_shape3(3, 1, 1)};
    tl_bcast_plan(&p, 7, se[0], se, (const int[]){1, 1});
    assert_int_equal(p.nd, 2);
    assert_int_equal(p.size[0], 21);
    assert_int_equal(p.size[1], 20);
    assert_int_equal(p.st[0][1], 1);
    assert_int_equal(p.st[1][1], 0);
    assert_int_equal(p.st[1][0], 1);
    assert_int_equal(p.len[1], 21);
    /* a parameter (C) shared by the batch over (T, C) rows */
    tl_shape sc[2] = {shape2(6, 5), tl_shape1(5)};
    tl_bcast_plan(&p, 3, sc[0], sc, (const int[]){1, 0});
    assert_int_equal(p.nd, 2);
    assert_int_equal(p.size[0], 18);
    assert_int_equal(p.st[1][0], 0);
    assert_int_equal(p.len[1], 5);
}

/* ---- scale ---- */

static void scale_case(tl_shape in, int rank, const int *dims, int bias, size_t n)
{
    lh h;
    int ia[TL_MAX_RANK + 2];
    ia[0] = rank;
    memcpy(ia + 1, dims, sizeof(int) * (size_t)rank);
    ia[rank + 1] = bias;
    assert_int_equal(lh_make(&h, &tl_scale_ops, 1, in, ia, rank + 2, NULL, 0, n, 1),
                     TLEARN_OK);
    assert_true(tl_shape_equal(h.L->out, in));
    assert_int_equal(h.L->nparam, bias ? 2 : 1);
    tl_tensor *w = &h.L->param[0].t, *b = bias ? &h.L->param[1].t : NULL;
    assert_int_equal(w->ndim, rank);
    for (int j = 0; j < rank; j++)
        assert_int_equal(w->dims[j], dims[j]);
    /* a new scale is the identity */
    lh_loss(&h);
    assert_memory_equal(h.out, h.x[0], sizeof(float) * h.out_len);
    uint64_t s = 99;
    for (size_t i = 0; i < w->numel; i++) {
        w->data[i] = 1.0f + 0.5f * lh_rand(&s);
        if (b)
            b->data[i] = 0.3f * lh_rand(&s);
    }
    tl_shape ws = tl_shape_of(rank, dims);
    size_t sx = tl_shape_size(in);
    double *y = dalloc(h.out_len), *dx = dalloc(h.out_len), *dw = dalloc(w->numel),
           *db = dalloc(w->numel);
    for (size_t e = 0; e < n; e++)
        for (size_t o = 0; o < sx; o++) {
            size_t k = ref_index(ws, in, o), i = e * sx + o;
            y[i] = (double)h.x[0][i] * w->data[k] + (b ? b->data[k] : 0.0);
            dx[i] = (double)h.r[i] * w->data[k];
            dw[k] += (double)h.r[i] * h.x[0][i];
            db[k] += h.r[i];
        }
    float *din[1] = {lh_alloc(h.out_len)};
    float *pg[2] = {lh_alloc(w->numel), lh_alloc(w->numel)};
    lh_backward(&h, din, 0, pg);
    expect_close(h.out, y, h.out_len, 1e-6, 1e-7, "scale out");
    expect_close(din[0], dx, h.out_len, 1e-6, 1e-7, "scale dx");
    expect_close(pg[0], dw, w->numel, 1e-5, 1e-6, "scale dweight");
    if (b)
        expect_close(pg[1], db, w->numel, 1e-5, 1e-6, "scale dbias");
    /* parameters frozen (pgrad NULL): the input gradient alone */
    memset(din[0], 0, sizeof(float) * h.out_len);
    lh_backward(&h, din, 0, NULL);
    expect_close(din[0], dx, h.out_len, 1e-6, 1e-7, "scale dx frozen");
    lh_gradcheck(&h, 1e-3f, 1e-3, 1e-3);
    free(din[0]);
    free(pg[0]);
    free(pg[1]);
    free(y);
    free(dx);
    free(dw);
    free(db);
    lh_free(&h);
}

static void test_scale(void **state)
{
    (void)state;
    /* per channel of a map, with and without bias */
    scale_case(tl_shape3(4, 3, 5), 3, (const int[]){4, 1, 1}, 1, 3);
    scale_case(tl_shape3(4, 3, 5), 3, (const int[]){4, 1, 1}, 0, 2);
    /* layer scale over the last axis of a sequence and of a channels-last map */
    scale_case(shape2(6, 5), 1, (const int[]){5}, 0, 3);
    scale_case(tl_shape3(3, 4, 6), 1, (const int[]){6}, 1, 2);
    /* one weight per element, one in all, a rank-4 input */
    scale_case(tl_shape3(2, 3, 4), 3, (const int[]){2, 3, 4}, 1, 2);
    scale_case(tl_shape3(2, 3, 4), 3, (const int[]){2, 3, 4}, 1, 1);
    scale_case(tl_shape1(7), 1, (const int[]){1}, 1, 3);
    scale_case(shape4(2, 3, 2, 4), 2, (const int[]){2, 1}, 1, 2);
}

static void test_scale_refused(void **state)
{
    (void)state;
    lh h;
    int cases[][6] = {
        {1, 4, 0},       /* (4) against (4, 3, 5): the last axis is 5 */
        {3, 4, 3, 1, 2}, /* bias flag 2 */
        {2, 0, 1, 0},    /* a size of 0 */
        {0, 0},          /* rank 0 */
    };
    int ni[] = {3, 5, 4, 2}, want[] = {TLEARN_ESHAPE, TLEARN_EINVAL, TLEARN_EINVAL,
                                       TLEARN_EINVAL};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(lh_make(&h, &tl_scale_ops, 1, tl_shape3(4, 3, 5), cases[i], ni[i],
                                 NULL, 0, 1, 1), want[i]);
        lh_free(&h);
    }
    /* a weight of higher rank than the input would enlarge it */
    int big[] = {4, 1, 4, 3, 5, 0};
    assert_int_equal(lh_make(&h, &tl_scale_ops, 1, tl_shape3(4, 3, 5), big, 6, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    /* rank and count disagree */
    int odd[] = {2, 4, 1};
    assert_int_equal(lh_make(&h, &tl_scale_ops, 1, tl_shape3(4, 3, 5), odd, 3, NULL, 0, 1, 1),
                     TLEARN_EINVAL);
    lh_free(&h);
}

/* ---- activations ---- */

static double d_sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* The 1.1 activations in double, torch's definitions. */
static double ref_act(int act, double x, double p0, double p1)
{
    switch (act) {
    case TLEARN_ACT_HARDSIGMOID: return fmax(0.0, fmin(1.0, p0 * x + p1));
    case TLEARN_ACT_HARDSWISH: return x * fmin(fmax(x + 3.0, 0.0), 6.0) / 6.0;
    case TLEARN_ACT_SILU: return x * d_sigmoid(x);
    case TLEARN_ACT_CLIP: return fmin(fmax(x, p0), p1);
    default: { /* gelu, tanh approximation */
        double k = sqrt(2.0 / 3.14159265358979323846);
        return 0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x)));
    }
    }
}

static void act_case(int act, const float *fa, int nf, double p0, double p1, double scale,
                     const double *kinks, int nkinks)
{
    lh h;
    assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape3(3, 5, 7), &act, 1, fa, nf,
                             2, 1), TLEARN_OK);
    /* spread the inputs over the interesting range, away from the kinks by more than the
     * finite-difference step */
    for (size_t i = 0; i < h.in_len[0]; i++) {
        double v = h.x[0][i] * scale;
        for (int k = 0; k < nkinks; k++)
            if (fabs(v - kinks[k]) < 0.01)
                v += 0.02;
        h.x[0][i] = (float)v;
    }
    lh_loss(&h);
    for (size_t i = 0; i < h.out_len; i++)
        if (!test_close(h.out[i], ref_act(act, h.x[0][i], p0, p1), 1e-5, 1e-6))
            fail_msg("act %d (%g): %g, want %g", act, (double)h.x[0][i], (double)h.out[i],
                     ref_act(act, h.x[0][i], p0, p1));
    lh_gradcheck(&h, 1e-3f, 1e-3, 1e-3);
    lh_free(&h);
}

static void test_activation_values(void **state)
{
    (void)state;
    const double hs[] = {-3.0, 3.0}, onnx[] = {-2.5, 2.5}, clip[] = {-1.0, 0.5};
    act_case(TLEARN_ACT_HARDSIGMOID, NULL, 0, 1.0 / 6.0, 0.5, 4.5, hs, 2);
    act_case(TLEARN_ACT_HARDSIGMOID, (const float[]){0.2f, 0.5f}, 2, 0.2, 0.5, 4.5, onnx, 2);
    act_case(TLEARN_ACT_HARDSIGMOID, (const float[]){0.4f}, 1, 0.4, 0.5, 4.5,
             (const double[]){-1.25, 1.25}, 2);
    act_case(TLEARN_ACT_HARDSWISH, NULL, 0, 0, 0, 4.5, hs, 2);
    act_case(TLEARN_ACT_SILU, NULL, 0, 0, 0, 6.0, NULL, 0);
    act_case(TLEARN_ACT_CLIP, (const float[]){-1.0f, 0.5f}, 2, -1.0, 0.5, 2.0, clip, 2);
    act_case(TLEARN_ACT_GELU_TANH, NULL, 0, 0, 0, 5.0, NULL, 0);
}

/* Values and gradients at and around the kinks, as PyTorch 1.13 gives them (printed by
 * torch.nn.functional.hardsigmoid / hardswish / silu and torch.clamp(x, -1, 3) on these
 * inputs, gradient of the sum). Hard-swish at exactly 3: torch's vectorised kernel gives
 * 1 (printed for a 3 inside a tensor of 16 or more), its scalar tail loop 1.5; we follow
 * the vector loop, which handles nearly every element. */
static void kink_case(int act, const float *fa, int nf, const float *x, const float *want_y,
                      const float *want_g, int len)
{
    lh h;
    assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape1(len), &act, 1, fa, nf, 1,
                             1), TLEARN_OK);
    memcpy(h.x[0], x, sizeof(float) * (size_t)len);
    for (int i = 0; i < len; i++)
        h.r[i] = 1.0f;
    float *din[1] = {lh_alloc((size_t)len)};
    lh_backward(&h, din, 0, NULL);
    for (int i = 0; i < len; i++) {
        if (!test_close(h.out[i], want_y[i], 1e-6, 1e-7) ||
            !test_close(din[0][i], want_g[i], 1e-6, 1e-7))
            fail_msg("act %d at %g: y %.9g g %.9g, torch y %.9g g %.9g", act, (double)x[i],
                     (double)h.out[i], (double)din[0][i], (double)want_y[i],
                     (double)want_g[i]);
    }
    free(din[0]);
    lh_free(&h);
}

static void test_activation_kinks(void **state)
{
    (void)state;
    const float x[] = {-3.5f, -3.0f, -1.0f, 0.0f, 3.0f, 3.5f};
    kink_case(TLEARN_ACT_HARDSIGMOID, NULL, 0, x,
              (const float[]){0.0f, 0.0f, 0.3333333432674408f, 0.5f, 1.0f, 1.0f},
              (const float[]){0.0f, 0.0f, 0.1666666716337204f, 0.1666666716337204f, 0.0f,
                              0.0f}, 6);
    kink_case(TLEARN_ACT_HARDSWISH, NULL, 0, x,
              (const float[]){-0.0f, -0.0f, -0.3333333432674408f, 0.0f, 3.0f, 3.5f},
              (const float[]){0.0f, -0.5f, 0.1666666567325592f, 0.5f, 1.0f, 1.0f}, 6);
    kink_case(TLEARN_ACT_CLIP, (const float[]){-1.0f, 3.0f}, 2, x,
              (const float[]){-1.0f, -1.0f, -1.0f, 0.0f, 3.0f, 3.0f},
              (const float[]){0.0f, 0.0f, 1.0f, 1.0f, 1.0f, 0.0f}, 6);
    kink_case(TLEARN_ACT_SILU, NULL, 0, x,
              (const float[]){-0.10259281098842621f, -0.14227761328220367f,
                              -0.2689414322376251f, 0.0f, 2.857722520828247f,
                              3.397407293319702f},
              (const float[]){-0.07027334719896317f, -0.08810410648584366f,
                              0.07232948392629623f, 0.5f, 1.0881041288375854f,
                              1.070273518562317f}, 6);
    /* NaN passes through, as torch's clamps */
    const float nan[1] = {NAN};
    lh h;
    int acts[] = {TLEARN_ACT_HARDSIGMOID, TLEARN_ACT_HARDSWISH, TLEARN_ACT_CLIP};
    for (int i = 0; i < 3; i++) {
        float fa[2] = {0.0f, 1.0f};
        assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape1(1), &acts[i], 1, fa,
                                 acts[i] == TLEARN_ACT_CLIP ? 2 : 0, 1, 0), TLEARN_OK);
        h.x[0][0] = nan[0];
        lh_loss(&h);
        assert_true(isnan(h.out[0]));
        lh_free(&h);
    }
}

/* configure/arguments: defaults filled in, round 1's form kept for round 1's activations,
 * bad parameters refused. */
static void test_activation_arguments(void **state)
{
    (void)state;
    lh h;
    int ia[TL_MAX_IARGS], ni, nf;
    float fa[TL_MAX_FARGS];
    int act = TLEARN_ACT_HARDSIGMOID;
    assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape1(2), &act, 1, NULL, 0, 1, 0),
                     TLEARN_OK);
    h.L->ops->arguments(h.L, ia, &ni, fa, &nf);
    assert_int_equal(ni, 1);
    assert_int_equal(nf, 2);
    assert_true(fa[0] == 1.0f / 6.0f && fa[1] == 0.5f);
    lh_free(&h);
    act = TLEARN_ACT_LEAKY_RELU;
    assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape1(2), &act, 1, NULL, 0, 1, 0),
                     TLEARN_OK);
    h.L->ops->arguments(h.L, ia, &ni, fa, &nf);
    assert_int_equal(nf, 1);
    assert_true(fa[0] == 0.01f);
    lh_free(&h);
    act = TLEARN_ACT_RELU;
    float one = 0.0f;
    assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape1(2), &act, 1, &one, 1, 1, 0),
                     TLEARN_OK);
    h.L->ops->arguments(h.L, ia, &ni, fa, &nf);
    assert_int_equal(ia[0], TLEARN_ACT_RELU);
    assert_int_equal(nf, 1); /* round 1's form */
    lh_free(&h);
    struct {
        int act, nf;
        float fa[2];
    } bad[] = {
        {TLEARN_ACT_CLIP, 1, {0.0f, 0.0f}},          /* bounds missing */
        {TLEARN_ACT_CLIP, 2, {1.0f, 0.0f}},          /* lo > hi */
        {TLEARN_ACT_CLIP, 2, {NAN, 1.0f}},
        {TLEARN_ACT_HARDSIGMOID, 2, {INFINITY, 0.5f}},
        {TLEARN_ACT_SILU, 2, {0.0f, 0.0f}},          /* takes no parameters */
        {TLEARN_ACT_LEAKY_RELU, 1, {NAN, 0.0f}},
        {12, 0, {0.0f, 0.0f}},
        {0, 0, {0.0f, 0.0f}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape1(2), &bad[i].act, 1,
                                 bad[i].fa, bad[i].nf, 1, 0), TLEARN_EINVAL);
        lh_free(&h);
    }
    /* clip may be unbounded on one side */
    act = TLEARN_ACT_CLIP;
    float half[2] = {-INFINITY, 2.0f};
    assert_int_equal(lh_make(&h, &tl_activation_ops, 1, tl_shape1(2), &act, 1, half, 2, 1, 0),
                     TLEARN_OK);
    h.x[0][0] = -1e30f;
    h.x[0][1] = 5.0f;
    lh_loss(&h);
    assert_true(h.out[0] == -1e30f && h.out[1] == 2.0f);
    lh_free(&h);
}

/* ---- softmax ---- */

/* @p shift is added to every logit (spread over [-3, 3]); NaN spreads them over
 * [-300, 300] instead. */
static void softmax_case(tl_shape in, int axis, size_t n, float shift)
{
    lh h;
    assert_int_equal(lh_make(&h, &tl_softmax_ops, 1, in, &axis, 1, NULL, 0, n, 1), TLEARN_OK);
    for (size_t i = 0; i < h.in_len[0]; i++)
        h.x[0][i] = isnan(shift) ? h.x[0][i] * 300.0f : h.x[0][i] * 3.0f + shift;
    int ax = axis < 0 ? axis + in.rank : axis;
    size_t outer = 1, inner = 1, len = (size_t)in.d[ax];
    for (int j = 0; j < ax; j++)
        outer *= (size_t)in.d[j];
    for (int j = ax + 1; j < in.rank; j++)
        inner *= (size_t)in.d[j];
    double *y = dalloc(h.out_len), *dx = dalloc(h.out_len);
    for (size_t q = 0; q < n * outer; q++)
        for (size_t j = 0; j < inner; j++) {
            size_t base = q * len * inner + j;
            double m = -INFINITY, s = 0.0, dot = 0.0;
            for (size_t k = 0; k < len; k++)
                m = fmax(m, h.x[0][base + k * inner]);
            for (size_t k = 0; k < len; k++)
                s += exp((double)h.x[0][base + k * inner] - m);
            for (size_t k = 0; k < len; k++) {
                y[base + k * inner] = exp((double)h.x[0][base + k * inner] - m) / s;
                dot += y[base + k * inner] * h.r[base + k * inner];
            }
            for (size_t k = 0; k < len; k++)
                dx[base + k * inner] = y[base + k * inner] * (h.r[base + k * inner] - dot);
        }
    float *din[1] = {lh_alloc(h.out_len)};
    lh_backward(&h, din, 0, NULL);
    expect_close(h.out, y, h.out_len, 1e-5, 1e-7, "softmax out");
    expect_close(din[0], dx, h.out_len, 1e-4, 1e-6, "softmax dx");
    if (shift == 0.0f)
        lh_gradcheck(&h, 1e-3f, 1e-3, 2e-3);
    free(din[0]);
    free(y);
    free(dx);
    lh_free(&h);
}

static void test_softmax(void **state)
{
    (void)state;
    softmax_case(tl_shape1(7), 0, 3, 0.0f);
    softmax_case(tl_shape1(7), -1, 2, 0.0f);
    softmax_case(tl_shape3(3, 4, 5), 0, 2, 0.0f); /* over channels */
    softmax_case(tl_shape3(3, 4, 5), 1, 2, 0.0f);
    softmax_case(tl_shape3(3, 4, 5), -1, 2, 0.0f);
    softmax_case(tl_shape3(3, 4, 5), -3, 1, 0.0f);
    softmax_case(shape4(2, 3, 2, 4), 1, 2, 0.0f);
    softmax_case(shape2(3, 300), 0, 2, 0.0f); /* more positions than one stack chunk */
    /* stable for large logits: exp(1000) would overflow without the maximum subtracted */
    softmax_case(shape2(4, 6), -1, 2, 1000.0f);
    softmax_case(shape2(4, 6), 0, 2, -1000.0f);
    softmax_case(shape2(4, 6), -1, 2, 1000.0f);
    /* and for logits far apart within a slice (scaled to [-300, 300]) */
    softmax_case(shape2(4, 6), -1, 2, NAN);
    softmax_case(shape2(4, 6), 0, 2, NAN);
}

static void test_softmax_refused(void **state)
{
    (void)state;
    lh h;
    int axes[] = {4, -5, 3, -4}, want[] = {TLEARN_EINVAL, TLEARN_EINVAL, TLEARN_ESHAPE,
                                           TLEARN_ESHAPE};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(lh_make(&h, &tl_softmax_ops, 1, tl_shape3(2, 3, 4), &axes[i], 1, NULL,
                                 0, 1, 0), want[i]);
        lh_free(&h);
    }
    int axis = -1;
    float f = 1.0f;
    assert_int_equal(lh_make(&h, &tl_softmax_ops, 1, tl_shape1(3), &axis, 1, &f, 1, 1, 0),
                     TLEARN_EINVAL);
    lh_free(&h);
}

/* ---- through the public API ---- */

/* x * x reads one producer twice: the gradient is 2 x dL/dy, both contributions added into
 * one buffer. Checked against central differences of the public loss. */
static void test_public_square(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 1, (const int[]){5}));
    OK(tlearn_model_add_binary(m, "sq", TLEARN_BINARY_MUL, "x", "x"));
    float x[10], dx[10];
    int32_t y[2] = {1, 3};
    test_rng r = {3};
    test_fill(&r, x, 10, -1.0, 1.0);
    float loss;
    OK(tlearn_model_compute_gradients(m, x, y, 2, &loss, dx, 10));
    for (int i = 0; i < 10; i++) {
        float keep = x[i], lp, lm, h = 1e-2f;
        x[i] = keep + h;
        OK(tlearn_model_compute_gradients(m, x, y, 2, &lp, NULL, 0));
        x[i] = keep - h;
        OK(tlearn_model_compute_gradients(m, x, y, 2, &lm, NULL, 0));
        x[i] = keep;
        assert_true(test_close(dx[i], ((double)lp - lm) / (2.0 * h), 2e-2, 1e-4));
    }
    tlearn_model_destroy(&m);
}

/* A squeeze-excitation block and the other kinds built by their public calls, saved and
 * loaded: same kinds, arguments, tensors and predictions. */
static void test_checkpoint_round_trip(void **state)
{
    (void)state;
    char path[] = "/tmp/tlearn-elementwise-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tlearn_model *m, *l;
    OK(tlearn_model_create(&m, 4, 5, 6));
    OK(tlearn_model_add_conv2d(m, "conv", 8, 3, 1, 1, 1));
    OK(tlearn_model_add_activation_ex(m, "hsw", TLEARN_ACT_HARDSWISH, NULL, 0));
    OK(tlearn_model_add_global_avgpool(m, "squeeze"));
    OK(tlearn_model_add_conv2d(m, "reduce", 2, 1, 1, 0, 1));
    OK(tlearn_model_add_activation_ex(m, "silu", TLEARN_ACT_SILU, NULL, 0));
    OK(tlearn_model_add_conv2d(m, "expand", 8, 1, 1, 0, 1));
    OK(tlearn_model_add_activation_ex(m, "gate", TLEARN_ACT_HARDSIGMOID,
                                      (const float[]){0.2f, 0.5f}, 2));
    OK(tlearn_model_add_binary(m, "excite", TLEARN_BINARY_MUL, "hsw", "gate"));
    OK(tlearn_model_add_scale(m, "ls", 3, (const int[]){8, 1, 1}, 1));
    OK(tlearn_model_add_binary(m, "res", TLEARN_BINARY_SUB, NULL, "conv"));
    OK(tlearn_model_add_activation_ex(m, "clip", TLEARN_ACT_CLIP, (const float[]){-0.5f, 2.0f},
                                      2));
    OK(tlearn_model_add_activation_ex(m, "gelu", TLEARN_ACT_GELU_TANH, NULL, 0));
    OK(tlearn_model_add_softmax(m, "sm", 0));
    OK(tlearn_model_add_binary(m, "div", TLEARN_BINARY_DIV, "sm", "gate"));
    int count;
    OK(tlearn_model_layer_count(m, &count));
    /* non-trivial scale parameters, so that the file must carry them */
    float w[8], b[8];
    for (int i = 0; i < 8; i++) {
        w[i] = 0.5f + 0.1f * (float)i;
        b[i] = 0.05f * (float)i - 0.2f;
    }
    OK(tlearn_model_set_tensor(m, "ls.weight", w, 8));
    OK(tlearn_model_set_tensor(m, "ls.bias", b, 8));
    OK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_FULL));
    OK(tlearn_model_load(&l, NULL, path));
    unlink(path);
    int lcount;
    OK(tlearn_model_layer_count(l, &lcount));
    assert_int_equal(lcount, count);
    for (int i = 0; i < count; i++) {
        tl_layer *a = m->layers[i], *c = l->layers[i];
        assert_string_equal(a->name, c->name);
        assert_int_equal(a->ops->kind, c->ops->kind);
        assert_int_equal(a->ninputs, c->ninputs);
        assert_memory_equal(a->input, c->input, sizeof(int) * (size_t)a->ninputs);
        assert_true(tl_shape_equal(a->out, c->out));
        int ia1[TL_MAX_IARGS], ia2[TL_MAX_IARGS], ni1, ni2, nf1, nf2;
        float fa1[TL_MAX_FARGS], fa2[TL_MAX_FARGS];
        a->ops->arguments(a, ia1, &ni1, fa1, &nf1);
        c->ops->arguments(c, ia2, &ni2, fa2, &nf2);
        assert_int_equal(ni1, ni2);
        assert_int_equal(nf1, nf2);
        assert_memory_equal(ia1, ia2, sizeof(int) * (size_t)ni1);
        assert_memory_equal(fa1, fa2, sizeof(float) * (size_t)nf1);
    }
    int kind;
    OK(tlearn_model_layer_kind(l, 7, &kind));
    assert_int_equal(kind, TLEARN_LAYER_BINARY);
    OK(tlearn_model_layer_kind(l, 8, &kind));
    assert_int_equal(kind, TLEARN_LAYER_SCALE);
    OK(tlearn_model_layer_kind(l, 12, &kind));
    assert_int_equal(kind, TLEARN_LAYER_SOFTMAX);
    float w2[8];
    OK(tlearn_model_get_tensor(l, "ls.weight", w2, 8));
    assert_memory_equal(w, w2, sizeof w);
    enum { N = 3, IN = 4 * 5 * 6, OUT = 8 * 5 * 6 };
    float x[N * IN], y1[N * OUT], y2[N * OUT];
    test_rng r = {11};
    test_fill(&r, x, N * IN, -2.0, 2.0);
    OK(tlearn_model_predict(m, x, N, y1, N * OUT));
    OK(tlearn_model_predict(l, x, N, y2, N * OUT));
    assert_memory_equal(y1, y2, sizeof y1);
    for (int i = 0; i < N * OUT; i++)
        assert_true(isfinite(y1[i]));
    tlearn_model_destroy(&l);
    tlearn_model_destroy(&m);
}

/* Every entry point refuses bad arguments with a message and leaves the model as it was. */
static void test_public_refusals(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 3, 4, 5));
    OK(tlearn_model_add_global_avgpool(m, "gap"));
    assert_int_equal(tlearn_model_add_binary(NULL, "b", 1, NULL, "input"), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_binary(m, "b", TLEARN_BINARY_MUL, NULL, NULL),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_binary(m, "b", 0, NULL, "input"), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "'b'"));
    assert_int_equal(tlearn_model_add_binary(m, "b", TLEARN_BINARY_MUL, NULL, "nope"),
                     TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_model_add_binary(m, "b", TLEARN_BINARY_MUL, "nope", "gap"),
                     TLEARN_ENOTFOUND);
    assert_int_equal(tlearn_model_add_binary(m, "gap", TLEARN_BINARY_MUL, NULL, "input"),
                     TLEARN_EINVAL); /* name taken */
    assert_int_equal(tlearn_model_add_scale(m, "s", 1, NULL, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_scale(m, "s", 5, (const int[]){1, 1, 1, 1, 1}, 0),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_scale(m, "s", 1, (const int[]){2}, 0), TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "'s'"));
    assert_int_equal(tlearn_model_add_activation_ex(m, "a", TLEARN_ACT_CLIP, NULL, 2),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_activation_ex(m, "a", TLEARN_ACT_RELU,
                                                    (const float[]){0, 0, 0}, 3),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_activation_ex(m, "a", TLEARN_ACT_CLIP,
                                                    (const float[]){2.0f, 1.0f}, 2),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_activation(m, "a", TLEARN_ACT_CLIP, 1.0f), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "tlearn_model_add_activation_ex"));
    assert_int_equal(tlearn_model_add_softmax(m, "sm", 3), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_softmax(m, "sm", -9), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_softmax(NULL, "sm", 0), TLEARN_EINVAL);
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 1);
    /* add_activation with hard-sigmoid ignores its param: torch's alpha, beta */
    OK(tlearn_model_add_activation(m, "hs", TLEARN_ACT_HARDSIGMOID, 0.9f));
    int ia[TL_MAX_IARGS], ni, nf;
    float fa[TL_MAX_FARGS];
    m->layers[1]->ops->arguments(m->layers[1], ia, &ni, fa, &nf);
    assert_true(nf == 2 && fa[0] == 1.0f / 6.0f && fa[1] == 0.5f);
    /* a NULL: what the next layer would read (set_next_input) */
    OK(tlearn_model_set_next_input(m, "input"));
    OK(tlearn_model_add_binary(m, "gated", TLEARN_BINARY_MUL, NULL, "hs"));
    assert_int_equal(m->layers[2]->input[0], -1);
    assert_int_equal(m->layers[2]->input[1], 1);
    int rank, dims[4];
    OK(tlearn_model_layer_shape_nd(m, 2, &rank, dims, 4));
    assert_int_equal(rank, 3);
    assert_int_equal(dims[0] * 100 + dims[1] * 10 + dims[2], 345);
    tlearn_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broadcast_plan),
        cmocka_unit_test(test_binary_broadcast),
        cmocka_unit_test(test_binary_refused),
        cmocka_unit_test(test_binary_same_input),
        cmocka_unit_test(test_binary_threads),
        cmocka_unit_test(test_scale),
        cmocka_unit_test(test_scale_refused),
        cmocka_unit_test(test_activation_values),
        cmocka_unit_test(test_activation_kinks),
        cmocka_unit_test(test_activation_arguments),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_softmax_refused),
        cmocka_unit_test(test_public_square),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_public_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
