"""Sparse-to-dense matching: reference hypercolumns at 3D-point observations against
the query's dense hypercolumn map (S2DHM, seed 002 section 3.1).

A reference descriptor's match is the cell of the query map with the highest cosine
similarity, placed at that cell's centre in the query's network input
(``locseg.models.hypercolumn``: cell ``(x, y)`` is COLMAP pixel ``(4x + 2, 4y + 2)``).
Two methods find it (``MATCHING_METHODS``):

- ``"dense"`` correlates every descriptor with every cell, as S2DHM does, and keeps a
  match by the modified ratio test: the best similarity ``s_1`` and the k-th best
  ``s_k`` satisfy ``ratio² · s_1 ≥ s_k`` with ``k = factor · h · w`` (ratio 0.9, factor
  0.006): the peak must stand out of its own neighbourhood-sized set of runners-up,
  which a plain second-best test cannot ask of a smooth dense map. It costs
  ``N · C · h · w`` multiply-adds: 64 G for 5 references × 2048 points on a 128×96 map.
- ``"coarse-to-fine"`` (default) first correlates with the coarse map of
  ``pool × pool`` blocks of cells, in a ``projection_dim``-dimensional subspace
  (``fit_projection``; a block's coarse similarity is the mean of its cells'
  similarities, projected). It then searches the cells of the ``candidates`` best
  blocks at full dimension for the peak ``s_1``, and keeps the match when
  ``ratio² · s_1`` is at least the ``coarse_rank``-th best block similarity: the peak
  must stand above all but a few whole blocks of the map. For 5 × 2048 points on a
  128×96 map that is 0.7 G multiply-adds instead of 64 G; on a CPU, 17× less time
  (benchmarks/RESULTS.md).

The ratio test has two forms (``RATIO_TESTS``), both comparing the peak ``s_1`` with the
rival ``s_k`` above:

- ``"similarity"``: ``ratio² · s_1 ≥ s_k``, on the cosines themselves.
- ``"distance"``: ``1 − s_1 ≤ ratio² · (1 − s_k)``. For unit vectors the squared Euclidean
  distance is ``2 − 2s``, so this is Lowe's test on distances: the peak must be ``ratio``
  times as close as the rival (exactly so for ``"dense"``; the coarse rival is a block's mean
  similarity, which no unit vector need have). It depends on how the cosines differ, not on where they lie:
  hypercolumns whose cosines all crowd near 1 fail the similarity form at any ratio below 1.

With ``refit_ratio``, each match also records whether it passes the same test at that
(looser) ratio: ``DenseMatches.loose``. The localizer estimates poses from the matches
that pass ``ratio`` and refits the winner over the looser set (``locseg.localize.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError, check_shape, lookup
from ..models.hypercolumn import STRIDE

MATCHING_METHODS = ("dense", "coarse-to-fine")
RATIO_TESTS = ("similarity", "distance")


@dataclass(frozen=True)
class MatchingConfig:
    """Settings of sparse-to-dense matching (see the module docstring).

    Attributes:
        method: one of ``MATCHING_METHODS``.
        ratio: of the ratio test, both methods.
        ratio_test: the test's form, one of ``RATIO_TESTS``.
        refit_ratio: the ratio of ``DenseMatches.loose``, the matches a pose may be refitted
            over, when it is looser than ``ratio`` (otherwise, and with None, ``ratio``'s). The
            localizer's default is 0.95 (``LocalizeConfig``).
        factor: ``"dense"``: the ratio test's k is ``factor · h · w``.
        chunk: ``"dense"``: descriptors correlated at once (memory ``chunk · h · w`` floats).
        pool: ``"coarse-to-fine"``: cells per coarse block side.
        candidates: ``"coarse-to-fine"``: best coarse blocks searched at full resolution.
        coarse_rank: ``"coarse-to-fine"``: rank of the coarse similarity the peak must reach.
        projection_dim: ``"coarse-to-fine"``: dimension of the coarse correlation.
        subcell: place kept matches at the sub-cell peak (``subcell_offsets``) rather
            than at the cell centre.
    """

    method: str = "coarse-to-fine"
    ratio: float = 0.9
    ratio_test: str = "similarity"
    refit_ratio: float | None = None
    factor: float = 0.006
    chunk: int = 2048
    pool: int = 4
    candidates: int = 2
    coarse_rank: int = 4
    projection_dim: int = 64
    subcell: bool = True

    def __post_init__(self) -> None:
        lookup(dict.fromkeys(MATCHING_METHODS), "matching method", self.method)
        lookup(dict.fromkeys(RATIO_TESTS), "ratio test", self.ratio_test)
        if not 0 < self.ratio <= 1:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.refit_ratio is not None and not 0 < self.refit_ratio <= 1:
            raise InputError(f"refit_ratio must be in (0, 1], got {self.refit_ratio}")
        if self.refit_ratio is not None and self.refit_ratio <= self.ratio:   # no looser: the same matches,
            object.__setattr__(self, "refit_ratio", None)                     # one setting, one digest
        if not 0 < self.factor < 1:
            raise InputError(f"factor must be in (0, 1), got {self.factor}")
        for name in ("chunk", "pool", "candidates", "coarse_rank", "projection_dim"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class DenseMatches:
    """Matches of N reference descriptors in a query map.

    Attributes:
        uv: (N, 2) COLMAP pixel coordinates in the query's network input.
        score: (N,) best cosine similarity.
        keep: (N,) bool, passed the ratio test.
        loose: (N,) bool, passed it at ``refit_ratio`` (``keep`` itself without one), a superset
            of ``keep``; all of them are placed at their sub-cell peaks.
    """

    uv: torch.Tensor
    score: torch.Tensor
    keep: torch.Tensor
    loose: torch.Tensor

    def __getitem__(self, rows: slice) -> DenseMatches:
        return DenseMatches(self.uv[rows], self.score[rows], self.keep[rows], self.loose[rows])


def ratio_test_rank(height: int, width: int, factor: float) -> int:
    """k of the modified ratio test for an h x w map: ``int(factor · h · w)``, at least 2."""
    return min(max(2, int(factor * height * width)), height * width)


def passes_ratio_test(best: torch.Tensor, rival: torch.Tensor, config: MatchingConfig,
                      ratio: float | None = None) -> torch.Tensor:
    """Whether peaks ``best`` (N,) stand out from their rivals ``rival`` (N,), both cosine
    similarities, by ``config``'s ratio test (module docstring) at ``ratio`` (default
    ``config.ratio``). Returns (N,) bool."""
    ratio = config.ratio if ratio is None else ratio
    if config.ratio_test == "distance":
        return 1 - best <= ratio ** 2 * (1 - rival)
    return ratio ** 2 * best >= rival


def fit_projection(descriptors: torch.Tensor, dim: int) -> torch.Tensor:
    """The ``dim`` leading right singular vectors of a descriptor sample (no centring, so
    that dot products, not variances, are what the subspace keeps).

    Args:
        descriptors: (N, C) descriptors (any float dtype).
    Returns:
        (C, min(dim, C)) float32 orthonormal columns, in a sign convention that makes
        the result independent of the eigensolver (largest entry of each positive).
    """
    check_shape("descriptors", tuple(descriptors.shape), "(N, C)", descriptors.ndim == 2)
    if descriptors.shape[0] == 0:
        raise InputError("cannot fit a projection on zero descriptors")
    x = descriptors.double()
    values, vectors = torch.linalg.eigh(x.T @ x)
    basis = vectors[:, values.argsort(descending=True)[:dim]]
    signs = basis.gather(0, basis.abs().argmax(0, keepdim=True)).sign()
    return (basis * signs).float()


def match_sparse_to_dense(descriptors: torch.Tensor, query_map: torch.Tensor,
                          config: MatchingConfig = MatchingConfig(),
                          projection: torch.Tensor | None = None,
                          projected: torch.Tensor | None = None) -> DenseMatches:
    """Match reference descriptors into a dense query map.

    Args:
        descriptors: (N, C) L2-normalised reference hypercolumns (any float dtype).
        query_map: (C, h, w) L2-normalised dense query hypercolumns, stride 4.
        projection: ``"coarse-to-fine"`` only: (C, d) from ``fit_projection``; None
            correlates the coarse map at full dimension.
        projected: optional (N, d) ``descriptors @ projection``, e.g. computed once per
            reference image and reused for every query.
    Returns:
        ``DenseMatches`` with N rows, in float32.
    """
    check_shape("query_map", tuple(query_map.shape), "(C, h, w)", query_map.ndim == 3)
    channels = query_map.shape[0]
    check_shape("descriptors", tuple(descriptors.shape), f"(N, {channels})",
                descriptors.ndim == 2 and descriptors.shape[1] == channels)
    if projection is not None:
        check_shape("projection", tuple(projection.shape), f"({channels}, d)",
                    projection.ndim == 2 and projection.shape[0] == channels)
    if projected is not None:
        if projection is None:
            raise InputError("projected descriptors need the projection they were made with")
        check_shape("projected", tuple(projected.shape), f"({descriptors.shape[0]}, {projection.shape[1]})",
                    tuple(projected.shape) == (descriptors.shape[0], projection.shape[1]))
    descriptors, query_map = descriptors.float(), query_map.float()
    if descriptors.shape[0] == 0:
        none = torch.zeros(0, dtype=torch.bool, device=query_map.device)
        return DenseMatches(query_map.new_zeros((0, 2)), query_map.new_zeros((0,)), none, none)
    if config.method == "dense":
        return _match_dense(descriptors, query_map, config)
    return _match_coarse_to_fine(descriptors, query_map, config, projection, projected)


def _cells_to_uv(cells: torch.Tensor, width: int) -> torch.Tensor:
    """(N,) flat cell indices of a map ``width`` cells wide → (N, 2) COLMAP pixels."""
    return torch.stack([cells % width, cells // width], dim=1).float() * STRIDE + STRIDE / 2


def _cell_rows(query_map: torch.Tensor) -> torch.Tensor:
    """(h w, C) the map's hypercolumns, one row per cell in row-major order (a view when
    the map is channels-last, as ``Hypercolumns.dense`` makes it)."""
    return query_map.permute(1, 2, 0).reshape(-1, query_map.shape[0])


def _match_dense(descriptors: torch.Tensor, query_map: torch.Tensor, config: MatchingConfig) -> DenseMatches:
    _, height, width = query_map.shape
    k = ratio_test_rank(height, width, config.factor)
    flat = _cell_rows(query_map).T
    scores, cells, rivals = [], [], []
    for start in range(0, descriptors.shape[0], config.chunk):
        similarity = descriptors[start:start + config.chunk] @ flat     # (n, h w)
        top = similarity.topk(k, dim=1)
        scores.append(top.values[:, 0])
        cells.append(top.indices[:, 0])
        rivals.append(top.values[:, -1])
    return _matches(descriptors, query_map, torch.cat(cells), torch.cat(scores), torch.cat(rivals), config)


def _block_cells(height: int, width: int, pool: int) -> torch.Tensor:
    """(B, pool²) flat indices of the cells of each ``pool × pool`` block of an h × w map,
    blocks in row-major order (``ceil`` blocks per side); cells past the map's edge in a
    border block are -1."""
    rows = torch.arange(-(-height // pool) * pool).reshape(-1, pool)          # (hb, pool)
    cols = torch.arange(-(-width // pool) * pool).reshape(-1, pool)           # (wb, pool)
    r = rows[:, None, :, None].expand(-1, cols.shape[0], pool, pool)
    c = cols[None, :, None, :].expand(rows.shape[0], -1, pool, pool)
    cells = torch.where((r < height) & (c < width), r * width + c, -1)
    return cells.reshape(-1, pool * pool)


def _block_means(query_map: torch.Tensor, pool: int) -> torch.Tensor:
    """(C, B) the mean hypercolumn of each ``pool × pool`` block, blocks in row-major order;
    a border block of a map whose sides are not multiples of ``pool`` averages the cells it has."""
    channels, height, width = query_map.shape
    if height % pool or width % pool:
        return F.avg_pool2d(query_map[None], pool, ceil_mode=True)[0].reshape(channels, -1)
    rows = _cell_rows(query_map).reshape(height // pool, pool, width // pool, pool, channels)
    # two single-axis sums: about 10x faster on a CPU than one reduction over both axes
    return (rows.sum(dim=1).sum(dim=2) / (pool * pool)).reshape(-1, channels).T


def _match_coarse_to_fine(descriptors: torch.Tensor, query_map: torch.Tensor, config: MatchingConfig,
                          projection: torch.Tensor | None, projected: torch.Tensor | None) -> DenseMatches:
    _, height, width = query_map.shape
    pool = config.pool
    coarse = _block_means(query_map, pool)                                                 # (C, B)
    if projection is not None:
        projection = projection.to(query_map)
        projected = descriptors @ projection if projected is None else projected.to(descriptors)
        coarse_similarity = projected @ (projection.T @ coarse)                            # (N, B)
    else:
        coarse_similarity = descriptors @ coarse
    num_blocks = coarse_similarity.shape[1]
    rank = min(config.coarse_rank, num_blocks)
    top = coarse_similarity.topk(max(rank, min(config.candidates, num_blocks)), dim=1)
    candidates = top.indices[:, :config.candidates]                                        # (N, m)

    # fine: the cells of each candidate block at full dimension. (point, block) pairs are
    # sorted by block so that each block is one small matrix product over contiguous rows.
    blocks = _block_cells(height, width, pool).to(query_map.device)                        # (B, pool²)
    n, m = candidates.shape
    cells_per_block = pool * pool
    pairs = candidates.reshape(-1)
    order = pairs.argsort()
    block_ids, counts = torch.unique_consecutive(pairs[order], return_counts=True)
    block_rows = _cell_rows(query_map)[blocks[block_ids].clamp_min(0).reshape(-1)]        # (U pool², C)
    sorted_points = order // m
    sorted_fine = query_map.new_empty(n * m, cells_per_block)
    start = 0
    for u, count in enumerate(counts.tolist()):   # gathering per block keeps the rows in cache
        torch.matmul(descriptors.index_select(0, sorted_points[start:start + count]),
                     block_rows[u * cells_per_block:(u + 1) * cells_per_block].T,
                     out=sorted_fine[start:start + count])
        start += count
    fine = torch.empty_like(sorted_fine)
    fine[order] = sorted_fine
    fine = fine.reshape(n, m * pool * pool)
    searched = blocks[candidates].reshape(n, -1)                                           # (N, m pool²)
    fine[searched < 0] = -float("inf")
    best, index = fine.max(dim=1)
    cells = searched.gather(1, index[:, None])[:, 0]
    return _matches(descriptors, query_map, cells, best, top.values[:, rank - 1], config, (searched, fine))


def _matches(descriptors: torch.Tensor, query_map: torch.Tensor, cells: torch.Tensor, best: torch.Tensor,
             rival: torch.Tensor, config: MatchingConfig,
             known: tuple[torch.Tensor, torch.Tensor] | None = None) -> DenseMatches:
    """The matches at their cells' centres, moved by ``subcell_offsets`` where they pass the
    ratio test at ``ratio`` or ``refit_ratio`` against their (N,) ``rival`` similarities (a
    cosine may be negative, where the similarity form at a looser ratio is the stricter);
    ``known``: (N, K) cells whose (N, K) similarities were already computed."""
    keep = passes_ratio_test(best, rival, config)
    loose = keep if config.refit_ratio is None else keep | passes_ratio_test(best, rival, config, config.refit_ratio)
    uv = _cells_to_uv(cells, query_map.shape[-1])
    if config.subcell:   # every match a pose may use: ``loose`` holds ``keep``
        loose_known = None if known is None else (known[0][loose], known[1][loose])
        uv[loose] += subcell_offsets(descriptors[loose], query_map, cells[loose], best[loose], loose_known) * STRIDE
    return DenseMatches(uv, best, keep, loose)


def _neighbour_similarities(descriptors: torch.Tensor, query_map: torch.Tensor, neighbours: torch.Tensor,
                            known: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """(N, 4) similarities of each descriptor to its 4 neighbour cells, taken from ``known``
    (cells, similarities) where they are there and computed for the others."""
    rows = _cell_rows(query_map)
    if known is None:
        return torch.einsum("nc,nkc->nk", descriptors, rows[neighbours])
    known_cells, known_similarities = known
    same = neighbours[:, :, None] == known_cells[:, None, :]                                # (N, 4, K)
    found = same.any(dim=2)
    similarities = known_similarities.gather(1, same.to(torch.uint8).argmax(dim=2))
    point, which = (~found).nonzero(as_tuple=True)
    if len(point):   # in a block the coarse search did not pick, typically 1 in 4
        similarities[point, which] = (descriptors[point] * rows[neighbours[point, which]]).sum(dim=1)
    return similarities


def subcell_offsets(descriptors: torch.Tensor, query_map: torch.Tensor, cells: torch.Tensor,
                    peak: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Sub-cell position of similarity peaks, by a parabola through each peak and its two
    neighbours along each axis: ``(s₋ − s₊) / (2 (s₋ − 2 s₀ + s₊))``, within ±1/2 cell.

    An axis on which a neighbour lies outside the map, or the three values are not
    concave, keeps the cell centre.

    Args:
        descriptors: (N, C); query_map: (C, h, w); cells: (N,) flat peak cells;
        peak: (N,) similarity at the peak cells.
        known: optional (N, K) flat cells and (N, K) similarities of the descriptors to
            them (the cells a coarse-to-fine search visited), reused where a neighbour is
            among them; cells of -1 are ignored.
    Returns:
        (N, 2) offsets in cells along (x, y).
    """
    _, height, width = query_map.shape
    x, y = cells % width, cells // width
    neighbours = torch.stack([cells - 1, cells + 1, cells - width, cells + width], dim=1)   # (N, 4)
    neighbours = neighbours.clamp(0, height * width - 1)
    before_x, after_x, before_y, after_y = _neighbour_similarities(descriptors, query_map, neighbours, known).T
    offsets = descriptors.new_zeros(len(cells), 2)
    for axis, (coordinate, size, before, after) in enumerate(((x, width, before_x, after_x),
                                                              (y, height, before_y, after_y))):
        inside = (coordinate > 0) & (coordinate < size - 1)
        curvature = before - 2 * peak + after
        concave = inside & (curvature < 0)
        offset = 0.5 * (before - after) / torch.where(concave, curvature, -1.0)
        offsets[:, axis] = torch.where(concave, offset.clamp(-0.5, 0.5), 0.0)
    return offsets
