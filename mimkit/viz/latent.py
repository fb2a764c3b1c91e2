"""Latent predictions: for each masked cell, whether its prediction retrieves its own target among
the image's targets (patch-discrimination top-1), and one prediction's similarity to every target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..model import MIMModel
from ..objectives.losses import retrieval_cosines
from . import VizError, pyplot
from .grid import cell_map, to_display
from .masked import masked_step


@dataclass
class RetrievalMaps:
    hits: Tensor  # (B, G, G): 1 retrieved its own target, 0 another one, NaN a visible cell
    similarity: Tensor  # (B, G, G): cosine of the chosen prediction to each target, NaN a visible cell
    chosen: Tensor  # (B,) the grid cell of the chosen prediction
    top1: float  # the share of hits over the whole batch


@torch.no_grad()
def retrieval_maps(model: MIMModel, images: Tensor, seed: int) -> RetrievalMaps:
    """The chosen prediction of each image is its target cell nearest the grid centre."""
    if "latent" not in model.heads:
        raise VizError(f"latent: the run has no latent head (its heads: {', '.join(model.heads)})")
    step = masked_step(model, images, seed)
    p = model.heads["latent"].predict(step.ctx)
    cos = retrieval_cosines(p.pred, p.target)  # (B, Nt, Nt)
    N, G = cos.shape[1], model.geometry.grid
    hits = (cos.argmax(-1) == torch.arange(N)).float()  # (B, Nt)
    rows, cols = step.target_idx // G, step.target_idx % G
    centre = (G - 1) / 2
    k = ((rows - centre) ** 2 + (cols - centre) ** 2).float().argmin(dim=1)  # (B,) position among the targets
    chosen_sim = cos[torch.arange(cos.shape[0]), k]  # (B, Nt): prediction k against every target
    return RetrievalMaps(
        hits=cell_map(hits, step.target_idx, G),
        similarity=cell_map(chosen_sim, step.target_idx, G),
        chosen=step.target_idx.gather(1, k[:, None])[:, 0],
        top1=hits.mean().item(),
    )


def draw_latent(images: Tensor, maps: RetrievalMaps, mean: list[float], std: list[float], title: str, out: Path) -> Path:
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    shown = to_display(images, mean, std)
    rows, G = shown.shape[0], maps.hits.shape[-1]
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2 * rows + 0.6), squeeze=False, layout="constrained")
    red_green = ListedColormap(["#d62728", "#2ca02c"])
    for r in range(rows):
        a, b, c = axes[r]
        a.imshow(shown[r].numpy())
        b.imshow(maps.hits[r].numpy(), cmap=red_green, vmin=0, vmax=1)
        im = c.imshow(maps.similarity[r].numpy(), cmap="viridis", vmin=-1, vmax=1)
        cy, cx = divmod(int(maps.chosen[r]), G)
        c.plot([cx], [cy], marker="*", color="white", markersize=10, markeredgecolor="black")
        for ax in (a, b, c):
            ax.set_xticks([])
            ax.set_yticks([])
        if r == 0:
            a.set_title("image", fontsize=9)
            b.set_title("own target retrieved\n(green yes, red no, blank visible)", fontsize=8)
            c.set_title("cosine of * to every target", fontsize=9)
    fig.colorbar(im, ax=[row[2] for row in axes], shrink=0.6)
    fig.suptitle(f"{title}\nretrieval top-1 over these cells: {100 * maps.top1:.1f}% (chance {100 / max(1, int(maps.hits[0].isfinite().sum())):.1f}%)", fontsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
