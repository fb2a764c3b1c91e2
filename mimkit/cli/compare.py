"""Compare encoders side by side: evaluate checkpoints (or read metrics JSONs written by
mimkit evaluate) and write a markdown table, a CSV and a bar chart.

    mimkit compare outputs/mae outputs/latent_mim outputs/pilamim --out reports/cmp
    mimkit compare outputs/*/metrics.json --out reports/cmp        # no evaluation

Each input is a metrics JSON file (used as is) or anything --checkpoint of mimkit evaluate takes
(evaluated with the options below, its JSON kept in OUT/metrics/). Runs are labelled by the
preset and objectives of their config.yaml and ordered pixel (MAE), latent (Latent MIM),
pixel+latent (PiLaMIM), so the pixel and latent variants stand side by side.
Outputs: OUT/compare.md, OUT/compare.csv, OUT/compare.png, and for training runs OUT/curves.png
(their log.jsonl curves overlaid on the same axes).

Keep decoder depth and width in mind when comparing heads: decoder depth alone moves MAE's
linear probe by over ten points.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path



def build_parser() -> argparse.ArgumentParser:
    from ..eval.cli import add_suite_arguments

    p = argparse.ArgumentParser(prog="mimkit compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="CKPT_OR_METRICS_JSON", help="checkpoints and/or metrics JSON files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", help="timm architecture for checkpoints that do not record theirs")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    add_suite_arguments(p)
    return p


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "run"


def _read_metrics(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable metrics JSON ({e})") from e
    if not isinstance(data, dict) or not any(k in data for k in ("nn", "knn", "linear", "fewshot", "sim")):
        raise ValueError(f"{path}: no nn/knn/linear/fewshot/sim entries; is it a metrics JSON of mimkit evaluate?")
    return data


def finetune_top1(run_dir: Path) -> float | None:
    """The top-1 of the newest ``RUN/finetune-*/finetune.json`` (``mimkit finetune --checkpoint RUN``)."""
    found = sorted(run_dir.glob("finetune-*/finetune.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()).get("top1") if found else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate import Accelerator

    from ..eval.cli import USER_ERRORS, evaluate_checkpoint, fail, progress_printer, suite_config, write_json
    from ..eval.runs import HUB_PREFIXES, local_path
    from ..eval.report import arrange, csv_text, markdown_table, row_from_metrics

    out = Path(args.out)
    for item in args.inputs:
        if not item.startswith(HUB_PREFIXES) and local_path(item) is None:
            fail(f"input {item} does not exist (a Hub id needs the 'hf-hub:' prefix)")
    suite_config(args, num_workers=0)  # rejects bad protocol options before anything is loaded
    accelerator = None
    rows = []
    try:
        for item in args.inputs:
            path = Path(item)
            if path.is_file() and path.suffix == ".json":
                rows.append(row_from_metrics(_read_metrics(path), path.stem))
                continue
            accelerator = accelerator or Accelerator(cpu=args.cpu)
            metrics = evaluate_checkpoint(item, args, accelerator, show=progress_printer(accelerator.is_main_process))
            metrics.setdefault("finetune", finetune_top1(path))
            row = row_from_metrics(metrics, _slug(item))
            if accelerator.is_main_process:
                write_json(metrics, out / "metrics" / f"{len(rows):02d}_{_slug(metrics['meta']['run']['name'])}.json")
            rows.append(row)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    rows = arrange(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown_table(rows))
    (out / "compare.csv").write_text(csv_text(rows))
    from ..viz import VizError
    from ..viz.bars import bar_chart

    written = [out / "compare.md", out / "compare.csv"]
    logs = {Path(i).resolve().name: Path(i) / "log.jsonl" for i in args.inputs if (Path(i) / "log.jsonl").is_file()}
    try:
        written.append(bar_chart(rows, out / "compare.png"))
        if logs:  # training runs: their curves overlaid
            from ..viz.curves import draw_curves, read_log

            written.append(draw_curves({name: read_log(path) for name, path in logs.items()}, out / "curves.png"))
    except VizError as e:  # matplotlib missing: the table and the CSV stand on their own
        print(f"note: no pictures: {e}", file=sys.stderr)
    print(markdown_table(rows))
    print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
