"""``python -m harness.sweep``: see :mod:`harness.sweep.cli`."""

from harness.sweep.cli import main

if __name__ == "__main__":
    main()
