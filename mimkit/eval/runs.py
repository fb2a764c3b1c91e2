"""What the scripts evaluate: an encoder from a checkpoint (with its run's config when there
is one) and the labelled splits it is scored on."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import timm
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig, RunConfig, config_from_yaml
from ..data import ImageDataset, Splits, eval_transform, load_splits
from ..encoder import resolve_geometry
from .features import native_size

log = logging.getLogger(__name__)

VARIANT_ORDER = ("pixel", "latent", "pixel+latent", "other")
HUB_PREFIXES = ("hf-hub:", "hf_hub:")


@dataclass
class Run:
    """A loaded encoder and what is known about how it was trained."""

    vit: VisionTransformer
    source: str  # the checkpoint as given (or "timm:NAME" for random weights)
    config: RunConfig | None  # the run's resolved config.yaml, when found
    config_path: str | None
    name: str  # short name: the run directory, the Hub id's tail, or the timm name

    @property
    def objectives(self) -> list[str]:
        return self.config.objectives.active() if self.config is not None else []

    @property
    def variant(self) -> str:
        """``pixel`` (MAE), ``latent`` (Latent MIM), ``pixel+latent`` (PiLaMIM) or ``other``."""
        heads = set(self.objectives)
        if "pixel" in heads and heads & {"latent", "cls"}:
            return "pixel+latent"
        if "pixel" in heads:
            return "pixel"
        if heads & {"latent", "cls"}:
            return "latent"
        return "other"

    @property
    def label(self) -> str:
        if self.config is None:
            return self.name
        preset = self.config.preset or self.name
        return f"{preset} [{'+'.join(self.objectives)}]"

    def describe(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "variant": self.variant,
            "preset": self.config.preset if self.config is not None else None,
            "objectives": self.objectives,
            "config": self.config_path,
            "architecture": (getattr(self.vit, "pretrained_cfg", None) or {}).get("architecture"),
            "image_size": native_size(self.vit),
            "patch_size": self.vit.patch_embed.patch_size[0],
            "embed_dim": self.vit.embed_dim,
            "depth": len(self.vit.blocks),
        }


def local_path(source: str) -> Path | None:
    """The file or directory a checkpoint source names (a ``#target``/``#context`` suffix
    dropped), or None for a Hub id or a path that does not exist."""
    if source.startswith(HUB_PREFIXES):
        return None
    head, sep, tail = source.rpartition("#")
    path = Path(head if sep and tail in ("target", "context") else source).expanduser()
    return path if path.exists() else None


def find_run_config(source: str) -> Path | None:
    """``config.yaml`` of the training run a local checkpoint belongs to: beside it or up to
    three directories above (``RUN/``, ``RUN/encoder/``, ``RUN/checkpoints/step_N/file``)."""
    path = local_path(source)
    if path is None:
        return None
    start = path if path.is_dir() else path.parent
    for folder in [start, *list(start.parents)[:3]]:
        candidate = folder / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def _run_name(source: str, config_path: Path | None) -> str:
    if config_path is not None:
        return config_path.parent.name
    path = local_path(source)
    if path is None:
        return source.split(":", 1)[-1].rstrip("/").split("/")[-1]
    path = path.resolve()
    return (path.parent.name if path.name == "encoder" else path.name) if path.is_dir() else path.stem


def load_run(checkpoint: str | None, model: str | None = None) -> Run:
    """The encoder of ``checkpoint`` (through ``mimkit.hub.load_encoder``; ``model`` names the timm
    architecture when the checkpoint does not), or a randomly initialised ``model`` when
    ``checkpoint`` is None (a baseline)."""
    if checkpoint is None:
        if model is None:
            raise ValueError("--checkpoint: give a checkpoint (or --model NAME for random weights)")
        try:
            vit = timm.create_model(model, pretrained=False, num_classes=0)
        except Exception as e:
            raise ValueError(f"--model: timm cannot build {model!r}: {e}") from e
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"--model: {model!r} is a {type(vit).__name__}, not a timm VisionTransformer")
        return Run(vit, f"timm:{model}", None, None, model)
    from ..hub import load_encoder

    config_path = find_run_config(checkpoint)
    config = None
    if config_path is not None:
        try:
            config = config_from_yaml(config_path)
        except ConfigError as e:
            log.warning("%s: not a usable run config (%s); going on without it", config_path, e)
            config_path = None
    if not checkpoint.startswith(HUB_PREFIXES) and local_path(checkpoint) is None:
        raise FileNotFoundError(f"--checkpoint: {checkpoint} does not exist (a Hub id needs the 'hf-hub:' prefix)")
    name, kwargs = model, {}
    if model is None and config is not None and not _has_config_json(checkpoint):
        # a checkpoint file of a training run (checkpoints/step_N/model.safetensors): no config.json
        # beside it, so the run's config.yaml says how its encoder is built
        name, kwargs = config.model.name, resolve_geometry(config)[1]
    vit = load_encoder(checkpoint, name=name, **kwargs)
    return Run(vit, checkpoint, config, str(config_path) if config_path else None, _run_name(checkpoint, config_path))


def load_baseline(checkpoint: str, baseline: str) -> Run:
    """A baseline of a training run (``mimkit.eval.baselines``): its encoder at initialisation,
    also used for the geometry of the raw-pixel baseline."""
    from .baselines import init_encoder

    config_path = find_run_config(checkpoint)
    if config_path is None:
        raise FileNotFoundError(f"--baseline {baseline}: {checkpoint} holds no run config.yaml to rebuild the encoder from")
    config = config_from_yaml(config_path)
    return Run(init_encoder(config), f"{checkpoint}#{baseline}", config, str(config_path), baseline)


def _has_config_json(source: str) -> bool:
    from ..hub import source_architecture

    try:
        return source_architecture(source) is not None
    except Exception:
        return False


def normalization(run: Run, mean: list[float] | None = None, std: list[float] | None = None) -> tuple[list[float], list[float], str]:
    """(mean, std, where from): the arguments, else the run's data config, else the source's
    config.json (a Hub repo or exported encoder), else ImageNet's."""
    if mean is not None and std is not None:
        return list(mean), list(std), "arguments"
    if (mean is None) != (std is None):
        raise ValueError("--mean / --std: give both or neither")
    if run.config is not None:
        return list(run.config.data.mean), list(run.config.data.std), "config.yaml"
    pcfg = getattr(run.vit, "pretrained_cfg", None) or {}
    if not run.source.startswith("timm:") and _has_config_json(run.source) and pcfg.get("mean") and pcfg.get("std"):
        return list(pcfg["mean"]), list(pcfg["std"]), "config.json"
    default = DataConfig()
    return list(default.mean), list(default.std), "imagenet default"


def data_config(
    run: Run,
    source: str | None,
    train_split: str | None = None,
    eval_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    eval_crop: float | None = None,
) -> DataConfig:
    """The run's data config with the given fields replaced; for another dataset than the run's,
    the defaults (splits and columns detected) with the given fields."""
    if source is None:
        if run.config is None:
            raise ValueError(f"--data: required, since {run.source} has no config.yaml to take data.source from")
        source = run.config.data.source
    same_data = run.config is not None and source == run.config.data.source
    base = run.config.data if same_data else DataConfig()
    m, s, _ = normalization(run, mean, std)
    given = dict(train_split=train_split, eval_split=eval_split, image_column=image_column, label_column=label_column, eval_crop=eval_crop)
    return dataclasses.replace(base, source=source, mean=m, std=s, **{k: v for k, v in given.items() if v is not None})


def subset(hf: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random ``limit`` rows (all rows when limit is None or larger)."""
    if limit is None or limit >= len(hf):
        return hf
    if limit < 1:
        raise ValueError(f"a row limit of {limit} leaves nothing to evaluate")
    return hf.shuffle(seed=seed).select(range(limit))


@dataclass
class EvalData:
    train: Dataset | None
    eval: Dataset
    splits: Splits
    train_split: str | None
    eval_split: str
    config: DataConfig


def load_eval_data(
    cfg: DataConfig, image_size: int, max_train: int | None = None, max_eval: int | None = None, seed: int = 0, need_train: bool = True
) -> EvalData:
    """Train and evaluation splits as (image, label) datasets at ``image_size`` (eval transform)."""
    splits = load_splits(cfg)
    if splits.eval is None:
        raise ConfigError(f"--eval-split: {cfg.source!r} has no test/validation split (splits: {list(splits.data)}); name one")
    if splits.label_column is None:
        raise ConfigError(f"--label-column: no label column found in {cfg.source!r}; name one")
    tf = eval_transform(image_size, cfg)
    eval_hf = subset(splits.data[splits.eval], max_eval, seed)
    eval_ds = ImageDataset(eval_hf, splits.image_column, splits.label_column, tf)
    train_ds = None
    if need_train:
        train_hf = subset(splits.data[splits.train], max_train, seed)
        train_ds = ImageDataset(train_hf, splits.image_column, splits.label_column, tf)
    return EvalData(train_ds, eval_ds, splits, splits.train if need_train else None, splits.eval, cfg)
