"""T-Grad Explorer: the Gradio app on top of the :mod:`tgrad` engine.

    from explorer.ui import build_demo
    demo = build_demo()            # gr.Blocks; launch with QUEUE_OPTIONS / LAUNCH_OPTIONS

The page: :mod:`explorer.ui` assembles the tabs of :mod:`explorer.tabs` (each its layout,
drawing and callbacks), which share :mod:`explorer.chart` (the bar chart),
:mod:`explorer.api` (the endpoints' JSON), :mod:`explorer.draw`, :mod:`explorer.view`
(the view controls, checked), :mod:`explorer.errors` (errors as the page's messages),
:mod:`explorer.widgets` and :mod:`explorer.events` (what the callbacks share);
:mod:`explorer.handlers` gathers the callbacks. Requests are checked by
:mod:`explorer.guard` and :mod:`explorer.uploads`; links and figures are
:mod:`explorer.share`'s.

The work, without Gradio: :mod:`explorer.session` (the process's :class:`Session`),
:mod:`explorer.cache` (the LRUs and the model cache), :mod:`explorer.explanation` (an
explained photo and its keys), :mod:`explorer.kept` (what a cached explanation keeps),
:mod:`explorer.work` (the method tabs' maps, scores and cascades), :mod:`explorer.jobs`
(the process-wide slots, explanations first, and a Stop token per run),
:mod:`explorer.allocator` (malloc settings).
The explorer imports tgrad; tgrad never imports the explorer.
"""
