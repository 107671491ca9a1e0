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
import urllib.parse
from pathlib import Path, PureWindowsPath
from typing import Any

from ..errors import FormatError, InputError
from .weights import (
    load_state_dict,
    read_safetensors_metadata,
    resolve_weights,
    save_safetensors,
)

RECORD_KEYS = ("sources", "recipe")   # the header's JSON values that may hold paths


def relative_record(value: Any, root: Path, key: str = "") -> Any:
    """``value`` (decoded JSON) with every string that names a local file or folder by an
    absolute path (POSIX or Windows, ``~/...``, or a ``file://`` URL) made relative to
    ``root``, a path as given or with its symlinks resolved. Other strings (names,
    relative paths, settings) and dictionary keys are kept.

    Raises:
        InputError: such a path that does not lie beneath ``root``.
    """
    if isinstance(value, dict):
        return {k: relative_record(v, root, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_record(v, root, f"{key}[{i}]") for i, v in enumerate(value)]
    local = _absolute_path(value) if isinstance(value, str) else None
    if local is None:
        return value
    given, real = Path(os.path.abspath(root)), Path(root).resolve()
    for path, base in ((Path(os.path.normpath(local)), given), (Path(os.path.realpath(local)), real)):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    raise InputError(f"{key} records {value}, which is outside {given}; bundle from (or pass --relative-to) "
                     "a folder that holds every recorded path")


def _absolute_path(text: str) -> str | None:
    """The absolute path ``text`` names, or None if it names none."""
    if text.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(text).path)
    if text.startswith("~"):
        text = os.path.expanduser(text)
    return text if os.path.isabs(text) or PureWindowsPath(text).is_absolute() else None


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
    metadata = read_safetensors_metadata(path)
    for key in RECORD_KEYS:
        if key not in metadata:
            continue
        try:
            record = json.loads(metadata[key])
        except json.JSONDecodeError as err:
            raise FormatError(path, f"metadata {key!r} is not JSON ({err})") from None
        metadata[key] = json.dumps(relative_record(record, Path(root), key))
    return save_safetensors(load_state_dict(path), output, metadata=metadata)
