/* Checkpoints: round trips of every piece of state, refusal of damaged and foreign files
 * with messages that name what is wrong, and crash safety of saving. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "common.h"
#include "io/io.h"
#include "model/model.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

/* Files in tmpdir whose name contains @p part. */
static int count_files(const char *dir, const char *part)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, part))
            n++;
    closedir(d);
    return n;
}

/* An MLP trained a few Adam steps (so it has optimizer state), with metadata. */
static tlearn_model *trained_mlp(tlearn_optim **o, int kind, uint64_t seed)
{
    tlearn_model *m = io_make_mlp(6, 8, 3, seed);
    CHECK_OK(tlearn_optim_create(o, kind));
    CHECK_OK(tlearn_optim_set(*o, TLEARN_OPT_LR, 0.05));
    CHECK_OK(tlearn_optim_set(*o, TLEARN_OPT_WEIGHT_DECAY, 0.001));
    if (kind == TLEARN_SGD)
        CHECK_OK(tlearn_optim_set(*o, TLEARN_OPT_MOMENTUM, 0.9));
    float x[16 * 6];
    int32_t y[16];
    io_make_data(x, y, 16, 6, 3, 7);
    for (int s = 0; s < 3; s++)
        CHECK_OK(tlearn_model_train_step(m, *o, x, y, 16, NULL));
    CHECK_OK(tlearn_model_set_metadata(m, "task", "unit test"));
    CHECK_OK(tlearn_model_set_metadata(m, "classes", "a,b,c"));
    return m;
}

static void assert_slots_equal(const tlearn_model *a, const tlearn_model *b)
{
    assert_int_equal(a->nlayers, b->nlayers);
    for (int i = 0; i < a->nlayers; i++) {
        assert_int_equal(a->lstate[i].frozen, b->lstate[i].frozen);
        assert_true(a->lstate[i].lr_scale == b->lstate[i].lr_scale);
        for (int p = 0; p < a->layers[i]->nparam; p++) {
            const tl_slot *x = &a->lstate[i].slot[p], *y = &b->lstate[i].slot[p];
            size_t n = a->layers[i]->param[p].t.numel;
            assert_int_equal(x->step, y->step);
            assert_int_equal(x->opt_kind, y->opt_kind);
            assert_int_equal(x->m1 != NULL, y->m1 != NULL);
            assert_int_equal(x->m2 != NULL, y->m2 != NULL);
            if (x->m1)
                assert_memory_equal(x->m1, y->m1, n * sizeof(float));
            if (x->m2)
                assert_memory_equal(x->m2, y->m2, n * sizeof(float));
            /* no gradient buffers after a load: allocated on first training use */
            assert_null(y->grad);
        }
    }
}

static void test_roundtrip_full(void **state)
{
    (void)state;
    const int kinds[] = {TLEARN_SGD, TLEARN_ADAM, TLEARN_ADAMW};
    for (int k = 0; k < 3; k++) {
        tlearn_optim *o;
        tlearn_model *m = trained_mlp(&o, kinds[k], 11);
        CHECK_OK(tlearn_model_set_threads(m, 2));
        CHECK_OK(tlearn_model_set_training(m, 0));
        const char *path = tmp_path("full.ckpt");
        CHECK_OK(tlearn_model_save(m, o, path, TLEARN_SAVE_FULL));
        tlearn_model *l;
        tlearn_optim *lo;
        CHECK_OK(tlearn_model_load(&l, &lo, path));
        assert_true(io_models_equal(m, l));
        assert_slots_equal(m, l);
        assert_memory_equal(m->rng.s, l->rng.s, sizeof m->rng.s);
        assert_int_equal(l->seed, 11);
        assert_int_equal(l->threads, 1); /* the loading host decides, not the file */
        assert_int_equal(l->training, 0);
        assert_int_equal(l->loss_kind, TLEARN_LOSS_SOFTMAX_CE);
        assert_non_null(lo);
        int kind;
        CHECK_OK(tlearn_optim_kind(lo, &kind));
        assert_int_equal(kind, kinds[k]);
        assert_memory_equal(o, lo, sizeof *o);
        const char *v;
        CHECK_OK(tlearn_model_get_metadata(l, "task", &v));
        assert_string_equal(v, "unit test");
        CHECK_OK(tlearn_model_get_metadata(l, "classes", &v));
        assert_string_equal(v, "a,b,c");
        /* predictions agree */
        float x[4 * 6], pa[4 * 3], pb[4 * 3];
        int32_t y[4];
        io_make_data(x, y, 4, 6, 3, 99);
        CHECK_OK(tlearn_model_predict(m, x, 4, pa, 12));
        CHECK_OK(tlearn_model_predict(l, x, 4, pb, 12));
        assert_memory_equal(pa, pb, sizeof pa);
        /* optimizer NULL: the model still loads, *optim untouched since not requested */
        tlearn_model *l2;
        CHECK_OK(tlearn_model_load(&l2, NULL, path));
        assert_true(io_models_equal(m, l2));
        tlearn_model_destroy(&l2);
        tlearn_model_destroy(&l);
        tlearn_optim_destroy(&lo);
        tlearn_model_destroy(&m);
        tlearn_optim_destroy(&o);
    }
}

static void test_roundtrip_compressed(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained_mlp(&o, TLEARN_ADAM, 3);
    const char *raw = tmp_path("raw.ckpt"), *z = tmp_path("z.ckpt");
    /* a compressible tensor: zlib must make the file smaller */
    float zeros[8 * 6];
    memset(zeros, 0, sizeof zeros);
    CHECK_OK(tlearn_model_set_tensor(m, "fc1.weight", zeros, 48));
    CHECK_OK(tlearn_model_save(m, o, raw, 0));
    CHECK_OK(tlearn_model_save(m, o, z, TLEARN_SAVE_COMPRESS(9)));
    struct stat sr, sz;
    assert_int_equal(stat(raw, &sr), 0);
    assert_int_equal(stat(z, &sz), 0);
    assert_true(sz.st_size < sr.st_size);
    tlearn_model *l;
    tlearn_optim *lo;
    CHECK_OK(tlearn_model_load(&l, &lo, z));
    assert_true(io_models_equal(m, l));
    assert_slots_equal(m, l);
    tlearn_model_destroy(&l);
    tlearn_optim_destroy(&lo);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

/* Every layer kind: its arguments rebuild it exactly. */
static void test_roundtrip_all_kinds(void **state)
{
    (void)state;
    tlearn_model *m;
    CHECK_OK(tlearn_model_create(&m, 3, 8, 8));
    CHECK_OK(tlearn_model_set_seed(m, 5));
    CHECK_OK(tlearn_model_add_conv2d_ex(m, "conv1", 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1));
    CHECK_OK(tlearn_model_add_batchnorm(m, "bn1", 1e-5f, 0.1f));
    CHECK_OK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_LEAKY_RELU, 0.02f));
    CHECK_OK(tlearn_model_add_conv2d(m, "conv2", 4, 3, 1, 1, 2));
    CHECK_OK(tlearn_model_add_add(m, "res", "relu1"));
    CHECK_OK(tlearn_model_add_maxpool2d(m, "pool1", 2, 0, 0));
    CHECK_OK(tlearn_model_add_avgpool2d(m, "pool2", 2, 1, 1, 0));
    CHECK_OK(tlearn_model_add_global_avgpool(m, "gap"));
    CHECK_OK(tlearn_model_add_flatten(m, "flat"));
    CHECK_OK(tlearn_model_add_dropout(m, "drop", 0.25f));
    CHECK_OK(tlearn_model_add_dense(m, "head", 5));
    tlearn_optim *o;
    CHECK_OK(tlearn_optim_create(&o, TLEARN_SGD));
    float x[4 * 3 * 64];
    int32_t y[4];
    io_make_data(x, y, 4, 3 * 64, 5, 1);
    CHECK_OK(tlearn_model_train_step(m, o, x, y, 4, NULL)); /* BN statistics move */
    const char *path = tmp_path("kinds.ckpt");
    CHECK_OK(tlearn_model_save(m, o, path, TLEARN_SAVE_COMPRESS(1)));
    tlearn_model *l;
    CHECK_OK(tlearn_model_load(&l, NULL, path));
    assert_true(io_models_equal(m, l));
    float pa[4 * 5], pb[4 * 5];
    CHECK_OK(tlearn_model_predict(m, x, 4, pa, 20));
    CHECK_OK(tlearn_model_predict(l, x, 4, pb, 20));
    assert_memory_equal(pa, pb, sizeof pa);
    /* training continues identically, dropout masks included (same RNG state) */
    float la, lb;
    CHECK_OK(tlearn_model_train_step(m, o, x, y, 4, &la));
    CHECK_OK(tlearn_model_train_step(l, o, x, y, 4, &lb));
    assert_true(la == lb);
    assert_true(io_models_equal(m, l));
    tlearn_model_destroy(&l);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

static void test_inference_only(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained_mlp(&o, TLEARN_ADAM, 4);
    const char *full = tmp_path("f.ckpt"), *inf = tmp_path("i.ckpt");
    CHECK_OK(tlearn_model_save(m, o, full, 0));
    CHECK_OK(tlearn_model_save(m, o, inf, TLEARN_SAVE_INFERENCE));
    struct stat sf, si;
    assert_int_equal(stat(full, &sf), 0);
    assert_int_equal(stat(inf, &si), 0);
    assert_true(si.st_size < sf.st_size); /* no Adam moments */
    tlearn_model *l;
    tlearn_optim *lo = (tlearn_optim *)1;
    CHECK_OK(tlearn_model_load(&l, &lo, inf));
    assert_null(lo);
    assert_true(io_models_equal(m, l));
    for (int i = 0; i < l->nlayers; i++)
        for (int p = 0; p < l->layers[i]->nparam; p++) {
            assert_null(l->lstate[i].slot[p].m1);
            assert_int_equal(l->lstate[i].slot[p].step, 0);
        }
    tlearn_model_destroy(&l);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

static void test_freeze_and_ewc_state(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(6, 8, 3, 21);
    tlearn_optim *o;
    CHECK_OK(tlearn_optim_create(&o, TLEARN_ADAMW));
    float x[16 * 6];
    int32_t y[16];
    io_make_data(x, y, 16, 6, 3, 2);
    CHECK_OK(tlearn_model_train_step(m, o, x, y, 16, NULL));
    CHECK_OK(tlearn_ewc_consolidate(m, x, y, 16, TLEARN_FISHER_EMPIRICAL, 10.0f));
    tlearn_freeze *f;
    CHECK_OK(tlearn_freeze_create(&f));
    CHECK_OK(tlearn_freeze_match(f, "fc1", 1));
    CHECK_OK(tlearn_freeze_lr_scale(f, "fc2", 0.5f));
    CHECK_OK(tlearn_model_apply_freeze(m, f));
    tlearn_freeze_destroy(&f);
    CHECK_OK(tlearn_model_train_step(m, o, x, y, 16, NULL));
    const char *path = tmp_path("ewc.ckpt");
    CHECK_OK(tlearn_model_save(m, o, path, 0));
    tlearn_model *l;
    CHECK_OK(tlearn_model_load(&l, NULL, path));
    int frozen;
    float scale;
    CHECK_OK(tlearn_model_layer_frozen(l, "fc1", &frozen));
    assert_int_equal(frozen, 1);
    CHECK_OK(tlearn_model_layer_lr_scale(l, "fc2", &scale));
    assert_true(scale == 0.5f);
    assert_slots_equal(m, l);
    float pa, pb;
    CHECK_OK(tlearn_model_penalty(m, &pa));
    CHECK_OK(tlearn_model_penalty(l, &pb));
    assert_true(pa > 0.0f);
    assert_true(pa == pb);
    float fa[8 * 6], fb[8 * 6];
    /* fc2 was trainable when consolidated: its Fisher round-trips */
    float ga[3 * 8], gb[3 * 8];
    CHECK_OK(tlearn_ewc_get_fisher(m, 0, "fc2.weight", ga, 24));
    CHECK_OK(tlearn_ewc_get_fisher(l, 0, "fc2.weight", gb, 24));
    assert_memory_equal(ga, gb, sizeof ga);
    CHECK_OK(tlearn_ewc_get_fisher(m, 0, "fc1.weight", fa, 48));
    CHECK_OK(tlearn_ewc_get_fisher(l, 0, "fc1.weight", fb, 48));
    assert_memory_equal(fa, fb, sizeof fa);
    tlearn_model_destroy(&l);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

typedef struct meta_seen {
    int n;
    char keys[4][32], values[4][32];
    int stop_after;
} meta_seen;

static int on_meta(const char *key, const char *value, void *user)
{
    meta_seen *s = user;
    snprintf(s->keys[s->n], 32, "%s", key);
    snprintf(s->values[s->n], 32, "%s", value);
    s->n++;
    return s->n == s->stop_after;
}

static void test_read_metadata(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *m = trained_mlp(&o, TLEARN_SGD, 1);
    const char *path = tmp_path("meta.ckpt");
    CHECK_OK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_COMPRESS(3)));
    meta_seen s = {0};
    CHECK_OK(tlearn_checkpoint_read_metadata(path, on_meta, &s));
    assert_int_equal(s.n, 2);
    assert_string_equal(s.keys[0], "task");
    assert_string_equal(s.values[0], "unit test");
    assert_string_equal(s.keys[1], "classes");
    assert_string_equal(s.values[1], "a,b,c");
    meta_seen s1 = {0};
    s1.stop_after = 1;
    CHECK_OK(tlearn_checkpoint_read_metadata(path, on_meta, &s1));
    assert_int_equal(s1.n, 1);
    assert_int_equal(tlearn_checkpoint_read_metadata(NULL, on_meta, &s), TLEARN_EINVAL);
    assert_int_equal(tlearn_checkpoint_read_metadata(path, NULL, &s), TLEARN_EINVAL);
    assert_int_equal(tlearn_checkpoint_read_metadata(tmp_path("none.ckpt"), on_meta, &s),
                     TLEARN_EIO);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

static void test_load_weights(void **state)
{
    (void)state;
    tlearn_optim *o;
    tlearn_model *src = trained_mlp(&o, TLEARN_ADAM, 8);
    const char *path = tmp_path("w.ckpt");
    CHECK_OK(tlearn_model_save(src, o, path, 0));
    size_t matched = 99, skipped = 99;
    /* same architecture, other weights: strict loads all */
    tlearn_model *dst = io_make_mlp(6, 8, 3, 1234);
    assert_false(io_models_equal(src, dst));
    CHECK_OK(tlearn_model_load_weights(dst, path, TLEARN_LOAD_STRICT, &matched, &skipped));
    assert_int_equal(matched, 4);
    assert_int_equal(skipped, 0);
    assert_true(io_models_equal(src, dst));
    tlearn_model_destroy(&dst);
    /* another head size: strict refuses and changes nothing; partial loads fc1 */
    dst = io_make_mlp(6, 8, 5, 1234);
    tlearn_model *before = io_make_mlp(6, 8, 5, 1234);
    assert_int_equal(tlearn_model_load_weights(dst, path, TLEARN_LOAD_STRICT, NULL, NULL),
                     TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "fc2.weight"));
    assert_true(io_models_equal(before, dst));
    CHECK_OK(tlearn_model_load_weights(dst, path, TLEARN_LOAD_PARTIAL, &matched, &skipped));
    assert_int_equal(matched, 2);
    assert_int_equal(skipped, 2);
    float a[48], b[48];
    CHECK_OK(tlearn_model_get_tensor(src, "fc1.weight", a, 48));
    CHECK_OK(tlearn_model_get_tensor(dst, "fc1.weight", b, 48));
    assert_memory_equal(a, b, sizeof a);
    tlearn_model_destroy(&dst);
    tlearn_model_destroy(&before);
    /* an extra layer: strict says which tensor is missing from the file */
    dst = io_make_mlp(6, 8, 3, 1);
    CHECK_OK(tlearn_model_add_dense(dst, "fc3", 2));
    assert_int_equal(tlearn_model_load_weights(dst, path, TLEARN_LOAD_STRICT, NULL, NULL),
                     TLEARN_ENOTFOUND);
    assert_non_null(strstr(tlearn_errmsg(), "fc3.weight"));
    assert_int_equal(tlearn_model_load_weights(dst, path, 7, NULL, NULL), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_load_weights(NULL, path, 0, NULL, NULL), TLEARN_EINVAL);
    tlearn_model_destroy(&dst);
    tlearn_model_destroy(&src);
    tlearn_optim_destroy(&o);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 4, 2, 1);
    tlearn_model *l = (tlearn_model *)1;
    assert_int_equal(tlearn_model_save(NULL, NULL, "x", 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_save(m, NULL, NULL, 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_save(m, NULL, "", 0), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_save(m, NULL, tmp_path("x"), 2u), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_save(m, NULL, tmp_path("x"), TLEARN_SAVE_COMPRESS(12)),
                     TLEARN_EINVAL);
    assert_non_null(strstr(tlearn_errmsg(), "flags"));
    assert_int_equal(tlearn_model_load(NULL, NULL, "x"), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_load(&l, NULL, NULL), TLEARN_EINVAL);
    assert_null(l);
    assert_int_equal(tlearn_model_load(&l, NULL, tmp_path("missing.ckpt")), TLEARN_EIO);
    assert_non_null(strstr(tlearn_errmsg(), "No such file"));
    assert_int_equal(tlearn_model_load(&l, NULL, tmpdir), TLEARN_EIO); /* a directory */
    /* not a checkpoint at all */
    write_file(tmp_path("text.ckpt"), "hello, world\n", 13);
    assert_int_equal(tlearn_model_load(&l, NULL, tmp_path("text.ckpt")), TLEARN_EFORMAT);
    assert_non_null(strstr(tlearn_errmsg(), "magic"));
    tlearn_model_destroy(&m);
}

static void fix_header_crc(unsigned char *p)
{
    tl_put_u32(p + 60, (uint32_t)crc32(0L, p, 60));
}

static void test_versions(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 4, 2, 1);
    const char *path = tmp_path("v.ckpt");
    CHECK_OK(tlearn_model_save(m, NULL, path, 0));
    size_t len;
    unsigned char *p = read_file(path, &len);
    assert_int_equal(p[8], 1);  /* major */
    assert_int_equal(p[10], 0); /* minor */
    tlearn_model *l;
    /* a newer minor version is read */
    p[10] = 3;
    fix_header_crc(p);
    write_file(path, p, len);
    CHECK_OK(tlearn_model_load(&l, NULL, path));
    assert_true(io_models_equal(m, l));
    tlearn_model_destroy(&l);
    /* an unknown major version is refused, with or without a valid CRC */
    p[8] = 2;
    write_file(path, p, len);
    assert_int_equal(tlearn_model_load(&l, NULL, path), TLEARN_EVERSION);
    assert_non_null(strstr(tlearn_errmsg(), "major"));
    assert_non_null(strstr(tlearn_errmsg(), "2.3"));
    fix_header_crc(p);
    write_file(path, p, len);
    assert_int_equal(tlearn_model_load(&l, NULL, path), TLEARN_EVERSION);
    assert_int_equal(tlearn_checkpoint_read_metadata(path, on_meta, &(meta_seen){0}),
                     TLEARN_EVERSION);
    assert_int_equal(tlearn_model_load_weights(m, path, 0, NULL, NULL), TLEARN_EVERSION);
    free(p);
    tlearn_model_destroy(&m);
}

/* Offset of the section of @p kind, from the table. */
static size_t section_offset(const unsigned char *p, uint32_t kind, size_t *size)
{
    uint64_t n = tl_get_u64(p + 24);
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *e = p + 64 + 32 * i;
        if (tl_get_u32(e) == kind) {
            *size = (size_t)tl_get_u64(e + 16);
            return (size_t)tl_get_u64(e + 8);
        }
    }
    fail_msg("no section of kind %u", kind);
    return 0;
}

static void test_messages_name_the_damage(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(4, 4, 2, 1);
    const char *path = tmp_path("msg.ckpt");
    CHECK_OK(tlearn_model_save(m, NULL, path, 0));
    size_t len, size;
    unsigned char *p = read_file(path, &len);
    tlearn_model *l;
    /* the first array in DATA is fc1.weight */
    size_t data = section_offset(p, 4, &size);
    p[data + 5] ^= 0x10;
    assert_int_equal(tl_checkpoint_load_buffer("load", p, len, &l, NULL), TLEARN_EFORMAT);
    assert_non_null(strstr(tlearn_errmsg(), "section TENSORS, tensor 'fc1.weight'"));
    assert_non_null(strstr(tlearn_errmsg(), "CRC-32 expected"));
    p[data + 5] ^= 0x10;
    /* a layer argument: found in LAYERS, checked by CRC first */
    size_t layers = section_offset(p, 2, &size);
    p[layers + 20] ^= 1;
    assert_int_equal(tl_checkpoint_load_buffer("load", p, len, &l, NULL), TLEARN_EFORMAT);
    assert_non_null(strstr(tlearn_errmsg(), "section LAYERS, field 'crc'"));
    p[layers + 20] ^= 1;
    /* truncated file */
    assert_int_equal(tl_checkpoint_load_buffer("load", p, len - 1, &l, NULL), TLEARN_EFORMAT);
    assert_non_null(strstr(tlearn_errmsg(), "file_size"));
    CHECK_OK(tl_checkpoint_load_buffer("load", p, len, &l, NULL));
    tlearn_model_destroy(&l);
    free(p);
    tlearn_model_destroy(&m);
}

/* Every single-byte change and every truncation is refused (every byte is covered by a
 * CRC or must be zero padding); no crash, no leak (run under ASan/valgrind in CI). */
static void sweep(const unsigned char *orig, size_t len, size_t *variants)
{
    unsigned char *p = malloc(len);
    memcpy(p, orig, len);
    for (size_t i = 0; i < len; i++) {
        p[i] ^= 0xFF;
        tlearn_model *l = NULL;
        tlearn_optim *o = NULL;
        int rc = tl_checkpoint_load_buffer("sweep", p, len, &l, &o);
        if (rc == TLEARN_OK)
            fail_msg("byte %zu xor 0xff was accepted", i);
        assert_null(l);
        assert_null(o);
        assert_true(rc == TLEARN_EFORMAT || rc == TLEARN_EVERSION);
        p[i] ^= 0xFF;
        (*variants)++;
    }
    for (size_t n = 0; n < len; n++) {
        unsigned char *t = malloc(n ? n : 1); /* exact size: ASan sees any overread */
        memcpy(t, p, n);
        tlearn_model *l = NULL;
        int rc = tl_checkpoint_load_buffer("sweep", t, n, &l, NULL);
        if (rc == TLEARN_OK)
            fail_msg("truncation to %zu bytes was accepted", n);
        assert_int_equal(rc, TLEARN_EFORMAT);
        free(t);
        (*variants)++;
    }
    free(p);
}

static void test_corruption_sweep(void **state)
{
    (void)state;
    tlearn_model *m = io_make_mlp(3, 4, 2, 9);
    tlearn_optim *o;
    CHECK_OK(tlearn_optim_create(&o, TLEARN_ADAM));
    float x[4 * 3];
    int32_t y[4];
    io_make_data(x, y, 4, 3, 2, 5);
    CHECK_OK(tlearn_model_train_step(m, o, x, y, 4, NULL));
    CHECK_OK(tlearn_ewc_consolidate(m, x, y, 4, TLEARN_FISHER_EMPIRICAL, 1.0f));
    CHECK_OK(tlearn_model_set_metadata(m, "k", "v"));
    size_t variants = 0;
    const unsigned flags[] = {0, TLEARN_SAVE_COMPRESS(6), TLEARN_SAVE_INFERENCE};
    for (int f = 0; f < 3; f++) {
        const char *path = tmp_path("sweep.ckpt");
        CHECK_OK(tlearn_model_save(m, o, path, flags[f]));
        size_t len;
        unsigned char *p = read_file(path, &len);
        tlearn_model *l;
        CHECK_OK(tl_checkpoint_load_buffer("sweep", p, len, &l, NULL)); /* the original loads */
        tlearn_model_destroy(&l);
        sweep(p, len, &variants);
        free(p);
    }
    print_message("corruption sweep: %zu damaged variants, all refused\n", variants);
    assert_true(variants > 3000);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
}

/* ---- crash safety ---- */

static tlearn_model *big_model(int layers, uint64_t seed)
{
    tlearn_model *m;
    CHECK_OK(tlearn_model_create(&m, 256, 1, 1));
    CHECK_OK(tlearn_model_set_seed(m, seed));
    char name[16];
    for (int i = 0; i < layers; i++) {
        snprintf(name, sizeof name, "fc%d", i);
        CHECK_OK(tlearn_model_add_dense(m, name, 256));
    }
    return m;
}

static void test_kill_during_save(void **state)
{
    (void)state;
    tlearn_model *a = big_model(2, 1), *b = big_model(3, 2);
    const char *path = tmp_path("crash.ckpt");
    /* Kill within about ten save durations, measured here, so that kills land before,
     * during and after renames whatever the speed of the disk. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int k = 0; k < 3; k++)
        CHECK_OK(tlearn_model_save(k == 1 ? b : a, NULL, path, 0));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long save_us = ((t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000) / 3;
    long window_us = 10 * save_us + 20000; /* a forked saver runs slower at first */
    srand(12345);
    int got_a = 0, got_b = 0;
    const int rounds = 60;
    for (int r = 0; r < rounds; r++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            for (int k = 0;; k++)
                if (tlearn_model_save(k % 2 ? a : b, NULL, path,
                                      k % 3 == 0 ? TLEARN_SAVE_COMPRESS(1) : 0))
                    _exit(3);
        }
        long us = rand() % window_us;
        struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status)); /* killed, not failed */
        tlearn_model *l;
        CHECK_OK(tlearn_model_load(&l, NULL, path));
        int is_a = io_models_equal(l, a), is_b = io_models_equal(l, b);
        assert_true(is_a || is_b);
        got_a += is_a;
        got_b += is_b;
        tlearn_model_destroy(&l);
    }
    int leftovers = count_files(tmpdir, "crash.ckpt.tmp-");
    print_message("kill during save: a save takes %ld us; %d kills, target was old/new model "
                  "%d/%d times, %d temporary files left by killed savers\n", save_us, rounds,
                  got_a, got_b, leftovers);
    assert_true(got_a > 0 && got_b > 0); /* the kills landed at different moments */
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

static void test_save_failures_leave_old_file(void **state)
{
    (void)state;
    tlearn_model *old = io_make_mlp(4, 4, 2, 1), *neu = big_model(2, 3);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/ro", tmpdir);
    assert_int_equal(mkdir(dir, 0755), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/model.ckpt", dir);
    CHECK_OK(tlearn_model_save(old, NULL, path, 0));

    /* 1. a read-only directory (root ignores permissions: drop to nobody in a child) */
    assert_int_equal(chmod(dir, 0555), 0);
    pid_t pid = fork();
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
            _exit(10);
        int rc = tlearn_model_save(neu, NULL, path, 0);
        if (rc != TLEARN_EIO)
            _exit(11);
        if (!strstr(tlearn_errmsg(), "Permission denied") || !strstr(tlearn_errmsg(), path))
            _exit(12);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(chmod(dir, 0755), 0);

    /* 2. the disk fills up mid-write (a file size limit: write fails with EFBIG) */
    pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {64 * 1024, 64 * 1024};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(20);
        int rc = tlearn_model_save(neu, NULL, path, 0);
        if (rc != TLEARN_EIO)
            _exit(21);
        if (!strstr(tlearn_errmsg(), "write"))
            _exit(22);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* the old file is intact and no temporary file is left */
    tlearn_model *l;
    CHECK_OK(tlearn_model_load(&l, NULL, path));
    assert_true(io_models_equal(l, old));
    tlearn_model_destroy(&l);
    assert_int_equal(count_files(dir, ".tmp-"), 0);
    assert_int_equal(count_files(dir, "model.ckpt"), 1);

    /* 3. a missing directory */
    snprintf(path, sizeof path, "%s/no/such/dir/model.ckpt", tmpdir);
    assert_int_equal(tlearn_model_save(old, NULL, path, 0), TLEARN_EIO);
    assert_non_null(strstr(tlearn_errmsg(), "No such file or directory"));
    assert_int_equal(tlearn_model_export_safetensors(old, path), TLEARN_EIO);
    tlearn_model_destroy(&old);
    tlearn_model_destroy(&neu);
}

static int rm_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tlearn-io-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    /* nobody must be able to reach the read-only test directory */
    chmod(tmpdir, 0755);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_full),
        cmocka_unit_test(test_roundtrip_compressed),
        cmocka_unit_test(test_roundtrip_all_kinds),
        cmocka_unit_test(test_inference_only),
        cmocka_unit_test(test_freeze_and_ewc_state),
        cmocka_unit_test(test_read_metadata),
        cmocka_unit_test(test_load_weights),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_messages_name_the_damage),
        cmocka_unit_test(test_corruption_sweep),
        cmocka_unit_test(test_kill_during_save),
        cmocka_unit_test(test_save_failures_leave_old_file),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    rm_tree(tmpdir);
    return failed;
}
