"""``locseg segment``: label images with a segmentation model, as files (and into the feature store).

Each image is resized so that its longer side is ``max_side`` (by default the size
the model was trained at, read from its weights' recipe), predicted by sliding
windows (``locseg.models.sliding_window``; seed 000's layout scaled to that size)
or whole, as class probabilities; these are resized back to the original image
(bilinear, the resizing convention of ``locseg.models.preprocess``) and their
argmax is the label of each original pixel. Outputs, named after the image
(suffix ``.png``):

    OUTPUT/labels/<name>.png    uint8 trainIds
    OUTPUT/colour/<name>.png    Cityscapes palette
    OUTPUT/segment.json         the weights (sha256), max_side and window layout

and, with a feature store, the labels of each image under the model id
``store_model_id`` (backbone, weights digest, max_side, window).

The step is idempotent: images whose two PNGs exist are skipped; an OUTPUT written
with another configuration is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..device import AUTO, module_device, resolve_device
from ..errors import InputError
from ..io._common import atomic_output, atomic_write_text
from ..store import LABELS, FeatureStore, model_id
from .preprocess import load_image, normalize_image, resize_image
from .segmentation import (
    SegmentationModel,
    SegModelConfig,
    colorize,
    load_segmentation_model,
)
from .sliding_window import SlidingWindow, sliding_window
from .weights import (
    file_sha256,
    read_safetensors_metadata,
    resolve_weights,
    sniff_format,
)

DEFAULT_SIDE = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Progress = Callable[[str, int, int], None]


def probabilities(model: SegmentationModel, image: torch.Tensor, max_side: int,
                  layout: SlidingWindow | None) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> (19, H, W) class probabilities at the original resolution.

    ``layout`` None predicts the resized image whole. The model runs on its own device;
    the probabilities come back on the CPU.
    """
    resized, _ = resize_image(image, max_side=max_side)
    network_input = normalize_image(resized).to(module_device(model))

    def predict(windows: torch.Tensor) -> torch.Tensor:
        return model.predict(windows).softmax(dim=1)

    with torch.no_grad():
        if layout is None:
            probs = predict(network_input[None])[0]
        else:
            probs = sliding_window(predict, network_input, layout)
        if probs.shape[-2:] != image.shape[-2:]:
            probs = F.interpolate(probs[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    return probs.cpu()


def segment_image(model: SegmentationModel, image: torch.Tensor, max_side: int,
                  layout: SlidingWindow | None) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] -> (H, W) uint8 trainIds."""
    return probabilities(model, image, max_side, layout).argmax(dim=0).to(torch.uint8).numpy()


def window_layout(max_side: int, window: int | None = None, stride: int | None = None,
                  core: int | None = None) -> SlidingWindow:
    """Seed 000's layout scaled to ``max_side``, with any of its sizes replaced."""
    default = SlidingWindow.scaled(max_side)
    return SlidingWindow(window or default.window, stride or default.stride, core or default.core)


def training_side(weights: str | Path) -> int | None:
    """The ``max_side`` a model was trained at, from its weights' recipe (None if unknown)."""
    path = resolve_weights(weights)
    if sniff_format(path) != "safetensors":
        return None
    recipe = read_safetensors_metadata(path).get("recipe")
    side = json.loads(recipe).get("max_side") if recipe else None
    return int(side) if side else None


def list_images(root: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """Names (relative to ``root``) of the images to segment: ``names``, checked to
    exist, or every png / jpg below ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory")
    if names is None:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise InputError(f"{len(missing)} image(s) not found under {root}, e.g. {missing[0]}")
    return list(names)


def read_names(path: str | Path) -> list[str]:
    """Image names from a list file: the first field of each line (query lists, pose
    files and plain name lists all work); blank lines and ``#`` comments are skipped."""
    from ..io._common import iter_records

    return [fields[0] for _, fields in iter_records(path)]


@dataclass(frozen=True)
class SegmentSettings:
    """What determines the labels ``segment_images`` writes (saved as OUTPUT/segment.json)."""

    weights: str
    weights_sha256: str
    max_side: int
    window: list | None      # [window, stride, core] in pixels of the resized image; None: whole image


def segment_images(weights: str | Path, images: str | Path, output: str | Path,
                   names: Sequence[str] | None = None, max_side: int | None = None, whole_image: bool = False,
                   window: int | None = None, stride: int | None = None, core: int | None = None,
                   overwrite: bool = False, store: str | Path | None = None,
                   progress: Progress | None = None, device: str | torch.device = AUTO) -> Path:
    """Segment images and write their labels (module docstring); returns ``output``.

    Args:
        weights: segmentation weights (bundled name, file or URL).
        images: the root the names are relative to.
        names: images to segment; default every image below ``images``.
        max_side: network input size; default the training size in the weights' recipe, else 256.
        whole_image: predict each resized image at once instead of by sliding windows.
        window, stride, core: the sliding-window layout in pixels of the resized image;
            each defaults to seed 000's, scaled to ``max_side`` (``SlidingWindow.scaled``).
        store: a feature store (``locseg.store``) to put the labels into as well, under
            ``store_model_id``; images whose labels are already there and in ``output``
            are skipped.
        device: where the model runs (``locseg.device``).
    """
    output = Path(output)
    device = resolve_device(device)
    path = resolve_weights(weights)
    side = max_side or training_side(path) or DEFAULT_SIDE
    layout = None if whole_image else window_layout(side, window, stride, core)
    window = None if layout is None else [layout.window, layout.stride, layout.core]
    settings = SegmentSettings(str(weights), file_sha256(path), side, window)
    _claim_output(output, settings, overwrite)
    model = load_segmentation_model(path).to(device)
    todo = list_images(images, names)
    with ExitStack() as stack:
        opened = _open_store(stack, store, settings, model.config) if store else None
        key = store_model_id(settings, model.config.backbone)
        for done, name in enumerate(todo, start=1):
            label_path = output / "labels" / Path(name).with_suffix(".png")
            colour_path = output / "colour" / Path(name).with_suffix(".png")
            in_store = opened is None or opened.has(key, LABELS, name)
            if overwrite or not (in_store and label_path.is_file() and colour_path.is_file()):
                labels = segment_image(model, load_image(Path(images) / name), side, layout)
                _write_png(label_path, labels)
                _write_png(colour_path, colorize(labels))
                if opened is not None:
                    opened.put_labels(key, name, labels)
            if progress:
                progress("segment", done, len(todo))
    return output


def store_model_id(settings: SegmentSettings, backbone: str) -> str:
    """The feature-store model id of labels made with ``settings``:
    ``seg-<backbone>.<sha256[:8]>.max_side=<n>.window=<window-stride-core | whole>``."""
    window = "whole" if settings.window is None else [int(v) for v in np.ravel(settings.window)]
    return model_id(f"seg-{backbone}", settings.weights_sha256, max_side=settings.max_side, window=window)


def _claim_output(output: Path, settings: SegmentSettings, overwrite: bool) -> None:
    record = output / "segment.json"
    wanted = json.loads(json.dumps(asdict(settings)))
    if record.is_file() and not overwrite:
        found = json.loads(record.read_text())
        if {k: found.get(k) for k in wanted if k != "weights"} != {k: v for k, v in wanted.items() if k != "weights"}:
            raise InputError(f"{output} holds labels made with other settings ({record}); "
                             "choose another output or pass overwrite")
    elif output.exists() and any(output.iterdir()) and not record.is_file() and not overwrite:
        raise InputError(f"{output} is not empty and holds no segment.json; choose another output")
    atomic_write_text(record, json.dumps(wanted, indent=1) + "\n")


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _open_store(stack: ExitStack, store: str | Path, settings: SegmentSettings, config: SegModelConfig):
    """The feature store opened for writing until ``stack`` closes, with the config of
    these labels recorded under their model id (a store holding the same id made
    otherwise is refused)."""
    opened = stack.enter_context(FeatureStore(store, mode="a"))
    record = {k: v for k, v in asdict(settings).items() if k != "weights"} | {"model": config.to_dict()}
    opened.set_config(store_model_id(settings, config.backbone), json.loads(json.dumps(record)))
    return opened
