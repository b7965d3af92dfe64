/**
 * @file
 * libtlearn-mpi: data-parallel training of a libtlearn model over MPI.
 *
 * A small library beside libtlearn (pkg-config `tlearn-mpi`) that registers a reducer
 * (tlearn_model_set_reducer()) summing gradients with MPI_Iallreduce, one request per
 * bucket, so the exchange overlaps the rest of backward. libtlearn itself never links MPI:
 * its ABI is the same whether or not this library is built.
 *
 * Every rank builds (or loads) the same model, calls tlearn_mpi_attach() with the same
 * communicator, then trains on its own share of each batch with the ordinary calls.
 * Failures return libtlearn status codes; tlearn_mpi_errmsg() holds the detail.
 *
 * SPDX-License-Identifier: BSD-2-Clause
 */
#ifndef TLEARN_TLEARN_MPI_H
#define TLEARN_TLEARN_MPI_H

#include <mpi.h>

#include "tlearn/tlearn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One model's attachment to a communicator. @since 1.1 */
typedef struct tlearn_mpi tlearn_mpi;

/**
 * Attach @p m to @p comm (collective: every rank of @p comm calls it). Checks first that
 * every rank holds the same model: layer count, every tensor's name and shape, and a hash
 * of every tensor's values (weights and buffers), failing with TLEARN_ESTATE and a message
 * naming what differs instead of training models that drift apart. Then registers the
 * reducer (tlearn_model_set_reducer(), workers = size of @p comm, with @p flags) and
 * reseeds the model with @p seed + rank (tlearn_model_set_seed()) so that dropout and
 * tlearn_model_fit()'s shuffling differ per rank; layers added afterwards would then
 * start differently on each rank, so build the model first.
 *
 * The library duplicates @p comm (MPI_Comm_dup) and sets MPI_ERRORS_RETURN on its copy,
 * so MPI failures come back as TLEARN_EIO. Every wait polls MPI_Testall and gives up
 * after @p timeout_seconds with TLEARN_EIO: a rank that stopped taking part (exited, hung,
 * failed a call before backward) makes the others fail within that bound instead of
 * hanging. After such a failure the attachment is broken (later steps fail at once) and
 * the communicator is in an unknown state: save what you need and end the job
 * (MPI_Abort). A rank that is killed outright usually makes mpirun end the whole job.
 *
 * @param m                the model; must outlive the attachment.
 * @param comm             communicator of the ranks that train together; not freed.
 * @param timeout_seconds  bound on each wait, > 0 (e.g. 60).
 * @param bucket_floats    floats per bucket, 0 for libtlearn's default (4 MB).
 * @param flags            TLEARN_REDUCE_* values or-ed (evaluate, Fisher, synchronised
 *                         BatchNorm), or 0.
 * @param seed             base of the per-rank seeds.
 * @param out              receives the attachment; free with tlearn_mpi_detach().
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM, TLEARN_ESTATE (the ranks' models
 *         differ), TLEARN_EIO (MPI failed or timed out; MPI not initialised). On
 *         failure nothing is attached.
 * @since 1.1
 */
TLEARN_API int tlearn_mpi_attach(tlearn_model *m, MPI_Comm comm, double timeout_seconds,
                                 size_t bucket_floats, int flags, uint64_t seed,
                                 tlearn_mpi **out);

/**
 * Check again that every rank holds the same model (as tlearn_mpi_attach() does), e.g.
 * after loading a checkpoint. Collective.
 * @return TLEARN_OK, TLEARN_EINVAL, TLEARN_ENOMEM, TLEARN_ESTATE, TLEARN_EIO.
 * @since 1.1
 */
TLEARN_API int tlearn_mpi_check(tlearn_mpi *a);

/**
 * Rank and size of the attachment's communicator; either pointer may be NULL.
 * @return TLEARN_OK, TLEARN_EINVAL.
 * @since 1.1
 */
TLEARN_API int tlearn_mpi_rank(const tlearn_mpi *a, int *rank, int *size);

/**
 * Remove the reducer from the model and free the attachment. Call it before destroying
 * the model. NULL and *a == NULL are accepted; sets *a to NULL. Not collective.
 * @since 1.1
 */
TLEARN_API void tlearn_mpi_detach(tlearn_mpi **a);

/**
 * Detail of the calling thread's last tlearn_mpi_* failure (or of the reducer's, during
 * a training call that returned TLEARN_EIO): "" when none. Thread-local.
 * @since 1.1
 */
TLEARN_API const char *tlearn_mpi_errmsg(void);

#ifdef __cplusplus
}
#endif

#endif /* TLEARN_TLEARN_MPI_H */
