"""The latent head (Latent MIM): predict the target encoder's latents at the target cells."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mimkit.config import RunConfig
from mimkit.encoder import Geometry
from mimkit.schedules import cosine_interp
from mimkit.weights import init_weights

from .base import Context, Objective
from .decoders import build_decoder
from .losses import (
    mean_pairwise_cosine, patch_disc_of, reconstruction_loss, retrieval_cosines, retrieval_top1_of,
    similarity_regularizer,
)
from .projector import build_projector, projector_dim


class LatentPrediction(NamedTuple):
    pred: Tensor  # (B, Nt, Dout) the decoder's predictions at the target cells
    target: Tensor  # (B, Nt, Dout) the projected target latents of those cells
    visible: Tensor  # (B, Nv, Dout) the projected context latents of the visible cells
    pred_cls: Tensor | None  # (B, Dout) the CLS query's prediction, when the decoder has one
    target_cls: Tensor  # (B, Dout) the projected target CLS


class LatentObjective(Objective):
    """projector h on Z_V -> decoder -> Z_hat_T, compared with h_T(target latents).

    The target-side projector follows the target encoder's mode: an EMA copy (ema), a
    trained copy (standalone), or h itself (stopgrad: without gradient; joint: with).
    Publishes ``latent.cls`` (the decoder's CLS prediction) and ``latent.cls_target``
    (the projected target CLS) when ``publish_cls``.
    """

    name = "latent"
    needs_target = True

    def __init__(self, run: RunConfig, enc_dim: int, geometry: Geometry):
        super().__init__()
        cfg, target = run.objectives.latent, run.target
        self.cfg = cfg
        self.publish_cls = "cls" in run.objectives.active() and run.objectives.cls.source == "latent.cls"
        self.target_mode = target.mode
        self.projector = build_projector(cfg.projector, enc_dim)
        init_weights(self.projector, run.model.init)
        self.target_projector: nn.Module | None = None
        if target.mode in ("ema", "standalone") and cfg.projector.kind != "none":
            self.target_projector = copy.deepcopy(self.projector)
            self.target_projector.requires_grad_(target.mode == "standalone")
        out_dim = projector_dim(cfg.projector, enc_dim)
        self.decoder = build_decoder(
            out_dim, out_dim, cfg.decoder, geometry.grid, with_cls=self.publish_cls,
            coords=run.model.sincos_coords, scheme=run.model.init,
        )
        self.loss_fn = reconstruction_loss(cfg.loss, tau=cfg.tau, huber_delta=cfg.huber_delta)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.target_mode == "ema" and self.target_projector is not None:
            return [(self.target_projector, self.projector)]
        return []

    def project_targets(self, ctx: Context) -> tuple[Tensor, Tensor]:
        """(B, Nt, Dout) target latents and (B, Dout) target CLS through the target-side projector."""
        assert ctx.targets is not None
        proj = self.target_projector if self.target_projector is not None else self.projector
        x = torch.cat([ctx.targets.cls[:, None], ctx.targets.tokens], dim=1)  # (B, 1+Nt, D)
        with torch.set_grad_enabled(self.target_mode in ("standalone", "joint") and torch.is_grad_enabled()):
            x = proj(x)
        return x[:, 1:], x[:, 0]

    def predict(self, ctx: Context) -> LatentPrediction:
        """The predictions at the target cells beside their targets, before any loss."""
        z = self.projector(ctx.tokens)  # (B, p+Nv, Dout)
        pred, pred_cls = self.decoder(z, ctx.visible_idx, ctx.target_idx, ctx.num_prefix)  # (B, Nt, Dout)
        target, target_cls = self.project_targets(ctx)  # (B, Nt, Dout), (B, Dout)
        return LatentPrediction(pred, target, z[:, ctx.num_prefix :], pred_cls, target_cls)

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        pred, target, z_vis, pred_cls, target_cls = self.predict(ctx)

        # (B, Nt, Nt): the retrieval monitor's cosines, and patch discrimination's logits times tau
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.loss == "patch_disc"):  # a graph only for the loss
            cosines = retrieval_cosines(pred, target)
        rec = patch_disc_of(cosines, self.cfg.tau) if self.cfg.loss == "patch_disc" else self.loss_fn(pred, target)
        loss = rec
        out: dict[str, Tensor] = {"latent/rec": rec.detach()}
        sim = self.cfg.similarity
        if sim.coef > 0:
            gamma = cosine_interp(sim.gamma[0], sim.gamma[1], ctx.progress)
            reg = similarity_regularizer(pred, z_vis, gamma, sim.form)
            loss = loss + sim.coef * reg
            out["latent/reg"] = reg.detach()
            out["latent/gamma"] = gamma.detach()
        with torch.no_grad():  # the collapse monitor
            out["latent/sim_pred"] = mean_pairwise_cosine(pred).mean()
            out["latent/sim_visible"] = mean_pairwise_cosine(z_vis).mean()
            out["latent/sim_target"] = mean_pairwise_cosine(target).mean()
            out["latent/retrieval_top1"] = retrieval_top1_of(cosines)
            if ctx.visible.shape[0] > 1:  # the paper's "Sim": across images, of mean-pooled encoder latents
                out["latent/sim_images"] = mean_pairwise_cosine(ctx.visible.mean(1))
        if self.publish_cls:
            ctx.extras["latent.cls"] = pred_cls
            ctx.extras["latent.cls_target"] = target_cls
        out["latent/loss"] = loss
        return out
