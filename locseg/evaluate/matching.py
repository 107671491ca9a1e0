"""Matching precision of dense hypercolumns on true correspondences.

For a pair (a, b) with true correspondences (p_a, p_b), the hypercolumn of image a
at p_a is compared with every cell of image b's dense map; the match is correct
when the most similar cell's centre lies within ``threshold`` pixels of p_b, in the
network input's resolution. This is the sparse-to-dense step of the localizer,
measured on its own. With ``subcell``, the match sits at the sub-cell peak the
localizer uses (``locseg.localize.matching.subcell_offsets``) instead of the cell's
centre. With ``scales``, both images' maps are multi-scale (``Hypercolumns.dense_at_scales``),
as the localizer's are with ``LocalizeConfig.hypercolumn_scales``. Results are grouped by the
condition of image b.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..device import module_device
from ..localize.matching import subcell_offsets
from ..models.hypercolumn import SINGLE_SCALE, STRIDE, Hypercolumns, grid_centers
from ..train.pairs import CorrespondencePairs, PairSample

ALL = "all"
THRESHOLD = 4.0   # pixels of the network input within which a match counts as correct


@dataclass
class MatchingPrecision:
    """Correct and total matches per condition (and ``"all"``)."""

    threshold: float
    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, condition: str, correct: int, total: int) -> None:
        for key in (condition, ALL):
            self.correct[key] += correct
            self.total[key] += total

    def percent(self) -> dict[str, float]:
        """Precision in percent per condition, ``"all"`` first."""
        keys = [ALL] + sorted(k for k in self.total if k != ALL)
        return {k: 100.0 * self.correct[k] / max(self.total[k], 1) for k in keys if k in self.total}


@torch.inference_mode()
def match_dense(model: Hypercolumns, image_a: torch.Tensor, image_b: torch.Tensor,
                points_a: torch.Tensor, subcell: bool = False,
                scales: Sequence[float] = SINGLE_SCALE) -> torch.Tensor:
    """Where the hypercolumns of image a at ``points_a`` best match image b.

    Args:
        image_a, image_b: (3, H, W) normalised images.
        points_a: (N, 2) COLMAP pixels in image a.
        subcell: move each match from its cell's centre to the sub-cell peak.
        scales: of both images' dense maps (``Hypercolumns.dense_at_scales``).
    Returns:
        (N, 2) COLMAP pixels in image b: centres of the most similar 1/4-grid cells,
        or the sub-cell peaks in them.
    """
    dense_a = model.dense_at_scales(image_a[None], scales)
    dense_b = model.dense_at_scales(image_b[None], scales)
    descriptors = model.sample(dense_a, points_a[None], (image_a.shape[-1], image_a.shape[-2]))[0]  # (N, C)
    similarity = descriptors @ dense_b[0].flatten(1)                                               # (N, h w)
    centres = grid_centers(dense_b.shape[-2], dense_b.shape[-1], STRIDE, dtype=points_a.dtype,
                           device=points_a.device)
    peak, cells = similarity.max(dim=1)
    found = centres.reshape(-1, 2)[cells]
    if subcell:
        found = found + subcell_offsets(descriptors, dense_b[0], cells, peak) * STRIDE
    return found


def match_points(model: Hypercolumns, pairs: CorrespondencePairs, max_points: int = 1000, seed: int = 0,
                 indices: Sequence[int] | None = None,
                 progress: Callable[[str, int, int], None] | None = None, subcell: bool = False,
                 stage: str = "matching", scales: Sequence[float] = SINGLE_SCALE,
                 ) -> Iterator[tuple[PairSample, torch.Tensor, torch.Tensor]]:
    """For each pair (all, or those of ``indices``): the pair, the (N,) indices of the
    correspondences checked (at most ``max_points``, drawn with a generator seeded by
    ``seed``), and (N, 2) where their hypercolumns match in image b (``match_dense``, with
    ``subcell`` and ``scales``). The model runs on its own device; the matches come back on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    indices = range(len(pairs)) if indices is None else indices
    device = module_device(model)
    model.eval()
    for done, index in enumerate(indices, start=1):
        sample = pairs[index]
        keep = torch.randperm(len(sample.points_a), generator=generator)[:max_points]
        moved = sample.to(device)
        yield sample, keep, match_dense(model, moved.image_a, moved.image_b, moved.points_a[keep.to(device)],
                                        subcell, scales).cpu()
        if progress:
            progress(stage, done, len(indices))


def match_errors(model: Hypercolumns, pairs: CorrespondencePairs, max_points: int = 1000, seed: int = 0,
                 indices: Sequence[int] | None = None,
                 progress: Callable[[str, int, int], None] | None = None, subcell: bool = False,
                 scales: Sequence[float] = SINGLE_SCALE) -> Iterator[tuple[PairSample, torch.Tensor, torch.Tensor]]:
    """As ``match_points``, with the (N,) pixel distances between each match and the true
    point instead of the matches."""
    for sample, keep, found in match_points(model, pairs, max_points, seed, indices, progress, subcell,
                                            scales=scales):
        yield sample, keep, (found - sample.points_b[keep]).norm(dim=1)


def matching_precision(model: Hypercolumns, pairs: CorrespondencePairs, threshold: float = THRESHOLD,
                       max_points: int = 1000, seed: int = 0,
                       progress: Callable[[str, int, int], None] | None = None,
                       subcell: bool = False, scales: Sequence[float] = SINGLE_SCALE) -> MatchingPrecision:
    """Matching precision of ``model`` over ``pairs`` (at most ``max_points`` per pair),
    matches at cell centres or, with ``subcell``, at sub-cell peaks, on maps at ``scales``."""
    result = MatchingPrecision(threshold)
    for sample, _, error in match_errors(model, pairs, max_points, seed, progress=progress, subcell=subcell,
                                         scales=scales):
        result.add(sample.condition, int((error <= threshold).sum()), len(error))
    return result
