"""Shared by the adapters' PyTorch parity scripts: the library through ctypes (path in
TLEARN_LIBRARY) with the argument types they use, checks that record failures, tensor
access, and safetensors written and read by hand (the format is small; no package needed)."""
import ctypes, json, os, struct

import numpy as np

lib = ctypes.CDLL(os.environ["TLEARN_LIBRARY"])
lib.tlearn_errmsg.restype = ctypes.c_char_p
F = ctypes.POINTER(ctypes.c_float)
I32 = ctypes.POINTER(ctypes.c_int32)
lib.tlearn_lora_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                ctypes.c_float, ctypes.c_float, ctypes.c_uint]
lib.tlearn_model_predict.argtypes = [ctypes.c_void_p, F, ctypes.c_size_t, F, ctypes.c_size_t]
lib.tlearn_model_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p, F, ctypes.c_size_t]
lib.tlearn_model_set_tensor.argtypes = lib.tlearn_model_get_tensor.argtypes
lib.tlearn_model_get_grad.argtypes = lib.tlearn_model_get_tensor.argtypes
lib.tlearn_model_compute_gradients.argtypes = [ctypes.c_void_p, F, I32, ctypes.c_size_t, F, F,
                                               ctypes.c_size_t]
lib.tlearn_model_train_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, F, I32,
                                        ctypes.c_size_t, F]
lib.tlearn_optim_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_double]
lib.tlearn_model_set_seed.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
for fn in ("tlearn_lora_save", "tlearn_lora_load", "tlearn_lora_merge", "tlearn_lora_unmerge"):
    getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_char_p] + \
        ([ctypes.c_char_p] if fn in ("tlearn_lora_save", "tlearn_lora_load") else [])

failures = []


def ok(rc, what):
    if rc != 0:
        raise SystemExit("%s failed: %d %s" % (what, rc, lib.tlearn_errmsg().decode()))


def fp(a):
    return a.ctypes.data_as(F)


def close(tag, got, want, rtol=1e-5, atol=1e-6):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        failures.append(tag)
        print("FAIL %s: max diff %g" % (tag, np.max(np.abs(got - want)) if got.shape == want.shape else -1))
    else:
        print("ok   %s" % tag)


def get(m, name, shape):
    a = np.zeros(shape, np.float32)
    ok(lib.tlearn_model_get_tensor(m, name.encode(), fp(a), a.size), "get " + name)
    return a


def set_(m, name, a):
    a = np.ascontiguousarray(a, np.float32)
    ok(lib.tlearn_model_set_tensor(m, name.encode(), fp(a), a.size), "set " + name)


def grad(m, name, shape):
    a = np.zeros(shape, np.float32)
    ok(lib.tlearn_model_get_grad(m, name.encode(), fp(a), a.size), "grad " + name)
    return a


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32"
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], "<f4").reshape(v["shape"])
    return out


def write_safetensors(path, tensors):
    head, off, blobs = {}, 0, []
    for k, a in tensors.items():
        a = np.ascontiguousarray(a, "<f4")
        head[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def finish():
    import sys
    if failures:
        print("FAILED:", failures)
        sys.exit(1)
