#include "png.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n > 0 && n < (1L << 30) && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n)) &&
        fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n > 0 ? (size_t)n : 0;
    return buf;
}

static int paeth(int a, int b, int c)
{
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* Undo the per-row filters in place: rows of 1 + stride bytes -> out (rows of stride). */
static int unfilter(const unsigned char *in, unsigned char *out, int h, size_t stride, int bpp)
{
    for (int y = 0; y < h; y++) {
        const unsigned char *r = in + (size_t)y * (stride + 1) + 1;
        unsigned char *o = out + (size_t)y * stride, *up = y ? o - stride : NULL;
        int type = r[-1];
        for (size_t x = 0; x < stride; x++) {
            int a = x >= (size_t)bpp ? o[x - (size_t)bpp] : 0, b = up ? up[x] : 0;
            int c = up && x >= (size_t)bpp ? up[x - (size_t)bpp] : 0, v;
            switch (type) {
            case 0: v = 0; break;
            case 1: v = a; break;
            case 2: v = b; break;
            case 3: v = (a + b) / 2; break;
            case 4: v = paeth(a, b, c); break;
            default: return -1;
            }
            o[x] = (unsigned char)(r[x] + v);
        }
    }
    return 0;
}

int png_read(const char *path, png_image *out, char *err, size_t err_len)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memset(out, 0, sizeof *out);
    size_t len;
    unsigned char *file = slurp(path, &len), *idat = NULL, *raw = NULL;
    size_t nidat = 0;
    int rc = -1;
    if (!file) {
        snprintf(err, err_len, "cannot read %s (install python3-skimage)", path);
        return -1;
    }
    if (len < 8 + 25 || memcmp(file, sig, 8) != 0) {
        snprintf(err, err_len, "%s: not a PNG file", path);
        goto done;
    }
    int w = 0, h = 0, ch = 0, end = 0;
    for (size_t pos = 8; pos + 12 <= len && !end;) {
        uint32_t n = be32(file + pos);
        const unsigned char *type = file + pos + 4, *data = type + 4;
        if (n > len - pos - 12) {
            snprintf(err, err_len, "%s: truncated chunk at byte %zu", path, pos);
            goto done;
        }
        if ((uint32_t)crc32(0L, type, n + 4) != be32(data + n)) {
            snprintf(err, err_len, "%s: chunk %.4s: CRC mismatch", path, (const char *)type);
            goto done;
        }
        if (!memcmp(type, "IHDR", 4)) {
            if (n != 13 || pos != 8) {
                snprintf(err, err_len, "%s: bad IHDR", path);
                goto done;
            }
            w = (int)be32(data);
            h = (int)be32(data + 4);
            ch = data[9] == 0 ? 1 : data[9] == 2 ? 3 : 0;
            if (w < 1 || h < 1 || w > 16384 || h > 16384 || data[8] != 8 || !ch || data[10] ||
                data[11] || data[12]) {
                snprintf(err, err_len, "%s: only 8-bit greyscale or RGB, non-interlaced PNGs "
                         "are read (bit depth %d, colour type %d, interlace %d)", path, data[8],
                         data[9], data[12]);
                goto done;
            }
        } else if (!memcmp(type, "IDAT", 4)) {
            unsigned char *p = realloc(idat, nidat + n + 1);
            if (!p) {
                snprintf(err, err_len, "%s: out of memory", path);
                goto done;
            }
            idat = p;
            memcpy(idat + nidat, data, n);
            nidat += n;
        } else if (!memcmp(type, "IEND", 4)) {
            end = 1;
        }
        pos += 12 + (size_t)n;
    }
    if (!w || !end || !nidat) {
        snprintf(err, err_len, "%s: missing IHDR, IDAT or IEND", path);
        goto done;
    }
    size_t stride = (size_t)w * (size_t)ch;
    uLongf rawlen = (uLongf)((stride + 1) * (size_t)h), want = rawlen;
    raw = malloc(rawlen);
    out->pixels = malloc(stride * (size_t)h);
    if (!raw || !out->pixels) {
        snprintf(err, err_len, "%s: out of memory", path);
        goto done;
    }
    if (uncompress(raw, &rawlen, idat, (uLong)nidat) != Z_OK || rawlen != want ||
        unfilter(raw, out->pixels, h, stride, ch)) {
        snprintf(err, err_len, "%s: corrupt image data", path);
        goto done;
    }
    out->width = w;
    out->height = h;
    out->channels = ch;
    rc = 0;
done:
    if (rc) {
        free(out->pixels);
        out->pixels = NULL;
    }
    free(file);
    free(idat);
    free(raw);
    return rc;
}
