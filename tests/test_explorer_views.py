"""The Explain tab's classroom extras, called directly: the colour maps, the layer grid
and jumping to a layer, the link to a view (made, read back, and read from hostile
links), and the figures zip (checked against the numbers it claims to hold)."""

from __future__ import annotations

import io
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from explorer import draw, share
from explorer.chart import CHART_JS, chart_html
from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from explorer.tabs import explain_draw
from explorer.uploads import PhotoGate
from explorer.view import ALONE, CUMULATIVE
from tests.explorer_files import PHOTOS, Request
from tgrad import viz
from tgrad.models import DEFAULT_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> Handlers:
    gate = PhotoGate([tmp_path_factory.getbasetemp()], BUNDLED_PHOTOS)
    return Handlers(Session(), [DEFAULT_MODEL], gate=gate)


@pytest.fixture(scope="module")
def coffee(handlers) -> str:
    """The cache key of the espresso photo, explained as its top-1 class (967)."""
    return handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, None, 0.5)[3]


def select(index: object) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": None})


# --------------------------------------------------------------------------- colour maps


def test_the_colour_map_changes_every_picture_and_says_which_it_is(handlers, coffee):
    bar, scale, overlay, layer, grid = handlers.render_colours(coffee, 5, ALONE, 1.0, None, "jet")
    assert "jet (as in the paper)" in scale and "99th percentile" in scale
    np.testing.assert_array_equal(bar, viz.colorbar_pixels("jet"))
    default = handlers.render_colours(coffee, 5, ALONE, 1.0, None, None)
    assert "viridis (perceptually uniform)" in default[1]
    # at opacity 1 the overlay is the colour map itself: every picture changes with it
    for jet, viridis in zip((overlay, layer), default[2:4], strict=True):
        assert np.abs(jet.astype(int) - viridis.astype(int)).mean() > 20
    # and the pixels are the colour map's: the hottest pixel of the layer view is the
    # top colour of that map (robust scaling sends the top 1 % to exactly 1)
    top = {name: viz.colorize_unit(viz.robust_normalize(_one()), name)[0, 0] for name in viz.CMAPS}
    assert (layer.reshape(-1, 3) == top["jet"]).all(axis=1).any()
    assert (default[3].reshape(-1, 3) == top["viridis"]).all(axis=1).any()
    assert len(grid) == len(default[4]) == 50
    # the other views follow the colour map they are given
    assert np.array_equal(handlers.show_layers(coffee, 5, ALONE, 1.0, None, "jet")[1], layer)
    saliency = handlers.show_layers(coffee, 5, ALONE, 1.0, None, "jet")[5]["value"]
    assert np.array_equal(saliency, overlay)


def _one():
    import torch

    return torch.ones(1, 1)


@pytest.mark.parametrize("hostile", ["hot", "<b>jet</b>", 3, ["jet"], "j" * 10_000])
def test_an_unknown_colour_map_is_refused_by_name(handlers, coffee, hostile):
    with pytest.raises(gr.Error, match=r"The colour map must be one of: viridis, jet\."):
        handlers.render_colours(coffee, 0, ALONE, 0.5, None, hostile)


# ------------------------------------------------------------------ the grid and jumping


def test_the_grid_is_figure_2_in_slider_order(handlers, coffee):
    explanation = handlers.session.lookup(coffee)
    grid = explain_draw.layer_gallery(explanation)
    assert len(grid) == explanation.positions
    for position in (0, 4, 30, 49):
        picture, caption = grid[position]
        assert caption.split(" · ")[0] == str(position)
        assert picture.shape == (explain_draw.GALLERY_SIZE, explain_draw.GALLERY_SIZE, 3)
        # the picture is that position's own map (the slider's "alone" view), small
        small = draw.map_overlay(
            np.asarray(Image.fromarray(explanation.pixels).resize((112, 112), Image.BILINEAR)),
            explanation.layer_map(position, cumulative=False),
            0.6,
        )
        np.testing.assert_array_equal(picture, small)
    explanation = handlers.session.lookup(coffee)
    share = (
        100
        * float(explanation.spatial_terms[0].contribution[0])
        / viz.total_size(explanation.result)
    )
    assert grid[0][1] == f"0 · {share:+.1f}%"


def test_a_click_on_the_grid_or_a_bar_moves_the_slider_there(handlers, coffee):
    assert handlers.jump(coffee, select(7)) == 7
    assert handlers.jump(coffee, select([12])) == 12
    assert handlers.jump(coffee, select(10_000)) == 49  # clamped to the last position
    assert handlers.jump(coffee, select(-3)) == 0
    assert handlers.jump("", select(7)) == gr.skip()  # nothing explained: nothing moves
    for hostile in ("seven", float("nan"), "9" * 5000, True, {"a": 1}):
        with pytest.raises(gr.Error, match="The layer position must be a number"):
            handlers.jump(coffee, select(hostile))


def test_every_bar_with_a_map_carries_its_slider_position(handlers, coffee):
    explanation = handlers.session.lookup(coffee)
    chart = chart_html(explanation, 3, ALONE)
    assert chart.count("data-pos=") == explanation.positions  # the classifier bias: none
    assert 'data-pos="0"' in chart and f'data-pos="{explanation.positions - 1}"' in chart
    assert "trigger('select'" in CHART_JS


# ------------------------------------------------------------------------------ the link


def test_a_link_names_the_view_and_reads_back_to_it(handlers, coffee):
    query = handlers.view_link(coffee, 20, CUMULATIVE, "jet")
    assert (
        query == f"?photo=coffee&model={DEFAULT_MODEL}&class=967&layer=20&mode=cumulative&cmap=jet"
    )
    params = dict(pair.split("=") for pair in query[1:].split("&"))
    view, ignored = share.parse_query(params, list(handlers_photos()), [DEFAULT_MODEL], 1000)
    assert ignored == []
    assert view == share.LinkedView("coffee", DEFAULT_MODEL, "967", 20, CUMULATIVE, "jet")
    # the page applies it: the bundled photo, the class, the position, the mode, the map
    photo, model, target, layer, mode, cmap = handlers.open_link(Request("a", params))
    assert Path(photo) == PHOTOS["coffee"] and (model, target, layer) == (DEFAULT_MODEL, "967", 20)
    assert (mode, cmap) == (CUMULATIVE, "jet")
    assert handlers.view_link("", 3, ALONE) == gr.skip()  # nothing explained yet


def handlers_photos() -> list[str]:
    return [path.stem for path in BUNDLED_PHOTOS]


def test_a_link_made_from_an_uploaded_photo_says_to_upload_it_again(handlers, tmp_path):
    upload = tmp_path / "mine.png"
    Image.open(PHOTOS["chelsea"]).save(upload)  # not the bytes of a bundled photo
    key = handlers.explain(str(upload), DEFAULT_MODEL, None, 0.5)[3]
    query = handlers.view_link(key, 0, ALONE, None)
    assert query.startswith(f"?photo=upload&model={DEFAULT_MODEL}&class=")
    assert handlers.link_note(key) == share.LINK_WITHOUT_PHOTO  # beside the link
    # whoever opens it is told to upload the photo again; the rest of the view applies
    params = dict(pair.split("=") for pair in query[1:].split("&"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        photo, model, *_ = handlers.open_link(Request("a", params))
    assert [str(w.message) for w in caught] == [share.UPLOAD_AGAIN]
    assert photo == gr.skip() and model == DEFAULT_MODEL
    # the bundled photo's own bytes, uploaded, are that photo
    copy = tmp_path / "copy.jpg"
    shutil.copy(PHOTOS["chelsea"], copy)
    key = handlers.explain(str(copy), DEFAULT_MODEL, None, 0.5)[3]
    assert handlers.view_link(key, 0, ALONE, None).startswith("?photo=chelsea&")
    assert handlers.link_note(key) == "" and handlers.link_note("") == ""


HOSTILE_LINKS = {
    "photo": ["../../etc/passwd", "/etc/hostname", "coffee.jpg", "COFFEE", "x" * 10_000],
    "model": ["vgg16", "../efficientnet_lite0", "efficientnet_lite0 "],
    "class": ["1000", "-1", "²", "٣", "1e3", "9" * 5000, "espresso", " 967"],
    "layer": ["-1", "1e9", "nan", "4.5", "9" * 100],
    "mode": ["everything up to here", "ALONE", "<script>"],
    "cmap": ["hot", "<b>jet</b>", "viridis; drop"],
}


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, values in HOSTILE_LINKS.items() for v in values]
)
def test_a_hostile_link_is_named_and_ignored(handlers, name, value):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        applied = handlers.open_link(Request("a", {name: value, "utm_source": "x"}))
    assert applied == (gr.skip(),) * 6  # nothing applied, not even a part
    messages = [str(w.message) for w in caught]
    assert messages == [f"This link's {name} could not be used and was ignored."]


def test_a_link_applies_what_it_can(handlers):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        applied = handlers.open_link(Request("a", {"photo": "rocket", "class": "x", "layer": "y"}))
    assert Path(applied[0]) == PHOTOS["rocket"] and applied[1:] == (gr.skip(),) * 5
    assert [str(w.message) for w in caught] == [
        "This link's class, layer could not be used and were ignored."
    ]
    assert handlers.open_link(Request("a", {})) == (gr.skip(),) * 6  # a plain page load
    assert handlers.open_link(None) == (gr.skip(),) * 6


# --------------------------------------------------------------------------- the figures


def test_the_figures_zip_holds_the_view_and_its_numbers(handlers, coffee):
    path = Path(handlers.figures(coffee, 20, CUMULATIVE, 0.7, None, "jet"))
    assert path.parent == share_folder() and path.name.startswith(
        f"t-grad-{DEFAULT_MODEL}-class967-position20-"
    )
    explanation = handlers.session.lookup(coffee)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == [
            "chart.png",
            "colorbar.png",
            "layer.png",
            "layers.png",
            "numbers.json",
            "overlay.png",
        ]
        picture = lambda name: np.asarray(Image.open(io.BytesIO(archive.read(name))))  # noqa: E731
        numbers = json.loads(archive.read("numbers.json"))
        # the pictures are the page's, pixel for pixel
        np.testing.assert_array_equal(
            picture("overlay.png"), explain_draw.saliency_overlay(explanation, 0.7, "jet")
        )
        np.testing.assert_array_equal(
            picture("layer.png"),
            explain_draw.layer_overlay(explanation, 20, CUMULATIVE, 0.7, "jet"),
        )
        np.testing.assert_array_equal(picture("colorbar.png"), viz.colorbar_pixels("jet"))
        # the grid: eight maps a row, 6 px apart, then the colour bar of the view
        grid = picture("layers.png")
        bar = viz.colorbar_pixels("jet")
        assert grid.shape[1] == 8 * explain_draw.FIGURE_SIZE + 7 * 6
        np.testing.assert_array_equal(grid[-bar.shape[0] :, : bar.shape[1]], bar)
        np.testing.assert_array_equal(
            grid[: -bar.shape[0] - 6],
            explain_draw.layer_figure(explanation, "jet")[: -bar.shape[0] - 6],
        )
        assert picture("chart.png").shape[2] in (3, 4)
    # the numbers add up to the logit (completeness), and name the view
    total = sum(row["contribution"] for row in numbers["terms"])
    assert abs(total + numbers["gap"] - numbers["logit"]) <= 1e-5 * max(1, abs(numbers["logit"]))
    assert numbers["target"] == {"index": 967, "name": "espresso"}
    assert numbers["view"]["position"] == 20 and numbers["view"]["colour_map"] == "jet"
    assert numbers["terms"][4]["title"] == "Block 2 · expand conv · 112 x 112"
    assert numbers["view"]["term"] == explanation.spatial_terms[20].name


def test_the_figures_are_titled_as_the_page_titles_them(handlers, coffee, monkeypatch):
    """The grid's maps and the chart's bars carry the page's readable layer names (not
    module paths), the chart highlights the view's position and has a legend."""
    drawn: dict[str, object] = {}
    grid, chart = viz.panel_grid, viz.decomposition_chart
    monkeypatch.setattr(
        viz,
        "panel_grid",
        lambda panels, **kw: (
            drawn.setdefault("titles", [t for _, t in panels]) and grid(panels, **kw)
        ),
    )
    monkeypatch.setattr(
        viz,
        "decomposition_chart",
        lambda *a, **kw: drawn.setdefault("chart", (a, kw)) and chart(*a, **kw),
    )
    handlers.figures(coffee, 20, ALONE, 0.5, None, None)
    explanation = handlers.session.lookup(coffee)
    titles = drawn["titles"]
    assert len(titles) == explanation.positions
    assert titles[4].startswith("4 · Block 2 · expand conv\n112 x 112 · ")
    _, options = drawn["chart"]
    assert options["names"] == [explanation.title(i) for i in range(len(explanation.result.terms))]
    assert options["highlight"] == explanation.spatial_terms[20].name


def share_folder() -> Path:
    from explorer.tabs.explain_events import FIGURES_DIR

    return FIGURES_DIR


def test_figures_need_an_explanation(handlers):
    with pytest.raises(gr.Error, match="Explain a photo first"):
        handlers.figures("", 0, ALONE, 0.5, None, None)


# ------------------------------------------------------------------ the fast PNG writers


def test_fast_pictures_are_lossless():
    from explorer.widgets import fast_png

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)  # incompressible: any loss shows
    data = fast_png(gr.Image(format="png")).postprocess(noise)
    np.testing.assert_array_equal(np.asarray(Image.open(data.path)), noise)
    gallery = fast_png(gr.Gallery(format="png"))
    out = gallery.postprocess([(noise, "0 · +1.0%"), (noise[::-1].copy(), "1 · -2.0%")])
    pictures = [np.asarray(Image.open(item.image.path)) for item in out.root]
    np.testing.assert_array_equal(pictures[0], noise)
    np.testing.assert_array_equal(pictures[1], noise[::-1])
    assert [item.caption for item in out.root] == ["0 · +1.0%", "1 · -2.0%"]


def test_the_display_scale_comes_from_the_environment_when_it_is_sensible(monkeypatch):
    from explorer.session import DISPLAY_SCALE, display_scale

    for value, expected in (
        ("1", 1),
        ("3", 3),
        ("", DISPLAY_SCALE),
        ("9", DISPLAY_SCALE),
        ("1.5", DISPLAY_SCALE),
        ("²", DISPLAY_SCALE),
        ("-1", DISPLAY_SCALE),
    ):
        monkeypatch.setenv("EXPLORER_DISPLAY_SCALE", value)
        assert display_scale() == expected, value
    small = Session(display=1).explain(PHOTOS["coffee"].read_bytes())
    assert small.backdrop.shape == (224, 224, 3)
    np.testing.assert_array_equal(small.backdrop, small.pixels)  # the model's own input
