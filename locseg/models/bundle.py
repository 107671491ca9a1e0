"""Preparing a trained weight file for ``assets/``: its training record made relative.

A training run records what it trained on in the safetensors header it exports:
``sources`` (the correspondence and image folders, the streets, the datasets) and
``recipe`` (its settings, among them the weights it started from). Runs record those
folders as absolute paths, because a resumed run checks that it is given the same data
wherever it is started from. A file shipped with the project should name that data
without naming the machine it was trained on, so :func:`bundle_weights` writes a copy
whose recorded paths are relative to a root (the repository), and refuses a path that
lies outside it. Tensors are copied unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch

from ..errors import FormatError, InputError
from .weights import read_safetensors_metadata, resolve_weights, save_safetensors

RECORD_KEYS = ("sources", "recipe")   # the header's JSON values that may hold paths


def relative_record(value: Any, root: Path, key: str = "") -> Any:
    """``value`` (decoded JSON) with every absolute path string made relative to ``root``.

    Strings that are not absolute paths (names, relative paths, settings) are kept.

    Raises:
        InputError: an absolute path that does not lie beneath ``root``.
    """
    if isinstance(value, dict):
        return {k: relative_record(v, root, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_record(v, root, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(os.path.normpath(value))
        if not path.is_relative_to(root):
            raise InputError(f"{key} records {value}, which is outside {root}; bundle from (or pass --relative-to) "
                             "a folder that holds every recorded path")
        return path.relative_to(root).as_posix()
    return value


def bundle_weights(source: str | Path, output: str | Path, root: str | Path = ".") -> Path:
    """Write ``source`` (a safetensors weight file) to ``output`` with the paths its
    header records (``RECORD_KEYS``) made relative to ``root``.

    Returns:
        The path written (atomically).

    Raises:
        FormatError: ``source`` is not safetensors, or a recorded value is not JSON.
        InputError: a recorded path lies outside ``root``.
    """
    path = resolve_weights(source)
    root = Path(root).resolve()
    metadata = read_safetensors_metadata(path)
    for key in RECORD_KEYS:
        if key not in metadata:
            continue
        try:
            record = json.loads(metadata[key])
        except json.JSONDecodeError as err:
            raise FormatError(path, f"metadata {key!r} is not JSON ({err})") from None
        metadata[key] = json.dumps(relative_record(record, root, key))
    tensors = safetensors.torch.load_file(str(path), device="cpu")
    return save_safetensors(tensors, output, metadata=metadata)
