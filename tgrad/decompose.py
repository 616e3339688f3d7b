"""Completeness: the logit as an input term plus one bias term per layer (SPEC section 1).

For a network whose nonlinearities are piecewise linear,

    y = <x, dy/dx> + sum over bias terms t of <b_t, dy/dz_t>

where ``z_t`` is the output of the module that adds ``b_t``. This module says which
modules carry a bias term and what it is, refuses models that cannot be decomposed,
and turns a :class:`~tgrad.capture.Record` into the list of terms.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from tgrad.capture import Call, Keep, Op, Record, Target, capture

BIASED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, _BatchNorm)
"""Modules that add a bias (their output is ``W x + b``)."""

SATURATING = (nn.Hardtanh,)  # nn.ReLU6 is a Hardtanh(0, 6)
"""Activations whose saturated units are constants, i.e. biases."""

SPATIAL = (nn.Conv2d, _BatchNorm)
"""Biased modules whose 4-D output is ``[B,C,h,w]`` (channels first), so that a term
of theirs has a map. A Linear's 4-D output ``[B,h,w,C]`` (applied to channels-last
features) has none."""


class NotDecomposableError(ValueError):
    """The model contains something the decomposition cannot split exactly."""


def completeness_tolerance(logit: Tensor) -> Tensor:
    """The largest completeness gap accepted for float32: ``1e-4 * max(1, |y|)``."""
    return 1e-4 * logit.abs().clamp(min=1.0)


def _label(name: str, module: nn.Module) -> str:
    return f"{name or '<model>'} ({type(module).__name__})"


def changing_modules(model: nn.Module) -> list[str]:
    """Describe every BatchNorm that a forward would change: in training mode it updates
    its running statistics. The engine never runs such a model, strict or not."""
    return [
        f"{_label(name, m)}: in training mode, a forward would update its running "
        "statistics; call model.eval()"
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.training and m.running_mean is not None
    ]


def unsupported_modules(model: nn.Module) -> list[str]:
    """Describe every module whose state breaks completeness, as ``"name (Type): why"``.

    BatchNorm and Dropout in training mode (batch statistics, random units) and
    BatchNorm without running statistics. What the modules compute is checked during
    the forward, operation by operation (:func:`check_op`).
    """
    found = []
    for name, m in model.named_modules():
        if m.training and isinstance(m, (_BatchNorm, _DropoutNd)):
            found.append(f"{_label(name, m)}: in training mode, call model.eval()")
        elif isinstance(m, _BatchNorm) and m.running_mean is None:
            found.append(f"{_label(name, m)}: no running statistics (track_running_stats=False)")
    return found


def _refuse(found: list[str], advice: str) -> None:
    if found:
        raise NotDecomposableError(
            "this model cannot be decomposed exactly into input and bias terms: "
            + "; ".join(found)
            + advice
        )


def check_decomposable(model: nn.Module) -> None:
    """Raise :class:`NotDecomposableError` naming every module whose state breaks
    completeness (see :func:`unsupported_modules`)."""
    _refuse(
        unsupported_modules(model),
        ". Pass strict=False to run anyway and report the completeness gap.",
    )


# Operations on input-dependent tensors, by short name (``torch.Tensor.add_`` -> "add").
_LINEAR = frozenset(
    """view reshape flatten unflatten permute transpose t contiguous clone getitem narrow
    select split chunk unbind tensor_split squeeze unsqueeze expand expand_as repeat tile
    flip roll movedim moveaxis swapaxes diagonal sum mean neg positive to float double half
    type_as view_as reshape_as adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    avg_pool1d avg_pool2d avg_pool3d interpolate pixel_shuffle pixel_unshuffle
    channel_shuffle index_select gather repeat_interleave""".split()
)
"""Linear in their one data operand: other arguments are shapes, dims or indices."""
_SUMS = frozenset("add sub rsub cat concat concatenate stack hstack vstack".split())
"""Sums of their operands: linear when every operand that is not input-dependent is 0."""
_PIECEWISE = frozenset(
    """relu leaky_relu abs max_pool1d max_pool2d max_pool3d max_pool1d_with_indices
    max_pool2d_with_indices max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d
    adaptive_max_pool3d max min amax amin""".split()
)
"""Piecewise linear and bias-free (a max of linear pieces, a slope per sign)."""
_CLIPS = frozenset("hardtanh relu6 clamp clip clamp_min clamp_max maximum minimum".split())
"""Piecewise linear with constant pieces: each non-zero constant is a bias, which only a
:data:`SATURATING` module's term captures."""
_PRODUCTS = frozenset("mul div rdiv matmul mm bmm mv einsum tensordot prelu".split())
"""Linear in one operand when the others do not depend on the input (PReLU: a slope
per channel)."""
_AFFINE = frozenset(
    "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d".split()
)
"""``W x + b``: linear in x; the bias must be the one of the module running it."""
_DROPOUT = frozenset("dropout dropout1d dropout2d dropout3d alpha_dropout".split())
_DUNDERS = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "__sub__": "sub",
    "__isub__": "sub", "__rsub__": "rsub", "__mul__": "mul", "__rmul__": "mul",
    "__imul__": "mul", "__truediv__": "div", "__itruediv__": "div", "__rtruediv__": "rdiv",
    "__neg__": "neg", "__pos__": "positive", "__abs__": "abs", "__getitem__": "getitem",
    "__matmul__": "matmul", "__rmatmul__": "matmul",
}  # fmt: skip
_NO_TERM = "adds a constant that no bias term captures"


def _short_name(qualified: str) -> str:
    name = qualified.rsplit(".", 1)[-1]
    name = _DUNDERS.get(name, name)
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _argument(op: Op, position: int, keyword: str, default: object = None) -> object:
    if len(op.args) > position:
        return op.args[position]
    return op.kwargs.get(keyword, default)


def _constant(op: Op, value: object) -> bool:
    """Whether ``value`` is a non-zero constant (a number or a tensor not from the input)."""
    if isinstance(value, Tensor):
        return not op.dependent(value) and bool(value.any())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0


def _why_not_piecewise_linear(op: Op) -> str | None:
    """Why an operation on input-dependent tensors breaks completeness, or None."""
    name = _short_name(op.name)
    if name in ("max", "min") and isinstance(_argument(op, 1, "other"), Tensor):
        name = "maximum"  # the element-wise form, which may clip at a constant
    if name in _LINEAR or name in _PIECEWISE:
        return None
    if name in _SUMS:
        two = name in ("add", "sub", "rsub")
        operands = op.args[:2] if two else _argument(op, 0, "tensors", ())
        if any(_constant(op, v) for v in (*operands, op.kwargs.get("other"))):
            return _NO_TERM
        return None
    if name == "pad":
        mode, value = _argument(op, 2, "mode", "constant"), _argument(op, 3, "value")
        return _NO_TERM if mode == "constant" and _constant(op, value) else None
    if name in _CLIPS:
        bounds = (*op.args[1:], *op.kwargs.values())
        if any(_constant(op, b) for b in bounds) and not isinstance(op.module, SATURATING):
            return f"clips at a constant outside a Hardtanh/ReLU6 module, so it {_NO_TERM}"
        return None
    if name in ("where", "threshold"):
        values = op.args[2:] if name == "threshold" else op.args[1:]
        return _NO_TERM if any(_constant(op, v) for v in values) else None
    if name in _PRODUCTS:
        tensors = [a for a in (*op.args, *op.kwargs.values()) if isinstance(a, Tensor)]
        divisor = _argument(op, 1, "other") if name == "div" else None
        if sum(map(op.dependent, tensors)) > 1 or name == "rdiv" or op.dependent(divisor):
            return "multiplies or divides input-dependent tensors (not piecewise linear)"
        return None
    if name in _AFFINE:
        if op.dependent(_argument(op, 1, "weight")):
            return "takes a weight that depends on the input (not piecewise linear)"
        bias = _argument(op, 2, "bias")
        if bias is not None and not (isinstance(op.module, BIASED) and bias is op.module.bias):
            return f"{_NO_TERM} (a bias not owned by the module running it)"
        return None
    if name == "batch_norm":
        if _argument(op, 5, "training", False):
            return "normalises with batch statistics (training mode)"
        if not isinstance(op.module, _BatchNorm):
            return f"{_NO_TERM} (a BatchNorm shift outside a BatchNorm module)"
        return None
    if name in _DROPOUT:
        return "drops random units (training mode)" if _argument(op, 2, "training", True) else None
    return "is not piecewise linear"


def check_op(op: Op) -> None:
    """Refuse an operation of the forward that breaks completeness, naming the operation
    and the module that ran it (the :data:`~tgrad.capture.OpCheck` of strict mode).

    Accepted: linear and structural operations (views, sums of input-dependent tensors,
    pooling, padding with zeros, interpolation), bias-free piecewise-linear ones (ReLU,
    LeakyReLU, PReLU, max), products with constants, convolutions and linear maps whose
    bias belongs to the Conv/Linear module running them, BatchNorm in eval mode inside a
    BatchNorm module, clipping at non-zero constants inside a Hardtanh/ReLU6 module.
    Anything else (``silu``, ``sigmoid``, ``layer_norm``, ``softmax``, ``exp``, a product
    of two activations, a constant added outside a biased module, ...) is refused.
    """
    reason = _why_not_piecewise_linear(op)
    if reason is not None:
        _refuse(
            [f"{_label(op.module_name, op.module)} calls {op.name}, which {reason}"],
            ". Pass strict=False to run anyway and report the completeness gap.",
        )


def bias_of(module: nn.Module) -> Tensor | None:
    """The bias vector a module adds to its output (one value per output channel).

    BatchNorm in eval mode: ``beta - gamma * running_mean / sqrt(running_var + eps)``.
    """
    if isinstance(module, _BatchNorm):
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        b = -module.running_mean * scale
        return b if module.bias is None else b + module.bias
    return getattr(module, "bias", None)


def saturation_bounds(module: nn.Module) -> tuple[float, ...]:
    """The non-zero bounds of a Hardtanh, max first (ReLU6: just 6; its 0 adds nothing)."""
    return tuple(b for b in (module.max_val, module.min_val) if b != 0)


def saturation(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """Where a Hardtanh/ReLU6 unit sits at each non-zero bound: bool [k, *output.shape].

    A saturated unit is a constant (its gradient is 0 there), i.e. a bias. Read from the
    output, where a saturated unit holds exactly its bound, so it is right for in-place
    activations too. Boolean masks are one comparison pass and a byte per unit, cheaper
    than a float tensor of constants (Lite0 has 33 ReLU6 layers).
    """
    masks = [output >= module.max_val] if module.max_val != 0 else []
    if module.min_val != 0:
        masks.append(output <= module.min_val)
    return masks[0][None] if len(masks) == 1 else torch.stack(masks)


def add_saturation(contribution: Tensor, module: nn.Module, masks: Tensor, grad: Tensor) -> Tensor:
    """``contribution += bound * mask * grad`` for each bound (in place); returns it."""
    for mask, bound in zip(masks, saturation_bounds(module), strict=True):
        contribution.addcmul_(mask, grad, value=bound)
    return contribution


def _is_biased(module: nn.Module) -> bool:
    """Whether a module adds a bias term (BatchNorm always; Conv/Linear when they have one)."""
    return isinstance(module, _BatchNorm) or (
        isinstance(module, BIASED) and getattr(module, "bias", None) is not None
    )


def bias_watch(model: nn.Module) -> dict[nn.Module, Keep | None]:
    """The modules whose calls give bias terms, for :func:`~tgrad.capture.capture`."""
    watch: dict[nn.Module, Keep | None] = {}
    for m in model.modules():
        if isinstance(m, SATURATING):
            watch[m] = saturation
        elif _is_biased(m):
            watch[m] = None
    return watch


@dataclass(frozen=True)
class Term:
    """One term of the logit: the input, or one layer's bias (SPEC sections 1 and 2)."""

    name: str
    """``"input"``, or the qualified name of the module that adds the bias."""
    kind: str
    """``"input"``, or the module type(s), e.g. ``"Conv2d"``, ``"BatchNorm2d+ReLU6"``."""
    contribution: Tensor
    """Its signed share of the logit [B] (logit units): the sum of ``C = b * dy/dz``."""
    map: Tensor | None
    """The layer map ``S = sum over channels of ReLU(C)`` [B,h,w] on the layer's own
    grid, or None for a non-spatial term (a Linear bias)."""
    elementwise: Tensor | None = None
    """C itself, shaped like the module's output [B,...], when asked for (memory)."""

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
    name: str, kind: str, elementwise: Tensor, keep: bool, *, spatial: bool = True
) -> Term:
    """Reduce an element-wise contribution C to its term: total, map, and C if ``keep``.

    The term gets a map when ``spatial`` (C is laid out ``[B,C,h,w]``) and C is 4-D.
    Without ``keep``, C is ours to overwrite: the ReLU for the map is done in place.
    """
    total = elementwise.flatten(1).sum(1)
    layer_map = None
    if spatial and elementwise.dim() == 4:
        positive = elementwise.clamp(min=0) if keep else elementwise.clamp_(min=0)
        layer_map = positive.sum(1)
    return Term(name, kind, total, layer_map, elementwise if keep else None)


@dataclass(frozen=True)
class Decomposition:
    """The logit split into an input term and bias terms (input first, forward order)."""

    record: Record
    terms: tuple[Term, ...]

    @property
    def logit(self) -> Tensor:
        """The explained logit y [B]."""
        return self.record.logit

    @property
    def gap(self) -> Tensor:
        """``y - sum of all terms`` [B]; zero up to float rounding for supported models."""
        total = torch.stack([t.contribution for t in self.terms]).double().sum(0)
        return (self.logit.double() - total).to(self.logit.dtype)


OnTerm = Callable[[str, Tensor, bool], None]
"""``on_term(name, C, spatial)``: sees each term's element-wise contribution C once,
before the collector reduces it (see :class:`TermCollector`)."""


def _channel_view(module: nn.Module, b: Tensor, like: Tensor) -> Tensor:
    """Shape a per-channel bias to broadcast over a module's output."""
    if isinstance(module, nn.Linear):
        return b  # the feature axis of Linear is the last one
    return b.reshape(1, -1, *([1] * (like.dim() - 2)))


class TermCollector:
    """Turns each watched call's gradient into its term as soon as the gradient arrives.

    Used as :func:`~tgrad.capture.capture`'s ``on_grad`` with :meth:`watch`'s modules, so
    no gradient outlives its use; :meth:`finish` then gives the terms. A call's role comes
    from its module's type: a biased module (:data:`BIASED`) gives ``b * dy/dz``; a
    saturating activation (:data:`SATURATING`) gives its clipped constants. Calls of any
    other module are ignored, so the collector can share one capture pass with other
    methods that watch more modules (dispatching ``on_grad`` by ``call.module``).

    ``on_term`` (optional) is called once per term with ``(name, C, spatial)`` as soon as
    the term is complete, before C is reduced and freed (``spatial``: C is a ``[B,C,h,w]``
    layer output, so the term has a map). It must not change C. Methods that need more
    of C than the term's total and map (FullGrad) reduce it there instead of keeping it.

    A saturating activation whose input is the output of a biased module joins that
    module's term (one term per layer, SPEC section 2): its gradient arrives first (it is
    later in the forward) and waits for the host's. Otherwise it is a term of its own.
    Its ``call.value`` is either the mask stack :func:`saturation` keeps or the
    activation's output itself (a float tensor, when another method keeps activations);
    the masks are then read from the output.
    """

    def __init__(self, keep_elementwise: bool = False, on_term: OnTerm | None = None) -> None:
        self.keep = keep_elementwise
        self.on_term = on_term
        self.terms: dict[int, Term] = {}  # call index -> term
        self.waiting: dict[int, list[tuple[Call, Tensor]]] = {}  # host index -> activations

    @staticmethod
    def watch(model: nn.Module) -> dict[nn.Module, Keep | None]:
        """The modules whose calls give terms, each with its keep function."""
        return bias_watch(model)

    def __call__(self, call: Call, grad: Tensor) -> None:
        """Take one call's gradient dy/d(output); keeps nothing in the record."""
        if isinstance(call.module, SATURATING):
            host = call.source
            if host is not None and _is_biased(host.module) and host.index not in self.terms:
                self.waiting.setdefault(host.index, []).append((call, grad))
                return
            contribution = torch.zeros_like(grad)
            self._add(call, add_saturation(contribution, call.module, _masks(call), grad))
            return
        if not _is_biased(call.module):
            return
        b = bias_of(call.module).detach()
        contribution = _channel_view(call.module, b, grad) * grad
        kind = type(call.module).__name__
        for activation, act_grad in self.waiting.pop(call.index, []):
            add_saturation(contribution, activation.module, _masks(activation), act_grad)
            kind += f"+{type(activation.module).__name__}"
        self._add(call, contribution, kind)

    def _add(self, call: Call, contribution: Tensor, kind: str | None = None) -> None:
        kind = kind or type(call.module).__name__
        spatial = _spatial(call)
        self._reduce(call.name, contribution, spatial)
        term = make_term(call.name, kind, contribution, self.keep, spatial=spatial)
        self.terms[call.index] = term

    def _reduce(self, name: str, contribution: Tensor, spatial: bool) -> None:
        """Give a complete term's C to ``on_term`` before :func:`make_term` reduces it."""
        if self.on_term is not None:
            self.on_term(name, contribution, spatial and contribution.dim() == 4)

    def finish(self, record: Record) -> tuple[Term, ...]:
        """The input term, then all terms in forward order."""
        for calls in self.waiting.values():  # hosts whose gradient never came
            for activation, grad in calls:
                contribution = torch.zeros_like(grad)
                self._add(
                    activation,
                    add_saturation(contribution, activation.module, _masks(activation), grad),
                )
        self.waiting.clear()
        contribution = record.input * record.input_grad
        self._reduce("input", contribution, True)
        inputs = make_term("input", "input", contribution, self.keep)
        return (inputs, *(self.terms[i] for i in sorted(self.terms)))


def _spatial(call: Call | None) -> bool:
    """Whether a call's output is channels first: a Conv2d's or BatchNorm's; a saturating
    activation's when its input is (assumed when no watched module made its input)."""
    if call is None:
        return True
    if isinstance(call.module, SPATIAL):
        return True
    if isinstance(call.module, SATURATING):
        return _spatial(call.source)
    return False


def _masks(call: Call) -> Tensor:
    """The saturation masks of a Hardtanh call, from what its keep function stored."""
    if call.value is None:
        raise ValueError(
            f"{call.name} ({type(call.module).__name__}): no value kept for a saturating "
            "activation; watch it with tgrad.decompose.saturation or keep its output"
        )
    if call.value.dtype == torch.bool:
        return call.value
    return saturation(call.module, (), call.value)


def decompose(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    strict: bool = True,
    keep_elementwise: bool = False,
) -> Decomposition:
    """Split the target logit of each sample into its input term and bias terms.

    Args:
        model: a classifier in eval mode whose nonlinearities are piecewise linear.
        x: input [B,C,H,W], normalised as the model expects.
        target: the explained class (None: top-1 of each sample).
        strict: refuse models that cannot be decomposed: modules in training mode
            (:func:`check_decomposable`, before the forward), any operation of the
            forward that is not piecewise linear or adds an uncaptured constant
            (:func:`check_op`, naming the operation and the module), and results whose
            completeness gap exceeds the float32 tolerance. With ``strict=False`` the
            terms are computed anyway and ``gap`` tells how far off.
        keep_elementwise: also keep every term's element-wise contribution C (as much
            memory as the activations); by default each is reduced to its total and map
            during the backward pass and freed.

    Raises:
        NotDecomposableError: (strict) see above; strict or not, a model whose forward
            would change it (BatchNorm in training mode updates its running statistics).
        ValueError: a bad input or target (see :func:`~tgrad.capture.capture`).
    """
    _refuse(changing_modules(model), ".")
    if strict:
        check_decomposable(model)
    collector = TermCollector(keep_elementwise)
    record = capture(
        model,
        x,
        target,
        collector.watch(model),
        on_grad=collector,
        check_op=check_op if strict else None,
    )
    result = Decomposition(record, collector.finish(record))
    if strict:
        check_gap(result)
    return result


def check_gap(result: Decomposition) -> None:
    """Raise if the completeness gap of any sample exceeds the float32 tolerance, or is
    not a number (a NaN or infinite logit).

    A second line of defence behind :func:`check_op`: it catches what no operation
    check names, whatever the cause.
    """
    gap = result.gap.abs()
    bad = ~(gap <= completeness_tolerance(result.logit))  # NaN compares False: bad
    if bool(bad.any()):
        worst = int(torch.where(bad, gap.nan_to_num(float("inf")), -1.0).argmax())
        raise NotDecomposableError(
            f"completeness gap {float(gap[worst]):.3g} for logit {float(result.logit[worst]):.4g} "
            "exceeds 1e-4 * max(1, |logit|): the model computes something that is not "
            "piecewise linear, or adds a constant that no bias term captures. Pass "
            "strict=False to get the terms and the gap anyway."
        )


class _CallableModule(types.ModuleType):
    """This module, callable as its function :func:`decompose`.

    ``tgrad.decompose`` names the module (``import tgrad.decompose`` gives the module, as
    for any other), while ``from tgrad import decompose; decompose(model, x)`` keeps
    working as it did when the package re-exported the function under that name.
    """

    def __call__(self, *args: object, **kwargs: object) -> Decomposition:
        return decompose(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
