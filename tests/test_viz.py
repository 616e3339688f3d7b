"""Pictures: overlays blend exactly, labels and charts carry the numbers."""

import numpy as np
import pytest
import torch

from tgrad import viz


def test_overlay_blends_image_and_colour_map():
    image = torch.full((3, 4, 4), 0.5)
    saliency = torch.arange(16.0).reshape(4, 4)
    assert np.array_equal(viz.overlay(image, saliency, alpha=0.0), np.full((4, 4, 3), 128))
    assert np.array_equal(viz.overlay(image, saliency, alpha=1.0), viz.colorize(saliency))
    half = viz.overlay(image, saliency, alpha=0.5).astype(int)
    expected = (0.5 * 128 + 0.5 * viz.colorize(saliency).astype(float)).round()
    assert np.abs(half - expected).max() <= 1


def test_overlay_upsamples_small_maps_and_normalize_handles_constants():
    image = np.zeros((8, 6, 3), np.uint8)
    assert viz.overlay(image, torch.rand(2, 3)).shape == (8, 6, 3)
    assert torch.equal(viz.normalize(torch.ones(3, 3)), torch.zeros(3, 3))
    assert viz.normalize(torch.tensor([[2.0, 4.0]])).tolist() == [[0.0, 1.0]]
    # the paper's jet: low is dark blue, high is dark red
    colours = viz.colorize(torch.tensor([[0.0, 1.0]]), viz.PAPER_CMAP)
    assert colours[0, 0, 2] > 100 and colours[0, 0, 0] == 0
    assert colours[0, 1, 0] > 100 and colours[0, 1, 2] == 0


def _lightness(cmap: str) -> np.ndarray:
    """Relative luminance (Rec. 709 on linearised sRGB) along a colour map, 256 steps
    (of the colour map's own float colours: rounding to uint8 wobbles by 1/255)."""
    import matplotlib

    rgb = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def test_default_colour_map_gets_lighter_all_the_way_and_jet_does_not():
    """Why the default is not jet: a map that grows should look like it grows. Along
    viridis, luminance rises at every step (so brighter always means more saliency, also
    in grey); along jet it rises to cyan-yellow and falls again to dark red."""
    assert viz.DEFAULT_CMAP != viz.PAPER_CMAP and set(viz.CMAPS) == {"viridis", "jet"}
    default = np.diff(_lightness(viz.DEFAULT_CMAP))
    assert (default > 0).all()
    jet = _lightness(viz.PAPER_CMAP)
    assert jet.argmax() not in (0, 255) and jet[-1] < 0.5 * jet.max()


def test_colour_bar_names_its_colour_map():
    for cmap in viz.CMAPS:
        bar = viz.colorbar(cmap)
        assert f"colour map: {cmap}" in bar.axes[0].get_xlabel()
        pixels = viz.colorbar_pixels(cmap)
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert not np.array_equal(viz.colorbar_pixels("viridis"), viz.colorbar_pixels("jet"))


@pytest.fixture(scope="module")
def result():
    from tests.nets import small_cnn
    from tgrad.tgrad import TGrad

    return TGrad(small_cnn())(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_share_label_and_chart(result):
    label = viz.share_label(result, 1)
    term = result.terms[1]
    total = sum(abs(float(t.contribution[0])) for t in result.terms)
    share = 100 * float(term.contribution[0]) / total  # of all terms' sizes, not the logit
    assert label.startswith("conv1 (Conv2d, 16x16): ")
    assert label.endswith(f"{share:+.1f}% of all terms")
    assert viz.total_size(result) == pytest.approx(total)
    assert viz.share_text(1.0, 0.0) == "all terms are 0"
    fig = viz.decomposition_chart(result, highlight="conv1")
    bars = fig.axes[0].patches
    assert len(bars) == len(result.terms)
    assert sum(b.get_height() for b in bars) == pytest.approx(float(result.logit[0]), abs=1e-4)
    assert bars[1].get_facecolor()[:3] == pytest.approx((1.0, 0.498, 0.055), abs=1e-2)  # orange


def test_layer_strip_has_a_panel_per_layer_and_the_aggregate(result, tmp_path):
    fig = viz.layer_strip(result, torch.rand(3, 16, 16))
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titled) == len(result.spatial_terms) + 1
    assert titled[-1] == "T-Grad (all layers)"
    fig.savefig(tmp_path / "strip.png")


def test_robust_normalize_is_not_washed_out_by_one_pixel():
    # 99 pixels at 1..99 and one outlier at 1e6: min-max scaling puts every ordinary
    # pixel below 1e-4; the 99th percentile of 100 values (linear interpolation) is
    # 99 + 0.01 * (1e6 - 99), so pixel v maps to v / that.
    values = torch.cat([torch.arange(1.0, 100.0), torch.tensor([1e6])]).reshape(10, 10)
    q = 99 + 0.01 * (1e6 - 99)
    scaled = viz.robust_normalize(values)
    assert float(viz.normalize(values)[0, 0]) < 1e-4
    torch.testing.assert_close(scaled[0, :5], torch.arange(1.0, 6.0) / q)
    assert float(scaled[9, 9]) == 1.0 and float(scaled.max()) == 1.0
    # a batch of maps is scaled map by map; negatives clip to 0; an all-zero map stays 0
    batch = torch.stack([values, -values, torch.zeros(10, 10)])
    out = viz.robust_normalize(batch)
    torch.testing.assert_close(out[0], scaled)
    assert float(out[1].abs().max()) == 0.0 and float(out[2].abs().max()) == 0.0


def test_colorize_unit_and_blend():
    unit = torch.tensor([[0.0, 1.0, 2.0]])  # 2 clips to 1
    colours = viz.colorize_unit(unit)
    assert np.array_equal(colours[0, 1], colours[0, 2])
    assert np.array_equal(colours, viz.colorize(torch.tensor([[0.0, 1.0, 1.0]])))
    image = np.full((1, 3, 3), 100, np.uint8)
    assert np.array_equal(viz.blend(image, colours, 0.0), image)
    assert np.array_equal(viz.blend(image, colours, 1.0), colours)


def test_panel_grid_places_every_panel_under_its_title():
    panels = [(np.full((20, 30, 3), 40 * i, np.uint8), f"panel {i}") for i in range(5)]
    grid = viz.panel_grid(panels, columns=3, title_height=12, gap=4)
    assert grid.shape == (2 * (20 + 12 + 4) - 4, 3 * (30 + 4) - 4, 3)
    for i, (picture, _) in enumerate(panels):
        top, left = (i // 3) * 36 + 12, (i % 3) * 34
        assert np.array_equal(grid[top : top + 20, left : left + 30], picture), i
    assert (grid[:12, :30] < 128).any()  # the title is drawn (black text on white)
    assert (grid[36 + 12 :, 2 * 34 :] == 255).all()  # the sixth cell is empty: white
    with pytest.raises(ValueError, match="not"):
        viz.panel_grid([panels[0], (np.zeros((5, 5, 3), np.uint8), "small")])


@pytest.mark.parametrize("cmap", ["viridis", "jet"])
def test_colorize_unit_gives_matplotlibs_colours_exactly(cmap):
    import matplotlib

    values = torch.cat(
        [
            torch.rand(10_000, generator=torch.Generator().manual_seed(0)),
            torch.tensor([0.0, 1.0, 1 - 1e-7, 0.5, 1 / 256, 255 / 256]),
        ]
    )[None]
    expected = (matplotlib.colormaps[cmap](values.numpy())[..., :3] * 255).round()
    np.testing.assert_array_equal(viz.colorize_unit(values, cmap), expected.astype(np.uint8))


def texts_outside(fig) -> list[str]:
    """The texts of a figure (titles, labels, tick labels, legend) that are drawn past
    its edges (clipped in the PNG), after laying it out as it is saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    outside = []
    for text in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if not text.get_visible() or not text.get_text():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            outside.append(text.get_text())
    return outside


def test_the_sanity_curves_speak_the_pages_language_and_nothing_is_clipped():
    ticks = ["original", *(f"{i}: Block {20 - i}" for i in range(1, 19)), "19: Stem · conv"]
    curves = {"spearman_abs": {"T-Grad": [1.0, 0.5, 0.2], "Guided Backprop": [1.0, 0.9, 0.9]}}
    fig = viz.sanity_curves(ticks, curves)
    ax = fig.axes[0]
    assert ax.get_title() == "Spearman rank correlation of |map|"  # not spearman_abs
    assert [t.get_text() for t in ax.get_xticklabels()] == ticks
    assert texts_outside(fig) == []  # the y label was cut at both ends
    several = viz.sanity_curves(ticks[:3], {m: curves["spearman_abs"] for m in viz.MEASURE_TITLES})
    assert [a.get_title() for a in several.axes] == list(viz.MEASURE_TITLES.values())


def test_the_chart_of_the_figures_names_the_layers_and_has_a_legend(result):
    names = [f"Readable {i}" for i in range(len(result.terms))]
    fig = viz.decomposition_chart(result, highlight="conv1", names=names)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "raises the logit",
        "lowers it",
        "classifier bias (no map)",
        "current position",
    ]
    assert texts_outside(fig) == []
    with pytest.raises(ValueError, match="names for"):
        viz.decomposition_chart(result, names=names[:2])


def test_a_sanity_grid_wraps_into_bands_of_ten_steps():
    steps = [torch.rand(8, 8) for _ in range(13)]
    groups = ["original", *(f"g{i}" for i in range(1, 13))]
    grid = viz.sanity_grid(groups, {"A": steps, "B": steps[:5]}, size=20)
    cell = 20 + viz.SANITY_TITLE + 3
    assert grid.shape == (2 * 2 * cell - 3, viz.SANITY_COLUMNS * 23 - 3, 3)
    # the second band: steps 10..12 of each method, then white (no step 13)
    assert (
        grid[2 * cell + viz.SANITY_TITLE : 2 * cell + viz.SANITY_TITLE + 20, 3 * 23 :] == 255
    ).all()


def test_multi_line_panel_titles_and_a_colour_bar_under_a_figure():
    panels = [(np.full((30, 40, 3), 90, np.uint8), "one\ntwo")]
    grid = viz.panel_grid(panels, title_height=30)
    assert (grid[:15] < 128).any() and (grid[15:30] < 128).any()  # a line in each half
    framed = viz.with_colorbar(grid, "jet")
    bar = viz.colorbar_pixels("jet")
    assert np.array_equal(framed[-bar.shape[0] :, : bar.shape[1]], bar)
    assert np.array_equal(framed[: grid.shape[0], : grid.shape[1]], grid)
