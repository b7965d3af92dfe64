/* Files and byte buffers for io/: whole-file reads and crash-safe writes. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <stdatomic.h>
#include <time.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"

static const char *file_kind(mode_t mode)
{
    return S_ISDIR(mode)    ? "a directory"
           : S_ISFIFO(mode) ? "a FIFO"
           : S_ISCHR(mode)  ? "a character device"
           : S_ISBLK(mode)  ? "a block device"
           : S_ISSOCK(mode) ? "a socket"
                            : "not a regular file";
}

int tl_file_open(const char *fn, const char *path, int *fd_out, uint64_t *size)
{
    *fd_out = -1;
    *size = 0;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the
     * open descriptor, then reads block as usual. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
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
        return tl_fail(TLEARN_EIO, "%s: '%s' is not a regular file (%s)", fn, path,
                       file_kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return tl_fail(TLEARN_EIO, "%s: cannot read '%s': %s", fn, path, strerror(e));
    }
    *fd_out = fd;
    *size = (uint64_t)st.st_size;
    return TLEARN_OK;
}

int tl_file_pread(const char *fn, const char *path, int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = pread(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return tl_fail(TLEARN_EIO, "%s: cannot read '%s': %s", fn, path,
                           k < 0 ? strerror(errno) : "file shrank while reading");
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return TLEARN_OK;
}

int tl_file_read(const char *fn, const char *path, unsigned char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int fd;
    uint64_t size64;
    int rc = tl_file_open(fn, path, &fd, &size64);
    if (rc)
        return rc;
    if (size64 > (uint64_t)SIZE_MAX - 64) {
        close(fd);
        return tl_fail(TLEARN_ENOMEM, "%s: '%s' is too large to read", fn, path);
    }
    size_t size = (size_t)size64;
    unsigned char *buf = tl_alloc(size);
    if (!buf) {
        close(fd);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory reading '%s' (%zu bytes)", fn, path,
                       size);
    }
    rc = tl_file_pread(fn, path, fd, buf, size, 0);
    close(fd);
    if (rc) {
        tl_free(buf);
        return rc;
    }
    *data = buf;
    *len = size;
    return TLEARN_OK;
}

/* Create "PATH.tmp-XXXXXX" exclusively with @p mode (the kernel applies the umask, which
 * mkstemp's fixed 0600 would not). Returns the descriptor, or -1 with errno. */
static int create_temp(char *tmp, size_t plen, mode_t mode)
{
    static const char digits[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static atomic_uint_fast64_t counter;
    for (int attempt = 0; attempt < 100; attempt++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uint64_t)getpid() << 40 ^
                     (atomic_fetch_add(&counter, 1) + 1) * 0x9e3779b97f4a7c15ULL;
        x = (x ^ (x >> 31)) * 0xbf58476d1ce4e5b9ULL;
        for (int i = 0; i < 6; i++, x /= 62)
            tmp[plen + 5 + i] = digits[x % 62];
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

/* Where a save writes, decided before anything is created: a regular file is replaced
 * and keeps its permission bits; a symlink is followed (the link stays, its target is
 * replaced, as editors do); a missing file is created with 0666 less the umask; anything
 * else (directory, device, FIFO, socket, dangling link) is refused. *target is path or a
 * tl_alloc'ed resolved path; *mode is the existing file's bits or -1. */
static int save_target(const char *fn, const char *path, char **target, int *mode)
{
    struct stat st;
    *target = NULL;
    *mode = -1;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return TLEARN_OK;
        return tl_fail(TLEARN_EIO, "%s: cannot stat '%s': %s", fn, path, strerror(errno));
    }
    if (S_ISLNK(st.st_mode)) {
        char *real = realpath(path, NULL); /* malloc'ed by libc */
        if (!real || stat(real, &st) != 0) {
            int e = errno;
            free(real);
            return tl_fail(TLEARN_EIO, "%s: '%s' is a symbolic link whose target cannot be "
                           "resolved (%s); refusing to replace the link", fn, path, strerror(e));
        }
        *target = tl_strdup(real);
        free(real);
        if (!*target)
            return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    if (!S_ISREG(st.st_mode)) {
        tl_free(*target);
        *target = NULL;
        return tl_fail(TLEARN_EIO, "%s: '%s' is %s; refusing to replace it with a file", fn,
                       path, file_kind(st.st_mode));
    }
    *mode = (int)(st.st_mode & 07777);
    return TLEARN_OK;
}

int tl_afile_begin(const char *fn, const char *path, tl_afile *a)
{
    memset(a, 0, sizeof *a);
    a->fd = -1;
    if (strlen(path) == 0)
        return tl_fail(TLEARN_EINVAL, "%s: path is empty", fn);
    int mode;
    int rc = save_target(fn, path, &a->resolved, &mode);
    if (rc)
        return rc;
    a->dest = a->resolved ? a->resolved : path;
    size_t plen = strlen(a->dest);
    static const char suffix[] = ".tmp-XXXXXX";
    a->tmp = tl_alloc(plen + sizeof suffix);
    /* the directory, for the fsync that makes the rename durable */
    a->dir = tl_alloc(plen + 2);
    if (!a->tmp || !a->dir) {
        tl_afile_abort(a);
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    }
    memcpy(a->tmp, a->dest, plen);
    memcpy(a->tmp + plen, suffix, sizeof suffix);
    const char *slash = strrchr(a->dest, '/');
    if (!slash)
        strcpy(a->dir, ".");
    else if (slash == a->dest)
        strcpy(a->dir, "/");
    else {
        memcpy(a->dir, a->dest, (size_t)(slash - a->dest));
        a->dir[slash - a->dest] = '\0';
    }
    a->fd = create_temp(a->tmp, plen, mode >= 0 ? 0600 : 0666);
    if (a->fd < 0) {
        rc = tl_fail(TLEARN_EIO, "%s: cannot create a temporary file for '%s': %s", fn,
                     a->dest, strerror(errno));
        tl_afile_abort(a);
        return rc;
    }
    a->created = 1;
    if (mode >= 0 && fchmod(a->fd, (mode_t)mode) != 0) {
        rc = tl_fail(TLEARN_EIO, "%s: cannot set permissions of '%s': %s", fn, a->dest,
                     strerror(errno));
        tl_afile_abort(a);
        return rc;
    }
    return TLEARN_OK;
}

int tl_afile_pwrite(const char *fn, tl_afile *a, const void *data, size_t n, uint64_t off)
{
    const unsigned char *p = data;
    while (n > 0) {
        ssize_t k = pwrite(a->fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return tl_fail(TLEARN_EIO, "%s: cannot write '%s': %s", fn, a->dest,
                           k < 0 ? strerror(errno) : strerror(EIO));
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return TLEARN_OK;
}

int tl_afile_commit(const char *fn, tl_afile *a, uint64_t len)
{
    const char *step = "truncate";
    if (ftruncate(a->fd, (off_t)len) != 0)
        goto fail;
    step = "fsync";
    if (fsync(a->fd) != 0)
        goto fail;
    step = "close";
    int fd = a->fd;
    a->fd = -1;
    if (close(fd) != 0)
        goto fail;
    step = "rename the temporary file over";
    if (rename(a->tmp, a->dest) != 0)
        goto fail;
    a->created = 0;
    /* Durability of the rename; the file is complete either way, so a directory that
     * cannot be opened or synced (some filesystems refuse) is not an error. */
    int dfd = open(a->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    tl_afile_abort(a);
    return TLEARN_OK;
fail:;
    int rc = tl_fail(TLEARN_EIO, "%s: cannot %s '%s': %s", fn, step, a->dest, strerror(errno));
    tl_afile_abort(a);
    return rc;
}

void tl_afile_abort(tl_afile *a)
{
    if (a->fd >= 0)
        close(a->fd);
    if (a->created)
        unlink(a->tmp);
    tl_free(a->tmp);
    tl_free(a->dir);
    tl_free(a->resolved);
    memset(a, 0, sizeof *a);
    a->fd = -1;
}

int tl_file_write_atomic(const char *fn, const char *path, const void *data, size_t len)
{
    tl_afile a;
    int rc = tl_afile_begin(fn, path, &a);
    if (!rc)
        rc = tl_afile_pwrite(fn, &a, data, len, 0);
    if (!rc)
        return tl_afile_commit(fn, &a, len);
    tl_afile_abort(&a);
    return rc;
}

/* ---- arguments of the entry points ---- */

int tl_io_weights_args(const char *fn, const tlearn_model *m, unsigned flags)
{
    TL_CHECK_MODEL(fn, m);
    if (flags != TLEARN_LOAD_STRICT && flags != TLEARN_LOAD_PARTIAL)
        return tl_fail(TLEARN_EINVAL, "%s: flags is %u, expected TLEARN_LOAD_STRICT or "
                       "TLEARN_LOAD_PARTIAL", fn, flags);
    return TLEARN_OK;
}

int tl_io_data_arg(const char *fn, const void **data, size_t len)
{
    if (!*data && len)
        return tl_fail(TLEARN_EINVAL, "%s: data is NULL with len %zu", fn, len);
    if (!*data)
        *data = "";
    return TLEARN_OK;
}

int tl_io_out_args(const char *fn, const tlearn_model *m, void **data, size_t *size)
{
    if (data)
        *data = NULL;
    if (size)
        *size = 0;
    TL_CHECK_MODEL(fn, m);
    if (!data || !size)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, !data ? "data" : "size");
    return TLEARN_OK;
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

void tl_wb_reserve(tl_wbuf *b, size_t n)
{
    if (b->oom || n <= b->cap - b->len)
        return;
    if (n > SIZE_MAX - b->len) {
        b->oom = 1;
        return;
    }
    unsigned char *p = tl_alloc(b->len + n);
    if (!p) {
        b->oom = 1;
        return;
    }
    if (b->len)
        memcpy(p, b->p, b->len);
    tl_free(b->p);
    b->p = p;
    b->cap = b->len + n;
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
