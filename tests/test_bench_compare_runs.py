"""benchmarks/compare_runs.py: runs aligned by the CPU time their checkpoints record."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", BENCHMARKS / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_hours_interpolates_the_recorded_saves(compare_runs):
    hours, estimated = compare_runs.cpu_hours({"cpu_seconds": [[100, 360.0], [200, 1080.0]]})
    assert not estimated
    assert hours(0) == 0 and hours(100) == pytest.approx(0.1) and hours(150) == pytest.approx(0.2)
    assert compare_runs.cpu_hours({"history": []}) is None


def test_uncounted_steps_cost_the_mean_rate_since(compare_runs):
    """Counting began at step 1000; 100 counted steps took 360 s, so the first 1000 are costed at 3600 s."""
    hours, estimated = compare_runs.cpu_hours({"cpu_counted_from": 1000, "cpu_seconds": [[1100, 360.0]]})
    assert estimated
    assert hours(1000) == pytest.approx(1.0) and hours(1100) == pytest.approx(1.1)
    assert hours(500) == pytest.approx(0.5) and hours(0) == 0


def test_equal_cpu_takes_the_last_check_within_each_budget(compare_runs):
    checks = {150: 10.0, 300: 12.0, 450: 15.0}
    def hours(step: int) -> float:  # a clock of 12 s a step
        return step / 300

    reached = compare_runs.precision_at_cpu(checks, hours, [0.25, 0.5, 1.0, 1.5])
    assert reached == {0.5: (10.0, 150), 1.0: (12.0, 300), 1.5: (15.0, 450)}


def test_windowed_means_skip_steps_without_the_term(compare_runs):
    """A term some steps never computed (e.g. one only a later run adds) averages over the
    steps that have it, and a window without it is left out rather than shown as nan."""
    history = [{"step": 1, "dmc": 1.0}, {"step": 2, "dmc": 3.0, "dense": 4.0},
               {"step": 3, "dmc": 5.0}, {"step": 4, "dmc": 7.0}]
    assert compare_runs.windowed_means(history, "dmc", 2) == {2: 2.0, 4: 6.0}
    assert compare_runs.windowed_means(history, "dense", 2) == {2: 4.0}
