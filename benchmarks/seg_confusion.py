"""Where the pixels of one true class go: per prediction folder, the share of that class's
pixels (in one condition) given to each predicted class.

    python benchmarks/seg_confusion.py --labels outputs/synthseasons-test-0/labels --condition night \\
        --true-class sidewalk --predictions outputs/bench_segmentation/labels-6k/labels \\
        --predictions outputs/bench_segmentation/x13-ce-l025-6k/labels
"""

from __future__ import annotations

import argparse

from locseg.evaluate.segmentation import SegAccumulator, label_files, read_label_png
from locseg.io.queries import condition_of
from locseg.models.segmentation import CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True)
    parser.add_argument("--predictions", action="append", required=True)
    parser.add_argument("--condition", required=True)
    parser.add_argument("--true-class", required=True, choices=CLASSES)
    parser.add_argument("--top", type=int, default=4)
    args = parser.parse_args()
    truth = {n: p for n, p in label_files(args.labels).items() if condition_of(n) == args.condition}
    row = CLASSES.index(args.true_class)
    for folder in args.predictions:
        predicted, accumulator = label_files(folder), SegAccumulator()
        for name, path in truth.items():
            accumulator.add(name, read_label_png(predicted[name]), read_label_png(path))
        counts = accumulator.confusion[args.condition][row]
        order = counts.argsort()[::-1][:args.top]
        shares = ", ".join(f"{CLASSES[c]} {100 * counts[c] / counts.sum():.1f} %" for c in order)
        print(f"{folder}: {args.true_class} ({args.condition}) -> {shares}")


if __name__ == "__main__":
    main()
