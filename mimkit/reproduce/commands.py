"""The settings of one reproduction and the exact train / evaluate command of each run."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_config
from ..finetune.config import load_finetune_config
from ..hub import local_weights
from .plan import DatasetSpec, RunSpec, SCALES, Scale, Sweep, WARMUP_FRACTION


@dataclass(frozen=True)
class Settings:
    """What the command line sets for every run."""

    sources: Mapping[str, str]  # dataset -> data source as passed to mimkit train
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

    def source_dir(self, run: RunSpec) -> Path:
        """The directory of the run a finetune run fine-tunes."""
        return self.out / run.dataset / str(run.source)

    def dataset(self, key: str) -> DatasetSpec:
        return self.scale.datasets[key]

    def epochs_of(self, key: str) -> int:
        return self.epochs[key] if self.epochs and key in self.epochs else self.dataset(key).epochs


def rel(path: Path | str) -> str:
    """A path as the commands (run from the working directory) spell it."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
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
        f"train.save_every={s.scale.save_every}",
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


class Pending(Exception):
    """A run waits for others: the lr sweep its lr comes from, or the run it fine-tunes."""


def run_overrides(run: RunSpec, s: Settings) -> list[str]:
    """Every override of ``run``: the scale's and dataset's, the run's own, its sweep's lr, the command line's.
    Raises Pending for a run whose lr sweep is not complete."""
    out = [*common_overrides(s.dataset(run.dataset), s, run.kind), *run.overrides]
    if run.lr_from is not None:
        lr = s.picked.get(f"{run.dataset}/{run.lr_from}")
        if lr is None:
            raise Pending(f"{run.key} waits for the lr sweep of {run.lr_from}")
        out.append(f"train.base_lr={lr:g}")
    return [*out, *s.overrides]


def preset_expr(run: RunSpec, s: Settings) -> str:
    return "+".join(p for p in (run.preset, s.dataset(run.dataset).overlay, s.overlay) if p)


def launcher(command: str, s: Settings) -> list[str]:
    """``python -m mimkit COMMAND``, through ``accelerate launch`` for several processes."""
    if s.processes == 1:
        return [s.python, "-m", "mimkit", command]
    return [s.python, "-m", "accelerate.commands.launch", "--num_processes", str(s.processes), "--num_machines", "1",
            "--dynamo_backend", "no", "-m", "mimkit", command]


def train_command(run: RunSpec, s: Settings, resume: bool = False) -> list[str]:
    cmd = [*launcher("train", s), "--preset", preset_expr(run, s), "--data", s.sources[run.dataset], "--output", rel(s.run_dir(run))]
    return cmd + (["--resume", "latest"] if resume else []) + run_overrides(run, s)


def eval_command(run: RunSpec, s: Settings) -> list[str]:
    d = s.run_dir(run)
    baseline = ["--baseline", run.baseline] if run.baseline else []
    return [*launcher("evaluate", s), "--checkpoint", rel(d), *baseline, "--data", s.sources[run.dataset],
            "--out", rel(d / "metrics.json"), *(run.eval_args or ()), *s.eval_args]


def finetune_overrides(run: RunSpec, s: Settings) -> list[str]:
    """A fine-tuning run's overrides: its preset as it stands, no tracker, from scratch for the init row.
    Raises Pending until the run it fine-tunes has finished training (the init row: been set up)."""
    source = s.source_dir(run)
    if not (source / ("config.yaml" if run.source == "init" else "summary.json")).is_file():
        raise Pending(f"{run.key} waits for {run.dataset}/{run.source} to finish")
    if run.source != "init" and s.scale.sweep is not None and f"{run.dataset}/{run.source}" not in s.picked:
        raise Pending(f"{run.key} waits for the lr sweep of {run.source} to settle")
    out = ["train.trackers=[none]", f"train.save_every={s.scale.save_every}",
           *(["model.from_scratch=true"] if run.source == "init" else [])]
    return out + ([f"data.num_workers={s.workers}"] if s.workers is not None else [])


def finetune_command(run: RunSpec, s: Settings, resume: bool = False) -> list[str]:
    """The command that fine-tunes ``run``. Raises Pending as ``finetune_overrides`` does, and when
    the weights to fine-tune are not on this machine (a finished fine-tuning needs them no more)."""
    extra = finetune_overrides(run, s)
    source = s.source_dir(run)
    if run.source != "init" and local_weights(source) is None:
        raise Pending(f"{run.key} needs the weights of {run.dataset}/{run.source}, which are not in {rel(source)} (git keeps "
                      "a run's small files only): to fine-tune it, move that directory aside and train it again")
    cmd = [*launcher("finetune", s), "--preset", run.preset, "--checkpoint", rel(source),
           "--data", s.sources[run.dataset], "--output", rel(s.run_dir(run))]
    return cmd + (["--resume"] if resume else []) + extra


def phases(run: RunSpec, s: Settings, trained: bool, evaluated: bool, checkpoint: bool) -> list[tuple[str, list[str]]]:
    """The (phase, argv) steps ``run`` still needs, in order, given what its directory holds."""
    if run.kind == "finetune":
        return [] if trained else [("finetune", finetune_command(run, s, resume=checkpoint))]
    steps = [] if trained or run.kind == "baseline" else [("train", train_command(run, s, resume=checkpoint))]
    return steps + ([("eval", eval_command(run, s))] if run.eval_args is not None and not evaluated else [])


def display(argv: Sequence[str], python: str = sys.executable) -> str:
    return shlex.join(["python" if a == python else a for a in argv])


def planned_config(run: RunSpec, s: Settings) -> dict[str, Any]:
    """The config the run trains with (a finetune run: its fine-tuning config). Raises Pending."""
    if run.kind == "finetune":
        where = [f"checkpoint={rel(s.source_dir(run))}", f"train.output_dir={rel(s.run_dir(run))}"]
        return dataclasses.asdict(load_finetune_config(run.preset, [*where, *finetune_overrides(run, s)]))
    return load_config(preset_expr(run, s), run_overrides(run, s)).to_dict()


