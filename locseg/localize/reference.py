"""The reference map the localizer matches against: reference images with poses,
cameras, and the 2D observations of 3D points in each.

A map comes from a COLMAP model (``pycolmap.Reconstruction``) and the folder of its
images. Keypoints are COLMAP pixel coordinates of the ORIGINAL reference image (the
centre of the top-left pixel is (0.5, 0.5)); the localizer rescales them to the network
input where it samples hypercolumns.

Reference images can carry thousands of observations, more than matching needs: the
cost of sparse-to-dense matching grows with their number. ``ReferenceMap.observations``
therefore keeps at most one observation per ``cell`` × ``cell`` pixel block (they would
sample nearly the same hypercolumn) and then at most ``max_points`` of those, chosen by
a generator seeded from the image name, so the choice is the same in every run.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from ..errors import InputError
from ..geometry import Camera, Pose
from ..io.colmap import read_model


@dataclass(frozen=True)
class Observations:
    """The 3D points seen by one reference image.

    Attributes:
        keypoints: (N, 2) float64 COLMAP pixel coordinates in the original image.
        point3D_ids: (N,) int64 ids of the observed 3D points.
    """

    keypoints: np.ndarray
    point3D_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.point3D_ids)


@dataclass
class ReferenceMap:
    """Reference images (name → pose, camera, observations) and 3D points of a map.

    Attributes:
        names: reference image names with a pose, in image-id order.
        poses: name → ``T_cam_from_world``.
        cameras: name → camera at the original image size.
        image_root: folder the names are relative to.
        point_ids: (P,) int64 ids of the 3D points, sorted.
        xyz: (P, 3) float64 world coordinates, row i for ``point_ids[i]``.
    """

    names: list[str]
    poses: dict[str, Pose]
    cameras: dict[str, Camera]
    image_root: Path
    point_ids: np.ndarray
    xyz: np.ndarray
    _observations: dict[str, Observations]

    @classmethod
    def from_reconstruction(cls, reconstruction: pycolmap.Reconstruction, image_root: str | Path) -> ReferenceMap:
        """Every image of ``reconstruction`` that has a pose; images need not exist yet."""
        names, poses, cameras, observations = [], {}, {}, {}
        for image_id in sorted(reconstruction.images):
            image = reconstruction.images[image_id]
            if not image.has_pose:
                continue
            names.append(image.name)
            poses[image.name] = Pose.from_colmap(image.cam_from_world())
            cameras[image.name] = Camera.from_colmap(reconstruction.cameras[image.camera_id])
            seen = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
            keypoints = np.array([xy for xy, _ in seen], dtype=np.float64).reshape(-1, 2)
            ids = np.array([i for _, i in seen], dtype=np.int64)
            observations[image.name] = Observations(keypoints, ids)
        if not names:
            raise InputError("the reference model has no image with a pose")
        point_ids = np.array(sorted(reconstruction.points3D), dtype=np.int64)
        xyz = np.array([reconstruction.points3D[i].xyz for i in point_ids], dtype=np.float64).reshape(-1, 3)
        return cls(names, poses, cameras, Path(image_root), point_ids, xyz, observations)

    @classmethod
    def read(cls, model: str | Path, image_root: str | Path) -> ReferenceMap:
        """Read a COLMAP model directory (``locseg.io.colmap.read_model``)."""
        return cls.from_reconstruction(read_model(model), image_root)

    @property
    def num_points(self) -> int:
        return len(self.point_ids)

    def has_points(self) -> bool:
        """Whether any reference image observes a 3D point (else the map must be triangulated)."""
        return self.num_points > 0 and any(len(o) for o in self._observations.values())

    def points(self, point3D_ids: np.ndarray) -> np.ndarray:
        """(N, 3) world coordinates of the given 3D point ids (all must exist)."""
        rows = np.searchsorted(self.point_ids, point3D_ids)
        rows = np.clip(rows, 0, max(len(self.point_ids) - 1, 0))
        if len(point3D_ids) and (len(self.point_ids) == 0 or np.any(self.point_ids[rows] != point3D_ids)):
            missing = np.setdiff1d(point3D_ids, self.point_ids)[:5].tolist()
            raise InputError(f"3D point ids not in the map: {missing}")
        return self.xyz[rows]

    def observations(self, name: str, max_points: int = 0, cell: float = 4.0) -> Observations:
        """The observations of reference image ``name``, thinned as the module says.

        Args:
            max_points: keep at most this many (0: no limit).
            cell: keep one observation per ``cell`` x ``cell`` pixel block (0: keep all).
        """
        if name not in self._observations:
            raise InputError(f"no reference image named {name!r} ({len(self.names)} in the map)")
        obs = self._observations[name]
        keep = np.arange(len(obs))
        if cell > 0 and len(obs):
            blocks = np.floor(obs.keypoints / cell).astype(np.int64)
            _, first = np.unique(blocks, axis=0, return_index=True)
            keep = np.sort(first)
        if max_points and len(keep) > max_points:
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            keep = np.sort(rng.choice(keep, max_points, replace=False))
        return Observations(obs.keypoints[keep], obs.point3D_ids[keep])

    def image_path(self, name: str) -> Path:
        return self.image_root / name

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
