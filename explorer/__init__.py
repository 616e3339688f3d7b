"""T-Grad Explorer: the Gradio app on top of the :mod:`tgrad` engine.

    from explorer.ui import build_demo
    demo = build_demo()            # gr.Blocks; launch with QUEUE_OPTIONS / LAUNCH_OPTIONS

Modules: :mod:`explorer.session` (bounded model and explanation caches, no Gradio),
:mod:`explorer.kept` (what a cached explanation keeps), :mod:`explorer.jobs` (the work
slots, explanations first, and a Stop token per run), :mod:`explorer.allocator` (malloc
settings), :mod:`explorer.render` (turns a cached explanation into images, text and an
HTML chart), :mod:`explorer.handlers` (the callbacks), :mod:`explorer.guard` (every
request's inputs checked before Gradio processes them), :mod:`explorer.ui` (layout and
wiring).
The explorer imports tgrad; tgrad never imports the explorer.
"""
