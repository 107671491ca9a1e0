"""VGG-16 backbones (full and slim) with torchvision's ``features`` layout, a
backbone registry, and loading of torchvision ImageNet weights.

Layout (``features``, identical to ``torchvision.models.vgg16().features``):

=====  =======  ======  =====  =======  ======  =====  =======  ======
index  layer    stride  index  layer    stride  index  layer    stride
=====  =======  ======  =====  =======  ======  =====  =======  ======
0      conv1_1  1       11     relu3_1  4       22     relu4_3  8
1      relu1_1  1       12     conv3_2  4       23     pool4    16
2      conv1_2  1       13     relu3_2  4       24     conv5_1  16
3      relu1_2  1       14     conv3_3  4       25     relu5_1  16
4      pool1    2       15     relu3_3  4       26     conv5_2  16
5      conv2_1  2       16     pool3    8       27     relu5_2  16
6      relu2_1  2       17     conv4_1  8       28     conv5_3  16
7      conv2_2  2       18     relu4_1  8       29     relu5_3  16
8      relu2_2  2       19     conv4_2  8       30     pool5    32
9      pool2    4       20     relu4_2  8
10     conv3_1  4       21     conv4_3  8
=====  =======  ======  =====  =======  ======  =====  =======  ======

Convolutions are 3x3 with padding 1 (they keep the size), max-pools are 2x2 with
stride 2 and floor rounding, so the map *leaving* a layer of stride ``s`` has
``floor(H / s) x floor(W / s)`` cells. Cell ``(x, y)`` of such a map covers the
input pixels ``[s x, s (x + 1)) x [s y, s (y + 1))``: its centre is at
``(s (x + 0.5), s (y + 0.5))`` in COLMAP pixel coordinates (see
``locseg.geometry.camera``).

"Activations entering index i" is the input of ``features[i]``, i.e. the output
of ``features[i - 1]``; index 0 is the image itself and index 31 the output of
pool5. So entering 14 is the relu3_2 output, entering 30 is relu5_3's output and
entering 29 is conv5_3 before its ReLU.

Inputs are ImageNet-normalised RGB images (``locseg.models.preprocess``).

State dicts: ``VGG16.state_dict()`` has exactly torchvision's ``features.*``
keys (``features.0.weight``, ``features.0.bias``, ..., ``features.28.bias``);
the slim variant has the same keys with fewer channels. The ReLUs are not
in-place, so that an activation handed out by ``VGG16.activations`` is never
overwritten by a later layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import FormatError, InputError, ShapeError, lookup

VGG16_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
"""Output channels of the convolutions of each of the five blocks of VGG-16."""
SLIM_WIDTH_FACTOR = 0.25
"""Default width factor of ``vgg16-slim``: blocks of 16, 32, 64, 128, 128 channels."""
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of ``features``.

    Attributes:
        index: its position in ``features``.
        name: ``conv3_2``, ``relu3_2``, ``pool3``...
        kind: ``"conv"``, ``"relu"`` or ``"pool"``.
        channels: channels of its output.
        stride: stride of its output w.r.t. the input image (1, 2, 4, 8, 16, 32).
    """

    index: int
    name: str
    kind: str
    channels: int
    stride: int


def vgg16_layout(widths: Iterable[int] = VGG16_WIDTHS) -> tuple[LayerSpec, ...]:
    """The 31 layers of a VGG-16 ``features`` stack whose blocks have ``widths`` channels."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != 5 or min(widths) < 1:
        raise InputError(f"VGG-16 needs 5 positive block widths, got {widths}")
    layers: list[LayerSpec] = []
    stride = 1
    for block, (width, convs) in enumerate(zip(widths, _CONVS_PER_BLOCK), start=1):
        for conv in range(1, convs + 1):
            for kind in ("conv", "relu"):
                layers.append(LayerSpec(len(layers), f"{kind}{block}_{conv}", kind, width, stride))
        stride *= 2
        layers.append(LayerSpec(len(layers), f"pool{block}", "pool", width, stride))
    return tuple(layers)


def slim_widths(width_factor: float = SLIM_WIDTH_FACTOR) -> tuple[int, ...]:
    """VGG-16's block widths times ``width_factor``, rounded, at least 1."""
    if not width_factor > 0:
        raise InputError(f"width_factor must be positive, got {width_factor}")
    return tuple(max(1, round(w * width_factor)) for w in VGG16_WIDTHS)


class VGG16(nn.Module):
    """The ``features`` part of VGG-16, with any block widths.

    Args:
        widths: output channels of the five blocks; ``VGG16_WIDTHS`` is VGG-16.
        name: the registry name this model was built under (recorded in ``name``).

    Example:
        >>> model = VGG16()
        >>> relu3_2, pool4 = model.activations(torch.zeros(1, 3, 64, 48), [14, 24])
        >>> relu3_2.shape, pool4.shape
        (torch.Size([1, 256, 16, 12]), torch.Size([1, 512, 4, 3]))
    """

    in_channels = 3

    def __init__(self, widths: Iterable[int] = VGG16_WIDTHS, name: str = "vgg16"):
        super().__init__()
        self.layout = vgg16_layout(widths)
        self.widths = tuple(int(w) for w in widths)
        self.name = name
        self.features = nn.Sequential(*self._make_layers())

    def _make_layers(self) -> list[nn.Module]:
        modules: list[nn.Module] = []
        channels = self.in_channels
        for layer in self.layout:
            if layer.kind == "conv":
                modules.append(nn.Conv2d(channels, layer.channels, kernel_size=3, padding=1))
                channels = layer.channels
            elif layer.kind == "relu":
                modules.append(nn.ReLU(inplace=False))
            else:
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        return modules

    @property
    def num_layers(self) -> int:
        """31: entering indices run from 0 (the image) to 31 (the pool5 output)."""
        return len(self.layout)

    def _check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= self.num_layers:
            raise InputError(f"layer index must be an int in [0, {self.num_layers}] (the input of "
                             f"features[index]; {self.num_layers} = the output of the last layer), "
                             f"got {index!r}")
        return index

    def channels_entering(self, index: int) -> int:
        """Channels of the activations entering ``features[index]``."""
        index = self._check_index(index)
        return self.in_channels if index == 0 else self.layout[index - 1].channels

    def stride_entering(self, index: int) -> int:
        """Stride (input pixels per cell) of the activations entering ``features[index]``."""
        index = self._check_index(index)
        return 1 if index == 0 else self.layout[index - 1].stride

    def describe_entering(self, index: int) -> str:
        """``"relu3_2 output"`` for 14, ``"input"`` for 0."""
        index = self._check_index(index)
        return "input" if index == 0 else f"{self.layout[index - 1].name} output"

    def activations(self, images: torch.Tensor, indices: Iterable[int]) -> list[torch.Tensor]:
        """The activations entering each of ``features[i]``, in one forward pass
        that stops at the last index asked for.

        Args:
            images: (B, 3, H, W) ImageNet-normalised RGB; H and W at least the
                stride of the deepest index asked for.
            indices: entering indices in [0, 31], any order, repeats allowed.
        Returns:
            one (B, C_i, floor(H / s_i), floor(W / s_i)) tensor per index, in the
            order of ``indices``, with ``C_i = channels_entering(i)`` and
            ``s_i = stride_entering(i)``.
        Raises:
            InputError: an index out of range or no index. ShapeError: bad images.
        """
        indices = [self._check_index(i) for i in indices]
        if not indices:
            raise InputError("activations needs at least one layer index")
        last = max(indices)
        self._check_images(images, self.stride_entering(last))
        wanted, found = set(indices), {}
        x = images
        for index in range(last + 1):
            if index in wanted:
                found[index] = x
            if index < last:
                x = self.features[index](x)
        return [found[i] for i in indices]

    def conv5_3(self, images: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """The conv5_3 map that NetVLAD pools.

        NetVLAD (Arandjelovic et al., and the Pitts30k weights of pytorch-NetVlad
        that S2DHM uses) crops VGG-16 at conv5_3 *before* its ReLU, i.e. the
        activations entering index 29; ``relu=True`` gives the ReLU's output
        (entering index 30) instead.

        Args:
            images: (B, 3, H, W) ImageNet-normalised RGB, H, W >= 16.
        Returns:
            (B, C5, floor(H / 16), floor(W / 16)), C5 = 512 for VGG-16.
        """
        return self.activations(images, [30 if relu else 29])[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C5, floor(H / 32), floor(W / 32)): the whole stack."""
        return self.activations(images, [self.num_layers])[0]

    def _check_images(self, images: torch.Tensor, min_size: int) -> None:
        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ShapeError(f"images has shape {tuple(images.shape)}, expected (B, 3, H, W)")
        if min(images.shape[-2:]) < min_size:
            raise ShapeError(f"images of size {tuple(images.shape[-2:])} (H, W) are too small: the "
                             f"layers asked for have stride {min_size}, so H and W must be >= {min_size}")
        if not images.is_floating_point():
            raise InputError(f"images must be floating point (ImageNet-normalised), got {images.dtype}")


# --------------------------------------------------------------------------- registry
def vgg16() -> VGG16:
    """VGG-16 (``features``), 64-128-256-512-512 channels, randomly initialised."""
    return VGG16(VGG16_WIDTHS, name="vgg16")


def vgg16_slim(width_factor: float = SLIM_WIDTH_FACTOR) -> VGG16:
    """VGG-16's topology with ``width_factor`` times its channels (16-32-64-128-128
    by default), for CPU use; randomly initialised."""
    return VGG16(slim_widths(width_factor), name="vgg16-slim")


def vgg16_half() -> VGG16:
    """VGG-16's topology with half its channels (32-64-128-256-256): four times the
    slim variant's compute, and exactly twice its widths, so that a trained slim
    backbone widens into it without changing its matches (``locseg.models.widen``)."""
    return VGG16(slim_widths(0.5), name="vgg16-half")


BACKBONES: dict[str, Callable[..., VGG16]] = {"vgg16": vgg16, "vgg16-half": vgg16_half, "vgg16-slim": vgg16_slim}


def build_backbone(name: str, **kwargs) -> VGG16:
    """A randomly initialised backbone from ``BACKBONES`` (``kwargs`` go to its builder).

    Raises:
        RegistryError: unknown name; the message lists the valid names.
    """
    return lookup(BACKBONES, "backbone", name)(**kwargs)


# --------------------------------------------------------------------------- weights
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file read with ``weights_only=True``."""
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals, truncated files, foreign formats
        raise FormatError(path, f"cannot read weights: {err}") from err
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise FormatError(path, f"expected a state dict (a mapping of names to tensors), "
                                f"got {type(loaded).__name__}")
    return dict(loaded)


def _features_part(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``features.*`` entries, after dropping a DataParallel ``module.`` prefix."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if k.startswith("features.")}


def state_dict_problems(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Every way ``state_dict`` fails to fit ``model`` exactly: missing keys,
    unexpected keys, non-tensors and wrong shapes, one line each (empty if it fits)."""
    expected = model.state_dict()
    problems = [f"missing key {k} (expected shape {tuple(v.shape)})"
                for k, v in expected.items() if k not in state_dict]
    for key, value in state_dict.items():
        if key not in expected:
            problems.append(f"unexpected key {key}")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"key {key} holds a {type(value).__name__}, expected a tensor")
        elif tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"key {key} has shape {tuple(value.shape)}, "
                            f"expected {tuple(expected[key].shape)}")
    return problems


def load_torchvision_vgg16(source: Mapping[str, torch.Tensor] | str | Path,
                           model: VGG16 | None = None) -> VGG16:
    """Load torchvision's VGG-16 weights (e.g. the ImageNet ``vgg16-397923af.pth``)
    into a ``VGG16``.

    The full model's state dict is accepted: only its ``features.*`` entries are
    used (``classifier.*`` and any other entries are ignored; a ``module.``
    prefix left by DataParallel is dropped). Those must match the model exactly.

    Args:
        source: a state dict, or the path of a torch file (read with
            ``weights_only=True``, unwrapping a ``{"state_dict": ...}``
            checkpoint) or of a ``.safetensors`` file.
        model: the model to load into; a new ``vgg16()`` by default.
    Returns:
        the model, with the weights copied into it (its dtype and device kept).
    Raises:
        InputError: the state dict does not fit (the message lists every
            missing, unexpected or wrongly shaped key), or the file is missing.
        FormatError: the file cannot be read as weights, or does not fit (same list).
    """
    path = None if isinstance(source, Mapping) else Path(source)
    state_dict = _read_state_dict(path) if path is not None else source
    model = vgg16() if model is None else model
    features = _features_part(state_dict)
    problems = state_dict_problems(model, features)
    if problems:
        message = _describe_problems(model, problems, state_dict)
        raise FormatError(path, message) if path is not None else InputError(message)
    model.load_state_dict(features, strict=True)
    return model


def _describe_problems(model: VGG16, problems: list[str], state_dict: Mapping) -> str:
    head = f"weights do not fit {model.name} (block widths {model.widths}): "
    hints = []
    if any("running_mean" in k for k in state_dict):
        hints.append("running_mean entries suggest a vgg16_bn state dict, which has another layout")
    if not any(k.startswith(("features.", "module.features.")) for k in state_dict):
        sample = ", ".join(list(state_dict)[:4]) or "none"
        hints.append(f"no features.* keys at all (first keys: {sample}); expected torchvision's layout")
    shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
    return head + "; ".join(shown) + ("" if not hints else " (" + "; ".join(hints) + ")")
