/* Exact resume: N steps, save, load in a fresh process (exec of io-resume-helper), M more
 * steps == N + M uninterrupted steps bit for bit, for SGD with momentum, Adam and AdamW,
 * with a freeze policy, frozen BN statistics, dropout, shuffling and EWC in play. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "train/train.h"
#include "resume_common.h"

static const char *helper;
static char tmpdir[64];

static void run_helper(const char *in, const char *out)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(helper, helper, in, out, (char *)NULL);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void assert_same_state(const tlearn_model *a, const tlearn_model *b)
{
    assert_true(io_models_equal(a, b));
    assert_memory_equal(a->rng.s, b->rng.s, sizeof a->rng.s);
    assert_int_equal(a->bn_stats_frozen, b->bn_stats_frozen);
    for (int i = 0; i < a->nlayers; i++) {
        assert_int_equal(a->lstate[i].frozen, b->lstate[i].frozen);
        assert_true(a->lstate[i].lr_scale == b->lstate[i].lr_scale);
        assert_int_equal(a->layers[i]->use_running_stats, b->layers[i]->use_running_stats);
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
        }
    }
    float pa, pb;
    CHECK_OK(tlearn_model_penalty(a, &pa));
    CHECK_OK(tlearn_model_penalty(b, &pb));
    assert_true(pa > 0.0f); /* EWC is active */
    assert_true(pa == pb);
}

static void resume(int kind, unsigned flags)
{
    /* uninterrupted */
    tlearn_model *ref = rs_model();
    tlearn_optim *ro = rs_optim(kind);
    rs_part1(ref, ro);
    rs_part2(ref, ro);
    /* interrupted: part one here, part two in a fresh process */
    tlearn_model *m = rs_model();
    tlearn_optim *o = rs_optim(kind);
    rs_part1(m, o);
    char in[128], out[128];
    snprintf(in, sizeof in, "%s/part1.ckpt", tmpdir);
    snprintf(out, sizeof out, "%s/part2.ckpt", tmpdir);
    CHECK_OK(tlearn_model_save(m, o, in, flags));
    run_helper(in, out);
    tlearn_model *got;
    tlearn_optim *go;
    CHECK_OK(tlearn_model_load(&got, &go, out));
    assert_same_state(ref, got);
    assert_memory_equal(ro, go, sizeof *ro);
    /* and the checkpoint did not just copy the reference: part one alone differs */
    assert_false(io_models_equal(ref, m));
    tlearn_model_destroy(&got);
    tlearn_optim_destroy(&go);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&ref);
    tlearn_optim_destroy(&ro);
}

static void test_resume_sgd_momentum(void **state)
{
    (void)state;
    resume(TLEARN_SGD, 0);
}

static void test_resume_adam(void **state)
{
    (void)state;
    resume(TLEARN_ADAM, TLEARN_SAVE_COMPRESS(6));
}

static void test_resume_adamw(void **state)
{
    (void)state;
    resume(TLEARN_ADAMW, 0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH-TO-io-resume-helper\n", argv[0]);
        return 2;
    }
    helper = argv[1];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tlearn-resume-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_sgd_momentum),
        cmocka_unit_test(test_resume_adam),
        cmocka_unit_test(test_resume_adamw),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        failed++;
    return failed;
}
