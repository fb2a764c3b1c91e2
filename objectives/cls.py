"""The CLS head (PiLaMIM): predict the target encoder's CLS token."""

from __future__ import annotations

from timm.layers import Mlp
from torch import Tensor

from mimkit.config import RunConfig
from mimkit.encoder import Geometry
from mimkit.weights import init_weights

from .base import Context, Objective
from .losses import mse


class ClsObjective(Objective):
    """MSE between a predicted CLS and the target encoder's CLS.

    ``source: latent.cls`` reads the latent decoder's CLS-slot output and its projected
    target (published by the latent head); ``context.cls`` maps the context encoder's CLS
    through a small MLP and compares it with the raw target CLS.
    """

    name = "cls"
    needs_target = True

    def __init__(self, run: RunConfig, enc_dim: int, geometry: Geometry):
        super().__init__()
        cfg = run.objectives.cls
        self.source = cfg.source
        self.predictor = Mlp(enc_dim, cfg.hidden_dim, enc_dim) if cfg.source == "context.cls" else None
        if self.predictor is not None:
            init_weights(self.predictor, run.model.init)

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        if self.predictor is None:
            if "latent.cls" not in ctx.extras:
                raise RuntimeError("objectives.cls.source is 'latent.cls' but no head published it this step")
            pred, target = ctx.extras["latent.cls"], ctx.extras["latent.cls_target"]
        else:
            assert ctx.targets is not None
            pred, target = self.predictor(ctx.cls), ctx.targets.cls  # (B, D)
        return {"cls/loss": mse(pred, target)}
