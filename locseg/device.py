"""Where the networks run.

Convention, owned here: the networks (backbones, NetVLAD, segmentation heads) run on
one device, ``resolve_device("auto")`` by default, which is the first CUDA GPU when
one is present and the CPU otherwise. What a network hands back to the rest of
locseg (dense hypercolumn maps, global descriptors, class probabilities) comes back
to the CPU, where geometry, RANSAC-PnP, refinement and the feature store work. In
training, the model, its inputs and its losses live on the device; the random
generators of the sampling stay on the CPU, so a seeded run draws the same pairs and
points on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError

AUTO = "auto"
DEVICE_HELP = ("Where the networks run: auto (the first CUDA GPU if there is one, else the CPU), cpu, cuda, "
               "cuda:N or mps.")


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """The device called ``name`` (``"auto"``/None: CUDA when available, else CPU).

    Raises:
        InputError: ``name`` is not a device torch knows, or it is not available here.
    """
    if isinstance(name, torch.device):
        device = name
    elif name is None or name == AUTO:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as error:
            raise InputError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is not None and device.index >= count or count == 0:
            raise InputError(f"device {str(device)!r} is not available: this machine has {count} CUDA device(s); "
                             f"use 'cpu' or 'auto'")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(f"device {str(device)!r} is not available here; use 'cpu' or 'auto'")
    elif device.type != "cpu":
        raise InputError(f"unsupported device {str(device)!r}; valid: auto, cpu, cuda, cuda:N, mps")
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without either."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
