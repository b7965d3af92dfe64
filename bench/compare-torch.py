#!/usr/bin/python3
"""libtlearn against PyTorch on the reference workloads, in the same run (bench/README.md).

Run with Debian's interpreter (it sees python3-torch), from the repository root after
building with -Dbench=true:

    /usr/bin/python3 bench/compare-torch.py --build-dir build

For every workload and thread count the libtlearn program (build/bench/tlearn-bench, a fresh
process each time) and the same workload in PyTorch are run alternately --repeats times and
the medians are compared. Throughput workloads run PyTorch in this process; the batch-1 job
runs PyTorch in a child process of its own so that its peak RSS is its own. Prints a table
and one line per workload and thread count:

    bench workload=cnn_partial_b64 threads=1 tlearn=... torch=... unit=steps/s ratio=... ceiling_frac=...

ratio > 1 means libtlearn is better (throughput: tlearn/torch; latency and memory:
torch/tlearn). cpu_ratio is the same comparison over process CPU time instead of wall time:
at 1 thread it is what an idle machine would show, which matters on a shared machine (at 2
threads it counts spinning threads, so read the wall-time ratio there). ceiling_frac is libtlearn's useful GFLOP/s over BLIS's own sgemm rate at the
same thread count, measured at the start of the run with the best BLIS kernels for this CPU
(not the sub-configuration BLIS may have fallen back to).

The header says what the run ran on: the CPU (vendor, family, model, name), the BLIS
sub-configuration the workloads run (tlearn_blas_info: version, `arch`, and why), and the
1- and 2-thread sgemm ceilings of every sub-configuration considered (the one the workloads
run, libtlearn's default choice, BLIS's own choice), the best of which is the ceiling.
--header-only prints just that.
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

WORKLOADS = [
    # name, unit, batch
    ("mlp_adam_b64", "steps/s", 64),
    ("cnn_full_b64", "steps/s", 64),
    ("cnn_partial_b64", "steps/s", 64),
    ("cnn_ewc_b64", "steps/s", 64),
    ("cnn_features_b256", "images/s", 256),
    ("cnn_partial_b1", "us/step", 1),
    ("cnn_lora_b64", "steps/s", 64),
    ("transformer_lora_b32", "steps/s", 32),
    ("transformer_full_b32", "steps/s", 32),
    ("transformer_b32", "steps/s", 32),
    ("transformer_features_b32", "sequences/s", 32),
]
# torchvision networks through ONNX (random weights, batchnorm statistics calibrated):
# name, architecture, mode (zoo-bench.c), batch, image size, first trained layer prefix
ZOO = [
    ("resnet18_extract_b32_224", "resnet18", "extract", 32, 224, None),
    ("resnet18_lastblock_b32_224", "resnet18", "lastblock", 32, 224, "layer4"),
    ("mobilenet_v2_extract_b32_224", "mobilenet_v2", "extract", 32, 224, None),
    ("mobilenet_v2_head_b32_224", "mobilenet_v2", "head", 32, 224, None),
    ("efficientnet_b0_extract_b32_224", "efficientnet_b0", "extract", 32, 224, None),
    ("resnet50_full_b8_224", "resnet50", "full", 8, 224, None),
]
ZOO_SPEC = {z[0]: z[1:] for z in ZOO}
# SGD learning rates (zoo-bench.c): a whole network without batchnorm (folded at export)
# diverges at 0.01 within three steps.
ZOO_LR = {"head": 0.01, "lastblock": 0.01, "full": 0.001}
WORKLOADS += [(name, "images/s" if mode == "extract" else "steps/s", batch)
              for name, _, mode, batch, _, _ in ZOO]
# Run in a child process each (both sides), so that peak RSS is the workload's own.
MEMORY = ("cnn_partial_b1", "cnn_full_b64", "cnn_lora_b64", "transformer_lora_b32",
          "transformer_full_b32", "transformer_b32")
# The text encoder of the transformer workloads (as bench/harness.c builds it).
TF_T, TF_D, TF_HEADS, TF_FF, TF_LAYERS, TF_VOCAB, TF_CLASSES = 128, 256, 4, 1024, 4, 8000, 10
UNITS = {w: u for w, u, _ in WORKLOADS}
BATCH = {w: b for w, _, b in WORKLOADS}


# --------------------------------------------------------------------------------------
# PyTorch side

def torch_net(name):
    """The workload's network in PyTorch and the shape of one input (also used by
    mpi-scaling.py)."""
    from torch import nn

    if name.startswith("mlp"):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
                             nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)), (784,)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)), (1, 28, 28)


def lora_modules():
    """PEFT's LoRA built by hand (peft is not in Debian): a frozen base plus B(A(x)) * alpha/r,
    A with the base's geometry (conv: its kernel, stride, padding), B 1x1 / linear, zero."""
    import torch
    from torch import nn

    class LoRA(nn.Module):
        def __init__(self, base, r=8, alpha=16.0):
            super().__init__()
            self.base = base.requires_grad_(False)
            if isinstance(base, nn.Conv2d):
                self.A = nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride,
                                   base.padding, bias=False)
                self.B = nn.Conv2d(r, base.out_channels, 1, bias=False)
            else:
                self.A = nn.Linear(base.in_features, r, bias=False)
                self.B = nn.Linear(r, base.out_features, bias=False)
            nn.init.zeros_(self.B.weight)
            self.scale = alpha / r

        def forward(self, x):
            return self.base(x) + self.B(self.A(x)) * self.scale

    class Encoder(nn.Module):
        """torch.nn.TransformerEncoderLayer (post-norm, ReLU, no dropout) with separate q, k,
        v, out projections, so that LoRA can wrap q and v (as PEFT on HF models)."""

        def __init__(self, d=256, heads=4, ff=1024):
            super().__init__()
            self.h = heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.l1, self.l2 = nn.Linear(d, ff), nn.Linear(ff, d)
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

        def forward(self, x):
            n, t, d = x.shape
            q, k, v = (p(x).view(n, t, self.h, d // self.h).transpose(1, 2)
                       for p in (self.q, self.k, self.v))
            # torch 1.13 (Debian) has no F.scaled_dot_product_attention: MHA's own math
            p = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1)
            a = p @ v
            x = self.n1(x + self.o(a.transpose(1, 2).reshape(n, t, d)))
            return self.n2(x + self.l2(torch.relu(self.l1(x))))

    class Pool(nn.Module):
        def forward(self, x):
            return x.mean(dim=1)

    return LoRA, Encoder, Pool


def torch_transformer(name):
    """Workloads 7 and 8: nn.Embedding + learned positions + nn.TransformerEncoder
    (batch_first, post-norm, ReLU, dropout 0.1) + mean pooling + nn.Linear; AdamW."""
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(TF_VOCAB, TF_D)
            self.pos = nn.Parameter(torch.randn(TF_T, TF_D) * 0.02)
            layer = nn.TransformerEncoderLayer(TF_D, TF_HEADS, TF_FF, dropout=0.1,
                                               batch_first=True)
            self.enc = nn.TransformerEncoder(layer, TF_LAYERS, enable_nested_tensor=False)
            self.head = nn.Linear(TF_D, TF_CLASSES)

        def features(self, ids):
            return self.enc(self.tok(ids) + self.pos).mean(1)

        def forward(self, ids):
            return self.head(self.features(ids))

    batch, nbatches = BATCH[name], 4
    model = Encoder()
    xs = torch.randint(0, TF_VOCAB, (nbatches, batch, TF_T))
    ys = torch.randint(0, TF_CLASSES, (nbatches, batch))
    state = {"i": 0}

    def next_batch():
        i = state["i"]
        state["i"] = (i + 1) % nbatches
        return xs[i], ys[i]

    if name == "transformer_features_b32":
        model.eval()

        def features():
            x, _ = next_batch()
            with torch.inference_mode():
                model.features(x)
        return features
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        x, y = next_batch()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def torch_setup(name, threads):
    """Build the workload in PyTorch; returns a callable doing one unit of work."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name in ("transformer_b32", "transformer_features_b32"):
        return torch_transformer(name)
    batch = BATCH[name]
    nbatches = 64 if name == "cnn_partial_b1" else 4
    LoRA, Encoder, Pool = lora_modules()
    if name.startswith("transformer"):
        model = nn.Sequential(*(Encoder() for _ in range(4)), Pool(), nn.Linear(256, 10))
        xs = torch.rand(nbatches, batch, 128, 256)
    else:
        model, shape = torch_net(name)
        xs = torch.rand(nbatches, batch, *shape)
    ys = torch.randint(0, 10, (nbatches, batch))
    state = {"i": 0}

    def next_batch():
        i = state["i"]
        state["i"] = (i + 1) % nbatches
        return xs[i], ys[i]

    if name == "cnn_features_b256":
        features = model[:6].eval()  # through the second pool

        def run():
            x, _ = next_batch()
            with torch.inference_mode():
                features(x)
        return run

    if name in ("cnn_partial_b64", "cnn_partial_b1"):
        for layer in (model[0], model[3]):
            for p in layer.parameters():
                p.requires_grad_(False)
    if name == "cnn_lora_b64":  # LoRA on every conv and linear, nothing else trains
        for i in (0, 3, 7, 9):
            model[i] = LoRA(model[i])
    if name == "transformer_lora_b32":  # LoRA on q and v, the head trains
        for p in model.parameters():
            p.requires_grad_(False)
        for enc in model[:4]:
            enc.q, enc.v = LoRA(enc.q), LoRA(enc.v)
        model[5].requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if name.startswith("mlp"):
        opt = torch.optim.Adam(params, lr=1e-3)
    elif name.startswith("transformer"):
        opt = torch.optim.AdamW(params, lr=1e-4)
    else:
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    penalty = None
    if name == "cnn_ewc_b64":
        # Empirical Fisher from one batch, anchors at the current weights (as the C side).
        x, y = xs[0], ys[0]
        model.zero_grad()
        loss_fn(model(x), y).backward()
        fisher = [p.grad.detach() ** 2 for p in params]
        anchor = [p.detach().clone() for p in params]
        lam = 100.0

        def penalty():
            return (lam / 2) * sum((f * (p - a) ** 2).sum()
                                   for f, p, a in zip(fisher, params, anchor))

    def run():
        x, y = next_batch()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        opt.step()
    return run


def zoo_model(arch, zoo_dir):
    """The torchvision network with the weights exported to zoo_dir (zoo_export)."""
    import torch
    import torchvision
    model = getattr(torchvision.models, arch)()
    model.load_state_dict(torch.load(os.path.join(zoo_dir, arch + ".pt")))
    return model.eval()


def zoo_export(arch, size, zoo_dir):
    """Random weights, batchnorm statistics calibrated on random batches (so activations
    keep their scale through a deep random network), saved as state_dict and ONNX."""
    import torch
    import torchvision
    onnx_path = os.path.join(zoo_dir, arch + ".onnx")
    if os.path.exists(onnx_path):
        return onnx_path
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 3, size, size))
    model.eval()
    torch.save(model.state_dict(), os.path.join(zoo_dir, arch + ".pt"))
    torch.onnx.export(model, torch.rand(1, 3, size, size), onnx_path + ".tmp", opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    os.replace(onnx_path + ".tmp", onnx_path)
    return onnx_path


def zoo_torch_setup(name, threads, zoo_dir):
    """The zoo workload in PyTorch: the same network and weights as the ONNX file; frozen
    modules in eval() (batchnorm running statistics kept), as zoo-bench.c freezes them."""
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    arch, mode, batch, size, prefix = ZOO_SPEC[name]
    # The ONNX export (eval mode) folds each batchnorm into its convolution, so libtlearn
    # trains the folded network: torch trains the same one (torch.fx's conv-bn fusion).
    import torch.fx.experimental.optimization as fx_opt
    model = fx_opt.fuse(zoo_model(arch, zoo_dir))
    # the classifier: the last Linear module
    head_name = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)][-1]
    parent = model.get_submodule(head_name.rpartition(".")[0]) if "." in head_name else model
    last = head_name.rpartition(".")[2]
    old = getattr(parent, last)
    torch.manual_seed(1)
    xs = torch.rand(4, batch, 3, size, size)
    ys = torch.randint(0, 10, (4, batch))
    state = {"i": 0}

    def next_batch():
        i = state["i"]
        state["i"] = (i + 1) % 4
        return xs[i], ys[i]

    if mode == "extract":
        setattr(parent, last, nn.Identity())

        def run():
            x, _ = next_batch()
            with torch.inference_mode():
                model(x)
        return run

    setattr(parent, last, nn.Linear(old.in_features, 10))
    model.train()
    for n, mod in model.named_modules():
        trained = (mode == "full" or n == head_name or n.startswith(head_name + ".")
                   or (mode == "lastblock" and (n == prefix or n.startswith(prefix + "."))))
        if not trained and not any(True for _ in mod.children()):
            mod.eval()
            for prm in mod.parameters(recurse=False):
                prm.requires_grad_(False)
    params = [prm for prm in model.parameters() if prm.requires_grad]
    opt = torch.optim.SGD(params, lr=ZOO_LR[mode], momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def run():
        x, y = next_batch()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return run


def measure(run, rounds, round_s):
    """Medians over rounds of runs per second of wall time and of process CPU time (each
    round at least round_s seconds)."""
    t0 = time.perf_counter()
    i = 0
    while i < 3 or time.perf_counter() - t0 < 0.2:  # warm-up
        run()
        i += 1
    rates, cpu_rates = [], []
    for _ in range(rounds):
        n = 0
        start = now = time.perf_counter()
        cpu0 = time.process_time()
        while n < 2 or now - start < round_s:
            run()
            n += 1
            now = time.perf_counter()
        rates.append(n / (now - start))
        cpu_rates.append(n / (time.process_time() - cpu0))
    return statistics.median(rates), statistics.median(cpu_rates)


def as_unit(name, runs):
    if name in ("cnn_features_b256", "transformer_features_b32") or UNITS[name] == "images/s":
        return runs * BATCH[name]
    if name == "cnn_partial_b1":
        return 1e6 / runs
    return runs


def torch_value(name, threads, rounds, round_s, zoo_dir=None):
    """(wall value, CPU-time value) in the workload's unit."""
    setup = zoo_torch_setup(name, threads, zoo_dir) if name in ZOO_SPEC else \
        torch_setup(name, threads)
    runs, cpu_runs = measure(setup, rounds, round_s)
    return as_unit(name, runs), as_unit(name, cpu_runs)


def torch_worker(args):
    """Child process: one PyTorch measurement, printed with this process's peak RSS."""
    v, cv = torch_value(args.torch_worker, args.threads, args.rounds, args.round_seconds,
                        args.zoo_dir)
    rss = peak_rss_kib()
    print(f"torch value={v:.6g} cpu_value={cv:.6g} peak_rss_kib={rss}", flush=True)


def peak_rss_kib():
    """VmHWM: the peak of this process image. ru_maxrss would include the peak of the
    parent before exec (Linux keeps it across execve), i.e. the parent's torch."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def torch_in_child(name, threads, rounds, round_s, zoo_dir=None):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", name,
                          "--threads", str(threads), "--rounds", str(rounds),
                          "--round-seconds", str(round_s)] +
                         (["--zoo-dir", zoo_dir] if zoo_dir else []),
                         check=True, capture_output=True, text=True).stdout
    fields = parse_fields(out.strip().splitlines()[-1])
    return float(fields["value"]), float(fields["cpu_value"]), int(fields["peak_rss_kib"])


# --------------------------------------------------------------------------------------
# libtlearn side

def parse_fields(line):
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def tlearn_run(exe, name, threads, rounds, round_s, ceiling, extra=()):
    out = subprocess.run([exe, name, "--threads", str(threads), "--rounds", str(rounds),
                          "--round-seconds", str(round_s), "--ceiling", str(ceiling)] +
                         list(extra), check=True, capture_output=True, text=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("tlearn ")][-1]
    return parse_fields(line)


def blis_ceilings(exe, threads, env, size=2000):
    """Run blis-ceiling in @p env: (tlearn_blas_info fields, {threads: GFLOP/s})."""
    blas, gflops = {}, {}
    for t in threads:
        out = subprocess.run([exe, "--threads", str(t), "--size", str(size)], check=True,
                             capture_output=True, text=True, env=env).stdout
        for line in out.splitlines():
            if line.startswith("blas "):
                blas = parse_fields(line)
            elif line.startswith("ceiling "):
                gflops[t] = float(parse_fields(line)["gflops"])
    return blas, gflops


def cpu_description():
    """Vendor, family, model and name from /proc/cpuinfo (first processor), and CPU count."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return (f"cpu vendor={info.get('vendor_id', '?')} family={info.get('cpu family', '?')} "
            f"model={info.get('model', '?')} name=\"{info.get('model name', '?')}\" "
            f"cpus={os.cpu_count()}")


def machine_header(ceil_exe, thread_list):
    """Print what the run runs on; returns the ceiling per thread count: the best sgemm rate
    among the sub-configurations the workloads run, libtlearn's default choice and BLIS's
    own choice."""
    print(f"# {cpu_description()}", flush=True)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("BLIS_ARCH_TYPE", "TLEARN_BLIS_ARCH")}
    runs = [("workloads", dict(os.environ)), ("libtlearn-default", clean),
            ("blis-own", dict(clean, TLEARN_BLIS_ARCH="keep"))]
    measured = {}  # arch -> {threads: gflops}
    run_blas = None
    for label, env in runs:
        blas, _ = blis_ceilings(ceil_exe, [1], env, size=64)  # which arch, cheaply
        if run_blas is None:
            run_blas = blas
            print("# blas " + " ".join(f"{k}={v}" for k, v in blas.items()), flush=True)
        arch = blas.get("arch", "?")
        if arch in measured:
            continue
        _, measured[arch] = blis_ceilings(ceil_exe, thread_list, env)
        for t, g in measured[arch].items():
            print(f"# sgemm arch={arch} threads={t} gflops={g:.4g} ({label})", flush=True)
    best = {t: max(m[t] for m in measured.values()) for t in thread_list}
    best_arch = {t: max(measured, key=lambda a: measured[a][t]) for t in thread_list}
    for t in thread_list:
        print(f"ceiling threads={t} gflops={best[t]:.4g} arch={best_arch[t]}", flush=True)
    if any(best_arch[t] != run_blas.get("arch") for t in thread_list):
        print(f"# note: the workloads run arch={run_blas.get('arch')} "
              f"(reason={run_blas.get('reason')}), slower than the best kernels; "
              f"ceiling_frac is against the best", flush=True)
    return best


# --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--workloads", default=",".join(w for w, _, _ in WORKLOADS))
    ap.add_argument("--repeats", type=int, default=3, help="alternations per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds inside each run")
    ap.add_argument("--round-seconds", type=float, default=0.3)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 2 short rounds")
    ap.add_argument("--header-only", action="store_true",
                    help="print the machine header (CPU, BLIS, ceilings) and stop")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--zoo-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    thread_list = [int(t) for t in args.threads.split(",")]
    args.threads = thread_list[0]
    if args.torch_worker:
        torch_worker(args)
        return 0
    if args.quick:
        args.repeats, args.rounds, args.round_seconds = 1, 2, 0.2

    bench_dir = os.path.join(args.build_dir, "bench")
    exe = os.path.join(bench_dir, "tlearn-bench")
    ceil_exe = os.path.join(bench_dir, "blis-ceiling")
    zoo_exe = os.path.join(bench_dir, "zoo-bench")
    for p in (exe, ceil_exe, zoo_exe):
        if not os.access(p, os.X_OK):
            sys.exit(f"compare-torch: {p} is missing: configure with -Dbench=true and build")
    import torch  # fail early and loudly when Debian's python3-torch is not there

    workloads = args.workloads.split(",")
    for w in workloads:
        if w not in UNITS:
            sys.exit(f"compare-torch: unknown workload {w}")
    print(f"# torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at start, "
          f"repeats={args.repeats} rounds={args.rounds} round_seconds={args.round_seconds}",
          flush=True)
    ceilings = machine_header(ceil_exe, thread_list)
    if args.header_only:
        return 0
    zoo_dir = os.path.join(bench_dir, "zoo")
    os.makedirs(zoo_dir, exist_ok=True)
    onnx_files = {}
    for w in workloads:
        if w in ZOO_SPEC:
            arch, _, _, size, _ = ZOO_SPEC[w]
            onnx_files[w] = zoo_export(arch, size, zoo_dir)

    results = {}  # (workload, threads) -> dict
    for w in workloads:
        for t in thread_list:
            tl_vals, th_vals, tl_rss, th_rss, fracs = [], [], [], [], []
            tl_cpu, th_cpu = [], []
            for r in range(args.repeats):
                order = (0, 1) if r % 2 == 0 else (1, 0)  # alternate who goes first
                for side in order:
                    if side == 0 and w in ZOO_SPEC:
                        prefix = ZOO_SPEC[w][4]
                        f = tlearn_run(zoo_exe, w, t, args.rounds, args.round_seconds,
                                       ceilings[t], ["--onnx", onnx_files[w]] +
                                       (["--train-from", prefix] if prefix else []))
                        tl_vals.append(float(f["value"]))
                        tl_cpu.append(float(f["cpu_value"]))
                        tl_rss.append(int(f["peak_rss_kib"]))
                        fracs.append(float(f["ceiling_frac"]))
                    elif side == 0:
                        f = tlearn_run(exe, w, t, args.rounds, args.round_seconds, ceilings[t])
                        tl_vals.append(float(f["value"]))
                        tl_cpu.append(float(f["cpu_value"]))
                        tl_rss.append(int(f["peak_rss_kib"]))
                        fracs.append(float(f["ceiling_frac"]))
                    elif w in MEMORY or w in ZOO_SPEC:
                        v, cv, rss = torch_in_child(w, t, args.rounds, args.round_seconds,
                                                    zoo_dir if w in ZOO_SPEC else None)
                        th_vals.append(v)
                        th_cpu.append(cv)
                        th_rss.append(rss)
                    else:
                        v, cv = torch_value(w, t, args.rounds, args.round_seconds)
                        th_vals.append(v)
                        th_cpu.append(cv)
            tl, th = statistics.median(tl_vals), statistics.median(th_vals)
            latency = UNITS[w] == "us/step"
            ratio = th / tl if latency else tl / th
            tlc, thc = statistics.median(tl_cpu), statistics.median(th_cpu)
            cpu_ratio = thc / tlc if latency else tlc / thc
            res = {"tlearn": tl, "torch": th, "ratio": ratio, "cpu_ratio": cpu_ratio,
                   "frac": statistics.median(fracs)}
            if th_rss:
                res["tlearn_rss"] = statistics.median(tl_rss)
                res["torch_rss"] = statistics.median(th_rss)
            results[(w, t)] = res
            print(f"bench workload={w} threads={t} tlearn={tl:.6g} torch={th:.6g} "
                  f"unit={UNITS[w]} ratio={ratio:.3f} ceiling_frac={res['frac']:.4f} "
                  f"cpu_ratio={cpu_ratio:.3f}", flush=True)
            if th_rss:
                print(f"bench workload={w}_peak_rss threads={t} tlearn={res['tlearn_rss']} "
                      f"torch={res['torch_rss']} unit=KiB "
                      f"ratio={res['torch_rss'] / res['tlearn_rss']:.3f} ceiling_frac=-",
                      flush=True)

    # Derived figures: EWC overhead over workload 2, and 2-thread scaling.
    # libtlearn's EWC overhead comes from paired rounds in one process (tlearn-bench
    # ewc_overhead): separate runs scatter by more than the few percent being measured.
    for t in thread_list:
        if ("cnn_ewc_b64", t) in results and ("cnn_full_b64", t) in results:
            full, ewc = results[("cnn_full_b64", t)], results[("cnn_ewc_b64", t)]
            paired = tlearn_run(exe, "ewc_overhead", t, max(args.rounds, 9), args.round_seconds,
                                0)
            o_tl = float(paired["value"]) / 100
            o_th = full["torch"] / ewc["torch"] - 1
            print(f"bench workload=ewc_overhead threads={t} tlearn={100 * o_tl:.2f} "
                  f"torch={100 * o_th:.2f} unit=% ratio={(1 + o_th) / (1 + o_tl):.3f} "
                  f"ceiling_frac=-", flush=True)
    if 1 in thread_list and 2 in thread_list:
        for w in workloads:
            a, b = results[(w, 1)], results[(w, 2)]
            inv = UNITS[w] == "us/step"
            s_tl = a["tlearn"] / b["tlearn"] if inv else b["tlearn"] / a["tlearn"]
            s_th = a["torch"] / b["torch"] if inv else b["torch"] / a["torch"]
            print(f"bench workload={w}_scaling threads=2 tlearn={s_tl:.3f} torch={s_th:.3f} "
                  f"unit=x_vs_1_thread ratio={s_tl / s_th:.3f} ceiling_frac=-", flush=True)

    # The table (markdown, for bench/README.md).
    print()
    print("| workload | threads | libtlearn | PyTorch | unit | ratio | CPU-time ratio "
          "| ceiling frac |")
    print("|---|---|---|---|---|---|---|---|")
    for (w, t), r in results.items():
        print(f"| {w} | {t} | {r['tlearn']:.4g} | {r['torch']:.4g} | {UNITS[w]} | "
              f"{r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['frac']:.3f} |")
        if "torch_rss" in r:
            print(f"| {w} peak RSS | {t} | {r['tlearn_rss'] / 1024:.1f} | "
                  f"{r['torch_rss'] / 1024:.1f} | MiB | "
                  f"{r['torch_rss'] / r['tlearn_rss']:.2f} | - | - |")
    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
