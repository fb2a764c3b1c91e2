"""Pretrain and evaluate the Latent MIM comparisons at small scale, then write the results document.

    mimkit reproduce --data-root .data --workers 12 --time-budget 25   # main + ablation tables
    mimkit reproduce --data-root .data --tables main --datasets cifar10
    mimkit reproduce --scale micro --time-budget 110   # the CPU-sized study
    mimkit reproduce --dry-run                # print what each run still needs, run nothing
    mimkit reproduce --report-only            # rewrite the document from the runs on disk

Every run is `python -m mimkit train --preset P --data D --output OUT/<dataset>/<name> [overrides]`, then
`python -m mimkit evaluate --checkpoint OUT/<dataset>/<name> --out OUT/<dataset>/<name>/metrics.json`,
run from the working directory (paths are relative to it). A run with summary.json is not trained
again, a run with checkpoints is continued with --resume, a run with metrics.json is not evaluated
again; each attempt's wall time, command and device accumulate in OUT/<dataset>/<name>/timing.json.
Trailing key=value arguments override the config of every run (train.max_steps=2 for a smoke test).
The plan, the geometry and the claim rules: docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from ..config import ConfigError
from .plan import ALL_TABLES, DATASETS, DEFAULT_ABLATION_DATASET, DEFAULT_PROBE_DATASET, DEFAULT_TABLES, Plan, RunSpec, SCALES, Scale, build_plan
from .commands import Settings, Pending, display, phases, planned_config, rel
from .state import inspect_run, lock_holder
from .runner import Budget, Outcome, Runner, detect_device, extend_sweeps, pick_lrs, process_run, run_logged, terminate
from .report import collect, export, render_results


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
        f"{key}: {Path(sources[key]).resolve()} does not exist (give --data-root DIR holding {key}/ in the Hub's parquet "
        f"layout, or --{key} DIR, or --{key} embedded)"
        for key in datasets
        if sources[key] != "embedded" and not Path(sources[key]).exists()
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mimkit reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=".data", help="folder holding cifar10/ and imagenette/ (default: .data)")
    for key in DATASETS:
        g.add_argument(f"--{key}", help=f"the {key} dataset dir (overrides --data-root), or 'embedded' for the shipped slice")
    g = p.add_argument_group("plan")
    g.add_argument("--scale", choices=list(SCALES), default="gpu",
                   help="gpu: ViT-Tiny on a 14x14 grid, sized for one GPU; micro: the micro overlays' 192-wide ViT on an "
                   "8x8 grid with an lr sweep, baselines and NN curves, sized for a CPU (default: %(default)s)")
    g.add_argument("--tables", default=",".join(DEFAULT_TABLES),
                   help="tables to run, of main, ablation and probes (diagnostics: one preset setting changed to test an "
                   "explanation; run only when named); the report covers all three (default: %(default)s)")
    g.add_argument("--datasets", default=",".join(DATASETS), help="datasets to run (the report covers both; default: %(default)s)")
    g.add_argument("--ablation-dataset", default=DEFAULT_ABLATION_DATASET, choices=list(DATASETS),
                   help="the dataset the ablation table trains on (default: %(default)s)")
    g.add_argument("--probe-dataset", default=DEFAULT_PROBE_DATASET, choices=list(DATASETS),
                   help="the dataset the probes train on (default: %(default)s)")
    g.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these runs (NAME or dataset/NAME)")
    g.add_argument("--model", help="timm ViT of every run (default: the scale's: vit_tiny_patch16_224 for gpu, the overlays' for micro)")
    g.add_argument("--epochs", help="N for every dataset, or cifar10=N,imagenette=M (default: the scale's, "
                   + "; ".join(f"{n}: " + ",".join(f"{k}={d.epochs}" for k, d in sc.datasets.items()) for n, sc in SCALES.items()) + ")")
    g.add_argument("--batch", type=int, help="global batch of every run (default: the scale's, 256)")
    g.add_argument("--workers", type=int, help="data.num_workers of every run (default: the presets')")
    g.add_argument("--overlay", help="a preset stacked on every run's preset ('tiny' for smoke tests)")
    g.add_argument("--eval-args", default="", help='extra `mimkit evaluate` arguments, e.g. "--max-train 5000"')
    g.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    g = p.add_argument_group("execution")
    g.add_argument("--out", help="runs go to OUT/<dataset>/<name> (default: "
                   + "; ".join(f"{n}: {sc.out}" for n, sc in SCALES.items()) + ")")
    g.add_argument("--results", help="the report to write (default: " + "; ".join(f"{n}: {sc.results}" for n, sc in SCALES.items())
                   + "); pictures go to the folder of the same name"),
    g.add_argument("--dry-run", action="store_true", help="print the commands each run still needs, run nothing, write nothing")
    g.add_argument("--report-only", action="store_true", help="write the report from the runs on disk, run nothing")
    g.add_argument("--time-budget", type=float, metavar="MIN", help="start no run past this many minutes")
    g.add_argument("--processes", type=int, default=1, help="accelerate launch --num_processes N when N > 1")
    g.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each with an equal share of the CPU cores (OMP_NUM_THREADS); a run that waits "
                   "for another starts once that one is done. On a 2-core CPU, two 1-thread runs train 14-19%% "
                   "more images/s in all than one 2-thread run, each taking about 1.7x as long (default: 1)")
    g.add_argument("--export", metavar="DIR", help="after each run, copy the report and each run's small files to DIR")
    args = p.parse_intermixed_args(argv)
    moved = [x for x in args.only if "=" in x]  # key=value after --only NAME ... are overrides
    args.only = [x for x in args.only if "=" not in x]
    args.overrides = [*args.overrides, *moved]
    scale = SCALES[args.scale]
    args.out = args.out or scale.out
    args.results = args.results or scale.results
    args.batch = args.batch or scale.batch
    if args.processes < 1 or args.jobs < 1 or args.batch < 1 or (args.workers is not None and args.workers < 0):
        p.error("--processes, --jobs and --batch must be >= 1, --workers >= 0")
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


def select(plan: Plan, datasets: Sequence[str], only: Sequence[str], grid: Sequence[float] = ()) -> list[RunSpec]:
    """The runs to process: every run of ``datasets``, or the ``only`` ones; a sweep's runs beyond
    its ``grid`` come with any named run of that sweep and with the run whose lr it picks, and a
    run's fine-tuning comes with it (its weights may not outlive the session that trains it)."""
    known = {r.name for r in plan.runs} | {r.key for r in plan.runs}
    unknown = [x for x in only if x not in known]
    if unknown:
        raise SystemExit(f"error: --only: no run named {', '.join(unknown)} in this plan; runs: "
                         + ", ".join(sorted({r.name for r in plan.runs})))
    named = {r.key for r in plan.runs if r.name in only or r.key in only}
    named |= {r.key for r in plan.runs if r.kind == "finetune" and f"{r.dataset}/{r.source}" in named}
    sweeps = {(r.dataset, r.preset) for r in plan.runs if r.key in named and (r.kind == "sweep" or r.lr_from == r.preset)}
    beyond = {r.key for r in plan.runs if r.kind == "sweep" and r.lr not in grid and (r.dataset, r.preset) in sweeps}
    return [r for r in plan.runs if r.dataset in datasets and (not only or r.key in named | beyond)]


def write_report(plan: Plan, s: Settings, results: Path, invocation: str, export_dir: str | None) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(render_results(plan, collect(plan, s), s, invocation, figures=results.with_suffix("")))
    if export_dir:
        export(plan, s, results, Path(export_dir))


def dry_run(selection: Sequence[RunSpec], s: Settings, show: Callable[[str], None] = print) -> None:
    for run in selection:
        try:
            state = inspect_run(s.run_dir(run), planned_config(run, s), run.kind)
        except Pending as e:
            show(f"# {run.key} [waits: {e}]")
            continue
        status = "stale" if state.stale else "done" if state.done else "eval" if state.trained else \
            "resume" if state.checkpoint else "new"
        try:
            steps = phases(run, s, state.trained, state.evaluated, state.checkpoint)
        except Pending as e:
            show(f"# {run.key} [waits: {e}]")
            continue
        holder = None if state.done else lock_holder(s.run_dir(run))
        show(f"# {run.key} [{status}{f', running in {holder}' if holder else ''}]")
        for _, argv in steps:
            show(display(argv, s.python))


def share_threads(jobs: int) -> int:
    """Give each of ``jobs`` concurrent runs an equal share of the CPU cores, through the
    OMP_NUM_THREADS their processes inherit (unless it is set already); the threads per run."""
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return int(os.environ["OMP_NUM_THREADS"])


def next_startable(queue: Sequence[RunSpec], s: Settings, busy: bool) -> RunSpec | None:
    """The first run in ``queue`` that does not wait for another; while runs are in flight (``busy``)
    a waiting run is passed over (what it waits for may be running), else it is taken, to be reported."""
    for run in queue:
        try:
            planned_config(run, s)
        except Pending:
            if busy:
                continue
        return run
    return None


def main(argv: Sequence[str] | None = None, runner: Runner = run_logged) -> int:
    args = parse_args(argv)
    tables = comma_list(args.tables, ALL_TABLES, "--tables")
    datasets = comma_list(args.datasets, DATASETS, "--datasets")
    s = settings_from(args)
    plan = extend_sweeps(build_plan(ALL_TABLES, args.ablation_dataset, s.scale, args.probe_dataset), s)  # the report covers every table
    s = replace(s, picked=pick_lrs(plan, s))
    results = Path(args.results)
    invocation = display(["mimkit", "reproduce", *(argv if argv is not None else sys.argv[1:])])
    if args.report_only:
        write_report(plan, s, results, invocation, args.export)
        print(f"wrote {results}")
        return 0
    grid = s.scale.sweep.lrs if s.scale.sweep else ()
    selected_plan = extend_sweeps(build_plan(tables, args.ablation_dataset, s.scale, args.probe_dataset), s)
    selection = select(selected_plan, datasets, args.only, grid)
    if not selection:
        print(f"error: no runs selected: --tables {args.tables} on --datasets {args.datasets}"
              + (f" with --only {' '.join(args.only)}" if args.only else "")
              + f" (the ablation table runs on --ablation-dataset {args.ablation_dataset}, the probes on "
              f"--probe-dataset {args.probe_dataset})", file=sys.stderr)
        return 2
    for run in selection:
        try:
            planned_config(run, s)
        except Pending:  # its config is its sweep runs' (validated here) with the picked lr
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
    if args.jobs > 1:
        threads = share_threads(args.jobs)
        device += f", one of {args.jobs} runs at a time ({threads} thread{'s' * (threads > 1)} each)"
    budget = Budget(args.time_budget * 60 if args.time_budget is not None else None)
    print(f"{len(selection)} runs on {device}; results: {results}", flush=True)
    outcomes: list[Outcome] = []
    queue, running = list(selection), {}
    show = lambda m: print(m, flush=True)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            while queue or running:
                while queue and len(running) < args.jobs:  # start what can start: a run that waits for a
                    run = next_startable(queue, s, busy=bool(running))  # running one is left for later
                    if run is None:
                        break
                    queue.remove(run)
                    running[pool.submit(process_run, run, s, device, budget, runner, show)] = run
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    del running[future]
                    outcomes.append(future.result())
                plan, selected_plan = extend_sweeps(plan, s), extend_sweeps(selected_plan, s)  # a sweep may ask for an lr beyond its grid
                seen = {o.run for o in outcomes} | {r.key for r in queue} | {r.key for r in running.values()}
                queue = [r for r in select(selected_plan, datasets, args.only, grid) if r.key not in seen] + queue  # (it runs next)
                s = replace(s, picked=pick_lrs(plan, s))  # a settled sweep releases its preset's run
                write_report(plan, s, results, invocation, args.export)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not outcomes:
        write_report(plan, s, results, invocation, args.export)
    counts = {k: sum(o.status == k for o in outcomes) for k in ("done", "skipped", "failed", "deferred", "stale")}
    print("summary: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"; wrote {results}")
    if not counts["deferred"] and not counts["failed"] and not counts["stale"]:
        print("all selected runs are complete")
    return 1 if counts["failed"] or counts["stale"] else 0


if __name__ == "__main__":
    sys.exit(main())
