"""The feature store: one HDF5 file per map, resumable and crash-safe.

Entries are keyed by ``(model_id, kind, name)`` and hold a few named arrays
(layout, key escaping and model ids: ``locseg.store.layout``; the arrays of
each kind: ``locseg.store.kinds``).

**Crash safety.** HDF5 files written in place are not crash-safe: a process
killed while HDF5 flushes its metadata can leave a file that no longer opens.
So no file of a store is ever modified in place:

1. The main file ``<store>`` is only ever replaced whole: a new version is
   written to a temporary file next to it, fsynced, and renamed over it with
   ``os.replace`` (atomic), then the directory is fsynced.
2. ``put`` buffers entries in memory. ``flush()`` (called by ``put`` when the
   buffer exceeds ``flush_bytes``, and by ``close``) writes the buffer as one
   new *shard* ``<store>.parts/<NNNNNN>.h5`` in the same way: temporary file,
   fsync, rename. A shard exists complete or not at all; an entry is
   *committed* once the shard holding it is renamed into place.
3. Readers see the main file and the shards in number order; a later file's
   entry replaces an earlier one of the same key.
4. ``close()``/``compact()`` of a writer merges the shards into a copy of the
   main file, renames the copy over it (step 1), then deletes the shards. A
   kill between the rename and the deletion leaves shards whose entries are
   already in the main file: readers see the same arrays twice, and the next
   writer merges them again, with the same result.

A killed writer therefore leaves every committed entry readable and at most
some temporary files (``.*.tmp``), which the next writer deletes; it loses only
what it had buffered. Opening with ``mode="r"`` changes nothing on disk and
takes no lock; a reader sees the files as they were when it opened (entries a
writer commits later are not seen; reopen to see them). With ``mode="a"`` the
store takes the writer lock (``locseg.store.lock``), so a second writer fails
with :class:`~locseg.store.lock.StoreLockedError`.

**Resuming.** ``has`` is a dictionary look-up once the names of a
``(model_id, kind)`` have been listed (on first use), so a pipeline step skips
the images whose entries exist and the next run completes a killed one.
``put`` of an existing key replaces the entry.

**Configs.** ``set_config(model_id, config)`` records the config that produced
a model's features (JSON, on the model's group) and refuses a different one,
so features made with different settings never mix under one model id.

A store object is not thread-safe. Example::

    with FeatureStore("maps/street.h5", mode="a") as store:
        mid = model_id("vgg16-slim", digest, max_side=512)
        store.set_config(mid, {"max_side": 512})
        for name in names:
            if not store.has(mid, "sparse", name):
                store.put_sparse(mid, name, keypoints, point3D_ids, descriptors)
"""

from __future__ import annotations

import glob
import json
import re
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np

from locseg.errors import FormatError, InputError
from locseg.io._common import atomic_output

from ..io._common import fsync_dir, fsync_file
from . import kinds
from .kinds import PointLabels, SegmentationLabels, SparseFeatures
from .layout import (
    canonical_json,
    check_kind,
    check_model_id,
    decode_name,
    encode_name,
    open_checked,
    read_arrays,
    read_config,
    write_arrays,
    write_header,
)
from .lock import WriterLock

if TYPE_CHECKING:  # annotations only: typing.Self is Python 3.11+
    from typing_extensions import Self

DEFAULT_FLUSH_BYTES = 64 * 2**20
"""A writer writes a shard once its buffered arrays exceed this many bytes."""
_SHARD = re.compile(r"(\d+)\.h5")
_MAIN = -1  # the source index of entries in the main file
_OPEN_SHARDS = 8  # shard files a store keeps open for reading
_OPEN_ATTEMPTS = 3


class ConfigMismatchError(InputError):
    """A model id already has a different config in the store."""


class MissingEntryError(InputError, KeyError):
    """No entry (or config) under the key asked for; also a ``KeyError``."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class _Shard:
    """A shard file and what it holds: encoded keys per (model_id, kind), configs."""

    path: Path
    keys: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)


class FeatureStore:
    """The feature store of one map (see the module docstring).

    Args:
        path: the main file, e.g. ``maps/street.h5``; shards go to
            ``<path>.parts/``, the writer lock to ``<path>.lock``.
        mode: ``"r"`` to read (the store must exist), ``"a"`` to read and write
            (created if missing).
        flush_bytes: with ``mode="a"``, buffered bytes above which ``put``
            writes a shard.

    Raises:
        InputError: a bad mode, or ``mode="r"`` and no store at ``path``.
        FormatError: a file of the store is not a store file of a known version.
        StoreLockedError: ``mode="a"`` and another writer has the store open.
    """

    def __init__(self, path: str | Path, mode: Literal["r", "a"] = "r", *,
                 flush_bytes: int = DEFAULT_FLUSH_BYTES):
        if mode not in ("r", "a"):
            raise InputError(f"mode {mode!r} is not one of 'r' (read) and 'a' (read and write)")
        if not isinstance(flush_bytes, int) or flush_bytes < 1:
            raise InputError(f"flush_bytes {flush_bytes!r} must be a positive integer")
        self.path = Path(path)
        self.mode = mode
        self.flush_bytes = flush_bytes
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self._lock: WriterLock | None = None
        self._main: h5py.File | None = None
        self._shards: list[_Shard] = []
        self._next_shard = 1
        self._index: dict[tuple[str, str], dict[str, int]] = {}
        self._handles: OrderedDict[int, h5py.File] = OrderedDict()
        self._buffer: dict[tuple[str, str], dict[str, dict[str, np.ndarray]]] = {}
        self._buffer_bytes = 0
        self._pending_configs: dict[str, str] = {}
        self._closed = False
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    # ----------------------------------------------------------------- opening
    def _open(self) -> None:
        if self.mode == "a":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(self.path)
            self._remove_temporaries()
            if not self.path.exists():
                self._create_main()
        elif not self.path.exists() and not self.parts_dir.is_dir():
            raise InputError(f"{self.path}: no feature store here (open it with mode='a' to create one)")
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                self._open_files()
                return
            except FileNotFoundError:  # a writer merged the store meanwhile: look again
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise FormatError(self.path, "the store kept changing while it was being opened") from None
                self._close_files()

    def _open_files(self) -> None:
        # Shards before the main file: a merge in between then only duplicates entries.
        shards = sorted((int(m.group(1)), p) for p in self._shard_files() if (m := _SHARD.fullmatch(p.name)))
        self._shards = [_list_shard(path) for _, path in shards]
        self._next_shard = shards[-1][0] + 1 if shards else 1
        if self.path.exists():
            self._main = open_checked(self.path)

    def _shard_files(self) -> list[Path]:
        return list(self.parts_dir.iterdir()) if self.parts_dir.is_dir() else []

    def _remove_temporaries(self) -> None:
        """Delete what killed writers left half-written (only ever under the lock)."""
        for tmp in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
        for tmp in self._shard_files():
            if tmp.name.startswith(".") and tmp.name.endswith(".tmp"):
                tmp.unlink(missing_ok=True)

    def _create_main(self) -> None:
        with atomic_output(self.path) as tmp:
            with h5py.File(tmp, "w") as f:
                write_header(f)
            fsync_file(tmp)
        fsync_dir(self.path.parent)

    # ----------------------------------------------------------- generic core
    def put(self, model_id: str, kind: str, name: str, arrays: Mapping[str, Any]) -> None:
        """Add (or replace) the entry ``(model_id, kind, name)``.

        The entry is buffered; it is committed when a shard is written (see
        ``flush_bytes``, :meth:`flush`, :meth:`close`).

        Args:
            model_id: from :func:`~locseg.store.layout.model_id`.
            kind: ``"global"``, ``"sparse"``, ``"labels"``, ``"point_labels"``,
                or another lower-case word.
            name: the image name, e.g. ``"night/cam3/000004.png"``.
            arrays: array name (an identifier) to numeric array or tensor. For a
                known kind they are checked and cast as ``locseg.store.kinds`` says.

        Raises:
            InputError, ShapeError: a bad key or arrays, or a read-only store.
        """
        self._check_writable()
        group = (check_model_id(model_id), check_kind(kind))
        key = encode_name(name)
        arrays = kinds.normalize(kind, arrays)
        entries = self._buffer.setdefault(group, {})
        if key in entries:
            self._buffer_bytes -= _nbytes(entries[key])
        entries[key] = arrays
        self._buffer_bytes += _nbytes(arrays)
        if self._buffer_bytes > self.flush_bytes:
            self.flush()

    def get(self, model_id: str, kind: str, name: str) -> dict[str, np.ndarray]:
        """The arrays of the entry ``(model_id, kind, name)``.

        Raises:
            MissingEntryError: no such entry.
        """
        self._check_open()
        group = (check_model_id(model_id), check_kind(kind))
        key = encode_name(name)
        buffered = self._buffer.get(group, {}).get(key)
        if buffered is not None:
            return {a: v.copy() for a, v in buffered.items()}
        source = self._entries(*group).get(key)
        if source is None:
            raise MissingEntryError(f"{self.path}: no {kind!r} entry for {name!r} under model {model_id!r}")
        f = self._main if source == _MAIN else self._shard_file(source)
        return read_arrays(f[f"{model_id}/{kind}/{key}"])

    def has(self, model_id: str, kind: str, name: str) -> bool:
        """Whether the entry ``(model_id, kind, name)`` exists (buffered or committed)."""
        self._check_open()
        group = (check_model_id(model_id), check_kind(kind))
        key = encode_name(name)
        return key in self._buffer.get(group, {}) or key in self._entries(*group)

    def names(self, model_id: str, kind: str) -> set[str]:
        """The image names of every ``kind`` entry of ``model_id`` (buffered or committed)."""
        self._check_open()
        group = (check_model_id(model_id), check_kind(kind))
        keys = set(self._entries(*group)) | set(self._buffer.get(group, {}))
        return {decode_name(key) for key in keys}

    def model_ids(self) -> set[str]:
        """Every model id with an entry or a config in the store."""
        self._check_open()
        ids = set(self._main.keys()) if self._main is not None else set()
        for shard in self._shards:
            ids.update(m for m, _ in shard.keys)
            ids.update(shard.configs)
        ids.update(m for m, _ in self._buffer)
        return ids | set(self._pending_configs)

    def _entries(self, model_id: str, kind: str) -> dict[str, int]:
        """Encoded key -> source (``_MAIN`` or a shard position) of committed entries."""
        index = self._index.get((model_id, kind))
        if index is None:
            index = {}
            group = self._main.get(f"{model_id}/{kind}") if self._main is not None else None
            if isinstance(group, h5py.Group):
                index = dict.fromkeys(group.keys(), _MAIN)
            for position, shard in enumerate(self._shards):
                index.update(dict.fromkeys(shard.keys.get((model_id, kind), ()), position))
            self._index[(model_id, kind)] = index
        return index

    def _shard_file(self, position: int) -> h5py.File:
        f = self._handles.pop(position, None)
        if f is None:
            path = self._shards[position].path
            try:
                f = h5py.File(path, "r")
            except FileNotFoundError:
                raise FormatError(path, "shard is gone: a writer merged the store after it was opened "
                                        "for reading; open the store again") from None
            if len(self._handles) >= _OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
        self._handles[position] = f
        return f

    # ---------------------------------------------------------------- configs
    def set_config(self, model_id: str, config: Mapping[str, Any]) -> None:
        """Record the config that produced the features of ``model_id``.

        Setting the same config again does nothing; it is committed with the next shard.

        Raises:
            ConfigMismatchError: ``model_id`` already has a different config.
            InputError: ``config`` is not a JSON-serialisable mapping.
        """
        self._check_writable()
        check_model_id(model_id)
        text = canonical_json(config)
        stored = self._stored_config(model_id)
        if stored is None:
            self._pending_configs[model_id] = text
        elif canonical_json(json.loads(stored)) != text:
            raise ConfigMismatchError(
                f"{self.path}: model {model_id!r} was stored with another config "
                f"({_differences(json.loads(stored), json.loads(text))}); features made with different "
                "settings must not mix: use another model id or another store"
            )

    def config(self, model_id: str) -> dict[str, Any]:
        """The config recorded for ``model_id``.

        Raises:
            MissingEntryError: none was recorded.
        """
        self._check_open()
        stored = self._stored_config(check_model_id(model_id))
        if stored is None:
            raise MissingEntryError(f"{self.path}: no config recorded for model {model_id!r}")
        return json.loads(stored)

    def _stored_config(self, model_id: str) -> str | None:
        group = self._main.get(model_id) if self._main is not None else None
        text = read_config(group) if isinstance(group, h5py.Group) else None
        if text is not None:
            return text
        for shard in self._shards:
            if model_id in shard.configs:
                return shard.configs[model_id]
        return self._pending_configs.get(model_id)

    # ------------------------------------------------------- typed helpers
    def put_global(self, model_id: str, name: str, descriptor: Any) -> None:
        """Store the global descriptor (D,) of image ``name`` (as float32)."""
        self.put(model_id, kinds.GLOBAL, name, {"descriptor": descriptor})

    def get_global(self, model_id: str, name: str) -> np.ndarray:
        """The global descriptor (D,) float32 of image ``name``."""
        return self._typed(model_id, kinds.GLOBAL, name, ("descriptor",))["descriptor"]

    def put_sparse(self, model_id: str, name: str, keypoints: Any, point3D_ids: Any, descriptors: Any) -> None:
        """Store the sparse features of reference image ``name``.

        Args:
            keypoints: (N, 2) COLMAP pixel coordinates in the original image.
            point3D_ids: (N,) integer ids of the observed 3D points.
            descriptors: (N, C), stored as float16.
        """
        self.put(model_id, kinds.SPARSE, name,
                 {"keypoints": keypoints, "point3D_ids": point3D_ids, "descriptors": descriptors})

    def get_sparse(self, model_id: str, name: str) -> SparseFeatures:
        """The sparse features of reference image ``name`` (see :class:`SparseFeatures`)."""
        return SparseFeatures(**self._typed(model_id, kinds.SPARSE, name, SparseFeatures._fields))

    def put_labels(self, model_id: str, name: str, labels: Any, logits: Any | None = None) -> None:
        """Store the segmentation of image ``name``.

        Args:
            labels: (H, W) integer trainIds in 0..255, stored as uint8.
            logits: optional (C, H, W), stored as float16.
        """
        arrays = {"labels": labels} if logits is None else {"labels": labels, "logits": logits}
        self.put(model_id, kinds.LABELS, name, arrays)

    def get_labels(self, model_id: str, name: str) -> SegmentationLabels:
        """The segmentation of image ``name`` (``logits`` is None if not stored)."""
        arrays = self._typed(model_id, kinds.LABELS, name, ("labels",))
        return SegmentationLabels(arrays["labels"], arrays.get("logits"))

    def put_point_labels(self, model_id: str, point3D_ids: Any, labels: Any) -> None:
        """Store the labels (P,) of the map's 3D points (P,), one entry per map."""
        self.put(model_id, kinds.POINT_LABELS, kinds.MAP_ENTRY, {"point3D_ids": point3D_ids, "labels": labels})

    def get_point_labels(self, model_id: str) -> PointLabels:
        """The labels of the map's 3D points (see :class:`PointLabels`)."""
        return PointLabels(**self._typed(model_id, kinds.POINT_LABELS, kinds.MAP_ENTRY, PointLabels._fields))

    def _typed(self, model_id: str, kind: str, name: str, required: tuple[str, ...]) -> dict[str, np.ndarray]:
        arrays = self.get(model_id, kind, name)
        missing = [a for a in required if a not in arrays]
        if missing:
            raise FormatError(self.path, f"the {kind!r} entry {name!r} of model {model_id!r} lacks {missing}")
        return arrays

    # ------------------------------------------------------ writing to disk
    def flush(self) -> None:
        """Commit the buffered entries and configs as one new shard (nothing if none)."""
        self._check_writable()
        if not self._buffer and not self._pending_configs:
            return
        new_dir = not self.parts_dir.is_dir()
        self.parts_dir.mkdir(exist_ok=True)
        if new_dir:
            fsync_dir(self.path.parent)
        shard = _Shard(self.parts_dir / f"{self._next_shard:06d}.h5", configs=dict(self._pending_configs))
        with atomic_output(shard.path) as tmp:
            with h5py.File(tmp, "w") as f:
                write_header(f)
                for model_id, text in self._pending_configs.items():
                    f.require_group(model_id).attrs["config"] = text
                for (model_id, kind), entries in self._buffer.items():
                    group = f.require_group(f"{model_id}/{kind}")
                    for key, arrays in entries.items():
                        write_arrays(group.create_group(key), arrays)
                    shard.keys[(model_id, kind)] = set(entries)
            fsync_file(tmp)
        fsync_dir(self.parts_dir)
        self._next_shard += 1
        self._shards.append(shard)
        position = len(self._shards) - 1
        for group, keys in shard.keys.items():
            if group in self._index:
                self._index[group].update(dict.fromkeys(keys, position))
        self._buffer.clear()
        self._buffer_bytes = 0
        self._pending_configs.clear()

    def compact(self) -> None:
        """Flush, then merge every shard into the main file and delete the shards."""
        self.flush()
        if not self._shards:
            return
        self._close_shard_handles()
        with atomic_output(self.path) as tmp:
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+") as f:
                for shard in self._shards:
                    with h5py.File(shard.path, "r") as source:
                        _merge(source, f)
            fsync_file(tmp)
        fsync_dir(self.path.parent)
        self._main.close()
        self._main = open_checked(self.path)
        for shard in self._shards:
            shard.path.unlink()
        fsync_dir(self.parts_dir)
        if not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()
            fsync_dir(self.path.parent)
        self._shards.clear()
        self._next_shard = 1
        for index in self._index.values():
            index.update(dict.fromkeys(index, _MAIN))

    def close(self) -> None:
        """Commit everything (writers: flush and compact), close the files, release the lock.

        Calling it again does nothing.
        """
        if self._closed:
            return
        try:
            if self.mode == "a":
                self.compact()
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        self._close_files()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_files(self) -> None:
        self._close_shard_handles()
        if self._main is not None:
            self._main.close()
            self._main = None

    def _close_shard_handles(self) -> None:
        while self._handles:
            self._handles.popitem()[1].close()

    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f"feature store {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.mode != "a":
            raise InputError(f"feature store {self.path} is open read-only (mode='r'); open it with mode='a' to write")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"mode={self.mode!r}"
        return f"FeatureStore({str(self.path)!r}, {state})"


def _list_shard(path: Path) -> _Shard:
    """Read what a shard holds (it is closed again: shards are opened on demand)."""
    shard = _Shard(path)
    with open_checked(path) as f:
        for model_id, model_group in f.items():
            if (text := read_config(model_group)) is not None:
                shard.configs[model_id] = text
            for kind, kind_group in model_group.items():
                shard.keys[(model_id, kind)] = set(kind_group.keys())
    return shard


def _merge(source: h5py.File, target: h5py.File) -> None:
    """Copy every entry and config of ``source`` into ``target``; source entries win."""
    for model_id, model_group in source.items():
        target_model = target.require_group(model_id)
        text = read_config(model_group)
        if text is not None and read_config(target_model) is None:
            target_model.attrs["config"] = text
        for kind, kind_group in model_group.items():
            target_kind = target_model.require_group(kind)
            for key in kind_group:
                if key in target_kind:
                    del target_kind[key]
                source.copy(kind_group[key], target_kind, name=key)


def _nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())


def _differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """``key: stored -> given`` for each top-level key whose value differs."""
    def show(mapping: Mapping[str, Any], key: str) -> str:
        return json.dumps(mapping[key]) if key in mapping else "(absent)"

    keys = sorted(set(stored) | set(given))
    return "; ".join(f"{key}: stored {show(stored, key)}, given {show(given, key)}"
                     for key in keys if (key in stored, stored.get(key)) != (key in given, given.get(key)))

