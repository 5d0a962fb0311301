"""Structured config schema: the contract between conf/*.yaml and the code.

Every group in ``conf/`` has a dataclass here. Hydra validates the composed YAML against
these classes, so a typo (``optimizer.lrr=...``) or a wrong type (``optimizer.lr=abc``) fails at
compose time, before any study exists. Semantic checks that a type cannot express (ranges,
allowed names) live in :func:`validate`, which raises :class:`ConfigError` with one line naming
the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

DECAYS = ("l2", "loss", "decoupled", "independent")
OPTIMIZERS = ("sgd", "adam")
MODELS = ("mlp", "mlp_bn", "cnn", "cnn_bn", "resnet20", "resnet_tiny")
DATASETS = ("mnist1d", "cifar10", "cifar100")
SCHEDULES = ("constant", "cosine", "step", "warmup_cosine", "warmup_constant")
WD_SCHEDULES = ("constant", "linear", "cosine", "step")
PARAM_GROUPS = ("timm", "names", "all")
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")
STORAGES = ("sqlite", "journal", "url", "memory")
TRACKING_MODES = ("auto", "online", "offline", "disabled")
LAUNCHERS = ("local", "slurm")


class ConfigError(ValueError):
    """A bad config value. The message is one line: ``field: problem; fix``."""


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
    param_groups: str = "all"  # timm | names | all   (which tensors decay)
    no_decay_names: list[str] = field(default_factory=lambda: ["bias", "norm", "bn"])
    wd_schedule: str = "constant"  # constant | linear | cosine | step (multiplies wd)
    normalized: bool = False  # weight_decay is lam_norm: lam = lam_norm*sqrt(b/(B*T))


@dataclass
class ModelConfig:
    name: str = "mlp"  # mlp | mlp_bn | cnn | cnn_bn | resnet20 | resnet_tiny
    width: int = 256  # hidden units (mlp) or base channels (cnn/resnet)
    depth: int = 2  # hidden layers (mlp)


@dataclass
class DataConfig:
    name: str = "mnist1d"  # mnist1d | cifar10 | cifar100
    root: str = "${oc.env:LRWD_DATA_DIR,~/.cache/lrwd}"  # cache (mnist1d) / dataset dir (cifar)
    num_samples: int = 5000  # mnist1d: total generated samples (train+test)
    train_fraction: float = 0.8  # mnist1d: train share of num_samples (rest is the test set)
    n_train: int = 0  # if > 0, keep only this many training samples (after the val split)
    data_seed: int = 42  # mnist1d generation seed (the task itself, not the trial seed)
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
    sampler: str = "grid"  # grid | random | tpe
    n_trials: int = 0  # random/tpe: trials to run (0 = grid size)
    pruner: str = "none"  # none | median | hyperband
    workers: int = 1  # local worker processes (or Slurm array tasks) on one study
    population: Any = "auto"  # 1 = sequential; P = cells trained together; auto
    heartbeat_s: int = 60  # RDB heartbeat; stale trials are re-run after 2x this
    study_name: str = ""  # default: derived from experiment and variant


@dataclass
class StorageConfig:
    kind: str = "sqlite"  # sqlite | journal | url | memory
    url: str = ""  # kind=url: any SQLAlchemy URL, e.g. postgresql://user:pw@host/db
    path: str = ""  # sqlite/journal file; default: <output dir>/study.db|study.journal


@dataclass
class TrackingConfig:
    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "lrwd"
    entity: str = ""
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
    experiment: str = "default"
    output_dir: str = ""  # default: Hydra's run dir
