"""Target-encoder strategies: where the latent targets come from.

====== ================================ ===================================
mode   weights                          gradient
====== ================================ ===================================
ema    own copy, EMA of the context enc none (updated by ``ema_update``)
stop.  the context encoder's            none (run under ``no_grad``)
stand. own copy, trained by the loss    into the target weights only
joint  the context encoder's            through both paths (collapses)
====== ================================ ===================================
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import TargetConfig
from .encoder import ContextEncoder
from .masking import gather_tokens


@dataclass
class TargetOutput:
    tokens: Tensor  # (B, Nt, D) target-encoder latents at the target cells
    cls: Tensor  # (B, D) target-encoder CLS
    every: Tensor | None = None  # (B, L, D) the latents of every cell, when the target encoder sees the full image


class TargetEncoder(nn.Module):
    """Produces target latents for the target cells with one of four weight strategies."""

    def __init__(self, cfg: TargetConfig, context: ContextEncoder) -> None:
        super().__init__()
        if cfg.mode not in ("ema", "stopgrad", "standalone", "joint"):
            raise ValueError(f"target.mode: {cfg.mode!r} builds no target encoder")
        if cfg.depth is not None and cfg.depth > context.depth:
            raise ValueError(f"target.depth: {cfg.depth} exceeds the encoder's {context.depth} blocks")
        self.mode = cfg.mode
        self.depth = cfg.depth
        self.sees = cfg.sees
        # Own weights for ema / standalone; otherwise the context encoder is passed in at call time
        # (holding it here would register its parameters twice).
        self.own: ContextEncoder | None = None
        if cfg.mode in ("ema", "standalone"):
            self.own = copy.deepcopy(context)
            for own, ctx in zip(self.own.parameters(), context.parameters()):  # fixed tables stay fixed
                own.requires_grad_(cfg.mode == "standalone" and ctx.requires_grad)

    @property
    def has_gradient(self) -> bool:
        return self.mode in ("standalone", "joint")

    def forward(self, context: ContextEncoder, patches: Tensor, target_idx: Tensor) -> TargetOutput:
        """patches: (B, L, C*P*P) all cells, target_idx: (B, Nt) -> TargetOutput."""
        enc = self.own if self.own is not None else context
        with torch.set_grad_enabled(self.has_gradient and torch.is_grad_enabled()):
            if self.sees == "targets":
                tokens = enc.encode(gather_tokens(patches, target_idx), target_idx, depth=self.depth)  # (B, p+Nt, D)
                out = TargetOutput(tokens=tokens[:, enc.num_prefix :], cls=tokens[:, 0])
            else:
                B, L, _ = patches.shape
                all_idx = torch.arange(L, device=patches.device).expand(B, L)
                tokens = enc.encode(patches, all_idx, depth=self.depth)  # (B, p+L, D)
                every = tokens[:, enc.num_prefix :]  # (B, L, D)
                out = TargetOutput(tokens=gather_tokens(every, target_idx), cls=tokens[:, 0], every=every)
        return out

    @torch.no_grad()
    def ema_update(self, context: ContextEncoder, momentum: float) -> None:
        """theta_target <- m * theta_target + (1 - m) * theta_context (ema mode; no-op otherwise)."""
        if self.mode == "ema":
            ema_(self.own, context, momentum)


@torch.no_grad()
def ema_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In-place EMA of ``online``'s parameters into ``target``'s; buffers are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("EMA target and online modules have different parameter lists")
    if t_params:
        torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
