"""Pretrain with mimkit.

    accelerate launch -m mimkit train --preset latent_mim [--data DIR_OR_HUB_ID] [--output DIR] [--resume [PATH]] [key=value ...]
    mimkit train                        # the embedded default: Latent MIM at micro scale on a CIFAR-10 slice, CPU-sized

Presets: latent_mim, mae, pilamim, naive_latent_mim, capi; stack scale overlays with '+' (latent_mim+micro, mae+micro64).
Any config key can be overridden as dotted key=value (train.batch_size=512 masking.ratio=0.75).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DEFAULT_PRESET = "default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="mimkit train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", help=f"preset name, YAML path, or a+b stack (default: {DEFAULT_PRESET}; with --resume: "
                    "the run's own config.yaml)")
    ap.add_argument("--data", help="dataset: 'embedded', a local directory (parquet / image folder) or a Hub id")
    ap.add_argument("--output", help="output directory (default: train.output_dir of the config)")
    ap.add_argument("--resume", nargs="?", const="latest", help="resume from the latest checkpoint in --output, or from PATH, "
                    "with the run's saved config (overrides may change only operational keys)")
    ap.add_argument("--extend", action="store_true", help="with --resume: allow train.epochs / train.max_steps to change "
                    "(the lr schedule is recomputed over the new length)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return ap.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    from ..checkpoint import CheckpointError
    from ..config import ConfigError, load_config
    from ..data import DataError
    from ..resume import resumed_config, run_dir_of
    from ..summary import end_message
    from ..trainer import CollapseError, fit, make_accelerator

    overrides = list(args.overrides)
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        # `--resume key=value ...`: the optional PATH took an override; resume from the latest
        overrides.insert(0, args.resume)
        args.resume = "latest"
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.output:
        overrides.append(f"train.output_dir={args.output}")
    start = time.perf_counter()
    try:
        cfg = None
        if args.resume:
            run_dir = run_dir_of(args.resume, args.output) or Path(load_config(args.preset or DEFAULT_PRESET).train.output_dir)
            cfg = resumed_config(run_dir, args.preset, overrides, extend=args.extend)
        elif args.extend:
            raise ConfigError("--extend is for --resume: it lets a resumed run change train.epochs / train.max_steps")
        cfg = cfg or load_config(args.preset or DEFAULT_PRESET, overrides)
        accelerator = make_accelerator(cfg, cfg.train.output_dir)
        summary = fit(cfg, accelerator, cfg.train.output_dir, resume=args.resume)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:  # raised in a loader worker: the last line is ours, the rest its traceback
        print(f"error: {str(e).strip().splitlines()[-1].removeprefix('mimkit.data.DataError: ')}", file=sys.stderr)
        return 2
    except (FloatingPointError, CollapseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if accelerator.is_main_process:
        print(end_message(summary, cfg.train.output_dir, time.perf_counter() - start, accelerator.mixed_precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
