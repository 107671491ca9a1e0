"""The hierarchical localizer: retrieval → sparse-to-dense matching → RANSAC-PnP →
feature-metric refinement.

``localize`` runs the whole pipeline over a query list:

1. reference features (``extract_reference_features``): per reference image, its
   global descriptor and its sparse hypercolumns at the observations of 3D points,
   in the feature store (skipped when already there);
2. per query: the dense hypercolumn map and global descriptor of its network input
   (the image resized to ``max_side`` with its camera rescaled); the ``top_k``
   references by whitened global descriptors; for each, sparse-to-dense matches that
   pass the ratio test, lifted to the original query resolution and paired with
   the references' 3D points; RANSAC-PnP with the query's own camera; the
   hypothesis with the most inliers wins, and (``pnp.refit``) is refitted over the
   matches of every retrieved reference that it reprojects within the threshold (with
   ``matching.refit_ratio``, over the looser set of matches that pass the test at that ratio);
3. feature-metric PnP (``locseg.localize.refine``) refines the winner over at most
   ``refine_points`` of those inliers, evenly spread, on the query's dense map, unless
   ``refine`` is None; a refinement that raises the cost or moves implausibly far keeps
   the (refitted) RANSAC pose, which the log records as ``pnp_pose``;
4. a query without an acceptable pose gets the pose of its best retrieved reference
   and ``"success": false`` in the log.

The per-query log (``locseg.io.localize_log``) is appended as queries finish, and a
rerun with the same log and settings reuses the queries it holds, so an interrupted
run loses at most one query. The results file (every query, in list order) is
written at the end, atomically. A query whose image cannot be read, or whose camera
does not fit its image, fails alone: the log says why and the results leave it out.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..device import AUTO, module_device, resolve_device
from ..errors import InputError, LocsegError
from ..geometry import Camera, Pose
from ..io.localize_log import LogWriter, read_log
from ..io.poses import write_poses
from ..models.hypercolumn import (
    DEFAULT_LAYERS,
    DEFAULT_NORMALIZATION,
    Hypercolumns,
    check_normalization,
)
from ..models.load import load_hypercolumns, weights_digest
from ..models.netvlad import SINGLE_SCALE, check_scales, pool_scales
from ..models.preprocess import load_image, prepare_image
from ..models.weights import bundled_weights
from ..models.weights_info import bundled_name_of
from ..store import FeatureStore, model_id
from .matching import MatchingConfig, fit_projection, match_sparse_to_dense
from .pnp import PnPConfig, estimate_pose, refit_pose
from .reference import ReferenceMap
from .refine import RefineConfig, refine_pose
from .retrieval import (
    GlobalDescriber,
    fit_whitening,
    load_global_describer,
    rank_references,
    reference_index,
)

Progress = Callable[[str, int, int], None]

DEFAULT_WEIGHTS = "synthseasons-slim-dmcgn-v8"
DEFAULT_RETRIEVAL_WEIGHTS = "synthseasons-slim-vlad-v5"
OBSERVATION_CELL = 4.0   # pixels: one reference observation per cell of the 1/4 grid
PROJECTION_SAMPLE_STEP = 8   # every 8th reference descriptor fits the coarse-matching subspace
# Below this median share of map points kept by the ratio test, the ratio is likely too strict for the
# hypercolumns. Coarse-to-fine matching at ratio 0.9, on the test street: v8 keeps 16 %, v10 1.6 %
# (localizing 39 % of queries at (0.25 m, 2°), 93 % at ratio 1), and v11 on street 5 none
# (benchmarks/RESULTS.md, "The ratio test and sharper hypercolumns").
FEW_KEPT = 0.05

# The localizer's defaults beyond MatchingConfig's own: RANSAC on the matches at ratio 0.9, the winner refitted over
# those at 0.95, among the 10 best-retrieved references. Street 5 chose them over 5 references and no looser refit, and
# both test streets confirmed it (benchmarks/RESULTS.md, "Ten references and a guided refit").
DEFAULT_REFIT_RATIO = 0.95
# Each reference's whitened global descriptor averaged with its 2 most similar references' before ranking: street 5
# chose it, and both test streets confirmed it (benchmarks/RESULTS.md, "Database-side augmentation").
DEFAULT_REFERENCE_NEIGHBOURS = 2


def default_ratio(weights: str, method: str = MatchingConfig.method,
                  ratio_test: str = MatchingConfig.ratio_test) -> float:
    """The ratio test that suits hypercolumn ``weights`` (a name, path or URL): for coarse-to-fine
    matching with the similarity form, the ``match_ratio`` of the bundled entry whose file they
    are, found by digest (1 for v10 and v11, chosen on a validation street with that method and
    form); otherwise ``MatchingConfig``'s default, 0.9, which street 5 also chose for the
    distance form over v8 and v11 alike (benchmarks/RESULTS.md, "The ratio test on distances").
    The CLI and benchmarks use it when no ratio is given (``matching_config``); a
    ``LocalizeConfig`` built in code keeps the ratio its ``MatchingConfig`` says.

    Raises:
        LocsegError: ``weights`` cannot be resolved (``locseg.models.weights.resolve_weights``).
    """
    if method != "coarse-to-fine" or ratio_test != "similarity":
        return MatchingConfig.ratio
    name = bundled_name_of(weights_digest(weights))
    ratio = bundled_weights(name).match_ratio if name else None
    return MatchingConfig.ratio if ratio is None else ratio


def matching_config(weights: str, method: str = MatchingConfig.method, ratio: float | None = None,
                    ratio_test: str = MatchingConfig.ratio_test,
                    refit_ratio: float | None = DEFAULT_REFIT_RATIO) -> MatchingConfig:
    """The matching settings of a command line: ``ratio``, or when it is None the one that suits
    ``weights`` (``default_ratio``); ``refit_ratio`` applies where it is looser than that."""
    return MatchingConfig(method=method, ratio=default_ratio(weights, method, ratio_test) if ratio is None else ratio,
                          ratio_test=ratio_test, refit_ratio=refit_ratio)


# Settings added after logs were first written, by their path in ``LocalizeConfig.to_dict()``, with the value that
# behaves as locseg did before them: at that value they stay out of the digest, so older logs stay reusable.
_SETTINGS_ADDED = {("retrieval_scales",): list(SINGLE_SCALE), ("hypercolumn_scales",): list(SINGLE_SCALE),
                   ("reference_neighbours",): 0, ("retrieval_hypercolumns",): None,
                   ("matching", "ratio_test"): "similarity", ("matching", "refit_ratio"): None}


@dataclass(frozen=True)
class LocalizeConfig:
    """Everything that determines a localization run (recorded in the store and log).

    Its default ``matching`` refits over the matches at ``DEFAULT_REFIT_RATIO``, which a
    plain ``MatchingConfig()`` does not: build one with ``matching_config`` to keep it.
    """

    weights: str = DEFAULT_WEIGHTS
    retrieval_weights: str = DEFAULT_RETRIEVAL_WEIGHTS
    # the hypercolumn weights retrieval runs on, when they are not ``weights``: one more network pass per image
    retrieval_hypercolumns: str | None = None
    backbone: str = "vgg16-slim"
    layers: tuple[int, ...] = DEFAULT_LAYERS
    hypercolumn_norm: str = DEFAULT_NORMALIZATION   # "levels"; "joint" is S2DHM's (locseg.models.hypercolumn)
    max_side: int = 512
    top_k: int = 10                 # retrieved references matched per query
    max_points: int = 2048          # reference observations matched per image (0: all)
    whitening_dim: int = 64
    reference_neighbours: int = DEFAULT_REFERENCE_NEIGHBOURS   # augmentation of the ranking (localize.retrieval)
    retrieval_scales: tuple[float, ...] = SINGLE_SCALE   # multiples of max_side pooled into a global descriptor
    hypercolumn_scales: tuple[float, ...] = SINGLE_SCALE  # of the maps matched and refined (dense_at_scales)
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(refit_ratio=DEFAULT_REFIT_RATIO))
    pnp: PnPConfig = field(default_factory=PnPConfig)    # max_error in network-input pixels
    refine: RefineConfig | None = field(default_factory=RefineConfig)   # None: the PnP poses as they are
    refine_points: int = 512        # inliers aligned by refinement, evenly spread over them (0: all)

    def __post_init__(self) -> None:
        check_normalization(self.hypercolumn_norm)
        object.__setattr__(self, "retrieval_scales", check_scales(self.retrieval_scales, "retrieval scales"))
        # sorted: the averaged map does not depend on the order, so neither do its store id and digest
        object.__setattr__(self, "hypercolumn_scales",
                           tuple(sorted(check_scales(self.hypercolumn_scales, "hypercolumn scales"))))
        if self.reference_neighbours < 0:
            raise InputError(f"reference_neighbours must be >= 0, got {self.reference_neighbours}")
        if self.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {self.top_k}")
        if self.max_points < 0:
            raise InputError(f"max_points must be >= 0 (0: all), got {self.max_points}")
        if self.refine_points < 0:
            raise InputError(f"refine_points must be >= 0 (0: all), got {self.refine_points}")
        if self.refine is not None and 0 < self.refine_points < self.refine.min_points:
            raise InputError(f"refine_points {self.refine_points} is below the refinement's min_points "
                             f"{self.refine.min_points}: no query would be refined (0 means all points)")
        if self.matching.refit_ratio is not None and not self.pnp.refit:   # nothing to refit over the looser
            object.__setattr__(self, "matching", replace(self.matching, refit_ratio=None))   # matches: one digest
        if self.max_side < 32:
            raise InputError(f"max_side must be at least 32, got {self.max_side}")
        if self.retrieval_hypercolumns == "":
            raise InputError("retrieval_hypercolumns must name hypercolumn weights (a bundled name, a file or a URL), "
                             "or be None to retrieve with the matching weights; got an empty string")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        """Short hash of the settings that change a query's result. Settings added later
        (``_SETTINGS_ADDED``) count only where they differ from how locseg behaved before them,
        so older logs stay reusable."""
        settings = self.to_dict()
        for (*parents, key), before in _SETTINGS_ADDED.items():
            owner = settings
            for parent in parents:
                owner = owner[parent]
            if owner[key] == before:
                del owner[key]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def multiscale(self) -> bool:
        """Whether global descriptors pool several scales. Single-scale settings keep the
        digest, store ids and store configs they had before ``retrieval_scales`` existed."""
        return self.retrieval_scales != SINGLE_SCALE

    @property
    def pooled_weights(self) -> str:
        """The hypercolumn weights retrieval runs on: ``retrieval_hypercolumns``, else ``weights``."""
        return self.weights if self.retrieval_hypercolumns is None else self.retrieval_hypercolumns


@dataclass
class Models:
    """The networks of a run and the store ids of what they produce.

    ``retrieval_hypercolumns`` is the network retrieval runs on when it is not the one
    that matching and refinement use (``LocalizeConfig.retrieval_hypercolumns``); None
    when both are ``hypercolumns``.
    """

    hypercolumns: Hypercolumns
    describer: GlobalDescriber
    sparse_id: str
    global_id: str
    retrieval_scales: tuple[float, ...] = SINGLE_SCALE
    hypercolumn_scales: tuple[float, ...] = SINGLE_SCALE
    retrieval_hypercolumns: Hypercolumns | None = None

    @classmethod
    def load(cls, config: LocalizeConfig, device: str | torch.device = AUTO) -> Models:
        """The networks of ``config`` on ``device`` (``locseg.device``: a GPU when present)."""
        device = resolve_device(device)
        hypercolumns = load_hypercolumns(config.backbone, config.weights, config.layers,
                                         normalization=config.hypercolumn_norm).eval()
        # each digest once: a weight file given by path is hashed whole
        matching_digest, pooled_digest = weights_digest(config.weights), weights_digest(config.pooled_weights)
        retrieval_hypercolumns = None    # a second network, only where its weights differ from the matching ones
        if pooled_digest != matching_digest:
            retrieval_hypercolumns = load_hypercolumns(config.backbone, config.retrieval_hypercolumns, config.layers,
                                                       normalization=config.hypercolumn_norm).eval().to(device)
        pooled = hypercolumns if retrieval_hypercolumns is None else retrieval_hypercolumns
        describer = load_global_describer(config.retrieval_weights, pooled.backbone, pooled_digest).eval()
        if describer.source == "hypercolumns" and describer.normalization != config.hypercolumn_norm:
            raise InputError(f"retrieval weights {config.retrieval_weights!r} were trained on hypercolumns normalised "
                             f"{describer.normalization!r}, not {config.hypercolumn_norm!r}; use retrieval weights "
                             f"trained on {config.hypercolumn_norm!r} ones (synthseasons-slim-vlad-v3 pools v3's 'joint' ones, "
                             "-v4 and -v5 'levels' ones), or set the normalisation to match")
        hypercolumns.to(device)
        describer.to(device)
        preprocessing = {"max_side": config.max_side}
        sparse_settings = {} if config.hypercolumn_scales == SINGLE_SCALE else {"scales": config.hypercolumn_scales}
        sparse_id = model_id(f"hypercolumns-{config.backbone}", matching_digest,
                             layers="-".join(map(str, config.layers)), norm=config.hypercolumn_norm,
                             max_points=config.max_points, **sparse_settings,
                             **preprocessing)
        if describer.source == "hypercolumns":   # it pools the dense map, normalised as configured
            preprocessing["norm"] = config.hypercolumn_norm
        if config.multiscale:
            preprocessing["scales"] = config.retrieval_scales
        global_id = model_id(f"{describer.model_id_base}-{config.backbone}", pooled_digest, **preprocessing)
        return cls(hypercolumns, describer, sparse_id, global_id, config.retrieval_scales, config.hypercolumn_scales,
                   retrieval_hypercolumns)

    @torch.inference_mode()
    def describe(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) network input → dense hypercolumns (C, H/4, W/4) at ``hypercolumn_scales``
        (``Hypercolumns.dense_at_scales``), which matching and refinement use, and global
        descriptor (D,), both on the CPU whatever device the networks run on. Retrieval pools
        the plain map, which its heads were trained on.

        The global descriptor pools ``retrieval_scales`` (``locseg.models.netvlad``); scale 1
        reuses the dense map, and every other scale costs a network pass at its size. Those
        passes resize the network input (resizing commutes with the per-channel normalisation),
        where ``locseg.train.retrieval.describe`` resizes each image file once, so the two may
        differ by the second resampling. With ``retrieval_hypercolumns``, retrieval pools that
        network's maps and matching this one's, each pass made once."""
        image = image.to(module_device(self.hypercolumns))[None]
        passes = {1.0: self.hypercolumns.dense(image)}     # dense maps by scale, one network pass each
        pooled, pooled_passes = self.hypercolumns, passes
        if self.retrieval_hypercolumns is not None:
            pooled, pooled_passes = self.retrieval_hypercolumns, {}
        descriptors = []
        for scale in self.retrieval_scales:
            if scale == 1.0:
                if 1.0 not in pooled_passes:
                    pooled_passes[1.0] = pooled.dense(image)
                descriptors.append(self.describer(image, pooled_passes[1.0]))
                continue
            resized, pooled_passes[scale] = pooled.resized_dense(image, scale)
            descriptors.append(self.describer(resized, pooled_passes[scale]))
        matched = self.hypercolumns.dense_at_scales(image, self.hypercolumn_scales, computed=passes)
        return matched[0].cpu(), pool_scales(torch.stack(descriptors)).cpu()


@dataclass(frozen=True)
class QueryResult:
    """The outcome for one query (also its log record, via ``record``)."""

    name: str
    pose: Pose
    success: bool
    reference: str
    retrieved: list[str]
    matches: list[int]
    inliers: list[int]
    timing: dict[str, float]
    failure: str | None = None
    pnp_pose: Pose | None = None
    refinement: dict | None = None
    map_points: list[int] = field(default_factory=list)   # per reference, the map points matched for

    def record(self, config_digest: str) -> dict:
        record = {
            "name": self.name, "success": self.success, "failure": self.failure,
            "pose": _pose_list(self.pose),
            "reference": self.reference, "retrieved": self.retrieved, "matches": self.matches,
            "inliers": self.inliers, "map_points": self.map_points,
            "timing": {k: round(v, 4) for k, v in self.timing.items()}, "config": config_digest,
        }
        if self.pnp_pose is not None:
            record["pnp_pose"] = _pose_list(self.pnp_pose)
        if self.refinement is not None:
            record["refinement"] = self.refinement
        return record


def _pose_list(pose: Pose) -> list[float]:
    """``[qw, qx, qy, qz, tx, ty, tz]`` (full precision: a rerun reads poses back from the log)."""
    return pose.q.tolist() + pose.t.tolist()


def _pose_of(record: dict) -> Pose:
    """The pose of a log record; results are always written from these, so that a
    rerun that reuses the log writes the same bytes."""
    values = np.array(record["pose"], dtype=np.float64)
    return Pose.from_qt(values[:4], values[4:])


def extract_reference_features(reference: ReferenceMap, models: Models, store: FeatureStore,
                               config: LocalizeConfig, progress: Progress | None = None) -> int:
    """Put every reference image's global and sparse features into the store; the number computed.

    Each model id records the settings its features depend on, and nothing else, so
    runs that differ in retrieval depth, matching or PnP share them.
    """
    sparse_config = {"kind": "sparse hypercolumns", "backbone": config.backbone, "weights": config.weights,
                     "layers": list(config.layers), "max_side": config.max_side, "max_points": config.max_points,
                     "observation_cell": OBSERVATION_CELL}
    if config.hypercolumn_scales != SINGLE_SCALE:
        sparse_config["scales"] = list(config.hypercolumn_scales)
    store.set_config(models.sparse_id, sparse_config)
    global_config = {"kind": "global descriptors", "backbone": config.backbone, "weights": config.pooled_weights,
                     "retrieval_weights": config.retrieval_weights, "max_side": config.max_side}
    if config.multiscale:
        global_config["scales"] = list(config.retrieval_scales)
    store.set_config(models.global_id, global_config)
    todo = [n for n in reference.names
            if not (store.has(models.sparse_id, "sparse", n) and store.has(models.global_id, "global", n))]
    for done, name in enumerate(todo):
        image, _ = prepare_image(load_image(reference.image_path(name)), max_side=config.max_side)
        dense, descriptor = models.describe(image)
        observations = reference.observations(name, config.max_points, OBSERVATION_CELL)
        scale = _input_scale(reference.cameras[name], image)
        keypoints = torch.from_numpy(observations.keypoints).to(dense) * scale
        with torch.inference_mode():
            sparse = models.hypercolumns.sample(dense[None], keypoints[None], (image.shape[-1], image.shape[-2]))[0]
        store.put_sparse(models.sparse_id, name, observations.keypoints.astype(np.float32),
                         observations.point3D_ids, sparse.numpy().astype(np.float16))
        store.put_global(models.global_id, name, descriptor.numpy().astype(np.float32))
        if progress:
            progress("reference features", done + 1, len(todo))
    return len(todo)


def _input_scale(camera: Camera, image: torch.Tensor) -> torch.Tensor:
    """(2,) factors from original-image pixels to network-input pixels."""
    width, height = image.shape[-1], image.shape[-2]
    return torch.tensor([width, height], dtype=torch.float32) / camera.size.float()


@dataclass(frozen=True)
class Hypothesis:
    """The winning reference's RANSAC pose (refitted over every retrieved reference's matches
    when ``pnp.refit``) with its inlier 3D points (N, 3) and their reference descriptors (N, C);
    after a refit the inliers come from several references, and a 3D point seen by several
    appears once per reference."""

    reference: str
    pose: Pose
    points3D: np.ndarray
    descriptors: np.ndarray


class Localizer:
    """Localizes queries against a reference map whose features are in a store."""

    def __init__(self, reference: ReferenceMap, models: Models, store: FeatureStore, config: LocalizeConfig):
        self.reference, self.models, self.store, self.config = reference, models, store, config
        names = reference.names
        self.global_descriptors = torch.from_numpy(np.stack(
            [store.get_global(models.global_id, n) for n in names])).double()
        self.whitening = fit_whitening(self.global_descriptors, config.whitening_dim)
        self.reference_index = reference_index(self.global_descriptors, self.whitening, config.reference_neighbours)
        self.projection = None
        self._projected: dict[str, torch.Tensor] = {}   # reference name -> (N, d) projected descriptors
        if config.matching.method == "coarse-to-fine":
            sample = np.concatenate([store.get_sparse(models.sparse_id, n).descriptors[::PROJECTION_SAMPLE_STEP]
                                     for n in names])
            self.projection = fit_projection(torch.from_numpy(sample), config.matching.projection_dim)

    def _projected_descriptors(self, name: str, descriptors: np.ndarray) -> torch.Tensor:
        """(N, d) a reference's descriptors in the coarse-matching subspace, computed once."""
        if name not in self._projected:
            self._projected[name] = torch.from_numpy(descriptors).float() @ self.projection
        return self._projected[name]

    def localize(self, name: str, image: torch.Tensor, camera: Camera) -> QueryResult:
        """Localize one query: its (3, H, W) float image in [0, 1] and its camera at that size."""
        search = self.search(image, camera)
        timing = dict(search.timing)
        if search.best is None:
            timing["total"] = sum(timing.values())
            fallback = search.retrieved[0]
            return QueryResult(name, self.reference.poses[fallback], False, fallback, search.retrieved,
                               search.matches, search.inliers, timing,
                               failure=f"no reference gave {self.config.pnp.min_inliers} PnP inliers "
                                       f"(most: {max(search.inliers, default=0)})", map_points=search.map_points)
        pose, refinement = search.best.pose, None
        if self.config.refine is not None:
            clock = time.perf_counter()
            pose, refinement = refine_hypothesis(search, self.config.refine, self.config.refine_points)
            timing["refine"] = time.perf_counter() - clock
        timing["total"] = sum(timing.values())
        return QueryResult(name, pose, True, search.best.reference, search.retrieved, search.matches,
                           search.inliers, timing, pnp_pose=search.best.pose, refinement=refinement,
                           map_points=search.map_points)

    def search(self, image: torch.Tensor, camera: Camera) -> Search:
        """Everything before refinement: features, retrieval, matching and PnP per reference."""
        timing: dict[str, float] = {}
        clock = time.perf_counter()
        net_input, net_camera = prepare_image(image, camera, max_side=self.config.max_side)
        dense, descriptor = self.models.describe(net_input)
        timing["features"] = time.perf_counter() - clock

        clock = time.perf_counter()
        ranking = rank_references(descriptor[None].double(), self.global_descriptors, self.config.top_k,
                                  self.whitening, index=self.reference_index)
        retrieved = [self.reference.names[i] for i in ranking.indices[0].tolist()]
        timing["retrieval"] = time.perf_counter() - clock

        scale = 1.0 / _input_scale(camera, net_input).double()
        # the PnP thresholds are in network-input pixels, like the matches' grid
        pnp = replace(self.config.pnp, max_error=self.config.pnp.max_error * float(scale.max()),
                      refit_scale=self.config.pnp.refit_scale * float(scale.max()))
        clock = time.perf_counter()
        sparse = [self.store.get_sparse(self.models.sparse_id, ref_name) for ref_name in retrieved]
        projected = None if self.projection is None else torch.cat(
            [self._projected_descriptors(n, s.descriptors) for n, s in zip(retrieved, sparse)])
        found = match_sparse_to_dense(torch.from_numpy(np.concatenate([s.descriptors for s in sparse])), dense,
                                      self.config.matching, self.projection, projected)   # all references at once
        timing["matching"] = time.perf_counter() - clock
        timing["pnp"] = 0.0
        best: Hypothesis | None = None
        matches, inliers, pooled = [], [], []
        start = 0
        for ref_name, ref in zip(retrieved, sparse):
            ref_found = found[start:start + len(ref.point3D_ids)]
            start += len(ref.point3D_ids)
            keep = ref_found.keep.numpy()
            points2D = (ref_found.uv[ref_found.keep].double() * scale).numpy()
            points3D = self.reference.points(ref.point3D_ids[keep])
            descriptors = ref.descriptors[keep]
            if self.config.matching.refit_ratio is None:
                pooled.append((points2D, points3D, descriptors))
            else:   # the refit may draw on the looser set
                loose = ref_found.loose.numpy()
                pooled.append(((ref_found.uv[ref_found.loose].double() * scale).numpy(),
                               self.reference.points(ref.point3D_ids[loose]), ref.descriptors[loose]))

            clock = time.perf_counter()
            result = estimate_pose(points2D, points3D, camera, pnp)
            timing["pnp"] += time.perf_counter() - clock
            matches.append(int(keep.sum()))
            inliers.append(result.num_inliers)
            if result.pose is not None and (best is None or result.num_inliers > len(best.points3D)):
                best = Hypothesis(ref_name, result.pose, points3D[result.inliers], descriptors[result.inliers])
        if best is not None and pnp.refit:
            clock = time.perf_counter()
            best = _refit_over_references(best, pooled, camera, pnp)
            timing["pnp"] += time.perf_counter() - clock
        return Search(retrieved, matches, inliers, best, dense, net_camera, timing,
                      [len(ref.point3D_ids) for ref in sparse])


def _refit_over_references(best: Hypothesis, pooled: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                           camera: Camera, pnp: PnPConfig) -> Hypothesis:
    """``best`` refitted over the matches of every retrieved reference (``refit_pose``); its
    inliers, with their reference descriptors, become the points that refinement aligns."""
    points2D, points3D, descriptors = (np.concatenate(parts) for parts in zip(*pooled))
    result = refit_pose(points2D, points3D, camera, best.pose, pnp)
    if result.pose is best.pose:   # the refit found too little support: keep RANSAC's inliers
        return best
    return Hypothesis(best.reference, result.pose, points3D[result.inliers], descriptors[result.inliers])


@dataclass(frozen=True)
class Search:
    """What ``Localizer.search`` found for one query.

    Attributes:
        retrieved, matches, inliers: per retrieved reference, in retrieval order.
        best: the hypothesis with the most inliers (refitted when ``pnp.refit``), None if
            no reference gave a pose.
        dense: (C, h, w) the query's dense hypercolumns; net_camera: its camera.
        timing: seconds per stage.
        map_points: per retrieved reference, the map points (observations of 3D points) matched
            for; ``matches`` of them passed the ratio test.
    """

    retrieved: list[str]
    matches: list[int]
    inliers: list[int]
    best: Hypothesis | None
    dense: torch.Tensor
    net_camera: Camera
    timing: dict[str, float]
    map_points: list[int]


def refine_hypothesis(search: Search, config: RefineConfig, max_points: int = 0) -> tuple[Pose, dict]:
    """Feature-metric refinement of ``search.best`` over its inliers, at most ``max_points``
    of them evenly spread over the list (0: all); the pose and a log summary."""
    best = search.best
    if best is None:
        raise InputError("nothing to refine: no reference gave a PnP pose")
    used = slice(None)
    if 0 < max_points < len(best.points3D):
        used = np.linspace(0, len(best.points3D) - 1, max_points).round().astype(np.int64)
    result = refine_pose(best.pose.double(), search.net_camera.double(), torch.from_numpy(best.points3D[used]),
                         torch.from_numpy(best.descriptors[used].astype(np.float64)), search.dense,
                         config=config)
    summary = {
        "cost_initial": float(result.cost_initial), "cost_final": float(result.cost_final),
        "iterations": int(result.iterations), "fellback": bool(result.fellback), "reason": result.reason,
        "points": int(result.num_points),
        "covariance": [[round(float(v), 12) for v in row] for row in result.covariance.tolist()],
    }
    return result.pose, summary


@dataclass(frozen=True)
class LocalizeSummary:
    """What a ``localize`` call did."""

    results: Path
    queries: int
    localized: int
    reused: int
    unusable: list[str]          # queries whose image or camera could not be used (no result line)
    reference_features_computed: int
    median_seconds_per_query: float
    median_kept_fraction: float | None = None   # per reference, over the logged queries that record it

    def ratio_test_starved(self, ratio: float) -> bool:
        """True when the ratio test, below 1, kept under ``FEW_KEPT`` of the map points tried: it
        may be too strict for the hypercolumns, and a ratio nearer 1 may keep the matches PnP needs."""
        return ratio < 1 and self.median_kept_fraction is not None and self.median_kept_fraction < FEW_KEPT


def localize(reference: ReferenceMap, queries: Sequence[tuple[str, Camera]], query_root: str | Path,
             output: str | Path, store_path: str | Path, log_path: str | Path | None = None,
             config: LocalizeConfig = LocalizeConfig(), progress: Progress | None = None,
             device: str | torch.device = AUTO) -> LocalizeSummary:
    """Localize every query of a list and write ``output`` (``name qw qx qy qz tx ty tz`` lines).

    Args:
        reference: the map (its 3D points must be observed; see ``locseg.localize.triangulate``).
        queries: ``[(name, camera at the original image size)]`` as ``read_query_list`` gives.
        query_root: folder the query names are relative to.
        store_path: the feature store of this map.
        log_path: the per-query log; default ``output`` with the suffix ``.log.jsonl``.
        device: where the networks run (``locseg.device``); results do not depend on it
            beyond floating-point rounding, so the store and log are shared across devices.
    """
    if not reference.has_points():
        raise InputError("the reference map has no 3D points; triangulate it first "
                         "(locseg build-reference)")
    if not queries:
        raise InputError("the query list is empty")
    output, query_root = Path(output), Path(query_root)
    log_path = Path(log_path) if log_path else output.with_suffix(".log.jsonl")
    digest = config.digest()
    previous = {n: r for n, r in read_log(log_path).items() if r.get("config") == digest and r.get("pose")} \
        if log_path.is_file() else {}
    unusable: list[str] = []

    models = Models.load(config, device)
    with FeatureStore(store_path, mode="a") as store:
        computed = extract_reference_features(reference, models, store, config, progress)
        store.flush()
        localizer = Localizer(reference, models, store, config)
        poses, seconds, kept = {}, [], []
        with LogWriter(log_path) as log:
            for done, (name, camera) in enumerate(queries):
                if name in previous:
                    poses[name] = _pose_of(previous[name])
                    kept.extend(kept_fractions(previous[name]))
                else:
                    try:
                        image = load_image(query_root / name)
                        _check_camera(name, camera, image)
                    except LocsegError as err:  # this query fails; the others go on
                        log.write({"name": name, "success": False, "failure": f"unusable input: {err}",
                                   "pose": None, "config": digest})
                        unusable.append(name)
                    else:
                        result = localizer.localize(name, image, camera)
                        record = result.record(digest)
                        log.write(record)
                        poses[name] = _pose_of(record)
                        seconds.append(result.timing["total"])
                        kept.extend(kept_fractions(record))
                if progress:
                    progress("localize", done + 1, len(queries))
    write_poses(output, poses)
    reused = sum(1 for n, _ in queries if n in previous)
    return LocalizeSummary(output, len(queries), len(queries) - reused - len(unusable), reused, unusable, computed,
                           float(np.median(seconds)) if seconds else 0.0,
                           float(np.median(kept)) if kept else None)


def kept_fractions(record: dict) -> list[float]:
    """Per retrieved reference of a log record, the share of its map points whose match passed the
    ratio test; none for records written before the log kept ``map_points``."""
    return [m / n for m, n in zip(record.get("matches", []), record.get("map_points", [])) if n]


def _check_camera(name: str, camera: Camera, image: torch.Tensor) -> None:
    width, height = image.shape[-1], image.shape[-2]
    if camera.pixel_size() != (width, height):
        raise InputError(f"query {name}: the query list gives a {camera.size.tolist()} camera but the "
                         f"image is {width}x{height}")
