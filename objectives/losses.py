"""Reconstruction losses and patch-similarity statistics, one small pure function each.

Shapes: ``pred`` and ``target`` are (B, N, D): N patches of D channels per image.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over every element of (pred - target)^2."""
    return (pred.float() - target.float()).pow(2).mean()


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over every element of |pred - target|."""
    return (pred.float() - target.float()).abs().mean()


def huber(pred: Tensor, target: Tensor, delta: float = 1.0) -> Tensor:
    """Element-wise Huber: 0.5 e^2 where |e| < delta, else delta (|e| - 0.5 delta); mean."""
    return F.huber_loss(pred.float(), target.float(), delta=delta)


def norm_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Squared distance between L2-normalised vectors (= 2 - 2 cos), mean over patches."""
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    return (p - t).pow(2).sum(-1).mean()


def standardize_patches(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Per image and channel, subtract the mean over patches and divide by (std + eps).

    x: (B, N, D) -> (B, N, D)
    """
    x = x.float()
    centred = x - x.mean(dim=1, keepdim=True)
    # the unbiased std from the centred values: half the time of torch.std over a middle axis on a CPU
    std = (centred.pow(2).sum(dim=1, keepdim=True) / (x.shape[1] - 1)).sqrt()
    return centred / (std + eps)


def patch_disc(pred: Tensor, target: Tensor, tau: float = 0.2) -> Tensor:
    """Patch discrimination: InfoNCE among the target patches of the same image.

    For target k of an image, logits_kl = cos(pred_k, target_l) / tau over that image's
    targets l, and the right answer is l = k. Predictions are first standardised across
    the patch axis; the mean cross-entropy is scaled by 2 tau.
    """
    return patch_disc_of(retrieval_cosines(pred, target), tau)


def patch_disc_of(cosines: Tensor, tau: float = 0.2) -> Tensor:
    """``patch_disc`` from its (B, N, N) ``retrieval_cosines``."""
    B, N, _ = cosines.shape
    labels = torch.arange(N, device=cosines.device).expand(B, N)
    return F.cross_entropy((cosines / tau).flatten(0, 1), labels.flatten()) * (2 * tau)


def retrieval_cosines(pred: Tensor, target: Tensor) -> Tensor:
    """(B, N, N) cosines between each standardised prediction and every target of its image,
    as patch discrimination compares them (its logits times tau)."""
    p = F.normalize(standardize_patches(pred.float()), dim=-1)  # (B, N, D)
    t = F.normalize(target.float(), dim=-1)  # (B, N, D)
    return torch.bmm(p, t.transpose(1, 2))


def retrieval_top1(pred: Tensor, target: Tensor) -> Tensor:
    """The share of predictions whose most similar target among their image's targets is their
    own: how well the patch-discrimination task is solved (1/N by chance)."""
    return retrieval_top1_of(retrieval_cosines(pred, target))


def retrieval_top1_of(cosines: Tensor) -> Tensor:
    """``retrieval_top1`` from its (B, N, N) ``retrieval_cosines``."""
    hits = cosines.argmax(-1) == torch.arange(cosines.shape[1], device=cosines.device)  # (B, N)
    return hits.float().mean()


LossFn = Callable[[Tensor, Tensor], Tensor]


def reconstruction_loss(kind: str, tau: float = 0.2, huber_delta: float = 1.0) -> LossFn:
    """The loss named by ``objectives.latent.loss``."""
    table: dict[str, LossFn] = {
        "patch_disc": lambda p, t: patch_disc(p, t, tau),
        "mse": mse,
        "l1": l1,
        "huber": lambda p, t: huber(p, t, huber_delta),
        "norm_mse": norm_mse,
    }
    if kind not in table:
        raise ValueError(f"objectives.latent.loss: {kind!r} is not one of {sorted(table)}")
    return table[kind]


def mean_pairwise_cosine(x: Tensor) -> Tensor:
    """Mean cosine similarity over distinct pairs (i != j) of each set of N vectors.

    x: (..., N, D) -> (...). Uses |sum_i u_i|^2 = sum_ij cos_ij for unit vectors: O(N D).
    """
    N = x.shape[-2]
    if N < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least two vectors per set, got {N}")
    u = F.normalize(x.float(), dim=-1)
    s = u.sum(dim=-2)  # (..., D)
    return (s.pow(2).sum(-1) - u.pow(2).sum((-2, -1))) / (N * (N - 1))


def batch_mean_cosine(x: Tensor) -> Tensor:
    """Mean cosine over every ordered pair (i, j), i = j included, of each image's N vectors,
    averaged over the batch: mean_b |sum_i u_bi|^2 / N^2. x: (B, N, D) -> ()."""
    u = F.normalize(x.float(), dim=-1)
    return u.sum(dim=1).pow(2).sum(-1).mean() / x.shape[1] ** 2


def similarity_regularizer(pred: Tensor, visible: Tensor, gamma: float | Tensor, form: str = "per_image") -> Tensor:
    """The similarity constraint on predicted targets pred (B, Nt, D) and visible latents (B, Nv, D).

    ``per_image``: mean over images of (gamma - c_b)^2 per set, c_b the image's mean off-diagonal
    cosine. ``batch``: (gamma - c)^2 per set, c = ``batch_mean_cosine`` (diagonal included, so at
    equilibrium the off-diagonal mean is (gamma N - 1) / (N - 1)).
    """
    if form == "per_image":
        return ((gamma - mean_pairwise_cosine(pred)).pow(2) + (gamma - mean_pairwise_cosine(visible)).pow(2)).mean()
    if form == "batch":
        return (gamma - batch_mean_cosine(pred)).pow(2) + (gamma - batch_mean_cosine(visible)).pow(2)
    raise ValueError(f"objectives.latent.similarity.form: unknown form {form!r}")
