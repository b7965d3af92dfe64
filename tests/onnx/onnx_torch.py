"""A small ONNX interpreter on PyTorch, written from the operator specifications
(https://onnx.ai/onnx/operators/) for the operators libtlearn's exporter writes: another
runtime than libtlearn for the exported files (Debian's onnx 1.12 has no
onnx.reference.ReferenceEvaluator, and onnxruntime is not packaged). It runs in float64 by
default so that its answer is a reference for libtlearn's float32 one.

run(model_proto, {input name: array}) -> [output arrays] in graph-output order."""
import numpy as np
import onnx
import onnx.numpy_helper
import torch
import torch.nn.functional as F


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t):
    return [int(v) for v in t.reshape(-1).tolist()]


def _pool_input(x, pads, fill):
    """ONNX pads (top, left, bottom, right) applied explicitly when asymmetric; the
    symmetric padding left for torch's pool."""
    t, l, b, r = pads
    if t == b and l == r:
        return x, (t, l)
    return F.pad(x, (l, r, t, b), value=fill), (0, 0)


def _node(op, x, a, dtype):
    """Outputs of one node from its inputs x (tensors or None) and attributes a."""
    if op == "Identity":
        return x[0]
    if op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "And", "Greater"):
        f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
             "Pow": torch.pow, "Max": torch.maximum, "And": torch.logical_and,
             "Greater": torch.gt}[op]
        return f(x[0], x[1])
    if op == "Relu":
        return torch.relu(x[0])
    if op == "Tanh":
        return torch.tanh(x[0])
    if op == "Sigmoid":
        return torch.sigmoid(x[0])
    if op == "Erf":
        return torch.erf(x[0])
    if op == "Sqrt":
        return torch.sqrt(x[0])
    if op == "Reciprocal":
        return torch.reciprocal(x[0])
    if op == "LeakyRelu":
        return F.leaky_relu(x[0], a.get("alpha", 0.01))
    if op == "HardSigmoid":
        return torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)
    if op == "HardSwish":
        return x[0] * torch.clamp(x[0] / 6 + 0.5, 0, 1)
    if op == "Clip":
        lo = x[1] if len(x) > 1 and x[1] is not None else None
        hi = x[2] if len(x) > 2 and x[2] is not None else None
        y = x[0]
        if lo is not None:
            y = torch.maximum(y, lo)
        if hi is not None:
            y = torch.minimum(y, hi)
        return y
    if op == "Gemm":
        A, B = x[0], x[1]
        if a.get("transA", 0):
            A = A.t()
        if a.get("transB", 0):
            B = B.t()
        y = a.get("alpha", 1.0) * (A @ B)
        if len(x) > 2 and x[2] is not None:
            y = y + a.get("beta", 1.0) * x[2]
        return y
    if op == "MatMul":
        return torch.matmul(x[0], x[1])
    if op == "Transpose":
        perm = a.get("perm", list(reversed(range(x[0].dim()))))
        return x[0].permute(*perm)
    if op == "Flatten":
        ax = a.get("axis", 1)
        return x[0].reshape(int(np.prod(x[0].shape[:ax])), -1)
    if op == "Reshape":
        shape = _ints(x[1])
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x[0].reshape(shape)
    if op == "Conv":
        pads = a.get("pads", [0, 0, 0, 0])
        assert pads[0] == pads[2] and pads[1] == pads[3], "asymmetric Conv pads"
        b = x[2] if len(x) > 2 else None
        return F.conv2d(x[0], x[1], b, stride=a.get("strides", 1), padding=pads[:2],
                        dilation=a.get("dilations", 1), groups=a.get("group", 1))
    if op == "MaxPool":
        xx, p = _pool_input(x[0], a.get("pads", [0, 0, 0, 0]), float("-inf"))
        return F.max_pool2d(xx, a["kernel_shape"], a.get("strides", 1), p,
                            a.get("dilations", 1), bool(a.get("ceil_mode", 0)))
    if op == "AveragePool":
        pads = a.get("pads", [0, 0, 0, 0])
        cip = bool(a.get("count_include_pad", 0))
        assert pads[0] == pads[2] and pads[1] == pads[3] or cip, "asymmetric pads"
        xx, p = _pool_input(x[0], pads, 0.0)
        return F.avg_pool2d(xx, a["kernel_shape"], a.get("strides", 1), p,
                            bool(a.get("ceil_mode", 0)), cip)
    if op == "GlobalAveragePool":
        return x[0].mean(dim=(2, 3), keepdim=True)
    if op == "BatchNormalization":
        return F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))
    if op == "Softmax":
        return torch.softmax(x[0], a.get("axis", -1))
    if op == "Concat":
        return torch.cat(x, a["axis"])
    if op == "Slice":
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
        idx = [slice(None)] * x[0].dim()
        for s, e, ax, st in zip(starts, ends, axes, steps):
            d = x[0].shape[ax]
            s = max(0, min(d, s + d if s < 0 else s))
            e = max(0, min(d, e + d if e < 0 else e))
            idx[ax] = slice(s, e, st)
        return x[0][tuple(idx)]
    if op == "LayerNormalization":
        ax = a.get("axis", -1)
        ax = ax + x[0].dim() if ax < 0 else ax
        shape = x[0].shape[ax:]
        b = x[2] if len(x) > 2 else None
        return F.layer_norm(x[0], shape, x[1], b, a.get("epsilon", 1e-5))
    if op in ("ReduceMean", "ReduceMax", "ReduceL2"):
        axes = a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if op == "ReduceMean":
            return x[0].mean(dim=axes, keepdim=keep)
        if op == "ReduceL2":
            return torch.sqrt((x[0] * x[0]).sum(dim=axes, keepdim=keep))
        return torch.amax(x[0], dim=axes, keepdim=keep)
    if op == "ReduceSum":
        axes = _ints(x[1])
        return x[0].sum(dim=axes, keepdim=bool(a.get("keepdims", 1)))
    if op == "Pad":
        pads = _ints(x[1])
        r = x[0].dim()
        tp = []
        for i in reversed(range(r)):
            tp += [pads[i], pads[r + i]]
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode == "constant":
            v = float(x[2]) if len(x) > 2 and x[2] is not None else 0.0
            return F.pad(x[0], tp, value=v)
        tp = tp[:4]  # torch pads the last two axes of a 4-D tensor in these modes
        return F.pad(x[0], tp, mode={"reflect": "reflect", "edge": "replicate"}[mode])
    if op == "Gather":
        ax = a.get("axis", 0)
        idx = x[1].long()
        return torch.index_select(x[0], ax, idx.reshape(-1)).reshape(
            x[0].shape[:ax] + idx.shape + x[0].shape[ax + 1:])
    if op == "Cast":
        to = a["to"]
        if to == onnx.TensorProto.BOOL:
            return x[0] != 0
        if to == onnx.TensorProto.FLOAT:
            return x[0].to(dtype)
        raise NotImplementedError("Cast to %d" % to)
    if op == "Where":
        return torch.where(x[0], x[1], x[2])
    if op == "Shape":
        return torch.tensor(list(x[0].shape), dtype=torch.int64)
    if op == "Expand":
        return x[0].expand(*_ints(x[1]))
    raise NotImplementedError(op)


def run(model, feeds, dtype=torch.float64):
    """Outputs of the graph for @p feeds (numpy arrays by input name)."""
    g = model.graph
    env = {}
    for t in g.initializer:
        a = onnx.numpy_helper.to_array(t)
        env[t.name] = torch.from_numpy(a.astype(np.float64 if a.dtype == np.float32 and
                                                dtype == torch.float64 else a.dtype))
    for name, arr in feeds.items():
        arr = np.asarray(arr)
        env[name] = torch.from_numpy(arr.astype(np.float64) if arr.dtype == np.float32 and
                                     dtype == torch.float64 else arr)
    with torch.no_grad():
        for node in g.node:
            x = [env[i] if i else None for i in node.input]
            y = _node(node.op_type, x, _attrs(node), dtype)
            env[node.output[0]] = y
    return [env[o.name].numpy() for o in g.output]
