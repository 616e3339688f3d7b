"""Terms of the logit and the collector that makes them as gradients arrive (SPEC 1, 2).

Every operation's intercept ``c`` (:mod:`tgrad.ops`) contributes ``C = c * dy/dz`` to the
logit; :class:`TermCollector` groups these contributions into **one term per layer**
(SPEC 2) and reduces each term to its total and its map during the backward pass:

* An element-wise activation's intercept (a saturated ReLU6 unit, SiLU, GELU, ...) whose
  input is the output of a biased operation (a convolution's or linear map's bias,
  BatchNorm's shift, a constant added) joins that operation's term, element by element:
  EfficientNet-Lite0's ``BatchNorm2d -> ReLU6`` pairs and EfficientNet-B0's ``BatchNorm2d
  -> SiLU`` pairs are one layer each.
* Every other intercept (an activation fed by an operation without a bias, the product of
  a squeeze-excite gate, a normalisation) is a term of the innermost module call that
  runs it; intercepts of one module call on outputs of one shape are summed.
* A term's map is ``sum over channels of ReLU(C)`` on its output's grid: channels first
  ``[B,C,h,w]`` (a convolution's, BatchNorm's, a pooling's, ...) or channels last
  ``[B,h,w,C]`` (a linear map or a LayerNorm over the last axis, as in ConvNeXt), the
  layout followed through permutes and element-wise operations. A term on a 1 x 1 grid
  (a squeeze-excite vector), or whose output is not an image grid, has no map.

Each term keeps its ``kind``: the roles of what made it, ``bias``, ``saturation``,
``activation``, ``gate`` or ``norm`` joined by ``+`` in order (``bias+saturation``), and
its ``source``: the module types (or operation names) that made it
(``BatchNorm2d+ReLU6``).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tgrad import ops
from tgrad.capture import Record
from tgrad.watch import Op, tensors_in

OnTerm = Callable[[str, Tensor, bool], None]
"""``on_term(name, C, spatial)``: sees each term's element-wise contribution C once,
before the collector reduces it (see :class:`TermCollector`)."""


class NotDecomposableError(ValueError):
    """The model contains something the decomposition cannot split exactly."""


@dataclass(frozen=True)
class Term:
    """One term of the logit: the input, or one layer (SPEC sections 1 and 2)."""

    name: str
    """``"input"``, or the name of the module call that makes it (``#k`` for the k-th
    call of a module called several times; ``"<model>"`` for the model itself)."""
    kind: str
    """``"input"``, or the roles of what made it joined by ``+``: ``bias``,
    ``saturation``, ``activation``, ``gate``, ``norm`` (``"bias+saturation"``)."""
    contribution: Tensor
    """Its signed share of the logit [B] (logit units): the sum of ``C = c * dy/dz``."""
    map: Tensor | None
    """The layer map ``S = sum over channels of ReLU(C)`` [B,h,w] on the layer's own
    grid, or None for a non-spatial term (a Linear bias, a 1 x 1 squeeze-excite vector)."""
    elementwise: Tensor | None = None
    """C itself, shaped like the output it belongs to [B,...], when asked for (memory)."""
    source: str = ""
    """The module types (or operation names) whose intercepts make it, joined by ``+``
    (``"BatchNorm2d+ReLU6"``); empty for the input term."""

    @property
    def score(self) -> Tensor:
        """The term's weight in T-Grad: ``ReLU(contribution)`` [B]."""
        return self.contribution.clamp(min=0)

    @property
    def spatial(self) -> bool:
        """Whether the term has a map."""
        return self.map is not None

    @property
    def grid(self) -> tuple[int, int] | None:
        """The (h, w) grid of the layer map, or None for a non-spatial term."""
        return None if self.map is None else (self.map.shape[-2], self.map.shape[-1])


def make_term(
    name: str,
    kind: str,
    elementwise: Tensor,
    keep: bool,
    *,
    spatial: bool = True,
    channels: int = 1,
    source: str = "",
) -> Term:
    """Reduce an element-wise contribution C to its term: total, map, and C if ``keep``.

    The term gets a map when ``spatial`` and C is 4-D: the sum over the ``channels`` axis
    (1: ``[B,C,h,w]``; -1: ``[B,h,w,C]``) of ``ReLU(C)``. Without ``keep``, C is ours to
    overwrite: the ReLU for the map is done in place.
    """
    total = elementwise.flatten(1).sum(1)
    layer_map = None
    if spatial and elementwise.dim() == 4:
        positive = elementwise.clamp(min=0) if keep else elementwise.clamp_(min=0)
        layer_map = positive.sum(channels)
    return Term(name, kind, total, layer_map, elementwise if keep else None, source)


Arrival = Callable[[Tensor | None], Tensor]
"""A piece's contribution added into the layer's C so far (None: it is the first)."""


@dataclass
class _Layer:
    """A term in the making: its pieces as they are registered, and as they arrive."""

    name: str
    order: int
    shape: tuple[int, ...]
    channels: int | None
    roles: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    expected: int = 0
    arrived: list[tuple[int, Arrival]] = field(default_factory=list)

    @property
    def spatial(self) -> bool:
        if self.channels is None or len(self.shape) != 4:
            return False
        h, w = (self.shape[2], self.shape[3]) if self.channels == 1 else self.shape[1:3]
        return h * w > 1


_CHANNELS_FIRST = frozenset(
    """conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d batch_norm
    instance_norm group_norm pad constant_pad_nd avg_pool2d max_pool2d
    adaptive_avg_pool2d adaptive_max_pool2d interpolate upsample pixel_shuffle
    pixel_unshuffle""".split()
)
"""Operations whose 4-D output is laid out ``[B,C,h,w]``."""
_CHANNELS_LAST = frozenset(["linear"])
"""Operations acting on the last axis: a 4-D output is laid out ``[B,h,w,C]`` (so is a
LayerNorm's over the last axis alone)."""


class TermCollector:
    """Turns every operation's intercept into terms, as their gradients arrive.

    Used as :func:`~tgrad.capture.capture`'s ``on_op`` (and ``on_unseen``); the capture's
    tensor hooks hand each piece its gradient as soon as it is complete, and a layer is
    reduced (total, map) and freed as soon as all its pieces have arrived, so memory stays
    that of a plain backward plus the intercepts kept for it. :meth:`finish` then gives
    the terms: the input first, then every layer in forward order.

    ``on_term`` (optional) is called once per term with ``(name, C, spatial)`` as soon as
    the term is complete, before C is reduced and freed (``spatial``: the term has a map).
    It must not change C. Methods that need more of C than the term's total and map
    (FullGrad) reduce it there instead of keeping it.

    ``strict``: an operation the decomposition cannot take (randomness, batch statistics,
    no derivative, a value made outside torch's operations) raises
    :class:`NotDecomposableError` naming it and its module; otherwise it is skipped and
    the measured gap says how far off the terms are.
    """

    def __init__(
        self, keep_elementwise: bool = False, on_term: OnTerm | None = None, strict: bool = True
    ) -> None:
        self.keep = keep_elementwise
        self.on_term = on_term
        self.strict = strict
        self.terms: dict[int, Term] = {}  # layer order -> term
        self._layers: dict[tuple[str, tuple[int, ...]], _Layer] = {}
        self._pending: list[_Layer] = []
        self._layout: dict[int, tuple[weakref.ref, int | None]] = {}
        self._host: dict[int, tuple[weakref.ref, _Layer]] = {}
        self._custom: dict[int, list[Tensor]] = {}  # id(node) -> its outputs seen
        self._warned: set[str] = set()
        self._order = 0

    # ------------------------------------------------------------------ the forward pass

    def on_op(self, op: Op) -> None:
        """``capture``'s ``on_op``: plan the operation's intercepts before it runs."""
        try:
            plan = ops.plan(op)
        except ops.Unsupported as error:
            self._refuse(op, str(error))
            plan = None
        inputs = [t for t in (*op.args, *op.kwargs.values()) for t in tensors_in(t)]
        inputs = [t for t in inputs if op.dependent(t)]
        op.on_outputs(lambda outputs: self._ran(op, plan, inputs, outputs))

    def _refuse(self, op: Op, why: str) -> None:
        if self.strict:
            raise NotDecomposableError(
                f"this model cannot be decomposed exactly: {op.module_name} "
                f"({type(op.module).__name__}) calls {op.name}, which {why}. Pass "
                "strict=False to run anyway and report the completeness gap."
            )

    def _ran(self, op: Op, plan: ops.Plan | None, inputs: list[Tensor], outputs: list) -> None:
        name = ops.short_name(op.name)
        for out in outputs:
            self._layout[id(out)] = (weakref.ref(out), self._channels(op, name, inputs, out))
        try:
            pieces = plan.pieces(outputs) if plan is not None else []
        except ops.Unsupported as error:
            self._refuse(op, str(error))
            pieces = []
        host = None
        for piece in pieces:
            out = outputs[piece.output]
            layer = self._layer_for(op, piece, inputs, out)
            self._watch(out, layer, lambda g, into, p=piece: p.add_to(g, into))
            if piece.role == ops.BIAS and piece.output == 0:
                host = layer
        for out in outputs:
            if host is not None and out.shape == outputs[0].shape:
                self._host[id(out)] = (weakref.ref(out), host)
            else:
                self._host.pop(id(out), None)

    def _channels(self, op: Op, name: str, inputs: list[Tensor], out: Tensor) -> int | None:
        """Where the channels of an output are: 1, -1 (last), or None (not an image)."""
        if out.dim() != 4:
            return None
        if name in _CHANNELS_FIRST:
            return 1
        if name in _CHANNELS_LAST:
            return -1
        same = [t for t in inputs if t.shape == out.shape]
        source = same[0] if same else next((t for t in inputs if t.dim() == 4), None)
        if source is None:
            return None
        ref, channels = self._layout.get(id(source), (None, 1))
        if ref is not None and ref() is not source:
            channels = 1  # untracked (the model's input, a custom function's output)
        if name == "layer_norm" or name == "rms_norm":
            shape = ops.normalized_shape(op)
            return -1 if len(shape) == 1 else channels
        if name == "permute" and channels is not None:
            dims = op.args[1:] if len(op.args) > 2 else op.args[1] if len(op.args) > 1 else ()
            dims = [d % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
            position = dims.index(channels % 4) if channels % 4 in dims else None
            return {1: 1, 3: -1}.get(position)
        return channels if out.shape == source.shape else None

    def _layer_for(self, op: Op, piece: ops.Piece, inputs: list[Tensor], out: Tensor) -> _Layer:
        label = ops.label(op)
        if piece.elementwise and len(inputs) == 1:
            ref, host = self._host.get(id(inputs[0]), (None, None))
            if ref is not None and ref() is inputs[0] and host.shape == tuple(out.shape):
                host.roles.append(piece.role)
                host.sources.append(label)
                return host
        shape = tuple(out.shape)
        key = (op.module_name, shape)
        layer = self._layers.get(key)
        if layer is None:
            others = sum(1 for name, _ in self._layers if name == op.module_name)
            name = op.module_name if others == 0 else f"{op.module_name}:{others + 1}"
            ref, channels = self._layout.get(id(out), (None, None))
            layer = _Layer(name, self._order, shape, channels if ref is not None else None)
            self._order += 1
            self._layers[key] = layer
        layer.roles.append(piece.role)
        layer.sources.append(label)
        return layer

    def _watch(self, out: Tensor, layer: _Layer, arrival: Callable) -> None:
        """Hand ``arrival`` the gradient of ``out`` when it comes; count the piece."""
        position = layer.expected
        layer.expected += 1
        if layer.expected == 1:
            self._pending.append(layer)
        out.register_hook(lambda g: self._arrive(layer, position, lambda into: arrival(g, into)))

    def on_unseen(self, t: Tensor, op: Op, inputs: list[Tensor | None]) -> None:
        """``capture``'s ``on_unseen``: an input-dependent tensor no shown operation made.

        The output of a custom :class:`torch.autograd.Function`: its contribution comes
        from its backward, ``<z, dy/dz> - sum_i <u_i, dy/du_i through it>`` (SPEC 1),
        which holds for whatever Jacobian that backward uses; it warns, since a backward
        that is not the forward's derivative (a straight-through estimator) describes
        another function than the model's.
        """
        node = t.grad_fn
        if not isinstance(node, torch.autograd.function.BackwardCFunction):
            self._refuse(
                op,
                f"takes a value made from the input outside torch's operations "
                f"(by {type(node).__name__})",
            )
            return
        function = type(node).__name__.removesuffix("Backward")
        if function not in self._warned:
            self._warned.add(function)
            warnings.warn(
                f"{op.module_name} uses the custom autograd.Function {function}: the "
                "decomposition follows its backward; if that backward is not the "
                "derivative of its forward (a straight-through estimator), the terms "
                "explain the function the backward describes, not the model's forward",
                stacklevel=2,
            )
        outputs = self._custom.setdefault(id(node), [])
        outputs.append(t.detach())
        if len(outputs) > 1:
            return  # one hook per function call, for all its outputs
        label = type(node).__name__.removesuffix("Backward")
        key = (op.module_name, tuple(t.shape))
        layer = self._layers.get(key) or _Layer(op.module_name, self._order, tuple(t.shape), None)
        if key not in self._layers:
            self._order += 1
            self._layers[key] = layer
        layer.roles.append(ops.ACTIVATION)
        layer.sources.append(label)
        position = layer.expected
        layer.expected += 1
        if position == 0:
            self._pending.append(layer)
        kept = [None if u is None else u.detach() for u in inputs]
        index = t.output_nr

        def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
            z = outputs[0]
            g = grad_outputs[index]
            g = torch.zeros_like(z) if g is None else g
            pairs = [(u, gu) for u, gu in zip(kept, grad_inputs, strict=False)]
            pairs = [(u, gu) for u, gu in pairs if u is not None and gu is not None]
            if all(u.shape == z.shape for u, _ in pairs):
                c = z * g
                for u, gu in pairs:
                    c = c - u * gu
            else:  # not element-wise: the total alone, no map
                c = (z * g).flatten(1).sum(1, keepdim=True)
                for u, gu in pairs:
                    c = c - (u * gu).flatten(1).sum(1, keepdim=True)
            self._arrive(layer, position, lambda into: c if into is None else into.add_(c))

        node.register_hook(hook)

    # ----------------------------------------------------------------- the backward pass

    def _arrive(self, layer: _Layer, position: int, arrival: Callable) -> None:
        layer.arrived.append((position, arrival))
        if len(layer.arrived) == layer.expected:
            self._complete(layer)

    def _complete(self, layer: _Layer) -> None:
        contribution = None
        for _, arrival in sorted(layer.arrived, key=lambda item: item[0]):
            contribution = arrival(contribution)
        layer.arrived.clear()
        layer.expected = -1  # done; a late arrival cannot complete it twice
        kind = "+".join(dict.fromkeys(layer.roles))
        self._add(layer.name, layer.order, kind, contribution, layer.spatial, layer.channels,
                  "+".join(layer.sources))  # fmt: skip

    def _add(self, name, order, kind, contribution, spatial, channels, source) -> None:
        spatial = spatial and contribution.dim() == 4
        if self.on_term is not None:
            self.on_term(name, contribution, spatial)
        self.terms[order] = make_term(
            name, kind, contribution, self.keep, spatial=spatial,
            channels=channels or 1, source=source,
        )  # fmt: skip

    # ---------------------------------------------------------------------- the result

    def finish(self, record: Record) -> tuple[Term, ...]:
        """The input term, then all terms in forward order."""
        for layer in self._pending:  # layers some of whose gradients never came
            if layer.arrived and layer.expected != -1:
                self._complete(layer)
        self._pending.clear()
        self._layers.clear()
        self._layout.clear()
        self._host.clear()
        self._custom.clear()
        contribution = record.input * record.input_grad
        if self.on_term is not None:
            self.on_term("input", contribution, contribution.dim() == 4)
        inputs = make_term("input", "input", contribution, self.keep)
        return (inputs, *(self.terms[i] for i in sorted(self.terms)))
