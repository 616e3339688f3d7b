"""T-Grad Explorer: the Gradio app on top of the :mod:`tgrad` engine.

    from explorer.ui import build_demo
    demo = build_demo()            # gr.Blocks; launch with QUEUE_OPTIONS / LAUNCH_OPTIONS

Modules: :mod:`explorer.session` (bounded model and explanation caches, no Gradio),
:mod:`explorer.render` (turns a cached explanation into images, text and an HTML chart),
:mod:`explorer.handlers` (the callbacks), :mod:`explorer.ui` (layout and wiring).
The explorer imports tgrad; tgrad never imports the explorer.
"""
