"""The base of locseg's geometric value types, and input conversion.

A value type (``Pose``, ``Camera``) wraps ONE tensor ``data`` of shape
``(*batch, D)``: the last dimension holds the value's parameters, every leading
dimension is batch. Indexing, ``len``, ``stack`` and device/dtype moves act on
the batch dimensions only, so a ``Pose`` of shape ``(2, 3)`` is six poses that
behave like a ``(2, 3)`` tensor of poses.

Inputs may be torch tensors, numpy arrays or nested sequences of numbers;
outputs are torch tensors. Floating dtypes are preserved (float64 stays
float64); integer inputs become ``torch.get_default_dtype()``. When a function
takes several arrays, they are promoted to a common floating dtype and moved to
the device of the first tensor among them. Methods of a value that take
points or pixels (``Pose.transform``, ``Camera.project``...) convert them to the
value's own dtype and device: a float32 camera computes in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError, ShapeError

if TYPE_CHECKING:  # annotations only: typing.Self is Python 3.11+
    from typing_extensions import Self

TensorLike = Any  # torch.Tensor | np.ndarray | a nested sequence of numbers


def as_float_tensor(x: TensorLike, name: str) -> torch.Tensor:
    """Convert ``x`` to a floating-point tensor, keeping a floating dtype.

    Args:
        x: tensor, numpy array, number or nested sequence of numbers.
        name: the argument's name, used in the error message.
    Returns:
        a tensor of the same shape; integer and boolean inputs become the
        default floating dtype.
    Raises:
        InputError: if ``x`` cannot be read as a real-valued array.
    """
    if isinstance(x, torch.Tensor):
        tensor = x
    else:
        try:
            if isinstance(x, np.ndarray):
                x = np.ascontiguousarray(x)
            tensor = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"{name} cannot be read as a numeric array: {err}") from err
    if tensor.is_complex():
        raise InputError(f"{name} is complex ({tensor.dtype}); expected real values")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def as_float_tensors(**named: TensorLike) -> list[torch.Tensor]:
    """Convert several inputs and promote them to one dtype and device.

    Args:
        **named: the inputs by argument name, in order.
    Returns:
        the tensors, in the order given, sharing the promoted floating dtype and
        the device of the first input that was already a torch tensor.
    """
    tensors = [as_float_tensor(v, k) for k, v in named.items()]
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    device = next(
        (t.device for t, v in zip(tensors, named.values()) if isinstance(v, torch.Tensor)),
        tensors[0].device,
    )
    return [t.to(dtype=dtype, device=device) for t in tensors]


def broadcast_batch(name_a: str, a: torch.Tensor, a_dims: int,
                    name_b: str, b: torch.Tensor, b_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast the batch dimensions of two tensors against each other.

    Args:
        a: tensor of shape ``(*batch_a, *core_a)`` where ``core_a`` has ``a_dims`` dims.
        b: tensor of shape ``(*batch_b, *core_b)`` where ``core_b`` has ``b_dims`` dims.
    Returns:
        both tensors expanded to ``(*batch, *core)`` with ``batch`` the broadcast
        of ``batch_a`` and ``batch_b``.
    Raises:
        ShapeError: if the batch shapes do not broadcast.
    """
    batch_a, batch_b = a.shape[: a.ndim - a_dims], b.shape[: b.ndim - b_dims]
    try:
        batch = torch.broadcast_shapes(batch_a, batch_b)
    except RuntimeError as err:
        raise ShapeError(
            f"batch shapes of {name_a} {tuple(batch_a)} and {name_b} {tuple(batch_b)} "
            "do not broadcast"
        ) from err
    a = a.expand(*batch, *a.shape[a.ndim - a_dims:])
    b = b.expand(*batch, *b.shape[b.ndim - b_dims:])
    return a, b


class TensorWrapper:
    """A value type around one tensor ``data`` of shape ``(*batch, D)``.

    Subclasses override ``_new`` when they carry more than ``data`` (a camera
    model name, for instance) and ``_check_compatible`` to refuse stacking
    values that cannot share one tensor.
    """

    data: torch.Tensor

    def __init__(self, data: torch.Tensor):
        self.data = data

    def _new(self, data: torch.Tensor) -> Self:
        """A value of the same kind (and extra attributes) holding ``data``."""
        return type(self)(data)

    def _check_compatible(self, other: TensorWrapper) -> None:
        """Raise InputError if ``other`` cannot be stacked with ``self``."""
        if type(other) is not type(self):
            raise InputError(f"cannot stack {type(self).__name__} with {type(other).__name__}")

    @property
    def shape(self) -> torch.Size:
        """The batch shape (every dimension of ``data`` but the last)."""
        return self.data.shape[:-1]

    @property
    def ndim(self) -> int:
        """The number of batch dimensions."""
        return self.data.ndim - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __len__(self) -> int:
        if self.data.ndim < 2:
            raise TypeError(f"len() of an unbatched {type(self).__name__}")
        return self.data.shape[0]

    def __getitem__(self, index: Any) -> Self:
        """Index the batch dimensions; the parameter dimension is kept whole."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            full = (*index, slice(None))
        else:
            full = (*index, Ellipsis, slice(None))
        return self._new(self.data[full])

    def reshape(self, *shape: int) -> Self:
        """Reshape the batch dimensions (``shape`` excludes the parameter dim)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        return self._new(self.data.reshape(*shape, self.data.shape[-1]))

    def to(self, *args: Any, **kwargs: Any) -> Self:
        """Move or cast, with the arguments of ``torch.Tensor.to``."""
        return self._new(self.data.to(*args, **kwargs))

    def float(self) -> Self:
        return self._new(self.data.float())

    def double(self) -> Self:
        return self._new(self.data.double())

    def cpu(self) -> Self:
        return self._new(self.data.cpu())

    def detach(self) -> Self:
        return self._new(self.data.detach())

    @classmethod
    def stack(cls, values: Sequence[Self], dim: int = 0) -> Self:
        """Stack values of equal batch shape along a new batch dimension ``dim``.

        Args:
            values: non-empty sequence of values with batch shape ``(*batch,)``.
            dim: where the new dimension goes, among the batch dimensions.
        Returns:
            a value of batch shape ``(*batch[:dim], len(values), *batch[dim:])``.
        """
        values = list(values)
        if not values:
            raise InputError(f"{cls.__name__}.stack needs at least one value")
        for value in values[1:]:
            values[0]._check_compatible(value)
        ndim = values[0].ndim
        if not -ndim - 1 <= dim <= ndim:
            raise InputError(f"dim={dim} out of range for batch dimension count {ndim}")
        dim = dim if dim >= 0 else dim + ndim + 1
        try:
            data = torch.stack([v.data for v in values], dim=dim)
        except RuntimeError as err:
            shapes = sorted({tuple(v.shape) for v in values})
            raise ShapeError(f"cannot stack {cls.__name__}s of batch shapes {shapes}") from err
        return values[0]._new(data)
