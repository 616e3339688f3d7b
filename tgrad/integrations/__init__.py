"""T-Grad inside the libraries researchers already use.

* :mod:`tgrad.integrations.captum`: ``TGradAttribution(model)``, a captum ``Attribution``
  (works in ``NoiseTunnel`` and ``captum.attr.visualization``);
* :mod:`tgrad.integrations.pytorch_grad_cam`: ``TGradCAM(model)``, called like
  pytorch-grad-cam's CAMs (``show_cam_on_image`` and the ROAD metrics take its output);
* :mod:`tgrad.integrations.quantus`: ``explain``, a Quantus ``explain_func`` for any method
  of :data:`tgrad.methods.METHODS`.

Each library is an optional extra of the package (``pip install 'tgrad-explorer[captum]'``,
``[grad-cam]``, ``[quantus]``). Nothing here is imported by ``import tgrad``: a library is
imported when its adapter module is, and a missing one raises :class:`MissingExtraError`
naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PACKAGE = "tgrad-explorer"
"""The distribution name the extras belong to (pyproject.toml)."""


class MissingExtraError(ImportError):
    """An adapter's library is not installed; the message says which extra installs it."""


def require(module: str, extra: str, adapter: str) -> ModuleType:
    """Import ``module`` for ``adapter``, or raise :class:`MissingExtraError` saying
    ``pip install 'tgrad-explorer[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{adapter} needs the optional library {module.partition('.')[0]!r}, which is not "
            f"installed: pip install '{PACKAGE}[{extra}]'"
        ) from error


__all__ = ["PACKAGE", "MissingExtraError", "require"]
