"""Insertion/deletion and Average Drop/Increase (SPEC 4): curves and AUCs worked out by
hand on a toy model, chunking, substrates, validation, the model left untouched, and a
real check on Lite0 and the bundled photos."""

from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tests.nets import small_cnn
from tgrad.metrics import average_drop_increase, blur_substrate, insertion_deletion
from tgrad.models import LITE0_PREPROCESSING

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PHOTOS = ["coffee.jpg", "chelsea.jpg", "astronaut.jpg", "rocket.jpg"]
LITE0_STEPS = 16  # see test_lite0_tgrad_beats_a_random_map_on_insertion


class LinearProbability(nn.Module):
    """Two classes whose softmax probability is known in closed form.

    ``p = low + span * sum_ij w_ij * mean_c x_cij`` and the logits are ``log p,
    log(1 - p)``, so softmax gives back ``p`` and ``1 - p`` (up to float rounding). With
    ``sum w = 1`` and the image all ones over a substrate of zeros, inserting a set of
    pixels gives ``low + span * (their weight)``: every curve point is a sum of ``w``.
    """

    def __init__(self, weights: torch.Tensor, low: float = 0.1, span: float = 0.8) -> None:
        super().__init__()
        self.register_buffer("weights", weights)
        self.low, self.span = low, span

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.low + self.span * (self.weights * x.mean(1)).sum((1, 2))
        return torch.stack([p.log(), (1 - p).log()], 1)


# A 2 x 5 image (10 pixels): no n_steps below except 1, 2, 5, 10 divides it.
WEIGHTS = torch.tensor([[0.2, 0.1, 0.0, 0.3, 0.1], [0.2, 0.0, 0.0, 0.1, 0.0]])
# Row-major pixel indices 0..9. Ties: three 3s (pixels 1, 2, 5), two 1s (3, 7), two 0s
# (6, 9). Descending with stable ties the ranking is 4, 0, 1, 2, 5, 8, 3, 7, 6, 9.
# An unstable order could put pixel 5 (weight 0.2) before 1 (0.1) and 2 (0.0) and
# change the curves below.
SALIENCY = torch.tensor([[5.0, 3.0, 3.0, 1.0, 9.0], [3.0, 0.0, 1.0, 2.0, 0.0]])
ZEROS = torch.zeros(2, 1, 1)  # substrate: both channels 0


def toy(batch: int = 1):
    model = LinearProbability(WEIGHTS).eval()
    x = torch.ones(batch, 2, 2, 5)
    return model, x, SALIENCY.expand(batch, 2, 5).clone()


# Weight of the top-ranked pixels, by how many are changed (ranking 4,0,1,2,5,8,3,7,6,9):
# 0: 0 | 2: .1+.2 = .3 | 3: +.1 = .4 | 4: +0 = .4 | 6: +.2+.1 = .7 | 8: +.3+0 = 1 | 9, 10: 1
# insertion = .1 + .8 * weight; deletion = .1 + .8 * (1 - weight) = 1 - insertion.
HAND_CASES = {
    # n_steps: (fractions, insertion, insertion AUC)
    # ceil(10/4) = 3 per step, the last step clipped to one pixel:
    #   AUC = .3(.1+.42)/2 + .3(.42+.66)/2 + .3(.66+.9)/2 + .1(.9+.9)/2 = .564
    4: ([0, 0.3, 0.6, 0.9, 1], [0.1, 0.42, 0.66, 0.9, 0.9], 0.564),
    # ceil(10/3) = 4 per step: AUC = .4(.1+.42)/2 + .4(.42+.9)/2 + .2(.9+.9)/2 = .548
    3: ([0, 0.4, 0.8, 1], [0.1, 0.42, 0.9, 0.9], 0.548),
    # ceil(10/6) = 2 per step, the last step changes nothing (10 pixels in 5 steps):
    #   AUC = .2/2 (.44 + .76 + 1.08 + 1.56 + 1.8) + 0 = .564
    6: ([0, 0.2, 0.4, 0.6, 0.8, 1, 1], [0.1, 0.34, 0.42, 0.66, 0.9, 0.9, 0.9], 0.564),
    # one step: image and substrate only: AUC = (.1 + .9) / 2
    1: ([0, 1], [0.1, 0.9], 0.5),
}


@pytest.mark.parametrize("n_steps", sorted(HAND_CASES))
def test_curves_and_aucs_worked_out_by_hand(n_steps):
    fractions, insertion, auc = HAND_CASES[n_steps]
    model, x, saliency = toy()
    result = insertion_deletion(model, x, saliency, n_steps=n_steps, substrate=ZEROS)
    torch.testing.assert_close(result.fractions, torch.tensor(fractions, dtype=torch.float32))
    expected = torch.tensor([insertion])
    torch.testing.assert_close(result.insertion, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.deletion, 1 - expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.insertion_auc, torch.tensor([auc]), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.deletion_auc, torch.tensor([1 - auc]), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        result.insertion_minus_deletion, torch.tensor([2 * auc - 1]), atol=1e-6, rtol=0
    )
    assert result.target.tolist() == [0]  # p = .9 on the unaltered image


def test_auc_uses_the_true_fraction_not_step_over_n_steps():
    # With k / n_steps as x axis the 4-step case would give .25 * (.26+.54+.78+.9) = .62
    model, x, saliency = toy()
    result = insertion_deletion(model, x, saliency, n_steps=4, substrate=ZEROS)
    assert abs(float(result.insertion_auc[0]) - 0.564) < 1e-6


def test_target_and_logit_score():
    model, x, saliency = toy()
    other = insertion_deletion(model, x, saliency, target=1, n_steps=4, substrate=ZEROS)
    expected = torch.tensor([[0.9, 0.58, 0.34, 0.1, 0.1]])  # 1 - p
    torch.testing.assert_close(other.insertion, expected, atol=1e-6, rtol=0)
    assert other.target.tolist() == [1]
    logits = insertion_deletion(model, x, saliency, n_steps=4, substrate=ZEROS, score="logit")
    expected = torch.tensor([[0.1, 0.42, 0.66, 0.9, 0.9]]).log()
    torch.testing.assert_close(logits.insertion, expected, atol=1e-5, rtol=0)


def test_small_maps_are_upsampled_bilinearly():
    # [0, 1] across 2 columns -> 4 columns with align_corners=False: source positions
    # (j + .5) / 2 - .5 = -.25, .25, .75, 1.25, clamped: 0, .25, .75, 1.
    model = LinearProbability(torch.tensor([[0.4, 0.1, 0.0, 0.2], [0.0, 0.1, 0.1, 0.1]]))
    x = torch.ones(1, 1, 2, 4)
    small = torch.tensor([[[0.0, 1.0]]])
    by_hand = torch.tensor([[[0.0, 0.25, 0.75, 1.0], [0.0, 0.25, 0.75, 1.0]]])
    a = insertion_deletion(model, x, small, n_steps=8, substrate=torch.zeros(1))
    b = insertion_deletion(model, x, by_hand, n_steps=8, substrate=torch.zeros(1))
    # ranking 3, 7, 2, 6, 1, 5, 0, 4: weights .2 .1 0 .1 .1 .1 .4 0
    weight = torch.tensor([0, 0.2, 0.3, 0.3, 0.4, 0.5, 0.6, 1.0, 1.0])
    torch.testing.assert_close(a.insertion[0], 0.1 + 0.8 * weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.insertion, b.insertion, atol=0, rtol=0)
    torch.testing.assert_close(a.deletion, b.deletion, atol=0, rtol=0)


def test_each_image_of_a_batch_has_its_own_map():
    model, x, saliency = toy(batch=3)
    saliency[1] = -saliency[1]  # reversed ranking (ties keep row-major order)
    saliency[2] = 0.0  # all tied: row-major order
    result = insertion_deletion(model, x, saliency, n_steps=4, substrate=ZEROS)
    # 0: ranking 4,0,1,2,5,8,3,7,6,9 (as above): 3, 6, 9, 10 pixels weigh .4, .7, 1, 1
    # 1: ranking 6,9,3,7,8,1,2,5,0,4: 0+0+.3 | +0+.1+.1 | +0+.2+.2 | +.1
    # 2: ranking 0..9: .2+.1+0 | +.3+.1+.2 | +0+0+.1 | +0
    weights = torch.tensor([[0, 0.4, 0.7, 1, 1], [0, 0.3, 0.5, 0.9, 1], [0, 0.3, 0.9, 1, 1]])
    torch.testing.assert_close(result.insertion, 0.1 + 0.8 * weights, atol=1e-6, rtol=0)
    single = insertion_deletion(model, x[2:], saliency[2:], n_steps=4, substrate=ZEROS)
    torch.testing.assert_close(result.insertion[2:], single.insertion, atol=1e-7, rtol=0)


def test_chunking_changes_no_number():
    model = small_cnn()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    saliency = torch.rand(3, 4, 4, generator=g)
    runs = [
        insertion_deletion(model, x, saliency, n_steps=30, batch_size=size) for size in (1, 7, 64)
    ]
    for other in runs[1:]:
        for name in ("insertion", "deletion", "insertion_auc", "deletion_auc"):
            # per-sample results do not depend on the batch beyond float rounding
            torch.testing.assert_close(
                getattr(other, name), getattr(runs[0], name), atol=1e-6, rtol=0
            )
    drops = [average_drop_increase(model, x, saliency, batch_size=s) for s in (1, 2, 64)]
    for other in drops[1:]:
        torch.testing.assert_close(other.original, drops[0].original, atol=1e-6, rtol=0)
        torch.testing.assert_close(other.masked, drops[0].masked, atol=1e-6, rtol=0)


class Spy(nn.Module):
    """Records what each forward pass sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[int, bool, bool]] = []

    def forward(self, x):
        hooks = any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())
        self.seen.append((x.shape[0], torch.is_inference_mode_enabled(), hooks))
        return self.inner(x)


def test_chunks_of_batch_size_under_inference_mode_without_hooks():
    model, x, saliency = toy(batch=3)
    spy = Spy(model).eval()
    insertion_deletion(
        spy, x.requires_grad_(True), saliency, n_steps=4, substrate=ZEROS, batch_size=5
    )
    sizes = [n for n, _, _ in spy.seen]
    # first the memory budget's probe of one image (tgrad.budget), then 2 end points
    # (image, substrate) + 2 curves x 3 inner steps = 8 images per image
    assert sizes[0] == 1
    assert sum(sizes[1:]) == 3 * 8 and max(sizes) <= 5
    assert all(inference and not hooks for _, inference, hooks in spy.seen)


def test_chunks_follow_the_memory_budget_and_change_no_number(monkeypatch):
    """One image of the toy costs 3 x its largest tensor + itself (tgrad.budget); a budget
    of 2.5 such images gives chunks of 2 however large batch_size is."""
    from tgrad.budget import BUDGET_ENV, image_bytes

    model, x, saliency = toy(batch=3)
    free = insertion_deletion(model, x, saliency, n_steps=4, substrate=ZEROS, batch_size=64)
    free_drop = average_drop_increase(model, x, saliency, batch_size=64)
    spy = Spy(model).eval()
    per_image = image_bytes(spy, x, gradients=False)
    monkeypatch.setenv(BUDGET_ENV, str(2.5 * per_image / 2**20))
    capped = insertion_deletion(spy, x, saliency, n_steps=4, substrate=ZEROS, batch_size=64)
    drop = average_drop_increase(spy, x, saliency, batch_size=64)
    sizes = [n for n, _, _ in spy.seen]
    assert sizes[0] == 1 and max(sizes) == 2  # image_bytes' probe, then chunks of <= 2
    assert sum(sizes[1:]) == 3 * 8 + 2 * 3  # insertion/deletion, then average drop
    for name in ("insertion", "deletion", "insertion_auc", "deletion_auc"):
        torch.testing.assert_close(getattr(capped, name), getattr(free, name), atol=0, rtol=0)
    torch.testing.assert_close(drop.masked, free_drop.masked, atol=0, rtol=0)


class MeanScore(nn.Module):
    """Two logits from the image's mean: nothing it computes is as large as an image."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([m, -m], 1)


class LargeTensors(TorchDispatchMode):
    """Counts the new tensors of at least ``numel`` elements that operations return."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not func.is_view and out.numel() >= self.numel:
            self.count += 1  # a view (a slice of the buffer) allocates nothing
        return out


def test_perturbed_images_are_built_in_one_buffer():
    """448 perturbed images in chunks of 8 make one image-sized buffer, not one per chunk:
    besides the substrate and the upsampled map, nothing as large as 2 images is made."""
    model = MeanScore().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    saliency = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(4))
    image = 3 * 16 * 16
    with LargeTensors(2 * image) as seen:
        insertion_deletion(model, x, saliency, n_steps=112, batch_size=8)
    # the blur's padded copy and its output (the substrate), the buffer of 8 images and
    # the buffer of their masks (8 x 16 x 16 booleans)
    assert seen.count == 4, seen.count
    with LargeTensors(2 * image) as seen:
        average_drop_increase(model, x, saliency, batch_size=1)
    assert seen.count == 0


def test_results_are_plain_tensors_on_the_input_device_and_the_model_is_untouched():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    saliency = torch.rand(2, 16, 16)
    result = insertion_deletion(model, x, saliency, n_steps=8)
    drop = average_drop_increase(model, x, saliency)
    for t in (result.insertion, result.deletion_auc, result.fractions, drop.average_drop):
        assert t.device == x.device and not t.is_inference() and not t.requires_grad
    assert not model.training and all(not m.training for m in model.modules())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_default_substrate_is_the_blurred_image():
    model = small_cnn()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    result = insertion_deletion(model, x, torch.rand(1, 16, 16), n_steps=4)
    blurred = TF.gaussian_blur(x, [11, 11], [5.0, 5.0])
    with torch.no_grad():
        p = model(blurred).softmax(1)[0, result.target[0]]
    torch.testing.assert_close(result.insertion[0, 0], p, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.deletion[0, -1], p, atol=1e-6, rtol=0)


def test_blurring_normalised_input_equals_normalising_blurred_pixels():
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    normalize = LITE0_PREPROCESSING.normalize
    torch.testing.assert_close(
        blur_substrate(normalize(pixels)), normalize(blur_substrate(pixels)), atol=1e-5, rtol=0
    )


def test_black_substrate_is_pixel_zero_normalised():
    model = small_cnn()
    x = torch.randn(1, 3, 16, 16)
    result = insertion_deletion(
        model,
        x,
        torch.rand(1, 16, 16),
        n_steps=4,
        substrate="black",
        preprocessing=LITE0_PREPROCESSING,
    )
    black = LITE0_PREPROCESSING.normalize(torch.zeros(1, 3, 16, 16))
    with torch.no_grad():
        p = model(black).softmax(1)[0, result.target[0]]
    torch.testing.assert_close(result.insertion[0, 0], p, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="preprocessing"):
        insertion_deletion(model, x, torch.rand(1, 16, 16), substrate="black")


def test_average_drop_and_increase_worked_out_by_hand():
    # p(class 0) = .5 + .4 * sum(w * x), w = .5 .25 .25 0 over a 1 x 4 image
    model = LinearProbability(torch.tensor([[0.5, 0.25, 0.25, 0.0]]), low=0.5, span=0.4)
    x = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, 1], [1, 1, 1, 1]]).view(3, 1, 1, 4)
    saliency = torch.tensor([[4.0, 2, 0, 4], [3, 1, 3, 1], [2, 2, 2, 2]]).view(3, 1, 4)
    result = average_drop_increase(model, x, saliency)
    # 1: Y = .9; M = 1 .5 0 1 -> O = .5 + .4 (.5 + .125) = .75; drop (.9 - .75)/.9 = 1/6
    # 2: Y = .5 + .4 (.5 - .25 + .25) = .7; M = 1 0 1 0 -> O = .5 + .4 * .75 = .8 > Y
    # 3: Y = .9; a constant map has M = 0 -> O = .5; drop (.9 - .5)/.9 = 4/9
    torch.testing.assert_close(result.original, torch.tensor([0.9, 0.7, 0.9]))
    torch.testing.assert_close(result.masked, torch.tensor([0.75, 0.8, 0.5]))
    torch.testing.assert_close(result.average_drop, torch.tensor(100 / 3 * (1 / 6 + 4 / 9)))
    torch.testing.assert_close(result.increase, torch.tensor(100 / 3))
    assert result.target.tolist() == [0, 0, 0]
    # class 1 of samples 1 and 3: Y = .1 -> O = .25 and .5; sample 2 as above: all rise
    other = average_drop_increase(model, x, saliency, target=[1, 0, 1])
    torch.testing.assert_close(other.masked, torch.tensor([0.25, 0.8, 0.5]))
    torch.testing.assert_close(other.average_drop, torch.tensor(0.0))
    torch.testing.assert_close(other.increase, torch.tensor(100.0))


def test_average_drop_upsamples_the_map():
    model = LinearProbability(torch.tensor([[0.5, 0.25, 0.25, 0.0]]), low=0.5, span=0.4)
    x = torch.ones(1, 1, 1, 4)
    # [0, 1] -> 0, .25, .75, 1: O = .5 + .4 (0 + .0625 + .1875) = .6
    result = average_drop_increase(model, x, torch.tensor([[[0.0, 1.0]]]))
    torch.testing.assert_close(result.masked, torch.tensor([0.6]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"saliency": torch.rand(2, 2, 5)}, "2 maps for a batch of 1"),
        ({"saliency": torch.rand(2, 5)}, r"\[B,h,w\]"),
        ({"saliency": torch.rand(1, 3, 5)}, "larger than the images"),
        ({"saliency": torch.tensor([[[0.0, 1, float("nan"), 0, 0]] * 2])}, "NaN"),
        ({"x": torch.ones(2, 5)}, r"\[B,C,H,W\]"),
        ({"n_steps": 0}, "n_steps"),
        ({"n_steps": 2.0}, "n_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"substrate": torch.zeros(3, 1, 1)}, "does not broadcast"),
        ({"substrate": torch.full((2, 1, 1), float("nan"))}, "substrate contains NaN"),
        ({"substrate": "grey"}, "substrate must be"),
        ({"substrate": None}, "blur kernel of 11"),  # the toy image is 2 x 5
        ({"score": "rank"}, "score must be"),
        ({"target": 2}, "out of range"),
    ],
)
def test_bad_inputs_say_what_is_wrong(change, message):
    model, x, saliency = toy()
    arguments = {"x": x, "saliency": saliency, "n_steps": 4, "substrate": ZEROS} | change
    with pytest.raises(ValueError, match=message):
        insertion_deletion(model, **arguments)


def test_a_model_in_training_mode_is_refused():
    model = small_cnn().train()
    x, saliency = torch.randn(1, 3, 16, 16), torch.rand(1, 16, 16)
    with pytest.raises(ValueError, match="training mode"):
        insertion_deletion(model, x, saliency, n_steps=4)
    with pytest.raises(ValueError, match="training mode"):
        average_drop_increase(model, x, saliency)
    assert model.training


# --------------------------------------------------------------------------------------
# The real model


@pytest.fixture(scope="module")
def lite0_maps():
    from tgrad.images import load_image
    from tgrad.models import load_model
    from tgrad.tgrad import TGrad

    lite0 = load_model("efficientnet_lite0")
    x = torch.stack([lite0.preprocessing(load_image(ASSETS / p)) for p in PHOTOS])
    tgrad = TGrad(lite0.module)(x).saliency
    random = torch.rand(tgrad.shape, generator=torch.Generator().manual_seed(0))
    return lite0.module, x, tgrad, random


@pytest.mark.slow  # real Lite0 at 224 px
def test_lite0_tgrad_beats_a_random_map_on_insertion(lite0_maps):
    model, x, tgrad, random = lite0_maps
    ours = insertion_deletion(model, x, tgrad, n_steps=LITE0_STEPS)
    chance = insertion_deletion(model, x, random, n_steps=LITE0_STEPS)
    assert ours.target.tolist() == chance.target.tolist()
    # Averaged over the photos: a map that finds the evidence brings the class back
    # sooner than scattered random pixels do. Deletion alone is not asserted: random
    # deletions destroy texture fast and come out close to T-Grad's (see the README).
    assert ours.insertion_auc.mean() > chance.insertion_auc.mean()
    assert ours.insertion_minus_deletion.mean() > chance.insertion_minus_deletion.mean()
