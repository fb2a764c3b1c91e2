"""The ``mimkit`` command: ``mimkit COMMAND [arguments]``, one module per command.

    mimkit train                          # the embedded default, sized for a CPU
    mimkit train --preset latent_mim --data DIR_OR_HUB_ID --output runs/lmim
    accelerate launch -m mimkit train ... # several processes / GPUs
    mimkit evaluate --checkpoint runs/lmim --out runs/lmim/metrics.json
    mimkit COMMAND --help
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from mimkit.host_memory import retain_freed_memory

# command -> (module with main(argv) -> int, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mimkit.cli.train", "pretrain a preset (no arguments: the embedded default, sized for a CPU)"),
    "evaluate": ("mimkit.cli.evaluate", "score a frozen encoder: NN, k-NN, linear probe, few-shot, Sim"),
    "finetune": ("mimkit.cli.finetune", "fine-tune an encoder end to end with a new head (MAE's recipe), top-1 / top-5"),
    "compare": ("mimkit.cli.compare", "evaluate several runs on the same images: a table, a CSV and a chart"),
    "segment": ("mimkit.cli.segment", "unsupervised segmentation by clustering patch tokens, as a picture sheet"),
    "show": ("mimkit.cli.show", "pictures: pixel reconstructions, latent retrieval maps, feature PCA maps, curves"),
    "push": ("mimkit.cli.push", "export an encoder with its run's preprocessing to a folder or a Hub repo"),
    "bench": ("mimkit.bench.cli", "training-step throughput, FLOPs and where the time of a step goes"),
    "reproduce": ("mimkit.reproduce.cli", "the papers' comparisons at small scale, resumable, written as a document"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return f"usage: mimkit COMMAND [arguments]\n\ncommands:\n{rows}\n\n`mimkit COMMAND --help` describes each."


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"mimkit {version('mimkit')}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if name != "bench":  # the benchmark sets the allocator by its --host-alloc, to measure both
        retain_freed_memory()
    try:
        rc = importlib.import_module(COMMANDS[name][0]).main(rest)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:  # the reader of stdout left (`mimkit reproduce --dry-run | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 1
