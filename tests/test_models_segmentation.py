"""The segmentation model: classes and palette, shapes, the frozen mode, weights round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locseg.errors import InputError
from locseg.models.segmentation import (
    CLASSES,
    NON_STATIONARY,
    PALETTE,
    SegmentationModel,
    SegModelConfig,
    colorize,
    load_segmentation_model,
    segmentation_metadata,
    upsample_to_pixels,
)
from locseg.models.weights import save_safetensors


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one thread (conftest.one_thread)."""


def test_cityscapes_conventions():
    assert len(CLASSES) == 19 and CLASSES[0] == "road" and CLASSES[18] == "bicycle"
    assert [CLASSES[i] for i in NON_STATIONARY] == ["person", "rider", "car", "truck", "bus", "train",
                                                    "motorcycle", "bicycle"]
    picture = colorize(np.array([[0, 13], [255, 10]], dtype=np.uint8))
    assert picture.dtype == np.uint8 and picture.shape == (2, 2, 3)
    assert picture[0, 0].tolist() == [128, 64, 128] and picture[0, 1].tolist() == [0, 0, 142]
    assert picture[1, 0].tolist() == [0, 0, 0] and picture[1, 1].tolist() == PALETTE[10].tolist()


def test_outputs_and_their_grids():
    model = SegmentationModel(SegModelConfig()).eval()
    out = model(torch.randn(2, 3, 72, 100), aux=True)
    assert out.logits.shape == (2, 19, 9, 12) and out.stride == 8
    assert out.features.shape == (2, 128, 9, 12)
    assert out.aux_logits.shape == (2, 19, 18, 25) and out.aux_stride == 4
    assert model.predict(torch.randn(1, 3, 72, 100)).shape == (1, 19, 72, 100)


def test_upsample_reads_cell_centres():
    grid = torch.arange(6.0).reshape(1, 1, 2, 3)  # stride 4: cell (x, y) centred at (4x + 2, 4y + 2)
    up = upsample_to_pixels(grid, 4, (8, 12))
    # pixel (column 2, row 2) has centre (2.5, 2.5): cell coordinates (0.125, 0.125)
    assert up[0, 0, 2, 2].item() == pytest.approx(0.125 + 3 * 0.125)
    # pixels past the last cell centre take the border value
    assert up[0, 0, 7, 11].item() == 5.0


def test_frozen_backbone_takes_no_gradient():
    model = SegmentationModel(SegModelConfig(frozen_backbone=True)).train()
    assert not model.backbone.training
    out = model(torch.randn(1, 3, 64, 64), aux=True)
    (out.logits.sum() + out.aux_logits.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_weights_round_trip_with_their_architecture(tmp_path):
    config = SegModelConfig(head_channels=32, aux_channels=16, bins=(1, 2))
    model = SegmentationModel(config)
    path = save_safetensors(model.state_dict(), tmp_path / "seg.safetensors", segmentation_metadata(config))
    loaded = load_segmentation_model(path)
    assert loaded.config == config and not loaded.training
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(InputError, match="do not fit"):
        load_segmentation_model(path, SegModelConfig())
    with pytest.raises(InputError, match="unknown segmentation model setting"):
        SegModelConfig.from_dict({"head_chanels": 3})
