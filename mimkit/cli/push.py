"""Export an encoder with its run's preprocessing: to a local directory and/or a Hub model repo.

    mimkit push outputs/default --to exported/default         # a folder: timm.create_model("local-dir:exported/default", pretrained=True)
    mimkit push outputs/default --repo-id me/mimkit-micro     # a Hub model repo (a token: `hf auth login` or HF_TOKEN)
    mimkit push hf-hub:timm/vit_base_patch16_224.mae --to vit_mae  # any source mimkit loads, converted to timm's layout

The weights and config.json are written by timm's own writer. A training run's config.yaml (found
beside or above the source) gives the normalisation, input size and crop its evaluation used, so
that timm's `resolve_data_config` on the loaded model preprocesses images the same way.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimkit push", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a training output dir, an exported encoder dir, a checkpoint file or an 'hf-hub:' id "
                   "(add '#target' for a target encoder)")
    p.add_argument("--model", help="timm architecture, for a checkpoint that does not record its own")
    p.add_argument("--to", help="write the encoder (model.safetensors + config.json) into this directory")
    p.add_argument("--repo-id", help="upload it to this Hub model repo (created when missing)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--message", default="Add mimkit encoder", help="the Hub commit message")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.to or args.repo_id):
        print("error: say where to: --to DIR and/or --repo-id USER/NAME", file=sys.stderr)
        return 2
    from ..data import export_data_config
    from ..eval.cli import USER_ERRORS
    from ..eval.runs import load_run
    from ..hub import push_to_hub, save_pretrained

    try:
        run = load_run(args.checkpoint, args.model)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data_config = export_data_config(run.config.data) if run.config is not None else None
    if run.config is None:
        print(f"note: {args.checkpoint} has no run config.yaml; the export keeps the source's own preprocessing",
              file=sys.stderr)
    if args.to:
        out = save_pretrained(run.vit, args.to, data_config=data_config)
        print(f"wrote {out}/: load with timm.create_model(\"local-dir:{out}\", pretrained=True) or mimkit.load_encoder(\"{out}\")")
    if args.repo_id:
        info = push_to_hub(run.vit, args.repo_id, private=args.private, commit_message=args.message, data_config=data_config)
        print(f"pushed to {getattr(info, 'commit_url', args.repo_id)}: timm.create_model(\"hf-hub:{args.repo_id}\", pretrained=True)")
    return 0
