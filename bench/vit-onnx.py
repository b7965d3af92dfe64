#!/usr/bin/python3
"""ViT through ONNX: import time and inference time of libtlearn against torch in the same
run (indicative; take figures on an idle machine).

Exports torchvision's vit_b_16 (random weights, no download; or --file an existing export,
whose weights are not torch's here: then only the times mean something),
imports it with tlearn_model_import_onnx, then times batches of --batch images through
tlearn_model_predict and torch (eval, no_grad) at 1 and 2 threads, best of --reps.

usage: /usr/bin/python3 bench/vit-onnx.py [--build-dir build] [--file vit.onnx] [--batch 8]
Needs python3-torch, python3-torchvision and a libtlearn built with ONNX support."""
import argparse
import ctypes
import os
import platform
import tempfile
import time

import numpy as np
import torch
import torchvision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--file")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    lib = ctypes.CDLL(os.path.join(a.build_dir, "lib", "libtlearn.so"))
    lib.tlearn_errmsg.restype = ctypes.c_char_p
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    tmp = tempfile.TemporaryDirectory()
    path = a.file or os.path.join(tmp.name, "vit_b_16.onnx")
    if not a.file:
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), path, opset_version=17)
    h = ctypes.c_void_p()
    t0 = time.perf_counter()
    rc = lib.tlearn_model_import_onnx(ctypes.byref(h), path.encode())
    t_import = time.perf_counter() - t0
    if rc:
        raise SystemExit(lib.tlearn_errmsg().decode())
    print("cpu: %s; import of %.0f MB: %.2f s" % (platform.processor() or platform.machine(),
                                                 os.path.getsize(path) / 1e6, t_import))
    x = np.random.default_rng(0).normal(size=(a.batch, 3, 224, 224)).astype(np.float32)
    out = np.empty((a.batch, 1000), np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    for threads in (1, 2):
        lib.tlearn_model_set_threads(h, threads)
        torch.set_num_threads(threads)
        best_t, best_p = 1e9, 1e9
        for _ in range(a.reps):
            t0 = time.perf_counter()
            lib.tlearn_model_predict(h, x.ctypes.data_as(fp), ctypes.c_size_t(a.batch),
                                     out.ctypes.data_as(fp), ctypes.c_size_t(out.size))
            best_t = min(best_t, time.perf_counter() - t0)
            with torch.no_grad():
                t0 = time.perf_counter()
                want = model(torch.from_numpy(x)).numpy()
                best_p = min(best_p, time.perf_counter() - t0)
        diff = "n/a (--file)" if a.file else "%.2g" % np.abs(out - want).max()
        print("threads %d: batch %d: tlearn %.3f s, torch %.3f s (%.2fx); max |diff| %s"
              % (threads, a.batch, best_t, best_p, best_p / best_t, diff))
    lib.tlearn_model_destroy(ctypes.byref(h))


if __name__ == "__main__":
    main()
