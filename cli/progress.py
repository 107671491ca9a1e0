"""Progress bars for long library calls that report ``(stage, done, total)``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

LOG_INTERVAL = 10.0  # seconds between lines when stderr is not a terminal


@contextmanager
def stage_progress() -> Iterator[Callable[..., None]]:
    """A callback ``(stage, done, total, info="")`` showing one bar per stage on stderr.

    Bars appear from the first report on; ``info`` is shown after the bar (e.g.
    current losses). When stderr is not a terminal (a log file, CI), a plain line
    is written instead, every ``LOG_INTERVAL`` seconds and when a stage ends.
    """
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _line_logger()
        return
    bars = Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, info: str = "") -> None:
        if not tasks:
            bars.start()
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total, info=info)
        bars.update(tasks[stage], completed=done, total=total, info=info)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


def _line_logger() -> Callable[..., None]:
    start = time.monotonic()
    last: dict[str, float] = {}

    def update(stage: str, done: int, total: int, info: str = "") -> None:
        now = time.monotonic()
        if done == total or now - last.get(stage, -LOG_INTERVAL) >= LOG_INTERVAL:
            last[stage] = now
            print(f"[{now - start:7.1f} s] {stage} {done}/{total} {info}".rstrip(), file=sys.stderr, flush=True)

    return update
