"""mIoU per condition of segmentation weights on a SynthSeasons test street.

    python benchmarks/bench_segmentation.py --dataset outputs/synthseasons-test-0 \\
        --weights labels-only=outputs/seg/finetune-labels.best.safetensors \\
        --weights ce=outputs/seg/finetune-ce.best.safetensors --json benchmarks/segmentation.json

Each weights file segments every image of the street (sliding windows, the default
layout), predictions go to --work/<label>/, and a Markdown table of mIoU per condition
is printed, one row per weights. The street must be one the weights were not trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from locseg.evaluate.segmentation import evaluate_segmentation
from locseg.models.seg_inference import segment_images
from locseg.synth.traversal import recorded_traversals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("outputs/synthseasons-test-0"))
    parser.add_argument("--weights", action="append", required=True, help="LABEL=PATH; repeat")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_segmentation"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    added = recorded_traversals(args.dataset)
    if added:
        parser.error(f"{args.dataset} carries added traversals ({', '.join(added)}), which every model would be "
                     "scored on too; judge models on a street without them")

    rows = {}
    for item in args.weights:
        label, _, weights = item.partition("=")
        out = segment_images(weights, args.dataset / "images", args.work / label)
        evaluation = evaluate_segmentation(out / "labels", args.dataset / "labels")
        rows[label] = evaluation.to_dict()
    groups = list(next(iter(rows.values()))["miou"])
    print("| weights | " + " | ".join(groups) + " |")
    print("|---" * (len(groups) + 1) + "|")
    for label, result in rows.items():
        print(f"| {label} | " + " | ".join(f"{result['miou'][g]:.1f}" for g in groups) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
