"""Correspondences at infinity on the reference's sky (``locseg synth-sky-pairs``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from locseg_cli.main import cli

from locseg.errors import InputError
from locseg.geometry.camera import Camera
from locseg.io.correspondences import iter_correspondence_files, read_correspondences
from locseg.synth.raycast import CameraRays
from locseg.synth.sky_pairs import (
    SKY_FOLDER,
    SkyPairConfig,
    add_sky_pairs,
    sky_pair_precision,
    sky_points,
)
from locseg.synth.trajectory import View, look_pose

CAMERA = Camera.from_params("PINHOLE", 128, 96, [100.0, 100.0, 64.0, 48.0])


def _view(name: str, centre, yaw: float, pitch: float = 0.0) -> View:
    return View(name, name.split("/")[0], CAMERA, look_pose(np.asarray(centre, float), yaw, pitch))


def _rays() -> dict:
    return {CAMERA.to_string(): CameraRays.of(CAMERA)}


def test_sky_maps_by_the_rotation_alone():
    """All sky, no surface: every grid point maps by K R_q R_r^T K^-1, whatever the baseline."""
    reference = _view("reference/cam0/0.png", (0, 0, 1.5), 0.0)
    query = _view("night/cam1/0.png", (0.7, 2.0, 1.6), 4.0, 2.0)
    depth = np.zeros((96, 128), np.float32)
    config = SkyPairConfig(stride=8, margin=0, guard=0)
    uv_ref, uv_query = sky_points(reference, depth, query, _rays(), config)
    assert len(uv_ref) > 100 and np.all(uv_ref[:2, 1] == 4.5)       # the stride-8 grid, pixel centres
    K = CAMERA.K().double().numpy()
    R = query.T_cam_from_world.R.double().numpy() @ reference.T_cam_from_world.R.double().numpy().T
    mapped = np.c_[uv_ref, np.ones(len(uv_ref))] @ (K @ R @ np.linalg.inv(K)).T
    np.testing.assert_allclose(uv_query, mapped[:, :2] / mapped[:, 2:], atol=1e-3)
    same, same_query = sky_points(reference, depth, reference, _rays(), config)
    np.testing.assert_allclose(same_query, same, atol=1e-4)  # float32 rays


def test_surfaces_in_front_of_the_sky_are_guarded():
    """A wall 4 m ahead fills the reference's left half; the query stands 1 m to the left,
    where the wall's edge moves 25 pixels right, over sky that the reference sees: those
    sky points are dropped, and with a guard of g pixels, those within g of the edge too."""
    reference = _view("reference/cam0/0.png", (0, 0, 1.5), 0.0)
    query = _view("night/cam1/0.png", (0, 1.0, 1.5), 0.0)   # yaw 0 looks along +x; +y is to the left
    depth = np.zeros((96, 128), np.float32)
    depth[:, :64] = 4.0
    wall_edge_in_query = 64 + 100 * 1.0 / 4.0
    for guard in (0, 6):
        uv_ref, uv_query = sky_points(reference, depth, query, _rays(), SkyPairConfig(2, 0, guard))
        columns = np.arange(65, 128, 2) + 0.5               # the stride-2 grid's sky columns
        assert sorted(set(uv_ref[:, 0])) == list(columns[columns > wall_edge_in_query + guard])
        np.testing.assert_allclose(uv_query, uv_ref, atol=1e-3)           # no rotation: x_q = x_r


def test_the_margin_keeps_points_off_the_sky_edge_but_not_off_the_image_border():
    reference = _view("reference/cam0/0.png", (0, 0, 1.5), 0.0)
    depth = np.zeros((96, 128), np.float32)
    depth[60:, :] = 5.0                                   # sky above row 60
    uv_ref, _ = sky_points(reference, depth, reference, _rays(), SkyPairConfig(1, 4, 0))
    rows, cols = uv_ref[:, 1] - 0.5, uv_ref[:, 0] - 0.5
    assert rows.min() == 0 and rows.max() == 55 and cols.min() == 0 and cols.max() == 127
    assert len(uv_ref) == 56 * 128


@pytest.fixture(scope="module")
def street_with_sky(small_street, tmp_path_factory):
    street = tmp_path_factory.mktemp("sky") / "street"
    shutil.copytree(small_street, street)
    return street, add_sky_pairs(street)


def test_sky_points_land_on_the_query_sky(street_with_sky):
    street, record = street_with_sky
    assert json.loads((street / "synth.json").read_text())["sky_pairs"] == record
    precision = sky_pair_precision(street)
    hits, total = map(sum, zip(*precision.values()))
    assert total == record["points"] > 1000 and len(precision) >= 5
    assert hits / total > 0.99


def test_each_pair_keeps_its_own_points_first(street_with_sky):
    street, record = street_with_sky
    files = sorted(iter_correspondence_files(street / SKY_FOLDER))
    assert [f.name for f in files] == sorted(f.name for f in iter_correspondence_files(street / "correspondences"))
    assert len(files) == record["pairs"]
    for path in files[:5]:
        own, with_sky = read_correspondences(street / "correspondences" / path.name), read_correspondences(path)
        assert (with_sky.image_i, with_sky.image_j) == (own.image_i, own.image_j)
        np.testing.assert_array_equal(with_sky.points_j[: len(own)], own.points_j)
        np.testing.assert_array_equal(with_sky.dist_from_center[len(own):], 0)


def test_a_recorded_folder_is_kept_and_bad_streets_refused(street_with_sky, tmp_path):
    street, record = street_with_sky
    stamp = (street / SKY_FOLDER).stat().st_mtime_ns
    assert add_sky_pairs(street) == record and (street / SKY_FOLDER).stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="not a SynthSeasons street"):
        add_sky_pairs(tmp_path)


def test_overwrite_and_other_streets(small_street, tmp_path):
    street = tmp_path / "street"
    shutil.copytree(small_street, street)
    first = add_sky_pairs(street, SkyPairConfig(stride=6))
    again = add_sky_pairs(street, SkyPairConfig(stride=3), overwrite=True)
    assert again["stride"] == 3 and again["points"] > 3 * first["points"]
    assert not list(street.glob(".*partial"))
    depth = street / "depth/reference/cam0/000000.npy"      # a street another generator made
    np.save(depth, np.load(depth) * 1.1)
    with pytest.raises(InputError, match="another SynthSeasons scene generator"):
        add_sky_pairs(street, overwrite=True)
    assert json.loads((street / "synth.json").read_text()).get("sky_pairs") == again


def test_cli(small_street, tmp_path):
    street = tmp_path / "street"
    shutil.copytree(small_street, street)
    result = CliRunner().invoke(cli, ["synth-sky-pairs", str(street), "--stride", "6"])
    assert result.exit_code == 0, result.output
    assert "sky points added" in result.output and (street / SKY_FOLDER).is_dir()
    assert json.loads((street / "synth.json").read_text())["sky_pairs"]["stride"] == 6
