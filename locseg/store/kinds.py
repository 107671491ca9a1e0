"""What each kind of store entry holds, and the checks ``put`` applies to it.

Conventions of the stored arrays (stated here once):

- ``global`` (one entry per image): ``descriptor`` (D,) float32, a global
  descriptor for retrieval (NetVLAD).
- ``sparse`` (one entry per reference image): ``keypoints`` (N, 2) float32,
  COLMAP pixel coordinates ``(u, v)`` in the ORIGINAL image (centre of the
  top-left pixel at (0.5, 0.5)), not in the resized network input;
  ``point3D_ids`` (N,) int64, the 3D point each keypoint observes;
  ``descriptors`` (N, C) float16, e.g. hypercolumns sampled at the keypoints.
- ``labels`` (one entry per image): ``labels`` (H, W) uint8 Cityscapes trainIds
  (255 = ignore) and optionally ``logits`` (C, H, W) float16.
- ``point_labels`` (one entry per map, named :data:`MAP_ENTRY`): ``point3D_ids``
  (P,) int64 and ``labels`` (P,) uint8 trainIds of the 3D points.

Arrays are cast to these dtypes on ``put``: floats may narrow (float64 to
float16), but a value that does not survive the cast (an overflow to inf, a
label outside 0..255, ids given as floats) is refused. Entries of other kinds are
stored as given, with only the generic checks (numeric arrays, identifier names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from locseg.errors import InputError, ShapeError, check_shape

from .layout import check_array_name

GLOBAL = "global"
SPARSE = "sparse"
LABELS = "labels"
POINT_LABELS = "point_labels"
MAP_ENTRY = "map"
"""The entry name of per-map kinds (``point_labels``)."""


class SparseFeatures(NamedTuple):
    """Features at the 2D observations of 3D points in one reference image.

    Attributes:
        keypoints: (N, 2) float32 COLMAP pixel coordinates in the original image.
        point3D_ids: (N,) int64 ids of the observed 3D points.
        descriptors: (N, C) float16.
    """

    keypoints: np.ndarray
    point3D_ids: np.ndarray
    descriptors: np.ndarray


class SegmentationLabels(NamedTuple):
    """The segmentation of one image.

    Attributes:
        labels: (H, W) uint8 Cityscapes trainIds, 255 = ignore.
        logits: (C, H, W) float16, or None when they were not stored.
    """

    labels: np.ndarray
    logits: np.ndarray | None = None


class PointLabels(NamedTuple):
    """The semantic label of every labelled 3D point of a map.

    Attributes:
        point3D_ids: (P,) int64.
        labels: (P,) uint8 Cityscapes trainIds.
    """

    point3D_ids: np.ndarray
    labels: np.ndarray


def as_array(value: Any, what: str) -> np.ndarray:
    """A contiguous numpy copy of an array or tensor with a numeric dtype."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.array(value, order="C", copy=True)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{what} has dtype {array.dtype}; the store holds boolean, integer and float arrays")
    return array


def normalize(kind: str, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check ``arrays`` for an entry of ``kind`` and cast them to its dtypes.

    Returns:
        Fresh numpy arrays, safe to keep after the caller changes its own.

    Raises:
        InputError: a name that is not an identifier, a non-numeric array, a
            missing or unexpected array of a known kind, or a value the cast loses.
        ShapeError: a shape that does not match the kind's.
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise InputError(f"arrays of a {kind!r} entry must be a non-empty mapping of names to arrays")
    out = {check_array_name(key): as_array(value, key) for key, value in arrays.items()}
    schema = _SCHEMAS.get(kind)
    if schema is None:
        return out
    required, optional, check = schema
    missing = sorted(set(required) - set(out))
    unknown = sorted(set(out) - set(required) - set(optional))
    if missing or unknown:
        raise InputError(
            f"a {kind!r} entry holds {', '.join(required)}"
            + (f" and optionally {', '.join(optional)}" if optional else "")
            + f"; missing {missing}, unexpected {unknown}"
        )
    return check(out)


def _float(array: np.ndarray, dtype: type, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # an overflow is refused below, with a clearer message
        cast = array.astype(dtype)
    if not np.isfinite(cast).all():
        raise InputError(f"{what} has values that are not finite as {np.dtype(dtype).name}")
    return cast


def _integer(array: np.ndarray, dtype: type, what: str) -> np.ndarray:
    info = np.iinfo(dtype)
    if array.dtype.kind not in "biu":
        raise InputError(f"{what} has dtype {array.dtype}, expected an integer array")
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise InputError(f"{what} has values in [{array.min()}, {array.max()}], outside the range of {info.dtype}")
    return array.astype(dtype)


def _check_global(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    d = a["descriptor"]
    check_shape("descriptor", d.shape, "(D,) with D >= 1", d.ndim == 1 and d.size > 0)
    return {"descriptor": _float(d, np.float32, "descriptor")}


def _check_sparse(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    kp, ids, desc = a["keypoints"], a["point3D_ids"], a["descriptors"]
    check_shape("keypoints", kp.shape, "(N, 2)", kp.ndim == 2 and kp.shape[1] == 2)
    n = len(kp)
    check_shape("point3D_ids", ids.shape, f"({n},) as keypoints", ids.shape == (n,))
    check_shape("descriptors", desc.shape, f"({n}, C) with C >= 1",
                desc.ndim == 2 and len(desc) == n and desc.shape[1] > 0)
    return {
        "keypoints": _float(kp, np.float32, "keypoints"),
        "point3D_ids": _integer(ids, np.int64, "point3D_ids"),
        "descriptors": _float(desc, np.float16, "descriptors"),
    }


def _check_labels(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    labels = a["labels"]
    check_shape("labels", labels.shape, "(H, W)", labels.ndim == 2 and labels.size > 0)
    out = {"labels": _integer(labels, np.uint8, "labels")}
    if "logits" in a:
        logits, (h, w) = a["logits"], labels.shape
        check_shape("logits", logits.shape, f"(C, {h}, {w}) as labels",
                    logits.ndim == 3 and logits.shape[1:] == (h, w) and logits.shape[0] > 0)
        out["logits"] = _float(logits, np.float16, "logits")
    return out


def _check_point_labels(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ids, labels = a["point3D_ids"], a["labels"]
    check_shape("point3D_ids", ids.shape, "(P,)", ids.ndim == 1)
    if labels.shape != ids.shape:
        raise ShapeError(f"labels has shape {labels.shape}, expected {ids.shape} as point3D_ids")
    return {"point3D_ids": _integer(ids, np.int64, "point3D_ids"), "labels": _integer(labels, np.uint8, "labels")}


_Schema = tuple[tuple[str, ...], tuple[str, ...], Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]
_SCHEMAS: dict[str, _Schema] = {
    GLOBAL: (("descriptor",), (), _check_global),
    SPARSE: (("keypoints", "point3D_ids", "descriptors"), (), _check_sparse),
    LABELS: (("labels",), ("logits",), _check_labels),
    POINT_LABELS: (("point3D_ids", "labels"), (), _check_point_labels),
}
