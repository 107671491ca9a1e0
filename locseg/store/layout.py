"""The files of a feature store: their HDF5 layout, entry keys, model ids.

A store is a *main* file (one per map, e.g. ``features.h5``) and, while a writer
runs or after one was killed, *shard* files ``features.h5.parts/000001.h5``, ...
(``locseg.store.store`` says why and how they are merged). Main file and shards
share one layout::

    /                                   attrs locseg_format = "feature-store", format_version = 1
    /<model_id>                         attrs config = JSON text (optional)
    /<model_id>/<kind>/<key>/<array>    one dataset per array of the entry

- ``model_id`` names a model, its weights and its preprocessing (:func:`model_id`),
  so that features of two models never share a group.
- ``kind`` is what an entry holds: ``global``, ``sparse``, ``labels``,
  ``point_labels`` (``locseg.store.kinds``), or any other lower-case word.
- **Entry keys.** ``key`` is the image name escaped into one HDF5 link name:
  ``%`` becomes ``%25``, ``/`` becomes ``%2F``, and a leading ``.`` becomes
  ``%2E`` (HDF5 reads a lone ``.`` as "this group"); nothing else changes, so
  ``night%2Fcam3%2F000004.png`` stays readable in ``h5ls``, and decoding every
  ``%XX`` gives back the name exactly. Flat escaped keys rather than nested
  groups keep ``a`` and ``a/b``, or ``a//b`` and ``./a``, distinct entries.
- **Datasets.** Integer and boolean arrays of at least 4 KiB (label maps) are
  stored gzip-compressed (level 4, chunked); floating-point arrays (descriptors,
  logits) are stored contiguous and uncompressed: network features barely
  compress, and reading them back is the hot path.

A file whose root lacks the ``locseg_format`` attribute, or whose
``format_version`` is newer than :data:`FORMAT_VERSION`, is refused with a
:class:`~locseg.errors.FormatError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from locseg.errors import FormatError, InputError

FORMAT_NAME = "feature-store"
FORMAT_VERSION = 1
"""The layout version this code writes, and the newest one it reads."""
COMPRESS_MIN_BYTES = 4096
"""Integer arrays at least this large are stored gzip-compressed."""
GZIP_LEVEL = 4

_MODEL_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+,-]*")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")
_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE_TEXT = re.compile(r"[A-Za-z0-9_.+-]+")
_KIND = re.compile(r"[a-z][a-z0-9_]*")
_ARRAY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPED = re.compile(r"%([0-9A-Fa-f]{2})")
DIGEST_CHARS = 8
"""Hex characters of the weights digest kept in a model id."""


def model_id(name: str, weights_digest: str, **preprocessing: Any) -> str:
    """A readable, deterministic id for features of one model, weights and preprocessing.

    The id is ``<name>.<digest[:8]>`` followed by ``.<key>=<value>`` for every
    preprocessing parameter in sorted key order; sequences are joined with
    ``-``, booleans written ``true``/``false``, ``None`` as ``none``, floats by
    ``repr``. Example::

        >>> model_id("vgg16-slim", "992ED5C4a1b2", max_side=512, layers=(14, 17, 21, 24, 28))
        'vgg16-slim.992ed5c4.layers=14-17-21-24-28.max_side=512'

    Args:
        name: the model's name: letters, digits, ``_`` and ``-``.
        weights_digest: a hex digest of the weights (sha256 of the file), at least
            8 characters; case is ignored.
        **preprocessing: what else changes the features (image size, layers...):
            values are numbers, booleans, None, strings of ``[A-Za-z0-9_.+-]``,
            or non-empty sequences of those.

    Raises:
        InputError: a part is empty or holds characters the id cannot carry.
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise InputError(f"model name {name!r} must be letters, digits, '_' and '-' (not starting with '-')")
    if not isinstance(weights_digest, str) or not _HEX.fullmatch(weights_digest):
        raise InputError(f"weights digest {weights_digest!r} must be at least 8 hexadecimal characters")
    parts = [name, weights_digest[:DIGEST_CHARS].lower()]
    for key in sorted(preprocessing):
        if not _PARAMETER.fullmatch(key):
            raise InputError(f"preprocessing parameter {key!r} must be an identifier")
        parts.append(f"{key}={_format_value(key, preprocessing[key])}")
    return ".".join(parts)


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"preprocessing parameter {key}: an empty sequence cannot be named")
        return "-".join(_format_scalar(key, v) for v in value)
    return _format_scalar(key, value)


def _format_scalar(key: str, value: Any) -> str:
    if value is None:
        text = "none"
    elif isinstance(value, (bool, np.bool_)):
        text = "true" if value else "false"
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        text = repr(float(value))
    elif isinstance(value, str):
        text = value
    else:
        raise InputError(f"preprocessing parameter {key}={value!r}: expected a number, bool, None or string")
    if not _VALUE_TEXT.fullmatch(text):
        raise InputError(f"preprocessing parameter {key}={value!r}: only [A-Za-z0-9_.+-] can appear in a model id")
    return text


def check_model_id(value: str) -> str:
    """``value`` if it can name a group of the store, else an InputError."""
    if not isinstance(value, str) or not _MODEL_ID.fullmatch(value):
        raise InputError(
            f"model id {value!r} must be letters, digits and '_.=+,-', not starting with one of '.=+,-' "
            "(make one with locseg.store.model_id)"
        )
    return value


def check_kind(value: str) -> str:
    """``value`` if it is a valid kind (a lower-case word), else an InputError."""
    if not isinstance(value, str) or not _KIND.fullmatch(value):
        raise InputError(f"kind {value!r} must be a lower-case word such as 'sparse'")
    return value


def check_array_name(value: str) -> str:
    """``value`` if it can name an array of an entry (an identifier), else an InputError."""
    if not isinstance(value, str) or not _ARRAY.fullmatch(value):
        raise InputError(f"array name {value!r} must be an identifier such as 'descriptors'")
    return value


def encode_name(name: str) -> str:
    """The entry key of an image name (see the module docstring); InputError if empty."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise InputError(f"image name {name!r} must be a non-empty string without NUL characters")
    key = name.replace("%", "%25").replace("/", "%2F")
    return "%2E" + key[1:] if key.startswith(".") else key


def decode_name(key: str) -> str:
    """The image name of an entry key: the inverse of :func:`encode_name`."""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), key)


def canonical_json(config: Mapping[str, Any], what: str = "config") -> str:
    """``config`` as JSON text with sorted keys, so equal configs give equal text."""
    if not isinstance(config, Mapping):
        raise InputError(f"{what} must be a mapping, got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} cannot be stored as JSON: {err}") from err


def write_header(f: h5py.File) -> None:
    """Mark a new file as a feature store of the current format version."""
    f.attrs["locseg_format"] = FORMAT_NAME
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)


def open_checked(path: Path) -> h5py.File:
    """Open a store file read-only after checking its format and version.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FormatError: not an HDF5 file, not a feature store, or a newer version.
    """
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as err:
        raise FormatError(path, f"not a readable HDF5 file ({err})") from err
    try:
        fmt = _text(f.attrs.get("locseg_format"))
        if fmt != FORMAT_NAME:
            raise FormatError(path, f"not a locseg feature store: root attribute locseg_format is {fmt!r}, "
                                    f"expected {FORMAT_NAME!r}")
        version = f.attrs.get("format_version")
        if not isinstance(version, (int, np.integer)) or version < 1:
            raise FormatError(path, f"format_version {version!r} is not a positive integer")
        if version > FORMAT_VERSION:
            raise FormatError(path, f"format version {int(version)} is newer than version {FORMAT_VERSION}, "
                                    "the newest this locseg reads; upgrade locseg")
    except BaseException:
        f.close()
        raise
    return f


def read_config(group: h5py.Group) -> str | None:
    """The JSON text stored on a model group, or None."""
    value = group.attrs.get("config")
    return None if value is None else _text(value)


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def write_arrays(group: h5py.Group, arrays: Mapping[str, np.ndarray]) -> None:
    """Create one dataset per array in ``group``, compressed as the module docstring says."""
    for key, array in arrays.items():
        if array.dtype.kind in "biu" and array.ndim > 0 and array.nbytes >= COMPRESS_MIN_BYTES:
            group.create_dataset(key, data=array, compression="gzip", compression_opts=GZIP_LEVEL)
        else:
            group.create_dataset(key, data=array)


def read_arrays(group: h5py.Group) -> dict[str, np.ndarray]:
    """Every dataset of an entry group, read into memory."""
    return {key: np.asarray(dataset[()]) for key, dataset in group.items()}
