"""Unsupervised segmentation maps from a frozen encoder: the patch tokens of each image are
clustered bottom-up (agglomerative: Ward on L2-normalised tokens, or average linkage on
cosine distance) and the clusters painted back onto the image.

    mimkit segment --checkpoint outputs/latent_mim --num-images 8 --clusters 5 --out seg.png
    mimkit segment --checkpoint hf-hub:timm/vit_base_patch16_224.mae --data path/to/imagenette --out seg.png

Writes one PNG: a row per image, columns original | segmentation (| cluster map with --map).
Images are resized and centre-cropped to the encoder's native size and normalised with the
run's data.mean/std (config.yaml), else the checkpoint's config.json, else ImageNet's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path



def build_parser() -> argparse.ArgumentParser:
    from ..eval.cli import add_model_arguments

    p = argparse.ArgumentParser(prog="mimkit segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="'embedded', a local dataset dir or a Hub dataset id (default: data.source of the checkpoint's config.yaml)")
    g.add_argument("--split", help="split to draw images from (default: the eval split, else the train split)")
    g.add_argument("--image-column", help="image column (default: detected)")
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean")
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std (with --mean)")
    g.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")
    s = p.add_argument_group("segmentation")
    s.add_argument("--num-images", type=int, default=8, help="images, one row each (default 8)")
    s.add_argument("--clusters", type=int, default=5, help="clusters per image (default 5)")
    s.add_argument("--linkage", choices=("ward", "average"), default="ward", help="merge criterion (default ward)")
    s.add_argument("--norm", choices=("pre", "post"), default="pre", help="tokens before or after the final norm (default pre)")
    s.add_argument("--cell", type=int, default=160, help="side of each image in the sheet, in pixels (default 160)")
    s.add_argument("--alpha", type=float, default=0.5, help="opacity of the cluster colours (default 0.5)")
    s.add_argument("--map", action="store_true", help="add a column with the bare cluster map")
    p.add_argument("--out", default="seg.png", help="PNG to write (default seg.png)")
    return p


def check(args: argparse.Namespace) -> None:
    from ..eval.cli import fail

    if args.num_images < 1:
        fail(f"--num-images: {args.num_images} must be >= 1")
    if args.clusters < 1:
        fail(f"--clusters: {args.clusters} must be >= 1")
    if args.cell < 8:
        fail(f"--cell: {args.cell} must be >= 8")
    if not 0 <= args.alpha <= 1:
        fail(f"--alpha: {args.alpha} must be in [0, 1]")
    if Path(args.out).suffix.lower() != ".png":
        fail(f"--out: {args.out} should end in .png")


def pick_images(dataset, count: int, seed: int):
    """Up to ``count`` decodable images (3, S, S) of ``dataset``, drawn at random with ``seed``."""
    import torch

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = []
    for i in order:
        sample = dataset[i]
        if sample is not None:
            picked.append(sample[0])
        if len(picked) == count:
            break
    if not picked:
        raise ValueError("--data: no decodable image in the split")
    return torch.stack(picked)


def make_sheet(args: argparse.Namespace):
    from ..data import ImageDataset, eval_transform, load_splits
    from ..eval.features import native_size
    from ..eval.runs import data_config, load_run, normalization
    from ..eval.segmentation import segmentation_rows

    run = load_run(args.checkpoint, args.model)
    dcfg = data_config(run, args.data, image_column=args.image_column, mean=args.mean, std=args.std)
    mean, std, _ = normalization(run, args.mean, args.std)
    splits = load_splits(dcfg)
    split = args.split or splits.eval or splits.train
    if split not in splits.data:
        raise ValueError(f"--split: {split!r} not among the splits {list(splits.data)}")
    size = native_size(run.vit)
    dataset = ImageDataset(splits.data[split], splits.image_column, None, eval_transform(size, dcfg))
    images = pick_images(dataset, args.num_images, args.seed)  # (B, 3, S, S)
    print(f"{run.label}: {len(images)} images of {dcfg.source}[{split}] at {size} px, {args.clusters} clusters", file=sys.stderr)
    return run.label, segmentation_rows(
        run.vit, images, mean, std, n_clusters=args.clusters, linkage=args.linkage, norm=args.norm == "post",
        cell=args.cell, alpha=args.alpha, with_map=args.map,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check(args)
    from ..eval.cli import USER_ERRORS, check_model_arguments

    check_model_arguments(args)
    from ..viz import VizError
    from ..viz.sheet import image_sheet

    try:
        label, (rows, titles) = make_sheet(args)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        image_sheet(rows, titles, out, label, cell=args.cell / 100)
    except (*USER_ERRORS, VizError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
