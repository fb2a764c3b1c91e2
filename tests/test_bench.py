"""mimkit bench on the CPU: one JSON line per run, real FLOP counts, mimkit's config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import mimkit

from mimkit.bench.step import make_runner

from .runs import cli_module, load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
TINY = ["--preset", "latent_mim+tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch", "4", "--split-steps", "1"]
KEYS = {
    "preset", "model", "batch", "steps", "device", "device_name", "precision", "compile", "images_per_s", "step_ms",
    "flops_per_step", "gflop_per_image", "tflop_per_s", "peak_mem_gib", "split_ms", "compile_s", "data",
    "attn", "adamw", "sync_every_step", "host_syncs_per_step", "grad_checkpointing", "host_alloc", "page_faults_per_step",
}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return cli_module("bench")


def run(bench: ModuleType, capsys: pytest.CaptureFixture, argv: list[str]) -> list[dict]:
    assert bench.main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def math_attention_flops(preset: str, overrides: list[str], batch: int) -> int:
    """FLOPs of one forward + backward counted by a plain FlopCounterMode, attention as matmuls."""
    model = mimkit.build_model(mimkit.load_config(preset, overrides))
    images = torch.randn(batch, 3, model.input_size, model.input_size)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images)["loss"].backward()
    return counter.get_total_flops()


def test_synthetic_run_reports_real_numbers(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    (rec,) = run(bench, capsys, TINY)
    assert KEYS <= rec.keys()
    assert (rec["preset"], rec["batch"], rec["steps"], rec["device"], rec["precision"]) == ("latent_mim+tiny", 4, 2, "cpu", "fp32")
    assert rec["data"] == "synthetic" and rec["compile"] == "none" and rec["peak_mem_gib"] is None
    assert (rec["attn"], rec["adamw"], rec["sync_every_step"], rec["host_syncs_per_step"]) == ("fused", "fused", False, None)
    assert rec["images_per_s"] > 0 and rec["step_ms"] > 0
    assert rec["flops_per_step"] > 0 and rec["tflop_per_s"] > 0
    assert rec["gflop_per_image"] == pytest.approx(rec["flops_per_step"] / 4 / 1e9, rel=1e-3)
    assert rec["matmul_tflop_per_s"] > 0 and rec["matmul_share"] == pytest.approx(rec["tflop_per_s"] / rec["matmul_tflop_per_s"], rel=0.05, abs=1e-4)
    assert rec["top_ops"] is None  # off unless asked for
    assert rec["host_alloc"] in ("retain", "unchanged") and rec["page_faults_per_step"] >= 0
    split = rec["split_ms"]
    assert {"context_encoder", "target_encoder", "head/latent", "forward_other", "backward", "optimizer", "ema", "step"} <= split.keys()
    assert all(v > 0 for k, v in split.items() if k != "forward_other")
    # The fused CPU attention kernel also computes the gradients of the visual-cue attention's
    # constant positions, which the math path skips: the count is a little above the math one.
    reference = math_attention_flops("latent_mim+tiny", [], 4)
    assert reference <= rec["flops_per_step"] <= reference * 1.01


def test_flop_count_equals_independent_count(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    override = "objectives.latent.decoder.visual_cues=false"
    (rec,) = run(bench, capsys, TINY + ["--split-steps", "0", "--warmup", "0", "--steps", "1", override])
    assert rec["split_ms"] is None
    assert rec["flops_per_step"] == math_attention_flops("latent_mim+tiny", [override], 4)


def test_several_batches_one_line_each(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    recs = run(bench, capsys, TINY + ["--batch", "2,4", "--split-steps", "0", "--warmup", "0", "--steps", "1"])
    assert [r["batch"] for r in recs] == [2, 4]
    assert recs[1]["flops_per_step"] == 2 * recs[0]["flops_per_step"]


def test_embedded_data_pipeline(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    (rec,) = run(bench, capsys, TINY + ["--data", "embedded", "--steps", "1", "--warmup", "0"])
    assert rec["data"] == "embedded" and rec["num_workers"] == 0
    assert rec["images_per_s"] > 0 and rec["flops_per_step"] > 0
    assert "data" in rec["split_ms"]


def test_bad_override_exits_2_naming_the_key() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "latent_mim+tiny", "--device", "cpu", "masking.rato=0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "masking.rato" in proc.stderr and "masking.ratio" in proc.stderr
    assert proc.stdout == ""


def test_unknown_preset_exits_2(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--preset", "latent_mimm", "--device", "cpu"]) == 2
    assert "latent_mimm" in capsys.readouterr().err


def test_batch_list_parsing(bench: ModuleType) -> None:
    assert bench._batch_list("128,256, 512") == [128, 256, 512]
    with pytest.raises(Exception):
        bench._batch_list("0")


def test_optimisations_switch_off_one_at_a_time(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    """Each ablation switch reaches the step it names and leaves the FLOP count alone (within the
    attention kernels' own bookkeeping); activation checkpointing adds the recomputed forward."""
    base = TINY + ["--split-steps", "0"]
    (ref,) = run(bench, capsys, base)
    for extra, key, value in [
        (["--attn", "math"], "attn", "math"),
        (["--attn", "manual"], "attn", "manual"),
        (["--adamw", "loop"], "adamw", "loop"),
        (["--sync-every-step"], "sync_every_step", True),
        (["--host-alloc", "glibc"], "host_alloc", "glibc"),
    ]:
        (rec,) = run(bench, capsys, base + extra)
        assert rec[key] == value, extra
        assert rec["flops_per_step"] == pytest.approx(ref["flops_per_step"], rel=0.01), extra
        assert rec["split_ms"] is None
    (rec,) = run(bench, capsys, base + ["model.grad_checkpointing=true"])
    assert rec["grad_checkpointing"] is True
    assert ref["flops_per_step"] < rec["flops_per_step"] < 1.2 * ref["flops_per_step"]


def test_attention_switches_run_their_kernels(bench: ModuleType) -> None:
    args = bench.parse_args(TINY + ["--attn", "math"])
    cfg = mimkit.load_config("latent_mim+tiny")
    runner = make_runner(cfg, args, 4, "none")
    seen: set[str] = set()

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            seen.add(str(func))
            return func(*args, **(kwargs or {}))

    images = torch.randn(4, 3, runner.model.input_size, runner.model.input_size)
    with Ops():
        runner.loss(images)
    assert not any("flash_attention" in op for op in seen)
    runner.attention = "fused"
    seen.clear()
    with Ops():
        runner.loss(images)
    assert any("flash_attention" in op for op in seen)
    manual = make_runner(cfg, bench.parse_args(TINY + ["--attn", "manual"]), 4, "none")
    seen.clear()
    with Ops():
        manual.loss(images)
    assert not any("scaled_dot_product" in op for op in seen) and any("bmm" in op for op in seen)


@pytest.mark.parametrize("gap", [0, 1])
def test_masking_bench_times_three_paths_that_cut_the_same_patches(capsys: pytest.CaptureFixture, gap: int) -> None:
    module = load_script("bench_masking")
    argv = ["--preset", "latent_mim+tiny", "--device", "cpu", "--batch", "4", "--reps", "2", f"masking.gap={gap}"]
    assert module.main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in records] == ["device", "host_masks", "loops"]
    assert all(r["gap"] == gap and r["ms"] > 0 for r in records)
    # the loop path really is independent: a wrong offset makes the check fail
    cfg = mimkit.load_config("latent_mim+tiny", [f"masking.gap={gap}"])
    g, _ = mimkit.encoder.resolve_geometry(cfg)
    images = torch.randn(2, 3, g.input_size, g.input_size)
    masks = module.draw(g, cfg.masking.ratio, 2, torch.device("cpu"))
    shifted = (masks[0] + 1).clamp(max=gap) if gap else None
    loop_vis, _ = module.cut_with_loops(images, g, (shifted, masks[1], masks[2]))
    ref_vis, _ = module.cut(images, g, masks)
    assert torch.equal(loop_vis, ref_vis) == (gap == 0 or torch.equal(shifted, masks[0]))


def test_operator_table_lists_the_costliest_operators(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    (rec,) = run(bench, capsys, TINY + ["--split-steps", "0", "--ops", "5"])
    ops = rec["top_ops"]
    assert len(ops) == 5 and all(o["calls"] >= 1 for o in ops)
    assert [o["self_ms"] for o in ops] == sorted((o["self_ms"] for o in ops), reverse=True)
    assert any(o["op"] in ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear") for o in ops)  # a ViT step is mostly matmuls


def test_matmul_rate_is_the_flops_of_the_product_over_its_time() -> None:
    from mimkit.bench.measure import matmul_tflops

    rate = matmul_tflops(torch.device("cpu"), "fp32", n=256, reps=2)
    assert 1e-4 < rate < 100  # TFLOP/s of a CPU: a wrong power of ten in the formula lands outside
