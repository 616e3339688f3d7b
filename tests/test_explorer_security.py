"""The explorer under attack: hostile photo payloads, hostile values, load.

Each test reproduces an attack from the hardening issue. Photos are passed as raw
payloads (``{"path": ...}``, no ``meta``), which Gradio hands to the handlers unchecked;
the :class:`~explorer.uploads.PhotoGate` must refuse everything but uploaded or bundled
regular files, with one message that says nothing about the path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import httpx
import pytest
from torch import nn

from explorer.explanation import content_key, parse_key
from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from explorer.uploads import UNUSABLE, PhotoGate, PhotoRejected
from explorer.view import ALONE
from tests.explorer_files import PHOTOS, FakeLoaded
from tgrad.models import DEFAULT_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs


UNUSABLE_RE = re.escape(UNUSABLE)


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    """An upload folder with a photo in it, and a photo outside it."""
    uploads = tmp_path / "uploads"
    outside = tmp_path / "elsewhere"
    uploads.mkdir()
    outside.mkdir()
    shutil.copy(PHOTOS["coffee"], uploads / "coffee.jpg")
    shutil.copy(PHOTOS["coffee"], outside / "secret.jpg")
    return {"uploads": uploads, "outside": outside}


@pytest.fixture
def gate(places) -> PhotoGate:
    return PhotoGate([places["uploads"]], BUNDLED_PHOTOS, max_bytes=1_000_000)


# ----------------------------------------------------------------------------- the gate


def test_gate_reads_uploads_and_bundled_photos(gate, places):
    data = (places["uploads"] / "coffee.jpg").read_bytes()
    assert gate.read({"path": str(places["uploads"] / "coffee.jpg")}) == data
    assert gate.read(str(places["uploads"] / "coffee.jpg")) == data
    assert gate.read({"path": str(BUNDLED_PHOTOS[0])}) == BUNDLED_PHOTOS[0].read_bytes()
    assert gate.read(None) is None and gate.read("") is None


def hostile_payloads(places: dict[str, Path]) -> dict[str, object]:
    uploads, outside = places["uploads"], places["outside"]
    (uploads / "folder").mkdir()
    os.mkfifo(uploads / "pipe.jpg")
    (uploads / "link.jpg").symlink_to(outside / "secret.jpg")
    (uploads / "dirlink").symlink_to(outside)
    return {
        "a photo outside the uploads": {"path": str(outside / "secret.jpg")},
        "a text file outside": {"path": "/etc/hostname"},
        "a missing file": {"path": str(uploads / "missing.jpg")},
        "a folder": {"path": str(uploads / "folder")},
        "a folder outside": {"path": "/etc"},
        "/dev/zero": {"path": "/dev/zero"},
        "a named pipe in the uploads": {"path": str(uploads / "pipe.jpg")},
        "a symlink out of the uploads": {"path": str(uploads / "link.jpg")},
        "a linked folder": {"path": str(uploads / "dirlink" / "secret.jpg")},
        "dot-dot": {"path": str(uploads / ".." / "elsewhere" / "secret.jpg")},
        "a relative path": {"path": "assets/coffee.jpg/../make_assets.py"},
        "another bundled file": {"path": str(BUNDLED_PHOTOS[0].parent / "LICENSES.md")},
        "a URL": {"url": "http://127.0.0.1/x.jpg"},
        "a number": {"path": 5},
        "a list": ["/etc/hostname"],
        "a NUL byte": {"path": str(uploads / "coffee.jpg") + "\x00.png"},
        "a huge path": {"path": "/" + "a" * 100_000},
    }


def test_gate_refuses_everything_else_with_one_message(gate, places):
    for what, payload in hostile_payloads(places).items():
        done: list[BaseException] = []

        def attempt(payload=payload, done=done):
            try:
                gate.read(payload)
            except BaseException as error:  # recorded, checked below
                done.append(error)

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(10)  # a pipe opened for reading would block here forever
        assert not worker.is_alive(), f"{what}: blocked"
        assert len(done) == 1 and isinstance(done[0], PhotoRejected), what
        assert str(done[0]) == UNUSABLE, what


def test_gate_caps_the_bytes_read(places):
    big = places["uploads"] / "big.jpg"
    big.write_bytes(b"\xff" * 2_000_001)
    gate = PhotoGate([places["uploads"]], max_bytes=2_000_000)
    with pytest.raises(PhotoRejected, match=r"larger than 1\.91 MB"):
        gate.read({"path": str(big)})


# ----------------------------------------------------------------------------- handlers


@pytest.fixture(scope="module")
def session() -> Session:
    return Session()


@pytest.fixture
def handlers(session, gate) -> Handlers:
    return Handlers(session, gate=gate)


def test_every_photo_event_uses_the_gate(handlers, places):
    outside = {"path": str(places["outside"] / "secret.jpg")}
    computed = handlers.session.computed
    with pytest.raises(gr.Error, match=UNUSABLE_RE):
        handlers.explain(outside, DEFAULT_MODEL, None, 0.5)
    with pytest.raises(gr.Error, match=UNUSABLE_RE):
        handlers.explain_if_photo(outside, DEFAULT_MODEL, None, 0.5)
    # the private render events recompute from the photo when the key is unknown
    with pytest.raises(gr.Error, match=UNUSABLE_RE):
        handlers.show_layers("", 0, ALONE, 0.5, outside)
    assert handlers.show_layers("", 0, ALONE, 0.5, None) == (gr.skip(),) * 6
    for event in (handlers.canvas_data, handlers.show_grid):
        with pytest.raises(gr.Error, match=UNUSABLE_RE):
            event("", outside)
        assert event("", None) == gr.skip()
    assert handlers.session.computed == computed


def test_an_uploaded_photo_is_explained(handlers, places):
    photo = {"path": str(places["uploads"] / "coffee.jpg"), "meta": {"_type": "gradio.FileData"}}
    _, top5, _, _ = handlers.explain(photo, DEFAULT_MODEL, None, 0.5)
    assert next(iter(top5)).startswith("967: espresso")


@pytest.mark.parametrize("value", ["abc", "1e999999", "nan", [1], {"a": 1}, True, "9" * 5000])
def test_non_numeric_view_values_are_user_errors(handlers, value):
    photo = str(BUNDLED_PHOTOS[0])
    with pytest.raises(gr.Error, match="opacity must be a number from 0 to 1"):
        handlers.explain(photo, DEFAULT_MODEL, None, value)
    with pytest.raises(gr.Error, match="opacity must be a number"):
        handlers.render_colours("", 0, ALONE, value, photo)
    with pytest.raises(gr.Error, match="layer position must be a number"):
        handlers.show_layers("", value, ALONE, 0.5, photo)


def test_view_mode_and_model_must_be_known_choices(handlers):
    photo = str(BUNDLED_PHOTOS[0])
    hostile = "<script>" + "x" * 10_000
    with pytest.raises(gr.Error) as caught:
        handlers.show_layers("", 0, hostile, 0.5, photo)
    assert "<script>" not in str(caught.value) and len(str(caught.value)) < 200
    with pytest.raises(gr.Error) as caught:
        handlers.explain(photo, hostile, None, 0.5)
    assert "<script>" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("target", ["x" * 100_000, "9" * 5000, "²", ["967"], 967.5, True])
def test_hostile_targets_give_short_messages(handlers, target):
    with pytest.raises(gr.Error) as caught:
        handlers.explain(str(BUNDLED_PHOTOS[0]), DEFAULT_MODEL, target, 0.5)
    message = str(caught.value)
    assert len(message) < 300, message
    assert "Exceeds the limit" not in message and "invalid literal" not in message


def test_hostile_cache_keys_are_ignored():
    assert parse_key("d:m:" + "9" * 5000) is None  # would raise inside int() (4300 digits)
    assert parse_key("d:m:²") is None
    assert parse_key("d" * 300 + ":m:1") is None
    assert parse_key(["a", "b"]) is None  # type: ignore[arg-type]
    assert parse_key("abc:efficientnet_lite0:967") == ("abc", "efficientnet_lite0", 967)


# ----------------------------------------------------------------------------- one limit


class _Slow(nn.Module):
    """A model that records how many forwards run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1000)
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def forward(self, x):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.lock:
            self.running -= 1
        return self.fc(x.mean((2, 3)))


def test_explanation_work_is_limited_process_wide(places):
    slow = _Slow()
    session = Session(loader=lambda name, **_: FakeLoaded(slow, name), max_explanations=1)
    gate = PhotoGate([places["uploads"]], BUNDLED_PHOTOS)
    handlers = Handlers(session, models=["slow"], gate=gate)
    photos, keys = [], []
    for index in range(6):  # six different photos (a trailing byte): no cache hits
        path = places["uploads"] / f"photo{index}.jpg"
        path.write_bytes(PHOTOS["coffee"].read_bytes() + bytes([index]))
        photos.append(str(path))
        keys.append(content_key(path.read_bytes(), "slow", None))  # never in the cache

    def explain(index):
        handlers.explain(photos[index], "slow", None, 0.5)

    def show_layers(index):  # a private event with an unknown key recomputes
        handlers.show_layers(keys[index], 0, ALONE, 0.5, photos[index])

    jobs = [threading.Thread(target=explain, args=(i,)) for i in range(3)]
    jobs += [threading.Thread(target=show_layers, args=(i,)) for i in range(3, 6)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert session.computed == 6
    assert slow.most == 2  # six requests at once, never more than two computations


# ----------------------------------------------------------------------------- raw HTTP


@pytest.fixture(scope="module")
def server():
    import app
    from explorer.ui import LAUNCH_OPTIONS, QUEUE_OPTIONS

    app.demo.queue(**QUEUE_OPTIONS)
    _, url, _ = app.demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    client = httpx.Client(base_url=url, timeout=60)
    yield app.demo, client
    client.close()
    app.demo.close()


def call(client: httpx.Client, api: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/<api> and read its result: ("complete"|"error", payload)."""
    posted = client.post(f"/gradio_api/call/{api}", json={"data": data})
    posted.raise_for_status()
    stream = client.get(f"/gradio_api/call/{api}/{posted.json()['event_id']}").text
    event = re.findall(r"^event: (\w+)$", stream, re.M)[-1]
    payload = json.loads(re.findall(r"^data: (.*)$", stream, re.M)[-1])
    return event, payload


def join(
    client: httpx.Client, demo: gr.Blocks, name: str, data: list, event_data: object = None
) -> dict:
    """Call a private event as the page does (queue/join by its index); its last message."""
    dependencies = demo.get_config_file()["dependencies"]
    index = next(i for i, d in enumerate(dependencies) if d["api_name"] == name)
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": index, "session_hash": session, "event_data": event_data}
    client.post("/gradio_api/queue/join", json=body).raise_for_status()
    stream = client.get("/gradio_api/queue/data", params={"session_hash": session}).text
    messages = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    return next(m for m in messages if m.get("msg") == "process_completed")


@pytest.mark.slow  # a served app, called over HTTP
def test_raw_api_cannot_read_files_outside_the_uploads(server, places):
    demo, client = server
    for path in (str(places["outside"] / "secret.jpg"), "/etc/hostname", "/etc", "/dev/zero"):
        event, payload = call(client, "explain", [{"path": path}, DEFAULT_MODEL, None, 0.5])
        assert event == "error" and payload["error"] == UNUSABLE, path
    done = join(client, demo, "canvas_data", ["", {"path": "/etc/hostname"}])
    assert not done["success"] and done["output"]["error"] == UNUSABLE
    # a bundled photo is still fine
    event, payload = call(client, "explain", [{"path": str(PHOTOS["coffee"])}, None, None, 0.5])
    assert event == "complete" and payload[1]["label"] == "967: espresso ← explained"


@pytest.mark.slow  # a served app, called over HTTP
def test_raw_api_values_give_short_messages(server):
    _, client = server
    photo = {"path": str(PHOTOS["coffee"])}
    event, payload = call(client, "explain", [photo, DEFAULT_MODEL, None, "abc"])
    assert event == "error" and payload["error"] == "The opacity must be a number from 0 to 1."
    event, payload = call(client, "explain", [photo, DEFAULT_MODEL, "x" * 100_000, 0.5])
    assert event == "error" and len(payload["error"]) < 200


@pytest.mark.slow  # a served app, called over HTTP
def test_raw_events_of_the_classroom_extras_check_their_values(server, places):
    """The colour map, the jump to a layer, the link and the figures, sent by hand."""
    demo, client = server
    photo = {"path": str(PHOTOS["coffee"])}
    view = ["", 0, ALONE, 0.5]
    done = join(client, demo, "render_colours", [*view, photo, "<img src=x>"])
    assert not done["success"]
    assert done["output"]["error"] == "The colour map must be one of: viridis, jet."
    done = join(client, demo, "figures", [*view, {"path": "/etc/hostname"}, "jet"])
    assert not done["success"] and done["output"]["error"] == UNUSABLE
    done = join(client, demo, "figures", [*view, None, None])
    assert not done["success"] and done["output"]["error"].startswith("Explain a photo first")
    for index in ("9" * 5000, "1e400", "abc", {"a": 1}):
        done = join(client, demo, "jump", ["x"], {"index": index, "value": None})
        assert not done["success"], index
        assert done["output"]["error"] == "The layer position must be a number from 0 to 1e+06."
    skipped = {"__type__": "update"}  # gr.skip(): the slider stays where it is
    done = join(client, demo, "jump", ["x"], {"index": [1, 2, 3], "value": None})
    assert done["success"] and done["output"]["data"] == [skipped]
    done = join(client, demo, "view_link", ["x" * 100_000, "nan", "evil", "jet"])
    assert not done["success"]
    assert done["output"]["error"] == "The layer position must be a number from 0 to 1e+06."
    # a real figures download through the page's event: a zip in Gradio's cache
    event, payload = call(client, "explain", [photo, DEFAULT_MODEL, None, 0.5])
    assert event == "complete"
    done = join(client, demo, "figures", [payload[3], 3, ALONE, 0.5, photo, "jet"])
    assert done["success"] and done["output"]["data"][0]["path"].endswith(".zip")


@pytest.mark.slow  # a served app, called over HTTP
def test_only_the_photos_are_served(server):
    _, client = server
    assets = BUNDLED_PHOTOS[0].parent
    assert client.get(f"/gradio_api/file={BUNDLED_PHOTOS[0]}").status_code == 200
    for name in ("make_assets.py", "LICENSES.md"):
        assert client.get(f"/gradio_api/file={assets / name}").status_code == 403, name


def resident_mb() -> float:
    """This process's resident memory (the in-process server's), in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.slow  # a served app, called over HTTP
def test_sessions_kept_by_the_server_are_bounded(server):
    """Gradio keeps ~135 KiB of state per session of this page (measured: 135 MiB after 1000
    API calls with its default capacity of 10,000). Once the capacity is reached, 500 more
    calls must not grow the server by more than 20 MiB, i.e. under 40 KiB per call: any
    per-session state kept beyond the capacity would cost more than three times that."""
    from explorer.ui import SESSION_CAPACITY

    demo, client = server

    def calls(count: int) -> None:
        for _ in range(count):  # each API call is a new session
            event, _ = call(client, "explain", [None, DEFAULT_MODEL, None, 0.5])
            assert event == "error"  # "Please upload a photo": cheap, and still a session

    calls(SESSION_CAPACITY + 50)
    before = resident_mb()
    calls(500)
    grown = resident_mb() - before
    assert len(demo.state_holder.session_data) <= SESSION_CAPACITY
    assert grown < 20, f"{grown:.1f} MiB for 500 sessions"


# ------------------------------------------------ what Gradio would process before us

FILE_META = {"_type": "gradio.FileData"}


def predict(client: httpx.Client, demo: gr.Blocks, name: str, data: list) -> httpx.Response:
    """Call an unqueued event as the page does (POST /gradio_api/run/predict)."""
    dependencies = demo.get_config_file()["dependencies"]
    index = next(i for i, d in enumerate(dependencies) if d["api_name"] == name)
    body = {"data": data, "fn_index": index, "session_hash": uuid.uuid4().hex}
    return client.post("/gradio_api/run/predict", json=body)


@pytest.mark.slow  # a served app, called over HTTP
def test_only_gradios_example_loader_keeps_its_preprocessing(server):
    """Every event of the app takes its inputs raw and checks them itself; only Gradio's
    own example loader preprocesses (an index into the examples, checked first by the
    guard)."""
    demo, _ = server
    preprocessed = [
        fn.name
        for fn in demo.fns.values()
        if fn.fn is not None
        and fn.inputs
        and fn.preprocess
        and not all(isinstance(block, gr.Dataset) for block in fn.inputs)
    ]
    assert preprocessed == []


@pytest.mark.slow  # a served app, called over HTTP
def test_refusals_are_the_apps_own_messages_and_one_log_line(server, places, caplog, capfd):
    """Payloads that Gradio itself refused before any handler ran, with ``{"error":
    null}`` (the client's "has not enabled verbose error reporting") and a traceback."""
    from gradio.utils import get_upload_folder

    demo, client = server
    caplog.set_level(logging.INFO)
    capfd.readouterr()
    upload_root = get_upload_folder()
    refused = {  # (endpoint, data) -> the message expected
        ("explain", "a file payload naming a path that was not uploaded"): (
            [{"path": str(places["outside"] / "secret.jpg"), "meta": FILE_META}, None, None, 0.5],
            UNUSABLE,
        ),
        ("explain", "the upload folder itself"): (
            [{"path": upload_root, "meta": FILE_META}, None, None, 0.5],
            UNUSABLE,
        ),
        ("explain", "a hostile meta"): (
            [{"path": "/etc/hostname", "meta": "x"}, None, None, 0.5],
            UNUSABLE,
        ),
        ("explain", "no inputs"): ([], "This request gives 0 of the 4 inputs of /explain."),
        ("compare", "two inputs"): (
            [{"path": str(PHOTOS["coffee"])}, None],
            "This request gives 2 of the 6 inputs of /compare.",
        ),
        ("explain", "a deep list"): (
            [[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]], None, None, 0.5],
            "This request is nested too deeply.",
        ),
    }
    for (api, what), (data, message) in refused.items():
        event, payload = call(client, api, data)
        assert event == "error", what
        assert payload["error"] == message, what
        assert payload.get("title"), what  # an app's gr.Error, never Gradio's bare one
    # the upload folder was refused before Gradio registered it for deletion
    assert not any(upload_root.rstrip("/") == p.rstrip("/") for s in demo.temp_file_sets for p in s)
    # load_example (no queue) with an index that is not one of the four photos
    for index in (99, -1, "1", None):
        answer = predict(client, demo, "load_example", [index])
        assert answer.json()["error"] == "The example must be a number from 0 to 3.", index
    assert predict(client, demo, "load_example", [1]).status_code == 200
    # one line each in the log, and no traceback
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused: ")]
    assert len(lines) == len(refused) + 4
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow  # a served app, called over HTTP
def test_the_model_pickers_event_never_echoes_its_value(server, caplog, capfd):
    demo, client = server
    caplog.set_level(logging.INFO)
    capfd.readouterr()
    hostile = "<img src=x onerror=alert(1)>" + "x" * 200_000
    done = join(client, demo, "prepare_model", [hostile])
    assert not done["success"]
    assert done["output"]["error"].startswith("The model must be one of: efficientnet_lite0")
    assert len(done["output"]["error"]) < 300
    logged = "\n".join(r.getMessage() for r in caplog.records) + capfd.readouterr().err
    assert "x" * 100 not in logged and "<img" not in logged and "Traceback" not in logged


@pytest.mark.slow  # a served app, called over HTTP
def test_a_payload_with_a_url_is_never_resolved_or_fetched(server, monkeypatch):
    """Gradio downloads a file payload whose path is a URL (it resolves the host first);
    the guard refuses it before. The resolver is watched for the test's host."""
    import socket

    demo, client = server
    looked_up: list[object] = []
    real = socket.getaddrinfo

    def watched(host, *args, **kwargs):
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", watched)
    url = "http://tgrad-test.invalid/photo.jpg"
    payloads = [
        {"path": url, "meta": FILE_META},
        {"path": url, "url": url, "orig_name": "photo.jpg", "meta": FILE_META},
        {"url": url, "meta": FILE_META},
        {"url": url},
    ]
    for payload in payloads:
        event, answer = call(client, "explain", [payload, None, None, 0.5])
        assert event == "error" and answer["error"] == UNUSABLE, payload
    done = join(client, demo, "canvas_data", ["", payloads[1]])
    assert not done["success"] and done["output"]["error"] == UNUSABLE
    assert not any("tgrad-test" in str(host) for host in looked_up)


@pytest.mark.slow  # a served app, called over HTTP
def test_an_older_compare_call_without_the_colour_map_still_works(server):
    _, client = server
    event, payload = call(
        client, "compare", [{"path": str(PHOTOS["coffee"])}, None, None, "gradcam"]
    )
    assert event == "complete" and payload[1]["methods"]["gradcam"]["status"] == "done"
