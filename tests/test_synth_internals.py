"""SynthSeasons building blocks: noise, ray casting, traversal changes, matching."""

from __future__ import annotations

import numpy as np
import pytest

from locseg.errors import InputError
from locseg.geometry import Camera
from locseg.synth import raycast
from locseg.synth.conditions import get_condition
from locseg.synth.cross_condition import Cloud, mutual_matches
from locseg.synth.generate import SynthConfig, generate, plan_street
from locseg.synth.noise import fbm, value_noise
from locseg.synth.raycast import CameraRays, cast
from locseg.synth.render import render, traversal_seed
from locseg.synth.scene import CAR, DYNAMIC_KEY_BASE, Primitives
from locseg.synth.shading import _lamp_states
from locseg.synth.trajectory import View, look_pose


@pytest.fixture(scope="module")
def street():
    return plan_street(SynthConfig(seed=3, split="test", size="small"))


def test_value_noise_is_continuous_across_cells():
    u = np.linspace(0, 6, 6001)
    for a, b in ((u, np.full_like(u, 2.3)), (np.full_like(u, 2.3), u)):
        assert np.abs(np.diff(value_noise(a, b, 7))).max() < 2e-3


def test_textures_do_not_repeat_along_the_street():
    x = np.arange(0, 200, 0.02)
    signal = fbm(x, np.full_like(x, 1.0), seed=5, scale=2.0, octaves=5)
    window = 500  # 10 m
    head = signal[:window] - signal[:window].mean()
    for start in range(window, len(x) - window, 50):
        other = signal[start:start + window] - signal[start:start + window].mean()
        assert abs(np.corrcoef(head, other)[0, 1]) < 0.8


def test_wall_depth_is_z_depth():
    """A wall 10 m ahead is at z-depth 10 in every pixel that sees it, edges included."""
    prims = Primitives(np.array([False]), np.array([[10.0, -50, -50]]), np.array([[11.0, 50, 50]]),
                       np.array([3], np.int16), np.array([2], np.uint8), np.array([1]), np.zeros((1, 8), np.float32))
    camera = Camera.from_params("OPENCV", 64, 48, [40, 41, 32, 24, -0.05, 0.01, 0.001, -0.001])
    gbuf = cast(prims, CameraRays.of(camera), look_pose(np.zeros(3), yaw=0.0))
    assert (gbuf.prim == 0).all()
    np.testing.assert_allclose(gbuf.depth, 10.0, rtol=1e-5)
    np.testing.assert_allclose(gbuf.normal[..., 0], -1.0)


def test_pixel_windows_lose_no_pixel(street, monkeypatch):
    """Casting with conservative windows equals casting every primitive everywhere."""
    view = street.queries["snow"][1]  # an OPENCV camera, turned and offset
    rays = CameraRays.of(view.camera)
    prims = street.scene.primitives(traversal_seed(street.scene, "snow"))
    windowed = cast(prims, rays, view.T_cam_from_world)
    height, width = rays.directions.shape[:2]
    everywhere = np.tile([0, height, 0, width], (len(prims), 1))
    monkeypatch.setattr(raycast, "_pixel_windows", lambda *args: everywhere)
    brute = cast(prims, rays, view.T_cam_from_world)
    assert (windowed.prim == brute.prim).all()
    np.testing.assert_allclose(windowed.depth, brute.depth, rtol=1e-4)  # BLAS sums blocks in any order


def test_rendering_is_deterministic(street):
    view = street.queries["night"][0]
    first, second = render(street.scene, view), render(street.scene, view)
    assert np.array_equal(first.image, second.image) and np.array_equal(first.depth, second.depth)
    again = plan_street(SynthConfig(seed=3, split="test", size="small"))
    assert np.allclose(again.queries["night"][0].T_cam_from_world.data, view.T_cam_from_world.data)


def test_another_light_keeps_the_geometry_of_the_traversal(street):
    view = street.queries["night"][0]
    plain, relit = render(street.scene, view), render(street.scene, view, light="reference")
    assert np.array_equal(plain.depth, relit.depth) and np.array_equal(plain.keys, relit.keys)
    assert np.abs(plain.image.astype(int) - relit.image.astype(int)).mean() > 10   # night lit as by day
    same = render(street.scene, view, light="night")
    assert np.array_equal(same.image, plain.image)


def test_train_and_test_streets_differ():
    train, test = (plan_street(SynthConfig(seed=0, split=s, size="small")) for s in ("train", "test"))
    assert train.config.street_seed != test.config.street_seed
    n = min(len(train.scene.static), len(test.scene.static))
    assert not np.allclose(train.scene.static.lo[:n], test.scene.static.lo[:n])


def test_parked_cars_move_between_traversals(street):
    def car_keys(condition: str) -> set[int]:
        prims = street.scene.primitives(traversal_seed(street.scene, condition))
        return set(prims.key[(prims.label == CAR)].tolist())

    reference, night = car_keys("reference"), car_keys("night")
    assert reference & night, "some cars stay where they were"
    assert reference - night and night - reference, "some cars moved, left or arrived"
    assert all(key >= DYNAMIC_KEY_BASE for key in reference | night)


def test_lamps_and_windows_differ_between_night_traversals(street):
    scene = street.scene
    night, rain = (traversal_seed(scene, c) for c in ("night", "night-rain"))
    on_night = _lamp_states(scene, get_condition("night"), night)[0] > 0
    on_rain = _lamp_states(scene, get_condition("night-rain"), rain)[0] > 0
    assert on_night.any() and on_rain.any() and (on_night != on_rain).any()


def test_moved_objects_yield_no_matches():
    rng = np.random.default_rng(0)
    wall = np.c_[np.zeros(400), rng.uniform(0, 10, 400), rng.uniform(0, 3, 400)]
    car = np.c_[rng.uniform(2, 6, 200), np.full(200, 5.0), rng.uniform(0, 1.5, 200)]
    reference = Cloud(np.r_[wall, car], np.r_[np.ones(400, int), np.full(200, DYNAMIC_KEY_BASE + 1)])
    # The car moved 0.4 m along its own side: its surface points still lie close together.
    other = Cloud(np.r_[wall + 0.001, car + [0.4, 0, 0]], np.r_[np.ones(400, int), np.full(200, DYNAMIC_KEY_BASE + 5)])
    i, j = mutual_matches(reference, other)
    assert len(i) > 350 and (i < 400).all() and (j < 400).all()


def test_generate_skips_finished_streets_and_protects_other_directories(small_street, tmp_path):
    stamp = (small_street / "synth.json").stat().st_mtime_ns
    assert generate(small_street, seed=0, split="test", size="small") == small_street
    assert (small_street / "synth.json").stat().st_mtime_ns == stamp
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a SynthSeasons street"):
        generate(tmp_path, size="small")
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="split"):
        plan_street(SynthConfig(split="validation"))


def test_view_names_follow_the_layout(street):
    assert street.reference[0].name == "reference/cam0/000000.png"
    assert all(isinstance(v, View) and v.name.startswith(f"{c}/") for c, vs in street.queries.items() for v in vs)


def test_frames_do_not_share_their_sensor_noise(street):
    """Two frames seen from the same pose differ by their noise, even when their names
    are anagrams of each other (000012, 000021)."""
    view = street.queries["night"][0]
    first, second = (render(street.scene, View(f"night/cam1/{frame}.png", "night", view.camera,
                                                view.T_cam_from_world)).image for frame in ("000012", "000021"))
    difference = first.astype(np.int16) - second.astype(np.int16)
    assert np.abs(difference).mean() > 1.0


def test_worker_count_does_not_change_the_street(tmp_path):
    import torch

    threads = torch.get_num_threads()
    one = generate(tmp_path / "one", size="small", seed=1, workers=1)
    assert torch.get_num_threads() == threads, "generate changed the caller's torch settings"
    two = generate(tmp_path / "two", size="small", seed=1, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        if name.suffix in (".png", ".npy", ".mat", ".json"):
            assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_overwrite_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "street"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    generate(target, size="small", seed=2, overwrite=True)
    assert not (target / "stale.txt").exists() and (target / "synth.json").is_file()
    assert not (tmp_path / "street.old").exists() and not (tmp_path / "street.partial").exists()
