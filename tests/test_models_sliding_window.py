"""Sliding-window inference: window layout, ramp weights, and blending."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from locseg.errors import InputError, ShapeError
from locseg.models.sliding_window import (
    SlidingWindow,
    ramp_1d,
    sliding_window,
    window_starts,
)


def test_window_starts_cover_the_axis():
    assert window_starts(10, 6, 4) == [0, 4]
    assert window_starts(20, 6, 4) == [0, 4, 8, 12, 14]
    assert window_starts(5, 8, 4) == [0]  # a window longer than the axis is cut to it
    assert window_starts(12, 6, 6) == [0, 6]


def test_ramp_is_one_on_the_core_and_linear_to_the_edges():
    # 6 pixels, core 2: ramp width 2, distances of the centres to the nearer edge 0.5, 1.5, 2.5, ...
    torch.testing.assert_close(ramp_1d(6, 2), torch.tensor([0.25, 0.75, 1.0, 1.0, 0.75, 0.25]))
    torch.testing.assert_close(ramp_1d(4, 4), torch.ones(4))
    assert ramp_1d(9, 3).min() > 0


def test_seed_layout_scales_with_the_image():
    assert SlidingWindow.scaled(1024) == SlidingWindow(713, 476, 236)
    assert SlidingWindow.scaled(256) == SlidingWindow(178, 119, 59)
    with pytest.raises(InputError, match="core"):
        SlidingWindow(10, 5, 12)
    with pytest.raises(InputError, match="uncovered"):
        SlidingWindow(10, 11, 2)


@pytest.mark.parametrize("layout", [SlidingWindow(32, 20, 8, batch=3), SlidingWindow((24, 40), (10, 30), (4, 20)),
                                    SlidingWindow(100, 90, 50)])
def test_blending_reproduces_a_translation_equivariant_model(layout):
    """A per-pixel model gives every window the whole image's values, so any blend returns them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, 5, 1)).eval()
    image = torch.randn(3, 50, 70)
    with torch.no_grad():
        whole = model(image[None])[0]
        blended = sliding_window(model, image, layout)
    torch.testing.assert_close(blended, whole, rtol=1e-5, atol=1e-6)


def test_blending_weights_by_hand():
    """Two windows [0, 6) and [4, 10) of a 1 x 10 image, core 2: where they overlap the
    prediction is the weighted mean with weights 0.75 / 0.25 and 0.25 / 0.75."""
    image = torch.arange(10.0).expand(3, 1, 10)

    def which_window(windows: torch.Tensor) -> torch.Tensor:  # 0 for the first window, 1 for the second
        first_x = windows[:, 0, 0, 0]
        return (first_x > 0).float()[:, None, None, None].expand(-1, 1, *windows.shape[-2:])

    blended = sliding_window(which_window, image, SlidingWindow((1, 6), (1, 4), (1, 2)))
    torch.testing.assert_close(blended[0, 0], torch.tensor([0, 0, 0, 0, 0.25, 0.75, 1, 1, 1, 1]))


def test_bad_predictions_are_refused():
    with pytest.raises(ShapeError, match="predict returned"):
        sliding_window(lambda x: x[:, :, :-1], torch.zeros(3, 20, 20), SlidingWindow(10, 10, 5))
    with pytest.raises(ShapeError):
        sliding_window(lambda x: x, torch.zeros(20, 20), SlidingWindow(10, 10, 5))
