"""Readable layer names (tgrad.layers) for the terms of real models: EfficientNet-Lite0
(offline weights) and torchvision's ResNet-18, VGG-16, MobileNetV2, DenseNet-121 and
AlexNet. The torchvision models are built on the meta device and given zero weights
(their init is most of the cost); only the terms' names, kinds and grids matter here.
"""

import re

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tgrad.decompose import Term
from tgrad.layers import LayerLabel, layer_labels
from tgrad.models import load_model
from tgrad.tgrad import TGrad

TORCHVISION = ["resnet18", "vgg16", "mobilenet_v2", "densenet121", "alexnet"]


def _blank(name: str) -> nn.Module:
    """A torchvision model with zero weights and fresh BatchNorm statistics, in eval."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.reset_parameters()  # also resets the running statistics
            else:
                for p in m.parameters(recurse=False):
                    p.zero_()
    return model.eval()


def _labelled(model: nn.Module, size: int) -> tuple[list[Term], dict[str, LayerLabel]]:
    terms = list(TGrad(model)(torch.zeros(1, 3, size, size)).terms)
    labels = layer_labels(model, terms)
    assert len(labels) == len(terms)
    assert [label.path for label in labels] == [t.name for t in terms]
    return terms, {label.path: label for label in labels}


@pytest.fixture(scope="module")
def models():
    """The terms and labels of each model by name, each built and run once, when first asked."""
    cache: dict[str, tuple[list[Term], dict[str, LayerLabel]]] = {}

    def get(name: str) -> tuple[list[Term], dict[str, LayerLabel]]:
        if name not in cache:
            if name == "efficientnet_lite0":
                cache[name] = _labelled(load_model(name).module, 224)
            else:
                cache[name] = _labelled(_blank(name), 64)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def lite0(models):
    return models("efficientnet_lite0")


def _check(labels: dict[str, LayerLabel], path: str, title: str, detail: str) -> None:
    label = labels[path]
    assert (label.title, label.path, label.detail) == (title, path, detail)


def test_lite0_titles(lite0):
    _, labels = lite0
    _check(
        labels,
        "input",
        "Input · 224 x 224",
        "the input image times the logit's gradient (x * dy/dx)",
    )
    _check(
        labels,
        "_bn0",
        "Stem · conv · 112 x 112",
        "Conv2d 3x3, stride 2 (3 -> 32 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "_blocks.0._bn1",
        "Block 1 · depthwise conv · 112 x 112",
        "Conv2d 3x3 depthwise (32 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "_blocks.1._bn0",
        "Block 2 · expand conv · 112 x 112",
        "Conv2d 1x1 (16 -> 96 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "_blocks.1._bn1",
        "Block 2 · depthwise conv · 56 x 56",
        "Conv2d 3x3 depthwise, stride 2 (96 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "_blocks.1._bn2",
        "Block 2 · project conv · 56 x 56",
        "Conv2d 1x1 (96 -> 24 channels) -> BatchNorm2d",
    )
    _check(
        labels,
        "_blocks.15._bn1",
        "Block 16 · depthwise conv · 7 x 7",
        "Conv2d 3x3 depthwise (1152 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "_bn1",
        "Head · 1x1 conv · 7 x 7",
        "Conv2d 1x1 (320 -> 1280 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(labels, "_fc", "Classifier bias", "Linear 1280 -> 1000 features")


def test_lite0_every_block_term(lite0):
    """Expand (absent in block 0), depthwise and project in each of the 16 blocks."""
    terms, labels = lite0
    ops = {"_bn0": "expand conv", "_bn1": "depthwise conv", "_bn2": "project conv"}
    blocks = [t for t in terms if t.name.startswith("_blocks.")]
    assert len(blocks) == 3 * 16 - 1
    for t in blocks:
        _, index, bn = t.name.split(".")
        h, w = t.grid
        assert labels[t.name].title == f"Block {int(index) + 1} · {ops[bn]} · {h} x {w}"


def test_resnet18(models):
    _, labels = models("resnet18")
    _check(
        labels,
        "bn1",
        "Stem · conv · 32 x 32",
        "Conv2d 7x7, stride 2 (3 -> 64 channels) -> BatchNorm2d",
    )
    _check(
        labels,
        "layer2.0.bn1",
        "Layer 2 · Block 1 · conv · 8 x 8",
        "Conv2d 3x3, stride 2 (64 -> 128 channels) -> BatchNorm2d",
    )
    _check(
        labels,
        "layer2.0.downsample.1",
        "Layer 2 · Block 1 · shortcut conv · 8 x 8",
        "Conv2d 1x1, stride 2 (64 -> 128 channels) -> BatchNorm2d",
    )
    _check(
        labels,
        "layer4.1.bn2",
        "Layer 4 · Block 2 · conv · 2 x 2",
        "Conv2d 3x3 (512 -> 512 channels) -> BatchNorm2d",
    )
    _check(labels, "fc", "Classifier bias", "Linear 512 -> 1000 features")


def test_vgg16(models):
    _, labels = models("vgg16")
    _check(labels, "features.0", "Layer 1 · conv · 64 x 64", "Conv2d 3x3 (3 -> 64 channels)")
    _check(labels, "features.5", "Layer 3 · conv · 32 x 32", "Conv2d 3x3 (64 -> 128 channels)")
    _check(labels, "features.28", "Layer 13 · conv · 4 x 4", "Conv2d 3x3 (512 -> 512 channels)")
    _check(labels, "classifier.0", "Classifier bias (layer 1)", "Linear 25088 -> 4096 features")
    _check(labels, "classifier.3", "Classifier bias (layer 2)", "Linear 4096 -> 4096 features")
    _check(labels, "classifier.6", "Classifier bias (layer 3)", "Linear 4096 -> 1000 features")


def test_mobilenet_v2(models):
    _, labels = models("mobilenet_v2")
    _check(
        labels,
        "features.0.1",
        "Block 1 · conv · 32 x 32",
        "Conv2d 3x3, stride 2 (3 -> 32 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "features.2.conv.0.1",
        "Block 3 · 1x1 conv · 32 x 32",
        "Conv2d 1x1 (16 -> 96 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "features.2.conv.1.1",
        "Block 3 · depthwise conv · 16 x 16",
        "Conv2d 3x3 depthwise, stride 2 (96 channels) -> BatchNorm2d -> ReLU6",
    )
    _check(
        labels,
        "features.2.conv.3",
        "Block 3 · 1x1 conv · 16 x 16",
        "Conv2d 1x1 (96 -> 24 channels) -> BatchNorm2d",
    )
    _check(labels, "classifier.1", "Classifier bias", "Linear 1280 -> 1000 features")


def test_densenet121(models):
    _, labels = models("densenet121")
    _check(
        labels,
        "features.norm0",
        "Stem · conv · 32 x 32",
        "Conv2d 7x7, stride 2 (3 -> 64 channels) -> BatchNorm2d",
    )
    _check(
        labels,
        "features.denseblock1.denselayer1.norm1",
        "Dense block 1 · Dense layer 1 · batch norm · 16 x 16",
        "BatchNorm2d (64 channels)",
    )
    _check(
        labels,
        "features.denseblock3.denselayer4.norm2",
        "Dense block 3 · Dense layer 4 · 1x1 conv · 4 x 4",
        "Conv2d 1x1 (352 -> 128 channels) -> BatchNorm2d",
    )
    _check(
        labels,
        "features.transition1.norm",
        "Transition 1 · batch norm · 16 x 16",
        "BatchNorm2d (256 channels)",
    )
    _check(labels, "features.norm5", "Head · batch norm · 2 x 2", "BatchNorm2d (1024 channels)")
    _check(labels, "classifier", "Classifier bias", "Linear 1024 -> 1000 features")


def test_alexnet(models):
    _, labels = models("alexnet")
    _check(
        labels,
        "features.0",
        "Layer 1 · conv · 15 x 15",
        "Conv2d 11x11, stride 4 (3 -> 64 channels)",
    )
    _check(labels, "classifier.6", "Classifier bias (layer 3)", "Linear 4096 -> 1000 features")


@pytest.mark.parametrize("model", ["efficientnet_lite0", *TORCHVISION])
def test_titles_are_readable(models, model):
    """Every title is non-empty, shows no module path (no underscores, no ``a.b``) and
    ends with its grid when the term is spatial; each label is unique with its position."""
    terms, labels = models(model)
    seen = set()
    for position, term in enumerate(terms):
        label = labels[term.name]
        assert label.title.strip() and label.detail.strip(), term.name
        assert "_" not in label.title, label
        assert not re.search(r"\w\.\w", label.title), label
        if term.grid is not None:
            h, w = term.grid
            assert label.title.endswith(f" · {h} x {w}"), label
        else:
            assert " x " not in label.title, label
        seen.add((position, label.title, label.path))
    assert len(seen) == len(terms)
    assert len({label.path for label in labels.values()}) == len(terms)


class _Odd(nn.Module):
    """A ReLU6 and a Hardtanh with terms of their own, a biased conv before a BatchNorm, a
    Linear inside a named stage and a single classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.clip = nn.ReLU6()
        self.stage1 = nn.Sequential(
            nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Hardtanh()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp_2 = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        self.tail = nn.Hardtanh(-2.0, 3.0)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.stage1(self.clip(self.conv(x)))
        return self.fc(self.tail(self.mlp_2(self.pool(x).flatten(1))))


def test_edge_cases():
    model = _Odd().eval()
    terms = TGrad(model)(torch.zeros(1, 3, 8, 8)).terms
    got = [(label.path, label.title, label.detail) for label in layer_labels(model, terms)]
    assert got == [
        (
            "input",
            "Input · 8 x 8",
            "the input image times the logit's gradient (x * dy/dx)",
        ),
        ("clip", "Stem · ReLU6 clipping · 8 x 8", "ReLU6 clipping at 6"),
        ("stage1.0", "Stage 1 · conv · 4 x 4", "Conv2d 3x3, stride 2 (4 -> 4 channels)"),
        ("stage1.1", "Stage 1 · batch norm · 4 x 4", "BatchNorm2d (4 channels) -> Hardtanh"),
        ("mlp_2.0", "Mlp 2 · linear layer", "Linear 4 -> 3 features"),
        ("tail", "Head · Hardtanh clipping", "Hardtanh clipping at -2 and 3"),
        ("fc", "Classifier bias", "Linear 3 -> 2 features"),
    ]


def test_terms_of_another_model():
    """A term whose module is not in the model is labelled from its kind."""
    term = Term("elsewhere.bn", "BatchNorm2d+ReLU6", torch.zeros(1), torch.zeros(1, 5, 6))
    (label,) = layer_labels(nn.Sequential(), [term])
    assert label == LayerLabel(
        "Layer 1 · BatchNorm2d + ReLU6 · 5 x 6", "elsewhere.bn", "BatchNorm2d -> ReLU6"
    )


def test_the_terms_of_intercepts_are_named_for_what_made_them(models):
    """SPEC 1's new kinds (issue 14): a squeeze-excite gate, its two 1x1 convs, a SiLU or
    GELU joined to the layer feeding it, a LayerNorm."""
    _, labels = models("efficientnet_b0")
    _check(labels, "features.1.0.block.1", "Block 2 · squeeze-excite gate · 32 x 32",
           "SqueezeExcitation: the product of input-dependent tensors (mul)")  # fmt: skip
    _check(labels, "features.1.0.block.1.fc1", "Block 2 · squeeze-excite 1x1 conv",
           "Conv2d 1x1 (32 -> 8 channels) -> SiLU")  # fmt: skip
    _check(labels, "features.1.0.block.0.1", "Block 2 · depthwise conv · 32 x 32",
           "Conv2d 3x3 depthwise (32 channels) -> BatchNorm2d -> SiLU")  # fmt: skip
    _, labels = models("convnext_tiny")
    _check(labels, "features.0.1", "Block 1 · layer norm · 16 x 16",
           "LayerNorm2d: a normalisation, whose output is nearly all intercept")  # fmt: skip
    _check(labels, "features.1.0.block.3", "Block 2 · linear layer · 16 x 16",
           "Linear 96 -> 384 features -> GELU")  # fmt: skip
