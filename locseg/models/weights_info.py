"""What a weight file is: its digest, its size, and the training record in its metadata.

Weights that locseg trains carry in their safetensors header the recipe of their
run (``recipe``, JSON), the sha256 of the weights the run started from
(``init_digest``) and, from the runs that record it, the data they trained on
(``sources``, JSON). :func:`summarize_weights` reads all of it without loading a
tensor, and names any digest that belongs to a bundled file, so that a user can
tell which hypercolumns a retrieval head pools, or which bundled weights a file is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import safetensors

from ..errors import FormatError
from .weights import (
    bundled_names,
    bundled_weights,
    file_sha256,
    load_state_dict,
    resolve_weights,
    sniff_format,
)

JSON_KEYS = ("recipe", "sources", "layers", "model", "classes")   # metadata values stored as JSON text


@dataclass(frozen=True)
class WeightsSummary:
    """One weight file, described.

    Attributes:
        path: the local file the source resolved to.
        sha256: its digest.
        format: ``"safetensors"`` or ``"torch"``.
        tensors: how many tensors it holds.
        parameters: how many numbers they hold together.
        bundled: the registered name whose file has this digest, or None.
        metadata: the safetensors header's metadata, JSON values decoded (``JSON_KEYS``).
    """

    path: Path
    sha256: str
    format: str
    tensors: int
    parameters: int
    bundled: str | None
    metadata: dict = field(default_factory=dict)

    @property
    def init(self) -> str | None:
        """What the weights were trained from: the bundled name with the recorded
        ``init_digest``, else that digest; None when the metadata records none."""
        digest = self.metadata.get("init_digest")
        return (bundled_name_of(digest) or digest) if digest else None

    @property
    def trained_on(self) -> list[str]:
        """The folders the weights were trained on, as their run recorded them: the
        correspondence folders of ``finetune-features``, the streets of ``train-retrieval``,
        the datasets and correspondence folders of ``train-seg``; empty for weights
        exported without the record."""
        sources = self.metadata.get("sources")
        if not isinstance(sources, dict):
            return []
        folders = [pair[0] for pair in sources.get("folders", [])]
        for key in ("streets", "datasets", "correspondences"):
            folders += sources.get(key, [])
        return list(dict.fromkeys(folders))

    @property
    def match_ratio(self) -> float | None:
        """The localizer's ratio test recorded for these bundled hypercolumns, if any."""
        return bundled_weights(self.bundled).match_ratio if self.bundled else None

    def to_dict(self) -> dict:
        """JSON-ready: every attribute, with ``init`` resolved."""
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format, "tensors": self.tensors,
                "parameters": self.parameters, "bundled": self.bundled, "init": self.init, "trained_on": self.trained_on,
                "match_ratio": self.match_ratio, "metadata": self.metadata}


def bundled_name_of(sha256: str) -> str | None:
    """The registered name whose file has digest ``sha256`` (the first, sorted, if several do)."""
    return next((name for name in bundled_names() if bundled_weights(name).sha256 == sha256), None)


def summarize_weights(source: str | Path, **resolve_options) -> WeightsSummary:
    """Describe the file behind a weight source (name, path or URL) without building a model.

    Raises:
        FormatError: the file is corrupt, or not a flat state dict.
        and the errors of :func:`locseg.models.weights.resolve_weights`.
    """
    path = resolve_weights(source, **resolve_options)
    kind = sniff_format(path)
    if kind == "safetensors":
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                shapes = [f.get_slice(key).get_shape() for key in f.keys()]  # noqa: SIM118 (not iterable)
                metadata = dict(f.metadata() or {})
        except safetensors.SafetensorError as err:
            raise FormatError(path, f"corrupt safetensors file: {err}") from None
    else:
        shapes = [list(tensor.shape) for tensor in load_state_dict(path).values()]
        metadata = {}
    digest = file_sha256(path)
    return WeightsSummary(path=path, sha256=digest, format=kind, tensors=len(shapes),
                          parameters=sum(math.prod(shape) for shape in shapes), bundled=bundled_name_of(digest),
                          metadata={key: _decoded(key, value) for key, value in metadata.items()})


def _decoded(key: str, value: str):
    """A metadata value, parsed when ``key`` holds JSON (left as text if it does not parse)."""
    if key not in JSON_KEYS:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
