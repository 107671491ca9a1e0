"""How many sky points of ``locseg synth-sky-pairs`` land on the query's true sky.

    python benchmarks/sky_pair_precision.py outputs/train/synthseasons-train-{3,4,6,7,8,9,10,11,12,13}

Reads each street's ``correspondences-with-sky/`` against its query labels (which the
generator never reads) and prints a Markdown table per query condition, summed over
the streets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from locseg.synth.sky_pairs import sky_pair_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("streets", type=Path, nargs="+")
    args = parser.parse_args()
    totals: dict[str, list[int]] = {}
    for street in args.streets:
        for condition, (hits, points) in sky_pair_precision(street).items():
            total = totals.setdefault(condition, [0, 0])
            total[0] += hits
            total[1] += points
    totals["all"] = [sum(t[0] for t in totals.values()), sum(t[1] for t in totals.values())]
    print(f"{len(args.streets)} streets\n\n| condition | sky points | on the query's sky % |\n|---|---:|---:|")
    for condition, (hits, points) in sorted(totals.items(), key=lambda item: (item[0] == "all", item[0])):
        print(f"| {condition} | {points} | {100 * hits / max(points, 1):.3f} |")


if __name__ == "__main__":
    main()
