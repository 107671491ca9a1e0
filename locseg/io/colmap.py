"""COLMAP models, through pycolmap.

locseg never parses COLMAP files itself: pycolmap reads and writes them. This module
only checks that a directory holds a model before pycolmap is asked to read it,
converts between pycolmap's types and locseg's ``Pose`` and ``Camera``, and builds a
``pycolmap.Reconstruction`` from plain arrays (the reference map that SynthSeasons
and the triangulation step produce).

Poses are ``cam_from_world``, as in COLMAP. 2D observations are COLMAP pixel
coordinates: the centre of the top-left pixel is (0.5, 0.5).

Example::

    >>> rec = read_model("sfm/")
    >>> T_cam_from_world = image_poses(rec)["db/0001.jpg"]
    >>> camera = camera_of_image(rec, "db/0001.jpg")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pycolmap

from locseg.errors import FormatError, InputError, ShapeError
from locseg.geometry import Camera, Pose

MODEL_FILES = ("cameras", "images", "points3D")


class ImageSpec(NamedTuple):
    """One image of a model to build.

    Attributes:
        image_id: positive, unique in the model.
        name: image path relative to the image root, unique in the model.
        camera_id: key of its camera in the ``cameras`` given alongside.
        cam_from_world: the image's unbatched pose.
        points2D: (M, 2) keypoints (x, y) in COLMAP pixel coordinates; a point's track
            refers to them by their row index.
    """

    image_id: int
    name: str
    camera_id: int
    cam_from_world: Pose
    points2D: np.ndarray


class PointSpec(NamedTuple):
    """One 3D point of a model to build.

    Attributes:
        xyz: (3,) position in the world frame.
        rgb: (3,) colour, integers in [0, 255].
        track: its observations, ``(image_id, point2D_idx)`` pairs.
    """

    xyz: np.ndarray
    rgb: Sequence[int] | np.ndarray
    track: Sequence[tuple[int, int]]


def read_model(path: str | Path) -> pycolmap.Reconstruction:
    """Read a COLMAP model directory (binary preferred, as COLMAP does).

    Raises:
        InputError: ``path`` is not a directory.
        FormatError: the directory holds neither all of ``cameras``, ``images`` and
            ``points3D`` as ``.bin`` nor all of them as ``.txt``, or pycolmap cannot
            read them.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a directory (a COLMAP model is a directory)")
    complete = [ext for ext in (".bin", ".txt") if all((path / f"{n}{ext}").is_file() for n in MODEL_FILES)]
    if not complete:
        present = sorted(p.name for p in path.iterdir() if p.stem in MODEL_FILES)
        raise FormatError(
            path,
            "not a COLMAP model: expected cameras, images and points3D, all .bin or all .txt; "
            f"found {', '.join(present) or 'none of them'}",
        )
    try:
        return pycolmap.Reconstruction(path)
    except Exception as err:  # pycolmap raises several types for corrupt files
        raise FormatError(path, f"pycolmap cannot read the {complete[0]} model: {err}") from err


def image_poses(reconstruction: pycolmap.Reconstruction) -> dict[str, Pose]:
    """``{image name: cam_from_world}`` of every image with a pose, by image id."""
    poses = {}
    for image_id in sorted(reconstruction.images):
        image = reconstruction.images[image_id]
        if image.has_pose:
            poses[image.name] = Pose.from_colmap(image.cam_from_world())
    return poses


def model_cameras(reconstruction: pycolmap.Reconstruction) -> dict[int, Camera]:
    """``{camera_id: Camera}`` of every camera of the model."""
    return {cid: Camera.from_colmap(cam) for cid, cam in sorted(reconstruction.cameras.items())}


def camera_of_image(reconstruction: pycolmap.Reconstruction, name: str) -> Camera:
    """The camera of the image called ``name``.

    Raises:
        InputError: no image of the model has that name.
    """
    image = reconstruction.find_image_with_name(name)
    if image is None:
        raise InputError(f"no image named {name!r} in the model ({reconstruction.num_images()} images)")
    return Camera.from_colmap(reconstruction.cameras[image.camera_id])


def build_reconstruction(
    cameras: Mapping[int, Camera],
    images: Sequence[ImageSpec],
    points3D: Sequence[PointSpec],
) -> pycolmap.Reconstruction:
    """Build a COLMAP model from cameras, posed images with keypoints, and 3D points.

    Every image gets a trivial rig and frame (COLMAP ≥ 3.12 models are organised in
    rigs and frames) and is registered with its pose. 3D points get ids 1, 2, ... in
    the order given, and each observation links the image's keypoint to the point.

    Args:
        cameras: ``{camera_id: Camera}``, ids positive.
        images: the images, see :class:`ImageSpec`.
        points3D: the points, see :class:`PointSpec`.

    Returns:
        The reconstruction, ready for ``write`` or for localization.

    Raises:
        InputError: an id is repeated or unknown, a name repeated, an observation
            refers to a keypoint that does not exist or that another point already
            uses, or a colour is out of range.
        ShapeError: ``points2D``, ``xyz`` or ``rgb`` has the wrong shape.
    """
    rec = pycolmap.Reconstruction()
    for camera_id, camera in cameras.items():
        if int(camera_id) < 1:
            raise InputError(f"camera id {camera_id} is not positive")
        rec.add_camera_with_trivial_rig(camera.to_colmap(camera_id=int(camera_id)))
    observed = _add_images(rec, images)
    xyz, rgb = _point_arrays(points3D)
    for index, spec in enumerate(points3D):
        track = pycolmap.Track()
        for image_id, point2D_idx in spec.track:
            _claim(observed, index, image_id, point2D_idx)
            track.add_element(image_id, point2D_idx)
        rec.add_point3D(xyz[index], track, rgb[index])
    return rec


def _add_images(rec: pycolmap.Reconstruction, images: Sequence[ImageSpec]) -> dict[int, np.ndarray]:
    """Add the images; return ``{image_id: (M,) bool}``, which keypoints are taken."""
    observed: dict[int, np.ndarray] = {}
    names: set[str] = set()
    for spec in images:
        image_id = int(spec.image_id)
        if image_id < 1 or image_id in observed:
            raise InputError(f"image id {spec.image_id} of {spec.name!r} is repeated or not positive")
        if spec.name in names:
            raise InputError(f"image name {spec.name!r} is repeated")
        if not rec.exists_camera(int(spec.camera_id)):
            raise InputError(f"image {spec.name!r} has camera id {spec.camera_id}, not among the cameras")
        points2D = np.asarray(spec.points2D, dtype=np.float64)
        if points2D.size == 0:
            points2D = points2D.reshape(0, 2)
        if points2D.ndim != 2 or points2D.shape[1] != 2:
            raise ShapeError(f"points2D of image {spec.name!r} has shape {points2D.shape}, expected (M, 2)")
        image = pycolmap.Image(
            name=spec.name, keypoints=points2D, camera_id=int(spec.camera_id), image_id=image_id
        )
        rec.add_image_with_trivial_frame(image, spec.cam_from_world.to_colmap())
        observed[image_id] = np.zeros(len(points2D), dtype=bool)
        names.add(spec.name)
    return observed


def _point_arrays(points3D: Sequence[PointSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Stack and check the positions (P, 3) float64 and colours (P, 3) uint8."""
    if not points3D:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
    xyz = np.asarray([p.xyz for p in points3D], dtype=np.float64)
    rgb = np.asarray([p.rgb for p in points3D])
    if xyz.shape != (len(points3D), 3):
        raise ShapeError(f"point positions stack to shape {xyz.shape}, expected ({len(points3D)}, 3)")
    if rgb.shape != (len(points3D), 3):
        raise ShapeError(f"point colours stack to shape {rgb.shape}, expected ({len(points3D)}, 3)")
    if not np.isfinite(xyz).all():
        raise InputError(f"point {int(np.argwhere(~np.isfinite(xyz))[0, 0])} has a non-finite position")
    if rgb.min() < 0 or rgb.max() > 255:
        raise InputError("point colours must be integers in [0, 255]")
    return xyz, rgb.astype(np.uint8)


def _claim(observed: dict[int, np.ndarray], point: int, image_id: int, point2D_idx: int) -> None:
    """Mark keypoint ``point2D_idx`` of image ``image_id`` as observing ``point``."""
    taken = observed.get(image_id)
    if taken is None:
        raise InputError(f"point {point} is observed in image id {image_id}, which is not among the images")
    if not 0 <= point2D_idx < len(taken):
        raise InputError(
            f"point {point} is observed at keypoint {point2D_idx} of image {image_id}, which has {len(taken)}"
        )
    if taken[point2D_idx]:
        raise InputError(f"keypoint {point2D_idx} of image {image_id} is observed by two 3D points")
    taken[point2D_idx] = True
