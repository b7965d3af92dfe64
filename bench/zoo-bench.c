/* libtlearn on torchvision networks imported from ONNX (bench/README.md, "Zoo workloads").
 *
 *   zoo-bench WORKLOAD --onnx FILE [--threads T] [--rounds R] [--round-seconds S]
 *             [--ceiling GFLOPS] [--train-from PREFIX]
 *
 * WORKLOAD is ARCH_MODE_bBATCH_SIZE, e.g. resnet18_extract_b32_224; MODE is
 *   extract    features at the classifier's input (the pooled features), images/s
 *   head       new 10-class head trained, everything before it frozen, steps/s
 *   lastblock  layers from the first one named PREFIX... (--train-from) and a new head
 *              trained, the rest frozen, steps/s
 *   full       new head, everything trained, steps/s
 * Training uses SGD (lr 0.01, full 0.001, momentum 0.9) with cross-entropy on random labels.
 * The export folds every batchnorm into its convolution, so the network has none (PyTorch
 * trains the same folded network); without batchnorm a whole ResNet-50 diverges at 0.01.
 * Inputs are uniform in [0, 1), four batches in turn. Prints one line as tlearn-bench does:
 *   tlearn workload=... threads=... value=... unit=... gflops=... ceiling_frac=...
 *          peak_rss_kib=... cpu_value=... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define NBATCHES 4

typedef struct zoo {
    tlearn_model *m;
    tlearn_optim *o;
    int extract;
    const char *feat_layer; /* extract: the classifier's producer */
    float *x, *feat;
    int32_t *y;
    size_t batch, in_size, feat_size, next;
} zoo;

/* The last dense layer (the classifier) of an imported classification network. */
static int classifier(const tlearn_model *m, int *index)
{
    int count = 0, kind = 0;
    TRY(tlearn_model_layer_count(m, &count));
    for (int i = count - 1; i >= 0; i--) {
        TRY(tlearn_model_layer_kind(m, i, &kind));
        if (kind == TLEARN_LAYER_DENSE) {
            *index = i;
            return TLEARN_OK;
        }
    }
    return TLEARN_ENOTFOUND;
}

static int freeze_before(tlearn_model *m, int first_trained)
{
    tlearn_freeze *f = NULL;
    TRY(tlearn_freeze_create(&f));
    int rc = first_trained > 0 ? tlearn_freeze_range(f, 0, first_trained - 1, 1) : TLEARN_OK;
    if (!rc)
        rc = tlearn_freeze_bn_stats(f, 1);
    if (!rc)
        rc = tlearn_model_apply_freeze(m, f);
    tlearn_freeze_destroy(&f);
    return rc;
}

static int setup(zoo *z, const char *path, const char *mode, const char *prefix, size_t batch,
                 int threads)
{
    memset(z, 0, sizeof *z);
    z->batch = batch;
    TRY(tlearn_model_import_onnx(&z->m, path));
    TRY(tlearn_model_set_threads(z->m, threads));
    int head = 0, c = 0, h = 0, w = 0;
    TRY(classifier(z->m, &head));
    const char *from = NULL;
    TRY(tlearn_model_layer_name(z->m, head - 1, &from));
    TRY(tlearn_model_layer_shape(z->m, -1, &c, &h, &w));
    z->in_size = (size_t)c * h * w;
    z->x = malloc(NBATCHES * batch * z->in_size * sizeof *z->x);
    z->y = malloc(NBATCHES * batch * sizeof *z->y);
    if (!z->x || !z->y)
        return TLEARN_ENOMEM;
    bench_fill_data(z->x, z->y, NBATCHES * batch, z->in_size, 7);
    if (strcmp(mode, "extract") == 0) {
        z->extract = 1;
        z->feat_layer = from;
        TRY(tlearn_model_layer_shape(z->m, head - 1, &c, &h, &w));
        z->feat_size = (size_t)c * h * w;
        z->feat = malloc(batch * z->feat_size * sizeof *z->feat);
        return z->feat ? TLEARN_OK : TLEARN_ENOMEM;
    }
    char name[256];
    snprintf(name, sizeof name, "%s", from); /* replace_head renames nothing before it */
    TRY(tlearn_model_replace_head(z->m, name, 10));
    int first = 0, count = 0;
    TRY(tlearn_model_layer_count(z->m, &count));
    if (strcmp(mode, "head") == 0) {
        first = count - 1;
    } else if (strcmp(mode, "lastblock") == 0) {
        size_t n = strlen(prefix);
        for (first = 0; first < count; first++) {
            const char *ln = NULL;
            TRY(tlearn_model_layer_name(z->m, first, &ln));
            if (strncmp(ln, prefix, n) == 0)
                break;
        }
        if (first == count)
            return TLEARN_ENOTFOUND;
    } else if (strcmp(mode, "full") != 0) {
        return TLEARN_EINVAL;
    }
    TRY(freeze_before(z->m, first));
    TRY(tlearn_optim_create(&z->o, TLEARN_SGD));
    TRY(tlearn_optim_set(z->o, TLEARN_OPT_LR, strcmp(mode, "full") == 0 ? 0.001 : 0.01));
    TRY(tlearn_optim_set(z->o, TLEARN_OPT_MOMENTUM, 0.9));
    return TLEARN_OK;
}

static int run_once(void *ctx)
{
    zoo *z = ctx;
    size_t b = z->next;
    z->next = (z->next + 1) % NBATCHES;
    const float *x = z->x + b * z->batch * z->in_size;
    if (z->extract)
        return tlearn_model_features(z->m, z->feat_layer, x, z->batch, z->feat,
                                     z->batch * z->feat_size);
    float loss;
    return tlearn_model_train_step(z->m, z->o, x, z->y + b * z->batch, z->batch, &loss);
}

static void teardown(zoo *z)
{
    tlearn_optim_destroy(&z->o);
    tlearn_model_destroy(&z->m);
    free(z->x);
    free(z->y);
    free(z->feat);
}

static void usage(void)
{
    fprintf(stderr, "usage: zoo-bench ARCH_MODE_bBATCH_SIZE --onnx FILE [--threads T] "
                    "[--rounds R] [--round-seconds S] [--ceiling GFLOPS] "
                    "[--train-from PREFIX]\n  MODE: extract, head, lastblock, full\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *workload = argv[1], *onnx = NULL, *prefix = "";
    int threads = 1, rounds = 3;
    double round_s = 1.0, ceiling = 0.0;
    for (int i = 2; i < argc; i++) {
        int known = bench_common_option(argc, argv, &i, &threads, &rounds, &round_s, &ceiling);
        if (known == 0 && i + 1 < argc && strcmp(argv[i], "--onnx") == 0) {
            onnx = argv[++i];
        } else if (known == 0 && i + 1 < argc && strcmp(argv[i], "--train-from") == 0) {
            prefix = argv[++i];
        } else if (known != 1) {
            usage();
            return 2;
        }
    }
    /* ARCH_MODE_bBATCH_SIZE: the mode is the word before the last "_b<digits>_" (the
     * architecture may hold one too: efficientnet_b0). */
    char mode[32] = "";
    size_t batch = 0;
    const char *b = NULL;
    for (const char *q = strstr(workload, "_b"); q; q = strstr(q + 1, "_b")) {
        const char *d = q + 2;
        while (*d >= '0' && *d <= '9')
            d++;
        if (d > q + 2 && *d == '_')
            b = q;
    }
    if (!onnx || !b) {
        usage();
        return 2;
    }
    batch = (size_t)strtoul(b + 2, NULL, 10);
    const char *m0 = b;
    while (m0 > workload && m0[-1] != '_')
        m0--;
    snprintf(mode, sizeof mode, "%.*s", (int)(b - m0), m0);
    if (batch == 0 || (strcmp(mode, "lastblock") == 0 && !*prefix)) {
        usage();
        return 2;
    }
    bench_print_blas();
    zoo z;
    int rc = setup(&z, onnx, mode, prefix, batch, threads);
    bench_result r;
    if (!rc)
        rc = bench_measure(run_once, &z, rounds, round_s, &r);
    if (rc) {
        fprintf(stderr, "zoo-bench: %s failed: %s (%s)\n", workload, tlearn_strerror(rc),
                tlearn_errmsg());
        teardown(&z);
        return 1;
    }
    double per_run = z.extract ? (double)batch : 1.0; /* images/s or steps/s */
    double flops = z.extract ? bench_model_flops(z.m, batch, 0, -1)
                             : bench_model_flops(z.m, batch, 1, -1);
    if (z.extract) { /* up to the features layer only */
        int idx = 0;
        tlearn_model_layer_index(z.m, z.feat_layer, &idx);
        flops = bench_model_flops(z.m, batch, 0, idx);
    }
    bench_print_result(workload, threads, r.rate * per_run, z.extract ? "images/s" : "steps/s",
                       r.rate * flops * 1e-9, ceiling, rounds, r.spread, r.cpu_rate * per_run);
    teardown(&z);
    return 0;
}
