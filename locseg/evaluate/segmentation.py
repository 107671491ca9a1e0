"""Segmentation accuracy: confusion matrix, IoU per class, mIoU, per condition.

The confusion matrix is accumulated over every pixel of a whole set of images
(not averaged per image): ``confusion[g, p]`` counts pixels whose ground truth
is class g and whose prediction is class p; pixels whose ground truth is 255
(or any value that is not a trainId) are left out. A predicted value that is not a
trainId (e.g. 255) counts as wrong for the true class (a false negative) and as
no class's false positive. Then, per class c,

    IoU_c = TP_c / (TP_c + FP_c + FN_c),   union_c = TP_c + FP_c + FN_c,

undefined (NaN, ``null`` in JSON) when union_c = 0, and mIoU is the mean over the
classes whose union is non-zero (mmseg's nanmean), so a class absent from both the
predictions and the ground truth does not count. Values are in percent.

A prediction file and its ground truth share their name relative to their
folders (``night/cam0/000012.png``); the condition is the first component of that
name, as for poses (``locseg.evaluate.pose.query_condition``); ``all`` pools every
image. A label without a prediction is counted as entirely wrong and reported as
missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from ..errors import FormatError, InputError, ShapeError
from ..models.segmentation import CLASSES, NUM_CLASSES
from .pose import ALL, query_condition


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes, num_classes) int64 ``confusion[truth, prediction]`` of two (H, W) label maps
    (pixels predicted as no class are not in it; see ``iou_per_class``'s ``unassigned``)."""
    return _counts(prediction, truth, num_classes)[:, :num_classes].copy()


def _counts(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C + 1) counts; the last column: pixels of each true class predicted as no class."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ShapeError(f"prediction has shape {prediction.shape} but the ground truth {truth.shape}")
    valid = (truth >= 0) & (truth < num_classes)
    truth = truth[valid].astype(np.int64)
    prediction = prediction[valid].astype(np.int64)
    prediction = np.where((prediction >= 0) & (prediction < num_classes), prediction, num_classes)
    counts = np.bincount(truth * (num_classes + 1) + prediction, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def iou_per_class(confusion: np.ndarray, unassigned: np.ndarray | None = None) -> np.ndarray:
    """(C,) IoU in percent from a (C, C) confusion matrix, NaN where the union is 0.

    ``unassigned`` (C,) adds pixels of each true class predicted as no class (false negatives).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ShapeError(f"confusion matrix has shape {confusion.shape}, expected (C, C)")
    true_positive = np.diag(confusion)
    false_negative = confusion.sum(axis=1) - true_positive
    if unassigned is not None:
        false_negative = false_negative + np.asarray(unassigned, dtype=np.float64)
    union = true_positive + (confusion.sum(axis=0) - true_positive) + false_negative
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100 * true_positive / union, np.nan)


def mean_iou(iou: np.ndarray) -> float:
    """Mean over the classes with a defined IoU (non-zero union); NaN if none."""
    iou = np.asarray(iou, dtype=np.float64)
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if len(defined) else math.nan


@dataclass
class SegAccumulator:
    """Confusion matrices summed over images, per condition and for ``all``."""

    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        self.confusion: dict[str, np.ndarray] = {}
        self.unassigned: dict[str, np.ndarray] = {}
        self.images: dict[str, int] = {}

    def add(self, name: str, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Count one image; ``prediction`` None counts every labelled pixel as wrong."""
        if prediction is None:
            prediction = np.full(np.shape(truth), 255, dtype=np.uint8)
        counts = _counts(prediction, truth, self.num_classes)
        confusion, unassigned = counts[:, :self.num_classes], counts[:, self.num_classes]
        condition = query_condition(name)
        for group in (ALL,) if condition is None else (ALL, condition):
            zeros = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
            self.confusion[group] = self.confusion.get(group, zeros) + confusion
            self.unassigned[group] = self.unassigned.get(group, zeros[0]) + unassigned
            self.images[group] = self.images.get(group, 0) + 1

    def groups(self) -> list[str]:
        """``all`` first, then the conditions sorted."""
        return [ALL] * (ALL in self.confusion) + sorted(g for g in self.confusion if g != ALL)


@dataclass(frozen=True)
class SegEvaluation:
    """mIoU and IoU per class, overall and per condition (percent).

    Attributes:
        miou: ``{group: mIoU}``, ``"all"`` first, then the conditions sorted.
        iou: ``{group: {class name: IoU or NaN}}``, same keys.
        num_images: ``{group: images}``.
        missing: labelled images without a prediction (counted as wrong).
    """

    miou: dict[str, float]
    iou: dict[str, dict[str, float]]
    num_images: dict[str, int]
    missing: int = 0

    @staticmethod
    def from_accumulator(accumulator: SegAccumulator, missing: int = 0) -> SegEvaluation:
        miou, iou = {}, {}
        names = CLASSES if accumulator.num_classes == NUM_CLASSES else tuple(map(str, range(accumulator.num_classes)))
        for group in accumulator.groups():
            values = iou_per_class(accumulator.confusion[group], accumulator.unassigned[group])
            miou[group] = mean_iou(values)
            iou[group] = {name: float(v) for name, v in zip(names, values)}
        return SegEvaluation(miou, iou, dict(accumulator.images), missing)

    def to_dict(self) -> dict:
        """``{"miou": {...}, "iou": {...}, "missing": n}``; undefined values become None."""
        return {"miou": {g: _finite_or_none(v) for g, v in self.miou.items()},
                "iou": {g: {c: _finite_or_none(v) for c, v in values.items()} for g, values in self.iou.items()},
                "missing": self.missing}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    def to_table(self) -> Table:
        """Rows: classes, then mIoU; columns: groups."""
        table = Table(title="Segmentation IoU (%)", caption=f"{self.missing} missing prediction(s)")
        table.add_column("class")
        for group in self.miou:
            table.add_column(f"{group} ({self.num_images[group]})", justify="right")
        for name in next(iter(self.iou.values()), {}):
            table.add_row(name, *(_cell(self.iou[g][name]) for g in self.miou))
        table.add_section()
        table.add_row("mIoU", *(_cell(v) for v in self.miou.values()))
        return table


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def read_label_png(path: str | Path) -> np.ndarray:
    """An (H, W) uint8 label image (a single-channel PNG of trainIds)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise FormatError(path, f"label images hold one channel of trainIds; this one is {image.mode}")
            return np.asarray(image).astype(np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise FormatError(path, f"cannot read as a label image: {err}") from err


def label_files(directory: str | Path) -> dict[str, Path]:
    """``{name relative to directory: path}`` of every ``*.png`` below it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*.png"))}


def evaluate_segmentation(predictions: str | Path, labels: str | Path,
                          progress: Callable[[str, int, int], None] | None = None) -> SegEvaluation:
    """Compare the trainId PNGs in ``predictions`` with those of the same names in ``labels``.

    Predictions without a label are ignored; labels without a prediction count as wrong.

    Raises:
        InputError: no label image. ShapeError: a prediction of another size than its label.
    """
    truth = label_files(labels)
    if not truth:
        raise InputError(f"{labels} holds no label images (*.png)")
    predicted = label_files(predictions)
    accumulator, missing = SegAccumulator(), 0
    for done, (name, path) in enumerate(truth.items(), start=1):
        prediction = read_label_png(predicted[name]) if name in predicted else None
        missing += prediction is None
        ground_truth = read_label_png(path)
        if prediction is not None and prediction.shape != ground_truth.shape:
            raise ShapeError(f"{predicted[name]} is {prediction.shape[1]}x{prediction.shape[0]} but its label "
                             f"{path} is {ground_truth.shape[1]}x{ground_truth.shape[0]}")
        accumulator.add(name, prediction, ground_truth)
        if progress:
            progress("evaluate-seg", done, len(truth))
    return SegEvaluation.from_accumulator(accumulator, missing)
