/* A small strict JSON reader (RFC 8259) for safetensors headers: one value, whitespace
 * around it, nothing else; duplicate keys, invalid UTF-8, NUL in strings and deep nesting
 * are refused. Numbers are kept as their text; callers convert what they need. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

#define JSON_MAX_DEPTH 16

typedef struct jp {
    const char *what;
    const unsigned char *s;
    size_t len, pos;
    int rc;
} jp;

static int jfail(jp *p, const char *msg)
{
    if (!p->rc)
        p->rc = tl_fail(TLEARN_EFORMAT, "%s: JSON header, byte %zu: %s", p->what, p->pos, msg);
    return p->rc;
}

static void skip_ws(jp *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

void tl_json_free_items(tl_json *j);

void tl_json_free_items(tl_json *j)
{
    if (j->type == TL_JSON_STRING)
        tl_free(j->str);
    if (j->type == TL_JSON_ARRAY || j->type == TL_JSON_OBJECT) {
        for (size_t i = 0; i < j->n; i++) {
            tl_json_free_items(&j->items[i]);
            if (j->keys)
                tl_free(j->keys[i]);
        }
        tl_free(j->items);
        tl_free(j->keys);
    }
}

void tl_json_free(tl_json *j)
{
    if (!j)
        return;
    tl_json_free_items(j);
    tl_free(j);
}

static void put_utf8(unsigned char *out, size_t *k, uint32_t c)
{
    if (c < 0x80) {
        out[(*k)++] = (unsigned char)c;
    } else if (c < 0x800) {
        out[(*k)++] = (unsigned char)(0xC0 | c >> 6);
        out[(*k)++] = (unsigned char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out[(*k)++] = (unsigned char)(0xE0 | c >> 12);
        out[(*k)++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        out[(*k)++] = (unsigned char)(0x80 | (c & 0x3F));
    } else {
        out[(*k)++] = (unsigned char)(0xF0 | c >> 18);
        out[(*k)++] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
        out[(*k)++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        out[(*k)++] = (unsigned char)(0x80 | (c & 0x3F));
    }
}

static int hex4(jp *p, uint32_t *v)
{
    if (p->len - p->pos < 4)
        return jfail(p, "truncated \\u escape");
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p->s[p->pos++];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return jfail(p, "bad hex digit in \\u escape");
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* Length of a valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return k;
}

static char *parse_string(jp *p)
{
    /* p->s[p->pos] == '"'. Decoded output is never longer than the input. */
    size_t start = ++p->pos, end = start;
    while (end < p->len && p->s[end] != '"') {
        if (p->s[end] == '\\')
            end++;
        end++;
    }
    if (end >= p->len) {
        jfail(p, "unterminated string");
        return NULL;
    }
    unsigned char *out = tl_alloc(end - start + 1);
    if (!out) {
        if (!p->rc)
            p->rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", p->what);
        return NULL;
    }
    size_t k = 0;
    while (p->pos < end) {
        unsigned char c = p->s[p->pos];
        if (c < 0x20) {
            jfail(p, "control character in a string");
            goto bad;
        }
        if (c != '\\') {
            size_t u = utf8_len(p->s + p->pos, end - p->pos);
            if (!u) {
                jfail(p, "invalid UTF-8 in a string");
                goto bad;
            }
            memcpy(out + k, p->s + p->pos, u);
            k += u;
            p->pos += u;
            continue;
        }
        p->pos++;
        c = p->s[p->pos++];
        uint32_t cp;
        switch (c) {
        case '"': out[k++] = '"'; break;
        case '\\': out[k++] = '\\'; break;
        case '/': out[k++] = '/'; break;
        case 'b': out[k++] = '\b'; break;
        case 'f': out[k++] = '\f'; break;
        case 'n': out[k++] = '\n'; break;
        case 'r': out[k++] = '\r'; break;
        case 't': out[k++] = '\t'; break;
        case 'u':
            if (hex4(p, &cp))
                goto bad;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (p->pos + 2 > end || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    jfail(p, "unpaired surrogate in \\u escape");
                    goto bad;
                }
                p->pos += 2;
                if (hex4(p, &lo))
                    goto bad;
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    jfail(p, "unpaired surrogate in \\u escape");
                    goto bad;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                jfail(p, "unpaired surrogate in \\u escape");
                goto bad;
            }
            if (cp == 0) {
                jfail(p, "NUL character in a string");
                goto bad;
            }
            put_utf8(out, &k, cp);
            break;
        default:
            p->pos--;
            jfail(p, "invalid escape in a string");
            goto bad;
        }
    }
    if (p->pos != end) { /* an escape ran past the closing quote */
        jfail(p, "unterminated string");
        goto bad;
    }
    p->pos = end + 1;
    out[k] = '\0';
    return (char *)out;
bad:
    tl_free(out);
    return NULL;
}

static int parse_value(jp *p, tl_json *j, int depth);

/* Grow a child array by one (amortised doubling). */
static int grow(jp *p, tl_json *j, size_t *cap, int with_keys)
{
    if (j->n < *cap)
        return 0;
    size_t nc = *cap ? 2 * *cap : 4;
    tl_json *items = tl_alloc_array(nc, sizeof *items);
    char **keys = with_keys ? tl_alloc_array(nc, sizeof *keys) : NULL;
    if (!items || (with_keys && !keys)) {
        tl_free(items);
        tl_free(keys);
        if (!p->rc)
            p->rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", p->what);
        return p->rc;
    }
    if (j->n) {
        memcpy(items, j->items, j->n * sizeof *items);
        if (with_keys)
            memcpy(keys, j->keys, j->n * sizeof *keys);
    }
    tl_free(j->items);
    tl_free(j->keys);
    j->items = items;
    j->keys = keys;
    *cap = nc;
    return 0;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Duplicate keys are refused: sort a copy of the key list and compare neighbours. */
static int check_unique(jp *p, const tl_json *j)
{
    if (j->n < 2)
        return 0;
    char **k = tl_alloc_array(j->n, sizeof *k);
    if (!k) {
        if (!p->rc)
            p->rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", p->what);
        return p->rc;
    }
    memcpy(k, j->keys, j->n * sizeof *k);
    qsort(k, j->n, sizeof *k, cmp_key);
    for (size_t i = 1; i < j->n; i++)
        if (strcmp(k[i - 1], k[i]) == 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "duplicate key \"%.100s\" in the object ending here",
                     k[i]);
            tl_free(k);
            return jfail(p, msg);
        }
    tl_free(k);
    return 0;
}

static int parse_container(jp *p, tl_json *j, int depth, int object)
{
    j->type = object ? TL_JSON_OBJECT : TL_JSON_ARRAY;
    size_t cap = 0;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == (object ? '}' : ']')) {
        p->pos++;
        return 0;
    }
    for (;;) {
        skip_ws(p);
        if (grow(p, j, &cap, object))
            return p->rc;
        char *key = NULL;
        if (object) {
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return jfail(p, "expected a string key");
            key = parse_string(p);
            if (!key)
                return p->rc;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                tl_free(key);
                return jfail(p, "expected ':'");
            }
            p->pos++;
            j->keys[j->n] = key;
        }
        memset(&j->items[j->n], 0, sizeof j->items[0]);
        j->n++; /* counted before parsing, so a failure frees what was built */
        if (parse_value(p, &j->items[j->n - 1], depth + 1))
            return p->rc;
        skip_ws(p);
        if (p->pos >= p->len)
            return jfail(p, object ? "unterminated object" : "unterminated array");
        unsigned char c = p->s[p->pos++];
        if (c == ',')
            continue;
        if (c == (object ? '}' : ']'))
            return object ? check_unique(p, j) : 0;
        p->pos--;
        return jfail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_number(jp *p, tl_json *j)
{
    size_t start = p->pos;
    const unsigned char *s = p->s;
    if (p->pos < p->len && s[p->pos] == '-')
        p->pos++;
    if (p->pos >= p->len || !(s[p->pos] >= '0' && s[p->pos] <= '9'))
        return jfail(p, "invalid number");
    if (s[p->pos] == '0')
        p->pos++;
    else
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9')
            p->pos++;
    if (p->pos < p->len && s[p->pos] == '.') {
        p->pos++;
        if (p->pos >= p->len || !(s[p->pos] >= '0' && s[p->pos] <= '9'))
            return jfail(p, "invalid number");
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < p->len && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (s[p->pos] == '+' || s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->len || !(s[p->pos] >= '0' && s[p->pos] <= '9'))
            return jfail(p, "invalid number");
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9')
            p->pos++;
    }
    j->type = TL_JSON_NUMBER;
    j->num = (const char *)s + start;
    j->numlen = p->pos - start;
    return 0;
}

static int literal(jp *p, const char *word)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return jfail(p, "unexpected character");
    p->pos += n;
    return 0;
}

static int parse_value(jp *p, tl_json *j, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return jfail(p, "nesting too deep");
    skip_ws(p);
    if (p->pos >= p->len)
        return jfail(p, "unexpected end of the header");
    switch (p->s[p->pos]) {
    case '{': return parse_container(p, j, depth, 1);
    case '[': return parse_container(p, j, depth, 0);
    case '"':
        j->str = parse_string(p);
        if (!j->str)
            return p->rc;
        j->type = TL_JSON_STRING;
        return 0;
    case 't': j->type = TL_JSON_BOOL; j->boolean = 1; return literal(p, "true");
    case 'f': j->type = TL_JSON_BOOL; return literal(p, "false");
    case 'n': j->type = TL_JSON_NULL; return literal(p, "null");
    default: return parse_number(p, j);
    }
}

int tl_json_parse(const char *what, const char *text, size_t len, tl_json **out)
{
    *out = NULL;
    tl_json *j = tl_alloc_zero(sizeof *j);
    if (!j)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", what);
    jp p = {what, (const unsigned char *)text, len, 0, 0};
    if (!parse_value(&p, j, 0)) {
        skip_ws(&p);
        if (p.pos != p.len)
            jfail(&p, "trailing characters after the JSON value");
    }
    if (p.rc) {
        tl_json_free(j);
        return p.rc;
    }
    *out = j;
    return TLEARN_OK;
}

const tl_json *tl_json_get(const tl_json *obj, const char *key)
{
    if (!obj || obj->type != TL_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

int tl_json_u64(const tl_json *j, uint64_t *v)
{
    if (!j || j->type != TL_JSON_NUMBER || j->numlen == 0 || j->numlen > 20)
        return 0;
    uint64_t x = 0;
    for (size_t i = 0; i < j->numlen; i++) {
        char c = j->num[i];
        if (c < '0' || c > '9')
            return 0; /* sign, fraction or exponent */
        unsigned d = (unsigned)(c - '0');
        if (x > (UINT64_MAX - d) / 10)
            return 0;
        x = x * 10 + d;
    }
    *v = x;
    return 1;
}
