"""Run configuration: a dataclass schema filled from layered YAML presets.

A preset is a YAML file in ``configs/`` (or any path). It may name a ``base:``
file (relative to itself) whose values it overrides; several presets can be
stacked with ``+`` (``latent_mim+tiny``), later ones winning. Dotted overrides
(``masking.ratio=0.75``) come last. Every key is checked against the schema: an
unknown key names its dotted path and the closest valid key, a wrong type or
value names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the offending key."""


# --------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    """The context encoder: any timm Vision Transformer by name."""

    name: str = "vit_base_patch16_224"
    # timm constructor overrides; None keeps the named model's own value.
    img_size: int | None = None  # side of the encoder's native grid in pixels (grid * patch)
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    # "learned": timm's trainable position table; "sincos": fixed 2-D sin-cos positions of the
    # grid cells, not trained (MAE, Latent MIM), replacing any table loaded by init.encoder.
    pos_embed: Literal["learned", "sincos"] = "learned"
    # Coordinate of grid cell k in every fixed sin-cos table (encoder and decoders): "index" k, or
    # "linspace" k * grid / (grid - 1) (cells spread evenly over [0, grid], as Latent MIM's code does).
    sincos_coords: Literal["index", "linspace"] = "index"
    # Initialisation of a randomly built encoder and of every head: "timm" (truncated normal 0.02
    # linears, timm's own ViT init) or "mae" (Xavier-uniform linears, the patch embedding as a linear
    # over the flattened patch, CLS and register tokens N(0, 0.02)).
    init: Literal["timm", "mae"] = "timm"


@dataclass
class InitConfig:
    """Where the weights start from (None: random init)."""

    encoder: str | None = None  # timm Hub id, file, exported mimkit dir, or reference checkpoint
    # a source like `encoder`; "same" (or unset) copies the context encoder; "random" gives the
    # target its own freshly initialised weights (ema and standalone targets only)
    target: str | None = None


@dataclass
class DataConfig:
    source: str = "embedded"  # "embedded", a local dir (parquet or image folder) or a Hub id
    image_size: int | None = None  # training crop side = grid * (patch + gap); None derives it
    train_split: str = "train"
    eval_split: str | None = None  # None: "test" or "validation" when present
    # > 0: carve this many seeded-random train images out as the evaluation split ("holdout"),
    # a validation split for choosing hyperparameters; the test split is then never read.
    holdout: int = 0
    image_column: str | None = None  # None: detected
    label_column: str | None = None  # None: detected
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    hflip: bool = True
    # Where the random crop / resize / flip / normalise run: in the data workers ("cpu"), or on
    # the accelerator for the whole batch ("device": workers only decode and squash each image
    # to decode_size x decode_size; None = 8/7 of the training crop).
    augment: Literal["cpu", "device"] = "cpu"
    decode_size: int | None = None
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    num_workers: int = 4
    # Keep the decoded images in memory as uint8 tensors, so that each epoch only crops them:
    # "auto" when a split's decoded images take at most 1 GiB (estimated from a sample), true
    # whatever their size, false to decode every image on every read. For the training split
    # and the images scored during training; decoding and converting a 32-px PNG costs more
    # than cropping it.
    cache: Literal["auto"] | bool = "auto"
    # Evaluation transform: resize the short side to side / eval_crop, then centre-crop the side
    # (1.0: resize straight to the side; 0.875: the usual ImageNet-style centre crop)
    eval_crop: float = 1.0


@dataclass
class MaskingConfig:
    ratio: float = 0.75  # fraction of grid cells that become targets
    gap: int = 0  # pixels of random jitter room around each patch (0: ordinary grid)
    # Where a patch may sit in its (P + G)-px cell: offsets drawn from {0..G} ("0..G"; two
    # neighbouring patches can touch) or {0..G-1} ("0..G-1"; they never touch; no jitter at G = 1)
    offsets: Literal["0..G", "0..G-1"] = "0..G"
    # "random": a uniformly random set of targets; "inverse_block": the visible cells are one
    # random block, wrapped around the grid's edges (CAPI), the targets everything else
    kind: Literal["random", "inverse_block"] = "random"


@dataclass
class TargetConfig:
    mode: Literal["ema", "stopgrad", "standalone", "joint", "none"] = "ema"
    momentum: list[float] = field(default_factory=lambda: [0.99, 1.0])  # [start, end]
    momentum_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    depth: int | None = None  # use the first k blocks; None: all
    sees: Literal["targets", "full"] = "targets"


@dataclass
class DecoderConfig:
    kind: Literal["cross_attn", "self_attn"] = "self_attn"
    dim: int = 512
    depth: int = 3
    num_heads: int = 16
    mlp_ratio: float = 4.0
    visual_cues: bool = False  # cross_attn only: seed queries with a position-weighted blend of Z_V
    cls_query: bool = False  # cross_attn only: a learned CLS query rides along even when no head reads it
    qkv_bias: bool = True  # biases on the attention's query/key/value projections
    final_norm: bool = True  # LayerNorm before the output linear
    pos_embed: Literal["sincos", "learned"] = "sincos"  # "learned": a trained table, truncated-normal init
    mask_token_init: Literal["normal", "zero"] = "normal"  # N(0, 0.02) or zeros


@dataclass
class ProjectorConfig:
    kind: Literal["none", "mlp"] = "none"
    layers: int = 3
    hidden_dim: int = 4096
    out_dim: int | None = None  # None: the encoder width
    norm: bool = True  # LayerNorm after each hidden linear
    out_norm: bool = True  # LayerNorm on the output
    bias: bool = True  # biases on the linears


@dataclass
class SimilarityConfig:
    coef: float = 0.0  # 0 disables the regulariser
    gamma: list[float] = field(default_factory=lambda: [0.75, 0.25])  # [start, end], cosine
    # "per_image": mean over images of (gamma - mean off-diagonal cosine within the image)^2;
    # "batch": (gamma - mean cosine over every image's pairs, diagonal included)^2, once per batch
    form: Literal["per_image", "batch"] = "per_image"


@dataclass
class LatentConfig:
    weight: float = 0.0
    loss: Literal["patch_disc", "mse", "l1", "huber", "norm_mse"] = "patch_disc"
    tau: float = 0.2
    huber_delta: float = 1.0
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(kind="cross_attn", visual_cues=True))
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)


@dataclass
class PixelConfig:
    weight: float = 0.0
    norm_pix: bool = True
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(kind="self_attn", depth=8))


@dataclass
class ClsConfig:
    weight: float = 0.0
    source: Literal["latent.cls", "context.cls"] = "latent.cls"
    hidden_dim: int = 2048  # context.cls only: width of the predictor MLP


@dataclass
class ClusterConfig:
    """CAPI: predict the teacher's soft cluster assignments of its patch tokens."""

    weight: float = 0.0
    prototypes: int = 16384  # K
    tau_target: float = 0.06  # Sinkhorn-Knopp temperature of the teacher's assignments
    tau_pred: float = 0.12  # the clustering module's own softmax
    tau_student: float = 0.12  # the student's softmax over the prototypes
    sinkhorn_iters: int = 3
    prediction_subsampling: float = 0.05  # share of the target cells the student predicts (at least one)
    clustering_lr: float = 5.0e-4  # the clustering module's own peak lr (absolute; same warm-up + cosine shape)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(kind="cross_attn", depth=12, dim=1024))


@dataclass
class ObjectivesConfig:
    latent: LatentConfig = field(default_factory=LatentConfig)
    pixel: PixelConfig = field(default_factory=PixelConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def active(self) -> list[str]:
        """Names of the heads that are built: those with a non-zero weight."""
        return [name for name in self.heads() if getattr(self, name).weight != 0]

    def heads(self) -> list[str]:
        """Every head's name, built or not."""
        return [f.name for f in dataclasses.fields(self)]


@dataclass
class TrainConfig:
    batch_size: int = 256  # global batch per optimizer step (all processes, all accumulation steps)
    grad_accum: int = 1
    epochs: int = 100
    max_steps: int | None = None  # stop after this many optimizer steps
    seed: int = 0
    base_lr: float = 1.5e-4  # lr = base_lr * batch_size / 256
    min_lr: float = 0.0  # absolute floor of the cosine
    # Relative floor: warm-up starts from min_lr_ratio * peak and the cosine ends there (0: from 0 to 0)
    min_lr_ratio: float = 0.0
    # "warmup_cosine": linear warm-up, then a cosine over the remaining steps; "min_warmup_cosine":
    # the smaller of the warm-up line and a cosine over the whole run
    lr_schedule: Literal["warmup_cosine", "min_warmup_cosine"] = "warmup_cosine"
    lr_per: Literal["step", "epoch"] = "step"  # how often the lr changes ("epoch": held within an epoch)
    warmup_epochs: float = 10.0
    weight_decay: float = 0.05
    # Parameters without weight decay, as rules: "ndim1" (biases, norm weights: every 1-D tensor),
    # "tokens" (position tables, CLS / register / mask tokens, CLS queries), "embed" (every name
    # containing "embed": patch and decoder input embeddings, position tables). [] decays everything.
    no_decay: list[str] = field(default_factory=lambda: ["ndim1", "tokens"])
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    # "auto": bf16 on a CUDA GPU with bf16 or a CPU with native bf16 matrix instructions, else fp32
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # torch.compile: "model" compiles the whole masked step as one graph, "blocks" each
    # transformer block and projector, "none" runs eagerly.
    compile: Literal["none", "blocks", "model"] = "none"
    # Attention kernel (mimkit/attention.py): "auto" runs the manual softmax(q k^T) v on a CPU under
    # bf16 autocast, where torch's fused kernel is the slower, and the fused kernel elsewhere.
    attention: Literal["auto", "fused", "manual"] = "auto"
    log_every: int = 20
    save_every: int = 1000
    keep_last: int = 3
    eval_every_epochs: int | None = None  # NN evaluation during training; None: only at the end
    # At the end the encoder is scored by NN (leave-one-out on the eval split) and weighted k-NN
    # (this many seeded-random train images as the memory bank; 0: no k-NN). eval_baseline also
    # scores the encoder at initialisation, on the same images, before the first step.
    eval_knn_train: int = 10000
    eval_baseline: bool = True
    # "auto": tensorboard when installed, silently; a named tracker that is missing gets a warning
    trackers: list[str] = field(default_factory=lambda: ["auto"])
    output_dir: str = ""  # "": outputs/<preset> (mimkit.config.default_output_dir)
    # A non-finite loss: "error" stops (checked at each log, no per-step sync) after saving a
    # diagnostic state; "skip" drops that optimizer step and counts it (one host sync per step).
    on_nonfinite: Literal["error", "skip"] = "error"
    # Collapse alarm on the latent head's across-image similarity of pooled latents (the paper's
    # "Sim"): above the threshold for `collapse_patience` consecutive logs -> warn, or stop.
    collapse_threshold: float | None = 0.95
    collapse_patience: int = 5
    collapse_action: Literal["warn", "stop"] = "warn"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""  # the preset expression this config was loaded from (informational)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- loading


def preset_dir() -> Path:
    """The folder holding the shipped presets (``configs/`` of the repository)."""
    return Path(str(resources.files("mimkit.configs")))


# Shipped YAML files that are not methods: the shared base and the scale overlays (stacked with `+`).
OVERLAYS = ("base", "micro", "micro64", "tiny")


def available_presets() -> list[str]:
    """The runnable presets (methods and `default`); the overlays in ``OVERLAYS`` are left out."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml") if p.stem not in OVERLAYS)


def _resolve_preset(name: str, relative_to: Path | None = None) -> Path:
    candidates = []
    path = Path(name)
    if relative_to is not None:
        candidates.append(relative_to / path)
    candidates += [path, preset_dir() / path, preset_dir() / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    hint = difflib.get_close_matches(name, available_presets() + list(OVERLAYS), n=1)
    raise ConfigError(
        f"preset or config file {name!r} not found"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; shipped presets: {', '.join(available_presets())}; scale overlays to stack with +: micro, micro64, tiny"
    )


@functools.lru_cache(maxsize=512)
def _parse_yaml(text: str) -> Any:
    """YAML text -> data, parsed once per distinct text (presets and override values recur by the
    thousand when a reproduction plans its runs); callers get a copy."""
    return yaml.safe_load(text)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = copy.deepcopy(_parse_yaml(path.read_text())) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_layer(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular `base:` chain {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, load_layer(_resolve_preset(str(b), path.parent), seen + (path,)))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``top`` over ``base``, merging nested mappings key by key."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": value}}}``, the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = copy.deepcopy(_parse_yaml(raw)) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {e}") from e
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(preset_or_path: str = "latent_mim", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a preset (name, path, or ``a+b`` stack), apply dotted overrides, validate.

    >>> cfg = load_config("latent_mim+tiny", ["masking.ratio=0.75"])
    """
    raw: dict[str, Any] = {}
    for part in preset_or_path.split("+"):
        raw = deep_merge(raw, load_layer(_resolve_preset(part.strip())))
    raw.pop("preset", None)
    scale = raw.pop("scale", None)
    cfg = from_dict(RunConfig, raw)
    if scale is not None:  # a scale overlay (micro): resize the heads, before the overrides
        from .scale import ScaleRule, apply_scale

        cfg = apply_scale(cfg, ScaleRule.from_dict(scale, f"preset {preset_or_path!r}"))
    cfg = _overridden(cfg, overrides)
    cfg.preset = preset_or_path
    if not cfg.train.output_dir:
        cfg.train.output_dir = default_output_dir(preset_or_path)
    validate(cfg)
    return cfg


def overrides_tree(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Dotted ``key=value`` overrides as one nested mapping (``preset`` is not overridable)."""
    tail: dict[str, Any] = {}
    for item in overrides:
        tail = deep_merge(tail, parse_override(item))
    tail.pop("preset", None)
    return tail


def _overridden(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    return from_dict(RunConfig, overrides_tree(overrides), base=cfg)


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """A validated copy of ``cfg`` with dotted overrides applied (``cfg`` is left as it is)."""
    out = _overridden(copy.deepcopy(cfg), overrides)
    validate(out)
    return out


def default_output_dir(preset_or_path: str) -> str:
    """``outputs/<preset>`` (a YAML path counts by its file name), so runs of different presets
    do not share a directory: ``latent_mim+micro`` -> ``outputs/latent_mim+micro``."""
    return "outputs/" + "+".join(Path(part.strip()).stem for part in preset_or_path.split("+"))


def config_from_yaml(text_or_path: str | Path) -> RunConfig:
    """Load a dumped (resolved) config back, e.g. ``OUTPUT/config.yaml``."""
    path = Path(text_or_path)
    data = _read_yaml(path) if path.suffix in (".yaml", ".yml") and path.is_file() else yaml.safe_load(str(text_or_path))
    cfg = from_dict(RunConfig, data or {})
    validate(cfg)
    return cfg


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": leaf}: the dotted view of a config dict."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------- typed construction


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            raise ConfigError(
                f"{key}: {value!r} is not one of {list(allowed)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a schema bug, not user input


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config dataclass's resolved field types (resolving them is costly, and they never change)."""
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a nested dict over its defaults (or over ``base``),
    rejecting unknown keys and wrong types. Nested mappings merge field by field."""
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    obj = base if base is not None else cls()
    for key, value in data.items():
        if key not in names:
            valid = [f"{prefix}{n}" for n in names]
            hint = difflib.get_close_matches(f"{prefix}{key}", valid, n=1, cutoff=0.5)
            raise ConfigError(
                f"unknown config key {prefix}{key!s}"
                + (f"; did you mean {hint[0]}?" if hint else f"; valid keys here: {', '.join(valid)}")
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            setattr(obj, key, from_dict(type(current), value, prefix=f"{prefix}{key}.", base=current))
        else:
            setattr(obj, key, _coerce(hints[key], value, f"{prefix}{key}"))
    return obj


# --------------------------------------------------------------------------- validation

NO_DECAY_RULES = ("ndim1", "tokens", "embed")  # what train.no_decay may list (mimkit.trainer.param_groups)


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _check_pair(values: list[float], key: str, lo: float, hi: float) -> None:
    _require(len(values) == 2, f"{key}: expected [start, end], got {values}")
    for v in values:
        _require(lo <= v <= hi, f"{key}: {v} is outside [{lo}, {hi}]")


def validate(cfg: RunConfig) -> None:
    """Reject combinations that cannot run, naming the keys involved. Geometry that
    needs the timm model (patch size, grid) is checked when the model is built."""
    m, t, o, tr, d = cfg.masking, cfg.target, cfg.objectives, cfg.train, cfg.data
    _require(0.0 < m.ratio < 1.0, f"masking.ratio: {m.ratio} must be strictly between 0 and 1")
    _require(m.gap >= 0, f"masking.gap: {m.gap} must be >= 0")
    _check_pair(t.momentum, "target.momentum", 0.0, 1.0)
    _require(t.depth is None or t.depth >= 1, f"target.depth: {t.depth} must be >= 1 (or null for all blocks)")
    _check_pair(d.crop_scale, "data.crop_scale", 0.0, 1.0)
    _require(d.crop_scale[0] <= d.crop_scale[1], f"data.crop_scale: {d.crop_scale} must be [min, max]")
    _require(len(d.mean) == 3 and len(d.std) == 3, "data.mean / data.std: expected three values (RGB)")
    _require(all(s > 0 for s in d.std), f"data.std: {d.std} must be positive")
    _require(d.image_size is None or d.image_size > 0, f"data.image_size: {d.image_size} must be positive")
    _require(d.decode_size is None or d.decode_size > 0, f"data.decode_size: {d.decode_size} must be positive")
    _require(d.holdout >= 0, f"data.holdout: {d.holdout} must be >= 0")
    _require(0.0 < d.eval_crop <= 1.0, f"data.eval_crop: {d.eval_crop} must be in (0, 1]")

    active = o.active()
    _require(bool(active), "objectives: every head has weight 0; set objectives.<latent|pixel|cls|cluster>.weight")
    for name in active:
        head = getattr(o, name)
        _require(head.weight > 0, f"objectives.{name}.weight: {head.weight} must be >= 0")
    needs_target = [h for h in active if h in ("latent", "cls", "cluster")]
    if needs_target and t.mode == "none":
        raise ConfigError(
            f"target.mode: 'none' but objectives.{needs_target[0]} needs a target encoder; "
            "set target.mode to ema, stopgrad, standalone or joint"
        )
    for name in ("latent", "pixel", "cluster"):
        if name in active:
            dec = getattr(o, name).decoder
            key = f"objectives.{name}.decoder"
            _require(dec.dim > 0 and dec.depth >= 1 and dec.num_heads >= 1, f"{key}: dim, depth and num_heads must be positive")
            _require(dec.dim % dec.num_heads == 0, f"{key}.dim: {dec.dim} is not divisible by {key}.num_heads={dec.num_heads}")
            _require(dec.dim % 4 == 0, f"{key}.dim: {dec.dim} must be a multiple of 4 (2-D sin-cos positions)")
            for flag in ("visual_cues", "cls_query"):
                _require(
                    not getattr(dec, flag) or dec.kind == "cross_attn",
                    f"{key}.{flag}: only the cross_attn decoder has this option (kind is {dec.kind!r})",
                )
    if "latent" in active:
        lat = o.latent
        _require(lat.tau > 0, f"objectives.latent.tau: {lat.tau} must be positive")
        _require(lat.huber_delta > 0, f"objectives.latent.huber_delta: {lat.huber_delta} must be positive")
        _require(lat.similarity.coef >= 0, f"objectives.latent.similarity.coef: {lat.similarity.coef} must be >= 0")
        _check_pair(lat.similarity.gamma, "objectives.latent.similarity.gamma", -1.0, 1.0)
        _require(lat.projector.layers >= 1, f"objectives.latent.projector.layers: {lat.projector.layers} must be >= 1")
    if "cluster" in active:
        cl = o.cluster
        _require(cl.prototypes >= 2, f"objectives.cluster.prototypes: {cl.prototypes} must be >= 2")
        _require(min(cl.tau_target, cl.tau_pred, cl.tau_student) > 0, "objectives.cluster: the temperatures must be positive")
        _require(cl.sinkhorn_iters >= 1, f"objectives.cluster.sinkhorn_iters: {cl.sinkhorn_iters} must be >= 1")
        _require(0 < cl.prediction_subsampling <= 1, f"objectives.cluster.prediction_subsampling: {cl.prediction_subsampling} must be in (0, 1]")
        _require(cl.clustering_lr > 0, f"objectives.cluster.clustering_lr: {cl.clustering_lr} must be positive")
        _require(cl.decoder.kind == "cross_attn", "objectives.cluster.decoder.kind: the CAPI predictor is a cross_attn decoder")
        _require(t.sees == "full" and t.mode == "ema",
                 f"objectives.cluster: the teacher must be an EMA encoder that sees the full image (target.mode: ema, "
                 f"target.sees: full; got {t.mode}, {t.sees})")
    if "cls" in active and o.cls.source == "latent.cls":
        _require(
            "latent" in active,
            "objectives.cls.source: 'latent.cls' reads the latent decoder's CLS output, but objectives.latent.weight "
            "is 0 so no latent head provides it; enable the latent head or use source: context.cls",
        )

    _require(tr.batch_size >= 1, f"train.batch_size: {tr.batch_size} must be >= 1")
    _require(tr.grad_accum >= 1, f"train.grad_accum: {tr.grad_accum} must be >= 1")
    _require(
        tr.batch_size % tr.grad_accum == 0,
        f"train.batch_size: {tr.batch_size} is not divisible by train.grad_accum={tr.grad_accum}",
    )
    _require(tr.epochs >= 1, f"train.epochs: {tr.epochs} must be >= 1")
    _require(tr.max_steps is None or tr.max_steps >= 1, f"train.max_steps: {tr.max_steps} must be >= 1")
    _require(tr.base_lr > 0, f"train.base_lr: {tr.base_lr} must be positive")
    _require(tr.warmup_epochs >= 0, f"train.warmup_epochs: {tr.warmup_epochs} must be >= 0")
    _require(
        tr.lr_per == "step" or float(tr.warmup_epochs).is_integer(),
        f"train.warmup_epochs: {tr.warmup_epochs} is not a whole number of epochs, but train.lr_per=epoch changes "
        "the lr once per epoch; give whole epochs or set train.lr_per=step",
    )
    _require(0.0 <= tr.min_lr_ratio < 1.0, f"train.min_lr_ratio: {tr.min_lr_ratio} must be in [0, 1)")
    _require(
        not (tr.min_lr_ratio > 0 and tr.min_lr > 0),
        f"train.min_lr={tr.min_lr} and train.min_lr_ratio={tr.min_lr_ratio}: set one floor, not both",
    )
    bad = [r for r in tr.no_decay if r not in NO_DECAY_RULES]
    _require(not bad, f"train.no_decay: {bad} not known; rules are {list(NO_DECAY_RULES)}")
    _require(len(tr.betas) == 2 and all(0 <= b < 1 for b in tr.betas), f"train.betas: {tr.betas} must be two values in [0, 1)")
    _require(tr.clip_grad is None or tr.clip_grad > 0, f"train.clip_grad: {tr.clip_grad} must be positive or null")
    _require(
        tr.collapse_threshold is None or -1.0 <= tr.collapse_threshold <= 1.0,
        f"train.collapse_threshold: {tr.collapse_threshold} must be a cosine similarity in [-1, 1] or null",
    )
    for key in ("log_every", "save_every", "keep_last", "collapse_patience"):
        _require(getattr(tr, key) >= 1, f"train.{key}: {getattr(tr, key)} must be >= 1")
    _require(
        tr.eval_every_epochs is None or tr.eval_every_epochs >= 1,
        f"train.eval_every_epochs: {tr.eval_every_epochs} must be >= 1 or null",
    )
    _require(tr.eval_knn_train >= 0, f"train.eval_knn_train: {tr.eval_knn_train} must be >= 0")
    unknown = [x for x in tr.trackers if x not in ("auto", "tensorboard", "wandb", "none")]
    _require(not unknown, f"train.trackers: {unknown} not supported; use auto, tensorboard, wandb or none")
