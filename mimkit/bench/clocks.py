"""Clocks for the benchmark: device-synchronised wall time, and a per-region split of one step from forward hooks."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn



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


