"""The pixel head (MAE): predict the pixels of the target patches from the visible latents."""

from __future__ import annotations

from torch import Tensor

from mimkit.config import RunConfig
from mimkit.encoder import Geometry
from mimkit.masking import gather_tokens

from .base import Context, Objective
from .decoders import build_decoder
from .losses import mse


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per patch: subtract its mean and divide by sqrt(var + eps) over its pixels (MAE's norm_pix)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


class PixelObjective(Objective):
    """MSE between decoded and true pixels of the target patches (jittered ones when gap > 0)."""

    name = "pixel"
    needs_target = False

    def __init__(self, run: RunConfig, enc_dim: int, geometry: Geometry):
        super().__init__()
        cfg = run.objectives.pixel
        self.norm_pix = cfg.norm_pix
        self.decoder = build_decoder(
            enc_dim, geometry.patch_dim, cfg.decoder, geometry.grid, coords=run.model.sincos_coords, scheme=run.model.init
        )

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        pred, _ = self.decoder(ctx.tokens, ctx.visible_idx, ctx.target_idx, ctx.num_prefix)  # (B, Nt, C*P*P)
        target = gather_tokens(ctx.patches, ctx.target_idx).float()  # (B, Nt, C*P*P)
        if self.norm_pix:
            target = normalize_patches(target)
        loss = mse(pred, target)
        return {"pixel/loss": loss}
