"""Function-preserving widening of a VGG-16 backbone (Net2WiderNet, Chen et al. 2016).

A wider backbone warm-started from a trained narrow one keeps what the narrow one
learned and adds capacity. Widening by an integer ``factor`` gives every channel of
every convolution ``factor`` adjacent replicas: output channel ``k`` of the wide
layer is input channel ``k // factor`` of the narrow one, with the same weights and
bias. A convolution that reads replicated channels splits each narrow input weight
``w`` over its replicas as ``w / factor + d_r``, where the perturbations ``d_r`` of
one group sum to zero; the sum over the group is ``w`` again, so the wide layer's
output equals the narrow one's exactly, whatever the perturbations. They exist to
break the symmetry between replicas, which would otherwise receive identical
gradients forever. The break is slow: replicas keep the same incoming weights and
differ only through the perturbed outgoing ones. v3 widened with the default noise
and fine-tuned for 500 steps at lr 1.5e-4 had its replicas at most 6 % apart
(``replica_spread``; benchmarks/RESULTS.md), and the wide model trained like the
narrow one.

ReLU and max-pooling act channel by channel, so they commute with replication.
Every activation of the wide backbone is therefore the narrow activation with each
channel repeated ``factor`` times: a hypercolumn level's norm grows by
``sqrt(factor)`` and, after L2 normalisation (per level or joint), every cosine
between hypercolumns -- hence every match -- is unchanged.

A segmentation model widens the same way (``widen_segmentation``): its backbone as
above; the pyramid-pooling convolutions, which read the replicated head-layer
channels and whose width is a quarter of them, are replicated and split in turn
(pooling, ReLU, upsampling and concatenation all commute with replication); the
bottleneck and the auxiliary head's convolution split their inputs and keep their
outputs; GroupNorms and classifiers are copied. The wide model's logits and
penultimate features equal the narrow one's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .backbone import VGG16, build_backbone, state_dict_problems
from .load import backbone_state, weights_digest
from .segmentation import (
    SegmentationModel,
    load_segmentation_model,
    segmentation_metadata,
)
from .weights import load_state_dict, save_safetensors

DEFAULT_SPLIT_NOISE = 0.01
"""Standard deviation of the split perturbations, relative to each layer's weight std."""


def widen_backbone(model: VGG16, factor: int, name: str, split_noise: float = DEFAULT_SPLIT_NOISE,
                   seed: int = 0) -> VGG16:
    """A ``VGG16`` with ``factor`` times the channels of ``model``, computing the same
    function up to channel replication (see the module docstring).

    Args:
        model: the narrow backbone (left untouched).
        factor: integer >= 1; the new block widths are ``factor * model.widths``.
        name: the registry name of the wide architecture (e.g. ``"vgg16-half"``).
        split_noise: std of the zero-sum split perturbations, relative to the std
            of the narrow layer's weights; 0 gives exact replicas.
        seed: seeds the perturbations (the caller's random state is not touched).
    Returns:
        the wide backbone, on ``model``'s device and dtype.
    Raises:
        InputError: a factor that is not an integer >= 1, or negative noise.
    """
    _check_factor(factor, 1, "widening")
    if not split_noise >= 0:
        raise InputError(f"split_noise must be >= 0, got {split_noise!r}")
    reference = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # its random initialisation is overwritten below
        wide = VGG16(tuple(factor * w for w in model.widths), name=name).to(reference)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    narrow_convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    wide_convs = [m for m in wide.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for position, (narrow, conv) in enumerate(zip(narrow_convs, wide_convs)):
            weight = narrow.weight.repeat_interleave(factor, dim=0)  # (factor C_out, C_in, 3, 3)
            if position > 0:  # the input channels were replicated by the previous layer
                weight = _split_inputs(weight, factor, split_noise, generator)
            conv.weight.copy_(weight)
            conv.bias.copy_(narrow.bias.repeat_interleave(factor))
    return wide


def _check_factor(factor: int, minimum: int, role: str) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < minimum:
        raise InputError(f"{role} factor must be an integer >= {minimum}, got {factor!r}")


def _split_inputs(weight: torch.Tensor, factor: int, split_noise: float,
                  generator: torch.Generator) -> torch.Tensor:
    """(C_out, C_in, k, k) -> (C_out, factor C_in, k, k): each input weight spread over
    ``factor`` replicas that sum to it."""
    c_out, c_in, kh, kw = weight.shape
    split = (weight / factor).unsqueeze(2).expand(c_out, c_in, factor, kh, kw)
    if split_noise > 0 and factor > 1:
        noise = torch.randn((c_out, c_in, factor, kh, kw), generator=generator, dtype=torch.float64)
        noise = (noise - noise.mean(dim=2, keepdim=True)) * split_noise * float(weight.std())
        split = split + noise.to(weight)
    return split.reshape(c_out, c_in * factor, kh, kw)


def replica_spread(model: VGG16, factor: int) -> dict[str, float]:
    """How far training has set apart the replicas that ``widen_backbone`` made.

    Replicas of a channel start with the same incoming weights, up to perturbations
    that sum to zero over each group of replicated inputs. So each convolution's weight
    is first summed over those groups (not for the first convolution, whose input, the
    image, is not replicated), and replica r of every output channel is compared with
    replica 0: ``||S_r - S_0|| / ||S_0||``, averaged over r = 1..factor-1. Right after
    widening this is 0 in every layer, and while it stays near 0 the wide backbone
    computes nearly the narrow one's function: its extra channels add nothing yet.

    Args:
        model: a backbone whose widths are ``factor`` times a narrow one's.
        factor: the widening factor, an integer >= 2.
    Returns:
        ``{conv name: spread}`` for every convolution, in network order.
    Raises:
        InputError: a factor < 2, or widths that ``factor`` does not divide.
    """
    _check_factor(factor, 2, "replica")
    if any(width % factor for width in model.widths):
        raise InputError(f"widths {model.widths} are not {factor} times a narrow backbone's")
    spread = {}
    convs = [(layer.name, module) for layer, module in zip(model.layout, model.features)
             if isinstance(module, nn.Conv2d)]
    with torch.no_grad():
        for position, (name, conv) in enumerate(convs):
            weight = conv.weight.double()
            c_out, c_in, kh, kw = weight.shape
            if position > 0:
                weight = weight.reshape(c_out, c_in // factor, factor, kh, kw).sum(dim=2)
            first = weight[0::factor]
            distances = [float((weight[r::factor] - first).norm() / first.norm()) for r in range(1, factor)]
            spread[name] = sum(distances) / len(distances)
    return spread


def widen_segmentation(model: SegmentationModel, factor: int, name: str, split_noise: float = DEFAULT_SPLIT_NOISE,
                       seed: int = 0) -> SegmentationModel:
    """A segmentation model on a ``factor`` times wider backbone ``name`` that computes the
    same logits and penultimate features as ``model`` (module docstring), in eval mode.

    Raises:
        InputError: a bad factor or noise (``widen_backbone``).
    """
    backbone = widen_backbone(model.backbone, factor, name, split_noise, seed)
    config = replace(model.config, backbone=name)
    with torch.random.fork_rng(devices=[]):  # every weight is overwritten below
        wide = SegmentationModel(config, backbone=backbone).to(next(model.parameters()))
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    narrow_state = model.state_dict()
    with torch.no_grad():
        for key, tensor in wide.state_dict().items():
            if not key.startswith("backbone."):
                tensor.copy_(_widened_head_tensor(key, narrow_state[key], tuple(tensor.shape), factor,
                                                  split_noise, generator))
    return wide.eval()


def _widened_head_tensor(key: str, narrow: torch.Tensor, shape: tuple[int, ...], factor: int, split_noise: float,
                         generator: torch.Generator) -> torch.Tensor:
    """A head tensor of the wide model: the narrow one where the shapes agree; else its
    outputs replicated (pyramid stages, which are ``factor`` times wider) and/or its inputs
    split over the replicas of the channels it reads."""
    if tuple(narrow.shape) == shape:
        return narrow
    tensor = narrow
    if shape[0] == factor * narrow.shape[0]:
        tensor = tensor.repeat_interleave(factor, dim=0)
    if tensor.ndim == 4 and shape[1] == factor * tensor.shape[1]:
        tensor = _split_inputs(tensor, factor, split_noise, generator)
    if tuple(tensor.shape) != shape:
        raise InputError(f"cannot widen {key} of shape {tuple(narrow.shape)} into {shape} by {factor}")
    return tensor


def narrow_backbone(weights: str) -> VGG16:
    """The backbone held by a weight source, whatever its widths (read off its tensors)."""
    state = backbone_state(load_state_dict(weights), weights)
    convs = [int(k.split(".")[1]) for k in state if k.endswith(".weight") and k.split(".")[1].isdigit()]
    widths = tuple(int(state[f"features.{i}.weight"].shape[0]) for i in sorted(convs))
    if len(widths) != 13:
        raise InputError(f"weights {weights!r} hold {len(widths)} convolutions, expected VGG-16's 13")
    model = VGG16(tuple(widths[i] for i in (1, 3, 6, 9, 12)), name="narrow")  # each block's last convolution
    problems = state_dict_problems(model, state)
    if problems:
        raise InputError(f"weights {weights!r} are not a VGG-16 backbone: " + "; ".join(problems[:5]))
    model.load_state_dict(state)
    return model


def widen_weights(weights: str, backbone: str, output: str | Path, split_noise: float = DEFAULT_SPLIT_NOISE,
                  seed: int = 0) -> Path:
    """Widen the backbone of ``weights`` into the registered ``backbone`` and save it.

    Args:
        weights: a weight source (bundled name, file or URL) holding a VGG-16 backbone.
        backbone: a ``BACKBONES`` name whose block widths are one integer multiple
            of the source's (``vgg16-half`` from ``vgg16-slim``: 2).
        output: the ``.safetensors`` file to write (atomically); its metadata names
            the architecture and the source's digest.
    Returns:
        ``output`` as a Path.
    Raises:
        InputError: the widths are not one integer multiple of the source's.
    """
    narrow = narrow_backbone(weights)
    target = build_backbone(backbone).widths
    factor = target[0] // narrow.widths[0]
    if factor < 1 or any(factor * n != t for n, t in zip(narrow.widths, target)):
        raise InputError(f"{backbone} (block widths {target}) is not an integer multiple of the widths "
                         f"{narrow.widths} of {weights!r}; widening needs one factor for every block")
    recipe = {"widened_from": weights, "widened_from_digest": weights_digest(weights), "factor": factor,
              "split_noise": split_noise, "seed": seed}
    if any(key.startswith("head.") for key in load_state_dict(weights)):
        wide_model = widen_segmentation(load_segmentation_model(weights), factor, backbone, split_noise, seed)
        return save_safetensors(wide_model.state_dict(), output,
                                metadata=segmentation_metadata(wide_model.config, recipe))
    wide = widen_backbone(narrow, factor, backbone, split_noise, seed)
    return save_safetensors(wide.state_dict(), output, metadata={"backbone": backbone, "recipe": json.dumps(recipe)})
