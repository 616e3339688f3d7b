"""Small networks and model preparation shared by the engine tests."""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give a randomly initialised model non-trivial BatchNorm statistics and biases.

    Fresh BatchNorm layers have mean 0, var 1, gamma 1, beta 0 and conv biases are
    small, so their bias terms would be near zero and prove little. Returns it in eval.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model.eval()


class SmallCNN(nn.Module):
    """Conv(bias) -> ReLU(inplace) -> MaxPool -> Conv -> BN -> ReLU6 -> pool -> Linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = nn.ReLU6(inplace=True)
        self.pool2 = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        return self.fc(x.flatten(1))


def small_cnn(seed: int = 0) -> nn.Module:
    """A SmallCNN whose ReLU6 units saturate for standard-normal inputs."""
    torch.manual_seed(seed)
    model = perturb(SmallCNN(), seed)
    with torch.no_grad():
        model.conv2.weight.mul_(6.0)  # large pre-activations: some units above 6
    return model
