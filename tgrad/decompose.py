"""Completeness: the logit as an input term plus one bias term per layer (SPEC section 1).

For a network whose nonlinearities are piecewise linear,

    y = <x, dy/dx> + sum over bias terms t of <b_t, dy/dz_t>

where ``z_t`` is the output of the module that adds ``b_t``. This module says which
modules carry a bias term and what it is, refuses models that cannot be decomposed,
and turns a :class:`~tgrad.capture.Record` into the list of terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tgrad.capture import Keep, Record, Target, capture

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


def saturation(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """The constant part of a Hardtanh/ReLU6 output: ``max`` where saturated high,
    ``min`` where saturated low, 0 elsewhere (the units where the gradient is 0).

    Computed from the output (a saturated unit holds exactly ``min`` or ``max``), so it
    is right for in-place activations too.
    """
    linear = (output > module.min_val) & (output < module.max_val)
    return output.masked_fill(linear, 0)


def bias_watch(model: nn.Module) -> dict[nn.Module, Keep | None]:
    """The modules whose calls give bias terms, for :func:`~tgrad.capture.capture`."""
    watch: dict[nn.Module, Keep | None] = {}
    for m in model.modules():
        if isinstance(m, SATURATING):
            watch[m] = saturation
        elif isinstance(m, _BatchNorm) or (isinstance(m, BIASED) and m.bias is not None):
            watch[m] = None
    return watch


@dataclass
class Term:
    """One term of the decomposition: ``C = b * dy/dz`` over a module's output."""

    name: str
    """``"input"``, or the qualified name of the module that adds the bias."""
    kind: str
    """``"input"``, or the module type(s), e.g. ``"Conv2d"``, ``"BatchNorm2d+ReLU6"``."""
    contribution: Tensor
    """The element-wise contribution C, shaped like the module's output [B,...]."""

    @property
    def spatial(self) -> bool:
        """Whether the term has a map (its output is [B,C,h,w])."""
        return self.contribution.dim() == 4

    @cached_property
    def total(self) -> Tensor:
        """The term's share of the logit [B]: the sum of C over all but the batch axis."""
        return self.contribution.flatten(1).sum(1)


@dataclass
class Decomposition:
    """The logit split into an input term and bias terms (forward order)."""

    record: Record
    terms: list[Term]

    @property
    def logit(self) -> Tensor:
        """The explained logit y [B]."""
        return self.record.logit

    @property
    def gap(self) -> Tensor:
        """``y - sum of all terms`` [B]; zero up to float rounding for supported models."""
        total = torch.stack([t.total for t in self.terms]).double().sum(0)
        return (self.logit.double() - total).to(self.logit.dtype)


def _channel_view(module: nn.Module, b: Tensor, like: Tensor) -> Tensor:
    """Shape a per-channel bias to broadcast over a module's output."""
    if isinstance(module, nn.Linear):
        return b  # the feature axis of Linear is the last one
    return b.reshape(1, -1, *([1] * (like.dim() - 2)))


def terms_from_record(record: Record) -> list[Term]:
    """The decomposition's terms from a capture made with :func:`bias_watch`.

    A saturating activation whose input is the output of a biased module is merged
    into that module's term (one term per layer, SPEC section 2); otherwise it is a
    term of its own. Calls whose output does not reach the logit give no term.
    """
    x = record.input
    terms = [Term("input", "input", x * record.input_grad)]
    by_call: dict[int, Term] = {}
    for i, call in enumerate(record.calls):
        if call.grad is None:
            continue
        if call.value is not None:  # a saturating activation
            contribution = call.value * call.grad
            host = by_call.get(call.source) if call.source is not None else None
            if host is not None and host.contribution.shape == contribution.shape:
                host.contribution += contribution  # a fresh tensor of ours
                host.kind += f"+{type(call.module).__name__}"
                continue
        else:
            b = bias_of(call.module).detach()
            contribution = _channel_view(call.module, b, call.grad) * call.grad
        term = Term(call.name, type(call.module).__name__, contribution)
        by_call[i] = term
        terms.append(term)
    return terms


def decompose(
    model: nn.Module, x: Tensor, target: Target = None, strict: bool = True
) -> Decomposition:
    """Split the target logit of each sample into its input term and bias terms.

    Args:
        model: a classifier in eval mode whose nonlinearities are piecewise linear.
        x: input [B,C,H,W], normalised as the model expects.
        target: the explained class (None: top-1 of each sample).
        strict: refuse models that cannot be decomposed (see :func:`check_decomposable`)
            and results whose completeness gap exceeds the float32 tolerance. With
            ``strict=False`` the terms are computed anyway and ``gap`` tells how far off.
    """
    if strict:
        check_decomposable(model)
    record = capture(model, x, target, bias_watch(model))
    result = Decomposition(record, terms_from_record(record))
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
