"""Structured config schema: the contract between conf/*.yaml and the code.

Every group in ``conf/`` has a dataclass here. Hydra validates the composed YAML against
these classes, so a typo (``optimizer.lrr=...``) or a wrong type (``optimizer.lr=abc``) fails at
compose time, before any study exists. Semantic checks that a type cannot express (ranges,
allowed names) live in :func:`validate`, which raises :class:`ConfigError` with one line naming
the field and the fix.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING, OmegaConf

from harness import registry
from harness.errors import ConfigError

# ModelConfig and DataConfig subclass dict so that a user's ``_target_`` can take its own keys;
# OmegaConf supports that but warns about it on every structured merge
_DICT_WARNING = r"Class `(ModelConfig|DataConfig)` subclasses `Dict`"
warnings.filterwarnings("ignore", message=_DICT_WARNING, category=UserWarning)


@dataclass
class OptimizerConfig:
    name: str = "adam"  # sgd | adam
    lr: float = 1e-3  # base learning rate a (lr_t = a * eta_t)
    weight_decay: float = 0.0
    decay: str = "independent"  # l2 | loss | decoupled | independent
    momentum: float = 0.9  # sgd
    dampening: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam
    eps: float = 1e-8  # adam
    amsgrad: bool = False  # adam
    relative: bool = False  # scale decay by each tensor's RMS (Adafactor style)
    # which tensors decay: timm | names | scale_invariant | scale_invariant_head |
    # scale_invariant_head_norm | all
    param_groups: str = "all"
    no_decay_names: list[str] = field(default_factory=lambda: ["bias", "norm", "bn"])
    wd_schedule: str = "constant"  # constant | linear | cosine | step (multiplies wd)
    normalized: bool = False  # weight_decay is lam_norm: lam = lam_norm*sqrt(b/(B*T))


@dataclass
class ModelConfig(dict[str, Any]):
    """The model group. With ``_target_`` (a user's nn.Module class or function, e.g.
    ``mypkg.nets.Net``) keys beyond these fields are its constructor arguments (new keys on the
    command line: ``+model.hidden=64``); without one, extra keys are refused by :func:`validate`."""

    name: str = "mlp"  # mlp | mlp_bn | cnn | cnn_bn | resnet20 | resnet_tiny (or your own label)
    _target_: str = ""  # your model: package.module.Class (see docs/byo.md)
    width: int = 256  # hidden units (mlp) or base channels (cnn/resnet)
    depth: int = 2  # hidden layers (mlp), blocks (transformer)
    heads: int = 4  # transformer: attention heads (divides width)
    bn_affine: bool = True  # BatchNorm with a learned gain and shift (false: plain normalization)
    bn_eps: float = 1e-5  # BatchNorm's eps (added to the batch variance)
    frozen_head: bool = False  # the classifier keeps its random init (not trained, not decayed)
    head_scale: float = 1.0  # the classifier's initial weights and bias times this


@dataclass
class DataConfig(dict[str, Any]):
    """The data group. With ``_target_`` (a user's loader, e.g. ``mypkg.data.load``) keys beyond
    these fields are its keyword arguments, as for :class:`ModelConfig`."""

    name: str = "mnist1d"  # mnist1d | cifar10 | cifar100 (or your own label)
    _target_: str = ""  # your loader: package.module.function (see docs/byo.md)
    root: str = "${oc.env:LRWD_DATA_DIR,'~/.cache/lrwd'}"  # cache (mnist1d) / dataset dir (cifar)
    num_samples: int = 5000  # mnist1d: total generated samples (train+test)
    train_fraction: float = 0.8  # mnist1d: train share of num_samples (rest is the test set)
    n_train: int = 0  # if > 0, keep only this many training samples (after the val split)
    data_seed: int = 42  # mnist1d generation seed (the task itself, not the trial seed)
    modulus: int = 97  # modular: p of (a + b) mod p; train_fraction is the share of the p^2 pairs
    val_size: int = 500  # validation split carved from the training set
    batch_size: int = 100
    augment: bool = True  # cifar: random crop (pad 4) + horizontal flip, on device


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | cosine | step | warmup_cosine | warmup_constant
    warmup_fraction: float = 0.0  # share of total steps spent in linear warmup
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions
    gamma: float = 0.1  # step: factor at each milestone
    min_factor: float = 0.0  # cosine floor as a fraction of the base lr


@dataclass
class TrainConfig:
    epochs: int = 20
    max_steps: int = 0  # if > 0, overrides epochs
    eval_every: int = 0  # report hook interval in steps; 0 = once per epoch
    seed: int = 0  # trial seed: init and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float64
    threads: int = 0  # torch CPU threads; 0 = all available cores
    # your loss(logits, targets) -> the batch mean, as package.module.fn; "": cross-entropy
    loss: str = ""
    # > 0: evaluate the test split at every report and record steps_to_target, the first report
    # step whose test accuracy is >= this (NaN if never); 0: not recorded (NaN)
    target_accuracy: float = 0.0
    # per-step weight norms and angular updates (scale-invariant tensors, the rest, each layer)
    # in the reported metrics and the trial's si_angle ... si_tensors; false: not measured
    instruments: bool = True
    # population training only: torch.compile the batched loss and the optimizer update
    # (inductor; compiled once per process and shape, eager fallback if compilation fails)
    compile: bool = False


@dataclass
class RangeConfig:
    min: float = MISSING
    max: float = MISSING
    num: int = MISSING


@dataclass
class SweepConfig:
    lr: RangeConfig = field(default_factory=lambda: RangeConfig(1e-4, 1e-1, 7))
    weight_decay: RangeConfig = field(default_factory=lambda: RangeConfig(1e-5, 1e-1, 7))
    include_zero_wd: bool = False  # add a wd=0 column to the grid
    seeds: int = 1
    sampler: str = "grid"  # grid | random | tpe | valley
    n_trials: int = 0  # random/tpe: trials to run (0 = grid size)
    pruner: str = "none"  # none | median | hyperband
    workers: int = 1  # local worker processes (or Slurm array tasks) on one study
    population: Any = "auto"  # 1 = sequential; P = cells trained together; auto
    heartbeat_s: int = 60  # lease heartbeat (every storage); stale trials re-run after 2x this
    study_name: str = ""  # default: <name>; each variant's study is <study_name>-<opt>-<decay>
    variants: list[str] = field(default_factory=list)  # e.g. [adam/l2, adam/independent]
    # model options crossed with the variants (e.g. [mlp, mlp_bn]); each (model, variant) is its
    # own study <study_name>-<model>-<opt>-<decay>. Empty: the one configured model.
    models: list[str] = field(default_factory=list)
    # per-variant grid ranges over the ones above, keyed by optimizer (sgd), decay (independent)
    # or both (sgd/independent, or sgd-independent on the command line; the most specific wins),
    # e.g. {sgd: {lr: {min: 1e-3, max: 1, num: 7}}}
    ranges: dict[str, Any] = field(default_factory=dict)
    # failed cells (an exception in training, not a lost worker) are run again on a rerun at most
    # this many times; after that they stay FAILED and are reported
    max_retries: int = 2
    action: str = "run"  # run | extend (a changed grid) | report (from the storage) | status
    # sampler=valley: refinement rounds per lr row after the coarse grid, each `refine` times
    # finer in log wd than the one before (the best wd is resolved to the coarse step^(1/refine^rounds))
    rounds: int = 2
    refine: int = 3
    # named settings crossed with the variants, each its own studies <study_name>-<arm>-... and
    # its own experiment <name>-<arm> in results.csv: overrides of the optimizer (not its name
    # or decay), model, data, schedule and train groups, e.g.
    # {n2000: {data: {n_train: 2000}}, e80: {train: {epochs: 80}}}. Empty: one setting.
    arms: dict[str, Any] = field(default_factory=dict)


@dataclass
class StorageConfig:
    kind: str = "sqlite"  # sqlite | journal | url | memory
    url: str = ""  # kind=url: any SQLAlchemy URL, e.g. postgresql://user:pw@host/db
    path: str = ""  # sqlite/journal file; default: <output dir>/study.db|study.journal


@dataclass
class TrackingConfig:
    mode: str = "auto"  # auto | online | offline | disabled
    project: str = ""  # empty: $WANDB_PROJECT, else lrwd
    entity: str = ""  # empty: $WANDB_ENTITY, else the login's default
    tags: list[str] = field(default_factory=list)
    dir: str = ""  # default: <output dir>


@dataclass
class LauncherConfig:
    name: str = "local"  # local | slurm
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 60
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 8
    array_parallelism: int = 64
    signal_delay_s: int = 120
    max_requeue: int = 3
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    folder: str = ""  # submitit log folder; default <output dir>/slurm
    wait: bool = False
    python: str = ""  # interpreter on the compute nodes; default: this one


@dataclass
class HeldoutConfig:
    # learning rates (grid values) the decay rule is not fitted on; the held-out check
    # (decay_rule_heldout.csv) reports the rule's predicted against their found best wd
    lr: list[float] = field(default_factory=list)
    # training-set sizes (arms over data.n_train) the N exponent is not fitted on, likewise
    n_train: list[float] = field(default_factory=list)


@dataclass
class AnalysisConfig:
    # the search box of each variant for the tuning cost per trial budget (analysis.metrics:
    # budget.csv, trials_to_within_1pt), keyed like sweep.ranges (optimizer, decay or
    # optimizer/decay, the most specific wins), e.g. {adam: {lr: [1e-4, 1e-2],
    # weight_decay: [1e-6, 1e-2]}}; a variant without one uses its whole grid
    boxes: dict[str, Any] = field(default_factory=dict)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)


@dataclass
class LrwdConfig:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    name: str = "quick"  # experiment name: output dir and study names derive from it
    output_dir: str = ""  # default: Hydra's run dir (outputs/<name>)


# group -> its schema, for the keys a user's _target_ takes (user_keys)
_SCHEMAS: dict[str, type] = {"model": ModelConfig, "data": DataConfig}


def _choice(value: Any, group: str, field_name: str) -> None:
    allowed = registry.names(group)
    if value not in allowed:
        guess = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
        raise ConfigError(
            f"{field_name}: '{value}' is not one of {', '.join(allowed)}; "
            f"pass {field_name}={guess[0] if guess else '<one of those>'}"
        )


def _positive(value: float, field_name: str, *, zero_ok: bool = False) -> None:
    ok = value >= 0 if zero_ok else value > 0
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(
            f"{field_name}: {value} must be {bound}; pass {field_name}=<a value {bound}>"
        )


def _range(r: Any, field_name: str) -> None:
    _positive(float(r.min), f"{field_name}.min")
    _positive(float(r.max), f"{field_name}.max")
    if float(r.max) < float(r.min):
        raise ConfigError(
            f"{field_name}: the range [{r.min}, {r.max}] is empty; "
            f"make {field_name}.max >= {field_name}.min"
        )
    if int(r.num) < 1:
        raise ConfigError(f"{field_name}.num: {r.num} cells; pass {field_name}.num=<1 or more>")
    if int(r.num) > 1 and float(r.max) == float(r.min):
        raise ConfigError(
            f"{field_name}: {r.num} cells over a single value {r.min}; "
            f"widen the range or pass {field_name}.num=1"
        )


def _model_fits_data(model: str, data: str, field_name: str) -> None:
    if not registry.fits(model, data):
        kind = registry.INPUT_KINDS[registry.model(model).input]
        raise ConfigError(
            f"{field_name}: '{model}' needs {kind.description} "
            f"({', '.join(registry.datasets_for(model))}), not {data}; "
            f"use model={registry.one_of(registry.models_for(data))} for {data}"
        )


def user_keys(cfg: Any, group: str) -> dict[str, Any]:
    """The keys of the ``model`` or ``data`` group that are no field of its schema: a user's
    ``_target_`` arguments, as plain Python values."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    own = {f.name for f in fields(_SCHEMAS[group])}
    out: dict[str, Any] = {}
    for k in cfg:
        if k in own:
            continue
        v = cfg[k]
        out[str(k)] = (
            OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
        )
    return out


def _check_importable(path: str, key: str) -> Any:
    try:
        return registry.resolve(path)
    except LookupError as exc:
        raise ConfigError(
            f"{key}: {exc}; put its module in the working folder you run from (or install its "
            "package) and spell it as package.module.Name"
        ) from None


def _check_target(cfg: Any, group: str) -> str:
    """``<group>._target_`` (empty: a built-in name): importable and callable; keys beyond the
    schema's fields only with a target. Returns the target."""
    target = str(cfg.get("_target_") or "")
    extra = list(user_keys(cfg, group))
    if not target:
        if extra:
            raise ConfigError(
                f"{group}.{extra[0]}: not a field of {group}; remove it, or set "
                f"{group}._target_=<your {'nn.Module class' if group == 'model' else 'loader'}> "
                "to pass it as an argument"
            )
        return ""
    obj = _check_importable(target, f"{group}._target_")
    if not callable(obj):
        raise ConfigError(
            f"{group}._target_: {target} is a {type(obj).__name__}, not a class or function; "
            f"name {'an nn.Module class' if group == 'model' else 'a loader function'}"
        )
    return target


def name_targets(cfg: Any) -> None:
    """Give a user's ``model._target_`` / ``data._target_`` its own name in results, figures and
    W&B: a ``name`` still naming a built-in entry (inherited from the default group) becomes the
    target's last component (``mypkg.nets.Net`` -> ``Net``); a name of the user's own is kept."""
    for group, table in (("model", registry.MODELS), ("data", registry.DATASETS)):
        node = cfg[group]
        target = str(node.get("_target_") or "")
        if target and node.name in table:
            node.name = target.replace(":", ".").rsplit(".", 1)[-1]


def _is_variant_key(key: str) -> bool:
    """Whether ``key`` names an optimizer, a decay form or optimizer/decay (or optimizer-decay)."""
    parts = key.replace("-", "/").split("/")
    optimizers, decays = registry.names("optimizer"), registry.names("decay")
    return (len(parts) == 1 and key in optimizers + decays) or (
        len(parts) == 2 and parts[0] in optimizers and parts[1] in decays
    )


def _check_ranges(key: str, value: Any, sweep: Any) -> None:
    if not _is_variant_key(key):
        raise ConfigError(
            f"sweep.ranges: key '{key}' is not an optimizer, a decay or optimizer/decay "
            "(optimizer-decay on the command line); "
            "e.g. sweep.ranges.sgd.lr.min=1e-3"
        )
    if not hasattr(value, "keys") or set(value.keys()) - {"lr", "weight_decay"}:
        raise ConfigError(
            f"sweep.ranges.{key}: only lr and weight_decay ranges may be set; "
            f"e.g. sweep.ranges.{key}.lr={{min: 1e-3, max: 1, num: 7}}"
        )
    for axis, r in value.items():
        unknown = set(r.keys()) - {"min", "max", "num"}
        if unknown:
            raise ConfigError(
                f"sweep.ranges.{key}.{axis}: unknown part {sorted(unknown)[0]!r}; "
                f"set min, max and/or num, e.g. sweep.ranges.{key}.{axis}.min=1e-3"
            )
        # a part left out comes from sweep.<axis> (sweep.lr.num=9 applies to every range)
        _range(OmegaConf.merge(sweep[axis], r), f"sweep.ranges.{key}.{axis}")


ARM_GROUPS = ("optimizer", "model", "data", "schedule", "train")  # what sweep.arms may set


def _check_arms(cfg: Any) -> None:
    """Each arm of ``sweep.arms``: a plain name, overrides of :data:`ARM_GROUPS` only (not the
    variant's optimizer.name / decay), and a config that is valid with them applied."""
    import re

    arms = cfg.sweep.get("arms") or {}
    for name, over in arms.items():
        key = f"sweep.arms.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.]+", str(name)):
            raise ConfigError(
                f"{key}: an arm's name is letters, digits, '_' or '.'; e.g. sweep.arms.n2000"
            )
        if not hasattr(over, "keys") or not over.keys():
            raise ConfigError(f"{key}: give the arm's overrides, e.g. {{data: {{n_train: 2000}}}}")
        bad = [str(g) for g in over.keys() if g not in ARM_GROUPS]
        if bad:
            raise ConfigError(
                f"{key}.{bad[0]}: an arm sets {', '.join(ARM_GROUPS)} only; "
                f"move {bad[0]} out of the arm"
            )
        opt = over.get("optimizer") or {}
        for fixed in ("name", "decay"):
            if fixed in opt:
                raise ConfigError(
                    f"{key}.optimizer.{fixed}: the variants set it; list them in sweep.variants"
                )
        base = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
        try:
            merged = OmegaConf.merge(base, {g: over[g] for g in over.keys()})
        except Exception as exc:  # noqa: BLE001 - an unknown key or wrong type: one line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{key}: {first}; fix the arm's overrides") from None
        merged.sweep.arms = {}
        try:
            validate(merged)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def _check_box(key: str, value: Any) -> None:
    if not _is_variant_key(key):
        raise ConfigError(
            f"analysis.boxes: key '{key}' is not an optimizer, a decay or optimizer/decay; "
            "e.g. analysis.boxes.adam.lr=[1e-4,1e-2]"
        )
    if not hasattr(value, "keys") or set(value.keys()) - {"lr", "weight_decay"}:
        raise ConfigError(
            f"analysis.boxes.{key}: only lr and weight_decay ranges may be set; "
            f"e.g. analysis.boxes.{key}.lr=[1e-4,1e-2]"
        )
    for axis, r in value.items():
        try:
            lo, hi = (float(x) for x in r)
        except (TypeError, ValueError):
            lo = hi = float("nan")
        if not (0 < lo < hi):
            raise ConfigError(
                f"analysis.boxes.{key}.{axis}: {r} is not [min, max] with 0 < min < max; "
                f"e.g. analysis.boxes.{key}.{axis}=[1e-4,1e-2]"
            )


def validate(cfg: Any) -> None:
    """Semantic checks that types cannot express. Raises ConfigError (one line) on the first."""
    o = cfg.optimizer
    if o.name in registry.OPTIMIZER_ALIASES:
        family, decay = registry.OPTIMIZER_ALIASES[o.name]
        raise ConfigError(
            f"optimizer.name: '{o.name}' is not a family ({registry.one_of(registry.names('optimizer'))}); "
            f"pass optimizer={o.name} (optimizer.name={family} with optimizer.decay={decay})"
        )
    _choice(o.name, "optimizer", "optimizer.name")
    _choice(o.decay, "decay", "optimizer.decay")
    _positive(float(o.lr), "optimizer.lr")
    _positive(float(o.weight_decay), "optimizer.weight_decay", zero_ok=True)
    if not 0.0 <= float(o.momentum) < 1.0:
        raise ConfigError(f"optimizer.momentum: {o.momentum} is outside [0, 1); e.g. 0.9")
    if len(o.betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in o.betas):
        raise ConfigError(
            f"optimizer.betas: {list(o.betas)} must be two values in [0, 1); e.g. [0.9,0.999]"
        )
    _positive(float(o.eps), "optimizer.eps", zero_ok=True)
    _choice(o.param_groups, "param_groups", "optimizer.param_groups")
    _choice(o.wd_schedule, "wd_schedule", "optimizer.wd_schedule")
    model_target = _check_target(cfg.model, "model")
    data_target = _check_target(cfg.data, "data")
    if not model_target:
        _choice(cfg.model.name, "model", "model.name")
    if not data_target:
        _choice(cfg.data.name, "data", "data.name")
    if not model_target and not data_target:
        _model_fits_data(cfg.model.name, cfg.data.name, "model.name")
    if cfg.train.get("loss"):
        _check_importable(str(cfg.train.loss), "train.loss")
    _positive(float(cfg.model.bn_eps), "model.bn_eps")
    _positive(float(cfg.model.head_scale), "model.head_scale", zero_ok=True)
    _positive(int(cfg.data.batch_size), "data.batch_size")
    _choice(cfg.schedule.name, "schedule", "schedule.name")
    if int(cfg.train.epochs) < 1 and int(cfg.train.max_steps) < 1:
        raise ConfigError("train.epochs: must be >= 1 (or set train.max_steps >= 1)")
    if not 0.0 <= float(cfg.train.target_accuracy) <= 1.0:
        raise ConfigError(
            f"train.target_accuracy: {cfg.train.target_accuracy} is outside [0, 1]; "
            "pass e.g. train.target_accuracy=0.95 (0: steps_to_target not recorded)"
        )
    if cfg.model.name in registry.MODELS and "heads" in registry.model(cfg.model.name).reads:
        if int(cfg.model.heads) < 1 or int(cfg.model.width) % int(cfg.model.heads):
            raise ConfigError(
                f"model.heads: {cfg.model.heads} heads do not divide model.width="
                f"{cfg.model.width}; pass a divisor of the width, e.g. model.heads=4"
            )
    if cfg.train.dtype not in registry.names("dtype"):
        raise ConfigError(
            f"train.dtype: '{cfg.train.dtype}' is not {registry.one_of(registry.names('dtype'))}"
        )
    s = cfg.sweep
    _range(s.lr, "sweep.lr")
    _range(s.weight_decay, "sweep.weight_decay")
    if int(s.seeds) < 1:
        raise ConfigError(f"sweep.seeds: {s.seeds}; pass sweep.seeds=<1 or more>")
    _choice(s.sampler, "sampler", "sweep.sampler")
    if s.sampler == "valley":
        if int(s.get("rounds", 2)) < 0:
            raise ConfigError(f"sweep.rounds: {s.rounds}; pass sweep.rounds=<0 or more>")
        if int(s.get("refine", 3)) < 2:
            raise ConfigError(f"sweep.refine: {s.refine}; pass sweep.refine=<2 or more>")
        if int(s.weight_decay.num) < 2:
            raise ConfigError(
                f"sweep.weight_decay.num: {s.weight_decay.num}; sweep=valley refines between "
                "grid points, pass sweep.weight_decay.num=<2 or more>"
            )
    _choice(s.pruner, "pruner", "sweep.pruner")
    _choice(s.action, "action", "sweep.action")
    if int(s.workers) < 1:
        raise ConfigError(f"sweep.workers: {s.workers}; pass sweep.workers=<1 or more>")
    if int(s.heartbeat_s) < 1:
        raise ConfigError(f"sweep.heartbeat_s: {s.heartbeat_s}; pass sweep.heartbeat_s=<1 or more>")
    if int(s.max_retries) < 0:
        raise ConfigError(f"sweep.max_retries: {s.max_retries}; pass sweep.max_retries=<0 or more>")
    pop = s.population
    if not (pop == "auto" or (str(pop).isdigit() and int(pop) >= 1)):
        raise ConfigError(f"sweep.population: '{pop}'; pass sweep.population=auto or an int >= 1")
    for v in s.variants:
        parts = str(v).split("/")
        alias = registry.OPTIMIZER_ALIASES.get(parts[0])
        if alias and len(parts) <= 2:
            family, decay = alias
            fix = f"{family}/{parts[1] if len(parts) == 2 else decay}"
            raise ConfigError(
                f"sweep.variants: '{v}': a variant is family/decay with family "
                f"{registry.one_of(registry.names('optimizer'))} ({parts[0]} is "
                f"{family}/{decay}); pass sweep.variants=[{fix}]"
            )
        if len(parts) != 2:
            raise ConfigError(
                f"sweep.variants: '{v}' is not optimizer/decay; e.g. adam/independent"
            )
        _choice(parts[0], "optimizer", f"sweep.variants ('{v}') optimizer")
        _choice(parts[1], "decay", f"sweep.variants ('{v}') decay")
    for key, value in (s.get("ranges") or {}).items():
        _check_ranges(str(key), value, s)
    for key, value in ((cfg.get("analysis") or {}).get("boxes") or {}).items():
        _check_box(str(key), value)
    for axis, values in (((cfg.get("analysis") or {}).get("heldout")) or {}).items():
        for x in values or []:
            _positive(x, f"analysis.heldout.{axis}")
    _check_arms(cfg)
    if (model_target or data_target) and list(s.get("models") or []):
        raise ConfigError(
            f"sweep.models: {list(s.models)} crosses built-in models, but model._target_ / "
            "data._target_ is set; pass sweep.models=[] (one study per model: run it per target)"
        )
    for m in s.get("models") or []:
        _choice(m, "model", f"sweep.models ('{m}')")
        _model_fits_data(m, cfg.data.name, f"sweep.models ('{m}')")
    st = cfg.storage
    _choice(st.kind, "storage", "storage.kind")
    storage = registry.storage(st.kind)
    launcher = registry.LAUNCHERS.get(cfg.launcher.name)
    on_cluster = launcher is None or launcher.cluster
    if st.kind == "url" and not st.url:
        raise ConfigError(
            "storage.url: empty; pass storage.url=postgresql://user@host/db (any SQLAlchemy URL)"
        )
    if storage.persistent and not storage.shared and int(s.workers) > 1:
        raise ConfigError(
            f"storage.kind: {storage.label} cannot be shared by {s.workers} workers; use "
            "storage=journal (a file on a shared filesystem) or storage=url "
            "storage.url=postgresql://..."
        )
    if not storage.persistent and (int(s.workers) > 1 or on_cluster):
        raise ConfigError(
            f"storage.kind: {storage.label} is private to one process; use storage=journal or "
            "storage=url (storage=sqlite for one local worker)"
        )
    _choice(cfg.tracking.mode, "tracking", "tracking.mode")
    _choice(cfg.launcher.name, "launcher", "launcher.name")
    if on_cluster and not storage.cluster:
        raise ConfigError(
            f"storage.kind: {storage.label} is not safe on a cluster; use storage=journal or "
            "storage=url"
        )


def _conf_dir() -> str:
    """The Hydra configs: ``harness/conf`` inside an installed wheel, else ``conf/`` beside the
    package (a checkout, an editable install)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for folder in (here / "conf", here.parent / "conf"):
        if (folder / "config.yaml").is_file():
            return str(folder)
    raise RuntimeError(f"lrwd's configs are missing: no config.yaml in {here.parent / 'conf'}")


CONF_DIR = _conf_dir()


MAX_SUBDIR = 120  # characters of a multirun job's directory name


def multirun_subdir(override_dirname: Any, job_num: Any) -> str:
    """A multirun job's directory: its overrides (``optimizer.decay=l2``) when that name is short,
    else ``job<N>-<hash of the overrides>``, since a long override list would exceed the file
    system's 255-byte name limit. Each job's ``config.yaml`` records its overrides either way."""
    import hashlib

    name = str(override_dirname or "")
    if name and len(name) <= MAX_SUBDIR:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"job{job_num}-{digest}"


def register_schema() -> None:
    """Register :class:`LrwdConfig` as ``lrwd_schema`` (conf/config.yaml's first default) and the
    ``lrwd_subdir`` resolver that names multirun job directories."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DICT_WARNING, category=UserWarning)
        ConfigStore.instance().store(name="lrwd_schema", node=LrwdConfig)
    if not OmegaConf.has_resolver("lrwd_subdir"):
        OmegaConf.register_new_resolver("lrwd_subdir", multirun_subdir)


def compose_config(
    overrides: list[str] | None = None, config_dir: str | None = None, *, run_dir: bool = False
) -> Any:
    """Compose ``conf/config.yaml`` with Hydra overrides outside a Hydra app (tests, workers).

    With ``run_dir=True``: ``(config, absolute hydra.run.dir)``, the output dir a Hydra run of
    the same overrides would use.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    register_schema()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with (
        initialize_config_dir(config_dir=config_dir or CONF_DIR, version_base="1.3"),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=_DICT_WARNING, category=UserWarning)
        cfg = compose("config", overrides=list(overrides or []), return_hydra_config=run_dir)
    if not run_dir:
        return cfg
    out = str(__import__("pathlib").Path(str(cfg.hydra.run.dir)).expanduser().resolve())
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, out
