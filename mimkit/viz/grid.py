"""Pure tensor helpers for pictures: patches back onto the image plane, maps over the grid, display ranges."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..encoder import Geometry


def place_patches(canvas: Tensor, patches: Tensor, idx: Tensor, g: Geometry, offsets: Tensor | None) -> Tensor:
    """Write patches back where ``patchify`` cut them: a copy of ``canvas`` (B, C, H, W) with
    ``patches`` (B, N, C*P*P) of cells ``idx`` (B, N) at their (jittered) places; ``offsets``
    (B, L, 2) as drawn for the step (None when the gap is 0)."""
    out = canvas.clone()
    B, C = canvas.shape[:2]
    P, cell = g.patch, g.patch + g.gap
    pix = patches.reshape(B, -1, C, P, P)
    for b in range(B):
        for n, l in enumerate(idx[b].tolist()):
            dy, dx = offsets[b, l].tolist() if offsets is not None else (0, 0)
            top, left = (l // g.grid) * cell + dy, (l % g.grid) * cell + dx
            out[b, :, top : top + P, left : left + P] = pix[b, n]
    return out


def cell_map(values: Tensor, idx: Tensor, grid: int) -> Tensor:
    """(B, N) values of cells ``idx`` (B, N) -> (B, grid, grid), NaN at every other cell."""
    out = torch.full((values.shape[0], grid * grid), float("nan"), dtype=torch.float32)
    out.scatter_(1, idx.cpu(), values.detach().float().cpu())
    return out.reshape(-1, grid, grid)


def to_display(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised (B, C, H, W) -> (B, H, W, C) in [0, 1] for imshow."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.detach().float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1)
