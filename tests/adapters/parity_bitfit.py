"""BitFit parity with PyTorch through the public C API (ctypes): a conv / linear / layernorm
network whose weights are frozen tensor by tensor (tlearn_freeze_tensors; in torch
requires_grad_(False) on every weight) trains its biases for 5 SGD-with-momentum steps and
5 AdamW steps; every bias matches torch and every weight stays bit-identical. Fails (never
skips) without torch."""
import ctypes, os, sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adapters_common import lib, ok, fp, close, get, failures, finish, I32  # noqa: E402

lib.tlearn_model_add_layernorm.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                           ctypes.c_float, ctypes.c_int]
lib.tlearn_freeze_match.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
lib.tlearn_freeze_tensors.argtypes = lib.tlearn_freeze_match.argtypes

N, HID, CLS = 8, 6, 3


# library name -> torch parameter path, shape
TENSORS = [("conv.weight", "0.weight", (3, 2, 3, 3)), ("conv.bias", "0.bias", (3,)),
           ("fc1.weight", "3.weight", (HID, 75)), ("fc1.bias", "3.bias", (HID,)),
           ("ln.weight", "4.weight", (HID,)), ("ln.bias", "4.bias", (HID,)),
           ("fc2.weight", "5.weight", (CLS, HID)), ("fc2.bias", "5.bias", (CLS,))]


def pair(kind, settings):
    m = ctypes.c_void_p()
    ok(lib.tlearn_model_create(ctypes.byref(m), 2, 5, 5), "create")
    ok(lib.tlearn_model_set_seed(m, 11), "seed")
    ok(lib.tlearn_model_add_conv2d(m, b"conv", 3, 3, 1, 1, 1), "conv")
    ok(lib.tlearn_model_add_activation(m, b"act", 1, ctypes.c_float(0)), "act")
    ok(lib.tlearn_model_add_flatten(m, b"flat"), "flat")
    ok(lib.tlearn_model_add_dense(m, b"fc1", HID), "fc1")
    ok(lib.tlearn_model_add_layernorm(m, b"ln", 1, 1e-5, 1), "ln")
    ok(lib.tlearn_model_add_dense(m, b"fc2", CLS), "fc2")
    f = ctypes.c_void_p()
    ok(lib.tlearn_freeze_create(ctypes.byref(f)), "freeze")
    ok(lib.tlearn_freeze_match(f, b"*", 1), "match")
    ok(lib.tlearn_freeze_tensors(f, b"*bias", 0), "tensors")
    ok(lib.tlearn_model_apply_freeze(m, f), "apply")
    lib.tlearn_freeze_destroy(ctypes.byref(f))
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(75, HID),
                              torch.nn.LayerNorm(HID), torch.nn.Linear(HID, CLS))
    params = dict(net.named_parameters())
    with torch.no_grad():
        for lname, tname, shape in TENSORS:
            params[tname].copy_(torch.from_numpy(get(m, lname, shape)))
    for tname, p in params.items():  # BitFit in torch: the weights take no gradient
        p.requires_grad_(tname.endswith("bias"))
    o = ctypes.c_void_p()
    ok(lib.tlearn_optim_create(ctypes.byref(o), kind), "optim")
    for key, val in settings:
        ok(lib.tlearn_optim_set(o, key, val), "optim_set")
    return m, o, net


def run(tag, kind, settings, topt_fn):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (N, 2, 5, 5)).astype(np.float32)
    y = (np.arange(N) % CLS).astype(np.int32)
    m, o, net = pair(kind, settings)
    w0 = {n: get(m, n, s) for n, s, in [(a, c) for a, _, c in TENSORS] if n.endswith("weight")}
    topt = topt_fn([p for p in net.parameters() if p.requires_grad])
    lo = ctypes.c_float()
    for _ in range(5):
        ok(lib.tlearn_model_train_step(m, o, fp(x), y.ctypes.data_as(I32), N, ctypes.byref(lo)),
           "train_step")
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y).long()).backward()
        topt.step()
    params = dict(net.named_parameters())
    for lname, tname, shape in TENSORS:
        got = get(m, lname, shape)
        if lname.endswith("weight"):
            if not np.array_equal(got, w0[lname]):
                failures.append(tag + " " + lname)
                print("FAIL %s %s changed" % (tag, lname))
            else:
                print("ok   %s %s bit-identical" % (tag, lname))
        else:
            close("%s %s after 5 steps" % (tag, lname), got, params[tname].detach().numpy(),
                  rtol=1e-4, atol=1e-5)
    lib.tlearn_optim_destroy(ctypes.byref(o))
    lib.tlearn_model_destroy(ctypes.byref(m))


def main():
    # SGD (1): lr 0.1, momentum 0.9, weight decay 1e-3
    run("SGD", 1, [(1, 0.1), (2, 0.9), (5, 1e-3)],
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3))
    # AdamW (3): lr 0.05, weight decay 0.01
    run("AdamW", 3, [(1, 0.05), (5, 0.01)],
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.01))
    finish()


main()
