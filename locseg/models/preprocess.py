"""Images to network inputs: loading, resizing with the camera, ImageNet normalisation.

Conventions:

- Images are float tensors (..., 3, H, W), RGB in [0, 1] until
  ``normalize_image`` makes them ImageNet-normalised, which is what the models
  of ``locseg.models`` take.
- Files are decoded as stored: EXIF orientation is NOT applied, as COLMAP and
  hloc do not apply it, so that pixel coordinates agree with theirs.
- Resizing follows the COLMAP pixel convention (``locseg.geometry.camera``):
  resizing W x H to W' x H' maps pixel ``(u, v)`` to ``(u W'/W, v H'/H)``.
  Bilinear resampling with ``align_corners=False`` (kornia, as
  ``F.interpolate``) realises exactly this map, and ``Camera.resize`` rescales
  focal lengths and principal point by the same factors, so a 3D point projects
  to the same place relative to the image before and after.
"""

from __future__ import annotations

from pathlib import Path

import kornia
import numpy as np
import torch

from ..errors import FormatError, InputError, ShapeError
from ..geometry.camera import Camera

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_MAX_SIDE = 512
# focal_matched_side: an image whose focal length at the usual size is within this fraction of
# the target keeps the usual size (resampling by a few per cent costs more than the scale gap),
# and no image is enlarged beyond this many times ``max_side``.
FOCAL_TOLERANCE = 0.1
FOCAL_MAX_ENLARGE = 2.0


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB array as a (3, H, W) float32 tensor in [0, 1]."""
    if not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[-1] != 3:
        shape = getattr(array, "shape", type(array).__name__)
        raise ShapeError(f"image array has shape {shape}, expected (H, W, 3) RGB")
    if array.dtype != np.uint8:
        raise InputError(f"image array has dtype {array.dtype}, expected uint8")
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float() / 255.0


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as RGB.

    Grayscale, palette and RGBA images are converted to RGB (alpha dropped);
    EXIF orientation is ignored (see the module docstring).

    Returns:
        (3, H, W) float32 in [0, 1].
    Raises:
        InputError: no such file. FormatError: not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise FormatError(path, f"cannot read as an image: {err}") from err
    return image_to_tensor(array)


def resized_size(width: int, height: int, max_side: int = DEFAULT_MAX_SIDE,
                 upsample: bool = False) -> tuple[int, int]:
    """(W', H') with the longer side ``max_side`` and the aspect ratio kept.

    The shorter side is ``round(side * max_side / longer)``, rounded half up as
    ``Camera.scale`` rounds. Without ``upsample``, an image whose longer side is
    at most ``max_side`` keeps its size.
    """
    if width < 1 or height < 1:
        raise InputError(f"image size must be positive, got {width}x{height}")
    if int(max_side) != max_side or max_side < 1:
        raise InputError(f"max_side must be a positive integer, got {max_side!r}")
    max_side = int(max_side)
    longer = max(width, height)
    if longer <= max_side and not upsample:
        return width, height
    scale = max_side / longer
    new = [max_side if side == longer else max(1, int(np.floor(side * scale + 0.5)))
           for side in (width, height)]
    return new[0], new[1]


def input_focal(camera: Camera, max_side: int = DEFAULT_MAX_SIDE) -> float:
    """Mean focal length, in pixels, of ``camera`` at the network input that ``resize_image``
    makes of its images (longer side ``max_side``, never enlarged)."""
    width, height = camera.pixel_size()
    return float(camera.f.mean()) * max(resized_size(width, height, max_side)) / max(width, height)


def focal_matched_side(camera: Camera, target_focal: float, max_side: int = DEFAULT_MAX_SIDE,
                       tolerance: float = FOCAL_TOLERANCE) -> int:
    """The longer side of the network input at which ``camera`` has focal length ``target_focal``.

    Resizing a query so that its focal length equals the reference images' puts a surface at
    a given depth at the same scale in both, which the hypercolumns, not scale-invariant, need.
    It raises matching precision on zoomed queries (``benchmarks/probe_focal_match.py``), but
    the localizer keeps the usual size, which gave better poses (benchmarks/RESULTS.md).
    Returns the usual side (``max_side``, or the image's own if smaller) when the usual input's
    focal length is within ``tolerance`` of the target, and never more than
    ``FOCAL_MAX_ENLARGE * max_side`` (nor less than 32). Use it as ``prepare_image(image, camera,
    max_side=side, upsample=True)``.

    Raises:
        InputError: a non-positive ``target_focal`` or negative ``tolerance``.
    """
    if not target_focal > 0:
        raise InputError(f"target_focal must be a positive focal length in pixels, got {target_focal}")
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}")
    width, height = camera.pixel_size()
    usual = max(resized_size(width, height, max_side))
    ratio = target_focal / (float(camera.f.mean()) * usual / max(width, height))   # over input_focal
    if abs(ratio - 1.0) <= tolerance:
        return usual
    return int(min(max(round(usual * ratio), 32), FOCAL_MAX_ENLARGE * max_side))


def resize_image(image: torch.Tensor, camera: Camera | None = None, max_side: int = DEFAULT_MAX_SIDE,
                 upsample: bool = False, antialias: bool = True) -> tuple[torch.Tensor, Camera | None]:
    """Resize so the longer side is ``max_side``, and the camera to match.

    Args:
        image: (..., C, H, W) float image(s).
        camera: the camera of this image (its size must be W x H), or None.
        max_side: target longer side in pixels.
        upsample: also enlarge images whose longer side is below ``max_side``.
        antialias: Gaussian prefilter when shrinking (kornia's ``antialias``);
            without it, bilinear downsampling aliases.
    Returns:
        the resized image (..., C, H', W') (the input itself if the size does not
        change) and ``camera.resize(W', H')`` (or None).
    Raises:
        ShapeError: image not (..., C, H, W). InputError: camera of another size.
    """
    if not isinstance(image, torch.Tensor) or image.ndim < 3 or not image.is_floating_point():
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShapeError(f"image must be a float tensor (..., C, H, W), got {got}")
    height, width = image.shape[-2:]
    if camera is not None:
        size = camera.size.reshape(-1, 2)
        if not bool((size == size.new_tensor([width, height])).all()):
            raise InputError(f"the camera is for images of size {size[0].tolist()} (W, H) but the image "
                             f"is {width}x{height}")
    new_width, new_height = resized_size(width, height, max_side, upsample)
    if (new_width, new_height) == (width, height):
        return image, camera
    resized = kornia.geometry.transform.resize(image, (new_height, new_width), interpolation="bilinear",
                                               align_corners=False, antialias=antialias)
    return resized, None if camera is None else camera.resize(new_width, new_height)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation ``(image - mean) / std`` per RGB channel; (..., 3, H, W) -> same."""
    mean, std = _imagenet_statistics(image)
    return (image - mean) / std


def denormalize_image(image: torch.Tensor) -> torch.Tensor:
    """The inverse of ``normalize_image``: ``image * std + mean``; (..., 3, H, W) -> same."""
    mean, std = _imagenet_statistics(image)
    return image * std + mean


def _imagenet_statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 1, 1) mean and std on ``image``'s device and dtype, after checking it is (..., 3, H, W)."""
    if not isinstance(image, torch.Tensor) or image.ndim < 3 or image.shape[-3] != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShapeError(f"image has shape {got}, expected (..., 3, H, W) RGB")
    return image.new_tensor(IMAGENET_MEAN)[:, None, None], image.new_tensor(IMAGENET_STD)[:, None, None]


def prepare_image(image: torch.Tensor | str | Path, camera: Camera | None = None,
                  max_side: int = DEFAULT_MAX_SIDE, upsample: bool = False) -> tuple[torch.Tensor, Camera | None]:
    """Load (if a path), resize and normalise: the network input and its camera.

    Returns:
        (3, H', W') ImageNet-normalised (or (..., 3, H', W') for a batch) and the
        rescaled camera (None if none was given).
    """
    if not isinstance(image, torch.Tensor):
        image = load_image(image)
    image, camera = resize_image(image, camera, max_side=max_side, upsample=upsample)
    return normalize_image(image), camera
