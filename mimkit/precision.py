"""Which mixed precision a run uses: ``train.mixed_precision: auto`` resolved for a device.

The rule, shared by training, the benchmark and feature extraction:

| device | auto gives |
|---|---|
| CUDA GPU with bf16 support (Ampere and later) | ``bf16`` |
| CPU with native bf16 matrix instructions (AVX512-BF16 or AMX-BF16) | ``bf16`` |
| anything else | ``no`` (fp32) |

On a CPU without native bf16, autocast would emulate bf16 and run slower than fp32, so auto
never picks it there; an explicit ``bf16`` is still honoured.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["no", "bf16", "fp16"]
Requested = Literal["auto", "no", "bf16", "fp16"]

# /proc/cpuinfo flags of native bf16 matrix instructions
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _torch_cpu_query() -> bool | None:
    """torch's own capability query (private but stable since 2.1); None when absent."""
    queries: list[Callable[[], bool]] = [
        getattr(torch.cpu, name) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported") if hasattr(torch.cpu, name)
    ]
    if not queries:
        return None
    return any(q() for q in queries)


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: torch's query, else the CPU flags."""
    answer = _torch_cpu_query()
    if answer is not None:
        return answer
    return bool(_cpuinfo_flags() & set(_BF16_CPU_FLAGS))


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(requested: Requested, device_type: str) -> Precision:
    """``auto`` -> ``bf16`` or ``no`` by the rule above; ``fp16`` off CUDA -> ``no``; else as asked."""
    if requested == "auto":
        native = cuda_has_bf16() if device_type == "cuda" else cpu_has_native_bf16() if device_type == "cpu" else False
        return "bf16" if native else "no"
    if requested == "fp16" and device_type != "cuda":
        return "no"
    return requested


def bf16_is_emulated(precision: Precision, device_type: str) -> bool:
    """True for bf16 on a CPU without native bf16: it runs, but slower than fp32 (worth a warning)."""
    return precision == "bf16" and device_type == "cpu" and not cpu_has_native_bf16()


def autocast_dtype(precision: Precision) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: run in fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}[precision]


def default_device_type() -> str:
    """The device a single-process run lands on: accelerate's choice between CUDA and the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
