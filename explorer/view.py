"""The view controls of the Explain tab, checked: the :class:`View` every drawing event
takes (slider position, "alone / up to here", opacity, colour map), and the checks of
any number or choice that comes from the page or a raw API payload (never trusted: a
bad value is the app's own short message, naming the control and what it accepts)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from explorer.guard import refusal
from tgrad import viz

ALONE = "this layer alone"
CUMULATIVE = "everything up to here"
MODES = (ALONE, CUMULATIVE)
QUERY_MODES = {"alone": ALONE, "cumulative": CUMULATIVE}
"""The ``mode`` values of a link (:mod:`explorer.share`) and the view each stands for."""


def is_cumulative(mode: str | None) -> bool:
    return mode == CUMULATIVE


MAX_NUMBER_TEXT = 32
"""The longest numeric text accepted from the page."""
MAX_POSITION = 1e6
"""The largest slider position accepted (clamped to the explanation's afterwards)."""


def number(value: object, name: str, low: float, high: float, default: float) -> float:
    """A number from the page or a raw API payload, clipped to [low, high].

    None gives ``default``; finite ints, floats and short numeric strings are accepted;
    anything else (text, a bool, NaN, infinity, a huge digit string) is a user error naming
    ``name`` and its range.
    """
    if value is None:
        return default
    result = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        if not isinstance(value, str) or len(value) <= MAX_NUMBER_TEXT:
            try:
                result = float(value)
            except (ValueError, OverflowError):
                pass
    if not math.isfinite(result):
        raise refusal(f"{name} must be a number from {low:g} to {high:g}.", "Invalid value")
    return min(max(result, low), high)


def choice(value: object, choices: Sequence[str], name: str, default: str) -> str:
    """One of ``choices`` (None or "" gives ``default``); else a user error that lists them
    without echoing what was sent."""
    if value is None or value == "":
        return default
    if isinstance(value, str) and value in choices:
        return value
    raise refusal(f"{name} must be one of: {', '.join(choices)}.", "Invalid choice")


@dataclass(frozen=True)
class View:
    """What the Explain tab's pictures show: the slider ``position`` (not yet clamped to
    an explanation), the ``mode`` (:data:`MODES`), the map ``opacity`` in [0, 1] and the
    colour map ``cmap`` (a key of :data:`tgrad.viz.CMAPS`)."""

    position: float = 0.0
    mode: str = ALONE
    opacity: float = 0.5
    cmap: str = viz.DEFAULT_CMAP

    @classmethod
    def checked(
        cls,
        position: object = None,
        mode: object = None,
        opacity: object = None,
        cmap: object = None,
    ) -> View:
        """The view controls as the page (or a raw payload) sends them, checked
        (:func:`number`, :func:`choice`; None: the default)."""
        return cls(
            number(position, "The layer position", 0.0, MAX_POSITION, 0.0),
            choice(mode, MODES, "The view", ALONE),
            number(opacity, "The opacity", 0.0, 1.0, 0.5),
            choice(cmap, list(viz.CMAPS), "The colour map", viz.DEFAULT_CMAP),
        )

    @property
    def cumulative(self) -> bool:
        return is_cumulative(self.mode)
