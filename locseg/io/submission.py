"""Submission files for the visuallocalization.net benchmark.

A submission is a pose file (``locseg.io.poses``): one ``name qw qx qy qz tx ty tz``
per line, ``cam_from_world``, quaternion w-first, normalised with w ≥ 0. What
differs between datasets is the name the benchmark expects for a query; the
``NAMINGS`` registry maps a query-list name to it, or to ``None`` for a query the
benchmark does not take:

- ``generic``: the name as in the query list.
- ``robotcar`` (RobotCar Seasons): ``rear/<timestamp>.jpg``, all conditions in one
  file (``night/rear/1418235223450115.jpg`` -> ``rear/1418235223450115.jpg``); only
  rear images are submitted, ``left``/``right`` ones are skipped.
- ``cmu`` (Extended CMU Seasons): the bare file name, all slices in one file
  (``slice2/query/img_00122_c1_1303398474779487us.jpg`` ->
  ``img_00122_c1_1303398474779487us.jpg``).
- ``aachen`` (Aachen Day-Night): the bare file name
  (``query/night/nexus5x/IMG_20161227_173116.jpg`` -> ``IMG_20161227_173116.jpg``).

Every query of the list that the benchmark takes gets a line, in list order. A
query without a pose in the results is an error unless the caller supplies a
fallback; two queries with the same submission name are an error. The file is
replaced atomically.

Example::

    >>> summary = export_submission(read_poses("results.txt"), read_query_names("night.txt"),
    ...                             "robotcar", Path("submission.txt"))
    >>> summary.written, summary.skipped
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from locseg.errors import FormatError, InputError, lookup
from locseg.geometry import Pose

from ._common import iter_records
from .poses import write_poses
from .queries import read_query_list

Naming = Callable[[str], str | None]
"""Maps a query-list name to its submission name, or to ``None`` to leave it out."""

_ROBOTCAR_SKIPPED = ("left", "right")
_MAX_LISTED = 5


def _generic(name: str) -> str:
    return name


def _robotcar(name: str) -> str | None:
    parts = PurePosixPath(name).parts
    camera = parts[-2] if len(parts) >= 2 else None
    if camera == "rear":
        return f"rear/{parts[-1]}"
    if camera in _ROBOTCAR_SKIPPED:
        return None
    raise InputError(
        f"RobotCar query {name!r} is not '<condition>/<camera>/<timestamp>.jpg' "
        f"with camera rear, left or right"
    )


def _bare_file_name(name: str) -> str:
    return PurePosixPath(name).name


NAMINGS: dict[str, Naming] = {
    "generic": _generic,
    "robotcar": _robotcar,
    "cmu": _bare_file_name,
    "aachen": _bare_file_name,
}


def get_naming(dataset: str) -> Naming:
    """The naming of ``dataset``; raises RegistryError listing the valid names."""
    return lookup(NAMINGS, "dataset", dataset)


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_submission`` wrote.

    Attributes:
        dataset: the naming used.
        output: the submission file.
        written: lines written, one per submitted query.
        skipped: queries of the list the benchmark does not take (RobotCar left/right).
        fallbacks: written queries listed in ``failed`` (their pose is the fallback
            pose of the localizer), or ``None`` when ``failed`` was not given.
        filled: written queries missing from the results, given the caller's fallback.
        ignored_results: results for names not in the query list (not written).
        ignored_failed: names in ``failed`` that are not in the query list.
    """

    dataset: str
    output: Path
    written: int
    skipped: int
    fallbacks: int | None
    filled: int = 0
    ignored_results: int = 0
    ignored_failed: int = 0


def export_submission(
    results: Mapping[str, Pose],
    query_names: Sequence[str],
    dataset: str,
    output: str | Path,
    failed: AbstractSet[str] | None = None,
    fallback: Callable[[str], Pose] | None = None,
) -> ExportSummary:
    """Write the submission of ``results`` for the queries of ``query_names``.

    Args:
        results: ``{query name: Pose}``, unbatched ``cam_from_world`` poses, keyed by
            the names of the query list.
        query_names: the query list's names, in the order to write them.
        dataset: a key of ``NAMINGS``.
        output: the submission file; replaced atomically, parents created.
        failed: queries the localizer failed on (see
            ``locseg.io.localize_log.read_failed_queries``); only counted.
        fallback: called with the name of a query missing from ``results``, returns
            the pose to submit for it; without it a missing query is an error.

    Returns:
        The counts of what was written, see ``ExportSummary``.

    Raises:
        RegistryError: unknown ``dataset``.
        InputError: an empty or repeated query list, a name the dataset's naming
            does not take, queries missing from ``results`` (without ``fallback``),
            two queries with the same submission name, or a pose that cannot be
            written (batched, not finite).
    """
    naming = get_naming(dataset)
    submitted = _submission_names(query_names, naming)
    missing = [query for query in submitted if query not in results]
    if missing and fallback is None:
        shown = ", ".join(repr(m) for m in missing[:_MAX_LISTED])
        more = ", ..." if len(missing) > _MAX_LISTED else ""
        raise InputError(
            f"{len(missing)} of {len(submitted)} queries have no pose in the results "
            f"(first: {shown}{more}); re-run localize on them"
        )
    poses = {
        submission: results[query] if query in results else fallback(query)
        for query, submission in submitted.items()
    }
    write_poses(output, poses)
    listed = set(query_names)
    return ExportSummary(
        dataset=dataset,
        output=Path(output),
        written=len(poses),
        skipped=len(query_names) - len(submitted),
        fallbacks=None if failed is None else sum(query in failed for query in submitted),
        filled=len(missing),
        ignored_results=sum(name not in listed for name in results),
        ignored_failed=0 if failed is None else len(set(failed) - listed),
    )


def _submission_names(query_names: Sequence[str], naming: Naming) -> dict[str, str]:
    """``{query name: submission name}`` of the submitted queries, in list order."""
    if not query_names:
        raise InputError("the query list is empty")
    submitted: dict[str, str] = {}
    owner: dict[str, str] = {}
    seen: set[str] = set()
    for query in query_names:
        if query in seen:
            raise InputError(f"query {query!r} is listed twice")
        seen.add(query)
        submission = naming(query)
        if submission is None:
            continue
        if submission in owner:
            raise InputError(
                f"queries {owner[submission]!r} and {query!r} both have the submission name {submission!r}"
            )
        owner[submission] = query
        submitted[query] = submission
    return submitted


def read_query_names(path: str | Path) -> list[str]:
    """The names of a query list, with intrinsics or without.

    Accepts the hloc format ``name MODEL WIDTH HEIGHT params...`` (read, and
    checked, by ``locseg.io.queries.read_query_list``) and a plain list with one
    name per line, as visuallocalization.net distributes some query lists. Blank
    lines and ``#`` comments are skipped.

    Raises:
        FormatError: naming the file and line of a repeated name, or of a line that
            does not fit the file's format (a file with intrinsics on some lines
            must have them on every line).
    """
    path = Path(path)
    records = list(iter_records(path))
    if any(len(fields) > 1 for _, fields in records):
        return [name for name, _ in read_query_list(path)]
    names: dict[str, int] = {}
    for line, (name,) in records:
        if name in names:
            raise FormatError(path, f"duplicate name {name!r} (first on line {names[name]})", line)
        names[name] = line
    return list(names)
