"""Segmentation commands: ``locseg train-seg``, ``locseg segment`` and ``locseg evaluate-seg``."""

from __future__ import annotations

from pathlib import Path

import click
import torch
from rich.console import Console

from locseg.evaluate.segmentation import evaluate_segmentation
from locseg.models.seg_inference import read_names, segment_images
from locseg.train.seg_losses import CORRESPONDENCE_LOSSES
from locseg.train.segmentation import (
    BACKBONE_MODES,
    DEFAULT_BACKBONE_WEIGHTS,
    NON_STATIONARY_NAMES,
    SegConfig,
    has_correspondences,
    train_segmentation,
)

from .device import device_option
from .progress import stage_progress
from .train import run_options

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_DEFAULTS = SegConfig()


@click.command("train-seg")
@click.option("--dataset", "datasets", type=_DIR, required=True, multiple=True,
              help="A SynthSeasons street, or any folder with images/ and labels/, and correspondences/ unless it "
                   "gives labels only; repeat for several.")
@click.option("--correspondences", type=_DIR, multiple=True,
              help="A further folder of Cross-Season Correspondence files, used by the correspondence loss only "
                   "(its labels are never read); repeat for several.")
@click.option("--images", type=_DIR, multiple=True,
              help="Root that the image paths in those files are relative to; one per --correspondences, "
                   "paired in the order given.")
@run_options(_DEFAULTS, lr_default=_DEFAULTS.lr, lr_help="SGD learning rate of the heads (poly decay).")
@click.option("--backbone-mode", type=click.Choice(BACKBONE_MODES), default=_DEFAULTS.backbone_mode,
              show_default=True,
              help=f"frozen: share the feature backbone (--init, default {DEFAULT_BACKBONE_WEIGHTS}) untouched; "
                   "finetune: train it at 0.1x the rate (--backbone-lr-scale); separate: a backbone of its own, random unless --init. "
                   "An --init that is a whole segmentation model (heads included) is continued.")
@click.option("--backbone-lr-scale", type=click.FloatRange(min=0), default=None,
              help="Backbone learning rate as a multiple of --lr [default: 0.1 for finetune, 1 for separate].")
@click.option("--head-layer", type=click.IntRange(min=1), default=_DEFAULTS.head_layer, show_default=True,
              help="Backbone layer whose input feeds the PSP head (23: relu4_3, stride 8; 28: relu5_2, stride 16).")
@click.option("--aux-layer", type=click.IntRange(min=1), default=_DEFAULTS.aux_layer, show_default=True,
              help="Backbone layer whose input feeds the auxiliary head (16: relu3_3, stride 4; 21: relu4_2).")
@click.option("--class-balance", type=click.FloatRange(min=0), default=_DEFAULTS.class_balance, show_default=True,
              help="Weigh each class's cross-entropy by (median frequency / its frequency) ** this "
                   "(0: plain; 0.5: inverse square root), clipped to [0.1, 10].")
@click.option("--balance-correspondences", is_flag=True,
              help="Weigh each correspondence by the class weight (--class-balance) of the class the reference "
                   "predicts there.")
@click.option("--loss", "correspondence_loss", type=click.Choice(CORRESPONDENCE_LOSSES),
              default=_DEFAULTS.correspondence_loss, show_default=True,
              help="Correspondence loss: ce, hinge-c (final layer) or hinge-f (penultimate features).")
@click.option("--lambda", "correspondence_weight", type=click.FloatRange(min=0),
              default=_DEFAULTS.correspondence_weight, show_default=True,
              help="Weight of the correspondence loss; the total is scaled by 1/(1+lambda). 0: labels only.")
@click.option("--margin", type=click.FloatRange(-1, 1), default=_DEFAULTS.margin, show_default=True,
              help="Cosine margin m of the hinge losses, max(0, m - cos).")
@click.option("--min-confidence", type=click.FloatRange(0, 1, max_open=True), default=_DEFAULTS.min_confidence,
              show_default=True,
              help="Drop correspondences whose reference prediction has a lower softmax probability (0: keep all).")
@click.option("--keep-class", "keep_classes", type=click.Choice(NON_STATIONARY_NAMES), multiple=True,
              help="A non-stationary class whose correspondences the filter keeps (e.g. car, when the pairs only "
                   "join a car that stayed parked); repeat for several.")
@click.option("--warmup", type=click.IntRange(min=0), default=_DEFAULTS.warmup, show_default=True,
              help="Steps on labels alone before the correspondence loss starts.")
@click.option("--crop", type=click.IntRange(min=32), default=None,
              help="Train on random square crops of this size [default: whole images].")
@click.option("--labels-per-condition", type=click.IntRange(min=0), default=_DEFAULTS.labels_per_condition,
              show_default=True, help="Labelled images per non-reference condition (the reference is fully labelled).")
@click.option("--reference-condition", default=_DEFAULTS.reference_condition, show_default=True)
@click.option("--validate-every", type=click.IntRange(min=0), default=_DEFAULTS.validate_every, show_default=True,
              help="Steps between mIoU checks on held-out images (0: never); the best weights go to .best.safetensors.")
def train_seg(datasets: tuple[Path, ...], correspondences: tuple[Path, ...], images: tuple[Path, ...], output: Path, init: str | None, backbone: str, iterations: int, lr: float,
              max_side: int, checkpoint_every: int, seed: int, resume: bool, backbone_mode: str,
              backbone_lr_scale: float | None,
              head_layer: int, aux_layer: int, class_balance: float, balance_correspondences: bool,
              correspondence_loss: str,
              correspondence_weight: float, margin: float, min_confidence: float,
              keep_classes: tuple[str, ...], warmup: int, crop: int | None,
              labels_per_condition: int, reference_condition: str, validate_every: int, device: torch.device) -> None:
    """Train a PSPNet-style segmentation head on labels and cross-condition correspondences (seed 000)."""
    if len(correspondences) != len(images):
        raise click.UsageError(f"give one --images root per --correspondences folder "
                               f"({len(correspondences)} folders, {len(images)} roots)")
    config = SegConfig(backbone=backbone, backbone_mode=backbone_mode,
                       backbone_lr_scale=backbone_lr_scale, init=init, iterations=iterations, lr=lr,
                       head_layer=head_layer, aux_layer=aux_layer, class_balance=class_balance,
                       balance_correspondences=balance_correspondences,
                       max_side=max_side, crop=crop, checkpoint_every=checkpoint_every, seed=seed,
                       correspondence_loss=correspondence_loss, correspondence_weight=correspondence_weight,
                       margin=margin, min_confidence=min_confidence, keep_classes=keep_classes, warmup=warmup, labels_per_condition=labels_per_condition,
                       reference_condition=reference_condition, validate_every=validate_every)
    if correspondence_weight > 0:
        for dataset in datasets:
            if not has_correspondences(dataset):
                click.echo(f"{dataset}: labels only (no correspondences/ folder)", err=True)
    elif correspondences:
        click.echo(f"--lambda 0: labels only; the {len(correspondences)} --correspondences folder(s) are not read",
                   err=True)
    with stage_progress() as progress:
        train_segmentation(datasets, output, config, resume=resume,
                           progress=lambda stage, done, total, parts: progress(stage, done, total, _format(parts)),
                           device=device, extra_correspondences=list(zip(correspondences, images)))
    click.echo(f"{output} (weights: {output.with_suffix('.safetensors')})")


def _format(parts: dict[str, float]) -> str:
    """The loss terms of a step, or the validation mIoU of a check."""
    if "miou" in parts:
        return f"mIoU {100 * parts['miou']:.1f} (all conditions)"
    return " ".join(f"{k} {parts[k]:.3f}" for k in ("total", "sup", "corr") if k in parts)


@click.command("segment")
@click.option("--weights", required=True, help="Segmentation weights: a bundled name, a file or a URL.")
@click.option("--images", type=_DIR, required=True, help="Root of the images (names are relative to it).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for labels/ (trainId PNGs), colour/ (palette PNGs) and segment.json.")
@click.option("--list", "names_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Images to segment: first field of each line (a query list works) [default: every image].")
@click.option("--max-side", type=click.IntRange(min=32), default=None,
              help="Longer side of the network input [default: the training size stored in the weights, else 256].")
@click.option("--window", type=click.IntRange(min=16), default=None,
              help="Window size in pixels of the resized image [default: 713/1024 of --max-side, seed 000].")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="[default: 476/1024 of --max-side]")
@click.option("--core", type=click.IntRange(min=1), default=None,
              help="Central part of a window with full weight [default: 236/1024 of --max-side].")
@click.option("--whole-image", is_flag=True, help="Predict each image at once, without sliding windows.")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also put the labels into this feature store.")
@click.option("--overwrite", is_flag=True, help="Redo images already segmented, and replace other settings.")
@device_option
def segment(weights: str, images: Path, output: Path, names_file: Path | None, max_side: int | None,
            window: int | None, stride: int | None, core: int | None, whole_image: bool, store: Path | None,
            overwrite: bool, device: torch.device) -> None:
    """Label images with sliding-window inference and linear-ramp blending (seed 000)."""
    names = read_names(names_file) if names_file else None
    with stage_progress() as progress:
        segment_images(weights, images, output, names=names, max_side=max_side, whole_image=whole_image,
                       window=window, stride=stride, core=core, overwrite=overwrite, store=store, progress=progress,
                       device=device)
    click.echo(str(output))


@click.command("evaluate-seg")
@click.option("--predictions", type=_DIR, required=True, help="Predicted trainId PNGs (locseg segment's labels/).")
@click.option("--labels", type=_DIR, required=True, help="Ground-truth trainId PNGs with the same relative names.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"miou": {"all": x, "<condition>": x}, "iou": {"<condition>": {"<class>": x}}} in percent.')
def evaluate_seg(predictions: Path, labels: Path, as_json: bool) -> None:
    """mIoU (mean over classes with non-zero union) and IoU per class, per condition and overall."""
    with stage_progress() as progress:
        evaluation = evaluate_segmentation(predictions, labels, progress=progress)
    if evaluation.missing:
        click.secho(f"locseg: warning: {evaluation.missing} labelled image(s) have no prediction and count as wrong",
                    fg="yellow", err=True)
    if as_json:
        click.echo(evaluation.to_json())
    else:
        Console().print(evaluation.to_table())


COMMANDS = [train_seg, segment, evaluate_seg]
