"""The drawing data of the layer view drawn in the browser (:mod:`explorer.canvas`),
checked with numbers: the codes against the maps they stand for, the running sums
against formula 8 computed term by term, the scales against the server's scaling, the
size against the grids, the server's pictures rebuilt from the data alone, and hostile
requests for it. The browser's own drawing is checked in test_explorer_canvas_e2e.py."""

from __future__ import annotations

import base64
import json
import math
import re

import gradio as gr
import numpy as np
import pytest
import torch

from explorer import canvas, chart, view
from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from explorer.tabs import explain_draw
from explorer.uploads import UNUSABLE, PhotoGate
from tests.explorer_files import PHOTOS
from tgrad import viz
from tgrad.models import DEFAULT_MODEL
from tgrad.tgrad import upsample

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> Handlers:
    gate = PhotoGate([tmp_path_factory.getbasetemp()], BUNDLED_PHOTOS)
    return Handlers(Session(display=2), [DEFAULT_MODEL], gate=gate)


@pytest.fixture(scope="module")
def explanation(handlers):
    key = handlers.explain(str(PHOTOS["coffee"]), DEFAULT_MODEL, None, 0.5)[3]
    return handlers.session.lookup(key)


@pytest.fixture(scope="module")
def data(handlers, explanation) -> dict:
    return json.loads(handlers.canvas_data(explanation.key, None))


def decoded(entry: dict) -> torch.Tensor:
    """What the browser decodes from one map entry, float64 [h,w]."""
    codes = np.frombuffer(base64.b64decode(entry["codes"]), np.uint8).reshape(entry["grid"])
    return torch.from_numpy(codes.astype(np.float64) * (entry["top"] / canvas.CODES))


def browser_unit(data: dict, position: int, cumulative: bool) -> torch.Tensor:
    """The browser's arithmetic (canvas.js's unitMap) in torch: the view at ``position``
    in units of its robust scale, clipped to [0, 1], at the backdrop's size."""
    size = tuple(data["size"])
    if not cumulative:
        return upsample(decoded(data["alone"][position])[None], size)[0].clamp(0, 1)
    latest = {}
    for k in range(position + 1):  # each grid's partial sum at the last position <= k
        latest[tuple(data["partials"][k]["grid"])] = decoded(data["partials"][k])
    grid = tuple(data["input"])
    total = sum(upsample(partial[None], grid)[0] for partial in latest.values())
    scale = data["scale"][position]
    full = upsample(total[None], size)[0]
    return (full / scale if scale > 0 else full * 0).clamp(0, 1)


def test_codes_are_the_maps_in_units_of_their_robust_scale(explanation, data):
    size = tuple(explanation.backdrop.shape[:2])
    assert data["size"] == list(size) and len(data["alone"]) == explanation.positions == 50
    for term, entry in zip(explanation.spatial_terms, data["alone"], strict=True):
        cells = term.map[0].double()
        assert entry["grid"] == list(term.grid)
        upsampled = upsample(cells.float()[None], size)[0].clamp(min=0).flatten()
        q = float(torch.quantile(upsampled, viz.ROBUST_PERCENTILE / 100.0))  # the oracle
        relative = cells.clamp(min=0) / q
        top = entry["top"]
        assert top == pytest.approx(min(float(relative.max()), canvas.HEADROOM), rel=1e-5)
        # round to nearest: each code within half a step (top / 255) of the value it stands
        # for, plus the float32 rounding of the scale (relative 1e-5 of values up to top)
        error = (decoded(entry) - relative.clamp(max=top)).abs().max()
        assert error <= top / (2 * canvas.CODES) + 1e-5 * top
        assert error > 0  # real quantisation: the bound is not met by sending floats


def test_the_robust_scale_is_the_one_the_server_divides_by(explanation):
    size = tuple(explanation.backdrop.shape[:2])
    for position in (0, 7, 49):
        for cumulative in (False, True):
            layer = explanation.layer_map(position, cumulative)
            q = canvas.robust_scale(layer, size)
            upsampled = upsample(layer.float()[None], size)[0]
            expected = viz.robust_normalize(upsampled)
            torch.testing.assert_close(
                (upsampled.clamp(min=0) / q).clamp(max=1), expected, rtol=1e-5, atol=1e-6
            )
    # selection instead of sorting gives torch.quantile's value, ties and all
    torch.manual_seed(0)
    for values in (
        torch.rand(9, 9) ** 4,
        torch.zeros(5, 5),
        torch.tensor([[0.0, 1.0]]).repeat(3, 3),
    ):
        upsampled = upsample(values[None], (30, 30))[0].flatten()
        assert canvas.robust_scale(values, (30, 30)) == pytest.approx(
            float(torch.quantile(upsampled, 0.99)), rel=1e-6, abs=1e-12
        )


def plain_formula_8(explanation, upto: int) -> torch.Tensor:
    """T-Grad from the first ``upto + 1`` spatial terms, one full-size map per term:
    ``sum_t score_t * U(S_t) / sum(U(S_t))`` (SPEC formula 8, no grouping by grid)."""
    size = tuple(explanation.result.saliency.shape[-2:])
    total = torch.zeros(size, dtype=torch.float64)
    for term in explanation.spatial_terms[: upto + 1]:
        full = upsample(term.map[0].double()[None], size)[0]
        mass = float(full.sum())
        if mass > 0:
            total += float(term.score[0]) * full / mass
    return total


def test_running_sums_are_formula_8_term_by_term(explanation, data):
    size = tuple(explanation.result.saliency.shape[-2:])
    assert data["input"] == list(size)
    partials = canvas.grid_partials(explanation)
    for position in range(explanation.positions):
        expected = plain_formula_8(explanation, position)
        latest = {}
        for k in range(position + 1):
            latest[tuple(partials[k].shape)] = partials[k]
        exact = sum(upsample(p[None], size)[0] for p in latest.values())
        torch.testing.assert_close(exact, expected, rtol=1e-5, atol=1e-9)
        # and what the page decodes: each partial within half a step of its codes, and
        # bilinear upsampling is a convex combination, so the sum is within the sum of
        # the half steps of the grids it adds
        sent = {}
        for k in range(position + 1):
            sent[tuple(data["partials"][k]["grid"])] = data["partials"][k]
        bound = sum(entry["top"] / (2 * canvas.CODES) for entry in sent.values())
        page = sum(upsample(decoded(e)[None], size)[0] for e in sent.values())
        assert (page - expected).abs().max() <= bound * (1 + 1e-5) + 1e-9
    # the last running sum is the T-Grad saliency itself
    torch.testing.assert_close(
        plain_formula_8(explanation, explanation.positions - 1),
        explanation.result.saliency[0].double(),
        rtol=1e-5,
        atol=1e-9,
    )
    scales = [
        canvas.robust_scale(explanation.layer_map(k, True), tuple(data["size"]))
        for k in range(explanation.positions)
    ]
    assert data["scale"] == pytest.approx(scales, rel=1e-9)


def test_the_payload_size_follows_from_the_grids(explanation, data):
    text = canvas.payload_json(explanation)
    cells = [h * w for h, w in (t.grid for t in explanation.spatial_terms)]
    base64_of = [4 * math.ceil(n / 3) for n in cells]  # base64 of n bytes
    assert [len(e["codes"]) for e in data["alone"]] == base64_of
    assert [len(e["codes"]) for e in data["partials"]] == base64_of
    maps = 2 * sum(base64_of)
    height, width = data["size"]
    # a PNG holds H rows of 3W bytes plus a filter byte; deflate at worst stores them
    # (5 bytes per 65535), plus the PNG's chunks (under 100 bytes) and the data URL prefix
    raw = height * (3 * width + 1)
    photo = 4 * math.ceil((raw + 5 * math.ceil(raw / 65535) + 100) / 3) + 22
    assert len(data["photo"]) <= photo
    words = sum(len(json.dumps(c)) for c in data["captions"].values())
    words += len(json.dumps(data["chart"]))
    tables = len(viz.CMAPS) * 4 * 256  # 768 bytes of RGB each, in base64
    numbers = 40 * 3 * explanation.positions  # a scale, a top and a grid per map
    assert len(text) <= maps + photo + words + tables + numbers + 1000
    # for Lite0 the maps are 128 135 cells: the maps sent twice are 342 KB
    assert sum(cells) == 128_135 and maps < 350_000


def test_the_server_pictures_are_rebuilt_from_the_data_alone(explanation, data):
    """The browser's arithmetic in torch on the payload only, against the server's
    pictures: codes, upsampling, scales and tables together. Mean difference under 1 of
    255: one code is at most 4/255 / 2 of the scale, about 1 table entry (1/256), and
    neighbouring viridis / jet entries differ by about 1 to 4 levels per channel; times the
    opacity 0.7; plus a rare table index crossed by float rounding."""
    tables = {
        name: np.frombuffer(base64.b64decode(table), np.uint8).reshape(256, 3)
        for name, table in data["cmaps"].items()
    }
    ramp = torch.linspace(0, 1, 1001)[None]
    for name, table in tables.items():  # the tables are the server's colours
        np.testing.assert_array_equal(
            table[np.minimum((ramp.numpy() * 256).astype(np.intp), 255)],
            viz.colorize_unit(ramp, name),
        )
    worst = 0.0
    for position in (0, 1, 5, 20, 35, 49):
        for mode in view.MODES:
            unit = browser_unit(data, position, view.is_cumulative(mode))
            index = np.minimum((unit.numpy() * 256).astype(np.intp), 255)
            for name in viz.CMAPS:
                mine = viz.blend(explanation.backdrop, tables[name][index], 0.7)
                server = explain_draw.layer_overlay(explanation, position, mode, 0.7, name)
                worst = max(worst, np.abs(mine.astype(int) - server.astype(int)).mean())
    assert worst < 1.0


def test_captions_and_chart_follow_the_server(explanation, data):
    for position in (0, 12, 49):
        for mode in view.MODES:
            assert data["captions"][mode][position] == explain_draw.layer_caption(
                explanation, position, mode
            )
        page = chart.chart_html(explanation, position, view.ALONE)
        assert f"<figcaption>{data['chart'][position]}</figcaption>" in page
    assert data["terms"] == list(explanation.term_indices)
    assert data["modes"] == {"alone": view.ALONE, "cumulative": view.CUMULATIVE}


@pytest.mark.parametrize("key", ["", "x" * 100_000, "<script>", 7, None, {"a": 1}, [1]])
def test_hostile_requests_for_the_data_are_skipped_or_refused(handlers, key):
    assert handlers.canvas_data(key, None) == gr.skip()
    with pytest.raises(gr.Error, match=re.escape(UNUSABLE)):
        handlers.canvas_data(key, {"path": "/etc/hostname"})
