#!/usr/bin/python3
"""Time, size and peak memory of tlearn_model_export_onnx against the model's weights.

Exports torchvision classifiers with random weights (no download) to ONNX with torch,
imports each with libtlearn, then in a fresh process (ctypes on the built libtlearn.so)
imports it again and times tlearn_model_export_onnx_buffer and tlearn_model_export_onnx
(best of N), reporting the file size against the weights' bytes and the peak RSS growth of
the export over the imported model (the packed buffer is one copy of the weights).

usage: /usr/bin/python3 bench/onnx-export.py [--build-dir build] [--models resnet18,vgg11]
       [--repeat 5]
Needs python3-torch, python3-torchvision, and a libtlearn built with ONNX support."""
import argparse
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import ctypes, resource, sys, time
lib = ctypes.CDLL(sys.argv[1])
lib.tlearn_errmsg.restype = ctypes.c_char_p
h = ctypes.c_void_p()
if lib.tlearn_model_import_onnx(ctypes.byref(h), sys.argv[2].encode()):
    sys.exit("import failed: %s" % lib.tlearn_errmsg().decode())
n, total = ctypes.c_size_t(), ctypes.c_size_t()
lib.tlearn_model_param_count(h, ctypes.byref(total), ctypes.byref(n))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best_buf = best_file = 1e9
for _ in range(int(sys.argv[4])):
    data, size = ctypes.c_void_p(), ctypes.c_size_t()
    t = time.perf_counter()
    rc = lib.tlearn_model_export_onnx_buffer(h, 17, ctypes.byref(data), ctypes.byref(size))
    best_buf = min(best_buf, time.perf_counter() - t)
    if rc:
        sys.exit("export failed: %s" % lib.tlearn_errmsg().decode())
    lib.tlearn_free(data)
    t = time.perf_counter()
    rc = lib.tlearn_model_export_onnx(h, sys.argv[3].encode(), 17)
    best_file = min(best_file, time.perf_counter() - t)
    if rc:
        sys.exit("export failed: %s" % lib.tlearn_errmsg().decode())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(total.value, size.value, best_buf, best_file, before, after)
"""

EXPORT = r"""
import sys, torch, torchvision
torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[1])(weights=None).eval()
torch.onnx.export(model, torch.randn(1, 3, 224, 224), sys.argv[2], opset_version=17)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--models", default="resnet18,mobilenet_v3_small,convnext_tiny,vgg11")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    lib = os.path.abspath(os.path.join(a.build_dir, "lib", "libtlearn.so"))
    print("CPU: %s; %d cores visible; indicative on a shared machine"
          % (platform.processor() or platform.machine(), os.cpu_count()))
    print("%-20s %10s %10s %6s %10s %10s %10s" % ("model", "weights MB", "file MB", "ratio",
                                                  "buffer ms", "file ms", "peak +MB"))
    with tempfile.TemporaryDirectory() as d:
        for name in a.models.split(","):
            src, out = os.path.join(d, name + ".onnx"), os.path.join(d, name + ".out.onnx")
            subprocess.run([sys.executable, "-c", EXPORT, name, src], check=True,
                           stderr=subprocess.DEVNULL)
            r = subprocess.run([sys.executable, "-c", CHILD, lib, src, out, str(a.repeat)],
                               check=True, capture_output=True, text=True)
            floats, size, tb, tf, before, after = r.stdout.split()
            wmb = int(floats) * 4 / 1e6
            print("%-20s %10.1f %10.1f %6.3f %10.1f %10.1f %10.1f"
                  % (name, wmb, int(size) / 1e6, int(size) / 1e6 / wmb, float(tb) * 1e3,
                     float(tf) * 1e3, (int(after) - int(before)) / 1e3))


if __name__ == "__main__":
    main()
