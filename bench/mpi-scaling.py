#!/usr/bin/python3
"""Data-parallel scaling: libtlearn over MPI against PyTorch DDP, in the same run.

Run with Debian's interpreter (it sees python3-torch), from the repository root after
building with -Dbench=true -Dmpi=enabled:

    /usr/bin/python3 bench/mpi-scaling.py --build-dir build

For the CNN full fine-tuning workload (cnn_full_b64) and the MLP workload (mlp_adam_b64) of
tlearn-bench, with the same global batch of 64:

  - libtlearn at 1 rank x 1 thread (no reducer: the one-process path) and at 2 ranks x 1
    thread (build/bench/mpi-bench under mpirun, libtlearn-mpi, 32 examples per rank);
  - PyTorch at 1 process x 1 thread and with DistributedDataParallel at 2 processes x 1
    thread (gloo backend, tcp://127.0.0.1 init, 32 examples per process).

Every measurement is a fresh job; the four run in turn --repeats times (the order rotating)
and the medians are compared. Prints the machine header of compare-torch.py, then one line
per workload:

    scaling workload=cnn_full_b64 tlearn_1x1=... tlearn_2x1=... tlearn_speedup=...
            torch_1x1=... torch_ddp_2x1=... torch_speedup=... ratio_2x1=... unit=steps/s

speedup is 2 ranks over 1 (target >= 1.8 for libtlearn); ratio_2x1 is libtlearn's 2-rank
rate over DDP's (> 1: libtlearn faster). Each workload gets two lines: time=wall (steps
per second of wall time: what counts, on an idle machine) and time=cpu (steps per second
of the CPU time of the busiest rank or process: on a machine with other jobs running, 2
ranks compete with them for the 2 cores and wait for each other's time slices, and the
CPU-time rates estimate what an idle machine would show; waits count when they spin, not
when they sleep, so they flatter both sides' 2-process figures somewhat). A third line,
exchange, times one MPI_Iallreduce of the gradient's size alone (mpi-bench
--exchange-only): the floor MPI sets on this machine. Take the figures on an idle
machine.
"""
import argparse
import datetime
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ["cnn_full_b64", "mlp_adam_b64"]
GLOBAL_BATCH = 64


# --------------------------------------------------------------------------------------
# PyTorch side: one process (world 1, no DDP) or a DDP worker

def torch_worker(name, rank, world, port, rounds, round_s):
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=120))
    nbatches, share = 4, GLOBAL_BATCH // world
    model, shape = load_compare_torch().torch_net(name)
    xs = torch.rand(nbatches, GLOBAL_BATCH, *shape)
    ys = torch.randint(0, 10, (nbatches, GLOBAL_BATCH))
    xs = xs[:, rank * share:(rank + 1) * share].contiguous()
    ys = ys[:, rank * share:(rank + 1) * share].contiguous()
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    if name.startswith("mlp"):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    state = {"i": 0}

    def step():
        i = state["i"]
        state["i"] = (i + 1) % nbatches
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xs[i]), ys[i]).backward()
        opt.step()

    def barrier():
        if world > 1:
            torch.distributed.barrier()

    # Warm-up, then the same number of steps per round on every process (rank 0 decides).
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    per_round = torch.tensor([max(3, int(round_s / ((time.perf_counter() - t0) / 3)))])
    if world > 1:
        torch.distributed.broadcast(per_round, 0)
    per_round = int(per_round.item())
    rates, cpu_rates = [], []
    for _ in range(rounds):
        barrier()
        start, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(per_round):
            step()
        cpu = torch.tensor([time.process_time() - cpu0], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(cpu, op=torch.distributed.ReduceOp.MAX)
        rates.append(per_round / (time.perf_counter() - start))
        cpu_rates.append(per_round / cpu.item())
    if rank == 0:
        print(f"torch workload={name} processes={world} value={statistics.median(rates):.4g} "
              f"cpu_value={statistics.median(cpu_rates):.4g} unit=steps/s rounds={rounds}",
              flush=True)
    # Leave at once: gloo's teardown can wait on a peer that has already gone.
    sys.stdout.flush()
    os._exit(0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch(name, world, rounds, round_s):
    try:
        return run_torch_once(name, world, rounds, round_s)
    except RuntimeError as e:  # once more: a shared machine's jobs come and go
        print(f"# {e}; running it again", flush=True)
        return run_torch_once(name, world, rounds, round_s)


def run_torch_once(name, world, rounds, round_s):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--torch-worker", name, str(r),
                               str(world), str(port), str(rounds), str(round_s)],
                              stdout=subprocess.PIPE, text=True, env=env)
             for r in range(world)]
    # A process that dies leaves the others waiting in gloo: end them all then.
    deadline = time.time() + 300
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if any(p.poll() for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"mpi-scaling: the PyTorch run ({name}, {world} processes) "
                           f"failed: exit codes {[p.returncode for p in procs]}")
    line = [ln for ln in outs[0].splitlines() if ln.startswith("torch ")][-1]
    f = parse_fields(line)
    return float(f["value"]), float(f["cpu_value"])


# --------------------------------------------------------------------------------------
# libtlearn side

def parse_fields(line):
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def run_tlearn(mpirun, exe, name, ranks, rounds, round_s, bucket, extra=()):
    root = ["--allow-run-as-root"] if os.getuid() == 0 else []
    cmd = [mpirun, *root, "--oversubscribe", "-np", str(ranks), "--bind-to", "none",
           "--mca", "btl", "self,vader", "-x", "OMP_NUM_THREADS=1", exe, name,
           "--rounds", str(rounds), "--round-seconds", str(round_s), "--bucket", str(bucket), *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("mpi ")][-1]
    f = parse_fields(line)
    return float(f["value"]), float(f["cpu_value"])


def load_compare_torch():
    spec = importlib.util.spec_from_file_location("compare_torch",
                                                  os.path.join(HERE, "compare-torch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=3, help="alternations per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds inside each run")
    ap.add_argument("--round-seconds", type=float, default=1.0)
    ap.add_argument("--bucket", type=int, default=0,
                    help="libtlearn bucket size in floats (0: the library's default)")
    ap.add_argument("--no-header", action="store_true", help="skip the machine header")
    ap.add_argument("--torch-worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        name, rank, world, port, rounds, round_s = args.torch_worker
        torch_worker(name, int(rank), int(world), int(port), int(rounds), float(round_s))
        return

    try:
        import torch  # noqa: F401
        import torch.distributed as dist
    except ImportError:
        raise SystemExit("mpi-scaling: needs python3-torch (Debian's /usr/bin/python3)")
    if not dist.is_available() or not dist.is_gloo_available():
        raise SystemExit("mpi-scaling: this torch has no torch.distributed gloo backend")
    mpirun = shutil.which("mpirun")
    exe = os.path.join(args.build_dir, "bench", "mpi-bench")
    if not mpirun or not os.path.exists(exe):
        raise SystemExit(f"mpi-scaling: needs mpirun (openmpi-bin) and {exe} "
                         "(meson setup -Dbench=true -Dmpi=enabled)")
    if not args.no_header:
        ct = load_compare_torch()
        ct.machine_header(os.path.join(args.build_dir, "bench", "blis-ceiling"), [1, 2])
        print(f"# load {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min)",
              flush=True)

    kinds = [("tlearn_1x1", lambda w: run_tlearn(mpirun, exe, w, 1, args.rounds,
                                                 args.round_seconds, args.bucket)),
             ("tlearn_2x1", lambda w: run_tlearn(mpirun, exe, w, 2, args.rounds,
                                                 args.round_seconds, args.bucket)),
             ("torch_1x1", lambda w: run_torch(w, 1, args.rounds, args.round_seconds)),
             ("torch_ddp_2x1", lambda w: run_torch(w, 2, args.rounds, args.round_seconds))]
    rows = []
    for w in args.workloads.split(","):
        vals = {k: [] for k, _ in kinds}
        for r in range(args.repeats):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for k, fn in order:
                vals[k].append(fn(w))
        # medians of wall-time rates ([0]) and of CPU-time rates ([1])
        med = [{k: statistics.median(v[i] for v in vs) for k, vs in vals.items()}
               for i in (0, 1)]
        for i, what in ((0, "wall"), (1, "cpu")):
            m = med[i]
            ts, ps = m["tlearn_2x1"] / m["tlearn_1x1"], m["torch_ddp_2x1"] / m["torch_1x1"]
            print(f"scaling workload={w} time={what} tlearn_1x1={m['tlearn_1x1']:.4g} "
                  f"tlearn_2x1={m['tlearn_2x1']:.4g} tlearn_speedup={ts:.3f} "
                  f"torch_1x1={m['torch_1x1']:.4g} torch_ddp_2x1={m['torch_ddp_2x1']:.4g} "
                  f"torch_speedup={ps:.3f} ratio_2x1={m['tlearn_2x1'] / m['torch_ddp_2x1']:.3f} "
                  f"unit=steps/s repeats={args.repeats}", flush=True)
            rows.append((w, what, m, ts, ps))
        # The floor MPI sets: one MPI_Iallreduce of the gradient, nothing else.
        ex, ex_cpu = run_tlearn(mpirun, exe, w, 2, args.rounds, args.round_seconds, 0,
                                ["--exchange-only"])
        print(f"exchange workload={w} ranks=2 wall_ms={1e3 / ex:.3g} cpu_ms={1e3 / ex_cpu:.3g} "
              f"(one MPI_Iallreduce of the trainable parameters' size)", flush=True)
    print("\n| workload | time | libtlearn 1x1 | libtlearn 2x1 | speedup | torch 1x1 | DDP 2x1 | "
          "speedup | libtlearn/DDP at 2x1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w, what, m, ts, ps in rows:
        print(f"| {w} | {what} | {m['tlearn_1x1']:.4g} | {m['tlearn_2x1']:.4g} | {ts:.2f}x | "
              f"{m['torch_1x1']:.4g} | {m['torch_ddp_2x1']:.4g} | {ps:.2f}x | "
              f"{m['tlearn_2x1'] / m['torch_ddp_2x1']:.2f} |")


if __name__ == "__main__":
    main()
