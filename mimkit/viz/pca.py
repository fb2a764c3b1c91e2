"""Feature PCA maps: each image's patch tokens projected on the top three principal components of
patches from many images, shown as RGB."""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ..eval.features import patch_tokens
from . import pyplot
from .grid import to_display


@torch.no_grad()
def pca_rgb(vit: VisionTransformer, fit_images: Tensor, images: Tensor, batch: int = 256) -> Tensor:
    """(B, G, G, 3) in [0, 1]: the patch tokens of ``images`` on the top three components fitted on
    the patch tokens of ``fit_images``, each component scaled by its 1st and 99th percentile."""
    fit = torch.cat([patch_tokens(vit, x) for x in fit_images.split(batch)])  # (M, L, D)
    x = fit.flatten(0, 1)  # (M*L, D)
    mean = x.mean(0)
    _, _, v = torch.pca_lowrank(x - mean, q=3, center=False)  # v: (D, 3)
    proj_fit = (x - mean) @ v  # (M*L, 3)
    lo, hi = torch.quantile(proj_fit, 0.01, dim=0), torch.quantile(proj_fit, 0.99, dim=0)
    tokens = patch_tokens(vit, images)  # (B, L, D)
    rgb = ((tokens - mean) @ v - lo) / (hi - lo).clamp_min(1e-6)  # (B, L, 3)
    G = int(round(tokens.shape[1] ** 0.5))
    return rgb.clamp(0, 1).reshape(-1, G, G, 3)


def draw_pca(images: Tensor, rgb: Tensor, mean: list[float], std: list[float], title: str, out: Path, per_row: int = 4) -> Path:
    plt = pyplot()
    shown = to_display(images, mean, std)
    n = shown.shape[0]
    rows = (n + per_row - 1) // per_row
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(1.6 * 2 * per_row, 1.7 * rows + 0.5), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, per_row)
        axes[r][2 * c].imshow(shown[i].numpy())
        axes[r][2 * c + 1].imshow(rgb[i].numpy(), interpolation="nearest")
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
