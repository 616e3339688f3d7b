"""Class names: turning logits into a readable top-k and a user's class into an index."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def top_k(logits: Tensor, categories: Sequence[str], k: int = 5) -> list[tuple[int, str, float]]:
    """The k most probable classes of one sample's logits [K]: (index, name, softmax prob)."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    values, indices = probs.topk(min(k, probs.numel()))
    return [(int(i), categories[int(i)], float(p)) for p, i in zip(values, indices, strict=True)]


def find_class(query: str | int, categories: Sequence[str], partial: bool = True) -> int:
    """A class index from an index, an exact name (any case), or (``partial=True``) a
    unique part of a name.

    Raises:
        ValueError: out of range, unknown, ambiguous, or (``partial=False``) not exact;
            the message lists the candidates (the classes whose names contain the text).
    """
    text = str(query).strip()
    digits = text.removeprefix("-")
    if digits.isascii() and digits.isdigit():
        if len(digits) > 9 or not 0 <= int(text) < len(categories):
            raise ValueError(f"class index {_shown(text)} is out of range 0..{len(categories) - 1}")
        return int(text)
    lowered = [c.lower() for c in categories]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    matches = [i for i, c in enumerate(lowered) if text.lower() in c]
    if len(matches) == 1 and partial:
        return matches[0]
    if not matches:
        raise ValueError(f"no class named {_shown(text)}; give an index 0..{len(categories) - 1}")
    shown = ", ".join(f"{i}: {categories[i]}" for i in matches[:8])
    more = f" and {len(matches) - 8} more" if len(matches) > 8 else ""
    if len(matches) == 1:
        raise ValueError(f"no class is named exactly {_shown(text)}; did you mean {shown}?")
    raise ValueError(
        f"{_shown(text)} is part of {len(matches)} class names ({shown}{more}); "
        "type one exactly, or its index"
    )


def _shown(text: str, limit: int = 40) -> str:
    """A user's text as quoted in a message: repr, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
