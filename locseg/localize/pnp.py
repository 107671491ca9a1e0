"""RANSAC-PnP: a camera pose from 2D-3D matches, with the QUERY camera's intrinsics.

Estimators (``ESTIMATORS``): ``poselib`` (default; LO-RANSAC with P3P and a final
non-linear refinement) and ``pycolmap`` (COLMAP's ``estimate_and_refine_absolute_pose``).
Both take COLMAP pixel coordinates at the camera's own resolution (the original query
image), so ``max_error`` is in original pixels, and both handle every camera model of
``locseg.geometry.camera`` with its distortion. A pose counts as found when it has at
least ``min_inliers`` inliers.

``refit_pose`` polishes a pose found on one retrieved reference with the matches of
all of them: it keeps every match that the pose reprojects within ``max_error`` and
minimises the reprojection error over them with a Cauchy loss of scale
``refit_scale`` (poselib's non-linear refinement). The references see the scene from
other viewpoints, so their matches add points the winner did not match, and other
estimates of where the shared points lie in the query (not independent ones: they are
all read from the same query map, and a shared point counts once per reference). The
refit is kept when at least ``min_inliers`` matches support it, even if fewer than
supported the start: the Cauchy loss trades a few borderline inliers for a better fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError, RegistryError, check_shape
from ..geometry import Camera, Pose


@dataclass(frozen=True)
class PnPConfig:
    """RANSAC-PnP settings.

    ``max_error`` 6 px suits matches on a 4-px hypercolumn grid placed at sub-cell
    peaks (S2DHM used 12 px at its own resolution); 6 and 8 px both localized a
    training street's queries at least as well as 12 (benchmarks/RESULTS.md). The
    localizer states it in pixels of the network input and scales it to the query's
    resolution.

    ``max_iterations`` 1000 bounds the time spent on a retrieved reference that shares
    little with the query: at 0.9999 confidence RANSAC asks for ~9000 P3P samples at
    10 % inliers, and such a reference rarely wins. 1000 samples still find a
    hypothesis with 22 % inliers at that confidence (``log(1e-4) / log(1 - 0.22³)``).
    """

    estimator: str = "poselib"
    max_error: float = 6.0
    min_inliers: int = 12
    min_iterations: int = 100
    max_iterations: int = 1000
    confidence: float = 0.9999
    seed: int = 0
    refit: bool = True          # refit the winning pose over the matches of every retrieved reference
    refit_scale: float = 1.0    # pixels: scale of the refit's Cauchy loss

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise RegistryError("PnP estimator", self.estimator, sorted(ESTIMATORS))
        if self.max_error <= 0:
            raise InputError(f"max_error must be positive, got {self.max_error}")
        if self.min_inliers < 4:
            raise InputError(f"min_inliers must be at least 4, got {self.min_inliers}")
        if self.refit_scale <= 0:
            raise InputError(f"refit_scale must be positive, got {self.refit_scale}")


@dataclass(frozen=True)
class PnPResult:
    """``pose`` (cam_from_world) or None, and the (N,) bool ``inliers`` mask."""

    pose: Pose | None
    inliers: np.ndarray

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


def _poselib_camera(camera: Camera) -> dict:
    width, height = camera.pixel_size()
    return {"model": camera.model, "width": width, "height": height, "params": camera.params.double().tolist()}


def _poselib(points2D: np.ndarray, points3D: np.ndarray, camera: Camera, config: PnPConfig) -> PnPResult:
    import poselib

    camera_dict = _poselib_camera(camera)
    ransac = {"max_reproj_error": config.max_error, "min_iterations": config.min_iterations,
              "max_iterations": config.max_iterations, "success_prob": config.confidence,
              "seed": config.seed}
    pose, info = poselib.estimate_absolute_pose(points2D, points3D, camera_dict, ransac, {})
    inliers = np.asarray(info.get("inliers", []), dtype=bool).reshape(-1)
    if len(inliers) != len(points2D) or not inliers.any():
        return PnPResult(None, np.zeros(len(points2D), bool))
    return PnPResult(Pose.from_qt(np.array(pose.q), np.array(pose.t)), inliers)


def _pycolmap(points2D: np.ndarray, points3D: np.ndarray, camera: Camera, config: PnPConfig) -> PnPResult:
    import pycolmap

    options = pycolmap.AbsolutePoseEstimationOptions()
    options.ransac.max_error = config.max_error
    options.ransac.min_num_trials = config.min_iterations
    options.ransac.max_num_trials = config.max_iterations
    options.ransac.confidence = config.confidence
    options.ransac.random_seed = config.seed
    result = pycolmap.estimate_and_refine_absolute_pose(points2D, points3D, camera.to_colmap(), options)
    if result is None:
        return PnPResult(None, np.zeros(len(points2D), bool))
    return PnPResult(Pose.from_colmap(result["cam_from_world"]), np.asarray(result["inlier_mask"], bool))


ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray, Camera, PnPConfig], PnPResult]] = {
    "poselib": _poselib,
    "pycolmap": _pycolmap,
}


def _check_matches(points2D: np.ndarray, points3D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points2D = np.ascontiguousarray(points2D, dtype=np.float64)
    points3D = np.ascontiguousarray(points3D, dtype=np.float64)
    check_shape("points2D", points2D.shape, "(N, 2)", points2D.ndim == 2 and points2D.shape[1] == 2)
    check_shape("points3D", points3D.shape, f"({len(points2D)}, 3)",
                points3D.shape == (len(points2D), 3))
    return points2D, points3D


def estimate_pose(points2D: np.ndarray, points3D: np.ndarray, camera: Camera,
                  config: PnPConfig = PnPConfig()) -> PnPResult:
    """RANSAC-PnP with ``config.estimator``.

    Args:
        points2D: (N, 2) COLMAP pixel coordinates in the image of ``camera``.
        points3D: (N, 3) world coordinates of the matched points.
        camera: the query's camera, unbatched.
    Returns:
        the pose with its inlier mask; ``pose`` is None when fewer than
        ``config.min_inliers`` inliers support the best hypothesis (or N < 4).
    """
    points2D, points3D = _check_matches(points2D, points3D)
    if len(points2D) < max(4, config.min_inliers):
        return PnPResult(None, np.zeros(len(points2D), bool))
    result = ESTIMATORS[config.estimator](points2D, points3D, camera, config)
    if result.pose is None or result.num_inliers < config.min_inliers:
        return PnPResult(None, result.inliers)
    return result


def reprojection_inliers(points2D: np.ndarray, points3D: np.ndarray, camera: Camera, pose: Pose,
                         max_error: float) -> np.ndarray:
    """(N,) bool: the points in front of the camera that ``pose`` reprojects within ``max_error`` pixels."""
    points2D, points3D = _check_matches(points2D, points3D)
    uv, valid = camera.double().project(pose.double().transform(torch.from_numpy(points3D)))
    error = (uv - torch.from_numpy(points2D)).norm(dim=-1)
    return (valid & (error < max_error)).numpy()


def refit_pose(points2D: np.ndarray, points3D: np.ndarray, camera: Camera, pose: Pose,
               config: PnPConfig = PnPConfig()) -> PnPResult:
    """``pose`` refined over every match it reprojects within ``config.max_error`` (module docstring).

    Args:
        points2D, points3D: (N, 2) pixels of ``camera`` and (N, 3) world points, the
            pooled matches of several references (outliers included).
        pose: the cam_from_world pose to start from, e.g. the best reference's RANSAC pose.
    Returns:
        the refined pose and its (N,) inlier mask at ``max_error``; ``pose`` itself, with
        its own inliers, when fewer than ``config.min_inliers`` matches support either.
    """
    import poselib

    points2D, points3D = _check_matches(points2D, points3D)
    inliers = reprojection_inliers(points2D, points3D, camera, pose, config.max_error)
    if inliers.sum() < config.min_inliers:
        return PnPResult(pose, inliers)
    start = poselib.CameraPose()
    start.q, start.t = pose.q.double().numpy(), pose.t.double().numpy()
    refined, _ = poselib.refine_absolute_pose(points2D[inliers], points3D[inliers], start, _poselib_camera(camera),
                                              {"loss_type": "CAUCHY", "loss_scale": config.refit_scale})
    refit = Pose.from_qt(np.array(refined.q), np.array(refined.t))
    refit_inliers = reprojection_inliers(points2D, points3D, camera, refit, config.max_error)
    if refit_inliers.sum() < config.min_inliers:
        return PnPResult(pose, inliers)
    return PnPResult(refit, refit_inliers)
