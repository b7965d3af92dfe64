/* ONNX export's refusals: NULL and empty arguments, opsets out of range, a model without
 * layers, non-finite weights (nothing written), layers of a kind with no ONNX mapping (all
 * named in one message), an unwritable path; every allocation failed in turn (ENOMEM,
 * nothing leaked, no file, *data NULL); and the file equal to the buffer. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/model.h"

#define OK(call)                                                                              \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        if (rc_ != TLEARN_OK)                                                                 \
            fail_msg("%s returned %d: %s", #call, rc_, tlearn_errmsg());                      \
    } while (0)

static char dir[] = "/tmp/tlearn-onnx-export-XXXXXX";

static tlearn_model *small_cnn(void)
{
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, 3, 8, 8));
    OK(tlearn_model_add_conv2d(m, "conv", 4, 3, 1, 1, 1));
    OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_global_avgpool(m, "gap"));
    OK(tlearn_model_add_dense(m, "fc", 5));
    return m;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Files in the test directory (a temporary file left behind shows up here). */
static int dir_entries(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static void test_arguments(void **state)
{
    (void)state;
    tlearn_model *m = small_cnn();
    char path[256];
    snprintf(path, sizeof path, "%s/a.onnx", dir);
    void *data = (void *)1;
    size_t size = 7;
    assert_int_equal(tlearn_model_export_onnx(NULL, path, 17), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "model is NULL"));
    assert_int_equal(tlearn_model_export_onnx(m, NULL, 17), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "path"));
    assert_int_equal(tlearn_model_export_onnx(m, "", 17), TLEARN_EINVAL);
    const int bad[] = {-1, 1, 12, 18, 100};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(tlearn_model_export_onnx(m, path, bad[i]), TLEARN_EINVAL);
        assert_non_null(strstr(tlearn_errmsg(), "opset"));
        assert_int_equal(tlearn_model_export_onnx_buffer(m, bad[i], &data, &size),
                         TLEARN_EINVAL);
        assert_null(data);
        assert_int_equal(size, 0);
    }
    assert_false(file_exists(path));
    assert_int_equal(tlearn_model_export_onnx_buffer(m, 17, NULL, &size), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "data"));
    assert_int_equal(tlearn_model_export_onnx_buffer(m, 17, &data, NULL), TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "size"));
    assert_int_equal(tlearn_model_export_onnx_buffer(NULL, 17, &data, &size), TLEARN_EINVAL);
    snprintf(path, sizeof path, "%s/missing/a.onnx", dir);
    assert_int_equal(tlearn_model_export_onnx(m, path, 17), TLEARN_EIO);
    tlearn_model *empty = NULL;
    OK(tlearn_model_create(&empty, 3, 8, 8));
    assert_int_equal(tlearn_model_export_onnx_buffer(empty, 0, &data, &size), TLEARN_ESTATE);
    tlearn_model_destroy(&empty);
    tlearn_model_destroy(&m);
}

/* The file holds the buffer's bytes; opset 0 is 17. */
static void test_file_equals_buffer(void **state)
{
    (void)state;
    tlearn_model *m = small_cnn();
    char path[256];
    snprintf(path, sizeof path, "%s/b.onnx", dir);
    void *d0 = NULL, *d17 = NULL;
    size_t n0 = 0, n17 = 0;
    OK(tlearn_model_export_onnx(m, path, 0));
    OK(tlearn_model_export_onnx_buffer(m, 0, &d0, &n0));
    OK(tlearn_model_export_onnx_buffer(m, 17, &d17, &n17));
    assert_true(n0 > 0);
    assert_int_equal(n0, n17);
    assert_memory_equal(d0, d17, n0);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *buf = malloc(n0 + 1);
    assert_int_equal(fread(buf, 1, n0 + 1, f), n0);
    fclose(f);
    assert_memory_equal(buf, d0, n0);
    free(buf);
    /* the importer reads it back */
    tlearn_model *back = NULL;
    OK(tlearn_model_import_onnx_buffer(&back, d0, n0));
    tlearn_model_destroy(&back);
    tlearn_free(d0);
    tlearn_free(d17);
    unlink(path);
    tlearn_model_destroy(&m);
}

static void test_nonfinite(void **state)
{
    (void)state;
    tlearn_model *m = small_cnn();
    char path[256];
    snprintf(path, sizeof path, "%s/c.onnx", dir);
    /* set_tensor refuses NaN: a diverged training run is what leaves one */
    float *w = m->layers[tl_model_find(m, "fc")]->param[0].t.data;
    w[7] = NAN;
    assert_int_equal(tlearn_model_export_onnx(m, path, 17), TLEARN_ENONFINITE);
    assert_non_null(strstr(tlearn_errmsg(), "fc.weight"));
    assert_false(file_exists(path));
    void *data = NULL;
    size_t size = 0;
    assert_int_equal(tlearn_model_export_onnx_buffer(m, 13, &data, &size), TLEARN_ENONFINITE);
    assert_null(data);
    w[7] = 0.5f;
    m->layers[tl_model_find(m, "bn")]->param[3].t.data[2] = INFINITY; /* running_var */
    assert_int_equal(tlearn_model_export_onnx_buffer(m, 13, &data, &size), TLEARN_ENONFINITE);
    assert_non_null(strstr(tlearn_errmsg(), "bn.running_var"));
    assert_int_equal(dir_entries(), 0);
    tlearn_model_destroy(&m);
}

/* A kind the exporter does not know (kind 999, as a future kind would be). */
static int fake_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    (void)L, (void)ia, (void)fa;
    return ni == 0 && nf == 0 ? TLEARN_OK : TLEARN_EINVAL;
}

static void fake_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    (void)L, (void)ia, (void)fa;
    *ni = *nf = 0;
}

static int fake_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    L->out = L->in[0];
    return TLEARN_OK;
}

static void fake_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                         size_t n, float *saved)
{
    (void)ex, (void)saved;
    memcpy(out, in[0], sizeof(float) * n * tl_shape_size(L->out));
}

static const tl_layer_ops fake_ops = {
    .kind = 999,
    .kind_name = "fake",
    .configure = fake_configure,
    .arguments = fake_arguments,
    .setup = fake_setup,
    .forward = fake_forward,
};

static void test_unsupported(void **state)
{
    (void)state;
    tlearn_model *m = NULL;
    OK(tlearn_model_create(&m, 3, 8, 8));
    OK(tlearn_model_add_conv2d(m, "conv", 4, 3, 1, 1, 1));
    OK(tl_model_add(m, "test", &fake_ops, "odd1", NULL, 0, NULL, 0, NULL, 0));
    OK(tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0.0f));
    OK(tl_model_add(m, "test", &fake_ops, "odd2", NULL, 0, NULL, 0, NULL, 0));
    OK(tlearn_model_add_global_avgpool(m, "gap"));
    char path[256];
    snprintf(path, sizeof path, "%s/d.onnx", dir);
    assert_int_equal(tlearn_model_export_onnx(m, path, 17), TLEARN_EUNSUPPORTED);
    const char *msg = tlearn_errmsg();
    assert_non_null(strstr(msg, "2 layers"));
    assert_non_null(strstr(msg, "'odd1' (fake)"));
    assert_non_null(strstr(msg, "'odd2' (fake)"));
    assert_null(strstr(msg, "'relu'"));
    assert_false(file_exists(path));
    /* a layer no output depends on is not exported, so it cannot stop the export */
    const char *outs[] = {"conv"};
    OK(tlearn_model_set_outputs(m, outs, 1));
    OK(tlearn_model_export_onnx(m, path, 17));
    unlink(path);
    tlearn_model_destroy(&m);
}

/* A text encoder with a mask and a ViT-style stem: the handlers with the most nodes. */
static tlearn_model *small_encoder(void)
{
    tlearn_model *m = NULL;
    int t = 5;
    OK(tlearn_model_create_input(&m, "ids", TLEARN_DTYPE_INT32, 1, &t));
    OK(tlearn_model_add_input(m, "mask", TLEARN_DTYPE_INT32, 1, &t));
    OK(tlearn_model_add_embedding(m, "emb", 11, 8, 0));
    OK(tlearn_model_add_position_embedding(m, "pos", 9, 0));
    OK(tlearn_model_add_attention(m, "att", 2, 1, "mask"));
    OK(tlearn_model_add_layernorm(m, "ln", 1, 1e-5f, 0));
    OK(tlearn_model_add_token_pool(m, "pool", 1, "mask"));
    OK(tlearn_model_add_linear(m, "head", 3, 1));
    return m;
}

/* Every allocation the export makes, failed in turn, for both models. */
static void sweep(tlearn_model *m, const char *path);

static void test_alloc_failures(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/e.onnx", dir);
    tlearn_model *m = small_cnn();
    sweep(m, path);
    tlearn_model_destroy(&m);
    m = small_encoder();
    sweep(m, path);
    tlearn_model_destroy(&m);
}

static void sweep(tlearn_model *m, const char *path)
{
    int failures = 0;
    for (uint64_t k = 1;; k++) {
        int64_t live = tl_alloc_live();
        void *data = (void *)1;
        size_t size = 1;
        tl_alloc_fail_nth(k);
        int rc = tlearn_model_export_onnx_buffer(m, 17, &data, &size);
        tl_alloc_fail_nth(0);
        if (rc == TLEARN_OK) {
            tlearn_free(data);
            break;
        }
        failures++;
        assert_int_equal(rc, TLEARN_ENOMEM);
        assert_null(data);
        assert_int_equal(size, 0);
        assert_int_equal(tl_alloc_live(), live);
        tl_alloc_fail_nth(k);
        rc = tlearn_model_export_onnx(m, path, 17);
        tl_alloc_fail_nth(0);
        if (rc == TLEARN_OK) /* the file call allocates differently at its end */
            unlink(path);
        else
            assert_int_equal(rc, TLEARN_ENOMEM);
        assert_int_equal(tl_alloc_live(), live);
        assert_int_equal(dir_entries(), 0);
        assert_true(k < 100000);
    }
    assert_true(failures > 10);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_file_equals_buffer),
        cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
