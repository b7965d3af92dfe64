/* The committed fuzz seeds (tests/fuzz/corpus) are files written by an earlier build of
 * the library: every checkpoint must still load and every safetensors file import. This
 * guards the on-disk format against accidental changes. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "common.h"
#include "io/io.h"

static const char *corpus;

static int for_each(const char *sub, int (*fn)(const char *path))
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", corpus, sub);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (fn(path) != TLEARN_OK)
            fail_msg("%s: %s", path, tlearn_errmsg());
        n++;
    }
    closedir(d);
    return n;
}

static int load_checkpoint(const char *path)
{
    tlearn_model *m;
    tlearn_optim *o;
    int rc = tlearn_model_load(&m, &o, path);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
    return rc;
}

static int import_st(const char *path)
{
    /* the model the seeds describe, under file names or torch names */
    tlearn_model *m = io_make_mlp(3, 4, 2, 1);
    size_t matched = 0;
    int rc = tlearn_model_import_safetensors(m, path, NULL, NULL, TLEARN_LOAD_PARTIAL, &matched);
    tlearn_model_destroy(&m);
    return rc;
}

static void test_checkpoints_load(void **state)
{
    (void)state;
    assert_true(for_each("checkpoint", load_checkpoint) >= 5);
}

static void test_safetensors_import(void **state)
{
    (void)state;
    assert_true(for_each("safetensors", import_st) >= 2);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS-DIR\n", argv[0]);
        return 2;
    }
    corpus = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoints_load),
        cmocka_unit_test(test_safetensors_import),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
