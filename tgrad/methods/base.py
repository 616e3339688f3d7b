"""What a method is, and the one capture pass that serves every method asked for at once.

A method is a small object, built for one call of :func:`tgrad.methods.explain`:

* ``watch(model)``: the modules whose calls it needs, each with what to keep at forward
  time (see :data:`tgrad.capture.Keep`);
* ``on_grad()``: what to do with the gradient of a watched call as it arrives (``None``
  keeps it in :attr:`Call.grad`);
* ``attribute(record)``: its raw map ``[B,H,W]`` at the input's resolution, from what the
  pass recorded (methods that need more forwards, such as ScoreCAM, run them here).

:func:`shared_pass` merges the watches of all methods into one :func:`capture` and
dispatches each gradient to the methods that watch its module, by module identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor, nn

from tgrad.capture import Call, Keep, OnGrad, Record, Target, capture
from tgrad.decompose import saturation

Progress = Callable[[str, int, int], None]
"""``progress(method, done, total)``: called by the methods that run many forwards."""


def activation(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """Keep a call's output as the module returned it (a copy: a later in-place operation,
    such as ResNet's ``out += identity``, must not change what was kept)."""
    return output.detach().clone()


def merge_keeps(first: Keep | None, second: Keep | None) -> Keep | None:
    """One keep function for a module that two methods watch.

    The activation itself serves every method: the decomposition reads a saturating
    module's masks from its output (:class:`tgrad.decompose.TermCollector`).
    """
    if first is None or first is second:
        return second
    if second is None:
        return first
    if {first, second} == {activation, saturation}:
        return activation
    raise ValueError(f"cannot keep both {first.__name__} and {second.__name__} for one module")


class Method(Protocol):
    """A method of the registry, built for one call (see the module docstring)."""

    def watch(self, model: nn.Module) -> Mapping[nn.Module, Keep | None]: ...

    def on_grad(self) -> OnGrad | None: ...

    def attribute(self, record: Record) -> Tensor: ...


@dataclass
class Setup:
    """What building the methods of one call may look at."""

    model: nn.Module
    x: Tensor
    names: tuple[str, ...]
    """Every method asked for in this call (methods of one family may share work)."""
    progress: Progress | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    """Objects shared by several methods of the call, e.g. one term collector."""

    def report(self, method: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(method, done, total)


def shared_pass(model: nn.Module, x: Tensor, target: Target, methods: Iterable[Method]) -> Record:
    """One forward + backward recording what every method watches.

    A gradient is given to each method watching its module (once per distinct
    ``on_grad``) and kept in the record if any of them keeps it. When no method needs the
    pass's gradients (attribute ``needs_backward = False``: EigenCAM, ScoreCAM, Integrated
    Gradients, SmoothGrad), the pass is a forward alone.
    """
    methods = list(methods)
    watch: dict[nn.Module, Keep | None] = {}
    handlers: dict[nn.Module, dict[int, OnGrad | None]] = {}
    for method in methods:
        on_grad = method.on_grad()
        for module, keep in method.watch(model).items():
            watch[module] = merge_keeps(watch[module], keep) if module in watch else keep
            handlers.setdefault(module, {})[id(on_grad)] = on_grad

    def dispatch(call: Call, grad: Tensor) -> Tensor | None:
        kept = None
        for handler in handlers[call.module].values():
            result = grad if handler is None else handler(call, grad)
            if result is not None:
                kept = result
        return kept

    gradients = any(getattr(m, "needs_backward", True) for m in methods)
    return capture(model, x, target, watch, on_grad=dispatch, gradients=gradients)


def calls_of(record: Record, module: nn.Module) -> list[Call]:
    """The recorded calls of one module, in forward order."""
    return [c for c in record.calls if c.module is module]


def reduce_channels(attribution: Tensor) -> Tensor:
    """SPEC 3's 2-D reduction of a gradient-family attribution: sum over channels of |a|."""
    return attribution.abs().sum(1)


def input_size(record: Record) -> tuple[int, int]:
    return (record.input.shape[-2], record.input.shape[-1])


def no_grad_kept(call: Call, grad: Tensor) -> None:
    """An ``on_grad`` for methods that watch a module only for its activation."""
    return None


__all__ = [
    "Method",
    "Progress",
    "Setup",
    "activation",
    "calls_of",
    "input_size",
    "merge_keeps",
    "no_grad_kept",
    "reduce_channels",
    "shared_pass",
]
