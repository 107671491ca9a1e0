"""Fine-tuning losses: double-margin contrastive, GN-Net's Gauss-Newton loss, their sum."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from torch.nn import functional as nnF

from locseg.errors import InputError, ShapeError
from locseg.train.losses import (
    FinetuneLossConfig,
    _sample_map,
    _sample_with_jacobian,
    dense_matching_loss,
    double_margin_contrastive,
    gauss_newton_loss,
    total_finetune_loss,
)

H, W = 10, 14
A, B = 2.0, 3.0  # ramp slopes


def _grid(h=H, w=W, dtype=torch.float64):
    """Cell-centre coordinates (x, y), each (h, w), COLMAP convention."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=dtype) + 0.5, torch.arange(w, dtype=dtype) + 0.5, indexing="ij"
    )
    return xs, ys


def _ramp(shift_x=0.0):
    """F(x, y) = [A (x - shift_x), B y, 1]: a map whose features are linear in the position."""
    xs, ys = _grid()
    return torch.stack([A * (xs - shift_x), B * ys, torch.ones_like(xs)])


def _smooth_map(seed, c=6, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, c, 4, 5, generator=g, dtype=torch.float64)
    fine = nnF.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    return nnF.normalize(fine, dim=0)


def _keypoints(n, seed, margin=2.0):
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([margin, margin], dtype=torch.float64)
    hi = torch.tensor([W - margin, H - margin], dtype=torch.float64)
    return lo + torch.rand(n, 2, generator=g, dtype=torch.float64) * (hi - lo)


# ----------------------------------------------------------------------------- DMC


def test_dmc_hand_computed():
    d_pos = torch.tensor([0.05, 0.1, 0.4])  # inside, on, outside M+ = 0.1
    d_neg = torch.tensor([0.5, 1.0, 1.5])  # inside, on, outside M- = 1
    terms = double_margin_contrastive(d_pos, d_neg)
    assert terms.positive.item() == pytest.approx(0.3**2 / 3)  # 0.03
    assert terms.negative.item() == pytest.approx(0.5**2 / 3)  # 0.08333
    assert terms.total.item() == pytest.approx(0.03 + 0.25 / 3)
    other = double_margin_contrastive(d_pos, d_neg, margin_pos=0.0, margin_neg=2.0)
    assert other.positive.item() == pytest.approx((0.05**2 + 0.1**2 + 0.4**2) / 3)
    assert other.negative.item() == pytest.approx((1.5**2 + 1.0 + 0.5**2) / 3)


def test_dmc_empty_sets_contribute_zero():
    d = torch.tensor([0.4, 0.2])
    empty = torch.zeros(0, requires_grad=True)
    only_pos = double_margin_contrastive(d, empty)
    assert only_pos.negative.item() == 0.0
    assert only_pos.total.item() == pytest.approx((0.3**2 + 0.1**2) / 2)
    only_neg = double_margin_contrastive(empty, d)
    assert only_neg.positive.item() == 0.0
    assert only_neg.total.item() == pytest.approx((0.6**2 + 0.8**2) / 2)
    nothing = double_margin_contrastive(empty, empty)
    assert nothing.total.item() == 0.0 and not torch.isnan(nothing.total)
    nothing.total.backward()
    assert empty.grad is not None and empty.grad.shape == (0,)


def test_dmc_gradient_signs():
    d_pos = torch.tensor([0.05, 0.4], requires_grad=True)
    d_neg = torch.tensor([0.5, 1.5], requires_grad=True)
    double_margin_contrastive(d_pos, d_neg).total.backward()
    assert d_pos.grad[0] == 0 and d_pos.grad[1] > 0  # pull far positives together
    assert d_neg.grad[0] < 0 and d_neg.grad[1] == 0  # push near negatives apart
    assert d_pos.grad[1].item() == pytest.approx(2 * 0.3 / 2)
    assert d_neg.grad[0].item() == pytest.approx(-2 * 0.5 / 2)


def test_dmc_rejects_bad_inputs():
    with pytest.raises(ShapeError, match="d_pos"):
        double_margin_contrastive(torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(InputError, match="margin"):
        double_margin_contrastive(torch.zeros(2), torch.zeros(2), margin_pos=1.0, margin_neg=0.5)


# ----------------------------------------------------------------------------- helpers


def test_sampling_hits_cell_values_at_centres():
    feat = _smooth_map(0)
    pts = torch.tensor([[0.5, 0.5], [3.5, 2.5], [W - 0.5, H - 0.5]], dtype=torch.float64)
    expected = torch.stack([feat[:, 0, 0], feat[:, 2, 3], feat[:, H - 1, W - 1]])
    torch.testing.assert_close(_sample_map(feat, pts), expected)


def test_jacobian_exact_for_quadratics_over_the_whole_hull():
    xs, ys = _grid()
    feat = torch.stack([xs**2, ys**2, xs * ys])
    # interior, and within one cell of every border (one-sided stencils)
    pts = torch.tensor(
        [[0.5, 0.5], [0.7, 9.4], [6.3, 4.2], [1.5, 1.5], [13.2, 0.9], [W - 0.5, H - 0.5]], dtype=torch.float64
    )
    values, jac = _sample_with_jacobian(feat, pts)
    x, y = pts[:, 0], pts[:, 1]
    # bilinear interpolation of x^2 is exact at cell centres only; the Jacobian is exact everywhere
    torch.testing.assert_close(values[:, 2], x * y)
    torch.testing.assert_close(jac[..., 0], torch.stack([2 * x, 0 * x, y], -1))
    torch.testing.assert_close(jac[..., 1], torch.stack([0 * x, 2 * y, x], -1))


def test_jacobian_inside_is_the_interpolated_central_difference_map():
    feat = _smooth_map(30)
    grad_x = torch.zeros_like(feat)
    grad_x[:, :, 1:-1] = (feat[:, :, 2:] - feat[:, :, :-2]) / 2
    grad_y = torch.zeros_like(feat)
    grad_y[:, 1:-1] = (feat[:, 2:] - feat[:, :-2]) / 2
    pts = _keypoints(40, seed=31, margin=1.5)  # x in [1.5, W - 1.5], y in [1.5, H - 1.5]
    _, jac = _sample_with_jacobian(feat, pts)
    torch.testing.assert_close(jac[..., 0], _sample_map(grad_x, pts))
    torch.testing.assert_close(jac[..., 1], _sample_map(grad_y, pts))


# ----------------------------------------------------------------------------- GN


@pytest.mark.parametrize("vicinity", [0.0, 0.5, 1.0, 1.5])
def test_gn_step_lands_on_the_true_point_of_a_ramp(vicinity):
    feat = _ramp()
    kp = _keypoints(50, seed=1)
    damping = 1e-12
    terms = gauss_newton_loss(
        feat, feat, kp, kp, vicinity=vicinity, generator=torch.Generator().manual_seed(0), damping=damping
    )
    assert terms.n_valid == 50
    assert terms.alignment.item() < 1e-12
    # J = [[A, 0], [0, B], [0, 0]], so J^T J = diag(A^2, B^2)
    expected_log_det = -0.5 * math.log(A**2 * B**2)
    assert terms.log_det.item() == pytest.approx(expected_log_det, abs=1e-9)
    assert terms.total.item() == pytest.approx(2 / 7 * expected_log_det, abs=1e-9)
    with_constant = gauss_newton_loss(
        feat, feat, kp, kp, vicinity=vicinity, generator=torch.Generator().manual_seed(0),
        damping=damping, include_constant=True,
    )
    assert with_constant.log_det.item() == pytest.approx(expected_log_det + math.log(2 * math.pi), abs=1e-9)


def test_gn_loss_grows_with_a_shifted_target():
    kp = _keypoints(40, seed=2, margin=3.0)
    totals = []
    for shift in [0.0, 0.5, 1.0, 2.0]:
        terms = gauss_newton_loss(
            _ramp(shift), _ramp(), kp, kp, generator=torch.Generator().manual_seed(0), damping=1e-12
        )
        # the GN step lands on kp - shift, where F_b equals the target: e = (-shift, 0)
        assert terms.alignment.item() == pytest.approx(0.5 * A**2 * shift**2, abs=1e-9)
        totals.append(terms.total.item())
    assert all(b > a for a, b in itertools.pairwise(totals))


def test_gn_matches_a_direct_linear_algebra_implementation():
    feat_a, feat_b = _smooth_map(3), _smooth_map(4)
    kp_a, kp_b = _keypoints(30, seed=5), _keypoints(30, seed=6)
    damping, vicinity = 1e-3, 1.0
    terms = gauss_newton_loss(
        feat_a, feat_b, kp_a, kp_b, vicinity, (1.0, 2 / 7), torch.Generator().manual_seed(7), damping
    )
    # same start points: the same generator draw
    offset = torch.rand(kp_b.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x_s = kp_b + vicinity * (2 * offset - 1)
    current, jac = _sample_with_jacobian(feat_b, x_s)  # (N, C), (N, C, 2)
    r = current - _sample_map(feat_a, kp_a)
    hess = jac.transpose(1, 2) @ jac + damping * torch.eye(2, dtype=torch.float64)
    x_gn = x_s - torch.linalg.solve(hess, (jac.transpose(1, 2) @ r[..., None]))[..., 0]
    e = x_gn - kp_b
    alignment = 0.5 * (e[:, None] @ hess @ e[..., None])[:, 0, 0]
    log_det = -0.5 * torch.logdet(hess)
    assert terms.alignment.item() == pytest.approx(alignment.mean().item(), rel=1e-9)
    assert terms.log_det.item() == pytest.approx(log_det.mean().item(), rel=1e-9)
    assert terms.total.item() == pytest.approx((alignment + 2 / 7 * log_det).mean().item(), rel=1e-9)


def test_gn_gradients_flow_to_both_maps():
    feat_a = _smooth_map(8).requires_grad_()
    feat_b = _smooth_map(9).requires_grad_()
    kp = _keypoints(25, seed=10)
    terms = gauss_newton_loss(feat_a, feat_b, kp, kp, generator=torch.Generator().manual_seed(0), damping=1e-4)
    terms.total.backward()
    for feat in (feat_a, feat_b):
        assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0


def test_gn_gradcheck():
    feat_a = _smooth_map(11, c=3, h=5, w=6).requires_grad_()
    feat_b = _smooth_map(12, c=3, h=5, w=6).requires_grad_()
    kp = torch.tensor([[2.2, 2.1], [3.6, 2.8], [3.1, 3.3]], dtype=torch.float64)

    def loss(fa, fb):
        gen = torch.Generator().manual_seed(0)
        return gauss_newton_loss(fa, fb, kp, kp, vicinity=0.5, generator=gen, damping=1e-2).total

    assert torch.autograd.gradcheck(loss, (feat_a, feat_b))


def test_gn_is_reproducible_and_drops_starts_off_the_map():
    feat = _smooth_map(13)
    kp = torch.tensor([[0.2, 5.0], [7.0, 5.0], [7.0, 9.9]], dtype=torch.float64)
    first = gauss_newton_loss(feat, feat, kp, kp, vicinity=0.25, generator=torch.Generator().manual_seed(1))
    second = gauss_newton_loss(feat, feat, kp, kp, vicinity=0.25, generator=torch.Generator().manual_seed(1))
    assert first.total.item() == second.total.item()
    # x = 0.2 +- 0.25 is always left of the cell-centre hull [0.5, W - 0.5], y = 9.9 +- 0.25 below it
    assert first.n_valid == 1
    none = gauss_newton_loss(feat, feat, kp[:1], kp[:1], vicinity=0.1)
    assert none.n_valid == 0 and none.total.item() == 0.0


def test_gn_rejects_bad_inputs():
    feat = _smooth_map(14)
    kp = _keypoints(4, seed=0)
    with pytest.raises(InputError, match="outside"):
        gauss_newton_loss(feat, feat, kp, kp + W)
    with pytest.raises(ShapeError, match="channels"):
        gauss_newton_loss(feat, feat[:2], kp, kp)
    with pytest.raises(ShapeError, match="kp_b"):
        gauss_newton_loss(feat, feat, kp, kp[:2])
    with pytest.raises(ShapeError, match="feat_a"):
        gauss_newton_loss(feat[None], feat, kp, kp)
    with pytest.raises(ShapeError, match="H >= 4"):
        gauss_newton_loss(feat, feat[:, :3], kp, kp / 4)
    with pytest.raises(InputError, match="vicinity"):
        gauss_newton_loss(feat, feat, kp, kp, vicinity=-1.0)


# ----------------------------------------------------------------------------- total


def test_total_finetune_loss_sums_levels_and_backpropagates():
    size = (28, 20)  # keypoints given in a grid twice as fine as level 0
    feats_a = [_smooth_map(20).float().requires_grad_(), _smooth_map(21, c=4, h=5, w=7).float().requires_grad_()]
    feats_b = [_smooth_map(22).float().requires_grad_(), _smooth_map(23, c=4, h=5, w=7).float().requires_grad_()]
    kp = (_keypoints(16, seed=3) * 2).float()
    config = FinetuneLossConfig(neg_radius=1.5)
    total, parts = total_finetune_loss(
        feats_a, feats_b, kp, kp, size, size, pool_size=5, config=config,
        generator=torch.Generator().manual_seed(0),
    )
    assert total.item() == pytest.approx(parts["dmc"].item() + 0.5 * parts["gn"].item(), rel=1e-6)
    assert parts["dmc"].item() == pytest.approx(parts["dmc/0"].item() + parts["dmc/1"].item(), rel=1e-6)
    assert parts["gn"].item() == pytest.approx(parts["gn/0"].item() + parts["gn/1"].item(), rel=1e-6)
    assert parts["dmc"].item() == pytest.approx(parts["dmc_pos"].item() + parts["dmc_neg"].item(), rel=1e-6)
    assert all(not v.requires_grad for v in parts.values())
    total.backward()
    for feat in feats_a + feats_b:
        assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0
    again, _ = total_finetune_loss(
        feats_a, feats_b, kp, kp, size, size, pool_size=5, config=config,
        generator=torch.Generator().manual_seed(0),
    )
    assert again.item() == total.item()


def test_the_combined_term_is_the_dmc_of_the_whole_maps_against_their_hardest_negative():
    """With pool size 1 the mined negative is the hardest cell farther than alpha from the
    true match, found here by brute force; the term adds ``combined_weight`` times its DMC."""
    level_a, level_b = _smooth_map(30).float(), _smooth_map(31).float()
    whole_a, whole_b = _smooth_map(32, c=8).float(), _smooth_map(33, c=8).float()
    kp = (_keypoints(6, seed=4) * 2).float()        # input pixels; the whole maps' cells span 2 of them
    size = (2 * W, 2 * H)
    seed_loss = FinetuneLossConfig(neg_radius=1.5)
    combined = dataclasses.replace(seed_loss, combined_weight=0.3)

    def loss(config):
        return total_finetune_loss([level_a], [level_b], kp, kp, size, size, pool_size=1, config=config,
                                   generator=torch.Generator().manual_seed(0), combined=(whole_a, whole_b, 2.0))
    base, _ = loss(seed_loss)
    total, parts = loss(combined)
    desc_a, desc_b = _sample_map(whole_a, kp / 2), _sample_map(whole_b, kp / 2)
    xs, ys = _grid()
    cells = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float()
    distances = torch.cdist(desc_a, whole_b.reshape(8, -1).T)                     # (N, H W)
    far = torch.cdist(kp / 2, cells) > 1.5
    d_neg = distances.masked_fill(~far, math.inf).min(dim=1).values
    d_pos = (desc_a - desc_b).norm(dim=1)
    expected = ((d_pos - 0.1).clamp_min(0) ** 2).mean() + ((1 - d_neg).clamp_min(0) ** 2).mean()
    assert parts["dmc_combined"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert total.item() == pytest.approx(base.item() + 0.3 * expected.item(), rel=1e-5)
    with pytest.raises(InputError, match="needs the whole maps"):
        total_finetune_loss([level_a], [level_b], kp, kp, size, size, pool_size=1, config=combined)
    with pytest.raises(InputError, match="combined_weight must be >= 0"):
        FinetuneLossConfig(combined_weight=-1)


def test_total_finetune_loss_rejects_bad_inputs():
    feat = _smooth_map(0)
    kp = _keypoints(3, seed=0)
    with pytest.raises(InputError, match="levels"):
        total_finetune_loss([feat], [], kp, kp, (W, H), (W, H), pool_size=5)
    with pytest.raises(InputError, match="margin"):
        FinetuneLossConfig(margin_pos=2.0)


def test_the_dense_loss_is_the_cross_entropy_of_the_softmax_over_every_cell():
    """Hand-computed: three one-hot cells and one mixed cell; a point at a cell centre
    targets that cell alone, a point halfway between two centres both, half each."""
    map_b = torch.zeros(3, 2, 2)
    map_b[0, 0, 0] = map_b[1, 0, 1] = map_b[2, 1, 0] = 1.0
    map_b[:, 1, 1] = torch.tensor([0.6, 0.8, 0.0])
    map_a = map_b.clone()
    centre = torch.tensor([[0.5, 0.5]])                        # cell (0, 0): descriptor e0
    logits = torch.tensor([1.0, 0.0, 0.0, 0.6]) / 0.5          # e0 against the four cells
    expected = -torch.log_softmax(logits, 0)[0]
    got = dense_matching_loss(map_a, map_b, centre, centre, temperature=0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    between = torch.tensor([[1.0, 0.5]])                       # halfway between cells (0, 0) and (0, 1)
    descriptor = torch.tensor([0.5, 0.5, 0.0])                 # the bilinear sample of map a there
    logits = descriptor @ map_b.flatten(1) / 0.5
    expected = -(0.5 * torch.log_softmax(logits, 0)[0] + 0.5 * torch.log_softmax(logits, 0)[1])
    got = dense_matching_loss(map_a, map_b, between, between, temperature=0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # two points average; no points give 0
    both = dense_matching_loss(map_a, map_b, torch.cat([centre, between]), torch.cat([centre, between]), 0.5)
    single = [dense_matching_loss(map_a, map_b, k, k, 0.5) for k in (centre, between)]
    assert both.item() == pytest.approx(sum(x.item() for x in single) / 2, rel=1e-6)
    assert dense_matching_loss(map_a, map_b, centre[:0], centre[:0]).item() == 0.0
    # a point in the border half-cell: its target, clamped into the map, is cell (0, 0) alone
    border = torch.tensor([[0.2, 0.5]])
    descriptor = torch.tensor([1.0, 0.0, 0.0])                  # the border-extended sample of map a there
    expected = -torch.log_softmax(descriptor @ map_b.flatten(1) / 0.5, 0)[0]
    got = dense_matching_loss(map_a, map_b, border, border, temperature=0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_dense_loss_falls_as_the_true_cell_stands_out_and_its_target_stays_in_the_map():
    map_b = nnF.normalize(torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(0)), dim=0)
    kp = torch.tensor([[2.5, 1.5], [0.2, 4.9], [5.9, 0.1]])   # a centre, and two points in border half-cells
    losses = [dense_matching_loss(map_b, map_b, kp, kp, t).item() for t in (0.5, 0.1, 0.02)]
    assert losses[0] > losses[1] > losses[2] >= 0             # map a = map b: sharper peaks, lower loss
    assert all(math.isfinite(x) for x in losses)


def test_the_dense_term_adds_its_weight_times_the_loss():
    level_a, level_b = _smooth_map(30).float(), _smooth_map(31).float()
    whole_a, whole_b = _smooth_map(32, c=8).float(), _smooth_map(33, c=8).float()
    whole_a, whole_b = (nnF.normalize(m, dim=0) for m in (whole_a, whole_b))
    kp = (_keypoints(6, seed=4) * 2).float()
    size = (2 * W, 2 * H)
    seed_loss = FinetuneLossConfig()
    dense = dataclasses.replace(seed_loss, dense_weight=0.7, dense_temperature=0.1)

    def loss(config):
        return total_finetune_loss([level_a], [level_b], kp, kp, size, size, pool_size=1, config=config,
                                   generator=torch.Generator().manual_seed(0), combined=(whole_a, whole_b, 2.0))
    base, _ = loss(seed_loss)
    total, parts = loss(dense)
    expected = dense_matching_loss(whole_a, whole_b, kp / 2, kp / 2, 0.1)
    assert parts["dense"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert total.item() == pytest.approx(base.item() + 0.7 * expected.item(), rel=1e-5)
    assert dense.needs_whole_maps and not seed_loss.needs_whole_maps
    with pytest.raises(InputError, match="dense_temperature > 0"):
        FinetuneLossConfig(dense_temperature=0)
