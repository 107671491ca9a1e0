"""Positive sampling and progressive hard-negative mining for feature fine-tuning.

Seed 002, section 3.3: for each positive correspondence (K_a, K_b), the
candidate negatives are the pixels u_b of map b farther than a radius alpha
from the true match, ``||u_b - K_b|| > alpha``. They are ranked by feature
distance to the positive's descriptor, ``||F_a(K_a) - F_b(u_b)||``, ascending:
the closest candidates are the hardest (the negative term of the DMC loss
``max(0, M- - d)^2`` is largest for them). One negative is drawn uniformly
among the M hardest, with M shrinking over training (``mining_pool_size``),
from 300 to a floor of 5. (The seed's "sort by loss in increasing order"
is read as hardest first, as in the GN-Net re-implementation in cvg/pixloc,
which draws among the top-k smallest distances.)

Conventions (the ones of ``locseg.train.losses``):

- A dense map is ``(C, H, W)``, L2-normalised per pixel by the caller (the
  mining itself does not assume it).
- Keypoints are COLMAP pixel coordinates in the map's OWN grid: the centre of
  map cell (row i, column j) is ``(x, y) = (j + 0.5, i + 0.5)``. Candidate
  negatives are cell centres, so a negative's feature is the cell's value,
  which is exactly what bilinear sampling at the centre returns.
- Random draws use the ``torch.Generator`` given (a CPU generator; draws are
  made on the CPU and moved to the tensors' device), so a seeded generator
  reproduces the same samples.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..errors import InputError, check_shape

__all__ = ["MinedNegatives", "mine_negatives", "mining_pool_size", "sample_positives"]

# Candidates scored per chunk of positives: rows x H*W entries of the distance
# matrix (and of the radius mask); 2**22 float32 entries is 16 MB.
_CHUNK_ENTRIES = 1 << 22


def mining_pool_size(
    step: int, start: int = 300, floor: int = 5, rate: float = 0.6, scale: float = 10000.0
) -> int:
    """Size M of the pool of hardest candidates a negative is drawn from.

    ``M = max(floor, round_half_up(start * exp(-rate * step / scale)))``; with
    the defaults this is seed 002's ``M = max(5, 300 e^(-0.6 k / 10000))``:
    300 at step 0, 165 at step 10 000 (164.64 rounded), 5 from step ~67 000 on.
    Rounding is half up (``floor(x + 0.5)``), not Python's half-to-even.

    Args:
        step: training iteration k, >= 0.
        start: pool size at step 0, >= 1.
        floor: smallest pool size, >= 1.
        rate: decay rate per ``scale`` steps, >= 0.
        scale: steps per unit of decay, > 0.

    Returns:
        M, a positive int, non-increasing in ``step``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InputError(f"step must be an int >= 0, got {step!r}")
    if start < 1 or floor < 1:
        raise InputError(f"start and floor must be >= 1, got start={start}, floor={floor}")
    if rate < 0 or scale <= 0:
        raise InputError(f"need rate >= 0 and scale > 0, got rate={rate}, scale={scale}")
    decayed = start * math.exp(-rate * step / scale)
    return max(int(floor), math.floor(decayed + 0.5))


def sample_positives(
    n_available: int, n: int = 1024, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of a random subset of the available positive correspondences.

    Args:
        n_available: number of correspondences to choose from, >= 0.
        n: how many to keep, >= 0; all are kept when fewer are available.
        generator: CPU random generator, for reproducible draws.

    Returns:
        ``(min(n, n_available),)`` int64 indices, distinct, in random order.
    """
    if isinstance(n_available, bool) or not isinstance(n_available, int) or n_available < 0:
        raise InputError(f"n_available must be an int >= 0, got {n_available!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"n must be an int >= 0, got {n!r}")
    return torch.randperm(n_available, generator=generator)[: min(n, n_available)]


class MinedNegatives(NamedTuple):
    """One mined negative per positive.

    Attributes:
        keypoints: ``(N, 2)`` cell centres ``(x, y)`` in map b's grid (COLMAP).
        distance: ``(N,)`` ``||desc_a - F_b(keypoints)||``, recomputed from the
            inputs so that it is differentiable w.r.t. ``desc_a`` and ``dense_b``.
        index: ``(N,)`` flat cell index ``i * W + j`` of each negative.
    """

    keypoints: torch.Tensor
    distance: torch.Tensor
    index: torch.Tensor


def mine_negatives(
    desc_a: torch.Tensor,
    dense_b: torch.Tensor,
    kp_b: torch.Tensor,
    radius: float,
    pool_size: int,
    generator: torch.Generator | None = None,
) -> MinedNegatives:
    """Draw one hard negative in map b for each positive correspondence.

    For positive n, the candidates are the cells of ``dense_b`` whose centre
    is farther than ``radius`` from ``kp_b[n]``; they are ranked by
    ``||desc_a[n] - F_b(cell)||`` ascending (hardest first), and one is drawn
    uniformly among the ``pool_size`` hardest (among all candidates if fewer).
    Ties at the pool's edge are broken by ``torch.topk``.

    Ranking runs without gradient on chunks of positives, so memory stays
    bounded (about ``_CHUNK_ENTRIES`` distances at a time) whatever N and the
    map size. The returned distances are then recomputed with autograd from
    ``desc_a`` and the chosen cells of ``dense_b``.

    Args:
        desc_a: ``(N, C)`` descriptors of the positives in map a, ``F_a(kp_a)``.
        dense_b: ``(C, H, W)`` dense map of image b.
        kp_b: ``(N, 2)`` true matches ``(x, y)`` in map b's grid (COLMAP).
        radius: alpha, in cells of map b, >= 0. Cells at distance <= alpha from
            the true match are never negatives.
        pool_size: M >= 1, see ``mining_pool_size``.
        generator: CPU random generator, for reproducible draws.

    Returns:
        ``MinedNegatives`` (keypoints, distance, index).

    Raises:
        ShapeError: on malformed shapes.
        InputError: on a bad radius or pool size, or when a positive has no
            candidate at all (the radius covers the whole map).
    """
    check_shape("dense_b", dense_b.shape, "(C, H, W)", dense_b.dim() == 3)
    c, _, w = dense_b.shape
    check_shape("desc_a", desc_a.shape, f"(N, {c})", desc_a.dim() == 2 and desc_a.shape[1] == c)
    n = desc_a.shape[0]
    check_shape("kp_b", kp_b.shape, f"({n}, 2)", kp_b.shape == (n, 2))
    if not kp_b.is_floating_point():
        raise InputError(f"kp_b must be a floating-point tensor, got {kp_b.dtype}")
    if not (math.isfinite(radius) and radius >= 0):
        raise InputError(f"radius must be finite and >= 0, got {radius!r}")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise InputError(f"pool_size must be an int >= 1, got {pool_size!r}")

    index = _rank_and_draw(desc_a.detach(), dense_b.detach(), kp_b.detach(), radius, pool_size, generator)
    rows, cols = index // w, index % w
    keypoints = torch.stack([cols, rows], dim=-1).to(kp_b.dtype) + 0.5
    negatives = dense_b[:, rows, cols].T  # (N, C), autograd-connected to dense_b
    distance = torch.sqrt(((desc_a - negatives) ** 2).sum(-1).clamp_min(1e-12))
    return MinedNegatives(keypoints, distance, index)


def _rank_and_draw(
    desc_a: torch.Tensor,
    dense_b: torch.Tensor,
    kp_b: torch.Tensor,
    radius: float,
    pool_size: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Flat cell index of one negative per positive (no autograd), see mine_negatives."""
    c, h, w = dense_b.shape
    n = desc_a.shape[0]
    device = desc_a.device
    flat_b = dense_b.reshape(c, h * w)
    sq_norm_b = (flat_b**2).sum(0)  # (HW,)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=kp_b.dtype) + 0.5,
        torch.arange(w, device=device, dtype=kp_b.dtype) + 0.5,
        indexing="ij",
    )
    centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (HW, 2)
    k = min(pool_size, h * w)
    uniform = torch.rand(n, generator=generator, dtype=torch.float64).to(device)
    chunk = max(1, _CHUNK_ENTRIES // max(1, h * w))
    out = torch.empty(n, dtype=torch.long, device=device)
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            d = desc_a[start:stop]
            # squared feature distance ||d||^2 - 2 d.F + ||F||^2 (ranking only)
            sq = torch.addmm(sq_norm_b[None], d, flat_b, alpha=-2.0)
            sq.add_((d**2).sum(-1, keepdim=True))
            kp = kp_b[start:stop]
            dx = kp[:, :1] - centres[:, 0]
            dy = kp[:, 1:] - centres[:, 1]
            near = dx * dx + dy * dy <= radius * radius
            sq.masked_fill_(near, float("inf"))
            values, idx = torch.topk(sq, k, dim=-1, largest=False, sorted=True)
            n_cand = torch.isfinite(values).sum(-1)
            if bool((n_cand == 0).any()):
                bad = start + int(torch.nonzero(n_cand == 0)[0])
                raise InputError(
                    f"radius {radius} leaves no negative candidate for positive {bad} "
                    f"at {kp_b[bad].tolist()} in a {w}x{h} map"
                )
            pick = torch.minimum(torch.floor(uniform[start:stop] * n_cand).long(), n_cand - 1)
            out[start:stop] = idx.gather(-1, pick[:, None])[:, 0]
    return out
