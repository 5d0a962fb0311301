"""One-line errors for the command-line entry points.

Every ``python -m ...`` entry point reports a bad command line the same way: one line on stderr,
``error: <field>: <problem>; <fix>``, and exit code :data:`harness.errors.EXIT_USAGE`, before
anything is written. :func:`error_line` turns the errors Hydra and OmegaConf raise while
composing the config (an unknown key, a missing group option, a value of the wrong type, an
unparsable override) into that line; :class:`harness.errors.ConfigError` messages already have
that form.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
from typing import Any

from harness.errors import EXIT_USAGE, ConfigError


def fail(message: str, code: int = EXIT_USAGE) -> int:
    """Print ``error: <message>`` (one line, secrets masked) on stderr; return ``code``."""
    from harness.secrets import mask_secrets

    line = " ".join(mask_secrets(str(message)).split())
    print(f"error: {line}", file=sys.stderr)
    return code


def _close(word: str, choices: list[str]) -> str | None:
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def group_options(group: str, conf_dir: str | None = None) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``), sorted."""
    from harness.config import CONF_DIR

    folder = Path(conf_dir or CONF_DIR) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _missing_option(exc: Any) -> str:
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    group, _, option = missing.rpartition("/")
    if not group:
        return f"config '{missing}' not found; check the config group and option names"
    options = list(getattr(exc, "options", None) or group_options(group))
    key = group.replace("/", ".")
    if not options:
        return (
            f"{key}: there is no config group '{group}'; python -m harness.sweep --help lists them"
        )
    guess = _close(option, options)
    fix = f"pass {key}={guess}" if guess else f"pass {key}=<{'|'.join(options)}>"
    return f"{key}: no option '{option}' (options: {', '.join(options)}); {fix}"


def _schema_fields(object_type: Any) -> list[str]:
    if dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def _schema_default(full_key: str) -> Any:
    from omegaconf import OmegaConf

    from harness.config import LrwdConfig

    try:
        return OmegaConf.select(OmegaConf.structured(LrwdConfig), full_key, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - a key outside the schema (hydra.*): no example value
        return None


def _unknown_key(cause: Any, value: str) -> str:
    full_key = str(getattr(cause, "full_key", "") or getattr(cause, "key", ""))
    parent, _, key = full_key.rpartition(".")
    fields = _schema_fields(getattr(cause, "object_type", None))
    guess = _close(key, fields)
    where = parent or "the config"
    if guess:
        full = f"{parent}.{guess}" if parent else guess
        return f"{full_key}: no such key in {where}; did you mean {full}={value}?"
    listing = f" (keys: {', '.join(fields)})" if fields else ""
    return f"{full_key}: no such key in {where}{listing}; check the spelling"


def _bad_value(cause: Any, override: str) -> str:
    full_key = str(getattr(cause, "full_key", "") or "")
    problem = str(getattr(cause, "msg", "") or cause).splitlines()[0]
    default = _schema_default(full_key) if full_key else None
    if default is None:
        return f"{full_key or override}: {problem}; fix the value"
    example = (
        list(default) if hasattr(default, "__len__") and not isinstance(default, str) else default
    )
    kind = type(default).__name__ if not isinstance(example, list) else "list"
    shown = str(example).replace(" ", "")
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{full_key}: {problem}; pass {full_key}=<{article} {kind}, e.g. {shown}>"


def _override_value(message: str, key: str) -> str:
    # "Could not override 'optimizer.lrr'.\nTo append to your config use +optimizer.lrr=1"
    marker = f"+{key}="
    for line in message.splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return "..."


def error_line(exc: BaseException) -> str | None:
    """``<field>: <problem>; <fix>`` for a config error, or None for anything else.

    Handles :class:`harness.errors.ConfigError` and the errors Hydra and OmegaConf raise while
    composing: an unknown key, a missing group option, a value of the wrong type, an override
    Hydra cannot parse or apply.
    """
    if isinstance(exc, ConfigError):
        return str(exc)
    try:
        from hydra.errors import (
            ConfigCompositionException,
            HydraException,
            MissingConfigException,
            OverrideParseException,
        )
        from omegaconf.errors import (
            ConfigAttributeError,
            ConfigKeyError,
            OmegaConfBaseException,
            ValidationError,
        )
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if isinstance(exc, MissingConfigException):
        return _missing_option(exc)
    if isinstance(exc, OverrideParseException):
        override = str(getattr(exc, "override", "") or "")
        if override.startswith("-"):
            return f"{override}: not an option of this command; pass key=value overrides"
        return f"{override}: not a key=value override; e.g. optimizer.lr=1e-3"
    cause = exc.__cause__
    message = str(exc)
    if isinstance(exc, ConfigCompositionException):
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            key = str(getattr(cause, "full_key", "") or "")
            return _unknown_key(cause, _override_value(message, key))
        if isinstance(cause, ValidationError):
            return _bad_value(cause, message.rsplit(" ", 1)[-1])
        if message.startswith("Ambiguous value for argument"):
            arg = message.split("'", 2)[1] if "'" in message else ""
            key = arg.split("=", 1)[0]
            return (
                f"{key}: '{arg}' is ambiguous; a list is {key}=[a,b], a sweep over values needs "
                "--multirun (python -m harness.sweep -m ...)"
            )
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        lines = [
            ln.strip()
            for ln in message.splitlines()
            if ln.strip() and not ln.startswith(("See https", "Config search path", "\tprovider"))
        ]
        return "; ".join(lines) or type(exc).__name__
    return None
