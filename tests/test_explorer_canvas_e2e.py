"""The layer view drawn in a real browser (``python app.py`` driven by Debian's Chromium
via Playwright): the canvas inside ``#layer-image`` (and ``#overlay``) shows the
server's picture for the same view, and moving the slider, switching the view and the
opacity makes no request to the server.

The server's picture is :func:`explorer.explain_draw.layer_overlay` of the same photo and
model explained in this process (the server's own function on the same numbers).
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

from explorer import view
from explorer.handlers import Handlers
from explorer.session import Session
from explorer.tabs import explain_draw
from tests.explorer_files import OUTPUT, PHOTOS
from tests.test_explorer_e2e import CHROMIUM, CHROMIUM_ARGS, start_app, stop_app
from tgrad.models import DEFAULT_MODEL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium"),
    pytest.mark.usefixtures("one_torch_thread"),
]
SERVER = "http://127.0.0.1"
SCALE = 2  # the default display scale: the pictures are 448 px for Lite0's 224


@pytest.fixture(scope="module")
def explanation():
    handlers = Handlers(Session(display=SCALE), [DEFAULT_MODEL])
    key = handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, None, 0.5)[3]
    return handlers.session.lookup(key)


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    process, url = start_app(
        OUTPUT / "e2e_canvas_server.log", {"EXPLORER_DISPLAY_SCALE": str(SCALE)}
    )
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.requests = []
            page.errors = []
            page.on("request", lambda r: page.requests.append(r.url))
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector("#explain-btn")
            page.locator("#input-image input[type=file]").set_input_files(str(PHOTOS["coffee"]))
            page.wait_for_selector("#input-image img")
            page.locator("#explain-btn").click()
            # explained, drawn, and the layer grid (the last server step) shown
            page.wait_for_function(
                "() => window.tgradCanvas?.state.drawn > 0"
                " && document.querySelectorAll('#layer-grid .thumbnail-item').length === 50"
            )
            page.wait_for_timeout(1000)  # the explanation's last requests are done
            yield page
            browser.close()
    finally:
        stop_app(process)


def server_requests(page) -> list[str]:
    return [url for url in page.requests if url.startswith(SERVER)]


def drawn(page) -> dict:
    return page.evaluate("() => window.tgradCanvas.state.lastDraw")


def wait_drawn(page, layer: int, mode: str, opacity: float, cmap: str) -> None:
    page.wait_for_function(
        """([l, m, o, c]) => { const d = window.tgradCanvas?.state.lastDraw;
        return d && d.layer === l && d.mode === m && Math.abs(d.opacity - o) < 1e-9
          && d.cmap === c }""",
        arg=[layer, mode, opacity, cmap],
    )


def canvas_pixels(page, selector: str) -> np.ndarray:
    url = page.evaluate(f"() => document.querySelector('{selector}').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def step_slider_to(page, position: int) -> None:
    slider = page.locator("#layer-slider input[type=range]")
    slider.focus()
    current = int(slider.input_value())
    key = "ArrowRight" if position > current else "ArrowLeft"
    for _ in range(abs(position - current)):
        page.keyboard.press(key)


def set_opacity(page, value: float) -> None:
    slider = page.locator("#opacity input[type=range]")
    slider.focus()
    current = float(slider.input_value())
    key = "ArrowRight" if value > current else "ArrowLeft"
    for _ in range(round(abs(value - current) / 0.05)):  # the opacity's step
        page.keyboard.press(key)


def test_the_canvas_is_the_servers_picture_and_steps_ask_the_server_nothing(page, explanation):
    """Mean absolute difference under 2 of 255 per channel, for every view checked. Why
    that bound: a map is sent as codes of at most 4/255 of its robust scale, so each
    value is within 2/255 of the scale (canvas.HEADROOM), about half a colour-table entry
    (1/256) either way; neighbouring entries of viridis and jet differ by 1 to 4 levels
    per channel, and the opacity (at most 0.7 here) scales that. The running sums add
    the half steps of the grids they combine (five or six), so a pixel may move a few
    entries, but the errors of independent grids mostly cancel; float32 against float64
    rounding crosses an entry's edge only rarely. The Python rebuild of the same
    arithmetic (test_explorer_canvas.py) stays under 1."""
    assert drawn(page)["layer"] == 0
    assert page.locator("#layer-image canvas").count() == 1
    assert page.locator("#overlay canvas").count() == 1
    before = server_requests(page)
    shot = page.locator("#layer-image").screenshot()

    views = []
    step_slider_to(page, 5)
    wait_drawn(page, 5, view.ALONE, 0.5, "viridis")
    assert page.locator("#layer-image").screenshot() != shot  # what a reader of the id sees
    views.append((5, view.ALONE, 0.5, "viridis"))
    page.locator("#layer-mode").get_by_label(view.CUMULATIVE).check()
    set_opacity(page, 0.7)
    wait_drawn(page, 5, view.CUMULATIVE, 0.7, "viridis")
    views.append((5, view.CUMULATIVE, 0.7, "viridis"))
    step_slider_to(page, 30)
    wait_drawn(page, 30, view.CUMULATIVE, 0.7, "viridis")
    views.append((30, view.CUMULATIVE, 0.7, "viridis"))
    pictures = {view: canvas_pixels(page, "#layer-image canvas") for view in views[-1:]}
    # (the earlier views are compared below, after the colour map)
    steps = server_requests(page)[len(before) :]
    assert steps == [], steps  # slider, view and opacity steps: no request at all
    caption = page.locator("#layer-caption").inner_text()
    assert "Position 30 / 49" in caption and "positions 0 to 30" in caption
    chart = page.locator("#decomposition-chart")
    assert chart.locator(".tg-bar.tg-cur").count() == 1
    current = chart.locator(".tg-col").nth(explanation.term_indices[30]).locator(".tg-bar")
    assert "tg-cur" in current.get_attribute("class")
    assert chart.locator(".tg-bar.tg-dim").count() > 0  # the later terms, not yet included
    assert (
        page.locator("#layer-grid .thumbnail-item").nth(30).get_attribute("class").count("tg-here")
    )
    assert "layer=30" in page.locator("#view-link textarea, #view-link input").first.input_value()

    page.locator("#cmap").get_by_label("jet (as in the paper)").check()
    wait_drawn(page, 30, view.CUMULATIVE, 0.7, "jet")
    pictures[(30, view.CUMULATIVE, 0.7, "jet")] = canvas_pixels(page, "#layer-image canvas")
    overlay = canvas_pixels(page, "#overlay canvas")
    page.locator("#layer-mode").get_by_label(view.ALONE).check()
    wait_drawn(page, 30, view.ALONE, 0.7, "jet")
    pictures[(30, view.ALONE, 0.7, "jet")] = canvas_pixels(page, "#layer-image canvas")
    step_slider_to(page, 5)
    wait_drawn(page, 5, view.ALONE, 0.7, "jet")
    pictures[(5, view.ALONE, 0.7, "jet")] = canvas_pixels(page, "#layer-image canvas")
    page.locator("#cmap").get_by_label("viridis (perceptually uniform)").check()
    page.locator("#layer-mode").get_by_label(view.CUMULATIVE).check()
    wait_drawn(page, 5, view.CUMULATIVE, 0.7, "viridis")
    pictures[(5, view.CUMULATIVE, 0.7, "viridis")] = canvas_pixels(page, "#layer-image canvas")
    Image.fromarray(pictures[(30, view.CUMULATIVE, 0.7, "jet")]).save(OUTPUT / "e2e_canvas.png")

    differences = {}
    for (position, mode, opacity, cmap), pixels in pictures.items():
        server = explain_draw.layer_overlay(explanation, position, mode, opacity, cmap)
        assert pixels.shape == server.shape == (448, 448, 3)
        differences[(position, mode, cmap)] = np.abs(pixels.astype(int) - server).mean()
    server = explain_draw.saliency_overlay(explanation, 0.7, "jet")
    differences["overlay"] = np.abs(overlay.astype(int) - server).mean()
    assert max(differences.values()) < 2, differences
    # a picture that is not the view's is far off: the comparison can fail
    other = explain_draw.layer_overlay(explanation, 5, view.ALONE, 0.7, "viridis")
    assert np.abs(pictures[(5, view.CUMULATIVE, 0.7, "viridis")].astype(int) - other).mean() > 2
    assert page.errors == []
