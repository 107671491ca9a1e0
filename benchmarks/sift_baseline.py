"""The baseline a user would pick instead of locseg: SIFT, a SIFT map, MNN + ratio, PnP.

Everything that is not the feature differs from locseg as little as possible, so a
comparison measures the features:

- SIFT (pycolmap's CPU extractor, COLMAP's defaults with RootSIFT normalisation) on
  the grayscale image at its ORIGINAL resolution, at most ``max_features`` per image.
  pycolmap returns keypoints in COLMAP pixel coordinates (the centre of the top-left
  pixel is (0.5, 0.5)), the convention of the rest of locseg;
- the map: SIFT of every reference image; pairs of references with nearby cameras
  (``locseg.localize.triangulate.select_pairs``, from the KNOWN poses); mutual
  nearest neighbours that pass Lowe's ratio test, kept when both points lie within
  ``max_epipolar_error`` pixels of their partner's epipolar line under the known
  relative pose, written to a COLMAP database as verified two-view geometries;
  ``pycolmap.triangulate_points`` with the known poses and intrinsics of the given
  model (its own 3D points are ignored) and COLMAP's triangulation defaults otherwise
  (two-view tracks ignored), as hloc's triangulation step does. The map lives in a
  directory named after its config (``features.npz``, ``model/`` with
  ``sift_map.json``) and later runs reuse it;
- a query: its SIFT; for each reference that locseg's retrieval returned (the caller
  passes them, so both methods see the same references), MNN + ratio matching
  against the reference keypoints that observe a 3D point; the same RANSAC-PnP
  (``locseg.localize.pnp.estimate_pose``) with the query's camera; the hypothesis
  with the most inliers wins and is refitted over the matches of every retrieved
  reference (``refit_pose``, when ``pnp.refit``), and without one the query gets the pose of its best
  retrieved reference, as in locseg.

Example::

    >>> reference = build_sift_reference(read_model("street/reference/model"), "street/images", "work/")
    >>> localizer = SiftLocalizer(reference, SiftConfig())
    >>> result = localizer.localize(load_image("street/images/night/cam1/000003.png"), camera, retrieved)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
import torch

from locseg.errors import InputError, LocsegError, check_shape
from locseg.geometry import Camera, Pose
from locseg.io.colmap import read_model
from locseg.localize.pnp import PnPConfig, estimate_pose, refit_pose
from locseg.localize.triangulate import epipolar_errors, select_pairs, write_database
from locseg.models.preprocess import load_image

Progress = Callable[[str, int, int], None]

FORMAT_VERSION = 1
RECORD = "sift_map.json"   # in the model directory: what built it, and a summary
DESCRIPTOR_SCALE = 512.0   # pycolmap quantises unit SIFT descriptors as round(512 · value), uint8
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601, as PIL's "L" conversion


@dataclass(frozen=True)
class SiftConfig:
    """Settings of the SIFT baseline.

    Attributes:
        max_features: SIFT features kept per image (the strongest).
        ratio: Lowe's ratio: keep a nearest neighbour whose descriptor distance is
            below ``ratio`` times the second nearest's (map and queries).
        num_neighbors, max_view_angle: reference pairs of the map (``select_pairs``).
        max_epipolar_error: pixels; map matches farther from their epipolar line fail.
        min_pair_matches: reference pairs with fewer matches are left out of the map.
        min_tri_angle: degrees; max_reproj_error: pixels (``pycolmap.triangulate_points``).
        pnp: RANSAC-PnP, the same as locseg's.
    """

    max_features: int = 4096
    ratio: float = 0.8
    num_neighbors: int = 6
    max_view_angle: float = 45.0
    max_epipolar_error: float = 4.0
    min_pair_matches: int = 15
    min_tri_angle: float = 1.5
    max_reproj_error: float = 4.0
    pnp: PnPConfig = field(default_factory=PnPConfig)

    def __post_init__(self) -> None:
        if self.max_features < 1:
            raise InputError(f"max_features must be at least 1, got {self.max_features}")
        if not 0 < self.ratio <= 1:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.max_epipolar_error <= 0:
            raise InputError(f"max_epipolar_error must be positive, got {self.max_epipolar_error}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def map_dict(self) -> dict:
        """The settings the map depends on (not the query-time ones)."""
        return {k: v for k, v in self.to_dict().items() if k != "pnp"}

    def map_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.map_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def triangulation_options(self) -> pycolmap.IncrementalPipelineOptions:
        """pycolmap's defaults (COLMAP's), with this config's thresholds and a fixed seed."""
        options = pycolmap.IncrementalPipelineOptions()
        options.min_num_matches = self.min_pair_matches
        options.random_seed = 0
        options.triangulation.random_seed = 0
        options.triangulation.min_angle = self.min_tri_angle
        options.triangulation.merge_max_reproj_error = self.max_reproj_error
        options.triangulation.complete_max_reproj_error = self.max_reproj_error
        options.mapper.filter_max_reproj_error = self.max_reproj_error
        options.mapper.filter_min_tri_angle = self.min_tri_angle
        return options


# --------------------------------------------------------------------------- features
@dataclass(frozen=True)
class SiftFeatures:
    """SIFT of one image.

    Attributes:
        keypoints: (N, 2) float64 COLMAP pixel coordinates of the original image.
        descriptors: (N, 128) float32 unit RootSIFT descriptors.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


class SiftExtractor:
    """pycolmap's CPU SIFT with at most ``max_features`` features per image."""

    def __init__(self, max_features: int):
        options = pycolmap.FeatureExtractionOptions()
        options.sift.max_num_features = max_features
        options.num_threads = 1
        self.extractor = pycolmap.FeatureExtractor.create(options, device=pycolmap.Device.cpu)

    def __call__(self, image: torch.Tensor) -> SiftFeatures:
        """SIFT of a (3, H, W) RGB or (H, W) gray float image in [0, 1], at its size."""
        if image.ndim == 3:
            check_shape("image", tuple(image.shape), "(3, H, W)", image.shape[0] == 3)
            image = torch.einsum("c,chw->hw", torch.tensor(LUMA, dtype=image.dtype), image)
        check_shape("image", tuple(image.shape), "(H, W) or (3, H, W)", image.ndim == 2)
        gray = np.ascontiguousarray(image.float().clamp(0, 1).numpy())
        keypoints, descriptors = self.extractor.extract_from_float32_array(gray)
        xy = np.array([(k.x, k.y) for k in keypoints], dtype=np.float64).reshape(-1, 2)
        return SiftFeatures(xy, _unit(descriptors.data))


def _unit(quantised: np.ndarray) -> np.ndarray:
    """(N, 128) uint8 pycolmap descriptors -> float32 unit vectors."""
    descriptors = np.asarray(quantised, dtype=np.float32).reshape(-1, 128)
    return descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- matching
def match_mnn_ratio(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float) -> np.ndarray:
    """Mutual nearest neighbours (L2) that pass Lowe's ratio test in a.

    Args:
        desc_a: (Na, D), desc_b: (Nb, D) unit descriptors.
        ratio: keep ``i -> j`` if ``‖a_i - b_j‖ < ratio · ‖a_i - b_second‖``.
    Returns:
        (M, 2) int64 ``(index in a, index in b)``.
    """
    if len(desc_a) == 0 or len(desc_b) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    similarity = desc_a @ desc_b.T
    two = np.argpartition(-similarity, 1, axis=1)[:, :2]
    top = np.take_along_axis(similarity, two, axis=1)
    order = np.argsort(-top, axis=1)
    two, top = np.take_along_axis(two, order, axis=1), np.take_along_axis(top, order, axis=1)
    distance = np.sqrt(np.maximum(2.0 - 2.0 * top, 0.0))
    index_a = np.arange(len(desc_a))
    keep = (distance[:, 0] < ratio * distance[:, 1]) & (similarity.argmax(axis=0)[two[:, 0]] == index_a)
    return np.stack([index_a[keep], two[keep, 0]], axis=1).astype(np.int64)


# --------------------------------------------------------------------------- the map
@dataclass
class SiftReference:
    """The SIFT map: per reference image, the descriptors of its keypoints that observe
    a 3D point, and those points.

    Attributes:
        poses: name -> ``T_cam_from_world`` of every reference image.
        descriptors: name -> (N, 128) float32 unit descriptors.
        points3D: name -> (N, 3) float64 world coordinates, row for row.
        summary: what the triangulation produced (``triangulation.json``).
    """

    poses: dict[str, Pose]
    descriptors: dict[str, np.ndarray]
    points3D: dict[str, np.ndarray]
    summary: dict

    @classmethod
    def from_model(cls, model: pycolmap.Reconstruction, features: dict[str, SiftFeatures],
                   summary: dict) -> SiftReference:
        poses, descriptors, points3D = {}, {}, {}
        for image_id in sorted(model.reg_image_ids()):
            image = model.images[image_id]
            sift = features[image.name]
            if image.num_points2D() != len(sift):
                raise InputError(f"{image.name}: the SIFT model has {image.num_points2D()} keypoints, "
                                 f"the features {len(sift)}; rebuild the model")
            observed = [(i, p.point3D_id) for i, p in enumerate(image.points2D) if p.has_point3D()]
            rows = np.array([i for i, _ in observed], dtype=np.int64)
            poses[image.name] = Pose.from_colmap(image.cam_from_world())
            descriptors[image.name] = sift.descriptors[rows]
            points3D[image.name] = np.array([model.points3D[j].xyz for _, j in observed],
                                            dtype=np.float64).reshape(-1, 3)
        return cls(poses, descriptors, points3D, summary)


def build_sift_reference(reconstruction: pycolmap.Reconstruction, image_root: str | Path, work: str | Path,
                         config: SiftConfig = SiftConfig(), progress: Progress | None = None) -> SiftReference:
    """The SIFT map of a model's posed images, built once in ``work/sift-<digest>/`` and reused.

    Args:
        reconstruction: cameras and posed reference images; its 3D points are ignored.
        image_root: the folder image names are relative to.
        work: where the map's directory goes (``features.npz`` and ``model/``).
        progress: called ``(stage, done, total)`` for "sift features" and "sift matching".
    """
    directory = Path(work) / f"sift-{config.map_digest()}"
    image_root = Path(image_root)
    image_ids = [i for i in sorted(reconstruction.images) if reconstruction.images[i].has_pose]
    names = [reconstruction.images[i].name for i in image_ids]
    features = _reference_features(directory / "features.npz", image_root, names, config, progress)
    record = {
        "format_version": FORMAT_VERSION,
        "config": config.map_dict(),
        "features": {"extractor": "pycolmap SIFT (CPU)", "pycolmap": pycolmap.__version__},
        "images_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }
    output = directory / "model"
    stored = _read_record(output)
    if stored is not None and {k: v for k, v in stored.items() if k != "summary"} == record:
        model, summary = read_model(output), stored["summary"]
    else:
        keypoints, matches = _match_references(reconstruction, image_ids, features, config, progress)
        model, summary = _triangulate(reconstruction, image_root, output, image_ids, keypoints, matches,
                                      config, record)
    return SiftReference.from_model(model, features, summary)


def _read_record(model: Path) -> dict | None:
    """The record of a finished map, None if there is none."""
    try:
        record = json.loads((model / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "summary" in record else None


def _reference_features(path: Path, image_root: Path, names: Sequence[str], config: SiftConfig,
                        progress: Progress | None) -> dict[str, SiftFeatures]:
    """SIFT of every reference image, from ``path`` if it holds them, else computed and saved."""
    if path.is_file():
        with np.load(path) as saved:
            if all(f"{n}:keypoints" in saved for n in names):
                return {n: SiftFeatures(saved[f"{n}:keypoints"].astype(np.float64),
                                        _unit(saved[f"{n}:descriptors"])) for n in names}
    extract = SiftExtractor(config.max_features)
    arrays, features = {}, {}
    for done, name in enumerate(names, start=1):
        sift = extract(load_image(image_root / name))
        features[name] = sift
        arrays[f"{name}:keypoints"] = sift.keypoints.astype(np.float32)
        arrays[f"{name}:descriptors"] = np.round(sift.descriptors * DESCRIPTOR_SCALE).clip(0, 255).astype(np.uint8)
        if progress:
            progress("sift features", done, len(names))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)
    # what a rerun reads back: the saved (quantised) descriptors, so both runs match the same way
    return {n: SiftFeatures(arrays[f"{n}:keypoints"].astype(np.float64), _unit(arrays[f"{n}:descriptors"]))
            for n in names}


def _match_references(reconstruction: pycolmap.Reconstruction, image_ids: list[int],
                      features: dict[str, SiftFeatures], config: SiftConfig, progress: Progress | None,
                      ) -> tuple[dict[int, np.ndarray], dict[tuple[int, int], tuple[np.ndarray, Pose]]]:
    """Keypoints per image id and verified matches per pair ``(id_a, id_b)`` with ``T_b_from_a``."""
    images = [reconstruction.images[i] for i in image_ids]
    poses = [Pose.from_colmap(image.cam_from_world()) for image in images]
    cameras = [Camera.from_colmap(reconstruction.cameras[image.camera_id]) for image in images]
    sift = [features[image.name] for image in images]
    pairs = select_pairs(poses, config.num_neighbors, config.max_view_angle)
    matches = {}
    for done, (i, j) in enumerate(pairs, start=1):
        found = match_mnn_ratio(sift[i].descriptors, sift[j].descriptors, config.ratio)
        T_j_from_i = poses[j] @ poses[i].inv()
        errors = epipolar_errors(sift[i].keypoints[found[:, 0]], sift[j].keypoints[found[:, 1]],
                                 cameras[i], cameras[j], T_j_from_i)
        found = found[errors <= config.max_epipolar_error]  # NaN fails
        if len(found) >= config.min_pair_matches:
            matches[(image_ids[i], image_ids[j])] = (found.astype(np.uint32), T_j_from_i)
        if progress:
            progress("sift matching", done, len(pairs))
    keypoints = {image_id: s.keypoints for image_id, s in zip(image_ids, sift)}
    return keypoints, matches


def _triangulate(reconstruction: pycolmap.Reconstruction, image_root: Path, output: Path, image_ids: list[int],
                 keypoints: dict[int, np.ndarray], matches: dict, config: SiftConfig, record: dict,
                 ) -> tuple[pycolmap.Reconstruction, dict]:
    """Database, ``pycolmap.triangulate_points``, then the model and its record moved into
    place (built in ``OUTPUT.partial``, so an interrupted build leaves no model)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    workdir = Path(tempfile.mkdtemp(prefix=".sift.", dir=output.parent))
    try:
        database = workdir / "database.db"
        write_database(database, reconstruction, keypoints, matches)
        try:
            model = pycolmap.triangulate_points(pycolmap.Reconstruction(reconstruction), database, image_root,
                                                partial, clear_points=True, options=config.triangulation_options(),
                                                refine_intrinsics=False)
        except Exception as err:  # pycolmap raises several types
            raise LocsegError(f"pycolmap could not triangulate the SIFT map: {err}") from err
        model.write(partial)
        observations = [model.images[i].num_points3D for i in model.reg_image_ids()]
        summary = {"points3D": model.num_points3D(), "observations": int(sum(observations)),
                   "median_observations_per_image": float(np.median(observations)),
                   "mean_track_length": round(float(model.compute_mean_track_length()), 3),
                   "mean_reprojection_error": round(float(model.compute_mean_reprojection_error()), 3),
                   "matched_pairs": len(matches), "matches": int(sum(len(m) for m, _ in matches.values()))}
        (partial / RECORD).write_text(json.dumps(record | {"summary": summary}, indent=2) + "\n")
        shutil.rmtree(output, ignore_errors=True)
        partial.rename(output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    return model, summary


# --------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class SiftResult:
    """The outcome for one query: as ``locseg.localize.pipeline.QueryResult``, fewer fields.

    ``timing`` holds seconds for "extraction", "matching" and "pnp".
    """

    pose: Pose
    success: bool
    reference: str
    matches: list[int]
    inliers: list[int]
    timing: dict[str, float]


class SiftLocalizer:
    """Localizes queries against a ``SiftReference`` given their retrieved references."""

    def __init__(self, reference: SiftReference, config: SiftConfig = SiftConfig()):
        self.reference, self.config = reference, config
        self.extract = SiftExtractor(config.max_features)

    def localize(self, image: torch.Tensor, camera: Camera, retrieved: Sequence[str]) -> SiftResult:
        """Localize one query.

        Args:
            image: (3, H, W) float in [0, 1], the original query image.
            camera: its camera at that size.
            retrieved: reference names, best first (at least one).
        """
        if not retrieved:
            raise InputError("a query needs at least one retrieved reference")
        timing = {}
        clock = time.perf_counter()
        query = self.extract(image)
        timing["extraction"] = time.perf_counter() - clock
        timing["matching"] = timing["pnp"] = 0.0
        best, best_inliers, best_reference = None, -1, retrieved[0]
        matches, inliers, pooled = [], [], []
        for name in retrieved:
            clock = time.perf_counter()
            found = match_mnn_ratio(query.descriptors, self.reference.descriptors[name], self.config.ratio)
            points2D = query.keypoints[found[:, 0]]
            points3D = self.reference.points3D[name][found[:, 1]]
            pooled.append((points2D, points3D))
            timing["matching"] += time.perf_counter() - clock

            clock = time.perf_counter()
            result = estimate_pose(points2D, points3D, camera, self.config.pnp)
            timing["pnp"] += time.perf_counter() - clock
            matches.append(len(found))
            inliers.append(result.num_inliers)
            if result.pose is not None and result.num_inliers > best_inliers:
                best, best_inliers, best_reference = result.pose, result.num_inliers, name
        if best is None:
            return SiftResult(self.reference.poses[retrieved[0]], False, retrieved[0], matches, inliers, timing)
        if self.config.pnp.refit:   # as locseg: refit over the matches of every retrieved reference
            clock = time.perf_counter()
            best = refit_pose(*(np.concatenate(parts) for parts in zip(*pooled)), camera, best, self.config.pnp).pose
            timing["pnp"] += time.perf_counter() - clock
        return SiftResult(best, True, best_reference, matches, inliers, timing)
