"""The two models every adapter is tested on: EfficientNet-Lite0 with its real weights on
two bundled photos, and a torchvision ResNet-18 with random weights (non-trivial BatchNorm
statistics and biases) on two photos at 128 px."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tests.nets import perturb
from tgrad.images import load_image
from tgrad.models import Preprocessing, load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS = ("efficientnet_lite0", "resnet18")
PHOTOS = ("coffee", "chelsea")


@functools.cache
def case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Preprocessing]:
    """(model, x [2,3,H,W] normalised, the top-1 class of each photo [2], preprocessing)."""
    if name == "efficientnet_lite0":
        loaded = load_model(name)
        model = loaded.module
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loaded = load_model(name, weights="random")
        model = perturb(loaded.module)
    x = torch.stack([loaded.preprocessing(load_image(ASSETS / f"{p}.jpg")) for p in PHOTOS])
    if name != "efficientnet_lite0":
        x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target, loaded.preprocessing
