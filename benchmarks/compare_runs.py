"""Training curves of several ``finetune-features`` runs side by side, from their checkpoints.

    python benchmarks/compare_runs.py slim=outputs/runs/control.pt half=outputs/runs/half-long.pt \\
        [--window 250] [--terms dmc gn total] [--replicas 2]

Every checkpoint keeps the loss breakdown of each step it took and the held-out
matching precision of each check (``metrics["history"]``). This prints, per window of
``--window`` steps, the mean of each loss term for every run, then the held-out
precision at every check, as Markdown tables. Runs that continue others (``--init``)
count their steps from 1, so compare runs that started from the same weights, on the
same pairs (same seed and streets), to read the difference as the change between them.

With ``--replicas F``, runs warm-started by ``locseg widen-backbone`` with factor F
also get, per convolution, how far apart training has set the F replicas of each narrow
channel (``locseg.models.widen.replica_spread``; 0 means the wide model still computes
the narrow one's function).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from locseg.errors import LocsegError
from locseg.models.backbone import build_backbone
from locseg.models.load import backbone_state
from locseg.models.weights import read_safetensors_metadata
from locseg.models.widen import replica_spread
from locseg.train.checkpoint import load_checkpoint


def windowed_means(history: list[dict], term: str, window: int) -> dict[int, float]:
    """Mean of ``term`` over the steps ``(k - window, k]``, for every k = window, 2 window, ...
    up to the run's last step (a window the run has not finished is left out)."""
    steps = np.array([entry["step"] for entry in history])
    values = np.array([entry.get(term, math.nan) for entry in history], dtype=float)
    out = {}
    for end in range(window, int(steps.max(initial=0)) + 1, window):
        inside = (steps > end - window) & (steps <= end)
        if inside.any():
            out[end] = float(np.nanmean(values[inside]))
    return out


def held_out_precision(history: list[dict]) -> dict[int, float]:
    """The held-out precision (all conditions, %) at every step where it was checked."""
    return {entry["step"]: entry["precision"]["all"] for entry in history if "precision" in entry}


def markdown(header: list[str], rows: list[list[str]], first: str = "---:") -> str:
    """A Markdown table whose columns after the first are right-aligned (``first``: the first's rule)."""
    lines = ["| " + " | ".join(header) + " |", f"|{first}|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def step_table(series: dict[str, dict[int, float]], digits: int) -> str:
    """One row per step that any run has, one column per run (blank where it has none)."""
    steps = sorted(set().union(*series.values()))
    rows = [[str(step), *(f"{values[step]:.{digits}f}" if step in values else "" for values in series.values())]
            for step in steps]
    return markdown(["step", *series], rows)


def widening_factor(init: str | None) -> int | None:
    """The factor ``locseg widen-backbone`` recorded in the ``init`` weights' recipe, if it made them."""
    if not init:
        return None
    try:
        recipe = json.loads(read_safetensors_metadata(init).get("recipe", "{}"))
    except LocsegError:  # the weights are gone, or not safetensors
        return None
    return recipe.get("factor") if "widened_from" in recipe else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=CHECKPOINT of each run")
    parser.add_argument("--window", type=int, default=250, help="steps per window of loss means")
    parser.add_argument("--terms", nargs="+", default=["dmc", "gn"], help="loss terms to average")
    parser.add_argument("--replicas", type=int, default=0,
                        help="widening factor F: also show how far the replicas of widened runs have moved apart")
    args = parser.parse_args()
    if args.window < 1:
        parser.error(f"--window must be >= 1, got {args.window}")

    histories, spreads = {}, {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"each run is NAME=CHECKPOINT, got {spec!r}")
        try:
            checkpoint = load_checkpoint(path)
        except LocsegError as error:
            parser.error(str(error))
        histories[name] = checkpoint.metrics.get("history", [])
        if args.replicas > 1 and widening_factor(checkpoint.config.get("init")) == args.replicas:
            backbone = build_backbone(checkpoint.config["backbone"])
            backbone.load_state_dict(backbone_state(checkpoint.model_state, path))
            spreads[name] = replica_spread(backbone, args.replicas)
        print(f"{name}: {path}, step {checkpoint.step}, backbone {checkpoint.config.get('backbone')}, "
              f"lr {checkpoint.config.get('lr')}, seed {checkpoint.config.get('seed')}")

    for term in args.terms:
        means = {name: windowed_means(history, term, args.window) for name, history in histories.items()}
        print(f"\nmean {term} per window of {args.window} steps (row: the last step of each)\n")
        print(step_table(means, 3))

    print("\nheld-out precision, all conditions (%)\n")
    print(step_table({name: held_out_precision(history) for name, history in histories.items()}, 1))

    if spreads:
        layers = list(next(iter(spreads.values())))
        print(f"\nspread of the {args.replicas} replicas of each channel, relative to the first\n")
        print(markdown(["run", *layers], [[name, *(f"{spread[layer]:.3f}" for layer in layers)]
                                          for name, spread in spreads.items()], first="---"))

if __name__ == "__main__":
    main()
