"""``locseg train-retrieval``: NetVLAD global descriptors trained on SynthSeasons streets.

Images of a street's traversals are places with known poses. For an anchor image,
the positives are images of *other* traversals whose camera lies within
``positive_radius`` metres and ``positive_angle`` degrees of heading; negatives are
images farther than ``negative_radius`` metres. Each step takes one anchor, the
positive whose descriptor is closest (of a few candidates), and the hardest of a
few random negatives, and minimises the triplet loss
``mean_n max(0, |a - p| + margin - |a - n|)`` over the hardest negatives, with
margin sqrt(0.1) (NetVLAD, Arandjelović et al., CVPR 2016, uses 0.1 on squared
distances). Candidates are ranked without gradients, and only the chosen images go
through the network with gradients. The backbone is trained with
the NetVLAD layer unless ``freeze_backbone``.

With the backbone frozen, an image's local map never changes, so it is computed once:
``LocalFeatureCache`` keeps a seeded sample of ``cache_positions`` locations of every
training image's map, and each step pools those samples through the NetVLAD layer
alone. A step then costs milliseconds instead of 15 backbone passes, and the pooled
sample is an unbiased stand-in for the whole map (NetVLAD sums over locations, and
the normalisations that follow remove the scale).

Checkpoints, ``resume`` and exported weights follow finetune-features: the
checkpoint at ``output``, and ``output`` with the suffix ``.safetensors`` holding
``backbone.*`` and ``netvlad.*`` tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..device import AUTO, module_device, resolve_device
from ..errors import InputError, RegistryError
from ..geometry import Pose
from ..io.poses import read_poses
from ..io.queries import condition_of
from ..models.backbone import build_backbone
from ..models.hypercolumn import DEFAULT_LAYERS, DEFAULT_NORMALIZATION, Hypercolumns
from ..models.load import backbone_state, weights_digest
from ..models.netvlad import (
    RETRIEVAL_SOURCES,
    SINGLE_SCALE,
    NetVLAD,
    PCAWhitening,
    check_pooled_weights,
    check_scales,
    pool_scales,
    pooled_normalization,
)
from ..models.preprocess import load_image, prepare_image
from ..models.weights import (
    load_state_dict,
    read_safetensors_metadata,
    resolve_weights,
    save_safetensors,
    sniff_format,
)
from .run import Run

Progress = Callable[[str, int, int, dict[str, float]], None]


class RetrievalModel(nn.Module):
    """NetVLAD over a local map of the backbone → (optional) PCA whitening:
    (B, 3, H, W) → (B, D) unit descriptors.

    Args:
        source: the pooled map, ``"conv5_3"`` (NetVLAD's choice) or ``"hypercolumns"``
            (the dense hypercolumns of ``layers``, which the localizer computes anyway).
        normalization: of those hypercolumns (``locseg.models.hypercolumn``).
    """

    def __init__(self, backbone: str = "vgg16-slim", clusters: int = 64, source: str = "conv5_3",
                 layers: tuple[int, ...] = DEFAULT_LAYERS, normalization: str = DEFAULT_NORMALIZATION):
        super().__init__()
        if source not in RETRIEVAL_SOURCES:
            raise RegistryError("retrieval source", source, list(RETRIEVAL_SOURCES))
        self.backbone = build_backbone(backbone)
        self.source, self.layers, self.normalization = source, tuple(layers), normalization
        dim = self.backbone.channels_entering(29) if source == "conv5_3" else self._hypercolumns().channels
        self.netvlad = NetVLAD(dim, clusters)
        self.whitening = PCAWhitening()

    def local_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) the map that NetVLAD pools."""
        if self.source == "conv5_3":
            return self.backbone.conv5_3(images)
        return self._hypercolumns().dense(images)

    def _hypercolumns(self) -> Hypercolumns:
        """A hypercolumn view of the backbone, made per call so that it stays out of the
        state dict (whose keys checkpoints hold) and never holds a stale backbone."""
        return Hypercolumns(self.backbone, self.layers, self.normalization)

    def forward(self, images: torch.Tensor, whiten: bool = True) -> torch.Tensor:
        descriptors = self.netvlad(self.local_features(images))
        return self.whitening(descriptors) if whiten and self.whitening.fitted else descriptors


@dataclass(frozen=True)
class RetrievalConfig:
    """Everything that determines a retrieval training run."""

    # a resumed run keeps every setting
    resume_may_change: ClassVar[tuple[str, ...]] = ()

    backbone: str = "vgg16-slim"
    init: str | None = None
    clusters: int = 64
    source: str = "conv5_3"
    hypercolumn_norm: str = DEFAULT_NORMALIZATION   # of the pooled hypercolumns (source "hypercolumns")
    max_side: int = 512
    iterations: int = 500
    lr: float = 1e-4
    weight_decay: float = 1e-4
    margin: float = 0.1 ** 0.5   # on unsquared distances, as sqrt of NetVLAD's 0.1 on squared ones
    positive_candidates: int = 4
    negative_candidates: int = 10
    hardest_negatives: int = 3
    positive_radius: float = 5.0     # metres
    positive_angle: float = 30.0     # degrees of heading
    negative_radius: float = 25.0    # metres
    freeze_backbone: bool = False
    cache_positions: int = 1024      # locations per image kept when the backbone is frozen
    checkpoint_every: int = 50
    seed: int = 0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def same_place(centres: np.ndarray, forward: np.ndarray, centre: np.ndarray, direction: np.ndarray,
               radius: float, angle: float) -> np.ndarray:
    """(N,) whether cameras (centres (N, 3), viewing directions (N, 3)) see the place a camera
    at ``centre`` looking along ``direction`` sees: within ``radius`` metres and ``angle`` degrees."""
    near = np.linalg.norm(centres - centre, axis=1) <= radius
    return near & (forward @ direction >= np.cos(np.radians(angle)))


@dataclass
class PlaceImages:
    """Every image of some streets with its true pose.

    Attributes:
        paths: image files; street: (N,) index of the street each belongs to;
        condition: (N,) condition names; centres: (N, 3) camera centres;
        forward: (N, 3) viewing directions (world frame).
    """

    paths: list[Path]
    street: np.ndarray
    condition: np.ndarray
    centres: np.ndarray
    forward: np.ndarray

    @staticmethod
    def from_streets(streets: Sequence[str | Path]) -> PlaceImages:
        paths, street, condition, centres, forward = [], [], [], [], []
        for index, root in enumerate(map(Path, streets)):
            poses: dict[str, Pose] = {}
            for name in ("reference.txt", "queries.txt"):
                file = root / "ground_truth" / name
                if not file.is_file():
                    raise InputError(f"{root} is not a SynthSeasons street: {file} is missing")
                poses.update(read_poses(file))
            for name, pose in poses.items():
                paths.append(root / "images" / name)
                street.append(index)
                condition.append(condition_of(name))
                centres.append(pose.center.double().numpy())
                forward.append(pose.R[2].double().numpy())
        return PlaceImages(paths, np.array(street), np.array(condition), np.stack(centres), np.stack(forward))

    def positives(self, i: int, radius: float, angle: float) -> np.ndarray:
        """Images of other traversals of the same street within ``radius`` m and ``angle`` degrees."""
        same = same_place(self.centres, self.forward, self.centres[i], self.forward[i], radius, angle)
        return np.flatnonzero(same & self._same_street(i) & (self.condition != self.condition[i]))

    def negatives(self, i: int, radius: float) -> np.ndarray:
        """Images farther than ``radius`` metres, or of another street."""
        far = np.linalg.norm(self.centres - self.centres[i], axis=1) > radius
        return np.flatnonzero(far | ~self._same_street(i))

    def _same_street(self, i: int) -> np.ndarray:
        return self.street == self.street[i]


def load_input(path: Path, max_side: int) -> torch.Tensor:
    """(3, H, W) network input of an image file."""
    return prepare_image(path, max_side=max_side)[0]


def describe(model: RetrievalModel, paths: Sequence[Path], max_side: int, whiten: bool = True,
             progress: Callable[[str, int, int], None] | None = None,
             scales: Sequence[float] = SINGLE_SCALE) -> torch.Tensor:
    """(N, D) descriptors of image files, one at a time (sizes may differ), on the CPU;
    the model runs on its own device. ``scales``: multi-scale descriptors
    (``locseg.models.netvlad``); the default is the plain one."""
    scales = check_scales(scales, "retrieval scales")
    model.eval()
    device = module_device(model)
    out = []
    with torch.inference_mode():
        for done, path in enumerate(paths):
            image = load_image(path)
            pooled = pool_scales(torch.cat([
                model(prepare_image(image, max_side=round(max_side * s))[0][None].to(device), whiten=False)
                for s in scales]))
            out.append((model.whitening(pooled[None])[0] if whiten and model.whitening.fitted else pooled).cpu())
            if progress:
                progress("describe", done + 1, len(paths))
    return torch.stack(out)


class LocalFeatureCache:
    """A fixed sample of each image's local map, for training NetVLAD on a frozen backbone.

    Attributes:
        samples: (N, P, D) float16, ``P`` locations of image i's (D, h, w) map, drawn
            without replacement by a generator seeded with ``(seed, i)``.
    """

    def __init__(self, samples: torch.Tensor):
        self.samples = samples

    @classmethod
    def build(cls, model: RetrievalModel, paths: Sequence[Path], max_side: int, positions: int, seed: int,
              progress: Callable[[str, int, int], None] | None = None) -> LocalFeatureCache:
        if positions < 1:
            raise InputError(f"cache_positions must be at least 1, got {positions}")
        model.eval()
        device = module_device(model)
        samples = []
        with torch.inference_mode():
            for i, path in enumerate(paths):
                local = model.local_features(load_input(path, max_side)[None].to(device))[0].flatten(1).cpu()
                rng = np.random.default_rng([seed, i])
                chosen = rng.choice(local.shape[1], min(positions, local.shape[1]), replace=False)
                samples.append(local[:, torch.from_numpy(np.sort(chosen))].T.half())
                if progress:
                    progress("cache local features", i + 1, len(paths))
        if len({tuple(x.shape) for x in samples}) > 1:
            raise InputError(f"images give maps of different sizes; cache_positions {positions} must not exceed "
                             "the smallest map's locations")
        return cls(torch.stack(samples))

    def maps(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, D, P, 1) float32 maps of the images ``indices``, as NetVLAD takes them."""
        return self.samples[list(indices)].float().transpose(1, 2)[..., None]


def build_model(config: RetrievalConfig, places: PlaceImages, require_netvlad: bool = False,
                from_init: bool = True) -> RetrievalModel:
    """The model, from ``config.init`` weights or seeded random weights with NetVLAD
    initialised by k-means on conv5_3 descriptors of a few training images.

    ``require_netvlad`` refuses weights without a trained NetVLAD layer (for evaluation,
    where a layer initialised on the evaluation images would be reported as trained).
    ``from_init=False`` builds the seeded architecture alone, for a resumed run whose
    checkpoint sets every weight: neither ``config.init`` nor k-means is needed then.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RetrievalModel(config.backbone, config.clusters, config.source, normalization=config.hypercolumn_norm)
    if not from_init:
        return model
    if config.init:
        state = load_state_dict(config.init)
        backbone = {k: v for k, v in state.items() if k.startswith("features.")}
        backbone |= {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("backbone.")}
        model.backbone.load_state_dict(backbone)
        netvlad = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("netvlad.")}
        if netvlad:
            model.netvlad.load_state_dict(netvlad)
            return model
        if require_netvlad:
            raise InputError(f"weights {config.init!r} hold no 'netvlad.*' tensors; train them with "
                             "locseg train-retrieval")
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(len(places.paths), min(16, len(places.paths)), replace=False)
    with torch.inference_mode():
        local = [model.local_features(load_input(places.paths[i], config.max_side)[None])[0].flatten(1).T
                 for i in sample]
    local = torch.cat(local)
    keep = torch.from_numpy(rng.choice(len(local), min(len(local), 20000), replace=False))
    model.netvlad.init_from_descriptors(local[keep], seed=config.seed)
    return model


def load_retrieval_model(weights: str, hypercolumn_weights: str | None = None,
                         backbone: str = "vgg16-slim", normalization: str | None = None) -> RetrievalModel:
    """A trained retrieval model for evaluation, from ``locseg train-retrieval`` weights.

    A ``hypercolumns`` head exported without its (frozen) backbone pools the
    hypercolumns of ``hypercolumn_weights``, which must then be given, normalised as the
    head was trained (its metadata, ``pooled_normalization``) unless ``normalization``
    overrides it, e.g. to measure a head on maps it was not trained on. Other hypercolumn
    weights than those the head was trained to pool are refused (``check_pooled_weights``).
    """
    state = load_state_dict(weights)
    path = resolve_weights(weights)
    metadata = read_safetensors_metadata(path) if sniff_format(path) == "safetensors" else {}
    source = metadata.get("source", "conv5_3")
    netvlad = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("netvlad.")}
    if not netvlad:
        raise InputError(f"weights {weights!r} hold no 'netvlad.*' tensors; train them with locseg train-retrieval")
    model = RetrievalModel(metadata.get("backbone", backbone), netvlad["centroids"].shape[0], source,
                           normalization=normalization or pooled_normalization(metadata) or DEFAULT_NORMALIZATION)
    own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("backbone.")}
    if own:
        model.backbone.load_state_dict(own)
    elif hypercolumn_weights:
        check_pooled_weights(weights, metadata, weights_digest(hypercolumn_weights))
        model.backbone.load_state_dict(backbone_state(load_state_dict(hypercolumn_weights), hypercolumn_weights))
    else:
        raise InputError(f"retrieval weights {weights!r} hold no backbone; give the hypercolumn weights they "
                         "were trained on")
    model.netvlad.load_state_dict(netvlad)
    return model


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """Mean over negatives of ``max(0, |a - p| + margin - |a - n|)``; (D,), (D,), (K, D) → ().

    Distances are not squared: squared distances have a vanishing gradient when
    descriptors come close, which lets a collapsed model sit at loss = margin.
    """
    d_pos = (anchor - positive).norm()
    d_neg = (anchor[None] - negatives).norm(dim=1)
    return torch.relu(d_pos + margin - d_neg).mean()


def train_retrieval(streets: Sequence[str | Path], output: str | Path, config: RetrievalConfig = RetrievalConfig(),
                    resume: bool = False, progress: Progress | None = None,
                    device: str | torch.device = AUTO) -> Path:
    """Train (or resume training) NetVLAD on ``streets``; returns the checkpoint path.

    The checkpoint records the streets; a resumed run must be given the same ones.

    ``device``: where the model trains (``locseg.device``); the feature cache and the
    sampling stay on the CPU."""
    output = Path(output)
    device = resolve_device(device)
    places = PlaceImages.from_streets(streets)
    anchors = np.array([i for i in range(len(places.paths))
                        if len(places.positives(i, config.positive_radius, config.positive_angle))
                        and len(places.negatives(i, config.negative_radius))])
    if len(anchors) == 0:
        raise InputError("no image has both a positive in another traversal and a negative farther than "
                         f"{config.negative_radius} m; check positive_radius, positive_angle and negative_radius")
    model = build_model(config, places, from_init=not resume).to(device)
    if config.freeze_backbone:
        model.backbone.requires_grad_(False)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    run = Run.start(output, config, model, optimizer, resume,
                    sources={"streets": [str(Path(s).resolve()) for s in streets], "images": len(places.paths)})
    if _pools_init_hypercolumns(config):
        run.init_digest(config.init)  # fingerprinted while --init is at hand
    cache = None  # built after the resume checks, which it may take minutes to reach
    if config.freeze_backbone:
        cache = LocalFeatureCache.build(model, places.paths, config.max_side, config.cache_positions, config.seed,
                                        progress=(lambda stage, done, total: progress(stage, done, total, {}))
                                        if progress else None)

    @lru_cache(maxsize=1 + config.positive_candidates + config.negative_candidates)
    def network_input(i: int) -> torch.Tensor:     # a step ranks its images, then trains on some of them
        return load_input(places.paths[i], config.max_side).to(device)

    def describe_images(indices: Sequence[int]) -> torch.Tensor:
        """(B, K D) unwhitened descriptors of training images."""
        if cache is not None:
            return model.netvlad(cache.maps(indices).to(device))
        return torch.cat([model(network_input(i)[None], whiten=False) for i in indices])

    def pick(candidates: np.ndarray, count: int) -> np.ndarray:
        order = torch.randperm(len(candidates), generator=run.generator)[:count].numpy()
        return candidates[order]

    while run.step < config.iterations:
        anchor = int(anchors[int(torch.randint(len(anchors), (1,), generator=run.generator))])
        positives = pick(places.positives(anchor, config.positive_radius, config.positive_angle),
                         config.positive_candidates)
        negatives = pick(places.negatives(anchor, config.negative_radius), config.negative_candidates)
        candidates = [anchor, *positives, *negatives]
        with torch.no_grad():  # the closest positive and the hardest negatives, as the model sees them now
            model.eval()
            found = dict(zip(candidates, describe_images(candidates)))
            best = int(min(positives, key=lambda i: float((found[i] - found[anchor]).norm())))
            hardest = sorted(negatives, key=lambda i: float((found[i] - found[anchor]).norm()))
            hardest = hardest[: config.hardest_negatives]
        model.train()
        chosen = describe_images([anchor, best, *hardest])
        loss = triplet_loss(chosen[0], chosen[1], chosen[2:], config.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step += 1
        value = float(loss.detach())
        run.record({"loss": value})
        if progress:
            progress("train-retrieval", run.step, config.iterations, {"loss": value})
        if run.step % config.checkpoint_every == 0:
            run.save()
    run.save()
    export_weights(model, output.with_suffix(".safetensors"), config, run.provenance())
    return output


def _pools_init_hypercolumns(config: RetrievalConfig) -> bool:
    """Whether the head pools the frozen hypercolumns of ``config.init`` (exported without a backbone)."""
    return bool(config.freeze_backbone and config.source == "hypercolumns" and config.init)


def export_weights(model: RetrievalModel, path: Path, config: RetrievalConfig,
                   provenance: Mapping[str, str] | None = None) -> Path:
    """``netvlad.*`` tensors, plus ``backbone.*`` unless the backbone was frozen on the
    hypercolumn weights ``config.init`` (then the localizer pools its own hypercolumns,
    and the metadata's ``init_digest`` lets it check they are the same weights: the
    ``provenance``'s, or else computed from ``config.init``). The ``provenance``
    (``Run.provenance``) also records the training streets."""
    state = {f"netvlad.{k}": v for k, v in model.netvlad.state_dict().items()}
    provenance = dict(provenance or {})
    metadata = {"backbone": config.backbone, "source": config.source, "recipe": json.dumps(config.to_dict())}
    if "sources" in provenance:
        metadata["sources"] = provenance["sources"]
    if config.source == "hypercolumns":
        metadata["hypercolumn_norm"] = config.hypercolumn_norm
    if _pools_init_hypercolumns(config):
        metadata["init_digest"] = provenance.get("init_digest") or weights_digest(config.init)
    else:
        state |= {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    return save_safetensors(state, path, metadata=metadata)
