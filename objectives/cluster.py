"""The cluster head (CAPI): predict the teacher's Sinkhorn-balanced soft assignments of its patch
tokens to K prototypes, at a random subset of the masked cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimkit.config import RunConfig
from mimkit.encoder import Geometry
from mimkit.masking import gather_tokens

from .base import Context, Objective
from .decoders import build_decoder


def _across_processes(x: Tensor, op: str = "sum") -> Tensor:
    """``x`` reduced over every process of a distributed run (in place); itself on one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
    return x


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, iters: int = 3) -> Tensor:
    """Balanced soft assignments (..., N, K) of N samples to K prototypes, each leading index on its
    own: exp(logits) scaled in turn so that every prototype gets the same mass over the samples
    (of every process: the sums are all-reduced, so a run balances over its global batch) and
    every sample sums to 1 (the last step). Each prototype's exponent is shifted by its own
    largest logit, which its own scaling cancels: no prototype underflows to an all-zero column."""
    x = logits.float()
    q = torch.exp(x - _across_processes(x.amax(dim=-2, keepdim=True), "max"))  # (..., N, K); 1 somewhere in each column
    for _ in range(iters):
        q = q / _across_processes(q.sum(dim=-2, keepdim=True))  # every prototype: mass 1 over the global batch
        q = q / q.sum(dim=-1, keepdim=True)  # every sample: 1
    return q


def soft_cross_entropy(target: Tensor, logits: Tensor) -> Tensor:
    """Mean over rows of -sum_k target_k log softmax(logits)_k: target (..., K) distributions."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class ClusterObjective(Objective):
    """Teacher (the EMA target encoder, full image) -> L2-normalised patch tokens -> a linear
    clustering module -> Sinkhorn-Knopp per grid position over the batch (tau_target) = the
    assignments A. The clustering module learns only from CE(A, softmax(its logits / tau_pred)).
    The student's cross-attention predictor reads the context encoder at a random share of the
    target cells; its L2-normalised output through a weight-normalised linear (no bias) gives
    logits over the prototypes, trained by CE(A, softmax(logits / tau_student))."""

    name = "cluster"
    needs_target = True

    def __init__(self, run: RunConfig, enc_dim: int, geometry: Geometry):
        super().__init__()
        cfg = self.cfg = run.objectives.cluster
        self.clustering = nn.Linear(enc_dim, cfg.prototypes)
        nn.init.normal_(self.clustering.weight, std=1.0)
        nn.init.zeros_(self.clustering.bias)
        self.decoder = build_decoder(enc_dim, cfg.decoder.dim, cfg.decoder, geometry.grid, coords=run.model.sincos_coords,
                                     scheme=run.model.init)
        self.prototypes = nn.Parameter(torch.empty(cfg.prototypes, cfg.decoder.dim))  # the student head's weight
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def own_lr(self) -> dict[str, float]:
        """Submodules trained at their own peak lr: the clustering module (objectives.cluster.clustering_lr)."""
        return {"clustering": self.cfg.clustering_lr}

    def assign(self, every: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher tokens (B, L, D) -> (assignments A (B, L, K) without gradient, the clustering
        module's loss). A is balanced per grid position over the batch."""
        cfg = self.cfg
        logits = self.clustering(F.normalize(every.detach().float(), dim=-1))  # (B, L, K)
        per_position = (logits.detach() / cfg.tau_target).transpose(0, 1)  # (L, B, K): each position over the batch
        a = sinkhorn_knopp(per_position, cfg.sinkhorn_iters).transpose(0, 1)  # (B, L, K)
        return a, soft_cross_entropy(a, logits / cfg.tau_pred)

    def predicted_cells(self, target_idx: Tensor) -> Tensor:
        """A random share (``prediction_subsampling``, at least one) of each image's target cells: (B, n)."""
        B, Nt = target_idx.shape
        n = max(1, round(self.cfg.prediction_subsampling * Nt))
        keep = torch.rand(B, Nt, device=target_idx.device).argsort(dim=1)[:, :n]  # (B, n)
        return target_idx.gather(1, keep)

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        assert ctx.targets is not None and ctx.targets.every is not None, "the cluster head needs target.sees: full"
        a, clustering_loss = self.assign(ctx.targets.every)  # (B, L, K), ()
        cells = self.predicted_cells(ctx.target_idx)  # (B, n)
        pred, _ = self.decoder(ctx.tokens, ctx.visible_idx, cells, ctx.num_prefix)  # (B, n, Ddec)
        logits = F.linear(F.normalize(pred.float(), dim=-1), F.normalize(self.prototypes.float(), dim=-1))  # (B, n, K)
        target = gather_tokens(a, cells)  # (B, n, K)
        prediction_loss = soft_cross_entropy(target, logits / self.cfg.tau_student)
        with torch.no_grad():
            flat = a.flatten(0, 1)  # (B*L, K)
            entropy = -(flat * flat.clamp_min(1e-12).log()).sum(-1).mean()
            used = torch.zeros(flat.shape[1], device=flat.device).index_fill_(0, flat.argmax(-1), 1.0).sum()
            agree = (logits.argmax(-1) == target.argmax(-1)).float().mean()
        return {
            "cluster/loss": prediction_loss + clustering_loss,
            "cluster/pred": prediction_loss.detach(),
            "cluster/clustering": clustering_loss.detach(),
            "cluster/entropy": entropy,
            "cluster/prototypes_used": used,
            "cluster/agreement": agree,
        }
