"""Training-step throughput of a mimkit preset: images/s, model TFLOP/s, peak memory and
where the time of a step goes.

    mimkit bench --preset P [--model NAME] [--batch B[,B2,...]] [--steps N] [--warmup W]
                            [--compile none|blocks|model] [--data DIR] [--precision bf16|fp16|fp32]
                            [--attn auto|fused|manual|math] [--adamw fused|foreach|loop] [--sync-every-step]
                            [--device cuda|cpu] [--split-steps K] [--host-alloc retain|glibc] [key=value ...]

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
and around backward, optimizer and EMA). ``matmul_share`` is the step's model FLOP/s over the
device's own dense matmul rate at the same precision (``matmul_tflop_per_s``, an n x n product
timed on the spot); ``page_faults_per_step`` is the host's minor page faults per timed step
(``--host-alloc glibc`` leaves malloc as it is, to measure what ``mimkit.host_memory`` saves);
``--ops N`` lists the N operators of one eager step with the most self time (torch.profiler), to
see where a step's time goes beyond the matmuls.

Each optimisation can be switched off on its own to measure what it gives: ``--precision
fp32`` (bf16 autocast), ``--attn fused|manual|math`` (the trainer's attention kernel,
``train.attention: auto``: fused scaled-dot-product attention, or on a CPU under bf16 the manual
softmax(QK^T)V; ``math`` is SDPA's math backend), ``--adamw foreach|loop`` (the fused
AdamW kernel, the default on CUDA and CPUs), ``--sync-every-step`` (reads the loss on the host
every step, as a loop that logs each step does), ``--compile none`` (torch.compile), ``model.grad_checkpointing=true``
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
import json
import sys
import time
from typing import Any

import torch

from ..config import ConfigError, RunConfig, load_config
from ..host_memory import retain_freed_memory
from ..precision import cpu_has_native_bf16
from .clocks import Clock
from .step import PRECISIONS, adamw_impl, default_precision, loader_images, make_runner, synthetic_images
from .measure import (count_flops, count_host_syncs, device_name, matmul_tflops, peak_memory, profile_split, release,
                      time_steps, top_ops)


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
    ap.add_argument("--attn", choices=["auto", "fused", "manual", "math"], default="auto",
                    help="attention kernel: the trainer's train.attention rule (auto), fused SDPA, the manual "
                         "softmax(q k^T) v, or SDPA's math backend (default: %(default)s)")
    ap.add_argument("--adamw", choices=["fused", "foreach", "loop"], help="AdamW kernels (default: fused on cuda and cpu, torch's choice elsewhere)")
    ap.add_argument("--sync-every-step", action="store_true", help="read the loss on the host after every step")
    ap.add_argument("--data", help="real images through mimkit's data pipeline: 'embedded', a directory or a Hub id (default: synthetic)")
    ap.add_argument("--data-only", action="store_true", help="with --data: time decoding + augmentation + copy alone (no model)")
    ap.add_argument("--precision", choices=sorted(PRECISIONS), help="autocast dtype (default: the config's train.mixed_precision)")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    ap.add_argument("--ops", type=int, default=0, metavar="N", help="list the N operators of one eager step with the most self time")
    ap.add_argument("--host-alloc", choices=["retain", "glibc"], default="retain",
                    help="retain: keep freed host memory for reuse, as every mimkit command does; glibc: malloc's defaults (default: %(default)s)")
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


def significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def bench_one(cfg: RunConfig, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    device = torch.device(args.device)
    clock = Clock(device)
    runner = make_runner(cfg, args, batch, args.compile)
    size = runner.model.input_size
    batches = loader_images(cfg, batch, size, device) if args.data else synthetic_images(batch, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = max(args.warmup, 1) if args.compile != "none" else args.warmup
    first_s, elapsed_ms, faults = time_steps(runner, batches, warmup, args.steps, clock)
    peak = peak_memory(device)
    syncs = count_host_syncs(runner, next(batches))
    if args.compile != "none":  # FLOPs and the split are counted on an eager copy
        del runner
        release(device, compiled=True)
        runner = make_runner(cfg, args, batch, "none")
    flops = count_flops(runner, next(batches))
    split = profile_split(runner, batches, args.split_steps, clock, bool(args.data)) if args.split_steps else None
    ops = top_ops(runner, next(batches), args.ops) if args.ops else None
    step_s = elapsed_ms / 1e3 / args.steps
    precision = args.precision or default_precision(cfg, device.type)
    ceiling = matmul_tflops(device, precision)
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "batch": batch,
        "input_size": size,
        "steps": args.steps,
        "warmup": warmup,
        "device": device.type,
        "device_name": device_name(device),
        "precision": precision,
        "compile": args.compile,
        "attn": runner.attention,
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
        "tflop_per_s": significant(flops / step_s / 1e12),  # significant digits: a CPU runs well under 1 TFLOP/s
        "matmul_tflop_per_s": significant(ceiling),
        "matmul_share": significant(flops / step_s / 1e12 / ceiling),  # model FLOP/s over the device's matmul rate
        "peak_mem_gib": peak,
        "host_alloc": args.host_alloc,
        "page_faults_per_step": round(faults / args.steps),
        "host_syncs_per_step": syncs,
        "split_ms": split,
        "split_steps": args.split_steps,
        "top_ops": ops,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "cpu_native_bf16": cpu_has_native_bf16() if device.type == "cpu" else None,
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
    if args.host_alloc == "retain" and not retain_freed_memory():
        args.host_alloc = "unchanged"  # not glibc, or malloc tuned by the environment: recorded as it ran
    status = 0
    try:
        cfg = load_config(args.preset, config_overrides(args))
        for batch in args.batch:
            try:
                record = bench_data(cfg, args, batch) if args.data_only else bench_one(cfg, args, batch)
            except torch.cuda.OutOfMemoryError as e:
                record, status = _oom_record(cfg, args, batch, e), 1
            print(json.dumps(record), flush=True)
            release(torch.device(args.device), args.compile != "none")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
