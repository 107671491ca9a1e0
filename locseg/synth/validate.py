"""Checks that a generated street agrees with its own ground truth.

Both checks read only the files a user gets (images' depth maps, poses, intrinsics,
the COLMAP model, the correspondence files), so they validate what was written,
not the generator's internal state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.colmap import camera_of_image, image_poses, read_model
from ..io.correspondences import iter_correspondence_files, read_correspondences
from ..io.poses import read_poses
from ..io.queries import read_query_list
from .raycast import lift


@dataclass
class Agreement:
    """Pixel errors (N,) of a check, and how many items they came from."""

    errors: np.ndarray
    items: int

    def summary(self) -> dict[str, float]:
        return {"count": len(self.errors), "items": self.items, "median_px": float(np.median(self.errors)),
                "p99_px": float(np.percentile(self.errors, 99)), "max_px": float(self.errors.max())}


def reprojection_errors(street: str | Path) -> Agreement:
    """Distance between every 3D point's projection and its observation, in pixels."""
    street = Path(street)
    model = read_model(street / "reference" / "model")
    poses = image_poses(model)
    errors = []
    for image in model.images.values():
        observed = [(p.point3D_id, p.xy) for p in image.points2D if p.has_point3D()]
        if not observed:
            continue
        xyz = np.array([model.point3D(i).xyz for i, _ in observed])
        uv, _ = camera_of_image(model, image.name).project(poses[image.name].transform(xyz))
        errors.append(np.linalg.norm(uv.numpy() - np.array([xy for _, xy in observed]), axis=1))
    return Agreement(np.concatenate(errors), model.num_points3D())


def inverse_depth_at(depth: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear inverse depth (N,) of an (H, W) depth map at COLMAP pixels (N, 2), and where it is smooth.

    Inverse depth is affine in the image over a plane seen by a pinhole camera, so
    its bilinear interpolation is exact there. Near depth edges it is not: the mask
    is False where the four neighbours differ by more than 2 %, or one is sky.
    """
    inverse = np.where(depth > 0, 1 / np.maximum(depth, 1e-6), 0)
    u, v = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # to array indices of pixel centres
    c0 = np.clip(np.floor(u).astype(int), 0, depth.shape[1] - 2)
    r0 = np.clip(np.floor(v).astype(int), 0, depth.shape[0] - 2)
    fu, fv = u - c0, v - r0
    q = np.stack([inverse[r0, c0], inverse[r0, c0 + 1], inverse[r0 + 1, c0], inverse[r0 + 1, c0 + 1]], 1)
    value = q[:, 0] * (1 - fu) * (1 - fv) + q[:, 1] * fu * (1 - fv) + q[:, 2] * (1 - fu) * fv + q[:, 3] * fu * fv
    return value, (q.min(1) > 0) & (q.max(1) < 1.02 * q.min(1))


def correspondence_errors(street: str | Path, folder: str = "correspondences") -> Agreement:
    """Lift each correspondence of ``street/folder`` from image i with its depth, project
    it into image j with the true poses and intrinsics, and measure the distance to the
    stored point.

    Image i is a reference image, or one of a source traversal (``correspondences-<source>``),
    which drives the reference's poses with the reference's camera. Points near depth
    edges, where the depth map cannot be interpolated, are skipped.
    """
    street = Path(street)
    poses = {}
    for path in sorted((street / "ground_truth").glob("*.txt")):
        poses.update(read_poses(path))
    cameras = dict(read_query_list(street / "queries" / "all.txt"))
    model = read_model(street / "reference" / "model")
    errors, files = [], 0
    for path in iter_correspondence_files(street / folder):
        pair = read_correspondences(path)
        files += 1
        depth = np.load(street / "depth" / f"{pair.image_i.rsplit('.', 1)[0]}.npy")
        inverse, smooth = inverse_depth_at(depth, pair.points_i)
        reference_name = "reference/" + pair.image_i.split("/", 1)[1]
        rays = camera_of_image(model, reference_name).unproject(pair.points_i[smooth]).numpy()
        world = lift(poses[pair.image_i], rays / rays[:, 2:], 1 / inverse[smooth])
        uv, _ = cameras[pair.image_j].project(poses[pair.image_j].transform(world))
        errors.append(np.linalg.norm(uv.numpy() - pair.points_j[smooth], axis=1))
    return Agreement(np.concatenate(errors), files)
