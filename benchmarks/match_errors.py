"""Where dense argmax matches land: the share of true correspondences matched within
several pixel distances, per condition, for feature weights on a SynthSeasons street.

    python benchmarks/match_errors.py --dataset outputs/val/synthseasons-train-5 \\
        --weights synthseasons-slim-dmcgn-v3 [--every 3] [--points 500] [--layers 14,17,21] [--by-class] \\
        [--hypercolumn-norm joint]

``bench_features.py`` gives the 4 px figure of every pair; this one shows how far the
misses are (near misses point at localisation, far ones at confusion) on every
``--every``-th pair, and can leave hypercolumn levels out (``--layers``). With
``--by-class`` the rows are the semantic classes of the reference points instead (read
from the street's ``labels/``), with each class's share of the points, which shows
whether the misses sit on textureless surfaces.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from locseg.evaluate.matching import match_errors
from locseg.evaluate.segmentation import read_label_png
from locseg.models.hypercolumn import (
    DEFAULT_LAYERS,
    DEFAULT_NORMALIZATION,
    NORMALIZATIONS,
)
from locseg.models.load import load_hypercolumns
from locseg.models.segmentation import CLASSES
from locseg.train.pairs import CorrespondencePairs

RADII = (4, 6, 8, 16, 32)


def reference_classes(dataset: str, name: str, points: torch.Tensor, size: tuple[int, int]) -> list[str]:
    """The class name of the label pixel under each (N, 2) point of an image of ``size`` (W, H)."""
    labels = read_label_png(f"{dataset}/labels/{name.rsplit('.', 1)[0]}.png")
    scale = np.array([labels.shape[1] / size[0], labels.shape[0] / size[1]])
    xy = np.floor(points.numpy() * scale).astype(int)
    xy = np.clip(xy, 0, [labels.shape[1] - 1, labels.shape[0] - 1])
    ids = labels[xy[:, 1], xy[:, 0]]
    return [CLASSES[i] if i < len(CLASSES) else "ignored" for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--layers", default=",".join(map(str, DEFAULT_LAYERS)))
    parser.add_argument("--hypercolumn-norm", choices=NORMALIZATIONS, default=DEFAULT_NORMALIZATION)
    parser.add_argument("--by-class", action="store_true", help="rows per class of the reference point")
    args = parser.parse_args()
    layers = tuple(int(x) for x in args.layers.split(","))
    pairs = CorrespondencePairs(f"{args.dataset}/correspondences", f"{args.dataset}/images", args.max_side)
    model = load_hypercolumns("vgg16-slim", args.weights, layers, normalization=args.hypercolumn_norm).eval()
    radii = torch.tensor(RADII, dtype=torch.float32)
    within, total = defaultdict(lambda: torch.zeros(len(RADII))), defaultdict(int)
    for sample, keep, error in match_errors(model, pairs, args.points, indices=range(0, len(pairs), args.every)):
        hits = error[:, None] <= radii
        if args.by_class:
            size = (sample.image_a.shape[-1], sample.image_a.shape[-2])
            groups = np.array(reference_classes(args.dataset, sample.name_a, sample.points_a[keep], size))
        else:
            groups = np.array([sample.condition] * len(error))
        for group in set(groups.tolist()) | {"all"}:
            rows = torch.from_numpy(groups == group) if group != "all" else torch.ones(len(error), dtype=torch.bool)
            total[group] += int(rows.sum())
            within[group] += hits[rows].sum(0)
    first = "class | share %" if args.by_class else "condition"
    print(f"| {first} | " + " | ".join(f"≤ {r} px" for r in RADII) + " |")
    print("|---" * (len(RADII) + 1 + args.by_class) + "|")
    for group in ["all"] + sorted((g for g in total if g != "all"), key=lambda g: -total[g] if args.by_class else g):
        share = f" {100 * total[group] / total['all']:.1f} |" if args.by_class else ""
        print(f"| {group} |{share} " + " | ".join(f"{100 * v / total[group]:.1f}" for v in within[group].tolist())
              + " |")


if __name__ == "__main__":
    main()
