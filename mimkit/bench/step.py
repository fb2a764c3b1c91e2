"""One training step exactly as the trainer takes it (autocast, backward, clipping, AdamW, EMA), and the images that feed it."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..attention import apply_attention, set_attention
from ..config import ConfigError, RunConfig
from ..precision import resolve_precision

PROGRESS = 0.0
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
_CONFIG_PRECISION = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}

# --------------------------------------------------------------------------- the training step


@dataclass
class StepRunner:
    """One trainer step on ``model`` (compiled or not, as it was built)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    dtype: torch.dtype | None
    momentum: float
    clip_grad: float | None = None
    attention: str = "fused"  # the kernel: "fused", "manual" or "math" (SDPA's math backend)
    sync_every_step: bool = False

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def loss(self, images: Tensor) -> Tensor:
        with self.autocast(), sdpa_kernel(SDPBackend.MATH) if self.attention == "math" else nullcontext():
            out = self.model(images, PROGRESS)
        return out["loss"]

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimize(self) -> None:
        if self.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def ema(self) -> None:
        self.model.update_target(self.momentum)

    def step(self, images: Tensor) -> None:
        loss = self.loss(images)
        self.backward(loss)
        self.optimize()
        self.ema()
        if self.sync_every_step:
            loss.item()


def make_runner(cfg: RunConfig, args: argparse.Namespace, batch: int, compile_mode: str) -> StepRunner:
    import mimkit
    from ..schedules import scaled_lr
    from ..trainer import make_optimizer

    device = torch.device(args.device)
    torch.manual_seed(cfg.train.seed)
    model = mimkit.build_model(cfg).to(device).train()
    if compile_mode != "none":
        model.compile_step(compile_mode)
    precision = args.precision or default_precision(cfg, device.type)
    dtype = PRECISIONS[precision]
    if args.attn == "math":  # SDPA, sent to its math backend in loss()
        attention = "math"
        set_attention(model, "fused")
    else:
        attention = apply_attention(model, cfg.train.attention if args.attn == "auto" else args.attn, precision, device.type)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    optimizer = make_optimizer(model, cfg, scaled_lr(cfg.train.base_lr, batch), adamw_impl(args))
    return StepRunner(
        model, optimizer, scaler, device, dtype, model.momentum(PROGRESS), cfg.train.clip_grad,
        attention=attention, sync_every_step=args.sync_every_step,
    )


def adamw_impl(args: argparse.Namespace) -> str:
    from ..trainer import default_adamw_impl

    return args.adamw or default_adamw_impl(args.device)


# --------------------------------------------------------------------------- images


def synthetic_images(batch: int, size: int, device: torch.device) -> Iterator[Tensor]:
    images = torch.randn(batch, 3, size, size, device=device)
    while True:
        yield images


def loader_images(cfg: RunConfig, batch: int, size: int, device: torch.device) -> Iterator[Tensor]:
    """Endless batches of augmented real images, moved to ``device`` as the trainer's are."""
    from torch.utils.data import DataLoader

    from ..augment import finish_batch
    from ..data import collate, load_splits, train_transform

    splits = load_splits(cfg.data)
    dataset = splits.dataset(splits.train, train_transform(size, cfg.data), seed=cfg.train.seed, on_error="substitute",
                             cache=cfg.data.cache)
    if len(dataset) < batch:
        raise ConfigError(f"--batch: {batch} is larger than the training split of {cfg.data.source!r} ({len(dataset)} images)")
    workers = cfg.data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    while True:
        for b in loader:
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
            yield finish_batch(b, size, cfg.data.mean, cfg.data.std)


def default_precision(cfg: RunConfig, device_type: str) -> str:
    """train.mixed_precision resolved for the device as training resolves it (``auto`` included)."""
    return _CONFIG_PRECISION[resolve_precision(cfg.train.mixed_precision, device_type)]
