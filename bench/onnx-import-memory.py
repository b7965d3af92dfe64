#!/usr/bin/python3
"""Peak memory of tlearn_model_import_onnx against the file's size.

Exports torchvision classifiers with random weights (no download) to a temporary folder,
then imports each in a fresh process (ctypes on the built libtlearn.so) and reads that
process's peak RSS (ru_maxrss) before and after the import. Reports the peak growth over
the process before the import, and the ratio to the file size (target: <= 1.5x).

usage: /usr/bin/python3 bench/onnx-import-memory.py [--build-dir build] [--models vgg11,resnet50]
Needs python3-torch, python3-torchvision, and a libtlearn built with ONNX support."""
import argparse
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import ctypes, resource, sys
lib = ctypes.CDLL(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
h = ctypes.c_void_p()
lib.tlearn_errmsg.restype = ctypes.c_char_p
rc = lib.tlearn_model_import_onnx(ctypes.byref(h), sys.argv[2].encode())
if rc:
    sys.exit("import failed: %d %s" % (rc, lib.tlearn_errmsg().decode()))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


# Exported in a process of its own: Linux keeps ru_maxrss across fork and exec, so the
# importing processes must descend from one that never held torch.
EXPORT = r"""
import sys, torch, torchvision
torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[1])(weights=None).eval()
torch.onnx.export(model, torch.randn(1, 3, 224, 224), sys.argv[2], opset_version=13)
print(torch.__version__, torchvision.__version__)
"""


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--models", default="vgg11,resnet50")
    a = ap.parse_args()
    lib = os.path.join(a.build_dir, "lib", "libtlearn.so")
    if not os.path.exists(lib):
        sys.exit("no %s: build first" % lib)
    print("# cpu %s, %d cpus" % (cpu_name(), os.cpu_count()))
    print("%-10s %10s %12s %12s %7s" % ("model", "file MB", "before MB", "peak+ MB", "ratio"))
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            path = os.path.join(tmp, name + ".onnx")
            e = subprocess.run([sys.executable, "-c", EXPORT, name, path], capture_output=True,
                               text=True)
            if e.returncode:
                sys.exit("export of %s failed (needs python3-torch and python3-torchvision): "
                         "%s" % (name, e.stderr.strip()[-400:]))
            size = os.path.getsize(path) / 2**20
            r = subprocess.run([sys.executable, "-c", CHILD, lib, path], capture_output=True,
                               text=True)
            if r.returncode:
                print("%-10s import failed: %s" % (name, r.stderr.strip()))
                status = 1
                continue
            before, after = (int(v) / 1024 for v in r.stdout.split())
            grow = after - before
            print("%-10s %10.0f %12.0f %12.0f %6.2fx" % (name, size, before, grow, grow / size))
            os.remove(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
