/* A progress line for examples: rewritten in place on a terminal, plain lines otherwise.
 * Pass progress_print as the tlearn_progress_fn of tlearn_model_fit(). */
#ifndef EXAMPLES_PROGRESS_H
#define EXAMPLES_PROGRESS_H

#include <stdio.h>
#include <time.h>
#include <unistd.h>

typedef struct progress_state {
    const char *label;
    size_t batch;      /* examples per step, for examples/s */
    struct timespec start;
    int started;
} progress_state;

static inline double progress_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline int progress_print(int epoch, int epochs, size_t step, size_t steps, float loss,
                                 void *user)
{
    progress_state *ps = user;
    static double t0;
    if (!ps->started) {
        t0 = progress_now();
        ps->started = 1;
    }
    size_t done = (size_t)epoch * steps + step + 1, total = (size_t)epochs * steps;
    double el = progress_now() - t0;
    double rate = (double)done * (double)ps->batch / (el > 0 ? el : 1e-9);
    double eta = el / (double)done * (double)(total - done);
    int tty = isatty(STDOUT_FILENO);
    if (tty) {
        printf("\r%s epoch %d/%d step %zu/%zu loss %.4f %.0f ex/s ETA %.0fs   ", ps->label,
               epoch + 1, epochs, step + 1, steps, (double)loss, rate, eta);
        if (done == total)
            printf("\n");
        fflush(stdout);
    } else if (step + 1 == steps) { /* one plain line per epoch in logs */
        printf("%s epoch %d/%d loss %.4f %.0f ex/s\n", ps->label, epoch + 1, epochs,
               (double)loss, rate);
    }
    return 0;
}

#endif
