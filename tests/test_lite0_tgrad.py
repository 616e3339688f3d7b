"""T-Grad on the real, offline EfficientNet-Lite0 and the bundled photos."""

from pathlib import Path

import pytest
import torch

from tgrad.decompose import completeness_tolerance
from tgrad.images import load_image
from tgrad.models import load_model
from tgrad.tgrad import TGrad

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PHOTOS = ["coffee.jpg", "chelsea.jpg", "astronaut.jpg", "rocket.jpg"]


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def batch(lite0):
    return torch.stack([lite0.preprocessing(load_image(ASSETS / p)) for p in PHOTOS])


@pytest.fixture(scope="module")
def result(lite0, batch):
    return TGrad(lite0.module)(batch)


def test_completeness_with_real_weights_batch_of_4(result):
    assert (result.gap.abs() <= completeness_tolerance(result.logit)).all(), result.gap


def test_one_term_per_layer_with_saturation_merged(result):
    kinds = [t.kind for t in result.terms]
    # stem BN, 16 blocks (block 0 without expansion: 2 BNs + ReLU6 once), head BN, fc
    assert kinds.count("BatchNorm2d+ReLU6") == 1 + 1 + 15 * 2 + 1
    assert kinds.count("BatchNorm2d") == 16
    assert [t.name for t in result.terms if not t.spatial] == ["_fc"]
    assert len(result.spatial_terms) == 1 + 49
    assert result.terms[0].grid == (224, 224) and result.terms[-2].grid == (7, 7)


def test_saturated_units_carry_part_of_the_logit(lite0, batch):
    from tgrad.capture import capture
    from tgrad.decompose import bias_watch

    record = capture(lite0.module, batch[:1], None, bias_watch(lite0.module))
    saturated = [c for c in record.calls if c.value is not None and c.grad is not None]
    share = sum(float((6.0 * c.value[0] * c.grad).sum()) for c in saturated)
    assert len(saturated) == 33
    assert abs(share) > 0.1  # without these terms completeness would fail


def test_coffee_is_explained_as_espresso_and_the_map_sits_on_the_cup(result, lite0):
    assert lite0.categories[int(result.target[0])] in {"espresso", "cup", "coffee mug"}
    saliency = result.saliency[0]
    assert torch.isfinite(saliency).all() and (saliency >= 0).all()
    # the cup sits in the middle of the crop: the central quarter of the area holds
    # clearly more than a quarter of the mass (34% when written)
    h, w = saliency.shape
    centre = saliency[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].sum()
    assert centre > 0.3 * saliency.sum()
