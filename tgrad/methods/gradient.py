"""The gradient family (SPEC 3): Vanilla Gradient, Input x Gradient, Integrated Gradients,
SmoothGrad. Each attribution ``a`` [B,C,H,W] is reduced to a map by ``sum_c |a|``.

Vanilla and Input x Gradient read ``dy/dx`` from the shared pass. Integrated Gradients and
SmoothGrad evaluate ``dy/dx`` at many points around the input: the points of all samples
are stacked into chunks of at most ``batch_size`` images, each chunk one hook-free
:func:`~tgrad.capture.capture` (forward + backward), so memory stays bounded whatever
the number of steps or samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from tgrad.capture import Keep, OnGrad, Record, capture
from tgrad.methods.base import Setup, reduce_channels


class WatchesNothing:
    """A method that needs no module of the shared pass: it reads the input gradient, or
    runs passes of its own."""

    def __init__(self, setup: Setup, options: dict) -> None:
        self.setup = setup
        self.options = options

    def watch(self, model: nn.Module) -> dict[nn.Module, Keep | None]:
        return {}

    def on_grad(self) -> OnGrad | None:
        return None


class InputGradient(WatchesNothing):
    """Vanilla Gradient: ``dy/dx``, read from the shared pass (watches nothing)."""

    def attribution(self, record: Record) -> Tensor:
        """The attribution [B,C,H,W] before the channel reduction."""
        return record.input_grad

    def attribute(self, record: Record) -> Tensor:
        return reduce_channels(self.attribution(record))


class InputXGradient(InputGradient):
    """Input x Gradient: ``x * dy/dx``."""

    def attribution(self, record: Record) -> Tensor:
        return record.input * record.input_grad


def weighted_gradient_sum(
    model: nn.Module,
    record: Record,
    points: Callable[[int], Tensor],
    weights: Sequence[float],
    batch_size: int,
    report: Callable[[int, int], None],
) -> Tensor:
    """``sum_k weights[k] * dy/dx (points(k))`` for every sample of the batch [B,C,H,W].

    ``points(k)`` is the batch [B,C,H,W] at point k; y is the logit of each sample's
    target (from the shared pass, so every point explains the same class). Points are
    evaluated in order, ``max(1, batch_size // B)`` of them per forward.
    """
    batch = record.input.shape[0]
    per_chunk = max(1, batch_size // batch)
    total = torch.zeros_like(record.input)
    count = len(weights)
    for start in range(0, count, per_chunk):
        ks = range(start, min(start + per_chunk, count))
        inputs = torch.cat([points(k) for k in ks])
        grads = capture(model, inputs, record.target.repeat(len(ks))).input_grad
        w = torch.tensor([weights[k] for k in ks], dtype=grads.dtype, device=grads.device)
        total += torch.einsum("k,kbchw->bchw", w, grads.view(len(ks), *record.input.shape))
        report(ks[-1] + 1, count)
    return total


def trapezoid_rule(steps: int) -> tuple[list[float], list[float]]:
    """Points in [0, 1] and weights of the trapezoid rule with ``steps`` points
    (captum's ``riemann_trapezoid``: ``linspace(0, 1, steps)``, weights ``1/steps`` with
    the two ends halved)."""
    if steps < 2:
        raise ValueError(f"integrated_gradients needs at least 2 steps, got {steps}")
    alphas = torch.linspace(0, 1, steps).tolist()
    weights = [1 / steps] * steps
    weights[0] /= 2
    weights[-1] /= 2
    return alphas, weights


class IntegratedGradients(WatchesNothing):
    """``(x - x0) * sum_k w_k dy/dx (x0 + alpha_k (x - x0))``, trapezoid rule.

    Options: ``baseline`` (a tensor [C,H,W] or [B,C,H,W] in the model's input space),
    or else ``preprocessing`` (anything with a ``normalize(pixels)``, such as
    :class:`tgrad.models.Preprocessing`) to make SPEC's black image (pixel value 0,
    normalised); with neither, the baseline is 0 in the model's input space. ``steps``
    (50), ``batch_size``: images per forward (32).
    """

    needs_backward = False  # its own passes; the shared one only gives the target

    def baseline(self, x: Tensor) -> Tensor:
        baseline = self.options["baseline"]
        preprocessing = self.options["preprocessing"]
        if baseline is None and preprocessing is not None:
            baseline = preprocessing.normalize(torch.zeros_like(x[0]))
        if baseline is None:
            return torch.zeros_like(x)
        baseline = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        return baseline.expand_as(x)

    def attribute(self, record: Record) -> Tensor:
        x = record.input
        x0 = self.baseline(x)
        delta = x - x0
        alphas, weights = trapezoid_rule(int(self.options["steps"]))
        total = weighted_gradient_sum(
            self.setup.model,
            record,
            lambda k: x0 + alphas[k] * delta,
            weights,
            int(self.options["batch_size"]),
            lambda done, count: self.setup.report("integrated_gradients", done, count),
        )
        return reduce_channels(total * delta)


def smoothgrad_noise(
    shape: Sequence[int], samples: int, sigma: float, seed: int, device: torch.device | str
) -> list[Tensor]:
    """SmoothGrad's noise: ``samples`` tensors ``sigma * N(0, 1)`` of ``shape`` [C,H,W].

    Drawn one by one from a generator seeded with ``seed`` on ``device``, so the noise
    does not depend on the batch or on how the samples are chunked; every image of a
    batch gets the same noise (a batch gives the maps of its images one by one).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    return [
        sigma * torch.randn(tuple(shape), generator=generator, device=device)
        for _ in range(samples)
    ]


class SmoothGrad(WatchesNothing):
    """Mean of ``dy/dx`` over ``samples`` (50) noisy copies ``x + N(0, sigma^2)``,
    ``sigma`` (0.1) in the model's input space, ``seed`` (0); ``batch_size`` (32)."""

    needs_backward = False  # its own passes; the shared one only gives the target

    def attribute(self, record: Record) -> Tensor:
        x = record.input
        samples = int(self.options["samples"])
        if samples < 1:
            raise ValueError(f"smoothgrad needs at least 1 sample, got {samples}")
        noise = smoothgrad_noise(
            x.shape[1:], samples, float(self.options["sigma"]), int(self.options["seed"]), x.device
        )
        total = weighted_gradient_sum(
            self.setup.model,
            record,
            lambda k: x + noise[k],
            [1 / samples] * samples,
            int(self.options["batch_size"]),
            lambda done, count: self.setup.report("smoothgrad", done, count),
        )
        return reduce_channels(total)
