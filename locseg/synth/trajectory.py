"""Camera tracks and intrinsics of SynthSeasons traversals.

The reference traversal drives along the middle of the street (world +x, see
scene.py) and records a frame every ``spacing`` metres with a PINHOLE camera. Each
query traversal has its own camera (model, focal length, principal point and lens
distortion drawn per condition) and records frames spread along the same stretch,
each offset laterally by up to ±2 m, turned by up to ±20° in heading, and tilted a
little in pitch and roll.

Camera axes follow COLMAP: x right, y down, z forward. Poses are cam_from_world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import lookup
from ..geometry import Camera, Pose

MAX_LATERAL = 2.0
MAX_HEADING = 20.0


@dataclass(frozen=True)
class SizePreset:
    """How much a generated street holds."""

    width: int
    height: int
    n_reference: int
    spacing: float
    n_queries: int


SIZES = {
    "small": SizePreset(width=256, height=192, n_reference=24, spacing=1.0, n_queries=3),
    "default": SizePreset(width=512, height=384, n_reference=100, spacing=1.0, n_queries=15),
}


def get_size(name: str) -> SizePreset:
    return lookup(SIZES, "size", name)


@dataclass
class View:
    """One image of a traversal.

    Attributes:
        name: image path relative to ``images/``, e.g. ``night/cam1/000003.png``.
        condition: the traversal's condition.
        camera: its intrinsics.
        T_cam_from_world: its true pose.
    """

    name: str
    condition: str
    camera: Camera
    T_cam_from_world: Pose

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]


def look_pose(centre: np.ndarray, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> Pose:
    """cam_from_world of a camera at ``centre`` looking along heading ``yaw``.

    Angles in degrees; yaw is measured from +x towards +y (to the left), pitch
    upwards, roll clockwise as seen from behind the camera.
    """
    yaw, pitch, roll = np.radians([yaw, pitch, roll])
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    right, down = (np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down)
    R_world_from_cam = np.stack([right, down, forward], 1)
    R = R_world_from_cam.T
    return Pose.from_Rt(R, -R @ np.asarray(centre, np.float64))


def reference_camera(size: SizePreset) -> Camera:
    focal = size.width / 2 / np.tan(np.radians(35.0))
    return Camera.from_params("PINHOLE", size.width, size.height,
                              [focal, focal, size.width / 2, size.height / 2])


def query_camera(size: SizePreset, rng: np.random.Generator, index: int) -> Camera:
    """A query traversal's own camera; the model cycles with ``index``."""
    model = ["SIMPLE_RADIAL", "OPENCV", "PINHOLE", "RADIAL", "SIMPLE_PINHOLE"][index % 5]
    w, h = size.width, size.height
    focal = w / 2 / np.tan(np.radians(rng.uniform(25.0, 37.5)))
    cx, cy = w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2 + rng.uniform(-0.03, 0.03) * h
    k1, k2 = rng.uniform(-0.08, 0.04), rng.uniform(-0.01, 0.01)
    params = {
        "SIMPLE_PINHOLE": [focal, cx, cy],
        "PINHOLE": [focal, focal * rng.uniform(0.99, 1.01), cx, cy],
        "SIMPLE_RADIAL": [focal, cx, cy, k1],
        "RADIAL": [focal, cx, cy, k1, k2],
        "OPENCV": [focal, focal * rng.uniform(0.99, 1.01), cx, cy, k1, k2, *rng.uniform(-1e-3, 1e-3, 2)],
    }[model]
    return Camera.from_params(model, w, h, params)


def reference_track(size: SizePreset, rng: np.random.Generator) -> list[View]:
    camera = reference_camera(size)
    views = []
    for i in range(size.n_reference):
        x = i * size.spacing
        centre = np.array([x, 0.1 * np.sin(x / 7.0) + rng.normal(0, 0.03), 1.55 + rng.normal(0, 0.01)])
        pose = look_pose(centre, rng.normal(0, 1.5), -1.5 + rng.normal(0, 0.5), rng.normal(0, 0.3))
        views.append(View(f"reference/cam0/{i:06d}.png", "reference", camera, pose))
    return views


def query_track(size: SizePreset, condition: str, index: int, rng: np.random.Generator) -> list[View]:
    """``size.n_queries`` frames spread along the reference stretch, one per stratum."""
    camera = query_camera(size, rng, index)
    start, end = 2.0, (size.n_reference - 1) * size.spacing - 4.0
    edges = np.linspace(start, end, size.n_queries + 1)
    views = []
    for i in range(size.n_queries):
        x = rng.uniform(edges[i], edges[i + 1])
        centre = np.array([x, rng.uniform(-MAX_LATERAL, MAX_LATERAL), rng.uniform(1.35, 1.8)])
        pose = look_pose(centre, rng.uniform(-MAX_HEADING, MAX_HEADING), rng.uniform(-4.0, 3.0),
                         rng.uniform(-2.0, 2.0))
        views.append(View(f"{condition}/cam1/{i:06d}.png", condition, camera, pose))
    return views
