"""Sparse-to-dense matching: reference hypercolumns at 3D-point observations against
the query's dense hypercolumn map (S2DHM, seed 002 section 3.1).

Each reference descriptor is correlated with every cell of the query map; its match is
the cell of highest cosine similarity, placed at that cell's centre in the query's
network input (``locseg.models.hypercolumn``: cell ``(x, y)`` is COLMAP pixel
``(4x + 2, 4y + 2)``). The modified ratio test keeps a match when the best similarity
``s_1`` and the k-th best ``s_k`` satisfy ``ratio² · s_1 ≥ s_k`` with ``k = factor · h · w``
(ratio 0.9 and factor 0.006 by default): the peak must stand out of its own
neighbourhood-sized set of runners-up, which a plain second-best test cannot ask of a
smooth dense map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, check_shape
from ..models.hypercolumn import STRIDE


@dataclass(frozen=True)
class MatchingConfig:
    """``ratio`` and ``factor`` of the modified ratio test; ``chunk``: reference descriptors
    correlated at once (bounds memory at ``chunk · h · w`` floats)."""

    ratio: float = 0.9
    factor: float = 0.006
    chunk: int = 2048

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if not 0 < self.factor < 1:
            raise InputError(f"factor must be in (0, 1), got {self.factor}")
        if self.chunk < 1:
            raise InputError(f"chunk must be positive, got {self.chunk}")


@dataclass(frozen=True)
class DenseMatches:
    """Matches of N reference descriptors in a query map.

    Attributes:
        uv: (N, 2) COLMAP pixel coordinates in the query's network input.
        score: (N,) best cosine similarity.
        keep: (N,) bool, passed the ratio test.
    """

    uv: torch.Tensor
    score: torch.Tensor
    keep: torch.Tensor


def ratio_test_rank(height: int, width: int, factor: float) -> int:
    """k of the modified ratio test for an h x w map: ``int(factor · h · w)``, at least 2."""
    return min(max(2, int(factor * height * width)), height * width)


def match_sparse_to_dense(descriptors: torch.Tensor, query_map: torch.Tensor,
                          config: MatchingConfig = MatchingConfig()) -> DenseMatches:
    """Match reference descriptors into a dense query map.

    Args:
        descriptors: (N, C) L2-normalised reference hypercolumns (any float dtype).
        query_map: (C, h, w) L2-normalised dense query hypercolumns, stride 4.
    Returns:
        ``DenseMatches`` with N rows.
    """
    check_shape("query_map", tuple(query_map.shape), "(C, h, w)", query_map.ndim == 3)
    channels, height, width = query_map.shape
    check_shape("descriptors", tuple(descriptors.shape), f"(N, {channels})",
                descriptors.ndim == 2 and descriptors.shape[1] == channels)
    k = ratio_test_rank(height, width, config.factor)
    flat = query_map.reshape(channels, -1).float()
    scores, cells, keeps = [], [], []
    for start in range(0, descriptors.shape[0], config.chunk):
        similarity = descriptors[start:start + config.chunk].float() @ flat     # (n, h w)
        top = similarity.topk(k, dim=1)
        best, kth = top.values[:, 0], top.values[:, -1]
        scores.append(best)
        cells.append(top.indices[:, 0])
        keeps.append(config.ratio ** 2 * best >= kth)
    if not scores:
        empty = query_map.new_zeros((0,))
        return DenseMatches(query_map.new_zeros((0, 2)), empty, empty.bool())
    cell = torch.cat(cells)
    uv = torch.stack([cell % width, cell // width], dim=1).to(query_map.dtype) * STRIDE + STRIDE / 2
    return DenseMatches(uv, torch.cat(scores), torch.cat(keeps))
