"""Robust losses for iteratively reweighted least squares (IRLS).

A robust loss ``rho(s; c)`` takes the SQUARED residual norm ``s = ||r||^2 >= 0``
and a scale ``c > 0`` (in the units of ``||r||``: residual norms well below ``c``
are inliers). Every loss here behaves like the plain squared loss near zero,
``rho(s) ~ s`` and ``rho'(0) = 1``, so that costs and Gauss-Newton steps are
comparable across losses. IRLS minimises ``sum_i rho(s_i)`` by weighting each
residual's normal equations with ``rho'(s_i)``.

==============  ====================================  ==============================
name            rho(s)                                weight rho'(s)
==============  ====================================  ==============================
squared         s                                     1
huber           s if s <= c^2, else 2 c sqrt(s) - c^2  1 if s <= c^2, else c / sqrt(s)
cauchy          c^2 log(1 + s / c^2)                  1 / (1 + s / c^2)
geman_mcclure   c^2 s / (c^2 + s)                     c^4 / (c^2 + s)^2
==============  ====================================  ==============================

Example:
    >>> rho, weight = get_robust_loss("cauchy")(torch.tensor([0.0, 1.0]), 1.0)
    >>> rho.tolist(), weight.tolist()
    ([0.0, 0.6931471824645996], [1.0, 0.5])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError, lookup

RobustLoss = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
"""``(s, scale) -> (rho(s), rho'(s))``, elementwise on squared residual norms ``s`` (...)."""


def squared(s: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain least-squares loss; ``scale`` is unused."""
    return s, torch.ones_like(s)


def huber(s: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadratic up to the residual norm ``scale``, linear in the norm beyond."""
    c2 = scale * scale
    inlier = s <= c2
    root = torch.where(inlier, torch.ones_like(s), s).sqrt()  # no sqrt(0) on the unused branch
    rho = torch.where(inlier, s, 2 * scale * root - c2)
    weight = torch.where(inlier, torch.ones_like(s), scale / root)
    return rho, weight


def cauchy(s: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logarithmic growth beyond ``scale`` (Lorentzian)."""
    c2 = scale * scale
    return c2 * torch.log1p(s / c2), 1 / (1 + s / c2)


def geman_mcclure(s: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounded by ``scale^2``: far outliers have vanishing weight."""
    c2 = scale * scale
    return c2 * s / (c2 + s), (c2 / (c2 + s)) ** 2


ROBUST_LOSSES: dict[str, RobustLoss] = {
    "squared": squared,
    "huber": huber,
    "cauchy": cauchy,
    "geman_mcclure": geman_mcclure,
}


def get_robust_loss(name: str) -> RobustLoss:
    """The loss called ``name``; raises RegistryError listing the valid names."""
    return lookup(ROBUST_LOSSES, "robust loss", name)


def robust_cost(name: str, s: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``rho(s)`` and ``rho'(s)`` of the loss ``name`` at squared norms ``s`` (...), scale > 0."""
    if not scale > 0:
        raise InputError(f"robust loss scale must be positive, got {scale}")
    return get_robust_loss(name)(s, scale)
