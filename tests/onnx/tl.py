"""Minimal ctypes access to the built libtlearn.so for the ONNX tests.

The library path comes from the TLEARN_LIBRARY environment variable set by meson; a test
run without it fails loudly instead of skipping."""
import ctypes
import os
import sys

import numpy as np

_path = os.environ.get("TLEARN_LIBRARY")
if not _path or not os.path.exists(_path):
    sys.exit("TLEARN_LIBRARY is not set to the built libtlearn.so (got %r)" % _path)
lib = ctypes.CDLL(_path)

P = ctypes.c_void_p
c_int_p = ctypes.POINTER(ctypes.c_int)
f32p = ctypes.POINTER(ctypes.c_float)
i32p = ctypes.POINTER(ctypes.c_int32)

lib.tlearn_errmsg.restype = ctypes.c_char_p
lib.tlearn_model_import_onnx.argtypes = [ctypes.POINTER(P), ctypes.c_char_p]
lib.tlearn_model_import_onnx_buffer.argtypes = [ctypes.POINTER(P), ctypes.c_char_p,
                                                ctypes.c_size_t]
lib.tlearn_model_destroy.argtypes = [ctypes.POINTER(P)]
lib.tlearn_model_predict.argtypes = [P, f32p, ctypes.c_size_t, f32p, ctypes.c_size_t]
lib.tlearn_model_layer_count.argtypes = [P, c_int_p]
lib.tlearn_model_layer_name.argtypes = [P, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
lib.tlearn_model_layer_kind.argtypes = [P, ctypes.c_int, c_int_p]
lib.tlearn_model_layer_shape.argtypes = [P, ctypes.c_int, c_int_p, c_int_p, c_int_p]
lib.tlearn_model_tensor_count.argtypes = [P, c_int_p]
lib.tlearn_model_tensor_info.argtypes = [P, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                         ctypes.POINTER(ctypes.c_size_t), c_int_p, c_int_p]
lib.tlearn_model_get_tensor.argtypes = [P, ctypes.c_char_p, f32p, ctypes.c_size_t]
lib.tlearn_model_replace_head.argtypes = [P, ctypes.c_char_p, ctypes.c_int]
lib.tlearn_model_set_training.argtypes = [P, ctypes.c_int]
lib.tlearn_model_train_step.argtypes = [P, P, f32p, i32p, ctypes.c_size_t,
                                        ctypes.POINTER(ctypes.c_float)]
lib.tlearn_model_evaluate.argtypes = [P, f32p, i32p, ctypes.c_size_t,
                                      ctypes.POINTER(ctypes.c_float),
                                      ctypes.POINTER(ctypes.c_float)]
lib.tlearn_model_param_count.argtypes = [P, ctypes.POINTER(ctypes.c_size_t),
                                         ctypes.POINTER(ctypes.c_size_t)]
lib.tlearn_optim_create.argtypes = [ctypes.POINTER(P), ctypes.c_int]
lib.tlearn_optim_set.argtypes = [P, ctypes.c_int, ctypes.c_double]
lib.tlearn_optim_destroy.argtypes = [ctypes.POINTER(P)]
lib.tlearn_freeze_create.argtypes = [ctypes.POINTER(P)]
lib.tlearn_freeze_until.argtypes = [P, ctypes.c_char_p]
lib.tlearn_freeze_destroy.argtypes = [ctypes.POINTER(P)]
lib.tlearn_model_apply_freeze.argtypes = [P, P]
lib.tlearn_model_layer_frozen.argtypes = [P, ctypes.c_char_p, c_int_p]

TLEARN_SGD = 1
TLEARN_OPT_LR = 1
TLEARN_EUNSUPPORTED = -7
KINDS = {1: "dense", 2: "flatten", 3: "activation", 4: "conv2d", 5: "maxpool2d",
         6: "avgpool2d", 7: "global_avgpool", 8: "batchnorm", 9: "dropout", 10: "add",
         11: "binary", 12: "scale", 13: "softmax", 14: "concat", 15: "slice", 16: "reshape",
         17: "transpose", 18: "layernorm", 19: "adaptive_avgpool", 20: "pad", 21: "matmul",
         22: "drop_path", 30: "embedding", 31: "position_embedding", 32: "attention",
         33: "token_pool", 34: "patch_embed", 40: "lora_sum", 50: "grad_reverse",
         60: "prototype"}


class TlearnError(RuntimeError):
    def __init__(self, rc, what):
        super().__init__("%s failed with %d: %s" % (what, rc, lib.tlearn_errmsg().decode()))
        self.rc = rc


def check(rc, what):
    if rc != 0:
        raise TlearnError(rc, what)


def fptr(a):
    return a.ctypes.data_as(f32p)


class Model:
    def __init__(self, handle):
        self.h = handle

    @classmethod
    def import_onnx(cls, path):
        h = P()
        check(lib.tlearn_model_import_onnx(ctypes.byref(h), path.encode()),
              "tlearn_model_import_onnx(%s)" % path)
        assert h.value, "import succeeded without a model"
        return cls(h)

    def close(self):
        lib.tlearn_model_destroy(ctypes.byref(self.h))

    def layers(self):
        n = ctypes.c_int()
        check(lib.tlearn_model_layer_count(self.h, ctypes.byref(n)), "layer_count")
        out = []
        for i in range(n.value):
            name, kind = ctypes.c_char_p(), ctypes.c_int()
            check(lib.tlearn_model_layer_name(self.h, i, ctypes.byref(name)), "layer_name")
            check(lib.tlearn_model_layer_kind(self.h, i, ctypes.byref(kind)), "layer_kind")
            out.append((name.value.decode(), KINDS[kind.value]))
        return out

    def tensors(self):
        n = ctypes.c_int()
        check(lib.tlearn_model_tensor_count(self.h, ctypes.byref(n)), "tensor_count")
        out = {}
        for i in range(n.value):
            name, numel = ctypes.c_char_p(), ctypes.c_size_t()
            check(lib.tlearn_model_tensor_info(self.h, i, ctypes.byref(name),
                                               ctypes.byref(numel), None, None), "tensor_info")
            out[name.value.decode()] = numel.value
        return out

    def get(self, name):
        numel = self.tensors()[name]
        a = np.empty(numel, np.float32)
        check(lib.tlearn_model_get_tensor(self.h, name.encode(), fptr(a), numel), "get_tensor")
        return a

    def output_size(self):
        n = ctypes.c_int()
        check(lib.tlearn_model_layer_count(self.h, ctypes.byref(n)), "layer_count")
        c, hh, w = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        check(lib.tlearn_model_layer_shape(self.h, n.value - 1, ctypes.byref(c),
                                           ctypes.byref(hh), ctypes.byref(w)), "layer_shape")
        return c.value * hh.value * w.value

    def predict(self, x):
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        out = np.empty((n, self.output_size()), np.float32)
        check(lib.tlearn_model_predict(self.h, fptr(x), n, fptr(out), out.size), "predict")
        return out
