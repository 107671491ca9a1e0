"""``locseg train-seg``: segmentation trained on a few labels and on cross-condition correspondences.

Seed 000 (sections 3 and 5) on SynthSeasons-like datasets. A dataset is a folder
with ``images/``, ``labels/`` (trainId PNGs of the same names) and, optionally,
``correspondences/`` (Cross-Season files from the reference condition to the
others; a dataset without it gives labels only). Further correspondence folders, each with its image root, can feed the
correspondence loss alone: their labels are never read (``extra_correspondences``).
Labelled images are every image of the reference condition and
``labels_per_condition`` images of each other condition, spread evenly along it
(``select_images``), the "few coarsely annotated images" of the seed that keep the
network from the trivial solution; the other labels are never read, except those of
``validation_per_condition`` further images per condition, held out to track mIoU.

Every step takes one labelled image (random horizontal flip, optional random crop)
and, after ``warmup`` steps, one correspondence pair, and minimises

    L = (L_sup + lambda L_corr) / (1 + lambda),

``L_sup`` the cross-entropy of the main head plus ``aux_weight`` times that of the
auxiliary head (255 ignored; each class weighed by ``(median f / f_c) ** class_balance``
over the labelled pixels' class frequencies f, so that thin classes are learned),
``L_corr`` one of the correspondence losses of ``locseg.train.seg_losses`` (CE,
HingeC, HingeF) between the reference image, run in eval mode and without gradient,
and the other image, after dropping the
correspondences whose reference pixel is predicted as a non-stationary class, but
for the classes of ``keep_classes`` (SynthSeasons' pairs join only surface points of
one object, so a pair on a car joins a car that stayed parked; one that moved gives
none), and, with ``min_confidence``, those predicted with a lower softmax probability

(with ``balance_correspondences``, each correspondence weighed by the class weight
of the reference's prediction there, the same weights as L_sup's).
Before the warm-up ends, L = L_sup. SGD with momentum and weight decay as in the
seed, with PSPNet's poly learning-rate decay.

Backbone modes (``backbone_mode``): ``frozen`` keeps the feature backbone (default
the bundled slim hypercolumn weights) untouched, so segmentation shares it with the
localizer and costs only its heads; ``finetune`` starts from the same weights and
trains them at ``backbone_lr_scale`` (0.1) times the head's rate; ``separate``
trains a backbone of its own (random unless ``init`` is given) at the full rate. An
``init`` that is a whole segmentation model of the same architecture (heads included)
sets every weight, so a run continues that model (``build_model``).

Checkpoints and ``resume`` follow finetune-features (``locseg.train.run``); the
weights go to ``output`` with the suffix ``.safetensors`` (the whole model, with its
architecture and recipe in the metadata), and with validation, the weights of the
best validation mIoU so far to ``.best.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..device import AUTO, module_device, resolve_device
from ..errors import InputError
from ..evaluate.segmentation import SegAccumulator, SegEvaluation, read_label_png
from ..io.queries import condition_of
from ..models.load import backbone_state
from ..models.preprocess import load_image, normalize_image, resize_image
from ..models.segmentation import (
    AUX_LAYER,
    CLASSES,
    HEAD_LAYER,
    NON_STATIONARY,
    NUM_CLASSES,
    SegmentationModel,
    SegModelConfig,
    segmentation_metadata,
    state_mismatch,
    upsample_to_pixels,
)
from ..models.weights import load_state_dict, save_safetensors
from .pairs import CorrespondencePairs, PairSample
from .run import Run
from .seg_losses import (
    CORRESPONDENCE_LOSSES,
    class_weights,
    combine,
    correspondence_loss,
    supervised_loss,
)

Progress = Callable[[str, int, int, dict[str, float]], None]
DEFAULT_BACKBONE_WEIGHTS = "synthseasons-slim-dmcgn-v3"
BACKBONE_MODES = ("frozen", "finetune", "separate")
DEFAULT_TRAIN_SIDE = 512    # longer side of training inputs: SynthSeasons' own 512x384
MIN_POINTS = 8              # fewer correspondences left after the filter: no correspondence loss
_BACKBONE_LR_SCALE = {"frozen": 0.0, "finetune": 0.1, "separate": 1.0}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NON_STATIONARY_NAMES = tuple(CLASSES[c] for c in NON_STATIONARY)


@dataclass(frozen=True)
class SegConfig:
    """Everything that determines a segmentation training run (stored in its checkpoint)."""

    # the poly decay reads iterations, so a resumed run keeps them
    resume_may_change: ClassVar[tuple[str, ...]] = ()

    backbone: str = "vgg16-slim"
    backbone_mode: str = "finetune"
    head_layer: int = HEAD_LAYER          # backbone layer entering the PSP head (23: relu4_3, stride 8)
    aux_layer: int = AUX_LAYER            # backbone layer entering the auxiliary head (16: relu3_3, stride 4)
    init: str | None = None               # None: the bundled slim features (frozen, finetune), random (separate);
                                          # a whole segmentation model is continued
    max_side: int = DEFAULT_TRAIN_SIDE
    crop: int | None = None               # random square crops of this size; None: whole images
    flip: bool = True
    iterations: int = 3000
    lr: float = 0.01
    backbone_lr_scale: float | None = None  # None: 0.1 for finetune, 1 for separate
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    aux_weight: float = 0.4
    class_balance: float = 0.5            # power of class_weights: 0 plain CE, 0.5 inverse sqrt frequency
    balance_correspondences: bool = False  # weigh L_corr's points by the class weight of the reference's class
    correspondence_loss: str = "ce"
    correspondence_weight: float = 1.0    # lambda
    warmup: int = 500
    margin: float = 0.8
    min_confidence: float = 0.0           # drop correspondences whose reference prediction is less sure (0: keep all)
    keep_classes: tuple[str, ...] = ()    # non-stationary classes whose correspondences the filter keeps (e.g. car)
    max_points: int = 4096
    reference_condition: str = "reference"
    labels_per_condition: int = 5
    validation_per_condition: int = 2
    validate_every: int = 250
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backbone_mode not in BACKBONE_MODES:
            raise InputError(f"unknown backbone mode {self.backbone_mode!r}; valid: {', '.join(BACKBONE_MODES)}")
        if self.correspondence_loss not in CORRESPONDENCE_LOSSES:
            raise InputError(f"unknown correspondence loss {self.correspondence_loss!r}; "
                             f"valid: {', '.join(CORRESPONDENCE_LOSSES)}")
        if self.balance_correspondences and self.class_balance == 0:
            raise InputError("balance_correspondences needs class weights: set class_balance > 0 (e.g. 0.5)")
        if isinstance(self.keep_classes, str):
            raise InputError(f"keep_classes must be a sequence of class names, got the string {self.keep_classes!r}")
        for name in self.keep_classes:
            if name not in NON_STATIONARY_NAMES:
                raise InputError(f"keep_classes: {name!r} is not a non-stationary class; valid: "
                                 f"{', '.join(NON_STATIONARY_NAMES)}")
        # One spelling per set of classes, so that a run resumes whatever order they were given in.
        object.__setattr__(self, "keep_classes", tuple(n for n in NON_STATIONARY_NAMES if n in self.keep_classes))
        if not 0 <= self.min_confidence < 1:
            raise InputError(f"min_confidence must be in [0, 1), got {self.min_confidence}")
        if self.crop is not None and self.crop < 32:
            raise InputError(f"crop must be at least 32 pixels, got {self.crop}")
        for name in ("correspondence_weight", "aux_weight", "class_balance", "lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.init is None and self.backbone_mode != "separate":
            if self.backbone != "vgg16-slim":
                raise InputError(f"backbone mode {self.backbone_mode!r} on {self.backbone!r} needs init weights "
                                 f"(the bundled {DEFAULT_BACKBONE_WEIGHTS!r} are for vgg16-slim)")
            object.__setattr__(self, "init", DEFAULT_BACKBONE_WEIGHTS)
        if self.backbone_lr_scale is None:
            object.__setattr__(self, "backbone_lr_scale", _BACKBONE_LR_SCALE[self.backbone_mode])
        elif self.backbone_lr_scale < 0:
            raise InputError(f"backbone_lr_scale must be >= 0 (0 freezes the backbone), got {self.backbone_lr_scale}")
        elif self.backbone_mode == "frozen" and self.backbone_lr_scale > 0:
            raise InputError(f"backbone mode 'frozen' trains no backbone, but backbone_lr_scale is "
                             f"{self.backbone_lr_scale}; use backbone mode 'finetune' or 'separate'")

    @property
    def filtered_classes(self) -> tuple[int, ...]:
        """The trainIds the non-stationary filter drops: ``NON_STATIONARY`` but ``keep_classes``."""
        return tuple(c for c in NON_STATIONARY if CLASSES[c] not in self.keep_classes)

    def model_config(self) -> SegModelConfig:
        return SegModelConfig(backbone=self.backbone, head_layer=self.head_layer, aux_layer=self.aux_layer,
                              frozen_backbone=self.backbone_mode == "frozen")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class LabelledImage:
    """An image, its trainId PNG, and its name relative to ``images/`` (condition first)."""

    image: Path
    labels: Path
    name: str

    @property
    def condition(self) -> str:
        return condition_of(self.name)


def dataset_images(root: str | Path) -> dict[str, list[LabelledImage]]:
    """``{condition: images sorted by name}`` of the labelled images of a dataset folder,
    but for the traversals added to a SynthSeasons street (``locseg synth-traversal``)."""
    from ..synth.traversal import recorded_traversals

    root = Path(root)
    added = set(recorded_traversals(root))
    labels_dir, images_dir = root / "labels", root / "images"
    if not labels_dir.is_dir() or not images_dir.is_dir():
        raise InputError(f"{root} is not a segmentation dataset: it needs images/ and labels/ folders")
    found: dict[str, list[LabelledImage]] = {}
    for label in sorted(labels_dir.rglob("*.png")):
        relative = label.relative_to(labels_dir)
        image = next((p for p in (images_dir / relative.with_suffix(s) for s in IMAGE_SUFFIXES) if p.is_file()), None)
        if image is None or len(relative.parts) < 2:
            continue
        item = LabelledImage(image, label, image.relative_to(images_dir).as_posix())
        if item.condition not in added:
            found.setdefault(item.condition, []).append(item)
    return found


def spread(count: int, wanted: int) -> list[int]:
    """``wanted`` indices of ``range(count)`` spread evenly (centred), all of them if fewer."""
    if wanted >= count:
        return list(range(count))
    return sorted({int(np.floor((i + 0.5) * count / wanted)) for i in range(wanted)})


def select_images(datasets: Sequence[str | Path], config: SegConfig) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """The labelled training images and the held-out validation images (module docstring)."""
    training, validation = [], []
    for root in datasets:
        by_condition = dataset_images(root)
        if config.reference_condition not in by_condition:
            raise InputError(f"{root} has no labelled images of the reference condition "
                             f"{config.reference_condition!r} (found: {', '.join(sorted(by_condition)) or 'none'})")
        for condition, items in sorted(by_condition.items()):
            if condition == config.reference_condition:
                training += items
                continue
            chosen = spread(len(items), config.labels_per_condition)
            training += [items[i] for i in chosen]
            rest = [item for i, item in enumerate(items) if i not in set(chosen)]
            validation += [rest[i] for i in spread(len(rest), config.validation_per_condition)]
    return training, validation


class ResizedImages:
    """Images resized so that the longer side is ``max_side``, and labels resized to
    them, loaded once and kept in memory as uint8 (the precision of the files): about
    600 kB per image at 512 x 384, and it saves the resizing (~0.1 s) on every reuse.
    """

    def __init__(self, max_side: int):
        self.max_side = max_side
        self._images: dict[Path, tuple[torch.Tensor, tuple[int, int]]] = {}
        self._labels: dict[Path, torch.Tensor] = {}

    def image(self, path: Path) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, H, W) ImageNet-normalised network input and the original (width, height)."""
        if path not in self._images:
            original = load_image(path)
            resized, _ = resize_image(original, max_side=self.max_side)
            stored = (resized * 255).round().clamp(0, 255).to(torch.uint8)
            self._images[path] = stored, (original.shape[-1], original.shape[-2])
        stored, size = self._images[path]
        return normalize_image(stored.float() / 255), size

    def labels(self, path: Path, size: tuple[int, int]) -> torch.Tensor:
        """(H, W) int64 trainIds resized to ``size`` (H, W) by nearest pixel centres."""
        if path not in self._labels:
            labels = torch.from_numpy(read_label_png(path))
            if labels.shape != size:
                labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0]
            self._labels[path] = labels.to(torch.uint8)
        return self._labels[path].long()

    def labelled(self, item: LabelledImage) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) network input and (H, W) int64 labels of a labelled image."""
        image, _ = self.image(item.image)
        return image, self.labels(item.labels, tuple(image.shape[-2:]))


class CachedPairs(CorrespondencePairs):
    """``CorrespondencePairs`` whose images come from a ``ResizedImages`` cache."""

    def __init__(self, directories: Sequence[Path], roots: Sequence[Path], images: ResizedImages):
        super().__init__(list(directories), list(roots), images.max_side)
        self.images = images

    def _load(self, path: Path, points) -> tuple[torch.Tensor, torch.Tensor]:
        image, (width, height) = self.images.image(path)
        scale = torch.tensor([image.shape[-1] / width, image.shape[-2] / height])
        return image, torch.as_tensor(points, dtype=torch.float32) * scale


def augment(image: torch.Tensor, labels: torch.Tensor, config: SegConfig,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and random crop (as configured), drawn from ``generator``."""
    if config.flip and bool(torch.rand(1, generator=generator) < 0.5):
        image, labels = image.flip(-1), labels.flip(-1)
    if config.crop:
        height, width = labels.shape
        ch, cw = min(config.crop, height), min(config.crop, width)
        y = int(torch.randint(height - ch + 1, (1,), generator=generator))
        x = int(torch.randint(width - cw + 1, (1,), generator=generator))
        image, labels = image[:, y:y + ch, x:x + cw], labels[y:y + ch, x:x + cw]
    return image, labels


def orient(sample: PairSample, reference_condition: str) -> PairSample:
    """The pair with the reference-condition image first (as the Cross-Season files store it)."""
    if condition_of(sample.name_b) == reference_condition and condition_of(sample.name_a) != reference_condition:
        return PairSample(sample.image_b, sample.image_a, sample.points_b, sample.points_a,
                          sample.name_b, sample.name_a)
    return sample


# --------------------------------------------------------------------------- model

def build_model(config: SegConfig, from_init: bool = True) -> SegmentationModel:
    """The model of ``config``: heads initialised from ``config.seed`` (without touching
    the caller's random state), the backbone from ``config.init`` when given. When
    ``config.init`` is a whole segmentation model of this architecture (heads included),
    every weight comes from it, so a run continues a trained model. A resumed run passes
    ``from_init=False``: its checkpoint sets every weight, so ``config.init`` is not read."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SegmentationModel(config.model_config())
    if config.init and from_init:
        state = load_state_dict(config.init)
        if any(key.startswith("head.") for key in state):
            wrong, _ = state_mismatch(model, state)    # keys of the file the model lacks are ignored
            if wrong:
                raise InputError(f"segmentation weights {config.init!r} do not fit this model ({config.backbone}, "
                                 f"{config.model_config()}): {len(wrong)} tensors missing or of another shape, "
                                 f"e.g. {wrong[:3]}")
            model.load_state_dict({k: state[k] for k in model.state_dict()})
        else:
            model.backbone.load_state_dict(backbone_state(state, config.init))
    return model


def make_optimizer(model: SegmentationModel, config: SegConfig) -> torch.optim.SGD:
    """SGD over the heads at ``lr`` and the backbone at ``lr * backbone_lr_scale`` (if trained)."""
    groups = [{"params": [*model.head.parameters(), *model.aux.parameters()], "lr": config.lr}]
    if config.backbone_mode != "frozen" and config.backbone_lr_scale > 0:
        groups.append({"params": list(model.backbone.parameters()), "lr": config.lr * config.backbone_lr_scale})
    else:
        model.backbone.requires_grad_(False)
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def poly_lr(optimizer: torch.optim.Optimizer, step: int, config: SegConfig) -> None:
    """Set every group's rate to ``base_lr (1 - step / iterations) ** poly_power``."""
    factor = (1 - step / config.iterations) ** config.poly_power
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


# --------------------------------------------------------------------------- one step

def supervised_term(model: SegmentationModel, image: torch.Tensor, labels: torch.Tensor,
                    config: SegConfig, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the main head plus ``aux_weight`` times the auxiliary head's, for one
    image; ``weight`` (19,) weighs the classes (``class_weights``)."""
    out = model(image[None], aux=config.aux_weight > 0)
    size = image.shape[-2:]
    main = supervised_loss(upsample_to_pixels(out.logits, out.stride, size), labels[None], weight=weight)
    loss, parts = main, {"sup": float(main.detach())}
    if out.aux_logits is not None:
        aux = supervised_loss(upsample_to_pixels(out.aux_logits, out.aux_stride, size), labels[None], weight=weight)
        loss = loss + config.aux_weight * aux
        parts["aux"] = float(aux.detach())
    return loss, parts


def correspondence_term(model: SegmentationModel, sample: PairSample, config: SegConfig,
                        generator: torch.Generator,
                        weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The correspondence loss of one pair (reference first): the reference without
    gradient in eval mode, at most ``max_points`` correspondences drawn from ``generator``;
    ``weight`` (19,) weighs the correspondences by the reference's class."""
    points_r, points_t = sample.points_a, sample.points_b
    if len(points_r) > config.max_points:
        keep = torch.randperm(len(points_r), generator=generator)[: config.max_points]
        points_r, points_t = points_r[keep], points_t[keep]
    training = model.training
    model.eval()
    with torch.no_grad():
        reference = model(sample.image_a[None])
    model.train(training)
    target = model(sample.image_b[None])
    loss, used = correspondence_loss(config.correspondence_loss, reference, target, points_r, points_t, config.margin,
                                     weight, config.min_confidence, config.filtered_classes)
    if used < MIN_POINTS:
        loss = loss * 0
    return loss, {"corr": float(loss.detach()), "points": float(used)}


def training_step(model: SegmentationModel, labelled: tuple[torch.Tensor, torch.Tensor],
                  pair: PairSample | None, config: SegConfig, generator: torch.Generator,
                  weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss of one step and its parts; ``pair`` None (warm-up) gives L_sup alone;
    ``weight`` (19,) weighs the supervised loss's classes, and with
    ``config.balance_correspondences`` the correspondence loss's too."""
    loss, parts = supervised_term(model, *labelled, config, weight)
    if pair is not None:
        correspondence, corr_parts = correspondence_term(model, pair, config, generator,
                                                         weight if config.balance_correspondences else None)
        loss = combine(loss, correspondence, config.correspondence_weight)
        parts |= corr_parts
    parts["total"] = float(loss.detach())
    return loss, parts


# --------------------------------------------------------------------------- validation

def predict_labels(model: SegmentationModel, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) network input -> (H, W) int64 trainIds, whole image at once."""
    with torch.no_grad():
        return model.predict(image[None])[0].argmax(dim=0)


def validate(model: SegmentationModel, items: Sequence[LabelledImage], images: ResizedImages) -> SegEvaluation:
    """mIoU of whole-image predictions at the training size against labels resized to it."""
    training = model.training
    model.eval()
    device = module_device(model)
    accumulator = SegAccumulator()
    for item in items:
        image, labels = images.labelled(item)
        accumulator.add(item.name, predict_labels(model, image.to(device)).cpu().numpy(), labels.numpy())
    model.train(training)
    return SegEvaluation.from_accumulator(accumulator)


# --------------------------------------------------------------------------- the run

def train_segmentation(datasets: Sequence[str | Path], output: str | Path, config: SegConfig = SegConfig(),
                       resume: bool = False, progress: Progress | None = None,
                       device: str | torch.device = AUTO,
                       extra_correspondences: Sequence[tuple[str | Path, str | Path]] = ()) -> Path:
    """Run (or resume) segmentation training; returns the checkpoint path (module docstring).

    Args:
        datasets: folders with images/, labels/ and, where they have one, correspondences/
            (SynthSeasons streets).
        output: the checkpoint; weights go next to it as ``.safetensors``.
        extra_correspondences: further (correspondence folder, image root) sources whose
            labels are never read: pairs are cheap where annotation is not, so the
            correspondence loss can draw on more traversals than the labels cover.
            A resumed run must be given the same datasets and sources (and the
            folders must hold the same number of pairs); the checkpoint records them.
        device: where the model trains (``locseg.device``); images are cached on the
            CPU and the sampling draws from the run's CPU generator, so a run takes the
            same steps on any device.
    """
    output = Path(output)
    device = resolve_device(device)
    datasets = [Path(d) for d in datasets]
    if not datasets:
        raise InputError("train-seg needs at least one dataset folder")
    training_images, validation_images = select_images(datasets, config)
    images = ResizedImages(config.max_side)
    pairs = _pairs(datasets, extra_correspondences, images) if config.correspondence_weight > 0 else None
    weight = labelled_class_weights(training_images, images, config.class_balance) if config.class_balance else None
    model = build_model(config, from_init=not resume).to(device)
    weight = None if weight is None else weight.to(device)
    optimizer = make_optimizer(model, config)
    run = Run.start(output, config, model, optimizer, resume, sources=_source_record(datasets, pairs))
    run.init_digest(config.init)
    model.train()
    while run.step < config.iterations:
        poly_lr(optimizer, run.step, config)
        item = training_images[int(torch.randint(len(training_images), (1,), generator=run.generator))]
        image, labels = augment(*images.labelled(item), config, run.generator)
        labelled = image.to(device), labels.to(device)
        pair = None
        if pairs is not None and run.step >= config.warmup:
            pair = orient(pairs[int(torch.randint(len(pairs), (1,), generator=run.generator))],
                          config.reference_condition).to(device)
        # Dropout draws from torch's global generator: seed it for this step from the
        # run's generator, leaving the caller's global random state as it was.
        step_seed = int(torch.randint(2 ** 62, (1,), generator=run.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed)
            loss, parts = training_step(model, labelled, pair, config, run.generator, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step += 1
        record = dict(parts)
        if validation_images and config.validate_every and (
                run.step % config.validate_every == 0 or run.step == config.iterations):
            record["miou"] = _validate_and_keep_best(run, validation_images, images, config)
            if progress and "all" in record["miou"]:
                progress("validation", run.step, config.iterations, {"miou": record["miou"]["all"]})
        run.record(record)
        if progress:
            progress("train-seg", run.step, config.iterations, parts)
        if run.step % config.checkpoint_every == 0:
            run.save()
    run.save()
    export_weights(model, output.with_suffix(".safetensors"), config, run.provenance())
    return output


def labelled_class_weights(items: Sequence[LabelledImage], images: ResizedImages, power: float) -> torch.Tensor:
    """(19,) ``class_weights`` of the labelled pixels of ``items`` at the training size."""
    counts = np.zeros(256, dtype=np.int64)
    for item in items:
        counts += np.bincount(images.labelled(item)[1].numpy().ravel(), minlength=256)
    return class_weights(counts[:NUM_CLASSES], power)


def has_correspondences(dataset: str | Path) -> bool:
    """Whether a dataset folder has pairs of its own (``correspondences/``); without, it gives labels only."""
    return (Path(dataset) / "correspondences").is_dir()


def correspondence_sources(datasets: Sequence[str | Path], extra: Sequence[tuple[str | Path, str | Path]] = ()
                           ) -> list[tuple[Path, Path]]:
    """(correspondence folder, image root) of every source of pairs: the ``correspondences/``
    and ``images/`` of each dataset that has the former, then the ``extra`` ones, which must
    exist. A folder given twice is refused (its pairs would be drawn twice as often)."""
    sources = [(Path(d) / "correspondences", Path(d) / "images") for d in datasets if has_correspondences(d)]
    extra = [(Path(folder), Path(root)) for folder, root in extra]
    missing = [str(path) for source in extra for path in source if not path.is_dir()]
    if missing:
        raise InputError(f"no such folder: {', '.join(missing)}")
    sources += extra
    folders = [folder.resolve() for folder, _ in sources]
    twice = sorted({str(f) for f in folders if folders.count(f) > 1})
    if twice:
        raise InputError(f"correspondence folder given twice: {', '.join(twice)} (a --dataset's own "
                         "correspondences/ is read already)")
    return sources


def _pairs(datasets: Sequence[Path], extra: Sequence[tuple[str | Path, str | Path]],
           images: ResizedImages) -> CachedPairs:
    sources = correspondence_sources(datasets, extra)
    if not sources:
        raise InputError(f"no correspondences: no correspondences/ folder in {', '.join(map(str, datasets))} and no "
                         "further correspondence folders (or set the correspondence weight, --lambda, to 0)")
    return CachedPairs([folder for folder, _ in sources], [root for _, root in sources], images)


def _source_record(datasets: Sequence[Path], pairs: CachedPairs | None) -> dict:
    """What a run trains on, kept in its checkpoint so that a resumed run can be checked."""
    record: dict = {"datasets": [str(d.resolve()) for d in datasets]}
    if pairs is not None:
        record["pairs"] = len(pairs)
        record["correspondences"] = sorted({str(f.parent.resolve()) for f in pairs.files})
    return record


def _validate_and_keep_best(run: Run, items: Sequence[LabelledImage], images: ResizedImages,
                            config: SegConfig) -> dict[str, float]:
    evaluation = validate(run.model, items, images)
    miou = {group: round(value, 4) for group, value in evaluation.miou.items()}
    if miou.get("all", -1.0) > run.metrics.get("best_miou", -1.0):
        run.metrics["best_miou"], run.metrics["best_step"] = miou["all"], run.step
        export_weights(run.model, run.output.with_suffix(".best.safetensors"), config, run.provenance())
    return miou


def export_weights(model: SegmentationModel, path: Path, config: SegConfig,
                   provenance: Mapping[str, str] | None = None) -> Path:
    """The whole model as safetensors, its architecture and recipe in the metadata, with the
    run's ``provenance`` (``Run.provenance``: training data, and the ``init`` weights' sha256)."""
    metadata = segmentation_metadata(model.config, config.to_dict()) | dict(provenance or {})
    return save_safetensors(model.state_dict(), path, metadata=metadata)
