"""Losses for fine-tuning dense features on correspondences (seed 002, 3.3-3.4, 4.2).

- ``double_margin_contrastive``: the DMC loss on positive and negative
  feature distances, margins M+ = 0.1 and M- = 1.
- ``gauss_newton_loss``: GN-Net's Gauss-Newton loss (von Stumberg et al.,
  RA-L 2020), vicinity 1 pixel, term weights 1 and 2/7.
- ``dense_matching_loss``: not in seed 002; the cross-entropy of each point's
  softmax over every cell of the other image's whole hypercolumn map, against
  the cells around its true match: the argmax that matching takes, made
  differentiable.
- ``total_finetune_loss``: per hypercolumn level l, DMC + lambda * GN with
  lambda = 0.5, summed over levels, mining the negatives on the way.

Conventions (stated here once for this module and ``locseg.train.mining``):

- A feature map is ``(C, H, W)`` (one image; the fine-tuning step takes one
  image pair), normally L2-normalised per pixel.
- Keypoints are ``(N, 2)`` ``(x, y)`` COLMAP pixel coordinates in the map's
  OWN grid unless a function says otherwise: the centre of map cell
  (row i, column j) is ``(j + 0.5, i + 0.5)``, and a map of width W and
  height H spans ``[0, W] x [0, H]``.
- Sampling (``_sample_map``, i.e. ``locseg.models.hypercolumn.sample_feature_map``
  at stride 1) is bilinear, ``grid_sample`` with
  ``align_corners=False`` and normalised coordinates ``x_n = 2 x / W - 1``,
  ``y_n = 2 y / H - 1``; outside the cell centres' hull ``[0.5, W - 0.5] x
  [0.5, H - 0.5]`` the map is extended by its border values
  (``padding_mode="border"``), never blended with zeros.
- Spatial derivatives (``_jacobian``) are taken, as Feature-PnP takes them
  (DESIGN.md section 1), by second-order finite differences with a one-cell
  step of the bilinearly sampled map, ``dF/dx (x, y) = (F(x + 1, y) -
  F(x - 1, y)) / 2``. Where both samples lie inside the hull (x in
  ``[1.5, W - 1.5]``) this equals bilinear interpolation of the map's
  central-difference gradient ``(F[i, j+1] - F[i, j-1]) / 2`` exactly (both
  operations are linear and commute); within one cell of the border the
  stencil turns one-sided, ``(-3 F(x) + 4 F(x + 1) - F(x + 2)) / 2`` (and
  its mirror), still second-order and never reading the flat padding. Both
  are exact for maps quadratic in x and y, linear in the map (so
  differentiable w.r.t. it), and cost five samples per point instead of
  gradient maps of the whole grid. Likewise in y. Maps must be >= 4 x 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError, ShapeError, check_shape
from ..models.hypercolumn import sample_feature_map
from .mining import mine_negatives

__all__ = [
    "DMCTerms",
    "FinetuneLossConfig",
    "GNTerms",
    "dense_matching_loss",
    "double_margin_contrastive",
    "gauss_newton_loss",
    "total_finetune_loss",
]


def _sample_map(feat: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a ``(C, H, W)`` map at ``(N, 2)`` COLMAP points of its own grid -> ``(N, C)``.

    The map's grid is a stride-1 image, so this is the hypercolumn module's sampling,
    which owns the pixel convention.
    """
    return sample_feature_map(feat[None], pts[None], 1.0)[0]


def _stencil(u: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Second-order derivative stencil along one axis of n >= 4 cells, for points u (N,) in the hull.

    Returns offsets ``(N, 2)`` of the two extra samples and coefficients ``(N, 3)`` of
    ``(F(u), F(u + o1), F(u + o2))``: central ``(-1, +1)``, ``(0, -1/2, 1/2)`` inside
    ``[1.5, n - 1.5]``; forward ``(+1, +2)``, ``(-3/2, 2, -1/2)`` below it; backward
    ``(-1, -2)``, ``(3/2, -2, 1/2)`` above it.
    """
    forward = (u < 1.5)[:, None]
    backward = (u > n - 1.5)[:, None]
    offsets = torch.where(
        forward,
        u.new_tensor([1.0, 2.0]),
        torch.where(backward, u.new_tensor([-1.0, -2.0]), u.new_tensor([-1.0, 1.0])),
    )
    coefficients = torch.where(
        forward,
        u.new_tensor([-1.5, 2.0, -0.5]),
        torch.where(backward, u.new_tensor([1.5, -2.0, 0.5]), u.new_tensor([0.0, -0.5, 0.5])),
    )
    return offsets, coefficients


def _sample_with_jacobian(feat: torch.Tensor, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a ``(C, H, W)`` map (H, W >= 4) at ``(N, 2)`` points of its hull.

    Returns ``F(pts)`` ``(N, C)`` and ``J = dF/d(x, y)`` ``(N, C, 2)`` (see the module docstring).
    """
    _, h, w = feat.shape
    off_x, coef_x = _stencil(pts[:, 0], w)
    off_y, coef_y = _stencil(pts[:, 1], h)
    zero = torch.zeros_like(off_x[:, 0])
    shifts = [torch.stack([off_x[:, k], zero], -1) for k in range(2)]
    shifts += [torch.stack([zero, off_y[:, k]], -1) for k in range(2)]
    samples = _sample_map(feat, torch.cat([pts] + [pts + s for s in shifts])).unflatten(0, (5, -1))
    centre, coef_x, coef_y = samples[0], coef_x.to(feat.dtype), coef_y.to(feat.dtype)
    jac_x = coef_x[:, :1] * centre + coef_x[:, 1:2] * samples[1] + coef_x[:, 2:] * samples[2]
    jac_y = coef_y[:, :1] * centre + coef_y[:, 1:2] * samples[3] + coef_y[:, 2:] * samples[4]
    return centre, torch.stack([jac_x, jac_y], dim=-1)


def _distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 distance ``(N, C), (N, C) -> (N,)``, with a zero (not NaN) gradient at 0."""
    return torch.sqrt(((x - y) ** 2).sum(-1).clamp_min(1e-12))


def _check_map(name: str, feat: torch.Tensor) -> None:
    if not isinstance(feat, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(feat).__name__}")
    check_shape(name, feat.shape, "(C, H, W)", feat.dim() == 3 and min(feat.shape) > 0)
    if not feat.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got {feat.dtype}")


def _check_keypoints(name: str, kp: torch.Tensor, n: int | None, w: int, h: int) -> None:
    expected = "(N, 2)" if n is None else f"({n}, 2)"
    if not isinstance(kp, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(kp).__name__}")
    ok = kp.dim() == 2 and kp.shape[1] == 2 and (n is None or kp.shape[0] == n)
    check_shape(name, kp.shape, expected, ok)
    if not kp.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got {kp.dtype}")
    if kp.numel() == 0:
        return
    x, y = kp[:, 0], kp[:, 1]
    inside = torch.isfinite(kp).all(-1) & (x >= 0) & (x <= w) & (y >= 0) & (y <= h)
    if not bool(inside.all()):
        bad = int(torch.nonzero(~inside)[0])
        raise InputError(f"{name}[{bad}] = {kp[bad].tolist()} is outside the grid [0, {w}] x [0, {h}]")


# --------------------------------------------------------------------------- DMC


@dataclass(frozen=True)
class DMCTerms:
    """The double-margin contrastive loss and its two terms (0-d tensors).

    Attributes:
        total: ``positive + negative``, the loss to back-propagate.
        positive: ``mean(max(0, d_pos - M+)^2)``, 0 for no positives.
        negative: ``mean(max(0, M- - d_neg)^2)``, 0 for no negatives.
    """

    total: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


def _mean_or_zero(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() > 0 else x.sum()  # sum of nothing: a 0 still in the graph


def double_margin_contrastive(
    d_pos: torch.Tensor, d_neg: torch.Tensor, margin_pos: float = 0.1, margin_neg: float = 1.0
) -> DMCTerms:
    """Double-margin contrastive loss (seed 002 eqs. 4-6).

    ``L = 1/N+ sum max(0, d_pos - M+)^2 + 1/N- sum max(0, M- - d_neg)^2``; an
    empty set contributes 0.

    Args:
        d_pos: ``(N+,)`` feature distances of positive correspondences.
        d_neg: ``(N-,)`` feature distances of negative correspondences.
        margin_pos: M+ >= 0; positives closer than it cost nothing.
        margin_neg: M- > M+; negatives farther than it cost nothing.

    Returns:
        ``DMCTerms`` (total, positive, negative).

    Example:
        >>> t = double_margin_contrastive(torch.tensor([0.3]), torch.tensor([0.5]))
        >>> round(t.positive.item(), 4), round(t.negative.item(), 4)
        (0.04, 0.25)
    """
    for name, d in (("d_pos", d_pos), ("d_neg", d_neg)):
        if not isinstance(d, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(d).__name__}")
        check_shape(name, d.shape, "(N,)", d.dim() == 1)
    if not (margin_pos >= 0 and margin_neg > margin_pos):
        raise InputError(f"need 0 <= margin_pos < margin_neg, got {margin_pos} and {margin_neg}")
    positive = _mean_or_zero((d_pos - margin_pos).clamp_min(0) ** 2)
    negative = _mean_or_zero((margin_neg - d_neg).clamp_min(0) ** 2)
    return DMCTerms(positive + negative, positive, negative)


# --------------------------------------------------------------------------- GN


@dataclass(frozen=True)
class GNTerms:
    """The Gauss-Newton loss and its two unweighted terms, averaged over valid points.

    Attributes:
        total: ``w1 * alignment + w2 * log_det``, the loss to back-propagate.
        alignment: mean of ``1/2 (x_gn - x*)^T H (x_gn - x*)``.
        log_det: mean of ``-1/2 log det H`` (plus ``log 2 pi`` if asked).
        n_valid: number of points averaged (int), see ``gauss_newton_loss``.
    """

    total: torch.Tensor
    alignment: torch.Tensor
    log_det: torch.Tensor
    n_valid: int


def gauss_newton_loss(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    kp_a: torch.Tensor,
    kp_b: torch.Tensor,
    vicinity: float = 1.0,
    weights: tuple[float, float] = (1.0, 2.0 / 7.0),
    generator: torch.Generator | None = None,
    damping: float = 1e-6,
    include_constant: bool = False,
) -> GNTerms:
    """GN-Net's Gauss-Newton loss for correspondences ``kp_a <-> kp_b``.

    For each correspondence, with x* = ``kp_b`` the true point in map b:

    - target ``f_a = F_a(kp_a)`` (C,);
    - start ``x_s = x* + v * (2 U - 1)``, U ~ Uniform[0, 1)^2 per axis, i.e.
      uniform in the square of half-side v = ``vicinity`` (GN-Net's
      ``rand(vicinity)``);
    - residual ``r = F_b(x_s) - f_a`` (C,), Jacobian ``J = dF_b/dx (x_s)``
      (C x 2, second-order differences of the sampled map, see the module
      docstring);
    - ``H = J^T J + damping * I`` (2 x 2), ``b = J^T r``;
    - one Gauss-Newton step ``x_gn = x_s - H^-1 b``;
    - loss ``w1 * 1/2 (x_gn - x*)^T H (x_gn - x*) + w2 * (-1/2 log det H)``,
      GN-Net's negative log-likelihood of x* under ``N(x_gn, H^-1)``,
      ``E = 1/2 (x* - x_gn)^T H (x* - x_gn) + log 2 pi - 1/2 log |H|``, with the
      constant ``log 2 pi`` dropped unless ``include_constant`` (it is then
      added to the second term, so it is weighted by w2 too).

    Source: GN-Net (von Stumberg et al., RA-L 2020), section III: the GN
    system ``H dx = -b`` solved once from a random start in the vicinity,
    and the Gaussian probability loss above; cross-checked against the
    GN-Net re-implementation in cvg/pixloc (``pixlib/models/gnnet.py``),
    which uses the same signs, ``H + 1e-6 I`` and weights the
    ``log 2 pi - 1/2 log |H|`` term. That code (like GN-Net) also applies the
    loss in both directions; this function is one direction, a -> b.

    The 2 x 2 algebra is closed-form and vectorised over the N points (done
    in float64, then cast back). Points whose start x_s leaves the cell
    centres' hull ``[0.5, W - 0.5] x [0.5, H - 0.5]``, where border padding
    makes the map flat, are left out of the mean (``n_valid`` counts the
    others); with none left the loss is a 0 still connected to both maps.

    Args:
        feat_a: ``(C, H_a, W_a)`` map of image a, where the targets are.
        feat_b: ``(C, H_b, W_b)`` map of image b, where the GN step is taken;
            H_b, W_b >= 4.
        kp_a: ``(N, 2)`` points in map a's grid, inside ``[0, W_a] x [0, H_a]``.
        kp_b: ``(N, 2)`` their true matches in map b's grid, inside its extent.
        vicinity: v, in cells of map b, >= 0 (seed 002: 1 pixel).
        weights: (w1, w2), seed 002: (1, 2/7).
        generator: CPU random generator for the start points.
        damping: epsilon > 0 added to the diagonal of H.
        include_constant: add ``log 2 pi`` to the second term.

    Returns:
        ``GNTerms`` (total, alignment, log_det, n_valid); gradients flow to
        both maps (through f_a, r and J).

    Raises:
        ShapeError, InputError: on malformed inputs.
    """
    _check_map("feat_a", feat_a)
    _check_map("feat_b", feat_b)
    check_shape("feat_b", feat_b.shape, "(C, H >= 4, W >= 4)", min(feat_b.shape[1:]) >= 4)
    if feat_a.shape[0] != feat_b.shape[0]:
        raise ShapeError(f"feat_a has {feat_a.shape[0]} channels but feat_b has {feat_b.shape[0]}")
    _, h_a, w_a = feat_a.shape
    _, h_b, w_b = feat_b.shape
    _check_keypoints("kp_a", kp_a, None, w_a, h_a)
    _check_keypoints("kp_b", kp_b, kp_a.shape[0], w_b, h_b)
    if not (math.isfinite(vicinity) and vicinity >= 0):
        raise InputError(f"vicinity must be finite and >= 0, got {vicinity!r}")
    if len(weights) != 2 or not all(math.isfinite(x) for x in weights):
        raise InputError(f"weights must be two finite numbers (w1, w2), got {weights!r}")
    if not damping > 0:
        raise InputError(f"damping must be > 0, got {damping!r}")

    offset = torch.rand(kp_b.shape, generator=generator, dtype=kp_b.dtype).to(kp_b.device)
    x_start = kp_b + vicinity * (2 * offset - 1)
    sx, sy = x_start[:, 0], x_start[:, 1]
    valid = (sx >= 0.5) & (sx <= w_b - 0.5) & (sy >= 0.5) & (sy <= h_b - 0.5)
    kp_a, kp_b, x_start = kp_a[valid], kp_b[valid], x_start[valid]
    n_valid = int(x_start.shape[0])
    if n_valid == 0:
        zero = feat_a.sum() * 0 + feat_b.sum() * 0
        return GNTerms(zero, zero, zero, 0)

    target = _sample_map(feat_a, kp_a)  # (N, C)
    current, jac = _sample_with_jacobian(feat_b, x_start)  # (N, C), (N, C, 2)
    alignment, log_det = _gn_step_terms(current - target, jac[..., 0], jac[..., 1], x_start - kp_b, damping)
    if include_constant:
        log_det = log_det + math.log(2 * math.pi)
    alignment, log_det = alignment.mean().to(feat_b.dtype), log_det.mean().to(feat_b.dtype)
    return GNTerms(weights[0] * alignment + weights[1] * log_det, alignment, log_det, n_valid)


def _gn_step_terms(
    residual: torch.Tensor,
    jac_x: torch.Tensor,
    jac_y: torch.Tensor,
    start_error: torch.Tensor,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point ``(1/2 e^T H e, -1/2 log det H)`` after one GN step, in float64.

    ``H = [[a, b], [b, d]]`` with ``a = Jx.Jx + eps``, ``b = Jx.Jy``,
    ``d = Jy.Jy + eps``; ``H^-1 = [[d, -b], [-b, a]] / (a d - b^2)``;
    ``e = x_gn - x* = (x_s - x*) - H^-1 J^T r``.
    """
    r, jx, jy = residual.double(), jac_x.double(), jac_y.double()
    a = (jx * jx).sum(-1) + damping
    b = (jx * jy).sum(-1)
    d = (jy * jy).sum(-1) + damping
    det = a * d - b * b
    gx, gy = (jx * r).sum(-1), (jy * r).sum(-1)  # J^T r
    step_x = (d * gx - b * gy) / det
    step_y = (a * gy - b * gx) / det
    ex = start_error[:, 0].double() - step_x
    ey = start_error[:, 1].double() - step_y
    alignment = 0.5 * (a * ex * ex + 2 * b * ex * ey + d * ey * ey)
    return alignment, -0.5 * torch.log(det)


# --------------------------------------------------------------------------- dense


def dense_matching_loss(map_a: torch.Tensor, map_b: torch.Tensor, kp_a: torch.Tensor, kp_b: torch.Tensor,
                        temperature: float = 0.05) -> torch.Tensor:
    """Mean cross-entropy of each point's softmax over every cell of map b.

    Point i's descriptor ``d_i = F_a(kp_a[i])`` (bilinear, not renormalised: unit at a
    cell centre, as short as about 0.7 between four orthogonal cells) is compared with
    every cell of map b; ``p_i = softmax(d_i . F_b / temperature)`` over the ``h w`` cells. Its
    target ``t_i`` spreads one unit over the (up to) four cells around ``kp_b[i]`` with
    bilinear weights, so a match between cell centres asks for both; near the border
    the cells are clamped into the map. The loss is ``mean_i -sum_k t_ik log p_ik``.

    Args:
        map_a: ``(C, h, w)``; map_b: ``(C, h', w')``, both unit norm per cell.
        kp_a, kp_b: ``(N, 2)`` COLMAP points in the maps' own grids (cell (i, j)
            is centred at ``(j + 0.5, i + 0.5)``).
    Returns:
        0-d tensor; 0 for N = 0.
    """
    _check_map("map_a", map_a)
    _check_map("map_b", map_b)
    if len(kp_a) == 0:
        return map_a.new_zeros(())
    _, height, width = map_b.shape
    logits = _sample_map(map_a, kp_a) @ map_b.flatten(1) / temperature                      # (N, h' w')
    u, v = kp_b[:, 0] - 0.5, kp_b[:, 1] - 0.5                                             # array coordinates
    u0, v0 = u.floor(), v.floor()
    fu, fv = u - u0, v - v0
    log_p = torch.log_softmax(logits, dim=1)
    loss = logits.new_zeros(len(kp_b))
    for du, dv, weight in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        column = (u0 + du).clamp(0, width - 1).long()
        row = (v0 + dv).clamp(0, height - 1).long()
        loss = loss - weight.to(logits.dtype) * log_p.gather(1, (row * width + column)[:, None])[:, 0]
    return loss.mean()


# --------------------------------------------------------------------------- total


@dataclass(frozen=True)
class FinetuneLossConfig:
    """Hyper-parameters of ``total_finetune_loss`` (seed 002, section 4.2).

    Attributes:
        margin_pos: DMC margin M+ for positives.
        margin_neg: DMC margin M- for negatives.
        gn_weight: lambda, the weight of the GN loss against the DMC loss.
        vicinity: GN start-point vicinity, in cells of each level's map.
        gn_term_weights: (w1, w2) of the GN loss's two terms.
        neg_radius: alpha, in cells of each level's map b: negatives are
            farther than this from the true match. Not given by seed 002;
            4 cells (16 px of a 1/4-resolution map) is a starting guess.
        gn_damping: epsilon added to the diagonal of the GN Hessian.
        combined_weight: weight of one more DMC term on the whole hypercolumn
            map (``Hypercolumns.assemble``: what matching compares), its negatives
            mined in that map, alpha in its 1/4-grid cells. Not in seed 002, whose
            loss sees each level alone; 0 (default) leaves the seed's loss.
        dense_weight: weight of ``dense_matching_loss`` on the whole hypercolumn
            maps; not in seed 002, 0 (default) leaves the seed's loss.
        dense_temperature: its softmax temperature, in units of the dot product of
            unit cells (cosine similarity at cell centres).
    """

    margin_pos: float = 0.1
    margin_neg: float = 1.0
    gn_weight: float = 0.5
    vicinity: float = 1.0
    gn_term_weights: tuple[float, float] = (1.0, 2.0 / 7.0)
    neg_radius: float = 4.0
    gn_damping: float = 1e-6
    combined_weight: float = 0.0
    dense_weight: float = 0.0
    dense_temperature: float = 0.05

    @property
    def needs_whole_maps(self) -> bool:
        """Whether the loss reads the whole hypercolumn maps (``combined`` of ``total_finetune_loss``)."""
        return self.combined_weight > 0 or self.dense_weight > 0

    def __post_init__(self):
        if not (0 <= self.margin_pos < self.margin_neg):
            raise InputError(f"need 0 <= margin_pos < margin_neg, got {self.margin_pos}, {self.margin_neg}")
        if not self.gn_weight >= 0:
            raise InputError(f"gn_weight must be >= 0, got {self.gn_weight}")
        if not self.combined_weight >= 0:
            raise InputError(f"combined_weight must be >= 0, got {self.combined_weight}")
        if not (self.dense_weight >= 0 and self.dense_temperature > 0):
            raise InputError(f"need dense_weight >= 0 and dense_temperature > 0, got {self.dense_weight}, "
                             f"{self.dense_temperature}")
        if not (self.vicinity >= 0 and self.neg_radius >= 0 and self.gn_damping > 0):
            raise InputError(
                f"need vicinity >= 0, neg_radius >= 0, gn_damping > 0; got {self.vicinity}, "
                f"{self.neg_radius}, {self.gn_damping}"
            )


def _map_dmc(fa: torch.Tensor, fb: torch.Tensor, kpa: torch.Tensor, kpb: torch.Tensor, pool_size: int,
             config: FinetuneLossConfig, generator: torch.Generator | None) -> DMCTerms:
    """DMC of one pair of maps at keypoints in their own grids, one mined negative per positive."""
    desc_a = _sample_map(fa, kpa)
    d_pos = _distance(desc_a, _sample_map(fb, kpb))
    negatives = mine_negatives(desc_a, fb, kpb, config.neg_radius, pool_size, generator)
    return double_margin_contrastive(d_pos, negatives.distance, config.margin_pos, config.margin_neg)


def total_finetune_loss(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    kp_a: torch.Tensor,
    kp_b: torch.Tensor,
    size_a: tuple[int, int],
    size_b: tuple[int, int],
    pool_size: int,
    config: FinetuneLossConfig | None = None,
    generator: torch.Generator | None = None,
    strides: Sequence[float] | None = None,
    combined: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Seed 002's fine-tuning loss, ``sum_l DMC_l + lambda * sum_l GN_l`` (eq. 7),
    plus ``config.combined_weight`` times the DMC loss of the ``combined`` maps and
    ``config.dense_weight`` times their ``dense_matching_loss``.

    With ``strides`` (input pixels per cell of each level, e.g. from
    ``VGG16.stride_entering``), keypoints given in input pixels map to level l as
    ``x / stride_l``, exact whatever the image size; without, as below.

    For each level l (a pair of maps, possibly of different sizes per level),
    the keypoints are rescaled from the grid they are given in to the level's
    grid (``x_l = x * W_l / W``, ``y_l = y * H_l / H``, exact under the COLMAP
    convention); then

    - positives: ``d_pos = ||F_a(kp_a) - F_b(kp_b)||``;
    - negatives: one per positive, ``mine_negatives(F_a(kp_a), F_b, kp_b,
      config.neg_radius, pool_size)``;
    - ``DMC_l = double_margin_contrastive(d_pos, d_neg)``;
    - ``GN_l = gauss_newton_loss(F_a, F_b, kp_a, kp_b)`` (target in a, step in b).

    Args:
        feats_a: L maps ``(C_l, H_l, W_l)`` of image a, one per hypercolumn level.
        feats_b: L maps ``(C_l, H'_l, W'_l)`` of image b.
        kp_a: ``(N, 2)`` positives in image a, COLMAP coordinates of a grid of
            size ``size_a`` (e.g. the input image, or a map when all levels share it).
        kp_b: ``(N, 2)`` their true matches in a grid of size ``size_b``.
        size_a: ``(W, H)`` of the grid kp_a is given in.
        size_b: ``(W, H)`` of the grid kp_b is given in.
        pool_size: M, see ``locseg.train.mining.mining_pool_size``.
        config: hyper-parameters; defaults to ``FinetuneLossConfig()``.
        generator: CPU random generator (negatives, GN start points).
        strides: see above.
        combined: ``(map_a, map_b, stride)``, the whole hypercolumn maps ``(C, h, w)``
            of both images, whose cells span ``stride`` units of the keypoints'
            grids (4 for a 1/4 grid and keypoints in input pixels); needed
            when ``config.needs_whole_maps``, ignored otherwise.

    Returns:
        ``(total, breakdown)``: the 0-d loss to back-propagate, and detached
        0-d tensors for logging: ``total``, ``dmc``, ``dmc_pos``, ``dmc_neg``,
        ``gn`` (unweighted by lambda), ``gn_align``, ``gn_logdet`` (summed over
        levels, unweighted by w1, w2), per level ``dmc/<l>``, ``gn/<l>``, with
        a combined term ``dmc_combined`` and with a dense term ``dense`` (both
        unweighted).
    """
    config = FinetuneLossConfig() if config is None else config
    if len(feats_a) != len(feats_b) or len(feats_a) == 0:
        raise InputError(f"need the same non-zero number of levels, got {len(feats_a)} and {len(feats_b)}")
    for name, size in (("size_a", size_a), ("size_b", size_b)):
        if len(size) != 2 or not all(s > 0 for s in size):
            raise InputError(f"{name} must be (W, H) with positive entries, got {size!r}")
    _check_keypoints("kp_a", kp_a, None, size_a[0], size_a[1])
    _check_keypoints("kp_b", kp_b, kp_a.shape[0], size_b[0], size_b[1])

    for level, (fa, fb) in enumerate(zip(feats_a, feats_b)):
        _check_map(f"feats_a[{level}]", fa)
        _check_map(f"feats_b[{level}]", fb)

    keys = ("dmc", "dmc_pos", "dmc_neg", "gn", "gn_align", "gn_logdet")
    sums = {key: feats_a[0].new_zeros(()) for key in keys}
    per_level = {}
    for level, (fa, fb) in enumerate(zip(feats_a, feats_b)):
        if strides is not None:  # floor(W / s) cells of s pixels: x / s, even when s does not divide W
            kpa, kpb = kp_a / strides[level], kp_b / strides[level]
        else:
            kpa = kp_a * kp_a.new_tensor([fa.shape[2] / size_a[0], fa.shape[1] / size_a[1]])
            kpb = kp_b * kp_b.new_tensor([fb.shape[2] / size_b[0], fb.shape[1] / size_b[1]])
        dmc = _map_dmc(fa, fb, kpa, kpb, pool_size, config, generator)
        gn = gauss_newton_loss(
            fa, fb, kpa, kpb, config.vicinity, config.gn_term_weights, generator, config.gn_damping
        )
        per_level[level] = (dmc, gn)
        for key, value in (
            ("dmc", dmc.total), ("dmc_pos", dmc.positive), ("dmc_neg", dmc.negative),
            ("gn", gn.total), ("gn_align", gn.alignment), ("gn_logdet", gn.log_det),
        ):
            sums[key] = sums[key] + value

    total = sums["dmc"] + config.gn_weight * sums["gn"]
    extra = {}
    if config.needs_whole_maps:
        if combined is None:
            raise InputError("combined_weight > 0 or dense_weight > 0 needs the whole maps of both images "
                             "(combined=...)")
        map_a, map_b, stride = combined
        if not stride > 0:
            raise InputError(f"the combined maps' stride must be > 0, got {stride}")
        _check_map("combined map_a", map_a)
        _check_map("combined map_b", map_b)
    if config.combined_weight > 0:
        whole = _map_dmc(map_a, map_b, kp_a / stride, kp_b / stride, pool_size, config, generator)
        total = total + config.combined_weight * whole.total
        extra["dmc_combined"] = whole.total.detach()
    if config.dense_weight > 0:
        dense = dense_matching_loss(map_a, map_b, kp_a / stride, kp_b / stride, config.dense_temperature)
        total = total + config.dense_weight * dense
        extra["dense"] = dense.detach()
    breakdown = {"total": total.detach()} | {key: value.detach() for key, value in sums.items()} | extra
    for level, (dmc, gn) in per_level.items():
        breakdown[f"dmc/{level}"] = dmc.total.detach()
        breakdown[f"gn/{level}"] = gn.total.detach()
    return total, breakdown
