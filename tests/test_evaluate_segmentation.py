"""mIoU against hand-computed confusion matrices, per condition, and ``locseg evaluate-seg``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from locseg_cli.segment import evaluate_seg
from PIL import Image

from locseg.errors import ShapeError
from locseg.evaluate.segmentation import (
    SegAccumulator,
    SegEvaluation,
    confusion_matrix,
    evaluate_segmentation,
    iou_per_class,
    mean_iou,
)

# Ground truth and prediction of six pixels, hand-counted below.
TRUTH = np.array([[0, 0, 1, 1], [1, 255, 0, 2]], dtype=np.uint8)
PREDICTION = np.array([[0, 1, 1, 1], [3, 3, 255, 2]], dtype=np.uint8)


def test_confusion_and_iou_by_hand():
    confusion = confusion_matrix(PREDICTION, TRUTH, num_classes=5)
    expected = np.zeros((5, 5), dtype=np.int64)
    expected[0, 0] = 1  # (truth, prediction)
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[1, 3] = 1
    expected[2, 2] = 1  # the truth-255 pixel is ignored; the truth-0 pixel predicted 255 is in no column
    np.testing.assert_array_equal(confusion, expected)
    accumulator = SegAccumulator(num_classes=5)
    accumulator.add("img.png", PREDICTION, TRUTH)
    iou = iou_per_class(accumulator.confusion["all"], accumulator.unassigned["all"])
    # class 0: TP 1, FP 0, FN 2 (one as class 1, one as no class) -> 1/3
    # class 1: TP 2, FP 1, FN 1 -> 1/2;  class 2: 1/1;  class 3: TP 0, FP 1 -> 0
    # class 4: absent from prediction and truth -> undefined, left out of the mean
    np.testing.assert_allclose(iou[:4], [100 / 3, 50, 100, 0])
    assert math.isnan(iou[4])
    assert mean_iou(iou) == pytest.approx((100 / 3 + 50 + 100 + 0) / 4)


def test_confusion_accumulates_over_the_set_not_per_image():
    accumulator = SegAccumulator(num_classes=2)
    accumulator.add("a/x.png", np.array([[0, 0]]), np.array([[0, 0]]))  # perfect alone: mIoU 100 (one class)
    accumulator.add("a/y.png", np.array([[1, 1]]), np.array([[0, 1]]))  # alone: classes 0 (0) and 1 (50)
    evaluation = SegEvaluation.from_accumulator(accumulator)
    # pooled: class 0 TP 2 FN 1 -> 2/3; class 1 TP 1 FP 1 -> 1/2
    assert evaluation.miou["all"] == pytest.approx((200 / 3 + 50) / 2)
    assert evaluation.miou["a"] == evaluation.miou["all"]


def test_mismatched_shapes_are_refused():
    with pytest.raises(ShapeError):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)))


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_evaluate_seg_per_condition_and_json(tmp_path):
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    _write(labels / "night" / "cam0" / "0.png", TRUTH)
    _write(predictions / "night" / "cam0" / "0.png", PREDICTION)
    _write(labels / "sun" / "cam0" / "0.png", [[13, 13], [10, 255]])
    _write(predictions / "sun" / "cam0" / "0.png", [[13, 13], [10, 0]])
    _write(labels / "sun" / "cam0" / "1.png", [[10, 10]])  # no prediction: counts as wrong
    _write(predictions / "dusk" / "cam0" / "0.png", [[1]])  # no label: ignored
    out = CliRunner().invoke(evaluate_seg, ["--predictions", str(predictions), "--labels", str(labels), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert list(summary["miou"]) == ["all", "night", "sun"] and summary["missing"] == 1
    # sun: car 2/2 -> 100; sky TP 1, FN 2 (the missing image) -> 1/3
    assert summary["miou"]["sun"] == pytest.approx((100 + 100 / 3) / 2, abs=1e-3)
    assert summary["iou"]["sun"]["car"] == 100 and summary["iou"]["sun"]["road"] is None
    assert summary["iou"]["night"]["road"] == pytest.approx(100 / 3, abs=1e-3)
    assert summary["iou"]["night"]["wall"] == 0  # predicted (class 3) but never true
    # all pools the pixels of both conditions
    evaluation = evaluate_segmentation(predictions, labels)
    assert evaluation.miou["all"] == pytest.approx(summary["miou"]["all"], abs=1e-3)
    assert evaluation.iou["all"]["sky"] == pytest.approx(100 / 3)
    table = CliRunner().invoke(evaluate_seg, ["--predictions", str(predictions), "--labels", str(labels)])
    assert table.exit_code == 0 and "mIoU" in table.stdout
