"""Localization recall at pose-error thresholds, as visuallocalization.net reports it.

A query is localized at threshold (τ_t, τ_R) when both its position error (metres
between the estimated and true camera centres) is ≤ τ_t and its rotation error
(angle of the relative rotation, degrees) is ≤ τ_R. Recall is the percentage of
ground-truth queries localized. A query with no estimate counts as a failure, with
infinite errors; estimates of queries not in the ground truth are ignored (their
count is reported as ``unexpected``).

Queries are grouped by condition, the first component of their name
(``night/cam0/000012.png`` → ``night``); a name without ``/`` has no condition and
only counts in ``all``. Median errors include the failures, so they are infinite
when at least half of a group failed.

Example::

    >>> evaluation = evaluate_poses(read_poses("results.txt"), read_poses("gt.txt"))
    >>> evaluation.recall["night"]          # [r(0.25 m, 2°), r(0.5 m, 5°), r(5 m, 10°)] in %
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rich.table import Table

from locseg.errors import InputError
from locseg.geometry import Pose
from locseg.io._common import to_numpy

Thresholds = tuple[tuple[float, float], ...]

#: (metres, degrees): the fine, medium and coarse precisions of visuallocalization.net.
DEFAULT_THRESHOLDS: Thresholds = ((0.25, 2), (0.5, 5), (5, 10))
ALL = "all"


def query_condition(name: str) -> str | None:
    """The condition of a query: the first component of its name, None if it has none."""
    head, sep, _ = name.partition("/")
    return head if sep and head else None


@dataclass(frozen=True)
class PoseEvaluation:
    """Recall and median errors of a set of estimated poses, overall and per condition.

    Attributes:
        thresholds: ((metres, degrees), ...) the recall thresholds.
        recall: ``{group: [percent at each threshold]}``, ``"all"`` first, then the
            conditions sorted.
        median_error: ``{group: (metres, degrees)}``, same keys; ``inf`` when at least
            half of the group failed.
        num_queries: ``{group: number of ground-truth queries}``, same keys.
        missing: ground-truth queries without an estimate.
        unexpected: estimates for names not in the ground truth (ignored).
    """

    thresholds: Thresholds
    recall: dict[str, list[float]]
    median_error: dict[str, tuple[float, float]]
    num_queries: dict[str, int]
    missing: int
    unexpected: int

    def to_dict(self) -> dict:
        """The JSON-ready summary: thresholds, recall (%), median_error, missing.

        A median that is infinite becomes ``None`` (JSON ``null``).
        """
        return {
            "thresholds": [list(t) for t in self.thresholds],
            "recall": {group: list(r) for group, r in self.recall.items()},
            "median_error": {
                group: [_finite_or_none(dt), _finite_or_none(dr)]
                for group, (dt, dr) in self.median_error.items()
            },
            "missing": self.missing,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of strict JSON."""
        return json.dumps(self.to_dict(), allow_nan=False)

    def to_table(self) -> Table:
        """A rich table: one row per group, recall at each threshold and median errors."""
        table = Table(title="Localization recall (%) and median errors", caption=self._caption())
        table.add_column("condition")
        table.add_column("queries", justify="right")
        for dt, dr in self.thresholds:
            table.add_column(f"{dt:g}m,{dr:g}°", justify="right")
        table.add_column("median m", justify="right")
        table.add_column("median °", justify="right")
        for group, recall in self.recall.items():
            dt, dr = self.median_error[group]
            recalls = [f"{r:.1f}" for r in recall]
            table.add_row(group, str(self.num_queries[group]), *recalls, f"{dt:.3f}", f"{dr:.2f}",
                          end_section=group == ALL)
        return table

    def _caption(self) -> str:
        caption = f"{self.missing} missing"
        if self.unexpected:
            caption += f", {self.unexpected} estimate(s) not in the ground truth ignored"
        return caption


def evaluate_poses(
    results: Mapping[str, Pose],
    ground_truth: Mapping[str, Pose],
    thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
    condition_of: Callable[[str], str | None] = query_condition,
) -> PoseEvaluation:
    """Evaluate estimated poses against the ground truth.

    Args:
        results: ``{name: estimated cam_from_world}``.
        ground_truth: ``{name: true cam_from_world}``; defines the queries.
        thresholds: ((metres, degrees), ...), each positive.
        condition_of: maps a query name to its condition (None: ``all`` only).

    Returns:
        The evaluation; see :class:`PoseEvaluation`.

    Raises:
        InputError: the ground truth is empty, a threshold is not positive, or a
            condition is called ``"all"``.
    """
    thresholds = _check_thresholds(thresholds)
    if not ground_truth:
        raise InputError("the ground truth holds no poses")
    names = list(ground_truth)
    dt, dr = pose_errors(results, ground_truth)
    groups = _group(names, condition_of)
    recall, median, counts = {}, {}, {}
    for group, index in groups.items():
        localized = [np.count_nonzero((dt[index] <= t) & (dr[index] <= r)) for t, r in thresholds]
        recall[group] = [100.0 * int(k) / len(index) for k in localized]
        median[group] = (float(np.median(dt[index])), float(np.median(dr[index])))
        counts[group] = len(index)
    return PoseEvaluation(
        thresholds=thresholds,
        recall=recall,
        median_error=median,
        num_queries=counts,
        missing=sum(name not in results for name in names),
        unexpected=sum(name not in ground_truth for name in results),
    )


def pose_errors(
    results: Mapping[str, Pose], ground_truth: Mapping[str, Pose]
) -> tuple[np.ndarray, np.ndarray]:
    """Position (m) and rotation (°) errors of every ground-truth query, in its order.

    Returns:
        dt, dr: (Q,) float64 each; ``inf`` for a query without an estimate.
    """
    names = list(ground_truth)
    dt = np.full(len(names), np.inf)
    dr = np.full(len(names), np.inf)
    found = [i for i, name in enumerate(names) if name in results]
    if found:
        T_true = Pose.stack([ground_truth[names[i]] for i in found])
        T_est = Pose.stack([results[names[i]] for i in found])
        if tuple(T_true.shape) != (len(found),) or tuple(T_est.shape) != (len(found),):
            raise InputError("pose_errors expects one unbatched Pose per name")
        error_t, error_r = T_est.error(T_true)
        dt[found] = to_numpy(error_t).reshape(-1)
        dr[found] = to_numpy(error_r).reshape(-1)
    return dt, dr


def _group(names: list[str], condition_of: Callable[[str], str | None]) -> dict[str, np.ndarray]:
    """``{"all": all indices, condition: its indices, ...}``, conditions sorted."""
    by_condition: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        condition = condition_of(name)
        if condition == ALL:
            raise InputError(f"query {name!r} has condition {ALL!r}, a name reserved for the overall row")
        if condition is not None:
            by_condition.setdefault(condition, []).append(i)
    groups = {ALL: np.arange(len(names))}
    groups.update((c, np.asarray(by_condition[c])) for c in sorted(by_condition))
    return groups


def _check_thresholds(thresholds: Sequence[tuple[float, float]]) -> Thresholds:
    """Check the thresholds; whole numbers become ints, so JSON shows ``[5, 10]``."""
    checked = []
    for pair in thresholds:
        try:
            values = [float(v) for v in pair]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
            raise InputError(f"threshold {pair!r} is not a pair of positive (metres, degrees)")
        checked.append(tuple(int(v) if v.is_integer() else v for v in values))
    if not checked:
        raise InputError("no thresholds given")
    return tuple(checked)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
