"""The Python bindings (examples/python/tlearn) against the freshly built libtlearn.

Run by `meson test --suite python` with Debian's pytest under /usr/bin/python3; meson
passes TLEARN_LIBRARY (the built libtlearn.so.1) and PYTHONPATH (examples/python).
"""
import gc
import json
import os
import re
import struct

import numpy as np
import pytest

import tlearn


def small_mlp(seed=1, inputs=8, classes=3):
    m = tlearn.Model(inputs, 1, 1).set_seed(seed)
    m.add_dense("fc1", 16).add_relu("relu1").add_dense("fc2", classes)
    return m


def blobs(n=96, inputs=8, classes=3, seed=0):
    """Linearly separable clusters: class k is centred on +3 in coordinate k."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.int32)
    x = rng.normal(0, 0.5, size=(n, inputs)).astype(np.float32)
    x[np.arange(n), y] += 3.0
    return x, y


def small_cnn(seed=3):
    m = tlearn.Model(1, 8, 8).set_seed(seed)
    (m.add_conv2d("conv1", 4, 3, 1, 1, 1).add_batchnorm("bn1").add_relu("relu1")
      .add_maxpool2d("pool1", 2).add_flatten("flat").add_dense("fc1", 12).add_relu("relu2")
      .add_dense("fc2", 3))
    return m


# -- errors and validation ------------------------------------------------------------------

def test_version_matches_header_major():
    assert tlearn.version().split(".")[0] == "1"
    major, minor, patch = map(int, tlearn.version().split("."))
    assert tlearn.version_hex() == (major << 24) | (minor << 16) | (patch << 8)


def test_status_error_carries_code_and_message():
    with small_mlp() as m:
        with pytest.raises(tlearn.TlearnError) as info:
            m.add_dense("fc1", 4)  # duplicate name
        assert info.value.code == tlearn.EINVAL
        assert info.value.name == "TLEARN_EINVAL"
        assert "fc1" in info.value.message
        with pytest.raises(tlearn.TlearnError) as info:
            m.layer_index("nope")
        assert info.value.code == tlearn.ENOTFOUND


def test_wrong_dtype_is_a_python_error():
    with small_mlp() as m:
        x, y = blobs()
        with pytest.raises(TypeError, match="x has dtype complex64; expected real"):
            m.predict(x.astype(np.complex64))
        with pytest.raises(TypeError, match="labels has dtype float32; expected integers"):
            m.evaluate(x, y.astype(np.float32))
        with pytest.raises(TypeError, match="x must be a numpy.ndarray .* not list"):
            m.predict(x.tolist())


def test_bad_shapes_are_python_errors():
    with small_mlp() as m:
        x, y = blobs()
        with pytest.raises(ValueError, match="shape"):
            m.predict(x[:, :7].copy())
        with pytest.raises(ValueError, match="labels"):
            m.evaluate(x, y[:-1].copy())
        with pytest.raises(ValueError, match="shape"):
            m.predict(np.zeros(8, dtype=np.float32))  # no batch dimension


def test_closed_handle_raises_and_close_is_idempotent():
    m = small_mlp()
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(ValueError, match="closed"):
        len(m)


def test_context_managers_free_handles():
    with tlearn.Model(4, 1, 1) as m, tlearn.Optimizer("sgd") as o, tlearn.FreezePolicy() as f:
        assert not (m.closed or o.closed or f.closed)
    assert m.closed and o.closed and f.closed


def test_garbage_collection_frees_handles(monkeypatch):
    real = tlearn._C.tlearn_model_destroy
    freed = []

    def counting_destroy(pp):
        freed.append(1)
        real(pp)
    monkeypatch.setattr(tlearn._C, "tlearn_model_destroy", counting_destroy)
    for _ in range(50):
        small_mlp()  # dropped at once: __del__ must free it
    gc.collect()
    assert len(freed) == 50
    m = small_mlp()
    m.close()
    del m
    gc.collect()
    assert len(freed) == 51  # close() frees once; __del__ after close() does nothing


# -- building and introspection ---------------------------------------------------------------

def test_layers_shapes_and_counts():
    with small_cnn() as m:
        assert m.layers == ["conv1", "bn1", "relu1", "pool1", "flat", "fc1", "relu2", "fc2"]
        assert m.layer_kind(0) == "conv2d" and m.layer_kind(1) == "batchnorm"
        assert m.input_shape == (1, 8, 8)
        assert m.layer_shape(3) == (4, 4, 4)
        assert m.output_shape == (3, 1, 1)
        # conv 4*1*3*3+4, bn 4+4, fc1 64*12+12, fc2 12*3+3
        total, trainable = m.param_count()
        assert total == 40 + 8 + 780 + 39 == trainable
        names = m.tensor_names()
        assert "bn1.running_var" in names and "fc2.bias" in names
        assert m.get_tensor("conv1.weight").shape == (4, 1, 3, 3)


def test_set_and_get_tensor_roundtrip():
    with small_mlp() as m:
        w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 100
        m.set_tensor("fc1.weight", w)
        assert np.array_equal(m.get_tensor("fc1.weight"), w)
        with pytest.raises(tlearn.TlearnError) as info:
            m.set_tensor("fc1.weight", np.zeros(5, dtype=np.float32))
        assert info.value.code == tlearn.ESHAPE


def test_predict_is_the_dense_formula():
    with small_mlp() as m:
        x, _ = blobs(n=5)
        w1, b1 = m.get_tensor("fc1.weight"), m.get_tensor("fc1.bias")
        w2, b2 = m.get_tensor("fc2.weight"), m.get_tensor("fc2.bias")
        want = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
        np.testing.assert_allclose(m.predict(x), want, rtol=1e-5, atol=1e-5)


# -- training ---------------------------------------------------------------------------------

def test_fit_learns_and_calls_progress_every_step():
    x, y = blobs()
    with small_mlp() as m, tlearn.Optimizer("adam", lr=0.01) as o:
        loss0, _ = m.evaluate(x, y)
        calls = []
        m.fit(o, x, y, batch=32, epochs=4, progress=lambda *a: calls.append(a))
        assert len(calls) == 4 * 3
        assert [c[0] for c in calls] == [e for e in range(4) for _ in range(3)]
        assert all(c[1] == 4 and c[3] == 3 for c in calls)
        loss1, acc = m.evaluate(x, y)
        assert loss1 < loss0 and acc > 0.9


def test_fit_progress_can_cancel_and_exceptions_propagate():
    x, y = blobs()
    with small_mlp() as m, tlearn.Optimizer("sgd", lr=0.1) as o:
        calls = []

        def stop_after_two(*a):
            calls.append(a)
            return len(calls) == 2
        with pytest.raises(tlearn.TlearnError) as info:
            m.fit(o, x, y, batch=16, epochs=3, progress=stop_after_two)
        assert info.value.code == tlearn.ECANCELED and len(calls) == 2

        def boom(*a):
            raise KeyError("from the callback")
        with pytest.raises(KeyError, match="from the callback"):
            m.fit(o, x, y, batch=16, epochs=1, progress=boom)


def test_optimizer_parameters():
    with tlearn.Optimizer("sgd", lr=0.05, momentum=0.9) as o:
        assert o.kind == "sgd"
        assert o.lr == pytest.approx(0.05) and o.get("momentum") == pytest.approx(0.9)
        o.lr = 0.2
        assert o.get(tlearn.OPTIM_PARAMS["lr"]) == pytest.approx(0.2)
        with pytest.raises(tlearn.TlearnError):
            o.set("beta1", 0.5)  # not an SGD parameter
        with pytest.raises(ValueError, match="unknown parameter"):
            o.set("learning_rate", 0.1)
    with tlearn.Optimizer("adamw") as o:
        assert o.get("weight_decay") == pytest.approx(0.01)


def test_sgd_step_is_w_minus_lr_grad():
    x, y = blobs(n=8)
    with small_mlp() as m, tlearn.Optimizer("sgd", lr=0.5) as o:
        w = m.get_tensor("fc2.weight")
        m.compute_gradients(x, y)
        g = m.get_grad("fc2.weight")
        m.train_step(o, x, y)
        np.testing.assert_allclose(m.get_tensor("fc2.weight"), w - 0.5 * g, rtol=1e-5,
                                   atol=1e-6)


def test_input_gradient_matches_finite_difference():
    x, y = blobs(n=2)
    with small_mlp() as m:
        loss, dx = m.compute_gradients(x, y, input_grad=True)
        assert dx.shape == x.shape
        h = 1e-2
        xp = x.copy()
        xp[0, 3] += h
        xm = x.copy()
        xm[0, 3] -= h
        fd = (m.compute_gradients(xp, y) - m.compute_gradients(xm, y)) / (2 * h)
        assert dx[0, 3] == pytest.approx(fd, rel=2e-2, abs=1e-3)


def test_mse_training():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    t = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], dtype=np.float32)).astype(np.float32)
    with tlearn.Model(4, 1, 1) as m, tlearn.Optimizer("sgd", lr=0.1) as o:
        m.set_seed(2).add_dense("lin", 1).set_loss("mse")
        first = m.train_step_mse(o, x, t)
        for _ in range(200):
            last = m.train_step_mse(o, x, t)
        assert last < first * 1e-3


# -- transfer learning -----------------------------------------------------------------------

def test_freeze_policy_keeps_frozen_weights():
    x, y = blobs()
    with small_mlp() as m, tlearn.Optimizer("adam", lr=0.01) as o:
        with tlearn.FreezePolicy() as f:
            m.apply_freeze(f.until("relu1"))
        assert m.layer_frozen("fc1") and not m.layer_frozen("fc2")
        assert m.param_count() == (16 * 8 + 16 + 3 * 16 + 3, 3 * 16 + 3)
        w1, w2 = m.get_tensor("fc1.weight"), m.get_tensor("fc2.weight")
        m.fit(o, x, y, batch=32, epochs=1)
        assert np.array_equal(m.get_tensor("fc1.weight"), w1)
        assert not np.array_equal(m.get_tensor("fc2.weight"), w2)
        m.apply_freeze(None)
        assert not m.layer_frozen("fc1")


def test_discriminative_learning_rates():
    with small_mlp() as m, tlearn.FreezePolicy() as f:
        m.apply_freeze(f.ulmfit(2.0))
        assert m.layer_lr_scale("fc2") == pytest.approx(1.0)
        assert m.layer_lr_scale("fc1") == pytest.approx(0.5)
        m.apply_freeze(tlearn.FreezePolicy().lr_scale("fc*", 0.25))
        assert m.layer_lr_scale("fc1") == pytest.approx(0.25)
        with pytest.raises(tlearn.TlearnError) as info:
            m.apply_freeze(tlearn.FreezePolicy().match("conv*"))
        assert info.value.code == tlearn.ENOTFOUND


def test_features_and_cached_head_training():
    x, y = blobs()
    with small_mlp() as m, tlearn.Optimizer("adam", lr=0.01) as o:
        feats = m.features("relu1", x)
        assert feats.shape == (96, 16)
        w1, b1 = m.get_tensor("fc1.weight"), m.get_tensor("fc1.bias")
        np.testing.assert_allclose(feats, np.maximum(x @ w1.T + b1, 0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.predict_from("relu1", feats), m.predict(x), rtol=1e-5,
                                   atol=1e-5)
        with pytest.raises(tlearn.TlearnError) as info:
            m.train_step_from(o, "relu1", feats, y)  # prefix not frozen yet
        assert info.value.code == tlearn.ESTATE
        m.apply_freeze(tlearn.FreezePolicy().until("relu1"))
        losses = [m.train_step_from(o, "relu1", feats, y) for _ in range(30)]
        assert losses[-1] < losses[0]


def test_replace_head_and_truncate():
    with small_mlp(classes=3) as m:
        m.replace_head("relu1", 7)
        assert m.layers == ["fc1", "relu1", "head"] and m.output_shape == (7, 1, 1)
        m.truncate("fc1")
        assert m.layers == ["fc1"]


def test_cnn_trains_in_python():
    rng = np.random.default_rng(5)
    y = (np.arange(48) % 3).astype(np.int32)
    x = rng.normal(0, 0.3, size=(48, 1, 8, 8)).astype(np.float32)
    for i, k in enumerate(y):  # class k: a bright row at 2k+1
        x[i, 0, 2 * k + 1, :] += 2.0
    with small_cnn() as m, tlearn.Optimizer("adam", lr=0.01) as o:
        m.fit(o, x, y, batch=16, epochs=15)
        assert m.evaluate(x, y)[1] > 0.9
        assert m.predict(x).shape == (48, 3)
        assert m.features("pool1", x).shape == (48, 4, 4, 4)


# -- continual learning -------------------------------------------------------------------------

def test_ewc_penalty_grows_away_from_anchor():
    x, y = blobs()
    with small_mlp() as m:
        m.ewc_consolidate(x, y, "empirical", lam=10.0)
        assert m.penalty() == pytest.approx(0.0, abs=1e-7)
        fisher = m.ewc_fisher("fc2.weight")
        assert fisher.shape == (3, 16) and np.all(fisher >= 0) and fisher.sum() > 0
        w = m.get_tensor("fc2.weight")
        m.set_tensor("fc2.weight", (w + 0.1).astype(np.float32))
        # (lambda/2) * sum F * 0.1^2 over fc2.weight only
        assert m.penalty() == pytest.approx(5.0 * 0.01 * float(fisher.sum()), rel=1e-3)
        m.ewc_clear()
        assert m.penalty() == 0.0


def test_l2sp_penalty():
    with small_mlp() as m:
        m.l2sp_enable(alpha=2.0)
        w = m.get_tensor("fc2.bias")
        m.set_tensor("fc2.bias", (w + 0.5).astype(np.float32))
        assert m.penalty() == pytest.approx(0.5 * 2.0 * 3 * 0.25, rel=1e-4)


# -- files ------------------------------------------------------------------------------------

def test_save_load_roundtrip_with_optimizer_and_metadata(tmp_path):
    x, y = blobs()
    path = str(tmp_path / "m.tlc")
    with small_mlp() as m, tlearn.Optimizer("adam", lr=0.003) as o:
        m.fit(o, x, y, batch=32, epochs=1)
        m.set_metadata("dataset", "blobs")
        m.save(path, o, compress=6)
        want = m.predict(x)
    assert tlearn.read_metadata(path)["dataset"] == "blobs"
    m2, o2 = tlearn.Model.load(path, with_optimizer=True)
    with m2, o2:
        np.testing.assert_array_equal(m2.predict(x), want)
        assert o2.kind == "adam" and o2.lr == pytest.approx(0.003)
        assert m2.get_metadata("dataset") == "blobs"
    with small_mlp(seed=9) as m3:
        assert m3.load_weights(path) == (4, 0)
        np.testing.assert_array_equal(m3.predict(x), want)


def test_load_errors(tmp_path):
    with pytest.raises(tlearn.TlearnError) as info:
        tlearn.Model.load(str(tmp_path / "missing.tlc"))
    assert info.value.code == tlearn.EIO
    bad = tmp_path / "bad.tlc"
    bad.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(tlearn.TlearnError) as info:
        tlearn.Model.load(str(bad))
    assert info.value.code == tlearn.EFORMAT


def write_safetensors(path, tensors):
    """A minimal safetensors writer (8-byte little-endian header length, JSON, data)."""
    header, blobs_, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs_.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs_))


def test_safetensors_import_with_name_map_and_export(tmp_path):
    x, _ = blobs(n=4)
    with small_mlp(seed=4) as src:
        file_tensors = {"backbone." + k: v for k, v in src.state_dict().items()}
        want = src.predict(x)
    path = str(tmp_path / "w.safetensors")
    write_safetensors(path, file_tensors)
    with small_mlp(seed=5) as m:
        with pytest.raises(tlearn.TlearnError):  # strict and unmapped: names do not match
            m.import_safetensors(path)
        n = m.import_safetensors(path, name_map=lambda s: s[len("backbone."):])
        assert n == 4
        np.testing.assert_array_equal(m.predict(x), want)
        out = str(tmp_path / "out.safetensors")
        m.export_safetensors(out)
        with open(out, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
        assert header["fc1.weight"]["shape"] == [16, 8]
        assert header["fc2.bias"]["dtype"] == "F32"
    with small_mlp(seed=6) as m:
        assert m.import_safetensors(path, name_map={"backbone.fc2.weight": "fc2.weight"},
                                    strict=False) == 1


def test_bytes_are_the_files_and_load_back(tmp_path):
    x, y = blobs()
    path, st_path = str(tmp_path / "m.tlc"), str(tmp_path / "m.safetensors")
    with small_mlp() as m, tlearn.Optimizer("adam", lr=0.003) as o:
        m.fit(o, x, y, batch=32, epochs=1)
        m.set_metadata("dataset", "blobs")
        want = m.predict(x)
        for flags in (tlearn.SAVE_FULL, tlearn.SAVE_INFERENCE | 6 << 8):
            m.save(path, o, inference=bool(flags & 1), compress=flags >> 8)
            data = m.to_bytes(o, flags)
            assert isinstance(data, bytes)
            with open(path, "rb") as f:
                assert f.read() == data
        data = m.to_bytes(o)
        m.export_safetensors(st_path)
        st = m.export_safetensors_bytes()
        with open(st_path, "rb") as f:
            assert f.read() == st
    # bytes, bytearray, a read-only memoryview and a numpy array all load
    for source in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        m2, o2 = tlearn.Model.from_bytes(source, with_optimizer=True)
        with m2, o2:
            np.testing.assert_array_equal(m2.predict(x), want)
            assert o2.kind == "adam" and o2.lr == pytest.approx(0.003)
            assert m2.get_metadata("dataset") == "blobs"
            assert m2.to_bytes(o2) == data
    with tlearn.Model.from_bytes(data) as m3:  # without the optimizer: a model alone
        np.testing.assert_array_equal(m3.predict(x), want)
    with small_mlp(seed=9) as m4:
        assert m4.load_weights_bytes(data) == (4, 0)
        np.testing.assert_array_equal(m4.predict(x), want)
    with small_mlp(seed=10) as m5:
        assert m5.import_safetensors_bytes(st) == 4
        np.testing.assert_array_equal(m5.predict(x), want)
    with small_mlp(seed=11) as m6:  # name maps work as for files
        assert m6.import_safetensors_bytes(st, name_map={"fc2.bias": "fc2.bias"},
                                           strict=False) == 1


def test_damaged_bytes_fail_as_files_do(tmp_path):
    with small_mlp() as m:
        data = m.to_bytes()
        before = m.state_dict()
        bad = tmp_path / "bad.tlc"
        for cut in (0, 10, 64, len(data) // 2, len(data) - 1):
            bad.write_bytes(data[:cut])
            with pytest.raises(tlearn.TlearnError) as from_file:
                tlearn.Model.load(str(bad))
            with pytest.raises(tlearn.TlearnError) as from_bytes:
                tlearn.Model.from_bytes(data[:cut])
            assert from_bytes.value.code == from_file.value.code == tlearn.EFORMAT
            assert (str(from_bytes.value).split(": ", 2)[2]
                    == str(from_file.value).split(": ", 2)[2])
            with pytest.raises(tlearn.TlearnError):
                m.load_weights_bytes(data[:cut])
            with pytest.raises(tlearn.TlearnError):
                m.import_safetensors_bytes(data[:cut])
        for k, v in m.state_dict().items():  # failed loads changed nothing
            np.testing.assert_array_equal(v, before[k])
        with pytest.raises(TypeError):
            m.load_weights_bytes("not bytes")
        with pytest.raises(TypeError):
            tlearn.Model.from_bytes(12)


def test_name_map_exception_propagates(tmp_path):
    path = str(tmp_path / "w.safetensors")
    with small_mlp() as m:
        write_safetensors(path, m.state_dict())

        def bad(name):
            raise RuntimeError("mapping failed")
        with pytest.raises(RuntimeError, match="mapping failed"):
            m.import_safetensors(path, name_map=bad)


def test_import_onnx_from_torch(tmp_path):
    torch = pytest.importorskip("torch")  # conftest turns a skip into a failure
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, 5)).eval()
    path = str(tmp_path / "net.onnx")
    torch.onnx.export(net, torch.zeros(1, 1, 8, 8), path, opset_version=13,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    x = np.random.default_rng(0).normal(size=(6, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    with tlearn.Model.import_onnx(path) as m:
        np.testing.assert_allclose(m.predict(x), want, rtol=1e-4, atol=1e-5)
    with open(path, "rb") as f:
        with tlearn.Model.import_onnx(f.read()) as m:
            np.testing.assert_allclose(m.predict(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(tlearn.TlearnError) as info:
        tlearn.Model.import_onnx(b"\x00garbage")
    assert info.value.code in (tlearn.EFORMAT, tlearn.EUNSUPPORTED)


def test_export_onnx_round_trip(tmp_path):
    """export_onnx / export_onnx_bytes: the same bytes, read back by the importer with the
    same predictions; a bad opset is a TlearnError with EINVAL."""
    m = tlearn.Model(1, 8, 8).set_seed(5)
    m.add_conv2d("conv", 4, 3, pad=1).add_relu("relu").add_maxpool2d("pool", 2)
    m.add_flatten("flat").add_dense("fc", 5)
    x = np.random.default_rng(1).normal(size=(3, 1, 8, 8)).astype(np.float32)
    want = m.predict(x)
    path = str(tmp_path / "m.onnx")
    m.export_onnx(path, opset=13)
    data = m.export_onnx_bytes(opset=13)
    with open(path, "rb") as f:
        assert f.read() == data
    assert m.export_onnx_bytes() != data  # opset 17 by default
    with tlearn.Model.import_onnx(data) as back:
        assert np.array_equal(back.predict(x), want)
    for opset in (12, 18):
        with pytest.raises(tlearn.TlearnError) as info:
            m.export_onnx_bytes(opset)
        assert info.value.code == tlearn.EINVAL


def test_import_onnx_encoder_with_bool_mask(tmp_path):
    """torch's src_key_padding_mask (bool, true where padded) is a second graph input: the
    binding passes numpy bools as int32 0/1 and the fused attention reads them as torch."""
    torch = pytest.importorskip("torch")  # conftest turns a skip into a failure

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, 1)

        def forward(self, x, key_padding_mask):
            return self.enc(x, src_key_padding_mask=key_padding_mask)

    torch.manual_seed(0)
    net = Masked().eval()
    x = torch.randn(2, 5, 16)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    path = str(tmp_path / "enc.onnx")
    torch.onnx.export(net, (x, mask), path, opset_version=13)
    want = net(x, mask).detach().numpy()  # with gradients: torch's ordinary path
    with tlearn.Model.import_onnx(path) as m:
        assert [dtype for _, dtype, _ in m.inputs] == ["float32", "int32"]
        (got,) = m.run(x.numpy(), mask.numpy())
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)


# -- completeness --------------------------------------------------------------------------------

def header_functions():
    import re
    header = os.path.join(os.path.dirname(tlearn.__file__), "..", "..", "..", "include",
                          "tlearn", "tlearn.h")
    with open(header) as f:
        text = f.read()
    names = set(re.findall(r"TLEARN_API\s+[^;(]*?\b(tlearn_\w+)\s*\(", text))
    assert len(names) > 70, "the header parser found too few functions"
    return names


def test_every_header_function_is_declared_and_wrapped():
    from tlearn import _lib
    declared = set(_lib._SIGNATURES)
    assert declared == header_functions()
    with open(tlearn.__file__) as f:
        source = f.read()
    # called directly, or named for _Handle.close() (the destroy functions)
    unwrapped = sorted(n for n in declared
                       if not re.search(r"_C\.%s\b" % n, source) and '"%s"' % n not in source)
    assert unwrapped == [], "no Python method calls these: %s" % unwrapped


def test_residual_block_and_other_layers():
    with tlearn.Model(2, 6, 6) as m:
        m.set_seed(3)
        m.add_conv2d_ex("stem", 4, (3, 3), pad=(1, 1), bias=False).add_relu("r0")
        m.add_conv2d("c1", 4, 3, 1, 1, 1).add_batchnorm("bn1").add_activation("a1", "gelu")
        m.add_add("sum", "r0")              # c1 path + the stem's output
        assert m.layer_shape(m.layer_index("sum")) == (4, 6, 6)
        m.set_next_input("r0").add_conv2d("dw", 4, 3, 1, 1, 4)    # depthwise branch from r0
        m.add_avgpool2d("avg", 2).add_dropout("drop", 0.25).add_global_avgpool("gap")
        m.add_activation("leaky", "leaky_relu", 0.1).add_dense("fc", 3)
        assert m.layer_shape(m.layer_index("avg")) == (4, 3, 3)
        assert m.layer_shape(m.layer_index("gap")) == (4, 1, 1)
        assert m.get_tensor("stem.weight").shape == (4, 2, 3, 3)
        assert "stem.bias" not in m.tensor_names()
        assert m.get_tensor("dw.weight").shape == (4, 1, 3, 3)
        x = np.random.default_rng(1).normal(size=(5, 2, 6, 6)).astype(np.float32)
        # global average pooling is the mean over H, W of the previous layer's output
        pooled = m.features("drop", x).mean(axis=(2, 3))
        np.testing.assert_allclose(m.features("gap", x), pooled, rtol=1e-5, atol=1e-6)
        with pytest.raises(tlearn.TlearnError) as info:
            m.add_add("bad", "stem")         # fc: (3, 1, 1) + stem: (4, 6, 6)
        assert info.value.code == tlearn.ESHAPE
        with tlearn.Optimizer("sgd", lr=0.05, momentum=0.9, nesterov=1) as o:
            y = np.array([0, 1, 2, 0, 1], dtype=np.int32)
            m.set_training(True)
            assert np.isfinite(m.train_step(o, x, y))
        assert m.workspace_bytes() > 0


def test_data_movement_layers():
    """concat, slice, reshape, transpose against numpy on the same arrays."""
    with tlearn.Model(4, 3, 2) as m:
        m.add_slice("lo", 0, 0, 1).set_next_input(None).add_slice("odd", -3, 1, None, 2)
        m.add_concat("cat", ["lo", "input", "odd", "lo"], axis=0)      # (8, 3, 2)
        m.add_reshape("g", [2, 4, 0, -1]).add_transpose("sh", [1, 0, 2, 3])
        m.add_reshape("back", [8, 3, 2]).add_transpose("cl", (1, 2, 0))
        assert m.layer_shape_nd(m.layer_index("g")) == (2, 4, 2, 3)  # 0: the input's dim 2
        assert m.layer_shape_nd(m.layer_index("cl")) == (3, 2, 8)
        assert [m.layer_kind(m.layer_index(n)) for n in ("lo", "cat", "g", "sh")] == [
            "slice", "concat", "reshape", "transpose"]
        x = np.random.default_rng(2).normal(size=(3, 4, 3, 2)).astype(np.float32)
        cat = np.concatenate([x[:, :1], x, x[:, 1::2], x[:, :1]], axis=1)
        shuffled = cat.reshape(3, 2, 4, 3, 2).transpose(0, 2, 1, 3, 4).reshape(3, 8, 3, 2)
        want = shuffled.transpose(0, 2, 3, 1).reshape(3, -1)
        np.testing.assert_array_equal(m.predict(x).reshape(3, -1), want)
        with pytest.raises(tlearn.TlearnError) as info:
            m.add_concat("bad", ["cat", "nope"])
        assert info.value.code == tlearn.ENOTFOUND
        with pytest.raises(tlearn.TlearnError) as info:
            m.add_transpose("bad", [0, 0, 1])
        assert info.value.code == tlearn.EINVAL
def test_elementwise_layers():
    """Squeeze-excitation with broadcasting, a layer scale, the 1.1 activations, softmax."""
    with tlearn.Model(3, 4, 5) as m:
        m.add_conv2d("c", 4, 3, 1, 1, 1).add_activation_ex("hsw", "hardswish")
        m.add_global_avgpool("gap").add_activation_ex("gate", "hardsigmoid", (0.2, 0.5))
        m.add_binary("se", "mul", "hsw", "gate")
        assert m.layer_shape(m.layer_index("se")) == (4, 4, 5)
        m.add_scale("ls", (4, 1, 1), bias=True).add_activation_ex("clip", "clip", (-1, 1))
        m.add_softmax("sm", 0)
        assert m.layer_kind(m.layer_index("se")) == "binary"
        assert m.layer_kind(m.layer_index("ls")) == "scale"
        assert m.get_tensor("ls.weight").shape == (4, 1, 1)
        x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
        y = m.predict(x).reshape(2, 4, 4, 5)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
        # a new scale is the identity: softmax over channels of the clipped gated map
        z = np.clip(m.features("se", x), -1, 1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
        with pytest.raises(tlearn.TlearnError) as info:
            m.add_binary("bad", "add", "gap", "x")     # no layer or input named x
        assert info.value.code == tlearn.ENOTFOUND
        with pytest.raises(tlearn.TlearnError) as info:
            m.add_scale("bad", (3,))                   # the last axis is 5
        assert info.value.code == tlearn.ESHAPE
        with pytest.raises(ValueError):
            m.add_binary("bad", "pow", None, "c")
        assert len(m) == 8


def test_online_ewc_and_bn_stats_policy():
    x, y = blobs()
    with small_mlp() as m:
        m.ewc_set_mode("online", 0.9)
        m.ewc_consolidate(x, y, "exact", lam=1.0)
        m.ewc_consolidate(x, y, "sampled", lam=1.0)
        assert m.ewc_fisher("fc1.weight", task=0).shape == (16, 8)
        with pytest.raises(tlearn.TlearnError) as info:
            m.ewc_set_mode("separate")     # tasks already consolidated
        assert info.value.code == tlearn.ESTATE
    with small_cnn() as m, tlearn.FreezePolicy() as f:
        m.apply_freeze(f.range(0, 1).bn_stats(True))
        assert m.layer_frozen("conv1") and m.layer_frozen("bn1")
        assert not m.layer_frozen("fc1")


def test_loader_rules(tmp_path):
    import subprocess
    import sys
    from tlearn import _lib
    fake = tmp_path / "libtlearn.so.1"
    fake.write_bytes(b"\x7fELF ... NEEDED libasan.so.8 ...")
    assert _lib._sanitized(str(fake))
    assert not _lib._sanitized(os.environ["TLEARN_LIBRARY"])
    # An explicit TLEARN_LIBRARY that cannot be loaded is an error, never a fallback.
    env = dict(os.environ, TLEARN_LIBRARY=str(tmp_path / "missing.so"))
    proc = subprocess.run([sys.executable, "-c", "import tlearn"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "TLEARN_LIBRARY" in proc.stderr


def test_norm_pool_pad_matmul_layers():
    with tlearn.Model(3, 9, 9) as m:
        m.add_pad("pad", (1, 0, 0, 1), "reflect")                      # 3x10x10
        m.add_maxpool2d_ex("max", 3, 2, ceil_mode=True)                 # 3x5x5
        m.add_avgpool2d_ex("avg", 2, 1, pads=(1, 1, 0, 0))             # 3x5x5
        m.add_layernorm_channels("ln2d", 1e-6).add_drop_path("dp", 0.1)
        m.add_adaptive_avgpool("ap", (2, 3)).add_pad("pad2", (0, 0, 1, 0), value=0.5)
        m.add_layernorm("ln", naxes=2, affine=False)
        assert [m.layer_kind(i) for i in range(len(m))] == [
            "pad", "maxpool2d", "avgpool2d", "layernorm", "drop_path", "adaptive_avgpool",
            "pad", "layernorm"]
        assert m.layer_shape(1) == (3, 5, 5)
        assert m.output_shape == (3, 3, 3)
        assert np.isfinite(m.predict(np.full((2, 3, 9, 9), 0.25, np.float32))).all()
        with pytest.raises(ValueError):
            m.add_pad("bad", 1, mode="wrap")
        with pytest.raises(tlearn.TlearnError) as info:
            m.add_layernorm("bad", naxes=0)
        assert info.value.code == tlearn.EINVAL
    with tlearn.Model.with_input("x", (5, 6)) as s:
        s.add_linear("q", 4).set_next_input("x").add_linear("k", 4, bias=False)
        s.add_matmul("scores", "q", "k", transpose_b=True)
        assert s.layer_shape_nd(2) == (5, 5)
        assert s.layer_kind(2) == "matmul"
        with pytest.raises(tlearn.TlearnError) as info:
            s.add_matmul("bad", "q", "nothere")
        assert info.value.code == tlearn.ENOTFOUND


# -- transformers ----------------------------------------------------------------------------

def test_text_encoder_with_mask_trains_and_refuses_bad_ids():
    t, v = 6, 12
    rng = np.random.default_rng(3)
    ids = rng.integers(1, v, size=(16, t))  # int64, as numpy makes them
    mask = np.ones((16, t), np.int32)
    mask[::2, 4:] = 0
    ids[mask == 0] = 0
    y = (ids[:, 0] % 2).astype(np.int32)
    with tlearn.Model.with_input("ids", (t,), "int32") as m, \
            tlearn.Optimizer("adam", lr=0.01) as o:
        m.add_input("mask", (t,), "int32").set_next_input("ids")
        m.add_embedding("tok", v, 8, padding_idx=0).add_position_embedding("pos", t)
        m.add_attention("att", 2, mask="mask").add_token_pool("pool", mean=True, mask="mask")
        m.add_linear("head", 2)
        first = m.compute_gradients_inputs([ids, mask], y)
        for _ in range(40):
            m.train_step_inputs(o, [ids, mask], y)
        assert m.compute_gradients_inputs([ids, mask], y) < first
        (out,) = m.run(ids, mask)
        assert out.shape == (16, 2)
        bad = ids.copy()
        bad[0, 0] = 2**40
        with pytest.raises(ValueError, match="input 0 \\('ids'\\) holds 1099511627776, outside "
                                             "int32's range"):
            m.run(bad, mask)
        bad[0, 0] = v
        with pytest.raises(tlearn.TlearnError, match="token id 12"):
            m.train_step_inputs(o, [bad, mask], y)
        with pytest.raises(tlearn.TlearnError):
            m.compute_gradients_inputs([ids, mask], y, input_grad=True)  # int32 first input


def test_contrastive_pairs():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 6)).astype(np.float32)  # 4 anchors, then their 4 positives
    with tlearn.Model.with_input("x", (6,)) as m, tlearn.Optimizer("sgd", lr=0.5) as o:
        m.add_linear("proj", 4)
        with pytest.raises(tlearn.TlearnError, match="CONTRASTIVE"):
            m.train_step_pairs(o, [x])
        m.set_loss("contrastive_symmetric").set_contrastive_temperature(0.1)
        z = m.run(x)[0].astype(np.float64)  # the loss from its definition, in numpy
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        s = z[:4] @ z[4:].T / 0.1
        lse_r, lse_c = np.log(np.exp(s).sum(1)), np.log(np.exp(s).sum(0))
        want = ((lse_r - np.diag(s)).mean() + (lse_c - np.diag(s)).mean()) / 2
        loss, dx = m.compute_gradients_pairs([x], input_grad=True)
        assert loss == pytest.approx(want, rel=1e-5)
        assert dx.shape == x.shape
        for _ in range(30):
            last = m.train_step_pairs(o, [x])
        assert last < 0.5 * loss
        with pytest.raises(tlearn.TlearnError, match="even"):
            m.train_step_pairs(o, [x[:7]])
        with pytest.raises(tlearn.TlearnError, match="temperature"):
            m.set_contrastive_temperature(0.0)


def test_vit_patch_embedding_input_gradient():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1], np.int32)
    with tlearn.Model(3, 8, 8) as m:
        m.set_seed(1).add_patch_embed("patch", 8, 4).add_attention("att", 2, causal=True)
        m.add_token_pool("pool").add_linear("head", 2)
        loss, dx = m.compute_gradients_inputs([x], y, input_grad=True)
        assert dx.shape == x.shape
        h = 1e-2
        xp, xm = x.copy(), x.copy()
        xp[1, 2, 5, 6] += h
        xm[1, 2, 5, 6] -= h
        fd = (m.compute_gradients_inputs([xp], y) - m.compute_gradients_inputs([xm], y)) / (2 * h)
        assert dx[1, 2, 5, 6] == pytest.approx(fd, rel=2e-2, abs=1e-3)


def test_fewshot_prototypes_similarity_transferability():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    y = (np.arange(30) % 3).astype(np.int32)
    x[np.arange(30), y] += 3
    with tlearn.Model(6, 1, 1) as m:
        m.add_dense("fc", 6).add_activation("act", "tanh")
        m.prototype_head("act", "proto", x, y, 3, temperature=5.0)
        assert m.layer_kind(2) == "prototype"
        assert (m.predict(x).argmax(1) == y).mean() > 0.9
        m.prototype_add_classes("proto", 1)
        m.prototype_update("proto", x[:2], np.array([3, 3], np.int32))
        assert m.predict(x).shape == (30, 4)
        m.prototype_remove_class("proto", 3)
        e = m.embed("act", x)
        assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
        assert m.transferability("act", x, y, 3, "hscore") > 0
        m.prototype_to_dense("proto")
        assert m.layer_kind(2) == "dense"
    s = tlearn.similarity_scores(x[:4], x)
    idx, sc = tlearn.similarity_topk(x[:4], x, 2)
    assert list(idx[:, 0]) == [0, 1, 2, 3] and np.allclose(sc[:, 0], 1, atol=1e-5)
    assert np.allclose(np.sort(s, 1)[:, -2], sc[:, 1], atol=1e-6)
    assert np.isfinite(tlearn.transferability(x, y, 3, "logme"))
    with pytest.raises(tlearn.TlearnError):
        tlearn.transferability(x, y, 2, "leep")


def test_domain_adaptation():
    m = tlearn.Model.with_input("x", (4,))
    m.add_linear("feat", 6).add_batchnorm("bn").add_relu("r").add_dense("cls", 3)
    m.set_next_input("r")
    m.add_grad_reverse("grl", 0.0).add_dense("dom", 2)
    m.set_outputs(["cls", "dom"])
    assert m.layer_kind(4) == "grad_reverse"
    m.set_grad_reverse_lambda(tlearn.dann_lambda(0.5))
    assert abs(tlearn.dann_lambda(1.0) - (2 / (1 + np.exp(-10.0)) - 1)) < 1e-6
    m.set_output_loss(0, "softmax_ce").set_output_loss(1, "softmax_ce", 0.5)
    m.set_discrepancy("r", "coral", 0.2).set_mmd_bandwidths((0.5, 1.0, 2.0))
    x = np.sin(np.arange(32, dtype=np.float32) * 0.37).reshape(8, 4).astype(np.float32)
    y = np.array([0, 1, 2, 0, -1, -1, -1, -1], np.int32)
    d = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)
    opt = tlearn.Optimizer("sgd", lr=0.1)
    assert np.isfinite(m.train_step_multi(opt, [x], [y, d]))
    assert np.isfinite(m.train_step_multi(opt, [x], [y, None], d.astype(np.uint8)))
    with pytest.raises(tlearn.TlearnError) as e:
        m.train_step_multi(opt, [x], [None, None])
    assert e.value.name == "TLEARN_EINVAL"  # no labels to tell target rows by
    m.adapt_bn(x, batch=4)
    w = m.get_tensor("bn.weight")
    assert np.isfinite(m.tent_step(opt, x))
    m.tent_reset()
    assert np.array_equal(m.get_tensor("bn.weight"), w)
    v, g = tlearn.discrepancy("mmd", x, d.astype(np.uint8))
    assert v >= 0 and g.shape == x.shape


def test_reducer_sees_buckets_and_averages():
    """set_reducer: buckets in reverse layer order (fc2: 3*8+3 = 27, fc1: 8*4+8 = 40), then
    the loss; a second worker with the same gradients leaves the step as one process's."""
    def build():
        m = tlearn.Model(4, 1, 1).set_seed(3)
        m.add_dense("fc1", 8).add_relu("r").add_dense("fc2", 3)
        return m
    a, b = build(), build()
    calls = []

    def reduce(bucket, data):
        calls.append((bucket, data.size))
        data *= 2  # this worker's part plus an identical one's
    a.set_reducer(reduce, lambda: None, workers=2, bucket_floats=1)
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4)
    y = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    la = a.train_step(tlearn.Optimizer("sgd"), x, y)
    lb = b.train_step(tlearn.Optimizer("sgd"), x, y)
    assert calls == [(0, 27), (1, 40), (2, 1)]
    assert la == lb
    assert np.array_equal(a.get_tensor("fc1.weight"), b.get_tensor("fc1.weight"))

    def failing_wait():
        raise RuntimeError("a worker is gone")
    a.set_reducer(reduce, failing_wait, workers=2)
    with pytest.raises(tlearn.TlearnError):
        a.train_step(tlearn.Optimizer("sgd"), x, y)
    a.set_reducer(None, None, 1)
    a.train_step(tlearn.Optimizer("sgd"), x, y)
