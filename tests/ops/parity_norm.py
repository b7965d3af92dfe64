"""PyTorch parity of the norm group's ops through the public C API (ctypes, $TLEARN_LIBRARY):
layernorm over trailing axes and over the channel axis, max/average pooling with ceil_mode,
asymmetric padding and dilation (against F.max_pool2d / F.avg_pool2d after F.pad, and torch's
own padding where ceil mode drops a window that starts in the padding), adaptive average
pooling to sizes that do not divide, pad (constant, reflect, replicate), matmul (attention
scores and mixing, batched) and drop_path (torchvision.ops.StochasticDepth).

For every case: the forward pass (predict), then the loss, the input gradient and every
parameter gradient of softmax cross-entropy over the flattened output
(tlearn_model_compute_gradients), in training and evaluation mode.
Tolerance rtol 1e-5 / atol 1e-6. Exits non-zero on the first mismatch, and when torch or
torchvision is missing (a failure, never a skip)."""
import ctypes
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision.ops
except ImportError as e:  # the suite must fail, not skip, without its reference
    sys.exit('parity_norm: cannot import the PyTorch reference (%s): install python3-torch '
             'and python3-torchvision' % e)

from netspec import Mismatch, compare, lib, ok, ptr

torch.set_num_threads(1)
C_INT, C_FLOAT, C_CHAR, VP = ctypes.c_int, ctypes.c_float, ctypes.c_char_p, ctypes.c_void_p
lib.tlearn_model_create_input.argtypes = [ctypes.POINTER(VP), C_CHAR, C_INT, C_INT,
                                          ctypes.POINTER(C_INT)]
lib.tlearn_model_add_layernorm.argtypes = [VP, C_CHAR, C_INT, C_FLOAT, C_INT]
lib.tlearn_model_add_layernorm_channels.argtypes = [VP, C_CHAR, C_FLOAT, C_INT]
lib.tlearn_model_add_maxpool2d_ex.argtypes = [VP, C_CHAR] + [C_INT] * 11
lib.tlearn_model_add_avgpool2d_ex.argtypes = [VP, C_CHAR] + [C_INT] * 10
lib.tlearn_model_add_adaptive_avgpool.argtypes = [VP, C_CHAR, C_INT, C_INT]
lib.tlearn_model_add_pad.argtypes = [VP, C_CHAR, C_INT, C_INT, C_INT, C_INT, C_INT, C_FLOAT]
lib.tlearn_model_add_matmul.argtypes = [VP, C_CHAR, C_CHAR, C_CHAR, C_INT]
lib.tlearn_model_add_drop_path.argtypes = [VP, C_CHAR, C_FLOAT]
lib.tlearn_model_add_linear.argtypes = [VP, C_CHAR, C_INT, C_INT]
lib.tlearn_model_add_conv2d_ex.argtypes = [VP, C_CHAR] + [C_INT] * 11
lib.tlearn_model_add_activation.argtypes = [VP, C_CHAR, C_INT, C_FLOAT]
lib.tlearn_model_set_next_input.argtypes = [VP, C_CHAR]
lib.tlearn_model_set_tensor.argtypes = [VP, C_CHAR, VP, ctypes.c_size_t]
lib.tlearn_model_get_grad.argtypes = [VP, C_CHAR, VP, ctypes.c_size_t]
lib.tlearn_model_set_training.argtypes = [VP, C_INT]
lib.tlearn_model_set_seed.argtypes = [VP, ctypes.c_uint64]
lib.tlearn_model_predict.argtypes = [VP, VP, ctypes.c_size_t, VP, ctypes.c_size_t]
lib.tlearn_model_compute_gradients.argtypes = [VP, VP, VP, ctypes.c_size_t, VP, VP,
                                               ctypes.c_size_t]
PAD_CONSTANT, PAD_REFLECT, PAD_EDGE = 1, 2, 3
RELU = 1


class Net:
    """A libtlearn model with one float input of shape `dims`, built by calls in `build`."""

    def __init__(self, dims, build):
        self.h = VP()
        d = (C_INT * len(dims))(*dims)
        ok(lib.tlearn_model_create_input(ctypes.byref(self.h), b'x', 1, len(dims), d),
           'create_input')
        ok(lib.tlearn_model_set_seed(self.h, 1), 'set_seed')
        self.dims = tuple(dims)
        for call, *args in build:
            args = [a.encode() if isinstance(a, str) else a for a in args]
            ok(getattr(lib, 'tlearn_model_' + call)(self.h, *args), call)

    def __del__(self):
        if self.h:
            lib.tlearn_model_destroy(ctypes.byref(self.h))

    def set(self, name, t):
        a = np.ascontiguousarray(t.detach().numpy(), np.float32).ravel()
        ok(lib.tlearn_model_set_tensor(self.h, name.encode(), ptr(a), a.size), 'set ' + name)

    def grad(self, name, numel):
        a = np.empty(numel, np.float32)
        ok(lib.tlearn_model_get_grad(self.h, name.encode(), ptr(a), numel), 'grad ' + name)
        return a

    def predict(self, x, out_size):
        out = np.empty(x.shape[0] * out_size, np.float32)
        ok(lib.tlearn_model_predict(self.h, ptr(x), x.shape[0], ptr(out), out.size), 'predict')
        return out

    def gradients(self, x, y):
        loss = ctypes.c_float()
        dx = np.empty(x.size, np.float32)
        ok(lib.tlearn_model_compute_gradients(self.h, ptr(x), ptr(y), x.shape[0],
                                              ctypes.byref(loss), ptr(dx), dx.size),
           'compute_gradients')
        return loss.value, dx


def check(tag, dims, build, ref, params=(), n=3, seed=0, modes=(0, 1), rtol=1e-5, atol=1e-6):
    """Build the libtlearn model, copy `params` (name -> torch tensor) into it, and compare
    predict and gradients with ref(x, params) in torch."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n,) + tuple(dims)).astype(np.float32)
    net = Net(dims, build)
    params = {k: v.clone().requires_grad_() for k, v in dict(params).items()}
    for k, v in params.items():
        net.set(k, v)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), params).reshape(n, -1)
    classes = want.shape[1]
    y = g.integers(0, classes, n).astype(np.int32)
    for training in modes:
        ok(lib.tlearn_model_set_training(net.h, training), 'set_training')
        mode = 'train' if training else 'eval'
        compare('%s [%s] forward' % (tag, mode), net.predict(x, classes), want.numpy(), rtol,
                atol)
        tx = torch.from_numpy(x).requires_grad_()
        for p in params.values():
            p.grad = None
        loss = F.cross_entropy(ref(tx, params).reshape(n, -1), torch.from_numpy(y).long())
        loss.backward()
        got_loss, got_dx = net.gradients(x, y)
        compare('%s [%s] loss' % (tag, mode), [got_loss], [loss.item()], rtol, atol)
        compare('%s [%s] input gradient' % (tag, mode), got_dx, tx.grad.numpy(), rtol, atol)
        for k, p in params.items():
            compare('%s [%s] grad %s' % (tag, mode, k), net.grad(k, p.numel()),
                    p.grad.numpy(), rtol, atol)
    print('ok  %s' % tag)


def rand(*shape, seed=1, scale=0.5, base=0.0):
    g = torch.Generator().manual_seed(seed)
    return base + scale * (2 * torch.rand(*shape, generator=g) - 1)


def layernorm():
    for naxes, dims, affine in [(1, (5, 8), 1), (2, (4, 6, 8), 1), (3, (4, 6, 8), 0),
                                (1, (2, 3, 4, 40), 1), (2, (2, 3, 4, 5), 0)]:
        shape = dims[len(dims) - naxes:]
        ps = {'ln.weight': rand(*shape, seed=2, base=1.0),
              'ln.bias': rand(*shape, seed=3)} if affine else {}

        def ref(x, p, shape=shape, affine=affine):
            return F.layer_norm(x, shape, p.get('ln.weight'), p.get('ln.bias'), 1e-5)
        check('layernorm naxes=%d %s affine=%d' % (naxes, dims, affine), dims,
              [('add_layernorm', 'ln', naxes, 1e-5, affine)], ref, ps)
    # the channel axis: ConvNeXt's LayerNorm2d (channels-last LayerNorm(C)), after a conv so
    # that the gradient reaches parameters before it; 9x9 = 81 positions, two tiles of 64
    for c, hw, affine in [(6, (9, 9), 1), (5, (3, 7), 0), (96, (4, 4), 1)]:
        ps = {'conv.weight': rand(c, 3, 3, 3, seed=4), 'conv.bias': rand(c, seed=5)}
        if affine:
            ps.update({'ln.weight': rand(c, seed=6, base=1.0), 'ln.bias': rand(c, seed=7)})

        def ref(x, p):
            y = F.conv2d(x, p['conv.weight'], p['conv.bias'], padding=1)
            y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), p.get('ln.weight'),
                             p.get('ln.bias'), 1e-6)
            return y.permute(0, 3, 1, 2)
        check('layernorm channels C=%d %s affine=%d' % (c, hw, affine), (3,) + hw,
              [('add_conv2d_ex', 'conv', c, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
               ('add_layernorm_channels', 'ln', 1e-6, affine)], ref, ps)


def avg_no_pad_count(x, k, s, pads, ceil):
    """Average over real positions only, for asymmetric padding torch cannot express: the
    sum and the count of real positions, each pooled over the explicitly padded input."""
    l, r, t, b = pads
    ones = torch.ones_like(x[:1, :1])
    sums = F.avg_pool2d(F.pad(x, (l, r, t, b)), k, s, 0, ceil, True, 1)
    count = F.avg_pool2d(F.pad(ones, (l, r, t, b)), k, s, 0, ceil, True, 1)
    return sums / count


def pools():
    # (kh, kw, sh, sw, top, left, bottom, right, dilation, ceil) on (C, H, W)
    max_cases = [
        ((3, 3, 2, 2, 0, 0, 0, 0, 1, 1), (4, 7, 8)),  # googlenet's ceil-mode 3x3/2
        ((3, 3, 2, 2, 0, 0, 0, 0, 1, 1), (4, 14, 14)),
        ((2, 2, 2, 2, 0, 0, 0, 0, 1, 1), (3, 7, 9)),  # 2x2/2 ceil on odd sizes
        ((3, 2, 2, 1, 0, 1, 1, 0, 1, 0), (2, 6, 7)),  # asymmetric, floor
        ((3, 3, 2, 2, 1, 0, 0, 1, 1, 1), (2, 6, 7)),  # asymmetric, ceil
        ((3, 2, 2, 2, 2, 1, 1, 0, 2, 1), (2, 9, 8)),  # dilation 2
    ]
    for (kh, kw, sh, sw, t, l, b, r, d, ceil), dims in max_cases:
        def ref(x, p, a=(kh, kw, sh, sw, t, l, b, r, d, ceil)):
            kh, kw, sh, sw, t, l, b, r, d, ceil = a
            x = F.pad(x, (l, r, t, b), value=float('-inf'))
            return F.max_pool2d(x, (kh, kw), (sh, sw), 0, d, bool(ceil))
        check('maxpool2d_ex k%dx%d s%dx%d pads t%d l%d b%d r%d d%d ceil%d %s'
              % (kh, kw, sh, sw, t, l, b, r, d, ceil, dims), dims,
              [('add_maxpool2d_ex', 'pool', kh, kw, sh, sw, t, l, b, r, d, d, ceil)], ref)
    # a ceil-mode window that would start in the padding: dropped, as torch's own padding
    check('maxpool2d_ex ceil drops a window in the padding', (2, 5, 5),
          [('add_maxpool2d_ex', 'pool', 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1)],
          lambda x, p: F.max_pool2d(x, 3, 3, 1, ceil_mode=True))
    check('avgpool2d_ex ceil drops a window in the padding', (2, 5, 5),
          [('add_avgpool2d_ex', 'pool', 3, 3, 3, 3, 1, 1, 1, 1, 1, 1)],
          lambda x, p: F.avg_pool2d(x, 3, 3, 1, ceil_mode=True))
    check('avgpool2d_ex ceil, pad 1, without count_include_pad', (2, 8, 7),
          [('add_avgpool2d_ex', 'pool', 3, 3, 2, 2, 1, 1, 1, 1, 1, 0)],
          lambda x, p: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False))
    # (kh, kw, sh, sw, top, left, bottom, right, ceil, count_include_pad)
    avg_cases = [
        ((3, 3, 2, 2, 0, 0, 0, 0, 1, 1), (3, 7, 8)),
        ((3, 3, 2, 2, 1, 0, 0, 1, 1, 1), (2, 7, 8)),  # a ceil window past the padded input
        ((2, 3, 2, 2, 1, 1, 0, 1, 0, 1), (2, 5, 6)),
        ((3, 3, 2, 2, 1, 0, 0, 1, 1, 0), (2, 7, 8)),
        ((2, 2, 1, 2, 0, 1, 1, 0, 0, 0), (2, 5, 6)),
    ]
    for (kh, kw, sh, sw, t, l, b, r, ceil, cip), dims in avg_cases:
        def ref(x, p, a=(kh, kw, sh, sw, t, l, b, r, ceil, cip)):
            kh, kw, sh, sw, t, l, b, r, ceil, cip = a
            if cip:
                return F.avg_pool2d(F.pad(x, (l, r, t, b)), (kh, kw), (sh, sw), 0, bool(ceil))
            return avg_no_pad_count(x, (kh, kw), (sh, sw), (l, r, t, b), bool(ceil))
        check('avgpool2d_ex k%dx%d s%dx%d pads t%d l%d b%d r%d ceil%d cip%d %s'
              % (kh, kw, sh, sw, t, l, b, r, ceil, cip, dims), dims,
              [('add_avgpool2d_ex', 'pool', kh, kw, sh, sw, t, l, b, r, ceil, cip)], ref)
    # conv + ReLU + pool: the conv folds the plain 2x2 pool but must not fold a ceil-mode one
    for ceil in (0, 1):
        ps = {'conv.weight': rand(4, 3, 3, 3, seed=8), 'conv.bias': rand(4, seed=9)}

        def ref(x, p, ceil=ceil):
            y = F.relu(F.conv2d(x, p['conv.weight'], p['conv.bias'], padding=1))
            return F.max_pool2d(y, 2, 2, ceil_mode=bool(ceil))
        check('conv + relu + maxpool 2x2/2 ceil%d on 9x11' % ceil, (3, 9, 11),
              [('add_conv2d_ex', 'conv', 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
               ('add_activation', 'relu', RELU, 0.0),
               ('add_maxpool2d_ex', 'pool', 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, ceil)], ref, ps)


def adaptive():
    for dims, out in [((3, 7, 5), (3, 2)), ((2, 5, 7), (4, 3)), ((2, 3, 4), (5, 7)),
                      ((2, 6, 6), (1, 1)), ((2, 13, 11), (7, 7))]:
        check('adaptive_avgpool %s -> %s' % (dims, out), dims,
              [('add_adaptive_avgpool', 'ap', out[0], out[1])],
              lambda x, p, out=out: F.adaptive_avg_pool2d(x, out))


def pad():
    for (t, l, b, r), mode, value, dims in [
            ((1, 2, 0, 3), PAD_CONSTANT, 0.0, (2, 4, 5)),
            ((0, 1, 2, 1), PAD_CONSTANT, 0.75, (2, 4, 5)),
            ((2, 1, 3, 4), PAD_REFLECT, 0.0, (2, 4, 5)),
            ((3, 0, 1, 2), PAD_EDGE, 0.0, (2, 4, 5))]:
        tmode = {PAD_CONSTANT: 'constant', PAD_REFLECT: 'reflect', PAD_EDGE: 'replicate'}[mode]

        def ref(x, p, a=(l, r, t, b), tmode=tmode, value=value):
            if tmode == 'constant':
                return F.pad(x, a, 'constant', value)
            return F.pad(x, a, tmode)
        check('pad t%d l%d b%d r%d %s %g' % (t, l, b, r, tmode, value), dims,
              [('add_pad', 'pad', t, l, b, r, mode, value)], ref)
    # before a convolution, whose weight gradient then sees the padded values
    ps = {'conv.weight': rand(3, 2, 3, 3, seed=10), 'conv.bias': rand(3, seed=11)}
    check('pad (reflect) + conv', (2, 6, 5),
          [('add_pad', 'pad', 1, 1, 1, 1, PAD_REFLECT, 0.0),
           ('add_conv2d_ex', 'conv', 3, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1)],
          lambda x, p: F.conv2d(F.pad(x, (1, 1, 1, 1), 'reflect'), p['conv.weight'],
                                p['conv.bias']), ps)


def matmul():
    # attention without softmax: scores = q k^T (transposed), mixed = scores v
    for dims in [(5, 6), (2, 5, 6), (2, 3, 4, 6)]:
        ps = {'q.weight': rand(4, 6, seed=12), 'q.bias': rand(4, seed=13),
              'k.weight': rand(4, 6, seed=14), 'v.weight': rand(3, 6, seed=15)}

        def ref(x, p):
            q = F.linear(x, p['q.weight'], p['q.bias'])
            k = F.linear(x, p['k.weight'])
            v = F.linear(x, p['v.weight'])
            return torch.matmul(torch.matmul(q, k.transpose(-1, -2)), v)
        check('matmul attention %s' % (dims,), dims,
              [('add_linear', 'q', 4, 1), ('set_next_input', 'x'), ('add_linear', 'k', 4, 0),
               ('set_next_input', 'x'), ('add_linear', 'v', 3, 0),
               ('add_matmul', 'scores', 'q', 'k', 1), ('add_matmul', 'mix', 'scores', 'v', 0)],
              ref, ps)
    # x x^T: one producer feeds both inputs
    ps = {'lin.weight': rand(5, 4, seed=16)}
    check('matmul x x^T', (3, 4),
          [('add_linear', 'lin', 5, 0), ('add_matmul', 'gram', 'lin', 'lin', 1)],
          lambda x, p: (lambda h: torch.matmul(h, h.transpose(-1, -2)))(
              F.linear(x, p['lin.weight'])), ps)


def drop_path():
    # evaluation: the identity, as StochasticDepth.eval()
    sd = torchvision.ops.StochasticDepth(0.3, 'row').eval()
    ps = {'lin.weight': rand(5, 4, seed=17)}
    check('drop_path (evaluation)', (3, 4),
          [('add_linear', 'lin', 5, 0), ('add_drop_path', 'dp', 0.3)],
          lambda x, p: sd(F.linear(x, p['lin.weight'])), ps, modes=(0,))
    # training: StochasticDepth's rule, each example zero or scaled by 1 / (1 - p). The draws
    # come from different RNGs, so read libtlearn's choice from its input gradient (zero
    # exactly for a dropped example) and give torch the same noise
    n, dims, p = 64, (3, 4), 0.3
    net = Net(dims, [('add_drop_path', 'dp', p)])
    ok(lib.tlearn_model_set_training(net.h, 1), 'set_training')
    g = np.random.default_rng(5)
    x = g.standard_normal((n,) + dims).astype(np.float32)
    y = g.integers(0, 12, n).astype(np.int32)
    got_loss, got_dx = net.gradients(x, y)
    keep = got_dx.reshape(n, 12).any(axis=1)
    if keep.all() or not keep.any():
        raise Mismatch('drop_path (training): %d of %d examples kept' % (keep.sum(), n))
    # torchvision: input * noise, noise ~ Bernoulli(1 - p) per row, divided by 1 - p
    noise = torch.from_numpy(keep.astype(np.float32)).reshape(n, 1, 1).div_(1.0 - p)
    tx = torch.from_numpy(x).requires_grad_()
    loss = F.cross_entropy((tx * noise).reshape(n, -1), torch.from_numpy(y).long())
    loss.backward()
    compare('drop_path (training) loss', [got_loss], [loss.item()])
    compare('drop_path (training) input gradient', got_dx, tx.grad.numpy())
    print('ok  drop_path (training), %d of %d kept' % (keep.sum(), n))


def main():
    try:
        layernorm()
        pools()
        adaptive()
        pad()
        matmul()
        drop_path()
    except Mismatch as e:
        sys.exit('MISMATCH: %s' % e)
    except RuntimeError as e:
        sys.exit('ERROR: %s' % e)
    print('parity_norm: all cases match')


if __name__ == '__main__':
    main()
