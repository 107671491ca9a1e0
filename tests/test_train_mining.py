"""Progressive hard-negative mining and positive sampling (seed 002, section 3.3)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as nnF

from locseg.errors import InputError, ShapeError
from locseg.train import mining
from locseg.train.mining import mine_negatives, mining_pool_size, sample_positives

H, W, C = 6, 8, 8
TRUE_CELL = (2, 3)  # (row, col): centre (3.5, 2.5)
TWIN_CELL = (2, 4)  # an exact copy of the true match, 1 cell away
DECOYS = {(0, 0): 0.05, (5, 7): 0.1, (4, 1): 0.2, (0, 7): 0.3}  # cell -> perturbation size


def _decoy_map() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A map where the true match's feature appears at TRUE_CELL and TWIN_CELL, and near-copies at DECOYS."""
    g = torch.Generator().manual_seed(3)
    dense = nnF.normalize(torch.randn(C, H, W, generator=g, dtype=torch.float64), dim=0)
    desc = dense[:, TRUE_CELL[0], TRUE_CELL[1]].clone()
    dense[:, TWIN_CELL[0], TWIN_CELL[1]] = desc
    for (i, j), size in DECOYS.items():
        noise = torch.randn(C, generator=g, dtype=torch.float64)
        dense[:, i, j] = nnF.normalize(desc + size * noise / noise.norm(), dim=0)
    kp = torch.tensor([TRUE_CELL[1] + 0.5, TRUE_CELL[0] + 0.5], dtype=torch.float64)
    return dense, desc, kp


def _brute_force_ranking(dense, desc, kp, radius):
    """(distance, cell centre) of every candidate, hardest first, by explicit loops."""
    out = []
    for i in range(dense.shape[1]):
        for j in range(dense.shape[2]):
            centre = (j + 0.5, i + 0.5)
            if math.hypot(centre[0] - float(kp[0]), centre[1] - float(kp[1])) > radius:
                out.append((float((dense[:, i, j] - desc).norm()), centre))
    return sorted(out)


# ----------------------------------------------------------------------------- pool size


def test_pool_size_schedule_values():
    assert mining_pool_size(0) == 300
    assert mining_pool_size(10000) == 165  # 300 e^-0.6 = 164.64
    assert mining_pool_size(100000) == 5
    assert mining_pool_size(10**9) == 5


def test_pool_size_is_monotone_and_rounds_half_up():
    sizes = [mining_pool_size(k) for k in range(0, 200000, 250)]
    assert all(b <= a for a, b in itertools.pairwise(sizes))
    assert min(sizes) == 5 and max(sizes) == 300
    # 2.5 rounds to 3 (half up), where Python's round would give 2
    assert mining_pool_size(0, start=5, floor=1, rate=math.log(2), scale=1) == 5
    assert mining_pool_size(1, start=5, floor=1, rate=math.log(2), scale=1) == 3


@pytest.mark.parametrize("step", [-1, 1.5, True])
def test_pool_size_rejects_bad_steps(step):
    with pytest.raises(InputError, match="step"):
        mining_pool_size(step)


# ----------------------------------------------------------------------------- positives


def test_sample_positives_subset_without_replacement():
    idx = sample_positives(100, n=10, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (10,) and idx.dtype == torch.long
    assert len(set(idx.tolist())) == 10 and 0 <= int(idx.min()) and int(idx.max()) < 100
    again = sample_positives(100, n=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_sample_positives_keeps_all_when_fewer():
    idx = sample_positives(7, n=1024, generator=torch.Generator().manual_seed(1))
    assert sorted(idx.tolist()) == list(range(7))
    assert sample_positives(0).shape == (0,)
    with pytest.raises(InputError):
        sample_positives(-1)


# ----------------------------------------------------------------------------- mining


def test_mined_negatives_avoid_the_radius_and_come_from_the_pool():
    dense, desc, kp = _decoy_map()
    radius, pool = 1.5, 3
    n = 300
    mined = mine_negatives(
        desc.expand(n, C), dense, kp.expand(n, 2), radius, pool, generator=torch.Generator().manual_seed(0)
    )
    ranking = _brute_force_ranking(dense, desc, kp, radius)
    pool_centres = {centre for _, centre in ranking[:pool]}
    threshold = ranking[pool - 1][0]
    chosen = {tuple(p) for p in mined.keypoints.tolist()}
    assert chosen == pool_centres  # every one of the 3 hardest is drawn, nothing else
    assert bool(((mined.keypoints - kp).norm(dim=-1) > radius).all())
    assert bool((mined.distance <= threshold + 1e-9).all())
    assert (TWIN_CELL[1] + 0.5, TWIN_CELL[0] + 0.5) not in chosen  # the exact copy is inside alpha
    # roughly uniform over the pool: each of 3 cells drawn 100 +- 40 times in 300 draws
    counts = torch.unique(mined.index, return_counts=True)[1]
    assert bool((counts > 60).all())


def test_pool_of_one_is_the_hardest():
    dense, desc, kp = _decoy_map()
    mined = mine_negatives(desc[None], dense, kp[None], 1.5, 1, generator=torch.Generator().manual_seed(5))
    best_distance, best_centre = _brute_force_ranking(dense, desc, kp, 1.5)[0]
    assert tuple(mined.keypoints[0].tolist()) == best_centre == (0.5, 0.5)  # the 0.05 decoy
    assert mined.distance[0].item() == pytest.approx(best_distance, abs=1e-9)


def test_zero_radius_only_excludes_the_true_cell():
    dense, desc, kp = _decoy_map()
    mined = mine_negatives(desc[None], dense, kp[None], 0.0, 1)
    assert tuple(mined.keypoints[0].tolist()) == (TWIN_CELL[1] + 0.5, TWIN_CELL[0] + 0.5)
    assert mined.distance[0].item() < 1e-5


def test_mining_is_reproducible_and_distances_are_differentiable():
    g = torch.Generator().manual_seed(0)
    dense = nnF.normalize(torch.randn(4, 5, 7, generator=g), dim=0).requires_grad_()
    desc = nnF.normalize(torch.randn(20, 4, generator=g), dim=1).requires_grad_()
    kp = torch.rand(20, 2, generator=g) * torch.tensor([7.0, 5.0])
    first = mine_negatives(desc, dense, kp, 1.0, 6, generator=torch.Generator().manual_seed(9))
    second = mine_negatives(desc, dense, kp, 1.0, 6, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first.keypoints, second.keypoints)
    assert bool(((first.keypoints - 0.5) == (first.keypoints - 0.5).round()).all())  # cell centres
    expected = (desc - dense.detach().reshape(4, -1)[:, first.index].T).norm(dim=-1)
    torch.testing.assert_close(first.distance, expected)
    first.distance.sum().backward()
    assert dense.grad is not None and dense.grad.abs().sum() > 0
    assert desc.grad is not None and desc.grad.abs().sum() > 0


def test_chunking_does_not_change_the_result(monkeypatch):
    g = torch.Generator().manual_seed(2)
    dense = nnF.normalize(torch.randn(6, 9, 11, generator=g), dim=0)
    desc = nnF.normalize(torch.randn(50, 6, generator=g), dim=1)
    kp = torch.rand(50, 2, generator=g) * torch.tensor([11.0, 9.0])
    whole = mine_negatives(desc, dense, kp, 2.0, 4, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(mining, "_CHUNK_ENTRIES", 7 * 99)  # 7 positives per chunk
    chunked = mine_negatives(desc, dense, kp, 2.0, 4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(whole.index, chunked.index)


def test_pool_larger_than_the_candidates_and_empty_input():
    dense, desc, kp = _decoy_map()
    mined = mine_negatives(desc[None], dense, kp[None], 1.5, 10**6)
    assert bool(((mined.keypoints - kp).norm(dim=-1) > 1.5).all())
    empty = mine_negatives(desc[None][:0], dense, kp[None][:0], 1.5, 5)
    assert empty.keypoints.shape == (0, 2) and empty.distance.shape == (0,)


def test_mining_rejects_bad_inputs():
    dense, desc, kp = _decoy_map()
    with pytest.raises(InputError, match="no negative candidate"):
        mine_negatives(desc[None], dense, kp[None], 100.0, 5)
    with pytest.raises(ShapeError, match="desc_a"):
        mine_negatives(desc[None, :3], dense, kp[None], 1.0, 5)
    with pytest.raises(ShapeError, match="kp_b"):
        mine_negatives(desc[None], dense, kp[None, :1], 1.0, 5)
    with pytest.raises(ShapeError, match="dense_b"):
        mine_negatives(desc[None], dense[None], kp[None], 1.0, 5)
    with pytest.raises(InputError, match="pool_size"):
        mine_negatives(desc[None], dense, kp[None], 1.0, 0)
    with pytest.raises(InputError, match="radius"):
        mine_negatives(desc[None], dense, kp[None], -1.0, 5)
