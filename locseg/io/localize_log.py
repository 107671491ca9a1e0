"""The per-query log of the localizer: one JSON object per line (JSON lines).

Each line is an object with at least::

    {"name": "night/rear/1418235223450115.jpg", "success": false, ...}

``name`` is the query's name as in the query list; ``success`` is ``false`` when
localization failed and the pose written for the query is the fallback pose (that
of its best retrieved reference). Other keys are free for the localizer to add.

The localizer appends a line per query as it goes, so a killed run may leave the
last line cut short: a final line that does not end with a newline and is not
valid JSON is skipped (its query's outcome is unknown). Any other malformed line
is an error. A query logged more than once (a resumed run) takes its last record.
Blank lines are skipped; line numbers are 1-based.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from locseg.errors import FormatError

from ._common import read_text

if TYPE_CHECKING:  # annotations only: typing.Self is Python 3.11+
    from typing_extensions import Self


def read_log(path: str | Path) -> dict[str, dict]:
    """``{name: last record}`` of every query in the log, in first-logged order.

    Raises:
        InputError: the file cannot be read.
        FormatError: naming the file and line of a line that is not a JSON object
            with a string ``name`` and a boolean ``success`` (a truncated last line
            is skipped, see the module docstring).
    """
    path = Path(path)
    lines = read_text(path).split("\n")
    records: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        truncated = number == len(lines)  # the last piece has no newline after it
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if truncated:
                break
            raise FormatError(path, f"not valid JSON ({err.msg} at column {err.colno})", number) from None
        name, _ = _check_record(path, number, record)
        records[name] = record
    return records


def read_failed_queries(path: str | Path) -> set[str]:
    """The names of the queries whose last record in the log says ``"success": false``
    (errors as ``read_log``)."""
    return {name for name, record in read_log(path).items() if not record["success"]}


class LogWriter:
    """Appends records to a log, one flushed line each, so a killed run loses at most
    the line being written. A file whose last line was cut short gets a newline first,
    so the next record starts on a line of its own.

    Use as a context manager: ``with LogWriter(path) as log: log.write({...})``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and \
            self.path.read_bytes()[-1:] != b"\n"
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- held open until close()
        if needs_newline:
            self._file.write("\n")

    def write(self, record: dict) -> None:
        """Append one record (it must hold ``name`` and ``success``)."""
        _check_record(self.path, 0, record)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_record(path: Path, line: int, record: object) -> tuple[str, bool]:
    """``(name, success)`` of a decoded line, or a FormatError at ``line``."""
    if not isinstance(record, dict):
        raise FormatError(path, f"expected a JSON object, got {type(record).__name__}", line)
    name, ok = record.get("name"), record.get("success")
    if not isinstance(name, str) or not name:
        raise FormatError(path, f"'name' must be a non-empty string, got {name!r}", line)
    if not isinstance(ok, bool):
        raise FormatError(path, f"'success' must be true or false, got {ok!r}", line)
    return name, ok
