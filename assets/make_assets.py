"""Regenerate the sample photos in assets/ from scikit-image's bundled data.

Only images that ship inside the scikit-image wheel are used (no download). Their
sources and licences are in assets/LICENSES.md. Run from anywhere:

    pip install scikit-image==0.26.0 && python assets/make_assets.py
"""

from pathlib import Path

from PIL import Image
from skimage import data

ASSETS = Path(__file__).resolve().parent
JPEG_QUALITY = 92

# file name -> scikit-image data function (each returns an HxWx3 uint8 array)
PHOTOS = {
    "coffee.jpg": data.coffee,
    "chelsea.jpg": data.chelsea,
    "astronaut.jpg": data.astronaut,
    "rocket.jpg": data.rocket,
}


def main() -> None:
    """Write every photo of PHOTOS into assets/ as a JPEG of quality JPEG_QUALITY."""
    for file_name, load in PHOTOS.items():
        Image.fromarray(load()).save(ASSETS / file_name, quality=JPEG_QUALITY)
        print(f"wrote {ASSETS / file_name}")


if __name__ == "__main__":
    main()
