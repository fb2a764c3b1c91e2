"""The latent projector: identity, or an MLP applied token-wise to encoder outputs."""

from __future__ import annotations

from torch import nn

from mimkit.config import ProjectorConfig


class Projector(nn.Sequential):
    """The token-wise MLP (a type of its own so ``MIMModel.compile("blocks")`` can find it)."""


def build_projector(cfg: ProjectorConfig, in_dim: int) -> nn.Module:
    """``none`` -> Identity; ``mlp`` -> [Linear, (LayerNorm), GELU] x (layers - 1), Linear, (LayerNorm);
    the linears carry biases when ``cfg.bias``."""
    if cfg.kind == "none":
        return nn.Identity()
    out_dim = cfg.out_dim or in_dim
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(cfg.layers - 1):
        layers += [nn.Linear(dim, cfg.hidden_dim, bias=cfg.bias), nn.LayerNorm(cfg.hidden_dim) if cfg.norm else nn.Identity(), nn.GELU()]
        dim = cfg.hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=cfg.bias))
    if cfg.out_norm:
        layers.append(nn.LayerNorm(out_dim))
    return Projector(*layers)


def projector_dim(cfg: ProjectorConfig, in_dim: int) -> int:
    return in_dim if cfg.kind == "none" else (cfg.out_dim or in_dim)
