/* A small PNG reader for photographs: 8-bit greyscale or RGB, not interlaced (what the
 * sample photographs of Debian's python3-skimage are), decoded with zlib, every chunk's
 * CRC checked. Anything else is refused with a message. */
#ifndef EXAMPLES_PNG_H
#define EXAMPLES_PNG_H

#include <stddef.h>

typedef struct png_image {
    int width, height, channels; /* channels: 1 (grey) or 3 (RGB) */
    unsigned char *pixels;       /* height x width x channels, row-major; free() it */
} png_image;

/* Returns 0, or -1 with a message in @p err. */
int png_read(const char *path, png_image *out, char *err, size_t err_len);

#endif
