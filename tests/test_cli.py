"""The ``locseg`` command line on a generated street, and the packaging behind it."""

from __future__ import annotations

import json
from pathlib import Path

import tomllib
import torch
from click.testing import CliRunner
from locseg_cli.main import cli

import locseg
from locseg.io.poses import read_poses, write_poses

ROOT = Path(__file__).resolve().parents[1]


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_synth_reports_an_existing_street_without_redoing_it(small_street):
    out = run("synth", small_street, "--size", "small")
    assert out.exit_code == 0, out.output
    assert "24 reference images, 21 queries in 7 conditions" in out.output


def test_evaluate_ground_truth_against_itself_is_perfect(small_street):
    truth = small_street / "ground_truth" / "queries.txt"
    out = run("evaluate", "--results", truth, "--ground-truth", truth, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    conditions = json.loads((small_street / "synth.json").read_text())["conditions"]
    assert set(summary["recall"]) == {"all", *conditions}
    assert all(r == [100.0, 100.0, 100.0] for r in summary["recall"].values())
    assert summary["missing"] == 0


def test_evaluate_counts_a_missing_query(small_street, tmp_path):
    truth = small_street / "ground_truth" / "queries.txt"
    poses = read_poses(truth)
    dropped = min(n for n in poses if n.startswith("snow/"))
    results = write_poses(tmp_path / "results.txt", {n: p for n, p in poses.items() if n != dropped})
    summary = json.loads(run("evaluate", "--results", results, "--ground-truth", truth, "--json").stdout)
    assert summary["missing"] == 1
    assert summary["recall"]["snow"] == [100 * 2 / 3] * 3
    assert summary["recall"]["night"] == [100.0] * 3


def test_bad_option_values_are_one_line_errors(tmp_path):
    out = run("synth", tmp_path / "x", "--size", "huge")
    assert out.exit_code == 2 and "huge" in out.output
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "note.txt").write_text("mine")
    out = run("synth", tmp_path / "y", "--size", "small")
    assert out.exit_code == 2 and out.stderr.count("\n") == 1 and "not a SynthSeasons street" in out.stderr


def test_every_subpackage_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "locseg").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert config["package-dir"]["locseg_cli"] == "cli"
    assert locseg.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]



def test_weights_lists_the_bundled_ones_and_describes_one():
    from locseg.localize.pipeline import DEFAULT_RETRIEVAL_WEIGHTS, DEFAULT_WEIGHTS
    from locseg.models.weights import bundled_names, bundled_weights

    entries = json.loads(run("weights", "--json").output)
    listed = [entry["name"] for entry in entries]
    assert sorted(listed) == bundled_names() and all(entry["present"] for entry in entries)
    assert listed.index("synthseasons-slim-dmcgn-v9") < listed.index("synthseasons-slim-dmcgn-v10")
    defaults = {entry["name"]: entry["default_for"] for entry in entries if entry["default_for"]}
    assert set(defaults) == {DEFAULT_WEIGHTS, DEFAULT_RETRIEVAL_WEIGHTS}
    head = json.loads(run("weights", DEFAULT_RETRIEVAL_WEIGHTS, "--json").output)
    assert head["bundled"] == DEFAULT_RETRIEVAL_WEIGHTS and head["sha256"] == bundled_weights(head["bundled"]).sha256
    assert head["init"] == DEFAULT_WEIGHTS   # the hypercolumns it pools, found by their digest
    lines = run("weights", DEFAULT_RETRIEVAL_WEIGHTS).output.splitlines()
    assert any("pools" in line and DEFAULT_WEIGHTS in line for line in lines)
    assert {e["name"]: e["match_ratio"] for e in entries}["synthseasons-slim-dmcgn-v11"] == 1.0
    assert any("ratio test" in line and "1 " in line for line in run("weights", "synthseasons-slim-dmcgn-v11").output
               .splitlines())
    assert "ratio test" not in run("weights", DEFAULT_WEIGHTS).output


def test_bundle_weights_prints_the_digest_to_register_and_refuses_paths_outside(tmp_path):
    from locseg.models.weights import (
        file_sha256,
        read_safetensors_metadata,
        save_safetensors,
    )

    folder = tmp_path / "repo" / "train-0"
    folder.mkdir(parents=True)
    source = save_safetensors({"w": torch.ones(2)}, tmp_path / "run.safetensors",
                              metadata={"sources": json.dumps({"streets": [str(folder)]})})
    out = run("bundle-weights", source, tmp_path / "b.safetensors", "--relative-to", tmp_path / "repo")
    assert out.exit_code == 0, out.output
    assert f"sha256 {file_sha256(tmp_path / 'b.safetensors')}" in out.output
    assert json.loads(read_safetensors_metadata(tmp_path / "b.safetensors")["sources"]) == {"streets": ["train-0"]}
    (tmp_path / "other").mkdir()
    out = run("bundle-weights", source, tmp_path / "c.safetensors", "--relative-to", tmp_path / "other")
    assert out.exit_code == 2 and "outside" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.safetensors").exists()


def test_weights_of_an_unknown_name_fail_listing_the_valid_ones():
    out = run("weights", "no-such-weights")
    assert out.exit_code == 2 and out.stderr.count("\n") == 1
    assert "no-such-weights" in out.stderr and "synthseasons-slim-vlad-v5" in out.stderr
