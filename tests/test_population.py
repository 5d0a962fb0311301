"""Population training: each member equals its sequential trial; divergence stays contained."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

from harness.config import compose_config
from harness.population import run_population, supports, train_population
from harness.train import run_trial

RTOL = 1e-10  # float64; op order differs from torch.optim by rounding only (BatchNorm+Adam: ~2e-12)
SHRINK_RTOL = 1e-12  # independent: the optimizer's eta_t is lr_t / lr_0, one rounding away
# float32: a member and its sequential trial are two float32 evaluations of one trajectory that
# sum in different orders (batched GEMMs and reductions against per-member ones). How far they
# part depends on the CPU's kernels (vector width, FMA, blocking), so no fixed tolerance holds on
# every CPU. The bound is measured where the test runs: the sequential trial again in float64 is
# the reference, and r = max |sequential32 - reference64| / |reference64| over every report of
# every member is this machine's float32 rounding after the same steps. A population member whose
# rounding is at most F32_FACTOR - 1 times the sequential trial's is within F32_FACTOR * r of it
# (triangle inequality); F32_FLOOR (one unit roundoff per step) keeps the bound above zero when
# r happens to be tiny. A wrong lr or wd for a member moves it by >= 1e-3, orders above the bound.
F32_FACTOR = 4.0
F32_UNIT = 2.0**-24  # float32 unit roundoff


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def cells(model: str, opt: str, decay: str, grid, extra=(), groups="timm", dtype="float64"):
    base = compose_config(
        [
            f"model={model}",
            f"optimizer={opt}",
            f"optimizer.decay={decay}",
            f"train.dtype={dtype}",
            "train.epochs=2",
            "data.num_samples=1000",
            "data.val_size=200",
            "model.width=16",
            "tracking=disabled",
            f"optimizer.param_groups={groups}",
            *extra,
        ]
    )
    return grid_cells(base, grid)


def grid_cells(base, grid):
    """One copy of the config ``base`` per ``(lr, wd)`` of ``grid``."""
    out = []
    for lr, wd in grid:
        c = copy.deepcopy(base)
        c.optimizer.lr, c.optimizer.weight_decay = lr, wd
        out.append(c)
    return out


def assert_same(pop, seq, rtol=RTOL, err_tol=0.0):
    assert pop.diverged == seq.diverged
    assert pop.steps == seq.steps
    for key in ("test_error", "val_error", "final_val_error"):
        assert getattr(pop, key) == pytest.approx(getattr(seq, key), rel=0, abs=err_tol), key
    for key in ("train_loss", "weight_norm"):
        assert getattr(pop, key) == pytest.approx(getattr(seq, key), rel=rtol, abs=0), key


def recorder(history: list):
    """A ``report(step, metrics)`` callback appending ``(step, a copy of metrics)``."""
    return lambda step, metrics: history.append((step, dict(metrics)))


def assert_same_history(pop, seq, rtol=RTOL, err_tol=0.0):
    """Every report of a member equals its sequential trial's: same steps, same keys, the
    schedule's numbers exactly, the measured ones within ``rtol`` (errors within ``err_tol``)."""
    assert pop and [s for s, _ in pop] == [s for s, _ in seq]
    for (step, a), (_, b) in zip(pop, seq):
        assert a.keys() == b.keys(), step
        for key in ("lr_t", "eta", "epoch"):
            assert a[key] == b[key], (step, key)
        assert a["shrink"] == pytest.approx(b["shrink"], rel=SHRINK_RTOL, abs=0), step
        assert a["val_error"] == pytest.approx(b["val_error"], rel=0, abs=err_tol), step
        for key in ("train_loss", "weight_norm"):
            assert a[key] == pytest.approx(b[key], rel=rtol, abs=0), (step, key)


@contextlib.contextmanager
def population_log():
    """The records of the ``lrwd.population`` logger (DEBUG and up) while the block runs."""
    logger = logging.getLogger("lrwd.population")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    level, disabled = logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled


def step_modes(records) -> list[str]:
    return [r.step_mode for r in records if hasattr(r, "step_mode")]


def assert_population_equals_sequential(cfgs, rtol=RTOL, err_tol=0.0):
    """``run_population`` (as one population) against ``run_trial`` per cell: the results and
    every reported metrics dict."""
    histories: list[list] = [[] for _ in cfgs]
    with population_log() as records:
        pops = run_population(cfgs, [recorder(h) for h in histories])
    assert len(step_modes(records)) == 1  # one population, not the sequential fallback
    for cfg, pop, history in zip(cfgs, pops, histories):
        seq_history: list = []
        seq = run_trial(cfg, report=recorder(seq_history))
        assert_same(pop, seq, rtol, err_tol)
        assert_same_history(history, seq_history, rtol, err_tol)


ADAM_GRID = [(1e-3, 1e-4), (3e-3, 1e-2), (1e-2, 1e-1)]
SGD_GRID = [(1e-2, 1e-4), (1e-1, 1e-2)]


def variant_cells(model: str, variant: str, groups: str, dtype: str = "float64", grid=None):
    """Cells of ``variant`` = ``optimizer/decay[+nesterov]``, a report every 3 of 12 steps."""
    opt, rest = variant.split("/")
    decay, *flags = rest.split("+")
    extra = ["train.eval_every=3", *(["optimizer.nesterov=true"] if "nesterov" in flags else [])]
    grid = grid or (ADAM_GRID if opt == "adam" else SGD_GRID)
    return cells(model, opt, decay, grid, extra, groups, dtype)


@pytest.mark.parametrize("model", ["mlp", "cnn", "mlp_bn", "cnn_bn"])
@pytest.mark.parametrize(
    "variant",
    [
        "adam/l2",
        "adam/independent",
        "adam/loss",
        "sgd/l2",
        "sgd/decoupled",
        "sgd/independent",
        "sgd/independent+nesterov",
    ],
)
def test_members_equal_sequential_trials(model, variant):
    """float64, ``param_groups=timm`` (biases and norm parameters exempt): results and
    histories."""
    assert_population_equals_sequential(variant_cells(model, variant, "timm"))


@pytest.mark.parametrize("model", ["mlp", "cnn_bn"])
@pytest.mark.parametrize(
    "variant",
    [
        "adam/l2",
        "adam/loss",
        "adam/decoupled",
        "sgd/l2",
        "sgd/l2+nesterov",
        "sgd/loss",
        "sgd/independent",
    ],
)
def test_members_equal_sequential_trials_when_every_tensor_decays(model, variant):
    """``param_groups=all``, as every shipped config: biases, BatchNorm gains and shifts decay
    too (float64, results and histories)."""
    assert_population_equals_sequential(variant_cells(model, variant, "all"))


# Adam runs only on the models without BatchNorm here: a bias feeding a BatchNorm has an
# analytically zero gradient, and in float32 its rounding noise (~1e-8) is of the order of
# Adam's eps, so Adam turns it into steps of size ~lr whose direction depends on summation
# order; the two paths then part by ~1e-4 in the weight norm although both are right
@pytest.mark.parametrize(
    "model,variant,groups",
    [
        ("mlp", "adam/l2", "all"),
        ("mlp", "adam/loss", "all"),
        ("cnn", "adam/independent", "all"),
        ("mlp_bn", "sgd/l2+nesterov", "all"),
        ("cnn_bn", "sgd/decoupled", "all"),
        ("cnn", "sgd/loss", "all"),
        ("cnn_bn", "sgd/independent", "timm"),
    ],
)
def test_members_equal_sequential_trials_in_float32(model, variant, groups):
    """float32 on short stable runs (12 steps, small lr): every member within the float32
    rounding this machine shows against a float64 reference (``float32_bound``); errors within
    one validation / test sample more than the float64 reference moved them (a near-tie of two
    logits may fall either way)."""
    grid = (
        [(1e-3, 1e-4), (3e-3, 1e-2)] if variant.startswith("adam") else [(1e-2, 1e-4), (5e-2, 1e-2)]
    )
    cfgs = variant_cells(model, variant, groups, "float32", grid)
    rtol, err_gap = float32_bound(cfgs)
    one_sample = 1 / 200 + 1e-12  # 200 validation and 200 test samples
    assert_population_equals_sequential(cfgs, rtol, err_tol=one_sample + err_gap)


def float32_bound(cfgs) -> tuple[float, float]:
    """(relative tolerance, error gap) for the float32 members of ``cfgs`` on this machine.

    Each cell's sequential trial runs in float32 and in float64 (same data, initialization and
    batches; the float64 model starts from the float32 one's initial values). ``r`` is the
    largest relative gap of ``train_loss`` / ``weight_norm`` between the two over all reports and
    cells; the tolerance is ``F32_FACTOR * r + steps * F32_UNIT``. The error gap is the largest
    difference of the reported errors between the two (whole samples)."""
    r, err_gap, steps = 0.0, 0.0, 0
    for cfg in cfgs:
        ref_cfg = copy.deepcopy(cfg)
        ref_cfg.train.dtype = "float64"
        h32: list = []
        h64: list = []
        s32 = run_trial(cfg, report=recorder(h32))
        s64 = run_trial(ref_cfg, report=recorder(h64))
        assert [s for s, _ in h32] == [s for s, _ in h64] and s32.steps == s64.steps
        steps = max(steps, s32.steps)
        pairs = [(a, b) for (_, a), (_, b) in zip(h32, h64)]
        pairs.append((s32.to_dict(), s64.to_dict()))
        for a, b in pairs:
            for key in ("train_loss", "weight_norm"):
                r = max(r, abs(a[key] - b[key]) / abs(b[key]))
            for key in ("val_error", "test_error", "final_val_error"):
                if key in a and key in b:
                    err_gap = max(err_gap, abs(a[key] - b[key]))
    return F32_FACTOR * r + steps * F32_UNIT, err_gap


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_loss_decay_reports_the_shrink_of_l2(opt):
    """``decay=loss`` puts wd*w into the gradient through autograd, as ``l2`` does inside the
    optimizer: both report the shrink ``lr_t * wd``, in a population as in a sequential trial."""
    grid = [(3e-3, 1e-2), (1e-3, 0.5)]
    loss = cells("mlp", opt, "loss", grid, ["train.eval_every=4"])
    l2 = cells("mlp", opt, "l2", grid, ["train.eval_every=4"])
    pop: list[list] = [[], []]
    run_population(loss, [recorder(h) for h in pop])
    for i, (cfg_loss, cfg_l2) in enumerate(zip(loss, l2)):
        seq_loss: list = []
        seq_l2: list = []
        run_trial(cfg_loss, report=recorder(seq_loss))
        run_trial(cfg_l2, report=recorder(seq_l2))
        shrinks = [metrics["shrink"] for _, metrics in seq_l2]
        assert len(shrinks) == 3 and all(s > 0 for s in shrinks)
        assert [metrics["shrink"] for _, metrics in seq_loss] == shrinks
        assert [metrics["shrink"] for _, metrics in pop[i]] == shrinks
        for _, metrics in seq_l2:
            assert metrics["shrink"] == pytest.approx(metrics["lr_t"] * grid[i][1], rel=1e-12)


def test_diverging_member_is_frozen_and_others_unaffected():
    cfgs = cells("mlp", "sgd", "l2", [(1e-2, 1e-4), (1e150, 0.0), (3e-2, 1e-3)])
    results = train_population(cfgs, [None] * 3)
    assert results[1].diverged and results[1].test_error == 1.0
    for i in (0, 2):
        assert_same(results[i], run_trial(cfgs[i]))


def test_reports_and_pruning_per_member():
    cfgs = cells("mlp", "adam", "independent", [(1e-3, 1e-4), (3e-3, 1e-3)])
    seen = {0: [], 1: []}

    class Pruned(Exception):
        pass

    def hook(m):
        def report(step, metrics):
            seen[m].append((step, metrics["val_error"]))
            if m == 1:
                raise Pruned()

        return report

    results = run_population(cfgs, [hook(0), hook(1)])
    assert isinstance(results[1], Pruned) and len(seen[1]) == 1
    assert len(seen[0]) == 2 and not isinstance(results[0], Exception)


def test_unsupported_configs_fall_back_to_sequential():
    cfgs = cells(
        "mlp", "adam", "l2", [(1e-3, 1e-4), (3e-3, 1e-3)], extra=["optimizer.relative=true"]
    )
    assert not supports(cfgs[0])
    for cfg, r in zip(cfgs, run_population(cfgs, [None, None])):
        assert_same(r, run_trial(cfg))


@pytest.mark.slow
def test_resnet_members_equal_sequential_trials_on_fake_cifar(tmp_path):
    """The CIFAR ResNet population (grouped 2-D convs, BatchNorm over P*C channels, projection
    shortcuts, augmentation shared by the members) equals its sequential trials."""
    from tests.test_workloads import _fake_cifar

    _fake_cifar(tmp_path, n=24)
    base = compose_config(
        [
            "data=cifar10",
            "model=resnet_tiny",
            "model.width=4",
            f"data.root={tmp_path}",
            "data.val_size=20",
            "data.batch_size=25",
            "train.dtype=float64",
            "train.epochs=2",
            "tracking=disabled",
            "optimizer=sgd",
            "optimizer.decay=independent",
            "optimizer.param_groups=timm",
        ]
    )
    assert supports(base)
    cfgs = []
    for lr, wd in [(1e-2, 1e-4), (1e-1, 1e-2), (3e-2, 0.0)]:
        c = copy.deepcopy(base)
        c.optimizer.lr, c.optimizer.weight_decay = lr, wd
        cfgs.append(c)
    for cfg, pop in zip(cfgs, train_population(cfgs, [None] * len(cfgs))):
        assert_same(pop, run_trial(cfg))


def test_normalized_weight_decay_members_equal_sequential_trials():
    cfgs = cells(
        "mlp", "adam", "independent", [(1e-3, 0.05), (3e-3, 0.5)], ["optimizer.normalized=true"]
    )
    assert supports(cfgs[0])
    for cfg, pop in zip(cfgs, train_population(cfgs, [None] * len(cfgs))):
        assert_same(pop, run_trial(cfg))
    plain = cells("mlp", "adam", "independent", [(3e-3, 0.5)])
    assert train_population(plain, [None])[0].weight_norm != pytest.approx(
        train_population(cfgs[1:], [None])[0].weight_norm, rel=1e-6
    )  # normalization really changed the decay


@pytest.mark.slow
def test_compiled_step_equals_sequential_trials(monkeypatch):
    """train.compile=true runs the torch.compile'd loss and update (no eager fallback: the log
    says so and no compile warning is issued), and its members equal their sequential trials.
    That inductor compiled them is read from torch's own counters, not the harness's: Dynamo
    captured whole graphs (no graph break) and inductor built one for each of the two steps (an
    FX-graph-cache miss, hit or bypass each), which ``backend="eager"`` never does."""
    from torch._dynamo.utils import counters

    import harness.population_step as hp

    monkeypatch.setattr(hp, "_COMPILED", {})  # compiled afresh here, whatever ran before
    monkeypatch.setattr(hp, "_COMPILE_FAILED", {})
    torch._dynamo.reset()
    counters.clear()
    cfgs = cells(
        "cnn_bn", "adam", "independent", [(1e-3, 1e-4), (3e-3, 1e-2)], extra=["train.compile=true"]
    )
    with warnings.catch_warnings(record=True) as caught, population_log() as records:
        warnings.simplefilter("always")
        results = train_population(cfgs, [None] * len(cfgs))
    assert not [w for w in caught if str(w.message).startswith("population training:")]
    assert step_modes(records) == ["compiled"]
    built = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache_")}
    assert sum(built.values()) >= 2, dict(counters["inductor"])
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"], dict(counters)
    for cfg, pop in zip(cfgs, results):
        assert_same(pop, run_trial(cfg))


def test_failed_compilation_runs_eagerly_and_says_so(monkeypatch):
    """When torch.compile fails the step runs eagerly (same results), with a RuntimeWarning
    and a log line naming the failure; later populations in the process run eagerly too."""
    import harness.population_step as hp

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(hp, "_COMPILED", {})
    monkeypatch.setattr(hp, "_COMPILE_FAILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    cfgs = cells("mlp", "sgd", "l2", [(1e-2, 1e-4), (1e-1, 1e-2)], extra=["train.compile=true"])
    with warnings.catch_warnings(record=True) as caught, population_log() as records:
        warnings.simplefilter("always")
        results = train_population(cfgs, [None] * len(cfgs))
    ours = [str(w.message) for w in caught if str(w.message).startswith("population training:")]
    failed = {message.split()[4] for message in ours}  # "...: torch.compile of NAME failed"
    assert failed == {"_population_loss", "_sgd_update"}
    assert step_modes(records) == ["eager"]
    assert records[-1].levelno == logging.WARNING
    assert "no compiler here" in records[-1].getMessage()
    for cfg, pop in zip(cfgs, results):
        assert_same(pop, run_trial(cfg))
    with population_log() as records:
        train_population(cfgs, [None] * len(cfgs))
    assert step_modes(records) == ["eager"] and "no compiler here" in records[-1].getMessage()


@pytest.mark.parametrize(
    "k,stride,padding,length",
    [(3, 2, 1, 20), (3, 2, 1, 10), (3, 2, 1, 7), (5, 2, 2, 40), (3, 1, 1, 9), (4, 3, 0, 17)],
)
def test_member_convolutions_equal_conv1d_per_member(k, stride, padding, length):
    """The batched GEMM convolutions (the pair view for kernel 3 / stride 2 / padding 1 on an
    even length, the im2col copy otherwise, the shared first layer) give each member's
    ``F.conv1d`` output and the same gradients for its input, weights and bias (float64)."""
    from harness.population import conv1d_members, conv1d_shared

    torch.manual_seed(0)
    p, b, cin, cout = 3, 4, 5, 6
    opts = dict(dtype=torch.float64)
    w = torch.randn(p, cout, cin, k, **opts, requires_grad=True)
    bias = torch.randn(p, cout, **opts, requires_grad=True)
    h = torch.randn(p, b, length, cin, **opts, requires_grad=True)  # channels-last members
    out = conv1d_members(h, w, bias, stride, padding)
    refs = [
        F.conv1d(h[m].transpose(1, 2), w[m], bias[m], stride=stride, padding=padding)
        for m in range(p)
    ]
    ref = torch.stack(refs).transpose(2, 3)  # [P, B, Lout, Cout]
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, (h, w, bias), g)
    want = torch.autograd.grad(ref, (h, w, bias), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)

    x = torch.randn(b, cin, length, **opts)  # a shared input (the first layer)
    out = conv1d_shared(x, w, bias, stride, padding)
    ref = torch.stack(
        [F.conv1d(x, w[m], bias[m], stride=stride, padding=padding) for m in range(p)]
    ).transpose(2, 3)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_member_convolutions_take_no_per_member_path():
    """Forward and backward of a batched convolution are the same number of kernel calls at
    any P. A GEMM operand that BLAS cannot take (such as the strided tap ``w[..., 0]``) makes
    ``bmm`` copy it member by member, which shows up as ``select`` / ``copy_`` calls growing
    with P (2P more of each per layer before the weights were made contiguous)."""
    from torch.profiler import profile

    from harness.population import conv1d_members, conv1d_shared

    def calls(p: int) -> int:
        torch.manual_seed(0)
        w0 = torch.randn(p, 6, 1, 5, requires_grad=True)
        w = torch.randn(p, 6, 6, 3, requires_grad=True)
        b = torch.randn(p, 6, requires_grad=True)
        x = torch.randn(4, 1, 20)
        with profile() as prof:
            h = torch.relu(conv1d_shared(x, w0, b, 2, 2))
            out = conv1d_members(h, w, b, 2, 1)
            out.backward(torch.randn_like(out))  # a real gradient: sum() would expand a scalar
        return sum(e.count for e in prof.key_averages() if e.key in ("aten::select", "aten::copy_"))

    assert calls(2) == calls(16)


def test_member_batch_norm_equals_batchnorm1d_per_member():
    """Channels-last batch norm of P members: the outputs, gradients and running statistics
    of each member's ``nn.BatchNorm1d`` (train and eval mode, float64)."""
    from harness.population import batch_norm_members

    torch.manual_seed(0)
    p, b, length, c = 3, 8, 5, 4
    bns = [torch.nn.BatchNorm1d(c).double() for _ in range(p)]
    for bn in bns:
        torch.nn.init.uniform_(bn.weight)
        torch.nn.init.uniform_(bn.bias)
    params = {
        "bn.weight": torch.stack([bn.weight.detach() for bn in bns]).requires_grad_(True),
        "bn.bias": torch.stack([bn.bias.detach() for bn in bns]).requires_grad_(True),
    }
    buffers = {
        "bn.running_mean": torch.zeros(p, c).double(),
        "bn.running_var": torch.ones(p, c).double(),
    }
    h = torch.randn(p, b, length, c, dtype=torch.float64, requires_grad=True)
    for step in range(3):
        out = batch_norm_members(h * (step + 1), params, buffers, "bn", 0.1, 1e-5, True)
        ref = torch.stack([bn((h[m] * (step + 1)).transpose(1, 2)) for m, bn in enumerate(bns)])
        torch.testing.assert_close(out, ref.transpose(2, 3), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (h, params["bn.weight"]), g)
    want = torch.autograd.grad(ref.transpose(2, 3), h, g, retain_graph=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    want_w = torch.stack(
        [torch.autograd.grad(ref.transpose(2, 3), bn.weight, g, retain_graph=True)[0] for bn in bns]
    )
    torch.testing.assert_close(got[1], want_w, rtol=1e-12, atol=1e-12)
    for m, bn in enumerate(bns):
        torch.testing.assert_close(buffers["bn.running_mean"][m], bn.running_mean)
        torch.testing.assert_close(buffers["bn.running_var"][m], bn.running_var)
        bn.eval()
    out = batch_norm_members(h, params, buffers, "bn", 0.1, 1e-5, False)
    ref = torch.stack([bn(h[m].transpose(1, 2)) for m, bn in enumerate(bns)]).transpose(2, 3)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_bench_population_tiny_run_uses_the_model_groups_sizes(capsys):
    """``python -m harness.bench population`` runs and measures the model groups' own sizes
    (the default experiment would otherwise make every model 128 wide)."""
    from harness.bench.population import _cfgs, main

    assert int(_cfgs("cnn", 1, 1, "cpu")[0].model.width) == 32
    mlp = _cfgs("mlp", 1, 1, "cpu")[0].model
    assert (int(mlp.width), int(mlp.depth)) == (256, 2)
    argv = ["--models", "cnn", "--sizes", "2", "--epochs", "1", "--sequential", "1"]
    assert main([*argv, "--variants", "eager"]) == 0
    out = capsys.readouterr().out
    assert "eager" in out and "1,000 training samples" in out.replace("\n", " ")
    rows = [line for line in out.splitlines() if "cnn 32" in line]
    assert len(rows) == 2  # the sequential baseline and P=2


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--models", "cnn,resnet20"], "--models"),
        (["--sizes", "8,x"], "--sizes"),
        (["--sizes", "0"], "--sizes"),
        (["--variants", "eager,fast"], "--variants"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bench_population_refuses_bad_options_in_one_line(argv, option, capsys):
    """A bad option is one line naming it and what it takes, exit 2, before anything runs
    (an unknown variant is refused, not run as eager)."""
    from harness.bench.population import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: {option}:" in err.strip().splitlines()[-1]


def test_auto_population_size_is_capped_by_free_memory(monkeypatch):
    """``sweep.population=auto``: 32 on a CPU while memory is plentiful; capped at
    MEMORY_FRACTION of the free memory over the estimated bytes per member; never below 1."""
    import harness.population_plan as hp

    cfg = compose_config(["model=cnn", "model.width=32", "tracking=disabled", "train.device=cpu"])
    per = hp.member_bytes(cfg)
    monkeypatch.setattr(hp, "free_memory_bytes", lambda device: 10**12)
    assert hp.auto_population_size(cfg) == 32
    monkeypatch.setattr(hp, "free_memory_bytes", lambda device: 20 * per)
    assert hp.auto_population_size(cfg) == int(hp.MEMORY_FRACTION * 20)
    monkeypatch.setattr(hp, "free_memory_bytes", lambda device: per // 10)
    assert hp.auto_population_size(cfg) == 1
    monkeypatch.setattr(hp, "free_memory_bytes", lambda device: None)  # unreadable: no cap
    assert hp.auto_population_size(cfg) == 32
    relative = compose_config(["optimizer.relative=true", "tracking=disabled"])
    assert hp.auto_population_size(relative) == 1  # unsupported: the sequential runner


def test_member_bytes_follows_the_model_and_batch():
    """The estimate (model on the meta device) grows with the batch and the model: a CIFAR
    ResNet-20 member needs far more than an MNIST-1D CNN member, float64 twice float32."""
    from harness.population import member_bytes

    def est(*overrides):
        return member_bytes(compose_config([*overrides, "tracking=disabled", "train.device=cpu"]))

    cnn = est("model=cnn", "model.width=32")
    grow_300 = est("model=cnn", "model.width=32", "data.batch_size=400") - cnn
    grow_100 = est("model=cnn", "model.width=32", "data.batch_size=200") - cnn
    assert grow_100 > 0 and grow_300 == pytest.approx(3 * grow_100, rel=1e-3)  # activations
    assert est("model=cnn", "model.width=32", "train.dtype=float64") == 2 * cnn
    resnet = est("model=resnet20", "model.width=16", "data=cifar10")
    assert resnet > 100 * cnn
    assert 300 * 2**20 < resnet < 2 * 2**30  # ResNet-20 (w16), batch 128: ~0.7 GB
