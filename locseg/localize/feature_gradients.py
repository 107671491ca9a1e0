"""Spatial gradients of dense feature maps, and sampling features with their gradients.

Conventions: the pixel/grid convention is ``locseg.models.hypercolumn``'s, and
sampling goes through its ``sample_feature_map`` (bilinear, COLMAP pixels): cell
``(x, y)`` of a stride-``s`` map lives at pixel ``(s (x + 0.5), s (y + 0.5))``.
Gradients are derivatives with respect to those PIXEL coordinates ``(u, v)`` of the
network's input image, i.e. cell differences divided by the stride.

Operators (seed 002, appendix A.1, table 4: central differences matter, the loss less):

- ``"central"`` (default): second-order accurate finite differences,
  ``(F[x + 1] - F[x - 1]) / 2`` inside the map and the second-order one-sided
  ``(-3 F[0] + 4 F[1] - F[2]) / 2`` (and its mirror) on the border cells, as
  ``numpy.gradient(..., edge_order=2)``; exact for maps quadratic in x and y.
  This matches the stencil of the fine-tuning GN loss (``locseg.train.losses``).
- ``"sobel"``: the 3x3 Sobel filter, NORMALISED by 1/8 so that it estimates the
  derivative (a smoothed central difference) rather than 8 times it; the border is
  replicated. (An unnormalised Sobel, as ``cv2.Sobel``, scales every Jacobian by 8
  and thus shrinks Gauss-Newton steps 8-fold.)

Features and gradients are interpolated bilinearly at the query points (both are
maps on the same grid), which is how Feature-PnP evaluates its Jacobian (DESIGN.md 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import RegistryError, ShapeError, check_shape
from ..models.hypercolumn import STRIDE, sample_feature_map

GRADIENT_OPERATORS: tuple[str, ...] = ("central", "sobel")


def check_gradient_operator(operator: str) -> None:
    """Raise RegistryError, listing the valid names, unless ``operator`` is one."""
    if operator not in GRADIENT_OPERATORS:
        raise RegistryError("gradient operator", str(operator), list(GRADIENT_OPERATORS))


def _central(x: torch.Tensor, dim: int, out: torch.Tensor) -> None:
    """Write the second-order finite differences of ``x`` along ``dim`` (>= 3 cells) into ``out``."""
    n = x.shape[dim]

    def at(start: int, length: int = 1) -> torch.Tensor:
        return x.narrow(dim, start, length)
    out.narrow(dim, 1, n - 2).copy_((at(2, n - 2) - at(0, n - 2)) / 2)
    out.narrow(dim, 0, 1).copy_((4 * at(1) - 3 * at(0) - at(2)) / 2)
    out.narrow(dim, n - 1, 1).copy_((3 * at(n - 1) - 4 * at(n - 2) + at(n - 3)) / 2)


def _sobel(feature_map: torch.Tensor, d_dx: torch.Tensor, d_dy: torch.Tensor) -> None:
    """Write the normalised Sobel derivatives of ``feature_map`` into ``d_dx``, ``d_dy``."""
    b, c, h, w = feature_map.shape
    smooth = feature_map.new_tensor([1.0, 2.0, 1.0]) / 4
    diff = feature_map.new_tensor([-1.0, 0.0, 1.0]) / 2
    kernels = torch.stack([smooth[:, None] * diff[None, :],   # d/dx: smooth along y
                           diff[:, None] * smooth[None, :]])  # d/dy: smooth along x
    padded = F.pad(feature_map.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    out = F.conv2d(padded, kernels[:, None]).reshape(b, c, 2, h, w)
    d_dx.copy_(out[:, :, 0])
    d_dy.copy_(out[:, :, 1])


def _check_map(feature_map: torch.Tensor, operator: str) -> None:
    check_gradient_operator(operator)
    check_shape("feature_map", tuple(feature_map.shape), "(B, C, h, w)", feature_map.ndim == 4)
    if min(feature_map.shape[-2:]) < 3:
        raise ShapeError(f"feature_map has shape {tuple(feature_map.shape)}; gradients need h, w >= 3")


def _write_gradients(feature_map: torch.Tensor, operator: str, stride: float,
                     d_du: torch.Tensor, d_dv: torch.Tensor) -> None:
    """Write dF/du, dF/dv (per pixel) of a checked map into the (B, C, h, w) views given."""
    if operator == "central":
        _central(feature_map, -1, d_du)
        _central(feature_map, -2, d_dv)
    else:
        _sobel(feature_map, d_du, d_dv)
    d_du.div_(stride)
    d_dv.div_(stride)


def feature_map_gradients(feature_map: torch.Tensor, operator: str = "central",
                          stride: float = STRIDE) -> torch.Tensor:
    """Derivatives of a dense feature map w.r.t. the pixel coordinates ``(u, v)``.

    Args:
        feature_map: (B, C, h, w), h, w >= 3.
        operator: ``"central"`` or ``"sobel"`` (module docstring).
        stride: input pixels per cell (4 for hypercolumns).
    Returns:
        (B, C, 2, h, w): ``[:, :, 0]`` is dF/du, ``[:, :, 1]`` is dF/dv, per pixel.
    Raises:
        RegistryError: unknown operator. ShapeError: map not (B, C, h, w) or too small.

    Example:
        >>> x = torch.arange(5.0)
        >>> ramp = (3 * x[None, :] + 0 * x[:, None])[None, None]  # F = 3 x (cells)
        >>> feature_map_gradients(ramp, stride=4)[0, 0, :, 2, 2].tolist()
        [0.75, 0.0]
    """
    _check_map(feature_map, operator)
    out = feature_map.new_empty(feature_map.shape[0], 2, *feature_map.shape[1:])
    _write_gradients(feature_map, operator, stride, out[:, 0], out[:, 1])
    return out.transpose(1, 2)


@dataclass(frozen=True)
class FeatureField:
    """A dense feature map with its gradient maps, ready to be sampled at pixels.

    Attributes:
        stacked: (B, 3 C, h, w): the features, then dF/du, then dF/dv (per pixel),
            stacked so that one bilinear lookup reads all three.
        stride: input pixels per cell.
    """

    stacked: torch.Tensor
    stride: float = STRIDE

    @classmethod
    def from_map(cls, feature_map: torch.Tensor, operator: str = "central",
                 stride: float = STRIDE) -> FeatureField:
        """Compute the gradient maps of ``feature_map`` (B, C, h, w) with ``operator``.

        ``stacked`` is stored channels-last: bilinear lookups of many channels at few
        points then read contiguous memory (several times faster on CPU).
        """
        _check_map(feature_map, operator)
        b, c, h, w = feature_map.shape
        stacked = torch.empty(b, 3 * c, h, w, dtype=feature_map.dtype, device=feature_map.device,
                              memory_format=torch.channels_last)
        stacked[:, :c] = feature_map
        _write_gradients(feature_map, operator, stride, stacked[:, c:2 * c], stacked[:, 2 * c:])
        return cls(stacked, stride)

    @property
    def channels(self) -> int:
        """C"""
        return self.stacked.shape[1] // 3

    @property
    def map_size(self) -> tuple[int, int]:
        """(w, h) in cells."""
        return self.stacked.shape[-1], self.stacked.shape[-2]

    def select_channels(self, start: int, stop: int) -> FeatureField:
        """The field of channels ``[start, stop)`` only (a coarse-to-fine level)."""
        c = self.channels
        if not 0 <= start < stop <= c:
            raise ShapeError(f"channel slice [{start}, {stop}) is not within the map's {c} channels")
        parts = self.stacked.unflatten(1, (3, c))[:, :, start:stop]
        return FeatureField(parts.flatten(1, 2).contiguous(memory_format=torch.channels_last), self.stride)

    def inside(self, uv: torch.Tensor) -> torch.Tensor:
        """(B, N) whether pixels ``uv`` (B, N, 2) lie within the hull of the cell centres,
        ``[s / 2, s (w - 1/2)] x [s / 2, s (h - 1/2)]``, where interpolation needs no padding."""
        w, h = self.map_size
        low = 0.5 * self.stride
        high = uv.new_tensor([self.stride * (w - 0.5), self.stride * (h - 0.5)])
        return ((uv >= low) & (uv <= high)).all(-1)

    def sample(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features and their pixel gradients at ``uv``, bilinearly interpolated.

        Args:
            uv: (B, N, 2) COLMAP pixel coordinates of the network input image.
        Returns:
            features: (B, N, C) in the map's dtype.
            jacobian: (B, N, C, 2) dF/d(u, v).
            inside: (B, N) bool, ``FeatureField.inside``; outside it the values are
                the clamped border ones and must not be used.
        """
        check_shape("uv", tuple(uv.shape), f"({self.stacked.shape[0]}, N, 2)",
                    uv.ndim == 3 and uv.shape[0] == self.stacked.shape[0] and uv.shape[-1] == 2)
        sampled = sample_feature_map(self.stacked, uv, self.stride).unflatten(-1, (3, self.channels))
        inside = self.inside(uv)
        return sampled[..., 0, :], sampled[..., 1:, :].transpose(-1, -2), inside


@dataclass(frozen=True)
class CentralDifferenceField:
    """Central-difference gradients evaluated only where they are needed.

    Sampling the map at ``uv`` and at ``uv`` ± one cell along u and v, then differencing,
    equals bilinearly interpolating the central-difference gradient maps wherever those
    five lookups stay inside the map (``FeatureField.from_map(..., "central")``); they
    differ only within one cell of the border, where this clamps instead of using the
    one-sided stencil. It costs five lookups per point instead of two gradient maps
    of the whole image, which is most of a refinement's time for one query.

    Attributes:
        feature_map: (B, C, h, w), channels-last.
        stride: input pixels per cell.
    """

    feature_map: torch.Tensor
    stride: float = STRIDE

    @classmethod
    def from_map(cls, feature_map: torch.Tensor, stride: float = STRIDE) -> CentralDifferenceField:
        _check_map(feature_map, "central")
        return cls(feature_map.contiguous(memory_format=torch.channels_last), stride)

    @property
    def channels(self) -> int:
        """C"""
        return self.feature_map.shape[1]

    @property
    def map_size(self) -> tuple[int, int]:
        """(w, h) in cells."""
        return self.feature_map.shape[-1], self.feature_map.shape[-2]

    def select_channels(self, start: int, stop: int) -> CentralDifferenceField:
        """The field of channels ``[start, stop)`` only (a coarse-to-fine level)."""
        if not 0 <= start < stop <= self.channels:
            raise ShapeError(f"channel slice [{start}, {stop}) is not within the map's {self.channels} channels")
        part = self.feature_map[:, start:stop].contiguous(memory_format=torch.channels_last)
        return CentralDifferenceField(part, self.stride)

    inside = FeatureField.inside

    def sample(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``FeatureField.sample``: features (B, N, C), dF/d(u, v) (B, N, C, 2), inside (B, N)."""
        check_shape("uv", tuple(uv.shape), f"({self.feature_map.shape[0]}, N, 2)",
                    uv.ndim == 3 and uv.shape[0] == self.feature_map.shape[0] and uv.shape[-1] == 2)
        s = self.stride
        offsets = uv.new_tensor([[0, 0], [s, 0], [-s, 0], [0, s], [0, -s]])
        points = (uv[:, :, None, :] + offsets).flatten(1, 2)                     # (B, 5 N, 2)
        values = sample_feature_map(self.feature_map, points, s).unflatten(1, (uv.shape[1], 5))
        # stacked as (B, N, 2, C) and handed out transposed, so each derivative is contiguous
        # for the C-long products of the normal equations
        gradient = torch.stack([values[:, :, 1] - values[:, :, 2], values[:, :, 3] - values[:, :, 4]], -2)
        return values[:, :, 0], (gradient / (2 * s)).transpose(-1, -2), self.inside(uv)


def feature_field(feature_map: torch.Tensor, operator: str = "central",
                  stride: float = STRIDE) -> FeatureField | CentralDifferenceField:
    """The field refinement samples: central differences at the points, or Sobel maps."""
    if operator == "central":
        return CentralDifferenceField.from_map(feature_map, stride)
    return FeatureField.from_map(feature_map, operator, stride)
