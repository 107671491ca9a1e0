"""Retrieval recall on a SynthSeasons street.

Every query is described, as is every reference image; PCA whitening is fitted on
the reference descriptors (as the localizer does) and the queries' nearest
references are ranked by cosine similarity. A retrieved reference is correct when
its camera lies within ``radius`` metres and ``angle`` degrees of heading of the
query's true pose. Recall@k is the percentage of queries with a correct reference
among their first k, per condition and overall.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io.poses import read_poses
from ..io.queries import condition_of
from ..localize.retrieval import augment_references
from ..models.netvlad import SINGLE_SCALE, PCAWhitening, recall_at, top_k
from ..train.retrieval import RetrievalModel, describe, same_place


def retrieval_recall(model: RetrievalModel, street: str | Path, max_side: int = 512, radius: float = 5.0,
                     angle: float = 30.0, ks: tuple[int, ...] = (1, 5, 10), whiten: bool = True,
                     whitening_dim: int = 64, scales: tuple[float, ...] = SINGLE_SCALE,
                     progress: Callable[[str, int, int], None] | None = None,
                     reference_neighbours: int = 0) -> dict[str, dict[int, float]]:
    """``{condition: {k: recall %}}`` with an ``"all"`` entry first.

    ``scales``: queries and references are described at these multiples of
    ``max_side`` (``locseg.train.retrieval.describe``). ``reference_neighbours``: the
    database-side augmentation of the whitened references, as the localizer ranks them
    (``locseg.localize.retrieval.augment_references``)."""
    street = Path(street)
    reference = read_poses(street / "ground_truth" / "reference.txt")
    queries = read_poses(street / "ground_truth" / "queries.txt")
    ref_names, query_names = list(reference), list(queries)
    db = describe(model, [street / "images" / n for n in ref_names], max_side, whiten=False, progress=progress,
                  scales=scales)
    q = describe(model, [street / "images" / n for n in query_names], max_side, whiten=False, progress=progress,
                  scales=scales)
    if whiten:
        # Far fewer axes than references: whitening all N - 1 axes of N samples maps them onto
        # a regular simplex and ranks queries by their noise.
        whitening = PCAWhitening().fit(db, dim=min(whitening_dim, max(1, len(db) // 2)))
        db, q = whitening(db), whitening(q)
    db = augment_references(db, reference_neighbours)
    _, ranked = top_k(q, db, max(ks))
    centres = np.stack([reference[n].center.double().numpy() for n in ref_names])
    forward = np.stack([reference[n].R[2].double().numpy() for n in ref_names])
    positives = [set(np.flatnonzero(same_place(centres, forward, queries[n].center.double().numpy(),
                                               queries[n].R[2].double().numpy(), radius, angle)).tolist())
                 for n in query_names]
    conditions = [condition_of(n) for n in query_names]
    result = {"all": recall_at(ranked.numpy(), positives, ks)}
    for condition in sorted(set(conditions)):
        rows = [i for i, c in enumerate(conditions) if c == condition]
        result[condition] = recall_at(ranked.numpy()[rows], [positives[i] for i in rows], ks)
    return result
