"""Which attention kernel a training step runs: ``train.attention: auto`` resolved for a device
and a precision.

| device | precision | auto gives |
|---|---|---|
| CPU | bf16 autocast | ``manual`` |
| anything else | | ``fused`` |

``fused`` is ``F.scaled_dot_product_attention`` (flash attention on GPUs and CPUs); ``manual``
computes softmax(q k^T / sqrt(d)) v as two batched matmuls and a softmax, timm's own
non-fused path. On a CPU under bf16 autocast, torch's fused kernel is the slow one, its
backward above all, while the two matmuls that replace it run at the bf16 matmul rate. Measured
on a 2-core Xeon with avx512_bf16 (a timm Block 192 wide with 3 heads, batch 128, forward +
backward, best of 3):

| tokens | fused bf16 | manual bf16 | fused fp32 | manual fp32 |
|---|---|---|---|---|
| 17 | 54.7 ms | 19.8 ms | 45.3 ms | 47.6 ms |
| 65 | 141.4 ms | 72.1 ms | 172.2 ms | 179.8 ms |

In fp32 the fused kernel is as fast or faster, so ``auto`` keeps it there. A pass without a
backward is another matter: the fused forward alone is the faster one on a CPU under bf16 too
(a 6-block encoder over 59 tokens, batch 128, no gradient: 6 to 36 % less time than manual in
three interleaved pairs). So ``auto`` runs the fused kernel in attention modules with no trainable
parameter (an EMA target encoder), and evaluation's feature extraction runs it everywhere
(:func:`forward_only`). The two kernels compute the same function; only rounding differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

Kernel = Literal["fused", "manual"]
Requested = Literal["auto", "fused", "manual"]


def resolve_attention(requested: Requested, precision: str, device_type: str) -> Kernel:
    """``auto`` -> ``manual`` on a CPU under bf16 autocast, else ``fused``; the others as asked.
    ``precision`` is a resolved one ("no", "bf16", "fp16")."""
    if requested == "auto":
        return "manual" if device_type == "cpu" and precision == "bf16" else "fused"
    if requested not in ("fused", "manual"):
        raise ValueError(f"train.attention: unknown kernel {requested!r} (expected 'auto', 'fused' or 'manual')")
    return requested


def attend(q: Tensor, k: Tensor, v: Tensor, fused: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d)) v. q: (..., Nq, d), k: (..., Nk, d), v: (..., Nk, dv) -> (..., Nq, dv)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (..., Nq, Nk)
    return scores.softmax(dim=-1) @ v


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm's ``Attention`` and mimkit's decoders: every module with a boolean ``fused_attn``."""
    return [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]


def set_attention(model: nn.Module, kernel: Kernel) -> int:
    """Switch every attention module of ``model`` to ``kernel``; returns how many were switched."""
    modules = attention_modules(model)
    for m in modules:
        m.fused_attn = kernel == "fused"
    return len(modules)


def apply_attention(model: nn.Module, requested: Requested, precision: str, device_type: str) -> Kernel:
    """Resolve ``requested`` and switch ``model`` to it; returns the kernel of the trained modules.

    Under ``auto``, attention modules without a trainable parameter keep the fused kernel: their
    pass is gradient-free (an EMA target encoder), where the fused forward is the faster one.
    """
    kernel = resolve_attention(requested, precision, device_type)
    set_attention(model, kernel)
    if requested == "auto":
        for m in attention_modules(model):
            if not any(p.requires_grad for p in m.parameters()):
                m.fused_attn = True
    return kernel


@contextlib.contextmanager
def forward_only(model: nn.Module) -> Iterator[None]:
    """The fused kernel in every attention module for a pass without backward (evaluation);
    each module's own kernel is restored afterwards."""
    modules = attention_modules(model)
    kernels = [m.fused_attn for m in modules]
    set_attention(model, "fused")
    try:
        yield
    finally:
        for m, fused in zip(modules, kernels):
            m.fused_attn = fused
