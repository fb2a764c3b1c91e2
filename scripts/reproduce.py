"""Pretrain and evaluate the Latent MIM comparisons at small scale, then write docs/results.md.

    python scripts/reproduce.py --data-root .data --workers 12 --time-budget 25   # main + ablation tables
    python scripts/reproduce.py --data-root .data --tables main --datasets cifar10
    python scripts/reproduce.py --dry-run                # print every command, run nothing
    python scripts/reproduce.py --report-only            # rewrite results.md from the runs on disk

Every run is `python train.py --preset P --data D --output OUT/<dataset>/<name> [overrides]`, then
`python scripts/evaluate.py --checkpoint OUT/<dataset>/<name> --out OUT/<dataset>/<name>/metrics.json`.
A run with summary.json is not trained again, a run with checkpoints is continued with --resume, a
run with metrics.json is not evaluated again; each attempt's wall time, command and device accumulate
in OUT/<dataset>/<name>/timing.json. Trailing key=value arguments override the config of every run
(train.max_steps=2 for a smoke test). The plan, the geometry and the claim rules: docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
# scripts/evaluate.py would shadow the `evaluate` library for anything imported from here
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != SCRIPTS]

import yaml  # noqa: E402

from mimkit.checkpoint import step_dirs  # noqa: E402
from mimkit.config import ConfigError, load_config  # noqa: E402
from mimkit.platform_info import cpu_model  # noqa: E402
from mimkit.resume import config_diff  # noqa: E402

# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset and the encoder geometry used on it: a 14x14 grid as in the paper (224 / 16)."""

    key: str
    title: str
    image_px: int  # side of the stored images
    patch: int
    native: int  # the encoder's native side, grid * patch (images are resized to it)
    gap: int  # gap of the latent runs: patch / 4, the paper's 16:4
    epochs: int
    num_classes: int = 10
    overlay: str | None = None  # a scale overlay stacked on every preset (micro, micro64)
    holdout: int = 0  # train images held out for the learning-rate sweep

    @property
    def grid(self) -> int:
        return self.native // self.patch

    def crop(self, gap: int) -> int:
        return self.grid * (self.patch + gap)

    def describe(self) -> str:
        resize = f"{self.image_px} px" if self.image_px == self.native else f"{self.image_px} px resized to {self.native} px"
        return (
            f"{resize}, patch {self.patch}, {self.grid}×{self.grid} grid; training crop {self.crop(0)} px "
            f"(gap 0) or {self.crop(self.gap)} px (gap {self.gap})" + (f"; overlay `{self.overlay}`" if self.overlay else "")
        )


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", "CIFAR-10", image_px=32, patch=4, native=56, gap=1, epochs=4),
    "imagenette": DatasetSpec("imagenette", "Imagenette", image_px=112, patch=8, native=112, gap=2, epochs=20),
}
# The micro scale (a 2-core CPU): an 8x8 grid, the `micro` / `micro64` overlays' 192-wide, 6-deep ViT.
MICRO_DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", "CIFAR-10", image_px=32, patch=4, native=32, gap=1, epochs=4, overlay="micro", holdout=5000),
    "imagenette": DatasetSpec("imagenette", "Imagenette", image_px=112, patch=8, native=64, gap=2, epochs=20, overlay="micro64",
                              holdout=1000),
}
MAIN_PRESETS = ("naive_latent_mim", "mae", "latent_mim", "pilamim")  # the table's rows
RUN_ORDER = ("mae", "latent_mim", "pilamim", "naive_latent_mim")  # a partial table holds the main comparison first
MAIN_EVAL = ("--protocols", "nn", "knn", "linear", "sim")
ABLATION_EVAL = ("--protocols", "nn", "knn", "sim")
PIXELS_EVAL = ("--protocols", "nn", "knn", "linear")
DEFAULT_ABLATION_DATASET = "imagenette"
ALL_TABLES = ("main", "ablation")
WARMUP_FRACTION = 0.1
SAVE_EVERY = 500


@dataclass(frozen=True)
class Sweep:
    """The learning-rate protocol, the same for every preset: a short run (``fraction`` of the
    full schedule) at each base lr on the train split minus a seeded holdout; the lr with the
    best NN on the holdout trains the table's run. The test split is never looked at."""

    lrs: tuple[float, ...]
    fraction: float


@dataclass(frozen=True)
class Scale:
    """A reproduction scale: its datasets, batch, what else each table holds, where it writes."""

    name: str
    datasets: Mapping[str, DatasetSpec]
    batch: int
    model: str | None  # model.name of every run (None: the datasets' overlays choose)
    sweep: Sweep | None  # None: every run uses its preset's base lr
    baselines: bool  # rows for the encoder at initialisation and for raw pixels
    curves: bool  # NN after every epoch of the table runs, drawn per table
    results: str  # the report, relative to the repository root
    out: str  # run directories, relative to the repository root
    overrides: tuple[str, ...] = ()  # config overrides of every run of this scale


SCALES: dict[str, Scale] = {
    "gpu": Scale("gpu", DATASETS, 256, "vit_tiny_patch16_224", None, False, False, "docs/results.md", "runs/reproduce"),
    # the run directories live beside the report (checkpoints and encoders git-ignored), so the
    # finished runs travel with the repository and a later session resumes the table
    "micro": Scale("micro", MICRO_DATASETS, 256, None, Sweep((5e-4, 1.5e-3, 4.5e-3), 0.25), True, True,
                   "docs/results-micro.md", "docs/results-micro/runs",
                   ("train.eval_baseline=false", "train.trackers=[none]")),  # the init row replaces each run's own
}


@dataclass(frozen=True)
class RunSpec:
    """One pretraining run: its directory is OUT/<dataset>/<name>."""

    dataset: str
    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] | None = MAIN_EVAL  # None: not evaluated (a sweep run scores itself)
    kind: Literal["train", "sweep", "baseline"] = "train"
    lr_from: str | None = None  # the preset whose lr sweep picks this run's train.base_lr
    baseline: str | None = None  # a baseline row: "init" or "pixels" (scripts/evaluate.py --baseline)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


@dataclass(frozen=True)
class Row:
    run: str  # the RunSpec name within the table's dataset
    label: str
    change: str = ""


@dataclass(frozen=True)
class Table:
    key: str  # "main" or "ablation"
    title: str
    dataset: str
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Plan:
    runs: tuple[RunSpec, ...]
    tables: tuple[Table, ...]

    def run(self, dataset: str, name: str) -> RunSpec:
        return next(r for r in self.runs if r.dataset == dataset and r.name == name)


@dataclass(frozen=True)
class Step:
    """One row of the challenge progression: the overrides it adds to the previous row."""

    name: str
    label: str
    adds: tuple[str, ...]


def progression(gap: int) -> tuple[Step, ...]:
    """From the naive baseline to Latent MIM, one switch at a time (the paper's Tables 1-4).
    The last step lands exactly on the `latent_mim` preset (checked by the tests)."""
    return (
        Step("naive_latent_mim", "naive: joint target, MSE, 75%, gap 0, self-attn decoder", ()),
        Step("abl1_standalone", "target: standalone (own weights)", ("target.mode=standalone",)),
        Step("abl2_stopgrad", "target: shared weights + stop-grad", ("target.mode=stopgrad",)),
        Step("abl3_ema", "target: EMA", ("target.mode=ema",)),
        Step("abl4_patch_disc", "loss: patch discrimination", ("objectives.latent.loss=patch_disc",)),
        Step("abl5_mask90", "mask ratio 0.9", ("masking.ratio=0.9",)),
        Step("abl6_gap", f"gap {gap}", (f"masking.gap={gap}",)),
        Step("abl7_cross_attn", "decoder: cross-attention (with its CLS query)",
             ("objectives.latent.decoder.kind=cross_attn", "objectives.latent.decoder.cls_query=true")),
        Step("abl8_visual_cues", "decoder: cross-attention + visual cues", ("objectives.latent.decoder.visual_cues=true",)),
        Step("abl9_projector", "projector: MLP", ("objectives.latent.projector.kind=mlp",)),
        Step("latent_mim", "similarity constraint 0.1 (= latent_mim)", ("objectives.latent.similarity.coef=0.1",)),
    )


BASELINE_LABELS = {"init": "encoder at initialisation", "pixels": "raw pixels"}


def sweep_name(preset: str, lr: float) -> str:
    return f"sweep/{preset}/lr{lr:g}"


def main_runs(ds: DatasetSpec, scale: Scale = SCALES["gpu"]) -> list[RunSpec]:
    """The main table's runs in the order they run: the baselines, then per preset its lr
    sweep (when the scale has one) followed by its run."""
    gap = {"latent_mim": (f"masking.gap={ds.gap}",)}
    runs: list[RunSpec] = []
    if scale.baselines:
        runs += [RunSpec(ds.key, b, "mae", (), PIXELS_EVAL if b == "pixels" else MAIN_EVAL, "baseline", baseline=b)
                 for b in BASELINE_LABELS]
    for preset in RUN_ORDER:
        if scale.sweep is not None:
            runs += [RunSpec(ds.key, sweep_name(preset, lr), preset, (*gap.get(preset, ()), f"data.holdout={ds.holdout}",
                                                                        f"train.base_lr={lr:g}"), None, "sweep")
                     for lr in scale.sweep.lrs]
        runs.append(RunSpec(ds.key, preset, preset, gap.get(preset, ()), lr_from=preset if scale.sweep else None))
    return runs


def ablation_runs(ds: DatasetSpec, scale: Scale = SCALES["gpu"]) -> list[RunSpec]:
    """The progression's runs; its first and last rows are the main table's runs. With an lr
    sweep, every row trains at the lr picked for `latent_mim` (the progression's end)."""
    mains = main_runs(ds, scale)
    main = {r.name: r for r in mains}
    ends = ("naive_latent_mim", "latent_mim")  # the rows shared with the main table, with their sweeps
    runs = [r for r in mains if r.kind == "sweep" and r.preset in ends]
    cumulative: dict[str, str] = {}
    lr_from = "latent_mim" if scale.sweep else None
    for step in progression(ds.gap):
        cumulative.update(item.split("=", 1) for item in step.adds)
        overrides = tuple(f"{k}={v}" for k, v in cumulative.items())
        runs.append(main.get(step.name) or RunSpec(ds.key, step.name, "naive_latent_mim", overrides, ABLATION_EVAL, lr_from=lr_from))
    return runs


def build_plan(tables: Sequence[str] = ("main", "ablation"), ablation_dataset: str = DEFAULT_ABLATION_DATASET,
               scale: Scale = SCALES["gpu"]) -> Plan:
    runs: dict[str, RunSpec] = {}
    out: list[Table] = []
    if "main" in tables:
        for ds in scale.datasets.values():
            specs = main_runs(ds, scale)
            runs.update((r.key, r) for r in specs)
            rows = tuple(Row(b, label) for b, label in BASELINE_LABELS.items() if scale.baselines)
            rows += tuple(Row(p, p) for p in MAIN_PRESETS)
            out.append(Table("main", f"Main table — {ds.title}", ds.key, rows))
    if "ablation" in tables:
        ds = scale.datasets[ablation_dataset]
        for r in ablation_runs(ds, scale):
            runs.setdefault(r.key, r)
        rows = tuple(Row(s.name, s.label, " ".join(s.adds)) for s in progression(ds.gap))
        out.append(Table("ablation", f"Ablation — the Latent MIM challenge progression on {ds.title}", ds.key, rows))
    return Plan(tuple(runs.values()), tuple(out))


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Settings:
    """What the command line sets for every run."""

    sources: Mapping[str, str]  # dataset -> data source as passed to train.py
    out: Path
    scale: Scale = SCALES["gpu"]
    model: str | None = None  # None: the scale's
    epochs: Mapping[str, int] | None = None  # None: the scale's datasets'
    batch: int = 256
    workers: int | None = None
    overlay: str | None = None
    overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()
    processes: int = 1
    python: str = sys.executable
    picked: Mapping[str, float] = field(default_factory=dict)  # "dataset/preset" -> base lr its sweep picked

    def run_dir(self, run: RunSpec) -> Path:
        return self.out / run.dataset / run.name

    def dataset(self, key: str) -> DatasetSpec:
        return self.scale.datasets[key]

    def epochs_of(self, key: str) -> int:
        return self.epochs[key] if self.epochs and key in self.epochs else self.dataset(key).epochs


def rel(path: Path | str) -> str:
    """A path as the commands (run from the repository root) spell it."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def warmup_epochs(epochs: int) -> float:
    return round(epochs * WARMUP_FRACTION, 3)


def sweep_epochs(epochs: int, sweep: Sweep) -> int:
    return max(1, round(epochs * sweep.fraction))


def common_overrides(ds: DatasetSpec, s: Settings, kind: str = "train") -> list[str]:
    """The overrides every run of ``kind`` on ``ds`` shares (a sweep run: its shorter schedule, no curve)."""
    epochs = s.epochs_of(ds.key)
    if kind == "sweep" and s.scale.sweep is not None:
        epochs = sweep_epochs(epochs, s.scale.sweep)
    model = s.model or s.scale.model
    out = [f"model.name={model}"] if model else []
    out += [
        f"model.patch_size={ds.patch}",
        f"model.img_size={ds.native}",
        f"train.batch_size={s.batch}",
        f"train.epochs={epochs}",
        f"train.warmup_epochs={warmup_epochs(epochs)}",
        f"train.save_every={SAVE_EVERY}",
        "train.keep_last=1",
        *s.scale.overrides,
    ]
    if kind == "sweep":
        out.append("train.eval_knn_train=0")  # scored by NN on the holdout only
    elif s.scale.curves:
        out.append("train.eval_every_epochs=1")
    if s.workers is not None:
        out.append(f"data.num_workers={s.workers}")
    return out


class SweepPending(Exception):
    """A run's lr comes from a sweep that has not finished."""


def run_overrides(run: RunSpec, s: Settings) -> list[str]:
    """Every override of ``run``: the scale's and dataset's, the run's own, its sweep's lr, the command line's.
    Raises SweepPending for a run whose lr sweep is not complete."""
    out = [*common_overrides(s.dataset(run.dataset), s, run.kind), *run.overrides]
    if run.lr_from is not None:
        lr = s.picked.get(f"{run.dataset}/{run.lr_from}")
        if lr is None:
            raise SweepPending(f"{run.key} waits for the lr sweep of {run.lr_from}")
        out.append(f"train.base_lr={lr:g}")
    return [*out, *s.overrides]


def preset_expr(run: RunSpec, s: Settings) -> str:
    return "+".join(p for p in (run.preset, s.dataset(run.dataset).overlay, s.overlay) if p)


def launcher(script: str, s: Settings) -> list[str]:
    if s.processes == 1:
        return [s.python, script]
    return [s.python, "-m", "accelerate.commands.launch", "--num_processes", str(s.processes), "--num_machines", "1",
            "--dynamo_backend", "no", script]


def train_command(run: RunSpec, s: Settings, resume: bool = False) -> list[str]:
    cmd = [*launcher("train.py", s), "--preset", preset_expr(run, s), "--data", s.sources[run.dataset], "--output", rel(s.run_dir(run))]
    return cmd + (["--resume", "latest"] if resume else []) + run_overrides(run, s)


def eval_command(run: RunSpec, s: Settings) -> list[str]:
    d = s.run_dir(run)
    baseline = ["--baseline", run.baseline] if run.baseline else []
    return [*launcher("scripts/evaluate.py", s), "--checkpoint", rel(d), *baseline, "--data", s.sources[run.dataset],
            "--out", rel(d / "metrics.json"), *(run.eval_args or ()), *s.eval_args]


def display(argv: Sequence[str], python: str = sys.executable) -> str:
    return shlex.join(["python" if a == python else a for a in argv])


def planned_config(run: RunSpec, s: Settings) -> dict[str, Any]:
    return load_config(preset_expr(run, s), run_overrides(run, s)).to_dict()


# --------------------------------------------------------------------------- state on disk

@dataclass(frozen=True)
class RunState:
    trained: bool = False  # summary.json
    evaluated: bool = False  # metrics.json
    checkpoint: bool = False  # a complete checkpoints/step_* to resume from
    stale: tuple[str, ...] = ()  # config keys in which the directory's run differs from the plan
    kind: str = "train"  # RunSpec.kind: a sweep run is done once trained, a baseline once evaluated

    @property
    def done(self) -> bool:
        finished = {"sweep": self.trained, "baseline": self.evaluated}.get(self.kind, self.trained and self.evaluated)
        return finished and not self.stale


def inspect_run(run_dir: Path, planned: Mapping[str, Any] | None = None, kind: str = "train", ignore: Sequence[str] = ()) -> RunState:
    stale: tuple[str, ...] = ()
    saved = run_dir / "config.yaml"
    if planned is not None and saved.is_file():
        stale = tuple(config_diff(yaml.safe_load(saved.read_text()) or {}, planned, ignore))
    return RunState(
        trained=(run_dir / "summary.json").is_file(),
        evaluated=(run_dir / "metrics.json").is_file(),
        checkpoint=bool(step_dirs(run_dir)),
        stale=stale,
        kind=kind,
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def load_timing(run_dir: Path) -> dict[str, Any]:
    data = read_json(run_dir / "timing.json")
    return data if isinstance(data, dict) and isinstance(data.get("attempts"), list) else {"attempts": []}


def phase_seconds(timing: Mapping[str, Any], phase: str) -> float:
    return sum(a.get("seconds") or 0.0 for a in timing["attempts"] if a.get("phase") == phase)


def median_images_per_s(run_dir: Path) -> float | None:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return None
    rates = []
    for line in path.read_text().splitlines():
        try:
            rate = json.loads(line).get("images_per_s")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(rate, (int, float)):
            rates.append(float(rate))
    return statistics.median(rates) if rates else None


# --------------------------------------------------------------------------- running

Runner = Callable[[list[str], Path, Callable[[float], None]], int]
TICK_S = 15.0


def run_logged(argv: list[str], log_path: Path, tick: Callable[[float], None]) -> int:
    """Run ``argv`` from the repository root, stdout and stderr appended to ``log_path``;
    ``tick(elapsed)`` every TICK_S seconds so a killed session still leaves its wall time."""
    with log_path.open("a") as log:
        log.write(f"\n$ {display(argv)}\n")
        log.flush()
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    return proc.wait(timeout=TICK_S)
                except subprocess.TimeoutExpired:
                    tick(time.monotonic() - start)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def tail(path: Path, lines: int = 25, width: int = 400) -> str:
    """The last non-empty lines of a log (progress-bar carriage returns split into lines)."""
    if not path.is_file():
        return "(no output)"
    text = path.read_text(errors="replace").replace("\r", "\n")
    kept = [line[:width] for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


def attempt(run_dir: Path, phase: str, argv: list[str], device: str, runner: Runner, python: str) -> int:
    """Run one phase (train or eval), recording it in timing.json as it goes."""
    timing = load_timing(run_dir)
    record: dict[str, Any] = {
        "phase": phase, "command": display(argv, python), "resumed": "--resume" in argv, "device": device,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": 0.0, "returncode": None,
    }
    timing["attempts"].append(record)
    path = run_dir / "timing.json"
    write_json(path, timing)

    def tick(elapsed: float) -> None:
        record["seconds"] = round(elapsed, 1)
        write_json(path, timing)

    start = time.monotonic()
    try:
        rc = runner(argv, run_dir / f"{phase}.log", tick)
    finally:
        record["seconds"] = round(time.monotonic() - start, 1)
        write_json(path, timing)
    record["returncode"] = rc
    write_json(path, timing)
    return rc


@dataclass
class Budget:
    """Start no run once ``limit_s`` is spent, nor one that the mean duration of this
    invocation's finished runs on the same dataset says would end past it."""

    limit_s: float | None
    start: float = field(default_factory=time.monotonic)
    durations: dict[str, list[float]] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def record(self, dataset: str, seconds: float) -> None:
        self.durations.setdefault(dataset, []).append(seconds)

    def refusal(self, dataset: str) -> str | None:
        if self.limit_s is None:
            return None
        spent = self.elapsed()
        if spent >= self.limit_s:
            return f"time budget spent ({spent / 60:.1f} of {self.limit_s / 60:.1f} min)"
        past = self.durations.get(dataset)
        if past and spent + statistics.mean(past) > self.limit_s:
            return (f"{self.limit_s / 60 - spent / 60:.1f} min of budget left, runs on {dataset} took "
                    f"{statistics.mean(past) / 60:.1f} min on average")
        return None


@dataclass(frozen=True)
class Outcome:
    run: str
    status: str  # done | skipped | failed | deferred | stale
    message: str = ""


def process_run(run: RunSpec, s: Settings, device: str, budget: Budget, runner: Runner,
                show: Callable[[str], None] = print) -> Outcome:
    d = s.run_dir(run)
    try:
        planned = planned_config(run, s)
    except SweepPending as e:
        show(f"[{run.key}] not started: {e}")
        return Outcome(run.key, "deferred", str(e))
    state = inspect_run(d, planned, run.kind)
    if state.stale:
        msg = (f"{d} holds a run with a different config ({', '.join(state.stale[:6])}); "
               "use another --out or remove that directory")
        show(f"[{run.key}] STALE: {msg}")
        return Outcome(run.key, "stale", msg)
    if state.done:
        show(f"[{run.key}] done, skipped")
        return Outcome(run.key, "skipped")
    refusal = budget.refusal(f"{run.dataset} {run.kind}")
    if refusal:
        show(f"[{run.key}] not started: {refusal}")
        return Outcome(run.key, "deferred", refusal)
    d.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if run.kind == "baseline":  # nothing to train: the evaluation rebuilds the encoder from this config
        (d / "config.yaml").write_text(yaml.safe_dump(planned, sort_keys=False))
    train = [] if state.trained or run.kind == "baseline" else [("train", train_command(run, s, resume=state.checkpoint))]
    phases = train + ([("eval", eval_command(run, s))] if run.eval_args is not None else [])
    for phase, argv in phases:
        if phase == "eval" and (d / "metrics.json").is_file():
            break
        show(f"[{run.key}] {phase}{' (resuming)' if '--resume' in argv else ''}: {display(argv, s.python)}")
        rc = attempt(d, phase, argv, device, runner, s.python)
        expected = d / ("summary.json" if phase == "train" else "metrics.json")
        if rc != 0 or not expected.is_file():
            why = f"exit {rc}" if rc != 0 else f"exit 0 but no {expected.name}"
            show(f"[{run.key}] FAILED in {phase} ({why}); last lines of {d / f'{phase}.log'}:\n{tail(d / f'{phase}.log')}")
            return Outcome(run.key, "failed", f"{phase}: {why}")
    budget.record(f"{run.dataset} {run.kind}", time.monotonic() - start)
    show(f"[{run.key}] finished in {time.monotonic() - start:.0f} s")
    return Outcome(run.key, "done")


def sweep_scores(plan: Plan, s: Settings, dataset: str, preset: str) -> dict[float, float | None]:
    """base lr -> holdout NN of the finished (and not stale) sweep runs of ``preset``."""
    if s.scale.sweep is None:
        return {}
    out: dict[float, float | None] = {}
    for lr in s.scale.sweep.lrs:
        key = f"{dataset}/{sweep_name(preset, lr)}"
        run = next((r for r in plan.runs if r.key == key), None)
        if run is None:
            return {}
        d = s.run_dir(run)
        summary = read_json(d / "summary.json") if inspect_run(d, planned_config(run, s), "sweep").done else None
        nn = summary.get("nn") if isinstance(summary, dict) else None
        out[lr] = float(nn) if isinstance(nn, (int, float)) else None
    return out


def pick_lrs(plan: Plan, s: Settings) -> dict[str, float]:
    """"dataset/preset" -> the swept base lr with the best holdout NN (ties: the smaller lr),
    for every preset whose sweep has finished."""
    picked = {}
    for dataset, preset in dict.fromkeys((r.dataset, r.preset) for r in plan.runs if r.kind == "sweep"):
        scores = sweep_scores(plan, s, dataset, preset)
        if scores and all(v is not None for v in scores.values()):
            picked[f"{dataset}/{preset}"] = max(sorted(scores), key=lambda lr: scores[lr])
    return picked


def detect_device(processes: int = 1) -> str:
    """The GPU name(s) from nvidia-smi, else the CPU model."""
    name = ""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            name = names[0] if names else ""
        except (OSError, subprocess.SubprocessError):
            name = ""
    if not name:
        name = cpu_model() + " (CPU)"
    return f"{processes} × {name}" if processes > 1 else name


# --------------------------------------------------------------------------- claims

COLLAPSE_SIM = 0.90  # naive pooled-feature similarity at or above this ...
NEAR_CHANCE = 5.0  # ... and its NN at most chance + this many points: collapsed
CLEARLY = 2.0  # "clearly higher": by at least this many points
COMPETITIVE = 1.0  # "competitive": within this many points of the best


@dataclass(frozen=True)
class Claim:
    title: str
    rule: str
    verdict: str  # "reproduced" | "not reproduced" | "pending (...)"
    detail: str = ""


def _value(metrics: Mapping[str, Mapping[str, Any] | None], run: str, key: str) -> float | None:
    m = metrics.get(run)
    v = m.get(key) if m else None
    return float(v) if isinstance(v, (int, float)) else None


def _claim(title: str, rule: str, metrics: Mapping[str, Mapping[str, Any] | None], needs: Sequence[tuple[str, str]],
           test: Callable[[dict[tuple[str, str], float]], tuple[bool, str]]) -> Claim:
    values = {(run, key): _value(metrics, run, key) for run, key in needs}
    missing = [f"{key} of {run}" for (run, key), v in values.items() if v is None]
    if missing:
        return Claim(title, rule, f"pending (missing: {', '.join(missing)})")
    ok, detail = test(values)  # type: ignore[arg-type]
    return Claim(title, rule, "reproduced" if ok else "not reproduced", detail)


NON_NAIVE = ("mae", "latent_mim", "pilamim")


def evaluate_claims(metrics: Mapping[str, Mapping[str, Any] | None], num_classes: int = 10, with_pixels: bool = False) -> list[Claim]:
    """The claims, each decided by a fixed rule on the main table's metrics (keyed by row name;
    NN / linear in percent, Sim a cosine); ``with_pixels`` adds the raw-pixel claim."""
    chance = 100.0 / num_classes

    def collapse(v: dict) -> tuple[bool, str]:
        sim, nn = v["naive_latent_mim", "sim"], v["naive_latent_mim", "nn"]
        return sim >= COLLAPSE_SIM and nn <= chance + NEAR_CHANCE, f"naive Sim {sim:.3f}, NN {nn:.1f} (chance {chance:.1f})"

    def nn_gap(v: dict) -> tuple[bool, str]:
        lm, mae = v["latent_mim", "nn"], v["mae", "nn"]
        return lm >= mae + CLEARLY, f"NN latent_mim {lm:.1f} vs mae {mae:.1f} ({lm - mae:+.1f})"

    def linear_at_least(v: dict) -> tuple[bool, str]:
        lm, mae = v["latent_mim", "linear"], v["mae", "linear"]
        return lm >= mae, f"linear latent_mim {lm:.1f} vs mae {mae:.1f} ({lm - mae:+.1f})"

    def pilamim(v: dict) -> tuple[bool, str]:
        p, best = v["pilamim", "linear"], max(v["mae", "linear"], v["latent_mim", "linear"])
        return p >= best - COMPETITIVE, f"linear pilamim {p:.1f} vs best of mae / latent_mim {best:.1f} ({p - best:+.1f})"

    def beat_pixels(v: dict) -> tuple[bool, str]:
        px = v["pixels", "nn"]
        return all(v[p, "nn"] > px for p in NON_NAIVE), ", ".join(f"{p} {v[p, 'nn']:.1f}" for p in NON_NAIVE) + f" vs pixels {px:.1f}"

    pixel_title, pixel_rule = "every non-naive preset's NN beats raw pixels", "NN(p) > NN(raw pixels) for mae, latent_mim, pilamim"
    pixel_claim = [_claim(pixel_title, pixel_rule, metrics, [("pixels", "nn"), *((p, "nn") for p in NON_NAIVE)], beat_pixels)]
    px, known = _value(metrics, "pixels", "nn"), {p: _value(metrics, p, "nn") for p in NON_NAIVE}
    beaten = [p for p, v in known.items() if v is not None and px is not None and v <= px]
    if beaten and pixel_claim[0].verdict.startswith("pending"):  # one preset at or below pixels decides it already
        detail = ", ".join(f"{p} {known[p]:.1f}" for p in beaten) + f" vs pixels {px:.1f}"
        pixel_claim = [Claim(pixel_title, pixel_rule, "not reproduced", detail + "; the other rows are pending")]
    pixel_claim = pixel_claim if with_pixels else []
    return [
        _claim("the naive baseline collapses",
               f"naive Sim ≥ {COLLAPSE_SIM:.2f} and naive NN ≤ chance + {NEAR_CHANCE:g} points",
               metrics, [("naive_latent_mim", "sim"), ("naive_latent_mim", "nn")], collapse),
        _claim("latent_mim has a clearly higher NN than mae", f"NN(latent_mim) ≥ NN(mae) + {CLEARLY:g}",
               metrics, [("latent_mim", "nn"), ("mae", "nn")], nn_gap),
        _claim("latent_mim's linear probe is at least mae's", "linear(latent_mim) ≥ linear(mae)",
               metrics, [("latent_mim", "linear"), ("mae", "linear")], linear_at_least),
        _claim("pilamim is competitive or better on the linear probe",
               f"linear(pilamim) ≥ max(linear(mae), linear(latent_mim)) − {COMPETITIVE:g}",
               metrics, [("pilamim", "linear"), ("mae", "linear"), ("latent_mim", "linear")], pilamim),
        *pixel_claim,
    ]


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class RunRecord:
    """What is on disk for one planned run."""

    state: RunState
    metrics: Mapping[str, Any] | None = None
    summary: Mapping[str, Any] | None = None
    timing: Mapping[str, Any] = field(default_factory=lambda: {"attempts": []})
    images_per_s: float | None = None

    @property
    def status(self) -> str:
        if self.state.stale:
            return f"stale config ({', '.join(self.state.stale[:3])})"
        if self.state.done:
            return "done"
        last = self.timing["attempts"][-1] if self.timing["attempts"] else None
        if last and last.get("returncode") not in (0, None):
            return f"failed ({last['phase']}, exit {last['returncode']})"
        if last and last.get("returncode") is None:
            return f"interrupted ({last['phase']})"
        if self.state.trained:
            return "eval pending"
        return "partial" if self.state.checkpoint else "pending"

    def metric(self, key: str) -> float | None:
        if self.state.stale or not self.metrics:
            return None
        v = self.metrics.get(key)
        return float(v) if isinstance(v, (int, float)) else None


def collect(plan: Plan, s: Settings) -> dict[str, RunRecord]:
    records = {}
    for run in plan.runs:
        d = s.run_dir(run)
        planned, ignore = None, ()
        try:
            planned = planned_config(run, s)
        except SweepPending:  # the lr is not known yet: every other key must still match
            planned, ignore = planned_config(replace(run, lr_from=None), s), ("train.base_lr",)
        except ConfigError:
            pass
        records[run.key] = RunRecord(
            state=inspect_run(d, planned, run.kind, ignore),
            metrics=read_json(d / "metrics.json"),
            summary=read_json(d / "summary.json"),
            timing=load_timing(d),
            images_per_s=median_images_per_s(d),
        )
    return records


def fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_time(seconds: float) -> str:
    if not seconds:
        return "—"
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def fmt_fewshot(r: RunRecord) -> str:
    mean, std = r.metric("fewshot"), r.metric("fewshot_std")
    return fmt(mean) if mean is None or std is None else f"{mean:.1f} ± {std:.1f}"


def fmt_lr(run: RunSpec, s: Settings) -> str:
    if run.lr_from is None:
        return ""
    lr = s.picked.get(f"{run.dataset}/{run.lr_from}")
    return "sweep pending" if lr is None else f"{lr:g}"


def table_md(table: Table, records: Mapping[str, RunRecord], plan: Plan, s: Settings | None = None) -> list[str]:
    runs = [plan.run(table.dataset, row.run) for row in table.rows]
    recs = [records[run.key] for run in runs]
    fewshot = any(r.metric("fewshot") is not None for r in recs)
    linear = table.key == "main" or any(r.metric("linear") is not None for r in recs)
    lr_col = s is not None and s.scale.sweep is not None
    progression_cols = table.key == "ablation"
    head = (["#", "row", "switch", "run", "NN", "ΔNN"] if progression_cols else ["run", "NN"]) + ["k-NN"]
    head += (["linear"] if linear else []) + (["few-shot"] if fewshot else []) + ["Sim"] + (["base lr"] if lr_col else [])
    head += ["train", "eval", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous: float | None = None
    for i, (row, run, r) in enumerate(zip(table.rows, runs, recs)):
        nn = r.metric("nn")
        switch = f"`{row.change}`" if row.change else "(preset)"
        name = row.label if run.kind == "baseline" else f"`{row.run}`"
        cells = [str(i), row.label, switch, name, fmt(nn)] if progression_cols else [name, fmt(nn)]
        if progression_cols:
            cells.append("" if i == 0 else ("—" if nn is None or previous is None else f"{nn - previous:+.1f}"))
        cells.append(fmt(r.metric("knn")))
        cells += ([fmt(r.metric("linear"))] if linear else []) + ([fmt_fewshot(r)] if fewshot else [])
        cells += [fmt(r.metric("sim"), 3)] + ([fmt_lr(run, s)] if lr_col else [])
        cells += [fmt_time(phase_seconds(r.timing, "train")), fmt_time(phase_seconds(r.timing, "eval")), r.status]
        lines.append("| " + " | ".join(cells) + " |")
        previous = nn
    return lines


def sweep_md(plan: Plan, s: Settings) -> list[str]:
    """Per dataset: the holdout NN of every preset at every swept lr, and the pick."""
    sweep = s.scale.sweep
    if sweep is None:
        return []
    lines = ["## Learning-rate sweep", "",
             f"Every preset trains {sweep.fraction:.0%} of its schedule at each base lr on the train split minus a seeded "
             "holdout (`data.holdout`), and is scored by NN on that holdout; the best lr (ties: the smaller) trains the "
             "table's run. The ablation rows use the lr picked for `latent_mim`. The test split is not read.", ""]
    for key, ds in s.scale.datasets.items():
        presets = list(dict.fromkeys(r.preset for r in plan.runs if r.kind == "sweep" and r.dataset == key))
        if not presets:
            continue
        head = ["preset", *(f"lr {lr:g}" for lr in sweep.lrs), "picked"]
        lines += [f"**{ds.title}** (holdout: {ds.holdout} train images; {sweep_epochs(s.epochs_of(key), sweep)} epochs)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for preset in presets:
            scores = sweep_scores(plan, s, key, preset)
            picked = s.picked.get(f"{key}/{preset}")
            lines.append("| " + " | ".join([f"`{preset}`", *(fmt(scores.get(lr)) for lr in sweep.lrs),
                                             "—" if picked is None else f"{picked:g}"]) + " |")
        lines.append("")
    return lines


def nn_curve(run_dir: Path, batch: int) -> list[tuple[float, float]]:
    """(thousands of images seen, NN) points logged during training (``eval/nn`` in log.jsonl)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    points = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("eval/nn"), (int, float)):
            points.append((rec["step"] * batch / 1000, float(rec["eval/nn"])))
    return points


def draw_curves(table: Table, plan: Plan, s: Settings, path: Path) -> bool:
    """One PNG: the NN curve of every run of ``table`` (baselines as horizontal lines); False
    when there is nothing to draw or matplotlib is missing."""
    curves = {}
    levels = {}
    for row in table.rows:
        run = plan.run(table.dataset, row.run)
        d = s.run_dir(run)
        if run.kind == "baseline":
            nn = (read_json(d / "metrics.json") or {}).get("nn")
            if isinstance(nn, (int, float)):
                levels[row.label] = float(nn)
        elif points := nn_curve(d, s.batch):
            curves[row.run] = points
    if not curves:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    start = levels.get(BASELINE_LABELS["init"])  # every run starts from that encoder
    for name, points in curves.items():
        points = ([(0.0, start)] if start is not None and points[0][0] > 0 else []) + points
        ax.plot(*zip(*points), marker="o", markersize=3, label=name)
    for i, (label, nn) in enumerate(levels.items()):
        ax.axhline(nn, color="0.4", linestyle=("--", ":")[i % 2], linewidth=1, label=label)
    ax.axhline(100 / s.dataset(table.dataset).num_classes, color="0.75", linewidth=1, label="chance")
    ax.set(xlabel="training images seen (thousands)", ylabel="NN top-1 (%)", title=f"{table.title} — NN during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def claims_md(plan: Plan, records: Mapping[str, RunRecord], s: Settings) -> list[str]:
    lines = ["## Claims", "",
             "Each verdict is computed from the main table by the rule shown (NN, linear in top-1 %; Sim a cosine); "
             "nothing here is edited by hand.", ""]
    mains = [t for t in plan.tables if t.key == "main"]
    if not mains:
        return lines + ["No main table in this plan (`--tables main`), so no claim is checked.", ""]
    for t in mains:
        ds = s.dataset(t.dataset)
        recs = {row.run: records[f"{t.dataset}/{row.run}"] for row in t.rows}
        metrics = {name: None if r.state.stale else r.metrics for name, r in recs.items()}
        lines += [f"**{ds.title}**", ""]
        for c in evaluate_claims(metrics, ds.num_classes, with_pixels=s.scale.baselines):
            lines.append(f"- {c.title} — rule: {c.rule} — **{c.verdict}**" + (f" ({c.detail})" if c.detail else ""))
        lines.append("")
    return lines


def planned_commands(run: RunSpec, s: Settings) -> list[str]:
    try:
        train = [] if run.kind == "baseline" else [display(train_command(run, s), s.python) + "   # planned"]
    except SweepPending:
        return [f"# planned once the lr sweep of {run.lr_from} is done"]
    return train + ([display(eval_command(run, s), s.python) + "   # planned"] if run.eval_args is not None else [])


def commands_md(plan: Plan, records: Mapping[str, RunRecord], s: Settings) -> list[str]:
    lines = ["## Commands", "",
             "Run from the repository root. Commands that ran are listed as recorded in each run's `timing.json` "
             "(a `--resume` line continues an interrupted run); the others are the planned ones.", ""]
    for ds in s.scale.datasets:
        runs = [r for r in plan.runs if r.dataset == ds]
        if not runs:
            continue
        lines += ["```bash"]
        for run in runs:
            attempts = records[run.key].timing["attempts"]
            lines.append(f"# {run.key}")
            ran = list(dict.fromkeys(a["command"] for a in attempts))
            lines += ran or planned_commands(run, s)
        lines += ["```", ""]
    return lines


def details_md(plan: Plan, records: Mapping[str, RunRecord]) -> list[str]:
    head = ["run", "steps", "epochs", "img/s (median)", "train", "eval", "attempts", "device"]
    lines = ["## Runs", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in plan.runs:
        r = records[run.key]
        summ, attempts = r.summary or {}, r.timing["attempts"]
        devices = ", ".join(dict.fromkeys(a.get("device", "?") for a in attempts)) or "—"
        lines.append("| " + " | ".join([
            f"`{run.key}`", str(summ.get("steps", "—")), str(summ.get("epochs", "—")),
            fmt(r.images_per_s, 0), fmt_time(phase_seconds(r.timing, "train")), fmt_time(phase_seconds(r.timing, "eval")),
            str(len(attempts)), devices,
        ]) + " |")
    total = sum(phase_seconds(r.timing, p) for r in records.values() for p in ("train", "eval"))
    return lines + ["", f"Wall time of every attempt so far, training and evaluation: {fmt_time(total)}.", ""]


def render_results(plan: Plan, records: Mapping[str, RunRecord], s: Settings, invocation: str = "",
                   figures: Path | None = None) -> str:
    """The report; with ``figures`` (a directory) the NN curves are drawn there and linked."""
    devices = list(dict.fromkeys(a.get("device", "?") for r in records.values() for a in r.timing["attempts"]))
    epochs = ", ".join(f"{ds.title} {s.epochs_of(k)}" for k, ds in s.scale.datasets.items())
    model = s.model or s.scale.model
    encoder = f"`{model}`" if model else "the overlays' (" + ", ".join(
        f"`{d.overlay}` on {d.title}" for d in s.scale.datasets.values()) + ")"
    lines = [
        "# Reproduction results" + (f" — {s.scale.name} scale" if s.scale.name != "gpu" else ""),
        "",
        "Written by `scripts/reproduce.py` from the runs under "
        f"`{rel(s.out)}` ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}); do not edit by hand — rerun "
        "`python scripts/reproduce.py --report-only` (with the same plan options) to refresh it. "
        "How the plan is built: `docs/reproduce.md`.",
        "",
        f"- Device: {', '.join(devices) if devices else '— (nothing has run yet)'}",
        f"- Encoder: {encoder}" + (f" + overlay `{s.overlay}`" if s.overlay else "")
        + f"; batch {s.batch}; epochs: {epochs}; warm-up {WARMUP_FRACTION:.0%} of the epochs; "
        + ("base lr from the sweep below; " if s.scale.sweep else "")
        + "every other setting from each preset",
        f"- Extra overrides: {' '.join(f'`{o}`' for o in (*s.scale.overrides, *s.overrides)) or 'none'}",
        "- Evaluation (`scripts/evaluate.py`): "
        + ", ".join(f"{key} `{' '.join(args)}`" for key, args in (("main", MAIN_EVAL), ("ablation", ABLATION_EVAL))
                    if any(t.key == key for t in plan.tables))
        + (f", raw pixels `{' '.join(PIXELS_EVAL)}`" if s.scale.baselines else "")
        + (f", then `{shlex.join(s.eval_args)}`" if s.eval_args else "")
        + "; NN is leave-one-out 1-NN on the test split (mean patch token before the final norm), "
        "k-NN and linear are fitted on the train split, Sim is the mean pairwise cosine of pooled test features; "
        "images are resized to side / `data.eval_crop` of each run (1.0 unless set) and centre-cropped to the "
        "encoder's native side",
    ]
    if s.scale.baselines:
        lines.append("- Baselines: the shared encoder at initialisation (same config and seed as every run, no step "
                     "taken) and raw pixels (each normalised image flattened), scored by the same protocols")
    if invocation:
        lines.append(f"- Generated by: `{invocation}`")
    lines.append("")
    for t in plan.tables:
        ds = s.dataset(t.dataset)
        lines += [f"## {t.title}", "", f"{ds.describe()}; chance {100 / ds.num_classes:.1f} %.", ""]
        if t.key == "ablation":
            lines += ["Each row adds one switch to the previous row (overrides on `naive_latent_mim`); the first and last "
                      "rows are the main table's `naive_latent_mim` and `latent_mim` runs. ΔNN is against the previous row.", ""]
        lines += table_md(t, records, plan, s) + [""]
        png = figures / f"nn-{t.dataset}-{t.key}.png" if figures is not None else None
        if png is not None and draw_curves(t, plan, s, png):
            lines += [f"![NN during training, {t.title}]({png.parent.name}/{png.name})", ""]
    lines += sweep_md(plan, s) + claims_md(plan, records, s) + details_md(plan, records) + commands_md(plan, records, s)
    return "\n".join(lines).rstrip() + "\n"


SMALL_FILES = ("config.yaml", "summary.json", "metrics.json", "timing.json", "log.jsonl", "train.log", "eval.log")


def export(plan: Plan, s: Settings, results: Path, dest: Path) -> None:
    """Copy results.md and each run's small files (no checkpoints, no encoder) under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if results.is_file():
        shutil.copy2(results, dest / "results.md")
    for run in plan.runs:
        src = s.run_dir(run)
        for name in SMALL_FILES:
            if (src / name).is_file():
                target = dest / "runs" / run.dataset / run.name / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / name, target)


# --------------------------------------------------------------------------- command line


def comma_list(text: str, valid: Iterable[str], flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    valid = list(valid)
    bad = [x for x in items if x not in valid]
    if bad:
        raise SystemExit(f"error: {flag}: unknown {', '.join(bad)}; choose from {', '.join(valid)}")
    return items


def parse_epochs(text: str | None, scale: Scale = SCALES["gpu"]) -> dict[str, int]:
    epochs = {k: d.epochs for k, d in scale.datasets.items()}
    if not text:
        return epochs
    try:
        if "=" not in text:
            return dict.fromkeys(epochs, int(text))
        for item in text.split(","):
            key, value = item.split("=", 1)
            comma_list(key, DATASETS, "--epochs")
            epochs[key.strip()] = int(value)
    except ValueError:
        raise SystemExit(f"error: --epochs: {text!r} is not N or cifar10=N,imagenette=M") from None
    if any(v < 1 for v in epochs.values()):
        raise SystemExit(f"error: --epochs: {text!r} must be >= 1")
    return epochs


def data_sources(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    for key in DATASETS:
        given = getattr(args, key)
        source = given if given is not None else str(Path(args.data_root) / key)
        out[key] = source if source == "embedded" else rel(source)
    return out


def missing_sources(datasets: Iterable[str], sources: Mapping[str, str]) -> list[str]:
    return [
        f"{key}: {(ROOT / sources[key]).resolve()} does not exist (give --data-root DIR holding {key}/ in the Hub's parquet "
        f"layout, or --{key} DIR, or --{key} embedded)"
        for key in datasets
        if sources[key] != "embedded" and not (ROOT / sources[key]).exists()
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=str(ROOT / ".data"), help="folder holding cifar10/ and imagenette/ (default: .data)")
    for key in DATASETS:
        g.add_argument(f"--{key}", help=f"the {key} dataset dir (overrides --data-root), or 'embedded' for the shipped slice")
    g = p.add_argument_group("plan")
    g.add_argument("--scale", choices=list(SCALES), default="gpu",
                   help="gpu: ViT-Tiny on a 14x14 grid, sized for one GPU; micro: the micro overlays' 192-wide ViT on an "
                   "8x8 grid with an lr sweep, baselines and NN curves, sized for a CPU (default: %(default)s)")
    g.add_argument("--tables", default="main,ablation", help="tables to run: main, ablation or both (the report covers both; "
                   "default: %(default)s)")
    g.add_argument("--datasets", default=",".join(DATASETS), help="datasets to run (the report covers both; default: %(default)s)")
    g.add_argument("--ablation-dataset", default=DEFAULT_ABLATION_DATASET, choices=list(DATASETS))
    g.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these runs (NAME or dataset/NAME)")
    g.add_argument("--model", help="timm ViT of every run (default: the scale's: vit_tiny_patch16_224 for gpu, the overlays' for micro)")
    g.add_argument("--epochs", help="N for every dataset, or cifar10=N,imagenette=M (default: the scale's, "
                   + "; ".join(f"{n}: " + ",".join(f"{k}={d.epochs}" for k, d in sc.datasets.items()) for n, sc in SCALES.items()) + ")")
    g.add_argument("--batch", type=int, help="global batch of every run (default: the scale's, 256)")
    g.add_argument("--workers", type=int, help="data.num_workers of every run (default: the presets')")
    g.add_argument("--overlay", help="a preset stacked on every run's preset ('tiny' for smoke tests)")
    g.add_argument("--eval-args", default="", help='extra scripts/evaluate.py arguments, e.g. "--max-train 5000"')
    g.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    g = p.add_argument_group("execution")
    g.add_argument("--out", help="runs go to OUT/<dataset>/<name> (default: "
                   + "; ".join(f"{n}: {sc.out}" for n, sc in SCALES.items()) + ")")
    g.add_argument("--results", help="the report to write (default: " + "; ".join(f"{n}: {sc.results}" for n, sc in SCALES.items())
                   + "); pictures go to the folder of the same name"),
    g.add_argument("--dry-run", action="store_true", help="print the commands, run nothing, write nothing")
    g.add_argument("--report-only", action="store_true", help="write the report from the runs on disk, run nothing")
    g.add_argument("--time-budget", type=float, metavar="MIN", help="start no run past this many minutes")
    g.add_argument("--processes", type=int, default=1, help="accelerate launch --num_processes N when N > 1")
    g.add_argument("--export", metavar="DIR", help="after each run, copy the report and each run's small files to DIR")
    args = p.parse_intermixed_args(argv)
    moved = [x for x in args.only if "=" in x]  # key=value after --only NAME ... are overrides
    args.only = [x for x in args.only if "=" not in x]
    args.overrides = [*args.overrides, *moved]
    scale = SCALES[args.scale]
    args.out = args.out or str(ROOT / scale.out)
    args.results = args.results or str(ROOT / scale.results)
    args.batch = args.batch or scale.batch
    if args.processes < 1 or args.batch < 1 or (args.workers is not None and args.workers < 0):
        p.error("--processes and --batch must be >= 1, --workers >= 0")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    scale = SCALES[args.scale]
    return Settings(
        sources=data_sources(args),
        out=Path(args.out).absolute(),
        scale=scale,
        model=args.model,
        epochs=parse_epochs(args.epochs, scale),
        batch=args.batch,
        workers=args.workers,
        overlay=args.overlay,
        overrides=tuple(args.overrides),
        eval_args=tuple(shlex.split(args.eval_args)),
        processes=args.processes,
    )


def select(plan: Plan, datasets: Sequence[str], only: Sequence[str]) -> list[RunSpec]:
    known = {r.name for r in plan.runs} | {r.key for r in plan.runs}
    unknown = [x for x in only if x not in known]
    if unknown:
        raise SystemExit(f"error: --only: no run named {', '.join(unknown)} in this plan; runs: "
                         + ", ".join(sorted({r.name for r in plan.runs})))
    return [r for r in plan.runs if r.dataset in datasets and (not only or r.name in only or r.key in only)]


def write_report(plan: Plan, s: Settings, results: Path, invocation: str, export_dir: str | None) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(render_results(plan, collect(plan, s), s, invocation, figures=results.with_suffix("")))
    if export_dir:
        export(plan, s, results, Path(export_dir))


def dry_run(selection: Sequence[RunSpec], s: Settings, show: Callable[[str], None] = print) -> None:
    for run in selection:
        try:
            state = inspect_run(s.run_dir(run), planned_config(run, s), run.kind)
        except SweepPending as e:
            show(f"# {run.key} [waits: {e}]")
            continue
        status = "stale" if state.stale else "done" if state.done else "eval" if state.trained else \
            "resume" if state.checkpoint else "new"
        show(f"# {run.key} [{status}]")
        if not state.trained and run.kind != "baseline":
            show(display(train_command(run, s, resume=state.checkpoint), s.python))
        if run.eval_args is not None:
            show(display(eval_command(run, s), s.python))


def main(argv: Sequence[str] | None = None, runner: Runner = run_logged) -> int:
    args = parse_args(argv)
    tables = comma_list(args.tables, ("main", "ablation"), "--tables")
    datasets = comma_list(args.datasets, DATASETS, "--datasets")
    s = settings_from(args)
    plan = build_plan(ALL_TABLES, args.ablation_dataset, s.scale)  # the report covers every table
    s = replace(s, picked=pick_lrs(plan, s))
    results = Path(args.results)
    invocation = display([sys.executable, "scripts/reproduce.py", *(argv if argv is not None else sys.argv[1:])])
    if args.report_only:
        write_report(plan, s, results, invocation, args.export)
        print(f"wrote {results}")
        return 0
    selection = select(build_plan(tables, args.ablation_dataset, s.scale), datasets, args.only)
    for run in selection:
        try:
            planned_config(run, s)
        except SweepPending:  # its config is its sweep runs' (validated here) with the picked lr
            continue
        except ConfigError as e:
            print(f"error: {run.key}: {e}", file=sys.stderr)
            return 2
    if args.dry_run:
        dry_run(selection, s)
        return 0
    missing = missing_sources([k for k in DATASETS if any(r.dataset == k for r in selection)], s.sources)
    if missing:
        print("error: missing data\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    device = detect_device(s.processes)
    budget = Budget(args.time_budget * 60 if args.time_budget is not None else None)
    print(f"{len(selection)} runs on {device}; results: {results}", flush=True)
    outcomes = []
    for run in selection:
        outcomes.append(process_run(run, s, device, budget, runner, show=lambda m: print(m, flush=True)))
        s = replace(s, picked=pick_lrs(plan, s))  # a finished sweep releases its preset's run
        write_report(plan, s, results, invocation, args.export)
    if not outcomes:
        write_report(plan, s, results, invocation, args.export)
    counts = {k: sum(o.status == k for o in outcomes) for k in ("done", "skipped", "failed", "deferred", "stale")}
    print("summary: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"; wrote {results}")
    if not counts["deferred"] and not counts["failed"] and not counts["stale"]:
        print("all selected runs are complete")
    return 1 if counts["failed"] or counts["stale"] else 0


if __name__ == "__main__":
    sys.exit(main())
