"""T-Grad as a captum ``Attribution`` (the ``captum`` extra).

>>> from tgrad.integrations.captum import TGradAttribution
>>> tgrad = TGradAttribution(model)
>>> maps = tgrad.attribute(x, target=281)                      # [B,1,H,W]
>>> maps, gap = tgrad.attribute(x, target=281, return_convergence_delta=True)
>>> NoiseTunnel(tgrad).attribute(x, nt_type="smoothgrad", nt_samples=8, target=281)

The attribution is the T-Grad saliency of :class:`tgrad.TGrad` (formula 8, logit units
per pixel, not normalised), the map ``tgrad.methods.explain(..., methods="tgrad")`` gives,
with one channel axis: ``[B,1,H,W]``, like captum's layer attributions, so it broadcasts
over the image's channels in ``captum.attr.visualization``. Its convergence delta is the
completeness gap of SPEC 1, ``y - (input term + all layer terms)`` per sample, in logit
units: the T-Grad map itself does not sum to the logit (it keeps each term's positive
share), so the delta comes from the decomposition the map is made of.

Importing this module imports captum; without it, :class:`~tgrad.integrations.MissingExtraError`
says ``pip install 'tgrad-explorer[captum]'``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tgrad.capture import Target
from tgrad.integrations import require
from tgrad.tgrad import TGrad, TGradResult

_attr = require("captum.attr", "captum", "tgrad.integrations.captum")
_log = require("captum.log", "captum", "tgrad.integrations.captum")


def _image(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, bool]:
    """The one image batch in captum's ``inputs`` (a tensor or a 1-tuple), and whether it
    came as a tuple."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise ValueError(f"T-Grad explains one input tensor, got a tuple of {len(inputs)}")
        return inputs[0], True
    return inputs, False


def _target(target: Any) -> Target:
    """captum's target for a classifier: None, an int, a list of ints or a tensor [B]."""
    if isinstance(target, tuple):
        raise ValueError(
            "T-Grad explains one logit of a classifier's [B,K] output: give the class as an "
            f"int, a list or a tensor, not the tuple {target!r}"
        )
    return target


class TGradAttribution(_attr.Attribution):
    """T-Grad for a classifier (``nn.Module`` returning logits ``[B,K]``), as a captum
    ``Attribution``.

    Args:
        model: the classifier, in eval mode (its own forward is used: T-Grad needs the
            modules, not just a function).
        strict: as :class:`tgrad.TGrad`: refuse a model that does not decompose exactly,
            or a result whose completeness gap is above ``1e-4 * max(1, |y|)``.
    """

    def __init__(self, model: nn.Module, strict: bool = True) -> None:
        super().__init__(model)
        self.explainer = TGrad(model, strict=strict)

    def _explain(self, x: Tensor, target: Any) -> TGradResult:
        return self.explainer(x, _target(target))

    @_log.log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        return_convergence_delta: bool = False,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        """T-Grad maps of ``inputs`` [B,C,H,W] (normalised as the model expects).

        Args:
            inputs: one image batch, or a 1-tuple holding it (the result has the same form).
            target: the explained class: an int, one per sample (list or tensor), or None
                for each sample's top-1 (captum's own methods need it given).
            return_convergence_delta: also return the completeness gap [B].

        Returns:
            The maps [B,1,H,W] on the input's device (a 1-tuple if ``inputs`` was one), and
            with ``return_convergence_delta`` the gap [B] in logit units.
        """
        x, as_tuple = _image(inputs)
        result = self._explain(x, target)
        maps = (result.saliency[:, None],) if as_tuple else result.saliency[:, None]
        return (maps, result.gap) if return_convergence_delta else maps

    def has_convergence_delta(self) -> bool:
        """True: the completeness gap (see the module docstring)."""
        return True

    def compute_convergence_delta(
        self,
        attributions: Tensor | tuple[Tensor, ...],
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
    ) -> Tensor:
        """The completeness gap ``y - sum of all terms`` [B] (logit units) at ``inputs``.

        ``attributions`` are only checked for their batch size: the gap is a property of
        the decomposition at ``inputs``, which the T-Grad map alone does not determine.
        """
        maps, _ = _image(attributions)
        x, _ = _image(inputs)
        if maps.shape[0] != x.shape[0]:
            raise ValueError(f"{maps.shape[0]} attributions for a batch of {x.shape[0]} inputs")
        return self._explain(x, target).gap


__all__ = ["TGradAttribution"]
