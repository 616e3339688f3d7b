"""The model picker: three real models offline; where downloads are allowed, every zoo
model, the missing ones marked with their download size and downloaded when picked (with
progress). A fake downloader stands in for the network: it serves a random
mobilenet_v2 state dict in chunks, as urllib would."""

from __future__ import annotations

import io
import logging

import gradio as gr
import pytest
import torch
import torchvision

from explorer.cache import offered_models
from explorer.handlers import Handlers
from explorer.session import Session
from explorer.tabs import explain_draw
from explorer.ui import build_demo
from tests.explorer_files import PHOTOS
from tgrad import models

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CHUNK = 2**20


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """No torchvision weights cached: a fresh machine or Space."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def online(empty_hub, monkeypatch):
    monkeypatch.delenv("TGRAD_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return empty_hub


@pytest.fixture
def offline(empty_hub, monkeypatch):
    monkeypatch.setenv("TGRAD_OFFLINE", "1")
    return empty_hub


@pytest.fixture
def fake_network(online, monkeypatch):
    """mobilenet_v2's weights come from a fake server: a random state dict, 1 MiB a
    chunk. Returns the list of URLs fetched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = torchvision.models.get_model("mobilenet_v2", weights=None).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    fetched: list[str] = []

    real = models._remote

    def remote(name):
        if name != "mobilenet_v2":
            return real(name)
        return "https://weights.invalid/mobilenet_v2.pth", online / "mobilenet_v2.pth"

    def fetch(url, destination, progress):
        assert url == "https://weights.invalid/mobilenet_v2.pth", f"{url} was fetched"
        fetched.append(url)
        with destination.open("wb") as out:
            progress(0, len(data))
            for start in range(0, len(data), CHUNK):
                out.write(data[start : start + CHUNK])
                progress(min(start + CHUNK, len(data)), len(data))

    monkeypatch.setattr(models, "_remote", remote)
    monkeypatch.setattr(models, "_fetch", fetch)
    return fetched


def dropdown(demo: gr.Blocks) -> dict:
    config = demo.get_config_file()
    return next(c for c in config["components"] if c["props"].get("elem_id") == "model")


def test_offline_the_picker_offers_the_three_packaged_models(offline):
    offered = offered_models()
    assert [m.name for m in offered] == LITE and all(m.available for m in offered)
    props = dropdown(build_demo(Session()))["props"]
    assert [name for _, name in props["choices"]] == LITE
    labels = [label for label, _ in props["choices"]]
    assert labels == [  # each says how its decomposition is exact (issue 14)
        "EfficientNet-Lite0 (224 px) · piecewise linear",
        "EfficientNet-Lite1 (240 px) · piecewise linear",
        "EfficientNet-Lite2 (260 px) · piecewise linear",
    ]
    assert "on this machine" in props["info"]


def test_online_every_model_is_offered_with_its_download_size(online):
    offered = {m.name: m for m in offered_models()}
    assert list(offered) == list(models.MODEL_NAMES)  # the offline default first
    vgg = explain_draw.model_choice(offered["vgg16"])
    assert vgg == (
        "VGG-16 (the paper's model) · piecewise linear · 553 MB download on first use",
        "vgg16",
    )
    assert explain_draw.model_choice(offered["efficientnet_lite1"]) == (
        "EfficientNet-Lite1 (240 px) · piecewise linear",
        "efficientnet_lite1",
    )
    for name in ("efficientnet_b0", "mobilenet_v3_large", "convnext_tiny"):  # issue 14
        label, _ = explain_draw.model_choice(offered[name])
        assert " · exact via intercepts · " in label and "MB download on first use" in label
    props = dropdown(build_demo(Session()))["props"]
    assert len(props["choices"]) == len(models.MODEL_NAMES)
    assert "fetches its weights once" in props["info"]


def test_picking_a_model_downloads_it_once_with_progress(fake_network, online):
    handlers = Handlers(Session(), [m.name for m in offered_models()])
    reports: list[tuple[float, str]] = []

    def progress(fraction, desc=""):
        reports.append((fraction, desc))

    note = handlers.prepare_model("mobilenet_v2", progress)
    assert fake_network == ["https://weights.invalid/mobilenet_v2.pth"]
    assert (online / "mobilenet_v2.pth").is_file()
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    assert len(reports) >= 10  # a 14 MB file in 1 MiB chunks: the bar moves
    assert reports[-1][1].startswith("downloading the weights of mobilenet_v2: 14 of 14 MB")
    assert note.startswith("`mobilenet_v2`: ImageNet weights, 3.5 M parameters")
    # picked again, or explained: no second download
    handlers.prepare_model("mobilenet_v2", progress)
    _, _, decomposition, _ = handlers.explain(str(PHOTOS["coffee"]), "mobilenet_v2", None, 0.5)
    assert fake_network == ["https://weights.invalid/mobilenet_v2.pth"]
    total = sum(row["contribution"] for row in decomposition["terms"])
    assert abs(total + decomposition["gap"] - decomposition["logit"]) < 1e-4


def test_a_failed_download_says_so_without_a_path(online, monkeypatch, caplog):
    def broken(url, destination, progress):
        raise OSError("connection reset")

    monkeypatch.setattr(models, "_fetch", broken)
    handlers = Handlers(Session(), [m.name for m in offered_models()])
    with caplog.at_level(logging.WARNING), pytest.raises(gr.Error) as caught:
        handlers.prepare_model("resnet18", lambda *a, **k: None)
    message = caught.value.message
    assert message.startswith("The weights of resnet18 are not on this server")
    assert "/" not in message and "connection reset" not in message
    # whoever runs the server reads the whole story: which file, where
    assert str(online) in caplog.text and "resnet18-" in caplog.text
    assert list(online.glob("*")) == []  # nothing half-written is left


def test_without_a_network_the_message_says_so_and_what_to_do(online, monkeypatch):
    import urllib.error

    def unreachable(url, destination, progress):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(models, "_fetch", unreachable)
    handlers = Handlers(Session(), [m.name for m in offered_models()])
    with pytest.raises(gr.Error) as caught:
        handlers.prepare_model("vgg16", lambda *a, **k: None)
    assert caught.value.message.startswith(
        "The weights of vgg16 could not be downloaded: this server cannot reach the network."
    )
    assert "TGRAD_OFFLINE=1" in caught.value.message and "Errno" not in caught.value.message
    assert list(online.glob("*")) == []


def test_offline_a_model_not_offered_is_refused_and_nothing_downloads(offline, monkeypatch):
    def refuse(*args):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(models, "_fetch", refuse)
    handlers = Handlers(Session(), [m.name for m in offered_models()])
    for name in ("vgg16", "mobilenet_v2", "../efficientnet_lite0"):
        with pytest.raises(gr.Error, match="The model must be one of: efficientnet_lite0, "):
            handlers.prepare_model(name, lambda *a, **k: None)


@pytest.mark.parametrize(
    ("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
)
def test_the_page_explains_with_each_packaged_model_at_its_own_size(offline, name, size):
    handlers = Handlers(Session(), LITE)
    overlay, top5, decomposition, key = handlers.explain(str(PHOTOS["coffee"]), name, None, 0.5)
    assert overlay.shape == (2 * size, 2 * size, 3)  # drawn at twice the model's input
    assert next(iter(top5)) == "967: espresso ← explained"
    assert decomposition["terms"][0]["grid"] == [size, size]
    total = sum(row["contribution"] for row in decomposition["terms"])
    assert abs(total + decomposition["gap"] - decomposition["logit"]) < 1e-4
    explanation = handlers.session.lookup(key)
    last = explanation.title(explanation.term_indices[-1])
    side = -(-size // 32)  # five stride-2 stages: ceil(size / 32)
    assert last == f"Head · 1x1 conv · {side} x {side}"
    assert len(handlers.show_grid(key)) == explanation.positions
