"""Completeness: the logit as an input term plus one term per layer (SPEC section 1).

Every operation of the forward is replaced by its tangent at the current point
(:mod:`tgrad.ops`), which makes the network an affine function of ``x`` with the same
value and gradient, so that exactly

    y = <x, dy/dx> + sum over operations of <c_op, dy/dz_op>

with ``c_op`` each operation's intercept. On a network whose nonlinearities are piecewise
linear the intercepts are the biases, BatchNorm's shift and ReLU6's saturation: the
paper's decomposition. :mod:`tgrad.terms` groups the intercepts into one term per layer;
this module checks the model, runs the pass and checks the gap.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from tgrad.capture import Record, Target, capture, check_model
from tgrad.ops import batchnorm_shift
from tgrad.terms import NotDecomposableError, Term, TermCollector, make_term

BIASED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, _BatchNorm)
"""Modules that add a bias (their output is ``W x + b``)."""

SATURATING = (nn.Hardtanh,)  # nn.ReLU6 is a Hardtanh(0, 6)
"""Activations whose saturated units are constants, i.e. biases."""

SPATIAL = (nn.Conv2d, _BatchNorm)
"""Biased modules whose 4-D output is ``[B,C,h,w]`` (channels first)."""

_STOCHASTIC = frozenset({"StochasticDepth", "DropPath", "DropBlock2d", "DropBlock"})
"""Module types (torchvision, timm) that drop random paths in training mode."""

__all__ = [
    "BIASED",
    "SATURATING",
    "SPATIAL",
    "Decomposition",
    "NotDecomposableError",
    "Term",
    "TermCollector",
    "bias_of",
    "changing_modules",
    "check_decomposable",
    "check_gap",
    "completeness_tolerance",
    "decompose",
    "how_exact",
    "make_term",
    "unsupported_modules",
]


def how_exact(terms: tuple[Term, ...] | list[Term]) -> str:
    """How a decomposition is exact, from its terms' kinds: a piecewise-linear network's
    terms are biases (the paper's decomposition), a smooth one's include intercepts."""
    roles = {role for t in terms for role in t.kind.split("+")}
    if roles & {"activation", "gate", "norm"}:
        return "exact through tangent intercepts (smooth activations, gates, norms)"
    return "exact: piecewise linear, its terms are biases"


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

    BatchNorm, Dropout and stochastic depth (torchvision's ``StochasticDepth``, timm's
    ``DropPath``) in training mode (batch statistics, random units or paths), and
    BatchNorm without running statistics. What the modules compute is checked during
    the forward, operation by operation (:mod:`tgrad.ops`).
    """
    found = []
    for name, m in model.named_modules():
        random = isinstance(m, _DropoutNd) or type(m).__name__ in _STOCHASTIC
        if m.training and (isinstance(m, _BatchNorm) or random):
            found.append(f"{_label(name, m)}: in training mode, call model.eval()")
        elif isinstance(m, _BatchNorm) and m.running_mean is None:
            found.append(f"{_label(name, m)}: no running statistics (track_running_stats=False)")
    return found


def _refuse(found: list[str], advice: str) -> None:
    if found:
        raise NotDecomposableError(
            "this model cannot be decomposed exactly into its input and layer terms: "
            + "; ".join(found)
            + advice
        )


def check_decomposable(model: nn.Module) -> None:
    """Raise :class:`NotDecomposableError` naming every module whose state breaks
    completeness (see :func:`unsupported_modules`); ValueError for a non-module."""
    check_model(model)
    _refuse(
        unsupported_modules(model),
        ". Pass strict=False to run anyway and report the completeness gap.",
    )


def bias_of(module: nn.Module) -> Tensor | None:
    """The bias vector a module adds to its output (one value per output channel).

    BatchNorm in eval mode: ``beta - gamma * running_mean / sqrt(running_var + eps)``.
    """
    if isinstance(module, _BatchNorm):
        return batchnorm_shift(
            module.running_mean, module.running_var, module.weight, module.bias, module.eps
        )
    return getattr(module, "bias", None)


@dataclass(frozen=True)
class Decomposition:
    """The logit split into an input term and layer terms (input first, forward order)."""

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


def decompose(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    strict: bool = True,
    keep_elementwise: bool = False,
) -> Decomposition:
    """Split the target logit of each sample into its input term and layer terms.

    Args:
        model: a classifier in eval mode (any differentiable network returning logits).
        x: input [B,C,H,W], normalised as the model expects.
        target: the explained class (None: top-1 of each sample).
        strict: refuse what cannot be decomposed exactly: modules in training mode whose
            forward is random or uses batch statistics (before the forward), an operation
            that draws random numbers or has neither a closed-form intercept nor a
            forward-mode derivative (naming the operation and the module), and results
            whose completeness gap exceeds the float32 tolerance. With ``strict=False``
            the terms are computed anyway and ``gap`` tells how far off.
        keep_elementwise: also keep every term's element-wise contribution C (as much
            memory as the activations); by default each is reduced to its total and map
            during the backward pass and freed.

    Raises:
        NotDecomposableError: (strict) see above; strict or not, a model whose forward
            would change it (BatchNorm in training mode updates its running statistics).
        ValueError: a bad model, input or target (see :func:`~tgrad.capture.capture`).
    """
    check_model(model)
    _refuse(changing_modules(model), ".")
    if strict:
        check_decomposable(model)
    collector = TermCollector(keep_elementwise, strict=strict)
    record = capture(model, x, target, on_op=collector.on_op, on_unseen=collector.on_unseen)
    result = Decomposition(record, collector.finish(record))
    if strict:
        check_gap(result)
    return result


def check_gap(result: Decomposition) -> None:
    """Raise if the completeness gap of any sample exceeds the float32 tolerance, or is
    not a number (a NaN or infinite logit).

    A second line of defence behind the per-operation checks: it catches what no
    operation check names, whatever the cause.
    """
    gap = result.gap.abs()
    bad = ~(gap <= completeness_tolerance(result.logit))  # NaN compares False: bad
    if bool(bad.any()):
        worst = int(torch.where(bad, gap.nan_to_num(float("inf")), -1.0).argmax())
        raise NotDecomposableError(
            f"completeness gap {float(gap[worst]):.3g} for logit {float(result.logit[worst]):.4g} "
            "exceeds 1e-4 * max(1, |logit|): an operation's intercept was missed or is "
            "computed with too little precision. Pass strict=False to get the terms and "
            "the gap anyway."
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
