"""Secrets: masking them in everything lrwd prints or writes, and handing a storage password
to worker processes without writing it anywhere.

Masked (:func:`mask_secrets`): passwords in URLs (``scheme://user:pw@host``) and ``key=value``
pairs named like a password or token, W&B API keys, and the values of :data:`SECRET_ENV_VARS`
and of :func:`register_secret`. :func:`mask_config` does the same through a nested config, and
masks whole values whose key is named like a secret.

A storage URL with a password travels in the environment variable ``LRWD_STORAGE_URL``
(inherited by local worker processes, exported by sbatch to Slurm tasks): :func:`hide_url`
moves it there and leaves ``storage.url = env:LRWD_STORAGE_URL`` in the config that is saved,
pickled or logged; :func:`real_url` reads it back where the storage is opened.
"""

from __future__ import annotations

import netrc
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from harness.errors import ConfigError

STORAGE_URL_ENV = "LRWD_STORAGE_URL"
ENV_PREFIX = "env:"
DEFAULT_HOST = "https://api.wandb.ai"
MASK = "***"
# Environment variables whose values are secrets wherever they show up.
SECRET_ENV_VARS = ("WANDB_API_KEY", "LRWD_STORAGE_URL", "PGPASSWORD")

# ------------------------------------------------------------------------------------------------
# Secrets

# scheme://user:password@host  (the password may itself hold '@'; it ends at the last '@' before
# the first '/' or whitespace)
_URL_PW = re.compile(
    r"(?P<pre>(?<![a-zA-Z0-9+.\-])[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^/\s]*)@"
)
# password=... in a query string or a libpq DSN
_KV_PW = re.compile(
    r"(?i)(?P<pre>\b(?:password|passwd|pwd|api_?key|access_?token|token|secret)\s*[=:]\s*)"
    r"(?P<pw>[^\s&;,'\"]+)"
)
# W&B API keys: legacy 40 hex (on-prem ones prefixed "<name>-"), and the newer wandb_v1_...
_KEY = re.compile(r"\b(?:[A-Za-z0-9]+-)?[0-9a-f]{40}\b|\bwandb_v\d+_[A-Za-z0-9_]{20,}")
_SECRET_NAME = re.compile(
    r"(?:^|[_.\-])(?:password|passwd|pwd|secret|token|api_?key|access_?key|private_?key)"
    r"(?:$|[_.\-])",
    re.IGNORECASE,
)
_GIT_NAME = re.compile(r"(?:^|[_.])(?:git_rev|git_commit|commit|sha|revision)$", re.IGNORECASE)
_HEX40 = re.compile(r"[0-9a-f]{40}")
_registered: set[str] = set()
_netrc_cache: dict[str, str | None] = {}


def wandb_host() -> str:
    """The W&B server: ``WANDB_BASE_URL`` or https://api.wandb.ai."""
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST


def _netrc_password(host: str) -> str | None:
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        st = os.stat(path)
    except OSError:
        return None
    cache_key = f"{path}\0{host}\0{st.st_mtime_ns}\0{st.st_size}"
    if cache_key in _netrc_cache:
        return _netrc_cache[cache_key]
    key = None
    netloc = urlsplit(host).netloc or host
    try:
        auth = netrc.netrc(path).authenticators(netloc)
        if auth is None and netloc.startswith("api."):
            auth = netrc.netrc(path).authenticators(netloc[4:])
        key = auth[2] if auth and auth[2] else None
    except (OSError, netrc.NetrcParseError):
        key = None
    _netrc_cache[cache_key] = key
    return key


def register_secret(value: str) -> None:
    """Mask ``value`` (a literal, e.g. a password read from a file) in every later mask call."""
    if value and len(value) >= 4:
        _registered.add(value)


def _known_secrets() -> list[str]:
    out = set(_registered)
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if not value:
            continue
        if "://" in value:  # a URL: its password part is the secret
            pw = urlsplit(value).password
            if pw and len(pw) >= 4:
                out.add(pw)
        elif len(value) >= 4:
            out.add(value)
    key = _netrc_password(wandb_host())
    if key and len(key) >= 4:
        out.add(key)
    return sorted(out, key=len, reverse=True)


def mask_secrets(text: str) -> str:
    """``text`` with secrets replaced by ``***``. Non-strings are returned unchanged.

    Masked: the password of any ``scheme://user:password@host`` URL; ``password=...`` (also
    ``pwd``, ``token``, ``secret``, ``api_key``) in query strings and DSNs; anything shaped like
    a W&B API key (40 hex digits, optionally ``<prefix>-``; ``wandb_v1_...``); and the literal
    values of ``WANDB_API_KEY``, ``PGPASSWORD``, the password in ``LRWD_STORAGE_URL``, the netrc
    key for the W&B host and anything passed to :func:`register_secret`.
    """
    if not isinstance(text, str):
        return text
    out = text
    for secret in _known_secrets():
        out = out.replace(secret, MASK)
    if "://" in out:
        out = _URL_PW.sub(lambda m: f"{m['pre']}{MASK}@", out)
    if "=" in out or ":" in out:
        out = _KV_PW.sub(lambda m: f"{m['pre']}{MASK}", out)
    return _KEY.sub(MASK, out)


def mask_config(obj: Any, _key: str = "") -> Any:
    """A copy of a nested config (dicts, lists, tuples) with every secret masked.

    Strings go through :func:`mask_secrets`; the value of any key named like a secret
    (``password``, ``db_password``, ``token``, ``api_key``, ``secret``, ...; not ``tokenizer``)
    becomes ``***`` whatever it is. A 40-hex string under a key named like a git revision
    (``git_rev``, ``commit``, ``sha``) is kept, unless it is a known secret.
    """
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            name = str(k)
            if _SECRET_NAME.search(name) and v is not None and not (isinstance(v, str) and not v):
                out[k] = MASK
            else:
                out[k] = mask_config(v, name)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(mask_config(v, _key) for v in obj)
    if isinstance(obj, str):
        if _GIT_NAME.search(_key) and _HEX40.fullmatch(obj) and obj not in _known_secrets():
            return obj
        return mask_secrets(obj)
    return obj


# ------------------------------------------------------------------------------------------------
# The storage URL's password, out of configs and into the environment


def hide_url(cfg: Any) -> Any:
    """A resolved copy of ``cfg`` whose ``storage.url`` holds no password.

    A URL with a password is moved to ``os.environ["LRWD_STORAGE_URL"]`` (this process's
    children and sbatch inherit it) and the copy says ``env:LRWD_STORAGE_URL``.
    """
    from omegaconf import OmegaConf

    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    url = str(out.storage.url or "")
    if url and not url.startswith(ENV_PREFIX) and mask_secrets(url) != url:
        os.environ[STORAGE_URL_ENV] = url
        out.storage.url = ENV_PREFIX + STORAGE_URL_ENV
    return out


def real_url(cfg: Any) -> Any:
    """``storage.url = env:NAME`` -> a copy holding the value of ``$NAME`` on this node."""
    from omegaconf import OmegaConf

    url = str(cfg.storage.url or "")
    if not url.startswith(ENV_PREFIX):
        return cfg
    name = url[len(ENV_PREFIX) :]
    if name not in os.environ:
        raise ConfigError(
            f"storage.url: the environment variable {name} is not set on this node; "
            f"export {name}=<the URL> where the workers run (sbatch exports the submit shell's)"
        )
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.storage.url = os.environ[name]
    return out
