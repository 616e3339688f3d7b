"""Turn whatever a user hands us into a plain 8-bit RGB PIL image, or say clearly why not.

One entry point, :func:`load_image`. Its guarantees:

* the result is a PIL image in mode ``"RGB"`` (8 bits per channel), already decoded;
* images are refused from their header, before decoding, when they have more than
  :data:`MAX_PIXELS` pixels, when decoding them would need more than
  :data:`DECODE_BUDGET` bytes (see :func:`_decode_cost`), or when one side is more than
  :data:`MAX_ASPECT` times the other;
* the longest side is at most :data:`MAX_SIDE` (LANCZOS downscale, aspect kept);
* the EXIF orientation is applied, transparency is composited onto white, 16-bit
  grayscale is reduced with ``value >> 8``, animations give their first frame;
* every problem with the *data* (not an image, truncated, empty, too large, unreadable
  file) raises :class:`ImageLoadError` with a short message meant for an end user: it
  never contains a file path, and for a path it never says more than "cannot be read as
  an image" about the file itself (missing, folder, device and permission look alike).

Memory: a big image is decoded once at full size (JPEG: at 1/2, 1/4 or 1/8 size with
libjpeg's draft mode), then converted to RGB band by band while it is reduced by an
integer factor, so no second full-size copy is ever made. The peak is therefore about
the decoder's own buffer (bounded by :data:`DECODE_BUDGET`) plus a reduced RGB image of
at most about (1.5 * MAX_SIDE)**2 * 4 bytes. ``benchmarks/bench_memory.py`` measures it.
"""

from __future__ import annotations

import codecs
import io
import os
import stat
from typing import IO

import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError

from tgrad.image_limits import (
    DECODE_BUDGET,
    MAX_ASPECT,
    MAX_PIXELS,
    MAX_SIDE,
    ImageLoadError,
    _check_cost,
    _check_size,
    _fitted_size,
)
from tgrad.image_limits import _decode_cost as _decode_cost  # benchmarks/bench_memory.py

__all__ = [
    "DECODE_BUDGET",
    "FORMATS",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MAX_SIDE",
    "ImageLoadError",
    "load_image",
]


FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP", "AVIF", "JPEG2000")
"""The only decoders a file is offered to. Pillow would otherwise try every plugin it has,
EPS among them (which runs Ghostscript when it is installed) and many rarely used, little
fuzzed ones; photos come in these formats, whose decoding costs were measured."""


ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


_BAND_PIXELS = 1 << 20  # pixels converted at a time: 4 MB per band of RGBA


_UNREADABLE = "cannot be read as an image."


_ORIENTATION = {  # EXIF orientation -> the transpose that makes the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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
        ImageLoadError: unreadable file (missing, a folder, not a regular file, no
            permission: one message for all), not an image, truncated or corrupt data,
            zero size, too many pixels for :data:`MAX_PIXELS` or :data:`DECODE_BUDGET`, an
            aspect ratio beyond :data:`MAX_ASPECT`,
            or an unusable array. The message never contains the path.
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
        with _open_regular_file(source) as file:
            return _load_encoded(file, "The file")
    if isinstance(source, io.TextIOBase):
        raise TypeError("load_image needs a binary file object: open the file with 'rb'")
    if hasattr(source, "read"):
        return _load_encoded(source, "The file")
    raise TypeError(
        "load_image takes a path, bytes, a binary file object, a PIL image or a numpy "
        f"array, not {type(source).__name__}"
    )


def _open_regular_file(path: str | os.PathLike) -> IO[bytes]:
    """The file opened for reading, if it is a regular file; else one vague error.

    O_NONBLOCK keeps a FIFO from blocking the open; fstat on the open descriptor (not
    stat on the name) checks the very file that will be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise ImageLoadError(f"The file {_UNREADABLE}") from error
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageLoadError(f"The file {_UNREADABLE}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _load_encoded(source: IO[bytes], what: str) -> Image.Image:
    """Open lazily, check the header size, decode (reduced for big JPEGs), finish."""
    try:
        image = Image.open(source, formats=FORMATS)
    except Image.DecompressionBombError as error:  # PIL's own limit is far above ours
        raise ImageLoadError(
            f"The image is too large: it has more than the limit of {MAX_PIXELS:,} pixels. "
            "Please use a smaller image."
        ) from error
    except UnidentifiedImageError as error:
        raise _not_an_image(source, what) from error
    except OSError as error:
        raise ImageLoadError(f"{what} {_UNREADABLE}") from error
    try:
        full_size = image.size
        _check_size(full_size)  # before draft: the limits count the pixels of the file
        if isinstance(image, JpegImagePlugin.JpegImageFile) and max(full_size) > MAX_SIDE:
            image.draft("RGB", _fitted_size(full_size))  # decode at 1/2, 1/4 or 1/8
        _check_cost(image, full_size)
        _decode(image)
        shrunk = _shrink(image)
    finally:
        # Free the full-size pixels now (`with image` would keep them). Image.close, not
        # ImageFile.close: that one would also close a caller's file object.
        Image.Image.close(image)
    return _fit(*shrunk)


def _not_an_image(source: IO[bytes], what: str) -> ImageLoadError:
    kind = _sniff(source)
    if kind == _EMPTY:
        return ImageLoadError(f"{what} is empty.")
    if kind == _SVG:
        return ImageLoadError(
            f"{what} is an SVG vector image, which is not supported. "
            "Please convert it to PNG or JPEG."
        )
    return ImageLoadError(
        f"{what} is not an image that can be read: it looks like {kind}. "
        "Please use a PNG or JPEG image."
    )


def _decode(image: Image.Image) -> None:
    """Force the full decode now, so that truncated or corrupt data fails here."""
    try:
        image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(
            "The image is truncated or corrupt and cannot be decoded. "
            "Please check the file or use another image."
        ) from error


def _finish(image: Image.Image) -> Image.Image:
    """Decoded image of any mode -> a NEW upright, 8-bit RGB image, longest side <= MAX_SIDE."""
    return _fit(*_shrink(image))


def _shrink(image: Image.Image) -> tuple[Image.Image, tuple[int, int], Image.Transpose | None]:
    """The first half of :func:`_finish`, the only one that needs ``image``.

    Never copies ``image`` whole: it is converted band by band while being reduced by
    the largest integer factor that keeps it at least as big as the target size.

    Returns:
        the reduced RGB image, the target size, the transpose that makes it upright.
    """
    target = _fitted_size(image.size)
    factor = max(1, min(image.size[0] // target[0], image.size[1] // target[1]))
    transpose = _ORIENTATION.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    return _reduced_rgb(image, factor), target, transpose


def _fit(
    rgb: Image.Image, target: tuple[int, int], transpose: Image.Transpose | None
) -> Image.Image:
    """The second half of :func:`_finish`: LANCZOS to ``target``, then upright."""
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
    return rgb if transpose is None else rgb.transpose(transpose)


def _reduced_rgb(image: Image.Image, factor: int) -> Image.Image:
    """A new RGB image, ``image`` reduced by ``factor`` (box average), made band by band.

    Bands are a multiple of ``factor`` rows high, so the result equals converting the
    whole image and then calling ``Image.reduce(factor)``.
    """
    width, height = image.size
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, _BAND_PIXELS // (width * factor))
    for top in range(0, height, rows):
        band = _to_rgb8(image.crop((0, top, width, min(top + rows, height))))
        out.paste(band.reduce(factor) if factor > 1 else band, (0, top // factor))
    return out


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8)).convert("RGB")
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


_SVG = "svg"


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _sniff(source: IO[bytes]) -> str:
    """What a non-image file seems to be, from its first bytes, said for a user."""
    try:
        source.seek(0)
        head = source.read(1024)
    except (OSError, ValueError):
        return "data that cannot be read"
    if not head:
        return _EMPTY
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "an HEIC photo or a video, which are not supported"
    try:  # final=False: a multi-byte character cut at the end of `head` is fine
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "unknown binary data"
    if b"\x00" in head:
        return "unknown binary data"
    lowered = head.lower()
    if b"<svg" in lowered:
        return _SVG
    if lowered.lstrip()[:5] in (b"<!doc", b"<html"):
        return "a web page (text/html)"
    return "text (text/plain)"
