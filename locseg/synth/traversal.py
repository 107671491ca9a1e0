"""``locseg synth-traversal``: a further source traversal of an existing street.

A street's correspondences run from its one reference traversal to each query
condition, so a surface that the reference never sees gets none: the reference
drives down the middle of the road, and where a car is parked at the kerb the
sidewalk behind it is hidden in every reference image. A source condition (see
``locseg.synth.conditions``, e.g. ``sunday``: the reference's light, three in four
parking spots empty) drives the reference's poses again with its own parked cars
and pedestrians, and gives a second set of pairs to every query condition. It adds
to the street directory:

    images/<source>/cam0/<frame>.png, labels/..., depth/...   as the reference's
    ground_truth/<source>.txt                                 its poses
    correspondences-<source>/*.mat                           source-to-condition pairs
    synth.json                                                gains ``traversals[<source>]``

The street's own files are not touched. The traversal's labels are a further
condition folder, which ``locseg train-seg --dataset`` leaves out of its labelled
images (``recorded_traversals``); its images are used where its correspondence folder
is given. The street is rebuilt from the seed in ``synth.json``; a street whose
stored reference labels the rebuilt scene does not reproduce was made by another
scene generator and is refused. Everything is rendered into a hidden sibling folder
first and moved into place at the end. A traversal counts as added only once
``synth.json`` records it: that is written last, and with ``overwrite`` the old record
is removed before any file is replaced, so an interrupted run is never taken for a
finished one and the next run renders it again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import InputError, RegistryError
from ..evaluate.segmentation import read_label_png
from ..io._common import atomic_write_text
from ..io.poses import write_poses
from .conditions import CONDITIONS, SOURCE_CONDITIONS
from .generate import (
    Progress,
    SynthConfig,
    generator_digest,
    plan_street,
    render_views,
    street_rays,
    write_condition_pairs,
)
from .render import render
from .trajectory import View

# Fewer equal reference labels (or depths) than this means the rebuilt scene is not the stored one.
SCENE_AGREEMENT = 0.999


def add_traversal(street_dir: str | Path, condition: str = "sunday", workers: int | None = None,
                  overwrite: bool = False, progress: Progress | None = None) -> dict:
    """Render the source traversal ``condition`` of the street in ``street_dir`` and
    write its correspondences to every query condition (see the module docstring).

    Returns the traversal's entry in ``synth.json``. A traversal already recorded
    there is kept as it is unless ``overwrite``.

    Raises:
        InputError: ``street_dir`` is not a SynthSeasons street, or was made by
            another scene generator.
        RegistryError: ``condition`` is not a source condition.
    """
    if condition not in SOURCE_CONDITIONS:
        raise RegistryError("source condition", condition, list(SOURCE_CONDITIONS))
    root = Path(street_dir).resolve()
    summary_path = root / "synth.json"
    try:
        summary = json.loads(summary_path.read_text())
        config = SynthConfig(**summary["config"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{root} is not a SynthSeasons street (no readable synth.json: {err}); "
                         "make one with `locseg synth`") from None
    recorded = summary.get("traversals", {}).get(condition)
    if recorded is not None and not overwrite:
        return recorded
    if recorded is not None:
        del summary["traversals"][condition]
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")

    street = plan_street(config)
    check_scene(root, street.scene, street.reference[0])
    sources = [replace(v, name=f"{condition}/{v.name.split('/', 1)[1]}", condition=condition)
               for v in street.reference]
    query_views = [v for views in street.queries.values() for v in views]
    tmp = root.with_name(f".{root.name}.{condition}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        renders = render_views(config, sources + query_views, [tmp] * len(sources) + [None] * len(query_views),
                               workers, progress)
        source_renders = renders[: len(sources)]
        by_name = dict(zip((v.name for v in query_views), renders[len(sources):]))
        folder = f"correspondences-{condition}"
        pairs = write_condition_pairs(tmp / folder, street, sources, source_renders, by_name, street_rays(street),
                                      progress)
        write_poses(tmp / f"{condition}.txt", {v.name: v.T_cam_from_world for v in sources})
        moves = [(tmp / kind / condition, root / kind / condition) for kind in ("images", "labels", "depth")]
        moves += [(tmp / folder, root / folder), (tmp / f"{condition}.txt", root / "ground_truth" / f"{condition}.txt")]
        for new, target in moves:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(new, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = {"images": len(sources), "correspondence_pairs": pairs, "correspondences": folder,
             "parked_cars": CONDITIONS[condition].parked_cars, "generator": generator_digest()}
    summary.setdefault("traversals", {})[condition] = entry
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return entry


def recorded_traversals(street: str | Path) -> list[str]:
    """The source conditions ``synth.json`` of ``street`` records as added; none if it has no
    readable ``synth.json`` (any dataset that is not a SynthSeasons street)."""
    try:
        return sorted(json.loads((Path(street) / "synth.json").read_text()).get("traversals", {}))
    except (OSError, ValueError, AttributeError):
        return []


def check_scene(root: Path, scene, view: View, by: Literal["labels", "depth"] = "labels") -> None:
    """Refuse a street whose first reference image the rebuilt scene does not reproduce,
    compared by its stored ``labels`` or ``depth`` (for callers that must not read labels)."""
    stored = root / by / (view.name if by == "labels" else f"{view.stem}.npy")
    if not stored.is_file():
        raise InputError(f"{root} has no {stored.relative_to(root)}; is it a complete SynthSeasons street?")
    rendered = render(scene, view)
    if by == "labels":
        agreement = float(np.mean(read_label_png(stored) == rendered.labels))
    else:
        agreement = float(np.mean(np.isclose(np.load(stored), rendered.depth, rtol=1e-4, atol=1e-4)))
    if agreement < SCENE_AGREEMENT:
        raise InputError(f"{root} was made by another SynthSeasons scene generator: its {by} of {view.name} "
                         f"agree with the rebuilt street on {100 * agreement:.1f} % of pixels; regenerate it "
                         "with `locseg synth --overwrite`")
