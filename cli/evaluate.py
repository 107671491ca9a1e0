"""``locseg evaluate``: localization recall of a results file against ground truth."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from locseg.evaluate.pose import evaluate_poses
from locseg.io.poses import read_poses

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("evaluate")
@click.option("--results", "results_path", type=_FILE, required=True,
              help="Estimated poses, one 'name qw qx qy qz tx ty tz' per line.")
@click.option("--ground-truth", "ground_truth_path", type=_FILE, required=True,
              help="True poses, same format; defines the queries.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (thresholds, recall in %, median_error, missing) "
                   "instead of a table.")
def evaluate(results_path: Path, ground_truth_path: Path, as_json: bool) -> None:
    """Recall at (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) per condition, and median errors.

    The condition of a query is the first component of its name
    (night/cam0/000012.png -> night). A query missing from the results counts as a
    failure; results for names not in the ground truth are ignored with a warning.
    """
    ground_truth = read_poses(ground_truth_path)
    results = read_poses(results_path)
    evaluation = evaluate_poses(results, ground_truth)
    if evaluation.unexpected:
        ignored = evaluation.unexpected
        click.secho(f"locseg: warning: {ignored} result(s) for names not in the ground truth were ignored",
                    fg="yellow", err=True)
    if as_json:
        click.echo(evaluation.to_json())
    else:
        Console().print(evaluation.to_table())


COMMANDS = [evaluate]
