"""Fine-tune a pretrained encoder end to end with a new classification head (MAE's recipe).

    mimkit finetune --checkpoint outputs/default --data embedded            # the micro preset, CPU-sized
    mimkit finetune --preset micro64 --checkpoint outputs/latent_mim+micro64 --data .data/imagenette
    mimkit finetune --preset base --checkpoint hf-hub:timm/vit_base_patch16_224.mae --data imagenet-1k
    mimkit finetune --output outputs/default/finetune-micro --resume       # continue after a kill

Presets (configs/finetune/): base (ViT-B, layer decay 0.65, 100 epochs, batch 1024), micro (32-px
data, a CPU run), micro64 (64-px data). Any key is a dotted override (optim.epochs=5, aug.mixup=0).
Writes OUTPUT/finetune.json (top-1, top-5 on the evaluation split), log.jsonl, checkpoints/ and
classifier/ (the fine-tuned model; timm.create_model("local-dir:OUTPUT/classifier", pretrained=True)).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_PRESET = "micro"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimkit finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"fine-tuning preset or YAML path (default {DEFAULT_PRESET}; with --resume, the saved config's)")
    p.add_argument("--checkpoint", help="the encoder: a run dir, an exported encoder, a checkpoint file or an hf-hub: id")
    p.add_argument("--data", help="'embedded', a local directory (parquet / image folder) or a Hub id")
    p.add_argument("--output", help="output directory (default RUN/finetune-<preset> for a training run, else outputs/finetune-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output, with its saved "
                   "finetune.yaml; overrides may change only operational keys (workers, logging, checkpoint cadence, trackers)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    from ..config import ConfigError
    from ..data import DataError
    from ..finetune.config import load_finetune_config, resumed_finetune_config
    from ..finetune.trainer import finetune, make_accelerator

    overrides = list(args.overrides)
    for flag, key in ((args.checkpoint, "checkpoint"), (args.data, "data.source"), (args.output, "train.output_dir")):
        if flag:
            overrides.append(f"{key}={flag}")
    try:
        cfg = None
        if args.resume:  # the saved finetune.yaml decides, as a pretraining run's config.yaml does
            if not (args.output or args.checkpoint):
                raise ConfigError("--resume: give --output (the fine-tuning directory to continue) or --checkpoint")
            where = Path(args.output or load_finetune_config(args.preset or DEFAULT_PRESET, overrides).train.output_dir)
            cfg = resumed_finetune_config(where, args.preset, overrides)
        cfg = cfg or load_finetune_config(args.preset or DEFAULT_PRESET, overrides)
        out = Path(cfg.train.output_dir)
        accelerator = make_accelerator(cfg, out)
        result = finetune(cfg, accelerator, out, resume=args.resume)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {str(e).strip().splitlines()[-1] if isinstance(e, DataError) else e}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        scores = ", ".join(f"{k} {result[k]:.2f}" for k in ("top1", "top5") if k in result)
        print(f"fine-tuned {cfg.checkpoint} for {result['steps']} steps ({result['epochs']} epochs): {scores or 'no eval split'}; "
              f"{out}/finetune.json, {out}/classifier/")
    return 0
