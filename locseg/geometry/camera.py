"""Cameras following COLMAP's models, as a batched value type, ``Camera``.

Conventions (stated here once for all of locseg):

- Camera frame: x right, y down, z forward (COLMAP, OpenCV). A point is in
  front of the camera when its depth z is positive.
- Pixel coordinates are COLMAP's: the CENTRE of the top-left pixel is
  ``(0.5, 0.5)``, so an image of width W and height H spans ``[0, W] x [0, H]``
  and pixel ``(i, j)`` (column, row) covers ``[i, i+1) x [j, j+1)``. Code that
  samples arrays indexed by integer pixel centres (``grid_sample``, feature
  maps) converts at that boundary, not here.
- Resizing an image by factors ``(sx, sy)`` maps every pixel coordinate
  ``u -> sx u``, ``v -> sy v`` under this convention, so ``Camera.scale`` and
  ``Camera.resize`` scale focal lengths and principal point by the same factors,
  exactly as ``pycolmap.Camera.rescale`` does (see ``Camera.scale`` for rounding).
- Normalised coordinates ``(u, v) = (x / z, y / z)`` live on the plane z = 1;
  distortion maps undistorted normalised coordinates to distorted ones, and
  the pixel is ``f * distorted + c``.

Models (``MODELS``), parameters in COLMAP's order:

==============  ==================================  ==========================================
model           params                              distortion of (u, v), r2 = u^2 + v^2
==============  ==================================  ==========================================
SIMPLE_PINHOLE  f, cx, cy                           none
PINHOLE         fx, fy, cx, cy                      none
SIMPLE_RADIAL   f, cx, cy, k                        (u, v) * (1 + k r2)
RADIAL          f, cx, cy, k1, k2                   (u, v) * (1 + k1 r2 + k2 r2^2)
OPENCV          fx, fy, cx, cy, k1, k2, p1, p2      radial as RADIAL, plus
                                                    du = 2 p1 u v + p2 (r2 + 2 u^2),
                                                    dv = 2 p2 u v + p1 (r2 + 2 v^2)
==============  ==================================  ==========================================

Storage: one model per ``Camera`` (shared by its whole batch) and ``data`` of
shape ``(..., 2 + P)``: width, height, then the model's P parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError, ShapeError, check_shape, lookup
from .wrapper import (
    TensorLike,
    TensorWrapper,
    as_float_tensor,
    as_float_tensors,
    broadcast_batch,
)


@dataclass(frozen=True)
class CameraModel:
    """Where a COLMAP camera model keeps each kind of parameter.

    Attributes:
        name: COLMAP's model name.
        param_names: the parameters in COLMAP's order.
        focal_idxs: one (f) or two (fx, fy) indices.
        pp_idxs: indices of (cx, cy).
        radial_idxs: indices of k1 (and k2), possibly empty.
        tangential_idxs: indices of (p1, p2), or empty.
    """

    name: str
    param_names: tuple[str, ...]
    focal_idxs: tuple[int, ...]
    pp_idxs: tuple[int, int]
    radial_idxs: tuple[int, ...] = ()
    tangential_idxs: tuple[int, ...] = ()

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    @property
    def has_distortion(self) -> bool:
        return bool(self.radial_idxs or self.tangential_idxs)


MODELS: dict[str, CameraModel] = {
    m.name: m
    for m in [
        CameraModel("SIMPLE_PINHOLE", ("f", "cx", "cy"), (0,), (1, 2)),
        CameraModel("PINHOLE", ("fx", "fy", "cx", "cy"), (0, 1), (2, 3)),
        CameraModel("SIMPLE_RADIAL", ("f", "cx", "cy", "k"), (0,), (1, 2), (3,)),
        CameraModel("RADIAL", ("f", "cx", "cy", "k1", "k2"), (0,), (1, 2), (3, 4)),
        CameraModel("OPENCV", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
                    (0, 1), (2, 3), (4, 5), (6, 7)),
    ]
}


def get_model(name: str) -> CameraModel:
    """The model called ``name``; raises RegistryError listing the valid names."""
    return lookup(MODELS, "camera model", name)


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    """Round positive values half away from zero, like C++ ``std::round``."""
    return torch.floor(x + 0.5)


class Camera(TensorWrapper):
    """A batch of cameras of one COLMAP model.

    Args:
        model: a name in ``MODELS``.
        data: (..., 2 + P) width, height and the model's P parameters. Prefer
            ``Camera.from_params``.

    Example:
        >>> cam = Camera.from_string("SIMPLE_RADIAL 640 480 500 320 240 0.01")
        >>> uv, valid = cam.project(torch.tensor([[0.1, -0.2, 2.0]]))
        >>> uv.shape, valid.shape
        (torch.Size([1, 2]), torch.Size([1]))
    """

    def __init__(self, model: str, data: TensorLike):
        self.model_spec = get_model(model)
        data = as_float_tensor(data, "data")
        n = 2 + self.model_spec.num_params
        check_shape("data", data.shape, f"(..., {n}) for {model} (width, height, "
                    f"{', '.join(self.model_spec.param_names)})",
                    data.ndim >= 1 and data.shape[-1] == n)
        super().__init__(data)

    def _new(self, data: torch.Tensor) -> Camera:
        return Camera(self.model, data)

    def _check_compatible(self, other: TensorWrapper) -> None:
        super()._check_compatible(other)
        if other.model != self.model:  # type: ignore[attr-defined]
            raise InputError(f"cannot stack cameras of models {self.model} and {other.model}")  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_params(cls, model: str, width: TensorLike, height: TensorLike,
                    params: TensorLike) -> Camera:
        """Camera from its model, image size and parameters (batch shapes broadcast).

        Args:
            model: a name in ``MODELS``.
            width, height: (...) image size in pixels, positive.
            params: (..., P) the model's parameters in COLMAP's order.
        Raises:
            RegistryError: unknown model. ShapeError: wrong parameter count.
            InputError: non-positive size or focal length.
        """
        spec = get_model(model)
        params, width, height = as_float_tensors(params=params, width=width, height=height)
        if params.ndim == 0 or params.shape[-1] != spec.num_params:
            got = "a scalar" if params.ndim == 0 else f"{params.shape[-1]}"
            raise ShapeError(f"{model} expects {spec.num_params} params "
                             f"({', '.join(spec.param_names)}), got {got}")
        width, height = torch.broadcast_tensors(width, height)
        if width.numel() and bool((width <= 0).any() | (height <= 0).any()):
            raise InputError(f"width and height must be positive, got {width.tolist()}, {height.tolist()}")
        focal = params[..., list(spec.focal_idxs)]
        if focal.numel() and bool((focal <= 0).any()):
            raise InputError(f"{model} focal lengths must be positive, got {focal.tolist()}")
        size, params = broadcast_batch("(width, height)", torch.stack([width, height], -1), 1,
                                       "params", params, 1)
        return cls(model, torch.cat([size, params], dim=-1))

    @classmethod
    def from_string(cls, line: str, dtype: torch.dtype = torch.float64) -> Camera:
        """Camera from ``"MODEL WIDTH HEIGHT p1 p2 ..."``, the tail of an hloc query-list line.

        Raises:
            InputError: wrong form, unknown model (lists the valid ones), wrong
                parameter count (gives the expected names).
        """
        tokens = line.split()
        if len(tokens) < 3:
            raise InputError(f"expected 'MODEL WIDTH HEIGHT params...', got {line!r}")
        spec = get_model(tokens[0])
        try:
            width, height = int(tokens[1]), int(tokens[2])
        except ValueError as err:
            raise InputError(f"width and height must be integers, got {tokens[1]!r} {tokens[2]!r}") from err
        try:
            params = [float(tok) for tok in tokens[3:]]
        except ValueError as err:
            raise InputError(f"non-numeric camera parameter in {line!r}") from err
        if len(params) != spec.num_params:
            raise InputError(f"{spec.name} expects {spec.num_params} params "
                             f"({', '.join(spec.param_names)}), got {len(params)} in {line!r}")
        return cls.from_params(spec.name, torch.tensor(width, dtype=dtype),
                               torch.tensor(height, dtype=dtype), torch.tensor(params, dtype=dtype))

    @classmethod
    def from_colmap(cls, camera: Any, dtype: torch.dtype = torch.float64) -> Camera:
        """Camera from a ``pycolmap.Camera`` (or a sequence of same-model ones, stacked)."""
        if isinstance(camera, (list, tuple)):
            return cls.stack([cls.from_colmap(c, dtype) for c in camera])
        if not hasattr(camera, "params") or not hasattr(camera, "width"):
            raise InputError(f"expected a pycolmap.Camera, got {type(camera).__name__}")
        model = getattr(camera, "model_name", None) or getattr(camera.model, "name", str(camera.model))
        return cls.from_params(model, torch.tensor(float(camera.width), dtype=dtype),
                               torch.tensor(float(camera.height), dtype=dtype),
                               torch.tensor([float(p) for p in camera.params], dtype=dtype))

    # ----------------------------------------------------------------- accessors
    @property
    def model(self) -> str:
        return self.model_spec.name

    @property
    def size(self) -> torch.Tensor:
        """(..., 2) (width, height) in pixels."""
        return self.data[..., :2]

    @property
    def width(self) -> torch.Tensor:
        """(...)"""
        return self.data[..., 0]

    @property
    def height(self) -> torch.Tensor:
        """(...)"""
        return self.data[..., 1]

    @property
    def params(self) -> torch.Tensor:
        """(..., P) the model's parameters in COLMAP's order."""
        return self.data[..., 2:]

    @property
    def f(self) -> torch.Tensor:
        """(..., 2) focal lengths (fx, fy) in pixels; fx == fy for one-focal models."""
        f = self.params[..., list(self.model_spec.focal_idxs)]
        return f.expand(*f.shape[:-1], 2)

    @property
    def c(self) -> torch.Tensor:
        """(..., 2) principal point (cx, cy) in pixels."""
        return self.params[..., list(self.model_spec.pp_idxs)]

    def K(self) -> torch.Tensor:
        """(..., 3, 3) calibration matrices, ignoring distortion."""
        f, c = self.f, self.c
        zero, one = torch.zeros_like(f[..., 0]), torch.ones_like(f[..., 0])
        rows = [f[..., 0], zero, c[..., 0], zero, f[..., 1], c[..., 1], zero, zero, one]
        return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))

    def pixel_size(self) -> tuple[int, int]:
        """(width, height) of an unbatched camera in whole pixels."""
        self._require_unbatched("pixel_size")
        width, height = (round(v) for v in self.size.tolist())
        return width, height

    def to_string(self) -> str:
        """``"MODEL WIDTH HEIGHT p1 p2 ..."`` of an unbatched camera (inverse of ``from_string``)."""
        self._require_unbatched("to_string")
        width, height = self.pixel_size()
        params = " ".join(repr(float(p)) for p in self.params.tolist())
        return f"{self.model} {width} {height} {params}"

    def to_colmap(self, camera_id: int | None = None) -> Any:
        """A ``pycolmap.Camera`` of an unbatched camera, with ``camera_id`` if given."""
        import pycolmap

        self._require_unbatched("to_colmap")
        width, height = self.pixel_size()
        kwargs = {} if camera_id is None else {"camera_id": int(camera_id)}
        params = self.params.detach().cpu().double().tolist()
        return pycolmap.Camera(model=self.model, width=width, height=height, params=params, **kwargs)

    def _require_unbatched(self, what: str) -> None:
        if self.ndim != 0:
            raise InputError(f"{what} needs an unbatched Camera, got batch shape {tuple(self.shape)}; "
                             "index it first")

    # ----------------------------------------------------------------- resizing
    def scale(self, factors: TensorLike) -> Camera:
        """The camera of this image resized by ``factors``, as ``pycolmap.Camera.rescale(scale)``.

        The new size is ``round(s * size)`` (half away from zero), and the
        parameters are scaled by the factors that this integer size realises,
        ``new_size / size``, so that the camera matches the resized image
        exactly. One-focal models scale ``f`` by the mean of the x and y factors.

        Args:
            factors: a scalar ``s``, or (..., 2) ``(sx, sy)``; positive.
        Returns:
            a Camera of the broadcast batch shape.
        """
        s = as_float_tensor(factors, "factors").to(dtype=self.dtype, device=self.device)
        if s.ndim == 0:
            s = s.expand(2)
        check_shape("factors", s.shape, "() or (..., 2)", s.shape[-1] == 2)
        if s.numel() and bool((s <= 0).any()):
            raise InputError(f"scale factors must be positive, got {s.tolist()}")
        new_size = _round_half_up(s * self.size)
        return self._resized(new_size)

    def resize(self, width: TensorLike, height: TensorLike) -> Camera:
        """The camera of this image resized to ``width x height`` pixels,
        as ``pycolmap.Camera.rescale(width, height)``.

        Args:
            width, height: (...) new size in pixels, positive.
        """
        width, height = as_float_tensors(width=width, height=height)
        width, height = torch.broadcast_tensors(width, height)
        if width.numel() and bool((width <= 0).any() | (height <= 0).any()):
            raise InputError(f"width and height must be positive, got {width.tolist()}, {height.tolist()}")
        return self._resized(torch.stack([width, height], -1).to(dtype=self.dtype, device=self.device))

    def _resized(self, new_size: torch.Tensor) -> Camera:
        """Camera for an image resized to ``new_size`` (..., 2)."""
        new_size, data = broadcast_batch("new size", new_size, 1, "camera", self.data, 1)
        factor = new_size / data[..., :2]
        spec = self.model_spec
        params = list(data[..., 2:].unbind(-1))
        if len(spec.focal_idxs) == 1:
            params[spec.focal_idxs[0]] = params[spec.focal_idxs[0]] * factor.mean(-1)
        else:
            for axis, i in enumerate(spec.focal_idxs):
                params[i] = params[i] * factor[..., axis]
        for axis, i in enumerate(spec.pp_idxs):
            params[i] = params[i] * factor[..., axis]
        return Camera(self.model, torch.cat([new_size, torch.stack(params, -1)], dim=-1))

    # ----------------------------------------------------------------- distortion
    def _coefficients(self) -> dict[str, torch.Tensor]:
        """Distortion coefficients shaped (..., 1) to broadcast against (..., N)."""
        p = self.params[..., None, :]
        spec = self.model_spec
        names = ["k1", "k2"][: len(spec.radial_idxs)] + (["p1", "p2"] if spec.tangential_idxs else [])
        idxs = list(spec.radial_idxs) + list(spec.tangential_idxs)
        return {n: p[..., i] for n, i in zip(names, idxs)}

    def _check_points(self, name: str, xy: torch.Tensor, last: int = 2) -> torch.Tensor:
        xy = as_float_tensor(xy, name).to(dtype=self.dtype, device=self.device)
        check_shape(name, xy.shape, f"(..., N, {last})", xy.ndim >= 2 and xy.shape[-1] == last)
        try:
            torch.broadcast_shapes(self.shape, xy.shape[:-2])
        except RuntimeError as err:
            raise ShapeError(f"{name} of shape {tuple(xy.shape)} does not broadcast against the "
                             f"camera batch shape {tuple(self.shape)}; expected (..., N, {last})") from err
        return xy

    def _radial(self, k: dict[str, torch.Tensor], r2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``k1 r2 + k2 r2^2`` and its derivative w.r.t. ``r2`` (absent terms are 0)."""
        radial, d_radial = torch.zeros_like(r2), torch.zeros_like(r2)
        if "k1" in k:
            radial, d_radial = k["k1"] * r2, d_radial + k["k1"]
        if "k2" in k:
            radial, d_radial = radial + k["k2"] * r2 * r2, d_radial + 2 * k["k2"] * r2
        return radial, d_radial

    def _distort(self, xy: torch.Tensor) -> torch.Tensor:
        u, v = xy.unbind(-1)
        k = self._coefficients()
        r2 = u * u + v * v
        radial, _ = self._radial(k, r2)
        du, dv = u * radial, v * radial
        if "p1" in k:
            uv = u * v
            du = du + 2 * k["p1"] * uv + k["p2"] * (r2 + 2 * u * u)
            dv = dv + 2 * k["p2"] * uv + k["p1"] * (r2 + 2 * v * v)
        return torch.stack([u + du, v + dv], dim=-1)

    def _distort_jacobian(self, xy: torch.Tensor) -> torch.Tensor:
        u, v = xy.unbind(-1)
        k = self._coefficients()
        radial, d_radial = self._radial(k, u * u + v * v)
        j_uu = 1 + radial + 2 * u * u * d_radial
        j_vv = 1 + radial + 2 * v * v * d_radial
        j_uv = 2 * u * v * d_radial  # the Jacobian is symmetric: j_vu == j_uv
        if "p1" in k:
            p1, p2 = k["p1"], k["p2"]
            j_uu = j_uu + 2 * p1 * v + 6 * p2 * u
            j_vv = j_vv + 2 * p2 * u + 6 * p1 * v
            j_uv = j_uv + 2 * p1 * u + 2 * p2 * v
        return torch.stack([j_uu, j_uv, j_uv, j_vv], dim=-1).unflatten(-1, (2, 2))

    def distort(self, xy: TensorLike) -> torch.Tensor:
        """Apply the lens distortion to undistorted normalised coordinates.

        Args:
            xy: (..., N, 2), ``...`` broadcasting against the camera batch shape.
        Returns:
            (..., N, 2) distorted normalised coordinates.
        """
        xy = self._check_points("xy", xy)
        return self._distort(xy) if self.model_spec.has_distortion else xy

    def J_distort(self, xy: TensorLike) -> torch.Tensor:
        """Jacobian of ``distort`` w.r.t. its input.

        Args:
            xy: (..., N, 2)
        Returns:
            (..., N, 2, 2)
        """
        xy = self._check_points("xy", xy)
        if not self.model_spec.has_distortion:
            eye = torch.eye(2, dtype=xy.dtype, device=xy.device)
            batch = torch.broadcast_shapes(self.shape, xy.shape[:-2])
            return eye.expand(*batch, xy.shape[-2], 2, 2)
        return self._distort_jacobian(xy)

    def undistort(self, xy: TensorLike, max_iters: int = 100) -> torch.Tensor:
        """Invert ``distort`` by trust-region Newton (as COLMAP, with an analytic Jacobian).

        Iterates until every step is below ``eps^(2/3)`` of the dtype (quadratic
        convergence then leaves an error near ``eps``) or ``max_iters`` steps.
        Differentiable through the unrolled iterations. Where the distortion has
        no inverse (beyond the fold of a strongly negative radial term) the
        iteration cannot reach a root and the result is NaN, as in pycolmap.

        Args:
            xy: (..., N, 2) distorted normalised coordinates.
        Returns:
            (..., N, 2) undistorted normalised coordinates, NaN where none exists.
        """
        xy = self._check_points("xy", xy)
        if not self.model_spec.has_distortion:
            return xy
        batch = torch.broadcast_shapes(self.shape, xy.shape[:-2])
        target = xy.expand(*batch, *xy.shape[-2:])
        eps = torch.finfo(xy.dtype).eps
        x = target
        for _ in range(max_iters):
            x, step = self._newton_step(x, target)
            if step.numel() == 0 or not bool((step.abs() > eps ** (2 / 3) * (1 + x.abs())).any()):
                break
        residual = (self._distort(x) - target).abs().amax(-1)
        failed = ~(residual <= eps**0.5 * (1 + target.abs().amax(-1)))  # NaN counts as failed
        return torch.where(failed[..., None], torch.full_like(x, float("nan")), x)

    def _newton_step(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Newton step on ``distort(x) = target``, its length limited to the
        trust radius ``max(0.1 |x|, 0.1)`` as in COLMAP (which keeps the
        iteration from jumping across the fold of the distortion onto a
        spurious root). Returns the new x and the step taken."""
        r = self._distort(x) - target
        J = self._distort_jacobian(x)
        det = J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]
        step = torch.stack([
            J[..., 1, 1] * r[..., 0] - J[..., 0, 1] * r[..., 1],
            J[..., 0, 0] * r[..., 1] - J[..., 1, 0] * r[..., 0],
        ], dim=-1) / det[..., None]
        radius = (0.1 * x.norm(dim=-1, keepdim=True)).clamp_min(0.1)
        length = step.norm(dim=-1, keepdim=True)
        too_long = length > radius  # the double where keeps gradients finite at length 0
        shrink = radius / torch.where(too_long, length, torch.ones_like(length))
        step = torch.where(too_long, step * shrink, step)
        return x - step, step

    # ----------------------------------------------------------------- projection
    def normalize(self, uv: TensorLike) -> torch.Tensor:
        """Pixels to distorted normalised coordinates ``(uv - c) / f``; (..., N, 2) -> (..., N, 2)."""
        uv = self._check_points("uv", uv)
        return (uv - self.c[..., None, :]) / self.f[..., None, :]

    def denormalize(self, xy: TensorLike) -> torch.Tensor:
        """Distorted normalised coordinates to pixels ``f * xy + c``; (..., N, 2) -> (..., N, 2)."""
        xy = self._check_points("xy", xy)
        return xy * self.f[..., None, :] + self.c[..., None, :]

    def _depth(self, p_cam: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        z = p_cam[..., 2]
        valid = z > eps
        return torch.where(valid, z, torch.ones_like(z)), valid

    def project(self, p_cam: TensorLike, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """Project camera-frame points to pixels (with distortion).

        Args:
            p_cam: (..., N, 3) points in the camera frame, ``...`` broadcasting
                against the camera batch shape.
            eps: minimum depth of a valid point.
        Returns:
            uv: (..., N, 2) pixel coordinates (COLMAP convention). Points with
                depth <= eps are projected as if at depth 1: finite but meaningless.
            valid: (..., N) depth > eps.
        """
        p = self._check_points("p_cam", p_cam, last=3)
        z, valid = self._depth(p, eps)
        uv = self.denormalize(self.distort(p[..., :2] / z[..., None]))
        return uv, valid.expand(uv.shape[:-1])

    def J_project(self, p_cam: TensorLike, eps: float = 1e-6) -> torch.Tensor:
        """Jacobian of the projected pixel w.r.t. the camera-frame point.

        Args:
            p_cam: (..., N, 3)
            eps: as in ``project``; invalid points get the Jacobian at depth 1.
        Returns:
            (..., N, 2, 3): ``diag(f) @ J_distort(xy) @ d(xy)/d(p_cam)``.
        """
        p = self._check_points("p_cam", p_cam, last=3)
        z, _ = self._depth(p, eps)
        xy = p[..., :2] / z[..., None]
        inv_z = 1 / z
        zero = torch.zeros_like(inv_z)
        J_norm = torch.stack([
            inv_z, zero, -xy[..., 0] * inv_z,
            zero, inv_z, -xy[..., 1] * inv_z,
        ], dim=-1).unflatten(-1, (2, 3))
        J = self.J_distort(xy) @ J_norm
        return self.f[..., None, :, None] * J

    def unproject(self, uv: TensorLike) -> torch.Tensor:
        """Pixels to rays on the plane z = 1 in the camera frame (undistorted).

        Args:
            uv: (..., N, 2) pixel coordinates.
        Returns:
            (..., N, 3) rays ``(x, y, 1)``; NaN where the distortion cannot be
            inverted (see ``undistort``).
        """
        xy = self.undistort(self.normalize(uv))
        return torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)

    def in_image(self, uv: TensorLike, margin: float = 0.0) -> torch.Tensor:
        """Whether pixels fall inside the image, ``margin <= u < W - margin`` (same for v).

        With the COLMAP convention this means ``floor(uv)`` is a valid pixel index
        when ``margin == 0``.

        Args:
            uv: (..., N, 2)
        Returns:
            (..., N) boolean mask.
        """
        uv = self._check_points("uv", uv)
        size = self.size[..., None, :]
        return ((uv >= margin) & (uv < size - margin)).all(-1)

    def __repr__(self) -> str:
        if self.ndim == 0:
            w, h = self.pixel_size()
            params = ", ".join(f"{v:.6g}" for v in self.params.tolist())
            return f"Camera({self.model}, {w}x{h}, params=[{params}], dtype={self.dtype})"
        return f"Camera({self.model}, shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"
