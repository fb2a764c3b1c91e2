"""Compare runs. Kept so that `python scripts/compare.py` works in a checkout; the same as `mimkit compare`."""

import sys
from pathlib import Path

# this folder holds evaluate.py, which would shadow the `evaluate` library
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mimkit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
