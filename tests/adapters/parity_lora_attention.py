"""LoRA on attention projections, parity with PyTorch through the public C API (ctypes): a
self-attention block built by hand in torch with separate q_proj / k_proj / v_proj /
out_proj Linear layers (as HF's BART / OPT modules) and PEFT-style LoRA on q, v and out_proj,
against the library's fused attention layer adapted with tlearn_lora_add: forward, input
and LoRA gradients, 20 AdamW steps, merge/unmerge, and adapter files both ways with PEFT's
names (base_model.model.<attention>.q_proj.lora_A.weight ...). Fails (never skips) without
torch."""
import ctypes, json, math, os, sys, tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adapters_common import (lib, ok, fp, close, get, set_, grad, read_safetensors,  # noqa: E402
                             write_safetensors, finish, failures, I32)

T, D, H, CLS, N, R, ALPHA = 6, 8, 2, 3, 4, 2, 4.0
ATT = "enc.self_attn"
TARGETS = ("q_proj", "v_proj", "out_proj")
lib.tlearn_model_create_input.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                          ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
lib.tlearn_model_add_attention.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                           ctypes.c_int, ctypes.c_char_p]
lib.tlearn_model_add_token_pool.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                            ctypes.c_char_p]
lib.tlearn_freeze_match.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]


def base_model():
    m = ctypes.c_void_p()
    dims = (ctypes.c_int * 2)(T, D)
    ok(lib.tlearn_model_create_input(ctypes.byref(m), b"x", 1, 2, dims), "create")
    ok(lib.tlearn_model_set_seed(m, 17), "seed")
    ok(lib.tlearn_model_add_attention(m, ATT.encode(), H, 0, None), "attention")
    ok(lib.tlearn_model_add_token_pool(m, b"pool", 1, None), "pool")
    ok(lib.tlearn_model_add_dense(m, b"head", CLS), "head")
    return m


class LoRALinear(torch.nn.Module):
    def __init__(self, lora):
        super().__init__()
        self.base = torch.nn.Linear(D, D)
        self.base.requires_grad_(False)
        self.lora = lora
        if lora:
            self.lora_A = torch.nn.Linear(D, R, bias=False)
            self.lora_B = torch.nn.Linear(R, D, bias=False)

    def forward(self, x):
        y = self.base(x)
        return y + self.lora_B(self.lora_A(x)) * (ALPHA / R) if self.lora else y


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.ModuleDict({p: LoRALinear(p in TARGETS)
                                         for p in ("q_proj", "k_proj", "v_proj", "out_proj")})
        self.head = torch.nn.Linear(D, CLS)
        self.head.requires_grad_(False)

    def forward(self, x):
        n, hd = x.shape[0], D // H
        q, k, v = (self.proj[p](x).view(n, T, H, hd).transpose(1, 2)
                   for p in ("q_proj", "k_proj", "v_proj"))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        ctx = (p @ v).transpose(1, 2).reshape(n, T, D)
        return self.head(self.proj["out_proj"](ctx).mean(dim=1))


def lora_params(net):
    return {"%s.lora_%s" % (p, ab): getattr(net.proj[p], "lora_" + ab).weight
            for p in TARGETS for ab in "AB"}


def copy_to_torch(m, net, adapter):
    with torch.no_grad():
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            net.proj[p].base.weight.copy_(torch.from_numpy(get(m, "%s.%s.weight" % (ATT, p), (D, D))))
            net.proj[p].base.bias.copy_(torch.from_numpy(get(m, "%s.%s.bias" % (ATT, p), (D,))))
        for key, t in lora_params(net).items():
            p, ab = key.split(".")
            name = "%s.%s.%s.%s.weight" % (ATT, p, ab, adapter)
            t.copy_(torch.from_numpy(get(m, name, tuple(t.shape))))
        net.head.weight.copy_(torch.from_numpy(get(m, "head.weight", (CLS, D))))
        net.head.bias.copy_(torch.from_numpy(get(m, "head.bias", (CLS,))))


def main():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (N, T, D)).astype(np.float32)
    y = np.array([0, 2, 1, 2], np.int32)
    m = base_model()
    # the fused layer's in_proj_weight rows become q/k/v_proj: check against the split
    win = get(m, ATT + ".in_proj_weight", (3 * D, D))
    ok(lib.tlearn_lora_add(m, b"default", b"*.self_attn.[qvo]*_proj", R, ALPHA, 0.0, 0), "lora qvo")
    close("split q_proj = in_proj rows 0..D", get(m, ATT + ".q_proj.weight", (D, D)), win[:D], 0, 0)
    close("split v_proj = in_proj rows 2D..3D", get(m, ATT + ".v_proj.weight", (D, D)), win[2 * D:], 0, 0)
    for p in TARGETS:  # B is zero at first: give every gradient something to do
        set_(m, "%s.%s.lora_B.default.weight" % (ATT, p), rng.uniform(-0.5, 0.5, (D, R)))
    f = ctypes.c_void_p()  # the head is frozen too: only the adapters train
    ok(lib.tlearn_freeze_create(ctypes.byref(f)), "freeze")
    ok(lib.tlearn_freeze_match(f, b"head", 1), "match")
    ok(lib.tlearn_freeze_match(f, b"*_proj", 1), "match")
    ok(lib.tlearn_model_apply_freeze(m, f), "apply")
    lib.tlearn_freeze_destroy(ctypes.byref(f))
    net = Block()
    copy_to_torch(m, net, "default")
    out = np.zeros((N, CLS), np.float32)
    ok(lib.tlearn_model_predict(m, fp(x), N, fp(out), out.size), "predict")
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = net(xt)
    close("forward", out, ref.detach().numpy())
    torch.nn.functional.cross_entropy(ref, torch.from_numpy(y).long()).backward()
    dx = np.zeros_like(x)
    lo = ctypes.c_float()
    ok(lib.tlearn_model_compute_gradients(m, fp(x), y.ctypes.data_as(I32), N, ctypes.byref(lo),
                                          fp(dx), dx.size), "gradients")
    close("input gradient", dx, xt.grad.numpy())
    for key, t in lora_params(net).items():
        p, ab = key.split(".")
        close("grad " + key, grad(m, "%s.%s.%s.default.weight" % (ATT, p, ab), tuple(t.shape)),
              t.grad.numpy())
    opt = ctypes.c_void_p()
    ok(lib.tlearn_optim_create(ctypes.byref(opt), 3), "optim")
    ok(lib.tlearn_optim_set(opt, 1, 1e-2), "lr")
    ok(lib.tlearn_optim_set(opt, 5, 0.01), "wd")
    topt = torch.optim.AdamW(list(lora_params(net).values()), lr=1e-2, weight_decay=0.01)
    for _ in range(20):
        ok(lib.tlearn_model_train_step(m, opt, fp(x), y.ctypes.data_as(I32), N, ctypes.byref(lo)),
           "train_step")
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y).long()).backward()
        topt.step()
    for key, t in lora_params(net).items():
        p, ab = key.split(".")
        close("after 20 AdamW steps " + key,
              get(m, "%s.%s.%s.default.weight" % (ATT, p, ab), tuple(t.shape)), t.detach().numpy(),
              rtol=1e-4, atol=1e-5)
    ok(lib.tlearn_model_predict(m, fp(x), N, fp(out), out.size), "predict")
    want = net(torch.from_numpy(x)).detach().numpy()
    close("forward after training", out, want, rtol=1e-4, atol=1e-5)
    merged = np.zeros_like(out)
    ok(lib.tlearn_lora_merge(m, b"default"), "merge")
    ok(lib.tlearn_model_predict(m, fp(x), N, fp(merged), out.size), "predict merged")
    close("merged forward", merged, want, rtol=1e-4, atol=1e-5)
    ok(lib.tlearn_lora_unmerge(m, b"default"), "unmerge")
    close("unmerged q_proj", get(m, ATT + ".q_proj.weight", (D, D)),
          net.proj["q_proj"].base.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
    # library -> file: PEFT's names for a module with separate q/v/out projections
    with tempfile.TemporaryDirectory() as d:
        ok(lib.tlearn_lora_save(m, b"default", d.encode()), "lora_save")
        tensors = read_safetensors(os.path.join(d, "adapter_model.safetensors"))
        cfg = json.load(open(os.path.join(d, "adapter_config.json")))
        want_targets = sorted("%s.%s" % (ATT, p) for p in TARGETS)
        if sorted(cfg["target_modules"]) != want_targets:
            failures.append("config")
            print("FAIL config", cfg["target_modules"])
        for key, t in lora_params(net).items():
            p, ab = key.split(".")
            name = "base_model.model.%s.%s.%s.weight" % (ATT, p, ab)
            close("file " + name, tensors[name], t.detach().numpy(), rtol=1e-4, atol=1e-5)
    # torch -> file (PEFT's short target names, as HF writes them) -> a fresh fused model
    with torch.no_grad():
        for t in lora_params(net).values():
            t.add_(torch.from_numpy(rng.uniform(-0.3, 0.3, tuple(t.shape)).astype(np.float32)))
    with tempfile.TemporaryDirectory() as d:
        write_safetensors(os.path.join(d, "adapter_model.safetensors"),
                          {"base_model.model.%s.%s.%s.weight" % (ATT, *k.split(".")): t.detach().numpy()
                           for k, t in lora_params(net).items()})
        json.dump({"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
                   "target_modules": list(TARGETS), "bias": "none"},
                  open(os.path.join(d, "adapter_config.json"), "w"))
        m3 = base_model()
        ok(lib.tlearn_lora_load(m3, b"torch", d.encode()), "lora_load")
        out3 = np.zeros_like(out)
        ok(lib.tlearn_model_predict(m3, fp(x), N, fp(out3), out3.size), "predict loaded")
        close("forward of a torch-written adapter", out3, net(torch.from_numpy(x)).detach().numpy(),
              rtol=1e-4, atol=1e-5)
        lib.tlearn_model_destroy(ctypes.byref(m3))
    lib.tlearn_model_destroy(ctypes.byref(m))
    finish()


main()
