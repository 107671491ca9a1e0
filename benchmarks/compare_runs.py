"""Training curves of several ``finetune-features`` runs side by side, from their checkpoints.

    python benchmarks/compare_runs.py slim=outputs/runs/control.pt half=outputs/runs/half-long.pt \\
        [--window 250] [--terms dmc gn total] [--replicas 2] [--cpu-every 0.5]

Every checkpoint keeps the loss breakdown of each step it took and the held-out
matching precision of each check (``metrics["history"]``). This prints, per window of
``--window`` steps, the mean of each loss term for every run, then the held-out
precision at every check, as Markdown tables. Runs that continue others (``--init``)
count their steps from 1, so compare runs that started from the same weights, on the
same pairs (same seed and streets), to read the difference as the change between them.

Runs of models that cost differently per step are compared at equal compute too: the
held-out precision each run had reached after every ``--cpu-every`` hours of CPU, from the
CPU time its checkpoints record (``metrics["cpu_seconds"]``). For a run resumed from a
checkpoint older than that record, the steps before counting began are costed at the mean
rate per step measured since, and the run is marked as estimated. Runs saved before
locseg recorded CPU time are left out of that table.

With ``--replicas F``, runs warm-started by ``locseg widen-backbone`` with factor F
also get, per convolution, how far apart training has set the F replicas of each narrow
channel (``locseg.models.widen.replica_spread``; 0 means the wide model still computes
the narrow one's function).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import numpy as np

from locseg.errors import LocsegError
from locseg.models.backbone import build_backbone
from locseg.models.load import backbone_state
from locseg.models.weights import read_safetensors_metadata
from locseg.models.widen import replica_spread
from locseg.train.checkpoint import load_checkpoint


def windowed_means(history: list[dict], term: str, window: int) -> dict[int, float]:
    """Mean of ``term`` over the steps ``(k - window, k]``, for every k = window, 2 window, ...
    up to the run's last step (a window the run has not finished, or where it never
    computed the term, is left out)."""
    steps = np.array([entry["step"] for entry in history])
    values = np.array([entry.get(term, math.nan) for entry in history], dtype=float)
    out = {}
    for end in range(window, int(steps.max(initial=0)) + 1, window):
        inside = (steps > end - window) & (steps <= end) & ~np.isnan(values)
        if inside.any():
            out[end] = float(values[inside].mean())
    return out


def held_out_precision(history: list[dict]) -> dict[int, float]:
    """The held-out precision (all conditions, %) at every step where it was checked."""
    return {entry["step"]: entry["precision"]["all"] for entry in history if "precision" in entry}


def cpu_hours(metrics: dict) -> tuple[Callable[[int], float], bool] | None:
    """Cumulative CPU hours as a function of the step, from a run's recorded saves, and
    whether the steps before ``cpu_counted_from`` were estimated; None without a record."""
    saves = metrics.get("cpu_seconds", [])
    start = int(metrics.get("cpu_counted_from", 0))
    if not saves or saves[-1][0] <= start:
        return None
    steps = np.array([0, start] + [step for step, _ in saves], dtype=float)
    counted = np.array([0.0] + [value for _, value in saves])
    before = start * counted[-1] / (steps[-1] - start)  # the uncounted steps at the mean rate since
    seconds = np.concatenate([[0.0], before + counted])
    return (lambda step: float(np.interp(step, steps, seconds)) / 3600.0), start > 0


def precision_at_cpu(checks: dict[int, float], hours: Callable[[int], float], budgets: list[float]) -> dict:
    """For each CPU budget, ``(precision, step)`` of the last check reached within it (absent before the first)."""
    spent = {step: hours(step) for step in checks}
    out = {}
    for budget in budgets:
        reached = [step for step, used in spent.items() if used <= budget + 1e-9]
        if reached:
            out[budget] = (checks[max(reached)], max(reached))
    return out


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
    parser.add_argument("--cpu-every", type=float, default=0.5,
                        help="hours of CPU between the rows of the equal-compute table")
    args = parser.parse_args()
    if args.window < 1:
        parser.error(f"--window must be >= 1, got {args.window}")
    if not args.cpu_every > 0:
        parser.error(f"--cpu-every must be > 0 hours, got {args.cpu_every}")

    histories, spreads, clocks = {}, {}, {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"each run is NAME=CHECKPOINT, got {spec!r}")
        try:
            checkpoint = load_checkpoint(path)
        except LocsegError as error:
            parser.error(str(error))
        histories[name] = checkpoint.metrics.get("history", [])
        clock = cpu_hours(checkpoint.metrics)
        if clock:
            clocks[name] = clock
        if args.replicas > 1 and widening_factor(checkpoint.config.get("init")) == args.replicas:
            backbone = build_backbone(checkpoint.config["backbone"])
            backbone.load_state_dict(backbone_state(checkpoint.model_state, path))
            spreads[name] = replica_spread(backbone, args.replicas)
        cost = f", {clock[0](checkpoint.step):.2f} CPU h{' (estimated in part)' if clock[1] else ''}" if clock else ""
        print(f"{name}: {path}, step {checkpoint.step}, backbone {checkpoint.config.get('backbone')}, "
              f"lr {checkpoint.config.get('lr')}, seed {checkpoint.config.get('seed')}{cost}")

    for term in args.terms:
        means = {name: windowed_means(history, term, args.window) for name, history in histories.items()}
        print(f"\nmean {term} per window of {args.window} steps (row: the last step of each)\n")
        print(step_table(means, 3))

    checks = {name: held_out_precision(history) for name, history in histories.items()}
    print("\nheld-out precision, all conditions (%)\n")
    print(step_table(checks, 1))

    if clocks:
        last = max(hours(max(checks[name], default=0)) for name, (hours, _) in clocks.items())
        budgets = [args.cpu_every * k for k in range(1, int(last / args.cpu_every) + 1)]
        reached = {name: precision_at_cpu(checks[name], hours, budgets) for name, (hours, _) in clocks.items()}
        rows = [[f"{budget:g}", *(f"{reached[name][budget][0]:.1f} (step {reached[name][budget][1]})"
                                  if budget in reached[name] else "" for name in clocks)] for budget in budgets]
        estimated = [name for name, (_, partly) in clocks.items() if partly]
        note = f"; {', '.join(estimated)}: CPU time estimated before counting began" if estimated else ""
        print(f"\nheld-out precision after equal CPU time (%, and the step of that check{note})\n")
        print(markdown(["CPU h", *clocks], rows))

    if spreads:
        layers = list(next(iter(spreads.values())))
        print(f"\nspread of the {args.replicas} replicas of each channel, relative to the first\n")
        print(markdown(["run", *layers], [[name, *(f"{spread[layer]:.3f}" for layer in layers)]
                                          for name, spread in spreads.items()], first="---"))

if __name__ == "__main__":
    main()
