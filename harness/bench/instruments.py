"""What the instruments cost: ``python -m harness.bench instruments``.

For each model (the model group's own sizes), the same trial is trained with
``train.instruments=false`` and ``true``, alternately, ``--repeats`` times each (median), by the
sequential runner and as a population of ``--population`` members. One report at the end
(``train.eval_every`` = the steps), so the time is the steps plus one evaluation. Prints the
time per step off and on and their difference (``overhead``, the detector's one-off time taken
out), the instruments timed alone on the same tensors (``alone``: before and after each step)
and their share of a step without them (``share``: less noisy than the difference of two
trainings on a shared machine), and the scale-invariance detector's one-off time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from harness.bench.population import model_overrides
from harness.config import compose_config
from harness.instruments import Instruments
from harness.loop import probe_batch, set_up
from harness.optim.groups import scale_invariant_names
from harness.population import train_population
from harness.train import run_trial


def _cfg(model: str, steps: int, instruments: bool, threads: int) -> object:
    return compose_config(
        [
            f"model={model}",
            *model_overrides(model),
            "optimizer=sgd",
            "optimizer.lr=0.1",
            "optimizer.weight_decay=5e-4",
            "tracking=disabled",
            f"train.max_steps={steps}",
            f"train.eval_every={steps}",
            f"train.threads={threads}",
            "train.device=cpu",
            f"train.instruments={str(instruments).lower()}",
        ]
    )


def _members(cfg: object, p: int) -> list:
    out = []
    for i in range(p):
        c = copy.deepcopy(cfg)
        c.optimizer.lr = 0.01 * (10 ** (i / max(p - 1, 1)))
        out.append(c)
    return out


def _detector_s(cfg: object) -> float:
    run = set_up(cfg)
    t0 = time.perf_counter()
    scale_invariant_names(run.model, probe_batch(run))
    return time.perf_counter() - t0


def _instruments_s(cfg: object, p: int, steps: int) -> float:
    """Seconds per step of the instruments alone (before + after, one report at the end) on
    the model's trainable tensors, stacked for ``p`` members."""
    run = set_up(cfg)
    invariant = scale_invariant_names(run.model, probe_batch(run))
    named = [(n, q.detach()) for n, q in run.model.named_parameters() if q.requires_grad]
    tensors = [q.unsqueeze(0).repeat(p, *[1] * q.ndim) for _, q in named]
    inst = Instruments([n for n, _ in named], tensors, invariant, steps)
    t0 = time.perf_counter()
    for step in range(steps):
        inst.before()
        tensors[0].mul_(1.0001)
        inst.after(step, 1.0)
    inst.report()
    return (time.perf_counter() - t0) / steps


def _runner(cfg: object, p: int):
    """A function training ``cfg`` once: a sequential trial (``p`` = 1) or P members."""
    if p == 1:
        return lambda: run_trial(cfg)
    members = _members(cfg, p)
    return lambda: train_population(members, [None] * p)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench instruments",
        description="time per step with train.instruments off and on",
    )
    ap.add_argument("--models", default="mlp_bn,cnn_bn", help="comma list of model names")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per trial")
    ap.add_argument("--population", type=int, default=16, help="members of the population rows")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each setting (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"{'model':<8} {'path':<10} {'ms/step off':>12} {'on':>8} {'overhead':>9} "
        f"{'alone ms':>9} {'share':>6} {'detect ms':>10}"
    )
    for model in args.models.split(","):
        off, on = (_cfg(model, args.steps, flag, args.threads) for flag in (False, True))
        detect = _detector_s(on)
        for path, p in (("sequential", 1), (f"P={args.population}", args.population)):
            runs = {False: _runner(off, p), True: _runner(on, p)}
            runs[False]()  # warm-up (data cache, allocator)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):
                for flag in (False, True):
                    times[flag].append(_timed(runs[flag]))
            t_off = statistics.median(times[False]) / args.steps
            t_on = (statistics.median(times[True]) - detect) / args.steps
            alone = statistics.median(_instruments_s(on, p, args.steps) for _ in range(3))
            print(
                f"{model:<8} {path:<10} {1e3 * t_off:12.3f} {1e3 * t_on:8.3f} "
                f"{100 * (t_on - t_off) / t_off:8.1f}% {1e3 * alone:9.3f} "
                f"{100 * alone / t_off:5.1f}% {1e3 * detect:10.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
