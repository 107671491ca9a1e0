"""NetVLAD global descriptors and PCA whitening.

NetVLAD (Arandjelović et al., CVPR 2016) aggregates a map of D-dimensional local
descriptors into K cluster residuals: each descriptor x_i is softly assigned to the
clusters with a_k(x_i) = softmax_k(w_k·x_i + b_k), the residuals
V_k = Σ_i a_k(x_i) (x_i − c_k) are L2-normalised per cluster (intra-normalisation),
concatenated to K·D values and L2-normalised again. Local descriptors are
L2-normalised per location before aggregation. Initialised from k-means centroids
c_k with w_k = 2α c_k and b_k = −α‖c_k‖², the soft assignment is a softmax over
−α‖x − c_k‖², i.e. nearest-centroid assignment that sharpens with α.

Local descriptors are centred before they are normalised: the mean descriptor of
the k-means sample is a buffer (``centre``, zero until initialised). Descriptors
of an untrained network are nearly parallel (mean cosine above 0.99), so without
centring all residuals share one large component, α comes out in the thousands,
and training drives every image to the same global descriptor.

Whitening projects descriptors on the principal axes of a set of reference
descriptors, divides each axis by its standard deviation, and L2-normalises again.

A multi-scale descriptor describes one image at several sizes, the longer side
``max_side * s`` for each scale ``s``: the unit descriptors of the scales are summed
and L2-normalised again (``pool_scales``), before any whitening. Scales below 1
let a zoomed-in query meet its references at their scale. ``SINGLE_SCALE`` is the
plain descriptor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2
from torch import nn

from ..errors import InputError, check_shape
from .hypercolumn import SINGLE_SCALE, check_scales, l2_normalize  # noqa: F401 (re-exported)
from .weights_info import bundled_name_of

RETRIEVAL_SOURCES = ("conv5_3", "hypercolumns")
"""Local maps that NetVLAD may pool: the backbone's conv5_3, or the dense hypercolumns."""
LEGACY_HEAD_NORMALIZATION = "joint"
"""What a hypercolumn head's file without a ``hypercolumn_norm`` entry pooled: such heads
were trained before locseg normalised each level (``locseg.models.hypercolumn``)."""


def pool_scales(descriptors: torch.Tensor) -> torch.Tensor:
    """(S, D) unit descriptors of one image at S scales → its (D,) multi-scale descriptor
    (for one scale, that scale's descriptor as it is)."""
    check_shape("descriptors", descriptors.shape, "(S, D)", descriptors.ndim == 2 and len(descriptors) > 0)
    return descriptors[0] if len(descriptors) == 1 else F.normalize(descriptors.sum(0), dim=0)


def pooled_normalization(metadata: Mapping[str, str]) -> str | None:
    """The hypercolumn normalisation a retrieval head was trained to pool, from its
    safetensors metadata; None for a conv5_3 head, which pools no hypercolumns."""
    if metadata.get("source", "conv5_3") != "hypercolumns":
        return None
    return metadata.get("hypercolumn_norm", LEGACY_HEAD_NORMALIZATION)


def pooled_weights_error(head: str, pooled_digest: str | None = None, given_digest: str | None = None) -> InputError:
    """The error for a ``hypercolumns`` head asked to pool other hypercolumns than its own,
    naming both weights (by bundled name where a digest is a bundled file's) when known."""
    pooled = f" pool the hypercolumns of {_weights_by_digest(pooled_digest)}" if pooled_digest else \
        " pool the hypercolumns of other backbone weights"
    given = f"not of {_weights_by_digest(given_digest)}" if given_digest else "not of the hypercolumn weights given"
    return InputError(f"retrieval weights {head!r}{pooled}, {given}; give those, or train a head on these "
                      "(locseg train-retrieval --source hypercolumns --freeze-backbone --init ...)")


def _weights_by_digest(digest: str) -> str:
    """A bundled name for the weights with sha256 ``digest``, else the digest's first digits."""
    return bundled_name_of(digest) or f"the weights with sha256 {digest[:12]}…"


def check_pooled_weights(head: str, metadata: Mapping[str, str], hypercolumn_digest: str | None) -> None:
    """Refuse a ``hypercolumns`` head over hypercolumn weights it was not trained on.

    A head's metadata ``init_digest`` is the sha256 (``weights_digest``) of the
    hypercolumn weights it was trained to pool; ``hypercolumn_digest`` is that of the
    weights it is about to pool. Heads without the entry, and conv5_3 heads, pass.
    """
    trained_on = metadata.get("init_digest")
    if pooled_normalization(metadata) is not None and trained_on and hypercolumn_digest \
            and trained_on != hypercolumn_digest:
        raise pooled_weights_error(head, trained_on, hypercolumn_digest)


class NetVLAD(nn.Module):
    """Aggregates (B, D, H, W) local descriptors into (B, K·D) global descriptors.

    Args:
        dim: D, channels of the input map (512 for VGG-16 conv5_3).
        clusters: K, number of clusters (64 by default).
    """

    def __init__(self, dim: int = 512, clusters: int = 64) -> None:
        super().__init__()
        self.dim, self.clusters = dim, clusters
        self.assign = nn.Conv2d(dim, clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.randn(clusters, dim) / math.sqrt(dim))
        self.register_buffer("centre", torch.zeros(dim))

    @torch.no_grad()
    def init_from_descriptors(self, descriptors: torch.Tensor, seed: int = 0, iterations: int = 30) -> None:
        """Initialise centroids by k-means and the assignment from them.

        Args:
            descriptors: (N, D) local descriptors, N ≥ K (centred and L2-normalised here).
        """
        check_shape("descriptors", tuple(descriptors.shape), f"(N >= {self.clusters}, {self.dim})",
                    descriptors.ndim == 2 and descriptors.shape[1] == self.dim
                    and descriptors.shape[0] >= self.clusters)
        self.centre.copy_(descriptors.mean(0).to(self.centre))
        x = F.normalize(descriptors.double() - self.centre.double(), dim=1).cpu().numpy()
        centroids, _ = kmeans2(x, self.clusters, iter=iterations, minit="++", seed=seed)
        centroids = torch.from_numpy(centroids)
        # alpha: make the nearest centroid 100 times more likely than the second nearest, on average.
        distances = torch.cdist(torch.from_numpy(x), centroids).pow(2).sort(dim=1).values
        gap = (distances[:, 1] - distances[:, 0]).mean().clamp_min(1e-6)
        alpha = min(math.log(100.0) / float(gap), 1e4)  # untrained features can be nearly identical
        self.centroids.copy_(centroids.to(self.centroids))
        self.assign.weight.copy_((2 * alpha * centroids).to(self.assign.weight)[:, :, None, None])
        self.assign.bias.copy_((-alpha * centroids.pow(2).sum(1)).to(self.assign.bias))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) local descriptors → (B, K·D) unit global descriptors."""
        check_shape("features", tuple(features.shape), f"(B, {self.dim}, H, W)",
                    features.ndim == 4 and features.shape[1] == self.dim)
        # one row per location, (B, HW, D): a view of a channels-last map (hypercolumns are)
        x = features.permute(0, 2, 3, 1).reshape(features.shape[0], -1, self.dim)
        x = l2_normalize(x - self.centre, dim=2)
        soft = F.softmax(F.linear(x, self.assign.weight.flatten(1), self.assign.bias), dim=2)   # (B, HW, K)
        # Σ_i a_k(x_i) x_i − c_k Σ_i a_k(x_i)
        vlad = soft.transpose(1, 2) @ x - self.centroids[None] * soft.sum(1)[..., None]
        # A cluster with no assignment has a zero residual; l2_normalize keeps its gradient finite.
        vlad = l2_normalize(vlad, dim=2)
        return l2_normalize(vlad.flatten(1), dim=1)


class PCAWhitening(nn.Module):
    """PCA whitening fitted on a set of descriptors: (B, D) → (B, d), unit norm.

    ``fit`` keeps at most ``dim`` axes and never more than N − 1 (the rank of N
    centred samples). Buffers hold the fitted state so it saves with the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("projection", torch.zeros(0, 0))

    @property
    def fitted(self) -> bool:
        return self.projection.numel() > 0

    @torch.no_grad()
    def fit(self, descriptors: torch.Tensor, dim: int = 4096, eps: float = 1e-8) -> PCAWhitening:
        """Fit on (N, D) descriptors, N ≥ 2."""
        check_shape("descriptors", tuple(descriptors.shape), "(N >= 2, D)",
                    descriptors.ndim == 2 and descriptors.shape[0] >= 2)
        x = descriptors.double()
        mean = x.mean(0)
        _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
        keep = min(dim, x.shape[0] - 1, int((singular > singular[0] * 1e-9).sum()))
        std = singular[:keep] / math.sqrt(x.shape[0] - 1)
        self.mean = mean.to(descriptors.dtype)
        self.projection = (vh[:keep].T / (std + eps)).to(descriptors.dtype)  # (D, d)
        return self

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise InputError("PCAWhitening is not fitted; call fit() on reference descriptors first")
        check_shape("descriptors", tuple(descriptors.shape), f"(B, {self.mean.shape[0]})",
                    descriptors.ndim == 2 and descriptors.shape[1] == self.mean.shape[0])
        return F.normalize((descriptors - self.mean) @ self.projection, dim=1)


def top_k(query: torch.Tensor, database: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar database descriptors of each query, by cosine similarity.

    Args:
        query: (Q, D) unit descriptors; database: (N, D) unit descriptors.
    Returns:
        scores (Q, min(k, N)), indices (Q, min(k, N)), most similar first.
    """
    check_shape("database", tuple(database.shape), f"(N, {query.shape[-1]})",
                database.ndim == 2 and database.shape[-1] == query.shape[-1])
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    return (query @ database.T).topk(min(k, database.shape[0]), dim=1)


def recall_at(ranked: np.ndarray, positives: list[set[int]], ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Percentage of queries with a positive among their first k retrieved items.

    Args:
        ranked: (Q, K) database indices per query, best first.
        positives: per query, the set of database indices that count as correct.
    """
    hits = {k: 0 for k in ks}
    for row, good in zip(ranked, positives):
        for k in ks:
            hits[k] += bool(good.intersection(row[:k].tolist()))
    return {k: 100.0 * hits[k] / max(len(positives), 1) for k in ks}
