"""harness.optim trajectories against torch.optim and the paper's equations, in float64."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from harness.optim import (
    SGD,
    SGDW,
    Adam,
    AdamW,
    WeightDecayScheduler,
    adam_step,
    l2_penalty,
    param_groups,
    sgd_step,
)

STEPS = 120
RTOL = 1e-10


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    """Conv weights, biases, BatchNorm and LayerNorm, a bias-free conv.

    No bias feeds a norm layer directly: such a bias has a zero gradient up to rounding, which
    Adam normalizes to O(1) steps, so any reordering of the arithmetic shows there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(torch.relu(self.conv(x)))
        h = torch.relu(self.conv2(h)).flatten(1)
        return self.head(torch.tanh(self.ln(self.fc(h))))


def make_pair(seed: int = 0) -> tuple[Net, Net]:
    torch.manual_seed(seed)
    a = Net().double()
    return a, copy.deepcopy(a)


def batches(n: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (8,), generator=g),
        )
        for _ in range(n)
    ]


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def train(model, opt, data, scheds=(), extra_loss=None) -> None:
    for x, y in data:
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        opt.step()
        for s in scheds:
            s.step()


def rel_err(a: nn.Module, b: nn.Module) -> float:
    """Largest per-tensor relative error ||p - q|| / ||q||."""
    return max(
        ((p - q).norm() / q.norm().clamp_min(1e-300)).item()
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def groups_of(model: nn.Module, wd: float) -> list[dict]:
    return param_groups(model, wd, rule="timm")[0]


def cosine(total: int):
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * t / total))


# -- equal to torch.optim ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "momentum,dampening,nesterov",
    [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.3, False), (0.9, 0.0, True)],
)
def test_sgd_l2_equals_torch_sgd(momentum, dampening, nesterov):
    a, b = make_pair()
    kw = dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov)
    oa = SGD(groups_of(a, 1e-2), decay="l2", **kw)
    ob = torch.optim.SGD(groups_of(b, 1e-2), foreach=True, **kw)
    data = batches()
    train(a, oa, data, [torch.optim.lr_scheduler.CosineAnnealingLR(oa, STEPS)])
    train(b, ob, data, [torch.optim.lr_scheduler.CosineAnnealingLR(ob, STEPS)])
    assert rel_err(a, b) <= RTOL


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decay", ["l2", "decoupled"])
def test_adam_equals_torch_adam_and_adamw(decay, amsgrad):
    a, b = make_pair()
    kw = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, amsgrad=amsgrad)
    wd = 1e-2 if decay == "l2" else 0.1
    ref = torch.optim.Adam if decay == "l2" else torch.optim.AdamW
    oa = Adam(groups_of(a, wd), decay=decay, **kw)
    ob = ref(groups_of(b, wd), foreach=True, **kw)
    data = batches()
    train(a, oa, data, [torch.optim.lr_scheduler.CosineAnnealingLR(oa, STEPS)])
    train(b, ob, data, [torch.optim.lr_scheduler.CosineAnnealingLR(ob, STEPS)])
    assert rel_err(a, b) <= RTOL


@pytest.mark.parametrize(
    "ours, ref, kw",
    [
        (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
        (Adam, torch.optim.Adam, dict(lr=3e-3, weight_decay=1e-2, amsgrad=True)),
        (AdamW, torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.1)),
    ],
)
def test_float32_is_bit_identical_to_torch_foreach(ours, ref, kw):
    """float32 params: the same op sequence as torch.optim's foreach path, every bit equal.

    Exact on any CPU: both run the same elementwise ATen kernels in the same order on one
    machine, so however that CPU's kernels round (vector width, FMA), they round both alike."""
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 3, 3), (64,), (3000,), (10, 64)]
    init = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(20)]
    pa = [nn.Parameter(t.clone()) for t in init]
    pb = [nn.Parameter(t.clone()) for t in init]
    oa, ob = ours(pa, **kw), ref(pb, foreach=True, **kw)
    for gs in grads:
        for p, q, gg in zip(pa, pb, gs):
            p.grad, q.grad = gg.clone(), gg.clone()
        oa.step()
        ob.step()
    for p, q in zip(pa, pb):
        assert p.dtype == torch.float32 and torch.equal(p, q)


def test_aliases_default_to_decoupled():
    a, b = make_pair()
    data = batches(40)
    oa = AdamW(a.parameters(), lr=3e-3, weight_decay=0.1)
    assert oa.defaults["decay"] == "decoupled" and isinstance(oa, torch.optim.Optimizer)
    train(a, oa, data)
    train(b, torch.optim.AdamW(b.parameters(), lr=3e-3, weight_decay=0.1, foreach=True), data)
    assert rel_err(a, b) <= RTOL
    assert SGDW([nn.Parameter(torch.zeros(1))], lr=0.1).defaults["decay"] == "decoupled"


def test_params_without_grad_are_skipped_like_torch():
    """Some params get no grad on odd steps, one only from step 10 on (slow path)."""

    class Branchy(Net):
        def forward(self, x, t):
            h = self.bn(torch.relu(self.conv(x)))
            if t % 2 == 0:
                h = torch.relu(self.conv2(h))
            out = self.head(torch.tanh(self.ln(self.fc(h.flatten(1)))))
            return out + self.late.sum() if t >= 10 else out

    torch.manual_seed(0)
    a = Branchy().double()
    a.late = nn.Parameter(torch.randn(3, dtype=torch.float64))
    data = batches(40)
    for make_ours, make_ref in [
        (
            lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, foreach=True),
        ),
        (
            lambda p: Adam(p, lr=3e-3, weight_decay=1e-2, amsgrad=True),
            lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-2, amsgrad=True, foreach=True),
        ),
    ]:
        m1, m2 = copy.deepcopy(a), copy.deepcopy(a)
        o1, o2 = make_ours(groups_of(m1, 1e-2)), make_ref(groups_of(m2, 1e-2))
        for t, (x, y) in enumerate(data):
            for m, o in ((m1, o1), (m2, o2)):
                o.zero_grad()
                nn.functional.cross_entropy(m(x, t), y).backward()
                o.step()
        assert rel_err(m1, m2) <= RTOL
        # state only for params that had a grad, with the same keys
        s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
        assert s1.keys() == s2.keys() and all(s1[k].keys() == s2[k].keys() for k in s1)


def test_add_param_group_mid_training_and_mixed_dtypes():
    """A group added after 10 steps; float32 and float64 params in one group."""
    g = torch.Generator().manual_seed(0)
    init = [
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float32),
        torch.randn(2, 2, generator=g, dtype=torch.float64),
    ]
    grads = [[torch.randn_like(t) for t in init] for _ in range(30)]
    for ours, ref in [
        (
            lambda p, **k: Adam(p, lr=1e-2, weight_decay=0.1, decay="decoupled", **k),
            lambda p, **k: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=True, **k),
        ),
        (
            lambda p, **k: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1, **k),
            lambda p, **k: torch.optim.SGD(
                p, lr=0.1, momentum=0.9, weight_decay=0.1, foreach=True, **k
            ),
        ),
    ]:
        pa = [nn.Parameter(t.clone()) for t in init]
        pb = [nn.Parameter(t.clone()) for t in init]
        oa, ob = ours(pa[:2]), ref(pb[:2])
        for k, gs in enumerate(grads):
            if k == 10:
                oa.add_param_group({"params": [pa[2]], "lr": 0.05})
                ob.add_param_group({"params": [pb[2]], "lr": 0.05})
            for p, q, gg in zip(pa, pb, gs):
                p.grad, q.grad = gg.clone(), gg.clone()
            oa.step()
            ob.step()
        # the update rules are elementwise (no reduction whose order a CPU's vector width could
        # change): the two optimizers differ by where each rounds, a few unit roundoffs a step
        # (float32 6e-8, float64 1.1e-16) over 30 steps whose updates do not amplify them
        for p, q in zip(pa, pb):
            assert p.dtype == q.dtype
            assert torch.allclose(p, q, rtol=1e-6 if p.dtype == torch.float32 else 1e-12)


# -- the paper's equations ------------------------------------------------------------------


def reference_independent(model, data, family, lr0, wd, eta_of, lr_in_momentum=False):
    """Loshchilov & Hutter, Algorithm 1 (SGDW, momentum 0.9) and 2 (AdamW), plain per-tensor
    math with ``eta_t = eta_of(t - 1)`` (the LambdaLR multiplier in force at step t).

    Alg. 1 puts ``eta_t * alpha`` inside the momentum (``lr_in_momentum=True``); our SGD keeps
    torch.optim.SGD's convention ``buf = 0.9 buf + g; w -= eta_t alpha buf``. The two agree for a
    constant schedule; under a schedule we compare with the torch-convention reference.
    """
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, (x, y) in enumerate(data, start=1):
        for p in params:
            p.grad = None
        loss_fn(model, x, y).backward()
        eta = eta_of(t - 1)
        with torch.no_grad():
            for i, p in enumerate(params):
                g = p.grad
                if family == "sgd" and lr_in_momentum:
                    m[i] = 0.9 * m[i] + eta * lr0 * g  # m_t = beta1 m_{t-1} + eta_t alpha g_t
                    p.copy_(p - m[i] - eta * wd * p)  # x_t = x_{t-1} - m_t - eta_t lam x_{t-1}
                elif family == "sgd":
                    m[i] = g.clone() if t == 1 else 0.9 * m[i] + g
                    p.copy_(p - eta * lr0 * m[i] - eta * wd * p)
                else:
                    b1, b2, eps = 0.9, 0.999, 1e-8
                    m[i] = b1 * m[i] + (1 - b1) * g
                    v[i] = b2 * v[i] + (1 - b2) * g * g
                    mhat = m[i] / (1 - b1**t)
                    vhat = v[i] / (1 - b2**t)
                    # x_t = x_{t-1} - eta_t (alpha mhat / (sqrt(vhat) + eps) + lam x_{t-1})
                    p.copy_(p - eta * (lr0 * mhat / (vhat.sqrt() + eps) + wd * p))


def make_independent(family, params, lr0, wd, decay="independent"):
    if family == "sgd":
        return SGD(params, lr=lr0, momentum=0.9, weight_decay=wd, decay=decay)
    return Adam(params, lr=lr0, weight_decay=wd, decay=decay)


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_independent_equals_paper_equations_under_cosine_lambdalr(family):
    a, b = make_pair()
    lr0, wd = (0.05 if family == "sgd" else 3e-3), 5e-2
    data = batches()
    opt = make_independent(family, a.parameters(), lr0, wd)
    train(a, opt, data, [torch.optim.lr_scheduler.LambdaLR(opt, cosine(STEPS))])
    reference_independent(b, data, family, lr0, wd, cosine(STEPS))
    # the reference evaluates (1 - eta*wd)*w - eta*a*u in another order: rounding only
    assert rel_err(a, b) <= RTOL
    # and independent decay differs from decoupled decay (lr0 != 1)
    c, _ = make_pair()
    oc = make_independent(family, c.parameters(), lr0, wd, decay="decoupled")
    train(c, oc, data, [torch.optim.lr_scheduler.LambdaLR(oc, cosine(STEPS))])
    assert rel_err(a, c) > 1e-4


def test_sgd_independent_equals_algorithm_1_literally_at_constant_schedule():
    a, b = make_pair()
    data = batches()
    train(a, make_independent("sgd", a.parameters(), 0.05, 5e-2), data)
    reference_independent(b, data, "sgd", 0.05, 5e-2, lambda t: 1.0, lr_in_momentum=True)
    assert rel_err(a, b) <= RTOL


def test_loss_penalty_equals_l2_for_plain_sgd():
    a, b = make_pair()
    data = batches()
    wd = 5e-3
    train(a, SGD(a.parameters(), lr=0.05, weight_decay=wd, decay="l2"), data)
    train(
        b, SGD(b.parameters(), lr=0.05), data, extra_loss=lambda m: l2_penalty(m.parameters(), wd)
    )
    assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_loss_penalty_with_groups_equals_l2_on_decayed_group(family):
    """The trainer's decay="loss": penalty on groups[0] only, optimizer with wd 0."""
    a, b = make_pair()
    data = batches(60)
    make = (
        (lambda p, **k: SGD(p, lr=0.05, momentum=0.9, **k))
        if family == "sgd"
        else (lambda p, **k: Adam(p, lr=3e-3, **k))
    )
    train(a, make(groups_of(a, 1e-2), decay="l2"), data)
    gb = groups_of(b, 1e-2)
    ob = make([{"params": g["params"], "weight_decay": 0.0} for g in gb])
    train(b, ob, data, extra_loss=lambda m: l2_penalty(gb, 1e-2))
    assert rel_err(a, b) <= 1e-10


def test_proposition_1_decay_equals_l2_with_wd_over_lr_for_plain_sgd():
    """Prop. 1: SGD with decay x <- (1 - lam) x (our "independent", constant schedule) equals
    SGD on f + lam'/2 ||x||^2 with lam' = lam / lr; our "decoupled" (shrink lr*wd) equals L2
    with the same wd."""
    lr, lam = 0.05, 2e-3
    data = batches()
    a, b = make_pair()
    train(a, SGD(a.parameters(), lr=lr, weight_decay=lam / lr, decay="l2"), data)
    train(b, SGD(b.parameters(), lr=lr, weight_decay=lam, decay="independent"), data)
    assert rel_err(a, b) <= 1e-12
    c, d = make_pair()
    train(c, SGD(c.parameters(), lr=lr, weight_decay=0.04, decay="l2"), data)
    train(d, SGDW(d.parameters(), lr=lr, weight_decay=0.04), data)
    assert rel_err(c, d) <= 1e-12
    # with momentum they are different algorithms
    e, f = make_pair()
    train(e, SGD(e.parameters(), lr=lr, momentum=0.9, weight_decay=0.04, decay="l2"), data)
    train(f, SGDW(f.parameters(), lr=lr, momentum=0.9, weight_decay=0.04), data)
    assert rel_err(e, f) > 1e-6


@pytest.mark.parametrize("family", ["sgd", "adam"])
@pytest.mark.parametrize("decay", ["l2", "decoupled", "independent"])
def test_relative_decay_equals_plain_per_tensor_math(family, decay):
    """relative=True: r = max(rms(w), 1e-3) of each tensor at the start of the step scales the
    decay of every form, for SGD (momentum 0.9) and Adam, under a cosine LambdaLR."""
    g = torch.Generator().manual_seed(0)
    scales = [3.0, 0.2, 1e-5, 1.0]  # rms far above 1, below 1, under the floor, about 1
    shapes = [(4, 5), (6,), (3,), (2, 3, 3)]
    init = [s * torch.randn(sh, generator=g, dtype=torch.float64) for s, sh in zip(scales, shapes)]
    T = 30
    grads = [[torch.randn(sh, generator=g, dtype=torch.float64) for sh in shapes] for _ in range(T)]
    lr0 = 0.05 if family == "sgd" else 1e-2
    wd = {"l2": 0.5, "decoupled": 2.0, "independent": 0.05}[decay]
    eta_of = cosine(T)

    def ours(relative: bool) -> list[torch.Tensor]:
        ps = [nn.Parameter(t.clone()) for t in init]
        kw = dict(lr=lr0, weight_decay=wd, decay=decay, relative=relative)
        opt = SGD(ps, momentum=0.9, **kw) if family == "sgd" else Adam(ps, **kw)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, eta_of)
        for gs in grads:
            for p, gg in zip(ps, gs):
                p.grad = gg.clone()
            opt.step()
            sched.step()
        return [p.detach() for p in ps]

    ws = [t.clone() for t in init]
    m = [torch.zeros_like(t) for t in init]
    v = [torch.zeros_like(t) for t in init]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, gs in enumerate(grads, start=1):
        eta = eta_of(t - 1)
        lr = lr0 * eta
        for i, gg in enumerate(gs):
            w = ws[i]
            r = max(w.norm().item() / math.sqrt(w.numel()), 1e-3)
            if decay == "l2":
                gg = gg + wd * r * w
            else:
                w = w * (1 - (lr if decay == "decoupled" else eta) * wd * r)
            if family == "sgd":
                m[i] = gg.clone() if t == 1 else 0.9 * m[i] + gg
                ws[i] = w - lr * m[i]
            else:
                m[i] = b1 * m[i] + (1 - b1) * gg
                v[i] = b2 * v[i] + (1 - b2) * gg * gg
                mhat, vhat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
                ws[i] = w - lr * mhat / (vhat.sqrt() + eps)

    got = ours(relative=True)
    for p, q in zip(got, ws):
        assert ((p - q).norm() / q.norm()).item() <= RTOL
    # and r matters: relative=False is a different trajectory
    plain = ours(relative=False)
    assert max(((p - q).norm() / q.norm()).item() for p, q in zip(plain, ws)) > 1e-3


# -- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,kw",
    [
        (SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
        (Adam, dict(lr=3e-3, amsgrad=True)),
        (Adam, dict(lr=3e-3, relative=True)),
    ],
)
@pytest.mark.parametrize("decay", ["l2", "decoupled", "independent"])
def test_state_dict_round_trip_is_bit_identical(cls, kw, decay):
    a, b = make_pair()
    data = batches(50)

    def build(model):
        opt = cls(groups_of(model, 1e-2), decay=decay, **kw)
        lr_s = torch.optim.lr_scheduler.LambdaLR(opt, cosine(50))
        return opt, lr_s, WeightDecayScheduler(opt, "cosine", 50, start=1.0, end=0.2)

    oa, la, wa = build(a)
    train(a, oa, data[:25], [la, wa])
    buf = io.BytesIO()
    torch.save(
        {
            "model": a.state_dict(),
            "opt": oa.state_dict(),
            "lr": la.state_dict(),
            "wd": wa.state_dict(),
        },
        buf,
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    b.load_state_dict(ckpt["model"])
    ob, lb, wb = build(b)
    ob.load_state_dict(ckpt["opt"])
    lb.load_state_dict(ckpt["lr"])
    wb.load_state_dict(ckpt["wd"])
    train(a, oa, data[25:], [la, wa])
    train(b, ob, data[25:], [lb, wb])
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert oa.param_groups[0]["shrink"] == ob.param_groups[0]["shrink"] > 0


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_resume_from_a_torch_optim_checkpoint(family):
    """The state dict layout is torch.optim's: a torch checkpoint resumes in ours."""
    a, b = make_pair()
    data = batches(40)
    if family == "sgd":
        kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
        ta, tb = torch.optim.SGD(a.parameters(), foreach=True, **kw), None
    else:
        kw = dict(lr=3e-3, weight_decay=1e-2, amsgrad=True)
        ta = torch.optim.Adam(a.parameters(), foreach=True, **kw)
    train(a, ta, data[:20])
    b.load_state_dict(a.state_dict())
    tb = (SGD if family == "sgd" else Adam)(b.parameters(), **kw)
    tb.load_state_dict(copy.deepcopy(ta.state_dict()))
    train(a, ta, data[20:])
    train(b, tb, data[20:])
    assert rel_err(a, b) <= RTOL


def test_state_dict_holds_plain_tensors_per_param():
    a, _ = make_pair()
    opt = Adam(a.parameters(), lr=1e-3, weight_decay=1e-2, decay="independent")
    train(a, opt, batches(3))
    sd = opt.state_dict()
    assert len(sd["state"]) == len(list(a.parameters()))
    st = sd["state"][0]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq"} and float(st["step"]) == 3.0
    assert st["exp_avg"].shape == a.conv.weight.shape
    g = sd["param_groups"][0]
    assert g["initial_lr"] == 1e-3 and g["decay"] == "independent" and "shrink" in g


# -- population: per-member hyperparameter tensors --------------------------------------------


@pytest.mark.parametrize("family", ["sgd", "adam"])
@pytest.mark.parametrize(
    "decay,relative",
    [("l2", False), ("decoupled", False), ("independent", False), ("independent", True)],
)
def test_stacked_population_equals_separate_optimizers(family, decay, relative):
    """P=3 members stacked as [P, ...] with per-member lr / wd tensors ([P, 1, ...]) and a cosine
    schedule equal 3 separate optimizers (each with its own LambdaLR)."""
    torch.manual_seed(0)
    P, T = 3, 30
    lr0 = [0.05, 0.02, 0.01] if family == "sgd" else [1e-2, 3e-3, 1e-3]
    wds = [0.1, 0.0, 0.03]
    shapes = [(4, 5), (5,), (2, 3, 3)]
    init = [torch.randn(P, *s, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(P, *s, dtype=torch.float64) for s in shapes] for _ in range(T)]
    eta_of = cosine(T)

    def per_member(values, mult=1.0):
        return [
            torch.tensor([v * mult for v in values], dtype=torch.float64).view(P, *[1] * len(s))
            for s in shapes
        ]

    stacked = [t.clone() for t in init]
    bufs = None
    m = [torch.zeros_like(t) for t in init]
    v = [torch.zeros_like(t) for t in init]
    for k, g in enumerate(grads):
        eta = eta_of(k)
        hyper = dict(
            lr=per_member(lr0, eta),
            weight_decay=per_member(wds),
            eta=per_member([eta] * P),
            decay=decay,
            relative=relative,
            stacked=True,
        )
        if family == "sgd":
            bufs = sgd_step(stacked, g, bufs, momentum=0.9, **hyper)
        else:
            adam_step(stacked, g, m, v, None, step=k + 1, **hyper)

    for i in range(P):
        ps = [nn.Parameter(t[i].clone()) for t in init]
        kw = dict(lr=lr0[i], weight_decay=wds[i], decay=decay, relative=relative)
        opt = SGD(ps, momentum=0.9, **kw) if family == "sgd" else Adam(ps, **kw)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, eta_of)
        for g in grads:
            for p, gg in zip(ps, g):
                p.grad = gg[i].clone()
            opt.step()
            sched.step()
        for p, t in zip(ps, stacked):
            assert torch.allclose(p.detach(), t[i], rtol=1e-12, atol=1e-14), (i, p.shape)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_torch_foreach(dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 3, 3), (64,), (5000,), (10, 64)]
    init = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(30)]
    cases = [
        (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2), "l2"),
        (Adam, torch.optim.Adam, dict(lr=3e-3, weight_decay=1e-2, amsgrad=True), "l2"),
        (Adam, torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.1), "decoupled"),
    ]
    for ours, ref, kw, decay in cases:
        pa = [nn.Parameter(t.cuda()) for t in init]
        pb = [nn.Parameter(t.cuda()) for t in init]
        oa, ob = ours(pa, decay=decay, **kw), ref(pb, foreach=True, **kw)
        for gs in grads:
            for p, q, gg in zip(pa, pb, gs):
                p.grad, q.grad = gg.cuda(), gg.cuda()
            oa.step()
            ob.step()
        for p, q in zip(pa, pb):
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            assert ((p - q).norm() / q.norm()).item() <= tol
