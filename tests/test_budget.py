"""Chunks sized from a memory budget (tgrad.budget): the cost of one image worked out by
hand on a one-layer model, the budget from the environment, the buffer's layout."""

import pytest
import torch
from torch import nn

from tgrad.budget import (
    BUDGET_ENV,
    DEFAULT_BUDGET_MB,
    budget_bytes,
    chunk_buffer,
    image_bytes,
    images_per_chunk,
)

FLOAT = 4  # bytes


def one_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).eval()


def test_the_cost_of_one_image_by_hand():
    """A 3 x 16 x 16 image through Conv2d(3, 8): the largest tensor any operation returns is
    the conv's output, 8 x 16 x 16 floats. A forward alone costs 3 of those plus the image;
    a forward for a backward also keeps what autograd saves, here the conv's input (its
    weight is the model's own and not counted), and the image's gradient."""
    x = torch.randn(5, 3, 16, 16)
    image, largest = 3 * 16 * 16 * FLOAT, 8 * 16 * 16 * FLOAT
    assert image_bytes(one_conv(), x, gradients=False) == 3 * largest + image
    assert image_bytes(one_conv(), x, gradients=True) == image + 3 * largest + 2 * image


def test_chunk_sizes_follow_the_budget(monkeypatch):
    model, x = one_conv(), torch.randn(2, 3, 16, 16)
    per_image = image_bytes(model, x, gradients=False)
    monkeypatch.setenv(BUDGET_ENV, str(10.5 * per_image / 2**20))
    assert images_per_chunk(model, x, 64, gradients=False) == 10
    assert images_per_chunk(model, x, 4, gradients=False) == 4  # never above the request
    monkeypatch.setenv(BUDGET_ENV, str(0.5 * per_image / 2**20))
    assert images_per_chunk(model, x, 64, gradients=False) == 1  # never below one image
    for bad in ("0", "-3", "lots"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(ValueError, match=BUDGET_ENV):
            budget_bytes("cpu")
    monkeypatch.delenv(BUDGET_ENV)
    assert budget_bytes("cpu") == DEFAULT_BUDGET_MB["cpu"] * 2**20
    assert budget_bytes("cuda:1") == DEFAULT_BUDGET_MB["cuda"] * 2**20


def test_the_cost_is_measured_once_per_model_and_shape():
    calls = []
    model = one_conv()
    model.register_forward_pre_hook(lambda m, inputs: calls.append(inputs[0].shape[0]))
    x = torch.randn(3, 3, 16, 16)
    for _ in range(3):
        image_bytes(model, x, gradients=False)
    image_bytes(model, x[:, :, :8], gradients=False)
    assert calls == [1, 1]  # one image each time, once per input shape


def test_a_buffer_is_laid_out_like_the_input():
    x = torch.randn(2, 3, 8, 8)
    assert chunk_buffer(x, 5).shape == (5, 3, 8, 8) and chunk_buffer(x, 5).is_contiguous()
    last = x.to(memory_format=torch.channels_last)
    buffer = chunk_buffer(last, 5)
    assert buffer.is_contiguous(memory_format=torch.channels_last) and not buffer.is_contiguous()
    assert chunk_buffer(x, 2, torch.bool).dtype == torch.bool
