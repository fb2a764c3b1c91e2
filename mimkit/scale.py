"""Scale overlays: one written rule that shrinks any preset from ViT-B/16 to a smaller encoder.

A scale overlay (``configs/micro.yaml``) sets the smaller encoder under ``model:`` and names
its ratios to ViT-B/16 (768 wide, 12 deep, 16-px patches) under ``scale:``. Every preset's
heads are then resized by those ratios, so each keeps the paper's proportions:

| what | rule |
|---|---|
| decoder width, decoder heads, projector hidden size, CLS-predictor hidden size | × ``width`` (head width kept) |
| decoder depth | × ``depth``, rounded half up, at least 1 |
| masking gap | × ``patch``, rounded half up (the paper's 16:4 patch-to-gap proportion) |

The mask ratios are untouched, so the number of visible cells follows them on the smaller
grid. Batch, epochs and warm-up are plain values of the overlay. Dotted overrides apply
after the rule, so ``objectives.latent.decoder.depth=3`` on the command line wins.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, DecoderConfig, RunConfig


@dataclass(frozen=True)
class ScaleRule:
    width: float  # encoder width / 768
    depth: float  # encoder depth / 12
    patch: float  # patch size / 16

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ScaleRule:
        keys = ("width", "depth", "patch")
        if not isinstance(data, dict) or set(data) != set(keys):
            raise ConfigError(f"{where}: scale must be a mapping with exactly {', '.join(keys)}, got {data!r}")
        for k in keys:
            v = data[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"{where}: scale.{k}: {v!r} must be a positive number")
        return cls(float(data["width"]), float(data["depth"]), float(data["patch"]))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _scale_decoder(dec: DecoderConfig, rule: ScaleRule) -> None:
    heads = max(1, _round_half_up(dec.num_heads * rule.width))
    head_dim = dec.dim // dec.num_heads
    dec.num_heads = heads
    dec.dim = heads * head_dim
    dec.depth = max(1, _round_half_up(dec.depth * rule.depth))


def apply_scale(cfg: RunConfig, rule: ScaleRule) -> RunConfig:
    """A copy of ``cfg`` with its heads and gap resized by ``rule`` (the table above)."""
    out = copy.deepcopy(cfg)
    o = out.objectives
    for dec in (o.latent.decoder, o.pixel.decoder, o.cluster.decoder):
        _scale_decoder(dec, rule)
    o.latent.projector.hidden_dim = max(1, _round_half_up(o.latent.projector.hidden_dim * rule.width))
    o.cls.hidden_dim = max(1, _round_half_up(o.cls.hidden_dim * rule.width))
    out.masking.gap = _round_half_up(out.masking.gap * rule.patch)
    return out
