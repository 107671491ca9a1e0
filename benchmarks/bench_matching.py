"""Sparse-to-dense matching settings inside the whole localizer, on one SynthSeasons street.

Each setting localizes every query of the street (retrieval, matching, RANSAC-PnP,
feature-metric refinement) with ``LocalizeConfig()`` except for what the setting
changes, one setting after the other in one process. Steps from the S2DHM-style
settings locseg had before to its defaults:

- ``dense``: every reference descriptor against every cell, the modified ratio test,
  matches at cell centres, PnP at 12 px with up to 10000 RANSAC samples;
- ``coarse-to-fine``: the coarse-to-fine matcher, otherwise as ``dense``;
- ``+ sub-cell``: matches moved to their sub-cell similarity peak;
- ``+ PnP 6 px, 1000 samples``: the PnP defaults;
- ``+ refit ...``: the winning pose refitted over the matches of every retrieved
  reference, and refinement over at most ``refine_points`` of its inliers;
- ``+ 10 references, refit at 0.95``: 10 best-retrieved references and the refit over the
  matches at ratio 0.95 (every step before matches 5, and refits, if at all, over RANSAC's own);
- ``+ references augmented ...``: the retrieval ranking's database-side augmentation:
  locseg's defaults.

Prints (and with --json writes) recall per condition at the three thresholds, the median
milliseconds per query of matching, PnP and in total, and the median number of kept
matches and of inliers of the winning reference.

    python benchmarks/bench_matching.py --dataset outputs/synthseasons-test-0 \\
        --store outputs/bench_localize/features.h5 --json benchmarks/matching_ablation.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bench_localize import first_per_condition, open_store

from locseg.evaluate.pose import DEFAULT_THRESHOLDS, evaluate_poses
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.localize.matching import MatchingConfig
from locseg.localize.pipeline import (
    LocalizeConfig,
    Localizer,
    Models,
    extract_reference_features,
)
from locseg.localize.reference import ReferenceMap
from locseg.models.preprocess import load_image


def settings() -> dict[str, LocalizeConfig]:
    default = LocalizeConfig()
    # five references and the refit over RANSAC's own matches, as before both became the defaults
    five = replace(default, top_k=5, matching=MatchingConfig(), reference_neighbours=0)
    # the settings before the refit: refinement over every inlier of the winner
    before_refit = replace(five, pnp=replace(five.pnp, refit=False), refine_points=0)
    before_pnp = replace(before_refit.pnp, max_error=12.0, max_iterations=10000)
    return {
        "dense": replace(before_refit, matching=MatchingConfig(method="dense", subcell=False), pnp=before_pnp),
        "coarse-to-fine": replace(before_refit, matching=MatchingConfig(subcell=False), pnp=before_pnp),
        "+ sub-cell": replace(before_refit, pnp=before_pnp),
        f"+ PnP {default.pnp.max_error:g} px, {default.pnp.max_iterations} samples": before_refit,
        f"+ refit over all references, refinement on {default.refine_points} points": five,
        f"+ {default.top_k} references, refit at {default.matching.refit_ratio:g}": replace(default,
                                                                                         reference_neighbours=0),
        f"+ references augmented with {default.reference_neighbours} neighbours": default,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("outputs/synthseasons-test-0"))
    parser.add_argument("--store", type=Path, default=Path("outputs/bench_localize/features.h5"))
    parser.add_argument("--limit", type=int, default=0, help="only the first N queries of each condition")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    reference = ReferenceMap.read(args.dataset / "reference" / "model", args.dataset / "images")
    queries = first_per_condition(read_query_list(args.dataset / "queries" / "all.txt"), args.limit)
    truth = read_poses(args.dataset / "ground_truth" / "queries.txt")
    truth = {name: truth[name] for name, _ in queries}
    images = {name: load_image(args.dataset / "images" / name) for name, _ in queries}
    report = {"queries": len(queries), "thresholds": [list(t) for t in DEFAULT_THRESHOLDS], "settings": {}}
    with open_store(args.store) as store:
        for label, config in settings().items():
            models = Models.load(config)
            if store.mode == "a":
                extract_reference_features(reference, models, store, config)
                store.flush()
            localizer = Localizer(reference, models, store, config)
            name, camera = queries[0]
            localizer.localize(name, images[name], camera)           # warm-up, not counted
            poses, timing, matches, inliers = {}, [], [], []
            for name, camera in queries:
                result = localizer.localize(name, images[name], camera)
                poses[name] = result.pose
                timing.append(result.timing)
                matches.append(sum(result.matches))
                inliers.append(max(result.inliers, default=0))
            evaluation = evaluate_poses(poses, truth)
            report["settings"][label] = {
                "config": config.to_dict(),
                "recall": evaluation.to_dict()["recall"],
                "median_ms": {stage: 1000 * float(np.median([t.get(stage, 0.0) for t in timing]))
                              for stage in ("matching", "pnp", "refine", "total")},
                "median_kept_matches": float(np.median(matches)),
                "median_inliers": float(np.median(inliers)),
            }
            print(f"{label}: {json.dumps(report['settings'][label]['recall']['all'])} "
                  f"{report['settings'][label]['median_ms']}", flush=True)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def markdown(report: dict) -> str:
    names = [f"{t:g} m, {r:g}°" for t, r in report["thresholds"]]
    lines = ["| setting | " + " | ".join(names) + " | matching ms | PnP ms | total ms | kept matches | inliers |",
             "|---|" + "---:|" * (len(names) + 5)]
    for label, row in report["settings"].items():
        recall = " | ".join(f"{v:.1f}" for v in row["recall"]["all"])
        ms = row["median_ms"]
        lines.append(f"| {label} | {recall} | {ms['matching']:.0f} | {ms['pnp']:.0f} | {ms['total']:.0f} | "
                     f"{row['median_kept_matches']:.0f} | {row['median_inliers']:.0f} |")
    conditions = list(next(iter(report["settings"].values()))["recall"])
    lines += ["", "| condition | " + " | ".join(report["settings"]) + " |", "|---|" + "---:|" * len(report["settings"])]
    for condition in conditions:
        cells = [" / ".join(f"{v:.0f}" for v in row["recall"][condition]) for row in report["settings"].values()]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    main()
