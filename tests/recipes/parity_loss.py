"""Cross-entropy with class weights and label smoothing against
torch.nn.functional.cross_entropy(weight=, label_smoothing=) (PyTorch 1.13): the loss and
the input gradient of a linear model, through the public C API (ctypes). The model is a
dense layer whose weights are copied to torch. Exits non-zero on a mismatch; fails, never
skips, without torch."""
import ctypes
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

lib = ctypes.CDLL(os.environ['TLEARN_LIBRARY'])
lib.tlearn_errmsg.restype = ctypes.c_char_p
lib.tlearn_model_set_label_smoothing.argtypes = [ctypes.c_void_p, ctypes.c_float]
fp = ctypes.POINTER(ctypes.c_float)


def ok(rc, what):
    if rc != 0:
        raise RuntimeError('%s failed (%d): %s' % (what, rc, lib.tlearn_errmsg().decode()))


def P(a):
    return a.ctypes.data_as(fp)


def case(name, n, features, classes, weight, smoothing, seed):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, features)).astype(np.float32)
    y = g.integers(0, classes, n).astype(np.int32)
    m = ctypes.c_void_p()
    ok(lib.tlearn_model_create(ctypes.byref(m), features, 1, 1), 'create')
    ok(lib.tlearn_model_add_dense(m, b'fc', classes), 'dense')
    W = (g.standard_normal((classes, features)) * 2).astype(np.float32)
    b = g.standard_normal(classes).astype(np.float32)
    ok(lib.tlearn_model_set_tensor(m, b'fc.weight', P(W), ctypes.c_size_t(W.size)), 'set W')
    ok(lib.tlearn_model_set_tensor(m, b'fc.bias', P(b), ctypes.c_size_t(b.size)), 'set b')
    if weight is not None:
        w = np.asarray(weight, np.float32)
        ok(lib.tlearn_model_set_class_weights(m, P(w), ctypes.c_size_t(classes)), 'weights')
    ok(lib.tlearn_model_set_label_smoothing(m, smoothing), 'smoothing')
    loss = ctypes.c_float()
    dx = np.zeros_like(x)
    ok(lib.tlearn_model_compute_gradients(m, P(x), y.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                          ctypes.c_size_t(n), ctypes.byref(loss), P(dx),
                                          ctypes.c_size_t(dx.size)), 'gradients')
    gW = np.zeros_like(W)
    ok(lib.tlearn_model_get_grad(m, b'fc.weight', P(gW), ctypes.c_size_t(W.size)), 'grad')
    ev = ctypes.c_float()
    ok(lib.tlearn_model_evaluate(m, P(x), y.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                 ctypes.c_size_t(n), ctypes.byref(ev), None), 'evaluate')
    lib.tlearn_model_destroy(ctypes.byref(m))

    tx = torch.from_numpy(x).requires_grad_()
    tW = torch.from_numpy(W).requires_grad_()
    logits = tx @ tW.T + torch.from_numpy(b)
    tw = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    tl = F.cross_entropy(logits, torch.from_numpy(y).long(), weight=tw,
                         label_smoothing=smoothing)
    tl.backward()
    bad = []
    for what, got, want in (('loss', np.float32(loss.value), tl.item()),
                            ('evaluate loss', np.float32(ev.value), tl.item()),
                            ('input gradient', dx, tx.grad.numpy()),
                            ('weight gradient', gW, tW.grad.numpy())):
        if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            err = np.max(np.abs(np.asarray(got) - np.asarray(want)))
            bad.append('%s differs by %.3g' % (what, err))
    print('%-34s %s' % (name, '; '.join(bad) if bad else 'ok'))
    return not bad


CASES = [
    ('plain', 16, 5, 4, None, 0.0, 1),
    ('label smoothing 0.1', 16, 5, 4, None, 0.1, 2),
    ('class weights', 24, 7, 5, [0.5, 2.0, 1.0, 0.1, 3.0], 0.0, 3),
    ('weights + smoothing 0.25', 32, 6, 5, [1.5, 0.2, 1.0, 4.0, 0.7], 0.25, 4),
    ('a zero weight + smoothing 1.0', 20, 4, 3, [0.0, 1.0, 2.0], 1.0, 5),
    ('10 classes, smoothing 0.05', 64, 12, 10, [1 + i / 10 for i in range(10)], 0.05, 6),
]
if not all([case(*c) for c in CASES]):
    sys.exit('cross-entropy differs from torch')
print('all %d cross-entropy cases match torch' % len(CASES))
