"""What the benchmark measures: FLOPs, timed steps, the time split, host synchronisations, peak memory."""

from __future__ import annotations

import gc
import math
import time
import warnings
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ..platform_info import cpu_model
from .clocks import Clock, SplitRecorder, instrumented
from .step import StepRunner


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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


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


def peak_memory(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def release(device: torch.device, compiled: bool) -> None:
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


