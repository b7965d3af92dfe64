/* Files and state the io layer must not damage or lie about (issue 12): what a save may
 * replace and readers that must not hang on a FIFO. */
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

#include <cmocka.h>

#include "common.h"

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
    alarm(0);
    unlink(fifo);
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
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
