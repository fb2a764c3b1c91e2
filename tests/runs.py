"""Helpers for tests that run train.py: in-process (fast) or as a subprocess (for kills and
multi-process launches)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "latent_mim+tiny", "train.batch_size=16", "data.num_workers=0", "train.trackers=[none]"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def cli_module(name: str) -> ModuleType:
    """The module of ``mimkit NAME`` (its ``main(argv)``, parser and helpers)."""
    from mimkit.cli import COMMANDS

    return importlib.import_module(COMMANDS[name][0])


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py imported as a module (registered, so its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(f"mimkit_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def run_train(*args: str) -> int:
    """``mimkit train`` in this process; the accelerate singletons are reset afterwards."""
    try:
        return cli_module("train").main(list(args))
    finally:
        reset_accelerate()


def launch_cmd(*args: str, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "train.py", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--cpu",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", *args]


def run_subprocess(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(*args, processes=processes), cwd=ROOT, env=ENV, capture_output=True, text=True)


def losses(out: Path) -> dict[int, float]:
    """step -> logged total loss, from OUTPUT/log.jsonl (a torn last line is ignored)."""
    result = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            result[rec["step"]] = rec["loss"]
    return result


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
