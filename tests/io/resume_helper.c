/* Fresh-process half of the exact-resume test: load IN (model and optimizer), run part two
 * of the scenario, save the full state to OUT. Public API only. */
#include "resume_common.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN.ckpt OUT.ckpt\n", argv[0]);
        return 2;
    }
    tlearn_model *m;
    tlearn_optim *o;
    CHECK_OK(tlearn_model_load(&m, &o, argv[1]));
    if (!o) {
        fprintf(stderr, "%s: no optimizer in %s\n", argv[0], argv[1]);
        return 1;
    }
    rs_part2(m, o);
    CHECK_OK(tlearn_model_save(m, o, argv[2], TLEARN_SAVE_FULL));
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
    return 0;
}
