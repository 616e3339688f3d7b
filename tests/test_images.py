"""load_image: every kind of input ends as 8-bit RGB with the right pixel values, or as an
ImageLoadError an end user can read."""

import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from tgrad import image_limits, images
from tgrad.images import (
    DECODE_BUDGET,
    MAX_ASPECT,
    MAX_PIXELS,
    MAX_SIDE,
    ImageLoadError,
    load_image,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def pixels(image):
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return np.asarray(image)


def save(image, path, **options):
    image.save(path, **options)
    return path


def png_header_only(width, height, colour_type=0, depth=8):
    """A PNG whose header claims width x height and which holds no pixel data at all
    (colour type 0: grayscale, 2: RGB, 4: gray + alpha, 6: RGBA)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_constants():
    assert MAX_PIXELS == 64_000_000 and MAX_SIDE == 2048 and DECODE_BUDGET == 200_000_000
    assert MAX_ASPECT == 20
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# ---------------------------------------------------------------- not images, broken files


def test_text_file_renamed_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("Dear diary, today I trained a CNN.\n")
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    assert str(caught.value) == (
        "The file is not an image that can be read: it looks like text (text/plain). "
        "Please use a PNG or JPEG image."
    )


@pytest.mark.parametrize(
    "text",
    [
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        '<?xml version="1.0"?>\n<!-- drawn by hand -->\n<SVG viewBox="0 0 1 1"></SVG>',
    ],
)
def test_svg_is_named_and_refused(tmp_path, text):
    path = tmp_path / "logo.png"
    path.write_text(text)
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    message = str(caught.value)
    assert "SVG vector image" in message and "not supported" in message
    assert "PNG or JPEG" in message and "text/plain" not in message


def test_unreadable_paths_all_say_the_same(tmp_path):
    """Missing, a folder, a device: the same words, no path, nothing about the file."""
    messages = set()
    for path in (tmp_path / "nowhere.png", tmp_path, Path(os.devnull), "bad\0name.png"):
        with pytest.raises(ImageLoadError) as caught:
            load_image(path)
        messages.add(str(caught.value))
    assert messages == {"The file cannot be read as an image."}


def message_of(source):
    with pytest.raises(ImageLoadError) as caught:
        load_image(source)
    return str(caught.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_messages_never_show_the_path_or_python_internals(tmp_path):
    folder = tmp_path / "secret_folder_name"
    folder.mkdir()
    data = {
        "notes.jpg": b"plain text\n",
        "page.png": b"<!DOCTYPE html><html></html>",
        "doc.jpg": b"%PDF-1.7\n",
        "empty.png": b"",
        "cut.png": save(halves(300, 200, RED, BLUE), io.BytesIO(), format="PNG").getvalue()[:400],
        "huge.png": png_header_only(12000, 12000),
        "bomb.png": png_header_only(20000, 20000),
    }
    messages = [message_of(folder / "missing.png"), message_of(folder)]
    for name, content in data.items():
        (folder / name).write_bytes(content)
        messages.append(message_of(folder / name))
        messages.append(message_of(content))
    for message in messages:
        assert "secret_folder_name" not in message and str(tmp_path) not in message, message
        assert not re.search(r"PIL|Errno|Error|[A-Za-z_]+\.(png|jpg)|'", message), message
        assert message.endswith("."), message


def test_truncated_message_does_not_quote_the_decoder(tmp_path):
    data = save(halves(300, 200, RED, BLUE), io.BytesIO(), format="PNG").getvalue()
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as caught:
        load_image(data[: len(data) // 2])
    assert str(caught.value.__cause__) not in str(caught.value)


@pytest.mark.parametrize("source", [b"", io.BytesIO()])
def test_empty_data(source):
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(source)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    data = save(noise, io.BytesIO(), format="JPEG").getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(path)
    assert pixels(load_image(data)).shape == (200, 300, 3)  # the whole file is fine


def test_wrong_types():
    with pytest.raises(TypeError):
        load_image(42)
    with pytest.raises(TypeError, match="binary"):
        load_image(io.StringIO("text"))


# ---------------------------------------------------------------- size limits


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_too_many_pixels_refused_from_the_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(12000, 12000))  # no pixel data: decoding would fail
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    message = str(caught.value)
    assert "144,000,000 pixels" in message and f"{MAX_PIXELS:,}" in message


@pytest.mark.parametrize(("width", "height"), [(30000, 2), (1_000_000, 1), (2, 30000)])
def test_extreme_aspect_ratios_are_refused_from_the_header(tmp_path, width, height):
    """A strip of a few hundred bytes passes the pixel limits, but a classifier resizes
    its *shorter* side: 30000 x 2 would become a 256 px high image 3.8 million pixels
    long (2 GB measured in the explorer). Refused before decoding, naming the limit."""
    path = tmp_path / "strip.png"
    path.write_bytes(png_header_only(width, height))  # no pixel data: decoding would fail
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    message = str(caught.value)
    assert f"{width} x {height} pixels" in message and "more than 20 times" in message
    assert "crop" in message
    with pytest.raises(ImageLoadError, match="more than 20 times"):  # arrays alike
        load_image(np.zeros((1, 25), np.uint8))


def test_the_widest_accepted_image_loads(tmp_path):
    path = tmp_path / "panorama.png"
    Image.new("RGB", (4000, 200), "white").save(path)  # 20:1, the limit
    assert load_image(path).size == (2048, 102)


def test_pil_decompression_bomb_becomes_image_load_error():
    with pytest.raises(ImageLoadError, match="too large") as caught:
        load_image(png_header_only(20000, 20000))  # beyond twice PIL's own limit
    assert isinstance(caught.value.__cause__, Image.DecompressionBombError)
    message = str(caught.value)
    assert re.findall(r"\d[\d,]{4,}", message) == [f"{MAX_PIXELS:,}"]  # one limit: ours
    assert "bomb" not in message and "DOS" not in message


def decodes_past_the_header(data):
    """True if load_image accepts the header of ``data`` (whose pixel data is missing:
    PNG then fails to decode, libjpeg fills the missing rows with grey)."""
    try:
        load_image(data)
    except ImageLoadError as error:
        if "truncated or corrupt" in str(error):
            return True
        assert "more than the limit of" in str(error)
        return False
    return True


@pytest.mark.parametrize(
    ("colour_type", "depth", "largest"),
    [
        (6, 8, 7071),  # RGBA: PIL keeps 4 bytes a pixel: 200 MB / 4 = 50 MP
        (6, 16, 7071),  # 16-bit RGBA is decoded to 8-bit RGBA: the same
        (2, 8, 7071),  # RGB is 4 bytes a pixel too
        (4, 8, 7071),  # LA as well
        (0, 16, 8000),  # 16-bit grayscale: 2 bytes, so MAX_PIXELS is the limit
        (0, 8, 8000),
    ],
)
def test_decoded_size_is_limited_from_the_header(colour_type, depth, largest):
    assert decodes_past_the_header(png_header_only(largest, largest, colour_type, depth))
    assert not decodes_past_the_header(png_header_only(largest + 1, largest, colour_type, depth))


def test_webp_limit_counts_the_decoders_copies():
    """libwebp + PIL hold about 7 full-size RGBA buffers: 200 MB / 28 B is 7.1 MP."""
    image = Image.new("RGBA", (2700, 2700), (0, 0, 0, 0))  # 7.3 MP: 1.3 GB on the old code
    data = save(image, io.BytesIO(), format="WEBP", quality=10, method=0).getvalue()
    with pytest.raises(ImageLoadError, match="7,290,000 pixels, more than the limit"):
        load_image(data)
    small = save(image.crop((0, 0, 2600, 2600)), io.BytesIO(), format="WEBP").getvalue()
    assert load_image(small).size == (2048, 2048)


@pytest.mark.slow  # tens of MP encoded
def test_tiff_limit_counts_the_strip_that_libtiff_reads_whole(tmp_path):
    """One strip (RowsPerStrip = height) doubles the decode: 100 MB of RGBA + 100 MB."""
    image = Image.new("RGBA", (5001, 5000), (10, 20, 30, 255))
    one_strip = save(image, tmp_path / "one.tif", compression="tiff_lzw", strip_size=2**40)
    assert Image.open(one_strip).tag_v2[278] == 5000
    with pytest.raises(ImageLoadError, match="25,005,000 pixels, more than the limit of 25,00"):
        load_image(one_strip)
    small_strips = save(image, tmp_path / "many.tif", compression="tiff_lzw")
    assert load_image(small_strips).size == (2048, 2048)


def jpeg_header(width, height, **options):
    """A small JPEG's bytes with its frame header patched to claim width x height."""
    data = bytearray(
        save(Image.new("RGB", (16, 16)), io.BytesIO(), format="JPEG", **options).getvalue()
    )
    at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.slow  # tens of MP encoded
def test_progressive_jpeg_counts_its_coefficient_buffer():
    """Drafting does not shrink libjpeg's whole-image coefficient buffer of a progressive
    JPEG: 2 bytes per sample at full size, 6 bytes a pixel at 4:4:4, 3 at 4:2:0."""
    assert decodes_past_the_header(jpeg_header(8000, 8000))  # baseline: drafted to 1/2
    # 4:4:4: 6 bytes + 4 bytes of the half-size RGB / 4 = 7 bytes a pixel: 200 MB / 7
    assert decodes_past_the_header(jpeg_header(5345, 5345, progressive=True, subsampling=0))
    assert not decodes_past_the_header(jpeg_header(5400, 5400, progressive=True, subsampling=0))
    # 4:2:0: 3 + 1 = 4 bytes a pixel: 50 MP
    assert decodes_past_the_header(jpeg_header(7000, 7000, progressive=True, subsampling=2))
    assert not decodes_past_the_header(jpeg_header(7100, 7100, progressive=True, subsampling=2))


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from PIL import Image
    from tgrad.images import load_image

    Image.init()  # import every format plugin now, not while measuring

    def kb(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = kb("VmRSS")
    size = load_image(sys.argv[1]).size
    print(json.dumps({"peak": (kb("VmHWM") - base) * 1024, "size": size}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("mode", "side", "decoded_bytes_per_pixel"),
    [("I;16", 6000, 2), ("RGBA", 5000, 4)],  # 16-bit gray; transparent RGBA
)
@pytest.mark.slow  # a fresh process per image, tens of MP
def test_peak_memory_of_decoding_is_the_decoded_image_plus_a_small_margin(
    tmp_path, mode, side, decoded_bytes_per_pixel
):
    """Measured in a fresh process as peak resident memory (PIL's memory is not seen by
    tracemalloc). Decoding needs ``side**2 * bytes per pixel`` (72 MB; 100 MB); on top
    come the RGB image reduced by an integer factor (< (1.5 * 2048)**2 * 4 = 38 MB), the
    final 2048 x 2048 RGB image (16 MB) and bands of 1 MP: 80 MB is a generous margin.
    The old code made full-size int64 copies (16 B a pixel) or several full-size RGBA
    copies: 700 MB for the 16-bit image, 480 MB for the RGBA one."""
    path = tmp_path / "deep.png"
    Image.new(mode, (side, side)).save(path, compress_level=1)
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result = json.loads(run.stdout)
    assert result["size"] == [2048, 2048]
    assert result["peak"] < side * side * decoded_bytes_per_pixel + 80_000_000


def test_band_by_band_conversion_equals_converting_the_whole_image(monkeypatch):
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (997, 1301, 4), dtype=np.uint8), "RGBA")
    white = Image.new("RGBA", rgba.size, (*WHITE, 255))
    whole = Image.alpha_composite(white, rgba).convert("RGB").reduce(3)
    monkeypatch.setattr(images, "_BAND_PIXELS", 50_000)  # many bands, the last one short
    np.testing.assert_array_equal(pixels(images._reduced_rgb(rgba, 3)), pixels(whole))


def halves(width, height, left, right):
    image = Image.new("RGB", (width, height), left)
    image.paste(right, (width // 2, 0, width, height))
    return image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_image_is_downscaled_keeping_the_aspect(tmp_path, fmt):
    path = save(halves(5000, 3000, RED, BLUE), tmp_path / f"big.{fmt.lower()}", format=fmt)
    result = pixels(load_image(path))
    assert result.shape == (1229, 2048, 3)
    np.testing.assert_allclose(result[600, 100], RED, atol=6)
    np.testing.assert_allclose(result[600, 1900], BLUE, atol=6)


def test_large_jpeg_is_decoded_reduced(tmp_path, monkeypatch):
    path = save(halves(5000, 3000, RED, BLUE), tmp_path / "big.jpg", quality=90)
    requests = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        requests.append((mode, size))
        result = draft(self, mode, size)
        requests.append(self.size)  # the size it will decode at
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    assert load_image(path).size == (2048, 1229)
    assert requests == [("RGB", (2048, 1229)), (2500, 1500)]


def test_small_image_keeps_its_size(tmp_path):
    path = save(halves(64, 48, RED, GREEN), tmp_path / "small.png")
    result = pixels(load_image(path))
    assert result.shape == (48, 64, 3)
    assert tuple(result[10, 5]) == RED and tuple(result[10, 60]) == GREEN


# ---------------------------------------------------------------- modes


def test_grayscale_becomes_equal_channels(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    result = pixels(load_image(save(Image.fromarray(gray, "L"), tmp_path / "gray.png")))
    assert (result == gray[:, :, None]).all()


def test_rgba_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 255, 128)  # half-transparent blue
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "alpha.png")
    result = pixels(load_image(path))
    assert tuple(result[0, 0]) == RED
    assert tuple(result[3, 3]) == WHITE
    np.testing.assert_allclose(result[0, 1], (127, 127, 255), atol=1)


def test_la_is_composited_onto_white(tmp_path):
    la = np.array([[[0, 255], [0, 0], [100, 128]]], np.uint8)
    result = pixels(load_image(save(Image.fromarray(la, "LA"), tmp_path / "la.png")))
    assert tuple(result[0, 0]) == (0, 0, 0)
    assert tuple(result[0, 1]) == WHITE
    np.testing.assert_allclose(result[0, 2], (177,) * 3, atol=1)  # 100*a + 255*(1-a)


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.putpixel((0, 0), 0)  # index 0 is transparent
    palette.putpixel((1, 0), 2)
    path = save(palette, tmp_path / "p.png", transparency=0)
    result = pixels(load_image(path))
    assert tuple(result[0, 0]) == WHITE
    assert tuple(result[0, 1]) == GREEN
    assert tuple(result[1, 3]) == RED


def test_sixteen_bit_grayscale_png(tmp_path):
    values = np.array([[0, 255, 256, 32768, 65535]], np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode in ("I;16", "I")
    result = pixels(load_image(path))
    assert result[0, :, 0].tolist() == [0, 0, 1, 128, 255]
    assert (result == result[:, :, :1]).all()


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan
    cmyk.paste((0, 0, 0, 255), (16, 0, 32, 32))  # pure black on the right
    path = save(cmyk, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    result = pixels(load_image(path))
    np.testing.assert_allclose(result[16, 4], (0, 255, 255), atol=8)
    np.testing.assert_allclose(result[16, 28], (0, 0, 0), atol=8)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    assert (pixels(load_image(path)) == RED).all()
    opened = Image.open(path)
    opened.seek(2)
    assert (pixels(load_image(opened)) == RED).all()
    with open(path, "rb") as file:
        assert (pixels(load_image(file)) == RED).all()
        assert not file.closed  # the caller's file object is the caller's to close


def test_exif_orientation_is_applied(tmp_path):
    stored = halves(40, 20, RED, BLUE)  # as stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(stored, tmp_path / "phone.jpg", exif=exif, quality=95)
    result = pixels(load_image(path))
    assert result.shape == (40, 20, 3)  # upright: 20 wide, 40 high; left side on top
    np.testing.assert_allclose(result[5, 10], RED, atol=8)
    np.testing.assert_allclose(result[35, 10], BLUE, atol=8)


# ---------------------------------------------------------------- other sources


def test_bytes_file_objects_and_pil_images_agree():
    path = ASSETS / "coffee.jpg"
    expected = pixels(load_image(path))
    assert expected.shape == (400, 600, 3)
    np.testing.assert_array_equal(pixels(load_image(str(path))), expected)
    np.testing.assert_array_equal(pixels(load_image(path.read_bytes())), expected)
    with open(path, "rb") as file:
        np.testing.assert_array_equal(pixels(load_image(file)), expected)
    with Image.open(path) as opened:
        result = load_image(opened)
    np.testing.assert_array_equal(pixels(result), expected)  # usable after close
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), expected)


def test_arrays():
    gray = np.array([[0, 128], [255, 7]], np.uint8)
    assert (pixels(load_image(gray)) == gray[:, :, None]).all()
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(pixels(load_image(rgb)), rgb)
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
    assert pixels(load_image(rgba)).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    floats = np.array([[[0.0, 0.5, 1.0]]])
    assert pixels(load_image(floats)).tolist() == [[[0, 128, 255]]]
    assert pixels(load_image(np.array([[True, False]]))).tolist() == [[[255] * 3, [0] * 3]]
    assert pixels(load_image(np.array([[65535, 256]], np.uint16)))[0, :, 0].tolist() == [255, 1]
    assert pixels(load_image(np.array([[3, 200]])))[0, :, 0].tolist() == [3, 200]
    assert pixels(load_image(gray[:, :, None])).shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((2, 2, 2), np.uint8), "HxW, HxWx3 or HxWx4"),
        (np.zeros((2, 2, 3, 1), np.uint8), "HxW, HxWx3 or HxWx4"),
        (np.full((2, 2), 2.0), r"\[0, 1\]"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.full((2, 2), 300), "0..255"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(array)


def test_big_array_is_downscaled():
    array = np.zeros((250, 5000, 3), np.uint8)  # 20:1, the widest accepted
    assert load_image(array).size == (2048, 102)


def test_pixel_limit_applies_to_arrays(monkeypatch):
    monkeypatch.setattr(image_limits, "MAX_PIXELS", 99)  # where the limit is checked
    with pytest.raises(ImageLoadError, match="100 pixels"):
        load_image(np.zeros((10, 10), np.uint8))


@pytest.mark.parametrize("kind", ["EPS", "ICO", "PCX", "TGA"])
def test_only_photo_formats_are_decoded(kind):
    """A format outside images.FORMATS is refused before any decoder looks at it."""
    from tgrad.images import FORMATS

    assert kind not in FORMATS
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format=kind)
    assert Image.open(io.BytesIO(buffer.getvalue())).format == kind  # Pillow would read it
    with pytest.raises(ImageLoadError, match="not an image that can be read"):
        load_image(buffer.getvalue())
