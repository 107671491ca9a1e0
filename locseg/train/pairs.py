"""Image pairs with correspondences, ready for a network.

Reads any directory of Cross-Season Correspondence files (the real dataset or a
SynthSeasons street) together with the root its image paths are relative to.
Images are resized so that the longer side is ``max_side`` and ImageNet-normalised;
correspondence points are rescaled to the resized images (COLMAP pixel
convention, so resizing by (sx, sy) maps (u, v) to (sx u, sy v)) and kept only
where they fall inside both images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..io.correspondences import (
    CorrespondencePair,
    iter_correspondence_files,
    read_correspondences,
    read_image_paths,
)
from ..io.queries import condition_of
from ..models.preprocess import (
    DEFAULT_MAX_SIDE,
    load_image,
    normalize_image,
    resize_image,
)


@dataclass
class PairSample:
    """One image pair as network input.

    Attributes:
        image_a, image_b: (3, H, W) ImageNet-normalised images (sizes may differ).
        points_a, points_b: (N, 2) float32 corresponding pixels (COLMAP convention)
            in the resized images.
        name_a, name_b: image paths relative to the image root.
    """

    image_a: torch.Tensor
    image_b: torch.Tensor
    points_a: torch.Tensor
    points_b: torch.Tensor
    name_a: str
    name_b: str

    @property
    def condition(self) -> str:
        """The condition of the second image (``condition_of``)."""
        return condition_of(self.name_b)

    def to(self, device: torch.device | str) -> PairSample:
        """The pair with its images and points on ``device`` (itself when they are there already)."""
        if self.image_a.device == torch.device(device):
            return self
        return PairSample(self.image_a.to(device), self.image_b.to(device), self.points_a.to(device),
                          self.points_b.to(device), self.name_a, self.name_b)


class CorrespondencePairs:
    """The pairs of one or more correspondence directories, loaded on demand.

    Args:
        directory: folder of ``*.mat`` correspondence files, or a list of them.
        images_root: the folder image paths in those files are relative to, or a
            list of them, one per directory.
        max_side: longer side of the network input, pixels.
    """

    def __init__(self, directory: str | Path | Sequence[str | Path], images_root: str | Path | Sequence[str | Path],
                 max_side: int = DEFAULT_MAX_SIDE):
        directories = [directory] if isinstance(directory, (str, Path)) else list(directory)
        roots = [images_root] if isinstance(images_root, (str, Path)) else list(images_root)
        if len(directories) != len(roots):
            raise InputError(f"got {len(directories)} correspondence folders but {len(roots)} image roots")
        self.files: list[Path] = []
        self.roots: list[Path] = []
        self.sources: list[list[str]] = [[str(Path(f).resolve()), str(Path(r).resolve())]
                                         for f, r in zip(directories, roots)]
        """[correspondence folder, image root] pairs, absolute, in the order given."""
        for folder, root in zip(directories, roots):
            files = list(iter_correspondence_files(folder))
            if not files:
                raise InputError(f"{folder} holds no correspondence files (*.mat)")
            if not Path(root).is_dir():
                raise InputError(f"image root {root} is not a directory")
            first = read_correspondences(files[0])
            absent = [name for name in (first.image_i, first.image_j) if not (Path(root) / name).is_file()]
            if absent:  # found now, not at the first step that draws a pair of this folder
                raise InputError(f"image root {root} does not hold {absent[0]!r}, named in {files[0]}; "
                                 "give the folder that the image names in those files are relative to")
            self.files += files
            self.roots += [Path(root)] * len(files)
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.files)

    def pair(self, index: int) -> CorrespondencePair:
        """The raw correspondences of pair ``index``, in original-image pixels."""
        return read_correspondences(self.files[index])

    def condition(self, index: int) -> str:
        """The condition of pair ``index``'s second image (``condition_of``), read without its points."""
        return condition_of(read_image_paths(self.files[index])[1])

    def __getitem__(self, index: int) -> PairSample:
        raw = self.pair(index)
        root = self.roots[index]
        image_a, points_a = self._load(root / raw.image_i, raw.points_i)
        image_b, points_b = self._load(root / raw.image_j, raw.points_j)
        inside = _inside(points_a, image_a) & _inside(points_b, image_b)
        return PairSample(image_a, image_b, points_a[inside], points_b[inside], raw.image_i, raw.image_j)

    def _load(self, path: Path, points) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(path)
        height, width = image.shape[-2:]
        resized, _ = resize_image(image, max_side=self.max_side)
        scale = torch.tensor([resized.shape[-1] / width, resized.shape[-2] / height])
        return normalize_image(resized), torch.as_tensor(points, dtype=torch.float32) * scale


def _inside(points: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    height, width = image.shape[-2:]
    return (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
