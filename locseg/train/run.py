"""What every locseg training command shares: starting or resuming a run, and saving it.

A run owns a model, its optimizer and a torch.Generator from which the training
loop draws all its samples. Its checkpoint holds all three plus the global random
state, the step, the config and the metrics, so that a resumed run continues
exactly as an uninterrupted one would (see ``locseg.train.checkpoint``).

Every checkpoint also records how much CPU time the run has used up to its step, in
``metrics["cpu_seconds"]``: a list of ``[step, seconds]``, one per save, cumulative over
resumes. It is process time (every thread of the process, validation included), so
runs of different models compare at equal compute even when they shared a machine.
The record is kept apart from ``metrics["history"]``, which holds only what the steps
computed and is the same for a resumed run as for an uninterrupted one. A run resumed
from a checkpoint older than the record starts counting at that checkpoint's step, which
it keeps in ``metrics["cpu_counted_from"]``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..errors import InputError
from ..models.load import weights_digest
from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint


class RunConfig(Protocol):
    """A training command's config: a dataclass whose defaults construct it, with a seed.

    ``resume_may_change`` names the fields a resumed run may set anew, because they do not
    change the steps already taken (``iterations`` where the learning rate has no schedule
    that depends on it: resuming with a larger value trains the run on); () allows none.
    A class attribute, or a property where it depends on other fields.
    """

    seed: int

    @property
    def resume_may_change(self) -> tuple[str, ...]: ...

    def to_dict(self) -> dict: ...


@dataclass
class Run:
    """A training run writing its checkpoint to ``output``."""

    output: Path
    config: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    metrics: dict = field(default_factory=lambda: {"history": []})
    _clock: float = field(default_factory=time.process_time, repr=False)
    _cpu_base: float = field(default=0.0, repr=False)

    @staticmethod
    def start(output: str | Path, config: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
              resume: bool, sources: dict | None = None) -> Run:
        """A new run seeded by ``config.seed``, or with ``resume`` the run saved at ``output``
        (same config only, but for ``config.resume_may_change``; an option newer than the
        checkpoint may stay at its default, as the config class's defaults tell).

        ``sources`` describes the data the run trains on (JSON-like); it is kept in the
        checkpoint's metrics, and a resumed run must give the same (a checkpoint that
        recorded none accepts any). A new run refuses to overwrite an existing ``output``.
        """
        record = config.to_dict()
        run = Run(Path(output), record, model, optimizer, torch.Generator().manual_seed(config.seed))
        if resume:
            checkpoint = load_checkpoint(run.output, config=record, defaults=type(config)().to_dict(),
                                         free_keys=config.resume_may_change)
            saved = checkpoint.metrics.get("sources", sources)
            if saved != sources:
                raise InputError(f"{run.output} was trained on other data ({_first_difference(saved, sources)}); "
                                 "resume it on the same data, given in the same order")
            model.load_state_dict(checkpoint.model_state)
            optimizer.load_state_dict(checkpoint.optimizer_state)
            restore_rng_state(checkpoint.rng_state)
            run.generator.set_state(checkpoint.rng_state["loop_generator"])
            run.step, run.metrics = checkpoint.step, dict(checkpoint.metrics)
            run._cpu_base = run._cpu_seconds_saved()
            if run.step and "cpu_seconds" not in run.metrics:
                run.metrics.setdefault("cpu_counted_from", run.step)
        elif run.output.exists():
            raise InputError(f"{run.output} exists; pass resume to continue that run, or choose another output")
        if sources is not None:
            run.metrics["sources"] = sources
        return run

    def init_digest(self, init: str | None) -> str | None:
        """The sha256 of the weights ``init`` the run started from (``weights_digest``), taken
        when a new run starts and kept in its metrics, so that a resumed run has it without
        finding those weights again; None without ``init`` (or for a run saved without it)."""
        if init and self.step == 0 and "init_digest" not in self.metrics:
            self.metrics["init_digest"] = weights_digest(init)
        return self.metrics.get("init_digest")

    def provenance(self) -> dict[str, str]:
        """The metadata that tells where the weights this run exports came from: the data it
        trained on (``sources``, JSON, as ``start`` recorded it) and the sha256 of the weights it
        started from (``init_digest``), each where the run recorded one."""
        record = {}
        if "sources" in self.metrics:
            record["sources"] = json.dumps(self.metrics["sources"])
        if self.metrics.get("init_digest"):
            record["init_digest"] = self.metrics["init_digest"]
        return record

    def cpu_seconds(self) -> float:
        """The process CPU time this run has used so far, over all its resumes."""
        return self._cpu_base + time.process_time() - self._clock

    def _cpu_seconds_saved(self) -> float:
        """The CPU time recorded with the last save (0 if none was recorded)."""
        saves = self.metrics.get("cpu_seconds", [])
        return float(saves[-1][1]) if saves else 0.0

    def save(self) -> Path:
        """Write the checkpoint (atomically), with the CPU time used so far."""
        saves = [entry for entry in self.metrics.get("cpu_seconds", []) if entry[0] < self.step]
        self.metrics["cpu_seconds"] = [*saves, [self.step, round(self.cpu_seconds(), 3)]]
        return save_checkpoint(self.output, model_state=self.model.state_dict(),
                               optimizer_state=self.optimizer.state_dict(), step=self.step,
                               rng_state=rng_state() | {"loop_generator": self.generator.get_state()},
                               config=self.config, metrics=self.metrics)

    def record(self, values: dict) -> None:
        """Append the values of the step just taken to the history."""
        self.metrics["history"].append({"step": self.step, **values})


def _first_difference(saved, current, name: str = "sources") -> str:
    """Where two JSON-like records first differ, e.g. ``folders[1][0]: 'a' then, 'b' now``."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            if saved.get(key) != current.get(key):
                return _first_difference(saved.get(key), current.get(key), f"{name}.{key}")
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for index, (a, b) in enumerate(zip(saved, current)):
            if a != b:
                return _first_difference(a, b, f"{name}[{index}]")
    return f"{name}: {saved!r} then, {current!r} now"
