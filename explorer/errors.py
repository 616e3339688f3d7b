"""How the engine's and the machine's errors reach the page: :func:`page_errors`, the one
decorator every heavy callback wears, turns them into the app's short messages (never a
Python message, a path or a traceback); the whole story goes to the server's log."""

from __future__ import annotations

import functools
import inspect
import logging
import urllib.error
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import gradio as gr

from explorer.guard import refusal
from explorer.jobs import Stopped
from tgrad.decompose import NotDecomposableError
from tgrad.images import ImageLoadError
from tgrad.models import DEFAULT_MODEL, WeightsUnavailableError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

METHODS_MEMORY = "Not enough memory for these methods."
"""What the method tabs say when the machine runs out of memory."""


def unavailable(model: str, error: WeightsUnavailableError) -> gr.Error:
    """A model's weights cannot be had: the whole story (file, path) goes to the server's
    log, for whoever runs it; the page says so without a path."""
    log.warning("model %s unavailable: %s", model, error)
    if isinstance(error.__cause__, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return refusal(
            f"The weights of {model} could not be downloaded: this server cannot reach "
            "the network. Pick a model that is on this machine (starting the server with "
            "TGRAD_OFFLINE=1 lists only those).",
            "No network",
        )
    return refusal(
        f"The weights of {model} are not on this server and cannot be downloaded now. "
        "The server's log says which file to put where.",
        "Model not available",
    )


def page_errors(
    memory: str, failed: str | None = None, user_values: bool = False
) -> Callable[[F], F]:
    """Decorate a callback (a function or a generator) so that what it raises reaches the
    page as the app's own short message:

    * a file that is not a usable image: its :class:`~tgrad.images.ImageLoadError`
      message (written for users);
    * weights that cannot be had: :func:`unavailable`, for the call's ``model`` argument;
    * a model the decomposition refuses: the engine's message naming the operation;
    * ``ValueError`` (with ``user_values``: the session's messages, e.g. an unknown
      class, are written for users);
    * ``MemoryError``: ``memory``;
    * with ``failed``, anything else: logged with its traceback, the page says ``failed``.

    The page's own refusals (``gr.Error``), Stop (:class:`~explorer.jobs.Stopped`) and a
    generator closed by Gradio pass through unchanged.
    """

    def translate(error: Exception, model: str) -> Exception | None:
        if isinstance(error, (gr.Error, Stopped)):
            return None
        if isinstance(error, ImageLoadError):
            return refusal(str(error), "Cannot use this file")
        if isinstance(error, WeightsUnavailableError):
            return unavailable(model, error)
        if isinstance(error, NotDecomposableError):
            return refusal(str(error), "Model cannot be explained")
        if isinstance(error, ValueError) and user_values:
            return refusal(str(error), "Invalid choice")
        if isinstance(error, MemoryError):
            return refusal(memory, "Too large")
        if failed is not None:
            log.exception("%s with %s", failed, model)
            return gr.Error(failed, title="Error")
        return None

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        def model_of(args: tuple, kwargs: dict) -> str:
            try:
                value = signature.bind_partial(*args, **kwargs).arguments.get("model")
            except TypeError:
                value = None
            return value if isinstance(value, str) and value else DEFAULT_MODEL

        def reraise(error: Exception, args: tuple, kwargs: dict) -> NoReturn:
            """Raise the page's message for ``error``, or ``error`` itself unchanged."""
            replacement = translate(error, model_of(args, kwargs))
            if replacement is None:
                raise error
            raise replacement from error

        if inspect.isgeneratorfunction(function):

            @functools.wraps(function)
            def generator(*args: Any, **kwargs: Any) -> Any:
                try:
                    yield from function(*args, **kwargs)
                except Exception as error:
                    reraise(error, args, kwargs)

            return generator  # type: ignore[return-value]

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as error:
                reraise(error, args, kwargs)

        return call  # type: ignore[return-value]

    return decorate
