"""Instruments: weight norms and the angular update per step, per parameter group and per layer.

A scale-invariant weight ``w`` (``L(c*w) = L(w)``: every weight feeding a BatchNorm or LayerNorm)
is only a direction; what training does to it is the angle it turns per step. The instruments
measure, at every optimizer step ``t``, the angle between ``w_t`` and ``w_{t+1}``

- of each group's concatenated vector: ``si``, the trainable tensors the detector
  (:func:`harness.optim.groups.scale_invariant_names`) finds scale-invariant, and ``rest``,
  the other trainable tensors, whichever of them decay;
- of each parameter tensor with two or more dimensions (a layer's weight),

as ``2 * asin(|u_t - u_{t+1}| / 2)`` with unit vectors ``u = w / |w|``, accurate for tiny angles
(no ``acos`` of a cosine near 1). The per-tensor differences ``|u_k - v_k|`` are computed
elementwise; a group's follows from them and the tensors' norms without a second pass:
``|u - v|^2 = sum_k (a_k - b_k)^2 + a_k b_k |u_k - v_k|^2`` with ``a_k = |w_t,k| / |w_t|`` and
``b_k = |w_t+1,k| / |w_t+1|``.

The same code serves one trial (:meth:`Instruments.of_module`) and a population of P members
(tensors stacked ``[P, ...]``); every number is per member.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

GROUPS = ("si", "rest")
FLUSH_STEPS = 64  # steps whose per-tensor numbers are kept before their angles are computed
SUMMARY_KEYS = ("si_angle", "rest_angle", "si_norm", "rest_norm", "eq_eta", "si_tensors")


def equilibrium_start(total: int) -> int:
    """The first step index (0-based) of the equilibrium window: the last quarter of ``total``
    steps (at least the last step)."""
    return total - max(total // 4, 1)


def unit_angle(diff_sq: torch.Tensor) -> torch.Tensor:
    """The angle between two unit vectors ``u, v`` from ``|u - v|^2``: ``2 asin(|u - v| / 2)``."""
    return 2 * torch.asin((diff_sq.clamp_min(0).sqrt() / 2).clamp_max(1))


class Instruments:
    """Angles and norms of the tensors ``params`` (each ``[P, ...]``: P members), named
    ``names``; ``invariant`` names the scale-invariant ones. Call :meth:`before` right before
    each optimizer step and :meth:`after` right after it; :meth:`report` gives each member's
    metrics since the previous report, :meth:`summary` each member's trial summary."""

    def __init__(
        self,
        names: Sequence[str],
        params: Sequence[torch.Tensor],
        invariant: Iterable[str],
        total: int,
    ) -> None:
        self.names = list(names)
        self.params = list(params)
        self.p = int(self.params[0].shape[0]) if self.params else 1
        inv = set(invariant)
        self.si_tensors = sum(n in inv for n in self.names)
        dev = self.params[0].device if self.params else torch.device("cpu")
        dtype = self.params[0].dtype if self.params else torch.float64
        member = torch.tensor([n in inv for n in self.names], device=dev)
        # [G, K] group membership; an empty group's numbers are NaN
        self.member = torch.stack([member, ~member]).to(dtype)
        self.empty = [not bool(row.any()) for row in self.member]
        self.layers = [k for k, q in enumerate(self.params) if q.ndim - 1 >= 2]
        self.keys = [f"angle/{g}" for g in GROUPS] + [f"angle/{self.names[k]}" for k in self.layers]
        self.prev = [torch.empty_like(q) for q in self.params]
        self.eq_start = equilibrium_start(int(total))
        rows = len(self.keys)
        self.angle_sum = torch.zeros(rows, self.p, device=dev, dtype=dtype)
        self.count = 0
        self.eq_sum = torch.zeros(rows, self.p, device=dev, dtype=dtype)  # groups, then layers
        self.invariant = [self.names[k] in inv for k in self.layers]
        self.eq_count = 0
        self.eta_sum = 0.0
        self.norms: torch.Tensor | None = None  # [K, P] after the last step
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]] = []
        self.tiny = torch.finfo(dtype).tiny

    @classmethod
    def of_module(cls, model: nn.Module, invariant: Iterable[str], total: int) -> Instruments:
        """One trial: ``model``'s trainable parameters as a population of one."""
        named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
        return cls(
            [n for n, _ in named], [q.detach().unsqueeze(0) for _, q in named], invariant, total
        )

    @torch.no_grad()
    def _tensor_norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """``[K, P]``: each tensor's norm per member."""
        if self.p == 1:
            return torch.stack(torch._foreach_norm(tensors)).view(-1, 1)
        return torch.stack(
            [torch.linalg.vector_norm(q.reshape(self.p, -1), dim=1) for q in tensors]
        )

    def _group_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """``[..., G, P]`` from ``[..., K, P]``: each group's norm per member (NaN for an empty
        group)."""
        g = (self.member @ norms.square()).sqrt()
        for i, empty in enumerate(self.empty):
            if empty:
                g[..., i, :] = math.nan
        return g

    @torch.no_grad()
    def before(self) -> None:
        """Keep ``w_t`` (and its norms, at the first step)."""
        if not self.params:
            return
        torch._foreach_copy_(self.prev, self.params)
        if self.norms is None:
            self.norms = self._tensor_norms(self.params)

    @torch.no_grad()
    def after(self, step: int, eta: float) -> None:
        """Record step ``step`` (0-based, the one just taken, whose lr-schedule multiplier was
        ``eta``): per tensor ``|w_t|``, ``|w_t+1|`` and ``|u_t - u_t+1|`` (the group arithmetic
        runs on many steps at once, at the next report)."""
        eq = step >= self.eq_start
        if eq:
            self.eta_sum += float(eta)
            self.eq_count += 1
        if not self.params:
            return
        na = self.norms
        nb = self._tensor_norms(self.params)
        # e_k = w_t,k * |w_t+1,k| / |w_t,k| - w_t+1,k, so |u_k - v_k| = |e_k| / |w_t+1,k|
        # a tensor of norm 0 (a zero-initialized shift) has no direction: ratio 0 (in a group,
        # its share |w_t,k| / |w_t| = 0 takes its direction out)
        ratio = torch.where(na > 0, nb / na, 0.0)
        if self.p == 1:
            torch._foreach_mul_(self.prev, list(ratio.view(-1).unbind()))
        else:
            for e, r in zip(self.prev, ratio):
                e.mul_(r.view(-1, *[1] * (e.ndim - 1)))
        torch._foreach_sub_(self.prev, self.params)
        self.pending.append((na, nb, self._tensor_norms(self.prev), eq))
        self.norms = nb
        if len(self.pending) >= FLUSH_STEPS:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        """Angles of the recorded steps, added to the interval's and the window's sums."""
        if not self.pending:
            return
        na, nb, dn = (
            torch.stack(t).clamp_min(self.tiny) for t in zip(*[r[:3] for r in self.pending])
        )
        eq = torch.tensor([r[3] for r in self.pending], device=na.device)
        self.count += len(self.pending)
        self.pending = []
        diff_sq = (dn / nb).square()  # [S, K, P]: |u_k - v_k|^2
        ga, gb = self._group_norms(na), self._group_norms(nb)  # [S, G, P]
        a = na.unsqueeze(1) / ga.unsqueeze(2)  # [S, G, K, P]
        b = nb.unsqueeze(1) / gb.unsqueeze(2)
        m = self.member.view(1, *self.member.shape, 1)
        group_sq = (m * ((a - b).square() + a * b * diff_sq.unsqueeze(1))).sum(2)  # [S, G, P]
        angles = unit_angle(torch.cat([group_sq, diff_sq[:, self.layers]], dim=1))  # [S, R, P]
        self.angle_sum += angles.sum(0)
        self.eq_sum += angles[eq].sum(0)

    def report(self) -> list[dict[str, float]]:
        """Each member's metrics since the previous report (then reset): ``angle/si``,
        ``angle/rest``, ``angle/<layer>`` (mean angle per step, radians), ``norm/si``,
        ``norm/rest``, ``norm/<layer>`` (now)."""
        if not self.params or self.norms is None:
            return [{} for _ in range(self.p)]
        self._flush()
        angles = (self.angle_sum / max(self.count, 1)).tolist()
        norms = torch.cat([self._group_norms(self.norms), self.norms[self.layers]]).tolist()
        if self.count == 0:
            angles = [[math.nan] * self.p for _ in angles]
        norm_keys = [f"norm/{g}" for g in GROUPS] + [f"norm/{self.names[k]}" for k in self.layers]
        out = []
        for m in range(self.p):
            d = {key: row[m] for key, row in zip(self.keys, angles)}
            d.update({key: row[m] for key, row in zip(norm_keys, norms)})
            out.append(d)
        self.angle_sum.zero_()
        self.count = 0
        return out

    def summary(self) -> list[dict[str, float]]:
        """Each member's :data:`SUMMARY_KEYS`: ``si_angle`` / ``rest_angle``, the mean angle per
        step over the equilibrium window (the last quarter of the steps); ``si_norm`` /
        ``rest_norm``, the groups' final norms; ``eq_eta``, the mean lr-schedule multiplier over
        the window; ``si_tensors``, how many tensors are scale-invariant. NaN for an empty group
        or a window not reached."""
        eq_eta = self.eta_sum / self.eq_count if self.eq_count else math.nan
        if not self.params:
            return [
                dict.fromkeys(SUMMARY_KEYS, math.nan) | {"si_tensors": 0} for _ in range(self.p)
            ]
        self._flush()
        norms = self._tensor_norms(self.params)
        groups = self._group_norms(norms).tolist()
        if self.eq_count:
            angles = (self.eq_sum[: len(GROUPS)] / self.eq_count).tolist()
            for i, empty in enumerate(self.empty):
                if empty:
                    angles[i] = [math.nan] * self.p
        else:
            angles = [[math.nan] * self.p for _ in GROUPS]
        return [
            {
                "si_angle": angles[0][m],
                "rest_angle": angles[1][m],
                "si_norm": groups[0][m],
                "rest_norm": groups[1][m],
                "eq_eta": eq_eta,
                "si_tensors": self.si_tensors,
            }
            for m in range(self.p)
        ]

    def layer_summary(self) -> list[dict[str, dict[str, float | bool]]]:
        """Each member's per-layer summary, for every tensor with 2 or more dimensions (the
        tensors of the ``angle/<name>`` reports): ``{name: {"angle", "norm", "scale_invariant"}}``
        with ``angle`` the mean angle per step over the equilibrium window (as ``si_angle``),
        ``norm`` the final norm, ``scale_invariant`` whether the detector found the tensor
        scale-invariant. NaN angles for a window not reached."""
        if not self.params:
            return [{} for _ in range(self.p)]
        self._flush()
        norms = self._tensor_norms(self.params)[self.layers].tolist()
        if self.eq_count:
            angles = (self.eq_sum[len(GROUPS) :] / self.eq_count).tolist()
        else:
            angles = [[math.nan] * self.p for _ in self.layers]
        return [
            {
                self.names[k]: {
                    "angle": angles[i][m],
                    "norm": norms[i][m],
                    "scale_invariant": self.invariant[i],
                }
                for i, k in enumerate(self.layers)
            }
            for m in range(self.p)
        ]
