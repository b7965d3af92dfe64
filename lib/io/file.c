/* Files and byte buffers for io/: whole-file reads and crash-safe writes. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"

int tl_file_read(const char *fn, const char *path, unsigned char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tl_fail(TLEARN_EIO, "%s: cannot open '%s': %s", fn, path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return tl_fail(TLEARN_EIO, "%s: cannot stat '%s': %s", fn, path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tl_fail(TLEARN_EIO, "%s: '%s' is not a regular file", fn, path);
    }
    if ((uintmax_t)st.st_size > (uintmax_t)SIZE_MAX - 64) {
        close(fd);
        return tl_fail(TLEARN_ENOMEM, "%s: '%s' is too large to read", fn, path);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = tl_alloc(size);
    if (!buf) {
        close(fd);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory reading '%s' (%zu bytes)", fn, path,
                       size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t k = read(fd, buf + got, size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int e = k < 0 ? errno : 0;
            close(fd);
            tl_free(buf);
            return tl_fail(TLEARN_EIO, "%s: cannot read '%s': %s", fn, path,
                           e ? strerror(e) : "file shrank while reading");
        }
        got += (size_t)k;
    }
    close(fd);
    *data = buf;
    *len = size;
    return TLEARN_OK;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        if (k == 0) {
            errno = EIO;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int tl_file_write_atomic(const char *fn, const char *path, const void *data, size_t len)
{
    size_t plen = strlen(path);
    if (plen == 0)
        return tl_fail(TLEARN_EINVAL, "%s: path is empty", fn);
    static const char suffix[] = ".tmp-XXXXXX";
    char *tmp = tl_alloc(plen + sizeof suffix);
    /* the directory, for the fsync that makes the rename durable */
    char *dir = tl_alloc(plen + 2);
    if (!tmp || !dir) {
        tl_free(tmp);
        tl_free(dir);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);
    const char *slash = strrchr(path, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == path)
        strcpy(dir, "/");
    else {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }

    const char *step = "create a temporary file";
    int fd = mkstemp(tmp);
    if (fd < 0)
        goto fail_noclose;
    step = "set permissions of";
    if (fchmod(fd, 0644) != 0)
        goto fail;
    step = "write";
    if (write_all(fd, data, len) != 0)
        goto fail;
    step = "fsync";
    if (fsync(fd) != 0)
        goto fail;
    step = "close";
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    step = "rename the temporary file over";
    if (rename(tmp, path) != 0)
        goto fail;
    /* Durability of the rename; the file is complete either way, so a directory that
     * cannot be opened or synced (some filesystems refuse) is not an error. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    tl_free(tmp);
    tl_free(dir);
    return TLEARN_OK;

fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    tl_free(tmp);
    tl_free(dir);
    return tl_fail(TLEARN_EIO, "%s: cannot %s '%s': %s", fn, step, path, strerror(e));
fail_noclose:
    e = errno;
    tl_free(tmp);
    tl_free(dir);
    return tl_fail(TLEARN_EIO, "%s: cannot %s for '%s': %s", fn, step, path, strerror(e));
}

/* ---- byte buffer ---- */

static int reserve(tl_wbuf *b, size_t n)
{
    if (b->oom)
        return 0;
    if (n <= b->cap - b->len)
        return 1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return 0;
        }
        cap *= 2;
    }
    unsigned char *p = tl_alloc(cap);
    if (!p) {
        b->oom = 1;
        return 0;
    }
    if (b->len)
        memcpy(p, b->p, b->len);
    tl_free(b->p);
    b->p = p;
    b->cap = cap;
    return 1;
}

void tl_wb_bytes(tl_wbuf *b, const void *data, size_t n)
{
    if (n && reserve(b, n)) {
        memcpy(b->p + b->len, data, n);
        b->len += n;
    }
}

void tl_wb_zeros(tl_wbuf *b, size_t n)
{
    if (n && reserve(b, n)) {
        memset(b->p + b->len, 0, n);
        b->len += n;
    }
}

void tl_wb_align(tl_wbuf *b, size_t align)
{
    tl_wb_zeros(b, (align - b->len % align) % align);
}

void tl_wb_u32(tl_wbuf *b, uint32_t v)
{
    unsigned char t[4];
    tl_put_u32(t, v);
    tl_wb_bytes(b, t, 4);
}

void tl_wb_u64(tl_wbuf *b, uint64_t v)
{
    unsigned char t[8];
    tl_put_u64(t, v);
    tl_wb_bytes(b, t, 8);
}

void tl_wb_f32(tl_wbuf *b, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    tl_wb_u32(b, u);
}

void tl_wb_f64(tl_wbuf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    tl_wb_u64(b, u);
}

void tl_wb_str(tl_wbuf *b, const char *s)
{
    size_t n = strlen(s);
    tl_wb_u64(b, n);
    tl_wb_bytes(b, s, n);
}

void tl_wb_free(tl_wbuf *b)
{
    tl_free(b->p);
    memset(b, 0, sizeof *b);
}

void tl_floats_to_le(unsigned char *dst, const float *src, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(dst, src, n * 4);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        tl_put_u32(dst + 4 * i, u);
    }
#endif
}

void tl_floats_from_le(float *dst, const unsigned char *src, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(dst, src, n * 4);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u = tl_get_u32(src + 4 * i);
        memcpy(&dst[i], &u, 4);
    }
#endif
}
