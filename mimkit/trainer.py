"""fit(cfg, accelerator): the pretraining loop.

Accelerate owns devices, precision, gradient accumulation, distributed sampling and
checkpoint state; this module owns the schedule (lr, EMA momentum, similarity gamma, all
pure functions of the optimizer step), logging, checkpoints and the final export.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .attention import apply_attention
from .augment import finish_batch
from .config import ConfigError, RunConfig, TrainConfig, flatten
from .data import collate, export_data_config, load_splits, train_transform
from .eval.monitor import build_monitor
from .jsonl import read_jsonl
from .model import MIMModel, build_model
from .precision import bf16_is_emulated, default_device_type, resolve_precision
from .schedules import learning_rate, scaled_lr

log = logging.getLogger("mimkit")

# The last name part of the parameters that train.no_decay's "tokens" rule exempts.
_TOKEN_NAMES = ("pos_embed", "pos", "cls_token", "reg_token", "mask_token", "cls_query")


def make_accelerator(cfg: RunConfig, output_dir: str | Path) -> Accelerator:
    """An Accelerator for ``cfg.train``: ``auto`` takes tensorboard when it is installed; a named
    tracker that is not installed is left out with a warning."""
    trackers = resolve_trackers(cfg.train.trackers)
    requested, device_type = cfg.train.mixed_precision, default_device_type()
    mixed = resolve_precision(requested, device_type)
    if requested == "fp16" and mixed != "fp16":
        log.warning("train.mixed_precision=fp16 needs a GPU; running in fp32 on the CPU")
    if bf16_is_emulated(mixed, device_type):
        log.warning("train.mixed_precision=bf16: this CPU has no native bf16 matrix instructions, so bf16 is emulated "
                    "and runs several times slower than fp32; train.mixed_precision=auto picks fp32 here")
    log.info("precision: %s on %s (train.mixed_precision=%s)", "fp32" if mixed == "no" else f"{mixed} autocast", device_type, requested)
    return Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")),
        # non_blocking: batches come from pinned memory, so the copy to the GPU need not wait
        # for the work already queued (a blocking copy would sync the host every step).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed, non_blocking=torch.cuda.is_available()),
        step_scheduler_with_optimizer=False,
    )


def resolve_trackers(requested: list[str]) -> list[str]:
    """``train.trackers`` -> the installed trackers to log to; warns only for a named one that is missing."""
    out: list[str] = []
    for name in requested:
        if name == "auto":
            out += [t for t in ("tensorboard",) if _installed(t) and t not in out]
        elif name != "none" and name not in out:
            if _installed(name):
                out.append(name)
            else:
                log.warning("train.trackers: %s is not installed (pip install mimkit[%s]); logging to log.jsonl only", name, name)
    return out


def _installed(tracker: str) -> bool:
    module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}[tracker]
    try:
        __import__(module)
        return True
    except ImportError:
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
            "lower train.batch_size, use more data, or stack a CPU-sized scale on the preset: +micro (32-px data) or "
            "+micro64 (64-px data) for real studies, +tiny for smoke tests"
        )
    steps_per_epoch = math.ceil(batches / tr.grad_accum)
    total = tr.epochs * steps_per_epoch
    if tr.max_steps is not None:
        total = min(total, tr.max_steps)
    warmup = min(int(round(tr.warmup_epochs * steps_per_epoch)), total)
    return Plan(micro, steps_per_epoch, total, warmup, scaled_lr(tr.base_lr, tr.batch_size))


def decays(name: str, p: torch.Tensor, no_decay: list[str] | tuple[str, ...]) -> bool:
    """Whether parameter ``name`` gets weight decay under the ``train.no_decay`` rules."""
    exempt = {
        "ndim1": p.ndim <= 1,
        "tokens": name.split(".")[-1] in _TOKEN_NAMES,
        "embed": "embed" in name,
    }
    return not any(exempt[rule] for rule in no_decay)


def param_groups(
    model: torch.nn.Module, weight_decay: float, no_decay: list[str] | tuple[str, ...] = ("ndim1", "tokens"), peak_lr: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: trainable parameters with and without weight decay (``decays``), and one group,
    without weight decay, per head submodule that asks for its own peak lr (``Objective.own_lr``):
    its ``lr_scale`` (own lr / ``peak_lr``) multiplies the scheduled lr."""
    own: list[dict[str, Any]] = []
    for head in getattr(model, "heads", {}).values():
        for attr, lr in getattr(head, "own_lr", dict)().items():
            own.append({"params": [p for p in getattr(head, attr).parameters() if p.requires_grad], "weight_decay": 0.0,
                        "lr_scale": lr / peak_lr})
    claimed = {id(p) for g in own for p in g["params"]}
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in claimed:
            (decay if decays(name, p, no_decay) else exempt).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}, *own]


def lr_at(step: int, plan: Plan, tr: TrainConfig) -> float:
    """The lr of optimizer step ``step`` under ``train.lr_schedule`` / ``lr_per`` / the floors."""
    if tr.lr_per == "epoch":  # the same curve over epochs, held within each epoch
        spe = plan.steps_per_epoch
        return learning_rate(step // spe, math.ceil(plan.total_steps / spe), int(tr.warmup_epochs), plan.peak_lr,
                             tr.min_lr, tr.min_lr_ratio, tr.lr_schedule)
    return learning_rate(step, plan.total_steps, plan.warmup_steps, plan.peak_lr, tr.min_lr, tr.min_lr_ratio, tr.lr_schedule)


ADAMW_IMPLS: dict[str, dict[str, bool]] = {
    "fused": {"fused": True},  # one multi-tensor kernel for the whole update
    "foreach": {"foreach": True},  # a few multi-tensor kernels per op
    "loop": {"foreach": False},  # a chain of kernels per parameter
    "default": {},  # torch's choice
}


def default_adamw_impl(device_type: str) -> str:
    """The kernels a training run uses: fused on CUDA and on CPUs, torch's choice elsewhere.

    On a CPU torch's own choice is the per-parameter loop: for the micro model's 138 tensors that
    is a few hundred small kernels, each wrapping a Python scalar, a fixed cost per step that a
    batch of 32 feels most. The fused CPU kernel does the same update in one vectorised pass.
    """
    return "fused" if device_type in ("cuda", "cpu") else "default"


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, lr: float, impl: str = "default") -> torch.optim.AdamW:
    """The run's AdamW: ``param_groups``, ``train.betas``, the ``ADAMW_IMPLS[impl]`` kernels."""
    tr = cfg.train
    return torch.optim.AdamW(param_groups(model, tr.weight_decay, tr.no_decay, lr), lr=lr, betas=tuple(tr.betas), **ADAMW_IMPLS[impl])


def check_output_dir(path: Path) -> None:
    """Fail early, naming the key, when the output directory (or a folder above it) is a file."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"train.output_dir: {p} is a file, not a directory; choose another --output")
            return


def start_banner(
    cfg: RunConfig, model: MIMModel, plan: Plan, train_images: int, eval_split: str | None, eval_images: int,
    accelerator: Accelerator, output_dir: Path, attention: str = "fused",
) -> str:
    """What a run is about to do, in a few lines: preset, data, schedule, model, device, output."""
    m, g, tr = cfg.model, model.geometry, cfg.train
    precision = "fp32" if accelerator.mixed_precision == "no" else f"{accelerator.mixed_precision} autocast"
    evaluation = f"{eval_images:,} {eval_split} images for NN / k-NN" if eval_split else "no evaluation split"
    return "\n".join([
        f"preset {cfg.preset or '(config file)'}; heads {', '.join(model.heads)}",
        f"  data    {cfg.data.source}: {train_images:,} train images; {evaluation}",
        f"  steps   {plan.total_steps:,} = {plan.total_steps / plan.steps_per_epoch:g} epochs x {plan.steps_per_epoch:,}, "
        f"batch {tr.batch_size:,}, peak lr {plan.peak_lr:.3g}",
        f"  model   {m.name}, {model.encoder.dim} wide, {model.encoder.depth} deep; {g.grid}x{g.grid} grid of {g.patch}-px "
        f"patches, {g.input_size}-px crops; {model.num_visible} of {g.num_cells} cells visible",
        f"  device  {accelerator.device.type} x {accelerator.num_processes}, {precision}, {attention} attention",
        f"  output  {output_dir}",
    ])


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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every complete record (a line cut short by a kill is ignored)."""
        return read_jsonl(self.path)

    def truncate_after(self, step: int) -> None:
        """On resume: drop what a killed run logged past the checkpoint it resumes from."""
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        if self.path.is_file():
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def last(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.records()) if key in r), None)


class CollapseError(RuntimeError):
    """The collapse monitor stayed above ``train.collapse_threshold`` with ``collapse_action: stop``."""


class Trainer:
    """One pretraining run. ``Trainer(cfg, accelerator, out).fit(resume)`` trains to the end of
    the schedule and returns the summary; the pieces are small methods so tools can reuse them."""

    def __init__(self, cfg: RunConfig, accelerator: Accelerator, output_dir: str | Path) -> None:
        self.cfg, self.accelerator, self.out = cfg, accelerator, Path(output_dir)
        check_output_dir(self.out)
        self.main = accelerator.is_main_process
        tr = cfg.train
        set_seed(tr.seed)
        splits = load_splits(cfg.data)  # fails before any training on a bad source, split or column
        model = build_model(cfg)
        self.attention = apply_attention(model, tr.attention, accelerator.mixed_precision, accelerator.device.type)
        log.info("attention: %s (train.attention=%s)", self.attention, tr.attention)
        if tr.compile != "none":
            log.info("train.compile=%s: %d compiled units", tr.compile, model.compile_step(tr.compile))
        self.train_set = splits.dataset(
            splits.train, train_transform(model.input_size, cfg.data), seed=tr.seed, on_error="substitute", cache=cfg.data.cache
        )
        self.plan = make_plan(cfg, accelerator.num_processes, len(self.train_set))
        eval_images = len(splits.data[splits.eval]) if splits.eval is not None else 0
        self.banner = start_banner(cfg, model, self.plan, len(self.train_set), splits.eval, eval_images, accelerator, self.out,
                                   self.attention)
        self.monitor = build_monitor(splits, cfg.data, model.geometry.native_size, tr.eval_knn_train, self.plan.micro_batch)
        loader = DataLoader(
            self.train_set,
            batch_size=self.plan.micro_batch,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(tr.seed),  # keeps the global RNG (masks) untouched
        )
        optimizer = make_optimizer(model, cfg, self.plan.peak_lr, default_adamw_impl(default_device_type()))
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        self.core: MIMModel = accelerator.unwrap_model(self.model)
        self.state = ckpt.TrainerState(step=0, epoch=0, batch_in_epoch=0)
        self.stats = StatAccumulator()
        self.jsonl = JsonlLog(self.out / "log.jsonl", self.main)
        dev = accelerator.device
        self.skipped = torch.zeros((), device=dev)  # undecodable images since the last log
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=dev)  # first non-finite step
        self.bad_heads = torch.zeros(len(self.core.heads) + 1, dtype=torch.bool, device=dev)  # heads..., total
        self.collapse_streak = 0
        self._clock = (time.perf_counter(), 0)  # (start of the log interval, images since)
        self._lr = self.plan.peak_lr
        self._momentum: float | None = None

    # ------------------------------------------------------------------ resume / save

    def resume(self, resume: str | bool | None) -> None:
        """Load the requested checkpoint; ``latest`` falls back past unreadable ones."""
        if resume in (None, False):
            self._start_fresh()
            return
        if resume is True or resume == "latest":
            candidates = list(reversed(ckpt.step_dirs(self.out)))
            if not candidates:
                log.warning("--resume: no checkpoint in %s; starting from scratch", ckpt.checkpoint_root(self.out))
                return
        else:
            candidates = [Path(str(resume))]
        for path in candidates:
            try:
                self._load(path)
                return
            except ckpt.CheckpointError as e:
                if len(candidates) == 1:
                    raise
                log.warning("--resume: skipping %s", e)
        raise ckpt.CheckpointError(f"--resume: none of the checkpoints in {ckpt.checkpoint_root(self.out)} can be loaded")

    def _start_fresh(self) -> None:
        """Refuse to mix a new run into an output dir that holds another run's checkpoints."""
        existing = ckpt.step_dirs(self.out)
        if existing:
            raise ConfigError(
                f"train.output_dir: {self.out} already holds checkpoints of a run (latest {existing[-1].name}); "
                "pass --resume to continue it, or choose another --output"
            )
        if self.main:
            self.jsonl.truncate_after(-1)  # a log left by a run killed before its first checkpoint

    def _load(self, path: Path) -> None:
        ckpt.verify(path)
        state = ckpt.read_state(path)
        try:
            self.accelerator.load_state(str(path))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ckpt.CheckpointError(f"{path}: cannot be loaded into this model: {first[:300]}") from e
        self.state = state
        if self.main:
            self.jsonl.truncate_after(state.step)
        log.info("resumed from %s at step %d", path, state.step)

    def save(self, root: Path | None = None) -> Path:
        """A complete checkpoint of the current state (all processes call this)."""
        self._fold_skipped()
        return ckpt.save_state(self.accelerator, root or self.out, self.state, self.cfg.train.keep_last)

    def _fold_skipped(self) -> None:
        self.state.skipped_images += int(self.accelerator.reduce(self.skipped, reduction="sum").item())
        self.skipped.zero_()

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: str | bool | None = None) -> dict[str, Any]:
        self.resume(resume)
        acc, plan, state = self.accelerator, self.plan, self.state
        if self.main:
            log.info("%s%s", self.banner, f"\n  resuming at step {state.step:,}" if state.step else "")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(self.cfg.to_yaml())
        if acc.trackers:
            acc.init_trackers("mimkit", config=tracker_config(self.cfg.to_dict()))
        self.jsonl.write({"step": state.step, "epoch": state.epoch, "event": "start", "device": acc.device.type,
                          "mixed_precision": acc.mixed_precision, "processes": acc.num_processes})
        baseline = self._baseline()
        with _progress(plan.total_steps, state.step, self.main) as bar:  # closed (a newline) on errors too
            self._run_steps(bar)
        return self._finish(baseline)

    def _run_steps(self, bar: Any) -> None:
        """Optimizer steps to the end of the schedule, with logging, checkpoints and evaluations."""
        acc, tr, plan, state = self.accelerator, self.cfg.train, self.plan, self.state
        self._clock = (time.perf_counter(), 0)
        self.model.train()
        while state.step < plan.total_steps:
            self.train_set.set_epoch(state.epoch)
            self.loader.set_epoch(state.epoch)
            batches = acc.skip_first_batches(self.loader, state.batch_in_epoch) if state.batch_in_epoch else self.loader
            for batch in batches:
                state.batch_in_epoch += 1
                if not self._micro_step(batch):
                    continue
                bar.update(1)
                if state.step % tr.log_every == 0 or state.step == plan.total_steps:
                    record = self._log()
                    if "loss" in record:  # absent when every step of the interval was skipped
                        bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
                if state.step % tr.save_every == 0 and state.step < plan.total_steps:
                    self.save()
                if state.step >= plan.total_steps:
                    break
            else:  # the epoch ran out
                state.epoch += 1
                state.batch_in_epoch = 0
                if tr.eval_every_epochs and state.epoch % tr.eval_every_epochs == 0:
                    self._eval_during_training()

    def _micro_step(self, batch: dict[str, torch.Tensor]) -> bool:
        """Forward/backward one micro-batch; True when an optimizer step completed."""
        acc, tr, plan, state, model = self.accelerator, self.cfg.train, self.plan, self.state, self.model
        images = finish_batch(batch, self.core.input_size, self.cfg.data.mean, self.cfg.data.std)
        self.skipped += batch["skipped"].to(self.skipped.device)
        progress = state.step / plan.total_steps
        with acc.accumulate(model):
            self._lr = lr_at(state.step, plan, tr)
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr * group.get("lr_scale", 1.0)
            world_rows = plan.micro_batch * acc.num_processes
            result = model(images, progress=progress, batch_slice=(acc.process_index * plan.micro_batch, world_rows))
            self._watch_finite(result)
            acc.backward(result["loss"])
            skip = acc.sync_gradients and tr.on_nonfinite == "skip" and self._step_is_nonfinite()
            if acc.sync_gradients and tr.clip_grad is not None and not skip:
                acc.clip_grad_norm_(model.parameters(), tr.clip_grad)
            if not skip:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._clock = (self._clock[0], self._clock[1] + images.shape[0] * acc.num_processes)
        if not acc.sync_gradients:
            self.stats.add(result)
            return False
        if skip:
            state.nonfinite_steps += 1
            self.bad_heads.zero_()
        else:
            self.stats.add(result)
            self._momentum = self.core.momentum(progress)
            self.core.update_target(self._momentum)
        state.step += 1
        return True

    # ------------------------------------------------------------------ monitoring

    def _watch_finite(self, result: dict[str, torch.Tensor]) -> None:
        """Flag non-finite losses on the device (no host sync)."""
        losses = torch.stack([result[f"{h}/loss"].detach().float() for h in self.core.heads] + [result["loss"].detach().float()])
        bad = ~torch.isfinite(losses)
        self.bad_heads |= bad
        step = torch.full_like(self.first_bad_step, self.state.step + 1)
        self.first_bad_step = torch.where((self.first_bad_step < 0) & bad.any(), step, self.first_bad_step)

    def _step_is_nonfinite(self) -> bool:
        """Whether any process saw a non-finite loss in this optimizer step (one sync)."""
        return bool(self.accelerator.reduce(self.bad_heads.any().float(), reduction="max").item())

    def _raise_if_nonfinite(self) -> None:
        flags = self.accelerator.reduce(self.bad_heads.float(), reduction="max")
        if not bool(flags.any()):
            return
        step = int(self.accelerator.reduce(self.first_bad_step.float(), reduction="max").item())
        names = [*self.core.heads, "total"]
        heads = [n for n, f in zip(names, flags.tolist()) if f]
        where = self.save(self.out / "diagnostics")
        raise FloatingPointError(
            f"non-finite loss at step {step} in {', '.join(h for h in heads if h != 'total') or 'the total'}; "
            f"diagnostic state saved to {where}. Lower train.base_lr, set train.clip_grad, or use "
            "train.on_nonfinite=skip to drop such steps."
        )

    def _check_collapse(self, record: dict[str, Any]) -> None:
        tr, sim = self.cfg.train, record.get("latent/sim_images")
        if tr.collapse_threshold is None or sim is None:
            return
        self.collapse_streak = self.collapse_streak + 1 if sim > tr.collapse_threshold else 0
        if self.collapse_streak < tr.collapse_patience:
            return
        msg = (
            f"COLLAPSE: latent/sim_images = {sim:.3f} > train.collapse_threshold = {tr.collapse_threshold} "
            f"for {self.collapse_streak} consecutive logs (step {self.state.step}): the encoder maps images to "
            "nearly the same latent. Check target.mode (ema avoids collapse), the loss (patch_disc) and the lr."
        )
        if tr.collapse_action == "stop":
            self.save()
            raise CollapseError(msg + f" Stopped; checkpoint saved at step {self.state.step}.")
        if self.collapse_streak == tr.collapse_patience:
            log.warning("!" * 20 + " " + msg)

    def _log(self) -> dict[str, Any]:
        acc, state = self.accelerator, self.state
        if self.cfg.train.on_nonfinite == "error":
            self._raise_if_nonfinite()
        now = time.perf_counter()
        t0, images = self._clock
        self._fold_skipped()
        record = {"step": state.step, "epoch": state.epoch, **self.stats.read(acc), "lr": self._lr}
        record["momentum"] = self._momentum
        record["images_per_s"] = images / max(now - t0, 1e-9)
        record["skipped_images"] = state.skipped_images
        record["nonfinite_steps"] = state.nonfinite_steps
        self._clock = (now, 0)
        self.jsonl.write(record)
        acc.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=state.step)
        self._check_collapse(record)
        return record

    def _evaluate(self, at: str, knn: bool) -> dict[str, float]:
        """Score the context encoder (NN, and k-NN when asked) and log it as ``eval/*`` with
        ``eval/at`` = init | epoch | end; {} when the data has no labelled eval split."""
        if self.monitor is None:
            return {}
        if self.main:
            bank = f" and k-NN from {len(self.monitor.knn_bank):,} train images" if knn and self.monitor.knn_bank else ""
            log.info("scoring the encoder (%s): NN on %s images%s", at, f"{len(self.monitor.eval_set):,}", bank)
        scores = self.monitor.score(self.core.encoder.vit, self.accelerator, knn=knn)
        record = {f"eval/{k}": v for k, v in scores.items()}
        self.jsonl.write({"step": self.state.step, "epoch": self.state.epoch, **record, "eval/at": at})
        self.accelerator.log(record, step=self.state.step)
        return scores

    def _eval_during_training(self) -> None:
        self._evaluate("epoch", knn=False)

    def _baseline(self) -> dict[str, float]:
        """The encoder at initialisation: scored before the first step, read back on resume."""
        if not self.cfg.train.eval_baseline:
            return {}
        for r in self.jsonl.records():
            if r.get("eval/at") == "init":
                return {k.split("/", 1)[1]: v for k, v in r.items() if k in ("eval/nn", "eval/knn")}
        return self._evaluate("init", knn=True) if self.state.step == 0 else {}

    def _finish(self, baseline: dict[str, float]) -> dict[str, Any]:
        if self.main:
            log.info("saving the final checkpoint")
        final = self.save()
        scores = self._evaluate("end", knn=True)
        history = [{"step": r["step"], "epoch": r["epoch"], "nn": r["eval/nn"]} for r in self.jsonl.records() if "eval/nn" in r]
        summary = {
            "preset": self.cfg.preset,
            "steps": self.state.step,
            "epochs": round(self.state.step / self.plan.steps_per_epoch, 3),
            "images_seen": self.state.step * self.cfg.train.batch_size,
            "final_loss": self.jsonl.last("loss"),
            "nn": scores.get("nn"),
            "knn": scores.get("knn"),
            "init": baseline or None,
            "chance": self.monitor.chance if self.monitor else None,
            "eval_images": len(self.monitor.eval_set) if self.monitor else None,
            "knn_train_images": len(self.monitor.knn_bank) if self.monitor and self.monitor.knn_bank else None,
            "nn_history": history,
            "skipped_images": self.state.skipped_images,
            "nonfinite_steps": self.state.nonfinite_steps,
            "mixed_precision": self.accelerator.mixed_precision,
            "attention": self.attention,
            "checkpoint": str(final),
            "encoder": str(self.out / "encoder"),
        }
        if self.main:
            from .hub import save_pretrained

            log.info("exporting the encoder to %s", self.out / "encoder")
            save_pretrained(self.core.encoder.vit, self.out / "encoder", name=self.cfg.model.name,
                            data_config=export_data_config(self.cfg.data))
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary


def fit(cfg: RunConfig, accelerator: Accelerator, output_dir: str | Path, resume: str | bool | None = None) -> dict[str, Any]:
    """Pretrain ``cfg`` to the end of its schedule; returns the summary (also in OUTPUT/summary.json)."""
    return Trainer(cfg, accelerator, output_dir).fit(resume)


def tracker_config(d: dict[str, Any]) -> dict[str, Any]:
    """Nested config -> flat {"a.b": scalar} for trackers' hyper-parameter tables."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(d).items()}


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    # to a terminal: live; to a log file: a line every 30 s rather than one per step
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=done, disable=not enabled, desc="pretrain", unit="step", dynamic_ncols=True, mininterval=interval)
