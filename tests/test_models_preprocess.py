"""Resizing a query to the reference images' focal length (``focal_matched_side``)."""

from __future__ import annotations

import pytest
import torch

from locseg.errors import InputError
from locseg.geometry import Camera
from locseg.models.preprocess import (
    FOCAL_MAX_ENLARGE,
    focal_matched_side,
    input_focal,
    prepare_image,
)

CAMERA = Camera.from_params("PINHOLE", 1024, 768, [800.0, 800.0, 512.0, 384.0])   # 400 px at 512 wide


def test_the_input_focal_is_the_focal_at_the_usual_network_size():
    assert input_focal(CAMERA) == pytest.approx(400.0)
    small = Camera.from_params("SIMPLE_PINHOLE", 320, 240, [300.0, 160.0, 120.0])
    assert input_focal(small) == pytest.approx(300.0)            # never enlarged


@pytest.mark.parametrize(("target", "side"), [
    (400.0, 512),          # already there
    (430.0, 512),          # 7.5 % off: within the tolerance, the usual size
    (300.0, 384),          # a longer query focal than the map's: shrink
    (600.0, 768),          # a shorter one: enlarge
    (5000.0, int(FOCAL_MAX_ENLARGE * 512)),
    (10.0, 32),
])
def test_the_side_gives_the_target_focal_within_limits(target, side):
    assert focal_matched_side(CAMERA, target) == side


def test_the_resized_camera_has_the_target_focal():
    image = torch.rand(3, 768, 1024)
    for target in (260.0, 333.0, 700.0):
        side = focal_matched_side(CAMERA, target)
        net_input, camera = prepare_image(image, CAMERA, max_side=side, upsample=True)
        assert max(net_input.shape[-2:]) == side
        assert float(camera.f.mean()) == pytest.approx(target, rel=2 / side)


def test_bad_targets_are_refused():
    with pytest.raises(InputError, match="target_focal"):
        focal_matched_side(CAMERA, 0.0)
    with pytest.raises(InputError, match="tolerance"):
        focal_matched_side(CAMERA, 400.0, tolerance=-0.1)
