"""Reference maps from reference images with known poses: match, then triangulate.

A reference map needs 3D points observed in its images (``ReferenceMap``). When only
the images, their poses and their cameras are known, this module makes the points, as
hloc's triangulation step does, with locseg's own features and pycolmap:

1. pairs: each image is paired with its ``num_neighbors`` nearest images by camera
   centre distance whose viewing directions (optical axes) differ by at most
   ``max_view_angle`` degrees;
2. anchors: locseg has no detector, so each image's anchor keypoints are cells of its
   dense 1/4-grid hypercolumn map (``locseg.models.hypercolumn``), every
   ``keypoint_stride / 4``-th cell in each direction. Cell ``(x, y)`` of the network
   input is COLMAP pixel ``(4x + 2, 4y + 2)``; keypoints go to the database at the
   ORIGINAL resolution, scaled by ``original size / input size`` (the COLMAP pixel
   convention makes this scaling exact, ``locseg.models.preprocess``);
3. matches: mutual nearest neighbours of the two images' anchors by cosine similarity
   of their hypercolumns (at least ``min_similarity``). Each match is then refined on
   both sides: the anchor of one image is looked for in the other image's full dense
   map, near the matched anchor, and located to a fraction of a cell
   (``refine_in_map``). This gives two correspondences, anchor of a ↔ refined point
   in b and refined point in a ↔ anchor of b; the refined points become keypoints of
   their own. A correspondence is kept when both points lie within
   ``max_epipolar_error`` pixels (original resolution) of the epipolar line of the
   other, computed from the KNOWN relative pose. As anchors are shared by all pairs
   of an image, an anchor's correspondences in its neighbours form one track.
   (Why refine: on SynthSeasons, ground-truth correspondences snapped to the 4-pixel
   grid alone triangulate to a median depth error of 4.6 % on the default street and
   7.8 % on the small one.)
4. a COLMAP database (cameras, rigs, frames and images with the reconstruction's ids;
   keypoints; matches, and the same matches as verified two-view geometries) and
   ``pycolmap.triangulate_points``, which builds tracks, triangulates, merges and
   completes them, refines the points with the poses and intrinsics held fixed, and
   filters them by reprojection error and triangulation angle; points seen by fewer
   than ``min_track_length`` images are dropped (short tracks in near-forward motion
   are the least accurate).

The output is a COLMAP model directory, written as ``OUTPUT.partial`` and renamed when
complete (temporary files live in a hidden directory beside it and are removed). The
resolved config and a summary are stored beside the model in ``triangulation.json``;
a later call with the same config and images reuses the model instead of rebuilding it.

Example::

    >>> hypercolumns = load_hypercolumns("vgg16-slim", "synthseasons-slim-dmcgn-v3").eval()
    >>> rec = build_reference("street/images", read_poses("street/ground_truth/reference.txt"),
    ...                       dict(read_query_list("intrinsics.txt")), "maps/street", hypercolumns)
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pycolmap
import torch

from ..errors import InputError, LocsegError
from ..geometry import Camera, Pose, skew
from ..io.colmap import ImageSpec, build_reconstruction, read_model
from ..models.hypercolumn import STRIDE, Hypercolumns
from ..models.preprocess import load_image, prepare_image

Progress = Callable[[str, int, int], None]

RECORD = "triangulation.json"
"""File in the output model directory holding the config and a summary of the run."""
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TriangulateConfig:
    """Settings of the triangulation of a posed reference model (see the module docstring).

    Attributes:
        max_side: longer side of the network input, in pixels.
        upsample: also enlarge images whose longer side is below ``max_side``.
        num_neighbors: images each image is paired with, nearest camera centres first.
        max_view_angle: largest angle between the optical axes of a pair, degrees.
        keypoint_stride: spacing of the keypoint grid in network-input pixels, a
            multiple of 4 (4: every cell of the 1/4 grid).
        min_similarity: smallest cosine similarity of a mutual-nearest-neighbour match.
        max_epipolar_error: largest distance of a matched point to the epipolar line
            of its partner, pixels at the original resolution (both images).
        min_pair_matches: pairs with fewer matches are not written to the database.
        min_tri_angle: smallest triangulation angle of a 3D point, degrees.
        max_reproj_error: largest reprojection error of an observation, pixels at the
            original resolution (creating, merging, completing and filtering tracks).
        min_track_length: 3D points seen by fewer images are dropped at the end.
        chunk: anchors correlated at once while matching (memory ``chunk · N`` floats).
    """

    max_side: int = 512
    upsample: bool = False
    num_neighbors: int = 10
    max_view_angle: float = 45.0
    keypoint_stride: int = 8
    min_similarity: float = 0.75
    max_epipolar_error: float = 2.0
    min_pair_matches: int = 15
    min_tri_angle: float = 3.0
    max_reproj_error: float = 2.0
    min_track_length: int = 4
    chunk: int = 4096

    def __post_init__(self) -> None:
        checks = [
            ("max_side", self.max_side >= 32, "at least 32"),
            ("num_neighbors", self.num_neighbors >= 1, "at least 1"),
            ("max_view_angle", 0 < self.max_view_angle <= 180, "in (0, 180]"),
            ("keypoint_stride", self.keypoint_stride >= STRIDE and self.keypoint_stride % STRIDE == 0,
             f"a positive multiple of {STRIDE}"),
            ("min_similarity", -1 <= self.min_similarity <= 1, "in [-1, 1]"),
            ("max_epipolar_error", self.max_epipolar_error > 0, "positive"),
            ("min_pair_matches", self.min_pair_matches >= 1, "at least 1"),
            ("min_tri_angle", 0 <= self.min_tri_angle < 90, "in [0, 90)"),
            ("max_reproj_error", self.max_reproj_error > 0, "positive"),
            ("min_track_length", self.min_track_length >= 2, "at least 2"),
            ("chunk", self.chunk >= 1, "at least 1"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise InputError(f"TriangulateConfig.{name} must be {valid}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: Mapping) -> TriangulateConfig:
        """Config from a mapping; unknown keys raise InputError naming them and the valid ones."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown TriangulateConfig keys {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageFeatures:
    """The dense hypercolumns of one image and its anchor keypoints.

    Attributes:
        dense: (C, h, w) the 1/4-grid map of the network input; cell ``(x, y)`` is
            input pixel ``(4x + 2, 4y + 2)``.
        scale: (2,) float64 original pixels per network-input pixel, (x, y).
        anchor_cells: (N, 2) int64 ``(x, y)`` cells of the anchors, every ``step``-th cell.
        descriptors: (N, C) float32 their hypercolumns (unit, or zero where the map is).
    """

    dense: torch.Tensor
    scale: np.ndarray
    anchor_cells: np.ndarray
    descriptors: torch.Tensor

    def to_pixels(self, cells: np.ndarray) -> np.ndarray:
        """(M, 2) fractional cells -> (M, 2) float64 COLMAP pixels of the ORIGINAL image."""
        return (STRIDE * (np.asarray(cells, dtype=np.float64) + 0.5)) * self.scale

    @property
    def keypoints(self) -> np.ndarray:
        """(N, 2) float64 the anchors' COLMAP pixels in the original image."""
        return self.to_pixels(self.anchor_cells)


# --------------------------------------------------------------------------- pairs
def select_pairs(poses: Sequence[Pose], num_neighbors: int, max_view_angle: float) -> list[tuple[int, int]]:
    """Image pairs by pose proximity.

    Image ``i`` is paired with the ``num_neighbors`` images nearest to it by camera
    centre distance among those whose optical axis is within ``max_view_angle``
    degrees of its own; the union over all images is returned.

    Args:
        poses: N unbatched ``T_cam_from_world``.
    Returns:
        sorted ``(i, j)`` index pairs with ``i < j``, each once.
    """
    if len(poses) < 2:
        return []
    T_cam_from_world = Pose.stack(list(poses)).double()
    centers = T_cam_from_world.center
    axes = T_cam_from_world.R[..., 2, :]  # the optical axis (camera z) in the world frame: R^T e_z
    distance = torch.cdist(centers, centers)
    cos_max = math.cos(math.radians(max_view_angle))
    allowed = (axes @ axes.T) >= cos_max - 1e-12
    allowed.fill_diagonal_(False)
    distance = torch.where(allowed, distance, torch.full_like(distance, math.inf))
    k = min(num_neighbors, len(poses) - 1)
    nearest = distance.topk(k, dim=1, largest=False)
    pairs = set()
    for i, (row_d, row_j) in enumerate(zip(nearest.values.tolist(), nearest.indices.tolist())):
        pairs.update((min(i, j), max(i, j)) for d, j in zip(row_d, row_j) if math.isfinite(d))
    return sorted(pairs)


# --------------------------------------------------------------------------- features
@torch.inference_mode()
def image_features(hypercolumns: Hypercolumns, image_path: Path, camera: Camera,
                   config: TriangulateConfig) -> ImageFeatures:
    """The dense hypercolumns of an image and its anchors, every ``keypoint_stride / 4``-th cell.

    Args:
        camera: the camera of the ORIGINAL image (its size must be the image's).
    Raises:
        InputError: the image does not exist or is not of the camera's size.
    """
    try:
        image, _ = prepare_image(load_image(image_path), camera, max_side=config.max_side,
                                 upsample=config.upsample)
    except InputError as err:
        raise InputError(f"{image_path}: {err}") from err
    parameter = next(hypercolumns.parameters(), None)
    if parameter is not None:
        image = image.to(parameter)
    dense = hypercolumns.dense(image[None])[0].float().cpu()  # (C, h, w)
    step = config.keypoint_stride // STRIDE
    h, w = dense.shape[-2:]
    ys, xs = np.meshgrid(np.arange(step // 2, h, step), np.arange(step // 2, w, step), indexing="ij")
    cells = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    descriptors = dense[:, cells[:, 1], cells[:, 0]].T.contiguous()
    scale = camera.size.double().cpu().numpy() / np.array([image.shape[-1], image.shape[-2]], dtype=np.float64)
    return ImageFeatures(dense, scale, cells, descriptors)


# --------------------------------------------------------------------------- matching
def mutual_nearest_neighbours(desc_a: torch.Tensor, desc_b: torch.Tensor, min_similarity: float,
                              chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours by cosine similarity (dot products of unit vectors).

    Args:
        desc_a: (Na, C), desc_b: (Nb, C) unit descriptors.
        min_similarity: keep pairs whose similarity is at least this.
        chunk: rows of ``desc_a`` correlated at once.
    Returns:
        matches: (M, 2) int64 ``(index in a, index in b)``; similarity: (M,) float32.
    """
    n_a, n_b = len(desc_a), len(desc_b)
    if n_a == 0 or n_b == 0:
        return torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0)
    best_b = torch.empty(n_a, dtype=torch.int64)
    best_ab = torch.empty(n_a)
    col_best = torch.full((n_b,), -math.inf)
    col_arg = torch.zeros(n_b, dtype=torch.int64)
    for start in range(0, n_a, chunk):
        sim = desc_a[start:start + chunk] @ desc_b.T
        best_ab[start:start + chunk], best_b[start:start + chunk] = sim.max(dim=1)
        value, index = sim.max(dim=0)
        better = value > col_best
        col_best[better], col_arg[better] = value[better], index[better] + start
    index_a = torch.arange(n_a)
    keep = (col_arg[best_b] == index_a) & (best_ab >= min_similarity)
    return torch.stack([index_a[keep], best_b[keep]], dim=1), best_ab[keep]


def _quadratic_fit() -> torch.Tensor:
    """(6, 9) least-squares solution for ``(1, x, y, x², xy, y²)`` coefficients from 3 x 3 samples."""
    dy, dx = (g.reshape(-1).double() for g in torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2),
                                                              indexing="ij"))
    design = torch.stack([torch.ones_like(dx), dx, dy, dx * dx, dx * dy, dy * dy], dim=1)  # (9, 6)
    return torch.linalg.pinv(design)


_QUADRATIC_FIT = _quadratic_fit()


def _quadratic_peak(values: torch.Tensor) -> torch.Tensor:
    """Offset of the maximum of the quadratic least-squares fit to 3 x 3 samples.

    Args:
        values: (M, 9) samples at offsets ``(dx, dy)`` in ``{-1, 0, 1}^2``, row-major in
            ``dy`` then ``dx``.
    Returns:
        (M, 2) ``(dx, dy)`` of the vertex, each clamped to [-0.5, 0.5]; 0 where the fit
        has no maximum or a sample is not finite.
    """
    finite = torch.isfinite(values).all(dim=1)
    coeffs = torch.where(finite[:, None], values, torch.zeros_like(values)) @ _QUADRATIC_FIT.to(values).T
    _, b, c, d, e, f = coeffs.unbind(-1)
    det = 4 * d * f - e * e
    maximum = finite & (d < 0) & (det > 0)
    safe = torch.where(maximum, det, torch.ones_like(det))
    offset = torch.stack([(e * c - 2 * f * b) / safe, (e * b - 2 * d * c) / safe], dim=1)
    return torch.where(maximum[:, None], offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)


def refine_in_map(dense: torch.Tensor, descriptors: torch.Tensor, cells: np.ndarray, radius: int,
                  chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Where each descriptor fits a dense map best near a starting cell, to a fraction of a cell.

    The cell of highest similarity within ``radius`` cells of the start (in x and in
    y), then the vertex of a quadratic fitted to the similarities of its 3 x 3
    neighbourhood (none at the map's edge), at most half a cell away.

    Args:
        dense: (C, h, w) a 1/4-grid hypercolumn map.
        descriptors: (M, C) unit descriptors.
        cells: (M, 2) int ``(x, y)`` starting cells, inside the map.
        radius: search radius in cells, >= 0.
    Returns:
        (M, 2) float64 fractional ``(x, y)`` cells and (M,) float32 the best similarity.
    """
    _, h, w = dense.shape
    flat = dense.flatten(1).T  # (h w, C)

    def offsets(r: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.arange(-r, r + 1)
        dy, dx = torch.meshgrid(window, window, indexing="ij")
        return dx.reshape(1, -1), dy.reshape(1, -1)

    def similarity(x: torch.Tensor, y: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        sim = torch.einsum("mkc,mc->mk", flat[y.clamp(0, h - 1) * w + x.clamp(0, w - 1)], desc)
        return torch.where(inside, sim, torch.full_like(sim, -math.inf))

    (dx, dy), (dx1, dy1) = offsets(radius), offsets(1)
    out_cells, out_sim = [], []
    for start in range(0, len(cells), chunk):
        xy = torch.from_numpy(np.asarray(cells[start:start + chunk], dtype=np.int64)).reshape(-1, 2)
        desc = descriptors[start:start + chunk]
        x, y = xy[:, :1] + dx, xy[:, 1:] + dy
        best_sim, best = similarity(x, y, desc).max(dim=1)
        rows = torch.arange(len(best))
        bx, by = x[rows, best], y[rows, best]
        around = similarity(bx[:, None] + dx1, by[:, None] + dy1, desc)
        shift = _quadratic_peak(around.double())
        out_cells.append(torch.stack([bx, by], dim=1).double() + shift)
        out_sim.append(best_sim)
    if not out_cells:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.float32)
    return torch.cat(out_cells).numpy(), torch.cat(out_sim).float().numpy()


def epipolar_errors(uv_a: np.ndarray, uv_b: np.ndarray, camera_a: Camera, camera_b: Camera,
                    T_b_from_a: Pose) -> np.ndarray:
    """Distance of each point to the epipolar line of its partner, the larger of the two.

    Lines come from the essential matrix ``E = [t]x R`` of ``T_b_from_a``, in
    undistorted normalised coordinates; a distance there is turned into pixels by the
    mean focal length of the image it is measured in.

    Args:
        uv_a, uv_b: (M, 2) matched COLMAP pixel coordinates in images a and b.
    Returns:
        (M,) pixels; NaN when the pair has no baseline or a point cannot be undistorted.
    """
    if len(uv_a) == 0:
        return np.zeros(0)
    x_a = camera_a.unproject(torch.from_numpy(uv_a).to(camera_a.dtype))  # (M, 3), z = 1
    x_b = camera_b.unproject(torch.from_numpy(uv_b).to(camera_b.dtype))
    E = skew(T_b_from_a.t.to(x_a)) @ T_b_from_a.R.to(x_a)
    line_b, line_a = x_a @ E.T, x_b @ E  # epipolar lines in b and in a
    residual = (x_b * line_b).sum(-1).abs()
    d_b = residual / line_b[:, :2].norm(dim=-1) * camera_b.f.mean().to(x_a)
    d_a = residual / line_a[:, :2].norm(dim=-1) * camera_a.f.mean().to(x_a)
    return torch.maximum(d_a, d_b).numpy()


@dataclass(frozen=True)
class PairMatches:
    """Matches of images a and b, each anchored on a keypoint of one side.

    Attributes:
        a_anchors: (M,) int64 anchor indices in a; b_points: (M, 2) float64 where they
            are in b (COLMAP pixels, original resolution).
        b_anchors: (L,) int64 anchor indices in b; a_points: (L, 2) where they are in a.
    """

    a_anchors: np.ndarray
    b_points: np.ndarray
    b_anchors: np.ndarray
    a_points: np.ndarray

    def __len__(self) -> int:
        return len(self.a_anchors) + len(self.b_anchors)


def match_pair(features_a: ImageFeatures, features_b: ImageFeatures, camera_a: Camera, camera_b: Camera,
               T_b_from_a: Pose, config: TriangulateConfig) -> PairMatches:
    """Mutual nearest neighbours of the anchors, each refined in the other image's dense map
    (``refine_in_map``, within half the anchor spacing), kept if the refined match
    passes the epipolar filter."""
    matches, _ = mutual_nearest_neighbours(features_a.descriptors, features_b.descriptors,
                                           config.min_similarity, config.chunk)
    index_a, index_b = matches[:, 0].numpy(), matches[:, 1].numpy()
    radius = max(1, config.keypoint_stride // STRIDE // 2)  # the nearest anchor is at most this far
    cells_b, _ = refine_in_map(features_b.dense, features_a.descriptors[index_a], features_b.anchor_cells[index_b],
                               radius)
    cells_a, _ = refine_in_map(features_a.dense, features_b.descriptors[index_b], features_a.anchor_cells[index_a],
                               radius)
    b_points, a_points = features_b.to_pixels(cells_b), features_a.to_pixels(cells_a)
    keep_ab = epipolar_errors(features_a.keypoints[index_a], b_points, camera_a, camera_b,
                              T_b_from_a) <= config.max_epipolar_error  # NaN fails
    keep_ba = epipolar_errors(a_points, features_b.keypoints[index_b], camera_a, camera_b,
                              T_b_from_a) <= config.max_epipolar_error
    return PairMatches(index_a[keep_ab], b_points[keep_ab], index_b[keep_ba], a_points[keep_ba])


class _KeypointBook:
    """Each image's keypoints: its anchors, then the points that other images' anchors
    were matched to in it, in the order they are appended."""

    def __init__(self) -> None:
        self.parts: dict[int, list[np.ndarray]] = {}
        self.count: dict[int, int] = {}

    def add_anchors(self, image_id: int, anchors: np.ndarray) -> None:
        if image_id not in self.parts:
            self.parts[image_id], self.count[image_id] = [anchors], len(anchors)

    def append(self, image_id: int, points: np.ndarray) -> np.ndarray:
        """Add (M, 2) points to an image; their (M,) keypoint indices."""
        start = self.count[image_id]
        self.parts[image_id].append(points)
        self.count[image_id] = start + len(points)
        return np.arange(start, start + len(points), dtype=np.int64)

    def arrays(self) -> dict[int, np.ndarray]:
        return {i: np.concatenate(parts).reshape(-1, 2) for i, parts in self.parts.items()}


class _FeatureCache:
    """Features computed on first use and dropped once the last pair needing them is done."""

    def __init__(self, compute: Callable[[int], ImageFeatures], pairs: Sequence[tuple[int, int]],
                 progress: Progress | None, total: int):
        self.compute, self.progress, self.total = compute, progress, total
        self.remaining: dict[int, int] = {}
        for pair in pairs:
            for i in pair:
                self.remaining[i] = self.remaining.get(i, 0) + 1
        self.cache: dict[int, ImageFeatures] = {}
        self.computed = 0

    def get(self, i: int) -> ImageFeatures:
        if i not in self.cache:
            self.cache[i] = self.compute(i)
            self.computed += 1
            if self.progress:
                self.progress("features", self.computed, self.total)
        return self.cache[i]

    def release(self, i: int) -> None:
        self.remaining[i] -= 1
        if self.remaining[i] == 0:
            self.cache.pop(i, None)


# --------------------------------------------------------------------------- database
def write_database(path: Path, reconstruction: pycolmap.Reconstruction, keypoints: Mapping[int, np.ndarray],
                    matches: Mapping[tuple[int, int], tuple[np.ndarray, Pose]]) -> None:
    """A COLMAP database holding the reconstruction's rigs, cameras, frames and images
    (same ids; unposed ones without keypoints), the keypoints, and the matches as verified
    calibrated two-view geometries."""
    database = pycolmap.Database.open(path)
    transaction = pycolmap.DatabaseTransaction(database)  # one commit: sqlite syncs on each otherwise
    try:
        for camera in reconstruction.cameras.values():
            database.write_camera(camera, use_camera_id=True)
        for rig in reconstruction.rigs.values():
            database.write_rig(rig, use_rig_id=True)
        for frame in reconstruction.frames.values():
            database.write_frame(frame, use_frame_id=True)
        for image_id, image in reconstruction.images.items():
            entry = pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image_id)
            entry.frame_id = image.frame_id
            database.write_image(entry, use_image_id=True)
            database.write_keypoints(image_id, keypoints.get(image_id, np.zeros((0, 2))).astype(np.float32))
        for (id_a, id_b), (pair_matches, T_b_from_a) in matches.items():
            database.write_matches(id_a, id_b, pair_matches)
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            geometry.inlier_matches = pair_matches
            geometry.cam2_from_cam1 = T_b_from_a.to_colmap()
            database.write_two_view_geometry(id_a, id_b, geometry)
    finally:
        del transaction  # commits
        database.close()


@contextmanager
def _pycolmap_warnings_only() -> Iterator[None]:
    """Keep pycolmap's per-image INFO log lines off stderr for the duration of a call."""
    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = max(previous, int(pycolmap.logging.WARNING))
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def _pipeline_options(config: TriangulateConfig, focal: float) -> pycolmap.IncrementalPipelineOptions:
    """pycolmap's options; ``focal``: the smallest focal length, to turn pixels into angles."""
    max_angle_error = math.degrees(math.atan(config.max_reproj_error / focal))
    options = pycolmap.IncrementalPipelineOptions()
    options.min_num_matches = config.min_pair_matches
    options.random_seed = 0
    options.triangulation.min_angle = config.min_tri_angle
    options.triangulation.ignore_two_view_tracks = True
    options.triangulation.merge_max_reproj_error = config.max_reproj_error
    options.triangulation.complete_max_reproj_error = config.max_reproj_error
    options.triangulation.random_seed = 0
    options.triangulation.create_max_angle_error = max_angle_error
    options.triangulation.continue_max_angle_error = max_angle_error
    options.mapper.filter_max_reproj_error = config.max_reproj_error
    options.mapper.filter_min_tri_angle = config.min_tri_angle
    return options


# --------------------------------------------------------------------------- the step
def triangulate_reconstruction(reconstruction: pycolmap.Reconstruction, image_root: str | Path,
                               output: str | Path, hypercolumns: Hypercolumns,
                               config: TriangulateConfig = TriangulateConfig(),
                               progress: Progress | None = None, overwrite: bool = False,
                               ) -> pycolmap.Reconstruction:
    """Triangulate 3D points for a model whose images have poses (any points it has are replaced).

    Args:
        reconstruction: cameras and posed images (unposed ones are carried over without
            observations); it is not modified.
        image_root: the folder image names are relative to.
        output: the COLMAP model directory to write (module docstring for how).
        hypercolumns: the feature extractor, e.g. ``load_hypercolumns(...).eval()``.
        config: matching and triangulation settings.
        progress: called ``(stage, done, total)`` for stages "features", "matching"
            and "triangulation".
        overwrite: replace an ``output`` that holds anything else than this run's model.
    Returns:
        the triangulated reconstruction (as written to ``output``).
    Raises:
        InputError: fewer than two posed images, missing image files, an image whose
            size is not its camera's, or ``output`` holding something else.
        LocsegError: pycolmap fails.
    """
    image_root, output = Path(image_root), Path(output)
    image_ids = [i for i in sorted(reconstruction.images) if reconstruction.images[i].has_pose]
    if len(image_ids) < 2:
        raise InputError(f"triangulation needs at least two images with a pose, the model has {len(image_ids)}")
    names = [reconstruction.images[i].name for i in image_ids]
    _check_images(image_root, names)
    record = _record(config, hypercolumns, names)
    reused = _reuse(output, record, overwrite)
    if reused is not None:
        return reused

    poses = [Pose.from_colmap(reconstruction.images[i].cam_from_world()) for i in image_ids]
    cameras = [Camera.from_colmap(reconstruction.cameras[reconstruction.images[i].camera_id]) for i in image_ids]
    pairs = select_pairs(poses, config.num_neighbors, config.max_view_angle)
    cache = _FeatureCache(lambda i: image_features(hypercolumns, image_root / names[i], cameras[i], config),
                          pairs, progress, len({i for p in pairs for i in p}))
    book = _KeypointBook()
    matches: dict[tuple[int, int], tuple[np.ndarray, Pose]] = {}
    for done, (i, j) in enumerate(pairs, start=1):
        features_i, features_j = cache.get(i), cache.get(j)
        book.add_anchors(image_ids[i], features_i.keypoints)
        book.add_anchors(image_ids[j], features_j.keypoints)
        T_j_from_i = poses[j] @ poses[i].inv()
        found = match_pair(features_i, features_j, cameras[i], cameras[j], T_j_from_i, config)
        if len(found) >= config.min_pair_matches:
            rows = np.concatenate([
                np.stack([found.a_anchors, book.append(image_ids[j], found.b_points)], axis=1),
                np.stack([book.append(image_ids[i], found.a_points), found.b_anchors], axis=1),
            ])
            matches[(image_ids[i], image_ids[j])] = (rows.astype(np.uint32), T_j_from_i)
        cache.release(i)
        cache.release(j)
        if progress:
            progress("matching", done, len(pairs))
    keypoints = book.arrays()
    return _triangulate(reconstruction, image_root, output, keypoints, matches, config, record, progress,
                        overwrite)


def _triangulate(reconstruction: pycolmap.Reconstruction, image_root: Path, output: Path,
                 keypoints: dict[int, np.ndarray], matches: dict, config: TriangulateConfig, record: dict,
                 progress: Progress | None, overwrite: bool) -> pycolmap.Reconstruction:
    """Write the database, run pycolmap, and move the model into place."""
    if progress:
        progress("triangulation", 0, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        database = workdir / "database.db"
        write_database(database, reconstruction, keypoints, matches)
        posed = pycolmap.Reconstruction(reconstruction)
        posed.delete_all_points2D_and_points3D()  # the database's keypoints replace any it had
        try:
            with _pycolmap_warnings_only():
                triangulated = pycolmap.triangulate_points(
                    posed, database, image_root, partial,
                    clear_points=True, options=_pipeline_options(config, _min_focal(reconstruction)),
                    refine_intrinsics=False)
        except Exception as err:  # pycolmap raises several types
            raise LocsegError(f"pycolmap could not triangulate the reference model: {err}") from err
        for point3D_id in [i for i, p in triangulated.points3D.items() if p.track.length() < config.min_track_length]:
            triangulated.delete_point3D(point3D_id)
        triangulated.write(partial)
        record["summary"] = _summary(triangulated, matches)
        (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if output.exists():
            _remove(output, overwrite)
        partial.rename(output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    if progress:
        progress("triangulation", 1, 1)
    return triangulated


def build_reference(images_root: str | Path, poses: Mapping[str, Pose], cameras: Mapping[str, Camera],
                    output: str | Path, hypercolumns: Hypercolumns,
                    config: TriangulateConfig = TriangulateConfig(), progress: Progress | None = None,
                    overwrite: bool = False) -> pycolmap.Reconstruction:
    """A reference map from images with known poses and cameras.

    Images get ids 1, 2, ... in the order of ``poses``; identical cameras share one
    camera id. Then ``triangulate_reconstruction`` does the rest.

    Args:
        images_root: the folder the names are relative to.
        poses: ``{name: T_cam_from_world}``, unbatched.
        cameras: ``{name: Camera}`` at the original image size, the same names.
        output, hypercolumns, config, progress, overwrite: as in ``triangulate_reconstruction``.
    Raises:
        InputError: the names of ``poses`` and ``cameras`` differ (the first few of
            each side are named), and as ``triangulate_reconstruction``.
    """
    _check_same_names(poses, cameras)
    camera_ids: dict[str, int] = {}
    model_cameras: dict[int, Camera] = {}
    specs = []
    for image_id, (name, T_cam_from_world) in enumerate(poses.items(), start=1):
        camera = cameras[name]
        if camera.ndim != 0 or T_cam_from_world.ndim != 0:
            raise InputError(f"the pose and camera of {name!r} must be unbatched")
        key = camera.to_string()
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            model_cameras[camera_ids[key]] = camera
        specs.append(ImageSpec(image_id, name, camera_ids[key], T_cam_from_world, np.zeros((0, 2))))
    reconstruction = build_reconstruction(model_cameras, specs, [])
    return triangulate_reconstruction(reconstruction, images_root, output, hypercolumns, config, progress,
                                      overwrite)


# --------------------------------------------------------------------------- helpers
def _names_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_same_names(poses: Mapping[str, Pose], cameras: Mapping[str, Camera]) -> None:
    only_poses = sorted(set(poses) - set(cameras))
    only_cameras = sorted(set(cameras) - set(poses))
    if only_poses or only_cameras:
        parts = []
        if only_poses:
            parts.append(f"{len(only_poses)} with a pose but no camera ({_names_list(only_poses)})")
        if only_cameras:
            parts.append(f"{len(only_cameras)} with a camera but no pose ({_names_list(only_cameras)})")
        raise InputError("the poses and the intrinsics name different images: " + "; ".join(parts))
    if len(poses) < 2:
        raise InputError(f"a reference map needs at least two images, got {len(poses)}")


def _check_images(image_root: Path, names: Sequence[str]) -> None:
    if not image_root.is_dir():
        raise InputError(f"{image_root}: the image folder does not exist")
    missing = [n for n in names if not (image_root / n).is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(names)} images are missing under {image_root}: "
                         f"{_names_list(missing)}")


def _record(config: TriangulateConfig, hypercolumns: Hypercolumns, names: Sequence[str]) -> dict:
    """What identifies a run: config, feature extractor (with a digest of its weights) and images."""
    digest = hashlib.sha256()
    for key, tensor in sorted(hypercolumns.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "features": {"hypercolumns": hypercolumns.describe(), "weights_sha256": digest.hexdigest()},
        "images_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }


def _reuse(output: Path, record: dict, overwrite: bool) -> pycolmap.Reconstruction | None:
    """The model already at ``output`` if it was made by the same run, else None."""
    if not output.exists() or overwrite:
        return None
    try:
        previous = json.loads((output / RECORD).read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and all(previous.get(k) == v for k, v in record.items()):
        return read_model(output)
    if output.is_dir() and not any(output.iterdir()):
        return None
    raise InputError(f"{output} exists and does not hold a model triangulated with these settings and images; "
                     "choose another output or overwrite it")


def _remove(path: Path, overwrite: bool) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    elif overwrite:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:  # defensive: _reuse refuses this case earlier
        raise InputError(f"{path} exists; choose another output or overwrite it")


def _min_focal(reconstruction: pycolmap.Reconstruction) -> float:
    return min(float(Camera.from_colmap(c).f.min()) for c in reconstruction.cameras.values())


def _summary(reconstruction: pycolmap.Reconstruction, matches: Mapping) -> dict:
    observations = [reconstruction.images[i].num_points3D for i in reconstruction.reg_image_ids()]
    return {
        "points3D": reconstruction.num_points3D(),
        "observations": int(sum(observations)),
        "mean_track_length": round(float(reconstruction.compute_mean_track_length()), 4),
        "median_observations_per_image": float(np.median(observations)) if observations else 0.0,
        "mean_reprojection_error": round(float(reconstruction.compute_mean_reprojection_error()), 4),
        "matched_pairs": len(matches),
        "matches": int(sum(len(m) for m, _ in matches.values())),
    }
