"""PyTorch models the ONNX tests export, with their input shapes. Weights come from a fixed
seed; batchnorm statistics are made non-trivial so that folding them matters."""
import torch
import torch.nn as nn


def cnn():
    """The reference CNN: conv32-relu-maxpool2-conv64-relu-maxpool2-fc128-relu-fc10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)), (1, 28, 28)


class MatMulAdd(nn.Module):
    """x @ W + b: exported as MatMul followed by Add, not Gemm."""
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.2)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        return torch.matmul(x, self.weight) + self.bias


def mlp():
    """Module 5 is the MatMul + Add one; module 3 a BatchNorm1d (kept by eval exports)."""
    return nn.Sequential(
        nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.LeakyReLU(0.1),
        MatMulAdd(32, 24), nn.Sigmoid(), nn.Linear(24, 16), nn.ReLU6(),
        nn.Dropout(0.3), nn.Linear(16, 5)), (20,)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(y + skip)


class ResNet(nn.Module):
    """A small ResNet; flattens with x.view(x.size(0), -1) so that the export carries the
    Shape/Gather/Unsqueeze/Concat subgraph before Reshape."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.avgpool(self.layer1(x))
        return self.fc(x.view(x.size(0), -1))


def resnet():
    return ResNet(), (3, 16, 16)


class DWSep(nn.Module):
    """Depthwise-separable block (MobileNet style) with both kinds of average pooling, and a
    trailing softmax that the importer drops (logits() is what the import computes)."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(8, 16, 1)
        self.pool1 = nn.AvgPool2d(3, 2, 1)                       # count_include_pad=True
        self.pool2 = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 6)

    def logits(self, x):
        x = self.act(self.bn(self.dw(self.stem(x))))
        x = self.pool2(self.pool1(self.act(self.pw(x))))
        return self.fc(torch.flatten(self.gap(x), 1))

    def forward(self, x):
        return torch.softmax(self.logits(x), 1)


def dwsep():
    return DWSep(), (3, 24, 24)


class LayerScale(nn.Module):
    """A learned per-channel factor (ConvNeXt's layer scale): Mul by an initializer."""
    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(*shape) + 0.5)

    def forward(self, x):
        return x * self.weight


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: permute, layer_norm over C, permute back."""
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Gated(nn.Module):
    """The decomposed forms exporters emit, on images: SiLU (x * sigmoid(x)), a
    squeeze-excitation gate (a (N, C, 1, 1) x (N, C, H, W) Mul), HardSwish (before opset 14
    x * HardSigmoid(x)), HardSigmoid, LayerNorm2d (Transpose, LayerNorm, Transpose) and a
    layer scale."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.act = nn.SiLU()
        self.se_reduce = nn.Conv2d(8, 4, 1)
        self.se_expand = nn.Conv2d(4, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, 1, 1, groups=2)
        self.hs = nn.Hardswish()
        self.hsig = nn.Hardsigmoid()
        self.norm = LayerNorm2d(8, eps=1e-6)
        self.ls = LayerScale((8, 1, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.stem(x))
        g = self.se_expand(self.act(self.se_reduce(x.mean((2, 3), keepdim=True))))
        x = x * torch.sigmoid(g)
        x = self.hs(self.conv(x)) + self.hsig(x)
        x = self.ls(self.norm(x))
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


def gated():
    return Gated(), (3, 10, 12)


class SeqBlock(nn.Module):
    """Channels-last and sequence forms, (N, T, D): Linear over the last axis (MatMul +
    Add), LayerNorm (decomposed before opset 17), erf- and tanh-GELU, a layer scale,
    softmax over the last axis, a product of two activations, and element-wise Sub/Mul/Div
    of activations."""
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(16, 8)
        self.ls = LayerScale((8,))
        self.q = nn.Linear(8, 6)
        self.gate = nn.Linear(8, 8)
        self.gelu_tanh = nn.GELU(approximate="tanh")
        self.head = nn.Linear(6 * 8, 5)

    def forward(self, x):
        x = x + self.ls(self.fc2(self.gelu(self.ln(self.fc1(x)))))
        attn = torch.softmax(self.q(x), -1)          # (N, T, T) with T = 6
        y = torch.matmul(attn, x)                    # (N, T, D)
        g = self.gelu_tanh(self.gate(y))
        y = (y - g) * torch.sigmoid(g) + y / torch.sigmoid(x)
        return self.head(torch.flatten(y, 1))


def seq_block():
    return SeqBlock(), (6, 8)


def torchvision_model(name):
    """A torchvision architecture with random weights (nothing is downloaded) at 64x64."""
    try:
        import torchvision
    except ImportError:
        raise SystemExit("torchvision is missing (Debian package python3-torchvision)")
    return getattr(torchvision.models, name)(weights=None), (3, 64, 64)


MODELS = {"cnn": cnn, "mlp": mlp, "resnet": resnet, "dwsep": dwsep, "gated": gated,
          "seq_block": seq_block,
          "tv_resnet18": lambda: torchvision_model("resnet18"),
          "tv_mobilenet_v2": lambda: torchvision_model("mobilenet_v2"),
          "tv_mnasnet0_5": lambda: torchvision_model("mnasnet0_5")}


def build(name, seed=0):
    torch.manual_seed(seed)
    model, shape = MODELS[name]()
    # Non-trivial batchnorm statistics and affine parameters.
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return model.eval(), shape


def export(model, shape, path, opset, preserve_bn, dynamic_batch=True):
    """Export with a symbolic batch by default; dynamic_batch=False fixes it at 1 (the
    importer must still accept any batch size)."""
    training = (torch.onnx.TrainingMode.PRESERVE if preserve_bn
                else torch.onnx.TrainingMode.EVAL)
    torch.onnx.export(model, torch.randn(1, *shape), path, opset_version=opset,
                      training=training, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic_batch else None)
