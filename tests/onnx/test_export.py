"""ONNX export (tlearn_model_export_onnx): models built here or imported from torchvision are
exported, the file is checked by onnx (checker with full_check, strict shape inference), run
by another runtime (onnx_torch.py: the ONNX operators on PyTorch, float64) and compared with
libtlearn's own predictions, and re-imported here where the importer maps the operators
(identical predictions).

Usage: test_export.py CASE OPSET      (CASE: see CASES at the end)
Runs through meson (TLEARN_LIBRARY names the built library, PYTHONPATH holds
examples/python); a missing package fails with its name, never skips."""
import os
import sys
import tempfile

import numpy as np

try:
    import onnx
    import onnx.shape_inference
    import torch
except ImportError as e:
    sys.exit("test_export: %s: install the Debian packages python3-onnx and python3-torch" % e)

sys.path.insert(0, os.path.dirname(__file__))
import onnx_torch  # noqa: E402
import tlearn  # noqa: E402

RNG = np.random.RandomState(0)


def randomize(m, scale=0.5):
    """Weights drawn here (so that biases and BatchNorm statistics are not at their neutral
    starting values, which would hide a missing or misplaced one)."""
    for name in m.tensor_names():
        shape = m._tensor_shape(name)
        v = RNG.uniform(-scale, scale, size=shape).astype(np.float32)
        if name.endswith("running_var") or name.endswith(".weight") and "bn" in name:
            v = RNG.uniform(0.5, 1.5, size=shape).astype(np.float32)
        m.set_tensor(name, v)


def export_checked(m, opset):
    """The exported bytes, after the checks every export must pass."""
    data = m.export_onnx_bytes(opset)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        m.export_onnx(path, opset)
        with open(path, "rb") as f:
            assert f.read() == data, "the file and the buffer differ"
    mp = onnx.load_from_string(data)
    onnx.checker.check_model(mp, full_check=True)
    onnx.shape_inference.infer_shapes(mp, check_type=True, strict_mode=True)
    assert [(o.domain, o.version) for o in mp.opset_import] == [("", opset)], mp.opset_import
    ins = [(i.name, i.type.tensor_type.elem_type) for i in mp.graph.input]
    want = [(n, onnx.TensorProto.INT32 if dt == "int32" else onnx.TensorProto.FLOAT)
            for n, dt, _ in m.inputs]
    assert ins == want, (ins, want)
    for i in mp.graph.input:
        assert i.type.tensor_type.shape.dim[0].dim_param == "N", i
    assert [o.name for o in mp.graph.output] == m.outputs, ([o.name for o in mp.graph.output],
                                                              m.outputs)
    inits = {t.name for t in mp.graph.initializer}
    params = [t for t in inits if "[" not in t]
    missing = [t for t in params if t not in m.tensor_names()]
    assert not missing, "initializers not named as model tensors: %s" % missing
    for t in mp.graph.initializer:  # weights are the model's, bit for bit
        if "[" not in t.name:
            got = onnx.numpy_helper.to_array(t).reshape(-1)
            assert np.array_equal(got, m.get_tensor(t.name).reshape(-1)), t.name
    return data, mp


def compare(what, got, ref, tol):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err = np.abs(got - ref).max() if got.size else 0.0
    bound = tol * (1 + np.abs(ref).max())
    print("  %-34s max |diff| %.2e (bound %.1e, values up to %.2g)"
          % (what, err, bound, np.abs(ref).max()))
    assert err <= bound, "%s: %.3g > %.3g" % (what, err, bound)


def check(name, m, feeds, opset, reimport, tol=1e-5):
    """Export @p m, run the file in onnx_torch, compare with m.run; re-import when asked."""
    print("%s (opset %d): %d layers" % (name, opset, len(m)))
    m.set_training(False)
    data, mp = export_checked(m, opset)
    outs = m.run(*feeds)
    ref = onnx_torch.run(mp, {n: x for (n, _, _), x in zip(m.inputs, feeds)})
    for o, a, b in zip(m.outputs, outs, ref):
        compare("%s vs torch runtime" % o, a, b, tol)
    if reimport:
        m2 = tlearn.Model.import_onnx(data)
        y = m2.predict(feeds[0])
        compare("re-imported", y.reshape(outs[0].shape), outs[0], 1e-6)
    return data, mp


def images(n, c, h, w):
    return RNG.randn(n, c, h, w).astype(np.float32)


# ---- hand-built models, every kind of the layer API ----

def case_cnn(opset):
    """conv (groups, dilation, bias off, padding), epilogue-folded ReLU and 2x2 pool,
    pools with pads / ceil_mode / dilation, batchnorm, every activation, dropout, dense."""
    m = tlearn.Model(4, 17, 17)
    m.add_conv2d("c1", 8, 3, pad=1).add_batchnorm("bn1").add_relu("r1")
    m.add_maxpool2d("p1", 2, 2)
    m.add_conv2d_ex("c2", 8, (3, 3), pad=(2, 2), dilation=(2, 2), groups=4, bias=False)
    m.add_batchnorm("bn2").add_activation("relu6", "relu6")
    m.add_maxpool2d_ex("p2", 3, stride=2, pads=(1, 0, 1, 1), dilation=1, ceil_mode=True)
    # 5x4: ceil_mode's last row of windows would start in the padding, so PyTorch (and the
    # layer) drop it; written as the floor form, which every opset's shape formula agrees on
    m.add_maxpool2d_ex("p2b", 2, stride=2, pads=1, ceil_mode=True)
    m.add_activation("tanh", "tanh").add_activation("sig", "sigmoid")
    m.add_activation("gelu", "gelu").add_activation("leaky", "leaky_relu", 0.2)
    m.add_activation_ex("hsig", "hardsigmoid", (0.3, 0.4))
    m.add_activation("hswish", "hardswish").add_activation("silu", "silu")
    m.add_activation_ex("clip", "clip", (-0.5, 0.75))
    m.add_activation_ex("clip_lo", "clip", (-0.25, float("inf")))
    m.add_activation("gelu_tanh", "gelu_tanh")
    m.add_avgpool2d_ex("p3", 2, stride=1, pads=1, ceil_mode=True, count_include_pad=False)
    m.add_avgpool2d("p4", 2, 1, 1, count_include_pad=True)
    m.add_dropout("drop", 0.3).add_flatten("flat").add_dense("fc", 6)
    m.set_outputs(["fc", "p2b"])  # p2b's declared (N, 8, 3, 3) meets ONNX's shape formula
    randomize(m)
    check("cnn", m, [images(3, 4, 17, 17)], opset, reimport=False)


def case_vision_reimport(opset):
    """The kinds the importer maps back, one model: re-imported with identical output."""
    m = tlearn.Model(3, 16, 16)
    m.add_conv2d("stem", 8, 3, stride=2, pad=1).add_batchnorm("stem_bn").add_relu("stem_relu")
    m.add_conv2d("b1", 8, 3, pad=1).add_batchnorm("b1_bn").add_relu("b1_relu")
    m.add_conv2d("b2", 8, 3, pad=1, groups=8).add_batchnorm("b2_bn")
    m.add_add("res", "stem_relu").add_activation("res_relu", "relu6")
    m.add_maxpool2d_ex("pool", 3, stride=2, pads=1, ceil_mode=True)
    m.add_activation("hs", "hardswish").add_activation("gelu", "gelu")
    m.add_global_avgpool("gap").add_flatten("flat").add_dropout("drop", 0.2)
    m.add_dense("fc", 5)
    randomize(m)
    check("vision-reimport", m, [images(4, 3, 16, 16)], opset, reimport=True)


def case_graph(opset):
    """binary ops with broadcasting (SE gating), scale, concat, slice, reshape, transpose,
    flatten, softmax over a middle axis, matmul (both forms), pads, adaptive pools, layer
    norms over trailing axes and channels, drop path, gradient reversal, two outputs."""
    m = tlearn.Model(6, 10, 10)
    m.add_conv2d("c", 6, 3, pad=1)
    m.add_global_avgpool("se_pool").add_activation("se_gate", "sigmoid")
    m.add_binary("se", "mul", "c", "se_gate")
    m.add_binary("sub", "sub", "se", "c").add_binary("div", "div", "sub", "se_gate")
    m.add_binary("addb", "add", "div", "se_pool")
    m.add_scale("sc", (6, 1, 1), bias=True)
    m.add_scale("sc_all", (10,), bias=False)
    m.add_slice("sl", 0, 1, 5, 2)
    m.add_slice("sl2", 1, -8, 100, 3)
    m.set_next_input("sc_all")
    m.add_slice("sl3", 0, 0, 2)
    m.add_concat("cat", ["sl", "sl3"], axis=0)
    m.add_pad("padc", (1, 2, 0, 1), "constant", 0.5)
    m.add_pad("padr", (2, 1, 1, 2), "reflect")
    m.add_pad("pade", (1, 0, 2, 1), "edge")
    m.add_layernorm_channels("ln_c", eps=1e-5)
    m.add_adaptive_avgpool("ada", (5, 3))
    m.add_adaptive_avgpool("ada2", (5, 1))
    m.add_drop_path("dp", 0.1).add_grad_reverse("grl", 0.5)
    m.add_reshape("rs", (4, 5))
    m.add_transpose("tr", (1, 0))
    m.add_layernorm("ln", naxes=1)
    m.add_layernorm("ln2", naxes=2, affine=False)
    m.add_softmax("smx", axis=0)
    m.add_matmul("mm", "smx", "ln", transpose_b=True)
    m.add_matmul("mm2", "mm", "tr")
    m.add_linear("lin", 3).add_linear("lin_nb", 4, bias=False)
    m.add_flatten("fl").add_dense("fc", 3)
    # operands of different ranks broadcast per example: (6, 10, 10) * (10)
    m.set_next_input("sc_all")
    m.add_slice("v1", 0, 0, 1).add_slice("v2", 1, 3, 4).add_reshape("vec", (10,))
    m.add_binary("bcast", "mul", "sc_all", "vec")
    m.add_binary("bcast2", "sub", "vec", "bcast")
    m.set_outputs(["fc", "sl2", "ada", "bcast2"])
    randomize(m)
    check("graph", m, [images(2, 6, 10, 10)], opset, reimport=False)


def case_adaptive(opset):
    """adaptive average pooling: equal bins (an AveragePool), 1x1 (global) and overlapping
    bins (a constant matrix), all re-imported."""
    m = tlearn.Model(3, 12, 12)
    m.add_adaptive_avgpool("a1", (4, 6)).add_adaptive_avgpool("a2", (3, 4))
    m.add_adaptive_avgpool("a3", (1, 1)).add_flatten("f").add_dense("fc", 4)
    randomize(m)
    check("adaptive", m, [images(3, 3, 12, 12)], opset, reimport=True)


def case_text(opset):
    """token ids (int32) and a padding mask as a second input: embedding, positions, a
    transformer block (attention with the mask), causal attention, mean pooling over the
    mask, first-token pooling, two outputs."""
    t, d = 7, 8
    m = tlearn.Model.with_input("ids", (t,), "int32")
    m.add_input("mask", (t,), "int32")
    m.add_embedding("emb", 20, d, padding_idx=0)
    m.add_position_embedding("pos", 12)
    m.add_transformer_block("enc", 2, 16, activation="gelu", mask="mask")
    m.add_attention("causal", 2, causal=True, mask="mask")
    m.add_attention("plain", 4)
    m.add_position_embedding("sin", t, sinusoidal=True)
    m.add_token_pool("mean", mean=True, mask="mask")
    m.add_linear("cls", 3)
    m.set_next_input("sin")
    m.add_token_pool("first", mean=False)
    m.set_next_input("sin")
    m.add_token_pool("mean_all", mean=True)
    m.set_outputs(["cls", "first", "mean_all"])
    randomize(m)
    ids = RNG.randint(0, 20, size=(4, t)).astype(np.int32)
    mask = np.ones((4, t), np.int32)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    mask[3, :] = 0  # nothing kept: attention weights and the pooled mean are zeros
    check("text", m, [ids, mask], opset, reimport=False)


def case_vit(opset):
    """ViT: patch embedding with class token and positions, pre-norm blocks, first-token
    pooling, a head; and a patch embedding without class token or positions."""
    m = tlearn.Model(3, 16, 16)
    m.add_patch_embed("patch", 12, 4)
    m.add_transformer_block("b0", 3, 24, activation="gelu", norm_first=True)
    m.add_layernorm("ln", 1).add_token_pool("tok").add_linear("head", 5)
    randomize(m, 0.3)
    check("vit", m, [images(2, 3, 16, 16)], opset, reimport=False)
    m = tlearn.Model(3, 8, 8)
    m.add_patch_embed("patch", 6, 4, class_token=False, positions=False)
    m.add_token_pool("avg", mean=True)
    randomize(m)
    check("patches", m, [images(2, 3, 8, 8)], opset, reimport=False)


def case_prototype(opset):
    """a prototype head over a small backbone, filled with examples."""
    m = tlearn.Model(3, 8, 8)
    m.add_conv2d("c", 4, 3, pad=1).add_relu("r").add_global_avgpool("gap")
    m.add_flatten("f")
    randomize(m)
    m.add_prototype("proto", 3, temperature=7.0)
    x = images(9, 3, 8, 8)
    m.prototype_update("proto", x, np.array([0, 1, 2] * 3, np.int32))
    check("prototype", m, [images(4, 3, 8, 8)], opset, reimport=False)


def case_lora(opset):
    """LoRA on conv and dense: its ops while unmerged, nothing once merged (the merged
    weights export as plain layers, re-imported)."""
    m = tlearn.Model(3, 8, 8)
    m.add_conv2d("c", 4, 3, pad=1).add_relu("r").add_flatten("f").add_dense("fc", 5)
    randomize(m)
    m.lora_add("ad", "*", 2, 4.0, dropout=0.1)
    randomize(m)  # B is zero after lora_add: give it values
    x = images(3, 3, 8, 8)
    _, mp = check("lora", m, [x], opset, reimport=False)
    assert any("lora" in n.name for n in mp.graph.node)
    m.lora_merge("ad")
    _, mp = check("lora-merged", m, [x], opset, reimport=True)
    assert not any("lora_A" in t.name for t in mp.graph.initializer), "merged branch exported"


# ---- torchvision: imported, exported, compared with torch itself ----

def zoo_model(arch, size):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "zoo"))
    os.environ.setdefault("TLEARN_LIBRARY", "")
    import zoo  # noqa: E402  (builds the architecture as the zoo suite does)
    return zoo.build(arch, size)


def torch_onnx(model, size, opset):
    import io
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, size, size), buf, opset_version=opset)
    return buf.getvalue()


def case_zoo(arch, size, opset, steps=0):
    model = zoo_model(arch, size)
    m = tlearn.Model.import_onnx(torch_onnx(model, size, opset))
    x = images(2, 3, size, size)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x).double()).numpy()
    if steps:  # fine-tune here: a new head, a few steps, then export
        m.set_training(True)
        last = m.layer_name(len(m) - 1)
        m.replace_head(last, 4)
        opt = tlearn.Optimizer("sgd", lr=0.01, momentum=0.9)
        xt = images(8, 3, size, size)
        yt = RNG.randint(0, 4, size=8).astype(np.int32)
        for _ in range(steps):
            loss = m.train_step(opt, xt, yt)
            assert np.isfinite(loss), loss
    data, mp = check("%s/%d%s" % (arch, size, " fine-tuned" if steps else ""), m, [x], opset,
                     reimport=True, tol=1e-5)
    if not steps:  # the exported file against torch's own model
        got = onnx_torch.run(mp, {m.inputs[0][0]: x})[0]
        compare("exported file vs torch model", got, want, 1e-5)


CASES = {
    "cnn": case_cnn, "vision": case_vision_reimport, "graph": case_graph,
    "adaptive": case_adaptive, "text": case_text, "vit": case_vit,
    "prototype": case_prototype, "lora": case_lora,
    "resnet18": lambda o: case_zoo("resnet18", 64, o),
    "mobilenet_v3_small": lambda o: case_zoo("mobilenet_v3_small", 64, o),
    "convnext_tiny": lambda o: case_zoo("convnext_tiny", 32, o),
    "finetune": lambda o: case_zoo("resnet18", 64, o, steps=3),
    # the opsets between: the cases whose mapping depends on the opset (HardSwish from 14,
    # LayerNormalization from 17)
    "between": lambda o: [f(v) for v in (14, 15, 16) for f in (case_cnn, case_vision_reimport,
                                                               case_graph, case_vit)],
}

if __name__ == "__main__":
    case, opset = sys.argv[1], int(sys.argv[2])
    CASES[case](opset)
    print("ok")
