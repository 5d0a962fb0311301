"""harness.optim beyond trajectories: arguments, shrink, relative decay, param groups, wd
schedules, the loss penalty, normalized decay and the bench command."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from harness.optim import (
    DECAY_MODES,
    SGD,
    Adam,
    FlatList,
    WeightDecayScheduler,
    adam_step,
    apply_decay,
    decay_factor,
    l2_penalty,
    normalized_weight_decay,
    param_groups,
    relative_scale,
    sgd_step,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_param(values, dtype=torch.float64) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=dtype))


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: SGD(p, lr=-1.0), r"lr=-1\.0 is invalid; allowed: a float >= 0"),
        (lambda p: Adam(p, lr=-1e-3), r"lr=-0\.001 is invalid; allowed"),
        (lambda p: SGD(p, lr=0.1, weight_decay=-1.0), r"weight_decay=-1\.0 is invalid; allowed"),
        (lambda p: Adam(p, weight_decay=-0.1), r"weight_decay=-0\.1 is invalid; allowed"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), r"betas=\(0\.9, 1\.0\) is invalid; allowed: two"),
        (lambda p: Adam(p, betas=(-0.1, 0.9)), r"betas=.* allowed: two floats in \[0, 1\)"),
        (lambda p: Adam(p, betas=(0.9,)), r"betas=\(0\.9,\) is invalid"),
        (lambda p: Adam(p, eps=-1.0), r"eps=-1\.0 is invalid; allowed: a float >= 0"),
        (lambda p: SGD(p, lr=0.1, decay="l3"), r"decay='l3' is invalid; allowed: l2, decoupled"),
        (lambda p: Adam(p, decay="weird"), r"allowed: l2, decoupled, independent"),
        (lambda p: Adam(p, decay="loss"), r"decay='loss' is not an optimizer mode.*l2_penalty"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), r"nesterov=True is invalid.*momentum > 0"),
        (
            lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
            r"nesterov=True is invalid with momentum=0\.9, dampening=0\.1",
        ),
        (lambda p: SGD(p, lr=0.1, momentum=1.5), r"momentum=1\.5 is invalid; allowed: a float"),
        (lambda p: SGD(p, lr=0.1, momentum=-0.1), r"momentum=-0\.1 is invalid"),
        (lambda p: SGD(p, lr=0.1, dampening=2.0), r"dampening=2\.0 is invalid"),
        (
            lambda p: SGD(p, lr=0.0, weight_decay=0.1, decay="independent"),
            r"lr=0 is invalid with decay='independent'",
        ),
        (
            lambda p: SGD([{"params": p, "decay": "nope"}], lr=0.1),
            r"decay='nope' is invalid; allowed: l2, decoupled, independent",
        ),
        (lambda p: Adam([{"params": p, "lr": -2.0}]), r"lr=-2\.0 is invalid"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, needle):
    with pytest.raises(ValueError, match=needle):
        make([nn.Parameter(torch.zeros(2))])


def test_bad_group_added_later_is_not_kept():
    opt = SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "weight_decay": -1.0})
    assert len(opt.param_groups) == 1


def test_decay_modes_and_initial_lr():
    assert DECAY_MODES == ("l2", "decoupled", "independent")
    p = nn.Parameter(torch.zeros(2))
    opt = Adam([p], lr=0.02)
    assert opt.param_groups[0]["initial_lr"] == 0.02
    # torch schedulers keep the key we set (setdefault)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["initial_lr"] == 0.02


# -- shrink ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_shrink_records_the_decay_of_each_mode(cls):
    """decoupled / l2: lr_t*wd; independent: eta_t*wd; wd=0 groups: 0."""
    lam = [1.0, 0.5, 0.25]  # eta_t = 0.5**t
    p = one_param([1.0, 2.0])
    q = one_param([3.0])
    opt = cls(
        [
            {"params": [p], "decay": "independent"},
            {"params": [q], "decay": "decoupled", "weight_decay": 0.0},
        ],
        lr=0.1,
        weight_decay=0.01,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    seen = []
    for _ in range(3):
        p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
        opt.step()
        seen.append([g["shrink"] for g in opt.param_groups])
        sched.step()
    assert [s[0] for s in seen] == pytest.approx([0.01 * x for x in lam])
    assert [s[1] for s in seen] == [0.0, 0.0, 0.0]
    if cls is SGD:  # zero gradients: the weights shrink by exactly the recorded factors
        assert p.detach() == pytest.approx(torch.tensor([1.0, 2.0]) * 0.99 * 0.995 * 0.9975)
    for decay in ("decoupled", "l2"):
        opt.param_groups[0]["decay"] = decay
        opt.step()
        assert opt.param_groups[0]["shrink"] == pytest.approx(0.1 * 0.125 * 0.01)


def test_independent_decay_follows_any_scheduler_of_group_lr():
    p = one_param([1.0])
    opt = SGD([p], lr=0.2, weight_decay=0.5, decay="independent")
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 2], gamma=0.1)
    for expect in (0.5, 0.05, 0.005):
        p.grad = torch.zeros_like(p)
        before = p.item()
        opt.step()
        assert p.item() == pytest.approx(before * (1 - expect))
        assert opt.param_groups[0]["shrink"] == pytest.approx(expect)
        sched.step()


# -- relative decay -------------------------------------------------------------------------


def test_relative_scale_is_rms_with_floor():
    ws = [torch.full((4,), 2.0), torch.tensor([3.0, 4.0]), torch.zeros(3), torch.full((5,), 1e-5)]
    r = relative_scale(ws)
    expect = [2.0, math.sqrt(12.5), 1e-3, 1e-3]
    assert [x.item() for x in r] == pytest.approx(expect)
    stacked = torch.stack([torch.full((2, 2), 2.0), torch.full((2, 2), 0.5)])
    (rs,) = relative_scale([stacked], stacked=True)
    assert rs.shape == (2, 1, 1) and rs.flatten().tolist() == pytest.approx([2.0, 0.5])


@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
def test_relative_decay_scales_each_tensors_shrink_by_its_rms(decay):
    """w <- w * (1 - s * max(rms(w), 1e-3)), s = lr*wd (decoupled) or eta*wd (independent);
    l2 adds wd * max(rms(w), 1e-3) * w to the gradient (plain SGD: the same shrink lr*wd*r)."""
    a, b, z = one_param([2.0, 2.0, 2.0, 2.0]), one_param([3.0, 4.0]), one_param([0.0, 1e-4])
    opt = SGD([a, b, z], lr=0.1, weight_decay=0.01, decay=decay, relative=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)  # eta = 0.5 from the start
    rms = {"a": 2.0, "b": math.sqrt(12.5), "z": 1e-3}
    before = {"a": a.detach().clone(), "b": b.detach().clone(), "z": z.detach().clone()}
    for p in (a, b, z):
        p.grad = torch.zeros_like(p)
    opt.step()
    s = (0.5 if decay == "independent" else 0.05) * 0.01
    for name, p in (("a", a), ("b", b), ("z", z)):
        assert p.detach() == pytest.approx(before[name] * (1 - s * rms[name]), rel=1e-14)
    del sched


def test_apply_decay_functional_matches_class():
    w = [torch.full((3,), 2.0, dtype=torch.float64)]
    apply_decay(w, 0.1, 0.01, 1.0, "decoupled", relative=True)
    assert w[0].tolist() == pytest.approx([2.0 * (1 - 0.001 * 2.0)] * 3)
    apply_decay(w, 0.1, 0.01, 1.0, "l2")  # no-op: l2 acts on the gradient
    assert w[0].tolist() == pytest.approx([2.0 * (1 - 0.001 * 2.0)] * 3)


# -- the functional rules, called directly -------------------------------------------------

F64 = torch.float64


def test_relative_scale_stacked_one_dim_and_population_of_one():
    (r,) = relative_scale([torch.tensor([3.0, -0.5, 0.0], dtype=F64)], stacked=True)
    assert r.tolist() == pytest.approx([3.0, 0.5, 1e-3])  # 1-d: |w| per member, with the floor
    (r,) = relative_scale([torch.full((1, 2, 2), 0.5, dtype=F64)], stacked=True)
    assert r.shape == (1, 1, 1) and r.item() == pytest.approx(0.5)


def test_decay_factor_mixes_floats_and_per_member_tensors():
    assert decay_factor(0.5, 0.2, 0.25, "decoupled") == pytest.approx(0.1)
    assert decay_factor(0.5, 0.2, 0.25, "independent") == pytest.approx(0.05)
    assert decay_factor(0.5, 0.2, 0.25, "l2") is None
    wd = [torch.tensor([0.1, 0.0, 0.3], dtype=F64).view(3, 1)]
    (s,) = decay_factor(0.5, wd, 0.25, "independent")  # float eta, per-member wd
    assert s.flatten().tolist() == pytest.approx([0.025, 0.0, 0.075])
    lr = [torch.tensor([1.0, 2.0, 4.0], dtype=F64).view(3, 1)]
    (s,) = decay_factor(lr, 0.2, 0.25, "decoupled")  # per-member lr, float wd
    assert s.flatten().tolist() == pytest.approx([0.2, 0.4, 0.8])
    with pytest.raises(ValueError, match="decay='loss' is invalid; allowed: l2, decoupled"):
        decay_factor(0.5, 0.2, 0.25, "loss")


def test_apply_decay_plain_stacked_and_edge_cases():
    w = [torch.full((4,), 2.0, dtype=F64)]  # rms 2: relative decay would shrink twice as much
    apply_decay(w, 0.1, 0.5, 0.4, "decoupled")
    assert w[0].tolist() == pytest.approx([2.0 * (1 - 0.05)] * 4)
    w = [torch.full((4,), 2.0, dtype=F64)]
    apply_decay(w, 0.1, 0.5, 0.4, "independent")
    assert w[0].tolist() == pytest.approx([2.0 * (1 - 0.2)] * 4)
    w = [torch.tensor([3.0, 4.0], dtype=F64)]  # not stacked by default: one rms per tensor
    apply_decay(w, 0.1, 0.5, 0.4, "decoupled", relative=True)
    assert w[0].tolist() == pytest.approx([x * (1 - 0.05 * math.sqrt(12.5)) for x in (3, 4)])
    # a population (members on dim 0) with per-member lr and wd and a float eta
    w = [torch.stack([torch.full((2, 2), 2.0, dtype=F64), torch.full((2, 2), 0.5, dtype=F64)])]
    lr = [torch.tensor([0.1, 0.2], dtype=F64).view(2, 1, 1)]
    wd = [torch.tensor([0.1, 0.3], dtype=F64).view(2, 1, 1)]
    apply_decay(w, lr, wd, 0.5, "independent", relative=True, stacked=True)
    assert w[0][0].flatten().tolist() == pytest.approx([2.0 * (1 - 0.5 * 0.1 * 2.0)] * 4)
    assert w[0][1].flatten().tolist() == pytest.approx([0.5 * (1 - 0.5 * 0.3 * 0.5)] * 4)
    # shrink 1 zeroes the weights; wd 0 and no params are no-ops
    w = [torch.tensor([1.0, -2.0], dtype=F64)]
    apply_decay(w, 0.5, 1.0, 1.0, "independent")
    assert w[0].tolist() == [0.0, 0.0]
    w = [torch.tensor([1.0, -2.0], dtype=F64)]
    apply_decay(w, 0.5, 0.0, 1.0, "independent", relative=True)
    assert w[0].tolist() == [1.0, -2.0]
    apply_decay([], 0.5, 2.0, 1.0, "decoupled")


def test_flat_list_views_and_chunks_cover_one_buffer():
    like = [torch.ones(3), torch.ones(2500), torch.ones(4, 5), torch.ones(7), torch.ones(3000)]
    fl = FlatList(like, dtype=F64)
    assert fl.flat.dtype == F64 and fl.flat.numel() == sum(t.numel() for t in like)
    assert [t.shape for t in fl] == [t.shape for t in like] and all(t.dtype == F64 for t in fl)
    assert all(t.untyped_storage().data_ptr() == fl.flat.untyped_storage().data_ptr() for t in fl)
    # the chunks tile .flat in order: small runs in pieces <= CHUNK, big tensors on their own
    sizes = [c.numel() for c in fl.chunks]
    assert sizes == [3, 2500, 27, 3000]
    offsets = [c.storage_offset() for c in fl.chunks]
    assert offsets == [0, 3, 2503, 2530]
    fl.flat += 1.0
    assert all(bool((t == 1.0).all()) for t in fl)
    many = FlatList([torch.ones(1000)] * 5)  # 5000 small elements: cut every CHUNK
    assert [c.numel() for c in many.chunks] == [2048, 2048, 904]
    empty = FlatList([])
    assert len(empty) == 0 and empty.flat.numel() == 0 and empty.chunks == []


def _trajectory(fn, steps=4):
    """``fn(w, g, t)`` on one float64 tensor for a few steps of fixed pseudo-random grads."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(7, generator=gen, dtype=F64)
    for t in range(1, steps + 1):
        fn(w, torch.randn(7, generator=gen, dtype=F64), t)
    return w


def _torch_trajectory(opt_cls, **kw):
    p = nn.Parameter(torch.zeros(7, dtype=F64))
    opt = opt_cls([p], foreach=True, **kw)

    def fn(w, g, t):
        if t == 1:
            p.data.copy_(w)
        p.grad = g
        opt.step()
        w.copy_(p.detach())

    return _trajectory(fn)


@pytest.mark.parametrize(
    "kw, ref",
    [
        (dict(), dict()),
        (dict(weight_decay=0.05), dict(weight_decay=0.05)),  # decay defaults to l2, r = 1
        # independent with the default eta = 1: shrink wd, i.e. decoupled with wd / lr
        (dict(weight_decay=0.05, decay="independent"), dict(weight_decay=0.5)),
    ],
)
@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_functional_defaults_equal_torch_optim(family, kw, ref):
    """Only the required arguments, plus the keywords shown: torch.optim.SGD (momentum 0) /
    Adam (betas 0.9, 0.999, eps 1e-8); independent decay compared with SGD's l2 (plain SGD:
    the same update) or AdamW."""
    lr = 0.1
    with torch.no_grad():
        if family == "sgd":
            returned = []
            got = _trajectory(
                lambda w, g, t: returned.append(sgd_step([w], [g], None, lr=lr, **kw))
            )
            assert returned == [None] * 4  # no momentum buffers by default
            want = _torch_trajectory(torch.optim.SGD, lr=lr, **ref)
        else:
            m, v = torch.zeros(7, dtype=F64), torch.zeros(7, dtype=F64)
            got = _trajectory(lambda w, g, t: adam_step([w], [g], [m], [v], step=t, lr=lr, **kw))
            opt = torch.optim.AdamW if kw.get("decay") == "independent" else torch.optim.Adam
            want = _torch_trajectory(opt, lr=lr, **ref)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)


def test_adam_step_amsgrad_needs_its_buffers():
    w, g = [torch.ones(2, dtype=F64)], [torch.ones(2, dtype=F64)]
    m, v = [torch.zeros(2, dtype=F64)], [torch.zeros(2, dtype=F64)]
    with pytest.raises(ValueError, match=r"^max_exp_avg_sqs: required when amsgrad=True"):
        adam_step(w, g, m, v, None, step=1, lr=0.1, amsgrad=True)


@pytest.mark.parametrize("flat_state, scratch", [(True, False), (False, True), (True, True)])
def test_adam_step_on_flat_state_and_scratch_equals_plain_lists(flat_state, scratch):
    """FlatList state (chunked ops) and a denom_out scratch change no bit of the result; a
    tensor above CHUNK elements and runs of small ones, l2 decay, amsgrad."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3,), (50, 50), (4, 5), (7,)]
    init = [torch.randn(s, generator=gen, dtype=F64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=F64) for s in shapes] for _ in range(5)]

    def run(flat: bool, denom: bool) -> list[torch.Tensor]:
        w = [t.clone() for t in init]
        state = [FlatList(w) if flat else [torch.zeros_like(t) for t in w] for _ in range(3)]
        out = FlatList(w) if denom else None
        for t, gs in enumerate(grads, start=1):
            g_before = [x.clone() for x in gs]
            adam_step(w, gs, *state, step=t, lr=1e-2, weight_decay=0.1, amsgrad=True, denom_out=out)
            assert all(torch.equal(a, b) for a, b in zip(gs, g_before))  # grads untouched
        return w

    for a, b in zip(run(flat_state, scratch), run(False, False)):
        assert torch.equal(a, b)


# -- param groups ---------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)  # weight 72, bias 4
        self.bn = nn.BatchNorm2d(4)  # weight 4, bias 4
        self.fc = nn.Linear(8, 5)  # weight 40, bias 5
        self.LayerNorm = nn.LayerNorm(5)  # weight 5, bias 5
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 5))  # 15, 3-d
        self.scale = nn.Parameter(torch.ones(5))  # 5, 1-d, not a norm or bias by name
        self.frozen = nn.Parameter(torch.ones(7, 7), requires_grad=False)


def test_param_groups_timm_rule():
    model = Tiny()
    groups, report = param_groups(model, 0.05, rule="timm")
    assert report["decay"]["names"] == ["pos_embed", "conv.weight", "fc.weight"]
    assert report["decay"]["tensors"] == 3 and report["decay"]["elements"] == 72 + 40 + 15
    assert (
        report["no_decay"]["tensors"] == 7 and report["no_decay"]["elements"] == 4 + 8 + 5 + 10 + 5
    )
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert groups[0]["params"][1] is model.conv.weight

    class WithSkip(Tiny):
        def no_weight_decay(self):
            return {"pos_embed", "fc.*"}

    _, report = param_groups(WithSkip(), 0.05, rule="timm")
    assert report["decay"]["names"] == ["conv.weight"]


def test_param_groups_names_rule_substrings_and_globs():
    _, report = param_groups(Tiny(), 0.05, rule="names")  # default: bias, norm, bn
    assert report["no_decay"]["names"] == [
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "fc.bias",
        "LayerNorm.weight",
        "LayerNorm.bias",
    ]
    assert "scale" in report["decay"]["names"]  # 1-d but not matched by name
    _, report = param_groups(Tiny(), 0.05, rule="names", no_decay_names=["*.bias", "scale"])
    assert report["no_decay"]["names"] == [
        "scale",
        "conv.bias",
        "bn.bias",
        "fc.bias",
        "LayerNorm.bias",
    ]
    _, report = param_groups(Tiny(), 0.05, rule="names", no_decay_names="layernorm")
    assert report["no_decay"]["names"] == ["LayerNorm.weight", "LayerNorm.bias"]


def test_param_groups_all_rule_and_errors():
    groups, report = param_groups(Tiny(), 0.05, rule="all")
    assert report["no_decay"]["tensors"] == 0 and groups[1]["params"] == []
    assert report["decay"]["tensors"] == 10  # the frozen tensor is left out
    opt = Adam(groups, lr=1e-3)  # the empty second group is fine
    assert len(opt.param_groups) == 2
    with pytest.raises(
        ValueError,
        match="rule='hf' is invalid; allowed: timm, names, scale_invariant, scale_invariant_head, scale_invariant_head_norm, all",
    ):
        param_groups(Tiny(), 0.05, rule="hf")
    with pytest.raises(ValueError, match="weight_decay=-1 is invalid"):
        param_groups(Tiny(), -1, rule="timm")


def test_param_groups_drive_optimizer():
    """Exempt tensors see no decay: with zero grads only groups[0] shrinks."""
    model = Tiny().double()
    before = copy.deepcopy(model)
    groups, _ = param_groups(model, 0.1, rule="timm")
    opt = SGD(groups, lr=0.5, decay="decoupled")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed = {id(p) for p in groups[0]["params"]}
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        factor = 1 - 0.05 if id(p) in decayed else 1.0
        assert torch.equal(p.detach(), q.detach() * factor) or torch.allclose(
            p, q * factor, rtol=1e-15
        ), name


# -- weight-decay schedules -----------------------------------------------------------------


def test_wd_schedule_values_at_known_steps():
    def mults(kind, **kw):
        s = WeightDecayScheduler(SGD([one_param([1.0])], lr=0.1, weight_decay=1.0), kind, 8, **kw)
        return [s.multiplier(t) for t in (0, 2, 4, 6, 8, 12)]

    assert mults("constant") == [1.0] * 6
    assert mults("linear") == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert mults("linear", start=1.0, end=0.2) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    c = 0.5 * (1 - math.cos(math.pi / 4))
    assert mults("cosine") == pytest.approx([0.0, c, 0.5, 1 - c, 1.0, 1.0])
    assert mults("cosine", start=1.0, end=0.0) == pytest.approx([1.0, 1 - c, 0.5, c, 0.0, 0.0])
    assert mults("step", gamma=0.1) == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01, 0.01])
    assert mults("step", gamma=2.0, milestones=(0.25,)) == pytest.approx([1, 2, 2, 2, 2, 2])


def test_wd_schedule_drives_group_weight_decay_independently_of_lr():
    p, q = one_param([1.0]), one_param([1.0])
    opt = Adam([{"params": [p]}, {"params": [q], "weight_decay": 0.0}], lr=0.1, weight_decay=0.2)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    wd_sched = WeightDecayScheduler(opt, "linear", total_steps=4)
    assert opt.param_groups[0]["weight_decay"] == 0.0  # m(0) applied at construction
    seen = []
    for _ in range(5):
        p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
        opt.step()
        seen.append((opt.param_groups[0]["weight_decay"], opt.param_groups[0]["lr"]))
        lr_sched.step()
        wd_sched.step()
    assert [s[0] for s in seen] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert [s[1] for s in seen] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025, 0.02])
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert wd_sched.get_last_wd() == pytest.approx([0.2, 0.0])


def test_wd_schedule_state_dict_round_trip():
    opt = SGD([one_param([1.0])], lr=0.1, weight_decay=0.1)
    s = WeightDecayScheduler(opt, "cosine", total_steps=10, start=1.0, end=0.0)
    for _ in range(3):
        s.step()
    state = s.state_dict()
    opt_state = copy.deepcopy(opt.state_dict())
    opt2 = SGD([one_param([1.0])], lr=0.1, weight_decay=0.1)
    s2 = WeightDecayScheduler(opt2, "constant")
    opt2.load_state_dict(opt_state)
    s2.load_state_dict(state)
    assert s2.kind == "cosine" and s2.t == 3
    assert opt2.param_groups[0]["weight_decay"] == opt.param_groups[0]["weight_decay"]
    s.step()
    s2.step()
    assert opt2.param_groups[0]["weight_decay"] == opt.param_groups[0]["weight_decay"]
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1 * s.multiplier(4))


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(kind="exp"), "kind='exp' is invalid; allowed: constant, linear, cosine, step"),
        (dict(kind="linear", total_steps=0), "total_steps=0 is invalid"),
        (dict(kind="step", milestones=(2,)), "milestones=.* fractions of total_steps"),
        (dict(kind="linear", start=-1.0), "start=-1.0 is invalid"),
    ],
)
def test_wd_schedule_bad_arguments(kw, needle):
    with pytest.raises(ValueError, match=needle):
        WeightDecayScheduler(SGD([one_param([1.0])], lr=0.1), **kw)


# -- loss penalty, normalized decay ---------------------------------------------------------


def test_l2_penalty_value_and_exact_gradient():
    w = [one_param([1.0, -2.0]), one_param([[0.0, 3.0]]), one_param([0.0])]
    pen = l2_penalty(w, 0.2)
    assert pen.item() == pytest.approx(0.1 * (1 + 4 + 9))
    pen.backward()
    for p in w:
        assert torch.equal(p.grad, 0.2 * p.detach())  # no nan at zero, exactly wd*w
    assert l2_penalty(w, 0.0).item() == 0.0 and l2_penalty([], 0.1).item() == 0.0


def test_l2_penalty_on_param_groups_uses_each_groups_wd():
    groups, _ = param_groups(Tiny().double(), 0.3, rule="timm")
    pen = l2_penalty(groups, 0.3)
    expect = 0.15 * sum(p.detach().square().sum() for p in groups[0]["params"])
    assert pen.item() == pytest.approx(expect.item())
    assert pen.dtype == torch.float64
    zero = l2_penalty([{"params": groups[1]["params"], "weight_decay": 0.0}], 0.3)
    assert zero.item() == 0.0


def test_normalized_weight_decay():
    # lam = lam_norm * sqrt(b / (B * T))
    assert normalized_weight_decay(0.05, 128, 50000, 100) == pytest.approx(
        0.05 * math.sqrt(128 / 5e6)
    )
    for bad in [(0.05, 0, 1, 1), (0.05, 1, 0, 1), (0.05, 1, 1, 0), (-1.0, 1, 1, 1)]:
        with pytest.raises(ValueError, match="is invalid; allowed"):
            normalized_weight_decay(*bad)


# -- the bench command ----------------------------------------------------------------------


def test_bench_optim_help_and_tiny_run(capsys):
    from harness.bench.__main__ import main as bench_main
    from harness.bench.optim import main, resnet18_shapes

    assert len(resnet18_shapes()) == 62
    assert sum(math.prod(s) for s in resnet18_shapes()) == 11_689_512
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--repeats" in capsys.readouterr().out
    argv = ["--sets", "small", "--small-count", "20", "--repeats", "2", "--steps", "1"]
    assert bench_main(["optim", *argv]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| small")]
    assert len(rows) == 8 and "python loop" in out and "machine:" in out
    with pytest.raises(SystemExit) as exc:
        main(["--sets", "nope"])
    assert exc.value.code == 2
