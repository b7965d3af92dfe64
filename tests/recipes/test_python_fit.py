"""The Python binding of the recipes: Model.fit(validation=, schedule=, early_stopping=)
returns a Keras-like history; bad input raises before training; verbose prints epoch lines."""
import contextlib
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'examples', 'python'))
import tlearn  # noqa: E402


def data(n, seed):
    g = np.random.default_rng(seed)
    y = g.integers(0, 3, n).astype(np.int32)
    x = (g.random((n, 6)) - 0.5).astype(np.float32)
    x[np.arange(n), y] += 1
    return x, y


def model():
    m = tlearn.Model(6)
    m.set_seed(3)
    m.add_dense("fc1", 8)
    m.add_activation("relu", "relu")
    m.add_dense("fc2", 3)
    return m


x, y = data(96, 1)
vx, vy = data(48, 2)
m, opt = model(), tlearn.Optimizer("sgd", lr=0.1, momentum=0.9)
h = m.fit(opt, x, y, batch=16, epochs=6, validation=(vx, vy),
          schedule=tlearn.Schedule("cosine", warmup_steps=4),
          early_stopping={"monitor": "val_accuracy", "patience": 10}, verbose=False)
for key in ("loss", "accuracy", "lr", "val_loss", "val_accuracy", "val_top_k_accuracy",
            "val_macro_f1"):
    assert len(h[key]) == 6, (key, h)
assert opt.schedule_position == 36  # 6 updates x 6 epochs
assert h["val_accuracy"][-1] > 0.8, h["val_accuracy"]
assert abs(h["lr"][-1]) < 1e-12  # cosine ends at 0 after the auto length
loss, acc = m.evaluate(vx, vy)
assert abs(acc - max(h["val_accuracy"])) < 1e-6  # best weights restored
metrics = m.evaluate_classes(vx, vy, k=2)
assert metrics["confusion"].sum() == 48 and metrics["confusion"].shape == (3, 3)
assert abs(np.trace(metrics["confusion"]) / 48 - acc) < 1e-6

# bad input raises before any training
w = m.get_tensor("fc1.weight").copy()
for kwargs, what in (({"validation": (vx[:, :5].copy(), vy)}, "validation x"),
                     ({"early_stopping": "val_loss"}, "no validation set")):
    try:
        m.fit(opt, x, y, epochs=2, verbose=False, **kwargs)
    except (tlearn.TlearnError, ValueError):
        pass
    else:
        raise AssertionError("not refused: " + what)
try:
    tlearn.Schedule("step", step_size=-1)
except tlearn.TlearnError as e:
    assert "step_size" in e.message
else:
    raise AssertionError("negative step_size accepted")
assert np.array_equal(w, m.get_tensor("fc1.weight"))

# verbose without tqdm on a pipe: one plain line per epoch
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    import builtins
    real_import = builtins.__import__
    builtins.__import__ = lambda name, *a, **k: (_ for _ in ()).throw(ImportError()) \
        if name == "tqdm" else real_import(name, *a, **k)
    try:
        model().fit(tlearn.Optimizer("adam"), x, y, epochs=3, verbose=True)
    finally:
        builtins.__import__ = real_import
lines = [l for l in buf.getvalue().splitlines() if l.startswith("epoch ")]
assert len(lines) == 3 and "loss=" in lines[0], buf.getvalue()
print("python recipes ok")
