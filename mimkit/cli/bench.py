"""Training-step throughput of a mimkit preset: images/s, model TFLOP/s, peak memory and
where the time of a step goes.

    mimkit bench --preset P [--model NAME] [--batch B[,B2,...]] [--steps N] [--warmup W]
                            [--compile none|blocks|model] [--data DIR] [--precision bf16|fp16|fp32]
                            [--attn fused|math] [--adamw fused|foreach|loop] [--sync-every-step]
                            [--device cuda|cpu] [--split-steps K] [key=value ...]

One training step is what ``mimkit.trainer.fit`` does per optimizer step: forward under
autocast, backward (through a GradScaler for fp16), fused AdamW step with the trainer's
parameter groups (after gradient clipping when ``train.clip_grad`` is set), ``zero_grad``,
EMA update of the target. ``--batch`` is the images of one step (``train.batch_size`` and
``train.grad_accum`` are not used). By default the images are
synthetic and already on the device; ``--data SOURCE`` (``embedded``, a directory or a Hub
id) feeds real images through mimkit's data pipeline (train_transform, collate, a
DataLoader with ``data.num_workers`` workers, pinned memory) for end-to-end images/s.

Each run prints one JSON line on stdout. ``--batch 128,256,512`` runs each batch size on a
freshly built model and prints one line each (a batch that runs out of GPU memory prints a
line with ``"error": "out of memory"``; the exit code is then 1). Measurements, in order:
W warm-up steps (the first one, which compiles under ``--compile``, is timed as
``first_step_s``), N timed steps (one device synchronisation at the end), one step under
``torch.cuda.set_sync_debug_mode`` that counts the host synchronisations of a step
(``host_syncs_per_step``, CUDA only), then, on an eager copy of the model, one untimed step
whose forward + backward FLOPs are counted with FlopCounterMode and K profiled steps for the
time split (CUDA events at forward hooks of the context encoder, target encoder and heads,
and around backward, optimizer and EMA).

Each optimisation can be switched off on its own to measure what it gives: ``--precision
fp32`` (bf16 autocast), ``--attn math`` (fused scaled-dot-product attention: the math
backend computes softmax(QK^T)V with separate kernels), ``--adamw foreach|loop`` (the fused
AdamW kernel), ``--sync-every-step`` (reads the loss on the host every step, as a loop that
logs each step does), ``--compile none`` (torch.compile), ``model.grad_checkpointing=true``
(activation checkpointing: memory for time). ``scripts/bench_masking.py`` times masking on the
device against host-drawn masks and per-image loops.

Reference comparison (the authors' implementations, timed on one H100 with fp16 autocast and
synthetic images on the GPU; figures below). The presets already are those configurations; mimkit trains in bf16
(``--precision fp16`` gives the reference's precision):

    mimkit bench --preset latent_mim --batch 128,256,512 --compile model   # ref 1230 / 1838 / 2160 img/s, 66.7 GFLOP/img
    mimkit bench --preset pilamim --batch 128,256 --compile model          # ref 1258 / 1707 img/s, 89.9 GFLOP/img
    mimkit bench --preset mae --batch 256 --compile model                  # ref 2767 img/s, 58.8 GFLOP/img

``scripts/perf_suite.py`` runs these and every switch above and writes docs/performance.md.
Add ``--data /path/to/imagenet data.num_workers=12`` for end-to-end numbers. CPU smoke test:

    mimkit bench --preset latent_mim+tiny --device cpu --steps 2 --warmup 1 --batch 4
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import warnings
from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


from ..config import ConfigError, RunConfig, load_config
from ..platform_info import cpu_model
from ..precision import resolve_precision

PROGRESS = 0.0
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
_CONFIG_PRECISION = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}


# --------------------------------------------------------------------------- arguments


def _batch_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="mimkit bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="latent_mim", help="preset name, YAML path or a+b stack (default: %(default)s)")
    ap.add_argument("--model", help="timm ViT name (same as model.name=NAME)")
    ap.add_argument("--batch", type=_batch_list, help="images per step; comma-separated for one run each (default: 256 on cuda, 8 on cpu)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default: %(default)s)")
    ap.add_argument("--split-steps", type=int, default=5, help="eager profiled steps for the time split; 0 skips it (default: %(default)s)")
    ap.add_argument("--compile", choices=["none", "blocks", "model"], default="none", help="torch.compile as train.compile (default: %(default)s)")
    ap.add_argument("--attn", choices=["fused", "math"], default="fused", help="scaled-dot-product attention kernels (default: %(default)s)")
    ap.add_argument("--adamw", choices=["fused", "foreach", "loop"], help="AdamW kernels (default: fused on cuda, torch's choice on cpu)")
    ap.add_argument("--sync-every-step", action="store_true", help="read the loss on the host after every step")
    ap.add_argument("--data", help="real images through mimkit's data pipeline: 'embedded', a directory or a Hub id (default: synthetic)")
    ap.add_argument("--data-only", action="store_true", help="with --data: time decoding + augmentation + copy alone (no model)")
    ap.add_argument("--precision", choices=sorted(PRECISIONS), help="autocast dtype (default: the config's train.mixed_precision)")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = ap.parse_intermixed_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.split_steps < 0:
        ap.error("--steps must be >= 1, --warmup and --split-steps >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.batch = args.batch or [256 if args.device == "cuda" else 8]
    return args


def config_overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"model.name={args.model}"] if args.model else []
    if args.data:
        extra.append(f"data.source={args.data}")
    return list(args.overrides) + extra


# --------------------------------------------------------------------------- clocks


class Clock:
    """Timestamps on the device's timeline: CUDA events, or perf_counter on the CPU
    (where every op has finished when it returns)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


@dataclass
class SplitRecorder:
    """Spans of named regions, summed per name. Module regions nest: only the outermost open
    one is timed, so the context encoder run inside the target encoder counts as target."""

    clock: Clock
    spans: list[tuple[str, Any, Any]] = field(default_factory=list)
    stack: list[tuple[str, Any]] = field(default_factory=list)

    def enter(self, name: str) -> None:
        self.stack.append((name, None if self.stack else self.clock.mark()))

    def exit(self) -> None:
        name, start = self.stack.pop()
        if start is not None:
            self.spans.append((name, start, self.clock.mark()))

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = self.clock.mark()
        try:
            yield
        finally:
            self.spans.append((name, start, self.clock.mark()))

    def totals_ms(self) -> dict[str, float]:
        self.clock.sync()
        out: dict[str, float] = defaultdict(float)
        for name, start, end in self.spans:
            out[name] += self.clock.ms(start, end)
        return dict(out)


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
    attn_math: bool = False
    sync_every_step: bool = False

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def loss(self, images: Tensor) -> Tensor:
        with self.autocast(), sdpa_kernel(SDPBackend.MATH) if self.attn_math else nullcontext():
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
    dtype = PRECISIONS[args.precision or default_precision(cfg, device.type)]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    optimizer = make_optimizer(model, cfg, scaled_lr(cfg.train.base_lr, batch), adamw_impl(args))
    return StepRunner(
        model, optimizer, scaler, device, dtype, model.momentum(PROGRESS), cfg.train.clip_grad,
        attn_math=args.attn == "math", sync_every_step=args.sync_every_step,
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
    dataset = splits.dataset(splits.train, train_transform(size, cfg.data), seed=cfg.train.seed, on_error="substitute")
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


# --------------------------------------------------------------------------- measurements


def _flash_cpu_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """Forward FLOPs of attention: Q K^T and P V, batch dims leading (as sdpa_flop_count)."""
    *lead, s_q, d_q = query
    s_k, d_v = key[-2], value[-1]
    return 2 * math.prod(lead) * s_q * s_k * (d_q + d_v)


def _flash_cpu_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * _flash_cpu_flops(query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one.
_EXTRA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_cpu_backward_flops,
}


def count_flops(runner: StepRunner, images: Tensor) -> int:
    """FLOPs of one eager forward + backward (the optimizer and EMA are not counted)."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS)
    with counter:
        runner.backward(runner.loss(images))
    runner.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(runner: StepRunner, batches: Iterator[Tensor], warmup: int, steps: int, clock: Clock) -> tuple[float | None, float]:
    """(seconds of the first warm-up step or None, milliseconds of ``steps`` timed steps)."""
    first_s = None
    for i in range(warmup):
        t0 = time.perf_counter()
        runner.step(next(batches))
        if i == 0:
            clock.sync()
            first_s = time.perf_counter() - t0
    clock.sync()
    start = clock.mark()
    for _ in range(steps):
        runner.step(next(batches))
    end = clock.mark()
    clock.sync()
    return first_s, clock.ms(start, end)


def _hook_region(module: nn.Module, name: str, rec: SplitRecorder) -> list[Any]:
    return [
        module.register_forward_pre_hook(lambda m, a: rec.enter(name)),
        module.register_forward_hook(lambda m, a, o: rec.exit()),
    ]


@contextmanager
def instrumented(model: nn.Module, rec: SplitRecorder) -> Iterator[None]:
    """Forward hooks on the context encoder, the target encoder and each head."""
    handles = _hook_region(model.encoder, "context_encoder", rec)
    if model.target is not None:
        handles += _hook_region(model.target, "target_encoder", rec)
    for name, head in model.heads.items():
        handles += _hook_region(head, f"head/{name}", rec)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile_split(runner: StepRunner, batches: Iterator[Tensor], steps: int, clock: Clock, with_data: bool) -> dict[str, float]:
    """Mean milliseconds per step of each part of an eager step; the parts add up to ``step``."""
    rec = SplitRecorder(clock)
    with instrumented(runner.model, rec):
        for _ in range(steps):
            rec.stack.clear()
            with rec.span("step"):
                with rec.span("data"):
                    images = next(batches)
                with rec.span("forward"):
                    loss = runner.loss(images)
                with rec.span("backward"):
                    runner.backward(loss)
                with rec.span("optimizer"):
                    runner.optimize()
                with rec.span("ema"):
                    runner.ema()
    totals = {k: v / steps for k, v in rec.totals_ms().items()}
    modules = [k for k in totals if k in ("context_encoder", "target_encoder") or k.startswith("head/")]
    split = {k: totals[k] for k in sorted(modules)}
    split["forward_other"] = totals["forward"] - sum(split.values())
    for k in ("backward", "optimizer", "ema"):
        split[k] = totals[k]
    if with_data:
        split["data"] = totals["data"]
    split["step"] = totals["step"]
    return {k: round(v, 3) for k, v in split.items()}


# --------------------------------------------------------------------------- one run


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def default_precision(cfg: RunConfig, device_type: str) -> str:
    """train.mixed_precision resolved for the device as training resolves it (``auto`` included)."""
    return _CONFIG_PRECISION[resolve_precision(cfg.train.mixed_precision, device_type)]


def count_host_syncs(runner: StepRunner, images: Tensor) -> int | None:
    """Host synchronisations one step makes (CUDA only): each one stalls the launch queue."""
    if runner.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            runner.step(images)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message).lower() for w in caught)


def bench_one(cfg: RunConfig, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    device = torch.device(args.device)
    clock = Clock(device)
    runner = make_runner(cfg, args, batch, args.compile)
    size = runner.model.input_size
    batches = loader_images(cfg, batch, size, device) if args.data else synthetic_images(batch, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = max(args.warmup, 1) if args.compile != "none" else args.warmup
    first_s, elapsed_ms = time_steps(runner, batches, warmup, args.steps, clock)
    peak = _peak_memory(device)
    syncs = count_host_syncs(runner, next(batches))
    if args.compile != "none":  # FLOPs and the split are counted on an eager copy
        del runner
        _release(device, compiled=True)
        runner = make_runner(cfg, args, batch, "none")
    flops = count_flops(runner, next(batches))
    split = profile_split(runner, batches, args.split_steps, clock, bool(args.data)) if args.split_steps else None
    step_s = elapsed_ms / 1e3 / args.steps
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "batch": batch,
        "input_size": size,
        "steps": args.steps,
        "warmup": warmup,
        "device": device.type,
        "device_name": device_name(device),
        "precision": args.precision or default_precision(cfg, device.type),
        "compile": args.compile,
        "attn": args.attn,
        "adamw": adamw_impl(args),
        "sync_every_step": args.sync_every_step,
        "grad_checkpointing": cfg.model.grad_checkpointing,
        "data": cfg.data.source if args.data else "synthetic",
        "num_workers": cfg.data.num_workers if args.data else None,
        "params_m": round(sum(p.numel() for p in runner.model.parameters() if p.requires_grad) / 1e6, 3),
        "images_per_s": round(batch / step_s, 2),
        "step_ms": round(step_s * 1e3, 3),
        "first_step_s": None if first_s is None else round(first_s, 3),
        "compile_s": round(first_s, 3) if args.compile != "none" and first_s is not None else None,
        "flops_per_step": flops,
        "gflop_per_image": round(flops / batch / 1e9, 4),
        "tflop_per_s": round(flops / step_s / 1e12, 4),
        "peak_mem_gib": peak,
        "host_syncs_per_step": syncs,
        "split_ms": split,
        "split_steps": args.split_steps,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


def bench_data(cfg: RunConfig, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """Images/s the input pipeline alone delivers to the device, at the model's training crop."""
    from ..encoder import resolve_geometry

    device = torch.device(args.device)
    size = resolve_geometry(cfg)[0].input_size
    batches = loader_images(cfg, batch, size, device)
    for _ in range(args.warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.steps):
        images = next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "preset": cfg.preset,
        "mode": "data-only",
        "batch": batch,
        "input_size": size,
        "steps": args.steps,
        "data": cfg.data.source,
        "num_workers": cfg.data.num_workers,
        "device": device.type,
        "images_per_s": round(batch * args.steps / seconds, 2),
        "shape": list(images.shape),
    }


def _peak_memory(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def _release(device: torch.device, compiled: bool) -> None:
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _oom_record(cfg: RunConfig, args: argparse.Namespace, batch: int, error: Exception) -> dict[str, Any]:
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "batch": batch,
        "device": args.device,
        "compile": args.compile,
        "error": "out of memory",
        "detail": str(error).splitlines()[0],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_only and not args.data:
        print("error: --data-only needs --data (the images whose decoding is timed)", file=sys.stderr)
        return 2
    status = 0
    try:
        cfg = load_config(args.preset, config_overrides(args))
        for batch in args.batch:
            try:
                record = bench_data(cfg, args, batch) if args.data_only else bench_one(cfg, args, batch)
            except torch.cuda.OutOfMemoryError as e:
                record, status = _oom_record(cfg, args, batch, e), 1
            print(json.dumps(record), flush=True)
            _release(torch.device(args.device), args.compile != "none")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
