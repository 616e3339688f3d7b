"""Faithfulness metrics of a saliency map (SPEC section 4).

* :func:`insertion_deletion`: the RISE curves (Petsiuk et al. 2018). Pixels are ranked by
  descending saliency; deletion replaces the top-ranked pixels of the image with a
  substrate step by step, insertion puts them back into the substrate. The curve is the
  softmax probability of the target class after each step; its AUC is the trapezoid rule
  over the fraction of pixels changed.
* :func:`average_drop_increase`: Average Drop % and % Increase in Confidence
  (Chattopadhay et al. 2018): the model's confidence on ``M * x``, where ``M`` is the map
  scaled to [0, 1], against its confidence on ``x``.

Every image goes through the model as it is: no hooks, under ``torch.inference_mode()``,
perturbed images written into one preallocated buffer and evaluated a chunk at a time, at
most ``batch_size`` and at most what the memory budget allows (:mod:`tgrad.budget`), so
memory stays bounded by one chunk, whatever the batch and ``n_steps``. Inputs are
normalised images ``[B,C,H,W]``; maps are ``[B,h,w]`` with ``h <= H``, ``w <= W``. Results
stay on ``x``'s device.

Conventions the paper leaves open, fixed here (each a parameter where it is a choice):

* The substrate is built in the normalised input space. The default blur (Gaussian, kernel
  11, sigma 5, torchvision's ``gaussian_blur`` with its reflect padding) is linear with
  weights summing to 1, and the model's normalisation is a per-channel affine map, so
  blurring ``x`` equals normalising the blurred pixels.
* The x axis of a curve is the true fraction of pixels changed, ``min(k * per_step, H*W)
  / (H*W)`` with ``per_step = ceil(H*W / n_steps)``, not ``k / n_steps``: when ``n_steps``
  does not divide ``H*W`` the last step changes fewer pixels (or none), and the AUC
  weighs each step by what it really changed. With the default protocol (224 x 224
  pixels, 224 steps) the two coincide.
* The first and last points of both curves are the unaltered image and the substrate, so
  each image costs ``2 * (n_steps - 1) + 2`` forward passes (448 by default), the target
  included.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from tgrad.budget import chunk_buffer, images_per_chunk
from tgrad.capture import Target, exact_float32, resolve_target
from tgrad.models import Preprocessing
from tgrad.tgrad import upsample

__all__ = [
    "AverageDropIncrease",
    "InsertionDeletion",
    "average_drop_increase",
    "blur_substrate",
    "insertion_deletion",
]

Score = Literal["probability", "logit"]


@dataclass(frozen=True)
class InsertionDeletion:
    """Insertion and deletion curves of a batch of maps, and their areas.

    Scores are softmax probabilities of the target class (logits if asked for).
    """

    insertion: Tensor
    """[B, n_steps+1]: the score as the top-ranked pixels are put back into the substrate;
    point 0 is the substrate, the last point the image."""
    deletion: Tensor
    """[B, n_steps+1]: the score as the top-ranked pixels are replaced by the substrate;
    point 0 is the image, the last point the substrate."""
    insertion_auc: Tensor
    """[B]: trapezoid area under :attr:`insertion` over :attr:`fractions` (higher is better)."""
    deletion_auc: Tensor
    """[B]: trapezoid area under :attr:`deletion` over :attr:`fractions` (lower is better)."""
    fractions: Tensor
    """[n_steps+1]: the fraction of pixels changed at each point, from 0 to 1."""
    target: Tensor
    """[B]: the class whose score the curves follow."""

    @property
    def insertion_minus_deletion(self) -> Tensor:
        """[B]: insertion AUC minus deletion AUC (higher is better)."""
        return self.insertion_auc - self.deletion_auc


@dataclass(frozen=True)
class AverageDropIncrease:
    """Average Drop % and % Increase in Confidence over a batch, with their ingredients."""

    average_drop: Tensor
    """Scalar, in percent: ``100/N * sum max(0, Y - O) / Y`` (lower is better)."""
    increase: Tensor
    """Scalar, in percent: ``100/N * sum [O > Y]`` (higher is better)."""
    original: Tensor
    """[B]: ``Y``, the softmax probability of the target on the image."""
    masked: Tensor
    """[B]: ``O``, the softmax probability of the target on ``M * x``."""
    target: Tensor
    """[B]: the class whose probability is compared."""


def blur_substrate(x: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """SPEC 4's substrate: ``x`` [B,C,H,W] blurred with a Gaussian (reflect padding).

    Works in whichever space ``x`` is in; for a normalised ``x`` it equals normalising the
    blurred pixels (the blur is linear and keeps constants).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd number, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be positive, got {sigma}")
    if min(x.shape[-2:]) <= kernel_size // 2:
        raise ValueError(
            f"a blur kernel of {kernel_size} needs images larger than {kernel_size // 2} pixels "
            f"on each side (reflect padding), got {tuple(x.shape[-2:])}; pass a smaller "
            "blur_kernel or a substrate tensor"
        )
    return TF.gaussian_blur(x, [kernel_size, kernel_size], [float(sigma), float(sigma)])


def insertion_deletion(
    model: nn.Module,
    x: Tensor,
    saliency: Tensor,
    target: Target = None,
    n_steps: int = 224,
    substrate: Tensor | Literal["blur", "black"] | None = None,
    batch_size: int = 64,
    *,
    score: Score = "probability",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    preprocessing: Preprocessing | None = None,
) -> InsertionDeletion:
    """Insertion and deletion curves of ``saliency`` for ``model`` on ``x`` (SPEC 4).

    Args:
        model: the classifier, in eval mode (a BatchNorm or Dropout in training mode is
            refused), returning logits [B,K]. Left untouched.
        x: the normalised input [B,C,H,W].
        saliency: the maps [B,h,w], ``h <= H`` and ``w <= W``; smaller maps are upsampled
            bilinearly (align_corners=False). Pixels are ranked by descending saliency;
            ties keep the row-major pixel order (a stable sort).
        target: the class followed (see :data:`tgrad.capture.Target`); ``None`` = the class
            predicted on the unaltered image.
        n_steps: the curve has ``n_steps + 1`` points; each step changes
            ``ceil(H*W / n_steps)`` pixels, the last one what is left.
        substrate: what deleted pixels become and insertion starts from. ``None`` or
            ``"blur"``: ``x`` blurred (``blur_kernel``, ``blur_sigma``); ``"black"``: pixel
            value 0 normalised with ``preprocessing``; or a tensor in normalised space
            that broadcasts to ``x`` ([B,C,H,W], [C,H,W], [C,1,1], ...).
        batch_size: perturbed images per forward pass at most (fewer where the memory
            budget of :mod:`tgrad.budget` says so). Changes no number.
        score: ``"probability"`` (softmax of the logits, the protocol) or ``"logit"``.
        blur_kernel: side of the Gaussian kernel of the default substrate (odd).
        blur_sigma: its standard deviation, in pixels.
        preprocessing: the model's normalisation; needed for ``substrate="black"`` only.

    Returns:
        An :class:`InsertionDeletion`, every tensor on ``x``'s device.
    """
    _check_common(model, x, saliency, batch_size)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")
    batch, _, height, width = x.shape
    pixels = height * width
    per_step = math.ceil(pixels / n_steps)
    counts = (torch.arange(n_steps + 1, device=x.device) * per_step).clamp(max=pixels)
    fractions = counts.double() / pixels

    with torch.inference_mode(), exact_float32(x.device):
        x = x.detach()
        base = _substrate(x, substrate, blur_kernel, blur_sigma, preprocessing)
        ranks = _ranks(upsample(saliency.detach().to(x.device, x.dtype), (height, width)))
        chunk = images_per_chunk(model, x, batch_size, gradients=False)
        # The unaltered images and the substrates first: they give the target and both
        # ends of both curves.
        logits = torch.cat([model(part) for ends in (x, base) for part in ends.split(chunk)])
        _check_logits(logits, 2 * batch)
        t = resolve_target(target, logits[:batch])
        end_scores = _scores(logits, t.repeat(2), score).view(2, batch)

        curves = end_scores.new_empty(batch, 2, n_steps + 1)  # [:, 0] deletion, [:, 1] insertion
        changed_none, changed_all = counts == 0, counts == pixels
        curves[:, 0, changed_none] = end_scores[0, :, None]
        curves[:, 0, changed_all] = end_scores[1, :, None]
        curves[:, 1, changed_none] = end_scores[1, :, None]
        curves[:, 1, changed_all] = end_scores[0, :, None]

        # Every other point: one perturbed image each, written into one buffer per chunk.
        steps = torch.nonzero(~(changed_none | changed_all))[:, 0].tolist()
        jobs = [(b, c, k) for b in range(batch) for c in (0, 1) for k in steps]
        images = chunk_buffer(x, min(chunk, len(jobs)))
        changed = torch.empty((len(images), 1, height, width), dtype=torch.bool, device=x.device)
        limits = counts.tolist()
        pixel_ranks = ranks.view(batch, 1, height, width)
        for part in _chunks(len(jobs), chunk):
            for j, (b, c, k) in enumerate(jobs[part]):
                torch.lt(pixel_ranks[b], limits[k], out=changed[j])
                # deletion (c=0) puts the substrate where changed; insertion puts x there
                first, second = (base[b], x[b]) if c == 0 else (x[b], base[b])
                torch.where(changed[j], first, second, out=images[j])
            b, c, k = (
                torch.tensor(column, device=x.device) for column in zip(*jobs[part], strict=True)
            )
            curves[b, c, k] = _scores(model(images[: len(b)]), t[b], score)

        areas = torch.trapezoid(curves.double(), fractions, dim=-1).to(curves.dtype)
    return InsertionDeletion(
        insertion=curves[:, 1].clone(),
        deletion=curves[:, 0].clone(),
        insertion_auc=areas[:, 1].clone(),
        deletion_auc=areas[:, 0].clone(),
        fractions=fractions.to(curves.dtype).clone(),
        target=t.clone(),
    )


def average_drop_increase(
    model: nn.Module,
    x: Tensor,
    saliency: Tensor,
    target: Target = None,
    *,
    batch_size: int = 64,
) -> AverageDropIncrease:
    """Average Drop % and % Increase in Confidence of ``saliency`` over the batch (SPEC 4).

    ``Y`` = softmax probability of the target on ``x``; ``O`` = on ``M * x``, with ``M`` the
    map upsampled bilinearly to H x W and min-max scaled to [0, 1] per sample, and ``x``
    the *normalised* input (as the SPEC says; ``M * x`` is not the masked pixels). A
    constant map has no range to scale: its ``M`` is 0. A ``Y`` that underflows to 0 counts
    as no drop.

    Args:
        model: the classifier, in eval mode, returning logits [B,K]. Left untouched.
        x: the normalised input [B,C,H,W].
        saliency: the maps [B,h,w], ``h <= H``, ``w <= W``.
        target: the class compared; ``None`` = the class predicted on ``x``.
        batch_size: images per forward pass at most (fewer where the memory budget of
            :mod:`tgrad.budget` says so). Changes no number.

    Returns:
        An :class:`AverageDropIncrease`: both percentages as 0-d tensors, ``Y``, ``O``.
    """
    _check_common(model, x, saliency, batch_size)
    batch = x.shape[0]
    with torch.inference_mode(), exact_float32(x.device):
        x = x.detach()
        maps = upsample(saliency.detach().to(x.device, x.dtype), tuple(x.shape[-2:]))
        low = maps.amin((1, 2), keepdim=True)
        span = maps.amax((1, 2), keepdim=True) - low
        mask = torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), 0.0)
        chunk = images_per_chunk(model, x, batch_size, gradients=False)
        images = chunk_buffer(x, min(chunk, batch))  # M * x, a chunk at a time
        parts = [model(part) for part in x.split(chunk)]
        for part in _chunks(batch, chunk):
            for j, i in enumerate(range(batch)[part]):
                torch.mul(mask[i], x[i], out=images[j])
            parts.append(model(images[: part.stop - part.start]))
        logits = torch.cat(parts)
        _check_logits(logits, 2 * batch)
        t = resolve_target(target, logits[:batch])
        original, masked = _scores(logits, t.repeat(2), "probability").view(2, batch).unbind()
        drop = (original - masked).clamp(min=0) / torch.where(original > 0, original, 1.0)
        average_drop = 100.0 * drop.mean()
        increase = 100.0 * (masked > original).to(drop.dtype).mean()
    return AverageDropIncrease(
        average_drop=average_drop.clone(),
        increase=increase.clone(),
        original=original.clone(),
        masked=masked.clone(),
        target=t.clone(),
    )


# --------------------------------------------------------------------------------------
# Helpers


def _check_common(model: nn.Module, x: Tensor, saliency: Tensor, batch_size: int) -> None:
    training = [
        f"{name or type(model).__name__} ({type(m).__name__})"
        for name, m in model.named_modules()
        if m.training and isinstance(m, (_BatchNorm, _DropoutNd))
    ]
    if training:
        raise ValueError(
            f"the model is in training mode: {training[0]}; call model.eval() first (a "
            "train-mode BatchNorm mixes the images of a chunk, Dropout is random)"
        )
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor [B,C,H,W], got {_describe(x)}")
    if not isinstance(saliency, Tensor) or saliency.dim() != 3:
        raise ValueError(f"saliency must be a tensor [B,h,w], got {_describe(saliency)}")
    if saliency.shape[0] != x.shape[0]:
        raise ValueError(
            f"saliency has {saliency.shape[0]} maps for a batch of {x.shape[0]} images"
        )
    if saliency.shape[1] > x.shape[2] or saliency.shape[2] > x.shape[3]:
        raise ValueError(
            f"saliency maps {tuple(saliency.shape[1:])} are larger than the images "
            f"{tuple(x.shape[2:])}; only upsampling is done"
        )
    if saliency.numel() and not bool(torch.isfinite(saliency).all()):
        raise ValueError("saliency contains NaN or infinite values")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)} ({value.dtype})"
    return type(value).__name__


def _check_logits(logits: Tensor, rows: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != rows:
        raise ValueError(f"the model must return logits [B,K], got {tuple(logits.shape)}")


def _substrate(
    x: Tensor,
    substrate: Tensor | str | None,
    blur_kernel: int,
    blur_sigma: float,
    preprocessing: Preprocessing | None,
) -> Tensor:
    """The substrate as a [B,C,H,W] tensor in normalised space."""
    if substrate is None or (isinstance(substrate, str) and substrate == "blur"):
        return blur_substrate(x, blur_kernel, blur_sigma)
    if isinstance(substrate, str) and substrate == "black":
        if preprocessing is None:
            raise ValueError(
                "substrate='black' needs the model's preprocessing (pixel value 0, then "
                "normalised): pass preprocessing=loaded.preprocessing"
            )
        substrate = preprocessing.normalize(x.new_zeros(3, 1, 1))
    if not isinstance(substrate, Tensor):
        raise ValueError(f"substrate must be None, 'blur', 'black' or a tensor, got {substrate!r}")
    try:
        shape = torch.broadcast_shapes(substrate.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"a substrate of shape {tuple(substrate.shape)} does not broadcast to the "
            f"images {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(substrate).all()):
        raise ValueError("substrate contains NaN or infinite values")
    return substrate.detach().to(device=x.device, dtype=x.dtype).expand_as(x).contiguous()


def _ranks(maps: Tensor) -> Tensor:
    """[B, H*W] int32: each pixel's place when sorted by descending value (stable ties)."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order, dtype=torch.int32)
    places = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int32)
    return ranks.scatter_(1, order, places.expand_as(order).contiguous())


def _scores(logits: Tensor, target: Tensor, score: Score) -> Tensor:
    """[N]: the target's softmax probability (or logit) in each row of ``logits`` [N,K]."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    values = logits.softmax(1) if score == "probability" else logits
    return values.gather(1, target[:, None])[:, 0]


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
