"""What the reproduction runs: datasets, scales, presets, sweeps, the tables and the ablation progression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal




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
    finetune: str | None = None  # the `mimkit finetune` preset of the fine-tuning column (None: no column)

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
    "cifar10": DatasetSpec("cifar10", "CIFAR-10", image_px=32, patch=4, native=32, gap=1, epochs=4, overlay="micro", holdout=5000,
                           finetune="micro"),
    "imagenette": DatasetSpec("imagenette", "Imagenette", image_px=112, patch=8, native=64, gap=2, epochs=20, overlay="micro64",
                              holdout=1000, finetune="micro64"),
}
MAIN_PRESETS = ("naive_latent_mim", "mae", "latent_mim", "pilamim", "capi")  # the table's rows
RUN_ORDER = ("mae", "latent_mim", "pilamim", "naive_latent_mim", "capi")  # a partial table holds the main comparison first
FINETUNED = ("init", "mae", "latent_mim", "pilamim", "capi")  # the rows fine-tuned (init: from scratch), in that order
MAIN_EVAL = ("--protocols", "nn", "knn", "linear", "sim")
ABLATION_EVAL = ("--protocols", "nn", "knn", "sim")
PIXELS_EVAL = ("--protocols", "nn", "knn", "linear")
DEFAULT_ABLATION_DATASET = "imagenette"
DEFAULT_PROBE_DATASET = "cifar10"
ALL_TABLES = ("main", "ablation", "probes")
DEFAULT_TABLES = ("main", "ablation")  # what a plain `mimkit reproduce` runs; the probes are asked for by name
WARMUP_FRACTION = 0.1


def best_lr(scores: Mapping[float, float]) -> float:
    """The lr with the best score; of equal scores, the smaller lr."""
    return max(sorted(scores), key=lambda lr: scores[lr])


@dataclass(frozen=True)
class Sweep:
    """The learning-rate protocol, the same for every preset: a short run (``fraction`` of the
    full schedule) at each base lr on the train split minus a seeded holdout; the lr with the
    best NN on the holdout trains the table's run. The test split is never looked at."""

    lrs: tuple[float, ...]  # a geometric grid
    fraction: float
    extend: int = 2  # lrs tried beyond the grid at most, one grid step at a time, while the best sits on an edge

    def next_lr(self, scores: Mapping[float, float | None]) -> float | None:
        """The lr the sweep needs next beyond its grid, given every lr tried so far and its holdout
        NN (None: not scored yet): one grid step past the smallest or largest lr tried when the best
        (ties: the smaller) is that lr, rounded to 3 significant digits, at most ``extend`` past the
        grid; None when the sweep is settled or still waiting for a score."""
        if not scores or any(v is None for v in scores.values()):
            return None
        tried = sorted(scores)
        best = best_lr(scores)  # type: ignore[arg-type]
        if sum(lr not in self.lrs for lr in tried) >= self.extend or best not in (tried[0], tried[-1]):
            return None
        step = self.lrs[1] / self.lrs[0]
        return float(f"{best / step if best == tried[0] else best * step:.3g}")


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
    results: str  # the report, relative to the working directory
    out: str  # run directories, relative to the working directory
    overrides: tuple[str, ...] = ()  # config overrides of every run of this scale
    save_every: int = 500  # checkpoint cadence in steps, pretraining and fine-tuning alike


SCALES: dict[str, Scale] = {
    # lr per step for every preset, as the micro overlays set it: over 4-20 epochs a per-epoch hold
    # (pilamim's) would drop the 10 % warm-up
    "gpu": Scale("gpu", DATASETS, 256, "vit_tiny_patch16_224", None, False, False, "docs/results.md", "runs/reproduce",
                 ("train.lr_per=step",)),
    # the run directories live beside the report (checkpoints and encoders git-ignored), so the
    # finished runs travel with the repository and a later session resumes the table
    "micro": Scale("micro", MICRO_DATASETS, 256, None, Sweep((5e-4, 1.5e-3, 4.5e-3), 0.25), True, True,
                   "docs/results-micro.md", "docs/results-micro/runs",
                   ("train.eval_baseline=false", "train.trackers=[none]"),  # the init row replaces each run's own
                   # about 5 minutes of training on a 2-core CPU (a ~40 MB checkpoint, under a second to
                   # write), so a run cut short by the end of a session loses little once resumed
                   save_every=50),
}


@dataclass(frozen=True)
class RunSpec:
    """One pretraining run: its directory is OUT/<dataset>/<name>."""

    dataset: str
    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] | None = MAIN_EVAL  # None: not evaluated (a sweep run scores itself)
    kind: Literal["train", "sweep", "baseline", "finetune"] = "train"
    lr_from: str | None = None  # the preset whose lr sweep picks this run's train.base_lr
    lr: float | None = None  # a sweep run: its base lr
    baseline: str | None = None  # a baseline row: "init" or "pixels" (mimkit evaluate --baseline)
    source: str | None = None  # a finetune run: the run (name) whose encoder it fine-tunes; preset is the finetune preset

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


@dataclass(frozen=True)
class Row:
    run: str  # the RunSpec name within the table's dataset
    label: str
    change: str = ""
    against: str | None = None  # the row run its ΔNN is taken against (None: the row above)


@dataclass(frozen=True)
class Table:
    key: str  # "main", "ablation" or "probes"
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


@dataclass(frozen=True)
class Probe:
    """A diagnostic: one setting of a main-table preset changed, trained at that preset's lr, to test
    an explanation of how the preset fares at this scale. Its table shows it beside the preset's run."""

    name: str
    preset: str
    label: str
    adds: tuple[str, ...]


PROBES = (
    # A micro table run has ~780 steps; the papers' momenta were set for hundreds of thousands.
    Probe("probe/capi_momentum0.99", "capi", "teacher EMA 0.99 → 1 (latent_mim's), not 0.999 → 1",
          ("target.momentum=[0.99,1.0]",)),
    Probe("probe/capi_predict20", "capi", "predict 20 % of the masked cells (about 8 per image), not 5 %",
          ("objectives.cluster.prediction_subsampling=0.2",)),
    Probe("probe/pilamim_copied_teacher", "pilamim", "teacher starts as a copy of the student, not its own random weights",
          ("init.target=same",)),
)


BASELINE_LABELS = {"init": "encoder at initialisation", "pixels": "raw pixels"}


def sweep_name(preset: str, lr: float) -> str:
    return f"sweep/{preset}/lr{lr:g}"


def finetune_name(source: str, preset: str) -> str:
    """Where ``mimkit finetune`` writes by default: beside the run it fine-tunes (``-scratch``: the init row)."""
    return f"{source}/finetune-{preset}" + ("-scratch" if source == "init" else "")


def sweep_run(ds: DatasetSpec, preset: str, lr: float, overrides: tuple[str, ...] = ()) -> RunSpec:
    return RunSpec(ds.key, sweep_name(preset, lr), preset, (*overrides, f"data.holdout={ds.holdout}", f"train.base_lr={lr:g}"),
                   None, "sweep", lr=lr)


def with_lr(run: RunSpec, lr: float) -> RunSpec:
    """A sweep run of the same preset at another base lr."""
    overrides = tuple(f"train.base_lr={lr:g}" if o.startswith("train.base_lr=") else o for o in run.overrides)
    return replace(run, name=sweep_name(run.preset, lr), overrides=overrides, lr=lr)


def main_runs(ds: DatasetSpec, scale: Scale = SCALES["gpu"]) -> list[RunSpec]:
    """The main table's runs in the order they run: the baselines, then per preset its lr
    sweep (when the scale has one) followed by its run. When the dataset has a fine-tuning
    preset, each row in FINETUNED is fine-tuned right after it (the init row from scratch):
    a run directory keeps its weights only on the machine that trained it."""
    gap = {"latent_mim": (f"masking.gap={ds.gap}",)}

    def finetuned(source: str) -> list[RunSpec]:
        if not ds.finetune or source not in FINETUNED:
            return []
        return [RunSpec(ds.key, finetune_name(source, ds.finetune), ds.finetune, eval_args=None, kind="finetune", source=source)]

    runs: list[RunSpec] = []
    if scale.baselines:
        for b in BASELINE_LABELS:
            runs += [RunSpec(ds.key, b, "mae", (), PIXELS_EVAL if b == "pixels" else MAIN_EVAL, "baseline", baseline=b),
                     *finetuned(b)]
    for preset in RUN_ORDER:
        if scale.sweep is not None:
            runs += [sweep_run(ds, preset, lr, gap.get(preset, ())) for lr in scale.sweep.lrs]
        runs += [RunSpec(ds.key, preset, preset, gap.get(preset, ()), lr_from=preset if scale.sweep else None), *finetuned(preset)]
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


def probe_runs(ds: DatasetSpec, scale: Scale = SCALES["gpu"]) -> list[RunSpec]:
    """The probed presets' main runs with their sweeps, then each probe at its preset's picked lr."""
    probed = {p.preset for p in PROBES}
    mains = [r for r in main_runs(ds, scale) if r.kind in ("sweep", "train") and r.preset in probed]
    by_preset = {r.preset: r for r in mains if r.kind == "train"}
    return mains + [RunSpec(ds.key, p.name, p.preset, (*by_preset[p.preset].overrides, *p.adds), ABLATION_EVAL,
                            lr_from=by_preset[p.preset].lr_from) for p in PROBES]


def build_plan(tables: Sequence[str] = DEFAULT_TABLES, ablation_dataset: str = DEFAULT_ABLATION_DATASET,
               scale: Scale = SCALES["gpu"], probe_dataset: str = DEFAULT_PROBE_DATASET) -> Plan:
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
    if "probes" in tables:
        ds = scale.datasets[probe_dataset]
        for r in probe_runs(ds, scale):
            runs.setdefault(r.key, r)
        rows = []
        for preset in dict.fromkeys(p.preset for p in PROBES):
            rows.append(Row(preset, f"{preset} (its main-table run)"))
            rows += [Row(p.name, p.label, " ".join(p.adds), against=preset) for p in PROBES if p.preset == preset]
        out.append(Table("probes", f"Probes — explanations tested on {ds.title}", ds.key, tuple(rows)))
    return Plan(tuple(runs.values()), tuple(out))


