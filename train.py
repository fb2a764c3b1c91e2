"""Pretrain: `python train.py` / `accelerate launch train.py ...`, the same as `mimkit train`."""

import sys

from mimkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
