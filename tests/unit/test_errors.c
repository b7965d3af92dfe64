/* Error paths through the public API (the shared object, as a host links it): every entry
 * point of the foundation refuses bad arguments with the documented status and a message
 * that names the function and the argument; nothing aborts or prints; a non-finite loss or
 * gradient leaves every weight as it was.
 *
 * Before each checked call the thread's message is set to a marker (a failing metadata
 * lookup), so a stale message cannot pass for the call's own. Output to stdout and stderr
 * is captured for each test and must be empty. */
#include <limits.h>
#include <pthread.h>
#include <unistd.h>

#include "common.h"

/* ---- output capture ---- */

static int saved_fd[2] = {-1, -1};
static FILE *capture_file;

static void capture_begin(void)
{
    fflush(stdout);
    fflush(stderr);
    capture_file = tmpfile();
    assert_non_null(capture_file);
    for (int i = 0; i < 2; i++) {
        saved_fd[i] = dup(i + 1);
        dup2(fileno(capture_file), i + 1);
    }
}

/* Restore stdout/stderr; returns how many bytes were written meanwhile. */
static long capture_end(void)
{
    if (!capture_file)
        return 0;
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < 2; i++) {
        dup2(saved_fd[i], i + 1);
        close(saved_fd[i]);
    }
    fseek(capture_file, 0, SEEK_END);
    long n = ftell(capture_file);
    fclose(capture_file);
    capture_file = NULL;
    return n;
}

/* After every test: if an assertion left output captured, restore it and show it. */
static int restore_output(void **state)
{
    (void)state;
    if (!capture_file)
        return 0;
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < 2; i++) {
        dup2(saved_fd[i], i + 1);
        close(saved_fd[i]);
    }
    rewind(capture_file);
    char buf[512];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, capture_file)) > 0)
        fwrite(buf, 1, k, stderr);
    fclose(capture_file);
    capture_file = NULL;
    return 0;
}

static void capture_check(void)
{
    long n = capture_end();
    if (n != 0)
        fail_msg("the library wrote %ld bytes to stdout/stderr", n);
}

/* ---- checked calls ---- */

static tlearn_model *marker_model;

static void set_marker(void)
{
    const char *v;
    if (!marker_model)
        tlearn_model_create(&marker_model, 1, 1, 1);
    tlearn_model_get_metadata(marker_model, "zz-marker", &v);
}

static void check_err(int rc, int want, const char *fn, const char *word, const char *call,
                      int line)
{
    const char *msg = tlearn_errmsg();
    const char *why = NULL;
    if (rc != want)
        why = "wrong status";
    else if (!msg || !*msg || strstr(msg, "zz-marker"))
        why = "no message of its own";
    else if (!strstr(msg, fn))
        why = "message does not name the function";
    else if (word && !strstr(msg, word))
        why = "message does not name the argument";
    if (why) {
        capture_end();
        fail_msg("line %d: %s: returned %d (%s), expected %d (%s); message \"%s\", wanted "
                 "\"%s\" and \"%s\"", line, call, rc, tlearn_strerror(rc), want,
                 tlearn_strerror(want), msg ? msg : "(null)", why, fn, word ? word : "");
    }
}

#define ERR(want, fn, word, call)                                                             \
    do {                                                                                      \
        set_marker();                                                                         \
        int rc_ = (call);                                                                     \
        check_err(rc_, want, fn, word, #call, __LINE__);                                      \
    } while (0)

#define MC "tlearn_model_create"

static tlearn_model *small_model(void)
{
    tlearn_model *m;
    OK(tlearn_model_create(&m, 2, 2, 1));
    OK(tlearn_model_add_dense(m, "fc1", 5));
    OK(tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", 3));
    return m;
}

/* ---- status, version, lifecycle ---- */

static void test_strerror(void **state)
{
    (void)state;
    capture_begin();
    const char *seen[12];
    for (int code = 0; code >= -11; code--) {
        const char *s = tlearn_strerror(code);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_string_not_equal(s, "unknown status");
        for (int k = 0; k < -code; k++)
            assert_string_not_equal(s, seen[k]); /* every code has its own text */
        seen[-code] = s;
    }
    int unknown[] = {1, -12, 100, -1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        assert_string_equal(tlearn_strerror(unknown[i]), "unknown status");
    assert_non_null(tlearn_errmsg());
    capture_check();
}

static void test_version(void **state)
{
    (void)state;
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", TLEARN_VERSION_MAJOR, TLEARN_VERSION_MINOR,
             TLEARN_VERSION_PATCH);
    assert_string_equal(tlearn_version_string(), expect);
    assert_string_equal(TLEARN_VERSION_STRING, expect);
    unsigned hex = tlearn_version_hex();
    assert_int_equal(hex, (unsigned)TLEARN_VERSION_HEX);
    assert_int_equal(hex >> 24, TLEARN_VERSION_MAJOR);
    assert_int_equal((hex >> 16) & 0xff, TLEARN_VERSION_MINOR);
    assert_int_equal((hex >> 8) & 0xff, TLEARN_VERSION_PATCH);
    assert_int_equal(hex & 0xff, 0);
}

static void test_create_destroy(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m = (tlearn_model *)&m; /* garbage: must become NULL on failure */
    ERR(TLEARN_EINVAL, MC, "out is NULL", tlearn_model_create(NULL, 1, 1, 1));
    ERR(TLEARN_EINVAL, MC, "shape", tlearn_model_create(&m, 0, 1, 1));
    assert_null(m);
    ERR(TLEARN_EINVAL, MC, "shape", tlearn_model_create(&m, 1, -1, 1));
    ERR(TLEARN_EINVAL, MC, "shape", tlearn_model_create(&m, 1, 1, INT_MIN));
    ERR(TLEARN_EINVAL, MC, "2^31", tlearn_model_create(&m, 65536, 65536, 1));
    assert_null(m);
    tlearn_model_destroy(NULL);
    tlearn_model_destroy(&m); /* *m == NULL */
    OK(tlearn_model_create(&m, 1, 1, 1));
    tlearn_model_destroy(&m);
    assert_null(m);
    tlearn_model_destroy(&m);
    capture_check();
}

static void test_setters(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m = small_model();
    ERR(TLEARN_EINVAL, "tlearn_model_set_threads", "model is NULL", tlearn_model_set_threads(NULL, 1));
    ERR(TLEARN_EINVAL, "tlearn_model_set_threads", "threads is 0", tlearn_model_set_threads(m, 0));
    ERR(TLEARN_EINVAL, "tlearn_model_set_threads", "threads is 1025", tlearn_model_set_threads(m, 1025));
    OK(tlearn_model_set_threads(m, 2));
    ERR(TLEARN_EINVAL, "tlearn_model_set_seed", "model is NULL", tlearn_model_set_seed(NULL, 1));
    ERR(TLEARN_EINVAL, "tlearn_model_set_training", "model is NULL", tlearn_model_set_training(NULL, 1));
    ERR(TLEARN_EINVAL, "tlearn_model_set_training", "training is 2", tlearn_model_set_training(m, 2));
    ERR(TLEARN_EINVAL, "tlearn_model_set_training", "training is -1", tlearn_model_set_training(m, -1));
    ERR(TLEARN_EINVAL, "tlearn_model_set_loss", "model is NULL", tlearn_model_set_loss(NULL, 1));
    ERR(TLEARN_EINVAL, "tlearn_model_set_loss", "unknown loss 0", tlearn_model_set_loss(m, 0));
    ERR(TLEARN_EINVAL, "tlearn_model_set_loss", "unknown loss 5", tlearn_model_set_loss(m, 5));
    ERR(TLEARN_EINVAL, "tlearn_model_set_next_input", "model",
        tlearn_model_set_next_input(NULL, "fc1"));
    ERR(TLEARN_ENOTFOUND, "tlearn_model_set_next_input", "'nope'",
        tlearn_model_set_next_input(m, "nope"));
    tlearn_model_destroy(&m);
    capture_check();
}

static void test_add_layers(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m = small_model();
    const char *AD = "tlearn_model_add_dense";
    char long_name[80];
    memset(long_name, 'a', 64);
    long_name[64] = '\0';
    ERR(TLEARN_EINVAL, AD, "model is NULL", tlearn_model_add_dense(NULL, "x", 3));
    ERR(TLEARN_EINVAL, AD, "name is NULL", tlearn_model_add_dense(m, NULL, 3));
    ERR(TLEARN_EINVAL, AD, "name", tlearn_model_add_dense(m, "", 3));
    ERR(TLEARN_EINVAL, AD, "name", tlearn_model_add_dense(m, long_name, 3));
    long_name[63] = '\0'; /* 63 bytes is the longest allowed */
    OK(tlearn_model_add_dense(m, long_name, 3));
    ERR(TLEARN_EINVAL, AD, "name", tlearn_model_add_dense(m, "fc*", 3));
    ERR(TLEARN_EINVAL, AD, "name", tlearn_model_add_dense(m, "f?", 3));
    ERR(TLEARN_EINVAL, AD, "name", tlearn_model_add_dense(m, "a[1]", 3));
    ERR(TLEARN_EINVAL, AD, "name", tlearn_model_add_dense(m, "two words", 3));
    ERR(TLEARN_EINVAL, AD, "name", tlearn_model_add_dense(m, "tab\t", 3));
    ERR(TLEARN_EINVAL, AD, "'fc1'", tlearn_model_add_dense(m, "fc1", 3)); /* duplicate */
    ERR(TLEARN_EINVAL, "tlearn_model_add_activation", "'relu'",
        tlearn_model_add_activation(m, "relu", TLEARN_ACT_TANH, 0));
    ERR(TLEARN_EINVAL, AD, "units", tlearn_model_add_dense(m, "fc9", 0));
    ERR(TLEARN_EINVAL, AD, "units", tlearn_model_add_dense(m, "fc9", -5));
    ERR(TLEARN_EINVAL, "tlearn_model_add_flatten", "model is NULL", tlearn_model_add_flatten(NULL, "f"));
    ERR(TLEARN_EINVAL, "tlearn_model_add_flatten", "name is NULL", tlearn_model_add_flatten(m, NULL));
    const char *AA = "tlearn_model_add_activation";
    ERR(TLEARN_EINVAL, AA, "unknown activation 0", tlearn_model_add_activation(m, "a", 0, 0));
    ERR(TLEARN_EINVAL, AA, "unknown activation 12", tlearn_model_add_activation(m, "a", 12, 0));
    ERR(TLEARN_EINVAL, AA, "parameter",
        tlearn_model_add_activation(m, "a", TLEARN_ACT_LEAKY_RELU, NAN));
    ERR(TLEARN_EINVAL, AA, "parameter",
        tlearn_model_add_activation(m, "a", TLEARN_ACT_LEAKY_RELU, INFINITY));
    /* Failed adds leave the model as it was: 4 layers, the name "fc9" still free. */
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 4);
    OK(tlearn_model_add_dense(m, "fc9", 2));
    tlearn_model_destroy(&m);
    capture_check();
}

static void test_introspection_errors(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m = small_model();
    int i;
    size_t z;
    const char *s;
    ERR(TLEARN_EINVAL, "tlearn_model_layer_count", "model is NULL", tlearn_model_layer_count(NULL, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_count", "count is NULL", tlearn_model_layer_count(m, NULL));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_index", "model",
        tlearn_model_layer_index(NULL, "fc1", &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_index", "name is NULL", tlearn_model_layer_index(m, NULL, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_index", "index is NULL",
        tlearn_model_layer_index(m, "fc1", NULL));
    ERR(TLEARN_ENOTFOUND, "tlearn_model_layer_index", "'fc7'",
        tlearn_model_layer_index(m, "fc7", &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_name", "model is NULL", tlearn_model_layer_name(NULL, 0, &s));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_name", "index -1", tlearn_model_layer_name(m, -1, &s));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_name", "index 3", tlearn_model_layer_name(m, 3, &s));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_name", "name is NULL", tlearn_model_layer_name(m, 0, NULL));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_kind", "model is NULL", tlearn_model_layer_kind(NULL, 0, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_kind", "index 3", tlearn_model_layer_kind(m, 3, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_kind", "kind is NULL", tlearn_model_layer_kind(m, 0, NULL));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_shape", "model",
        tlearn_model_layer_shape(NULL, 0, &i, &i, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_shape", "index -2",
        tlearn_model_layer_shape(m, -2, &i, &i, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_shape", "index 3",
        tlearn_model_layer_shape(m, 3, &i, &i, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_param_count", "model",
        tlearn_model_layer_param_count(NULL, 0, &z));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_param_count", "index 5",
        tlearn_model_layer_param_count(m, 5, &z));
    ERR(TLEARN_EINVAL, "tlearn_model_layer_param_count", "count is NULL",
        tlearn_model_layer_param_count(m, 0, NULL));
    ERR(TLEARN_EINVAL, "tlearn_model_param_count", "model is NULL", tlearn_model_param_count(NULL, &z, &z));
    ERR(TLEARN_EINVAL, "tlearn_model_tensor_count", "model is NULL", tlearn_model_tensor_count(NULL, &i));
    ERR(TLEARN_EINVAL, "tlearn_model_tensor_count", "count is NULL", tlearn_model_tensor_count(m, NULL));
    ERR(TLEARN_EINVAL, "tlearn_model_tensor_info", "model",
        tlearn_model_tensor_info(NULL, 0, &s, NULL, NULL, NULL));
    ERR(TLEARN_EINVAL, "tlearn_model_tensor_info", "index 4",
        tlearn_model_tensor_info(m, 4, &s, NULL, NULL, NULL));
    ERR(TLEARN_EINVAL, "tlearn_model_workspace_bytes", "model",
        tlearn_model_workspace_bytes(NULL, &z));
    ERR(TLEARN_EINVAL, "tlearn_model_workspace_bytes", "bytes is NULL",
        tlearn_model_workspace_bytes(m, NULL));

    /* Named tensors. */
    float w[20], nanv[20];
    const char *GT = "tlearn_model_get_tensor", *ST = "tlearn_model_set_tensor";
    ERR(TLEARN_EINVAL, GT, "model is NULL", tlearn_model_get_tensor(NULL, "fc1.weight", w, 20));
    ERR(TLEARN_EINVAL, GT, "name is NULL", tlearn_model_get_tensor(m, NULL, w, 10));
    ERR(TLEARN_EINVAL, GT, "buffer is NULL", tlearn_model_get_tensor(m, "fc1.weight", NULL, 20));
    ERR(TLEARN_ENOTFOUND, GT, "'fc3.weight'", tlearn_model_get_tensor(m, "fc3.weight", w, 20));
    ERR(TLEARN_ENOTFOUND, GT, "'fc1.kernel'", tlearn_model_get_tensor(m, "fc1.kernel", w, 20));
    ERR(TLEARN_ENOTFOUND, GT, "'fc1'", tlearn_model_get_tensor(m, "fc1", w, 20));
    ERR(TLEARN_ENOTFOUND, GT, "'relu.weight'", tlearn_model_get_tensor(m, "relu.weight", w, 20));
    ERR(TLEARN_ESHAPE, GT, "buffer length is 19", tlearn_model_get_tensor(m, "fc1.weight", w, 19));
    ERR(TLEARN_ESHAPE, GT, "buffer length is 21", tlearn_model_get_tensor(m, "fc1.weight", w, 21));
    OK(tlearn_model_get_tensor(m, "fc1.weight", w, 20));
    memcpy(nanv, w, sizeof w);
    nanv[3] = NAN;
    ERR(TLEARN_EINVAL, ST, "not finite", tlearn_model_set_tensor(m, "fc1.weight", nanv, 20));
    nanv[3] = -INFINITY;
    ERR(TLEARN_EINVAL, ST, "not finite", tlearn_model_set_tensor(m, "fc1.weight", nanv, 20));
    float after[20];
    OK(tlearn_model_get_tensor(m, "fc1.weight", after, 20));
    assert_memory_equal(after, w, sizeof w); /* refused values were not written */
    ERR(TLEARN_EINVAL, ST, "model is NULL", tlearn_model_set_tensor(NULL, "fc1.weight", w, 20));
    ERR(TLEARN_EINVAL, ST, "buffer is NULL", tlearn_model_set_tensor(m, "fc1.weight", NULL, 20));
    ERR(TLEARN_ESHAPE, ST, "buffer length is 4", tlearn_model_set_tensor(m, "fc1.bias", w, 4));
    ERR(TLEARN_ENOTFOUND, ST, "'x.bias'", tlearn_model_set_tensor(m, "x.bias", w, 5));
    const char *GG = "tlearn_model_get_grad";
    ERR(TLEARN_ESTATE, GG, "nothing computed", tlearn_model_get_grad(m, "fc1.bias", w, 5));
    ERR(TLEARN_EINVAL, GG, "model is NULL", tlearn_model_get_grad(NULL, "fc1.bias", w, 5));
    ERR(TLEARN_ESHAPE, GG, "buffer length is 6", tlearn_model_get_grad(m, "fc1.bias", w, 6));
    ERR(TLEARN_ENOTFOUND, GG, "'fc1.gamma'", tlearn_model_get_grad(m, "fc1.gamma", w, 5));
    tlearn_model_destroy(&m);
    capture_check();
}

static void test_compute_errors(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m = small_model(), *empty;
    OK(tlearn_model_create(&empty, 2, 2, 1));
    float x[4 * 4] = {0}, out[4 * 3];
    int32_t y[4] = {0, 1, 2, 1};
    const char *P = "tlearn_model_predict";
    ERR(TLEARN_EINVAL, P, "model is NULL", tlearn_model_predict(NULL, x, 4, out, 12));
    ERR(TLEARN_ESHAPE, P, "no layers", tlearn_model_predict(empty, x, 4, out, 12));
    ERR(TLEARN_EINVAL, P, "x is NULL", tlearn_model_predict(m, NULL, 4, out, 12));
    ERR(TLEARN_EINVAL, P, "out is NULL", tlearn_model_predict(m, x, 4, NULL, 12));
    ERR(TLEARN_EINVAL, P, "n is 0", tlearn_model_predict(m, x, 0, out, 0));
    ERR(TLEARN_EINVAL, P, "out_len is 11", tlearn_model_predict(m, x, 4, out, 11));
    ERR(TLEARN_EINVAL, P, "out_len", tlearn_model_predict(m, x, 4, out, 13));
    ERR(TLEARN_EINVAL, P, "out_len", tlearn_model_predict(m, x, 4, out, 3));
    ERR(TLEARN_EINVAL, P, "out_len", tlearn_model_predict(m, x, SIZE_MAX / 2, out, 12));

    const char *E = "tlearn_model_evaluate";
    float loss, acc;
    ERR(TLEARN_EINVAL, E, "model is NULL", tlearn_model_evaluate(NULL, x, y, 4, &loss, &acc));
    ERR(TLEARN_EINVAL, E, "x is NULL", tlearn_model_evaluate(m, NULL, y, 4, &loss, &acc));
    ERR(TLEARN_EINVAL, E, "labels", tlearn_model_evaluate(m, x, NULL, 4, &loss, &acc));
    ERR(TLEARN_EINVAL, E, "n is 0", tlearn_model_evaluate(m, x, y, 0, &loss, &acc));
    ERR(TLEARN_ESHAPE, E, "no layers", tlearn_model_evaluate(empty, x, y, 4, &loss, &acc));
    int32_t bad[4] = {0, 1, 3, 1}, neg[4] = {0, -1, 0, 0};
    ERR(TLEARN_EINVAL, E, "labels[2]", tlearn_model_evaluate(m, x, bad, 4, &loss, &acc));
    ERR(TLEARN_EINVAL, E, "labels[1]", tlearn_model_evaluate(m, x, neg, 4, &loss, &acc));

    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    const char *T = "tlearn_model_train_step";
    ERR(TLEARN_EINVAL, T, "model is NULL", tlearn_model_train_step(NULL, o, x, y, 4, &loss));
    ERR(TLEARN_EINVAL, T, "optimizer is NULL", tlearn_model_train_step(m, NULL, x, y, 4, &loss));
    ERR(TLEARN_EINVAL, T, "x is NULL", tlearn_model_train_step(m, o, NULL, y, 4, &loss));
    ERR(TLEARN_EINVAL, T, "labels", tlearn_model_train_step(m, o, x, NULL, 4, &loss));
    ERR(TLEARN_EINVAL, T, "n is 0", tlearn_model_train_step(m, o, x, y, 0, &loss));
    ERR(TLEARN_EINVAL, T, "labels[2]", tlearn_model_train_step(m, o, x, bad, 4, &loss));
    ERR(TLEARN_ESHAPE, T, "no layers", tlearn_model_train_step(empty, o, x, y, 4, &loss));
    const char *TM = "tlearn_model_train_step_mse";
    ERR(TLEARN_ESTATE, TM, "not MSE", tlearn_model_train_step_mse(m, o, x, out, 4, &loss));
    ERR(TLEARN_EINVAL, TM, "targets is NULL", tlearn_model_train_step_mse(m, o, x, NULL, 4, &loss));
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_MSE));
    ERR(TLEARN_ESTATE, T, "loss is MSE", tlearn_model_train_step(m, o, x, y, 4, &loss));
    float targets[12] = {0};
    targets[7] = NAN;
    ERR(TLEARN_EINVAL, TM, "targets[7]", tlearn_model_train_step_mse(m, o, x, targets, 4, &loss));
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_SOFTMAX_CE));

    /* Cross-entropy over one output is meaningless. */
    tlearn_model *one;
    OK(tlearn_model_create(&one, 4, 1, 1));
    OK(tlearn_model_add_dense(one, "fc", 1));
    int32_t zeros[4] = {0};
    ERR(TLEARN_ESHAPE, T, "2 outputs", tlearn_model_train_step(one, o, x, zeros, 4, &loss));
    tlearn_model_destroy(&one);

    const char *CG = "tlearn_model_compute_gradients";
    float dx[16];
    ERR(TLEARN_EINVAL, CG, "model is NULL", tlearn_model_compute_gradients(NULL, x, y, 4, &loss, dx, 16));
    ERR(TLEARN_EINVAL, CG, "dx_len is 15", tlearn_model_compute_gradients(m, x, y, 4, &loss, dx, 15));
    ERR(TLEARN_EINVAL, CG, "labels[2]",
        tlearn_model_compute_gradients(m, x, bad, 4, &loss, dx, 16));
    ERR(TLEARN_EINVAL, CG, "labels", tlearn_model_compute_gradients(m, x, NULL, 4, &loss, dx, 16));

    const char *F = "tlearn_model_fit";
    ERR(TLEARN_EINVAL, F, "model is NULL", tlearn_model_fit(NULL, o, x, y, 4, 2, 1, 1, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "optimizer is NULL", tlearn_model_fit(m, NULL, x, y, 4, 2, 1, 1, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "x is NULL", tlearn_model_fit(m, o, NULL, y, 4, 2, 1, 1, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "labels", tlearn_model_fit(m, o, x, NULL, 4, 2, 1, 1, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "n is 0", tlearn_model_fit(m, o, x, y, 0, 2, 1, 1, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "batch is 0", tlearn_model_fit(m, o, x, y, 4, 0, 1, 1, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "epochs is 0", tlearn_model_fit(m, o, x, y, 4, 2, 0, 1, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "shuffle is 2", tlearn_model_fit(m, o, x, y, 4, 2, 1, 2, NULL, NULL));
    ERR(TLEARN_EINVAL, F, "labels[2]", tlearn_model_fit(m, o, x, bad, 4, 2, 1, 1, NULL, NULL));

    /* Features and the feature cache. */
    const char *FE = "tlearn_model_features", *PF = "tlearn_model_predict_from";
    float feat[4 * 5];
    ERR(TLEARN_EINVAL, FE, "model is NULL", tlearn_model_features(NULL, "relu", x, 4, feat, 20));
    ERR(TLEARN_EINVAL, FE, "layer is NULL", tlearn_model_features(m, NULL, x, 4, feat, 20));
    ERR(TLEARN_ENOTFOUND, FE, "'nope'", tlearn_model_features(m, "nope", x, 4, feat, 20));
    ERR(TLEARN_EINVAL, FE, "out_len is 12", tlearn_model_features(m, "relu", x, 4, feat, 12));
    ERR(TLEARN_EINVAL, FE, "x is NULL", tlearn_model_features(m, "relu", NULL, 4, feat, 20));
    ERR(TLEARN_ESTATE, PF, "last layer", tlearn_model_predict_from(m, "fc2", out, 4, out, 12));
    ERR(TLEARN_EINVAL, PF, "out_len is 10", tlearn_model_predict_from(m, "relu", feat, 4, out, 10));
    ERR(TLEARN_ENOTFOUND, PF, "'nope'", tlearn_model_predict_from(m, "nope", feat, 4, out, 12));
    const char *TF = "tlearn_model_train_step_from";
    ERR(TLEARN_ESTATE, TF, "not frozen",
        tlearn_model_train_step_from(m, o, "relu", feat, y, 4, &loss));
    ERR(TLEARN_EINVAL, TF, "layer is NULL", tlearn_model_train_step_from(m, o, NULL, feat, y, 4, &loss));

    /* Removing layers, metadata. */
    ERR(TLEARN_EINVAL, "tlearn_model_truncate", "model is NULL", tlearn_model_truncate(NULL, "fc1"));
    ERR(TLEARN_ENOTFOUND, "tlearn_model_truncate", "'fc7'", tlearn_model_truncate(m, "fc7"));
    const char *RH = "tlearn_model_replace_head";
    ERR(TLEARN_EINVAL, RH, "model is NULL", tlearn_model_replace_head(NULL, "relu", 3));
    ERR(TLEARN_EINVAL, RH, "from_layer is NULL", tlearn_model_replace_head(m, NULL, 3));
    ERR(TLEARN_EINVAL, RH, "classes is 0", tlearn_model_replace_head(m, "relu", 0));
    ERR(TLEARN_ENOTFOUND, RH, "'fc7'", tlearn_model_replace_head(m, "fc7", 3));
    /* A kept layer already called "head": refused before anything is removed. */
    tlearn_model *h;
    OK(tlearn_model_create(&h, 4, 1, 1));
    OK(tlearn_model_add_dense(h, "head", 5));
    OK(tlearn_model_add_activation(h, "act", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(h, "out", 2));
    ERR(TLEARN_EINVAL, RH, "'head'", tlearn_model_replace_head(h, "act", 3));
    int hc;
    OK(tlearn_model_layer_count(h, &hc));
    assert_int_equal(hc, 3);
    ERR(TLEARN_EINVAL, RH, "'head'", tlearn_model_replace_head(h, "head", 3)); /* kept */
    OK(tlearn_model_layer_count(h, &hc));
    assert_int_equal(hc, 3);
    /* Replacing after a model whose "head" is removed works. */
    tlearn_model_destroy(&h);
    OK(tlearn_model_create(&h, 4, 1, 1));
    OK(tlearn_model_add_dense(h, "fc", 5));
    OK(tlearn_model_add_dense(h, "head", 2));
    OK(tlearn_model_replace_head(h, "fc", 3));
    OK(tlearn_model_layer_count(h, &hc));
    assert_int_equal(hc, 2);
    tlearn_model_destroy(&h);
    const char *SM = "tlearn_model_set_metadata", *GM = "tlearn_model_get_metadata";
    ERR(TLEARN_EINVAL, SM, "model is NULL", tlearn_model_set_metadata(NULL, "k", "v"));
    ERR(TLEARN_EINVAL, SM, "key is NULL", tlearn_model_set_metadata(m, NULL, "v"));
    ERR(TLEARN_EINVAL, SM, "value is NULL", tlearn_model_set_metadata(m, "k", NULL));
    ERR(TLEARN_EINVAL, SM, "key must be", tlearn_model_set_metadata(m, "", "v"));
    ERR(TLEARN_ENOTFOUND, GM, "'k'", tlearn_model_get_metadata(m, "k", &(const char *){0}));
    ERR(TLEARN_EINVAL, GM, "value is NULL", tlearn_model_get_metadata(m, "k", NULL));
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 3); /* nothing above changed the model */

    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&empty);
    tlearn_model_destroy(&m);
    capture_check();
}

static void test_optim_errors(void **state)
{
    (void)state;
    capture_begin();
    tlearn_optim *o = (tlearn_optim *)&o;
    const char *OC = "tlearn_optim_create";
    ERR(TLEARN_EINVAL, OC, "out is NULL", tlearn_optim_create(NULL, TLEARN_SGD));
    ERR(TLEARN_EINVAL, OC, "unknown optimizer kind 0", tlearn_optim_create(&o, 0));
    assert_null(o);
    ERR(TLEARN_EINVAL, OC, "unknown optimizer kind 4", tlearn_optim_create(&o, 4));
    OK(tlearn_optim_create(&o, TLEARN_ADAMW));
    double v;
    int k;
    ERR(TLEARN_EINVAL, "tlearn_optim_set", "optimizer is NULL", tlearn_optim_set(NULL, TLEARN_OPT_LR, 1));
    ERR(TLEARN_EINVAL, "tlearn_optim_set", "parameter 42", tlearn_optim_set(o, 42, 1));
    ERR(TLEARN_EINVAL, "tlearn_optim_set", "learning rate 0 must be > 0", tlearn_optim_set(o, TLEARN_OPT_LR, 0));
    ERR(TLEARN_EINVAL, "tlearn_optim_get", "optimizer is NULL", tlearn_optim_get(NULL, TLEARN_OPT_LR, &v));
    ERR(TLEARN_EINVAL, "tlearn_optim_get", "value is NULL", tlearn_optim_get(o, TLEARN_OPT_LR, NULL));
    ERR(TLEARN_EINVAL, "tlearn_optim_get", "parameter 0", tlearn_optim_get(o, 0, &v));
    ERR(TLEARN_EINVAL, "tlearn_optim_kind", "optimizer is NULL", tlearn_optim_kind(NULL, &k));
    ERR(TLEARN_EINVAL, "tlearn_optim_kind", "kind is NULL", tlearn_optim_kind(o, NULL));
    tlearn_optim_destroy(&o);
    assert_null(o);
    tlearn_optim_destroy(&o);
    tlearn_optim_destroy(NULL);
    capture_check();
}

/* ---- non-finite losses and gradients leave the weights unchanged ---- */

typedef struct snapshot {
    int count;
    float *data[16];
    size_t numel[16];
} snapshot;

static void snap(tlearn_model *m, snapshot *s)
{
    OK(tlearn_model_tensor_count(m, &s->count));
    assert_true(s->count <= 16);
    for (int t = 0; t < s->count; t++) {
        const char *name;
        OK(tlearn_model_tensor_info(m, t, &name, &s->numel[t], NULL, NULL));
        char copy[128];
        snprintf(copy, sizeof copy, "%s", name);
        s->data[t] = malloc(sizeof(float) * s->numel[t]);
        OK(tlearn_model_get_tensor(m, copy, s->data[t], s->numel[t]));
    }
}

/* Bitwise comparison (NaN-safe) of every tensor with a snapshot; frees the snapshot. */
static void same_as(tlearn_model *m, snapshot *s)
{
    snapshot now;
    snap(m, &now);
    assert_int_equal(now.count, s->count);
    for (int t = 0; t < s->count; t++) {
        if (memcmp(now.data[t], s->data[t], sizeof(float) * s->numel[t]) != 0) {
            capture_end();
            fail_msg("tensor %d changed in a step that failed", t);
        }
        free(now.data[t]);
        free(s->data[t]);
    }
}

static void test_nonfinite_inputs(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m = small_model();
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    float x[4 * 4], loss = 0;
    int32_t y[4] = {0, 1, 2, 1};
    /* All weights of the first layer 1 and inputs 3e38: its outputs overflow to inf and
     * the loss is NaN. */
    float ones[20];
    for (int i = 0; i < 20; i++)
        ones[i] = 1.0f;
    OK(tlearn_model_set_tensor(m, "fc1.weight", ones, 20));
    for (int i = 0; i < 16; i++)
        x[i] = 3e38f;
    snapshot s;
    snap(m, &s);
    ERR(TLEARN_ENONFINITE, "tlearn_model_train_step", "loss",
        tlearn_model_train_step(m, o, x, y, 4, &loss));
    same_as(m, &s);
    x[0] = NAN;
    snap(m, &s);
    ERR(TLEARN_ENONFINITE, "tlearn_model_train_step", "loss",
        tlearn_model_train_step(m, o, x, y, 4, &loss));
    same_as(m, &s);
    ERR(TLEARN_ENONFINITE, "tlearn_model_compute_gradients", "loss",
        tlearn_model_compute_gradients(m, x, y, 4, &loss, NULL, 0));
    ERR(TLEARN_ENONFINITE, "tlearn_model_evaluate", "loss",
        tlearn_model_evaluate(m, x, y, 4, &loss, NULL));
    /* The model still trains on sane data afterwards. */
    for (int i = 0; i < 16; i++)
        x[i] = 0.1f * (float)i;
    snap(m, &s);
    OK(tlearn_model_train_step(m, o, x, y, 4, &loss));
    assert_true(isfinite(loss));
    snapshot after;
    snap(m, &after);
    assert_memory_not_equal(after.data[0], s.data[0], sizeof(float) * s.numel[0]);
    for (int t = 0; t < s.count; t++) {
        free(s.data[t]);
        free(after.data[t]);
    }
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    capture_check();
}

static void test_nonfinite_huge_lr(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m = small_model();
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 1e30));
    float x[4 * 4], loss;
    int32_t y[4] = {0, 1, 2, 1};
    for (int i = 0; i < 16; i++)
        x[i] = (float)(i % 5) - 2.0f;
    int failed = 0;
    for (int step = 0; step < 20 && !failed; step++) {
        snapshot s;
        snap(m, &s);
        set_marker();
        int rc = tlearn_model_train_step(m, o, x, y, 4, &loss);
        if (rc == TLEARN_OK) {
            /* A step that succeeds reports a finite loss. */
            for (int t = 0; t < s.count; t++)
                free(s.data[t]);
            if (!isfinite(loss)) {
                capture_end();
                fail_msg("step %d succeeded with loss %g", step, (double)loss);
            }
            continue;
        }
        check_err(rc, TLEARN_ENONFINITE, "tlearn_model_train_step", NULL, "huge lr", __LINE__);
        same_as(m, &s);
        failed = 1;
    }
    if (!failed) {
        capture_end();
        fail_msg("learning rate 1e30 never produced TLEARN_ENONFINITE in 20 steps");
    }
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    capture_check();
}

/* A finite loss whose gradient overflows: y = w*x with x = 1e30, w = 1e-11 gives the
 * output 1e19 and MSE 1e38 (finite in float), but dL/dw = 2*1e19*1e30 = inf. */
static void test_nonfinite_gradient(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m;
    OK(tlearn_model_create(&m, 1, 1, 1));
    OK(tlearn_model_add_dense(m, "fc", 1));
    OK(tlearn_model_set_loss(m, TLEARN_LOSS_MSE));
    float w = 1e-11f, b = 0, x = 1e30f, t = 0, loss;
    OK(tlearn_model_set_tensor(m, "fc.weight", &w, 1));
    OK(tlearn_model_set_tensor(m, "fc.bias", &b, 1));
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_SGD));
    snapshot s;
    snap(m, &s);
    ERR(TLEARN_ENONFINITE, "tlearn_model_train_step_mse", "gradient",
        tlearn_model_train_step_mse(m, o, &x, &t, 1, &loss));
    same_as(m, &s);
    /* And a loss that is finite in double but overflows float (MSE 1e40). */
    x = 1e20f;
    w = 1.0f;
    OK(tlearn_model_set_tensor(m, "fc.weight", &w, 1));
    snap(m, &s);
    ERR(TLEARN_ENONFINITE, "tlearn_model_train_step_mse", NULL,
        tlearn_model_train_step_mse(m, o, &x, &t, 1, &loss));
    same_as(m, &s);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    capture_check();
}

/* The message is per thread: a failure on one thread leaves another's message alone, and a
 * thread that has not failed yet sees "". */
static void *fail_in_thread(void *arg)
{
    char *seen = arg;
    snprintf(seen, 256, "%s", tlearn_errmsg()); /* before any failure on this thread */
    tlearn_model_set_threads(NULL, 1);
    snprintf(seen + 256, 256, "%s", tlearn_errmsg());
    return NULL;
}

static void test_errmsg_per_thread(void **state)
{
    (void)state;
    capture_begin();
    set_marker();
    const char *v;
    assert_int_equal(tlearn_model_get_metadata(marker_model, "zz-other", &v), TLEARN_ENOTFOUND);
    char seen[512];
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fail_in_thread, seen), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_string_equal(seen, "");
    assert_non_null(strstr(seen + 256, "tlearn_model_set_threads: model is NULL"));
    assert_non_null(strstr(tlearn_errmsg(), "zz-other")); /* this thread's is unchanged */
    capture_check();
}

/* Sizes that cannot be allocated or indexed are refused, not attempted. */
static void test_oversize(void **state)
{
    (void)state;
    capture_begin();
    tlearn_model *m;
    OK(tlearn_model_create(&m, 4, 1, 1));
    set_marker();
    int rc = tlearn_model_add_dense(m, "big", INT_MAX); /* 4 * INT_MAX weights */
    if (rc != TLEARN_ESHAPE && rc != TLEARN_ENOMEM) {
        capture_end();
        fail_msg("add_dense(INT_MAX) returned %d: %s", rc, tlearn_errmsg());
    }
    check_err(rc, rc, "tlearn_model_add_dense", "big", "add_dense(INT_MAX)", __LINE__);
    int count;
    OK(tlearn_model_layer_count(m, &count));
    assert_int_equal(count, 0);
    tlearn_model_destroy(&m);
    capture_check();
}

static int teardown(void **state)
{
    (void)state;
    tlearn_model_destroy(&marker_model);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_strerror, restore_output),
        cmocka_unit_test_teardown(test_version, restore_output),
        cmocka_unit_test_teardown(test_create_destroy, restore_output),
        cmocka_unit_test_teardown(test_setters, restore_output),
        cmocka_unit_test_teardown(test_add_layers, restore_output),
        cmocka_unit_test_teardown(test_introspection_errors, restore_output),
        cmocka_unit_test_teardown(test_compute_errors, restore_output),
        cmocka_unit_test_teardown(test_optim_errors, restore_output),
        cmocka_unit_test_teardown(test_nonfinite_inputs, restore_output),
        cmocka_unit_test_teardown(test_nonfinite_huge_lr, restore_output),
        cmocka_unit_test_teardown(test_nonfinite_gradient, restore_output),
        cmocka_unit_test_teardown(test_errmsg_per_thread, restore_output),
        cmocka_unit_test_teardown(test_oversize, restore_output),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
