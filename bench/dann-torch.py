#!/usr/bin/python3
"""DANN (and source-only) in PyTorch with examples/domain-adapt's recipe, for comparison.

The same network (conv32-bn-relu-pool-conv64-bn-relu-pool-fc128-bn-relu -> fc10; domain
head fc100-relu-fc2 behind gradient reversal), data, schedule and step count as
examples/domain-adapt.c: SGD momentum 0.9, lr_p = 0.01 / (1 + 10 p)^0.75, lambda_p =
2 / (1 + exp(-10 p)) - 1, batches of B labelled source rows + B unlabelled target rows in
one forward, class loss over the source rows + domain loss over all rows. Only the weight
initialisation and the random batch draws differ.

The target images come from the demo itself, so both run on the same Fashion-MNIST-M:
    build/examples/domain-adapt --export /tmp/fmm        (writes target-*.u8/.i32)
    /usr/bin/python3 bench/dann-torch.py --data /tmp/fmm --steps 3000 --threads 2
Prints `result protocol=domain impl=torch method=dann source_acc=... target_acc=...`.
"""
import argparse
import gzip
import math
import os
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # the comparison needs torch: fail, never skip
    sys.exit(f"dann-torch.py needs python3-torch and python3-numpy: {e}")

FMNIST = "/usr/share/datasets/fashion-mnist"


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.lam * g, None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.BatchNorm1d(128), nn.ReLU())
        self.cls = nn.Linear(128, 10)
        self.dom = nn.Sequential(nn.Linear(128, 100), nn.ReLU(), nn.Linear(100, 2))

    def forward(self, x, lam=None):
        f = self.features(x)
        return self.cls(f), None if lam is None else self.dom(GradReverse.apply(f, lam))


def accuracy(net, x, y):
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(x), 500):
            xb = torch.from_numpy(x[s:s + 500].astype(np.float32) / 255.0)
            correct += (net(xb)[0].argmax(1).numpy() == y[s:s + 500]).sum()
    net.train()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="directory of domain-adapt --export")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--methods", default="dann", help="dann,source-only")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)

    train = idx(f"{FMNIST}/train-images-idx3-ubyte.gz")
    labels = idx(f"{FMNIST}/train-labels-idx1-ubyte.gz").astype(np.int64)
    test = idx(f"{FMNIST}/t10k-images-idx3-ubyte.gz")[:a.test_limit]
    test_y = idx(f"{FMNIST}/t10k-labels-idx1-ubyte.gz")[:a.test_limit].astype(np.int64)
    half = len(train) // 2
    src = np.repeat(train[:half, None], 3, axis=1)  # grey -> 3 channels, as the demo
    src_y = labels[:half]
    src_test = np.repeat(test[:, None], 3, axis=1)
    tgt = np.fromfile(os.path.join(a.data, "target-train.u8"), np.uint8).reshape(-1, 3, 28, 28)
    tgt_test = np.fromfile(os.path.join(a.data, "target-test.u8"), np.uint8).reshape(-1, 3, 28, 28)
    tgt_test_y = np.fromfile(os.path.join(a.data, "target-test-labels.i32"), np.int32)
    if len(tgt_test) != len(test):
        sys.exit(f"the export has {len(tgt_test)} test images, --test-limit gives {len(test)}: "
                 "export with the same --test-limit")
    tgt_test_y = tgt_test_y.astype(np.int64)
    print(f"torch {torch.__version__}, {a.threads} thread(s); source {len(src)}, target "
          f"{len(tgt)}, test {len(test)}")

    for method in a.methods.split(","):
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        B, t0 = a.batch, time.time()
        every = max(1, a.steps // 10)
        total = 0.0
        for s in range(a.steps):
            p = s / a.steps
            for g in opt.param_groups:
                g["lr"] = 0.01 / (1 + 10 * p) ** 0.75
            si = rng.integers(0, len(src), B)
            xs = src[si]
            if method == "dann":
                xs = np.concatenate([xs, tgt[rng.integers(0, len(tgt), B)]])
            x = torch.from_numpy(xs.astype(np.float32) / 255.0)
            lam = 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
            logits, dom = net(x, lam if method == "dann" else None)
            loss = F.cross_entropy(logits[:B], torch.from_numpy(src_y[si]))
            if method == "dann":
                d = torch.cat([torch.zeros(B, dtype=torch.long), torch.ones(B, dtype=torch.long)])
                loss = loss + F.cross_entropy(dom, d)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            if (s + 1) % every == 0:
                print(f"  {method} step {s + 1}/{a.steps} loss {total / every:.4f} lambda "
                      f"{lam:.3f} ({time.time() - t0:.0f} s)", flush=True)
                total = 0.0
        secs = time.time() - t0
        sa, ta = accuracy(net, src_test, test_y), accuracy(net, tgt_test, tgt_test_y)
        print(f"result protocol=domain impl=torch method={method} source_acc={sa:.4f} "
              f"target_acc={ta:.4f} seconds={secs:.1f}", flush=True)


if __name__ == "__main__":
    main()
