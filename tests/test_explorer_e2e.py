"""End to end: ``python app.py`` in a subprocess, driven by Debian's Chromium via Playwright.

Screenshots go to tests/output/. Skipped only when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest

from tests.explorer_files import OUTPUT, PHOTOS, ROOT, huge_png, text_as_jpg, truncated_jpeg
from tgrad import viz

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.slow,  # a real browser against a served app
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium"),
]
LOCAL = ("http://127.0.0.1", "data:", "blob:")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(
    log_path: os.PathLike, extra_env: dict[str, str] | None = None, cwd: os.PathLike = ROOT
) -> tuple[subprocess.Popen, str]:
    """``python app.py`` (of the tree at ``cwd``) on a free port; returns the process and
    its URL once it answers."""
    port = free_port()
    env = dict(
        os.environ,
        **(extra_env or {}),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_SSR_MODE="False",
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="1",
    )
    with open(log_path, "w") as log:  # the child keeps its own copy of the handle
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(url + "config", timeout=1).close()
            return process, url
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.25)


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@pytest.fixture(scope="module")
def server():
    OUTPUT.mkdir(parents=True, exist_ok=True)
    process, url = start_app(OUTPUT / "e2e_server.log")
    yield url
    stop_app(process)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.external = []
    page.page_errors = []
    page.on("request", lambda r: r.url.startswith(LOCAL) or page.external.append(r.url))
    page.on("pageerror", lambda error: page.page_errors.append(str(error)))
    page.goto(server)
    page.wait_for_selector("#explain-btn")
    yield page
    context.close()


@pytest.fixture
def narrow_page(browser, server):
    """A page 1024 px wide, as a classroom projector shows it."""
    context = browser.new_context(viewport={"width": 1024, "height": 800})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.server = server
    page.external = []
    page.page_errors = []
    page.on("request", lambda r: r.url.startswith(LOCAL) or page.external.append(r.url))
    page.on("pageerror", lambda error: page.page_errors.append(str(error)))
    yield page
    context.close()


def upload(page, path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#input-image img")


def src(page, selector: str) -> str | None:
    return page.locator(selector).get_attribute("src")


def wait_for_new_src(page, selector: str, old: str | None) -> str:
    page.wait_for_function(
        "([s, o]) => { const i = document.querySelector(s); return i && i.src && i.src !== o }",
        arg=[selector, old],
    )
    return src(page, selector)


def wait_for_log(text: str, seconds: float = 30) -> None:
    """Wait until the server's log says ``text`` (how a test sees that work stopped)."""
    log = OUTPUT / "e2e_server.log"
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"the server never logged {text!r}"
        time.sleep(0.25)


def error_toasts(page):
    return page.locator(".toast-body.error")


def test_explain_then_slide_through_the_layers(page):
    upload(page, PHOTOS["chelsea"])
    page.locator("#explain-btn").click()
    page.locator("#overlay img").wait_for(state="visible")
    page.locator("#layer-image img").wait_for(state="visible")
    assert "cat" in page.locator("#top5").inner_text()
    assert "Position 0 / 49" in page.locator("#layer-caption").inner_text()
    first = src(page, "#layer-image img")

    slider = page.locator("#layer-slider input[type=range]")
    slider.scroll_into_view_if_needed()
    assert slider.is_enabled() and slider.get_attribute("max") == "49"
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 4, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=8)
    page.mouse.up()
    dragged = wait_for_new_src(page, "#layer-image img", first)
    position = int(slider.input_value())
    assert 15 <= position <= 35
    page.wait_for_function(
        "p => document.querySelector('#layer-caption')?.innerText.includes(`Position ${p} /`)",
        arg=position,
    )
    page.screenshot(path=str(OUTPUT / "e2e_layer_dragged.png"), full_page=True)

    slider.focus()
    page.keyboard.press("ArrowRight")  # keyboard users: the native range input
    stepped = wait_for_new_src(page, "#layer-image img", dragged)
    assert int(slider.input_value()) == position + 1
    page.wait_for_function(
        "p => document.querySelector('#layer-caption')?.innerText.includes(`Position ${p} /`)",
        arg=position + 1,
    )

    page.get_by_label("everything up to here").check()
    wait_for_new_src(page, "#layer-image img", stepped)
    page.wait_for_function(
        "() => document.querySelector('#layer-caption')?.innerText.includes('built from')"
    )
    chart = page.locator("#decomposition-chart")
    assert chart.locator(".tg-col").count() == 51
    assert chart.locator(".tg-bar.tg-cur").count() == 1
    page.screenshot(path=str(OUTPUT / "e2e_explained.png"), full_page=True)
    assert error_toasts(page).count() == 0

    page.get_by_role("tab", name="How to read this").click()
    page.get_by_text("Why biases matter").wait_for(state="visible")
    page.screenshot(path=str(OUTPUT / "e2e_guide.png"), full_page=True)
    assert page.page_errors == []
    assert page.external == []


def test_pick_a_class_from_the_top5(page):
    upload(page, PHOTOS["coffee"])
    page.locator("#explain-btn").click()
    page.locator("#overlay img").wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelector('#summary')?.innerText.includes('967: espresso')"
    )
    page.locator("#top5").get_by_text("968: cup").click()
    page.wait_for_function(
        "() => document.querySelector('#summary')?.innerText.includes('968: cup')"
    )
    assert error_toasts(page).count() == 0


@pytest.mark.parametrize(
    ("maker", "message"),
    [
        (text_as_jpg, "is not an image"),
        (truncated_jpeg, "truncated or corrupt"),
        (huge_png, "more than the limit"),
    ],
    ids=["text-renamed-jpg", "truncated-jpeg", "png-12000x12000"],
)
def test_bad_upload_shows_a_readable_message(page, tmp_path_factory, maker, message):
    bad = maker(tmp_path_factory.mktemp("bad"))
    page.locator("#input-image input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(300)
    page.locator("#explain-btn").click()
    toast = error_toasts(page).first
    toast.wait_for(state="visible")
    text = toast.inner_text()
    assert message in text and "Traceback" not in text
    page.wait_for_timeout(700)  # let the toast finish sliding in, for the screenshot
    page.screenshot(path=str(OUTPUT / f"e2e_error_{bad.stem}.png"))
    page.locator(".toast-close").first.click()

    # the server keeps serving: a good photo explains
    page.locator("#input-image button[aria-label='Remove Image']").click()
    upload(page, PHOTOS["rocket"])
    page.locator("#explain-btn").click()
    page.wait_for_function(
        "() => document.querySelector('#summary')?.innerText.includes('Explaining')"
    )
    page.locator("#overlay img").wait_for(state="visible")
    assert page.external == []


def test_compare_fills_the_grid_and_stop_stops(page, server):
    upload(page, PHOTOS["rocket"])
    page.get_by_role("tab", name="Compare").click()
    methods = page.locator("#compare-methods")
    methods.wait_for(state="visible")
    # the single-pass methods are ticked by default: one shared pass
    assert methods.get_by_label("CAM · GradCAM", exact=True).is_checked()
    assert not methods.get_by_label("CAM · ScoreCAM").is_checked()
    page.get_by_text("Timings (as the /compare API returns them)").click()
    page.locator("#compare-btn").click()
    page.locator("#compare-grid img").wait_for(state="visible")
    page.wait_for_function(  # every method done (the JSON beside the grid says so)
        "() => { const t = document.querySelector('#compare-timings')?.innerText || '';"
        " return t.includes('input_x_gradient') && !t.includes('pending') }"
    )
    assert "99th percentile" in page.locator("#compare-normalisation").inner_text()
    page.screenshot(path=str(OUTPUT / "e2e_compare.png"), full_page=True)
    assert error_toasts(page).count() == 0

    # ScoreCAM on Lite0 masks the photo with each of 1280 channels: long enough to stop
    methods.get_by_label("CAM · ScoreCAM").check()
    page.locator("#compare-btn").click()
    tab_says(page, "#compare-tab", "computing scorecam")  # the progress bar, under Stop
    # pressed again: the page says that the running comparison stops and this one replaces it
    page.locator("#compare-btn").click()
    toast = page.locator(".toast-body").first
    toast.wait_for(state="visible")
    assert "this one replaces it" in toast.inner_text()
    wait_for_log("comparison replaced; not computed: scorecam")
    tab_says(page, "#compare-tab", "computing scorecam")  # the new run's ScoreCAM
    stop_cleanly(
        page,
        "compare",
        ("#compare-timings", "stopped"),
        "comparison stopped; not computed: scorecam",
    )
    # what was done stays, ScoreCAM is marked stopped, and nothing reads as an error
    timings = page.locator("#compare-timings").inner_text()
    assert "pending" not in timings and timings.count('"done"') == 8
    page.locator("#compare-grid img").wait_for(state="visible")
    assert page.page_errors == [] and page.external == []


def tab_says(page, selector: str, text: str, timeout: float = 120_000) -> None:
    page.wait_for_function(
        "([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
        arg=[selector, text],
        timeout=timeout,
    )


def stop_cleanly(page, prefix: str, shows: tuple[str, str], logged: str) -> None:
    """Press ``#<prefix>-stop``, wait until ``shows`` (selector, text) and the server's
    log says ``logged``, then check that nothing in the tab reads as an error."""
    page.locator(f"#{prefix}-stop").click()
    tab_says(page, *shows)
    wait_for_log(logged)
    page.wait_for_timeout(500)  # what would come after the stop (nothing should)
    page.screenshot(path=str(OUTPUT / f"e2e_{prefix}_stopped.png"), full_page=True)
    looks_fine(page, f"#{prefix}-tab")


def looks_fine(page, selector: str) -> None:
    """No error badge, error text or error toast in the tab after a Stop."""
    tab = page.locator(selector)
    assert tab.locator(".error").count() == 0
    assert "Error" not in tab.inner_text()
    assert error_toasts(page).count() == 0


def test_sanity_check_fills_the_grid_and_stop_stops(page):
    upload(page, PHOTOS["chelsea"])
    page.get_by_role("tab", name="Sanity check").click()
    methods = page.locator("#sanity-methods")
    methods.wait_for(state="visible")
    for label in ("bias terms · T-Grad", "CAM · GradCAM", "gradient · Guided Backprop"):
        methods.get_by_label(label, exact=True).uncheck()  # Vanilla alone: a quick cascade
    page.locator("#sanity-btn").click()
    page.locator("#sanity-grid img").wait_for(state="visible")
    page.get_by_text("Every similarity (as the /sanity API returns them)").click()
    page.wait_for_function(  # the last group, the stem, is in the numbers: the run is done
        "() => document.querySelector('#sanity-numbers')?.innerText.includes('_conv_stem')",
        timeout=120_000,
    )
    page.locator("#sanity-curves img").wait_for(state="visible")
    page.screenshot(path=str(OUTPUT / "e2e_sanity.png"), full_page=True)
    assert error_toasts(page).count() == 0

    # a second run with another method set, stopped early: the columns done stay, the
    # rest say "stopped", and nothing reads as an error
    methods.get_by_label("bias terms · T-Grad", exact=True).check()
    before = src(page, "#sanity-grid img")
    page.locator("#sanity-btn").click()
    wait_for_new_src(page, "#sanity-grid img", before)  # the new run's first column is in
    stop_cleanly(page, "sanity", ("#sanity-numbers", '"stopped"'), "sanity check stopped")
    page.locator("#sanity-grid img").wait_for(state="visible")
    page.locator("#sanity-curves img").wait_for(state="visible")
    assert '"original"' in page.locator("#sanity-numbers").inner_text()  # step 0 stays
    # on a 1024 px projector the grid's titles stay legible: at least a 10 px font as
    # shown (they were 4 px: twenty 112 px columns scaled down to the page)
    page.set_viewport_size({"width": 1024, "height": 900})
    page.wait_for_timeout(500)
    shown, natural = page.locator("#sanity-grid img").evaluate(
        "i => [i.getBoundingClientRect().width, i.naturalWidth]"
    )
    font = (viz.SANITY_TITLE - 8) * min(1.0, shown / natural)
    assert font >= 10, (shown, natural)
    assert page.page_errors == [] and page.external == []


def test_evaluate_shows_its_progress_stops_cleanly_and_its_table_fits_1024_px(narrow_page):
    """Evaluate had no Stop and showed only an orange border for minutes; its table cut
    its steps column even at 1400 px."""
    page = narrow_page
    page.goto(page.server + "?photo=rocket")
    tab_says(page, "#summary", "Explaining")
    page.get_by_role("tab", name="Evaluate").click()
    methods = page.locator("#evaluate-methods")
    for label in (
        "bias terms · FullGrad",
        "gradient · Vanilla gradient",
        "gradient · Input x Gradient",
    ):
        methods.get_by_label(label, exact=True).uncheck()  # T-Grad and GradCAM
    page.get_by_label("quick look · 56 steps").check()
    page.locator("#evaluate-btn").click()
    # the progress bar names the method, the step and the time left
    page.wait_for_function(
        "() => /scoring GradCAM: step \\d+ of 56, about \\d+ s left/"
        ".test(document.querySelector('#evaluate-tab')?.innerText || '')",
        timeout=180_000,
    )
    stop_cleanly(
        page,
        "evaluate",
        ("#scores", "GradCAM · stopped"),
        "evaluation stopped; not scored: gradcam",
    )
    assert "T-Grad" in page.locator("#scores").inner_text()  # the method scored stays
    page.locator("#insertion img").wait_for(state="visible")
    # every column of the table is inside it, the steps column included
    fits = page.locator("#scores").evaluate(
        """t => { const box = t.getBoundingClientRect();
        const cells = [...t.querySelectorAll('th')];
        const over = [...t.querySelectorAll('.virtual-table-viewport')]
            .filter(e => e.scrollWidth > e.clientWidth + 1).length;
        return [over, cells.map(c => c.innerText.trim()),
                cells.every(c => c.getBoundingClientRect().right <= box.right + 1)] }"""
    )
    assert fits[0] == 0 and fits[2], fits
    assert any(h.startswith("steps") for h in fits[1])
    assert page.page_errors == [] and page.external == []


@pytest.mark.parametrize(
    ("model", "maps"), [("efficientnet_lite0", 50), ("efficientnet_lite2", 65)]
)
def test_the_layer_grid_fits_a_1024_px_window(narrow_page, model, maps):
    """At a projector's 1024 px the grid cut its tenth column (the head among them), and
    with Lite1 and Lite2 its last row."""
    page = narrow_page
    page.goto(page.server + f"?photo=coffee&model={model}")
    page.wait_for_function(
        "n => document.querySelectorAll('#layer-grid .thumbnail-item').length === n",
        arg=maps,
        timeout=120_000,
    )
    grid = page.locator("#layer-grid")
    grid.scroll_into_view_if_needed()
    outside = grid.evaluate(
        """g => { const box = g.getBoundingClientRect();
        return [...g.querySelectorAll('.thumbnail-item')].map(t => t.getBoundingClientRect())
            .filter(r => r.right > box.right + 1 || r.bottom > box.bottom + 1).length }"""
    )
    assert outside == 0
    grid.screenshot(path=str(OUTPUT / f"e2e_layer_grid_1024_{model}.png"))
    assert page.page_errors == [] and page.external == []


def test_an_example_explains_on_click_and_a_typed_class_must_be_exact(page):
    page.locator("#examples button.gallery-item").nth(1).click()  # chelsea.jpg (sorted)
    page.locator("#overlay img").wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelector('#summary')?.innerText.includes('Explaining')"
    )
    summary = page.locator("#summary").inner_text()
    # the browser redraws the overlay from the canvas payload and mirrors it into the
    # <img> as a blob (explorer/canvas.js): wait for that, the picture the page then keeps
    page.wait_for_function("() => document.querySelector('#overlay img')?.src.startsWith('blob:')")
    overlay = src(page, "#overlay img")
    assert "← explained" in page.locator("#top5").inner_text()

    target = page.locator("#target textarea, #target input").first
    target.fill("cat")
    target.press("Enter")
    toast = error_toasts(page).first
    toast.wait_for(state="visible")
    text = toast.inner_text()
    assert "is part of 8 class names" in text and "282: tiger cat" in text
    page.screenshot(path=str(OUTPUT / "e2e_ambiguous_class.png"), full_page=True)
    page.wait_for_timeout(1000)
    assert page.locator("#summary").inner_text() == summary  # nothing was explained
    assert src(page, "#overlay img") == overlay
    assert "Error" not in page.locator("#overlay").inner_text()  # the picture stays shown
    page.locator(".toast-close").first.click()

    target.fill("Tabby")  # an exact name, any case
    target.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#summary')?.innerText.includes('281: tabby')"
    )
    title = page.locator("#overlay").inner_text()
    assert "T-Grad saliency for 281: tabby" in title
    assert page.page_errors == [] and page.external == []


def caption_says(page, text: str) -> None:
    page.wait_for_function(
        "t => document.querySelector('#layer-caption')?.innerText.includes(t)", arg=text
    )


def test_a_link_reopens_a_view_the_grid_and_bars_move_the_slider(page, server):
    page.goto(server + "?photo=coffee&class=967&layer=20&mode=cumulative&cmap=jet")
    caption_says(page, "Position 20 / 49")
    caption_says(page, "built from positions 0 to 20")
    assert "967: espresso" in page.locator("#summary").inner_text()
    page.wait_for_function(
        "() => document.querySelector('#colour-scale')?.innerText.includes('jet (as in')"
    )
    page.wait_for_function("() => location.search.includes('layer=20')")
    link = page.locator("#view-link textarea, #view-link input").first
    assert "photo=coffee" in link.input_value() and "cmap=jet" in link.input_value()

    # large and sharp: the picture has twice the model's pixels and is shown large
    overlay = page.locator("#overlay img")
    assert overlay.evaluate("i => i.naturalWidth") == 448
    assert overlay.bounding_box()["height"] >= 400
    assert page.locator("#overlay button[aria-label*='ull']").count() >= 1  # full screen
    page.locator("#overlay").screenshot(path=str(OUTPUT / "e2e_large_overlay.png"))

    # the zero label sits on the zero line, as drawn by the browser
    chart = page.locator("#decomposition-chart")
    line = chart.locator(".tg-zero").bounding_box()
    label = chart.locator(".tg-zero-label").bounding_box()
    assert abs((label["y"] + label["height"] / 2) - line["y"]) <= 2, (label, line)
    chart.screenshot(path=str(OUTPUT / "e2e_chart_zero_line.png"))

    # the paper's Fig. 2 under the slider: a click on a map moves the slider there
    grid = page.locator("#layer-grid")
    grid.scroll_into_view_if_needed()
    assert grid.locator("button.thumbnail-item, .thumbnail-item").count() == 50
    grid.locator(".thumbnail-item").nth(7).click()
    caption_says(page, "Position 7 / 49")
    page.wait_for_function("() => location.search.includes('layer=7')")
    grid.screenshot(path=str(OUTPUT / "e2e_layer_grid.png"))
    # ... and so does a click on a bar of the chart
    chart.locator('.tg-col[data-pos="30"]').click()
    caption_says(page, "Position 30 / 49")
    assert page.locator("#layer-slider input[type=range]").input_value() == "30"

    # the figures, in one zip
    page.locator("#figures-btn").click()
    href = page.locator("#figures a").first
    href.wait_for(state="attached")
    body = page.request.get(href.get_attribute("href")).body()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert {"overlay.png", "layers.png", "chart.png", "numbers.json"} <= set(archive.namelist())
        assert json.loads(archive.read("numbers.json"))["view"]["position"] == 30

    # a new photo starts again at the input term
    upload(page, PHOTOS["chelsea"])
    page.wait_for_function(
        "() => document.querySelector('#layer-slider input[type=range]')?.value === '0'"
    )
    page.screenshot(path=str(OUTPUT / "e2e_link_view.png"), full_page=True)
    assert error_toasts(page).count() == 0
    assert page.page_errors == [] and page.external == []


def test_a_hostile_link_says_what_it_ignored(page, server):
    page.goto(server + "?photo=../../etc/passwd&class=%C2%B2&layer=3")
    toast = page.locator(".toast-body").first
    toast.wait_for(state="visible")
    assert "photo, class could not be used and were ignored" in toast.inner_text()
    assert "/etc" not in toast.inner_text()
    assert page.page_errors == [] and page.external == []


def test_the_model_picker_says_what_the_model_is(page):
    page.wait_for_function(
        "() => document.querySelector('#model-note')?.innerText.includes('M parameters')"
    )
    note = page.locator("#model-note").inner_text()
    assert "efficientnet_lite0" in note and "224 x 224 px centre crop" in note
    assert page.page_errors == [] and page.external == []


def test_a_plain_link_shows_the_layer_grid_too(page, server):
    """Without a colour map in the link nothing redraws the grid later: the link's own
    explanation must fill it."""
    page.goto(server + "?photo=rocket&layer=5")
    caption_says(page, "Position 5 / 49")
    page.wait_for_function(
        "() => document.querySelectorAll('#layer-grid .thumbnail-item').length === 50"
    )
    assert page.page_errors == [] and page.external == []
