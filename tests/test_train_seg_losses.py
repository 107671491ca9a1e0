"""Segmentation losses on tiny cases computed by hand, and the non-stationary filter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from locseg.errors import InputError, ShapeError
from locseg.models.segmentation import NUM_CLASSES, SegOutput
from locseg.train.seg_losses import (
    class_weights,
    combine,
    confident,
    correspondence_ce,
    correspondence_hinge,
    correspondence_loss,
    stationary,
    supervised_loss,
)


def test_correspondence_ce_by_hand():
    reference = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # argmax: class 0, class 2
    target = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2)]], requires_grad=True)
    loss = correspondence_ce(reference, target)
    # -log(1/3) and -log(2 / (1 + 1 + 2)), averaged
    assert loss.item() == pytest.approx((math.log(3) + math.log(2)) / 2)
    loss.backward()
    # d/dz of -log softmax(z)[k] is softmax(z) - onehot(k)
    expected = torch.tensor([[1 / 3 - 1, 1 / 3, 1 / 3], [0.25, 0.25, 0.5 - 1]]) / 2
    torch.testing.assert_close(target.grad, expected)


def test_correspondence_hinge_by_hand():
    reference = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], requires_grad=True)
    target = torch.tensor([[5.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    loss = correspondence_hinge(reference, target, margin=0.8)
    # cosines 1, 1/sqrt(2), -1 -> max(0, 0.8 - cos) = 0, 0.8 - 0.7071, 1.8
    assert loss.item() == pytest.approx((0 + 0.8 - 2 ** -0.5 + 1.8) / 3)
    loss.backward()
    assert reference.grad is None  # the reference side carries no gradient
    assert target.grad[0].abs().sum() == 0  # an aligned pair is past the margin


def test_losses_of_no_correspondence_are_zero_and_differentiable():
    empty = torch.zeros(0, 4, requires_grad=True)
    for loss in (correspondence_ce(empty.detach(), empty), correspondence_hinge(empty.detach(), empty)):
        assert loss.item() == 0
        loss.backward()


def test_non_stationary_filter():
    classes = torch.tensor([0, 10, 11, 12, 13, 14, 15, 16, 17, 18, 5, 8])
    logits = torch.nn.functional.one_hot(classes, NUM_CLASSES).float() * 3
    keep = stationary(logits)
    assert keep.tolist() == [True, True] + [False] * 8 + [True, True]


def _output(logits: torch.Tensor, features: torch.Tensor) -> SegOutput:
    """Outputs on a stride-1 grid, so that points at pixel centres read cells exactly."""
    return SegOutput(logits.T[None, :, None, :], features.T[None, :, None, :], stride=1)


def test_correspondence_loss_drops_non_stationary_reference_pixels():
    # Three pixels in a row: the reference sees road, car, building there.
    reference_logits = torch.nn.functional.one_hot(torch.tensor([0, 13, 2]), NUM_CLASSES).float() * 5
    target_logits = torch.zeros(3, NUM_CLASSES, requires_grad=True)
    reference_features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target_features = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    reference = _output(reference_logits, reference_features)
    target = _output(target_logits, target_features)
    assert reference.logits.shape == (1, NUM_CLASSES, 1, 3)
    points = torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]])
    target_points = points.flip(0)  # reference pixel i matches target pixel 2 - i

    loss, used = correspondence_loss("ce", reference, target, points, target_points)
    assert used == 2 and loss.item() == pytest.approx(math.log(NUM_CLASSES))  # uniform target logits
    loss.backward()
    assert target_logits.grad[1].abs().max() < 1e-6  # the car's partner takes no part (up to sampling round-off)
    # HingeF on the penultimate features: road (1, 0) vs (1, 1): cos 0.7071; building (1, 1) vs (0, 1): same
    loss, used = correspondence_loss("hinge-f", reference, target, points, target_points)
    assert used == 2 and loss.item() == pytest.approx(0.8 - 2 ** -0.5)
    # HingeC on the logits: target logits are all zero vectors, cosine 0
    loss, _ = correspondence_loss("hinge-c", reference, target, points, target_points)
    assert loss.item() == pytest.approx(0.8)
    with pytest.raises(InputError, match="hinge-x"):
        correspondence_loss("hinge-x", reference, target, points, target_points)
    with pytest.raises(ShapeError):
        correspondence_loss("ce", reference, target, points, target_points[:2])


def test_kept_classes_pass_the_non_stationary_filter():
    """With car (13) taken out of the filtered classes, the car's pair counts beside the road's;
    the person's (11) is still dropped."""
    reference_logits = torch.nn.functional.one_hot(torch.tensor([0, 13, 11]), NUM_CLASSES).float() * 5
    target_logits = torch.zeros(3, NUM_CLASSES, requires_grad=True)
    features = torch.ones(3, 2)
    reference, target = _output(reference_logits, features), _output(target_logits, features)
    points = torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]])
    filtered = tuple(c for c in range(11, 19) if c != 13)
    assert stationary(reference_logits, filtered).tolist() == [True, True, False]   # the person stays out
    loss, used = correspondence_loss("ce", reference, target, points, points, non_stationary=filtered)
    assert used == 2 and loss.item() == pytest.approx(math.log(NUM_CLASSES))
    loss.backward()
    assert target_logits.grad[1].abs().max() > 0 and target_logits.grad[2].abs().max() < 1e-6


def test_confidence_filter_by_hand():
    """Two classes: logits (a, 0) give the predicted class probability 1 / (1 + e^-a)."""
    logits = torch.zeros(3, NUM_CLASSES)
    logits[:, 0] = torch.tensor([0.0, 3.0, 10.0])   # the other 18 classes share the rest
    top = torch.tensor([1 / (1 + 18), math.exp(3) / (math.exp(3) + 18), math.exp(10) / (math.exp(10) + 18)])
    assert confident(logits, 0.5).tolist() == (top >= 0.5).tolist() == [False, True, True]
    assert confident(logits, 0.999).tolist() == [False, False, True]


def test_correspondence_loss_drops_unsure_reference_pixels():
    # road sure (logit 10), building unsure (logit 1 against 18 zeros), car sure but non-stationary
    reference_logits = torch.zeros(3, NUM_CLASSES)
    reference_logits[0, 0], reference_logits[1, 2], reference_logits[2, 13] = 10.0, 1.0, 10.0
    target_logits = torch.zeros(3, NUM_CLASSES, requires_grad=True)
    features = torch.ones(3, 2)
    reference, target = _output(reference_logits, features), _output(target_logits, features)
    points = torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]])
    _, used = correspondence_loss("ce", reference, target, points, points)
    assert used == 2                                             # the filter is off by default
    loss, used = correspondence_loss("ce", reference, target, points, points, min_confidence=0.9)
    assert used == 1 and loss.item() == pytest.approx(math.log(NUM_CLASSES))
    loss.backward()
    assert target_logits.grad[1:].abs().max() < 1e-6 and target_logits.grad[0].abs().max() > 0


def test_supervised_loss_ignores_255_and_survives_an_unlabelled_image():
    logits = torch.tensor([[[[0.0, 5.0]], [[math.log(3), -5.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    loss = supervised_loss(logits, torch.tensor([[[1, 255]]]))
    assert loss.item() == pytest.approx(-math.log(3 / 4))  # softmax((0, log 3))[1] = 3/4
    empty = supervised_loss(logits, torch.full((1, 1, 2), 255))
    assert empty.item() == 0
    empty.backward()


def test_combine_scales_by_one_plus_lambda():
    assert combine(torch.tensor(2.0), torch.tensor(4.0), 1.0).item() == 3.0
    assert combine(torch.tensor(2.0), torch.tensor(4.0), 0.0).item() == 2.0
    with pytest.raises(InputError):
        combine(torch.tensor(2.0), torch.tensor(4.0), -1)


def test_class_weights_by_hand():
    """Frequencies 100, 0, 25, 1 (of 126): the median of the present ones is 25/126."""
    counts = np.array([100, 0, 25, 1])
    torch.testing.assert_close(class_weights(counts, 0.5), torch.tensor([0.5, 1.0, 1.0, 5.0]))
    torch.testing.assert_close(class_weights(counts, 1.0), torch.tensor([0.25, 1.0, 1.0, 10.0]))  # 25 clipped
    torch.testing.assert_close(class_weights(counts, 0.0), torch.ones(4))
    with pytest.raises(InputError, match="counts"):
        class_weights(np.zeros(4))


def test_weighted_supervised_loss_is_the_weighted_mean_by_hand():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 3.0]]]])   # (1, 3, 1, 2)
    labels = torch.tensor([[[0, 2]]])
    weight = torch.tensor([0.5, 1.0, 4.0])
    ce0 = -torch.log_softmax(torch.tensor([2.0, 0.0, 1.0]), 0)[0]
    ce1 = -torch.log_softmax(torch.tensor([0.0, 1.0, 3.0]), 0)[2]
    expected = (0.5 * ce0 + 4.0 * ce1) / 4.5
    torch.testing.assert_close(supervised_loss(logits, labels, weight=weight), expected)


def test_class_weighted_correspondence_losses_by_hand():
    """Reference classes 0 and 2 weigh 1 and 3: each point counts by its reference class."""
    weight = torch.tensor([1.0, 5.0, 3.0])
    reference = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # argmax: class 0, class 2
    target = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2)]])
    ce = correspondence_ce(reference, target, weight)
    assert ce.item() == pytest.approx((1 * math.log(3) + 3 * math.log(2)) / 4)
    # hinge: cosines of (2, 0, 0)/(1, 1, 1) and (0, 0, 1)/(0, 0, 1) are 1/sqrt(3) and 1
    hinge = correspondence_hinge(reference, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]), margin=0.8,
                                 point_weight=weight[reference.argmax(dim=1)])
    assert hinge.item() == pytest.approx(1 * (0.8 - 3 ** -0.5) / 4)
    with pytest.raises(ShapeError):
        correspondence_hinge(reference, target, point_weight=torch.ones(3))


def test_correspondence_loss_weighs_points_by_the_reference_class():
    # The reference sees road (weight 1) and building (weight 3); the car (dropped) weighs 10.
    reference_logits = torch.nn.functional.one_hot(torch.tensor([0, 13, 2]), NUM_CLASSES).float() * 5
    target_logits = torch.zeros(3, NUM_CLASSES)
    target_logits[0, 0] = math.log(2)             # road's partner already leans to road
    features = torch.ones(3, 2)
    weight = torch.ones(NUM_CLASSES)
    weight[2], weight[13] = 3.0, 10.0
    points = torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]])
    loss, used = correspondence_loss("ce", _output(reference_logits, features), _output(target_logits, features),
                                     points, points, weight=weight)
    road = -math.log(2 / (NUM_CLASSES + 1))
    assert used == 2 and loss.item() == pytest.approx((road + 3 * math.log(NUM_CLASSES)) / 4)
