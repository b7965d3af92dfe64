"""PyTorch parity of domain adaptation through the public C API (the ctypes binding of
examples/python/tlearn): CORAL and multi-kernel MMD (value and gradient w.r.t. the
features, against torch formulas written here), one multi-output step with gradient
reversal, -1 labels, weights and discrepancy terms (every weight after an SGD step),
AdaBN against torch's momentum=None re-estimation, TENT steps and reset.
Fails (never skips) when torch is missing."""
import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("FAIL: torch is required for tests/domain/parity_domain.py")
import tlearn

torch.set_default_dtype(torch.float64)
failures = []


def close(what, got, want, rtol=1e-5, atol=1e-6):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got - want)) if got.shape == want.shape else "shape"
        failures.append("%s: max abs error %s" % (what, err))
        print("FAIL", what, err)
    else:
        print("ok  ", what)


# ---- the formulas, in torch ----
def coral_ref(z, t):
    zs, zt = z[t == 0], z[t == 1]
    d = z.shape[1]

    def cov(x):
        xc = x - x.mean(0, keepdim=True)
        return xc.t() @ xc / (x.shape[0] - 1)
    return ((cov(zs) - cov(zt)) ** 2).sum() / (4 * d * d)


def mmd_ref(z, t, mult=(0.25, 0.5, 1.0, 2.0, 4.0)):
    n = z.shape[0]
    dist = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    mean = dist.detach().sum() / (n * n - n)  # bandwidth detached, as DAN's code
    k = sum(torch.exp(-dist / (m * mean)) for m in mult)
    ns, nt = int((t == 0).sum()), int((t == 1).sum())
    c = torch.where(torch.as_tensor(t == 1), -1.0 / nt, 1.0 / ns)
    return (c[:, None] * c[None, :] * k).sum()


def grad_of(fn, z, *a):
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    v = fn(zt, *a)
    v.backward()
    return v.item(), zt.grad.numpy()


rng = np.random.default_rng(7)
for n, d in ((10, 5), (7, 13)):
    z = rng.standard_normal((n, d)).astype(np.float32)
    t = np.zeros(n, np.uint8)
    t[::2] = 1
    z[t == 1] = z[t == 1] * 1.5 + 0.4  # a shift
    for kind, fn in (("coral", coral_ref), ("mmd", mmd_ref)):
        v, g = tlearn.discrepancy(kind, z, t)
        rv, rg = grad_of(fn, z.astype(np.float64), t)
        close("%s value n=%d d=%d" % (kind, n, d), v, rv)
        close("%s grad n=%d d=%d" % (kind, n, d), g, rg)
    mult = (0.5, 3.0)
    v, g = tlearn.discrepancy("mmd", z, t, mult)
    rv, rg = grad_of(lambda x, tt: mmd_ref(x, tt, mult), z.astype(np.float64), t)
    close("mmd multipliers (0.5, 3) value", v, rv)
    close("mmd multipliers (0.5, 3) grad", g, rg)


# ---- one multi-output step: class head, GRL + domain head, CORAL and MMD terms ----
class GRL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.lam * g, None


def build_multi(lam):
    m = tlearn.Model.with_input("x", (6,))
    m.add_linear("feat", 5).add_relu("r").add_dense("cls", 3)
    m.set_next_input("r")
    m.add_grad_reverse("grl", lam).add_dense("dom1", 4).add_relu("dr").add_dense("dom", 2)
    m.set_outputs(["cls", "dom"])
    return m


n = 8
x = rng.standard_normal((n, 6)).astype(np.float32)
is_t = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.uint8)
x[is_t == 1] += 0.5
labels = np.array([0, 2, 1, 2, -1, -1, -1, -1], np.int32)
domain = is_t.astype(np.int32)
lam, wd, wc, wm, lr = 0.6, 0.7, 0.5, 0.3, 0.1
m = build_multi(lam)
m.set_output_loss(0, "softmax_ce", 1.0).set_output_loss(1, "softmax_ce", wd)
m.set_discrepancy("r", "coral", wc).set_discrepancy("feat", "mmd", wm)
names = ["feat.weight", "feat.bias", "cls.weight", "cls.bias", "dom1.weight", "dom1.bias",
         "dom.weight", "dom.bias"]
P = {k: torch.tensor(m.get_tensor(k).astype(np.float64), requires_grad=True) for k in names}
opt = tlearn.Optimizer("sgd", lr=lr)
loss = m.train_step_multi(opt, [x], [labels, domain])  # is_target from the -1 labels

xt = torch.tensor(x, dtype=torch.float64)
feat = xt @ P["feat.weight"].t() + P["feat.bias"]
r = torch.relu(feat)
cls = r @ P["cls.weight"].t() + P["cls.bias"]
h = torch.relu(GRL.apply(r, lam) @ P["dom1.weight"].t() + P["dom1.bias"])
dom = h @ P["dom.weight"].t() + P["dom.bias"]
ref = (F.cross_entropy(cls, torch.tensor(labels, dtype=torch.long), ignore_index=-1)
       + wd * F.cross_entropy(dom, torch.tensor(domain, dtype=torch.long))
       + wc * coral_ref(r, is_t) + wm * mmd_ref(feat, is_t))
ref.backward()
close("multi step loss", loss, ref.item())
for k in names:
    close("multi step %s after SGD" % k, m.get_tensor(k), (P[k] - lr * P[k].grad).detach().numpy())

# the same step with an explicit mask and lambda changed by the public call
m2 = build_multi(0.0)
for k in names:
    m2.set_tensor(k, P[k].detach().numpy().astype(np.float32))
m2.set_grad_reverse_lambda(lam)
m2.set_output_loss(0, "softmax_ce", 1.0).set_output_loss(1, "softmax_ce", wd)
m2.set_discrepancy("r", "coral", wc).set_discrepancy("feat", "mmd", wm)
loss2 = m2.train_step_multi(tlearn.Optimizer("sgd", lr=lr), [x], [labels, domain], is_t)
close("multi step, explicit is_target and set lambda", loss2, ref.item())
close("dann_lambda(0.3)", tlearn.dann_lambda(0.3), 2 / (1 + np.exp(-3.0)) - 1)


# ---- AdaBN and TENT on a small convnet ----
def build_cnn():
    m = tlearn.Model(3, 6, 6)
    m.add_conv2d("c1", 4, 3, pad=1).add_batchnorm("bn1", momentum=0.1).add_relu("r1")
    m.add_conv2d("c2", 5, 3, pad=1).add_batchnorm("bn2").add_relu("r2")
    m.add_global_avgpool("gap").add_dense("fc", 4)
    return m


def torch_cnn(m):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 4))
    sd = {}
    for i, name in ((0, "c1"), (3, "c2"), (8, "fc")):
        sd["%d.weight" % i] = m.get_tensor(name + ".weight")
        sd["%d.bias" % i] = m.get_tensor(name + ".bias")
    for i, name in ((1, "bn1"), (4, "bn2")):
        for p in ("weight", "bias", "running_mean", "running_var"):
            sd["%d.%s" % (i, p)] = m.get_tensor(name + "." + p)
    sd = {k: torch.tensor(v.astype(np.float64)) for k, v in sd.items()}
    sd["1.num_batches_tracked"] = torch.tensor(0)
    sd["4.num_batches_tracked"] = torch.tensor(0)
    net.load_state_dict(sd)
    return net


xt_np = (rng.standard_normal((50, 3, 6, 6)) * 2.0 + 1.0).astype(np.float32)
m = build_cnn()
net = torch_cnn(m)
m.adapt_bn(xt_np, batch=16)
for bn in (net[1], net[4]):
    bn.reset_running_stats()
    bn.momentum = None
net.train()
with torch.no_grad():
    for s in range(0, 50, 16):
        net(torch.tensor(xt_np[s:s + 16], dtype=torch.float64))
for i, name in ((1, "bn1"), (4, "bn2")):
    close("adabn %s.running_mean" % name, m.get_tensor(name + ".running_mean"),
          net[i].running_mean.numpy())
    close("adabn %s.running_var" % name, m.get_tensor(name + ".running_var"),
          net[i].running_var.numpy())

m = build_cnn()
before = {k: m.get_tensor(k) for k in m.tensor_names()}
net = torch_cnn(m)
net.train()
for p in net.parameters():
    p.requires_grad_(False)
bnp = [net[1].weight, net[1].bias, net[4].weight, net[4].bias]
for p in bnp:
    p.requires_grad_(True)
topt = torch.optim.SGD(bnp, lr=0.05, momentum=0.9)
opt = tlearn.Optimizer("sgd", lr=0.05, momentum=0.9)
for step in range(3):
    xb = xt_np[step * 16:(step + 1) * 16]
    h = m.tent_step(opt, xb)
    z = net(torch.tensor(xb, dtype=torch.float64))
    ent = -(z.softmax(1) * z.log_softmax(1)).sum(1).mean()
    topt.zero_grad()
    ent.backward()
    topt.step()
    close("tent step %d entropy" % step, h, ent.item())
for i, name in ((1, "bn1"), (4, "bn2")):
    for p in ("weight", "bias", "running_mean", "running_var"):
        close("tent %s.%s" % (name, p), m.get_tensor(name + "." + p),
              getattr(net[i], p).detach().numpy())
for k in ("c1.weight", "c2.bias", "fc.weight"):
    close("tent leaves %s" % k, m.get_tensor(k), before[k], rtol=0, atol=0)
m.tent_reset()
for k, v in before.items():
    close("tent_reset restores %s" % k, m.get_tensor(k), v, rtol=0, atol=0)

if failures:
    print("%d failures" % len(failures))
    sys.exit(1)
print("all domain parity checks passed")
