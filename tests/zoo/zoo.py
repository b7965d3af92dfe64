"""One torchvision classification architecture, exported to ONNX as a user would
(random weights, model.eval(), torch.onnx.export with only opset_version set), imported by
libtlearn, compared with torch on logits, then fine-tuned: the head replaced, everything up
to the last block frozen, a few SGD steps with a finite loss and frozen tensors unchanged
bit for bit.

Usage: zoo.py ARCH OPSET SIZE      (ARCH: a torchvision.models builder name)
Runs through meson (TLEARN_LIBRARY names the built library); a missing torchvision fails
with the package name, never skips."""
import copy
import ctypes
import os
import sys
import tempfile

import numpy as np

try:
    import torch
    import torchvision
except ImportError as e:
    sys.exit("zoo: %s: install the Debian packages python3-torch and python3-torchvision" % e)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "onnx"))
import tl  # noqa: E402  (ctypes on the built library)

def build(arch, size):
    """The architecture with random weights, BatchNorm statistics taken from a few random
    batches (a freshly built network's unit statistics make many networks' logits vanish,
    which would make any comparison pass), in evaluation mode. The statistics are the
    plain averages over those batches (momentum None while calibrating): a running average
    that keeps most of the initial (0, 1) lets activations grow layer after layer in deep
    networks (inception_v3's logits reached 1e5), where an elementwise rtol means little.
    The last layer with weights is then scaled so that the logits have a standard
    deviation of about 1: some initialisations (MobileNetV3's N(0, 0.01) classifier) leave
    them near 1e-4, where the absolute tolerance alone would pass anything. A positive
    factor on the last layer commutes with a ReLU and an average pool after it
    (SqueezeNet's classifier)."""
    kwargs = {"weights": None}
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(**kwargs)
    bns = [b for b in model.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [b.momentum for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3 if bns else 0):  # vgg, alexnet: nothing to calibrate
            model(torch.randn(4, 3, size, size))
    for b, mom in zip(bns, saved):
        b.momentum = mom
    model.eval()
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        spread = model(torch.randn(4, 3, size, size)).std().item()
        if spread > 0:
            last.weight /= spread
            if last.bias is not None:
                last.bias /= spread
    return model


def last_frozen(m):
    """The last layer to freeze: the one before the last block, where a block is the group
    of layers whose names share their first two components ("layer4.1", "features.18",
    "features.denseblock4"), taken among the layers with parameters before the head: the
    last group with at least two of them (a lone final norm, DenseNet's features.norm5 or
    SqueezeNet's classifier conv, is not a block)."""
    params = {t.rsplit(".", 1)[0] for t in m.tensors()}
    names = [n for n, _ in m.layers()][:-1]
    key = lambda n: ".".join(n.split(".")[:2])  # noqa: E731
    with_params = [key(n) for n in names if n in params]
    groups = [g for g in dict.fromkeys(reversed(with_params)) if with_params.count(g) >= 2]
    group = groups[0] if groups else with_params[-1]
    first = next(i for i, n in enumerate(names) if key(n) == group)
    return names[max(first - 1, 0)]


def main():
    arch, opset, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = build(arch, size)
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = model(x).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(model, x, path, opset_version=opset)
        m = tl.Model.import_onnx(path)
    try:
        got = m.predict(x.numpy())
        err = np.abs(got - want).max()
        print("%s opset %d size %d: %d layers, max |tlearn - torch| = %.3g (logits up to %.3g)"
              % (arch, opset, size, len(m.layers()), err, np.abs(want).max()))
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            # Deep random networks amplify float32 rounding (inception_v3: torch's own
            # logits differ from float64 by more than the tolerance). Then every tlearn
            # logit must be as close to the float64 answer as torch's float32 logits are
            # at worst (twice that, plus the tolerance).
            with torch.no_grad():
                exact = copy.deepcopy(model).double()(x.double()).numpy()
            budget = np.abs(want - exact)
            err64 = np.abs(got - exact)
            print("beyond rtol 1e-4/atol 1e-5; against float64: torch float32 %.3g, tlearn "
                  "%.3g" % (budget.max(), err64.max()))
            np.testing.assert_array_less(err64, 2 * budget.max() + 1e-4 * np.abs(exact) + 1e-5)

        # Fine-tune: a new 5-class head after the layer before the classifier, the
        # backbone frozen up to the last block.
        names = [n for n, _ in m.layers()]
        cut = names[-2] if len(names) > 1 else names[-1]
        tl.check(tl.lib.tlearn_model_replace_head(m.h, cut.encode(), 5), "replace_head")
        freeze_to = last_frozen(m)
        f = tl.P()
        tl.check(tl.lib.tlearn_freeze_create(ctypes.byref(f)), "freeze_create")
        tl.check(tl.lib.tlearn_freeze_until(f, freeze_to.encode()), "freeze_until")
        tl.check(tl.lib.tlearn_model_apply_freeze(m.h, f), "apply_freeze")
        tl.lib.tlearn_freeze_destroy(ctypes.byref(f))
        frozen = {}
        for name in m.tensors():
            layer = name.rsplit(".", 1)[0]
            flag = ctypes.c_int()
            tl.check(tl.lib.tlearn_model_layer_frozen(m.h, layer.encode(), ctypes.byref(flag)),
                     "layer_frozen")
            if flag.value:
                frozen[name] = m.get(name).copy()
        assert frozen, "nothing frozen up to %s" % freeze_to
        o = tl.P()
        tl.check(tl.lib.tlearn_optim_create(ctypes.byref(o), tl.TLEARN_SGD), "optim_create")
        tl.check(tl.lib.tlearn_optim_set(o, tl.TLEARN_OPT_LR, 1e-3), "optim_set")
        xs = np.ascontiguousarray(torch.randn(4, 3, size, size).numpy())
        ys = np.array([0, 1, 2, 3], np.int32)
        losses = []
        for _ in range(3):
            loss = ctypes.c_float()
            tl.check(tl.lib.tlearn_model_train_step(m.h, o, tl.fptr(xs),
                                                    ys.ctypes.data_as(tl.i32p), 4,
                                                    ctypes.byref(loss)), "train_step")
            losses.append(loss.value)
        tl.lib.tlearn_optim_destroy(ctypes.byref(o))
        assert all(np.isfinite(losses)), losses
        # frozen tensors bit for bit (BatchNorm running statistics are buffers that
        # training-mode steps may update unless frozen: compare parameters only)
        changed = [k for k, v in frozen.items()
                   if not k.endswith(("running_mean", "running_var"))
                   and not np.array_equal(m.get(k), v)]
        assert not changed, "frozen tensors changed: %s" % changed[:5]
        print("fine-tune: head after %s, frozen up to %s (%d tensors), losses %s"
              % (cut, freeze_to, len(frozen), ["%.4f" % l for l in losses]))
    finally:
        m.close()


if __name__ == "__main__":
    main()
