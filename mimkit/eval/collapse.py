"""Collapse diagnostics of frozen features.

``pairwise_similarity``: mean cosine similarity between the pooled features of distinct
images (the Latent MIM paper's "Sim": ~1.0 when every image maps to the same vector).
``within_image_similarity``: the same among the patch tokens of each image, averaged
over images (~1.0 when all patches of an image look alike).
``effective_rank``: exp of the entropy of the normalised singular values (Roy & Vetterli,
2007), between 1 (one direction) and min(N, D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..objectives.losses import mean_pairwise_cosine


def pairwise_similarity(features: Tensor) -> float:
    """Mean cos(x_i, x_j) over pairs i != j of rows of (N, D)."""
    return float(mean_pairwise_cosine(features))


def within_image_similarity(tokens: Tensor) -> float:
    """Mean over images of the mean cosine between distinct patch tokens: (B, L, D) -> scalar."""
    return float(mean_pairwise_cosine(tokens).mean())


def effective_rank(features: Tensor, center: bool = False, eps: float = 1e-12) -> float:
    """exp(H(p)), p = singular values of (N, D) / their sum."""
    x = features.double()
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)  # (min(N, D),)
    total = s.sum()
    if total <= eps:
        return 0.0
    p = s / total
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))
