"""The results document: tables, sweeps, NN curves, claims, commands and wall times."""

from __future__ import annotations

import math
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..jsonl import read_jsonl
from .plan import ABLATION_EVAL, BASELINE_LABELS, MAIN_EVAL, PIXELS_EVAL, Plan, RunSpec, Table, WARMUP_FRACTION
from .commands import Settings, Pending, display, preset_expr, eval_command, finetune_command, planned_config, rel, sweep_epochs, train_command
from .state import RunState, inspect_run, load_timing, median_images_per_s, phase_seconds, read_json, read_yaml
from .runner import sweep_scores
from .claims import evaluate_claims


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
        except Pending:  # the lr is not known yet: every other key must still match
            if run.lr_from is not None:
                planned, ignore = planned_config(replace(run, lr_from=None), s), ("train.base_lr",)
        except ConfigError:
            pass
        finished = read_json(d / "finetune.json") if run.kind == "finetune" else None
        records[run.key] = RunRecord(
            state=inspect_run(d, planned, run.kind, ignore),
            metrics=finished or read_json(d / "metrics.json"),
            summary=finished or read_json(d / "summary.json"),
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
    if lr is not None:
        return f"{lr:g}"
    saved = read_yaml(s.run_dir(run) / "config.yaml")  # a run trained before its sweep asked for more lrs
    trained = saved.get("train", {}).get("base_lr") if isinstance(saved, dict) else None
    return f"{trained:g} (sweep pending)" if isinstance(trained, (int, float)) else "sweep pending"


def table_md(table: Table, records: Mapping[str, RunRecord], plan: Plan, s: Settings | None = None) -> list[str]:
    runs = [plan.run(table.dataset, row.run) for row in table.rows]
    recs = [records[run.key] for run in runs]
    fewshot = any(r.metric("fewshot") is not None for r in recs)
    linear = table.key == "main" or any(r.metric("linear") is not None for r in recs)
    lr_col = s is not None and s.scale.sweep is not None
    progression_cols = table.key in ("ablation", "probes")  # a switch per row and its ΔNN
    tuned = finetune_runs(plan, table.dataset) if table.key == "main" else {}  # row run -> its fine-tuning run
    head = (["#", "row", "switch", "run", "NN", "ΔNN"] if progression_cols else ["run", "NN"]) + ["k-NN"]
    head += (["linear"] if linear else []) + (["few-shot"] if fewshot else []) + ["Sim"] + (["fine-tune"] if tuned else [])
    head += (["base lr"] if lr_col else []) + ["train", "eval"] + (["fine-tune time"] if tuned else []) + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous: float | None = None
    nn_of = {row.run: rec.metric("nn") for row, rec in zip(table.rows, recs)}
    for i, (row, run, r) in enumerate(zip(table.rows, runs, recs)):
        nn = r.metric("nn")
        if row.against is not None:
            previous = nn_of.get(row.against)
        switch = f"`{row.change}`" if row.change else "(preset)"
        name = row.label if run.kind == "baseline" else f"`{row.run}`"
        cells = [str(i), row.label, switch, name, fmt(nn)] if progression_cols else [name, fmt(nn)]
        if progression_cols:
            first = i == 0 if table.key == "ablation" else row.against is None
            cells.append("" if first else ("—" if nn is None or previous is None else f"{nn - previous:+.1f}"))
        cells.append(fmt(r.metric("knn")))
        cells += ([fmt(r.metric("linear"))] if linear else []) + ([fmt_fewshot(r)] if fewshot else [])
        ft = records[tuned[row.run].key] if row.run in tuned else None
        cells += [fmt(r.metric("sim"), 3)] + ([fmt(ft.metric("top1")) if ft else ""] if tuned else [])
        cells += ([fmt_lr(run, s)] if lr_col else []) + [fmt_time(phase_seconds(r.timing, "train")), fmt_time(phase_seconds(r.timing, "eval"))]
        cells += ([fmt_time(phase_seconds(ft.timing, "finetune")) if ft else ""] if tuned else []) + [r.status]
        lines.append("| " + " | ".join(cells) + " |")
        previous = nn
    return lines


def finetune_runs(plan: Plan, dataset: str) -> dict[str, RunSpec]:
    return {str(r.source): r for r in plan.runs if r.kind == "finetune" and r.dataset == dataset}


def finetune_note(table: Table, plan: Plan, s: Settings) -> list[str]:
    tuned = finetune_runs(plan, table.dataset)
    if table.key != "main" or not tuned:
        return []
    preset = next(iter(tuned.values())).preset
    return [f"Fine-tune: top-1 (%) on the test split after `mimkit finetune --preset {preset}` (configs/finetune/{preset}.yaml: "
            "MAE's recipe, the same for every row); the encoder-at-initialisation row is the same encoder fine-tuned from "
            "scratch (`model.from_scratch=true`), the row pretraining must beat.", ""]


def collapse_verdict(run_dir: Path) -> str | None:
    """For a run with the cluster head: prototypes in use and assignment entropy at its last logged
    step, and the verdict. Collapsed: the teacher's assignments near uniform (entropy at least 95% of
    log K: its tokens no longer tell the prototypes apart) or fewer than max(2, K / 100) prototypes in use."""
    last = next((rec for rec in reversed(read_jsonl(run_dir / "log.jsonl")) if "cluster/prototypes_used" in rec), None)
    config = read_yaml(run_dir / "config.yaml")
    if last is None or config is None:
        return None
    k = int(config["objectives"]["cluster"]["prototypes"])
    used, entropy, top = float(last["cluster/prototypes_used"]), float(last["cluster/entropy"]), math.log(k)
    collapsed = entropy >= 0.95 * top or used < max(2, k / 100)
    return (f"{used:.0f} of {k} prototypes in use, assignment entropy {entropy:.2f} nats (uniform: {top:.2f}) at step "
            f"{last.get('step', '?')} — **{'collapsed' if collapsed else 'no collapse'}**")


def collapse_md(table: Table, plan: Plan, s: Settings) -> list[str]:
    lines = []
    for row in table.rows:
        run = plan.run(table.dataset, row.run)
        if run.kind == "train" and (verdict := collapse_verdict(s.run_dir(run))):
            lines.append(f"- `{row.run}` collapse check (rule: collapsed when the entropy is at least 95% of log K or "
                         f"fewer than max(2, K/100) prototypes are in use): {verdict}")
    return lines + [""] if lines else []


def sweep_md(plan: Plan, s: Settings) -> list[str]:
    """Per dataset: the holdout NN of every preset at every swept lr, and the pick."""
    sweep = s.scale.sweep
    if sweep is None:
        return []
    lines = ["## Learning-rate sweep", "",
             f"Every preset trains {sweep.fraction:.0%} of its schedule at each base lr on the train split minus a seeded "
             "holdout (`data.holdout`), and is scored by NN on that holdout; the best lr (ties: the smaller) trains the "
             f"table's run. When the best is the smallest or largest lr tried, the sweep goes one grid step (×"
             f"{sweep.lrs[1] / sweep.lrs[0]:g}) beyond it, at most {sweep.extend} lrs past the grid; a blank cell is an lr "
             "that preset's sweep did not need. The ablation rows use the lr picked for `latent_mim`. The test split is not read.", ""]
    for key, ds in s.scale.datasets.items():
        presets = list(dict.fromkeys(r.preset for r in plan.runs if r.kind == "sweep" and r.dataset == key))
        if not presets:
            continue
        lrs = sorted({r.lr for r in plan.runs if r.kind == "sweep" and r.dataset == key and r.lr is not None})
        head = ["preset", *(f"lr {lr:g}" for lr in lrs), "picked"]
        lines += [f"**{ds.title}** (holdout: {ds.holdout} train images; {sweep_epochs(s.epochs_of(key), sweep)} epochs)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for preset in presets:
            scores = sweep_scores(plan, s, key, preset)
            picked = s.picked.get(f"{key}/{preset}")
            lines.append("| " + " | ".join([f"`{preset}`", *(fmt(scores[lr]) if lr in scores else "" for lr in lrs),
                                             "—" if picked is None else f"{picked:g}"]) + " |")
        lines.append("")
    return lines


# model keys that change how a step runs, not the weights it starts from
NOT_START_KEYS = ("drop_path_rate", "grad_checkpointing")


def start_differences(run: RunSpec, init_run: RunSpec, s: Settings) -> list[str]:
    """How ``run``'s context encoder before its first step differs from the init row's, as the
    ``key: value`` settings of ``run`` that differ (model, init.encoder, train.seed); [] when it
    starts from the same weights."""
    def start(r: RunSpec) -> dict[str, Any]:
        cfg = load_config(preset_expr(r, s), [*r.overrides, *s.overrides]).to_dict()
        keys = {f"model.{k}": v for k, v in cfg["model"].items() if k not in NOT_START_KEYS}
        return {**keys, "init.encoder": cfg["init"]["encoder"], "train.seed": cfg["train"]["seed"]}

    mine, theirs = start(run), start(init_run)
    return [f"{k}: {v}" for k, v in mine.items() if theirs.get(k) != v]


def init_row(table: Table, plan: Plan) -> RunSpec | None:
    """The table's encoder-at-initialisation run, if it has that row."""
    return next((plan.run(table.dataset, r.run) for r in table.rows if r.run == "init"), None)


def starts_md(table: Table, plan: Plan, s: Settings) -> list[str]:
    """Under a table with an init row: which runs start from other weights than that row, and how."""
    init = init_row(table, plan)
    if init is None:
        return []
    others = []
    for row in table.rows:
        run = plan.run(table.dataset, row.run)
        if run.kind == "train" and (diff := start_differences(run, init, s)):
            others.append(f"`{row.run}` ({', '.join(diff)})")
    if not others:
        return [f"Every run starts from the encoder of the init row (`{init.preset}`'s, before its first step).", ""]
    return [f"The init row is the encoder `{init.preset}` starts from, before its first step. Runs that start from "
            f"other weights, by the settings that differ: {'; '.join(others)}.", ""]


def nn_curve(run_dir: Path, batch: int) -> list[tuple[float, float]]:
    """(thousands of images seen, NN) points logged during training (``eval/nn`` in log.jsonl)."""
    return [(rec["step"] * batch / 1000, float(rec["eval/nn"])) for rec in read_jsonl(run_dir / "log.jsonl")
            if isinstance(rec.get("eval/nn"), (int, float))]


def draw_curves(table: Table, plan: Plan, s: Settings, path: Path) -> bool:
    """One PNG: the NN curve of every run of ``table`` (baselines as horizontal lines); False
    when there is nothing to draw or matplotlib is missing."""
    curves = {}
    levels = {}
    init = init_row(table, plan)
    from_init = set()  # the runs whose curve starts at the init row's NN: those that start from its weights
    for row in table.rows:
        run = plan.run(table.dataset, row.run)
        d = s.run_dir(run)
        if run.kind == "baseline":
            nn = (read_json(d / "metrics.json") or {}).get("nn")
            if isinstance(nn, (int, float)):
                levels[row.label] = float(nn)
        elif points := nn_curve(d, s.batch):
            curves[row.run] = points
            if init is not None and not start_differences(run, init, s):
                from_init.add(row.run)
    if not curves:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    start = levels.get(BASELINE_LABELS["init"])
    for name, points in curves.items():
        points = ([(0.0, start)] if start is not None and name in from_init and points[0][0] > 0 else []) + points
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
             "Each verdict is computed from the main table by the rule shown (NN, linear, fine-tune in top-1 %; Sim a cosine); "
             "nothing here is edited by hand.", ""]
    mains = [t for t in plan.tables if t.key == "main"]
    if not mains:
        return lines + ["No main table in this plan (`--tables main`), so no claim is checked.", ""]
    for t in mains:
        ds = s.dataset(t.dataset)
        recs = {row.run: records[f"{t.dataset}/{row.run}"] for row in t.rows}
        metrics = {name: None if r.state.stale else r.metrics for name, r in recs.items()}
        tuned = finetune_runs(plan, t.dataset)
        for name, ft in tuned.items():  # each row's fine-tuning top-1, under "finetune"
            metrics[name] = {**(metrics.get(name) or {}), "finetune": records[ft.key].metric("top1")}
        lines += [f"**{ds.title}**", ""]
        for c in evaluate_claims(metrics, ds.num_classes, baselines=s.scale.baselines, finetune=bool(tuned)):
            lines.append(f"- {c.title} — rule: {c.rule} — **{c.verdict}**" + (f" ({c.detail})" if c.detail else ""))
        lines.append("")
    return lines


def planned_commands(run: RunSpec, s: Settings) -> list[str]:
    try:
        if run.kind == "finetune":
            return [display(finetune_command(run, s), s.python) + "   # planned"]
        train = [] if run.kind == "baseline" else [display(train_command(run, s), s.python) + "   # planned"]
    except Pending as e:
        return [f"# planned: {e}"]
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
    head = ["run", "steps", "epochs", "img/s (median)", "train", "eval", "attempts", "device", "status"]
    lines = ["## Runs", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in plan.runs:
        r = records[run.key]
        summ, attempts = r.summary or {}, r.timing["attempts"]
        devices = "; ".join(dict.fromkeys(a.get("device", "?") for a in attempts)) or "—"
        lines.append("| " + " | ".join([
            f"`{run.key}`", str(summ.get("steps", "—")), str(summ.get("epochs", "—")),
            fmt(r.images_per_s, 0), fmt_time(phase_seconds(r.timing, "train") + phase_seconds(r.timing, "finetune")),
            fmt_time(phase_seconds(r.timing, "eval")),
            str(len(attempts)), devices, r.status,
        ]) + " |")
    total = sum(phase_seconds(r.timing, p) for r in records.values() for p in ("train", "eval", "finetune"))
    return lines + ["", "The train column of a fine-tuning run is its fine-tuning.", "",
                    f"Wall time of every attempt so far, training, evaluation and fine-tuning: {fmt_time(total)}.", ""]


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
        "Written by `mimkit reproduce` from the runs under "
        f"`{rel(s.out)}` ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}); do not edit by hand — rerun "
        "`mimkit reproduce --report-only` (with the same plan options) to refresh it. "
        "How the plan is built: `docs/reproduce.md`.",
        "",
        f"- Devices: {'; '.join(devices) if devices else '— (nothing has run yet)'}",
        f"- Encoder: {encoder}" + (f" + overlay `{s.overlay}`" if s.overlay else "")
        + f"; batch {s.batch}; epochs: {epochs}; warm-up {WARMUP_FRACTION:.0%} of the epochs; "
        + ("base lr from the sweep below; " if s.scale.sweep else "")
        + "every other setting from each preset",
        f"- Extra overrides: {' '.join(f'`{o}`' for o in (*s.scale.overrides, *s.overrides)) or 'none'}",
        "- Evaluation (`mimkit evaluate`): "
        + ", ".join(f"{' and '.join(present)} `{' '.join(args)}`" for keys, args in ((("main",), MAIN_EVAL), (("ablation", "probes"), ABLATION_EVAL))
                    if (present := [k for k in keys if any(t.key == k for t in plan.tables)]))
        + (f", raw pixels `{' '.join(PIXELS_EVAL)}`" if s.scale.baselines else "")
        + (f", then `{shlex.join(s.eval_args)}`" if s.eval_args else "")
        + "; NN is leave-one-out 1-NN on the test split (mean patch token before the final norm), "
        "k-NN and linear are fitted on the train split, Sim is the mean pairwise cosine of pooled test features; "
        "images are resized to side / `data.eval_crop` of each run (1.0 unless set) and centre-cropped to the "
        "encoder's native side",
    ]
    if s.scale.baselines:
        lines.append("- Baselines: an encoder at initialisation (a run's config and seed, no step taken; under each table, "
                     "which runs start from other weights) and raw pixels (each normalised image flattened), scored by "
                     "the same protocols")
    if invocation:
        lines.append(f"- Generated by: `{invocation}`")
    lines.append("")
    for t in plan.tables:
        ds = s.dataset(t.dataset)
        lines += [f"## {t.title}", "", f"{ds.describe()}; chance {100 / ds.num_classes:.1f} %.", ""]
        if t.key == "ablation":
            lines += ["Each row adds one switch to the previous row (overrides on `naive_latent_mim`); the first and last "
                      "rows are the main table's `naive_latent_mim` and `latent_mim` runs. ΔNN is against the previous row.", ""]
        if t.key == "probes":
            lines += ["Diagnostics, not tuning: each probe changes one setting of a main-table preset to test an explanation "
                      "of how that preset fares at this scale (docs/reproduce.md), trains at the lr picked for that preset "
                      "and is evaluated with the ablation's protocols. ΔNN is against the preset's main-table run; the "
                      "main table keeps the papers' settings whatever the probes show.", ""]
        lines += table_md(t, records, plan, s) + [""] + starts_md(t, plan, s) + finetune_note(t, plan, s) + collapse_md(t, plan, s)
        png = figures / f"nn-{t.dataset}-{t.key}.png" if figures is not None else None
        if png is not None and draw_curves(t, plan, s, png):
            lines += [f"![NN during training, {t.title}]({png.parent.name}/{png.name})", ""]
    lines += sweep_md(plan, s) + claims_md(plan, records, s) + details_md(plan, records) + commands_md(plan, records, s)
    return "\n".join(lines).rstrip() + "\n"


SMALL_FILES = ("config.yaml", "summary.json", "metrics.json", "timing.json", "log.jsonl", "train.log", "eval.log",
               "finetune.yaml", "finetune.json", "finetune.log")


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


