/* Text transfer on Debian's own package index, with the public API only.
 *
 * Corpus: every binary package the machine's apt knows (`apt-cache dumpavail` after
 * `apt-get update`): its Section and its Description. Since 2012 Debian's Packages files
 * carry only the first line of a description (and its md5); the long text is in the
 * Translation-en index, which `apt-get update -o Acquire::Languages=en` fetches. So the
 * program reads `apt-cache dumpavail` followed by the Translation-en files (through
 * apt-helper cat-file) and joins them by Description-md5; without Translation-en it still
 * runs on the first lines alone (and says so). `--corpus FILE` reads the same text from a
 * file (make one with the command the program prints with --help).
 *
 * 1. Packages are deduplicated (by name, then by identical description) and split by a hash
 *    of the name: 60% pretraining, 20% labelled pool, 20% held-out.
 * 2. Vocabulary: word pieces built on the pretraining split (see build_vocab()). Not bytes:
 *    at 64 positions bytes would cover a description's first line and a half, word pieces
 *    cover most of the first paragraph, and predicting a masked word teaches more about
 *    the text than spelling a masked byte. Not full BPE or WordPiece training either: whole
 *    frequent words plus the frequent prefixes and inner pieces of the rare ones, segmented
 *    greedily longest-first as WordPiece does, is a page of C and takes a second.
 * 3. Pretrain an encoder (embedding and learned positions as BERT's, 4 pre-norm transformer
 *    blocks of dim 128, 4 heads, feed-forward 512, GELU; final layer norm) by masked-token
 *    prediction
 *    on the pretraining descriptions: 15% of the tokens are predicted, of which 80% are
 *    replaced by [MASK], 10% by a random token and 10% kept (BERT).
 * 4. Contrastive phase (tlearn_model_train_step_pairs): the pretrained encoder with mean
 *    pooling learns sentence embeddings without labels from each pretraining package's two
 *    views of itself, its synopsis (the description's first line) and its long text, as
 *    title/body pairs train sentence embedders (dropout and 10% masked tokens per view;
 *    symmetric in-batch loss at temperature 0.05), see contrastive().
 * 5. Predict the Section (the 10 largest) of held-out packages from K labelled descriptions
 *    per section, averaged over --draws disjoint draws of the K (for K <= 32; draw d takes
 *    the d-th K of each section in name-hash order; one draw for larger K):
 *      scratch     the same encoder + mean pooling + linear head, randomly initialised
 *      frozen-mlm  the masked-token encoder frozen: mean-pooled features (standardised),
 *                  a linear head trained on them
 *      frozen      the same on the contrastive encoder
 *      full        the contrastive encoder + the frozen probe's head (LP-FT: linear
 *                  probe, then fine-tune everything at a low rate)
 *      lora        the contrastive encoder frozen, rank-8 LoRA adapters on the feed-forward
 *                  linears of every block, trained with the probe's head
 *    Every trained method takes the same number of steps; accuracy on a balanced held-out
 *    test set (chance 0.1).
 *
 * The full run prints the table at the end; examples/text-transfer.md holds the figures of
 * a run. At --quick scale (3,000 descriptions, 60 pretraining steps) the methods are within
 * noise of each other: even a random encoder's mean-pooled features give a linear head about
 * half the sections from 16 examples each (keywords such as "python" or "perl" carry them).
 *
 * Usage: text-transfer [--quick] [--corpus FILE] [--k 16,128] [--threads 2]
 *                      [--pretrain-steps N] [--contrastive-steps N] [--draws N]
 *                      [--test-per-class N] [--contrastive-lr X] [--save PATH]
 *                      [--pretrained PATH]
 *   --save PATH        writes the masked-token model after pretraining;
 *   --pretrained PATH  loads such a model instead of pretraining (same corpus and options,
 *                      hence the same vocabulary; a model that does not fit is refused).
 *   --quick  a reduced run for tests: 3,000 pretraining descriptions, 60 steps, 10
 *            contrastive steps, a 2,048-piece vocabulary, K = 16, one draw, a quarter of
 *            the epochs, 40 test descriptions per section.
 * Prints one line per result: `result protocol=text k=16 method=frozen accuracy=0.5120`.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tlearn/tlearn.h>

#include "common/check.h"
#include "progress.h"

/* The corpus command: the package records, then the long descriptions. */
#define APT_CORPUS_CMD                                                                        \
    "apt-cache dumpavail && for f in /var/lib/apt/lists/*_i18n_Translation-en*; do "          \
    "[ -e \"$f\" ] && /usr/lib/apt/apt-helper cat-file \"$f\"; done; true"

#define SECTIONS 10
#define MAX_K 8
#define WORD_MAX 32
#define IGNORE (-100)

enum { TOK_PAD, TOK_UNK, TOK_MASK, NSPECIAL };

typedef struct options {
    int quick, threads, nk, k[MAX_K], pretrain_steps, seq, vocab, dim, layers, heads, ff;
    int test_per_class, contrastive_steps, draws, min_steps;
    size_t pretrain_limit;
    double contrastive_lr;
    const char *corpus, *save, *pretrained;
} options;

static void usage(int status)
{
    fprintf(stderr,
            "usage: text-transfer [--quick] [--corpus FILE] [--k 16,128] [--threads N]\n"
            "                     [--pretrain-steps N] [--contrastive-steps N] [--draws N]\n"
            "                     [--test-per-class N] [--contrastive-lr X] [--save PATH]\n"
            "                     [--pretrained PATH]\n"
            "Without --corpus the program runs:\n  %s\n"
            "(long descriptions need: apt-get update -o Acquire::Languages=en)\n",
            APT_CORPUS_CMD);
    exit(status);
}

static int parse_int(const char *s, int lo)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > 1000000000)
        usage(2);
    return (int)v;
}

static options parse(int argc, char **argv)
{
    options o = {0};
    o.threads = 2;
    o.nk = 2;
    o.k[0] = 16;
    o.k[1] = 128;
    o.pretrain_steps = 1000;
    o.contrastive_steps = 1000;
    o.contrastive_lr = 5e-4;
    o.draws = 3;
    o.min_steps = 160;
    o.seq = 64;
    o.vocab = 4096;
    o.dim = 128;
    o.layers = 4;
    o.heads = 4;
    o.ff = 512;
    o.test_per_class = 300;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(0);
        } else if (!strcmp(a, "--quick")) {
            o.quick = 1;
            o.pretrain_limit = 3000;
            o.pretrain_steps = 60;
            o.contrastive_steps = 10;
            o.draws = 1;
            o.vocab = 2048;
            o.nk = 1;
            o.test_per_class = 40;
        } else if (!v) {
            usage(2);
        } else if (!strcmp(a, "--corpus")) {
            o.corpus = argv[++i];
        } else if (!strcmp(a, "--save")) {
            o.save = argv[++i];
        } else if (!strcmp(a, "--pretrained")) {
            o.pretrained = argv[++i];
        } else if (!strcmp(a, "--contrastive-lr")) {
            char *end;
            o.contrastive_lr = strtod(argv[++i], &end);
            if (*end || !(o.contrastive_lr > 0 && o.contrastive_lr < 1))
                usage(2);
        } else if (!strcmp(a, "--k")) {
            o.nk = 0;
            for (char *s = argv[++i]; *s && o.nk < MAX_K;) {
                char *end;
                long k = strtol(s, &end, 10);
                if (end == s || k < 1 || k > 10000)
                    usage(2);
                o.k[o.nk++] = (int)k;
                s = *end == ',' ? end + 1 : end;
            }
        } else if (!strcmp(a, "--threads")) {
            o.threads = parse_int(argv[++i], 1);
        } else if (!strcmp(a, "--pretrain-steps")) {
            o.pretrain_steps = parse_int(argv[++i], 0);
        } else if (!strcmp(a, "--contrastive-steps")) {
            o.contrastive_steps = parse_int(argv[++i], 0);
        } else if (!strcmp(a, "--draws")) {
            o.draws = parse_int(argv[++i], 1);
            if (o.draws > 16)
                usage(2);
        } else if (!strcmp(a, "--test-per-class")) {
            o.test_per_class = parse_int(argv[++i], 1);
        } else {
            usage(2);
        }
    }
    if (o.nk < 1)
        usage(2);
    return o;
}

/* Draws of the K labelled examples to average over: several for small K, where which
 * examples are drawn moves the accuracy by a few points; one for large K. */
static int draws_for(const options *o, int k)
{
    return k <= 32 ? o->draws : 1;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "text-transfer: out of memory\n");
        exit(1);
    }
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "text-transfer: out of memory\n");
        exit(1);
    }
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* ---- a string -> int map (open addressing; keys owned) ---- */

typedef struct smap {
    char **keys;
    int *vals;
    size_t cap, n;
} smap;

static void smap_free(smap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* The value slot of key s[0..len), created with value @p init when absent and @p create;
 * NULL when absent otherwise. */
static int *smap_slot(smap *m, const char *s, size_t len, int create, int init)
{
    if (create && 2 * (m->n + 1) > m->cap) {
        smap old = *m;
        m->cap = old.cap ? 2 * old.cap : 1024;
        m->keys = calloc(m->cap, sizeof *m->keys);
        m->vals = xmalloc(m->cap * sizeof *m->vals);
        if (!m->keys) {
            fprintf(stderr, "text-transfer: out of memory\n");
            exit(1);
        }
        m->n = 0;
        for (size_t i = 0; i < old.cap; i++)
            if (old.keys[i]) {
                size_t j = fnv1a(old.keys[i], strlen(old.keys[i])) & (m->cap - 1);
                while (m->keys[j])
                    j = (j + 1) & (m->cap - 1);
                m->keys[j] = old.keys[i];
                m->vals[j] = old.vals[i];
                m->n++;
            }
        free(old.keys);
        free(old.vals);
    }
    if (!m->cap)
        return NULL;
    size_t j = fnv1a(s, len) & (m->cap - 1);
    while (m->keys[j]) {
        if (!strncmp(m->keys[j], s, len) && m->keys[j][len] == 0)
            return &m->vals[j];
        j = (j + 1) & (m->cap - 1);
    }
    if (!create)
        return NULL;
    m->keys[j] = xstrndup(s, len);
    m->vals[j] = init;
    m->n++;
    return &m->vals[j];
}

/* ---- corpus: package records joined with their long descriptions ---- */

typedef struct package {
    char *name, *section, *text, *md5; /* md5: until the join */
    uint64_t hash;
    int label; /* index among the SECTIONS largest, or -1 */
    size_t synopsis; /* bytes of text that are the first line, when a long text follows */
} package;

typedef struct corpus {
    package *p;
    size_t n, cap;
    size_t records, with_long;
} corpus;

typedef struct record {
    char *pkg, *section, *md5;
    char *text; /* Description (first line + any long text) */
    char *text_en; /* Description-en of a Translation record */
    size_t text_len, text_en_len;
    int field; /* 1 Description, 2 Description-en, 0 other */
} record;

static void append(char **buf, size_t *len, const char *s, size_t n)
{
    *buf = xrealloc(*buf, *len + n + 2);
    if (*len)
        (*buf)[(*len)++] = ' ';
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
}

static void record_clear(record *r)
{
    free(r->pkg);
    free(r->section);
    free(r->md5);
    free(r->text);
    free(r->text_en);
    memset(r, 0, sizeof *r);
}

static char *field_value(const char *line, size_t len, const char *key)
{
    size_t k = strlen(key);
    if (len <= k || strncmp(line, key, k))
        return NULL;
    const char *v = line + k;
    size_t n = len - k;
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return xstrndup(v, n);
}

/* Read the records: package records into @p c, the long descriptions of Translation
 * records into @p texts, indexed by md5 in @p longs. */
static void read_records(FILE *f, corpus *c, smap *longs, char ***texts, size_t *ntexts)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    record r = {0};
    size_t tcap = 0;
    for (;;) {
        len = getline(&line, &cap, f);
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len <= 0) { /* end of a record */
            if (r.md5 && r.text_en) {
                int *slot = smap_slot(longs, r.md5, strlen(r.md5), 1, -1);
                if (*slot < 0) {
                    if (*ntexts == tcap) {
                        tcap = tcap ? 2 * tcap : 4096;
                        *texts = xrealloc(*texts, tcap * sizeof **texts);
                    }
                    (*texts)[*ntexts] = r.text_en;
                    r.text_en = NULL;
                    *slot = (int)(*ntexts)++;
                }
            }
            if (r.pkg && r.section && r.text) {
                if (c->n == c->cap) {
                    c->cap = c->cap ? 2 * c->cap : 8192;
                    c->p = xrealloc(c->p, c->cap * sizeof *c->p);
                }
                package *p = &c->p[c->n++];
                *p = (package){r.pkg, r.section, r.text, r.md5, 0, -1, 0};
                r.pkg = r.section = r.text = r.md5 = NULL;
                c->records++;
            }
            record_clear(&r);
            if (len < 0)
                break;
            continue;
        }
        if (line[0] == ' ' || line[0] == '\t') { /* continuation line */
            const char *s = line;
            size_t n = (size_t)len;
            while (n && (*s == ' ' || *s == '\t'))
                s++, n--;
            if (n == 1 && s[0] == '.') /* paragraph break */
                continue;
            if (r.field == 1)
                append(&r.text, &r.text_len, s, n);
            else if (r.field == 2)
                append(&r.text_en, &r.text_en_len, s, n);
            continue;
        }
        char *v;
        r.field = 0;
        if ((v = field_value(line, (size_t)len, "Package:"))) {
            free(r.pkg);
            r.pkg = v;
        } else if ((v = field_value(line, (size_t)len, "Section:"))) {
            free(r.section);
            r.section = v;
        } else if ((v = field_value(line, (size_t)len, "Description-md5:"))) {
            free(r.md5);
            r.md5 = v;
        } else if ((v = field_value(line, (size_t)len, "Description-en:"))) {
            free(r.text_en);
            r.text_en = v;
            r.text_en_len = strlen(v);
            r.field = 2;
        } else if ((v = field_value(line, (size_t)len, "Description:"))) {
            free(r.text);
            r.text = v;
            r.text_len = strlen(v);
            r.field = 1;
        }
    }
    free(line);
    record_clear(&r);
}

/* Load, join and deduplicate. Returns 0, or 1 with a message. */
static int load_corpus(const options *o, corpus *c)
{
    FILE *f;
    int piped = !o->corpus;
    if (piped) {
        printf("corpus: %s\n", APT_CORPUS_CMD);
        f = popen(APT_CORPUS_CMD, "r");
        if (!f) {
            fprintf(stderr, "text-transfer: cannot run apt-cache: %s\n", strerror(errno));
            return 1;
        }
    } else {
        f = fopen(o->corpus, "r");
        if (!f) {
            fprintf(stderr, "text-transfer: cannot open the corpus '%s': %s\n", o->corpus,
                    strerror(errno));
            return 1;
        }
        printf("corpus: %s\n", o->corpus);
    }
    smap longs = {0};
    char **texts = NULL;
    size_t ntexts = 0;
    memset(c, 0, sizeof *c);
    read_records(f, c, &longs, &texts, &ntexts);
    int rc = piped ? pclose(f) : (ferror(f) ? -1 : 0);
    if (!piped)
        fclose(f);
    if (c->n == 0) {
        fprintf(stderr,
                "text-transfer: no package records (Package, Section, Description) in %s%s\n",
                piped ? "the output of apt-cache dumpavail" : o->corpus,
                piped ? "; run apt-get update -o Acquire::Languages=en first" : "");
        return 1;
    }
    if (piped && rc != 0)
        printf("note: the corpus command exited with status %d\n", rc);

    /* Join with the long descriptions; deduplicate by name (several versions) and by text
     * (packages that share one description would leak across the splits). */
    smap names = {0};
    uint64_t *seen = xmalloc(c->n * sizeof *seen);
    size_t kept = 0;
    for (size_t i = 0; i < c->n; i++) {
        package *p = &c->p[i];
        int *lt = p->md5 ? smap_slot(&longs, p->md5, strlen(p->md5), 0, 0) : NULL;
        free(p->md5);
        p->md5 = NULL;
        int *dup = smap_slot(&names, p->name, strlen(p->name), 1, 0);
        if ((*dup)++) {
            free(p->name), free(p->section), free(p->text);
            continue;
        }
        if (lt && strlen(texts[*lt]) > strlen(p->text)) {
            size_t syn = strlen(p->text);
            p->synopsis = !strncmp(texts[*lt], p->text, syn) && texts[*lt][syn] == ' ' ? syn : 0;
            free(p->text);
            p->text = xstrndup(texts[*lt], strlen(texts[*lt]));
            p->label = -2; /* marks a long description until the sections are known */
        }
        char *slash = strrchr(p->section, '/'); /* contrib/net -> net */
        if (slash)
            memmove(p->section, slash + 1, strlen(slash + 1) + 1);
        p->hash = fnv1a(p->name, strlen(p->name));
        c->p[kept++] = *p;
    }
    c->n = kept;
    /* text duplicates: keep the package with the smallest name hash */
    for (size_t i = 0; i < c->n; i++)
        seen[i] = fnv1a(c->p[i].text, strlen(c->p[i].text));
    smap texth = {0};
    kept = 0;
    for (size_t i = 0; i < c->n; i++) {
        char key[17];
        snprintf(key, sizeof key, "%016llx", (unsigned long long)seen[i]);
        int *slot = smap_slot(&texth, key, 16, 1, -1);
        if (*slot >= 0) {
            package *q = &c->p[*slot];
            if (c->p[i].hash < q->hash) { /* swap in the smaller hash */
                package t = *q;
                *q = c->p[i];
                c->p[i] = t;
            }
            free(c->p[i].name), free(c->p[i].section), free(c->p[i].text);
            continue;
        }
        *slot = (int)kept;
        c->p[kept++] = c->p[i];
    }
    c->n = kept;
    for (size_t i = 0; i < c->n; i++) {
        c->with_long += c->p[i].label == -2;
        c->p[i].label = -1;
    }
    free(seen);
    smap_free(&texth);
    smap_free(&names);
    smap_free(&longs);
    for (size_t i = 0; i < ntexts; i++)
        free(texts[i]);
    free(texts);
    printf("read %zu package records: %zu distinct packages and descriptions, %zu with a "
           "long description\n", c->records, c->n, c->with_long);
    if (c->with_long == 0)
        printf("note: no long descriptions (Translation-en); the first lines alone are used. "
               "Fetch them with: apt-get update -o Acquire::Languages=en\n");
    return 0;
}

/* ---- tokenizer ---- */

/* The next unit of @p s from *pos: a word (lowercase [a-z0-9] run, at most WORD_MAX bytes
 * kept), a punctuation byte, or a run of non-ASCII bytes. Returns its kind: 1 word,
 * 2 punctuation, 3 other, 0 at the end. */
static int next_unit(const char *s, size_t *pos, char *buf, size_t *len)
{
    size_t i = *pos;
    while (s[i] && isspace((unsigned char)s[i]))
        i++;
    if (!s[i]) {
        *pos = i;
        return 0;
    }
    unsigned char ch = (unsigned char)s[i];
    *len = 0;
    int kind;
    if (ch < 128 && isalnum(ch)) {
        while (s[i] && (unsigned char)s[i] < 128 && isalnum((unsigned char)s[i])) {
            if (*len < WORD_MAX)
                buf[(*len)++] = (char)tolower((unsigned char)s[i]);
            i++;
        }
        kind = 1;
    } else if (ch < 128) {
        buf[(*len)++] = (char)ch;
        i++;
        kind = ch >= 33 && ch <= 126 ? 2 : 3;
    } else {
        while ((unsigned char)s[i] >= 128)
            i++;
        kind = 3;
    }
    buf[*len] = 0;
    *pos = i;
    return kind;
}

typedef struct vocab {
    smap ids; /* "word", "pre" (a word's first piece), "##inner" */
    int size;
} vocab;

typedef struct scored {
    const char *key;
    long score;
} scored;

static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return strcmp(x->key, y->key);
}

static void vocab_add(vocab *v, const char *key)
{
    int *slot = smap_slot(&v->ids, key, strlen(key), 1, -1);
    if (*slot < 0)
        *slot = v->size++;
}

/* Sorted (score desc, key) entries of a count map. */
static scored *sorted_counts(const smap *m, size_t *n)
{
    scored *s = xmalloc((m->n + 1) * sizeof *s);
    *n = 0;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i])
            s[(*n)++] = (scored){m->keys[i], m->vals[i]};
    qsort(s, *n, sizeof *s, cmp_scored);
    return s;
}

/* Word pieces: specials; every single letter/digit as a first piece and as an inner piece
 * ("##x"), so every word can be spelt; the 32 ASCII punctuation marks; then the most
 * frequent words (three quarters of what is left); then the most frequent first pieces and
 * inner pieces (2..6 bytes) of the words left out, scored by count x length. */
static void build_vocab(vocab *v, char *const *texts, size_t n, int size)
{
    memset(v, 0, sizeof *v);
    static const char *specials[NSPECIAL] = {"[PAD]", "[UNK]", "[MASK]"};
    for (int i = 0; i < NSPECIAL; i++)
        vocab_add(v, specials[i]);
    for (int ch = 33; ch < 127; ch++) {
        char k[4] = {(char)ch, 0};
        if (isalnum(ch) && isupper(ch))
            continue;
        vocab_add(v, k);
        if (isalnum(ch)) {
            char inner[4] = {'#', '#', (char)ch, 0};
            vocab_add(v, inner);
        }
    }
    smap words = {0};
    char buf[WORD_MAX + 1];
    for (size_t t = 0; t < n; t++) {
        size_t pos = 0, len;
        int kind;
        while ((kind = next_unit(texts[t], &pos, buf, &len)))
            if (kind == 1)
                (*smap_slot(&words, buf, len, 1, 0))++;
    }
    size_t nw;
    scored *w = sorted_counts(&words, &nw);
    int word_budget = (size - v->size) * 3 / 4;
    size_t wi = 0;
    for (; wi < nw && word_budget > 0 && w[wi].score >= 3; wi++)
        if (!smap_slot(&v->ids, w[wi].key, strlen(w[wi].key), 0, 0)) {
            vocab_add(v, w[wi].key);
            word_budget--;
        }
    smap pieces = {0};
    char key[WORD_MAX + 3];
    for (size_t i = wi; i < nw; i++) { /* the words left out */
        const char *s = w[i].key;
        size_t L = strlen(s);
        for (size_t at = 0; at < L; at++)
            for (size_t len = 2; len <= 6 && at + len <= L; len++) {
                if (at == 0 && len == L)
                    continue;
                size_t k = 0;
                if (at) {
                    key[k++] = '#';
                    key[k++] = '#';
                }
                memcpy(key + k, s + at, len);
                k += len;
                (*smap_slot(&pieces, key, k, 1, 0)) += (int)w[i].score * (int)len;
            }
    }
    size_t np;
    scored *p = sorted_counts(&pieces, &np);
    for (size_t i = 0; i < np && v->size < size; i++)
        vocab_add(v, p[i].key);
    free(p);
    free(w);
    smap_free(&pieces);
    smap_free(&words);
}

/* Greedy longest-match pieces of one word; returns how many ids were written. */
static int encode_word(const vocab *v, const char *w, size_t L, int32_t *out, int cap)
{
    char key[WORD_MAX + 3];
    int n = 0;
    for (size_t at = 0; at < L && n < cap;) {
        size_t len = L - at;
        int *id = NULL;
        for (; len > 0; len--) {
            size_t k = 0;
            if (at) {
                key[k++] = '#';
                key[k++] = '#';
            }
            memcpy(key + k, w + at, len);
            if ((id = smap_slot((smap *)&v->ids, key, k + len, 0, 0)))
                break;
        }
        out[n++] = id ? *id : TOK_UNK;
        at += len ? len : 1;
    }
    return n;
}

/* Token ids (padded with TOK_PAD) and mask of one description; returns the length before
 * truncation to @p T. */
static int encode(const vocab *v, const char *text, int T, int32_t *ids, int32_t *mask)
{
    int n = 0, total = 0;
    size_t pos = 0, len;
    char buf[WORD_MAX + 1];
    int32_t tmp[WORD_MAX];
    int kind;
    while ((kind = next_unit(text, &pos, buf, &len))) {
        int k;
        if (kind == 1) {
            k = encode_word(v, buf, len, tmp, WORD_MAX);
        } else {
            int *id = kind == 2 ? smap_slot((smap *)&v->ids, buf, len, 0, 0) : NULL;
            tmp[0] = id ? *id : TOK_UNK;
            k = 1;
        }
        for (int i = 0; i < k; i++, total++)
            if (n < T)
                ids[n++] = tmp[i];
    }
    for (int t = 0; t < T; t++) {
        mask[t] = t < n;
        if (t >= n)
            ids[t] = TOK_PAD;
    }
    return total;
}

/* ---- models ---- */

enum { CLASSIFIER, MLM, EMBEDDER };

/* The encoder, then by @p kind: the masked-token head (MLM), mean pooling alone (EMBEDDER,
 * the sentence embedding the contrastive phase trains), or mean pooling + a head over
 * @p classes (CLASSIFIER). */
static tlearn_model *build_model(const options *o, int kind, int classes, uint64_t seed)
{
    tlearn_model *m;
    CHECK(tlearn_model_create_input(&m, "ids", TLEARN_DTYPE_INT32, 1, &o->seq));
    CHECK(tlearn_model_add_input(m, "mask", TLEARN_DTYPE_INT32, 1, &o->seq));
    CHECK(tlearn_model_set_seed(m, seed));
    CHECK(tlearn_model_set_threads(m, o->threads));
    CHECK(tlearn_model_set_next_input(m, "ids"));
    CHECK(tlearn_model_add_embedding(m, "tok", o->vocab, o->dim, TOK_PAD));
    CHECK(tlearn_model_add_position_embedding(m, "pos", o->seq, 0));
    /* BERT's embedding: token vectors initialised N(0, 0.02^2) as the positions (the
     * N(0, 1) default would drown the positions), then a layer norm. Pretraining learns
     * faster so: masked-token loss 6.27 instead of 6.51 after 300 steps in --quick. */
    CHECK(tlearn_model_add_layernorm(m, "emb_norm", 1, 1e-5f, 1));
    size_t n = (size_t)o->vocab * (size_t)o->dim;
    float *w = xmalloc(n * sizeof *w);
    CHECK(tlearn_model_get_tensor(m, "tok.weight", w, n));
    for (size_t i = 0; i < n; i++)
        w[i] *= 0.02f;
    CHECK(tlearn_model_set_tensor(m, "tok.weight", w, n));
    free(w);
    for (int l = 0; l < o->layers; l++) {
        char name[32];
        snprintf(name, sizeof name, "layers.%d", l);
        CHECK(tlearn_model_add_transformer_block(m, name, o->heads, o->ff, TLEARN_ACT_GELU, 1,
                                                 0.1f, "mask"));
    }
    CHECK(tlearn_model_add_layernorm(m, "norm", 1, 1e-5f, 1));
    if (kind == MLM) {
        CHECK(tlearn_model_add_linear(m, "mlm", o->vocab, 1));
    } else {
        CHECK(tlearn_model_add_token_pool(m, "pool", 1, "mask"));
        if (kind == CLASSIFIER)
            CHECK(tlearn_model_add_dense(m, "head", classes));
    }
    return m;
}

/* Copy every tensor of @p dst but its head from @p src, by name. */
static void copy_encoder(tlearn_model *dst, const tlearn_model *src)
{
    int count;
    CHECK(tlearn_model_tensor_count(dst, &count));
    for (int i = 0; i < count; i++) {
        const char *name;
        size_t numel;
        CHECK(tlearn_model_tensor_info(dst, i, &name, &numel, NULL, NULL));
        if (!strncmp(name, "head.", 5))
            continue;
        char copy[160];
        snprintf(copy, sizeof copy, "%s", name);
        float *buf = xmalloc(sizeof(float) * numel);
        CHECK(tlearn_model_get_tensor(src, copy, buf, numel));
        CHECK(tlearn_model_set_tensor(dst, copy, buf, numel));
        free(buf);
    }
}

static tlearn_optim *adamw(double lr, double wd)
{
    tlearn_optim *o;
    CHECK(tlearn_optim_create(&o, TLEARN_ADAMW));
    CHECK(tlearn_optim_set(o, TLEARN_OPT_LR, lr));
    CHECK(tlearn_optim_set(o, TLEARN_OPT_WEIGHT_DECAY, wd));
    CHECK(tlearn_optim_set(o, TLEARN_OPT_CLIP_NORM, 1.0));
    return o;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle(size_t *order, size_t n, uint64_t *state)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(rng_next(state) % i), t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}

/* 0..n-1 in a random order (malloc'ed). */
static size_t *shuffled(size_t n, uint64_t *state)
{
    size_t *order = xmalloc(n * sizeof *order);
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    shuffle(order, n, state);
    return order;
}

/* Warm up linearly over the first 6% of the steps, then decay linearly to 0. */
static double schedule(double lr, int step, int steps)
{
    int warm = steps / 16 > 1 ? steps / 16 : 1;
    if (step < warm)
        return lr * (step + 1) / warm;
    return lr * (double)(steps - step) / (double)(steps - warm + 1);
}

/* A progress line: rewritten in place on a terminal, every tenth of the run in logs. */
static void progress(const char *label, int step, int steps, float loss, double t0)
{
    double el = progress_now() - t0, eta = el / (step + 1) * (steps - step - 1);
    if (isatty(STDOUT_FILENO)) {
        printf("\r%s step %d/%d loss %.4f %.0fs ETA %.0fs   ", label, step + 1, steps,
               (double)loss, el, eta);
        if (step + 1 == steps)
            printf("\n");
        fflush(stdout);
    } else if ((step + 1) % (steps / 10 > 0 ? steps / 10 : 1) == 0 || step + 1 == steps) {
        printf("%s step %d/%d loss %.4f %.0fs ETA %.0fs\n", label, step + 1, steps,
               (double)loss, el, eta);
    }
}

typedef struct dataset {
    int32_t *ids, *mask, *labels;
    size_t n;
} dataset;

static void dataset_alloc(dataset *d, size_t n, int T)
{
    d->ids = xmalloc(n * (size_t)T * sizeof *d->ids);
    d->mask = xmalloc(n * (size_t)T * sizeof *d->mask);
    d->labels = xmalloc(n * sizeof *d->labels);
    d->n = 0;
}

static void dataset_free(dataset *d)
{
    free(d->ids);
    free(d->mask);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

/* BERT's masking of one batch: labels at 15% of the real tokens, IGNORE elsewhere. */
static void mask_batch(const options *o, const dataset *d, const size_t *rows, size_t b,
                       int32_t *ids, int32_t *mask, int32_t *labels, uint64_t *rng)
{
    size_t T = (size_t)o->seq;
    for (size_t i = 0; i < b; i++) {
        const int32_t *src = d->ids + rows[i] * T, *msk = d->mask + rows[i] * T;
        memcpy(ids + i * T, src, T * sizeof *ids);
        memcpy(mask + i * T, msk, T * sizeof *mask);
        int chosen = 0, first = -1;
        for (size_t t = 0; t < T; t++) {
            labels[i * T + t] = IGNORE;
            if (!msk[t])
                continue;
            if (first < 0)
                first = (int)t;
            uint64_t r = rng_next(rng);
            if (r % 1000 >= 150)
                continue;
            labels[i * T + t] = src[t];
            chosen++;
            unsigned how = (unsigned)((r >> 20) % 10);
            if (how < 8)
                ids[i * T + t] = TOK_MASK;
            else if (how == 8)
                ids[i * T + t] = NSPECIAL + (int32_t)((r >> 32) % (uint64_t)(o->vocab - NSPECIAL));
        }
        if (!chosen && first >= 0) { /* every example predicts something */
            labels[i * T + (size_t)first] = src[first];
            ids[i * T + (size_t)first] = TOK_MASK;
        }
    }
}

/* Masked-token accuracy of the MLM model on @p d (a fixed masking). */
static float masked_accuracy(const options *o, tlearn_model *m, const dataset *d, size_t n)
{
    size_t T = (size_t)o->seq, V = (size_t)o->vocab, chunk = 16, right = 0, total = 0;
    int32_t *ids = xmalloc(chunk * T * sizeof *ids), *mask = xmalloc(chunk * T * sizeof *mask);
    int32_t *labels = xmalloc(chunk * T * sizeof *labels);
    size_t *rows = xmalloc(chunk * sizeof *rows);
    float *logits = xmalloc(chunk * T * V * sizeof *logits);
    uint64_t rng = 777;
    for (size_t s = 0; s < n; s += chunk) {
        size_t b = n - s < chunk ? n - s : chunk;
        for (size_t i = 0; i < b; i++)
            rows[i] = s + i;
        mask_batch(o, d, rows, b, ids, mask, labels, &rng);
        const void *in[2] = {ids, mask};
        float *outs[1] = {logits};
        size_t len = b * T * V;
        CHECK(tlearn_model_run(m, in, 2, b, outs, &len, 1));
        for (size_t p = 0; p < b * T; p++) {
            if (labels[p] == IGNORE)
                continue;
            const float *row = logits + p * V;
            size_t best = 0;
            for (size_t v = 1; v < V; v++)
                if (row[v] > row[best])
                    best = v;
            right += (int32_t)best == labels[p];
            total++;
        }
    }
    free(ids), free(mask), free(labels), free(rows), free(logits);
    return total ? (float)right / (float)total : 0.0f;
}

static void pretrain(const options *o, tlearn_model *m, const dataset *d)
{
    const size_t B = 32, T = (size_t)o->seq;
    int32_t *ids = xmalloc(B * T * sizeof *ids), *mask = xmalloc(B * T * sizeof *mask);
    int32_t *labels = xmalloc(B * T * sizeof *labels);
    uint64_t shuf = 1, rng = 2;
    size_t *order = shuffled(d->n, &shuf);
    tlearn_optim *opt = adamw(1e-3, 0.01);
    CHECK(tlearn_model_set_training(m, 1));
    size_t at = 0;
    double t0 = progress_now();
    float avg = 0;
    for (int step = 0; step < o->pretrain_steps; step++) {
        if (at + B > d->n) {
            shuffle(order, d->n, &shuf);
            at = 0;
        }
        size_t b = d->n < B ? d->n : B;
        mask_batch(o, d, order + at, b, ids, mask, labels, &rng);
        at += b;
        CHECK(tlearn_optim_set(opt, TLEARN_OPT_LR, schedule(1e-3, step, o->pretrain_steps)));
        const void *in[2] = {ids, mask};
        float loss;
        CHECK(tlearn_model_train_step_tokens(m, opt, in, 2, labels, IGNORE, b, &loss));
        avg = step ? 0.95f * avg + 0.05f * loss : loss;
        progress("pretrain", step, o->pretrain_steps, avg, t0);
    }
    tlearn_optim_destroy(&opt);
    free(ids), free(mask), free(labels), free(order);
}

/* Contrastive phase (unsupervised: no section is read): each batch holds B packages twice,
 * row i the first line of the description (the synopsis) and row B + i the long text after
 * it, each with its own dropout and 10% of its tokens replaced by [MASK]; the symmetric
 * in-batch loss pulls a package's two mean-pooled views together and pushes the other
 * packages' away, as title/body pairs train sentence embedders. It trains the mean-pooled
 * embedding the frozen probe reads. Measured (examples/text-transfer.md): two random crops
 * of one description as the views did not help the probe; these pairs do. */
static void contrastive(const options *o, tlearn_model *m, const dataset *syn,
                        const dataset *body)
{
    const size_t B = 32, T = (size_t)o->seq;
    int32_t *ids = xmalloc(2 * B * T * sizeof *ids), *mask = xmalloc(2 * B * T * sizeof *mask);
    uint64_t shuf = 5, rng = 6;
    size_t *order = shuffled(syn->n, &shuf);
    tlearn_optim *opt = adamw(o->contrastive_lr, 0.01);
    CHECK(tlearn_model_set_loss(m, TLEARN_LOSS_CONTRASTIVE_SYMMETRIC));
    CHECK(tlearn_model_set_contrastive_temperature(m, 0.05f));
    CHECK(tlearn_model_set_training(m, 1));
    size_t at = 0, b = syn->n < B ? syn->n : B;
    double t0 = progress_now();
    float avg = 0;
    for (int step = 0; step < o->contrastive_steps; step++) {
        if (at + b > syn->n) {
            shuffle(order, syn->n, &shuf);
            at = 0;
        }
        for (size_t v = 0; v < 2; v++)
            for (size_t i = 0; i < b; i++) {
                const dataset *d = v ? body : syn;
                size_t r = order[at + i], row = v * b + i;
                memcpy(ids + row * T, d->ids + r * T, T * sizeof *ids);
                memcpy(mask + row * T, d->mask + r * T, T * sizeof *mask);
                for (size_t t = 0; t < T; t++)
                    if (mask[row * T + t] && rng_next(&rng) % 10 == 0)
                        ids[row * T + t] = TOK_MASK;
            }
        at += b;
        CHECK(tlearn_optim_set(opt, TLEARN_OPT_LR,
                               schedule(o->contrastive_lr, step, o->contrastive_steps)));
        const void *in[2] = {ids, mask};
        float loss;
        CHECK(tlearn_model_train_step_pairs(m, opt, in, 2, 2 * b, &loss));
        avg = step ? 0.95f * avg + 0.05f * loss : loss;
        progress("contrastive", step, o->contrastive_steps, avg, t0);
    }
    tlearn_optim_destroy(&opt);
    free(ids), free(mask), free(order);
}

/* Fine-tune @p m on @p train (all parameters not frozen), at @p lr, @p epochs. */
static void finetune(tlearn_model *m, const dataset *train, double lr, int epochs, int T,
                     const char *label)
{
    const size_t B = 16;
    int32_t *ids = xmalloc(B * (size_t)T * sizeof *ids), *mask = xmalloc(B * (size_t)T * sizeof *mask);
    int32_t y[16];
    size_t *order = xmalloc(train->n * sizeof *order);
    for (size_t i = 0; i < train->n; i++)
        order[i] = i;
    uint64_t shuf = 3;
    size_t per_epoch = (train->n + B - 1) / B;
    int steps = epochs * (int)per_epoch, step = 0;
    tlearn_optim *opt = adamw(lr, 0.01);
    CHECK(tlearn_model_set_training(m, 1));
    double t0 = progress_now();
    float avg = 0;
    for (int e = 0; e < epochs; e++) {
        shuffle(order, train->n, &shuf);
        for (size_t s = 0; s < train->n; s += B, step++) {
            size_t b = train->n - s < B ? train->n - s : B;
            for (size_t i = 0; i < b; i++) {
                size_t r = order[s + i];
                memcpy(ids + i * (size_t)T, train->ids + r * (size_t)T, sizeof *ids * (size_t)T);
                memcpy(mask + i * (size_t)T, train->mask + r * (size_t)T, sizeof *mask * (size_t)T);
                y[i] = train->labels[r];
            }
            CHECK(tlearn_optim_set(opt, TLEARN_OPT_LR, schedule(lr, step, steps)));
            const void *in[2] = {ids, mask};
            float loss;
            CHECK(tlearn_model_train_step_inputs(m, opt, in, 2, y, b, &loss));
            avg = step ? 0.9f * avg + 0.1f * loss : loss;
            progress(label, step, steps, avg, t0);
        }
    }
    tlearn_optim_destroy(&opt);
    free(ids), free(mask), free(order);
}

/* Accuracy of a classifier over @p test. */
static float accuracy(tlearn_model *m, const dataset *test)
{
    float *logits = xmalloc(test->n * SECTIONS * sizeof *logits);
    const void *in[2] = {test->ids, test->mask};
    float *outs[1] = {logits};
    size_t len = test->n * SECTIONS, right = 0;
    CHECK(tlearn_model_run(m, in, 2, test->n, outs, &len, 1));
    for (size_t i = 0; i < test->n; i++) {
        int best = 0;
        for (int c = 1; c < SECTIONS; c++)
            if (logits[i * SECTIONS + c] > logits[i * SECTIONS + best])
                best = c;
        right += best == test->labels[i];
    }
    free(logits);
    return (float)right / (float)test->n;
}

/* Mean-pooled features (the layer "pool") of @p d. */
static float *pooled(tlearn_model *m, const dataset *d, int dim)
{
    const char *outs_names[1] = {"pool"};
    CHECK(tlearn_model_set_outputs(m, outs_names, 1));
    float *f = xmalloc(d->n * (size_t)dim * sizeof *f);
    const void *in[2] = {d->ids, d->mask};
    float *outs[1] = {f};
    size_t len = d->n * (size_t)dim;
    CHECK(tlearn_model_run(m, in, 2, d->n, outs, &len, 1));
    CHECK(tlearn_model_set_outputs(m, NULL, 0));
    return f;
}

/* A linear head on frozen features: its own small model, trained on the cache. The
 * features are standardised with the training examples' mean and deviation first. The
 * head, with the standardisation folded in (W / sd, b - W mean / sd), goes to @p hw
 * (SECTIONS x dim) and @p hb, so that a classifier can start from it (LP-FT). */
static float linear_probe(float *xtr, const int32_t *ytr, size_t ntr, const float *xte_raw,
                          const int32_t *yte, size_t nte, int dim, int epochs, float *hw,
                          float *hb)
{
    double *mean = xmalloc((size_t)dim * sizeof *mean), *inv_sd = xmalloc((size_t)dim * sizeof *inv_sd);
    float *xte = xmalloc(nte * (size_t)dim * sizeof *xte);
    for (int j = 0; j < dim; j++) {
        double s = 0, ss = 0;
        for (size_t i = 0; i < ntr; i++)
            s += xtr[i * (size_t)dim + (size_t)j];
        double mu = s / (double)ntr;
        for (size_t i = 0; i < ntr; i++) {
            double d = xtr[i * (size_t)dim + (size_t)j] - mu;
            ss += d * d;
        }
        double inv = 1.0 / sqrt(ss / (double)ntr + 1e-6);
        mean[j] = mu;
        inv_sd[j] = inv;
        for (size_t i = 0; i < ntr; i++)
            xtr[i * (size_t)dim + (size_t)j] = (float)((xtr[i * (size_t)dim + (size_t)j] - mu) * inv);
        for (size_t i = 0; i < nte; i++)
            xte[i * (size_t)dim + (size_t)j] = (float)((xte_raw[i * (size_t)dim + (size_t)j] - mu) * inv);
    }
    tlearn_model *h;
    CHECK(tlearn_model_create(&h, dim, 1, 1));
    CHECK(tlearn_model_set_seed(h, 11));
    CHECK(tlearn_model_add_dense(h, "head", SECTIONS));
    tlearn_optim *opt = adamw(1e-3, 0.01);
    CHECK(tlearn_model_fit(h, opt, xtr, ytr, ntr, 16, epochs, 1, NULL, NULL));
    float acc;
    CHECK(tlearn_model_evaluate(h, xte, yte, nte, NULL, &acc));
    CHECK(tlearn_model_get_tensor(h, "head.weight", hw, (size_t)SECTIONS * (size_t)dim));
    CHECK(tlearn_model_get_tensor(h, "head.bias", hb, SECTIONS));
    for (int c = 0; c < SECTIONS; c++) {
        double b = hb[c];
        for (int j = 0; j < dim; j++) {
            float *w = &hw[(size_t)c * (size_t)dim + (size_t)j];
            b -= *w * mean[j] * inv_sd[j];
            *w = (float)(*w * inv_sd[j]);
        }
        hb[c] = (float)b;
    }
    tlearn_optim_destroy(&opt);
    tlearn_model_destroy(&h);
    free(xte), free(mean), free(inv_sd);
    return acc;
}

static int cmp_by_hash(const void *a, const void *b)
{
    const package *x = *(const package *const *)a, *y = *(const package *const *)b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

int main(int argc, char **argv)
{
    options opt = parse(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    print_blas_info();
    double t_start = progress_now();
    corpus c;
    if (load_corpus(&opt, &c))
        return 1;

    /* ---- sections and splits ---- */
    smap sec = {0};
    for (size_t i = 0; i < c.n; i++)
        (*smap_slot(&sec, c.p[i].section, strlen(c.p[i].section), 1, 0))++;
    size_t nsec;
    scored *sc = sorted_counts(&sec, &nsec); /* largest first */
    if (nsec < SECTIONS) {
        fprintf(stderr, "text-transfer: the corpus has %zu sections; %d are needed\n", nsec,
                SECTIONS);
        return 1;
    }
    printf("the %d largest sections:", SECTIONS);
    for (int s = 0; s < SECTIONS; s++)
        printf(" %s (%ld)", sc[s].key, sc[s].score);
    printf("\n");
    for (size_t i = 0; i < c.n; i++)
        for (int s = 0; s < SECTIONS; s++)
            if (!strcmp(c.p[i].section, sc[s].key))
                c.p[i].label = s;

    /* 60% pretraining, 20% labelled pool, 20% held-out, by the name's hash; each split
     * ordered by hash so that --quick's slices and the K labelled examples are fixed. */
    package **by_hash = xmalloc(c.n * sizeof *by_hash);
    for (size_t i = 0; i < c.n; i++)
        by_hash[i] = &c.p[i];
    qsort(by_hash, c.n, sizeof *by_hash, cmp_by_hash);
    size_t npre = 0, npairs = 0;
    char **pre_texts = xmalloc(c.n * sizeof *pre_texts);
    package **pairs = xmalloc(c.n * sizeof *pairs); /* pretraining packages with a long text */
    for (size_t i = 0; i < c.n; i++) {
        package *p = by_hash[i];
        if ((p->hash >> 7) % 10 < 6 && (!opt.pretrain_limit || npre < opt.pretrain_limit)) {
            pre_texts[npre++] = p->text;
            if (p->synopsis)
                pairs[npairs++] = p;
        }
    }
    int K_max = 0;
    for (int i = 0; i < opt.nk; i++)
        if (opt.k[i] * draws_for(&opt, opt.k[i]) > K_max) /* labelled examples per section */
            K_max = opt.k[i] * draws_for(&opt, opt.k[i]);

    /* ---- vocabulary and encoding ---- */
    double t0 = progress_now();
    vocab voc;
    build_vocab(&voc, pre_texts, npre, opt.vocab);
    opt.vocab = voc.size;
    const int T = opt.seq;
    dataset pre, pool, test;
    dataset_alloc(&pre, npre, T);
    dataset_alloc(&pool, (size_t)K_max * SECTIONS, T);
    dataset_alloc(&test, (size_t)opt.test_per_class * SECTIONS, T);
    long tokens = 0, truncated = 0, unk = 0, real = 0;
    for (size_t i = 0; i < npre; i++) {
        int n = encode(&voc, pre_texts[i], T, pre.ids + i * (size_t)T, pre.mask + i * (size_t)T);
        tokens += n;
        truncated += n > T;
        for (int t = 0; t < T; t++) {
            unk += pre.ids[i * (size_t)T + (size_t)t] == TOK_UNK;
            real += pre.mask[i * (size_t)T + (size_t)t];
        }
    }
    pre.n = npre;
    /* the contrastive phase's pairs: synopsis, and the long text after it */
    dataset syn, body;
    dataset_alloc(&syn, npairs, T);
    dataset_alloc(&body, npairs, T);
    for (size_t i = 0; i < npairs; i++) {
        char *first = xstrndup(pairs[i]->text, pairs[i]->synopsis);
        encode(&voc, first, T, syn.ids + i * (size_t)T, syn.mask + i * (size_t)T);
        encode(&voc, pairs[i]->text + pairs[i]->synopsis + 1, T, body.ids + i * (size_t)T,
               body.mask + i * (size_t)T);
        free(first);
    }
    syn.n = body.n = npairs;
    int have_pool[SECTIONS] = {0}, have_test[SECTIONS] = {0};
    for (size_t i = 0; i < c.n; i++) {
        package *p = by_hash[i];
        unsigned split = (unsigned)((p->hash >> 7) % 10);
        if (p->label < 0 || split < 6)
            continue;
        dataset *d = split < 8 ? &pool : &test;
        int *have = split < 8 ? have_pool : have_test;
        int cap = split < 8 ? K_max : opt.test_per_class;
        if (have[p->label] >= cap)
            continue;
        have[p->label]++;
        encode(&voc, p->text, T, d->ids + d->n * (size_t)T, d->mask + d->n * (size_t)T);
        d->labels[d->n++] = p->label;
    }
    for (int s = 0; s < SECTIONS; s++)
        if (have_pool[s] < K_max) {
            fprintf(stderr, "text-transfer: section %s has %d labelled descriptions, fewer "
                            "than the %d the draws of K need\n", sc[s].key, have_pool[s], K_max);
            return 1;
        }
    printf("vocabulary: %d word pieces from %zu pretraining descriptions (%.1f s); %.1f pieces "
           "per description on average, %.0f%% longer than %d, %.2f%% unknown\n",
           voc.size, npre, progress_now() - t0, (double)tokens / (double)npre,
           100.0 * (double)truncated / (double)npre, T, 100.0 * (double)unk / (double)real);
    printf("held-out test set: %zu descriptions (%d per section at most)\n", test.n,
           opt.test_per_class);

    /* ---- 1. masked-token pretraining ---- */
    tlearn_model *mlm = build_model(&opt, 1, 0, 1);
    size_t params;
    CHECK(tlearn_model_param_count(mlm, &params, NULL));
    printf("pretraining: %d layers, dim %d, %d heads, ff %d, sequence %d, %zu parameters; "
           "%d steps of 32 on %zu descriptions, %d thread(s)\n", opt.layers, opt.dim,
           opt.heads, opt.ff, T, params, opt.pretrain_steps, npre, opt.threads);
    /* held-out descriptions for the masked-token accuracy */
    size_t nprobe = test.n < 256 ? test.n : 256;
    float before = masked_accuracy(&opt, mlm, &test, nprobe);
    t0 = progress_now();
    if (opt.pretrained) {
        tlearn_model *loaded;
        CHECK(tlearn_model_load(&loaded, NULL, opt.pretrained));
        copy_encoder(mlm, loaded); /* every tensor by name, sizes checked */
        tlearn_model_destroy(&loaded);
        printf("loaded the pretrained model %s\n", opt.pretrained);
    } else {
        pretrain(&opt, mlm, &pre);
    }
    double t_pre = progress_now() - t0;
    float after = masked_accuracy(&opt, mlm, &test, nprobe);
    printf("pretrained in %.1f s: masked-token accuracy on %zu held-out descriptions %.4f "
           "(%.4f before)\n", t_pre, nprobe, (double)after, (double)before);
    printf("result protocol=text-pretrain steps=%d masked_accuracy=%.4f seconds=%.1f\n",
           opt.pretrained ? 0 : opt.pretrain_steps, (double)after, t_pre);
    if (opt.save) {
        if (tlearn_model_save(mlm, NULL, opt.save, TLEARN_SAVE_INFERENCE) == TLEARN_OK)
            printf("saved the pretrained model to %s\n", opt.save);
        else
            printf("saving failed (%s)\n", tlearn_errmsg());
    }

    /* ---- 2. contrastive phase on the pretrained encoder ---- */
    tlearn_model *emb = build_model(&opt, EMBEDDER, 0, 3);
    copy_encoder(emb, mlm);
    if (opt.contrastive_steps > 0 && npairs >= 2) {
        printf("contrastive phase: %d steps of 32 (synopsis, long text) pairs of %zu "
               "pretraining packages, symmetric in-batch loss, temperature 0.05\n",
               opt.contrastive_steps, npairs);
        t0 = progress_now();
        contrastive(&opt, emb, &syn, &body);
        printf("contrastive phase in %.1f s\n", progress_now() - t0);
    }

    /* Frozen features of the test set: each encoder runs once. */
    tlearn_model *enc_mlm = build_model(&opt, CLASSIFIER, SECTIONS, 5);
    copy_encoder(enc_mlm, mlm);
    tlearn_model *enc = build_model(&opt, CLASSIFIER, SECTIONS, 5);
    copy_encoder(enc, emb);
    t0 = progress_now();
    float *test_feat = pooled(enc, &test, opt.dim);
    float *test_feat_mlm = pooled(enc_mlm, &test, opt.dim);
    printf("frozen features of the test set in %.1f s\n", progress_now() - t0);

    /* ---- 3. few-shot section prediction, averaged over draws of the K examples ---- */
    enum { SCRATCH, FROZEN_MLM, FROZEN, FULL, LORA, NMETHODS };
    static const char *method_names[NMETHODS] = {"scratch", "frozen-mlm", "frozen", "full",
                                                 "lora"};
    float acc[MAX_K][NMETHODS];
    double secs[MAX_K][NMETHODS];
    float *hw = xmalloc((size_t)SECTIONS * (size_t)opt.dim * sizeof *hw), hb[SECTIONS];
    for (int ki = 0; ki < opt.nk; ki++) {
        int k = opt.k[ki], draws = draws_for(&opt, k);
        /* Same number of updates for small and large K, as far as it goes: at least
         * min_steps steps of 16, at least 4 epochs. */
        int epochs = (int)(((size_t)opt.min_steps * 16 + (size_t)k * SECTIONS - 1) /
                           ((size_t)k * SECTIONS));
        if (epochs < 4)
            epochs = 4;
        if (opt.quick)
            epochs = epochs / 4 > 2 ? epochs / 4 : 2;
        printf("\nK = %d descriptions per section (%d), %d epochs at batch 16, %d draw(s) of "
               "the K examples\n", k, k * SECTIONS, epochs, draws);
        float per[NMETHODS][16];
        for (int me = 0; me < NMETHODS; me++)
            secs[ki][me] = 0;
        for (int dr = 0; dr < draws; dr++) {
            dataset train;
            dataset_alloc(&train, (size_t)k * SECTIONS, T);
            int have[SECTIONS] = {0};
            for (size_t i = 0; i < pool.n; i++) { /* draw dr: the dr-th k of each section */
                int l = pool.labels[i], at = have[l]++;
                if (at < dr * k || at >= (dr + 1) * k)
                    continue;
                memcpy(train.ids + train.n * (size_t)T, pool.ids + i * (size_t)T, sizeof(int32_t) * (size_t)T);
                memcpy(train.mask + train.n * (size_t)T, pool.mask + i * (size_t)T, sizeof(int32_t) * (size_t)T);
                train.labels[train.n++] = l;
            }
            char label[64];
            uint64_t seed = 1000 * (uint64_t)dr + (uint64_t)k;

            /* scratch: the same architecture, randomly initialised */
            tlearn_model *m = build_model(&opt, CLASSIFIER, SECTIONS, 100 + seed);
            snprintf(label, sizeof label, "  k=%d draw %d scratch", k, dr);
            t0 = progress_now();
            finetune(m, &train, 5e-4, epochs, T, label);
            per[SCRATCH][dr] = accuracy(m, &test);
            secs[ki][SCRATCH] += progress_now() - t0;
            tlearn_model_destroy(&m);

            /* frozen: features of the masked-token encoder, then of the contrastive one, a
             * linear head; the latter's head starts full and lora (LP-FT) */
            t0 = progress_now();
            float *feat = pooled(enc_mlm, &train, opt.dim);
            per[FROZEN_MLM][dr] = linear_probe(feat, train.labels, train.n, test_feat_mlm,
                                               test.labels, test.n, opt.dim,
                                               opt.quick ? 50 : 200, hw, hb);
            free(feat);
            secs[ki][FROZEN_MLM] += progress_now() - t0;
            t0 = progress_now();
            feat = pooled(enc, &train, opt.dim);
            per[FROZEN][dr] = linear_probe(feat, train.labels, train.n, test_feat, test.labels,
                                           test.n, opt.dim, opt.quick ? 50 : 200, hw, hb);
            free(feat);
            secs[ki][FROZEN] += progress_now() - t0;

            /* full: the pretrained encoder and the probe's head, everything trains at a
             * low rate (LP-FT: a trained head does not send random gradients into the
             * encoder at the start) */
            m = build_model(&opt, CLASSIFIER, SECTIONS, 200 + seed);
            copy_encoder(m, emb);
            CHECK(tlearn_model_set_tensor(m, "head.weight", hw, (size_t)SECTIONS * (size_t)opt.dim));
            CHECK(tlearn_model_set_tensor(m, "head.bias", hb, SECTIONS));
            snprintf(label, sizeof label, "  k=%d draw %d full", k, dr);
            t0 = progress_now();
            finetune(m, &train, 1e-4, epochs, T, label);
            per[FULL][dr] = accuracy(m, &test);
            secs[ki][FULL] += progress_now() - t0;
            tlearn_model_destroy(&m);

            /* lora: the encoder frozen, rank-8 adapters on the feed-forward linears of every
             * block (the attention's projections are one fused layer, not a linear target),
             * trained with the probe's head */
            m = build_model(&opt, CLASSIFIER, SECTIONS, 300 + seed);
            copy_encoder(m, emb);
            CHECK(tlearn_model_set_tensor(m, "head.weight", hw, (size_t)SECTIONS * (size_t)opt.dim));
            CHECK(tlearn_model_set_tensor(m, "head.bias", hb, SECTIONS));
            CHECK(tlearn_lora_add(m, "task", "layers.*.linear*", 8, 16.0f, 0.1f, 0));
            tlearn_freeze *f;
            CHECK(tlearn_freeze_create(&f));
            CHECK(tlearn_freeze_match(f, "*", 1));
            CHECK(tlearn_freeze_match(f, "*.lora_*", 0));
            CHECK(tlearn_freeze_match(f, "head", 0));
            CHECK(tlearn_model_apply_freeze(m, f));
            tlearn_freeze_destroy(&f);
            snprintf(label, sizeof label, "  k=%d draw %d lora", k, dr);
            t0 = progress_now();
            finetune(m, &train, 5e-4, epochs, T, label);
            per[LORA][dr] = accuracy(m, &test);
            secs[ki][LORA] += progress_now() - t0;
            tlearn_model_destroy(&m);
            dataset_free(&train);
        }
        for (int me = 0; me < NMETHODS; me++) {
            double sum = 0;
            printf("  %-10s accuracy", method_names[me]);
            for (int dr = 0; dr < draws; dr++) {
                sum += per[me][dr];
                printf(" %.4f", (double)per[me][dr]);
            }
            acc[ki][me] = (float)(sum / draws);
            printf("%s%.4f (%.1f s)\n", draws > 1 ? ", mean " : "  ", (double)acc[ki][me],
                   secs[ki][me]);
            printf("result protocol=text k=%d method=%s accuracy=%.4f\n", k, method_names[me],
                   (double)acc[ki][me]);
        }
    }
    free(hw);

    printf("\nSection of held-out Debian packages (10 classes, chance 0.1), %zu test "
           "descriptions:\n", test.n);
    printf("%6s", "K");
    for (int me = 0; me < NMETHODS; me++)
        printf("  %10s", method_names[me]);
    printf("\n");
    for (int ki = 0; ki < opt.nk; ki++) {
        printf("%6d", opt.k[ki]);
        for (int me = 0; me < NMETHODS; me++)
            if (acc[ki][me] >= 0)
                printf("  %10.4f", (double)acc[ki][me]);
            else
                printf("  %10s", "-");
        printf("\n");
    }
    printf("done in %.1f s\n", progress_now() - t_start);

    free(test_feat), free(test_feat_mlm);
    tlearn_model_destroy(&enc);
    tlearn_model_destroy(&enc_mlm);
    tlearn_model_destroy(&emb);
    tlearn_model_destroy(&mlm);
    dataset_free(&pre), dataset_free(&pool), dataset_free(&test);
    dataset_free(&syn), dataset_free(&body);
    free(pairs);
    smap_free(&voc.ids);
    smap_free(&sec);
    free(sc), free(by_hash), free(pre_texts);
    for (size_t i = 0; i < c.n; i++)
        free(c.p[i].name), free(c.p[i].section), free(c.p[i].text);
    free(c.p);
    return 0;
}
