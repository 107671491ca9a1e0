"""Sliding-window inference with linear-ramp blending (seed 000, section 5).

An image is cut into windows of ``window`` pixels placed every ``stride`` pixels
(the last window of a row or column is moved back to end at the image border, so
every pixel is covered); each window is predicted on its own, and each pixel gets
the weighted mean of the predictions of the windows that contain it. A window's
weight is 1 on its central ``core`` pixels and falls linearly towards its edges:
along one axis of a window of n pixels, the pixel with centre c (COLMAP, so
c = i + 0.5) is ``min(1, d / r)`` with ``d = min(c, n - c)`` its distance to the
nearer edge and ``r = (n - core) / 2`` the ramp width; the 2-D weight is the
product of the two axes. Weights are positive everywhere (the outermost pixels
get ``0.5 / r``), so the mean is always defined.

Seed 000 used 713-pixel windows every 476 pixels with a 236-pixel core on images
about 1024 pixels wide; ``SlidingWindow.scaled`` keeps these proportions for
another image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError, ShapeError

SEED_LONGER_SIDE = 1024
SEED_WINDOW, SEED_STRIDE, SEED_CORE = 713, 476, 236


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise InputError(f"{name} must be a positive int or a pair (height, width) of them, got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class SlidingWindow:
    """Window layout in pixels of the image being segmented, each an int or (height, width).

    Attributes:
        window: window size.
        stride: step between window origins.
        core: the central part of a window with weight 1 (at most ``window``).
        batch: windows per forward pass.
    """

    window: int | tuple[int, int]
    stride: int | tuple[int, int]
    core: int | tuple[int, int]
    batch: int = 4

    def __post_init__(self) -> None:
        window = _pair(self.window, "window")
        stride = _pair(self.stride, "stride")
        core = _pair(self.core, "core")
        if any(c > w for c, w in zip(core, window)):
            raise InputError(f"core {core} must not exceed window {window}")
        if any(s > w for s, w in zip(stride, window)):
            raise InputError(f"stride {stride} larger than window {window} would leave pixels uncovered")
        if self.batch < 1:
            raise InputError(f"batch must be positive, got {self.batch}")

    @staticmethod
    def scaled(longer_side: int, batch: int = 4) -> SlidingWindow:
        """Seed 000's 713 / 476 / 236 pixels at a 1024-pixel longer side, scaled to ``longer_side``."""
        scale = longer_side / SEED_LONGER_SIDE
        return SlidingWindow(*(max(1, round(v * scale)) for v in (SEED_WINDOW, SEED_STRIDE, SEED_CORE)),
                             batch=batch)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Origins 0, stride, 2 stride, ... of windows along an axis of ``length`` pixels,
    the last one moved to ``length - window``; a window longer than the axis is cut to it."""
    window = min(window, length)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def ramp_1d(length: int, core: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(length,) weights: 1 on the central ``core`` pixels, linear towards the edges (module docstring)."""
    centers = torch.arange(length, dtype=dtype) + 0.5
    distance = torch.minimum(centers, length - centers)
    ramp = (length - min(core, length)) / 2
    return torch.ones(length, dtype=dtype) if ramp <= 0 else (distance / ramp).clamp(max=1)


def ramp_weights(size: tuple[int, int], core: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W) window weights: the product of the ramps along each axis."""
    return ramp_1d(size[0], core[0], dtype)[:, None] * ramp_1d(size[1], core[1], dtype)[None, :]


def sliding_window(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                   layout: SlidingWindow) -> torch.Tensor:
    """Blend the predictions of overlapping windows of one image.

    Args:
        predict: (B, 3, h, w) windows -> (B, C, h, w) per-pixel predictions (logits,
            probabilities, any per-pixel vector; it is averaged as is).
        image: (3, H, W) network input.
        layout: window, stride and core in pixels (cut to the image where larger).
    Returns:
        (C, H, W) the weighted mean of the window predictions at every pixel.

    Example:
        >>> identity = lambda x: x
        >>> image = torch.rand(3, 50, 70)
        >>> torch.allclose(sliding_window(identity, image, SlidingWindow(32, 20, 8)), image)
        True
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ShapeError(f"image must be a (3, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    height, width = image.shape[-2:]
    win_h, win_w = (min(w, s) for w, s in zip(_pair(layout.window, "window"), (height, width)))
    stride, core = _pair(layout.stride, "stride"), _pair(layout.core, "core")
    weight = ramp_weights((win_h, win_w), core, image.dtype).to(image.device)
    origins = [(y, x) for y in window_starts(height, win_h, stride[0]) for x in window_starts(width, win_w, stride[1])]
    total = weights = None
    for first in range(0, len(origins), layout.batch):
        chunk = origins[first:first + layout.batch]
        crops = torch.stack([image[:, y:y + win_h, x:x + win_w] for y, x in chunk])
        predictions = predict(crops)
        if predictions.ndim != 4 or predictions.shape[0] != len(chunk) or predictions.shape[-2:] != (win_h, win_w):
            raise ShapeError(f"predict returned shape {tuple(predictions.shape)} for windows of shape "
                             f"{tuple(crops.shape)}; expected ({len(chunk)}, C, {win_h}, {win_w})")
        if total is None:
            total = predictions.new_zeros(predictions.shape[1], height, width)
            weights = predictions.new_zeros(height, width)
        for (y, x), prediction in zip(chunk, predictions):
            total[:, y:y + win_h, x:x + win_w] += weight * prediction
            weights[y:y + win_h, x:x + win_w] += weight
    return total / weights
