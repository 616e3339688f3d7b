"""The one place that registers hooks, runs forward + backward and removes hooks.

Every method in the engine (T-Grad, and the gradient and CAM baselines) is a pure
function of the :class:`Record` that one :func:`capture` call returns.

How gradients are recorded, and why:

* A *forward* hook on each watched module sees every call of that module (a module
  used twice in one forward, such as ResNet's shared ``relu``, gives two calls, each
  kept apart) and registers a *tensor* hook on that call's output. Calls are keyed by
  module identity and call order, never by the position of a layer in a list.
* A tensor hook registered before a later in-place operation (``ReLU(inplace=True)``,
  ResNet's ``out += identity``) receives the gradient with respect to the value
  *before* that operation, which is the one the decomposition needs. Module backward
  hooks are not used.
* The backward pass is ``torch.autograd.grad(y, x)``: no ``.grad`` of any parameter
  is touched and no weight gradient is computed.
* On CUDA the pass runs in true float32 (TF32 off for convolutions and matmuls, the
  caller's settings restored afterwards): TF32 rounds the forward and backward
  differently and breaks completeness (``benchmarks/gpu_precision.py``).
* Hooks are registered per call and removed in ``finally``, so none survives an
  exception, and none exists between calls. A hook ignores forwards run by other
  threads, so several threads may explain with one model at the same time.
* With ``rules``, the gradient at a module's output can be *rewritten* as it passes, in
  the same tensor hook that records it (:data:`GradRule`); this is how Guided
  Backpropagation changes the backward rule of the rectifiers. Such a pass no longer
  computes dy/dx, so a method using rules runs a capture of its own.
* With ``on_op``, every torch operation of the forward that takes an input-dependent
  tensor is shown to the handler before it runs (:class:`Op`), with the innermost module
  call running it; the handler may watch the gradients of the operation's outputs
  (:meth:`Op.on_outputs`). This is how the decomposition (SPEC 1) sees every operation.
  The operations are seen by :class:`tgrad.watch.OpWatch`, a thread-local
  :class:`~torch.overrides.TorchFunctionMode`: only the capturing thread's forward is
  watched. Work done by the hooks themselves (``keep`` functions, tensor hooks, the
  handler) is not shown.

The checks of the model, input and target are in :mod:`tgrad.checks`, the TF32 guard in
:mod:`tgrad.precision`; both are re-exported here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

from tgrad.checks import Target, check_input, check_matches, check_model, resolve_target
from tgrad.precision import exact_float32
from tgrad.watch import RANDOM, OnOp, OnUnseen, Op, OpWatch, op_name, tensors_in

__all__ = [
    "RANDOM",
    "Call",
    "GradRule",
    "Keep",
    "OnGrad",
    "OnOp",
    "OnUnseen",
    "Op",
    "Record",
    "Target",
    "capture",
    "check_input",
    "check_model",
    "exact_float32",
    "op_name",
    "resolve_target",
    "tensors_in",
]


OnGrad = Callable[["Call", Tensor], Tensor | None]
"""Called during the backward pass with a call and dy/d(its output), as soon as that
gradient is complete; what it returns is kept in :attr:`Call.grad`. Returning None lets
the gradient be freed at once, as in a plain backward pass, so a method that reduces
each gradient as it arrives keeps the memory (and the speed) of a plain backward."""

GradRule = Callable[["Call", Tensor], Tensor]
"""A backward rule for a module: called during the backward pass with a call of that
module and dy/d(its output); what it returns *replaces* that gradient for the rest of the
backward pass (and is what ``on_grad`` sees). Example: ``lambda call, g: g.clamp(min=0)``
on every ReLU is Guided Backpropagation's rule."""

Keep = Callable[[nn.Module, tuple, Tensor], Tensor | None]
"""Called at forward time with (module, inputs, output); what it returns is kept in
:attr:`Call.value`. Use it to keep activations, or values derived from them, before a
later in-place operation can change them."""


@dataclass
class Call:
    """One call of a watched module during the recorded forward pass."""

    name: str
    """Qualified module name; the k-th call (k >= 2) of a reused module gets ``#k``."""
    module: nn.Module
    value: Tensor | None
    """What the watch's ``keep`` function returned for this call (detached), or None."""
    index: int
    """Position of the call in :attr:`Record.calls` (forward order)."""
    source: Call | None
    """The watched call whose output is this call's first input (same tensor), or None."""
    grad: Tensor | None = None
    """dy/d(output of this call), as the output was when the module returned (or what
    ``on_grad`` made of it). None if the output does not influence y."""


@dataclass
class Record:
    """What one forward + backward pass recorded. All tensors are detached."""

    input: Tensor
    """The model's input ``x`` [B,C,H,W], normalised as the model expects."""
    logits: Tensor
    """The model's output [B,K] (logits, before softmax)."""
    target: Tensor
    """The explained class of each sample [B] (long)."""
    input_grad: Tensor | None
    """dy/dx [B,C,H,W], with y the target logit of each sample (None without a backward)."""
    calls: list[Call] = field(default_factory=list)

    @property
    def logit(self) -> Tensor:
        """The explained logit y of each sample [B]."""
        return self.logits.gather(1, self.target[:, None])[:, 0]


def _logits_of(output: Any) -> Tensor:
    if not isinstance(output, Tensor):
        what = type(output).__name__
        size = f" of {len(output)} items" if isinstance(output, (tuple, list, dict)) else ""
        raise ValueError(
            f"the model must return a tensor of logits [B,K], got a {what}{size}: wrap it "
            "in a module whose forward returns the logits (e.g. model(x)[0] or "
            "model(x)['logits'])"
        )
    if output.dim() != 2:
        raise ValueError(f"the model must return logits [B,K], got {tuple(output.shape)}")
    return output


def capture(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    watch: Mapping[nn.Module, Keep | None] | None = None,
    on_grad: OnGrad | None = None,
    *,
    on_op: OnOp | None = None,
    on_unseen: OnUnseen | None = None,
    rules: Mapping[nn.Module, GradRule] | None = None,
    gradients: bool = True,
) -> Record:
    """Run ``model(x)`` forward and ``d logit_target / d(...)`` backward, recording calls.

    Args:
        model: the classifier; it must return logits [B,K].
        x: the input [B,C,H,W], normalised as the model expects.
        target: the explained class (see :data:`Target`).
        watch: the modules to record, each with an optional ``keep`` function.
        on_grad: what to keep of each watched call's gradient (default: all of it).
        on_op: shown every operation of the forward on input-dependent tensors before it
            runs, with the module call running it (see :class:`Op`); it may raise to
            refuse the model, and may watch the gradients of the operation's outputs.
        on_unseen: shown an input-dependent tensor that no shown operation made (see
            :data:`OnUnseen`); only with ``on_op``.
        rules: modules whose output gradient is rewritten during the backward pass (see
            :data:`GradRule`); they are watched (keeping nothing unless ``watch`` says).
            With rules, ``input_grad`` is the rewritten backward's, no longer dy/dx.
        gradients: ``False`` runs the forward alone, without autograd (for methods that
            need activations only, such as EigenCAM): no gradient, ``input_grad`` is None.

    Returns:
        a :class:`Record` with dy/dx and, for every call of a watched module, dy/d(output).
        The samples of a batch are independent: y is summed over the batch, which leaves
        each sample's gradients its own (the model must be in eval mode).

    Raises:
        ValueError: ``model`` is not a module, ``x`` is not a finite floating-point batch
            its dtype and channels fit, a target is not a valid class index, the model
            does not return a logits tensor, or autograd is off (``inference_mode``).
    """
    check_model(model)
    check_input(x)
    check_matches(model, x)
    watch = dict(watch or {})
    rules = dict(rules or {})
    for module in rules:
        watch.setdefault(module, None)
    names = {m: n for n, m in model.named_modules() if m in watch}
    ops = None
    if on_op is not None:
        ops = OpWatch(on_op, on_unseen, {m: n or "<model>" for n, m in model.named_modules()})
    owner = threading.get_ident()
    calls: list[Call] = []
    producer: dict[int, Call] = {}  # id(output tensor) -> the call that made it
    outputs: list[Tensor] = []  # keeps the outputs alive, so their ids stay unique
    counts: dict[nn.Module, int] = {}

    def on_forward(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if threading.get_ident() != owner or not isinstance(output, Tensor):
            return
        if ops is None:
            record_call(module, inputs, output)
            return
        ops.paused = True  # the hooks' own work is no part of the model
        try:
            record_call(module, inputs, output)
        finally:
            ops.paused = False

    def record_call(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        counts[module] = counts.get(module, 0) + 1
        name = names[module] + (f"#{counts[module]}" if counts[module] > 1 else "")
        keep = watch[module]
        value = keep(module, inputs, output) if keep is not None else None
        first = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        call = Call(
            name=name,
            module=module,
            value=None if value is None else value.detach(),
            index=len(calls),
            source=producer.get(id(first)) if first is not None else None,
        )
        calls.append(call)
        outputs.append(output)
        producer[id(output)] = call
        if output.requires_grad:
            output.register_hook(lambda g, c=call: backward(c, g))

    def backward(call: Call, grad: Tensor) -> Tensor | None:
        rule = rules.get(call.module)
        if rule is not None:
            grad = rule(call, grad)
        call.grad = grad if on_grad is None else on_grad(call, grad)
        return None if rule is None else grad  # None: the gradient passes on unchanged

    def enter(module: nn.Module, inputs: tuple) -> None:
        if threading.get_ident() == owner and module in ops.names:
            ops.enter(module)

    def leave(module: nn.Module, inputs: tuple, output: Any) -> None:
        if threading.get_ident() == owner and module in ops.names:
            ops.leave()
        if module in names:
            on_forward(module, inputs, output)

    def forward_only(module: nn.Module, inputs: tuple, output: Any) -> None:
        if module in names:
            on_forward(module, inputs, output)

    # Two process-wide module hooks rather than one or two per module: registering
    # hundreds of handles per pass costs more than the model's small layers. They see
    # every module call of every thread; ``owner`` and ``names`` filter them.
    handles = []
    try:
        if ops is None:
            handles.append(register_module_forward_hook(forward_only))
        else:  # the module stack, for naming the module that runs an operation
            handles.append(register_module_forward_pre_hook(enter))
            handles.append(register_module_forward_hook(leave))
        with torch.set_grad_enabled(gradients), exact_float32(x.device):
            x_in = x.detach().requires_grad_(gradients)
            if ops is None:
                logits = _logits_of(model(x_in))
            else:
                ops.start(x_in)
                try:
                    with ops:
                        logits = _logits_of(model(x_in))
                finally:
                    ops.clear()
            t = resolve_target(target, logits.detach())
            input_grad = None
            if gradients:
                y = logits.gather(1, t[:, None]).sum()
                (input_grad,) = torch.autograd.grad(y, x_in, allow_unused=True)
                if input_grad is None:  # y does not depend on x (a constant model)
                    input_grad = torch.zeros_like(x_in)
    finally:
        for h in handles:
            h.remove()
    return Record(
        input=x.detach(), logits=logits.detach(), target=t, input_grad=input_grad, calls=calls
    )
