"""Peak memory of one explanation of the worst images that load_image accepts, and the
server's resident memory under rounds of load.

**Inputs** (default): for each input (the largest accepted pixel count in several formats
and modes, the longest accepted shape, plus a 224 x 224 photo as the reference), a fresh
Python process loads efficientnet_lite0, then measures ``load_image`` + preprocessing +
the explorer's largest display crop (3x) + one T-Grad explanation. The figure is the
peak resident memory (Linux ``VmHWM``, reset with ``/proc/self/clear_refs`` after the
model is loaded) minus the resident memory at that moment: what one explanation of that
file adds to a server that already holds the model. "decode MB" is the same peak read
right after ``load_image``. PIL and libjpeg allocate outside Python, so tracemalloc
would not see them; resident memory does.

    python -m benchmarks.bench_memory                  # all inputs
    python -m benchmarks.bench_memory --only png_rgba16 photo_224

Each input is made at the largest square size that load_image accepts for its kind (found
by bisection on patched headers: what the pixel cap and the decode budget let through);
the files are cached in the temporary folder tgrad-bench-memory, named by their side.

**Rounds** (``--rounds N``): ``python app.py`` is started once per allocator setting and
given N rounds of load through its HTTP API, each of 16 explanations of new photos (four
at a time), 2 comparisons and 1 sanity check, as a busy classroom Space would get them;
the server's resident memory is read after each round (after a short pause, once its
queue is empty). The settings: ``default`` (glibc as it comes: ``EXPLORER_MALLOC=default``,
the baseline), ``tuned`` (explorer/allocator.py: arenas capped, mmap and trim thresholds
pinned, ``malloc_trim`` after heavy jobs) and ``jemalloc`` (``LD_PRELOAD`` of
libjemalloc.so.2 where it is installed, with the default glibc settings). The target:
resident memory after the last round within 1.3 times that after the first.

    python -m benchmarks.bench_memory --rounds 3
    python -m benchmarks.bench_memory --rounds 3 --allocators default tuned \
        --compare-methods gradcam vanilla integrated_gradients smoothgrad scorecam
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tgrad import images  # noqa: E402

TARGET_MB = 300


# ---------------------------------------------------------------- inputs


def pattern(width: int, height: int, channels: int) -> np.ndarray:
    """A smooth but not flat uint8 picture ``height x width x channels`` (compresses well)."""
    x = (np.arange(width, dtype=np.uint32) * 255 // max(width - 1, 1)).astype(np.uint8)
    y = (np.arange(height, dtype=np.uint32) * 255 // max(height - 1, 1)).astype(np.uint8)
    out = np.empty((height, width, channels), np.uint8)
    out[:, :, 0] = x[None, :]
    if channels > 1:
        out[:, :, 1] = y[:, None]
    if channels > 2:
        np.add(x[None, :] // 2, y[:, None] // 2, out=out[:, :, 2])
    if channels > 3:  # alpha: opaque left half, a ramp on the right half
        out[:, :, 3] = np.where(np.arange(width) < width // 2, 255, x)[None, :]
    return out


def write_png(path: Path, width: int, height: int, colour_type: int, depth: int) -> None:
    """A PNG written row by row, for what PIL cannot save (16-bit RGBA, 16-bit RGB)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = pattern(width, 1, channels)[0].astype(">u2") * 257 if depth == 16 else None
    if row is None:
        row = pattern(width, 1, channels)[0]
    data = b"\x00" + row.tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
        file.write(chunk(b"IHDR", header))
        for _ in range(height):
            block = compressor.compress(data)
            if block:
                file.write(chunk(b"IDAT", block))
        file.write(chunk(b"IDAT", compressor.flush()))
        file.write(chunk(b"IEND", b""))


def longest(path: Path, w: int, h: int) -> None:
    """The longest shape accepted (MAX_ASPECT to 1): the largest resize of the display."""
    Image.fromarray(pattern(images.MAX_ASPECT * 100, 100, 3)).save(path)


def makers() -> dict[str, tuple[str, Callable[[Path, int, int], None]]]:
    """name -> (suffix, make(path, width, height)), one per kind of worst case."""

    def rgb(mode: str, w: int, h: int) -> Image.Image:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        array = pattern(w, h, channels)
        return Image.fromarray(array[:, :, 0] if channels == 1 else array, mode)

    def photo_224(path: Path, w: int, h: int) -> None:
        with Image.open(ROOT / "assets" / "coffee.jpg") as photo:
            ImageOps.fit(photo.convert("RGB"), (224, 224)).save(path, quality=95)

    def gray16(path: Path, w: int, h: int) -> None:
        Image.fromarray(pattern(w, h, 1)[:, :, 0].astype(np.uint16) * 257).save(path)

    def palette(path: Path, w: int, h: int) -> None:
        rgb("L", w, h).convert("P").save(path, transparency=0, compress_level=9)

    def cmyk(path: Path, w: int, h: int) -> None:
        Image.frombytes("CMYK", (w, h), pattern(w, h, 4).tobytes()).save(path, quality=90)

    def gif(path: Path, w: int, h: int) -> None:
        first = rgb("L", w, h).convert("P")
        second = ImageOps.invert(rgb("L", w, h)).convert("P")
        first.save(path, save_all=True, append_images=[second], duration=100, loop=0)

    def float_tiff(path: Path, w: int, h: int) -> None:
        array = pattern(w, h, 1)[:, :, 0].astype(np.float32) / 255
        Image.fromarray(array).save(path, compression="tiff_lzw")

    return {
        "photo_224": (".jpg", photo_224),
        "png_longest_accepted": (".png", longest),
        "png_rgb8": (".png", lambda p, w, h: rgb("RGB", w, h).save(p, compress_level=9)),
        "png_gray16": (".png", gray16),
        "png_rgb16": (".png", lambda p, w, h: write_png(p, w, h, 2, 16)),
        "png_rgba16": (".png", lambda p, w, h: write_png(p, w, h, 6, 16)),
        "png_rgba8": (".png", lambda p, w, h: rgb("RGBA", w, h).save(p, compress_level=9)),
        "png_la8": (".png", lambda p, w, h: rgb("LA", w, h).save(p, compress_level=9)),
        "png_palette_transparent": (".png", palette),
        "jpeg_cmyk": (".jpg", cmyk),
        "jpeg_progressive_444": (
            ".jpg",
            lambda p, w, h: rgb("RGB", w, h).save(p, quality=90, progressive=True, subsampling=0),
        ),
        "jpeg_progressive_cmyk": (
            ".jpg",
            lambda p, w, h: Image.frombytes("CMYK", (w, h), pattern(w, h, 4).tobytes()).save(
                p, quality=90, progressive=True
            ),
        ),
        "jpeg_baseline_420": (".jpg", lambda p, w, h: rgb("RGB", w, h).save(p, quality=90)),
        "gif_animated": (".gif", gif),
        "tiff_rgba8": (".tif", lambda p, w, h: rgb("RGBA", w, h).save(p, compression="tiff_lzw")),
        "tiff_float32": (".tif", float_tiff),
        "webp_rgba": (".webp", lambda p, w, h: rgb("RGBA", w, h).save(p, quality=80, method=0)),
        "jpeg2000_rgb": (".jp2", lambda p, w, h: rgb("RGB", w, h).save(p)),
        "avif_rgb": (".avif", lambda p, w, h: rgb("RGB", w, h).save(p, quality=60, speed=10)),
    }


def accepted(sample: bytes, side: int) -> bool:
    """Would load_image accept a side x side file like ``sample``? (header only)

    ``sample`` is a small file of the kind; its size fields are patched to ``side``.
    """
    data = bytearray(sample)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        data[16:24] = struct.pack(">II", side, side)
        data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # IHDR's checksum
    elif data[:2] == b"\xff\xd8":
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0:
                data[at + 5 : at + 9] = struct.pack(">HH", side, side)
                break
    else:  # decode the small one: its cost per pixel does not depend on the size
        with Image.open(io.BytesIO(sample)) as image:
            cost = images._decode_cost(image, image.size) / (image.size[0] * image.size[1])
        return side * side <= images.MAX_PIXELS and side * side * cost <= images.DECODE_BUDGET
    with Image.open(io.BytesIO(bytes(data))) as image:
        try:
            images._check_size(image.size)
            if isinstance(image, JpegImagePlugin.JpegImageFile):
                image.draft("RGB", images._fitted_size(image.size))
            images._check_cost(image, (side, side))
        except images.ImageLoadError:
            return False
    return True


def largest_side(make: Callable[[Path, int, int], None], suffix: str, folder: Path) -> int:
    """The largest square side load_image accepts for this kind (bisection on headers)."""
    probe = folder / f"probe{suffix}"
    make(probe, 1024, 1024)  # big enough for TIFF strips to be a small part
    sample = probe.read_bytes()
    probe.unlink()
    low, high = 1, math.isqrt(images.MAX_PIXELS)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if accepted(sample, middle) else (low, middle - 1)
    if suffix == ".webp":
        low = min(low, 16383)  # the format's own limit
    return low


def make_inputs(folder: Path, only: set[str] | None) -> dict[str, Path]:
    """name -> file, each at the largest square size load_image accepts for its kind."""
    paths = {}
    for name, (suffix, make) in makers().items():
        if only and name not in only:
            continue
        fixed = {"photo_224": 224, "png_longest_accepted": images.MAX_ASPECT}
        side = fixed[name] if name in fixed else largest_side(make, suffix, folder)
        path = folder / f"{name}_{side}{suffix}"
        if not path.exists():
            print(f"  making {path.name} ...", file=sys.stderr, flush=True)
            partial = path.with_name("partial_" + path.name)
            make(partial, side, side)
            partial.rename(path)
        paths[name] = path
    return paths


# ---------------------------------------------------------------- one measurement (child)


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Set VmHWM back to the current VmRSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(path: str) -> None:
    import gc

    from explorer.session import DISPLAY_SCALES
    from tgrad import TGrad, load_model

    loaded = load_model("efficientnet_lite0")
    explainer = TGrad(loaded.module)
    gc.collect()
    reset_peak()
    base = status_kb("VmRSS")
    start = time.perf_counter()
    try:
        image = images.load_image(path)
    except images.ImageLoadError as error:
        print(json.dumps({"refused": str(error)}))
        return
    decode = status_kb("VmHWM") - base
    with Image.open(path) as opened:
        pixels = opened.size
    loaded.preprocessing.crop_image(image, max(DISPLAY_SCALES))  # the explorer's largest
    explainer(loaded.preprocessing(image)[None])
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM") - base
    print(json.dumps({"decode_kb": decode, "peak_kb": peak, "s": seconds, "size": pixels}))


# ---------------------------------------------------------------- rounds against the server

JEMALLOC = "/lib/x86_64-linux-gnu/libjemalloc.so.2"
ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {"EXPLORER_MALLOC": "default"},
    "tuned": {},
    "jemalloc": {"EXPLORER_MALLOC": "default", "LD_PRELOAD": JEMALLOC},
}
"""Environment of the server for each allocator setting (see the module docstring)."""
EXPLAINS, COMPARES, TARGET_RATIO = 16, 2, 1.3
SANITY_METHODS = ["tgrad", "gradcam", "vanilla", "guided_backprop"]  # the tab's default


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def distinct_photos(folder: Path, count: int) -> list[Path]:
    """``count`` different 320 x 320 photos cut from the bundled ones (offsets, flips)."""
    sources = sorted((ROOT / "assets").glob("*.jpg"))
    paths = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as photo:
            rgb = photo.convert("RGB")
        k = i // len(sources)
        box = (4 * k, 3 * k, rgb.width - 2 * k, rgb.height - 5 * k)
        image = ImageOps.fit(rgb.crop(box), (320, 320))
        path = folder / f"round_photo_{i}.png"
        (ImageOps.mirror(image) if k % 2 else image).save(path)
        paths.append(path)
    return paths


def api_call(client: object, api: str, data: list) -> str:
    """POST /gradio_api/call/<api>, read its stream to the end: the last event's name."""
    posted = client.post(f"/gradio_api/call/{api}", json={"data": data})
    posted.raise_for_status()
    stream = client.get(f"/gradio_api/call/{api}/{posted.json()['event_id']}").text
    events = [line[7:] for line in stream.splitlines() if line.startswith("event: ")]
    return events[-1] if events else "none"


def upload(client: object, path: Path) -> dict:
    with open(path, "rb") as file:
        answer = client.post("/gradio_api/upload", files={"files": (path.name, file)})
    answer.raise_for_status()
    return {"path": answer.json()[0], "meta": {"_type": "gradio.FileData"}}


def one_round(client: object, photos: list[Path], compare_methods: list[str]) -> list[str]:
    """16 explanations (four at a time), 2 comparisons and 1 sanity check, all at once."""
    from concurrent.futures import ThreadPoolExecutor

    payloads = [upload(client, path) for path in photos]
    with ThreadPoolExecutor(8) as pool:
        jobs = [
            pool.submit(api_call, client, "compare", [p, None, None, compare_methods])
            for p in payloads[:COMPARES]
        ]
        jobs.append(
            pool.submit(api_call, client, "sanity", [payloads[2], None, None, SANITY_METHODS, None])
        )
        with ThreadPoolExecutor(4) as explains:
            done = list(
                explains.map(lambda p: api_call(client, "explain", [p, None, None, 0.5]), payloads)
            )
        return done + [job.result() for job in jobs]


def rounds(count: int, allocators: list[str], compare_methods: list[str]) -> None:
    import httpx

    from tests.test_explorer_e2e import start_app, stop_app

    folder = Path(tempfile.gettempdir()) / "tgrad-bench-memory"
    folder.mkdir(exist_ok=True)
    photos = distinct_photos(folder, EXPLAINS * count)
    print(
        f"{count} rounds of {EXPLAINS} explanations (4 at a time), {COMPARES} comparisons "
        f"({', '.join(compare_methods)}) and 1 sanity check ({', '.join(SANITY_METHODS)}), "
        "all at once, new photos each round; resident memory of the server (MiB)"
    )
    header = f"{'allocator':<10}{'start':>8}" + "".join(
        f"{f'round {i}':>9}" for i in range(1, count + 1)
    )
    print(header + f"{'peak':>8}{'last/1st':>10}{'s':>6}  ok")
    for name in allocators:
        env = ALLOCATORS[name]
        if "LD_PRELOAD" in env and not Path(env["LD_PRELOAD"]).exists():
            print(f"{name:<10}  not installed ({env['LD_PRELOAD']})")
            continue
        log = Path(tempfile.gettempdir()) / f"bench_memory_{name}.log"
        process, url = start_app(log, env)
        try:
            client = httpx.Client(base_url=url, timeout=600)
            start, after, began = status_mb(process.pid, "VmRSS"), [], time.perf_counter()
            for number in range(count):
                events = one_round(
                    client, photos[number * EXPLAINS : (number + 1) * EXPLAINS], compare_methods
                )
                if set(events) != {"complete"}:
                    raise RuntimeError(f"{name}, round {number + 1}: {events}; see {log}")
                time.sleep(2)  # the queue is empty: what the server keeps
                after.append(status_mb(process.pid, "VmRSS"))
            peak = status_mb(process.pid, "VmHWM")
            seconds = time.perf_counter() - began
        finally:
            stop_app(process)
        ratio = after[-1] / after[0]
        cells = "".join(f"{mb:>9.0f}" for mb in after)
        ok = "yes" if ratio <= TARGET_RATIO else "NO"
        print(f"{name:<10}{start:>8.0f}{cells}{peak:>8.0f}{ratio:>10.2f}{seconds:>6.0f}  {ok}")


# ---------------------------------------------------------------- table (parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="input names to run (default: all)")
    parser.add_argument("--rounds", type=int, help="rounds of load against the server")
    parser.add_argument(
        "--allocators", nargs="*", choices=list(ALLOCATORS), default=list(ALLOCATORS)
    )
    parser.add_argument(
        "--compare-methods",
        nargs="*",
        default=["tgrad", "gradcam", "fullgrad", "vanilla", "integrated_gradients", "smoothgrad"],
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.rounds:
        rounds(args.rounds, args.allocators, args.compare_methods)
        return
    only = set(args.only) | {"photo_224"} if args.only else None
    folder = Path(tempfile.gettempdir()) / "tgrad-bench-memory"
    folder.mkdir(exist_ok=True)
    paths = make_inputs(folder, only)
    print(
        f"MAX_PIXELS = {images.MAX_PIXELS:,}, DECODE_BUDGET = {images.DECODE_BUDGET:,} B, "
        f"MAX_SIDE = {images.MAX_SIDE}; peak = VmHWM - VmRSS after model load (MiB)"
    )
    header = f"{'input':<26}{'file MB':>9}{'pixels':>13}{'decode MB':>11}{'peak MB':>9}"
    print(header + f"{'x 224px':>9}{'s':>7}")
    reference = None
    for name, path in paths.items():
        run = subprocess.run(
            [sys.executable, __file__, "--child", str(path)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        if run.returncode != 0:
            print(f"{name:<26} failed: {run.stderr.strip().splitlines()[-1:]}")
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        size_mb = path.stat().st_size / 1e6
        if "refused" in result:
            print(f"{name:<26}{size_mb:>9.2f}  refused: {result['refused']}")
            continue
        peak = result["peak_kb"] / 1024
        reference = reference or peak
        width, height = result["size"]
        print(
            f"{name:<26}{size_mb:>9.2f}{width * height:>13,}{result['decode_kb'] / 1024:>11.0f}"
            f"{peak:>9.0f}{peak / reference:>9.1f}{result['s']:>7.1f}"
            + ("  OVER TARGET" if peak > TARGET_MB else "")
        )


if __name__ == "__main__":
    main()
