"""``locseg finetune-features``: fine-tune a backbone's hypercolumns on correspondences.

Seed 002 (sections 3.3, 3.4, 4.2): a Siamese backbone takes one image pair per
step. At every hypercolumn level, 1024 random true correspondences are the
positives, and one negative per positive is mined progressively from the other
image (outside radius alpha of the true match, drawn among the M hardest,
M = max(5, 300 e^(-0.6 k / 10000))); a run that continues earlier ones
reads the schedule at k = ``mining_offset`` + its own step, so the negatives keep
getting harder across runs instead of starting over. The loss is the double-margin contrastive
loss plus lambda = 0.5 times the Gauss-Newton loss, summed over levels, and AdamW
(weight decay 0.05) minimises it. Optionally (``FinetuneLossConfig.combined_weight``, not
in the seed) one more DMC term compares the whole hypercolumn maps, as matching does,
and ``FinetuneConfig.augment`` changes the scale and light of each pair (``augment``).
Pairs are drawn uniformly, or with ``condition_weights`` in proportion to the weight
of their second image's condition (``pair_weights``), to train more on hard conditions.
The learning rate is constant (seed 002), or with ``lr_schedule="cosine"`` falls from
``lr`` at step 0 to 0 at step ``iterations`` along half a cosine.

A run writes ``output`` (a training checkpoint, atomically, every
``checkpoint_every`` steps and at the end) and ``output`` with the suffix
``.safetensors`` (the backbone weights alone, for the weight registry). With
``resume`` it continues from ``output`` exactly where it stopped: same weights,
optimizer state, step and random state, refusing a different config or other
correspondence folders (the checkpoint records them and their pair count). Only
``iterations`` may change, and only at a constant learning rate: a larger value trains
a finished run on. A few pairs are held out of training and the matching precision on
them is recorded in the checkpoint's history and reported to ``progress`` (stage
``held-out``); they come from the same streets (and may share images with training
pairs), so this tracks progress, and a test street the model never saw judges it
(locseg evaluate-features).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..device import AUTO, resolve_device
from ..errors import InputError
from ..evaluate.matching import matching_precision
from ..models.hypercolumn import (
    DEFAULT_LAYERS,
    DEFAULT_NORMALIZATION,
    STRIDE,
    Hypercolumns,
)
from ..models.load import load_hypercolumns
from ..models.weights import save_safetensors
from .augment import AugmentConfig, augment_pair
from .losses import FinetuneLossConfig, total_finetune_loss
from .mining import mining_pool_size, sample_positives
from .pairs import CorrespondencePairs, PairSample
from .run import Run

Progress = Callable[[str, int, int, dict[str, float]], None]
PRETRAINED_LR = 1e-7  # seed 002, fine-tuning a pretrained VGG-16
SCRATCH_LR = 1e-4     # a randomly initialised backbone learns nothing at 1e-7
MIN_POINTS = 8        # a pair with fewer correspondences in view is skipped
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a fine-tuning run (stored in its checkpoint)."""

    backbone: str = "vgg16-slim"
    init: str | None = None               # weights: a bundled name, a file or a URL; None = random
    layers: tuple[int, ...] = DEFAULT_LAYERS
    hypercolumn_norm: str = DEFAULT_NORMALIZATION   # of validation's matching and the combined term
    max_side: int = 512
    iterations: int = 1000
    lr: float | None = None               # None: 1e-7 from given weights (seed 002), 1e-4 from scratch
    lr_schedule: str = "constant"         # or "cosine": lr * (1 + cos(pi step / iterations)) / 2
    weight_decay: float = 0.05
    positives: int = 1024
    checkpoint_every: int = 100
    validate_every: int = 250
    validation_pairs: int = 8             # held out of training, every k-th file
    validation_points: int = 500
    seed: int = 0
    mining_offset: int = 0                # steps of the runs this one continues: M is read at offset + step
    loss: FinetuneLossConfig = field(default_factory=FinetuneLossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)   # scale and light changes (not in the seed)
    condition_weights: tuple[tuple[str, float], ...] = ()   # (condition, weight) pairs or a dict; others weigh 1

    def __post_init__(self) -> None:
        if self.mining_offset < 0:
            raise InputError(f"mining_offset must be >= 0 (the steps of earlier runs), got {self.mining_offset}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if self.lr is None:
            object.__setattr__(self, "lr", PRETRAINED_LR if self.init else SCRATCH_LR)
        given = self.condition_weights
        weights = tuple((str(name), float(weight)) for name, weight in (
            given.items() if isinstance(given, Mapping) else given))
        names = [name for name, _ in weights]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise InputError(f"condition_weights name {twice[0]!r} twice; give each condition one weight")
        bad = [(name, weight) for name, weight in weights if not (math.isfinite(weight) and weight >= 0)]
        if bad:
            raise InputError(f"condition weight of {bad[0][0]!r} must be a finite number >= 0, got {bad[0][1]}")
        object.__setattr__(self, "condition_weights", weights)

    @property
    def resume_may_change(self) -> tuple[str, ...]:
        """A constant rate lets a resumed run stop later (or earlier) than planned; a
        cosine schedule reads ``iterations`` at every step, so a resumed run keeps them."""
        return ("iterations",) if self.lr_schedule == "constant" else ()

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step``, counted from 0 (the last is ``iterations - 1``)."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(step, self.iterations) / self.iterations))
        return self.lr

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists, as they read back


def split_pairs(count: int, held_out: int) -> tuple[list[int], list[int]]:
    """Training and validation indices: every k-th pair is held out (at most ``held_out``)."""
    if count < 2:
        raise InputError(f"fine-tuning needs at least 2 correspondence pairs, got {count}")
    held_out = min(held_out, count // 2)
    stride = count / held_out if held_out else math.inf
    validation = sorted({int(i * stride) for i in range(held_out)})
    return [i for i in range(count) if i not in set(validation)], validation


class _Subset:
    def __init__(self, pairs: CorrespondencePairs, indices: list[int]):
        self.pairs, self.indices = pairs, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> PairSample:
        return self.pairs[self.indices[i]]


def build_model(config: FinetuneConfig, from_init: bool = True) -> Hypercolumns:
    """The backbone named in ``config``, with ``config.init`` weights if given (and
    ``from_init``), else initialised from ``config.seed`` (without touching the caller's
    random state). A resumed run passes ``from_init=False``: its checkpoint sets every
    weight, so the init weights are not read and need not be found again."""
    weights = config.init if from_init else None
    return load_hypercolumns(config.backbone, weights, config.layers, config.seed, config.hypercolumn_norm)


def level_maps(model: Hypercolumns, image: torch.Tensor,
               combined: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The (C_l, H_l, W_l) maps of every hypercolumn level of one (3, H, W) image, unit norm
    per pixel, and with ``combined`` its whole (C, H/4, W/4) hypercolumn map (else None)."""
    activations = model.backbone.activations(image[None], model.layers)
    whole = model.assemble(activations, *image.shape[-2:])[0] if combined else None
    return [F.normalize(m[0], dim=0) for m in activations], whole


def training_step(model: Hypercolumns, sample: PairSample, step: int, config: FinetuneConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one pair and its breakdown (no optimiser step).

    Points in the pixels past the last whole cell of the coarsest level (when a
    stride does not divide the image size) have no feature there and are left out.
    """
    strides = [model.backbone.stride_entering(i) for i in model.layers]
    size_a = (sample.image_a.shape[-1], sample.image_a.shape[-2])
    size_b = (sample.image_b.shape[-1], sample.image_b.shape[-2])
    inside = _covered(sample.points_a, size_a, strides) & _covered(sample.points_b, size_b, strides)
    points_a, points_b = sample.points_a[inside], sample.points_b[inside]
    keep = sample_positives(len(points_a), config.positives, generator)
    whole = config.loss.needs_whole_maps
    levels_a, combined_a = level_maps(model, sample.image_a, whole)
    levels_b, combined_b = level_maps(model, sample.image_b, whole)
    loss, breakdown = total_finetune_loss(
        levels_a, levels_b, points_a[keep], points_b[keep], size_a, size_b,
        mining_pool_size(step + config.mining_offset), config.loss, generator, strides=strides,
        combined=(combined_a, combined_b, STRIDE) if whole else None)
    return loss, {k: float(v) for k, v in breakdown.items() if "/" not in k}


def _covered(points: torch.Tensor, size: tuple[int, int], strides: list[int]) -> torch.Tensor:
    """(N,) points inside the whole cells of every level: x <= s * floor(W / s) for each stride s."""
    limit = points.new_tensor([min(s * (size[0] // s) for s in strides), min(s * (size[1] // s) for s in strides)])
    return (points <= limit).all(dim=1)


def finetune_features(correspondences: str | Path | Sequence[str | Path], images: str | Path | Sequence[str | Path],
                      output: str | Path,
                      config: FinetuneConfig = FinetuneConfig(), resume: bool = False,
                      progress: Progress | None = None, device: str | torch.device = AUTO) -> Path:
    """Run (or resume) fine-tuning; returns the checkpoint path (see the module docstring).

    ``correspondences`` and ``images`` may be lists (one image root per folder), to
    train on several streets or datasets at once. ``device``: where the network trains
    (``locseg.device``); the sampling stays on the CPU's generators, so a run draws the
    same pairs and points on any device, and a checkpoint resumes on another.
    """
    output = Path(output)
    device = resolve_device(device)
    pairs = CorrespondencePairs(correspondences, images, config.max_side)
    train_ids, validation_ids = split_pairs(len(pairs), config.validation_pairs)
    model = build_model(config, from_init=not resume).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = Run.start(output, config, model, optimizer, resume, sources={"folders": pairs.sources, "pairs": len(pairs)})
    run.init_digest(config.init)

    def validate() -> dict[str, float]:
        held_out = _Subset(pairs, validation_ids)
        precision = matching_precision(model, held_out, max_points=config.validation_points, seed=config.seed)
        model.train()
        return precision.percent()

    weights = pair_weights(pairs, train_ids, dict(config.condition_weights))
    model.train()
    while run.step < config.iterations:
        sample = pairs[draw_pair(train_ids, weights, run.generator)]
        sample = augment_pair(sample, config.augment, run.generator)
        if len(sample.points_a) < MIN_POINTS:
            run.step += 1
            run.metrics["skipped"] = run.metrics.get("skipped", 0) + 1
            continue
        loss, breakdown = training_step(model, sample.to(device), run.step, config, run.generator)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(run.step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step += 1
        record = dict(breakdown)
        if config.validate_every and (run.step % config.validate_every == 0 or run.step == config.iterations):
            record["precision"] = validate()
            if progress:
                progress("held-out", run.step, config.iterations, {"precision": record["precision"]["all"]})
        run.record(record)
        if progress:
            progress("fine-tune", run.step, config.iterations, breakdown)
        if run.step % config.checkpoint_every == 0:
            run.save()
    run.save()
    if run.metrics.get("skipped", 0) >= config.iterations:
        raise InputError(f"no training pair had {MIN_POINTS} correspondences inside both images; "
                         "nothing was trained (check the image root and the correspondence files)")
    export_weights(model, output.with_suffix(".safetensors"), config, run.provenance())
    return output


def pair_weights(pairs: CorrespondencePairs, ids: Sequence[int], weights: dict[str, float]) -> torch.Tensor | None:
    """(len(ids),) float64 weight of drawing each training pair: its condition's weight in
    ``weights``, 1 for conditions it does not name; None without ``weights`` (uniform draws).

    Raises:
        InputError: ``weights`` name a condition no training pair has, or leave no pair a
            weight above 0.
    """
    if not weights:
        return None
    conditions = [pairs.condition(i) for i in ids]
    unknown = sorted(set(weights) - set(conditions))
    if unknown:
        raise InputError(f"no training pair is of condition {unknown[0]!r}; "
                         f"conditions of the pairs: {', '.join(sorted(set(conditions)))}")
    drawn = torch.tensor([weights.get(c, 1.0) for c in conditions], dtype=torch.float64)
    if not drawn.sum() > 0:
        raise InputError(f"condition weights {weights} leave no training pair to draw")
    return drawn


def draw_pair(ids: Sequence[int], weights: torch.Tensor | None, generator: torch.Generator) -> int:
    """One of ``ids``: uniformly (one ``randint`` draw, as every run before condition weights
    drew), or with probability proportional to ``weights`` (``pair_weights``)."""
    if weights is None:
        return ids[int(torch.randint(len(ids), (1,), generator=generator))]
    return ids[int(torch.multinomial(weights, 1, generator=generator))]


def export_weights(model: Hypercolumns, path: Path, config: FinetuneConfig,
                   provenance: Mapping[str, str] | None = None) -> Path:
    """The backbone's weights alone, as safetensors with the recipe in the metadata and the
    run's ``provenance`` (``Run.provenance``: training data, and the ``init`` weights' sha256)."""
    metadata = {"backbone": config.backbone, "layers": json.dumps(list(config.layers)),
                "recipe": json.dumps(config.to_dict())} | dict(provenance or {})
    return save_safetensors(model.backbone.state_dict(), path, metadata=metadata)
