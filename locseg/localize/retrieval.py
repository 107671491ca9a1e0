"""Image retrieval for the localizer: global descriptors and the top-k references.

A global descriptor is NetVLAD pooling of one of two local feature maps (``RETRIEVAL_SOURCES``):

- ``conv5_3``: the backbone's conv5_3 map, as NetVLAD and S2DHM use it;
- ``hypercolumns``: the dense hypercolumn map that the localizer computes for
  matching anyway, so retrieval costs one VLAD pooling more and nothing else, and
  it pools features trained to agree across conditions.

Retrieval weights are a state dict with ``netvlad.*`` tensors (and, for ``conv5_3``,
optionally ``backbone.features.*`` when the retrieval backbone differs from the
hypercolumn backbone), and the metadata key ``"source"`` naming the pooled map.
Reference descriptors are PCA-whitened with a whitening fitted on the references
themselves (at most ``whitening_dim`` axes, and at most half the number of
references: whitening all N − 1 axes of N samples ranks queries by their noise),
then queries are ranked by cosine similarity. With ``neighbours`` > 0, each whitened
reference descriptor is first averaged with those of its ``neighbours`` most similar
references, weighted by similarity cubed, and normalised again (database-side
augmentation): a place seen from neighbouring frames describes itself by all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError, RegistryError
from ..models.backbone import VGG16
from ..models.load import load_backbone, weights_digest
from ..models.netvlad import (
    RETRIEVAL_SOURCES,
    NetVLAD,
    PCAWhitening,
    check_pooled_weights,
    pooled_normalization,
    pooled_weights_error,
    top_k,
)
from ..models.weights import (
    load_state_dict,
    read_safetensors_metadata,
    resolve_weights,
    sniff_format,
)


class GlobalDescriber(torch.nn.Module):
    """NetVLAD over ``source``: an image and its dense hypercolumns → a (D,) unit descriptor.

    Args:
        source: one of ``RETRIEVAL_SOURCES``.
        netvlad: the trained pooling layer; its ``dim`` is the source's channels.
        backbone: the conv5_3 backbone (``conv5_3`` source only).
        model_id_base: names the weights, for feature-store model ids.
        normalization: ``hypercolumns`` source: the hypercolumn normalisation the head
            was trained to pool (``pooled_normalization``); None for conv5_3.
    """

    def __init__(self, source: str, netvlad: NetVLAD, backbone: VGG16 | None, model_id_base: str,
                 normalization: str | None = None):
        super().__init__()
        if source not in RETRIEVAL_SOURCES:
            raise RegistryError("retrieval source", source, list(RETRIEVAL_SOURCES))
        if source == "conv5_3" and backbone is None:
            raise InputError("conv5_3 retrieval needs a backbone")
        self.source, self.netvlad, self.backbone, self.model_id_base = source, netvlad, backbone, model_id_base
        self.normalization = normalization

    def forward(self, image: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) normalised image and its (1, C, H/4, W/4) hypercolumns → (K·D,)."""
        local = self.backbone.conv5_3(image) if self.source == "conv5_3" else dense
        return self.netvlad(local)[0]


def load_global_describer(weights: str, hypercolumn_backbone: VGG16,
                          hypercolumn_digest: str | None = None) -> GlobalDescriber:
    """Retrieval weights (a bundled name, file or URL) as a ``GlobalDescriber``.

    ``hypercolumn_digest`` (``weights_digest`` of the hypercolumn weights) is checked
    against the weights a ``hypercolumns`` head was trained on, where they say.

    A ``conv5_3`` file without ``backbone.*`` tensors pools the hypercolumn backbone's conv5_3.
    """
    state = load_state_dict(weights)
    netvlad_state = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("netvlad.")}
    if not netvlad_state:
        raise InputError(f"retrieval weights {weights!r} hold no 'netvlad.*' tensors")
    path = resolve_weights(weights)
    metadata = read_safetensors_metadata(path) if sniff_format(path) == "safetensors" else {}
    source = metadata.get("source", "conv5_3")
    dim, clusters = netvlad_state["centroids"].shape[1], netvlad_state["centroids"].shape[0]
    netvlad = NetVLAD(dim, clusters)
    netvlad.load_state_dict(netvlad_state)
    backbone = hypercolumn_backbone
    own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("backbone.")}
    if source == "conv5_3" and own:
        backbone = load_backbone(metadata.get("backbone", hypercolumn_backbone.name), None)
        backbone.load_state_dict(own)
    elif source == "hypercolumns":
        if own and not _same_tensors(own, hypercolumn_backbone.state_dict()):
            raise pooled_weights_error(weights)
        check_pooled_weights(weights, metadata, hypercolumn_digest)
    return GlobalDescriber(source, netvlad, backbone, f"vlad-{source}-{weights_digest(weights)[:12]}",
                           pooled_normalization(metadata))


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k])) for k in a)


@dataclass(frozen=True)
class Ranking:
    """(Q, k) ``indices`` into the references and their cosine ``scores``, best first."""

    indices: torch.Tensor
    scores: torch.Tensor


def fit_whitening(references: torch.Tensor, whitening_dim: int = 64) -> PCAWhitening | None:
    """PCA whitening of (N, D) reference descriptors (None if there are fewer than 4)."""
    if len(references) < 4 or whitening_dim <= 0:
        return None
    return PCAWhitening().fit(references.double(), dim=min(whitening_dim, len(references) // 2))


AUGMENTATION_POWER = 3   # weight of a neighbour: its cosine similarity to the reference, cubed
AUGMENTATION_ROWS = 2048  # references whose neighbours are found at once


def augment_references(references: torch.Tensor, neighbours: int) -> torch.Tensor:
    """(N, D) unit descriptors, each averaged with its ``neighbours`` most similar others
    (weights: similarity³, clamped at 0; itself weighs 1), normalised again; as they are
    for 0 neighbours."""
    if neighbours < 0:
        raise InputError(f"neighbours must be >= 0, got {neighbours}")
    if neighbours == 0 or len(references) < 2:
        return references
    count = min(neighbours, len(references) - 1)
    augmented = []
    for start in range(0, len(references), AUGMENTATION_ROWS):      # memory: AUGMENTATION_ROWS x N similarities
        rows = references[start:start + AUGMENTATION_ROWS]
        similarity = rows @ references.T
        own = torch.arange(len(rows), device=rows.device)
        similarity[own, start + own] = -float("inf")               # itself is added with weight 1 below
        values, indices = similarity.topk(count, dim=1)
        weights = values.clamp_min(0) ** AUGMENTATION_POWER
        augmented.append(rows + (weights[..., None] * references[indices]).sum(1))
    return F.normalize(torch.cat(augmented), dim=1)


def reference_index(references: torch.Tensor, whitening: PCAWhitening | None, neighbours: int = 0) -> torch.Tensor:
    """(N, D') what queries are ranked against: the references' raw (N, D) global descriptors,
    whitened (unless ``whitening`` is None) and augmented with ``neighbours`` (module docstring)."""
    if whitening is not None:
        references = whitening(references.double())
    return augment_references(references, neighbours)


def rank_references(queries: torch.Tensor, references: torch.Tensor, k: int,
                    whitening: PCAWhitening | None, neighbours: int = 0,
                    index: torch.Tensor | None = None) -> Ranking:
    """The top ``k`` references of each query.

    Args:
        queries: (Q, D) and references (N, D) raw global descriptors.
        whitening: fitted on the references, or None to rank raw descriptors.
        neighbours: of the database-side augmentation (``reference_index``).
        index: ``reference_index(references, whitening, neighbours)`` if already computed
            (then ``neighbours`` is the index's business and must be left at 0).
    """
    if index is not None and neighbours:
        raise InputError("give rank_references either neighbours or a precomputed index, not both")
    if index is None:
        index = reference_index(references, whitening, neighbours)
    if whitening is not None:
        queries = whitening(queries.double())
    scores, indices = top_k(queries, index, k)
    return Ranking(indices, scores)
