"""Retrieval recall of several NetVLAD heads pooled together, beside each head alone.

    python benchmarks/probe_head_ensemble.py --streets outputs/val/synthseasons-train-5 outputs/synthseasons-test-0 \\
        --weights synthseasons-slim-dmcgn-v4 --heads H1.safetensors H2.safetensors H3.safetensors

Heads trained with different seeds on the same frozen hypercolumns rank the hardest
queries differently. This probe asks whether their descriptors, concatenated (each a
unit vector, the whole scaled back to unit length), rank better than any one of them:
the hypercolumns are computed once per image and every head pools them, then the
concatenation is scored as ``locseg evaluate-features`` scores a head
(``locseg.evaluate.retrieval``: PCA whitening fitted on the references, a reference
within 5 m and 30° is correct). Prints one Markdown row per street: each head, then
all of them together. Not a locseg feature: a probe for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

from locseg.train.retrieval import RetrievalModel, load_retrieval_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retrieval import print_recall_rows


class ConcatenatedHeads(nn.Module):
    """Several heads over one hypercolumn map: (B, 3, H, W) → (B, K·D) unit descriptors."""

    def __init__(self, models: list[RetrievalModel]):
        super().__init__()
        first = models[0]
        if any(m.source != "hypercolumns" or m.normalization != first.normalization for m in models):
            raise SystemExit("every head must pool hypercolumns normalised alike")
        self.maps, self.heads = first, nn.ModuleList(m.netvlad for m in models)

    def forward(self, images: torch.Tensor, whiten: bool = False) -> torch.Tensor:
        """``whiten`` is not used: ``retrieval_recall`` whitens the concatenation as a whole."""
        local = self.maps.local_features(images)
        return torch.cat([head(local) for head in self.heads], dim=1) / math.sqrt(len(self.heads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streets", nargs="+", required=True)
    parser.add_argument("--heads", nargs="+", required=True, help="hypercolumn heads trained on --weights")
    parser.add_argument("--weights", required=True, help="the hypercolumn weights the heads pool")
    parser.add_argument("--max-side", type=int, default=512)
    args = parser.parse_args()
    models = {head: load_retrieval_model(head, args.weights).eval() for head in args.heads}
    candidates = dict(models) | {"all together": ConcatenatedHeads(list(models.values())).eval()}
    print_recall_rows(candidates, args.streets, args.max_side)


if __name__ == "__main__":
    main()
