"""Scale and light augmentation of training pairs: exact point mapping, bounds, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from locseg.errors import InputError
from locseg.models.preprocess import normalize_image
from locseg.train.augment import AugmentConfig, augment_pair, relight, shrink
from locseg.train.pairs import PairSample


def _ramp(width: int, height: int) -> torch.Tensor:
    """(3, H, W) image whose value at pixel centre (u, v) (COLMAP: u = column + 0.5) is
    linear in u and v, so resampling can be checked against the formula."""
    u = torch.arange(width, dtype=torch.float64) + 0.5
    v = torch.arange(height, dtype=torch.float64) + 0.5
    plane = 0.002 * u[None, :] + 0.003 * v[:, None]
    return torch.stack([plane, 2 * plane, plane + 0.1])


def _pair(width: int = 160, height: int = 120, points: int = 50) -> PairSample:
    generator = torch.Generator().manual_seed(0)
    image = normalize_image(torch.rand(3, height, width, generator=generator))
    uv = torch.rand(points, 2, generator=generator) * torch.tensor([width, height])
    return PairSample(image, image.clone(), uv, uv.clone(), "ref/a.png", "night/b.png")


@pytest.mark.parametrize("factor", [0.5, 0.7, 0.83])
def test_shrunk_points_land_where_the_content_went(factor):
    """On a linear ramp, the shrunk image at a mapped point has the value the original had
    at the point (away from the border, where the antialiasing filter pads)."""
    image = _ramp(200, 150)
    points = torch.tensor([[60.5, 50.5], [100.0, 75.0], [140.25, 99.75]], dtype=torch.float64)
    resized, mapped = shrink(image, points, factor)
    assert resized.shape[-2:] == (round(150 * factor), round(200 * factor))
    for (u, v), (u2, v2) in zip(points.tolist(), mapped.tolist()):
        column, row = u2 - 0.5, v2 - 0.5     # bilinear read at a COLMAP point
        c0, r0 = math.floor(column), math.floor(row)
        a, b = column - c0, row - r0
        patch = resized[:, r0:r0 + 2, c0:c0 + 2]
        value = ((1 - b) * ((1 - a) * patch[:, 0, 0] + a * patch[:, 0, 1])
                 + b * ((1 - a) * patch[:, 1, 0] + a * patch[:, 1, 1]))
        expected = 0.002 * u + 0.003 * v
        torch.testing.assert_close(value, torch.tensor([expected, 2 * expected, expected + 0.1],
                                                       dtype=torch.float64), atol=2e-3, rtol=0)


def test_the_scale_ratio_stays_within_the_bound_and_uses_both_sides():
    config = AugmentConfig(scale=1.5)
    generator = torch.Generator().manual_seed(3)
    sample = _pair()
    ratios = []
    for _ in range(60):
        out = augment_pair(sample, config, generator)
        ratio = out.image_b.shape[-1] / out.image_a.shape[-1]
        ratios.append(ratio)
        assert max(out.image_a.shape[-1], out.image_b.shape[-1]) == 160   # one side is never touched
        for image, points in ((out.image_a, out.points_a), (out.image_b, out.points_b)):
            height, width = image.shape[-2:]
            assert bool((points >= 0).all() and (points[:, 0] < width).all() and (points[:, 1] < height).all())
    assert 1 / 1.5 - 0.01 <= min(ratios) < 0.85 and 1.2 < max(ratios) <= 1.5 + 0.01


def test_relight_keeps_the_image_valid_and_changes_it():
    image = _pair().image_a
    changed = relight(image, torch.Generator().manual_seed(1))
    assert changed.shape == image.shape and not torch.equal(changed, image)
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    rgb = changed * std + mean
    assert float(rgb.min()) >= -1e-6 and float(rgb.max()) <= 1 + 1e-6


def test_the_same_generator_state_gives_the_same_pair_and_no_augmentation_gives_the_pair_itself():
    sample = _pair()
    config = AugmentConfig(scale=1.4, light=1.0)
    first = augment_pair(sample, config, torch.Generator().manual_seed(7))
    second = augment_pair(sample, config, torch.Generator().manual_seed(7))
    for name in ("image_a", "image_b", "points_a", "points_b"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert augment_pair(sample, AugmentConfig(), torch.Generator()) is sample


@pytest.mark.parametrize("kwargs, word", [({"scale": 0.8}, "scale"), ({"light": 1.5}, "light")])
def test_bad_settings_are_refused(kwargs, word):
    with pytest.raises(InputError, match=word):
        AugmentConfig(**kwargs)
