"""One seeded masked step of a trained model, kept whole for pictures: the drawn split, the patches
and what the heads read."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..masking import draw_masks, patchify
from ..model import MIMModel
from ..objectives.base import Context


@dataclass
class MaskedStep:
    images: Tensor  # (B, C, S, S) normalised, S = the model's input size
    offsets: Tensor | None  # (B, L, 2) gap jitter of every cell; None without a gap
    visible_idx: Tensor  # (B, Nv)
    target_idx: Tensor  # (B, Nt)
    patches: Tensor  # (B, L, C*P*P)
    ctx: Context


@torch.no_grad()
def masked_step(model: MIMModel, images: Tensor, seed: int) -> MaskedStep:
    """The split a training step would draw (from a generator seeded by ``seed``), then the context
    encoder (and target encoder) on it, exactly as training runs them."""
    g = model.geometry
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        offsets, visible_idx, target_idx = draw_masks(images.shape[0], g.num_cells, g.gap, model.ratio, images.device, model.max_offset,
                                                       model.mask_kind)
    patches = patchify(images, g.patch, g.gap, offsets)
    return MaskedStep(images, offsets, visible_idx, target_idx, patches, model.context(patches, visible_idx, target_idx, 1.0))
