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
  The operations are seen by a :class:`~torch.overrides.TorchFunctionMode`, which is
  thread-local: only the capturing thread's forward is watched. Work done by the hooks
  themselves (``keep`` functions, tensor hooks, the handler) is not shown.
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


OutputsHook = Callable[[list[Tensor]], None]
"""Given, after an operation ran, its input-dependent floating-point outputs."""


@dataclass
class Op:
    """One torch operation of the recorded forward that takes an input-dependent tensor,
    as shown to an ``on_op`` handler *before* it runs (its arguments hold their values
    before the operation, also for an in-place one)."""

    func: Callable
    args: tuple
    kwargs: dict
    module: nn.Module
    """The innermost module running when the operation was called."""
    module_name: str
    """That module call's name: its qualified name (``"<model>"`` for the model itself),
    with ``#k`` for the k-th call of a module called several times."""
    index: int
    """Position of the operation in the forward (among those shown)."""
    dependent: Callable[[Any], bool]
    """Whether a value is a tensor that depends on the model's input ``x``."""
    outputs_hook: OutputsHook | None = None

    @property
    def name(self) -> str:
        """The operation's qualified name, e.g. ``torch.nn.functional.silu``."""
        return op_name(self.func)

    def on_outputs(self, hook: OutputsHook) -> None:
        """Call ``hook(outputs)`` once the operation has run, with its input-dependent
        floating-point outputs (an in-place operation's output is its first argument)."""
        self.outputs_hook = hook


OnOp = Callable[[Op], None]
"""Shown each operation on input-dependent tensors before it runs; may raise to stop the
pass, and may ask for its outputs (:meth:`Op.on_outputs`) to watch their gradients."""

OnUnseen = Callable[[Tensor, Op, list[Tensor | None]], None]
"""Shown a tensor that depends on the input but that no shown operation made (the output
of a custom :class:`torch.autograd.Function`, whose forward runs without autograd), with
the operation about to consume it and the input-dependent tensors its autograd node
takes (one per ``grad_fn.next_functions`` entry, None where that input is constant);
may raise."""

_names: dict[Callable, str] = {}


def op_name(func: Callable) -> str:
    """An operation's qualified name (``torch.nn.functional.silu``, ``torch.Tensor.add_``)."""
    name = _names.get(func)
    if name is None:
        name = resolve_name(func) or getattr(func, "__qualname__", repr(func))
        _names[func] = name.removesuffix(".__get__")  # properties such as Tensor.data
    return _names[func]


def tensors_in(value: Any) -> Iterator[Tensor]:
    """The tensors in a value: the value itself, or those in a tuple or list."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, Tensor):
                yield v


RANDOM = frozenset(
    """bernoulli rand rand_like randn randn_like randint randint_like randperm normal
    uniform exponential geometric cauchy log_normal random multinomial poisson
    native_dropout fused_dropout""".split()
)
"""Operations that draw random numbers (by short name): shown to ``on_op`` whatever their
arguments, since randomness in the graph (stochastic depth) breaks any explanation."""

_METADATA = frozenset(
    """shape dim ndim ndimension size numel nelement stride storage_offset dtype device
    layout is_contiguous is_floating_point is_complex element_size data_ptr requires_grad
    grad_fn is_leaf output_nr names __len__ __bool__ __format__ __repr__ __hash__ item
    tolist numpy __array__ untyped_storage _version""".split()
)
"""Questions about a tensor, not operations on its values: never shown to ``on_op``."""

_LOCALLY_CONSTANT = frozenset("round floor ceil trunc sign signbit fix detach data".split())
"""Operations whose floating-point output is locally constant in the input (autograd gives
them a zero derivative, or none): the operation consuming their output takes it into its
intercept (SPEC 1)."""


def _short(qualified: str) -> str:
    name = qualified.rsplit(".", 1)[-1]
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


class _OpWatch(TorchFunctionMode):
    """Shows each operation on input-dependent tensors to a handler (see :class:`Op`).

    A tensor depends on the input when an operation that took a dependent tensor made it,
    it is floating point and it requires grad (a comparison's boolean mask, an argmax, a
    ``detach()`` or a value computed under ``no_grad`` does not carry the input's
    derivative, so it is a constant of the tangent network). A tensor that requires grad
    but that no shown operation made is followed through its autograd graph: when it
    reaches the input, it is shown to ``on_unseen``. The module stack is kept by the
    capture's module hooks.
    """

    def __init__(
        self,
        on_op: OnOp,
        on_unseen: OnUnseen | None,
        names: dict[nn.Module, str],
    ) -> None:
        super().__init__()
        self.on_op = on_op
        self.on_unseen = on_unseen
        self.names = names
        # weak: the forward frees its intermediates as usual; a dead tensor's id that
        # a new tensor reuses is told apart by the reference no longer resolving to it
        self.dependents: dict[int, weakref.ref] = {}
        self.nodes: dict[int, Any] = {}  # id(grad_fn) of dependent tensors -> grad_fn
        self.by_node: dict[tuple[int, int], weakref.ref] = {}  # (grad_fn, output_nr) -> tensor
        self.constant_nodes: set[int] = set()
        self.stack: list[tuple[nn.Module, str]] = []
        self.counts: dict[nn.Module, int] = {}
        self.index = 0
        self.paused = False
        self.input: Tensor | None = None

    def start(self, x: Tensor) -> None:
        self.input = x
        self.mark(x)

    def clear(self) -> None:
        self.dependents.clear()
        self.nodes.clear()
        self.by_node.clear()
        self.constant_nodes.clear()
        self.input = None

    def enter(self, module: nn.Module) -> None:
        count = self.counts.get(module, 0) + 1
        self.counts[module] = count
        name = self.names[module]
        self.stack.append((module, name if count == 1 else f"{name}#{count}"))

    def leave(self) -> None:
        self.stack.pop()

    def mark(self, t: Tensor) -> None:
        self.dependents[id(t)] = weakref.ref(t)
        if t.grad_fn is not None:
            self.nodes[id(t.grad_fn)] = t.grad_fn
            self.by_node[(id(t.grad_fn), t.output_nr)] = weakref.ref(t)

    def dependent(self, value: Any) -> bool:
        """Whether ``value`` is (or holds) a tensor made from the input."""
        for t in tensors_in(value):
            ref = self.dependents.get(id(t))
            if ref is not None and ref() is t:
                return True
        return False

    def _reaches_input(self, node: Any) -> bool:
        """Whether an autograd node's graph reaches the input or a dependent tensor."""
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if n is None or id(n) in seen or id(n) in self.constant_nodes:
                continue
            seen.add(id(n))
            if id(n) in self.nodes or getattr(n, "variable", None) is self.input:
                return True
            stack.extend(f for f, _ in n.next_functions)
        self.constant_nodes.update(seen)
        return False

    def _adopt_unseen(self, flat: list[Any], op: Op) -> None:
        for t in flat:
            if (
                isinstance(t, Tensor)
                and t.requires_grad
                and t.grad_fn is not None
                and not self.dependent(t)
                and t.is_floating_point()
                and self._reaches_input(t.grad_fn)
            ):
                if self.on_unseen is not None:
                    self.on_unseen(t, op, [self._tensor_of(*f) for f in t.grad_fn.next_functions])
                self.mark(t)

    def _tensor_of(self, node: Any, output_nr: int) -> Tensor | None:
        """The input-dependent tensor an autograd node's output is, or None."""
        if node is None:
            return None
        if getattr(node, "variable", None) is self.input:
            return self.input
        ref = self.by_node.get((id(node), output_nr))
        t = ref() if ref is not None else None
        return t if t is not None and self.dependent(t) else None

    def __torch_function__(
        self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.paused or not self.stack:
            return func(*args, **kwargs)
        flat = [*args, *kwargs.values()]
        flat += [t for a in flat if isinstance(a, (tuple, list)) for t in a]
        module, module_name = self.stack[-1]
        op = Op(func, args, kwargs, module, module_name, self.index, self.dependent)
        if any(isinstance(a, Tensor) and a.requires_grad for a in flat):
            self._adopt_unseen(flat, op)
        short = _short(op_name(func))
        if short in _METADATA:
            return func(*args, **kwargs)
        if not any(self.dependent(a) for a in flat):
            if short in RANDOM:
                self.on_op(op)
            return func(*args, **kwargs)
        self.index += 1
        self.on_op(op)
        output = func(*args, **kwargs)
        result = output if output is not None else (args[0] if args else None)
        if short in _LOCALLY_CONSTANT:
            for t in tensors_in(result):  # a constant, also when written in place
                self.dependents.pop(id(t), None)
                if t.grad_fn is not None:
                    self.constant_nodes.add(id(t.grad_fn))
            return output
        made = [t for t in tensors_in(result) if t.is_floating_point() and t.requires_grad]
        for t in made:
            self.mark(t)
        if made and op.outputs_hook is not None:
            op.outputs_hook(made)
        return output


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Turn a target given by the caller into a long tensor [B] on the logits' device.

    ``None`` picks the top-1 class of each sample. A target must be an integer class
    index: a bool or a float (``1.7``, even ``2.0``) is refused, not rounded, and so is a
    class name (look its index up in the model's class names).
    """
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    if isinstance(target, (str, bytes)) or (
        isinstance(target, (list, tuple)) and any(isinstance(t, (str, bytes)) for t in target)
    ):
        raise ValueError(
            f"a target must be an integer class index, got the text {str(target)[:40]!r}: "
            "pass the class's index (tgrad.labels.find_class(name, categories) finds it)"
        )
    try:
        t = torch.as_tensor(target, device=logits.device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(
            f"a target must be an integer class index 0..{classes - 1} (or a sequence of "
            f"them, one per sample), got {str(target)[:40]}"
        ) from error
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
        shown = t.tolist() if t.numel() <= 8 else f"{t[:8].tolist()}..."
        raise ValueError(f"target class out of range 0..{classes - 1}: {shown}")
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


def check_model(model: object) -> nn.Module:
    """Raise ValueError unless ``model`` is a :class:`torch.nn.Module`; return it."""
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"the model must be a torch.nn.Module (a classifier returning logits [B,K]), "
            f"got {type(model).__name__}"
        )
    return model


def check_matches(model: nn.Module, x: Tensor) -> None:
    """Raise ValueError when ``x`` cannot go through ``model``: a floating-point dtype
    other than its weights', or a channel count its first convolution does not take."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and weight.dtype != x.dtype:
        raise ValueError(
            f"the input is {x.dtype} but the model's weights are {weight.dtype}: pass "
            f"x.to({weight.dtype}) (or convert the model with model.to({x.dtype}))"
        )
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is not None and x.dim() == conv.weight.dim() and x.shape[1] != conv.in_channels:
        hint = {
            1: "a grayscale image: repeat it to 3 channels (x.expand(-1, 3, -1, -1))",
            4: "an image with alpha: drop the alpha channel (x[:, :3])",
        }.get(int(x.shape[1]), "convert the image to the model's channels")
        count = int(x.shape[1])
        raise ValueError(
            f"the model's first convolution takes {conv.in_channels}-channel images; "
            f"the input has {count} channel{'' if count == 1 else 's'} ({hint})"
        )


_precision_lock = threading.Lock()
_precision_users = 0
_saved_precision: tuple[Any, ...] = ()


def _new_precision_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
        torch.backends.cudnn, "conv"
    )


def _save_and_clear_tf32() -> tuple[Any, ...]:
    """Save the caller's TF32 settings and ask for true float32 convolutions and matmuls.

    Through PyTorch's precision API (``fp32_precision``) where it exists: once a program
    has set that API, reading the legacy ``allow_tf32`` flags raises. The legacy flags
    only where the new API is absent.
    """
    backends = torch.backends
    if _new_precision_api():
        saved = ("new", backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision)
        backends.cuda.matmul.fp32_precision = "ieee"
        backends.cudnn.conv.fp32_precision = "ieee"
        return saved
    saved = ("legacy", backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
    backends.cudnn.allow_tf32 = False
    backends.cuda.matmul.allow_tf32 = False
    return saved


def _restore_tf32(saved: tuple[Any, ...]) -> None:
    backends = torch.backends
    if saved[0] == "new":
        backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision = saved[1:]
    else:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved[1:]


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Turn TF32 off for CUDA convolutions and matmuls while the block runs.

    The settings are process-wide, so overlapping users (threads) are counted: the first
    one in saves and clears them, the last one out restores them exactly. A no-op off CUDA.
    """
    global _precision_users, _saved_precision
    if device.type != "cuda":
        yield
        return
    with _precision_lock:
        if _precision_users == 0:
            _saved_precision = _save_and_clear_tf32()
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                _restore_tf32(_saved_precision)


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
        ops = _OpWatch(on_op, on_unseen, {m: n or "<model>" for n, m in model.named_modules()})
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
            ops.enter(module)

    def leave(module: nn.Module, inputs: tuple, output: Any) -> None:
        if threading.get_ident() == owner:
            ops.leave()

    handles = []
    try:
        handles += [m.register_forward_hook(on_forward) for m in names]
        if ops is not None:  # the module stack, for naming the module that runs an operation
            for m in ops.names:
                handles.append(m.register_forward_pre_hook(enter))
                handles.append(m.register_forward_hook(leave))
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
