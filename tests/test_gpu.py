"""The engine on a CUDA device: completeness in float32 and agreement with the CPU.

Skipped where there is no GPU (CI has none); run on a lent GPU machine.
"""

import pytest
import torch
import torchvision

from tests.nets import perturb
from tgrad.decompose import completeness_tolerance
from tgrad.models import load_model
from tgrad.tgrad import TGrad

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def build(name: str) -> torch.nn.Module:
    if name == "efficientnet_lite0":
        return load_model(name).module
    torch.manual_seed(0)
    return perturb(getattr(torchvision.models, name)(weights=None))


@pytest.mark.parametrize(
    "name", ["vgg16", "resnet50", "densenet121", "alexnet", "mobilenet_v2", "efficientnet_lite0"]
)
def test_cuda_completeness_and_cpu_agreement(name):
    model = build(name)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    target = [1, 2, 3, 4]
    cpu = TGrad(model)(x, target)
    gpu = TGrad(model.cuda())(x.cuda(), target)
    assert gpu.saliency.is_cuda
    assert (gpu.gap.abs() <= completeness_tolerance(gpu.logit)).all(), gpu.gap
    torch.testing.assert_close(gpu.logit.cpu(), cpu.logit, rtol=1e-4, atol=1e-4)
    # Random-weight nets have pre-activations near 0 whose ReLU masks flip with the
    # summation order: on the CPU alone, float32 and float64 saliencies of ResNet-50
    # differ by 0.85% of their maximum. So terms agree to 1% of the logit's scale and
    # maps to 2% of their maximum, with a correlation above 0.999.
    scale = cpu.logit.abs().clamp(min=1)
    for g, c in zip(gpu.terms, cpu.terms, strict=True):
        assert g.name == c.name
        worst = float(((g.contribution.cpu() - c.contribution).abs() / scale).max())
        assert worst <= 1e-2, (g.name, worst)
    a, b = gpu.saliency.cpu().flatten(1), cpu.saliency.flatten(1)
    worst = float(((a - b).abs().amax(1) / b.amax(1)).max())
    assert worst <= 0.02, worst
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.999


def test_tf32_flags_are_restored():
    model = build("alexnet").cuda()
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        TGrad(model)(torch.randn(2, 3, 224, 224, device="cuda"))
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
