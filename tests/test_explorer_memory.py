"""What the explorer keeps, and what one explanation may cost.

A cached explanation keeps only what the views draw: no model, no record of the pass, and
under 2 MB for EfficientNet-Lite0 (it was 9.4 MB, and through its record it kept its
model alive after the model cache had let it go). The worst image shape the loader
accepts must stay within the README's "about 250 MB per explanation".
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer.session import Session
from tests.explorer_files import PHOTOS, ROOT
from tgrad.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs

LITE0_ENTRY_BYTES = 2_000_000


def reachable(root: object) -> tuple[list[torch.Tensor], list[np.ndarray], list[object]]:
    """Every tensor, numpy array and module (or other suspicious object) reachable from
    ``root`` through the garbage collector's references, not through any accounting of
    the object's own. Classes, functions and modules (the Python kind) are not followed."""
    tensors, arrays, suspects = [], [], []
    seen: set[int] = set()
    todo = [root]
    skip = (type, type(sys), type(len), type(reachable))
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
            if obj.grad_fn is not None:
                suspects.append(obj.grad_fn)  # an autograd graph would hold the pass
            continue
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
            continue
        if isinstance(obj, nn.Module) or type(obj).__name__ in ("Record", "Call", "TGrad"):
            suspects.append(obj)
            continue
        todo.extend(gc.get_referents(obj))
    return tensors, arrays, suspects


def held_bytes(tensors: list[torch.Tensor], arrays: list[np.ndarray]) -> int:
    """Bytes of the distinct tensor storages and array buffers (a view counts its whole
    storage: a small slice of a large tensor keeps all of it)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    buffers = {}
    for a in arrays:
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        buffers[id(base)] = base.nbytes
    return sum(storages.values()) + sum(buffers.values())


def test_a_cached_explanation_reaches_no_model_and_holds_under_2_mb():
    """What the views need of a Lite0 explanation: its input x (602 kB), the large crop
    of the photo (448 x 448 x 3: 602 kB), the saliency (201 kB), 50 layer maps on their
    own grids (513 kB) and 1000 logits: 1.92 MB. Anything more (the record of the pass,
    a copy of a pixel array, a map upsampled to 224 px) would show."""
    session = Session()
    explanation = session.explain(PHOTOS["coffee"].read_bytes())
    tensors, arrays, suspects = reachable(explanation)
    assert suspects == []
    held = held_bytes(tensors, arrays)
    assert held < LITE0_ENTRY_BYTES, f"{held / 1e6:.2f} MB"
    # and it still draws every view: the last running total is the saliency, bit for bit
    last = explanation.positions - 1
    assert torch.equal(explanation.layer_map(last, True), explanation.result.saliency[0])
    assert explanation.pixels.shape == (224, 224, 3)


def test_an_evicted_model_is_freed_while_its_explanations_stay_cached():
    loaded: list[object] = []

    def loader(name: str, **_: object) -> object:
        loaded.append(load_model("efficientnet_lite0"))  # two instances, named a and b
        return loaded[-1]

    session = Session(max_models=1, loader=loader)
    explanation = session.explain(PHOTOS["coffee"].read_bytes(), "a")
    # every module: a record of the pass keeps the modules it saw, not the model itself
    modules = [weakref.ref(m) for m in loaded[0].module.modules()]
    loaded.clear()
    session.models.get("b")  # the model cache holds one model: a goes
    gc.collect()
    alive = [ref() for ref in modules if ref() is not None]
    assert alive == []
    assert session.lookup(explanation.key) is explanation  # its explanation stays


PEAK = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path
    from explorer.session import Session, set_torch_threads

    set_torch_threads(1)
    def kb(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    session = Session(display=int(sys.argv[2]))
    session.models.get(sys.argv[3])
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = kb("VmRSS")
    explanation = session.explain(Path(sys.argv[1]).read_bytes(), sys.argv[3])
    print(json.dumps({"peak": (kb("VmHWM") - base) * 1024, "crop": explanation.x.shape[-1]}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.slow  # a full-resolution photo at the largest accepted shape
def test_the_worst_accepted_shape_stays_within_250_mb(tmp_path):
    """The explorer resizes the photo's shorter side (256 px for Lite0) and draws it at
    up to three times that, so the costliest shape is the longest one accepted:
    MAX_ASPECT to 1, whose resize at 3x holds 768 x 15360 px (47 MB in PIL's 4 bytes a
    pixel). The README promises at most about 250 MB per explanation (bench_memory,
    Lite0): the first explanation after the model is loaded, its one-time allocations
    included (about 140 MB for a square photo), must keep it. At 200 to 1 the resize
    alone would hold 470 MB; before the limit a 30000 x 2 PNG of 266 bytes added 2 GB."""
    from PIL import Image

    from tgrad.images import MAX_ASPECT

    path = tmp_path / "strip.png"
    Image.new("RGB", (MAX_ASPECT * 100, 100), (120, 30, 200)).save(path)
    run = subprocess.run(
        [sys.executable, "-c", PEAK, str(path), "3", "efficientnet_lite0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["crop"] == 224
    assert result["peak"] < 250_000_000, f"{result['peak'] / 1e6:.0f} MB"
