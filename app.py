"""T-Grad Explorer: the Hugging Face Space entry point.

    python app.py                       # http://127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT decide)

Runs offline on the bundled EfficientNet-Lite0 weights.
"""

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from explorer.session import SESSION, set_torch_threads, warm_up
from explorer.ui import LAUNCH_OPTIONS, QUEUE_OPTIONS, build_demo

set_torch_threads()  # one thread per explanation (EXPLORER_TORCH_THREADS to change)
demo = build_demo(SESSION)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per internal request
    warm_up(SESSION)  # load the default model now, so that the first click is fast
    demo.queue(**QUEUE_OPTIONS).launch(**LAUNCH_OPTIONS)
