"""What scale invariance predicts: each variant's valley slope and equilibrium angle per step.

A weight ``w`` feeding a normalization layer is scale-invariant: ``L(c w) = L(w)``, so its
gradient ``g`` is orthogonal to ``w`` and shrinks like ``1/||w||``. Decay then only sets the
*angle* ``theta`` that ``w`` turns per step. Rescaling ``w -> w / c`` leaves the directions'
trajectory unchanged if ``(a, lam)`` move along one combination, the variant's *invariant*;
once training has forgotten the initial norm the error depends on that combination only, and
the valley of the best ``lam`` per base lr ``a`` has the slope ``d log lam* / d log a`` below.

Notation: ``a`` the base lr (``lr`` column), ``lam`` the weight decay (``weight_decay``),
``eta`` the schedule multiplier (``lr_t = a eta_t``; the ``eq_eta`` column is its mean over the
last quarter of training), ``mu`` SGD's momentum, ``b1`` Adam's beta1.

=============================  =========  =====  ==================================
variant                        invariant  slope  equilibrium angle per step
=============================  =========  =====  ==================================
SGD + ``l2`` / ``loss``        a*lam      -1     sqrt(2 a eta lam / (1 + mu))
SGD + ``decoupled``            a*lam      -1     sqrt(2 a eta lam (1 - mu) / (1 + mu))
SGD + ``independent``          lam         0     sqrt(2 eta lam (1 - mu) / (1 + mu))
Adam + ``l2`` / ``loss``       a^2*lam    -2     not predicted (lam w is divided by sqrt(v))
Adam + ``decoupled``           a*lam      -1     sqrt(2 a eta lam (1 - b1) / (1 + b1))
Adam + ``independent``         lam         0     sqrt(2 eta lam (1 - b1) / (1 + b1))
=============================  =========  =====  ==================================

Derivation of the angle (SGD; Adam with ``b1`` for ``mu`` and the preconditioned gradient for
``g``, which stays orthogonal to ``w`` when the gradient noise is isotropic). Write the step
``v_t = w_{t+1} - w_t``. Heavy ball with coupled decay is
``v_t = mu v_{t-1} - a lam w_t - a g_t``; weight-side decay ``w <- (1 - s) w - a b_t`` (``s =
a eta lam`` decoupled, ``eta lam`` independent) rewrites to the same recursion with
``a lam -> s (1 - mu)`` and ``mu -> mu (1 - s)``. A stationary norm needs
``2 E[w_t . v_t] + E|v_t|^2 = 0``, and ``w_t . v_{t-1} = w_{t-1} . v_{t-1} + |v_{t-1}|^2``
with ``w_t . g_t = 0`` gives ``E[w . v] = mu (E[w . v] + E|v|^2) - a lam E|w|^2``. Together:
``theta^2 = E|v|^2 / E|w|^2 = 2 a lam / (1 + mu)`` (the radial part of ``v`` is
``O(theta^2)``), and ``2 s (1 - mu) / (1 + mu)`` for weight-side decay. No assumption on the
gradient's size or noise enters: the norm settles wherever this angle holds.

Relaxation. Far from equilibrium the gradient is negligible and the norm shrinks by the
*radial shrink* ``s_r`` per step: ``a eta lam / (1 - mu)`` for SGD + ``l2`` (the momentum buffer
accumulates ``lam w`` over ``1 / (1 - mu)`` steps), ``s = a eta lam`` for ``decoupled`` and
``eta lam`` for ``independent`` (SGD and Adam alike: the buffer holds gradients only). The angle
follows ``1 / ||w||^2`` (SGD) or ``1 / ||w||`` (Adam), and ``||w||^2`` relaxes as
``exp(-2 s_r t)``, so the relaxation time is ``tau = 1 / (2 s_r)`` steps. Consistency check:
``theta^2 = 2 s_r (1 - mu) / (1 + mu)`` for every predicted variant, i.e. the norm's decay
balances the long-run diffusion of the momentum-summed steps (``a g / (1 - mu)`` per step)
while one step only moves ``a g / sqrt(1 - mu^2)``. Near equilibrium SGD relaxes faster
(``4 s_r``: the gradient's ``1/||w||`` pulls too), so ``tau`` is a conservative bound.

A trial is *equilibrated* when ``tau``, computed with ``eta = eq_eta``, is at most
:data:`EQUILIBRIUM_WINDOW` (a quarter) of its steps: its norm has had three relaxation times
before the last-quarter window in which the angle is measured, and it can follow the schedule
within that window. The angle is not predicted (nan, with a reason from :func:`prediction`) for
Adam + ``l2`` / ``loss``, for families other than SGD and Adam, and for options that break the
invariance (relative or normalized decay, a weight-decay schedule, Nesterov or dampened
momentum).
Parameters that are not scale-invariant (heads, biases, norm gains) see decay as a plain
penalty; the angle columns measure the scale-invariant tensors only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import registry

EQUILIBRIUM_WINDOW = 0.25  # the measurement window: the last quarter of training
ANGLE_BAND = 0.15  # the +-15% band of the measured-vs-predicted figure
DEFAULT_MOMENTUM = 0.9  # conf/optimizer/sgd.yaml
DEFAULT_BETA1 = 0.9  # conf/optimizer/adam.yaml
ANGLE_COLUMNS = ("si_angle", "eq_eta")  # what the per-trial comparison needs
THEORY_COLUMNS = (
    "invariant",
    "predicted_slope",
    "predicted_angle",
    "angle_ratio",
    "radial_shrink",
    "relax_steps",
    "equilibrated",
)

__all__ = [
    "ANGLE_BAND",
    "EQUILIBRIUM_WINDOW",
    "Prediction",
    "cell_equilibrium",
    "equilibrium_angle",
    "has_angles",
    "prediction",
    "radial_shrink",
    "relaxation_steps",
    "study_hyperparameters",
    "theory_metrics",
    "trial_theory",
]


@dataclass(frozen=True)
class Prediction:
    """The theory of one variant: its invariant, the valley slope, and whether (and why not)
    the equilibrium angle is predicted."""

    optimizer: str
    decay: str
    invariant: str  # "a*lam", "lam", "a^2*lam"; "" when unknown
    slope: float  # d log lam* / d log a; nan when unknown
    mode: str  # the harness.optim decay mode the form runs ("l2", "decoupled", "independent")
    reason: str = ""  # why the angle is not predicted ("" when it is)

    @property
    def predicts_angle(self) -> bool:
        return not self.reason


def prediction(optimizer: str, decay: str) -> Prediction:
    """The theory of ``optimizer/decay`` (table in the module docstring), as the decay form's
    registry entry states it. An unknown decay form raises ``KeyError`` (one line naming the
    forms); an optimizer the form has no theory for gets none (``reason`` says so)."""
    form = registry.decay(decay)
    valley = form.valley(optimizer)
    if valley is None:
        reason = f"optimizer={optimizer}: no scale-invariance theory"
        return Prediction(optimizer, decay, "", float("nan"), form.mode, reason)
    return Prediction(optimizer, decay, valley.invariant, valley.slope, form.mode, valley.reason)


def _damping(optimizer: str, momentum: Any, beta1: Any) -> Any:
    family = registry.OPTIMIZERS.get(optimizer)
    return np.asarray(momentum if family is None else family.damping_of(momentum, beta1), float)


def radial_shrink(
    optimizer: str,
    decay: str,
    lr: Any,
    weight_decay: Any,
    eta: Any = 1.0,
    momentum: Any = DEFAULT_MOMENTUM,
    beta1: Any = DEFAULT_BETA1,
) -> np.ndarray:
    """``s_r``: the fraction the weight norm shrinks per step far from equilibrium
    (module docstring; the decay form's ``radial_shrink``); nan where the angle is not
    predicted. Arrays broadcast."""
    p = prediction(optimizer, decay)
    a, lam, eta = (np.asarray(x, float) for x in (lr, weight_decay, eta))
    if not p.predicts_angle:
        return np.full(np.broadcast(a, lam, eta).shape, np.nan)
    return registry.decay(decay).radial_shrink(a, eta, lam, _damping(optimizer, momentum, beta1))


def equilibrium_angle(
    optimizer: str,
    decay: str,
    lr: Any,
    weight_decay: Any,
    eta: Any = 1.0,
    momentum: Any = DEFAULT_MOMENTUM,
    beta1: Any = DEFAULT_BETA1,
) -> np.ndarray:
    """The predicted angular update per step (radians) of scale-invariant weights in
    equilibrium: ``sqrt(2 s_r (1 - m) / (1 + m))`` with ``m`` = momentum (SGD) or beta1 (Adam)
    (the table of the module docstring); nan where not predicted."""
    m = _damping(optimizer, momentum, beta1)
    s = radial_shrink(optimizer, decay, lr, weight_decay, eta, momentum, beta1)
    return registry.DecayForm.equilibrium_angle(s, m)


def relaxation_steps(
    optimizer: str,
    decay: str,
    lr: Any,
    weight_decay: Any,
    eta: Any = 1.0,
    momentum: Any = DEFAULT_MOMENTUM,
    beta1: Any = DEFAULT_BETA1,
) -> np.ndarray:
    """``tau = 1 / (2 s_r)``: steps for ``||w||^2`` to relax by a factor e (inf without decay,
    nan where not predicted)."""
    s = radial_shrink(optimizer, decay, lr, weight_decay, eta, momentum, beta1)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, 1.0 / (2.0 * np.where(s > 0, s, 1.0)), np.where(s == 0, np.inf, s))


def has_angles(frame: pd.DataFrame) -> bool:
    """Whether the frame holds the measured angles (``si_angle``, ``eq_eta``) of some trial."""
    if not all(c in frame for c in ANGLE_COLUMNS):
        return False
    angles = pd.to_numeric(frame["si_angle"], errors="coerce")
    return bool(np.isfinite(angles.to_numpy(float)).any())


# options of the optimizer config that break the table's invariance, and when they do
def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "1.0", "yes")
    return bool(value)


_BREAKERS = {
    "relative": (_truthy, "relative decay: the shrink scales with the weight's RMS"),
    "normalized": (
        _truthy,
        "normalized decay: weight_decay holds lam_norm, not the lam each step uses",
    ),
    "wd_schedule": (
        lambda v: str(v) not in ("", "constant", "nan"),
        "a weight-decay schedule: lam changes over training",
    ),
    "nesterov": (_truthy, "Nesterov momentum"),
    "dampening": (lambda v: float(v) != 0.0, "dampened momentum"),
}


def _column(frame: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), default, float)
    col = pd.to_numeric(frame[name], errors="coerce").to_numpy(float)
    return np.where(np.isfinite(col), col, default)


def trial_theory(
    frame: pd.DataFrame,
    momentum: float | None = None,
    beta1: float | None = None,
    window: float = EQUILIBRIUM_WINDOW,
) -> pd.DataFrame:
    """The tidy frame with the theory per trial added (:data:`THEORY_COLUMNS`):

    ``invariant`` and ``predicted_slope`` of the variant; ``predicted_angle`` (the table's
    formula at the trial's ``lr``, ``weight_decay`` and ``eq_eta``), ``angle_ratio`` =
    ``si_angle / predicted_angle``, ``radial_shrink``, ``relax_steps`` (``tau``) and
    ``equilibrated`` (``tau <= window * steps``; nan when not predicted, without ``eq_eta`` or
    for a diverged trial).
    Momentum and beta1 come from the ``momentum`` / ``beta1`` columns when the frame has them
    (:func:`study_hyperparameters` adds them from the sweep's config.yaml), else the arguments,
    else the shipped defaults (0.9, 0.9). ``theory_reason`` says why a trial has no prediction.
    """
    out = frame.copy()
    n = len(out)
    mu = _column(out, "momentum", DEFAULT_MOMENTUM if momentum is None else momentum)
    b1 = _column(out, "beta1", DEFAULT_BETA1 if beta1 is None else beta1)
    has_eta = "eq_eta" in out
    eta = _column(out, "eq_eta", np.nan)
    measured = _column(out, "si_angle", np.nan)
    if "si_tensors" in out:  # no scale-invariant tensor: nothing was measured
        measured = np.where(_column(out, "si_tensors", 1.0) > 0, measured, np.nan)
    steps = _column(out, "steps", np.nan)
    cols: dict[str, np.ndarray] = {
        "invariant": np.full(n, "", object),
        "predicted_slope": np.full(n, np.nan),
        "predicted_angle": np.full(n, np.nan),
        "radial_shrink": np.full(n, np.nan),
        "relax_steps": np.full(n, np.nan),
        "theory_reason": np.full(n, "", object),
    }
    lr = out["lr"].to_numpy(float) if n else np.zeros(0)
    wd = out["weight_decay"].to_numpy(float) if n else np.zeros(0)
    keys = list(zip(out["optimizer"].astype(str), out["decay"].astype(str))) if n else []
    for opt, dec in dict.fromkeys(keys):
        idx = np.array([k == (opt, dec) for k in keys])
        p = prediction(opt, dec)
        cols["invariant"][idx] = p.invariant
        cols["predicted_slope"][idx] = p.slope
        reasons = np.full(int(idx.sum()), p.reason, object)
        for name, (breaks, why) in _BREAKERS.items():
            if name in out:
                hit = out.loc[idx, name].map(lambda v, b=breaks: _safe(b, v)).to_numpy(bool)
                reasons = np.where(hit & (reasons == ""), why, reasons)
        cols["theory_reason"][idx] = reasons
        ok = idx.copy()
        ok[idx] = reasons == ""
        if not ok.any():
            continue
        args = (opt, dec, lr[ok], wd[ok], eta[ok] if has_eta else 1.0, mu[ok], b1[ok])
        cols["radial_shrink"][ok] = radial_shrink(*args)
        cols["relax_steps"][ok] = relaxation_steps(*args)
        if has_eta:
            cols["predicted_angle"][ok] = equilibrium_angle(*args)
    for name, values in cols.items():
        out[name] = values
    with np.errstate(divide="ignore", invalid="ignore"):
        out["angle_ratio"] = measured / cols["predicted_angle"]
    decided = np.isfinite(cols["relax_steps"]) | np.isinf(cols["relax_steps"])
    decided &= np.isfinite(steps) & has_eta & np.isfinite(eta)
    if "diverged" in out:  # a diverged trial is no equilibrium either way
        decided &= ~out["diverged"].map(_truthy).to_numpy(bool)
    eq = pd.array([pd.NA] * n, dtype="boolean")
    if decided.any():
        eq[decided] = cols["relax_steps"][decided] <= window * steps[decided]
    out["equilibrated"] = eq
    return out


def _safe(check, value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    try:
        return bool(check(value))
    except (TypeError, ValueError):
        return False


def cell_equilibrium(theory: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, lr, weight_decay) cell of :func:`trial_theory`'s frame:
    ``equilibrated`` = share of its decided trials that equilibrated (nan: none decided),
    ``angle_ratio`` = median ratio over them."""
    cols = ["variant", "lr", "weight_decay", "equilibrated", "angle_ratio"]
    if theory.empty or "equilibrated" not in theory:
        return pd.DataFrame(columns=cols)
    data = theory.assign(_eq=theory["equilibrated"].astype("Float64").astype(float))
    g = data.groupby(["variant", "lr", "weight_decay"], sort=True)
    return pd.DataFrame(
        {
            "equilibrated": g["_eq"].mean(),
            "angle_ratio": g["angle_ratio"].median(),
        }
    ).reset_index()[cols]


def theory_metrics(theory: pd.DataFrame, variants: list[str] | None = None) -> pd.DataFrame:
    """One row per variant: ``predicted_slope``, ``angle_ratio_median`` (median of
    ``angle_ratio`` over the equilibrated trials with a measured angle) and
    ``equilibrated_fraction`` (share of the trials with a decided ``equilibrated``; nan when
    none: no ``eq_eta`` column, or the angle is not predicted)."""
    rows = []
    for v in variants or list(dict.fromkeys(theory["variant"])):
        part = theory[theory["variant"] == v]
        opt, _, dec = v.partition("/")
        eq = part["equilibrated"] if "equilibrated" in part else pd.Series(dtype="boolean")
        decided = eq.notna()
        frac = float(eq[decided].astype(bool).mean()) if decided.any() else float("nan")
        ratio = part.loc[decided & eq.fillna(False).astype(bool), "angle_ratio"]
        ratio = ratio[np.isfinite(ratio.to_numpy(float))] if len(ratio) else ratio
        rows.append(
            {
                "variant": v,
                "predicted_slope": prediction(opt, dec).slope,
                "angle_ratio_median": float(ratio.median()) if len(ratio) else float("nan"),
                "equilibrated_fraction": frac,
            }
        )
    return pd.DataFrame(
        rows, columns=["variant", "predicted_slope", "angle_ratio_median", "equilibrated_fraction"]
    )


def study_hyperparameters(sources: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``momentum``, ``beta1`` (and the options that break the invariance:
    ``relative``, ``normalized``, ``wd_schedule``, ``nesterov``, ``dampening``) per experiment,
    read from the ``config.yaml`` the sweep writes next to each ``results.csv`` among
    ``sources`` (files or directories); rows without one keep the columns they have (the
    defaults apply later)."""
    configs: dict[str, dict] = {}
    for src in sources if isinstance(sources, list | tuple) else [sources]:
        if not isinstance(src, str | Path) or "://" in str(src):
            continue
        path = Path(str(src).partition("#")[0])
        found = (
            sorted(path.rglob("config.yaml")) if path.is_dir() else [path.parent / "config.yaml"]
        )
        for cfg_path in found:
            cfg = _read_config(cfg_path)
            if cfg is not None and cfg.get("name") is not None:
                configs.setdefault(str(cfg["name"]), cfg.get("optimizer") or {})
    if not configs or frame.empty:
        return frame
    out = frame.copy()
    values = {
        "momentum": lambda o: o.get("momentum"),
        "beta1": lambda o: (o.get("betas") or [None])[0],
        "relative": lambda o: o.get("relative"),
        "normalized": lambda o: o.get("normalized"),
        "wd_schedule": lambda o: o.get("wd_schedule"),
        "nesterov": lambda o: o.get("nesterov"),
        "dampening": lambda o: o.get("dampening"),
    }
    exp = out["experiment"].astype(str)
    for col, get in values.items():
        mapped = exp.map(lambda e, g=get: g(configs[e]) if e in configs else None)
        if col in out:
            mapped = mapped.where(mapped.notna(), out[col])
        out[col] = mapped
    return out


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None
