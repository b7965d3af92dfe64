/* Stop an example with libtlearn's message when a call fails; say which BLIS runs. */
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

/* Which BLIS kernels run the products, and why ("blas: blis=0.9.0 arch=skx
 * reason=steered ..."): a program on a new CPU sees whether BLIS fell back to `generic`. */
static inline void print_blas_info(void)
{
    char line[TLEARN_BLAS_INFO_MAX];
    if (tlearn_blas_info(line, sizeof line, NULL) == TLEARN_OK)
        printf("blas: %s\n", line);
}

#endif
