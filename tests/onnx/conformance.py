"""ONNX's own backend tests (Debian's libonnx-testdata) against the importer.

Runs every test whose operators and attributes the importer claims to support, imports it
through the public C API (ctypes, TLEARN_LIBRARY), predicts, and compares with the expected
outputs (rtol 1e-4, atol 1e-5). The claim is the operator table of doc/onnx.md (the
importer's dispatch table: test onnx-optable checks they agree) plus the written rules
below, one per skip reason. Fails when a claimed test is refused by the importer or gives a
wrong answer, and when the test data is missing.

Feeding: the first graph input is the data, its dim 0 the batch (each of the other dims
one example's shape). Secondary outputs of the node that computes the first graph output
(LayerNormalization's Mean, InvStdDev) are dropped: output 0 is compared. Inputs after the first are weights, bounds or shapes: they become
initializers holding the test's own values, since the importer needs them as constants.
Tests with two or more data inputs (Add of two tensors, Concat, ...) therefore only run
when the rules for their operators hold with constants; a public multi-input predict
does not exist yet.

usage: /usr/bin/python3 conformance.py doc/onnx.md"""
import collections
import ctypes
import glob
import os
import re
import sys
import time

import numpy as np

try:
    import onnx
    from onnx import numpy_helper, shape_inference
except ImportError:
    sys.exit("conformance: needs python3-onnx (Debian package)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tl import P, check, fptr, lib  # noqa: E402

DATA = "/usr/share/libonnx-testdata/data"
SUITES = ["node", "pytorch-converted", "pytorch-operator", "simple"]
RTOL, ATOL = 1e-4, 1e-5
OPSET_MIN, OPSET_MAX = 11, 17

lib.tlearn_model_layer_shape_nd.argtypes = [P, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                            ctypes.POINTER(ctypes.c_int), ctypes.c_int]

# The written rules: reason -> what it means. Every skip names one.
RULES = {
    "opset": "default-domain opset outside the importer's 11..17",
    "operator": "an operator (or domain) not in doc/onnx.md's table",
    "softmax": "Softmax/LogSoftmax: the importer drops a final softmax by design (the "
               "model outputs logits), so its values are not the test's",
    "non-float": "non-float inputs or outputs (token-id models need a consumer op first)",
    "rank": "data input of rank < 2 (no example axis after the batch) or > 5",
    "dynamic": "dynamic shapes (a dimension after the batch is not fixed)",
    "outputs": "several graph outputs (the model has one)",
    "batch": "output dim 0 is not the batch (a reduction or reshape across examples)",
    "training": "training-mode graph (BatchNormalization/Dropout with training outputs)",
    "3-D": "1-D or 3-D convolution/pooling (2-D is supported)",
    "auto_pad": "auto_pad SAME_UPPER/SAME_LOWER",
    "pool-pads": "pooling pads over half the (dilated) kernel (PyTorch refuses them too)",
    "dilated-pool": "dilated average pooling",
    "pool-indices": "MaxPool's indices output",
    "const-data": "an operator applied to constants only, or a layer operator whose weight "
                  "is not constant",
    "shape-on-act": "shape-arithmetic operators (Shape, Gather, Squeeze, Unsqueeze, "
                    "Constant) on activations: only folding constants is claimed (and a "
                    "Gather of one position along an axis but the batch)",
    "concat": "Concat of an activation with a constant, or along the batch axis",
    "slice": "Slice on an activation along the batch, with a step < 1, bounds that are not "
             "constant, or an empty result",
    "split": "Split along the batch, or sizes that are not constant",
    "transpose": "Transpose that moves the batch axis (the default perm reverses all axes)",
    "broadcast": "Add/Sub/Mul/Div of two activations of different ranks or shapes that do "
                 "not broadcast, of a constant that varies along the batch or would change "
                 "the activation's shape, or a constant divided by an activation",
    "softmax-axis": "Softmax over the batch, or before opset 13 over an axis followed by "
                    "axes other than 1 (the flattened form)",
    "layernorm": "LayerNormalization over the batch axis, or with non-constant Scale/B",
    "clip-bounds": "Clip bounds other than (0, 6) or (0, none)",
    "flatten-axis": "Flatten axis other than 1",
    "reshape": "Reshape that is not constant, changes the batch, or gives rank > 5",
    "gemm": "Gemm with transA=1, a rank != 2 input, or C not per output",
    "matmul": "MatMul whose B is neither a constant (K, M) nor an activation of A's rank "
              "(>= 3)",
    "reduce": "ReduceMean other than axes [2, 3] of (N, C, H, W)",
    "pad": "Pad of a rank other than 4, of N or C, negative, or in mode wrap",
    "bn-rank": "BatchNormalization of a rank > 4 input",
    "gap-rank": "GlobalAveragePool of an input that is not (N, C, H, W)",
    "cast": "Cast of an activation to a type other than FLOAT",
    "no-layer": "nothing computed (the graph output is the input, or a constant)",
}

LAYER_OPS = {"Conv", "Gemm", "MatMul", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip",
             "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "BatchNormalization",
             "Add", "Flatten", "Concat", "Slice", "Split", "Transpose", "Reshape", "Pad",
             "Sub", "Mul", "Div", "HardSigmoid", "HardSwish", "LayerNormalization", "Softmax"}
SHAPE_OPS = {"Shape", "Gather", "Squeeze", "Unsqueeze", "Constant"}


def read_claims(doc):
    """The operator table of doc/onnx.md: op -> (min opset, max opset)."""
    claims = {}
    for line in open(doc):
        m = re.match(r"\| (\w+) \| (\d+)-(\d+) \|", line)
        if m:
            claims[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    if not claims:
        sys.exit("conformance: no operator table in %s" % doc)
    return claims


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def load_pb(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return t


class Graph:
    """The test model after folding: shapes of every value, constants, readers."""

    def __init__(self, model):
        self.model = model
        g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].t.dims is not None:
                try:
                    self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
                except Exception:
                    pass
        inferred = shape_inference.infer_shapes(model)
        self.shapes = {}
        for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                    for d in dims]
        self.readers = collections.Counter(i for n in g.node for i in n.input if i)
        for o in g.output:
            self.readers[o.name] += 1
        self.producer = {o: n for n in g.node for o in n.output}

    def is_const(self, name):
        return name in self.consts

    def rank(self, name):
        s = self.shapes.get(name)
        return None if s is None else len(s)


def symmetric(pads):
    h = len(pads) // 2
    return list(pads[:h]) == list(pads[h:])


def arith_rule(op, ins, G):
    """Two activations broadcast per example (same rank); an activation and a constant
    become a scale layer (or an Add folds into the bias before), which keeps the
    activation's shape and cannot vary along the batch."""
    a, b = ins
    if not G.is_const(a) and not G.is_const(b):
        sa, sb = G.shapes.get(a), G.shapes.get(b)
        if sa is None or sb is None or len(sa) != len(sb):
            return "broadcast"
        ok = all(p == q or p == 1 or q == 1 for p, q in zip(sa[1:], sb[1:]))
        return None if ok else "broadcast"
    if op == "Div" and G.is_const(a):
        return "broadcast"
    x, k = (b, G.consts[a]) if G.is_const(a) else (a, G.consts[b])
    sx = G.shapes.get(x)
    if sx is None or k.ndim > len(sx) or (k.ndim == len(sx) and k.shape[0] != 1):
        return "broadcast"
    for d, xd in zip(reversed(k.shape), reversed(sx)):
        if d != 1 and d != xd:
            return "broadcast"
    return None


def softmax_rule(node, G):
    """A final softmax over the classes of (N, K) is dropped by design; elsewhere Softmax
    is a layer over one axis."""
    x = node.input[0]
    r = G.rank(x)
    opset = [o.version for o in G.model.opset_import if o.domain in ("", "ai.onnx")][0]
    axis = attr(node, "axis", -1 if opset >= 13 else 1) % r
    final = node.output[0] in [o.name for o in G.model.graph.output] and \
        G.readers[node.output[0]] == 1
    if final and r == 2 and axis == 1:
        return "softmax"
    if node.op_type == "LogSoftmax":
        return "softmax"
    if axis == 0 or (opset < 13 and any(d != 1 for d in G.shapes[x][axis + 1:])):
        return "softmax-axis"
    return None


def rule_for(node, G):
    """The reason this node is not claimed, or None."""
    op, ins = node.op_type, [i for i in node.input]
    x = ins[0] if ins else None
    act = x is not None and x != "" and not G.is_const(x)
    if op in ("Softmax", "LogSoftmax"):
        return softmax_rule(node, G)
    if op == "Gather" and act and len(ins) == 2 and G.is_const(ins[1]):
        # one position of an activation along an axis but the batch (a slice layer)
        r, ax = G.rank(x), attr(node, "axis", 0)
        one = G.consts[ins[1]].size == 1 and G.consts[ins[1]].ndim <= 1
        return None if one and r is not None and ax % r != 0 else "shape-on-act"
    if op in SHAPE_OPS or (op in ("Concat", "Slice") and all(G.is_const(i) for i in ins if i)):
        if op == "Constant":
            return None
        return None if all(G.is_const(i) for i in ins if i) else "shape-on-act"
    if not act:
        return "const-data"
    r = G.rank(x)
    if op == "Concat":
        ax = attr(node, "axis")
        if any(G.is_const(i) for i in ins if i) or r is None or ax % r == 0:
            return "concat"
        return None
    if op == "Slice":
        if not all(G.is_const(i) for i in ins[1:] if i) or r is None:
            return "slice"
        st, en = G.consts[ins[1]], G.consts[ins[2]]
        axes = G.consts[ins[3]] if len(ins) > 3 and ins[3] else range(len(st))
        steps = G.consts[ins[4]] if len(ins) > 4 and ins[4] else [1] * len(st)
        shape = G.shapes.get(x)
        for a, b, e, k in zip(axes, st, en, steps):
            a = int(a) % r
            if a == 0 or k < 1 or shape[a] is None:
                return "slice"
            d = shape[a]
            b = min(max(b + d if b < 0 else b, 0), d)
            e = min(max(e + d if e < 0 else e, 0), d)
            if e <= b:
                return "slice"
        return None
    if op == "Split":
        ax = attr(node, "axis", 0)
        sizes_ok = len(ins) < 2 or not ins[1] or G.is_const(ins[1])
        return None if r and ax % r != 0 and sizes_ok else "split"
    if op == "Transpose":
        perm = attr(node, "perm")
        if perm is not None and list(perm) == sorted(perm):
            return "no-layer"  # the identity: the output is the input
        return None if perm is not None and perm[0] == 0 else "transpose"
    if op in ("Conv", "MaxPool", "AveragePool"):
        ks = attr(node, "kernel_shape")
        if op == "Conv" and G.is_const(ins[1]):
            ks = ks or list(G.consts[ins[1]].shape[2:])
        if op == "Conv" and (not G.is_const(ins[1]) or (len(ins) > 2 and ins[2] and
                                                        not G.is_const(ins[2]))):
            return "const-data"
        if (ks is not None and len(ks) != 2) or r != 4:
            return "3-D"
        ap = attr(node, "auto_pad", b"NOTSET")
        if ap in (b"SAME_UPPER", b"SAME_LOWER"):
            return "auto_pad"
        pads = attr(node, "pads", [0, 0, 0, 0])
        if op != "Conv":
            dl = attr(node, "dilations", [1, 1])
            if any(2 * p > d * (k - 1) + 1 for p, k, d in zip(pads, list(ks) * 2, list(dl) * 2)):
                return "pool-pads"
            if op == "AveragePool" and any(d != 1 for d in dl):
                return "dilated-pool"
            if len(node.output) > 1 and node.output[1]:
                return "pool-indices"
        return None
    if op == "GlobalAveragePool":
        return None if r == 4 else "gap-rank"
    if op == "ReduceMean":
        axes = attr(node, "axes")
        if r != 4 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            return "reduce"
        return None
    if op == "BatchNormalization":
        if attr(node, "training_mode", 0) or len([o for o in node.output if o]) > 1:
            return "training"
        if not all(G.is_const(i) for i in ins[1:]):
            return "const-data"
        return None if r is not None and r <= 4 else "bn-rank"
    if op == "Dropout":
        if len([o for o in node.output if o]) > 1 or (len(ins) > 2 and ins[2]):
            return "training"
        return None
    if op == "Gemm":
        if attr(node, "transA", 0) or r != 2:
            return "gemm"
        if not all(G.is_const(i) for i in ins[1:] if i):
            return "const-data"
        if len(ins) > 2 and ins[2]:
            c = G.consts[ins[2]]
            n = G.consts[ins[1]].shape[0 if attr(node, "transB", 0) else 1]
            if c.size != 1 and not (c.size == n and max(c.shape, default=1) == n):
                return "gemm"
        return None
    if op == "MatMul":
        if G.is_const(ins[1]):
            return None if r >= 2 and G.consts[ins[1]].ndim == 2 else "matmul"
        return None if r >= 3 and G.rank(ins[1]) == r else "matmul"
    if op == "LayerNormalization":
        axis = attr(node, "axis", -1)
        if axis % r == 0 or not all(G.is_const(i) for i in ins[1:] if i):
            return "layernorm"
        return None
    if op == "Clip":
        lo = G.consts.get(ins[1]) if len(ins) > 1 and ins[1] else None
        hi = G.consts.get(ins[2]) if len(ins) > 2 and ins[2] else None
        if lo is None or float(lo) != 0.0 or (hi is not None and float(hi) != 6.0):
            return "clip-bounds"
        return None
    if op in ("Add", "Sub", "Mul", "Div"):
        return arith_rule(op, ins, G)
    if op == "Flatten":
        ax = attr(node, "axis", 1)
        return None if ax == 1 or (r and ax == 1 - r) else "flatten-axis"
    if op == "Reshape":
        if not G.is_const(ins[1]):
            return "reshape"
        out, xs = G.shapes.get(node.output[0]), G.shapes.get(x)
        if not out or not xs or out[0] != xs[0] or not 2 <= len(out) <= 5:
            return "reshape"
        return None
    if op == "Pad":
        mode = attr(node, "mode", b"constant")
        pads = G.consts.get(ins[1]) if len(ins) > 1 else None
        val = ins[2] if len(ins) > 2 and ins[2] else None
        if (mode not in (b"constant", b"reflect", b"edge") or pads is None or r != 4 or
                (val is not None and not G.is_const(val)) or
                any(pads[i] for i in (0, 1, 4, 5)) or any(p < 0 for p in pads)):
            return "pad"
        return None
    if op == "Cast":
        return None if attr(node, "to") == 1 else "cast"
    return None


def fold_inputs(model, dataset):
    """Inputs after the first become initializers holding this data set's values."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    data = [i for i in g.input if i.name not in inits]
    for k, vi in enumerate(data[1:], start=1):
        path = os.path.join(dataset, "input_%d.pb" % k)
        t = load_pb(path)
        t.name = vi.name
        g.initializer.append(t)
    return data[0] if data else None


def drop_secondary_outputs(model):
    """Graph outputs after the first that are optional outputs of the node computing the
    first (LayerNormalization's Mean and InvStdDev) are removed: output 0 is compared."""
    g = model.graph
    if len(g.output) < 2:
        return
    node = next((n for n in g.node if n.output and n.output[0] == g.output[0].name), None)
    if node is None or not all(o.name in node.output[1:] for o in g.output[1:]):
        return
    while len(g.output) > 1:
        g.output.pop()


def classify(model, dataset, claims):
    """(reason, graph) for a skip, or (None, graph) for a claimed test."""
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not opset or not OPSET_MIN <= opset[0] <= OPSET_MAX:
        return "opset", None
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in claims:
            return "operator", None
        lo, hi = claims[n.op_type]
        if not lo <= opset[0] <= hi:
            return "operator", None
    drop_secondary_outputs(model)
    if len(model.graph.output) != 1:
        return "outputs", None
    x = fold_inputs(model, dataset)
    if x is None:
        return "no-layer", None
    for vi in [x] + list(model.graph.output):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            return "non-float", None
    dims = x.type.tensor_type.shape.dim
    if not 2 <= len(dims) <= 5:
        return "rank", None
    if any(not d.HasField("dim_value") for d in dims[1:]):
        return "dynamic", None
    G = Graph(model)
    for n in model.graph.node:
        why = rule_for(n, G)
        if why:
            return why, G
    out = model.graph.output[0].name
    if out == x.name or G.is_const(out) or not any(n.op_type in LAYER_OPS
                                                   for n in model.graph.node):
        return "no-layer", G
    return None, G


def run(model, dataset):
    """Import the folded model, predict on the data set; '' when the outputs match."""
    blob = model.SerializeToString()
    h = P()
    rc = lib.tlearn_model_import_onnx_buffer(ctypes.byref(h), blob, len(blob))
    if rc:
        return "refused: %s" % lib.tlearn_errmsg().decode()
    try:
        x = numpy_helper.to_array(load_pb(os.path.join(dataset, "input_0.pb")))
        want = numpy_helper.to_array(load_pb(os.path.join(dataset, "output_0.pb")))
        n = x.shape[0]
        if want.shape[:1] != (n,):
            return "output shape %s has no batch %d" % (want.shape, n)
        count = ctypes.c_int()
        check(lib.tlearn_model_layer_count(h, ctypes.byref(count)), "layer_count")
        rank, dims = ctypes.c_int(), (ctypes.c_int * 4)()
        check(lib.tlearn_model_layer_shape_nd(h, count.value - 1, ctypes.byref(rank), dims, 4),
              "layer_shape_nd")
        size = int(np.prod([dims[i] for i in range(rank.value)]))
        if size * n != want.size:
            return "output has %d values per example, expected %d" % (size, want.size // n)
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty(n * size, np.float32)
        rc = lib.tlearn_model_predict(h, fptr(x), n, fptr(out), out.size)
        if rc:
            return "predict failed: %s" % lib.tlearn_errmsg().decode()
        want = want.reshape(-1).astype(np.float32)
        if not np.allclose(out, want, rtol=RTOL, atol=ATOL, equal_nan=True):
            err = np.max(np.abs(out - want))
            return "outputs differ (max abs error %.3g)" % err
        return ""
    finally:
        lib.tlearn_model_destroy(ctypes.byref(h))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: conformance.py doc/onnx.md")
    claims = read_claims(sys.argv[1])
    if not os.path.isdir(DATA):
        sys.exit("conformance: %s is missing: install Debian's libonnx-testdata" % DATA)
    start = time.time()
    ran, passed, failures = 0, 0, []
    skipped = collections.Counter()
    for suite in SUITES:
        for d in sorted(glob.glob(os.path.join(DATA, suite, "*"))):
            path = os.path.join(d, "model.onnx")
            if not os.path.exists(path):
                continue
            sets = sorted(glob.glob(os.path.join(d, "test_data_set_*")))
            name = "%s/%s" % (suite, os.path.basename(d))
            try:
                model = onnx.load(path)
            except Exception as e:  # unreadable with this onnx: not ours to judge
                skipped["operator"] += 1
                print("note: %s unreadable by python3-onnx: %s" % (name, e))
                continue
            claimed = True
            for ds in sets:
                m = onnx.ModelProto()
                m.CopyFrom(model)
                try:
                    why, _ = classify(m, ds, claims)
                except Exception as e:  # shape inference or a missing .pb
                    why = "dynamic"
                    print("note: %s not classified (%s); skipped as dynamic" % (name, e))
                if why:
                    skipped[why] += 1
                    claimed = False
                    break
                err = run(m, ds)
                if err:
                    failures.append("%s (%s): %s" % (name, os.path.basename(ds), err))
                    break
            if claimed and sets:
                ran += 1
                if not failures or not failures[-1].startswith(name + " "):
                    passed += 1
    total = ran + sum(skipped.values())
    print("onnx-conformance: %d tests, ran %d, passed %d, failed %d, skipped %d as out of "
          "scope (%.0f s)" % (total, ran, passed, len(failures), sum(skipped.values()),
                               time.time() - start))
    for why, k in skipped.most_common():
        print("  skipped %4d  %-13s %s" % (k, why, RULES[why]))
    for f in failures:
        print("FAIL " + f)
    if ran == 0:
        print("FAIL: no test ran")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
