"""Copy a SynthSeasons street with every query image re-rendered in the reference's light.

    python benchmarks/relight_queries.py --dataset outputs/synthseasons-test-0 --output outputs/probe/test-0-relit
    python benchmarks/bench_features.py --dataset outputs/probe/test-0-relit --weights synthseasons-slim-dmcgn-v3

Each query view keeps its pose, intrinsics and traversal (which cars are parked where),
so the geometry and the stored correspondences stay exact; only the light, weather and
sensor become the reference condition's. Matching precision on the copy is what the
features reach when the viewpoint changes but the appearance does not: a ceiling for the
cross-condition figures of the original street. The copy links every other folder of the
original. The script prints, per condition, the share of pixels whose depth agrees with
the stored one, to show that the geometry is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from locseg.synth.generate import SynthConfig, plan_street
from locseg.synth.render import render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    source = args.dataset.resolve()
    summary = json.loads((source / "synth.json").read_text())
    street = plan_street(SynthConfig(**summary["config"]))
    if args.output.exists():
        shutil.rmtree(args.output)
    (args.output / "images").mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != "images":
            os.symlink(entry, args.output / entry.name)
    os.symlink(source / "images" / "reference", args.output / "images" / "reference")
    for condition, views in street.queries.items():
        agree = []
        for view in views:
            rendered = render(street.scene, view, light="reference")
            stored = np.load(source / "depth" / f"{view.stem}.npy")
            agree.append(np.isclose(stored, rendered.depth, rtol=1e-4, atol=1e-4).mean())
            path = args.output / "images" / view.name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rendered.image).save(path)
        print(f"{condition}: {len(views)} views, depth agrees on {100 * np.mean(agree):.2f} % of pixels", flush=True)


if __name__ == "__main__":
    main()
