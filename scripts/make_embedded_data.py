"""Rebuild the embedded default dataset (mimkit/assets/cifar10_small) from a CIFAR-10 copy in
the Hub's parquet layout: the first N images of each class of each split, in file order.

    python scripts/make_embedded_data.py --source /path/to/cifar10 --train-per-class 1000 --test-per-class 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets

OUT = Path(__file__).resolve().parents[1] / "mimkit" / "assets" / "cifar10_small"


def first_per_class(ds: datasets.Dataset, per_class: int) -> datasets.Dataset:
    counts: dict[int, int] = {}
    keep = []
    for i, y in enumerate(ds["label"]):
        if counts.get(y, 0) < per_class:
            counts[y] = counts.get(y, 0) + 1
            keep.append(i)
    return ds.select(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="CIFAR-10 in the Hub's parquet layout (train/test splits)")
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--out", type=Path, default=OUT, help="where to write train.parquet and test.parquet (default: the package's)")
    args = ap.parse_args()
    ds = datasets.load_dataset(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        part = first_per_class(ds[split], n)
        part.to_parquet(str(args.out / f"{split}.parquet"))
        print(f"{split}: {len(part)} images -> {args.out / f'{split}.parquet'}")


if __name__ == "__main__":
    main()
