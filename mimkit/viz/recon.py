"""Pixel reconstructions: original, masked input, the pixel head's prediction, and the prediction
with the visible patches pasted in."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..masking import gather_tokens
from ..model import MIMModel
from . import VizError
from .grid import place_patches, to_display
from .masked import MaskedStep, masked_step
from .sheet import image_sheet

COLUMNS = ("original", "masked input", "prediction", "prediction + visible")


@torch.no_grad()
def reconstruct(model: MIMModel, images: Tensor, seed: int) -> dict[str, Tensor]:
    """Each column of the picture as normalised images (B, C, S, S). Cells neither visible nor
    predicted, and the gaps between jittered patches, are 0 (the dataset mean once displayed).
    With ``norm_pix`` the prediction is mapped back by its target patch's own mean and std."""
    if "pixel" not in model.heads:
        raise VizError(f"recon: the run has no pixel head (its heads: {', '.join(model.heads)})")
    head = model.heads["pixel"]
    step: MaskedStep = masked_step(model, images, seed)
    ctx, g = step.ctx, model.geometry
    pred, _ = head.decoder(ctx.tokens, step.visible_idx, step.target_idx, ctx.num_prefix)  # (B, Nt, C*P*P)
    pred = pred.float()
    if head.norm_pix:
        target = gather_tokens(step.patches, step.target_idx).float()  # (B, Nt, C*P*P)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
    visible = gather_tokens(step.patches, step.visible_idx)  # (B, Nv, C*P*P)
    blank = torch.zeros_like(images)
    masked = place_patches(blank, visible, step.visible_idx, g, step.offsets)
    predicted = place_patches(blank, pred, step.target_idx, g, step.offsets)
    return {
        "original": images,
        "masked input": masked,
        "prediction": predicted,
        "prediction + visible": place_patches(predicted, visible, step.visible_idx, g, step.offsets),
    }


def draw_recon(columns: dict[str, Tensor], mean: list[float], std: list[float], title: str, out: Path) -> Path:
    shown = {k: to_display(v, mean, std).numpy() for k, v in columns.items()}
    rows = [[shown[name][r] for name in COLUMNS] for r in range(len(shown["original"]))]
    return image_sheet(rows, COLUMNS, out, title)
