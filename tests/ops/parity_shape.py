"""PyTorch parity of the data-movement ops (concat, slice, reshape, transpose) through the
public C API: the same graph is built in libtlearn (ctypes on $TLEARN_LIBRARY) and in torch,
torch's initial weights are copied over, and prediction, the loss, the input gradient and
every parameter gradient are compared (rtol 1e-5, atol 1e-6). Graphs: concat on every axis,
a DenseNet-like block (every layer reads the concatenation of all before it, then one
concat of 40 inputs with repeats), ShuffleNetV2's split + channel shuffle, ConvNeXt's
channels-last linear, slices with steps and negative bounds, reshapes with 0 and -1, every
permutation of 4 axes. Exits non-zero on the first mismatch; fails (never skips) without
torch."""
import ctypes
import itertools
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from netspec import compare, lib, ok, ptr

torch.set_num_threads(1)

C_INT_P = ctypes.POINTER(ctypes.c_int)
lib.tlearn_model_create_input.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                          ctypes.c_int, C_INT_P]
lib.tlearn_model_add_concat.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                        ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                        ctypes.c_int]
lib.tlearn_model_add_slice.argtypes = [ctypes.c_void_p, ctypes.c_char_p] + [ctypes.c_int] * 4
lib.tlearn_model_add_reshape.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                         C_INT_P]
lib.tlearn_model_add_transpose.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                           C_INT_P]
lib.tlearn_model_add_linear.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_int]
INT_MAX = 2**31 - 1
RELU = 1


def ints(v):
    return (ctypes.c_int * len(v))(*v)


class Graph:
    """One graph in both libraries. Ops (their first input is a layer name, '' the model
    input):
      ('conv', name, src, filters, kernel, pad)   ('relu', name, src)
      ('concat', name, [srcs], axis)              ('slice', name, src, axis, start, end, step)
      ('reshape', name, src, dims)                ('transpose', name, src, perm)
      ('linear', name, src, units)                ('dense', name, src, units)
    """

    def __init__(self, in_shape, ops, seed=0):
        self.in_shape, self.ops = tuple(in_shape), ops
        self.h = ctypes.c_void_p()
        ok(lib.tlearn_model_create_input(ctypes.byref(self.h), b'input', 1, len(in_shape),
                                         ints(in_shape)), 'create_input')
        torch.manual_seed(seed)
        self.mods = nn.ModuleDict()
        self.torch_forward(torch.zeros((1,) + self.in_shape), build=True)
        for op in ops:
            self._add(op)
        self.out_size = self.outs[ops[-1][1]].numel()
        count = ctypes.c_int()
        ok(lib.tlearn_model_tensor_count(self.h, ctypes.byref(count)), 'tensor_count')
        if count.value != len(self.mods.state_dict()):
            raise AssertionError('%d tensors in libtlearn, %d in torch'
                                 % (count.value, len(self.mods.state_dict())))
        for name, p in self.mods.state_dict().items():
            a = np.ascontiguousarray(p.numpy(), np.float32).ravel()
            ok(lib.tlearn_model_set_tensor(self.h, name.encode(), ptr(a), a.size), name)

    def __del__(self):
        if getattr(self, 'h', None):
            lib.tlearn_model_destroy(ctypes.byref(self.h))

    def _add(self, op):
        kind, name, src, a = op[0], op[1].encode(), op[2], op[3:]
        m = self.h
        if kind != 'concat':
            ok(lib.tlearn_model_set_next_input(m, src.encode()), 'set_next_input')
        if kind == 'conv':
            f, k, p = a
            rc = lib.tlearn_model_add_conv2d(m, name, f, k, 1, p, 1)
        elif kind == 'relu':
            rc = lib.tlearn_model_add_activation(m, name, RELU, 0.0)
        elif kind == 'concat':
            names = [(s or 'input').encode() for s in src]
            arr = (ctypes.c_char_p * len(names))(*names)
            rc = lib.tlearn_model_add_concat(m, name, arr, len(names), a[0])
        elif kind == 'slice':
            rc = lib.tlearn_model_add_slice(m, name, *a)
        elif kind == 'reshape':
            rc = lib.tlearn_model_add_reshape(m, name, len(a[0]), ints(a[0]))
        elif kind == 'transpose':
            rc = lib.tlearn_model_add_transpose(m, name, len(a[0]), ints(a[0]))
        elif kind == 'linear':
            rc = lib.tlearn_model_add_linear(m, name, a[0], 1)
        elif kind == 'dense':
            rc = lib.tlearn_model_add_dense(m, name, a[0])
        else:
            raise ValueError(kind)
        ok(rc, '%s %s' % (kind, op[1]))

    def torch_forward(self, x, build=False):
        """The graph in torch; with build, create the modules (shapes from x)."""
        vals = {'': x}
        for op in self.ops:
            kind, name, src, a = op[0], op[1], op[2], op[3:]
            v = None if kind == 'concat' else vals[src]
            if build and kind in ('conv', 'linear', 'dense'):
                if kind == 'conv':
                    self.mods[name] = nn.Conv2d(v.shape[1], a[0], a[1], 1, a[2])
                else:
                    fan = v.shape[-1] if kind == 'linear' else v[0].numel()
                    self.mods[name] = nn.Linear(fan, a[0])
            if kind == 'conv':
                y = self.mods[name](v)
            elif kind == 'relu':
                y = F.relu(v)
            elif kind == 'concat':
                # the batch is torch's axis 0: example axes move by one
                axis = a[0] + 1 if a[0] >= 0 else a[0]
                y = torch.cat([vals[s] for s in src], axis)
            elif kind == 'slice':
                axis, start, end, step = a
                axis = axis + 1 if axis >= 0 else axis
                idx = [slice(None)] * v.dim()
                idx[axis] = slice(start, end, step)
                y = v[tuple(idx)]
            elif kind == 'reshape':
                dims = [v.shape[1 + i] if d == 0 else d for i, d in enumerate(a[0])]
                y = v.reshape([v.shape[0]] + dims)
            elif kind == 'transpose':
                y = v.permute([0] + [p + 1 for p in a[0]])
            elif kind == 'linear':
                y = self.mods[name](v)
            elif kind == 'dense':
                y = self.mods[name](v.flatten(1))
            vals[name] = y
        if build:
            self.outs = {k: t[0] for k, t in vals.items()}
        return y.flatten(1)

    def check(self, tag, n=3, seed=1):
        g = np.random.default_rng(seed)
        x = g.standard_normal((n,) + self.in_shape).astype(np.float32)
        y = g.integers(0, self.out_size, n).astype(np.int32)
        # forward (evaluation)
        with torch.no_grad():
            want = self.torch_forward(torch.from_numpy(x)).numpy()
        got = np.empty(n * self.out_size, np.float32)
        ok(lib.tlearn_model_predict(self.h, ptr(x), n, ptr(got), got.size), 'predict')
        compare(tag + ': predict', got, want)
        # loss, input gradient, parameter gradients
        tx = torch.from_numpy(x).requires_grad_()
        self.mods.zero_grad()
        loss = F.cross_entropy(self.torch_forward(tx), torch.from_numpy(y).long())
        loss.backward()
        got_loss, dx = ctypes.c_float(), np.empty(x.size, np.float32)
        ok(lib.tlearn_model_compute_gradients(self.h, ptr(x), ptr(y), n,
                                              ctypes.byref(got_loss), ptr(dx), dx.size),
           'compute_gradients')
        compare(tag + ': loss', [got_loss.value], [loss.item()])
        compare(tag + ': input gradient', dx, tx.grad.numpy())
        for name, p in self.mods.named_parameters():
            g = np.empty(p.numel(), np.float32)
            ok(lib.tlearn_model_get_grad(self.h, name.encode(), ptr(g), g.size), name)
            compare('%s: grad %s' % (tag, name), g, p.grad.numpy())
        print('ok  %s' % tag)


def conv(name, src, f, k=3, p=1):
    return ('conv', name, src, f, k, p)


def concat_axes():
    """Concat of conv outputs and the model input along each axis, then a head."""
    for axis, shapes in ((0, None), (1, None), (2, None), (-1, None), (-3, None)):
        ops = [conv('a', '', 3), conv('b', '', 3, 1, 0)]
        ops += [('concat', 'cat', ['a', '', 'b', 'a'], axis), ('dense', 'fc', 'cat', 5)]
        Graph((3, 5, 4), ops).check('concat axis %d' % axis)
    # rank 1 and rank 2 values
    Graph((6,), [('dense', 'd', '', 4), ('concat', 'cat', ['d', '', 'd'], 0),
                 ('dense', 'fc', 'cat', 3)]).check('concat vectors')
    Graph((4, 5), [('linear', 'l', '', 3), ('concat', 'cat', ['', 'l'], -1),
                   ('concat', 'cat2', ['cat', 'cat'], 0),
                   ('dense', 'fc', 'cat2', 3)]).check('concat sequences')


def densenet_block():
    """Every conv reads the concatenation of the input and all convs before it (DenseNet,
    growth 3); a transition concat of 40 inputs with repeats ends it."""
    ops, feats = [], ['']
    for i in range(6):
        src = feats[0]
        if len(feats) > 1:
            ops.append(('concat', 'cat%d' % i, list(feats), 0))
            src = 'cat%d' % i
        ops += [('relu', 'r%d' % i, src), conv('c%d' % i, 'r%d' % i, 3)]
        feats.append('c%d' % i)
    many = [feats[i % len(feats)] for i in range(40)]
    ops += [('concat', 'all', many, 0), conv('t', 'all', 4, 1, 0), ('dense', 'fc', 't', 6)]
    Graph((4, 6, 5), ops).check('densenet block (40-input concat)', n=4)


def shufflenet_unit():
    """ShuffleNetV2's stride-1 unit: split channels in two, a branch on the second half,
    concat, channel shuffle of 2 groups (reshape, transpose, reshape)."""
    c, h, w = 8, 5, 6
    ops = [conv('pre', '', c),
           ('slice', 'x1', 'pre', 0, 0, c // 2, 1), ('slice', 'x2', 'pre', 0, c // 2, INT_MAX, 1),
           conv('b1', 'x2', c // 2, 1, 0), ('relu', 'br', 'b1'), conv('b2', 'br', c // 2),
           ('concat', 'cat', ['x1', 'b2'], 0),
           ('reshape', 'g', 'cat', [2, c // 2, h, w]), ('transpose', 'sh', 'g', [1, 0, 2, 3]),
           ('reshape', 'flat', 'sh', [c, h, -1]), conv('post', 'flat', 3),
           ('dense', 'fc', 'post', 4)]
    gr = Graph((3, h, w), ops)
    # the shuffle itself against torchvision's channel_shuffle
    x = torch.randn(2, c, h, w)
    want = x.view(2, 2, c // 2, h, w).transpose(1, 2).contiguous().view(2, c, h, w)
    got = x.reshape(2, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(2, c, h, w)
    compare('shuffle spec', got.numpy(), want.numpy(), 0, 0)
    gr.check('shufflenet split + channel shuffle')


def convnext_channels_last():
    """ConvNeXt's block: (C, H, W) -> (H, W, C), linear over channels, back."""
    ops = [conv('dw', '', 6), ('transpose', 'cl', 'dw', [1, 2, 0]), ('linear', 'pw1', 'cl', 12),
           ('relu', 'act', 'pw1'), ('linear', 'pw2', 'act', 6),
           ('transpose', 'cf', 'pw2', [2, 0, 1]), ('dense', 'fc', 'cf', 3)]
    Graph((3, 7, 5), ops).check('convnext channels-last')
    # tiles: more than 32 channels and positions
    ops = [conv('c', '', 40, 1, 0), ('transpose', 'cl', 'c', [1, 2, 0]),
           ('linear', 'l', 'cl', 5), ('transpose', 'cf', 'l', [2, 0, 1]),
           ('dense', 'fc', 'cf', 3)]
    Graph((2, 9, 7), ops).check('channels-last over 32x63 tiles')


def slices():
    cases = [(0, 1, 5, 2), (1, -4, -1, 1), (2, 0, INT_MAX, 3), (-1, -100, 3, 1),
             (-2, 2, 100, 4), (0, -1, INT_MAX, 1)]
    for axis, start, end, step in cases:
        ops = [conv('c', '', 6), ('slice', 's', 'c', axis, start, end, step),
               ('dense', 'fc', 's', 4)]
        Graph((2, 7, 9), ops).check('slice axis %d [%d:%d:%d]' % (axis, start, end, step))
    Graph((12,), [('slice', 's', '', 0, 1, 11, 3), ('dense', 'fc', 's', 3)]).check(
        'slice of a vector input')


def reshapes():
    for dims in ([2, 3, 5, 4], [0, -1], [-1], [3, 0, 2, -1], [6, 20, 1]):
        ops = [conv('c', '', 6), ('reshape', 'r', 'c', dims), ('dense', 'fc', 'r', 4)]
        Graph((2, 5, 4), ops).check('reshape to %s' % dims)


def permutations():
    # a rank-4 model input, so that the input gradient crosses the transpose directly
    for perm in itertools.permutations(range(4)):
        ops = [('transpose', 't', '', list(perm)), ('dense', 'fc', 't', 3)]
        Graph((2, 3, 4, 5), ops).check('transpose %s' % (perm,), n=2)
    for perm in itertools.permutations(range(3)):
        ops = [('transpose', 't', '', list(perm)), ('dense', 'fc', 't', 3)]
        Graph((35, 3, 33), ops).check('transpose %s of (35, 3, 33)' % (perm,), n=2)


def main():
    try:
        concat_axes()
        densenet_block()
        shufflenet_unit()
        convnext_channels_last()
        slices()
        reshapes()
        permutations()
    except AssertionError as e:
        print('FAIL', e)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
