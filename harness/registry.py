"""Every name the harness accepts, and what it means: the only place a list of names is spelled.

Config validation, the model and data builders, population training and the analysis all read
their names from here, so adding an entry is one line in one table:

- a model: its builder in :mod:`harness.models` (or any module), one :class:`ModelSpec` in
  :data:`MODELS` and one ``conf/model/<name>.yaml``;
- a dataset: its loader in :mod:`harness.data`, one :class:`DataSpec` in :data:`DATASETS` and one
  ``conf/data/<name>.yaml``.

Decay forms are described here, but the update rules they run are :mod:`harness.optim`'s: the
order and the set of optimizer decay modes come from ``harness.optim.DECAY_MODES`` (read on first
use, so that importing this module does not import torch), and every form names the mode its
update rule runs. Likewise the weight-decay schedules and the parameter-group rules are
``harness.optim``'s own tuples.

The order of each table is the canonical one: figures, error messages and help texts list names
in it (decay forms: coupled before decoupled; families: SGD before Adam).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# --------------------------------------------------------------------------------------------
# Decay forms and optimizer families


@dataclass(frozen=True)
class Valley:
    """What scale invariance predicts for one (family, decay form): the combination of base lr
    ``a`` and weight decay ``lam`` the error depends on, the valley's slope
    ``d log lam* / d log a``, and why the equilibrium angle is not predicted ("" when it is)."""

    invariant: str  # "a*lam", "lam", "a^2*lam"
    slope: float
    reason: str = ""


_ADAM_COUPLED = (
    "Adam with coupled decay: lam*w is divided by sqrt(v), so the shrink depends on the "
    "gradient's size"
)
_SLOPE_LR = {"sgd": Valley("a*lam", -1.0), "adam": Valley("a*lam", -1.0)}
_SLOPE_COUPLED = {"sgd": Valley("a*lam", -1.0), "adam": Valley("a^2*lam", -2.0, _ADAM_COUPLED)}
_SLOPE_ETA = {"sgd": Valley("lam", 0.0), "adam": Valley("lam", 0.0)}


@dataclass(frozen=True)
class DecayForm:
    """One value of ``optimizer.decay``: where the decay enters, the update rule it runs, its
    per-step shrink and what scale invariance predicts for it (its valley per optimizer family
    and the radial shrink that sets the equilibrium angle)."""

    name: str
    label: str  # figure titles and legends
    enters: str  # where the decay enters: "gradient", "loss" or "weights"
    update: str  # the formula
    mode: str  # the harness.optim decay mode its update rule runs (one of DECAY_MODES)
    penalty: bool = False  # wd/2*||w||^2 is added to the loss; the optimizer runs with no decay
    # the theory per optimizer family (a family missing here has no scale-invariance theory)
    valleys: Mapping[str, Valley] = field(default_factory=dict)

    @property
    def decoupled(self) -> bool:
        """The decay acts on the weights, apart from the gradient (SGDW / AdamW)."""
        return self.enters == "weights"

    @property
    def shrink(self) -> str:
        """What the per-step shrink scales with: ``"lr"`` (lr_t*wd) or ``"eta"`` (eta_t*wd), as
        the update rule of :attr:`mode` records it."""
        from harness.optim.functional import SHRINK_BY

        return SHRINK_BY[self.mode]

    def step_shrink(self, lr_t: Any, eta: Any, weight_decay: Any) -> Any:
        """The per-step shrink ``harness.optim`` records for this form: ``eta_t*wd`` or
        ``lr_t*wd`` (a loss penalty's gradient ``wd*w`` shrinks like the mode it runs)."""
        return (eta if self.shrink == "eta" else lr_t) * weight_decay

    def valley(self, family: str) -> Valley | None:
        """The prediction for this form under the optimizer ``family`` (None: no theory)."""
        return self.valleys.get(family)

    def radial_shrink(self, lr: Any, eta: Any, weight_decay: Any, damping: Any) -> Any:
        """``s_r``, the fraction the norm of scale-invariant weights shrinks per step far from
        equilibrium, at base lr ``a``, schedule multiplier ``eta`` and ``lam``: the per-step
        shrink, divided by ``1 - damping`` (momentum or beta1) where the decay passes through
        the optimizer's momentum (coupled forms). Numbers or arrays."""
        s = self.step_shrink(lr * eta, eta, weight_decay)
        if self.shrink == "eta":
            s = s + 0.0 * lr  # the shape of every argument
        return s if self.decoupled else s / (1.0 - damping)

    @staticmethod
    def equilibrium_angle(radial: Any, damping: Any) -> Any:
        """The angular update per step at equilibrium, ``sqrt(2 s_r (1 - m) / (1 + m))``."""
        import numpy as np

        return np.sqrt(2.0 * radial * (1.0 - damping) / (1.0 + damping))


_DECAY_FORMS = (
    DecayForm(
        "l2",
        "coupled L2",
        "gradient",
        "g += wd*w before momentum / Adam moments",
        mode="l2",
        valleys=_SLOPE_COUPLED,
    ),
    DecayForm(
        "loss",
        "L2 in the loss",
        "loss",
        "loss += wd/2*||w||^2",
        mode="l2",
        penalty=True,
        valleys=_SLOPE_COUPLED,
    ),
    DecayForm(
        "decoupled",
        "decoupled, lr·wd",
        "weights",
        "w *= 1 - lr_t*wd",
        mode="decoupled",
        valleys=_SLOPE_LR,
    ),
    DecayForm(
        "independent",
        "independent, η·wd",
        "weights",
        "w *= 1 - eta_t*wd, eta_t = lr_t/lr_0",
        mode="independent",
        valleys=_SLOPE_ETA,
    ),
)


@functools.cache
def decay_forms() -> Mapping[str, DecayForm]:
    """The decay forms by name, ordered by ``harness.optim.DECAY_MODES`` (each optimizer mode,
    then the loss penalties that run it). Raises if a mode has no form here or a form names a
    mode ``harness.optim`` lacks."""
    from harness.optim import DECAY_MODES

    unknown = [f.name for f in _DECAY_FORMS if f.mode not in DECAY_MODES]
    plain = {f.name for f in _DECAY_FORMS if not f.penalty and f.name == f.mode}
    missing = [m for m in DECAY_MODES if m not in plain]
    if unknown or missing:
        raise RuntimeError(
            f"harness.registry: decay forms {unknown} run modes harness.optim lacks, and "
            f"harness.optim modes {missing} have no form; allowed modes: {', '.join(DECAY_MODES)}"
        )
    ordered = sorted(_DECAY_FORMS, key=lambda f: (DECAY_MODES.index(f.mode), f.penalty))
    return MappingProxyType({f.name: f for f in ordered})


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class OptimizerFamily:
    """One value of ``optimizer.name``: the ``torch.optim.Optimizer`` of ``harness.optim`` it
    builds, the ``optimizer.*`` fields only it reads (with their types), and its batched update
    for population training."""

    name: str
    label: str  # figure titles; a decoupled decay form appends "W" (SGDW, AdamW)
    optimizer: str  # "module:attribute" of its torch.optim.Optimizer class
    options: Mapping[str, Callable[[Any], Any]]  # optimizer.* field -> its type
    damping: str  # the option that damps the update: the theory's "momentum" or "beta1"
    # "module:attribute" of its batched update for population training (None: populations
    # train it sequentially), a class like harness.population_step.SGDUpdate
    batched: str | None = None

    @property
    def population(self) -> bool:
        """Population training has its update."""
        return self.batched is not None

    def build(self, groups: Any, o: Any, decay: str) -> Any:
        """The optimizer over param ``groups`` for the ``optimizer`` config ``o``, running the
        ``harness.optim`` decay mode ``decay``."""
        kwargs = {k: convert(o[k]) for k, convert in self.options.items()}
        return resolve(self.optimizer)(
            groups, lr=float(o.lr), decay=decay, relative=bool(o.relative), **kwargs
        )

    def damping_of(self, momentum: Any, beta1: Any) -> Any:
        """Momentum for a family damped by momentum, beta1 for one damped by beta1."""
        return momentum if self.damping == "momentum" else beta1


OPTIMIZERS: dict[str, OptimizerFamily] = {
    f.name: f
    for f in (
        OptimizerFamily(
            "sgd",
            "SGD",
            "harness.optim:SGD",
            {"momentum": float, "dampening": float, "nesterov": bool},
            damping="momentum",
            batched="harness.population_step:SGDUpdate",
        ),
        OptimizerFamily(
            "adam",
            "Adam",
            "harness.optim:Adam",
            {"betas": _floats, "eps": float, "amsgrad": bool},
            damping="beta1",
            batched="harness.population_step:AdamUpdate",
        ),
    )
}

# conf/optimizer/<alias>.yaml: a family with a decay form (torch's AdamW / SGDW decay lr_t * wd:
# decay=decoupled; the paper's AdamW and Composer's DecoupledAdamW are decay=independent)
OPTIMIZER_ALIASES: dict[str, tuple[str, str]] = {
    "adamw": ("adam", "decoupled"),
    "sgdw": ("sgd", "decoupled"),
}

# --------------------------------------------------------------------------------------------
# Inputs, models and datasets


@dataclass(frozen=True)
class InputKind:
    """What a model reads, or what a dataset's samples are (without the batch dimension)."""

    name: str
    ndim: int | None  # dimensions of one sample; None: any (flattened)
    description: str  # "<model> needs <description>" in error messages


VECTOR, SEQUENCE, IMAGE, TOKENS = "vector", "sequence", "image", "tokens"
INPUT_KINDS: dict[str, InputKind] = {
    k.name: k
    for k in (
        InputKind(VECTOR, None, "1-D vectors (any input, flattened)"),
        InputKind(SEQUENCE, 2, "1-D signals"),
        InputKind(IMAGE, 3, "images"),
        InputKind(TOKENS, 1, "sequences of token ids"),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """One value of ``model.name``.

    ``builder`` is ``"module:function"``, called as ``f(input_shape, num_classes, width, depth,
    **options)`` and returning an ``nn.Module`` whose forward maps ``[B, *input_shape]`` to
    ``[B, num_classes]``."""

    name: str
    summary: str
    builder: str
    input: str  # an INPUT_KINDS name
    options: Mapping[str, Any] = field(default_factory=dict)
    batchnorm: bool = False  # has BatchNorm layers (scale-invariant weights)
    twin: str | None = None  # the same network with BatchNorm toggled (mlp <-> mlp_bn)
    population: bool = True  # harness.population can train it batched
    # "module:function" ``f(stacked, x) -> [P, B, classes]``: the batched forward of a model
    # that is not an nn.Sequential of the layers harness.population walks (None: it is)
    batched_forward: str | None = None
    # model.* fields beyond width and depth that the builder takes as keywords (e.g. heads)
    reads: tuple[str, ...] = ()
    # a user's ``model._target_`` (any nn.Module class or function): called with ``options`` (the
    # model group's own keys) plus whichever of input_shape, num_classes, width, depth and the
    # ``reads`` fields its signature names; trained in populations by harness.population_generic
    target: bool = False

    def build(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int,
        depth: int,
        **fields: Any,
    ) -> Any:
        """The model; ``fields`` are the configured values of :attr:`reads`."""
        if self.target:
            fn = resolve(self.builder)
            offered = dict(
                input_shape=input_shape, num_classes=num_classes, width=width, depth=depth
            )
            given = signature_arguments(fn, {**offered, **fields})
            return fn(**{k: v for k, v in given.items() if k not in self.options}, **self.options)
        return resolve(self.builder)(
            input_shape, num_classes, width, depth, **self.options, **fields
        )


_RESNET_FORWARD = "harness.population_resnet:resnet_forward"
# model.* switches every built-in model reads (harness.models: BatchNorm without gain and shift,
# BatchNorm eps, a frozen random classifier head and its initial scale)
MODEL_SWITCHES = ("bn_affine", "bn_eps", "frozen_head", "head_scale")
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            "mlp",
            "MLP: depth x (Linear(width), ReLU), Linear(classes)",
            "harness.models:build_mlp",
            VECTOR,
            reads=MODEL_SWITCHES,
            twin="mlp_bn",
        ),
        ModelSpec(
            "mlp_bn",
            "the MLP with BatchNorm after each hidden Linear",
            "harness.models:build_mlp",
            VECTOR,
            reads=MODEL_SWITCHES,
            options={"bn": True},
            batchnorm=True,
            twin="mlp",
        ),
        ModelSpec(
            "cnn",
            "1-D CNN: 3 strided Conv1d of width channels, ReLU, Linear(classes)",
            "harness.models:build_cnn1d",
            SEQUENCE,
            reads=MODEL_SWITCHES,
            twin="cnn_bn",
        ),
        ModelSpec(
            "cnn_bn",
            "the 1-D CNN with BatchNorm after each convolution",
            "harness.models:build_cnn1d",
            SEQUENCE,
            reads=MODEL_SWITCHES,
            options={"bn": True},
            batchnorm=True,
            twin="cnn",
        ),
        ModelSpec(
            "resnet20",
            "CIFAR ResNet-20: 3 stages x 3 BasicBlocks (BatchNorm)",
            "harness.models:build_resnet",
            IMAGE,
            reads=MODEL_SWITCHES,
            options={"blocks": 3},
            batchnorm=True,
            batched_forward=_RESNET_FORWARD,
        ),
        ModelSpec(
            "resnet_tiny",
            "CIFAR ResNet with 1 BasicBlock per stage (tests, smoke runs)",
            "harness.models:build_resnet",
            IMAGE,
            reads=MODEL_SWITCHES,
            options={"blocks": 1},
            batchnorm=True,
            batched_forward=_RESNET_FORWARD,
        ),
        ModelSpec(
            "transformer",
            "pre-LayerNorm transformer over token ids: depth blocks of heads-head attention and "
            "an MLP, reading the last position",
            "harness.workloads.transformer:build_transformer",
            TOKENS,
            population=False,
            reads=("heads",),
        ),
    )
}


@dataclass(frozen=True)
class DataSpec:
    """One value of ``data.name``. ``loader`` (and ``check``, a cheap availability check run
    before any study exists) are ``"module:function"`` taking the ``data`` config."""

    name: str
    label: str
    input: str  # an INPUT_KINDS name
    shape: tuple[int, ...]  # one sample, without the batch dimension
    classes: int
    loader: str
    check: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict)  # on-disk format, for the loader


_CIFAR_CHECK = "harness.data:check_cifar"
DATASETS: dict[str, DataSpec] = {
    d.name: d
    for d in (
        DataSpec(
            "mnist1d", "MNIST-1D", SEQUENCE, (1, 40), 10, "harness.data:load_mnist1d"
        ),  # generated locally, never downloaded
        DataSpec(
            "cifar10",
            "CIFAR-10",
            IMAGE,
            (3, 32, 32),
            10,
            "harness.data:load_cifar",
            _CIFAR_CHECK,
            {
                "dir": "cifar-10-batches-py",
                "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                "test": ("test_batch",),
                "label": b"labels",
                "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            },
        ),
        DataSpec(
            "cifar100",
            "CIFAR-100",
            IMAGE,
            (3, 32, 32),
            100,
            "harness.data:load_cifar",
            _CIFAR_CHECK,
            {
                "dir": "cifar-100-python",
                "train": ("train",),
                "test": ("test",),
                "label": b"fine_labels",
                "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            },
        ),
        DataSpec(
            "modular",
            "modular addition",
            TOKENS,
            (3,),
            97,  # data.modulus's default; the loader's classes follow the configured modulus
            "harness.workloads.modular:load_modular",
        ),  # (a + b) mod p over all p^2 pairs, generated in memory
    )
}

# --------------------------------------------------------------------------------------------
# Storages, launchers and the other named settings


@functools.cache
def _built(path: str) -> Any:
    """One instance of the class named ``"module:attribute"`` (storage backends and sampler
    planners hold no state)."""
    return resolve(path)()


@dataclass(frozen=True)
class StorageSpec:
    """One value of ``storage.kind`` (the Optuna storage): who may share it, and its backend,
    which opens it, describes it, says whether it exists and opens a source read-only for the
    analysis (a class like ``harness.storage.SQLite``)."""

    name: str
    label: str
    summary: str
    persistent: bool  # outlives the process
    shared: bool  # several worker processes may use it at once
    cluster: bool  # safe for workers on other hosts (Slurm)
    backend: str = ""  # "module:attribute" of its backend class

    @property
    def impl(self) -> Any:
        """The backend (imported on first use)."""
        if not self.backend:
            raise LookupError(f"storage {self.name!r} names no backend")
        return _built(self.backend)

    def url(self, cfg: Any, output_dir: Any) -> str:
        """The storage's URL or file path (for messages, after masking)."""
        return self.impl.url(cfg, output_dir)

    def open(self, cfg: Any, output_dir: Any, *, create: bool = True) -> Any:
        """The Optuna storage, made with ``create``; errors are one ``ConfigError`` line."""
        return self.impl.open(cfg, output_dir, create=create)

    def describe(self, cfg: Any) -> str:
        """The storage as ``optuna-dashboard`` takes it (file path or URL), password masked."""
        return self.impl.describe(cfg)

    def exists(self, cfg: Any, output_dir: Any) -> bool:
        """Opening the storage would create nothing."""
        return self.impl.exists(cfg, output_dir)

    def reads(self, source: str) -> bool:
        """``source`` (a URL or a file path given to the analysis) is a storage of this kind."""
        return self.impl.reads(source)

    def open_read_only(self, source: str) -> Any:
        """``source`` opened for reading: creates nothing; errors are one ``ConfigError`` line."""
        return self.impl.open_read_only(source)


STORAGES: dict[str, StorageSpec] = {
    s.name: s
    for s in (
        StorageSpec(
            "sqlite",
            "SQLite",
            "an SQLite file in the output dir",
            True,
            False,
            False,
            "harness.storage:SQLite",
        ),
        StorageSpec(
            "journal",
            "journal",
            "an Optuna journal file (shared filesystem)",
            True,
            True,
            True,
            "harness.storage:Journal",
        ),
        StorageSpec(
            "url",
            "URL",
            "any SQLAlchemy URL (PostgreSQL tested)",
            True,
            True,
            True,
            "harness.storage:URL",
        ),
        StorageSpec(
            "memory",
            "memory",
            "in-memory: one process, nothing saved",
            False,
            False,
            False,
            "harness.storage:Memory",
        ),
    )
}


@dataclass(frozen=True)
class LauncherSpec:
    """One value of ``launcher.name``."""

    name: str
    summary: str
    cluster: bool  # workers run on other hosts


LAUNCHERS: dict[str, LauncherSpec] = {
    x.name: x
    for x in (
        LauncherSpec("local", "worker processes on this machine", False),
        LauncherSpec("slurm", "a Slurm job array (submitit)", True),
    )
}


@dataclass(frozen=True)
class SamplerSpec:
    """One value of ``sweep.sampler``: the Optuna sampler it makes and, for a sampler that
    enqueues its own cells, its planner (a class like ``harness.sweep.plan.GridPlanner``: the
    cells' budget, the driver's enqueueing, the check of a recorded study, a worker's tracer).
    A sampler without a planner draws its budget one point at a time from enqueued slots."""

    name: str
    summary: str
    sampler: str  # "module:attribute" of the optuna.samplers.BaseSampler class, built with seed=
    planner: str | None = None  # "module:attribute" of its planner class

    @property
    def enqueues(self) -> bool:
        """The planner enqueues the cells (no point is drawn by the sampler)."""
        return self.planner is not None

    def make(self, seed: int) -> Any:
        """The Optuna sampler, seeded."""
        return resolve(self.sampler)(seed=int(seed))

    def make_planner(self) -> Any:
        """The planner (None for a sampler that draws its points)."""
        return _built(self.planner) if self.planner else None


_RANDOM = "optuna.samplers:RandomSampler"
SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec(
            "grid", "every lr x wd cell once per seed", _RANDOM, "harness.sweep.plan:GridPlanner"
        ),
        SamplerSpec("random", "random cells from the log ranges", _RANDOM),
        SamplerSpec("tpe", "Optuna's TPE sampler", "optuna.samplers:TPESampler"),
        SamplerSpec(
            "valley",
            "a coarse grid, then per lr row refinement rounds around the best wd",
            _RANDOM,
            "harness.sweep.plan:ValleyPlanner",
        ),
    )
}

# name -> meaning, for the settings that are one word each
SCHEDULES: dict[str, str] = {
    "constant": "eta_t = 1",
    "cosine": "cosine from 1 to schedule.min_factor",
    "step": "x gamma at each milestone",
    "warmup_cosine": "linear warmup, then cosine",
    "warmup_constant": "linear warmup, then 1",
}
PRUNERS: dict[str, str] = {
    "none": "every trial runs to the end",
    "median": "Optuna's median pruner",
    "hyperband": "Optuna's Hyperband pruner",
}
TRACKING_MODES: dict[str, str] = {
    "auto": "online with a W&B login, else offline",
    "online": "W&B online",
    "offline": "W&B offline (wandb sync later)",
    "disabled": "no W&B runs",
}
DTYPES: dict[str, str] = {
    "float32": "torch.float32 parameters and data",
    "float64": "torch.float64 (equivalence tests)",
}
ACTIONS: dict[str, str] = {
    "run": "train the missing cells, then report",
    "extend": "add the cells of a changed grid to the existing studies, then run",
    "report": "results and figures from the storage only (writes no trial)",
    "status": "cell counts per study (writes nothing)",
}


def _optim_names(module: str, attribute: str) -> tuple[str, ...]:
    return tuple(getattr(importlib.import_module(module), attribute))


# group -> its names in canonical order; the harness.optim ones are read on first use
_GROUPS: dict[str, Callable[[], tuple[str, ...]]] = {
    "decay": lambda: tuple(decay_forms()),
    "optimizer": lambda: tuple(OPTIMIZERS),
    "model": lambda: tuple(MODELS),
    "data": lambda: tuple(DATASETS),
    "storage": lambda: tuple(STORAGES),
    "launcher": lambda: tuple(LAUNCHERS),
    "schedule": lambda: tuple(SCHEDULES),
    "wd_schedule": lambda: _optim_names("harness.optim.wd_schedule", "KINDS"),
    "param_groups": lambda: _optim_names("harness.optim.groups", "RULES"),
    "sampler": lambda: tuple(SAMPLERS),
    "pruner": lambda: tuple(PRUNERS),
    "tracking": lambda: tuple(TRACKING_MODES),
    "dtype": lambda: tuple(DTYPES),
    "action": lambda: tuple(ACTIONS),
}
GROUPS = tuple(_GROUPS)


def names(group: str) -> tuple[str, ...]:
    """The names of ``group`` (one of :data:`GROUPS`) in canonical order."""
    if group not in _GROUPS:
        raise KeyError(f"no group {group!r}; groups: {', '.join(GROUPS)}")
    return _GROUPS[group]()


def one_of(names_: tuple[str, ...] | list[str]) -> str:
    """``a, b or c``: names for a sentence."""
    names_ = list(names_)
    return names_[0] if len(names_) == 1 else f"{', '.join(names_[:-1])} or {names_[-1]}"


# --------------------------------------------------------------------------------------------
# Lookups (KeyError naming the allowed values for an unknown name)


def _get(table: Mapping[str, Any], name: str, group: str) -> Any:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise KeyError(f"{group} {name!r} is not one of {', '.join(table)}") from None


def decay(name: str) -> DecayForm:
    return _get(decay_forms(), name, "decay")


def optimizer(name: str) -> OptimizerFamily:
    return _get(OPTIMIZERS, name, "optimizer")


def model(name: str) -> ModelSpec:
    return _get(MODELS, name, "model")


def dataset(name: str) -> DataSpec:
    return _get(DATASETS, name, "data")


def storage(name: str) -> StorageSpec:
    return _get(STORAGES, name, "storage")


def launcher(name: str) -> LauncherSpec:
    return _get(LAUNCHERS, name, "launcher")


def sampler(name: str) -> SamplerSpec:
    return _get(SAMPLERS, name, "sampler")


def resolve(path: str) -> Any:
    """The object named ``"module:attribute"`` or ``"package.module.attribute"`` (Hydra's
    ``_target_`` spelling), imported on call. A module that is not importable from
    ``sys.path`` is looked for in the working folder too (where ``python -m harness.sweep`` and
    its workers start). Raises ``LookupError`` (one line: what is missing)."""
    path = str(path).strip()
    if ":" in path:
        module, _, attribute = path.partition(":")
        candidates = [(module, attribute.split("."))]
    else:
        parts = path.split(".")
        candidates = [(".".join(parts[:cut]), parts[cut:]) for cut in range(len(parts) - 1, 0, -1)]
    if not candidates or not all(m and all(rest) for m, rest in candidates):
        raise LookupError(f"'{path}' is not a dotted path such as mypkg.nets.Net")
    for attempt in range(2):
        missing: Exception | None = None
        for module, rest in candidates:
            try:
                obj = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                    missing = exc  # this prefix is no module: try a shorter one
                    continue
                raise LookupError(f"'{path}' fails to import: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - the user's module raised on import
                raise LookupError(
                    f"'{path}' fails to import: {type(exc).__name__}: {exc}"
                ) from None
            for attr in rest:
                if not hasattr(obj, attr):
                    raise LookupError(f"'{path}': {module} has no attribute '{attr}'")
                obj = getattr(obj, attr)
            return obj
        cwd = os.getcwd()
        if attempt or cwd in sys.path:
            break
        sys.path.insert(0, cwd)  # workers and `python -m` start in the user's working folder
    raise LookupError(f"'{path}' cannot be imported ({missing})")


def signature_arguments(fn: Any, offered: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``offered`` that ``fn`` (a function or a class) takes by name: how the
    harness passes ``input_shape``, ``num_classes`` and its own config fields to a user's
    ``_target_`` only when its signature asks for them."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: offer nothing
        return {}
    named = {
        n
        for n, q in params.items()
        if q.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in offered.items() if k in named}


# --------------------------------------------------------------------------------------------
# Relations between names


def twin(name: str) -> str | None:
    """The model's BatchNorm twin (``mlp`` -> ``mlp_bn``, ``cnn_bn`` -> ``cnn``), None if it
    has none or the name is unknown. Twins share width and depth."""
    spec = MODELS.get(name)
    return spec.twin if spec else None


def twins(a: str, b: str) -> bool:
    """``a`` and ``b`` are the same network, with or without BatchNorm (or the same name)."""
    return a == b or twin(a) == b


def accepts(input_kind: str, shape: tuple[int, ...]) -> bool:
    """A model reading ``input_kind`` can take samples of ``shape`` (no batch dimension)."""
    ndim = INPUT_KINDS[input_kind].ndim
    return ndim is None or len(shape) == ndim


def fits(model_name: str, data_name: str) -> bool:
    """The model can be trained on the dataset (its input kind reads the dataset's samples)."""
    m, d = MODELS.get(model_name), DATASETS.get(data_name)
    return m is not None and d is not None and m.input in (VECTOR, d.input)


def models_for(data_name: str) -> tuple[str, ...]:
    """The models that fit the dataset, in canonical order."""
    return tuple(m for m in MODELS if fits(m, data_name))


def datasets_for(model_name: str) -> tuple[str, ...]:
    """The datasets the model fits, in canonical order."""
    return tuple(d for d in DATASETS if fits(model_name, d))
