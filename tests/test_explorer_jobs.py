"""Slow work, fairness and Stop: explanations go first, each run has its own Stop, and
Stop reaches the chunk that is running (in Compare, in a cascade step, in Evaluate).

The runs here use a model that sleeps in every forward, so that who waits for whom is
decided by the slots and the tokens, not by the speed of a shared machine.
"""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import pytest
from torch import nn

from explorer import jobs
from explorer.events import BUNDLED_PHOTOS, REPLACED
from explorer.handlers import Handlers
from explorer.jobs import EXPLAIN, SLOW, Runs, WorkSlots
from explorer.session import Session
from explorer.uploads import PhotoGate
from tests.explorer_files import PHOTOS, FakeLoaded, Request

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs

FORWARD_S = 0.2


class Sleepy(nn.Module):
    """A classifier whose every forward sleeps :data:`FORWARD_S` and is counted (in a
    class attribute: a cascade's deep copy counts into the same list)."""

    forwards: ClassVar[list[int]] = []

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1000)

    def forward(self, x):
        Sleepy.forwards.append(x.shape[0])
        time.sleep(FORWARD_S)
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def app(tmp_path):
    """Handlers over a session of the sleepy model, and six different photos."""
    Sleepy.forwards = []
    model = Sleepy()
    session = Session(loader=lambda name, **_: FakeLoaded(model, name))
    gate = PhotoGate([tmp_path], BUNDLED_PHOTOS)
    handlers = Handlers(session, models=["sleepy"], gate=gate)
    photos = []
    for index in range(6):  # a trailing byte: six photos, no cache hits between them
        path = tmp_path / f"photo{index}.jpg"
        path.write_bytes(PHOTOS["coffee"].read_bytes() + bytes([index]))
        photos.append(str(path))
    return handlers, photos


class Reports:
    """A progress callback that records what it is told and can wait for a report."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, fraction, desc=None):
        with self._cond:
            self.seen.append(str(desc))
            self._cond.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(
                lambda: sum(text in s for s in self.seen) >= count, timeout
            ), f"never reported {text!r} {count} times: {self.seen[-5:]}"


def run_in_thread(target, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """``list(target(*args, **kwargs))`` in a thread; its result (or error) and end time."""
    out: dict = {}

    def work():
        try:
            result = target(*args, **kwargs)
            out["result"] = list(result) if hasattr(result, "__next__") else result
        except BaseException as error:  # checked by the test
            out["error"] = error
        out["ended"] = time.monotonic()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, out


def comparing(handlers, photo, method, page, report, run_id=None):
    """A comparison of one method of ``page`` running in a thread (:func:`run_in_thread`)."""
    return run_in_thread(
        handlers.compare,
        photo,
        "sleepy",
        None,
        [method],
        None,
        run_id,
        request=page,
        progress=report,
    )


# ------------------------------------------------------------------------ the slots


def taker(slots: WorkSlots, order: list[str]):
    """``take(name, priority)``: wait for a slot, note ``name``, free it."""

    def take(name: str, priority: int) -> None:
        with slots.hold(priority):
            order.append(name)

    return take


def test_waiting_explanations_are_served_before_waiting_slow_work():
    slots = WorkSlots(1)
    order: list[str] = []
    take = taker(slots, order)
    holding = threading.Event()
    release = threading.Event()

    def first():
        with slots.hold(SLOW):
            holding.set()
            release.wait(10)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    holding.wait(10)
    for name, priority in (("slow 1", SLOW), ("explain 1", EXPLAIN), ("slow 2", SLOW)):
        threads.append(threading.Thread(target=take, args=(name, priority)))
        threads[-1].start()
        while slots.waiting() < len(threads) - 1:  # queued in this order
            time.sleep(0.01)
    threads.append(threading.Thread(target=take, args=("explain 2", EXPLAIN)))
    threads[-1].start()
    while slots.waiting() < 4:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["explain 1", "explain 2", "slow 1", "slow 2"]
    assert slots.busy == 0


def test_slow_work_hands_its_slot_to_a_waiting_explanation_and_takes_it_back_first():
    slots = WorkSlots(1)
    order: list[str] = []
    in_chunk = threading.Event()
    go_on = threading.Event()

    def slow():
        with slots.hold(SLOW) as slot:
            order.append("slow: chunk 1")
            in_chunk.set()
            go_on.wait(10)
            assert slot.pause()  # an explanation waits: it goes first
            order.append("slow: chunk 2")
            assert not slot.pause()  # nobody of a higher priority waits now

    take = taker(slots, order)

    worker = threading.Thread(target=slow)
    worker.start()
    in_chunk.wait(10)
    later = threading.Thread(target=take, args=("slow, later", SLOW))
    later.start()
    explain = threading.Thread(target=take, args=("explain", EXPLAIN))
    explain.start()
    while slots.waiting() < 2:
        time.sleep(0.01)
    go_on.set()
    for thread in (worker, later, explain):
        thread.join(10)
    assert order == ["slow: chunk 1", "explain", "slow: chunk 2", "slow, later"]


def test_an_explanation_asked_for_during_two_comparisons_finishes_before_both(app):
    """Two comparisons (SmoothGrad: 7 chunks of 8 noisy copies, a forward each) hold the
    two slots; an explanation asked for meanwhile takes a slot at the next chunk and
    needs one forward, so it ends while both still have 5 chunks or more to go. Holding
    a slot for a whole method (the old semaphore), it waited for a comparison to end."""
    handlers, photos = app
    for photo in photos[:2]:
        handlers.compute(photo, "sleepy", None)  # the comparisons' own explanations
    reports = [Reports(), Reports()]
    compares = [
        comparing(handlers, photos[i], "smoothgrad", Request(f"page {i}"), reports[i])
        for i in range(2)
    ]
    for report in reports:  # both comparisons are inside SmoothGrad now
        report.wait_for("computing smoothgrad", 2)
    explain, explained = run_in_thread(handlers.explain, photos[2], "sleepy", None, 0.5)
    for thread, _ in (*compares, (explain, explained)):
        thread.join(60)
    assert "error" not in explained
    ends = [out["ended"] for _, out in compares]
    assert explained["ended"] < min(ends)
    for _, out in compares:  # and both comparisons still finished their work
        assert out["result"][-1][1]["methods"]["smoothgrad"]["status"] == "done"


# ------------------------------------------------------------------------ Stop


def test_the_second_run_of_a_page_can_be_stopped(app):
    """The issue's case: one page starts a comparison, then another one while the first
    goes on; the first ends; then Stop. The second run must stop at its next chunk
    (the old flag, kept by page, was removed by the first run's end)."""
    handlers, photos = app
    page = Request("one page")
    first_report, second_report = Reports(), Reports()
    first = comparing(handlers, photos[0], "smoothgrad", page, first_report)
    first_report.wait_for("computing smoothgrad", 2)
    second = comparing(handlers, photos[1], "integrated_gradients", page, second_report)
    first[0].join(60)
    assert first[1]["result"][-1][1]["methods"]["smoothgrad"]["status"] == "done"
    assert not second[1]  # the second run goes on
    handlers.stop_compare(page)
    second[0].join(60)
    final = second[1]["result"][-1][1]["methods"]
    assert final["integrated_gradients"]["status"] == "stopped"
    assert handlers.runs.running() == 0


def test_pressing_again_replaces_the_running_comparison_and_says_so(app, capsys):
    handlers, photos = app
    page = Request("one page")
    report = Reports()
    first_id = handlers.press_compare(page)
    first = comparing(handlers, photos[0], "smoothgrad", page, report, first_id)
    report.wait_for("computing smoothgrad", 2)
    capsys.readouterr()
    second_id = handlers.press_compare(page)
    assert capsys.readouterr().out.strip() == REPLACED["compare"]  # gr.Info, outside a page
    first[0].join(60)
    # the replaced run stopped at its next chunk and drew nothing after the press
    shown = first[1]["result"]
    assert [step[1]["methods"]["smoothgrad"]["status"] for step in shown] == ["pending"]
    assert sum(1 for s in report.seen if "computing smoothgrad" in s) <= 4
    second = list(
        handlers.compare(photos[0], "sleepy", None, ["vanilla"], None, second_id, request=page)
    )
    assert second[-1][1]["methods"]["vanilla"]["status"] == "done"
    # a run stopped before its work began (Stop right after the press) does nothing
    third_id = handlers.press_compare(page)
    handlers.stop_compare(page)
    third = list(
        handlers.compare(photos[0], "sleepy", None, ["smoothgrad"], None, third_id, request=page)
    )
    assert third[-1][1]["methods"]["smoothgrad"]["status"] == "stopped"
    assert handlers.runs.running() == 0


def test_stop_reaches_the_methods_of_a_cascade_step(app):
    """Stop during the first step of a cascade of SmoothGrad (one shared pass, then 7
    chunks): the step gives up at its next chunk instead of finishing (it waited for
    the whole step: 15 s with ScoreCAM on Lite0)."""
    handlers, photos = app
    handlers.compute(photos[0], "sleepy", None)
    page = Request("one page")
    forwards_before = len(Sleepy.forwards)
    report = Reports()
    cascade = run_in_thread(
        handlers.sanity,
        photos[0],
        "sleepy",
        None,
        ["smoothgrad"],
        None,
        request=page,
        progress=report,
    )
    while len(Sleepy.forwards) < forwards_before + 3:  # the pass and two chunks
        time.sleep(0.02)
    handlers.stop_sanity(page)
    cascade[0].join(60)
    assert len(Sleepy.forwards) <= forwards_before + 5  # not the 8 of a whole step
    _, _, numbers, _ = cascade[1]["result"][-1]
    assert numbers["status"] == "stopped" and numbers["steps"] == []


def test_evaluate_reports_method_step_and_time_left_and_stops(app):
    handlers, photos = app
    page = Request("one page")
    report = Reports()
    # 8 steps on 224 x 224 = 2 + 2 x 7 + 2 = 18 images a map: one forward each chunk
    evaluation = run_in_thread(
        handlers.evaluate,
        photos[0],
        "sleepy",
        None,
        ["tgrad", "vanilla"],
        8,
        request=page,
        progress=report,
    )
    report.wait_for("scoring Vanilla gradient: step", 1)
    handlers.stop_evaluate(page)
    evaluation[0].join(60)
    assert any(
        s.startswith("scoring T-Grad: step ") and " of 8, about " in s and s.endswith(" s left")
        for s in report.seen
    ), report.seen
    _, _, table = evaluation[1]["result"][-1]
    assert [row[0] for row in table] == ["T-Grad", "Vanilla gradient · stopped"]
    assert table[1][1:] == [None] * 7


def test_tokens_are_bounded_and_only_a_runs_own_is_removed():
    runs = Runs(limit=2)
    first, _ = runs.press("compare", "a")
    assert runs.begin("compare", "a", first.id) is first
    api = runs.begin("compare", "a")  # an API call of the same page: beside it
    assert runs.running() == 2
    beyond = runs.begin("compare", "b")  # past the limit: a token no button reaches
    assert runs.running() == 2 and not beyond.is_set()
    runs.finish(api)
    assert runs.running() == 1
    assert runs.stop("compare", "a") == 1 and first.reason == jobs.STOPPED


def test_a_run_token_is_an_event_for_the_engine():
    token = jobs.Run("compare", "a")
    assert not token.is_set()
    token.stop(jobs.REPLACED)
    token.stop(jobs.STOPPED)  # the first reason stays
    assert token.is_set() and token.replaced


class FalseReports(Reports):
    """A progress callback that is false, as a ``gr.Progress`` is (it has a length, 0)."""

    def __len__(self) -> int:
        return 0


def test_a_progress_that_is_false_still_gets_every_report(app):
    """``progress or <nothing>`` threw away every report of Gradio's progress bar in
    Compare, Evaluate and the Sanity check: only the explanation's own were seen."""
    handlers, photos = app
    session = handlers.session
    explanation = handlers.compute(photos[0], "sleepy", None)
    report = FalseReports()
    list(session.method_maps(explanation, ["smoothgrad"], report))
    list(session.method_scores(explanation, ["vanilla"], 2, report))
    list(session.sanity(explanation, ["vanilla"], report))
    for text in ("computing smoothgrad", "scoring Vanilla gradient: step", "randomizing: group 1"):
        assert any(text in s for s in report.seen), text
