"""The tlearn package as a Python user meets it: threads sharing a model, Ctrl-C, arrays of
other dtypes and torch tensors, version, docstrings and type hints.

Run by `meson test --suite python` (TLEARN_LIBRARY, PYTHONPATH and TLEARN_PROJECT_VERSION
come from tests/python/meson.build). torch is required: without it the tests fail.
"""
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import tlearn


def cnn(seed=5):
    """Enough work per call (a conv over 16x16 maps) for two threads to overlap in C."""
    m = tlearn.Model(2, 16, 16).set_seed(seed)
    (m.add_conv2d("conv1", 8, 3, 1, 1).add_batchnorm("bn1").add_relu("r1")
      .add_maxpool2d("pool", 2).add_flatten("flat").add_dense("fc1", 32).add_relu("r2")
      .add_dense("fc2", 4))
    return m


def data(n, seed, classes=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 16, 16)).astype(np.float32)
    y = (np.arange(n) % classes).astype(np.int32)
    x[np.arange(n), 0, y, y] += 4.0  # learnable: a bright pixel per class
    return x, y


# -- threads: a lock per handle ------------------------------------------------------------

def run_threads(*targets):
    errors = []

    def guard(fn):
        try:
            fn()
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)
    ts = [threading.Thread(target=guard, args=(fn,)) for fn in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def test_two_threads_predicting_on_one_model_get_the_serial_results():
    # Without the lock the C workspace is shared: the issue saw outputs off by up to 636.
    with cnn() as m:
        xs = [data(48, seed)[0] * (1 + 9 * seed) for seed in (0, 1)]
        serial = [m.predict(x) for x in xs]
        got = [[], []]

        def worker(k):
            return lambda: got[k].extend(m.predict(xs[k]) for _ in range(40))
        run_threads(worker(0), worker(1))
        for k in (0, 1):
            for out in got[k]:
                np.testing.assert_array_equal(out, serial[k])


def test_two_threads_training_one_model_match_serial_training():
    # Both threads take the same step (same batch, one shared Adam): in whatever order the
    # lock lets them in, 2 x 15 steps must equal 30 serial steps bit for bit, and a third
    # thread predicting meanwhile must only ever see one of the serial states.
    x, y = data(32, 2)
    probe = data(16, 3)[0]
    with cnn() as ref, tlearn.Optimizer("adam", lr=1e-3) as o:
        states = [ref.predict(probe)]
        for _ in range(30):
            ref.train_step(o, x, y)
            states.append(ref.predict(probe))
        expected = ref.state_dict()
    with cnn() as m, tlearn.Optimizer("adam", lr=1e-3) as o:
        seen = []
        done = threading.Event()

        def train():
            for _ in range(15):
                m.train_step(o, x, y)

        def watch():
            while not done.is_set():
                seen.append(m.predict(probe))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            run_threads(train, train)
        finally:
            done.set()
            watcher.join()
        for name, value in m.state_dict().items():
            np.testing.assert_array_equal(value, expected[name], err_msg=name)
        assert seen, "the watcher never ran"
        for out in seen:
            assert any(np.array_equal(out, s) for s in states), \
                "a prediction matches none of the 31 serial states"


def test_close_waits_for_a_call_in_another_thread():
    m = cnn()
    x = data(2000, 4)[0]
    started = threading.Event()
    result = []

    def predict():
        with m.lock:  # re-entrant: predict takes it again; close() must wait for both
            started.set()
            time.sleep(0.05)
            result.append(m.predict(x))
    t = threading.Thread(target=predict)
    t.start()
    started.wait()
    m.close()  # takes the lock: the prediction finishes first, then the handle goes
    t.join()
    assert m.closed and result[0].shape == (2000, 4) and np.isfinite(result[0]).all()


# -- Ctrl-C ----------------------------------------------------------------------------------

CHILD = textwrap.dedent(r'''
    import json, sys, time
    import numpy as np
    import tlearn

    mode, catch = sys.argv[1], sys.argv[2] == "catch"

    def build():
        m = tlearn.Model(2, 16, 16).set_seed(5)
        # ~2.4 M multiply-adds per example: 40000 examples take seconds to predict
        (m.add_conv2d("conv1", 32, 3, 1, 1).add_relu("r1").add_conv2d("conv2", 32, 3, 1, 1)
          .add_relu("r2").add_flatten("flat").add_dense("fc", 4))
        return m
    m = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2, 16, 16)).astype(np.float32)
    y = (np.arange(64) % 4).astype(np.int32)
    o = tlearn.Optimizer("sgd", lr=0.01)
    steps, snaps = [0], [None]

    def progress(epoch, epochs, step, steps_per_epoch, loss):
        steps[0] += 1
        snaps[0] = m.state_dict()   # the weights after this completed update
        if steps[0] == 3:
            print("READY", flush=True)

    big = rng.normal(size=(40000, 2, 16, 16)).astype(np.float32)
    def run():
        if mode == "fit":
            m.fit(o, x, y, batch=8, epochs=100000, progress=progress)
        elif mode == "fit_quiet":  # no progress callback, no bar: Ctrl-C must still stop it
            print("READY", flush=True)
            m.fit(o, x, y, batch=8, epochs=100000, verbose=False)
        elif mode == "fit_batches":
            m.fit_batches(o, x, y, batch=8, epochs=100000, progress=progress)
        elif mode == "train_loop":  # the user's own loop of short calls
            while True:
                m.train_step(o, x, y)
                steps[0] += 1
                if steps[0] == 2:
                    print("READY", flush=True)
        elif mode == "predict":
            print("READY", flush=True)
            m.predict(big)
        elif mode == "evaluate":
            print("READY", flush=True)
            m.evaluate(big, np.zeros(len(big), np.int32))
    if not catch:
        run()
        sys.exit(0)
    try:
        run()
        print(json.dumps({"finished": True}), flush=True)
    except KeyboardInterrupt:
        t = time.monotonic()
        last = snaps[0]
        state = m.state_dict()
        if mode == "train_loop":  # replay: the interrupt may come before steps[0] += 1
            r, ro = build(), tlearn.Optimizer("sgd", lr=0.01)
            for _ in range(steps[0]):
                r.train_step(ro, x, y)
            last = r.state_dict()
            if not all(np.array_equal(v, last[k]) for k, v in state.items()):
                r.train_step(ro, x, y)
                last = r.state_dict()
        same = (last is None or all(np.array_equal(v, last[k]) for k, v in state.items()))
        out = m.predict(x)
        print(json.dumps({"finished": False, "at": t, "steps": steps[0],
                          "same_as_last_step": same,
                          "predicts": bool(np.isfinite(out).all()) and out.shape == (64, 4),
                          "trains": bool(np.isfinite(m.train_step(o, x, y)))}), flush=True)
''')


def interrupt_child(mode, catch):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", CHILD, mode, "catch" if catch else "raise"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert line.strip() == "READY", line + p.stderr.read()
        time.sleep(0.3)
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, err, sent


@pytest.mark.parametrize("mode", ["fit", "fit_quiet", "fit_batches", "train_loop", "predict",
                                  "evaluate"])
def test_ctrl_c_raises_keyboard_interrupt_promptly_and_leaves_the_model_usable(mode):
    rc, out, err, sent = interrupt_child(mode, catch=True)
    assert rc == 0, err
    assert "Exception ignored" not in err and "ECANCELED" not in err, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["finished"] is False, "the call ran to its end instead of stopping"
    # prompt: a step or an inference chunk (~0.1 s), with room for a loaded machine
    assert res["at"] - sent < 3.0, "KeyboardInterrupt came %.1f s after SIGINT" % (
        res["at"] - sent)
    assert res["same_as_last_step"], "weights are not those of the last completed update"
    assert res["predicts"] and res["trains"]


@pytest.mark.parametrize("mode", ["fit", "predict"])
def test_uncaught_ctrl_c_ends_with_a_plain_keyboard_interrupt_traceback(mode):
    rc, out, err, _ = interrupt_child(mode, catch=False)
    assert rc == -signal.SIGINT, (rc, err)  # Python re-raises SIGINT after the traceback
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert "Exception ignored" not in err and "TlearnError" not in err, err
    assert "During handling of the above exception" not in err, err


def test_sigint_handler_is_restored_after_a_call():
    before = signal.getsignal(signal.SIGINT)
    with cnn() as m, tlearn.Optimizer("sgd") as o:
        x, y = data(16, 0)
        m.fit(o, x, y, batch=8, epochs=1, verbose=False)
        m.predict(x)
    assert signal.getsignal(signal.SIGINT) is before


# -- arrays of other dtypes, torch tensors -----------------------------------------------------

def test_float64_fortran_and_strided_inputs_give_the_float32_results():
    with cnn() as m:
        x, y = data(24, 6)
        want = m.predict(x)
        np.testing.assert_array_equal(m.predict(x.astype(np.float64)), want)
        np.testing.assert_array_equal(m.predict(np.asfortranarray(x)), want)
        wide = np.concatenate([x, x], axis=3)[..., ::2]  # non-contiguous view of x's values
        assert not wide.flags.c_contiguous
        np.testing.assert_array_equal(m.predict(wide), m.predict(np.ascontiguousarray(wide)))
        u8 = np.arange(24 * 512, dtype=np.uint8).reshape(24, 2, 16, 16)
        np.testing.assert_array_equal(m.predict(u8), m.predict(u8.astype(np.float32)))
        assert m.evaluate(x, y.astype(np.int64)) == m.evaluate(x, y)


def test_int64_labels_train_like_int32_and_out_of_range_values_are_refused():
    x, y = data(32, 7)
    with cnn() as a, cnn() as b, tlearn.Optimizer("sgd", lr=0.05) as oa, \
            tlearn.Optimizer("sgd", lr=0.05) as ob:
        a.fit(oa, x, y, batch=8, epochs=2, verbose=False)
        b.fit(ob, x.astype(np.float64), y.astype(np.int64), batch=8, epochs=2, verbose=False)
        for name, value in a.state_dict().items():
            np.testing.assert_array_equal(b.state_dict()[name], value, err_msg=name)
        bad = y.astype(np.int64)
        bad[3] = 2**31
        before = b.state_dict()
        with pytest.raises(ValueError, match=r"labels holds 2147483648, outside int32's range"):
            b.train_step(ob, x, bad)
        bad[3] = -2**31 - 1
        with pytest.raises(ValueError, match="validation labels holds -2147483649"):
            b.fit(ob, x, y, validation=(x, bad), verbose=False)
        for name, value in before.items():  # a refused call changes nothing
            np.testing.assert_array_equal(b.state_dict()[name], value)
        with pytest.raises(TypeError, match="labels has dtype float64; expected integers"):
            b.evaluate(x, y.astype(np.float64))


def test_torch_tensors_are_accepted_through_dlpack():
    import torch  # python3-torch: a missing package fails this test
    with cnn() as m, tlearn.Optimizer("sgd", lr=0.05) as o:
        x, y = data(16, 8)
        want = m.predict(x)
        t = torch.from_numpy(x.copy())
        np.testing.assert_array_equal(m.predict(t), want)
        np.testing.assert_array_equal(m.predict(t.double()), want)
        # a transposed (non-contiguous) tensor is copied into C order
        tt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(2, 3)
        assert not tt.is_contiguous()
        np.testing.assert_array_equal(m.predict(tt), want)
        # zero-copy for a contiguous float32 tensor: the array C reads is the tensor's memory
        assert np.shares_memory(tlearn._array(t, np.float32, "x"), t.numpy())
        assert not np.shares_memory(tlearn._array(t.double(), np.float32, "x"), t.numpy())
        loss_t = m.compute_gradients(t, torch.from_numpy(y.astype(np.int64)))
        assert loss_t == m.compute_gradients(x, y)
        with pytest.raises(TypeError, match=r"x must be .*detach"):
            m.predict(t.clone().requires_grad_())
        big = torch.from_numpy(y.astype(np.int64))
        big[0] = 2**40
        with pytest.raises(ValueError, match="labels holds 1099511627776"):
            m.train_step(o, t, big)


def test_array_protocol_objects_and_int64_token_ids():
    import torch
    class Wrapped:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None):
            return self.a if dtype is None else self.a.astype(dtype)
    with cnn() as m:
        x = data(8, 9)[0]
        np.testing.assert_array_equal(m.predict(Wrapped(x)), m.predict(x))
    ids = torch.randint(1, 20, (6, 5))  # int64, as torch makes them
    with tlearn.Model.with_input("ids", (5,), "int32") as m:
        m.add_embedding("tok", 20, 4).add_token_pool("pool", mean=True).add_linear("head", 2)
        (got,) = m.run(ids)
        (want,) = m.run(ids.numpy().astype(np.int32))
        np.testing.assert_array_equal(got, want)


# -- chunked inference equals one C call ---------------------------------------------------

def test_chunked_inference_equals_one_c_call():
    with cnn() as m:
        x, y = data(3000, 10)  # > the first chunk: predict runs several C calls
        out = np.empty((3000, 4), np.float32)
        tlearn._check(tlearn._C.tlearn_model_predict(m.handle, tlearn._fptr(x), 3000,
                                                     tlearn._fptr(out), out.size))
        np.testing.assert_array_equal(m.predict(x), out)
        f = np.empty((3000, 8 * 16 * 16), np.float32)
        tlearn._check(tlearn._C.tlearn_model_features(m.handle, b"r1", tlearn._fptr(x), 3000,
                                                      tlearn._fptr(f), f.size))
        np.testing.assert_array_equal(m.features("r1", x).reshape(3000, -1), f)
        import ctypes
        loss, acc = ctypes.c_float(), ctypes.c_float()
        tlearn._check(tlearn._C.tlearn_model_evaluate(m.handle, tlearn._fptr(x),
                                                      tlearn._iptr(y), 3000,
                                                      ctypes.byref(loss), ctypes.byref(acc)))
        got = m.evaluate(x, y)
        assert got[1] == acc.value
        assert got[0] == pytest.approx(loss.value, rel=1e-6)


# -- version, docstrings, type hints ------------------------------------------------------

def test_version_is_the_projects_and_the_librarys():
    assert tlearn.__version__ == os.environ["TLEARN_PROJECT_VERSION"]
    assert tlearn.__version__ == tlearn.version()


def public_api():
    """(qualified name, object) of every public name of the package: module functions and
    classes, their public methods and properties."""
    for name in sorted(set(tlearn.__all__) | {n for n in dir(tlearn) if not n.startswith("_")}):
        obj = getattr(tlearn, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or \
                getattr(obj, "__module__", "") != "tlearn":
            continue
        yield name, obj
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__", "__len__"):
                    continue
                if isinstance(value, (classmethod, staticmethod)):
                    value = value.__func__
                if isinstance(value, property) or inspect.isfunction(value):
                    yield "%s.%s" % (name, attr), value
    for base in ("handle", "lock", "closed", "close"):
        yield "_Handle." + base, vars(tlearn._Handle)[base]


def test_every_public_name_has_a_docstring():
    missing = [n for n, obj in public_api()
               if not n.endswith("__init__") and not (inspect.getdoc(obj) or "").strip()]
    assert missing == [], "no docstring: %s" % ", ".join(missing)


def test_every_public_signature_has_type_hints():
    missing = []
    for name, obj in public_api():
        fns = [f for f in (obj.fget, obj.fset) if f] if isinstance(obj, property) else [obj]
        for fn in fns:
            if inspect.isclass(fn):
                continue
            sig = inspect.signature(inspect.unwrap(fn))
            for p in sig.parameters.values():
                if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty:
                    missing.append("%s(%s)" % (name, p.name))
            if sig.return_annotation is inspect.Signature.empty:
                missing.append("%s -> ?" % name)
    assert missing == [], "no type hint: %s" % ", ".join(missing)
    assert os.path.isfile(os.path.join(os.path.dirname(tlearn.__file__), "py.typed"))


def test_handles_other_than_models_refuse_pickle_clearly():
    import copy
    import pickle
    with tlearn.Optimizer("sgd") as o:
        with pytest.raises(TypeError, match="cannot pickle or copy a tlearn.Optimizer"):
            pickle.dumps(o)
        with pytest.raises(TypeError, match="cannot pickle or copy a tlearn.Optimizer"):
            copy.copy(o)


# -- copies and pickle ---------------------------------------------------------------------

def test_copies_train_independently_and_like_the_original():
    import copy
    x, y = data(32, 11)
    with cnn() as m, tlearn.Optimizer("sgd", lr=0.05, momentum=0.9) as o:
        m.add_dropout("drop", 0.3)  # draws from the model's generator: copied with it
        m.set_threads(2)
        m.train_step(o, x, y)
        before = m.state_dict()
        for make in (copy.copy, copy.deepcopy):
            c = make(m)
            assert c is not m and c.handle.value != m.handle.value
            with tlearn.Optimizer("sgd", lr=0.05, momentum=0.9) as oc:
                for _ in range(3):
                    c.train_step(oc, x, y)
            after_copy = c.state_dict()
            for name, value in m.state_dict().items():  # the original did not move
                np.testing.assert_array_equal(value, before[name], err_msg=name)
            assert not np.array_equal(after_copy["fc2.weight"], before["fc2.weight"])
            # the same three steps on a second copy from the same point: the same weights
            # (the dropout masks come from the copied generator)
            c2 = make(m)
            with tlearn.Optimizer("sgd", lr=0.05, momentum=0.9) as oc:
                for _ in range(3):
                    c2.train_step(oc, x, y)
            for name, value in c2.state_dict().items():
                np.testing.assert_array_equal(value, after_copy[name], err_msg=name)
            assert c._threads == 2
            c.close()
            c2.close()


def test_collecting_a_copy_leaves_the_original_usable():
    import copy
    import gc
    x = data(8, 12)[0]
    with cnn() as m:
        want = m.predict(x)
        c = copy.copy(m)
        del c
        gc.collect()
        np.testing.assert_array_equal(m.predict(x), want)
        d = copy.deepcopy(m)
        m.close()
        np.testing.assert_array_equal(d.predict(x), want)  # and the other way round
        d.close()


def test_pickle_round_trip_predicts_identically():
    import pickle
    x, y = data(16, 13)
    with cnn() as m, tlearn.Optimizer("adam", lr=1e-3) as o:
        m.fit(o, x, y, batch=8, epochs=2, verbose=False)
        m.set_metadata("task", "blobs")
        blob = pickle.dumps(m)
        with pickle.loads(blob) as back:
            np.testing.assert_array_equal(back.predict(x), m.predict(x))
            assert back.get_metadata("task") == "blobs"
            assert back.layers == m.layers
            for name, value in m.state_dict().items():
                np.testing.assert_array_equal(back.state_dict()[name], value, err_msg=name)
            # pickled inside a container too, with other objects
            obj = pickle.loads(pickle.dumps({"model": back, "n": 1}))
            np.testing.assert_array_equal(obj["model"].predict(x), m.predict(x))


def test_token_labels_accept_int64_and_refuse_out_of_range():
    rng = np.random.default_rng(14)
    ids = rng.integers(1, 12, size=(4, 5))  # int64
    labels = ids.copy()
    labels[:, ::2] = -100  # positions without a prediction
    with tlearn.Model.with_input("ids", (5,), "int32") as m:
        m.set_seed(2)
        m.add_embedding("tok", 12, 6).add_linear("head", 12)
        want = m.compute_gradients_tokens([ids.astype(np.int32)], labels.astype(np.int32))
        assert m.compute_gradients_tokens([ids], labels) == want
        bad = labels.copy()
        bad[1, 1] = -2**33
        with pytest.raises(ValueError, match="labels holds -8589934592, outside int32"):
            m.compute_gradients_tokens([ids], bad)
        with pytest.raises(ValueError, match="labels has 19 values; expected n x 5 = 20"):
            m.compute_gradients_tokens([ids], labels.ravel()[:-1])
