"""What drawing masks on the device and cutting patches with index gathers saves per step.

    python scripts/bench_masking.py --preset latent_mim [--batch 256] [--reps 20] [--device cuda]

Times the masking stage of one training step (gap offsets, patchify, visible/target split,
the two token gathers) three ways and prints one JSON line each:

- ``device``: mimkit's path: random numbers drawn on the images' device, one gather per tensor;
- ``host_masks``: the same gathers, offsets and split drawn on the CPU and copied over (a
  blocking copy, which waits for the queued work as a data loader's would);
- ``loops``: Python loops over images and cells (a slice per patch, a permutation per image).

All three cut the same patches from the same offsets and indices (checked before timing).
Compare ``ms`` with ``step_ms`` from ``scripts/bench.py`` at the same preset and batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimkit.config import ConfigError, load_config  # noqa: E402
from mimkit.encoder import Geometry, resolve_geometry  # noqa: E402
from mimkit.masking import draw_masks, gather_tokens, grid_offsets, num_visible, patchify  # noqa: E402

Masks = tuple[Tensor | None, Tensor, Tensor]  # offsets (B, L, 2) or None, visible (B, Nv), target (B, Nt)
Cut = tuple[Tensor, Tensor]  # visible patches (B, Nv, C*P*P), target patches (B, Nt, C*P*P)


def draw(g: Geometry, ratio: float, batch: int, device: torch.device) -> Masks:
    return draw_masks(batch, g.num_cells, g.gap, ratio, device)


def cut(images: Tensor, g: Geometry, masks: Masks) -> Cut:
    offsets, visible, target = masks
    patches = patchify(images, g.patch, g.gap, offsets)  # (B, L, C*P*P)
    return gather_tokens(patches, visible), gather_tokens(patches, target)


def cut_with_loops(images: Tensor, g: Geometry, masks: Masks) -> Cut:
    """The same patches, one slice per image and cell."""
    offsets, visible, target = masks
    cell, P = g.patch + g.gap, g.patch
    per_image = []
    for b in range(images.shape[0]):
        patches = []
        for idx in range(g.num_cells):
            r, c = (idx // g.grid) * cell, (idx % g.grid) * cell
            if offsets is not None:
                r, c = r + int(offsets[b, idx, 0]), c + int(offsets[b, idx, 1])
            patches.append(images[b, :, r : r + P, c : c + P].reshape(-1))
        stacked = torch.stack(patches)  # (L, C*P*P)
        per_image.append((stacked[visible[b]], stacked[target[b]]))
    return torch.stack([v for v, _ in per_image]), torch.stack([t for _, t in per_image])


def draw_with_loops(g: Geometry, ratio: float, batch: int, device: torch.device) -> Masks:
    nv = num_visible(g.num_cells, ratio)
    offsets = torch.stack([grid_offsets(1, g.num_cells, g.gap, device)[0] for _ in range(batch)]) if g.gap else None
    perms = [torch.randperm(g.num_cells, device=device) for _ in range(batch)]
    return offsets, torch.stack([p[:nv] for p in perms]), torch.stack([p[nv:] for p in perms])


def variants(g: Geometry, ratio: float, device: torch.device) -> dict[str, Callable[[Tensor], Cut]]:
    def on_device(images: Tensor) -> Cut:
        return cut(images, g, draw(g, ratio, images.shape[0], device))

    def host_masks(images: Tensor) -> Cut:
        masks = draw(g, ratio, images.shape[0], torch.device("cpu"))
        return cut(images, g, tuple(m.to(device) if m is not None else None for m in masks))  # type: ignore[arg-type]

    def loops(images: Tensor) -> Cut:
        return cut_with_loops(images, g, draw_with_loops(g, ratio, images.shape[0], device))

    return {"device": on_device, "host_masks": host_masks, "loops": loops}


def check_same_patches(images: Tensor, g: Geometry, ratio: float) -> None:
    masks = draw(g, ratio, images.shape[0], images.device)
    for a, b in zip(cut(images, g, masks), cut_with_loops(images, g, masks)):
        if not torch.equal(a, b):
            raise AssertionError("the gather and loop paths cut different patches")


def time_ms(fn: Callable[[Tensor], Cut], images: Tensor, reps: int) -> list[float]:
    """Milliseconds of each call, from its launch to the device having finished it."""
    fn(images)  # warm-up
    out = []
    for _ in range(reps):
        if images.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="latent_mim")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=20, help="timed calls per variant (loops: at most 3)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.preset, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    g, _ = resolve_geometry(cfg)
    device = torch.device(args.device)
    images = torch.randn(args.batch, 3, g.input_size, g.input_size, device=device)
    check_same_patches(images[:4], g, cfg.masking.ratio)
    for name, fn in variants(g, cfg.masking.ratio, device).items():
        times = time_ms(fn, images, min(args.reps, 3) if name == "loops" else args.reps)
        record = {
            "preset": cfg.preset, "variant": name, "batch": args.batch, "grid": g.grid, "gap": g.gap,
            "device": device.type, "reps": len(times), "ms": round(statistics.median(times), 3),
        }
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
