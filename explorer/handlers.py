"""The page's callbacks, gathered: :class:`Handlers` is every tab's events on one object
bound to a session (:class:`~explorer.events.Events`: the photo, the cached explanation,
the runs and their Stop), callable directly in tests.

Two kinds:

* the heavy ones (Explain, Compare, Evaluate, the sanity check; ``/explain``,
  ``/compare``, ``/evaluate``, ``/sanity`` in the API) compute through the session's
  caches and its process-wide slots;
* everything else redraws a cached explanation (:mod:`explorer.tabs.explain_events`).

Errors a user can cause become ``gr.Error`` with the app's own short message, never a
traceback (:func:`explorer.errors.page_errors`).
"""

from __future__ import annotations

from explorer.events import BUNDLED_PHOTOS
from explorer.tabs.compare import CompareEvents
from explorer.tabs.evaluate import EvaluateEvents
from explorer.tabs.explain_events import ExplainEvents
from explorer.tabs.sanity import SanityEvents


class Handlers(ExplainEvents, CompareEvents, EvaluateEvents, SanityEvents):
    """The callbacks of one app: each tab's, bound to a session and the models it may
    load (``Handlers(session, models, gate)``, see :class:`~explorer.events.Events`)."""


__all__ = ["BUNDLED_PHOTOS", "Handlers"]  # the photos: what the tests of the adapters use
