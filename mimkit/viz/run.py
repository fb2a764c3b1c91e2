"""A trained run, loaded whole (encoder, target encoder and heads) for pictures, with seeded images
from its evaluation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from ..checkpoint import latest_checkpoint
from ..config import RunConfig, config_from_yaml
from ..data import eval_transform, load_splits
from ..model import MIMModel, build_model
from . import VizError


@dataclass
class TrainedRun:
    path: Path
    name: str
    cfg: RunConfig
    model: MIMModel  # in eval mode, on the CPU
    step: int


def load_trained(run_dir: str | Path) -> TrainedRun:
    """``RUN/config.yaml`` rebuilt and the latest ``RUN/checkpoints/step_*`` loaded into it."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise VizError(f"{run}: not a training run (no config.yaml)")
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise VizError(f"{run}: no checkpoint under {run / 'checkpoints'} (the heads are only in checkpoints)")
    cfg = config_from_yaml(run / "config.yaml")
    model = build_model(cfg)
    model.load_state_dict(safetensors.torch.load_file(str(ckpt / "model.safetensors")))
    return TrainedRun(run, run.resolve().name, cfg, model.eval(), int(ckpt.name.split("_")[-1]))


def eval_images(cfg: RunConfig, count: int, size: int, seed: int) -> Tensor:
    """``count`` seeded-random images of the run's evaluation split (else its train split),
    transformed as evaluation does to ``size`` px: (count, C, size, size), normalised."""
    splits = load_splits(cfg.data)
    hf = splits.data[splits.eval or splits.train]
    picked = torch.randperm(len(hf), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    dataset = splits.dataset(splits.eval or splits.train, eval_transform(size, cfg.data))
    images = [item[0] for item in (dataset[i] for i in picked) if item is not None and item[0] is not None]
    if not images:
        raise VizError(f"{cfg.data.source}: none of the {len(picked)} drawn images decodes")
    return torch.stack(images)
