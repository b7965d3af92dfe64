/* Domain adaptation on a real shift, with the public API only (issue 19).
 *
 * Source: Fashion-MNIST, labelled (the first half of the training set, grey -> 3 channels).
 * Target: "Fashion-MNIST-M", built as MNIST-M is built from MNIST (Ganin et al. 2016): each
 *   image is blended with a random 28x28 crop of a real photograph, |photo - image| per
 *   channel. The photographs are the public-domain / CC0 sample photographs Debian's
 *   python3-skimage installs (astronaut: NASA, public domain; chelsea, coffee, camera: CC0),
 *   read with a small PNG reader (examples/common/png.c, zlib). Target training images come
 *   from the second half of the Fashion-MNIST training set and are used WITHOUT labels; the
 *   labelled target test set is the blended t10k set. Everything is seeded (--seed).
 *
 * One network for every method: conv32-bn-relu-pool-conv64-bn-relu-pool-fc128-bn-relu
 * ("feat") -> fc10 ("cls"); DANN adds feat -> grad_reverse -> fc100-relu-fc2 ("dom").
 * SGD with momentum 0.9 and DANN's annealing lr_p = 0.01 / (1 + 10 p)^0.75 for every method.
 *   source-only  labelled source batches only
 *   adabn        source-only, then every BatchNorm's statistics re-estimated on target
 *                training images (tlearn_model_adapt_bn)
 *   tent         source-only, then TENT over the unlabelled target training stream, as
 *                many images as one pass (tlearn_model_tent_step, Adam 1e-3, batches of
 *                2 x batch, BatchNorm affine only; BatchNorm's running statistics follow
 *                the target batches)
 *   coral, mmd   source + target batches, Deep CORAL / multi-kernel MMD at "feat"
 *   dann         source + target batches, a domain head behind gradient reversal with the
 *                paper's lambda_p = 2 / (1 + exp(-10 p)) - 1
 * Prints `result protocol=domain method=M source_acc=A target_acc=B seconds=S` per method
 * and a table. --quick is a reduced run for tests; --export DIR writes the target images
 * (uint8, N x 3 x 28 x 28) for bench/dann-torch.py and stops.
 *
 * Observed (default run: 1000 steps, batch 64, seed 1, 10,000 test images per domain):
 *     method       source  target
 *     source-only  0.8973  0.3377
 *     adabn        0.8625  0.3026
 *     tent         0.8649  0.3036
 *     coral        0.8995  0.5349
 *     mmd          0.8967  0.5839
 *     dann         0.8940  0.5366   (PyTorch, bench/dann-torch.py: 0.8821  0.5388)
 * AdaBN and TENT do not help on this shift (doc/guide.md, "When the data shifts", says why).
 * 416 s of CPU at one thread in all (AMD EPYC, Zen 5).
 *
 * Usage: domain-adapt [--quick] [--steps N] [--batch N] [--seed N] [--threads N]
 *                     [--test-limit N] [--methods a,b,...] [--export DIR] [--photos DIR]
 *   --quick  300 steps of 32, TENT 100 steps, AdaBN on 2,000 images, 2,000 test images.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tlearn/tlearn.h>

#include "common/check.h"
#include "common/fmnist.h"
#include "common/png.h"
#include "progress.h"

#define PHOTO_DIR "/usr/lib/python3/dist-packages/skimage/data"
#define PIX 784
#define IMG (3 * PIX)
#define NPHOTOS 4
#define CORAL_WEIGHT 10.0f
#define MMD_WEIGHT 1.0f

static const char *const photo_names[NPHOTOS] = {"astronaut.png", "chelsea.png", "coffee.png",
                                                 "camera.png"};

enum { SOURCE_ONLY, ADABN, TENT, CORAL, MMD, DANN, NMETHODS };
static const char *const method_names[NMETHODS] = {"source-only", "adabn", "tent", "coral",
                                                   "mmd", "dann"};

typedef struct options {
    int quick, steps, batch, threads, tent_steps, run[NMETHODS];
    size_t test_limit, adabn_images;
    uint64_t seed;
    const char *export_dir, *photo_dir;
} options;

static void usage(void)
{
    fprintf(stderr, "usage: domain-adapt [--quick] [--steps N] [--batch N] [--seed N] "
                    "[--threads N] [--test-limit N] [--methods a,b,...] [--export DIR] "
                    "[--photos DIR]\n");
    exit(2);
}

static options parse(int argc, char **argv)
{
    options o = {0, 1000, 64, 2, 0, {1, 1, 1, 1, 1, 1}, 0, 10000, 1, NULL, PHOTO_DIR};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) {
            o.quick = 1;
            o.steps = 300;
            o.batch = 32;
            o.test_limit = 2000;
            o.adabn_images = 2000;
            o.tent_steps = 100;
        } else if (!v) {
            usage();
        } else if (!strcmp(a, "--steps")) {
            o.steps = atoi(argv[++i]);
        } else if (!strcmp(a, "--batch")) {
            o.batch = atoi(argv[++i]);
        } else if (!strcmp(a, "--seed")) {
            o.seed = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(a, "--threads")) {
            o.threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--test-limit")) {
            o.test_limit = (size_t)atol(argv[++i]);
        } else if (!strcmp(a, "--export")) {
            o.export_dir = argv[++i];
        } else if (!strcmp(a, "--photos")) {
            o.photo_dir = argv[++i];
        } else if (!strcmp(a, "--methods")) {
            memset(o.run, 0, sizeof o.run);
            char *s = argv[++i];
            while (*s) {
                size_t n = strcspn(s, ",");
                int found = 0;
                for (int k = 0; k < NMETHODS; k++)
                    if (strlen(method_names[k]) == n && !strncmp(s, method_names[k], n))
                        o.run[k] = found = 1;
                if (!found)
                    usage();
                s += n + (s[n] == ',');
            }
        } else {
            usage();
        }
    }
    if (o.steps < 1 || o.batch < 2 || o.threads < 1)
        usage();
    return o;
}

/* splitmix64: the demo's own seeded stream (data, crops, batches). */
static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t below(uint64_t *s, size_t n)
{
    return (size_t)(next(s) % n);
}

/* ---- data ---- */

typedef struct domain_set {
    size_t n;
    unsigned char *x; /* n x 3 x 28 x 28, CHW */
    int32_t *y;       /* n labels */
} domain_set;

/* Grey Fashion-MNIST images [from, from + n) as 3 channels; with photos, each blended
 * |photo crop - image| per channel (MNIST-M's recipe). */
static domain_set make_set(const fmnist *src, size_t from, size_t n, const png_image *photos,
                           uint64_t *rng)
{
    domain_set d = {n, malloc(n * IMG), malloc(n * sizeof(int32_t))};
    if (!d.x || !d.y)
        exit(1);
    for (size_t i = 0; i < n; i++) {
        const float *g = src->images + (from + i) * PIX;
        unsigned char *o = d.x + i * IMG;
        d.y[i] = src->labels[from + i];
        const png_image *p = photos ? &photos[below(rng, NPHOTOS)] : NULL;
        size_t x0 = p ? below(rng, (size_t)p->width - 27) : 0;
        size_t y0 = p ? below(rng, (size_t)p->height - 27) : 0;
        for (int c = 0; c < 3; c++)
            for (int k = 0; k < PIX; k++) {
                int v = (int)lrintf(g[k] * 255.0f);
                if (p) {
                    size_t row = y0 + (size_t)(k / 28), col = x0 + (size_t)(k % 28);
                    int q = p->pixels[(row * (size_t)p->width + col) * (size_t)p->channels +
                                      (p->channels == 3 ? (size_t)c : 0)];
                    v = abs(q - v);
                }
                o[c * PIX + k] = (unsigned char)v;
            }
    }
    return d;
}

static void set_free(domain_set *d)
{
    free(d->x);
    free(d->y);
}

static void to_float(const unsigned char *x, size_t n, float *out)
{
    for (size_t i = 0; i < n * IMG; i++)
        out[i] = (float)x[i] * (1.0f / 255.0f);
}

/* Accuracy of output 0 on a set, 500 images at a time (floats only for a chunk). */
static float accuracy(tlearn_model *m, const domain_set *d, float *buf)
{
    double correct = 0.0;
    for (size_t s = 0; s < d->n; s += 500) {
        size_t k = d->n - s < 500 ? d->n - s : 500;
        float acc;
        to_float(d->x + s * IMG, k, buf);
        CHECK(tlearn_model_evaluate(m, buf, d->y + s, k, NULL, &acc));
        correct += (double)acc * (double)k;
    }
    return (float)(correct / (double)d->n);
}

static int write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(p, 1, n, f) == n;
    if (f && fclose(f))
        ok = 0;
    if (!ok)
        fprintf(stderr, "cannot write %s\n", path);
    return ok ? 0 : -1;
}

/* ---- the network ---- */

static tlearn_model *build(int dann, const options *o)
{
    tlearn_model *m;
    CHECK(tlearn_model_create(&m, 3, 28, 28));
    CHECK(tlearn_model_set_seed(m, o->seed));
    CHECK(tlearn_model_set_threads(m, o->threads));
    CHECK(tlearn_model_add_conv2d(m, "conv1", 32, 3, 1, 1, 1));
    CHECK(tlearn_model_add_batchnorm(m, "bn1", 1e-5f, 0.1f));
    CHECK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_maxpool2d(m, "pool1", 2, 0, 0));
    CHECK(tlearn_model_add_conv2d(m, "conv2", 64, 3, 1, 1, 1));
    CHECK(tlearn_model_add_batchnorm(m, "bn2", 1e-5f, 0.1f));
    CHECK(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_maxpool2d(m, "pool2", 2, 0, 0));
    CHECK(tlearn_model_add_dense(m, "fc1", 128));
    CHECK(tlearn_model_add_batchnorm(m, "bn3", 1e-5f, 0.1f));
    CHECK(tlearn_model_add_activation(m, "feat", TLEARN_ACT_RELU, 0));
    CHECK(tlearn_model_add_dense(m, "cls", 10));
    if (dann) {
        CHECK(tlearn_model_set_next_input(m, "feat"));
        CHECK(tlearn_model_add_grad_reverse(m, "grl", 0.0f));
        CHECK(tlearn_model_add_dense(m, "dfc1", 100));
        CHECK(tlearn_model_add_activation(m, "drelu", TLEARN_ACT_RELU, 0));
        CHECK(tlearn_model_add_dense(m, "dom", 2));
        CHECK(tlearn_model_set_outputs(m, (const char *[]){"cls", "dom"}, 2));
        CHECK(tlearn_model_set_output_loss(m, 1, TLEARN_LOSS_SOFTMAX_CE, 1.0f));
    }
    CHECK(tlearn_model_set_training(m, 1));
    CHECK(tlearn_model_set_output_loss(m, 0, TLEARN_LOSS_SOFTMAX_CE, 1.0f));
    return m;
}

/* Training with source batches (and target batches for coral, mmd and dann): o->steps
 * steps of SGD with DANN's learning-rate annealing. */
static void train_method(tlearn_model *m, int method, const options *o, const domain_set *src,
                  const domain_set *tgt, uint64_t *rng)
{
    int mixed = method != SOURCE_ONLY;
    size_t B = (size_t)o->batch, rows = mixed ? 2 * B : B;
    unsigned char *bx8 = malloc(rows * IMG);
    float *bx = malloc(rows * IMG * sizeof(float));
    int32_t *by = malloc(rows * sizeof(int32_t)), *bd = malloc(rows * sizeof(int32_t));
    if (!bx8 || !bx || !by || !bd)
        exit(1);
    if (method == CORAL)
        CHECK(tlearn_model_set_discrepancy(m, "feat", TLEARN_DISCREPANCY_CORAL, CORAL_WEIGHT));
    if (method == MMD)
        CHECK(tlearn_model_set_discrepancy(m, "feat", TLEARN_DISCREPANCY_MMD, MMD_WEIGHT));
    tlearn_optim *opt;
    CHECK(tlearn_optim_create(&opt, TLEARN_SGD));
    CHECK(tlearn_optim_set(opt, TLEARN_OPT_MOMENTUM, 0.9));
    double t0 = progress_now(), sum = 0.0;
    int every = o->steps / 10 > 0 ? o->steps / 10 : 1;
    for (int s = 0; s < o->steps; s++) {
        double p = (double)s / (double)o->steps;
        CHECK(tlearn_optim_set(opt, TLEARN_OPT_LR, 0.01 / pow(1.0 + 10.0 * p, 0.75)));
        for (size_t i = 0; i < rows; i++) {
            int target = i >= B;
            const domain_set *d = target ? tgt : src;
            size_t k = below(rng, d->n);
            memcpy(bx8 + i * IMG, d->x + k * IMG, IMG);
            by[i] = target ? -1 : d->y[k]; /* target labels are never read */
            bd[i] = target;
        }
        to_float(bx8, rows, bx);
        float lambda = tlearn_dann_lambda((float)p), loss;
        if (method == DANN)
            CHECK(tlearn_model_set_grad_reverse_lambda(m, "grl", lambda));
        const void *in[] = {bx}, *targets[] = {by, bd};
        CHECK(tlearn_model_train_step_multi(m, opt, in, 1, rows, targets,
                                            method == DANN ? 2 : 1, NULL, &loss));
        sum += loss;
        if ((s + 1) % every == 0 || s + 1 == o->steps) {
            double el = progress_now() - t0;
            char extra[32] = "";
            if (method == DANN)
                snprintf(extra, sizeof extra, " lambda %.3f", (double)lambda);
            printf("  %s step %d/%d loss %.4f%s (%.0f s, ETA %.0f s)\n", method_names[method],
                   s + 1, o->steps, sum / every, extra, el, el / (s + 1) * (o->steps - s - 1));
            sum = 0.0;
        }
    }
    tlearn_optim_destroy(&opt);
    free(bx8);
    free(bx);
    free(by);
    free(bd);
}

/* TENT over the target training stream: Adam 1e-3, batches of 2 x batch. */
static void tent(tlearn_model *m, const options *o, const domain_set *tgt, uint64_t *rng)
{
    size_t B = 2 * (size_t)o->batch;
    float *bx = malloc(B * IMG * sizeof(float));
    unsigned char *bx8 = malloc(B * IMG);
    if (!bx || !bx8)
        exit(1);
    tlearn_optim *opt;
    CHECK(tlearn_optim_create(&opt, TLEARN_ADAM));
    CHECK(tlearn_optim_set(opt, TLEARN_OPT_LR, 1e-3));
    int steps = o->tent_steps ? o->tent_steps : (int)(tgt->n / B);
    int every = steps / 5 > 0 ? steps / 5 : 1;
    double first = 0.0;
    for (int s = 0; s < steps; s++) {
        for (size_t i = 0; i < B; i++)
            memcpy(bx8 + i * IMG, tgt->x + below(rng, tgt->n) * IMG, IMG);
        to_float(bx8, B, bx);
        float h;
        CHECK(tlearn_model_tent_step(m, opt, (const void *[]){bx}, 1, B, &h));
        if (s == 0)
            first = h;
        if ((s + 1) % every == 0 || s + 1 == steps)
            printf("  tent step %d/%d entropy %.4f (first batch %.4f)\n", s + 1, steps,
                   (double)h, first);
    }
    tlearn_optim_destroy(&opt);
    free(bx);
    free(bx8);
}

/* Trains and evaluates each chosen method in turn; prints a result line per method and a
 * table. AdaBN and TENT start from the source-only model, saved to a temporary file. */
static int compare_methods(const options *o, const domain_set *src, const domain_set *tgt,
                           const domain_set *src_test, const domain_set *tgt_test,
                           double start)
{
    print_blas_info();
    printf("%d steps of %d source%s images, %d thread(s), seed %llu\n", o->steps, o->batch,
           " (+ as many target, for coral/mmd/dann)", o->threads,
           (unsigned long long)o->seed);
    float *buf = malloc(sizeof(float) * 500 * IMG);
    if (!buf)
        return 1;
    float acc[NMETHODS][2];
    double secs[NMETHODS];
    int done[NMETHODS] = {0};
    char path[64];
    snprintf(path, sizeof path, "/tmp/tlearn-domain-%ld.tlm", (long)getpid());
    int have_source = 0;
    for (int method = 0; method < NMETHODS; method++) {
        int from_source = method == ADABN || method == TENT;
        if (!o->run[method] && !(method == SOURCE_ONLY && (o->run[ADABN] || o->run[TENT])))
            continue;
        printf("\n%s\n", method_names[method]);
        double t0 = progress_now();
        uint64_t brng = o->seed * 1000003ull + (uint64_t)method;
        tlearn_model *m;
        if (from_source) {
            if (!have_source)
                continue;
            CHECK(tlearn_model_load(&m, NULL, path));
            CHECK(tlearn_model_set_threads(m, o->threads));
            if (method == ADABN) {
                size_t n = o->adabn_images < tgt->n ? o->adabn_images : tgt->n;
                float *x = malloc(sizeof(float) * n * IMG);
                if (!x)
                    return 1;
                to_float(tgt->x, n, x);
                CHECK(tlearn_model_adapt_bn(m, (const void *[]){x}, 1, n, 250));
                printf("  BatchNorm statistics re-estimated on %zu target images\n", n);
                free(x);
            } else {
                tent(m, o, tgt, &brng);
            }
        } else {
            m = build(method == DANN, o);
            train_method(m, method, o, src, tgt, &brng);
        }
        acc[method][0] = accuracy(m, src_test, buf);
        acc[method][1] = accuracy(m, tgt_test, buf);
        secs[method] = progress_now() - t0;
        if (method == SOURCE_ONLY) {
            CHECK(tlearn_model_save(m, NULL, path, TLEARN_SAVE_INFERENCE));
            have_source = 1;
        }
        if (o->run[method]) {
            done[method] = 1;
            printf("result protocol=domain method=%s source_acc=%.4f target_acc=%.4f "
                   "seconds=%.1f\n", method_names[method], (double)acc[method][0],
                   (double)acc[method][1], secs[method]);
        }
        tlearn_model_destroy(&m);
    }
    if (have_source)
        remove(path);
    printf("\n%-12s %10s %10s %9s\n", "method", "source", "target", "seconds");
    for (int k = 0; k < NMETHODS; k++)
        if (done[k])
            printf("%-12s %10.4f %10.4f %9.1f\n", method_names[k], (double)acc[k][0],
                   (double)acc[k][1], secs[k]);
    printf("done in %.1f s\n", progress_now() - start);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    options opt = parse(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    double start = progress_now();
    char err[512];
    png_image photos[NPHOTOS];
    for (int i = 0; i < NPHOTOS; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", opt.photo_dir, photo_names[i]);
        if (png_read(path, &photos[i], err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        if (photos[i].width < 28 || photos[i].height < 28) {
            fprintf(stderr, "%s: %dx%d, smaller than a 28x28 crop\n", path, photos[i].width,
                    photos[i].height);
            return 1;
        }
        unsigned long long sum = 0;
        size_t n = (size_t)photos[i].width * (size_t)photos[i].height * (size_t)photos[i].channels;
        for (size_t k = 0; k < n; k++)
            sum += photos[i].pixels[k];
        printf("photo %s %dx%dx%d sum=%llu\n", photo_names[i], photos[i].width,
               photos[i].height, photos[i].channels, sum);
    }
    fmnist train, test;
    if (fmnist_load(&train, NULL, "train", 0, err, sizeof err) ||
        fmnist_load(&test, NULL, "t10k", opt.test_limit, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    /* Halves of the training set: labelled source, unlabelled target (other images). */
    size_t half = train.n / 2;
    uint64_t rng = opt.seed * 0x2545f4914f6cdd1dull + 7;
    domain_set src = make_set(&train, 0, half, NULL, &rng);
    domain_set tgt = make_set(&train, half, train.n - half, photos, &rng);
    domain_set src_test = make_set(&test, 0, test.n, NULL, &rng);
    domain_set tgt_test = make_set(&test, 0, test.n, photos, &rng);
    printf("source: %zu labelled Fashion-MNIST images; target (Fashion-MNIST-M): %zu "
           "unlabelled training images; %zu test images each (%.1f s)\n", src.n, tgt.n,
           test.n, progress_now() - start);
    int rc = 0;
    if (opt.export_dir) {
        rc = write_file(opt.export_dir, "target-train.u8", tgt.x, tgt.n * IMG) ||
                 write_file(opt.export_dir, "target-test.u8", tgt_test.x, tgt_test.n * IMG) ||
                 write_file(opt.export_dir, "target-test-labels.i32", tgt_test.y,
                            tgt_test.n * sizeof(int32_t));
        printf("exported to %s: target-train.u8 (%zu x 3 x 28 x 28), target-test.u8, "
               "target-test-labels.i32 (%zu)\n", opt.export_dir, tgt.n, tgt_test.n);
    }
    int status = rc ? 1 : opt.export_dir ? 0 : compare_methods(&opt, &src, &tgt, &src_test, &tgt_test, start);
    set_free(&src);
    set_free(&tgt);
    set_free(&src_test);
    set_free(&tgt_test);
    for (int i = 0; i < NPHOTOS; i++)
        free(photos[i].pixels);
    fmnist_free(&train);
    fmnist_free(&test);
    return status;
}
