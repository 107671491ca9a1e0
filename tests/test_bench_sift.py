"""The SIFT baseline of benchmarks/bench_localize.py on the small street: map, then day queries."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from locseg.io.colmap import read_model
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.models.preprocess import load_image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _sift_baseline():
    """benchmarks/sift_baseline.py (benchmarks/ is not a package)."""
    if "sift_baseline" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sift_baseline", BENCHMARKS / "sift_baseline.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sift_baseline"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["sift_baseline"]


def test_mnn_ratio_keeps_only_mutual_unambiguous_matches():
    sift = _sift_baseline()
    e = np.eye(8, dtype=np.float32)
    a = np.stack([e[0], e[1], e[3] + 0.3 * e[7], e[3]])
    b = np.stack([e[0], e[1] + 0.1 * e[5], e[1] + 0.1 * e[6], e[3]])
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    # a0-b0: exact; a1: b1 and b2 equally near (ratio fails); a2 -> b3, but b3's nearest is a3
    assert sift.match_mnn_ratio(a, b, ratio=0.8).tolist() == [[0, 0], [3, 3]]


def test_sift_map_localizes_day_queries(small_street, tmp_path):
    sift = _sift_baseline()
    root = Path(small_street)
    reference = sift.build_sift_reference(read_model(root / "reference" / "model"), root / "images", tmp_path)
    assert reference.summary["points3D"] > 100
    (record,) = tmp_path.glob("sift-*/model/sift_map.json")
    built = record.stat().st_mtime_ns
    again = sift.build_sift_reference(read_model(root / "reference" / "model"), root / "images", tmp_path)
    assert again.summary == reference.summary and record.stat().st_mtime_ns == built  # read back, not rebuilt

    truth = read_poses(root / "ground_truth" / "queries.txt")
    names = list(reference.poses)
    centers = torch.stack([reference.poses[n].center for n in names])
    localizer = sift.SiftLocalizer(reference)
    day = [(n, c) for n, c in read_query_list(root / "queries" / "all.txt") if n.startswith("sun/")][:2]
    assert len(day) == 2
    for name, camera in day:
        nearest = torch.cdist(truth[name].center[None], centers)[0].argsort()[:3].tolist()
        result = localizer.localize(load_image(root / "images" / name), camera, [names[i] for i in nearest])
        meters, _ = result.pose.error(truth[name])
        assert result.success and float(meters) < 5.0, (name, result.inliers, float(meters))
