"""Weight initialisation schemes (``model.init``) for the encoder and the heads.

``timm``: linears truncated-normal (std 0.02) with zero biases; a randomly built encoder keeps
timm's own initialisation. ``mae``: linears Xavier-uniform with zero biases, the patch
embedding initialised as a linear over the flattened patch, CLS and register tokens N(0, 0.02).
Both: LayerNorms at weight 1, bias 0.
"""

from __future__ import annotations

from typing import Literal

from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

Scheme = Literal["timm", "mae"]


def init_weights(module: nn.Module, scheme: Scheme = "timm") -> None:
    """Every Linear and LayerNorm inside ``module``, by ``scheme``."""
    if scheme not in ("timm", "mae"):
        raise ValueError(f"model.init: unknown scheme {scheme!r} (expected 'timm' or 'mae')")
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if scheme == "mae":
                nn.init.xavier_uniform_(m.weight)
            else:
                trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_encoder(vit: VisionTransformer, scheme: Scheme) -> None:
    """Re-initialise a randomly built timm ViT by ``scheme`` (``timm`` leaves timm's init alone).

    The position table is left as built (a fixed sin-cos table replaces it under
    ``model.pos_embed: sincos``), and so is the patch embedding's bias.
    """
    if scheme == "timm":
        return
    init_weights(vit, scheme)
    w = vit.patch_embed.proj.weight.data  # (D, C, P, P): a linear over the flattened (C, P, P) patch
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    for token in (vit.cls_token, vit.reg_token):
        if token is not None:
            nn.init.normal_(token, std=0.02)
