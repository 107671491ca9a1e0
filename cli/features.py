"""``locseg evaluate-features``: matching precision and retrieval recall on a street;
``locseg widen-backbone``: a trained backbone widened into a larger architecture."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from locseg.evaluate.figures import FIGURE_POINTS, matching_figures
from locseg.evaluate.matching import THRESHOLD, matching_precision
from locseg.evaluate.retrieval import retrieval_recall
from locseg.models.backbone import BACKBONES
from locseg.models.load import load_hypercolumns
from locseg.models.widen import DEFAULT_SPLIT_NOISE, widen_weights
from locseg.train.pairs import CorrespondencePairs
from locseg.train.retrieval import load_retrieval_model

from .device import device_option
from .hypercolumn_norm import hypercolumn_norm_option, hypercolumn_scales_option
from .progress import stage_progress


@click.command("evaluate-features")
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A SynthSeasons street (its correspondences, images and poses).")
@click.option("--weights", default=None, help="Hypercolumn backbone weights (name, file or URL); random if absent.")
@click.option("--retrieval-weights", default=None, help="NetVLAD weights; retrieval is skipped if absent.")
@click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default="vgg16-slim", show_default=True)
@hypercolumn_norm_option
@hypercolumn_scales_option
@click.option("--max-side", type=click.IntRange(min=32), default=512, show_default=True)
@click.option("--points", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Correspondences checked per image pair.")
@click.option("--reference-neighbours", type=click.IntRange(min=0), default=0, show_default=True,
              help="Retrieval ranks references averaged with this many most similar ones, as the localizer does "
                   "by default with 2 (0: plain NetVLAD).")
@click.option("--figures", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Also draw the first pair of each condition into DIR/<condition>.png: {FIGURE_POINTS} true "
                   f"points and where their hypercolumns match, green within {THRESHOLD:g} px, red beyond.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@device_option
def evaluate_features(dataset: Path, weights: str | None, retrieval_weights: str | None, backbone: str,
                      hypercolumn_norm: str, hypercolumn_scales: tuple[float, ...], max_side: int, points: int,
                      reference_neighbours: int, figures: Path | None, as_json: bool,
                      device: torch.device) -> None:
    """Matching precision of hypercolumns (within 4 px) and retrieval recall@1/5/10, per condition."""
    result: dict = {}
    with stage_progress() as progress:
        model = load_hypercolumns(backbone, weights, normalization=hypercolumn_norm).to(device)
        pairs = CorrespondencePairs(dataset / "correspondences", dataset / "images", max_side)
        result["matching_precision"] = matching_precision(model, pairs, max_points=points, progress=progress,
                                                          scales=hypercolumn_scales).percent()
        if figures is not None:
            result["figures"] = [str(path) for path in matching_figures(model, pairs, figures, progress=progress,
                                                                        scales=hypercolumn_scales)]
        if retrieval_weights:
            retrieval = load_retrieval_model(retrieval_weights, weights, backbone).to(device)
            recall = retrieval_recall(retrieval, dataset, max_side=max_side, progress=progress,
                                      reference_neighbours=reference_neighbours)
            result["retrieval_recall"] = {c: [r[k] for k in (1, 5, 10)] for c, r in recall.items()}
    if as_json:
        click.echo(json.dumps(result))
        return
    console = Console()
    table = Table(title=f"Matching precision (%), true match within {THRESHOLD:g} px")
    table.add_column("condition")
    table.add_column("precision", justify="right")
    for condition, value in result["matching_precision"].items():
        table.add_row(condition, f"{value:.1f}")
    console.print(table)
    if "figures" in result:
        console.print(f"figures: {len(result['figures'])} in {figures}")
    if "retrieval_recall" in result:
        table = Table(title="Retrieval recall (%), a reference within 5 m and 30°")
        for column in ("condition", "@1", "@5", "@10"):
            table.add_column(column, justify="left" if column == "condition" else "right")
        for condition, values in result["retrieval_recall"].items():
            table.add_row(condition, *(f"{v:.1f}" for v in values))
        console.print(table)


@click.command("widen-backbone")
@click.argument("weights")
@click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default="vgg16-half", show_default=True,
              help="The wider architecture; its widths must be one integer multiple of the weights'.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .safetensors file to write.")
@click.option("--split-noise", type=click.FloatRange(min=0), default=DEFAULT_SPLIT_NOISE, show_default=True,
              help="Std (relative to each layer's) of the zero-sum perturbations that set replicated channels apart.")
@click.option("--seed", type=int, default=0, show_default=True)
def widen_backbone_command(weights: str, backbone: str, output: Path, split_noise: float, seed: int) -> None:
    """Widen trained backbone WEIGHTS (name, file or URL) into --backbone without changing its
    matches, to warm-start a wider model (finetune-features --backbone B --init OUTPUT). Weights of
    a segmentation model give that model on the wider backbone, with the same predictions
    (train-seg --backbone B --init OUTPUT continues it)."""
    path = widen_weights(weights, backbone, output, split_noise, seed)
    click.echo(f"wrote {path} ({backbone})")


COMMANDS = [evaluate_features, widen_backbone_command]
