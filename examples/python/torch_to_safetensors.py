"""Train a small PyTorch CNN on Fashion-MNIST briefly and write its state_dict as a
safetensors file, for examples/load-pytorch.c.

safetensors is simple enough to write without the `safetensors` package: an 8-byte
little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
raw little-endian tensor bytes. Run with Debian's Python (it has torch): /usr/bin/python3.

Usage: torch_to_safetensors.py OUT.safetensors [--steps N]
Prints `torch accuracy=A` on the first 2,000 test images, to compare with the C program.
"""
import argparse
import json
import struct

import numpy as np
import torch
from torch import nn

from fmnist import DATA, load  # the IDX reader (gzip + numpy); no libtlearn needed


class Net(nn.Module):
    """features: conv-bn-relu-pool; classifier: linear. The state_dict names are
    features.0.weight, features.1.running_var, classifier.bias, ..."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def write_safetensors(path, state_dict):
    dtypes = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}
    header, chunks, offset = {}, [], 0
    for name, t in state_dict.items():
        code, np_dtype = dtypes[t.dtype]
        raw = t.detach().cpu().contiguous().numpy().astype(np_dtype).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, y_train = load("train", DATA)
    x_test, y_test = load("t10k", DATA)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    net.train()
    for _ in range(args.steps):
        idx = rng.integers(0, len(y_train), 64)
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x_train[idx])),
                                           torch.from_numpy(y_train[idx]).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(x_test[:2000])).argmax(1).numpy()
    print("torch accuracy=%.4f" % (pred == y_test[:2000]).mean())
    write_safetensors(args.out, net.state_dict())
    print("wrote", args.out)


if __name__ == "__main__":
    main()
