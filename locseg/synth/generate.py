"""``locseg synth``: generate a SynthSeasons street on disk.

Layout of the output directory (names relative to ``images/`` identify an image
everywhere else):

    images/<condition>/<camera>/<frame>.png   RGB; the reference traversal is ``reference``
    depth/<condition>/<camera>/<frame>.npy    float32 z-depth in metres, 0 on sky
    labels/<condition>/<camera>/<frame>.png   uint8 Cityscapes trainIds (255 = ignore)
    reference/model/                          COLMAP model of the reference traversal
    queries/<condition>.txt, queries/all.txt  query lists with intrinsics
    ground_truth/queries.txt, reference.txt   true poses (name qw qx qy qz tx ty tz)
    correspondences/*.mat                     reference-to-condition pairs (Cross-Season layout)
    contact_sheet.png                         the same places in every condition
    synth.json                                what was generated, and how

A street is written to a temporary sibling directory and renamed into place when
complete, so an interrupted run never leaves a half-written street behind; a
second run with the same settings finds it and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .. import __version__
from ..errors import InputError
from ..io.colmap import ImageSpec, PointSpec, build_reconstruction
from ..io.correspondences import write_correspondences
from ..io.poses import write_poses
from ..io.queries import write_query_list
from .conditions import QUERY_CONDITIONS
from .cross_condition import CorrespondenceConfig, condition_pairs, dense_cloud
from .noise import hash_uniform
from .points import reference_points
from .raycast import CameraRays
from .render import Rendered, render
from .scene import Scene, build_scene
from .trajectory import (
    SizePreset,
    View,
    get_size,
    look_pose,
    query_track,
    reference_track,
)

FORMAT_VERSION = 1
SPLITS = ("train", "test")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a generated street."""

    seed: int = 0
    split: str = "test"
    size: str = "default"

    @property
    def street_seed(self) -> int:
        """Train and test streets come from disjoint seeds."""
        return int(hash_uniform(self.seed, SPLITS.index(self.split) + 1, 0x51) * (1 << 24)) * 2 + (
            self.split == "test")


@dataclass
class Street:
    """A street and every view to render of it."""

    config: SynthConfig
    size: SizePreset
    scene: Scene
    reference: list[View]
    queries: dict[str, list[View]]


def plan_street(config: SynthConfig) -> Street:
    """Lay out the street and the camera tracks, without rendering anything."""
    if config.split not in SPLITS:
        raise InputError(f"split {config.split!r} is not one of {', '.join(SPLITS)}")
    size = get_size(config.size)
    rng = np.random.default_rng(config.street_seed)
    length = (size.n_reference - 1) * size.spacing
    scene = build_scene(config.street_seed, -10.0, length + 10.0)
    reference = reference_track(size, rng)
    queries = {c: query_track(size, c, index, rng) for index, c in enumerate(QUERY_CONDITIONS)}
    return Street(config, size, scene, reference, queries)


class _Renderer:
    """Renders views of one street, caching the rays of each camera."""

    def __init__(self, config: SynthConfig) -> None:
        self.street = plan_street(config)
        self.rays: dict[str, CameraRays] = {}

    def __call__(self, view: View, root: Path | None) -> Rendered:
        key = view.camera.to_string()
        if key not in self.rays:
            self.rays[key] = CameraRays.of(view.camera)
        rendered = render(self.street.scene, view, self.rays[key])
        if root is not None:
            _write_view(root, view, rendered)
        return rendered


# In a pool worker process: its renderer, rebuilt from the seed rather than sent over.
_WORKER_RENDERER: _Renderer | None = None


def _init_worker(config: SynthConfig) -> None:
    import torch

    global _WORKER_RENDERER
    torch.set_num_threads(1)  # this process renders one view at a time, with numpy
    _WORKER_RENDERER = _Renderer(config)


def _render_in_worker(view: View, root: Path | None) -> Rendered:
    if _WORKER_RENDERER is None:
        raise RuntimeError("_render_in_worker runs only in a pool worker set up by _init_worker")
    return _WORKER_RENDERER(view, root)


def _write_view(root: Path, view: View, rendered: Rendered) -> None:
    for folder in ("images", "labels", "depth"):
        (root / folder / view.name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rendered.image).save(root / "images" / view.name, compress_level=1)
    Image.fromarray(rendered.labels).save(root / "labels" / view.name, compress_level=1)
    np.save(root / "depth" / f"{view.stem}.npy", rendered.depth)


def render_views(config: SynthConfig, views: list[View], roots: list[Path | None], workers: int | None = None,
                 progress: Progress | None = None) -> list[Rendered]:
    """Render ``views`` in ``workers`` processes (default: up to 2), writing each under its
    root if not None."""
    workers = workers or min(2, os.cpu_count() or 1)
    results: list[Rendered] = []
    pool = None
    if workers <= 1:
        tasks = map(_Renderer(config), views, roots)
    else:
        # fork, as torch's DataLoader does on Linux: no re-import, and no main-module guard needed.
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_init_worker,
                                   initargs=(config,))
        tasks = pool.map(_render_in_worker, views, roots, chunksize=4)
    try:
        for done, rendered in enumerate(tasks):
            results.append(rendered)
            if progress:
                progress("render", done + 1, len(views))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


# Modules that add to finished streets and make none: left out of the generator digest.
ADD_ONS = ("sky_pairs.py", "traversal.py")


def generator_digest() -> str:
    """A digest of the generator's source: a street made by other code is made again.
    The ``ADD_ONS`` are left out, so that changing them leaves existing streets valid."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name not in ADD_ONS:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def generate(out_dir: str | Path, seed: int = 0, split: str = "test", size: str = "default",
             workers: int | None = None, overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Generate a SynthSeasons street into ``out_dir`` (see the module docstring).

    Returns ``out_dir``. If it already holds a street generated with the same
    settings by the same generator, nothing is done; if it holds anything else,
    InputError is raised unless ``overwrite``.
    """
    config = SynthConfig(seed, split, size)
    out_dir = Path(out_dir).resolve()
    if _matches(out_dir, config) and not overwrite:
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise InputError(f"{out_dir} exists and is not a SynthSeasons street generated with {asdict(config)} "
                         "by this version of locseg; choose another directory or overwrite it")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    street = plan_street(config)
    query_views = [v for views in street.queries.values() for v in views]
    dataset_views = street.reference + query_views
    sheet_views = contact_sheet_views(street)
    rendered = render_views(config, dataset_views + sheet_views,
                            [tmp] * len(dataset_views) + [None] * len(sheet_views), workers, progress)
    rendered, sheet = rendered[: len(dataset_views)], rendered[len(dataset_views):]
    ref_renders = rendered[: len(street.reference)]
    by_name = dict(zip((v.name for v in dataset_views), rendered))
    rays = street_rays(street)
    n_points = _write_reference(tmp, street, ref_renders, rays[street.reference[0].camera.to_string()], progress)
    _write_lists(tmp, street)
    n_pairs = write_condition_pairs(tmp / "correspondences", street, street.reference, ref_renders, by_name, rays,
                                    progress)
    _write_contact_sheet(tmp / "contact_sheet.png", sheet, ["reference", *street.queries])
    summary = {
        "format_version": FORMAT_VERSION, "locseg_version": __version__, "generator": generator_digest(),
        "config": asdict(config), "street_seed": config.street_seed, "size": asdict(street.size),
        "conditions": list(street.queries), "reference_images": len(street.reference),
        "queries": len(query_views), "points3D": n_points, "correspondence_pairs": n_pairs,
    }
    (tmp / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    _replace_directory(tmp, out_dir)
    return out_dir


def _replace_directory(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; whatever stood there is moved aside before it is deleted,
    so an interruption never leaves a half-deleted directory at ``target``."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _matches(out_dir: Path, config: SynthConfig) -> bool:
    try:
        summary = json.loads((out_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    return (summary.get("config") == asdict(config) and summary.get("format_version") == FORMAT_VERSION
            and summary.get("generator") == generator_digest())


def _write_reference(root: Path, street: Street, renders: list[Rendered], rays: CameraRays,
                     progress: Progress | None) -> int:
    if progress:
        progress("reference model", 0, 1)
    points = reference_points(street.reference, renders, rays)
    # Keypoint k of image i is its k-th observation; observations come ordered by image.
    starts = np.searchsorted(points.image, np.arange(len(street.reference)))
    keypoint = np.arange(len(points.image)) - starts[points.image]
    images = [ImageSpec(i + 1, v.name, 1, v.T_cam_from_world, points.uv[points.image == i])
              for i, v in enumerate(street.reference)]
    order = np.argsort(points.point, kind="stable")
    bounds = np.searchsorted(points.point[order], np.arange(len(points.xyz) + 1))
    specs = [PointSpec(points.xyz[m], points.rgb[m], list(zip(points.image[idx] + 1, keypoint[idx])))
             for m, idx in enumerate(np.split(order, bounds[1:-1]))]
    reconstruction = build_reconstruction({1: street.reference[0].camera}, images, specs)
    (root / "reference" / "model").mkdir(parents=True)
    reconstruction.write(str(root / "reference" / "model"))
    if progress:
        progress("reference model", 1, 1)
    return len(specs)


def _write_lists(root: Path, street: Street) -> None:
    all_queries = []
    for condition, views in street.queries.items():
        entries = [(v.name, v.camera) for v in views]
        write_query_list(root / "queries" / f"{condition}.txt", entries)
        all_queries += entries
    write_query_list(root / "queries" / "all.txt", all_queries)
    write_poses(root / "ground_truth" / "queries.txt",
                {v.name: v.T_cam_from_world for views in street.queries.values() for v in views})
    write_poses(root / "ground_truth" / "reference.txt", {v.name: v.T_cam_from_world for v in street.reference})


def street_rays(street: Street) -> dict[str, CameraRays]:
    """The rays of every camera of ``street`` (the reference's, shared by source traversals,
    and each query condition's), keyed by ``Camera.to_string()``."""
    cameras = [street.reference[0].camera] + [views[0].camera for views in street.queries.values()]
    return {camera.to_string(): CameraRays.of(camera) for camera in cameras}


def write_condition_pairs(folder: Path, street: Street, sources: list[View], source_renders: list[Rendered],
                          by_name: dict[str, Rendered], rays: dict[str, CameraRays],
                          progress: Progress | None = None) -> int:
    """Write the correspondence files between a source traversal and every query
    condition of ``street`` into ``folder`` (created); ``by_name`` holds the renders
    of the query views. Returns the number of pairs."""
    config = CorrespondenceConfig(min_common=int(300 * (street.size.width / 512) ** 2))
    source_cloud = dense_cloud(sources, source_renders, rays, config)
    folder.mkdir()
    count = 0
    for done, views in enumerate(street.queries.values()):
        renders = [by_name[v.name] for v in views]
        for pair in condition_pairs(sources, source_renders, views, renders, rays, config, source_cloud):
            stem = f"{pair.image_i.rsplit('.', 1)[0]}__{pair.image_j.rsplit('.', 1)[0]}".replace("/", "_")
            write_correspondences(folder / f"{stem}.mat", pair)
            count += 1
        if progress:
            progress("correspondences", done + 1, len(street.queries))
    return count


def contact_sheet_views(street: Street, places: int = 3) -> list[View]:
    """The reference camera at ``places`` spots along the street, in every condition."""
    camera = street.reference[0].camera.scale(0.5)
    xs = np.linspace(0.15, 0.85, places) * (street.size.n_reference - 1) * street.size.spacing
    views = []
    for condition in ("reference", *street.queries):
        for k, x in enumerate(xs):
            pose = look_pose(np.array([x, 0.0, 1.55]), yaw=(-1) ** k * 8.0, pitch=-1.5)
            views.append(View(f"{condition}/sheet/{k:06d}.png", condition, camera, pose))
    return views


def _write_contact_sheet(path: Path, renders: list[Rendered], conditions: list[str]) -> None:
    """One row per condition, named on the left; one column per place."""
    places = len(renders) // len(conditions)
    rows = [np.concatenate([r.image for r in renders[i:i + places]], 1) for i in range(0, len(renders), places)]
    sheet = Image.fromarray(np.concatenate(rows, 0))
    row_height = rows[0].shape[0]
    labelled = Image.new("RGB", (sheet.width + 88, sheet.height), (24, 24, 24))
    labelled.paste(sheet, (88, 0))
    draw = ImageDraw.Draw(labelled)
    for k, condition in enumerate(conditions):
        draw.text((8, k * row_height + row_height // 2 - 6), condition, fill=(235, 235, 235))
    labelled.save(path)
