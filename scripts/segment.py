"""Unsupervised segmentation sheet. Kept so that `python scripts/segment.py` works in a checkout; the same as `mimkit segment`."""

import sys
from pathlib import Path

# this folder holds evaluate.py, which would shadow the `evaluate` library
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mimkit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
