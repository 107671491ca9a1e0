"""Training commands: ``locseg finetune-features`` and ``locseg train-retrieval``."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from locseg.models.backbone import BACKBONES
from locseg.models.netvlad import RETRIEVAL_SOURCES
from locseg.train.augment import AugmentConfig
from locseg.train.finetune import LR_SCHEDULES, FinetuneConfig, finetune_features
from locseg.train.losses import FinetuneLossConfig
from locseg.train.retrieval import RetrievalConfig, train_retrieval

from .device import device_option
from .hypercolumn_norm import hypercolumn_norm_option
from .progress import stage_progress


def run_options(defaults: FinetuneConfig | RetrievalConfig, lr_help: str, lr_default: float | None,
                min_iterations: int = 1):
    """The options every training command has, with defaults from its config."""
    options = [
        click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
                     help="Checkpoint to write; the weights go next to it as .safetensors."),
        click.option("--init", "init", default=None, help="Initial weights: a bundled name, a file or a URL."),
        click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default=defaults.backbone,
                     show_default=True),
        click.option("--iterations", type=click.IntRange(min=min_iterations), default=defaults.iterations,
                     show_default=True,
                     help="Training steps" + (" (0: only initialise, e.g. NetVLAD by k-means)."
                                              if min_iterations == 0 else ".")),
        click.option("--lr", type=float, default=lr_default, show_default=lr_default is not None, help=lr_help),
        click.option("--max-side", type=click.IntRange(min=32), default=defaults.max_side, show_default=True),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=defaults.checkpoint_every,
                     show_default=True),
        click.option("--seed", type=int, default=defaults.seed, show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run saved in --output" + (
            "; a larger --iterations than it was started with trains it on."
            if "iterations" in defaults.resume_may_change else ".")),
        device_option,
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _condition_weights(_context: click.Context, _param: click.Parameter,
                       values: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """``--condition-weight CONDITION=WEIGHT`` options as (condition, weight) pairs."""
    weights = []
    for value in values:
        name, _, weight = value.rpartition("=")
        try:
            if not name:
                raise ValueError(value)
            weights.append((name, float(weight)))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not CONDITION=WEIGHT (e.g. night-rain=2)",
                                     param_hint="--condition-weight") from None
    return tuple(weights)


@click.command("finetune-features")
@click.option("--correspondences", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              multiple=True, help="Folder of Cross-Season Correspondence files (*.mat); repeat for several.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              multiple=True, help="Root that the image paths in those files are relative to; one per folder.")
@run_options(FinetuneConfig(), lr_default=None,
             lr_help="AdamW learning rate [default: 1e-7 with --init, as seed 002; 1e-4 from scratch].")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=FinetuneConfig().lr_schedule,
              show_default=True,
              help="constant (seed 002), or cosine: from --lr down to 0 at the last of --iterations "
                   "(a resumed cosine run keeps its --iterations).")
@click.option("--validate-every", type=click.IntRange(min=0), default=FinetuneConfig().validate_every,
              show_default=True,
              help="Steps between matching-precision checks on held-out pairs (0: never).")
@click.option("--gn-weight", type=click.FloatRange(min=0), default=FinetuneLossConfig().gn_weight, show_default=True,
              help="lambda, the Gauss-Newton loss's weight against DMC (0: DMC only).")
@click.option("--neg-radius", type=click.FloatRange(min=0), default=FinetuneLossConfig().neg_radius, show_default=True,
              help="alpha: negatives lie farther than this many cells (of each level's own grid) from the true match.")
@click.option("--mining-offset", type=click.IntRange(min=0), default=FinetuneConfig().mining_offset, show_default=True,
              help="Steps of the earlier runs this one continues (--init); the mining schedule goes on from there.")
@hypercolumn_norm_option
@click.option("--combined-weight", type=click.FloatRange(min=0), default=FinetuneLossConfig().combined_weight,
              show_default=True,
              help="Weight of a DMC term on the whole hypercolumn map, the one matching compares, with negatives "
                   "mined in it (0: seed 002's per-level loss only).")
@click.option("--dense-weight", type=click.FloatRange(min=0), default=FinetuneLossConfig().dense_weight,
              show_default=True,
              help="Weight of a cross-entropy over every cell of the other image's whole hypercolumn map, against "
                   "the cells at the true match (0: seed 002's loss only).")
@click.option("--dense-temperature", type=click.FloatRange(min=0, min_open=True),
              default=FinetuneLossConfig().dense_temperature, show_default=True,
              help="Softmax temperature of --dense-weight's term, in units of the dot product of unit cells.")
@click.option("--scale-augment", type=click.FloatRange(min=1), default=AugmentConfig().scale, show_default=True,
              help="Shrink one image of each pair so the two scales differ by a random ratio up to this (1: never).")
@click.option("--light-augment", type=click.FloatRange(0, 1), default=AugmentConfig().light, show_default=True,
              help="Probability that an image's gamma, gain, colour balance and noise are changed at random.")
@click.option("--condition-weight", "condition_weights", multiple=True, callback=_condition_weights,
              metavar="CONDITION=WEIGHT",
              help="Draw the pairs whose second image is of CONDITION WEIGHT times as often as the others "
                   "(e.g. night-rain=2); repeat for several.")
def finetune(correspondences: tuple[Path, ...], images: tuple[Path, ...], output: Path, init: str | None, backbone: str, iterations: int,
             lr: float | None, lr_schedule: str, max_side: int, checkpoint_every: int, validate_every: int,
             seed: int, resume: bool, gn_weight: float, neg_radius: float, mining_offset: int, hypercolumn_norm: str,
             combined_weight: float, dense_weight: float, dense_temperature: float, scale_augment: float,
             light_augment: float, condition_weights: tuple[tuple[str, float], ...], device: torch.device) -> None:
    """Fine-tune a backbone's hypercolumns with the double-margin contrastive and
    Gauss-Newton losses on the correspondences of image pairs."""
    config = FinetuneConfig(backbone=backbone, init=init, iterations=iterations, lr=lr, lr_schedule=lr_schedule,
                            max_side=max_side,
                            checkpoint_every=checkpoint_every, validate_every=validate_every, seed=seed,
                            mining_offset=mining_offset, hypercolumn_norm=hypercolumn_norm,
                            loss=FinetuneLossConfig(gn_weight=gn_weight, neg_radius=neg_radius,
                                                    combined_weight=combined_weight, dense_weight=dense_weight,
                                                    dense_temperature=dense_temperature),
                            augment=AugmentConfig(scale=scale_augment, light=light_augment),
                            condition_weights=condition_weights)
    with stage_progress() as progress:
        finetune_features(correspondences, images, output, config, resume=resume,
                          progress=lambda stage, done, total, losses: progress(
                              stage, done, total, _format_losses(losses)), device=device)
    click.echo(f"{output} (weights: {output.with_suffix('.safetensors')})")


@click.command("train-retrieval")
@click.option("--streets", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              multiple=True, help="A SynthSeasons street (locseg synth --split train); repeat for several.")
@run_options(RetrievalConfig(), lr_help="AdamW learning rate.", lr_default=RetrievalConfig().lr, min_iterations=0)
@click.option("--freeze-backbone", is_flag=True,
              help="Train the NetVLAD layer only, on local features computed once per image.")
@click.option("--cache-positions", type=click.IntRange(min=1), default=RetrievalConfig().cache_positions,
              show_default=True, help="With --freeze-backbone: locations of each image's map kept for training.")
@click.option("--negative-candidates", type=click.IntRange(min=1), default=RetrievalConfig().negative_candidates,
              show_default=True, help="Random negatives ranked per step; the hardest of them are trained on.")
@click.option("--source", type=click.Choice(RETRIEVAL_SOURCES), default=RetrievalConfig().source, show_default=True,
              help="The map NetVLAD pools: conv5_3, or the dense hypercolumns the localizer computes anyway.")
@hypercolumn_norm_option
def retrieval(streets: tuple[Path, ...], output: Path, init: str | None, backbone: str, iterations: int, lr: float,
              max_side: int, freeze_backbone: bool, cache_positions: int, negative_candidates: int, source: str,
              hypercolumn_norm: str, checkpoint_every: int, seed: int, resume: bool, device: torch.device) -> None:
    """Train NetVLAD global descriptors with a triplet loss on places of known pose."""
    config = RetrievalConfig(backbone=backbone, init=init, iterations=iterations, lr=lr, max_side=max_side,
                             freeze_backbone=freeze_backbone, cache_positions=cache_positions,
                             negative_candidates=negative_candidates, source=source,
                             hypercolumn_norm=hypercolumn_norm, checkpoint_every=checkpoint_every, seed=seed)
    with stage_progress() as progress:
        train_retrieval(streets, output, config, resume=resume,
                        progress=lambda stage, done, total, losses: progress(
                            stage, done, total, _format_losses(losses)), device=device)
    click.echo(f"{output} (weights: {output.with_suffix('.safetensors')})")


def _format_losses(losses: dict[str, float]) -> str:
    """The loss terms of a step, or the held-out matching precision of a check."""
    if "precision" in losses:
        return f"matching precision {losses['precision']:.1f} % (all conditions)"
    return " ".join(f"{k} {losses[k]:.3f}" for k in ("total", "dmc", "gn", "dmc_combined", "dense", "loss") if k in losses)


COMMANDS = [finetune, retrieval]
