"""Transformers exported from torch 1.13 to ONNX, imported by libtlearn: one export and
opset per run, as a user would write it (random weights, model.eval(),
torch.onnx.export(model, args, path, opset_version=...) and nothing else). Each case is
imported, its outputs compared with torch's (rtol 1e-4, atol 1e-5; where float32 rounding
alone exceeds that, tlearn must be as close to torch's float64 answer as torch's float32
is, at worst twice that plus the tolerance: the zoo's rule), the attention checked to be
fused into TLEARN_LAYER_ATTENTION layers (or, for the unfusable variant, to run through
general layers), saved and loaded as a checkpoint that computes the same, then fine-tuned: a
new 5-class head, everything up to the last attention block frozen, three SGD steps with
finite losses and the frozen tensors bit for bit.

Usage: onnx_transformer.py CASE OPSET
  CASE: encoder-{post,pre}-{relu,gelu}  nn.TransformerEncoder (2 layers, batch_first)
        encoder-mask                    the same with src_key_padding_mask as a 2nd input
        mha                             nn.MultiheadAttention called directly
        bert                            a BERT-style encoder (int64 input_ids and
                                        attention_mask inputs, separate q/k/v Linears)
        vit-small                       torchvision VisionTransformer(32, 4, 4 layers, 128)
        vit_b_16                        torchvision vit_b_16 at 224 (exported once per
                                        opset into $TLEARN_TF_CACHE, the build dir)
        unfused                         attention scaled by 1/hd instead of 1/sqrt(hd):
                                        not fused, runs through matmul/softmax layers
        refused                         the same with BERT's mask: refused, every node
                                        that cannot map named in one message
        mutations                       small exports of the above with random graph edits
                                        (inputs rewired, perms and constants changed, nodes
                                        dropped): each is refused or imports and runs; the
                                        process must not crash (OPSET: the number of
                                        edited graphs)
Runs through meson (TLEARN_LIBRARY names the built library); a missing torch or
torchvision fails with the package name, never skips."""
import copy
import ctypes
import math
import os
import sys
import tempfile

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torchvision
except ImportError as e:
    sys.exit("onnx_transformer: %s: install the Debian packages python3-torch and "
             "python3-torchvision" % e)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "onnx"))
import tl  # noqa: E402  (ctypes on the built library)

lib = tl.lib
vp = ctypes.c_void_p
lib.tlearn_model_run.argtypes = [vp, vp, ctypes.c_int, ctypes.c_size_t, vp, vp, ctypes.c_int]
lib.tlearn_model_train_step_inputs.argtypes = [vp, vp, vp, ctypes.c_int, tl.i32p,
                                               ctypes.c_size_t, ctypes.POINTER(ctypes.c_float)]
lib.tlearn_model_input_count.argtypes = [vp, tl.c_int_p]
lib.tlearn_model_save.argtypes = [vp, vp, ctypes.c_char_p, ctypes.c_uint]
lib.tlearn_model_load.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_char_p]


# ---- the models ----

class SelfAttention(nn.Module):
    """HF BERT's self-attention: separate query, key and value projections, batch first.
    scale_by_hd divides the scores by hd instead of sqrt(hd): a variant the importer
    must not take for nn.MultiheadAttention."""

    def __init__(self, d, heads, scale_by_hd=False):
        super().__init__()
        self.heads, self.hd, self.scale_by_hd = heads, d // heads, scale_by_hd
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def split(self, t):
        return t.view(t.size()[:-1] + (self.heads, self.hd)).permute(0, 2, 1, 3)

    def forward(self, x, ext=None):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        s = torch.matmul(q, k.transpose(-1, -2))
        s = s / (self.hd if self.scale_by_hd else math.sqrt(self.hd))
        if ext is not None:
            s = s + ext
        c = torch.matmul(s.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
        return c.view(c.size()[:-2] + (self.heads * self.hd,))


class BertLayer(nn.Module):
    def __init__(self, d, heads, ff, scale_by_hd=False):
        super().__init__()
        self.attention = SelfAttention(d, heads, scale_by_hd)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=1e-12)
        self.intermediate = nn.Linear(d, ff)
        self.output = nn.Linear(ff, d)
        self.out_norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x, ext=None):
        x = self.attn_norm(x + self.attn_out(self.attention(x, ext)))
        return self.out_norm(x + self.output(nn.functional.gelu(self.intermediate(x))))


class Bert(nn.Module):
    """Token and learned position embeddings, LayerNorm, encoder layers, a pooler (dense +
    tanh on the first token) and a classifier, with HF's additive mask."""

    def __init__(self, vocab=50, d=32, heads=4, ff=64, layers=2, max_len=16, classes=3,
                 scale_by_hd=False):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)
        self.position_embeddings = nn.Embedding(max_len, d)
        self.register_buffer("position_ids", torch.arange(max_len).unsqueeze(0))
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(d, heads, ff, scale_by_hd) for _ in range(layers))
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, classes)

    def forward(self, input_ids, attention_mask):
        t = input_ids.size(1)
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :t])
        x = self.norm(x)
        ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, ext)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


class Unfused(nn.Module):
    """Float sequences through two BERT layers whose scores are scaled by 1/hd."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.layers = nn.ModuleList(BertLayer(d, heads, 64, scale_by_hd=True) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class SelfAttentionOnly(nn.Module):
    """nn.MultiheadAttention called directly (need_weights at its default True: the
    exporter drops the unused weights), after a Linear."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(32, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        x = self.proj(x)
        return self.attn(x, x, x)[0]


class MaskedEncoder(nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x, key_padding_mask):
        return self.enc(x, src_key_padding_mask=key_padding_mask)


def encoder(norm_first, act):
    layer = nn.TransformerEncoderLayer(64, 4, 128, 0.1, act, batch_first=True,
                                       norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2)


def randomize(model):
    """torch zero-initialises MultiheadAttention's biases and torchvision ViT's class token
    and head: give every all-zero parameter values, so that their import is tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.detach().abs().sum():
                p.normal_(0, 0.5 if "head" in name else 0.05)
    return model


def spread(model, args):
    """Scale a classifier's last Linear so that the logits spread about 1 (the zoo's rule:
    ViT's random head gives logits up to 50, BERT's classifier about 0.1)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    if not isinstance(model, (Bert, torchvision.models.VisionTransformer)):
        return
    with torch.no_grad():
        s = model(*args).std().item()
        last.weight /= s
        last.bias /= s


def build(case):
    """(model, example args as numpy, number of attention blocks, fused?)"""
    torch.manual_seed(0)
    if case.startswith("encoder-") and case != "encoder-mask":
        _, norm, act = case.split("-")
        model = encoder(norm == "pre", act)
        return model, [torch.randn(2, 10, 64)], 2, True
    if case == "encoder-mask":
        model = MaskedEncoder(encoder(False, "relu"))
        mask = torch.zeros(2, 10, dtype=torch.bool)
        mask[1, 7:] = True
        return model, [torch.randn(2, 10, 64), mask], 2, True
    if case in ("bert", "refused"):
        model = Bert(scale_by_hd=case == "refused")
        ids = torch.randint(0, 50, (2, 12))
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, 9:] = 0
        return model, [ids, mask], 2, case == "bert"
    if case == "mha":
        return SelfAttentionOnly(), [torch.randn(2, 7, 32)], 1, True
    if case == "unfused":
        return Unfused(), [torch.randn(2, 12, 32)], 2, False
    if case == "vit-small":
        model = torchvision.models.VisionTransformer(32, 4, 4, 4, 128, 256, num_classes=10)
        return model, [torch.randn(1, 3, 32, 32)], 4, True
    if case == "vit_b_16":
        return torchvision.models.vit_b_16(weights=None), [torch.randn(1, 3, 224, 224)], 12, True
    sys.exit("unknown case %r" % case)


# ---- running the imported model ----

def as_input(a):
    """What the public API takes: float32, and int32 for token ids and masks (torch's
    int64 ids narrowed with a range check, its bools as 0/1)."""
    a = a.numpy()
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype == np.int64:
        if a.min() < -2**31 or a.max() >= 2**31:
            raise ValueError("ids do not fit int32")
    return np.ascontiguousarray(a.astype(np.int32))


def run(m, xs, out_size):
    n = xs[0].shape[0]
    out = np.empty(n * out_size, np.float32)
    ins = (vp * len(xs))(*[x.ctypes.data for x in xs])
    tl.check(lib.tlearn_model_run(m.h, ins, len(xs), n, (vp * 1)(out.ctypes.data),
                                  (ctypes.c_size_t * 1)(out.size), 1), "run")
    return out


def train_step(m, o, xs, ys):
    loss = ctypes.c_float()
    ins = (vp * len(xs))(*[x.ctypes.data for x in xs])
    tl.check(lib.tlearn_model_train_step_inputs(m.h, o, ins, len(xs),
                                                ys.ctypes.data_as(tl.i32p), len(ys),
                                                ctypes.byref(loss)), "train_step_inputs")
    return loss.value


def compare(model, args, got, want):
    err = np.abs(got - want).max()
    print("max |tlearn - torch| = %.3g (outputs up to %.3g)" % (err, np.abs(want).max()))
    if np.allclose(got, want, rtol=1e-4, atol=1e-5):
        return
    dargs = [a.double() if a.dtype == torch.float32 else a for a in args]
    exact = copy.deepcopy(model).double()(*dargs).detach().numpy().ravel()  # slow path too
    budget = np.abs(want - exact)
    print("beyond rtol 1e-4/atol 1e-5; against float64: torch float32 %.3g, tlearn %.3g"
          % (budget.max(), np.abs(got - exact).max()))
    np.testing.assert_array_less(np.abs(got - exact),
                                 2 * budget.max() + 1e-4 * np.abs(exact) + 1e-5)


def export(model, args, opset, case):
    cache = os.environ.get("TLEARN_TF_CACHE")
    if case == "vit_b_16" and cache:
        path = os.path.join(cache, "vit_b_16_opset%d.onnx" % opset)
        if not os.path.exists(path):
            torch.onnx.export(model, tuple(args), path + ".part", opset_version=opset)
            os.replace(path + ".part", path)
        return path, None
    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, "model.onnx")
    torch.onnx.export(model, tuple(args), path, opset_version=opset)
    return path, tmp


def mutations(rounds):
    """Random edits of small transformer exports through the importer's matchers."""
    import onnx
    from onnx import numpy_helper
    lib.tlearn_model_import_onnx_buffer.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p,
                                                    ctypes.c_size_t]
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        small = [(MaskedEncoder(nn.TransformerEncoder(nn.TransformerEncoderLayer(
                     8, 2, 16, batch_first=True), 1)),
                  (torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool))),
                 (Bert(vocab=10, d=8, heads=2, ff=8, layers=1, max_len=4),
                  (torch.randint(0, 10, (2, 4)), torch.ones(2, 4, dtype=torch.long))),
                 (torchvision.models.VisionTransformer(8, 4, 1, 2, 8, 8, num_classes=3),
                  (torch.randn(1, 3, 8, 8),))]
        for k, (model, args) in enumerate(small):
            path = os.path.join(tmp, "%d.onnx" % k)
            torch.onnx.export(model.eval(), args, path, opset_version=13 + 4 * (k % 2))
            seeds.append(onnx.load(path))
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "imported": 0, "ran": 0}
    for r in range(rounds):
        g = copy.deepcopy(seeds[r % len(seeds)])
        nodes = g.graph.node
        for _ in range(1 + r % 2):
            nd = nodes[int(rng.integers(len(nodes)))]
            what = int(rng.integers(4))
            if what == 0 and nd.input:  # rewire an input to another value of the graph
                names = [o for n in nodes for o in n.output] + [i.name for i in g.graph.input]
                nd.input[int(rng.integers(len(nd.input)))] = names[int(rng.integers(len(names)))]
            elif what == 1:
                for a in nd.attribute:
                    if a.ints:
                        a.ints[int(rng.integers(len(a.ints)))] = int(rng.integers(-2, 4))
                    elif a.type == onnx.AttributeProto.INT:
                        a.i = int(rng.integers(-2, 4))
                    elif a.type == onnx.AttributeProto.TENSOR:
                        t = numpy_helper.to_array(a.t).copy()
                        if t.size:
                            t.flat[int(rng.integers(t.size))] = rng.integers(-3, 20)
                            a.t.CopyFrom(numpy_helper.from_array(t))
            elif what == 2:
                nodes.remove(nd)
            else:
                nd.op_type = ["Add", "Mul", "Transpose", "Reshape", "Softmax"][int(rng.integers(5))]
        data = g.SerializeToString()
        h = vp()
        rc = lib.tlearn_model_import_onnx_buffer(ctypes.byref(h), data, len(data))
        if rc:
            outcomes["refused"] += 1
            continue
        outcomes["imported"] += 1
        m = tl.Model(h)
        try:
            ins = [np.zeros((2,) + tuple(d.dim_value for d in i.type.tensor_type.shape.dim[1:]),
                            np.float32 if i.type.tensor_type.elem_type == 1 else np.int32)
                   for i in g.graph.input if i.name not in {t.name for t in g.graph.initializer}]
            out = np.empty(2 * m.output_size(), np.float32)
            ptrs = (vp * len(ins))(*[a.ctypes.data for a in ins])
            if lib.tlearn_model_run(m.h, ptrs, len(ins), 2, (vp * 1)(out.ctypes.data),
                                    (ctypes.c_size_t * 1)(out.size), 1) == 0:
                outcomes["ran"] += 1
        finally:
            m.close()
    print("mutations: %s" % outcomes)
    assert outcomes["ran"] > rounds // 20, "too few edits import and run to test anything"


def main():
    if sys.argv[1] == "mutations":
        mutations(int(sys.argv[2]))
        return
    case, opset = sys.argv[1], int(sys.argv[2])
    model, args, blocks, fused = build(case)
    randomize(model).eval()
    spread(model, args)
    # with gradients enabled: torch 1.13's fast path of nn.TransformerEncoder (taken without
    # them) outputs zeros at padded positions, which the exported graph does not
    want = model(*args).detach().numpy().ravel()
    path, tmp = export(model, args, opset, case)

    if case == "refused":
        try:
            tl.Model.import_onnx(path)
        except tl.TlearnError as e:
            msg = str(e)
            print(msg)
            assert e.rc == tl.TLEARN_EUNSUPPORTED, e.rc
            # every node that has no layer is named in the one message, grouped
            for part in ("nodes cannot be imported", "Unsqueeze (on an activation",
                         "'/Unsqueeze'", "'/Unsqueeze_1'"):
                assert part in msg, "%r not in the message" % part
            return
        raise AssertionError("an attention variant with an unsupported mask was imported")

    m = tl.Model.import_onnx(path)
    try:
        kinds = [k for _, k in m.layers()]
        print("%s opset %d: %d layers, %d attention" % (case, opset, len(kinds),
                                                        kinds.count("attention")))
        if fused:
            assert kinds.count("attention") == blocks, kinds
        else:
            assert "attention" not in kinds and kinds.count("matmul") == 2 * blocks, kinds
        # attention layers named after torch's modules, tensors with its packed names
        first = {"bert": "layers.0.attention", "encoder-mask": "enc.layers.0.self_attn",
                 "mha": "attn", "vit-small": "encoder.layers.encoder_layer_0.self_attention",
                 "vit_b_16": "encoder.layers.encoder_layer_0.self_attention"}.get(
                     case, "layers.0.self_attn" if case.startswith("encoder") else None)
        attn = [n for n, k in m.layers() if k == "attention"]
        assert not fused or attn[0] == first, (attn, first)
        assert not fused or first + ".in_proj_weight" in m.tensors()
        if case.startswith("vit"):
            assert kinds[0] == "patch_embed", kinds
        if case == "bert":
            assert kinds[:2] == ["embedding", "position_embedding"], kinds
        n = ctypes.c_int()
        tl.check(lib.tlearn_model_input_count(m.h, ctypes.byref(n)), "input_count")
        assert n.value == len(args), (n.value, len(args))
        xs = [as_input(a) for a in args]
        got = run(m, xs, want.size // args[0].shape[0])
        compare(model, args, got, want)
        # a checkpoint keeps the graph, the inputs and the attention's mask convention
        ck = os.path.join(tempfile.mkdtemp(), "model.tlc")
        tl.check(lib.tlearn_model_save(m.h, None, ck.encode(), 0), "save")
        h2 = tl.P()
        tl.check(lib.tlearn_model_load(ctypes.byref(h2), None, ck.encode()), "load")
        m2 = tl.Model(h2)
        try:
            again = run(m2, xs, want.size // args[0].shape[0])
            assert np.array_equal(again, got), "the checkpoint computes something else"
        finally:
            m2.close()
            os.remove(ck)
        if case == "bert":  # ids outside the vocabulary: refused, naming the input
            bad = xs[0].copy()
            bad[0, 3] = 50
            try:
                run(m, [bad, xs[1]], want.size // args[0].shape[0])
                raise AssertionError("token id 50 of a 50-word vocabulary was accepted")
            except tl.TlearnError as e:
                print(e)
                assert "model input 'input" in str(e) and "token id 50" in str(e), str(e)
        finetune(m, case, args)
    finally:
        m.close()
        if tmp:
            tmp.cleanup()


def finetune(m, case, args):
    """A 5-class head after the last layer (or the pooler's tanh, the ViT's class token),
    everything before the last attention block frozen, three SGD steps."""
    names = [n for n, _ in m.layers()]
    kinds = [k for _, k in m.layers()]
    cut = names[-2] if case in ("bert", "vit-small", "vit_b_16") else names[-1]
    tl.check(lib.tlearn_model_replace_head(m.h, cut.encode(), 5), "replace_head")
    last_attn = max(i for i, k in enumerate(kinds) if k in ("attention", "matmul"))
    start = max((i for i, k in enumerate(kinds[:last_attn])
                 if k in ("layernorm", "patch_embed", "position_embedding")), default=0)
    freeze_to = names[start]
    f = tl.P()
    tl.check(lib.tlearn_freeze_create(ctypes.byref(f)), "freeze_create")
    tl.check(lib.tlearn_freeze_until(f, freeze_to.encode()), "freeze_until")
    tl.check(lib.tlearn_model_apply_freeze(m.h, f), "apply_freeze")
    lib.tlearn_freeze_destroy(ctypes.byref(f))
    frozen = {}
    layers = [n for n, _ in m.layers()]
    for name in m.tensors():
        layer = max((n for n in layers if name.startswith(n + ".")), key=len)
        flag = ctypes.c_int()
        tl.check(lib.tlearn_model_layer_frozen(m.h, layer.encode(), ctypes.byref(flag)),
                 "layer_frozen")
        if flag.value:
            frozen[name] = m.get(name).copy()
    assert frozen, "nothing frozen up to %s" % freeze_to
    before = {k: m.get(k).copy() for k in m.tensors() if k not in frozen}
    o = tl.P()
    tl.check(lib.tlearn_optim_create(ctypes.byref(o), tl.TLEARN_SGD), "optim_create")
    tl.check(lib.tlearn_optim_set(o, tl.TLEARN_OPT_LR, 1e-2), "optim_set")
    torch.manual_seed(2)
    batch = [torch.cat([a] * (4 // a.shape[0])) for a in args]
    if batch[0].dtype == torch.float32:
        batch[0] = torch.randn_like(batch[0])
    xs = [as_input(a) for a in batch]
    ys = np.array([0, 1, 2, 3], np.int32)
    losses = [train_step(m, o, xs, ys) for _ in range(3)]
    tl.lib.tlearn_optim_destroy(ctypes.byref(o))
    assert all(np.isfinite(losses)), losses
    changed = [k for k, v in frozen.items() if not np.array_equal(m.get(k), v)]
    assert not changed, "frozen tensors changed: %s" % changed[:5]
    moved = [k for k, v in before.items() if not np.array_equal(m.get(k), v)]
    assert any(".in_proj_weight" in k or "matmul" in k or "query" in k for k in moved) or \
        case == "unfused", "the last attention block did not train: %s" % moved
    print("fine-tune: head after %s, frozen up to %s (%d tensors), losses %s"
          % (cut, freeze_to, len(frozen), ["%.4f" % v for v in losses]))


if __name__ == "__main__":
    main()
