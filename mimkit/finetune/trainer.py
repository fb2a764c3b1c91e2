"""The fine-tuning loop: accelerate, per-step warm-up + cosine lr scaled per layer, mixup / cutmix,
checkpoints that resume exactly, and ``finetune.json`` with the evaluation split's top-1 / top-5."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from PIL import Image
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import Tensor
from torch.utils.data import DataLoader

from .. import checkpoint as ckpt
from ..attention import apply_attention
from ..config import ConfigError
from ..data import collate, eval_transform, export_data_config, load_splits
from ..hub import save_pretrained
from ..precision import default_device_type, resolve_precision
from ..schedules import learning_rate, scaled_lr
from ..trainer import ADAMW_IMPLS, JsonlLog, default_adamw_impl, resolve_trackers, tracker_config
from .config import FinetuneConfig
from .model import build_classifier

log = logging.getLogger("mimkit")


def make_accelerator(cfg: FinetuneConfig, out: Path) -> Accelerator:
    mixed = resolve_precision(cfg.train.mixed_precision, default_device_type())
    return Accelerator(mixed_precision=mixed, log_with=resolve_trackers(cfg.train.trackers) or None,
                       project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))


def posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, except that keeping 0 bits gives a black image: RandAugment's increasing
    posterize keeps 4 down to 0 bits, and recent Pillow refuses 0 (an old Pillow gave black)."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def with_zero_bit_posterize(transform: Any) -> Any:
    """``transform`` (timm's Compose) with every RandAugment posterize op calling ``posterize``."""
    for stage in getattr(transform, "transforms", ()):
        for op in getattr(stage, "ops", ()):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize
    return transform


def seeded(transform: Callable[[Any], Tensor]) -> Callable[[Any], Tensor]:
    """timm's training transform draws from Python's ``random``: seed it from torch's generator,
    which the dataset seeds per (epoch, index), so augmentations do not depend on workers or resume."""

    def apply(img: Any) -> Tensor:
        random.seed(int(torch.randint(0, 2**62, (1,)).item()))
        return transform(img)

    return apply


def train_transform(size: int, cfg: FinetuneConfig) -> Callable[[Image.Image], Tensor]:
    """MAE's fine-tuning augmentation, built by timm: random resized crop, flip, RandAugment, random erasing."""
    a = cfg.aug
    return with_zero_bit_posterize(create_transform(
        size, is_training=True, scale=tuple(a.scale), auto_augment=a.auto_augment, re_prob=a.reprob, re_mode="pixel",
        interpolation="bicubic", mean=tuple(cfg.data.mean), std=tuple(cfg.data.std)))


def num_classes_of(splits: Any) -> int:
    if splits.label_column is None:
        raise ConfigError(f"data.source: {splits.data[splits.train]} has no label column to fine-tune on (data.label_column)")
    feature = splits.data[splits.train].features[splits.label_column]
    names = getattr(feature, "names", None)
    return len(names) if names else int(max(splits.data[splits.train][splits.label_column])) + 1


def layer_decay_optimizer(model: torch.nn.Module, cfg: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over timm's layer-decay groups: each group's ``lr_scale`` multiplies the scheduled lr;
    1-D parameters and position / class tokens are not decayed."""
    o = cfg.optim
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=o.weight_decay, layer_decay=o.layer_decay,
                               betas=tuple(o.betas), **ADAMW_IMPLS[default_adamw_impl(default_device_type())])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


@torch.no_grad()
def top_k(model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, ks: tuple[int, ...]) -> dict[str, float]:
    """Top-k accuracies (%) over every image of ``loader`` (each counted once across processes)."""
    model.eval()
    hits = []
    for batch in loader:
        with accelerator.autocast():
            logits = model(batch["images"])
        ranked = logits.topk(max(ks), dim=1).indices  # (B, max k)
        correct = torch.stack([(ranked[:, :k] == batch["labels"][:, None]).any(dim=1) for k in ks], dim=1)  # (B, len(ks))
        hits.append(accelerator.gather_for_metrics(correct))
    model.train()
    rate = torch.cat(hits).float().mean(dim=0) if hits else torch.zeros(len(ks))
    return {f"top{k}": round(100 * float(r), 2) for k, r in zip(ks, rate)}


def finetune(cfg: FinetuneConfig, accelerator: Accelerator, out: Path, resume: bool = False) -> dict[str, Any]:
    o, a = cfg.optim, cfg.aug
    set_seed(cfg.train.seed)
    splits = load_splits(cfg.data)
    classes = num_classes_of(splits)
    model = build_classifier(cfg.checkpoint, classes, cfg.model)
    attention = apply_attention(model, cfg.train.attention, accelerator.mixed_precision, accelerator.device.type)
    size = model.patch_embed.img_size[0]
    train_tf = train_transform(size, cfg)
    train_set = splits.dataset(splits.train, seeded(train_tf), seed=cfg.train.seed, on_error="substitute")
    micro = o.batch_size // accelerator.num_processes
    if o.batch_size % accelerator.num_processes or len(train_set) < o.batch_size or (micro % 2 and (a.mixup or a.cutmix)):
        raise ConfigError(f"optim.batch_size: {o.batch_size} must divide over {accelerator.num_processes} processes and fit "
                          f"the {len(train_set)} training images (an even share per process under mixup / cutmix)")
    loader = DataLoader(train_set, batch_size=micro, shuffle=True, drop_last=True, num_workers=cfg.data.num_workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(cfg.train.seed))
    eval_loader = None
    if splits.eval is not None:
        eval_set = splits.dataset(splits.eval, eval_transform(size, cfg.data))
        eval_loader = DataLoader(eval_set, batch_size=micro, num_workers=cfg.data.num_workers, collate_fn=collate)
    peak = scaled_lr(o.base_lr, o.batch_size)
    optimizer = layer_decay_optimizer(model, cfg, peak)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    per_epoch = len(loader)
    total = o.epochs * per_epoch if o.max_steps is None else min(o.epochs * per_epoch, o.max_steps)
    warmup = min(int(round(o.warmup_epochs * per_epoch)), total)
    mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.smoothing, num_classes=classes) if a.mixup or a.cutmix else None
    criterion = SoftTargetCrossEntropy() if mixup else (LabelSmoothingCrossEntropy(a.smoothing) if a.smoothing else torch.nn.CrossEntropyLoss())

    state = ckpt.TrainerState(step=0, epoch=0, batch_in_epoch=0)
    jsonl = JsonlLog(out / "log.jsonl", accelerator.is_main_process)
    latest = ckpt.latest_checkpoint(out)
    if resume and latest is not None:
        accelerator.load_state(str(latest))
        state = ckpt.read_state(latest)
        if accelerator.is_main_process:
            jsonl.truncate_after(state.step)
        log.info("resumed from %s at step %d", latest, state.step)
    elif latest is not None:
        raise ConfigError(f"train.output_dir: {out} already holds a fine-tuning run; pass --resume or choose another --output")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "finetune.yaml").write_text(_yaml(cfg))
    if accelerator.trackers:
        accelerator.init_trackers("mimkit-finetune", config=tracker_config(dataclasses.asdict(cfg)))
    log.info("fine-tuning %s: %d classes, %d steps (%d per epoch), batch %d, peak lr %.3g, layer decay %.2f",
             cfg.checkpoint, classes, total, per_epoch, o.batch_size, peak, o.layer_decay)

    model.train()
    running: list[Tensor] = []
    window_start, started = time.perf_counter(), time.perf_counter()
    while state.step < total:
        train_set.set_epoch(state.epoch)
        loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in batches:
            lr = learning_rate(state.step, total, warmup, peak, minimum=o.min_lr)
            set_lr(optimizer, lr)
            images, labels = batch["images"], batch["labels"]
            targets = labels
            if mixup is not None:
                images, targets = mixup(images, labels)
            with accelerator.autocast():
                loss = criterion(model(images), targets)
            accelerator.backward(loss)
            if o.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), o.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            running.append(loss.detach().float())
            state.step += 1
            state.batch_in_epoch += 1
            if state.step % cfg.train.log_every == 0 or state.step == total:
                mean = accelerator.reduce(torch.stack(running).mean(), "mean").item()
                now = time.perf_counter()
                rate = len(running) * o.batch_size / max(now - window_start, 1e-9)  # images/s over the window
                running, window_start = [], now
                jsonl.write({"step": state.step, "epoch": state.epoch, "loss": mean, "lr": lr, "images_per_s": rate})
                accelerator.log({"loss": mean, "lr": lr, "images_per_s": rate}, step=state.step)
            if state.step % cfg.train.save_every == 0 and state.step < total:
                ckpt.save_state(accelerator, out, state, cfg.train.keep_last)
            if state.step >= total:
                break
        else:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    ckpt.save_state(accelerator, out, state, cfg.train.keep_last)
    result: dict[str, Any] = {"checkpoint": cfg.checkpoint, "classes": classes, "steps": total, "epochs": round(total / per_epoch, 3),
                              "mixed_precision": accelerator.mixed_precision, "attention": attention,
                              "train_seconds": round(time.perf_counter() - started, 1)}  # this session's; a resumed run's is partial
    if eval_loader is not None:
        ks = (1, 5) if classes > 5 else (1,)
        result.update(top_k(model, eval_loader, accelerator, ks), eval_split=splits.eval)
    if accelerator.is_main_process:
        save_pretrained(accelerator.unwrap_model(model), out / "classifier", data_config=export_data_config(cfg.data))
        (out / "finetune.json").write_text(json.dumps(result, indent=1))
    accelerator.log({f"eval/{k}": v for k, v in result.items() if k.startswith("top")}, step=state.step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _yaml(cfg: FinetuneConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)

