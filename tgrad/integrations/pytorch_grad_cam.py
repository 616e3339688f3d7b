"""T-Grad called like pytorch-grad-cam's CAMs (the ``grad-cam`` extra).

>>> from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
>>> from tgrad.integrations.pytorch_grad_cam import TGradCAM
>>> with TGradCAM(model) as cam:
...     maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)] * len(x))
>>> show_cam_on_image(rgb, maps[0], use_rgb=True)
>>> ROADCombined()(x, maps, targets, model)

The answer is pytorch-grad-cam's: a float32 numpy array ``[B,H,W]`` in [0, 1] at the
input's size, each map the T-Grad saliency (:class:`tgrad.TGrad`, formula 8) scaled by
the library's own ``scale_cam_image`` (``m - min``, then divided by ``1e-7 + max``), as
its CAMs are. There is no target layer: T-Grad uses every layer. A target must be a
``ClassifierOutputTarget`` (T-Grad decomposes a class logit, which is what it selects);
``None`` explains each image's top-1, as the library does.

Importing this module imports pytorch-grad-cam; without it,
:class:`~tgrad.integrations.MissingExtraError` says ``pip install 'tgrad-explorer[grad-cam]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tgrad.integrations import require
from tgrad.tgrad import TGrad

_ADAPTER = "tgrad.integrations.pytorch_grad_cam"
_targets = require("pytorch_grad_cam.utils.model_targets", "grad-cam", _ADAPTER)
_image = require("pytorch_grad_cam.utils.image", "grad-cam", _ADAPTER)


def _categories(targets: Sequence[Any] | None, batch: int) -> list[int] | None:
    """The class of each image from pytorch-grad-cam targets (None: each top-1)."""
    if targets is None:
        return None
    targets = list(targets)
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
    wrong = [type(t).__name__ for t in targets if type(t) is not _targets.ClassifierOutputTarget]
    if wrong:
        raise ValueError(
            "T-Grad decomposes a class logit: give ClassifierOutputTarget(class) targets, "
            f"not {wrong[0]}"
        )
    return [t.category for t in targets]


class TGradCAM:
    """T-Grad with pytorch-grad-cam's calling convention (see the module docstring).

    Args:
        model: the classifier, in eval mode, returning logits ``[B,K]``.
        strict: as :class:`tgrad.TGrad`: refuse a model that does not decompose exactly.

    Attributes:
        outputs: the logits ``[B,K]`` of the last call (as the library's CAMs keep them).
    """

    def __init__(self, model: nn.Module, strict: bool = True) -> None:
        self.model = model
        self.explainer = TGrad(model, strict=strict)
        self.outputs: Tensor | None = None

    def __call__(
        self,
        input_tensor: Tensor,
        targets: Sequence[Any] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Maps [B,H,W] float32 in [0, 1] for ``input_tensor`` [B,C,H,W] (normalised as
        the model expects; moved to the model's device, as the library does).

        ``aug_smooth`` and ``eigen_smooth`` are the library's options for its CAMs; T-Grad
        has neither (it is exact for one image and has no activation matrix to smooth),
        so asking for one is an error rather than a silent no-op.
        """
        if aug_smooth or eigen_smooth:
            raise ValueError("T-Grad has no aug_smooth or eigen_smooth: leave both False")
        parameter = next(self.model.parameters(), None)
        x = input_tensor if parameter is None else input_tensor.to(parameter.device)
        result = self.explainer(x, _categories(targets, x.shape[0]))
        self.outputs = result.logits
        maps = result.saliency.detach().to("cpu", torch.float32).numpy()
        return _image.scale_cam_image(maps)

    def __enter__(self) -> TGradCAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Nothing to release: T-Grad's hooks live only during a call."""


__all__ = ["TGradCAM"]
