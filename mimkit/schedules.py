"""Schedules as pure functions of training progress (never stateful generators, so any
step can be recomputed exactly after a resume)."""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import torch
from torch import Tensor

Scalar = TypeVar("Scalar", float, Tensor)


def cosine_interp(start: float, end: float, progress: Scalar) -> Scalar:
    """start at progress 0, end at progress 1, along half a cosine. ``progress`` is a float, or a
    0-d tensor (the in-graph schedules of a training step) for which a 0-d tensor is returned."""
    if isinstance(progress, Tensor):
        return end + (start - end) * 0.5 * (1.0 + torch.cos(math.pi * progress.clamp(0.0, 1.0)))
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))


def linear_interp(start: float, end: float, progress: float) -> float:
    p = min(max(progress, 0.0), 1.0)
    return start + (end - start) * p


def interp(kind: Literal["cosine", "linear", "constant"], start: float, end: float, progress: float) -> float:
    if kind == "cosine":
        return cosine_interp(start, end, progress)
    if kind == "linear":
        return linear_interp(start, end, progress)
    if kind == "constant":
        return start
    raise ValueError(f"unknown schedule {kind!r}")


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float, minimum: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine to ``minimum``.

    ``step`` counts optimizer steps from 0; the value is the lr used *for* that step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay = max(total_steps - warmup_steps, 1)
    return cosine_interp(peak, minimum, (step - warmup_steps) / decay)


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256
