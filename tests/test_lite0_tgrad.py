"""T-Grad on the real, offline EfficientNet-Lite0, -Lite1 and -Lite2 and the bundled photos.

Every test runs once per model; the counts follow from the model's number of MBConv
blocks N (block 0 has no expansion): 2N + 1 ``BatchNorm2d+ReLU6`` layers (stem, 2 per
block but 1 in block 0, head), N projection BatchNorms, and a last feature map of
ceil(crop / 32) pixels a side.
"""

import math
from pathlib import Path

import pytest
import torch

from tgrad.decompose import completeness_tolerance
from tgrad.images import load_image
from tgrad.models import load_model
from tgrad.tgrad import TGrad

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PHOTOS = ["coffee.jpg", "chelsea.jpg", "astronaut.jpg", "rocket.jpg"]
# name -> MBConv blocks in the packaged checkpoint
LITE_BLOCKS = {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}


# Lite1 and Lite2 at full resolution are slow; Lite0 stays in the fast loop
MODELS = [
    n if n == "efficientnet_lite0" else pytest.param(n, marks=pytest.mark.slow) for n in LITE_BLOCKS
]


@pytest.fixture(scope="module", params=MODELS)
def lite(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def batch(lite):
    return torch.stack([lite.preprocessing(load_image(ASSETS / p)) for p in PHOTOS])


@pytest.fixture(scope="module")
def result(lite, batch):
    return TGrad(lite.module)(batch)


def test_completeness_with_real_weights_batch_of_4(result):
    assert (result.gap.abs() <= completeness_tolerance(result.logit)).all(), result.gap


def test_one_term_per_layer_with_saturation_merged(result, lite):
    blocks = LITE_BLOCKS[lite.name]
    assert len(lite.module._blocks) == blocks
    sources = [t.source for t in result.terms]
    # stem BN, the blocks (block 0 without expansion: 2 BNs + ReLU6 once), head BN, fc
    assert sources.count("BatchNorm2d+ReLU6") == 1 + 1 + (blocks - 1) * 2 + 1
    assert sources.count("BatchNorm2d") == blocks
    # SPEC 2's kinds: a BatchNorm's shift with the saturated ReLU6 units joined to it
    kinds = [t.kind for t in result.terms]
    assert kinds.count("bias+saturation") == sources.count("BatchNorm2d+ReLU6")
    assert kinds.count("bias") == blocks + 1  # the projection BatchNorms and the fc
    assert [t.name for t in result.terms if not t.spatial] == ["_fc"]
    assert len(result.spatial_terms) == 1 + (2 * blocks + 1) + blocks
    crop = lite.preprocessing.crop
    last = math.ceil(crop / 32)  # 7, 8, 9
    assert result.terms[0].grid == (crop, crop) and result.terms[-2].grid == (last, last)


def test_saturated_units_carry_part_of_the_logit(lite, batch):
    from tgrad.capture import capture

    def at_six(module, inputs, output):
        return output >= module.max_val  # where a ReLU6 unit is saturated

    watch = {m: at_six for m in lite.module.modules() if isinstance(m, torch.nn.ReLU6)}
    record = capture(lite.module, batch[:1], None, watch)
    saturated = [c for c in record.calls if c.value is not None and c.grad is not None]
    share = sum(float((6.0 * c.value * c.grad).sum()) for c in saturated)
    assert len(saturated) == 2 * LITE_BLOCKS[lite.name] + 1  # every ReLU6
    assert abs(share) > 0.1  # without these terms completeness would fail (1.1 .. 2.1)


def test_coffee_is_espresso_and_the_saliency_holds_exactly_the_positive_scores(result, lite):
    """Formula 8 on the real model: phi divides every layer map by its sum, so each
    spatial term t adds exactly score_t = ReLU(sum C_t) to the saliency's total (a term
    with a positive score has a positive map, and a term whose map sums to 0 has score
    0); the Linear bias, with no map, adds nothing. The expected total comes from the
    terms' contributions alone, independently of the maps."""
    assert lite.categories[int(result.target[0])] in {"espresso", "cup", "coffee mug"}
    saliency = result.saliency
    assert torch.isfinite(saliency).all() and (saliency >= 0).all()
    expected = sum(t.contribution.clamp(min=0) for t in result.terms if t.spatial)
    assert (expected > 0).all()
    # float32: each map's sum and its upsampling weights are exact to ~1e-6 relative
    torch.testing.assert_close(saliency.sum((1, 2)), expected, rtol=1e-4, atol=0)
