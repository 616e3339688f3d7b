"""How fast the explorer feels in a real browser (Debian Chromium driven by Playwright).

Starts ``python app.py`` on a free port (or uses ``--url``), then measures:

(a) click Explain on a 224 px photo -> the overlay image loaded in the page
    (a different photo each run, so every run computes a new explanation);
(b) one keyboard step of the layer slider (ArrowRight) -> the new layer image loaded.

It does so for each display scale asked for (``EXPLORER_DISPLAY_SCALE``: the pictures
drawn at 1x or 2x the model's input), one app after the other, and prints each scale's
medians and their ratio to the first scale's (the baseline of the same run).

    .venv/bin/python -m benchmarks.bench_explorer    # scales 1 and 2; 5 explains, 10 steps
    .venv/bin/python -m benchmarks.bench_explorer --scales 2 --explains 9 --steps 30

Targets from the issue (2-core CPU, EfficientNet-Lite0): (a) < 2 s, (b) < 150 ms. The
machine's CPU pressure (share of time some task waited for a CPU, /proc/pressure/cpu)
is printed with the results, as other load on a shared machine skews them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_explorer_e2e import CHROMIUM, CHROMIUM_ARGS, start_app, stop_app  # noqa: E402

TARGETS = {"explain": 2.0, "slider step": 0.150}
LOADED = """([s, o]) => { const i = document.querySelector(s);
    return i && i.src && i.src !== o && i.complete && i.naturalWidth > 0 }"""


def photos_224(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 224 x 224 photos made from the bundled ones (crops and flips)."""
    sources = sorted((ROOT / "assets").glob("*.jpg"))
    paths = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as photo:
            image = ImageOps.fit(photo.convert("RGB"), (224, 224))
        for _ in range(i // len(sources)):
            image = ImageOps.mirror(image) if i % 2 else ImageOps.flip(image)
        path = folder / f"photo_{i}.png"
        image.save(path)
        paths.append(path)
    return paths


def cpu_pressure() -> str:
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"
    return line.split()[1].replace("avg10=", "") + "% (avg10)"


def wait_loaded(page, selector: str, old: str | None) -> None:
    page.wait_for_function(LOADED, arg=[selector, old], polling="raf")


def measure(url: str, explains: int, steps: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {"explain": [], "slider step": []}
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#explain-btn")
        for photo in photos_224(Path(folder), explains):
            old = (
                page.locator("#overlay img").get_attribute("src")
                if page.locator("#overlay img").count()
                else None
            )
            page.locator("#input-image input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#input-image img")
            page.wait_for_timeout(200)  # let the upload settle: time the click only
            start = time.perf_counter()
            page.locator("#explain-btn").click()
            wait_loaded(page, "#overlay img", old)
            times["explain"].append(time.perf_counter() - start)
            page.locator("#layer-image img").wait_for(state="visible")
            page.wait_for_timeout(300)

        slider = page.locator("#layer-slider input[type=range]")
        slider.scroll_into_view_if_needed()
        slider.focus()
        for _ in range(steps):
            old = page.locator("#layer-image img").get_attribute("src")
            start = time.perf_counter()
            page.keyboard.press("ArrowRight")
            wait_loaded(page, "#layer-image img", old)
            times["slider step"].append(time.perf_counter() - start)
            page.wait_for_timeout(100)
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--explains", type=int, default=5, help="explain runs (median)")
    parser.add_argument("--steps", type=int, default=10, help="slider steps (median)")
    parser.add_argument("--url", help="use a running app instead of starting one")
    parser.add_argument(
        "--scales", type=int, nargs="+", default=[1, 2], help="display scales (1 2 3)"
    )
    args = parser.parse_args()
    if args.steps > 49:
        parser.error("--steps: Lite0 has 50 slider positions, so at most 49 steps")

    results = {}
    for scale in [None] if args.url else args.scales:
        process, url = None, args.url
        if url is None:
            log = Path(tempfile.gettempdir()) / "bench_explorer_server.log"
            process, url = start_app(log, {"EXPLORER_DISPLAY_SCALE": str(scale)})
        try:
            before = cpu_pressure()
            results[scale] = measure(url, args.explains, args.steps)
            print(f"scale {scale}: CPU pressure {before} -> {cpu_pressure()}")
        finally:
            if process is not None:
                stop_app(process)

    base = next(iter(results.values()))
    print(f"\nT-Grad Explorer in Chromium, medians (ratio: to the scale {next(iter(results))})")
    print(
        f"{'what':<14}{'scale':>6}{'runs':>6}{'median':>10}{'min':>10}{'max':>10}"
        f"{'ratio':>8}{'target':>10}  ok"
    )
    for scale, times in results.items():
        for what, values in times.items():
            median = statistics.median(values)
            ratio = median / statistics.median(base[what])
            ok = "yes" if median < TARGETS[what] else "NO"
            print(
                f"{what:<14}{scale or '-':>6}{len(values):>6}{1000 * median:>8.0f}ms"
                f"{1000 * min(values):>8.0f}ms{1000 * max(values):>8.0f}ms{ratio:>8.2f}"
                f"{1000 * TARGETS[what]:>8.0f}ms  {ok}"
            )


if __name__ == "__main__":
    main()
