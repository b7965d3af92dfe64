/* doc/onnx.md's operator table is the importer's: every line of the dispatch table
 * (lib/io/onnx, ox_op_info) appears in the doc as "| Op | min-max | limits |" and the doc
 * lists no other operator. The conformance suite (conformance.py) reads the same doc table
 * to decide which ONNX tests the importer claims. Its export table is the exporter's
 * (ox_export_info: "| kind | operators |"), and the exporter maps every registered layer
 * kind. On a mismatch the test prints the rows the doc should hold. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/io/onnx/onnx_optable.h"
#include "../../lib/layers/layer.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = '\0';
    fclose(f);
    return s;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-onnx-optable doc/onnx.md\n");
        return 2;
    }
    char *doc = slurp(argv[1]);
    if (!doc) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 1;
    }
    int bad = 0, rows = 0;
    const char *op, *limits;
    int lo, hi;
    char want[1024];
    for (size_t i = 0; ox_op_info(i, &op, &lo, &hi, &limits); i++, rows++) {
        snprintf(want, sizeof want, "\n| %s | %d-%d | %s |", op, lo, hi, limits);
        if (!strstr(doc, want)) {
            fprintf(stderr, "doc lacks the row:%s\n", want);
            bad = 1;
        }
    }
    /* No other operator rows: count the doc's rows of the table (lines "| X | n-m |"). */
    int doc_rows = 0;
    for (const char *p = doc; (p = strstr(p, "\n| ")); p++) {
        int a, b;
        const char *bar = strchr(p + 3, '|');
        if (bar && sscanf(bar + 1, " %d-%d |", &a, &b) == 2)
            doc_rows++;
    }
    if (doc_rows != rows) {
        fprintf(stderr, "doc has %d operator rows, the importer's table %d\n", doc_rows, rows);
        bad = 1;
    }
    /* The export table: one row per layer kind, and every kind of the registry in it. */
    const char *kind, *ops;
    int kinds = 0, registered = 0;
    for (size_t i = 0; ox_export_info(i, &kind, &ops); i++, kinds++) {
        snprintf(want, sizeof want, "\n| %s | %s |", kind, ops);
        if (!strstr(doc, want)) {
            fprintf(stderr, "doc lacks the export row:%s\n", want);
            bad = 1;
        }
    }
    for (int k = 0; k < 1024; k++)
        registered += tl_layer_ops_by_kind(k) != NULL;
    if (registered != kinds) {
        fprintf(stderr, "the exporter maps %d kinds, the registry has %d\n", kinds, registered);
        bad = 1;
    }
    free(doc);
    if (!bad)
        printf("%d operator rows and %d export rows agree\n", rows, kinds);
    return bad;
}
