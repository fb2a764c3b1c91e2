"""Pictures of what runs learned, as PNGs (matplotlib: pip install "mimkit[viz]").

    mimkit show outputs/default --out pictures/                      # every picture the run's heads allow
    mimkit show outputs/mae+micro --what recon --num-images 6
    mimkit show outputs/default --what pca --encoder target
    mimkit show outputs/mae+micro outputs/latent_mim+micro --what curves --out cmp/   # overlaid curves

Pictures (--what, comma-separated, or all):
  recon   original | masked input (visible patches at their jittered places) | the pixel head's
          prediction (mapped back by each target patch's mean and std under norm_pix) | the
          prediction with the visible patches pasted in. Needs a pixel head.
  latent  per masked cell, whether its prediction retrieves its own target among the image's
          targets (patch-discrimination top-1), and the cosine of one prediction to every target.
          Needs a latent head.
  pca     patch tokens on the top three principal components (fitted on --fit-images images), as RGB.
  curves  log.jsonl: losses, lr and momentum, collapse monitor, retrieval, NN, images/s.

Images come from the run's evaluation split, drawn and masked with --seed; the model is the run's
latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..viz.run import TrainedRun

WHAT = ("recon", "latent", "pca", "curves")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimkit show", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="training output directories")
    p.add_argument("--what", default="all", help="recon, latent, pca, curves, comma-separated, or all (default all)")
    p.add_argument("--out", default="pictures", help="folder for the PNGs (default pictures/)")
    p.add_argument("--num-images", type=int, default=6, help="images shown (default 6)")
    p.add_argument("--fit-images", type=int, default=256, help="images whose patches fit the PCA (default 256)")
    p.add_argument("--encoder", choices=("context", "target"), default="context", help="encoder of the PCA maps")
    p.add_argument("--seed", type=int, default=0, help="which images, masks and gap offsets (default 0)")
    return p


def wanted(text: str) -> tuple[list[str], bool]:
    """(pictures, explicit): 'all' is every picture, each drawn only where the run allows it."""
    if text == "all":
        return list(WHAT), False
    items = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in WHAT]
    if bad or not items:
        raise ValueError(f"--what: {', '.join(bad) or 'nothing'} is not one of {', '.join(WHAT)}, all")
    return items, True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..config import ConfigError
    from ..viz import VizError, pyplot
    from ..viz.run import load_trained

    try:
        what, explicit = wanted(args.what)
        if args.num_images < 1 or args.fit_images < 1:
            raise ValueError("--num-images and --fit-images must be >= 1")
        pyplot()
    except (ValueError, VizError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    try:
        if "curves" in what:
            print(f"wrote {curves(args.runs, out)}")
        pictures = [w for w in what if w != "curves"]
        for run_dir in args.runs if pictures else []:
            run = load_trained(run_dir)
            for picture in pictures:
                try:
                    print(f"wrote {draw(picture, run, args, out)}")
                except VizError as e:
                    failures += explicit
                    print(f"{'error' if explicit else 'skipped'}: {run_dir}: {e}", file=sys.stderr)
    except (VizError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2 if failures else 0


def curves(runs: list[str], out: Path) -> Path:
    from ..viz.curves import draw_curves, read_log

    logs = {Path(r).resolve().name: read_log(Path(r) / "log.jsonl") for r in runs}
    name = "curves.png" if len(runs) > 1 else f"{next(iter(logs))}_curves.png"
    return draw_curves(logs, out / name)


def draw(picture: str, run: TrainedRun, args: argparse.Namespace, out: Path) -> Path:
    from ..viz.run import eval_images

    cfg, model = run.cfg, run.model
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    title = f"{run.name} ({cfg.preset}), step {run.step}"
    path = out / f"{run.name}_{picture}.png"
    if picture == "recon":
        from ..viz.recon import draw_recon, reconstruct

        images = eval_images(cfg, args.num_images, model.input_size, args.seed)
        return draw_recon(reconstruct(model, images, args.seed), mean, std, title, path)
    if picture == "latent":
        from ..viz.latent import draw_latent, retrieval_maps

        images = eval_images(cfg, args.num_images, model.input_size, args.seed)
        return draw_latent(images, retrieval_maps(model, images, args.seed), mean, std, title, path)
    from ..viz import VizError
    from ..viz.pca import draw_pca, pca_rgb

    if args.encoder == "target":
        if model.target is None or model.target.own is None:
            raise VizError("pca: the run has no target encoder of its own (target.mode is not ema/standalone)")
        vit = model.target.own.vit
    else:
        vit = model.encoder.vit
    size = vit.patch_embed.img_size[0]
    fit = eval_images(cfg, max(args.fit_images, args.num_images), size, args.seed)
    title = f"{title}: {args.encoder} encoder, PCA of patch tokens (fitted on {fit.shape[0]} images)"
    return draw_pca(fit[: args.num_images], pca_rgb(vit, fit, fit[: args.num_images]), mean, std, title, path)
