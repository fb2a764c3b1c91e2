"""Pure functions that cut images into patches and split them into visible and target sets.

Patch vectors are flattened in (channel, row, column) order, the order in which a
timm ``PatchEmbed`` convolution's weight flattens, so ``patch @ W.view(D, -1).T``
equals the convolution on that patch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def num_visible(num_cells: int, ratio: float) -> int:
    """Cells left visible when a ``ratio`` fraction becomes targets (rounded; 196 at 0.9 -> 20)."""
    n = int(round(num_cells * (1.0 - ratio)))
    if not 1 <= n <= num_cells - 1:
        raise ValueError(
            f"masking.ratio={ratio} on {num_cells} cells leaves {n} visible and {num_cells - n} target "
            "cells; both sets need at least one"
        )
    return n


def max_offset(gap: int, offsets: str = "0..G") -> int:
    """The largest offset of a patch in its cell under ``masking.offsets``: G ("0..G") or G - 1 ("0..G-1")."""
    if offsets not in ("0..G", "0..G-1"):
        raise ValueError(f"masking.offsets: {offsets!r} is not '0..G' or '0..G-1'")
    return gap if offsets == "0..G" or gap == 0 else gap - 1


def grid_offsets(
    batch: int, num_cells: int, high: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """Random (row, col) offsets in {0, ..., high} of each patch inside its cell: (B, L, 2) int64."""
    return torch.randint(0, high + 1, (batch, num_cells, 2), device=device, generator=generator)


def patchify(images: Tensor, patch: int, gap: int = 0, offsets: Tensor | None = None) -> Tensor:
    """Cut images into one P x P patch per (P + G)-sized grid cell.

    images: (B, C, H, W) with H = gh * (P + G), W = gw * (P + G)
    offsets: (B, L, 2) position of each patch inside its cell (required when gap > 0)
    returns: (B, L, C * P * P), cells in row-major grid order
    """
    B, C, H, W = images.shape
    cell = patch + gap
    if H % cell or W % cell:
        raise ValueError(f"image size {H}x{W} is not a multiple of patch + gap = {patch} + {gap}")
    gh, gw = H // cell, W // cell
    if gap == 0:
        x = images.reshape(B, C, gh, patch, gw, patch)  # (B, C, gh, P, gw, P)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * patch * patch)
    if offsets is None:
        raise ValueError("patchify with gap > 0 needs the per-cell offsets (see grid_offsets)")
    L = gh * gw
    dev = images.device
    cells = torch.arange(L, device=dev)
    top = (cells // gw) * cell  # (L,) first pixel row of each cell
    left = (cells % gw) * cell
    ar = torch.arange(patch, device=dev)
    rows = top[None, :, None] + offsets[..., 0:1] + ar  # (B, L, P)
    cols = left[None, :, None] + offsets[..., 1:2] + ar  # (B, L, P)
    flat = rows[..., :, None] * W + cols[..., None, :]  # (B, L, P, P) pixel index in H*W
    flat = flat.reshape(B, 1, L * patch * patch).expand(B, C, -1)
    x = images.reshape(B, C, H * W).gather(2, flat)  # (B, C, L*P*P)
    return x.reshape(B, C, L, patch * patch).permute(0, 2, 1, 3).reshape(B, L, C * patch * patch)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int], channels: int = 3) -> Tensor:
    """Inverse of ``patchify`` with gap 0: (B, L, C*P*P) -> (B, C, gh*P, gw*P)."""
    B = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(B, gh, gw, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, channels, gh * patch, gw * patch)


def random_split(
    batch: int,
    num_cells: int,
    ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Split each image's cells into disjoint visible and target index sets covering all cells.

    returns: visible (B, Nv), target (B, L - Nv), int64 grid indices; Nv = round(L * (1 - ratio))
    """
    nv = num_visible(num_cells, ratio)
    noise = torch.rand(batch, num_cells, device=device, generator=generator)
    order = noise.argsort(dim=1)  # a uniformly random permutation per image
    return order[:, :nv], order[:, nv:]


def inverse_block_split(
    batch: int, num_cells: int, ratio: float, device: torch.device, min_aspect: float = 0.5
) -> tuple[Tensor, Tensor]:
    """CAPI's inverse-block masking: the visible cells are one block, the targets the rest.

    Per image: an aspect ratio drawn log-uniformly from [min_aspect, 1 / min_aspect] (narrowed so
    the block fits the grid), a block of ceil(sqrt(Nv * a)) x ceil(sqrt(Nv / a)) cells at a random
    place, its first Nv cells in raster order kept, then the grid rolled by a random shift in both
    directions (the block may wrap around the edges). Nv = round(L * (1 - ratio)).

    returns: visible (B, Nv) and target (B, L - Nv) grid indices, each in raster order
    """
    nv = num_visible(num_cells, ratio)
    g = math.isqrt(num_cells)
    if g * g != num_cells:
        raise ValueError(f"masking.kind=inverse_block needs a square grid, not {num_cells} cells")
    lo = max(math.log(min_aspect), math.log(nv / g**2))
    hi = min(-math.log(min_aspect), math.log(g**2 / nv))
    aspect = torch.exp(lo + (hi - lo) * torch.rand(batch, device=device))  # (B,)
    h = torch.ceil(torch.sqrt(nv * aspect)).long().clamp(max=g)  # (B,)
    w = torch.ceil(torch.sqrt(nv / aspect)).long().clamp(max=g)
    top = (torch.rand(batch, device=device) * (g - h + 1)).long()  # (B,) in [0, g - h]
    left = (torch.rand(batch, device=device) * (g - w + 1)).long()
    shift = (torch.rand(batch, 2, device=device) * g).long()  # (B, 2) roll of rows and columns
    r = torch.arange(g, device=device)
    rows, cols = r.view(1, g, 1), r.view(1, 1, g)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1))).flatten(1)  # (B, L)
    keep = inside & (inside.cumsum(dim=1) <= nv)  # the first nv cells of the block
    src_r = (rows - shift[:, 0].view(-1, 1, 1)) % g  # a rolled cell takes the flag of the cell it came from
    src_c = (cols - shift[:, 1].view(-1, 1, 1)) % g
    rolled = keep.gather(1, (src_r * g + src_c).flatten(1))  # (B, L)
    order = torch.sort((~rolled).to(torch.uint8), dim=1, stable=True).indices  # visible cells first, raster order
    return order[:, :nv], order[:, nv:]


SPLITS = {"random": random_split, "inverse_block": inverse_block_split}  # masking.kind -> how cells are split


def draw_masks(
    batch: int, num_cells: int, gap: int, ratio: float, device: torch.device, high: int | None = None, kind: str = "random"
) -> tuple[Tensor | None, Tensor, Tensor]:
    """One step's randomness, drawn on ``device`` from torch's global RNG: gap offsets
    (B, L, 2) in {0, ..., high} (high defaults to gap; None when gap is 0), then the visible
    (B, Nv) and target (B, Nt) indices of the ``kind`` split (``masking.kind``)."""
    offsets = grid_offsets(batch, num_cells, gap if high is None else high, device) if gap else None
    visible, target = SPLITS[kind](batch, num_cells, ratio, device)
    return offsets, visible, target


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x: (B, L, D), idx: (B, N) -> (B, N, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
