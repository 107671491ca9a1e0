"""``locseg localize``: the hierarchical localizer over a query list."""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
from rich.console import Console

from locseg.evaluate.pose import evaluate_poses
from locseg.io.colmap import read_model
from locseg.io.localize_log import read_failed_queries
from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.localize.feature_gradients import GRADIENT_OPERATORS
from locseg.localize.matching import MATCHING_METHODS, RATIO_TESTS
from locseg.localize.pipeline import LocalizeConfig, matching_config
from locseg.localize.pipeline import localize as run_localize
from locseg.localize.pnp import ESTIMATORS, PnPConfig
from locseg.localize.reference import ReferenceMap
from locseg.localize.refine import RefineConfig
from locseg.localize.robust import ROBUST_LOSSES
from locseg.localize.triangulate import triangulate_reconstruction
from locseg.models.backbone import BACKBONES
from locseg.models.load import load_hypercolumns, weights_digest
from locseg.synth.generate import generate

from .device import device_option
from .hypercolumn_norm import (
    hypercolumn_norm_option,
    hypercolumn_scales_option,
    parse_scales,
)
from .progress import stage_progress

DEFAULT_DATASET = Path("outputs/synthseasons-test-0")
_DEFAULTS = LocalizeConfig()


@click.command("localize")
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A SynthSeasons street (reference/model, images/, queries/all.txt). Without --dataset and "
                   f"--reference, the default test street {DEFAULT_DATASET} (generated once).")
@click.option("--reference", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="COLMAP model of the reference images.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder that reference and query image names are relative to.")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Query list: 'name MODEL WIDTH HEIGHT params...' per line.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Results file 'name qw qx qy qz tx ty tz' [default: outputs/localize/<dataset>/results.txt].")
@click.option("--reference-neighbours", type=click.IntRange(min=0), default=_DEFAULTS.reference_neighbours,
              show_default=True,
              help="Rank references by their descriptors averaged with this many most similar references (0: none).")
@click.option("--top-k", type=click.IntRange(min=1), default=_DEFAULTS.top_k, show_default=True,
              help="Reference images retrieved per query.")
@click.option("--weights", default=_DEFAULTS.weights, show_default=True,
              help="Hypercolumn weights: a bundled name, a file or a URL.")
@click.option("--retrieval-weights", default=_DEFAULTS.retrieval_weights, show_default=True,
              help="NetVLAD weights: a bundled name, a file or a URL.")
@click.option("--retrieval-hypercolumns", default=None, metavar="W",
              help="Hypercolumn weights for retrieval to run on, when the retrieval head pools other ones than "
                   "--weights (e.g. synthseasons-slim-dmcgn-v8 for the default head); one more network pass per image.")
@click.option("--retrieval-scales", default=",".join(map(str, _DEFAULTS.retrieval_scales)), show_default=True,
              callback=lambda _ctx, _param, value: parse_scales(value, "retrieval scales"),
              help="Comma-separated multiples of the input size pooled into each global descriptor, "
                   "e.g. 1,0.7071,0.5; every scale but 1 costs one more network pass per image.")
@hypercolumn_scales_option
@click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default=_DEFAULTS.backbone, show_default=True)
@hypercolumn_norm_option
@click.option("--matching", type=click.Choice(MATCHING_METHODS), default=_DEFAULTS.matching.method,
              show_default=True, help="Sparse-to-dense matching: coarse to fine, or against every cell (S2DHM).")
@click.option("--ratio", type=click.FloatRange(0, 1, min_open=True), default=None,
              show_default=f"{_DEFAULTS.matching.ratio:g}; 1 with the v10 and v11 hypercolumns, coarse to fine, "
                           "similarity form",
              help="Ratio test of the matching: a match is kept when ratio² times its similarity is at least "
                   "the k-th best, or with --ratio-test distance when its distance 1 - similarity is at most "
                   "ratio² times the k-th's (1 keeps nearly every match; the sharper v10 and v11 hypercolumns "
                   "localize far better at 1 than at 0.9 with the similarity form).")
@click.option("--ratio-test", type=click.Choice(RATIO_TESTS), default=_DEFAULTS.matching.ratio_test,
              show_default=True,
              help="Form of the ratio test: on the similarities, or on the distances 1 - similarity (Lowe's), "
                   "which keeps a like share of matches whatever the hypercolumns.")
@click.option("--refit-ratio", type=click.FloatRange(0, 1, min_open=True), default=_DEFAULTS.matching.refit_ratio,
              show_default=True,
              help="Refit the winning pose over the matches that pass the ratio test at this looser ratio, while "
                   "RANSAC keeps to those that pass --ratio (a value at or below --ratio: over RANSAC's matches).")
@click.option("--pnp", "estimator", type=click.Choice(sorted(ESTIMATORS)), default=_DEFAULTS.pnp.estimator,
              show_default=True, help="RANSAC-PnP implementation.")
@click.option("--no-refit", is_flag=True,
              help="Keep the best reference's RANSAC pose (no refit over every retrieved reference's matches).")
@click.option("--no-refine", is_flag=True, help="Keep the RANSAC-PnP poses (no feature-metric refinement).")
@click.option("--refine-points", type=click.IntRange(min=0), default=_DEFAULTS.refine_points, show_default=True,
              help="Inliers the refinement aligns, spread evenly over them (0: all).")
@click.option("--refine-loss", type=click.Choice(sorted(ROBUST_LOSSES)), default=_DEFAULTS.refine.loss,
              show_default=True, help="Robust loss of the feature-metric refinement.")
@click.option("--refine-gradient", type=click.Choice(sorted(GRADIENT_OPERATORS)),
              default=_DEFAULTS.refine.gradient_operator, show_default=True,
              help="Feature-map gradient operator of the refinement.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Feature store of the map [default: features.h5 next to --output].")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Per-query JSON-lines log [default: --output with .log.jsonl]; a rerun reuses its queries.")
@device_option
def localize(dataset: Path | None, reference: Path | None, images: Path | None, queries: Path | None,
             output: Path | None, reference_neighbours: int, top_k: int, weights: str, retrieval_weights: str,
             retrieval_hypercolumns: str | None, retrieval_scales: tuple[float, ...], hypercolumn_scales: tuple[float, ...], backbone: str,
             hypercolumn_norm: str, matching: str, ratio: float | None, ratio_test: str,
             refit_ratio: float,
             estimator: str, no_refit: bool,
             no_refine: bool, refine_points: int, refine_loss: str, refine_gradient: str, store: Path | None,
             log_path: Path | None, device: torch.device) -> None:
    """Localize query images against a reference map: retrieval, sparse-to-dense
    matching, RANSAC-PnP, feature-metric refinement. With no options, localizes the default SynthSeasons test
    street and prints its recall table."""
    config = LocalizeConfig(weights=weights, retrieval_weights=retrieval_weights,   # bad settings fail before any work
                            retrieval_hypercolumns=retrieval_hypercolumns,
                            retrieval_scales=retrieval_scales, hypercolumn_scales=hypercolumn_scales,
                            backbone=backbone,
                            hypercolumn_norm=hypercolumn_norm, top_k=top_k,
                            reference_neighbours=reference_neighbours,
                            matching=matching_config(weights, matching, ratio, ratio_test, refit_ratio),
                            pnp=PnPConfig(estimator=estimator, refit=not no_refit),
                            refine=None if no_refine else RefineConfig(loss=refine_loss,
                                                                       gradient_operator=refine_gradient),
                            refine_points=refine_points)
    start = time.perf_counter()
    ground_truth = None
    with stage_progress() as progress:
        if reference is None:
            dataset = dataset or DEFAULT_DATASET
            if not (dataset / "synth.json").is_file():
                click.echo(f"generating the SynthSeasons test street {dataset} (once)")
                generate(dataset, progress=progress)
            reference, images = dataset / "reference" / "model", dataset / "images"
            queries = queries or dataset / "queries" / "all.txt"
            if (dataset / "ground_truth" / "queries.txt").is_file():
                ground_truth = dataset / "ground_truth" / "queries.txt"
            output = output or Path("outputs/localize") / dataset.name / "results.txt"
        elif dataset is not None:
            raise click.UsageError("give either --dataset or --reference/--images/--queries, not both")
        missing = [n for n, v in (("--images", images), ("--queries", queries), ("--output", output)) if v is None]
        if missing:
            raise click.UsageError(f"with --reference, also give {', '.join(missing)}")
        query_list = read_query_list(queries)   # a malformed list fails here, before any work
        reference_map = ReferenceMap.read(reference, images)
        if not reference_map.has_points():
            # one folder per feature setting: a model triangulated with other features is kept, not refused
            triangulated = output.parent / f"reference-triangulated-{weights_digest(weights)[:12]}-{hypercolumn_norm}"
            click.echo(f"{reference} has poses but no 3D points: triangulating them with locseg features "
                       f"into {triangulated} (once)")
            model = triangulate_reconstruction(read_model(reference), images, triangulated,
                                               load_hypercolumns(backbone, weights, normalization=hypercolumn_norm)
                                               .eval().to(device),
                                               progress=progress)
            reference_map = ReferenceMap.from_reconstruction(model, images)
        summary = run_localize(reference_map, query_list, images, output,
                               store or output.parent / "features.h5", log_path, config=config, progress=progress,
                               device=device)
    log_path = log_path or output.with_suffix(".log.jsonl")
    failed = len(read_failed_queries(log_path) & {n for n, _ in query_list})
    click.echo(f"localized {summary.queries} queries ({failed} failed, given their best reference's pose; "
               f"{summary.reused} reused from the log) in {time.perf_counter() - start:.0f} s"
               + (f", median {summary.median_seconds_per_query:.2f} s per query" if summary.localized else ""))
    if summary.unusable:
        click.secho(f"locseg: warning: {len(summary.unusable)} queries could not be used and have no result "
                    f"(first: {summary.unusable[0]}); the log says why", fg="yellow", err=True)
    if summary.ratio_test_starved(config.matching.ratio):
        click.secho(f"locseg: warning: the ratio test ({config.matching.ratio:g}) kept a median "
                    f"{100 * summary.median_kept_fraction:.1f} % of the map points tried per reference; it may "
                    f"be too strict for these hypercolumns: try --ratio 1 or --ratio-test distance", fg="yellow",
                    err=True)
    click.echo(f"results: {summary.results}  log: {log_path}")
    if ground_truth is not None:
        Console().print(evaluate_poses(read_poses(summary.results), read_poses(ground_truth)).to_table())


COMMANDS = [localize]
