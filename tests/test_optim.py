"""harness.optim against torch.optim and the paper's equations, in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from harness.optim import (
    SGD,
    Adam,
    AdamW,
    WeightDecayScheduler,
    adam_step,
    l2_penalty,
    normalized_weight_decay,
    param_groups,
    sgd_step,
)

STEPS = 120
RTOL = 1e-10


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


class Net(nn.Module):
    """Biases, a norm layer and conv weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.norm = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def make_pair(seed=0):
    torch.manual_seed(seed)
    a = Net().double()
    return a, copy.deepcopy(a)


def batches(n=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 2, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (16,), generator=g),
        )
        for _ in range(n)
    ]


def loss_fn(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def train(model, opt, data, sched=None, extra_loss=None):
    for x, y in data:
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


def assert_close(a, b, rtol=RTOL):
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        err = ((p - q).norm() / q.norm().clamp_min(1e-300)).item()
        assert err <= rtol, f"{n}: relative error {err:.3g}"


@pytest.mark.parametrize(
    "momentum,dampening,nesterov",
    [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.1, False), (0.9, 0.0, True)],
)
def test_sgd_l2_equals_torch_sgd(momentum, dampening, nesterov):
    a, b = make_pair()
    kw = dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=1e-2)
    data = batches()
    train(a, SGD(a.parameters(), decay="l2", **kw), data)
    train(b, torch.optim.SGD(b.parameters(), foreach=True, **kw), data)
    assert_close(a, b)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_l2_equals_torch_adam(amsgrad):
    a, b = make_pair()
    kw = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2, amsgrad=amsgrad)
    data = batches()
    train(a, Adam(a.parameters(), decay="l2", **kw), data)
    train(b, torch.optim.Adam(b.parameters(), foreach=True, **kw), data)
    assert_close(a, b)


def test_adam_decoupled_equals_torch_adamw_under_schedule():
    a, b = make_pair()
    kw = dict(lr=3e-3, weight_decay=0.1)
    data = batches()
    oa, ob = AdamW(a.parameters(), **kw), torch.optim.AdamW(b.parameters(), foreach=True, **kw)
    sa = torch.optim.lr_scheduler.CosineAnnealingLR(oa, STEPS)
    sb = torch.optim.lr_scheduler.CosineAnnealingLR(ob, STEPS)
    train(a, oa, data, sa)
    train(b, ob, data, sb)
    assert_close(a, b)


def _reference_independent(model, data, family, lr0, wd, lam):
    """Loshchilov & Hutter Algorithms 1 (SGDW) and 2 (AdamW), per tensor, plain math."""
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, (x, y) in enumerate(data, start=1):
        for p in params:
            p.grad = None
        loss_fn(model, x, y).backward()
        eta = lam(t - 1)
        with torch.no_grad():
            for i, p in enumerate(params):
                g = p.grad
                if family == "sgd":
                    # m_t = beta1 m_{t-1} + eta_t alpha g ; w -= m_t + eta_t lam w  (Alg. 1,
                    # written with torch's momentum convention: buf = mu buf + g)
                    m[i] = g.clone() if t == 1 else 0.9 * m[i] + g
                    p.copy_(p - eta * wd * p - eta * lr0 * m[i])
                else:
                    b1, b2, eps = 0.9, 0.999, 1e-8
                    m[i] = b1 * m[i] + (1 - b1) * g
                    v[i] = b2 * v[i] + (1 - b2) * g * g
                    mhat = m[i] / (1 - b1**t)
                    vhat = v[i] / (1 - b2**t)
                    # w_t = w_{t-1} - eta_t (alpha mhat / (sqrt(vhat) + eps) + lam w_{t-1})
                    p.copy_(p - eta * (lr0 * mhat / (vhat.sqrt() + eps) + wd * p))


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_independent_equals_paper_equations_under_cosine_lambdalr(family):
    a, b = make_pair()
    lr0, wd = (0.05 if family == "sgd" else 3e-3), 1e-2

    def lam(t):
        return 0.5 * (1 + math.cos(math.pi * t / STEPS))

    data = batches()
    if family == "sgd":
        opt = SGD(a.parameters(), lr=lr0, momentum=0.9, weight_decay=wd, decay="independent")
    else:
        opt = Adam(a.parameters(), lr=lr0, weight_decay=wd, decay="independent")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    train(a, opt, data, sched)
    _reference_independent(b, data, family, lr0, wd, lam)
    # the reference evaluates (1 - eta*wd)*w - eta*a*u in a different order: 1e-9 relative
    assert_close(a, b, rtol=1e-9)
    # independent decay really differs from decoupled when lr0 != 1
    c, _ = make_pair()
    oc = (
        SGD(c.parameters(), lr=lr0, momentum=0.9, weight_decay=wd, decay="decoupled")
        if family == "sgd"
        else Adam(c.parameters(), lr=lr0, weight_decay=wd, decay="decoupled")
    )
    train(c, oc, data, torch.optim.lr_scheduler.LambdaLR(oc, lam))
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), c.parameters())) > 1e-6


def test_loss_penalty_equals_l2_for_plain_sgd():
    a, b = make_pair()
    data = batches()
    wd = 5e-3
    train(a, SGD(a.parameters(), lr=0.05, weight_decay=wd, decay="l2"), data)
    train(
        b, SGD(b.parameters(), lr=0.05), data, extra_loss=lambda m: l2_penalty(m.parameters(), wd)
    )
    assert_close(a, b, rtol=1e-12)


def test_decoupled_equals_l2_with_wd_over_lr_for_plain_sgd():
    """Proposition 1: for plain SGD, decoupled wd' equals L2 with wd = wd'/lr... i.e. shrink lr*wd."""
    a, b = make_pair()
    data = batches()
    lr, wd_l2 = 0.05, 1e-2
    train(a, SGD(a.parameters(), lr=lr, weight_decay=wd_l2, decay="l2"), data)
    # decoupled shrink lr*wd_dec must equal lr*wd_l2 -> wd_dec = wd_l2; independent: wd = lr*wd_l2
    train(b, SGD(b.parameters(), lr=lr, weight_decay=wd_l2 * lr, decay="independent"), data)
    assert_close(a, b, rtol=1e-12)


@pytest.mark.parametrize(
    "cls,kw",
    [(SGD, dict(lr=0.05, momentum=0.9, nesterov=True)), (Adam, dict(lr=3e-3, amsgrad=True))],
)
@pytest.mark.parametrize("decay", ["l2", "decoupled", "independent"])
def test_state_dict_round_trip_is_bit_identical(cls, kw, decay):
    a, b = make_pair()
    data = batches(60)
    oa = cls(a.parameters(), weight_decay=1e-2, decay=decay, **kw)
    sa = torch.optim.lr_scheduler.CosineAnnealingLR(oa, 60)
    train(a, oa, data[:30], sa)
    b.load_state_dict(a.state_dict())
    ob = cls(b.parameters(), weight_decay=1e-2, decay=decay, **kw)
    sb = torch.optim.lr_scheduler.CosineAnnealingLR(ob, 60)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))
    sb.load_state_dict(sa.state_dict())
    train(a, oa, data[30:], sa)
    train(b, ob, data[30:], sb)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_per_group_lr_wd_decay():
    torch.manual_seed(0)
    m1, m2 = nn.Linear(4, 4).double(), nn.Linear(4, 4).double()
    r1, r2 = copy.deepcopy(m1), copy.deepcopy(m2)
    opt = Adam(
        [
            {"params": m1.parameters(), "lr": 1e-2, "weight_decay": 0.1, "decay": "decoupled"},
            {"params": m2.parameters(), "lr": 1e-3, "weight_decay": 0.01, "decay": "l2"},
        ]
    )
    ref1 = torch.optim.AdamW(r1.parameters(), lr=1e-2, weight_decay=0.1)
    ref2 = torch.optim.Adam(r2.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(8, 4, dtype=torch.float64)
    for _ in range(20):
        for o in (opt, ref1, ref2):
            o.zero_grad()
        (m1(x).square().sum() + m2(x).square().sum()).backward()
        (r1(x).square().sum() + r2(x).square().sum()).backward()
        opt.step()
        ref1.step()
        ref2.step()
    assert_close(m1, r1)
    assert_close(m2, r2)
    assert opt.param_groups[0]["shrink"] == pytest.approx(1e-3)
    assert opt.param_groups[1]["shrink"] == pytest.approx(1e-5)


def test_shrink_follows_schedule_for_independent():
    p = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = SGD([p], lr=0.1, weight_decay=0.01, decay="independent")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    shrinks = []
    for _ in range(3):
        p.grad = torch.zeros_like(p)
        opt.step()
        shrinks.append(opt.param_groups[0]["shrink"])
        sched.step()
    assert shrinks == pytest.approx([0.01, 0.005, 0.0025])
    assert p.detach() == pytest.approx(torch.full((3,), 0.99 * 0.995 * 0.9975, dtype=torch.float64))


def test_population_lists_equal_separate_optimizers():
    """Per-member lr / wd tensors over stacked [P, ...] params == P separate optimizers."""
    torch.manual_seed(0)
    P = 3
    lrs, wds = [1e-2, 3e-3, 1e-3], [0.1, 0.0, 0.03]
    shapes = [(4, 5), (5,)]
    init = [torch.randn(P, *s, dtype=torch.float64) for s in shapes]
    grads_seq = [[torch.randn(P, *s, dtype=torch.float64) for s in shapes] for _ in range(25)]
    for family in ("sgd", "adam"):
        for decay in ("l2", "decoupled", "independent"):
            stacked = [t.clone() for t in init]
            view = [torch.tensor(lrs, dtype=torch.float64).view(P, *[1] * len(s)) for s in shapes]
            wdv = [torch.tensor(wds, dtype=torch.float64).view(P, *[1] * len(s)) for s in shapes]
            bufs, m, v = (
                None,
                [torch.zeros_like(t) for t in init],
                [torch.zeros_like(t) for t in init],
            )
            for k, g in enumerate(grads_seq, start=1):
                if family == "sgd":
                    bufs = sgd_step(
                        stacked,
                        g,
                        bufs,
                        lr=view,
                        weight_decay=wdv,
                        eta=1.0,
                        momentum=0.9,
                        dampening=0.0,
                        nesterov=False,
                        decay=decay,
                    )
                else:
                    adam_step(
                        stacked,
                        g,
                        m,
                        v,
                        None,
                        step=k,
                        lr=view,
                        weight_decay=wdv,
                        eta=1.0,
                        beta1=0.9,
                        beta2=0.999,
                        eps=1e-8,
                        decay=decay,
                    )
            for i in range(P):
                ps = [nn.Parameter(t[i].clone()) for t in init]
                opt = (
                    SGD(ps, lr=lrs[i], momentum=0.9, weight_decay=wds[i], decay=decay)
                    if family == "sgd"
                    else Adam(ps, lr=lrs[i], weight_decay=wds[i], decay=decay)
                )
                for g in grads_seq:
                    for p, gg in zip(ps, g):
                        p.grad = gg[i].clone()
                    opt.step()
                for p, t in zip(ps, stacked):
                    assert torch.allclose(p.detach(), t[i], rtol=1e-12, atol=1e-14), (
                        family,
                        decay,
                        i,
                    )


def test_relative_decay_scales_shrink_by_rms():
    w = torch.full((4,), 2.0, dtype=torch.float64)
    p = nn.Parameter(w.clone())
    opt = SGD([p], lr=0.1, weight_decay=0.01, decay="decoupled", relative=True)
    p.grad = torch.zeros_like(p)
    opt.step()
    # shrink = lr*wd*rms(w) = 0.1*0.01*2
    assert p.detach() == pytest.approx(w * (1 - 0.002))


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: SGD(p, lr=-1.0), "lr"),
        (lambda p: SGD(p, lr=0.1, weight_decay=-1.0), "weight_decay"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), "betas"),
        (lambda p: Adam(p, betas=(-0.1, 0.9)), "betas"),
        (lambda p: Adam(p, eps=-1.0), "eps"),
        (lambda p: SGD(p, lr=0.1, decay="l3"), "decay"),
        (lambda p: Adam(p, decay="loss"), "decay"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), "nesterov"),
        (lambda p: SGD(p, lr=0.1, momentum=1.5), "momentum"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, needle):
    with pytest.raises(ValueError, match=needle):
        make([nn.Parameter(torch.zeros(2))])


def test_unknown_decay_lists_allowed_values():
    with pytest.raises(ValueError, match="l2, decoupled, independent"):
        Adam([nn.Parameter(torch.zeros(2))], decay="weird")


def test_param_groups_rules():
    model = Net()
    groups, report = param_groups(model, 0.1, rule="timm")
    assert report["decay"]["tensors"] == 2  # conv.weight, fc.weight
    assert report["no_decay"]["tensors"] == 4  # conv.bias, norm.weight, norm.bias, fc.bias
    assert report["decay"]["elements"] == 4 * 2 * 3 + 5 * 32
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.1
    _, report = param_groups(model, 0.1, rule="names", no_decay_names=["bias", "norm"])
    assert report["no_decay"]["tensors"] == 4
    groups, report = param_groups(model, 0.1, rule="all")
    assert report["no_decay"]["tensors"] == 0 and len(groups) == 1

    class WithSkip(Net):
        def no_weight_decay(self):
            return {"fc.weight"}

    _, report = param_groups(WithSkip(), 0.1, rule="timm")
    assert report["decay"]["tensors"] == 1


def test_wd_schedules_values_and_state_dict():
    p = nn.Parameter(torch.zeros(2))
    opt = SGD([p], lr=0.1, weight_decay=0.1)
    s = WeightDecayScheduler(opt, "linear", total_steps=10)
    assert opt.param_groups[0]["weight_decay"] == 0.0
    for _ in range(5):
        s.step()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.05)
    state = s.state_dict()
    opt2 = SGD([p], lr=0.1, weight_decay=0.1)
    s2 = WeightDecayScheduler(opt2, "linear", total_steps=10)
    s2.load_state_dict(state)
    assert opt2.param_groups[0]["weight_decay"] == pytest.approx(0.05)
    c = WeightDecayScheduler(
        SGD([p], lr=0.1, weight_decay=1.0), "cosine", total_steps=4, start=1.0, end=0.0
    )
    assert [c.multiplier(t) for t in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])
    st = WeightDecayScheduler(SGD([p], lr=0.1, weight_decay=1.0), "step", total_steps=4, gamma=0.1)
    assert [st.multiplier(t) for t in (0, 2, 3)] == pytest.approx([1.0, 0.1, 0.01])


def test_normalized_weight_decay():
    assert normalized_weight_decay(0.05, 128, 50000, 100) == pytest.approx(
        0.05 * math.sqrt(128 / 5e6)
    )
    with pytest.raises(ValueError):
        normalized_weight_decay(0.05, 0, 1, 1)
