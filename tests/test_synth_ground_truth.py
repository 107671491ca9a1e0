"""A generated SynthSeasons street is consistent with its own ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from locseg.geometry import Camera, Pose
from locseg.io.colmap import camera_of_image, image_poses, read_model
from locseg.io.correspondences import iter_correspondence_files, read_correspondences
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.synth.scene import SKY
from locseg.synth.trajectory import MAX_HEADING, MAX_LATERAL


def test_layout(small_street):
    summary = json.loads((small_street / "synth.json").read_text())
    conditions = summary["conditions"]
    assert {"night", "night-rain", "snow"} <= set(conditions) and len(conditions) >= 6
    assert len(list((small_street / "images/reference/cam0").glob("*.png"))) == summary["reference_images"]
    queries = read_query_list(small_street / "queries/all.txt")
    assert len(queries) == summary["queries"] == 3 * len(conditions)
    for condition in conditions:
        assert len(read_query_list(small_street / f"queries/{condition}.txt")) == 3
    for name, camera in queries:
        image = Image.open(small_street / "images" / name)
        assert image.size == (int(camera.width), int(camera.height)) and image.mode == "RGB"
        labels = np.asarray(Image.open(small_street / "labels" / name))
        assert labels.shape == image.size[::-1] and set(np.unique(labels)) <= set(range(19)) | {255}
        depth = np.load(small_street / "depth" / name.replace(".png", ".npy"))
        assert depth.dtype == np.float32 and ((depth > 0) == (labels != SKY)).all()
    assert (small_street / "contact_sheet.png").is_file()
    assert set(read_poses(small_street / "ground_truth/queries.txt")) == {n for n, _ in queries}


def test_reference_points_project_onto_their_observations(small_street):
    model = read_model(small_street / "reference/model")
    poses = image_poses(model)
    assert model.num_points3D() > 1000
    errors, depth_errors = [], []
    for image in model.images.values():
        camera = camera_of_image(model, image.name)
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        observed = np.array([p.xy for p in image.points2D if p.has_point3D()])
        xyz = np.array([model.point3D(i).xyz for i in ids])
        p_cam = poses[image.name].transform(xyz)
        uv, valid = camera.project(p_cam)
        assert valid.all()
        errors.append(np.linalg.norm(uv.numpy() - observed, axis=1))
        depth = np.load(small_street / "depth" / image.name.replace(".png", ".npy"))
        labels = np.asarray(Image.open(small_street / "labels" / image.name))
        pixel = observed.astype(int)
        assert (labels[pixel[:, 1], pixel[:, 0]] != SKY).all(), "a 3D point lies on the sky"
        depth_errors.append(np.abs(depth[pixel[:, 1], pixel[:, 0]] - p_cam[:, 2].numpy()) / p_cam[:, 2].numpy())
    assert np.concatenate(errors).max() < 0.5
    assert np.median(np.concatenate(depth_errors)) < 0.01


def _inverse_depth_at(depth: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear inverse depth at COLMAP pixel coordinates, and where it is smooth.

    Inverse depth is affine in the image over a plane seen by a pinhole camera, so
    its bilinear interpolation is exact there; near depth edges it is not, and those
    points are left out of the check.
    """
    inverse = np.where(depth > 0, 1 / np.maximum(depth, 1e-6), 0)
    u, v = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    c0 = np.clip(np.floor(u).astype(int), 0, depth.shape[1] - 2)
    r0 = np.clip(np.floor(v).astype(int), 0, depth.shape[0] - 2)
    fu, fv = u - c0, v - r0
    q = np.stack([inverse[r0, c0], inverse[r0, c0 + 1], inverse[r0 + 1, c0], inverse[r0 + 1, c0 + 1]], 1)
    value = q[:, 0] * (1 - fu) * (1 - fv) + q[:, 1] * fu * (1 - fv) + q[:, 2] * (1 - fu) * fv + q[:, 3] * fu * fv
    return value, (q.min(1) > 0) & (q.max(1) < 1.02 * q.min(1))


def test_correspondences_agree_with_depth_and_poses(small_street):
    poses = {**read_poses(small_street / "ground_truth/queries.txt"),
             **read_poses(small_street / "ground_truth/reference.txt")}
    cameras = dict(read_query_list(small_street / "queries/all.txt"))
    model = read_model(small_street / "reference/model")
    files = list(iter_correspondence_files(small_street / "correspondences"))
    assert len(files) >= 20
    checked = 0
    for path in files:
        pair = read_correspondences(path)
        assert pair.image_i.startswith("reference/") and not pair.image_j.startswith("reference/")
        assert len(pair) > 100
        depth = np.load(small_street / "depth" / pair.image_i.replace(".png", ".npy"))
        inverse, smooth = _inverse_depth_at(depth, pair.points_i)
        rays = camera_of_image(model, pair.image_i).unproject(pair.points_i[smooth]).numpy()
        world = poses[pair.image_i].inv().transform(rays / inverse[smooth, None])
        uv, valid = cameras[pair.image_j].project(poses[pair.image_j].transform(world))
        error = np.linalg.norm(uv.numpy() - pair.points_j[smooth], axis=1)
        assert valid.all() and error.max() < 1.0, path.name
        centre = poses[pair.image_i].center.numpy()
        assert np.allclose(np.linalg.norm(world.numpy() - centre, axis=1), pair.dist_from_center[smooth], rtol=0.02)
        checked += smooth.sum()
    assert checked > 10_000


def test_queries_are_offset_from_the_reference_track(small_street):
    reference = read_poses(small_street / "ground_truth/reference.txt")
    queries = read_poses(small_street / "ground_truth/queries.txt")
    ref_camera = Camera.from_string(next(iter(read_query_list(small_street / "queries/all.txt")))[1].to_string())
    lateral, heading = [], []
    for pose in queries.values():
        forward = pose.R[2].numpy()  # the camera's z axis in world coordinates
        heading.append(np.degrees(np.arctan2(forward[1], forward[0])))
        lateral.append(pose.center.numpy()[1])
    lateral, heading = np.array(lateral), np.array(heading)
    assert np.abs(lateral).max() <= MAX_LATERAL and np.abs(heading).max() <= MAX_HEADING + 0.5
    assert np.abs(lateral).max() > 0.5 and np.abs(heading).max() > 5
    ref_centres = np.stack([p.center.numpy() for p in reference.values()])
    assert np.abs(ref_centres[:, 1]).max() < 0.3  # the reference drives down the middle
    model_cameras = {c.model for _, c in read_query_list(small_street / "queries/all.txt")}
    assert len(model_cameras) >= 3 and ref_camera is not None


@pytest.mark.parametrize("dark", ["night", "night-rain"])
def test_night_is_darker_than_the_day(small_street, dark):
    def brightness(condition: str) -> float:
        files = sorted((small_street / "images" / condition).glob("*/*.png"))
        return float(np.mean([np.asarray(Image.open(f), np.float32).mean() for f in files]))

    assert brightness(dark) < 0.5 * brightness("reference")
    assert brightness(dark) < 0.5 * brightness("sun")


def test_pose_files_are_cam_from_world(small_street):
    """A point in front of a reference camera has positive depth under its pose."""
    model = read_model(small_street / "reference/model")
    poses = read_poses(small_street / "ground_truth/reference.txt")
    for name, pose in image_poses(model).items():
        assert np.allclose(pose.matrix().numpy(), poses[name].matrix().numpy(), atol=1e-9)
    point = next(iter(model.points3D.values()))
    image = model.image(point.track.elements[0].image_id)
    assert isinstance(poses[image.name], Pose)
    assert poses[image.name].transform(point.xyz).numpy()[2] > 0
