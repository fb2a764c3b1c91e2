"""Running the plan: each phase logged and timed, resumed after a kill, within a time budget; the lr sweeps."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..platform_info import cpu_model
from ..precision import cpu_has_native_bf16
from .plan import Plan, RunSpec, best_lr, with_lr
from .commands import Settings, Pending, display, phases, planned_config
from .state import LOCK, inspect_run, load_timing, read_json, release_lock, take_lock, write_json

Runner = Callable[[list[str], Path, Callable[[float], None]], int]
TICK_S = 15.0
RUNNING: set[subprocess.Popen] = set()  # the train / evaluate processes run_logged has in flight


def terminate(signum: int, _frame: Any = None) -> None:
    """The SIGTERM handler of ``mimkit reproduce``: kill the runs in flight (each resumes from its
    last checkpoint next time) instead of leaving them training without a runner, then exit."""
    for proc in list(RUNNING):
        proc.kill()
    raise SystemExit(128 + signum)


def run_logged(argv: list[str], log_path: Path, tick: Callable[[float], None]) -> int:
    """Run ``argv`` from the repository root, stdout and stderr appended to ``log_path``;
    ``tick(elapsed)`` every TICK_S seconds so a killed session still leaves its wall time."""
    with log_path.open("a") as log:
        log.write(f"\n$ {display(argv)}\n")
        log.flush()
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        RUNNING.add(proc)
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
            RUNNING.discard(proc)


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


PHASE_OUTPUT = {"train": "summary.json", "eval": "metrics.json", "finetune": "finetune.json"}  # what a phase leaves when it succeeds


def process_run(run: RunSpec, s: Settings, device: str, budget: Budget, runner: Runner,
                show: Callable[[str], None] = print) -> Outcome:
    d = s.run_dir(run)
    try:
        planned = planned_config(run, s)
    except Pending as e:
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
    try:
        phases(run, s, state.trained, state.evaluated, state.checkpoint)  # built again below, under the lock
    except Pending as e:  # a fine-tuning whose weights are not on this machine
        show(f"[{run.key}] not started: {e}")
        return Outcome(run.key, "deferred", str(e))
    refusal = budget.refusal(f"{run.dataset} {run.kind}")
    if refusal:
        show(f"[{run.key}] not started: {refusal}")
        return Outcome(run.key, "deferred", refusal)
    d.mkdir(parents=True, exist_ok=True)
    holder = take_lock(d)  # another invocation on the same directory would resume the same checkpoint
    if holder is not None:
        show(f"[{run.key}] not started: another mimkit reproduce runs it ({holder}); if none does, delete {d / LOCK}")
        return Outcome(run.key, "deferred", f"running in {holder}")
    try:
        state = inspect_run(d, planned, run.kind)  # again, now that no one else writes it
        if state.done:
            show(f"[{run.key}] done, skipped")
            return Outcome(run.key, "skipped")
        start = time.monotonic()
        if run.kind == "baseline":  # nothing to train: the evaluation rebuilds the encoder from this config
            (d / "config.yaml").write_text(yaml.safe_dump(planned, sort_keys=False))
        for phase, argv in phases(run, s, state.trained, state.evaluated, state.checkpoint):
            show(f"[{run.key}] {phase}{' (resuming)' if '--resume' in argv else ''}: {display(argv, s.python)}")
            rc = attempt(d, phase, argv, device, runner, s.python)
            expected = d / PHASE_OUTPUT[phase]
            if rc != 0 or not expected.is_file():
                why = f"exit {rc}" if rc != 0 else f"exit 0 but no {expected.name}"
                show(f"[{run.key}] FAILED in {phase} ({why}); last lines of {d / f'{phase}.log'}:\n{tail(d / f'{phase}.log')}")
                return Outcome(run.key, "failed", f"{phase}: {why}")
    finally:
        release_lock(d)
    budget.record(f"{run.dataset} {run.kind}", time.monotonic() - start)
    show(f"[{run.key}] finished in {time.monotonic() - start:.0f} s")
    return Outcome(run.key, "done")


def sweep_scores(plan: Plan, s: Settings, dataset: str, preset: str) -> dict[float, float | None]:
    """base lr -> holdout NN of each sweep run of ``preset`` in the plan (None: not finished, or stale)."""
    out: dict[float, float | None] = {}
    for run in (r for r in plan.runs if r.kind == "sweep" and r.dataset == dataset and r.preset == preset and r.lr is not None):
        d = s.run_dir(run)
        summary = read_json(d / "summary.json") if inspect_run(d, planned_config(run, s), "sweep").done else None
        nn = summary.get("nn") if isinstance(summary, dict) else None
        out[run.lr] = float(nn) if isinstance(nn, (int, float)) else None
    return out


def swept(plan: Plan) -> list[tuple[str, str]]:
    """(dataset, preset) of every lr sweep in the plan, in plan order."""
    return list(dict.fromkeys((r.dataset, r.preset) for r in plan.runs if r.kind == "sweep"))


def extend_sweeps(plan: Plan, s: Settings) -> Plan:
    """The plan with the sweep runs its finished sweeps ask for beyond their grid (``Sweep.next_lr``),
    each right after its preset's other sweep runs."""
    sweep = s.scale.sweep
    grown = sweep is not None
    while grown:  # a finished extension may ask for the next one
        grown = False
        runs = list(plan.runs)
        for dataset, preset in swept(plan):
            lr = sweep.next_lr(sweep_scores(plan, s, dataset, preset))
            last = max(i for i, r in enumerate(runs) if r.kind == "sweep" and r.dataset == dataset and r.preset == preset)
            if lr is not None:  # beyond every lr tried, so not in the plan yet
                runs.insert(last + 1, with_lr(runs[last], lr))
                grown = True
        plan = replace(plan, runs=tuple(runs))
    return plan


def pick_lrs(plan: Plan, s: Settings) -> dict[str, float]:
    """"dataset/preset" -> the swept base lr with the best holdout NN (ties: the smaller lr),
    for every preset whose sweep has settled: every lr scored and none asked for beyond them."""
    picked = {}
    for dataset, preset in swept(plan):
        scores = sweep_scores(plan, s, dataset, preset)
        if s.scale.sweep and scores and all(v is not None for v in scores.values()) and s.scale.sweep.next_lr(scores) is None:
            picked[f"{dataset}/{preset}"] = best_lr(scores)  # type: ignore[arg-type]
    return picked


def detect_device(processes: int = 1) -> str:
    """The GPU name(s) from nvidia-smi, else the CPU model and the precision ``auto`` gives it
    (runs on CPUs with and without native bf16 then read apart in the report)."""
    name = ""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            name = names[0] if names else ""
        except (OSError, subprocess.SubprocessError):
            name = ""
    if not name:
        name = cpu_model() + (" (CPU, bf16 autocast)" if cpu_has_native_bf16() else " (CPU, fp32)")
    return f"{processes} × {name}" if processes > 1 else name


