"""Files for the explorer's tests: the bundled photos and the bad uploads of the issue."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
OUTPUT = ROOT / "tests" / "output"
PHOTOS = {name: ASSETS / f"{name}.jpg" for name in ("astronaut", "chelsea", "coffee", "rocket")}


def text_as_jpg(folder: Path) -> Path:
    """A text file renamed .jpg."""
    path = folder / "notes.jpg"
    path.write_text("These are my notes, not a photo.\n" * 20)
    return path


def truncated_jpeg(folder: Path) -> Path:
    """The first half of a real JPEG."""
    data = PHOTOS["coffee"].read_bytes()
    path = folder / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def huge_png(folder: Path, side: int = 12_000) -> Path:
    """A ``side`` x ``side`` grey PNG of zeros (144 MP at 12000: small on disk)."""
    path = folder / f"huge_{side}.png"
    if not path.exists():
        Image.new("L", (side, side)).save(path, compress_level=1)
    return path


def large_photo(folder: Path) -> Path:
    """A 6000 x 4000 PNG (24 MP, under the limit): must be resized, not refused."""
    path = folder / "large_6000x4000.png"
    if not path.exists():
        small = Image.open(PHOTOS["chelsea"]).convert("RGB")
        small.resize((6000, 4000), Image.Resampling.NEAREST).save(path, compress_level=1)
    return path


def svg_image(folder: Path) -> Path:
    """A small SVG drawing: a vector image, which the explorer does not support."""
    path = folder / "drawing.svg"
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        '<circle cx="32" cy="32" r="30" fill="red"/></svg>\n'
    )
    return path


class Request:
    """What Gradio passes a handler as ``gr.Request``: the handlers read the session hash
    and the page's query parameters."""

    def __init__(self, session_hash: str = "", query_params: dict | None = None) -> None:
        self.session_hash = session_hash
        self.query_params = query_params or {}


class FakeLoaded:
    """What ``tgrad.models.load_model`` gives, for a test's own ImageNet-sized module."""

    def __init__(self, module: object, name: str, preprocessing: object = None) -> None:
        from tgrad.models import LITE0_PREPROCESSING, imagenet_categories

        self.name = name
        self.module = module.eval()
        self.preprocessing = preprocessing or LITE0_PREPROCESSING
        self.categories = imagenet_categories()


def small_preprocessing() -> object:
    """A 64 px centre crop with ImageNet's normalisation: a torchvision model's structure
    at a fraction of its time."""
    from tgrad.models import LITE0_PREPROCESSING as LITE0
    from tgrad.preprocessing import Preprocessing

    return Preprocessing(72, 64, "bilinear", LITE0.mean, LITE0.std)


def random_torchvision(name: str, **_: object) -> FakeLoaded:
    """A loader for ``Session(loader=...)``: torchvision's ``name`` with random weights
    (seed 0), seen through :func:`small_preprocessing`."""
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = torchvision.models.get_model(name, weights=None)
    return FakeLoaded(module, name, small_preprocessing())
