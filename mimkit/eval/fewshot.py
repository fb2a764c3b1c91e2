"""Few-shot linear classification: n labelled images per class, frozen features, several seeds.

The Latent MIM paper: 16 images per class drawn from the training split, a linear
classifier trained with SGD (momentum 0.9, lr 0.1, batch 128) for 2500 iterations,
reported as mean ± std over 3 draws. The classifier is ``linear.ProbeHeads``
(BatchNorm without affine, then Linear), so raw pre-norm features of any scale train
stably at lr 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .linear import fit_linear, num_classes_of, predict
from .scoring import top1


@dataclass
class FewShotConfig:
    shots: int = 16
    seeds: Sequence[int] = (0, 1, 2)
    iterations: int = 2500
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: Literal["sgd", "lars"] = "sgd"
    schedule: Literal["constant", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if self.shots < 1 or self.iterations < 1 or not self.seeds:
            raise ValueError(f"few-shot: shots ({self.shots}) and iterations ({self.iterations}) must be >= 1, seeds non-empty")


@dataclass
class FewShotResult:
    mean: float  # top-1 percent, averaged over the seeds
    std: float  # population std over the seeds
    runs: list[float] = field(default_factory=list)
    shots: int = 16

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} ({len(self.runs)} runs, {self.shots}-shot)"


def sample_per_class(labels: Tensor, shots: int, seed: int) -> Tensor:
    """Indices of ``shots`` random rows of every class (all rows of a smaller class): (K*shots,)."""
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    picked = []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()  # (n_c,)
        picked.append(rows[torch.randperm(rows.numel(), generator=gen)[:shots]])
    return torch.cat(picked).sort().values


def few_shot(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    cfg: FewShotConfig | None = None,
) -> FewShotResult:
    """Top-1 (percent) of a linear classifier fit on ``cfg.shots`` train rows per class, per seed."""
    cfg = cfg or FewShotConfig()
    num_classes = num_classes_of(train_labels, test_labels)
    device = train_features.device
    runs = []
    for seed in cfg.seeds:
        idx = sample_per_class(train_labels, cfg.shots, seed).to(device)
        head = fit_linear(
            train_features[idx],
            train_labels.to(device)[idx],
            num_classes,
            steps=cfg.iterations,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            lrs=[cfg.lr],
            schedule=cfg.schedule,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            seed=seed,
        )
        pred = predict(head, test_features.to(device))[0]
        runs.append(top1(pred, test_labels.to(device)))
    t = torch.tensor(runs, dtype=torch.float64)
    return FewShotResult(mean=float(t.mean()), std=float(t.std(unbiased=False)), runs=runs, shots=cfg.shots)
