"""Wall time of ``locseg synth``, as a user runs it (a fresh process each time).

    python benchmarks/bench_synth.py [--repeats 3]

Prints one Markdown table row per size: median and spread of the wall time over
the repeats, and what was generated. Each run writes a new street into a
temporary directory, so nothing is reused between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def time_synth(size: str, seed: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "street"
        start = time.perf_counter()
        subprocess.run(["locseg", "synth", str(out), "--size", size, "--seed", str(seed), "--split", "test"],
                       check=True, capture_output=True)
        seconds = time.perf_counter() - start
        return seconds, json.loads((out / "synth.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["small", "default"])
    args = parser.parse_args()
    print("| size | wall time, median (min–max) | reference images | queries | 3D points | correspondence pairs |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        runs = [time_synth(size, seed=repeat) for repeat in range(args.repeats)]
        times = [t for t, _ in runs]
        summary = runs[0][1]
        print(f"| {size} | {statistics.median(times):.1f} s ({min(times):.1f}–{max(times):.1f}) | "
              f"{summary['reference_images']} | {summary['queries']} | {summary['points3D']} | "
              f"{summary['correspondence_pairs']} |", flush=True)


if __name__ == "__main__":
    main()
