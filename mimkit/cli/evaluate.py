"""Evaluate a frozen encoder with the Latent MIM paper's protocols and write the numbers as JSON.

    mimkit evaluate --checkpoint outputs/latent_mim                  # data from its config.yaml
    mimkit evaluate --checkpoint hf-hub:timm/vit_base_patch16_224.mae --data path/to/imagenette
    accelerate launch -m mimkit evaluate --checkpoint outputs/latent_mim --out outputs/latent_mim/metrics.json
    mimkit evaluate --checkpoint outputs/latent_mim --baseline init     # that run's encoder before training
    mimkit evaluate --checkpoint outputs/latent_mim --baseline pixels   # raw pixels, same images and protocols

Protocols (top-1 in percent unless said otherwise):
  nn       1-nearest-neighbour, leave-one-out within the eval split, on the L2-normalised mean patch
           token before the final norm (the paper's "NN"; --nn-pool changes the features)
  knn      weighted k-NN, train -> eval (k=20, T=0.07)
  linear   linear probe on frozen features: BatchNorm (no affine) + Linear, LARS, warm-up + cosine;
           several learning rates side by side, the best on a held-out tenth of the train rows reported
  fewshot  16 images per class, linear classifier, SGD (lr 0.1, momentum 0.9, batch 128, 2500 its),
           mean and std over 3 draws (fewshot, fewshot_std, fewshot_runs)
  sim      mean pairwise cosine similarity of pooled features across eval images (the paper's "Sim"),
           plus sim_patches (the same among each image's patch tokens) and rank (effective rank)

Images are resized and centre-cropped to the encoder's native size and normalised with the run's
data.mean/std (config.yaml), else the checkpoint's config.json, else ImageNet's (or --mean/--std).
With `accelerate launch` the features are computed on every process and gathered.
"""

from __future__ import annotations

import argparse
import json
import sys



def build_parser() -> argparse.ArgumentParser:
    from ..eval.cli import add_model_arguments, add_suite_arguments

    p = argparse.ArgumentParser(prog="mimkit evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    add_suite_arguments(p)
    p.add_argument("--out", help="write the metrics JSON here (default: print only)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate import Accelerator

    from ..eval.cli import (
        USER_ERRORS, check_model_arguments, evaluate_checkpoint, progress_printer, short_table, suite_config, to_jsonable,
        write_json,
    )

    check_model_arguments(args)
    suite_config(args, num_workers=0)  # rejects bad protocol options before anything is loaded
    accelerator = Accelerator(cpu=args.cpu)
    main_process = accelerator.is_main_process
    try:
        result = evaluate_checkpoint(args.checkpoint, args, accelerator, show=progress_printer(main_process))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if main_process:
        if args.out:  # the file holds everything; the terminal gets the headline numbers
            write_json(result, args.out)
            print(short_table(result))
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            print(json.dumps(to_jsonable(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
