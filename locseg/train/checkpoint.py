"""Training checkpoints, for ``--resume`` that continues a run exactly where it stopped.

A checkpoint is one ``torch.save`` file holding plain containers only (tensors,
numbers, strings, ``None``, lists, tuples, dicts), so that it reads back with
``torch.load(..., weights_only=True)`` and loading one can never run code::

    {"format": "locseg-checkpoint", "version": 1, "step": int,
     "model_state": {...}, "optimizer_state": {...}, "rng_state": {...},
     "config": {...}, "metrics": {...}}

It is written to a temporary file in the destination directory, flushed to disk
and renamed over the destination, so a run killed while saving leaves the
previous checkpoint intact.

Exact resumption needs the random state as well as the weights: :func:`rng_state`
captures, as plain data, the default torch CPU generator, CUDA generators when
CUDA is available, Python's ``random``, numpy's legacy global ``np.random`` and,
if given, the ``np.random.Generator`` the training loop samples with;
:func:`restore_rng_state` puts them back.

Example::

    save_checkpoint(run / "last.pt", model_state=model.state_dict(),
                    optimizer_state=optimizer.state_dict(), step=step,
                    rng_state=rng_state(generator), config=config, metrics=metrics)
    ckpt = load_checkpoint(run / "last.pt", config=config)   # refuses another config
    model.load_state_dict(ckpt.model_state); optimizer.load_state_dict(ckpt.optimizer_state)
    restore_rng_state(ckpt.rng_state, generator)
"""

from __future__ import annotations

import math
import os
import pickle
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from locseg.errors import FormatError, InputError
from locseg.io._common import atomic_output

FORMAT = "locseg-checkpoint"
VERSION = 1
_FIELDS = ("step", "model_state", "optimizer_state", "rng_state", "config", "metrics")
_MISSING = object()


@dataclass(frozen=True)
class Checkpoint:
    """A training checkpoint as read back by :func:`load_checkpoint`.

    Attributes:
        path: the file it was read from.
        step: the number of optimisation steps completed.
        model_state: for ``model.load_state_dict``.
        optimizer_state: for ``optimizer.load_state_dict``.
        rng_state: for :func:`restore_rng_state`.
        config: the resolved config of the run that wrote it.
        metrics: whatever the run recorded (losses, best score, ...).
    """

    path: Path
    step: int
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng_state: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    path: str | Path,
    *,
    model_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any],
    step: int,
    rng_state: Mapping[str, Any],
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> Path:
    """Write a checkpoint atomically and durably; return ``path``.

    Raises:
        InputError: ``step`` is not a non-negative int, or a value anywhere in
            the arguments is not a plain container (the message names where).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InputError(f"step must be a non-negative int, got {step!r}")
    content = {"format": FORMAT, "version": VERSION, "step": step}
    for name, value in (
        ("model_state", model_state),
        ("optimizer_state", optimizer_state),
        ("rng_state", rng_state),
        ("config", config),
        ("metrics", metrics),
    ):
        if not isinstance(value, Mapping):
            raise InputError(f"{name} must be a mapping, got a {type(value).__name__}")
        _check_plain(value, name)
        content[name] = value
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(content, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(Path(path).parent)
    return Path(path)


def load_checkpoint(
    path: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    allow_config_change: bool = False,
    defaults: Mapping[str, Any] | None = None,
    free_keys: Iterable[str] = (),
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Args:
        path: the checkpoint file.
        config: the current run's config; if given, it must equal the saved one,
            except for keys the checkpoint lacks that are at their ``defaults``
            (``config_differences``).
        allow_config_change: accept a differing ``config`` (the caller decides
            what resuming under a new config means).
        free_keys: top-level keys of ``config`` that may differ from the saved
            ones, e.g. where a run stops, which does not change the steps before.

    Raises:
        InputError: the file does not exist, or ``config`` differs from the saved
            config (the message lists the differing keys) and
            ``allow_config_change`` is false.
        FormatError: the file is truncated, corrupt, not a locseg checkpoint, or
            holds pickled objects other than plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    content = _read(path)
    if config is not None and not allow_config_change:
        free = set(free_keys)
        differences = [key for key in config_differences(content["config"], config, defaults=defaults)
                       if key not in free]
        if differences:
            raise InputError(
                f"checkpoint {path} was written with a different config; differing keys: "
                f"{', '.join(differences)} (resume with the same config, or allow the change explicitly)"
            )
    return Checkpoint(path=path, **{name: content[name] for name in _FIELDS})


def _read(path: Path) -> dict[str, Any]:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0] if str(err) else "unpickling refused"
        message = f"not a plain-container checkpoint (weights_only load failed: {first})"
        raise FormatError(path, message) from None
    except PermissionError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    except Exception as err:  # noqa: BLE001 - damaged files fail in many ways (even OSError on seek)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FormatError(path, f"corrupt or truncated checkpoint: {first}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise FormatError(path, f"not a locseg checkpoint (no 'format': {FORMAT!r} entry)")
    if content.get("version") != VERSION:
        found = content.get("version")
        raise FormatError(path, f"checkpoint format version {found!r}; this locseg reads {VERSION}")
    missing = [name for name in _FIELDS if name not in content]
    if missing:
        raise FormatError(path, f"checkpoint lacks {', '.join(missing)}")
    return content


def config_differences(saved: Any, current: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    """Dotted keys at which two configs differ (added, removed or changed).

    Lists and tuples compare as the same kind of sequence, and ints equal to
    floats compare equal, since a config may pass through a file and back. With
    ``defaults`` (the config class's defaults, nested like ``current``), a key
    missing from ``saved`` whose current value is its default is no difference: it
    is an option newer than the checkpoint, left where the older code behaved.
    """
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        keys = list(saved) + [k for k in current if k not in saved]
        out: list[str] = []
        for key in keys:
            name = f"{prefix}.{key}" if prefix else str(key)
            a, b = saved.get(key, _MISSING), current.get(key, _MISSING)
            default = defaults.get(key, _MISSING) if isinstance(defaults, Mapping) else _MISSING
            if a is _MISSING and b is not _MISSING and default is not _MISSING and _same_value(b, default):
                continue
            if a is _MISSING or b is _MISSING:
                out.append(name)
            else:
                out.extend(config_differences(a, b, name, None if default is _MISSING else default))
        return out
    return [] if _same_value(saved, current) else [prefix or "<config>"]


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return not config_differences(a, b) if isinstance(a, Mapping) and isinstance(b, Mapping) else False
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if a != b:
        return False
    return type(a) is type(b) or (_is_number(a) and _is_number(b))  # True != 1 here


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# --------------------------------------------------------------------------- plain data


_SCALARS = (type(None), bool, int, float, str)


def _check_plain(value: Any, where: str) -> None:
    """Raise an InputError naming the first value that is not a plain container."""
    if isinstance(value, (*_SCALARS, torch.Tensor)):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise InputError(f"{where}: key {key!r} is a {type(key).__name__}; keys must be str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise InputError(
        f"{where} is a {type(value).__name__}; checkpoints hold only tensors, numbers, strings, "
        "None, lists, tuples and dicts (convert paths to str, arrays to lists or tensors)"
    )


# --------------------------------------------------------------------------- random state


def rng_state(numpy_generator: np.random.Generator | None = None) -> dict[str, Any]:
    """The state of every random generator a training step may draw from, as plain data.

    Args:
        numpy_generator: the ``np.random.Generator`` the caller samples with, if any.

    Returns:
        ``{"torch": uint8 tensor, "python": [version, [ints], gauss_next],
        "numpy_global": [...], "numpy": bit-generator state dict or None,
        "cuda": [uint8 tensors] or None}``.
    """
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": [version, list(internal), gauss_next],
        "numpy_global": _to_plain(np.random.get_state(legacy=True)),
        "numpy": _to_plain(numpy_generator.bit_generator.state) if numpy_generator is not None else None,
    }


def restore_rng_state(state: Mapping[str, Any], numpy_generator: np.random.Generator | None = None) -> None:
    """Put back the random state captured by :func:`rng_state`.

    CUDA state is restored when CUDA is available (for as many devices as both
    have) and ignored otherwise.

    Raises:
        InputError: ``state`` lacks an entry, or ``numpy_generator`` is given
            but the state holds none, or holds another kind of bit generator.
    """
    missing = [k for k in ("torch", "python", "numpy_global", "numpy") if k not in state]
    if missing:
        raise InputError(f"random state lacks {', '.join(missing)}")
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        for device, device_state in enumerate(cuda):
            torch.cuda.set_rng_state(device_state, device)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    if numpy_generator is not None:
        _restore_generator(state["numpy"], numpy_generator)


def _restore_generator(saved: Mapping[str, Any] | None, generator: np.random.Generator) -> None:
    if saved is None:
        raise InputError("random state holds no numpy Generator state, but a generator was given")
    kind = type(generator.bit_generator).__name__
    if saved.get("bit_generator") != kind:
        raise InputError(f"random state is of a {saved.get('bit_generator')} bit generator, not {kind}")
    state = dict(saved)
    inner = state.get("state")
    if isinstance(inner, Mapping) and isinstance(inner.get("key"), list):  # MT19937
        state["state"] = {**inner, "key": np.asarray(inner["key"], dtype=np.uint32)}
    generator.bit_generator.state = state


def _to_plain(value: Any) -> Any:
    """numpy arrays and scalars inside dicts / tuples turned into lists and Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
