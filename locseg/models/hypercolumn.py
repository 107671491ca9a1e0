"""Hypercolumns: multi-layer backbone features at 1/4 resolution, L2-normalised
per pixel, dense (a map) or sparse (at keypoints).

Conventions (the boundary where feature maps are sampled; stated here once):

- Keypoints are COLMAP pixel coordinates ``(u, v)`` of the network's input
  image: the centre of the top-left pixel is ``(0.5, 0.5)`` and an image of
  W x H pixels spans ``[0, W] x [0, H]`` (``locseg.geometry.camera``).
- A feature map of stride ``s`` with ``h x w`` cells is a grid of ``s x s``
  pixel cells: cell ``(x, y)`` (column, row) covers ``[s x, s (x + 1)) x
  [s y, s (y + 1))`` and its value lives at its centre ``(s (x + 0.5),
  s (y + 0.5))``. This is what 3x3 same-padded convolutions and 2x2 max-pools
  produce (each pool cell is its 2x2 block of input cells).
- **The 1/4 grid** of an H x W image has ``floor(H / 4) x floor(W / 4)`` cells;
  ``dense_map[..., y, x]`` is the hypercolumn at COLMAP pixel
  ``(u, v) = (4 x + 2, 4 y + 2)``: the corner shared by input pixels
  ``(4x+1, 4y+1)`` and ``(4x+2, 4y+2)`` (0-based column, row indices), the
  centre of the 4x4 block ``[4x, 4x+4) x [4y, 4y+4)``. Conversely pixel
  ``(u, v)`` lies at fractional cell index ``(u / 4 - 0.5, v / 4 - 0.5)``.
  When H or W is not a multiple of 4 the last ``H mod 4`` rows (``W mod 4``
  columns) of pixels have no cell of their own.
- Sampling is bilinear with ``grid_sample(align_corners=False,
  padding_mode="border")``. With ``align_corners=False``, grid coordinates -1
  and +1 are the outer edges of the map's first and last cells, which are the
  COLMAP coordinates 0 and ``s * w``; so the conversion is the linear
  ``pixels_to_grid(uv, (s * w, s * h)) = 2 uv / (s w, s h) - 1`` and nothing
  else (no half-pixel shifts). Points beyond the outermost cell centres take the
  border value (clamped), as ``F.interpolate(..., align_corners=False)`` does.

A hypercolumn is the concatenation, in the order of ``layers``, of the
activations entering those ``features`` indices of the backbone, each sampled
bilinearly at the 1/4-grid cell centres (an exact upsampling even when H, W are
not multiples of the layer strides), then L2-normalised per pixel (each level
first, by default; see below). Default
layers ``[14, 17, 21, 24, 28]``: relu3_2, pool3, relu4_2, pool4, relu5_2 outputs
(2048 channels for VGG-16, 512 for the slim variant).

Normalisation (``NORMALIZATIONS``): with ``"levels"`` (the default) each layer's
part is L2-normalised on its own before the concatenation is, so every level
weighs the same in a cosine, as in the fine-tuning loss (``locseg.train.finetune``
normalises each level); with ``"joint"`` (S2DHM's) only the concatenation is,
and the levels with the largest activations dominate. On the bundled weights,
``"levels"`` raises matching precision by 6 percentage points (benchmarks/RESULTS.md).

Scales (``dense_at_scales``): a multi-scale map describes each cell of the 1/4 grid by the
image at several sizes. For each scale ``s`` the network input is resized so that its longer
side is ``s`` times as long, its dense map is sampled at the positions of the 1/4-grid cell
centres in that resized image (``sample``, which keeps the convention above), and the unit
hypercolumns of all scales are summed and L2-normalised again. The map keeps the 1/4 grid of
the image's own size, so it stands wherever a plain dense map does. ``SINGLE_SCALE`` is the
plain map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ShapeError, check_shape
from .backbone import VGG16
from .preprocess import resize_image, resized_size

DEFAULT_LAYERS: tuple[int, ...] = (14, 17, 21, 24, 28)
"""relu3_2, pool3, relu4_2, pool4, relu5_2 outputs (S2DHM)."""
STRIDE = 4
"""Input pixels per cell of a dense hypercolumn map, in each direction."""
NORMALIZATIONS: tuple[str, ...] = ("levels", "joint")
"""How a hypercolumn is L2-normalised: each level and then the whole, or the whole only."""
DEFAULT_NORMALIZATION = NORMALIZATIONS[0]
SINGLE_SCALE: tuple[float, ...] = (1.0,)
"""Scales of a plain, single-size map or descriptor."""


def check_scales(scales: Iterable[float], what: str = "scales") -> tuple[float, ...]:
    """``scales`` as a tuple of floats, or an ``InputError`` naming ``what`` if it is empty or
    not all positive."""
    scales = tuple(float(s) for s in scales)
    if not scales or any(not (s > 0) for s in scales):
        raise InputError(f"{what} must be positive factors of the input size, e.g. (1.0, 0.7071), got {list(scales)}")
    return scales


def check_normalization(normalization: str) -> str:
    """``normalization`` if it is one of ``NORMALIZATIONS``, else an ``InputError`` naming them."""
    if normalization not in NORMALIZATIONS:
        raise InputError(f"unknown hypercolumn normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    return normalization


def pixels_to_grid(uv: torch.Tensor, size: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """COLMAP pixel coordinates to ``grid_sample(align_corners=False)`` coordinates.

    The ONE place where locseg converts pixel coordinates for sampling: with
    ``align_corners=False`` the grid's -1 and +1 are the outer edges of the
    sampled map, which in COLMAP coordinates are 0 and ``size``.

    Args:
        uv: (..., 2) pixel coordinates (u, v), COLMAP convention.
        size: (2,) or (..., 2) (width, height) that the sampled map spans in
            those pixels: ``stride * (w, h)`` for a map of ``h x w`` cells.
    Returns:
        (..., 2) ``2 uv / size - 1``; -1 and 1 are the map's outer edges, and a
        cell centre ``s (x + 0.5)`` maps to ``(2 x + 1) / w - 1``.
    """
    size = torch.as_tensor(size, dtype=uv.dtype, device=uv.device)
    return 2 * uv / size - 1


def sample_feature_map(feature_map: torch.Tensor, uv: torch.Tensor, stride: float) -> torch.Tensor:
    """Bilinearly sample a feature map of the given stride at COLMAP pixels.

    Args:
        feature_map: (B, C, h, w); cell ``(x, y)`` is centred at pixel
            ``(stride (x + 0.5), stride (y + 0.5))``.
        uv: (B, N, 2) pixel coordinates of the image the map was computed on
            (moved to the map's dtype and device).
        stride: input pixels per cell.
    Returns:
        (B, N, C) features; positions beyond the outermost cell centres take the
        border value. Differentiable w.r.t. ``feature_map`` and ``uv``.
    """
    check_shape("feature_map", feature_map.shape, "(B, C, h, w)", feature_map.ndim == 4)
    check_shape("uv", uv.shape, f"({feature_map.shape[0]}, N, 2)",
                uv.ndim == 3 and uv.shape[0] == feature_map.shape[0] and uv.shape[-1] == 2)
    h, w = feature_map.shape[-2:]
    uv = uv.to(dtype=feature_map.dtype, device=feature_map.device)
    grid = pixels_to_grid(uv, (stride * w, stride * h))
    sampled = F.grid_sample(feature_map, grid[:, None], mode="bilinear",
                            padding_mode="border", align_corners=False)
    return sampled[:, :, 0].transpose(1, 2)


def l2_normalize(x: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||, eps)`` along ``dim``, as ``F.normalize`` but about twice as
    fast along the channels of an NCHW map; zero vectors stay zero, gradients stay finite."""
    return x / (x * x).sum(dim, keepdim=True).clamp_min(eps * eps).sqrt()


def grid_centers(height: int, width: int, stride: float = STRIDE, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """COLMAP pixel coordinates of the cell centres of a ``height x width`` map.

    Returns:
        (height, width, 2): ``[y, x] = (stride (x + 0.5), stride (y + 0.5))``.
    """
    u = (torch.arange(width, dtype=dtype, device=device) + 0.5) * stride
    v = (torch.arange(height, dtype=dtype, device=device) + 0.5) * stride
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


class Hypercolumns(nn.Module):
    """Hypercolumns of a backbone at 1/4 resolution (conventions: module docstring).

    Args:
        backbone: a ``VGG16`` (full or slim); it is a submodule of this one.
        layers: ``features`` indices whose *entering* activations are used, in
            concatenation order; distinct, in [0, 31].
        normalization: one of ``NORMALIZATIONS`` (module docstring).

    Images are (B, 3, H, W) ImageNet-normalised RGB (``preprocess.normalize_image``).
    Gradients flow (wrap calls in ``torch.inference_mode()`` for extraction),
    and everything runs on the device of the module and images.

    Example:
        >>> from locseg.models.backbone import build_backbone
        >>> net = Hypercolumns(build_backbone("vgg16-slim"))
        >>> images = torch.zeros(2, 3, 64, 48)
        >>> net.dense(images).shape
        torch.Size([2, 512, 16, 12])
        >>> net.sparse(images, torch.rand(2, 100, 2) * 48).shape
        torch.Size([2, 100, 512])
    """

    def __init__(self, backbone: VGG16, layers: Iterable[int] = DEFAULT_LAYERS,
                 normalization: str = DEFAULT_NORMALIZATION):
        super().__init__()
        check_normalization(normalization)
        layers = tuple(layers)
        if not layers:
            raise InputError("Hypercolumns needs at least one layer")
        for index in layers:
            backbone.channels_entering(index)  # raises InputError naming a bad index
        if len(set(layers)) != len(layers):
            raise InputError(f"hypercolumn layers must be distinct, got {list(layers)}")
        self.backbone = backbone
        self.layers = layers
        self.normalization = normalization

    @property
    def channels(self) -> int:
        """C: the hypercolumn dimension, the sum of the layers' channels."""
        return sum(self.backbone.channels_entering(i) for i in self.layers)

    def describe(self) -> str:
        """``"vgg16 [14 relu3_2 output, ...] -> 2048, levels L2"``, e.g. for logs and model ids."""
        names = ", ".join(f"{i} {self.backbone.describe_entering(i)}" for i in self.layers)
        return f"{self.backbone.name} [{names}] -> {self.channels}, {self.normalization} L2"

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """Dense hypercolumns on the 1/4 grid.

        Args:
            images: (B, 3, H, W) ImageNet-normalised RGB, H, W >= 16 for the
                default layers (>= the deepest layer's stride, and >= 4).
        Returns:
            (B, C, floor(H / 4), floor(W / 4)), unit L2 norm along C (a pixel
            whose activations are all zero stays zero); ``[..., y, x]`` is the
            hypercolumn at COLMAP pixel ``(4 x + 2, 4 y + 2)``. The tensor is
            channels-last in memory (``permute(0, 2, 3, 1)`` is contiguous).
        """
        height, width = images.shape[-2:] if images.ndim == 4 else (0, 0)
        if images.ndim == 4 and min(height, width) < STRIDE:
            raise ShapeError(f"images of size {(height, width)} (H, W) are too small for a 1/4 grid")
        # channels-last activations: about 1.2x (VGG-16) to 1.6x (slim) faster on CPU. A clone,
        # not .contiguous(): a batch of one viewed from an (H, W, 3) image passes the
        # channels-last test with a batch stride that makes the convolutions fall back to NCHW.
        maps = self.backbone.activations(images.clone(memory_format=torch.channels_last), self.layers)
        return self.assemble(maps, height, width)

    @staticmethod
    def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
        """(W', H') of an image of W x H resized by ``scale`` for a multi-scale pass: its
        longer side ``round(scale · max(W, H))``, the aspect ratio kept (``resized_size``)."""
        return resized_size(width, height, max_side=round(max(width, height) * scale), upsample=True)

    def resized_dense(self, images: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` resized by ``scale`` (``scaled_size``) and their dense hypercolumns:
        ((B, 3, H', W'), (B, C, H' / 4, W' / 4)). The one pass per scale that multi-scale
        maps and multi-scale global descriptors share."""
        height, width = images.shape[-2:]
        resized, _ = resize_image(images, max_side=max(self.scaled_size(width, height, scale)), upsample=True)
        return resized, self.dense(resized)

    def dense_at_scales(self, images: torch.Tensor, scales: Sequence[float] = SINGLE_SCALE,
                        computed: Mapping[float, torch.Tensor] | None = None) -> torch.Tensor:
        """Multi-scale dense hypercolumns on the 1/4 grid of ``images`` (module docstring).

        Args:
            images: (B, 3, H, W) as in ``dense``.
            scales: factors of the longer side, each costing a network pass at that size
                (scale 1 included when listed; ``SINGLE_SCALE`` gives ``dense(images)``).
            computed: dense maps already computed, by scale (``dense(images)`` for 1, the map
                of ``resized_dense(images, s)`` for any other ``s``), which are reused.
        Returns:
            (B, C, floor(H / 4), floor(W / 4)), unit L2 norm along C, channels-last.
        """
        scales = check_scales(scales, "hypercolumn scales")
        computed = computed or {}
        height, width = images.shape[-2:]
        h4, w4 = height // STRIDE, width // STRIDE
        total = None
        for scale in scales:
            if scale == 1.0:
                part = computed[1.0] if 1.0 in computed else self.dense(images)
            else:
                dense = computed[scale] if scale in computed else self.resized_dense(images, scale)[1]
                size = self.scaled_size(width, height, scale)                  # (W', H') of that pass's input
                centres = grid_centers(h4, w4, STRIDE, dtype=dense.dtype, device=dense.device).reshape(1, -1, 2)
                centres = centres * dense.new_tensor([size[0] / width, size[1] / height])
                sampled = self.sample(dense, centres.expand(len(images), -1, -1), size)   # (B, h w, C)
                part = sampled.reshape(len(images), h4, w4, -1).permute(0, 3, 1, 2)
            total = part if total is None else total + part
        if len(scales) == 1 and scales[0] == 1.0:
            return total
        return l2_normalize(total.permute(0, 2, 3, 1).contiguous(), dim=3).permute(0, 3, 1, 2)

    def assemble(self, maps: Sequence[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """Dense hypercolumns from the activations of ``layers`` (``backbone.activations``).

        Args:
            maps: one (B, C_l, H / s_l, W / s_l) activation per layer, in ``layers`` order.
            height, width: H, W of the input image.
        Returns:
            (B, C, floor(H / 4), floor(W / 4)) as ``dense`` returns it; differentiable.
        """
        h4, w4 = height // STRIDE, width // STRIDE
        # concatenated channels-last, the layout in which the localizer gathers a cell's
        # hypercolumn and refinement samples the map
        levels = [self._on_grid(m, self.backbone.stride_entering(i), h4, w4) for m, i in zip(maps, self.layers)]
        if self.normalization == "levels":
            levels = [l2_normalize(level, dim=1) for level in levels]
        columns = torch.cat(levels, dim=1)
        # normalised as (B, h4, w4, C) rows, which keeps the channels-last layout without a copy
        return l2_normalize(columns.permute(0, 2, 3, 1).contiguous(), dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _on_grid(feature_map: torch.Tensor, stride: int, h4: int, w4: int) -> torch.Tensor:
        """One layer's (B, C, H / s, W / s) map resampled bilinearly at the 1/4-grid centres: (B, C, h4, w4).

        Cell ``x`` of the 1/4 grid, centred at pixel ``4 (x + 0.5)``, reads the stride-``s``
        map at fractional cell ``4 (x + 0.5) / s - 0.5``; that is ``F.interpolate``'s
        half-pixel mapping with scale factor ``s / 4``, which clamps at the outermost
        cells as ``sample_feature_map`` does. Where ``H / s`` was rounded down, the
        last rows (columns) of the grid lie beyond the last cell and take its values.
        """
        if stride == STRIDE:  # the same cells already (both have floor(H / 4) rows)
            return feature_map
        resampled = F.interpolate(feature_map, scale_factor=stride / STRIDE, mode="bilinear", align_corners=False)
        missing_rows, missing_cols = h4 - resampled.shape[-2], w4 - resampled.shape[-1]
        if missing_rows or missing_cols:
            resampled = F.pad(resampled, (0, missing_cols, 0, missing_rows), mode="replicate")
        return resampled

    def sparse(self, images: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """Hypercolumns at keypoints: ``sample(dense(images), keypoints, (W, H))``.

        They are exactly what ``sample`` reads from the dense map of the same
        image, so that features of a reference image and of a dense query map
        (or of the same image at a projected point) are comparable.

        Args:
            images: (B, 3, H, W) as in ``dense``.
            keypoints: (B, N, 2) COLMAP pixel coordinates in ``images``.
        Returns:
            (B, N, C), unit L2 norm along C.
        """
        if images.ndim != 4:
            raise ShapeError(f"images has shape {tuple(images.shape)}, expected (B, 3, H, W)")
        height, width = images.shape[-2:]
        return self.sample(self.dense(images), keypoints, (width, height))

    def sample(self, dense_map: torch.Tensor, keypoints: torch.Tensor,
               image_size: Sequence[int], normalize: bool = True) -> torch.Tensor:
        """Bilinearly sample a dense map (from ``dense``) at input-image pixels.

        Args:
            dense_map: (B, C, h, w) with ``h = floor(H / 4)``, ``w = floor(W / 4)``.
            keypoints: (B, N, 2) COLMAP pixel coordinates of the H x W input image.
            image_size: (W, H) of the image ``dense_map`` was computed from
                (the order of ``Camera.size``); checked against the map's size.
            normalize: L2-normalise each sample (bilinear blends of unit vectors
                are shorter than 1). Pass False to get the plain bilinear
                interpolation, e.g. to stay consistent with interpolated gradients.
        Returns:
            (B, N, C); pixel ``(4 x + 2, 4 y + 2)`` gives ``dense_map[:, :, y, x]``.
        Raises:
            ShapeError: inconsistent shapes or image size.
        """
        width, height = _image_size(image_size)
        if dense_map.ndim != 4 or (dense_map.shape[-2], dense_map.shape[-1]) != (height // STRIDE, width // STRIDE):
            raise ShapeError(f"dense_map has shape {tuple(dense_map.shape)}, expected (B, C, {height // STRIDE}, "
                             f"{width // STRIDE}) for an image of size (W, H) = {(width, height)}")
        if not (isinstance(keypoints, torch.Tensor) and keypoints.ndim == 3 and keypoints.shape[-1] == 2
                and keypoints.shape[0] == dense_map.shape[0]):
            got = tuple(keypoints.shape) if isinstance(keypoints, torch.Tensor) else type(keypoints).__name__
            raise ShapeError(f"keypoints has shape {got}, expected ({dense_map.shape[0]}, N, 2)")
        features = sample_feature_map(dense_map, keypoints, STRIDE)
        return l2_normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as ``dense``."""
        return self.dense(images)


def _image_size(image_size: Sequence[int] | torch.Tensor) -> tuple[int, int]:
    try:
        values = image_size.tolist() if isinstance(image_size, torch.Tensor) else list(image_size)
        ok = len(values) == 2 and all(float(v) == int(v) and int(v) >= 1 for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ShapeError(f"image_size must be (W, H), two positive integers, got {image_size!r}")
    return int(values[0]), int(values[1])
