"""``locseg weights``: the bundled weights, or what one weight file is and how it was trained;
``locseg bundle-weights``: a trained file made ready for ``assets/``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from locseg.localize.pipeline import DEFAULT_RETRIEVAL_WEIGHTS, DEFAULT_WEIGHTS
from locseg.models.bundle import bundle_weights
from locseg.models.weights import bundled_names, bundled_weights, file_sha256
from locseg.models.weights_info import WeightsSummary, summarize_weights

DEFAULTS = {DEFAULT_WEIGHTS: "localize --weights", DEFAULT_RETRIEVAL_WEIGHTS: "localize --retrieval-weights"}


@click.command("weights")
@click.argument("source", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def weights(source: str | None, as_json: bool) -> None:
    """List the bundled weights, or describe SOURCE (a bundled name, file or URL): its sha256, size,
    the weights it was trained from, the data it was trained on and its recipe."""
    if source is None:
        _list_bundled(as_json)
        return
    summary = summarize_weights(source)
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    _describe(summary)


def _list_bundled(as_json: bool) -> None:
    entries = [bundled_weights(name) for name in sorted(bundled_names(), key=_natural)]
    if as_json:
        click.echo(json.dumps([{"name": e.name, "model": e.model, "sha256": e.sha256, "present": e.path.is_file(),
                                "default_for": DEFAULTS.get(e.name), "match_ratio": e.match_ratio,
                                "description": e.description}
                               for e in entries]))
        return
    table = Table(title="Bundled weights (locseg weights NAME tells more)")
    for column in ("name", "model", "file"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", overflow="fold")
    for entry in entries:
        note = f"default of {DEFAULTS[entry.name]}; " if entry.name in DEFAULTS else ""
        table.add_row(entry.name, entry.model, "present" if entry.path.is_file() else "missing",
                      note + entry.description)
    Console().print(table)


def _describe(summary: WeightsSummary) -> None:
    metadata = dict(summary.metadata)
    rows = [("file", str(summary.path)),
            ("sha256", summary.sha256 + (f" (bundled {summary.bundled})" if summary.bundled else "")),
            ("tensors", f"{summary.tensors}, {summary.parameters:,} parameters ({summary.format})")]
    rows += [(key, str(metadata.pop(key))) for key in ("backbone", "source", "layers", "hypercolumn_norm")
             if key in metadata]
    if summary.match_ratio is not None:
        note = "locseg localize's default --ratio with these hypercolumns, coarse to fine"
        rows.append(("ratio test", f"{summary.match_ratio:g} ({note})"))
    if summary.init:   # a head on frozen hypercolumns records the weights it pools
        rows.append(("pools" if summary.metadata.get("source") == "hypercolumns" else "trained from", summary.init))
    metadata.pop("init_digest", None)
    if summary.trained_on:
        rows.append((f"trained on ({len(summary.trained_on)})", "\n".join(summary.trained_on)))
    sources = metadata.pop("sources", None)
    if isinstance(sources, dict):
        rows += [(key, str(sources[key])) for key in ("pairs", "images") if key in sources]
    recipe = metadata.pop("recipe", None)
    if isinstance(recipe, dict):
        rows.append(("recipe", " ".join(f"{key}={value}" for key, value in _flat(recipe))))
    rows += [(key, str(value)) for key, value in sorted(metadata.items())]
    table = Table(show_header=False, box=None, title=summary.bundled or str(summary.path), title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@click.command("bundle-weights")
@click.argument("source")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--relative-to", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".",
              show_default=True, help="The folder (the repository) that the recorded paths are made relative to.")
def bundle_weights_command(source: str, output: Path, relative_to: Path) -> None:
    """Copy SOURCE, a safetensors file a locseg run exported, to OUTPUT for assets/.

    The paths its header records (the training data in `sources`, any path in `recipe`) are
    made relative to --relative-to; a path outside it is refused. The tensors are copied
    unchanged, and the same SOURCE always gives the same bytes. Prints the sha256 to register."""
    path = bundle_weights(source, output, relative_to)
    click.echo(f"{path}  sha256 {file_sha256(path)}  {path.stat().st_size} bytes")


def _natural(name: str) -> list:
    """A sort key that puts ``v9`` before ``v10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _flat(record: dict, prefix: str = ""):
    """``(dotted key, value)`` of a nested record, in key order."""
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


COMMANDS = [weights, bundle_weights_command]
