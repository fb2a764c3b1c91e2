"""Scoring the context encoder while it pretrains: NN and weighted k-NN on fixed images.

The trainer scores the encoder at initialisation (``train.eval_baseline``), every
``train.eval_every_epochs`` (NN only: the curve) and at the end, always on the same images,
so the numbers of one run are comparable with each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
from accelerate import Accelerator
from timm.models.vision_transformer import VisionTransformer

from ..config import DataConfig
from ..data import ImageDataset, Splits, eval_transform
from .features import NN_POOLING, extract_features
from .knn import knn_accuracy, nn_loo_accuracy
from .runs import subset


@dataclass
class EncoderMonitor:
    eval_set: ImageDataset  # NN: leave-one-out within these images
    knn_bank: ImageDataset | None  # k-NN: train images voting for the eval images
    num_classes: int
    batch_size: int = 256

    @property
    def chance(self) -> float:
        return 100.0 / self.num_classes

    def score(self, vit: VisionTransformer, accelerator: Accelerator | None = None, knn: bool = True) -> dict[str, float]:
        """{"nn": top-1 %, "knn": top-1 % (when asked and a bank exists)}, rounded to 0.01; same on every process."""
        feats = extract_features(vit, self.eval_set, NN_POOLING, batch_size=self.batch_size, accelerator=accelerator)
        out = {"nn": nn_loo_accuracy(feats[NN_POOLING], feats.labels)}
        if knn and self.knn_bank is not None:
            bank = extract_features(vit, self.knn_bank, NN_POOLING, batch_size=self.batch_size, accelerator=accelerator)
            out["knn"] = knn_accuracy(bank[NN_POOLING], bank.labels, feats[NN_POOLING], feats.labels)
        return {k: round(v, 2) for k, v in out.items()}


def _num_classes(hf: datasets.Dataset, label_column: str) -> int:
    feature = hf.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    return len(set(hf[label_column]))


def build_monitor(splits: Splits, cfg: DataConfig, image_size: int, knn_train: int, batch_size: int) -> EncoderMonitor | None:
    """A monitor on the eval split (None when there is none or no labels); ``knn_train`` seeded
    random train images form the k-NN bank (0: NN only)."""
    if splits.eval is None or splits.label_column is None:
        return None
    tf = eval_transform(image_size, cfg)

    def dataset(hf: datasets.Dataset) -> ImageDataset:  # scored again and again: decoded once when data.cache allows
        return ImageDataset(hf, splits.image_column, splits.label_column, tf, cache=cfg.cache)

    eval_hf = splits.data[splits.eval]
    bank = dataset(subset(splits.data[splits.train], knn_train, seed=0)) if knn_train > 0 else None
    eval_set = dataset(eval_hf)
    return EncoderMonitor(eval_set, bank, _num_classes(eval_hf, splits.label_column), batch_size)
