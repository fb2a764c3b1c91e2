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
from .step import PRECISIONS, StepRunner


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


def minor_faults() -> int:
    """This process's minor page faults so far (0 where ``resource`` is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(
    runner: StepRunner, batches: Iterator[Tensor], warmup: int, steps: int, clock: Clock
) -> tuple[float | None, float, int]:
    """(seconds of the first warm-up step or None, milliseconds of ``steps`` timed steps,
    the host's minor page faults over the timed steps)."""
    first_s = None
    for i in range(warmup):
        t0 = time.perf_counter()
        runner.step(next(batches))
        if i == 0:
            clock.sync()
            first_s = time.perf_counter() - t0
    clock.sync()
    faults = minor_faults()
    start = clock.mark()
    for _ in range(steps):
        runner.step(next(batches))
    end = clock.mark()
    clock.sync()
    return first_s, clock.ms(start, end), minor_faults() - faults


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


def matmul_tflops(device: torch.device, precision: str, n: int | None = None, reps: int = 3) -> float:
    """The device's own dense matmul rate at ``precision``: TFLOP/s of an n x n by n x n product
    (n 2048 on a CPU, 8192 on a GPU), the best of ``reps`` after one warm-up: the ceiling a
    step's model FLOP/s is compared against."""
    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = PRECISIONS[precision] or torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    best = float("inf")
    for i in range(reps + 1):
        clock.sync()
        start = clock.mark()
        torch.mm(a, b)
        end = clock.mark()
        clock.sync()
        if i:  # the first product warms up
            best = min(best, clock.ms(start, end))
    return 2 * n**3 / (best / 1e3) / 1e12


def top_ops(runner: StepRunner, images: Tensor, n: int) -> list[dict[str, Any]]:
    """The ``n`` operators of one eager step with the most self time (torch.profiler), in ms."""
    from torch.profiler import ProfilerActivity, profile

    cuda = runner.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        runner.step(images)
        if cuda:
            torch.cuda.synchronize(runner.device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)[:n]
    return [{"op": e.key, "self_ms": round(getattr(e, attr) / 1e3, 3), "calls": e.count} for e in events]


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


