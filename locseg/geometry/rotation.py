"""Rotation representations and conversions between them, as pure functions.

Conventions (the only place they are stated):

- Rotation matrices act on column vectors: ``x' = R @ x``. A matrix has shape
  ``(..., 3, 3)`` with any leading batch shape.
- Quaternions are Hamilton quaternions stored w first, ``q = (w, x, y, z)``,
  shape ``(..., 4)``. ``q`` and ``-q`` are the same rotation; functions that
  return quaternions return them unit-norm with ``w >= 0``. (pycolmap stores
  xyzw: convert at that boundary only.)
- Axis-angle vectors are ``omega = theta * axis`` with ``axis`` a unit vector
  and ``theta`` the right-handed rotation angle in radians, shape ``(..., 3)``.
  ``axis_angle_to_matrix`` is the SO(3) exponential map, ``matrix_to_axis_angle``
  its logarithm, returning ``theta`` in ``[0, pi]``.
- ``skew(v) @ x == cross(v, x)``.

The functions keep the input dtype and device and are differentiable: near
``theta = 0`` they switch to Taylor expansions (so float64 values and autograd
gradients stay exact at and near zero), and the matrix-to-quaternion
conversion takes the branch with the largest diagonal term, which keeps it
accurate near ``theta = pi``.
"""

from __future__ import annotations

import math

import torch

from ..errors import check_shape

# Below these squared magnitudes the closed forms switch to Taylor series. The
# series are truncated where the first dropped term is below float64 epsilon.
SMALL_ANGLE_SQ = 1e-4  # theta^2, for the SO(3)/SE(3) exp and log coefficients
_SMALL_SINE_SQ = 1e-6  # sin(theta/2)^2, for quaternion -> axis-angle


def skew(v: torch.Tensor) -> torch.Tensor:
    """The cross-product matrix of ``v``: ``skew(v) @ x == cross(v, x)``.

    Args:
        v: (..., 3)
    Returns:
        (..., 3, 3)
    """
    check_shape("v", v.shape, "(..., 3)", v.ndim >= 1 and v.shape[-1] == 3)
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


def _safe_sqrt(x_sq: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """sqrt(x_sq) where not ``small``, else 1 (keeps the unused branch's gradient finite)."""
    return torch.where(small, torch.ones_like(x_sq), x_sq).sqrt()


def so3_coefficients(theta_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scalar coefficients of the SO(3) and SE(3) exponential maps.

    With ``theta = sqrt(theta_sq)``:
    ``a = sin(theta) / theta``, ``b = (1 - cos(theta)) / theta^2``,
    ``c = (theta - sin(theta)) / theta^3``, so that ``exp([w]x) = I + a W + b W^2``
    and the SE(3) left Jacobian is ``V = I + b W + c W^2`` with ``W = skew(w)``.

    Args:
        theta_sq: (...) squared rotation angles.
    Returns:
        a, b, c: each (...).
    """
    small = theta_sq < SMALL_ANGLE_SQ
    theta = _safe_sqrt(theta_sq, small)
    t2 = theta_sq
    half_sin = torch.sin(theta / 2)
    a = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - t2 / 24 + t2 * t2 / 720, 2 * half_sin**2 / theta**2)
    c = torch.where(small, 1 / 6 - t2 / 120 + t2 * t2 / 5040, (theta - torch.sin(theta)) / theta**3)
    return a, b, c


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of an axis-angle vector (Rodrigues; the SO(3) exponential).

    Args:
        axis_angle: (..., 3) ``theta * axis``.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    check_shape("axis_angle", axis_angle.shape, "(..., 3)",
                axis_angle.ndim >= 1 and axis_angle.shape[-1] == 3)
    a, b, _ = so3_coefficients((axis_angle**2).sum(-1))
    w = skew(axis_angle)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[..., None, None] * w + b[..., None, None] * (w @ w)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of a Hamilton quaternion (w first). ``q`` is normalised first.

    Args:
        q: (..., 4) ``(w, x, y, z)``, any non-zero norm.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    check_shape("q", q.shape, "(..., 4)", q.ndim >= 1 and q.shape[-1] == 4)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    entries = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(entries, dim=-1).unflatten(-1, (3, 3))


def standardize_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Normalise quaternions to unit norm with ``w >= 0``.

    Args:
        q: (..., 4) ``(w, x, y, z)``.
    Returns:
        (..., 4)
    """
    check_shape("q", q.shape, "(..., 4)", q.ndim >= 1 and q.shape[-1] == 4)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Quaternion of a rotation matrix, by the largest-diagonal branch.

    The four candidates ``4w^2 = 1 + R00 + R11 + R22``, ``4x^2 = 1 + R00 - R11 - R22``
    (and likewise y, z) sum to 4, so the largest is at least 1: solving for that
    component first and the others from off-diagonal sums/differences divides
    by a number >= 1 everywhere, including near ``theta = pi``.

    Args:
        R: (..., 3, 3) rotation matrices.
    Returns:
        (..., 4) unit quaternions ``(w, x, y, z)`` with ``w >= 0``.
    """
    check_shape("R", R.shape, "(..., 3, 3)", R.ndim >= 2 and R.shape[-2:] == (3, 3))
    r = R.flatten(-2).unbind(-1)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = r
    four_sq = torch.stack([
        1 + r00 + r11 + r22,
        1 + r00 - r11 - r22,
        1 - r00 + r11 - r22,
        1 - r00 - r11 + r22,
    ], dim=-1)
    # Row i is (w, x, y, z) * 4 q_i; the unused rows' divisors are floored so
    # that their (discarded) values and gradients stay finite.
    candidates = torch.stack([
        torch.stack([four_sq[..., 0], r21 - r12, r02 - r20, r10 - r01], dim=-1),
        torch.stack([r21 - r12, four_sq[..., 1], r01 + r10, r02 + r20], dim=-1),
        torch.stack([r02 - r20, r01 + r10, four_sq[..., 2], r12 + r21], dim=-1),
        torch.stack([r10 - r01, r02 + r20, r12 + r21, four_sq[..., 3]], dim=-1),
    ], dim=-2)
    divisor = 2 * four_sq.clamp_min(0.1).sqrt()
    candidates = candidates / divisor[..., None]
    best = four_sq.argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    q = candidates.gather(-2, index).squeeze(-2)
    return standardize_quaternion(q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Axis-angle vector of a quaternion, with angle in ``[0, pi]``.

    Args:
        q: (..., 4) ``(w, x, y, z)``, any non-zero norm.
    Returns:
        (..., 3)
    """
    q = standardize_quaternion(q)
    w, v = q[..., 0], q[..., 1:]
    s_sq = (v**2).sum(-1)
    small = s_sq < _SMALL_SINE_SQ
    s = _safe_sqrt(s_sq, small)
    # angle / s with angle = 2 atan2(s, w); series in s/w when s is tiny (w ~ 1).
    r_sq = s_sq / (w * w).clamp_min(0.5)
    series = 2 / w.clamp_min(0.5) * (1 - r_sq / 3 + r_sq * r_sq / 5)
    factor = torch.where(small, series, 2 * torch.atan2(s, w) / s)
    return factor[..., None] * v


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle vector of a rotation matrix (the SO(3) logarithm).

    Args:
        R: (..., 3, 3) rotation matrices.
    Returns:
        (..., 3) with norm (the angle) in ``[0, pi]``.
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """The rotation angle of ``R`` in radians, in ``[0, pi]``.

    Uses ``atan2(sin, cos)`` with ``sin = |vee(R - R^T)| / 2`` and
    ``cos = (trace - 1) / 2``, accurate at every angle (unlike ``acos``).

    Args:
        R: (..., 3, 3)
    Returns:
        (...)
    """
    check_shape("R", R.shape, "(..., 3, 3)", R.ndim >= 2 and R.shape[-2:] == (3, 3))
    vee = torch.stack([
        R[..., 2, 1] - R[..., 1, 2],
        R[..., 0, 2] - R[..., 2, 0],
        R[..., 1, 0] - R[..., 0, 1],
    ], dim=-1)
    sin = vee.norm(dim=-1) / 2
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.atan2(sin, cos)


def rad2deg(x: torch.Tensor) -> torch.Tensor:
    return x * (180.0 / math.pi)
