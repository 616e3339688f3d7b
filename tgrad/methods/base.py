"""What a method is, and the one capture pass that serves every method asked for at once.

A method is a small object, built for one call of :func:`tgrad.methods.explain`:

* ``watch(model)``: the modules whose calls it needs, each with what to keep at forward
  time (see :data:`tgrad.capture.Keep`);
* ``on_grad()``: what to do with the gradient of a watched call as it arrives (``None``
  keeps it in :attr:`Call.grad`);
* optionally ``on_op()``: an ``(on_op, on_unseen)`` pair for the capture's operation
  watch (the decomposition's collector), or None;
* ``attribute(record)``: its raw map ``[B,H,W]`` at the input's resolution, from what the
  pass recorded (methods that need more forwards, such as ScoreCAM, run them here).

:func:`shared_pass` merges the watches of all methods into one :func:`capture` and
dispatches each gradient to the methods that watch its module, by module identity.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor, nn

from tgrad.capture import Call, Keep, OnGrad, OnOp, OnUnseen, Record, Target, capture

Progress = Callable[[str, int, int], None]
"""``progress(method, done, total)``: called by the methods that run many forwards."""


class Pass(enum.Enum):
    """What a method needs of the shared pass: the one declaration of the registry
    (``METHODS[name].needs``) that the pass, the explorer and the CLI read."""

    FORWARD = "forward only"
    """The watched activations, the input and the target; no backward (EigenCAM, the
    controls)."""
    BACKWARD = "shared backward"
    """The input gradient dy/dx of the shared backward (Vanilla, Input x Gradient)."""
    GRADIENTS = "gradients kept"
    """The shared backward with the gradients at its watched modules (or operations)
    kept (T-Grad, FullGrad, GradCAM, GradCAM++, XGradCAM)."""
    OWN = "its own pass"
    """Forwards (and backwards) of its own; the shared pass, a forward only for it, gives
    its activations and the target (ScoreCAM, Integrated Gradients, SmoothGrad, Guided
    Backprop)."""

    @property
    def single(self) -> bool:
        """Computed from the shared pass alone."""
        return self is not Pass.OWN

    @property
    def backward(self) -> bool:
        """The shared pass must run a backward for it."""
        return self in (Pass.BACKWARD, Pass.GRADIENTS)


def activation(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """Keep a call's output as the module returned it (a copy: a later in-place operation,
    such as ResNet's ``out += identity``, must not change what was kept)."""
    return output.detach().clone()


def merge_keeps(first: Keep | None, second: Keep | None) -> Keep | None:
    """One keep function for a module that two methods watch (the same, or one of them
    None)."""
    if first is None or first is second:
        return second
    if second is None:
        return first
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


def shared_pass(
    model: nn.Module, x: Tensor, target: Target, methods: Iterable[tuple[Method, Pass]]
) -> Record:
    """One forward + backward recording what every method watches.

    ``methods`` pairs each method with what it needs (:class:`Pass`). The backward runs
    only when some method needs it (:attr:`Pass.backward`); a gradient is then given to
    each method that keeps gradients (:attr:`Pass.GRADIENTS`) and watches its module (once
    per distinct ``on_grad``), and kept in the record if any of them keeps it. The other
    methods' watched modules keep their activations alone.
    """
    methods = list(methods)
    watch: dict[nn.Module, Keep | None] = {}
    handlers: dict[nn.Module, dict[int, OnGrad | None]] = {}
    for method, needs in methods:
        on_grad = method.on_grad() if needs is Pass.GRADIENTS else no_grad_kept
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

    gradients = any(needs.backward for _, needs in methods)
    watchers: list[tuple[OnOp, OnUnseen]] = []
    for method, _ in methods:
        found = _op_watch(method)
        if found is not None and found not in watchers:  # bound methods of one collector
            watchers.append(found)
    if len(watchers) > 1:
        raise ValueError("at most one operation watch per pass (the decomposition's)")
    on_op, on_unseen = watchers[0] if watchers else (None, None)
    return capture(
        model, x, target, watch, on_grad=dispatch, on_op=on_op, on_unseen=on_unseen,
        gradients=gradients,
    )  # fmt: skip


def _op_watch(method: Method) -> tuple[OnOp, OnUnseen] | None:
    on_op = getattr(method, "on_op", None)
    return None if on_op is None else on_op()


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
    "Pass",
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
