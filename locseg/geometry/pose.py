"""Rigid transformations (SE(3)) as a batched value type, ``Pose``.

Conventions (stated here once for all of locseg):

- A pose named ``T_b_from_a`` maps the coordinates of a point in frame ``a`` to
  its coordinates in frame ``b``: ``x_b = R @ x_a + t``.
- Poses that locseg stores and exchanges are ``T_cam_from_world``, as COLMAP and
  visuallocalization.net do. The camera centre in the world is ``-R^T t``
  (``Pose.center``).
- Composition reads right to left, frames cancelling in the middle:
  ``T_c_from_a = T_c_from_b @ T_b_from_a``; ``T_a_from_b = T_b_from_a.inv()``.
- Rotations follow ``locseg.geometry.rotation`` (column vectors, Hamilton
  quaternions stored w first, normalised with ``w >= 0`` when returned).
- The SE(3) tangent vector is ``xi = (omega, v)`` of shape ``(..., 6)``:
  rotation FIRST, then translation. ``Pose.exp(xi)`` is the exact exponential
  map, ``R = exp([omega]x)``, ``t = V(omega) v``; ``Pose.log`` its inverse.
- Perturbations are applied on the LEFT: an update ``delta`` changes a pose as
  ``T <- Pose.exp(delta) @ T``, i.e. in the target frame ``b``. Jacobians with
  respect to a pose (``left_perturbation_jacobian``) are taken at ``delta = 0``
  of that update.

Storage: ``Pose.data`` has shape ``(..., 12)``: the rotation matrix row-major
(9 values), then the translation (3 values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError, ShapeError, check_shape
from .rotation import (
    SMALL_ANGLE_SQ,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rad2deg,
    rotation_angle,
    skew,
    so3_coefficients,
)
from .wrapper import (
    TensorLike,
    TensorWrapper,
    as_float_tensor,
    as_float_tensors,
    broadcast_batch,
)


def _check_points(name: str, p: torch.Tensor) -> None:
    check_shape(name, p.shape, "(..., 3)", p.ndim >= 1 and p.shape[-1] == 3)


def left_perturbation_jacobian(p_b: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``Pose.exp(delta).transform(p_b)`` w.r.t. ``delta`` at 0.

    For a point ``p_b = T_b_from_a.transform(p_a)`` this is the derivative of the
    transformed point under the left update ``T_b_from_a <- exp(delta) @ T_b_from_a``
    with ``delta = (omega, v)``: ``[-skew(p_b), I]``.

    Args:
        p_b: (..., 3) points already in the target frame.
    Returns:
        (..., 3, 6)
    """
    _check_points("p_b", p_b)
    eye = torch.eye(3, dtype=p_b.dtype, device=p_b.device).expand(*p_b.shape[:-1], 3, 3)
    return torch.cat([-skew(p_b), eye], dim=-1)


def _inverse_v_coefficient(theta_sq: torch.Tensor) -> torch.Tensor:
    """``d = (1 - (theta / 2) cot(theta / 2)) / theta^2``, with
    ``V^-1 = I - W / 2 + d W^2`` for ``W = skew(omega)``, ``theta <= pi``.

    Args:
        theta_sq: (...)
    Returns:
        (...)
    """
    small = theta_sq < SMALL_ANGLE_SQ
    half = torch.where(small, torch.ones_like(theta_sq), theta_sq).sqrt() / 2
    closed = (1 - half * torch.cos(half) / torch.sin(half)) / (4 * half**2)
    series = 1 / 12 + theta_sq / 720 + theta_sq**2 / 30240
    return torch.where(small, series, closed)


class Pose(TensorWrapper):
    """A batch of rigid transformations ``T_b_from_a``: ``x_b = R @ x_a + t``.

    Args:
        data: (..., 12) the row-major rotation matrix then the translation. Use
            the ``from_*`` constructors rather than building ``data`` by hand.

    Example:
        >>> T_cam_from_world = Pose.from_qt([1.0, 0, 0, 0], [0.0, 0, 2])
        >>> T_cam_from_world.transform(torch.zeros(5, 3)).shape
        torch.Size([5, 3])
    """

    def __init__(self, data: TensorLike):
        data = as_float_tensor(data, "data")
        check_shape("data", data.shape, "(..., 12)", data.ndim >= 1 and data.shape[-1] == 12)
        super().__init__(data)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_Rt(cls, R: TensorLike, t: TensorLike) -> Pose:
        """Pose from a rotation matrix and a translation (batch shapes broadcast).

        Args:
            R: (..., 3, 3) rotation matrices (not checked for orthonormality).
            t: (..., 3) translations.
        """
        R, t = as_float_tensors(R=R, t=t)
        check_shape("R", R.shape, "(..., 3, 3)", R.ndim >= 2 and R.shape[-2:] == (3, 3))
        check_shape("t", t.shape, "(..., 3)", t.ndim >= 1 and t.shape[-1] == 3)
        R, t = broadcast_batch("R", R, 2, "t", t, 1)
        return cls(torch.cat([R.flatten(-2), t], dim=-1))

    @classmethod
    def from_qt(cls, q: TensorLike, t: TensorLike) -> Pose:
        """Pose from a Hamilton quaternion (w, x, y, z) and a translation.

        Args:
            q: (..., 4) quaternions, any non-zero norm (normalised here).
            t: (..., 3) translations.
        Raises:
            InputError: if a quaternion has (near) zero norm.
        """
        q, t = as_float_tensors(q=q, t=t)
        check_shape("q", q.shape, "(..., 4)", q.ndim >= 1 and q.shape[-1] == 4)
        if q.numel() and bool((q.norm(dim=-1) < torch.finfo(q.dtype).eps).any()):
            raise InputError("q contains a quaternion of zero norm")
        return cls.from_Rt(quaternion_to_matrix(q), t)

    @classmethod
    def from_aa(cls, axis_angle: TensorLike, t: TensorLike) -> Pose:
        """Pose from an axis-angle vector ``theta * axis`` and a translation.

        Args:
            axis_angle: (..., 3)
            t: (..., 3)
        """
        axis_angle, t = as_float_tensors(axis_angle=axis_angle, t=t)
        return cls.from_Rt(axis_angle_to_matrix(axis_angle), t)

    @classmethod
    def from_matrix(cls, T: TensorLike) -> Pose:
        """Pose from homogeneous matrices ``[[R, t], [0, 1]]``.

        Args:
            T: (..., 4, 4) or (..., 3, 4); the last row of a 4x4 is not read.
        """
        T = as_float_tensor(T, "T")
        check_shape("T", T.shape, "(..., 4, 4) or (..., 3, 4)",
                    T.ndim >= 2 and T.shape[-1] == 4 and T.shape[-2] in (3, 4))
        return cls.from_Rt(T[..., :3, :3], T[..., :3, 3])

    @classmethod
    def identity(cls, batch_shape: Sequence[int] = (), dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> Pose:
        """Identity poses of the given batch shape."""
        dtype = dtype or torch.get_default_dtype()
        data = torch.zeros(*batch_shape, 12, dtype=dtype, device=device)
        data[..., [0, 4, 8]] = 1
        return cls(data)

    @classmethod
    def exp(cls, xi: TensorLike) -> Pose:
        """The SE(3) exponential of tangent vectors ``xi = (omega, v)``.

        Args:
            xi: (..., 6) rotation first, then translation.
        Returns:
            a Pose of batch shape (...,): ``R = exp(skew(omega))``, ``t = V(omega) v``.
        """
        xi = as_float_tensor(xi, "xi")
        check_shape("xi", xi.shape, "(..., 6)", xi.ndim >= 1 and xi.shape[-1] == 6)
        omega, v = xi[..., :3], xi[..., 3:]
        a, b, c = so3_coefficients((omega**2).sum(-1))
        w = skew(omega)
        w2 = w @ w
        eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
        R = eye + a[..., None, None] * w + b[..., None, None] * w2
        V = eye + b[..., None, None] * w + c[..., None, None] * w2
        return cls.from_Rt(R, (V @ v[..., None]).squeeze(-1))

    @classmethod
    def from_colmap(cls, rigid: Any, dtype: torch.dtype = torch.float64) -> Pose:
        """Pose from a ``pycolmap.Rigid3d`` (or a sequence of them, stacked).

        Args:
            rigid: ``pycolmap.Rigid3d``, e.g. ``image.cam_from_world()``, or a list.
            dtype: the output dtype (pycolmap holds float64).
        """
        if isinstance(rigid, (list, tuple)):
            return cls.stack([cls.from_colmap(r, dtype) for r in rigid])
        if not hasattr(rigid, "rotation") or not hasattr(rigid, "translation"):
            raise InputError(f"expected a pycolmap.Rigid3d, got {type(rigid).__name__}")
        x, y, z, w = (float(v) for v in rigid.rotation.quat)  # pycolmap stores xyzw
        q = torch.tensor([w, x, y, z], dtype=dtype)
        t = torch.tensor([float(v) for v in rigid.translation], dtype=dtype)
        return cls.from_qt(q, t)

    # ----------------------------------------------------------------- accessors
    @property
    def R(self) -> torch.Tensor:
        """(..., 3, 3) rotation matrices."""
        return self.data[..., :9].unflatten(-1, (3, 3))

    @property
    def t(self) -> torch.Tensor:
        """(..., 3) translations."""
        return self.data[..., 9:]

    @property
    def q(self) -> torch.Tensor:
        """(..., 4) unit quaternions (w, x, y, z) with ``w >= 0``."""
        return matrix_to_quaternion(self.R)

    @property
    def center(self) -> torch.Tensor:
        """(..., 3) the origin of frame ``b`` expressed in frame ``a``: ``-R^T t``.

        For ``T_cam_from_world`` this is the camera centre in world coordinates.
        """
        return -(self.R.transpose(-1, -2) @ self.t[..., None]).squeeze(-1)

    def matrix(self) -> torch.Tensor:
        """(..., 4, 4) homogeneous matrices ``[[R, t], [0, 1]]``."""
        top = torch.cat([self.R, self.t[..., None]], dim=-1)
        bottom = torch.zeros(*self.shape, 1, 4, dtype=self.dtype, device=self.device)
        bottom[..., 0, 3] = 1
        return torch.cat([top, bottom], dim=-2)

    def to_colmap(self) -> Any:
        """A ``pycolmap.Rigid3d`` of an unbatched pose (index a batch first)."""
        import pycolmap

        if self.ndim != 0:
            raise InputError(f"to_colmap needs an unbatched Pose, got batch shape "
                             f"{tuple(self.shape)}; index it first")
        w, x, y, z = self.q.detach().cpu().double().tolist()
        t = self.t.detach().cpu().double().numpy()
        return pycolmap.Rigid3d(pycolmap.Rotation3d([x, y, z, w]), t)

    # ----------------------------------------------------------------- group operations
    def inv(self) -> Pose:
        """The inverse transformation: ``T_a_from_b`` for ``T_b_from_a``."""
        R_inv = self.R.transpose(-1, -2)
        return Pose.from_Rt(R_inv, -(R_inv @ self.t[..., None]).squeeze(-1))

    def compose(self, other: Pose) -> Pose:
        """``self @ other``: ``T_c_from_a = T_c_from_b.compose(T_b_from_a)``.

        Batch shapes broadcast.
        """
        if not isinstance(other, Pose):
            raise InputError(f"can only compose a Pose with a Pose, got {type(other).__name__}")
        R = self.R @ other.R
        t = (self.R @ other.t[..., None]).squeeze(-1) + self.t
        return Pose.from_Rt(R, t)

    def __matmul__(self, other: Pose) -> Pose:
        if not isinstance(other, Pose):
            return NotImplemented
        return self.compose(other)

    def log(self) -> torch.Tensor:
        """The SE(3) logarithm ``xi = (omega, v)`` with ``|omega| <= pi``.

        Returns:
            (..., 6) such that ``Pose.exp(xi)`` equals this pose.
        """
        omega = matrix_to_axis_angle(self.R)
        d = _inverse_v_coefficient((omega**2).sum(-1))
        w = skew(omega)
        eye = torch.eye(3, dtype=self.dtype, device=self.device)
        V_inv = eye - 0.5 * w + d[..., None, None] * (w @ w)
        return torch.cat([omega, (V_inv @ self.t[..., None]).squeeze(-1)], dim=-1)

    # ----------------------------------------------------------------- acting on points
    def _is_single(self, name: str, p: torch.Tensor) -> bool:
        """Whether ``p`` is one point (``(3,)``) or one point per pose
        (``(*self.shape, 3)``) rather than sets of points ``(..., N, 3)``."""
        _check_points(name, p)
        return p.ndim == 1 or (self.ndim > 0 and p.ndim == self.ndim + 1)

    def transform(self, points: TensorLike) -> torch.Tensor:
        """Map points from frame ``a`` to frame ``b``: ``R @ p + t``.

        Args:
            points: in frame ``a``, one of
                - (..., N, 3): sets of N points whose leading dims ``...``
                  broadcast against the pose batch shape;
                - (*self.shape, 3): one point per pose (recognised by having
                  exactly one more dim than the batch shape);
                - (3,): one point, moved by every pose.
                A shared set of N points for a 1-D batch of poses is therefore
                written (1, N, 3), not (N, 3).
        Returns:
            in frame ``b``: (..., N, 3) for sets, else (*self.shape, 3).
        """
        p = as_float_tensor(points, "points").to(dtype=self.dtype, device=self.device)
        single = self._is_single("points", p)
        p_sets = p[..., None, :] if single else p
        try:
            out = p_sets @ self.R.transpose(-1, -2) + self.t[..., None, :]
        except RuntimeError as err:
            raise ShapeError(
                f"points of shape {tuple(p.shape)} do not broadcast against the pose "
                f"batch shape {tuple(self.shape)}; expected (..., N, 3) or {(*self.shape, 3)}"
            ) from err
        return out.squeeze(-2) if single else out

    def transform_jacobian(self, points: TensorLike) -> torch.Tensor:
        """Jacobian of the transformed points under a left update of this pose.

        Args:
            points: points in frame ``a``, shaped as for ``transform``.
        Returns:
            (..., N, 3, 6) (or (..., 3, 6) for one point per pose): the derivative
            of ``(exp(delta) @ self).transform(points)`` w.r.t. ``delta = (omega, v)``
            at ``delta = 0``, i.e. ``left_perturbation_jacobian(self.transform(points))``.
        """
        return left_perturbation_jacobian(self.transform(points))

    # ----------------------------------------------------------------- metrics
    def magnitude(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Size of the transformation.

        Returns:
            dt: (...) translation norm ``|t|``, in the units of ``t``.
            dR: (...) rotation angle in degrees, in ``[0, 180]``.
        """
        return self.t.norm(dim=-1), rad2deg(rotation_angle(self.R))

    def error(self, other: Pose) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose-estimation error of ``self`` (estimate) against ``other`` (truth).

        Both must be ``T_cam_from_world``; batch shapes broadcast.

        Returns:
            dt: (...) distance between the camera centres, ``|c_self - c_other|``.
            dR: (...) angle of ``R_self @ R_other^T`` in degrees.
        """
        if not isinstance(other, Pose):
            raise InputError(f"error expects a Pose, got {type(other).__name__}")
        dt = (self.center - other.center).norm(dim=-1)
        dR = rad2deg(rotation_angle(self.R @ other.R.transpose(-1, -2)))
        return dt, dR

    def __repr__(self) -> str:
        if self.ndim == 0:
            q = ", ".join(f"{v:.6g}" for v in self.q.tolist())
            t = ", ".join(f"{v:.6g}" for v in self.t.tolist())
            return f"Pose(q_wxyz=[{q}], t=[{t}], dtype={self.dtype})"
        return f"Pose(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"
