/* Feature extraction: use a pretrained network as a fixed feature extractor.
 *
 * The activations of a late layer (here "relu3", 64 values per image) describe an image
 * well enough that even a trivial classifier on top of them works, including for classes
 * the network never saw. This program
 *   1. loads a pretrained CNN (a libtlearn checkpoint given as argv[1]), or, without an
 *      argument, pretrains one for a few seconds on Fashion-MNIST classes 0..4 only;
 *   2. computes the "relu3" features of 20 labelled images per class for all 10 classes
 *      with tlearn_model_features() (evaluation mode, nothing kept for backward);
 *   3. classifies 2,000 test images by the nearest class centroid in feature space, in
 *      plain C: the features leave the library as ordinary float arrays.
 *
 * Build: cc feature-extraction.c common/fmnist.c common/pretrain.c $(pkg-config --cflags --libs tlearn) -lz
 * Usage: feature-extraction [PRETRAINED.tlc]
 */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tlearn/tlearn.h>

#include "common/pretrain.h"

enum { FEATURES = 64, PER_CLASS = 20, TEST = 2000, CLASSES = 10 };

int main(int argc, char **argv)
{
    print_blas_info();
    char err[256];
    fmnist train, test;
    if (fmnist_load(&train, NULL, "train", 0, err, sizeof err) != 0 ||
        fmnist_load(&test, NULL, "t10k", TEST, err, sizeof err) != 0) {
        fprintf(stderr, "feature-extraction: %s\n", err);
        return 1;
    }
    tlearn_model *m;
    if (argc > 1)
        CHECK(tlearn_model_load(&m, NULL, argv[1]));
    else
        m = example_pretrain(&train, FEATURES);

    int idx, c, h, w;
    CHECK(tlearn_model_layer_index(m, "relu3", &idx));
    CHECK(tlearn_model_layer_shape(m, idx, &c, &h, &w));
    size_t dim = (size_t)c * h * w;

    /* The first PER_CLASS training images of every class: the labelled support set. */
    float *support = malloc(CLASSES * PER_CLASS * FMNIST_PIXELS * sizeof *support);
    int count[CLASSES] = {0};
    for (size_t i = 0, k = 0; i < train.n && k < CLASSES * PER_CLASS; i++) {
        int label = train.labels[i];
        if (count[label] < PER_CLASS) {
            memcpy(support + (size_t)(label * PER_CLASS + count[label]) * FMNIST_PIXELS,
                   train.images + i * FMNIST_PIXELS, FMNIST_PIXELS * sizeof *support);
            count[label]++;
            k++;
        }
    }

    /* Features of the support set and of the test set, from the frozen network. */
    float *fs = malloc(CLASSES * PER_CLASS * dim * sizeof *fs);
    float *ft = malloc(test.n * dim * sizeof *ft);
    double *centroid = calloc(CLASSES * dim, sizeof *centroid);
    if (!support || !fs || !ft || !centroid)
        return 1;
    CHECK(tlearn_model_features(m, "relu3", support, CLASSES * PER_CLASS, fs,
                                CLASSES * PER_CLASS * dim));
    CHECK(tlearn_model_features(m, "relu3", test.images, test.n, ft, test.n * dim));

    for (int k = 0; k < CLASSES; k++)
        for (int j = 0; j < PER_CLASS; j++)
            for (size_t d = 0; d < dim; d++)
                centroid[k * dim + d] += fs[((size_t)k * PER_CLASS + j) * dim + d] / PER_CLASS;

    size_t correct = 0;
    for (size_t i = 0; i < test.n; i++) {
        int best = 0;
        double best_d = DBL_MAX;
        for (int k = 0; k < CLASSES; k++) {
            double dist = 0;
            for (size_t d = 0; d < dim; d++) {
                double diff = ft[i * dim + d] - centroid[k * dim + d];
                dist += diff * diff;
            }
            if (dist < best_d) {
                best_d = dist;
                best = k;
            }
        }
        correct += best == test.labels[i];
    }
    printf("feature layer relu3: %zu values per image\n", dim);
    printf("nearest-centroid accuracy=%.4f on %zu test images (%d labelled per class)\n",
           (double)correct / (double)test.n, test.n, PER_CLASS);

    free(support);
    free(fs);
    free(ft);
    free(centroid);
    tlearn_model_destroy(&m);
    fmnist_free(&train);
    fmnist_free(&test);
    return 0;
}
