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


def learning_rate(
    step: int,
    total_steps: int,
    warmup_steps: int,
    peak: float,
    minimum: float = 0.0,
    floor_ratio: float = 0.0,
    shape: Literal["warmup_cosine", "min_warmup_cosine"] = "warmup_cosine",
) -> float:
    """The lr used *for* optimizer step ``step`` (counted from 0) of ``total_steps``.

    Warm-up is a line from ``floor_ratio * peak`` towards ``peak``, reaching it at step
    ``warmup_steps - 1`` (step s gets floor + (peak - floor) (s + 1) / warmup_steps). The cosine
    ends at ``max(minimum, floor_ratio * peak)``. ``warmup_cosine``: the cosine starts after the
    warm-up; ``min_warmup_cosine``: the smaller of the warm-up line and a cosine over the whole run.
    The same function serves per-epoch schedules with epochs in place of steps.
    """
    low = max(minimum, floor_ratio * peak)
    start = floor_ratio * peak
    ramp = start + (peak - start) * (step + 1) / warmup_steps if warmup_steps > 0 else peak
    if shape == "min_warmup_cosine":
        return min(ramp, cosine_interp(peak, low, step / max(total_steps, 1)))
    if shape != "warmup_cosine":
        raise ValueError(f"train.lr_schedule: unknown shape {shape!r}")
    if step < warmup_steps:
        return ramp
    return cosine_interp(peak, low, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256
