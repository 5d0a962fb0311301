"""Step time of harness.optim against torch.optim: ``python -m harness.bench optim``.

For each parameter set and each of our optimizers (SGD with momentum and Adam, each with
``decay`` = l2 / decoupled / independent) the table gives the median time of one
``optimizer.step()`` for ours and for torch.optim's foreach counterpart
(``SGD(momentum, weight_decay, foreach=True)``; ``Adam(weight_decay, foreach=True)`` for l2,
``AdamW(foreach=True)`` for decoupled / independent), and the ratio ours/torch: the median over
repeats of the per-repeat ratio. Each repeat times both back to back in alternating order, so
load from other processes hits both alike. Gradients are fixed random tensors (no backward).

Parameter sets:
- ``resnet18``: the 62 tensors of torchvision's ResNet-18 (11.7M parameters).
- ``small``:    2,000 small tensors (vectors and matrices of 16 to 1,024 elements).

Rows marked ``python loop`` time decoupled decay written as a plain Python loop over the
parameters (``p.mul_(1 - lr * wd)``, then the SGD-momentum or Adam update, one ``mul_`` / ``add_``
per tensor) against the same torch counterpart.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch

from harness.optim import SGD, Adam

SGD_KW = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
ADAM_KW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
DECAYS = ("l2", "decoupled", "independent")


def resnet18_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's resnet18 (62 tensors, 11,689,512 elements)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            cin = c_in if block == 0 else c_out
            shapes += [(c_out, cin, 3, 3), (c_out,), (c_out,), (c_out, c_out, 3, 3)]
            shapes += [(c_out,), (c_out,)]
            if block == 0 and (stride != 1 or cin != c_out):
                shapes += [(c_out, cin, 1, 1), (c_out,), (c_out,)]
        c_in = c_out
    shapes += [(num_classes, 512), (num_classes,)]
    return shapes


def small_shapes(n: int = 2000, seed: int = 0) -> list[tuple[int, ...]]:
    """``n`` small tensors: alternately vectors and matrices, 16 to 1,024 elements each."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(4, 33, (n, 2), generator=g).tolist()
    return [(a * b,) if i % 2 else (a, b) for i, (a, b) in enumerate(sizes)]


SETS: dict[str, Callable[[int], list[tuple[int, ...]]]] = {
    "resnet18": lambda n: resnet18_shapes(),
    "small": small_shapes,
}


class PythonLoopSGD(torch.optim.Optimizer):
    """SGD with momentum and decoupled decay as a plain loop: one Python iteration per parameter."""

    def __init__(self, params: Any, lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1 - lr * wd)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = p.grad.clone()
                else:
                    state["momentum_buffer"].mul_(mom).add_(p.grad)
                p.add_(state["momentum_buffer"], alpha=-lr)


class PythonLoopAdamW(torch.optim.Optimizer):
    """AdamW (decay ``p *= 1 - lr * wd``, then the Adam update) as a per-parameter Python loop."""

    def __init__(self, params: Any, lr: float, betas: Any, eps: float, weight_decay: float) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                p.mul_(1 - lr * wd)
                state["exp_avg"].lerp_(p.grad, 1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (state["exp_avg_sq"].sqrt() / (1 - b2**t) ** 0.5).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1**t))


def _params(shapes: list[tuple[int, ...]], seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.05)
        p.grad = torch.randn(s, generator=g) * 0.01
        params.append(p)
    return params


def _pairs(shapes: list[tuple[int, ...]], python_loop: bool) -> list[tuple[str, str, Any, Any]]:
    """(optimizer, decay, make_ours, make_torch) rows; each make_* builds on fresh params."""
    rows: list[tuple[str, str, Any, Any]] = []

    def fresh() -> list[torch.nn.Parameter]:
        return _params(shapes, 0)

    for decay in DECAYS:
        rows.append(
            (
                "SGD",
                decay,
                lambda d=decay: SGD(fresh(), decay=d, **SGD_KW),
                lambda: torch.optim.SGD(fresh(), foreach=True, **SGD_KW),
            )
        )
    if python_loop:
        rows.append(
            (
                "SGD",
                "decoupled (python loop)",
                lambda: PythonLoopSGD(fresh(), **SGD_KW),
                lambda: torch.optim.SGD(fresh(), foreach=True, **SGD_KW),
            )
        )
    for decay in DECAYS:
        ref = torch.optim.Adam if decay == "l2" else torch.optim.AdamW
        rows.append(
            (
                "Adam",
                decay,
                lambda d=decay: Adam(fresh(), decay=d, **ADAM_KW),
                lambda r=ref: r(fresh(), foreach=True, **ADAM_KW),
            )
        )
    if python_loop:
        rows.append(
            (
                "Adam",
                "decoupled (python loop)",
                lambda: PythonLoopAdamW(fresh(), **ADAM_KW),
                lambda: torch.optim.AdamW(fresh(), foreach=True, **ADAM_KW),
            )
        )
    return rows


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _time(opt: torch.optim.Optimizer, steps: int, clock: Callable[[], float]) -> float:
    t0 = clock()
    for _ in range(steps):
        opt.step()
    return (clock() - t0) / steps


def measure(
    make_ours: Any, make_torch: Any, repeats: int, steps: int, warmup: int, clock: str = "wall"
) -> dict:
    """Median step times (s) of both and the median of the paired per-repeat ratios."""
    tick = CLOCKS[clock]
    ours, ref = make_ours(), make_torch()
    for _ in range(warmup):
        ours.step()
        ref.step()
    t_ours, t_ref = [], []
    for r in range(repeats):
        if r % 2 == 0:
            t_ours.append(_time(ours, steps, tick))
            t_ref.append(_time(ref, steps, tick))
        else:
            t_ref.append(_time(ref, steps, tick))
            t_ours.append(_time(ours, steps, tick))
    return {
        "ours": statistics.median(t_ours),
        "torch": statistics.median(t_ref),
        "ratio": statistics.median(a / b if b > 0 else float("nan") for a, b in zip(t_ours, t_ref)),
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench optim",
        description="Step time of harness.optim vs torch.optim's foreach optimizers "
        "(median of alternating repeats; ratio ours/torch measured in one run).",
    )
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per row (default 9)")
    ap.add_argument(
        "--steps", type=int, default=0, help="steps per repeat (default: 3 resnet18, 10 small)"
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument(
        "--sets",
        default="resnet18,small",
        help="comma-separated parameter sets: resnet18, small (default both)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument(
        "--small-count", type=int, default=2000, help="tensors in the small set (default 2000)"
    )
    ap.add_argument("--no-python-loop", action="store_true", help="skip the python-loop rows")
    ap.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time, robust to other processes' "
        "load on a shared machine (use with --threads 1: it sums all threads)",
    )
    args = ap.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown or args.repeats < 1 or min(args.steps, args.warmup, args.threads) < 0:
        ap.error(
            f"--sets must be among {', '.join(SETS)}; --repeats >= 1; "
            "--steps, --warmup, --threads >= 0"
            + (f" (got {', '.join(unknown)})" if unknown else "")
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(
        f"repeats: {args.repeats} alternating pairs; clock: {args.clock}; float32 on CPU; "
        f"load average {_loadavg()}\n"
    )
    print("| set | optimizer | decay | ours ms | torch foreach ms | ratio ours/torch |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name in sets:
        shapes = SETS[name](args.small_count)
        steps = args.steps or (3 if name == "resnet18" else 10)
        label = f"{name} ({len(shapes)} tensors, {sum(_numel(s) for s in shapes) / 1e6:.2f}M)"
        for opt_name, decay, make_ours, make_torch in _pairs(shapes, not args.no_python_loop):
            r = measure(make_ours, make_torch, args.repeats, steps, args.warmup, args.clock)
            print(
                f"| {label} | {opt_name} | {decay} | {r['ours'] * 1e3:.2f} | "
                f"{r['torch'] * 1e3:.2f} | {r['ratio']:.3f} |",
                flush=True,
            )
    return 0


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    raise SystemExit(main())
