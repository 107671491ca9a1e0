"""``locseg synth``, ``locseg synth-traversal`` and ``locseg synth-sky-pairs``: generate a
SynthSeasons street, add a further source traversal to one, and add sky points to its
correspondences."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from locseg.synth.conditions import SOURCE_CONDITIONS
from locseg.synth.generate import SPLITS, generate
from locseg.synth.sky_pairs import SkyPairConfig, add_sky_pairs
from locseg.synth.trajectory import SIZES
from locseg.synth.traversal import add_traversal

from .progress import stage_progress


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Street seed within the split.")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Train and test splits never share a street.")
@click.option("--size", type=click.Choice(list(SIZES)), default="default", show_default=True,
              help="small: 256x192, 24 reference images, 3 queries per condition (for tests); "
                   "default: 512x384, 100 reference images, 15 queries per condition.")
@click.option("--workers", type=int, default=None, help="Rendering processes [default: up to 2].")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it holds something else.")
def synth(out_dir: Path, seed: int, split: str, size: str, workers: int | None, overwrite: bool) -> None:
    """Generate a SynthSeasons street with full ground truth into OUT_DIR."""
    start = time.perf_counter()
    with stage_progress() as progress:
        out_dir = generate(out_dir, seed=seed, split=split, size=size, workers=workers, overwrite=overwrite,
                           progress=progress)
    summary = json.loads((out_dir / "synth.json").read_text())
    click.echo(f"{out_dir}: {summary['reference_images']} reference images, {summary['queries']} queries in "
               f"{len(summary['conditions'])} conditions, {summary['points3D']} 3D points, "
               f"{summary['correspondence_pairs']} correspondence pairs ({time.perf_counter() - start:.1f} s)")


@click.command("synth-traversal")
@click.argument("street", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--condition", type=click.Choice(SOURCE_CONDITIONS), default=SOURCE_CONDITIONS[0], show_default=True,
              help="The source condition: its light and how many cars are parked.")
@click.option("--workers", type=int, default=None, help="Rendering processes [default: up to 2].")
@click.option("--overwrite", is_flag=True, help="Render the traversal again if STREET already has it.")
def synth_traversal(street: Path, condition: str, workers: int | None, overwrite: bool) -> None:
    """Add a further traversal in the reference's light, with its own parked cars, to the
    SynthSeasons street STREET, with correspondences from it to every query condition
    in STREET/correspondences-CONDITION."""
    start = time.perf_counter()
    with stage_progress() as progress:
        entry = add_traversal(street, condition, workers=workers, overwrite=overwrite, progress=progress)
    click.echo(f"{street}: {entry['images']} {condition} images, {entry['correspondence_pairs']} correspondence "
               f"pairs in {street / entry['correspondences']} ({time.perf_counter() - start:.1f} s)")


@click.command("synth-sky-pairs")
@click.argument("street", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--stride", type=click.IntRange(min=1), default=SkyPairConfig.stride, show_default=True,
              help="Pixel grid of the reference's sky points.")
@click.option("--margin", type=click.IntRange(min=0), default=SkyPairConfig.margin, show_default=True,
              help="Pixels the reference's sky is eroded by.")
@click.option("--guard", type=click.IntRange(min=0), default=SkyPairConfig.guard, show_default=True,
              help="Pixels around the reference's surfaces, projected into the query, where no sky point is kept.")
@click.option("--overwrite", is_flag=True, help="Write them again if STREET already has them.")
def synth_sky_pairs(street: Path, stride: int, margin: int, guard: int, overwrite: bool) -> None:
    """Add correspondences at infinity, on the reference's sky, to every pair of the
    SynthSeasons street STREET, in STREET/correspondences-with-sky."""
    start = time.perf_counter()
    with stage_progress() as progress:
        record = add_sky_pairs(street, SkyPairConfig(stride, margin, guard), overwrite=overwrite, progress=progress)
    click.echo(f"{street}: {record['points']} sky points added to {record['pairs']} pairs in "
               f"{street / record['correspondences']} ({time.perf_counter() - start:.1f} s)")


COMMANDS = [synth, synth_traversal, synth_sky_pairs]
