/* Learning-rate schedules: the configuration (tlearn_sched) and the running copy an
 * optimizer owns. The value at step t is a closed form of t, so a schedule resumes from
 * its position alone. */
#ifndef TL_SCHEDULE_H
#define TL_SCHEDULE_H

#include <stdint.h>

#include "tlearn/tlearn.h"

#define TL_SCHED_NPARAM 20         /* enum tlearn_sched_param runs 1..TL_SCHED_NPARAM */
#define TL_SCHED_MAX_MILESTONES 64

struct tlearn_sched {
    int kind;
    double p[TL_SCHED_NPARAM + 1]; /* by enum tlearn_sched_param */
    int nmile;
    int64_t mile[TL_SCHED_MAX_MILESTONES]; /* strictly increasing, >= 1 */
};

/* What an optimizer runs: its own copy of the schedule and how many steps it has taken. */
typedef struct tl_sched_run {
    tlearn_sched cfg;
    int64_t t;
} tl_sched_run;

/* Learning rate (and, for one-cycle with momentum cycling, the momentum or beta1 in
 * *mom; NaN otherwise) of @p s at step @p t for base learning rate @p base. */
void tl_sched_eval(const tlearn_sched *s, int64_t t, double base, double *lr, double *mom);
/* Whether every length the schedule needs is set (0 means "from fit"). */
int tl_sched_ready(const tlearn_sched *s);
/* Fill the lengths left at 0 from @p total schedule steps (fit: epochs, or updates), and
 * check the result; TLEARN_EINVAL with a message otherwise. */
int tl_sched_resolve(const char *fn, tlearn_sched *s, int64_t total);
/* Check a configuration as a whole (lengths that are set, phases of one-cycle). */
int tl_sched_check(const char *fn, const tlearn_sched *s);
/* Set one parameter with the public call's checks (also used by the checkpoint loader). */
int tl_sched_set(const char *fn, tlearn_sched *s, int param, double v);

#endif
