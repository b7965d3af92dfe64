/* Which layer of a pretrained CNN should the few-shot task build on? Ask before training:
 * rank the candidate layers by transferability scores (LogME, H-score) and by a prototype
 * head (no training at all), then train a dense head from each layer (backbone frozen,
 * cached features) and compare the rankings (Spearman rank correlation).
 *
 * Usage: rank-layers [--model PATH] [--k 20] [--epochs 60] [--test-limit N] [--threads 1]
 *   --model  a checkpoint of transfer-fmnist's pretrained CNN (`transfer-fmnist --save
 *            PATH`, 8 of the 10 classes); without it the recipes' stand-in pretraining
 *            (examples/common/pretrain.c: 5 classes, one short epoch) is used.
 * The few-shot task: all 10 classes from the first K training images of each.
 * Observed (transfer-fmnist's CNN, 10,000 test images, 60 epochs of Adam 1e-3 for each head):
 *   K = 20  layer  dim    LogME   H-score prototype finetune
 *           relu1  25088  0.1497  9.0000  0.6997    0.7698
 *           pool1   6272  0.1820  9.0000  0.6975    0.7835
 *           relu2  12544  0.2220  9.0000  0.7176    0.7931
 *           pool2   3136  0.2331  9.0000  0.7353    0.8018
 *           fc1      128  0.2218  8.0094  0.7956    0.8254
 *           relu3    128  0.3582  7.5977  0.8039    0.8293
 *   Spearman with finetune: LogME 0.829, H-score -0.464 (saturated at classes - 1 = 9
 *   wherever n - 1 <= dim), prototype accuracy 0.943. LEEP of the source head -0.548.
 *   Scoring a layer took 0.08-1.2 s.
 * Prints one line per layer: `result protocol=rank layer=pool2 dim=3136 logme=... hscore=...
 * prototype=... finetune=...` and the Spearman correlations.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tlearn/tlearn.h>

#include "common/check.h"
#include "common/fmnist.h"
#include "common/pretrain.h"
#include "progress.h"

static const char *const layers[] = {"relu1", "pool1", "relu2", "pool2", "fc1", "relu3"};
#define NL ((int)(sizeof layers / sizeof layers[0]))
#define BATCH 16

/* Ranks (1 = smallest, ties averaged) of v[0..n). */
static void ranks(const double *v, int n, double *r)
{
    for (int i = 0; i < n; i++) {
        int less = 0, equal = 0;
        for (int j = 0; j < n; j++) {
            less += v[j] < v[i];
            equal += v[j] == v[i];
        }
        r[i] = less + (equal + 1) / 2.0;
    }
}

/* Spearman's rho: Pearson correlation of the ranks. */
static double spearman(const double *a, const double *b, int n)
{
    double ra[16], rb[16], ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    ranks(a, n, ra);
    ranks(b, n, rb);
    for (int i = 0; i < n; i++) {
        ma += ra[i] / n;
        mb += rb[i] / n;
    }
    for (int i = 0; i < n; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : 0.0;
}

static tlearn_model *load(const char *path, const fmnist *train, int threads)
{
    tlearn_model *m;
    if (path)
        CHECK(tlearn_model_load(&m, NULL, path));
    else
        m = example_pretrain(train, 128);
    CHECK(tlearn_model_set_threads(m, threads));
    return m;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int k = 20, epochs = 60, threads = 1;
    size_t test_limit = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            path = argv[i + 1];
        else if (!strcmp(argv[i], "--k"))
            k = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--epochs"))
            epochs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--test-limit"))
            test_limit = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: rank-layers [--model PATH] [--k 20] [--epochs 60] "
                            "[--test-limit N] [--threads 1]\n");
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char err[256];
    fmnist train, test;
    if (fmnist_load(&train, NULL, "train", 0, err, sizeof err) ||
        fmnist_load(&test, NULL, "t10k", test_limit, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    /* the first k images of each class */
    size_t n = (size_t)k * 10, got = 0;
    float *x = malloc(sizeof(float) * n * FMNIST_PIXELS);
    int32_t *y = malloc(sizeof(int32_t) * n);
    int have[10] = {0};
    if (!x || !y)
        return 1;
    for (size_t i = 0; i < train.n && got < n; i++) {
        int c = train.labels[i];
        if (have[c] >= k)
            continue;
        have[c]++;
        memcpy(x + got * FMNIST_PIXELS, train.images + i * FMNIST_PIXELS,
               sizeof(float) * FMNIST_PIXELS);
        y[got++] = c;
    }
    tlearn_model *m = load(path, &train, threads);
    int out_layer;
    CHECK(tlearn_model_layer_count(m, &out_layer));
    const char *head;
    CHECK(tlearn_model_layer_name(m, out_layer - 1, &head));
    double leep;
    CHECK(tlearn_transferability(m, head, x, y, n, 10, TLEARN_TRANSFER_LEEP, &leep));
    printf("model %s, K = %d (%zu images), LEEP of the source head '%s': %.4f\n",
           path ? path : "(stand-in pretraining)", k, n, head, leep);
    tlearn_model_destroy(&m);

    double logme[NL], hs[NL], proto[NL], fine[NL], t_score[NL];
    for (int l = 0; l < NL; l++) {
        m = load(path, &train, threads);
        int idx, rank, dims[4];
        CHECK(tlearn_model_layer_index(m, layers[l], &idx));
        CHECK(tlearn_model_layer_shape_nd(m, idx, &rank, dims, 4));
        size_t dim = 1;
        for (int d = 0; d < rank; d++)
            dim *= (size_t)dims[d];
        double t0 = progress_now();
        CHECK(tlearn_transferability(m, layers[l], x, y, n, 10, TLEARN_TRANSFER_LOGME, &logme[l]));
        CHECK(tlearn_transferability(m, layers[l], x, y, n, 10, TLEARN_TRANSFER_HSCORE, &hs[l]));
        t_score[l] = progress_now() - t0;
        /* no training: a prototype head on this layer */
        CHECK(tlearn_prototype_head(m, layers[l], "proto", x, y, n, 10, 10.0f, 0));
        float acc;
        CHECK(tlearn_model_evaluate(m, test.images, test.labels, test.n, NULL, &acc));
        proto[l] = acc;
        tlearn_model_destroy(&m);

        /* what fine-tuning gives: a dense head on this layer, backbone frozen */
        m = load(path, &train, threads);
        CHECK(tlearn_model_set_seed(m, 7));
        CHECK(tlearn_model_replace_head(m, layers[l], 10));
        tlearn_freeze *f;
        CHECK(tlearn_freeze_create(&f));
        CHECK(tlearn_freeze_until(f, layers[l]));
        CHECK(tlearn_model_apply_freeze(m, f));
        tlearn_freeze_destroy(&f);
        float *feat = malloc(sizeof(float) * n * dim);
        if (!feat)
            return 1;
        CHECK(tlearn_model_features(m, layers[l], x, n, feat, n * dim));
        tlearn_optim *o;
        CHECK(tlearn_optim_create(&o, TLEARN_ADAM));
        CHECK(tlearn_optim_set(o, TLEARN_OPT_LR, 1e-3));
        uint64_t state = 99;
        size_t *order = malloc(sizeof(size_t) * n);
        float *bx = malloc(sizeof(float) * BATCH * dim);
        int32_t by[BATCH];
        for (size_t i = 0; i < n; i++)
            order[i] = i;
        for (int e = 0; e < epochs; e++) {
            for (size_t i = n - 1; i > 0; i--) {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                size_t j = (size_t)((state >> 33) % (i + 1)), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
            for (size_t s = 0; s < n; s += BATCH) {
                size_t b = n - s < BATCH ? n - s : BATCH;
                for (size_t i = 0; i < b; i++) {
                    memcpy(bx + i * dim, feat + order[s + i] * dim, sizeof(float) * dim);
                    by[i] = y[order[s + i]];
                }
                CHECK(tlearn_model_train_step_from(m, o, layers[l], bx, by, b, NULL));
            }
        }
        CHECK(tlearn_model_evaluate(m, test.images, test.labels, test.n, NULL, &acc));
        fine[l] = acc;
        printf("result protocol=rank layer=%s dim=%zu logme=%.4f hscore=%.4f prototype=%.4f "
               "finetune=%.4f score_seconds=%.2f\n", layers[l], dim, logme[l], hs[l], proto[l],
               fine[l], t_score[l]);
        free(order);
        free(bx);
        free(feat);
        tlearn_optim_destroy(&o);
        tlearn_model_destroy(&m);
    }
    printf("spearman(logme, finetune)=%.3f spearman(hscore, finetune)=%.3f "
           "spearman(prototype, finetune)=%.3f over %d layers\n", spearman(logme, fine, NL),
           spearman(hs, fine, NL), spearman(proto, fine, NL), NL);
    free(x);
    free(y);
    fmnist_free(&train);
    fmnist_free(&test);
    return 0;
}
