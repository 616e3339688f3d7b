"""T-Grad Explorer: the Hugging Face Space entry point.

    python app.py                       # http://127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT decide)

Runs offline on the packaged EfficientNet-Lite0/1/2 weights; where downloads are allowed
(not TGRAD_OFFLINE=1) it also offers the torchvision models, downloaded when picked.
"""

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from explorer import allocator

allocator.configure()  # before torch allocates anything: see explorer/allocator.py

from explorer.session import SESSION, set_torch_threads, warm_up  # noqa: E402
from explorer.ui import LAUNCH_OPTIONS, QUEUE_OPTIONS, build_demo  # noqa: E402
from tgrad.models import list_models  # noqa: E402

set_torch_threads()  # one thread per explanation (EXPLORER_TORCH_THREADS to change)
demo = build_demo(SESSION)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per internal request
    for name, available, where in list_models():
        if not available:  # for whoever runs the server: how to add a model offline
            logging.getLogger("app").info("%s: %s", name, where)
    warm_up(SESSION)  # load the default model now, so that the first click is fast
    demo.queue(**QUEUE_OPTIONS).launch(**LAUNCH_OPTIONS)
