"""Regenerate the seed corpus of the ONNX fuzzer (tests/onnx/corpus): tiny PyTorch
exports covering every supported operator path, a few hundred bytes to a few KB each.
usage: /usr/bin/python3 make_corpus.py OUTDIR"""
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402


class TinyRes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))) + x
        y = self.pool(y)
        return self.fc(y.view(y.size(0), -1))


class TinyDW(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(2, 2, 3, 1, 1, groups=2)
        self.act = nn.ReLU6()
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        x = self.gap(self.pool(self.act(self.dw(x))))
        return torch.softmax(self.fc(torch.flatten(x, 1)), 1)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cases = [
        ("mlp-13", nn.Sequential(nn.Linear(4, 3), nn.Tanh(), models.MatMulAdd(3, 3),
                                 nn.LeakyReLU(0.2), nn.Linear(3, 2), nn.Sigmoid()), (4,), 13, False),
        ("cnn-11", nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(2 * 3 * 3, 2)), (1, 6, 6), 11, False),
        ("res-bn-13", TinyRes(), (2, 4, 4), 13, True),
        ("res-folded-15", TinyRes(), (2, 4, 4), 15, False),
        ("dw-17", TinyDW(), (2, 5, 5), 17, True),
    ]
    for name, model, shape, opset, preserve in cases:
        models.export(model.eval(), shape, os.path.join(out, name + ".onnx"), opset, preserve)


if __name__ == "__main__":
    main()
