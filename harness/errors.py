"""The harness's own errors, below every other module (the config, the data, the storages and
the sweep raise them; the entry points print them as one line, :mod:`harness.usage`)."""

from __future__ import annotations

EXIT_USAGE = 2  # the exit code of a bad command line


class ConfigError(ValueError):
    """A bad config value. The message is one line: ``field: problem; fix``."""
