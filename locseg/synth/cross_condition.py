"""Cross-condition 2D-2D correspondences, made the way the Cross-Season
Correspondence dataset was made (Larsson et al., section 4).

1. Each traversal gets its own dense point cloud: pixels on a regular grid of
   every image, lifted with the true depth and fused on a 2 cm voxel grid.
2. The reference cloud and a condition's cloud are matched by mutual nearest
   neighbour in 3D, and only between surfaces of the same object key, so a car
   that moved between the traversals yields nothing.
3. A (reference image, condition image) pair is considered when the cameras are
   closer than ``max_camera_distance`` and see at least ``min_common`` matched
   points, each tested for occlusion against the image's depth map.
4. A match is kept when ``|X1 - X2| < kappa * D``, with D the distance from the
   reference camera centre to X1 (kappa = 0.01).

Pixel positions are the projections of the reference point X1 into both images
(X2 only decides whether the match is kept), and ``dist_from_center`` stores
``|X1 - X2|`` in metres, small for a good match (see locseg.io.correspondences).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.spatial import cKDTree

from ..io.correspondences import CorrespondencePair
from .raycast import CameraRays, lift
from .render import Rendered
from .trajectory import View
from .visibility import visible


@dataclass(frozen=True)
class CorrespondenceConfig:
    stride: int = 5                   # pixel grid of the dense clouds
    voxel: float = 0.02               # metres, fusion of each traversal's cloud
    kappa: float = 0.01
    max_camera_distance: float = 3.0  # metres
    min_common: int = 300
    max_pairs_per_image: int = 3


@dataclass
class Cloud:
    """A traversal's fused cloud: (N, 3) points and (N,) object keys."""

    xyz: np.ndarray
    key: np.ndarray

    @cached_property
    def tree(self) -> cKDTree:
        return cKDTree(self.xyz)


def dense_cloud(views: list[View], renders: list[Rendered], rays: dict[str, CameraRays],
                config: CorrespondenceConfig) -> Cloud:
    """Lift a pixel grid of every image with its depth and fuse it on a voxel grid."""
    xyz, keys = [], []
    for view, rendered in zip(views, renders):
        s = config.stride
        depth = rendered.depth[s // 2::s, s // 2::s]
        directions = rays[view.camera.to_string()].directions[s // 2::s, s // 2::s]
        hit = depth > 0
        xyz.append(lift(view.T_cam_from_world, directions[hit], depth[hit]))
        keys.append(rendered.keys[s // 2::s, s // 2::s][hit])
    points, key = np.concatenate(xyz), np.concatenate(keys)
    cell = np.floor(points / config.voxel).astype(np.int64) + (1 << 20)  # within ±20 km
    _, first = np.unique((cell[:, 0] << 42) | (cell[:, 1] << 21) | cell[:, 2], return_index=True)
    return Cloud(points[first], key[first])


def mutual_matches(reference: Cloud, other: Cloud, max_distance: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Indices (K,), (K,) of mutual nearest neighbours with equal object keys.

    Neighbours further apart than ``max_distance`` are never matched; the kappa
    test rejects them anyway for any point within 50 m of the camera. Only the
    reference points that are some other point's nearest neighbour are searched
    back, which is all a mutual match needs.
    """
    _, to_reference = reference.tree.query(other.xyz, distance_upper_bound=max_distance, workers=-1)
    found = np.flatnonzero(to_reference < len(reference.xyz))
    candidates = np.unique(to_reference[found])
    _, back = cKDTree(other.xyz).query(reference.xyz[candidates], distance_upper_bound=max_distance, workers=-1)
    back_of = np.full(len(reference.xyz), -1)
    back_of[candidates] = back
    partner = to_reference[found]
    mutual = back_of[partner] == found
    i, j = partner[mutual], found[mutual]
    same = reference.key[i] == other.key[j]
    return i[same], j[same]


def condition_pairs(ref_views: list[View], ref_renders: list[Rendered], views: list[View],
                    renders: list[Rendered], rays: dict[str, CameraRays],
                    config: CorrespondenceConfig, reference_cloud: Cloud | None = None) -> list[CorrespondencePair]:
    """All correspondence pairs between a source traversal (the reference, or a source
    condition's, see ``locseg.synth.traversal``) and one query condition."""
    reference_cloud = reference_cloud or dense_cloud(ref_views, ref_renders, rays, config)
    cloud = dense_cloud(views, renders, rays, config)
    i, j = mutual_matches(reference_cloud, cloud)
    x1, x2 = reference_cloud.xyz[i], cloud.xyz[j]
    ref_centres = np.stack([v.T_cam_from_world.center.double().numpy() for v in ref_views])
    pairs = []
    for view, rendered in zip(views, renders):
        view_rays = rays[view.camera.to_string()]
        uv_j, seen_x1 = visible(view, view_rays, rendered.depth, x1)
        seen = np.flatnonzero(seen_x1)
        seen = seen[visible(view, view_rays, rendered.depth, x2[seen])[1]]
        if len(seen) < config.min_common:
            continue
        p1, p2, uv_j = x1[seen], x2[seen], uv_j[seen]
        centre = view.T_cam_from_world.center.double().numpy()
        near = np.flatnonzero(np.linalg.norm(ref_centres - centre, axis=1) < config.max_camera_distance)
        # Rank the nearby reference images by an estimate of the points they share,
        # then count exactly for the best ones only.
        sample = np.random.default_rng(0).choice(len(p1), min(len(p1), 3000), replace=False)
        estimate = [visible(ref_views[r], rays[ref_views[r].camera.to_string()], ref_renders[r].depth,
                            p1[sample])[1].mean() for r in near]
        kept = 0
        for r in near[np.argsort(estimate)[::-1]]:
            if kept == config.max_pairs_per_image:
                break
            ref_view = ref_views[r]
            uv_i, common = visible(ref_view, rays[ref_view.camera.to_string()], ref_renders[r].depth, p1)
            if common.sum() < config.min_common:
                continue
            gap = np.linalg.norm(p1 - p2, axis=1)
            keep = common & (gap < config.kappa * np.linalg.norm(p1 - ref_centres[r], axis=1))
            pairs.append(CorrespondencePair(ref_view.name, view.name, uv_i[keep], uv_j[keep], gap[keep]))
            kept += 1
    return pairs
