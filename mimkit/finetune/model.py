"""The classifier to fine-tune: timm's own ViT with the encoder's shapes and weights and a new head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from ..config import ConfigError, config_from_yaml
from ..eval.baselines import init_encoder
from ..hub import load_encoder, shape_args
from .config import FtModelConfig

_HEAD_KEYS = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
_NOT_ARCHITECTURE = {"num_classes", "global_pool", "drop_path_rate", "fc_norm", "pretrained_cfg", "pretrained_cfg_overlay"}


def encoder_args(vit: VisionTransformer) -> dict[str, Any]:
    """The constructor arguments that rebuild ``vit``'s shapes (timm's record, shapes read off the modules)."""
    recorded = {k: v for k, v in (getattr(vit, "_model_args", None) or {}).items()
                if k not in _NOT_ARCHITECTURE and not k.endswith("drop_rate")}
    return {**recorded, **shape_args(vit), "img_size": list(vit.patch_embed.img_size),
            "in_chans": vit.patch_embed.proj.in_channels}


def scratch_encoder(source: str) -> VisionTransformer:
    """The context encoder of the training run ``source`` at initialisation."""
    saved = Path(source) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"model.from_scratch: {source} is not a training run directory (no config.yaml); "
                          "pass the run whose initialisation to fine-tune")
    return init_encoder(config_from_yaml(saved))


def build_classifier(source: str, num_classes: int, cfg: FtModelConfig) -> VisionTransformer:
    """The encoder of ``source`` under a new ``num_classes`` head. ``avg`` pooling is MAE's
    fine-tuning head: the mean of the patch tokens through a new LayerNorm (``fc_norm``), the
    encoder's final norm left out; ``cls`` reads the CLS token after the final norm. The head is
    initialised as MAE does (truncated normal, std 2e-5; zero bias). ``cfg.from_scratch`` takes,
    in place of the trained weights, the encoder a training run ``source`` started from (its
    config and seed, no step taken): the from-scratch row every pretraining must beat."""
    enc = scratch_encoder(source) if cfg.from_scratch else load_encoder(source, name=cfg.name)
    arch = (enc.pretrained_cfg or {}).get("architecture") or cfg.name
    vit = timm.create_model(arch, pretrained=False, num_classes=num_classes, global_pool="avg" if cfg.pool == "avg" else "token",
                            drop_path_rate=cfg.drop_path, **encoder_args(enc))
    state = {k: v for k, v in enc.state_dict().items() if k in vit.state_dict()}
    missing, unexpected = vit.load_state_dict(state, strict=False)
    left_out = set(missing) - _HEAD_KEYS
    if left_out or unexpected:
        raise ValueError(f"{source}: the encoder does not fit the classifier: missing {sorted(left_out)}, unexpected {sorted(unexpected)}")
    torch.nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    torch.nn.init.zeros_(vit.head.bias)
    return vit
