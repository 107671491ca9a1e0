"""Feature-metric PnP: refine query poses by aligning features (seed 002, section 3.2).

For each problem (a query pose hypothesis) this minimises over the pose
``T = T_cam_from_world``

    E(T) = sum_i w_i rho(||F_q(pi(T X_i)) - f_i||^2)

with X_i world points, f_i their reference hypercolumns (C,), F_q the query's dense
hypercolumn map (C, h, w) at stride 4 on the query's network input image, pi the
query camera (a ``Camera`` of that input size, with its COLMAP model and
distortion) and rho a robust loss (``locseg.localize.robust``).

Conventions:

- Poses are ``T_cam_from_world`` and are updated on the manifold by a LEFT
  perturbation, ``T <- Pose.exp(delta) @ T`` with ``delta = (omega, v)``
  (``locseg.geometry.pose``), so ``delta`` lives in the camera frame.
- The residual Jacobian is the chain ``dF/duv (C x 2) . duv/dp (2 x 3) .
  dp/ddelta (3 x 6)``: the interpolated feature-map gradient
  (``locseg.localize.feature_gradients``, pixels of the network input), the
  camera's ``J_project`` (with distortion), and ``[-skew(p_cam), I]``
  (``left_perturbation_jacobian``). The normal equations are accumulated in the
  factored form ``J_p^T (J_f^T J_f) J_p``, so the C x 6 Jacobians of all points are
  never held in memory.
- A point takes part where it is in front of the camera, projects inside the hull
  of the map's cell centres, and has a positive weight; elsewhere its weight is 0,
  per problem and per pose.

Levenberg-Marquardt (DESIGN.md section 1): Marquardt damping ``H + lambda diag(H)``,
lambda from 1e-2, x10 on a rejected step, /10 on an accepted one, clamped to
[1e-6, 1e2]; Cholesky with a pseudo-inverse fallback; a step is accepted when it
lowers the cost summed over the points valid at both poses. Every problem of a
batch stops on its own (small accepted step, small gradient, no decrease at maximum
damping, the iteration limit, or once it has moved beyond the plausible region below,
as it would fall back anyway). The Jacobian uses interpolated finite-difference
gradients, not the derivative of the bilinearly interpolated map, so with noisy
features the last steps typically end on "no decrease at maximum damping", close to
the cost's minimum; exact features converge to machine precision.

Fallback: the refined pose is kept only if it lowers the mean cost over the points
valid at both the initial and the refined pose, and moved the camera centre by at
most ``max_translation`` and turned it by at most ``max_rotation_deg``; otherwise
the initial (RANSAC) pose is returned with the reason.

Example:
    >>> result = refine_pose(T_init, camera, points, descriptors, query_map)  # doctest: +SKIP
    >>> result.pose, result.reason, result.covariance.shape  # doctest: +SKIP
    (Pose(...), 'converged (small step)', torch.Size([6, 6]))
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from ..errors import InputError, ShapeError, check_shape
from ..geometry import Camera, Pose, left_perturbation_jacobian
from ..models.hypercolumn import STRIDE
from .feature_gradients import check_gradient_operator, feature_field
from .robust import get_robust_loss, robust_cost

__all__ = [
    "FeatureResiduals",
    "FeatureSampler",
    "RefineConfig",
    "RefineResult",
    "feature_residuals",
    "level_slices",
    "refine_pose",
    "refine_poses",
]


@dataclass(frozen=True)
class RefineConfig:
    """Everything that determines a feature-metric refinement.

    Attributes:
        loss: a name in ``locseg.localize.robust.ROBUST_LOSSES``.
        loss_scale: the loss's scale, in units of the residual norm ``||F_q - f||``.
        gradient_operator: ``"central"`` (default, seed 002) or ``"sobel"``.
        max_iterations: LM iterations per stage (one cost evaluation each).
        lambda_init, lambda_factor, lambda_min, lambda_max: the damping schedule.
        step_tolerance: stop when an accepted step has ``max |delta| <`` this
            (radians and scene units).
        gradient_tolerance: stop when the gradient of the mean cost per point has
            ``max |g| <`` this.
        cost_tolerance: stop when an accepted step lowers the cost by less than this
            fraction of it (0: never); spares the run of ever smaller steps and
            rejections that ends most refinements at no gain in accuracy.
        min_points: fewer valid points than this and a problem is not refined.
        max_translation: largest plausible move of the camera centre (scene units, m).
        max_rotation_deg: largest plausible rotation, degrees.
        levels: coarse-to-fine channel slices ``((start, stop), ...)`` of the
            hypercolumn, optimised in this order before a last stage on all
            channels; empty (default): all channels at once. See ``level_slices``.
    """

    loss: str = "squared"
    loss_scale: float = 1.0
    gradient_operator: str = "central"
    max_iterations: int = 100
    lambda_init: float = 1e-2
    lambda_factor: float = 10.0
    lambda_min: float = 1e-6
    lambda_max: float = 1e2
    step_tolerance: float = 1e-7
    gradient_tolerance: float = 1e-10
    cost_tolerance: float = 1e-4
    min_points: int = 6
    max_translation: float = 2.0
    max_rotation_deg: float = 10.0
    levels: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        get_robust_loss(self.loss)
        check_gradient_operator(self.gradient_operator)
        positive = {"loss_scale": self.loss_scale, "max_translation": self.max_translation,
                    "max_rotation_deg": self.max_rotation_deg, "lambda_min": self.lambda_min}
        for name, value in positive.items():
            if not value > 0:
                raise InputError(f"{name} must be positive, got {value}")
        for name in ("max_iterations", "min_points"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not self.lambda_min <= self.lambda_init <= self.lambda_max:
            raise InputError(f"need lambda_min <= lambda_init <= lambda_max, got "
                             f"{self.lambda_min}, {self.lambda_init}, {self.lambda_max}")
        if not self.lambda_factor > 1:
            raise InputError(f"lambda_factor must be > 1, got {self.lambda_factor}")
        for name in ("step_tolerance", "gradient_tolerance", "cost_tolerance"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_rotation_deg > 180:
            raise InputError(f"max_rotation_deg must be at most 180, got {self.max_rotation_deg}")
        object.__setattr__(self, "levels", _check_levels(self.levels))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``RefineConfig(**d)`` reads it back."""
        return json.loads(json.dumps(asdict(self)))


def _check_levels(levels: Any) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple((int(a), int(b)) for a, b in levels)
        ok = all(float(a) == x and float(b) == y for (a, b), (x, y) in zip(levels, pairs))
    except (TypeError, ValueError):
        ok = False
    if not ok or not all(0 <= a < b for a, b in pairs):
        raise InputError(f"levels must be (start, stop) channel pairs with 0 <= start < stop, got {levels!r}")
    return pairs


def level_slices(channels: Sequence[int], coarsest_first: bool = True) -> tuple[tuple[int, int], ...]:
    """Channel slices of a hypercolumn from its levels' channel counts.

    Args:
        channels: the channels of each level in concatenation order, e.g.
            ``[net.backbone.channels_entering(i) for i in net.layers]`` (finest first
            for the default layers).
        coarsest_first: reverse the order, so that ``RefineConfig(levels=...)``
            starts from the deepest, smoothest level.
    Returns:
        ``((start, stop), ...)``.

    Example:
        >>> level_slices([256, 256, 512])
        ((512, 1024), (256, 512), (0, 256))
    """
    bounds = [0]
    for c in channels:
        if int(c) < 1:
            raise InputError(f"level channel counts must be positive, got {list(channels)}")
        bounds.append(bounds[-1] + int(c))
    slices = tuple(itertools.pairwise(bounds))
    return slices[::-1] if coarsest_first else slices


@dataclass(frozen=True)
class RefineResult:
    """Refinement of a batch of B problems (or one, unbatched: index a batch with an int).

    Attributes:
        pose: (B,) the returned ``T_cam_from_world``: refined, or the initial one
            where the refinement fell back.
        pose_initial: (B,) the given initial poses.
        cost_initial, cost_final: (B,) mean robust cost per point at the initial and
            the returned pose, both over the same ``num_points`` points (those valid
            at both the initial and the refined pose).
        iterations: (B,) LM iterations run, summed over stages.
        converged: (B,) the last stage stopped on a tolerance or because no step
            lowered the cost even at maximum damping (a minimum up to the accuracy of
            the interpolated gradients), not on the iteration limit or by moving too
            far; independent of ``fellback``.
        fellback: (B,) the initial pose was returned.
        reasons: (B,) why each problem stopped, or why it fell back (``"fallback: ..."``).
        covariance: (B, 6, 6) covariance of the left perturbation ``delta = (omega, v)``
            at the returned pose (camera frame): the inverse Gauss-Newton Hessian
            ``(J^T W J)^-1`` times the residual variance; NaN when singular.
        num_points: (B,) points used for the costs and the covariance.
    """

    pose: Pose
    pose_initial: Pose
    cost_initial: torch.Tensor
    cost_final: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    fellback: torch.Tensor
    reasons: tuple[str, ...]
    covariance: torch.Tensor
    num_points: torch.Tensor

    @property
    def reason(self) -> str:
        """The reason of an unbatched result."""
        if self.pose.ndim != 0:
            raise InputError("reason is for an unbatched result; use reasons, or index the batch")
        return self.reasons[0]

    def __getitem__(self, index: int) -> RefineResult:
        """The unbatched result of problem ``index``."""
        if self.pose.ndim != 1:
            raise InputError("only a batched result can be indexed")
        return RefineResult(self.pose[index], self.pose_initial[index], self.cost_initial[index],
                            self.cost_final[index], self.iterations[index], self.converged[index],
                            self.fellback[index], (self.reasons[index],), self.covariance[index],
                            self.num_points[index])


# ----------------------------------------------------------------------------- residuals
@dataclass(frozen=True)
class FeatureResiduals:
    """Feature residuals of B problems with N points and their Jacobian factors.

    Attributes:
        residuals: (B, N, C) ``F_q(pi(T X_i)) - f_i``, in the feature maps' dtype.
        jacobian_features: (B, N, C, 2) dF/duv at the projections (pixels), in the
            feature maps' dtype: the C-long products reduce to (B, N, 2, 2) and (B, N, 2)
            there, and only those meet the geometry, in the poses' dtype.
        jacobian_pixels: (B, N, 2, 6) duv/ddelta for the left update ``exp(delta) @ T``.
        valid: (B, N) in front of the camera and inside the map.
    """

    residuals: torch.Tensor
    jacobian_features: torch.Tensor
    jacobian_pixels: torch.Tensor
    valid: torch.Tensor

    @property
    def jacobian(self) -> torch.Tensor:
        """(B, N, C, 6) the full residual Jacobian (for checks; LM uses the factors)."""
        return self.jacobian_features.to(self.jacobian_pixels.dtype) @ self.jacobian_pixels


class FeatureSampler(Protocol):
    """What ``feature_residuals`` needs of a feature field (``FeatureField`` is one)."""

    def sample(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, 2) pixels -> features (B, N, C), dF/duv (B, N, C, 2), inside (B, N)."""
        ...


def feature_residuals(T_cam_from_world: Pose, camera: Camera, points: torch.Tensor,
                      descriptors: torch.Tensor, field: FeatureSampler) -> FeatureResiduals:
    """Residuals and Jacobians of the feature-metric objective at the given poses.

    Args:
        T_cam_from_world: (B,) poses.
        camera: () or (B,) query cameras of the network input; computations use
            the poses' dtype (cast the camera and points to it).
        points: (B, N, 3) world points.
        descriptors: (B, N, C) reference features.
        field: a ``FeatureField`` of the (B, C, h, w) query maps, or any object
            with the same ``sample(uv)``.
    Returns:
        ``FeatureResiduals``: pixel Jacobians in the poses' dtype, features in the maps'.
    """
    dtype = T_cam_from_world.dtype
    camera = camera.to(dtype=dtype)
    p_cam = T_cam_from_world.transform(points.to(dtype))
    uv, in_front = camera.project(p_cam)
    J_pixels = camera.J_project(p_cam) @ left_perturbation_jacobian(p_cam)
    features, J_features, inside = field.sample(uv)
    return FeatureResiduals(features - descriptors.to(features.dtype), J_features, J_pixels, in_front & inside)


@dataclass(frozen=True)
class _Evaluation:
    """Cost and normal equations of B problems at one pose each."""

    cost: torch.Tensor         # (B, N) w_i rho(s_i), 0 where invalid
    valid: torch.Tensor        # (B, N)
    hessian: torch.Tensor      # (B, 6, 6) J^T W J
    gradient: torch.Tensor     # (B, 6) J^T W r
    weighted_sq: torch.Tensor  # (B, N) W_i s_i, for the residual variance

    @property
    def num_valid(self) -> torch.Tensor:
        return self.valid.sum(-1)


Evaluate = Callable[[Pose], _Evaluation]


def _normal_equations(res: FeatureResiduals, weights: torch.Tensor, loss: str,
                      scale: float) -> _Evaluation:
    valid = res.valid & (weights > 0)
    J_f, J_p = res.jacobian_features, res.jacobian_pixels
    dtype = J_p.dtype
    s = (res.residuals**2).sum(-1).to(dtype)
    rho, d_rho = robust_cost(loss, s, scale)
    cost = torch.where(valid, weights * rho, 0)
    W = torch.where(valid, weights * d_rho, 0)
    J_f_t = J_f.transpose(-1, -2)                                                     # (B, N, 2, C)
    gram = (J_f_t @ J_f).to(dtype)                                                    # (B, N, 2, 2)
    # two same-shape products, not N matrix-vector products or a broadcast: ~10x faster on a CPU
    J_f_r = torch.stack([(J_f_t[..., k, :] * res.residuals).sum(-1) for k in (0, 1)], -1).to(dtype)  # (B, N, 2)
    hessian = torch.einsum("bnki,bnkl,bnlj,bn->bij", J_p, gram, J_p, W)
    gradient = torch.einsum("bnki,bnk,bn->bi", J_p, J_f_r, W)
    return _Evaluation(cost, valid, hessian, gradient, W * s)


# ----------------------------------------------------------------------------- LM
def _damped_solve(hessian: torch.Tensor, gradient: torch.Tensor,
                  lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``delta = -(H + lambda diag(H))^-1 g`` per problem; Cholesky, else pseudo-inverse.

    Returns the steps (B, 6) (zero where no finite step exists) and that mask (B,).
    """
    diag = hessian.diagonal(dim1=-2, dim2=-1)
    floor = diag.amax(-1, keepdim=True).clamp_min(torch.finfo(diag.dtype).tiny) * 1e-12
    damped = hessian + torch.diag_embed(lam[:, None] * diag.clamp_min(floor))
    L, info = torch.linalg.cholesky_ex(damped)
    delta = -torch.cholesky_solve(gradient[..., None], L)[..., 0]
    failed = info != 0
    if bool(failed.any()):
        fallback = -(torch.linalg.pinv(damped[failed]) @ gradient[failed][..., None])[..., 0]
        delta = delta.index_put((failed.nonzero()[:, 0],), fallback)
    ok = torch.isfinite(delta).all(-1)
    return torch.where(ok[:, None], delta, 0), ok


_RUNNING, _SMALL_STEP, _SMALL_GRADIENT, _STALLED, _NO_STEP, _SKIPPED, _TOO_FAR, _SMALL_DECREASE = range(8)
_STATUS = {
    _RUNNING: "stopped: maximum iterations",
    _SMALL_STEP: "converged (small step)",
    _SMALL_GRADIENT: "converged (small gradient)",
    _STALLED: "converged (no decrease at maximum damping)",
    _NO_STEP: "stopped: the damped system has no finite solution",
    _SKIPPED: "not refined",
    _TOO_FAR: "stopped: moved beyond the plausible region",
    _SMALL_DECREASE: "converged (small decrease)",
}


def _levenberg_marquardt(T: Pose, evaluate: Evaluate, config: RefineConfig, active: torch.Tensor,
                         T_start: Pose) -> tuple[Pose, torch.Tensor, torch.Tensor]:
    """Run LM from ``T`` (B,) on the problems where ``active`` (B,).

    A problem also stops once its pose has left the plausible region around
    ``T_start`` (B,) (``max_translation``, ``max_rotation_deg``): it will fall back.
    Returns the poses, the iterations run (B,) and the stopping status (B,).
    """
    B = active.shape[0]
    lam = torch.full((B,), config.lambda_init, dtype=T.dtype, device=T.device)
    iterations = torch.zeros(B, dtype=torch.long, device=T.device)
    status = torch.full((B,), _SKIPPED, dtype=torch.long, device=T.device)
    status[active] = _RUNNING
    current = evaluate(T)
    for _ in range(config.max_iterations):
        mean_gradient = current.gradient / current.num_valid.clamp_min(1)[:, None]
        flat = active & (mean_gradient.abs().amax(-1) < config.gradient_tolerance)
        status = torch.where(flat, _SMALL_GRADIENT, status)
        active = active & ~flat
        if not bool(active.any()):
            break
        delta, solved = _damped_solve(current.hessian, current.gradient, lam)
        status = torch.where(active & ~solved, _NO_STEP, status)
        active = active & solved
        delta = torch.where(active[:, None], delta, 0)
        candidate_T = Pose.exp(delta) @ T
        candidate = evaluate(candidate_T)
        common = current.valid & candidate.valid
        cost_before, cost_after = (current.cost * common).sum(-1), (candidate.cost * common).sum(-1)
        decreased = cost_after < cost_before
        accept = active & decreased & (candidate.num_valid >= config.min_points)
        T = Pose(torch.where(accept[:, None], candidate_T.data, T.data))
        current = _select(accept, candidate, current)
        stalled = active & ~accept & (lam >= config.lambda_max)
        lam = torch.where(accept, lam / config.lambda_factor, lam * config.lambda_factor)
        lam = lam.clamp(config.lambda_min, config.lambda_max)
        iterations = iterations + active.long()
        small = accept & (delta.abs().amax(-1) < config.step_tolerance)
        flat_cost = accept & ~small & (cost_before - cost_after < config.cost_tolerance * cost_before)
        dt, dR = T.error(T_start)
        away = accept & ((dt > config.max_translation) | (dR > config.max_rotation_deg))
        status = torch.where(small, _SMALL_STEP, torch.where(stalled, _STALLED, status))
        status = torch.where(flat_cost, _SMALL_DECREASE, status)
        status = torch.where(away, _TOO_FAR, status)
        active = active & ~small & ~stalled & ~flat_cost & ~away
    return T, iterations, status


def _converged(status: torch.Tensor) -> torch.Tensor:
    return ((status == _SMALL_STEP) | (status == _SMALL_GRADIENT) | (status == _STALLED)
            | (status == _SMALL_DECREASE))


def _select(mask: torch.Tensor, a: _Evaluation, b: _Evaluation) -> _Evaluation:
    """``a`` where ``mask`` (B,), else ``b``."""
    def pick(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.reshape(-1, *[1] * (x.ndim - 1)), x, y)
    return _Evaluation(*(pick(getattr(a, f), getattr(b, f)) for f in
                         ("cost", "valid", "hessian", "gradient", "weighted_sq")))


# ----------------------------------------------------------------------------- driver
def _check_inputs(T: Pose, camera: Camera, points: torch.Tensor, descriptors: torch.Tensor,
                  feature_maps: torch.Tensor, weights: torch.Tensor) -> None:
    if not isinstance(T, Pose) or T.ndim != 1:
        raise ShapeError(f"T_init must be a Pose of batch shape (B,), got "
                         f"{tuple(T.shape) if isinstance(T, Pose) else type(T).__name__}")
    B = T.shape[0]
    check_shape("feature_maps", tuple(feature_maps.shape), f"({B}, C, h, w)",
                feature_maps.ndim == 4 and feature_maps.shape[0] == B)
    C, h, w = feature_maps.shape[1:]
    check_shape("points", tuple(points.shape), f"({B}, N, 3)",
                points.ndim == 3 and points.shape[0] == B and points.shape[-1] == 3)
    N = points.shape[1]
    check_shape("descriptors", tuple(descriptors.shape), f"({B}, {N}, {C})",
                tuple(descriptors.shape) == (B, N, C))
    check_shape("weights", tuple(weights.shape), f"({B}, {N})", tuple(weights.shape) == (B, N))
    if not bool((weights >= 0).all()):
        raise InputError("weights must be non-negative and not NaN")
    if not isinstance(camera, Camera) or camera.ndim > 1 or (camera.ndim == 1 and camera.shape[0] != B):
        raise ShapeError(f"camera must be a Camera of batch shape () or ({B},), got "
                         f"{tuple(camera.shape) if isinstance(camera, Camera) else type(camera).__name__}")
    cells = torch.floor(camera.size / STRIDE).reshape(-1, 2)
    if not bool((cells == cells.new_tensor([w, h])).all()):
        raise ShapeError(f"feature_maps of {h} x {w} cells do not match the camera image sizes "
                         f"{camera.size.reshape(-1, 2).tolist()} (W, H): expected floor(size / {STRIDE})")


def refine_poses(T_init: Pose, camera: Camera, points: torch.Tensor, descriptors: torch.Tensor,
                 feature_maps: torch.Tensor, mask: torch.Tensor | None = None,
                 weights: torch.Tensor | None = None,
                 config: RefineConfig = RefineConfig()) -> RefineResult:
    """Refine B pose hypotheses at once by feature-metric Levenberg-Marquardt.

    Args:
        T_init: (B,) initial ``T_cam_from_world`` (e.g. RANSAC-PnP); its dtype is
            the computation dtype (promoted with the maps').
        camera: () or (B,) query cameras matching the network input images.
        points: (B, N, 3) world points (pad ragged problems and mask the padding).
        descriptors: (B, N, C) reference hypercolumns of the points.
        feature_maps: (B, C, h, w) dense query hypercolumns, stride 4,
            ``h = floor(H / 4)``, ``w = floor(W / 4)`` of the camera's W x H.
        mask: (B, N) bool, the points that exist; default all.
        weights: (B, N) non-negative point weights w_i; default 1.
        config: ``RefineConfig``.
    Returns:
        ``RefineResult`` of batch shape (B,).
    """
    N = points.shape[1] if points.ndim == 3 else 0
    B = T_init.shape[0] if isinstance(T_init, Pose) and T_init.ndim == 1 else 0
    weights = torch.ones(B, N, dtype=points.dtype, device=points.device) if weights is None else weights
    if mask is not None:
        check_shape("mask", tuple(mask.shape), f"({B}, {N})", tuple(mask.shape) == (B, N))
        weights = torch.where(mask.to(torch.bool), weights, 0)
    _check_inputs(T_init, camera, points, descriptors, feature_maps, weights)
    with torch.no_grad():
        return _refine(T_init, camera, points, descriptors, feature_maps, weights, config)


def _refine(T_init: Pose, camera: Camera, points: torch.Tensor, descriptors: torch.Tensor,
            feature_maps: torch.Tensor, weights: torch.Tensor, config: RefineConfig) -> RefineResult:
    dtype = torch.promote_types(T_init.dtype, feature_maps.dtype)
    T_init = T_init.to(dtype)
    camera, points = camera.to(dtype=dtype), points.to(dtype)
    descriptors, weights = descriptors.to(feature_maps.dtype), weights.to(dtype)
    field = feature_field(feature_maps, config.gradient_operator)
    C = field.channels
    if any(stop > C for _, stop in config.levels):
        raise ShapeError(f"config.levels {config.levels} exceed the maps' {C} channels")

    def evaluator(start: int, stop: int, point_weights: torch.Tensor = weights) -> Evaluate:
        part = field if (start, stop) == (0, C) else field.select_channels(start, stop)
        desc = descriptors[..., start:stop]

        def evaluate(T: Pose) -> _Evaluation:
            res = feature_residuals(T, camera, points, desc, part)
            return _normal_equations(res, point_weights, config.loss, config.loss_scale)
        return evaluate

    evaluate_all = evaluator(0, C)
    initial = evaluate_all(T_init)
    enough = initial.num_valid >= config.min_points
    T, iterations = T_init, torch.zeros_like(enough, dtype=torch.long)
    far = torch.zeros_like(enough)
    for start, stop in (*config.levels, (0, C)):
        T, its, status = _levenberg_marquardt(T, evaluator(start, stop), config, enough & ~far, T_init)
        iterations = iterations + its
        far = far | (status == _TOO_FAR)
    status = torch.where(far, _TOO_FAR, status)
    refined = evaluate_all(T)
    common = initial.valid & refined.valid
    n_common = common.sum(-1)
    cost_initial = (initial.cost * common).sum(-1) / n_common.clamp_min(1)
    cost_refined = (refined.cost * common).sum(-1) / n_common.clamp_min(1)
    dt, dR = T.error(T_init)
    reasons = _fallback_reasons(config, initial.num_valid, n_common, dt, dR, cost_initial,
                                cost_refined, torch.isfinite(T.data).all(-1), status)
    fellback = torch.tensor([r.startswith("fallback") for r in reasons], device=T.device)
    T_out = Pose(torch.where(fellback[:, None], T_init.data, T.data))
    used = torch.where((fellback & (n_common < config.min_points))[:, None], initial.valid, common)
    final = evaluator(0, C, torch.where(used, weights, 0))(T_out)
    return RefineResult(
        pose=T_out, pose_initial=T_init, cost_initial=cost_initial,
        cost_final=torch.where(fellback, cost_initial, cost_refined),
        iterations=iterations, converged=_converged(status),
        fellback=fellback, reasons=reasons,
        covariance=_covariance(final, C), num_points=final.num_valid)


def _fallback_reasons(config: RefineConfig, n_initial: torch.Tensor, n_common: torch.Tensor,
                      dt: torch.Tensor, dR: torch.Tensor, cost_initial: torch.Tensor,
                      cost_refined: torch.Tensor, finite: torch.Tensor,
                      status: torch.Tensor) -> tuple[str, ...]:
    """Per problem: ``"fallback: <why>"`` or the LM stopping status."""
    reasons = []
    for i in range(n_initial.shape[0]):
        n0, n1 = int(n_initial[i]), int(n_common[i])
        c0, c1 = float(cost_initial[i]), float(cost_refined[i])
        if n0 < config.min_points:
            why = f"{n0} points in view at the initial pose < min_points {config.min_points}"
        elif not bool(finite[i]):
            why = "the refined pose is not finite"
        elif n1 < config.min_points:
            why = f"{n1} points in view at both poses < min_points {config.min_points}"
        elif float(dt[i]) > config.max_translation:
            why = f"moved {float(dt[i]):.3g} m > max_translation {config.max_translation:g} m"
        elif float(dR[i]) > config.max_rotation_deg:
            why = f"rotated {float(dR[i]):.3g} deg > max_rotation_deg {config.max_rotation_deg:g} deg"
        elif not c1 < c0:
            why = f"cost did not decrease ({c0:.6g} -> {c1:.6g} over {n1} points)"
        else:
            reasons.append(_STATUS[int(status[i])])
            continue
        reasons.append(f"fallback: {why}")
    return tuple(reasons)


def _covariance(evaluation: _Evaluation, channels: int) -> torch.Tensor:
    """``sigma^2 (J^T W J)^-1`` with ``sigma^2 = sum W s / (n C - 6)``; NaN where singular."""
    n = evaluation.num_valid
    dof = (n * channels - 6).clamp_min(1)
    variance = evaluation.weighted_sq.sum(-1) / dof
    L, info = torch.linalg.cholesky_ex(evaluation.hessian)
    inverse = torch.cholesky_inverse(L)
    singular = (info != 0) | (n == 0)
    covariance = variance[:, None, None] * inverse
    return torch.where(singular[:, None, None], math.nan, covariance)


def refine_pose(T_init: Pose, camera: Camera, points: torch.Tensor, descriptors: torch.Tensor,
                feature_map: torch.Tensor, weights: torch.Tensor | None = None,
                config: RefineConfig = RefineConfig()) -> RefineResult:
    """Refine one pose: ``refine_poses`` on a batch of one.

    Args:
        T_init: () initial ``T_cam_from_world``.
        camera: () the query camera of the network input.
        points: (N, 3) world points.
        descriptors: (N, C) their reference hypercolumns.
        feature_map: (C, h, w) the query's dense hypercolumns.
        weights: (N,) optional non-negative point weights.
    Returns:
        an unbatched ``RefineResult`` (``result.reason`` is a str).
    """
    if not isinstance(T_init, Pose) or T_init.ndim != 0:
        raise ShapeError("T_init must be an unbatched Pose; use refine_poses for batches")
    check_shape("points", tuple(points.shape), "(N, 3)", points.ndim == 2)
    check_shape("descriptors", tuple(descriptors.shape), "(N, C)", descriptors.ndim == 2)
    check_shape("feature_map", tuple(feature_map.shape), "(C, h, w)", feature_map.ndim == 3)
    if weights is not None:
        check_shape("weights", tuple(weights.shape), f"({points.shape[0]},)",
                    tuple(weights.shape) == (points.shape[0],))
        weights = weights[None]
    result = refine_poses(T_init[None], camera, points[None], descriptors[None], feature_map[None],
                          weights=weights, config=config)
    return result[0]

