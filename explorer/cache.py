"""What the explorer keeps between requests: a thread-safe LRU, and the model cache (each
model loaded once, at most a few in memory, each with its explainer). Nothing here
imports Gradio."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from explorer.jobs import Progress
from tgrad.models import DEFAULT_MODEL, DownloadProgress, LoadedModel, ModelInfo, load_model, zoo
from tgrad.tgrad import TGrad

MAX_MODELS = 2

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe dict that keeps at most ``capacity`` entries, least recently used out."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value for ``key`` (now the most recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Store ``value``, evicting the least recently used entries beyond capacity."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class ModelEntry:
    """A loaded model with its explainer (TGrad may be called from several threads)."""

    loaded: LoadedModel
    explainer: TGrad


class ModelCache:
    """At most ``capacity`` models in memory; each is loaded once even under concurrency."""

    def __init__(
        self, capacity: int = MAX_MODELS, loader: Callable[..., LoadedModel] = load_model
    ) -> None:
        self._entries: LRU[str, ModelEntry] = LRU(capacity)
        self._loader = loader
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, name: str, progress: DownloadProgress | None = None) -> ModelEntry:
        """The model ``name`` (loading it if needed; may raise WeightsUnavailableError).

        ``progress(bytes_done, bytes_total)`` is called while its weights download, if
        they do (the loader is called as ``loader(name, progress=progress)``).
        """
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        with self._lock:
            name_lock = self._loading.setdefault(name, threading.Lock())
        with name_lock:  # a second thread asking for the same model waits for the first
            entry = self._entries.get(name)
            if entry is None:
                loaded = (
                    self._loader(name)
                    if progress is None
                    else self._loader(name, progress=progress)
                )
                entry = ModelEntry(loaded, TGrad(loaded.module))
                self._entries.put(name, entry)
        return entry

    def names(self) -> list[str]:
        """The models in memory, least recently used first."""
        return self._entries.keys()


def offered_models(allow_downloads: bool | None = None) -> list[ModelInfo]:
    """The models the page offers (:func:`tgrad.models.zoo`), the offline default first:
    those whose weights are on disk and, where downloads are allowed, those that
    download on first use."""
    return sorted(zoo(allow_downloads), key=lambda m: m.name != DEFAULT_MODEL)


def available_models() -> list[str]:
    """The names of :func:`offered_models`."""
    return [info.name for info in offered_models()]


def download_report(report: Progress, model: str) -> DownloadProgress:
    """A weights download's ``progress(done, total)`` as a progress report."""

    def downloading(done: int, total: int) -> None:
        megabytes = f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else "starting"
        report(done / total if total else 0.0, f"downloading the weights of {model}: {megabytes}")

    return downloading
