"""Semantic segmentation: Cityscapes classes, a PSPNet-style head on a VGG backbone.

Conventions (stated here once for locseg):

- Labels are the 19 Cityscapes trainIds, ``0 road ... 18 bicycle`` (``CLASSES``),
  ``IGNORE = 255`` for pixels without a label, stored as (H, W) uint8 and drawn
  with the Cityscapes palette (``PALETTE``; ignore is black).
- Non-stationary classes, whose pixels may move between traversals, are
  ``NON_STATIONARY``: person, rider, car, truck, bus, train, motorcycle, bicycle
  (trainIds 11-18).
- A model's outputs are maps on a stride-``s`` grid of its (resized, normalised)
  input; cell ``(x, y)`` is centred at COLMAP pixel ``(s (x + 0.5), s (y + 0.5))``
  as for every backbone map (``locseg.models.hypercolumn``), and they are sampled
  at pixels with ``sample_feature_map`` (``upsample_to_pixels`` for a whole image).

Architecture (Zhao et al., PSPNet, CVPR 2017, as used by seed 000): the backbone's
activations entering ``head_layer`` (default 23, the relu4_3 output, stride 8) go through a
pyramid pooling module (average pooling to 1x1, 2x2, 3x3 and 6x6 bins, 1x1
convolution to C/4 channels each, bilinear upsampling, concatenation with the input),
a 3x3 convolution to ``head_channels`` (the *penultimate features*) and a 1x1
classifier to 19 logits (the *final layer*). An auxiliary head (3x3 convolution,
1x1 classifier) on the activations entering ``aux_layer`` (default 16, the relu3_3
output, stride 4) adds a deep-supervision loss during training. Stride 8 keeps poles and
signs, a few pixels wide, from vanishing inside one cell (benchmarks/RESULTS.md: stride 16
left them at 0 IoU). Both default layers feed the hypercolumns' pooled levels, so the
feature training reaches them (conv5_3 it never reaches: in the bundled slim weights it
is still random). Normalisation is GroupNorm, not BatchNorm, so a batch of one image
trains and a window predicts independently of the other windows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ShapeError
from .backbone import VGG16, build_backbone
from .hypercolumn import grid_centers, sample_feature_map

CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
"""The 19 Cityscapes classes, indexed by trainId."""
NUM_CLASSES = len(CLASSES)
IGNORE = 255
"""The trainId of unlabelled pixels."""
NON_STATIONARY: tuple[int, ...] = tuple(range(11, 19))
"""person, rider, car, truck, bus, train, motorcycle, bicycle."""
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
"""(19, 3) RGB colour of each trainId (Cityscapes' own)."""
HEAD_LAYER = 23
AUX_LAYER = 16


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 RGB in the Cityscapes palette; ignore (and any
    value that is not a trainId) is black."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ShapeError(f"labels have shape {labels.shape}, expected (H, W)")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = PALETTE
    return table[labels.astype(np.uint8)]


@dataclass(frozen=True)
class SegModelConfig:
    """The architecture of a segmentation model (stored with its weights).

    Attributes:
        backbone: a name of ``locseg.models.backbone.BACKBONES``.
        head_layer: ``features`` index whose entering activations feed the PSP head.
        aux_layer: the same for the auxiliary head.
        bins: pyramid pooling grid sizes.
        head_channels: channels of the penultimate features.
        aux_channels: channels of the auxiliary head's hidden layer.
        dropout: before each classifier (PSPNet: 0.1).
        frozen_backbone: the backbone is never trained (and runs without gradient),
            so it can be shared with the localizer's features.
    """

    backbone: str = "vgg16-slim"
    head_layer: int = HEAD_LAYER
    aux_layer: int = AUX_LAYER
    bins: tuple[int, ...] = (1, 2, 3, 6)
    head_channels: int = 128
    aux_channels: int = 64
    dropout: float = 0.1
    frozen_backbone: bool = False

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @staticmethod
    def from_dict(values: Mapping) -> SegModelConfig:
        """Strict: an unknown key fails, naming it and the valid ones."""
        valid = set(SegModelConfig.__dataclass_fields__)
        unknown = sorted(set(values) - valid)
        if unknown:
            raise InputError(f"unknown segmentation model setting(s) {unknown}; valid: {sorted(valid)}")
        values = dict(values)
        if "bins" in values:
            values["bins"] = tuple(int(b) for b in values["bins"])
        return SegModelConfig(**values)


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups of at least 8 channels (fewer channels: one group)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and (channels // g >= 8 or g == 1))
    return nn.GroupNorm(groups, channels)


def _conv_block(cin: int, cout: int, kernel: int, norm: bool = True) -> nn.Sequential:
    if not norm:
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), _norm(cout),
                         nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: (B, C, h, w) -> (B, C + len(bins) * (C // len(bins)), h, w)."""

    def __init__(self, channels: int, bins: Iterable[int] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        if not self.bins or min(self.bins) < 1:
            raise InputError(f"pyramid bins must be positive integers, got {self.bins}")
        reduced = max(1, channels // len(self.bins))
        # No normalisation here: GroupNorm over the one cell of the 1x1 bin would only
        # keep each group's pattern across channels and drop its magnitude.
        self.stages = nn.ModuleList(_conv_block(channels, reduced, 1, norm=False) for _ in self.bins)
        self.out_channels = channels + reduced * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear",
                                align_corners=False) for b, stage in zip(self.bins, self.stages)]
        return torch.cat([x, *pooled], dim=1)


class PSPHead(nn.Module):
    """Pyramid pooling, a 3x3 convolution (penultimate features), dropout, a 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, classes: int = NUM_CLASSES,
                 bins: Iterable[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.pool = PyramidPooling(in_channels, bins)
        self.bottleneck = _conv_block(self.pool.out_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, h, w) -> logits (B, classes, h, w), penultimate features (B, channels, h, w)."""
        features = self.bottleneck(self.pool(x))
        return self.classifier(self.dropout(features)), features


class AuxHead(nn.Module):
    """A 3x3 convolution, dropout and a 1x1 classifier, for deep supervision."""

    def __init__(self, in_channels: int, channels: int, classes: int = NUM_CLASSES, dropout: float = 0.1):
        super().__init__()
        self.block = _conv_block(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.block(x)))


@dataclass
class SegOutput:
    """What a segmentation model computes for (B, 3, H, W) images.

    Attributes:
        logits: (B, 19, h, w) final layer on the stride-``stride`` grid.
        features: (B, head_channels, h, w) penultimate features, same grid.
        stride: input pixels per cell of ``logits`` and ``features``.
        aux_logits: (B, 19, h_a, w_a) auxiliary logits (stride ``aux_stride``),
            or None when not asked for.
        aux_stride: input pixels per cell of ``aux_logits``.
    """

    logits: torch.Tensor
    features: torch.Tensor
    stride: int
    aux_logits: torch.Tensor | None = None
    aux_stride: int = 0


class SegmentationModel(nn.Module):
    """A backbone with a PSP head and an auxiliary head (module docstring).

    Args:
        config: the architecture.
        backbone: a ready backbone (e.g. the localizer's, to share it); by default a
            new, randomly initialised ``config.backbone``.

    Example:
        >>> model = SegmentationModel(SegModelConfig()).eval()
        >>> out = model(torch.zeros(1, 3, 64, 96))
        >>> out.logits.shape, out.stride, model.predict(torch.zeros(1, 3, 64, 96)).shape
        (torch.Size([1, 19, 8, 12]), 8, torch.Size([1, 19, 64, 96]))
    """

    def __init__(self, config: SegModelConfig = SegModelConfig(), backbone: VGG16 | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else build_backbone(config.backbone)
        self.stride = self.backbone.stride_entering(config.head_layer)
        self.aux_stride = self.backbone.stride_entering(config.aux_layer)
        self.head = PSPHead(self.backbone.channels_entering(config.head_layer), config.head_channels,
                            NUM_CLASSES, config.bins, config.dropout)
        self.aux = AuxHead(self.backbone.channels_entering(config.aux_layer), config.aux_channels,
                           NUM_CLASSES, config.dropout)
        if config.frozen_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.config.frozen_backbone:
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor, aux: bool = False) -> SegOutput:
        """Logits and penultimate features of (B, 3, H, W) ImageNet-normalised images
        (H, W >= the head layer's stride); ``aux`` adds the auxiliary logits."""
        layers = [self.config.aux_layer, self.config.head_layer] if aux else [self.config.head_layer]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.frozen_backbone):
            maps = self.backbone.activations(images, layers)
        logits, features = self.head(maps[-1])
        aux_logits = self.aux(maps[0]) if aux else None
        return SegOutput(logits, features, self.stride, aux_logits, self.aux_stride)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 19, H, W) logits at every input pixel (bilinear from the grid)."""
        out = self(images)
        return upsample_to_pixels(out.logits, out.stride, images.shape[-2:])


def upsample_to_pixels(feature_map: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """A stride-``stride`` map sampled bilinearly at the centres of the pixels of an
    ``size = (H, W)`` image: (B, C, h, w) -> (B, C, H, W).

    Exact with the grid convention of the module docstring even when H, W are not
    multiples of the stride (where ``F.interpolate`` to (H, W) would stretch the map).
    """
    height, width = int(size[0]), int(size[1])
    b, c = feature_map.shape[:2]
    centers = grid_centers(height, width, 1.0, dtype=feature_map.dtype, device=feature_map.device)
    sampled = sample_feature_map(feature_map, centers.reshape(1, -1, 2).expand(b, -1, -1), stride)
    return sampled.transpose(1, 2).reshape(b, c, height, width)


# --------------------------------------------------------------------------- weights

def segmentation_metadata(config: SegModelConfig, recipe: Mapping | None = None) -> dict[str, str]:
    """The safetensors metadata that lets ``load_segmentation_model`` rebuild a model."""
    metadata = {"kind": "segmentation", "backbone": config.backbone, "model": json.dumps(config.to_dict()),
                "classes": json.dumps(list(CLASSES))}
    if recipe is not None:
        metadata["recipe"] = json.dumps(recipe)
    return metadata


def load_segmentation_model(source: str | Path, config: SegModelConfig | None = None) -> SegmentationModel:
    """A segmentation model from weights (a bundled name, a file or a URL), in eval mode.

    The architecture is read from the safetensors metadata written with the weights
    (``segmentation_metadata``); for a file without it, ``config`` (default
    ``SegModelConfig()``) must describe it.

    Raises:
        InputError: the weights do not fit the architecture (the message lists how).
    """
    from .weights import (
        load_state_dict,
        read_safetensors_metadata,
        resolve_weights,
        sniff_format,
    )

    path = resolve_weights(source)
    if config is None:
        metadata = read_safetensors_metadata(path) if sniff_format(path) == "safetensors" else {}
        if metadata.get("kind", "segmentation") != "segmentation" or (metadata and "model" not in metadata):
            raise InputError(f"weights {source!r} are not a segmentation model (metadata: {sorted(metadata)})")
        config = SegModelConfig.from_dict(json.loads(metadata["model"])) if metadata else SegModelConfig()
    model = SegmentationModel(config)
    state = load_state_dict(path)
    missing, unexpected = state_mismatch(model, state)
    if missing or unexpected:
        raise InputError(f"weights {source!r} do not fit the segmentation model {config}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state)
    return model.eval()


def state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """The model's keys missing from ``state`` or of another shape there, and ``state``'s keys the model lacks."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, [k for k in state if k not in expected]
