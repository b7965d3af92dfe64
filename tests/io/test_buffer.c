/* Checkpoints and safetensors in memory (tlearn_model_save_buffer and friends): the same
 * bytes as the file calls, the same refusals with the same messages, argument errors, and
 * failed calls that hand nothing back and change nothing. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#include <cmocka.h>

#include "common.h"
#include "core/core.h"
#include "model/model.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

/* An MLP trained three Adam steps (optimizer state), with metadata. */
static tlearn_model *trained(tlearn_optim **o, uint64_t seed)
{
    tlearn_model *m = io_make_mlp(6, 8, 3, seed);
    CHECK_OK(tlearn_optim_create(o, TLEARN_ADAM));
    CHECK_OK(tlearn_optim_set(*o, TLEARN_OPT_LR, 0.05));
    float x[16 * 6];
    int32_t y[16];
    io_make_data(x, y, 16, 6, 3, 7);
    for (int s = 0; s < 3; s++)
        CHECK_OK(tlearn_model_train_step(m, *o, x, y, 16, NULL));
    CHECK_OK(tlearn_model_set_metadata(m, "task", "bytes"));
    return m;
}

/* The message after "function: ", so that file and buffer calls compare. */
static const char *detail(const char *msg)
{
    const char *p = strstr(msg, ": ");
    return p ? p + 2 : msg;
}

static void test_save_buffer_is_the_file(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained(&o, 3);
    const unsigned flags[] = {TLEARN_SAVE_FULL, TLEARN_SAVE_INFERENCE, TLEARN_SAVE_COMPRESS(6),
                              TLEARN_SAVE_INFERENCE | TLEARN_SAVE_COMPRESS(1)};
    for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++) {
        const char *path = tmp_path("m.ckpt");
        CHECK_OK(tlearn_model_save(m, o, path, flags[k]));
        size_t flen, blen, blen2;
        unsigned char *file = read_file(path, &flen);
        void *buf, *buf2;
        CHECK_OK(tlearn_model_save_buffer(m, o, flags[k], &buf, &blen));
        assert_int_equal(blen, flen);
        assert_memory_equal(buf, file, flen);
        CHECK_OK(tlearn_model_save_buffer(m, o, flags[k], &buf2, &blen2)); /* deterministic */
        assert_int_equal(blen2, blen);
        assert_memory_equal(buf2, buf, blen);
        tlearn_free(buf2);

        /* Loading the bytes gives the model the file gives, which saves to the same bytes. */
        tlearn_model *a, *b;
        tlearn_optim *oa, *ob;
        CHECK_OK(tlearn_model_load(&a, &oa, path));
        CHECK_OK(tlearn_model_load_buffer(&b, &ob, buf, blen));
        assert_true(io_models_equal(a, m));
        assert_true(io_models_equal(b, a));
        assert_int_equal(oa != NULL, ob != NULL);
        assert_int_equal(ob != NULL, !(flags[k] & TLEARN_SAVE_INFERENCE));
        void *again;
        size_t alen;
        CHECK_OK(tlearn_model_save_buffer(b, ob, flags[k], &again, &alen));
        assert_int_equal(alen, blen);
        assert_memory_equal(again, buf, blen);
        tlearn_free(again);
        tlearn_free(buf);
        free(file);
        tlearn_model_destroy(&a);
        tlearn_model_destroy(&b);
        tlearn_optim_destroy(&oa);
        tlearn_optim_destroy(&ob);
    }
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
    tlearn_free(NULL); /* accepted */
}

/* Training continues from loaded bytes exactly as from the original. */
static void test_resume_from_bytes(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained(&o, 5);
    void *buf;
    size_t len;
    CHECK_OK(tlearn_model_save_buffer(m, o, TLEARN_SAVE_FULL, &buf, &len));
    tlearn_model *r;
    tlearn_optim *ro;
    CHECK_OK(tlearn_model_load_buffer(&r, &ro, buf, len));
    tlearn_free(buf);
    assert_non_null(ro);
    float x[16 * 6];
    int32_t y[16];
    io_make_data(x, y, 16, 6, 3, 99);
    for (int s = 0; s < 2; s++) {
        CHECK_OK(tlearn_model_train_step(m, o, x, y, 16, NULL));
        CHECK_OK(tlearn_model_train_step(r, ro, x, y, 16, NULL));
    }
    assert_true(io_models_equal(m, r));
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&r);
    tlearn_optim_destroy(&o);
    tlearn_optim_destroy(&ro);
}

static void test_load_weights_buffer(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained(&o, 7);
    void *buf;
    size_t len, matched = 99, skipped = 99;
    CHECK_OK(tlearn_model_save_buffer(m, NULL, TLEARN_SAVE_INFERENCE, &buf, &len));
    tlearn_model *t = io_make_mlp(6, 8, 3, 1234);
    assert_false(io_models_equal(t, m));
    CHECK_OK(tlearn_model_load_weights_buffer(t, buf, len, TLEARN_LOAD_STRICT, &matched,
                                              &skipped));
    assert_true(io_models_equal(t, m));
    assert_int_equal(matched, 4); /* fc1.weight, fc1.bias, fc2.weight, fc2.bias */
    assert_int_equal(skipped, 0);

    /* A model with another head: strict refuses and changes nothing, partial loads fc1. */
    tlearn_model *h = io_make_mlp(6, 8, 5, 77), *h0 = io_make_mlp(6, 8, 5, 77);
    assert_int_equal(tlearn_model_load_weights_buffer(h, buf, len, TLEARN_LOAD_STRICT, NULL,
                                                      NULL), TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "fc2.weight"));
    assert_true(io_models_equal(h, h0));
    CHECK_OK(tlearn_model_load_weights_buffer(h, buf, len, TLEARN_LOAD_PARTIAL, &matched,
                                              &skipped));
    assert_int_equal(matched, 2);
    assert_int_equal(skipped, 2);
    float a[48], b[48];
    CHECK_OK(tlearn_model_get_tensor(h, "fc1.weight", a, 48));
    CHECK_OK(tlearn_model_get_tensor(m, "fc1.weight", b, 48));
    assert_memory_equal(a, b, sizeof a);
    tlearn_free(buf);
    tlearn_model_destroy(&h);
    tlearn_model_destroy(&h0);
    tlearn_model_destroy(&t);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

static int rename_fc(const char *file_name, char *out, size_t out_len, void *user)
{
    (void)user;
    if (strncmp(file_name, "hd2.", 4) == 0) {
        snprintf(out, out_len, "fc2.%s", file_name + 4);
        return 1;
    }
    snprintf(out, out_len, "%s", file_name);
    return 1;
}

static void test_safetensors_buffer_is_the_file(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained(&o, 9);
    const char *path = tmp_path("m.safetensors");
    CHECK_OK(tlearn_model_export_safetensors(m, path));
    size_t flen, blen, matched = 0;
    unsigned char *file = read_file(path, &flen);
    void *buf;
    CHECK_OK(tlearn_model_export_safetensors_buffer(m, &buf, &blen));
    assert_int_equal(blen, flen);
    assert_memory_equal(buf, file, flen);
    /* the header length, then JSON with the four tensors in order: by hand */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | ((unsigned char *)buf)[i];
    assert_int_equal(blen, 8 + hlen + 4 * (6 * 8 + 8 + 8 * 3 + 3));

    tlearn_model *t = io_make_mlp(6, 8, 3, 4321);
    CHECK_OK(tlearn_model_import_safetensors_buffer(t, buf, blen, NULL, NULL,
                                                    TLEARN_LOAD_STRICT, &matched));
    assert_int_equal(matched, 4);
    assert_true(io_models_equal(t, m));

    /* with a name map: a file whose head is called "hd2" */
    char *renamed = malloc(blen + 8);
    memcpy(renamed, buf, blen);
    for (size_t i = 8; i + 4 <= 8 + hlen; i++)
        if (memcmp(renamed + i, "\"fc2.", 5) == 0)
            memcpy(renamed + i + 1, "hd2", 3);
    tlearn_model *u = io_make_mlp(6, 8, 3, 999);
    assert_int_equal(tlearn_model_import_safetensors_buffer(u, renamed, blen, NULL, NULL,
                                                            TLEARN_LOAD_STRICT, NULL),
                     TLEARN_ENOTFOUND);
    CHECK_OK(tlearn_model_import_safetensors_buffer(u, renamed, blen, rename_fc, NULL,
                                                    TLEARN_LOAD_STRICT, &matched));
    assert_true(io_models_equal(u, m));
    free(renamed);
    tlearn_free(buf);
    free(file);
    tlearn_model_destroy(&t);
    tlearn_model_destroy(&u);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

/* Damaged bytes: the buffer call fails exactly as the file call on a file of those bytes,
 * hands nothing back, and leaves the target model as it was. */
static void same_refusal(const unsigned char *p, size_t n, tlearn_model *target,
                         const tlearn_model *pristine)
{
    const char *path = tmp_path("bad.ckpt");
    write_file(path, p, n);
    char fmsg[1024];
    tlearn_model *l = (tlearn_model *)1;
    tlearn_optim *lo = (tlearn_optim *)1;
    int frc = tlearn_model_load(&l, &lo, path);
    snprintf(fmsg, sizeof fmsg, "%s", detail(tlearn_errmsg()));
    assert_int_not_equal(frc, TLEARN_OK);
    l = (tlearn_model *)1;
    lo = (tlearn_optim *)1;
    int brc = tlearn_model_load_buffer(&l, &lo, p, n);
    assert_int_equal(brc, frc);
    assert_string_equal(detail(tlearn_errmsg()), fmsg);
    assert_null(l);
    assert_null(lo);

    frc = tlearn_model_load_weights(target, path, TLEARN_LOAD_PARTIAL, NULL, NULL);
    snprintf(fmsg, sizeof fmsg, "%s", detail(tlearn_errmsg()));
    assert_int_not_equal(frc, TLEARN_OK);
    size_t matched = 42;
    brc = tlearn_model_load_weights_buffer(target, p, n, TLEARN_LOAD_PARTIAL, &matched, NULL);
    assert_int_equal(brc, frc);
    assert_string_equal(detail(tlearn_errmsg()), fmsg);
    assert_int_equal(matched, 42);
    assert_true(io_models_equal(target, pristine));
}

static void test_damaged_checkpoints(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained(&o, 11);
    void *vbuf;
    size_t len;
    CHECK_OK(tlearn_model_save_buffer(m, o, TLEARN_SAVE_COMPRESS(3), &vbuf, &len));
    const unsigned char *buf = vbuf;
    tlearn_model *target = io_make_mlp(6, 8, 3, 55), *pristine = io_make_mlp(6, 8, 3, 55);
    const size_t cuts[] = {0, 1, 7, 8, 63, 64, 100, len / 2, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
        same_refusal(buf, cuts[i], target, pristine);
    unsigned char *bad = malloc(len + 1);
    const size_t flips[] = {0, 8, 16, 24, 40, 60, 70, 200, len / 3, len / 2, len - 5};
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        memcpy(bad, buf, len);
        bad[flips[i]] ^= 0x40;
        same_refusal(bad, len, target, pristine);
    }
    memcpy(bad, buf, len);
    bad[len] = 0;
    same_refusal(bad, len + 1, target, pristine); /* a byte too many */
    /* NULL data with len 0 is an empty buffer, refused as an empty file is */
    tlearn_model *l;
    assert_int_equal(tlearn_model_load_buffer(&l, NULL, NULL, 0), TLEARN_EFORMAT);
    assert_null(l);
    free(bad);
    tlearn_free(vbuf);
    tlearn_model_destroy(&target);
    tlearn_model_destroy(&pristine);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

static void test_damaged_safetensors(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(6, 8, 3, 13);
    void *vbuf;
    size_t len;
    CHECK_OK(tlearn_model_export_safetensors_buffer(m, &vbuf, &len));
    const unsigned char *buf = vbuf;
    tlearn_model *t = io_make_mlp(6, 8, 3, 66), *t0 = io_make_mlp(6, 8, 3, 66);
    unsigned char *bad = malloc(len);
    const char *path = tmp_path("bad.safetensors");
    for (size_t k = 0; k < 12; k++) {
        size_t n = len;
        memcpy(bad, buf, len);
        if (k < 6)
            n = (size_t[]){0, 4, 8, 20, len - 100, len - 1}[k];
        else
            bad[(size_t[]){0, 7, 9, 32, 60, 100}[k - 6]] ^= 0x21;
        write_file(path, bad, n);
        int frc = tlearn_model_import_safetensors(t, path, NULL, NULL, TLEARN_LOAD_STRICT, NULL);
        char fmsg[1024];
        snprintf(fmsg, sizeof fmsg, "%s", detail(tlearn_errmsg()));
        if (frc == TLEARN_OK)
            fail_msg("damage %zu was accepted", k);
        int brc = tlearn_model_import_safetensors_buffer(t, bad, n, NULL, NULL,
                                                         TLEARN_LOAD_STRICT, NULL);
        assert_int_equal(brc, frc);
        assert_string_equal(detail(tlearn_errmsg()), fmsg);
        assert_true(io_models_equal(t, t0));
    }
    free(bad);
    tlearn_free(vbuf);
    tlearn_model_destroy(&t);
    tlearn_model_destroy(&t0);
    tlearn_model_destroy(&m);
}

#define FAILS_NAMING(call, code, word)                                                       \
    do {                                                                                      \
        assert_int_equal((call), (code));                                                     \
        if (!strstr(tlearn_errmsg(), (word)))                                                 \
            fail_msg("'%s' does not name '%s'", tlearn_errmsg(), (word));                     \
    } while (0)

static void test_argument_errors(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(6, 8, 3, 17);
    void *buf = (void *)1;
    size_t len = 7, n;
    FAILS_NAMING(tlearn_model_save_buffer(NULL, NULL, 0, &buf, &len), TLEARN_EINVAL, "model");
    assert_null(buf);
    assert_int_equal(len, 0);
    FAILS_NAMING(tlearn_model_save_buffer(m, NULL, 0, NULL, &len), TLEARN_EINVAL, "data");
    buf = (void *)1;
    FAILS_NAMING(tlearn_model_save_buffer(m, NULL, 0, &buf, NULL), TLEARN_EINVAL, "size");
    assert_null(buf);
    buf = (void *)1;
    len = 7;
    FAILS_NAMING(tlearn_model_save_buffer(m, NULL, 1u << 20, &buf, &len), TLEARN_EINVAL,
                 "flags");
    assert_null(buf);
    assert_int_equal(len, 0);
    FAILS_NAMING(tlearn_model_export_safetensors_buffer(NULL, &buf, &len), TLEARN_EINVAL,
                 "model");
    FAILS_NAMING(tlearn_model_export_safetensors_buffer(m, NULL, &len), TLEARN_EINVAL, "data");
    FAILS_NAMING(tlearn_model_export_safetensors_buffer(m, &buf, NULL), TLEARN_EINVAL, "size");

    CHECK_OK(tlearn_model_save_buffer(m, NULL, 0, &buf, &len));
    tlearn_model *l = (tlearn_model *)1;
    tlearn_optim *lo = (tlearn_optim *)1;
    FAILS_NAMING(tlearn_model_load_buffer(NULL, &lo, buf, len), TLEARN_EINVAL, "out");
    FAILS_NAMING(tlearn_model_load_buffer(&l, &lo, NULL, len), TLEARN_EINVAL, "data");
    assert_null(l);
    assert_null(lo);
    FAILS_NAMING(tlearn_model_load_weights_buffer(NULL, buf, len, 0, &n, &n), TLEARN_EINVAL,
                 "model");
    FAILS_NAMING(tlearn_model_load_weights_buffer(m, NULL, len, 0, &n, &n), TLEARN_EINVAL,
                 "data");
    FAILS_NAMING(tlearn_model_load_weights_buffer(m, buf, len, 2, &n, &n), TLEARN_EINVAL,
                 "flags");
    tlearn_free(buf);

    CHECK_OK(tlearn_model_export_safetensors_buffer(m, &buf, &len));
    FAILS_NAMING(tlearn_model_import_safetensors_buffer(NULL, buf, len, NULL, NULL, 0, &n),
                 TLEARN_EINVAL, "model");
    FAILS_NAMING(tlearn_model_import_safetensors_buffer(m, NULL, len, NULL, NULL, 0, &n),
                 TLEARN_EINVAL, "data");
    FAILS_NAMING(tlearn_model_import_safetensors_buffer(m, buf, len, NULL, NULL, 5, &n),
                 TLEARN_EINVAL, "flags");
    tlearn_free(buf);

    /* A NaN weight (put in behind the API): nothing is written, nothing handed back. */
    m->layers[0]->param[0].t.data[5] = NAN;
    buf = (void *)1;
    len = 7;
    FAILS_NAMING(tlearn_model_save_buffer(m, NULL, 0, &buf, &len), TLEARN_ENONFINITE,
                 "fc1.weight");
    assert_null(buf);
    assert_int_equal(len, 0);
    buf = (void *)1;
    FAILS_NAMING(tlearn_model_export_safetensors_buffer(m, &buf, &len), TLEARN_ENONFINITE,
                 "fc1.weight");
    assert_null(buf);
    tlearn_model_destroy(&m);
}

/* Every allocation of a save, export or load failed in turn: ENOMEM, nothing handed back,
 * nothing leaked, and the calls work again afterwards. */
static void test_out_of_memory(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained(&o, 19);
    void *good;
    size_t glen;
    CHECK_OK(tlearn_model_save_buffer(m, o, TLEARN_SAVE_COMPRESS(2), &good, &glen));
    int failures = 0;
    for (uint64_t nth = 1; nth < 400; nth++) {
        for (int call = 0; call < 3; call++) {
            int64_t live = tl_alloc_live();
            void *buf = (void *)1;
            size_t len = 7;
            tlearn_model *l = (tlearn_model *)1;
            tlearn_optim *lo = (tlearn_optim *)1;
            tl_alloc_fail_nth(nth);
            int rc = call == 0   ? tlearn_model_save_buffer(m, o, TLEARN_SAVE_COMPRESS(2), &buf,
                                                            &len)
                     : call == 1 ? tlearn_model_export_safetensors_buffer(m, &buf, &len)
                                 : tlearn_model_load_buffer(&l, &lo, good, glen);
            tl_alloc_fail_nth(0);
            if (rc) {
                assert_int_equal(rc, TLEARN_ENOMEM);
                failures++;
                if (call < 2) {
                    assert_null(buf);
                    assert_int_equal(len, 0);
                } else {
                    assert_null(l);
                    assert_null(lo);
                }
            } else if (call < 2) {
                tlearn_free(buf);
            } else {
                tlearn_model_destroy(&l);
                tlearn_optim_destroy(&lo);
            }
            assert_int_equal(tl_alloc_live(), live);
        }
    }
    assert_true(failures > 20);
    tlearn_free(good);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/tlearn-buffer-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_buffer_is_the_file),
        cmocka_unit_test(test_resume_from_bytes),
        cmocka_unit_test(test_load_weights_buffer),
        cmocka_unit_test(test_safetensors_buffer_is_the_file),
        cmocka_unit_test(test_damaged_checkpoints),
        cmocka_unit_test(test_damaged_safetensors),
        cmocka_unit_test(test_argument_errors),
        cmocka_unit_test(test_out_of_memory),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(tmp_path("m.ckpt"));
    unlink(tmp_path("m.safetensors"));
    unlink(tmp_path("bad.ckpt"));
    unlink(tmp_path("bad.safetensors"));
    rmdir(tmpdir);
    return rc;
}
