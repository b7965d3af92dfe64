"""Small ONNX graphs through the importer for what the zoo and ONNX's backend tests do not
reach: Split into slices, a zero Pad before a MaxPool (a pad layer: zeros take part in the
maximum), reflect padding, asymmetric AveragePool pads with ceil_mode, Concat of two
activations, Transpose and Reshape of activations. Expected values from torch."""
import os
import sys
import tempfile

import numpy as np

try:
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import helper, numpy_helper, TensorProto
except ImportError as e:
    sys.exit("test_shape_ops: %s: install python3-onnx and python3-torch" % e)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tl  # noqa: E402


def model(nodes, shape, out_shape, inits=(), opset=13):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def run(m, x):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.onnx")
        onnx.save(m, p)
        h = tl.Model.import_onnx(p)
    try:
        return h.predict(x)
    finally:
        h.close()


def check(name, m, x, want):
    got = run(m, x).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    print("ok", name)


rng = np.random.default_rng(0)
x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
tx = torch.from_numpy(x)
i64 = lambda v: np.array(v, np.int64)  # noqa: E731

# Split (opset 13, sizes as an input) then Concat of the two parts in swapped order.
m = model([helper.make_node("Split", ["x", "s"], ["a", "b"], axis=1),
           helper.make_node("Concat", ["b", "a"], ["y"], axis=1)],
          [2, 4, 7, 6], [2, 4, 7, 6], [("s", i64([1, 3]))])
check("split13+concat", m, x, torch.cat([tx[:, 1:], tx[:, :1]], 1).numpy())
# Split (opset 11, attribute) along W; only the second part is read.
m = model([helper.make_node("Split", ["x"], ["a", "b"], axis=-1, split=[2, 4]),
           helper.make_node("Relu", ["b"], ["y"])], [2, 4, 7, 6], [2, 4, 7, 4], opset=11)
check("split11", m, x, torch.relu(tx[..., 2:]).numpy())
# A zero Pad before a MaxPool: the zeros win over negative values.
m = model([helper.make_node("Pad", ["x", "p"], ["q"]),
           helper.make_node("MaxPool", ["q"], ["y"], kernel_shape=[3, 3], strides=[2, 2])],
          [2, 4, 7, 6], [2, 4, 4, 4], [("p", i64([0, 0, 1, 2, 0, 0, 1, 1]))])
check("pad+maxpool", m, x, F.max_pool2d(F.pad(tx, (2, 1, 1, 1)), 3, 2).numpy())
# Reflect padding, then a convolution-free graph output.
m = model([helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")],
          [2, 4, 7, 6], [2, 4, 10, 9], [("p", i64([0, 0, 2, 1, 0, 0, 1, 2]))])
check("reflect-pad", m, x, F.pad(tx, (1, 2, 2, 1), mode="reflect").numpy())
# AveragePool with asymmetric pads and ceil_mode adding a partial last row (ONNX pads:
# top, left, bottom, right). torch has no asymmetric padding: pad explicitly and divide by
# the count of real elements in each window (count_include_pad=0).
m = model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 0, 0, 1], ceil_mode=1, count_include_pad=0)],
          [2, 4, 7, 6], [2, 4, 4, 3])
ones = F.pad(torch.ones_like(tx), (0, 1, 1, 0))
want = (F.avg_pool2d(F.pad(tx, (0, 1, 1, 0)), 3, 2, ceil_mode=True) /
        F.avg_pool2d(ones, 3, 2, ceil_mode=True))
check("avgpool-asym-ceil", m, x, want.numpy())
# Channel shuffle: Reshape -> Transpose -> Reshape.
m = model([helper.make_node("Reshape", ["x", "s1"], ["r"]),
           helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
           helper.make_node("Reshape", ["t", "s2"], ["y"])],
          [2, 4, 7, 6], [2, 4, 7, 6], [("s1", i64([2, 2, 2, 7, 6])), ("s2", i64([2, -1, 7, 6]))])
check("channel-shuffle", m, x,
      tx.view(2, 2, 2, 7, 6).transpose(1, 2).reshape(2, 4, 7, 6).numpy())
