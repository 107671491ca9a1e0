"""``locseg synth-sky-pairs``: correspondences at infinity, for the sky.

A street's correspondences join 3D surface points, so the sky, which has no depth,
gets none, and a correspondence loss cannot teach it. A direction at infinity,
though, needs no depth: two cameras see it at pixels related by their rotation
alone (for pinhole cameras ``x_q ~ K_q R_q R_r^T K_r^-1 x_r``, R the world-to-camera
rotations; the camera models of ``locseg.geometry.camera``, distortion included, are
used as they are), so every sky pixel of a reference image has a partner in each
image of the same place. This writes, for every (reference, query) pair of the
street's ``correspondences/``, the same pair with such points added, into
``correspondences-with-sky/`` (the pair's own points first, then the sky's). Given
to ``train-seg --correspondences`` in place of ``correspondences/``, it draws the same
pairs, each as often:

1. The reference image's pixels without depth, on a ``stride`` grid, eroded by
   ``margin`` pixels (city-block distance) so that a point is not at an edge of the
   sky. The depth is the reference traversal's own, the map its pairs were made from;
   no labels are read.
2. Their directions turned into the query camera and projected.
3. An occlusion guard from the same depth: every reference surface pixel is lifted
   to 3D and projected into the query image, and a sky point that lands on one, or
   within ``guard`` pixels (city-block) of one, is dropped, since the query camera, a
   few metres away, may see that surface in front of the sky. The projection marks
   one pixel per surface pixel, so where the query is nearer to a surface than the
   reference, it leaves holes that only the guard fills.

The query's labels and depth are never read. ``dist_from_center`` is 0 for the sky
points. A ``stride`` of 3 gives a default street's pairs about 900 sky points each, on
top of about 20 000 surface points. ``sky_pair_precision`` measures, against the query
labels, how many of the sky points land on sky (``benchmarks/sky_pair_precision.py``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..evaluate.segmentation import read_label_png
from ..io._common import atomic_write_text
from ..io.correspondences import (
    CorrespondencePair,
    iter_correspondence_files,
    read_correspondences,
    write_correspondences,
)
from ..io.queries import condition_of
from ..models.segmentation import CLASSES
from .generate import Progress, SynthConfig, plan_street, street_rays
from .raycast import CameraRays, lift
from .trajectory import View
from .traversal import check_scene
from .visibility import project

SKY = CLASSES.index("sky")
SKY_FOLDER = "correspondences-with-sky"
FAR = 1e6  # metres: a point this far along a ray stands in for the direction itself


@dataclass(frozen=True)
class SkyPairConfig:
    stride: int = 3   # pixel grid of the reference's sky points
    margin: int = 4   # erosion of the reference's sky mask, pixels
    guard: int = 6    # dilation of the reference surfaces projected into the query, pixels


def sky_points(ref_view: View, ref_depth: np.ndarray, query_view: View, rays: dict[str, CameraRays],
               config: SkyPairConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sky correspondences between a reference and a query view (module docstring).

    Args:
        ref_depth: (H, W) z-depth of the reference image, 0 where it sees sky.
        rays: the rays of both views' cameras, keyed by ``Camera.to_string()``.
    Returns:
        (N, 2) reference and (N, 2) query pixel coordinates, COLMAP convention.
    """
    ref_rays = rays[ref_view.camera.to_string()]
    query_rays = rays[query_view.camera.to_string()]
    sky = ref_depth <= 0
    if config.margin:
        sky = ndimage.binary_erosion(sky, iterations=config.margin, border_value=1)
    grid = np.zeros_like(sky)
    s = config.stride
    grid[s // 2::s, s // 2::s] = True
    rows, cols = np.nonzero(sky & grid)
    if len(rows) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    # A point FAR along each reference ray, moved by the baseline so that it lies FAR from
    # the query camera in the ray's direction: the query sees it where it sees that direction.
    far = lift(ref_view.T_cam_from_world, ref_rays.directions[rows, cols], np.full(len(rows), FAR))
    far += (query_view.T_cam_from_world.center - ref_view.T_cam_from_world.center).double().numpy()
    uv_query, _, inside = project(query_view, query_rays, far)

    surface = ref_depth > 0
    lifted = lift(ref_view.T_cam_from_world, ref_rays.directions[surface], ref_depth[surface])
    uv_surface, _, seen = project(query_view, query_rays, lifted)
    height, width = query_rays.directions.shape[:2]
    covered = np.zeros((height, width), bool)
    covered[uv_surface[seen, 1].astype(int), uv_surface[seen, 0].astype(int)] = True
    if config.guard:
        covered = ndimage.binary_dilation(covered, iterations=config.guard)
    keep = np.flatnonzero(inside)
    keep = keep[~covered[uv_query[keep, 1].astype(int), uv_query[keep, 0].astype(int)]]
    uv_ref = np.stack([cols[keep] + 0.5, rows[keep] + 0.5], axis=1).astype(np.float64)
    return uv_ref, uv_query[keep]


def add_sky_pairs(street_dir: str | Path, config: SkyPairConfig = SkyPairConfig(), overwrite: bool = False,
                  progress: Progress | None = None) -> dict:
    """Write ``correspondences-with-sky/`` of the SynthSeasons street in ``street_dir``: each pair
    of its ``correspondences/`` with its sky points added; record it in ``synth.json`` as ``sky_pairs``.

    Returns that record; a street that has one already is left as it is unless ``overwrite``.

    Raises:
        InputError: ``street_dir`` is not a SynthSeasons street with correspondences.
    """
    root = Path(street_dir).resolve()
    summary_path = root / "synth.json"
    try:
        summary = json.loads(summary_path.read_text())
        street = plan_street(SynthConfig(**summary["config"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{root} is not a SynthSeasons street (no readable synth.json: {err}); "
                         "make one with `locseg synth`") from None
    if summary.get("sky_pairs") is not None and not overwrite:
        return summary["sky_pairs"]
    check_scene(root, street.scene, street.reference[0], by="depth")
    files = sorted(iter_correspondence_files(root / "correspondences")) if (root / "correspondences").is_dir() else []
    if not files:
        raise InputError(f"{root} has no correspondences/ to pair its sky along; is it a complete SynthSeasons street?")
    summary.pop("sky_pairs", None)
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")

    views = {v.name: v for v in street.reference}
    views |= {v.name: v for vs in street.queries.values() for v in vs}
    rays = street_rays(street)
    tmp = root / f".{SKY_FOLDER}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    points = 0
    try:
        for done, path in enumerate(files):
            pair = read_correspondences(path)
            ref_view, query_view = views.get(pair.image_i), views.get(pair.image_j)
            if ref_view is None or query_view is None or ref_view.condition != "reference":
                raise InputError(f"{path} pairs {pair.image_i!r} with {pair.image_j!r}, but {root} plans no such "
                                 "reference and query images; is it a complete SynthSeasons street?")
            depth_path = root / "depth" / f"{ref_view.stem}.npy"
            if not depth_path.is_file():
                raise InputError(f"{root} has no {depth_path.relative_to(root)}; is it a complete SynthSeasons street?")
            uv_ref, uv_query = sky_points(ref_view, np.load(depth_path), query_view, rays, config)
            write_correspondences(tmp / path.name, CorrespondencePair(
                pair.image_i, pair.image_j, np.concatenate([pair.points_i, uv_ref]),
                np.concatenate([pair.points_j, uv_query]),
                np.concatenate([pair.dist_from_center, np.zeros(len(uv_ref))])))
            points += len(uv_ref)
            if progress:
                progress("sky pairs", done + 1, len(files))
        target = root / SKY_FOLDER
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = {"pairs": len(files), "points": points, "correspondences": SKY_FOLDER, **asdict(config)}
    summary["sky_pairs"] = record
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return record


def sky_pair_precision(street_dir: str | Path) -> dict[str, tuple[int, int]]:
    """``{query condition: (sky points on the query's true sky, sky points)}`` over the street's
    ``correspondences-with-sky/`` (the points after those of the same file in
    ``correspondences/``), read against the query labels."""
    root = Path(street_dir)
    counts: dict[str, list[int]] = {}
    for path in iter_correspondence_files(root / SKY_FOLDER):
        pair = read_correspondences(path)
        sky = pair.points_j[len(read_correspondences(root / "correspondences" / path.name)):]
        labels = read_label_png(root / "labels" / pair.image_j)
        cols = np.clip(sky[:, 0].astype(int), 0, labels.shape[1] - 1)
        rows = np.clip(sky[:, 1].astype(int), 0, labels.shape[0] - 1)
        count = counts.setdefault(condition_of(pair.image_j), [0, 0])
        count[0] += int((labels[rows, cols] == SKY).sum())
        count[1] += len(cols)
    return {condition: (hit, total) for condition, (hit, total) in counts.items()}
