#!/bin/sh
# run-mpi.sh MPIRUN WANT PROGRAM ARGS...: PROGRAM on 2 ranks of this machine (loopback
# shared memory, oversubscribed, one thread each), bounded in time. Passes when the output
# holds the line WANT (e.g. "rank 0: fault ok") and, unless WANT is a fault line, mpirun
# succeeded.
mpirun=$1 want=$2
shift 2
root=
[ "$(id -u)" = 0 ] && root=--allow-run-as-root
out=$(timeout 120 "$mpirun" $root --oversubscribe -np 2 --bind-to none \
      --mca btl self,vader --mca btl_vader_single_copy_mechanism none \
      -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$@" 2>&1)
rc=$?
printf '%s\n' "$out"
printf '%s\n' "$out" | grep -qxF "$want" || { echo "FAIL: no line '$want' (mpirun: $rc)"; exit 1; }
case $want in
  *fault*) exit 0 ;;  # rank 0 leaves without MPI_Finalize on purpose
esac
[ $rc = 0 ] || { echo "FAIL: mpirun returned $rc"; exit 1; }
