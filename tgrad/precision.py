"""True float32 on CUDA while the engine computes (TF32 off, the caller's settings back).

TF32 rounds the forward and backward differently and breaks completeness
(``benchmarks/gpu_precision.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_precision_lock = threading.Lock()
_precision_users = 0
_saved_precision: tuple[Any, ...] = ()


def _new_precision_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
        torch.backends.cudnn, "conv"
    )


def _save_and_clear_tf32() -> tuple[Any, ...]:
    """Save the caller's TF32 settings and ask for true float32 convolutions and matmuls.

    Through PyTorch's precision API (``fp32_precision``) where it exists: once a program
    has set that API, reading the legacy ``allow_tf32`` flags raises. The legacy flags
    only where the new API is absent.
    """
    backends = torch.backends
    if _new_precision_api():
        saved = ("new", backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision)
        backends.cuda.matmul.fp32_precision = "ieee"
        backends.cudnn.conv.fp32_precision = "ieee"
        return saved
    saved = ("legacy", backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
    backends.cudnn.allow_tf32 = False
    backends.cuda.matmul.allow_tf32 = False
    return saved


def _restore_tf32(saved: tuple[Any, ...]) -> None:
    backends = torch.backends
    if saved[0] == "new":
        backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision = saved[1:]
    else:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved[1:]


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Turn TF32 off for CUDA convolutions and matmuls while the block runs.

    The settings are process-wide, so overlapping users (threads) are counted: the first
    one in saves and clears them, the last one out restores them exactly. A no-op off CUDA.
    """
    global _precision_users, _saved_precision
    if device.type != "cuda":
        yield
        return
    with _precision_lock:
        if _precision_users == 0:
            _saved_precision = _save_and_clear_tf32()
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                _restore_tf32(_saved_precision)
