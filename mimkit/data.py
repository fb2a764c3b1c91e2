"""Image datasets through Hugging Face ``datasets``: a Hub id, a local directory in the Hub's
parquet layout, or an image folder; decoded and augmented into image tensors.

Images are decoded here (the image column is read with ``decode=False``) so that any
mode (grayscale, CMYK, RGBA, palette) becomes RGB and an undecodable file is skipped and
counted instead of crashing a run.
"""

from __future__ import annotations

import io
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import datasets
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import pil_to_tensor

from .config import ConfigError, DataConfig

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
_EVAL_SPLITS = ("test", "validation", "val", "valid")
_IMAGE_NAMES = ("image", "img", "jpg", "png", "pixel_values")
_LABEL_NAMES = ("label", "labels", "class", "target", "fine_label")


def embedded_dir() -> Path:
    """The small real-image dataset shipped inside the package (see its PROVENANCE.md)."""
    return Path(str(resources.files("mimkit.assets"))) / "cifar10_small"


def is_image_folder(path: Path) -> bool:
    """A local directory read as an image folder: one holding no parquet files."""
    return path.is_dir() and not any(path.rglob("*.parquet"))


def load_source(source: str) -> datasets.DatasetDict:
    """``embedded`` | a local dir (parquet files or an image folder) | a Hub dataset id."""
    if source == EMBEDDED:
        source = str(embedded_dir())
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_dataset("imagefolder", data_dir=str(path)) if is_image_folder(path) else datasets.load_dataset(str(path))
        elif path.exists():
            raise ConfigError(f"data.source: {source} is a file; give a directory or a Hub dataset id")
        else:
            ds = datasets.load_dataset(source)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"data.source: cannot load {source!r} as a local directory or Hub dataset: {e}") from e
    if not isinstance(ds, datasets.DatasetDict):
        ds = datasets.DatasetDict({"train": ds})
    return ds


def pick_eval_split(ds: datasets.DatasetDict, wanted: str | None) -> str | None:
    if wanted is not None:
        if wanted not in ds:
            raise ConfigError(f"data.eval_split: {wanted!r} not in the dataset's splits {list(ds)}")
        return wanted
    return next((s for s in _EVAL_SPLITS if s in ds), None)


def detect_columns(features: datasets.Features, image_column: str | None, label_column: str | None) -> tuple[str, str | None]:
    """The image column (an ``Image`` feature or a usual name) and the label column (or None)."""
    names = list(features)
    if image_column is None:
        image_column = next((n for n in names if isinstance(features[n], datasets.Image)), None)
        image_column = image_column or next((n for n in _IMAGE_NAMES if n in names), None)
        if image_column is None:
            raise ConfigError(f"data.image_column: no image column found among {names}; set data.image_column")
    elif image_column not in names:
        raise ConfigError(f"data.image_column: {image_column!r} not among the columns {names}")
    if label_column is None:
        label_column = next((n for n in names if isinstance(features[n], datasets.ClassLabel)), None)
        label_column = label_column or next((n for n in _LABEL_NAMES if n in names), None)
    elif label_column not in names:
        raise ConfigError(f"data.label_column: {label_column!r} not among the columns {names}")
    return image_column, label_column


def decode_rgb(value: Any) -> Image.Image | None:
    """A PIL RGB image from a datasets image value (bytes/path dict or PIL), None if undecodable."""
    try:
        if isinstance(value, Image.Image):
            img = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            img = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            img = Image.open(value["path"])
        else:
            return None
        img.load()
        if img.mode == "RGB":
            return img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")  # composite transparent pixels onto black, not garbage
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, img).convert("RGB")
        return img.convert("RGB")
    except Exception:  # truncated, corrupt, or not an image at all
        return None


def train_transform(size: int, cfg: DataConfig) -> Callable[[Image.Image], Any]:
    """RandomResizedCrop(scale) to ``size`` and horizontal flip, as a uint8 (3, size, size) image
    (``mimkit.augment.finish_batch`` scales and normalises the whole batch: a quarter of the
    bytes between processes, one vectorised pass instead of one per image); with
    ``data.augment: device`` only the decoding half (see ``mimkit.augment``)."""
    if cfg.augment == "device":
        from .augment import DecodeForDevice, default_decode_size

        return DecodeForDevice(cfg.decode_size or default_decode_size(size), (cfg.crop_scale[0], cfg.crop_scale[1]), cfg.hflip)
    ops: list[Any] = [T.ToImage(), T.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops)


def eval_transform(size: int, cfg: DataConfig) -> T.Compose:
    """Resize the short side to ``size / data.eval_crop`` (rounded down), centre crop ``size``, normalise."""
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(int(size / cfg.eval_crop), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


def export_data_config(cfg: DataConfig) -> dict[str, Any]:
    """``eval_transform`` in timm's terms, for an exported encoder's ``config.json``: timm's eval
    transform with these values resizes and crops exactly as ``eval_transform`` does."""
    return {"mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.eval_crop, "crop_mode": "center",
            "interpolation": "bicubic"}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample's augmentation, fixed by (run seed, epoch, dataset index)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


CACHE_BYTES = 1 << 30  # data.cache=auto keeps a split's decoded images when they fit in this


def decode_all(hf: datasets.Dataset, image_column: str, chunk: int = 1000) -> Tensor | list[Tensor | None]:
    """Every image of ``hf`` decoded to uint8 (3, H, W): one (N, 3, H, W) tensor when all
    decode to the same size, else a list with None for the undecodable ones."""
    images: list[Tensor | None] = []
    for start in range(0, len(hf), chunk):
        for value in hf[start : start + chunk][image_column]:
            img = decode_rgb(value)
            images.append(None if img is None else pil_to_tensor(img))
    shapes = {None if x is None else x.shape for x in images}
    if len(shapes) == 1 and None not in shapes:
        return torch.stack(images)  # type: ignore[arg-type]
    return images


def decoded_bytes(hf: datasets.Dataset, image_column: str, samples: int = 16) -> int:
    """An estimate of the split's decoded size: the mean of ``samples`` evenly spread images,
    times the number of rows."""
    n = min(samples, len(hf))
    if n == 0:
        return 0
    rows = hf.select(sorted({i * len(hf) // n for i in range(n)}))[image_column]
    sizes = [3 * img.size[0] * img.size[1] for img in map(decode_rgb, rows) if img is not None]
    return sum(sizes) * len(hf) // max(len(sizes), 1)


class ImageDataset(Dataset):
    """(image tensor, label, passed-over count) triples.

    An undecodable image is either replaced by the next decodable one (``on_error="substitute"``,
    for training: batches keep their size, so every process runs the same steps) or returned
    as None (``"skip"``, for evaluation: nothing is counted twice); ``collate`` counts both.

    With ``seed`` set, each sample's random augmentation is drawn from a generator seeded by
    (seed, epoch, index): the same image gets the same crop whatever the number of workers
    or processes, and after a resume. Call ``set_epoch`` before iterating an epoch.

    With ``cache`` (``data.cache``: true, or "auto" when the decoded images fit ``CACHE_BYTES``)
    every image is decoded once, here, and kept as a uint8 (3, H, W) tensor (``decode_all``); the
    transform then receives that tensor instead of a PIL image, so it must accept both
    (torchvision's v2 transforms do).
    """

    max_substitutions = 64

    def __init__(
        self,
        hf: datasets.Dataset,
        image_column: str,
        label_column: str | None,
        transform: Callable[[Image.Image], Any],
        seed: int | None = None,
        on_error: Literal["substitute", "skip"] = "skip",
        cache: Literal["auto"] | bool = False,
    ):
        self.hf = hf.cast_column(image_column, datasets.Image(decode=False))
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.seed = seed
        self.on_error = on_error
        self.epoch = 0
        self.decoded = None
        if cache == "auto":
            cache = decoded_bytes(self.hf, image_column) <= CACHE_BYTES
        if cache:
            start = time.perf_counter()
            self.decoded = decode_all(self.hf, image_column)
            nbytes = self.decoded.nbytes if isinstance(self.decoded, Tensor) else sum(x.nbytes for x in self.decoded if x is not None)
            log.info("data: %s images decoded once into memory (%.0f MB, %.1f s; data.cache)", f"{len(self.hf):,}", nbytes / 1e6,
                     time.perf_counter() - start)
        self.labels = [int(y) for y in self.hf[label_column]] if cache and label_column is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.hf)

    def _load(self, i: int) -> tuple[Image.Image | Tensor, int] | None:
        if self.decoded is not None:
            img = self.decoded[i]
            if img is None:
                return None
            return img, self.labels[i] if self.labels is not None else -1
        row = self.hf[i]
        img = decode_rgb(row[self.image_column])
        if img is None:
            return None
        return img, int(row[self.label_column]) if self.label_column is not None else -1

    def __getitem__(self, i: int) -> tuple[Any, int, int] | None:
        loaded, passed_over = self._load(i), 0
        while loaded is None and self.on_error == "substitute" and passed_over < min(self.max_substitutions, len(self) - 1):
            passed_over += 1
            loaded = self._load((i + passed_over) % len(self))
        if loaded is None:
            if self.on_error == "substitute":
                raise DataError(
                    f"data: {passed_over + 1} consecutive undecodable images from index {i} (are the files images? "
                    "for a table, is data.image_column right?)"
                )
            log.debug("data: undecodable image at index %d skipped", i)
            return None
        img, label = loaded
        if self.seed is None:
            return self.transform(img), label, passed_over
        with seeded_cpu_rng(sample_seed(self.seed, self.epoch, i)):
            return self.transform(img), label, passed_over


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """The global CPU generator seeded with ``seed`` inside, its state restored after: what
    ``fork_rng(devices=[])`` + ``torch.manual_seed`` give the CPU transforms, without the
    ~0.2 ms per call that ``torch.manual_seed`` spends on every other backend's generator."""
    gen = torch.default_generator
    state = gen.get_state()
    gen.manual_seed(seed)
    try:
        yield
    finally:
        gen.set_state(state)


def collate(batch: list[tuple[Any, int, int] | None]) -> dict[str, Tensor]:
    """Stack the samples; ``skipped`` counts undecodable images skipped or passed over. Samples
    decoded for device augmentation ((uint8 image, crop) pairs) also give ``crops``."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good) + sum(g[2] for g in good)
    if not good:
        return {"images": torch.empty(0), "labels": torch.empty(0, dtype=torch.long), "skipped": torch.tensor(skipped)}
    out = {"labels": torch.tensor([g[1] for g in good], dtype=torch.long), "skipped": torch.tensor(skipped)}
    if isinstance(good[0][0], tuple):
        out["images"] = torch.stack([g[0][0] for g in good])  # (B, C, D, D) uint8
        out["crops"] = torch.stack([g[0][1] for g in good])  # (B, 5)
    else:
        out["images"] = torch.stack([g[0] for g in good])
    return out


@dataclass
class Splits:
    """The loaded dataset with its resolved split and column names."""

    data: datasets.DatasetDict
    train: str
    eval: str | None
    image_column: str
    label_column: str | None

    def dataset(
        self,
        split: str,
        transform: Callable[[Image.Image], Any],
        seed: int | None = None,
        on_error: Literal["substitute", "skip"] = "skip",
        cache: Literal["auto"] | bool = False,
    ) -> ImageDataset:
        return ImageDataset(self.data[split], self.image_column, self.label_column, transform, seed=seed, on_error=on_error, cache=cache)


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``data.source`` and check splits and columns before any training starts."""
    ds = load_source(cfg.source)
    if cfg.train_split not in ds:
        raise ConfigError(f"data.train_split: {cfg.train_split!r} not in the splits of {cfg.source!r}: {list(ds)}")
    if len(ds[cfg.train_split]) == 0:
        raise ConfigError(f"data.source: split {cfg.train_split!r} of {cfg.source!r} is empty")
    if cfg.holdout:
        ds = carve_holdout(ds, cfg.train_split, cfg.holdout)
        eval_split = HOLDOUT_SPLIT
    else:
        eval_split = pick_eval_split(ds, cfg.eval_split)
    image_column, label_column = detect_columns(ds[cfg.train_split].features, cfg.image_column, cfg.label_column)
    check_decodable(ds[cfg.train_split], image_column, cfg)
    return Splits(ds, cfg.train_split, eval_split, image_column, label_column)


class DataError(RuntimeError):
    """Images that cannot be decoded, found while iterating (the message is one line)."""


def check_decodable(hf: datasets.Dataset, image_column: str, cfg: DataConfig, samples: int = 16) -> None:
    """Decode up to ``samples`` evenly spread rows; none decoding is a ConfigError that names the
    likely cause, raised before anything is written or trained."""
    n = min(samples, len(hf))
    rows = hf.select(sorted({i * len(hf) // n for i in range(n)})).cast_column(image_column, datasets.Image(decode=False))
    if any(decode_rgb(v) is not None for v in rows[image_column]):
        return
    folder = cfg.source != EMBEDDED and is_image_folder(Path(cfg.source).expanduser())
    hint = "are the files in the folder images?" if folder else f"is data.image_column ({image_column!r}) the column of images?"
    raise ConfigError(f"data.source: none of {len(rows)} sampled images of {cfg.source!r} can be decoded; {hint}")


HOLDOUT_SPLIT = "holdout"


def carve_holdout(ds: datasets.DatasetDict, train_split: str, n: int, seed: int = 0) -> datasets.DatasetDict:
    """``n`` seeded-random rows of the train split become the ``holdout`` split (a validation
    split carved from train, for choosing hyperparameters without touching the test split);
    the train split keeps the rest."""
    train = ds[train_split]
    if n >= len(train):
        raise ConfigError(f"data.holdout: {n} leaves no training image (split {train_split!r} has {len(train)})")
    parts = train.train_test_split(test_size=n, shuffle=True, seed=seed)
    out = datasets.DatasetDict(dict(ds))
    out[train_split], out[HOLDOUT_SPLIT] = parts["train"], parts["test"]
    return out
