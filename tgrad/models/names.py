"""The zoo's names and what is known of a model without its weights: the model names,
how each is exact, the preprocessing, the ImageNet class names, the offline switch."""

from __future__ import annotations

import os

import torchvision
from torchvision.models import WeightsEnum

from tgrad import timm_zoo
from tgrad.lite import LITE_VARIANTS
from tgrad.preprocessing import Preprocessing, lite_preprocessing

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
