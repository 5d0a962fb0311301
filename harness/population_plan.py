"""How many members a population may have: which configs populations can train
(:func:`supports`) and ``sweep.population=auto`` (:func:`auto_population_size`), from each
member's estimated memory and the device's free memory."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness import registry
from harness.loop import EVAL_BATCH, resolve_device
from harness.models import build_model


def supports(cfg: Any) -> bool:
    """True when ``cfg`` can run in a population (else the sequential runner is used)."""
    o = cfg.optimizer
    family = registry.OPTIMIZERS.get(o.name)
    # every model: the hand-written layers where its entry has them (``population=True``),
    # else harness.population_generic (vmap), which falls back to sequential trials itself
    return (
        family is not None and family.population and not o.relative and o.wd_schedule == "constant"
    )


MEMORY_FRACTION = 0.5  # of the free device memory that sweep.population=auto may plan to use


def member_bytes(cfg: Any) -> int:
    """Estimated memory of one population member for ``cfg``: parameters with their gradient and
    optimizer state (x5), the training batch's activations x3 (outputs, saved for backward, their
    gradients), the evaluation batch's two largest layer outputs. From the model built on the
    ``meta`` device (shapes only, no compute, no data loaded)."""
    if cfg.data.get("_target_"):  # a user's data: its shapes are known once it is loaded
        from harness.data import load_data

        loaded = load_data(cfg.data)
        shape, classes = loaded.input_shape, loaded.num_classes
    else:
        data = registry.dataset(cfg.data.name)
        shape, classes = data.shape, data.classes
    with torch.device("meta"):
        model = build_model(cfg.model, shape, classes)
        outputs: list[int] = []

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            outputs.append(out.numel())

        leaves = [m for m in model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        batch = int(cfg.data.batch_size)
        model(torch.empty(batch, *shape))
        for h in handles:
            h.remove()
    n_params = sum(q.numel() for q in model.parameters())
    per_sample = [n / batch for n in outputs]
    eval_batch = EVAL_BATCH if resolve_device(cfg.train.device).type == "cuda" else 128
    largest = sorted(per_sample)[-2:]
    elems = 5 * n_params + 3 * sum(outputs) + eval_batch * sum(largest)
    return int(elems * (8 if cfg.train.dtype == "float64" else 4))


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (CUDA: ``mem_get_info``; CPU: Linux ``MemAvailable``), or None
    when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def auto_population_size(cfg: Any) -> int:
    """``sweep.population=auto``: 1 for unsupported configs; else 32 on a CPU and 128 on a GPU
    (the measured sweet spots, docs/population.md), capped so that P members' estimated memory
    (:func:`member_bytes`) stays within ``MEMORY_FRACTION`` of the device's free memory. A
    population that still runs out of memory is split in halves (:func:`run_population`)."""
    if not supports(cfg):
        return 1
    device = resolve_device(cfg.train.device)
    p = 128 if device.type == "cuda" else 32
    free = free_memory_bytes(device)
    if free is not None:
        try:
            p = min(p, int(MEMORY_FRACTION * free // max(member_bytes(cfg), 1)))
        except Exception:  # noqa: BLE001 - a user's model that cannot be built on "meta"
            if not cfg.model.get("_target_"):
                raise
    return max(p, 1)
