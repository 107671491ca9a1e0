"""``locseg build-reference``: a reference map from reference images with known poses."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from locseg.io.poses import read_poses
from locseg.io.queries import read_query_list
from locseg.localize.pipeline import DEFAULT_WEIGHTS
from locseg.localize.triangulate import RECORD, TriangulateConfig
from locseg.localize.triangulate import build_reference as build_reference_map
from locseg.models.backbone import BACKBONES
from locseg.models.load import load_hypercolumns

from .device import device_option
from .hypercolumn_norm import hypercolumn_norm_option
from .progress import stage_progress

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_DEFAULTS = TriangulateConfig()


@click.command("build-reference")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder the image names are relative to.")
@click.option("--poses", "poses_path", type=_FILE, required=True,
              help="Reference poses, one 'name qw qx qy qz tx ty tz' per line (cam_from_world).")
@click.option("--intrinsics", "intrinsics_path", type=_FILE, required=True,
              help="The camera of every reference image, one 'name MODEL WIDTH HEIGHT params...' per line.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="COLMAP model directory to write (with triangulation.json, the settings and a summary).")
@click.option("--weights", default=DEFAULT_WEIGHTS, show_default=True,
              help="Hypercolumn weights: a bundled name, a file or a URL.")
@click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default="vgg16-slim", show_default=True)
@hypercolumn_norm_option
@click.option("--max-side", type=click.IntRange(min=32), default=_DEFAULTS.max_side, show_default=True,
              help="Longer side of the network input.")
@click.option("--neighbors", type=click.IntRange(min=1), default=_DEFAULTS.num_neighbors, show_default=True,
              help="Images each image is matched with, nearest camera centres first.")
@click.option("--keypoint-stride", type=click.IntRange(min=4), default=_DEFAULTS.keypoint_stride,
              show_default=True, help="Spacing of the keypoint grid in network-input pixels, a multiple of 4.")
@click.option("--min-track-length", type=click.IntRange(min=2), default=_DEFAULTS.min_track_length,
              show_default=True, help="Drop 3D points seen by fewer images.")
@click.option("--overwrite", is_flag=True, help="Replace an output that holds anything else.")
@device_option
def build_reference(images: Path, poses_path: Path, intrinsics_path: Path, output: Path, weights: str,
                    backbone: str, hypercolumn_norm: str, max_side: int, neighbors: int, keypoint_stride: int, min_track_length: int,
                    overwrite: bool, device: torch.device) -> None:
    """Match reference images with locseg features and triangulate 3D points with pycolmap.

    The poses are kept fixed. A rerun with the same settings and images reuses the model
    already in --output.
    """
    config = TriangulateConfig(max_side=max_side, num_neighbors=neighbors, keypoint_stride=keypoint_stride,
                               min_track_length=min_track_length)
    poses = read_poses(poses_path)
    cameras = dict(read_query_list(intrinsics_path))
    hypercolumns = load_hypercolumns(backbone, weights, normalization=hypercolumn_norm).eval().to(device)
    with stage_progress() as progress:
        reconstruction = build_reference_map(images, poses, cameras, output, hypercolumns, config, progress,
                                             overwrite)
    summary = json.loads((output / RECORD).read_text()).get("summary", {})
    click.echo(f"{reconstruction.num_points3D()} 3D points in {reconstruction.num_reg_images()} images "
               f"(median {summary.get('median_observations_per_image', 0):.0f} observations per image, "
               f"mean track length {summary.get('mean_track_length', 0):.2f}) written to {output}")


COMMANDS = [build_reference]
