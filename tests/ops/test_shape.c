/* The data-movement ops: concat, slice, reshape, transpose. Forward against references
 * computed here by explicit multi-index arithmetic (never by the layers' block copies),
 * central-difference gradient checks (tests/vision/harness.h), accumulation and the same
 * producer twice, checkpoint round trips through the public API, and refusals. */
#include <limits.h>
#include <unistd.h>

#include "harness.h"
#include "common.h"
#include "model/model.h"

/* ---- references by index arithmetic ---- */

/* Offset of index i = (example, i0, i1, i2, i3) in a batch of shape s (row-major; unused
 * dims are 1 and their index 0). */
static size_t ref_off(tl_shape s, const int *i)
{
    size_t o = (size_t)i[0];
    for (int k = 0; k < TL_MAX_RANK; k++)
        o = o * (size_t)s.d[k] + (size_t)i[1 + k];
    return o;
}

/* The index of flat position @p f in a batch of shape s. */
static void ref_index(tl_shape s, size_t f, int *i)
{
    for (int k = TL_MAX_RANK - 1; k >= 0; k--) {
        i[1 + k] = (int)(f % (size_t)s.d[k]);
        f /= (size_t)s.d[k];
    }
    i[0] = (int)f;
}

static void expect_equal(const float *got, const float *want, size_t len, const char *what)
{
    for (size_t k = 0; k < len; k++)
        if (got[k] != want[k])
            fail_msg("%s [%zu]: %.9g, expected %.9g", what, k, (double)got[k], (double)want[k]);
}

static void forward(lh *h)
{
    tl_exec ex = lh_exec(h, 0);
    const float *in[LH_MAX_INPUTS];
    for (int k = 0; k < LH_MAX_INPUTS; k++)
        in[k] = h->x[k];
    h->L->ops->forward(h->L, &ex, in, h->out, h->n, NULL);
}

static tl_shape shp(int rank, int a, int b, int c, int d)
{
    return tl_shape_of(rank, (const int[]){a, b, c, d});
}

/* With accum the input gradients are the earlier contents plus what accum = 0 writes. */
static void check_accum(lh *h)
{
    tl_layer *L = h->L;
    float *d0[LH_MAX_INPUTS] = {NULL}, *d1[LH_MAX_INPUTS] = {NULL};
    for (int k = 0; k < L->ninputs; k++) {
        d0[k] = lh_alloc(h->in_len[k]);
        d1[k] = lh_alloc(h->in_len[k]);
        for (size_t i = 0; i < h->in_len[k]; i++)
            d0[k][i] = 7.0f; /* overwritten without accum: nothing of it may remain */
        for (size_t i = 0; i < h->in_len[k]; i++)
            d1[k][i] = 0.25f * (float)(i % 8);
    }
    lh_backward(h, d0, 0, NULL);
    lh_backward(h, d1, 1, NULL);
    for (int k = 0; k < L->ninputs; k++) {
        for (size_t i = 0; i < h->in_len[k]; i++)
            if (d1[k][i] != 0.25f * (float)(i % 8) + d0[k][i])
                fail_msg("input %d [%zu]: accumulated %.9g, expected %.9g + %.9g", k, i,
                         (double)d1[k][i], 0.25 * (double)(i % 8), (double)d0[k][i]);
        free(d0[k]);
        free(d1[k]);
    }
}

/* Each argument vector of @p bad must be refused by @p ops over input @p in with its status. */
typedef struct bad_args {
    int ia[6], ni, rc;
} bad_args;

static void expect_refused(const tl_layer_ops *ops, tl_shape in, const bad_args *bad,
                           size_t count)
{
    for (size_t k = 0; k < count; k++) {
        lh h;
        int rc = lh_make(&h, ops, 1, in, bad[k].ia, bad[k].ni, NULL, 0, 1, 1);
        if (rc != bad[k].rc)
            fail_msg("%s case %zu: %d, expected %d (%s)", ops->kind_name, k, rc, bad[k].rc,
                     tlearn_errmsg());
        lh_free(&h);
    }
}

/* ---- concat ---- */

static void concat_case(int ninputs, const tl_shape *ins, int axis, tl_shape want, size_t n)
{
    lh h;
    assert_int_equal(lh_make_shapes(&h, &tl_concat_ops, ninputs, ins, &axis, 1, NULL, 0, n, 1),
                     TLEARN_OK);
    assert_true(tl_shape_equal(h.L->out, want));
    int ax = axis < 0 ? axis + want.rank : axis;
    forward(&h);
    float *ref = lh_alloc(h.out_len);
    int i[1 + TL_MAX_RANK];
    for (size_t f = 0; f < h.out_len; f++) {
        ref_index(want, f, i);
        int k = 0;
        while (i[1 + ax] >= ins[k].d[ax]) /* which input, and where in it */
            i[1 + ax] -= ins[k++].d[ax];
        ref[f] = h.x[k][ref_off(ins[k], i)];
    }
    expect_equal(h.out, ref, h.out_len, "concat forward");
    free(ref);
    lh_gradcheck(&h, 1e-2f, 1e-3, 1e-3);
    check_accum(&h);
    lh_free(&h);
}

static void test_concat(void **state)
{
    (void)state;
    /* channels of (C, H, W), DenseNet's case: one block per input and example */
    tl_shape a[3] = {tl_shape3(2, 3, 4), tl_shape3(1, 3, 4), tl_shape3(3, 3, 4)};
    concat_case(3, a, 0, tl_shape3(6, 3, 4), 3);
    concat_case(3, a, -3, tl_shape3(6, 3, 4), 2);
    /* rows and columns: several blocks per example */
    tl_shape b[2] = {tl_shape3(2, 1, 5), tl_shape3(2, 4, 5)};
    concat_case(2, b, 1, tl_shape3(2, 5, 5), 3);
    tl_shape c[4] = {tl_shape3(2, 3, 1), tl_shape3(2, 3, 2), tl_shape3(2, 3, 1),
                     tl_shape3(2, 3, 3)};
    concat_case(4, c, -1, tl_shape3(2, 3, 7), 2);
    /* vectors, sequences and rank 4 */
    tl_shape v[2] = {tl_shape1(3), tl_shape1(5)};
    concat_case(2, v, 0, tl_shape1(8), 4);
    tl_shape s[2] = {shp(2, 4, 3, 1, 1), shp(2, 4, 2, 1, 1)};
    concat_case(2, s, 1, shp(2, 4, 5, 1, 1), 3);
    tl_shape q[3] = {shp(4, 2, 3, 2, 2), shp(4, 2, 1, 2, 2), shp(4, 2, 2, 2, 2)};
    concat_case(3, q, 1, shp(4, 2, 6, 2, 2), 2);
    concat_case(8, (const tl_shape[8]){tl_shape3(1, 2, 2), tl_shape3(2, 2, 2),
                                       tl_shape3(1, 2, 2), tl_shape3(3, 2, 2),
                                       tl_shape3(1, 2, 2), tl_shape3(1, 2, 2),
                                       tl_shape3(2, 2, 2), tl_shape3(1, 2, 2)},
                0, tl_shape3(12, 2, 2), 2);
}

/* cat([x, y, x]) where the runtime hands the same buffer twice: x's gradient is the sum of
 * its two shares, with or without accum. */
static void test_concat_same_input_twice(void **state)
{
    (void)state;
    lh h;
    int axis = 0;
    tl_shape in = tl_shape3(2, 2, 3);
    assert_int_equal(lh_make(&h, &tl_concat_ops, 3, in, &axis, 1, NULL, 0, 2, 1), TLEARN_OK);
    size_t len = h.in_len[0], per = tl_shape_size(in);
    float *gx = lh_alloc(len), *gy = lh_alloc(len);
    for (int accum = 0; accum <= 1; accum++) {
        for (size_t i = 0; i < len; i++)
            gx[i] = gy[i] = accum ? 1.0f : 9.0f;
        float *din[3] = {gx, gy, gx};
        lh_backward(&h, din, accum, NULL);
        for (size_t e = 0; e < h.n; e++)
            for (size_t i = 0; i < per; i++) {
                const float *r = h.r + e * 3 * per; /* dout of example e: x, y, x */
                float base = accum ? 1.0f : 0.0f;
                assert_float_equal(gx[e * per + i], base + r[i] + r[2 * per + i], 1e-6);
                assert_float_equal(gy[e * per + i], base + r[per + i], 0.0f);
            }
    }
    free(gx);
    free(gy);
    lh_free(&h);
}

static void test_concat_refused(void **state)
{
    (void)state;
    lh h;
    int axis = 0;
    tl_shape two[2] = {tl_shape3(2, 3, 4), tl_shape3(2, 3, 5)};
    assert_int_equal(lh_make_shapes(&h, &tl_concat_ops, 2, two, &axis, 1, NULL, 0, 1, 1),
                     TLEARN_ESHAPE); /* W differs, not on the axis */
    assert_non_null(strstr(tlearn_errmsg(), "input 1 has shape (2, 3, 5)"));
    lh_free(&h);
    axis = 3;
    assert_int_equal(lh_make_shapes(&h, &tl_concat_ops, 2, two, &axis, 1, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    axis = -4;
    assert_int_equal(lh_make_shapes(&h, &tl_concat_ops, 2, two, &axis, 1, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    axis = 2;
    tl_shape ranks[2] = {tl_shape3(2, 3, 4), shp(2, 2, 3, 1, 1)};
    assert_int_equal(lh_make_shapes(&h, &tl_concat_ops, 2, ranks, &axis, 1, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
    axis = 0;
    assert_int_equal(lh_make(&h, &tl_concat_ops, 1, tl_shape1(3), &axis, 1, NULL, 0, 1, 1),
                     TLEARN_EINVAL); /* one input */
    lh_free(&h);
    assert_int_equal(lh_make(&h, &tl_concat_ops, 2, tl_shape1(3), NULL, 0, NULL, 0, 1, 1),
                     TLEARN_EINVAL); /* no axis */
    lh_free(&h);
    /* 2^31 elements per example would not fit the int sizes */
    tl_shape big[2] = {tl_shape1(INT_MAX - 1), tl_shape1(2)};
    assert_int_equal(lh_make_shapes(&h, &tl_concat_ops, 2, big, &axis, 1, NULL, 0, 1, 1),
                     TLEARN_ESHAPE);
    lh_free(&h);
}

/* ---- slice ---- */

/* Slice (axis, start, end, step) of @p in must take @p count entries from @p first on
 * (expected values given by the caller, from ONNX's rules). */
static void slice_case(tl_shape in, int axis, int start, int end, int step, int first,
                       int count, size_t n)
{
    lh h;
    int ia[4] = {axis, start, end, step};
    assert_int_equal(lh_make(&h, &tl_slice_ops, 1, in, ia, 4, NULL, 0, n, 1), TLEARN_OK);
    int ax = axis < 0 ? axis + in.rank : axis;
    tl_shape want = in;
    want.d[ax] = count;
    assert_true(tl_shape_equal(h.L->out, want));
    forward(&h);
    float *ref = lh_alloc(h.out_len);
    int i[1 + TL_MAX_RANK];
    for (size_t f = 0; f < h.out_len; f++) {
        ref_index(want, f, i);
        i[1 + ax] = first + i[1 + ax] * step;
        ref[f] = h.x[0][ref_off(in, i)];
    }
    expect_equal(h.out, ref, h.out_len, "slice forward");
    free(ref);
    lh_gradcheck(&h, 1e-2f, 1e-3, 1e-3);
    check_accum(&h); /* also: entries outside the slice are zeroed without accum */
    lh_free(&h);
}

static void test_slice(void **state)
{
    (void)state;
    /* ShuffleNetV2's split: two channel halves */
    slice_case(tl_shape3(6, 3, 4), 0, 0, 3, 1, 0, 3, 3);
    slice_case(tl_shape3(6, 3, 4), 0, 3, 6, 1, 3, 3, 2);
    /* steps: 1..7 by 2 -> 1, 3, 5, 7; 0..8 by 3 on the last axis -> 0, 3, 6 */
    slice_case(tl_shape3(2, 9, 5), 1, 1, 8, 2, 1, 4, 2);
    slice_case(tl_shape3(2, 3, 9), -1, 0, 9, 3, 0, 3, 3);
    /* negative indices: -4..-1 of 7 is 3..6; start -100 clamps to 0, end INT_MAX to 7 */
    slice_case(tl_shape3(7, 2, 2), 0, -4, -1, 1, 3, 3, 2);
    slice_case(tl_shape1(7), 0, -100, INT_MAX, 2, 0, 4, 3);
    slice_case(shp(2, 5, 6, 1, 1), 1, 2, 100, 4, 2, 1, 2);
    slice_case(shp(4, 2, 3, 5, 2), 2, 1, -1, 2, 1, 2, 2);
}

static void test_slice_refused(void **state)
{
    (void)state;
    const bad_args bad[] = {
        {{0, 2, 2, 1}, 4, TLEARN_ESHAPE},   /* empty */
        {{0, 5, 9, 1}, 4, TLEARN_ESHAPE},   /* start clamps to 4 = end: empty */
        {{0, -1, -3, 1}, 4, TLEARN_ESHAPE}, /* end before start */
        {{3, 0, 1, 1}, 4, TLEARN_ESHAPE},   /* axis out of range for rank 3 */
        {{-4, 0, 1, 1}, 4, TLEARN_ESHAPE},
        {{0, 0, 2, 0}, 4, TLEARN_EINVAL},   /* step 0 */
        {{0, 3, 0, -1}, 4, TLEARN_EINVAL},  /* negative steps are not supported */
        {{0, 0, 2}, 3, TLEARN_EINVAL},      /* no step */
    };
    expect_refused(&tl_slice_ops, tl_shape3(4, 2, 2), bad, sizeof bad / sizeof bad[0]);
}

/* ---- reshape ---- */

static void reshape_case(tl_shape in, int rank, const int *dims, tl_shape want)
{
    lh h;
    int ia[1 + TL_MAX_RANK] = {rank};
    memcpy(ia + 1, dims, sizeof(int) * (size_t)rank);
    OK(lh_make(&h, &tl_reshape_ops, 1, in, ia, 1 + rank, NULL, 0, 3, 1));
    char a[TL_SHAPE_STR], b[TL_SHAPE_STR];
    if (!tl_shape_equal(h.L->out, want))
        fail_msg("reshape gave %s, expected %s", tl_shape_str(h.L->out, a),
                 tl_shape_str(want, b));
    forward(&h);
    expect_equal(h.out, h.x[0], h.out_len, "reshape forward"); /* same order */
    lh_gradcheck(&h, 1e-2f, 1e-3, 1e-3);
    check_accum(&h);
    int back[TL_MAX_IARGS], ni, nf;
    float fa[TL_MAX_FARGS];
    h.L->ops->arguments(h.L, back, &ni, fa, &nf);
    assert_int_equal(ni, 1 + rank); /* 0 and -1 kept as given */
    assert_memory_equal(back, ia, sizeof(int) * (size_t)(1 + rank));
    lh_free(&h);
}

static void test_reshape(void **state)
{
    (void)state;
    reshape_case(tl_shape3(6, 2, 2), 4, (const int[]){2, 3, 2, 2}, shp(4, 2, 3, 2, 2));
    reshape_case(tl_shape3(6, 2, 2), 4, (const int[]){3, -1, 0, 2}, shp(4, 3, 2, 2, 2));
    reshape_case(tl_shape3(6, 2, 2), 1, (const int[]){-1}, tl_shape1(24));
    reshape_case(tl_shape3(6, 2, 2), 2, (const int[]){0, -1}, shp(2, 6, 4, 1, 1));
    reshape_case(shp(2, 4, 5, 1, 1), 3, (const int[]){2, 2, 5}, tl_shape3(2, 2, 5));
    reshape_case(tl_shape1(12), 3, (const int[]){0, 1, 1}, tl_shape3(12, 1, 1));
}

static void test_reshape_refused(void **state)
{
    (void)state;
    const bad_args bad[] = {
        {{2, 5, 5}, 3, TLEARN_ESHAPE},         /* 25 != 24 */
        {{2, 5, -1}, 3, TLEARN_ESHAPE},        /* 24 is not a multiple of 5 */
        {{2, 48, -1}, 3, TLEARN_ESHAPE},       /* nothing left for -1 */
        {{4, 0, 0, 0, 0}, 5, TLEARN_ESHAPE},   /* a 0 beyond the input's rank 3 */
        {{2, -1, -1}, 3, TLEARN_EINVAL},       /* two -1 */
        {{2, -2, -12}, 3, TLEARN_EINVAL},      /* below -1 */
        {{0}, 1, TLEARN_EINVAL},               /* rank 0 */
        {{5, 1, 1, 1, 2, 12}, 6, TLEARN_EINVAL}, /* rank 5 */
        {{3, 6, 4}, 3, TLEARN_EINVAL},         /* rank 3 with two dims */
        {{2, INT_MAX, INT_MAX}, 3, TLEARN_ESHAPE},
    };
    expect_refused(&tl_reshape_ops, tl_shape3(6, 2, 2), bad, sizeof bad / sizeof bad[0]);
}

/* ---- transpose ---- */

static void transpose_case(tl_shape in, const int *perm, size_t n, int gradcheck)
{
    lh h;
    int ia[1 + TL_MAX_RANK] = {in.rank};
    memcpy(ia + 1, perm, sizeof(int) * (size_t)in.rank);
    assert_int_equal(lh_make(&h, &tl_transpose_ops, 1, in, ia, 1 + in.rank, NULL, 0, n, 1),
                     TLEARN_OK);
    tl_shape want = in;
    for (int k = 0; k < in.rank; k++)
        want.d[k] = in.d[perm[k]];
    assert_true(tl_shape_equal(h.L->out, want));
    forward(&h);
    float *ref = lh_alloc(h.out_len);
    int i[1 + TL_MAX_RANK], j[1 + TL_MAX_RANK] = {0};
    for (size_t f = 0; f < h.out_len; f++) {
        ref_index(want, f, i);
        j[0] = i[0];
        for (int k = 0; k < in.rank; k++)
            j[1 + perm[k]] = i[1 + k];
        ref[f] = h.x[0][ref_off(in, j)];
    }
    expect_equal(h.out, ref, h.out_len, "transpose forward");
    free(ref);
    if (gradcheck)
        lh_gradcheck(&h, 1e-2f, 1e-3, 1e-3);
    check_accum(&h);
    lh_free(&h);
}

static void test_transpose(void **state)
{
    (void)state;
    /* every permutation of 4 axes of distinct odd sizes, and of 3 */
    int p[4];
    for (p[0] = 0; p[0] < 4; p[0]++)
        for (p[1] = 0; p[1] < 4; p[1]++)
            for (p[2] = 0; p[2] < 4; p[2]++) {
                p[3] = 6 - p[0] - p[1] - p[2];
                if (p[0] == p[1] || p[0] == p[2] || p[1] == p[2] || p[3] < 0 || p[3] > 3)
                    continue;
                transpose_case(shp(4, 2, 3, 5, 7), p, 2, 1);
                transpose_case(shp(4, 3, 1, 4, 2), p, 2, 1); /* a size-1 axis */
            }
    const int p3[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (int k = 0; k < 6; k++) {
        transpose_case(tl_shape3(3, 4, 5), p3[k], 3, 1);
        /* larger than the 32 x 32 tiles, with partial tiles at the edges */
        transpose_case(tl_shape3(37, 9, 70), p3[k], 2, 0);
    }
    /* ConvNeXt's channels-last and back, ShuffleNet's group swap, a 2-D transpose, rank 1 */
    transpose_case(tl_shape3(40, 7, 7), (const int[]){1, 2, 0}, 2, 0);
    transpose_case(tl_shape3(7, 7, 40), (const int[]){2, 0, 1}, 2, 0);
    transpose_case(shp(4, 3, 8, 5, 5), (const int[]){1, 0, 2, 3}, 2, 1);
    transpose_case(shp(2, 33, 65, 1, 1), (const int[]){1, 0}, 2, 0);
    transpose_case(tl_shape1(5), (const int[]){0}, 3, 1);
    transpose_case(tl_shape3(1, 1, 1), (const int[]){2, 0, 1}, 3, 1);
}

static void test_transpose_refused(void **state)
{
    (void)state;
    const bad_args bad[] = {
        {{3, 0, 0, 1}, 4, TLEARN_EINVAL}, /* an axis twice */
        {{3, 0, 1, 3}, 4, TLEARN_EINVAL}, /* out of range */
        {{3, 0, -1, 1}, 4, TLEARN_EINVAL},
        {{3, 0, 1}, 3, TLEARN_EINVAL},    /* too few */
        {{5, 0, 1, 2, 3, 4}, 6, TLEARN_EINVAL},
        {{2, 1, 0}, 3, TLEARN_ESHAPE},    /* rank 2 for a rank-3 input */
        {{4, 0, 1, 2, 3}, 5, TLEARN_ESHAPE},
    };
    expect_refused(&tl_transpose_ops, tl_shape3(2, 3, 4), bad, sizeof bad / sizeof bad[0]);
}

/* ---- through the public API ---- */

/* A DenseNet-like concatenation of 40 inputs (branches, the model input, a layer twice):
 * output channel k of the concat is input channel k % 2; then a channel shuffle. */
static void test_model_many_inputs(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create_input(&m, "x", TLEARN_DTYPE_FLOAT32, 3, (const int[]){2, 3, 2}));
    char names[38][16];
    const char *list[40];
    for (int k = 0; k < 38; k++) {
        snprintf(names[k], sizeof names[k], "s%d", k);
        OK(tlearn_model_set_next_input(m, "x"));
        OK(tlearn_model_add_slice(m, names[k], 0, k % 2, k % 2 + 1, 1));
        list[k] = names[k];
    }
    list[38] = "x";  /* channels 38, 39: the model input itself */
    list[39] = NULL;
    assert_int_equal(tlearn_model_add_concat(m, "cat", list, 40, 0), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "inputs[39] is NULL"));
    list[39] = "s5"; /* a layer the second time: channel 40 is channel 1 */
    OK(tlearn_model_add_concat(m, "cat", list, 40, 0));
    int rank, dims[4];
    OK(tlearn_model_layer_shape_nd(m, 38, &rank, dims, 4));
    assert_int_equal(rank, 3);
    assert_int_equal(dims[0], 41);
    int kind;
    OK(tlearn_model_layer_kind(m, 38, &kind));
    assert_int_equal(kind, TLEARN_LAYER_CONCAT);
    float x[2 * 12], out[2 * 41 * 6];
    for (int i = 0; i < 24; i++)
        x[i] = (float)i;
    OK(tlearn_model_predict(m, x, 2, out, sizeof out / sizeof out[0]));
    for (int e = 0; e < 2; e++)
        for (int c = 0; c < 41; c++)
            for (int p = 0; p < 6; p++) {
                int src = c < 38 ? c % 2 : c == 40 ? 1 : c - 38;
                assert_float_equal(out[(e * 41 + c) * 6 + p], x[(e * 2 + src) * 6 + p], 0.0f);
            }
    tlearn_model_destroy(&m);
}

static void test_checkpoint_round_trip(void **state)
{
    (void)state;
    char path[] = "/tmp/tlearn-shape-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tlearn_model *m, *l;
    OK(tlearn_model_create(&m, 3, 5, 6));
    OK(tlearn_model_add_conv2d(m, "conv", 8, 3, 1, 1, 1));
    OK(tlearn_model_add_slice(m, "left", 0, 0, 4, 1));
    OK(tlearn_model_set_next_input(m, "conv"));
    OK(tlearn_model_add_slice(m, "right", -3, 4, INT_MAX, 1));
    OK(tlearn_model_add_reshape(m, "groups", 4, (const int[]){2, 2, 0, -1}));
    OK(tlearn_model_add_transpose(m, "swap", 4, (const int[]){1, 0, 2, 3}));
    OK(tlearn_model_add_reshape(m, "back", 3, (const int[]){4, 5, 6}));
    OK(tlearn_model_add_slice(m, "every2", -1, -100, 6, 2));
    OK(tlearn_model_set_next_input(m, "left"));
    OK(tlearn_model_add_slice(m, "every2b", 2, 1, 6, 2));
    OK(tlearn_model_add_concat(m, "cat", (const char *const[]){"every2", "every2b", "every2"},
                               3, -3));
    OK(tlearn_model_add_transpose(m, "last", 3, (const int[]){1, 2, 0}));
    OK(tlearn_model_add_dense(m, "fc", 4));
    OK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_FULL));
    OK(tlearn_model_load(&l, NULL, path));
    unlink(path);
    int n1, n2;
    OK(tlearn_model_layer_count(m, &n1));
    OK(tlearn_model_layer_count(l, &n2));
    assert_int_equal(n1, n2);
    for (int i = 0; i < n1; i++) {
        tl_layer *a = m->layers[i], *b = l->layers[i];
        assert_ptr_equal(a->ops, b->ops);
        assert_int_equal(a->ninputs, b->ninputs);
        assert_memory_equal(a->input, b->input, sizeof(int) * (size_t)a->ninputs);
        assert_true(tl_shape_equal(a->out, b->out));
        int ia1[TL_MAX_IARGS], ia2[TL_MAX_IARGS], ni1, ni2, nf1, nf2;
        float fa[TL_MAX_FARGS];
        a->ops->arguments(a, ia1, &ni1, fa, &nf1);
        b->ops->arguments(b, ia2, &ni2, fa, &nf2);
        assert_int_equal(ni1, ni2);
        assert_memory_equal(ia1, ia2, sizeof(int) * (size_t)ni1);
    }
    assert_true(tl_shape_equal(m->layers[8]->out, tl_shape3(12, 5, 3)));
    float x[2 * 90], o1[8], o2[8];
    test_rng r = {3};
    test_fill(&r, x, 180, -1, 1);
    OK(tlearn_model_predict(m, x, 2, o1, 8));
    OK(tlearn_model_predict(l, x, 2, o2, 8));
    assert_memory_equal(o1, o2, sizeof o1);
    tlearn_model_destroy(&l);
    tlearn_model_destroy(&m);
}

/* Bad arguments at the public calls: the status, a message, and no layer added. */
static void test_public_refusals(void **state)
{
    (void)state;
    tlearn_model *m;
    OK(tlearn_model_create(&m, 4, 3, 3));
    OK(tlearn_model_add_conv2d(m, "a", 4, 1, 1, 0, 1));
    const char *two[2] = {"a", "input"}, *unknown[2] = {"a", "nope"};
    assert_int_equal(tlearn_model_add_concat(NULL, "c", two, 2, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_concat(m, "c", NULL, 2, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_concat(m, "c", two, 1, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_concat(m, "c", two, 257, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_concat(m, "c", unknown, 2, 0), TLEARN_ENOTFOUND);
    assert_non_null(strstr(tlearn_errmsg(), "'nope'"));
    assert_int_equal(tlearn_model_add_concat(m, "c", two, 2, 3), TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "tlearn_model_add_concat"));
    assert_non_null(strstr(tlearn_errmsg(), "'c'"));
    assert_int_equal(tlearn_model_add_concat(m, NULL, two, 2, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_concat(m, "a", two, 2, 0), TLEARN_EINVAL); /* taken */
    assert_int_equal(tlearn_model_add_slice(NULL, "s", 0, 0, 1, 1), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_slice(m, "s", 0, 0, 1, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_slice(m, "s", 0, 3, 1, 1), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_slice(m, "s", 3, 0, 1, 1), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_reshape(NULL, "r", 1, (const int[]){-1}), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_reshape(m, "r", 1, NULL), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_reshape(m, "r", 0, (const int[]){-1}), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_reshape(m, "r", 5, (const int[]){1, 1, 1, 1, 36}),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_reshape(m, "r", 2, (const int[]){5, -1}), TLEARN_ESHAPE);
    assert_int_equal(tlearn_model_add_transpose(NULL, "t", 1, (const int[]){0}), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transpose(m, "t", 3, NULL), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transpose(m, "t", 9, (const int[]){0}), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transpose(m, "t", 3, (const int[]){0, 2, 2}),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_add_transpose(m, "t", 2, (const int[]){1, 0}), TLEARN_ESHAPE);
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 1);
    /* a pending next input survives a refused call and is used by the next good one */
    OK(tlearn_model_set_next_input(m, "input"));
    assert_int_equal(tlearn_model_add_slice(m, "s", 0, 0, 1, 0), TLEARN_EINVAL);
    OK(tlearn_model_add_slice(m, "s", 0, 0, 1, 1));
    assert_int_equal(m->layers[1]->input[0], -1);
    tlearn_model_destroy(&m);
}

static void test_registry(void **state)
{
    (void)state;
    const struct { const tl_layer_ops *ops; int kind; const char *name; } k[] = {
        {&tl_concat_ops, 14, "concat"},
        {&tl_slice_ops, 15, "slice"},
        {&tl_reshape_ops, 16, "reshape"},
        {&tl_transpose_ops, 17, "transpose"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        assert_int_equal(k[i].ops->kind, k[i].kind);
        assert_ptr_equal(tl_layer_ops_by_kind(k[i].kind), k[i].ops);
        assert_ptr_equal(tl_layer_ops_by_name(k[i].name), k[i].ops);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_concat_same_input_twice),
        cmocka_unit_test(test_concat_refused),
        cmocka_unit_test(test_slice),
        cmocka_unit_test(test_slice_refused),
        cmocka_unit_test(test_reshape),
        cmocka_unit_test(test_reshape_refused),
        cmocka_unit_test(test_transpose),
        cmocka_unit_test(test_transpose_refused),
        cmocka_unit_test(test_model_many_inputs),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_public_refusals),
        cmocka_unit_test(test_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
