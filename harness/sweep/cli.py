"""``python -m harness.sweep``: the main job, and the only place that wires the pieces together.

config (Hydra, validated) -> studies (one per optimizer variant, grid enqueued once)
-> workers (in-process, local processes or a Slurm array) -> results.csv -> summary + figures.

Run ``python -m harness.sweep --help`` for the config groups and examples.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness import phases
from harness.config import (
    CONF_DIR,
    compose_config,
    name_targets,
    register_schema,
    validate,
)
from harness.errors import ConfigError
from harness.secrets import hide_url, mask_config, real_url
from harness.storage import describe, open_storage
from harness.storage import exists as storage_exists
from harness.sweep import plan, worker
from harness.sweep.launch import LaunchError
from harness.sweep.plan import prepare, total_cells
from harness.sweep.progress import CompletionRate, clock
from harness.sweep.queue import Claim, cell_counts
from harness.sweep.report import count_done, next_commands, report
from harness.usage import error_line, fail

log = logging.getLogger("lrwd.sweep")


# --------------------------------------------------------------------------------------------
# Resolving what the user asked for


def _override_keys(overrides: list[str]) -> list[str]:
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides]


def _explicit_optimizer(overrides: list[str]) -> bool:
    keys = _override_keys(overrides)
    single = any(k in ("optimizer", "optimizer.name", "optimizer.decay") for k in keys)
    listed = any(k == "sweep.variants" for k in keys)
    return single and not listed


def _explicit_model(overrides: list[str]) -> bool:
    keys = _override_keys(overrides)
    return any(k in ("model", "model.name") for k in keys) and "sweep.models" not in keys


def resolve(cfg: DictConfig, overrides: list[str], output_dir: str) -> DictConfig:
    """Validate and freeze the config a sweep runs with (variants, output dir, secrets)."""
    validate(cfg)
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    name_targets(out)  # model._target_=mypkg.nets.Net: model.name Net
    if _explicit_optimizer(overrides):
        # `optimizer.decay=l2` (or a multirun over it) names the one variant to run.
        out.sweep.variants = []
    if _explicit_model(overrides):
        # `model=mlp_bn` names the one model to run, whatever the experiment's sweep.models.
        out.sweep.models = []
    out.output_dir = str(Path(cfg.output_dir or output_dir).resolve())
    if out.storage.kind == "url":
        # The password travels in the environment (inherited by local and Slurm workers),
        # never in a saved config, a pickle or a log line.
        out = hide_url(out)
    return out


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = mask_config(OmegaConf.to_container(cfg, resolve=True))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Driver


class _LogProgress:
    """Progress as plain lines when stdout is not a terminal (nohup, Slurm, CI logs), where the
    live bar would print nothing until the end: one line every ``every_s`` seconds and at the end.
    """

    def __init__(self, total: int, done0: int, every_s: float = 30.0) -> None:
        self.total, self.done0, self.every_s = total, done0, every_s
        self.enabled = not sys.stdout.isatty()
        self.t0 = self.last = time.monotonic()
        self.rate = CompletionRate(total, done0, self.t0)  # the time left, also for the live bar

    def __call__(self, done: int, last: str = "", force: bool = False) -> None:
        now = time.monotonic()
        self.rate.update(done, now)
        if not self.enabled or (not force and now - self.last < self.every_s):
            return
        self.last = now
        elapsed = now - self.t0
        left = self.rate.text(now)
        eta = f", {left}" if left else ""
        pct = 100 * done / max(self.total, 1)
        tail = f"; last: {last}" if last else ""
        print(
            f"progress: {done}/{self.total} cells ({pct:.0f}%), {clock(elapsed)} elapsed{eta}"
            f"{tail}",
            flush=True,
        )


def run_local(cfg: DictConfig, studies: list[Any]) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    total = total_cells(cfg)
    done0 = count_done(studies)
    plain = _LogProgress(total, done0)

    class TimeLeftColumn(ProgressColumn):
        """Time left from the cells' completion rate (progress.CompletionRate), counting down."""

        def render(self, task: Any) -> Text:
            return Text(plain.rate.text(), style="progress.remaining")

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeLeftColumn(),
        TextColumn("{task.fields[last]}"),
    )
    with Progress(*columns, transient=False, disable=plain.enabled) as progress:
        task = progress.add_task(cfg.name, total=total, completed=done0, last="")
        if int(cfg.sweep.workers) == 1:

            def on_result(study_name: str, claim: Claim, result: Any) -> None:
                variant = study_name.split("-", 1)[-1]
                if isinstance(result, BaseException):
                    last = f"{variant} #{claim.number}: {type(result).__name__}"
                else:
                    r = result.to_dict()
                    tag = " diverged" if r.get("diverged") else ""
                    last = (
                        f"{variant} lr={claim.params['lr']:.2g} "
                        f"wd={claim.params['weight_decay']:.2g}: "
                        f"test err {r['test_error']:.3f}{tag}"
                    )
                    progress.advance(task)
                progress.update(task, last=last)
                plain(int(progress.tasks[0].completed), last)

            os.environ.setdefault("LRWD_WORKER_INDEX", "0")
            from harness.sweep.launch import set_worker_threads

            own = real_url(cfg)
            set_worker_threads(own, 1)
            worker.run_worker(own, on_result=on_result)
            progress.update(task, completed=count_done(studies))
            plain(count_done(studies), force=True)
            return 0
        from harness.sweep.launch import run_local_workers

        def poll() -> None:
            done = count_done(studies)
            progress.update(task, completed=done)
            plain(done)

        codes = run_local_workers(cfg, poll=poll)
        progress.update(task, completed=count_done(studies))
        plain(count_done(studies), force=True)
    bad = [c for c in codes if c]
    if bad:
        log.error("%d of %d workers exited with errors: %s", len(bad), len(codes), bad)
        return 1
    return 0


def sweep(cfg: DictConfig, overrides: list[str], output_dir: str) -> int:
    with phases.phase("config"):
        cfg = resolve(cfg, overrides, output_dir)
    out = Path(cfg.output_dir)
    url = describe(cfg)
    action = cfg.sweep.action
    if action in ("status", "report"):  # read-only: opens what exists, creates nothing
        if not storage_exists(cfg, out):
            print(f"nothing has run here yet: no study in {url}")
            return 0
        found = plan.existing_studies(cfg, open_storage(real_url(cfg), out))
        studies = [s for _, s in found if s is not None]
        if action == "status" or not studies:
            for variant, s in found:
                if s is None:
                    print(f"{plan.study_name(cfg, variant)}: no such study in {url}")
                else:
                    counts = {k: v for k, v in cell_counts(s).items() if v}
                    print(f"{s.study_name}: {counts}")
            return 0
    else:
        with phases.phase("imports"):
            from harness.models import check_workload

        # missing CIFAR, a user's model that does not fit its data: one line, before any study
        with phases.phase("config"):
            check_workload(cfg)
        if cfg.launcher.name == "slurm" and action in ("run", "extend"):
            from harness.sweep.launch import check_slurm

            check_slurm()  # an unreachable controller: one line, before anything is enqueued
        with phases.phase("study"):
            storage, studies = prepare(cfg)
        save_config(cfg, out / "config.yaml")
    if action in ("run", "extend"):
        where = ""
        if cfg.launcher.name != "slurm":
            from harness.sweep.launch import threads_note

            note, warning = threads_note(cfg, int(cfg.sweep.workers))
            where = f"; {note}"
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        print(
            f"lrwd: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, "
            f"{total_cells(cfg)} cells in all, in {url}; output {out}{where}",
            flush=True,
        )
        if cfg.launcher.name == "slurm":
            from harness.sweep.launch import submit_slurm

            submit_slurm(cfg)
            if not cfg.launcher.wait:
                return 0
        else:
            rc = run_local(cfg, studies)
            if rc:
                return rc
    with phases.phase("report"):
        paths = report(cfg, studies)
    print("\nOutputs:")
    print(f"  study      {url}")
    for key, path in paths.items():
        print(f"  {key:<10} {path}")
    print(f"  config     {out / 'config.yaml'}")
    if cfg.tracking.mode != "disabled":
        print(f"  wandb      {Path(cfg.tracking.dir or out) / 'wandb'}")
    for key, command in next_commands(cfg).items():
        print(f"  {key:<10} {command}")
    return 0


register_schema()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    if _composing[0]:
        # Hydra composed the config
        phases.add(
            "config", time.perf_counter() - _composing[0], time.process_time() - _composing[1]
        )
    hc = HydraConfig.get()
    try:
        rc = sweep(cfg, list(hc.overrides.task), hc.runtime.output_dir)
    except ConfigError as exc:
        sys.exit(fail(str(exc)))
    except LaunchError as exc:
        sys.exit(fail(str(exc), code=1))
    if rc:
        sys.exit(rc)


_composing = [0.0, 0.0]  # when main() handed over to Hydra (wall, CPU)

# Hydra's flags that stop before composing a config (help, version, completion)
_NO_CONFIG_FLAGS = ("help", "hydra_help", "version", "shell_completion", "info")


def check_command_line(argv: list[str]) -> str | None:
    """The one-line error for a command line that cannot run, or None.

    Composes and validates the config Hydra is about to run, so that a typo fails in one line
    before Hydra creates the output folder, also with ``--cfg job`` (which prints the config
    without running). A ``--multirun`` is checked job by job, when each job starts.
    """
    from hydra._internal.utils import get_args_parser

    args, unknown = get_args_parser().parse_known_args(argv)
    if unknown:
        return (
            f"{unknown[0]}: not an option of python -m harness.sweep; pass key=value overrides "
            "(python -m harness.sweep --help)"
        )
    modes = [f for f, on in (("--multirun", args.multirun), ("--cfg", args.cfg)) if on]
    if len(modes) > 1:
        return f"{modes[1]}: cannot be combined with {modes[0]}; pass one of them"
    if args.config_path or args.config_name or args.config_dir:
        return None
    if any(getattr(args, flag, None) for flag in _NO_CONFIG_FLAGS):
        return None
    try:
        jobs = _jobs_to_check(list(args.overrides), bool(args.multirun))
        for overrides in jobs:
            cfg = compose_config(overrides)
            validate(cfg)
        if jobs and cfg.launcher.name == "slurm" and cfg.sweep.action in ("run", "extend"):
            from harness.sweep.launch import check_slurm

            check_slurm()
    except Exception as exc:  # noqa: BLE001 - a config error is one line, anything else raises
        line = error_line(exc)
        if line is None:
            raise
        return line
    return None


def _jobs_to_check(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to validate: the run's, or for a ``--multirun`` every value of each
    swept key once (the other swept keys at their first value). A sweep whose values need
    Hydra's config loader (``glob(...)``) is left to the jobs."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = OverridesParser.create().parse_overrides(overrides)
    try:
        values = [
            list(o.sweep_string_iterator()) if o.is_sweep_override() else [None] for o in parsed
        ]
    except HydraException:
        return []

    def line(i: int, value: str | None) -> str:
        o = parsed[i]
        return o.input_line if value is None else f"{o.get_key_element()}={value}"

    first = [line(i, v[0]) for i, v in enumerate(values)]
    jobs = [first]
    for i, vs in enumerate(values):
        for value in vs[1:]:
            jobs.append([*first[:i], line(i, value), *first[i + 1 :]])
    return jobs


def main(argv: list[str] | None = None) -> None:
    """``python -m harness.sweep``: a bad command line (an unknown key or group option, a value of
    the wrong type, a failed validation) is one line on stderr and exit code 2, nothing written."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    phases.started()
    with phases.phase("config"):
        line = check_command_line(sys.argv[1:])
    if line:
        sys.exit(fail(line))
    # Hydra prints its own errors as a traceback and exits 1; HYDRA_FULL_ERROR=1 makes it raise
    # them here instead (a user who set it gets the full traceback).
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _composing[:] = [time.perf_counter(), time.process_time()]
    try:
        _app()
    except Exception as exc:  # noqa: BLE001 - a config error is one line, anything else raises
        line = None if user_full_error else error_line(exc)
        if line is None:
            raise
        sys.exit(fail(line))


if __name__ == "__main__":
    main()
