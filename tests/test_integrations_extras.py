"""The adapters' libraries are optional: without them ``import tgrad`` and the explorer
work and never import them, and an adapter says which extra installs its library; the
extras in pyproject.toml are the libraries the tests pin."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tgrad.integrations import MissingExtraError

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = {  # adapter module -> (the library it imports, the extra that installs it)
    "tgrad.integrations.captum": ("captum", "captum"),
    "tgrad.integrations.pytorch_grad_cam": ("pytorch_grad_cam", "grad-cam"),
}
EXTRAS = {"captum": "captum", "grad-cam": "grad-cam", "quantus": "quantus"}  # -> dist name
ALL_EXTRAS = {**EXTRAS, "timm": "timm"}  # timm: the timm:<name> models (tgrad/timm_zoo.py)


def hide(monkeypatch, library: str) -> None:
    """Make ``library`` (and its submodules) unimportable for the rest of the test."""
    for name in [n for n in sys.modules if n == library or n.startswith(library + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, library, None)  # None: "import halted"
    for adapter in ADAPTERS:
        monkeypatch.delitem(sys.modules, adapter, raising=False)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapter_without_its_library_names_the_extra(monkeypatch, adapter):
    library, extra = ADAPTERS[adapter]
    hide(monkeypatch, library)
    with pytest.raises(MissingExtraError) as error:
        importlib.import_module(adapter)
    assert f"pip install 'tgrad-explorer[{extra}]'" in str(error.value)
    assert repr(library) in str(error.value)
    assert isinstance(error.value, ImportError)  # what `except ImportError` expects


def test_the_quantus_adapter_needs_no_quantus(monkeypatch):
    import numpy as np

    from tests.nets import small_cnn

    hide(monkeypatch, "quantus")
    monkeypatch.delitem(sys.modules, "tgrad.integrations.quantus", raising=False)
    module = importlib.import_module("tgrad.integrations.quantus")
    maps = module.explain(small_cnn(), np.zeros((1, 3, 16, 16), np.float32), np.array([0]))
    assert maps.shape == (1, 1, 16, 16)


BLOCKED = ("captum", "pytorch_grad_cam", "quantus")

WITHOUT_EXTRAS = """
import importlib.abc, json, sys

BLOCKED = {blocked!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Block())

import torch
import tgrad
import tgrad.integrations
from tgrad.methods import explain
from tgrad.integrations.quantus import explain as quantus_explain
from tests.nets import small_cnn

x = torch.randn(1, 3, 16, 16)
maps = explain(small_cnn(), x, methods=("tgrad", "gradcam", "random", "edge"))
assert quantus_explain(small_cnn(), x.numpy(), [0]).shape == (1, 1, 16, 16)

from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from explorer.ui import build_demo
from tests.explorer_files import Request
from tgrad.models import DEFAULT_MODEL

build_demo(Session())
steps = list(Handlers(Session()).compare(
    str(BUNDLED_PHOTOS[1]), DEFAULT_MODEL, None, ["gradcam", "random"], request=Request("r")
))
shown = steps[-1][1]["methods"]
errors = {{}}
for adapter in ("captum", "pytorch_grad_cam"):
    try:
        importlib.import_module("tgrad.integrations." + adapter)
    except tgrad.integrations.MissingExtraError as error:
        errors[adapter] = str(error)
print(json.dumps({{
    "maps": sorted(maps),
    "compare": {{m: shown[m]["status"] for m in shown}},
    "loaded": sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED),
    "errors": errors,
}}))
"""


@pytest.mark.slow  # a fresh process
def test_tgrad_and_the_explorer_work_without_the_optional_libraries():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TGRAD_OFFLINE": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS.format(blocked=BLOCKED)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["maps"] == ["edge", "gradcam", "random", "tgrad"]
    assert result["compare"] == {"gradcam": "done", "random": "done"}
    assert result["loaded"] == []  # nothing tried to import them behind our back
    assert "tgrad-explorer[captum]" in result["errors"]["captum"]
    assert "tgrad-explorer[grad-cam]" in result["errors"]["pytorch_grad_cam"]


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_the_extras_are_the_libraries_the_tests_pin():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) == set(ALL_EXTRAS)
    pins = requirement_pins(ROOT / "requirements-dev.txt")
    for extra, dist in ALL_EXTRAS.items():
        (requirement,) = [Requirement(r) for r in extras[extra]]
        assert requirement.name == dist
        # the version the tests run is one the extra allows
        assert requirement.specifier.contains(pins[dist]), (extra, str(requirement))
