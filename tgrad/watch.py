"""The operation watch: every torch operation of a forward on input-dependent tensors,
shown to a handler before it runs, with the innermost module call running it.

Used by :func:`tgrad.capture.capture` (``on_op``); the operations are seen by a
:class:`~torch.overrides.TorchFunctionMode`, which is thread-local, so only the capturing
thread's forward is watched.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name

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


_shorts: dict[Callable, str] = {}


def _short(qualified: str) -> str:
    name = qualified.rsplit(".", 1)[-1]
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


class OpWatch(TorchFunctionMode):
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
        short = _shorts.get(func)
        if short is None:
            short = _shorts.setdefault(func, _short(op_name(func)))
        if short in _METADATA:
            return func(*args, **kwargs)
        flat = [*args, *kwargs.values()] if kwargs else list(args)
        flat += [t for a in flat if isinstance(a, (tuple, list)) for t in a]
        dependent = unseen = False
        for a in flat:
            if isinstance(a, Tensor):
                if self.dependent(a):
                    dependent = True
                elif a.requires_grad and a.grad_fn is not None:
                    unseen = True
        module, module_name = self.stack[-1]
        op = Op(func, args, kwargs, module, module_name, self.index, self.dependent)
        if unseen:
            self._adopt_unseen(flat, op)
            dependent = dependent or any(self.dependent(a) for a in flat)
        if not dependent:
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
