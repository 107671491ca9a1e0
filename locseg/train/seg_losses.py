"""Losses for segmentation trained on labels and on cross-condition correspondences (seed 000, section 3).

- ``supervised_loss``: pixel-wise cross-entropy against trainIds, 255 ignored,
  optionally weighted per class (``class_weights``: ``(median f / f_c) ** power``
  from the labelled pixels' class frequencies f, so thin classes such as poles and
  signs are not drowned by road and building).
- ``correspondence_ce`` (CE): cross-entropy of the target image's final layer at
  x_t against the class the reference image predicts at x_r (its argmax):
  ``-1/N sum_i log softmax(d_t(x_t_i))[argmax d_r(x_r_i)]``.
- ``correspondence_hinge``: ``1/N sum_i max(0, m - <d_r, d_t> / (|d_r| |d_t|))`` on
  the final layer (HingeC) or the penultimate features (HingeF), margin m = 0.8.
- ``stationary``: the non-stationary filter; a correspondence whose reference
  pixel is predicted as person, rider, car, truck, bus, train, motorcycle or
  bicycle is dropped.
- ``confident``: an optional filter (not in seed 000): a correspondence whose
  reference prediction has a softmax probability below a threshold is dropped, so
  that uncertain reference labels (object borders, thin classes) teach nothing.
- ``combine``: ``(L_sup + lambda L_corr) / (1 + lambda)``.

With ``weight`` (C,) given, a correspondence loss becomes the weighted mean over its
correspondences, each weighed by ``weight`` of the class the reference predicts there
(for CE, exactly ``F.cross_entropy``'s ``weight``), so that the classes the
correspondences rarely cover (poles, signs) are not outvoted by road and building.

The reference side never carries gradient: callers compute it under
``torch.no_grad()``, and the losses detach it again. Per-point values are rows of
(N, C) tensors, sampled from the models' maps at the correspondences
(``correspondence_loss`` does the sampling, with ``sample_feature_map``, which
owns the pixel convention).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, check_shape
from ..models.hypercolumn import sample_feature_map
from ..models.segmentation import IGNORE, NON_STATIONARY, SegOutput

HINGE_MARGIN = 0.8
CORRESPONDENCE_LOSSES = ("ce", "hinge-c", "hinge-f")
"""CE, HingeC (final layer) and HingeF (penultimate features), seed 000."""


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (weighted mean with ``weight``).

    Args:
        logits: (B, C, H, W). labels: (B, H, W) integer trainIds, ``ignore_index`` ignored.
        weight: (C,) per-class weights (``class_weights``), or None for all 1.
    Returns:
        scalar; 0 (still connected to ``logits``) when no pixel is labelled.
    """
    check_shape("labels", tuple(labels.shape), f"({logits.shape[0]}, {logits.shape[2]}, {logits.shape[3]})",
                logits.ndim == 4 and tuple(labels.shape) == (logits.shape[0], *logits.shape[2:]))
    labels = labels.long()
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index)


def class_weights(counts: np.ndarray, power: float = 0.5, max_ratio: float = 10.0) -> torch.Tensor:
    """Per-class loss weights from labelled pixel counts.

    ``w_c = (median f / f_c) ** power`` over the classes present (f the pixel
    frequencies), clipped to ``[1 / max_ratio, max_ratio]``; classes without a pixel
    get 1 (they never appear as a target). Power 0 gives all ones, 0.5 inverse
    square-root frequency, 1 inverse frequency.

    Args:
        counts: (C,) labelled pixels per class (ignore excluded).
    Returns:
        (C,) float32 weights.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise InputError(f"class counts must be a non-negative (C,) vector with some pixels, got {counts!r}")
    if not (power >= 0 and max_ratio >= 1):
        raise InputError(f"need power >= 0 and max_ratio >= 1, got {power}, {max_ratio}")
    present = counts > 0
    frequency = counts / counts.sum()
    weights = np.ones_like(frequency)
    weights[present] = np.clip((np.median(frequency[present]) / frequency[present]) ** power,
                               1.0 / max_ratio, max_ratio)
    return torch.from_numpy(weights.astype(np.float32))


def _check_pairs(reference: torch.Tensor, target: torch.Tensor) -> None:
    check_shape("reference", tuple(reference.shape), "(N, C)", reference.ndim == 2)
    check_shape("target", tuple(target.shape), f"{tuple(reference.shape)} like reference",
                tuple(target.shape) == tuple(reference.shape))


def correspondence_ce(reference_logits: torch.Tensor, target_logits: torch.Tensor,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """CE: (N, C) logits of the reference and target images at N correspondences -> scalar
    (0 for N = 0); ``weight`` (C,) weighs each correspondence by its reference class."""
    _check_pairs(reference_logits, target_logits)
    if len(target_logits) == 0:
        return target_logits.sum() * 0
    return F.cross_entropy(target_logits, reference_logits.detach().argmax(dim=1), weight=weight)


def correspondence_hinge(reference: torch.Tensor, target: torch.Tensor, margin: float = HINGE_MARGIN,
                         point_weight: torch.Tensor | None = None) -> torch.Tensor:
    """HingeC / HingeF: (N, F) features of both images -> mean ``max(0, margin - cos)`` (0 for N = 0),
    weighted by ``point_weight`` (N,) when given.

    Features are L2-normalised first (a zero vector stays zero, cosine 0)."""
    _check_pairs(reference, target)
    if len(target) == 0:
        return target.sum() * 0
    cosine = (F.normalize(reference.detach(), dim=1) * F.normalize(target, dim=1)).sum(dim=1)
    hinge = (margin - cosine).clamp(min=0)
    if point_weight is None:
        return hinge.mean()
    check_shape("point_weight", tuple(point_weight.shape), f"({len(target)},)",
                tuple(point_weight.shape) == (len(target),))
    return (point_weight * hinge).sum() / point_weight.sum().clamp(min=torch.finfo(hinge.dtype).tiny)


def stationary(reference_logits: torch.Tensor, non_stationary: tuple[int, ...] = NON_STATIONARY) -> torch.Tensor:
    """(N, C) reference logits -> (N,) bool: the predicted class is not a non-stationary one."""
    check_shape("reference_logits", tuple(reference_logits.shape), "(N, C)", reference_logits.ndim == 2)
    predicted = reference_logits.argmax(dim=1)
    return ~torch.isin(predicted, torch.as_tensor(non_stationary, device=predicted.device))


def confident(reference_logits: torch.Tensor, min_confidence: float) -> torch.Tensor:
    """(N, C) reference logits -> (N,) bool: the predicted class's softmax probability is >= min_confidence."""
    check_shape("reference_logits", tuple(reference_logits.shape), "(N, C)", reference_logits.ndim == 2)
    return reference_logits.softmax(dim=1).amax(dim=1) >= min_confidence


def combine(supervised: torch.Tensor, correspondence: torch.Tensor, weight: float) -> torch.Tensor:
    """``(supervised + weight * correspondence) / (1 + weight)``, weight >= 0."""
    if weight < 0:
        raise InputError(f"the correspondence weight lambda must be >= 0, got {weight}")
    return (supervised + weight * correspondence) / (1 + weight)


def correspondence_loss(kind: str, reference: SegOutput, target: SegOutput, points_reference: torch.Tensor,
                        points_target: torch.Tensor, margin: float = HINGE_MARGIN,
                        weight: torch.Tensor | None = None, min_confidence: float = 0.0,
                        non_stationary: tuple[int, ...] = NON_STATIONARY) -> tuple[torch.Tensor, int]:
    """One correspondence loss between a reference and a target image, after the non-stationary
    filter and, with ``min_confidence`` > 0, the confidence filter.

    Args:
        kind: ``"ce"``, ``"hinge-c"`` or ``"hinge-f"``.
        reference, target: model outputs for one image each (batch 1); the reference
            computed without gradient.
        points_reference, points_target: (N, 2) corresponding COLMAP pixels of the two inputs.
        weight: (C,) class weights applied by the reference's predicted class, or None.
        min_confidence: drop correspondences whose reference prediction is less sure (``confident``).
        non_stationary: the trainIds the non-stationary filter drops (``stationary``).
    Returns:
        the loss (0 when no correspondence is left) and how many correspondences it used.
    """
    if kind not in CORRESPONDENCE_LOSSES:
        raise InputError(f"unknown correspondence loss {kind!r}; valid: {', '.join(CORRESPONDENCE_LOSSES)}")
    check_shape("points_reference", tuple(points_reference.shape), "(N, 2)",
                points_reference.ndim == 2 and points_reference.shape[1] == 2)
    check_shape("points_target", tuple(points_target.shape), f"({len(points_reference)}, 2)",
                tuple(points_target.shape) == tuple(points_reference.shape))

    def at(out: SegOutput, name: str, points: torch.Tensor) -> torch.Tensor:
        return sample_feature_map(getattr(out, name), points[None], out.stride)[0]

    reference_logits = at(reference, "logits", points_reference).detach()
    keep = stationary(reference_logits, non_stationary)
    if min_confidence > 0:
        keep &= confident(reference_logits, min_confidence)
    points_reference, points_target = points_reference[keep], points_target[keep]
    reference_logits = reference_logits[keep]
    if kind == "ce":
        loss = correspondence_ce(reference_logits, at(target, "logits", points_target), weight)
    else:
        name = "logits" if kind == "hinge-c" else "features"
        point_weight = None if weight is None else weight[reference_logits.argmax(dim=1)]
        loss = correspondence_hinge(at(reference, name, points_reference), at(target, name, points_target), margin,
                                    point_weight)
    return loss, int(keep.sum())
