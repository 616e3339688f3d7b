"""load_image: every kind of input ends as 8-bit RGB with the right pixel values, or as an
ImageLoadError an end user can read."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from tgrad import images
from tgrad.images import MAX_PIXELS, MAX_SIDE, ImageLoadError, load_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def pixels(image):
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return np.asarray(image)


def save(image, path, **options):
    image.save(path, **options)
    return path


def png_header_only(width, height):
    """A PNG whose header claims width x height and which holds no pixel data at all."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_constants():
    assert MAX_PIXELS == 64_000_000 and MAX_SIDE == 2048
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# ---------------------------------------------------------------- not images, broken files


def test_text_file_renamed_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("Dear diary, today I trained a CNN.\n")
    with pytest.raises(ImageLoadError, match=r"not an image PIL can read \(text/plain\?\)"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


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


def test_pil_decompression_bomb_becomes_image_load_error():
    with pytest.raises(ImageLoadError, match="too large") as caught:
        load_image(png_header_only(20000, 20000))  # beyond twice PIL's own limit
    assert isinstance(caught.value.__cause__, Image.DecompressionBombError)


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
    array = np.zeros((100, 5000, 3), np.uint8)
    assert load_image(array).size == (2048, 41)


def test_pixel_limit_applies_to_arrays(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 99)
    with pytest.raises(ImageLoadError, match="100 pixels"):
        load_image(np.zeros((10, 10), np.uint8))
