/* End to end on real data: a 784-256-128-10 ReLU MLP trained for ONE epoch on the 60000
 * Fashion-MNIST training images must reach at least 84 % accuracy on the 10000 test images.
 * Missing data is a failure, not a skip.
 *
 * Recipe: pixels standardised with the training set's mean and standard deviation, Adam
 * lr 5e-4, batch 32, shuffled by the model's RNG, seed 2. One epoch without a learning-rate
 * schedule ends wherever the last updates leave it, so accuracy depends on the seed: with
 * this recipe seeds 1, 2, 3 and 42 gave 85.6, 85.0, 85.3 and 84.6 % here with the rounded
 * statistics 0.286 / 0.353 (seed 2 is the median case; with the exact statistics computed
 * below it reaches 85.25 %). The example's recipe (raw pixels, lr 1e-3, batch 64) gives about 83.7 %,
 * and raw pixels at batch 32 gave 84.1-85.0 %: too close to the bar to be a stable test. */
#include "common.h"

#include "common/fmnist.h"

static void test_fmnist_one_epoch(void **state)
{
    (void)state;
    char err[256];
    fmnist train, test;
    if (fmnist_load(&train, NULL, "train", 0, err, sizeof err))
        fail_msg("Fashion-MNIST is required (Debian package dataset-fashion-mnist): %s", err);
    if (fmnist_load(&test, NULL, "t10k", 0, err, sizeof err))
        fail_msg("Fashion-MNIST is required (Debian package dataset-fashion-mnist): %s", err);
    assert_int_equal(train.n, 60000);
    assert_int_equal(test.n, 10000);

    /* Standardise with the training set's statistics (applied to both splits). */
    double sum = 0, sq = 0;
    size_t npix = train.n * FMNIST_PIXELS;
    for (size_t i = 0; i < npix; i++) {
        sum += train.images[i];
        sq += (double)train.images[i] * train.images[i];
    }
    double mean = sum / (double)npix, sd = sqrt(sq / (double)npix - mean * mean);
    assert_true(mean > 0.25 && mean < 0.32 && sd > 0.3 && sd < 0.4); /* Fashion-MNIST's */
    for (size_t i = 0; i < npix; i++)
        train.images[i] = (float)((train.images[i] - mean) / sd);
    for (size_t i = 0; i < test.n * FMNIST_PIXELS; i++)
        test.images[i] = (float)((test.images[i] - mean) / sd);

    tlearn_model *m;
    OK(tlearn_model_create(&m, 1, 28, 28));
    OK(tlearn_model_set_seed(m, 2));
    OK(tlearn_model_add_dense(m, "fc1", 256));
    OK(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc2", 128));
    OK(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0));
    OK(tlearn_model_add_dense(m, "fc3", 10));
    tlearn_optim *o;
    OK(tlearn_optim_create(&o, TLEARN_ADAM));
    OK(tlearn_optim_set(o, TLEARN_OPT_LR, 5e-4));

    float loss0, acc0;
    OK(tlearn_model_evaluate(m, test.images, test.labels, test.n, &loss0, &acc0));
    OK(tlearn_model_fit(m, o, train.images, train.labels, train.n, 32, 1, 1, NULL, NULL));
    float loss, acc;
    OK(tlearn_model_evaluate(m, test.images, test.labels, test.n, &loss, &acc));
    print_message("before: loss %.4f accuracy %.4f; after one epoch: loss %.4f accuracy %.4f\n",
                  (double)loss0, (double)acc0, (double)loss, (double)acc);
    assert_true(loss < loss0);
    if (!(acc >= 0.84f))
        fail_msg("test accuracy %.4f after one epoch, expected >= 0.84", (double)acc);

    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    fmnist_free(&train);
    fmnist_free(&test);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmnist_one_epoch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
