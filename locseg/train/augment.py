"""Random changes of scale and light applied to a training pair.

The queries of a cross-condition benchmark differ from the reference images in two
ways the correspondences of one training street cover only thinly: the camera (a
query traversal's focal length may be 1.5 times the reference's, so its surfaces appear
larger) and the light (night). An augmented pair

- **scale:** shrinks one of its two images by a factor drawn log-uniformly so that the
  ratio of their scales lies in [1/r, r] (``AugmentConfig.scale`` = r). Shrinking
  rather than enlarging keeps every image within the run's ``max_side``, so a step
  costs no more than without augmentation. The points of the shrunk image are mapped
  exactly: under the COLMAP pixel convention, resizing W x H to W' x H' maps (u, v) to
  (u W'/W, v H'/H).
- **light:** with probability ``AugmentConfig.light`` per image, changes its gamma, gain,
  colour balance and adds sensor noise, each drawn independently (ranges below). The
  ranges reach well into the dark, as night images do, and stay mild on the bright side.

All draws come from the run's generator, so a resumed run augments exactly as an
uninterrupted one. Images arrive and leave ImageNet-normalised (``PairSample``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch

from ..errors import InputError
from ..models.preprocess import denormalize_image, normalize_image
from .pairs import PairSample

GAIN_RANGE = (0.15, 1.2)        # multiplies the linear image; log-uniform
GAMMA_RANGE = (1 / 1.6, 1.6)    # exponent of the [0, 1] image; log-uniform
TINT_RANGE = (0.8, 1.25)        # per RGB channel; log-uniform
NOISE_RANGE = (0.0, 0.04)       # standard deviation of Gaussian noise in [0, 1] units; uniform


@dataclass(frozen=True)
class AugmentConfig:
    """How a training pair is changed (the defaults change nothing).

    Attributes:
        scale: the largest ratio between the scales of the pair's two images, >= 1.
        light: probability that an image's light is changed, in [0, 1].
    """

    scale: float = 1.0
    light: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale >= 1.0:
            raise InputError(f"scale augmentation must be a ratio >= 1 (1 = none), got {self.scale}")
        if not 0.0 <= self.light <= 1.0:
            raise InputError(f"light augmentation is a probability in [0, 1], got {self.light}")

    @property
    def active(self) -> bool:
        return self.scale > 1.0 or self.light > 0.0


def augment_pair(sample: PairSample, config: AugmentConfig, generator: torch.Generator) -> PairSample:
    """``sample`` with its scale and light changed as ``config`` says (itself when inactive).

    Args:
        sample: a pair on the CPU, images (3, H, W) ImageNet-normalised.
        config: the augmentation.
        generator: CPU generator every random draw is taken from.
    Returns:
        a new pair; a shrunk image is (3, H', W') with its (N, 2) points mapped to it.
    """
    if not config.active:
        return sample
    image_a, points_a, image_b, points_b = sample.image_a, sample.points_a, sample.image_b, sample.points_b
    if config.scale > 1.0:
        ratio = math.exp((2 * _uniform(generator) - 1) * math.log(config.scale))
        if ratio >= 1.0:
            image_a, points_a = shrink(image_a, points_a, 1 / ratio)
        else:
            image_b, points_b = shrink(image_b, points_b, ratio)
    if config.light > 0.0:
        if _uniform(generator) < config.light:
            image_a = relight(image_a, generator)
        if _uniform(generator) < config.light:
            image_b = relight(image_b, generator)
    return PairSample(image_a, image_b, points_a, points_b, sample.name_a, sample.name_b)


def shrink(image: torch.Tensor, points: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A (3, H, W) image resized by ``factor`` <= 1 (antialiased), and its (N, 2) points mapped to it."""
    height, width = image.shape[-2:]
    new_width, new_height = max(1, round(width * factor)), max(1, round(height * factor))
    if (new_width, new_height) == (width, height):
        return image, points
    resized = kornia.geometry.transform.resize(image[None], (new_height, new_width), interpolation="bilinear",
                                               align_corners=False, antialias=True)[0]
    return resized, points * points.new_tensor([new_width / width, new_height / height])


def relight(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A (3, H, W) ImageNet-normalised image under random gamma, gain, tint and noise (same shape)."""
    rgb = denormalize_image(image).clamp(0.0, 1.0)
    gamma = _log_uniform(GAMMA_RANGE, generator)
    gain = _log_uniform(GAIN_RANGE, generator)
    tint = image.new_tensor([_log_uniform(TINT_RANGE, generator) for _ in range(3)])[:, None, None]
    sigma = NOISE_RANGE[0] + (NOISE_RANGE[1] - NOISE_RANGE[0]) * _uniform(generator)
    noise = torch.randn(rgb.shape, generator=generator, dtype=rgb.dtype) * sigma
    changed = (rgb.pow(gamma) * gain * tint + noise).clamp(0.0, 1.0)
    return normalize_image(changed)


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _log_uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return math.exp(low + (high - low) * _uniform(generator))
