"""Feature-metric refinement on a SynthSeasons test street: the seed's ablation.

Every query goes through retrieval, matching and RANSAC-PnP once; its best hypothesis
is then refined with each gradient operator x robust loss, and with no refinement.
Prints (and with --json writes) per configuration the mean and median rotation and
translation errors over the localized queries, the recall at the three thresholds
over all queries, per-condition (0.25 m, 2 deg) recall, and the median refinement time.

    python benchmarks/bench_refine.py --dataset outputs/synthseasons-test-0 \\
        --store outputs/localize/synthseasons-test-0/features.h5 --json benchmarks/refine_ablation.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_localize import first_per_condition

from locseg.evaluate.pose import evaluate_poses
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.localize.feature_gradients import GRADIENT_OPERATORS
from locseg.localize.pipeline import (
    LocalizeConfig,
    Localizer,
    Models,
    extract_reference_features,
    refine_hypothesis,
)
from locseg.localize.reference import ReferenceMap
from locseg.localize.refine import RefineConfig
from locseg.localize.robust import ROBUST_LOSSES
from locseg.models.preprocess import load_image
from locseg.store import FeatureStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("outputs/synthseasons-test-0"))
    parser.add_argument("--store", type=Path, default=Path("outputs/localize/synthseasons-test-0/features.h5"))
    parser.add_argument("--limit", type=int, default=0, help="only the first N queries of each condition")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    config = LocalizeConfig()
    reference = ReferenceMap.read(args.dataset / "reference" / "model", args.dataset / "images")
    queries = first_per_condition(read_query_list(args.dataset / "queries" / "all.txt"), args.limit)
    truth = read_poses(args.dataset / "ground_truth" / "queries.txt")
    configs = {"none": None} | {f"{op}/{loss}": RefineConfig(loss=loss, gradient_operator=op)
                                for op, loss in itertools.product(sorted(GRADIENT_OPERATORS), sorted(ROBUST_LOSSES))}
    poses: dict[str, dict] = {key: {} for key in configs}
    seconds: dict[str, list[float]] = {key: [] for key in configs}
    search_seconds = []
    models = Models.load(config)
    with FeatureStore(args.store, mode="a") as store:
        extract_reference_features(reference, models, store, config)
        store.flush()
        localizer = Localizer(reference, models, store, config)
        for done, (name, camera) in enumerate(queries):
            search = localizer.search(load_image(args.dataset / "images" / name), camera)
            search_seconds.append(sum(search.timing.values()))
            for key, refine in configs.items():
                if search.best is None:
                    poses[key][name] = reference.poses[search.retrieved[0]]
                elif refine is None:
                    poses[key][name] = search.best.pose
                else:
                    clock = time.perf_counter()
                    poses[key][name], _ = refine_hypothesis(search, refine)
                    seconds[key].append(time.perf_counter() - clock)
            print(f"{done + 1}/{len(queries)} {name}", flush=True)

    rows = {}
    for key in configs:
        evaluation = json.loads(evaluate_poses(poses[key], {n: truth[n] for n, _ in queries}).to_json())
        errors = np.array([[float(v) for v in poses[key][n].error(truth[n])] for n, _ in queries])
        rows[key] = {
            "recall": evaluation["recall"]["all"],
            "recall_fine": {c: r[0] for c, r in evaluation["recall"].items()},
            "mean_m": float(errors[:, 0].mean()), "median_m": float(np.median(errors[:, 0])),
            "mean_deg": float(errors[:, 1].mean()), "median_deg": float(np.median(errors[:, 1])),
            "refine_s": float(np.median(seconds[key])) if seconds[key] else 0.0,
        }
    rows["search_s_median"] = float(np.median(search_seconds))
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
