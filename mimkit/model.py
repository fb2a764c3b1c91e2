"""MIMModel: images -> patches -> visible/target split -> context encoder (once) -> heads -> losses."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from timm.models.vision_transformer import Block

from .objectives import OBJECTIVES, Context
from .objectives.decoders import CrossBlock
from .objectives.projector import Projector

from .config import ConfigError, RunConfig
from .encoder import ContextEncoder, Geometry, build_vit, fix_sincos_positions, resolve_geometry
from .masking import draw_masks, gather_tokens, max_offset, num_visible, patchify
from .schedules import interp
from .target import TargetEncoder, ema_

log = logging.getLogger(__name__)


class MIMModel(nn.Module):
    """One shared context encoder, an optional target encoder, and the weighted heads.

    ``model(images, progress)`` returns a dict with ``"loss"`` (sum of weight * head loss),
    each ``"<head>/loss"`` (unweighted) and the heads' detached statistics.
    """

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        geometry, kw = resolve_geometry(cfg)
        self.cfg = cfg
        self.geometry: Geometry = geometry
        self.ratio = cfg.masking.ratio
        self.max_offset = max_offset(cfg.masking.gap, cfg.masking.offsets)
        self.mask_kind = cfg.masking.kind
        try:
            self.num_visible = num_visible(geometry.num_cells, cfg.masking.ratio)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        active = cfg.objectives.active()
        if "latent" in active and cfg.objectives.latent.similarity.coef > 0 and self.num_visible < 2:
            raise ConfigError(
                f"objectives.latent.similarity.coef: the regulariser needs >= 2 visible cells, masking.ratio="
                f"{cfg.masking.ratio} leaves {self.num_visible} of {geometry.num_cells}"
            )
        vit = build_vit(cfg, kw, cfg.init.encoder)
        coords = cfg.model.sincos_coords
        if cfg.model.pos_embed == "sincos" and fix_sincos_positions(vit, geometry.grid, coords) and cfg.init.encoder:
            log.warning(
                "model.pos_embed=sincos replaces the position table loaded from init.encoder with fixed sin-cos "
                "positions; set model.pos_embed=learned to keep and train the loaded one"
            )
        self.encoder = ContextEncoder(vit, grad_checkpointing=cfg.model.grad_checkpointing)
        D = self.encoder.dim

        self.heads = nn.ModuleDict({name: OBJECTIVES[name](cfg, D, geometry) for name in OBJECTIVES if name in active})
        self.weights = {name: getattr(cfg.objectives, name).weight for name in self.heads}
        needs_target = any(h.needs_target for h in self.heads.values())
        self.target: TargetEncoder | None = None
        if needs_target:
            try:
                self.target = TargetEncoder(cfg.target, self.encoder)
            except ValueError as e:
                raise ConfigError(str(e)) from e
            self._init_target(cfg, kw)
        self._compiled_step = None  # masked_step compiled by compile_step("model")

    def _init_target(self, cfg: RunConfig, kw: dict) -> None:
        """``init.target``: "same" (or unset) starts the target as a copy of the context encoder;
        "random" gives it its own random weights (``model.init``); any other source loads its
        weights into the target's own copy."""
        source = cfg.init.target
        if source in (None, "same"):
            return
        assert self.target is not None
        if self.target.own is None:
            raise ConfigError(
                f"init.target: target.mode={cfg.target.mode!r} shares the context encoder's weights; "
                "only ema and standalone targets can start from their own weights"
            )
        vit = build_vit(cfg, kw, None if source == "random" else source, key="init.target")
        self.target.own.vit.load_state_dict(vit.state_dict())
        if cfg.model.pos_embed == "sincos":
            fix_sincos_positions(self.target.own.vit, self.geometry.grid, cfg.model.sincos_coords)

    @property
    def input_size(self) -> int:
        """Side in pixels of the training images the model takes: grid * (P + G)."""
        return self.geometry.input_size

    def momentum(self, progress: float) -> float:
        """Target-encoder EMA momentum at this point of training."""
        t = self.cfg.target
        return interp(t.momentum_schedule, t.momentum[0], t.momentum[1], progress)

    def forward(self, images: Tensor, progress: float = 0.0, batch_slice: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """images: (B, C, S, S) with S = input_size, normalised.

        Masks and gap offsets are drawn from torch's global RNG on the images' device (which
        accelerate checkpoints). ``batch_slice=(start, total)`` says these images are rows
        [start, start + B) of a global batch of ``total``: randomness is drawn for all rows and
        these rows kept, so masks do not depend on how a batch is split across processes.
        """
        g = self.geometry
        B, _, H, W = images.shape
        if H != g.input_size or W != g.input_size:
            raise ValueError(f"MIMModel expects {g.input_size}x{g.input_size} images (grid {g.grid} x (patch {g.patch} + gap {g.gap})), got {H}x{W}")
        start, total = batch_slice if batch_slice is not None else (0, B)
        # A 0-d tensor filled on the device: a schedule value that moves every step neither
        # copies from the host nor makes a compiled step recompile.
        progress_t = torch.full((), float(progress), device=images.device)
        step = self._compiled_step or self.masked_step
        return step(images, progress_t, start, total)

    def masked_step(self, images: Tensor, progress: Tensor, start: int, total: int) -> dict[str, Tensor]:
        """Masking + ``forward_split`` for rows [start, start + B) of a global batch of ``total``."""
        g = self.geometry
        rows = slice(start, start + images.shape[0])
        offsets, visible_idx, target_idx = draw_masks(
            total, g.num_cells, g.gap, self.ratio, images.device, self.max_offset, self.mask_kind
        )  # for all rows
        patches = patchify(images, g.patch, g.gap, offsets[rows] if offsets is not None else None)  # (B, L, C*P*P)
        return self.forward_split(patches, visible_idx[rows], target_idx[rows], progress)

    def forward_split(self, patches: Tensor, visible_idx: Tensor, target_idx: Tensor, progress: float | Tensor = 0.0) -> dict[str, Tensor]:
        """The step after masking, for callers that choose the split themselves (tests, tools)."""
        ctx = self.context(patches, visible_idx, target_idx, progress)
        out: dict[str, Tensor] = {}
        total = ctx.tokens.new_zeros((), dtype=torch.float32)
        for name, head in self.heads.items():
            res = head(ctx)
            total = total + self.weights[name] * res[f"{name}/loss"]
            out.update({k: v if k.endswith("/loss") else v.detach() for k, v in res.items()})
        out["loss"] = total
        return out

    def context(self, patches: Tensor, visible_idx: Tensor, target_idx: Tensor, progress: float | Tensor = 0.0) -> Context:
        """What every head reads: the context encoder's tokens of the visible cells and, when there
        is a target encoder, its latents of the target cells. patches: (B, L, C*P*P)."""
        if not isinstance(progress, Tensor):
            progress = torch.full((), float(progress), device=patches.device)
        return Context(
            tokens=self.encoder(gather_tokens(patches, visible_idx), visible_idx),  # (B, p+Nv, D)
            num_prefix=self.encoder.num_prefix,
            visible_idx=visible_idx,
            target_idx=target_idx,
            patches=patches,
            geometry=self.geometry,
            progress=progress,
            targets=self.target(self.encoder, patches, target_idx) if self.target is not None else None,
        )

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step of the target encoder and of every head's target-side modules (ema mode)."""
        if self.target is None or self.target.mode != "ema":
            return
        self.target.ema_update(self.encoder, momentum)
        for head in self.heads.values():
            for target, online in head.ema_pairs():
                ema_(target, online, momentum)

    def compile_step(self, mode: str = "model", **compile_kwargs) -> int:
        """``torch.compile`` for training (``train.compile``); returns the number of compiled units.

        ``model``: the whole masked step (masking, encoders, heads, losses) is one graph, and
        autograd's backward of it another; shapes are static and progress is a device tensor,
        so it compiles once. ``blocks``: each transformer block and projector is compiled in
        place; they hold nearly all the FLOPs and see a few sequence lengths, while masking,
        gathers and losses stay eager.
        """
        if mode == "model":
            self._compiled_step = torch.compile(self.masked_step, dynamic=False, **compile_kwargs)
            return 1
        if mode == "blocks":
            units = [m for m in self.modules() if isinstance(m, (Block, CrossBlock, Projector))]
            for unit in units:
                unit.compile(**compile_kwargs)
            return len(units)
        raise ValueError(f"train.compile: unknown mode {mode!r} (expected 'model', 'blocks' or 'none')")

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The context encoder's weights under timm's own names."""
        return self.encoder.vit.state_dict()


def build_model(cfg: RunConfig) -> MIMModel:
    return MIMModel(cfg)
