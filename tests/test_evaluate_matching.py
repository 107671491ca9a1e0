"""Matching precision: the sparse-to-dense step measured on known correspondences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from locseg.errors import InputError
from locseg.evaluate.matching import MatchingPrecision, match_dense, matching_precision
from locseg.io.correspondences import CorrespondencePair, write_correspondences
from locseg.models.backbone import build_backbone
from locseg.models.hypercolumn import Hypercolumns
from locseg.train.pairs import CorrespondencePairs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Hypercolumns(build_backbone("vgg16-slim")).eval()


def _textured(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def _pair_directory(tmp_path, shift: tuple[int, int], n: int = 300):
    """Image b is image a moved by ``shift`` (dx, dy) pixels: p_b = p_a - shift."""
    scene = _textured(256, 320, seed=1)
    dx, dy = shift
    (tmp_path / "images" / "reference").mkdir(parents=True)
    (tmp_path / "images" / "night").mkdir(parents=True)
    Image.fromarray(scene[:192, :256]).save(tmp_path / "images/reference/a.png")
    Image.fromarray(scene[dy:dy + 192, dx:dx + 256]).save(tmp_path / "images/night/b.png")
    rng = np.random.default_rng(2)
    points_a = rng.uniform([64 + dx, 48 + dy], [192, 144], (n, 2))
    pair = CorrespondencePair("reference/a.png", "night/b.png", points_a, points_a - shift, np.zeros(n))
    write_correspondences(tmp_path / "correspondences" / "pair.mat", pair)
    return CorrespondencePairs(tmp_path / "correspondences", tmp_path / "images", max_side=512)


def test_a_shifted_copy_is_matched_where_it_moved(model, tmp_path):
    """Convolutions are translation-equivariant: a shift by the deepest stride (16 px)
    leaves interior features unchanged, so nearly every match lands within 4 px."""
    pairs = _pair_directory(tmp_path, shift=(32, 16))
    precision = matching_precision(model, pairs, threshold=4.0).percent()
    assert set(precision) == {"all", "night"}
    assert precision["night"] > 90.0


def test_a_shifted_copy_is_matched_where_it_moved_at_several_scales(model, tmp_path):
    """Each scale's map is read at the cell centres of the image's own grid, so the maps of a
    shifted copy still match where it moved: halved, both images' maps come from a pass at
    half size, where the copy is shifted by (16, 8) px, and are read back on the full grid."""
    pairs = _pair_directory(tmp_path, shift=(32, 16))
    assert matching_precision(model, pairs, scales=(0.8, 1.0, 1.25)).percent()["night"] > 90.0
    assert matching_precision(model, pairs, scales=(0.5,)).percent()["night"] > 90.0


def test_subcell_peaks_find_a_point_between_cell_centres(model, tmp_path):
    """Image b moved by 18 px down: every true match lies half a cell from a cell centre
    along y. Sub-cell peaks move each match by at most half a cell per axis and bring it
    closer to the truth than the cell centres do."""
    pairs = _pair_directory(tmp_path, shift=(32, 18))
    sample = pairs[0]
    centres = match_dense(model, sample.image_a, sample.image_b, sample.points_a)
    peaks = match_dense(model, sample.image_a, sample.image_b, sample.points_a, subcell=True)
    assert (peaks - centres).abs().max() <= 2.0 + 1e-6
    centre_error = (centres - sample.points_b).norm(dim=1).median()
    peak_error = (peaks - sample.points_b).norm(dim=1).median()
    assert centre_error > 1.9 and peak_error < 0.75 * centre_error


def test_precision_falls_when_the_truth_is_wrong(model, tmp_path):
    pairs = _pair_directory(tmp_path, shift=(32, 16))
    raw = pairs.pair(0)
    wrong = CorrespondencePair(raw.image_i, raw.image_j, raw.points_i, raw.points_j + 20, raw.dist_from_center)
    write_correspondences(pairs.files[0], wrong)
    assert matching_precision(model, pairs).percent()["all"] < 10.0


def test_precision_bookkeeping():
    result = MatchingPrecision(threshold=4.0)
    result.add("night", 3, 4)
    result.add("snow", 1, 4)
    assert result.percent() == {"all": 50.0, "night": 75.0, "snow": 25.0}


def test_pairs_need_files_and_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no correspondence files"):
        CorrespondencePairs(tmp_path / "empty", tmp_path)


def test_evaluate_features_command(tmp_path):
    import json

    from click.testing import CliRunner
    from locseg_cli.main import cli

    _pair_directory(tmp_path, shift=(32, 16))
    out = CliRunner().invoke(cli, ["evaluate-features", "--dataset", str(tmp_path), "--json", "--points", "100"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert set(result["matching_precision"]) == {"all", "night"} and "retrieval_recall" not in result
    scaled = CliRunner().invoke(cli, ["evaluate-features", "--dataset", str(tmp_path), "--json", "--points", "100",
                                      "--hypercolumn-scales", "0.5"])
    assert scaled.exit_code == 0, scaled.output
    assert json.loads(scaled.stdout)["matching_precision"] != result["matching_precision"]   # the option reaches it
    bad = CliRunner().invoke(cli, ["evaluate-features", "--dataset", str(tmp_path), "--hypercolumn-scales", "1,x"])
    assert bad.exit_code == 2 and "comma-separated" in bad.output


def test_evaluate_features_draws_a_figure_per_condition(tmp_path):
    """A shifted copy matches almost everywhere (see above), so its figure is mostly green."""
    import json

    from click.testing import CliRunner
    from locseg_cli.main import cli

    from locseg.evaluate.figures import BAND, CORRECT, WRONG

    _pair_directory(tmp_path, shift=(32, 16))
    empty = CorrespondencePair("reference/a.png", "night/b.png", np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    write_correspondences(tmp_path / "correspondences" / "0-empty.mat", empty)   # the night's first pair: skipped
    out = CliRunner().invoke(cli, ["evaluate-features", "--dataset", str(tmp_path), "--json", "--points", "50",
                                   "--figures", str(tmp_path / "figures")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["figures"] == [str(tmp_path / "figures" / "night.png")]
    figure = np.asarray(Image.open(tmp_path / "figures" / "night.png"))
    assert figure.shape == (192 + BAND, 256 + 256, 3)
    green, red = ((figure == colour).all(axis=2).sum() for colour in (CORRECT, WRONG))
    assert green > 500 and red < green / 10


def test_a_figure_draws_a_hit_green_and_a_miss_red_with_a_ring_at_its_true_point():
    from locseg.evaluate.figures import BAND, CORRECT, WRONG, match_figure
    from locseg.models.preprocess import normalize_image
    from locseg.train.pairs import PairSample

    grey = normalize_image(torch.full((3, 100, 120), 0.5))
    points_a = torch.tensor([[20.2, 20.9], [20.5, 80.5]])   # COLMAP: inside pixel (20, 20), and pixel (20, 80)
    true_b = torch.tensor([[60.5, 20.5], [60.5, 80.5]])
    found_b = torch.tensor([[62.5, 20.5], [20.5, 40.5]])   # 2 px off: a hit; 56.6 px off: a miss
    figure = np.asarray(match_figure(PairSample(grey, grey, points_a, true_b, "reference/a.png", "night/b.png"),
                                     points_a, found_b, true_b, threshold=4.0))
    assert figure.shape == (100 + BAND, 240, 3)
    assert tuple(figure[BAND + 20, 80]) == CORRECT                       # on the hit's line, y = 20
    assert tuple(figure[BAND + 20, 20]) == CORRECT and tuple(figure[BAND + 20, 19]) != CORRECT   # starts at x = 20
    x, y = (20 + 120 + 20) // 2, BAND + (80 + 40) // 2                   # the miss's line, at its middle
    assert tuple(figure[y, x]) == WRONG
    assert tuple(figure[BAND + 80, 120 + 60 + 3]) == WRONG                # its ring, 3 px right of the true point
    assert tuple(figure[BAND + 20, 120 + 60 + 3]) != WRONG                # no ring for the hit
