"""Turn whatever a user hands us into a plain 8-bit RGB PIL image, or say clearly why not.

One entry point, :func:`load_image`. Its guarantees:

* the result is a PIL image in mode ``"RGB"`` (8 bits per channel), already decoded;
* images larger than :data:`MAX_PIXELS` are refused from their header, before decoding;
* the longest side is at most :data:`MAX_SIDE` (LANCZOS downscale, aspect kept);
* the EXIF orientation is applied, transparency is composited onto white, 16-bit
  grayscale is reduced with ``value >> 8``, animations give their first frame;
* every problem with the *data* (not an image, truncated, empty, too large, missing
  file) raises :class:`ImageLoadError` with a message meant for an end user.
"""

from __future__ import annotations

import codecs
import io
import os
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "MAX_SIDE", "ImageLoadError", "load_image"]

MAX_PIXELS: int = 64_000_000
MAX_SIDE: int = 2048

ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageLoadError(ValueError):
    """The input cannot be turned into an image; the message is meant for an end user."""


def load_image(source: ImageSource) -> Image.Image:
    """Load an image from a path, bytes, a binary file object, a PIL image or an array.

    Args:
        source: a file path; the encoded file's bytes; an open binary file object; a PIL
            image; or a numpy array ``HxW``, ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4``
            (RGBA), of dtype uint8 (0..255), uint16 (0..65535, reduced with ``>> 8``),
            bool, another integer type with values in 0..255, or float with values in
            [0, 1] (scaled by 255 and rounded).

    Returns:
        A decoded PIL image, mode ``"RGB"``, longest side <= :data:`MAX_SIDE` pixels,
        upright according to its EXIF orientation, transparency composited onto white.
        Multi-frame images (animated GIF, ...) give their first frame.

    Raises:
        ImageLoadError: missing or unreadable file, not an image, truncated or corrupt
            data, zero size, more than :data:`MAX_PIXELS` pixels, or an unusable array.
        TypeError: ``source`` is of none of the types above.
    """
    if isinstance(source, np.ndarray):
        return _finish(_image_from_array(source))
    if isinstance(source, Image.Image):
        _check_size(source.size)
        _decode(source)
        return _finish(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_encoded(io.BytesIO(bytes(source)), "The data")
    if isinstance(source, (str, os.PathLike)):
        return _load_encoded(os.fspath(source), f"The file {os.fspath(source)!r}")
    if isinstance(source, io.TextIOBase):
        raise TypeError("load_image needs a binary file object: open the file with 'rb'")
    if hasattr(source, "read"):
        return _load_encoded(source, "The file")
    raise TypeError(
        "load_image takes a path, bytes, a binary file object, a PIL image or a numpy "
        f"array, not {type(source).__name__}"
    )


def _load_encoded(source: str | IO[bytes], what: str) -> Image.Image:
    """Open lazily, check the header size, decode (reduced for big JPEGs), finish."""
    try:
        image = Image.open(source)
    except FileNotFoundError as error:
        raise ImageLoadError(f"{what} does not exist.") from error
    except IsADirectoryError as error:
        raise ImageLoadError(f"{what} is a folder, not an image file.") from error
    except PermissionError as error:
        raise ImageLoadError(f"{what} cannot be read (permission denied).") from error
    except Image.DecompressionBombError as error:
        raise _too_large(what, error) from error
    except UnidentifiedImageError as error:
        kind = _sniff(source)
        if kind == _EMPTY:
            raise ImageLoadError(f"{what} is empty.") from error
        raise ImageLoadError(f"{what} is not an image PIL can read ({kind}?).") from error
    except OSError as error:
        raise ImageLoadError(f"{what} cannot be read ({error}).") from error
    with image:
        _check_size(image.size)
        if image.format == "JPEG" and max(image.size) > MAX_SIDE:
            image.draft("RGB", _fitted_size(image.size))  # decode at 1/2, 1/4 or 1/8
        _decode(image, what)
        return _finish(image)  # a new image: closing `image` does not affect it


def _decode(image: Image.Image, what: str = "The image") -> None:
    """Force the full decode now, so that truncated or corrupt data fails here."""
    try:
        image.seek(0)
        image.load()
    except Image.DecompressionBombError as error:
        raise _too_large(what, error) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(
            f"{what} is truncated or corrupt and cannot be decoded ({error})."
        ) from error


def _too_large(what: str, error: Image.DecompressionBombError) -> ImageLoadError:
    return ImageLoadError(
        f"{what} is too large to decode safely ({error}); the limit is {MAX_PIXELS:,} pixels."
    )


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"The image is empty ({width} x {height} pixels).")
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            f"The image is {width} x {height} = {width * height:,} pixels, more than the "
            f"limit of {MAX_PIXELS:,} pixels. Please use a smaller image."
        )


def _fitted_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled so that its longest side is MAX_SIDE (unchanged if it fits)."""
    width, height = size
    scale = MAX_SIDE / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def _finish(image: Image.Image) -> Image.Image:
    """Decoded image of any mode -> a NEW upright, 8-bit RGB image, longest side <= MAX_SIDE."""
    upright = ImageOps.exif_transpose(image)  # always a new image (not in_place)
    rgb = _to_rgb8(upright)
    target = _fitted_size(rgb.size)
    return rgb if target == rgb.size else rgb.resize(target, Image.Resampling.LANCZOS)


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return Image.fromarray((wide >> 8).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageLoadError(
            f"An image array must be HxW, HxWx3 or HxWx4; got shape {array.shape}."
        )
    height, width = array.shape[:2]
    _check_size((width, height))
    return Image.fromarray(_as_uint8(array))  # uint8 HxW, HxWx3, HxWx4: L, RGB, RGBA


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError("The image array contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(
                f"A float image array must hold values in [0, 1]; got [{low:g}, {high:g}]."
            )
        return np.round(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageLoadError(
                f"An integer image array must hold values in 0..255; got {low}..{high}."
            )
        return array.astype(np.uint8)
    raise ImageLoadError(f"Image arrays of dtype {array.dtype} are not supported.")


_EMPTY = "empty"
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "application/pdf"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _sniff(source: str | IO[bytes]) -> str:
    """A guess at what a non-image file is, from its first bytes, e.g. 'text/plain'."""
    try:
        if isinstance(source, str):
            with open(source, "rb") as file:
                head = file.read(512)
        else:
            source.seek(0)
            head = source.read(512)
    except OSError:
        return "unreadable"
    if not head:
        return _EMPTY
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "an ISO media file: HEIC, AVIF or video"
    try:  # final=False: a multi-byte character cut at byte 512 is fine
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "unknown binary data"
    if b"\x00" in head:
        return "unknown binary data"
    return "text/html" if head.lstrip()[:5].lower() in (b"<!doc", b"<html") else "text/plain"
