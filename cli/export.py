"""``locseg export``: a visuallocalization.net submission from a results file."""

from __future__ import annotations

from pathlib import Path

import click

from locseg.io.localize_log import read_failed_queries
from locseg.io.poses import read_poses
from locseg.io.submission import NAMINGS, export_submission, read_query_names

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("export")
@click.option("--results", "results_path", type=_FILE, required=True,
              help="Estimated poses, one 'name qw qx qy qz tx ty tz' per line.")
@click.option("--queries", "queries_path", type=_FILE, required=True,
              help="Query list, 'name MODEL W H params...' or one name per line; defines the queries.")
@click.option("--dataset", type=click.Choice(list(NAMINGS)), required=True,
              help="How the benchmark names the queries.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Submission file to write (replaced atomically).")
@click.option("--log", "log_path", type=_FILE, default=None,
              help="The localizer's per-query JSON-lines log, to count fallback poses.")
def export(results_path: Path, queries_path: Path, dataset: str, output: Path, log_path: Path | None) -> None:
    """Write the submission file of a results file for visuallocalization.net.

    Every query of the list gets a line, under the name the benchmark expects:
    robotcar -> rear/<timestamp>.jpg (left and right images skipped), cmu and
    aachen -> the bare file name, generic -> the name unchanged. A query missing
    from the results is an error.
    """
    query_names = read_query_names(queries_path)
    results = read_poses(results_path)
    failed = read_failed_queries(log_path) if log_path is not None else None
    summary = export_submission(results, query_names, dataset, output, failed=failed)
    for count, what in ((summary.ignored_results, f"result(s) for names not in {queries_path}"),
                        (summary.ignored_failed, f"logged name(s) not in {queries_path}")):
        if count:
            click.secho(f"locseg: warning: {count} {what} were ignored", fg="yellow", err=True)
    fallbacks = "fallbacks unknown (no --log)" if summary.fallbacks is None else f"{summary.fallbacks} fallbacks"
    click.echo(f"wrote {summary.written} poses to {summary.output} (dataset {dataset}; "
               f"{fallbacks}; {summary.skipped} non-rear images skipped)")


COMMANDS = [export]
