"""Pose files: one ``name qw qx qy qz tx ty tz`` per line.

This is the results format of hloc and of the visuallocalization.net benchmark,
and locseg's ground-truth format. Each pose is ``cam_from_world`` (x_cam = R·x_world
+ t), the rotation a Hamilton quaternion stored w-first. Names are image paths
relative to the image root (they may contain ``/``, never whitespace).

Reading normalises each quaternion; writing stores it normalised with w ≥ 0 (q and
−q are the same rotation) and replaces the file atomically, so a crashed writer
never leaves a truncated results file behind.

Example::

    >>> poses = read_poses("results.txt")      # {"night/cam0/000012.png": Pose, ...}
    >>> write_poses("copy.txt", poses)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from locseg.errors import FormatError, InputError
from locseg.geometry import Pose

from ._common import (
    atomic_write_text,
    check_name,
    format_float,
    iter_records,
    parse_floats,
    to_numpy,
)

FIELDS = "name qw qx qy qz tx ty tz"


def read_poses(path: str | Path) -> dict[str, Pose]:
    """Read a pose file.

    Args:
        path: text file, one ``name qw qx qy qz tx ty tz`` per line; blank lines and
            lines starting with ``#`` are skipped.

    Returns:
        ``{name: Pose}`` in file order, each an unbatched ``cam_from_world`` pose.

    Raises:
        FormatError: naming the file and 1-based line of a line without 8 fields, a
            non-numeric or non-finite value, a zero quaternion or a repeated name.
    """
    path = Path(path)
    names: dict[str, int] = {}
    qs, ts = [], []
    for line, fields in iter_records(path):
        if len(fields) != 8:
            raise FormatError(path, f"expected 8 fields '{FIELDS}', got {len(fields)}", line)
        name = fields[0]
        if name in names:
            raise FormatError(path, f"duplicate name {name!r} (first on line {names[name]})", line)
        values = parse_floats(path, line, fields[1:], "pose")
        q, t = values[:4], values[4:]
        if np.linalg.norm(q) < 1e-12:
            raise FormatError(path, "quaternion (qw qx qy qz) has zero norm", line)
        names[name] = line
        qs.append(q)
        ts.append(t)
    return {name: Pose.from_qt(q, t) for name, q, t in zip(names, qs, ts)}


def write_poses(path: str | Path, poses: Mapping[str, Pose]) -> Path:
    """Write a pose file atomically, one line per pose in the mapping's order.

    Args:
        path: destination; parent directories are created.
        poses: ``{name: Pose}``, each an unbatched ``cam_from_world`` pose.

    Returns:
        ``path``.

    Raises:
        InputError: a name holds whitespace, or a pose is batched or not finite.
    """
    lines = []
    for name, pose in poses.items():
        check_name(name)
        q, t = to_numpy(pose.q), to_numpy(pose.t)
        if q.shape != (4,) or t.shape != (3,):
            raise InputError(
                f"pose of {name!r} has q {q.shape} and t {t.shape}; expected one pose, (4,) and (3,)"
            )
        if not (np.isfinite(q).all() and np.isfinite(t).all()):
            raise InputError(f"pose of {name!r} is not finite: q={q}, t={t}")
        q = q / np.linalg.norm(q)
        if q[0] < 0:
            q = -q
        lines.append(" ".join([name, *map(format_float, q), *map(format_float, t)]))
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
