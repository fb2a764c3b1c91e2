"""The fine-tuning config: a dataclass tree filled from ``configs/finetune/<name>.yaml`` (or any
path), then dotted overrides, checked key by key like the pretraining config."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError, DataConfig, deep_merge, from_dict, load_layer, overrides_tree, preset_dir
from ..resume import changed_keys, describe_changes


@dataclass
class FtModelConfig:
    pool: Literal["avg", "cls"] = "avg"  # avg: mean of the patch tokens + a new norm (MAE's head); cls: the CLS token
    drop_path: float = 0.1
    name: str | None = None  # the timm architecture, for a checkpoint that does not record its own
    from_scratch: bool = False  # true: the training run's encoder before its first step (the baseline pretraining must beat)


@dataclass
class FtOptimConfig:
    batch_size: int = 1024
    epochs: int = 100
    max_steps: int | None = None
    base_lr: float = 5.0e-4  # lr = base_lr * batch_size / 256
    layer_decay: float = 0.75  # block i of L gets lr * layer_decay ** (L + 1 - i); 0.65 for ViT-B, 0.75 smaller
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    min_lr: float = 1.0e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float | None = None


@dataclass
class FtAugConfig:
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm's RandAugment spec; None: off
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    smoothing: float = 0.1
    reprob: float = 0.25  # random erasing probability
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range


@dataclass
class FtTrainConfig:
    seed: int = 0
    output_dir: str = ""  # "": RUN/finetune-<preset>[-scratch] for a training run, else outputs/finetune-<preset>[-scratch]
    log_every: int = 20
    save_every: int = 500
    keep_last: int = 2
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    attention: Literal["auto", "fused", "manual"] = "auto"  # the kernel, as in pretraining (mimkit/attention.py)
    trackers: list[str] = field(default_factory=lambda: ["auto"])


@dataclass
class FinetuneConfig:
    checkpoint: str = ""  # a run dir, an exported encoder, a checkpoint file or an hf-hub: id
    data: DataConfig = field(default_factory=DataConfig)
    model: FtModelConfig = field(default_factory=FtModelConfig)
    optim: FtOptimConfig = field(default_factory=FtOptimConfig)
    aug: FtAugConfig = field(default_factory=FtAugConfig)
    train: FtTrainConfig = field(default_factory=FtTrainConfig)
    preset: str = ""


def finetune_presets() -> list[str]:
    return sorted(p.stem for p in (preset_dir() / "finetune").glob("*.yaml"))


def load_finetune_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """``configs/finetune/<preset>.yaml`` (or a YAML path), then dotted overrides, validated."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = preset_dir() / "finetune" / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"fine-tuning preset {preset!r} not found; choose from {', '.join(finetune_presets())} or a YAML path")
    raw: dict[str, Any] = load_layer(path)
    raw.pop("preset", None)
    cfg = from_dict(FinetuneConfig, deep_merge(raw, overrides_tree(overrides)))
    cfg.preset = preset
    if not cfg.train.output_dir:  # beside the run it fine-tunes, where `mimkit compare RUN` finds it
        run = Path(cfg.checkpoint)
        name = f"finetune-{Path(preset).stem}" + ("-scratch" if cfg.model.from_scratch else "")
        cfg.train.output_dir = str(run / name if (run / "config.yaml").is_file() else Path("outputs") / name)
    validate(cfg)
    return cfg


def resumed_finetune_config(out: Path, preset: str | None, overrides: Sequence[str]) -> FinetuneConfig | None:
    """The config to resume the fine-tuning in ``out`` with, or None when it holds no
    ``finetune.yaml`` yet. ``preset`` None: the saved config plus ``overrides``; a preset given again
    must rebuild the saved config. Only operational keys (workers, logging, checkpoint cadence,
    trackers, where the data and outputs live, the attention kernel) may change."""
    saved_file = out / "finetune.yaml"
    if not saved_file.is_file():
        return None
    try:
        saved = load_layer(saved_file)
        if preset:  # the saved encoder and directory unless the overrides name others (validated on loading)
            cfg = load_finetune_config(preset, [f"checkpoint={saved.get('checkpoint', '')}", f"train.output_dir={out}", *overrides])
        else:
            cfg = from_dict(FinetuneConfig, deep_merge(saved, overrides_tree(overrides)))
    except ConfigError as e:
        raise ConfigError(f"--resume: {saved_file}: {e}") from e
    if not preset:
        validate(cfg)
    new = dataclasses.asdict(cfg)
    refused = changed_keys(saved, new)
    if refused:
        raise ConfigError(f"--resume: the fine-tuning in {out} ran with other values of {describe_changes(saved, new, refused)}; "
                          "start a new one (another --output) to change them")
    cfg.train.output_dir = str(out)
    return cfg


def validate(cfg: FinetuneConfig) -> None:
    o, a = cfg.optim, cfg.aug
    checks = [
        (bool(cfg.checkpoint), "checkpoint: give the encoder to fine-tune (--checkpoint RUN, an export, a file or hf-hub:id)"),
        (0 < o.layer_decay <= 1, f"optim.layer_decay: {o.layer_decay} must be in (0, 1]"),
        (o.batch_size > 0 and o.epochs > 0, "optim.batch_size and optim.epochs must be positive"),
        (0 <= cfg.model.drop_path < 1, f"model.drop_path: {cfg.model.drop_path} must be in [0, 1)"),
        (a.mixup >= 0 and a.cutmix >= 0 and 0 <= a.smoothing < 1 and 0 <= a.reprob <= 1, "aug: mixup, cutmix >= 0; smoothing in [0, 1); reprob in [0, 1]"),
        (len(a.scale) == 2 and 0 < a.scale[0] <= a.scale[1] <= 1, f"aug.scale: {a.scale} must be [low, high] within (0, 1]"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
