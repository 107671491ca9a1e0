"""The error family raised by locseg's library code.

Library functions raise these with a message that names the offending value and
what would have been valid; the command-line interface turns them into a
one-line message and an exit code (see ``cli/main.py``, installed as ``locseg_cli.main``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

from pathlib import Path


class LocsegError(Exception):
    """Base class of every error locseg raises on purpose."""

    exit_code = 1


class InputError(LocsegError):
    """A value given by the caller is out of range or of the wrong form."""

    exit_code = 2


class FormatError(LocsegError):
    """A file does not follow the format it is read as.

    Args:
        path: the file.
        message: what was found and what was expected.
        line: 1-based line number, when the format is line-based.
    """

    exit_code = 3

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


class ChecksumError(LocsegError):
    """A file's sha256 is not the one that was expected.

    Attributes:
        source: the URL or path whose content was checked.
        expected, actual: the two hexadecimal digests.
    """

    exit_code = 3

    def __init__(self, source: str | Path, expected: str, actual: str, note: str = ""):
        self.source, self.expected, self.actual = str(source), expected, actual
        message = f"{source}: sha256 mismatch: expected {expected}, got {actual}"
        super().__init__(f"{message}; {note}" if note else message)


class ShapeError(InputError):
    """A tensor or array does not have the shape a function documents."""


class RegistryError(InputError):
    """An unknown name was asked of a registry (backbone, preset, weights...)."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(self.valid)}")


def lookup(registry: Mapping[str, T], kind: str, name: str) -> T:
    """``registry[name]``, or a RegistryError naming ``kind`` and listing the valid names."""
    if name not in registry:
        raise RegistryError(kind, str(name), list(registry))
    return registry[name]


def check_shape(name: str, shape: tuple[int, ...], expected: str, ok: bool) -> None:
    """Raise a ShapeError naming ``name`` unless ``ok``.

    Args:
        name: the argument's name, as the caller knows it.
        shape: its actual shape.
        expected: a human description such as ``"(..., 3)"``.
        ok: whether the shape is acceptable.
    """
    if not ok:
        raise ShapeError(f"{name} has shape {tuple(shape)}, expected {expected}")
