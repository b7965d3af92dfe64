/* Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX files, gzip), read with
 * zlib's gz API. Pixels become floats in [0, 1]; labels int32 0..9. */
#ifndef FMNIST_H
#define FMNIST_H

#include <stddef.h>
#include <stdint.h>

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_PIXELS 784

typedef struct fmnist {
    size_t n;
    float *images;   /* n x 784, row-major */
    int32_t *labels; /* n */
} fmnist;

/* Load the "train" or "t10k" split from @p dir (NULL: FMNIST_DIR), at most @p limit images
 * (0: all). Returns 0, or -1 with a message in @p err. */
int fmnist_load(fmnist *out, const char *dir, const char *split, size_t limit, char *err,
                size_t err_len);
void fmnist_free(fmnist *d);

#endif
