"""LoRA parity with PyTorch through the public C API (ctypes): the same LoRA modules built by
hand in torch (nn.Linear base + A/B, scale alpha/r), forward, input and LoRA gradients, 20
AdamW steps on the adapters only, and adapter files both ways in PEFT's layout (the
safetensors format written and read by hand here). Fails (never skips) without torch."""
import ctypes, json, os, sys, tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adapters_common import (lib, ok, fp, close, get, set_, grad, read_safetensors,  # noqa: E402
                             write_safetensors, finish, failures)

IN, HID, OUT, N, R, ALPHA = 6, 5, 3, 4, 2, 3.0


def base_model():
    m = ctypes.c_void_p()
    ok(lib.tlearn_model_create(ctypes.byref(m), IN, 1, 1), "create")
    ok(lib.tlearn_model_set_seed(m, ctypes.c_uint64(5)), "seed")
    ok(lib.tlearn_model_add_dense(m, b"fc1", HID), "fc1")
    ok(lib.tlearn_model_add_activation(m, b"act", 1, ctypes.c_float(0)), "act")
    ok(lib.tlearn_model_add_dense(m, b"fc2", OUT), "fc2")
    return m








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
    finish()


main()
