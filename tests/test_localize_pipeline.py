"""The localizer end to end on the small SynthSeasons street (known poses)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from locseg_cli.main import cli

from locseg.errors import InputError
from locseg.evaluate.pose import evaluate_poses
from locseg.geometry import Camera
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.localize.matching import MatchingConfig
from locseg.localize.pipeline import LocalizeConfig, Models, localize
from locseg.localize.reference import ReferenceMap
from locseg.store import FeatureStore

CONFIG = LocalizeConfig()


@pytest.fixture(scope="module")
def run(small_street, tmp_path_factory):
    """One localization of every query of the small street."""
    out = tmp_path_factory.mktemp("localize")
    reference = ReferenceMap.read(small_street / "reference" / "model", small_street / "images")
    queries = read_query_list(small_street / "queries" / "all.txt")
    summary = localize(reference, queries, small_street / "images", out / "results.txt", out / "features.h5",
                       config=CONFIG)
    return small_street, reference, queries, out, summary


def test_every_query_gets_a_pose_and_a_log_line(run):
    _, reference, queries, out, summary = run
    results = read_poses(out / "results.txt")
    assert list(results) == [n for n, _ in queries]
    records = [json.loads(line) for line in (out / "results.log.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == list(results)
    sparse_id = Models.load(CONFIG).sparse_id
    with FeatureStore(out / "features.h5", mode="r") as store:
        sparse = {n: store.get_sparse(sparse_id, n) for n in reference.names}
    for r in records:
        assert {"features", "retrieval", "matching", "pnp", "total"} <= set(r["timing"])
        assert len(r["retrieved"]) == len(r["matches"]) == len(r["inliers"]) == CONFIG.top_k
        assert r["map_points"] == [len(sparse[n].point3D_ids) for n in r["retrieved"]]
        assert all(0 <= m <= n for m, n in zip(r["matches"], r["map_points"]))
        if r["success"]:
            assert r["refinement"]["reason"] and len(r["refinement"]["covariance"]) == 6
    assert summary.localized == len(queries) and summary.reused == 0
    assert summary.reference_features_computed == 24
    kept = [m / n for r in records for m, n in zip(r["matches"], r["map_points"])]
    assert summary.median_kept_fraction == pytest.approx(float(np.median(kept)))
    assert not summary.ratio_test_starved(CONFIG.matching.ratio)   # the default weights suit the default ratio


def test_day_queries_are_localized(run):
    street, _, _, out, _ = run
    evaluation = evaluate_poses(read_poses(out / "results.txt"), read_poses(street / "ground_truth" / "queries.txt"))
    recall = json.loads(evaluation.to_json())["recall"]
    day = [recall[c][-1] for c in ("sun", "rain", "dusk")]   # (5 m, 10 deg), in %
    assert sum(day) >= 3 * 66.0, recall


def test_a_rerun_reuses_the_log_and_the_store(run):
    street, reference, queries, out, summary = run
    before = (out / "results.txt").read_bytes()
    again = localize(reference, queries, street / "images", out / "results.txt", out / "features.h5", config=CONFIG)
    assert again.reused == len(queries) and again.localized == 0 and again.reference_features_computed == 0
    assert (out / "results.txt").read_bytes() == before
    assert again.median_kept_fraction == summary.median_kept_fraction   # read back from the log


def test_a_query_cut_short_in_the_log_is_localized_again(run, tmp_path):
    street, reference, queries, out, _ = run
    shutil.copy(out / "features.h5", tmp_path / "features.h5")
    lines = (out / "results.log.jsonl").read_text().splitlines()
    (tmp_path / "results.log.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    summary = localize(reference, queries, street / "images", tmp_path / "results.txt", tmp_path / "features.h5",
                       config=CONFIG)
    assert summary.localized == 1 and summary.reused == len(queries) - 1
    assert read_poses(tmp_path / "results.txt").keys() == read_poses(out / "results.txt").keys()


def test_an_unreadable_image_or_wrong_camera_fails_that_query_alone(run, tmp_path):
    street, reference, queries, out, _ = run
    images = tmp_path / "images"
    shutil.copytree(street / "images", images)
    (images / queries[0][0]).write_bytes(b"not a png")                       # corrupt
    (images / queries[1][0]).unlink()                                        # missing
    name, camera = queries[2]
    wrong = Camera.from_params(camera.model, 320, 240, camera.params.tolist())
    chosen = [queries[0], queries[1], (name, wrong), queries[3]]
    shutil.copy(out / "features.h5", tmp_path / "features.h5")
    summary = localize(reference, chosen, images, tmp_path / "r.txt", tmp_path / "features.h5", config=CONFIG)
    assert summary.unusable == [queries[0][0], queries[1][0], name] and summary.localized == 1
    assert list(read_poses(tmp_path / "r.txt")) == [queries[3][0]]
    records = [json.loads(line) for line in (tmp_path / "r.log.jsonl").read_text().splitlines()]
    assert [r["success"] for r in records] == [False, False, False, True]
    assert "cannot read" in records[0]["failure"] and "image is 256x192" in records[2]["failure"]


def test_a_run_stopped_midway_resumes_from_the_log_and_store(run, tmp_path):
    street, reference, queries, _, _ = run

    def stop_after_five(stage, done, total):
        if stage == "localize" and done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        localize(reference, queries, street / "images", tmp_path / "r.txt", tmp_path / "f.h5",
                 progress=stop_after_five)
    assert not (tmp_path / "r.txt").exists()
    summary = localize(reference, queries, street / "images", tmp_path / "r.txt", tmp_path / "f.h5")
    assert summary.reused == 5 and summary.localized == len(queries) - 5
    assert summary.reference_features_computed == 0


def test_a_bad_intrinsics_line_is_refused_before_any_work(run, tmp_path):
    street = run[0]
    lines = (street / "queries" / "all.txt").read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-1])                              # one parameter short
    (tmp_path / "q.txt").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["localize", "--reference", str(street / "reference" / "model"),
                                      "--images", str(street / "images"), "--queries", str(tmp_path / "q.txt"),
                                      "--output", str(tmp_path / "r.txt")])
    assert result.exit_code == 3 and "q.txt:4: OPENCV takes 8 parameters" in result.output
    assert not any(tmp_path.glob("features.h5*"))


def test_cli_localize_refuses_a_head_trained_on_other_hypercolumns(run, tmp_path):
    """--hypercolumn-norm reaches the localizer: joint maps and the default (levels) head
    fail in one line, before any feature is computed."""
    street = run[0]
    result = CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                                      "--hypercolumn-norm", "joint"])
    assert result.exit_code == 2 and "normalised 'levels', not 'joint'" in result.output
    assert not (tmp_path / "r.txt").exists() and not any(tmp_path.glob("features.h5*"))


@pytest.mark.parametrize("option", ["retrieval", "hypercolumn"])
@pytest.mark.parametrize("scales, message", [("1,x", "not a comma-separated list of numbers"),
                                             ("1,0", "{} scales must be positive")])
def test_cli_localize_refuses_bad_scales_before_any_work(tmp_path, scales, message, option):
    street = tmp_path / "not-yet-generated"
    message = message.format(option)
    result = CliRunner().invoke(cli, ["localize", "--dataset", str(street), f"--{option}-scales", scales])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not street.exists()


def test_cli_localize_passes_its_ratio_to_the_matching(run, tmp_path, monkeypatch):
    import locseg_cli.localize as command

    seen = []

    def stop(reference_map, queries, images, output, *args, config, **kwargs):
        seen.append(config.matching)
        raise SystemExit(0)
    monkeypatch.setattr(command, "run_localize", stop)
    street = run[0]
    CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                             "--ratio", "0.97", "--matching", "dense"])
    assert [(m.method, m.ratio) for m in seen] == [("dense", 0.97)]
    for weights, ratio in (("synthseasons-slim-dmcgn-v11", 1.0), ("synthseasons-slim-dmcgn-v8", 0.9)):
        CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                                 "--weights", weights])   # no --ratio: the weights' own
        assert seen[-1].ratio == ratio
    result = CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--ratio", "0"])
    assert result.exit_code == 2 and "0<x<=1" in result.output
    monkeypatch.setattr(command, "run_localize", lambda *args, config, **kwargs: seen.append(config) or sys.exit(0))
    CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                             "--retrieval-hypercolumns", "synthseasons-slim-dmcgn-v8"])
    assert seen[-1].retrieval_hypercolumns == "synthseasons-slim-dmcgn-v8"


def test_cli_localize_warns_when_the_ratio_test_keeps_almost_no_match(run, tmp_path):
    """At ratio 0.3 a match must be 11 times as similar as the block ranked fourth: cosines of
    hypercolumns never are, so the run localizes nothing and says which option to change."""
    street = run[0]
    result = CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                                      "--top-k", "1", "--no-refine", "--ratio", "0.3"])
    assert result.exit_code == 0, result.output
    assert "the ratio test (0.3) kept a median 0.0 %" in result.output and "--ratio 1" in result.output
    records = [json.loads(line) for line in (tmp_path / "r.log.jsonl").read_text().splitlines()]
    assert not any(r["success"] for r in records)


def test_the_ratio_test_follows_the_hypercolumn_weights(tmp_path):
    """v10 and v11 record street 5's choice of ratio (1) for coarse-to-fine matching with the
    similarity form, found by name or by the file's digest; every other set, dense matching, the
    distance form and an unbundled file get the matching's default, as do the defaults (v8). A
    ratio given is kept."""
    from locseg.localize.matching import MatchingConfig
    from locseg.localize.pipeline import DEFAULT_WEIGHTS, default_ratio, matching_config
    from locseg.models.weights import bundled_weights

    v11 = bundled_weights("synthseasons-slim-dmcgn-v11")
    assert default_ratio("synthseasons-slim-dmcgn-v10") == default_ratio("synthseasons-slim-dmcgn-v11") == 1.0
    assert default_ratio("synthseasons-slim-dmcgn-v12") == 1.0    # as sharp as v11 (RESULTS, v12)
    assert default_ratio("synthseasons-slim-dmcgn-v14") == 1.0    # at 0.9 it keeps none of its matches (RESULTS, v14)
    assert default_ratio(str(v11.path)) == 1.0
    assert default_ratio("synthseasons-slim-dmcgn-v11", "dense") == MatchingConfig.ratio
    assert default_ratio("synthseasons-slim-dmcgn-v11", ratio_test="distance") == MatchingConfig.ratio
    assert matching_config("synthseasons-slim-dmcgn-v11") == MatchingConfig(ratio=1.0)   # no looser refit than 1
    assert matching_config("synthseasons-slim-dmcgn-v11", ratio_test="distance") == \
        MatchingConfig(ratio=0.9, ratio_test="distance", refit_ratio=0.95)
    assert matching_config("synthseasons-slim-dmcgn-v11", "dense", 0.7, refit_ratio=None) == \
        MatchingConfig(method="dense", ratio=0.7)
    assert matching_config(DEFAULT_WEIGHTS) == LocalizeConfig().matching    # the CLI's defaults are the config's
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not bundled")
    for weights in (DEFAULT_WEIGHTS, "synthseasons-slim-dmcgn-v9", str(other)):
        assert default_ratio(weights) == MatchingConfig.ratio == 0.9


def test_a_ratio_of_1_is_never_starved():
    from locseg.localize.pipeline import LocalizeSummary

    summary = LocalizeSummary(None, 1, 1, 0, [], 0, 0.1, median_kept_fraction=0.0)
    assert summary.ratio_test_starved(0.9) and not summary.ratio_test_starved(1.0)
    assert not LocalizeSummary(None, 1, 1, 0, [], 0, 0.1).ratio_test_starved(0.9)   # nothing localized now


def test_cli_localize_prints_the_recall_table(run, tmp_path):
    street = run[0]
    result = CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                                      "--top-k", "2", "--no-refine"])
    assert result.exit_code == 0, result.output
    assert "localized 21 queries" in result.output and "night-rain" in result.output
    assert "ratio test" not in result.output
    again = CliRunner().invoke(cli, ["localize", "--dataset", str(street), "--output", str(tmp_path / "r.txt"),
                                     "--top-k", "2", "--no-refine"])
    assert "21 reused from the log" in again.output and "s per query" not in again.output   # no time to quote


@pytest.mark.slow
def test_a_model_without_points_is_triangulated_first_and_says_so(run, tmp_path):
    import pycolmap

    street = run[0]
    model = pycolmap.Reconstruction(street / "reference" / "model")
    for point_id in list(model.points3D):
        model.delete_point3D(point_id)
    (tmp_path / "model").mkdir()
    model.write(tmp_path / "model")
    result = CliRunner().invoke(cli, ["localize", "--reference", str(tmp_path / "model"),
                                      "--images", str(street / "images"),
                                      "--queries", str(street / "queries" / "all.txt"),
                                      "--output", str(tmp_path / "out" / "results.txt")])
    assert result.exit_code == 0, result.output
    assert "has poses but no 3D points: triangulating them" in result.output
    evaluation = evaluate_poses(read_poses(tmp_path / "out" / "results.txt"),
                                read_poses(street / "ground_truth" / "queries.txt"))
    assert json.loads(evaluation.to_json())["recall"]["all"][-1] >= 50.0


def test_the_pnp_threshold_is_in_network_input_pixels(run, monkeypatch):
    from locseg.localize import pipeline
    from locseg.models.preprocess import load_image, resize_image
    from locseg.store import FeatureStore

    street, reference, queries, out, _ = run
    name, camera = queries[0]
    image = load_image(street / "images" / name)
    seen = []

    def recording(points2D, points3D, query_camera, config):
        seen.append((float(query_camera.size.max()), config.max_error))
        return estimate(points2D, points3D, query_camera, config)

    estimate = pipeline.estimate_pose
    monkeypatch.setattr(pipeline, "estimate_pose", recording)
    models = pipeline.Models.load(CONFIG)
    with FeatureStore(out / "features.h5", mode="r") as store:
        localizer = pipeline.Localizer(reference, models, store, CONFIG)
        for side in (CONFIG.max_side, 2 * CONFIG.max_side):      # the network sees both at max_side
            big, _ = resize_image(image, max_side=side, upsample=True)
            localizer.search(big, camera.resize(big.shape[-1], big.shape[-2]))
    assert seen[0] == (CONFIG.max_side, pytest.approx(CONFIG.pnp.max_error))
    assert seen[-1] == (2 * CONFIG.max_side, pytest.approx(2 * CONFIG.pnp.max_error))


def test_the_refit_pools_references_and_refinement_takes_at_most_refine_points(run):
    from dataclasses import replace

    from locseg.localize import pipeline
    from locseg.models.preprocess import load_image
    from locseg.store import FeatureStore

    street, reference, queries, out, _ = run
    name, camera = queries[0]
    image = load_image(street / "images" / name)
    plain_config = replace(CONFIG, pnp=replace(CONFIG.pnp, refit=False))
    models = pipeline.Models.load(CONFIG)
    with FeatureStore(out / "features.h5", mode="r") as store:
        refitted = pipeline.Localizer(reference, models, store, CONFIG).search(image, camera)
        plain = pipeline.Localizer(reference, models, store, plain_config).search(image, camera)
    assert refitted.best.reference == plain.best.reference
    # the other references' matches join the winner's RANSAC inliers
    assert len(refitted.best.points3D) > len(plain.best.points3D) == max(plain.inliers)
    _, summary = pipeline.refine_hypothesis(refitted, CONFIG.refine, max_points=20)
    assert summary["points"] <= 20
    with pytest.raises(InputError, match="min_points"):
        LocalizeConfig(refine_points=3)


@pytest.mark.parametrize("method, form", [("coarse-to-fine", "similarity"), ("dense", "similarity"),
                                          ("coarse-to-fine", "distance"), ("dense", "distance")])
def test_a_looser_refit_ratio_keeps_ransacs_matches_and_refits_over_more(run, method, form):
    """With ``refit_ratio`` 1, RANSAC sees exactly the matches of a run without one (same
    counts, inliers and winner), and the refit draws on nearly every map point, so the winner
    ends with more inliers, and its pose stays within the plain one's accuracy: for both
    matching methods and both forms of the ratio test."""
    from dataclasses import replace

    from locseg.evaluate.pose import pose_errors
    from locseg.localize import pipeline
    from locseg.models.preprocess import load_image
    from locseg.store import FeatureStore

    street, reference, queries, out, _ = run
    truth = read_poses(street / "ground_truth" / "queries.txt")
    plain_config = replace(CONFIG, matching=replace(CONFIG.matching, method=method, ratio_test=form, refit_ratio=None))
    looser = replace(plain_config, matching=replace(plain_config.matching, refit_ratio=1.0))
    models = pipeline.Models.load(CONFIG)
    name, camera = next((n, c) for n, c in queries if n.startswith("sun/"))
    image = load_image(street / "images" / name)
    with FeatureStore(out / "features.h5", mode="r") as store:
        plain = pipeline.Localizer(reference, models, store, plain_config).search(image, camera)
        loose = pipeline.Localizer(reference, models, store, looser).search(image, camera)
    assert (loose.matches, loose.inliers, loose.best.reference) == (plain.matches, plain.inliers, plain.best.reference)
    assert len(loose.best.points3D) > len(plain.best.points3D)
    errors = [float(pose_errors({name: s.best.pose}, {name: truth[name]})[0][0]) for s in (plain, loose)]
    assert errors[1] < max(2 * errors[0], 0.25), errors     # metres
    without_refit = replace(looser, pnp=replace(looser.pnp, refit=False))
    assert without_refit.matching.refit_ratio is None     # nothing is refitted over the looser matches
    assert without_refit.digest() == replace(plain_config, pnp=replace(CONFIG.pnp, refit=False)).digest()


def test_the_config_names_the_valid_hypercolumn_normalisations():
    assert LocalizeConfig().hypercolumn_norm == "levels"
    with pytest.raises(InputError, match="unknown hypercolumn normalization 'l1'; valid: levels, joint"):
        LocalizeConfig(hypercolumn_norm="l1")


def test_the_retrieval_head_must_pool_the_normalisation_it_was_trained_on():
    """The heads on v3's hypercolumns: v4 was trained on level-normalised ones, v3 on jointly
    normalised ones (its file predates the metadata entry); the store ids tell the two apart.
    The default head (v5, on v8's hypercolumns) pools level-normalised ones too."""
    from locseg.localize.pipeline import Models
    from locseg.train.retrieval import load_retrieval_model

    with pytest.raises(InputError, match="trained on hypercolumns normalised 'levels', not 'joint'"):
        Models.load(LocalizeConfig(hypercolumn_norm="joint"), device="cpu")
    v3 = "synthseasons-slim-dmcgn-v3"
    joint = Models.load(LocalizeConfig(weights=v3, hypercolumn_norm="joint",
                                       retrieval_weights="synthseasons-slim-vlad-v3"), device="cpu")
    levels = Models.load(LocalizeConfig(weights=v3, retrieval_weights="synthseasons-slim-vlad-v4"), device="cpu")
    assert (joint.hypercolumns.normalization, levels.hypercolumns.normalization) == ("joint", "levels")
    assert joint.sparse_id != levels.sparse_id and joint.global_id != levels.global_id
    assert load_retrieval_model("synthseasons-slim-vlad-v3", "synthseasons-slim-dmcgn-v3").normalization == "joint"
    assert load_retrieval_model("synthseasons-slim-vlad-v4", "synthseasons-slim-dmcgn-v3").normalization == "levels"


def test_a_retrieval_head_refuses_hypercolumn_weights_it_was_not_trained_on():
    """vlad-v5 records v8's sha256 as the weights it pools: the localizer and the evaluation
    loader both refuse it over v3, and accept it over v8; v4 (over v3) the other way round."""
    from locseg.localize.pipeline import Models
    from locseg.train.retrieval import load_retrieval_model

    v3, v8 = "synthseasons-slim-dmcgn-v3", "synthseasons-slim-dmcgn-v8"
    refused = f"'synthseasons-slim-vlad-v5' pool the hypercolumns of {v8}, not of {v3}"
    with pytest.raises(InputError, match=refused):
        Models.load(LocalizeConfig(weights=v3, retrieval_weights="synthseasons-slim-vlad-v5"), device="cpu")
    with pytest.raises(InputError, match=refused):
        load_retrieval_model("synthseasons-slim-vlad-v5", v3)
    with pytest.raises(InputError, match=f"'synthseasons-slim-vlad-v4' pool the hypercolumns of {v3}, not of {v8}"):
        load_retrieval_model("synthseasons-slim-vlad-v4", v8)
    assert load_retrieval_model("synthseasons-slim-vlad-v5", v8).source == "hypercolumns"


def test_retrieval_on_other_hypercolumns_describes_as_those_and_matches_as_these():
    """With ``retrieval_hypercolumns``, the global descriptor (at every retrieval scale) is the
    one the head's own hypercolumns give, and shares their store id; the dense map is the
    matching weights' own. A head over weights it was not trained on is still refused."""
    import torch

    from locseg.localize.pipeline import Models

    v3, v8 = "synthseasons-slim-dmcgn-v3", "synthseasons-slim-dmcgn-v8"
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) - 0.5
    for scales in ((1.0,), (1.0, 0.5)):
        retrieving = Models.load(LocalizeConfig(weights=v8, retrieval_scales=scales), device="cpu")
        matching = Models.load(LocalizeConfig(weights=v3, retrieval_weights="synthseasons-slim-vlad-v4",
                                              retrieval_scales=scales), device="cpu")
        split = LocalizeConfig(weights=v3, retrieval_hypercolumns=v8, retrieval_scales=scales)
        both = Models.load(split, device="cpu")
        dense, descriptor = both.describe(image)
        torch.testing.assert_close(descriptor, retrieving.describe(image)[1])
        torch.testing.assert_close(dense, matching.describe(image)[0])
        assert both.global_id == retrieving.global_id and both.sparse_id == matching.sparse_id
        assert split.digest() != LocalizeConfig(weights=v3, retrieval_scales=scales).digest()
    with pytest.raises(InputError, match=f"pool the hypercolumns of {v8}, not of {v3}"):
        Models.load(LocalizeConfig(weights=v8, retrieval_hypercolumns=v3), device="cpu")
    with pytest.raises(InputError, match="retrieval_hypercolumns must name hypercolumn weights"):
        LocalizeConfig(retrieval_hypercolumns="")
    assert Models.load(LocalizeConfig(retrieval_hypercolumns=v8), device="cpu").retrieval_hypercolumns is None


def test_two_networks_never_share_a_pass(monkeypatch):
    """Retrieval on v8 and matching on v3 at the same two scales: each network makes its own
    pass at each scale, and the results are those of each network alone."""
    import torch

    from locseg.localize.pipeline import Models

    v3, v8 = "synthseasons-slim-dmcgn-v3", "synthseasons-slim-dmcgn-v8"
    scales = (0.5, 1.0)
    both = Models.load(LocalizeConfig(weights=v3, retrieval_hypercolumns=v8, retrieval_scales=scales,
                                      hypercolumn_scales=scales), device="cpu")
    retrieving = Models.load(LocalizeConfig(weights=v8, retrieval_scales=scales), device="cpu")
    matching = Models.load(LocalizeConfig(weights=v3, retrieval_weights="synthseasons-slim-vlad-v4",
                                          hypercolumn_scales=scales), device="cpu")
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) - 0.5
    passes = []
    original = type(both.hypercolumns).dense
    monkeypatch.setattr(type(both.hypercolumns), "dense", lambda net, images: passes.append(
        (id(net), images.shape[-1])) or original(net, images))
    dense, descriptor = both.describe(image)
    assert sorted(passes) == sorted((id(net), width) for net in (both.hypercolumns, both.retrieval_hypercolumns)
                                    for width in (64, 128))
    monkeypatch.undo()
    torch.testing.assert_close(descriptor, retrieving.describe(image)[1])
    torch.testing.assert_close(dense, matching.describe(image)[0])


def test_multiscale_retrieval_pools_a_second_pass_and_keeps_its_own_store_id():
    """The half scale is one more network pass on the halved input, pooled with the
    full-size descriptor; single-scale settings keep their store id and digest."""
    import torch

    from locseg.localize.pipeline import Models
    from locseg.models.preprocess import resize_image

    single = Models.load(LocalizeConfig(), device="cpu")
    multi = Models.load(LocalizeConfig(retrieval_scales=(1.0, 0.5)), device="cpu")
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) - 0.5
    dense, full = single.describe(image)
    half_image = resize_image(image[None], max_side=64)[0]
    with torch.inference_mode():
        half = single.describer(half_image, single.hypercolumns.dense(half_image))
    dense_multi, pooled = multi.describe(image)
    torch.testing.assert_close(dense_multi, dense)
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(full + half, dim=0))
    assert multi.sparse_id == single.sparse_id and multi.global_id != single.global_id
    assert "scales" not in single.global_id and "scales=1.0-0.5" in multi.global_id
    assert LocalizeConfig(retrieval_scales=[1]).digest() == LocalizeConfig().digest()
    assert LocalizeConfig(retrieval_scales=(1.0, 0.5)).digest() != LocalizeConfig().digest()
    with pytest.raises(InputError, match="retrieval scales must be positive"):
        LocalizeConfig(retrieval_scales=(1.0, 0.0))


def test_multiscale_hypercolumns_are_matched_but_not_pooled_and_keep_their_own_store_id():
    """Matching and refinement get the multi-scale map; retrieval keeps pooling the plain one,
    which its heads were trained on; single-scale settings keep their store id and digest."""
    import torch

    from locseg.localize.pipeline import Models

    single = Models.load(LocalizeConfig(), device="cpu")
    multi = Models.load(LocalizeConfig(hypercolumn_scales=(0.8, 1.0, 1.25)), device="cpu")
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) - 0.5
    dense, descriptor = single.describe(image)
    dense_multi, descriptor_multi = multi.describe(image)
    with torch.inference_mode():
        expected = single.hypercolumns.dense_at_scales(image[None], (0.8, 1.0, 1.25))[0]
    torch.testing.assert_close(dense_multi, expected)
    assert (dense_multi - dense).abs().max() > 0.01
    torch.testing.assert_close(descriptor_multi, descriptor)
    assert multi.global_id == single.global_id and multi.sparse_id != single.sparse_id
    assert "scales" not in single.sparse_id and "scales=0.8-1.0-1.25" in multi.sparse_id
    assert LocalizeConfig(hypercolumn_scales=[1]).digest() == LocalizeConfig().digest()
    assert LocalizeConfig(hypercolumn_scales=(1.25, 1.0, 0.8)) == LocalizeConfig(hypercolumn_scales=(0.8, 1.0, 1.25))
    assert LocalizeConfig(hypercolumn_scales=(0.8, 1.0, 1.25)).digest() != LocalizeConfig().digest()
    with pytest.raises(InputError, match="hypercolumn scales must be positive"):
        LocalizeConfig(hypercolumn_scales=())


def test_a_scale_shared_by_retrieval_and_matching_costs_one_pass(monkeypatch):
    import torch

    from locseg.localize.pipeline import Models

    shared = Models.load(LocalizeConfig(retrieval_scales=(1.0, 0.8), hypercolumn_scales=(0.8, 1.0)), device="cpu")
    alone = Models.load(LocalizeConfig(hypercolumn_scales=(0.8, 1.0)), device="cpu")
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) - 0.5
    passes = []
    original = type(shared.hypercolumns).dense
    monkeypatch.setattr(type(shared.hypercolumns), "dense", lambda net, images: passes.append(images.shape) or
                        original(net, images))
    dense_shared, _ = shared.describe(image)
    assert passes == [(1, 3, 96, 128), (1, 3, 77, 102)]          # scale 1, then 0.8 once for both
    torch.testing.assert_close(dense_shared, alone.describe(image)[0])


def test_new_matching_settings_change_the_digest_only_when_they_change_the_behaviour():
    """Logs written before ``ratio_test``, ``refit_ratio``, ``reference_neighbours`` and
    ``retrieval_hypercolumns`` existed used the similarity form, refitted over the matches RANSAC
    saw, ranked plain references and retrieved with the matching weights; they stay reusable."""
    similarity = LocalizeConfig(matching=MatchingConfig(ratio_test="similarity", refit_ratio=None),
                                reference_neighbours=0)
    before = LocalizeConfig().to_dict()              # the settings as a single-scale run hashed them before
    del before["retrieval_scales"], before["hypercolumn_scales"], before["reference_neighbours"]
    del before["retrieval_hypercolumns"]
    del before["matching"]["ratio_test"], before["matching"]["refit_ratio"]
    old_digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert similarity.digest() == old_digest
    assert LocalizeConfig(matching=MatchingConfig(ratio_test="distance")).digest() != old_digest
    assert LocalizeConfig(matching=MatchingConfig(refit_ratio=1.0)).digest() != old_digest
    assert LocalizeConfig(reference_neighbours=2).digest() != LocalizeConfig(reference_neighbours=0).digest()
    with pytest.raises(InputError, match="reference_neighbours"):
        LocalizeConfig(reference_neighbours=-1)
