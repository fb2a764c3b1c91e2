"""Decoders that predict something at the target cells from the visible latents.

Both kinds take the context tokens ``memory`` (B, prefix + Nv, Din), the visible and
target grid indices, and return predictions (B, Nt, Dout) plus, when asked, a
prediction at a CLS slot (B, Dout). Positions are fixed 2-D sin-cos embeddings of the
grid index at the decoder width.
"""

from __future__ import annotations

import torch
from timm.layers import Attention, Mlp, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mimkit.attention import attend
from mimkit.config import DecoderConfig
from mimkit.encoder import SincosCoords, sincos_positions
from mimkit.weights import Scheme, init_weights


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` over a separate sequence ``memory`` (fused SDPA, or
    the manual path when ``fused_attn`` is False, as in timm's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.fused_attn = True
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        B, Nq, D = x.shape
        h = self.num_heads
        q = self.q(x).view(B, Nq, h, D // h).transpose(1, 2)  # (B, h, Nq, d)
        k, v = self.kv(memory).view(B, -1, 2, h, D // h).permute(2, 0, 3, 1, 4)  # 2 x (B, h, Nm, d)
        out = attend(q, k, v, self.fused_attn)  # (B, h, Nq, d)
        return self.proj(out.transpose(1, 2).reshape(B, Nq, D))


class CrossBlock(nn.Module):
    """Self-attention among the queries, cross-attention to the memory, MLP; pre-norm residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, qkv_bias=qkv_bias)  # timm's fused self-attention
        self.norm2 = nn.LayerNorm(dim)
        self.norm_mem = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), self.norm_mem(memory))
        return x + self.mlp(self.norm3(x))


class _Decoder(nn.Module):
    """Shared parts: input embedding, mask token, positions, output norm and head."""

    def __init__(self, in_dim: int, out_dim: int, cfg: DecoderConfig, grid: int, coords: SincosCoords) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(in_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        if cfg.pos_embed == "learned":
            self.pos = nn.Parameter(torch.zeros(grid * grid, cfg.dim))  # (L, dim)
        else:
            self.register_buffer("pos", sincos_positions(grid, cfg.dim, coords), persistent=False)  # (L, dim)
        self.norm = nn.LayerNorm(cfg.dim) if cfg.final_norm else nn.Identity()
        self.head = nn.Linear(cfg.dim, out_dim)

    def _init(self, scheme: Scheme) -> None:
        init_weights(self, scheme)
        if self.cfg.mask_token_init == "normal":
            nn.init.normal_(self.mask_token, std=0.02)
        if isinstance(self.pos, nn.Parameter):
            trunc_normal_(self.pos, std=0.02)

    def add_positions(self, z: Tensor, visible_idx: Tensor, num_prefix: int) -> Tensor:
        """(B, prefix + Nv, dim): patch tokens get their cell's position, prefix tokens none."""
        return torch.cat([z[:, :num_prefix], z[:, num_prefix:] + self.pos[visible_idx].to(z.dtype)], dim=1)

    def queries(self, target_idx: Tensor) -> Tensor:
        """(B, Nt) -> (B, Nt, dim): mask token + target position."""
        return self.mask_token + self.pos[target_idx]


class SelfAttnDecoder(_Decoder):
    """MAE-style: [context tokens + positions, mask tokens + positions] through self-attention
    blocks; the CLS prediction is the output at the context CLS slot."""

    def __init__(
        self, in_dim: int, out_dim: int, cfg: DecoderConfig, grid: int, with_cls: bool = False,
        coords: SincosCoords = "index", scheme: Scheme = "timm",
    ) -> None:
        super().__init__(in_dim, out_dim, cfg, grid, coords)
        self.with_cls = with_cls
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias) for _ in range(cfg.depth)])
        self._init(scheme)

    def forward(
        self, memory: Tensor, visible_idx: Tensor, target_idx: Tensor, num_prefix: int
    ) -> tuple[Tensor, Tensor | None]:
        mem = self.add_positions(self.embed(memory), visible_idx, num_prefix)  # (B, p+Nv, dim)
        x = torch.cat([mem, self.queries(target_idx).to(mem.dtype)], dim=1)  # (B, p+Nv+Nt, dim)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        Nt = target_idx.shape[1]
        pred = self.head(x[:, -Nt:])  # (B, Nt, out)
        cls = self.head(x[:, 0]) if self.with_cls else None  # (B, out)
        return pred, cls


class CrossAttnDecoder(_Decoder):
    """Target queries attend to each other and, in every block, to the visible latents.

    With visual cues a query starts as m + p_t + softmax(p_t . p_V^T / sqrt(d)) Z_V: a
    position-weighted blend of the (embedded) visible latents. With ``with_cls`` a learned
    CLS query rides along (also with ``cfg.cls_query``, where nothing reads it: it still takes
    part in the queries' self-attention) and its output is the CLS prediction.
    """

    def __init__(
        self, in_dim: int, out_dim: int, cfg: DecoderConfig, grid: int, with_cls: bool = False,
        coords: SincosCoords = "index", scheme: Scheme = "timm",
    ) -> None:
        super().__init__(in_dim, out_dim, cfg, grid, coords)
        self.visual_cues = cfg.visual_cues
        self.fused_attn = True  # the visual cues' kernel (mimkit.attention.set_attention)
        self.cls_query = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if with_cls or cfg.cls_query else None
        self.blocks = nn.ModuleList([CrossBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias) for _ in range(cfg.depth)])
        self._init(scheme)
        if self.cls_query is not None:
            nn.init.normal_(self.cls_query, std=0.02)

    def forward(
        self, memory: Tensor, visible_idx: Tensor, target_idx: Tensor, num_prefix: int
    ) -> tuple[Tensor, Tensor | None]:
        z = self.embed(memory)  # (B, p+Nv, dim)
        q = self.queries(target_idx).to(z.dtype)  # (B, Nt, dim)
        if self.visual_cues:
            p_t, p_v = self.pos[target_idx].to(z.dtype), self.pos[visible_idx].to(z.dtype)  # (B, Nt, dim), (B, Nv, dim)
            # softmax_v(p_t . p_v / sqrt(d)) Z_V, as one attention over the visible latents
            q = q + attend(p_t, p_v, z[:, num_prefix:], self.fused_attn)
        mem = self.add_positions(z, visible_idx, num_prefix)  # (B, p+Nv, dim)
        if self.cls_query is not None:
            q = torch.cat([self.cls_query.expand(q.shape[0], -1, -1).to(q.dtype), q], dim=1)
        for blk in self.blocks:
            q = blk(q, mem)
        q = self.norm(q)
        if self.cls_query is not None:
            return self.head(q[:, 1:]), self.head(q[:, 0])
        return self.head(q), None


DECODERS: dict[str, type[_Decoder]] = {"self_attn": SelfAttnDecoder, "cross_attn": CrossAttnDecoder}


def build_decoder(
    in_dim: int, out_dim: int, cfg: DecoderConfig, grid: int, with_cls: bool = False,
    coords: SincosCoords = "index", scheme: Scheme = "timm",
) -> _Decoder:
    """The ``cfg.kind`` decoder; ``coords`` and ``scheme`` are the run's ``model.sincos_coords`` and ``model.init``."""
    return DECODERS[cfg.kind](in_dim, out_dim, cfg, grid, with_cls=with_cls, coords=coords, scheme=scheme)
