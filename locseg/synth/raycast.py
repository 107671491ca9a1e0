"""Ray casting of SynthSeasons primitives into a geometry buffer.

Rays are cast through pixel centres (COLMAP convention: pixel (i, j) has centre
(j + 0.5, i + 0.5)) and unprojected with the camera's own model, distortion
included, to camera-frame directions with z = 1. The ray parameter of a hit is
therefore its z-depth in the camera frame, which is what the depth maps store.

Each primitive is only tested against the pixels of a conservative window: its
bounding box is clipped to the camera's near plane, projected to the undistorted
normalised image plane, and compared with the per-row and per-column extent of the
camera's own rays there, which stays exact under lens distortion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Camera, Pose
from .scene import SKY, Primitives

NEAR = 0.05
_EDGES = np.array([(a, a | bit) for a in range(8) for bit in (1, 2, 4) if not a & bit])


@dataclass
class CameraRays:
    """Per-pixel rays of one camera.

    Attributes:
        directions: (H, W, 3) camera-frame ray directions with z = 1.
        col_range: (2, W) min and max of x/z over each column.
        row_range: (2, H) min and max of y/z over each row.
        focal: mean focal length in pixels, for pixel footprints.
    """

    directions: np.ndarray
    col_range: np.ndarray
    row_range: np.ndarray
    focal: float

    @staticmethod
    def of(camera: Camera) -> CameraRays:
        width, height = int(camera.width), int(camera.height)
        jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        pixels = np.stack([jj, ii], -1).reshape(-1, 2)
        rays = camera.double().unproject(pixels).numpy().reshape(height, width, 3)
        rays = (rays / rays[..., 2:3]).astype(np.float64)
        col_range = np.stack([rays[..., 0].min(0), rays[..., 0].max(0)])
        row_range = np.stack([rays[..., 1].min(1), rays[..., 1].max(1)])
        focal = float(np.mean(camera.f.numpy()))
        return CameraRays(rays.astype(np.float32), col_range, row_range, focal)


@dataclass
class GBuffer:
    """What each pixel sees.

    Attributes:
        depth: (H, W) float32 z-depth in metres, inf where the ray hits nothing.
        prim: (H, W) int32 index of the primitive hit, -1 for sky.
        point: (H, W, 3) float32 world point hit (undefined for sky).
        normal: (H, W, 3) float32 unit world normal (zero for sky).
        view_dir: (H, W, 3) float32 unit world direction from the camera.
        footprint: (H, W) float32 size of a pixel on the hit surface, metres.
    """

    depth: np.ndarray
    prim: np.ndarray
    point: np.ndarray
    normal: np.ndarray
    view_dir: np.ndarray
    footprint: np.ndarray

    def labels(self, prims: Primitives) -> np.ndarray:
        """(H, W) uint8 Cityscapes trainIds."""
        return np.where(self.prim >= 0, prims.label[np.maximum(self.prim, 0)], SKY).astype(np.uint8)


def lift(T_cam_from_world: Pose, directions: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """World points (N, 3) seen along camera-frame rays (N, 3) with z = 1, at z-depths (N,)."""
    p_cam = np.asarray(directions, np.float64) * np.asarray(depth, np.float64)[:, None]
    return T_cam_from_world.inv().transform(p_cam).numpy()


def _pixel_windows(prims: Primitives, rays: CameraRays, pose: Pose) -> np.ndarray:
    """(P, 4) pixel windows (row0, row1, col0, col1) of every primitive; empty if unseen."""
    R, t = pose.R.double().numpy(), pose.t.double().numpy()
    lo, hi = prims.bounds()
    bits = np.arange(8)
    corners = np.stack([np.where((bits & (1 << k))[None] > 0, hi[:, k:k + 1], lo[:, k:k + 1]) for k in range(3)], -1)
    corners = corners @ R.T + t  # (P, 8, 3) in the camera frame
    z = corners[..., 2]
    pa, pb = corners[:, _EDGES[:, 0]], corners[:, _EDGES[:, 1]]
    za, zb = z[:, _EDGES[:, 0]], z[:, _EDGES[:, 1]]
    crossing = (za > NEAR) != (zb > NEAR)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(crossing, (NEAR - za) / (zb - za), 0.0)
    cut = pa + s[..., None] * (pb - pa)
    points = np.concatenate([corners, cut], 1)
    valid = np.concatenate([z > NEAR, crossing], 1)
    zz = np.maximum(points[..., 2], NEAR)
    nx, ny = points[..., 0] / zz, points[..., 1] / zz
    x0 = np.where(valid, nx, np.inf).min(1)
    x1 = np.where(valid, nx, -np.inf).max(1)
    y0 = np.where(valid, ny, np.inf).min(1)
    y1 = np.where(valid, ny, -np.inf).max(1)
    cols = (rays.col_range[1][None] >= x0[:, None]) & (rays.col_range[0][None] <= x1[:, None])
    rows = (rays.row_range[1][None] >= y0[:, None]) & (rays.row_range[0][None] <= y1[:, None])
    seen = cols.any(1) & rows.any(1) & valid.any(1)
    width, height = cols.shape[1], rows.shape[1]
    windows = np.stack([
        rows.argmax(1), height - rows[:, ::-1].argmax(1), cols.argmax(1), width - cols[:, ::-1].argmax(1)], 1)
    windows[~seen] = 0
    return windows


def cast(prims: Primitives, rays: CameraRays, pose: Pose) -> GBuffer:
    """Cast the rays of one camera at pose ``pose`` (cam_from_world) into ``prims``."""
    R = pose.R.double().numpy()
    centre = (-R.T @ pose.t.double().numpy()).astype(np.float64)
    height, width = rays.directions.shape[:2]
    d = (rays.directions.reshape(-1, 3) @ R.astype(np.float32)).reshape(height, width, 3)  # world dirs
    # Per-axis planes keep the slab test on contiguous 2D arrays.
    with np.errstate(divide="ignore"):
        inv_d = [np.where(np.abs(d[..., k]) > 1e-9, 1.0 / d[..., k], 1e9).astype(np.float32) for k in range(3)]
    dd = np.einsum("hwc,hwc->hw", d, d)
    depth = np.full((height, width), np.inf, np.float32)
    prim = np.full((height, width), -1, np.int32)
    face = np.zeros((height, width), np.int8)
    windows = _pixel_windows(prims, rays, pose)
    lo = (prims.lo - centre).astype(np.float32)
    hi = (prims.hi - centre).astype(np.float32)
    for index in np.flatnonzero((windows[:, 1] > windows[:, 0]) & (windows[:, 3] > windows[:, 2])):
        r0, r1, c0, c1 = windows[index]
        block = (slice(r0, r1), slice(c0, c1))
        current = depth[block]
        if prims.is_sphere[index]:
            oc = -lo[index]
            radius = prims.hi[index, 0]
            b = 2.0 * (d[block] @ oc)
            c = float(oc @ oc - radius * radius)
            a = dd[block]
            disc = b * b - 4.0 * a * c
            with np.errstate(invalid="ignore"):
                tmin = (-b - np.sqrt(disc)) / (2.0 * a)
            hit = (disc > 0) & (tmin > NEAR) & (tmin < current)
            if hit.any():
                current[hit] = tmin[hit]
                prim[block][hit] = index
            continue
        near_planes, far_planes = [], []
        for k in range(3):
            t1 = lo[index, k] * inv_d[k][block]
            t2 = hi[index, k] * inv_d[k][block]
            near_planes.append(np.minimum(t1, t2))
            far_planes.append(np.maximum(t1, t2))
        tmin = np.maximum(np.maximum(near_planes[0], near_planes[1]), near_planes[2])
        tmax = np.minimum(np.minimum(far_planes[0], far_planes[1]), far_planes[2])
        hit = (tmax >= tmin) & (tmin > NEAR) & (tmin < current)
        if not hit.any():
            continue
        t_hit = tmin[hit]
        current[hit] = t_hit
        prim[block][hit] = index
        # The entry face is the axis whose near plane is the last one crossed.
        axis = np.where(near_planes[0][hit] == t_hit, 0, np.where(near_planes[1][hit] == t_hit, 1, 2))
        direction = np.choose(axis, [d[block][..., k][hit] for k in range(3)])
        face[block][hit] = axis * 2 + (direction < 0)
    return _finish(prims, depth, prim, face, d, centre, rays.focal)


def _finish(prims: Primitives, depth: np.ndarray, prim: np.ndarray, face: np.ndarray, d: np.ndarray,
            centre: np.ndarray, focal: float) -> GBuffer:
    hit = prim >= 0
    safe_depth = np.where(hit, depth, 0.0).astype(np.float32)
    point = (centre.astype(np.float32) + safe_depth[..., None] * d).astype(np.float32)
    normal = np.zeros_like(point)
    axis, positive = face // 2, (face % 2).astype(np.float32)
    for k in range(3):
        normal[..., k] = np.where(axis == k, 2 * positive - 1, 0)
    sphere = hit & prims.is_sphere[np.maximum(prim, 0)]
    if sphere.any():
        centres = prims.lo[prim[sphere]].astype(np.float32)
        radial = point[sphere] - centres
        normal[sphere] = radial / np.linalg.norm(radial, axis=-1, keepdims=True)
    normal[~hit] = 0
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    view_dir = d / norm
    footprint = (safe_depth * norm[..., 0] / focal).astype(np.float32)
    return GBuffer(depth, prim, point, normal, view_dir.astype(np.float32), footprint)
