"""The gradient family (SPEC 3): Vanilla Gradient, Input x Gradient, Integrated Gradients,
SmoothGrad. Each attribution ``a`` [B,C,H,W] is reduced to a map by ``sum_c |a|``.

Vanilla and Input x Gradient read ``dy/dx`` from the shared pass. Integrated Gradients and
SmoothGrad evaluate ``dy/dx`` at many points around the input: the points of all samples
are written into one preallocated buffer, a chunk at a time, each chunk one hook-free
:func:`~tgrad.capture.capture` (forward + backward). A chunk holds at most ``batch_size``
images and at most what the memory budget allows (:mod:`tgrad.budget`), so memory stays
bounded whatever the number of steps or samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from tgrad.budget import chunk_buffer, images_per_chunk
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
    write_point: Callable[[int, Tensor], None],
    weights: Sequence[float],
    batch_size: int,
    report: Callable[[int, int], None],
) -> tuple[Tensor, Tensor]:
    """``sum_k weights[k] * dy/dx (point k)`` for every sample of the batch [B,C,H,W], and
    the target logit at every point [K,B].

    ``write_point(k, out)`` writes the batch at point k into ``out`` [B,C,H,W] (a slice of
    one buffer reused by every chunk); y is the logit of each sample's target (from the
    shared pass, so every point explains the same class). Points are evaluated in order,
    as many per forward as ``batch_size`` images and the memory budget allow (at least
    one point, i.e. B images).
    """
    x = record.input
    batch = x.shape[0]
    wanted = max(1, batch_size // batch) * batch
    per_chunk = max(1, images_per_chunk(model, x, wanted, gradients=True) // batch)
    count = len(weights)
    per_chunk = min(per_chunk, count)
    buffer = chunk_buffer(x, per_chunk * batch)
    total = torch.zeros_like(x)
    logits = x.new_empty(count, batch)
    for start in range(0, count, per_chunk):
        ks = range(start, min(start + per_chunk, count))
        inputs = buffer[: len(ks) * batch]
        for j, k in enumerate(ks):
            write_point(k, inputs[j * batch : (j + 1) * batch])
        chunk = capture(model, inputs, record.target.repeat(len(ks)))
        grads = chunk.input_grad.view(len(ks), *x.shape)
        w = torch.tensor([weights[k] for k in ks], dtype=grads.dtype, device=grads.device)
        total += torch.einsum("k,kbchw->bchw", w, grads)
        logits[start : start + len(ks)] = chunk.logit.view(len(ks), batch)
        del chunk, grads
        report(ks[-1] + 1, count)
    return total, logits


def trapezoid_rule(steps: int) -> tuple[list[float], list[float]]:
    """Points in [0, 1] and weights of the trapezoid rule with ``steps`` points (SPEC 3):
    ``linspace(0, 1, steps)``, weights ``1/(steps-1)`` with the two ends halved, so they
    sum to 1 and a linear function integrates exactly. (captum's ``riemann_trapezoid``
    uses ``1/steps``: its weights sum to ``(steps-1)/steps``.)"""
    if steps < 2:
        raise ValueError(f"integrated_gradients needs at least 2 steps, got {steps}")
    alphas = torch.linspace(0, 1, steps).tolist()
    weights = [1 / (steps - 1)] * steps
    weights[0] /= 2
    weights[-1] /= 2
    return alphas, weights


BASELINES: dict[str, str] = {
    "black": "a black image: pixel value 0, then normalised (needs the preprocessing)",
    "white": "a white image: pixel value 1, then normalised (needs the preprocessing)",
    "zero": "0 in the model's input space (the normalisation's mean colour)",
}
"""Integrated Gradients' named baselines (option ``baseline``), with what each is."""


class IntegratedGradients(WatchesNothing):
    """``(x - x0) * sum_k w_k dy/dx (x0 + alpha_k (x - x0))``, trapezoid rule (SPEC 3).

    Options: ``baseline`` x0: a name of :data:`BASELINES` (``"black"``, SPEC's default,
    needs ``preprocessing``: anything with a ``normalize(pixels)``, such as
    :class:`tgrad.models.Preprocessing`), or a tensor [C,H,W] or [B,C,H,W] in the model's
    input space; ``steps`` (50); ``batch_size``: images per forward at most (32).

    After :meth:`attribute`, :attr:`convergence_delta` [B] holds ``sum(IG) - (y(x) -
    y(x0))`` per sample, in logit units: the integral's error (0 for a linear model).
    """

    def __init__(self, setup: Setup, options: dict) -> None:
        super().__init__(setup, options)
        self.convergence_delta: Tensor | None = None
        self.baseline(setup.x)  # refuse a bad baseline before any work

    def baseline(self, x: Tensor) -> Tensor:
        """The baseline x0 [B,C,H,W] in the model's input space, for the input ``x``."""
        baseline = self.options["baseline"]
        if isinstance(baseline, str):
            if baseline not in BASELINES:
                raise ValueError(
                    f"integrated_gradients has no baseline {baseline!r}; name one of "
                    f"{', '.join(BASELINES)} or pass a tensor in the model's input space"
                )
            if baseline == "zero":
                return torch.zeros_like(x)
            preprocessing = self.options["preprocessing"]
            if preprocessing is None:
                raise ValueError(
                    f"integrated_gradients' baseline {baseline!r} is a pixel value, then "
                    "normalised: pass the model's preprocessing (options "
                    "{'integrated_gradients': {'preprocessing': loaded.preprocessing}}), "
                    "or baseline='zero' or a tensor"
                )
            level = 0.0 if baseline == "black" else 1.0
            return preprocessing.normalize(torch.full_like(x[0], level)).expand_as(x)
        if not isinstance(baseline, Tensor):
            raise ValueError(
                f"integrated_gradients' baseline must be a name ({', '.join(BASELINES)}) or "
                f"a tensor, got {type(baseline).__name__}"
            )
        try:
            return baseline.to(dtype=x.dtype, device=x.device).expand_as(x)
        except RuntimeError:
            raise ValueError(
                f"integrated_gradients' baseline of shape {tuple(baseline.shape)} does not "
                f"fit the input {tuple(x.shape)}"
            ) from None

    def attribute(self, record: Record) -> Tensor:
        x = record.input
        x0 = self.baseline(x)
        delta = x - x0
        alphas, weights = trapezoid_rule(int(self.options["steps"]))

        def write_point(k: int, out: Tensor) -> None:
            torch.mul(delta, alphas[k], out=out)
            out.add_(x0)

        total, logits = weighted_gradient_sum(
            self.setup.model,
            record,
            write_point,
            weights,
            int(self.options["batch_size"]),
            lambda done, count: self.setup.report("integrated_gradients", done, count),
        )
        attribution = total.mul_(delta)
        # alpha_0 = 0: the first point is the baseline itself
        self.convergence_delta = attribution.sum((1, 2, 3)) - (record.logit - logits[0])
        return reduce_channels(attribution)


def smoothgrad_noise(
    shape: Sequence[int], samples: int, seed: int, device: torch.device | str
) -> Iterator[Tensor]:
    """SmoothGrad's standard normal draws: ``samples`` tensors ``N(0, 1)`` of ``shape``
    [C,H,W], one after the other from one generator seeded with ``seed`` on ``device``.

    So the noise does not depend on the batch or on how the samples are chunked; every
    image of a batch gets the same draws, scaled by its own sigma. The tensor yielded is
    reused for the next draw: copy it to keep it.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    draw = torch.empty(tuple(shape), device=device)
    for _ in range(samples):
        yield torch.randn(tuple(shape), generator=generator, device=device, out=draw)


def smoothgrad_sigma(x: Tensor, noise_level: float, sigma: float | None = None) -> Tensor:
    """The noise's standard deviation for each image of ``x`` [B,C,H,W], in the model's
    input space [B]: ``noise_level * (max(x_b) - min(x_b))`` (SPEC 3), or ``sigma`` for
    every image when it is given."""
    if sigma is not None:
        if not float(sigma) >= 0:
            raise ValueError(f"smoothgrad's sigma must be >= 0, got {sigma!r}")
        return x.new_full((x.shape[0],), float(sigma))
    if not float(noise_level) >= 0:
        raise ValueError(f"smoothgrad's noise_level must be >= 0, got {noise_level!r}")
    flat = x.flatten(1)
    return float(noise_level) * (flat.amax(1) - flat.amin(1))


class SmoothGrad(WatchesNothing):
    """Mean of ``dy/dx`` over ``samples`` (50) noisy copies ``x + N(0, sigma_b^2)``.

    ``sigma_b = noise_level * (max(x_b) - min(x_b))`` per image, ``noise_level`` 0.15
    (Smilkov et al.'s 10-20 % of the input's range; SPEC 3), or an absolute ``sigma`` in
    the model's input space for every image when that option is given (not None);
    ``seed`` (0); ``batch_size``: images per forward at most (32).
    """

    def attribute(self, record: Record) -> Tensor:
        x = record.input
        samples = int(self.options["samples"])
        if samples < 1:
            raise ValueError(f"smoothgrad needs at least 1 sample, got {samples}")
        sigma = smoothgrad_sigma(x, self.options["noise_level"], self.options["sigma"])
        noise = smoothgrad_noise(x.shape[1:], samples, int(self.options["seed"]), x.device)

        def write_point(k: int, out: Tensor) -> None:
            draw = next(noise)  # points are written in order, k = 0, 1, ...
            for b in range(x.shape[0]):
                torch.mul(draw, sigma[b], out=out[b])
            out.add_(x)

        total, _ = weighted_gradient_sum(
            self.setup.model,
            record,
            write_point,
            [1 / samples] * samples,
            int(self.options["batch_size"]),
            lambda done, count: self.setup.report("smoothgrad", done, count),
        )
        return reduce_channels(total)
