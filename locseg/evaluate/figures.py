"""Pictures of the matching-precision test: where each true point's hypercolumn lands.

``match_figure`` draws one pair side by side at network-input size, image a on the left
(the reference, in SynthSeasons' pairs) and image b on the right. Each drawn correspondence is
a line from its point in a to the cell of b's dense map that its hypercolumn matches
best: green when that match lies within the threshold of the true point (the test of
``locseg.evaluate.matching``), red otherwise, with a ring at the true point of each miss.
A band above the images names the pair and its precision over the drawn points.
``matching_figures`` draws, per condition of image b, the first pair that has
correspondences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..models.hypercolumn import SINGLE_SCALE, Hypercolumns
from ..models.preprocess import denormalize_image
from ..train.pairs import CorrespondencePairs, PairSample
from .matching import THRESHOLD, match_points

CORRECT = (40, 200, 80)
WRONG = (230, 40, 40)
BAND = 20          # pixels of the title band
FIGURE_POINTS = 60  # correspondences drawn per pair: enough to see where matches fail, few enough to follow


def _to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) ImageNet-normalised image as an RGB picture."""
    array = denormalize_image(image.detach().cpu().float()).clamp(0, 1).permute(1, 2, 0).numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8))


def match_figure(sample: PairSample, points_a: torch.Tensor, found_b: torch.Tensor, true_b: torch.Tensor,
                 threshold: float = THRESHOLD) -> Image.Image:
    """One pair's picture.

    Args:
        sample: the pair (its images at network-input size, and its names for the title).
        points_a: (N, 2) COLMAP pixels in image a.
        found_b: (N, 2) where their hypercolumns matched in image b.
        true_b: (N, 2) their true points in image b.
        threshold: pixels within which a match counts as correct.
    """
    left, right = _to_pil(sample.image_a), _to_pil(sample.image_b)
    width, height = left.width + right.width, max(left.height, right.height) + BAND
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(left, (0, BAND))
    canvas.paste(right, (left.width, BAND))
    draw = ImageDraw.Draw(canvas)
    points_a, found_b, true_b = points_a.cpu(), found_b.cpu(), true_b.cpu()
    correct = (found_b - true_b).norm(dim=1) <= threshold

    def canvas_pixels(points: torch.Tensor, x0: int) -> torch.Tensor:
        # COLMAP pixel i covers [i, i + 1) and PIL draws at whole pixels, so the pixel index is the floor
        return points.floor() + torch.tensor([x0, BAND], dtype=points.dtype)

    starts = canvas_pixels(points_a, 0)
    ends, trues = canvas_pixels(found_b, left.width), canvas_pixels(true_b, left.width)
    for start, end, true, ok in zip(starts, ends, trues, correct.tolist()):
        colour = CORRECT if ok else WRONG
        draw.line([tuple(start.tolist()), tuple(end.tolist())], fill=colour, width=1)
        if not ok:
            x, y = true.tolist()
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=WRONG)
    share = 100.0 * float(correct.float().mean()) if len(correct) else 0.0
    draw.text((4, 4), f"{sample.name_a} -> {sample.name_b}: {share:.0f} % of {len(correct)} within "
                      f"{threshold:g} px (green)", fill=(0, 0, 0))
    return canvas


def matching_figures(model: Hypercolumns, pairs: CorrespondencePairs, output: str | Path,
                     threshold: float = THRESHOLD, points: int = FIGURE_POINTS, seed: int = 0, subcell: bool = False,
                     progress: Callable[[str, int, int], None] | None = None,
                     scales: Sequence[float] = SINGLE_SCALE) -> list[Path]:
    """Write ``output/<condition>.png`` for the first pair of each condition that has
    correspondences, ``points`` of them drawn at random (seeded) and matched on maps at ``scales``;
    returns the files, in condition order."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    first: dict[str, int] = {}
    for index in range(len(pairs)):
        condition = pairs.condition(index)
        if condition not in first and len(pairs.pair(index).points_i):
            first[condition] = index
    written = []
    conditions = sorted(first)
    for condition, (sample, keep, found) in zip(conditions, match_points(
            model, pairs, points, seed, [first[c] for c in conditions], progress, subcell, stage="figures",
            scales=scales)):
        path = output / f"{condition}.png"
        match_figure(sample, sample.points_a[keep], found, sample.points_b[keep], threshold).save(path)
        written.append(path)
    return written
