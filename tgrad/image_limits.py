"""What an image may cost before it is decoded: the limits on pixels, aspect and the
decoder's memory, checked from the header (:mod:`tgrad.images` applies them).

The cost model (:func:`_decode_cost`) counts the bytes PIL and the decoder hold at once
for one file; ``benchmarks/bench_memory.py`` measures the real peaks, and the README's
memory section reports them.
"""

from __future__ import annotations

import math

from PIL import Image, JpegImagePlugin

MAX_PIXELS: int = 64_000_000
"""Pixels an image may have at most (width x height), whatever its format."""
MAX_SIDE: int = 2048
"""Pixels of the longest side after loading (larger images are shrunk, aspect kept)."""
MAX_ASPECT: int = 20
"""The longest side may be at most this many times the shortest. A classifier resizes
the *shorter* side, so a strip of a few hundred bytes (30000 x 2 px) would become an image
hundreds of thousands of pixels long; panoramas (up to about 10:1) pass."""

DECODE_BUDGET: int = 200_000_000
"""Bytes the decoder may hold at once (:func:`_decode_cost`). Beside it, loading holds the
image reduced by an integer factor (under ``(1.5 * MAX_SIDE)**2 * 4`` bytes) and the
bands being converted; the budget keeps one explanation of the worst accepted image
within the server's memory target (``benchmarks/bench_memory.py`` measures the peaks;
the README's design section gives them). PIL keeps RGB, RGBA, LA, CMYK, I and F at 4
bytes a pixel, 16-bit grayscale at 2 and 8-bit grayscale or palette at 1."""

_ONE_BYTE_MODES = frozenset({"1", "L", "P"})

_DECODER_COPIES = {"WEBP": 7, "JPEG2000": 5, "AVIF": 5}
"""Decoders that hold several full-size buffers at once, in units of the decoded mode's
bytes per pixel (measured by ``benchmarks/bench_memory.py``): libwebp's animation decoder
keeps its canvas, the previous canvas and the frame, then PIL copies them; OpenJPEG holds
every component as int32; libavif holds the YUV planes and an RGBA buffer before PIL's
copies."""


class ImageLoadError(ValueError):
    """The input cannot be turned into an image; the message is meant for an end user."""


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"The image is empty ({width} x {height} pixels).")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageLoadError(
            f"The image is {width} x {height} pixels: one side is more than {MAX_ASPECT} "
            f"times the other, the limit. Please crop it closer to a square."
        )
    _refuse_above(size, MAX_PIXELS)


def _refuse_above(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageLoadError(
            f"The image is {width} x {height} = {width * height:,} pixels, more than the "
            f"limit of {limit:,} pixels for this kind of image. Please use a smaller image."
        )


def _check_cost(image: Image.Image, full_size: tuple[int, int]) -> None:
    """Refuse, from the header, an image whose decoding would exceed DECODE_BUDGET.

    The message states the pixel limit for this kind of image: the budget divided by the
    bytes that one pixel of the file costs to decode.
    """
    cost = _decode_cost(image, full_size)
    if cost > DECODE_BUDGET:
        pixels = full_size[0] * full_size[1]
        _refuse_above(full_size, DECODE_BUDGET * pixels // cost)


def _decode_cost(image: Image.Image, full_size: tuple[int, int]) -> int:
    """Bytes the decoder holds at once for ``image`` (opened, not loaded, draft applied).

    PIL stores a pixel in 1 byte (1, L, P), 2 bytes (I;16) or 4 bytes (all other modes,
    RGB included); some decoders hold several such buffers (_DECODER_COPIES). libjpeg
    decodes a progressive JPEG through a whole-image buffer of DCT coefficients, 2 bytes
    per sample at *full* size whatever the draft scale (a 4:2:0 colour JPEG has 1.5
    samples per pixel, 4:4:4 has 3, CMYK 4). libtiff reads a whole strip or tile at once.
    """
    width, height = image.size
    bytes_per_pixel = 1 if image.mode in _ONE_BYTE_MODES else 2 if "I;16" in image.mode else 4
    cost = width * height * bytes_per_pixel * _DECODER_COPIES.get(image.format or "", 1)
    if isinstance(image, JpegImagePlugin.JpegImageFile) and image.info.get("progressive"):
        h_max = max(h for _, h, _, _ in image.layer)
        v_max = max(v for _, _, v, _ in image.layer)
        samples = sum(h * v for _, h, v, _ in image.layer) / (h_max * v_max)
        cost += math.ceil(2 * samples * full_size[0] * full_size[1])
    if image.format == "TIFF":
        cost += _tiff_chunk_bytes(image)
    return cost


def _tiff_chunk_bytes(image: Image.Image) -> int:
    """Bytes of one strip or tile, which libtiff reads whole into a buffer of its own.

    A TIFF written as one strip (RowsPerStrip = height) holds a second full-size buffer
    this way (``benchmarks/bench_memory.py``).
    """
    tags = image.tag_v2  # type: ignore[attr-defined]
    width, height = image.size
    bits = tags.get(258, 1)  # BitsPerSample: one value per sample, or one for all
    bits_per_pixel = sum(bits) if isinstance(bits, tuple) else bits * tags.get(277, 1)
    if 322 in tags:  # TileWidth x TileLength
        pixels = tags[322] * tags.get(323, 1)
    else:
        pixels = width * min(tags.get(278, height), height)  # RowsPerStrip
    return math.ceil(pixels * bits_per_pixel / 8)


def _fitted_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled so that its longest side is MAX_SIDE (unchanged if it fits)."""
    width, height = size
    scale = MAX_SIDE / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))
