"""Models of the optional ``timm`` package, as ``timm:<name>`` (SPEC 6).

``timm`` is imported only when such a model is asked for. Pretrained weights are read
from the Hugging Face cache when they are there (no network); otherwise, when downloads
are allowed, timm's own hub download fetches them; with downloads off a missing file is
a :class:`~tgrad.models.WeightsUnavailableError` saying where it belongs. The
preprocessing comes from the model's pretrained data config (input size, crop
percentage, interpolation, mean and std).
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
import torchvision
from torch import nn

from tgrad.preprocessing import Preprocessing

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""The file names timm's Hugging Face repositories hold their weights under."""


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError as error:
        raise ValueError("timm models need the optional package timm: pip install timm") from error
    return timm


def _architecture(name: str) -> tuple[ModuleType, str]:
    timm = _timm()
    if not timm.is_model(name):
        raise ValueError(
            f"Unknown timm model {name!r}: see timm.list_models() (e.g. timm:resnet50.a1_in1k)"
        )
    return timm, name


def _cached_file(name: str) -> str | None:
    """The weights file of ``name`` in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in _WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id=repo, filename=filename)
        if isinstance(found, str):
            return found
    return None


def _unavailable(name: str, reason: str) -> Exception:
    from tgrad.models import WeightsUnavailableError

    return WeightsUnavailableError(
        f"No pretrained weights for 'timm:{name}': {reason}. timm downloads them from the "
        "Hugging Face hub into its cache (HF_HOME) on first use where downloads are allowed "
        "(TGRAD_OFFLINE and HF_HUB_OFFLINE unset); or choose weights='random' explicitly."
    )


def status(name: str, allowed: bool) -> tuple[bool, str]:
    """``(available offline, where)``, as :func:`tgrad.models.weights_status`."""
    _architecture(name)
    cached = _cached_file(name)
    if cached is not None:
        return True, cached
    then = "would be downloaded by timm" if allowed else "downloads are off"
    return False, f"timm:{name} is not in the Hugging Face cache; {then}"


def build(name: str, weights: str, allowed: bool, seed: int) -> tuple[nn.Module, list[str]]:
    """The timm model ``name`` with its weights, and its class names."""
    timm, name = _architecture(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights == "random":
            module = timm.create_model(name, pretrained=False)
        else:
            cached = _cached_file(name)
            try:
                if cached is not None:
                    module = timm.create_model(name, pretrained=False, checkpoint_path=cached)
                elif not allowed:
                    raise _unavailable(name, "not in the Hugging Face cache and downloads are off")
                else:
                    module = timm.create_model(name, pretrained=True)
            except (OSError, RuntimeError, ValueError) as error:
                if type(error).__name__ == "WeightsUnavailableError":
                    raise
                raise _unavailable(name, f"they could not be had ({str(error)[:120]})") from error
    classes = getattr(module, "num_classes", 1000)
    if classes == 1000:
        categories = list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    else:
        categories = [f"class {k}" for k in range(classes)]
    return module, categories


def preprocessing(name: str) -> Preprocessing:
    """The model's preprocessing from its pretrained data config (no weights needed)."""
    timm, name = _architecture(name)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    config = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {})
    size = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    interpolation = config.get("interpolation", "bicubic")
    return Preprocessing(
        resize=math.floor(size / crop_pct),
        crop=size,
        interpolation=interpolation if interpolation in ("bicubic", "bilinear") else "bicubic",
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
    )
