"""The whole evaluation of one encoder: features once per split, then every protocol."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from accelerate import Accelerator
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset

from .collapse import effective_rank, pairwise_similarity
from .features import NN_POOLING, Features, Pooling, extract_features
from .fewshot import FewShotConfig, few_shot
from .knn import knn_accuracy, nn_loo_accuracy
from .linear import LinearProbeConfig, linear_probe

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("nn", "knn", "linear", "fewshot", "sim")  # "sim" also gives sim_patches and rank
NEEDS_TRAIN = frozenset({"knn", "linear", "fewshot"})


@dataclass
class SuiteConfig:
    pooling: Pooling = field(default_factory=lambda: NN_POOLING)  # knn, linear, fewshot, sim, rank
    nn_pooling: Pooling = field(default_factory=lambda: NN_POOLING)  # the paper's NN protocol
    protocols: Sequence[str] = PROTOCOLS
    batch_size: int = 256
    num_workers: int = 0
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"protocols: {unknown} not among {list(PROTOCOLS)}")

    @property
    def needs_train(self) -> bool:
        return bool(NEEDS_TRAIN & set(self.protocols))


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)


def run_suite(
    vit: VisionTransformer,
    eval_data: Dataset,
    train_data: Dataset | None,
    cfg: SuiteConfig | None = None,
    accelerator: Accelerator | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict:
    """Every protocol of ``cfg.protocols`` on ``vit``: a flat dict of numbers plus ``meta``.

    Accuracies are top-1 in percent; ``sim``/``sim_patches`` are mean cosine similarities;
    ``rank`` the effective rank of the eval features. Skipped protocols are None.
    """
    cfg = cfg or SuiteConfig()

    def extract(data: Dataset, poolings: list[Pooling], patch_similarity: bool) -> Features:
        return extract_features(vit, data, poolings, patch_similarity=patch_similarity, batch_size=cfg.batch_size,
                                num_workers=cfg.num_workers, accelerator=accelerator)

    return score_suite(extract, eval_data, train_data, cfg, progress)


Extractor = Callable[[Dataset, list[Pooling], bool], Features]  # (data, poolings, patch_similarity) -> Features


def score_suite(
    extract: Extractor,
    eval_data: Dataset,
    train_data: Dataset | None,
    cfg: SuiteConfig,
    progress: Callable[[str], None] = log.info,
) -> dict:
    """``run_suite`` over any feature extractor (an encoder's pooled tokens, raw pixels, ...)."""
    protocols = set(cfg.protocols)
    if cfg.needs_train and train_data is None:
        raise ValueError(f"{sorted(NEEDS_TRAIN & protocols)} need a training split")
    timings: dict[str, float] = {}
    eval_poolings = ([cfg.nn_pooling] if "nn" in protocols else []) + [cfg.pooling]
    progress(f"features of {len(eval_data)} eval images")  # type: ignore[arg-type]
    with _timed(timings, "features_eval"):
        ev = extract(eval_data, eval_poolings, "sim" in protocols)
    tr: Features | None = None
    if cfg.needs_train:
        progress(f"features of {len(train_data)} train images")  # type: ignore[arg-type]
        with _timed(timings, "features_train"):
            tr = extract(train_data, [cfg.pooling], False)
    x_ev, y_ev = ev[cfg.pooling], ev.labels
    out: dict = dict.fromkeys(("nn", "knn", "linear", "fewshot", "fewshot_std", "fewshot_runs", "sim", "sim_patches", "rank"))
    linear_lr = None
    if "nn" in protocols:
        with _timed(timings, "nn"):
            out["nn"] = nn_loo_accuracy(ev[cfg.nn_pooling], y_ev)
        progress(f"nn {out['nn']:.2f}")
    if "knn" in protocols:
        with _timed(timings, "knn"):
            out["knn"] = knn_accuracy(tr[cfg.pooling], tr.labels, x_ev, y_ev, k=cfg.knn_k, temperature=cfg.knn_temperature)
        progress(f"knn {out['knn']:.2f}")
    if "linear" in protocols:
        with _timed(timings, "linear"):
            lin = linear_probe(tr[cfg.pooling], tr.labels, x_ev, y_ev, cfg.linear)
        out["linear"], linear_lr = lin.top1, lin.base_lr
        progress(f"linear {lin.top1:.2f} (base lr {lin.base_lr:g})")
    if "fewshot" in protocols:
        with _timed(timings, "fewshot"):
            fs = few_shot(tr[cfg.pooling], tr.labels, x_ev, y_ev, cfg.fewshot)
        out.update(fewshot=fs.mean, fewshot_std=fs.std, fewshot_runs=fs.runs)
        progress(f"fewshot {fs}")
    if "sim" in protocols:
        with _timed(timings, "sim"):
            out["sim"] = pairwise_similarity(x_ev)
            patch_sim = ev.patch_sim.get(cfg.pooling.norm)  # absent for features without patches (raw pixels)
            out["sim_patches"] = float(patch_sim.mean()) if patch_sim is not None else None
            out["rank"] = effective_rank(x_ev)
        progress(f"sim {out['sim']:.3f} rank {out['rank']:.1f}")
    out["meta"] = {
        "pooling": cfg.pooling.name,
        "nn_pooling": cfg.nn_pooling.name,
        "sizes": {"eval": len(ev), "train": len(tr) if tr is not None else None},
        "skipped": {"eval": ev.skipped, "train": tr.skipped if tr is not None else None},
        "knn": {"k": cfg.knn_k, "temperature": cfg.knn_temperature},
        "linear": {**vars(cfg.linear), "base_lrs": list(cfg.linear.base_lrs), "picked_base_lr": linear_lr},
        "fewshot": {**vars(cfg.fewshot), "seeds": list(cfg.fewshot.seeds)},
        "seconds": timings,
    }
    return out
