"""COLMAP helpers: build → write → read keeps poses, cameras and observations."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from locseg.errors import FormatError, InputError, ShapeError
from locseg.geometry import Camera, Pose
from locseg.io.colmap import (
    ImageSpec,
    PointSpec,
    build_reconstruction,
    camera_of_image,
    image_poses,
    model_cameras,
    read_model,
)

CAMERAS = {
    1: "PINHOLE 640 480 500 510 320 240",
    2: "SIMPLE_RADIAL 1024 768 800 512 384 -0.05",
    5: "OPENCV 800 600 600 610 400 300 0.01 -0.02 0.001 0.002",
}


def random_scene(n_images=6, n_points=40, track_length=3, seed=0):
    rng = np.random.default_rng(seed)
    cameras = {cid: Camera.from_string(s) for cid, s in CAMERAS.items()}
    camera_ids = list(cameras)
    n_obs = np.zeros(n_images, dtype=int)
    tracks = []
    for _ in range(n_points):
        images = rng.choice(n_images, track_length, replace=False)
        tracks.append([(int(i) + 10, int(n_obs[i])) for i in images])
        n_obs[images] += 1
    images = []
    for i in range(n_images):
        q = rng.normal(size=4)
        pose = Pose.from_qt(q / np.linalg.norm(q), rng.normal(size=3))
        extra = 3  # keypoints without a 3D point
        points2D = rng.uniform(0, 480, (n_obs[i] + extra, 2))
        images.append(ImageSpec(i + 10, f"db/{i:04d}.jpg", camera_ids[i % 3], pose, points2D))
    points = [PointSpec(rng.normal(size=3), rng.integers(0, 256, 3), track) for track in tracks]
    return cameras, images, points


def assert_same_model(rec: pycolmap.Reconstruction, cameras, images, points):
    assert rec.num_cameras() == len(cameras)
    for cid, camera in model_cameras(rec).items():
        assert camera.model == cameras[cid].model
        assert (camera.width, camera.height) == (cameras[cid].width, cameras[cid].height)
        np.testing.assert_allclose(np.asarray(camera.params), np.asarray(cameras[cid].params))
    poses = image_poses(rec)
    assert list(poses) == [spec.name for spec in images]
    for spec in images:
        dt, dr = poses[spec.name].error(spec.cam_from_world)
        assert float(dt) < 1e-9 and float(dr) < 1e-6
        image = rec.images[spec.image_id]
        assert image.camera_id == spec.camera_id
        np.testing.assert_allclose([p.xy for p in image.points2D], spec.points2D)
    assert rec.num_points3D() == len(points)
    for point_id, spec in zip(sorted(rec.points3D), points):
        point = rec.points3D[point_id]
        np.testing.assert_allclose(point.xyz, spec.xyz)
        np.testing.assert_array_equal(point.color, spec.rgb)
        observed = sorted((e.image_id, e.point2D_idx) for e in point.track.elements)
        assert observed == sorted(spec.track)
        for image_id, idx in observed:
            assert rec.images[image_id].points2D[idx].point3D_id == point_id


@pytest.mark.parametrize("text", [False, True])
def test_build_write_read_round_trip(tmp_path, text):
    cameras, images, points = random_scene()
    rec = build_reconstruction(cameras, images, points)
    assert_same_model(rec, cameras, images, points)
    (rec.write_text if text else rec.write)(tmp_path)
    read = read_model(tmp_path)
    assert_same_model(read, cameras, images, points)


def test_reads_model_without_rigs_and_frames(tmp_path):
    """Models written before COLMAP 3.12 have only cameras, images and points3D."""
    cameras, images, points = random_scene(seed=1)
    build_reconstruction(cameras, images, points).write(tmp_path)
    for name in ("rigs.bin", "frames.bin"):
        (tmp_path / name).unlink()
    assert_same_model(read_model(tmp_path), cameras, images, points)


def test_camera_of_image():
    cameras, images, points = random_scene()
    rec = build_reconstruction(cameras, images, points)
    camera = camera_of_image(rec, images[2].name)
    assert camera.to_string() == cameras[images[2].camera_id].to_string()
    with pytest.raises(InputError, match="no image named 'db/nope.jpg'"):
        camera_of_image(rec, "db/nope.jpg")


def test_read_model_refuses_incomplete_directory(tmp_path):
    with pytest.raises(FormatError, match="found none of them"):
        read_model(tmp_path)
    (tmp_path / "cameras.bin").write_bytes(b"")
    (tmp_path / "images.txt").write_text("")
    with pytest.raises(FormatError, match=r"found cameras\.bin, images\.txt"):
        read_model(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        read_model(tmp_path / "cameras.bin")


def test_read_model_reports_corrupt_files(tmp_path):
    for name in ("cameras", "images", "points3D"):
        (tmp_path / f"{name}.bin").write_bytes(b"\x07")
    with pytest.raises(FormatError, match="pycolmap cannot read"):
        read_model(tmp_path)


def test_build_refuses_bad_input():
    cameras, images, points = random_scene()
    first = points[0]
    twice = PointSpec(first.xyz, first.rgb, [first.track[0]])
    with pytest.raises(InputError, match="observed by two 3D points"):
        build_reconstruction(cameras, images, [*points, twice])
    with pytest.raises(InputError, match="image id 99"):
        build_reconstruction(cameras, images, [PointSpec(first.xyz, first.rgb, [(99, 0)])])
    with pytest.raises(InputError, match="keypoint 1000"):
        build_reconstruction(cameras, images, [PointSpec(first.xyz, first.rgb, [(10, 1000)])])
    with pytest.raises(InputError, match="camera id 7"):
        build_reconstruction(cameras, [images[0]._replace(camera_id=7)], [])
    with pytest.raises(InputError, match="repeated"):
        build_reconstruction(cameras, [images[0], images[0]], [])
    with pytest.raises(ShapeError, match="points2D"):
        build_reconstruction(cameras, [images[0]._replace(points2D=np.zeros((4, 3)))], [])
    with pytest.raises(InputError, match="colours"):
        build_reconstruction(cameras, images, [PointSpec(first.xyz, [0, 300, 0], [])])
