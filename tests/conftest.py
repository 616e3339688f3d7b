"""Test set-up: offline, deterministic, the repository root importable."""

import os
import sys

import pytest

os.environ.setdefault("TGRAD_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch at one thread, as the explorer's server runs (explorer.session.set_torch_threads);
    the caller's setting is restored after the module."""
    import torch

    from explorer.session import set_torch_threads

    before = torch.get_num_threads()
    set_torch_threads(1)
    yield
    torch.set_num_threads(before)
