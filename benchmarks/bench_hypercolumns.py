"""Time of dense hypercolumn extraction for one image, per backbone, on the CPU.

    python benchmarks/bench_hypercolumns.py [--repeats 7] [--warmup 2] [--size 512 384] \\
        [--hypercolumn-norm levels joint]

Prints one Markdown table row per backbone and normalisation: the median and range of the wall
time of ``Hypercolumns.dense`` on one image (default 512x384, the default
``max_side``) under ``torch.inference_mode``, after warm-up runs, with torch's
default number of threads. Weights are random (time does not depend on them);
the input is a seeded random ImageNet-normalised-like image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from locseg.models import Hypercolumns, build_backbone
from locseg.models.hypercolumn import DEFAULT_NORMALIZATION, NORMALIZATIONS


def time_dense(name: str, width: int, height: int, repeats: int, warmup: int,
               normalization: str = DEFAULT_NORMALIZATION) -> tuple[list[float], tuple]:
    torch.manual_seed(0)
    net = Hypercolumns(build_backbone(name), normalization=normalization).eval()
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for run in range(warmup + repeats):
            start = time.perf_counter()
            dense = net.dense(image)
            if run >= warmup:
                times.append(time.perf_counter() - start)
    return times, tuple(dense.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 384], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--backbones", nargs="+", default=["vgg16-slim", "vgg16"])
    parser.add_argument("--hypercolumn-norm", nargs="+", choices=NORMALIZATIONS, default=[DEFAULT_NORMALIZATION])
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    width, height = args.size
    print("| backbone | normalisation | image | dense map (B, C, H/4, W/4) | median (min–max) | repeats | torch threads |")
    print("|---|---|---|---|---|---|---|")
    for name in args.backbones:
        for norm in args.hypercolumn_norm:
            times, shape = time_dense(name, width, height, args.repeats, args.warmup, norm)
            ms = [1000 * t for t in times]
            print(f"| {name} | {norm} | {width}×{height} | {shape} | {statistics.median(ms):.0f} ms "
                  f"({min(ms):.0f}–{max(ms):.0f}) | {len(ms)} | {torch.get_num_threads()} |", flush=True)


if __name__ == "__main__":
    main()
