"""locseg against the SIFT baseline on a SynthSeasons test street, side by side, one run.

Every query goes through locseg's full ``Localizer.localize`` (default
``LocalizeConfig``: retrieval, sparse-to-dense matching, RANSAC-PnP, feature-metric
refinement), then through the SIFT baseline (``sift_baseline.py``) against the SAME
references that locseg's retrieval returned for it, with the same PnP. The SIFT map is
triangulated from the street's reference images with their known poses (built once
under ``--work`` and reused); locseg matches against the street's reference model as
it is, whose 3D points are the generator's ground truth.

Prints a Markdown table of recall (%) per condition at (0.25 m, 2°), (0.5 m, 5°) and
(5 m, 10°) for both methods, and one of the median seconds per query of each stage.
Retrieval is shared: the global descriptor pools locseg's dense hypercolumns, so a SIFT
user who retrieves this way pays locseg's "features" and "retrieval" stages too. SIFT's
"retrieval" is that sum and its total counts it; the note under the table gives the
SIFT total without it. Timings are per query, without reading the image; one warm-up
query (not counted) runs first.

    python benchmarks/bench_localize.py --json benchmarks/localize_vs_sift.json
    python benchmarks/bench_localize.py --limit 2          # the first 2 queries per condition
    python benchmarks/bench_localize.py --hypercolumn-norm joint --retrieval-weights synthseasons-slim-vlad-v3
    python benchmarks/bench_localize.py --weights synthseasons-slim-dmcgn-v4 --retrieval-weights HEAD.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from locseg.evaluate.pose import DEFAULT_THRESHOLDS, evaluate_poses
from locseg.geometry import Camera
from locseg.io.colmap import read_model
from locseg.io.poses import read_poses
from locseg.io.queries import condition_of, read_query_list
from locseg.localize.matching import RATIO_TESTS, MatchingConfig
from locseg.localize.pipeline import (
    LocalizeConfig,
    Localizer,
    Models,
    extract_reference_features,
    matching_config,
)
from locseg.localize.reference import ReferenceMap
from locseg.models.hypercolumn import NORMALIZATIONS
from locseg.models.preprocess import load_image
from locseg.store import FeatureStore, StoreLockedError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sift_baseline import SiftConfig, SiftLocalizer, build_sift_reference

STAGES = ("features", "retrieval", "matching", "pnp", "refine")
METHODS = ("locseg", "locseg-ransac", "sift")   # locseg-ransac: the same run's poses before refinement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("outputs/synthseasons-test-0"))
    parser.add_argument("--store", type=Path, default=Path("outputs/localize/synthseasons-test-0/features.h5"))
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_localize"),
                        help="where the SIFT map is built and kept")
    parser.add_argument("--limit", type=int, default=0, help="only the first N queries of each condition")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    parser.add_argument("--hypercolumn-norm", choices=NORMALIZATIONS, default=LocalizeConfig.hypercolumn_norm)
    parser.add_argument("--weights", default=LocalizeConfig.weights, help="hypercolumn weights")
    parser.add_argument("--retrieval-weights", default=LocalizeConfig.retrieval_weights,
                        help="a head trained on the hypercolumns of --weights (or of --retrieval-hypercolumns)")
    parser.add_argument("--retrieval-hypercolumns", default=None,
                        help="hypercolumn weights retrieval runs on, if not --weights (one more network pass, which "
                             "the features stage, and so SIFT's shared retrieval time, then includes)")
    parser.add_argument("--retrieval-scales", type=float, nargs="+", default=list(LocalizeConfig.retrieval_scales),
                        help="multiples of the input size pooled into each global descriptor")
    parser.add_argument("--reference-neighbours", type=int, default=LocalizeConfig.reference_neighbours,
                        help="database-side augmentation of the retrieval ranking (0: none)")
    parser.add_argument("--top-k", type=int, default=LocalizeConfig.top_k,
                        help="retrieved references matched per query (SIFT matches against the same ones)")
    parser.add_argument("--hypercolumn-scales", type=float, nargs="+", default=list(LocalizeConfig.hypercolumn_scales),
                        help="multiples of the input size averaged into the maps matched and refined (their "
                             "passes count in locseg's features stage, so in SIFT's shared retrieval time too)")
    parser.add_argument("--ratio", type=float, default=None,
                        help="the matching's ratio test (default: the hypercolumn weights' own, default_ratio)")
    parser.add_argument("--refit-ratio", type=float, default=LocalizeConfig().matching.refit_ratio,
                        help="the looser ratio of the matches the winning pose is refitted over (at or below "
                             "--ratio: RANSAC's matches)")
    parser.add_argument("--ratio-test", choices=RATIO_TESTS, default=MatchingConfig.ratio_test,
                        help="the ratio test's form: on similarities or on distances")
    args = parser.parse_args()

    config = LocalizeConfig(weights=args.weights, hypercolumn_norm=args.hypercolumn_norm, top_k=args.top_k,
                            reference_neighbours=args.reference_neighbours,
                            retrieval_weights=args.retrieval_weights, retrieval_hypercolumns=args.retrieval_hypercolumns,
                            retrieval_scales=tuple(args.retrieval_scales),
                            hypercolumn_scales=tuple(args.hypercolumn_scales),
                            matching=matching_config(args.weights, ratio=args.ratio, ratio_test=args.ratio_test,
                                                     refit_ratio=args.refit_ratio))
    sift_config = SiftConfig(pnp=config.pnp)
    queries = first_per_condition(read_query_list(args.dataset / "queries" / "all.txt"), args.limit)
    truth = read_poses(args.dataset / "ground_truth" / "queries.txt")
    truth = {name: truth[name] for name, _ in queries}

    clock = time.perf_counter()
    sift_reference = build_sift_reference(read_model(args.dataset / "reference" / "model"),
                                          args.dataset / "images", args.work, sift_config, progress=_progress)
    sift_map_seconds = time.perf_counter() - clock
    print(f"SIFT map: {sift_reference.summary} ({sift_map_seconds:.1f} s, built or read)", flush=True)

    runs = run(args.dataset, args.store, queries, config, sift_reference, sift_config)
    report = summarize(runs, truth, config, sift_config, sift_reference.summary, args.limit)
    print(markdown(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def first_per_condition(queries: list[tuple[str, Camera]], limit: int) -> list[tuple[str, Camera]]:
    """The first ``limit`` queries of each condition (all when ``limit`` is 0), in list order."""
    if not limit:
        return queries
    taken: Counter[str] = Counter()
    kept = []
    for name, camera in queries:
        condition = condition_of(name)
        if taken[condition] < limit:
            kept.append((name, camera))
            taken[condition] += 1
    return kept


def _progress(stage: str, done: int, total: int) -> None:
    if done == total or done % 20 == 0:
        print(f"{stage}: {done}/{total}", flush=True)


def open_store(path: Path) -> FeatureStore:
    """The store for writing, or for reading when another process is writing it."""
    try:
        return FeatureStore(path, mode="a")
    except StoreLockedError:
        print(f"{path} is being written by another process: reading it", flush=True)
        return FeatureStore(path, mode="r")


def run(dataset: Path, store_path: Path, queries: list[tuple[str, Camera]], config: LocalizeConfig,
        sift_reference, sift_config: SiftConfig) -> list[dict]:
    """Both methods on every query (after one warm-up query); one record per query."""
    reference = ReferenceMap.read(dataset / "reference" / "model", dataset / "images")
    models = Models.load(config)
    sift = SiftLocalizer(sift_reference, sift_config)
    records = []
    with open_store(store_path) as store:
        if store.mode == "a":
            extract_reference_features(reference, models, store, config, _progress)
            store.flush()
        localizer = Localizer(reference, models, store, config)
        name, camera = queries[0]
        warm = load_image(dataset / "images" / name)
        sift.localize(warm, camera, localizer.localize(name, warm, camera).retrieved)
        for done, (name, camera) in enumerate(queries, start=1):
            image = load_image(dataset / "images" / name)
            ours = localizer.localize(name, image, camera)
            theirs = sift.localize(image, camera, ours.retrieved)
            sift_timing = {"features": theirs.timing["extraction"],
                           "retrieval": ours.timing["features"] + ours.timing["retrieval"],
                           "matching": theirs.timing["matching"], "pnp": theirs.timing["pnp"]}
            sift_timing["total"] = sum(sift_timing.values())
            records.append({
                "name": name, "retrieved": ours.retrieved,
                "locseg": {"pose": ours.pose, "success": ours.success, "reference": ours.reference,
                           "matches": ours.matches, "map_points": ours.map_points, "inliers": ours.inliers,
                           "timing": ours.timing},
                "locseg-ransac": {"pose": ours.pnp_pose if ours.pnp_pose is not None else ours.pose,
                                  "success": ours.success, "reference": ours.reference, "matches": ours.matches,
                                  "inliers": ours.inliers,
                                  "timing": {k: v for k, v in ours.timing.items() if k != "refine"}},
                "sift": {"pose": theirs.pose, "success": theirs.success, "reference": theirs.reference,
                         "matches": theirs.matches, "inliers": theirs.inliers, "timing": sift_timing},
            })
            print(f"{done}/{len(queries)} {name}: locseg {_outcome(ours.success, ours.inliers)}, "
                  f"SIFT {_outcome(theirs.success, theirs.inliers)}", flush=True)
    return records


def _outcome(success: bool, inliers: list[int]) -> str:
    return f"{max(inliers, default=0)} inliers" if success else "failed"


def summarize(records: list[dict], truth: dict, config: LocalizeConfig, sift_config: SiftConfig,
              sift_map: dict, limit: int) -> dict:
    """All the figures: recall per condition, median errors and stage times, per query records."""
    report = {"queries": len(records), "limit_per_condition": limit,
              "thresholds": [list(t) for t in DEFAULT_THRESHOLDS],
              "config": {"locseg": config.to_dict(), "sift": sift_config.to_dict()}, "sift_map": sift_map,
              "methods": {}}
    for method in METHODS:
        poses = {r["name"]: r[method]["pose"] for r in records}
        evaluation = evaluate_poses(poses, truth)
        timings = [r[method]["timing"] for r in records]
        # a stage a query skipped (no refinement after a failed PnP) took 0 s for it
        median = {stage: float(np.median([t.get(stage, 0.0) for t in timings]))
                  for stage in (*STAGES, "total") if any(stage in t for t in timings)}
        if method == "sift":
            median["total without retrieval"] = float(np.median([t["total"] - t["retrieval"] for t in timings]))
        report["methods"][method] = {
            **evaluation.to_dict(), "num_queries": evaluation.num_queries,
            "localized": sum(r[method]["success"] for r in records),
            "median_seconds": median,
        }
    report["per_query"] = [
        {"name": r["name"], "retrieved": r["retrieved"],
         **{m: {k: (v.q.tolist() + v.t.tolist() if k == "pose" else v) for k, v in r[m].items()} | {
             "timing": {k: round(v, 4) for k, v in r[m]["timing"].items()},
             "error": [float(e) for e in r[m]["pose"].error(truth[r["name"]])]} for m in METHODS}}
        for r in records]
    return report


def markdown(report: dict) -> str:
    """The recall table and the timing table."""
    ours, theirs = report["methods"]["locseg"], report["methods"]["sift"]
    names = [f"{t:g} m, {r:g}°" for t, r in report["thresholds"]]
    lines = ["| condition | queries | " + " | ".join(f"locseg {n}" for n in names) + " | "
             + " | ".join(f"SIFT {n}" for n in names) + " |",
             "|---|---:|" + "---:|" * (2 * len(names))]
    for group, count in ours["num_queries"].items():
        cells = [f"{v:.1f}" for v in ours["recall"][group]] + [f"{v:.1f}" for v in theirs["recall"][group]]
        label = f"**{group}**" if group == "all" else group
        lines.append(f"| {label} | {count} | " + " | ".join(cells) + " |")
    min_inliers = report["config"]["locseg"]["pnp"]["min_inliers"]
    counts = f"locseg {ours['localized']}/{report['queries']}, SIFT {theirs['localized']}/{report['queries']}"
    lines += ["", f"Localized (≥ {min_inliers} PnP inliers, else the best retrieved reference's pose): {counts}.", ""]
    lines += ["| method | total | " + " | ".join(STAGES) + " |", "|---|---:|" + "---:|" * len(STAGES)]
    for label, method in (("locseg", ours), ("SIFT", theirs)):
        seconds = method["median_seconds"]
        cells = [f"{1000 * seconds[s]:.0f}" if s in seconds else "–" for s in STAGES]
        lines.append(f"| {label} | {1000 * seconds['total']:.0f} | " + " | ".join(cells) + " |")
    ransac = report["methods"]["locseg-ransac"]
    lines += ["", "| condition | " + " | ".join(f"RANSAC {n}" for n in names) + " | "
              + " | ".join(f"refined {n}" for n in names) + " |", "|---|" + "---:|" * (2 * len(names))]
    for group in ours["num_queries"]:
        cells = [f"{v:.1f}" for v in ransac["recall"][group]] + [f"{v:.1f}" for v in ours["recall"][group]]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    refine_share = np.median([r["locseg"]["timing"].get("refine", 0.0) / r["locseg"]["timing"]["total"]
                              for r in report["per_query"]])
    lines += ["", f"Refinement: median share of the per-query time {100 * refine_share:.1f} %."]
    without = 1000 * theirs["median_seconds"]["total without retrieval"]
    lines += ["", ("Median milliseconds per query; medians of stages need not add up to the median total. "
                   "features: locseg's dense hypercolumns and global descriptor, SIFT's extraction. retrieval: "
                   "for locseg the ranking alone; for SIFT it is shared and counted in full, locseg's features "
                   "+ retrieval of the same query, since the global descriptor pools locseg's hypercolumns. "
                   f"SIFT without retrieval: {without:.0f} ms.")]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
