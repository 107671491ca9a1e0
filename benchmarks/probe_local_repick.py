"""Do the fine hypercolumn levels place a match better than the whole hypercolumn does?

    python benchmarks/probe_local_repick.py --dataset outputs/val/synthseasons-train-5 \\
        --weights synthseasons-slim-dmcgn-v3 [--every 6] [--points 500] [--radii 1 2 3]

A third of the dense argmax matches of the bundled weights miss the true point by 4–16 px
(benchmarks/RESULTS.md, "Where the misses are"). The coarse levels (stride 8 and 16) are
smooth at that scale, so one guess is that they pull the peak off the place the finest
level (relu3_2, stride 4) would pick; the other, that the finest level is the noisy one.
This keeps the argmax over the whole hypercolumn
map as the place, then picks again among the cells within ±r of it by a score that
weighs the levels differently (each level's cosine share, times its weight), and reports
the share of matches within 4 px of the true point, per condition, as
``bench_features.py`` does. Every variant scores the same points, so the rows compare
one to one; the first row is the plain argmax.
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict

import torch

from locseg.models.hypercolumn import STRIDE, grid_centers
from locseg.models.load import load_hypercolumns
from locseg.train.pairs import CorrespondencePairs

LEVEL_WEIGHTS = {                       # per level: relu3_2, pool3, relu4_2, pool4, relu5_2
    "relu3_2 alone": (1, 0, 0, 0, 0),
    "stride 4 and 8 alone": (1, 1, 1, 0, 0),
    "finer levels weigh more": (2, 1, 1, 0.5, 0.5),
    "relu3_2 x 1.5": (1.5, 1, 1, 1, 1),
    "relu3_2 x 0.5": (0.5, 1, 1, 1, 1),
    "stride 16 alone": (0, 0, 0, 1, 1),
}
THRESHOLD = 4.0


def level_similarities(model, descriptors: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """(L, N, h w) each level's share of the cosine between (N, C) descriptors and a (C, h, w) map."""
    channels = [model.backbone.channels_entering(i) for i in model.layers]
    bounds = list(itertools.accumulate([0, *channels]))
    flat = dense.flatten(1)
    return torch.stack([descriptors[:, a:b] @ flat[a:b] for a, b in itertools.pairwise(bounds)])


def repick(score: torch.Tensor, cells: torch.Tensor, width: int, radius: int) -> torch.Tensor:
    """(N,) the best cell of (N, h, w) ``score`` within ±``radius`` cells of each of the (N,) ``cells``."""
    height = score.shape[1]
    row, col = cells // width, cells % width
    near_rows = (torch.arange(height)[None, :] - row[:, None]).abs() <= radius      # (N, h)
    near_cols = (torch.arange(width)[None, :] - col[:, None]).abs() <= radius       # (N, w)
    window = near_rows[:, :, None] & near_cols[:, None, :]
    return score.masked_fill(~window, -torch.inf).flatten(1).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--every", type=int, default=6, help="score every n-th pair")
    parser.add_argument("--points", type=int, default=500, help="true correspondences per pair")
    parser.add_argument("--radii", type=int, nargs="+", default=[1, 2, 3], help="window half-widths, in cells")
    args = parser.parse_args()
    pairs = CorrespondencePairs(f"{args.dataset}/correspondences", f"{args.dataset}/images", 512)
    model = load_hypercolumns("vgg16-slim", args.weights).eval()
    if len(model.layers) != len(next(iter(LEVEL_WEIGHTS.values()))):
        parser.error(f"the weights table is for 5 levels; the model has {len(model.layers)}")
    generator = torch.Generator().manual_seed(0)
    hits, totals = defaultdict(int), defaultdict(int)
    with torch.inference_mode():
        for index in range(0, len(pairs), args.every):
            sample = pairs[index]
            keep = torch.randperm(len(sample.points_a), generator=generator)[:args.points]
            dense_a, dense_b = model.dense(sample.image_a[None]), model.dense(sample.image_b[None])
            size_a = (sample.image_a.shape[-1], sample.image_a.shape[-2])
            descriptors = model.sample(dense_a, sample.points_a[keep][None], size_a)[0]
            height, width = dense_b.shape[-2:]
            levels = level_similarities(model, descriptors, dense_b[0])
            cells = levels.sum(0).argmax(1)
            centres = grid_centers(height, width, STRIDE, dtype=descriptors.dtype).reshape(-1, 2)
            truth = sample.points_b[keep]
            picks = {"whole hypercolumn (plain argmax)": cells}
            for name, weights in LEVEL_WEIGHTS.items():
                score = (levels * levels.new_tensor(weights)[:, None, None]).sum(0).reshape(-1, height, width)
                for radius in args.radii:
                    picks[f"{name}, ±{radius}"] = repick(score, cells, width, radius)
            for variant, chosen in picks.items():
                correct = int(((centres[chosen] - truth).norm(dim=1) <= THRESHOLD).sum())
                for group in ("all", sample.condition):
                    hits[variant, group] += correct
                    totals[variant, group] += len(truth)
    conditions = sorted({group for _, group in totals if group != "all"})
    print("| re-pick by | all | " + " | ".join(conditions) + " |")
    print("|---" + "|---:" * (len(conditions) + 1) + "|")
    for variant in dict.fromkeys(v for v, _ in totals):
        cells = [f"{100 * hits[variant, g] / totals[variant, g]:.1f}" for g in ("all", *conditions)]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
