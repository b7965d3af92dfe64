"""Transferability scores and the prototype head through the public C API (ctypes), against
NumPy implementations written here from the papers' formulas, and the prototype head's
forward and gradients against PyTorch:

  LogME   You et al. 2021 (Algorithm 1): for each class's one-hot column y, maximise the
          evidence of y = F w + noise(1/beta), w ~ N(0, 1/alpha) by the fixed point
          gamma = sum beta s_i^2 / (alpha + beta s_i^2), alpha = gamma / m'm,
          beta = (n - gamma) / ||F m - y||^2 with m = beta A^-1 F'y, A = alpha I + beta F'F,
          stopped when alpha and beta move < 1e-3 (relative) or after 11 updates;
          the score is the evidence / n, averaged over classes.
  LEEP    Nguyen et al. 2020 eq. (1)-(2).
  H-score Bao et al. 2019: tr(pinv(cov(f)) cov(E[f|y])).

Exits non-zero on any mismatch; fails (never skips) without numpy or torch.
"""
import ctypes
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

lib = ctypes.CDLL(os.environ['TLEARN_LIBRARY'])
lib.tlearn_errmsg.restype = ctypes.c_char_p
c_p = ctypes.c_void_p
lib.tlearn_transferability_features.argtypes = [c_p, ctypes.c_size_t, ctypes.c_int, c_p,
                                                ctypes.c_int, ctypes.c_int, c_p]
lib.tlearn_transferability.argtypes = [c_p, ctypes.c_char_p, c_p, c_p, ctypes.c_size_t,
                                       ctypes.c_int, ctypes.c_int, c_p]
lib.tlearn_model_add_prototype.argtypes = [c_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_float,
                                           ctypes.c_int]
lib.tlearn_model_add_dense.argtypes = [c_p, ctypes.c_char_p, ctypes.c_int]
lib.tlearn_model_add_activation.argtypes = [c_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_float]
for f in ('tlearn_model_set_tensor', 'tlearn_model_get_tensor', 'tlearn_model_get_grad'):
    getattr(lib, f).argtypes = [c_p, ctypes.c_char_p, c_p, ctypes.c_size_t]
lib.tlearn_model_predict.argtypes = [c_p, c_p, ctypes.c_size_t, c_p, ctypes.c_size_t]
lib.tlearn_model_features.argtypes = [c_p, ctypes.c_char_p, c_p, ctypes.c_size_t, c_p,
                                      ctypes.c_size_t]
lib.tlearn_model_compute_gradients.argtypes = [c_p, c_p, c_p, ctypes.c_size_t, c_p, c_p,
                                               ctypes.c_size_t]
LOGME, LEEP, HSCORE = 1, 2, 3
failures = []


def ok(rc, what):
    if rc != 0:
        raise RuntimeError('%s failed (%d): %s' % (what, rc, lib.tlearn_errmsg().decode()))


def p(a):
    return a.ctypes.data_as(c_p)


def check(name, got, want, rtol, atol=0.0):
    good = abs(got - want) <= atol + rtol * abs(want)
    print('%-40s tlearn %.10g numpy %.10g %s' % (name, got, want, 'ok' if good else 'MISMATCH'))
    if not good:
        failures.append(name)


# ---- references from the papers ----

def logme_ref(f, y, classes):
    f = f.astype(np.float64)
    n, d = f.shape
    u, s, vt = np.linalg.svd(f, full_matrices=False)
    sig = s * s  # eigenvalues of F'F
    scores = []
    for c in range(classes):
        yc = (y == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        ut_y = u.T @ yc
        for _ in range(11):  # stop rule: both move < 1e-3 relative, at most 11 updates
            # m = beta A^-1 F'y written with the SVD; same formulas as the paper's Algorithm 1
            gamma = np.sum(beta * sig / (alpha + beta * sig))
            m = vt.T @ (beta * s * ut_y / (alpha + beta * sig))
            mm = m @ m
            res = np.sum((f @ m - yc) ** 2)
            na, nb = gamma / mm, (n - gamma) / res
            done = abs(na - alpha) <= 1e-3 * alpha and abs(nb - beta) <= 1e-3 * beta
            alpha, beta = na, nb
            if done:
                break
        m = vt.T @ (beta * s * ut_y / (alpha + beta * sig))
        A = alpha * np.eye(d) + beta * f.T @ f
        ev = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
              - beta / 2 * np.sum((f @ m - yc) ** 2) - alpha / 2 * (m @ m)
              - 0.5 * np.linalg.slogdet(A)[1])
        scores.append(ev / n)
    return float(np.mean(scores))


def leep_ref(logits, y, classes):
    z = logits.astype(np.float64)
    theta = np.exp(z - z.max(1, keepdims=True))
    theta /= theta.sum(1, keepdims=True)
    n = len(y)
    joint = np.zeros((classes, z.shape[1]))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    cond = joint / joint.sum(0, keepdims=True)  # P(y | z)
    return float(np.mean([np.log(theta[i] @ cond[y[i]]) for i in range(n)]))


def hscore_ref(f, y, classes):
    f = f.astype(np.float64)
    cov_f = np.cov(f, rowvar=False, bias=True)
    g = np.zeros_like(f)
    for c in range(classes):
        g[y == c] = f[y == c].mean(0)
    cov_g = np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def lib_score(f, y, classes, metric):
    f = np.ascontiguousarray(f, np.float32)
    y = np.ascontiguousarray(y, np.int32)
    out = ctypes.c_double()
    ok(lib.tlearn_transferability_features(p(f), f.shape[0], f.shape[1], p(y), classes, metric,
                                           ctypes.byref(out)), 'transferability_features')
    return out.value


rng = np.random.default_rng(0)
for n, d, classes in [(120, 16, 4), (40, 64, 5), (300, 30, 10)]:
    y = np.arange(n) % classes
    rng.shuffle(y)
    means = rng.normal(size=(classes, d))
    f = (means[y] * 0.8 + rng.normal(size=(n, d))).astype(np.float32)
    f[:, 0] = np.abs(f[:, 0])  # not centred
    tag = 'n=%d d=%d c=%d' % (n, d, classes)
    check('LogME ' + tag, lib_score(f, y, classes, LOGME), logme_ref(f, y, classes), 1e-5, 1e-7)
    check('H-score ' + tag, lib_score(f, y, classes, HSCORE), hscore_ref(f, y, classes), 1e-5,
          1e-7)
    logits = (rng.normal(size=(n, 7)) * 2 + (y[:, None] % 7 == np.arange(7)) * 1.5)
    check('LEEP ' + tag, lib_score(logits, y, classes, LEEP), leep_ref(logits, y, classes), 1e-6,
          1e-9)
    if n - 1 <= d:  # the documented saturation of the H-score
        check('H-score saturates ' + tag, lib_score(f, y, classes, HSCORE), classes - 1, 1e-6)

# A better feature set scores higher (ordering the metrics are for).
n, d, classes = 200, 20, 5
y = np.arange(n) % classes
means = rng.normal(size=(classes, d))
noise = rng.normal(size=(n, d))
good = (means[y] * 2 + noise).astype(np.float32)
bad = (means[y] * 0.2 + noise).astype(np.float32)
for name, metric in (('LogME', LOGME), ('H-score', HSCORE)):
    sg, sb = lib_score(good, y, classes, metric), lib_score(bad, y, classes, metric)
    print('%s separable %.4f > noisy %.4f' % (name, sg, sb))
    if not sg > sb:
        failures.append(name + ' order')

# ---- through a model: features of a named layer ----
m = c_p()
ok(lib.tlearn_model_create(ctypes.byref(m), 12, 1, 1), 'create')
ok(lib.tlearn_model_add_dense(m, b'fc', 9), 'dense')
ok(lib.tlearn_model_add_activation(m, b'act', 2, 0.0), 'tanh')
ok(lib.tlearn_model_add_dense(m, b'src_head', 6), 'head')
n, classes = 90, 3
x = rng.normal(size=(n, 12)).astype(np.float32)
y = (np.arange(n) % classes).astype(np.int32)
x[np.arange(n), y] += 2
feat = np.zeros((n, 9), np.float32)
ok(lib.tlearn_model_features(m, b'act', p(x), n, p(feat), feat.size), 'features')
logits = np.zeros((n, 6), np.float32)
ok(lib.tlearn_model_predict(m, p(x), n, p(logits), logits.size), 'predict')
for layer, metric, ref in ((b'act', LOGME, logme_ref(feat, y, classes)),
                           (b'act', HSCORE, hscore_ref(feat, y, classes)),
                           (b'src_head', LEEP, leep_ref(logits, y, classes))):
    out = ctypes.c_double()
    ok(lib.tlearn_transferability(m, layer, p(x), p(y), n, classes, metric, ctypes.byref(out)),
       'transferability')
    check('model %s metric %d' % (layer.decode(), metric), out.value, ref, 1e-5, 1e-7)
lib.tlearn_model_destroy(ctypes.byref(m))

# ---- prototype head: forward, input and temperature gradients against PyTorch ----
n, d, classes, t0 = 7, 10, 4, 3.5
m = c_p()
ok(lib.tlearn_model_create(ctypes.byref(m), d, 1, 1), 'create')
ok(lib.tlearn_model_add_prototype(m, b'proto', classes, t0, 1), 'prototype')
protos = rng.normal(size=(classes, d)).astype(np.float32)
ok(lib.tlearn_model_set_tensor(m, b'proto.prototypes', p(protos), protos.size), 'set')
x = rng.normal(size=(n, d)).astype(np.float32)
y = (np.arange(n) % classes).astype(np.int32)
out = np.zeros((n, classes), np.float32)
ok(lib.tlearn_model_predict(m, p(x), n, p(out), out.size), 'predict')
dx = np.zeros_like(x)
loss = ctypes.c_float()
ok(lib.tlearn_model_compute_gradients(m, p(x), p(y), n, ctypes.byref(loss), p(dx), dx.size),
   'gradients')
dt = np.zeros(1, np.float32)
ok(lib.tlearn_model_get_grad(m, b'proto.temperature', p(dt), 1), 'grad')
xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
tt = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
logit = tt * F.normalize(xt, dim=1) @ F.normalize(torch.tensor(protos, dtype=torch.float64),
                                                  dim=1).T
tl = F.cross_entropy(logit, torch.tensor(y, dtype=torch.long))
tl.backward()
for name, got, want in (('prototype forward', out, logit.detach().numpy()),
                        ('prototype dx', dx, xt.grad.numpy()),
                        ('prototype dtemperature', dt, tt.grad.numpy().reshape(1))):
    err = np.max(np.abs(got - want) - (1e-6 + 1e-5 * np.abs(want)))
    print('%-40s max excess error %.3g %s' % (name, err, 'ok' if err <= 0 else 'MISMATCH'))
    if err > 0:
        failures.append(name)
check('prototype loss', loss.value, tl.item(), 1e-5, 1e-6)
lib.tlearn_model_destroy(ctypes.byref(m))

if failures:
    print('FAILED:', ', '.join(failures))
    sys.exit(1)
print('all transferability and prototype checks passed')
