"""``python -m harness.bench {optim,population,driver,valley,generic,instruments,queue,overhead,
tracking} [options]``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "optim": "harness.bench.optim",
    "population": "harness.bench.population",
    "driver": "harness.bench.driver",
    "valley": "harness.bench.valley",
    "generic": "harness.bench.generic",
    "instruments": "harness.bench.instruments",
    "queue": "harness.bench.queue",
    "overhead": "harness.bench.overhead",
    "tracking": "harness.bench.tracking",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        print(
            f"error: {argv[0]}: no such benchmark; pass one of {', '.join(COMMANDS)} "
            "(python -m harness.bench --help)",
            file=sys.stderr,
        )
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m harness.bench {" + ",".join(COMMANDS) + "} [--help]")
        print("  optim       step time of harness.optim vs torch.optim (ratio ours/torch)")
        print("  population  trials/hour of population training vs the sequential runner")
        print("  driver      per-trial overhead of the sweep driver per storage")
        print("  valley      the valley tracer's best wd per lr row against a fine grid")
        print("  generic     the vmap population path vs the hand-written one and sequential")
        print("  instruments time per step with train.instruments off and on")
        print("  queue       N workers on one study per storage: claims/s, latency, duplicates")
        print("  overhead    the default job's wall time by phase, populations vs sequential")
        print("  tracking    W&B run start / log / finish cost (offline by default)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
