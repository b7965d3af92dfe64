#include "fmnist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Read an IDX file: magic 0x0000 08 <rank>, then rank big-endian u32 dims, then bytes. */
static unsigned char *read_idx(const char *path, int rank, uint32_t *dims, char *err,
                               size_t err_len)
{
    gzFile f = gzopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "cannot open %s (install dataset-fashion-mnist)", path);
        return NULL;
    }
    unsigned char head[16];
    size_t hlen = 4 + 4 * (size_t)rank;
    unsigned char *data = NULL;
    if (gzread(f, head, (unsigned)hlen) != (int)hlen || be32(head) != (0x800u | (unsigned)rank)) {
        snprintf(err, err_len, "%s: not an IDX file of rank %d", path, rank);
        goto done;
    }
    size_t total = 1;
    for (int i = 0; i < rank; i++) {
        dims[i] = be32(head + 4 + 4 * i);
        total *= dims[i];
    }
    if (total == 0 || total > (size_t)1 << 30) {
        snprintf(err, err_len, "%s: implausible size", path);
        goto done;
    }
    data = malloc(total);
    if (!data || gzread(f, data, (unsigned)total) != (int)total) {
        snprintf(err, err_len, "%s: truncated", path);
        free(data);
        data = NULL;
    }
done:
    gzclose(f);
    return data;
}

int fmnist_load(fmnist *out, const char *dir, const char *split, size_t limit, char *err,
                size_t err_len)
{
    char path[512];
    uint32_t idims[3], ldims[1];
    memset(out, 0, sizeof *out);
    if (!dir)
        dir = FMNIST_DIR;
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte.gz", dir, split);
    unsigned char *img = read_idx(path, 3, idims, err, err_len);
    if (!img)
        return -1;
    snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    unsigned char *lab = read_idx(path, 1, ldims, err, err_len);
    if (!lab || ldims[0] != idims[0] || idims[1] * idims[2] != FMNIST_PIXELS) {
        if (lab)
            snprintf(err, err_len, "%s: images and labels do not match", dir);
        free(img);
        free(lab);
        return -1;
    }
    size_t n = idims[0];
    if (limit && limit < n)
        n = limit;
    out->images = malloc(sizeof(float) * n * FMNIST_PIXELS);
    out->labels = malloc(sizeof(int32_t) * n);
    if (!out->images || !out->labels) {
        snprintf(err, err_len, "out of memory");
        free(img);
        free(lab);
        fmnist_free(out);
        return -1;
    }
    for (size_t i = 0; i < n * FMNIST_PIXELS; i++)
        out->images[i] = img[i] / 255.0f;
    for (size_t i = 0; i < n; i++)
        out->labels[i] = lab[i];
    out->n = n;
    free(img);
    free(lab);
    return 0;
}

void fmnist_free(fmnist *d)
{
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof *d);
}
