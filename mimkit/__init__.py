"""mimkit: masked image modeling with one context encoder and pluggable heads.

Latent MIM, MAE (pixel MIM) and PiLaMIM are presets of one model::

    import mimkit
    cfg = mimkit.load_config("latent_mim", ["train.batch_size=256"])
    model = mimkit.build_model(cfg)
    out = model(images)          # {"loss": ..., "latent/loss": ..., "latent/sim_pred": ...}
"""

from .config import ConfigError, RunConfig, available_presets, load_config
from .model import MIMModel, build_model

__version__ = "0.1.0"

__all__ = ["ConfigError", "MIMModel", "RunConfig", "available_presets", "build_model", "load_config"]
