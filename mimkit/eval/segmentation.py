"""Unsupervised segmentation: agglomerative clustering of one image's patch tokens,
painted back onto the image.

The clustering is the classic bottom-up merge with Lance-Williams distance updates:
Ward (on L2-normalised tokens, so squared distance = 2 - 2 cos) or average linkage on
cosine distance. A ViT grid has at most a few hundred patches, so the O(L^3) loop over an
(L, L) distance matrix is instant.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from .features import grid_size, patch_tokens

Linkage = Literal["ward", "average"]

# distinguishable colours (RGB), reused cyclically beyond 16 clusters
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (0, 0, 128),
)


def _initial_distances(x: Tensor, linkage: Linkage) -> Tensor:
    """(L, D) -> (L, L) float64: squared Euclidean of unit rows (Ward) or 1 - cos (average)."""
    u = F.normalize(x.double(), dim=1)
    cos = (u @ u.t()).clamp(-1.0, 1.0)  # (L, L)
    return 2.0 - 2.0 * cos if linkage == "ward" else 1.0 - cos


def agglomerative(x: Tensor, n_clusters: int, linkage: Linkage = "ward") -> Tensor:
    """Cluster the rows of x (L, D) bottom-up into ``n_clusters`` groups -> labels (L,) in [0, n).

    Labels are numbered by first appearance in row order (row 0 is in cluster 0).
    """
    if linkage not in ("ward", "average"):
        raise ValueError(f"linkage: {linkage!r} is not 'ward' or 'average'")
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"clusters: {n_clusters} must be between 1 and the number of patches ({n})")
    dist = _initial_distances(x, linkage)
    dist.fill_diagonal_(torch.inf)
    size = torch.ones(n, dtype=torch.float64)
    owner = torch.arange(n)  # cluster id (a surviving row) of every point
    for _ in range(n - n_clusters):
        flat = int(torch.argmin(dist))
        i, j = divmod(flat, n)
        i, j = min(i, j), max(i, j)  # merge j into i
        ni, nj = size[i], size[j]
        if linkage == "ward":
            nk = size
            merged = ((ni + nk) * dist[i] + (nj + nk) * dist[j] - nk * dist[i, j]) / (ni + nj + nk)
        else:
            merged = (ni * dist[i] + nj * dist[j]) / (ni + nj)
        merged[i] = torch.inf
        dist[i], dist[:, i] = merged, merged
        dist[j], dist[:, j] = torch.inf, torch.inf
        size[i] = ni + nj
        owner[owner == j] = i
    return _first_appearance(owner)


def _first_appearance(owner: Tensor) -> Tensor:
    """Renumber cluster ids 0, 1, ... in the order they first occur: (L,) -> (L,)."""
    mapping: dict[int, int] = {}
    return torch.tensor([mapping.setdefault(int(o), len(mapping)) for o in owner.tolist()], dtype=torch.long)


def label_map(labels: Tensor, grid: int) -> np.ndarray:
    """Per-patch labels (L,) in row-major grid order -> (grid, grid) int array."""
    if labels.numel() != grid * grid:
        raise ValueError(f"{labels.numel()} labels do not fill a {grid}x{grid} grid")
    return labels.reshape(grid, grid).cpu().numpy()


def colorize(labels: np.ndarray, size: int) -> Image.Image:
    """(g, g) labels -> an RGB image of side ``size``, one palette colour per cluster (nearest upsampling)."""
    colours = np.array(PALETTE, dtype=np.uint8)
    rgb = colours[labels % len(PALETTE)]  # (g, g, 3)
    return Image.fromarray(rgb, "RGB").resize((size, size), Image.NEAREST)


def overlay(image: Image.Image, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with its cluster colours blended on top (same size as ``image``)."""
    image = image.convert("RGB")
    return Image.blend(image, colorize(labels, image.width).resize(image.size, Image.NEAREST), alpha)


def segment_tokens(tokens: Tensor, grid: int, n_clusters: int, linkage: Linkage = "ward") -> np.ndarray:
    """One image's patch tokens (L, D) -> its (grid, grid) cluster map."""
    return label_map(agglomerative(tokens.float().cpu(), n_clusters, linkage), grid)


def denormalize(image: Tensor, mean: list[float], std: list[float]) -> Image.Image:
    """A normalised (3, H, W) tensor back to a PIL RGB image."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    s = torch.tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    x = (image * s + m).clamp(0, 1).mul(255).round().byte()  # (3, H, W)
    return Image.fromarray(x.permute(1, 2, 0).cpu().numpy(), "RGB")


def segmentation_rows(
    vit: VisionTransformer,
    images: Tensor,
    mean: list[float],
    std: list[float],
    n_clusters: int = 5,
    linkage: Linkage = "ward",
    norm: bool = False,
    cell: int = 160,
    alpha: float = 0.5,
    with_map: bool = False,
) -> tuple[list[list[Image.Image]], list[str]]:
    """(rows, column titles): original | segmentation (| cluster map) per normalised image
    (B, 3, S, S) at the encoder's native size, each ``cell`` px wide (drawn by
    ``mimkit.viz.sheet.image_sheet``)."""
    device = next(vit.parameters()).device
    was_training = vit.training
    vit.eval()
    try:
        tokens = patch_tokens(vit, images.to(device), norm=norm).cpu()  # (B, L, D)
    finally:
        vit.train(was_training)
    grid = grid_size(vit)
    k = min(n_clusters, tokens.shape[1])
    rows = []
    for image, toks in zip(images, tokens):
        labels = segment_tokens(toks, grid, k, linkage)
        original = denormalize(image.cpu(), mean, std).resize((cell, cell), Image.BICUBIC)
        row = [original, overlay(original, labels, alpha)]
        if with_map:
            row.append(colorize(labels, cell))
        rows.append(row)
    titles = ["image", f"{k} clusters ({linkage})"] + (["clusters"] if with_map else [])
    return rows, titles
