"""Linear probing on frozen, precomputed features (the MAE recipe).

The probe is BatchNorm1d without affine parameters followed by a Linear layer, trained
with LARS (or SGD) under a warm-up + cosine learning rate on mini-batches of feature rows.

The best learning rate of a linear probe depends on the features (their width, how
separable they are) and on how many steps the data allows, so by default several heads
with different learning rates are trained side by side on the same batches (one pass,
as DINOv2 does); the one with the best top-1 on a held-out tenth of the training rows is
scored on the test rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedules import learning_rate, scaled_lr
from .scoring import top1


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose update of each weight matrix is rescaled by the trust ratio
    ``eta * ||w|| / ||g + wd * w||`` (You et al., 2017). 1-D parameters (biases, norms)
    get neither weight decay nor the trust ratio.
    """

    def __init__(
        self, params: Iterable[Tensor], lr: float = 0.1, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(f"LARS: bad hyper-parameters lr={lr} weight_decay={weight_decay} momentum={momentum} eta={eta}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    one = torch.ones_like(w_norm)
                    trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, one)
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


class ProbeHeads(nn.Module):
    """A shared BatchNorm1d (no affine) feeding K independent Linear heads: (B, D) -> (K, B, C)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_heads))
        for h in self.heads:
            nn.init.trunc_normal_(h.weight, std=0.01)
            nn.init.zeros_(h.bias)

    def forward(self, x: Tensor) -> Tensor:
        z = self.norm(x)  # (B, D)
        return torch.stack([h(z) for h in self.heads])  # (K, B, C)


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, run the many tiny steps of a probe on one thread: splitting a (256, D) batch
    norm across threads gains nothing, and on a busy machine every step then waits for the
    slowest thread (100x slower under load). The thread count is restored afterwards."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Mini-batches of one pass over n rows; a last batch of a single row is dropped (BatchNorm)."""
    batch = min(batch_size, n)
    return n // batch + (1 if n % batch >= 2 else 0)


def make_optimizer(
    groups: list[dict], kind: Literal["lars", "sgd"], weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """One param group per head, each with its own ``lr``."""
    if kind == "lars":
        return LARS(groups, weight_decay=weight_decay, momentum=momentum)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"optimizer: {kind!r} is not 'lars' or 'sgd'")


def fit_linear(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    steps: int,
    lrs: Sequence[float] = (0.1,),
    batch_size: int = 256,
    optimizer: Literal["lars", "sgd"] = "lars",
    warmup_steps: int = 0,
    schedule: Literal["cosine", "constant"] = "cosine",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
) -> ProbeHeads:
    """Train one head per learning rate for ``steps`` steps on features (N, D), labels (N,).

    Every pass over the rows is a fresh seeded permutation cut into mini-batches; all heads
    see the same batches.
    """
    n, dim = features.shape
    if n < 2:
        raise ValueError(f"linear classifier: {n} training rows; need at least 2")
    if steps < 1 or not lrs:
        raise ValueError(f"linear classifier: steps={steps} must be >= 1 and lrs non-empty")
    device = features.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = ProbeHeads(dim, num_classes, len(lrs)).to(device)
    opt = make_optimizer(
        [{"params": h.parameters(), "lr": lr, "peak": lr} for h, lr in zip(probe.heads, lrs)], optimizer, weight_decay, momentum
    )
    batch = min(batch_size, n)
    labels = labels.to(device)
    probe.train()
    with one_cpu_thread(device):
        _train_steps(probe, opt, features, labels, steps, batch, warmup_steps, schedule, gen)
    return probe.eval()


def _train_steps(
    probe: ProbeHeads,
    opt: torch.optim.Optimizer,
    features: Tensor,
    labels: Tensor,
    steps: int,
    batch: int,
    warmup_steps: int,
    schedule: Literal["cosine", "constant"],
    gen: torch.Generator,
) -> None:
    n, device = features.shape[0], features.device
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            if idx.numel() < 2 or step >= steps:
                continue
            for g in opt.param_groups:
                g["lr"] = learning_rate(step, steps, warmup_steps, g["peak"]) if schedule == "cosine" else g["peak"]
            logits = probe(features[idx].float())  # (K, b, C)
            target = labels[idx].expand(logits.shape[0], -1)  # (K, b)
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum") / idx.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1


@torch.no_grad()
def predict(probe: ProbeHeads, features: Tensor, batch_size: int = 8192) -> Tensor:
    """Class predictions (K, N) of every head on features (N, D)."""
    probe.eval()
    chunks = [probe(features[i:i + batch_size].float()).argmax(dim=-1) for i in range(0, features.shape[0], batch_size)]
    return torch.cat(chunks, dim=1)


def num_classes_of(*labels: Tensor) -> int:
    for y in labels:
        if y.numel() and int(y.min()) < 0:
            raise ValueError("the dataset has no labels (label -1); set the label column")
    return int(max(int(y.max()) for y in labels if y.numel())) + 1


def holdout_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (fit rows, held-out rows) indices of n rows; at least one held out, two kept."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = min(max(1, round(n * fraction)), n - 2)
    return perm[held:], perm[:held]


@dataclass
class LinearProbeConfig:
    epochs: int = 90
    batch_size: int = 256
    optimizer: Literal["lars", "sgd"] = "lars"
    base_lrs: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0)  # lr = base_lr * batch_size / 256; several: pick on held-out rows
    val_fraction: float = 0.1  # of the train rows, held out to pick the lr (only with several)
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("lars", "sgd"):
            raise ValueError(f"linear probe optimizer: {self.optimizer!r} is not 'lars' or 'sgd'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"linear probe: epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")
        if not self.base_lrs or any(lr <= 0 for lr in self.base_lrs):
            raise ValueError(f"linear probe: base_lrs {list(self.base_lrs)} must be positive, at least one")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"linear probe: val_fraction {self.val_fraction} must be in (0, 1)")


@dataclass
class LinearProbeResult:
    top1: float  # percent, on the test rows
    base_lr: float  # the learning rate picked
    val_top1: dict[float, float] = field(default_factory=dict)  # base lr -> held-out top-1 (when several)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    cfg: LinearProbeConfig | None = None,
) -> LinearProbeResult:
    """Top-1 on the test rows of a probe trained on the train rows (lr picked on held-out train rows)."""
    cfg = cfg or LinearProbeConfig()
    num_classes = num_classes_of(train_labels, test_labels)
    device = train_features.device
    train_labels = train_labels.to(device)
    fit_rows = torch.arange(train_features.shape[0], device=device)
    val_rows = None
    if len(cfg.base_lrs) > 1:
        fit_idx, val_idx = holdout_split(train_features.shape[0], cfg.val_fraction, cfg.seed)
        fit_rows, val_rows = fit_idx.to(device), val_idx.to(device)
    per_epoch = batches_per_epoch(fit_rows.numel(), cfg.batch_size)
    steps = cfg.epochs * per_epoch
    probe = fit_linear(
        train_features[fit_rows],
        train_labels[fit_rows],
        num_classes,
        steps=steps,
        lrs=[scaled_lr(b, cfg.batch_size) for b in cfg.base_lrs],
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        warmup_steps=min(round(cfg.warmup_epochs * per_epoch), steps // 2),
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        seed=cfg.seed,
    )
    best, val_top1 = 0, {}
    if val_rows is not None:
        val_pred = predict(probe, train_features[val_rows])  # (K, V)
        val_top1 = {b: top1(p, train_labels[val_rows]) for b, p in zip(cfg.base_lrs, val_pred)}
        best = max(range(len(cfg.base_lrs)), key=lambda i: val_top1[cfg.base_lrs[i]])
    pred = predict(probe, test_features.to(device))[best]  # (N,)
    return LinearProbeResult(top1(pred, test_labels.to(device)), cfg.base_lrs[best], val_top1)
