"""The one context encoder: a timm VisionTransformer run on any subset of grid cells.

The timm model is kept whole as ``ContextEncoder.vit`` so its parameter names (and
therefore checkpoints) are timm's own: ``encoder.vit.state_dict()`` loads into
``timm.create_model(name)`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import timm
import torch
from timm.layers.pos_embed_sincos import freq_bands
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import ConfigError, RunConfig
from .masking import patchify
from .weights import init_encoder

SincosCoords = Literal["index", "linspace"]


@dataclass(frozen=True)
class Geometry:
    """How training images map onto the encoder's grid."""

    patch: int  # P: patch side in pixels
    gap: int  # G: jitter room per cell in pixels
    grid: int  # cells per side
    channels: int = 3

    @property
    def input_size(self) -> int:
        """Side of a training image: grid * (P + G)."""
        return self.grid * (self.patch + self.gap)

    @property
    def native_size(self) -> int:
        """Side of a full image for the encoder's own grid (evaluation): grid * P."""
        return self.grid * self.patch

    @property
    def num_cells(self) -> int:
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch * self.patch


def timm_kwargs(cfg: RunConfig) -> dict:
    """Constructor overrides for ``timm.create_model`` from ``model.*`` (None keeps timm's value)."""
    m = cfg.model
    kw = {k: getattr(m, k) for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads") if getattr(m, k) is not None}
    kw["drop_path_rate"] = m.drop_path_rate
    kw["num_classes"] = 0
    return kw


def resolve_geometry(cfg: RunConfig) -> tuple[Geometry, dict]:
    """The grid geometry and the timm kwargs whose ``img_size`` is grid * P.

    ``data.image_size`` (the training crop) wins when set and must be a multiple of
    patch + gap; otherwise the grid is the timm model's own and the crop is derived.
    """
    kw = timm_kwargs(cfg)
    try:
        with torch.device("meta"):
            probe = timm.create_model(cfg.model.name, pretrained=False, **kw)
    except Exception as e:  # unknown name or bad overrides: say which key
        raise ConfigError(f"model.name: timm cannot build {cfg.model.name!r} with {kw}: {e}") from e
    if not isinstance(probe, VisionTransformer):
        raise ConfigError(f"model.name: {cfg.model.name!r} is a {type(probe).__name__}, not a timm VisionTransformer")
    if not probe.has_class_token:
        raise ConfigError(f"model.name: {cfg.model.name!r} has no CLS token; mimkit needs one")
    ph, pw = probe.patch_embed.patch_size
    ih, iw = probe.patch_embed.img_size
    if ph != pw or ih != iw:
        raise ConfigError(f"model.name: {cfg.model.name!r} has a non-square patch or image; mimkit needs square ones")
    gap = cfg.masking.gap
    cell = ph + gap
    if cfg.data.image_size is not None:
        size = cfg.data.image_size
        if size % cell:
            lo, hi = max(size // cell, 1), size // cell + 1
            raise ConfigError(
                f"data.image_size: {size} is not a multiple of patch + masking.gap = {ph} + {gap} = {cell}; "
                f"use {lo * cell} (grid {lo}) or {hi * cell} (grid {hi})"
            )
        grid = size // cell
        if cfg.model.img_size is not None and cfg.model.img_size != grid * ph:
            raise ConfigError(
                f"model.img_size: {cfg.model.img_size} disagrees with data.image_size={size}: a {grid}x{grid} grid "
                f"of {ph}-px patches needs model.img_size={grid * ph} (or leave one of them unset)"
            )
    else:
        if ih % ph:
            raise ConfigError(f"model.img_size: {ih} is not a multiple of the patch size {ph}")
        grid = ih // ph
    if grid < 2:
        raise ConfigError(f"data.image_size / model.img_size: a grid of {grid}x{grid} cells is too small to mask")
    kw["img_size"] = grid * ph
    return Geometry(patch=ph, gap=gap, grid=grid, channels=probe.patch_embed.proj.in_channels), kw


def build_vit(cfg: RunConfig, kw: dict, source: str | None = None, key: str = "init.encoder") -> VisionTransformer:
    """The timm ViT of ``model.name`` with the weights of ``source`` (a ``load_encoder`` source)
    when given, else randomly initialised by ``model.init``. Load failures name the config ``key``."""
    if not source:
        vit = timm.create_model(cfg.model.name, pretrained=False, **kw)
        init_encoder(vit, cfg.model.init)
        return vit
    from .hub import CheckpointError, load_encoder

    try:
        return load_encoder(source, name=cfg.model.name, **kw)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from e


def sincos_positions(grid: int, dim: int, coords: SincosCoords = "index") -> Tensor:
    """(grid * grid, dim) fixed 2-D sin-cos embedding of row-major cells: [sin y, sin x, cos y, cos x],
    each over dim / 4 frequencies 1 / 10000^(i / (dim / 4)) (timm's ``build_sincos2d_pos_embed``).

    ``coords``: cell k sits at coordinate k ("index") or k * grid / (grid - 1) ("linspace").
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    if coords not in ("index", "linspace"):
        raise ValueError(f"model.sincos_coords: unknown value {coords!r}")
    c = torch.arange(grid, dtype=torch.float32)
    if coords == "linspace" and grid > 1:
        c = c * grid / (grid - 1)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    angles = torch.stack([yy.flatten(), xx.flatten()], dim=1)[..., None] * freq_bands(dim // 4, step=1)  # (L, 2, dim/4)
    return torch.stack([angles.sin(), angles.cos()], dim=1).flatten(1)  # (L, dim)


def fix_sincos_positions(vit: VisionTransformer, grid: int, coords: SincosCoords = "index") -> bool:
    """Make ``vit``'s position table the fixed 2-D sin-cos embedding of its grid cells (prefix
    slots zero) and stop training it. Returns whether the table held other values before."""
    pe = vit.pos_embed  # (1, [prefix +] L, D)
    if pe is None:
        raise ConfigError(f"model.pos_embed: {type(vit).__name__} has no position table to fix")
    dim = pe.shape[-1]
    if dim % 4:
        raise ConfigError(f"model.pos_embed: sincos needs an embedding width divisible by 4, got {dim}")
    n = 0 if vit.no_embed_class else vit.num_prefix_tokens
    table = torch.zeros_like(pe)
    table[0, n:] = sincos_positions(grid, dim, coords).to(pe)
    changed = not torch.equal(pe.detach(), table)
    with torch.no_grad():
        pe.copy_(table)
    pe.requires_grad_(False)
    return changed


class ContextEncoder(nn.Module):
    """Runs a timm ViT on a set of patches placed at given grid cells."""

    def __init__(self, vit: VisionTransformer, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.vit = vit
        self.grad_checkpointing = grad_checkpointing

    @property
    def dim(self) -> int:
        return self.vit.embed_dim

    @property
    def num_prefix(self) -> int:
        """CLS (+ register) tokens in front of the patch tokens."""
        return self.vit.num_prefix_tokens

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def embed(self, patches: Tensor, grid_idx: Tensor) -> Tensor:
        """Patch embedding + position of each patch's grid cell, prefix tokens in front.

        patches: (B, N, C*P*P), grid_idx: (B, N) -> (B, prefix + N, D)
        """
        vit = self.vit
        proj = vit.patch_embed.proj
        x = nn.functional.linear(patches, proj.weight.flatten(1), proj.bias)  # (B, N, D)
        x = vit.patch_embed.norm(x)
        B = x.shape[0]
        tokens = [t for t in (vit.cls_token, vit.reg_token) if t is not None]
        prefix = torch.cat(tokens, dim=1).expand(B, -1, -1)  # (B, prefix, D)
        if vit.pos_embed is not None:
            n = 0 if vit.no_embed_class else vit.num_prefix_tokens
            x = x + vit.pos_embed[0, n:][grid_idx]  # (B, N, D): each patch gets its cell's position
            if n:
                prefix = prefix + vit.pos_embed[:, :n]
        x = torch.cat([prefix, x], dim=1)
        return vit.norm_pre(vit.pos_drop(x))

    def blocks(self, x: Tensor, depth: int | None = None) -> Tensor:
        """Run the first ``depth`` blocks (all when None)."""
        for blk in self.vit.blocks[:depth]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def encode(self, patches: Tensor, grid_idx: Tensor, depth: int | None = None, norm: bool = True) -> Tensor:
        """patches: (B, N, C*P*P), grid_idx: (B, N) -> tokens (B, prefix + N, D), CLS first."""
        x = self.blocks(self.embed(patches, grid_idx), depth)
        return self.vit.norm(x) if norm else x

    def forward(self, patches: Tensor, grid_idx: Tensor) -> Tensor:
        """The context path: ``encode`` with every block and the final norm."""
        return self.encode(patches, grid_idx)

    def forward_image(self, images: Tensor, norm: bool = True) -> Tensor:
        """Full images on the native grid (evaluation): (B, C, g*P, g*P) -> (B, prefix + L, D).

        Equals ``vit.forward_features`` (with ``norm=True``) on the same weights.
        """
        P = self.vit.patch_embed.patch_size[0]
        patches = patchify(images, P)  # (B, L, C*P*P)
        B, L, _ = patches.shape
        idx = torch.arange(L, device=images.device).expand(B, L)
        return self.encode(patches, idx, norm=norm)

