"""The pieces an operation's intercept is made of, and what every rule shares."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tgrad.watch import Op

BIAS, SATURATION, ACTIVATION, GATE, NORM = "bias", "saturation", "activation", "gate", "norm"
ROLES = (BIAS, SATURATION, ACTIVATION, GATE, NORM)


class Unsupported(ValueError):
    """An operation the decomposition cannot take exactly, with the reason."""


@dataclass(frozen=True)
class Piece:
    """What one operation adds to the logit: its intercept at one of its outputs.

    Its element-wise contribution is ``C = c * dy/dz`` (``z`` the output): ``c`` is
    ``intercept`` (broadcast to the output's shape), or, for a saturated unit, the sum of
    ``bound * mask`` over ``masks`` and ``bounds``.
    """

    role: str
    """``bias``, ``saturation``, ``activation``, ``gate`` or ``norm``."""
    output: int = 0
    """Which of the operation's input-dependent outputs it belongs to."""
    intercept: Tensor | None = None
    masks: Tensor | None = None
    """[k, *output.shape], 1 where a unit sits at each of ``bounds``, else 0."""
    bounds: tuple[float, ...] = ()
    elementwise: bool = False
    """Element-wise in one input-dependent argument (which may belong to the layer that
    made that argument, SPEC 2)."""

    def add_to(self, grad: Tensor, into: Tensor | None) -> Tensor:
        """``into + c * grad`` (in place when ``into`` is given), the piece's C added."""
        if self.masks is not None:
            if into is None:
                into = torch.zeros_like(grad)
            for mask, bound in zip(self.masks, self.bounds, strict=True):
                into.addcmul_(mask, grad, value=bound)
            return into
        if into is None:
            return self.intercept * grad
        return into.addcmul_(self.intercept, grad)


class Plan:
    """The intercepts of one operation, made from what it was given (before it ran) and,
    where needed, its outputs."""

    def __init__(self, pieces: list[Piece] | None = None, later: Callable | None = None):
        self._pieces = pieces or []
        self._later = later

    def pieces(self, outputs: list[Tensor]) -> list[Piece]:
        if self._later is None:
            return self._pieces
        return [p for p in self._later(outputs) if p is not None]


_DUNDERS = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "__sub__": "sub",
    "__isub__": "sub", "__rsub__": "rsub", "__mul__": "mul", "__rmul__": "mul",
    "__imul__": "mul", "__truediv__": "div", "__itruediv__": "div", "__rtruediv__": "rdiv",
    "__div__": "div", "__rdiv__": "rdiv", "__neg__": "neg", "__pos__": "positive",
    "__abs__": "abs", "__getitem__": "getitem", "__setitem__": "setitem",
    "__matmul__": "matmul", "__rmatmul__": "rmatmul", "__pow__": "pow", "__rpow__": "rpow",
    "__ipow__": "pow",
}  # fmt: skip


def short_name(qualified: str) -> str:
    """``torch.Tensor.add_`` -> ``add``, ``torch.Tensor.__mul__`` -> ``mul``."""
    name = qualified.rsplit(".", 1)[-1]
    name = _DUNDERS.get(name, name)
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


@functools.cache
def inplace_position(func: Callable) -> int | None:
    """The position of a function's ``inplace`` parameter (``F.hardswish(x, True)``)."""
    try:
        parameters = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return parameters.index("inplace") if "inplace" in parameters else None


def in_place(op: Op) -> bool:
    """Whether the operation writes into its first argument."""
    last = op.name.rsplit(".", 1)[-1]
    if (last.endswith("_") and not last.endswith("__")) or last.startswith("__i"):
        return True
    if last == "__setitem__" or op.kwargs.get("inplace"):
        return True
    position = inplace_position(op.func)
    return position is not None and len(op.args) > position and bool(op.args[position])


def arg(op: Op, position: int, keyword: str, default: object = None) -> object:
    if len(op.args) > position:
        return op.args[position]
    return op.kwargs.get(keyword, default)


def detached(value: object) -> object:
    return value.detach() if isinstance(value, Tensor) else value


def channel_view(b: Tensor, output_dim: int, last: bool) -> Tensor:
    """A per-channel vector shaped to broadcast over an output (channels at dim 1, or
    the last dim for a linear map)."""
    return b if last else b.reshape(1, -1, *([1] * (output_dim - 2)))


def batchnorm_shift(mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
                    eps: float) -> Tensor:  # fmt: skip
    """Eval BatchNorm's folded shift ``beta - gamma * mean / sqrt(var + eps)`` [C]."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    b = -mean * scale
    return b if bias is None else b + bias


def out_of_place(op: Op) -> Callable:
    """The operation itself, never writing into its arguments."""
    func = op.func
    name = op.name.rsplit(".", 1)[-1]
    if name.startswith("__i") and name.endswith("__"):
        return getattr(torch.Tensor, "__" + name[3:])
    if name.endswith("_") and not name.endswith("__"):
        return getattr(torch.Tensor, name[:-1], func)
    position = inplace_position(func)
    if position is None:
        return func

    def out_of_place(*args: object, **kwargs: object) -> object:
        if len(args) > position:
            args = (*args[:position], False, *args[position + 1 :])
        return func(*args, **{**kwargs, "inplace": False} if "inplace" in kwargs else kwargs)

    return out_of_place
