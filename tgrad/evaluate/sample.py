"""The sample of the evaluation job: which images, in which order, explained for which
class (see :mod:`tgrad.evaluate`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_WNIDS_FILE = Path(__file__).parent.parent / "data" / "imagenet_wnids.txt"


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (``tgrad/data``; see there)."""
    lines = _WNIDS_FILE.read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@functools.cache
def _wnid_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


@dataclass(frozen=True)
class Sample:
    """One image of the sample."""

    key: str
    """Its path relative to the folder, with ``/``: the key of its records."""
    path: Path
    target: int | None
    """The class of its WordNet-id folder; ``None``: the model's top-1."""


def list_images(folder: str | Path) -> list[str]:
    """Keys (relative POSIX paths) of the images in ``folder`` and its direct subfolders,
    sorted; hidden files and folders are left out."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--images must be a folder, got {str(folder)!r}")
    keys = []
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        files = sorted(entry.iterdir()) if entry.is_dir() else [entry]
        for path in files:
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_file():
                keys.append(path.relative_to(root).as_posix())
    return sorted(keys)


def sample_images(folder: str | Path, n: int, seed: int = 0) -> list[Sample]:
    """The first ``n`` images of a seeded permutation of :func:`list_images` (all of them
    when there are fewer), each with its WordNet-id target where its folder has one."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--n must be an integer >= 1, got {n!r}")
    keys = list_images(folder)
    if not keys:
        raise ValueError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(folder)!r} or its "
            "direct subfolders"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(keys), generator=generator)[:n].tolist()
    wnids = _wnid_index()
    samples = []
    for index in order:
        key = keys[index]
        parent = key.rpartition("/")[0]
        samples.append(Sample(key, Path(folder) / key, wnids.get(parent)))
    return samples
