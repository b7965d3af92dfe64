"""safetensors against real PyTorch models (run by Debian's /usr/bin/python3).

Import: torch models written to safetensors (the header built by hand with struct + json,
as Debian has no safetensors package) in F32, F16 and BF16, loaded by libtlearn through
st_tool; predictions must equal torch's (with the same rounded weights) within 1e-5.
Export: libtlearn's file read back by a tiny reader into torch tensors, loaded with
load_state_dict, predictions equal libtlearn's within 1e-5.
usage: test_safetensors_torch.py PATH/TO/st_tool
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

TOOL = sys.argv[1]
N = 16


def make(arch):
    torch.manual_seed(1234 if arch == "mlp" else 4321)
    nn = torch.nn
    if arch == "mlp":
        m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 10))
        shape = (N, 20)
    else:
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
        with torch.no_grad():  # non-trivial BN state
            m[1].running_mean.uniform_(-0.5, 0.5)
            m[1].running_var.uniform_(0.5, 2.0)
            m[1].weight.uniform_(0.5, 1.5)
            m[1].bias.uniform_(-0.3, 0.3)
            m[1].num_batches_tracked.fill_(17)
        shape = (N, 3, 8, 8)
    m.eval()
    x = torch.rand(shape) * 2 - 1
    return m, x


DT = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
      "I64": (torch.int64, 8)}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, tensor, dtype name)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, t, dt in tensors:
        t = t.detach().contiguous().to(DT[dt][0])
        if dt == "BF16":  # numpy has no bfloat16: move the bits as int16
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    """A tiny reader: header JSON, then float32 tensors by offsets."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode())
    body = data[8 + n:]
    meta = header.pop("__metadata__", None)
    out, end = {}, 0
    for name, info in header.items():
        assert info["dtype"] == "F32", info
        b, e = info["data_offsets"]
        arr = np.frombuffer(body[b:e], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
        end = max(end, e)
    assert end == len(body), "data does not end at the end of the file"
    return meta, out, n


def run_tool(*args):
    r = subprocess.run([TOOL] + [str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"st_tool {' '.join(map(str, args))} failed: {r.stderr}")


def check_close(got, want, what):
    err = float(np.max(np.abs(got - want)))
    ok = np.allclose(got, want, rtol=1e-5, atol=1e-5)
    print(f"{what}: max |diff| = {err:.3g}")
    if not ok:
        raise SystemExit(f"FAIL {what}: predictions differ by {err}")


def test_import(tmp, arch, dt):
    m, x = make(arch)
    sd = m.state_dict()
    entries = []
    for name, t in sd.items():
        entries.append((name, t, "I64" if name.endswith("num_batches_tracked") else dt))
    path = os.path.join(tmp, f"{arch}-{dt}.safetensors")
    write_safetensors(path, entries, {"format": "pt"})
    # the reference: torch with the weights rounded to the file's dtype, computed in fp32
    rounded = {k: (v.to(DT[dt][0]).to(torch.float32) if v.is_floating_point() else v)
               for k, v in sd.items()}
    m.load_state_dict(rounded)
    with torch.no_grad():
        want = m(x).numpy()
    xpath, ypath = os.path.join(tmp, "x.f32"), os.path.join(tmp, "y.f32")
    x.numpy().astype("<f4").tofile(xpath)
    run_tool("predict", arch, path, xpath, N, ypath)
    got = np.fromfile(ypath, dtype="<f4").reshape(want.shape)
    check_close(got, want, f"import {arch} {dt}")


def test_export(tmp, arch):
    m, x = make(arch)
    path = os.path.join(tmp, f"export-{arch}.safetensors")
    xpath, ypath = os.path.join(tmp, "x.f32"), os.path.join(tmp, "y.f32")
    x.numpy().astype("<f4").tofile(xpath)
    run_tool("export", arch, 5, path, xpath, N, ypath)
    meta, tensors, hlen = read_safetensors(path)
    assert meta == {"format": "pt"}, meta
    assert hlen % 8 == 0, hlen
    if arch == "cnn":  # libtlearn keeps no BN step counter; torch wants one
        tensors["1.num_batches_tracked"] = torch.tensor(0)
    m.load_state_dict(tensors, strict=True)
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    got = np.fromfile(ypath, dtype="<f4").reshape(want.shape)
    check_close(got, want, f"export {arch}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("mlp", "cnn"):
            for dt in ("F32", "F16", "BF16"):
                test_import(tmp, arch, dt)
            test_export(tmp, arch)
    print("ok: 8 checks")


if __name__ == "__main__":
    main()
