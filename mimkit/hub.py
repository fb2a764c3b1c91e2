"""Load a timm ViT encoder from any published or exported checkpoint; export and push one.

``load_encoder(source, name, **timm_kwargs)`` builds ``timm.create_model(name, pretrained=False,
num_classes=0, **timm_kwargs)`` and fills it from ``source``, which may be

* a timm Hub id, ``hf-hub:timm/vit_base_patch16_224.mae`` (``@revision`` allowed), read through
  the Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_HUB_OFFLINE`` are read at call
  time, so a pre-populated cache works offline);
* a checkpoint file: ``.safetensors``, or a ``torch.save`` file (``.pth``, ``.bin``, ...) holding
  a state dict or a dict with a ``state_dict`` / ``model`` / ``module`` entry;
* a directory written by :func:`save_pretrained` (``model.safetensors`` + ``config.json``), or a
  training output directory holding one as ``encoder/``.

The key layout of the weights is detected (after unwrapping and stripping ``module.`` /
``_orig_mod.`` prefixes), in this order:

========== ======================================= =========================================
layout     recognised by                           mapping
========== ======================================= =========================================
timm       ``patch_embed.proj.weight``             timm's own names; MAE's ``decoder_*`` and
                                                   ``mask_token`` are dropped
mimkit     ``encoder.vit.patch_embed.proj.weight`` a whole ``MIMModel`` state dict: context
                                                   ``encoder.vit.*``, target ``target.own.vit.*``
latent_mim ``encoder.pos_embed.pos_embeds`` or     ``encoder.embed.proj`` Linear over (row,
           ``encoder.embed.proj.weight``           column, channel) pixels -> conv; ``pos_embeds``
                                                   (1+L, D) -> (1, 1+L, D); ``encoder.head.*``
                                                   (projector) dropped; target ``target_encoder.*``
pilamim    ``encoder.pos_embedding`` or            ``patchify`` -> ``patch_embed.proj``,
           ``encoder.patchify.weight`` (or the     ``transformer.N`` -> ``blocks.N``,
           same keys unprefixed: a linear-probe    ``layer_norm`` -> ``norm``, ``pos_embedding``
           ``ViT_Classifier``)                     (L, 1, D) -> (1, L, D); target ``target_encoder.*``
========== ======================================= =========================================

PiLaMIM's blocks are ``timm.models.vision_transformer.Block(dim, heads)`` with timm 1.0.7's
defaults: no qkv bias, which is loaded as zeros (the same function), and ``nn.LayerNorm`` eps 1e-5
(its final ``layer_norm`` too) where timm's ViT uses 1e-6; pass
``norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-5)`` for bit-faithful features (the
default eps changes them slightly).

The target encoder of a latent_mim, pilamim or mimkit checkpoint is picked with
``which="target"`` or a ``#target`` suffix on the source (``ckpt.pth#target``); the default is the
context encoder (``#context``). A classification ``head.*`` the model does not have is dropped.

Position embeddings are fitted to the model: a different grid is resampled with
``timm.layers.resample_abs_pos_embed`` (bicubic, antialiased, as timm does), and prefix positions
the source lacks are zeros (a PiLaMIM ``pos_embedding`` has no CLS position, so the CLS token gets
a zero one, which is what PiLaMIM computes). Any other difference is reported in one
:class:`CheckpointError` naming the source and the keys.

Only when ``name`` is None is the architecture taken from the source's ``config.json`` (a Hub repo
or an exported directory), with its ``model_args`` as defaults under ``timm_kwargs``; with a
``name`` the caller defines the model and the source only supplies weights.

``save_pretrained`` writes ``model.safetensors`` + ``config.json`` with timm's writer (``architecture``,
``num_classes``, ``num_features``, ``global_pool``, ``model_args``, ``pretrained_cfg`` with the
run's normalisation, input size and crop) that plain timm loads (``local-dir:``, ``hf-hub:`` or ``pretrained_cfg_overlay=dict(file=...)``);
``push_to_hub`` uploads exactly that folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import huggingface_hub
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

try:
    from huggingface_hub.errors import EntryNotFoundError
except ImportError:  # huggingface_hub < 0.23
    from huggingface_hub.utils import EntryNotFoundError  # type: ignore[no-redef]

__all__ = [
    "CheckpointError",
    "load_encoder",
    "push_to_hub",
    "save_pretrained",
    "source_architecture",
]

_logger = logging.getLogger(__name__)

Which = Literal["context", "target"]

HUB_PREFIXES = ("hf-hub:", "hf_hub:")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHT_FILES = (WEIGHTS_FILE, "pytorch_model.bin", "pytorch_model.pth", "model.pth")
_WRAPPER_KEYS = ("state_dict", "model", "module")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_PREPROCESS_KEYS = ("interpolation", "crop_pct", "crop_mode", "mean", "std")
# pretrained_cfg entries about the weights a timm model name was first published with, not ours
_OTHER_WEIGHTS_KEYS = frozenset({"tag", "license", "notes", "paper_ids", "paper_name", "origin_url", "hf_hub_id", "url", "file"})
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A source that is not a checkpoint, or whose weights do not fit the model; names the source."""


@dataclass(frozen=True)
class _Source:
    label: str  # what error messages call it: the weights file, or the Hub id
    weights: Path
    config: dict[str, Any] | None  # a timm-style config.json beside the weights


@dataclass(frozen=True)
class _Converted:
    state: dict[str, Tensor]  # timm names
    layout: str
    pos_prefix: int | None  # prefix rows in state["pos_embed"]; None: as many as the model has
    zero_qkv_bias: bool = False  # the source's attention has no qkv bias: a missing one is zeros


# --------------------------------------------------------------------------- loading


def load_encoder(
    source: str | os.PathLike[str],
    name: str | None = None,
    *,
    which: Which | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    weights_only: bool = True,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """A timm ViT built from ``name`` (or the source's config.json) holding ``source``'s weights.

    source: a ``hf-hub:`` id, a checkpoint file, or an exported directory; a ``#target`` /
        ``#context`` suffix picks the encoder of a two-encoder checkpoint (see the module doc).
    name: the timm architecture; None reads it (and its ``model_args``) from the source.
    which: "context" (default) or "target"; the same as the suffix.
    cache_dir: the Hugging Face hub cache; None reads ``HF_HUB_CACHE`` / ``HF_HOME`` now.
    weights_only: ``torch.load``'s safe mode (``argparse.Namespace`` entries are allowed); pass
        False only for a trusted file that holds other Python objects.
    timm_kwargs: ``timm.create_model`` overrides (``num_classes`` defaults to 0).
    """
    spec, which = _split_which(str(source), which)
    src = _resolve(spec, cache_dir)
    arch, kwargs = _architecture(src, name, timm_kwargs)
    vit = _create(src, arch, kwargs)
    state = _state_dict(_read_checkpoint(src.weights, weights_only), src.label)
    converted = _convert(state, which, vit.patch_embed.proj.in_channels, src.label)
    _load_into(vit, converted, src.label, arch)
    return vit


def source_architecture(
    source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """(architecture, model_args) from the config.json of a Hub repo or exported directory, else None.

    Lets a caller size its model from a source before building it; no weights are read.
    """
    spec, _ = _split_which(str(source), None)
    config = _resolve(spec, cache_dir).config
    if config is None:
        return None
    return config["architecture"], dict(config.get("model_args") or {})


def _split_which(source: str, which: Which | None) -> tuple[str, Which]:
    head, sep, tail = source.rpartition("#")
    suffix: Which | None = None
    if sep and tail in ("context", "target"):
        source, suffix = head, tail  # type: ignore[assignment]
    if which is not None and which not in ("context", "target"):
        raise ValueError(f"which: expected 'context' or 'target', got {which!r}")
    if which is not None and suffix is not None and which != suffix:
        raise ValueError(f"{source}: the '#{suffix}' suffix disagrees with which={which!r}")
    return source, which or suffix or "context"


def _resolve(spec: str, cache_dir: str | os.PathLike[str] | None) -> _Source:
    for prefix in HUB_PREFIXES:
        if spec.startswith(prefix):
            return _resolve_hub(spec[len(prefix) :], cache_dir)
    return _resolve_path(Path(spec).expanduser())


def _resolve_path(path: Path) -> _Source:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (a Hub id needs the 'hf-hub:' prefix)")
    if path.is_file():
        config = _read_config(path.parent / CONFIG_FILE) if path.name in WEIGHT_FILES else None
        return _Source(str(path), path, config)
    weights = local_weights(path)
    if weights is not None:
        return _Source(str(weights), weights, _read_config(weights.parent / CONFIG_FILE))
    raise FileNotFoundError(f"{path}: a directory with no {' / '.join(WEIGHT_FILES)}, directly or under encoder/")


def local_weights(folder: Path) -> Path | None:
    """The weights file of an exported directory or a run directory (under its encoder/), else None."""
    for d in (folder, folder / "encoder"):
        weights = next((d / f for f in WEIGHT_FILES if (d / f).is_file()), None)
        if weights is not None:
            return weights
    return None


def _read_config(path: Path) -> dict[str, Any] | None:
    """A timm-style config (with ``architecture``) or None when there is none."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    return config if isinstance(config, dict) and isinstance(config.get("architecture"), str) else None


# --------------------------------------------------------------------------- Hugging Face cache


def _resolve_hub(hub_id: str, cache_dir: str | os.PathLike[str] | None) -> _Source:
    repo_id, _, revision = hub_id.partition("@")
    cache = _hub_cache_dir(cache_dir)
    offline = _hub_offline()
    config_path = _hub_file(repo_id, CONFIG_FILE, revision or None, cache, offline)
    for filename in WEIGHT_FILES:
        weights = _hub_file(repo_id, filename, revision or None, cache, offline)
        if weights is not None:
            config = _read_config(config_path) if config_path is not None else None
            return _Source(f"hf-hub:{hub_id}", weights, config)
    mode = "offline (HF_HUB_OFFLINE): only the cache is searched" if offline else "neither on the Hub nor in the cache"
    raise FileNotFoundError(f"hf-hub:{hub_id}: no {' / '.join(WEIGHT_FILES[:2])} found, {mode} (cache: {cache})")


def _hub_file(repo_id: str, filename: str, revision: str | None, cache: str, offline: bool) -> Path | None:
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            library_name="mimkit",
        )
    except EntryNotFoundError:  # also the "not in the local cache" error of offline mode
        return None
    return Path(path)


def _hub_cache_dir(explicit: str | os.PathLike[str] | None) -> str:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if explicit is not None:
        return os.fspath(explicit)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return huggingface_hub.constants.HF_HUB_CACHE


def _hub_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


# --------------------------------------------------------------------------- building


def _architecture(src: _Source, name: str | None, timm_kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The architecture and create_model kwargs: the caller's, over the source's when name is None."""
    kwargs: dict[str, Any] = {"num_classes": 0}
    if name is None:
        if src.config is None:
            raise CheckpointError(f"{src.label}: has no config.json naming its architecture; pass the timm model name")
        name = src.config["architecture"]
        kwargs = {**(src.config.get("model_args") or {}), **kwargs}
    kwargs.update(timm_kwargs)
    return name, kwargs


def _create(src: _Source, arch: str, kwargs: dict[str, Any]) -> VisionTransformer:
    overlay = {k: v for k, v in ((src.config or {}).get("pretrained_cfg") or {}).items() if k in _PREPROCESS_KEYS}
    try:
        model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=overlay or None, **kwargs)
    except Exception as e:
        raise CheckpointError(f"{src.label}: timm cannot build {arch!r} with {kwargs}: {e}") from e
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"{src.label}: {arch!r} is a {type(model).__name__}, not a timm VisionTransformer")
    return model


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _allow_namespace() -> Iterator[None]:
    """Let ``weights_only`` loading accept the ``args`` Namespace that MAE-style checkpoints keep."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    with safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext():
        yield


def _read_checkpoint(path: Path, weights_only: bool) -> Any:
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path}: not a safetensors checkpoint ({_first_line(e)})") from e
    try:
        with _allow_namespace():
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if weights_only and refused:
            raise CheckpointError(
                f"{path}: holds Python objects besides tensors ({refused.group(1)}), which the safe loader "
                "refuses; pass weights_only=False to load_encoder if you trust the file"
            ) from e
        raise CheckpointError(f"{path}: not a PyTorch or safetensors checkpoint ({type(e).__name__}: {_first_line(e)})") from e


def _state_dict(obj: Any, label: str) -> dict[str, Tensor]:
    """The tensors of a checkpoint, unwrapped from ``state_dict`` / ``model`` / ``module`` entries
    (or a pickled module), with ``module.`` / ``_orig_mod.`` prefixes stripped."""
    while True:
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{label}: holds a {type(obj).__name__}, not a state dict")
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, torch.nn.Module))), None)
        if inner is None:
            break
        obj = inner
    tensors = {_strip_prefixes(str(k)): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{label}: holds no tensors (keys: {_names(list(map(str, obj)))})")
    return tensors


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


# --------------------------------------------------------------------------- layouts


def _detect(keys: Mapping[str, Tensor]) -> str:
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if "encoder.vit.patch_embed.proj.weight" in keys:
        return "mimkit"
    if "encoder.pos_embed.pos_embeds" in keys or "encoder.embed.proj.weight" in keys:
        return "latent_mim"
    if "encoder.pos_embedding" in keys or "encoder.patchify.weight" in keys:
        return "pilamim"
    if "pos_embedding" in keys and "patchify.weight" in keys:
        return "pilamim_probe"
    return ""


def _convert(state: dict[str, Tensor], which: Which, in_chans: int, label: str) -> _Converted:
    layout = _detect(state)
    if not layout:
        raise CheckpointError(
            f"{label}: unrecognised checkpoint layout (no patch_embed.proj.weight, encoder.vit.*, "
            f"encoder.pos_embed.pos_embeds or encoder.pos_embedding); keys: {_names(list(state))}"
        )
    converters: dict[str, Callable[[dict[str, Tensor], Which, int, str], _Converted]] = {
        "timm": _from_timm,
        "mimkit": _from_mimkit,
        "latent_mim": _from_latent_mim,
        "pilamim": _from_pilamim,
        "pilamim_probe": _from_pilamim_probe,
    }
    return converters[layout](state, which, in_chans, label)


def _from_timm(state: dict[str, Tensor], which: Which, in_chans: int, label: str) -> _Converted:
    dropped = [k for k in state if k.startswith("decoder") or k == "mask_token"]
    layout = "MAE" if dropped else "timm"
    if which == "target":
        raise CheckpointError(f"{label}: a {layout} checkpoint has one encoder; there is no target encoder to pick")
    if dropped:
        _logger.info("%s: dropped %d MAE decoder entries", label, len(dropped))
    return _Converted({k: v for k, v in state.items() if k not in dropped}, layout, None)


def _sub_state(state: dict[str, Tensor], prefix: str, label: str, layout: str) -> dict[str, Tensor]:
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointError(f"{label}: the {layout} checkpoint has no {prefix}* entries")
    return sub


def _from_mimkit(state: dict[str, Tensor], which: Which, in_chans: int, label: str) -> _Converted:
    prefix = "target.own.vit." if which == "target" else "encoder.vit."
    return _Converted(_sub_state(state, prefix, label, "mimkit"), "mimkit", None)


def _from_latent_mim(state: dict[str, Tensor], which: Which, in_chans: int, label: str) -> _Converted:
    prefix = "target_encoder." if which == "target" else "encoder."
    out: dict[str, Tensor] = {}
    for key, value in _sub_state(state, prefix, label, "latent_mim").items():
        if key.startswith("head."):  # the projector, not part of the ViT
            continue
        if key == "pos_embed.pos_embeds":
            out["pos_embed"] = value.reshape(1, -1, value.shape[-1])  # (1+L, D) -> (1, 1+L, D)
        elif key == "embed.proj.weight" and value.ndim == 2:
            out["patch_embed.proj.weight"] = _linear_to_conv(value, in_chans, label)
        elif key.startswith("embed."):
            out["patch_embed." + key[len("embed.") :]] = value
        else:
            out[key] = value
    return _Converted(out, "latent_mim", 1)


def _from_pilamim(state: dict[str, Tensor], which: Which, in_chans: int, label: str) -> _Converted:
    prefix = "target_encoder." if which == "target" else "encoder."
    return _pilamim_encoder(_sub_state(state, prefix, label, "pilamim"), "pilamim")


def _from_pilamim_probe(state: dict[str, Tensor], which: Which, in_chans: int, label: str) -> _Converted:
    if which == "target":
        raise CheckpointError(f"{label}: a PiLaMIM linear-probe checkpoint has one encoder; there is no target encoder to pick")
    classifier = ("head.", "batch_norm.", "linear.")
    return _pilamim_encoder({k: v for k, v in state.items() if not k.startswith(classifier)}, "pilamim")


def _pilamim_encoder(sub: dict[str, Tensor], layout: str) -> _Converted:
    renames = (("patchify.", "patch_embed.proj."), ("transformer.", "blocks."), ("layer_norm.", "norm."))
    out: dict[str, Tensor] = {}
    for key, value in sub.items():
        if key == "pos_embedding":
            out["pos_embed"] = value.reshape(-1, value.shape[-1]).unsqueeze(0)  # (L, 1, D) -> (1, L, D)
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return _Converted(out, layout, 0, zero_qkv_bias=True)


def _linear_to_conv(weight: Tensor, in_chans: int, label: str) -> Tensor:
    """(D, P*P*C), pixels in (row, column, channel) order -> timm conv weight (D, C, P, P)."""
    dim, k = weight.shape
    p = math.isqrt(k // in_chans)
    if p * p * in_chans != k:
        raise CheckpointError(f"{label}: patch embedding of width {k} is not P*P*{in_chans} for a square patch")
    return weight.reshape(dim, p, p, in_chans).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- fitting


def _load_into(vit: VisionTransformer, converted: _Converted, label: str, arch: str) -> None:
    expected = vit.state_dict()
    state = dict(converted.state)
    if "pos_embed" in state and vit.pos_embed is not None:
        state["pos_embed"] = _fit_pos_embed(state["pos_embed"], converted.pos_prefix, vit, label)
    for key in ("cls_token", "reg_token"):
        if key in state and key in expected and state[key].shape != expected[key].shape and state[key].numel() == expected[key].numel():
            state[key] = state[key].reshape(expected[key].shape)
    if converted.zero_qkv_bias:
        for key in expected:
            if key.endswith(".attn.qkv.bias") and key not in state and key[: -len("bias")] + "weight" in state:
                state[key] = torch.zeros_like(expected[key])
    state = {k: v for k, v in state.items() if k in expected or not k.startswith("head.")}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(label, converted.layout, arch, vit, state, missing, unexpected, mismatched))
    vit.load_state_dict(state, strict=True)


def _fit_pos_embed(pos: Tensor, src_prefix: int | None, vit: VisionTransformer, label: str) -> Tensor:
    """Source position table -> the model's (1, prefix + gh*gw, D).

    The grid part is resampled when its size differs; prefix rows the source lacks are zeros,
    surplus ones are dropped.
    """
    dst_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    src_prefix = dst_prefix if src_prefix is None else src_prefix
    pos = pos.reshape(1, -1, pos.shape[-1])  # (1, src_prefix + Ls, D)
    gh, gw = vit.patch_embed.grid_size
    n_grid = pos.shape[1] - src_prefix
    if n_grid != gh * gw:
        side = math.isqrt(max(n_grid, 0))
        if side * side != n_grid:
            raise CheckpointError(f"{label}: pos_embed has {n_grid} grid positions after {src_prefix} prefix rows, not a square grid")
        pos = resample_abs_pos_embed(pos, new_size=[gh, gw], old_size=[side, side], num_prefix_tokens=src_prefix)
    prefix, grid = pos[:, :src_prefix], pos[:, src_prefix:]  # (1, src_prefix, D), (1, gh*gw, D)
    if src_prefix < dst_prefix:
        prefix = torch.cat([prefix, prefix.new_zeros(1, dst_prefix - src_prefix, pos.shape[-1])], dim=1)
    return torch.cat([prefix[:, :dst_prefix], grid], dim=1)


def _mismatch_message(
    label: str,
    layout: str,
    arch: str,
    vit: VisionTransformer,
    state: Mapping[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
) -> str:
    expected = vit.state_dict()
    lines = [f"{label}: the {layout} checkpoint does not fit timm {arch!r} (embed_dim {vit.embed_dim}, depth {len(vit.blocks)}):"]
    if missing:
        lines.append(f"  missing from the checkpoint ({len(missing)}): {_names(missing)}")
    if unexpected:
        lines.append(f"  not in the model ({len(unexpected)}): {_names(unexpected)}")
    if mismatched:
        shapes = [f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]
        lines.append(f"  shape mismatch ({len(mismatched)}): {_names(shapes)}")
    lines.append("  check the model name and its img_size / patch_size / embed_dim / depth / num_heads overrides")
    return "\n".join(lines)


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- export


def _export_architecture(vit: VisionTransformer, name: str | None) -> str:
    """``name`` without a pretrained tag; a sourced name (``hf-hub:...``) defers to the model's own record."""
    recorded = (getattr(vit, "pretrained_cfg", None) or {}).get("architecture")
    arch = recorded if name is None or ":" in name else name
    if not arch:
        raise ValueError("save_pretrained: the model records no timm architecture; pass name=")
    arch = arch.split(".", 1)[0]  # a pretrained tag describes other weights
    if not timm.is_model(arch):
        raise ValueError(f"save_pretrained: {arch!r} is not a timm model name")
    return arch


def shape_args(vit: VisionTransformer) -> dict[str, Any]:
    """The shapes read off the modules, which win over the constructor arguments timm recorded
    (timm adds img_size, in_chans, num_classes and global_pool itself)."""
    ph, pw = vit.patch_embed.patch_size
    return {"patch_size": ph if ph == pw else [ph, pw], "embed_dim": vit.embed_dim, "depth": len(vit.blocks),
            "num_heads": vit.blocks[0].attn.num_heads}


def save_pretrained(
    vit: VisionTransformer,
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    *,
    data_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` (timm names) and ``config.json`` into ``out_dir`` with timm's own
    writer (``timm.models.save_for_hf``).

    name: the timm architecture to record; None uses the one the model was built as.
    data_config: the preprocessing the weights expect (``mean``, ``std``, ``crop_pct``,
        ``crop_mode``, ``interpolation``; ``mimkit.data.export_data_config`` gives a run's), so
        that ``timm.data.resolve_data_config`` on the loaded model normalises as the run did. What
        is not given keeps the model's own values; the tag and licence of other weights are dropped.

    Loads back with ``load_encoder(out_dir)``, ``timm.create_model(f"local-dir:{out_dir}",
    pretrained=True)``, or ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=
    dict(file=str(out_dir / "model.safetensors")), **model_args)``.
    """
    out = Path(out_dir)
    own = getattr(vit, "pretrained_cfg", None) or {}
    arch = _export_architecture(vit, name)
    vit.pretrained_cfg = {**{k: v for k, v in own.items() if k not in _OTHER_WEIGHTS_KEYS}, "architecture": arch}
    try:
        timm.models.save_for_hf(vit, str(out), model_args=shape_args(vit), safe_serialization=True,
                                data_config=dict(data_config or {}))
    finally:
        vit.pretrained_cfg = own
    return out


def _model_card(repo_id: str, config: Mapping[str, Any]) -> str:
    return (
        "---\n"
        "tags:\n- image-feature-extraction\n- timm\n- mimkit\n"
        "library_name: timm\n"
        "pipeline_tag: image-feature-extraction\n"
        "---\n"
        f"# {repo_id.split('/')[-1]}\n\n"
        f"A `{config['architecture']}` Vision Transformer encoder pre-trained with mimkit "
        "(masked image modeling); no classifier head.\n\n"
        "```python\n"
        "import timm\n"
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)\n'
        "# or: from mimkit.hub import load_encoder\n"
        f'#     model = load_encoder("hf-hub:{repo_id}")\n'
        "```\n"
    )


def push_to_hub(
    vit: VisionTransformer,
    repo_id: str,
    name: str | None = None,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Add mimkit encoder",
    *,
    revision: str | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> Any:
    """Upload the :func:`save_pretrained` folder (plus a model card when the repo has none).

    Returns huggingface_hub's commit info.
    """
    api = huggingface_hub.HfApi(token=token, library_name="mimkit")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    has_card = api.file_exists(repo_id=repo_id, filename="README.md", revision=revision)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(vit, tmp, name, data_config=data_config)
        if not has_card:
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
            (folder / "README.md").write_text(_model_card(repo_id, config), encoding="utf-8")
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision)
