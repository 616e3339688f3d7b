"""Heavy work under one process-wide limit, and a Stop token per run.

:class:`WorkSlots` is the limit: at most ``count`` computations at once in the whole
process, whichever event asks. Waiting work is served by priority, :data:`EXPLAIN` before
:data:`SLOW`, then in order of arrival; slow work (a Compare method running chunked
forwards, an Evaluate method, a cascade step) calls :meth:`Slot.pause` between chunks,
and gives its slot to an explanation that is waiting, taking it back (before any slow
work that came after it) once the explanation is done.

:class:`Runs` holds the Stop token (:class:`Run`) of every running comparison,
evaluation and cascade, by page and kind. A press of a run button makes a new run and
stops the runs of the same page and kind that are still going (the new one replaces
them); the Stop button stops them all. Each run removes only its own token when it ends.

Nothing here imports Gradio or torch.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

EXPLAIN = 0
"""Priority of an explanation (the Explain button, a re-render of an evicted key)."""
SLOW = 1
"""Priority of everything else (Compare, Evaluate, Sanity check)."""

STOPPED = "stopped"
REPLACED = "replaced"
PRESSED_TTL = 3600.0
"""Seconds a pressed run whose work never began (a full queue, a closed page) is kept."""

Progress = Callable[[float, str], None]
"""``progress(fraction done, what is happening)``."""


def _quiet(fraction: float, what: str) -> None:
    return None


def reporter(progress: Progress | None) -> Progress:
    """``progress``, or a report that goes nowhere. (Not ``progress or ...``: a
    ``gr.Progress`` has a length, 0, so it is false, and its reports were lost.)"""
    return _quiet if progress is None else progress


class WorkSlots:
    """At most ``count`` holders at once; waiters served by priority, then arrival."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        self.count = count
        self._cond = threading.Condition()
        self._busy = 0
        self._waiting: list[tuple[int, int]] = []  # a heap of tickets (priority, arrival)
        self._arrivals = itertools.count()

    @contextmanager
    def hold(self, priority: int = EXPLAIN) -> Iterator[Slot]:
        """Wait for a slot, hold it for the ``with`` block, then free it."""
        ticket = (priority, next(self._arrivals))
        self._acquire(ticket)
        try:
            yield Slot(self, ticket)
        finally:
            self._release()

    @property
    def busy(self) -> int:
        """Slots held now."""
        with self._cond:
            return self._busy

    def waiting(self, priority: int | None = None) -> int:
        """Waiters (of ``priority`` only, if given)."""
        with self._cond:
            return sum(1 for p, _ in self._waiting if priority is None or p == priority)

    def _acquire(self, ticket: tuple[int, int]) -> None:
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            while self._busy >= self.count or self._waiting[0] != ticket:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._busy += 1
            self._cond.notify_all()  # the next waiter may take another free slot

    def _release(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def _pause(self, ticket: tuple[int, int]) -> bool:
        with self._cond:
            if not self._waiting or self._waiting[0][0] >= ticket[0]:
                return False  # nobody waits who comes first
            self._busy -= 1
            self._cond.notify_all()
        self._acquire(ticket)  # same ticket: back before slow work that came later
        return True


@dataclass(frozen=True)
class Slot:
    """A held slot of :class:`WorkSlots`."""

    slots: WorkSlots = field(repr=False)
    ticket: tuple[int, int]

    def pause(self) -> bool:
        """Between two chunks of slow work: if work of a higher priority waits, let it
        run first and wait for the slot again. Returns whether it paused."""
        return self.slots._pause(self.ticket)


class Stopped(Exception):
    """The run was stopped (its Stop button, or the run button pressed again): the work
    gave up at its next chunk."""


class StopFlag(Protocol):
    """What the slow work checks between chunks (a :class:`~explorer.jobs.Run`, or a
    ``threading.Event``)."""

    def is_set(self) -> bool: ...


def check_stop(stop: StopFlag | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped


class Chunks:
    """Called between two chunks of slow work holding ``slot``: ends the run if ``stop``
    is set (:class:`Stopped`), and lets a waiting explanation go first (the time spent
    waiting for the slot again is added to :attr:`paused`)."""

    def __init__(self, slot: Slot, stop: StopFlag | None) -> None:
        self.slot = slot
        self.stop = stop
        self.paused = 0.0
        """Seconds this work waited for its slot after handing it over."""

    def __call__(self) -> None:
        check_stop(self.stop)
        waited = time.perf_counter()
        if self.slot.pause():
            self.paused += time.perf_counter() - waited
            check_stop(self.stop)


class Clock:
    """Work done out of a known ``total`` (in any unit) since it was made, and the time
    that is left at the rate so far."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.done = 0
        self._start = time.perf_counter()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total)

    def eta_text(self) -> str:
        """``", about 12 s left"`` (empty before any work is done)."""
        if not self.done:
            return ""
        elapsed = time.perf_counter() - self._start
        return f", about {elapsed / self.done * (self.total - self.done):.0f} s left"


class Run:
    """The Stop token of one run: :meth:`stop` is seen by the work at its next chunk.

    ``is_set()`` makes it usable wherever a ``threading.Event`` is.
    """

    def __init__(self, kind: str, page: str) -> None:
        self.kind = kind
        self.page = page
        self.id = uuid.uuid4().hex
        self.created = time.monotonic()
        self.reason: str | None = None
        """None while it may run; :data:`STOPPED` (the Stop button) or :data:`REPLACED`
        (the run button pressed again on the same page)."""
        self._event = threading.Event()

    def stop(self, reason: str = STOPPED) -> None:
        """Ask the run to stop (the first reason given is kept)."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def replaced(self) -> bool:
        return self.reason == REPLACED


class Runs:
    """The runs of every page, by kind (``"compare"``, ``"evaluate"``, ``"sanity"``).

    ``limit`` bounds the tokens kept: past it a run gets a token no button reaches,
    rather than memory growing.
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], list[Run]] = {}
        self._pressed: dict[str, Run] = {}
        """Runs made by a button press whose work has not begun, by id."""
        self._ended: OrderedDict[str, str] = OrderedDict()
        """Why each of the last ``limit`` pressed runs ended before it began, by id."""

    def press(self, kind: str, page: str) -> tuple[Run, int]:
        """A run button was pressed: a new run of ``page``, and how many runs of the page
        it replaced (they are stopped)."""
        run = Run(kind, page)
        with self._lock:
            for old in [r for r in self._pressed.values() if run.created - r.created > PRESSED_TTL]:
                self._drop(old)
            replaced = self._runs.pop((kind, page), [])
            for old in replaced:
                old.stop(REPLACED)
                self._forget(old)
            if self._count() < self.limit:
                self._runs[(kind, page)] = [run]
                self._pressed[run.id] = run
        return run, len(replaced)

    def begin(self, kind: str, page: str, run_id: object = None) -> Run:
        """The run whose work begins now: the one pressed as ``run_id`` (already stopped
        if it was stopped or replaced before it began), or for a call without one (the
        API) a new run of the page, beside any others."""
        with self._lock:
            if isinstance(run_id, str) and run_id:
                pressed = self._pressed.pop(run_id, None)
                if pressed is not None:
                    return pressed
                run = Run(kind, page)
                run.stop(self._ended.get(run_id, STOPPED))
                return run
            run = Run(kind, page)
            if self._count() < self.limit:
                self._runs.setdefault((kind, page), []).append(run)
            return run

    def stop(self, kind: str, page: str) -> int:
        """The Stop button: stop every run of ``page`` of this kind; how many there were."""
        with self._lock:
            runs = self._runs.pop((kind, page), [])
            for run in runs:
                run.stop(STOPPED)
                self._forget(run)
        return len(runs)

    def finish(self, run: Run) -> None:
        """A run ended: remove its token (and only its own)."""
        with self._lock:
            self._remove(run)
            self._pressed.pop(run.id, None)

    def _drop(self, run: Run) -> None:
        """Forget a pressed run whose work never began."""
        run.stop(STOPPED)
        self._remove(run)
        self._forget(run)

    def _remove(self, run: Run) -> None:
        runs = self._runs.get((run.kind, run.page), [])
        if run in runs:
            runs.remove(run)
            if not runs:
                del self._runs[(run.kind, run.page)]

    def running(self, kind: str | None = None) -> int:
        """Tokens kept (of ``kind`` only, if given)."""
        with self._lock:
            return sum(len(r) for (k, _), r in self._runs.items() if kind in (None, k))

    def _count(self) -> int:
        return sum(len(runs) for runs in self._runs.values())

    def _forget(self, run: Run) -> None:
        """A stopped run no longer counts; one that never began is remembered as ended."""
        if self._pressed.pop(run.id, None) is not None:
            self._ended[run.id] = run.reason or STOPPED
            while len(self._ended) > self.limit:
                self._ended.popitem(last=False)
