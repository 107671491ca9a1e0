"""Matching precision (and retrieval recall) of feature weights on a SynthSeasons test street.

    python benchmarks/bench_features.py --dataset outputs/synthseasons-test-0 \\
        --weights random --weights outputs/runs/scratch-dmcgn.safetensors \\
        [--retrieval-weights outputs/runs/scratch-netvlad.safetensors] [--max-side 512] \\
        [--hypercolumn-norm levels joint] [--subcell] [--scales 1 --scales 0.8 1 1.25]

Prints a Markdown table: one row per weights, one column per condition (reference
images against each query condition, true match within 4 px at the network input's
resolution), and one per hypercolumn normalisation asked for (``locseg.models.hypercolumn``).
With ``--subcell`` each row is followed by one whose matches sit at the sub-cell peak the
localizer uses, rather than at the best cell's centre. Each ``--scales`` adds rows for maps at
those scales (``Hypercolumns.dense_at_scales``).
``random`` stands for the seeded random initialisation. The street must
be one the weights were not trained on (``locseg synth --split test``).
"""

from __future__ import annotations

import argparse
from itertools import product

from locseg.evaluate.matching import matching_precision
from locseg.evaluate.retrieval import retrieval_recall
from locseg.models.hypercolumn import (
    DEFAULT_NORMALIZATION,
    NORMALIZATIONS,
    SINGLE_SCALE,
)
from locseg.models.load import load_hypercolumns
from locseg.train.pairs import CorrespondencePairs
from locseg.train.retrieval import PlaceImages, RetrievalConfig
from locseg.train.retrieval import build_model as build_retrieval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--weights", action="append", required=True)
    parser.add_argument("--retrieval-weights", action="append", default=[])
    parser.add_argument("--backbone", default="vgg16-slim", help="architecture of every --weights")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--retrieval-max-side", type=int, default=256)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--hypercolumn-norm", nargs="+", choices=NORMALIZATIONS, default=[DEFAULT_NORMALIZATION])
    parser.add_argument("--subcell", action="store_true", help="also score sub-cell peaks")
    parser.add_argument("--scales", type=float, nargs="+", action="append", default=None,
                        help="hypercolumn scales of a multi-scale map, e.g. --scales 1 --scales 0.8 1 1.25 "
                             "(each --scales is one more row; default: the plain map)")
    args = parser.parse_args()
    pairs = CorrespondencePairs(f"{args.dataset}/correspondences", f"{args.dataset}/images", args.max_side)
    header = None
    for weights in args.weights:
        for norm in args.hypercolumn_norm:
            model = load_hypercolumns(args.backbone, None if weights == "random" else weights, normalization=norm)
            for scales, subcell in product(args.scales or [SINGLE_SCALE], (False, True) if args.subcell else (False,)):
                precision = matching_precision(model, pairs, max_points=args.points, subcell=subcell,
                                               scales=scales).percent()
                if header is None:
                    header = list(precision)
                    print("| weights | normalisation | " + " | ".join(header) + " |")
                    print("|---" * (len(header) + 2) + "|")
                name = weights + ("" if tuple(scales) == SINGLE_SCALE else f", scales {' '.join(map(str, scales))}")
                name += ", sub-cell" if subcell else ""
                print(f"| {name} | {norm} | " + " | ".join(f"{precision[c]:.1f}" for c in header) + " |",
                      flush=True)
    for weights in args.retrieval_weights:
        config = RetrievalConfig(init=None if weights == "random" else weights)
        model = build_retrieval(config, PlaceImages.from_streets([args.dataset]))
        recall = retrieval_recall(model, args.dataset, max_side=args.retrieval_max_side)
        print(f"\nretrieval recall@1/5/10 (%), {weights}:")
        for condition, values in recall.items():
            print(f"| {condition} | " + " | ".join(f"{values[k]:.1f}" for k in (1, 5, 10)) + " |")


if __name__ == "__main__":
    main()
