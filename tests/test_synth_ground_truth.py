"""A generated SynthSeasons street is consistent with its own ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from locseg.geometry import Pose
from locseg.io.colmap import image_poses, read_model
from locseg.io.correspondences import iter_correspondence_files, read_correspondences
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.synth.scene import SKY
from locseg.synth.trajectory import MAX_HEADING, MAX_LATERAL
from locseg.synth.validate import correspondence_errors, reprojection_errors


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
    agreement = reprojection_errors(small_street)
    assert agreement.items > 1000 and agreement.errors.max() < 0.5


def test_reference_points_lie_on_seen_surfaces(small_street):
    model = read_model(small_street / "reference/model")
    poses = image_poses(model)
    for image in model.images.values():
        observed = np.array([p.xy for p in image.points2D if p.has_point3D()])
        xyz = np.array([model.point3D(p.point3D_id).xyz for p in image.points2D if p.has_point3D()])
        depth = np.load(small_street / "depth" / image.name.replace(".png", ".npy"))
        labels = np.asarray(Image.open(small_street / "labels" / image.name))
        pixel = observed.astype(int)
        assert (labels[pixel[:, 1], pixel[:, 0]] != SKY).all(), "a 3D point lies on the sky"
        z = poses[image.name].transform(xyz).numpy()[:, 2]
        assert np.median(np.abs(depth[pixel[:, 1], pixel[:, 0]] - z) / z) < 0.01


def test_correspondences_agree_with_depth_and_poses(small_street):
    agreement = correspondence_errors(small_street)
    assert agreement.items >= 20 and len(agreement.errors) > 10_000
    assert agreement.errors.max() < 1.0


def test_correspondence_pairs_are_reference_to_condition(small_street):
    poses = read_poses(small_street / "ground_truth/reference.txt")
    for path in iter_correspondence_files(small_street / "correspondences"):
        pair = read_correspondences(path)
        assert pair.image_i.startswith("reference/") and not pair.image_j.startswith("reference/")
        assert len(pair) > 100
        # dist_from_center is the 3D gap of the match, below kappa = 1 % of the point's distance.
        assert (pair.dist_from_center >= 0).all() and pair.dist_from_center.max() < 0.01 * 200
        assert np.median(pair.dist_from_center) < 0.2
        assert pair.image_i in poses


def test_queries_are_offset_from_the_reference_track(small_street):
    reference = read_poses(small_street / "ground_truth/reference.txt")
    queries = read_poses(small_street / "ground_truth/queries.txt")
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
    assert len(model_cameras) >= 3


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
