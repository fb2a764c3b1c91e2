"""fit(cfg, accelerator): the pretraining loop.

Accelerate owns devices, precision, gradient accumulation, distributed sampling and
checkpoint state; this module owns the schedule (lr, EMA momentum, similarity gamma, all
pure functions of the optimizer step), logging, checkpoints and the final export.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig
from .data import ImageDataset, Splits, collate, eval_transform, load_splits, train_transform
from .model import MIMModel, build_model
from .schedules import learning_rate, scaled_lr

log = logging.getLogger("mimkit")

# Parameters without weight decay: every bias and norm weight (1-D) and these tokens/embeddings.
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token", "cls_query")


def make_accelerator(cfg: RunConfig, output_dir: str | Path) -> Accelerator:
    """An Accelerator for ``cfg.train``; trackers that are not installed are left out with a warning."""
    trackers = [t for t in cfg.train.trackers if t != "none" and _tracker_available(t)]
    mixed = cfg.train.mixed_precision
    if mixed == "fp16" and not torch.cuda.is_available():
        log.warning("train.mixed_precision=fp16 needs a GPU; running in fp32 on the CPU")
        mixed = "no"
    return Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed),
        step_scheduler_with_optimizer=False,
    )


def _tracker_available(name: str) -> bool:
    module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}[name]
    try:
        __import__(module)
        return True
    except ImportError:
        log.warning("train.trackers: %s is not installed (pip install mimkit[%s]); logging to log.jsonl only", name, name)
        return False


@dataclass(frozen=True)
class Plan:
    """Batch arithmetic and schedule lengths of a run, derived once."""

    micro_batch: int  # images per process per forward
    steps_per_epoch: int  # optimizer steps per epoch
    total_steps: int
    warmup_steps: int
    peak_lr: float


def make_plan(cfg: RunConfig, num_processes: int, dataset_len: int) -> Plan:
    tr = cfg.train
    per_step = num_processes * tr.grad_accum
    if tr.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size: {tr.batch_size} is not divisible by processes x train.grad_accum = "
            f"{num_processes} x {tr.grad_accum}"
        )
    micro = tr.batch_size // per_step
    batches = dataset_len // (micro * num_processes)  # per process, drop_last
    if batches < tr.grad_accum:
        raise ConfigError(
            f"train.batch_size: {tr.batch_size} is larger than the training split ({dataset_len} images); "
            "lower train.batch_size or use more data"
        )
    steps_per_epoch = math.ceil(batches / tr.grad_accum)
    total = tr.epochs * steps_per_epoch
    if tr.max_steps is not None:
        total = min(total, tr.max_steps)
    warmup = min(int(round(tr.warmup_epochs * steps_per_epoch)), total)
    return Plan(micro, steps_per_epoch, total, warmup, scaled_lr(tr.base_lr, tr.batch_size))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices, none on norms, biases, positions and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(k in name.split(".")[-1] for k in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class StatAccumulator:
    """Sums detached step statistics on the device; read (one host sync) every log interval."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, out: dict[str, torch.Tensor]) -> None:
        for k, v in out.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def read(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.count:
            return {}
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys]) / self.count
        values = accelerator.reduce(stacked, reduction="mean").tolist()
        self.sums, self.count = {}, 0
        return dict(zip(keys, values))


class JsonlLog:
    """``OUTPUT/log.jsonl``: one JSON object per logged step (main process only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _find_resume(resume: str | bool | None, output_dir: Path) -> Path | None:
    if resume in (None, False):
        return None
    if resume is True or resume == "latest":
        found = ckpt.latest_checkpoint(output_dir)
        if found is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", ckpt.checkpoint_root(output_dir))
        return found
    path = Path(str(resume))
    if not path.is_dir():
        raise ckpt.CheckpointError(f"--resume: {path} is not a checkpoint directory")
    return path


def _eval_dataset(cfg: RunConfig, splits: Splits, model: MIMModel) -> ImageDataset | None:
    if splits.eval is None or splits.label_column is None:
        return None
    return splits.dataset(splits.eval, eval_transform(model.geometry.native_size, cfg.data))


def _nn_eval(model: MIMModel, dataset: ImageDataset | None, accelerator: Accelerator, batch: int) -> float | None:
    """Leave-one-out 1-NN accuracy (the Latent MIM protocol) of the context encoder."""
    if dataset is None:
        return None
    from .eval import nn_accuracy

    was_training = model.training
    model.eval()
    try:
        return nn_accuracy(model.encoder.vit, dataset, batch_size=batch, accelerator=accelerator)
    finally:
        model.train(was_training)


def fit(cfg: RunConfig, accelerator: Accelerator, output_dir: str | Path, resume: str | bool | None = None) -> dict[str, Any]:
    """Pretrain ``cfg`` to the end of its schedule; returns the final summary (also in OUTPUT/summary.json)."""
    out = Path(output_dir)
    main = accelerator.is_main_process
    set_seed(cfg.train.seed)
    splits = load_splits(cfg.data)  # fails before any training on a bad source, split or column
    model = build_model(cfg)
    train_set = splits.dataset(splits.train, train_transform(model.input_size, cfg.data), seed=cfg.train.seed, on_error="substitute")
    plan = make_plan(cfg, accelerator.num_processes, len(train_set))
    eval_set = _eval_dataset(cfg, splits, model)

    loader = DataLoader(
        train_set,
        batch_size=plan.micro_batch,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.train.seed),  # keeps the global RNG (masks) untouched
    )
    tr = cfg.train
    optimizer = torch.optim.AdamW(
        param_groups(model, tr.weight_decay), lr=plan.peak_lr, betas=tuple(tr.betas), fused=torch.cuda.is_available() or None
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    core: MIMModel = accelerator.unwrap_model(model)

    state = ckpt.TrainerState(step=0, epoch=0, batch_in_epoch=0)
    start = _find_resume(resume, out)
    if start is not None:
        state = ckpt.read_state(start)
        try:
            accelerator.load_state(str(start))
        except Exception as e:
            raise ckpt.CheckpointError(f"--resume: cannot load checkpoint {start}: {e}") from e
        log.info("resumed from %s at step %d", start, state.step)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
    if accelerator.trackers:
        accelerator.init_trackers("mimkit", config=_flat(cfg.to_dict()))
    jsonl = JsonlLog(out / "log.jsonl", main)
    stats = StatAccumulator()
    skipped = torch.zeros((), device=accelerator.device)
    nn_history: list[dict[str, float]] = []

    def fold_skipped() -> None:
        """Move this interval's count of undecodable images (all processes) into the state."""
        state.skipped_images += int(accelerator.reduce(skipped, reduction="sum").item())
        skipped.zero_()

    def save() -> Path:
        fold_skipped()
        staging = ckpt.staging_dir(out, state.step)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        final = ckpt.publish(staging, state, tr.keep_last) if main else staging.parent / f"step_{state.step:08d}"
        accelerator.wait_for_everyone()
        return final

    progress_bar = _progress(plan.total_steps, state.step, main)
    t_last, images_since = time.perf_counter(), 0
    world_micro = plan.micro_batch * accelerator.num_processes
    model.train()
    while state.step < plan.total_steps:
        train_set.set_epoch(state.epoch)
        loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in batches:
            state.batch_in_epoch += 1
            images = batch["images"]
            skipped += batch["skipped"].to(skipped.device)
            with accelerator.accumulate(model):
                lr = learning_rate(state.step, plan.total_steps, plan.warmup_steps, plan.peak_lr, tr.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                progress = state.step / plan.total_steps
                result = model(images, progress=progress, batch_slice=(accelerator.process_index * plan.micro_batch, world_micro))
                accelerator.backward(result["loss"])
                if accelerator.sync_gradients and tr.clip_grad is not None:
                    accelerator.clip_grad_norm_(model.parameters(), tr.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            stats.add(result)
            images_since += images.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            momentum = core.momentum(progress)
            core.update_target(momentum)
            state.step += 1
            progress_bar.update(1)

            if state.step % tr.log_every == 0 or state.step == plan.total_steps:
                now = time.perf_counter()
                record = {"step": state.step, "epoch": state.epoch, **stats.read(accelerator), "lr": lr, "momentum": momentum}
                record["images_per_s"] = images_since / max(now - t_last, 1e-9)
                fold_skipped()
                record["skipped_images"] = state.skipped_images
                t_last, images_since = now, 0
                _check_finite(record, state.step)
                jsonl.write(record)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
                progress_bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
            if state.step % tr.save_every == 0 and state.step < plan.total_steps:
                save()
            if state.step >= plan.total_steps:
                break
        else:  # epoch finished
            state.epoch += 1
            state.batch_in_epoch = 0
            if tr.eval_every_epochs and state.epoch % tr.eval_every_epochs == 0:
                acc = _nn_eval(core, eval_set, accelerator, plan.micro_batch)
                if acc is not None:
                    nn_history.append({"step": state.step, "epoch": state.epoch, "nn": acc})
                    jsonl.write({"step": state.step, "epoch": state.epoch, "eval/nn": acc})
                    accelerator.log({"eval/nn": acc}, step=state.step)
    progress_bar.close()

    final_ckpt = save()
    nn = _nn_eval(core, eval_set, accelerator, plan.micro_batch)
    summary = {
        "preset": cfg.preset,
        "steps": state.step,
        "epochs_completed": state.epoch,
        "images_seen": state.step * tr.batch_size,
        "final_loss": _last_loss(out / "log.jsonl") if main else None,
        "nn": nn,
        "nn_history": nn_history,
        "skipped_images": state.skipped_images,
        "checkpoint": str(final_ckpt),
        "encoder": str(out / "encoder"),
    }
    if main:
        from .hub import save_pretrained

        save_pretrained(core.encoder.vit, out / "encoder", name=cfg.model.name)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _check_finite(record: dict[str, Any], step: int) -> None:
    bad = [k for k, v in record.items() if k.endswith("loss") and isinstance(v, float) and not math.isfinite(v)]
    if bad:
        heads = [k.split("/")[0] for k in bad if "/" in k] or ["total"]
        raise FloatingPointError(f"non-finite loss by step {step} in head(s) {', '.join(heads)}: " + ", ".join(f"{k}={record[k]}" for k in bad))


def _last_loss(path: Path) -> float | None:
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            last = rec["loss"]
    return last


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat {"a.b": scalar} for trackers' hyper-parameter tables."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, disable=not enabled, desc="pretrain", unit="step", dynamic_ncols=True)
