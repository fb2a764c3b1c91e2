"""Pluggable MIM heads. ``OBJECTIVES`` lists them in the order they run: a head that
publishes into ``Context.extras`` comes before the heads that read it."""

from .base import Context, Objective
from .cls import ClsObjective
from .cluster import ClusterObjective
from .latent import LatentObjective
from .pixel import PixelObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "latent": LatentObjective,
    "pixel": PixelObjective,
    "cls": ClsObjective,
    "cluster": ClusterObjective,
}

__all__ = ["OBJECTIVES", "Context", "Objective", "LatentObjective", "PixelObjective", "ClsObjective", "ClusterObjective"]
