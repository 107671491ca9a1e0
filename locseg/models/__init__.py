"""locseg.models: backbones (VGG-16 and a slim variant), hypercolumns, preprocessing.

Models take ImageNet-normalised RGB images (B, 3, H, W); ``preprocess`` makes them
(load, resize with the camera, normalise). Pixel conventions for sampling
feature maps are stated once, in ``hypercolumn``.
"""

from .backbone import (
    BACKBONES,
    VGG16,
    VGG16_WIDTHS,
    build_backbone,
    load_torchvision_vgg16,
    vgg16,
    vgg16_slim,
)
from .hypercolumn import (
    DEFAULT_LAYERS,
    Hypercolumns,
    pixels_to_grid,
    sample_feature_map,
)
from .preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize_image,
    load_image,
    normalize_image,
    prepare_image,
    resize_image,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_LAYERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16",
    "VGG16_WIDTHS",
    "Hypercolumns",
    "build_backbone",
    "denormalize_image",
    "load_image",
    "load_torchvision_vgg16",
    "normalize_image",
    "pixels_to_grid",
    "prepare_image",
    "resize_image",
    "sample_feature_map",
    "vgg16",
    "vgg16_slim",
]
