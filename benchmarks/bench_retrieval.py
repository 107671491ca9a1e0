"""Retrieval recall@1/5/10 of NetVLAD heads on SynthSeasons streets, side by side.

    python benchmarks/bench_retrieval.py --streets outputs/val/synthseasons-train-5 outputs/synthseasons-test-0 \\
        --heads synthseasons-slim-vlad-v3 outputs/vlad/levels-3k.safetensors \\
        [--weights synthseasons-slim-dmcgn-v6] [--max-side 512] [--hypercolumn-norm levels]

Every head ranks every street's queries against its references, as ``locseg
evaluate-features`` scores them (``locseg.evaluate.retrieval``: PCA whitening fitted
on the references, a reference within 5 m and 30° is correct). A hypercolumn head pools
maps normalised as it was trained (its metadata), unless ``--hypercolumn-norm`` forces
another normalisation for every head. Prints one Markdown
row per street and head: recall@1 / @5 / @10 overall and per condition. Streets used
to choose a head must be ones no head was trained on.
"""

from __future__ import annotations

import argparse

import torch

from locseg.evaluate.retrieval import retrieval_recall
from locseg.localize.pipeline import LocalizeConfig
from locseg.models.hypercolumn import NORMALIZATIONS
from locseg.models.netvlad import SINGLE_SCALE
from locseg.train.retrieval import load_retrieval_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streets", nargs="+", required=True)
    parser.add_argument("--heads", nargs="+", required=True)
    parser.add_argument("--weights", default=LocalizeConfig.weights,
                        help="the hypercolumn weights that hypercolumn heads pool (default: the localizer's)")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--hypercolumn-norm", choices=NORMALIZATIONS, default=None)
    parser.add_argument("--scales", type=float, nargs="+", default=list(SINGLE_SCALE),
                        help="describe every image at these multiples of --max-side and pool them (default: 1)")
    parser.add_argument("--reference-neighbours", type=int, default=0,
                        help="database-side augmentation of the references, as the localizer's option (0: none)")
    args = parser.parse_args()
    models = {head: load_retrieval_model(head, args.weights, normalization=args.hypercolumn_norm).eval()
              for head in args.heads}
    print_recall_rows(models, args.streets, args.max_side, tuple(args.scales), args.reference_neighbours)


def print_recall_rows(models: dict[str, torch.nn.Module], streets: list[str], max_side: int,
                      scales: tuple[float, ...] = SINGLE_SCALE, reference_neighbours: int = 0) -> None:
    """One Markdown row per street and model: recall@1 / @5 / @10 overall and per condition."""
    header = None
    for street in streets:
        for name, model in models.items():
            recall = retrieval_recall(model, street, max_side=max_side, scales=scales,
                                      reference_neighbours=reference_neighbours)
            if header is None:
                header = list(recall)
                print("| street | head | " + " | ".join(header) + " |")
                print("|---" * (len(header) + 2) + "|")
            cells = " | ".join(" / ".join(f"{recall[c][k]:.1f}" for k in (1, 5, 10)) for c in header)
            print(f"| {street} | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
