"""T-Grad against an independent implementation of formula 8, and the engine's promises:
batching, targets, hooks released, model untouched, bounded memory, thread safety."""

import gc
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.nets import perturb, small_cnn
from tgrad.tgrad import TGrad


def reference_tgrad(layers: list[nn.Module], x: torch.Tensor, target: torch.Tensor):
    """Formula 8 written out plainly for a chain of Conv/Linear/ReLU/pool layers.

    No hooks: each biased layer's output keeps its gradient with ``retain_grad``,
    activations are out of place. Returns (saliency [B,H,W], per-term maps, scores,
    per-term weighted maps phi(S_t) * score_t).
    """
    x = x.clone().requires_grad_(True)
    h, biased = x, []
    for m in layers:
        if isinstance(m, nn.Conv2d):
            h = F.conv2d(h, m.weight, m.bias, m.stride, m.padding)
        elif isinstance(m, nn.Linear):
            h = F.linear(h, m.weight, m.bias)
        elif isinstance(m, nn.ReLU):
            h = torch.relu(h)
        elif isinstance(m, nn.MaxPool2d):
            h = F.max_pool2d(h, m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            h = F.adaptive_avg_pool2d(h, m.output_size)
        elif isinstance(m, nn.Flatten):
            h = h.flatten(1)
        elif not isinstance(m, nn.Dropout):
            raise TypeError(m)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            h.retain_grad()
            biased.append((m.bias, h))
    h.gather(1, target[:, None]).sum().backward()
    contributions = [x * x.grad] + [b.view(1, -1, 1, 1) * z.grad for b, z in biased if z.dim() == 4]
    size = x.shape[-2:]
    saliency, maps, scores, weighted = 0, [], [], []
    for c in contributions:
        s = torch.relu(c).sum(1)
        score = torch.relu(c.sum((1, 2, 3)))
        up = F.interpolate(s[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        total = up.sum((1, 2))[:, None, None]
        phi = torch.where(total > 0, up / total, torch.zeros_like(up))
        saliency = saliency + phi * score[:, None, None]
        maps.append(s)
        scores.append(score)
        weighted.append(phi * score[:, None, None])
    return saliency, maps, scores, weighted


def tiny_relu_cnn() -> nn.Sequential:
    torch.manual_seed(3)
    return perturb(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3),
        ),
        seed=3,
    )


def assert_matches_reference(result, layers, x):
    saliency, maps, scores, weighted = reference_tgrad(layers, x, result.target)
    assert len(result.spatial_terms) == len(maps)
    for term, s, score in zip(result.spatial_terms, maps, scores, strict=True):
        torch.testing.assert_close(term.map, s, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(term.score, score, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.saliency, saliency, rtol=1e-4, atol=1e-7)
    for k in range(len(weighted)):  # the build-up of Fig. 2, position by position
        partial = torch.stack(weighted[: k + 1]).sum(0)
        torch.testing.assert_close(result.cumulative(k), partial, rtol=1e-4, atol=1e-7)


def test_formula_8_small_relu_network():
    model = tiny_relu_cnn()
    x = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    result = TGrad(model)(x)
    assert [t.name for t in result.terms] == ["input", "0", "2", "5", "9"]
    assert [t.grid for t in result.spatial_terms] == [(20, 20), (20, 20), (10, 10), (5, 5)]
    assert result.saliency.abs().sum() > 0
    assert_matches_reference(result, list(model), x)


def test_formula_8_vgg16():
    torch.manual_seed(0)
    model = perturb(torchvision.models.vgg16(weights=None))
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    result = TGrad(model)(x, target=[7, 500])
    assert len(result.spatial_terms) == 14  # input + 13 convolutions
    assert len(result.terms) == 17  # + 3 Linear biases, scores without maps
    layers = [*model.features, model.avgpool, nn.Flatten(), *model.classifier]
    assert_matches_reference(result, layers, x)


def test_saliency_mass_is_the_sum_of_spatial_scores():
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    result = TGrad(model)(x)
    scores = torch.stack([t.score for t in result.spatial_terms if t.map.sum() > 0]).sum(0)
    torch.testing.assert_close(result.saliency.sum((1, 2)), scores, rtol=1e-5, atol=1e-6)
    last = len(result.spatial_terms) - 1
    torch.testing.assert_close(result.cumulative(last), result.saliency)


def test_batch_equals_one_by_one():
    model = small_cnn()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    explain = TGrad(model)
    batch = explain(x, target=[0, 1, 2, 3])
    for i in range(4):
        one = explain(x[i : i + 1], target=i)
        torch.testing.assert_close(one.saliency[0], batch.saliency[i], rtol=1e-5, atol=1e-7)
        for a, b in zip(one.terms, batch.terms, strict=True):
            assert a.name == b.name
            torch.testing.assert_close(a.contribution[0], b.contribution[i], rtol=1e-5, atol=1e-6)
            if a.spatial:
                torch.testing.assert_close(a.map[0], b.map[i], rtol=1e-5, atol=1e-7)


def test_targets_none_int_list_tensor():
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    explain = TGrad(model)
    top = explain(x)
    assert torch.equal(top.target, top.logits.argmax(1))
    assert explain(x, target=3).target.tolist() == [3, 3]
    assert explain(x, target=[1, 4]).target.tolist() == [1, 4]
    by_tensor = explain(x, target=torch.tensor([4, 1]))
    assert by_tensor.target.tolist() == [4, 1]
    torch.testing.assert_close(by_tensor.logit, by_tensor.logits[[0, 1], [4, 1]])
    with pytest.raises(ValueError, match="out of range"):
        explain(x, target=99)
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        explain(x, target=[1, 2, 3])


def hooks_left(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_no_hook_survives_a_call_or_a_failing_call():
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16)
    explain = TGrad(model)
    explain(x)
    assert hooks_left(model) == 0
    with pytest.raises(ValueError):
        explain(x, target=-1)  # fails after the forward, inside the capture
    assert hooks_left(model) == 0
    broken = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), Exploding())
    broken.eval()
    with pytest.raises(RuntimeError, match="boom"):
        TGrad(broken, strict=False)(x)
    assert hooks_left(broken) == 0


def test_model_is_left_exactly_as_it_was():
    torch.manual_seed(0)
    model = perturb(torchvision.models.resnet18(weights=None))  # in-place ReLUs, shared relu
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, getattr(m, "inplace", None)) for m in model.modules()]
    TGrad(model)(x)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert flags == [(m.training, getattr(m, "inplace", None)) for m in model.modules()]
    assert all(p.grad is None for p in model.parameters())


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # torch's deprecated aliases warn when inspected
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_does_not_grow_over_50_calls():
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16)
    explain = TGrad(model)
    explain(x)  # warm-up
    start = live_tensors()
    for _ in range(50):
        result = explain(x)
    del result
    assert live_tensors() <= start


def test_two_threads_get_the_same_answers_as_sequential():
    torch.manual_seed(0)
    model = perturb(torchvision.models.resnet18(weights=None))
    explain = TGrad(model)
    gen = torch.Generator().manual_seed(8)
    inputs = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(2)]
    sequential = [explain(x) for x in inputs]
    barrier = threading.Barrier(2)
    results: list = [[], []]
    errors = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                barrier.wait()
                results[i].append(explain(inputs[i]))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        for r in results[i]:
            assert [t.name for t in r.terms] == [t.name for t in sequential[i].terms]
            torch.testing.assert_close(r.saliency, sequential[i].saliency, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(r.gap, sequential[i].gap, rtol=0, atol=1e-4)
