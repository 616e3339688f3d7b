"""Completeness: the logit as an input term plus one bias term per layer (SPEC section 1).

For a network whose nonlinearities are piecewise linear,

    y = <x, dy/dx> + sum over bias terms t of <b_t, dy/dz_t>

where ``z_t`` is the output of the module that adds ``b_t``. This module says which
modules carry a bias term and what it is, refuses models that cannot be decomposed,
and turns a :class:`~tgrad.capture.Record` into the list of terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tgrad.capture import Call, Keep, Record, Target, capture

BIASED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, _BatchNorm)
"""Modules that add a bias (their output is ``W x + b``)."""

SATURATING = (nn.Hardtanh,)  # nn.ReLU6 is a Hardtanh(0, 6)
"""Activations whose saturated units are constants, i.e. biases."""

NEUTRAL = (
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.ZeroPad2d,
)
"""Leaf modules that keep completeness with no term of their own."""


class NotDecomposableError(ValueError):
    """The model contains something the decomposition cannot split exactly."""


def completeness_tolerance(logit: Tensor) -> Tensor:
    """The largest completeness gap accepted for float32: ``1e-4 * max(1, |y|)``."""
    return 1e-4 * logit.abs().clamp(min=1.0)


def unsupported_modules(model: nn.Module) -> list[str]:
    """Describe every module that breaks completeness, as ``"name (Type): why"``.

    Leaf modules must be biased, saturating or neutral; any module left in training
    mode is refused, since BatchNorm then uses batch statistics and Dropout is random.
    Nonlinearities applied outside modules (``F.silu`` in a ``forward``) cannot be seen
    here; they show up as a completeness gap (see :func:`check_gap`).
    """
    found = []
    for name, m in model.named_modules():
        label = f"{name or '<model>'} ({type(m).__name__})"
        if m.training and isinstance(m, (_BatchNorm, nn.Dropout, nn.Dropout2d)):
            found.append(f"{label}: in training mode, call model.eval()")
        elif isinstance(m, _BatchNorm) and m.running_mean is None:
            found.append(f"{label}: no running statistics (track_running_stats=False)")
        elif not any(True for _ in m.children()) and not isinstance(
            m, BIASED + SATURATING + NEUTRAL
        ):
            found.append(f"{label}: not piecewise linear")
    return found


def check_decomposable(model: nn.Module) -> None:
    """Raise :class:`NotDecomposableError` naming every module that breaks completeness."""
    found = unsupported_modules(model)
    if found:
        raise NotDecomposableError(
            "this model cannot be decomposed exactly into input and bias terms: "
            + "; ".join(found)
            + ". Pass strict=False to run anyway and report the completeness gap."
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


def make_term(name: str, kind: str, elementwise: Tensor, keep: bool) -> Term:
    """Reduce an element-wise contribution C to its term: total, map, and C if ``keep``.

    Without ``keep``, C is ours to overwrite: the ReLU for the map is done in place.
    """
    total = elementwise.flatten(1).sum(1)
    layer_map = None
    if elementwise.dim() == 4:
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

    A saturating activation whose input is the output of a biased module joins that
    module's term (one term per layer, SPEC section 2): its gradient arrives first (it is
    later in the forward) and waits for the host's. Otherwise it is a term of its own.
    Its ``call.value`` is either the mask stack :func:`saturation` keeps or the
    activation's output itself (a float tensor, when another method keeps activations);
    the masks are then read from the output.
    """

    def __init__(self, keep_elementwise: bool = False) -> None:
        self.keep = keep_elementwise
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
        self.terms[call.index] = make_term(call.name, kind, contribution, self.keep)

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
        inputs = make_term("input", "input", record.input * record.input_grad, self.keep)
        return (inputs, *(self.terms[i] for i in sorted(self.terms)))


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
        strict: refuse models that cannot be decomposed (see :func:`check_decomposable`)
            and results whose completeness gap exceeds the float32 tolerance. With
            ``strict=False`` the terms are computed anyway and ``gap`` tells how far off.
        keep_elementwise: also keep every term's element-wise contribution C (as much
            memory as the activations); by default each is reduced to its total and map
            during the backward pass and freed.
    """
    if strict:
        check_decomposable(model)
    collector = TermCollector(keep_elementwise)
    record = capture(model, x, target, collector.watch(model), on_grad=collector)
    result = Decomposition(record, collector.finish(record))
    if strict:
        check_gap(result)
    return result


def check_gap(result: Decomposition) -> None:
    """Raise if the completeness gap of any sample exceeds the float32 tolerance.

    This catches nonlinearities applied outside modules, which no module scan sees.
    """
    gap = result.gap.abs()
    bad = gap > completeness_tolerance(result.logit)
    if bool(bad.any()):
        worst = int(gap.argmax())
        raise NotDecomposableError(
            f"completeness gap {float(gap[worst]):.3g} for logit {float(result.logit[worst]):.4g} "
            "exceeds 1e-4 * max(1, |logit|): the model applies a nonlinearity that is not "
            "piecewise linear or not a module (e.g. F.silu in forward). Pass strict=False "
            "to get the terms and the gap anyway."
        )
