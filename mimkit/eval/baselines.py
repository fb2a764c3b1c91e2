"""The two rows every pretrained encoder must beat: its own initialisation, and raw pixels.

``init_encoder(cfg)`` rebuilds a run's context encoder exactly as training starts it (same
config, same seed, no step taken). ``pixel_features`` scores the images themselves: each image,
resized and normalised as for an encoder, flattened to one (C*S*S)-vector; every pooling asks
for that same vector, so the NN, k-NN and linear protocols run on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate.utils import set_seed
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset

from ..config import RunConfig
from .features import Features, Pooling, make_loader

BASELINES = ("init", "pixels")


def init_encoder(cfg: RunConfig) -> VisionTransformer:
    """The context encoder of a run of ``cfg`` before its first step (the trainer seeds, then builds)."""
    from ..model import build_model

    set_seed(cfg.train.seed)
    return build_model(cfg).encoder.vit


@torch.no_grad()
def pixel_features(dataset: Dataset, poolings: Sequence[Pooling], batch_size: int = 256, num_workers: int = 0) -> Features:
    """Flattened images as features: (N, C*S*S) for every requested pooling."""
    rows, labels, skipped = [], [], 0
    for batch in make_loader(dataset, batch_size, num_workers):  # images and labels: the decodable rows
        skipped += int(batch["skipped"])
        if batch["labels"].numel():
            rows.append(batch["images"].flatten(1).float())  # (G, C*S*S)
            labels.append(batch["labels"])
    x = torch.cat(rows) if rows else torch.zeros(0, 0)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return Features({p: x for p in poolings}, y, skipped=skipped)
