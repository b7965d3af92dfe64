"""Export a PyTorch model with torch.onnx.export, import it with libtlearn and check that
the predictions equal torch's (rtol = atol = 1e-5), that layer and tensor names follow the
PyTorch module names, and that the export holds the operators the case is meant to cover.

usage: test_parity.py MODEL OPSET eval|preserve|static
  eval:     torch's default export (batchnorm folded into the convolutions)
  preserve: training=TrainingMode.PRESERVE (BatchNormalization nodes kept)
  static:   as eval with the batch fixed at 1 in the file (predictions use a batch of 7)"""
import os
import sys
import tempfile

import numpy as np
import onnx
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402
import tl  # noqa: E402

# Operators each case must exercise (checked in the exported file).
EXPECT_OPS = {
    "cnn": {"Conv", "Relu", "MaxPool", "Gemm"},
    "mlp": {"Gemm", "Tanh", "BatchNormalization", "LeakyRelu", "MatMul", "Add", "Sigmoid",
            "Clip"},
    "resnet": {"Conv", "Add", "GlobalAveragePool", "Shape", "Gather", "Unsqueeze", "Concat",
               "Reshape", "Gemm"},
    "dwsep": {"Conv", "Clip", "Pad", "AveragePool", "GlobalAveragePool", "Flatten", "Softmax"},
    "tv_resnet18": {"Conv", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"},
    "tv_mobilenet_v2": {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"},
    "tv_mnasnet0_5": {"Conv", "Relu", "Add", "ReduceMean", "Gemm"},
    "gated": {"Conv", "Sigmoid", "Mul", "Add", "HardSigmoid", "Transpose", "ReduceMean"},
    "seq_block": {"MatMul", "Add", "Erf", "Tanh", "Softmax", "Sub", "Mul", "Div", "Sigmoid"},
}
# Layer kinds each case must import to (decomposed forms fused into one layer each), by
# opset: exactly these counts.
EXPECT_KINDS = {
    "gated": lambda opset: {"layernorm": 1, "binary": 1, "scale": 1, "transpose": 0,
                            "activation": 5},
    "seq_block": lambda opset: {"layernorm": 1, "matmul": 1, "softmax": 1, "scale": 1,
                                "binary": 3, "activation": 4},
}


def main():
    name, opset, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    preserve = mode == "preserve"
    model, shape = models.build(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "%s.onnx" % name)
        models.export(model, shape, path, opset, preserve, dynamic_batch=mode != "static")
        ops = {n.op_type for n in onnx.load(path).graph.node}
        # With a fixed batch torch folds the Shape arithmetic itself: Reshape to [1, -1].
        expect = EXPECT_OPS[name] - ({"Shape", "Gather", "Unsqueeze", "Concat"}
                                     if mode == "static" else set())
        missing = expect - ops
        assert not missing, "the export lacks %s (has %s)" % (missing, sorted(ops))
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        if has_bn:
            assert ("BatchNormalization" in ops) == preserve, \
                "BatchNormalization present=%s with mode %s" % ("BatchNormalization" in ops, mode)
        m = tl.Model.import_onnx(path)

    try:
        torch.manual_seed(1)
        x = torch.randn(7, *shape)
        with torch.no_grad():
            want = (model.logits(x) if hasattr(model, "logits") else model(x)).numpy()
        got = m.predict(x.numpy())
        err = np.abs(got - want).max()
        print("%s opset %d %s: %d layers, max |tlearn - torch| = %.3g"
              % (name, opset, mode, len(m.layers()), err))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

        layers = m.layers()
        names = [n for n, _ in layers]
        kinds = [k for _, k in layers]
        for kind, count in EXPECT_KINDS.get(name, lambda o: {})(opset).items():
            have = kinds.count(kind)
            assert have == count, \
                "%d %s layers, expected %d: %s" % (have, kind, count, kinds)
        # Every module holding parameters became a layer of the same name (batchnorm only
        # when it survived the export).
        for mname, mod in model.named_modules():
            if not list(mod.parameters(recurse=False)):
                continue
            if isinstance(mod, nn.BatchNorm2d) and not preserve:
                continue
            assert mname in names, "module %r has no layer of that name in %s" % (mname, names)
        # torch folds BatchNorm2d into the convolution unless preserved; BatchNorm1d after a
        # Linear always stays a BatchNormalization node.
        n_bn2d = sum(isinstance(mo, nn.BatchNorm2d) for mo in model.modules())
        n_bn1d = sum(isinstance(mo, nn.BatchNorm1d) for mo in model.modules())
        assert kinds.count("batchnorm") == (n_bn2d if preserve else 0) + n_bn1d, kinds
        # Without folding, the tensors are exactly PyTorch's state_dict.
        if preserve or not has_bn:
            want_names = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
            assert set(m.tensors()) == want_names, (sorted(m.tensors()), sorted(want_names))
            for k, v in model.state_dict().items():
                if k not in want_names:
                    continue
                t = v.numpy()
                if name == "mlp" and k == "5.weight":
                    t = t.T  # the MatMul weight is [in, out]; dense keeps [out, in]
                np.testing.assert_array_equal(m.get(k), t.reshape(-1), err_msg=k)
        if preserve and has_bn:
            check_bn_momentum(model, m, x)
    finally:
        m.close()


def check_bn_momentum(model, m, x):
    """One training-mode step updates the running statistics as torch does: ONNX's
    momentum (0.9) must have become PyTorch's (0.1). The learning rate is negligible; the
    statistics come from the forward pass alone."""
    import ctypes
    lib, P = tl.lib, tl.P
    o = P()
    tl.check(lib.tlearn_optim_create(ctypes.byref(o), tl.TLEARN_SGD), "optim_create")
    tl.check(lib.tlearn_optim_set(o, tl.TLEARN_OPT_LR, 1e-30), "optim_set")
    tl.check(lib.tlearn_model_set_training(m.h, 1), "set_training")
    xs = np.ascontiguousarray(x.numpy())
    labels = np.zeros(len(xs), np.int32)
    loss = ctypes.c_float()
    tl.check(lib.tlearn_model_train_step(m.h, o, tl.fptr(xs), labels.ctypes.data_as(tl.i32p),
                                         len(xs), ctypes.byref(loss)), "train_step")
    lib.tlearn_optim_destroy(ctypes.byref(o))
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    checked = 0
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            for stat in ("running_mean", "running_var"):
                np.testing.assert_allclose(m.get("%s.%s" % (mname, stat)),
                                           getattr(mod, stat).numpy(), rtol=1e-4, atol=1e-5,
                                           err_msg="%s.%s" % (mname, stat))
            checked += 1
    assert checked, "no batchnorm checked"
    print("running statistics of %d batchnorm layers follow torch's momentum" % checked)


if __name__ == "__main__":
    main()
