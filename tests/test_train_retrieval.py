"""NetVLAD training on places of known pose, and retrieval recall."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from locseg.errors import InputError
from locseg.evaluate import retrieval as retrieval_eval
from locseg.io.poses import read_poses
from locseg.models.backbone import build_backbone
from locseg.models.load import weights_digest
from locseg.models.weights import read_safetensors_metadata, save_safetensors
from locseg.train.checkpoint import load_checkpoint
from locseg.train.retrieval import (
    LocalFeatureCache,
    PlaceImages,
    RetrievalConfig,
    RetrievalModel,
    build_model,
    describe,
    load_input,
    train_retrieval,
    triplet_loss,
)

FAST = RetrievalConfig(max_side=96, iterations=3, checkpoint_every=1, negative_radius=10.0,
                       positive_candidates=2, negative_candidates=3, hardest_negatives=2, lr=1e-3)


def _killed_after_two_of_three_steps(street, partial, config):
    """Train ``config`` for 2 steps into ``partial``, then make its checkpoint that of a
    3-step run killed after its step 2."""
    train_retrieval([street], partial, dataclasses.replace(config, iterations=2))
    checkpoint = torch.load(partial, weights_only=True)
    checkpoint["config"]["iterations"] = 3
    torch.save(checkpoint, partial)


def test_triplet_loss_by_hand():
    a, p = torch.tensor([1.0, 0.0]), torch.tensor([0.8, 0.6])   # |a - p| = sqrt(0.4)
    negatives = torch.tensor([[0.0, 1.0], [0.6, 0.8]])           # |a - n| = sqrt(2), sqrt(0.8)
    expected = (0.0 + (0.4 ** 0.5 + 0.5 - 0.8 ** 0.5)) / 2       # the first negative is beyond the margin
    assert float(triplet_loss(a, p, negatives, margin=0.5)) == pytest.approx(expected)


def test_positives_and_negatives_follow_the_poses(small_street):
    places = PlaceImages.from_streets([small_street])
    for i in range(0, len(places.paths), 7):
        for j in places.positives(i, 5.0, 30.0):
            assert places.condition[j] != places.condition[i]
            assert np.linalg.norm(places.centres[j] - places.centres[i]) <= 5.0
            assert places.forward[j] @ places.forward[i] >= np.cos(np.radians(30.0)) - 1e-12
        for j in places.negatives(i, 10.0):
            assert np.linalg.norm(places.centres[j] - places.centres[i]) > 10.0
    with pytest.raises(InputError, match="not a SynthSeasons street"):
        PlaceImages.from_streets([small_street / "images"])


def test_training_resumes_exactly_and_exports_weights(small_street, tmp_path):
    straight = load_checkpoint(train_retrieval([small_street], tmp_path / "straight.pt", FAST))
    partial = tmp_path / "partial.pt"
    _killed_after_two_of_three_steps(small_street, partial, FAST)
    with pytest.raises(InputError, match="trained on other data"):  # the checkpoint records its streets
        train_retrieval([small_street, small_street], partial, FAST, resume=True)
    resumed = load_checkpoint(train_retrieval([small_street], partial, FAST, resume=True))
    assert [h["loss"] for h in resumed.metrics["history"]] == [h["loss"] for h in straight.metrics["history"]]
    for name, value in straight.model_state.items():  # the last step's update too
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)
    exported = tmp_path / "straight.safetensors"
    assert json.loads(read_safetensors_metadata(exported)["sources"])["streets"] == [str(small_street.resolve())]
    model = build_model(dataclasses.replace(FAST, init=str(exported)), PlaceImages.from_streets([small_street]))
    for name, value in model.state_dict().items():
        if not name.startswith("whitening"):
            torch.testing.assert_close(value, straight.model_state[name])


def test_a_cache_of_every_location_pools_to_the_whole_map_descriptor(small_street):
    places = PlaceImages.from_streets([small_street])
    config = dataclasses.replace(FAST, source="hypercolumns", freeze_backbone=True)
    model = build_model(config, places).eval()
    images = [0, 5, 11]
    cache = LocalFeatureCache.build(model, [places.paths[i] for i in images], config.max_side, 10**6, seed=0)
    with torch.no_grad():
        whole = torch.cat([model(load_input(places.paths[i], config.max_side)[None], whiten=False) for i in images])
        cached = model.netvlad(cache.maps(range(len(images))))
    torch.testing.assert_close(cached, whole, rtol=0, atol=2e-3)    # the cache holds float16
    sampled = LocalFeatureCache.build(model, [places.paths[i] for i in images], config.max_side, 50, seed=0)
    assert sampled.samples.shape == (3, 50, model.netvlad.dim)
    with pytest.raises(InputError, match="cache_positions"):
        LocalFeatureCache.build(model, places.paths[:1], config.max_side, 0, seed=0)


def test_frozen_training_uses_the_cache_resumes_exactly_and_keeps_the_backbone(small_street, tmp_path):
    config = dataclasses.replace(FAST, source="hypercolumns", freeze_backbone=True, cache_positions=64)
    straight = load_checkpoint(train_retrieval([small_street], tmp_path / "straight.pt", config))
    partial = tmp_path / "partial.pt"
    _killed_after_two_of_three_steps(small_street, partial, config)
    resumed = load_checkpoint(train_retrieval([small_street], partial, config, resume=True))
    assert [h["loss"] for h in resumed.metrics["history"]] == [h["loss"] for h in straight.metrics["history"]]
    initial = build_model(config, PlaceImages.from_streets([small_street]))
    for name, value in initial.backbone.state_dict().items():
        torch.testing.assert_close(straight.model_state[f"backbone.{name}"], value, rtol=0, atol=0)
    moved = [name for name in ("netvlad.centroids", "netvlad.assign.weight")
             if not torch.equal(straight.model_state[name], initial.state_dict()[name])]
    assert moved, "three steps should move the NetVLAD layer"


def test_a_multiscale_descriptor_pools_the_unit_descriptors_of_its_scales(small_street):
    places = PlaceImages.from_streets([small_street])
    model = build_model(dataclasses.replace(FAST, source="hypercolumns"), places).eval()
    paths = places.paths[:2]
    with torch.no_grad():
        full = torch.cat([model(load_input(p, 96)[None], whiten=False) for p in paths])
        half = torch.cat([model(load_input(p, 48)[None], whiten=False) for p in paths])
    torch.testing.assert_close(describe(model, paths, 96, whiten=False), full)
    pooled = describe(model, paths, 96, whiten=False, scales=(1.0, 0.5))
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(full + half, dim=1))
    assert not torch.allclose(pooled, full, atol=1e-3), "the half scale should move the descriptor"
    for bad in ((), (1.0, 0.0), (1.0, -0.5)):
        with pytest.raises(InputError, match="retrieval scales must be positive"):
            describe(model, paths, 96, scales=bad)


def test_recall_counts_a_reference_near_the_true_pose(small_street, monkeypatch):
    """Descriptors that encode the true camera position retrieve a correct reference first."""
    poses = {**read_poses(small_street / "ground_truth/reference.txt"),
             **read_poses(small_street / "ground_truth/queries.txt")}

    def oracle(model, paths, max_side, whiten=True, progress=None, scales=(1.0,)):
        centres = torch.stack([poses["/".join(p.parts[-3:])].center.float() for p in paths])
        return torch.exp(-torch.cdist(centres, torch.linspace(-5, 30, 64)[:, None] * torch.tensor([1.0, 0, 0])))

    monkeypatch.setattr(retrieval_eval, "describe", oracle)
    recall = retrieval_eval.retrieval_recall(RetrievalModel(), small_street, whiten=False, angle=90.0)
    assert recall["all"][1] == 100.0 and set(recall) >= {"all", "night", "snow"}


def test_a_run_resumes_after_its_init_weights_have_moved(small_street, tmp_path):
    """--init is not read again on --resume, nor k-means run: the checkpoint sets every weight,
    and a head on frozen hypercolumns keeps the digest of its init taken at the start."""
    init = tmp_path / "features.safetensors"   # a backbone alone: NetVLAD starts from k-means
    save_safetensors(build_backbone("vgg16-slim").state_dict(), init)
    config = dataclasses.replace(FAST, init=str(init), source="hypercolumns", freeze_backbone=True,
                                 cache_positions=64)
    straight = load_checkpoint(train_retrieval([small_street], tmp_path / "straight.pt", config))
    partial = tmp_path / "partial.pt"
    _killed_after_two_of_three_steps(small_street, partial, config)
    digest = weights_digest(str(init))
    init.rename(tmp_path / "moved.safetensors")
    resumed = load_checkpoint(train_retrieval([small_street], partial, config, resume=True))
    assert [h["loss"] for h in resumed.metrics["history"]] == [h["loss"] for h in straight.metrics["history"]]
    for name, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)
    assert read_safetensors_metadata(partial.with_suffix(".safetensors"))["init_digest"] == digest
