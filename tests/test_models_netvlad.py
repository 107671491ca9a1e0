"""NetVLAD aggregation, its k-means initialisation, PCA whitening and retrieval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from locseg.errors import InputError, ShapeError
from locseg.models.netvlad import NetVLAD, PCAWhitening, recall_at, top_k


def test_hard_assignment_gives_normalised_residuals():
    """With a sharp assignment every descriptor goes to its nearest centroid."""
    layer = NetVLAD(dim=2, clusters=2).double()
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    alpha = 1e3
    with torch.no_grad():
        layer.centroids.copy_(centroids)
        layer.assign.weight.copy_(2 * alpha * centroids[:, :, None, None])
        layer.assign.bias.copy_(-alpha * centroids.pow(2).sum(1))
    xa, xb = F.normalize(torch.tensor([1.0, 0.2], dtype=torch.float64), dim=0), \
        F.normalize(torch.tensor([0.1, 1.0], dtype=torch.float64), dim=0)
    features = torch.stack([xa, xb], 1)[None, :, None, :]  # (1, 2, 1, 2): two locations
    expected = torch.cat([F.normalize(xa - centroids[0], dim=0), F.normalize(xb - centroids[1], dim=0)]) / math.sqrt(2)
    torch.testing.assert_close(layer(features)[0], expected, atol=1e-9, rtol=0)


def test_descriptor_shape_norms_and_permutation_invariance():
    torch.manual_seed(0)
    layer = NetVLAD(dim=16, clusters=8)
    features = torch.randn(3, 16, 5, 7)
    out = layer(features)
    assert out.shape == (3, 8 * 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    blocks = out.view(3, 8, 16).norm(dim=2)
    torch.testing.assert_close(blocks, torch.full((3, 8), 1 / math.sqrt(8)))  # intra-normalised
    shuffled = features.flatten(2)[:, :, torch.randperm(35)].view(3, 16, 5, 7)
    torch.testing.assert_close(layer(shuffled), out, atol=1e-6, rtol=0)
    out.sum().backward()
    assert layer.assign.weight.grad.abs().sum() > 0 and layer.centroids.grad.abs().sum() > 0


def test_kmeans_initialisation_finds_the_clusters():
    rng = np.random.default_rng(0)
    centres = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    samples = torch.cat([c + 0.01 * torch.from_numpy(rng.standard_normal((50, 8))) for c in centres]).float()
    layer = NetVLAD(dim=8, clusters=4)
    layer.init_from_descriptors(samples, seed=0)
    torch.testing.assert_close(layer.centre, samples.mean(0))
    expected = F.normalize(centres.double() - layer.centre.double(), dim=1)  # clusters of the centred data
    nearest = torch.cdist(layer.centroids.detach().double(), expected).min(1).values
    assert (nearest < 0.05).all()
    # The assignment picks each sample's own cluster, with high confidence.
    soft = F.softmax(layer.assign(F.normalize(samples - layer.centre, dim=1)[:, :, None, None])[:, :, 0, 0], dim=1)
    assert soft.max(1).values.mean() > 0.9
    with pytest.raises(ShapeError, match="descriptors"):
        layer.init_from_descriptors(samples[:3])


def test_whitening_decorrelates_the_fitted_set():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    data = torch.randn(500, 6, generator=generator, dtype=torch.float64) @ mixing + 3.0
    whitening = PCAWhitening().fit(data)
    projected = (data - whitening.mean) @ whitening.projection
    torch.testing.assert_close(torch.cov(projected.T), torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(whitening(data).norm(dim=1), torch.ones(500, dtype=torch.float64))
    few = PCAWhitening().fit(data[:10], dim=4096)
    assert few.projection.shape == (6, 6)  # full rank: min(dim, N - 1, D) = 6
    assert PCAWhitening().fit(data[:5]).projection.shape == (6, 4)  # rank of 5 centred samples
    with pytest.raises(InputError, match="not fitted"):
        PCAWhitening()(data)


def test_top_k_and_recall():
    database = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    query = F.normalize(torch.tensor([[1.0, 0.1], [0.0, 1.0]]), dim=1)
    scores, indices = top_k(query, database, k=2)
    assert indices.tolist() == [[0, 2], [1, 2]]
    assert (scores[:, 0] >= scores[:, 1]).all()
    assert top_k(query, database, k=10)[1].shape == (2, 3)
    recall = recall_at(np.array([[0, 2, 1], [2, 0, 1]]), [{2}, {1}], ks=(1, 2, 3))
    assert recall == {1: 0.0, 2: 50.0, 3: 100.0}
    with pytest.raises(InputError, match="k must be"):
        top_k(query, database, k=0)


def test_nearly_parallel_descriptors_still_spread():
    """Untrained networks give local descriptors with cosines above 0.99; centring them keeps
    the assignment soft enough to learn (alpha in the tens, not thousands) and images apart."""
    generator = torch.Generator().manual_seed(0)
    common = F.normalize(torch.rand(32, generator=generator), dim=0)
    maps = common[None, :, None, None] + 0.01 * torch.randn(6, 32, 8, 8, generator=generator)
    assert F.cosine_similarity(maps[0, :, 0, 0], maps[1, :, 3, 3], dim=0) > 0.99
    layer = NetVLAD(dim=32, clusters=8)
    layer.init_from_descriptors(maps.permute(0, 2, 3, 1).reshape(-1, 32), seed=0)
    alpha = layer.assign.weight.detach().norm(dim=1).max() / (2 * layer.centroids.detach().norm(dim=1).max())
    assert float(alpha) < 100
    descriptors = layer(maps)
    distances = torch.cdist(descriptors, descriptors)[~torch.eye(6, dtype=torch.bool)]
    assert distances.min() > 0.3


# ----------------------------------------------------------------------------- database-side augmentation
def test_augmented_references_average_their_nearest_neighbours_by_similarity_cubed(monkeypatch):
    from locseg.localize.retrieval import augment_references

    references = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
                             dim=1)
    assert torch.equal(augment_references(references, 0), references)
    augmented = augment_references(references, 1)
    # reference 0's nearest other is 1 (cosine 0.8), and 1's is 0; 2 is orthogonal to both (weight 0)
    expected = F.normalize(torch.stack([references[0] + 0.8 ** 3 * references[1],
                                        references[1] + 0.8 ** 3 * references[0],
                                        references[2]]), dim=1)
    torch.testing.assert_close(augmented, expected)
    torch.testing.assert_close(augment_references(references, 5), augment_references(references, 2))   # N - 1 at most
    many = F.normalize(torch.randn(300, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64), dim=1)
    whole = augment_references(many, 3)
    monkeypatch.setattr("locseg.localize.retrieval.AUGMENTATION_ROWS", 64)   # in blocks of rows: the same
    torch.testing.assert_close(augment_references(many, 3), whole)
    with pytest.raises(InputError, match="neighbours"):
        augment_references(references, -1)


def test_a_reference_seen_by_its_neighbours_ranks_above_a_look_alike_whose_neighbour_is_not():
    """Two views of the query's place (0, 1) and a look-alike (2) whose nearest other view (3)
    turns away from the query: plain ranking picks the look-alike, the augmented ranking the
    place, whose views agree."""
    from locseg.localize.retrieval import rank_references, reference_index

    def unit(values):
        return F.normalize(torch.tensor(values, dtype=torch.float64), dim=-1)

    references = unit([[1.0, 0.2, 0.0, 0.0], [1.0, -0.2, 0.0, 0.0], [1.0, 0.0, 0.3, 0.0], [1.0, 0.0, 0.3, 0.3]])
    query = unit([[1.0, 0.0, 0.12, -0.1]])
    assert rank_references(query, references, 1, None).indices.item() == 2
    assert rank_references(query, references, 1, None, neighbours=1).indices.item() in (0, 1)
    index = reference_index(references, None, 1)
    assert torch.equal(rank_references(query, references, 4, None, index=index).indices,
                       rank_references(query, references, 4, None, neighbours=1).indices)
    with pytest.raises(InputError, match="not both"):
        rank_references(query, references, 4, None, neighbours=1, index=index)
