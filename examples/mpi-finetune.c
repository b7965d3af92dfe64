/* Data-parallel fine-tuning on several processes with libtlearn-mpi:
 *   mpirun -np 2 ./build/examples/mpi-finetune [checkpoint.tlm]
 * Every rank builds the same model (same seed), attaches it to MPI_COMM_WORLD and trains
 * on its own shard of each epoch's data with the ordinary calls; the gradients are
 * averaged across ranks inside backward, so the weights stay identical. Rank 0 alone
 * writes the checkpoint. The data here is synthetic (clusters) to keep the example
 * self-contained. */
#include <stdio.h>
#include <stdlib.h>

#include <tlearn/tlearn_mpi.h>

#define FEATURES 16
#define CLASSES 4
#define PER_RANK 256 /* each rank's shard: the global batch is ranks x BATCH */
#define BATCH 32

static int die(int rank, int rc, const char *what)
{
    fprintf(stderr, "rank %d: %s: %s (%s) %s\n", rank, what, tlearn_strerror(rc),
            tlearn_errmsg(), tlearn_mpi_errmsg());
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size, rc;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    tlearn_model *m;
    if ((rc = tlearn_model_create(&m, FEATURES, 1, 1)) || (rc = tlearn_model_set_seed(m, 1)) ||
        (rc = tlearn_model_add_dense(m, "fc1", 32)) ||
        (rc = tlearn_model_add_activation(m, "relu", TLEARN_ACT_RELU, 0.0f)) ||
        (rc = tlearn_model_add_dense(m, "fc2", CLASSES)))
        return die(rank, rc, "building the model");
    tlearn_mpi *mpi;
    if ((rc = tlearn_mpi_attach(m, MPI_COMM_WORLD, 60.0, 0, TLEARN_REDUCE_EVALUATE, 100, &mpi)))
        return die(rank, rc, "tlearn_mpi_attach");

    /* This rank's shard: a different slice of the same synthetic set on every rank. */
    float *x = malloc(sizeof(float) * PER_RANK * FEATURES);
    int32_t *y = malloc(sizeof(int32_t) * PER_RANK);
    srand(1234u + (unsigned)rank);
    for (int i = 0; i < PER_RANK; i++) {
        y[i] = (rank * PER_RANK + i) % CLASSES;
        for (int f = 0; f < FEATURES; f++)
            x[i * FEATURES + f] = (float)rand() / RAND_MAX - 0.5f + (f == y[i] ? 2.0f : 0.0f);
    }
    tlearn_optim *o;
    if ((rc = tlearn_optim_create(&o, TLEARN_ADAM)))
        return die(rank, rc, "tlearn_optim_create");
    for (int epoch = 0; epoch < 3; epoch++) {
        /* Equal shards give every rank the same number of steps, as the exchange needs. */
        if ((rc = tlearn_model_fit(m, o, x, y, PER_RANK, BATCH, 1, 1, NULL, NULL)))
            return die(rank, rc, "tlearn_model_fit");
        float loss, acc;
        if ((rc = tlearn_model_evaluate(m, x, y, PER_RANK, &loss, &acc)))
            return die(rank, rc, "tlearn_model_evaluate");
        if (rank == 0) /* loss and accuracy over every rank's shard */
            printf("epoch %d: loss %.4f accuracy %.3f over %d ranks\n", epoch + 1, loss, acc,
                   size);
    }
    if (rank == 0 && argc > 1 && (rc = tlearn_model_save(m, o, argv[1], TLEARN_SAVE_FULL)))
        return die(rank, rc, "tlearn_model_save");
    tlearn_mpi_detach(&mpi);
    tlearn_optim_destroy(&o);
    tlearn_model_destroy(&m);
    free(x);
    free(y);
    MPI_Finalize();
    return 0;
}
