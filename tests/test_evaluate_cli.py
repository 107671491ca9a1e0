"""``locseg evaluate`` through click."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from locseg_cli.main import cli

from locseg.geometry import Pose
from locseg.io.poses import write_poses


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"{c}/cam0/{i:03d}.png" for c in ("dusk", "night") for i in range(4)]
    gt = {}
    for name in names:
        q = rng.normal(size=4)
        gt[name] = Pose.from_qt(q / np.linalg.norm(q), rng.normal(size=3))
    results = {n: p for n, p in gt.items() if n != "night/cam0/003.png"}
    results["sun/cam0/000.png"] = gt[names[0]]
    return write_poses(tmp_path / "results.txt", results), write_poses(tmp_path / "gt.txt", gt)


def run(*args):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)])


def test_json_output(files):
    results, gt = files
    out = run("--results", results, "--ground-truth", gt, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["missing"] == 1
    assert summary["recall"]["all"] == [87.5] * 3
    assert summary["recall"]["dusk"] == [100.0] * 3
    assert summary["recall"]["night"] == [75.0] * 3
    assert summary["thresholds"] == [[0.25, 2], [0.5, 5], [5, 10]]
    assert "1 result(s) for names not in the ground truth" in out.stderr


def test_table_output(files):
    results, gt = files
    out = run("--results", results, "--ground-truth", gt)
    assert out.exit_code == 0, out.output
    assert "night" in out.stdout and "75.0" in out.stdout


def test_malformed_file_is_a_one_line_error(files, tmp_path):
    _, gt = files
    bad = tmp_path / "bad.txt"
    bad.write_text("night/cam0/000.png 1 0 0 0 0 0\n")
    out = run("--results", bad, "--ground-truth", gt, "--json")
    assert out.exit_code == 3  # the group turns a FormatError into a one-line message
    assert "bad.txt:1:" in out.stderr
