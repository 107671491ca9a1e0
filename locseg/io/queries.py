"""Query lists with intrinsics, in hloc's format.

One query per line::

    night/cam0/000012.png OPENCV 1024 768 868.99 866.06 525.94 420.04 -0.0239 0.0293 0.0 0.0

that is ``name MODEL WIDTH HEIGHT params...``, the parameters in COLMAP's order for
the model (see ``locseg.geometry.camera.MODELS``). Blank lines and lines starting
with ``#`` are skipped. Names are image paths relative to the image root.

The condition of an image is the first component of its name (``night-rain`` for
``night-rain/cam1/000003.png``), as SynthSeasons and the Cross-Season datasets lay
them out: ``condition_of``.

The reader checks the whole file before returning anything, so a command refuses a
bad list before it starts working on the first query.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from locseg.errors import FormatError, InputError
from locseg.geometry import MODELS, Camera

from ._common import atomic_write_text, check_name, iter_records, parse_floats

FIELDS = "name MODEL WIDTH HEIGHT params..."


def condition_of(name: str) -> str:
    """The condition of the image ``name`` (a path relative to the image root): its first component."""
    return name.split("/", 1)[0]


def read_query_list(path: str | Path) -> list[tuple[str, Camera]]:
    """Read a query list.

    Returns:
        ``[(name, Camera), ...]`` in file order, each camera unbatched (float64).

    Raises:
        FormatError: naming the file, the 1-based line and what was expected, for a
            line with too few fields, an unknown model, a wrong parameter count, a
            non-numeric or non-positive value, or a repeated name.
    """
    path = Path(path)
    queries: list[tuple[str, Camera]] = []
    first_line: dict[str, int] = {}
    for line, fields in iter_records(path):
        name, camera = _parse_query(path, line, fields)
        if name in first_line:
            raise FormatError(path, f"duplicate name {name!r} (first on line {first_line[name]})", line)
        first_line[name] = line
        queries.append((name, camera))
    return queries


def write_query_list(path: str | Path, entries: Iterable[tuple[str, Camera]]) -> Path:
    """Write a query list atomically, one ``name MODEL WIDTH HEIGHT params...`` per entry.

    Raises:
        InputError: a name holds whitespace or is repeated, or a camera is batched.
    """
    lines, seen = [], set()
    for name, camera in entries:
        check_name(name)
        if name in seen:
            raise InputError(f"query {name!r} is listed twice")
        seen.add(name)
        lines.append(f"{name} {camera.to_string()}\n")
    return atomic_write_text(path, "".join(lines))


def _parse_query(path: Path, line: int, fields: list[str]) -> tuple[str, Camera]:
    """One line's ``(name, Camera)``; every check raises a FormatError at ``line``."""
    if len(fields) < 4:
        raise FormatError(path, f"expected '{FIELDS}', got {len(fields)} field(s)", line)
    name, model, width, height, *params = fields
    spec = MODELS.get(model)
    if spec is None:
        raise FormatError(path, f"unknown camera model {model!r}; valid models: {', '.join(MODELS)}", line)
    if len(params) != spec.num_params:
        raise FormatError(
            path,
            f"{model} takes {spec.num_params} parameters ({', '.join(spec.param_names)}), got {len(params)}",
            line,
        )
    for label, value in (("WIDTH", width), ("HEIGHT", height)):
        if not (value.isascii() and value.isdigit()) or int(value) == 0:
            raise FormatError(path, f"{label} {value!r} is not a positive integer", line)
    parse_floats(path, line, params, f"{model} parameters")
    try:
        camera = Camera.from_string(" ".join(fields[1:]))
    except InputError as err:  # defensive: the checks above should make this unreachable
        raise FormatError(path, str(err), line) from err
    return name, camera
