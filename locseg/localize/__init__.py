"""locseg.localize: the hierarchical localizer.

- ``reference``: the reference map (poses, cameras, 3D-point observations).
- ``retrieval``: global descriptors (NetVLAD over conv5_3 or hypercolumns) and top-k.
- ``matching``: sparse-to-dense hypercolumn matching (dense, or coarse-to-fine) with a ratio test.
- ``pnp``: RANSAC-PnP with the query's camera (poselib or pycolmap).
- ``refine``: feature-metric Levenberg-Marquardt on SE(3) (with ``robust`` losses and
  ``feature_gradients``).
- ``triangulate``: 3D points for reference images with known poses.
- ``pipeline``: all of it over a query list, with the feature store and a per-query log.
"""

from .matching import (
    MATCHING_METHODS,
    DenseMatches,
    MatchingConfig,
    fit_projection,
    match_sparse_to_dense,
)
from .pipeline import LocalizeConfig, Localizer, LocalizeSummary, QueryResult, localize
from .pnp import ESTIMATORS, PnPConfig, PnPResult, estimate_pose
from .reference import Observations, ReferenceMap
from .refine import RefineConfig, RefineResult, refine_pose, refine_poses

__all__ = [
    "ESTIMATORS",
    "MATCHING_METHODS",
    "DenseMatches",
    "LocalizeConfig",
    "LocalizeSummary",
    "Localizer",
    "MatchingConfig",
    "Observations",
    "PnPConfig",
    "PnPResult",
    "QueryResult",
    "ReferenceMap",
    "RefineConfig",
    "RefineResult",
    "estimate_pose",
    "fit_projection",
    "localize",
    "match_sparse_to_dense",
    "refine_pose",
    "refine_poses",
]
