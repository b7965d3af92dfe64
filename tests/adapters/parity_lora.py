"""LoRA parity with PyTorch through the public C API (ctypes): the same LoRA modules built by
hand in torch (nn.Linear base + A/B, scale alpha/r), forward, input and LoRA gradients, 20
AdamW steps on the adapters only, and adapter files both ways in PEFT's layout (the
safetensors format written and read by hand here). Fails (never skips) without torch."""
import ctypes, json, os, struct, sys, tempfile

import numpy as np
import torch

lib = ctypes.CDLL(os.environ["TLEARN_LIBRARY"])
lib.tlearn_errmsg.restype = ctypes.c_char_p
F = ctypes.POINTER(ctypes.c_float)
lib.tlearn_lora_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                ctypes.c_float, ctypes.c_float, ctypes.c_uint]
lib.tlearn_model_predict.argtypes = [ctypes.c_void_p, F, ctypes.c_size_t, F, ctypes.c_size_t]
lib.tlearn_model_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p, F, ctypes.c_size_t]
lib.tlearn_model_set_tensor.argtypes = lib.tlearn_model_get_tensor.argtypes
lib.tlearn_model_get_grad.argtypes = lib.tlearn_model_get_tensor.argtypes
lib.tlearn_model_compute_gradients.argtypes = [ctypes.c_void_p, F, ctypes.POINTER(ctypes.c_int32),
                                               ctypes.c_size_t, F, F, ctypes.c_size_t]
lib.tlearn_model_train_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, F,
                                        ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t, F]
lib.tlearn_optim_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_double]
for fn in ("tlearn_lora_save", "tlearn_lora_load"):
    getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]

IN, HID, OUT, N, R, ALPHA = 6, 5, 3, 4, 2, 3.0
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


def base_model():
    m = ctypes.c_void_p()
    ok(lib.tlearn_model_create(ctypes.byref(m), IN, 1, 1), "create")
    ok(lib.tlearn_model_set_seed(m, ctypes.c_uint64(5)), "seed")
    ok(lib.tlearn_model_add_dense(m, b"fc1", HID), "fc1")
    ok(lib.tlearn_model_add_activation(m, b"act", 1, ctypes.c_float(0)), "act")
    ok(lib.tlearn_model_add_dense(m, b"fc2", OUT), "fc2")
    return m


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


class LoRALinear(torch.nn.Module):
    """PEFT's lora.Linear without PEFT: base(x) + B(A(dropout(x))) * alpha / r."""

    def __init__(self, fin, fout):
        super().__init__()
        self.base = torch.nn.Linear(fin, fout)
        self.lora_A = torch.nn.Linear(fin, R, bias=False)
        self.lora_B = torch.nn.Linear(R, fout, bias=False)
        self.scaling = ALPHA / R
        self.base.requires_grad_(False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = LoRALinear(IN, HID), LoRALinear(HID, OUT)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def copy_to_torch(m, net):
    with torch.no_grad():
        for t, fin, fout in (("fc1", IN, HID), ("fc2", HID, OUT)):
            mod = getattr(net, t)
            mod.base.weight.copy_(torch.from_numpy(get(m, t + ".weight", (fout, fin))))
            mod.base.bias.copy_(torch.from_numpy(get(m, t + ".bias", (fout,))))
            mod.lora_A.weight.copy_(torch.from_numpy(get(m, t + ".lora_A.default.weight", (R, fin))))
            mod.lora_B.weight.copy_(torch.from_numpy(get(m, t + ".lora_B.default.weight", (fout, R))))


def lora_tensors(net):
    return {"fc1.lora_A": net.fc1.lora_A.weight, "fc1.lora_B": net.fc1.lora_B.weight,
            "fc2.lora_A": net.fc2.lora_A.weight, "fc2.lora_B": net.fc2.lora_B.weight}


def main():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (N, IN)).astype(np.float32)
    y = np.array([0, 2, 1, 2], np.int32)
    m = base_model()
    ok(lib.tlearn_lora_add(m, b"default", b"fc*", R, ALPHA, 0.0, 0), "lora_add")
    # B is zero in both; give it values so that every gradient is non-trivial
    set_(m, "fc1.lora_B.default.weight", rng.uniform(-0.5, 0.5, (HID, R)))
    set_(m, "fc2.lora_B.default.weight", rng.uniform(-0.5, 0.5, (OUT, R)))
    net = Net()
    copy_to_torch(m, net)
    out = np.zeros((N, OUT), np.float32)
    ok(lib.tlearn_model_predict(m, fp(x), N, fp(out), out.size), "predict")
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = net(xt)
    close("forward", out, ref.detach().numpy())
    loss = torch.nn.functional.cross_entropy(ref, torch.from_numpy(y).long())
    loss.backward()
    dx = np.zeros_like(x)
    lo = ctypes.c_float()
    ok(lib.tlearn_model_compute_gradients(m, fp(x), y.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                          N, ctypes.byref(lo), fp(dx), dx.size), "gradients")
    close("loss", [lo.value], [loss.item()])
    close("input gradient", dx, xt.grad.numpy())
    for key, p in lora_tensors(net).items():
        t, ab = key.split(".")
        close("grad " + key, grad(m, "%s.%s.default.weight" % (t, ab), tuple(p.shape)),
              p.grad.numpy())
    # 20 AdamW steps on the adapters only
    opt = ctypes.c_void_p()
    ok(lib.tlearn_optim_create(ctypes.byref(opt), 3), "optim")
    ok(lib.tlearn_optim_set(opt, 1, 1e-2), "lr")
    ok(lib.tlearn_optim_set(opt, 5, 0.01), "wd")
    topt = torch.optim.AdamW(list(lora_tensors(net).values()), lr=1e-2, weight_decay=0.01)
    for _ in range(20):
        ok(lib.tlearn_model_train_step(m, opt, fp(x), y.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                       N, ctypes.byref(lo)), "train_step")
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y).long()).backward()
        topt.step()
    for key, p in lora_tensors(net).items():
        t, ab = key.split(".")
        close("after 20 AdamW steps " + key,
              get(m, "%s.%s.default.weight" % (t, ab), tuple(p.shape)), p.detach().numpy(),
              rtol=1e-4, atol=1e-5)
    close("base unchanged", get(m, "fc1.weight", (HID, IN)), net.fc1.base.weight.detach().numpy())
    # library -> file -> read by hand: PEFT's names and shapes
    with tempfile.TemporaryDirectory() as d:
        ok(lib.tlearn_lora_save(m, b"default", d.encode()), "lora_save")
        tensors = read_safetensors(os.path.join(d, "adapter_model.safetensors"))
        cfg = json.load(open(os.path.join(d, "adapter_config.json")))
        if cfg["r"] != R or cfg["lora_alpha"] != ALPHA or sorted(cfg["target_modules"]) != ["fc1", "fc2"]:
            failures.append("config")
            print("FAIL config", cfg)
        for key, p in lora_tensors(net).items():
            name = "base_model.model.%s.weight" % key
            close("file " + name, tensors[name], p.detach().numpy(), rtol=1e-4, atol=1e-5)
    # torch -> file written by hand -> library on a fresh base
    with torch.no_grad():
        for p in lora_tensors(net).values():
            p.add_(torch.from_numpy(rng.uniform(-0.3, 0.3, tuple(p.shape)).astype(np.float32)))
    with tempfile.TemporaryDirectory() as d:
        write_safetensors(os.path.join(d, "adapter_model.safetensors"),
                          {"base_model.model.%s.weight" % k: p.detach().numpy()
                           for k, p in lora_tensors(net).items()})
        json.dump({"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
                   "target_modules": ["fc1", "fc2"], "bias": "none"},
                  open(os.path.join(d, "adapter_config.json"), "w"))
        m2 = base_model()  # same seed: the same base weights
        ok(lib.tlearn_lora_load(m2, b"torch", d.encode()), "lora_load")
        out2 = np.zeros((N, OUT), np.float32)
        ok(lib.tlearn_model_predict(m2, fp(x), N, fp(out2), out2.size), "predict loaded")
        close("forward of a torch-written adapter", out2, net(torch.from_numpy(x)).detach().numpy())
    if failures:
        print("FAILED:", failures)
        sys.exit(1)


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


main()
