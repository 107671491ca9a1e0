"""Sparse-to-dense matching and RANSAC-PnP against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from locseg.errors import InputError, RegistryError, ShapeError
from locseg.geometry import Camera, Pose
from locseg.localize.matching import (
    MatchingConfig,
    fit_projection,
    match_sparse_to_dense,
    ratio_test_rank,
    subcell_offsets,
)
from locseg.localize.pnp import ESTIMATORS, PnPConfig, estimate_pose, refit_pose


def _unit_map(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(channels, height, width, generator=g), dim=0)


DENSE = MatchingConfig(method="dense", subcell=False)


def _smooth_map(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A unit map that varies smoothly over the image, as hypercolumns do (the coarse
    stage of coarse-to-fine matching relies on it)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, height // 3 + 2, width // 3 + 2, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return torch.nn.functional.normalize(smooth[0] + 0.05 * torch.randn(channels, height, width, generator=g), dim=0)


def test_matches_land_on_the_cell_centres_of_their_source():
    query_map = _unit_map(64, 24, 32)
    cells = torch.tensor([[0, 0], [31, 23], [5, 17], [20, 3]])  # (x, y)
    descriptors = query_map[:, cells[:, 1], cells[:, 0]].T
    found = match_sparse_to_dense(descriptors, query_map, DENSE)
    assert torch.equal(found.uv, cells.float() * 4 + 2)
    assert found.keep.all()
    assert torch.allclose(found.score, torch.ones(4))


def test_ratio_test_rejects_a_descriptor_that_matches_a_whole_region_equally():
    query_map = _unit_map(16, 20, 20)
    query_map[:, :10, :10] = query_map[:, 0, 0, None, None]  # a flat 10x10 block: 100 equal peaks
    descriptors = torch.stack([query_map[:, 0, 0], query_map[:, 15, 15]])
    found = match_sparse_to_dense(descriptors, query_map, MatchingConfig(method="dense", factor=0.05))  # k=20
    assert found.keep.tolist() == [False, True]


def test_distance_ratio_test_is_lowes_test_on_euclidean_distances():
    """The distance form keeps a match exactly when the peak cell is ``ratio`` times as close
    (in Euclidean distance between unit vectors) as the k-th closest cell."""
    query_map = _unit_map(16, 12, 16, seed=3)
    descriptors = torch.nn.functional.normalize(torch.randn(400, 16, generator=torch.Generator().manual_seed(4)), dim=1)
    config = MatchingConfig(method="dense", ratio=0.9, ratio_test="distance", factor=0.02, subcell=False)
    k = ratio_test_rank(12, 16, config.factor)
    distances = torch.cdist(descriptors.double(), query_map.flatten(1).T.double()).sort(dim=1).values
    lowe = distances[:, 0] <= config.ratio * distances[:, k - 1]
    found = match_sparse_to_dense(descriptors, query_map, config)
    assert 0 < lowe.sum() < len(lowe)            # the test decides both ways here
    assert torch.equal(found.keep, lowe)


@pytest.mark.parametrize("method", ["dense", "coarse-to-fine"])
def test_distance_ratio_test_keeps_a_distinct_peak_among_crowded_cosines(method):
    """Cells all 5.7° from one direction (``base``), each off it another way that varies
    smoothly over the map: every cosine is near 1, so the similarity form rejects even an
    exact match at 0.9, while the distance form keeps it and still rejects ``base``, which is
    equally close to every cell."""
    g = torch.Generator().manual_seed(5)
    base = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    coarse = torch.randn(1, 32, 7, 7, generator=g)
    offsets = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bicubic", align_corners=False)[0]
    offsets -= base[:, None, None] * torch.einsum("c,chw->hw", base, offsets)     # orthogonal to base
    offsets = torch.nn.functional.normalize(offsets, dim=0)
    query_map = torch.nn.functional.normalize(base[:, None, None] + 0.1 * offsets, dim=0)
    descriptors = torch.stack([query_map[:, 9, 4], base])
    forms = {form: match_sparse_to_dense(descriptors, query_map,
                                         MatchingConfig(method=method, ratio_test=form, subcell=False))
             for form in ("similarity", "distance")}
    assert forms["similarity"].keep.tolist() == [False, False]
    assert forms["distance"].keep.tolist() == [True, False]
    assert forms["distance"].uv[0].tolist() == [4 * 4 + 2, 9 * 4 + 2]


@pytest.mark.parametrize("method, form, ratio, refit_ratio", [
    ("dense", "similarity", 0.9, 0.97), ("coarse-to-fine", "similarity", 0.6, 0.7),
    ("dense", "distance", 0.8, 0.9), ("coarse-to-fine", "distance", 0.8, 0.9)])
def test_the_refit_ratio_marks_a_looser_superset_placed_at_sub_cell_peaks(method, form, ratio, refit_ratio):
    """``loose`` holds what the test keeps at ``refit_ratio``, a superset of ``keep``, placed
    at the same sub-cell peaks as a plain run at that ratio would place them, in either form
    of the ratio test."""
    query_map = _smooth_map(32, 24, 32, seed=6)
    descriptors = torch.nn.functional.normalize(
        query_map[:, 3:21, 4:28].flatten(1).T + 0.3 * torch.randn(432, 32, generator=torch.Generator().manual_seed(7)),
        dim=1)
    strict = match_sparse_to_dense(descriptors, query_map, MatchingConfig(method=method, ratio_test=form, ratio=ratio))
    both = match_sparse_to_dense(descriptors, query_map, MatchingConfig(method=method, ratio_test=form, ratio=ratio,
                                                                        refit_ratio=refit_ratio))
    looser = match_sparse_to_dense(descriptors, query_map,
                                   MatchingConfig(method=method, ratio_test=form, ratio=refit_ratio))
    assert torch.equal(strict.keep, strict.loose) and torch.equal(both.keep, strict.keep)
    assert torch.equal(both.loose, looser.keep) and 0 < both.keep.sum() < both.loose.sum() < len(descriptors)
    torch.testing.assert_close(both.uv[both.loose], looser.uv[looser.keep])
    with pytest.raises(InputError, match="refit_ratio"):
        MatchingConfig(refit_ratio=1.5)
    for no_looser in (0.9, 0.8):      # the ratio test's own matches: the same setting as none
        assert MatchingConfig(ratio=0.9, refit_ratio=no_looser) == MatchingConfig(ratio=0.9)


def test_chunking_does_not_change_the_matches():
    query_map = _unit_map(32, 12, 16, seed=1)
    descriptors = torch.nn.functional.normalize(torch.randn(50, 32), dim=1)
    whole = match_sparse_to_dense(descriptors, query_map, DENSE)
    chunked = match_sparse_to_dense(descriptors, query_map, MatchingConfig(method="dense", chunk=7, subcell=False))
    assert torch.equal(whole.uv, chunked.uv) and torch.equal(whole.keep, chunked.keep)


@pytest.mark.parametrize("size", [(24, 32), (23, 30)])   # the second leaves partial border blocks
def test_coarse_to_fine_finds_the_dense_peak_on_a_smooth_map(size):
    height, width = size
    query_map = _smooth_map(64, height, width)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cells = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)[::7]     # every 7th cell, borders included
    descriptors = query_map[:, cells[:, 1], cells[:, 0]].T
    descriptors = torch.nn.functional.normalize(descriptors + 0.01 * torch.randn(descriptors.shape), dim=1)
    dense = match_sparse_to_dense(descriptors, query_map, DENSE)
    fast = match_sparse_to_dense(descriptors, query_map, MatchingConfig(candidates=3, subcell=False))
    agree = (fast.uv == dense.uv).all(dim=1).float().mean()
    assert agree > 0.97, f"coarse-to-fine agrees with dense on {agree:.1%} of the descriptors"
    assert torch.equal(fast.uv[fast.uv.eq(dense.uv).all(1)], cells[fast.uv.eq(dense.uv).all(1)].float() * 4 + 2)
    assert fast.uv[:, 0].max() < width * 4 and fast.uv[:, 1].max() < height * 4   # never a padding cell


def test_coarse_to_fine_score_is_the_full_dimension_similarity():
    query_map = _smooth_map(32, 16, 16, seed=2)
    descriptors = torch.nn.functional.normalize(torch.randn(40, 32), dim=1)
    found = match_sparse_to_dense(descriptors, query_map, MatchingConfig(candidates=1, subcell=False))
    cells = ((found.uv - 2) / 4).long()
    expected = (descriptors * query_map[:, cells[:, 1], cells[:, 0]].T).sum(1)
    assert torch.allclose(found.score, expected, atol=1e-6)


def test_precomputed_projected_descriptors_give_the_same_matches():
    query_map = _smooth_map(32, 16, 20, seed=4)
    descriptors = torch.nn.functional.normalize(torch.randn(60, 32, generator=torch.Generator().manual_seed(5)), dim=1)
    projection = fit_projection(descriptors, 8)
    inline = match_sparse_to_dense(descriptors, query_map, MatchingConfig(), projection)
    cached = match_sparse_to_dense(descriptors, query_map, MatchingConfig(), projection, descriptors @ projection)
    for name in ("uv", "score", "keep"):
        torch.testing.assert_close(getattr(cached, name), getattr(inline, name), rtol=0, atol=0)
    with pytest.raises(InputError, match="projection they were made with"):
        match_sparse_to_dense(descriptors, query_map, MatchingConfig(), None, descriptors @ projection)
    with pytest.raises(ShapeError, match="projected"):
        match_sparse_to_dense(descriptors, query_map, MatchingConfig(), projection, descriptors[:5] @ projection)


def test_coarse_ratio_test_rejects_a_descriptor_that_matches_many_blocks_equally():
    query_map = _smooth_map(16, 32, 32, seed=3)
    query_map[:, :16, :16] = query_map[:, 0, 0, None, None]   # 16 equal blocks of 4x4 cells
    descriptors = torch.stack([query_map[:, 0, 0], query_map[:, 25, 25]])
    found = match_sparse_to_dense(descriptors, query_map, MatchingConfig(coarse_rank=8))
    assert found.keep.tolist() == [False, True]


def test_projection_keeps_the_dot_products_of_a_low_rank_sample():
    g = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(20, 3, generator=g))[0]
    sample = torch.randn(100, 3, generator=g) @ basis.T
    projection = fit_projection(sample, 3)
    assert torch.allclose(projection.T @ projection, torch.eye(3), atol=1e-5)
    projected = sample @ projection
    assert torch.allclose(projected @ projected.T, sample @ sample.T, atol=1e-4)
    assert torch.allclose(fit_projection(sample.flip(0), 3), projection, atol=1e-5)   # sign convention


def test_a_projection_spanning_the_map_changes_nothing():
    g = torch.Generator().manual_seed(5)
    basis = torch.linalg.qr(torch.randn(48, 8, generator=g))[0]                   # (48, 8)
    query_map = torch.einsum("cd,dhw->chw", basis, _smooth_map(8, 24, 24, seed=5))
    descriptors = torch.nn.functional.normalize(query_map[:, ::5, ::5].reshape(48, -1).T
                                                + 0.05 * (torch.randn(25, 8, generator=g) @ basis.T), dim=1)
    full = match_sparse_to_dense(descriptors, query_map)
    projected = match_sparse_to_dense(descriptors, query_map, projection=fit_projection(descriptors, 8))
    assert torch.equal(full.uv, projected.uv) and torch.equal(full.keep, projected.keep)
    assert torch.allclose(full.score, projected.score)


def _wave_map(height: int, width: int, channels: int = 32, seed: int = 6):
    """Unit hypercolumns of a smooth analytic field: f(u, v) = normalise(cos(a·u + b·v + φ)),
    wavelengths of 6 to 20 cells; returns the field and its map sampled at the cell centres."""
    g = torch.Generator().manual_seed(seed)
    frequency = (2 * math.pi / (4 * (6 + 14 * torch.rand(channels, generator=g))))[:, None] * torch.nn.functional.normalize(
        torch.randn(channels, 2, generator=g), dim=1)
    phase = 2 * math.pi * torch.rand(channels, generator=g)

    def field(uv: torch.Tensor) -> torch.Tensor:   # (N, 2) pixels -> (N, C)
        return torch.nn.functional.normalize(torch.cos(uv.double() @ frequency.double().T + phase.double()), dim=1)

    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 2) * 4.0 + 2
    return field, field(centres).float().T.reshape(channels, height, width)


@pytest.mark.parametrize("method", ["dense", "coarse-to-fine"])
def test_subcell_peaks_are_closer_to_the_true_position_than_cell_centres(method):
    field, query_map = _wave_map(24, 32)
    g = torch.Generator().manual_seed(7)
    truth = torch.stack([8 + 112 * torch.rand(200, generator=g), 8 + 80 * torch.rand(200, generator=g)], 1)
    descriptors = field(truth).float()
    centre = match_sparse_to_dense(descriptors, query_map, MatchingConfig(method=method, ratio=1.0, subcell=False))
    subcell = match_sparse_to_dense(descriptors, query_map, MatchingConfig(method=method, ratio=1.0))
    ok = (centre.uv - truth).abs().amax(dim=1) <= 2    # the peak is in the true cell (ratio 1 keeps all)
    assert ok.sum() > 100
    error_centre = (centre.uv - truth)[ok].norm(dim=1).mean()
    error_subcell = (subcell.uv - truth)[ok].norm(dim=1).mean()
    assert error_subcell < 0.5 * error_centre, (float(error_subcell), float(error_centre))
    assert ((subcell.uv - centre.uv).abs() <= 2 + 1e-6).all()                 # within half a cell


def test_subcell_offsets_from_reused_similarities_match_computed_ones():
    # known similarities (some neighbours among them, some not, some -1 cells) change nothing
    query_map = _smooth_map(16, 12, 15, seed=8)
    g = torch.Generator().manual_seed(9)
    cells = torch.randint(0, 12 * 15, (40,), generator=g)
    rows = query_map.permute(1, 2, 0).reshape(-1, 16)
    descriptors = torch.nn.functional.normalize(rows[cells] + 0.1 * torch.randn(40, 16, generator=g), dim=1)
    peak = (descriptors * rows[cells]).sum(1)
    known_cells = torch.stack([cells - 1, cells + 15, cells + 1, torch.full_like(cells, -1)], dim=1)
    known_cells[::3, 0] = 0          # a cell that is not a neighbour
    known_cells[known_cells >= 12 * 15] = -1
    known = (known_cells, (descriptors @ rows.T).gather(1, known_cells.clamp_min(0)))
    torch.testing.assert_close(subcell_offsets(descriptors, query_map, cells, peak, known),
                               subcell_offsets(descriptors, query_map, cells, peak))


def test_ratio_test_rank_follows_the_factor():
    assert ratio_test_rank(96, 128, 0.006) == int(0.006 * 96 * 128) == 73
    assert ratio_test_rank(4, 4, 0.006) == 2


def test_matching_checks_shapes_and_settings():
    with pytest.raises(ShapeError):
        match_sparse_to_dense(torch.zeros(3, 8), torch.zeros(16, 4, 4))
    with pytest.raises(InputError):
        MatchingConfig(ratio=1.5)
    with pytest.raises(RegistryError, match="coarse-to-fine"):
        MatchingConfig(method="exhaustive")
    with pytest.raises(RegistryError, match="distance"):
        MatchingConfig(ratio_test="lowe")
    with pytest.raises(InputError, match="candidates"):
        MatchingConfig(candidates=0)
    with pytest.raises(ShapeError):
        match_sparse_to_dense(torch.zeros(3, 16), torch.zeros(16, 4, 4), projection=torch.zeros(8, 4))


def _scene(camera: Camera, count: int, outliers: float, seed: int = 0):
    """Points in front of a known camera, their projections, and a fraction of wrong 2D points."""
    rng = np.random.default_rng(seed)
    T = Pose.from_aa(torch.tensor([0.05, -0.3, 0.02], dtype=torch.float64), torch.tensor([0.4, -0.2, 1.5],
                                                                                           dtype=torch.float64))
    width, height = (float(v) for v in camera.size.tolist())
    uv = np.stack([rng.uniform(10, width - 10, count), rng.uniform(10, height - 10, count)], axis=1)
    depth = rng.uniform(4, 30, count)
    rays = camera.unproject(torch.from_numpy(uv))                   # z = 1, distortion removed
    points_cam = rays * torch.from_numpy(depth)[:, None]
    points_world = T.inv().transform(points_cam).numpy()
    wrong = rng.random(count) < outliers
    uv_observed = uv.copy()
    uv_observed[wrong] = np.stack([rng.uniform(0, width, wrong.sum()), rng.uniform(0, height, wrong.sum())], 1)
    return T, uv_observed, points_world, ~wrong


CAMERAS = {
    "PINHOLE": Camera.from_params("PINHOLE", 640, 480, [500.0, 510.0, 320.0, 240.0]),
    "SIMPLE_RADIAL": Camera.from_params("SIMPLE_RADIAL", 512, 384, [420.0, 250.0, 190.0, -0.08]),
    "OPENCV": Camera.from_params("OPENCV", 800, 600, [600.0, 590.0, 410.0, 290.0, -0.1, 0.02, 0.001, -0.002]),
}


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("model", sorted(CAMERAS))
def test_pnp_recovers_the_pose_through_outliers_and_distortion(estimator, model):
    camera = CAMERAS[model]
    T, uv, xyz, truly_inlier = _scene(camera, 300, outliers=0.4)
    result = estimate_pose(uv, xyz, camera, PnPConfig(estimator=estimator, max_error=4.0))
    assert result.pose is not None
    dt, dr = result.pose.error(T)
    assert float(dt) < 1e-3 and float(dr) < 1e-2
    # every true inlier is found; a random outlier lands within 4 px only by chance
    assert result.inliers[truly_inlier].all()
    assert result.inliers[~truly_inlier].mean() < 0.05


def test_pnp_without_enough_support_gives_no_pose():
    camera = CAMERAS["PINHOLE"]
    _, uv, xyz, _ = _scene(camera, 11, outliers=0.0)
    result = estimate_pose(uv, xyz, camera, PnPConfig(min_inliers=12))
    assert result.pose is None and result.num_inliers == 0
    _, uv, xyz, _ = _scene(camera, 200, outliers=1.0, seed=3)          # nothing consistent
    assert estimate_pose(uv, xyz, camera, PnPConfig(max_error=2.0)).pose is None


def test_pnp_config_checks_its_values():
    with pytest.raises(RegistryError, match="poselib"):
        PnPConfig(estimator="opencv")
    with pytest.raises(InputError):
        PnPConfig(min_inliers=2)
    with pytest.raises(ShapeError):
        estimate_pose(np.zeros((20, 2)), np.zeros((19, 3)), CAMERAS["PINHOLE"])
    assert math.isfinite(PnPConfig().max_error)
    with pytest.raises(InputError, match="refit_scale"):
        PnPConfig(refit_scale=0)


@pytest.mark.parametrize("model", sorted(CAMERAS))
def test_refit_over_more_matches_moves_a_pose_towards_the_truth(model):
    # A few exact matches give a pose; many noisy matches of the same scene refine it.
    camera = CAMERAS[model]
    T, uv, xyz, truly_inlier = _scene(camera, 600, outliers=0.3, seed=4)
    rng = np.random.default_rng(5)
    noisy = uv + rng.normal(0, 0.7, uv.shape) * truly_inlier[:, None]
    start = Pose.exp(torch.tensor([0.004, -0.003, 0.002, 0.03, -0.02, 0.02], dtype=torch.float64)) @ T
    result = refit_pose(noisy, xyz, camera, start, PnPConfig(max_error=12.0))
    assert float(result.pose.error(T)[0]) < 0.2 * float(start.error(T)[0])
    assert float(result.pose.error(T)[1]) < 0.2 * float(start.error(T)[1])
    assert result.inliers[truly_inlier].mean() > 0.99          # the true matches, noisy as they are
    assert result.inliers[~truly_inlier].mean() < 0.05


def test_refit_without_support_keeps_the_pose():
    camera = CAMERAS["PINHOLE"]
    T, uv, xyz, _ = _scene(camera, 200, outliers=1.0, seed=3)
    result = refit_pose(uv, xyz, camera, T, PnPConfig(max_error=2.0))
    assert result.pose is T and result.num_inliers < 12
