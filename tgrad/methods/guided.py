"""Guided Backpropagation (Springenberg et al. 2015), in the gradient family of SPEC 3.

The gradient ``dy/dx`` computed with one change to the backward rule of the rectifiers:
at every ReLU-family activation module (:data:`RECTIFIERS`: ``ReLU``, ``ReLU6`` and any
``Hardtanh``, ``LeakyReLU``, ``PReLU``, ``RReLU``) only the positive part of the gradient
passes back, ``relu(dy/d out) * d out/d in``, which equals captum's
``relu(dy/d in)`` because the local derivative of a rectifier is never negative. Reduced
to a map by ``sum_c |a|`` like the rest of the family.

Why every rectifier and not only ``nn.ReLU``: captum's ``GuidedBackprop`` overrides
``nn.ReLU`` alone, so on EfficientNet-Lite0 (whose activations are ``ReLU6``) it silently
returns the plain gradient. The rule is written with :func:`tgrad.capture.capture`'s
``rules`` (a tensor hook on each activation's output, registered from a forward hook, as
every other gradient of the engine), so a module reused several times in a forward
gets the rule at each call. Rectifiers called as functions (``F.relu`` in a ``forward``,
such as torchvision DenseNet's last one) are not modules and keep the plain gradient, as
in captum. The pass is the method's own: a rewritten backward would change the gradients
of every method sharing the pass.
"""

from __future__ import annotations

from torch import Tensor, nn

from tgrad.capture import Call, Record, capture
from tgrad.methods.base import no_grad_kept, reduce_channels
from tgrad.methods.gradient import WatchesNothing

RECTIFIERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU)
"""The activation modules that get the guided rule (``nn.ReLU6`` is a ``Hardtanh``)."""


def positive_part(call: Call, grad: Tensor) -> Tensor:
    """The guided rule at a rectifier's output: only positive gradients pass back."""
    return grad.clamp(min=0)


class GuidedBackprop(WatchesNothing):
    """Guided Backpropagation: ``dy/dx`` with the guided rule at every rectifier module."""

    def attribution(self, record: Record) -> Tensor:
        """The guided gradient [B,C,H,W] of each sample's target logit (its own pass)."""
        model = self.setup.model
        rules = {m: positive_part for m in model.modules() if isinstance(m, RECTIFIERS)}
        guided = capture(model, record.input, record.target, on_grad=no_grad_kept, rules=rules)
        return guided.input_grad

    def attribute(self, record: Record) -> Tensor:
        return reduce_channels(self.attribution(record))


__all__ = ["RECTIFIERS", "GuidedBackprop", "positive_part"]
