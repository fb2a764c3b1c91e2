"""mimkit.host_memory: glibc keeps freed blocks for reuse once asked, and is left alone otherwise."""

import platform
import sys

import pytest
import torch

from mimkit.bench.measure import minor_faults
from mimkit.host_memory import GLIBC_ENV, retain_freed_memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc"
)


def _step(blocks: int = 16, size: int = 4 << 20) -> None:
    """A training step's activations in miniature: 16 blocks of 4 MiB alive at once, then freed."""
    live = [torch.empty(size, dtype=torch.uint8).fill_(1) for _ in range(blocks)]
    del live


@glibc
def test_freed_blocks_are_reused_without_new_page_faults(monkeypatch):
    for name in GLIBC_ENV:
        monkeypatch.delenv(name, raising=False)
    assert retain_freed_memory()
    _step(), _step()  # the first steps fault their pages in
    before = minor_faults()
    for _ in range(10):
        _step()
    # glibc's defaults trim the freed 64 MiB off the heap and fault it in again: about a
    # step's 16,384 pages over these 10 steps, and on every step once blocks outgrow 32 MiB
    assert minor_faults() - before < 16 * 1024 // 2


@glibc
def test_a_malloc_tuned_by_the_environment_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert not retain_freed_memory()


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not retain_freed_memory()
