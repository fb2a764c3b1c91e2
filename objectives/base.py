"""What every head sees (the Context) and what every head is (an Objective)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from mimkit.encoder import Geometry
from mimkit.target import TargetOutput


@dataclass
class Context:
    """Built once per step by MIMModel; heads read it and may publish into ``extras``."""

    tokens: Tensor  # (B, prefix + Nv, D) context-encoder output, CLS first
    num_prefix: int  # CLS (+ register) tokens in front of the patch tokens
    visible_idx: Tensor  # (B, Nv) grid indices of the visible cells
    target_idx: Tensor  # (B, Nt) grid indices of the target cells
    patches: Tensor  # (B, L, C*P*P) pixel patches of every cell (pixel-head targets)
    geometry: Geometry
    progress: Tensor  # () fraction of training done, in [0, 1], on the device (drives per-head schedules)
    targets: TargetOutput | None = None  # target-encoder latents, computed once
    extras: dict[str, Tensor] = field(default_factory=dict)  # what a head publishes for another

    @property
    def cls(self) -> Tensor:
        """(B, D) the context encoder's CLS token."""
        return self.tokens[:, 0]

    @property
    def visible(self) -> Tensor:
        """(B, Nv, D) the context encoder's patch tokens."""
        return self.tokens[:, self.num_prefix :]


class Objective(nn.Module):
    """A head: reads the Context, returns ``{"<name>/loss": scalar, "<name>/<stat>": scalar, ...}``.

    The ``/loss`` entry is the one MIMModel weights into the total; the other entries
    are detached statistics. A head never calls another head: it reads ``ctx.extras``.
    Heads are constructed as ``Head(run_cfg, encoder_dim, geometry)`` and read their own
    ``run_cfg.objectives.<name>`` section (plus whatever else they depend on, e.g. target.mode).
    """

    name: ClassVar[str]
    needs_target: ClassVar[bool] = False

    def forward(self, ctx: Context) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, online) module pairs to update with the target encoder's momentum."""
        return []
