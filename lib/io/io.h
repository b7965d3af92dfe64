/* Internal interface of io/: files, byte buffers, the strict JSON reader, and the
 * memory-buffer entry points of the loaders (used by the fuzz targets and tests). */
#ifndef TL_IO_H
#define TL_IO_H

#include <stddef.h>
#include <stdint.h>

#include "../model/model.h"
#include "../train/train.h"

/* ---- files (file.c) ---- */
/* Open a regular file for reading: a FIFO, device or directory is refused without
 * blocking (O_NONBLOCK, then fstat on the descriptor). *fd is closed by the caller. */
int tl_file_open(const char *fn, const char *path, int *fd, uint64_t *size);
/* Exactly @p n bytes at @p off, or TLEARN_EIO (also when the file is shorter). */
int tl_file_pread(const char *fn, const char *path, int fd, void *buf, size_t n, uint64_t off);
/* Read a whole regular file into a tl_alloc'ed buffer (free with tl_free). */
int tl_file_read(const char *fn, const char *path, unsigned char **data, size_t *len);
/* A crash-safe write in steps, for writers that stream: begin creates the temporary file
 * next to @p path (the rules of tl_file_write_atomic), pwrite writes at any offset, commit
 * truncates to @p len, fsyncs and renames over the target; abort (also after a failed
 * begin or commit; idempotent) removes the temporary file. */
typedef struct tl_afile {
    int fd, created;
    char *tmp, *dir, *resolved;
    const char *dest;
} tl_afile;
int tl_afile_begin(const char *fn, const char *path, tl_afile *a);
int tl_afile_pwrite(const char *fn, tl_afile *a, const void *data, size_t n, uint64_t off);
int tl_afile_commit(const char *fn, tl_afile *a, uint64_t len);
void tl_afile_abort(tl_afile *a);
/* Write @p len bytes crash-safely: temporary file in the same directory, fsync, rename over
 * @p path, fsync of the directory. On failure @p path is untouched and the temporary file
 * removed; returns TLEARN_EIO with the OS error (or TLEARN_ENOMEM). */
int tl_file_write_atomic(const char *fn, const char *path, const void *data, size_t len);

/* Every tensor of @p m finite, or TLEARN_ENONFINITE naming the first bad one (checkpoint
 * and safetensors writers: never write what the loaders refuse). */
int tl_io_check_model_values(const char *fn, const tlearn_model *m);

/* ---- arguments shared by the file and memory entry points (file.c) ---- */
/* Model not NULL, flags TLEARN_LOAD_STRICT or TLEARN_LOAD_PARTIAL. */
int tl_io_weights_args(const char *fn, const tlearn_model *m, unsigned flags);
/* Refuse NULL data with len > 0; NULL with len 0 becomes "" (an empty buffer, refused as
 * an empty file is). */
int tl_io_data_arg(const char *fn, const void **data, size_t len);
/* Outputs of a call that hands back a buffer: cleared first (a failed call leaves them
 * NULL and 0), then model, data and size checked. */
int tl_io_out_args(const char *fn, const tlearn_model *m, void **data, size_t *size);

/* ---- growable little-endian byte buffer (file.c) ---- */
typedef struct tl_wbuf {
    unsigned char *p;
    size_t len, cap;
    int oom; /* an append failed: the buffer is incomplete */
} tl_wbuf;
/* Room for @p n more bytes, allocated exactly (appends then never move the buffer): for
 * buffers handed to the caller, which must not carry the doubling's slack. */
void tl_wb_reserve(tl_wbuf *b, size_t n);
void tl_wb_bytes(tl_wbuf *b, const void *data, size_t n);
void tl_wb_zeros(tl_wbuf *b, size_t n);
void tl_wb_align(tl_wbuf *b, size_t align);
void tl_wb_u32(tl_wbuf *b, uint32_t v);
void tl_wb_u64(tl_wbuf *b, uint64_t v);
void tl_wb_f32(tl_wbuf *b, float v);
void tl_wb_f64(tl_wbuf *b, double v);
void tl_wb_str(tl_wbuf *b, const char *s); /* u64 length, then the bytes */
void tl_wb_free(tl_wbuf *b);
static inline void tl_put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline void tl_put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint32_t tl_get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t tl_get_u64(const unsigned char *p)
{
    return (uint64_t)tl_get_u32(p) | (uint64_t)tl_get_u32(p + 4) << 32;
}
/* fp32 arrays <-> little-endian bytes (a plain copy on little-endian hosts). */
void tl_floats_to_le(unsigned char *dst, const float *src, size_t n);
void tl_floats_from_le(float *dst, const unsigned char *src, size_t n);

/* ---- strict JSON (json.c), enough for safetensors headers ---- */
enum { TL_JSON_NULL, TL_JSON_BOOL, TL_JSON_NUMBER, TL_JSON_STRING, TL_JSON_ARRAY,
       TL_JSON_OBJECT };
typedef struct tl_json tl_json;
struct tl_json {
    int type;
    int boolean;
    const char *num;    /* number: the token as written (points into the text) */
    size_t numlen;
    char *str;          /* string: decoded UTF-8, NUL-terminated (no NUL inside) */
    size_t n;           /* array/object: number of children */
    tl_json *items;     /* array elements, or object values */
    char **keys;        /* object keys (decoded), unique */
};
/* Parse exactly one JSON value filling @p text (RFC 8259; whitespace around it allowed,
 * nothing else). Duplicate object keys, invalid UTF-8, nesting deeper than 16 and
 * strings with NUL are refused with TLEARN_EFORMAT and a message naming the byte offset. */
int tl_json_parse(const char *what, const char *text, size_t len, tl_json **out);
void tl_json_free(tl_json *j);
const tl_json *tl_json_get(const tl_json *obj, const char *key);
/* A number written as a non-negative integer that fits in uint64_t. */
int tl_json_u64(const tl_json *j, uint64_t *v);

/* ---- loaders from memory ---- */
int tl_checkpoint_load_buffer(const char *fn, const void *data, size_t len, tlearn_model **out,
                              tlearn_optim **optim);
/* The bytes tlearn_model_save() would write, into @p out (free with tl_wb_free). */
int tl_checkpoint_save_buffer(const char *fn, const tlearn_model *m, const tlearn_optim *o,
                              unsigned flags, tl_wbuf *out);
/* For the fuzz target only: 1 turns off the CRC comparisons of this thread's loads. */
void tl_checkpoint_fuzz_skip_crc(int skip);
int tl_checkpoint_load_weights_buffer(const char *fn, tlearn_model *m, const void *data,
                                      size_t len, unsigned flags, size_t *matched,
                                      size_t *skipped);
int tl_safetensors_import_buffer(const char *fn, tlearn_model *m, const void *data, size_t len,
                                 tlearn_name_map_fn map, void *user, unsigned flags,
                                 size_t *matched);
/* Internal flag for tl_safetensors_import_buffer (with TLEARN_LOAD_PARTIAL): refuse file
 * tensors that are not in the model or do not fit, but do not require every model tensor
 * (adapter files fill the adapter's tensors only). */
#define TL_ST_FILE_STRICT 0x100u
/* Write @p count named fp32 tensors as a safetensors file (atomically). */
typedef struct tl_st_tensor {
    const char *name;
    const tl_tensor *t;
} tl_st_tensor;
/* A JSON string literal of a name (printable ASCII: '"' and '\' escaped). */
void tl_wb_json_str(tl_wbuf *b, const char *s);
int tl_safetensors_write(const char *fn, const char *path, const tl_st_tensor *ts,
                         size_t count);
/* The same bytes into @p out (allocated exactly; freed on failure). */
int tl_safetensors_build(const char *fn, const tl_st_tensor *ts, size_t count, tl_wbuf *out);
/* fp16 / bf16 bit patterns to fp32 (exact). */
float tl_half_to_float(uint16_t h);
float tl_bf16_to_float(uint16_t h);

#endif
