"""The message a finished pretraining run ends with: what the numbers are, where things are, what next."""

from __future__ import annotations

from typing import Any


def _fmt(v: float | None) -> str:
    return "  —  " if v is None else f"{v:5.1f}"


def _delta(a: float | None, b: float | None) -> str:
    return "  —  " if a is None or b is None else f"{b - a:+5.1f}"


def end_message(summary: dict[str, Any], output_dir: str, seconds: float, precision: str) -> str:
    """A few lines for a person: the trained encoder's NN / k-NN beside its initialisation."""
    m, s = divmod(int(round(seconds)), 60)
    lines = [
        f"mimkit: pretrained {summary['preset']} for {summary['steps']} steps ({summary['epochs']:g} epochs, "
        f"{summary['images_seen']:,} images) in {m}m{s:02d}s ({'fp32' if precision == 'no' else precision + ' autocast'}).",
    ]
    if summary.get("nn") is not None:
        init = summary.get("init") or {}
        lines += [
            "",
            f"Top-1 accuracy (%) of the context encoder's features on {summary['eval_images']:,} evaluation images "
            f"(chance {summary['chance']:.1f}):",
            "                        NN    k-NN",
            f"  at initialisation   {_fmt(init.get('nn'))}  {_fmt(init.get('knn'))}",
            f"  after pretraining   {_fmt(summary['nn'])}  {_fmt(summary.get('knn'))}",
            f"  gain                {_delta(init.get('nn'), summary['nn'])}  {_delta(init.get('knn'), summary.get('knn'))}",
            "NN: each evaluation image takes the label of its nearest other evaluation image (leave-one-out, mean patch "
            "token, cosine), the Latent MIM paper's protocol.",
        ]
        if summary.get("knn") is not None:
            lines.append(f"k-NN: a similarity-weighted vote of the 20 nearest of {summary['knn_train_images']:,} "
                         "training images. Both use frozen features: no label was seen in pretraining.")
    lines += [
        "",
        f"Outputs in {output_dir}/: summary.json (these numbers), log.jsonl (losses, lr, NN), encoder/ (loads in timm), "
        "checkpoints/ (--resume), config.yaml.",
        "Next:",
        f"  mimkit evaluate --checkpoint {output_dir}     # linear probe, few-shot, Sim as well",
        "  mimkit train --preset mae+micro --data DIR   # pixel MIM at the same scale (-> outputs/mae+micro)",
        f"  mimkit train --output {output_dir} --resume --extend train.epochs=N   # train this run longer",
        "  mimkit reproduce --scale micro --time-budget 120   # the papers' comparisons on this CPU",
    ]
    return "\n".join(lines)
