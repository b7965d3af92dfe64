/* Stop an example with libtlearn's message when a call fails. */
#ifndef EXAMPLES_CHECK_H
#define EXAMPLES_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include <tlearn/tlearn.h>

#define CHECK(call)                                                                           \
    do {                                                                                      \
        int rc_ = (call);                                                                     \
        if (rc_ != TLEARN_OK) {                                                               \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, tlearn_strerror(rc_),              \
                    tlearn_errmsg());                                                         \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

#endif
