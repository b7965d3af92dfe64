"""Learning-rate schedules against torch.optim.lr_scheduler (PyTorch 1.13), step for step.

Each case runs 250+ steps of a torch scheduler over a torch optimizer and of the same
schedule attached to a libtlearn optimizer (through the public C API with ctypes), and
compares the learning rate the next update uses (and, for OneCycleLR, SGD's momentum or
Adam's beta1). Exits non-zero on the first mismatch; fails, never skips, without torch."""
import ctypes
import math
import os
import sys
import warnings

import torch

warnings.filterwarnings('ignore')  # torch warns about scheduler.step() order; irrelevant here

lib = ctypes.CDLL(os.environ['TLEARN_LIBRARY'])
lib.tlearn_errmsg.restype = ctypes.c_char_p
lib.tlearn_sched_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_double]
lib.tlearn_optim_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_double]
lib.tlearn_optim_get_current.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_double)]
lib.tlearn_sched_set_milestones.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64),
                                            ctypes.c_size_t]
for f in ('tlearn_optim_set_schedule', 'tlearn_optim_schedule_step'):
    getattr(lib, f).argtypes = [ctypes.c_void_p] * (2 if f.endswith('schedule') else 1)

SGD, ADAM = 1, 2
OPT_LR, OPT_MOMENTUM, OPT_BETA1 = 1, 2, 6
(CONSTANT, STEP, MULTISTEP, EXPONENTIAL, COSINE, RESTARTS, ONE_CYCLE, STLR) = range(1, 9)
P = dict(unit=1, gamma=2, step_size=3, period=4, t_mult=5, eta_min=6, factor=7,
         total_steps=8, pct_start=9, div_factor=10, final_div_factor=11, linear_anneal=12,
         three_phase=13, cycle_momentum=14, base_momentum=15, max_momentum=16, cut_frac=17,
         ratio=18, warmup_steps=19, warmup_start_factor=20)


def ok(rc, what):
    if rc != 0:
        raise RuntimeError('%s failed (%d): %s' % (what, rc, lib.tlearn_errmsg().decode()))


def c_sequence(opt_kind, lr, kind, params, milestones, steps, momentum=0.9):
    o, s = ctypes.c_void_p(), ctypes.c_void_p()
    ok(lib.tlearn_optim_create(ctypes.byref(o), opt_kind), 'optim_create')
    ok(lib.tlearn_optim_set(o, OPT_LR, lr), 'optim_set lr')
    if opt_kind == SGD:
        ok(lib.tlearn_optim_set(o, OPT_MOMENTUM, momentum), 'optim_set momentum')
    ok(lib.tlearn_sched_create(ctypes.byref(s), kind), 'sched_create')
    for k, v in params.items():
        ok(lib.tlearn_sched_set(s, P[k], float(v)), 'sched_set %s' % k)
    if milestones:
        arr = (ctypes.c_int64 * len(milestones))(*milestones)
        ok(lib.tlearn_sched_set_milestones(s, arr, len(milestones)), 'milestones')
    ok(lib.tlearn_optim_set_schedule(o, s), 'set_schedule')
    lib.tlearn_sched_destroy(ctypes.byref(s))  # the optimizer holds its own copy
    lrs, moms = [], []
    v = ctypes.c_double()
    for _ in range(steps):
        ok(lib.tlearn_optim_get_current(o, OPT_LR, ctypes.byref(v)), 'get_current')
        lrs.append(v.value)
        ok(lib.tlearn_optim_get_current(o, OPT_MOMENTUM if opt_kind == SGD else OPT_BETA1,
                                        ctypes.byref(v)), 'get_current momentum')
        moms.append(v.value)
        ok(lib.tlearn_optim_schedule_step(o), 'schedule_step')
    lib.tlearn_optim_destroy(ctypes.byref(o))
    return lrs, moms


def torch_sequence(opt_kind, lr, make, steps, momentum=0.9):
    p = torch.nn.Parameter(torch.zeros(1))
    if opt_kind == SGD:
        opt = torch.optim.SGD([p], lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam([p], lr=lr)
    sch = make(opt)
    lrs, moms = [], []
    for _ in range(steps):
        g = opt.param_groups[0]
        lrs.append(g['lr'])
        moms.append(g['momentum'] if opt_kind == SGD else g['betas'][0])
        opt.step()
        sch.step()
    return lrs, moms


def warm(make_inner, w, start):
    S = torch.optim.lr_scheduler
    return lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=start, total_iters=w),
                                        make_inner(o)], milestones=[w])


def stlr(T, cut_frac, ratio):
    """Howard & Ruder 2018, eq. 3, as a multiplier of the peak rate."""
    cut = math.floor(T * cut_frac)

    def f(t):
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
        return (1 + p * (ratio - 1)) / ratio
    return f


S = torch.optim.lr_scheduler
N = 250
CASES = [
    ('constant', SGD, 0.1, CONSTANT, dict(factor=0.5, total_steps=40), None,
     lambda o: S.ConstantLR(o, factor=0.5, total_iters=40)),
    ('step', SGD, 0.1, STEP, dict(step_size=30, gamma=0.5), None,
     lambda o: S.StepLR(o, step_size=30, gamma=0.5)),
    ('multistep', ADAM, 0.003, MULTISTEP, dict(gamma=0.3), [20, 75, 150],
     lambda o: S.MultiStepLR(o, milestones=[20, 75, 150], gamma=0.3)),
    ('exponential', SGD, 0.1, EXPONENTIAL, dict(gamma=0.98), None,
     lambda o: S.ExponentialLR(o, gamma=0.98)),
    ('cosine past T_max', SGD, 0.1, COSINE, dict(period=100, eta_min=1e-4), None,
     lambda o: S.CosineAnnealingLR(o, T_max=100, eta_min=1e-4)),
    ('cosine', ADAM, 0.001, COSINE, dict(period=N), None,
     lambda o: S.CosineAnnealingLR(o, T_max=N)),
    ('cosine restarts T_mult=2', SGD, 0.1, RESTARTS, dict(period=10, t_mult=2, eta_min=1e-5),
     None, lambda o: S.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-5)),
    ('cosine restarts T_mult=1', SGD, 0.05, RESTARTS, dict(period=37), None,
     lambda o: S.CosineAnnealingWarmRestarts(o, T_0=37)),
    ('one-cycle SGD', SGD, 0.1, ONE_CYCLE, dict(total_steps=N), None,
     lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=N)),
    ('one-cycle Adam three-phase linear', ADAM, 0.01, ONE_CYCLE,
     dict(total_steps=300, three_phase=1, linear_anneal=1, pct_start=0.25, div_factor=10,
          final_div_factor=100, base_momentum=0.8, max_momentum=0.9), None,
     lambda o: S.OneCycleLR(o, max_lr=0.01, total_steps=300, three_phase=True,
                            anneal_strategy='linear', pct_start=0.25, div_factor=10.0,
                            final_div_factor=100.0, base_momentum=0.8, max_momentum=0.9)),
    ('one-cycle no momentum cycling', SGD, 0.2, ONE_CYCLE,
     dict(total_steps=260, cycle_momentum=0, pct_start=0.4), None,
     lambda o: S.OneCycleLR(o, max_lr=0.2, total_steps=260, cycle_momentum=False,
                            pct_start=0.4)),
    ('slanted triangular', SGD, 0.01, STLR, dict(total_steps=N, cut_frac=0.1, ratio=32), None,
     lambda o: S.LambdaLR(o, stlr(N, 0.1, 32))),
    ('slanted triangular 2', ADAM, 0.004, STLR, dict(total_steps=300, cut_frac=0.3, ratio=10),
     None, lambda o: S.LambdaLR(o, stlr(300, 0.3, 10))),
    ('warm-up + cosine', SGD, 0.1, COSINE, dict(period=N - 20, warmup_steps=20), None,
     warm(lambda o: S.CosineAnnealingLR(o, T_max=N - 20), 20, 0.1)),
    ('warm-up + step', ADAM, 0.002, STEP,
     dict(step_size=25, gamma=0.7, warmup_steps=15, warmup_start_factor=0.25), None,
     warm(lambda o: S.StepLR(o, step_size=25, gamma=0.7), 15, 0.25)),
    ('warm-up + multistep', SGD, 0.1, MULTISTEP, dict(gamma=0.5, warmup_steps=10),
     [30, 100], warm(lambda o: S.MultiStepLR(o, milestones=[30, 100], gamma=0.5), 10, 0.1)),
    ('warm-up + exponential', SGD, 0.1, EXPONENTIAL,
     dict(gamma=0.99, warmup_steps=50, warmup_start_factor=0.01), None,
     warm(lambda o: S.ExponentialLR(o, gamma=0.99), 50, 0.01)),
    ('warm-up + restarts', SGD, 0.1, RESTARTS, dict(period=20, t_mult=3, warmup_steps=5),
     None, warm(lambda o: S.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=3), 5, 0.1)),
    ('warm-up + constant', SGD, 0.1, CONSTANT,
     dict(factor=0.3, total_steps=12, warmup_steps=8), None,
     warm(lambda o: S.ConstantLR(o, factor=0.3, total_iters=12), 8, 0.1)),
]


def main():
    failed = 0
    for name, opt, lr, kind, params, miles, make in CASES:
        steps = int(params.get('total_steps', N)) + int(params.get('warmup_steps', 0))
        steps = max(steps, N) if kind not in (ONE_CYCLE, STLR) else steps
        got_lr, got_m = c_sequence(opt, lr, kind, params, miles, steps)
        want_lr, want_m = torch_sequence(opt, lr, make, steps)
        worst = 0.0
        for t in range(steps):
            for what, g, w in (('lr', got_lr[t], want_lr[t]), ('momentum', got_m[t], want_m[t])):
                err = abs(g - w)
                worst = max(worst, err / max(abs(w), 1e-300))
                if not err <= 1e-12 + 1e-9 * abs(w):
                    print('FAIL %s: step %d %s is %.17g, torch %.17g' % (name, t, what, g, w))
                    failed += 1
                    break
            else:
                continue
            break
        print('%-36s %4d steps, worst relative difference %.2g' % (name, steps, worst))
    if failed:
        sys.exit('%d schedule(s) differ from torch' % failed)
    print('all %d schedules match torch' % len(CASES))


main()
