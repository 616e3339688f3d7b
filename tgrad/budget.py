"""How many images one forward (or forward + backward) may take: chunks sized from a
memory budget.

The methods that run many passes of their own (ScoreCAM, Integrated Gradients,
SmoothGrad) and the metrics (insertion / deletion, Average Drop) send perturbed images
through the model in chunks. A chunk's transient memory grows with its number of images:
the activations of a forward under ``inference_mode`` live one layer at a time, but a
forward that is followed by a backward keeps everything autograd saves, which for
EfficientNet-Lite0 at 224 px is several times the image's own activations. So the
number of images per chunk is ``min(requested, budget // cost of one image)``, at least 1,
where the cost of one image is measured once per model, input shape, dtype and device by
one probe forward of a single image (:func:`image_bytes`):

* ``gradients=False`` (a forward alone): ``3 * largest`` + the image, where ``largest`` is
  the largest tensor any operation of the forward returns. A forward holds a layer's
  input and its output at once, plus at most one more tensor of that size (a residual
  branch's input, a normalisation's output before an in-place activation), so three
  times the largest output bounds what is alive at any moment.
* ``gradients=True`` (forward + backward): everything autograd saves for the backward
  (its bytes counted once per storage, the model's own parameters and buffers left out),
  plus the same ``3 * largest`` for the gradients alive during the backward, plus the
  image and its gradient.

The budget is :data:`DEFAULT_BUDGET_MB` for the device type (CPU 128 MB: one chunk then
adds about as much as one explanation; CUDA 2 GB), or ``TGRAD_MEMORY_BUDGET_MB`` from the
environment for every device. Chunking changes no number beyond float rounding: each
image goes through the same operations whatever shares its chunk.
"""

from __future__ import annotations

import os
import threading
import weakref

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "BUDGET_ENV",
    "DEFAULT_BUDGET_MB",
    "budget_bytes",
    "chunk_buffer",
    "image_bytes",
    "images_per_chunk",
]

DEFAULT_BUDGET_MB: dict[str, int] = {"cpu": 128, "cuda": 2048}
"""Transient memory one chunk may use, in MiB, by device type (others: the CPU's)."""
BUDGET_ENV = "TGRAD_MEMORY_BUDGET_MB"
"""An environment variable that, when set, replaces :data:`DEFAULT_BUDGET_MB` (MiB)."""

_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def budget_bytes(device: torch.device | str) -> int:
    """The memory budget of one chunk on ``device``, in bytes."""
    given = os.environ.get(BUDGET_ENV, "").strip()
    if given:
        try:
            megabytes = float(given)
        except ValueError:
            megabytes = -1.0
        if not megabytes > 0:
            raise ValueError(f"{BUDGET_ENV} must be a positive number of MB, got {given!r}")
    else:
        megabytes = DEFAULT_BUDGET_MB.get(torch.device(device).type, DEFAULT_BUDGET_MB["cpu"])
    return int(megabytes * 2**20)


class _LargestOutput(TorchDispatchMode):
    """Remembers the size of the largest tensor any operation returns (thread-local)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor) and leaf.layout == torch.strided:
                self.largest = max(self.largest, leaf.numel() * leaf.element_size())
        return out


def _probe(model: nn.Module, one: Tensor, gradients: bool) -> int:
    """Bytes one image costs (see the module docstring), from one forward of ``one``."""
    fixed = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in fixed:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    largest = _LargestOutput()
    image = one.numel() * one.element_size()
    if gradients:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with largest:
                model(one.detach().requires_grad_(True))
        return sum(saved.values()) + 3 * largest.largest + 2 * image
    with torch.inference_mode(), largest:
        model(one.detach())
    return 3 * largest.largest + image


def image_bytes(model: nn.Module, x: Tensor, gradients: bool) -> int:
    """The transient bytes one image of ``x`` [B,C,H,W] costs in a chunk of ``model``'s
    forwards (with a backward when ``gradients``); measured once per model, input shape,
    dtype and device, then remembered."""
    key = (tuple(x.shape[1:]), x.dtype, x.device, gradients)
    with _lock:
        known = _cache.get(model, {}).get(key)
    if known is not None:
        return known
    cost = _probe(model, x[:1].clone(), gradients)  # its own storage: x's is not saved
    with _lock:
        _cache.setdefault(model, {})[key] = cost
    return cost


def images_per_chunk(model: nn.Module, x: Tensor, requested: int, gradients: bool) -> int:
    """How many images of ``x``'s shape one chunk takes: at most ``requested``, at most what
    the budget of ``x``'s device holds (:func:`budget_bytes` // :func:`image_bytes`), and
    at least 1."""
    per_image = image_bytes(model, x, gradients)
    return max(1, min(int(requested), budget_bytes(x.device) // max(per_image, 1)))


def chunk_buffer(x: Tensor, images: int, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised buffer of ``images`` images shaped like one image of ``x``
    [images,C,H,W], on its device, with its dtype (or ``dtype``) and its memory layout: a
    channels-last ``x`` (as a photo converted from pixels often is) gives a channels-last
    buffer, so the model computes each chunk with the same kernels as ``x`` itself."""
    layout = (
        torch.channels_last
        if x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    return torch.empty(
        (images, *x.shape[1:]), dtype=dtype or x.dtype, device=x.device, memory_format=layout
    )
