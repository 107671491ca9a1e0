"""How active a hinge correspondence loss would be: percentiles of the cosine between the
segmentation features of corresponding pixels, per condition.

Draws random reference-to-condition pairs of the given streets, keeps the
correspondences whose reference pixel is not predicted as a non-stationary class (as
training does), and prints, for the penultimate features (HingeF) and the final logits
(HingeC), the 10/25/50/75/90th percentiles of the cosine and the share below the margin.

    python benchmarks/seg_hinge_cosines.py --weights outputs/seg/finetune-labels.best.safetensors \\
        --dataset outputs/train/synthseasons-train-0 --dataset outputs/train/synthseasons-train-1 \\
        --dataset outputs/train/synthseasons-train-2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from locseg.models.hypercolumn import sample_feature_map
from locseg.models.segmentation import load_segmentation_model
from locseg.train.seg_losses import HINGE_MARGIN, stationary
from locseg.train.segmentation import CachedPairs, ResizedImages, SegConfig, orient

PERCENTILES = (10, 25, 50, 75, 90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", type=Path, action="append", required=True)
    parser.add_argument("--pairs", type=int, default=80)
    parser.add_argument("--margin", type=float, default=HINGE_MARGIN)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_segmentation_model(args.weights).eval()
    config = SegConfig()
    pairs = CachedPairs([d / "correspondences" for d in args.dataset], [d / "images" for d in args.dataset],
                        ResizedImages(config.max_side))
    cosines: dict[str, dict[str, list[torch.Tensor]]] = {"features": {}, "logits": {}}
    for index in np.random.default_rng(args.seed).choice(len(pairs), min(args.pairs, len(pairs)), replace=False):
        sample = orient(pairs[int(index)], config.reference_condition)
        condition = sample.condition
        with torch.no_grad():
            reference, target = model(sample.image_a[None]), model(sample.image_b[None])
            keep = stationary(sample_feature_map(reference.logits, sample.points_a[None], reference.stride)[0])
            for name, per_condition in cosines.items():
                a = sample_feature_map(getattr(reference, name), sample.points_a[None], reference.stride)[0][keep]
                b = sample_feature_map(getattr(target, name), sample.points_b[None], target.stride)[0][keep]
                cosine = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1)
                per_condition.setdefault(condition, []).append(cosine)
    for name, per_condition in cosines.items():
        print(f"{name}: percentiles {'/'.join(map(str, PERCENTILES))}, share below {args.margin}")
        rows = {c: torch.cat(v).numpy() for c, v in sorted(per_condition.items())}
        rows["all"] = np.concatenate(list(rows.values()))
        for condition, values in rows.items():
            print(f"  {condition:11s} n={len(values):7d} {np.percentile(values, PERCENTILES).round(3)} "
                  f"{100 * (values < args.margin).mean():.1f} %")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
