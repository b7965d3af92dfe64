"""Python bindings of libtlearn (ctypes + numpy): transfer learning on the CPU.

Three classes own the C handles: :class:`Model`, :class:`FreezePolicy` and
:class:`Optimizer` (and :class:`Schedule`). Each frees its handle on ``close()``, at the end
of a ``with`` block, or when garbage-collected.

Arrays: inputs are float32 and labels int32, shaped ``(n, C, H, W)`` or ``(n, C*H*W)``. A
C-contiguous numpy array of that dtype is passed to C as it is; anything else is converted
first, which costs one copy of the array (n x size x 4 bytes) per call: float64 or integer
arrays, int64 labels (refused with ValueError when a value does not fit int32),
non-contiguous or Fortran-ordered arrays, torch tensors (through DLPack, zero-copy when
already float32/int32 and contiguous on the CPU) and other objects with ``__array__``.
Wrong shapes raise ``ValueError`` and wrong types ``TypeError`` before the C library sees
them. A failing C call raises :class:`TlearnError` with the status code and the library's
message.

Threads: every handle carries a re-entrant lock that each method holds while it uses the
C handle, so threads sharing a model take turns (the C library allows one thread per
handle; distinct models run in parallel, the lock being released by ctypes' GIL release).

Ctrl-C: during :meth:`Model.fit` and the other long calls, SIGINT stops the C loop after
the current step (or inference chunk) and raises ``KeyboardInterrupt``; the model keeps
the weights of the last completed step.

Copies: ``copy.copy``, ``copy.deepcopy`` and ``pickle`` give independent models through
checkpoint bytes.

Fine-tune a model and save it::

    import tlearn
    with tlearn.Model.load("pretrained.tlc") as m, tlearn.Optimizer("adam", lr=1e-3) as opt:
        m.replace_head("fc1", 10)
        m.apply_freeze(tlearn.FreezePolicy().until("fc1"))
        m.fit(opt, x, y, batch=32, epochs=5)
        m.save("finetuned.tlc", opt)

The library is found through ``TLEARN_LIBRARY``, then a meson build tree of this
checkout, then ``pkg-config --variable=libdir tlearn``, then the system (see
``tlearn._lib``).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import itertools
import math
import os
import signal
import threading
import time
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    TypeVar, Union)

import numpy as np

from . import _lib as L
from ._version import __version__

__all__ = ["__version__", "TlearnError", "Model", "FreezePolicy", "Optimizer", "Schedule",
           "read_metadata", "version", "version_hex", "strerror", "blas_info", "dann_lambda",
           "discrepancy", "similarity_scores", "similarity_topk", "transferability"]

_C = L.load_library()
_H = TypeVar("_H", bound="_Handle")
#: What array arguments accept: numpy arrays, torch tensors, objects with __array__.
ArrayLike = Any

# Status codes (tlearn.h): values fixed forever.
OK = 0
EINVAL, ENOMEM, ESHAPE, ENOTFOUND, EIO, EFORMAT = -1, -2, -3, -4, -5, -6
EUNSUPPORTED, ENONFINITE, ESTATE, EVERSION, ECANCELED = -7, -8, -9, -10, -11
_STATUS_NAMES = {0: "TLEARN_OK", -1: "TLEARN_EINVAL", -2: "TLEARN_ENOMEM",
                 -3: "TLEARN_ESHAPE", -4: "TLEARN_ENOTFOUND", -5: "TLEARN_EIO",
                 -6: "TLEARN_EFORMAT", -7: "TLEARN_EUNSUPPORTED", -8: "TLEARN_ENONFINITE",
                 -9: "TLEARN_ESTATE", -10: "TLEARN_EVERSION", -11: "TLEARN_ECANCELED"}

LAYER_KINDS = {1: "dense", 2: "flatten", 3: "activation", 4: "conv2d", 5: "maxpool2d",
               6: "avgpool2d", 7: "global_avgpool", 8: "batchnorm", 9: "dropout", 10: "add",
               11: "binary", 12: "scale", 13: "softmax", 14: "concat", 15: "slice",
               16: "reshape", 17: "transpose", 18: "layernorm", 19: "adaptive_avgpool",
               20: "pad", 21: "matmul", 22: "drop_path",
               30: "embedding", 31: "position_embedding", 32: "attention",
               33: "token_pool", 34: "patch_embed", 40: "lora_sum", 50: "grad_reverse", 60: "prototype"}
TRANSFER_METRICS = {"logme": 1, "leep": 2, "hscore": 3}
PROTO_FEATURES, PROTO_LEARN_TEMPERATURE = 1, 2
ACTIVATIONS = {"relu": 1, "tanh": 2, "sigmoid": 3, "gelu": 4, "relu6": 5, "leaky_relu": 6,
               "hardsigmoid": 7, "hardswish": 8, "silu": 9, "clip": 10, "gelu_tanh": 11}
BINARY_OPS = {"add": 1, "sub": 2, "mul": 3, "div": 4}
LOSSES = {"softmax_ce": 1, "mse": 2, "contrastive": 3, "contrastive_symmetric": 4}
DISCREPANCIES = {"coral": 1, "mmd": 2}
PAD_MODES = {"constant": 1, "reflect": 2, "edge": 3}
OPTIMIZERS = {"sgd": 1, "adam": 2, "adamw": 3}
REDUCE_EVALUATE = 1  # tlearn_reduce_flag: evaluate sums over every worker
REDUCE_FISHER = 2  # tlearn_ewc_consolidate sums the Fisher over every worker
REDUCE_BATCHNORM = 4  # synchronised BatchNorm: batch statistics over every worker
OPTIM_PARAMS = {"lr": 1, "momentum": 2, "dampening": 3, "nesterov": 4, "weight_decay": 5,
                "beta1": 6, "beta2": 7, "eps": 8, "clip_norm": 9}
FISHER = {"empirical": 1, "exact": 2, "sampled": 3}
SCHEDULES = {"constant": 1, "step": 2, "multistep": 3, "exponential": 4, "cosine": 5,
             "cosine_restarts": 6, "one_cycle": 7, "slanted_triangular": 8}
SCHED_PARAMS = {"unit": 1, "gamma": 2, "step_size": 3, "period": 4, "t_max": 4, "t_0": 4,
                "t_mult": 5, "eta_min": 6, "factor": 7, "total_steps": 8, "pct_start": 9,
                "div_factor": 10, "final_div_factor": 11, "linear_anneal": 12,
                "three_phase": 13, "cycle_momentum": 14, "base_momentum": 15,
                "max_momentum": 16, "cut_frac": 17, "ratio": 18, "warmup_steps": 19,
                "warmup_start_factor": 20}
SCHED_UNITS = {"batch": 0, "epoch": 1}
# enum tlearn_metric, by the names of the history dict (Keras style)
METRICS = {"loss": 1, "accuracy": 2, "val_loss": 3, "val_accuracy": 4,
           "val_top_k_accuracy": 5, "val_macro_f1": 6, "val_mae": 7, "lr": 8, "improved": 9,
           "trainable_layers": 10}
EWC_MODES = {"separate": 1, "online": 2}
SAVE_FULL, SAVE_INFERENCE = 0, 1
LOAD_STRICT, LOAD_PARTIAL = 0, 1


class TlearnError(Exception):
    """A libtlearn call failed. ``code`` is the negative TLEARN_E* status, ``name`` its
    macro name and ``message`` the library's detail (tlearn_errmsg())."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.name = _STATUS_NAMES.get(code, "status %d" % code)
        self.message = message
        super().__init__("%s (%s): %s" % (strerror(code), self.name, message))


def strerror(code: int) -> str:
    """Short description of a status code (tlearn_strerror)."""
    return _C.tlearn_strerror(int(code)).decode()


def version() -> str:
    """Version string of the loaded library, "MAJOR.MINOR.PATCH"."""
    return _C.tlearn_version_string().decode()


def blas_info() -> str:
    """Which BLIS sub-configuration runs the matrix products and why, as one line of
    ``key=value`` fields (tlearn_blas_info)."""
    buf = ctypes.create_string_buffer(256)
    _check(_C.tlearn_blas_info(buf, len(buf), None))
    return buf.value.decode()


def version_hex() -> int:
    """Version of the loaded library as 0xMMmmpp00 (compare with a minimum you need)."""
    return _C.tlearn_version_hex()


def _check(rc):
    if rc != OK:
        raise TlearnError(rc, _C.tlearn_errmsg().decode("utf-8", "replace"))
    return rc


def _enc(s, what):
    if s is None:
        return None
    if not isinstance(s, str):
        raise TypeError("%s must be a str, not %s" % (what, type(s).__name__))
    return s.encode()


def _pair(v):
    """(h, w) from one number or a pair."""
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _pads(pads):
    """(top, left, bottom, right) from one number, a (h, w) pair or four numbers."""
    if np.isscalar(pads):
        return (int(pads),) * 4
    pads = [int(p) for p in pads]
    if len(pads) == 2:
        return (pads[0], pads[1], pads[0], pads[1])
    if len(pads) != 4:
        raise ValueError("pads must be one number, (h, w) or (top, left, bottom, right)")
    return tuple(pads)


def _path(p):
    import os
    return os.fsencode(p)


def _in_bytes(data):
    """(pointer argument, length) of bytes-like @p data for a *_buffer call: bytes are
    passed as they are, a writable buffer (bytearray, numpy) without a copy, anything
    else readable by memoryview (a read-only memoryview, mmap) through one copy."""
    if isinstance(data, bytes):
        return data, len(data)
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        raise TypeError("data must be bytes-like, not %s" % type(data).__name__) from None
    if not view.readonly and view.c_contiguous:
        return (ctypes.c_char * view.nbytes).from_buffer(view), view.nbytes
    raw = view.tobytes()
    return raw, len(raw)


def _out_bytes(call):
    """The buffer a *_buffer call allocates (call(pointer_out, size_out)), copied into
    bytes and released with tlearn_free."""
    p, n = ctypes.c_void_p(), ctypes.c_size_t()
    _check(call(ctypes.byref(p), ctypes.byref(n)))
    try:
        return ctypes.string_at(p, n.value)
    finally:
        _C.tlearn_free(p)


def _enum(table, value, what):
    """Accept a name from @p table or its integer value."""
    if isinstance(value, str):
        try:
            return table[value.lower()]
        except KeyError:
            raise ValueError("unknown %s %r; expected one of %s"
                             % (what, value, ", ".join(sorted(table)))) from None
    return int(value)


_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1


def _foreign(a: Any, what: str) -> np.ndarray:
    """A numpy view of a DLPack exporter (a CPU torch tensor: no copy) or of an object with
    ``__array__``; TypeError naming @p what for anything else."""
    err = None
    if hasattr(a, "__dlpack__"):
        try:
            return np.from_dlpack(a)
        except (RuntimeError, TypeError, ValueError, BufferError) as e:
            err = e
    if hasattr(a, "__array__"):
        try:
            return np.asarray(a)
        except (RuntimeError, TypeError, ValueError) as e:
            err = e
    raise TypeError("%s must be a numpy.ndarray or an array-like object with __array__ or "
                    "__dlpack__ (a torch tensor), not %s%s"
                    % (what, type(a).__name__, ": %s" % err if err else "")) from None


def _array(a: Any, dtype: Any, what: str) -> np.ndarray:
    """@p a as an aligned C-contiguous numpy array of @p dtype (float32 or int32).

    A numpy array that already is one is passed as it is (no copy); anything else is
    converted once: other real dtypes, non-contiguous or Fortran-ordered arrays, torch
    tensors (DLPack, zero-copy when float32/int32 and contiguous) and ``__array__`` objects.
    Integers bound for int32 must fit it (ValueError naming @p what); complex, object and
    string arrays are refused (TypeError)."""
    if not isinstance(a, np.ndarray):
        a = _foreign(a, what)
    want = np.dtype(dtype)
    if a.dtype != want:
        kind = a.dtype.kind
        if want == np.int32:
            if kind not in "iub":
                raise TypeError("%s has dtype %s; expected integers (int32, or int64 that "
                                "fit int32)" % (what, a.dtype))
            if kind != "b" and a.size and (a.dtype.itemsize > 4 or kind == "u"):
                lo, hi = int(a.min()), int(a.max())
                if lo < _INT32_MIN or hi > _INT32_MAX:
                    raise ValueError("%s holds %d, outside int32's range [-2^31, 2^31)"
                                     % (what, lo if lo < _INT32_MIN else hi))
        elif kind not in "fiub":
            raise TypeError("%s has dtype %s; expected real numbers (float32)"
                            % (what, a.dtype))
    if a.dtype != want or not (a.flags.c_contiguous and a.flags.aligned):
        a = np.require(a, want, ["C", "A"])
    return a


def _fptr(arr: np.ndarray) -> Any:
    return arr.ctypes.data_as(L.f32p)


def _iptr(arr: np.ndarray) -> Any:
    return arr.ctypes.data_as(L.i32p)


def _batch(x: Any, sample_shape: Sequence[int], what: str) -> Tuple[np.ndarray, int]:
    """@p x converted to float32 (see :func:`_array`) and its number of examples, for
    samples of shape @p sample_shape (C, H, W). Accepted: (n, C, H, W), (n, C*H*W), or
    (n,)+anything with the right size per sample."""
    x = _array(x, np.float32, what)
    size = math.prod(sample_shape)
    if x.ndim < 2 or x.shape[0] < 1 or math.prod(x.shape[1:]) != size:
        raise ValueError("%s has shape %s; expected (n, %s) or (n, %d) with n >= 1"
                         % (what, x.shape, ", ".join(map(str, sample_shape)), size))
    return x, x.shape[0]


def _labels(y: Any, n: int, what: str = "labels") -> np.ndarray:
    y = _array(y, np.int32, what)
    if y.shape != (n,):
        raise ValueError("%s has shape %s; expected (%d,) (one per input)" % (what, y.shape, n))
    return y


def _mask(a: Any, what: str) -> np.ndarray:
    """A uint8 0/1 array from booleans or integers (non-zero: 1)."""
    a = a if isinstance(a, np.ndarray) else _foreign(a, what)
    if a.dtype == np.uint8 and a.flags.c_contiguous:
        return a
    if a.dtype.kind not in "biu":
        raise TypeError("%s has dtype %s; expected booleans or integers" % (what, a.dtype))
    return np.ascontiguousarray(a != 0, dtype=np.uint8)


def _out_shape(n: int, chw: Sequence[int]) -> Tuple[int, ...]:
    c, h, w = chw
    return (n, c) if h == 1 and w == 1 else (n, c, h, w)


class _DeferSigint:
    """Ctrl-C during a C call that runs Python callbacks (fit, a reducer's, a name map's):
    Python's SIGINT handler would raise KeyboardInterrupt inside a ctypes callback, where it
    cannot propagate ("Exception ignored ..."). For the duration of the call (main thread
    only: Python runs handlers there alone) a handler that only sets a flag replaces it; the
    callbacks check :meth:`hit` and stop the C loop at the next step, and on exit the old
    handler is restored and called (Python's default raises KeyboardInterrupt). Nested uses
    share the outermost one."""
    _depth = 0
    _old: Any = None
    _hit = False

    def __enter__(self) -> "_DeferSigint":
        cls = _DeferSigint
        self.own = False
        if threading.current_thread() is not threading.main_thread():
            return self
        if cls._depth == 0:
            old = signal.getsignal(signal.SIGINT)
            if old in (signal.SIG_IGN, None):  # ignored, or not installed from Python
                return self
            cls._old, cls._hit = old, False
            signal.signal(signal.SIGINT, cls._flag)
        cls._depth += 1
        self.own = True
        return self

    @staticmethod
    def _flag(signum: int, frame: Any) -> None:
        _DeferSigint._hit = True

    @staticmethod
    def hit() -> bool:
        """Whether a SIGINT arrived since the outermost call began."""
        return _DeferSigint._hit

    def __exit__(self, *exc: Any) -> None:
        cls = _DeferSigint
        if not self.own:
            return
        cls._depth -= 1
        if cls._depth:
            return
        old, hit, cls._old, cls._hit = cls._old, cls._hit, None, False
        signal.signal(signal.SIGINT, old)
        if hit:
            try:
                if callable(old):
                    old(signal.SIGINT, None)  # default_int_handler: KeyboardInterrupt
                else:
                    signal.raise_signal(signal.SIGINT)  # SIG_DFL: end as asked
            except BaseException as e:
                e.__suppress_context__ = True  # not "during handling of ECANCELED"
                raise


_FIRST_CHUNK = 256


def _slices(n: int, first: int = _FIRST_CHUNK,
            target: float = 0.05) -> Iterator[Tuple[int, int]]:
    """[start, stop) ranges covering n examples for a chunked inference call: the first
    of @p first examples (calls that small stay one C call), then doubling while a chunk
    takes under @p target seconds: Python's SIGINT handler raises KeyboardInterrupt
    between two chunks, so Ctrl-C waits for at most about one chunk."""
    start, k = 0, first
    while start < n:
        stop = min(n, start + k)
        t0 = time.perf_counter()
        yield start, stop
        if time.perf_counter() - t0 < target:
            k *= 2
        start = stop


_RANK = {}  # lock order between handle classes: a model's, then its optimizer's, ...
_HANDLE_PARAMS = {"optimizer", "policy", "schedule"}  # parameters that take other handles


def _serialised(cls: Any) -> Any:
    """Class decorator: every method and property of @p cls runs holding the instance's
    lock (and the locks of handles passed to it, in the order of _RANK), so Python threads
    sharing a handle take turns instead of racing in C, which allows one thread per
    handle. The locks are re-entrant: a callback may call back into the same handle. On a
    model with a reducer (whose callbacks run inside training and evaluation calls), every
    call also defers SIGINT (see _DeferSigint)."""
    _RANK[cls] = len(_RANK)
    model = cls.__name__ == "Model"

    def wrap(fn: Any) -> Any:
        if not model and not _HANDLE_PARAMS & set(inspect.signature(fn).parameters):
            @functools.wraps(fn)
            def simple(self: Any, *args: Any, **kwargs: Any) -> Any:
                with self._lock:
                    return fn(self, *args, **kwargs)
            return simple

        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                others = [a for a in itertools.chain(args, kwargs.values())
                          if isinstance(a, _Handle) and a is not self] if (args or kwargs) else ()
                reducer = getattr(self, "_reducer", None)  # Model only
                if not others and reducer is None:
                    return fn(self, *args, **kwargs)
                with contextlib.ExitStack() as stack:
                    for o in sorted(others, key=lambda o: _RANK.get(type(o), 99)):
                        stack.enter_context(o._lock)
                    if reducer is not None:
                        stack.enter_context(_DeferSigint())
                    return fn(self, *args, **kwargs)
        return call
    for name, attr in list(vars(cls).items()):
        if isinstance(attr, property):
            setattr(cls, name, property(attr.fget and wrap(attr.fget),
                                        attr.fset and wrap(attr.fset), None, attr.__doc__))
        elif inspect.isfunction(attr) and name not in ("__init__", "__del__", "__enter__",
                                                       "__exit__"):
            setattr(cls, name, wrap(attr))
    return cls


class _Handle:
    """Owns one C handle; subclasses name their destroy function."""
    _destroy = ""

    def __init__(self) -> None:
        self._h = ctypes.c_void_p()
        self._lock = threading.RLock()

    @property
    def handle(self) -> ctypes.c_void_p:
        """The raw C pointer (ctypes.c_void_p); raises once closed. Calls through it bypass
        the lock: hold ``with obj.lock:`` around them when threads share the object."""
        if not self._h:
            raise ValueError("%s is closed" % type(self).__name__)
        return self._h

    @property
    def lock(self) -> threading.RLock:
        """The re-entrant lock every method holds while it uses the C handle."""
        return self._lock

    @property
    def closed(self) -> bool:
        """True once :meth:`close` freed the handle."""
        return not self._h

    def close(self) -> None:
        """Free the C handle now (waiting for a call running in another thread). Safe to
        call twice."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the handle existed
            return
        with lock:
            if self._h:
                getattr(_C, self._destroy)(ctypes.byref(self._h))

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle or copy a tlearn.%s (a C handle); models can be "
                        "copied and pickled" % type(self).__name__)


@_serialised
class Optimizer(_Handle):
    """An update rule ("sgd", "adam", "adamw") and its hyperparameters, PyTorch defaults.

    ``Optimizer("sgd", lr=0.1, momentum=0.9)``; names of keyword arguments: lr, momentum,
    dampening, nesterov, weight_decay, beta1, beta2, eps, clip_norm."""
    _destroy = "tlearn_optim_destroy"

    def __init__(self, kind: Union[str, int] = "adam", **params: float) -> None:
        super().__init__()
        _check(_C.tlearn_optim_create(ctypes.byref(self._h), _enum(OPTIMIZERS, kind,
                                                                   "optimizer")))
        for k, v in params.items():
            self.set(k, v)

    @classmethod
    def _adopt(cls, ptr):
        o = cls.__new__(cls)
        _Handle.__init__(o)
        o._h = ptr
        return o

    def set(self, param: Union[str, int], value: float) -> Optimizer:
        """Set a hyperparameter by name ("lr") or enum value; returns self."""
        _check(_C.tlearn_optim_set(self.handle, _enum(OPTIM_PARAMS, param, "parameter"),
                                   float(value)))
        return self

    def get(self, param: Union[str, int]) -> float:
        """Read a hyperparameter by name or enum value."""
        v = ctypes.c_double()
        _check(_C.tlearn_optim_get(self.handle, _enum(OPTIM_PARAMS, param, "parameter"),
                                   ctypes.byref(v)))
        return v.value

    @property
    def kind(self) -> str:
        """"sgd", "adam" or "adamw"."""
        k = ctypes.c_int()
        _check(_C.tlearn_optim_kind(self.handle, ctypes.byref(k)))
        return {v: n for n, v in OPTIMIZERS.items()}[k.value]

    def set_schedule(self, schedule: Optional[Schedule]) -> Optimizer:
        """Attach a copy of a :class:`Schedule` at its step 0 (None detaches); returns self."""
        _check(_C.tlearn_optim_set_schedule(self.handle,
                                            schedule.handle if schedule is not None else None))
        return self

    def schedule_step(self) -> None:
        """Advance the attached schedule by one step (per-epoch schedules, own loops)."""
        _check(_C.tlearn_optim_schedule_step(self.handle))

    @property
    def schedule_position(self) -> int:
        """Steps the attached schedule has taken."""
        v = ctypes.c_int64()
        _check(_C.tlearn_optim_schedule_position(self.handle, ctypes.byref(v)))
        return v.value

    def current(self, param: Union[str, int] = "lr") -> float:
        """The value the next update uses ("lr", "momentum", "beta1" as a schedule sets it)."""
        v = ctypes.c_double()
        _check(_C.tlearn_optim_get_current(self.handle, _enum(OPTIM_PARAMS, param,
                                                              "parameter"), ctypes.byref(v)))
        return v.value

    @property
    def lr(self) -> float:
        """Learning rate (the ``lr`` hyperparameter, before any schedule)."""
        return self.get("lr")

    @lr.setter
    def lr(self, value: float) -> None:
        """Set the learning rate (as ``set("lr", value)``)."""
        self.set("lr", value)


@_serialised
class Schedule(_Handle):
    """A learning-rate schedule, equal step for step to torch.optim.lr_scheduler's classes.

    ``Schedule("cosine", warmup_steps=100)``, ``Schedule("multistep", milestones=[30, 60],
    gamma=0.1)``, ``Schedule("one_cycle", total_steps=1000)``. Kinds: constant, step,
    multistep, exponential, cosine, cosine_restarts, one_cycle, slanted_triangular.
    Parameters (tlearn.h enum tlearn_sched_param): unit ("batch" or "epoch"), gamma,
    step_size, period (t_max / t_0), t_mult, eta_min, factor, total_steps, pct_start,
    div_factor, final_div_factor, linear_anneal, three_phase, cycle_momentum, base_momentum,
    max_momentum, cut_frac, ratio, warmup_steps, warmup_start_factor. Lengths left at 0
    ("auto") are filled in by :meth:`Model.fit`. Attach with :meth:`Optimizer.set_schedule`
    or ``Model.fit(..., schedule=)``."""
    _destroy = "tlearn_sched_destroy"

    def __init__(self, kind: Union[str, int], milestones: Optional[Sequence[int]] = None,
                 **params: float) -> None:
        super().__init__()
        _check(_C.tlearn_sched_create(ctypes.byref(self._h),
                                      _enum(SCHEDULES, kind, "schedule kind")))
        for k, v in params.items():
            self.set(k, v)
        if milestones is not None:
            arr = (ctypes.c_int64 * len(milestones))(*[int(m) for m in milestones])
            _check(_C.tlearn_sched_set_milestones(self.handle, arr, len(milestones)))

    def set(self, param: Union[str, int], value: float) -> Schedule:
        """Set a parameter by name or enum value; returns self."""
        if param == "unit":
            value = _enum(SCHED_UNITS, value, "unit")
        _check(_C.tlearn_sched_set(self.handle, _enum(SCHED_PARAMS, param, "parameter"),
                                   float(value)))
        return self

    def get(self, param: Union[str, int]) -> float:
        """Read a parameter by name or enum value."""
        v = ctypes.c_double()
        _check(_C.tlearn_sched_get(self.handle, _enum(SCHED_PARAMS, param, "parameter"),
                                   ctypes.byref(v)))
        return v.value


@_serialised
class FreezePolicy(_Handle):
    """Which layers train and at which learning-rate scale. Rules apply in the order they
    are added (later ones override); every method returns self, so rules chain:
    ``FreezePolicy().until("conv2").lr_scale("fc1", 0.1)``. A policy takes effect through
    :meth:`Model.apply_freeze`."""
    _destroy = "tlearn_freeze_destroy"

    def __init__(self) -> None:
        super().__init__()
        _check(_C.tlearn_freeze_create(ctypes.byref(self._h)))

    def until(self, layer: str) -> FreezePolicy:
        """Freeze every layer up to and including @p layer."""
        _check(_C.tlearn_freeze_until(self.handle, _enc(layer, "layer")))
        return self

    def match(self, pattern: str, frozen: bool = True) -> FreezePolicy:
        """Freeze (or unfreeze) the layers whose names match a shell-style pattern."""
        _check(_C.tlearn_freeze_match(self.handle, _enc(pattern, "pattern"), int(bool(frozen))))
        return self

    def tensors(self, pattern: str, frozen: bool = True) -> "FreezePolicy":
        """Freeze (or unfreeze) single tensors whose "layer.param" names match a shell-style
        pattern; rules replay in order tensor by tensor. BitFit (biases only):
        ``Freeze().match("*").tensors("*bias", False)``."""
        _check(_C.tlearn_freeze_tensors(self.handle, _enc(pattern, "pattern"), int(bool(frozen))))
        return self

    def range(self, first: int, last: int, frozen: bool = True) -> FreezePolicy:
        """Freeze (or unfreeze) the layers with index in [first, last]."""
        _check(_C.tlearn_freeze_range(self.handle, int(first), int(last), int(bool(frozen))))
        return self

    def lr_scale(self, pattern: str, scale: float) -> FreezePolicy:
        """Multiply the learning rate of the matching layers by @p scale."""
        _check(_C.tlearn_freeze_lr_scale(self.handle, _enc(pattern, "pattern"), float(scale)))
        return self

    def ulmfit(self, factor: float = 2.6) -> FreezePolicy:
        """Discriminative learning rates: scales 1, 1/factor, 1/factor^2, ... from the head."""
        _check(_C.tlearn_freeze_ulmfit(self.handle, float(factor)))
        return self

    def bn_stats(self, frozen: bool = True) -> FreezePolicy:
        """Keep batchnorm running statistics fixed even in training mode."""
        _check(_C.tlearn_freeze_bn_stats(self.handle, int(bool(frozen))))
        return self


class _Callback:
    """Runs a Python callable from C; an exception stops the C loop and is re-raised."""

    def __init__(self, fn):
        self.fn = fn
        self.error = None

    def reraise(self):
        if self.error is not None:
            err, self.error = self.error, None
            raise err



def _dims(dims):
    dims = [int(d) for d in dims]
    return (ctypes.c_int * max(len(dims), 1))(*dims)


def _dtype(dtype):
    kinds = {"float32": 1, "int32": 2}
    if str(dtype) not in kinds:
        raise ValueError(f"dtype must be 'float32' or 'int32', not {dtype!r}")
    return kinds[str(dtype)]

@_serialised
class Model(_Handle):
    """A network, its weights and training state (tlearn_model).

    ``Model(channels, height, width)`` starts an empty model for inputs of that shape
    (``Model(features, 1, 1)`` for vectors); :meth:`load`, :meth:`import_onnx` make one from
    a file. The ``add_*`` methods append layers and return self."""
    _destroy = "tlearn_model_destroy"
    _reducer: Any = None  # set_reducer's callbacks, kept alive for the C side

    def __init__(self, channels: int, height: int = 1, width: int = 1) -> None:
        super().__init__()
        _check(_C.tlearn_model_create(ctypes.byref(self._h), int(channels), int(height),
                                      int(width)))

    @classmethod
    def _adopt(cls, ptr):
        m = cls.__new__(cls)
        _Handle.__init__(m)
        m._h = ptr
        return m

    @classmethod
    def with_input(cls, name: str, dims: Sequence[int], dtype: str = "float32") -> Model:
        """An empty model whose first input ``name`` holds examples of shape ``dims``
        (1 to 4 sizes): ``("tokens", (128,), "int32")``, ``("x", (16, 64))``."""
        m = cls.__new__(cls)
        _Handle.__init__(m)
        d = _dims(dims)
        _check(_C.tlearn_model_create_input(ctypes.byref(m._h), _enc(name, "name"),
                                            _dtype(dtype), len(d), d))
        return m

    def add_input(self, name: str, dims: Sequence[int], dtype: str = "float32") -> Model:
        """Another graph input (a mask, a second image); layers read it by name."""
        d = _dims(dims)
        _check(_C.tlearn_model_add_input(self.handle, _enc(name, "name"), _dtype(dtype),
                                         len(d), d))
        return self

    # -- copies: through checkpoint bytes -----------------------------------------------
    def __copy__(self) -> Model:
        """An independent model made from this one's full checkpoint bytes (weights,
        buffers, freeze, EWC/L2-SP and random-generator state, metadata) and its thread
        count: training either leaves the other alone, closing either leaves the other
        usable. Python-side attachments (a reducer) are not copied."""
        m = Model.from_bytes(self.to_bytes())
        return m.set_threads(self._threads) if getattr(self, "_threads", 1) != 1 else m

    def __deepcopy__(self, memo: Dict[int, Any]) -> Model:
        """Same as :meth:`__copy__`: a model shares nothing with its copy either way."""
        return self.__copy__()

    def __reduce__(self) -> Tuple[Callable[..., Model], Tuple[bytes, int]]:
        """Pickle as the full checkpoint bytes and the thread count (see :meth:`__copy__`);
        unpickling loads them with :meth:`from_bytes`."""
        return _unpickle_model, (self.to_bytes(), getattr(self, "_threads", 1))

    # -- making a model ---------------------------------------------------------------
    @classmethod
    def load(cls, path: Union[str, os.PathLike],
             with_optimizer: bool = False) -> Union[Model, Tuple[Model, Optional[Optimizer]]]:
        """Load a libtlearn checkpoint. With ``with_optimizer=True`` return
        ``(model, optimizer_or_None)``."""
        h, o = ctypes.c_void_p(), ctypes.c_void_p()
        _check(_C.tlearn_model_load(ctypes.byref(h), ctypes.byref(o) if with_optimizer
                                    else None, _path(path)))
        m = cls._adopt(h)
        if with_optimizer:
            return m, (Optimizer._adopt(o) if o else None)
        return m

    def create_shared(self) -> "Model":
        """A model with this one's graph whose parameter tensors share this one's data
        (reference-counted, copied on write): one base, many adapted handles. Handles that
        share data may run on different threads at once."""
        h = ctypes.c_void_p()
        _check(_C.tlearn_model_create_shared(ctypes.byref(h), self.handle))
        return type(self)._adopt(h)

    def tensor_shared(self, tensor: str) -> bool:
        """Whether tensor "layer.param" holds data another handle holds too."""
        s = ctypes.c_int()
        _check(_C.tlearn_model_tensor_shared(self.handle, _enc(tensor, "tensor"),
                                             ctypes.byref(s)))
        return bool(s.value)

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview],
                   with_optimizer: bool = False
                   ) -> Union[Model, Tuple[Model, Optional[Optimizer]]]:
        """Load a checkpoint from its bytes (what :meth:`to_bytes` or :meth:`save` wrote),
        with the same checks as :meth:`load`. With ``with_optimizer=True`` return
        ``(model, optimizer_or_None)``. ``data``: bytes, bytearray or memoryview."""
        h, o = ctypes.c_void_p(), ctypes.c_void_p()
        buf, n = _in_bytes(data)
        _check(_C.tlearn_model_load_buffer(ctypes.byref(h), ctypes.byref(o) if with_optimizer
                                           else None, buf, n))
        m = cls._adopt(h)
        if with_optimizer:
            return m, (Optimizer._adopt(o) if o else None)
        return m

    @classmethod
    def import_onnx(cls, source: Union[str, os.PathLike, bytes]) -> Model:
        """Build a model from an ONNX file (a path) or from its bytes."""
        h = ctypes.c_void_p()
        if isinstance(source, (bytes, bytearray, memoryview)):
            buf = bytes(source)
            _check(_C.tlearn_model_import_onnx_buffer(ctypes.byref(h), buf, len(buf)))
        else:
            _check(_C.tlearn_model_import_onnx(ctypes.byref(h), _path(source)))
        return cls._adopt(h)

    # -- settings ---------------------------------------------------------------------
    def set_threads(self, threads: int) -> Model:
        """Threads for this model's GEMMs and parallel loops (default 1); returns self."""
        _check(_C.tlearn_model_set_threads(self.handle, int(threads)))
        self._threads = int(threads)  # checkpoints do not carry it: copies re-apply it
        return self

    def set_seed(self, seed: int) -> Model:
        """Seed the model's generator (initialisation of later layers, dropout, shuffling);
        returns self."""
        _check(_C.tlearn_model_set_seed(self.handle, int(seed)))
        return self

    def set_training(self, training: bool) -> Model:
        """Training (True) or evaluation (False) mode for dropout and batchnorm."""
        _check(_C.tlearn_model_set_training(self.handle, int(bool(training))))
        return self

    def set_loss(self, loss: Union[str, int]) -> Model:
        """"softmax_ce" (default), "mse", or for train_step_pairs() "contrastive" (in-batch
        InfoNCE over cosine similarity) or "contrastive_symmetric"."""
        _check(_C.tlearn_model_set_loss(self.handle, _enum(LOSSES, loss, "loss")))
        return self

    def set_next_input(self, layer: Optional[str]) -> Model:
        """The next layer reads from @p layer (None: the model input) -- residual branches."""
        _check(_C.tlearn_model_set_next_input(self.handle, _enc(layer, "layer")))
        return self

    # -- layers -------------------------------------------------------------------------
    def add_linear(self, name: str, units: int, bias: bool = True) -> Model:
        """torch.nn.Linear over the last axis: (..., K) -> (..., units)."""
        _check(_C.tlearn_model_add_linear(self.handle, _enc(name, "name"), int(units),
                                          int(bool(bias))))
        return self

    def add_layernorm(self, name: str, naxes: int = 1, eps: float = 1e-5,
                      affine: bool = True) -> Model:
        """torch.nn.LayerNorm over the last ``naxes`` axes (weight/bias of their shape when
        ``affine``)."""
        _check(_C.tlearn_model_add_layernorm(self.handle, _enc(name, "name"), int(naxes),
                                             float(eps), int(bool(affine))))
        return self

    def add_layernorm_channels(self, name: str, eps: float = 1e-5,
                               affine: bool = True) -> Model:
        """Layer norm over the channels of a (C, ...) input at every position (ConvNeXt's
        LayerNorm2d); weight/bias of shape (C)."""
        _check(_C.tlearn_model_add_layernorm_channels(self.handle, _enc(name, "name"),
                                                      float(eps), int(bool(affine))))
        return self

    def add_maxpool2d_ex(self, name: str, kernel: Union[int, Tuple[int, int]],
                         stride: Optional[Union[int, Tuple[int, int]]] = None,
                         pads: Union[int, Sequence[int]] = 0,
                         dilation: Union[int, Tuple[int, int]] = 1,
                         ceil_mode: bool = False) -> Model:
        """Max pooling as ONNX MaxPool: ``kernel``, ``stride`` (None: the kernel) and
        ``dilation`` as a number or (h, w); ``pads`` a number, (h, w) or (top, left, bottom,
        right); ``ceil_mode`` rounds the output size up (a window starting in the padding is
        dropped, as torch)."""
        (kh, kw), (dh, dw) = _pair(kernel), _pair(dilation)
        sh, sw = _pair(kernel if stride is None else stride)
        _check(_C.tlearn_model_add_maxpool2d_ex(self.handle, _enc(name, "name"), kh, kw, sh, sw,
                                                *_pads(pads), dh, dw, int(bool(ceil_mode))))
        return self

    def add_avgpool2d_ex(self, name: str, kernel: Union[int, Tuple[int, int]],
                         stride: Optional[Union[int, Tuple[int, int]]] = None,
                         pads: Union[int, Sequence[int]] = 0, ceil_mode: bool = False,
                         count_include_pad: bool = True) -> Model:
        """Average pooling as ONNX AveragePool; arguments as :meth:`add_maxpool2d_ex`."""
        kh, kw = _pair(kernel)
        sh, sw = _pair(kernel if stride is None else stride)
        _check(_C.tlearn_model_add_avgpool2d_ex(self.handle, _enc(name, "name"), kh, kw, sh, sw,
                                                *_pads(pads), int(bool(ceil_mode)),
                                                int(bool(count_include_pad))))
        return self

    def add_adaptive_avgpool(self, name: str,
                             output_size: Union[int, Tuple[int, int]]) -> Model:
        """torch.nn.AdaptiveAvgPool2d(output_size): a number or (oh, ow)."""
        oh, ow = _pair(output_size)
        _check(_C.tlearn_model_add_adaptive_avgpool(self.handle, _enc(name, "name"), oh, ow))
        return self

    def add_pad(self, name: str, pads: Union[int, Sequence[int]],
                mode: Union[str, int] = "constant", value: float = 0.0) -> Model:
        """Pad the last two axes by ``pads`` (a number, (h, w) or (top, left, bottom,
        right)); ``mode`` "constant" (with ``value``), "reflect" or "edge"."""
        _check(_C.tlearn_model_add_pad(self.handle, _enc(name, "name"), *_pads(pads),
                                       _enum(PAD_MODES, mode, "mode"), float(value)))
        return self

    def add_matmul(self, name: str, a: Optional[str], b: Optional[str],
                   transpose_b: bool = False) -> Model:
        """torch.matmul of layers (or inputs) ``a`` and ``b``: (..., M, K) x (..., K, N);
        with ``transpose_b``, a b^T for b of shape (..., N, K)."""
        _check(_C.tlearn_model_add_matmul(self.handle, _enc(name, "name"), _enc(a, "a"),
                                          _enc(b, "b"), int(bool(transpose_b))))
        return self

    def add_drop_path(self, name: str, p: float) -> Model:
        """Stochastic depth (torchvision.ops.StochasticDepth(p, "row")): in training each
        example is zeroed with probability ``p``, the rest scaled by 1/(1-p)."""
        _check(_C.tlearn_model_add_drop_path(self.handle, _enc(name, "name"), float(p)))
        return self

    def add_embedding(self, name: str, vocab: int, dim: int, padding_idx: int = -1) -> Model:
        """torch.nn.Embedding over the next input, an int32 model input of token ids (T):
        -> (T, dim). ``padding_idx`` (-1: none) names a row that gets no gradient."""
        _check(_C.tlearn_model_add_embedding(self.handle, _enc(name, "name"), int(vocab),
                                             int(dim), int(padding_idx)))
        return self

    def add_position_embedding(self, name: str, max_len: int,
                               sinusoidal: bool = False) -> Model:
        """Add position vectors to a sequence (T, D), T <= max_len: learned, or fixed
        sinusoidal ones."""
        _check(_C.tlearn_model_add_position_embedding(self.handle, _enc(name, "name"),
                                                      int(max_len), int(bool(sinusoidal))))
        return self

    def add_attention(self, name: str, heads: int, causal: bool = False,
                      mask: Optional[str] = None) -> Model:
        """Multi-head self-attention over a sequence (T, D) with torch.nn.MultiheadAttention's
        parameters; ``mask`` names a key-padding mask (T) input (1 keep, 0 pad)."""
        _check(_C.tlearn_model_add_attention(self.handle, _enc(name, "name"), int(heads),
                                             int(bool(causal)),
                                             None if mask is None else _enc(mask, "mask")))
        return self

    def add_token_pool(self, name: str, mean: bool = False,
                       mask: Optional[str] = None) -> Model:
        """Pool a sequence (T, D) into (D): the first token, or (``mean=True``) the mean over
        the positions ``mask`` keeps (all positions without a mask)."""
        _check(_C.tlearn_model_add_token_pool(self.handle, _enc(name, "name"), int(bool(mean)),
                                              None if mask is None else _enc(mask, "mask")))
        return self

    def add_transformer_block(self, name: str, heads: int, ff_dim: int,
                              activation: Union[str, int] = "relu", norm_first: bool = False,
                              dropout: float = 0.1, mask: Optional[str] = None) -> Model:
        """The layers of torch.nn.TransformerEncoderLayer(batch_first=True) over a sequence
        (T, D), named after its state_dict (``name.self_attn``, ``name.linear1``,
        ``name.norm1``, ...); ``mask`` names a key-padding mask input."""
        _check(_C.tlearn_model_add_transformer_block(
            self.handle, _enc(name, "name"), int(heads), int(ff_dim), _enum(ACTIVATIONS, activation, "activation"),
            int(bool(norm_first)), float(dropout), None if mask is None else _enc(mask, "mask")))
        return self

    def add_patch_embed(self, name: str, dim: int, patch: int, class_token: bool = True,
                        positions: bool = True) -> Model:
        """ViT patch embedding of an image (C, H, W) -> (T, dim), torchvision's layout
        (conv_proj, class_token, pos_embedding)."""
        _check(_C.tlearn_model_add_patch_embed(self.handle, _enc(name, "name"), int(dim),
                                               int(patch), int(bool(class_token)),
                                               int(bool(positions))))
        return self

    def add_dense(self, name: str, units: int) -> Model:
        """Append a fully connected layer of @p units outputs (torch.nn.Linear on the flattened
        input)."""
        _check(_C.tlearn_model_add_dense(self.handle, _enc(name, "name"), int(units)))
        return self

    def add_flatten(self, name: str) -> Model:
        """Append a flatten layer: (C, H, W) -> (C*H*W)."""
        _check(_C.tlearn_model_add_flatten(self.handle, _enc(name, "name")))
        return self

    def add_activation(self, name: str, activation: Union[str, int] = "relu",
                       param: float = 0.0) -> Model:
        """Activation by name ("relu", "tanh", "sigmoid", "gelu", "relu6", "leaky_relu")."""
        _check(_C.tlearn_model_add_activation(self.handle, _enc(name, "name"),
                                              _enum(ACTIVATIONS, activation, "activation"),
                                              float(param)))
        return self

    def add_relu(self, name: str) -> Model:
        """Append a ReLU (``add_activation(name, "relu")``)."""
        return self.add_activation(name, "relu")

    def add_activation_ex(self, name: str, activation: Union[str, int],
                          params: Sequence[float] = ()) -> Model:
        """Activation with up to two parameters: "hardsigmoid" (alpha, beta) -- none for
        torch's (1/6, 0.5), (0.2, 0.5) for ONNX's; "clip" (lo, hi); "leaky_relu" (slope,).
        Also "hardswish", "silu", "gelu_tanh" (no parameters)."""
        p = [float(v) for v in params]
        arr = (ctypes.c_float * max(len(p), 1))(*p)
        _check(_C.tlearn_model_add_activation_ex(self.handle, _enc(name, "name"),
                                                 _enum(ACTIVATIONS, activation, "activation"),
                                                 arr, len(p)))
        return self

    def add_binary(self, name: str, op: Union[str, int], a: Optional[str],
                   b: Optional[str]) -> Model:
        """Elementwise ``a op b`` ("add", "sub", "mul", "div") of two layers or inputs by
        name, with NumPy broadcasting of the example shapes (aligned on the right; a size
        of 1 stretches): a (C, 1, 1) gate times a (C, H, W) map is squeeze-excitation.
        ``a=None`` reads what the next layer would (the previous layer)."""
        _check(_C.tlearn_model_add_binary(self.handle, _enc(name, "name"),
                                          _enum(BINARY_OPS, op, "op"), _enc(a, "a"),
                                          _enc(b, "b")))
        return self

    def add_scale(self, name: str, dims: Sequence[int], bias: bool = False) -> Model:
        """``x * weight (+ bias)`` with a learned weight of shape ``dims`` (starting at 1)
        broadcast to the input: ``(C, 1, 1)`` per channel, ``(D,)`` over the last axis
        (ConvNeXt's layer scale)."""
        dims = list(dims)
        _check(_C.tlearn_model_add_scale(self.handle, _enc(name, "name"), len(dims),
                                         _dims(dims), int(bool(bias))))
        return self

    def add_softmax(self, name: str, axis: int = -1) -> Model:
        """Softmax over axis ``axis`` of each example (0 = first, -1 = last)."""
        _check(_C.tlearn_model_add_softmax(self.handle, _enc(name, "name"), int(axis)))
        return self

    def add_conv2d(self, name: str, filters: int, kernel: int, stride: int = 1, pad: int = 0,
                   groups: int = 1) -> Model:
        """Append a square 2-D convolution with bias (torch.nn.Conv2d(kernel, stride, pad,
        groups))."""
        _check(_C.tlearn_model_add_conv2d(self.handle, _enc(name, "name"), int(filters),
                                          int(kernel), int(stride), int(pad), int(groups)))
        return self

    def add_conv2d_ex(self, name: str, filters: int, kernel: Union[int, Tuple[int, int]],
                      stride: Union[int, Tuple[int, int]] = (1, 1),
                      pad: Union[int, Tuple[int, int]] = (0, 0),
                      dilation: Union[int, Tuple[int, int]] = (1, 1), groups: int = 1,
                      bias: bool = True) -> Model:
        """2-D convolution with (h, w) pairs for kernel, stride, padding and dilation."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, pad, dilation))
        _check(_C.tlearn_model_add_conv2d_ex(self.handle, _enc(name, "name"), int(filters),
                                             kh, kw, sh, sw, ph, pw, dh, dw, int(groups),
                                             int(bool(bias))))
        return self

    def add_maxpool2d(self, name: str, kernel: int, stride: int = 0, pad: int = 0) -> Model:
        """Append square max pooling; ``stride=0`` means the kernel size."""
        _check(_C.tlearn_model_add_maxpool2d(self.handle, _enc(name, "name"), int(kernel),
                                             int(stride), int(pad)))
        return self

    def add_avgpool2d(self, name: str, kernel: int, stride: int = 0, pad: int = 0,
                      count_include_pad: bool = True) -> Model:
        """Append square average pooling; ``stride=0`` means the kernel size."""
        _check(_C.tlearn_model_add_avgpool2d(self.handle, _enc(name, "name"), int(kernel),
                                             int(stride), int(pad),
                                             int(bool(count_include_pad))))
        return self

    def add_global_avgpool(self, name: str) -> Model:
        """Append global average pooling: (C, H, W) -> (C, 1, 1)."""
        _check(_C.tlearn_model_add_global_avgpool(self.handle, _enc(name, "name")))
        return self

    def add_batchnorm(self, name: str, eps: float = 1e-5, momentum: float = 0.1) -> Model:
        """Append batch normalisation over channels (torch.nn.BatchNorm2d(eps, momentum))."""
        _check(_C.tlearn_model_add_batchnorm(self.handle, _enc(name, "name"), float(eps),
                                             float(momentum)))
        return self

    def add_dropout(self, name: str, p: float = 0.5) -> Model:
        """Append dropout with probability @p p (training mode only)."""
        _check(_C.tlearn_model_add_dropout(self.handle, _enc(name, "name"), float(p)))
        return self

    def add_add(self, name: str, other: str) -> Model:
        """Residual sum of the previous layer's output and layer @p other's."""
        _check(_C.tlearn_model_add_add(self.handle, _enc(name, "name"), _enc(other, "other")))
        return self

    # -- data movement (axes count over one example's dims; the batch is not an axis) ---
    def add_concat(self, name: str, inputs: Sequence[str], axis: int = 0) -> Model:
        """Concatenate the outputs of ``inputs`` (2 to 256 names of layers or model inputs;
        a name may repeat) along axis ``axis`` (0: the channels of (C, H, W); negative
        counts from the end), as torch.cat. The other dims must match."""
        names = [_enc(s, "inputs") for s in inputs]
        arr = (ctypes.c_char_p * max(len(names), 1))(*names)
        _check(_C.tlearn_model_add_concat(self.handle, _enc(name, "name"), arr, len(names),
                                          int(axis)))
        return self

    def add_slice(self, name: str, axis: int, start: int = 0, end: Optional[int] = None,
                  step: int = 1) -> Model:
        """x[..., start:end:step, ...] on one axis, with Python's (ONNX Slice's) rules for
        negative and out-of-range bounds; ``end=None`` runs to the end; step >= 1."""
        clamp = lambda v: max(-2**31, min(2**31 - 1, int(v)))
        end = 2**31 - 1 if end is None else end
        _check(_C.tlearn_model_add_slice(self.handle, _enc(name, "name"), int(axis),
                                         clamp(start), clamp(end), int(step)))
        return self

    def add_reshape(self, name: str, dims: Sequence[int]) -> Model:
        """Reshape each example to ``dims`` (1 to 4 sizes; 0 keeps the input's size at that
        index, one -1 is inferred), as torch.reshape without the batch dim."""
        d = [int(v) for v in dims]
        _check(_C.tlearn_model_add_reshape(self.handle, _enc(name, "name"), len(d),
                                           (ctypes.c_int * max(len(d), 1))(*d)))
        return self

    def add_transpose(self, name: str, perm: Sequence[int]) -> Model:
        """Permute each example's axes: output axis i is input axis ``perm[i]``, as
        torch.permute without the batch dim; (1, 2, 0) makes (C, H, W) channels-last."""
        p = [int(v) for v in perm]
        _check(_C.tlearn_model_add_transpose(self.handle, _enc(name, "name"), len(p),
                                             (ctypes.c_int * max(len(p), 1))(*p)))
        return self

    # -- adapters -----------------------------------------------------------------------
    def lora_add(self, adapter: str, glob: str, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False) -> Model:
        """Add LoRA adapter ``adapter`` on every dense/linear/conv2d layer matching ``glob``:
        layers ``T.lora_A.<adapter>``, ``T.lora_B.<adapter>`` (zero) and the sum
        ``T.lora.<adapter>`` = T + alpha/r (rsLoRA: alpha/sqrt(r)) * B(A(x)); T is frozen."""
        _check(_C.tlearn_lora_add(self.handle, _enc(adapter, "adapter"), _enc(glob, "glob"),
                                  int(r), float(alpha), float(dropout), 1 if rslora else 0))
        return self

    def lora_set_weight(self, adapter: str, weight: float) -> Model:
        """Combination weight of a LoRA adapter (0 disables it)."""
        _check(_C.tlearn_lora_set_weight(self.handle, _enc(adapter, "adapter"), float(weight)))
        return self

    def lora_set_active(self, adapter: Optional[str]) -> Model:
        """Make ``adapter`` the only active LoRA adapter; None disables all of them."""
        _check(_C.tlearn_lora_set_active(self.handle,
                                         None if adapter is None else _enc(adapter, "adapter")))
        return self

    def lora_merge(self, adapter: str) -> Model:
        """Fold the adapter into its targets' weights (W += scale * B A)."""
        _check(_C.tlearn_lora_merge(self.handle, _enc(adapter, "adapter")))
        return self

    def lora_unmerge(self, adapter: str) -> Model:
        """Undo lora_merge (within one float rounding per weight)."""
        _check(_C.tlearn_lora_unmerge(self.handle, _enc(adapter, "adapter")))
        return self

    def lora_remove(self, adapter: str) -> Model:
        """Remove a LoRA adapter's layers; the targets stay frozen."""
        _check(_C.tlearn_lora_remove(self.handle, _enc(adapter, "adapter")))
        return self

    def lora_save(self, adapter: str, directory: Union[str, os.PathLike]) -> None:
        """Write adapter_model.safetensors and adapter_config.json in PEFT's layout."""
        _check(_C.tlearn_lora_save(self.handle, _enc(adapter, "adapter"),
                                   _enc(str(directory), "directory")))

    def lora_load(self, adapter: str, directory: Union[str, os.PathLike]) -> Model:
        """Add adapter ``adapter`` from a PEFT adapter directory (config and weights)."""
        _check(_C.tlearn_lora_load(self.handle, _enc(adapter, "adapter"),
                                   _enc(str(directory), "directory")))
        return self

    def add_bottleneck_adapter(self, adapter: str, glob: str, hidden: int,
                               activation: Union[str, int] = "relu") -> Model:
        """Insert a bottleneck adapter (down, activation, zero-initialised up, residual add)
        after every layer matching ``glob``."""
        _check(_C.tlearn_adapter_add_bottleneck(self.handle, _enc(adapter, "adapter"),
                                                _enc(glob, "glob"), int(hidden),
                                                ACTIVATIONS[activation]))
        return self

    # -- introspection ------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of layers."""
        n = ctypes.c_int()
        _check(_C.tlearn_model_layer_count(self.handle, ctypes.byref(n)))
        return n.value

    def layer_index(self, name: str) -> int:
        """Index of the layer called @p name (TlearnError ENOTFOUND if none)."""
        i = ctypes.c_int()
        _check(_C.tlearn_model_layer_index(self.handle, _enc(name, "name"), ctypes.byref(i)))
        return i.value

    def layer_name(self, index: int) -> str:
        """Name of layer @p index."""
        s = ctypes.c_char_p()
        _check(_C.tlearn_model_layer_name(self.handle, int(index), ctypes.byref(s)))
        return s.value.decode()

    def layer_kind(self, index: int) -> str:
        """Kind of layer @p index as a name ("dense", "conv2d", ...)."""
        k = ctypes.c_int()
        _check(_C.tlearn_model_layer_kind(self.handle, int(index), ctypes.byref(k)))
        return LAYER_KINDS.get(k.value, str(k.value))

    def layer_shape(self, index: int) -> Tuple[int, int, int]:
        """Output shape (C, H, W) of layer @p index; -1 gives the model input."""
        c, h, w = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        _check(_C.tlearn_model_layer_shape(self.handle, int(index), ctypes.byref(c),
                                           ctypes.byref(h), ctypes.byref(w)))
        return (c.value, h.value, w.value)

    def layer_shape_nd(self, index: int) -> Tuple[int, ...]:
        """Output shape of layer ``index`` as a tuple of 1 to 4 sizes; -1-k gives model
        input k."""
        rank, dims = ctypes.c_int(), (ctypes.c_int * 4)()
        _check(_C.tlearn_model_layer_shape_nd(self.handle, int(index), ctypes.byref(rank),
                                              dims, 4))
        return tuple(dims[:rank.value])

    def layer_param_count(self, index: int) -> int:
        """Number of parameters of layer @p index."""
        n = ctypes.c_size_t()
        _check(_C.tlearn_model_layer_param_count(self.handle, int(index), ctypes.byref(n)))
        return n.value

    @property
    def layers(self) -> List[str]:
        """Names of the layers in order."""
        return [self.layer_name(i) for i in range(len(self))]

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """Shape (C, H, W) of one example of the first model input."""
        return self.layer_shape(-1)

    @property
    def output_shape(self) -> Tuple[int, int, int]:
        """Shape (C, H, W) of one example of the last layer's output."""
        if len(self) == 0:
            raise TlearnError(ESHAPE, "the model has no layers")
        return self.layer_shape(len(self) - 1)

    def param_count(self) -> Tuple[int, int]:
        """(total, trainable) parameter counts."""
        t, tr = ctypes.c_size_t(), ctypes.c_size_t()
        _check(_C.tlearn_model_param_count(self.handle, ctypes.byref(t), ctypes.byref(tr)))
        return t.value, tr.value

    def summary(self) -> str:
        """One line per layer: index, name, kind, output shape, parameters, frozen."""
        lines = []
        for i in range(len(self)):
            name = self.layer_name(i)
            lines.append("%3d %-16s %-14s %-16s %9d%s" % (
                i, name, self.layer_kind(i), "x".join(map(str, self.layer_shape(i))),
                self.layer_param_count(i), "  frozen" if self.layer_frozen(name) else ""))
        return "\n".join(lines)

    def tensor_info(self, index: int) -> Tuple[str, Tuple[int, ...]]:
        """(name, shape) of named tensor @p index (parameters and buffers)."""
        name, numel, ndim = ctypes.c_char_p(), ctypes.c_size_t(), ctypes.c_int()
        dims = (ctypes.c_int * 4)()
        _check(_C.tlearn_model_tensor_info(self.handle, int(index), ctypes.byref(name),
                                           ctypes.byref(numel), ctypes.byref(ndim), dims))
        return name.value.decode(), tuple(dims[:ndim.value])

    def tensor_names(self) -> List[str]:
        """Names of the model's tensors (parameters and buffers), in order."""
        n = ctypes.c_int()
        _check(_C.tlearn_model_tensor_count(self.handle, ctypes.byref(n)))
        return [self.tensor_info(i)[0] for i in range(n.value)]

    def _tensor_shape(self, name):
        n = ctypes.c_int()
        _check(_C.tlearn_model_tensor_count(self.handle, ctypes.byref(n)))
        for i in range(n.value):
            tname, shape = self.tensor_info(i)
            if tname == name:
                return shape
        raise TlearnError(ENOTFOUND, "no tensor named '%s'" % name)

    def get_tensor(self, name: str) -> np.ndarray:
        """Copy of tensor @p name ("fc1.weight") as a float32 array of its shape."""
        out = np.empty(self._tensor_shape(name), dtype=np.float32)
        _check(_C.tlearn_model_get_tensor(self.handle, _enc(name, "name"), _fptr(out),
                                          out.size))
        return out

    def set_tensor(self, name: str, values: ArrayLike) -> None:
        """Overwrite tensor @p name with a float32 array of the same number of elements."""
        values = _array(values, np.float32, "values")
        _check(_C.tlearn_model_set_tensor(self.handle, _enc(name, "name"), _fptr(values),
                                          values.size))

    def get_grad(self, name: str) -> np.ndarray:
        """Gradient of parameter @p name from the last train step or compute_gradients()."""
        out = np.empty(self._tensor_shape(name), dtype=np.float32)
        _check(_C.tlearn_model_get_grad(self.handle, _enc(name, "name"), _fptr(out),
                                        out.size))
        return out

    def state_dict(self) -> Dict[str, np.ndarray]:
        """All named tensors as {name: array copy}."""
        return {n: self.get_tensor(n) for n in self.tensor_names()}

    def workspace_bytes(self) -> int:
        """Bytes of activation and scratch memory planned for the last batch size (0 before any
        computation)."""
        b = ctypes.c_size_t()
        _check(_C.tlearn_model_workspace_bytes(self.handle, ctypes.byref(b)))
        return b.value

    # -- inference and training ------------------------------------------------------
    def _infer(self, fn, layer, x, out_size):
        """Run C inference call @p fn (predict, features, embed: the same arguments after
        the optional layer name) over @p x in chunks (see _slices), so that Ctrl-C is
        prompt on large inputs; returns the flat (n, out_size) float32 output."""
        out = np.empty((x.shape[0], out_size), dtype=np.float32)
        pre = () if layer is None else (_enc(layer, "layer"),)
        if x.shape[0] <= _FIRST_CHUNK:  # one call: skip the slicing
            _check(fn(self.handle, *pre, _fptr(x), x.shape[0], _fptr(out), out.size))
            return out
        # no callbacks here: Python's own SIGINT handler raises between chunks
        for a, b in _slices(x.shape[0]):
            _check(fn(self.handle, *pre, _fptr(x[a:b]), b - a, _fptr(out[a:b]),
                      (b - a) * out_size))
        return out

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Outputs (logits) for a batch in evaluation mode: shape (n, outputs), or (n, C, H,
        W) for a map. @p x is converted to float32 when it is not already (see the module
        docstring for the cost). Large batches run in chunks, so that Ctrl-C stops them
        promptly (KeyboardInterrupt); the result equals one call's."""
        x, n = _batch(x, self.input_shape, "x")
        shape = _out_shape(n, self.output_shape)
        return self._infer(_C.tlearn_model_predict, None, x,
                           math.prod(shape[1:])).reshape(shape)

    def evaluate(self, x: ArrayLike, labels: ArrayLike) -> Tuple[float, float]:
        """(mean loss, accuracy) over a labelled set, evaluation mode. Large sets run in
        chunks (Ctrl-C stops them promptly), whose means are combined in double: the loss
        may then differ from one C call's in the last bits."""
        x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        loss, acc = ctypes.c_float(), ctypes.c_float()
        # a reducer sums evaluate over workers: every worker must make the same calls
        parts = _slices(n) if getattr(self, "_reducer", None) is None else [(0, n)]
        total_loss, total_correct = 0.0, 0.0
        for a, b in parts:
            _check(_C.tlearn_model_evaluate(self.handle, _fptr(x[a:b]), _iptr(labels[a:b]),
                                            b - a, ctypes.byref(loss), ctypes.byref(acc)))
            if (a, b) == (0, n):
                return loss.value, acc.value
            total_loss += float(loss.value) * (b - a)
            total_correct += round(float(acc.value) * (b - a))
        return float(np.float32(total_loss / n)), float(np.float32(total_correct / n))

    def train_step(self, optimizer: Optimizer, x: ArrayLike, labels: ArrayLike) -> float:
        """One optimisation step on a batch (cross-entropy); returns loss + penalty.
        @p x is converted to float32 and @p labels to int32 when they are not already."""
        x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        loss = ctypes.c_float()
        _check(_C.tlearn_model_train_step(self.handle, optimizer.handle, _fptr(x),
                                          _iptr(labels), n, ctypes.byref(loss)))
        return loss.value

    def train_step_mse(self, optimizer: Optimizer, x: ArrayLike, targets: ArrayLike) -> float:
        """One step against float targets of the output's shape (loss must be "mse")."""
        x, n = _batch(x, self.input_shape, "x")
        targets, nt = _batch(targets, self.output_shape, "targets")
        if nt != n:
            raise ValueError("targets has %d rows, x has %d" % (nt, n))
        loss = ctypes.c_float()
        _check(_C.tlearn_model_train_step_mse(self.handle, optimizer.handle, _fptr(x),
                                              _fptr(targets), n, ctypes.byref(loss)))
        return loss.value

    def compute_gradients(self, x: ArrayLike, labels: ArrayLike,
                          input_grad: bool = False) -> Union[float, Tuple[float, np.ndarray]]:
        """Forward and backward without an update. Returns the loss, or (loss, dL/dx)
        with ``input_grad=True``. Read parameter gradients with :meth:`get_grad`."""
        x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        loss = ctypes.c_float()
        dx = np.empty_like(x) if input_grad else None
        _check(_C.tlearn_model_compute_gradients(
            self.handle, _fptr(x), _iptr(labels), n, ctypes.byref(loss),
            _fptr(dx) if input_grad else None, dx.size if input_grad else 0))
        return (loss.value, dx) if input_grad else loss.value

    def fit(self, optimizer: Optimizer, x: ArrayLike, labels: ArrayLike, batch: int = 32,
            epochs: int = 1, shuffle: bool = True,
            progress: Optional[Callable[[int, int, int, int, float], Any]] = None,
            validation: Optional[Tuple[ArrayLike, ArrayLike]] = None,
            schedule: Optional[Schedule] = None,
            early_stopping: Union[None, str, Mapping[str, Any]] = None, accumulate: int = 1,
            gradual_unfreeze: bool = False, checkpoint: Union[None, str, os.PathLike] = None,
            top_k: int = 5, verbose: Optional[bool] = None) -> Dict[str, List[float]]:
        """Train in mini-batches; returns a Keras-like history dict of per-epoch lists
        ("loss", "accuracy", "lr", and with a validation set "val_loss", "val_accuracy",
        "val_top_k_accuracy", "val_macro_f1" or, for MSE models, "val_mae").

        @p labels: int32 class indices (cross-entropy) or float32 targets (MSE models).
        @p validation: ``(x_val, y_val)`` evaluated after each epoch. @p schedule: a
        :class:`Schedule` attached to @p optimizer (auto lengths from this run).
        @p early_stopping: a metric name ("val_loss") or a dict ``monitor=, patience=,
        min_delta=, restore_best=`` (restore_best defaults to True). @p accumulate: batches per
        update. @p gradual_unfreeze: ULMFiT's one more frozen layer per epoch. @p checkpoint:
        path where the best epoch is saved (needs early_stopping's monitor).
        @p progress, if given, is called after every update as
        ``progress(epoch, epochs, step, steps_per_epoch, loss)``; a true return value stops
        training (TlearnError ECANCELED), an exception stops it and is re-raised here.
        Without it, when @p verbose (default: stdout is a terminal), a tqdm bar is shown if
        tqdm is installed, else one line per epoch.

        Ctrl-C stops training after the current update and raises KeyboardInterrupt; the
        model keeps the weights of the last completed update (or, with early stopping's
        restore_best, the best epoch's). Arrays are converted as :meth:`predict` says."""
        import sys
        x, n = _batch(x, self.input_shape, "x")
        y = self._targets(labels, n, "labels")
        if verbose is None:
            verbose = progress is None and sys.stdout.isatty()
        f = ctypes.c_void_p()
        _check(_C.tlearn_fit_create(ctypes.byref(f)))
        history = {}
        bar = [None]
        try:
            opts = {1: batch, 2: epochs, 3: int(bool(shuffle)), 4: accumulate,
                    9: int(bool(gradual_unfreeze)), 10: top_k}
            if early_stopping is not None:
                es = ({"monitor": early_stopping} if isinstance(early_stopping, str)
                      else dict(early_stopping))
                opts[5] = _enum(METRICS, es.pop("monitor", "val_loss"), "metric")
                opts[6] = es.pop("patience", 0)
                opts[7] = es.pop("min_delta", 0.0)
                opts[8] = int(bool(es.pop("restore_best", True)))
                if es:
                    raise ValueError("unknown early_stopping keys: %s" % ", ".join(es))
            for k, v in opts.items():
                _check(_C.tlearn_fit_set(f, k, float(v)))
            names = ("batch", "epochs", "shuffle", "accumulate", "monitor", "patience",
                     "min_delta", "restore_best", "gradual_unfreeze", "top_k")
            v = ctypes.c_double()
            params = {}
            for i, name in enumerate(names, 1):
                _check(_C.tlearn_fit_get(f, i, ctypes.byref(v)))
                params[name] = v.value
            self.fit_params = params  # the options of the last fit, as Keras' History.params
            if validation is not None:
                vx, vy = validation
                vx, vn = _batch(vx, self.input_shape, "validation x")
                vy = self._targets(vy, vn, "validation labels")
                _check(_C.tlearn_fit_set_validation(f, _fptr(vx), vx.size,
                                                    vy.ctypes.data_as(ctypes.c_void_p),
                                                    vy.size, vn))
            if checkpoint is not None:
                _check(_C.tlearn_fit_set_checkpoint(f, _path(checkpoint)))
            if schedule is not None:
                optimizer.set_schedule(schedule)
            state = _Callback(progress)

            def on_step(epoch, epochs_, step, steps, loss, user):
                try:
                    if state.fn is not None:
                        stop = state.fn(epoch, epochs_, step, steps, loss)
                        return 1 if stop or _DeferSigint.hit() else 0
                    if bar[0] is not None:
                        if step == 0:
                            bar[0].reset(total=steps)
                            bar[0].set_description("epoch %d/%d" % (epoch + 1, epochs_))
                        bar[0].update(1)
                        bar[0].set_postfix(loss="%.4f" % loss, refresh=False)
                    return 1 if _DeferSigint.hit() else 0
                except BaseException as e:  # never let an exception unwind through C
                    state.error = e
                    return 1

            def on_epoch(rec, user):
                try:
                    v = ctypes.c_double()
                    for name, key in METRICS.items():
                        if name in ("improved", "trainable_layers"):
                            continue
                        if _C.tlearn_epoch_get(rec, key, ctypes.byref(v)) == OK:
                            history.setdefault(name, []).append(v.value)
                    if verbose:
                        e, es_ = ctypes.c_int(), ctypes.c_int()
                        _C.tlearn_epoch_index(rec, ctypes.byref(e), ctypes.byref(es_))
                        line = "epoch %d/%d " % (e.value + 1, es_.value) + " ".join(
                            "%s=%.4g" % (k, h[-1]) for k, h in history.items())
                        if bar[0] is not None:
                            bar[0].write(line)
                        else:
                            print(line, flush=True)
                    return 1 if _DeferSigint.hit() else 0
                except BaseException as e:
                    state.error = e
                    return 1
            if verbose and progress is None:
                try:
                    import tqdm
                    bar[0] = tqdm.tqdm(total=0, leave=False)
                except ImportError:
                    pass
            # the step callback also runs without progress/bar: it is where Ctrl-C stops
            step_cb = L.PROGRESS_FN(on_step)
            epoch_cb = L.EPOCH_FN(on_epoch)
            _check(_C.tlearn_fit_set_callbacks(f, step_cb, epoch_cb, None))
            with _DeferSigint():
                rc = _C.tlearn_model_fit_run(self.handle, optimizer.handle, f, _fptr(x),
                                             y.ctypes.data_as(ctypes.c_void_p), n)
                if _DeferSigint.hit():
                    return history  # _DeferSigint raises KeyboardInterrupt on the way out
            state.reraise()
            _check(rc)
        finally:
            if bar[0] is not None:
                bar[0].close()
            _C.tlearn_fit_destroy(ctypes.byref(f))
        return history

    def fit_batches(self, optimizer: Optimizer, x: ArrayLike, labels: ArrayLike,
                    batch: int = 32, epochs: int = 1, shuffle: bool = True,
                    progress: Optional[Callable[[int, int, int, int, float], Any]] = None
                    ) -> None:
        """The 1.0 training loop (tlearn_model_fit): mini-batches, no validation, no
        history. @p progress and Ctrl-C as in :meth:`fit`."""
        x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        state = _Callback(progress)

        def trampoline(epoch, epochs_, step, steps, loss, user):
            try:
                stop = state.fn is not None and state.fn(epoch, epochs_, step, steps, loss)
                return 1 if stop or _DeferSigint.hit() else 0
            except BaseException as e:  # never let an exception unwind through C
                state.error = e
                return 1
        cb = L.PROGRESS_FN(trampoline)
        with _DeferSigint():
            rc = _C.tlearn_model_fit(self.handle, optimizer.handle, _fptr(x), _iptr(labels),
                                     n, int(batch), int(epochs), int(bool(shuffle)), cb, None)
            if _DeferSigint.hit():
                return
        state.reraise()
        _check(rc)

    def _targets(self, y, n, what):
        """int32 labels (n,) from integers, or float32 targets (n, outputs...) from floats."""
        arr = y if isinstance(y, np.ndarray) else _foreign(y, what)
        if arr.dtype.kind == "f":
            arr = _array(arr, np.float32, what)
            if arr.ndim < 1 or arr.shape[0] != n:
                raise ValueError("%s has shape %s; expected %d rows" % (what, arr.shape, n))
            return arr
        return _labels(arr, n, what)

    def set_class_weights(self, weights: Optional[ArrayLike]) -> Model:
        """Class weights of the cross-entropy (torch's weight=); None clears them."""
        if weights is None:
            _check(_C.tlearn_model_set_class_weights(self.handle, None, 0))
        else:
            w = np.ascontiguousarray(weights, dtype=np.float32)
            _check(_C.tlearn_model_set_class_weights(self.handle, _fptr(w), w.size))
        return self

    def set_label_smoothing(self, smoothing: float) -> Model:
        """Label smoothing of the cross-entropy (torch's label_smoothing=)."""
        _check(_C.tlearn_model_set_label_smoothing(self.handle, float(smoothing)))
        return self

    def evaluate_classes(self, x: ArrayLike, labels: ArrayLike, k: int = 5) -> Dict[str, Any]:
        """Classification metrics: dict with "top_k_accuracy", "confusion" (rows: true
        labels), per-class "precision", "recall", "f1" arrays."""
        x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        c = int(np.prod(self.output_shape))
        topk = ctypes.c_float()
        cm = np.zeros((c, c), np.int64)
        p, r, f1 = (np.zeros(c, np.float32) for _ in range(3))
        _check(_C.tlearn_model_evaluate_classes(
            self.handle, _fptr(x), _iptr(labels), n, int(min(k, c)), ctypes.byref(topk),
            cm.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), _fptr(p), _fptr(r), _fptr(f1),
            c))
        return {"top_k_accuracy": topk.value, "confusion": cm, "precision": p, "recall": r,
                "f1": f1}

    def evaluate_regression(self, x: ArrayLike, targets: ArrayLike) -> Tuple[float, float]:
        """(mse, mae) against float32 targets of shape (n, outputs)."""
        x, n = _batch(x, self.input_shape, "x")
        targets = _array(targets, np.float32, "targets")
        mse, mae = ctypes.c_float(), ctypes.c_float()
        _check(_C.tlearn_model_evaluate_regression(self.handle, _fptr(x), _fptr(targets), n,
                                                   ctypes.byref(mse), ctypes.byref(mae)))
        return mse.value, mae.value

    # -- transfer learning -------------------------------------------------------------
    def apply_freeze(self, policy: Optional[FreezePolicy]) -> Model:
        """Apply a FreezePolicy (None unfreezes everything and resets LR scales)."""
        _check(_C.tlearn_model_apply_freeze(self.handle,
                                            policy.handle if policy is not None else None))
        return self

    def layer_frozen(self, layer: str) -> bool:
        """Whether @p layer is frozen (its parameters get no updates)."""
        f = ctypes.c_int()
        _check(_C.tlearn_model_layer_frozen(self.handle, _enc(layer, "layer"), ctypes.byref(f)))
        return bool(f.value)

    def tensor_frozen(self, tensor: str) -> bool:
        """Whether tensor "layer.param" gets no update (its layer or itself frozen, or a
        buffer)."""
        f = ctypes.c_int()
        _check(_C.tlearn_model_tensor_frozen(self.handle, _enc(tensor, "tensor"),
                                             ctypes.byref(f)))
        return bool(f.value)

    def layer_lr_scale(self, layer: str) -> float:
        """Learning-rate multiplier of @p layer set by a FreezePolicy."""
        s = ctypes.c_float()
        _check(_C.tlearn_model_layer_lr_scale(self.handle, _enc(layer, "layer"),
                                              ctypes.byref(s)))
        return s.value

    def features(self, layer: str, x: ArrayLike) -> np.ndarray:
        """Activations of @p layer for a batch (evaluation mode): (n, C) or (n, C, H, W).
        Chunked and converted as :meth:`predict`."""
        x, n = _batch(x, self.input_shape, "x")
        shape = _out_shape(n, self.layer_shape(self.layer_index(layer)))
        return self._infer(_C.tlearn_model_features, layer, x,
                           int(np.prod(shape[1:]))).reshape(shape)

    def train_step_from(self, optimizer: Optimizer, layer: str, features: ArrayLike,
                        labels: ArrayLike) -> float:
        """One step of the layers after @p layer from cached features of @p layer."""
        features, n = _batch(features, self.layer_shape(self.layer_index(layer)), "features")
        labels = _labels(labels, n)
        loss = ctypes.c_float()
        _check(_C.tlearn_model_train_step_from(self.handle, optimizer.handle,
                                               _enc(layer, "layer"), _fptr(features),
                                               _iptr(labels), n, ctypes.byref(loss)))
        return loss.value

    @property
    def inputs(self) -> List[Tuple[str, str, Tuple[int, ...]]]:
        """(name, dtype, shape) of each model input, in order."""
        count, name, dtype = ctypes.c_int(), ctypes.c_char_p(), ctypes.c_int()
        _check(_C.tlearn_model_input_count(self.handle, ctypes.byref(count)))
        out = []
        for k in range(count.value):
            _check(_C.tlearn_model_input_info(self.handle, k, ctypes.byref(name),
                                              ctypes.byref(dtype)))
            out.append((name.value.decode(), "int32" if dtype.value == 2 else "float32",
                        self.layer_shape_nd(-1 - k)))
        return out

    def set_outputs(self, layers: Sequence[str]) -> Model:
        """Declare the graph outputs (layer names, in order); ``[]`` restores the default,
        the last layer alone. Output 0 is what predict/train_step/evaluate use."""
        names = [_enc(l, "layer") for l in layers]
        arr = (ctypes.c_char_p * max(len(names), 1))(*names)
        _check(_C.tlearn_model_set_outputs(self.handle, arr, len(names)))
        return self

    def set_reducer(self, reduce: Optional[Callable[[int, np.ndarray], Any]],
                    wait: Optional[Callable[[], Any]], workers: int, bucket_floats: int = 0,
                    flags: int = 0) -> Model:
        """Data-parallel training (tlearn_model_set_reducer()): ``reduce(bucket, data)``
        starts summing the float32 array ``data`` in place across ``workers`` workers (it
        stays valid until ``wait()`` returns); ``wait()`` finishes every sum. An exception
        in either fails the training call with TLEARN_EIO. ``flags``: REDUCE_EVALUATE,
        REDUCE_FISHER, REDUCE_BATCHNORM or-ed. ``reduce=None`` removes the reducer."""
        if reduce is None:
            _check(_C.tlearn_model_set_reducer(self.handle, L.REDUCE_FN(), L.REDUCE_WAIT_FN(),
                                               None, 1, 0, 0))
            self._reducer = None
            return self

        def c_reduce(user, bucket, data, count):
            try:
                reduce(bucket, np.ctypeslib.as_array(data, shape=(count,)))
                return 0
            except BaseException:  # never let an exception unwind through C
                return -5

        def c_wait(user):
            try:
                wait()
                return 0
            except BaseException:
                return -5
        cbs = (L.REDUCE_FN(c_reduce), L.REDUCE_WAIT_FN(c_wait))
        _check(_C.tlearn_model_set_reducer(self.handle, cbs[0], cbs[1], None, int(workers),
                                           int(bucket_floats), int(flags)))
        self._reducer = cbs  # the C side keeps pointers to these
        return self

    @property
    def outputs(self) -> List[str]:
        """Names of the graph outputs, in order."""
        n, i = ctypes.c_int(), ctypes.c_int()
        _check(_C.tlearn_model_output_count(self.handle, ctypes.byref(n)))
        names = []
        for k in range(n.value):
            _check(_C.tlearn_model_output_layer(self.handle, k, ctypes.byref(i)))
            names.append(self.layer_name(i.value))
        return names

    def _feed(self, inputs):
        """(n, C array of pointers, arrays kept alive) for one array per model input. int64
        token ids are converted to int32 when every value fits, else ValueError; bool masks
        (torch's key_padding_mask as an imported ONNX model reads it) to int32 0/1."""
        info = self.inputs
        if len(inputs) != len(info):
            raise ValueError("the model has %d inputs, %d arrays given" % (len(info), len(inputs)))
        n, keep = None, []
        for j, (x, (name, dtype, shape)) in enumerate(zip(inputs, info)):
            x = _array(x, np.int32 if dtype == "int32" else np.float32,
                       "input %d ('%s')" % (j, name))
            if x.ndim < 1 or x.shape[0] < 1 or int(np.prod(x.shape[1:])) != int(np.prod(shape)):
                raise ValueError("input %d ('%s') has shape %s; expected (n, %s)"
                                 % (j, name, x.shape, ", ".join(map(str, shape))))
            if n is not None and x.shape[0] != n:
                raise ValueError("inputs hold different numbers of examples")
            n = x.shape[0]
            keep.append(x)
        ins = (ctypes.c_void_p * len(keep))(*[x.ctypes.data for x in keep])
        return n, ins, keep

    def run(self, *inputs: ArrayLike) -> List[np.ndarray]:
        """Inference with one array per model input (float32, or int32 for int32 inputs;
        shape (n, *input shape)); returns one array per graph output, shape (n, *shape).
        Chunked and converted as :meth:`predict` (int64 ids must fit int32)."""
        n, ins, keep = self._feed(inputs)
        outs = [np.empty((n,) + self.layer_shape_nd(self.layer_index(name)), np.float32)
                for name in self.outputs]
        for a, b in _slices(n):
            ins = (ctypes.c_void_p * len(keep))(*[x[a:b].ctypes.data for x in keep])
            optr = (L.f32p * len(outs))(*[_fptr(o[a:b]) for o in outs])
            lens = (ctypes.c_size_t * len(outs))(*[o[a:b].size for o in outs])
            _check(_C.tlearn_model_run(self.handle, ins, len(keep), b - a, optr, lens,
                                       len(outs)))
        return outs

    def train_step_inputs(self, optimizer: Optimizer, inputs: Sequence[ArrayLike],
                          labels: ArrayLike) -> float:
        """One optimisation step (cross-entropy) on a model of several inputs: @p inputs is
        a sequence of one array per model input (token ids, masks, images). Returns the loss."""
        n, ins, keep = self._feed(list(inputs))
        labels = _labels(labels, n)
        loss = ctypes.c_float()
        _check(_C.tlearn_model_train_step_inputs(self.handle, optimizer.handle, ins, len(keep),
                                                 _iptr(labels), n, ctypes.byref(loss)))
        return loss.value

    def _token_labels(self, labels, n):
        out = self.layer_shape_nd(self.layer_index(self.outputs[0]))
        positions = int(np.prod(out[:-1])) if len(out) > 1 else 1
        labels = _array(labels, np.int32, "labels")
        if labels.size != n * positions:
            raise ValueError("labels has %d values; expected n x %d = %d"
                             % (labels.size, positions, n * positions))
        return labels

    def train_step_tokens(self, optimizer: Optimizer, inputs: Sequence[ArrayLike],
                          labels: ArrayLike, ignore_index: int = -100) -> float:
        """One step of cross-entropy at every position of output 0 (..., classes), e.g.
        masked-token prediction: ``labels`` (n, positions), ``ignore_index`` where no token is
        predicted. Returns the mean loss over the counted positions."""
        n, ins, keep = self._feed(list(inputs))
        labels = self._token_labels(labels, n)
        loss = ctypes.c_float()
        _check(_C.tlearn_model_train_step_tokens(self.handle, optimizer.handle, ins, len(keep),
                                                 _iptr(labels), int(ignore_index), n,
                                                 ctypes.byref(loss)))
        return loss.value

    def compute_gradients_tokens(self, inputs: Sequence[ArrayLike], labels: ArrayLike,
                                 ignore_index: int = -100) -> float:
        """The gradients of train_step_tokens()'s loss without an update; returns the loss."""
        n, ins, keep = self._feed(list(inputs))
        labels = self._token_labels(labels, n)
        loss = ctypes.c_float()
        _check(_C.tlearn_model_compute_gradients_tokens(self.handle, ins, len(keep),
                                                        _iptr(labels), int(ignore_index), n,
                                                        ctypes.byref(loss)))
        return loss.value

    def compute_gradients_inputs(
            self, inputs: Sequence[ArrayLike], labels: ArrayLike,
            input_grad: bool = False) -> Union[float, Tuple[float, np.ndarray]]:
        """compute_gradients() for a model of several inputs. Returns the loss, or (loss,
        dL/d first input) with ``input_grad=True`` (the first input must be float32)."""
        n, ins, keep = self._feed(list(inputs))
        labels = _labels(labels, n)
        loss = ctypes.c_float()
        dx = np.empty(keep[0].shape, np.float32) if input_grad else None
        _check(_C.tlearn_model_compute_gradients_inputs(
            self.handle, ins, len(keep), _iptr(labels), n, ctypes.byref(loss),
            _fptr(dx) if input_grad else None, dx.size if input_grad else 0))
        return (loss.value, dx) if input_grad else loss.value

    def set_contrastive_temperature(self, temperature: float) -> "Model":
        """Temperature of the contrastive losses (default 0.05): similarities are cosines
        divided by it. Not saved in checkpoints."""
        _check(_C.tlearn_model_set_contrastive_temperature(self.handle, float(temperature)))
        return self

    def train_step_pairs(self, optimizer: "Optimizer", inputs: Sequence[Any]) -> float:
        """One step of the contrastive loss (set_loss("contrastive") or
        "contrastive_symmetric") on 2P rows per input: rows 0..P-1 the anchors, P..2P-1 their
        positives in the same order; the other positives of the batch are the negatives.
        Output 0, flattened, is the embedding. Returns the loss."""
        n, ins, keep = self._feed(list(inputs))
        loss = ctypes.c_float()
        _check(_C.tlearn_model_train_step_pairs(self.handle, optimizer.handle, ins, len(keep),
                                                n, ctypes.byref(loss)))
        return loss.value

    def compute_gradients_pairs(self, inputs: Sequence[Any], input_grad: bool = False) -> Any:
        """The gradients of train_step_pairs()'s loss without an update. Returns the loss, or
        (loss, dL/d first input) with ``input_grad=True`` (the first input must be float32)."""
        n, ins, keep = self._feed(list(inputs))
        loss = ctypes.c_float()
        dx = np.empty(keep[0].shape, np.float32) if input_grad else None
        _check(_C.tlearn_model_compute_gradients_pairs(
            self.handle, ins, len(keep), n, ctypes.byref(loss),
            _fptr(dx) if input_grad else None, dx.size if input_grad else 0))
        return (loss.value, dx) if input_grad else loss.value

    # -- domain adaptation (1.1) -------------------------------------------------------
    def add_grad_reverse(self, name: str, lam: float = 1.0) -> Model:
        """Gradient reversal (DANN): identity forward, gradient times -``lam`` backward."""
        _check(_C.tlearn_model_add_grad_reverse(self.handle, _enc(name, "name"), float(lam)))
        return self

    def set_grad_reverse_lambda(self, lam: float, layer: Optional[str] = None) -> Model:
        """Set lambda of gradient-reversal layer ``layer`` (None: every one); see
        :func:`dann_lambda` for DANN's schedule."""
        _check(_C.tlearn_model_set_grad_reverse_lambda(self.handle, _enc(layer, "layer"),
                                                       float(lam)))
        return self

    def set_output_loss(self, output: int, loss: Union[str, int],
                        weight: float = 1.0) -> Model:
        """Loss of graph output ``output`` (position) for :meth:`train_step_multi`:
        "softmax_ce" (int32 labels, -1 = none for that row), "mse", or None to remove."""
        kind = 0 if loss is None else _enum(LOSSES, loss, "loss")
        _check(_C.tlearn_model_set_output_loss(self.handle, int(output), kind, float(weight)))
        return self

    def set_discrepancy(self, layer: str, kind: Union[str, int], weight: float) -> Model:
        """Add a "coral" or "mmd" term between source and target rows at ``layer`` to
        :meth:`train_step_multi` (weight 0 removes it)."""
        _check(_C.tlearn_model_set_discrepancy(self.handle, _enc(layer, "layer"),
                                               _enum(DISCREPANCIES, kind, "discrepancy"),
                                               float(weight)))
        return self

    def set_mmd_bandwidths(self, multipliers: Sequence[float] = ()) -> Model:
        """MMD's bandwidth multipliers of the mean squared distance (() = 1/4..4)."""
        m = np.ascontiguousarray(multipliers, dtype=np.float32)
        _check(_C.tlearn_model_set_mmd_bandwidths(self.handle, _fptr(m) if m.size else None,
                                                  m.size))
        return self

    def train_step_multi(self, optimizer: Optimizer, inputs: Sequence[ArrayLike],
                         targets: Sequence[Optional[ArrayLike]],
                         is_target: Optional[ArrayLike] = None) -> float:
        """One step with every output's loss and the discrepancy terms. ``inputs``: one
        array per model input; ``targets``: one per output (int32 labels with -1 for no
        loss, float32 targets for MSE, or None); ``is_target``: uint8 per row or None
        (rows whose output-0 label is -1). Returns the total loss."""
        n, ins, keep = self._feed(list(inputs))
        outs = self.outputs
        if len(targets) != len(outs):
            raise ValueError("the model has %d outputs, %d targets given" % (len(outs), len(targets)))
        targets = list(targets)
        for j, t in enumerate(targets):
            if t is not None:
                t = t if isinstance(t, np.ndarray) else _foreign(t, "targets %d" % j)
                t = targets[j] = _array(t, np.float32 if t.dtype.kind == "f" else np.int32,
                                        "targets %d" % j)
                if t.ndim < 1 or t.shape[0] != n:
                    raise ValueError("targets %d has %d rows, inputs %d" % (j, t.shape[0], n))
        tp = (ctypes.c_void_p * len(targets))(*[None if t is None else t.ctypes.data
                                                 for t in targets])
        mask = None
        if is_target is not None:
            is_target = _mask(is_target, "is_target")
            if is_target.shape != (n,):
                raise ValueError("is_target has shape %s; expected (%d,)" % (is_target.shape, n))
            mask = is_target.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        loss = ctypes.c_float()
        _check(_C.tlearn_model_train_step_multi(self.handle, optimizer.handle, ins, len(inputs),
                                                n, tp, len(targets), mask, ctypes.byref(loss)))
        return loss.value

    def adapt_bn(self, *inputs: ArrayLike, batch: int = 64) -> Model:
        """AdaBN: every BatchNorm's running statistics re-estimated on these (target)
        arrays, averaged over batches of ``batch`` (torch's momentum=None)."""
        n, ins, keep = self._feed(inputs)
        _check(_C.tlearn_model_adapt_bn(self.handle, ins, len(inputs), n, int(batch)))
        return self

    def tent_step(self, optimizer: Optimizer, *inputs: ArrayLike) -> float:
        """TENT: one entropy-minimisation step on BatchNorm's weight and bias over an
        unlabelled batch; returns the batch's mean entropy. Undo with :meth:`tent_reset`."""
        n, ins, keep = self._feed(inputs)
        h = ctypes.c_float()
        _check(_C.tlearn_model_tent_step(self.handle, optimizer.handle, ins, len(inputs), n,
                                         ctypes.byref(h)))
        return h.value

    def tent_reset(self) -> Model:
        """Restore BatchNorm tensors and freeze state from before the first tent_step."""
        _check(_C.tlearn_model_tent_reset(self.handle))
        return self

    def predict_from(self, layer: str, features: ArrayLike) -> np.ndarray:
        """Outputs from cached features of @p layer."""
        features, n = _batch(features, self.layer_shape(self.layer_index(layer)), "features")
        out = np.empty(_out_shape(n, self.output_shape), dtype=np.float32)
        _check(_C.tlearn_model_predict_from(self.handle, _enc(layer, "layer"),
                                            _fptr(features), n, _fptr(out), out.size))
        return out

    def replace_head(self, from_layer: str, classes: int) -> Model:
        """Drop the layers after @p from_layer and add a new dense head called "head"."""
        _check(_C.tlearn_model_replace_head(self.handle, _enc(from_layer, "from_layer"),
                                            int(classes)))
        return self

    def truncate(self, layer: Optional[str]) -> Model:
        """Drop every layer after @p layer (None drops all)."""
        _check(_C.tlearn_model_truncate(self.handle, _enc(layer, "layer")))
        return self

    # -- continual learning --------------------------------------------------------------
    def ewc_set_mode(self, mode: Union[str, int] = "separate", gamma: float = 1.0) -> Model:
        """How successive EWC consolidations combine: "separate" (one anchor and Fisher per
        task) or "online" (one running Fisher decayed by @p gamma). Call before the first
        consolidation; returns self."""
        _check(_C.tlearn_ewc_set_mode(self.handle, _enum(EWC_MODES, mode, "EWC mode"),
                                      float(gamma)))
        return self

    def ewc_consolidate(self, x: ArrayLike, labels: ArrayLike,
                        estimator: Union[str, int] = "empirical", lam: float = 1.0) -> Model:
        """Estimate the Fisher on a labelled set and anchor the current weights (EWC)."""
        x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        _check(_C.tlearn_ewc_consolidate(self.handle, _fptr(x), _iptr(labels), n,
                                         _enum(FISHER, estimator, "estimator"), float(lam)))
        return self

    def l2sp_enable(self, alpha: float, beta: float = 0.0) -> Model:
        """L2-SP: penalty (alpha/2) ||w - w0||^2 anchoring the current weights, (beta/2)
        ||w||^2 on layers added later; returns self."""
        _check(_C.tlearn_l2sp_enable(self.handle, float(alpha), float(beta)))
        return self

    def ewc_clear(self) -> Model:
        """Drop every EWC task and the L2-SP anchor; returns self."""
        _check(_C.tlearn_ewc_clear(self.handle))
        return self

    def penalty(self) -> float:
        """Current EWC + L2-SP penalty."""
        p = ctypes.c_float()
        _check(_C.tlearn_model_penalty(self.handle, ctypes.byref(p)))
        return p.value

    def ewc_fisher(self, name: str, task: int = 0) -> np.ndarray:
        """Consolidated Fisher diagonal of parameter @p name for task @p task."""
        out = np.empty(self._tensor_shape(name), dtype=np.float32)
        _check(_C.tlearn_ewc_get_fisher(self.handle, int(task), _enc(name, "name"),
                                        _fptr(out), out.size))
        return out

    # -- files ---------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike], optimizer: Optional[Optimizer] = None,
             inference: bool = False, compress: int = 0) -> None:
        """Save a checkpoint crash-safely (with optimizer state when given).
        @p compress: zlib level 1..9, 0 stores raw."""
        if not 0 <= int(compress) <= 9:
            raise ValueError("compress must be 0..9, not %r" % compress)
        flags = (SAVE_INFERENCE if inference else SAVE_FULL) | ((int(compress) & 15) << 8)
        _check(_C.tlearn_model_save(self.handle, optimizer.handle if optimizer else None,
                                    _path(path), flags))

    def to_bytes(self, optim: Optional[Optimizer] = None, flags: int = SAVE_FULL) -> bytes:
        """The checkpoint :meth:`save` would write, as bytes (with ``optim``'s
        hyperparameters when given). ``flags``: SAVE_FULL or SAVE_INFERENCE, or'ed with
        a zlib level 1..9 shifted left by 8 (``SAVE_FULL | 6 << 8``)."""
        return _out_bytes(lambda p, n: _C.tlearn_model_save_buffer(
            self.handle, optim.handle if optim else None, int(flags), p, n))

    def load_weights_bytes(self, data: Union[bytes, bytearray, memoryview],
                           strict: bool = True) -> Tuple[int, int]:
        """:meth:`load_weights` from checkpoint bytes; returns (matched, skipped)."""
        matched, skipped = ctypes.c_size_t(), ctypes.c_size_t()
        buf, n = _in_bytes(data)
        _check(_C.tlearn_model_load_weights_buffer(self.handle, buf, n,
                                                   LOAD_STRICT if strict else LOAD_PARTIAL,
                                                   ctypes.byref(matched),
                                                   ctypes.byref(skipped)))
        return matched.value, skipped.value

    def load_weights(self, path: Union[str, os.PathLike],
                     strict: bool = True) -> Tuple[int, int]:
        """Load weights by tensor name from a checkpoint; returns (matched, skipped)."""
        matched, skipped = ctypes.c_size_t(), ctypes.c_size_t()
        _check(_C.tlearn_model_load_weights(self.handle, _path(path),
                                            LOAD_STRICT if strict else LOAD_PARTIAL,
                                            ctypes.byref(matched), ctypes.byref(skipped)))
        return matched.value, skipped.value

    def set_metadata(self, key: str, value: str) -> None:
        """Store a key/value string pair saved with the checkpoint."""
        _check(_C.tlearn_model_set_metadata(self.handle, _enc(key, "key"),
                                            _enc(value, "value")))

    def get_metadata(self, key: str) -> str:
        """The metadata value stored under @p key (TlearnError ENOTFOUND if none)."""
        v = ctypes.c_char_p()
        _check(_C.tlearn_model_get_metadata(self.handle, _enc(key, "key"), ctypes.byref(v)))
        return v.value.decode()

    def import_safetensors(
            self, path: Union[str, os.PathLike],
            name_map: Union[None, Mapping[str, str], Callable[[str], Optional[str]]] = None,
            strict: bool = True) -> int:
        """Load PyTorch weights from a safetensors file; returns the number loaded.
        @p name_map maps file names to model names: a dict, or a callable returning the
        model name or None to skip the tensor."""
        return self._import_safetensors(name_map, strict, lambda cb, flags, matched:
                                        _C.tlearn_model_import_safetensors(
                                            self.handle, _path(path), cb, None, flags,
                                            matched))

    def import_safetensors_bytes(
            self, data: Union[bytes, bytearray, memoryview],
            name_map: Union[None, Mapping[str, str], Callable[[str], Optional[str]]] = None,
            strict: bool = True) -> int:
        """:meth:`import_safetensors` from the bytes of a safetensors file."""
        buf, n = _in_bytes(data)
        return self._import_safetensors(name_map, strict, lambda cb, flags, matched:
                                        _C.tlearn_model_import_safetensors_buffer(
                                            self.handle, buf, n, cb, None, flags, matched))

    def _import_safetensors(self, name_map, strict, call):
        state = None
        cb = L.NAME_MAP_FN()
        if name_map is not None:
            state = _Callback(name_map.get if isinstance(name_map, dict) else name_map)

            def trampoline(file_name, out, out_len, user):
                try:
                    target = state.fn(file_name.decode())
                    if target is None:
                        return 0
                    raw = target.encode()
                    if len(raw) + 1 > out_len:
                        raise ValueError("mapped name %r is longer than %d bytes"
                                         % (target, out_len - 1))
                    ctypes.memmove(out, raw + b"\0", len(raw) + 1)
                    return 1
                except BaseException as e:
                    state.error = e
                    return 0
            cb = L.NAME_MAP_FN(trampoline)
        matched = ctypes.c_size_t()
        with _DeferSigint():  # no KeyboardInterrupt inside the name-map callback
            rc = call(cb, LOAD_STRICT if strict else LOAD_PARTIAL, ctypes.byref(matched))
        if state is not None:
            state.reraise()
        _check(rc)
        return matched.value

    def export_safetensors(self, path: Union[str, os.PathLike]) -> None:
        """Write parameters and buffers to a safetensors file torch can read."""
        _check(_C.tlearn_model_export_safetensors(self.handle, _path(path)))

    def export_safetensors_bytes(self) -> bytes:
        """:meth:`export_safetensors` as bytes (``safetensors.torch.load(data)`` reads
        them)."""
        return _out_bytes(lambda p, n: _C.tlearn_model_export_safetensors_buffer(
            self.handle, p, n))

    def export_onnx(self, path: Union[str, os.PathLike], opset: int = 17) -> None:
        """Write the model's evaluation graph as an ONNX file (opset 13 to 17) for other
        runtimes: weights as initializers named as the model's tensors, inputs named as the
        model's with a symbolic batch "N", outputs = the model's outputs. Raises TlearnError
        (EUNSUPPORTED names every layer of a kind with no ONNX mapping)."""
        _check(_C.tlearn_model_export_onnx(self.handle, _path(path), int(opset)))

    def export_onnx_bytes(self, opset: int = 17) -> bytes:
        """:meth:`export_onnx` as bytes (``onnx.load_from_string(data)`` reads them)."""
        return _out_bytes(lambda p, n: _C.tlearn_model_export_onnx_buffer(
            self.handle, int(opset), p, n))


    # -- few-shot without training, transferability (1.1) --

    def add_prototype(self, name: str, classes: int, temperature: float = 10.0,
                      learn_temperature: bool = False) -> Model:
        """Append an empty prototype head (logits = temperature * cosine to each class's
        prototype); fill it with prototype_update()."""
        _check(_C.tlearn_model_add_prototype(self.handle, _enc(name, "name"), int(classes),
                                             float(temperature), int(bool(learn_temperature))))
        return self

    def _proto_x(self, producer_shape, x, features):
        if features:
            return _batch(x, producer_shape, "features")
        return _batch(x, self.input_shape, "x")

    def prototype_head(self, from_layer: str, name: str, x: ArrayLike, labels: ArrayLike,
                       classes: int, temperature: float = 10.0, features: bool = False,
                       learn_temperature: bool = False) -> Model:
        """Drop the layers after @p from_layer ("" = the input) and append a prototype head
        @p name built from (x, labels): prototype c = mean of the normalised activations of
        the examples labelled c. With features=True, x holds those activations."""
        shape = (self.layer_shape(self.layer_index(from_layer)) if from_layer
                 else self.input_shape)
        x, n = self._proto_x(shape, x, features)
        labels = _labels(labels, n)
        flags = (PROTO_FEATURES if features else 0) | (
            PROTO_LEARN_TEMPERATURE if learn_temperature else 0)
        _check(_C.tlearn_prototype_head(self.handle, _enc(from_layer or "", "from_layer"),
                                        _enc(name, "name"), _fptr(x), _iptr(labels), n,
                                        int(classes), float(temperature), flags))
        return self

    def prototype_update(self, layer: str, x: ArrayLike, labels: ArrayLike,
                         features: bool = False) -> Model:
        """Fold more labelled examples into the prototypes (running mean per class)."""
        if features:
            x = _array(x, np.float32, "features")
            n = x.shape[0] if x.ndim >= 1 else 0
            if x.ndim < 2 or n < 1:
                raise ValueError("features must be (n, size) with n >= 1")
        else:
            x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        _check(_C.tlearn_prototype_update(self.handle, _enc(layer, "layer"), _fptr(x),
                                          _iptr(labels), n, PROTO_FEATURES if features else 0))
        return self

    def prototype_add_classes(self, layer: str, count: int = 1) -> Model:
        """Append @p count empty classes to a prototype head."""
        _check(_C.tlearn_prototype_add_classes(self.handle, _enc(layer, "layer"), int(count)))
        return self

    def prototype_remove_class(self, layer: str, cls: int) -> Model:
        """Remove class @p cls; later classes move down by one index."""
        _check(_C.tlearn_prototype_remove_class(self.handle, _enc(layer, "layer"), int(cls)))
        return self

    def prototype_to_dense(self, layer: str) -> Model:
        """Turn the prototype head into a dense head (weight = temperature * normalised
        prototypes, bias 0) for fine-tuning."""
        _check(_C.tlearn_prototype_to_dense(self.handle, _enc(layer, "layer")))
        return self

    def embed(self, layer: str, x: ArrayLike) -> np.ndarray:
        """L2-normalised activations of @p layer, shape (n, size). Chunked and converted
        as :meth:`predict`."""
        x, n = _batch(x, self.input_shape, "x")
        size = int(np.prod(self.layer_shape_nd(self.layer_index(layer))))
        return self._infer(_C.tlearn_model_embed, layer, x, size)

    def transferability(self, layer: str, x: ArrayLike, labels: ArrayLike, classes: int,
                        metric: Union[str, int] = "logme") -> float:
        """LogME, LEEP (layer = the source logits) or H-score of @p layer's activations for
        the labelled set; higher is better."""
        x, n = _batch(x, self.input_shape, "x")
        labels = _labels(labels, n)
        score = ctypes.c_double()
        _check(_C.tlearn_transferability(self.handle, _enc(layer, "layer"), _fptr(x),
                                         _iptr(labels), n, int(classes),
                                         _enum(TRANSFER_METRICS, metric, "metric"),
                                         ctypes.byref(score)))
        return score.value


def _unpickle_model(data: bytes, threads: int) -> Model:
    m = Model.from_bytes(data)
    return m.set_threads(threads) if threads != 1 else m


def dann_lambda(progress: float) -> float:
    """DANN's schedule 2 / (1 + exp(-10 p)) - 1 for training progress p in [0, 1]."""
    return _C.tlearn_dann_lambda(float(progress))


def discrepancy(kind: Union[str, int], features: ArrayLike, is_target: ArrayLike,
                multipliers: Sequence[float] = ()) -> Tuple[float, np.ndarray]:
    """("coral" or "mmd") between the rows of float32 ``features`` (n, dim) marked by uint8
    ``is_target``; returns (value, gradient w.r.t. features)."""
    features = _array(features, np.float32, "features")
    is_target = _mask(is_target, "is_target")
    if features.ndim != 2 or is_target.shape != (features.shape[0],):
        raise ValueError("features must be (n, dim) and is_target (n,)")
    m = np.ascontiguousarray(multipliers, dtype=np.float32)
    grad = np.empty_like(features)
    v = ctypes.c_float()
    _check(_C.tlearn_discrepancy(_enum(DISCREPANCIES, kind, "discrepancy"), _fptr(features),
                                 features.shape[0], features.shape[1],
                                 is_target.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                 _fptr(m) if m.size else None, m.size, ctypes.byref(v),
                                 _fptr(grad)))
    return v.value, grad


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """Metadata of a checkpoint file as a dict, without loading the weights."""
    result = {}

    def collect(key, value, user):
        result[key.decode()] = value.decode()
        return 0
    with _DeferSigint():  # no KeyboardInterrupt inside collect()
        _check(_C.tlearn_checkpoint_read_metadata(_path(path), L.METADATA_FN(collect), None))
    return result


def _matrix(a: Any, what: str) -> np.ndarray:
    a = _array(a, np.float32, what)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError("%s must be a 2-D (rows, dim) array, not %s" % (what, a.shape))
    return a


def similarity_scores(queries: ArrayLike, keys: ArrayLike, threads: int = 1) -> np.ndarray:
    """Cosine similarities (nq, nkeys) of the rows of @p queries and @p keys."""
    queries = _matrix(queries, "queries")
    keys = _matrix(keys, "keys")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError("queries and keys differ in dim")
    out = np.empty((queries.shape[0], keys.shape[0]), dtype=np.float32)
    _check(_C.tlearn_similarity_scores(_fptr(queries), queries.shape[0], _fptr(keys),
                                       keys.shape[0], queries.shape[1], int(threads),
                                       _fptr(out), out.size))
    return out


def similarity_topk(queries: ArrayLike, keys: ArrayLike, k: int,
                    threads: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k keys by cosine for each query: (index (nq, k) int32, scores (nq, k)),
    best first."""
    queries = _matrix(queries, "queries")
    keys = _matrix(keys, "keys")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError("queries and keys differ in dim")
    idx = np.empty((queries.shape[0], int(k)), dtype=np.int32)
    sc = np.empty((queries.shape[0], int(k)), dtype=np.float32)
    _check(_C.tlearn_similarity_topk(_fptr(queries), queries.shape[0], _fptr(keys),
                                     keys.shape[0], queries.shape[1], int(k), int(threads),
                                     _iptr(idx), _fptr(sc)))
    return idx, sc


def transferability(features: ArrayLike, labels: ArrayLike, classes: int,
                    metric: Union[str, int] = "logme") -> float:
    """LogME, LEEP (features = source logits) or H-score of (n, dim) features."""
    features = _matrix(features, "features")
    _labels(labels, features.shape[0])
    score = ctypes.c_double()
    _check(_C.tlearn_transferability_features(_fptr(features), features.shape[0],
                                              features.shape[1], _iptr(labels), int(classes),
                                              _enum(TRANSFER_METRICS, metric, "metric"),
                                              ctypes.byref(score)))
    return score.value
