"""Frozen features of a timm ViT: pooled image vectors and per-image patch tokens.

One forward pass per batch gives the tokens before the final norm; the tokens after it
are ``vit.norm`` of those, so any mix of poolings (CLS / mean / top-k mean, before or
after the norm) costs a single pass over the data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..attention import forward_only
from ..data import collate
from ..encoder import ContextEncoder
from ..precision import resolve_precision
from ..objectives.losses import mean_pairwise_cosine

PoolKind = Literal["cls", "mean", "topk_mean"]
POOL_KINDS: tuple[str, ...] = ("cls", "mean", "topk_mean")


@dataclass(frozen=True)
class Pooling:
    """How one image vector is read from the encoder's tokens."""

    kind: PoolKind = "mean"
    norm: bool = False  # True: after the encoder's final norm
    k: int = 10  # topk_mean only

    def __post_init__(self) -> None:
        if self.kind not in POOL_KINDS:
            raise ValueError(f"pooling: {self.kind!r} is not one of {list(POOL_KINDS)}")
        if self.k < 1:
            raise ValueError(f"pooling: k={self.k} must be >= 1")

    @property
    def name(self) -> str:
        kind = f"top{self.k}_mean" if self.kind == "topk_mean" else self.kind
        return f"{kind}/{'post' if self.norm else 'pre'}norm"

    @classmethod
    def parse(cls, text: str, k: int = 10) -> Pooling:
        """``"mean"``, ``"cls:post"``, ``"topk_mean:pre"`` (default: before the norm)."""
        kind, _, where = text.partition(":")
        if where not in ("", "pre", "post"):
            raise ValueError(f"pooling {text!r}: the part after ':' must be 'pre' or 'post' (the final norm)")
        return cls(kind=kind, norm=where == "post", k=k)  # type: ignore[arg-type]


NN_POOLING = Pooling("mean", norm=False)  # the Latent MIM paper's NN features


def topk_mean(tokens: Tensor, k: int) -> Tensor:
    """Mean of the k largest values of each channel over the tokens: (B, L, D) -> (B, D)."""
    k = min(k, tokens.shape[1])
    return tokens.topk(k, dim=1).values.mean(dim=1)


def pool(tokens: Tensor, num_prefix: int, kind: PoolKind, k: int = 10) -> Tensor:
    """tokens: (B, prefix + L, D), CLS first -> (B, D). ``mean``/``topk_mean`` skip the prefix."""
    if kind == "cls":
        return tokens[:, 0]
    patches = tokens[:, num_prefix:]  # (B, L, D)
    if kind == "mean":
        return patches.mean(dim=1)
    if kind == "topk_mean":
        return topk_mean(patches, k)
    raise ValueError(f"pooling: {kind!r} is not one of {list(POOL_KINDS)}")


def native_size(vit: VisionTransformer) -> int:
    """The side of the images the encoder's grid was built for (``patch_embed.img_size``)."""
    h, w = vit.patch_embed.img_size
    if h != w:
        raise ValueError(f"the encoder's image size {h}x{w} is not square")
    return h


def grid_size(vit: VisionTransformer) -> int:
    return native_size(vit) // vit.patch_embed.patch_size[0]


def _check_images(vit: VisionTransformer, images: Tensor) -> None:
    size = native_size(vit)
    if images.ndim != 4 or images.shape[-2:] != (size, size):
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not fit the encoder: expected (B, C, {size}, {size}); "
            f"build the dataset with eval_transform({size}, ...)"
        )


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where training's ``auto`` rule would pick it (``mimkit.precision``)."""
    if amp and resolve_precision("auto", device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_tokens(vit: VisionTransformer, images: Tensor, norm: bool = False, amp: bool = True) -> Tensor:
    """All tokens of full images on the native grid: (B, C, S, S) -> (B, prefix + L, D) float32."""
    _check_images(vit, images)
    with _autocast(images.device, amp):
        return ContextEncoder(vit).forward_image(images, norm=norm).float()


@torch.no_grad()
def patch_tokens(vit: VisionTransformer, images: Tensor, norm: bool = False, amp: bool = True) -> Tensor:
    """Per-image patch tokens, prefix (CLS, registers) dropped: (B, C, S, S) -> (B, L, D)."""
    return encode_tokens(vit, images, norm=norm, amp=amp)[:, vit.num_prefix_tokens:]


@dataclass
class Features:
    """Pooled features of one split (rows aligned with ``labels``)."""

    pooled: dict[Pooling, Tensor]  # each (N, D)
    labels: Tensor  # (N,)
    patch_sim: dict[bool, Tensor] = field(default_factory=dict)  # norm -> (N,) within-image patch similarity
    skipped: int = 0  # undecodable images (left out, or replaced by the dataset)

    def __getitem__(self, pooling: Pooling) -> Tensor:
        if pooling not in self.pooled:
            raise KeyError(f"features for {pooling.name} were not extracted; have {[p.name for p in self.pooled]}")
        return self.pooled[pooling]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Features:
        return Features(
            {p: x.to(device) for p, x in self.pooled.items()},
            self.labels.to(device),
            {n: x.to(device) for n, x in self.patch_sim.items()},
            self.skipped,
        )


def _collate_with_mask(batch: list[tuple | None]) -> dict[str, Tensor]:
    """``mimkit.data.collate`` plus ``ok``: (B,) which batch positions held a decodable image."""
    out = collate(batch)
    out["ok"] = torch.tensor([s is not None for s in batch], dtype=torch.bool)
    return out


def make_loader(dataset: Dataset, batch_size: int = 256, num_workers: int = 0) -> DataLoader:
    """A sequential loader whose batches carry ``images``, ``labels``, ``skipped`` and ``ok``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_with_mask,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def shard_loader(loader: DataLoader, accelerator: Accelerator) -> DataLoader:
    """This process's shard of ``loader``, for ``gather_for_metrics``.

    Not registered with the accelerator (unlike ``accelerator.prepare``), so evaluating during
    training leaves the state that ``save_state``/``load_state`` checkpoint unchanged.
    """
    return prepare_data_loader(
        loader,
        accelerator.device,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        put_on_device=False,
    )


def pick_device(vit: VisionTransformer, accelerator: Accelerator | None = None) -> torch.device:
    """The accelerator's device, else the model's own unless that is the CPU and a GPU exists."""
    if accelerator is not None:
        return accelerator.device
    own = next(vit.parameters()).device
    if own.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return own


@contextlib.contextmanager
def frozen_on(vit: VisionTransformer, device: torch.device) -> Iterator[VisionTransformer]:
    """The model in eval mode on ``device``; its mode and device are restored afterwards."""
    was_training = vit.training
    own = next(vit.parameters()).device
    vit.eval().to(device)
    try:
        yield vit
    finally:
        vit.train(was_training).to(own)


def _padded(rows: Tensor, ok: Tensor) -> Tensor:
    """Scatter the decodable rows back to their batch positions: (G, ...) -> (B, ...)."""
    out = rows.new_zeros((ok.shape[0], *rows.shape[1:]))
    out[ok.to(rows.device)] = rows
    return out


@torch.no_grad()
def extract_features(
    vit: VisionTransformer,
    dataset: Dataset,
    poolings: Sequence[Pooling] | Pooling = NN_POOLING,
    batch_size: int = 256,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
    patch_similarity: bool = False,
    amp: bool = True,
) -> Features:
    """Pooled features of every decodable image of ``dataset`` (samples as ``ImageDataset``
    gives them: ``(image, label, ...)``, or None for an undecodable image).

    With an ``accelerator``, each process encodes its shard and every process receives all
    rows through ``gather_for_metrics`` (in dataset order, duplicates of the last batch
    dropped). ``patch_similarity`` also records, per image, the mean cosine similarity
    between its patch tokens (before/after the norm as the poolings ask).
    """
    poolings = [poolings] if isinstance(poolings, Pooling) else list(dict.fromkeys(poolings))
    if not poolings:
        raise ValueError("poolings: give at least one Pooling")
    device = pick_device(vit, accelerator)
    loader = make_loader(dataset, batch_size, num_workers)
    if accelerator is not None:
        loader = shard_loader(loader, accelerator)
    norms = sorted({p.norm for p in poolings})
    pooled: dict[Pooling, list[Tensor]] = {p: [] for p in poolings}
    sims: dict[bool, list[Tensor]] = {n: [] for n in norms}
    labels: list[Tensor] = []
    holes, passed_over = 0, 0  # undecodable rows left out; images a dataset replaced by others
    with frozen_on(vit, device), forward_only(vit):
        prefix = vit.num_prefix_tokens
        for batch in loader:
            ok = batch["ok"]  # (B,)
            good = int(ok.sum())
            passed_over += int(batch["skipped"]) - (ok.numel() - good)
            per_batch: dict[str, Tensor] = {"labels": _padded(batch["labels"].to(device), ok), "ok": ok.to(device)}
            if good:
                pre = encode_tokens(vit, batch["images"].to(device, non_blocking=True), norm=False, amp=amp)
                tokens = {False: pre}
                if True in norms:
                    tokens[True] = vit.norm(pre)
            for i, p in enumerate(poolings):
                x = pool(tokens[p.norm], prefix, p.kind, p.k) if good else torch.zeros(0, vit.embed_dim, device=device)
                per_batch[f"pool{i}"] = _padded(x, ok)
            if patch_similarity:
                for n in norms:
                    s = mean_pairwise_cosine(tokens[n][:, prefix:]) if good else torch.zeros(0, device=device)
                    per_batch[f"sim{int(n)}"] = _padded(s, ok)
            if accelerator is not None:
                per_batch = accelerator.gather_for_metrics(per_batch)
            keep = per_batch["ok"]
            holes += int((~keep).sum())
            labels.append(per_batch["labels"][keep])
            for i, p in enumerate(poolings):
                pooled[p].append(per_batch[f"pool{i}"][keep])
            if patch_similarity:
                for n in norms:
                    sims[n].append(per_batch[f"sim{int(n)}"][keep])
    if accelerator is not None:
        passed_over = int(accelerator.reduce(torch.tensor(passed_over, device=device), reduction="sum"))
    return Features(
        pooled={p: _cat(xs, vit.embed_dim, device) for p, xs in pooled.items()},
        labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device),
        patch_sim={n: torch.cat(xs) for n, xs in sims.items()} if patch_similarity else {},
        skipped=holes + passed_over,
    )


def _cat(xs: list[Tensor], dim: int, device: torch.device) -> Tensor:
    return torch.cat(xs) if xs else torch.zeros(0, dim, device=device)
