"""The app launched in-process on localhost, called through gradio_client like a script."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from explorer.tabs import explain_draw
from tests.explorer_files import PHOTOS, text_as_jpg
from tgrad import viz
from tgrad.models import DEFAULT_MODEL

pytestmark = pytest.mark.slow  # a served app, called through gradio_client


@pytest.fixture(scope="module")
def server():
    """``app.demo`` with the app's queue and launch options; closed afterwards."""
    threads = torch.get_num_threads()
    import app  # sets one torch thread per explanation, as the server does
    from explorer.ui import LAUNCH_OPTIONS, QUEUE_OPTIONS

    app.demo.queue(**QUEUE_OPTIONS)
    _, url, _ = app.demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    yield app, url
    app.demo.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> Client:
    folder = tmp_path_factory.mktemp("client-downloads")
    return Client(server[1], verbose=False, download_files=str(folder), analytics_enabled=False)


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_the_api_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert list(endpoints) == ["/explain", "/compare", "/evaluate", "/sanity"]
    names = [p["parameter_name"] for p in endpoints["/sanity"]["parameters"]]
    assert names == ["image", "model", "target", "methods", "measure"]
    names = [p["parameter_name"] for p in endpoints["/evaluate"]["parameters"]]
    assert names == ["image", "model", "target", "methods", "steps"]
    names = [p["parameter_name"] for p in endpoints["/explain"]["parameters"]]
    assert names == ["image", "model", "target", "opacity"]
    parameters = endpoints["/compare"]["parameters"]
    names = [p["parameter_name"] for p in parameters]
    assert names == ["image", "model", "target", "methods", "cmap"]  # the colour map: optional
    assert parameters[-1]["parameter_has_default"] and parameters[-1]["parameter_default"] == (
        "viridis"
    )


def test_compare_through_the_api(client, server):
    grid, timings = client.predict(
        handle_file(str(PHOTOS["rocket"])),
        DEFAULT_MODEL,
        "top-1 (predicted)",
        ["tgrad", "gradcam", "vanilla"],
        api_name="/compare",
    )
    picture = pixels(grid)
    bar = viz.colorbar_pixels(viz.DEFAULT_CMAP)  # the grid carries its colour bar
    assert picture.shape == (224 + 22 + 6 + bar.shape[0], 4 * 230 - 6, 3)  # photo + 3 maps
    assert list(timings["methods"]) == ["tgrad", "gradcam", "vanilla"]
    assert all(row["status"] == "done" and row["ms"] > 0 for row in timings["methods"].values())
    assert timings["methods"]["gradcam"]["shared_pass_of"] == 2  # with vanilla
    assert "99th percentile" in timings["normalisation"]


def test_explain_espresso(client, server):
    overlay, top5, decomposition = client.predict(
        handle_file(str(PHOTOS["coffee"])),
        DEFAULT_MODEL,
        "top-1 (predicted)",
        api_name="/explain",
    )
    assert top5["label"] == "967: espresso ← explained"  # the top-1, marked as explained
    assert "968: cup" in [c["label"] for c in top5["confidences"]]
    image = pixels(overlay)
    assert image.shape == (448, 448, 3)  # drawn large: twice the model input
    assert decomposition["target"] == {"index": 967, "name": "espresso"}
    total = sum(row["contribution"] for row in decomposition["terms"])
    assert abs(total - decomposition["logit"]) <= 1e-4 * max(1, abs(decomposition["logit"]))
    # the PNG is lossless: exactly what the server rendered

    session = server[0].SESSION
    explanation = next(
        e
        for e in map(session.lookup, session.explanations.keys())
        if e.key.endswith(":top1") and e.target == 967
    )
    np.testing.assert_array_equal(image, explain_draw.saliency_overlay(explanation, 0.5))


REQUESTS = [
    (PHOTOS["coffee"], "968: cup"),
    (PHOTOS["chelsea"], "top-1 (predicted)"),
    (PHOTOS["rocket"], "top-1 (predicted)"),
    (PHOTOS["astronaut"], "tabby"),
]


def test_concurrent_requests_equal_sequential_ones(client, server):
    session = server[0].SESSION
    session.explanations.clear()
    before = session.computed
    jobs = [
        client.submit(handle_file(str(photo)), DEFAULT_MODEL, target, api_name="/explain")
        for photo, target in REQUESTS
    ]
    together = [job.result(timeout=120) for job in jobs]
    assert session.computed == before + len(REQUESTS)  # all four were computed, not cached

    session.explanations.clear()
    alone = [
        client.predict(handle_file(str(photo)), DEFAULT_MODEL, target, api_name="/explain")
        for photo, target in REQUESTS
    ]
    assert session.computed == before + 2 * len(REQUESTS)

    targets = set()
    for (overlay_a, top5_a, dec_a), (overlay_b, top5_b, dec_b) in zip(together, alone, strict=True):
        assert dec_a == dec_b  # every number, bit for bit
        assert top5_a == top5_b
        np.testing.assert_array_equal(pixels(overlay_a), pixels(overlay_b))
        targets.add(dec_a["target"]["index"])
    assert len(targets) == len(REQUESTS)  # four different explanations


def test_bad_file_is_an_error_then_the_server_still_works(client, tmp_path):
    with pytest.raises(AppError, match=r"The file is not an image") as caught:
        client.predict(
            handle_file(str(text_as_jpg(tmp_path))),
            DEFAULT_MODEL,
            "top-1 (predicted)",
            api_name="/explain",
        )
    assert "Traceback" not in str(caught.value)
    _, top5, _ = client.predict(
        handle_file(str(PHOTOS["chelsea"])),
        DEFAULT_MODEL,
        "top-1 (predicted)",
        api_name="/explain",
    )
    name = top5["label"].split(": ")[1].removesuffix(" ← explained")
    assert name in ("tiger cat", "tabby", "Egyptian cat")


def test_unknown_model_or_class_is_refused(client):
    photo = handle_file(str(PHOTOS["coffee"]))
    with pytest.raises(AppError, match="no class named 'qwertz'"):
        client.predict(photo, DEFAULT_MODEL, "qwertz", api_name="/explain")
    with pytest.raises(AppError, match="The model must be one of: efficientnet_lite0"):
        client.predict(photo, "vgg16", api_name="/explain")  # never downloads weights


def test_upload_size_is_limited(client, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (26 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), api_name="/explain")


def test_evaluate_through_the_api(client):
    insertion, deletion, table = client.predict(
        handle_file(str(PHOTOS["chelsea"])),
        DEFAULT_MODEL,
        "top-1 (predicted)",
        ["tgrad", "vanilla"],
        8,
        api_name="/evaluate",
    )
    assert table["headers"][:4] == [
        "method",
        "insertion AUC ↑",
        "deletion AUC ↓",
        "insertion - deletion ↑",
    ]
    rows = table["data"]
    assert [row[0] for row in rows] == ["T-Grad", "Vanilla gradient"]
    for row in rows:
        assert 0 <= row[1] <= 1 and 0 <= row[2] <= 1
        assert row[3] == pytest.approx(row[1] - row[2], abs=2e-4)  # rounded to 4 places
        assert row[6] == 8
    assert insertion["type"] == "matplotlib" and deletion["plot"].startswith("data:image/png")


def test_sanity_through_the_api(client):
    grid, curves, numbers = client.predict(
        handle_file(str(PHOTOS["coffee"])),
        DEFAULT_MODEL,
        "top-1 (predicted)",
        ["vanilla"],
        "spearman",
        api_name="/sanity",
    )
    steps = numbers["steps"]
    assert len(steps) == numbers["groups"] + 1 and steps[0]["group"] == "original"
    assert steps[0]["similarity"]["vanilla"]["spearman"] == 1.0
    assert all(-1 <= s["similarity"]["vanilla"]["spearman"] <= 1 for s in steps)
    columns = min(len(steps), viz.SANITY_COLUMNS)  # more steps wrap into another band
    assert pixels(grid).shape[1] == columns * (112 + 3) - 3
    assert curves["plot"].startswith("data:image/png")
