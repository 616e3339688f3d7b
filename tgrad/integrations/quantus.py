"""The project's methods as a Quantus ``explain_func`` (the ``quantus`` extra).

>>> import quantus
>>> from tgrad.integrations.quantus import explain
>>> mprt = quantus.MPRT(layer_order="top_down", seed=0)
>>> scores = mprt(model=model, x_batch=x, y_batch=y, explain_func=explain,
...               explain_func_kwargs={"method": "tgrad"})

``explain(model, inputs, targets, **kwargs)`` is the signature Quantus calls: numpy in,
numpy out. The answer is ``tgrad.methods.explain``'s raw map for the method (T-Grad by
default), unnormalised, as float32 ``[B,1,H,W]``: the channel axis kept with size one, as
Quantus's own ``explain`` returns it (Quantus then applies its metric's ``abs`` and
``normalise`` settings itself).

This function needs nothing of Quantus: it is what Quantus calls. The ``quantus`` extra
installs Quantus itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tgrad.methods import explain as explain_maps

KWARGS = ("method", "options", "device")
"""The keyword arguments :func:`explain` takes (Quantus adds ``device`` when given one)."""


def explain(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
    """Maps of ``inputs`` for ``targets`` with one method of :data:`tgrad.methods.METHODS`.

    Args:
        model: the classifier (``nn.Module`` in eval mode returning logits ``[B,K]``).
        inputs: images ``[B,C,H,W]`` normalised as the model expects (numpy or torch).
        targets: the class of each image (``[B]`` or one int).
        **kwargs: ``method`` (``"tgrad"``), ``options`` (that method's options, see
            ``METHODS[method].options``), ``device`` (default: the model's).

    Returns:
        float32 numpy ``[B,1,H,W]``: the method's raw map.
    """
    unknown = sorted(set(kwargs) - set(KWARGS))
    if unknown:
        raise TypeError(f"explain got unknown keyword(s) {unknown}; it takes {list(KWARGS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    method = kwargs.get("method", "tgrad")
    device = kwargs.get("device")
    if device is None:
        parameter = next(model.parameters(), None)
        device = "cpu" if parameter is None else parameter.device
    x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
    target = torch.as_tensor(targets, device=device).reshape(-1)
    options = {method: kwargs["options"]} if kwargs.get("options") else None
    maps = explain_maps(model, x, target, methods=(method,), options=options)[method]
    return maps[:, None].detach().to("cpu", torch.float32).numpy()


__all__ = ["KWARGS", "explain"]
