"""Command-line pieces shared by mimkit evaluate, compare and segment."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import timm
import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from ..config import ConfigError
from .baselines import BASELINES, pixel_features
from .features import POOL_KINDS, Features, Pooling, native_size
from .fewshot import FewShotConfig
from .linear import LinearProbeConfig
from .runs import HUB_PREFIXES, data_config, load_baseline, load_eval_data, load_run, local_path, normalization
from .suite import PROTOCOLS, SuiteConfig, run_suite, score_suite


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        help="a training output dir (encoder/ + config.yaml), an exported encoder dir (model.safetensors + config.json), "
        "a checkpoint file (one in a run's checkpoints/ is built from the run's config.yaml), or a timm Hub id "
        "'hf-hub:timm/NAME'; add '#target' for the target encoder of a two-encoder checkpoint",
    )
    g.add_argument(
        "--model",
        help="timm architecture name: needed for a checkpoint that does not record its architecture; "
        "without --checkpoint, a randomly initialised NAME (a baseline)",
    )
    g.add_argument(
        "--baseline", choices=BASELINES,
        help="score a baseline of the --checkpoint run instead of its trained encoder: 'init' its encoder at "
        "initialisation (rebuilt from its config.yaml and seed), 'pixels' the raw images at its native size",
    )


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="'embedded', a local dataset dir (parquet or image folder) or a Hub dataset id; "
        "default: data.source of the checkpoint's config.yaml",
    )
    g.add_argument("--train-split", help="split to fit k-NN / linear / few-shot on (default: the config's, else 'train')")
    g.add_argument("--eval-split", help="split to score on (default: 'test' or 'validation')")
    g.add_argument("--image-column", help="image column (default: detected)")
    g.add_argument("--label-column", help="label column (default: detected)")
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean (default: config.yaml, else config.json, else ImageNet)")
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std (with --mean)")
    g.add_argument(
        "--eval-crop", type=float, default=None,
        help="resize to side / EVAL_CROP, then centre-crop the side (default: the run's data.eval_crop, 1.0: no margin; 0.875 as Latent MIM's code)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the --max-* subsets and of the probes (default 0)")
    g.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    g.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: the config's data.num_workers, else 4)")


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    g = p.add_argument_group("protocols")
    g.add_argument("--max-train", type=int, help="random subset of the train split (default: all)")
    g.add_argument("--max-eval", type=int, help="random subset of the eval split (default: all)")
    g.add_argument(
        "--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS, metavar="P",
        help=f"which to run, of {' '.join(PROTOCOLS)} (default: all; 'sim' also gives sim_patches and rank)",
    )
    g.add_argument(
        "--pool", default="mean",
        help=f"pooling for knn, linear, fewshot, sim, rank: {'|'.join(POOL_KINDS)}, optionally ':pre' or ':post' "
        "the final norm (default 'mean' = mean of patch tokens before the norm)",
    )
    g.add_argument("--nn-pool", default="mean:pre", help="pooling of the NN protocol (default 'mean:pre', the Latent MIM paper's)")
    g.add_argument("--topk", type=int, default=10, help="k of topk_mean pooling (default 10)")
    g.add_argument("--knn-k", type=int, default=20, help="neighbours of the weighted k-NN (default 20)")
    g.add_argument("--knn-temperature", type=float, default=0.07, help="temperature of the k-NN vote weights (default 0.07)")
    g.add_argument("--linear-epochs", type=int, default=90, help="linear probe epochs over the train features (default 90)")
    g.add_argument("--linear-batch-size", type=int, default=256, help="linear probe batch (default 256)")
    g.add_argument("--linear-optimizer", choices=("lars", "sgd"), default="lars", help="linear probe optimizer (default lars)")
    g.add_argument(
        "--linear-lr", type=float, nargs="+", default=None, metavar="LR",
        help="base lr(s), scaled by batch/256; several are trained at once and the best on a held-out "
        "tenth of the train rows is reported (default: 0.1 0.3 1 3 10 for lars, 0.001 .. 0.1 for sgd)",
    )
    g.add_argument("--fewshot-shots", type=int, default=16, help="images per class (default 16)")
    g.add_argument("--fewshot-iterations", type=int, default=2500, help="SGD iterations (default 2500)")
    g.add_argument("--fewshot-seeds", type=int, nargs="+", default=[0, 1, 2], help="one draw per seed (default 0 1 2)")


def parse_pooling(text: str, k: int, flag: str) -> Pooling:
    try:
        return Pooling.parse(text, k=k)
    except ValueError as e:
        fail(f"{flag}: {e}")


def suite_config(args: argparse.Namespace, num_workers: int) -> SuiteConfig:
    positive = {
        "--batch-size": args.batch_size, "--knn-k": args.knn_k, "--linear-epochs": args.linear_epochs,
        "--linear-batch-size": args.linear_batch_size, "--fewshot-shots": args.fewshot_shots,
        "--fewshot-iterations": args.fewshot_iterations, "--topk": args.topk,
    }
    positive.update({flag: value for flag, value in (("--max-train", args.max_train), ("--max-eval", args.max_eval)) if value is not None})
    for flag, value in positive.items():
        if value < 1:
            fail(f"{flag}: {value} must be >= 1")
    if args.knn_temperature <= 0:
        fail(f"--knn-temperature: {args.knn_temperature} must be positive")
    default_lrs = (0.1, 0.3, 1.0, 3.0, 10.0) if args.linear_optimizer == "lars" else (0.001, 0.003, 0.01, 0.03, 0.1)
    lrs = tuple(args.linear_lr) if args.linear_lr else default_lrs
    if any(lr <= 0 for lr in lrs):
        fail(f"--linear-lr: {list(lrs)} must be positive")
    return SuiteConfig(
        pooling=parse_pooling(args.pool, args.topk, "--pool"),
        nn_pooling=parse_pooling(args.nn_pool, args.topk, "--nn-pool"),
        protocols=tuple(dict.fromkeys(args.protocols)),
        batch_size=args.batch_size,
        num_workers=num_workers,
        knn_k=args.knn_k,
        knn_temperature=args.knn_temperature,
        linear=LinearProbeConfig(
            epochs=args.linear_epochs, batch_size=args.linear_batch_size, optimizer=args.linear_optimizer, base_lrs=lrs, seed=args.seed
        ),
        fewshot=FewShotConfig(shots=args.fewshot_shots, iterations=args.fewshot_iterations, seeds=tuple(args.fewshot_seeds)),
    )


def check_model_arguments(args: argparse.Namespace) -> None:
    if args.checkpoint is None and args.model is None:
        fail("--checkpoint: required (or --model NAME to evaluate random weights)")
    if getattr(args, "baseline", None) and args.checkpoint is None:
        fail(f"--baseline {args.baseline}: give --checkpoint, the run whose baseline to score")
    if args.checkpoint is not None and not args.checkpoint.startswith(HUB_PREFIXES):
        if local_path(args.checkpoint) is None:
            fail(f"--checkpoint: {args.checkpoint} does not exist (a Hub id needs the 'hf-hub:' prefix)")


def to_jsonable(value: Any) -> Any:
    """Floats that JSON can hold (NaN/inf become None), tuples as lists, keys as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


_ROWS = (("nn", "NN top-1 %"), ("knn", "k-NN top-1 %"), ("linear", "linear top-1 %"), ("fewshot", "few-shot top-1 %"),
         ("sim", "Sim (images)"), ("sim_patches", "Sim (patches)"), ("rank", "effective rank"))


def short_table(result: dict) -> str:
    """The headline numbers of an evaluation, one per line (what ``evaluate --out`` prints)."""
    lines = []
    for key, label in _ROWS:
        v = result.get(key)
        if not isinstance(v, (int, float)):
            continue
        std = result.get(f"{key}_std") if key == "fewshot" else None
        text = f"{v:.3f}" if key.startswith("sim") else f"{v:.1f}"
        lines.append(f"  {label:<18}{text}" + (f" ± {std:.1f}" if isinstance(std, (int, float)) else ""))
    probe = result.get("meta", {}).get("linear") or {}
    grid, picked = probe.get("base_lrs") or [], probe.get("picked_base_lr")
    if len(grid) > 1 and picked in (min(grid), max(grid)):
        lines.append(f"  note: the linear probe's lr was picked at the edge of its grid (base lr {picked:g} of "
                     f"{', '.join(f'{g:g}' for g in grid)}); --linear-lr can widen it")
    return "\n".join(lines)


def write_json(data: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")


def fail(message: str, code: int = 2) -> NoReturn:
    """Exit as argparse does on a bad argument: ``error: MESSAGE`` on stderr, status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def progress_printer(enabled: bool = True) -> Callable[[str], None]:
    """Progress lines on stderr (only from the main process, when ``enabled``)."""

    def show(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return show


def evaluate_checkpoint(
    checkpoint: str | None,
    args: argparse.Namespace,
    accelerator: Accelerator | None = None,
    show: Callable[[str], None] = progress_printer(),
) -> dict:
    """Load ``checkpoint`` (or ``args.model``), its data, and run the suite the arguments describe."""
    baseline = getattr(args, "baseline", None)
    run = load_baseline(checkpoint, baseline) if baseline else load_run(checkpoint, args.model)
    if args.eval_crop is not None and not 0 < args.eval_crop <= 1:
        raise ConfigError(f"--eval-crop: {args.eval_crop} must be in (0, 1]")
    dcfg = data_config(run, args.data, args.train_split, args.eval_split, args.image_column, args.label_column, args.mean, args.std, args.eval_crop)
    mean, std, norm_from = normalization(run, args.mean, args.std)
    workers = args.num_workers if args.num_workers is not None else dcfg.num_workers
    cfg = suite_config(args, workers)
    size = native_size(run.vit)
    show(f"{run.source}: {run.label} ({size} px) on {dcfg.source}")
    data = load_eval_data(dcfg, size, args.max_train, args.max_eval, args.seed, need_train=cfg.needs_train)
    if accelerator is not None:
        run.vit.to(accelerator.device)
    if baseline == "pixels":
        def pixels(dataset: Dataset, poolings: list[Pooling], _: bool) -> Features:
            return pixel_features(dataset, poolings, cfg.batch_size, cfg.num_workers)

        result = score_suite(pixels, data.eval, data.train, cfg, progress=show)
    else:
        result = run_suite(run.vit, data.eval, data.train, cfg, accelerator, progress=show)
    result["meta"].update(
        checkpoint=run.source,
        run=run.describe(),
        data={
            "source": dcfg.source,
            "train_split": data.train_split,
            "eval_split": data.eval_split,
            "image_column": data.splits.image_column,
            "label_column": data.splits.label_column,
            "split_sizes": {k: len(v) for k, v in data.splits.data.items()},
            "max_train": args.max_train,
            "max_eval": args.max_eval,
            "seed": args.seed,
            "eval_crop": dcfg.eval_crop,
        },
        normalization={"mean": mean, "std": std, "from": norm_from},
        versions={"torch": torch.__version__, "timm": timm.__version__, "mimkit": _mimkit_version()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return result


def _mimkit_version() -> str:
    from .. import __version__

    return __version__


USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, KeyError)
