"""The localizer end to end on the small SynthSeasons street (known poses)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from locseg_cli.main import cli

from locseg.errors import InputError
from locseg.evaluate.pose import evaluate_poses
from locseg.geometry import Camera
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.localize.pipeline import LocalizeConfig, localize
from locseg.localize.reference import ReferenceMap


@pytest.fixture(scope="module")
def run(small_street, tmp_path_factory):
    """One localization of every query of the small street."""
    out = tmp_path_factory.mktemp("localize")
    reference = ReferenceMap.read(small_street / "reference" / "model", small_street / "images")
    queries = read_query_list(small_street / "queries" / "all.txt")
    summary = localize(reference, queries, small_street / "images", out / "results.txt", out / "features.h5")
    return small_street, reference, queries, out, summary


def test_every_query_gets_a_pose_and_a_log_line(run):
    street, _, queries, out, summary = run
    results = read_poses(out / "results.txt")
    assert list(results) == [n for n, _ in queries]
    records = [json.loads(line) for line in (out / "results.log.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == list(results)
    for r in records:
        assert {"features", "retrieval", "matching", "pnp", "total"} <= set(r["timing"])
        assert len(r["retrieved"]) == len(r["matches"]) == len(r["inliers"]) == LocalizeConfig().top_k
        if r["success"]:
            assert r["refinement"]["reason"] and len(r["refinement"]["covariance"]) == 6
    assert summary.localized == len(queries) and summary.reused == 0
    assert summary.reference_features_computed == 24


def test_day_queries_are_localized(run):
    street, _, _, out, _ = run
    evaluation = evaluate_poses(read_poses(out / "results.txt"), read_poses(street / "ground_truth" / "queries.txt"))
    recall = json.loads(evaluation.to_json())["recall"]
    day = [recall[c][-1] for c in ("sun", "rain", "dusk")]   # (5 m, 10 deg), in %
    assert min(day) >= 66.0, recall


def test_a_rerun_reuses_the_log_and_the_store(run):
    street, reference, queries, out, _ = run
    before = (out / "results.txt").read_bytes()
    again = localize(reference, queries, street / "images", out / "results.txt", out / "features.h5")
    assert again.reused == len(queries) and again.localized == 0 and again.reference_features_computed == 0
    assert (out / "results.txt").read_bytes() == before


def test_a_query_cut_short_in_the_log_is_localized_again(run, tmp_path):
    street, reference, queries, out, _ = run
    shutil.copy(out / "features.h5", tmp_path / "features.h5")
    lines = (out / "results.log.jsonl").read_text().splitlines()
    (tmp_path / "results.log.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    summary = localize(reference, queries, street / "images", tmp_path / "results.txt", tmp_path / "features.h5")
    assert summary.localized == 1 and summary.reused == len(queries) - 1
    assert read_poses(tmp_path / "results.txt").keys() == read_poses(out / "results.txt").keys()


def test_a_camera_of_another_size_is_refused(run, tmp_path):
    street, reference, queries, _, _ = run
    name, camera = queries[0]
    wrong = Camera.from_params(camera.model, 320, 240, camera.params.tolist())
    with pytest.raises(InputError, match="image is 256x192"):
        localize(reference, [(name, wrong)], street / "images", tmp_path / "r.txt", tmp_path / "f.h5")


def test_cli_localize_prints_the_recall_table(run, tmp_path):
    street = run[0]
    result = CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                                      "--top-k", "2", "--no-refine"])
    assert result.exit_code == 0, result.output
    assert "localized 21 queries" in result.output and "night-rain" in result.output
