"""Every measurement behind docs/performance.md, run in one go and resumable, and the report.

    python scripts/perf_suite.py run --results FILE.jsonl [--groups table,ablation,...] [--time-budget MIN]
                                     [--data DIR] [--workers N] [--only NAME ...]
    python scripts/perf_suite.py report --results FILE.jsonl [--doc docs/performance.md]
    python scripts/perf_suite.py list

``run`` executes each planned measurement (``scripts/bench.py`` or ``scripts/bench_masking.py``)
in its own process and appends one JSON line per measurement to FILE: the run's name, command,
wall seconds, exit code and the records the benchmark printed. Runs already in FILE with exit
code 0 are skipped, so a later call continues where an earlier one stopped; with
``--time-budget`` no run starts once MIN minutes have passed. ``report`` writes the markdown:
the preset x batch table against the reference throughput, each optimisation switched off on
its own beside what was predicted before measuring it, the masking costs, and the input
pipeline with real images. Every figure in the report comes from FILE.

Groups: ``table`` (each preset at the reference batches, compiled, plus eager at batch 256),
``ablation`` (latent_mim at 256 with one optimisation off per run), ``masking``, ``data``
(the input pipeline alone and end to end; needs ``--data``, an image dataset such as Imagenette)
run on a GPU; ``cpu`` (each preset at the micro config on the CPU, fp32 and bf16, compiled,
and with real 32-px images from ``--cpu-data``, e.g. CIFAR-10) and ``cpu-baseline`` (the CPU
reference comparison's configuration, timed with this checkout and with an earlier revision in
alternation, the earlier one extracted by ``git archive`` under ``.perf-baseline/``) are asked
for by name: ``--groups cpu,cpu-baseline``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("table", "ablation", "masking", "data", "cpu", "cpu-baseline")
GPU_GROUPS = ("table", "ablation", "masking", "data")  # what `run` measures unless --groups says otherwise
CPU_GROUPS = ("cpu", "cpu-baseline")

# The authors' implementations, timed on one H100: fp16 autocast, AdamW, synthetic images on the GPU.
REFERENCE: dict[str, dict[int, float]] = {
    "latent_mim": {128: 1230, 256: 1838, 512: 2160},
    "pilamim": {128: 1258, 256: 1707},
    "mae": {256: 2767},
}
REFERENCE_GFLOP = {"latent_mim": 66.7, "pilamim": 89.9, "mae": 58.8}
MATMUL_PEAK_TFLOPS = 800.0  # a bf16 8192^3 matmul on the same H100
BEST = ["--compile", "model"]  # with bench.py's defaults: bf16, fused attention, fused AdamW, no per-step sync


@dataclass(frozen=True)
class Run:
    name: str
    group: str
    script: str  # file in scripts/
    args: tuple[str, ...]
    baseline: str | None = None  # the run this one switches one thing off from
    predicted: str = ""  # written before the measurement
    revision: str | None = None  # run with this git revision's code in place of the checkout's


@dataclass
class Plan:
    runs: list[Run] = field(default_factory=list)

    def add(self, *runs: Run) -> None:
        self.runs.extend(runs)

    def by_name(self) -> dict[str, Run]:
        return {r.name: r for r in self.runs}


EAGER = "latent_mim/b256/eager"
COMPILE_PREDICTION = (
    "10-30 % fewer images/s than compiled: eager runs LayerNorm, GELU, bias and residual adds as separate "
    "memory-bound kernels, compilation fuses them into their neighbours."
)
# (label, switches, baseline run, prediction written before measuring)
ABLATIONS: list[tuple[str, tuple[str, ...], str, str]] = [
    ("compile blocks", ("--compile", "blocks"), "latent_mim/b256",
     "Within 5 % of the whole-step graph: blocks and projectors hold nearly all FLOPs; what stays eager "
     "(masking, gathers, losses) is a few ms."),
    ("fp32 (no autocast)", ("--precision", "fp32", "--compile", "none"), EAGER,
     "4x or more slower than eager bf16: without TF32, fp32 matmuls run at under a tenth of the bf16 rate, and "
     "activations take twice the memory."),
    ("fp16 + GradScaler", ("--precision", "fp16", "--compile", "none"), EAGER,
     "Within 3 % of eager bf16: the same matmul rate; the scaler's inf check adds one host sync per step."),
    ("math attention", ("--attn", "math", "--compile", "none"), EAGER,
     "10-20 % slower than eager bf16: attention is about 4 % of the FLOPs at 177 tokens, but the math path writes "
     "and re-reads the (B, heads, N, N) scores several times per layer in both passes."),
    ("AdamW for-loop", ("--adamw", "loop", "--compile", "none"), EAGER,
     "3-10 % slower than eager bf16: about 300 parameter tensors times ~10 kernels; the update itself moves ~4 GB "
     "(1-2 ms), the launches cost more than that."),
    ("AdamW foreach", ("--adamw", "foreach", "--compile", "none"), EAGER,
     "Within 2 % of the fused kernel: multi-tensor launches already amortise most of the overhead."),
    ("host sync every step", ("--sync-every-step", "--compile", "none"), EAGER,
     "1-3 % slower than eager bf16 at batch 256: the GPU idles while the host launches the next step's first "
     "kernels; the step is long enough to hide the rest."),
    ("activation checkpointing", ("model.grad_checkpointing=true", "--compile", "none"), EAGER,
     "About 3 % slower than eager bf16 (the context encoder's forward, ~3 % of the FLOPs, runs twice) with "
     "slightly lower peak memory: it pays off only for large encoders."),
]
# The micro config on a CPU: the same presets at a 192-wide, 6-deep ViT on an 8x8 grid of 32-px images.
CPU_PRESETS = ("latent_mim", "mae", "pilamim")
# 20 timed steps at batch 128 after 2 warm-up ones: 4 steps after 1 put the compiled latent_mim step at +26 %,
# where 20 interleaved steps found +6 %, with 11 % between two eager runs. A smaller batch times more steps, so
# that every row times the same 2,560 images: 20 steps at batch 32 (under 5 s) put the AdamW loop 13 % ahead of
# the fused kernel that an interleaved pair had found 6 % faster.
CPU_IMAGES_TIMED = 2560
CPU_BATCH = {"default": 32}  # the batch each preset trains with; 128 unless named
CPU_DEFAULT = ("default",)  # the default run's own step, at its own batch
# A reference implementation of each method in the same micro config, timed with the same batch on a quiet
# 2-core CPU with native bf16 (avx512_bf16) under torch.autocast("cpu", bfloat16) and in fp32.
CPU_REFERENCE: dict[str, dict[str, float]] = {
    "latent_mim": {"bf16": 380, "fp32": 155},
    "mae": {"bf16": 313},
    "pilamim": {"bf16": 203},
}
CPU_REFERENCE_MACHINE = "2-core CPU with avx512_bf16"
CPU_EAGER = "cpu/latent_mim/fp32"
# (preset, precision, train.compile, prediction written first); the baseline is that preset's eager run.
# The mae, pilamim and default predictions come from an interleaved 20-step run on a 2-core AVX2 CPU.
CPU_COMPILE: list[tuple[str, str, str, str]] = [
    ("latent_mim", "fp32", "model",
     "10-25 % more images/s than eager fp32: at 192 wide the matmuls are small, so LayerNorm, GELU, bias and "
     "residual adds (separate passes over memory in eager) are a visible share; inductor fuses them into the "
     "matmuls' neighbours as vectorised C++ loops. The first step compiles for minutes."),
    ("latent_mim", "fp32", "blocks",
     "Within 5 % of the whole-step graph (the blocks hold most of the elementwise work) and a shorter first "
     "step: the six identical blocks share one compiled graph."),
    ("mae", "fp32", "model", "About +6 % over eager fp32 (the interleaved run: 117 against 110 images/s)."),
    ("pilamim", "fp32", "model", "About +20 % over eager fp32 (the interleaved run: 88 against 72 images/s): two "
     "self-attention decoders hold many small elementwise ops for inductor to fuse."),
    ("default", "fp32", "model", "10-15 % fewer images/s than eager (the interleaved run: 77 against 87 images/s): at "
     "batch 32 a compiled step saves too little to pay for its graph's overhead."),
    ("latent_mim", "bf16", "model",
     "On native bf16: 10-30 % over eager bf16 (autocast's casts fuse into the elementwise ops). Without native "
     "bf16 it stays below fp32."),
]
# (preset, precision, label, bench switches, prediction written first): one switch away from the trainer's own
# choice, against that preset's eager run. The predictions come from an interleaved 8-step run on a 2-core Xeon
# with avx512_bf16 (two rounds, fused then manual).
CPU_SWITCHES: list[tuple[str, str, str, tuple[str, ...], str]] = [
    ("latent_mim", "bf16", "fused-attention", ("--attn", "fused"),
     "20-30 % fewer images/s than the manual kernel that train.attention=auto picks here (154 and 180 against 197 and "
     "222): torch's fused CPU attention runs its bf16 backward slower than two bf16 matmuls and a softmax."),
    ("mae", "bf16", "fused-attention", ("--attn", "fused"),
     "About 45 % fewer (144 and 175 against 290 and 314): the MAE decoder attends over all 64 cells, where the "
     "fused backward costs most."),
    ("pilamim", "bf16", "fused-attention", ("--attn", "fused"), "30-45 % fewer (121 and 119 against 224 and 176)."),
    ("default", "bf16", "fused-attention", ("--attn", "fused"), "25-35 % fewer (132 and 103 against 186 and 155)."),
    ("latent_mim", "bf16", "manual-everywhere", ("--attn", "manual"),
     "3-10 % fewer images/s than auto: the EMA target encoder's gradient-free forward (about a third of the step) "
     "runs the manual kernel, which took 6-36 % longer than the fused one there in three interleaved pairs."),
    ("latent_mim", "bf16", "glibc-malloc", ("--host-alloc", "glibc"),
     "5-25 % fewer images/s than with freed memory retained (three interleaved pairs: 158, 171, 225 against 186, 220, "
     "232), and 3-4 times the page faults per step: glibc maps the step's larger activations afresh from the kernel "
     "and trims its heap after them, so their pages fault in again on every step."),
    ("default", "bf16", "glibc-malloc", ("--host-alloc", "glibc"),
     "0-15 % fewer (two pairs: 166 and 168 against 193 and 142, too noisy to call): at batch 32 fewer blocks outgrow "
     "glibc's adaptive threshold, so fewer page faults are left to save."),
    ("default", "bf16", "adamw-loop", ("--adamw", "loop"),
     "5-15 % fewer images/s than the fused AdamW: the per-parameter loop over the 138 tensors runs about 600 small "
     "kernels, each wrapping a Python scalar, about 20 ms a step (48-51 against 17 ms in the optimizer's share of "
     "two interleaved pairs on a loaded machine) against a step of about 160 ms at batch 32."),
    ("latent_mim", "bf16", "adamw-loop", ("--adamw", "loop"),
     "2-5 % fewer: the same fixed cost against a step four times longer at batch 128."),
]
# The CPU reference comparison: the reference implementations were timed beside mimkit at revision
# BASELINE_REVISION, each in the configuration below (batch 128, the micro encoder, decoders 128 wide with 4
# heads). The reference code is not part of this project, so mimkit is measured against that revision in
# alternation on the machine at hand, and the reference figures are carried over through the revision's ratio.
BASELINE_REVISION = "397e962"
_MICRO_ENCODER = ("--model", "vit_tiny_patch16_224", "model.img_size=32", "model.patch_size=4", "model.embed_dim=192",
                  "model.depth=6", "model.num_heads=3")


def _decoder(head: str, depth: int) -> tuple[str, ...]:
    return (f"objectives.{head}.decoder.dim=128", f"objectives.{head}.decoder.num_heads=4", f"objectives.{head}.decoder.depth={depth}")


_LATENT = (*_decoder("latent", 3), "objectives.latent.projector.hidden_dim=1024", "masking.gap=1")
# name -> (preset, precision, keys, reference images/s, the revision's images/s beside it on the reference machine)
BASELINE_CASES: dict[str, tuple[str, str, tuple[str, ...], float, float]] = {
    "latent_mim/bf16": ("latent_mim", "bf16", _LATENT, 380, 261),
    "mae/bf16": ("mae", "bf16", _decoder("pixel", 4), 313, 311),
    "pilamim/bf16": ("pilamim", "bf16", (*_decoder("pixel", 3), *_decoder("latent", 3)), 203, 202),
    "latent_mim/fp32": ("latent_mim", "fp32", _LATENT, 155, 157),
}
BASELINE_ROUNDS = 2  # each side timed twice, alternating; the best of each side is compared
CPU_DATA_PREDICTION = ("Within 5 % of synthetic images: decoding and cropping a 32-px PNG costs ~0.1 ms, ~15 ms per "
                       "batch of 128 against a step of a second or more, though the workers share the 2 cores.")
# (label, bench switches, prediction written first): the default run's step fed by its own data pipeline
# (the embedded slice), against the same step on synthetic images. The predictions come from three interleaved
# rounds of 60 steps on a 2-core Xeon with avx512_bf16, a busy one (synthetic 128, 133, 159 images/s).
CPU_DEFAULT_DATA: list[tuple[str, tuple[str, ...], str]] = [
    ("data", ("--data", "embedded"),
     "5-12 % fewer images/s than synthetic images (122, 136, 144): the slice is decoded once (data.cache=auto), so "
     "a sample costs a crop and a flip, about 0.25 ms, about 8 ms per batch of 32 in the main process "
     "(data.num_workers=0) against a step of about 200 ms."),
    ("data-decode-every-read", ("--data", "embedded", "data.cache=false", "data.num_workers=2"),
     "15-25 % fewer images/s than synthetic (76, 110, 128): decoding each PNG, reading its row and converting it "
     "cost about 0.8 ms per image, in two workers that take turns on the two cores the step uses."),
]
MASKING_PREDICTION = (
    "device: under 1 ms; host_masks: 1-3 ms plus a blocking copy; loops: hundreds of ms (50k slices per batch), "
    "as long as several training steps."
)


def build_plan(data: str | None, workers: int, cpu_data: str | None = None) -> Plan:
    """The runs in the order they execute: what the 2x comparison needs first (batch 256), the
    other reference batch sizes last; then the CPU runs."""
    plan = Plan()
    for preset in REFERENCE:
        plan.add(Run(f"{preset}/b256", "table", "bench.py", ("--preset", preset, "--batch", "256", *BEST)))
    for preset in REFERENCE:
        plan.add(Run(f"{preset}/b256/eager", "table", "bench.py", ("--preset", preset, "--batch", "256", "--compile", "none"),
                     f"{preset}/b256", COMPILE_PREDICTION))
    for label, switches, baseline, predicted in ABLATIONS:
        plan.add(Run(f"ablation/{label}", "ablation", "bench.py", ("--preset", "latent_mim", "--batch", "256", *switches), baseline, predicted))
    for preset in ("latent_mim", "mae"):
        plan.add(Run(f"masking/{preset}", "masking", "bench_masking.py", ("--preset", preset, "--batch", "256"), predicted=MASKING_PREDICTION))
    if data:
        loader = (f"data.num_workers={workers}",)
        device_aug = ("data.augment=device", "data.decode_size=112")
        for preset, side in (("mae", "224 px"), ("latent_mim", "280 px")):
            common = ("--preset", preset, "--batch", "256", "--data", data, *loader)
            plan.add(
                Run(f"data/{preset}/cpu-aug/pipeline", "data", "bench.py", (*common, "--data-only", "--steps", "30"),
                    predicted=f"{side}: about 300 img/s per worker (decode, crop, resize, flip, normalise on the CPU)."),
                Run(f"data/{preset}/device-aug/pipeline", "data", "bench.py", (*common, "--data-only", "--steps", "30", *device_aug),
                    predicted="About 1000 img/s per worker (decode only; the crop runs on the GPU)."),
                Run(f"data/{preset}/device-aug/end-to-end", "data", "bench.py", (*common, *BEST, *device_aug), f"{preset}/b256",
                    "Within 5 % of the synthetic figure when the pipeline alone is faster than the model."),
            )
    for preset, batches in REFERENCE.items():
        for batch in (b for b in batches if b != 256):
            plan.add(Run(f"{preset}/b{batch}", "table", "bench.py", ("--preset", preset, "--batch", str(batch), *BEST)))
    add_cpu_runs(plan, cpu_data)
    add_baseline_runs(plan)
    return plan


def cpu_bench(preset: str, precision: str, compile: str = "none", *extra: str) -> tuple[str, ...]:
    expr = preset if preset == "default" else f"{preset}+micro"  # the default is latent_mim+micro already
    batch = CPU_BATCH.get(preset, 128)
    return ("--preset", expr, "--batch", str(batch), *cpu_timing(batch), "--precision", precision, "--compile", compile, *extra)


def cpu_timing(batch: int) -> tuple[str, ...]:
    return ("--device", "cpu", "--steps", str(CPU_IMAGES_TIMED // batch), "--warmup", "2", "--split-steps", "1")


def add_cpu_runs(plan: Plan, cpu_data: str | None) -> None:
    """fp32 first (what a CPU without native bf16 trains in), then bf16; eager, then compiled."""
    for precision in ("fp32", "bf16"):
        for preset in (*CPU_PRESETS, *CPU_DEFAULT):
            ops = ("--ops", "15") if preset == "latent_mim" else ()  # where an eager step's time goes, operator by operator
            plan.add(Run(f"cpu/{preset}/{precision}", "cpu", "bench.py", cpu_bench(preset, precision, "none", *ops)))
        for preset, prec, mode, predicted in (c for c in CPU_COMPILE if c[1] == precision):
            baseline = f"cpu/{preset}/{prec}"
            plan.add(Run(f"{baseline}/compile-{mode}", "cpu", "bench.py", cpu_bench(preset, prec, mode), baseline, predicted))
        for preset, prec, label, switches, predicted in (c for c in CPU_SWITCHES if c[1] == precision):
            baseline = f"cpu/{preset}/{prec}"
            plan.add(Run(f"{baseline}/{label}", "cpu", "bench.py", cpu_bench(preset, prec, "none", *switches), baseline, predicted))
        if precision == "bf16":
            baseline = f"cpu/{CPU_DEFAULT[0]}/{precision}"
            for label, switches, predicted in CPU_DEFAULT_DATA:
                plan.add(Run(f"{baseline}/{label}", "cpu", "bench.py", cpu_bench(CPU_DEFAULT[0], precision, "none", *switches),
                             baseline, predicted))
        if cpu_data and precision == "fp32":
            plan.add(Run(f"{CPU_EAGER}/data", "cpu", "bench.py", cpu_bench("latent_mim", precision, "none", "--data", cpu_data),
                         CPU_EAGER, CPU_DATA_PREDICTION))


def add_baseline_runs(plan: Plan) -> None:
    """Round by round, each case with the revision's code and then with the checkout's."""
    for rnd in range(1, BASELINE_ROUNDS + 1):
        for name, (preset, precision, keys, _, _) in BASELINE_CASES.items():
            common = ("--batch", "128", *cpu_timing(128), "--precision", precision, *_MICRO_ENCODER, *keys)
            plan.add(Run(f"cpu-baseline/{name}/{BASELINE_REVISION}/{rnd}", "cpu-baseline", "bench.py",
                         ("--preset", f"configs/{preset}.yaml", *common), revision=BASELINE_REVISION),
                     Run(f"cpu-baseline/{name}/current/{rnd}", "cpu-baseline", "bench.py", ("--preset", preset, *common)))


# --------------------------------------------------------------------------- running


def checkout(revision: str, where: Path | None = None) -> Path:
    """The revision's files in ``where`` (default .perf-baseline/REV; extracted once), importable
    from there: its objectives/ and configs/ are also linked into its mimkit/ for revisions that
    install them as mimkit.objectives and mimkit.configs."""
    where = where or ROOT / ".perf-baseline" / revision
    if not where.is_dir():  # extracted beside it and renamed: an interrupted extraction is never taken for whole
        part = where.with_name(where.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(part)], input=archive, check=True)
        for sub in ("objectives", "configs"):
            if (part / sub).is_dir() and not (part / "mimkit" / sub).exists():
                (part / "mimkit" / sub).symlink_to(Path("..") / sub)
        part.rename(where)
    return where


def current(results: dict[str, dict[str, Any]], plan: Plan) -> dict[str, dict[str, Any]]:
    """The entries measured with the command their run has now: a run whose command changed is measured again."""
    runs = plan.by_name()
    return {n: e for n, e in results.items() if n in runs and e.get("command") == _cmd(runs[n])}


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """name -> the last entry for it (torn lines from a killed run are skipped)."""
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[entry["name"]] = entry
    return out


def execute(run: Run, timeout_s: float) -> dict[str, Any]:
    where, env = ROOT, None
    if run.revision:  # its own code first on the path, ahead of the installed mimkit
        where = checkout(run.revision)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, str(where / "scripts" / run.script), *run.args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = 124, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timed out"
    records = []
    for line in stdout.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    entry = {
        "name": run.name,
        "group": run.group,
        "command": _cmd(run),
        "wall_s": round(time.perf_counter() - start, 1),
        "rc": rc,
        "records": records,
    }
    if rc != 0:
        entry["stderr_tail"] = stderr[-2000:]
    return entry


def run_plan(args: argparse.Namespace) -> int:
    from mimkit.precision import cpu_has_native_bf16  # here, not at the top: report and list need no torch

    plan = build_plan(args.data, args.workers, args.cpu_data)
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {n for n, e in current(read_results(results_path), plan).items() if e["rc"] == 0}
    groups = set(args.groups.split(","))
    unknown = groups - set(GROUPS)
    if unknown:
        print(f"error: --groups: unknown {sorted(unknown)}; choose from {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    todo = [r for r in plan.runs if r.group in groups and r.name not in done and (not args.only or r.name in args.only)]
    if groups & set(CPU_GROUPS) and not cpu_has_native_bf16():  # emulated bf16 runs for many minutes and says nothing
        skipped = [r.name for r in todo if r.group in CPU_GROUPS and "bf16" in r.args]
        todo = [r for r in todo if r.name not in skipped]
        if skipped:
            print(f"note: this CPU has no native bf16; skipped {', '.join(skipped)}", file=sys.stderr)
    if args.data is None and any(r.group == "data" for r in plan.runs if r.group in groups):
        print("note: the data group needs --data DIR; skipped", file=sys.stderr)
    deadline = time.monotonic() + args.time_budget * 60 if args.time_budget else None
    failed = 0
    for run in todo:
        left = deadline - time.monotonic() if deadline else args.run_timeout
        if left <= 30:
            print(f"time budget spent; {len(todo) - todo.index(run)} runs left for the next call", flush=True)
            break
        entry = execute(run, min(left, args.run_timeout))
        with results_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        failed += entry["rc"] != 0
        print(f"{run.name:48s} rc={entry['rc']:<4d} {entry['wall_s']:7.1f}s  {_headline(entry)}", flush=True)
    return 1 if failed else 0


def _headline(entry: dict[str, Any]) -> str:
    recs = entry["records"]
    if not recs:
        tail = entry.get("stderr_tail", "").strip().splitlines()
        return tail[-1] if tail else ""
    r = recs[0]
    if "variant" in r:
        return " ".join(f"{x['variant']}={x['ms']}ms" for x in recs)
    if "error" in r:
        return r["error"]
    return f"{r['images_per_s']:.0f} img/s" + (f", {r['tflop_per_s']:.0f} TFLOP/s, {r['peak_mem_gib']} GiB" if "tflop_per_s" in r else "")


# --------------------------------------------------------------------------- the report


def _rec(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    entry = results.get(name)
    if not entry or entry["rc"] != 0 or not entry["records"] or "error" in entry["records"][0]:
        return None
    return entry["records"][0]


def _status(results: dict[str, dict[str, Any]], name: str) -> str:
    entry = results.get(name)
    if entry is None:
        return "not run"
    if entry["rc"] != 0 or not entry["records"]:
        return f"failed (exit {entry['rc']})"
    return entry["records"][0].get("error", "no record")


def _pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f} %"


def render(results: dict[str, dict[str, Any]], plan: Plan) -> str:
    runs = plan.by_name()
    first = next((r for n, run in runs.items() if run.group in GPU_GROUPS and (r := _rec(results, n)) and r.get("device_name")), None)
    lines = ["# Performance", ""]
    lines += [
        "Generated by `python scripts/perf_suite.py report` from the measurements of `scripts/perf_suite.py run`; "
        "do not edit by hand. Each row's command is in the tables below; every measurement ran in its own process. "
        "To measure again: `python scripts/perf_suite.py run --results perf.jsonl --data DIR --time-budget 9` (repeat "
        "until nothing is left; finished runs are skipped), then `python scripts/perf_suite.py report --results perf.jsonl`.",
        "",
    ]
    if first:
        lines += [f"- Device: {first['device_name']}; torch {first['torch']}.", ""]
    else:
        lines += ["**The GPU sections are to be measured**: no GPU run has filled them yet (`run` without `--groups cpu` "
                  "on a machine with a GPU); the CPU section is at the end.", ""]
    lines += [
        "Throughput counts optimizer steps on synthetic images already on the GPU (as the reference did). TFLOP/s is "
        "the forward + backward FLOPs counted once by `FlopCounterMode`, divided by the step time. The reference figures "
        "are the authors' implementations timed on one H100 (fp16 autocast); their peak memory was not recorded. \"Of matmul peak\" divides TFLOP/s "
        f"by {MATMUL_PEAK_TFLOPS:.0f}, the rate of a large bf16 matmul on that GPU: the floor on a step's time.",
        "",
        "## Preset x batch",
        "",
        "| preset | batch | compile | images/s | TFLOP/s | of matmul peak | peak GiB | host syncs/step | reference images/s | ratio | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(REFERENCE)
    table = sorted((r for r in plan.runs if r.group == "table"), key=lambda r: (order.index(r.args[1]), int(r.args[3]), r.name))
    for run in table:
        preset, batch = run.args[1], int(run.args[3])
        ref = REFERENCE[preset].get(batch)
        rec = _rec(results, run.name)
        if rec is None:
            lines.append(f"| {preset} | {batch} | {_arg(run, '--compile')} | {_status(results, run.name)} | | | | | {ref or ''} | | `{_shown(results, run)}` |")
            continue
        ratio = f"{rec['images_per_s'] / ref:.2f}x" if ref else ""
        lines.append(
            f"| {preset} | {batch} | {rec['compile']} | {rec['images_per_s']:.0f} | {rec['tflop_per_s']:.0f} | "
            f"{rec['tflop_per_s'] / MATMUL_PEAK_TFLOPS * 100:.0f} % | {rec['peak_mem_gib']} | "
            f"{rec['host_syncs_per_step']} | {ref or ''} | {ratio} | `{_shown(results, run)}` |"
        )
    lines += ["", "GFLOP per image (forward + backward) against the reference's:", "",
              "| preset | mimkit | reference |", "|---|---|---|"]
    for preset in REFERENCE:
        rec = _rec(results, f"{preset}/b256")
        lines.append(f"| {preset} | {rec['gflop_per_image'] if rec else 'not run'} | {REFERENCE_GFLOP[preset]} |")

    split = _rec(results, EAGER)
    if split and split.get("split_ms"):
        lines += ["", "Where an eager `latent_mim` step at batch 256 spends its time (ms, CUDA events):", "",
                  "| " + " | ".join(split["split_ms"]) + " |", "|" + "---|" * len(split["split_ms"]),
                  "| " + " | ".join(f"{v:.1f}" for v in split["split_ms"].values()) + " |"]

    lines += ["", "## Each optimisation switched off on its own", "",
              "`latent_mim`, ViT-B/16, 280 px, batch 256. Each row changes one thing from its baseline; the prediction was "
              "written before the measurement.", "",
              "| switched off | baseline | images/s | baseline images/s | change | peak GiB | predicted | command |",
              "|---|---|---|---|---|---|---|---|"]
    for run in (r for r in plan.runs if r.group == "ablation" or r.name == EAGER):
        label = run.name.split("/", 1)[1] if run.group == "ablation" else "compile none"
        rec, base = _rec(results, run.name), _rec(results, run.baseline or "")
        if rec is None or base is None:
            lines.append(f"| {label} | {run.baseline} | {_status(results, run.name)} | | | | {run.predicted} | `{_shown(results, run)}` |")
            continue
        lines.append(
            f"| {label} | {run.baseline} | {rec['images_per_s']:.0f} | {base['images_per_s']:.0f} | "
            f"{_pct(rec['images_per_s'], base['images_per_s'])} | {rec['peak_mem_gib']} | {run.predicted} | `{_shown(results, run)}` |"
        )

    lines += ["", "## Masking on the device", "", "| preset | variant | ms per batch of 256 | share of the compiled step | command |", "|---|---|---|---|---|"]
    for run in (r for r in plan.runs if r.group == "masking"):
        entry = results.get(run.name)
        preset = run.args[1]
        step = _rec(results, f"{preset}/b256")
        if not entry or entry["rc"] != 0:
            lines.append(f"| {preset} | {_status(results, run.name)} | | | `{_shown(results, run)}` |")
            continue
        for r in entry["records"]:
            share = f"{r['ms'] / step['step_ms'] * 100:.1f} %" if step else ""
            lines.append(f"| {preset} | {r['variant']} | {r['ms']} | {share} | `{_shown(results, run)}` |")
    lines += ["", f"Predicted: {MASKING_PREDICTION}"]

    lines += ["", "## Real images", "",
              "| run | images/s | synthetic images/s | workers | predicted | command |", "|---|---|---|---|---|---|"]
    for run in (r for r in plan.runs if r.group == "data"):
        rec = _rec(results, run.name)
        synth = _rec(results, run.baseline) if run.baseline else None
        if rec is None:
            lines.append(f"| {run.name} | {_status(results, run.name)} | | | {run.predicted} | `{_shown(results, run)}` |")
            continue
        synth_ips = f"{synth['images_per_s']:.0f}" if synth else ""
        lines.append(f"| {run.name} | {rec['images_per_s']:.0f} | {synth_ips} | {rec['num_workers']} | {run.predicted} | `{_shown(results, run)}` |")
    lines += render_cpu(results, plan)
    lines += render_baseline(results, plan)
    return "\n".join(lines) + "\n"


def render_cpu(results: dict[str, dict[str, Any]], plan: Plan) -> list[str]:
    cpu_runs = [r for r in plan.runs if r.group == "cpu"]
    first = next((r for run in cpu_runs if (r := _rec(results, run.name))), None)
    lines = ["", "## CPU: the micro config", "",
             "Each preset at its `micro` overlay (a 192-wide, 6-deep ViT on an 8x8 grid of 4-px patches, 32-px images; "
             "heads scaled by the overlay's rule; `default` is latent_mim+micro at the default run's batch), synthetic "
             "images unless stated, one process per measurement, torch's default CPU threads, and the trainer's own "
             "attention kernel (`train.attention: auto`: manual softmax(q k^T) v under bf16 on a CPU, the fused kernel "
             "in fp32) and AdamW (the fused kernel). GFLOP/s is the counted "
             "forward + backward FLOPs over the step time; \"of matmul rate\" divides it by the rate of a large matmul at the same precision, timed on the spot on the same CPU. "
             f"The reference figures were measured on another machine ({CPU_REFERENCE_MACHINE}), so no ratio is computed "
             "against them unless that machine ran both.", ""]
    if first:
        native = "yes" if first.get("cpu_native_bf16") else "no: bf16 autocast is emulated here, and `auto` precision trains in fp32"
        lines += [f"- Device: {first['device_name']}, {first['cpu_threads']} threads; native bf16 matrix instructions: {native}; "
                  f"torch {first['torch']}.", ""]
    lines += ["| preset | batch | precision | compile | images/s | GFLOP/image | GFLOP/s | of matmul rate | reference images/s | command |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for run in (r for r in cpu_runs if r.baseline is None):
        preset, precision = run.name.split("/")[1:3]
        ref = CPU_REFERENCE.get(preset, {}).get(precision, "")
        rec = _rec(results, run.name)
        if rec is None:
            lines.append(f"| {preset} | {_arg(run, '--batch')} | {precision} | none | {_status(results, run.name)} | | | | {ref} | "
                         f"`{_shown(results, run)}` |")
            continue
        lines.append(f"| {preset} | {rec['batch']} | {precision} | {rec['compile']} | {rec['images_per_s']:.1f} | {rec['gflop_per_image']:.3f} | "
                     f"{rec['tflop_per_s'] * 1e3:.0f} | {rec['matmul_share'] * 100:.0f} % | {ref} | `{_shown(results, run)}` |")
    lines += ["", "One switch at a time against its eager baseline; the prediction was written before the measurement. A "
              "compiled row's first step depends on inductor's on-disk cache: minutes when cold, seconds when an earlier "
              "run compiled the same graphs.", "",
              "| run | images/s | baseline images/s | change | page faults per step (baseline) | first step s | predicted | command |",
              "|---|---|---|---|---|---|---|---|"]
    for run in (r for r in cpu_runs if r.baseline):
        rec, base = _rec(results, run.name), _rec(results, run.baseline or "")
        if rec is None or base is None:
            lines.append(f"| {run.name} | {_status(results, run.name)} | | | | | {run.predicted} | `{_shown(results, run)}` |")
            continue
        faults = f"{rec.get('page_faults_per_step', '–')} ({base.get('page_faults_per_step', '–')})"
        change = (_pct(rec["images_per_s"], base["images_per_s"]) if (rec["steps"], rec["warmup"]) == (base["steps"], base["warmup"])
                  else f"baseline timed with {base['steps']} steps, this with {rec['steps']}")  # two protocols: no ratio
        lines.append(f"| {run.name} | {rec['images_per_s']:.1f} | {base['images_per_s']:.1f} | {change} | {faults} | "
                     f"{rec['first_step_s']} | {run.predicted} | `{_shown(results, run)}` |")
    for name in (CPU_EAGER, "cpu/latent_mim/bf16"):
        rec = _rec(results, name)
        if not rec or not rec.get("top_ops"):
            continue
        step = rec["step_ms"]
        lines += ["", f"Where an eager `{name}` step ({step:.0f} ms) goes:", ""]
        if rec.get("split_ms"):
            lines += ["| " + " | ".join(rec["split_ms"]) + " |", "|" + "---|" * len(rec["split_ms"]),
                      "| " + " | ".join(f"{v:.0f}" for v in rec["split_ms"].values()) + " |", ""]
        lines += ["| operator (torch.profiler, one step) | self ms | share of the step | calls |", "|---|---|---|---|"]
        lines += [f"| `{op['op']}` | {op['self_ms']:.1f} | {op['self_ms'] / step * 100:.1f} % | {op['calls']} |" for op in rec["top_ops"]]
    return lines


def render_baseline(results: dict[str, dict[str, Any]], plan: Plan) -> list[str]:
    # the machine's description from this checkout's own records (an older bench may not write every field)
    first = next((r for run in plan.runs if run.group == "cpu-baseline" and not run.revision and (r := _rec(results, run.name))), None)
    rev = BASELINE_REVISION
    lines = ["", f"## CPU: against the reference implementations, through revision {rev}", "",
             f"The reference implementations were timed beside mimkit at revision `{rev}` on a {CPU_REFERENCE_MACHINE}, "
             "in the configuration of each row's command (batch 128, the micro encoder, decoders 128 wide with 4 heads; "
             "the latent decoder 3 deep with a 3x1024 projector and gap 1, the MAE decoder 4 deep, the PiLaMIM decoders "
             f"3 deep). Their code is not part of this project, so this checkout and `{rev}` run here in alternation, "
             f"{BASELINE_ROUNDS} times each, the best of each side kept; the estimate against the reference multiplies "
             f"the ratio measured here by the reference's own ratio to `{rev}` there. It assumes the two implementations "
             "keep their relative speed from one machine to the other; where the revision's own two figures differ much, the "
             "machines (or torch builds) differ much, and the estimate is only as good as that assumption.", ""]
    if first:
        lines += [f"- Device: {first['device_name']}, {first['cpu_threads']} threads; torch {first['torch']}.", ""]
    lines += [f"| case | `{rev}` images/s | this checkout images/s | ratio here | reference images/s | `{rev}` images/s beside it "
              "| estimated ratio to the reference | command (this checkout) |", "|---|---|---|---|---|---|---|---|"]
    for name, (_, _, _, ref, ref_base) in BASELINE_CASES.items():
        old, new = _best_of_rounds(results, name, rev), _best_of_rounds(results, name, "current")
        shown = _shown(results, plan.by_name()[f"cpu-baseline/{name}/current/1"])
        if old is None or new is None:
            lines.append(f"| {name} | {old or 'not run'} | {new or 'not run'} | | {ref} | {ref_base} | | `{shown}` |")
            continue
        here = new / old
        lines.append(f"| {name} | {old:.1f} | {new:.1f} | {here:.2f}x | {ref} | {ref_base} | {here * ref_base / ref:.2f}x | `{shown}` |")
    return lines


def _best_of_rounds(results: dict[str, dict[str, Any]], case: str, side: str) -> float | None:
    """The best images/s of one side of a baseline case, once every round of it is measured."""
    got = [r["images_per_s"] for i in range(1, BASELINE_ROUNDS + 1) if (r := _rec(results, f"cpu-baseline/{case}/{side}/{i}"))]
    return max(got) if len(got) == BASELINE_ROUNDS else None


def _arg(run: Run, flag: str) -> str:
    return run.args[run.args.index(flag) + 1] if flag in run.args else ""


def _cmd(run: Run) -> str:
    return " ".join(["python", f"scripts/{run.script}", *run.args])


def _shown(results: dict[str, dict[str, Any]], run: Run) -> str:
    """The command a row's figures came from: the recorded one (it may predate a change of protocol), else the plan's."""
    entry = results.get(run.name)
    return entry["command"] if entry and entry.get("command") else _cmd(run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="measure what FILE does not hold yet")
    run.add_argument("--results", required=True)
    run.add_argument("--groups", default=",".join(GPU_GROUPS), help=f"of {', '.join(GROUPS)} (default: %(default)s)")
    run.add_argument("--only", nargs="*", help="run only these names")
    run.add_argument("--data", help="an image dataset for the data group (directory or Hub id)")
    run.add_argument("--workers", type=int, default=12, help="data loader workers (default: %(default)s)")
    run.add_argument("--cpu-data", help="a 32-px image dataset (e.g. CIFAR-10) for the cpu group's end-to-end run")
    run.add_argument("--time-budget", type=float, help="minutes after which no run starts")
    run.add_argument("--run-timeout", type=float, default=900, help="seconds one run may take (default: %(default)s)")
    rep = sub.add_parser("report", help="write the markdown from FILE")
    rep.add_argument("--results", required=True)
    rep.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    rep.add_argument("--data", default="DATA", help="the --data the runs used (for the commands shown)")
    rep.add_argument("--workers", type=int, default=12)
    rep.add_argument("--cpu-data", default="CIFAR10", help="the --cpu-data the runs used (for the commands shown)")
    lst = sub.add_parser("list", help="print the planned runs")
    lst.add_argument("--data", default="DATA")
    lst.add_argument("--workers", type=int, default=12)
    lst.add_argument("--cpu-data", default="CIFAR10")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return run_plan(args)
    plan = build_plan(args.data, args.workers, args.cpu_data)
    if args.cmd == "list":
        for r in plan.runs:
            print(f"{r.group:12s} {r.name:48s} {_cmd(r)}" + (f"  (at {r.revision})" if r.revision else ""))
        return 0
    results = read_results(Path(args.results))
    if not results:
        print(f"error: --results: {args.results} holds no measurements", file=sys.stderr)
        return 2
    Path(args.doc).write_text(render(results, plan))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
