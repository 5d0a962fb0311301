"""``python -m harness.bench {optim,population,driver} [options]``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "optim": "harness.bench.optim",
    "population": "harness.bench.population",
    "driver": "harness.bench.driver",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m harness.bench {" + ",".join(COMMANDS) + "} [--help]")
        print("  optim       step time of harness.optim vs torch.optim (ratio ours/torch)")
        print("  population  trials/hour of population training vs the sequential runner")
        print("  driver      per-trial overhead of the sweep driver per storage")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
