"""Transfer learning on an imported ONNX model, end to end on real data.

A PyTorch CNN (the reference conv32-conv64-fc128-fc10) is trained briefly on Fashion-MNIST
classes 0-4, exported to ONNX and imported into libtlearn. The backbone (every layer up to
the 128-unit ReLU) is frozen, the head is replaced by a fresh 5-class dense layer, and the
head is fine-tuned on classes 5-9. Checks: the import agrees with torch, the held-out loss
on the new task falls, frozen tensors are bit-for-bit unchanged, the new head moved, and
only the head counts as trainable."""
import ctypes
import gzip
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402
import tl  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"
TLEARN_OPT_MOMENTUM = 2


def idx(name):
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        sys.exit("Fashion-MNIST is missing: %s (Debian package dataset-fashion-mnist)" % path)
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split):
    x = idx("%s-images-idx3-ubyte.gz" % split).astype(np.float32) / 255.0
    y = idx("%s-labels-idx1-ubyte.gz" % split).astype(np.int32)
    return x.reshape(-1, 1, 28, 28), y


def main():
    torch.set_num_threads(1)
    xtr, ytr = load("train")
    xte, yte = load("t10k")
    old = ytr < 5
    new_tr, new_te = ytr >= 5, yte >= 5
    xa, ya = xtr[old][:3200], ytr[old][:3200]
    xb, yb = xtr[new_tr][:1280], ytr[new_tr][:1280] - 5
    xv, yv = xte[new_te][:500], yte[new_te][:500] - 5

    # Pretrain on the old task in torch.
    model, shape = models.build("cnn")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for s in range(0, len(xa), 64):
        opt.zero_grad()
        loss = F.cross_entropy(model(torch.from_numpy(xa[s:s + 64])),
                               torch.from_numpy(ya[s:s + 64]).long())
        loss.backward()
        opt.step()
    model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cnn.onnx")
        models.export(model, shape, path, 13, preserve_bn=False)
        m = tl.Model.import_onnx(path)
    try:
        with torch.no_grad():
            want = model(torch.from_numpy(xv[:16])).numpy()
        np.testing.assert_allclose(m.predict(xv[:16]), want, rtol=1e-5, atol=1e-5)

        lib, P = tl.lib, tl.P
        f = P()
        tl.check(lib.tlearn_freeze_create(ctypes.byref(f)), "freeze_create")
        tl.check(lib.tlearn_freeze_until(f, b"8"), "freeze_until")
        tl.check(lib.tlearn_model_replace_head(m.h, b"8", 5), "replace_head")
        tl.check(lib.tlearn_model_apply_freeze(m.h, f), "apply_freeze")
        lib.tlearn_freeze_destroy(ctypes.byref(f))

        total, trainable = ctypes.c_size_t(), ctypes.c_size_t()
        tl.check(lib.tlearn_model_param_count(m.h, ctypes.byref(total), ctypes.byref(trainable)),
                 "param_count")
        assert trainable.value == 128 * 5 + 5, trainable.value
        frozen_names = [n for n in m.tensors() if not n.startswith("head.")]
        assert len(frozen_names) == 6, frozen_names  # conv 0 and 3, dense 7: weight + bias
        before = {n: m.get(n).copy() for n in m.tensors()}

        def held_out_loss():
            loss, acc = ctypes.c_float(), ctypes.c_float()
            tl.check(lib.tlearn_model_evaluate(m.h, tl.fptr(xv), yv.ctypes.data_as(tl.i32p),
                                               len(yv), ctypes.byref(loss), ctypes.byref(acc)),
                     "evaluate")
            return loss.value, acc.value

        loss0, acc0 = held_out_loss()
        o = P()
        tl.check(lib.tlearn_optim_create(ctypes.byref(o), tl.TLEARN_SGD), "optim_create")
        tl.check(lib.tlearn_optim_set(o, tl.TLEARN_OPT_LR, 0.05), "optim_set")
        tl.check(lib.tlearn_optim_set(o, TLEARN_OPT_MOMENTUM, 0.9), "optim_set")
        step_loss = ctypes.c_float()
        for s in list(range(0, len(xb), 32)) * 2:  # two epochs of 40 steps
            xs = np.ascontiguousarray(xb[s:s + 32])
            ys = np.ascontiguousarray(yb[s:s + 32])
            tl.check(lib.tlearn_model_train_step(m.h, o, tl.fptr(xs), ys.ctypes.data_as(tl.i32p),
                                                 len(ys), ctypes.byref(step_loss)), "train_step")
        lib.tlearn_optim_destroy(ctypes.byref(o))
        loss1, acc1 = held_out_loss()
        print("held-out loss %.4f -> %.4f, accuracy %.3f -> %.3f" % (loss0, loss1, acc0, acc1))
        assert loss1 < 0.7 * loss0, (loss0, loss1)
        assert acc1 > acc0 + 0.2, (acc0, acc1)
        for n in frozen_names:
            assert np.array_equal(m.get(n), before[n]), "frozen tensor %s moved" % n
        assert not np.array_equal(m.get("head.weight"), before["head.weight"]), "head did not train"
    finally:
        m.close()


if __name__ == "__main__":
    main()
