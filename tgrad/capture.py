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
* On CUDA the pass runs in true float32 (TF32 off for convolutions and matmuls, restored
  afterwards): TF32 rounds the forward and backward differently and breaks completeness
  by up to 5e-4 of the logit (measured on an H200: ``benchmarks/gpu_precision.py``).
* Hooks are registered per call and removed in ``finally``, so none survives an
  exception, and none exists between calls. A hook ignores forwards run by other
  threads, so several threads may explain with one model at the same time.
* With ``rules``, the gradient at a module's output can be *rewritten* as it passes, in
  the same tensor hook that records it (:data:`GradRule`); this is how Guided
  Backpropagation changes the backward rule of the rectifiers. Such a pass no longer
  computes dy/dx, so a method using rules runs a capture of its own.
* With ``check_op``, every torch operation of the forward that takes an input-dependent
  tensor is shown to the check (:class:`Op`), with the innermost module running it. The
  operations are seen by a :class:`~torch.overrides.TorchFunctionMode`, which is
  thread-local: only the capturing thread's forward is watched. Work done by the hooks
  themselves (``keep`` functions, tensor hooks) is not shown.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name

Target = int | Sequence[int] | Tensor | None
"""A target class: None (top-1 of each sample), one int for the whole batch, or one per sample."""

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


@dataclass(frozen=True)
class Op:
    """One torch operation of the recorded forward that took an input-dependent tensor."""

    func: Callable
    args: tuple
    kwargs: dict
    output: Any
    module: nn.Module
    """The innermost module running when the operation was called."""
    module_name: str
    """Its qualified name (``"<model>"`` for the model itself)."""
    dependent: Callable[[Any], bool]
    """Whether a value is a tensor that depends on the model's input ``x``."""

    @property
    def name(self) -> str:
        """The operation's qualified name, e.g. ``torch.nn.functional.silu``."""
        return _op_name(self.func)


OpCheck = Callable[[Op], None]
"""Called during the forward after each operation that took an input-dependent tensor
and returned a floating-point tensor; raise to stop the pass."""

_names: dict[Callable, str] = {}


def _op_name(func: Callable) -> str:
    name = _names.get(func)
    if name is None:
        name = resolve_name(func) or getattr(func, "__qualname__", repr(func))
        _names[func] = name.removesuffix(".__get__")  # properties such as Tensor.data
    return _names[func]


def _tensors(value: Any) -> Iterator[Tensor]:
    """The tensors in a value: the value itself, or those in a tuple or list."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, Tensor):
                yield v


class _OpWatch(TorchFunctionMode):
    """Shows each operation on input-dependent tensors to a check (see :class:`Op`).

    A tensor depends on the input when an operation that took a dependent tensor made it
    and it is floating point (a comparison's boolean mask or an argmax does not carry
    the input's value). The module stack is kept by the capture's module hooks.
    """

    def __init__(self, check: OpCheck, names: dict[nn.Module, str]) -> None:
        super().__init__()
        self.check = check
        self.names = names
        # weak: the forward frees its intermediates as usual; a dead tensor's id that
        # a new tensor reuses is told apart by the reference no longer resolving to it
        self.dependents: dict[int, weakref.ref] = {}
        self.stack: list[nn.Module] = []
        self.paused = False

    def dependent(self, value: Any) -> bool:
        """Whether ``value`` is (or holds) a tensor made from the input."""
        for t in _tensors(value):
            ref = self.dependents.get(id(t))
            if ref is not None and ref() is t:
                return True
        return False

    def __torch_function__(
        self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if self.paused or not (
            any(self.dependent(a) for a in args) or any(self.dependent(v) for v in kwargs.values())
        ):
            return output
        made = [t for t in _tensors(output) if t.is_floating_point()]
        if made:
            module = self.stack[-1]
            self.check(Op(func, args, kwargs, output, module, self.names[module], self.dependent))
            for t in made:
                self.dependents[id(t)] = weakref.ref(t)
        return output


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Turn a target given by the caller into a long tensor [B] on the logits' device.

    ``None`` picks the top-1 class of each sample. A target must be an integer class
    index: a bool or a float (``1.7``, even ``2.0``) is refused, not rounded.
    """
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device)
    if isinstance(target, bool) or t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(
            f"a target must be an integer class index (or a sequence of them), got {target!r}"
        )
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch} samples")
    if bool(((t < 0) | (t >= classes)).any()):
        raise ValueError(f"target class out of range 0..{classes - 1}: {t.tolist()}")
    return t


def check_input(x: Tensor) -> None:
    """Raise ValueError unless ``x`` is a finite floating-point batch ``[B, ...]``, B >= 1,
    and autograd can run (not inside ``torch.inference_mode()``)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"the input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"the input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"the input must be a non-empty batch [B, ...], got {tuple(x.shape)}")
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "gradients cannot be computed inside torch.inference_mode(): call the explainer "
            "outside that block"
        )
    if x.is_inference():
        raise ValueError(
            "the input was made inside torch.inference_mode() and cannot take part in "
            "autograd: pass x.clone() made outside that block"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"the input contains {bad} non-finite values (NaN or infinity)")


_precision_lock = threading.Lock()
_precision_users = 0
_saved_tf32: tuple[bool, bool] = (False, False)


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Turn TF32 off for CUDA convolutions and matmuls while the block runs.

    The flags are process-wide, so overlapping users (threads) are counted: the first
    one in saves and clears them, the last one out restores them. A no-op off CUDA.
    """
    global _precision_users, _saved_tf32
    if device.type != "cuda":
        yield
        return
    with _precision_lock:
        if _precision_users == 0:
            _saved_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _saved_tf32


def capture(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    watch: Mapping[nn.Module, Keep | None] | None = None,
    on_grad: OnGrad | None = None,
    *,
    check_op: OpCheck | None = None,
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
        check_op: shown every operation of the forward on input-dependent tensors, with
            the module running it (see :class:`Op`); it may raise to refuse the model.
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
        ValueError: ``x`` is not a finite floating-point batch, a target is not a valid
            class index, or autograd is off (``torch.inference_mode()``).
    """
    check_input(x)
    watch = dict(watch or {})
    rules = dict(rules or {})
    for module in rules:
        watch.setdefault(module, None)
    names = {m: n for n, m in model.named_modules() if m in watch}
    ops = None
    if check_op is not None:
        ops = _OpWatch(check_op, {m: n or "<model>" for n, m in model.named_modules()})
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
        if threading.get_ident() == owner:
            ops.stack.append(module)

    def leave(module: nn.Module, inputs: tuple, output: Any) -> None:
        if threading.get_ident() == owner:
            ops.stack.pop()

    handles = [m.register_forward_hook(on_forward) for m in names]
    if ops is not None:  # the module stack, for naming the module that runs an operation
        for m in ops.names:
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave))
    try:
        with torch.set_grad_enabled(gradients), exact_float32(x.device):
            x_in = x.detach().requires_grad_(gradients)
            if ops is None:
                logits = model(x_in)
            else:
                ops.dependents[id(x_in)] = weakref.ref(x_in)
                with ops:
                    logits = model(x_in)
                ops.dependents.clear()
            if logits.dim() != 2:
                raise ValueError(f"the model must return logits [B,K], got {tuple(logits.shape)}")
            t = resolve_target(target, logits.detach())
            input_grad = None
            if gradients:
                y = logits.gather(1, t[:, None]).sum()
                (input_grad,) = torch.autograd.grad(y, x_in)
    finally:
        for h in handles:
            h.remove()
    return Record(
        input=x.detach(), logits=logits.detach(), target=t, input_grad=input_grad, calls=calls
    )
