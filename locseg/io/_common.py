"""Plumbing shared by the readers and writers of locseg.io.

Every line-based format locseg reads follows the same lexical rules: fields are
separated by whitespace, blank lines are skipped, and a line whose first
non-blank character is ``#`` is a comment. Line numbers are 1-based, as editors
show them, so that a :class:`~locseg.errors.FormatError` points at the line a
user has to fix.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from locseg.errors import FormatError, InputError


def read_text(path: str | Path) -> str:
    """The content of a UTF-8 text file (a leading byte-order mark is dropped).

    Raises:
        InputError: the file does not exist or cannot be read.
        FormatError: the file is not UTF-8 text.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise FormatError(path, f"not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err


def iter_records(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every non-blank, non-comment line."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped.split()


def parse_floats(path: Path, line: int, fields: list[str], what: str) -> np.ndarray:
    """Parse ``fields`` as finite floats, or raise a FormatError naming ``what``."""
    values = []
    for field in fields:
        try:
            value = float(field)
        except ValueError:
            raise FormatError(path, f"{what}: {field!r} is not a number", line) from None
        if not np.isfinite(value):
            raise FormatError(path, f"{what}: {field!r} is not finite", line)
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def check_name(name: str, what: str = "name") -> None:
    """Refuse a name that a whitespace-separated line could not hold."""
    if not name or any(c.isspace() for c in name) or name.startswith("#"):
        raise InputError(
            f"{what} {name!r} cannot be written to a line-based file: "
            "it must be non-empty, without whitespace and not start with '#'"
        )


def format_float(value: float) -> str:
    """The shortest decimal text that reads back as the same float64."""
    return repr(float(value))


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Give a temporary path to write to, renamed to ``path`` on success.

    The temporary file lives in the directory of ``path`` and is renamed over
    it with ``os.replace`` (atomic on POSIX and Windows) once the block exits
    without an exception; on an exception it is removed and ``path`` is left
    as it was. Missing parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file readable by its owner only; keep the mode of the
    # file being replaced, or use the usual 0o644 for a new one.
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically and durably."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def to_numpy(x) -> np.ndarray:
    """A float64 numpy copy of an array or tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.float64)


def fsync_file(path: Path) -> None:
    """Flush a file's content to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, unlinks) to the disk, where the OS allows it."""
    try:
        fsync_file(path)
    except OSError:  # Windows, and some file systems, cannot open or fsync a directory
        pass
