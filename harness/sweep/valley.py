"""The valley tracer (``sweep=valley``): per lr row, a 1-D search over log weight decay.

A grid whose wd step is 5x cannot say where between two columns each lr row's best wd lies. The
tracer runs the coarse grid first (round 0: every lr x wd x seed cell, enqueued by the driver
like ``sweep=grid``), then ``sweep.rounds`` refinement rounds per lr row. Round ``r`` steps
``q_r = q_0 ** (1 / refine**r)`` in wd, ``q_0`` being the coarse grid's step, and adds the points
``w* * q_r**k`` for ``k = +-1 .. +-(refine - 1)`` around the row's best wd ``w*`` so far (the
lowest validation error, mean over seeds, over every finished cell of the row); points outside
``[sweep.weight_decay.min, max]`` are left out. The points ``k = +-refine`` are the previous
round's neighbours of ``w*``, already measured, so after round ``r`` the row's best is known to
a factor ``q_r``: two rounds at ``refine=3`` turn a 5x grid step into 5 ** (1/9) = 1.20x.

Every cell of every round is a trial of the variant's one Optuna study, with the same guarantees
as a grid cell (:mod:`harness.sweep.queue`): enqueued as a WAITING trial, claimed by exactly one
worker with the compare-and-set, leased, re-run when its worker is lost, retried at most
``sweep.max_retries`` times on a rerun, trained in populations (a round's cells of all rows
whose previous round is done wait in the queue together). A trial's ``round`` user attr says
which round it belongs to (0 = coarse).

Who enqueues a round
--------------------
A round depends on results, so a worker enqueues it: one that finds a row *settled* (none of
its trials WAITING or RUNNING, every earlier round's gate done). Two workers finishing a row at
once must not both enqueue it, so each (lr row, round) has a *gate*: a WAITING trial in the
companion study ``<study>.valley-gates``, created by the driver. Enqueuing a round means claiming
its gate with the same compare-and-set that claims cells (WAITING -> RUNNING, one winner on every
storage), enqueueing the round's cells, recording them on the gate and telling it COMPLETE.
Readers look at the gates *before* the row's trials, so a gate seen COMPLETE implies its cells
are seen. A gate whose holder died (its owner is a dead process on this host, or its lease is
older than ``2 x sweep.heartbeat_s``) is failed by whoever sees it first and replaced by a fresh
WAITING gate; the new holder enqueues only the cells that have no trial yet.

A diverged cell is a result (validation error 1.0), and so is a cell whose training failed
(counted as 1.0 until a rerun retries it); a row whose every cell diverged or failed has no
valley and gets no refinement. A best wd of 0 (``sweep.include_zero_wd``) is not refined either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import ConfigError
from harness.sweep.queue import (
    DONE_STATES,
    LOST_REASONS,
    ROUND_KEY,
    CellStatus,
    cell_params,
    claim_leased,
    companion_study,
    complete_held,
    enqueue_cells,
    fail_stale,
    fresh_trials,
    is_stale,
)

GATES_SUFFIX = ".valley-gates"
GATES_OF = "valley_gates_of"  # user attr of a gates study: the study it serves
VALLEY_ATTR = "valley"  # study user attr: {"rounds": R, "refine": k}
FAILED_VALUE = 1.0  # a failed cell counts like a diverged one


def row_key(lr: float) -> str:
    return f"{float(lr):.6g}"


def _round6(x: float) -> float:
    return float(f"{x:.6g}")


# --------------------------------------------------------------------------------------------
# The arithmetic (pure)


def coarse_step(wds: Sequence[float]) -> float:
    """The coarse grid's step factor in wd (its positive values are log-spaced)."""
    pos = sorted(w for w in wds if w > 0)
    if len(pos) < 2:
        raise ValueError("a valley needs at least two positive weight decays in the grid")
    return (pos[-1] / pos[0]) ** (1.0 / (len(pos) - 1))


def round_step(q0: float, refine: int, r: int) -> float:
    """The step factor of round ``r`` (round 0 is the coarse grid)."""
    return q0 ** (1.0 / refine**r)


def resolution(q0: float, refine: int, rounds: int) -> float:
    """The factor each row's best wd is known to after ``rounds`` rounds."""
    return round_step(q0, refine, rounds)


def best_wd(values: dict[float, float]) -> float | None:
    """The wd with the lowest value (ties: the smallest wd); None when every value is
    :data:`FAILED_VALUE` or worse (all diverged or failed) or there is none."""
    finite = {w: v for w, v in values.items() if v is not None and math.isfinite(v)}
    if not finite or min(finite.values()) >= FAILED_VALUE:
        return None
    return min(sorted(finite), key=lambda w: finite[w])


def round_points(
    center: float, q0: float, refine: int, r: int, lo: float, hi: float
) -> list[float]:
    """Round ``r``'s new wds around ``center``: ``center * q_r**k``, ``0 < |k| < refine``,
    inside ``[lo, hi]``, rounded to 6 significant digits like the grid."""
    if center <= 0:
        return []
    q = round_step(q0, refine, r)
    out = []
    for k in range(-(refine - 1), refine):
        if k == 0:
            continue
        w = center * q**k
        if lo * (1 - 1e-9) <= w <= hi * (1 + 1e-9):
            out.append(_round6(w))
    return sorted(set(out))


def row_values(trials: Iterable[FrozenTrial]) -> dict[float, float]:
    """``{wd: mean over seeds}`` of one row's finished trials: the objective (validation error)
    of a COMPLETE trial, :data:`FAILED_VALUE` for a cell that only failed or was pruned."""
    per_cell: dict[tuple[float, int], float] = {}
    for t in trials:
        p = cell_params(t)
        if "weight_decay" not in p:
            continue
        key = (_round6(p["weight_decay"]), int(p.get("seed", 0)))
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            per_cell[key] = float(t.value)  # a done trial wins over any failed one
        elif t.state.is_finished():
            per_cell.setdefault(key, FAILED_VALUE)
    by_wd: dict[float, list[float]] = {}
    for (wd, _), v in per_cell.items():
        by_wd.setdefault(wd, []).append(v)
    return {wd: sum(v) / len(v) for wd, v in by_wd.items()}


def trace(objective, lrs: Sequence[float], wds: Sequence[float], rounds: int, refine: int):
    """The tracer run in memory on ``objective(lr, wd) -> error``, one seed, rows in sequence:
    ``{lr: (best wd, every wd evaluated)}``. What the sweep does, without a study (tests, the
    fine-grid comparison of ``python -m harness.bench valley``)."""
    q0 = coarse_step(wds)
    lo, hi = min(w for w in wds if w > 0), max(wds)
    out = {}
    for lr in lrs:
        values = {_round6(w): float(objective(lr, w)) for w in wds}
        for r in range(1, rounds + 1):
            center = best_wd(values)
            if center is None:
                break
            for w in round_points(center, q0, refine, r, lo, hi):
                if w not in values:
                    values[w] = float(objective(lr, w))
        out[lr] = (best_wd(values), sorted(values))
    return out


# --------------------------------------------------------------------------------------------
# The study side


@dataclass
class ValleySpec:
    """What a valley study traces: the coarse grid, rounds and refinement, and the enqueue
    settings of :func:`harness.sweep.queue.enqueue_cells`."""

    lrs: list[float]
    wds: list[float]
    seeds: list[int]
    rounds: int
    refine: int
    dists: dict[str, Any]
    heartbeat_s: float
    max_retries: int | None

    @property
    def q0(self) -> float:
        return coarse_step(self.wds)

    @property
    def bounds(self) -> tuple[float, float]:
        return min(w for w in self.wds if w > 0), max(self.wds)

    def budget(self) -> int:
        """At most this many cells: the coarse grid and a full round per row."""
        coarse = len(self.lrs) * len(self.wds) * len(self.seeds)
        return coarse + len(self.lrs) * self.rounds * 2 * (self.refine - 1) * len(self.seeds)

    def coarse_cells(self) -> list[dict[str, Any]]:
        return [
            {"lr": lr, "weight_decay": wd, "seed": s}
            for s in self.seeds
            for lr in self.lrs
            for wd in self.wds
        ]


def gates_name(study_name: str) -> str:
    return study_name + GATES_SUFFIX


def gates_study(study: optuna.Study, *, create: bool = False) -> optuna.Study:
    gates = companion_study(study, gates_name(study.study_name), create=create)
    if create and gates.user_attrs.get(GATES_OF) != study.study_name:
        gates.set_user_attr(GATES_OF, study.study_name)
    return gates


def _gate(lr: float, r: int) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params={},
        distributions={},
        user_attrs={"lr": row_key(lr), ROUND_KEY: int(r)},
    )


def _gates_by_row(gates: optuna.Study) -> dict[tuple[str, int], list[FrozenTrial]]:
    out: dict[tuple[str, int], list[FrozenTrial]] = {}
    for g in gates.get_trials(deepcopy=False):
        key = (str(g.user_attrs.get("lr")), int(g.user_attrs.get(ROUND_KEY, 0)))
        out.setdefault(key, []).append(g)
    return out


class Tracer:
    """One process's handle on a valley study: open the rounds that are due (:meth:`advance`)."""

    def __init__(self, study: optuna.Study, spec: ValleySpec, gates: optuna.Study) -> None:
        self.study = study
        self.spec = spec
        self.gates = gates
        self.held = 0  # gates of other processes that are live right now (last advance)

    # driver side ----------------------------------------------------------------------------

    @classmethod
    def prepare(cls, study: optuna.Study, spec: ValleySpec) -> tuple[Tracer, CellStatus]:
        """Driver: enqueue the coarse grid's missing cells and the missing cells of every round
        already opened (failed ones up to ``max_retries``), create the missing gates, then open
        the rounds that are due. Returns the tracer and the cell counts."""
        status = enqueue_cells(
            study,
            spec.coarse_cells(),
            spec.dists,
            spec.heartbeat_s,
            max_retries=spec.max_retries,
            attrs={ROUND_KEY: 0},
        )
        recorded = study.user_attrs.get(VALLEY_ATTR)
        want = {"rounds": spec.rounds, "refine": spec.refine}
        if recorded != want:
            study.set_user_attr(VALLEY_ATTR, want)
        tracer = cls(study, spec, gates_study(study, create=True))
        by_row = _gates_by_row(tracer.gates)
        missing = []
        for lr in spec.lrs:
            for r in range(1, spec.rounds + 1):
                found = by_row.get((row_key(lr), r), [])
                if not [g for g in found if g.state != TrialState.FAIL]:
                    missing.append(_gate(lr, r))
                for g in found:
                    if g.state == TrialState.COMPLETE:
                        cells = tracer._cells(lr, g.user_attrs.get("weight_decays") or [])
                        _add(status, tracer._enqueue(cells, r))
        if missing:
            tracer.gates.add_trials(missing)
        opened = tracer.advance()
        status.queued += opened
        status.total = max(status.total, spec.budget())
        return tracer, status

    # any process ----------------------------------------------------------------------------

    def _cells(self, lr: float, wds: Iterable[float]) -> list[dict[str, Any]]:
        return [
            {"lr": lr, "weight_decay": float(w), "seed": s} for s in self.spec.seeds for w in wds
        ]

    def _enqueue(self, cells: list[dict[str, Any]], r: int) -> CellStatus:
        return enqueue_cells(
            self.study,
            cells,
            self.spec.dists,
            self.spec.heartbeat_s,
            max_retries=self.spec.max_retries,
            attrs={ROUND_KEY: int(r)},
        )

    def advance(self) -> int:
        """Open every round that is due: for each settled row, claim the gate of its next round
        and enqueue that round's cells. Returns the number of cells enqueued; sets
        :attr:`held` to the number of gates live in other processes (more cells may come)."""
        spec = self.spec
        gate_rows = _gates_by_row(self.gates)  # the gates first: see the module docstring
        rows: dict[str, list[FrozenTrial]] = {}
        for t in self.study.get_trials(deepcopy=False):
            p = cell_params(t)
            if "lr" in p:
                rows.setdefault(row_key(p["lr"]), []).append(t)
        enqueued = held = 0
        lo, hi = spec.bounds
        for lr in spec.lrs:
            key = row_key(lr)
            trials = rows.get(key, [])
            if not _settled(trials):
                continue
            for r in range(1, spec.rounds + 1):
                state, gate = self._take_gate(gate_rows.get((key, r), []), lr, r)
                if state == "done":
                    continue
                if state == "held":
                    held += 1
                    break
                if state == "lost":
                    break
                values = row_values(trials)
                center = best_wd(values)
                wds = (
                    [] if center is None else round_points(center, spec.q0, spec.refine, r, lo, hi)
                )
                wds = [w for w in wds if w not in values]
                status = self._enqueue(self._cells(lr, wds), r)
                n = status.queued
                self._close_gate(gate, center, wds, n)
                enqueued += n
                if n:
                    break  # the next round waits for these cells
        self.held = held
        return enqueued

    def _take_gate(
        self, found: list[FrozenTrial], lr: float, r: int
    ) -> tuple[str, FrozenTrial | None]:
        """("done" | "held" | "lost" | "mine", the gate if mine) for one (row, round)."""
        if any(g.state == TrialState.COMPLETE for g in found):
            return "done", None
        live = False
        for g in found:
            if g.state != TrialState.RUNNING:
                continue
            if is_stale(g, self.spec.heartbeat_s):
                if fail_stale(self.gates, g):
                    self.gates.add_trial(_gate(lr, r))  # the one whose FAIL took effect
            else:
                live = True
        if live:
            return "held", None
        waiting = [
            g
            for g in fresh_trials(self.gates, (TrialState.WAITING,))
            if g.user_attrs.get("lr") == row_key(lr) and int(g.user_attrs.get(ROUND_KEY, 0)) == r
        ]
        if not waiting:
            # no gate at all (a gate failed as stale whose replacement was lost): add one
            self.gates.add_trial(_gate(lr, r))
            return "lost", None
        for g in waiting:
            if claim_leased(self.gates, g):
                return "mine", g
        return "lost", None

    def _close_gate(
        self, gate: FrozenTrial, center: float | None, wds: list[float], n: int
    ) -> None:
        # False when declared stale under us: its new holder enqueues what is still missing
        complete_held(
            self.gates,
            gate,
            {"center": center, "weight_decays": list(wds), "enqueued": int(n)},
            float(n),
        )


def _settled(trials: list[FrozenTrial]) -> bool:
    """A row with trials, none WAITING or RUNNING, and no cell whose last trial was lost (a
    stale or handed-back trial whose cell is about to be enqueued again)."""
    if not trials:
        return False
    last: dict[str, FrozenTrial] = {}
    for t in trials:
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            return False
        key = str(t.user_attrs.get("cell", t.number))
        if key not in last or t.number > last[key].number:
            last[key] = t
    return not any(
        t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") in LOST_REASONS
        for t in last.values()
    )


def check_recorded(study: optuna.Study, spec: ValleySpec) -> None:
    """Refuse a different ``sweep.refine`` on a study traced with another one (its rounds would
    not fall on one lattice); more or fewer ``sweep.rounds`` are fine."""
    recorded = study.user_attrs.get(VALLEY_ATTR) or {}
    if recorded.get("refine") not in (None, spec.refine):
        raise ConfigError(
            f"sweep.refine: the study '{study.study_name}' was traced with "
            f"sweep.refine={recorded['refine']}; pass sweep.refine={recorded['refine']}, or start "
            "a new study with sweep.study_name=<a new name>"
        )


def _add(a: CellStatus, b: CellStatus) -> None:
    a.done += b.done
    a.queued += b.queued
    a.requeued += b.requeued
    a.running += b.running
    a.failed += b.failed


def done_rounds(study: optuna.Study) -> dict[int, int]:
    """``{round: finished cells}`` of a valley study (tests, status lines)."""
    out: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False, states=DONE_STATES):
        r = int(t.user_attrs.get(ROUND_KEY, 0))
        out[r] = out.get(r, 0) + 1
    return out
