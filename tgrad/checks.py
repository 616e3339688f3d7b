"""What the engine checks before a pass: the model, the input and the target, each with a
message that says what to pass instead."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

Target = int | Sequence[int] | Tensor | None
"""A target class: None (top-1 of each sample), one int for the whole batch, or one per sample."""


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Turn a target given by the caller into a long tensor [B] on the logits' device.

    ``None`` picks the top-1 class of each sample. A target must be an integer class
    index: a bool or a float (``1.7``, even ``2.0``) is refused, not rounded, and so is a
    class name (look its index up in the model's class names).
    """
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    if isinstance(target, (str, bytes)) or (
        isinstance(target, (list, tuple)) and any(isinstance(t, (str, bytes)) for t in target)
    ):
        raise ValueError(
            f"a target must be an integer class index, got the text {str(target)[:40]!r}: "
            "pass the class's index (tgrad.labels.find_class(name, categories) finds it)"
        )
    try:
        t = torch.as_tensor(target, device=logits.device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(
            f"a target must be an integer class index 0..{classes - 1} (or a sequence of "
            f"them, one per sample), got {str(target)[:40]}"
        ) from error
    if isinstance(target, bool) or t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(
            f"a target must be an integer class index (or a sequence of them), got {target!r}"
        )
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch} samples")
    if bool(((t < 0) | (t >= classes)).any()):
        shown = t.tolist() if t.numel() <= 8 else f"{t[:8].tolist()}..."
        raise ValueError(f"target class out of range 0..{classes - 1}: {shown}")
    return t


def check_input(x: Tensor) -> None:
    """Raise ValueError unless ``x`` is a finite floating-point batch ``[B, ...]``, B >= 1,
    and autograd can run (not inside ``torch.inference_mode()``)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"the input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"the input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"the input must be a non-empty batch [B, ...], got {tuple(x.shape)}")
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "gradients cannot be computed inside torch.inference_mode(): call the explainer "
            "outside that block"
        )
    if x.is_inference():
        raise ValueError(
            "the input was made inside torch.inference_mode() and cannot take part in "
            "autograd: pass x.clone() made outside that block"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"the input contains {bad} non-finite values (NaN or infinity)")


def check_model(model: object) -> nn.Module:
    """Raise ValueError unless ``model`` is a :class:`torch.nn.Module`; return it."""
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"the model must be a torch.nn.Module (a classifier returning logits [B,K]), "
            f"got {type(model).__name__}"
        )
    return model


def check_matches(model: nn.Module, x: Tensor) -> None:
    """Raise ValueError when ``x`` cannot go through ``model``: a floating-point dtype
    other than its weights', or a channel count its first convolution does not take."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and weight.dtype != x.dtype:
        raise ValueError(
            f"the input is {x.dtype} but the model's weights are {weight.dtype}: pass "
            f"x.to({weight.dtype}) (or convert the model with model.to({x.dtype}))"
        )
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is not None and x.dim() == conv.weight.dim() and x.shape[1] != conv.in_channels:
        hint = {
            1: "a grayscale image: repeat it to 3 channels (x.expand(-1, 3, -1, -1))",
            4: "an image with alpha: drop the alpha channel (x[:, :3])",
        }.get(int(x.shape[1]), "convert the image to the model's channels")
        count = int(x.shape[1])
        raise ValueError(
            f"the model's first convolution takes {conv.in_channels}-channel images; "
            f"the input has {count} channel{'' if count == 1 else 's'} ({hint})"
        )
