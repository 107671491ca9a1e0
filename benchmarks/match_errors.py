"""Where dense argmax matches land: the share of true correspondences matched within
several pixel distances, per condition, for feature weights on a SynthSeasons street.

    python benchmarks/match_errors.py --dataset outputs/val/synthseasons-train-5 \\
        --weights synthseasons-slim-dmcgn-v3 [--every 3] [--points 500] [--layers 14,17,21]

``bench_features.py`` gives the 4 px figure of every pair; this one shows how far the
misses are (near misses point at localisation, far ones at confusion) on every
``--every``-th pair, and can leave hypercolumn levels out (``--layers``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from locseg.evaluate.matching import match_errors
from locseg.models.hypercolumn import DEFAULT_LAYERS
from locseg.train.finetune import FinetuneConfig, build_model
from locseg.train.pairs import CorrespondencePairs

RADII = (4, 6, 8, 16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--layers", default=",".join(map(str, DEFAULT_LAYERS)))
    args = parser.parse_args()
    layers = tuple(int(x) for x in args.layers.split(","))
    pairs = CorrespondencePairs(f"{args.dataset}/correspondences", f"{args.dataset}/images", args.max_side)
    model = build_model(FinetuneConfig(init=args.weights, layers=layers)).eval()
    radii = torch.tensor(RADII, dtype=torch.float32)
    within, total = defaultdict(lambda: torch.zeros(len(RADII))), defaultdict(int)
    for condition, error in match_errors(model, pairs, args.points, indices=range(0, len(pairs), args.every)):
        for group in ("all", condition):
            total[group] += len(error)
            within[group] += (error[:, None] <= radii).sum(0)
    print("| condition | " + " | ".join(f"≤ {r} px" for r in RADII) + " |")
    print("|---" * (len(RADII) + 1) + "|")
    for group in ["all"] + sorted(g for g in total if g != "all"):
        print(f"| {group} | " + " | ".join(f"{100 * v / total[group]:.1f}" for v in within[group].tolist()) + " |")


if __name__ == "__main__":
    main()
