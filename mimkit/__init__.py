"""mimkit: masked image modeling with one context encoder and pluggable heads.

Latent MIM, MAE (pixel MIM) and PiLaMIM are presets of one model::

    import mimkit
    cfg = mimkit.load_config("latent_mim", ["train.batch_size=256"])
    model = mimkit.build_model(cfg)
    out = model(images)          # {"loss": ..., "latent/loss": ..., "latent/sim_pred": ...}
    vit = mimkit.load_encoder("outputs/default/encoder")   # a timm ViT; also Hub ids, files, reference checkpoints
"""

from typing import Any

from .config import ConfigError, RunConfig, available_presets, load_config

__version__ = "0.1.0"

# The model pulls in the heads of ``mimkit.objectives`` (the repository's objectives/ folder), which
# import mimkit's submodules; resolving these names lazily keeps either import order working.
_LAZY = {
    "MIMModel": "model",
    "build_model": "model",
    "load_encoder": "hub",
    "save_pretrained": "hub",
    "push_to_hub": "hub",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mimkit' has no attribute {name!r}")


__all__ = [
    "ConfigError", "MIMModel", "RunConfig", "available_presets", "build_model", "load_config",
    "load_encoder", "push_to_hub", "save_pretrained",
]
