"""A picture grid of segmentations on a SynthSeasons test street.

    python benchmarks/seg_grid.py --predictions outputs/bench_segmentation \\
        --columns labels-only hinge-c --output benchmarks/segmentation_grid.jpg

One row per condition (the same frame index in each), columns: the image, the ground
truth, then each prediction folder written by ``benchmarks/bench_segmentation.py``, all in
the Cityscapes palette.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from locseg.models.segmentation import colorize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("outputs/synthseasons-test-0"))
    parser.add_argument("--predictions", type=Path, default=Path("outputs/bench_segmentation"))
    parser.add_argument("--columns", nargs="+", required=True)
    parser.add_argument("--conditions", nargs="+", default=["sun", "snow", "autumn", "night"])
    parser.add_argument("--frame", default="cam1/000006.png")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/segmentation_grid.jpg"))
    args = parser.parse_args()

    titles = ["image", "ground truth", *args.columns]
    rows = []
    for condition in args.conditions:
        name = f"{condition}/{args.frame}"
        tiles = [np.asarray(Image.open(args.dataset / "images" / name).convert("RGB")),
                 colorize(np.asarray(Image.open(args.dataset / "labels" / name)))]
        tiles += [colorize(np.asarray(Image.open(args.predictions / column / "labels" / name)))
                  for column in args.columns]
        height, width = tiles[0].shape[:2]
        tiles = [np.asarray(Image.fromarray(t).resize((width, height), Image.NEAREST)) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    draw = ImageDraw.Draw(grid)
    height, width = rows[0].shape[0], rows[0].shape[1] // len(titles)
    for i, title in enumerate(titles):
        draw.text((i * width + 6, 4), title, fill=(255, 255, 255))
    for j, condition in enumerate(args.conditions):
        draw.text((6, j * height + 18), condition, fill=(255, 255, 0))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output, quality=85)
    print(args.output)


if __name__ == "__main__":
    main()
