"""PyTorch parity of the transformer layers through the public C API (ctypes on the shared
object named by $TLEARN_LIBRARY): forward (tlearn_model_run), input gradient and parameter
gradients (tlearn_model_compute_gradients_inputs) of a softmax cross-entropy over each
example's flattened output, for the same weights. Exits non-zero on any mismatch; fails
(never skips) when torch is missing."""
import ctypes
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

INT32, FLOAT32 = 2, 1
ACT_RELU, ACT_GELU = 1, 4
RTOL, ATOL = 1e-5, 1e-6

_path = os.environ.get('TLEARN_LIBRARY')
if not _path:
    sys.exit('TLEARN_LIBRARY is not set: run this through meson test')
lib = ctypes.CDLL(_path)
lib.tlearn_errmsg.restype = ctypes.c_char_p
vp, cp, ci, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
lib.tlearn_model_set_tensor.argtypes = [vp, cp, vp, sz]
lib.tlearn_model_get_grad.argtypes = [vp, cp, vp, sz]
lib.tlearn_model_run.argtypes = [vp, vp, ci, sz, vp, vp, ci]
lib.tlearn_model_compute_gradients_inputs.argtypes = [vp, vp, ci, vp, sz, vp, vp, sz]
lib.tlearn_model_create_input.argtypes = [vp, cp, ci, ci, vp]
lib.tlearn_model_add_input.argtypes = [vp, cp, ci, ci, vp]
lib.tlearn_model_set_next_input.argtypes = [vp, cp]
lib.tlearn_model_add_embedding.argtypes = [vp, cp, ci, ci, ci]
lib.tlearn_model_add_position_embedding.argtypes = [vp, cp, ci, ci]
lib.tlearn_model_add_attention.argtypes = [vp, cp, ci, ci, cp]
lib.tlearn_model_add_token_pool.argtypes = [vp, cp, ci, cp]
lib.tlearn_model_add_patch_embed.argtypes = [vp, cp, ci, ci, ci, ci]
lib.tlearn_model_add_linear.argtypes = [vp, cp, ci, ci]
lib.tlearn_model_add_activation.argtypes = [vp, cp, ci, ctypes.c_float]
lib.tlearn_model_add_add.argtypes = [vp, cp, cp]
lib.tlearn_model_compute_gradients_tokens.argtypes = [vp, vp, ci, vp, ctypes.c_int32, sz, vp]
lib.tlearn_model_add_transformer_block.argtypes = [vp, cp, ci, ci, ci, ci, ctypes.c_float, cp]
lib.tlearn_model_set_training.argtypes = [vp, ci]
lib.tlearn_model_set_loss.argtypes = [vp, ci]
lib.tlearn_model_set_contrastive_temperature.argtypes = [vp, ctypes.c_float]
lib.tlearn_model_compute_gradients_pairs.argtypes = [vp, vp, ci, sz, vp, vp, sz]
lib.tlearn_model_destroy.argtypes = [vp]

failures = []


def ok(rc, what):
    if rc != 0:
        raise RuntimeError('%s failed (%d): %s' % (what, rc, lib.tlearn_errmsg().decode()))


def ptr(a):
    return a.ctypes.data_as(vp)


class TModel:
    """A libtlearn model with named inputs, built through the public API."""

    def __init__(self, inputs):
        self.h = vp()
        self.dtypes = []
        for k, (name, dtype, dims) in enumerate(inputs):
            d = np.array(dims, np.int32)
            if k == 0:
                ok(lib.tlearn_model_create_input(ctypes.byref(self.h), name.encode(), dtype,
                                                 len(dims), ptr(d)), 'create_input')
            else:
                ok(lib.tlearn_model_add_input(self.h, name.encode(), dtype, len(dims), ptr(d)),
                   'add_input')
            self.dtypes.append(np.int32 if dtype == INT32 else np.float32)
        ok(lib.tlearn_model_set_training(self.h, 0), 'set_training')

    def __del__(self):
        if getattr(self, 'h', None):
            lib.tlearn_model_destroy(ctypes.byref(self.h))

    def add(self, fn, *args):
        args = [a.encode() if isinstance(a, str) else a for a in args]
        ok(getattr(lib, 'tlearn_model_' + fn)(self.h, *args), fn)

    def set(self, name, t):
        a = np.ascontiguousarray(t.detach().numpy(), np.float32).ravel()
        ok(lib.tlearn_model_set_tensor(self.h, name.encode(), ptr(a), a.size), 'set ' + name)

    def grad(self, name, numel):
        a = np.empty(numel, np.float32)
        ok(lib.tlearn_model_get_grad(self.h, name.encode(), ptr(a), numel), 'grad ' + name)
        return a

    def _inputs(self, xs):
        self._keep = [np.ascontiguousarray(x, dt) for x, dt in zip(xs, self.dtypes)]
        return (vp * len(xs))(*[ptr(a) for a in self._keep])

    def run(self, xs, out_size):
        n = xs[0].shape[0]
        out = np.empty(n * out_size, np.float32)
        outs = (vp * 1)(ptr(out))
        lens = (sz * 1)(out.size)
        ok(lib.tlearn_model_run(self.h, self._inputs(xs), len(xs), n, outs, lens, 1), 'run')
        return out.reshape(n, out_size)

    def gradients(self, xs, labels, want_dx):
        n = xs[0].shape[0]
        y = np.ascontiguousarray(labels, np.int32)
        loss = ctypes.c_float()
        dx = np.empty(xs[0].size, np.float32) if want_dx else None
        ok(lib.tlearn_model_compute_gradients_inputs(
            self.h, self._inputs(xs), len(xs), ptr(y), n, ctypes.byref(loss),
            ptr(dx) if want_dx else None, dx.size if want_dx else 0), 'compute_gradients')
        return loss.value, dx


def close(name, got, want, rtol=RTOL, atol=ATOL):
    got = np.asarray(got, np.float64).ravel()
    want = np.asarray(want, np.float64).ravel()
    err = np.abs(got - want) - (atol + rtol * np.abs(want))
    if got.shape != want.shape or (err > 0).any():
        i = int(np.argmax(err)) if got.shape == want.shape else -1
        failures.append(name)
        print('FAIL %s: shape %s/%s, worst [%d] got %r want %r' % (
            name, got.shape, want.shape, i, got[i] if i >= 0 else None,
            want[i] if i >= 0 else None))
    else:
        print('ok   %s' % name)


def check(case, tm, tnet, xs, params, float_x=True, out_size=None, tol=(RTOL, ATOL)):
    """Forward, loss, input gradient (of xs[0] when float) and gradients of the named
    parameters: params maps libtlearn tensor names to torch parameters."""
    n = xs[0].shape[0]
    tx = [torch.tensor(x) for x in xs]
    if float_x:
        tx[0].requires_grad_(True)
    out = tnet(*tx).reshape(n, -1)
    labels = np.arange(n, dtype=np.int64) * 7 % out.shape[1]
    loss = F.cross_entropy(out, torch.tensor(labels))
    loss.backward()
    got = tm.run(xs, out.shape[1])
    close(case + ' forward', got, out.detach().numpy(), *tol)
    # evaluation mode (backward recomputes what forward did not keep) and training mode (no
    # dropout here: the same function)
    for mode in (0, 1):
        ok(lib.tlearn_model_set_training(tm.h, mode), 'set_training')
        what = '%s [%s]' % (case, ('eval', 'train')[mode])
        l, dx = tm.gradients(xs, labels.astype(np.int32), float_x)
        close(what + ' loss', [l], [loss.item()], *tol)
        if float_x:
            close(what + ' dx', dx, tx[0].grad.numpy(), *tol)
        for name, p in params.items():
            close(what + ' d' + name, tm.grad(name, p.numel()), p.grad.numpy(), *tol)


def masks(n, t, rng):
    m = np.zeros((n, t), np.int32)
    for e in range(n):
        m[e, :rng.integers(1, t + 1)] = 1
    m[0, :] = 1
    return m


def test_embedding(rng):
    n, t, v, d = 4, 5, 9, 6
    ids = rng.integers(0, v, (n, t)).astype(np.int32)
    ids[0, :2] = 0  # the padding row is used
    emb = nn.Embedding(v, d, padding_idx=0)
    tm = TModel([('ids', INT32, [t])])
    tm.add('add_embedding', 'emb', v, d, 0)
    tm.set('emb.weight', emb.weight)
    check('embedding', tm, lambda i: emb(i.long()), [ids], {'emb.weight': emb.weight},
          float_x=False)


def test_positions(rng):
    n, t, d, tmax = 3, 5, 4, 8
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    w = nn.Parameter(torch.randn(tmax, d))
    tm = TModel([('x', FLOAT32, [t, d])])
    tm.add('add_position_embedding', 'pos', tmax, 0)
    tm.set('pos.weight', w)
    check('position learned', tm, lambda a: a + w[:t], [x], {'pos.weight': w})


def test_attention(rng):
    for t, d, heads, causal, masked in [(5, 8, 2, 0, 0), (6, 12, 3, 1, 0), (7, 8, 4, 0, 1),
                                        (6, 8, 1, 1, 1)]:
        n = 4
        x = rng.standard_normal((n, t, d)).astype(np.float32)
        mha = nn.MultiheadAttention(d, heads, batch_first=True)
        with torch.no_grad():
            mha.in_proj_bias.uniform_(-0.5, 0.5)
            mha.out_proj.bias.uniform_(-0.5, 0.5)
        inputs = [('x', FLOAT32, [t, d])]
        xs = [x]
        if masked:
            inputs.append(('mask', INT32, [t]))
            xs.append(masks(n, t, rng))
        tm = TModel(inputs)
        tm.add('set_next_input', 'x')
        tm.add('add_attention', 'att', heads, causal, 'mask' if masked else None)
        params = {'att.in_proj_weight': mha.in_proj_weight, 'att.in_proj_bias': mha.in_proj_bias,
                  'att.out_proj.weight': mha.out_proj.weight,
                  'att.out_proj.bias': mha.out_proj.bias}
        for k, p in params.items():
            tm.set(k, p)
        cm = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if causal else None

        def net(a, m=None):
            kpm = (m == 0) if m is not None else None
            return mha(a, a, a, key_padding_mask=kpm, attn_mask=cm, need_weights=False)[0]
        check('attention t=%d d=%d heads=%d causal=%d mask=%d' % (t, d, heads, causal, masked),
              tm, net, xs, params)


def test_token_pool(rng):
    n, t, d = 5, 6, 3
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    m = masks(n, t, rng)
    tm = TModel([('x', FLOAT32, [t, d]), ('mask', INT32, [t])])
    tm.add('set_next_input', 'x')
    tm.add('add_token_pool', 'pool', 1, 'mask')

    def net(a, mk):
        f = mk.float().unsqueeze(-1)
        return (a * f).sum(1) / f.sum(1)
    check('token_pool mean mask', tm, net, [x, m], {})
    tm = TModel([('x', FLOAT32, [t, d])])
    tm.add('add_token_pool', 'pool', 0, None)
    check('token_pool first', tm, lambda a: a[:, 0], [x], {})


def test_patch_embed(rng):
    n, c, hw, p, d = 3, 3, 8, 4, 6
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    conv = nn.Conv2d(c, d, p, p)
    cls = nn.Parameter(torch.randn(1, 1, d))
    pos = nn.Parameter(torch.randn(1, (hw // p) ** 2 + 1, d))
    tm = TModel([('img', FLOAT32, [c, hw, hw])])
    tm.add('add_patch_embed', 'patch', d, p, 1, 1)
    names = {'patch.conv_proj.weight': conv.weight, 'patch.conv_proj.bias': conv.bias,
             'patch.class_token': cls, 'patch.pos_embedding': pos}
    for k, v in names.items():
        tm.set(k, v)

    def net(a):  # torchvision's VisionTransformer._process_input + class token + positions
        y = conv(a).reshape(a.shape[0], d, -1).permute(0, 2, 1)
        return torch.cat([cls.expand(a.shape[0], -1, -1), y], 1) + pos
    check('patch_embed', tm, net, [x], names)


def test_toy_encoder(rng):
    """Embedding + positions + attention (mask) + residual + feed-forward + residual +
    mean pooling over the mask + linear head, without layer norm."""
    n, t, v, d, heads, ff, classes = 5, 7, 13, 8, 2, 16, 4
    ids = rng.integers(1, v, (n, t)).astype(np.int32)
    m = masks(n, t, rng)
    ids[m == 0] = 0
    emb = nn.Embedding(v, d, padding_idx=0)
    pos = nn.Parameter(torch.randn(t, d) * 0.1)
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    l1, l2, head = nn.Linear(d, ff), nn.Linear(ff, d), nn.Linear(d, classes)
    tm = TModel([('ids', INT32, [t]), ('mask', INT32, [t])])
    tm.add('set_next_input', 'ids')
    tm.add('add_embedding', 'emb', v, d, 0)
    tm.add('add_position_embedding', 'pos', t, 0)
    tm.add('add_attention', 'att', heads, 0, 'mask')
    tm.add('add_add', 'res1', 'pos')
    tm.add('add_linear', 'l1', ff, 1)
    tm.add('add_activation', 'act', ACT_GELU, 0.0)
    tm.add('add_linear', 'l2', d, 1)
    tm.add('add_add', 'res2', 'res1')
    tm.add('add_token_pool', 'pool', 1, 'mask')
    tm.add('add_linear', 'head', classes, 1)
    params = {'emb.weight': emb.weight, 'pos.weight': pos,
              'att.in_proj_weight': mha.in_proj_weight, 'att.in_proj_bias': mha.in_proj_bias,
              'att.out_proj.weight': mha.out_proj.weight, 'att.out_proj.bias': mha.out_proj.bias,
              'l1.weight': l1.weight, 'l1.bias': l1.bias, 'l2.weight': l2.weight,
              'l2.bias': l2.bias, 'head.weight': head.weight, 'head.bias': head.bias}
    for k, p in params.items():
        tm.set(k, p)

    def net(i, mk):
        h = emb(i.long()) + pos
        h = h + mha(h, h, h, key_padding_mask=(mk == 0), need_weights=False)[0]
        h = h + l2(F.gelu(l1(h)))
        f = mk.float().unsqueeze(-1)
        return head((h * f).sum(1) / f.sum(1))
    check('toy encoder', tm, net, [ids, m], params, float_x=False, tol=(1e-5, 1e-6))


def test_masked_token_loss(rng):
    """A masked-language-model head: per-position cross-entropy with ignore_index -100."""
    n, t, v, d, heads = 4, 6, 11, 8, 2
    ids = rng.integers(1, v, (n, t)).astype(np.int32)
    m = masks(n, t, rng)
    ids[m == 0] = 0
    labels = np.full((n, t), -100, np.int32)
    pick = (rng.random((n, t)) < 0.4) & (m == 1)
    pick[0, 0] = True
    labels[pick] = rng.integers(0, v, pick.sum())
    emb = nn.Embedding(v, d, padding_idx=0)
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    out = nn.Linear(d, v)
    tm = TModel([('ids', INT32, [t]), ('mask', INT32, [t])])
    tm.add('set_next_input', 'ids')
    tm.add('add_embedding', 'emb', v, d, 0)
    tm.add('add_attention', 'att', heads, 0, 'mask')
    tm.add('add_linear', 'out', v, 1)
    params = {'emb.weight': emb.weight, 'att.in_proj_weight': mha.in_proj_weight,
              'att.in_proj_bias': mha.in_proj_bias, 'att.out_proj.weight': mha.out_proj.weight,
              'att.out_proj.bias': mha.out_proj.bias, 'out.weight': out.weight,
              'out.bias': out.bias}
    for k, p in params.items():
        tm.set(k, p)
    h = emb(torch.tensor(ids).long())
    h = mha(h, h, h, key_padding_mask=torch.tensor(m == 0), need_weights=False)[0]
    loss = F.cross_entropy(out(h).reshape(-1, v), torch.tensor(labels).long().reshape(-1),
                           ignore_index=-100)
    loss.backward()
    got = ctypes.c_float()
    y = np.ascontiguousarray(labels)
    ok(lib.tlearn_model_compute_gradients_tokens(tm.h, tm._inputs([ids, m]), 2, ptr(y), -100, n,
                                                 ctypes.byref(got)), 'gradients_tokens')
    close('token loss', [got.value], [loss.item()])
    for name, p in params.items():
        close('token loss d' + name, tm.grad(name, p.numel()), p.grad.numpy(), 1e-5, 1e-6)


def test_encoder_layer(rng):
    """torch.nn.TransformerEncoderLayer, post- and pre-norm, ReLU and GELU, with a key-padding
    mask: the block's tensors take the layer's state_dict by name."""
    n, t, d, heads, ff = 4, 6, 8, 2, 16
    for norm_first, act in ((0, 'relu'), (1, 'gelu'), (0, 'gelu'), (1, 'relu')):
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation=act,
                                           batch_first=True, norm_first=bool(norm_first))
        with torch.no_grad():  # non-trivial norms and biases
            for k, v in layer.named_parameters():
                if 'norm' in k or 'bias' in k:
                    v.add_(0.2 * torch.randn_like(v))
        x = rng.standard_normal((n, t, d)).astype(np.float32)
        m = masks(n, t, rng)
        tm = TModel([('x', FLOAT32, [t, d]), ('mask', INT32, [t])])
        tm.add('set_next_input', 'x')
        tm.add('add_transformer_block', 'enc', heads, ff, ACT_GELU if act == 'gelu' else ACT_RELU,
               norm_first, 0.0, 'mask')
        params = {'enc.' + k: v for k, v in layer.named_parameters()}
        for k, v in params.items():
            tm.set(k, v)
        check('encoder layer norm_first=%d %s' % (norm_first, act), tm,
              lambda a, mk: layer(a, src_key_padding_mask=(mk == 0)), [x, m], params,
              tol=(1e-5, 1e-6))


def test_bert_toy(rng):
    """Embedding + learned positions + 2 encoder layers + first-token pooling + linear, with
    key-padding masks."""
    n, t, v, d, heads, ff, classes = 5, 7, 17, 8, 2, 16, 3
    ids = rng.integers(1, v, (n, t)).astype(np.int32)
    m = masks(n, t, rng)
    ids[m == 0] = 0
    emb = nn.Embedding(v, d, padding_idx=0)
    pos = nn.Parameter(torch.randn(t, d) * 0.1)
    layers = [nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation='gelu',
                                         batch_first=True) for _ in range(2)]
    head = nn.Linear(d, classes)
    tm = TModel([('ids', INT32, [t]), ('mask', INT32, [t])])
    tm.add('set_next_input', 'ids')
    tm.add('add_embedding', 'emb', v, d, 0)
    tm.add('add_position_embedding', 'pos', t, 0)
    params = {'emb.weight': emb.weight, 'pos.weight': pos, 'head.weight': head.weight,
              'head.bias': head.bias}
    for i, layer in enumerate(layers):
        tm.add('add_transformer_block', 'layers.%d' % i, heads, ff, ACT_GELU, 0, 0.0, 'mask')
        params.update({'layers.%d.%s' % (i, k): p for k, p in layer.named_parameters()})
    tm.add('add_token_pool', 'pool', 0, None)
    tm.add('add_linear', 'head', classes, 1)
    for k, p in params.items():
        tm.set(k, p)

    def net(i, mk):
        h = emb(i.long()) + pos
        for layer in layers:
            h = layer(h, src_key_padding_mask=(mk == 0))
        return head(h[:, 0])
    check('bert toy', tm, net, [ids, m], params, float_x=False, tol=(1e-5, 1e-6))


def test_contrastive(rng):
    """The in-batch contrastive loss on a sentence encoder (encoder layer, mean pooling over
    the mask, linear projection): rows 0..P-1 anchors, P..2P-1 positives; torch computes it
    as sentence-transformers' MultipleNegativesRankingLoss (cos_sim * scale, cross_entropy
    with target i) and its symmetric form."""
    pairs, t, d, heads, ff, e = 5, 6, 8, 2, 16, 7
    n = 2 * pairs
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation='gelu',
                                       batch_first=True, norm_first=True)
    proj = nn.Linear(d, e)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    m = masks(n, t, rng)
    for kind, tau in ((3, 0.05), (4, 0.05), (3, 0.7), (4, 0.3)):
        tm = TModel([('x', FLOAT32, [t, d]), ('mask', INT32, [t])])
        tm.add('set_next_input', 'x')
        tm.add('add_transformer_block', 'enc', heads, ff, ACT_GELU, 1, 0.0, 'mask')
        tm.add('add_token_pool', 'pool', 1, 'mask')
        tm.add('add_linear', 'proj', e, 1)
        params = {'enc.' + k: v for k, v in layer.named_parameters()}
        params.update({'proj.weight': proj.weight, 'proj.bias': proj.bias})
        for k, v in params.items():
            tm.set(k, v)
            v.grad = None
        ok(lib.tlearn_model_set_loss(tm.h, kind), 'set_loss')
        ok(lib.tlearn_model_set_contrastive_temperature(tm.h, tau), 'set_temperature')
        tx = torch.tensor(x, requires_grad=True)
        mk = torch.tensor(m)
        h = layer(tx, src_key_padding_mask=(mk == 0))
        f = mk.float().unsqueeze(-1)
        z = proj((h * f).sum(1) / f.sum(1))
        zn = F.normalize(z, p=2, dim=1)
        scores = zn[:pairs] @ zn[pairs:].T / tau
        target = torch.arange(pairs)
        loss = F.cross_entropy(scores, target)
        if kind == 4:
            loss = (loss + F.cross_entropy(scores.T, target)) / 2
        loss.backward()
        got = ctypes.c_float()
        dx = np.empty(x.size, np.float32)
        ok(lib.tlearn_model_compute_gradients_pairs(tm.h, tm._inputs([x, m]), 2, n,
                                                    ctypes.byref(got), ptr(dx), dx.size),
           'compute_gradients_pairs')
        case = 'contrastive %s tau=%g' % (('', '', '', 'a->p', 'symmetric')[kind], tau)
        close(case + ' loss', [got.value], [loss.item()], 1e-5, 1e-6)
        close(case + ' dx', dx, tx.grad.numpy(), 1e-4, 1e-6)
        for name, p in params.items():
            close(case + ' d' + name, tm.grad(name, p.numel()), p.grad.numpy(), 1e-4, 1e-6)


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for f in (test_embedding, test_positions, test_attention, test_token_pool,
              test_patch_embed, test_toy_encoder, test_masked_token_loss, test_encoder_layer,
              test_bert_toy, test_contrastive):
        f(rng)
    if failures:
        print('%d mismatches' % len(failures))
        sys.exit(1)
    print('all transformer parity checks passed')


if __name__ == '__main__':
    main()
