"""Build the same network in libtlearn (through ctypes, the public C API of the freshly
built shared object named by $TLEARN_LIBRARY) and in PyTorch, from one list of layer specs.

A spec is a tuple (kind, name, *args):
  ('conv', name, filters, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, bias)
  ('maxpool', name, kernel, stride, pad)      ('avgpool', name, kernel, stride, pad, cip)
  ('gap', name)   ('bn', name, eps, momentum)   ('dropout', name, p)   ('flatten', name)
  ('dense', name, units)   ('act', name, kind, param)   ('add', name, other)
  ('input_from', layer)  -- the next layer reads `layer` ('' = the model input)
"""
import ctypes
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACT = {'relu': 1, 'tanh': 2, 'sigmoid': 3, 'gelu': 4, 'relu6': 5, 'leaky': 6}
SGD, ADAM, ADAMW = 1, 2, 3
OPT = {'lr': 1, 'momentum': 2, 'dampening': 3, 'nesterov': 4, 'weight_decay': 5,
       'beta1': 6, 'beta2': 7, 'eps': 8}

_path = os.environ.get('TLEARN_LIBRARY')
if not _path:
    sys.exit('TLEARN_LIBRARY is not set: run this through meson test')
lib = ctypes.CDLL(_path)
lib.tlearn_errmsg.restype = ctypes.c_char_p
lib.tlearn_model_set_seed.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
lib.tlearn_optim_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_double]
lib.tlearn_model_add_activation.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                            ctypes.c_float]
lib.tlearn_model_add_batchnorm.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float,
                                           ctypes.c_float]
lib.tlearn_model_add_dropout.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
for _f in ('tlearn_model_set_tensor', 'tlearn_model_get_tensor', 'tlearn_model_get_grad'):
    getattr(lib, _f).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p,
                                 ctypes.c_size_t]
lib.tlearn_model_predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_void_p, ctypes.c_size_t]
lib.tlearn_model_compute_gradients.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_void_p, ctypes.c_size_t,
                                               ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_size_t]
lib.tlearn_model_train_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
lib.tlearn_model_tensor_info.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_char_p),
                                         ctypes.POINTER(ctypes.c_size_t),
                                         ctypes.c_void_p, ctypes.c_void_p]


def ok(rc, what):
    if rc != 0:
        raise RuntimeError('%s failed (%d): %s' % (what, rc, lib.tlearn_errmsg().decode()))


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


class TModel:
    """A libtlearn model built from specs through the public API."""

    def __init__(self, in_shape, specs, seed=0):
        self.h = ctypes.c_void_p()
        c, hh, w = in_shape
        ok(lib.tlearn_model_create(ctypes.byref(self.h), c, hh, w), 'create')
        ok(lib.tlearn_model_set_seed(self.h, seed), 'set_seed')
        for s in specs:
            self._add(s)
        self.in_size = c * hh * w

    def _add(self, s):
        kind, name, a = s[0], s[1].encode(), s[2:]
        m = self.h
        if kind == 'input_from':
            ok(lib.tlearn_model_set_next_input(m, name), 'set_next_input')
        elif kind == 'conv':
            f, (kh, kw), (sh, sw), (ph, pw), (dh, dw), g, b = a
            ok(lib.tlearn_model_add_conv2d_ex(m, name, f, kh, kw, sh, sw, ph, pw, dh, dw, g,
                                              int(b)), 'add_conv2d_ex ' + s[1])
        elif kind == 'maxpool':
            ok(lib.tlearn_model_add_maxpool2d(m, name, *a), 'add_maxpool2d')
        elif kind == 'avgpool':
            ok(lib.tlearn_model_add_avgpool2d(m, name, *a), 'add_avgpool2d')
        elif kind == 'gap':
            ok(lib.tlearn_model_add_global_avgpool(m, name), 'add_global_avgpool')
        elif kind == 'bn':
            ok(lib.tlearn_model_add_batchnorm(m, name, a[0], a[1]), 'add_batchnorm')
        elif kind == 'dropout':
            ok(lib.tlearn_model_add_dropout(m, name, a[0]), 'add_dropout')
        elif kind == 'flatten':
            ok(lib.tlearn_model_add_flatten(m, name), 'add_flatten')
        elif kind == 'dense':
            ok(lib.tlearn_model_add_dense(m, name, a[0]), 'add_dense')
        elif kind == 'act':
            ok(lib.tlearn_model_add_activation(m, name, ACT[a[0]], a[1] if len(a) > 1 else 0.0),
               'add_activation')
        elif kind == 'add':
            ok(lib.tlearn_model_add_add(m, name, a[0].encode()), 'add_add')
        else:
            raise ValueError(kind)

    def __del__(self):
        if getattr(self, 'h', None):
            lib.tlearn_model_destroy(ctypes.byref(self.h))

    def tensors(self):
        count = ctypes.c_int()
        ok(lib.tlearn_model_tensor_count(self.h, ctypes.byref(count)), 'tensor_count')
        out = []
        for i in range(count.value):
            name, numel = ctypes.c_char_p(), ctypes.c_size_t()
            ok(lib.tlearn_model_tensor_info(self.h, i, ctypes.byref(name), ctypes.byref(numel),
                                            None, None), 'tensor_info')
            out.append((name.value.decode(), numel.value))
        return out

    def set_tensor(self, name, arr):
        a = np.ascontiguousarray(arr, dtype=np.float32).ravel()
        ok(lib.tlearn_model_set_tensor(self.h, name.encode(), ptr(a), a.size), 'set ' + name)

    def get_tensor(self, name, numel):
        a = np.empty(numel, np.float32)
        ok(lib.tlearn_model_get_tensor(self.h, name.encode(), ptr(a), numel), 'get ' + name)
        return a

    def get_grad(self, name, numel):
        a = np.empty(numel, np.float32)
        ok(lib.tlearn_model_get_grad(self.h, name.encode(), ptr(a), numel), 'grad ' + name)
        return a

    def set_training(self, t):
        ok(lib.tlearn_model_set_training(self.h, int(t)), 'set_training')

    def predict(self, x, out_size):
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        out = np.empty(n * out_size, np.float32)
        ok(lib.tlearn_model_predict(self.h, ptr(x), n, ptr(out), out.size), 'predict')
        return out.reshape(n, out_size)

    def gradients(self, x, y):
        x = np.ascontiguousarray(x, np.float32)
        y = np.ascontiguousarray(y, np.int32)
        n = x.shape[0]
        loss = ctypes.c_float()
        dx = np.empty(x.size, np.float32)
        ok(lib.tlearn_model_compute_gradients(self.h, ptr(x), ptr(y), n, ctypes.byref(loss),
                                              ptr(dx), dx.size), 'compute_gradients')
        return loss.value, dx.reshape(x.shape)

    def train_step(self, opt, x, y):
        x = np.ascontiguousarray(x, np.float32)
        y = np.ascontiguousarray(y, np.int32)
        loss = ctypes.c_float()
        ok(lib.tlearn_model_train_step(self.h, opt, ptr(x), ptr(y), x.shape[0],
                                       ctypes.byref(loss)), 'train_step')
        return loss.value


def make_optim(kind, **params):
    o = ctypes.c_void_p()
    ok(lib.tlearn_optim_create(ctypes.byref(o), kind), 'optim_create')
    for k, v in params.items():
        ok(lib.tlearn_optim_set(o, OPT[k], float(v)), 'optim_set ' + k)
    return o


def free_optim(o):
    lib.tlearn_optim_destroy(ctypes.byref(o))


class TorchNet(nn.Module):
    """The same graph in PyTorch: modules registered under the layer names, so that
    state_dict() names ("conv1.weight", "bn.running_var") match libtlearn's tensors."""

    def __init__(self, in_shape, specs):
        super().__init__()
        self.steps = []  # (kind, name, input names, module)
        shapes = {'': tuple(in_shape)}
        prev, nxt = '', None
        for s in specs:
            kind, name, a = s[0], s[1], s[2:]
            if kind == 'input_from':
                nxt = name
                continue
            src = prev if nxt is None else nxt
            nxt = None
            c, h, w = shapes[src]
            inputs = [src]
            if kind == 'conv':
                f, k, st, p, d, g, b = a
                mod = nn.Conv2d(c, f, k, st, p, d, g, bias=bool(b))
                out = (f, (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // st[0] + 1,
                       (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // st[1] + 1)
            elif kind == 'maxpool':
                k, st, p = a
                st = st or k
                mod = nn.MaxPool2d(k, st, p)
                out = (c, (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1)
            elif kind == 'avgpool':
                k, st, p, cip = a
                st = st or k
                mod = nn.AvgPool2d(k, st, p, count_include_pad=bool(cip))
                out = (c, (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1)
            elif kind == 'gap':
                mod, out = nn.AdaptiveAvgPool2d(1), (c, 1, 1)
            elif kind == 'bn':
                # after a conv: per channel over N,H,W; after a dense: per feature
                cls = nn.BatchNorm1d if (h, w) == (1, 1) else nn.BatchNorm2d
                mod, out = cls(c, eps=a[0], momentum=a[1]), (c, h, w)
            elif kind == 'dropout':
                mod, out = nn.Dropout(a[0]), (c, h, w)
            elif kind == 'flatten':
                mod, out = nn.Flatten(), (c * h * w, 1, 1)
            elif kind == 'dense':
                mod, out = nn.Linear(c * h * w, a[0]), (a[0], 1, 1)
            elif kind == 'act':
                mod = {'relu': nn.ReLU(), 'tanh': nn.Tanh(), 'sigmoid': nn.Sigmoid(),
                       'gelu': nn.GELU(), 'relu6': nn.ReLU6(),
                       'leaky': nn.LeakyReLU(a[1] if len(a) > 1 else 0.01)}[a[0]]
                out = (c, h, w)
            elif kind == 'add':
                mod, out = None, (c, h, w)
                inputs = [src, a[0]]
            else:
                raise ValueError(kind)
            if mod is not None:
                self.add_module(name, mod)
            self.steps.append((kind, name, inputs, mod))
            shapes[name] = out
            prev = name
        self.shapes = shapes

    def forward(self, x):
        vals = {'': x}
        last = None
        for kind, name, inputs, mod in self.steps:
            a = vals[inputs[0]]
            if kind == 'add':
                y = a + vals[inputs[1]]
            elif kind in ('dense',):
                y = mod(a.flatten(1))
            elif kind == 'bn' and isinstance(mod, nn.BatchNorm1d):
                y = mod(a.flatten(1))
            elif kind == 'flatten':
                y = a.flatten(1)
            else:
                # libtlearn keeps (C,1,1) shapes: give 2-D tensors their spatial dims back
                if a.dim() == 2 and kind not in ('act', 'dropout'):
                    a = a[:, :, None, None]
                y = mod(a)
            vals[name] = y
            last = y
        return last.flatten(1)


def build_pair(in_shape, specs, seed=0):
    """Both models with torch's initial weights copied into libtlearn. Every tensor of the
    libtlearn model must exist in torch and vice versa (num_batches_tracked aside)."""
    torch.manual_seed(seed)
    tnet = TorchNet(in_shape, specs)
    # non-trivial batchnorm affine and statistics, so that those terms are exercised
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for mod in tnet.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = mod.num_features
                mod.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                mod.bias.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(1 + 0.2 * torch.rand(c, generator=g))
    tm = TModel(in_shape, specs, seed)
    sd = {k: v for k, v in tnet.state_dict().items() if not k.endswith('num_batches_tracked')}
    names = tm.tensors()
    if sorted(n for n, _ in names) != sorted(sd):
        raise AssertionError('tensor names differ: tlearn %s, torch %s'
                             % (sorted(n for n, _ in names), sorted(sd)))
    for name, numel in names:
        if sd[name].numel() != numel:
            raise AssertionError('%s: %d elements in tlearn, %d in torch'
                                 % (name, numel, sd[name].numel()))
        tm.set_tensor(name, sd[name].numpy())
    return tm, tnet


class Mismatch(AssertionError):
    pass


def compare(what, got, want, rtol=1e-5, atol=1e-6):
    got = np.asarray(got, np.float64).ravel()
    want = np.asarray(want, np.float64).ravel()
    if got.shape != want.shape:
        raise Mismatch('%s: %d values, expected %d' % (what, got.size, want.size))
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    if bad.any() or not np.isfinite(got).all():
        i = int(np.argmax(err - (atol + rtol * np.abs(want))))
        raise Mismatch('%s: %d of %d values differ; worst [%d] got %.8g want %.8g'
                       % (what, int(bad.sum()), got.size, i, got[i], want[i]))
