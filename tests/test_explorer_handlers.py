"""The explorer's callbacks called directly (no server), with numbers checked."""

from __future__ import annotations

import re
import shutil
import threading
import time

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from explorer import draw, view
from explorer.cache import LRU, ModelCache, available_models
from explorer.events import BUNDLED_PHOTOS, NO_PHOTO
from explorer.explanation import TOP1, parse_target
from explorer.handlers import Handlers
from explorer.session import DISPLAY_SCALE, Session
from explorer.tabs import explain_draw
from explorer.uploads import UNUSABLE, PhotoGate
from tests.explorer_files import PHOTOS, huge_png, large_photo, text_as_jpg, truncated_jpeg
from tgrad import viz
from tgrad.models import DEFAULT_MODEL, imagenet_categories

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs

CATEGORIES = imagenet_categories()


@pytest.fixture(scope="module")
def session() -> Session:
    return Session()


@pytest.fixture(scope="module")
def handlers(session, tmp_path_factory) -> Handlers:
    """The app's handlers, whose gate also accepts files under pytest's temporary folder
    (standing in for Gradio's upload folder)."""
    gate = PhotoGate([tmp_path_factory.getbasetemp()], BUNDLED_PHOTOS)
    return Handlers(session, gate=gate)


@pytest.fixture(scope="module")
def coffee(handlers):
    """(overlay, top5, decomposition, key) for the espresso photo."""
    return handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, TOP1, 0.5)


def layer_view(handlers: Handlers, *view_args) -> tuple:
    """(layer overlay, caption, chart) at a slider position, as the server draws them
    after an explanation (``show_layers``; the page's slider steps redraw them in the
    browser from the same numbers, tests/test_explorer_canvas*.py)."""
    return handlers.show_layers(*view_args)[1:4]


def overlays(handlers: Handlers, *view_args) -> tuple:
    """(saliency overlay, layer overlay) at a view, as the server draws them."""
    return handlers.render_colours(*view_args)[2:4]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def assert_complete(decomposition: dict) -> None:
    """The terms sum to the logit within the completeness tolerance."""
    logit = decomposition["logit"]
    total = sum(row["contribution"] for row in decomposition["terms"])
    assert abs(total - logit) <= 1e-4 * max(1.0, abs(logit))
    assert abs(total + decomposition["gap"] - logit) <= 1e-5 * max(1.0, abs(logit))


def test_explain_returns_overlay_top5_and_decomposition(coffee):
    overlay, top5, decomposition, key = coffee
    side = DISPLAY_SCALE * 224  # drawn large, over the photo at twice the model's input
    assert overlay.shape == (side, side, 3) and overlay.dtype == np.uint8
    assert next(iter(top5)) == "967: espresso ← explained"
    assert top5["967: espresso ← explained"] > 0.5
    assert len(top5) == 5 and abs(sum(top5.values()) - 1) < 0.05
    assert decomposition["target"] == {"index": 967, "name": "espresso"}
    assert decomposition["model"] == DEFAULT_MODEL
    terms = decomposition["terms"]
    assert terms[0]["term"] == "input" and terms[0]["grid"] == [224, 224]
    assert terms[-1]["grid"] is None  # the classifier bias: no map
    for row in terms:
        share = row["contribution"] / decomposition["total_size"]
        assert row["share"] == pytest.approx(share)
    # shares are of the sum of the terms' absolute sizes: their absolute values sum to 1
    assert sum(abs(row["share"]) for row in terms) == pytest.approx(1.0)
    assert isinstance(key, str) and key


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_the_large_picture_shows_exactly_what_the_model_saw(handlers, name):
    """The large pictures are drawn over the photo's centre crop at twice the size: shrunk
    back to 224 px it must be the model's input: only resampling differs (a few grey
    levels on average), and no shift of a pixel or two in any direction matches better
    (a region off by a pixel, or scaled by 1 %, would)."""
    _, _, _, key = handlers.explain(str(PHOTOS[name]), DEFAULT_MODEL, TOP1, 0.5)
    explanation = handlers.session.lookup(key)
    large = Image.fromarray(explanation.backdrop)
    assert large.size == (448, 448)
    small = np.asarray(large.resize((224, 224), Image.Resampling.BICUBIC))
    assert mean_abs_diff(small, explanation.pixels) < 4.0
    aligned = mean_abs_diff(small, explanation.pixels)
    for axis in (0, 1):
        for shift in (-2, -1, 1, 2):
            shifted = np.roll(small, shift, axis=axis)[2:-2, 2:-2]
            assert mean_abs_diff(shifted, explanation.pixels[2:-2, 2:-2]) > aligned


def test_decomposition_sums_to_the_logit(coffee):
    assert_complete(coffee[2])


def test_overlay_differs_between_layers(handlers, coffee):
    key = coffee[3]
    computed = handlers.session.computed
    first = layer_view(handlers, key, 0, view.ALONE, 0.5)[0]
    positions = [5, 20, 35, 49]
    for position in positions:
        other = layer_view(handlers, key, position, view.ALONE, 0.5)[0]
        assert other.shape == first.shape
        assert mean_abs_diff(first, other) > 5.0, position
    # the aggregate builds up: an early prefix differs from the full map
    early = layer_view(handlers, key, 3, view.CUMULATIVE, 0.5)[0]
    assert mean_abs_diff(early, coffee[0]) > 2.0
    assert handlers.session.computed == computed  # moving the slider never recomputes


def test_everything_up_to_the_last_layer_is_the_full_overlay(handlers, coffee):
    overlay, _, _, key = coffee
    last = handlers.session.lookup(key).positions - 1
    image, caption, _ = layer_view(handlers, key, last, view.CUMULATIVE, 0.5)
    np.testing.assert_array_equal(image, overlay)
    assert "full T-Grad map" in caption


def test_caption_names_position_layer_grid_and_share(handlers, coffee):
    key = coffee[3]
    explanation = handlers.session.lookup(key)
    assert explanation.positions == 50  # input + 49 layer maps for Lite0
    _, caption, chart = layer_view(handlers, key, 10, view.ALONE, 0.5)
    term = explanation.spatial_terms[10]
    assert f"Position 10 / {explanation.positions - 1}" in caption
    # a student reads the block, the operation and the size; the module path is a tooltip
    title = "Block 4 · expand conv · 56 x 56"
    assert term.name == "_blocks.3._bn0" and f'<span title="{term.name}: ' in caption
    assert f">{title}</span>" in caption and "_bn0" not in caption.split(">", 1)[1]
    value = float(term.contribution[0])
    total = sum(abs(float(t.contribution[0])) for t in explanation.result.terms)
    assert f"{value:+.3g} logit units = {100 * value / total:+.1f}% of all terms" in caption
    assert f">{title}</span></b>" in chart and "S_t" not in caption


def test_chart_has_one_bar_per_term_and_one_highlight(handlers, coffee):
    key = coffee[3]
    explanation = handlers.session.lookup(key)
    chart = layer_view(handlers, key, 7, view.CUMULATIVE, 0.5)[2]
    terms = explanation.result.terms
    assert chart.count('class="tg-col"') == len(terms)
    assert chart.count("tg-cur") == 1 + 1  # the bar and its legend key
    non_spatial = sum(not t.spatial for t in terms)
    assert non_spatial >= 1
    assert chart.count("tg-bar tg-pos tg-ns") + chart.count("tg-bar tg-neg tg-ns") == non_spatial
    assert chart.count("<tr") == len(terms) + 1  # the accessible table, with its header
    assert 'aria-current="true"' in chart and 'role="img"' in chart
    # "everything up to here" fades the layers not yet included
    assert chart.count("tg-dim") == explanation.positions - 1 - 7 + 1  # + legend key


def test_show_layers_sizes_the_slider(handlers, coffee):
    slider, image, _, chart, summary, title = handlers.show_layers(coffee[3], 500, view.ALONE, 0.5)
    assert title == gr.update(label="T-Grad saliency for 967: espresso (efficientnet_lite0)")
    # the page's colour map is not /explain's: the overlay is redrawn in it
    jet = handlers.show_layers(coffee[3], 500, view.ALONE, 0.5, None, "jet")[5]
    np.testing.assert_array_equal(
        jet["value"], explain_draw.saliency_overlay(handlers.session.lookup(coffee[3]), 0.5, "jet")
    )
    grid = handlers.show_grid(coffee[3], None, None)
    assert slider["maximum"] == 49 and slider["value"] == 49 and slider["interactive"]
    assert image.shape == (448, 448, 3)
    # the paper's Fig. 2: one picture per slider position, captioned with its position
    assert len(grid) == 50 and [c.split(" · ")[0] for _, c in grid] == list(map(str, range(50)))
    assert re.fullmatch(r"4 · [+-]\d+\.\d%", grid[4][1])
    assert "967: espresso" in summary and "completeness gap" in summary
    assert chart.count("tg-cur") == 2  # the last layer's bar and the legend key


def test_slider_values_are_clamped(handlers, coffee):
    key = coffee[3]
    low = layer_view(handlers, key, -4, view.ALONE, 0.5)
    zero = layer_view(handlers, key, 0, view.ALONE, 0.5)
    np.testing.assert_array_equal(low[0], zero[0])
    high = layer_view(handlers, key, 3.0 + 1e3, view.ALONE, 0.5)
    assert "Position 49 / 49" in high[1]


def test_opacity(handlers, coffee):
    key = coffee[3]
    explanation = handlers.session.lookup(key)
    clear, _ = overlays(handlers, key, 0, view.ALONE, 0.0)
    np.testing.assert_array_equal(clear, explanation.backdrop)
    strong, layer = overlays(handlers, key, 0, view.ALONE, 1.0)
    assert mean_abs_diff(strong, explanation.backdrop) > 20
    assert layer.shape == strong.shape


def test_target_change_gives_another_logit(handlers, coffee):
    _, _, espresso, _ = coffee
    _, _, cup, key = handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, "968: cup", 0.5)
    assert cup["target"] == {"index": 968, "name": "cup"}
    assert cup["logit"] < espresso["logit"]  # espresso is the top-1
    assert_complete(cup)
    logits = handlers.session.lookup(key).result.logits[0]
    assert cup["logit"] == pytest.approx(float(logits[968]))
    assert espresso["logit"] == pytest.approx(float(logits[967]))
    # free text and plain indices work too (API clients)
    by_name = handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, "cup", 0.5)[2]
    assert by_name["logit"] == cup["logit"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TOP1, None),
        ("", None),
        (None, None),
        ("967: espresso", 967),
        ("967", 967),
        (967, 967),
        ("Espresso", 967),
        ("tabby", 281),
        ("ram", 348),  # the exact name, not the first name containing it (10: brambling)
        ("RAM", 348),
    ],
)
def test_parse_target(text, expected):
    assert parse_target(text, CATEGORIES) == expected


def test_unknown_target_is_a_readable_error(handlers):
    with pytest.raises(gr.Error, match="no class named 'qwertz'"):
        handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, "qwertz", 0.5)
    with pytest.raises(gr.Error, match="out of range"):
        handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, "1000", 0.5)


def test_exact_classes_pass_the_check(handlers):
    for text in ("", None, TOP1, "tabby", "ESPRESSO", "967", "968: cup"):
        assert handlers.check_target(DEFAULT_MODEL, text) is None


def test_the_default_model_comes_first():
    assert available_models()[0] == DEFAULT_MODEL


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat", "'cat' is part of 8 class names (143: oystercatcher, 282: tiger cat, "),
        (
            "espresso mak",
            "no class is named exactly 'espresso mak'; did you mean 550: espresso maker?",
        ),
    ],
)
def test_a_partial_class_name_lists_the_candidates_and_explains_nothing(handlers, text, message):
    computed = handlers.session.computed
    with pytest.raises(gr.Error, match=re.escape(message)):
        handlers.check_target(DEFAULT_MODEL, text)  # the page checks before explaining
    with pytest.raises(gr.Error, match=re.escape(message)):
        handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, text, 0.5)
    assert handlers.session.computed == computed


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_files_give_readable_errors(handlers, tmp_path):
    cases = [
        (text_as_jpg(tmp_path), r"not an image .*text/plain"),
        (truncated_jpeg(tmp_path), r"truncated or corrupt"),
        (huge_png(tmp_path), r"12000 x 12000 = 144,000,000 pixels, more than the limit"),
    ]
    for path, message in cases:
        with pytest.raises(gr.Error, match=message) as caught:
            handlers.explain(str(path), DEFAULT_MODEL, TOP1, 0.5)
        assert "Traceback" not in str(caught.value)
        assert str(tmp_path) not in str(caught.value)
    with pytest.raises(gr.Error, match=re.escape(UNUSABLE)):
        handlers.explain(str(tmp_path / "missing.jpg"), DEFAULT_MODEL, TOP1, 0.5)
    # and the next good request works
    assert handlers.explain(str(PHOTOS["chelsea"]))[2]["target"]["index"] in range(1000)


def test_large_upload_is_resized_not_refused(handlers, tmp_path):
    overlay, _, decomposition, _ = handlers.explain(str(large_photo(tmp_path)))
    assert overlay.shape == (448, 448, 3)
    assert_complete(decomposition)


def test_unavailable_model_is_refused_before_loading(handlers):
    with pytest.raises(gr.Error, match="The model must be one of: efficientnet_lite0"):
        handlers.explain(str(PHOTOS["coffee"]), "vgg16", TOP1, 0.5)
    assert handlers.session.models.names() == [DEFAULT_MODEL]


def test_gradio_file_payload(handlers, coffee):
    # what the events receive with preprocess=False
    payload = {"path": str(PHOTOS["coffee"]), "orig_name": "coffee.jpg", "meta": {}}
    assert handlers.explain(payload, DEFAULT_MODEL, TOP1, 0.5)[3] == coffee[3]
    with pytest.raises(gr.Error, match=re.escape(UNUSABLE)):
        handlers.explain({"url": "data:image/png;base64,AAAA"}, DEFAULT_MODEL, TOP1, 0.5)


def test_no_photo(handlers):
    with pytest.raises(gr.Error, match="upload a photo"):
        handlers.explain(None, DEFAULT_MODEL, TOP1, 0.5)
    assert NO_PHOTO.startswith("Please upload")
    skipped = handlers.explain_if_photo(None, DEFAULT_MODEL, "968: cup", 0.5)
    assert skipped == (gr.skip(),) * 4


@pytest.mark.parametrize("state", ["", None, "no-such-key"])
def test_empty_state(handlers, coffee, state):
    # nothing to show and nothing to recompute from: nothing changes
    assert layer_view(handlers, state, 3, view.ALONE, 0.5) == (gr.skip(),) * 3
    assert overlays(handlers, state, 3, view.ALONE, 0.5) == (gr.skip(),) * 2
    assert handlers.show_layers(state, 3, view.ALONE, 0.5) == (gr.skip(),) * 6
    assert handlers.show_grid(state) == gr.skip()
    # with the photo at hand (cached examples), the top-1 explanation is shown
    photo = str(PHOTOS["coffee"])
    image, caption, _ = layer_view(handlers, state, 3, view.ALONE, 0.5, photo)
    expected = layer_view(handlers, coffee[3], 3, view.ALONE, 0.5)[0]
    np.testing.assert_array_equal(image, expected)
    assert "Position 3" in caption


def test_evicted_state_is_recomputed_for_the_same_photo_only(tmp_path):
    session = Session(max_explanations=1)
    handlers = Handlers(session)
    photo = str(PHOTOS["coffee"])
    cup = handlers.explain(photo, DEFAULT_MODEL, "968: cup", 0.5)
    key = cup[3]
    handlers.explain(str(PHOTOS["rocket"]))  # evicts the cup
    assert session.lookup(key) is None
    # the page still shows the same photo: recomputed, with the cup as the target
    slider, _, _, _, summary, _ = handlers.show_layers(key, 0, view.ALONE, 0.5, photo)
    assert "968: cup" in summary and slider["maximum"] == 49
    assert session.lookup(key) is not None
    # a new photo was uploaded but not explained yet: nothing is redrawn
    handlers.explain(str(PHOTOS["rocket"]))
    skipped = layer_view(handlers, key, 2, view.ALONE, 0.5, str(PHOTOS["chelsea"]))
    assert skipped == (gr.skip(),) * 3


def test_explanations_are_cached_by_content(handlers, tmp_path):
    session = handlers.session
    handlers.explain(str(PHOTOS["rocket"]))
    before = session.computed
    copy = tmp_path / "another-name.jpg"
    shutil.copy(PHOTOS["rocket"], copy)
    start = time.perf_counter()
    handlers.explain(str(copy))
    assert session.computed == before  # same bytes, model and target: no recompute
    assert time.perf_counter() - start < 1.0


def test_explanation_cache_is_bounded(tmp_path):
    session = Session(max_explanations=2)
    handlers = Handlers(session)
    keys = [handlers.explain(str(PHOTOS[name]))[3] for name in ("coffee", "chelsea", "rocket")]
    assert len(session.explanations) == 2
    assert session.lookup(keys[0]) is None and session.lookup(keys[2]) is not None


def test_lru():
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert lru.keys() == ["a", "c"]
    with pytest.raises(ValueError):
        LRU(0)


class _FakeLoaded:
    def __init__(self, name: str) -> None:
        self.name = name
        self.module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))


def test_model_cache_is_bounded_and_loads_once():
    loads: list[str] = []

    def loader(name: str):
        loads.append(name)
        time.sleep(0.05)
        return _FakeLoaded(name)

    cache = ModelCache(capacity=2, loader=loader)
    threads = [threading.Thread(target=cache.get, args=("a",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["a"]  # four concurrent requests, one load
    cache.get("b")
    cache.get("c")
    assert cache.names() == ["b", "c"]  # at most two models in memory
    assert cache.get("a").loaded.name == "a" and loads == ["a", "b", "c", "a"]


def test_pick_target_from_the_top5():
    selection = gr.SelectData(None, {"index": 1, "value": "968: cup", "selected": True})
    assert Handlers.pick_target(selection) == "968: cup"
    marked = gr.SelectData(None, {"index": 0, "value": "967: espresso ← explained"})
    assert Handlers.pick_target(marked) == "967: espresso"


def test_the_public_endpoints():
    from explorer.ui import build_demo

    demo = build_demo(Session())
    config = demo.get_config_file()
    public = [d["api_name"] for d in config["dependencies"] if d.get("api_visibility") == "public"]
    assert public == ["explain", "compare", "evaluate", "sanity"]
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {
        "input-image",
        "explain-btn",
        "overlay",
        "layer-slider",
        "layer-image",
        "layer-mode",
        "decomposition-chart",
        "top5",
        "target",
        "model",
        "opacity",
    } <= ids
    formats = {c["props"].get("format") for c in config["components"] if c["type"] == "image"}
    assert formats == {"png"}


def test_shares_stay_meaningful_for_a_negative_logit(handlers):
    # the espresso photo explained as oystercatcher: a negative logit, where shares "of the
    # logit" flip sign and exceed 1000 %; shares of the terms' total size stay in [-1, 1]
    _, _, decomposition, key = handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, "143", 0.5)
    assert decomposition["logit"] < 0
    assert all(-1 <= row["share"] <= 1 for row in decomposition["terms"])
    for position in range(0, 50, 7):
        caption = layer_view(handlers, key, position, view.ALONE, 0.5)[1]
        assert "of the logit" not in caption
        percent = float(caption.split(" = ")[1].split("%")[0])
        assert -100 <= percent <= 100


def test_a_term_lowering_the_logit_has_the_right_caption_in_each_mode(handlers, coffee):
    key = coffee[3]
    explanation = handlers.session.lookup(key)
    lowering = next(
        i for i, t in enumerate(explanation.spatial_terms) if float(t.contribution[0]) < 0
    )
    alone = layer_view(handlers, key, lowering, view.ALONE, 0.5)[1]
    upto = layer_view(handlers, key, lowering, view.CUMULATIVE, 0.5)[1]
    assert "adds nothing to the T-Grad map" in alone
    assert "adds nothing" not in upto and "same as at the previous position" in upto
    # and it is true: the running total does not change at that position
    previous = explanation.layer_map(lowering - 1, cumulative=True)
    torch.testing.assert_close(explanation.layer_map(lowering, cumulative=True), previous)


def test_the_zero_label_sits_on_the_zero_line(handlers, coffee):
    chart = layer_view(handlers, coffee[3], 3, view.ALONE, 0.5)[2]
    line = re.search(r'class="tg-zero" style="bottom:([0-9.]+)%"', chart).group(1)
    label = re.search(r'class="tg-zero-label" style="bottom:([0-9.]+)%"', chart).group(1)
    assert label == line and 0 < float(line) < 100  # Lite0's espresso has terms of both signs


def test_a_few_extreme_pixels_do_not_wash_out_the_overlay():
    # 99.8 % of the map is a ramp from 0 to 1, two pixels are 1000 times larger: min-max
    # scaling would draw the whole ramp in the lowest colour; the page's scale spreads it
    photo = np.full((50, 50, 3), 128, np.uint8)
    ramp = torch.linspace(0, 1, 2500).reshape(50, 50)
    ramp[0, 0] = ramp[0, 1] = 1000.0
    shown = draw.map_overlay(photo, ramp, 1.0)
    low, middle = shown[10, 10].astype(int), shown[40, 40].astype(int)  # ramp 0.2 and 0.8
    assert np.abs(low - middle).sum() > 150  # clearly different colours
    minmax = viz.overlay(photo, ramp, 1.0)
    assert np.abs(minmax[10, 10].astype(int) - minmax[40, 40].astype(int)).sum() < 10
