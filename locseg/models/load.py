"""Models from weight sources: backbones and hypercolumn extractors ready to run.

A weight source is what ``locseg.models.weights.resolve_weights`` accepts (a bundled
name, a file or a URL). ``None`` means random weights from a seed, drawn without
touching the caller's random state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..errors import InputError
from .backbone import VGG16, build_backbone
from .hypercolumn import DEFAULT_LAYERS, DEFAULT_NORMALIZATION, Hypercolumns
from .weights import _BUNDLED, file_sha256, load_state_dict, resolve_weights


def backbone_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a state dict, from its top level or under ``backbone.``.

    Raises:
        InputError: there are none.
    """
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    features |= {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("backbone.features.")}
    if not features:
        raise InputError(f"weights {source!r} hold no 'features.*' tensors for a VGG backbone")
    return features


def load_backbone(backbone: str, weights: str | None, seed: int = 0) -> VGG16:
    """The backbone called ``backbone`` with ``weights`` (or seeded random weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(backbone)
    if weights:
        model.load_state_dict(backbone_state(load_state_dict(weights), weights))
    return model


def load_hypercolumns(backbone: str, weights: str | None, layers: Iterable[int] = DEFAULT_LAYERS,
                      seed: int = 0, normalization: str = DEFAULT_NORMALIZATION) -> Hypercolumns:
    """A hypercolumn extractor on ``load_backbone(backbone, weights, seed)``
    (``normalization``: see ``locseg.models.hypercolumn``)."""
    return Hypercolumns(load_backbone(backbone, weights, seed), layers, normalization)


def weights_digest(weights: str | None, seed: int = 0) -> str:
    """sha256 of the file behind a weight source (the registry's digest for bundled
    names, without reading the file); ``random-<seed>`` for random weights."""
    if not weights:
        return f"random-{seed}"
    if weights in _BUNDLED:
        return _BUNDLED[weights].sha256
    return file_sha256(resolve_weights(weights))
