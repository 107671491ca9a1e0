"""Files of the Cross-Season Correspondence dataset (Larsson et al., CVPR 2019).

The dataset holds one MATLAB v7.3 file per image pair. A v7.3 MAT-file is an HDF5
file behind a 512-byte header (the HDF5 "userblock"), so h5py reads it directly.
Datasets, with shapes as h5py reports them (MATLAB is column-major, so h5py sees
every MATLAB array transposed):

- ``im_i_path``, ``im_j_path``: image paths relative to the image root, as MATLAB
  char arrays: uint16 character codes, shape (L, 1); decoded with ``chr`` over the
  flattened array.
- ``pt_i``, ``pt_j``: (N, 2) pixel coordinates (x, y) of the correspondences in the
  original images, float64; (MATLAB 2×N). In the files, pixel centres lie on integer
  coordinates (the dataset's own loader rounds a point to its pixel with
  ``int(x + 0.5)``). locseg works in COLMAP's convention, where the centre of the
  top-left pixel is (0.5, 0.5): reading adds 0.5, writing subtracts it, and
  ``CorrespondencePair`` always holds COLMAP coordinates.
- ``dist_from_center``: (N, 1) float64 (MATLAB 1×N). The dataset does not define it;
  its loader weighs each correspondence by ``exp(-dist_from_center)``, so it must be
  small for a good match. locseg writes the distance in metres between the two 3D
  points that were matched to make the correspondence.

On read, points stored transposed as (2, N) are accepted when N != 2 (when N == 2
the layout is ambiguous and the documented (N, 2) is assumed), and
``dist_from_center`` may be (N,), (N, 1) or (1, N). Files written here carry the
MATLAB header and ``MATLAB_class`` attributes, so MATLAB's ``load`` accepts them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from locseg.errors import FormatError, InputError, ShapeError

from ._common import atomic_output

DATASETS = ("im_i_path", "im_j_path", "pt_i", "pt_j", "dist_from_center")
SUFFIX = ".mat"
USERBLOCK_SIZE = 512
FILE_TO_COLMAP = 0.5  # added to file coordinates to get COLMAP pixel coordinates
# The header's creation date: SOURCE_DATE_EPOCH if set, else a fixed date, so that the
# same correspondences always give the same bytes.
_HEADER_EPOCH = 946684800


@dataclass(frozen=True, eq=False)
class CorrespondencePair:
    """The correspondences between two images of the same place in two conditions.

    Attributes:
        image_i: path of the first image, relative to the image root.
        image_j: path of the second image.
        points_i: (N, 2) float64 pixel coordinates (x, y) in image i, COLMAP convention.
        points_j: (N, 2) float64 pixel coordinates (x, y) in image j.
        dist_from_center: (N,) float64, see the module docstring.
    """

    image_i: str
    image_j: str
    points_i: np.ndarray
    points_j: np.ndarray
    dist_from_center: np.ndarray

    def __post_init__(self) -> None:
        for field in ("points_i", "points_j", "dist_from_center"):
            object.__setattr__(self, field, np.asarray(getattr(self, field), dtype=np.float64))
        n = len(self.points_i)
        for field, expected in (("points_i", (n, 2)), ("points_j", (n, 2)), ("dist_from_center", (n,))):
            shape = getattr(self, field).shape
            if shape != expected:
                raise ShapeError(f"{field} has shape {shape}, expected {expected} (N = {n} from points_i)")

    def __len__(self) -> int:
        return len(self.points_i)


def read_image_paths(path: str | Path) -> tuple[str, str]:
    """The two image paths of one correspondence file, without reading its points.

    Raises as ``read_correspondences`` does, for the two path datasets.
    """
    path = Path(path)
    with _open(path, DATASETS[:2]) as f:
        return _read_chars(path, f["im_i_path"]), _read_chars(path, f["im_j_path"])


def _open(path: Path, datasets: tuple[str, ...]) -> h5py.File:
    """``path`` open for reading, checked to hold ``datasets``."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise FormatError(path, f"not an HDF5 (MATLAB v7.3) file: {err}") from None
    missing = [name for name in datasets if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        f.close()
        raise FormatError(path, f"missing dataset(s) {', '.join(missing)}; expected {', '.join(DATASETS)}")
    return f


def read_correspondences(path: str | Path) -> CorrespondencePair:
    """Read one correspondence file.

    Raises:
        InputError: the file does not exist.
        FormatError: naming the file and the missing or ill-shaped dataset, or saying
            the file is not HDF5 (MAT-files before v7.3 are not).
    """
    path = Path(path)
    with _open(path, DATASETS) as f:
        image_i = _read_chars(path, f["im_i_path"])
        image_j = _read_chars(path, f["im_j_path"])
        points_i = _read_points(path, f["pt_i"])
        points_j = _read_points(path, f["pt_j"])
        dist = _read_vector(path, f["dist_from_center"])
    n = len(points_i)
    if len(points_j) != n or len(dist) != n:
        raise FormatError(
            path,
            f"pt_i has {n} points but pt_j has {len(points_j)} and dist_from_center {len(dist)}",
        )
    return CorrespondencePair(image_i, image_j, points_i + FILE_TO_COLMAP, points_j + FILE_TO_COLMAP, dist)


def write_correspondences(path: str | Path, pair: CorrespondencePair) -> Path:
    """Write one correspondence file in the dataset's layout, as a MATLAB v7.3 file.

    The file is written to a temporary name and renamed, so a reader never sees a
    partial file.

    Returns:
        ``path``.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE) as f:
            _write_chars(f, "im_i_path", pair.image_i)
            _write_chars(f, "im_j_path", pair.image_j)
            _write_double(f, "pt_i", pair.points_i - FILE_TO_COLMAP)
            _write_double(f, "pt_j", pair.points_j - FILE_TO_COLMAP)
            _write_double(f, "dist_from_center", pair.dist_from_center[:, None])
        with open(tmp, "r+b") as raw:
            raw.write(_matlab_header())
    return path


def iter_correspondence_files(directory: str | Path) -> Iterator[Path]:
    """The ``*.mat`` files directly in ``directory``, sorted by name.

    Raises:
        InputError: ``directory`` is not a directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    return iter(sorted(p for p in directory.iterdir() if p.suffix == SUFFIX and p.is_file()))


def _read_chars(path: Path, dataset: h5py.Dataset) -> str:
    if _is_matlab_empty(dataset):
        return ""
    data = dataset[()]
    if isinstance(data, (bytes, str)):  # tolerated: a plain HDF5 string
        return data.decode("utf-8") if isinstance(data, bytes) else data
    data = np.asarray(data)
    if data.dtype.kind not in "ui":
        name = dataset.name.lstrip("/")
        raise FormatError(path, f"dataset {name} has dtype {data.dtype}, expected uint16 character codes")
    return "".join(chr(int(x)) for x in data.ravel())


def _read_points(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    name = dataset.name.lstrip("/")
    if _is_matlab_empty(dataset):
        return np.zeros((0, 2))
    data = _read_numeric(path, dataset)
    if data.ndim == 2 and data.shape[1] == 2:
        return data
    if data.ndim == 2 and data.shape[0] == 2:
        return data.T
    raise FormatError(path, f"dataset {name} has shape {data.shape}, expected (N, 2) or (2, N)")


def _read_vector(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    name = dataset.name.lstrip("/")
    if _is_matlab_empty(dataset):
        return np.zeros(0)
    data = _read_numeric(path, dataset)
    if data.ndim == 1 or (data.ndim == 2 and 1 in data.shape):
        return data.ravel()
    raise FormatError(path, f"dataset {name} has shape {data.shape}, expected (N,), (N, 1) or (1, N)")


def _read_numeric(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    if dataset.dtype.kind not in "uif":
        name = dataset.name.lstrip("/")
        raise FormatError(path, f"dataset {name} has dtype {dataset.dtype}, expected numbers")
    return np.asarray(dataset[()], dtype=np.float64)


def _is_matlab_empty(dataset: h5py.Dataset) -> bool:
    # MATLAB stores an empty array as its dimensions, flagged by this attribute.
    return bool(np.any(dataset.attrs.get("MATLAB_empty", 0)))


def _write_chars(f: h5py.File, name: str, text: str) -> None:
    if any(ord(c) > 0xFFFF for c in text):
        raise InputError(f"{name} {text!r} holds characters a MATLAB char array cannot store")
    codes = np.array([ord(c) for c in text], dtype=np.uint16)
    if len(codes) == 0:
        _write_empty(f, name, "char", (1, 0))
        return
    dataset = f.create_dataset(name, data=codes[:, None])  # MATLAB 1×L
    dataset.attrs["MATLAB_class"] = np.bytes_("char")
    dataset.attrs["MATLAB_int_decode"] = np.int32(2)


def _write_double(f: h5py.File, name: str, data: np.ndarray) -> None:
    data = np.asarray(data, dtype=np.float64)
    if data.size == 0:
        _write_empty(f, name, "double", data.shape[::-1])
        return
    dataset = f.create_dataset(name, data=data)
    dataset.attrs["MATLAB_class"] = np.bytes_("double")


def _write_empty(f: h5py.File, name: str, matlab_class: str, matlab_shape: tuple[int, ...]) -> None:
    dataset = f.create_dataset(name, data=np.array(matlab_shape, dtype=np.uint64))
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    dataset.attrs["MATLAB_empty"] = np.uint8(1)


def _matlab_header() -> bytes:
    """The 128-byte MAT-file header that MATLAB expects at the start of the userblock."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", _HEADER_EPOCH))
    created = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(epoch))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    # 116 bytes of text, 8 bytes of subsystem offset, version 0x0200, endianness "IM".
    return text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
