/* The allocation-failure sweep (issue 12): a whole life of a model — build a small CNN
 * with batch norm, Adam steps, a full save (raw and zlib), a load, a step and a prediction
 * on the loaded model, destroy — run once per allocation it makes, failing exactly that
 * one (tl_alloc_fail_nth). Each run must end in TLEARN_ENOMEM from the call that met the
 * failure, with that call having changed nothing (tensors, optimizer state, layer list,
 * the file at the save path, no temporary file left), and, once everything is destroyed,
 * the library's live allocations back where they started. Runs under ASan too
 * (tests/sanitize.sh), which adds use-after-free and leaks outside tl_alloc. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#include <cmocka.h>

#include "common.h"
#include "model/model.h"

enum { N = 4, C = 2, HW = 4, CLASSES = 3 };

static char dir[] = "/tmp/tlearn-sweep-XXXXXX";
static char path[600];
static float xs[N * C * HW * HW];
static int32_t ys[N];

/* ---- what a call may not change ---- */

typedef struct snap {
    unsigned char *p;
    size_t len, cap;
} snap;

static void put(snap *s, const void *p, size_t n)
{
    if (s->len + n > s->cap) {
        s->cap = 2 * (s->len + n);
        s->p = realloc(s->p, s->cap); /* plain malloc: the sweep counts the library's only */
        assert_non_null(s->p);
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
}

/* Layers, every tensor, and each slot's optimizer state and step. */
static snap take(const tlearn_model *m)
{
    snap s = {0};
    int n = m ? m->nlayers : -1;
    put(&s, &n, sizeof n);
    for (int i = 0; i < n; i++) {
        const tl_layer *L = m->layers[i];
        put(&s, L->name, strlen(L->name) + 1);
        put(&s, &m->lstate[i].frozen, sizeof(int));
        for (int p = 0; p < L->nparam; p++) {
            const tl_slot *sl = &m->lstate[i].slot[p];
            size_t bytes = L->param[p].t.numel * sizeof(float);
            put(&s, L->param[p].t.data, bytes);
            put(&s, &sl->step, sizeof sl->step);
            put(&s, &sl->opt_kind, sizeof sl->opt_kind);
            int has[2] = {sl->m1 != NULL, sl->m2 != NULL};
            put(&s, has, sizeof has);
            if (sl->m1)
                put(&s, sl->m1, bytes);
            if (sl->m2)
                put(&s, sl->m2, bytes);
        }
    }
    return s;
}

static void same(snap *before, const tlearn_model *m, const char *call, uint64_t nth)
{
    snap after = take(m);
    if (after.len != before->len || memcmp(after.p, before->p, after.len) != 0)
        fail_msg("allocation %llu failed in %s: the model changed", (unsigned long long)nth,
                 call);
    free(after.p);
}

/* The file at the save path, whole. */
static snap file_bytes(void)
{
    snap s = {0};
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0)
        put(&s, buf, k);
    fclose(f);
    return s;
}

static int dir_entries(void)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* ---- the scenario ---- */

typedef struct run {
    uint64_t nth;     /* the failing allocation, 0: none */
    int failed;       /* a call returned TLEARN_ENOMEM */
    const char *call; /* which one */
} run;

/* The model before the call CALL makes. */
static snap before;
static int have_before;

static void snap_begin(const tlearn_model *m)
{
    before = take(m);
    have_before = 1;
}

/* On failure: TLEARN_ENOMEM, and the model as before the call. Returns 1 to go on. */
static int call_checked(run *r, const tlearn_model *m, const char *call, int rc)
{
    if (rc != TLEARN_OK && rc != TLEARN_ENOMEM)
        fail_msg("allocation %llu failed in %s: status %d '%s', expected TLEARN_ENOMEM",
                 (unsigned long long)r->nth, call, rc, tlearn_errmsg());
    if (rc == TLEARN_ENOMEM && !strstr(tlearn_errmsg(), "memory"))
        fail_msg("allocation %llu failed in %s: message '%s' does not say out of memory",
                 (unsigned long long)r->nth, call, tlearn_errmsg());
    if (rc && have_before)
        same(&before, m, call, r->nth);
    if (have_before)
        free(before.p);
    have_before = 0;
    if (rc == TLEARN_OK)
        return 1;
    r->failed = 1;
    r->call = call;
    return 0;
}

/* A call on model @p model, which must not change it when it fails. */
#define CALL(r, model, expr) (snap_begin(model), call_checked(r, model, #expr, (expr)))

static void scenario(run *r)
{
    tlearn_model *m = NULL, *l = NULL;
    tlearn_optim *o = NULL, *lo = NULL;
    float out[N * CLASSES];
    snap old = file_bytes();
    int entries = dir_entries();
    tl_alloc_fail_nth(r->nth);

    if (!call_checked(r, NULL, "tlearn_model_create", tlearn_model_create(&m, C, HW, HW))) {
        assert_null(m);
        goto out;
    }
    if (!CALL(r, m, tlearn_model_add_conv2d(m, "conv", 3, 3, 1, 1, 1)) ||
        !CALL(r, m, tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f)) ||
        !CALL(r, m, tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0.0f)) ||
        !CALL(r, m, tlearn_model_add_flatten(m, "flat")) ||
        !CALL(r, m, tlearn_model_add_dense(m, "fc", CLASSES)))
        goto out;
    if (!call_checked(r, NULL, "tlearn_optim_create", tlearn_optim_create(&o, TLEARN_ADAM))) {
        assert_null(o);
        goto out;
    }
    /* the first step allocates gradients, moments and the plan; the second nothing */
    if (!CALL(r, m, tlearn_model_train_step(m, o, xs, ys, N, NULL)) ||
        !CALL(r, m, tlearn_model_train_step(m, o, xs, ys, N, NULL)))
        goto out;
    static const unsigned levels[] = {TLEARN_SAVE_FULL | TLEARN_SAVE_COMPRESS(1),
                                      TLEARN_SAVE_FULL};
    for (int k = 0; k < 2; k++) {
        if (!CALL(r, m, tlearn_model_save(m, o, path, levels[k]))) {
            snap now = file_bytes();
            if (now.len != old.len || memcmp(now.p, old.p, now.len) != 0)
                fail_msg("allocation %llu failed in a save: the file changed",
                         (unsigned long long)r->nth);
            free(now.p);
            if (dir_entries() != entries)
                fail_msg("allocation %llu failed in a save: a temporary file was left",
                         (unsigned long long)r->nth);
            goto out;
        }
        free(old.p);
        old = file_bytes();
    }
    if (!call_checked(r, NULL, "tlearn_model_load", tlearn_model_load(&l, &lo, path))) {
        assert_null(l);
        assert_null(lo);
        goto out;
    }
    if (!CALL(r, l, tlearn_model_train_step(l, lo, xs, ys, N, NULL)) ||
        !CALL(r, l, tlearn_model_predict(l, xs, N, out, N * CLASSES)))
        goto out;
out:
    tl_alloc_fail_nth(0);
    free(old.p);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&l);
    tlearn_optim_destroy(&o);
    tlearn_optim_destroy(&lo);
}

static void test_every_allocation_fails_cleanly(void **state)
{
    (void)state;
    /* Without failures: how many allocations the scenario makes, and that it runs. */
    int64_t live = tl_alloc_live();
    uint64_t calls = tl_alloc_calls();
    run r = {0, 0, NULL};
    scenario(&r);
    assert_false(r.failed);
    uint64_t total = tl_alloc_calls() - calls;
    assert_int_equal(tl_alloc_live(), live);
    assert_true(total > 20);
    for (uint64_t nth = 1; nth <= total; nth++) {
        r = (run){nth, 0, NULL};
        scenario(&r);
        if (!r.failed)
            fail_msg("allocation %llu of %llu: no call reported it", (unsigned long long)nth,
                     (unsigned long long)total);
        if (tl_alloc_live() != live)
            fail_msg("allocation %llu failed in %s: %lld blocks leaked", (unsigned long long)nth,
                     r.call, (long long)(tl_alloc_live() - live));
    }
    printf("# %llu allocations, each failed once: ENOMEM, nothing changed, nothing leaked\n",
           (unsigned long long)total);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/model.tlck", dir);
    FILE *f = fopen(path, "wb"); /* what a failed first save must leave as it is */
    if (!f || fputs("an older file\n", f) < 0 || fclose(f) != 0)
        return -1;
    io_make_data(xs, ys, N, C * HW * HW, CLASSES, 7);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    rmdir(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_allocation_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
