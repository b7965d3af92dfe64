/* Files and state the io layer must not damage or lie about (issue 12): what a save may
 * replace, readers that must not hang on a FIFO, full checkpoints missing their resume
 * sections, non-finite values, out of memory while loading, and the thread count. */
#define _XOPEN_SOURCE 700 /* mknod */
#define _DEFAULT_SOURCE /* makedev */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "common.h"
#include "io/checkpoint.h"
#include "io/io.h"

static char dir[] = "/tmp/tlearn-rel-XXXXXX";

static const char *at(const char *name)
{
    static char buf[4][600];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

#define FAILS(call, code, text)                                                               \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        if (rc_ != (code) || !strstr(tlearn_errmsg(), (text)))                                \
            fail_msg("%s returned %d '%s', expected %d with '%s'", #call, rc_,                \
                     tlearn_errmsg(), (code), (text));                                        \
    } while (0)

/* Both savers, which share the rules of lib/io/file.c. */
static int save_as(int kind, const tlearn_model *m, const char *path)
{
    return kind ? tlearn_model_export_safetensors(m, path)
                : tlearn_model_save(m, NULL, path, TLEARN_SAVE_FULL);
}

static void test_save_refuses_what_is_not_a_file(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 3, 2, 1);
    for (int kind = 0; kind < 2; kind++) {
        const char *d = at("a-directory");
        assert_int_equal(mkdir(d, 0755), 0);
        FAILS(save_as(kind, m, d), TLEARN_EIO, "a directory");
        struct stat st;
        assert_int_equal(stat(d, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        rmdir(d);

        const char *fifo = at("a-fifo");
        assert_int_equal(mkfifo(fifo, 0600), 0);
        FAILS(save_as(kind, m, fifo), TLEARN_EIO, "a FIFO");
        assert_int_equal(lstat(fifo, &st), 0);
        assert_true(S_ISFIFO(st.st_mode));
        unlink(fifo);

        /* A device node (as the copy of /dev/full) where this user may make one. */
        const char *dev = at("a-device");
        if (mknod(dev, S_IFCHR | 0600, makedev(1, 7)) == 0) {
            FAILS(save_as(kind, m, dev), TLEARN_EIO, "a character device");
            assert_int_equal(lstat(dev, &st), 0);
            assert_true(S_ISCHR(st.st_mode));
            unlink(dev);
        }

        const char *dangling = at("dangling");
        assert_int_equal(symlink(at("nowhere/none"), dangling), 0);
        FAILS(save_as(kind, m, dangling), TLEARN_EIO, "symbolic link");
        assert_int_equal(lstat(dangling, &st), 0);
        assert_true(S_ISLNK(st.st_mode));
        unlink(dangling);
    }
    tlearn_model_destroy(&m);
}

static void test_save_writes_through_links_and_keeps_modes(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 3, 2, 2);
    for (int kind = 0; kind < 2; kind++) {
        /* A symlink stays a link; its target gets the new content. */
        const char *target = at("target.bin"), *link = at("link.bin");
        FILE *f = fopen(target, "wb");
        assert_non_null(f);
        fputs("old", f);
        fclose(f);
        assert_int_equal(chmod(target, 0640), 0);
        assert_int_equal(symlink(target, link), 0);
        CHECK_OK(save_as(kind, m, link));
        struct stat st;
        assert_int_equal(lstat(link, &st), 0);
        assert_true(S_ISLNK(st.st_mode));
        assert_int_equal(stat(target, &st), 0);
        assert_true(st.st_size > 3);
        assert_int_equal(st.st_mode & 07777, 0640); /* an existing file keeps its mode */
        unlink(link);
        unlink(target);

        /* A private file stays private. */
        const char *priv = at("private.bin");
        f = fopen(priv, "wb");
        assert_non_null(f);
        fclose(f);
        assert_int_equal(chmod(priv, 0600), 0);
        CHECK_OK(save_as(kind, m, priv));
        assert_int_equal(stat(priv, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        unlink(priv);

        /* A new file follows the umask. */
        const mode_t masks[] = {077, 022};
        for (int i = 0; i < 2; i++) {
            mode_t old = umask(masks[i]);
            const char *fresh = at("fresh.bin");
            CHECK_OK(save_as(kind, m, fresh));
            umask(old);
            assert_int_equal(stat(fresh, &st), 0);
            assert_int_equal(st.st_mode & 07777, 0666 & ~masks[i]);
            unlink(fresh);
        }
    }
    tlearn_model_destroy(&m);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "a reader hung on a FIFO\n";
    ssize_t k = write(2, msg, sizeof msg - 1);
    (void)k;
    _exit(1);
}

static int count_meta(const char *key, const char *value, void *user)
{
    (void)key;
    (void)value;
    (void)user;
    return 0;
}

static void test_readers_refuse_a_fifo(void **state)
{
    (void)state;
    const char *fifo = at("reader-fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    signal(SIGALRM, on_alarm);
    alarm(10);
    tlearn_model *m = io_make_mlp(4, 3, 2, 3), *l = NULL;
    FAILS(tlearn_model_load(&l, NULL, fifo), TLEARN_EIO, "not a regular file");
    FAILS(tlearn_model_load_weights(m, fifo, TLEARN_LOAD_STRICT, NULL, NULL), TLEARN_EIO,
          "not a regular file");
    FAILS(tlearn_checkpoint_read_metadata(fifo, count_meta, NULL), TLEARN_EIO,
          "not a regular file");
    FAILS(tlearn_model_import_safetensors(m, fifo, NULL, NULL, TLEARN_LOAD_STRICT, NULL),
          TLEARN_EIO, "not a regular file");
#if TL_TEST_HAVE_ONNX /* ONNX import opens files as the checkpoint readers do */
    FAILS(tlearn_model_import_onnx(&l, fifo), TLEARN_EIO, "not a regular file");
    assert_null(l);
#endif
    alarm(0);
    unlink(fifo);
    tlearn_model_destroy(&m);
}

/* A full checkpoint in memory with an Adam state and a freeze policy. */
static tl_wbuf full_checkpoint(tlearn_model **out)
{
    tlearn_model *m = io_make_mlp(4, 3, 2, 4);
    tlearn_optim *o;
    CHECK_OK(tlearn_optim_create(&o, TLEARN_ADAM));
    float x[8];
    int32_t y[2];
    io_make_data(x, y, 2, 4, 2, 1);
    CHECK_OK(tlearn_model_train_step(m, o, x, y, 2, NULL));
    tlearn_freeze *f;
    CHECK_OK(tlearn_freeze_create(&f));
    CHECK_OK(tlearn_freeze_until(f, "fc1"));
    CHECK_OK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f);
    tl_wbuf b;
    CHECK_OK(tl_checkpoint_save_buffer("test", m, o, TLEARN_SAVE_FULL, &b));
    tlearn_optim_destroy(&o);
    if (out)
        *out = m;
    else
        tlearn_model_destroy(&m);
    return b;
}

static void test_full_checkpoint_needs_its_resume_sections(void **state)
{
    (void)state;
    const int kinds[] = {S_OPTSTATE, S_FREEZE};
    const char *names[] = {"OPTSTATE", "FREEZE"};
    for (int k = 0; k < 2; k++) {
        tl_wbuf b = full_checkpoint(NULL);
        uint64_t nsec = tl_get_u64(b.p + 24);
        int found = 0;
        for (uint64_t i = 0; i < nsec; i++) {
            unsigned char *e = b.p + CK_HEADER + i * CK_ENTRY;
            if (tl_get_u32(e) == (uint32_t)kinds[k]) {
                tl_put_u32(e, 99); /* a kind this reader does not know: skipped */
                found = 1;
            }
        }
        assert_true(found);
        /* valid CRCs: only the missing section can be the reason for a refusal */
        tl_put_u32(b.p + 40, (uint32_t)crc32(0L, b.p + CK_HEADER, (uInt)(nsec * CK_ENTRY)));
        tl_put_u32(b.p + 60, (uint32_t)crc32(0L, b.p, 60));
        tlearn_model *l = NULL;
        FAILS(tl_checkpoint_load_buffer("load", b.p, b.len, &l, NULL), TLEARN_EFORMAT,
              names[k]);
        assert_null(l);
        /* weights alone still load from it */
        tlearn_model *w = io_make_mlp(4, 3, 2, 9);
        CHECK_OK(tl_checkpoint_load_weights_buffer("w", w, b.p, b.len, TLEARN_LOAD_STRICT,
                                                   NULL, NULL));
        tlearn_model_destroy(&w);
        tl_wb_free(&b);
    }
}

static void test_non_finite_values_are_refused_everywhere(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 3, 2, 5);
    /* A checkpoint whose fc2.bias holds NaN (the CRCs are not what is tested here). */
    const float mark[2] = {12345.0f, 12345.0f};
    CHECK_OK(tlearn_model_set_tensor(m, "fc2.bias", mark, 2));
    tl_wbuf b;
    CHECK_OK(tl_checkpoint_save_buffer("test", m, NULL, TLEARN_SAVE_INFERENCE, &b));
    int patched = 0;
    for (size_t i = 0; i + 4 <= b.len; i += 4) {
        float v;
        memcpy(&v, b.p + i, 4);
        if (v == 12345.0f) {
            float nan = NAN;
            memcpy(b.p + i, &nan, 4);
            patched++;
        }
    }
    assert_int_equal(patched, 2);
    tl_checkpoint_fuzz_skip_crc(1);
    tlearn_model *l = NULL;
    FAILS(tl_checkpoint_load_buffer("load", b.p, b.len, &l, NULL), TLEARN_EFORMAT,
          "tensor 'fc2.bias': element 0 is nan");
    assert_null(l);
    float before[2], after[2];
    CHECK_OK(tlearn_model_get_tensor(m, "fc2.bias", before, 2));
    FAILS(tl_checkpoint_load_weights_buffer("w", m, b.p, b.len, TLEARN_LOAD_STRICT, NULL,
                                            NULL),
          TLEARN_EFORMAT, "fc2.bias");
    CHECK_OK(tlearn_model_get_tensor(m, "fc2.bias", after, 2));
    assert_memory_equal(before, after, sizeof before);
    tl_checkpoint_fuzz_skip_crc(0);
    tl_wb_free(&b);

    /* Writers refuse to write what the readers refuse (a NaN put in behind the API). */
    m->layers[0]->param[0].t.data[1] = INFINITY;
    FAILS(tlearn_model_export_safetensors(m, at("nan.safetensors")), TLEARN_ENONFINITE,
          "fc1.weight");
    FAILS(tlearn_model_save(m, NULL, at("nan.ckpt"), TLEARN_SAVE_FULL), TLEARN_ENONFINITE,
          "fc1.weight");
    assert_int_equal(access(at("nan.safetensors"), F_OK), -1);
    assert_int_equal(access(at("nan.ckpt"), F_OK), -1);
    tlearn_model_destroy(&m);

    /* A variance is never negative. */
    CHECK_OK(tlearn_model_create(&m, 3, 1, 1));
    CHECK_OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f));
    const float var[3] = {1.0f, -0.5f, 2.0f}, mean[3] = {-1.0f, -0.5f, 2.0f};
    FAILS(tlearn_model_set_tensor(m, "bn.running_var", var, 3), TLEARN_EINVAL,
          "element 1 is -0.5");
    CHECK_OK(tlearn_model_set_tensor(m, "bn.running_mean", mean, 3));
    float got[3];
    CHECK_OK(tlearn_model_get_tensor(m, "bn.running_var", got, 3));
    for (int i = 0; i < 3; i++)
        assert_true(got[i] == 1.0f);
    tlearn_model_destroy(&m);
}

/* Fail each allocation of @p load in turn: ENOMEM (never a "corrupt file"), nothing leaked. */
static void sweep_out_of_memory(int (*load)(const tl_wbuf *b), const tl_wbuf *b)
{
    int rc = TLEARN_ENOMEM;
    for (uint64_t nth = 1; rc != TLEARN_OK; nth++) {
        int64_t live = tl_alloc_live();
        tl_alloc_fail_nth(nth);
        rc = load(b);
        tl_alloc_fail_nth(0);
        if (rc != TLEARN_OK && rc != TLEARN_ENOMEM)
            fail_msg("allocation %llu failed: status %d '%s', expected TLEARN_ENOMEM",
                     (unsigned long long)nth, rc, tlearn_errmsg());
        if (rc == TLEARN_ENOMEM && tl_alloc_live() != live)
            fail_msg("allocation %llu failed: %lld blocks leaked", (unsigned long long)nth,
                     (long long)(tl_alloc_live() - live));
        assert_true(nth < 100000);
    }
}

static int load_full(const tl_wbuf *b)
{
    tlearn_model *l = NULL;
    tlearn_optim *o = NULL;
    int rc = tl_checkpoint_load_buffer("load", b->p, b->len, &l, &o);
    tlearn_model_destroy(&l);
    tlearn_optim_destroy(&o);
    return rc;
}

static void test_out_of_memory_while_loading_ewc(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 3, 2, 6);
    float x[8];
    int32_t y[2];
    io_make_data(x, y, 2, 4, 2, 2);
    CHECK_OK(tlearn_ewc_consolidate(m, x, y, 2, TLEARN_FISHER_EMPIRICAL, 10.0f));
    CHECK_OK(tlearn_l2sp_enable(m, 0.1f, 0.01f));
    tl_wbuf b;
    CHECK_OK(tl_checkpoint_save_buffer("test", m, NULL, TLEARN_SAVE_FULL, &b));
    sweep_out_of_memory(load_full, &b);
    tl_wb_free(&b);
    tlearn_model_destroy(&m);
}

static tlearn_model *st_target;

static int import_st(const tl_wbuf *b)
{
    return tl_safetensors_import_buffer("import", st_target, b->p, b->len, NULL, NULL,
                                        TLEARN_LOAD_STRICT, NULL);
}

static void test_out_of_memory_while_importing_safetensors(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 3, 2, 7);
    CHECK_OK(tlearn_model_export_safetensors(m, at("ok.safetensors")));
    FILE *f = fopen(at("ok.safetensors"), "rb");
    assert_non_null(f);
    tl_wbuf b = {0};
    unsigned char chunk[4096];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
        tl_wb_bytes(&b, chunk, k);
    fclose(f);
    unlink(at("ok.safetensors"));
    st_target = io_make_mlp(4, 3, 2, 8);
    sweep_out_of_memory(import_st, &b);
    assert_true(io_models_equal(m, st_target));
    tlearn_model_destroy(&st_target);
    tl_wb_free(&b);
    tlearn_model_destroy(&m);
}

static void test_threads_are_the_hosts(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 3, 2, 9);
    int cpus = tl_cpu_limit();
    assert_true(cpus >= 1);
    CHECK_OK(tlearn_model_set_threads(m, 1024)); /* clamped, not refused */
    assert_int_equal(m->threads, cpus);
    CHECK_OK(tlearn_model_set_threads(m, 1));
    assert_int_equal(m->threads, 1);
    /* A file that says 256 threads: the loaded model keeps the host's default. */
    m->threads = 256;
    tl_wbuf b;
    CHECK_OK(tl_checkpoint_save_buffer("test", m, NULL, TLEARN_SAVE_FULL, &b));
    tlearn_model *l = NULL;
    CHECK_OK(tl_checkpoint_load_buffer("load", b.p, b.len, &l, NULL));
    assert_int_equal(l->threads, 1);
    tlearn_model_destroy(&l);
    tl_wb_free(&b);
    m->threads = 1;
    tlearn_model_destroy(&m);
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
        cmocka_unit_test(test_save_refuses_what_is_not_a_file),
        cmocka_unit_test(test_save_writes_through_links_and_keeps_modes),
        cmocka_unit_test(test_readers_refuse_a_fifo),
        cmocka_unit_test(test_full_checkpoint_needs_its_resume_sections),
        cmocka_unit_test(test_non_finite_values_are_refused_everywhere),
        cmocka_unit_test(test_out_of_memory_while_loading_ewc),
        cmocka_unit_test(test_out_of_memory_while_importing_safetensors),
        cmocka_unit_test(test_threads_are_the_hosts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
