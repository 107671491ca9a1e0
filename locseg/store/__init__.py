"""locseg.store: the HDF5 feature store that localization and segmentation share.

One store per map holds, under a model id (model + weights digest +
preprocessing, :func:`model_id`), the global descriptors, the sparse reference
features at 3D-point observations, the segmentation labels of each image and
the labels of the map's 3D points. It is resumable (``has`` tells what is
done), crash-safe (a killed writer loses only what it had not flushed), and
records its format version and the config behind each model's features.

- ``store``: :class:`FeatureStore`, its crash-safety design and error types.
- ``layout``: the HDF5 layout, image-name escaping, :func:`model_id`.
- ``kinds``: the arrays of each kind of entry and their typed tuples.
- ``lock``: the single-writer lock.

Example::

    from locseg.store import FeatureStore, model_id

    mid = model_id("vgg16-slim", weights_sha256, max_side=512, layers=(14, 17, 21, 24, 28))
    with FeatureStore("street.h5", mode="a") as store:
        store.set_config(mid, config)
        if not store.has(mid, "sparse", "reference/cam0/000012.png"):
            store.put_sparse(mid, "reference/cam0/000012.png", keypoints, point3D_ids, descriptors)
    with FeatureStore("street.h5") as store:
        features = store.get_sparse(mid, "reference/cam0/000012.png")
"""

from .kinds import (
    GLOBAL,
    LABELS,
    MAP_ENTRY,
    POINT_LABELS,
    SPARSE,
    PointLabels,
    SegmentationLabels,
    SparseFeatures,
)
from .layout import FORMAT_VERSION, model_id
from .lock import StoreLockedError
from .store import (
    DEFAULT_FLUSH_BYTES,
    ConfigMismatchError,
    FeatureStore,
    MissingEntryError,
)

__all__ = [
    "DEFAULT_FLUSH_BYTES",
    "FORMAT_VERSION",
    "GLOBAL",
    "LABELS",
    "MAP_ENTRY",
    "POINT_LABELS",
    "SPARSE",
    "ConfigMismatchError",
    "FeatureStore",
    "MissingEntryError",
    "PointLabels",
    "SegmentationLabels",
    "SparseFeatures",
    "StoreLockedError",
    "model_id",
]
