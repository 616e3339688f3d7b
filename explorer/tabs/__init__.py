"""The page's tabs, one module each holding its layout (``build``), its drawing and its
callbacks: :mod:`~explorer.tabs.explain` (with :mod:`~explorer.tabs.explain_draw` and
:mod:`~explorer.tabs.explain_events`, the Explain tab being the largest),
:mod:`~explorer.tabs.compare`, :mod:`~explorer.tabs.evaluate`, :mod:`~explorer.tabs.sanity`."""
