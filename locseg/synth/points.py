"""The 3D points of a SynthSeasons reference model.

Points are placed where a feature detector would fire: corners (Shi-Tomasi
response) of the rendered reference images, never on sky. Each is lifted to 3D
with the true depth, and its track lists every nearby reference image that sees it
unoccluded, with the observation at its exact projection. Images are visited in
order and a new point is not created where an existing one is already observed,
so the same surface detail is one point with a long track, as in an SfM model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter, sobel

from .raycast import CameraRays, lift
from .render import Rendered
from .trajectory import View
from .visibility import visible


@dataclass
class ReferencePoints:
    """M points and their K observations, ordered by image.

    Attributes:
        xyz: (M, 3) world coordinates.
        rgb: (M, 3) uint8 colour in the image that created the point.
        point: (K,) index of the observed point.
        image: (K,) index of the observing image (non-decreasing).
        uv: (K, 2) the observation, in pixels.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    point: np.ndarray
    image: np.ndarray
    uv: np.ndarray


def corner_response(image: np.ndarray) -> np.ndarray:
    """(H, W) Shi-Tomasi minimum-eigenvalue response of an (H, W, 3) uint8 image."""
    gray = image.astype(np.float32).mean(-1) / 255.0
    gx, gy = sobel(gray, 1), sobel(gray, 0)
    a = gaussian_filter(gx * gx, 1.2)
    b = gaussian_filter(gx * gy, 1.2)
    c = gaussian_filter(gy * gy, 1.2)
    return (a + c) / 2 - np.sqrt(((a - c) / 2) ** 2 + b * b)


def detect(image: np.ndarray, depth: np.ndarray, occupied: np.ndarray, count: int,
           border: int = 4) -> np.ndarray:
    """(K, 2) integer (col, row) corners not on sky or occupied pixels, strongest first."""
    response = corner_response(image)
    peak = (response == maximum_filter(response, size=7)) & (response > 1e-4)
    peak &= (depth > 0) & ~occupied
    peak[:border], peak[-border:], peak[:, :border], peak[:, -border:] = False, False, False, False
    rows, cols = np.nonzero(peak)
    order = np.argsort(-response[rows, cols])[:count]
    return np.stack([cols[order], rows[order]], 1)


def reference_points(views: list[View], renders: list[Rendered], rays: CameraRays,
                     per_image: int = 700, window: int = 8, min_track: int = 2) -> ReferencePoints:
    """Detect, lift and track points over the reference traversal (one camera)."""
    xyz_all: list[np.ndarray] = []
    rgb_all: list[np.ndarray] = []
    origin: list[np.ndarray] = []
    for index, (view, rendered) in enumerate(zip(views, renders)):
        occupied = np.zeros(rendered.depth.shape, bool)
        if xyz_all:
            known = np.concatenate(xyz_all)
            near = np.abs(np.concatenate(origin) - index) <= window
            uv, seen = visible(view, rays, rendered.depth, known[near])
            cols, rows = uv[seen, 0].astype(int), uv[seen, 1].astype(int)
            occupied[rows, cols] = True
            occupied = maximum_filter(occupied, size=5)
        corners = detect(rendered.image, rendered.depth, occupied, per_image)
        if len(corners) == 0:
            continue
        world = lift(view.T_cam_from_world, rays.directions[corners[:, 1], corners[:, 0]],
                     rendered.depth[corners[:, 1], corners[:, 0]])
        xyz_all.append(world)
        rgb_all.append(rendered.image[corners[:, 1], corners[:, 0]])
        origin.append(np.full(len(world), index))
    xyz = np.concatenate(xyz_all)
    rgb = np.concatenate(rgb_all)
    first = np.concatenate(origin)
    point_ids, image_ids, observations = [], [], []
    for index, (view, rendered) in enumerate(zip(views, renders)):
        near = np.flatnonzero(np.abs(first - index) <= window)
        uv, seen = visible(view, rays, rendered.depth, xyz[near])
        point_ids.append(near[seen])
        image_ids.append(np.full(int(seen.sum()), index))
        observations.append(uv[seen])
    point_id, image_id, uv = np.concatenate(point_ids), np.concatenate(image_ids), np.concatenate(observations)
    length = np.bincount(point_id, minlength=len(xyz))
    keep = length >= min_track
    renumber = np.cumsum(keep) - 1
    observed = keep[point_id]
    return ReferencePoints(xyz[keep], rgb[keep], renumber[point_id[observed]], image_id[observed], uv[observed])
