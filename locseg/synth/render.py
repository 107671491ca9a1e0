"""Rendering one SynthSeasons view: geometry, shading and the sensor."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .conditions import get_condition
from .noise import hash_uniform, text_seed
from .raycast import CameraRays, cast
from .scene import Scene
from .shading import expose, radiance
from .trajectory import View


@dataclass
class Rendered:
    """What a camera records, with its ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        depth: (H, W) float32 z-depth in metres, 0 where the pixel sees sky.
        labels: (H, W) uint8 Cityscapes trainIds.
        keys: (H, W) int32 object key of the surface seen, -1 for sky.
    """

    image: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    keys: np.ndarray


def traversal_seed(scene: Scene, condition: str) -> int | None:
    """The seed of a traversal's changes (parked cars, lamps, windows); None for the reference."""
    if condition == "reference":
        return None
    return int(hash_uniform(scene.seed, text_seed(condition)) * (1 << 24))


def render(scene: Scene, view: View, rays: CameraRays | None = None, light: str | None = None) -> Rendered:
    """Render ``view`` of ``scene`` in the view's condition, or with ``light`` in that
    condition's light, weather and sensor while the scene stays the view's traversal
    (its parked cars, lamps and windows): the same geometry, another appearance."""
    rays = rays or CameraRays.of(view.camera)
    traversal = traversal_seed(scene, view.condition)
    condition = get_condition(view.condition)
    if light is not None:
        condition = replace(get_condition(light), parked_cars=condition.parked_cars)
    prims = scene.primitives(traversal, condition.parked_cars)
    gbuf = cast(prims, rays, view.T_cam_from_world)
    heightfield = (scene.dynamic_heightfield(traversal, condition.parked_cars) if condition.casts_shadows
                   else scene.heightfield)
    centre = view.T_cam_from_world.center.double().numpy()
    linear = radiance(gbuf, prims, scene, condition, traversal or 0, heightfield, centre)
    image_seed = int(hash_uniform(scene.seed, traversal or 0, text_seed(view.name)) * (1 << 30))
    image = expose(linear, condition, image_seed)
    hit = gbuf.prim >= 0
    depth = np.where(hit, gbuf.depth, 0).astype(np.float32)
    keys = np.where(hit, prims.key[np.maximum(gbuf.prim, 0)], -1).astype(np.int32)
    return Rendered(image, depth, gbuf.labels(prims), keys)
