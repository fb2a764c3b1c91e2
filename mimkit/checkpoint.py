"""Training checkpoints on disk: ``OUTPUT/checkpoints/step_000123/``.

A checkpoint is written under a temporary name and renamed once complete, so a kill
during a save never leaves a half-written ``step_*`` directory; ``trainer_state.json``
is written last inside it and marks it complete.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    step: int  # optimizer steps done
    epoch: int  # epoch in progress
    batch_in_epoch: int  # micro-batches of that epoch already consumed
    skipped_images: int = 0  # undecodable images met so far
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the path."""


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def read_state(path: str | Path) -> TrainerState:
    f = Path(path) / STATE_FILE
    try:
        return TrainerState(**json.loads(f.read_text()))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not a mimkit checkpoint (no {STATE_FILE})") from e
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{f}: unreadable trainer state: {e}") from e


def step_dir(output_dir: str | Path, step: int) -> Path:
    """Where the complete checkpoint of ``step`` lives."""
    return checkpoint_root(output_dir) / f"step_{step:08d}"


def staging_dir(output_dir: str | Path, step: int) -> Path:
    """Where a checkpoint of ``step`` is written before ``publish`` renames it."""
    return checkpoint_root(output_dir) / f".tmp_step_{step:08d}"


def publish(staging: Path, state: TrainerState, keep_last: int) -> Path:
    """Mark a fully written staging dir complete, rename it to ``step_*``, keep the newest
    ``keep_last``. Main process only, after every process finished writing."""
    (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    final = step_dir(staging.parent.parent, state.step)
    if final.exists():  # the same step saved again (a resumed run that ends where it resumed)
        shutil.rmtree(final)
    staging.rename(final)
    for old in step_dirs(staging.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: str | Path) -> None:
    """Read every file of a checkpoint; a missing, truncated or corrupt one is a CheckpointError
    naming it (so a bad checkpoint is refused before any state is touched)."""
    import safetensors.torch
    import torch

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    read_state(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name != STATE_FILE)
    if not any(f.suffix == ".safetensors" for f in files):
        raise CheckpointError(f"{path}: no model weights (*.safetensors) in the checkpoint")
    for f in files:
        try:
            if f.suffix == ".safetensors":
                safetensors.torch.load_file(f)
            elif f.suffix in (".bin", ".pkl", ".pt", ".pth"):
                torch.load(f, map_location="cpu", weights_only=False)
        except Exception as e:
            raise CheckpointError(f"{f}: corrupt or truncated checkpoint file ({type(e).__name__}: {e})") from e


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    dirs = step_dirs(output_dir)
    return dirs[-1] if dirs else None


def save_state(accelerator: Any, root: str | Path, state: TrainerState, keep_last: int) -> Path:
    """A complete checkpoint of ``accelerator``'s prepared objects at ``state.step``, written
    under a staging name and published (all processes call this)."""
    staging = staging_dir(root, state.step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish(staging, state, keep_last)
    accelerator.wait_for_everyone()
    return step_dir(root, state.step)
