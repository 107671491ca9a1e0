"""Pose recall: perfect results, missing queries, known errors in the right bins."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
from rich.console import Console

from locseg.errors import InputError
from locseg.evaluate.pose import DEFAULT_THRESHOLDS, evaluate_poses, query_condition
from locseg.geometry import Pose


def pose_from_rt(R: np.ndarray, t: np.ndarray) -> Pose:
    x, y, z, w = pycolmap.Rotation3d(R).quat
    return Pose.from_qt(np.array([w, x, y, z]), t)


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    return pycolmap.Rotation3d(axis * np.deg2rad(degrees)).matrix()


def perturbed(R, center, shift_m, angle_deg, rng) -> Pose:
    """A pose whose centre is ``shift_m`` away and rotation ``angle_deg`` off."""
    direction = rng.normal(size=3)
    center = center + shift_m * direction / np.linalg.norm(direction)
    R = rotation(rng.normal(size=3), angle_deg) @ R
    return pose_from_rt(R, -R @ center)


# name: (position error m, rotation error deg, bins it should land in)
CASES = {
    "day/cam0/a.png": (0.1, 1.0, (1, 1, 1)),
    "day/cam0/b.png": (0.3, 3.0, (0, 1, 1)),
    "night/cam1/c.png": (2.0, 7.0, (0, 0, 1)),
    "night/cam1/d.png": (10.0, 1.0, (0, 0, 0)),
    "night/cam1/e.png": (0.2, 12.0, (0, 0, 0)),
}


@pytest.fixture
def scene():
    rng = np.random.default_rng(3)
    ground_truth, results = {}, {}
    for name, (dt, dr, _) in CASES.items():
        R, center = rotation(rng.normal(size=3), rng.uniform(0, 180)), rng.normal(scale=20, size=3)
        ground_truth[name] = pose_from_rt(R, -R @ center)
        results[name] = perturbed(R, center, dt, dr, rng)
    return results, ground_truth


def test_query_condition():
    assert query_condition("night/cam0/000012.png") == "night"
    assert query_condition("IMG_0001.jpg") is None


def test_ground_truth_as_results_is_perfect(scene):
    _, ground_truth = scene
    evaluation = evaluate_poses(ground_truth, ground_truth)
    assert evaluation.recall == {"all": [100.0] * 3, "day": [100.0] * 3, "night": [100.0] * 3}
    assert evaluation.missing == 0 and evaluation.unexpected == 0
    for dt, dr in evaluation.median_error.values():
        assert dt < 1e-6 and dr < 1e-3


def test_known_errors_land_in_the_right_bins(scene):
    results, ground_truth = scene
    evaluation = evaluate_poses(results, ground_truth)
    bins = np.array([CASES[n][2] for n in ground_truth], dtype=float)
    day = np.array([n.startswith("day") for n in ground_truth])
    np.testing.assert_allclose(evaluation.recall["all"], 100 * bins.mean(0))
    np.testing.assert_allclose(evaluation.recall["day"], 100 * bins[day].mean(0))
    np.testing.assert_allclose(evaluation.recall["night"], 100 * bins[~day].mean(0))
    np.testing.assert_allclose(evaluation.median_error["all"], (0.3, 3.0), rtol=1e-6)
    np.testing.assert_allclose(evaluation.median_error["night"], (2.0, 7.0), rtol=1e-6)
    assert evaluation.num_queries == {"all": 5, "day": 2, "night": 3}


def test_missing_query_is_a_failure(scene):
    _, ground_truth = scene
    results = dict(ground_truth)
    del results["night/cam1/c.png"]
    results["other/x.png"] = ground_truth["day/cam0/a.png"]
    evaluation = evaluate_poses(results, ground_truth)
    assert evaluation.missing == 1
    assert evaluation.unexpected == 1
    assert evaluation.recall["all"] == [80.0] * 3
    assert evaluation.recall["day"] == [100.0] * 3
    np.testing.assert_allclose(evaluation.recall["night"], [200 / 3] * 3)
    assert "other" not in evaluation.recall


def test_json_summary(scene):
    results, ground_truth = scene
    del results["night/cam1/c.png"]
    del results["night/cam1/d.png"]
    summary = json.loads(evaluate_poses(results, ground_truth).to_json())
    assert list(summary) == ["thresholds", "recall", "median_error", "missing"]
    assert summary["thresholds"] == [[0.25, 2], [0.5, 5], [5, 10]]
    assert list(summary["recall"]) == ["all", "day", "night"]
    assert summary["missing"] == 2
    assert summary["median_error"]["night"] == [None, None]  # two of three failed


def test_custom_thresholds_and_validation(scene):
    results, ground_truth = scene
    evaluation = evaluate_poses(results, ground_truth, thresholds=[(1.0, 5.0)])
    assert evaluation.thresholds == ((1, 5),)
    assert evaluation.recall["all"] == [40.0]
    with pytest.raises(InputError, match="positive"):
        evaluate_poses(results, ground_truth, thresholds=[(0.0, 5.0)])
    with pytest.raises(InputError, match="no poses"):
        evaluate_poses(results, {})
    with pytest.raises(InputError, match="reserved"):
        evaluate_poses({}, {"all/x.png": ground_truth["day/cam0/a.png"]})
    assert DEFAULT_THRESHOLDS == ((0.25, 2), (0.5, 5), (5, 10))


def test_table_renders(scene):
    results, ground_truth = scene
    console = Console(record=True, width=120)
    console.print(evaluate_poses(results, ground_truth).to_table())
    text = console.export_text()
    assert "night" in text and "0.25m,2°" in text and "0 missing" in text
