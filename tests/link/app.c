/* A host program for tests/link: uses libtlearn through its public API, and defines
 * functions with the names of library internals (tl_alloc, tl_free, ox_model_build), which
 * must neither clash at link time nor be called by the library. */
#include <stdio.h>
#include <stdlib.h>

#include "tlearn/tlearn.h"

static int host_calls;

void *tl_alloc(size_t n);
void tl_free(void *p);
int ox_model_build(void);

void *tl_alloc(size_t n)
{
    host_calls++;
    return malloc(n);
}

void tl_free(void *p)
{
    host_calls++;
    free(p);
}

int ox_model_build(void)
{
    return 42;
}

#define OK(call)                                                                              \
    do {                                                                                      \
        if ((call) != TLEARN_OK) {                                                            \
            fprintf(stderr, "%s failed: %s\n", #call, tlearn_errmsg());                       \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

int main(void)
{
    tlearn_model *m, *back;
    OK(tlearn_model_create(&m, 4, 1, 1));
    OK(tlearn_model_add_dense(m, "fc", 3));
    float x[4] = {1, 2, 3, 4}, y[3], z[3];
    OK(tlearn_model_predict(m, x, 1, y, 3));
    void *data;
    size_t size;
    OK(tlearn_model_save_buffer(m, NULL, TLEARN_SAVE_COMPRESS(1), &data, &size));
    OK(tlearn_model_load_buffer(&back, NULL, data, size));
    tlearn_free(data);
    OK(tlearn_model_predict(back, x, 1, z, 3));
    for (int i = 0; i < 3; i++)
        if (y[i] != z[i]) {
            fprintf(stderr, "prediction %d differs after the round trip\n", i);
            return 1;
        }
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&back);
    if (host_calls != 0 || ox_model_build() != 42) {
        fprintf(stderr, "the library called the host's tl_alloc/tl_free (%d calls)\n",
                host_calls);
        return 1;
    }
    printf("ok: libtlearn %s, checkpoint of %zu bytes\n", tlearn_version_string(), size);
    return 0;
}
