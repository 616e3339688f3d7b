"""Every request's inputs, checked before Gradio touches them: :class:`GuardedBlocks`.

Gradio processes an event's inputs before its handler runs, even with
``preprocess=False``: it moves every file payload (a dict with
``"meta": {"_type": "gradio.FileData"}``) into its cache, fetching it when its path is a
URL and registering it for deletion when it names a folder, and it refuses a path that
was not uploaded, too few inputs or an example index out of range with messages of its
own, or none at all (``{"error": null}``), and a traceback in the log.
:class:`GuardedBlocks` looks first, and answers every refusal with the app's own short
message (a ``gr.Error``, one line in the log):

* **Too few inputs** are refused, except that missing *trailing* inputs which are a
  ``gr.State`` or declared optional (:attr:`GuardedBlocks.optional`) are given as None:
  an older ``/compare`` call without the colour map still works.
* **Every file payload**, in any input at any depth, must name a photo the
  :class:`~explorer.uploads.PhotoGate` accepts (an uploaded or bundled regular file);
  a URL, a folder or any other path gets :data:`~explorer.uploads.UNUSABLE`. An accepted
  one is handed on as ``{"path": <resolved path>}`` without its ``meta``, so Gradio never
  moves, registers or fetches a file a request names: the handlers read it through the
  same gate.
* **An example** (a ``gr.Dataset``) is an index into its samples.
* Values nested deeper than :data:`MAX_DEPTH` are refused.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from explorer.uploads import UNUSABLE, PhotoGate, PhotoRejected

log = logging.getLogger(__name__)

MAX_DEPTH = 16
"""The deepest nesting of lists and dicts accepted in one input (the page sends 2)."""


def refusal(message: str, title: str) -> gr.Error:
    """A refused request: the app's own short message for the page or the API client,
    and one line in the log (never a traceback, never what was sent)."""
    log.info("refused: %s: %s", title, message[:160])
    return gr.Error(message, title=title, print_exception=False)


def _file_payloads_checked(value: Any, gate: PhotoGate, depth: int = 0) -> Any:
    """``value`` with every file payload checked by ``gate`` and stripped of its meta."""
    if depth > MAX_DEPTH:
        raise refusal("This request is nested too deeply.", "Invalid request")
    if isinstance(value, dict):
        if "meta" in value:
            try:
                resolved = gate.check(value)
            except PhotoRejected as error:
                raise refusal(str(error), "Cannot use this file") from error
            if resolved is None:
                raise refusal(UNUSABLE, "Cannot use this file")
            return {"path": resolved}
        return {k: _file_payloads_checked(v, gate, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_file_payloads_checked(v, gate, depth + 1) for v in value]
    return value


def _example_index(value: Any, dataset: gr.Dataset) -> Any:
    count = len(dataset.samples or [])
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        raise refusal(f"The example must be a number from 0 to {count - 1}.", "Invalid example")
    return value


class GuardedBlocks(gr.Blocks):
    """``gr.Blocks`` whose events check their inputs first (see the module docstring).

    Args:
        gate: the photo gate every file payload must pass.
        *args, **kwargs: as for ``gr.Blocks``.
    """

    def __init__(self, *args: Any, gate: PhotoGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.optional: set[int] = set()
        """Ids of components that a request may leave out at the end of an event's
        inputs (they reach the handler as None: its default)."""

    def checked_inputs(self, block_fn: Any, inputs: list[Any]) -> list[Any]:
        """The inputs of one event, checked (raises ``gr.Error``)."""
        wanted = list(block_fn.inputs)
        if len(inputs) < len(wanted):
            missing = wanted[len(inputs) :]
            if not all(b.stateful or b._id in self.optional for b in missing):
                name = f" of /{block_fn.api_name}" if block_fn.api_name else ""
                raise refusal(
                    f"This request gives {len(inputs)} of the {len(wanted)} inputs{name}.",
                    "Invalid request",
                )
            inputs = [*inputs, *[None] * len(missing)]
        checked = []
        for block, value in zip(wanted, inputs, strict=False):
            if block.stateful:  # Gradio ignores what a request sends for a State
                checked.append(value)
                continue
            value = _file_payloads_checked(value, self.gate)
            if isinstance(block, gr.Dataset):
                value = _example_index(value, block)
            checked.append(value)
        return checked + list(inputs[len(wanted) :])

    async def preprocess_data(
        self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False
    ) -> list[Any]:
        """Check the inputs (:meth:`checked_inputs`), then Gradio's own preprocessing."""
        return await super().preprocess_data(
            block_fn, self.checked_inputs(block_fn, list(inputs)), state, explicit_call
        )
