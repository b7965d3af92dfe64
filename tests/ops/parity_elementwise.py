"""PyTorch 1.13 parity of the elementwise ops (binary with broadcasting, scale, the 1.1
activations, softmax) through the public C API of the freshly built libtlearn ($TLEARN_LIBRARY).

Each case builds one graph twice, in libtlearn by its public add calls and in torch, copies
torch's initial weights into libtlearn, and compares the prediction, the mean cross-entropy
over the flattened output, its gradient w.r.t. the input and every parameter gradient
(rtol 1e-5, atol 1e-6). Exits non-zero on the first mismatch; fails without torch."""
import ctypes
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # never skip: the suite must say what is missing
    sys.exit('parity_elementwise: %s (install python3-torch and python3-numpy)' % e)

from netspec import compare, lib, ok, ptr

torch.set_num_threads(1)

FLOAT32 = 1
OPS = {'add': 1, 'sub': 2, 'mul': 3, 'div': 4}
ACTS = {'sigmoid': 3, 'relu': 1, 'hardsigmoid': 7, 'hardswish': 8, 'silu': 9, 'clip': 10,
        'gelu_tanh': 11}

c_int_p = ctypes.POINTER(ctypes.c_int)
c_float_p = ctypes.POINTER(ctypes.c_float)
lib.tlearn_model_create_input.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                          ctypes.c_int, c_int_p]
lib.tlearn_model_add_binary.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_char_p, ctypes.c_char_p]
lib.tlearn_model_add_scale.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, c_int_p,
                                       ctypes.c_int]
lib.tlearn_model_add_activation_ex.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                               c_float_p, ctypes.c_int]
lib.tlearn_model_add_softmax.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
lib.tlearn_model_add_linear.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_int]
lib.tlearn_model_set_seed.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
for _f in ('tlearn_model_set_tensor', 'tlearn_model_get_grad'):
    getattr(lib, _f).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p,
                                 ctypes.c_size_t]
lib.tlearn_model_predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_void_p, ctypes.c_size_t]
lib.tlearn_model_compute_gradients.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_void_p, ctypes.c_size_t,
                                               ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_size_t]


def ints(v):
    return (ctypes.c_int * len(v))(*v)


class Scale(nn.Module):
    """x * weight (+ bias), weight starting at 1: what tlearn_model_add_scale computes."""

    def __init__(self, dims, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dims))
        self.bias = nn.Parameter(torch.zeros(dims)) if bias else None

    def forward(self, x):
        y = x * self.weight
        return y + self.bias if self.bias is not None else y


def torch_act(kind, params):
    if kind == 'hardsigmoid':
        if not params:
            return F.hardsigmoid
        # ONNX's HardSigmoid with torch.nn.Hardsigmoid's kinks: no gradient at 0 and 1
        alpha, beta = params
        return lambda x: F.hardtanh(alpha * x + beta, 0.0, 1.0)
    return {'sigmoid': torch.sigmoid, 'relu': F.relu, 'hardswish': F.hardswish,
            'silu': F.silu, 'gelu_tanh': lambda x: F.gelu(x, approximate='tanh'),
            'clip': lambda x: torch.clamp(x, params[0], params[1])}[kind]


class Graph(nn.Module):
    """Steps (kind, name, ...) on named values; the model input is named 'x'. A step reads
    the previous step unless ('from', name) came before it.
      ('conv', name, filters, kernel, pad)   ('gap', name)   ('dense', name, units)
      ('linear', name, units)   ('act', name, kind, params)   ('binary', name, op, a, b)
      ('scale', name, dims, bias)   ('softmax', name, axis)"""

    def __init__(self, in_shape, steps):
        super().__init__()
        self.steps, shapes, prev, nxt = [], {'x': tuple(in_shape)}, 'x', None
        for s in steps:
            kind, name, a = s[0], s[1], s[2:]
            if kind == 'from':
                nxt = name
                continue
            src, nxt = nxt or prev, None
            shape = shapes[src]
            if kind == 'conv':
                f, k, p = a
                self.add_module(name, nn.Conv2d(shape[0], f, k, 1, p))
            elif kind == 'dense':
                self.add_module(name, nn.Linear(int(np.prod(shape)), a[0]))
            elif kind == 'linear':
                self.add_module(name, nn.Linear(shape[-1], a[0]))
            elif kind == 'scale':
                self.add_module(name, Scale(a[0], a[1]))
            self.steps.append((kind, name, src, a))
            with torch.no_grad():
                shapes[name] = tuple(self.run_step(kind, name, a, lambda n: torch.zeros(
                    (1,) + shapes[n]), src).shape[1:])
            prev = name
        self.shapes = shapes

    def run_step(self, kind, name, a, val, src):
        x = val(src)
        if kind in ('conv', 'linear', 'scale'):
            return getattr(self, name)(x)
        if kind == 'gap':
            return F.adaptive_avg_pool2d(x, 1)
        if kind == 'dense':
            return getattr(self, name)(x.flatten(1))
        if kind == 'act':
            return torch_act(a[0], a[1])(x)
        if kind == 'softmax':
            return torch.softmax(x, a[0] + 1 if a[0] >= 0 else a[0])
        if kind == 'binary':
            op, ea, eb = a
            u, v = val(ea or src), val(eb)
            # the batch is shared: a lower-rank example aligns on the right after it
            r = max(u.dim(), v.dim())
            u, v = [t.reshape(t.shape[:1] + (1,) * (r - t.dim()) + t.shape[1:]) for t in (u, v)]
            return {'add': u + v, 'sub': u - v, 'mul': u * v, 'div': u / v}[op]
        raise ValueError(kind)

    def forward(self, x):
        vals = {'x': x}
        for kind, name, src, a in self.steps:
            vals[name] = self.run_step(kind, name, a, vals.__getitem__, src)
        return vals[self.steps[-1][1]].flatten(1)


class TModel:
    def __init__(self, in_shape, steps, seed=0):
        self.h = ctypes.c_void_p()
        ok(lib.tlearn_model_create_input(ctypes.byref(self.h), b'x', FLOAT32, len(in_shape),
                                         ints(in_shape)), 'create_input')
        ok(lib.tlearn_model_set_seed(self.h, seed), 'set_seed')
        for s in steps:
            self.add(s)

    def add(self, s):
        kind, name, a, m = s[0], s[1].encode(), s[2:], self.h
        enc = lambda v: v.encode() if v else None
        if kind == 'from':
            ok(lib.tlearn_model_set_next_input(m, name), 'set_next_input')
        elif kind == 'conv':
            f, k, p = a
            ok(lib.tlearn_model_add_conv2d(m, name, f, k, 1, p, 1), 'add_conv2d')
        elif kind == 'gap':
            ok(lib.tlearn_model_add_global_avgpool(m, name), 'add_global_avgpool')
        elif kind == 'dense':
            ok(lib.tlearn_model_add_dense(m, name, a[0]), 'add_dense')
        elif kind == 'linear':
            ok(lib.tlearn_model_add_linear(m, name, a[0], 1), 'add_linear')
        elif kind == 'act':
            p = (ctypes.c_float * 2)(*a[1])
            ok(lib.tlearn_model_add_activation_ex(m, name, ACTS[a[0]], p, len(a[1])),
               'add_activation_ex ' + s[1])
        elif kind == 'binary':
            ok(lib.tlearn_model_add_binary(m, name, OPS[a[0]], enc(a[1]), enc(a[2])),
               'add_binary ' + s[1])
        elif kind == 'scale':
            ok(lib.tlearn_model_add_scale(m, name, len(a[0]), ints(a[0]), int(a[1])),
               'add_scale ' + s[1])
        elif kind == 'softmax':
            ok(lib.tlearn_model_add_softmax(m, name, a[0]), 'add_softmax')
        else:
            raise ValueError(kind)

    def __del__(self):
        if getattr(self, 'h', None):
            lib.tlearn_model_destroy(ctypes.byref(self.h))


def check(tag, in_shape, steps, n=3, scale=1.0, seed=0, x=None):
    torch.manual_seed(seed)
    net = Graph(in_shape, steps)
    tm = TModel(in_shape, steps, seed)
    # non-trivial scale parameters (they start as the identity)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            if isinstance(net.get_submodule(pname.rsplit('.', 1)[0]), Scale):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    for pname, p in net.state_dict().items():
        a = np.ascontiguousarray(p.numpy(), np.float32).ravel()
        ok(lib.tlearn_model_set_tensor(tm.h, pname.encode(), ptr(a), a.size), 'set ' + pname)
    rng = np.random.default_rng(seed)
    if x is None:
        x = (scale * rng.standard_normal((n,) + tuple(in_shape))).astype(np.float32)
    n = x.shape[0]
    tx = torch.from_numpy(x).requires_grad_()
    out = net(tx)
    classes = out.shape[1]
    y = rng.integers(0, classes, n).astype(np.int32)
    loss = F.cross_entropy(out, torch.from_numpy(y).long())
    loss.backward()
    got = np.empty(n * classes, np.float32)
    ok(lib.tlearn_model_predict(tm.h, ptr(x), n, ptr(got), got.size), 'predict')
    compare(tag + ': predict', got, out.detach().numpy())
    got_loss, dx = ctypes.c_float(), np.empty(x.size, np.float32)
    ok(lib.tlearn_model_compute_gradients(tm.h, ptr(x), ptr(y), n, ctypes.byref(got_loss),
                                          ptr(dx), dx.size), 'compute_gradients')
    compare(tag + ': loss', [got_loss.value], [loss.item()])
    compare(tag + ': input gradient', dx, tx.grad.numpy())
    for pname, p in net.named_parameters():
        gp = np.empty(p.numel(), np.float32)
        ok(lib.tlearn_model_get_grad(tm.h, pname.encode(), ptr(gp), gp.size), 'grad ' + pname)
        compare('%s: grad %s' % (tag, pname), gp, p.grad.numpy())
    print('ok  %s' % tag)


def se_block(gate_first):
    """MobileNetV3 / EfficientNet squeeze-excitation: (N, C, 1, 1) x (N, C, H, W)."""
    a, b = (None, 'feat') if gate_first else ('feat', 'gate')
    return [('conv', 'c1', 8, 3, 1), ('act', 'feat', 'hardswish', ()),
            ('gap', 'squeeze'), ('conv', 'reduce', 3, 1, 0), ('act', 'r', 'silu', ()),
            ('conv', 'expand', 8, 1, 0), ('act', 'gate', 'hardsigmoid', ()),
            ('binary', 'excite', 'mul', a, b), ('dense', 'head', 5)]


def binary_cases():
    check('SE gate * map', (4, 6, 7), se_block(True))
    check('SE map * gate', (4, 6, 7), se_block(False), seed=1)
    # general broadcast on a (C, H, W) = (4, 5, 6) input: (4,5,1) against (1,5,6), a
    # vector (6) along the last axis, and a (4,1,1) divisor kept in (0, 1) by a sigmoid
    general = [('linear', 'col', 1), ('from', 'x'), ('conv', 'row', 1, 3, 1),
               ('binary', 'outer', 'sub', 'col', 'row'),
               ('from', 'x'), ('dense', 'vec', 6), ('binary', 'plus', 'add', 'outer', 'vec'),
               ('from', 'x'), ('gap', 'g'), ('act', 'pos', 'sigmoid', ()),
               ('binary', 'q', 'div', 'plus', 'pos'),
               ('binary', 'sq', 'mul', 'q', 'q'), ('dense', 'head', 4)]
    check('general broadcast sub/add/div and x*x', (4, 5, 6), general, seed=2)
    # a gate computed from the model input times the model input itself
    gated = [('conv', 'c', 4, 1, 0), ('gap', 'cg'), ('binary', 'p', 'mul', 'cg', 'x'),
             ('dense', 'head', 3)]
    check('(C,1,1) gate * model input', (4, 5, 6), gated, seed=3)


def scale_cases():
    check('scale per channel with bias', (3, 5, 4),
          [('conv', 'c', 6, 3, 1), ('scale', 'ls', (6, 1, 1), True), ('dense', 'head', 4)])
    check('scale channels-last (C) (ConvNeXt layer scale)', (5, 4, 6),
          [('linear', 'pw', 8), ('scale', 'gamma', (8,), False), ('dense', 'head', 3)],
          seed=1)
    check('scale sequence (T, D) with bias', (7, 6),
          [('linear', 'proj', 6), ('scale', 's', (6,), True), ('dense', 'head', 3)], seed=2)
    check('scale full shape', (2, 3, 4),
          [('scale', 's', (2, 3, 4), True), ('dense', 'head', 3)], seed=3)


def activation_cases():
    for i, (kind, params) in enumerate([('hardsigmoid', ()), ('hardsigmoid', (0.2, 0.5)),
                                        ('hardswish', ()), ('silu', ()),
                                        ('clip', (-0.5, 0.7)), ('gelu_tanh', ())]):
        check('%s %s' % (kind, params), (3, 5, 7),
              [('conv', 'c', 4, 3, 1), ('act', 'a', kind, params), ('dense', 'head', 4)],
              scale=3.0, seed=10 + i)
    # exactly at the kinks: the input gradient is torch's there too. 16 values per example:
    # torch's vectorised loops handle them all (its scalar tail loop differs from the vector
    # loop for hard-swish at exactly 3: 1.5 instead of 1; libtlearn follows the vector loop)
    kinks = np.array([[-3.5, -3.0, -1.0, -0.5, 0.0, 0.7, 3.0, 3.5, -2.5, 2.5, 1.0, -1.5, 6.0,
                       -6.0, 0.5, 0.2]], np.float32)
    for kind, params in [('hardsigmoid', ()), ('hardsigmoid', (0.2, 0.5)), ('hardswish', ()),
                         ('clip', (-0.5, 0.7)), ('clip', (-1.0, 3.0)), ('silu', ()),
                         ('gelu_tanh', ())]:
        check('%s %s at the kinks' % (kind, params), (16,), [('act', 'a', kind, params)],
              x=np.repeat(kinks, 2, axis=0))


def softmax_cases():
    for axis in (0, 1, 2, -1, -2):
        check('softmax axis %d of (C, H, W)' % axis, (3, 4, 5),
              [('conv', 'c', 3, 3, 1), ('softmax', 's', axis), ('dense', 'head', 4)],
              scale=2.0, seed=20 + axis)
    check('softmax over a sequence (T, D)', (6, 9),
          [('linear', 'l', 9), ('softmax', 's', -1), ('linear', 'o', 2)], seed=30)
    check('softmax of large logits', (12,), [('softmax', 's', 0)], scale=200.0, seed=31)


if __name__ == '__main__':
    binary_cases()
    scale_cases()
    activation_cases()
    softmax_cases()
