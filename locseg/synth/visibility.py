"""Projection of world points into rendered views, with an occlusion test."""

from __future__ import annotations

import numpy as np

from .raycast import CameraRays
from .trajectory import View


def project(view: View, rays: CameraRays, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world points (N, 3) into ``view``.

    Returns:
        uv: (N, 2) float64 pixel coordinates (COLMAP convention).
        z: (N,) depth in the camera frame.
        inside: (N,) in front of the camera and inside the image. Points outside the
            camera's undistorted field of view are rejected before distortion, which
            would otherwise fold some of them back into the image.
    """
    R = view.T_cam_from_world.R.double().numpy()
    t = view.T_cam_from_world.t.double().numpy()
    p_cam = np.asarray(points, np.float64) @ R.T + t
    z = p_cam[:, 2]
    safe = np.where(z > 1e-3, z, 1.0)
    nx, ny = p_cam[:, 0] / safe, p_cam[:, 1] / safe
    inside = (z > 1e-3) & (nx >= rays.col_range[0].min()) & (nx <= rays.col_range[1].max()) & (
        ny >= rays.row_range[0].min()) & (ny <= rays.row_range[1].max())
    uv = np.full((len(p_cam), 2), -1.0)
    if inside.any():
        uv[inside] = view.camera.double().project(p_cam[inside])[0].numpy()
    height, width = rays.directions.shape[:2]
    inside &= (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return uv, z, inside


def visible(view: View, rays: CameraRays, depth: np.ndarray, points: np.ndarray,
            tolerance: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Which world points (N, 3) ``view`` sees, by comparing with its depth map (H, W).

    A point is visible when it projects into the image and its depth agrees with the
    depth map at the nearest pixel within ``tolerance`` × depth + 2 cm.

    Returns:
        uv: (N, 2) pixel coordinates; visible: (N,) bool.
    """
    uv, z, inside = project(view, rays, points)
    cols = np.clip(uv[:, 0].astype(int), 0, depth.shape[1] - 1)
    rows = np.clip(uv[:, 1].astype(int), 0, depth.shape[0] - 1)
    seen = depth[rows, cols]
    return uv, inside & (seen > 0) & (np.abs(seen - z) < tolerance * z + 0.02)
