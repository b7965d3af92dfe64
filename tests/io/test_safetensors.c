/* safetensors: import by name (F32/F16/BF16, name map, strict/partial), every validation
 * rule of the reference implementation, model unchanged on failure, export round trip. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#include <cmocka.h>

#include "common.h"
#include "io/io.h"

/* fc1.weight [2,3], fc1.bias [2], fc2.weight [2,2], fc2.bias [2] */
static tlearn_model *small(uint64_t seed)
{
    return io_make_mlp(3, 2, 2, seed);
}

static const float W1[6] = {0.5f, -1.0f, 2.0f, 0.25f, -0.125f, 3.0f};
static const float B1[2] = {1.5f, -2.5f};
static const float W2[4] = {-0.75f, 0.0f, 1.25f, 4.0f};
static const float B2[2] = {0.0625f, -8.0f};

/* 8-byte length + header + data, as one buffer. */
static unsigned char *st_file(const char *header, const void *data, size_t dlen, size_t *len)
{
    size_t h = strlen(header);
    unsigned char *p = malloc(8 + h + dlen + 1);
    tl_put_u64(p, h);
    memcpy(p + 8, header, h);
    if (dlen)
        memcpy(p + 8 + h, data, dlen);
    *len = 8 + h + dlen;
    return p;
}

static const char GOOD[] =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"fc1.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"fc1.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]},"
    "\"fc2.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[32,48]},"
    "\"fc2.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[48,56]}}";

static void good_data(float *d)
{
    memcpy(d, W1, sizeof W1);
    memcpy(d + 6, B1, sizeof B1);
    memcpy(d + 8, W2, sizeof W2);
    memcpy(d + 12, B2, sizeof B2);
}

static void assert_loaded(const tlearn_model *m)
{
    float w1[6], b1[2], w2[4], b2[2];
    CHECK_OK(tlearn_model_get_tensor(m, "fc1.weight", w1, 6));
    CHECK_OK(tlearn_model_get_tensor(m, "fc1.bias", b1, 2));
    CHECK_OK(tlearn_model_get_tensor(m, "fc2.weight", w2, 4));
    CHECK_OK(tlearn_model_get_tensor(m, "fc2.bias", b2, 2));
    assert_memory_equal(w1, W1, sizeof W1);
    assert_memory_equal(b1, B1, sizeof B1);
    assert_memory_equal(w2, W2, sizeof W2);
    assert_memory_equal(b2, B2, sizeof B2);
}

static int import(tlearn_model *m, const char *header, const void *data, size_t dlen,
                  tlearn_name_map_fn map, unsigned flags, size_t *matched)
{
    size_t len;
    unsigned char *p = st_file(header, data, dlen, &len);
    int rc = tl_safetensors_import_buffer("import", m, p, len, map, NULL, flags, matched);
    free(p);
    return rc;
}

static void test_import_f32(void **state)
{
    (void)state;
    tlearn_model *m = small(1);
    float d[14];
    good_data(d);
    size_t matched = 0;
    CHECK_OK(import(m, GOOD, d, sizeof d, NULL, TLEARN_LOAD_STRICT, &matched));
    assert_int_equal(matched, 4);
    assert_loaded(m);
    /* through the public call and a file */
    tlearn_model *m2 = small(2);
    char path[] = "/tmp/tlearn-st-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len;
    unsigned char *p = st_file(GOOD, d, sizeof d, &len);
    assert_int_equal(write(fd, p, len), (ssize_t)len);
    close(fd);
    free(p);
    CHECK_OK(tlearn_model_import_safetensors(m2, path, NULL, NULL, TLEARN_LOAD_STRICT, &matched));
    assert_loaded(m2);
    assert_int_equal(tlearn_model_import_safetensors(m2, path, NULL, NULL, 5, NULL),
                     TLEARN_EINVAL);
    assert_int_equal(tlearn_model_import_safetensors(NULL, path, NULL, NULL, 0, NULL),
                     TLEARN_EINVAL);
    unlink(path);
    assert_int_equal(tlearn_model_import_safetensors(m2, path, NULL, NULL, 0, NULL), TLEARN_EIO);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&m2);
}

static void test_half_conversions(void **state)
{
    (void)state;
    /* fp16 bit patterns and their exact values */
    assert_true(tl_half_to_float(0x3C00) == 1.0f);
    assert_true(tl_half_to_float(0xC000) == -2.0f);
    assert_true(tl_half_to_float(0x7BFF) == 65504.0f);
    assert_true(tl_half_to_float(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    assert_true(tl_half_to_float(0x03FF) == ldexpf(1023.0f, -24));
    assert_true(tl_half_to_float(0x0400) == ldexpf(1.0f, -14)); /* smallest normal */
    assert_true(tl_half_to_float(0x3555) == 0x1.554p-2f);
    assert_true(signbit(tl_half_to_float(0x8000)) && tl_half_to_float(0x8000) == 0.0f);
    assert_true(isinf(tl_half_to_float(0x7C00)));
    assert_true(isnan(tl_half_to_float(0x7E00)));
    /* bf16 is the top half of fp32 */
    assert_true(tl_bf16_to_float(0x3F80) == 1.0f);
    assert_true(tl_bf16_to_float(0xC0A0) == -5.0f);
    assert_true(tl_bf16_to_float(0x3EAB) == 0x1.56p-2f);
}

static void test_import_f16_bf16_and_num_batches_tracked(void **state)
{
    (void)state;
    /* values exactly representable in both formats */
    static const char H[] =
        "{\"fc1.weight\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
        "\"fc1.bias\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[12,16]},"
        "\"fc2.weight\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[16,24]},"
        "\"fc2.bias\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[24,28]},"
        "\"bn.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[28,36]}}";
    const uint16_t w1[6] = {0x3800, 0xBC00, 0x4000, 0x3400, 0xB000, 0x4200}; /* F16 */
    const uint16_t b1[2] = {0x3FC0, 0xC020};                                 /* BF16 */
    const uint16_t w2[4] = {0xBA00, 0x0000, 0x3D00, 0x4400};                 /* F16 */
    const uint16_t b2[2] = {0x3D80, 0xC100};                                 /* BF16 */
    unsigned char d[36];
    for (int i = 0; i < 6; i++)
        d[2 * i] = (unsigned char)w1[i], d[2 * i + 1] = (unsigned char)(w1[i] >> 8);
    for (int i = 0; i < 2; i++)
        d[12 + 2 * i] = (unsigned char)b1[i], d[13 + 2 * i] = (unsigned char)(b1[i] >> 8);
    for (int i = 0; i < 4; i++)
        d[16 + 2 * i] = (unsigned char)w2[i], d[17 + 2 * i] = (unsigned char)(w2[i] >> 8);
    for (int i = 0; i < 2; i++)
        d[24 + 2 * i] = (unsigned char)b2[i], d[25 + 2 * i] = (unsigned char)(b2[i] >> 8);
    memset(d + 28, 0, 8);
    d[28] = 42;
    tlearn_model *m = small(1);
    size_t matched;
    CHECK_OK(import(m, H, d, sizeof d, NULL, TLEARN_LOAD_STRICT, &matched));
    assert_int_equal(matched, 4);
    assert_loaded(m);
    tlearn_model_destroy(&m);
}

/* torch names "0.weight" -> "fc1.weight", "2.*" -> "fc2.*", "extra.*" skipped */
static int torch_names(const char *file_name, char *out, size_t out_len, void *user)
{
    (void)user;
    if (strncmp(file_name, "extra.", 6) == 0)
        return 0;
    snprintf(out, out_len, "%s%s", file_name[0] == '0' ? "fc1" : "fc2", file_name + 1);
    return 1;
}

static void test_name_map(void **state)
{
    (void)state;
    static const char H[] =
        "{\"0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]},"
        "\"2.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[32,48]},"
        "\"2.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[48,56]},"
        "\"extra.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[56,60]}}";
    float d[15];
    good_data(d);
    d[14] = 7.0f;
    tlearn_model *m = small(1);
    size_t matched;
    /* without the map nothing has a model name: strict refuses */
    assert_int_equal(import(m, H, d, sizeof d, NULL, TLEARN_LOAD_STRICT, NULL),
                     TLEARN_ENOTFOUND);
    assert_non_null(strstr(tlearn_errmsg(), "'0.weight'"));
    CHECK_OK(import(m, H, d, sizeof d, torch_names, TLEARN_LOAD_STRICT, &matched));
    assert_int_equal(matched, 4);
    assert_loaded(m);
    tlearn_model_destroy(&m);
}

static void test_strict_and_partial(void **state)
{
    (void)state;
    float d[14];
    good_data(d);
    /* a wider model: fc1 has 4 units, so fc1.* and fc2.weight do not fit */
    tlearn_model *m = io_make_mlp(3, 4, 2, 1), *before = io_make_mlp(3, 4, 2, 1);
    assert_int_equal(import(m, GOOD, d, sizeof d, NULL, TLEARN_LOAD_STRICT, NULL),
                     TLEARN_ESHAPE);
    assert_non_null(strstr(tlearn_errmsg(), "fc1.weight"));
    assert_non_null(strstr(tlearn_errmsg(), "[4, 3]"));
    assert_true(io_models_equal(m, before));
    size_t matched;
    CHECK_OK(import(m, GOOD, d, sizeof d, NULL, TLEARN_LOAD_PARTIAL, &matched));
    assert_int_equal(matched, 1);
    float b2[2];
    CHECK_OK(tlearn_model_get_tensor(m, "fc2.bias", b2, 2));
    assert_memory_equal(b2, B2, sizeof b2);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&before);
    /* a model tensor missing from the file */
    m = small(1);
    CHECK_OK(tlearn_model_add_dense(m, "fc3", 2));
    before = small(1);
    CHECK_OK(tlearn_model_add_dense(before, "fc3", 2));
    assert_int_equal(import(m, GOOD, d, sizeof d, NULL, TLEARN_LOAD_STRICT, NULL),
                     TLEARN_ENOTFOUND);
    assert_non_null(strstr(tlearn_errmsg(), "fc3.weight"));
    assert_true(io_models_equal(m, before));
    CHECK_OK(import(m, GOOD, d, sizeof d, NULL, TLEARN_LOAD_PARTIAL, &matched));
    assert_int_equal(matched, 4);
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&before);
}

typedef struct bad_case {
    const char *what;
    const char *header;
    size_t dlen;       /* data bytes after the header */
    const char *says;  /* part of the message */
    uint64_t hlen;     /* 0: the header's length */
} bad_case;

static void test_validation_rules(void **state)
{
    (void)state;
#define T(n, d, s, e) "\"" n "\":{\"dtype\":\"" d "\",\"shape\":" s ",\"data_offsets\":" e "}"
    static const bad_case cases[] = {
        {"duplicate key", "{" T("a", "F32", "[1]", "[0,4]") "," T("a", "F32", "[1]", "[4,8]") "}",
         8, "duplicate key", 0},
        {"unknown dtype", "{" T("a", "F33", "[1]", "[0,4]") "}", 4, "unknown dtype", 0},
        {"non-string metadata",
         "{\"__metadata__\":{\"format\":1}," T("a", "F32", "[1]", "[0,4]") "}", 4,
         "expected a string value", 0},
        {"tensor named __metadata__", "{" T("__metadata__", "F32", "[1]", "[0,4]") "}", 4,
         "__metadata__", 0},
        {"trailing garbage", "{" T("a", "F32", "[1]", "[0,4]") "} x", 4, "trailing", 0},
        {"second value", "{" T("a", "F32", "[1]", "[0,4]") "}{}", 4, "trailing", 0},
        {"not an object", "[1,2]", 0, "'{'", 0},
        {"unterminated", "{" T("a", "F32", "[1]", "[0,4]"), 4, "unterminated", 0},
        {"gap in offsets", "{" T("a", "F32", "[1]", "[0,4]") "," T("b", "F32", "[1]", "[8,12]") "}",
         12, "expected to start at 4", 0},
        {"overlap", "{" T("a", "F32", "[2]", "[0,8]") "," T("b", "F32", "[1]", "[4,8]") "}", 8,
         "data_offsets", 0},
        {"not from zero", "{" T("a", "F32", "[1]", "[4,8]") "}", 8, "expected to start at 0", 0},
        {"end before begin", "{" T("a", "F32", "[0]", "[4,0]") "}", 4, "data_offsets", 0},
        {"size mismatch", "{" T("a", "F32", "[3]", "[0,8]") "}", 8, "expected 12", 0},
        {"shape overflow",
         "{" T("a", "F32", "[4294967296,4294967296,4294967296]", "[0,4]") "}", 4, "overflows",
         0},
        {"data after the last tensor", "{" T("a", "F32", "[1]", "[0,4]") "}", 5,
         "the file has 5 data bytes", 0},
        {"data missing", "{" T("a", "F32", "[2]", "[0,8]") "}", 4, "the file has 4", 0},
        {"fractional offset", "{" T("a", "F32", "[1]", "[0,4.0]") "}", 4, "data_offsets", 0},
        {"negative dimension", "{" T("a", "F32", "[-1]", "[0,4]") "}", 4, "shape", 0},
        {"missing field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets", 0},
        {"unknown field",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
         "unknown field", 0},
        {"invalid UTF-8", "{\"\xC3\x28\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, "UTF-8", 0},
        {"bad escape", "{\"a\\q\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "escape", 0},
        {"header too large", "{}", 0, "exceeds the limit", 100000001},
        {"header longer than the file", "{}", 0, "larger than", 1000},
    };
#undef T
    unsigned char zeros[64] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        tlearn_model *m = small(1), *before = small(1);
        size_t len;
        unsigned char *p = st_file(c->header, zeros, c->dlen, &len);
        if (c->hlen)
            tl_put_u64(p, c->hlen);
        int rc = tl_safetensors_import_buffer("import", m, p, len, NULL, NULL,
                                              TLEARN_LOAD_PARTIAL, NULL);
        if (rc != TLEARN_EFORMAT)
            fail_msg("case '%s': expected TLEARN_EFORMAT, got %d (%s)", c->what, rc,
                     tlearn_errmsg());
        if (!strstr(tlearn_errmsg(), c->says))
            fail_msg("case '%s': message '%s' does not say '%s'", c->what, tlearn_errmsg(),
                     c->says);
        assert_true(io_models_equal(m, before));
        free(p);
        tlearn_model_destroy(&m);
        tlearn_model_destroy(&before);
    }
    /* shorter than the length field */
    tlearn_model *m = small(1);
    assert_int_equal(tl_safetensors_import_buffer("import", m, "\x02\0\0", 3, NULL, NULL, 0,
                                                  NULL), TLEARN_EFORMAT);
    /* accepted edge cases: space padding after the JSON, empty tensors, escapes */
    size_t len;
    unsigned char *p = st_file("{\"z\\u00e9\":{\"dtype\":\"U8\",\"shape\":[0],"
                               "\"data_offsets\":[0,0]}}    ", zeros, 0, &len);
    CHECK_OK(tl_safetensors_import_buffer("import", m, p, len, NULL, NULL, TLEARN_LOAD_PARTIAL,
                                          NULL));
    free(p);
    tlearn_model_destroy(&m);
}

static void test_bad_values(void **state)
{
    (void)state;
    float d[14];
    good_data(d);
    d[3] = NAN;
    tlearn_model *m = small(1), *before = small(1);
    assert_int_equal(import(m, GOOD, d, sizeof d, NULL, TLEARN_LOAD_STRICT, NULL),
                     TLEARN_EFORMAT);
    assert_non_null(strstr(tlearn_errmsg(), "fc1.weight': element 3 is not finite"));
    assert_true(io_models_equal(m, before));
    /* an integer dtype for a model tensor */
    static const char H[] =
        "{\"fc1.weight\":{\"dtype\":\"I32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"fc1.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]},"
        "\"fc2.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[32,48]},"
        "\"fc2.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[48,56]}}";
    good_data(d);
    assert_int_equal(import(m, H, d, sizeof d, NULL, TLEARN_LOAD_STRICT, NULL), TLEARN_EFORMAT);
    assert_non_null(strstr(tlearn_errmsg(), "dtype I32"));
    assert_true(io_models_equal(m, before));
    tlearn_model_destroy(&m);
    tlearn_model_destroy(&before);
}

static void test_export_roundtrip(void **state)
{
    (void)state;
    tlearn_model *a = io_make_mlp(5, 7, 3, 10), *b = io_make_mlp(5, 7, 3, 11);
    char path[] = "/tmp/tlearn-st-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    CHECK_OK(tlearn_model_export_safetensors(a, path));
    FILE *f = fopen(path, "rb");
    unsigned char buf[4096];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    uint64_t h = tl_get_u64(buf);
    assert_int_equal(h % 8, 0); /* data 8-byte aligned */
    assert_int_equal(len, 8 + h + 4 * (7 * 5 + 7 + 3 * 7 + 3));
    assert_memory_equal(buf + 8, "{\"__metadata__\":{\"format\":\"pt\"}", 31);
    assert_false(io_models_equal(a, b));
    CHECK_OK(tlearn_model_import_safetensors(b, path, NULL, NULL, TLEARN_LOAD_STRICT, NULL));
    assert_true(io_models_equal(a, b));
    assert_int_equal(tlearn_model_export_safetensors(NULL, path), TLEARN_EINVAL);
    assert_int_equal(tlearn_model_export_safetensors(a, NULL), TLEARN_EINVAL);
    unlink(path);
    tlearn_model_destroy(&a);
    tlearn_model_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_import_f32),
        cmocka_unit_test(test_half_conversions),
        cmocka_unit_test(test_import_f16_bf16_and_num_batches_tracked),
        cmocka_unit_test(test_name_map),
        cmocka_unit_test(test_strict_and_partial),
        cmocka_unit_test(test_validation_rules),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_export_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
