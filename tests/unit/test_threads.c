/* Several host threads at once (issue 12, the TSan suite): each trains and predicts its own
 * model with 2 OpenMP threads, and its results are the ones the same work gives alone on
 * the main thread; each thread's error message stays its own while the others fail too.
 * Run in suite 'unit' and, built with -Db_sanitize=thread by tests/tsan.sh, in suite
 * 'threads', where ThreadSanitizer reports any data race between them. Public API only. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tlearn/tlearn.h"

enum { WORKERS = 3, N = 8, C = 2, HW = 6, CLASSES = 4, STEPS = 3 };

#define OK(call)                                                                              \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        if (rc_ != TLEARN_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s -> %d (%s)\n", __FILE__, __LINE__, #call, rc_,        \
                    tlearn_errmsg());                                                         \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

typedef struct job {
    int id;
    float x[N * C * HW * HW];
    int32_t y[N];
    float loss[STEPS];
    float out[N * CLASSES];
    pthread_barrier_t *barrier; /* NULL: alone */
    int errmsg_ok;
} job;

/* Train a small CNN (conv, batch norm, pool, dense) with Adam, then predict. */
static int work(job *j)
{
    tlearn_model *m = NULL;
    tlearn_optim *o = NULL;
    OK(tlearn_model_create(&m, C, HW, HW));
    OK(tlearn_model_set_seed(m, 100u + (uint64_t)j->id));
    OK(tlearn_model_set_threads(m, 2));
    OK(tlearn_model_add_conv2d(m, "conv", 8, 3, 1, 1, 1));
    OK(tlearn_model_add_batchnorm(m, "bn", 1e-5f, 0.1f));
    OK(tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0.0f));
    OK(tlearn_model_add_maxpool2d(m, "pool", 2, 2, 0));
    OK(tlearn_model_add_dense(m, "fc", CLASSES));
    OK(tlearn_optim_create(&o, TLEARN_ADAM));

    /* A failure of this thread's own, then every thread's at once: the message each
     * thread reads names its own layer. */
    char name[32];
    snprintf(name, sizeof name, "bad-%d", j->id);
    int rc = tlearn_model_add_dense(m, name, -1);
    if (j->barrier)
        pthread_barrier_wait(j->barrier);
    j->errmsg_ok = rc == TLEARN_EINVAL && strstr(tlearn_errmsg(), name) != NULL;
    for (int k = 0; k < WORKERS; k++) {
        char other[32];
        snprintf(other, sizeof other, "bad-%d", k);
        if (k != j->id && strstr(tlearn_errmsg(), other))
            j->errmsg_ok = 0;
    }
    if (j->barrier)
        pthread_barrier_wait(j->barrier);

    for (int s = 0; s < STEPS; s++)
        OK(tlearn_model_train_step(m, o, j->x, j->y, N, &j->loss[s]));
    OK(tlearn_model_set_training(m, 0));
    OK(tlearn_model_predict(m, j->x, N, j->out, N * CLASSES));
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    return 0;
}

static void *run(void *arg)
{
    return (void *)(intptr_t)work(arg);
}

static void fill(job *j, int id)
{
    memset(j, 0, sizeof *j);
    j->id = id;
    uint32_t s = 12345u + 777u * (uint32_t)id;
    for (size_t i = 0; i < sizeof j->x / sizeof j->x[0]; i++) {
        s = s * 1664525u + 1013904223u;
        j->x[i] = (float)((s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
    for (int i = 0; i < N; i++)
        j->y[i] = (i + id) % CLASSES;
}

static void test_threads_train_their_own_models(void **state)
{
    (void)state;
    static job alone[WORKERS], together[WORKERS];
    for (int i = 0; i < WORKERS; i++) { /* the reference: one after the other */
        fill(&alone[i], i);
        assert_int_equal(work(&alone[i]), 0);
        assert_true(alone[i].errmsg_ok);
    }
    pthread_barrier_t barrier;
    assert_int_equal(pthread_barrier_init(&barrier, NULL, WORKERS), 0);
    pthread_t t[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        fill(&together[i], i);
        together[i].barrier = &barrier;
        assert_int_equal(pthread_create(&t[i], NULL, run, &together[i]), 0);
    }
    for (int i = 0; i < WORKERS; i++) {
        void *rc;
        assert_int_equal(pthread_join(t[i], &rc), 0);
        assert_int_equal((intptr_t)rc, 0);
    }
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < WORKERS; i++) {
        if (!together[i].errmsg_ok)
            fail_msg("thread %d did not read its own error message", i);
        /* same work, same model, same 2 threads: the same bits */
        assert_memory_equal(together[i].loss, alone[i].loss, sizeof alone[i].loss);
        assert_memory_equal(together[i].out, alone[i].out, sizeof alone[i].out);
        for (int k = 0; k < N * CLASSES; k++)
            assert_true(alone[i].out[k] == alone[i].out[k]); /* finite outputs, not NaN */
    }
    /* the models differ (different seeds and data): a mix-up would show */
    assert_true(memcmp(alone[0].out, alone[1].out, sizeof alone[0].out) != 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_train_their_own_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
