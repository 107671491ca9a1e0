"""Matching precision when each query image is resized to the reference camera's focal length.

    python benchmarks/probe_focal_match.py --dataset outputs/synthseasons-test-0 --weights synthseasons-slim-dmcgn-v3

Every query traversal of a SynthSeasons street has its own camera, and its focal length
differs from the reference's by up to half, so the same facade appears at another scale
in the two images. Here the reference image is resized as usual (longer side 512) and
the query image so that its focal length, at the network input, equals the reference's
there (``locseg.models.preprocess.focal_matched_side``). Matches found in the rescaled
query are mapped back to the usual 512-px query frame, and the error is measured there,
so the figures compare one to one with ``bench_features.py`` (true match within 4 px of
the best cell's centre, per condition). Four rows, from the same points: the usual
size; the focal length always matched; matched only where it differs by more than
``FOCAL_TOLERANCE`` (the rule of ``locseg localize --match-focal`` at commit 298445c,
so some conditions repeat the first row); and the other way round, the query at the
usual size and the reference image resized to the query's focal length (enlarged, for
queries that zoom in), so the query keeps its full-resolution grid. benchmarks/RESULTS.md
explains why the localizer does not shrink its queries.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from locseg.evaluate.matching import match_dense
from locseg.geometry import Camera
from locseg.io.queries import read_query_list
from locseg.localize.reference import ReferenceMap
from locseg.models.load import load_hypercolumns
from locseg.models.preprocess import (
    FOCAL_TOLERANCE,
    focal_matched_side,
    input_focal,
    prepare_image,
)
from locseg.train.pairs import CorrespondencePairs


def street_cameras(street: Path) -> dict[str, Camera]:
    """The camera of every reference and query image of a SynthSeasons street."""
    reference = ReferenceMap.read(street / "reference" / "model", street / "images")
    return reference.cameras | dict(read_query_list(street / "queries" / "all.txt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=4.0)
    parser.add_argument("--every", type=int, default=1, help="score every n-th pair only")
    args = parser.parse_args()
    pairs = CorrespondencePairs(args.dataset / "correspondences", args.dataset / "images")
    cameras = street_cameras(args.dataset)
    model = load_hypercolumns("vgg16-slim", args.weights).eval()
    generator = torch.Generator().manual_seed(0)
    rows = {"usual": "longer side 512", "focal": "reference's focal length",
            "tolerant": f"reference's focal length beyond {FOCAL_TOLERANCE:.0%}",
            "reference": "reference resized to the query's focal length"}
    correct = {key: defaultdict(int) for key in rows}
    total, ratios = defaultdict(int), defaultdict(list)
    for index in range(0, len(pairs), args.every):
        sample = pairs[index]
        keep = torch.randperm(len(sample.points_a), generator=generator)[: args.points]
        points_a, points_b = sample.points_a[keep], sample.points_b[keep]
        camera_b = cameras[sample.name_b]
        target = input_focal(cameras[sample.name_a])
        side = focal_matched_side(camera_b, target, tolerance=0.0)
        scaled, _ = prepare_image(args.dataset / "images" / sample.name_b, max_side=side, upsample=True)
        to_usual = torch.tensor([sample.image_b.shape[-1] / scaled.shape[-1],
                                 sample.image_b.shape[-2] / scaled.shape[-2]])
        found = {"usual": match_dense(model, sample.image_a, sample.image_b, points_a),
                 "focal": match_dense(model, sample.image_a, scaled, points_a) * to_usual}
        matched = focal_matched_side(camera_b, target) != max(sample.image_b.shape[-2:])
        found["tolerant"] = found["focal" if matched else "usual"]
        side_a = focal_matched_side(cameras[sample.name_a], input_focal(camera_b), tolerance=0.0)
        scaled_a, _ = prepare_image(args.dataset / "images" / sample.name_a, max_side=side_a, upsample=True)
        to_scaled_a = torch.tensor([scaled_a.shape[-1] / sample.image_a.shape[-1],
                                    scaled_a.shape[-2] / sample.image_a.shape[-2]])
        found["reference"] = match_dense(model, scaled_a, sample.image_b, points_a * to_scaled_a)
        ratio = target / input_focal(camera_b)
        condition = sample.condition
        for key, where in found.items():
            hits = int(((where - points_b).norm(dim=1) <= args.threshold).sum())
            correct[key][condition] += hits
            correct[key]["all"] += hits
        total[condition] += len(keep)
        total["all"] += len(keep)
        ratios[condition].append(ratio)
    conditions = ["all"] + sorted(c for c in total if c != "all")
    print("| query size | " + " | ".join(conditions) + " |")
    print("|---" * (len(conditions) + 1) + "|")
    print("| focal ratio, reference / query | – | " + " | ".join(
        f"{sum(ratios[c]) / len(ratios[c]):.2f}" for c in conditions[1:]) + " |")
    for key, label in rows.items():
        print(f"| {label} | " + " | ".join(f"{100 * correct[key][c] / total[c]:.1f}" for c in conditions) + " |")


if __name__ == "__main__":
    main()
